//! Slow and many clients against `vigil serve`'s API over real TCP, with the real broker:
//! connections past `api.max_connections` are closed at once; a client that opens a
//! connection and sends nothing, one that drips its headers, and one that drips its body are
//! each cut off at their timeout (the last with a 408, recorded in Vigil's own log); the
//! process keeps no file descriptor of a closed connection; and a normal client, and ingest,
//! are served as soon as, and while, it happens.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

const KEY: &str = "vk_reader_slow_0123456789";

/// How long until the server closes `s` (reads until EOF or an error), at most `limit`.
fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while started.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return Some(started.elapsed()),
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return Some(started.elapsed()),
        }
    }
    None
}

fn wait_ready(addr: &str) {
    wait_for("ready", Duration::from_secs(60), || {
        get(addr, "/readyz")
            .filter(|l| l.contains(" 200 "))
            .map(|_| ())
    });
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn get(addr: &str, path: &str) -> Option<String> {
    http_get_status_line(addr, path)
}

#[test]
fn slow_and_surplus_connections_are_cut_off_and_nothing_of_them_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nmax_connections = 6\nheader_read_timeout_ms = 1000\nidle_timeout_ms = 1500\n\
             body_read_timeout_ms = 1500\n{}",
            api_key_entry("slow", KEY, &["reader"])
        ),
    )
    .unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-slow", &[], Some(&config));
    let addr = s.api.clone();
    wait_ready(&addr);
    let pid = s.child.id();
    let fds_before = open_fds(pid);

    // Six connections that send nothing take every place: a seventh is closed at once, and so
    // is a normal client's request.
    let mut hogs: Vec<TcpStream> = (0..6).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut seventh = TcpStream::connect(&addr).unwrap();
    let refused = closed_after(&mut seventh, Duration::from_secs(1));
    assert!(
        refused.is_some_and(|d| d < Duration::from_millis(900)),
        "{refused:?}"
    );
    assert_eq!(get(&addr, "/healthz"), None, "a request got a place");
    // Meanwhile ingest goes on.
    let recs: Vec<Rec> = (0..20)
        .map(|i| Rec {
            partition: 0,
            key: None,
            value: Some(format!(r#"{{"decision_id":"s{i}","result":true}}"#).into_bytes()),
            headers: Vec::new(),
        })
        .collect();
    produce(&broker.producer(), "mesh", &recs);
    // The idle ones are closed at their timeout, and their places are free again.
    for h in &mut hogs {
        let d = closed_after(h, Duration::from_secs(5));
        assert!(d.is_some(), "an idle connection stayed open");
    }
    wait_for("a place", Duration::from_secs(5), || {
        get(&addr, "/healthz").filter(|l| l.contains(" 200 "))
    });
    wait_for("the events stored", Duration::from_secs(30), || {
        (stored_per_partition(&dir, "mesh").values().sum::<i64>() >= 20).then_some(())
    });

    // Headers dripped a byte every 200 ms: cut off at the header timeout, mid-drip.
    let mut drip = TcpStream::connect(&addr).unwrap();
    let started = Instant::now();
    let header =
        b"GET /healthz HTTP/1.1\r\nHost: vigil\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut cut = None;
    for b in header {
        if drip.write_all(&[*b]).is_err() {
            cut = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let cut =
        cut.or_else(|| closed_after(&mut drip, Duration::from_secs(2)).map(|_| started.elapsed()));
    assert!(
        cut.is_some_and(|d| d < Duration::from_secs(4)),
        "dripped headers held the connection: {cut:?}"
    );

    // Without a valid credential the body is never waited for: a 401 at once.
    let mut stranger = TcpStream::connect(&addr).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let asked = Instant::now();
    write!(
        stranger,
        "POST /v1/query HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer vk_wrong_0123456789\r\n\
         Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 512];
    let n = stranger.read(&mut buf).unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );

    // A body dripped a byte every 200 ms: 408 at the body timeout, recorded.
    let mut slow = TcpStream::connect(&addr).unwrap();
    let body =
        br#"{"sql": "SELECT 1 AS slow_body_marker                                            "}"#;
    write!(
        slow,
        "POST /v1/query HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    let started = Instant::now();
    let answered = std::thread::scope(|sc| {
        let mut reader = slow.try_clone().unwrap();
        let h = sc.spawn(move || {
            reader
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = reader.read(&mut buf).unwrap_or(0);
            (
                String::from_utf8_lossy(&buf[..n]).into_owned(),
                started.elapsed(),
            )
        });
        for b in body {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
            if h.is_finished() {
                break;
            }
        }
        h.join().unwrap()
    });
    assert!(answered.0.starts_with("HTTP/1.1 408"), "{answered:?}");
    assert!(answered.1 < Duration::from_secs(4), "{answered:?}");
    assert!(
        answered.0.contains("had not arrived 1500 ms after"),
        "{answered:?}"
    );
    wait_for("the 408 recorded", Duration::from_secs(30), || {
        let rows = sql(
            &dir,
            "SELECT count(*) FROM events WHERE kafka_topic = 'vigil.api' \
             AND action = 'POST /v1/query' AND status_code = 408 AND caller_principal = 'key:slow'",
        );
        use arrow::array::AsArray;
        (rows[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
            == 1)
            .then_some(())
    });

    // Nothing is kept of the closed connections: the process holds as many descriptors as
    // before them.
    drop((hogs, seventh, drip, slow, stranger));
    let fds = wait_for(
        "the descriptors given back",
        Duration::from_secs(10),
        || {
            let n = open_fds(pid);
            (n <= fds_before + 2).then_some(n)
        },
    );
    println!(
        "descriptors: {fds_before} before, {fds} after; seventh closed after {refused:?}, dripped headers after {cut:?}, dripped body answered after {:?}",
        answered.1
    );
    assert!(s.terminate(), "vigil serve did not exit cleanly");
}

/// Changing calls whose client closes the connection right after sending them: each still
/// runs to its end and is recorded twice — its intent before it ran, its outcome after, the
/// same call id — and an upload is stored with who uploaded it and from where.
#[test]
fn a_call_whose_client_goes_away_runs_to_its_end_and_is_recorded_before_and_after() {
    use arrow::array::AsArray;
    const ADMIN: &str = "vk_admin_gone_0123456789";
    const INGESTOR: &str = "vk_ingestor_gone_0123456789";
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\n{}{}",
            api_key_entry("admin", ADMIN, &["admin"]),
            api_key_entry("opa", INGESTOR, &["ingestor"])
        ),
    )
    .unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-gone", &[], Some(&config));
    let addr = s.api.clone();
    wait_ready(&addr);
    let send_and_go = |head: String, body: &[u8]| {
        let mut c = TcpStream::connect(&addr).unwrap();
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(body).unwrap();
        let _ = c.shutdown(std::net::Shutdown::Both);
    };
    send_and_go(
        format!(
            "POST /v1/keys/rotate HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {ADMIN}\r\n\
             Content-Length: 0\r\n\r\n"
        ),
        b"",
    );
    let upload = br#"[{"decision_id":"gone-1","timestamp":"2026-12-01T10:00:00Z","result":false,"input":{"attributes":{"request":{"http":{"method":"GET","path":"/x"}}}}}]"#;
    send_and_go(
        format!(
            "POST /logs HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {INGESTOR}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            upload.len()
        ),
        upload,
    );

    // Each call: an intent, then an outcome of 200, one call id.
    for (action, principal) in [
        ("POST /v1/keys/rotate", "key:admin"),
        ("POST /logs", "key:opa"),
    ] {
        let q = format!(
            "SELECT CAST(raw AS VARCHAR) FROM events WHERE kafka_topic = 'vigil.api' \
             AND action = '{action}' ORDER BY kafka_offset"
        );
        let records = wait_for(action, Duration::from_secs(30), || {
            let rows: Vec<serde_json::Value> = sql(&dir, &q)
                .iter()
                .flat_map(|b| {
                    let c = b.column(0).as_string::<i32>();
                    (0..b.num_rows())
                        .map(|i| serde_json::from_str(c.value(i)).unwrap())
                        .collect::<Vec<_>>()
                })
                .collect();
            (rows.len() == 2).then_some(rows)
        });
        let (intent, outcome) = (&records[0], &records[1]);
        assert_eq!(intent["api"]["phase"], "intent", "{intent}");
        assert!(intent.get("status_code").is_none(), "{intent}");
        assert_eq!(outcome["api"]["phase"], "outcome", "{outcome}");
        assert_eq!(outcome["status_code"], 200, "{outcome}");
        assert_eq!(intent["api"]["call"], outcome["api"]["call"]);
        for r in [intent, outcome] {
            assert_eq!(r["caller"]["principal"], principal, "{r}");
        }
    }
    // The upload is stored, with its uploader.
    let uploader = wait_for("the upload stored", Duration::from_secs(30), || {
        let rows = sql(
            &dir,
            "SELECT CAST(get_field(h, 'key') AS VARCHAR) AS k, CAST(get_field(h, 'value') AS VARCHAR) AS v \
             FROM (SELECT unnest(kafka_headers) AS h FROM events WHERE kafka_topic = 'vigil.opa')",
        );
        let mut got = std::collections::BTreeMap::new();
        for b in &rows {
            let (k, v) = (
                b.column(0).as_string::<i32>(),
                b.column(1).as_string::<i32>(),
            );
            for i in 0..b.num_rows() {
                got.insert(k.value(i).to_owned(), v.value(i).to_owned());
            }
        }
        (!got.is_empty()).then_some(got)
    });
    assert_eq!(uploader["vigil-uploader"], "key:opa", "{uploader:?}");
    assert!(
        uploader["vigil-peer"].starts_with("127.0.0.1:"),
        "{uploader:?}"
    );
    assert!(s.terminate(), "vigil serve did not exit cleanly");
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// An OPA upload (gzip JSON array) of `n` decisions, each padded to about `pad` bytes.
fn opa_upload(tag: &str, n: usize, pad: usize) -> Vec<u8> {
    let p = "x".repeat(pad);
    let items: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#"{{"decision_id":"{tag}-{i}","timestamp":"2026-12-01T10:00:00Z","result":true,"labels":{{"pad":"{p}"}},"input":{{"attributes":{{"request":{{"http":{{"method":"GET","path":"/x"}}}}}}}}}}"#
            )
        })
        .collect();
    gzip(format!("[{}]", items.join(",")).as_bytes())
}

fn post_upload(addr: &str, key: &str, body: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        c,
        "POST /logs HTTP/1.1\r\nHost: vigil\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, out)
}

/// A flood of uploads: one credential has at most `api.max_uploads_per_credential` being
/// stored (more: 429 with `Retry-After`), and uploads waiting behind a large one are written in
/// files of at most `api.upload_batch_bytes` decompressed, not folded into one without bound.
#[test]
fn uploads_are_bounded_per_credential_and_batched_by_what_they_inflate_to() {
    let keys = [
        "vk_up_a_0123456789",
        "vk_up_b_0123456789",
        "vk_up_c_0123456789",
        "vk_up_d_0123456789",
    ];
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("vigil.toml");
    let mut text =
        "[api]\nmax_uploads_per_credential = 1\nupload_batch_bytes = 1048576\n".to_owned();
    for (i, k) in keys.iter().enumerate() {
        text.push_str(&api_key_entry(&format!("opa{i}"), k, &["ingestor"]));
    }
    std::fs::write(&config, text).unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-uploads", &[], Some(&config));
    let addr = s.api.clone();
    wait_ready(&addr);
    // A large upload (about 40 MiB decompressed) keeps the writer busy; meanwhile the same
    // credential's second is refused, and three others' small ones (700 KB each) queue.
    let large = opa_upload("large", 40_000, 1000);
    let small: Vec<Vec<u8>> = (0..3)
        .map(|i| opa_upload(&format!("small{i}"), 700, 1000))
        .collect();
    let (first, second, queued) = std::thread::scope(|sc| {
        let first = sc.spawn(|| post_upload(&addr, keys[0], &large));
        std::thread::sleep(Duration::from_millis(150));
        let second = post_upload(&addr, keys[0], &small[0]);
        std::thread::sleep(Duration::from_millis(50));
        let queued: Vec<_> = (0..3)
            .map(|i| {
                let (addr, key, body) = (&addr, keys[i + 1], &small[i]);
                sc.spawn(move || post_upload(addr, key, body))
            })
            .collect();
        let queued: Vec<(u16, String)> = queued.into_iter().map(|h| h.join().unwrap()).collect();
        (first.join().unwrap(), second, queued)
    });
    assert_eq!(first.0, 200, "{}", &first.1[..first.1.len().min(400)]);
    assert_eq!(second.0, 429, "{}", second.1);
    assert!(
        second.1.to_lowercase().contains("retry-after: 1"),
        "{}",
        second.1
    );
    assert!(
        second.1.contains("key:opa0 has 1 uploads being stored"),
        "{}",
        second.1
    );
    for (st, text) in &queued {
        assert_eq!(*st, 200, "{text}");
    }
    // Four uploads stored: the large one alone, and no two small ones in one file.
    let files = |root: &std::path::Path| -> usize {
        fn walk(p: &std::path::Path, n: &mut usize) {
            for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, n);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    *n += 1;
                }
            }
        }
        let mut n = 0;
        walk(&root.join("events/topic=vigil.opa"), &mut n);
        n
    };
    let n = wait_for("the uploads stored", Duration::from_secs(30), || {
        let rows = sql(
            &dir,
            "SELECT count(*) FROM events WHERE kafka_topic = 'vigil.opa'",
        );
        use arrow::array::AsArray;
        let got = rows[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0);
        (got == 40_000 + 3 * 700).then(|| files(&dir))
    });
    assert_eq!(n, 4, "files in vigil.opa");
    let (clean, log) = s.stop();
    assert!(clean, "vigil serve did not exit cleanly: {log}");
}
