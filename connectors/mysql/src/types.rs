//! Values on their way into SQL parameters: checkpoint JSON and Arrow cells, each bound as
//! the typed parameter its column needs, plus the checks that refuse values a column would
//! otherwise round or truncate without a word.

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use lockstep_plugin_sdk::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int32Array, Int64Array, StringArray, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use lockstep_plugin_sdk::arrow::compute::cast;
use lockstep_plugin_sdk::protocol::arrow_types::format_decimal;
use lockstep_plugin_sdk::rows::{parse_decimal, parse_timestamp_micros};
use lockstep_plugin_sdk::serde_json::Value;
use lockstep_plugin_sdk::DataType;
use sqlx::mysql::MySqlArguments;
use sqlx::Arguments;

use crate::catalog::{Column, Wire};

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// The placeholder for a value compared with `column`. Decimal columns compare with text as
/// floating point, so their parameters are cast to the column's exact type first.
pub(crate) fn placeholder(column: &Column) -> String {
    match column.mapping {
        Some((_, Wire::Decimal)) => format!(
            "CAST(? AS DECIMAL({},{}))",
            column.numeric_precision.unwrap_or(65).clamp(1, 65),
            column.numeric_scale.unwrap_or(0).min(30)
        ),
        _ => "?".to_owned(),
    }
}

fn add<'q, T>(args: &mut MySqlArguments, value: T) -> Result<(), String>
where
    T: sqlx::Encode<'q, sqlx::MySql> + sqlx::Type<sqlx::MySql> + 'q,
{
    Arguments::add(args, value).map_err(|e| e.to_string())
}

fn micros_to_datetime(us: i64) -> Result<NaiveDateTime, String> {
    DateTime::from_timestamp_micros(us)
        .map(|d| d.naive_utc())
        .ok_or_else(|| format!("{us} microseconds is outside the representable timestamps"))
}

fn micros_to_time(us: i64) -> Result<NaiveTime, String> {
    if !(0..86_400_000_000).contains(&us) {
        return Err(format!("{us} microseconds is not a time of day"));
    }
    NaiveTime::from_num_seconds_from_midnight_opt(
        (us / 1_000_000) as u32,
        (us % 1_000_000) as u32 * 1000,
    )
    .ok_or_else(|| format!("{us} microseconds is not a time of day"))
}

fn days_to_date(days: i32) -> Result<NaiveDate, String> {
    EPOCH
        .checked_add_signed(chrono::TimeDelta::days(days as i64))
        .ok_or_else(|| format!("{days} days from 1970-01-01 is outside the representable dates"))
}

/// Binds a checkpoint or key value (as `json_value` wrote it) for a comparison with `column`.
pub(crate) fn bind_json(
    args: &mut MySqlArguments,
    v: &Value,
    column: &Column,
) -> Result<(), String> {
    let Some((logical, wire)) = column.mapping else {
        return Err(format!("column `{}` has no Lockstep type", column.name));
    };
    let text = || match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Err("null".to_owned()),
        other => Ok(other.to_string()),
    };
    let bad = |what: &str| format!("value {v} for `{}` is not {what}", column.name);
    match (logical, wire) {
        (DataType::Boolean, _) => add(args, v.as_bool().ok_or_else(|| bad("a boolean"))?),
        (DataType::Int32 | DataType::Int64, _) => {
            add(args, v.as_i64().ok_or_else(|| bad("an integer"))?)
        }
        (DataType::Decimal { .. }, Wire::UInt) => {
            let t = text().map_err(|_| bad("a number"))?;
            add(
                args,
                t.trim()
                    .parse::<u64>()
                    .map_err(|_| bad("an unsigned integer"))?,
            )
        }
        (DataType::Float32 | DataType::Float64, _) => {
            add(args, v.as_f64().ok_or_else(|| bad("a number"))?)
        }
        (DataType::Date, _) => {
            let t = text().map_err(|_| bad("a date"))?;
            let d = NaiveDate::parse_from_str(t.trim(), "%Y-%m-%d").map_err(|_| bad("a date"))?;
            add(args, d)
        }
        (DataType::Time, _) => {
            let t = text().map_err(|_| bad("a time"))?;
            let d =
                NaiveTime::parse_from_str(t.trim(), "%H:%M:%S%.f").map_err(|_| bad("a time"))?;
            add(args, d)
        }
        (DataType::Timestamp | DataType::TimestampTz, _) => {
            let t = text().map_err(|_| bad("a timestamp"))?;
            let us = parse_timestamp_micros(&t).map_err(|_| bad("a timestamp"))?;
            add(args, micros_to_datetime(us)?)
        }
        (DataType::Binary, _) => {
            let t = text().map_err(|_| bad("hex bytes"))?;
            add(
                args,
                parse_hex(&t).ok_or_else(|| bad("`\\x`-prefixed hex bytes"))?,
            )
        }
        // Decimals (compared through CAST), text, uuid and json travel as text.
        _ => add(args, text().map_err(|_| bad("a value"))?),
    }
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let hex = s.strip_prefix("\\x")?;
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Subtracts a lookback from a temporal checkpoint value, or `None` when the cursor is not
/// temporal (then no lookback applies).
pub(crate) fn minus_lookback(v: &Value, logical: DataType, lookback_us: i64) -> Option<Value> {
    let s = v.as_str()?;
    match logical {
        DataType::Timestamp | DataType::TimestampTz => {
            let us = parse_timestamp_micros(s).ok()? - lookback_us;
            let dt = micros_to_datetime(us).ok()?;
            Some(Value::String(
                dt.format("%Y-%m-%dT%H:%M:%S%.6f").to_string(),
            ))
        }
        DataType::Date => {
            let d = NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()?;
            let back = lookback_us.div_euclid(86_400_000_000)
                + i64::from(lookback_us.rem_euclid(86_400_000_000) != 0);
            let d = d.checked_sub_signed(chrono::TimeDelta::days(back))?;
            Some(Value::String(d.format("%Y-%m-%d").to_string()))
        }
        _ => None,
    }
}

/// Converts a batch column to the Arrow type of its logical type (Int8 to Int32, LargeUtf8
/// to Utf8, other time units to microseconds, ...).
pub(crate) fn normalize(array: &ArrayRef, logical: DataType) -> Result<ArrayRef, String> {
    let want = logical.arrow_type();
    if array.data_type() == &want {
        return Ok(Arc::clone(array));
    }
    cast(array, &want).map_err(|e| format!("cannot convert {} to {}: {e}", array.data_type(), want))
}

fn dc<T: 'static>(array: &ArrayRef) -> &T {
    array
        .as_any()
        .downcast_ref::<T>()
        .expect("normalize() gave the array the Arrow type of its logical type")
}

/// Why `column` cannot take the value at `row`, when the server would otherwise round,
/// truncate or misread it, or when it cannot be encoded at all.
pub(crate) fn refuse(
    array: &ArrayRef,
    row: usize,
    logical: DataType,
    column: &Column,
) -> Option<String> {
    if array.is_null(row) {
        return None;
    }
    let date_column = matches!(column.data_type.as_str(), "date" | "datetime" | "timestamp");
    let check_year = |year: i32| -> Option<String> {
        if date_column && !(1000..=9999).contains(&year) {
            Some(format!(
                "year {year} is outside the range of MySQL's {} (1000-01-01 to 9999-12-31)",
                column.data_type.to_uppercase()
            ))
        } else if !(0..=9999).contains(&year) {
            Some(format!("year {year} cannot be sent to MySQL (0 to 9999)"))
        } else {
            None
        }
    };
    let fraction_digits = |micros: u32| -> Option<String> {
        let precision = column.datetime_precision?;
        if !matches!(column.data_type.as_str(), "datetime" | "timestamp" | "time") || precision >= 6
        {
            return None;
        }
        let unit = 10u32.pow(6 - precision);
        (micros % unit != 0).then(|| {
            format!(
                "fractional seconds .{micros:06} do not fit {} (it would round them)",
                column.column_type
            )
        })
    };
    match logical {
        DataType::Float32 | DataType::Float64 => {
            let v = if logical == DataType::Float32 {
                dc::<Float32Array>(array).value(row) as f64
            } else {
                dc::<Float64Array>(array).value(row)
            };
            (!v.is_finite()).then(|| format!("{v} cannot be stored: MySQL has no NaN or infinity"))
        }
        DataType::Decimal { scale, .. } => {
            if !matches!(column.mapping, Some((_, Wire::Decimal))) {
                return None;
            }
            let target = column.numeric_scale.unwrap_or(0) as i8;
            let text = format_decimal(dc::<Decimal128Array>(array).value(row), scale);
            if scale > target {
                if let Err(reason) = parse_decimal(&text, 38, target) {
                    return Some(format!("{reason} in {}", column.column_type));
                }
            }
            None
        }
        DataType::Date => match days_to_date(dc::<Date32Array>(array).value(row)) {
            Ok(d) => check_year(d.year()),
            Err(e) => Some(e),
        },
        DataType::Timestamp | DataType::TimestampTz => {
            match micros_to_datetime(dc::<TimestampMicrosecondArray>(array).value(row)) {
                Ok(dt) => check_year(dt.year())
                    .or_else(|| fraction_digits(dt.nanosecond() / 1000))
                    .or_else(|| {
                        (column.data_type == "date" && dt.time() != NaiveTime::MIN).then(|| {
                            "a timestamp with a time of day would lose it in a DATE column"
                                .to_owned()
                        })
                    }),
                Err(e) => Some(e),
            }
        }
        DataType::Time => match micros_to_time(dc::<Time64MicrosecondArray>(array).value(row)) {
            Ok(t) => fraction_digits(t.nanosecond() / 1000),
            Err(e) => Some(e),
        },
        _ => None,
    }
}

/// Binds the value at `row` of a normalized array.
pub(crate) fn bind_cell(
    args: &mut MySqlArguments,
    array: &ArrayRef,
    row: usize,
    logical: DataType,
) -> Result<(), String> {
    let null = array.is_null(row);
    macro_rules! bind {
        ($t:ty, $v:expr) => {
            if null {
                add(args, None::<$t>)
            } else {
                add(args, Some($v))
            }
        };
    }
    match logical {
        DataType::Boolean => bind!(bool, dc::<BooleanArray>(array).value(row)),
        DataType::Int32 => bind!(i32, dc::<Int32Array>(array).value(row)),
        DataType::Int64 => bind!(i64, dc::<Int64Array>(array).value(row)),
        DataType::Float32 => bind!(f32, dc::<Float32Array>(array).value(row)),
        DataType::Float64 => bind!(f64, dc::<Float64Array>(array).value(row)),
        DataType::Decimal { scale, .. } => bind!(
            String,
            format_decimal(dc::<Decimal128Array>(array).value(row), scale)
        ),
        DataType::Text | DataType::Uuid | DataType::Json => {
            bind!(&str, dc::<StringArray>(array).value(row))
        }
        DataType::Binary => bind!(&[u8], dc::<BinaryArray>(array).value(row)),
        DataType::Date => {
            if null {
                add(args, None::<NaiveDate>)
            } else {
                add(
                    args,
                    Some(days_to_date(dc::<Date32Array>(array).value(row))?),
                )
            }
        }
        DataType::Time => {
            if null {
                add(args, None::<NaiveTime>)
            } else {
                add(
                    args,
                    Some(micros_to_time(
                        dc::<Time64MicrosecondArray>(array).value(row),
                    )?),
                )
            }
        }
        DataType::Timestamp | DataType::TimestampTz => {
            if null {
                add(args, None::<NaiveDateTime>)
            } else {
                let us = dc::<TimestampMicrosecondArray>(array).value(row);
                add(args, Some(micros_to_datetime(us)?))
            }
        }
    }
}

/// About how many bytes the value at `row` takes in a statement packet.
pub(crate) fn wire_size(array: &ArrayRef, row: usize, logical: DataType) -> usize {
    if array.is_null(row) {
        return 1;
    }
    match logical {
        DataType::Text | DataType::Uuid | DataType::Json => {
            dc::<StringArray>(array).value(row).len() + 9
        }
        DataType::Binary => dc::<BinaryArray>(array).value(row).len() + 9,
        DataType::Decimal { .. } => 50,
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::serde_json::json;

    #[test]
    fn hex_parses() {
        assert_eq!(parse_hex("\\x00ff"), Some(vec![0, 255]));
        assert_eq!(parse_hex("\\x0"), None);
        assert_eq!(parse_hex("00"), None);
    }

    #[test]
    fn lookback_moves_temporal_cursors_back() {
        let v = json!("2024-05-01T10:00:00Z");
        assert_eq!(
            minus_lookback(&v, DataType::TimestampTz, 90_000_000),
            Some(json!("2024-05-01T09:58:30.000000"))
        );
        assert_eq!(
            minus_lookback(&json!("2024-05-02"), DataType::Date, 3_600_000_000),
            Some(json!("2024-05-01"))
        );
        assert_eq!(minus_lookback(&json!(5), DataType::Int64, 1), None);
    }
}
