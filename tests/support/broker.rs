//! A real Tansu broker on a free loopback port: topics, a producer, a reader.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use super::{free_port, wait_for};

/// The Tansu binary: `VIGIL_TANSU_BIN` (set by scripts/test.sh), else the install script's cache.
fn tansu_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VIGIL_TANSU_BIN") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cached = Path::new(&home).join(".cache/vigil/tansu-0.6.0-dynostore-libsql/bin/tansu");
    assert!(
        cached.exists(),
        "no Tansu broker: run scripts/install.sh (or set VIGIL_TANSU_BIN)"
    );
    cached
}

pub struct Broker {
    child: Child,
    pub addr: String,
    _log: tempfile::NamedTempFile,
    /// The broker's working directory (its SQLite file, with `VIGIL_TANSU_STORAGE=sqlite`).
    _dir: tempfile::TempDir,
}

impl Broker {
    /// The broker's process id (to stop and continue it: a broker that does not answer).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().unwrap();
        // `VIGIL_TANSU_DIR`: where the broker's working directory is made (e.g. /dev/shm, so
        // that its SQLite engine's fsyncs are not the disk's).
        let dir = match std::env::var_os("VIGIL_TANSU_DIR") {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let storage = match std::env::var("VIGIL_TANSU_STORAGE").as_deref() {
            Ok("sqlite") => "sqlite://tansu.db",
            _ => "memory://tansu/",
        };
        let child = Command::new(tansu_bin())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // `VIGIL_TANSU_STORAGE=sqlite`: Tansu's SQLite engine in a directory of its own
            // (benches: it does not slow down as the log grows the way the in-memory one does).
            .args(["--storage-engine", storage])
            .current_dir(dir.path())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start tansu");
        let addr = format!("127.0.0.1:{port}");
        wait_for("the broker to listen", Duration::from_secs(30), || {
            TcpStream::connect(&addr).ok()
        });
        Broker {
            child,
            addr,
            _log: log,
            _dir: dir,
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let out = Command::new(tansu_bin())
            .args([
                "topic",
                "create",
                name,
                "--broker",
                &format!("tcp://{}", self.addr),
            ])
            .args(["--partitions", &partitions.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "topic create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn producer(&self) -> ThreadedProducer<DefaultProducerContext> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap()
    }

    /// Read a whole topic from the beginning until `n` records arrived (bounded).
    pub fn consume(&self, topic: &str, n: usize, timeout: Duration) -> Vec<Consumed> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("group.id", format!("test-reader-{}", free_port()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "10")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n && start.elapsed() < timeout {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Consumed {
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
            }
        }
        out
    }
}

pub struct Consumed {
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl Consumed {
    pub fn header(&self, k: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(hk, _)| hk == k)
            .and_then(|(_, v)| v.as_ref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One record to produce.
pub struct Rec {
    pub partition: i32,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Records of these values, keyless, on partition 0.
pub fn on_partition_0(values: Vec<Vec<u8>>) -> Vec<Rec> {
    values
        .into_iter()
        .map(|v| Rec {
            partition: 0,
            key: None,
            value: Some(v),
            headers: Vec::new(),
        })
        .collect()
}

pub fn produce(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, recs: &[Rec]) {
    for r in recs {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic)
            .partition(r.partition)
            .headers(headers);
        if let Some(k) = &r.key {
            rec = rec.key(k);
        }
        if let Some(v) = &r.value {
            rec = rec.payload(v);
        }
        let mut rec = rec;
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((e, back)) => {
                    assert!(
                        matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ),
                        "{e}"
                    );
                    std::thread::sleep(Duration::from_millis(5));
                    rec = back;
                }
            }
        }
    }
    p.flush(Duration::from_secs(60)).unwrap();
}
