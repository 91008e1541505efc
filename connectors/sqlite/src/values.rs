//! SQLite values: the five storage classes, their JSON form in checkpoints, and the text
//! forms of temporal and decimal values.
//!
//! Temporal values are stored as ISO 8601 text: `YYYY-MM-DD`, `HH:MM:SS[.ffffff]`,
//! `YYYY-MM-DD HH:MM:SS[.ffffff]` and, with a time zone, the same followed by `+00:00`. These
//! forms sort as text in time order (a `Z` suffix would not: `Z` sorts after `.`), which keeps
//! SQL comparisons on cursor columns correct.

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::{json, Value};
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteValueRef};
use sqlx::{Decode, TypeInfo, ValueRef};

/// One SQLite value, by storage class.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SqlValue {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// The JSON object key that marks a BLOB in a checkpoint (JSON has no bytes).
const BLOB_TAG: &str = "$blob";

pub(crate) type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

impl SqlValue {
    /// Reads a value from a result row, keeping its storage class.
    pub(crate) fn from_ref(value: SqliteValueRef<'_>) -> Result<SqlValue, String> {
        if value.is_null() {
            return Ok(SqlValue::Null);
        }
        let class = value.type_info().name().to_owned();
        let decoded = match class.as_str() {
            "INTEGER" => <i64 as Decode<Sqlite>>::decode(value).map(SqlValue::Int),
            "REAL" => <f64 as Decode<Sqlite>>::decode(value).map(SqlValue::Real),
            "BLOB" => <Vec<u8> as Decode<Sqlite>>::decode(value).map(SqlValue::Blob),
            _ => <String as Decode<Sqlite>>::decode(value).map(SqlValue::Text),
        };
        decoded.map_err(|e| format!("a {class} value cannot be read: {e}"))
    }

    /// Binds this value as the next parameter of `query`.
    pub(crate) fn bind<'q>(&'q self, query: Query<'q>) -> Query<'q> {
        match self {
            SqlValue::Null => query.bind(None::<i64>),
            SqlValue::Int(i) => query.bind(*i),
            SqlValue::Real(f) => query.bind(*f),
            SqlValue::Text(s) => query.bind(s.as_str()),
            SqlValue::Blob(b) => query.bind(b.as_slice()),
        }
    }

    pub(crate) fn is_null(&self) -> bool {
        matches!(self, SqlValue::Null)
    }

    /// The value in a checkpoint: numbers and text as themselves, a BLOB as `{"$blob": hex}`.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            SqlValue::Null => Value::Null,
            SqlValue::Int(i) => json!(i),
            SqlValue::Real(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            SqlValue::Text(s) => Value::String(s.clone()),
            SqlValue::Blob(b) => json!({ BLOB_TAG: hex(b) }),
        }
    }

    /// The inverse of [`SqlValue::to_json`]: the value a checkpoint binds. JSON integers bind
    /// as INTEGER, other numbers as REAL, strings as TEXT, booleans as 0/1.
    pub(crate) fn from_json(value: &Value) -> Result<SqlValue, String> {
        Ok(match value {
            Value::Null => SqlValue::Null,
            Value::Bool(b) => SqlValue::Int(*b as i64),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => SqlValue::Int(i),
                (None, Some(f)) if n.is_f64() => SqlValue::Real(f),
                _ => return Err(format!("{n} is beyond SQLite's 64-bit integers")),
            },
            Value::String(s) => SqlValue::Text(s.clone()),
            Value::Object(map) => match (map.len(), map.get(BLOB_TAG)) {
                (1, Some(Value::String(h))) => {
                    SqlValue::Blob(unhex(h).ok_or_else(|| format!("`{h}` is not hexadecimal"))?)
                }
                _ => return Err(format!("{value} is not a checkpoint value")),
            },
            Value::Array(_) => return Err(format!("{value} is not a checkpoint value")),
        })
    }

    /// The value for error messages: quoted text (shortened), numbers, hex bytes.
    pub(crate) fn describe(&self) -> String {
        match self {
            SqlValue::Null => "NULL".into(),
            SqlValue::Int(i) => i.to_string(),
            SqlValue::Real(f) => format_real(*f),
            SqlValue::Text(s) => {
                let short: String = s.chars().take(80).collect();
                let ellipsis = if short.len() < s.len() { "..." } else { "" };
                format!("'{}{ellipsis}'", short.replace('\'', "''"))
            }
            SqlValue::Blob(b) => {
                let h = hex(&b[..b.len().min(40)]);
                format!("x'{h}'{}", if b.len() > 40 { "..." } else { "" })
            }
        }
    }

    /// The storage class name, as SQLite's `typeof()` spells it.
    pub(crate) fn class(&self) -> &'static str {
        match self {
            SqlValue::Null => "null",
            SqlValue::Int(_) => "integer",
            SqlValue::Real(_) => "real",
            SqlValue::Text(_) => "text",
            SqlValue::Blob(_) => "blob",
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

/// A REAL as the shortest text that reads back as the same number (`1.5`, `100`, `0.1`).
pub(crate) fn format_real(f: f64) -> String {
    if f.is_finite() {
        format!("{f}")
    } else if f.is_nan() {
        "NaN".into()
    } else if f > 0.0 {
        "Infinity".into()
    } else {
        "-Infinity".into()
    }
}

/// A REAL rounded to 15 significant digits (all SQLite promises to keep), as plain decimal
/// text without an exponent: `0.30000000000000004` becomes `0.3`.
pub(crate) fn real_to_15_digits(f: f64) -> String {
    let sci = format!("{f:.14e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let negative = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    // `digits` is d.dddddddddddddd without the point: 15 digits, the point after the first.
    let point = 1 + exponent;
    let text = if point <= 0 {
        format!("0.{}{}", "0".repeat((-point) as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(point as usize - digits.len()))
    } else {
        format!(
            "{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    };
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    };
    if negative {
        format!("-{text}")
    } else {
        text
    }
}

/// Whether SQLite would change the number `text` denotes when it converts it to INTEGER or
/// REAL in a column with numeric affinity: true for numeric-looking text that is neither an
/// integer in the 64-bit range nor a number of at most 15 significant digits.
pub(crate) fn numeric_text_loses_precision(text: &str) -> bool {
    let t = text.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let looks_numeric = !(int.is_empty() && frac.is_empty())
        && digits_ok(int)
        && digits_ok(frac)
        && exponent.is_none_or(|e| {
            let e = e.strip_prefix(['+', '-']).unwrap_or(e);
            !e.is_empty() && digits_ok(e)
        });
    if !looks_numeric {
        return false;
    }
    if exponent.is_none() && !mantissa.contains('.') && t.parse::<i64>().is_ok() {
        return false;
    }
    let all: String = format!("{int}{frac}");
    let significant = all.trim_start_matches('0').trim_end_matches('0');
    if significant.len() > 15 {
        return true;
    }
    // Few digits, but an exponent SQLite cannot represent (it would become Inf or 0).
    let value: f64 = t.parse().unwrap_or(f64::INFINITY);
    !value.is_finite() || (value == 0.0 && !significant.is_empty())
}

// ---- Temporal values ----------------------------------------------------------------------

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

fn micros_of(time: NaiveTime) -> Result<i64, ()> {
    if time.nanosecond() % 1000 != 0 {
        return Err(());
    }
    Ok(time.num_seconds_from_midnight() as i64 * 1_000_000 + (time.nanosecond() / 1000) as i64)
}

fn fraction(micros: u32) -> String {
    if micros == 0 {
        String::new()
    } else {
        format!(".{micros:06}")
    }
}

/// Days since the epoch as `YYYY-MM-DD`.
pub(crate) fn format_date(days: i32) -> Option<String> {
    let date = EPOCH.checked_add_signed(chrono::TimeDelta::try_days(days as i64)?)?;
    Some(date.format("%Y-%m-%d").to_string())
}

/// `YYYY-MM-DD` as days since the epoch.
pub(crate) fn parse_date(text: &str) -> Result<i32, String> {
    let date = NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| "not a date (YYYY-MM-DD)".to_string())?;
    i32::try_from((date - EPOCH).num_days()).map_err(|_| "a date out of range".to_string())
}

/// Microseconds since midnight as `HH:MM:SS[.ffffff]`.
pub(crate) fn format_time(micros: i64) -> Option<String> {
    if !(0..86_400_000_000).contains(&micros) {
        return None;
    }
    let secs = micros / 1_000_000;
    let frac = (micros % 1_000_000) as u32;
    Some(format!(
        "{:02}:{:02}:{:02}{}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        fraction(frac)
    ))
}

/// `HH:MM[:SS[.fff...]]` as microseconds since midnight.
pub(crate) fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let parsed = NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(t, "%H:%M"))
        .map_err(|_| "not a time (HH:MM:SS[.ffffff])".to_string())?;
    micros_of(parsed).map_err(|_| "a time with more than microsecond precision".into())
}

/// Microseconds since the epoch as `YYYY-MM-DD HH:MM:SS[.ffffff]`, followed by `+00:00` when
/// `utc`.
pub(crate) fn format_timestamp(micros: i64, utc: bool) -> Option<String> {
    let dt = DateTime::from_timestamp_micros(micros)?.naive_utc();
    let frac = (micros.rem_euclid(1_000_000)) as u32;
    Some(format!(
        "{}{}{}",
        dt.format("%Y-%m-%d %H:%M:%S"),
        fraction(frac),
        if utc { "+00:00" } else { "" }
    ))
}

/// An ISO 8601 timestamp (`T` or space, optional seconds and fraction, optional `Z` or
/// offset, or a bare date) as microseconds since the epoch. Text with an offset is converted
/// to UTC; text without one is taken as it is.
pub(crate) fn parse_timestamp(text: &str) -> Result<i64, String> {
    let t = text.trim();
    let invalid = || "not an ISO 8601 timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM])".to_string();
    let too_precise = || "a timestamp with more than microsecond precision".to_string();
    let with_zone = DateTime::parse_from_rfc3339(t).ok().or_else(|| {
        [
            "%Y-%m-%d %H:%M:%S%.f%#z",
            "%Y-%m-%dT%H:%M:%S%.f%#z",
            "%Y-%m-%d %H:%M%#z",
            "%Y-%m-%dT%H:%M%#z",
        ]
        .iter()
        .find_map(|f| DateTime::parse_from_str(t, f).ok())
    });
    if let Some(dt) = with_zone {
        let utc = dt.naive_utc();
        micros_of(utc.time()).map_err(|_| too_precise())?;
        return Ok(utc.and_utc().timestamp_micros());
    }
    let naive = [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%dT%H:%M",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    .or_else(|| {
        let t = t.strip_suffix(['Z', 'z'])?;
        ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
            .iter()
            .find_map(|f| NaiveDateTime::parse_from_str(t, f).ok())
    })
    .or_else(|| {
        NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
    })
    .ok_or_else(invalid)?;
    micros_of(naive.time()).map_err(|_| too_precise())?;
    Ok(naive.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporal_text_round_trips_and_sorts() {
        for us in [
            0,
            1,
            1_500_000,
            -1,
            1_714_557_600_123_456,
            -62_135_596_800_000_000,
        ] {
            for utc in [false, true] {
                let text = format_timestamp(us, utc).unwrap();
                assert_eq!(parse_timestamp(&text), Ok(us), "{text}");
            }
        }
        let a = format_timestamp(1_000_000, true).unwrap();
        let b = format_timestamp(1_500_000, true).unwrap();
        assert!(a < b, "{a} < {b}");
        assert_eq!(
            parse_timestamp("2024-05-01T10:00:00Z"),
            parse_timestamp("2024-05-01 10:00:00")
        );
        assert_eq!(
            parse_timestamp("2024-05-01T12:00:00+02:00"),
            parse_timestamp("2024-05-01 10:00")
        );
        assert!(parse_timestamp("2024-05-01 10:00:00.0000001").is_err());
        assert!(parse_timestamp("yesterday").is_err());
        assert_eq!(parse_time("10:30"), Ok(37_800_000_000));
        assert_eq!(format_time(37_800_000_001).unwrap(), "10:30:00.000001");
        assert_eq!(parse_date(&format_date(-1).unwrap()), Ok(-1));
    }

    #[test]
    fn numeric_text_precision_is_checked() {
        assert!(!numeric_text_loses_precision("abc"));
        assert!(!numeric_text_loses_precision("9223372036854775807"));
        assert!(!numeric_text_loses_precision("123456789012.345"));
        assert!(!numeric_text_loses_precision("12.50"));
        assert!(!numeric_text_loses_precision("1000000000000000000000"));
        assert!(!numeric_text_loses_precision("2024-05-01"));
        assert!(numeric_text_loses_precision("12345678901234567.5"));
        assert!(numeric_text_loses_precision("9223372036854775808"));
        assert!(numeric_text_loses_precision("1e400"));
    }

    #[test]
    fn reals_round_to_15_digits() {
        assert_eq!(real_to_15_digits(0.1 + 0.2), "0.3");
        assert_eq!(real_to_15_digits(-12.5), "-12.5");
        assert_eq!(real_to_15_digits(1e20), "100000000000000000000");
        assert_eq!(real_to_15_digits(0.000123), "0.000123");
    }

    #[test]
    fn checkpoint_values_round_trip_through_json() {
        for v in [
            SqlValue::Null,
            SqlValue::Int(i64::MIN),
            SqlValue::Real(1.5),
            SqlValue::Text("x".into()),
            SqlValue::Blob(vec![0, 255]),
        ] {
            assert_eq!(SqlValue::from_json(&v.to_json()), Ok(v.clone()));
        }
    }
}
