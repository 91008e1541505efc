//! The changes of a cdc read between two batches: collected from decoded pgoutput messages,
//! one row per key (the last change of a key wins, so a batch applies in commit order), then
//! turned into an Arrow batch with the same decoding as every other read.
//!
//! Text values from the change log are cast back to their column's type by PostgreSQL itself
//! (`(value)::type`, the type's input function, the inverse of the output function pgoutput
//! used) and read with the connector's binary COPY decoder, so a record read from the change
//! log is exactly the record a full read would give.
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

/// One record's latest change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangeRow {
    pub deleted: bool,
    /// Per output column, its value as text (`None`: NULL).
    pub values: Vec<Option<String>>,
    /// Per output column, whether the value is an unchanged TOASTed one still to fill.
    pub unchanged: Vec<bool>,
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
}

/// Where the layout's columns are in a Relation message's tuples.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    /// `None` for a generated column, which pgoutput does not send: read from the table.
    pub columns: Vec<Option<usize>>,
    pub key: Vec<usize>,
}

/// The changes collected for the next batch.
#[derive(Default)]
pub struct ChangeBuffer {
    rows: Vec<ChangeRow>,
    by_key: HashMap<String, usize>,
}

fn value_text(value: Option<&TupleValue>, column: &str) -> Result<(Option<String>, bool)> {
    match value {
        None => Err(ConnectorError::schema(format!(
            "a change has no value for column `{column}`: the table's shape changed in the \
             middle of a transaction"
        ))),
        Some(TupleValue::Null) => Ok((None, false)),
        Some(TupleValue::UnchangedToast) => Ok((None, true)),
        Some(TupleValue::Text(t)) => Ok((Some(t.clone()), false)),
        Some(TupleValue::Binary(_)) => Err(ConnectorError::internal(format!(
            "column `{column}` arrived in binary format, which a cdc read never asks for"
        ))),
    }
}

/// The text of a key: its values joined by a separator no text value holds.
fn key_text(values: &[Option<String>]) -> String {
    let mut out = String::new();
    for v in values {
        match v {
            Some(t) => {
                out.push('\u{1}');
                out.push_str(t);
            }
            None => out.push('\u{2}'),
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
    ) -> Result<Vec<Option<String>>> {
        pos.key
            .iter()
            .zip(&layout.key)
            .map(|(&i, name)| value_text(tuple.get(i), name).map(|(v, _)| v))
            .collect()
    }

    fn row_of(
        layout: &Layout,
        pos: &Positions,
        tuple: &[TupleValue],
        deleted: bool,
    ) -> Result<ChangeRow> {
        let mut values = Vec::with_capacity(pos.columns.len());
        let mut unchanged = Vec::with_capacity(pos.columns.len());
        for (&i, column) in pos.columns.iter().zip(&layout.columns) {
            let (v, u) = match i {
                Some(i) => value_text(tuple.get(i), &column.name)?,
                // A generated column: its value comes from the table, like a TOASTed one.
                None => (None, !deleted),
            };
            values.push(v);
            unchanged.push(u);
        }
        Ok(ChangeRow {
            deleted,
            values,
            unchanged,
        })
    }

    fn push(&mut self, key: String, mut row: ChangeRow) {
        match self.by_key.get(&key) {
            Some(&i) => {
                // An update after an upsert of the same key in this batch: its unchanged
                // TOASTed values are the earlier change's.
                let earlier = &self.rows[i];
                if !row.deleted && !earlier.deleted {
                    for c in 0..row.values.len() {
                        if row.unchanged[c] {
                            row.values[c] = earlier.values[c].clone();
                            row.unchanged[c] = earlier.unchanged[c];
                        }
                    }
                }
                self.rows[i] = row;
            }
            None => {
                self.by_key.insert(key, self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// An Insert message.
    pub fn insert(&mut self, layout: &Layout, pos: &Positions, new: &[TupleValue]) -> Result<()> {
        let key = key_text(&Self::key_of(layout, pos, new)?);
        let row = Self::row_of(layout, pos, new, false)?;
        self.push(key, row);
        Ok(())
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
                for c in 0..row.values.len() {
                    if row.unchanged[c] && !before.unchanged[c] {
                        row.values[c] = before.values[c].clone();
                        row.unchanged[c] = false;
                    }
                }
            }
            if old_key != new_key {
                self.delete_key(layout, pos, old.values())?;
            }
        }
        self.push(key_text(&new_key), row);
        Ok(())
    }

    /// A Delete message.
    pub fn delete(&mut self, layout: &Layout, pos: &Positions, old: &OldTuple) -> Result<()> {
        self.delete_key(layout, pos, old.values())
    }

    fn delete_key(&mut self, layout: &Layout, pos: &Positions, old: &[TupleValue]) -> Result<()> {
        let key = Self::key_of(layout, pos, old)?;
        let mut values = vec![None; layout.columns.len()];
        for (name, value) in layout.key.iter().zip(&key) {
            if let Some(c) = layout.columns.iter().position(|c| &c.name == name) {
                values[c] = value.clone();
            }
        }
        let row = ChangeRow {
            deleted: true,
            unchanged: vec![false; values.len()],
            values,
        };
        self.push(key_text(&key), row);
        Ok(())
    }
}

/// Fills the unchanged TOASTed values of `rows` from the table, by key; drops the rows the
/// table no longer has (their delete is later in the change log). Returns how many it
/// dropped.
pub async fn fill_unchanged(
    conn: &mut PgConnection,
    layout: &Layout,
    rows: &mut Vec<ChangeRow>,
) -> Result<usize> {
    let wanted: Vec<usize> = (0..rows.len())
        .filter(|&r| rows[r].unchanged.iter().any(|u| *u))
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
    let keys: Vec<Value> = wanted
        .iter()
        .map(|&r| {
            Value::Array(
                key_columns
                    .iter()
                    .map(|&c| rows[r].values[c].clone().map_or(Value::Null, Value::String))
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
    let mut present = vec![false; wanted.len()];
    for row in found {
        let n: i64 = row.try_get(0).map_err(map_sqlx)?;
        let Some(slot) = usize::try_from(n - 1).ok().filter(|i| *i < wanted.len()) else {
            return Err(ConnectorError::internal(format!(
                "the server answered row number {n} to a lookup of {} keys",
                wanted.len()
            )));
        };
        present[slot] = true;
        let target = &mut rows[wanted[slot]];
        for c in 0..target.values.len() {
            if target.unchanged[c] {
                target.values[c] = row.try_get(c + 1).map_err(map_sqlx)?;
                target.unchanged[c] = false;
            }
        }
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

/// The select-list expression reading the `i`-th value of a change as column `c` would read.
fn cast_expr(c: &Column, i: usize) -> String {
    let inner = format!("((r.e->>{i})::{})", c.cast_type);
    match c.expr {
        ReadExpr::Plain => inner,
        ReadExpr::Text => format!("{inner}::text"),
        ReadExpr::Json => format!("to_json({inner})::text"),
    }
}

/// The rows as an Arrow batch of `layout.schema`.
pub async fn to_batch(
    conn: &mut PgConnection,
    layout: &Layout,
    rows: &[ChangeRow],
) -> Result<RecordBatch> {
    if rows.is_empty() {
        return Ok(RecordBatch::new_empty(layout.schema.clone()));
    }
    let data = Value::Array(
        rows.iter()
            .map(|r| {
                Value::Array(
                    r.values
                        .iter()
                        .map(|v| v.clone().map_or(Value::Null, Value::String))
                        .collect(),
                )
            })
            .collect(),
    )
    .to_string();
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
    let wires: Vec<(String, Wire)> = layout
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.wire))
        .collect();
    let mut decoder = CopyDecoder::new(&wires, rows.len(), data.len());
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
    if decoder.rows() != rows.len() {
        return Err(ConnectorError::internal(format!(
            "decoding {} changes gave {} rows",
            rows.len(),
            decoder.rows()
        )));
    }
    let mut columns: Vec<ArrayRef> = decoder
        .finish()
        .map_err(|e| ConnectorError::internal(e.to_string()))?;
    columns.push(Arc::new(BooleanArray::from(
        rows.iter().map(|r| r.deleted).collect::<Vec<bool>>(),
    )));
    RecordBatch::try_new(layout.schema.clone(), columns)
        .map_err(|e| ConnectorError::schema(e.to_string()))
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
        assert_eq!(rows[0].values, vec![Some("1".into()), Some("long".into())]);
        assert_eq!(rows[0].unchanged, vec![false, false]);
        assert!(rows[1].deleted);
        assert_eq!(rows[2].values[0].as_deref(), Some("3"));
        assert!(rows[2].deleted);
        assert_eq!(rows[3].values[0].as_deref(), Some("4"));
        assert!(rows[3].unchanged[1], "left for the table lookup");
        // REPLICA IDENTITY FULL fills from the old tuple.
        buffer
            .update(
                &layout,
                &pos,
                Some(&OldTuple::Full(vec![t("5"), t("old")])),
                &[t("5"), TupleValue::UnchangedToast],
            )
            .unwrap();
        assert_eq!(buffer.take()[0].values[1].as_deref(), Some("old"));
    }
}
