//! The benchmark report's figures. `scripts/bench.sh` sets `VIGIL_BENCH_REPORT` to a file;
//! a bench that measures outside criterion appends each figure to it as one JSON line, and
//! the script renders every line (and criterion's own results) into BENCHMARKS.md. Without
//! the variable this does nothing (the bench prints its figures as before).
#![allow(dead_code)]

use std::io::Write;

/// A figure's target: at least or at most a value (in the figure's unit), or a ratio to the
/// reference at most so much.
#[derive(Clone, Copy)]
pub enum Target {
    AtLeast(f64),
    AtMost(f64),
    RatioAtMost(f64),
    None,
}

/// Append one figure: `area` (the bench), `figure` (what was measured), `value` in `unit`,
/// its `target`, and the reference measured in the same run (name, value in the same unit)
/// when there is one.
pub fn figure(
    area: &str,
    figure: &str,
    value: f64,
    unit: &str,
    target: Target,
    reference: Option<(&str, f64)>,
) {
    let Some(path) = std::env::var_os("VIGIL_BENCH_REPORT") else {
        return;
    };
    let (op, t) = match target {
        Target::AtLeast(v) => (Some(">="), Some(v)),
        Target::AtMost(v) => (Some("<="), Some(v)),
        Target::RatioAtMost(v) => (Some("ratio<="), Some(v)),
        Target::None => (None, None),
    };
    let line = serde_json::json!({
        "area": area, "figure": figure, "value": value, "unit": unit,
        "target_op": op, "target": t,
        "reference": reference.map(|r| r.0), "reference_value": reference.map(|r| r.1),
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("VIGIL_BENCH_REPORT {}: {e}", path.to_string_lossy()));
    writeln!(f, "{line}").unwrap();
}
