//! `vigil simulate --labelled FILE`: the labelled detection benchmark's workload.
//!
//! A mesh of 24 workloads sends benign traffic shaped like a real cluster's — calls on the
//! declared graph (an authorization decision per request, a Hubble flow per new connection),
//! busy services with one-off denials on many paths, logins with retries and an office NAT,
//! Kubernetes controllers and CI, DNS, database connections, kubelet health checks,
//! Prometheus scrapes, a batch job's bursts, deploys that start using declared edges — and,
//! at random times, attacks of fourteen shapes, each with its own random rate, spread in time,
//! user names, ports and partitions. Everything is written to explicit partitions (by source
//! address; an attack may spread its records over all of them), one partition `--lag-ms`
//! behind the others.
//!
//! Event time runs `--speed` times faster than the wall clock and ends at the wall clock, so
//! a million events cover tens of minutes of event time (the slow attacks need that) while no
//! record is ever dated ahead of when it was sent. Before it, `--history-hours` of one call
//! per edge an hour (all on partition 0) let the learned rules learn the mesh.
//!
//! FILE gets, as JSON lines: the run's parameters, every attack (its scenario, subjects, the
//! rules and group keys it must fire, and each of its records' stated time, send time and
//! partition), and the counts. `--graph-out` writes the declared policy graph the mesh runs
//! under (for `detect.allowlist_file`). `benches/detection.rs` scores a run.

mod attacks;
mod mesh;
mod payloads;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};

use attacks::{Attack, SHAPES, Shape};
use mesh::World;

pub(crate) const S: i64 = 1_000_000_000;
pub(crate) const MS: i64 = 1_000_000;
/// The application port every mesh workload serves on (and its sidecar guards).
pub(crate) const APP_PORT: u16 = 8443;
/// The port Prometheus scrapes, outside the sidecar (not guarded).
pub(crate) const METRICS_PORT: u16 = 9090;
/// The first minutes of the run, before any attack: traffic going from the sparse history to
/// its full rate is a real rate spike for every caller (`vigil.rate_spike.caller`); a
/// deployment that had been watched for a day would not show it. Scorers leave alerts that
/// start in it aside.
pub(crate) const WARM_UP_NS: i64 = 5 * 60 * S;
/// The kubelet's health-check port.
pub(crate) const HEALTH_PORT: u16 = 8080;

/// The labelled mode's options.
#[derive(clap::Args, Clone, Debug)]
pub struct LabelledArgs {
    /// Write the labelled benchmark's workload and its labels (JSON lines) to this file
    /// instead of simulating live traffic.
    #[arg(long)]
    pub labelled: Option<PathBuf>,
    /// Benign events to send (labelled mode).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Event-time seconds per wall-clock second (labelled mode).
    #[arg(long, default_value_t = 15.0)]
    pub speed: f64,
    /// Partitions of the topic (labelled mode: records name their partition).
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The partition sent behind the others (default: the last).
    #[arg(long)]
    pub lag_partition: Option<i32>,
    /// How far behind, in wall-clock milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub lag_ms: u64,
    /// Instances of each attack shape.
    #[arg(long, default_value_t = 3)]
    pub attacks_each: usize,
    /// Write the declared policy graph (`[[edge]]` tables) here.
    #[arg(long)]
    pub graph_out: Option<PathBuf>,
}

/// One record to send.
pub(crate) struct Out {
    /// When it is sent, in event time (pacing), and a tie-break.
    pub(super) at_ns: i64,
    pub(super) seq: u64,
    pub(super) partition: i32,
    pub(super) key: String,
    pub(super) value: String,
    /// The attack it belongs to, and the time its payload states.
    pub(super) attack: Option<(usize, i64)>,
}

impl PartialEq for Out {
    fn eq(&self, o: &Self) -> bool {
        (self.at_ns, self.seq) == (o.at_ns, o.seq)
    }
}
impl Eq for Out {}
impl PartialOrd for Out {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Out {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at_ns, self.seq).cmp(&(o.at_ns, o.seq))
    }
}

/// Run the labelled workload: send it and write its labels.
pub fn run(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    args: &LabelledArgs,
    rate: f64,
    seed: u64,
    history_hours: u32,
    say: &dyn Fn(String),
) -> anyhow::Result<()> {
    let Some(labels) = &args.labelled else {
        anyhow::bail!("no --labelled file");
    };
    anyhow::ensure!(args.partitions >= 1, "--partitions must be at least 1");
    anyhow::ensure!(
        args.speed >= 1.0 && args.speed.is_finite(),
        "--speed must be at least 1"
    );
    let lag_partition = args.lag_partition.unwrap_or(args.partitions - 1);
    anyhow::ensure!(
        (0..args.partitions).contains(&lag_partition),
        "--lag-partition {lag_partition} is not one of the {} partitions",
        args.partitions
    );
    let wall_ns = (args.events as f64 / rate * 1e9) as i64;
    let span_ns = (wall_ns as f64 * args.speed) as i64;
    anyhow::ensure!(
        span_ns >= 36 * 60 * S,
        "--events / --rate × --speed give {} min of event time; the warm-up and the slow attacks need 36 (raise --speed or --events)",
        span_ns / 60 / S
    );
    let mut world = World::new(seed, args.partitions);
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(labels).with_context(|| format!("creating {}", labels.display()))?,
    );
    let send = |o: &Out| {
        crate::services::produce::send_to(
            producer,
            topic,
            Some(o.partition),
            Some(o.key.as_bytes()),
            o.value.as_bytes(),
        )
    };

    // Event time: [e0, e0 + span), ending at the wall clock as the last record goes out.
    // The graph first: a consumer can load it before the first record arrives.
    if let Some(g) = &args.graph_out {
        std::fs::write(g, world.graph()).with_context(|| format!("writing {}", g.display()))?;
    }
    let now = vigil_store::clock::now_ns();
    let history_end = now + wall_ns - span_ns - 60 * S;
    let history = world.history(history_hours, history_end);
    for o in &history {
        send(o)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("delivering the history")?;
    say(format!(
        "history: {} records over the {history_hours} h before the run (partition 0)",
        history.len()
    ));
    // Time for a consumer started with the graph to join and take the history.
    std::thread::sleep(Duration::from_secs(5));
    let w0 = vigil_store::clock::now_ns();
    let e0 = w0 + wall_ns - span_ns;
    world.time_deploys(e0, span_ns);

    // The attacks: every shape `attacks_each` times, in random order, spread over the run.
    let mut plan: Vec<Shape> = SHAPES
        .iter()
        .flat_map(|&s| std::iter::repeat_n(s, args.attacks_each))
        .collect();
    for i in (1..plan.len()).rev() {
        plan.swap(i, world.rng.random_range(0..=i));
    }
    let mut heap: BinaryHeap<Reverse<Out>> = BinaryHeap::new();
    let mut attacks = Vec::new();
    let first = e0 + WARM_UP_NS + 60 * S;
    let slot = (e0 + span_ns - 3 * 60 * S - first) / plan.len().max(1) as i64;
    for (id, &s) in plan.iter().enumerate() {
        let lo = first + slot * id as i64;
        let latest = e0 + span_ns - s.max_span_ns() - 60 * S;
        let t0 = (lo + world.rng.random_range(0..slot.max(1)))
            .min(latest)
            .max(first);
        let (recs, a) = world.attack(id, s, t0, topic);
        heap.extend(recs.into_iter().map(Reverse));
        attacks.push(a);
    }
    writeln!(
        file,
        "{}",
        serde_json::json!({"labelled": {
            "topic": topic, "partitions": args.partitions, "lag_partition": lag_partition,
            "lag_ms": args.lag_ms, "speed": args.speed, "seed": seed, "start_ns": e0,
            "end_ns": e0 + span_ns, "warm_up_end_ns": e0 + WARM_UP_NS, "attacks": attacks.len(), "events": args.events,
        }})
    )?;
    say(format!(
        "labelled: {} benign events at ~{rate} /s ({:.0} min of event time at ×{}), {} attacks, partition {lag_partition} {} ms behind",
        args.events,
        span_ns as f64 / 60e9,
        args.speed,
        attacks.len(),
        args.lag_ms
    ));

    let started = Instant::now();
    let rate_e = args.events as f64 / (span_ns as f64 / 1e9);
    let (mut benign, mut attack_n) = (0u64, 0u64);
    let mut next_benign = e0;
    let (mut next_health, mut next_scrape, mut next_batch) = (e0, e0 + 3 * S, e0 + 120 * S);
    let lag_ns = i64::try_from(args.lag_ms).unwrap_or(i64::MAX / 4) * MS;
    let mut lagged: VecDeque<(i64, Out)> = VecDeque::new();
    let mut units = Vec::new();
    let mut last_report = Instant::now();
    let deadline = |at: i64| w0 + ((at - e0) as f64 / args.speed) as i64;
    // Send a record; an attack's records are labelled with when they went out.
    let emit = |o: &Out, attacks: &mut Vec<Attack>| -> anyhow::Result<()> {
        send(o)?;
        if let Some((a, stated)) = o.attack {
            let sent = vigil_store::clock::now_ns();
            attacks[a]
                .records
                .push([stated, sent, i64::from(o.partition)]);
        }
        Ok(())
    };
    loop {
        // Benign traffic generated up to the next record due.
        while benign < args.events && heap.peek().is_none_or(|Reverse(o)| next_benign <= o.at_ns) {
            units.clear();
            if next_benign >= next_health {
                world.health_round(next_health, &mut units);
                next_health += 10 * S;
            } else if next_benign >= next_scrape {
                world.scrape_round(next_scrape, &mut units);
                next_scrape += 15 * S;
            } else if next_benign >= next_batch {
                world.batch_round(next_batch, &mut units);
                next_batch += 600 * S;
            } else {
                world.benign(next_benign, &mut units);
                // `rate_e` counts records: a unit of k records takes k gaps.
                let gap = -(1.0 - world.rng.random::<f64>()).ln() / rate_e;
                next_benign += (gap * units.len() as f64 * 1e9) as i64;
            }
            benign += units.len() as u64;
            heap.extend(units.drain(..).map(Reverse));
        }
        let Some(Reverse(o)) = heap.pop() else { break };
        let due = deadline(o.at_ns);
        let now = vigil_store::clock::now_ns();
        if due > now + 2 * MS {
            std::thread::sleep(Duration::from_nanos((due - now) as u64));
        }
        // The lagging partition's records whose time has come.
        let now = vigil_store::clock::now_ns();
        while lagged.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, l)) = lagged.pop_front() {
                emit(&l, &mut attacks)?;
            }
        }
        if o.attack.is_some() {
            attack_n += 1;
        }
        if o.partition == lag_partition && lag_ns > 0 {
            lagged.push_back((due + lag_ns, o));
        } else {
            emit(&o, &mut attacks)?;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            say(format!(
                "[{:6.1}s] {benign} benign, {attack_n} attack records",
                started.elapsed().as_secs_f64()
            ));
        }
    }
    while let Some((at, l)) = lagged.pop_front() {
        let now = vigil_store::clock::now_ns();
        if at > now {
            std::thread::sleep(Duration::from_nanos((at - now) as u64));
        }
        emit(&l, &mut attacks)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("delivering the records")?;
    for a in &attacks {
        writeln!(file, "{}", serde_json::json!({ "attack": a }))?;
    }
    let secs = started.elapsed().as_secs_f64();
    writeln!(
        file,
        "{}",
        serde_json::json!({"done": {"benign": benign, "attack": attack_n, "history": history.len(), "secs": secs}})
    )?;
    file.flush()?;
    say(format!(
        "done: {benign} benign and {attack_n} attack records in {secs:.1} s ({:.0} /s), {} history",
        (benign + attack_n) as f64 / secs,
        history.len()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schemas::Decoder;

    /// (kind, decision, caller ip, caller port, callee ip, callee port, time).
    type Row = (String, String, String, u16, String, u16, i64);

    fn decode(v: &str) -> Row {
        let mut rows = Vec::new();
        Decoder::default()
            .decode_with(v.as_bytes(), |e| {
                let s = |x: &Option<std::borrow::Cow<'_, str>>| {
                    x.as_deref().unwrap_or_default().to_owned()
                };
                rows.push((
                    e.kind.as_str().to_owned(),
                    e.decision.as_str().to_owned(),
                    s(&e.caller.ip),
                    e.caller.port.unwrap_or(0),
                    s(&e.callee.ip),
                    e.callee.port.unwrap_or(0),
                    e.time_ns.unwrap_or(0),
                ));
            })
            .unwrap_or_else(|e| panic!("{e}: {v}"));
        assert_eq!(rows.len(), 1, "{v}");
        rows.remove(0)
    }

    fn benign(w: &mut World, e0: i64, n: usize) -> Vec<Out> {
        let mut out = Vec::new();
        let mut t = e0;
        while out.len() < n {
            w.benign(t, &mut out);
            t += 2_500_000;
        }
        w.health_round(e0, &mut out);
        w.scrape_round(e0, &mut out);
        w.batch_round(e0 + S, &mut out);
        out
    }

    #[test]
    fn every_benign_connection_to_a_guarded_port_has_its_decision() {
        let mut w = World::new(11, 4);
        let e0 = 1_800_000_000 * S;
        w.time_deploys(e0, 3600 * S);
        let rows: Vec<Row> = benign(&mut w, e0, 60_000)
            .iter()
            .map(|o| decode(&o.value))
            .collect();
        let decided: std::collections::HashSet<(String, u16, String, u16)> = rows
            .iter()
            .filter(|r| r.0 == "authz")
            .map(|r| (r.2.clone(), r.3, r.4.clone(), r.5))
            .collect();
        let mut flows = 0;
        for r in rows.iter().filter(|r| r.0 == "flow" && r.5 == APP_PORT) {
            flows += 1;
            assert!(
                decided.contains(&(r.2.clone(), r.3, r.4.clone(), r.5)),
                "no decision on the connection {r:?}"
            );
        }
        assert!(flows > 1000, "{flows}");
    }

    #[test]
    fn every_attack_decodes_is_dated_as_labelled_and_expects_a_default_rule() {
        let mut w = World::new(5, 4);
        let e0 = 1_800_000_000 * S;
        w.time_deploys(e0, 3600 * S);
        let rules: std::collections::BTreeSet<String> = vigil_detect::rules::DEFAULT_PACK
            .iter()
            .filter_map(|(_, t)| {
                let v: toml::Value = toml::from_str(t).ok()?;
                Some(v.get("id")?.as_str()?.to_owned())
            })
            .collect();
        for (id, &shape) in SHAPES.iter().enumerate() {
            let (recs, a) = w.attack(id, shape, e0 + 600 * S, "mesh");
            assert!(!recs.is_empty() && !a.expect.is_empty(), "{shape:?}");
            for e in &a.expect {
                assert!(
                    rules.contains(e.rule),
                    "{shape:?}: {} is no default rule",
                    e.rule
                );
            }
            for o in &recs {
                let row = decode(&o.value);
                let (_, stated) = o.attack.expect("labelled");
                if shape == Shape::ForgedFutureThenBurst && row.6 > 4_000_000_000 * S {
                    continue; // the forged one
                }
                assert_eq!(row.6, stated, "{shape:?}: {}", o.value);
                assert!((0..4).contains(&o.partition));
            }
            assert!(a.start_ns >= e0 + 600 * S && a.end_ns <= e0 + 600 * S + shape.max_span_ns());
        }
    }

    #[test]
    fn the_declared_graph_holds_every_benign_call_and_parses_as_a_policy_graph() {
        let mut w = World::new(11, 4);
        let e0 = 1_800_000_000 * S;
        w.time_deploys(e0, 600 * S);
        let g: vigil_detect::allowlist::PolicyGraph = toml::from_str(&w.graph()).unwrap();
        let declared: std::collections::HashSet<(String, String)> = g
            .edges
            .iter()
            .filter(|e| e.kind.as_deref() == Some("authz"))
            .map(|e| (e.caller.clone(), e.callee.clone()))
            .collect();
        let mut calls = 0;
        for o in benign(&mut w, e0, 40_000) {
            let mut pair = None;
            Decoder::default()
                .decode_with(o.value.as_bytes(), |e| {
                    if e.kind.as_str() == "authz" {
                        pair = Some((
                            e.caller.principal.as_deref().unwrap_or_default().to_owned(),
                            e.callee.principal.as_deref().unwrap_or_default().to_owned(),
                        ));
                    }
                })
                .unwrap();
            if let Some(p) = pair {
                calls += 1;
                assert!(declared.contains(&p), "{p:?} is not declared");
            }
        }
        assert!(calls > 10_000, "{calls}");
    }

    /// The labelled benchmark's attacks, pinned: 70 attacks (each shape 5 times, seed 7, the
    /// run id fixed), every record's send time, tie-break, partition, key and value and each
    /// attack's label, hashed. The figures in BENCHMARKS.md are comparable across commits only
    /// while this holds; a change that means to alter what an attack sends updates the hash
    /// here and says so beside the new figures.
    #[test]
    fn the_labelled_attacks_are_what_the_benchmark_measured() {
        let mut w = World::new(7, 4);
        w.p.run = 1;
        let e0 = 1_800_000_000 * S;
        w.time_deploys(e0, 3600 * S);
        let mut h = blake3::Hasher::new();
        for round in 0..5 {
            for (k, &shape) in SHAPES.iter().enumerate() {
                let id = round * SHAPES.len() + k;
                let (recs, a) = w.attack(id, shape, e0 + (600 + id as i64 * 40) * S, "mesh");
                for o in &recs {
                    h.update(&o.at_ns.to_le_bytes());
                    h.update(&o.seq.to_le_bytes());
                    h.update(&o.partition.to_le_bytes());
                    h.update(o.key.as_bytes());
                    h.update(b"\0");
                    h.update(o.value.as_bytes());
                    h.update(b"\0");
                }
                h.update(serde_json::to_string(&a).unwrap().as_bytes());
            }
        }
        assert_eq!(
            h.finalize().to_hex().as_str(),
            "371aa3a7bbab0f77dcd810fd80b436fa435f3bc291beea80d0a5814c2f0463f2"
        );
    }
}
