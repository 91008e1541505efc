//! Rows of JSON values to Arrow batches and back, for connectors that think in rows
//! (REST APIs, files) and would rather not touch Arrow builders.
//!
//! Values are coerced by the field's logical type: numbers may arrive as JSON numbers or
//! numeric strings, timestamps as RFC 3339 or `YYYY-MM-DD HH:MM:SS[.ffffff]`, dates as
//! `YYYY-MM-DD`, binary as `\x`-prefixed hex, JSON documents as any JSON value. A value that
//! does not fit is an error naming the row, the field and the value's problem; nothing is
//! truncated or dropped silently.
//!
//! Connectors use these through the SDK (`lockstep_plugin_sdk::rows`); the engine uses them
//! to build the key batches of retries and deletes, and the conformance kit to compare what
//! plugins return. [`rows_from_batch`] shows values exactly as the host's
//! `lockstep_protocol::arrow_types::json_value` does.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use lockstep_protocol::arrow_types::{arrow_schema, json_value};
use lockstep_protocol::{DataType, FieldInfo};
use serde::Serialize;
use serde_json::{Map, Value};

/// A value that does not fit its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("row {row}, field `{field}`: {reason}")]
pub struct RowError {
    pub row: usize,
    pub field: String,
    pub reason: String,
}

/// Builds a batch with one column per field from rows of JSON objects. A missing key is null.
pub fn batch_from_rows(
    fields: &[FieldInfo],
    rows: &[Map<String, Value>],
) -> Result<RecordBatch, RowError> {
    let schema = Arc::new(arrow_schema(fields));
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.len());
    for field in fields {
        let values = rows
            .iter()
            .map(|r| r.get(&field.name).unwrap_or(&Value::Null));
        columns.push(build_column(field, values)?);
    }
    RecordBatch::try_new(schema, columns).map_err(|e| RowError {
        row: 0,
        field: String::new(),
        reason: e.to_string(),
    })
}

/// Builds a batch from any serializable rows (structs with serde derives, for instance).
pub fn batch_from_serialize<T: Serialize>(
    fields: &[FieldInfo],
    rows: &[T],
) -> Result<RecordBatch, RowError> {
    let objects = rows
        .iter()
        .enumerate()
        .map(|(row, r)| match serde_json::to_value(r) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(RowError {
                row,
                field: String::new(),
                reason: "a row must serialize to a JSON object".into(),
            }),
            Err(e) => Err(RowError {
                row,
                field: String::new(),
                reason: e.to_string(),
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    batch_from_rows(fields, &objects)
}

/// The rows of a batch as JSON objects (the inverse of [`batch_from_rows`]).
pub fn rows_from_batch(batch: &RecordBatch) -> Vec<Map<String, Value>> {
    let schema = batch.schema();
    let logical: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| DataType::from_arrow_field(f))
        .collect();
    (0..batch.num_rows())
        .map(|row| {
            schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    (
                        f.name().clone(),
                        json_value(batch.column(i), row, logical[i]),
                    )
                })
                .collect()
        })
        .collect()
}

fn build_column<'a>(
    field: &FieldInfo,
    values: impl Iterator<Item = &'a Value>,
) -> Result<ArrayRef, RowError> {
    let err = |row: usize, reason: String| RowError {
        row,
        field: field.name.clone(),
        reason,
    };
    macro_rules! build {
        ($builder:expr, $convert:expr) => {{
            let mut b = $builder;
            for (row, v) in values.enumerate() {
                if v.is_null() {
                    if !field.nullable {
                        return Err(err(row, "null in a field that is not nullable".into()));
                    }
                    b.append_null();
                } else {
                    #[allow(clippy::redundant_closure_call)]
                    b.append_value(($convert)(v).map_err(|reason: String| err(row, reason))?);
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match field.data_type {
        DataType::Boolean => build!(BooleanBuilder::new(), to_bool),
        DataType::Int32 => build!(Int32Builder::new(), |v| to_i64(v).and_then(|i| {
            i32::try_from(i).map_err(|_| format!("{i} does not fit a 32-bit integer"))
        })),
        DataType::Int64 => build!(Int64Builder::new(), to_i64),
        DataType::Float32 => build!(Float32Builder::new(), |v| to_f64(v).map(|f| f as f32)),
        DataType::Float64 => build!(Float64Builder::new(), to_f64),
        DataType::Decimal { precision, scale } => {
            let b = Decimal128Builder::new()
                .with_precision_and_scale(precision, scale)
                .map_err(|e| err(0, e.to_string()))?;
            build!(b, |v| to_decimal(v, precision, scale))
        }
        DataType::Text | DataType::Uuid => build!(StringBuilder::new(), to_text),
        DataType::Json => build!(StringBuilder::new(), |v: &Value| Ok::<_, String>(
            v.to_string()
        )),
        DataType::Binary => build!(BinaryBuilder::new(), to_binary),
        DataType::Date => build!(Date32Builder::new(), to_date),
        DataType::Time => build!(Time64MicrosecondBuilder::new(), to_time),
        DataType::Timestamp => build!(TimestampMicrosecondBuilder::new(), |v| to_timestamp(
            v, false
        )),
        DataType::TimestampTz => build!(
            TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            |v| to_timestamp(v, true)
        ),
    })
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn to_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::Number(n) if n.as_i64() == Some(0) => Ok(false),
        Value::Number(n) if n.as_i64() == Some(1) => Ok(true),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" => Ok(true),
            "false" | "f" | "0" | "no" => Ok(false),
            _ => Err(format!("`{s}` is not a boolean (true/false, 1/0, yes/no)")),
        },
        other => Err(format!("expected a boolean, found {}", describe(other))),
    }
}

fn to_i64(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("{n} is not an integer in the 64-bit range")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an integer")),
        Value::Bool(b) => Ok(*b as i64),
        other => Err(format!("expected an integer, found {}", describe(other))),
    }
}

fn to_f64(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("{n} is not a float")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number")),
        other => Err(format!("expected a number, found {}", describe(other))),
    }
}

/// Parses decimal text exactly into an unscaled integer at `scale`, refusing digits that
/// would be lost and values beyond `precision`.
pub fn parse_decimal(text: &str, precision: u8, scale: i8) -> Result<i128, String> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("`{text}` is not a decimal number"));
    }
    let scale_u = scale.max(0) as usize;
    let frac_trimmed = frac.trim_end_matches('0');
    if frac_trimmed.len() > scale_u {
        return Err(format!(
            "`{text}` has more than {scale} decimal places; it would be rounded"
        ));
    }
    let mut unscaled: i128 = 0;
    let all = int
        .chars()
        .chain(frac.chars().chain(std::iter::repeat('0')).take(scale_u));
    for c in all {
        unscaled = unscaled
            .checked_mul(10)
            .and_then(|u| u.checked_add((c as u8 - b'0') as i128))
            .ok_or_else(|| format!("`{text}` is too large for a decimal"))?;
    }
    if unscaled >= 10i128.pow(precision as u32) {
        return Err(format!(
            "`{text}` does not fit decimal({precision},{scale})"
        ));
    }
    Ok(if negative { -unscaled } else { unscaled })
}

fn to_decimal(v: &Value, precision: u8, scale: i8) -> Result<i128, String> {
    match v {
        Value::Number(n) => parse_decimal(&n.to_string(), precision, scale),
        Value::String(s) => parse_decimal(s, precision, scale),
        other => Err(format!("expected a decimal, found {}", describe(other))),
    }
}

fn to_text(v: &Value) -> Result<String, String> {
    Ok(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

fn to_binary(v: &Value) -> Result<Vec<u8>, String> {
    let Value::String(s) = v else {
        return Err(format!(
            "expected `\\x`-prefixed hex text, found {}",
            describe(v)
        ));
    };
    let hex = s
        .strip_prefix("\\x")
        .ok_or_else(|| "binary values must be `\\x`-prefixed hex text".to_string())?;
    if hex.len() % 2 != 0 {
        return Err("hex text has an odd number of digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| format!("`{s}` is not hex")))
        .collect()
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("1970-01-01 is a date");

fn to_date(v: &Value) -> Result<i32, String> {
    let Value::String(s) = v else {
        return Err(format!(
            "expected a date (YYYY-MM-DD), found {}",
            describe(v)
        ));
    };
    let date = NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date (YYYY-MM-DD)"))?;
    Ok((date - EPOCH).num_days() as i32)
}

fn to_time(v: &Value) -> Result<i64, String> {
    let Value::String(s) = v else {
        return Err(format!("expected a time (HH:MM:SS), found {}", describe(v)));
    };
    let t = NaiveTime::parse_from_str(s.trim(), "%H:%M:%S%.f")
        .map_err(|_| format!("`{s}` is not a time (HH:MM:SS[.ffffff])"))?;
    Ok(t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64)
}

/// Parses a timestamp into microseconds since the epoch (UTC for offsets, as-is otherwise).
pub fn parse_timestamp_micros(s: &str) -> Result<i64, String> {
    let s = s.trim();
    if let Ok(dt) = DateTime::parse_from_rfc3339(s) {
        return Ok(dt.timestamp_micros());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(dt) = DateTime::parse_from_str(s, format) {
            return Ok(dt.timestamp_micros());
        }
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(s, format) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok((d - EPOCH).num_days() * 86_400_000_000);
    }
    Err(format!(
        "`{s}` is not a timestamp (RFC 3339 or YYYY-MM-DD HH:MM:SS[.ffffff])"
    ))
}

fn to_timestamp(v: &Value, _utc: bool) -> Result<i64, String> {
    match v {
        Value::String(s) => parse_timestamp_micros(s),
        other => Err(format!("expected a timestamp, found {}", describe(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(name: &str, data_type: DataType, nullable: bool) -> FieldInfo {
        FieldInfo {
            name: name.into(),
            data_type,
            nullable,
            native_type: None,
        }
    }

    #[test]
    fn rows_round_trip_through_batches() {
        let fields = vec![
            field("id", DataType::Int64, false),
            field("name", DataType::Text, true),
            field(
                "price",
                DataType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                true,
            ),
            field("at", DataType::TimestampTz, true),
            field("day", DataType::Date, true),
            field("doc", DataType::Json, true),
            field("raw", DataType::Binary, true),
            field("ok", DataType::Boolean, true),
        ];
        let rows: Vec<Map<String, Value>> = vec![
            json!({"id": 1, "name": "Zoë", "price": "12.50", "at": "2024-05-01T10:00:00Z",
                   "day": "2024-05-01", "doc": {"a": [1, 2]}, "raw": "\\x00ff", "ok": true}),
            json!({"id": "2", "name": null}),
        ]
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect();
        let batch = batch_from_rows(&fields, &rows).unwrap();
        assert_eq!(batch.num_rows(), 2);
        let back = rows_from_batch(&batch);
        assert_eq!(back[0]["name"], json!("Zoë"));
        assert_eq!(back[0]["price"], json!("12.50"));
        assert_eq!(back[0]["at"], json!("2024-05-01T10:00:00Z"));
        assert_eq!(back[0]["day"], json!("2024-05-01"));
        assert_eq!(back[0]["doc"], json!({"a": [1, 2]}));
        assert_eq!(back[0]["raw"], json!("\\x00ff"));
        assert_eq!(back[1]["id"], json!(2));
        assert_eq!(back[1]["price"], Value::Null);
    }

    #[test]
    fn values_that_do_not_fit_are_errors_not_truncations() {
        let fields = vec![field(
            "p",
            DataType::Decimal {
                precision: 4,
                scale: 1,
            },
            true,
        )];
        let row = |v: Value| vec![json!({ "p": v }).as_object().unwrap().clone()];
        let e = batch_from_rows(&fields, &row(json!("1.25"))).unwrap_err();
        assert!(e.reason.contains("rounded"), "{e}");
        let e = batch_from_rows(&fields, &row(json!("12345"))).unwrap_err();
        assert!(e.reason.contains("does not fit"), "{e}");
        let ints = vec![field("i", DataType::Int32, false)];
        let e = batch_from_rows(
            &ints,
            &[json!({"i": 1u64 << 40}).as_object().unwrap().clone()],
        )
        .unwrap_err();
        assert_eq!((e.row, e.field.as_str()), (0, "i"));
        let e = batch_from_rows(&ints, &[Map::new()]).unwrap_err();
        assert!(e.reason.contains("not nullable"), "{e}");
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal("-0.05", 5, 2), Ok(-5));
        assert_eq!(parse_decimal("10.500", 5, 2), Ok(1050));
        assert!(parse_decimal("1e5", 10, 0).is_err());
    }
}
