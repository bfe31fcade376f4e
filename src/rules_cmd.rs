//! `vigil rules …` (list, test, backtest) and the rule loading `serve` shares.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use vigil_detect::engine::Engine;
use vigil_detect::rules;
use vigil_store::clock::now_ns;

use crate::config::Config;
use crate::config::nonempty;
use crate::services::policy::PolicyFeed;
use crate::services::rules::{defaults, incident_window_ns, load, time_config};

#[derive(clap::Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    command: RulesCommand,
}

#[derive(clap::Subcommand)]
enum RulesCommand {
    /// List the rules that would load (default pack and `detect.rules_dir`), the inactive ones
    /// and the ones that fail to load.
    List {
        /// A rules directory (overrides `detect.rules_dir`).
        dir: Option<PathBuf>,
    },
    /// Run the tests in rule files: the default pack and DIR (or `detect.rules_dir`).
    /// Exit 0 when all pass, 1 when any fails or a rule does not load.
    Test {
        dir: Option<PathBuf>,
        /// Test only DIR's rules, not the default pack.
        #[arg(long)]
        no_defaults: bool,
    },
    /// Replay stored events through the rules and print what would have fired. Nothing is
    /// stored.
    Backtest {
        /// Store directory (overrides `store.data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
        /// A rules directory (overrides `detect.rules_dir`).
        #[arg(long)]
        rules: Option<PathBuf>,
        /// One alert per line as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn parse_time(s: &str) -> anyhow::Result<i64> {
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("{s:?} is not an RFC 3339 time (2026-11-22T10:00:00Z)"))?;
    t.timestamp_nanos_opt()
        .ok_or_else(|| anyhow::anyhow!("{s:?} is out of range"))
}

pub fn run(cfg: &Config, args: RulesArgs) -> anyhow::Result<ExitCode> {
    let mut d = cfg.detect.clone();
    // The graph as serve would import it: with the audit stream's workloads stored so far.
    let feed = PolicyFeed::from_config(cfg);
    let feed = feed.as_deref();
    match args.command {
        RulesCommand::List { dir } => {
            if let Some(dir) = dir {
                d.rules_dir = dir;
            }
            let loaded = load(&d, feed)?;
            // Where each learning rule stands, from the detection state if there is one.
            let state = vigil_detect::run::state_path(&cfg.store.data_dir);
            let mut learning: std::collections::HashMap<String, (bool, Option<i64>)> =
                Default::default();
            if state.exists() {
                let rules = load(&d, feed)?.into_rules();
                let mut e = Engine::new(rules).with_time(time_config(&d)?);
                if e.restore(&state).is_ok() {
                    for s in e.stats() {
                        learning.insert(s.id, (s.learning, s.learning_until_ns));
                    }
                }
            }
            for r in loaded.all() {
                let learns = match (r.kind.learning_until(), learning.get(&r.meta.id)) {
                    (None, _) => String::new(),
                    (Some(_), Some((false, _))) => "  learned".to_owned(),
                    (Some(_), Some((true, Some(until)))) => {
                        format!(
                            "  learning until {}",
                            crate::services::alerts::time_text(*until)
                        )
                    }
                    (Some(_), _) => "  learning (from its first event)".to_owned(),
                };
                println!(
                    "{:<40} v{:<3} {:<15} {:<8} {}{learns}",
                    r.meta.id,
                    r.meta.version,
                    r.meta.kind.as_str(),
                    r.meta.severity.as_str(),
                    r.meta.source
                );
            }
            for (id, why) in &loaded.inactive {
                println!("{id:<40} inactive: {why}");
            }
            for e in &loaded.errors {
                println!("error: {e}");
            }
            for w in &loaded.warnings {
                println!("warning: {}: {}", w.file, w.message);
            }
            Ok(if loaded.errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCommand::Test { dir, no_defaults } => {
            if let Some(dir) = dir {
                d.rules_dir = dir;
            }
            let defaults = defaults(&d, feed)?;
            let sources = rules::sources(nonempty(&d.rules_dir), !no_defaults)
                .context("reading the rules directory")?;
            let results = vigil_detect::ruletest::run(&sources, &defaults);
            let mut failed = 0;
            for r in &results {
                match &r.failure {
                    None => println!("ok    {} :: {}", r.rule, r.test),
                    Some(why) => {
                        failed += 1;
                        println!("FAIL  {} :: {} ({})\n      {why}", r.rule, r.test, r.source);
                    }
                }
            }
            println!(
                "{} test(s), {} passed, {failed} failed",
                results.len(),
                results.len() - failed
            );
            Ok(if failed == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        RulesCommand::Backtest {
            data_dir,
            from,
            to,
            rules: dir,
            json,
        } => {
            if let Some(dir) = dir {
                d.rules_dir = dir;
            }
            let data_dir = crate::services::bucket::reading_dir(cfg, data_dir)?;
            let store = vigil_store::Store::open_existing(&data_dir)
                .with_context(|| format!("opening the store at {}", data_dir.display()))?;
            let loaded = load(&d, feed)?;
            let mut engine = Engine::new(loaded.into_rules())
                .with_time(time_config(&d)?)
                .with_incident_window(incident_window_ns(&d)?)
                .with_state_budget(d.max_state_bytes);
            let from = from
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or(i64::MIN);
            let to = to
                .as_deref()
                .map(parse_time)
                .transpose()?
                .unwrap_or(i64::MAX);
            engine.window = Some((from, to));
            let mut fired = Vec::new();
            vigil_detect::replay::replay(&mut engine, &store, |e, p| -> anyhow::Result<()> {
                e.observe(&p, now_ns())?;
                fired.extend(e.take_pending());
                Ok(())
            })?;
            fired.extend(engine.take_pending());
            let alerts = vigil_detect::alerts::latest(fired);
            let mut alerts: Vec<_> = alerts;
            alerts.sort_by_key(|a| (a.last_event_ns, a.alert_id.clone()));
            for a in &alerts {
                if json {
                    println!("{}", serde_json::to_string(a)?);
                } else {
                    println!("{}", crate::services::alerts::line(a));
                }
            }
            eprintln!(
                "{} events evaluated, {} alert(s) would have fired",
                engine.rows,
                alerts.len()
            );
            let t = engine.time_stats();
            eprintln!(
                "event time: {} late (evaluated all the same), {} skewed, {} evaluated before the watermark (buffer full)",
                t.late, t.skewed, t.forced
            );
            for (log, s) in &t.sources {
                if s.late > 0 || s.skewed > 0 {
                    eprintln!("  {log}: {} late, {} skewed", s.late, s.skewed);
                }
            }
            for s in engine.stats() {
                if s.late > 0 || s.evicted > 0 {
                    eprintln!("  {}: {} late, {} evicted", s.id, s.late, s.evicted);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
