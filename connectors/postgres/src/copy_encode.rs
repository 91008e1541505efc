//! Encoding Arrow batches as `COPY ... FROM STDIN (FORMAT binary)` data for a given target.
//!
//! Each written column gets an [`Enc`]: the binary form of its target type when the pair
//! (logical type, target type) converts exactly on the client, else text that the server
//! casts (`Cast`, `ArrayLiteral`, enums). Every client-side conversion checks what PostgreSQL
//! would otherwise round, truncate or refuse mid-COPY (NUL bytes, lengths, numeric precision
//! and scale, integer and date ranges, fractional-second precision): such a row is left out of
//! the COPY and reported as rejected, naming the row and the field. Rows are encoded in row
//! order into a reusable buffer that the caller sends in chunks, so memory stays bounded by
//! the chunk size plus the batch itself.

use std::fmt::Write as _;

use lockstep_plugin_sdk::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int32Array, Int64Array, StringArray, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use lockstep_plugin_sdk::arrow::buffer::NullBuffer;
use lockstep_plugin_sdk::arrow::compute::cast;
use lockstep_plugin_sdk::protocol::arrow_types::{format_decimal, hex};
use lockstep_plugin_sdk::{ConnectorError, DataType, RejectedRow, Result};
use serde_json::Value;

use crate::catalog::Column;
use crate::numeric;
use crate::types::{
    date_to_pg, format_date, format_float, format_time, format_timestamp, parse_uuid,
    timestamp_to_pg, MICROS_PER_DAY,
};

/// The binary COPY header: signature, flags, no extension.
pub const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary COPY trailer.
pub const TRAILER: &[u8] = &[0xff, 0xff];

/// How one column's values are encoded.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Enc {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    /// numeric, with the target's `(precision, scale)` when it has one.
    Numeric(Option<(i32, i32)>),
    /// Text types; `limit` is the length of varchar(n)/char(n), `max_bytes` the size of
    /// `name` (63) and `"char"` (1), which PostgreSQL would otherwise cut silently.
    Text {
        limit: Option<usize>,
        bpchar: bool,
        max_bytes: Option<usize>,
    },
    Json,
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Time(Option<u32>),
    Timestamp(Option<u32>),
    TimestampTz(Option<u32>),
    /// An enum label (text on the wire; cast when staged).
    Enum,
    /// Text that the server casts to the column's type.
    Cast,
    /// A JSON array turned into an array literal that the server casts.
    ArrayLiteral,
}

impl Enc {
    /// The encoding of values of logical type `src` for `column`.
    pub fn choose(column: &Column, src: DataType) -> Enc {
        use DataType as D;
        if column.is_array {
            return match src {
                D::Json | D::Text => Enc::ArrayLiteral,
                _ => Enc::Cast,
            };
        }
        if column.is_enum {
            return Enc::Enum;
        }
        let is_citext = column.base.is_empty()
            && column
                .base_type
                .rsplit('.')
                .next()
                .map(|t| t.trim_matches('"'))
                == Some("citext");
        if is_citext {
            return Enc::Text {
                limit: None,
                bpchar: false,
                max_bytes: None,
            };
        }
        let ints = matches!(
            src,
            D::Int32 | D::Int64 | D::Decimal { .. } | D::Float32 | D::Float64
        );
        let temporal = matches!(src, D::Timestamp | D::TimestampTz | D::Date);
        match column.base.as_str() {
            "bool" if src == D::Boolean => Enc::Bool,
            "int2" if ints => Enc::Int2,
            "int4" if ints => Enc::Int4,
            "int8" if ints => Enc::Int8,
            "float4" if matches!(src, D::Float32 | D::Float64 | D::Int32 | D::Int64) => Enc::Float4,
            "float8" if matches!(src, D::Float32 | D::Float64 | D::Int32 | D::Int64) => Enc::Float8,
            "numeric" if ints || src == D::Text => Enc::Numeric(column.numeric_typmod()),
            "text" | "varchar" | "bpchar" | "name" | "char" => Enc::Text {
                limit: column.char_limit(),
                bpchar: column.base == "bpchar",
                max_bytes: match column.base.as_str() {
                    "name" => Some(63),
                    "char" => Some(1),
                    _ => None,
                },
            },
            "json" => Enc::Json,
            "jsonb" => Enc::Jsonb,
            "bytea" if src == D::Binary => Enc::Bytea,
            "uuid" if matches!(src, D::Uuid | D::Text) => Enc::Uuid,
            // Text is parsed on the client too, so that fractional digits beyond the column's
            // precision are refused rather than rounded by the server.
            "date" if temporal || src == D::Text => Enc::Date,
            "time" if matches!(src, D::Time | D::Text) => Enc::Time(column.seconds_precision()),
            "timestamp" if temporal || src == D::Text => Enc::Timestamp(column.seconds_precision()),
            "timestamptz" if temporal || src == D::Text => {
                Enc::TimestampTz(column.seconds_precision())
            }
            _ => Enc::Cast,
        }
    }

    /// The type of the column in a staging table: the binary type, or text to be cast.
    pub fn stage_type(&self) -> &'static str {
        match self {
            Enc::Bool => "boolean",
            Enc::Int2 => "smallint",
            Enc::Int4 => "integer",
            Enc::Int8 => "bigint",
            Enc::Float4 => "real",
            Enc::Float8 => "double precision",
            Enc::Numeric(_) => "numeric",
            Enc::Bytea => "bytea",
            Enc::Uuid => "uuid",
            Enc::Date => "date",
            Enc::Time(_) => "time",
            Enc::Timestamp(_) => "timestamp",
            Enc::TimestampTz(_) => "timestamptz",
            Enc::Text { .. }
            | Enc::Json
            | Enc::Jsonb
            | Enc::Enum
            | Enc::Cast
            | Enc::ArrayLiteral => "text",
        }
    }

    /// Whether the encoded bytes are the binary form of the target column itself, so that
    /// the batch can be copied into the target directly.
    pub fn direct_ok(&self) -> bool {
        !matches!(self, Enc::Cast | Enc::ArrayLiteral)
    }
}

/// Typed views of a batch column.
enum Src<'a> {
    Bool(&'a BooleanArray),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    F32(&'a Float32Array),
    F64(&'a Float64Array),
    Dec(&'a Decimal128Array, i8),
    Str(&'a StringArray),
    Bin(&'a BinaryArray),
    Date(&'a Date32Array),
    Time(&'a Time64MicrosecondArray),
    Ts(&'a TimestampMicrosecondArray, bool),
}

fn as_src<'a>(array: &'a ArrayRef, logical: DataType) -> Option<Src<'a>> {
    let any = array.as_any();
    Some(match logical {
        DataType::Boolean => Src::Bool(any.downcast_ref()?),
        DataType::Int32 => Src::I32(any.downcast_ref()?),
        DataType::Int64 => Src::I64(any.downcast_ref()?),
        DataType::Float32 => Src::F32(any.downcast_ref()?),
        DataType::Float64 => Src::F64(any.downcast_ref()?),
        DataType::Decimal { scale, .. } => Src::Dec(any.downcast_ref()?, scale),
        DataType::Text | DataType::Uuid | DataType::Json => Src::Str(any.downcast_ref()?),
        DataType::Binary => Src::Bin(any.downcast_ref()?),
        DataType::Date => Src::Date(any.downcast_ref()?),
        DataType::Time => Src::Time(any.downcast_ref()?),
        DataType::Timestamp => Src::Ts(any.downcast_ref()?, false),
        DataType::TimestampTz => Src::Ts(any.downcast_ref()?, true),
    })
}

/// A batch column prepared for encoding: its array in the canonical Arrow type of its
/// logical type (cast when a producer used another one).
pub struct Prepared {
    pub array: ArrayRef,
    pub logical: DataType,
}

impl Prepared {
    pub fn new(array: &ArrayRef, logical: DataType, field: &str) -> Result<Self> {
        let wanted = logical.arrow_type();
        let array = if array.data_type() == &wanted {
            array.clone()
        } else {
            cast(array, &wanted).map_err(|e| {
                ConnectorError::schema(format!(
                    "field `{field}` arrives as Arrow {} which cannot be read as {}: {e}",
                    array.data_type(),
                    logical.describe()
                ))
            })?
        };
        Ok(Prepared { array, logical })
    }
}

/// One column to encode.
pub struct EncColumn<'a> {
    pub column: &'a Column,
    pub enc: Enc,
    pub data: &'a Prepared,
}

/// Encodes the rows of one batch.
pub struct BatchEncoder<'a> {
    cols: Vec<(Enc, Src<'a>, &'a Column, Option<&'a NullBuffer>)>,
    /// Staging tables get the batch row index as their first column.
    with_row_index: bool,
    /// Encoding for the target itself (jsonb carries its version byte) rather than staging.
    direct: bool,
    pub rejected: Vec<RejectedRow>,
    /// Rows encoded (not rejected).
    pub written: usize,
    scratch: String,
}

impl<'a> BatchEncoder<'a> {
    pub fn new(cols: &[EncColumn<'a>], with_row_index: bool, direct: bool) -> Result<Self> {
        let cols = cols
            .iter()
            .map(|c| {
                let src = as_src(&c.data.array, c.data.logical).ok_or_else(|| {
                    ConnectorError::internal(format!(
                        "column `{}` is not the Arrow type of {}",
                        c.column.name,
                        c.data.logical.describe()
                    ))
                })?;
                Ok((c.enc, src, c.column, c.data.array.nulls()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchEncoder {
            cols,
            with_row_index,
            direct,
            rejected: Vec::new(),
            written: 0,
            scratch: String::new(),
        })
    }

    /// Encodes rows from `from` until `out` holds at least `limit` bytes or `rows` is
    /// reached; returns the next row to encode.
    pub fn encode(&mut self, from: usize, rows: usize, out: &mut Vec<u8>, limit: usize) -> usize {
        let nfields = (self.cols.len() + self.with_row_index as usize) as i16;
        let mut row = from;
        while row < rows && out.len() < limit {
            let start = out.len();
            out.extend_from_slice(&nfields.to_be_bytes());
            if self.with_row_index {
                out.extend_from_slice(&4i32.to_be_bytes());
                out.extend_from_slice(&(row as i32).to_be_bytes());
            }
            let mut refused = None;
            for (enc, src, column, nulls) in &self.cols {
                if nulls.is_some_and(|n| n.is_null(row)) {
                    if column.not_null {
                        refused = Some((column, "null in a NOT NULL column".to_string()));
                        break;
                    }
                    out.extend_from_slice(&(-1i32).to_be_bytes());
                    continue;
                }
                if let Err(reason) =
                    encode_value(*enc, src, row, out, self.direct, &mut self.scratch)
                {
                    refused = Some((column, reason));
                    break;
                }
            }
            match refused {
                None => self.written += 1,
                Some((column, reason)) => {
                    out.truncate(start);
                    self.rejected.push(RejectedRow {
                        row,
                        field: Some(column.name.clone()),
                        reason,
                    });
                }
            }
            row += 1;
        }
        row
    }
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Writes a value of unknown length: a length placeholder, the value, then the length.
fn put_with(
    out: &mut Vec<u8>,
    write: impl FnOnce(&mut Vec<u8>) -> std::result::Result<(), String>,
) -> std::result::Result<(), String> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    write(out)?;
    let len = i32::try_from(out.len() - at - 4).map_err(|_| "a value over 2 GiB")?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

fn int_value(src: &Src, row: usize) -> std::result::Result<i64, String> {
    match src {
        Src::I32(a) => Ok(a.value(row) as i64),
        Src::I64(a) => Ok(a.value(row)),
        Src::Dec(a, scale) => {
            let v = a.value(row);
            let div = 10i128.pow(*scale as u32);
            if v % div != 0 {
                return Err(format!(
                    "{} is not a whole number; an integer column would round it",
                    format_decimal(v, *scale)
                ));
            }
            i64::try_from(v / div)
                .map_err(|_| format!("{} is out of range", format_decimal(v, *scale)))
        }
        Src::F32(a) => float_to_int(a.value(row) as f64),
        Src::F64(a) => float_to_int(a.value(row)),
        _ => Err("not an integer".into()),
    }
}

fn float_to_int(v: f64) -> std::result::Result<i64, String> {
    // The i64 range as floats: [-2^63, 2^63).
    if v.fract() != 0.0 || !(-9.223372036854776e18..9.223372036854776e18).contains(&v) {
        return Err(format!("{} is not an integer in range", format_float(v)));
    }
    Ok(v as i64)
}

fn float_value(src: &Src, row: usize) -> std::result::Result<f64, String> {
    match src {
        Src::F32(a) => Ok(a.value(row) as f64),
        Src::F64(a) => Ok(a.value(row)),
        Src::I32(a) => Ok(a.value(row) as f64),
        Src::I64(a) => {
            let v = a.value(row);
            let f = v as f64;
            if f as i128 != v as i128 {
                return Err(format!("{v} has more digits than a float keeps"));
            }
            Ok(f)
        }
        _ => Err("not a number".into()),
    }
}

/// The text of a value, as PostgreSQL would print it; borrowed for strings.
fn text_of<'s>(src: &'s Src, row: usize, scratch: &'s mut String) -> &'s str {
    scratch.clear();
    match src {
        Src::Str(a) => return a.value(row),
        Src::Bool(a) => scratch.push_str(if a.value(row) { "true" } else { "false" }),
        Src::I32(a) => {
            let _ = write!(scratch, "{}", a.value(row));
        }
        Src::I64(a) => {
            let _ = write!(scratch, "{}", a.value(row));
        }
        Src::F32(a) => scratch.push_str(&format_float(a.value(row) as f64)),
        Src::F64(a) => scratch.push_str(&format_float(a.value(row))),
        Src::Dec(a, scale) => scratch.push_str(&format_decimal(a.value(row), *scale)),
        Src::Bin(a) => scratch.push_str(&hex(a.value(row))),
        Src::Date(a) => scratch.push_str(&format_date(a.value(row))),
        Src::Time(a) => scratch.push_str(&format_time(a.value(row))),
        Src::Ts(a, tz) => scratch.push_str(&format_timestamp(a.value(row), *tz, false)),
    }
    scratch.as_str()
}

fn no_nul(s: &str) -> std::result::Result<(), String> {
    if s.as_bytes().contains(&0) {
        return Err("text contains a NUL byte (\\0), which PostgreSQL cannot store".into());
    }
    Ok(())
}

fn check_precision(
    micros: i64,
    precision: Option<u32>,
    what: &str,
) -> std::result::Result<(), String> {
    if let Some(p) = precision {
        if micros != i64::MIN && micros != i64::MAX && micros % 10i64.pow(6 - p) != 0 {
            return Err(format!(
                "has more fractional digits than {what}({p}) keeps; it would be rounded"
            ));
        }
    }
    Ok(())
}

fn encode_value(
    enc: Enc,
    src: &Src,
    row: usize,
    out: &mut Vec<u8>,
    direct: bool,
    scratch: &mut String,
) -> std::result::Result<(), String> {
    match enc {
        Enc::Bool => match src {
            Src::Bool(a) => put(out, &[a.value(row) as u8]),
            _ => return Err("not a boolean".into()),
        },
        Enc::Int2 => {
            let v = int_value(src, row)?;
            let v = i16::try_from(v).map_err(|_| format!("{v} does not fit a smallint"))?;
            put(out, &v.to_be_bytes());
        }
        Enc::Int4 => {
            let v = int_value(src, row)?;
            let v = i32::try_from(v).map_err(|_| format!("{v} does not fit an integer"))?;
            put(out, &v.to_be_bytes());
        }
        Enc::Int8 => put(out, &int_value(src, row)?.to_be_bytes()),
        Enc::Float4 => {
            let v = float_value(src, row)?;
            let f = v as f32;
            if v.is_finite() && f.is_infinite() {
                return Err(format!("{} is out of range for real", format_float(v)));
            }
            put(out, &f.to_be_bytes());
        }
        Enc::Float8 => put(out, &float_value(src, row)?.to_be_bytes()),
        Enc::Numeric(typmod) => put_with(out, |o| match src {
            Src::I32(a) => numeric::encode_int(a.value(row) as i64, typmod, o),
            Src::I64(a) => numeric::encode_int(a.value(row), typmod, o),
            Src::Dec(a, scale) => numeric::encode_unscaled(a.value(row), *scale, typmod, o),
            Src::Str(a) => numeric::encode_text(a.value(row), typmod, o),
            Src::F32(a) => numeric::encode_text(&format_float(a.value(row) as f64), typmod, o),
            Src::F64(a) => numeric::encode_text(&format_float(a.value(row)), typmod, o),
            _ => Err("not a number".into()),
        })?,
        Enc::Text {
            limit,
            bpchar,
            max_bytes,
        } => {
            let s = text_of(src, row, scratch);
            no_nul(s)?;
            if let Some(max) = max_bytes {
                if s.len() > max {
                    return Err(format!(
                        "text of {} bytes is longer than the column's {max}-byte limit",
                        s.len()
                    ));
                }
            }
            if let Some(n) = limit {
                if s.len() > n {
                    let chars = s.chars().count();
                    // char(n) drops trailing spaces beyond n, as PostgreSQL does.
                    let excess_is_spaces = bpchar && s.chars().skip(n).all(|c| c == ' ');
                    if chars > n && !excess_is_spaces {
                        return Err(format!(
                            "text of {chars} characters is longer than the column's limit of {n}"
                        ));
                    }
                }
            }
            put(out, s.as_bytes());
        }
        Enc::Json | Enc::Jsonb => match src {
            Src::Str(a) => {
                let s = a.value(row);
                no_nul(s)?;
                put_json(out, s, enc == Enc::Jsonb && direct)?;
            }
            _ => encode_json_other(src, row, out, enc == Enc::Jsonb && direct)?,
        },
        Enc::Bytea => match src {
            Src::Bin(a) => put(out, a.value(row)),
            _ => return Err("not binary".into()),
        },
        Enc::Uuid => match src {
            Src::Str(a) => put(out, &parse_uuid(a.value(row))?),
            _ => return Err("not a UUID".into()),
        },
        Enc::Date => {
            let days = match src {
                Src::Date(a) => a.value(row),
                Src::Ts(a, _) => {
                    let us = a.value(row);
                    match us {
                        i64::MAX => i32::MAX,
                        i64::MIN => i32::MIN,
                        _ if us.rem_euclid(MICROS_PER_DAY) != 0 => {
                            return Err(format!(
                                "{} has a time of day; a date column would drop it",
                                format_timestamp(us, false, false)
                            ))
                        }
                        _ => i32::try_from(us.div_euclid(MICROS_PER_DAY))
                            .map_err(|_| "a date out of range".to_string())?,
                    }
                }
                Src::Str(a) => parse_date_text(a.value(row))?,
                _ => return Err("not a date".into()),
            };
            put(out, &date_to_pg(days)?.to_be_bytes());
        }
        Enc::Time(precision) => match src {
            Src::Time(_) | Src::Str(_) => {
                let us = match src {
                    Src::Time(a) => a.value(row),
                    Src::Str(a) => parse_time_text(a.value(row))?,
                    _ => unreachable!("matched above"),
                };
                if !(0..=MICROS_PER_DAY).contains(&us) {
                    return Err(format!("{us} microseconds is not a time of day"));
                }
                check_precision(us, precision, "time")?;
                put(out, &us.to_be_bytes());
            }
            _ => return Err("not a time".into()),
        },
        Enc::Timestamp(precision) | Enc::TimestampTz(precision) => {
            let us = match src {
                Src::Ts(a, _) => a.value(row),
                Src::Date(a) => match a.value(row) {
                    i32::MAX => i64::MAX,
                    i32::MIN => i64::MIN,
                    d => d as i64 * MICROS_PER_DAY,
                },
                Src::Str(a) => parse_timestamp_text(a.value(row))?,
                _ => return Err("not a timestamp".into()),
            };
            check_precision(us, precision, "timestamp")?;
            put(out, &timestamp_to_pg(us)?.to_be_bytes());
        }
        Enc::Enum | Enc::Cast => {
            let s = text_of(src, row, scratch);
            no_nul(s)?;
            put(out, s.as_bytes());
        }
        Enc::ArrayLiteral => {
            let s = match src {
                Src::Str(a) => a.value(row),
                _ => return Err("an array column takes a JSON array".into()),
            };
            no_nul(s)?;
            if s.trim_start().starts_with('[') {
                let v: Value =
                    serde_json::from_str(s).map_err(|e| format!("not a JSON array: {e}"))?;
                scratch.clear();
                array_literal(&v, scratch)?;
                put(out, scratch.as_bytes());
            } else {
                // Already PostgreSQL array text (`{1,2}`); the server parses it.
                put(out, s.as_bytes());
            }
        }
    }
    Ok(())
}

fn infinity(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "infinity" | "+infinity" => Some(true),
        "-infinity" => Some(false),
        _ => None,
    }
}

/// Date text (`YYYY-MM-DD`, `infinity`) as Arrow days.
fn parse_date_text(s: &str) -> std::result::Result<i32, String> {
    if let Some(positive) = infinity(s) {
        return Ok(if positive { i32::MAX } else { i32::MIN });
    }
    let date = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d")
        .map_err(|_| format!("`{s}` is not a date (YYYY-MM-DD)"))?;
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("a valid date");
    i32::try_from((date - epoch).num_days()).map_err(|_| format!("`{s}` is out of range"))
}

/// Time text (`HH:MM:SS[.ffffff]`, `24:00:00`) as microseconds.
fn parse_time_text(s: &str) -> std::result::Result<i64, String> {
    let t = s.trim();
    if t == "24:00:00" || t == "24:00" {
        return Ok(MICROS_PER_DAY);
    }
    let time = chrono::NaiveTime::parse_from_str(t, "%H:%M:%S%.f")
        .or_else(|_| chrono::NaiveTime::parse_from_str(t, "%H:%M"))
        .map_err(|_| format!("`{s}` is not a time (HH:MM:SS[.ffffff])"))?;
    use chrono::Timelike;
    if time.nanosecond() % 1000 != 0 {
        return Err(format!(
            "`{s}` has sub-microsecond digits; a time column would round them"
        ));
    }
    Ok(time.num_seconds_from_midnight() as i64 * 1_000_000 + (time.nanosecond() / 1000) as i64)
}

/// Timestamp text (RFC 3339, `YYYY-MM-DD HH:MM:SS[.ffffff][+hh]`, a date, `infinity`) as
/// Arrow microseconds, UTC for text with an offset.
fn parse_timestamp_text(s: &str) -> std::result::Result<i64, String> {
    if let Some(positive) = infinity(s) {
        return Ok(if positive { i64::MAX } else { i64::MIN });
    }
    let fraction = s
        .split_once('.')
        .map_or(0, |(_, f)| f.bytes().take_while(u8::is_ascii_digit).count());
    if fraction > 6 {
        return Err(format!(
            "`{s}` has sub-microsecond digits; a timestamp column would round them"
        ));
    }
    lockstep_plugin_sdk::rows::parse_timestamp_micros(s)
}

/// A non-text value into a json/jsonb column: its JSON form.
fn encode_json_other(
    src: &Src,
    row: usize,
    out: &mut Vec<u8>,
    jsonb_binary: bool,
) -> std::result::Result<(), String> {
    let json = match src {
        Src::Bool(a) => Value::Bool(a.value(row)),
        Src::I32(a) => a.value(row).into(),
        Src::I64(a) => a.value(row).into(),
        _ => {
            let mut scratch = String::new();
            let text = match src {
                Src::F32(a) => format_float(a.value(row) as f64),
                Src::F64(a) => format_float(a.value(row)),
                _ => text_of(src, row, &mut scratch).to_owned(),
            };
            // Finite floats and decimals are JSON numbers; everything else is a string.
            match serde_json::from_str::<serde_json::Number>(&text) {
                Ok(n) if matches!(src, Src::F32(_) | Src::F64(_) | Src::Dec(..)) => {
                    Value::Number(n)
                }
                _ => Value::String(text),
            }
        }
    };
    put_json(out, &json.to_string(), jsonb_binary)
}

/// JSON text, with jsonb's version byte in front when writing jsonb's binary form.
fn put_json(out: &mut Vec<u8>, s: &str, jsonb_binary: bool) -> std::result::Result<(), String> {
    if jsonb_binary {
        put_with(out, |o| {
            o.push(1);
            o.extend_from_slice(s.as_bytes());
            Ok(())
        })
    } else {
        put(out, s.as_bytes());
        Ok(())
    }
}

/// A JSON array as a PostgreSQL array literal: `[1,"a b",null,[2]]` -> `{"1","a b",NULL,{"2"}}`.
pub fn array_literal(v: &Value, out: &mut String) -> std::result::Result<(), String> {
    let Value::Array(items) = v else {
        return Err("an array column takes a JSON array".into());
    };
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            Value::Array(_) => array_literal(item, out)?,
            Value::Null => out.push_str("NULL"),
            Value::String(s) => quote_element(s, out),
            other => quote_element(&other.to_string(), out),
        }
    }
    out.push('}');
    Ok(())
}

fn quote_element(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_arrays_become_array_literals() {
        let mut s = String::new();
        array_literal(&json!([1, "a \"b\"", null, [true, {"k": 1}]]), &mut s).unwrap();
        assert_eq!(s, r#"{"1","a \"b\"",NULL,{"true","{\"k\":1}"}}"#);
        let mut s = String::new();
        array_literal(&json!([]), &mut s).unwrap();
        assert_eq!(s, "{}");
        assert!(array_literal(&json!({"a": 1}), &mut String::new()).is_err());
    }
}
