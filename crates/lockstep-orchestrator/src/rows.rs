//! Reading things out of Arrow rows: a row as JSON, a rejected record with its source row,
//! key columns, tombstone marks, cursor values, and the keys of rows the mapping rejected.
//!
//! Invariants:
//! - Pure: no I/O, no plugins, no state store.
//! - Work is per batch or per column; nothing here copies a batch.

use std::collections::HashMap;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::DataType as ArrowType;
use lockstep_core::protocol::arrow_types::json_value;
use lockstep_core::protocol::DataType;
use lockstep_core::record_keys;
use lockstep_mapping::{Mapper, RowRejection};
use lockstep_state::RejectedRecord;
use serde_json::Value;

use crate::error::EngineError;

/// One row of a batch as a JSON object.
pub(crate) fn row_json(batch: &RecordBatch, row: usize) -> serde_json::Map<String, Value> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                f.name().clone(),
                json_value(batch.column(i), row, DataType::from_arrow_field(f)),
            )
        })
        .collect()
}

/// A rejected record with the source row as read.
pub(crate) fn rejection(
    sync: &str,
    run: i64,
    key: Option<String>,
    field: Option<String>,
    reason: &str,
    batch: &RecordBatch,
    row: usize,
) -> RejectedRecord {
    RejectedRecord {
        id: 0,
        sync: sync.to_owned(),
        run,
        key,
        field,
        reason: reason.to_owned(),
        raw: Value::Object(row_json(batch, row)),
        created_at: None,
        retried: None,
    }
}

/// The column indices of `key` in `batch`.
pub(crate) fn key_indices(batch: &RecordBatch, key: &[String]) -> Result<Vec<usize>, EngineError> {
    key.iter()
        .map(|k| {
            batch.schema().index_of(k).map_err(|_| {
                EngineError::Internal(format!("key field `{k}` is missing from a mapped batch"))
            })
        })
        .collect()
}

/// Whether each source row is marked deleted by the tombstone field: a value that is
/// neither null nor false (nor 0, nor an empty string).
pub(crate) fn tombstoned(batch: &RecordBatch, field: &str) -> Option<Vec<bool>> {
    let column = batch.column(batch.schema().index_of(field).ok()?);
    let rows = batch.num_rows();
    Some(match column.data_type() {
        ArrowType::Boolean => {
            let a = column.as_boolean();
            (0..rows).map(|r| a.is_valid(r) && a.value(r)).collect()
        }
        ArrowType::Utf8 => {
            let a = column.as_string::<i32>();
            (0..rows)
                .map(|r| a.is_valid(r) && !matches!(a.value(r), "" | "0" | "false" | "f"))
                .collect()
        }
        ArrowType::Int32 | ArrowType::Int64 => {
            let values = arrow::compute::cast(column, &ArrowType::Int64).ok()?;
            let a = values.as_primitive::<arrow::datatypes::Int64Type>();
            (0..rows)
                .map(|r| a.is_valid(r) && a.value(r) != 0)
                .collect()
        }
        _ => (0..rows).map(|r| column.is_valid(r)).collect(),
    })
}

/// The tombstone mark of each mapped row, from the marks of the source rows.
pub(crate) fn mapped_marks(marks: &[bool], source_rows: &[usize]) -> Vec<bool> {
    source_rows
        .iter()
        .map(|&r| marks.get(r).copied().unwrap_or(false))
        .collect()
}

/// The cursor value of each mapped row as text, for the ledger's source version.
pub(crate) fn cursor_versions(
    cursor: Option<&String>,
    batch: &RecordBatch,
    cursor_type: Option<DataType>,
    source_rows: &[usize],
) -> Option<Vec<Option<String>>> {
    let column = batch.column(batch.schema().index_of(cursor?).ok()?);
    Some(
        source_rows
            .iter()
            .map(|&row| match json_value(column, row, cursor_type) {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
    )
}

/// The match key of each source row the mapping rejected, where the key fields themselves
/// map (the failure is in another field): so that a later run that writes that key resolves
/// the reject. Rows whose key cannot be computed are absent.
pub(crate) fn mapping_reject_keys(
    mapper: &Mapper,
    batch: &RecordBatch,
    rejected: &[RowRejection],
) -> HashMap<usize, String> {
    if rejected.is_empty() {
        return HashMap::new();
    }
    let rows: Vec<u32> = rejected
        .iter()
        .filter_map(|r| u32::try_from(r.row).ok())
        .collect();
    let keys = (|| {
        let indices = arrow::array::UInt32Array::from(rows.clone());
        let columns = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let subset = RecordBatch::try_new(batch.schema(), columns).ok()?;
        let mapped = mapper.key_mapper().map(&subset).ok()?;
        let keys = record_keys(&mapped.batch, mapper.key()).ok()?;
        Some((mapped.source_rows, keys))
    })();
    let Some((source_rows, keys)) = keys else {
        return HashMap::new();
    };
    source_rows
        .into_iter()
        .zip(keys)
        .filter_map(|(i, key)| Some((*rows.get(i)? as usize, key)))
        .collect()
}
