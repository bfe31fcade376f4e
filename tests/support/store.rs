//! What a data directory holds: stored records by position and count, SQL over it, alerts.

use std::path::Path;
use std::time::{Duration, Instant};

use super::serve::Serve;

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

/// [`sql`]'s rows, every value as text (`∅` for null).
pub fn sql_strings(data_dir: &Path, q: &str) -> Vec<Vec<String>> {
    use arrow::array::{Array, AsArray};
    let mut out = Vec::new();
    for b in sql(data_dir, q) {
        let cols: Vec<_> = (b.columns().iter())
            .map(|c| arrow::compute::cast(c, &arrow::datatypes::DataType::Utf8).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        let c = c.as_string::<i32>();
                        if c.is_null(i) {
                            "∅".to_owned()
                        } else {
                            c.value(i).to_owned()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
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
