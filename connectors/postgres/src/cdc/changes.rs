//! The changes of a cdc read between two batches: collected from decoded pgoutput messages,
//! one row per key (the last change of a key wins, so a batch applies in commit order), then
//! turned into an Arrow batch with the same decoding as every other read.
//!
//! When every column is read as itself (`ReadExpr::Plain`) and the server has pgoutput's
//! `binary` option (PostgreSQL 14 and later), the values arrive in their types' binary send
//! format, the very bytes a binary COPY of the table carries: the batch is a binary COPY
//! stream built here and read with the connector's COPY decoder, without a round trip to the
//! server (`Layout::binary`). Otherwise text values from the change log are cast back to
//! their column's type by PostgreSQL itself (`(value)::type`, the type's input function, the
//! inverse of the output function pgoutput used) and read with the same decoder. Either way
//! a record read from the change log is exactly the record a full read would give.
//!
//! Invariants:
//! - An unchanged TOASTed value (pgoutput leaves it out of an update unless it changed) is
//!   never written as NULL: it comes from the old tuple (`REPLICA IDENTITY FULL`), from an
//!   earlier change of the same key in the batch, or from the table; a row the table no
//!   longer has is left out (its delete follows later in the change log).
//! - Memory is bounded by the batch: one row per key, at most `batch_size` rows.

use std::collections::HashMap;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use lockstep_plugin_sdk::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use lockstep_plugin_sdk::arrow::datatypes::SchemaRef;
use lockstep_plugin_sdk::{ConnectorError, Result};
use lockstep_sql_kit::{Dialect, PostgresDialect};
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::pgoutput::{OldTuple, TupleValue};
use crate::catalog::{qualified, Column, ReadExpr, Wire};
use crate::copy_decode::CopyDecoder;
use crate::error::map_sqlx;

/// What an output column of a change holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Value,
    Null,
    /// An unchanged TOASTed value (or a generated column's) still to fill.
    Unchanged,
}

/// One record's latest change. Its values are kept in one buffer, not one allocation each:
/// a batch of 10,000 changes of a dozen columns held 6.6 MB as separate values (heaptrack),
/// most of it the allocator's per-allocation overhead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRow {
    pub deleted: bool,
    /// The values, one after another: the text output of their types, or with
    /// `Layout::binary` their binary send format.
    bytes: Vec<u8>,
    /// Per output column, where its value ends in `bytes` and what the column holds.
    slots: Vec<(u32, Slot)>,
}

impl ChangeRow {
    /// A row of `cells`, each a value (`None`: NULL) and whether it is unchanged. The buffer
    /// is sized once: grown value by value it would end up to twice the row's bytes.
    fn from_cells(deleted: bool, cells: &[(Option<&[u8]>, bool)]) -> Result<Self> {
        let bytes: usize = cells
            .iter()
            .filter(|(_, unchanged)| !unchanged)
            .map(|(value, _)| value.map_or(0, <[u8]>::len))
            .sum();
        let mut row = ChangeRow {
            deleted,
            bytes: Vec::with_capacity(bytes),
            slots: Vec::with_capacity(cells.len()),
        };
        for &(value, unchanged) in cells {
            let slot = match (value, unchanged) {
                (_, true) => Slot::Unchanged,
                (Some(v), false) => {
                    row.bytes.extend_from_slice(v);
                    Slot::Value
                }
                (None, false) => Slot::Null,
            };
            let end = u32::try_from(row.bytes.len()).map_err(|_| {
                ConnectorError::schema("a change of more than 4 GiB in the change log")
            })?;
            row.slots.push((end, slot));
        }
        Ok(row)
    }

    /// How many output columns the row has.
    pub fn width(&self) -> usize {
        self.slots.len()
    }

    /// Column `c`'s value; `None` for NULL and for an unchanged value.
    pub fn value(&self, c: usize) -> Option<&[u8]> {
        let (end, slot) = self.slots[c];
        if slot != Slot::Value {
            return None;
        }
        let start = if c == 0 { 0 } else { self.slots[c - 1].0 };
        Some(&self.bytes[start as usize..end as usize])
    }

    /// Whether column `c` is an unchanged value still to fill.
    pub fn unchanged(&self, c: usize) -> bool {
        self.slots[c].1 == Slot::Unchanged
    }

    /// Whether any column is still to fill.
    pub fn any_unchanged(&self) -> bool {
        self.slots.iter().any(|(_, s)| *s == Slot::Unchanged)
    }

    /// Fills the unchanged columns `known` has a value for (`Some(None)`: NULL).
    fn fill<'a>(&mut self, known: impl Fn(usize) -> Option<Option<&'a [u8]>>) -> Result<()> {
        if !self.any_unchanged() {
            return Ok(());
        }
        let filled = {
            let cells: Vec<(Option<&[u8]>, bool)> = (0..self.width())
                .map(|c| {
                    if self.unchanged(c) {
                        match known(c) {
                            Some(value) => (value, false),
                            None => (None, true),
                        }
                    } else {
                        (self.value(c), false)
                    }
                })
                .collect();
            ChangeRow::from_cells(self.deleted, &cells)?
        };
        *self = filled;
        Ok(())
    }

    /// What column `c` is known to hold: `None` when it is unchanged.
    fn known(&self, c: usize) -> Option<Option<&[u8]>> {
        (!self.unchanged(c)).then(|| self.value(c))
    }
}

/// The columns a cdc read returns, and where each is in the table's Relation message.
#[derive(Clone, Debug)]
pub struct Layout {
    pub schema_name: String,
    pub table: String,
    /// The output columns, in the batch's order.
    pub columns: Vec<Column>,
    /// The key columns' names.
    pub key: Vec<String>,
    /// The Arrow schema: the output columns (all nullable: a delete carries the key alone)
    /// and the deleted flag.
    pub schema: SchemaRef,
    /// The changes are read with pgoutput's `binary` option: values in binary format.
    pub binary: bool,
}

/// Where the layout's columns are in a Relation message's tuples.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    /// `None` for a generated column, which pgoutput does not send: read from the table.
    pub columns: Vec<Option<usize>>,
    pub key: Vec<usize>,
    /// The type OIDs of the key columns, for lookups with binary values.
    pub key_types: Vec<u32>,
}

/// The changes collected for the next batch.
#[derive(Default)]
pub struct ChangeBuffer {
    rows: Vec<ChangeRow>,
    by_key: HashMap<Vec<u8>, usize>,
}

fn value_of<'a>(
    value: Option<&'a TupleValue>,
    column: &str,
    binary: bool,
) -> Result<(Option<&'a [u8]>, bool)> {
    match value {
        None => Err(ConnectorError::schema(format!(
            "a change has no value for column `{column}`: the table's shape changed in the \
             middle of a transaction"
        ))),
        Some(TupleValue::Null) => Ok((None, false)),
        Some(TupleValue::UnchangedToast) => Ok((None, true)),
        Some(TupleValue::Text(t)) if !binary => Ok((Some(t.as_bytes()), false)),
        Some(TupleValue::Binary(b)) if binary => Ok((Some(b.as_slice()), false)),
        Some(TupleValue::Text(_)) => Err(ConnectorError::internal(format!(
            "column `{column}` arrived in text format, but the read asked for binary values \
             (its type has no binary send function?)"
        ))),
        Some(TupleValue::Binary(_)) => Err(ConnectorError::internal(format!(
            "column `{column}` arrived in binary format, but the read asked for text values"
        ))),
    }
}

/// The bytes of a key: each value with its length, so that no two keys share them.
fn key_bytes(values: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        match v {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&(t.len() as u64).to_le_bytes());
                out.extend_from_slice(t);
            }
            None => out.push(2),
        }
    }
    out
}

impl ChangeBuffer {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn take(&mut self) -> Vec<ChangeRow> {
        self.by_key.clear();
        std::mem::take(&mut self.rows)
    }

    fn key_of(
        layout: &Layout,
        pos: &Positions,
        tuple: &[TupleValue],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        pos.key
            .iter()
            .zip(&layout.key)
            .map(|(&i, name)| {
                value_of(tuple.get(i), name, layout.binary).map(|(v, _)| v.map(<[u8]>::to_vec))
            })
            .collect()
    }

    fn row_of(
        layout: &Layout,
        pos: &Positions,
        tuple: &[TupleValue],
        deleted: bool,
    ) -> Result<ChangeRow> {
        let cells = pos
            .columns
            .iter()
            .zip(&layout.columns)
            .map(|(&i, column)| match i {
                Some(i) => value_of(tuple.get(i), &column.name, layout.binary),
                // A generated column: its value comes from the table, like a TOASTed one.
                None => Ok((None, !deleted)),
            })
            .collect::<Result<Vec<_>>>()?;
        ChangeRow::from_cells(deleted, &cells)
    }

    fn push(&mut self, key: Vec<u8>, mut row: ChangeRow) -> Result<()> {
        match self.by_key.get(&key) {
            Some(&i) => {
                // An update after an upsert of the same key in this batch: its unchanged
                // TOASTed values are the earlier change's.
                let earlier = &self.rows[i];
                if !row.deleted && !earlier.deleted {
                    row.fill(|c| earlier.known(c))?;
                }
                self.rows[i] = row;
            }
            None => {
                self.by_key.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
        Ok(())
    }

    /// An Insert message.
    pub fn insert(&mut self, layout: &Layout, pos: &Positions, new: &[TupleValue]) -> Result<()> {
        let key = key_bytes(&Self::key_of(layout, pos, new)?);
        let row = Self::row_of(layout, pos, new, false)?;
        self.push(key, row)
    }

    /// An Update message: a key change is a delete of the old key and an upsert of the new.
    pub fn update(
        &mut self,
        layout: &Layout,
        pos: &Positions,
        old: Option<&OldTuple>,
        new: &[TupleValue],
    ) -> Result<()> {
        let new_key = Self::key_of(layout, pos, new)?;
        let mut row = Self::row_of(layout, pos, new, false)?;
        if let Some(old) = old {
            let old_key = Self::key_of(layout, pos, old.values())?;
            if let OldTuple::Full(values) = old {
                // REPLICA IDENTITY FULL: the old tuple has every value, TOASTed ones too.
                let before = Self::row_of(layout, pos, values, false)?;
                row.fill(|c| before.known(c))?;
            }
            if old_key != new_key {
                self.delete_key(layout, pos, old.values())?;
            }
        }
        self.push(key_bytes(&new_key), row)
    }

    /// A Delete message.
    pub fn delete(&mut self, layout: &Layout, pos: &Positions, old: &OldTuple) -> Result<()> {
        self.delete_key(layout, pos, old.values())
    }

    fn delete_key(&mut self, layout: &Layout, pos: &Positions, old: &[TupleValue]) -> Result<()> {
        let key = Self::key_of(layout, pos, old)?;
        let mut values: Vec<Option<&[u8]>> = vec![None; layout.columns.len()];
        for (name, value) in layout.key.iter().zip(&key) {
            if let Some(c) = layout.columns.iter().position(|c| &c.name == name) {
                values[c] = value.as_deref();
            }
        }
        let cells: Vec<(Option<&[u8]>, bool)> = values.into_iter().map(|v| (v, false)).collect();
        let row = ChangeRow::from_cells(true, &cells)?;
        self.push(key_bytes(&key), row)
    }
}

/// Fills the unchanged TOASTed values of `rows` from the table, by key; drops the rows the
/// table no longer has (their delete is later in the change log). Returns how many it
/// dropped. `key_types` are the key columns' type OIDs (for binary keys).
pub async fn fill_unchanged(
    conn: &mut PgConnection,
    layout: &Layout,
    key_types: &[u32],
    rows: &mut Vec<ChangeRow>,
) -> Result<usize> {
    let wanted: Vec<usize> = (0..rows.len())
        .filter(|&r| rows[r].any_unchanged())
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    let key_columns: Vec<usize> = layout
        .key
        .iter()
        .map(|k| {
            layout
                .columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| {
                    ConnectorError::schema(format!(
                        "key column `{k}` is not among the columns read; read it too"
                    ))
                })
        })
        .collect::<Result<_>>()?;
    let found = if layout.binary {
        lookup_binary(conn, layout, &key_columns, key_types, rows, &wanted).await?
    } else {
        lookup_text(conn, layout, &key_columns, rows, &wanted).await?
    };
    let mut present = vec![false; wanted.len()];
    for (slot, values) in found {
        present[slot] = true;
        rows[wanted[slot]].fill(|c| values.get(c).map(Option::as_deref))?;
    }
    let gone: Vec<usize> = wanted
        .iter()
        .zip(&present)
        .filter(|(_, p)| !**p)
        .map(|(r, _)| *r)
        .collect();
    for &r in gone.iter().rev() {
        rows.remove(r);
    }
    Ok(gone.len())
}

/// The row number (0-based, into `wanted`) a lookup's result row answers.
fn answered(n: i64, wanted: usize) -> Result<usize> {
    usize::try_from(n - 1)
        .ok()
        .filter(|i| *i < wanted)
        .ok_or_else(|| {
            ConnectorError::internal(format!(
                "the server answered row number {n} to a lookup of {wanted} keys"
            ))
        })
}

/// The table's values of the rows `wanted` of `rows`, by their text keys, as text.
async fn lookup_text(
    conn: &mut PgConnection,
    layout: &Layout,
    key_columns: &[usize],
    rows: &[ChangeRow],
    wanted: &[usize],
) -> Result<Vec<(usize, Vec<Option<Vec<u8>>>)>> {
    let keys: Vec<Value> = wanted
        .iter()
        .map(|&r| {
            Value::Array(
                key_columns
                    .iter()
                    .map(|&c| {
                        rows[r].value(c).map_or(Value::Null, |v| {
                            Value::String(String::from_utf8_lossy(v).into_owned())
                        })
                    })
                    .collect(),
            )
        })
        .collect();
    let q = |name: &str| PostgresDialect.quote_ident(name);
    let left: Vec<String> = key_columns
        .iter()
        .map(|&c| format!("t.{}", q(&layout.columns[c].name)))
        .collect();
    let right: Vec<String> = key_columns
        .iter()
        .enumerate()
        .map(|(i, &c)| format!("(r.e->>{i})::{}", layout.columns[c].cast_type))
        .collect();
    let values: Vec<String> = layout
        .columns
        .iter()
        .map(|c| format!("t.{}::text", q(&c.name)))
        .collect();
    let sql = format!(
        "SELECT r.n, {} FROM json_array_elements($1::json) WITH ORDINALITY AS r(e, n) \
         JOIN {} AS t ON ({}) = ({})",
        values.join(", "),
        qualified(&layout.schema_name, &layout.table),
        left.join(", "),
        right.join(", ")
    );
    let found = sqlx::query(&sql)
        .bind(Value::Array(keys).to_string())
        .fetch_all(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    found
        .iter()
        .map(|row| {
            let slot = answered(row.try_get(0).map_err(map_sqlx)?, wanted.len())?;
            let values = (0..layout.columns.len())
                .map(|c| {
                    row.try_get::<Option<String>, _>(c + 1)
                        .map(|v| v.map(String::into_bytes))
                        .map_err(map_sqlx)
                })
                .collect::<Result<_>>()?;
            Ok((slot, values))
        })
        .collect()
}

/// A parameter of a given type, sent in its binary format as pgoutput gave it.
struct RawParam<'a> {
    oid: u32,
    bytes: Option<&'a [u8]>,
}

impl sqlx::Type<sqlx::Postgres> for RawParam<'_> {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        sqlx::postgres::PgTypeInfo::with_oid(sqlx::postgres::types::Oid(0))
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for RawParam<'_> {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> std::result::Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        match self.bytes {
            Some(bytes) => {
                buf.extend_from_slice(bytes);
                Ok(sqlx::encode::IsNull::No)
            }
            None => Ok(sqlx::encode::IsNull::Yes),
        }
    }

    fn produces(&self) -> Option<sqlx::postgres::PgTypeInfo> {
        Some(sqlx::postgres::PgTypeInfo::with_oid(
            sqlx::postgres::types::Oid(self.oid),
        ))
    }
}

/// How many keys one binary lookup carries (each key column is a parameter).
const LOOKUP_KEYS: usize = 1_000;

/// The table's values of the rows `wanted` of `rows`, by their binary keys (bound as
/// parameters of the key columns' types), in binary format.
async fn lookup_binary(
    conn: &mut PgConnection,
    layout: &Layout,
    key_columns: &[usize],
    key_types: &[u32],
    rows: &[ChangeRow],
    wanted: &[usize],
) -> Result<Vec<(usize, Vec<Option<Vec<u8>>>)>> {
    if key_types.len() != key_columns.len() {
        return Err(ConnectorError::internal(format!(
            "{} key types for {} key columns",
            key_types.len(),
            key_columns.len()
        )));
    }
    let q = |name: &str| PostgresDialect.quote_ident(name);
    let names: Vec<String> = (0..key_columns.len()).map(|i| format!("k{i}")).collect();
    let left: Vec<String> = key_columns
        .iter()
        .map(|&c| format!("t.{}", q(&layout.columns[c].name)))
        .collect();
    let right: Vec<String> = names.iter().map(|n| format!("r.{n}")).collect();
    let values: Vec<String> = layout
        .columns
        .iter()
        .map(|c| format!("t.{}", q(&c.name)))
        .collect();
    let width = key_columns.len() + 1;
    let mut out = Vec::with_capacity(wanted.len());
    for (chunk_no, chunk) in wanted.chunks(LOOKUP_KEYS).enumerate() {
        let tuples: Vec<String> = (0..chunk.len())
            .map(|i| {
                let params: Vec<String> = (0..width)
                    .map(|p| {
                        let n = i * width + p + 1;
                        if p == 0 {
                            format!("${n}::int8")
                        } else {
                            format!("${n}")
                        }
                    })
                    .collect();
                format!("({})", params.join(", "))
            })
            .collect();
        let sql = format!(
            "SELECT r.n, {} FROM (VALUES {}) AS r(n, {}) JOIN {} AS t ON ({}) = ({})",
            values.join(", "),
            tuples.join(", "),
            names.join(", "),
            qualified(&layout.schema_name, &layout.table),
            left.join(", "),
            right.join(", ")
        );
        let mut query = sqlx::query(&sql).persistent(false);
        for (i, &r) in chunk.iter().enumerate() {
            query = query.bind((chunk_no * LOOKUP_KEYS + i + 1) as i64);
            for (&c, &oid) in key_columns.iter().zip(key_types) {
                query = query.bind(RawParam {
                    oid,
                    bytes: rows[r].value(c),
                });
            }
        }
        let found = query.fetch_all(&mut *conn).await.map_err(map_sqlx)?;
        for row in &found {
            let slot = answered(row.try_get(0).map_err(map_sqlx)?, wanted.len())?;
            let mut values = Vec::with_capacity(layout.columns.len());
            for c in 0..layout.columns.len() {
                let raw = row.try_get_raw(c + 1).map_err(map_sqlx)?;
                values.push(if sqlx::ValueRef::is_null(&raw) {
                    None
                } else {
                    Some(
                        raw.as_bytes()
                            .map_err(|e| {
                                ConnectorError::internal(format!(
                                    "column `{}` of a lookup: {e}",
                                    layout.columns[c].name
                                ))
                            })?
                            .to_vec(),
                    )
                });
            }
            out.push((slot, values));
        }
    }
    Ok(out)
}

/// The select-list expression reading the `i`-th value of a change as column `c` would read.
fn cast_expr(c: &Column, i: usize) -> String {
    let inner = format!("((r.e->>{i})::{})", c.cast_type);
    match c.expr {
        ReadExpr::Plain => inner,
        ReadExpr::Text => format!("{inner}::text"),
        ReadExpr::Json => format!("to_json({inner})::text"),
    }
}

/// The rows as an Arrow batch of `layout.schema`. The rows are consumed as they are
/// decoded, so a batch is not held twice over (as changes and as columns) any longer than
/// it takes to decode it.
pub async fn to_batch(
    conn: &mut PgConnection,
    layout: &Layout,
    rows: Vec<ChangeRow>,
) -> Result<RecordBatch> {
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(layout.schema.clone()));
    }
    let wires: Vec<(String, Wire)> = layout
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.wire))
        .collect();
    let count = rows.len();
    let deleted = BooleanArray::from(rows.iter().map(|r| r.deleted).collect::<Vec<bool>>());
    // Each variable-width column starts with room for its own values, not the batch's.
    let mut value_bytes = vec![0usize; layout.columns.len()];
    for row in &rows {
        for (c, total) in value_bytes.iter_mut().enumerate().take(row.width()) {
            *total += row.value(c).map_or(0, <[u8]>::len);
        }
    }
    let decoder = if layout.binary {
        binary_copy(layout, &wires, rows, &value_bytes)?
    } else {
        let data = text_values(&rows);
        drop(rows);
        cast_on_server(conn, layout, &wires, data, count, &value_bytes).await?
    };
    if decoder.rows() != count {
        return Err(ConnectorError::internal(format!(
            "decoding {count} changes gave {} rows",
            decoder.rows()
        )));
    }
    let mut columns: Vec<ArrayRef> = decoder
        .finish()
        .map_err(|e| ConnectorError::internal(e.to_string()))?;
    columns.push(Arc::new(deleted));
    RecordBatch::try_new(layout.schema.clone(), columns)
        .map_err(|e| ConnectorError::schema(e.to_string()))
}

/// How many bytes of the binary COPY stream [`binary_copy`] builds before decoding them.
const COPY_CHUNK_BYTES: usize = 64 * 1024;

/// Binary values: the binary COPY stream a COPY of the rows would send, decoded here a
/// chunk at a time while the rows are consumed.
fn binary_copy(
    layout: &Layout,
    wires: &[(String, Wire)],
    rows: Vec<ChangeRow>,
    value_bytes: &[usize],
) -> Result<CopyDecoder> {
    let count = i16::try_from(layout.columns.len()).map_err(|_| {
        ConnectorError::schema(format!(
            "table `{}` has more columns than a COPY row holds",
            layout.table
        ))
    })?;
    let mut decoder = CopyDecoder::with_value_bytes(wires, rows.len(), 0, value_bytes);
    let feed = |decoder: &mut CopyDecoder, data: &mut Vec<u8>| -> Result<()> {
        decoder
            .feed(data)
            .map_err(|e| ConnectorError::schema(e.to_string()))?;
        data.clear();
        Ok(())
    };
    let mut data = Vec::with_capacity(COPY_CHUNK_BYTES * 2);
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.extend_from_slice(&0i32.to_be_bytes());
    data.extend_from_slice(&0i32.to_be_bytes());
    for row in rows {
        data.extend_from_slice(&count.to_be_bytes());
        for c in 0..row.width() {
            match row.value(c) {
                None => data.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    let len = i32::try_from(v.len()).map_err(|_| {
                        ConnectorError::schema("a value of more than 2 GiB in the change log")
                    })?;
                    data.extend_from_slice(&len.to_be_bytes());
                    data.extend_from_slice(v);
                }
            }
        }
        if data.len() >= COPY_CHUNK_BYTES {
            feed(&mut decoder, &mut data)?;
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    feed(&mut decoder, &mut data)?;
    Ok(decoder)
}

/// The rows' values as one JSON array of arrays of texts (or nulls), for [`cast_on_server`].
fn text_values(rows: &[ChangeRow]) -> String {
    Value::Array(
        rows.iter()
            .map(|r| {
                Value::Array(
                    (0..r.width())
                        .map(|c| {
                            r.value(c).map_or(Value::Null, |v| {
                                Value::String(String::from_utf8_lossy(v).into_owned())
                            })
                        })
                        .collect(),
                )
            })
            .collect(),
    )
    .to_string()
}

/// Text values: cast to their columns' types by the server, read back as binary COPY.
async fn cast_on_server(
    conn: &mut PgConnection,
    layout: &Layout,
    wires: &[(String, Wire)],
    data: String,
    rows: usize,
    value_bytes: &[usize],
) -> Result<CopyDecoder> {
    sqlx::query("SELECT set_config('lockstep.cdc', $1, false)")
        .bind(&data)
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let exprs: Vec<String> = layout
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| cast_expr(c, i))
        .collect();
    let sql = format!(
        "COPY (SELECT {} FROM json_array_elements(current_setting('lockstep.cdc')::json) \
         WITH ORDINALITY AS r(e, n) ORDER BY r.n) TO STDOUT (FORMAT binary)",
        exprs.join(", ")
    );
    drop(data);
    let mut decoder = CopyDecoder::with_value_bytes(wires, rows, 0, value_bytes);
    {
        let mut stream = conn.copy_out_raw(&sql).await.map_err(map_sqlx)?;
        while let Some(chunk) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            let chunk = chunk.map_err(map_sqlx)?;
            decoder
                .feed(&chunk)
                .map_err(|e| ConnectorError::schema(e.to_string()))?;
        }
    }
    // Free the setting's memory on the server.
    sqlx::query("SELECT set_config('lockstep.cdc', '', false)")
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    Ok(decoder)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::DataType;

    fn layout() -> Layout {
        let column = |name: &str| Column {
            name: name.into(),
            native: "text".into(),
            cast_type: "\"pg_catalog\".\"text\"".into(),
            base: "text".into(),
            base_type: "text".into(),
            is_enum: false,
            is_array: false,
            typmod: -1,
            not_null: false,
            generated: false,
            logical: DataType::Text,
            wire: Wire::Text,
            expr: ReadExpr::Plain,
        };
        Layout {
            schema_name: "public".into(),
            table: "t".into(),
            columns: vec![column("id"), column("bio")],
            key: vec!["id".into()],
            schema: Arc::new(lockstep_plugin_sdk::arrow::datatypes::Schema::empty()),
            binary: false,
        }
    }

    fn t(s: &str) -> TupleValue {
        TupleValue::Text(s.into())
    }

    #[test]
    fn the_last_change_of_a_key_wins_and_keeps_unchanged_toast_values() {
        let layout = layout();
        let pos = Positions {
            columns: vec![Some(0), Some(1)],
            key: vec![0],
            key_types: vec![25],
        };
        let mut buffer = ChangeBuffer::default();
        buffer.insert(&layout, &pos, &[t("1"), t("long")]).unwrap();
        buffer
            .update(&layout, &pos, None, &[t("1"), TupleValue::UnchangedToast])
            .unwrap();
        buffer.insert(&layout, &pos, &[t("2"), t("x")]).unwrap();
        buffer
            .delete(
                &layout,
                &pos,
                &OldTuple::Key(vec![t("2"), TupleValue::Null]),
            )
            .unwrap();
        // A key change: the old key is deleted.
        buffer
            .update(
                &layout,
                &pos,
                Some(&OldTuple::Key(vec![t("3"), TupleValue::Null])),
                &[t("4"), TupleValue::UnchangedToast],
            )
            .unwrap();
        let rows = buffer.take();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].value(0), Some(&b"1"[..]));
        assert_eq!(rows[0].value(1), Some(&b"long"[..]));
        assert!(!rows[0].unchanged(0) && !rows[0].unchanged(1));
        assert!(rows[1].deleted);
        assert_eq!(rows[2].value(0), Some(&b"3"[..]));
        assert_eq!(rows[2].value(1), None, "a delete carries the key alone");
        assert!(rows[2].deleted);
        assert_eq!(rows[3].value(0), Some(&b"4"[..]));
        assert!(rows[3].unchanged(1), "left for the table lookup");
        assert_eq!(rows[3].value(1), None);
        // REPLICA IDENTITY FULL fills from the old tuple.
        buffer
            .update(
                &layout,
                &pos,
                Some(&OldTuple::Full(vec![t("5"), t("old")])),
                &[t("5"), TupleValue::UnchangedToast],
            )
            .unwrap();
        assert_eq!(buffer.take()[0].value(1), Some(&b"old"[..]));
    }
}
