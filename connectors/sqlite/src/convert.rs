//! Conversions between SQLite values and Arrow arrays, by logical type.
//!
//! Reading is strict: a stored value that does not parse as its column's logical type is an
//! error (the reader turns it into a schema error naming the table, column, key and value),
//! never a NULL. Writing produces the storage class and text forms that read back exactly.
//! The Arrow builders are the SQL kit's `ColumnBuilder`s.

use lockstep_plugin_sdk::arrow::array::{Array, ArrayRef, AsArray};
use lockstep_plugin_sdk::arrow::datatypes::{
    DataType as ArrowType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Int8Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use lockstep_plugin_sdk::protocol::arrow_types::format_decimal;
use lockstep_plugin_sdk::rows::parse_decimal;
use lockstep_sql_kit::ColumnBuilder;

use crate::values::{
    format_date, format_real, format_time, format_timestamp, parse_date, parse_time,
    parse_timestamp, real_to_15_digits, SqlValue,
};

/// Appends `value` to `builder`, or explains why it is not a value of the column's type.
pub(crate) fn push(builder: &mut ColumnBuilder, value: &SqlValue) -> Result<(), String> {
    if value.is_null() {
        builder.append_null();
        return Ok(());
    }
    match builder {
        ColumnBuilder::Boolean(b) => b.append_value(to_bool(value)?),
        ColumnBuilder::Int32(b) => {
            let i = to_i64(value)?;
            b.append_value(i32::try_from(i).map_err(|_| format!("{i} does not fit int32"))?)
        }
        ColumnBuilder::Int64(b) => b.append_value(to_i64(value)?),
        ColumnBuilder::Float32(b) => b.append_value(to_f32(value)?),
        ColumnBuilder::Float64(b) => b.append_value(to_f64(value)?),
        ColumnBuilder::Decimal(b, precision, scale) => {
            b.append_value(to_decimal(value, *precision, *scale)?)
        }
        ColumnBuilder::Text(b) => b.append_value(to_text(value)?),
        ColumnBuilder::Uuid(b) => b.append_value(to_uuid(value)?),
        ColumnBuilder::Json(b) => b.append_value(to_json_text(value)?),
        ColumnBuilder::Binary(b) => b.append_value(to_bytes(value)?),
        ColumnBuilder::Date(b) => match value {
            SqlValue::Text(s) => b.append_value(parse_date(s)?),
            _ => return Err("not a date (YYYY-MM-DD text)".into()),
        },
        ColumnBuilder::Time(b) => match value {
            SqlValue::Text(s) => b.append_value(parse_time(s)?),
            _ => return Err("not a time (HH:MM:SS text)".into()),
        },
        ColumnBuilder::Timestamp(b) => b.append_value(to_timestamp(value)?),
    }
    Ok(())
}

fn to_bool(value: &SqlValue) -> Result<bool, String> {
    match value {
        SqlValue::Int(0) => Ok(false),
        SqlValue::Int(1) => Ok(true),
        SqlValue::Real(f) if *f == 0.0 => Ok(false),
        SqlValue::Real(f) if *f == 1.0 => Ok(true),
        SqlValue::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "t" | "1" | "yes" => Ok(true),
            "false" | "f" | "0" | "no" => Ok(false),
            _ => Err("not a boolean (0/1, true/false)".into()),
        },
        _ => Err("not a boolean (0/1, true/false)".into()),
    }
}

fn to_i64(value: &SqlValue) -> Result<i64, String> {
    match value {
        SqlValue::Int(i) => Ok(*i),
        SqlValue::Real(f)
            if f.fract() == 0.0
                && *f >= -9.223_372_036_854_776e18
                && *f < 9.223_372_036_854_776e18 =>
        {
            Ok(*f as i64)
        }
        SqlValue::Text(s) => s.trim().parse().map_err(|_| "not an integer".into()),
        _ => Err("not an integer in the 64-bit range".into()),
    }
}

fn to_f64(value: &SqlValue) -> Result<f64, String> {
    match value {
        SqlValue::Real(f) => Ok(*f),
        SqlValue::Int(i) => {
            let f = *i as f64;
            // Every integer up to 2^53 is exact; beyond that only some are.
            if f as i128 == *i as i128 && f.abs() < 9.223_372_036_854_776e18 {
                Ok(f)
            } else {
                Err("an integer that a 64-bit float cannot hold exactly".into())
            }
        }
        SqlValue::Text(s) => match s.trim() {
            "Infinity" | "inf" | "Inf" => Ok(f64::INFINITY),
            "-Infinity" | "-inf" | "-Inf" => Ok(f64::NEG_INFINITY),
            t => t
                .parse::<f64>()
                .ok()
                .filter(|f| !f.is_nan())
                .ok_or_else(|| "not a number".into()),
        },
        _ => Err("not a number".into()),
    }
}

/// A number as float32: rounded to the nearest float32, but a finite value beyond float32's
/// range is an error, never an infinity.
fn to_f32(value: &SqlValue) -> Result<f32, String> {
    let wide = to_f64(value)?;
    let narrow = wide as f32;
    if wide.is_finite() && narrow.is_infinite() {
        return Err(format!("{} is out of range for float32", format_real(wide)));
    }
    Ok(narrow)
}

fn to_decimal(value: &SqlValue, precision: u8, scale: i8) -> Result<i128, String> {
    match value {
        SqlValue::Int(i) => parse_decimal(&i.to_string(), precision, scale),
        // SQLite keeps 15 significant digits of a REAL: when the shortest exact text has
        // more decimals than the scale, those digits are binary noise beyond that.
        SqlValue::Real(f) if f.is_finite() => parse_decimal(&format_real(*f), precision, scale)
            .or_else(|_| parse_decimal(&real_to_15_digits(*f), precision, scale)),
        SqlValue::Text(s) => parse_decimal(s, precision, scale),
        _ => Err(format!("not a decimal({precision},{scale})")),
    }
}

fn to_text(value: &SqlValue) -> Result<String, String> {
    match value {
        SqlValue::Text(s) => Ok(s.clone()),
        SqlValue::Int(i) => Ok(i.to_string()),
        SqlValue::Real(f) => Ok(format_real(*f)),
        SqlValue::Blob(b) => {
            String::from_utf8(b.clone()).map_err(|_| "a BLOB that is not UTF-8 text".into())
        }
        SqlValue::Null => Err("NULL".into()),
    }
}

/// A UUID in canonical form (lower-case, hyphenated), from text in any common spelling or a
/// 16-byte BLOB.
pub(crate) fn to_uuid(value: &SqlValue) -> Result<String, String> {
    let hex_digits: String = match value {
        SqlValue::Blob(b) if b.len() == 16 => crate::values::hex(b),
        SqlValue::Text(s) => {
            let t = s.trim().trim_start_matches('{').trim_end_matches('}');
            let digits: String = t.chars().filter(|c| *c != '-').collect();
            let hyphens_ok = t.len() == 32
                || (t.len() == 36 && [8, 13, 18, 23].iter().all(|&i| t.as_bytes()[i] == b'-'));
            if !hyphens_ok {
                return Err("not a UUID".into());
            }
            digits
        }
        _ => return Err("not a UUID".into()),
    };
    if hex_digits.len() != 32 || !hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not a UUID".into());
    }
    let h = hex_digits.to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn to_json_text(value: &SqlValue) -> Result<String, String> {
    match value {
        SqlValue::Int(i) => Ok(i.to_string()),
        SqlValue::Real(f) if f.is_finite() => Ok(format_real(*f)),
        SqlValue::Text(s) => match serde_json::from_str::<serde_json::Value>(s) {
            Ok(_) => Ok(s.clone()),
            Err(e) => Err(format!("not a JSON document ({e})")),
        },
        _ => Err("not a JSON document".into()),
    }
}

fn to_bytes(value: &SqlValue) -> Result<Vec<u8>, String> {
    match value {
        SqlValue::Blob(b) => Ok(b.clone()),
        SqlValue::Text(s) => Ok(s.as_bytes().to_vec()),
        _ => Err("not binary (a BLOB)".into()),
    }
}

fn to_timestamp(value: &SqlValue) -> Result<i64, String> {
    match value {
        SqlValue::Text(s) => parse_timestamp(s),
        SqlValue::Int(secs) => secs
            .checked_mul(1_000_000)
            .ok_or_else(|| "unix seconds out of range".into()),
        _ => Err("not a timestamp (ISO 8601 text or integer unix seconds)".into()),
    }
}

/// Reads the value at `row` of an Arrow column as the SQLite value to write. `Err` explains a
/// value SQLite cannot hold.
pub(crate) fn sql_value(array: &ArrayRef, row: usize) -> Result<SqlValue, String> {
    if array.is_null(row) || array.data_type() == &ArrowType::Null {
        return Ok(SqlValue::Null);
    }
    Ok(match array.data_type() {
        ArrowType::Boolean => SqlValue::Int(array.as_boolean().value(row) as i64),
        ArrowType::Int8 => SqlValue::Int(array.as_primitive::<Int8Type>().value(row) as i64),
        ArrowType::Int16 => SqlValue::Int(array.as_primitive::<Int16Type>().value(row) as i64),
        ArrowType::Int32 => SqlValue::Int(array.as_primitive::<Int32Type>().value(row) as i64),
        ArrowType::Int64 => SqlValue::Int(array.as_primitive::<Int64Type>().value(row)),
        ArrowType::UInt8 => SqlValue::Int(array.as_primitive::<UInt8Type>().value(row) as i64),
        ArrowType::UInt16 => SqlValue::Int(array.as_primitive::<UInt16Type>().value(row) as i64),
        ArrowType::UInt32 => SqlValue::Int(array.as_primitive::<UInt32Type>().value(row) as i64),
        ArrowType::UInt64 => {
            let v = array.as_primitive::<UInt64Type>().value(row);
            SqlValue::Int(
                i64::try_from(v).map_err(|_| format!("{v} exceeds SQLite's 64-bit integers"))?,
            )
        }
        ArrowType::Float32 => real(array.as_primitive::<Float32Type>().value(row) as f64)?,
        ArrowType::Float64 => real(array.as_primitive::<Float64Type>().value(row))?,
        ArrowType::Decimal128(_, scale) => SqlValue::Text(format_decimal(
            array.as_primitive::<Decimal128Type>().value(row),
            *scale,
        )),
        ArrowType::Utf8 => SqlValue::Text(array.as_string::<i32>().value(row).to_owned()),
        ArrowType::LargeUtf8 => SqlValue::Text(array.as_string::<i64>().value(row).to_owned()),
        ArrowType::Binary => SqlValue::Blob(array.as_binary::<i32>().value(row).to_vec()),
        ArrowType::LargeBinary => SqlValue::Blob(array.as_binary::<i64>().value(row).to_vec()),
        ArrowType::FixedSizeBinary(_) => {
            SqlValue::Blob(array.as_fixed_size_binary().value(row).to_vec())
        }
        ArrowType::Date32 => {
            let days = array.as_primitive::<Date32Type>().value(row);
            SqlValue::Text(format_date(days).ok_or_else(|| format!("day {days} is out of range"))?)
        }
        ArrowType::Time64(TimeUnit::Microsecond) => {
            let us = array.as_primitive::<Time64MicrosecondType>().value(row);
            SqlValue::Text(format_time(us).ok_or_else(|| format!("{us} µs is not a time of day"))?)
        }
        ArrowType::Timestamp(TimeUnit::Microsecond, tz) => {
            let us = array.as_primitive::<TimestampMicrosecondType>().value(row);
            SqlValue::Text(
                format_timestamp(us, tz.is_some())
                    .ok_or_else(|| format!("{us} µs since the epoch is out of range"))?,
            )
        }
        other => return Err(format!("Arrow type {other} is not a Lockstep logical type")),
    })
}

fn real(f: f64) -> Result<SqlValue, String> {
    if f.is_nan() {
        // SQLite would store NaN as NULL.
        Err("NaN cannot be stored in SQLite (it would become NULL)".into())
    } else {
        Ok(SqlValue::Real(f))
    }
}

/// Whether an Arrow column type can be written (checked once per batch, before any row).
pub(crate) fn writable(arrow_type: &ArrowType) -> bool {
    matches!(
        arrow_type,
        ArrowType::Boolean
            | ArrowType::Int8
            | ArrowType::Int16
            | ArrowType::Int32
            | ArrowType::Int64
            | ArrowType::UInt8
            | ArrowType::UInt16
            | ArrowType::UInt32
            | ArrowType::UInt64
            | ArrowType::Float32
            | ArrowType::Float64
            | ArrowType::Decimal128(..)
            | ArrowType::Utf8
            | ArrowType::LargeUtf8
            | ArrowType::Binary
            | ArrowType::LargeBinary
            | ArrowType::FixedSizeBinary(_)
            | ArrowType::Date32
            | ArrowType::Time64(TimeUnit::Microsecond)
            | ArrowType::Timestamp(TimeUnit::Microsecond, _)
    ) || matches!(arrow_type, ArrowType::Null)
}
