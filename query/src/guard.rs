//! Functions whose cost grows with their arguments, not their input: each call's output (or,
//! for `levenshtein`, its work) is estimated from its arguments before it runs and refused
//! past a cap. DataFusion's memory pool never sees the memory a scalar function allocates, and
//! a query cannot be stopped inside one call; without this, one `repeat`, `range` or
//! `levenshtein` over literal arguments holds a core for minutes or takes the whole process's
//! memory, whatever the query's own limits say. Constant folding calls the same functions at
//! planning time, so literals are refused there too.
//!
//! Guarded: `repeat`, `lpad`, `rpad`, `replace`, `regexp_replace`, `levenshtein`, `range`,
//! `generate_series` (the array functions), `array_repeat`, `array_resize`. Every other
//! function's output is bounded by its input's size.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::udf_eq::UdfEq;
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl};
use datafusion::prelude::SessionContext;

/// The caps: one function call's output in bytes (its elements × 8 for lists), and
/// `levenshtein`'s work in character pairs.
pub(crate) const MAX_CALL_OUTPUT_BYTES: u64 = 64 << 20;
pub(crate) const MAX_CALL_PAIRS: u64 = 50_000_000;

/// How a function's cost follows from its arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cost {
    /// `repeat(s, n)`: `len(s) × n` bytes.
    Repeat,
    /// `lpad(s, n [, fill])`: `n` characters (up to 4 bytes each).
    Pad,
    /// `replace(s, from, to)`: every `from` (every character if empty) becomes `to`.
    Replace,
    /// `levenshtein(a, b)`: `len(a) × len(b)` steps.
    Pairs,
    /// `range([start,] stop [, step])`: its elements, 8 bytes each.
    Range,
    /// `array_repeat(x, n)`, `array_resize(a, n [, fill])`: `n` elements, 8 bytes each.
    Count,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Guarded {
    inner: UdfEq<Arc<dyn ScalarUDFImpl>>,
    cost: Cost,
}

/// Replace the guarded functions of `ctx` with their guarded selves.
pub(crate) fn install(ctx: &SessionContext) {
    let guarded = [
        ("repeat", Cost::Repeat),
        ("lpad", Cost::Pad),
        ("rpad", Cost::Pad),
        ("replace", Cost::Replace),
        ("regexp_replace", Cost::Replace),
        ("levenshtein", Cost::Pairs),
        ("range", Cost::Range),
        ("generate_series", Cost::Range),
        ("array_repeat", Cost::Count),
        ("array_resize", Cost::Count),
    ];
    let state = ctx.state();
    for (name, cost) in guarded {
        if let Some(f) = state.scalar_functions().get(name) {
            let g = Guarded {
                inner: f.inner().clone().into(),
                cost,
            };
            ctx.register_udf(ScalarUDF::new_from_impl(g));
        }
    }
}

/// The largest constant a projection may hold: one is copied into every row of each batch it
/// is projected into (8 192 rows), so a `repeat` within its cap, folded at planning time into
/// a constant, could still fill the memory.
pub(crate) const MAX_PROJECTED_CONSTANT_BYTES: usize = 8 << 10;

/// Refuse an (optimized) plan that projects a constant larger than
/// [`MAX_PROJECTED_CONSTANT_BYTES`].
pub(crate) fn check_plan(plan: &datafusion::logical_expr::LogicalPlan) -> Result<()> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    plan.apply(|node| {
        // Over no table (one row), a constant is not copied: `unnest(range(0, 100000))`.
        let one_row =
            |p: &LogicalPlan| matches!(p, LogicalPlan::EmptyRelation(e) if e.produce_one_row);
        if let LogicalPlan::Projection(p) = node
            && !one_row(&p.input)
        {
            for e in &p.expr {
                e.apply(|e| {
                    if let datafusion::prelude::Expr::Literal(v, _) = e {
                        let size = v.size();
                        if size > MAX_PROJECTED_CONSTANT_BYTES {
                            return Err(refuse(format!(
                                "a constant of {size} bytes would be copied into every row \
                                 (at most {MAX_PROJECTED_CONSTANT_BYTES}): project it from \
                                 a one-row query, or a smaller one"
                            )));
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })?;
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(())
}

/// What a refusal's message starts with (how [`crate::api::sql`] tells it from the rest).
pub(crate) const REFUSED: &str = "function cap";

fn refuse(what: String) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!("{REFUSED}: {what}"))
}

/// Per-row byte lengths of a string argument (a scalar counts once per row).
fn lens(v: &ColumnarValue, rows: usize) -> Vec<u64> {
    match v {
        ColumnarValue::Scalar(s) => {
            let n = match s {
                ScalarValue::Utf8(Some(s))
                | ScalarValue::LargeUtf8(Some(s))
                | ScalarValue::Utf8View(Some(s)) => s.len() as u64,
                _ => 0,
            };
            vec![n; rows]
        }
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a
                .as_string::<i32>()
                .iter()
                .map(|s| s.map_or(0, |s| s.len() as u64))
                .collect(),
            DataType::LargeUtf8 => a
                .as_string::<i64>()
                .iter()
                .map(|s| s.map_or(0, |s| s.len() as u64))
                .collect(),
            DataType::Utf8View => a
                .as_string_view()
                .iter()
                .map(|s| s.map_or(0, |s| s.len() as u64))
                .collect(),
            _ => vec![0; a.len()],
        },
    }
}

/// Per-row values of an argument as i64 (`to`: how to read it first; nulls as 0).
fn ints(v: &ColumnarValue, rows: usize, to: Option<&DataType>) -> Result<Vec<i64>> {
    let cast = |a: &Arc<dyn Array>| -> Result<Int64Array> {
        let a = match to {
            Some(t) => datafusion::arrow::compute::cast(a, t)?,
            None => a.clone(),
        };
        let a = datafusion::arrow::compute::cast(&a, &DataType::Int64)?;
        Ok(a.as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .clone())
    };
    match v {
        ColumnarValue::Scalar(s) => {
            let a = cast(&s.to_array_of_size(1)?)?;
            let n = if a.is_null(0) { 0 } else { a.value(0) };
            Ok(vec![n; rows])
        }
        ColumnarValue::Array(a) => {
            let a = cast(a)?;
            Ok((0..a.len())
                .map(|i| if a.is_null(i) { 0 } else { a.value(i) })
                .collect())
        }
    }
}

const DAY_NS: i64 = 86_400_000_000_000;

/// Per-row lengths of an interval argument in nanoseconds (a month as 28 days: the most
/// elements a range can have), at least 1.
fn interval_ns(v: &ColumnarValue, rows: usize) -> Result<Vec<i64>> {
    let one = |s: ScalarValue| -> i64 {
        let ns = match s {
            ScalarValue::IntervalMonthDayNano(Some(v)) => {
                i64::from(v.months) * 28 * DAY_NS + i64::from(v.days) * DAY_NS + v.nanoseconds
            }
            ScalarValue::IntervalDayTime(Some(v)) => {
                i64::from(v.days) * DAY_NS + i64::from(v.milliseconds) * 1_000_000
            }
            ScalarValue::IntervalYearMonth(Some(m)) => i64::from(m) * 28 * DAY_NS,
            _ => 1,
        };
        ns.saturating_abs().max(1)
    };
    match v {
        ColumnarValue::Scalar(s) => Ok(vec![one(s.clone()); rows]),
        ColumnarValue::Array(a) => (0..a.len())
            .map(|i| ScalarValue::try_from_array(a, i).map(one))
            .collect(),
    }
}

/// Elements of each row's range.
fn range_elements(args: &[ColumnarValue], rows: usize) -> Result<Vec<u64>> {
    let span = |start: &[i64], stop: &[i64], step: &[i64]| -> Vec<u64> {
        (0..rows)
            .map(|i| {
                let width = (i128::from(stop[i]) - i128::from(start[i])).unsigned_abs();
                let step = i128::from(step[i]).unsigned_abs().max(1);
                u64::try_from(width / step + 1).unwrap_or(u64::MAX)
            })
            .collect()
    };
    match args {
        [stop] => {
            let stop = ints(stop, rows, None)?;
            Ok(span(&vec![0; rows], &stop, &vec![1; rows]))
        }
        [start, stop] => Ok(span(
            &ints(start, rows, None)?,
            &ints(stop, rows, None)?,
            &vec![1; rows],
        )),
        [start, stop, step] => {
            let temporal = start.data_type().is_temporal();
            if temporal {
                let ns = DataType::Timestamp(TimeUnit::Nanosecond, None);
                let start = match start.data_type() {
                    DataType::Timestamp(_, Some(_)) => ints(start, rows, None)?,
                    _ => ints(start, rows, Some(&ns))?,
                };
                let stop = match stop.data_type() {
                    DataType::Timestamp(_, Some(_)) => ints(stop, rows, None)?,
                    _ => ints(stop, rows, Some(&ns))?,
                };
                // A timestamp with a time zone is read in its own unit: as nanoseconds.
                let unit = |t: &DataType| match t {
                    DataType::Timestamp(TimeUnit::Second, Some(_)) => 1_000_000_000,
                    DataType::Timestamp(TimeUnit::Millisecond, Some(_)) => 1_000_000,
                    DataType::Timestamp(TimeUnit::Microsecond, Some(_)) => 1_000,
                    _ => 1,
                };
                let (us, ut) = (unit(&args[0].data_type()), unit(&args[1].data_type()));
                let start: Vec<i64> = start.iter().map(|v| v.saturating_mul(us)).collect();
                let stop: Vec<i64> = stop.iter().map(|v| v.saturating_mul(ut)).collect();
                Ok(span(&start, &stop, &interval_ns(step, rows)?))
            } else {
                Ok(span(
                    &ints(start, rows, None)?,
                    &ints(stop, rows, None)?,
                    &ints(step, rows, None)?,
                ))
            }
        }
        _ => Ok(vec![0; rows]),
    }
}

impl Guarded {
    /// The call's cost, refused past its cap.
    fn check(&self, args: &ScalarFunctionArgs) -> Result<()> {
        let rows = args.number_rows.max(1);
        let a = &args.args;
        let name = self.inner.name();
        let positive = |v: Option<&ColumnarValue>| -> Result<Vec<u64>> {
            Ok(match v {
                Some(v) => ints(v, rows, None)?
                    .into_iter()
                    .map(|n| n.max(0) as u64)
                    .collect(),
                None => vec![0; rows],
            })
        };
        let bytes: u64 = match self.cost {
            Cost::Repeat => {
                let (s, n) = (lens(&a[0], rows), positive(a.get(1))?);
                s.iter().zip(&n).map(|(s, n)| s.saturating_mul(*n)).sum()
            }
            Cost::Pad => positive(a.get(1))?
                .iter()
                .map(|n| n.saturating_mul(4))
                .sum(),
            Cost::Replace => {
                let s = lens(&a[0], rows);
                let from = a.get(1).map_or(vec![1; rows], |v| lens(v, rows));
                let to = a.get(2).map_or(vec![0; rows], |v| lens(v, rows));
                (0..rows.min(s.len()))
                    .map(|i| {
                        let hits = s[i] / from[i].max(1) + 1;
                        s[i].saturating_add(hits.saturating_mul(to[i]))
                    })
                    .fold(0u64, u64::saturating_add)
            }
            Cost::Pairs => {
                let (x, y) = (lens(&a[0], rows), lens(&a[1], rows));
                let pairs: u64 = x
                    .iter()
                    .zip(&y)
                    .map(|(x, y)| x.saturating_mul(*y))
                    .fold(0, u64::saturating_add);
                if pairs > MAX_CALL_PAIRS {
                    return Err(refuse(format!(
                        "{name}: {pairs} character pairs to compare in one call, more than \
                         {MAX_CALL_PAIRS}: compare shorter strings, or fewer rows at once"
                    )));
                }
                return Ok(());
            }
            // Arguments it cannot read (out of range for nanoseconds) are the function's own
            // error to give.
            Cost::Range => range_elements(a, rows)
                .unwrap_or_default()
                .into_iter()
                .fold(0u64, u64::saturating_add)
                .saturating_mul(8),
            Cost::Count => positive(a.get(1))?
                .into_iter()
                .fold(0u64, u64::saturating_add)
                .saturating_mul(8),
        };
        if bytes > MAX_CALL_OUTPUT_BYTES {
            return Err(refuse(format!(
                "{name}: its arguments ask for about {bytes} bytes in one call, more than \
                 {MAX_CALL_OUTPUT_BYTES}: ask for less, or over fewer rows at once"
            )));
        }
        Ok(())
    }
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn schema_name(&self, args: &[datafusion::prelude::Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        self.check(&args)?;
        self.inner.invoke_with_args(args)
    }
    fn simplify(
        &self,
        args: Vec<datafusion::prelude::Expr>,
        _info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> Result<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        // Not the inner's simplification: it could hand back the unguarded function.
        Ok(datafusion::logical_expr::simplify::ExprSimplifyResult::Original(args))
    }
    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}
