//! Single values: temporal conversions between PostgreSQL's and Arrow's epochs, text forms
//! PostgreSQL parses back exactly (for checkpoints and server-side casts), and UUIDs.

use lockstep_plugin_sdk::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, Decimal128Array,
    Float32Array, Float64Array, Int32Array, Int64Array, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use lockstep_plugin_sdk::protocol::arrow_types::{format_decimal, hex};
use lockstep_plugin_sdk::DataType;
use serde_json::Value;

/// Microseconds from 1970-01-01 (Arrow) to 2000-01-01 (PostgreSQL).
pub const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
/// Days from 1970-01-01 to 2000-01-01.
pub const PG_EPOCH_DAYS: i32 = 10_957;
pub const MICROS_PER_DAY: i64 = 86_400_000_000;

/// PostgreSQL's timestamp range in Arrow microseconds: 4714-11-24 BC to 294276-12-31.
pub const MIN_TIMESTAMP: i64 = -211_813_488_000_000_000 + PG_EPOCH_MICROS;
/// The first timestamp PostgreSQL no longer accepts, in PostgreSQL's own epoch.
pub const END_TIMESTAMP_PG: i64 = 9_223_371_331_200_000_000;
/// PostgreSQL's date range in Arrow days: 4714-11-24 BC to 5874897-12-31.
pub const MIN_DATE: i32 = -2_451_545 + PG_EPOCH_DAYS;
pub const END_DATE_PG: i32 = 2_147_483_494 - 2_451_545;

/// A PostgreSQL timestamp (PostgreSQL epoch) in Arrow microseconds. The infinities map to
/// i64::MIN/MAX, which PostgreSQL reads back as the infinities.
pub fn timestamp_from_pg(v: i64) -> Result<i64, String> {
    match v {
        i64::MIN | i64::MAX => Ok(v),
        _ => v.checked_add(PG_EPOCH_MICROS).ok_or_else(|| {
            "a timestamp beyond year 294246 does not fit microseconds since 1970".to_string()
        }),
    }
}

/// An Arrow timestamp in PostgreSQL's epoch, refusing what PostgreSQL cannot store.
pub fn timestamp_to_pg(v: i64) -> Result<i64, String> {
    match v {
        i64::MIN | i64::MAX => Ok(v),
        _ if v < MIN_TIMESTAMP => Err(format!(
            "{} is before 4714-11-24 BC, PostgreSQL's first timestamp",
            format_timestamp(v, true, true)
        )),
        _ => Ok(v - PG_EPOCH_MICROS),
    }
}

/// A PostgreSQL date in Arrow days; infinities map to i32::MIN/MAX.
pub fn date_from_pg(v: i32) -> Result<i32, String> {
    match v {
        i32::MIN | i32::MAX => Ok(v),
        _ => v
            .checked_add(PG_EPOCH_DAYS)
            .ok_or_else(|| "a date beyond the 32-bit day range".to_string()),
    }
}

/// An Arrow date in PostgreSQL's epoch, refusing what PostgreSQL cannot store.
pub fn date_to_pg(v: i32) -> Result<i32, String> {
    match v {
        i32::MIN | i32::MAX => Ok(v),
        _ if v < MIN_DATE => Err(format!(
            "{} is before 4714-11-24 BC, PostgreSQL's first date",
            format_date(v)
        )),
        _ => {
            let pg = v - PG_EPOCH_DAYS;
            if pg >= END_DATE_PG {
                Err(format!(
                    "{} is after PostgreSQL's last date",
                    format_date(v)
                ))
            } else {
                Ok(pg)
            }
        }
    }
}

/// Civil date (proleptic Gregorian, astronomical years) of days since 1970-01-01.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn push_date(out: &mut String, days: i64) -> bool {
    use std::fmt::Write;
    let (y, m, d) = civil(days);
    // PostgreSQL has no year 0: astronomical year 0 is 1 BC.
    let bc = y <= 0;
    let year = if bc { 1 - y } else { y };
    let _ = write!(out, "{year:04}-{m:02}-{d:02}");
    bc
}

fn push_time(out: &mut String, micros: i64) {
    use std::fmt::Write;
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let _ = write!(
        out,
        "{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let _ = write!(out, ".{frac:06}");
        while out.ends_with('0') {
            out.pop();
        }
    }
}

/// A date as PostgreSQL prints it (`2024-05-01`, `0044-03-15 BC`, `infinity`).
pub fn format_date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let mut s = String::with_capacity(16);
            if push_date(&mut s, days as i64) {
                s.push_str(" BC");
            }
            s
        }
    }
}

/// A time of day (microseconds) as `HH:MM:SS[.ffffff]`.
pub fn format_time(micros: i64) -> String {
    let mut s = String::with_capacity(15);
    push_time(&mut s, micros);
    s
}

/// A timestamp (Arrow microseconds) as text PostgreSQL parses back exactly: ISO 8601 with
/// `T` (and `Z` when `utc`) in `iso` style, else PostgreSQL's own style (`+00`).
pub fn format_timestamp(micros: i64, utc: bool, iso: bool) -> String {
    match micros {
        i64::MAX => return "infinity".into(),
        i64::MIN => return "-infinity".into(),
        _ => {}
    }
    let mut s = String::with_capacity(32);
    let days = micros.div_euclid(MICROS_PER_DAY);
    let bc = push_date(&mut s, days);
    s.push(if iso { 'T' } else { ' ' });
    push_time(&mut s, micros.rem_euclid(MICROS_PER_DAY));
    if utc {
        s.push_str(if iso { "Z" } else { "+00" });
    }
    if bc {
        s.push_str(" BC");
    }
    s
}

/// A float as PostgreSQL parses it back exactly.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        // Debug is the shortest text that reads back as the same f64, with an exponent
        // where that is shorter.
        let s = format!("{v:?}");
        s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
    }
}

/// Formats 16 bytes as a hyphenated lower-case UUID.
pub fn format_uuid(b: &[u8; 16], out: &mut [u8; 36]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut j = 0;
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[j] = b'-';
            j += 1;
        }
        out[j] = HEX[(byte >> 4) as usize];
        out[j + 1] = HEX[(byte & 15) as usize];
        j += 2;
    }
}

/// Parses a UUID in the forms PostgreSQL accepts most often: hyphenated or not, any case,
/// optionally in braces.
pub fn parse_uuid(s: &str) -> Result<[u8; 16], String> {
    // The canonical form first: 8-4-4-4-12 hex digits.
    let b = s.as_bytes();
    if b.len() == 36 && b[8] == b'-' && b[13] == b'-' && b[18] == b'-' && b[23] == b'-' {
        let hex = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        };
        let mut out = [0u8; 16];
        let mut i = 0;
        let mut ok = true;
        for (n, slot) in out.iter_mut().enumerate() {
            if matches!(n, 4 | 6 | 8 | 10) {
                i += 1;
            }
            match (hex(b[i]), hex(b[i + 1])) {
                (Some(h), Some(l)) => *slot = h << 4 | l,
                _ => ok = false,
            }
            i += 2;
        }
        if ok {
            return Ok(out);
        }
    }
    let t = s.trim();
    let t = t
        .strip_prefix('{')
        .and_then(|x| x.strip_suffix('}'))
        .unwrap_or(t);
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut high: Option<u8> = None;
    for c in t.bytes() {
        if c == b'-' {
            continue;
        }
        let v = (c as char)
            .to_digit(16)
            .ok_or_else(|| format!("`{s}` is not a UUID"))? as u8;
        match high.take() {
            None => high = Some(v),
            Some(h) => {
                if n == 16 {
                    return Err(format!("`{s}` is not a UUID"));
                }
                out[n] = h << 4 | v;
                n += 1;
            }
        }
    }
    if n != 16 || high.is_some() {
        return Err(format!("`{s}` is not a UUID"));
    }
    Ok(out)
}

/// The value at `row` as checkpoint JSON: numbers as numbers, everything else as text that
/// PostgreSQL casts back to the column's type exactly.
pub fn checkpoint_value(array: &ArrayRef, row: usize, logical: DataType) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    let text = |s: String| Value::String(s);
    match logical {
        DataType::Boolean => Value::Bool(downcast::<BooleanArray>(array).value(row)),
        DataType::Int32 => downcast::<Int32Array>(array).value(row).into(),
        DataType::Int64 => downcast::<Int64Array>(array).value(row).into(),
        DataType::Float32 => float_json(downcast::<Float32Array>(array).value(row) as f64),
        DataType::Float64 => float_json(downcast::<Float64Array>(array).value(row)),
        DataType::Decimal { scale, .. } => text(format_decimal(
            downcast::<Decimal128Array>(array).value(row),
            scale,
        )),
        DataType::Text | DataType::Uuid | DataType::Json => {
            text(array.as_string::<i32>().value(row).to_owned())
        }
        DataType::Binary => text(hex(downcast::<BinaryArray>(array).value(row))),
        DataType::Date => text(format_date(downcast::<Date32Array>(array).value(row))),
        DataType::Time => text(format_time(
            downcast::<Time64MicrosecondArray>(array).value(row),
        )),
        DataType::Timestamp => text(format_timestamp(
            downcast::<TimestampMicrosecondArray>(array).value(row),
            false,
            true,
        )),
        DataType::TimestampTz => text(format_timestamp(
            downcast::<TimestampMicrosecondArray>(array).value(row),
            true,
            true,
        )),
    }
}

fn float_json(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(format_float(v)))
}

/// Checkpoint JSON back to the text handed to PostgreSQL.
pub fn json_to_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn downcast<T: 'static>(array: &ArrayRef) -> &T {
    array
        .as_any()
        .downcast_ref::<T>()
        .expect("arrays are built from the logical type, so the Arrow type matches")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporal_text_is_what_postgres_prints() {
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(format_date(i32::MAX), "infinity");
        assert_eq!(
            format_timestamp(1_500_000, true, true),
            "1970-01-01T00:00:01.5Z"
        );
        assert_eq!(
            format_timestamp(-1, false, false),
            "1969-12-31 23:59:59.999999"
        );
        // 44 BC is astronomical year -43.
        let ides = -(2_025 + 43) as i64 * 365 * MICROS_PER_DAY;
        assert!(format_timestamp(ides, true, false).ends_with("+00 BC"));
        assert_eq!(format_time(3_600_000_000 + 61_000_123), "01:01:01.000123");
    }

    #[test]
    fn epochs_convert_and_infinities_pass_through() {
        assert_eq!(timestamp_from_pg(0).unwrap(), PG_EPOCH_MICROS);
        assert_eq!(timestamp_from_pg(i64::MAX).unwrap(), i64::MAX);
        assert!(timestamp_from_pg(END_TIMESTAMP_PG - 1).is_err());
        assert_eq!(timestamp_to_pg(PG_EPOCH_MICROS).unwrap(), 0);
        assert!(timestamp_to_pg(MIN_TIMESTAMP - 1).is_err());
        assert_eq!(date_to_pg(PG_EPOCH_DAYS).unwrap(), 0);
    }

    #[test]
    fn uuids_format_and_parse() {
        let b = parse_uuid("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11").unwrap();
        let mut out = [0u8; 36];
        format_uuid(&b, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        );
        assert!(parse_uuid("{a0eebc999c0b4ef8bb6d6bb9bd380a11}").is_ok());
        assert!(parse_uuid("a0eebc99").is_err());
        assert_eq!(format_float(1.0), "1");
        assert_eq!(format_float(f64::NEG_INFINITY), "-Infinity");
    }
}
