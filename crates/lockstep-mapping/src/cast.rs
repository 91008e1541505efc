//! Conversions between logical types over Arrow arrays, failing per row with a reason.
//!
//! Every array here has the canonical Arrow type of its logical type
//! ([`DataType::arrow_type`]). A row that does not convert becomes null and gets a reason in
//! `errors`, so the rest of the batch goes on.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, Date32Array, StringArray, StringBuilder,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{
    DataType as ArrowType, Date32Type, Decimal128Type, Float32Type, Float64Type, TimeUnit,
    TimestampMicrosecondType,
};
use lockstep_core::protocol::arrow_types::json_value;
use lockstep_core::protocol::DataType;
use lockstep_expr::type_name;

use crate::MappingError;

/// One reason per row, the first one found.
pub(crate) type Errors = [Option<String>];

pub(crate) fn fail(errors: &mut Errors, row: usize, reason: impl FnOnce() -> String) {
    if errors[row].is_none() {
        errors[row] = Some(reason());
    }
}

/// A value quoted for a message, cut when long.
pub(crate) fn shown(value: &str) -> String {
    const MAX: usize = 60;
    if value.chars().count() <= MAX {
        format!("`{value}`")
    } else {
        let cut: String = value.chars().take(MAX).collect();
        format!("`{cut}...`")
    }
}

/// "an int64", "a date".
pub(crate) fn a_type(t: DataType) -> String {
    let name = type_name(t);
    if name.starts_with("int") {
        format!("an {name}")
    } else {
        format!("a {name}")
    }
}

fn is_textual(t: DataType) -> bool {
    matches!(t, DataType::Text | DataType::Json | DataType::Uuid)
}

fn is_numeric(t: DataType) -> bool {
    matches!(
        t,
        DataType::Boolean
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal { .. }
    )
}

fn is_datetime(t: DataType) -> bool {
    matches!(
        t,
        DataType::Date | DataType::Timestamp | DataType::TimestampTz
    )
}

/// Whether `cast(value, to)` is defined for a value of type `from`.
pub(crate) fn can_cast(from: DataType, to: DataType) -> bool {
    if from == to || matches!(to, DataType::Text | DataType::Json) {
        return true;
    }
    match from {
        DataType::Text | DataType::Json => true,
        DataType::Uuid => to == DataType::Binary,
        f if is_numeric(f) => is_numeric(to),
        f if is_datetime(f) => is_datetime(to) || (to == DataType::Time && f != DataType::Date),
        _ => false,
    }
}

/// The canonical Arrow form of a source column of logical type `t` (a LargeUtf8 or Utf8View
/// column as Utf8, an Int8 as Int32...).
pub(crate) fn normalize(
    array: &ArrayRef,
    t: DataType,
    name: &str,
) -> Result<ArrayRef, MappingError> {
    let target = t.arrow_type();
    if array.data_type() == &target {
        return Ok(array.clone());
    }
    if let (ArrowType::Timestamp(_, from_tz), ArrowType::Timestamp(unit, to_tz)) =
        (array.data_type(), &target)
    {
        // Arrow parses named time zones only with chrono-tz: convert the unit keeping the
        // zone, then relabel (the values are UTC instants either way).
        let micros = arrow::compute::cast(array, &ArrowType::Timestamp(*unit, from_tz.clone()))
            .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
        return Ok(Arc::new(
            micros
                .as_primitive::<TimestampMicrosecondType>()
                .clone()
                .with_timezone_opt(to_tz.clone()),
        ));
    }
    arrow::compute::cast(array, &target).map_err(|e| {
        MappingError::InvalidBatch(format!(
            "source column `{name}` has Arrow type {}, which does not convert to {}: {e}",
            array.data_type(),
            type_name(t)
        ))
    })
}

/// The value at `row` as text, for messages and for conversions to text: text as it is,
/// temporal values in ISO 8601, decimals exactly, binary as hex.
pub(crate) fn text_at(array: &ArrayRef, row: usize, t: DataType) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    if is_textual(t) {
        return Some(array.as_string::<i32>().value(row).to_owned());
    }
    if t == DataType::Float32 {
        // As an f32, not widened to f64 digits (0.1, not 0.10000000149011612).
        let v = array.as_primitive::<Float32Type>().value(row);
        return Some(if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{v:.1}")
        } else {
            v.to_string()
        });
    }
    Some(match json_value(array, row, Some(t)) {
        serde_json::Value::String(s) => s,
        other => other.to_string(),
    })
}

/// Converts `array` of type `from` to `to`; rows that do not convert are null, with a reason.
pub(crate) fn cast(
    array: &ArrayRef,
    from: DataType,
    to: DataType,
    errors: &mut Errors,
) -> Result<ArrayRef, MappingError> {
    if from == to {
        return Ok(array.clone());
    }
    match (from, to) {
        (DataType::Json, _) => {
            let text = json_to_text(array, errors);
            if to == DataType::Text {
                return Ok(text);
            }
            cast(&text, DataType::Text, to, errors)
        }
        (_, DataType::Text) => Ok(to_text(array, from, errors)),
        (_, DataType::Json) => Ok(to_json(array, from, errors)),
        (DataType::Text | DataType::Uuid, DataType::Uuid) => Ok(to_uuid(array, errors)),
        (DataType::Text | DataType::Uuid, DataType::Binary) => {
            let strings = array.as_string::<i32>();
            let mut out = BinaryBuilder::with_capacity(strings.len(), strings.value_data().len());
            for v in strings.iter() {
                out.append_option(v.map(str::as_bytes));
            }
            Ok(Arc::new(out.finish()))
        }
        (DataType::Text, DataType::TimestampTz) => {
            // Parsed in UTC (offsets in the text are honoured), then labelled "UTC".
            let options = CastOptions {
                safe: true,
                ..Default::default()
            };
            let zoned = ArrowType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
            let out = cast_with_options(array, &zoned, &options)
                .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
            report_nulls(array, &out, from, errors, |v| {
                format!("{} is not {}", shown(v), a_type(to))
            });
            normalize(&out, to, "")
        }
        (DataType::Text, _) => arrow_cast(array, from, to, errors, |v| {
            format!("{} is not {}", shown(v), a_type(to))
        }),
        (f, t) if is_datetime(f) && (is_datetime(t) || t == DataType::Time) => {
            Ok(temporal_cast(array, f, t))
        }
        (f, t) if is_numeric(f) && is_numeric(t) => {
            check_integral(array, from, to, errors);
            arrow_cast(array, from, to, errors, |v| {
                format!("{} is out of range for {}", shown(v), type_name(to))
            })
        }
        _ if can_cast(from, to) => arrow_cast(array, from, to, errors, |v| {
            format!("{} does not convert to {}", shown(v), type_name(to))
        }),
        _ => Err(MappingError::InvalidBatch(format!(
            "no conversion from {} to {}",
            type_name(from),
            type_name(to)
        ))),
    }
}

/// An Arrow cast in safe mode; a row that was not null and became null failed.
fn arrow_cast(
    array: &ArrayRef,
    from: DataType,
    to: DataType,
    errors: &mut Errors,
    reason: impl Fn(&str) -> String,
) -> Result<ArrayRef, MappingError> {
    let options = CastOptions {
        safe: true,
        ..Default::default()
    };
    let out = cast_with_options(array, &to.arrow_type(), &options)
        .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
    report_nulls(array, &out, from, errors, reason);
    Ok(out)
}

/// A row that was not null and became null failed.
fn report_nulls(
    array: &ArrayRef,
    out: &ArrayRef,
    from: DataType,
    errors: &mut Errors,
    reason: impl Fn(&str) -> String,
) {
    if out.null_count() > array.null_count() {
        for row in 0..array.len() {
            if out.is_null(row) && !array.is_null(row) {
                let value = text_at(array, row, from).unwrap_or_default();
                fail(errors, row, || reason(&value));
            }
        }
    }
}

const DAY_MICROS: i64 = 86_400_000_000;

/// Between dates, timestamps (UTC instants) and times of day.
fn temporal_cast(array: &ArrayRef, from: DataType, to: DataType) -> ArrayRef {
    let micros: Vec<Option<i64>> = match from {
        DataType::Date => array
            .as_primitive::<Date32Type>()
            .iter()
            .map(|d| d.map(|d| d as i64 * DAY_MICROS))
            .collect(),
        _ => array
            .as_primitive::<TimestampMicrosecondType>()
            .iter()
            .collect(),
    };
    match to {
        DataType::Date => Arc::new(
            micros
                .into_iter()
                .map(|us| us.map(|us| us.div_euclid(DAY_MICROS) as i32))
                .collect::<Date32Array>(),
        ),
        DataType::Time => Arc::new(
            micros
                .into_iter()
                .map(|us| us.map(|us| us.rem_euclid(DAY_MICROS)))
                .collect::<Time64MicrosecondArray>(),
        ),
        DataType::TimestampTz => {
            Arc::new(TimestampMicrosecondArray::from(micros).with_timezone("UTC"))
        }
        _ => Arc::new(TimestampMicrosecondArray::from(micros)),
    }
}

/// A float or decimal with a fraction does not become an integer: Arrow would truncate it.
fn check_integral(array: &ArrayRef, from: DataType, to: DataType, errors: &mut Errors) {
    if !matches!(to, DataType::Int32 | DataType::Int64) {
        return;
    }
    let fractional: Vec<bool> = match from {
        DataType::Float32 => array
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.is_some_and(|v| v.fract() != 0.0))
            .collect(),
        DataType::Float64 => array
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.is_some_and(|v| v.fract() != 0.0))
            .collect(),
        DataType::Decimal { scale, .. } if scale > 0 => {
            let unit = 10i128.pow(scale as u32);
            array
                .as_primitive::<Decimal128Type>()
                .iter()
                .map(|v| v.is_some_and(|v| v % unit != 0))
                .collect()
        }
        _ => return,
    };
    for (row, fractional) in fractional.into_iter().enumerate() {
        if fractional {
            let value = text_at(array, row, from).unwrap_or_default();
            fail(errors, row, || {
                format!(
                    "{} is not {} (it has a fractional part)",
                    shown(&value),
                    a_type(to)
                )
            });
        }
    }
}

/// Text of any type: JSON strings unquoted, other JSON as its text, binary decoded as UTF-8.
pub(crate) fn to_text(array: &ArrayRef, from: DataType, errors: &mut Errors) -> ArrayRef {
    match from {
        DataType::Text | DataType::Uuid => array.clone(),
        DataType::Json => json_to_text(array, errors),
        DataType::Binary => {
            let bytes = array.as_binary::<i32>();
            let mut out = StringBuilder::with_capacity(bytes.len(), bytes.value_data().len());
            for (row, v) in bytes.iter().enumerate() {
                match v.map(std::str::from_utf8) {
                    None => out.append_null(),
                    Some(Ok(s)) => out.append_value(s),
                    Some(Err(_)) => {
                        fail(errors, row, || {
                            "a binary value is not valid UTF-8 text".to_owned()
                        });
                        out.append_null();
                    }
                }
            }
            Arc::new(out.finish())
        }
        _ => {
            let out: StringArray = (0..array.len())
                .map(|row| text_at(array, row, from))
                .collect();
            Arc::new(out)
        }
    }
}

/// JSON documents as text: a string is unquoted, anything else is its JSON text; JSON `null`
/// is null.
fn json_to_text(array: &ArrayRef, errors: &mut Errors) -> ArrayRef {
    let strings = array.as_string::<i32>();
    let mut out = StringBuilder::with_capacity(strings.len(), strings.value_data().len());
    for (row, v) in strings.iter().enumerate() {
        let Some(v) = v else {
            out.append_null();
            continue;
        };
        match serde_json::from_str::<serde_json::Value>(v) {
            Ok(serde_json::Value::String(s)) => out.append_value(s),
            Ok(serde_json::Value::Null) => out.append_null(),
            Ok(_) => out.append_value(v.trim()),
            Err(_) => {
                fail(errors, row, || format!("{} is not valid JSON", shown(v)));
                out.append_null();
            }
        }
    }
    Arc::new(out.finish())
}

/// JSON of any type; text is parsed as a JSON document.
fn to_json(array: &ArrayRef, from: DataType, errors: &mut Errors) -> ArrayRef {
    if from == DataType::Text {
        let strings = array.as_string::<i32>();
        let mut out = StringBuilder::with_capacity(strings.len(), strings.value_data().len());
        for (row, v) in strings.iter().enumerate() {
            match v {
                None => out.append_null(),
                Some(v) if serde_json::from_str::<serde::de::IgnoredAny>(v).is_ok() => {
                    out.append_value(v)
                }
                Some(v) => {
                    fail(errors, row, || format!("{} is not valid JSON", shown(v)));
                    out.append_null();
                }
            }
        }
        return Arc::new(out.finish());
    }
    let out: StringArray = (0..array.len())
        .map(|row| (!array.is_null(row)).then(|| json_value(array, row, Some(from)).to_string()))
        .collect();
    Arc::new(out)
}

/// Text as a UUID in its canonical form (lower-case, hyphenated); 32 bare hex digits and
/// braces are accepted.
fn to_uuid(array: &ArrayRef, errors: &mut Errors) -> ArrayRef {
    let strings = array.as_string::<i32>();
    let mut out = StringBuilder::with_capacity(strings.len(), 36 * strings.len());
    for (row, v) in strings.iter().enumerate() {
        match v {
            None => out.append_null(),
            Some(v) => match canonical_uuid(v) {
                Some(u) => out.append_value(u),
                None => {
                    fail(errors, row, || format!("{} is not a uuid", shown(v)));
                    out.append_null();
                }
            },
        }
    }
    Arc::new(out.finish())
}

fn canonical_uuid(text: &str) -> Option<String> {
    let t = text.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    let hex: String = if t.len() == 36 {
        let dashes = [8, 13, 18, 23];
        if !dashes.iter().all(|&i| t.as_bytes()[i] == b'-') {
            return None;
        }
        t.chars().filter(|c| *c != '-').collect()
    } else {
        t.to_owned()
    };
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let h = hex.to_ascii_lowercase();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}
