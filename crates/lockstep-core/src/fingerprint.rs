//! Record keys and fingerprints over Arrow batches.
//!
//! A record key is the canonical JSON text of the key fields' values (`[42]`,
//! `["a@example.com","eu"]`): readable in the state store and in messages, equal for equal
//! values. A fingerprint is a 128-bit XXH3 hash of a canonical encoding of every value of a
//! record, so the engine can tell `unchanged` from `updated` without keeping the values.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType as ArrowType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type,
    Int32Type, Int64Type, Int8Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
    UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use lockstep_protocol::arrow_types::json_value;
use lockstep_protocol::DataType;
use xxhash_rust::xxh3::xxh3_128;

/// A column a fingerprint or key cannot be computed over.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum FingerprintError {
    #[error("key field `{0}` is not in the record; check the sync's `key` and field mapping")]
    MissingKeyField(String),
    #[error("key field `{field}` is null in row {row}; every record needs a key value")]
    NullKey { field: String, row: usize },
    #[error("field `{field}` has Arrow type {arrow_type}, which cannot be fingerprinted")]
    UnsupportedType { field: String, arrow_type: String },
    #[error("the key of row {row} cannot be written as JSON: {detail}")]
    KeyEncoding { row: usize, detail: String },
}

/// The canonical key text of each row, from the columns named in `key`.
pub fn record_keys(batch: &RecordBatch, key: &[String]) -> Result<Vec<String>, FingerprintError> {
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(key.len());
    for name in key {
        let index = schema
            .index_of(name)
            .map_err(|_| FingerprintError::MissingKeyField(name.clone()))?;
        let logical = DataType::from_arrow_field(schema.field(index));
        columns.push((name, batch.column(index), logical));
    }
    let mut keys = Vec::with_capacity(batch.num_rows());
    let mut values = Vec::with_capacity(key.len());
    // Each key is written into this reused buffer, then copied into a string of its exact
    // length: `serde_json::to_string` would give every key 128 bytes of capacity, which a
    // batch's keys keep (1.3 MB at 10,000 rows) until its commit.
    let mut text = Vec::new();
    for row in 0..batch.num_rows() {
        values.clear();
        for (name, column, logical) in &columns {
            if column.is_null(row) {
                return Err(FingerprintError::NullKey {
                    field: (*name).clone(),
                    row,
                });
            }
            values.push(json_value(column, row, *logical));
        }
        // A slice of values serialises as the JSON array `Value::Array` would, without a copy.
        let encoding = |detail: String| FingerprintError::KeyEncoding { row, detail };
        text.clear();
        serde_json::to_writer(&mut text, &values).map_err(|e| encoding(e.to_string()))?;
        let key = std::str::from_utf8(&text).map_err(|e| encoding(e.to_string()))?;
        keys.push(key.to_owned());
    }
    Ok(keys)
}

/// The fingerprint of each row over every column, in column order.
///
/// Each row's canonical encoding (per column: the field name's length and bytes, then the
/// value's encoding) is written into one reused buffer and hashed in one call. XXH3 of a
/// byte string does not depend on how it was fed, so this equals the stateful hasher per row
/// that earlier versions kept (ledgers written by them stay valid); it avoids that hasher's
/// 600 bytes a row, which at 10,000 rows a batch made a 6 MB vector of fresh pages per batch.
pub fn fingerprints(batch: &RecordBatch) -> Result<Vec<u128>, FingerprintError> {
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (index, column) in batch.columns().iter().enumerate() {
        let field = schema.field(index);
        // The field name takes part so that moving a value to another field is a change.
        let mut prefix = (field.name().len() as u32).to_le_bytes().to_vec();
        prefix.extend_from_slice(field.name().as_bytes());
        let encoder = cell_encoder(column).ok_or_else(|| FingerprintError::UnsupportedType {
            field: field.name().clone(),
            arrow_type: field.data_type().to_string(),
        })?;
        columns.push((prefix, encoder));
    }
    let mut row_bytes = Vec::new();
    let hashes = (0..batch.num_rows())
        .map(|row| {
            row_bytes.clear();
            for (prefix, encoder) in &columns {
                row_bytes.extend_from_slice(prefix);
                encoder(row, &mut row_bytes);
            }
            xxh3_128(&row_bytes)
        })
        .collect();
    Ok(hashes)
}

/// Appends one cell's canonical encoding (given its row) to a row's bytes.
type CellEncoder<'a> = Box<dyn Fn(usize, &mut Vec<u8>) + 'a>;

/// The encoder of `column`'s cells: `0` for a null, otherwise `1` and the value (fixed-width
/// little-endian numbers; a length and the bytes for text and binary). `None` for a type
/// without a canonical encoding.
fn cell_encoder(column: &ArrayRef) -> Option<CellEncoder<'_>> {
    macro_rules! ints {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            Box::new(move |row, out: &mut Vec<u8>| {
                if a.is_null(row) {
                    out.push(0);
                } else {
                    out.push(1);
                    out.extend_from_slice(&(a.value(row) as i64).to_le_bytes());
                }
            })
        }};
    }
    macro_rules! floats {
        ($t:ty) => {{
            let a = column.as_primitive::<$t>();
            Box::new(move |row, out: &mut Vec<u8>| {
                if a.is_null(row) {
                    out.push(0);
                } else {
                    out.push(1);
                    out.extend_from_slice(&canonical_float(a.value(row) as f64).to_le_bytes());
                }
            })
        }};
    }
    macro_rules! bytes {
        ($a:expr) => {{
            let a = $a;
            Box::new(move |row, out: &mut Vec<u8>| {
                if a.is_null(row) {
                    out.push(0);
                } else {
                    let bytes: &[u8] = a.value(row).as_ref();
                    out.push(1);
                    out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                    out.extend_from_slice(bytes);
                }
            })
        }};
    }
    let encoder: CellEncoder<'_> = match column.data_type() {
        ArrowType::Null => Box::new(|_: usize, out: &mut Vec<u8>| out.push(0)),
        ArrowType::Boolean => {
            let a = column.as_boolean();
            Box::new(move |row, out: &mut Vec<u8>| {
                out.push(if a.is_null(row) {
                    0
                } else {
                    1 + a.value(row) as u8
                });
            })
        }
        ArrowType::Int8 => ints!(Int8Type),
        ArrowType::Int16 => ints!(Int16Type),
        ArrowType::Int32 => ints!(Int32Type),
        ArrowType::Int64 => ints!(Int64Type),
        ArrowType::UInt8 => ints!(UInt8Type),
        ArrowType::UInt16 => ints!(UInt16Type),
        ArrowType::UInt32 => ints!(UInt32Type),
        ArrowType::UInt64 => ints!(UInt64Type),
        ArrowType::Date32 => ints!(Date32Type),
        ArrowType::Time64(TimeUnit::Microsecond) => ints!(Time64MicrosecondType),
        ArrowType::Timestamp(TimeUnit::Microsecond, _) => ints!(TimestampMicrosecondType),
        ArrowType::Float32 => floats!(Float32Type),
        ArrowType::Float64 => floats!(Float64Type),
        ArrowType::Decimal128(_, scale) => {
            let a = column.as_primitive::<Decimal128Type>();
            let scale = *scale;
            Box::new(move |row, out: &mut Vec<u8>| {
                if a.is_null(row) {
                    out.push(0);
                } else {
                    out.push(1);
                    out.extend_from_slice(&a.value(row).to_le_bytes());
                    out.extend_from_slice(&scale.to_le_bytes());
                }
            })
        }
        ArrowType::Utf8 => bytes!(column.as_string::<i32>()),
        ArrowType::LargeUtf8 => bytes!(column.as_string::<i64>()),
        ArrowType::Binary => bytes!(column.as_binary::<i32>()),
        ArrowType::LargeBinary => bytes!(column.as_binary::<i64>()),
        _ => return None,
    };
    Some(encoder)
}

/// Float bits with -0.0 folded into 0.0 and every NaN into one NaN.
fn canonical_float(v: f64) -> u64 {
    if v == 0.0 {
        0f64.to_bits()
    } else if v.is_nan() {
        f64::NAN.to_bits()
    } else {
        v.to_bits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, Int32Array, Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn batch(ids: Vec<i64>, names: Vec<Option<&str>>) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("id", ArrowType::Int64, false),
                Field::new("name", ArrowType::Utf8, true),
            ])),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(names)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn equal_records_hash_equal_and_changes_show() {
        let a = fingerprints(&batch(vec![1, 2, 3], vec![Some("x"), None, Some("")])).unwrap();
        let b = fingerprints(&batch(vec![1, 2, 3], vec![Some("x"), None, Some("")])).unwrap();
        assert_eq!(a, b);
        // Null and empty string differ, and so does any changed value.
        assert_ne!(a[1], a[2]);
        let c = fingerprints(&batch(vec![1, 2, 3], vec![Some("y"), None, Some("")])).unwrap();
        assert_ne!(a[0], c[0]);
        assert_eq!(a[1..], c[1..]);
    }

    /// What versions before the one-call hash computed: one stateful hasher a row, fed
    /// column by column. The ledgers they wrote hold these values.
    fn streamed(batch: &RecordBatch) -> Vec<u128> {
        use xxhash_rust::xxh3::Xxh3;
        let mut hashers: Vec<Xxh3> = (0..batch.num_rows()).map(|_| Xxh3::new()).collect();
        for (index, column) in batch.columns().iter().enumerate() {
            let name = batch.schema().field(index).name().clone();
            let encoder = cell_encoder(column).unwrap();
            for (row, hasher) in hashers.iter_mut().enumerate() {
                hasher.update(&(name.len() as u32).to_le_bytes());
                hasher.update(name.as_bytes());
                // Fed in small pieces, as the column-wise code did.
                let mut cell = Vec::new();
                encoder(row, &mut cell);
                for piece in cell.chunks(3) {
                    hasher.update(piece);
                }
            }
        }
        hashers.iter().map(|h| h.digest128()).collect()
    }

    #[test]
    fn one_call_hashes_equal_the_streamed_ones() {
        const FORTY_TWO: &str = "cee1223a6ce72b7301de56dbb446eb62";
        use arrow::array::BooleanArray;
        let long = "x".repeat(1000);
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", ArrowType::Int64, false),
            Field::new("name", ArrowType::Utf8, true),
            Field::new("flag", ArrowType::Boolean, true),
            Field::new("score", ArrowType::Float64, true),
        ]));
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![
                    Some("a"),
                    None,
                    Some(long.as_str()),
                ])),
                Arc::new(BooleanArray::from(vec![Some(true), Some(false), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.0)])),
            ],
        )
        .unwrap();
        let one_call = fingerprints(&b).unwrap();
        assert_eq!(one_call, streamed(&b));
        // A fixed value, so that a change of the encoding cannot pass unnoticed: ledgers
        // written by earlier versions compare against it.
        let single = batch(vec![42], vec![Some("forty-two")]);
        assert_eq!(fingerprints(&single).unwrap(), streamed(&single));
        assert_eq!(
            format!("{:032x}", fingerprints(&single).unwrap()[0]),
            FORTY_TWO
        );
    }

    #[test]
    fn slicing_does_not_change_fingerprints() {
        let full = batch(vec![1, 2, 3], vec![Some("a"), Some("b"), Some("c")]);
        let whole = fingerprints(&full).unwrap();
        let sliced = fingerprints(&full.slice(1, 2)).unwrap();
        assert_eq!(&whole[1..], &sliced[..]);
    }

    #[test]
    fn floats_fold_negative_zero() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "f",
            ArrowType::Float64,
            false,
        )]));
        let b = RecordBatch::try_new(schema, vec![Arc::new(Float64Array::from(vec![0.0, -0.0]))])
            .unwrap();
        let f = fingerprints(&b).unwrap();
        assert_eq!(f[0], f[1]);
    }

    #[test]
    fn keys_are_canonical_json() {
        let b = batch(vec![7, 8], vec![Some("a\"b"), Some("c")]);
        let keys = record_keys(&b, &["id".into(), "name".into()]).unwrap();
        assert_eq!(keys, vec![r#"[7,"a\"b"]"#, r#"[8,"c"]"#]);
        assert_eq!(
            record_keys(&b, &["nope".into()]),
            Err(FingerprintError::MissingKeyField("nope".into()))
        );
        let nulls = batch(vec![1], vec![None]);
        assert!(matches!(
            record_keys(&nulls, &["name".into()]),
            Err(FingerprintError::NullKey { row: 0, .. })
        ));
        let schema = Arc::new(Schema::new(vec![Field::new("i", ArrowType::Int32, false)]));
        let ints = RecordBatch::try_new(schema, vec![Arc::new(Int32Array::from(vec![5]))]).unwrap();
        assert_eq!(record_keys(&ints, &["i".into()]).unwrap(), vec!["[5]"]);
    }
}
