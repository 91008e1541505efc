//! Tryton's JSON values to the plain JSON the kit's converter takes, and back.
//!
//! Tryton's JSON-RPC encodes what JSON lacks as objects with a `__class__` member
//! (`trytond/protocols/jsonrpc.py`): `datetime` (`year` … `microsecond`, naive, in UTC),
//! `date`, `time`, `timedelta` (`seconds`), `Decimal` (`decimal`, the number as text) and
//! `bytes` (`base64`). A server on SQLite answers booleans as 0 and 1.
//!
//! Invariants: a Decimal keeps every digit (it stays text until the SDK parses it exactly at
//! the field's scale); a timestamp keeps its microseconds; a value of an unexpected shape is
//! an error naming what was found, never a null.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use lockstep_plugin_sdk::rows::parse_timestamp_micros;
use serde_json::{json, Value};

/// The kind of a Tryton field, as far as values are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    Integer,
    Float,
    Numeric,
    Text,
    Date,
    DateTime,
    Time,
    /// A many-to-one or one-to-one: the related record's id.
    Relation,
    /// A dict or multiselection field, as a JSON document.
    Json,
}

/// A value from Tryton as plain JSON: text for decimals, dates and times (RFC 3339 in UTC for
/// timestamps), `true`/`false` for booleans.
pub fn decode(value: &Value, kind: Kind) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    if let Some(class) = value.get("__class__").and_then(Value::as_str) {
        return decode_class(class, value);
    }
    Ok(match (kind, value) {
        (Kind::Boolean, Value::Number(n)) => match n.as_i64() {
            Some(0) => Value::Bool(false),
            Some(1) => Value::Bool(true),
            _ => {
                return Err(format!(
                    "{n} is not a boolean (Tryton sends 0 or 1 on SQLite)"
                ))
            }
        },
        // A false many-to-one is how older servers say "no record".
        (Kind::Relation, Value::Bool(false)) => Value::Null,
        (Kind::Json, Value::Array(_) | Value::Object(_)) => Value::String(value.to_string()),
        _ => value.clone(),
    })
}

fn decode_class(class: &str, value: &Value) -> Result<Value, String> {
    let part = |name: &str| -> Result<i64, String> {
        value[name]
            .as_i64()
            .ok_or_else(|| format!("a Tryton {class} without a numeric `{name}`: {value}"))
    };
    let date = || -> Result<NaiveDate, String> {
        NaiveDate::from_ymd_opt(
            part("year")? as i32,
            part("month")? as u32,
            part("day")? as u32,
        )
        .ok_or_else(|| format!("{value} is not a date"))
    };
    let time = || -> Result<NaiveTime, String> {
        NaiveTime::from_hms_micro_opt(
            part("hour")? as u32,
            part("minute")? as u32,
            part("second")? as u32,
            value
                .get("microsecond")
                .and_then(Value::as_i64)
                .unwrap_or(0) as u32,
        )
        .ok_or_else(|| format!("{value} is not a time of day"))
    };
    Ok(match class {
        "Decimal" => match &value["decimal"] {
            Value::String(text) => Value::String(text.clone()),
            other => return Err(format!("a Tryton Decimal without its digits: {other}")),
        },
        "datetime" => Value::String(
            NaiveDateTime::new(date()?, time()?)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string(),
        ),
        "date" => Value::String(date()?.format("%Y-%m-%d").to_string()),
        "time" => Value::String(time()?.format("%H:%M:%S%.6f").to_string()),
        "timedelta" => value["seconds"].clone(),
        "bytes" => value["base64"].clone(),
        other => return Err(format!("an unknown Tryton value class `{other}`: {value}")),
    })
}

/// Microseconds since the epoch of a Tryton `datetime` (naive, UTC), or `None` for null.
pub fn datetime_micros(value: &Value) -> Option<i64> {
    let text = decode(value, Kind::DateTime).ok()?;
    parse_timestamp_micros(text.as_str()?).ok()
}

/// A Tryton `datetime` object for `micros` since the epoch, for domains.
pub fn datetime_value(micros: i64) -> Value {
    let at = chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .naive_utc();
    json!({
        "__class__": "datetime",
        "year": at.year(), "month": at.month(), "day": at.day(),
        "hour": at.hour(), "minute": at.minute(), "second": at.second(),
        "microsecond": at.nanosecond() / 1000,
    })
}

/// A plain JSON value (as the kit's converter gives it) in Tryton's encoding, for writes.
pub fn encode(value: &Value, kind: Kind) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let text = || match value {
        Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    Ok(match kind {
        Kind::Numeric => {
            let digits = text();
            if !is_decimal(&digits) {
                return Err(format!("`{digits}` is not a decimal number"));
            }
            json!({"__class__": "Decimal", "decimal": digits})
        }
        Kind::Date => {
            let date = NaiveDate::parse_from_str(&text(), "%Y-%m-%d")
                .map_err(|_| format!("`{}` is not a date (YYYY-MM-DD)", text()))?;
            json!({"__class__": "date", "year": date.year(), "month": date.month(), "day": date.day()})
        }
        Kind::DateTime => {
            let micros = parse_timestamp_micros(&text())?;
            datetime_value(micros)
        }
        Kind::Time => {
            let time = NaiveTime::parse_from_str(&text(), "%H:%M:%S%.f")
                .map_err(|_| format!("`{}` is not a time of day (HH:MM:SS)", text()))?;
            json!({"__class__": "time", "hour": time.hour(), "minute": time.minute(),
                   "second": time.second(), "microsecond": time.nanosecond() / 1000})
        }
        Kind::Boolean => match value {
            Value::Bool(b) => Value::Bool(*b),
            _ => return Err(format!("{value} is not a boolean")),
        },
        Kind::Integer | Kind::Relation => match value {
            Value::Number(n) if n.is_i64() => value.clone(),
            _ => Value::from(
                text()
                    .parse::<i64>()
                    .map_err(|_| format!("`{}` is not an integer id", text()))?,
            ),
        },
        Kind::Float => value.clone(),
        Kind::Json => match value {
            Value::String(s) => serde_json::from_str(s)
                .map_err(|e| format!("`{s}` is not a JSON document ({e})"))?,
            other => other.clone(),
        },
        // Text is sent as it is: spaces are data.
        Kind::Text => match value {
            Value::String(s) => Value::String(s.clone()),
            other => Value::String(other.to_string()),
        },
    })
}

/// Whether `text` is a decimal number: a sign, digits, a point and digits.
fn is_decimal(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    !(int.is_empty() && frac.is_empty())
        && int.bytes().all(|b| b.is_ascii_digit())
        && frac.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tryton_classes_decode_exactly() {
        let price = json!({"__class__": "Decimal", "decimal": "1234567890.123456789012"});
        assert_eq!(
            decode(&price, Kind::Numeric).unwrap(),
            json!("1234567890.123456789012")
        );
        let at = json!({"__class__": "datetime", "year": 2026, "month": 12, "day": 4,
                        "hour": 16, "minute": 57, "second": 48, "microsecond": 848706});
        assert_eq!(
            decode(&at, Kind::DateTime).unwrap(),
            json!("2026-12-04T16:57:48.848706Z")
        );
        let micros = datetime_micros(&at).unwrap();
        assert_eq!(datetime_value(micros), at);
        let day = json!({"__class__": "date", "year": 2024, "month": 2, "day": 29});
        assert_eq!(decode(&day, Kind::Date).unwrap(), json!("2024-02-29"));
        assert_eq!(encode(&json!("2024-02-29"), Kind::Date).unwrap(), day);
        assert_eq!(decode(&json!(1), Kind::Boolean).unwrap(), json!(true));
        assert_eq!(decode(&json!(0), Kind::Boolean).unwrap(), json!(false));
        assert!(decode(&json!(2), Kind::Boolean).is_err());
        assert!(decode(&json!({"__class__": "Decimal"}), Kind::Numeric).is_err());
    }

    #[test]
    fn writes_use_trytons_classes() {
        assert_eq!(
            encode(&json!("0.10000000000000000001"), Kind::Numeric).unwrap(),
            json!({"__class__": "Decimal", "decimal": "0.10000000000000000001"})
        );
        assert_eq!(encode(&json!("42"), Kind::Relation).unwrap(), json!(42));
        assert!(encode(&json!("soon"), Kind::DateTime).is_err());
    }
}
