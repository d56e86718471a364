//! Functions whose result can be far larger than their arguments, held to
//! the session's memory pool.
//!
//! DataFusion's operators count what they hold against the memory pool,
//! but a scalar function allocates its result outside it:
//! `repeat('a', 1000000000)` made a gigabyte under a 256 MiB limit, and
//! `repeat(repeat('a', 1e8), 20)` 8 GB. Each function here is replaced in
//! every session by a [`Bounded`] wrapper that works out, before calling
//! it, how many bytes its result can take at most (from the lengths and
//! counts in its arguments, row by row), and reserves them from the pool
//! first: a result that does not fit is a ResourcesExhausted error naming
//! the function, and nothing is allocated. The reservation is given back
//! once the result is made (the operator that keeps it counts it then).
//!
//! Other functions' results are at most a small multiple of their
//! arguments (`concat` of two values, a hex encoding), so their growth is
//! held by the bounds on their arguments.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray as _};
use arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::execution::FunctionRegistry as _;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};
use datafusion::prelude::SessionContext;

/// Bytes a function's result can take at most, from its arguments.
type Estimate = fn(&[ColumnarValue], usize) -> datafusion::common::Result<u128>;

/// The functions held to the pool, with how their result's size is bounded.
const BOUNDED: &[(&str, Estimate)] = &[
    ("repeat", repeat),
    ("lpad", pad),
    ("rpad", pad),
    ("replace", replace),
    ("regexp_replace", regexp_replace),
    ("array_repeat", array_repeat),
    ("array_resize", array_resize),
];

/// Replaces the functions of [`BOUNDED`] in `ctx` with wrappers that
/// reserve their result's size from its memory pool first.
pub(crate) fn register(ctx: &SessionContext) {
    let pool = &ctx.runtime_env().memory_pool;
    for (name, estimate) in BOUNDED {
        if let Ok(inner) = ctx.udf(name) {
            let bounded = Bounded { inner, pool: pool.clone(), estimate: *estimate };
            ctx.register_udf(ScalarUDF::new_from_impl(bounded));
        }
    }
}

/// A function whose result is reserved from the memory pool before it is
/// made.
#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    pool: Arc<dyn MemoryPool>,
    estimate: Estimate,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner
    }
}

impl Eq for Bounded {}

impl Hash for Bounded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }
    fn signature(&self) -> &Signature {
        self.inner.signature()
    }
    fn return_type(&self, arg_types: &[DataType]) -> datafusion::common::Result<DataType> {
        self.inner.return_type(arg_types)
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs<'_>) -> datafusion::common::Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> datafusion::common::Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> datafusion::common::Result<ColumnarValue> {
        let bytes = (self.estimate)(&args.args, args.number_rows)?;
        let name = self.inner.name();
        let reservation = MemoryConsumer::new(format!("{name}() result")).register(&self.pool);
        let fits = usize::try_from(bytes).ok().map(|b| reservation.try_grow(b));
        if !matches!(fits, Some(Ok(()))) {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{name}(): its result would take up to {bytes} bytes, more than the query's memory limit has left"
            )));
        }
        let result = self.inner.invoke_with_args(args);
        drop(reservation);
        result
    }
}

/// Per row, the bytes of a string or binary argument (or the memory of any
/// other value); 0 for a null.
fn byte_lengths(value: &ColumnarValue, rows: usize) -> Vec<u128> {
    match value {
        ColumnarValue::Scalar(s) => vec![scalar_bytes(s); rows],
        ColumnarValue::Array(a) => (0..a.len()).map(|i| element_bytes(a, i)).collect(),
    }
}

fn scalar_bytes(s: &ScalarValue) -> u128 {
    match s {
        ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
            v.as_ref().map_or(0, |v| v.len() as u128)
        }
        ScalarValue::Binary(v) | ScalarValue::LargeBinary(v) | ScalarValue::BinaryView(v) => {
            v.as_ref().map_or(0, |v| v.len() as u128)
        }
        s if s.is_null() => 0,
        s => s.size() as u128,
    }
}

fn element_bytes(a: &ArrayRef, i: usize) -> u128 {
    if a.is_null(i) {
        return 0;
    }
    let len = match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().value(i).len(),
        DataType::LargeUtf8 => a.as_string::<i64>().value(i).len(),
        DataType::Utf8View => a.as_string_view().value(i).len(),
        DataType::Binary => a.as_binary::<i32>().value(i).len(),
        DataType::LargeBinary => a.as_binary::<i64>().value(i).len(),
        DataType::BinaryView => a.as_binary_view().value(i).len(),
        _ => a.get_array_memory_size() / a.len().max(1),
    };
    len as u128
}

/// Per row, an integer argument (a count or a length); negatives and nulls
/// as 0.
fn counts(value: &ColumnarValue, rows: usize) -> datafusion::common::Result<Vec<u128>> {
    let clamp = |v: Option<i64>| v.map_or(0, |v| v.max(0) as u128);
    Ok(match value {
        ColumnarValue::Scalar(s) => {
            let v = if s.is_null() { None } else { s.cast_to(&DataType::Int64)?.try_into().ok() };
            vec![clamp(v); rows]
        }
        ColumnarValue::Array(a) => {
            let ints = arrow::compute::cast(a, &DataType::Int64)?;
            ints.as_primitive::<Int64Type>().iter().map(clamp).collect()
        }
    })
}

/// The `i`-th argument, or an error naming the function.
fn arg<'a>(args: &'a [ColumnarValue], i: usize, function: &str) -> datafusion::common::Result<&'a ColumnarValue> {
    args.get(i).ok_or_else(|| DataFusionError::Plan(format!("{function}(): argument {} is missing", i + 1)))
}

/// `repeat(s, n)`: `n` copies of `s`.
fn repeat(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<u128> {
    let s = byte_lengths(arg(args, 0, "repeat")?, rows);
    let n = counts(arg(args, 1, "repeat")?, rows)?;
    Ok(s.iter().zip(&n).map(|(s, n)| s.saturating_mul(*n)).fold(0, u128::saturating_add))
}

/// `lpad(s, n [, fill])`, `rpad`: `n` characters of up to 4 bytes.
fn pad(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<u128> {
    let s = byte_lengths(arg(args, 0, "lpad")?, rows);
    let n = counts(arg(args, 1, "lpad")?, rows)?;
    Ok(s.iter().zip(&n).map(|(s, n)| n.saturating_mul(4).saturating_add(*s)).fold(0, u128::saturating_add))
}

/// `replace(s, from, to)`: each occurrence of `from` (at most one per byte
/// of `s`, and one more when `from` is empty) becomes `to`.
fn replace(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<u128> {
    let s = byte_lengths(arg(args, 0, "replace")?, rows);
    let from = byte_lengths(arg(args, 1, "replace")?, rows);
    let to = byte_lengths(arg(args, 2, "replace")?, rows);
    Ok((0..s.len().min(from.len()).min(to.len()))
        .map(|i| {
            let matches = s[i] / from[i].max(1) + 1;
            matches.saturating_mul(to[i]).saturating_add(s[i])
        })
        .fold(0, u128::saturating_add))
}

/// `regexp_replace(s, pattern, replacement [, flags])`: at most one match
/// per byte of `s` and one more, each replaced by the replacement, whose
/// group references (two bytes each) expand to at most the matched text
/// (and the matches together are at most `s`).
fn regexp_replace(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<u128> {
    let s = byte_lengths(arg(args, 0, "regexp_replace")?, rows);
    let r = byte_lengths(arg(args, 2, "regexp_replace")?, rows);
    Ok(s.iter()
        .zip(&r)
        .map(|(s, r)| s.saturating_add((s + 1).saturating_mul(*r)).saturating_add((r / 2).saturating_mul(*s)))
        .fold(0, u128::saturating_add))
}

/// `array_repeat(e, n)`: a list of `n` copies of `e`.
fn array_repeat(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<u128> {
    let e = byte_lengths(arg(args, 0, "array_repeat")?, rows);
    let n = counts(arg(args, 1, "array_repeat")?, rows)?;
    Ok(e.iter().zip(&n).map(|(e, n)| n.saturating_mul(e.max(&8) + 8)).fold(0, u128::saturating_add))
}

/// `array_resize(list, n [, fill])`: a list of `n` elements.
fn array_resize(args: &[ColumnarValue], rows: usize) -> datafusion::common::Result<u128> {
    let list = byte_lengths(arg(args, 0, "array_resize")?, rows);
    let n = counts(arg(args, 1, "array_resize")?, rows)?;
    let fill = match args.get(2) {
        Some(v) => byte_lengths(v, rows),
        None => vec![8; rows],
    };
    Ok((0..list.len().min(n.len()).min(fill.len()))
        .map(|i| n[i].saturating_mul(fill[i].max(8) + 8).saturating_add(list[i]))
        .fold(0, u128::saturating_add))
}
