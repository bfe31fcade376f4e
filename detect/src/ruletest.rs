//! Running the tests rule files carry (`vigil rules test`).

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::TimestampNanosecondType;
use vigil_schemas::{Decoder, DecoderConfig, EventBatchBuilder};

use crate::evidence::{EvRef, Outcome};
use crate::filter::BatchRows;
use crate::row::OwnedRow;
use crate::rules::{Defaults, RuleTest, Source, compile, duration_ns, parse};

/// Where every test starts (event time): 2026-01-01T00:00:00Z.
pub(crate) const TEST_START_NS: i64 = 1_767_225_600_000_000_000;

/// One test's result.
#[derive(Debug)]
pub struct TestResult {
    pub rule: String,
    pub source: String,
    pub test: String,
    /// `None`: passed; else why not.
    pub failure: Option<String>,
}

#[derive(Clone)]
enum Input {
    Fields(OwnedRow),
    Raw(RecordBatch),
}

/// The events of a test, in order, with their event times.
fn expand(t: &RuleTest) -> Result<Vec<(Input, i64)>, String> {
    let decoder = Decoder::new(DecoderConfig::default(), None);
    let mut out = Vec::new();
    let mut next = TEST_START_NS;
    for (i, e) in t.events.iter().enumerate() {
        let every = match &e.every {
            Some(s) => duration_ns(s).map_err(|e| e.to_string())?,
            None => 1_000_000_000,
        };
        let at =
            e.at.as_deref()
                .map(duration_ns)
                .transpose()
                .map_err(|e| e.to_string())?;
        let repeat = e.repeat.unwrap_or(1);
        let (input, own_time) = match (&e.fields, &e.raw) {
            (Some(f), None) => {
                let json: Vec<(String, serde_json::Value)> = f
                    .iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            serde_json::to_value(v).map_err(|e| e.to_string())?,
                        ))
                    })
                    .collect::<Result<_, String>>()?;
                let row = OwnedRow::from_fields(json.iter().map(|(k, v)| (k.as_str(), v)))
                    .map_err(|m| format!("event {}: {m}", i + 1))?;
                (Input::Fields(row), None)
            }
            (None, Some(raw)) => {
                let mut b = EventBatchBuilder::with_capacity(1);
                decoder
                    .decode_into(raw.trim().as_bytes(), next, &mut b)
                    .map_err(|err| format!("event {}: does not decode: {err}", i + 1))?;
                let batch = b.finish().map_err(|e| e.to_string())?;
                let t = batch
                    .column(0)
                    .as_primitive::<TimestampNanosecondType>()
                    .value(0);
                (Input::Raw(batch), Some(t))
            }
            _ => return Err(format!("event {}: give `fields` or `raw`", i + 1)),
        };
        let mut t0 = match (at, own_time) {
            (Some(a), _) => TEST_START_NS + a,
            (None, Some(t)) => t,
            (None, None) => next,
        };
        for _ in 0..repeat {
            out.push((input.clone(), t0));
            next = t0 + every;
            t0 += every;
        }
    }
    Ok(out)
}

/// Run the tests of every source. Sources that do not parse or compile are reported as one
/// failed test each.
pub fn run(sources: &[Source], d: &Defaults) -> Vec<TestResult> {
    let mut results = Vec::new();
    let (sigma, sources): (Vec<&Source>, Vec<&Source>) = sources
        .iter()
        .partition(|s| crate::sigma::is_sigma(&s.name));
    // Sigma rules carry no tests of Vigil's: each is checked to load (a rule that cannot be
    // evaluated fails here with its file and why).
    let mut l = crate::rules::Loaded::default();
    crate::sigma::load(&sigma, d, &mut l);
    for e in l.errors {
        results.push(TestResult {
            rule: "?".into(),
            source: e.file.clone(),
            test: "(load)".into(),
            failure: Some(e.to_string()),
        });
    }
    for r in &l.sigma {
        results.push(TestResult {
            rule: r.meta.id.clone(),
            source: r.meta.source.clone(),
            test: "(loads; a Sigma rule carries no tests)".into(),
            failure: None,
        });
    }
    for s in sources {
        let rf = match parse(&s.name, &s.text) {
            Ok(rf) => rf,
            Err(e) => {
                results.push(TestResult {
                    rule: "?".into(),
                    source: s.name.clone(),
                    test: "(load)".into(),
                    failure: Some(e.to_string()),
                });
                continue;
            }
        };
        for t in &rf.tests {
            let failure = (|| -> Result<(), String> {
                let mut rule = compile(
                    &rf,
                    &s.name,
                    &s.text,
                    s.dir.as_deref(),
                    d,
                    t.allow.as_deref(),
                )
                .map_err(|e| e.to_string())?;
                let mut keys = Vec::new();
                for (n, (input, time_ns)) in expand(t)?.into_iter().enumerate() {
                    let ev = EvRef {
                        log: 0,
                        index: n as u64,
                        time_ns,
                        leaf: [0; 32],
                    };
                    // A test's events come in time order: each one's time is the watermark,
                    // and what waited for it (absence rules) is decided first.
                    for d in rule.kind.due(time_ns, &|_| i64::MAX) {
                        if let crate::absence::Due::Fired(h) = d {
                            keys.push(
                                h.key
                                    .into_iter()
                                    .map(Option::unwrap_or_default)
                                    .collect::<Vec<_>>(),
                            );
                        }
                    }
                    let o = match &input {
                        Input::Fields(r) => rule.kind.observe(r, ev),
                        Input::Raw(b) => {
                            let rows = BatchRows::new(b);
                            let mut last = Outcome::Nothing;
                            for i in 0..rows.len() {
                                let o = rule.kind.observe(&rows.row(i), ev);
                                if o.fired() || matches!(last, Outcome::Nothing) {
                                    last = o;
                                }
                            }
                            last
                        }
                    };
                    if let Outcome::Fired(h) = o {
                        keys.push(
                            h.key
                                .into_iter()
                                .map(Option::unwrap_or_default)
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                if keys.len() != t.alerts {
                    return Err(format!(
                        "expected {} alert(s), got {}: {keys:?}",
                        t.alerts,
                        keys.len()
                    ));
                }
                if !t.keys.is_empty() && t.keys != keys {
                    return Err(format!("expected alert keys {:?}, got {keys:?}", t.keys));
                }
                Ok(())
            })()
            .err();
            results.push(TestResult {
                rule: rf.id.get_ref().clone(),
                source: s.name.clone(),
                test: t.name.clone(),
                failure,
            });
        }
    }
    results
}
