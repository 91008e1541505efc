//! Reading a table in batches with keyset pagination.
//!
//! Rows are ordered by the read's ordering columns: the cursor (incremental reads), then the
//! key, then a tie-breaker when the key is not known to be unique (the primary key or the
//! rowid), so that the order is total. Each batch asks for the rows strictly after the last
//! row of the previous one, `(c, k) > (?, ?)` with the last row's stored values bound with
//! their storage classes, so rows that share a cursor value are neither skipped nor read
//! twice, and memory stays bounded by the batch size. Never OFFSET.
//!
//! The SDK resolves the request (`resolve_read_with`: names ignoring ASCII case as SQLite
//! does, the rowid as the key of a table without one) and reads and writes the checkpoints
//! (`RowOrder`: NULL cursors are positions, since SQLite sorts them first and reads them; a
//! checkpoint holding a prefix of the order resumes at it, inclusively).

use std::sync::Arc;

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::arrow::datatypes::SchemaRef;
use lockstep_plugin_sdk::checkpoint::unusable_checkpoint;
use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
use lockstep_plugin_sdk::{
    resolve_read_with, tracing, BatchReader, ConnectorError, FieldInfo, OrderRole, ReadRequest,
    ResolveOptions, ResolvedRead, Result, RowOrder,
};
use serde_json::{json, Value};
use sqlx::Row;

use crate::catalog;
use crate::convert;
use crate::error::db_error;
use crate::values::SqlValue;
use crate::Shared;
use lockstep_sql_kit::{keyset_after, ColumnBuilder, Dialect, SqliteDialect};

/// An ordering column: how to select it, and what it is to the checkpoint.
#[derive(Debug, Clone)]
struct OrderColumn {
    /// The SQL that selects it: a quoted identifier, or an unquoted rowid alias.
    sql: String,
    role: OrderRole,
}

/// The batches of one read of one table.
pub struct SqliteReader {
    shared: Shared,
    table: String,
    fields: Vec<FieldInfo>,
    schema: SchemaRef,
    order: Vec<OrderColumn>,
    /// The order's roles, which read checkpoints back and write them.
    row_order: RowOrder,
    /// The key column names, for messages.
    key_names: Vec<String>,
    /// The ordering values to resume after (or from, when `inclusive`).
    after: Vec<SqlValue>,
    inclusive: bool,
    batch_size: usize,
    /// The SELECT list and FROM clause, built once.
    select: String,
    order_by: String,
    /// `request.keys`: only these records, as a SQL condition and its values.
    key_filter: Option<(String, Vec<SqlValue>)>,
    done: bool,
}

/// The most keys one read may filter on; more would make a statement too large.
const MAX_FILTER_KEYS: usize = 1000;

/// The condition and values that select the records whose key is one of `keys`.
fn key_filter(key_names: &[String], keys: &[Vec<Value>]) -> Result<(String, Vec<SqlValue>)> {
    if key_names.is_empty() {
        return Err(ConnectorError::schema(
            "a read by keys needs the stream's key: name it in the request or give the table a primary key",
        ));
    }
    if keys.len() > MAX_FILTER_KEYS {
        return Err(ConnectorError::internal(format!(
            "a read by keys takes at most {MAX_FILTER_KEYS} keys, not {}",
            keys.len()
        )));
    }
    let one = format!(
        "({})",
        key_names
            .iter()
            .map(|k| format!("{} = ?", SqliteDialect.quote_ident(k)))
            .collect::<Vec<_>>()
            .join(" AND ")
    );
    let mut values = Vec::with_capacity(keys.len() * key_names.len());
    for key in keys {
        if key.len() != key_names.len() {
            return Err(ConnectorError::internal(format!(
                "a key to read has {} values but the stream's key has {} fields",
                key.len(),
                key_names.len()
            )));
        }
        for v in key {
            values.push(SqlValue::from_json(v).map_err(ConnectorError::internal)?);
        }
    }
    let condition = if keys.is_empty() {
        "0".to_owned()
    } else {
        format!("({})", vec![one; keys.len()].join(" OR "))
    };
    Ok((condition, values))
}

/// Prepares a read: checks the request against the table and decodes the checkpoint.
pub(crate) async fn open_reader(
    shared: Shared,
    request: ReadRequest,
    config_batch_size: Option<usize>,
) -> Result<SqliteReader> {
    let table = {
        let mut state = shared.lock().await;
        let conn = &mut state.conn;
        match catalog::find_table(conn, &request.stream).await? {
            Some(t) => t,
            None => return Err(catalog::unknown_stream(conn, &request.stream).await),
        }
    };
    let stream = table.stream_info();
    // The key orders the read: the request's, else the primary key, else the rowid.
    let rowid_key = request.key.is_empty() && table.primary_key.is_empty();
    let options = ResolveOptions {
        ignore_ascii_case: true,
        implicit_key: table.rowid_alias().map(str::to_owned),
    };
    let ResolvedRead {
        fields,
        key: key_names,
        cursor,
        order: ordered_names,
    } = resolve_read_with(&request, &stream, &options)?;
    // The resolved order is the cursor, then the key fields it does not already hold.
    let mut order: Vec<OrderColumn> = ordered_names
        .iter()
        .map(|name| match key_names.iter().position(|k| k == name) {
            Some(i) if cursor.as_ref() != Some(name) => OrderColumn {
                // The rowid alias stays unquoted: quoted, it could name no column.
                sql: if rowid_key {
                    name.clone()
                } else {
                    SqliteDialect.quote_ident(name)
                },
                role: OrderRole::Key(i),
            },
            _ => OrderColumn {
                sql: SqliteDialect.quote_ident(name),
                role: OrderRole::Cursor,
            },
        })
        .collect();
    // Without a unique, non-null key the order is not total: the primary key, or else the
    // rowid, breaks ties so that keyset pagination neither skips nor repeats rows.
    let ordered: Vec<String> = cursor.iter().chain(&key_names).cloned().collect();
    if !rowid_key && !table.orders_totally(&ordered) {
        let pk_usable = !table.primary_key.is_empty()
            && table
                .primary_key
                .iter()
                .all(|p| table.column(p).is_some_and(|c| !c.nullable));
        if pk_usable {
            let rest = table
                .primary_key
                .iter()
                .filter(|p| !ordered.iter().any(|o| o.eq_ignore_ascii_case(p)));
            for (i, p) in rest.enumerate() {
                order.push(OrderColumn {
                    sql: SqliteDialect.quote_ident(p),
                    role: OrderRole::Tiebreak(i),
                });
            }
        } else if let Some(alias) = table.rowid_alias() {
            order.push(OrderColumn {
                sql: alias.to_owned(),
                role: OrderRole::Tiebreak(0),
            });
        } else {
            tracing::warn!(
                table = %table.name,
                "the read's key is not unique and the table has no rowid: rows sharing a key \
                 value may be skipped at batch boundaries"
            );
        }
    }

    let row_order = RowOrder::new(
        cursor.is_some(),
        key_names.len(),
        order.iter().map(|o| o.role).collect(),
    );
    let (after, inclusive) = match row_order.resume(&request)? {
        None => (Vec::new(), false),
        Some(resume) => {
            let values = resume
                .values
                .iter()
                .map(SqlValue::from_json)
                .collect::<std::result::Result<_, _>>()
                .map_err(|why| {
                    let checkpoint = request.checkpoint.as_ref().unwrap_or(&Value::Null);
                    unusable_checkpoint(&request.stream, checkpoint, &why)
                })?;
            (values, resume.inclusive)
        }
    };

    let batch_size = match (request.batch_size, config_batch_size) {
        (Some(0), _) => {
            return Err(ConnectorError::config(
                "the read's batch size must be at least 1",
            ))
        }
        (Some(r), Some(c)) => r.min(c),
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => crate::config::DEFAULT_BATCH_SIZE,
    };

    let columns: Vec<String> = order
        .iter()
        .map(|o| o.sql.clone())
        .chain(fields.iter().map(|f| SqliteDialect.quote_ident(&f.name)))
        .collect();
    let select = format!(
        "SELECT {} FROM {}",
        columns.join(", "),
        SqliteDialect.quote_ident(&table.name)
    );
    let order_by = order
        .iter()
        .map(|o| o.sql.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let key_filter = match &request.keys {
        Some(keys) => Some(key_filter(&key_names, keys)?),
        None => None,
    };
    Ok(SqliteReader {
        key_filter,
        shared,
        table: table.name.clone(),
        schema: Arc::new(arrow_schema(&fields)),
        fields,
        order,
        row_order,
        key_names,
        after,
        inclusive,
        batch_size,
        select,
        order_by,
        done: false,
    })
}

impl SqliteReader {
    /// The row's key for messages: `(id = 5)`, or its rowid when the table has no key.
    fn describe_key(&self, ordering: &[SqlValue]) -> String {
        let parts: Vec<String> = self
            .order
            .iter()
            .zip(ordering)
            .filter(|(o, _)| o.role != OrderRole::Cursor || self.key_names.is_empty())
            .map(|(o, v)| format!("{} = {}", o.sql, v.describe()))
            .collect();
        format!("({})", parts.join(", "))
    }
}

impl BatchReader for SqliteReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if self.done {
            return Ok(None);
        }
        let mut sql = self.select.clone();
        let mut conditions = Vec::new();
        // The values to resume after, in the order of their placeholders.
        let mut binds = Vec::new();
        if !self.after.is_empty() {
            let columns: Vec<String> = self.order.iter().map(|o| o.sql.clone()).collect();
            let marks: Vec<Option<String>> = self
                .after
                .iter()
                .map(|v| (!v.is_null()).then(|| SqliteDialect.placeholder(1)))
                .collect();
            let cut = keyset_after(&SqliteDialect, &columns, &marks, self.inclusive);
            conditions.push(cut.sql);
            binds.extend(cut.binds.into_iter().map(|i| &self.after[i]));
        }
        if let Some((condition, _)) = &self.key_filter {
            conditions.push(condition.clone());
        }
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY {} LIMIT ?", self.order_by));
        let mut query = sqlx::query(&sql);
        for value in binds {
            query = value.bind(query);
        }
        if let Some((_, values)) = &self.key_filter {
            for value in values {
                query = value.bind(query);
            }
        }
        query = query.bind(self.batch_size as i64);
        let rows = {
            let mut state = self.shared.lock().await;
            query
                .fetch_all(&mut state.conn)
                .await
                .map_err(db_error(format!("reading table `{}`", self.table)))?
        };
        if rows.is_empty() {
            self.done = true;
            return Ok(None);
        }
        if rows.len() < self.batch_size {
            self.done = true;
        }

        let n_order = self.order.len();
        let mut builders = self
            .fields
            .iter()
            .map(|f| ColumnBuilder::new(f.data_type, rows.len()))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ConnectorError::internal(e.to_string()))?;
        let mut last = Vec::new();
        for row in &rows {
            let read = |i: usize| {
                let raw = row.try_get_raw(i).map_err(db_error("reading a row"))?;
                SqlValue::from_ref(raw).map_err(|reason| {
                    ConnectorError::schema(format!("table `{}`: {reason}", self.table))
                })
            };
            let ordering: Vec<SqlValue> = (0..n_order).map(read).collect::<Result<_>>()?;
            for (j, (field, builder)) in self.fields.iter().zip(&mut builders).enumerate() {
                let value = read(n_order + j)?;
                if value.is_null() && !field.nullable {
                    return Err(self.bad_value(
                        field,
                        &ordering,
                        &value,
                        "NULL in a NOT NULL column",
                    ));
                }
                convert::push(builder, &value)
                    .map_err(|reason| self.bad_value(field, &ordering, &value, &reason))?;
            }
            last = ordering;
        }
        let columns = builders.into_iter().map(ColumnBuilder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let last_json: Vec<Value> = last.iter().map(SqlValue::to_json).collect();
        let checkpoint = self.row_order.checkpoint(&last_json);
        self.after = last;
        self.inclusive = false;
        Ok(Some((batch, checkpoint)))
    }
}

impl SqliteReader {
    fn bad_value(
        &self,
        field: &FieldInfo,
        ordering: &[SqlValue],
        value: &SqlValue,
        reason: &str,
    ) -> ConnectorError {
        let key = self.describe_key(ordering);
        ConnectorError::schema(format!(
            "table `{}`, column `{}`, row {key}: the stored {} value {} is not a valid {} ({reason}); \
             fix the value or change the column's declared type",
            self.table,
            field.name,
            value.class(),
            value.describe(),
            field.data_type.describe(),
        ))
        .with_details(json!({
            "table": self.table,
            "column": field.name,
            "key": key,
            "value": value.describe(),
            "expected": field.data_type.describe(),
        }))
    }
}
