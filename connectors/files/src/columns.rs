//! Arrow columns built straight from CSV values: one typed builder per field read, each
//! value decoded and parsed once, with no record ever becoming a JSON object on the way.
//!
//! A row goes in two steps. [`CsvColumns::check`] decodes and parses every value the batch
//! needs into a reusable row of [`Cell`]s, and says which field is wrong and why when one is
//! (the caller makes that row a source reject naming the file and the line). Only a row that
//! checked whole is appended ([`CsvColumns::append`]), so a rejected row never leaves half its
//! values in the builders.
//!
//! Invariants:
//! - A value converts exactly as `lockstep_plugin_sdk::rows::batch_from_rows` would convert it
//!   as a JSON string (the same accepted spellings and the same reasons), so the CSV and the
//!   JSON Lines paths type values alike; a json field's text is parsed and written as compact
//!   JSON, as the JSON path does.
//! - Memory is one batch of columns and one row of cells.

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{NaiveDate, NaiveTime, Timelike};
use lockstep_plugin_sdk::arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
use lockstep_plugin_sdk::rows::{parse_decimal, parse_timestamp_micros};
use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo, Result};
use serde_json::Value;

use crate::config::Encoding;

/// Where a field's values come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// The CSV column at this index.
    Column(usize),
    /// The record's file name (`file_field`).
    File,
    /// The record's line number (`line_field`).
    Line,
    /// The file's modification time (`modified_field`).
    Modified,
    /// A field the file has no column for: null.
    Missing,
}

/// One value, checked and parsed, waiting to be appended.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Bool(bool),
    I32(i32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(i128),
    /// Text that is appended as the record holds it (decoded again then).
    Text,
    /// A json field's compact text, in the row's scratch buffer of this field.
    Json,
    Binary(Vec<u8>),
    /// Metadata (file, line, modification time), appended from the file's state.
    Metadata,
}

/// The typed builder of one column.
enum Builder {
    Boolean(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Text(StringBuilder),
    Binary(BinaryBuilder),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

impl Builder {
    fn new(data_type: DataType, capacity: usize) -> Result<Builder> {
        Ok(match data_type {
            DataType::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
            DataType::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
            DataType::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            DataType::Float32 => Builder::Float32(Float32Builder::with_capacity(capacity)),
            DataType::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
            DataType::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(precision, scale)
                    .map_err(|e| ConnectorError::config(e.to_string()))?,
            ),
            DataType::Text | DataType::Uuid | DataType::Json => {
                Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            DataType::Binary => Builder::Binary(BinaryBuilder::with_capacity(capacity, 0)),
            DataType::Date => Builder::Date(Date32Builder::with_capacity(capacity)),
            DataType::Time => Builder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            DataType::Timestamp => {
                Builder::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            DataType::TimestampTz => Builder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
        })
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Boolean(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b) => Arc::new(b.finish()),
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Builder::Boolean(b) => b.len(),
            Builder::Int32(b) => b.len(),
            Builder::Int64(b) => b.len(),
            Builder::Float32(b) => b.len(),
            Builder::Float64(b) => b.len(),
            Builder::Decimal(b) => b.len(),
            Builder::Text(b) => b.len(),
            Builder::Binary(b) => b.len(),
            Builder::Date(b) => b.len(),
            Builder::Time(b) => b.len(),
            Builder::Timestamp(b) => b.len(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Builder::Boolean(b) => b.append_null(),
            Builder::Int32(b) => b.append_null(),
            Builder::Int64(b) => b.append_null(),
            Builder::Float32(b) => b.append_null(),
            Builder::Float64(b) => b.append_null(),
            Builder::Decimal(b) => b.append_null(),
            Builder::Text(b) => b.append_null(),
            Builder::Binary(b) => b.append_null(),
            Builder::Date(b) => b.append_null(),
            Builder::Time(b) => b.append_null(),
            Builder::Timestamp(b) => b.append_null(),
        }
    }
}

/// The file a row comes from, for the metadata fields.
pub(crate) struct RowSource<'a> {
    pub file: &'a str,
    pub line: u64,
    pub modified_us: i64,
}

/// Why a row's value does not fit its field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BadValue {
    pub field: String,
    pub reason: String,
}

/// The columns of one batch of CSV rows.
pub(crate) struct CsvColumns {
    fields: Vec<FieldInfo>,
    slots: Vec<Slot>,
    builders: Vec<Builder>,
    /// The row being checked: one cell per field.
    cells: Vec<Cell>,
    /// Per field, the compact JSON text of the row being checked (json fields only).
    json: Vec<String>,
    null: String,
    encoding: Encoding,
}

impl CsvColumns {
    /// Columns for `fields`, each read from where `slots` says; `null` is the CSV text of
    /// null.
    pub(crate) fn new(
        fields: Vec<FieldInfo>,
        slots: Vec<Slot>,
        null: String,
        encoding: Encoding,
        capacity: usize,
    ) -> Result<CsvColumns> {
        let builders = fields
            .iter()
            .map(|f| Builder::new(f.data_type, capacity))
            .collect::<Result<Vec<_>>>()?;
        Ok(CsvColumns {
            cells: vec![Cell::Null; fields.len()],
            json: vec![String::new(); fields.len()],
            fields,
            slots,
            builders,
            null,
            encoding,
        })
    }

    /// The rows appended since the last batch.
    pub(crate) fn len(&self) -> usize {
        self.builders.first().map_or(0, Builder::len)
    }

    /// Decodes and parses every value of `record` the batch needs; the first value that does
    /// not fit its field is the error. The record's text must already be known to decode.
    pub(crate) fn check(&mut self, record: &csv::ByteRecord) -> std::result::Result<(), BadValue> {
        for index in 0..self.fields.len() {
            let cell = match self.slots[index] {
                Slot::File | Slot::Line | Slot::Modified => Cell::Metadata,
                Slot::Missing => Cell::Null,
                Slot::Column(column) => {
                    let bytes = record.get(column).unwrap_or_default();
                    let text = decode(self.encoding, bytes);
                    if text == self.null.as_str() {
                        Cell::Null
                    } else {
                        let field = &self.fields[index];
                        let parsed = parse(field.data_type, &text, &mut self.json[index]);
                        parsed.map_err(|reason| BadValue {
                            field: field.name.clone(),
                            reason,
                        })?
                    }
                }
            };
            if cell == Cell::Null && !self.fields[index].nullable {
                return Err(BadValue {
                    field: self.fields[index].name.clone(),
                    reason: "null in a field that is not nullable".into(),
                });
            }
            self.cells[index] = cell;
        }
        Ok(())
    }

    /// Appends the row [`check`](Self::check) accepted last.
    pub(crate) fn append(&mut self, record: &csv::ByteRecord, source: &RowSource) {
        let CsvColumns {
            builders,
            cells,
            json,
            slots,
            encoding,
            ..
        } = self;
        for (index, builder) in builders.iter_mut().enumerate() {
            let cell = std::mem::replace(&mut cells[index], Cell::Null);
            match (builder, cell) {
                (builder, Cell::Null) => builder.append_null(),
                (Builder::Boolean(b), Cell::Bool(v)) => b.append_value(v),
                (Builder::Int32(b), Cell::I32(v)) => b.append_value(v),
                (Builder::Int64(b), Cell::I64(v)) => b.append_value(v),
                (Builder::Float32(b), Cell::F32(v)) => b.append_value(v),
                (Builder::Float64(b), Cell::F64(v)) => b.append_value(v),
                (Builder::Decimal(b), Cell::Decimal(v)) => b.append_value(v),
                (Builder::Binary(b), Cell::Binary(v)) => b.append_value(v),
                (Builder::Date(b), Cell::I32(v)) => b.append_value(v),
                (Builder::Time(b), Cell::I64(v)) => b.append_value(v),
                (Builder::Timestamp(b), Cell::I64(v)) => b.append_value(v),
                (Builder::Text(b), Cell::Text) => match slots[index] {
                    Slot::Column(column) => {
                        b.append_value(decode(*encoding, record.get(column).unwrap_or_default()))
                    }
                    _ => b.append_null(),
                },
                (Builder::Text(b), Cell::Json) => b.append_value(&json[index]),
                (Builder::Text(b), Cell::Metadata) => b.append_value(source.file),
                (Builder::Int64(b), Cell::Metadata) => b.append_value(source.line as i64),
                (Builder::Timestamp(b), Cell::Metadata) => b.append_value(source.modified_us),
                (builder, cell) => {
                    // `check` makes each cell for its field's type, and the metadata fields
                    // have fixed types (text, int64, timestamptz): this cannot happen.
                    debug_assert!(false, "a {cell:?} cell for field {index}");
                    builder.append_null();
                }
            }
        }
    }

    /// The batch of the rows appended; the builders start the next one empty.
    pub(crate) fn finish(&mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        RecordBatch::try_new(Arc::new(arrow_schema(&self.fields)), columns)
            .map_err(|e| ConnectorError::internal(format!("cannot build a batch: {e}")))
    }
}

/// Decodes `bytes` as the file's text; the reader has checked that the record decodes.
fn decode(encoding: Encoding, bytes: &[u8]) -> Cow<'_, str> {
    match encoding {
        Encoding::Utf8 => String::from_utf8_lossy(bytes),
        Encoding::Windows1252 => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

/// Parses one value (not the null text) as `data_type`, with the reasons of
/// `lockstep_plugin_sdk::rows`; a json value's compact text goes into `json`.
fn parse(data_type: DataType, text: &str, json: &mut String) -> std::result::Result<Cell, String> {
    Ok(match data_type {
        DataType::Boolean => Cell::Bool(parse_bool(text)?),
        DataType::Int32 => {
            let i = parse_i64(text)?;
            Cell::I32(i32::try_from(i).map_err(|_| format!("{i} does not fit a 32-bit integer"))?)
        }
        DataType::Int64 => Cell::I64(parse_i64(text)?),
        DataType::Float32 => Cell::F32(parse_f64(text)? as f32),
        DataType::Float64 => Cell::F64(parse_f64(text)?),
        DataType::Decimal { precision, scale } => {
            Cell::Decimal(parse_decimal(text, precision, scale)?)
        }
        DataType::Text | DataType::Uuid => Cell::Text,
        DataType::Json => {
            let value: Value =
                serde_json::from_str(text).map_err(|e| format!("the value is not JSON ({e})"))?;
            json.clear();
            use std::fmt::Write;
            // Writing into a String cannot fail.
            let _ = write!(json, "{value}");
            Cell::Json
        }
        DataType::Binary => Cell::Binary(parse_binary(text)?),
        DataType::Date => Cell::I32(parse_date(text)?),
        DataType::Time => Cell::I64(parse_time(text)?),
        DataType::Timestamp | DataType::TimestampTz => Cell::I64(parse_timestamp(text)?),
    })
}

fn parse_bool(text: &str) -> std::result::Result<bool, String> {
    let is = |options: &[&str]| options.iter().any(|o| text.eq_ignore_ascii_case(o));
    if is(&["true", "t", "1", "yes"]) {
        Ok(true)
    } else if is(&["false", "f", "0", "no"]) {
        Ok(false)
    } else {
        Err(format!(
            "`{text}` is not a boolean (true/false, 1/0, yes/no)"
        ))
    }
}

fn parse_i64(text: &str) -> std::result::Result<i64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an integer"))
}

fn parse_f64(text: &str) -> std::result::Result<f64, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))
}

fn parse_binary(text: &str) -> std::result::Result<Vec<u8>, String> {
    let hex = text
        .strip_prefix("\\x")
        .ok_or_else(|| "binary values must be `\\x`-prefixed hex text".to_string())?;
    if hex.len() % 2 != 0 {
        return Err("hex text has an odd number of digits".into());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("`{text}` is not hex"))
        })
        .collect()
}

/// 1970-01-01.
const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(date) => date,
    None => NaiveDate::MIN,
};

fn parse_date(text: &str) -> std::result::Result<i32, String> {
    let trimmed = text.trim();
    let date = match fast_date(trimmed.as_bytes()) {
        Some(date) => date,
        None => NaiveDate::parse_from_str(trimmed, "%Y-%m-%d")
            .map_err(|_| format!("`{text}` is not a date (YYYY-MM-DD)"))?,
    };
    Ok((date - EPOCH).num_days() as i32)
}

fn parse_time(text: &str) -> std::result::Result<i64, String> {
    let t = NaiveTime::parse_from_str(text.trim(), "%H:%M:%S%.f")
        .map_err(|_| format!("`{text}` is not a time (HH:MM:SS[.ffffff])"))?;
    Ok(t.num_seconds_from_midnight() as i64 * 1_000_000 + (t.nanosecond() / 1000) as i64)
}

/// Microseconds since the epoch: the common spellings parsed by hand, every other one by
/// `lockstep_plugin_sdk::rows::parse_timestamp_micros`, which gives the same result for these.
fn parse_timestamp(text: &str) -> std::result::Result<i64, String> {
    let trimmed = text.trim();
    match fast_timestamp(trimmed.as_bytes()) {
        Some(micros) => Ok(micros),
        None => parse_timestamp_micros(trimmed),
    }
}

/// The value of ASCII digits, or `None` when one is not a digit.
fn digits(bytes: &[u8]) -> Option<u32> {
    bytes.iter().try_fold(0u32, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0'))
    })
}

/// `YYYY-MM-DD` exactly.
fn fast_date(b: &[u8]) -> Option<NaiveDate> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::from_ymd_opt(
        digits(&b[0..4])? as i32,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
    )
}

/// `YYYY-MM-DD[T ]HH:MM:SS[.f{1,9}][Z|±HH|±HHMM|±HH:MM]`, as microseconds since the epoch
/// (the offset applied); `None` for anything else (left to the general parser).
fn fast_timestamp(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || !matches!(b[10], b'T' | b' ') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let date = fast_date(&b[..10])?;
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if let Some(after_dot) = rest.strip_prefix(b".") {
        let count = after_dot.iter().take_while(|c| c.is_ascii_digit()).count();
        if count == 0 || count > 9 {
            return None;
        }
        nanos = digits(&after_dot[..count])? * 10u32.pow(9 - count as u32);
        rest = &after_dot[count..];
    }
    let offset_seconds: i64 = match rest {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), zone @ ..] => {
            let (hours, minutes) = match zone {
                [h1, h2] => (digits(&[*h1, *h2])?, 0),
                [h1, h2, m1, m2] | [h1, h2, b':', m1, m2] => {
                    (digits(&[*h1, *h2])?, digits(&[*m1, *m2])?)
                }
                _ => return None,
            };
            if hours > 23 || minutes > 59 {
                return None;
            }
            let seconds = i64::from(hours * 3600 + minutes * 60);
            if *sign == b'-' {
                -seconds
            } else {
                seconds
            }
        }
        _ => return None,
    };
    let days = (date - EPOCH).num_days();
    let seconds = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_seconds;
    Some(seconds * 1_000_000 + i64::from(nanos / 1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fast_timestamp_parser_agrees_with_the_general_one() {
        for text in [
            "2024-05-01 10:00:00",
            "2024-05-01T10:00:00",
            "2024-05-01 10:00:00.5",
            "2024-05-01 10:00:00.123456",
            "2024-05-01 10:00:00.123456789",
            "2024-05-01 10:00:00+00",
            "2024-05-01 10:00:00.25+02",
            "2024-05-01 10:00:00-0530",
            "2024-05-01T10:00:00+05:30",
            "2024-05-01T10:00:00Z",
            "1969-12-31 23:59:59.999999+00",
            "1900-02-28 00:00:01.000001-03",
            "2024-02-29 23:59:59Z",
        ] {
            let fast = fast_timestamp(text.as_bytes());
            assert!(fast.is_some(), "{text} takes the fast path");
            assert_eq!(fast, parse_timestamp_micros(text).ok(), "{text}");
        }
        for text in [
            "2024-02-30 10:00:00",
            "2024-05-01 24:00:00",
            "2024-05-01 10:00:60",
            "2024-05-01",
            "2024-05-01 10:00",
            "2024-05-01 10:00:00.",
            "2024-05-01 10:00:00 UTC",
            "2024-05-01 10:00:00+5",
        ] {
            assert_eq!(fast_timestamp(text.as_bytes()), None, "{text}");
        }
        assert_eq!(
            parse_timestamp("2024-05-01").ok(),
            parse_timestamp_micros("2024-05-01").ok()
        );
        assert!(parse_timestamp("2024-02-30 10:00:00").is_err());
        assert_eq!(
            fast_date(b"2024-02-29"),
            NaiveDate::from_ymd_opt(2024, 2, 29)
        );
        assert_eq!(fast_date(b"2023-02-29"), None);
    }

    #[test]
    fn values_parse_with_the_reasons_of_the_row_converter() {
        let mut json = String::new();
        let mut parse = |t: DataType, text: &str| super::parse(t, text, &mut json);
        assert_eq!(parse(DataType::Boolean, "YES"), Ok(Cell::Bool(true)));
        assert_eq!(parse(DataType::Boolean, "f"), Ok(Cell::Bool(false)));
        assert_eq!(
            parse(DataType::Boolean, "maybe"),
            Err("`maybe` is not a boolean (true/false, 1/0, yes/no)".into())
        );
        assert_eq!(parse(DataType::Int64, " 42 "), Ok(Cell::I64(42)));
        assert_eq!(
            parse(DataType::Int32, "4294967296"),
            Err("4294967296 does not fit a 32-bit integer".into())
        );
        assert_eq!(
            parse(DataType::Int64, "4.5"),
            Err("`4.5` is not an integer".into())
        );
        assert_eq!(parse(DataType::Float64, "1e3"), Ok(Cell::F64(1000.0)));
        assert_eq!(
            parse(
                DataType::Decimal {
                    precision: 5,
                    scale: 2
                },
                "10.5"
            ),
            Ok(Cell::Decimal(1050))
        );
        assert_eq!(parse(DataType::Date, "1970-01-02"), Ok(Cell::I32(1)));
        assert_eq!(
            parse(DataType::Time, "00:00:01.5"),
            Ok(Cell::I64(1_500_000))
        );
        assert_eq!(
            parse(DataType::Binary, "\\x00ff"),
            Ok(Cell::Binary(vec![0, 255]))
        );
        assert_eq!(
            parse(DataType::Binary, "\\x0g"),
            Err("`\\x0g` is not hex".into())
        );
        assert_eq!(
            parse(DataType::Binary, "\\x0"),
            Err("hex text has an odd number of digits".into())
        );
        assert_eq!(parse(DataType::Json, "{ \"a\" : [1, 2] }"), Ok(Cell::Json));
        assert!(parse(DataType::Json, "{oops")
            .unwrap_err()
            .starts_with("the value is not JSON"));
        assert_eq!(json, r#"{"a":[1,2]}"#);
    }
}
