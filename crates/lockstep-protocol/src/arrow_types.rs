//! The one mapping between logical [`DataType`]s and Arrow types, and conversions of single
//! Arrow values to JSON (for rejected records, plans and messages).

use std::collections::HashMap;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int32Array, Int64Array, LargeStringArray, StringArray, Time64MicrosecondArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType as ArrowType, Field, Int16Type, Int8Type, Schema, TimeUnit, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use serde_json::Value;

use crate::{
    CdcDropped, DataType, FieldInfo, KeySummary, RangeEntry, RangeSummary,
    LOGICAL_TYPE_METADATA_KEY,
};

impl DataType {
    /// The Arrow type that carries values of this logical type.
    pub fn arrow_type(&self) -> ArrowType {
        match self {
            DataType::Boolean => ArrowType::Boolean,
            DataType::Int32 => ArrowType::Int32,
            DataType::Int64 => ArrowType::Int64,
            DataType::Float32 => ArrowType::Float32,
            DataType::Float64 => ArrowType::Float64,
            DataType::Decimal { precision, scale } => ArrowType::Decimal128(*precision, *scale),
            DataType::Text | DataType::Uuid | DataType::Json => ArrowType::Utf8,
            DataType::Binary => ArrowType::Binary,
            DataType::Date => ArrowType::Date32,
            DataType::Time => ArrowType::Time64(TimeUnit::Microsecond),
            DataType::Timestamp => ArrowType::Timestamp(TimeUnit::Microsecond, None),
            DataType::TimestampTz => {
                ArrowType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
        }
    }

    /// An Arrow field of this type, tagged with the logical type where Arrow is ambiguous.
    pub fn to_arrow_field(&self, name: &str, nullable: bool) -> Field {
        let field = Field::new(name, self.arrow_type(), nullable);
        match self {
            DataType::Uuid => field.with_metadata(tag("uuid")),
            DataType::Json => field.with_metadata(tag("json")),
            _ => field,
        }
    }

    /// The logical type of an Arrow field, or `None` when Lockstep has no equivalent.
    pub fn from_arrow_field(field: &Field) -> Option<DataType> {
        let tagged = field
            .metadata()
            .get(LOGICAL_TYPE_METADATA_KEY)
            .map(String::as_str);
        Some(match (field.data_type(), tagged) {
            (ArrowType::Utf8 | ArrowType::LargeUtf8, Some("uuid")) => DataType::Uuid,
            (ArrowType::Utf8 | ArrowType::LargeUtf8, Some("json")) => DataType::Json,
            (ArrowType::Utf8 | ArrowType::LargeUtf8 | ArrowType::Utf8View, _) => DataType::Text,
            (ArrowType::Boolean, _) => DataType::Boolean,
            (ArrowType::Int8 | ArrowType::Int16 | ArrowType::Int32, _) => DataType::Int32,
            (ArrowType::UInt8 | ArrowType::UInt16, _) => DataType::Int32,
            (ArrowType::Int64 | ArrowType::UInt32, _) => DataType::Int64,
            (ArrowType::Float16 | ArrowType::Float32, _) => DataType::Float32,
            (ArrowType::Float64, _) => DataType::Float64,
            (ArrowType::Decimal128(p, s), _) => DataType::Decimal {
                precision: *p,
                scale: *s,
            },
            (ArrowType::Binary | ArrowType::LargeBinary | ArrowType::FixedSizeBinary(_), _) => {
                DataType::Binary
            }
            (ArrowType::Date32 | ArrowType::Date64, _) => DataType::Date,
            (ArrowType::Time32(_) | ArrowType::Time64(_), _) => DataType::Time,
            (ArrowType::Timestamp(_, None), _) => DataType::Timestamp,
            (ArrowType::Timestamp(_, Some(_)), _) => DataType::TimestampTz,
            _ => return None,
        })
    }
}

fn tag(value: &str) -> HashMap<String, String> {
    HashMap::from([(LOGICAL_TYPE_METADATA_KEY.to_owned(), value.to_owned())])
}

impl FieldInfo {
    /// This field as an Arrow field.
    pub fn to_arrow_field(&self) -> Field {
        self.data_type.to_arrow_field(&self.name, self.nullable)
    }
}

/// The Arrow schema of a list of fields.
pub fn arrow_schema(fields: &[FieldInfo]) -> Schema {
    Schema::new(
        fields
            .iter()
            .map(FieldInfo::to_arrow_field)
            .collect::<Vec<_>>(),
    )
}

/// The fields of an Arrow schema, or the name of the first field without a logical type.
pub fn fields_from_arrow(schema: &Schema) -> Result<Vec<FieldInfo>, String> {
    schema
        .fields()
        .iter()
        .map(|f| {
            let data_type = DataType::from_arrow_field(f).ok_or_else(|| {
                format!(
                    "field `{}` has Arrow type {} which Lockstep does not carry",
                    f.name(),
                    f.data_type()
                )
            })?;
            Ok(FieldInfo {
                name: f.name().clone(),
                data_type,
                nullable: f.is_nullable(),
                native_type: None,
            })
        })
        .collect()
}

/// The value at `row` of `array` as JSON: numbers as numbers (decimals as strings, to keep
/// their exact digits), temporal values in ISO 8601, binary as hex, JSON documents parsed.
pub fn json_value(array: &ArrayRef, row: usize, logical: Option<DataType>) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        ArrowType::Boolean => Value::Bool(array.as_boolean().value(row)),
        ArrowType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        ArrowType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        ArrowType::Int32 => downcast::<Int32Array>(array).value(row).into(),
        ArrowType::Int64 => downcast::<Int64Array>(array).value(row).into(),
        ArrowType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        ArrowType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        ArrowType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        ArrowType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        ArrowType::Float32 => float(downcast::<Float32Array>(array).value(row) as f64),
        ArrowType::Float64 => float(downcast::<Float64Array>(array).value(row)),
        ArrowType::Decimal128(_, scale) => Value::String(format_decimal(
            downcast::<Decimal128Array>(array).value(row),
            *scale,
        )),
        ArrowType::Utf8 => text(downcast::<StringArray>(array).value(row), logical),
        ArrowType::LargeUtf8 => text(downcast::<LargeStringArray>(array).value(row), logical),
        ArrowType::Binary => Value::String(hex(downcast::<BinaryArray>(array).value(row))),
        ArrowType::Date32 => {
            let days = downcast::<Date32Array>(array).value(row);
            match chrono_date(days) {
                Some(d) => Value::String(d),
                None => days.into(),
            }
        }
        ArrowType::Time64(TimeUnit::Microsecond) => {
            let us = downcast::<Time64MicrosecondArray>(array).value(row);
            Value::String(format_time(us))
        }
        ArrowType::Timestamp(TimeUnit::Microsecond, tz) => {
            let us = downcast::<TimestampMicrosecondArray>(array).value(row);
            Value::String(format_timestamp(us, tz.is_some()))
        }
        other => Value::String(format!("<{other} value>")),
    }
}

fn downcast<T: 'static>(array: &ArrayRef) -> &T {
    array
        .as_any()
        .downcast_ref::<T>()
        .expect("the match arm checked the Arrow type")
}

fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(v.to_string()))
}

fn text(s: &str, logical: Option<DataType>) -> Value {
    if logical == Some(DataType::Json) {
        if let Ok(v) = serde_json::from_str(s) {
            return v;
        }
    }
    Value::String(s.to_owned())
}

/// Lower-case hexadecimal digits of `bytes`, prefixed `\x` as PostgreSQL prints them.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 + bytes.len() * 2);
    out.push_str("\\x");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A decimal's unscaled integer and scale as exact decimal text.
pub fn format_decimal(unscaled: i128, scale: i8) -> String {
    if scale <= 0 {
        let mut s = unscaled.to_string();
        for _ in 0..(-scale) {
            s.push('0');
        }
        return s;
    }
    let negative = unscaled < 0;
    let digits = unscaled.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = if digits.len() <= scale {
        format!("{}{}", "0".repeat(scale - digits.len() + 1), digits)
    } else {
        digits
    };
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{}.{}", if negative { "-" } else { "" }, int, frac)
}

fn chrono_date(days: i32) -> Option<String> {
    let mut out = String::with_capacity(10);
    push_date(&mut out, days).then_some(out)
}

/// Year, month and day of `days` since 1970-01-01 (proleptic Gregorian, astronomical years;
/// Howard Hinnant's algorithm).
fn civil_date(days: i32) -> (i64, i64, i64) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Appends the civil date of `days` since 1970-01-01 as `YYYY-MM-DD`; false (nothing
/// appended) outside the years -9999 to 9999.
fn push_date(out: &mut String, days: i32) -> bool {
    let (y, m, d) = civil_date(days);
    if !(-9999..=9999).contains(&y) {
        return false;
    }
    if y >= 0 {
        push_digits(out, y, 4);
    } else {
        // `{:04}` counts the sign in the width.
        out.push_str(&format!("{y:04}"));
    }
    out.push('-');
    push_digits(out, m, 2);
    out.push('-');
    push_digits(out, d, 2);
    true
}

/// Appends `value` (not negative) in decimal with at least `width` digits, zero-padded.
fn push_digits(out: &mut String, value: i64, width: u32) {
    let mut divisor = 10i64.pow(width.saturating_sub(1));
    while divisor > 1 && value / divisor >= 10 {
        divisor *= 10;
    }
    while divisor > 0 {
        out.push(char::from(b'0' + ((value / divisor) % 10) as u8));
        divisor /= 10;
    }
}

fn format_time(us: i64) -> String {
    let mut out = String::with_capacity(15);
    push_time(&mut out, us);
    out
}

/// Appends a time of day in microseconds as `HH:MM:SS`, with `.ffffff` when not on a second.
fn push_time(out: &mut String, us: i64) {
    let secs = us.div_euclid(1_000_000);
    let frac = us.rem_euclid(1_000_000);
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    push_digits(out, h, 2);
    out.push(':');
    push_digits(out, m, 2);
    out.push(':');
    push_digits(out, s, 2);
    if frac != 0 {
        out.push('.');
        push_digits(out, frac, 6);
    }
}

/// Microseconds since the epoch as ISO 8601 (`Z`-suffixed when `utc`). Written digit by
/// digit into one string: a ledger row keeps its cursor value as text, and the formatting
/// machinery's three strings a value were 15% of a full run's engine thread.
pub fn format_timestamp(us: i64, utc: bool) -> String {
    let days = us.div_euclid(86_400_000_000);
    let rest = us.rem_euclid(86_400_000_000);
    let mut out = String::with_capacity(28);
    if !push_date(&mut out, days as i32) {
        out.push_str(&format!("day {days}"));
    }
    out.push('T');
    push_time(&mut out, rest);
    if utc {
        out.push('Z');
    }
    out
}

impl KeySummary {
    /// The summary as the one-row batch a key-summary read returns.
    pub fn to_batch(&self) -> Result<arrow::array::RecordBatch, String> {
        let count = i64::try_from(self.count)
            .map_err(|_| format!("a key summary's count {} is too large", self.count))?;
        let schema = Schema::new(vec![
            Field::new("algorithm", ArrowType::Utf8, false),
            Field::new("count", ArrowType::Int64, false),
            Field::new("hash", ArrowType::Utf8, false),
        ]);
        arrow::array::RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                std::sync::Arc::new(StringArray::from(vec![self.algorithm.as_str()])),
                std::sync::Arc::new(Int64Array::from(vec![count])),
                std::sync::Arc::new(StringArray::from(vec![self.hash.as_str()])),
            ],
        )
        .map_err(|e| e.to_string())
    }

    /// Reads a summary back from the batch a key-summary read returned, explaining what is
    /// wrong with a batch of another shape.
    pub fn from_batch(batch: &arrow::array::RecordBatch) -> Result<KeySummary, String> {
        if batch.num_rows() != 1 {
            return Err(format!(
                "a key summary is one row, this batch has {}",
                batch.num_rows()
            ));
        }
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .filter(|c| c.is_valid(0))
                .ok_or_else(|| format!("a key summary needs a non-null `{name}` field"))
        };
        let text = |name: &str| -> Result<String, String> {
            column(name)?
                .as_string_opt::<i32>()
                .map(|a| a.value(0).to_owned())
                .ok_or_else(|| format!("a key summary's `{name}` must be text"))
        };
        let count = column("count")?
            .as_primitive_opt::<arrow::datatypes::Int64Type>()
            .map(|a| a.value(0))
            .ok_or_else(|| "a key summary's `count` must be an int64".to_owned())?;
        Ok(KeySummary {
            algorithm: text("algorithm")?,
            count: u64::try_from(count)
                .map_err(|_| format!("a key summary's `count` is negative: {count}"))?,
            hash: text("hash")?,
        })
    }
}

/// The text column `name` of a batch, explaining what is wrong when it is missing or not
/// text.
fn text_column<'a>(
    batch: &'a arrow::array::RecordBatch,
    name: &str,
    what: &str,
) -> Result<&'a StringArray, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("{what} needs a `{name}` field"))?
        .as_string_opt::<i32>()
        .ok_or_else(|| format!("{what}'s `{name}` must be text"))
}

/// The int64 column `name` of a batch, explaining what is wrong when it is missing or not an
/// int64.
fn int64_column<'a>(
    batch: &'a arrow::array::RecordBatch,
    name: &str,
    what: &str,
) -> Result<&'a Int64Array, String> {
    batch
        .column_by_name(name)
        .ok_or_else(|| format!("{what} needs a `{name}` field"))?
        .as_primitive_opt::<arrow::datatypes::Int64Type>()
        .ok_or_else(|| format!("{what}'s `{name}` must be an int64"))
}

impl RangeSummary {
    /// Summaries as the batch a range-hash read returns.
    pub fn to_batch(items: &[RangeSummary]) -> Result<arrow::array::RecordBatch, String> {
        let int = |v: u64, what: &str| {
            i64::try_from(v).map_err(|_| format!("a range summary's {what} {v} is too large"))
        };
        let ranges = items
            .iter()
            .map(|s| int(s.range, "range"))
            .collect::<Result<Vec<_>, _>>()?;
        let counts = items
            .iter()
            .map(|s| int(s.count, "count"))
            .collect::<Result<Vec<_>, _>>()?;
        let schema = Schema::new(vec![
            Field::new("algorithm", ArrowType::Utf8, false),
            Field::new("range", ArrowType::Int64, false),
            Field::new("count", ArrowType::Int64, false),
            Field::new("hash", ArrowType::Utf8, false),
            Field::new("newest", ArrowType::Utf8, true),
        ]);
        arrow::array::RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                std::sync::Arc::new(StringArray::from_iter_values(
                    items.iter().map(|s| s.algorithm.as_str()),
                )),
                std::sync::Arc::new(Int64Array::from(ranges)),
                std::sync::Arc::new(Int64Array::from(counts)),
                std::sync::Arc::new(StringArray::from_iter_values(
                    items.iter().map(|s| s.hash.as_str()),
                )),
                std::sync::Arc::new(StringArray::from_iter(
                    items.iter().map(|s| s.newest.as_deref()),
                )),
            ],
        )
        .map_err(|e| e.to_string())
    }

    /// Reads summaries back from a batch of a range-hash read, explaining what is wrong with
    /// a batch of another shape.
    pub fn from_batch(batch: &arrow::array::RecordBatch) -> Result<Vec<RangeSummary>, String> {
        let what = "a range summary";
        let algorithm = text_column(batch, "algorithm", what)?;
        let range = int64_column(batch, "range", what)?;
        let count = int64_column(batch, "count", what)?;
        let hash = text_column(batch, "hash", what)?;
        let newest = text_column(batch, "newest", what)?;
        (0..batch.num_rows())
            .map(|row| {
                let unsigned = |a: &Int64Array, name: &str| {
                    if a.is_null(row) {
                        return Err(format!("{what}'s `{name}` is null"));
                    }
                    u64::try_from(a.value(row))
                        .map_err(|_| format!("{what}'s `{name}` is negative: {}", a.value(row)))
                };
                if algorithm.is_null(row) || hash.is_null(row) {
                    return Err(format!("{what}'s `algorithm` and `hash` must not be null"));
                }
                Ok(RangeSummary {
                    algorithm: algorithm.value(row).to_owned(),
                    range: unsigned(range, "range")?,
                    count: unsigned(count, "count")?,
                    hash: hash.value(row).to_owned(),
                    newest: (!newest.is_null(row)).then(|| newest.value(row).to_owned()),
                })
            })
            .collect()
    }
}

impl RangeEntry {
    /// Entries of a key of `key_fields` fields as the batch a listing range-hash read returns.
    pub fn to_batch(
        items: &[RangeEntry],
        key_fields: usize,
    ) -> Result<arrow::array::RecordBatch, String> {
        let mut fields = Vec::with_capacity(key_fields + 1);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(key_fields + 1);
        for i in 0..key_fields {
            fields.push(Field::new(format!("key_{i}"), ArrowType::Utf8, true));
            let mut values = Vec::with_capacity(items.len());
            for item in items {
                if item.key.len() != key_fields {
                    return Err(format!(
                        "a range entry has {} key values where the key has {key_fields} fields",
                        item.key.len()
                    ));
                }
                values.push(item.key[i].as_deref());
            }
            columns.push(std::sync::Arc::new(StringArray::from_iter(values)));
        }
        fields.push(Field::new("row_hash", ArrowType::Utf8, false));
        columns.push(std::sync::Arc::new(StringArray::from_iter_values(
            items.iter().map(|e| e.hash.as_str()),
        )));
        arrow::array::RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
            .map_err(|e| e.to_string())
    }

    /// Reads entries of a key of `key_fields` fields back from a batch of a listing
    /// range-hash read, explaining what is wrong with a batch of another shape.
    pub fn from_batch(
        batch: &arrow::array::RecordBatch,
        key_fields: usize,
    ) -> Result<Vec<RangeEntry>, String> {
        let what = "a range entry";
        let keys = (0..key_fields)
            .map(|i| text_column(batch, &format!("key_{i}"), what))
            .collect::<Result<Vec<_>, _>>()?;
        let hash = text_column(batch, "row_hash", what)?;
        (0..batch.num_rows())
            .map(|row| {
                if hash.is_null(row) {
                    return Err(format!("{what}'s `row_hash` is null"));
                }
                Ok(RangeEntry {
                    key: keys
                        .iter()
                        .map(|k| (!k.is_null(row)).then(|| k.value(row).to_owned()))
                        .collect(),
                    hash: hash.value(row).to_owned(),
                })
            })
            .collect()
    }
}

impl CdcDropped {
    /// The field names of a cdc drop's batch, in order.
    const FIELDS: [&'static str; 4] = ["object", "name", "outcome", "detail"];

    /// The outcomes as the batch a cdc drop returns.
    pub fn to_batch(items: &[CdcDropped]) -> Result<arrow::array::RecordBatch, String> {
        let schema = Schema::new(
            Self::FIELDS
                .iter()
                .map(|name| Field::new(*name, ArrowType::Utf8, false))
                .collect::<Vec<_>>(),
        );
        let column = |get: fn(&CdcDropped) -> &str| -> ArrayRef {
            std::sync::Arc::new(StringArray::from(
                items.iter().map(get).collect::<Vec<&str>>(),
            ))
        };
        arrow::array::RecordBatch::try_new(
            std::sync::Arc::new(schema),
            vec![
                column(|d| &d.object),
                column(|d| &d.name),
                column(|d| &d.outcome),
                column(|d| &d.detail),
            ],
        )
        .map_err(|e| e.to_string())
    }

    /// Reads the outcomes back from the batch a cdc drop returned, explaining what is wrong
    /// with a batch of another shape.
    pub fn from_batch(batch: &arrow::array::RecordBatch) -> Result<Vec<CdcDropped>, String> {
        let mut columns = Vec::with_capacity(Self::FIELDS.len());
        for name in Self::FIELDS {
            let column = batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| format!("a cdc drop's batch needs a text field `{name}`"))?;
            columns.push(column);
        }
        (0..batch.num_rows())
            .map(|row| {
                let text = |i: usize| -> Result<String, String> {
                    let column = columns[i];
                    if column.is_null(row) {
                        return Err(format!(
                            "a cdc drop's `{}` is null in row {}",
                            Self::FIELDS[i],
                            row + 1
                        ));
                    }
                    Ok(column.value(row).to_owned())
                };
                Ok(CdcDropped {
                    object: text(0)?,
                    name: text(1)?,
                    outcome: text(2)?,
                    detail: text(3)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdc_drop_outcomes_round_trip_through_a_batch() {
        let items = vec![
            CdcDropped {
                object: "replication slot".into(),
                name: "s".into(),
                outcome: CdcDropped::DROPPED.into(),
                detail: String::new(),
            },
            CdcDropped {
                object: "publication".into(),
                name: "p".into(),
                outcome: CdcDropped::KEPT.into(),
                detail: "it publishes other tables too".into(),
            },
        ];
        let batch = CdcDropped::to_batch(&items).unwrap();
        assert_eq!(CdcDropped::from_batch(&batch).unwrap(), items);
        let wrong = KeySummary {
            algorithm: "a".into(),
            count: 1,
            hash: "h".into(),
        }
        .to_batch()
        .unwrap();
        let error = CdcDropped::from_batch(&wrong).unwrap_err();
        assert!(error.contains("text field `object`"), "{error}");
    }

    #[test]
    fn every_logical_type_round_trips_through_arrow() {
        let all = [
            DataType::Boolean,
            DataType::Int32,
            DataType::Int64,
            DataType::Float32,
            DataType::Float64,
            DataType::Decimal {
                precision: 20,
                scale: 4,
            },
            DataType::Text,
            DataType::Binary,
            DataType::Date,
            DataType::Time,
            DataType::Timestamp,
            DataType::TimestampTz,
            DataType::Uuid,
            DataType::Json,
        ];
        for t in all {
            let field = t.to_arrow_field("f", true);
            assert_eq!(DataType::from_arrow_field(&field), Some(t), "{t:?}");
        }
    }

    /// What `format_timestamp` wrote before it wrote digits itself (`format!` over the same
    /// calendar arithmetic): the ledger's source versions and checkpoints hold this text.
    fn timestamp_by_format(us: i64, utc: bool) -> String {
        // The calendar arithmetic did not change; the formatting did.
        fn date(days: i32) -> Option<String> {
            let (y, m, d) = civil_date(days);
            (-9999..=9999)
                .contains(&y)
                .then(|| format!("{y:04}-{m:02}-{d:02}"))
        }
        let days = us.div_euclid(86_400_000_000);
        let rest = us.rem_euclid(86_400_000_000);
        let secs = rest.div_euclid(1_000_000);
        let frac = rest.rem_euclid(1_000_000);
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        let time = if frac == 0 {
            format!("{h:02}:{m:02}:{s:02}")
        } else {
            format!("{h:02}:{m:02}:{s:02}.{frac:06}")
        };
        let date = date(days as i32).unwrap_or_else(|| format!("day {days}"));
        format!("{date}T{time}{}", if utc { "Z" } else { "" })
    }

    #[test]
    fn timestamps_format_as_they_always_did() {
        let day = 86_400_000_000i64;
        let mut values = vec![
            0,
            1,
            -1,
            999_999,
            1_000_000,
            day - 1,
            -day,
            1_735_689_600_000_000,
            1_735_689_600_123_456,
            253_402_300_799_999_999,
            -62_135_596_800_000_000,
            -62_167_219_200_000_001,
            -377_705_116_800_000_000,
            400_000_000_000_000_000,
            i64::MAX,
            i64::MIN,
        ];
        // A walk over four centuries in uneven steps, with and without fractions.
        let mut us = -12_000_000_000_000_000i64;
        while us < 12_000_000_000_000_000 {
            values.push(us);
            us += 3_715_321_987_654_321 / 997;
        }
        for us in values {
            for utc in [true, false] {
                assert_eq!(
                    format_timestamp(us, utc),
                    timestamp_by_format(us, utc),
                    "{us} µs"
                );
            }
        }
    }

    #[test]
    fn values_format_exactly() {
        assert_eq!(format_decimal(-12345, 2), "-123.45");
        assert_eq!(format_decimal(5, 3), "0.005");
        assert_eq!(format_decimal(7, -2), "700");
        assert_eq!(chrono_date(0).unwrap(), "1970-01-01");
        assert_eq!(chrono_date(19_723).unwrap(), "2024-01-01");
        assert_eq!(
            format_timestamp(1_500_000, true),
            "1970-01-01T00:00:01.500000Z"
        );
        assert_eq!(hex(&[0, 255]), "\\x00ff");
    }

    #[test]
    fn key_summaries_survive_the_data_plane() {
        let summary = KeySummary {
            algorithm: "test-v1".into(),
            count: 3,
            hash: "12345".into(),
        };
        let batch = summary.to_batch().unwrap();
        assert_eq!(KeySummary::from_batch(&batch).unwrap(), summary);
        let err = KeySummary::from_batch(&batch.slice(0, 0)).unwrap_err();
        assert!(err.contains("one row"), "{err}");
    }

    #[test]
    fn range_summaries_and_entries_round_trip_through_their_batches() {
        let summaries = vec![
            RangeSummary {
                algorithm: "a-v1".into(),
                range: 3,
                count: 2,
                hash: "123".into(),
                newest: Some("2026-01-01".into()),
            },
            RangeSummary {
                algorithm: "a-v1".into(),
                range: 7,
                count: 1,
                hash: "9".into(),
                newest: None,
            },
        ];
        let batch = RangeSummary::to_batch(&summaries).unwrap();
        assert_eq!(RangeSummary::from_batch(&batch).unwrap(), summaries);
        let entries = vec![
            RangeEntry {
                key: vec![Some("1".into()), None],
                hash: "-5".into(),
            },
            RangeEntry {
                key: vec![Some("2".into()), Some(String::new())],
                hash: "6".into(),
            },
        ];
        let batch = RangeEntry::to_batch(&entries, 2).unwrap();
        assert_eq!(RangeEntry::from_batch(&batch, 2).unwrap(), entries);
        let err = RangeEntry::from_batch(&batch, 3).unwrap_err();
        assert!(err.contains("key_2"), "{err}");
        let err = RangeSummary::from_batch(&batch).unwrap_err();
        assert!(err.contains("algorithm"), "{err}");
    }
}
