//! Test harness: a real Tansu broker on a free loopback port, topics, a producer, and
//! `vigil serve` as a child process. Everything is bounded in time and cleaned up on drop.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

mod simulated;
#[allow(unused_imports)] // not every test drives the simulator
pub use simulated::*;

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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` until it returns `Some`, at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
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
    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn start() -> Broker {
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = tempfile::NamedTempFile::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
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

/// `vigil serve` as a child process.
pub struct Serve {
    pub child: Child,
    pub log: PathBuf,
    /// The analyst API's address (a free loopback port unless `--listen` was given).
    pub api: String,
}

pub fn serve(
    broker: &Broker,
    topics: &str,
    data_dir: &Path,
    group: &str,
    extra_env: &[(&str, &str)],
    config: Option<&Path>,
) -> Serve {
    serve_with(broker, topics, data_dir, group, extra_env, config, &[])
}

/// [`serve`] with more command-line arguments.
pub fn serve_with(
    broker: &Broker,
    topics: &str,
    data_dir: &Path,
    group: &str,
    extra_env: &[(&str, &str)],
    config: Option<&Path>,
    extra_args: &[&str],
) -> Serve {
    let log = data_dir.with_extension(format!("serve-{}.log", free_port()));
    let f = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.args([
        "serve",
        "--brokers",
        &broker.addr,
        "--topics",
        topics,
        "--group-id",
        group,
    ])
    .arg("--data-dir")
    .arg(data_dir)
    .args(["--progress-secs", "1"])
    .args(extra_args)
    .env_remove("RUST_LOG")
    .env("NO_COLOR", "1")
    .env("VIGIL_STORE__MAX_BATCH_WAIT_MS", "200")
    .stdout(f.try_clone().unwrap())
    .stderr(f)
    .stdin(Stdio::null());
    let api = match extra_args.iter().position(|a| *a == "--listen") {
        Some(i) => extra_args[i + 1].to_owned(),
        None => {
            let a = format!("127.0.0.1:{}", free_port());
            cmd.args(["--listen", &a]);
            a
        }
    };
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    Serve {
        child: cmd.spawn().expect("start vigil serve"),
        log,
        api,
    }
}

impl Serve {
    /// SIGTERM and wait (bounded); returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id() as i32;
        unsafe_kill(pid, 15);
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.success();
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "vigil serve did not stop after SIGTERM; log: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Serve::terminate`], and the whole log it wrote (its shutdown summary included).
    pub fn stop(self) -> (bool, String) {
        let log = self.log.clone();
        let ok = self.terminate();
        (ok, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// kill -9.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    // `kill` the command, to avoid a libc dependency for one call.
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stored rows of records read from Kafka per (partition, offset) with their record index, from
/// the store's files (Vigil's own log, `vigil.audit`, left out).
pub fn stored_positions(data_dir: &Path) -> Vec<(i32, i64, u32)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = rt
        .block_on(vigil_query::query(
            data_dir,
            "SELECT kafka_partition, kafka_offset, record_index FROM stored \
             WHERE kafka_topic <> 'vigil.audit'",
        ))
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        use arrow::array::AsArray;
        use arrow::datatypes::{Int32Type, Int64Type, UInt32Type};
        let p = b.column(0).as_primitive::<Int32Type>();
        let o = b.column(1).as_primitive::<Int64Type>();
        let i = b.column(2).as_primitive::<UInt32Type>();
        for r in 0..b.num_rows() {
            out.push((p.value(r), o.value(r), i.value(r)));
        }
    }
    out.sort();
    out
}

pub fn sql(data_dir: &Path, q: &str) -> Vec<arrow::record_batch::RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(vigil_query::query(data_dir, q))
        .unwrap_or_else(|e| panic!("{q}: {e}"))
}

/// Records stored so far per partition of `topic`, from the files' footers (cheap to poll).
pub fn stored_per_partition(data_dir: &Path, topic: &str) -> std::collections::BTreeMap<i32, i64> {
    let store = vigil_store::Store::open(data_dir, Default::default()).unwrap();
    let mut out = std::collections::BTreeMap::new();
    for vigil_store::LogId {
        topic: t,
        partition: p,
    } in store.partitions().unwrap()
    {
        if t != topic {
            continue;
        }
        let n: u64 = store
            .list(&t, p)
            .unwrap()
            .0
            .iter()
            .map(|f| {
                vigil_store::files::read_footer(&f.path)
                    .map(|m| m.records)
                    .unwrap_or(0)
            })
            .sum();
        out.insert(p, n as i64);
    }
    out
}

/// Records read from Kafka stored so far in all topics (distinct offsets), from the files'
/// footers.
pub fn stored_records(data_dir: &Path) -> u64 {
    let store = vigil_store::Store::open(data_dir, Default::default()).unwrap();
    let topics: std::collections::BTreeSet<String> = store
        .partitions()
        .unwrap()
        .into_iter()
        .map(|l| l.topic)
        .filter(|t| !vigil_store::is_reserved_topic(t))
        .collect();
    topics
        .iter()
        .map(|t| stored_per_partition(data_dir, t).values().sum::<i64>() as u64)
        .sum()
}

/// Wait until the store holds at least `n` records; on timeout, fail with the serve logs.
pub fn wait_stored(serves: &[&Serve], data_dir: &Path, n: u64, timeout: Duration) {
    let start = Instant::now();
    loop {
        let have = stored_records(data_dir);
        if have >= n {
            return;
        }
        if start.elapsed() > timeout {
            // The last lines of each log, without most progress lines.
            let logs: Vec<String> = serves
                .iter()
                .map(|s| {
                    let text = s.log_text();
                    let lines: Vec<&str> =
                        text.lines().filter(|l| !l.contains(" progress ")).collect();
                    let progress = text
                        .lines()
                        .rfind(|l| l.contains(" progress "))
                        .unwrap_or("");
                    format!(
                        "{}\n{progress}",
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    )
                })
                .collect();
            panic!(
                "timed out after {timeout:?}: {have} of {n} records stored\n--- serve logs ---\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Serve `app` (axum) on `addr`, or a free loopback port, from a thread of its own; returns
/// the address. Receivers for delivery tests and benches.
pub fn http_server(addr: Option<std::net::SocketAddr>, app: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind(addr.unwrap_or(([127, 0, 0, 1], 0).into())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    addr
}

/// A number from the environment (bench settings), or `default`.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `cmd` to its end and require exit 0 (its stdout and stderr in the failure message);
/// returns its stdout.
pub fn succeed(cmd: &mut Command) -> String {
    let out = cmd.env("NO_COLOR", "1").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Alerts stored in `dir`, the newest revision of each (none yet: empty).
pub fn stored_alerts(dir: &Path) -> Vec<vigil_detect::alerts::Alert> {
    vigil_detect::alerts::read_revisions(dir)
        .map(vigil_detect::alerts::latest)
        .unwrap_or_default()
}

/// Each alert as (rule, its group key's values joined by spaces, in field-name order).
pub fn alert_summary(
    alerts: &[vigil_detect::alerts::Alert],
) -> std::collections::BTreeSet<(String, String)> {
    alerts
        .iter()
        .map(|a| {
            let key: Vec<String> = a
                .group_key
                .values()
                .map(|v| v.clone().unwrap_or_default())
                .collect();
            (a.rule_id.clone(), key.join(" "))
        })
        .collect()
}

/// Wait (at most `timeout`) until every `expected` (rule, key) is stored in `dir`; what is
/// stored then.
pub fn wait_alerts(
    dir: &Path,
    expected: &std::collections::BTreeSet<(String, String)>,
    timeout: Duration,
) -> std::collections::BTreeSet<(String, String)> {
    let start = Instant::now();
    loop {
        let got = alert_summary(&stored_alerts(dir));
        if expected.is_subset(&got) || start.elapsed() > timeout {
            return got;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A broker with `topic` (`partitions`) and the anchor topic, a data directory, and a config
/// file for detection tests: fast alert flushes and state saves, then `extra_detect` lines.
pub struct DetectSetup {
    pub broker: Broker,
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Holds the directory: bind it (`tmp: _tmp`), or it goes at once.
    pub tmp: tempfile::TempDir,
}

pub fn detect_setup(topic: &str, partitions: i32, extra_detect: &str) -> DetectSetup {
    let broker = Broker::start();
    broker.create_topic(topic, partitions);
    broker.create_topic("vigil.checkpoints", 1);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!("[detect]\nalert_flush_ms = 200\nstate_interval_ms = 500\n{extra_detect}"),
    )
    .unwrap();
    DetectSetup {
        broker,
        dir,
        config,
        tmp,
    }
}

/// An `[[api.keys]]` entry of a config file: the key's name, its SHA-256, its roles.
#[allow(dead_code)]
pub fn api_key_entry(name: &str, key: &str, roles: &[&str]) -> String {
    use sha2::Digest;
    format!(
        "[[api.keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nroles = {roles:?}\n",
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    )
}

/// `GET path` over a plain TCP connection (no client library between the test and the
/// server): the answer's status line, if one came within 5 s.
#[allow(dead_code)]
pub fn http_get_status_line(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: vigil\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_owned)
}
