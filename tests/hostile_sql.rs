//! A stolen reader key against `vigil serve`'s SQL, over real HTTP, with the real broker:
//! queries that would allocate without bound or compute for minutes are refused at once
//! (422), more at once than allowed are turned away (429, `Retry-After`), the rest stop at
//! their timeout (408) — each answer on time and recorded in Vigil's own log — while events
//! produced meanwhile are stored and alerted on, and the API's other calls are answered.

use std::time::{Duration, Instant};

use crate::support::*;
use serde_json::{Value, json};

const READER: &str = "vk_reader_hostile_0123456789";

const FOREVER: &str = "SELECT count(*) FROM (SELECT unnest(range(0, 100000)) AS x) a \
                       CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) b \
                       CROSS JOIN (SELECT unnest(range(0, 100000)) AS x) c";

const COSTLY: [&str; 4] = [
    "SELECT repeat('x', 20000) FROM generate_series(1, 100000)",
    "SELECT cardinality(range(0, 4000000000))",
    "SELECT levenshtein(repeat('a', 300000), repeat('b', 300000))",
    "SELECT cardinality(array_repeat(1, 1000000000))",
];

fn denials(n: usize) -> Vec<Rec> {
    let now = chrono::Utc::now();
    (0..n)
        .map(|i| Rec {
            partition: 0,
            key: None,
            value: Some(format!(
                r#"{{"decision_id":"h{i}","result":false,"timestamp":"{}","input":{{"attributes":{{"source":{{"address":{{"socketAddress":{{"address":"203.0.113.66","portValue":1}}}}}},"destination":{{"principal":"spiffe://c/ns/auth/sa/login"}},"request":{{"http":{{"method":"POST","path":"/login"}}}}}}}}}}"#,
                (now + chrono::Duration::milliseconds(i as i64)).to_rfc3339()
            ).into_bytes()),
            headers: Vec::new(),
        })
        .collect()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
    took: Duration,
}

async fn query(http: &reqwest::Client, base: &str, sql: &str) -> Answer {
    let started = Instant::now();
    let r = http
        .post(format!("{base}/v1/query"))
        .bearer_auth(READER)
        .json(&json!({ "sql": sql }))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        body,
        took: started.elapsed(),
    }
}

#[test]
fn hostile_queries_are_refused_on_time_and_recorded_while_ingest_and_detection_go_on() {
    use sha2::Digest;
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nquery_timeout_ms = 3000\nmax_concurrent_queries = 3\n{}",
            api_key_entry("stolen", READER, &["reader"])
        ),
    )
    .unwrap();
    let broker = Broker::start();
    broker.create_topic("mesh", 1);
    broker.create_topic("vigil.checkpoints", 1);
    let dir = tmp.path().join("data");
    let s = serve(&broker, "mesh", &dir, "g-hostile-sql", &[], Some(&config));
    let base = format!("http://{}", s.api);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let http = reqwest::Client::new();
    rt.block_on(async {
        let started = Instant::now();
        loop {
            let ready = http.get(format!("{base}/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                s.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    // The costly ones, one after the other: each refused at once, for what it asks.
    for q in COSTLY {
        let a = rt.block_on(query(&http, &base, q));
        let error = a.body["error"].as_str().unwrap_or_default();
        assert_eq!(a.status, 422, "{q}: {}", a.body);
        assert!(error.starts_with("function cap: "), "{q}: {error}");
        assert!(a.took < Duration::from_secs(3), "{q}: {:?}", a.took);
    }
    // Then eight that would run for ever, all at once.
    let attack_started = Instant::now();
    let attack: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            rt.spawn(async move { query(&http, &base, FOREVER).await })
        })
        .collect();

    // Meanwhile: a burst of denials is stored and alerted on, and the API answers.
    std::thread::sleep(Duration::from_millis(300));
    let produced = Instant::now();
    produce(&broker.producer(), "mesh", &denials(60));
    let health = rt.block_on(async {
        let t = Instant::now();
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        (r.status().as_u16(), t.elapsed())
    });
    assert_eq!(health.0, 200);
    assert!(
        health.1 < Duration::from_secs(2),
        "healthz took {:?}",
        health.1
    );
    wait_for("the burst stored", Duration::from_secs(30), || {
        (stored_per_partition(&dir, "mesh").values().sum::<i64>() >= 60).then_some(())
    });
    let stored_after = produced.elapsed();
    wait_for("the burst alerted", Duration::from_secs(30), || {
        stored_alerts(&dir)
            .iter()
            .any(|a| {
                a.group_key
                    .values()
                    .any(|v| v.as_deref() == Some("203.0.113.66"))
            })
            .then_some(())
    });
    let alerted_after = produced.elapsed();

    let answers: Vec<Answer> = attack
        .into_iter()
        .map(|h| rt.block_on(h).unwrap())
        .collect();
    let attack_took = attack_started.elapsed();
    let (mut busy, mut timed_out) = (0i64, 0i64);
    for a in &answers {
        let error = a.body["error"].as_str().unwrap_or_default();
        match a.status {
            429 => {
                assert_eq!(a.retry_after.as_deref(), Some("1"), "{error}");
                assert!(error.contains("3 queries are running"), "{error}");
                busy += 1;
            }
            408 => {
                assert!(error.contains("longer than 3000 ms"), "{error}");
                assert!(a.took < Duration::from_secs(6), "{:?}", a.took);
                timed_out += 1;
            }
            other => panic!("{other} {}", a.body),
        }
    }
    assert!(busy >= 1 && timed_out >= 1, "429: {busy}, 408: {timed_out}");
    assert_eq!(busy + timed_out, 8);

    // A statement hidden behind a long comment: recorded with its length and digest, its
    // start, and marked cut.
    let hidden = format!("/* {} */ SELECT 'hidden' AS x", "x".repeat(100_000));
    // (A client honouring Retry-After: the stopped queries give back their places once they
    // have really stopped.)
    let a = rt.block_on(async {
        loop {
            let a = query(&http, &base, &hidden).await;
            if a.status != 429 || attack_started.elapsed() > Duration::from_secs(30) {
                break a;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let freed_after = attack_started.elapsed();
    assert_eq!(a.status, 200, "{}", a.body);
    let digest = hex::encode(sha2::Sha256::digest(hidden.as_bytes()));
    let raw = wait_for(
        "the long statement recorded",
        Duration::from_secs(30),
        || {
            let rows = sql(
                &dir,
                "SELECT CAST(raw AS VARCHAR) FROM events WHERE kafka_topic = 'vigil.api' \
             AND action = 'POST /v1/query' AND status_code = 200",
            );
            rows.iter()
                .flat_map(|b| {
                    use arrow::array::AsArray;
                    let c = b.column(0).as_string::<i32>();
                    (0..b.num_rows())
                        .map(|i| c.value(i).to_owned())
                        .collect::<Vec<_>>()
                })
                .map(|r| serde_json::from_str::<Value>(&r).unwrap())
                .find(|r| r["api"]["sql_sha256"] == digest.as_str())
        },
    );
    assert_eq!(raw["api"]["sql_bytes"], hidden.len());
    assert_eq!(raw["api"]["sql_truncated"], true);
    assert_eq!(raw["api"]["sql"].as_str().unwrap().len(), 64 << 10);

    // Every answer is in Vigil's own log, with its status.
    let recorded = wait_for("the calls recorded", Duration::from_secs(30), || {
        let rows = sql(
            &dir,
            "SELECT CAST(status_code AS BIGINT) AS s, count(*) AS n FROM events \
             WHERE kafka_topic = 'vigil.api' AND action = 'POST /v1/query' \
             AND status_code <> 200 GROUP BY status_code ORDER BY s",
        );
        let mut got = Vec::new();
        for b in &rows {
            use arrow::array::AsArray;
            let (s, n) = (
                b.column(0).as_primitive::<arrow::datatypes::Int64Type>(),
                b.column(1).as_primitive::<arrow::datatypes::Int64Type>(),
            );
            for i in 0..b.num_rows() {
                got.push((s.value(i), n.value(i)));
            }
        }
        let n = |status: i64| {
            got.iter()
                .find(|(s, _)| *s == status)
                .map_or(0, |(_, n)| *n)
        };
        // (429s: the eight's and those of the retried statement's first tries.)
        (n(408) == timed_out && n(422) == 4 && n(429) >= busy).then_some(got)
    });
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    println!(
        "hostile SQL: 4 refused (422), {timed_out} stopped at 3 s (408), {busy} turned away \
         (429) in {attack_took:?}, their places free again after {freed_after:?}; meanwhile healthz in {:?}, the burst stored after \
         {stored_after:?} and alerted after {alerted_after:?}",
        health.1
    );
    assert!(s.terminate(), "vigil serve did not exit cleanly");
}
