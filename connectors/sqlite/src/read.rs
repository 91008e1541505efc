//! Reading a table in batches with keyset pagination.
//!
//! Rows are ordered by the read's ordering columns: the cursor (incremental reads), then the
//! key, then a tie-breaker when the key is not known to be unique (the primary key or the
//! rowid), so that the order is total. Each batch asks for the rows strictly after the last
//! row of the previous one, `(c, k) > (?, ?)` with the last row's stored values bound with
//! their storage classes, so rows that share a cursor value are neither skipped nor read
//! twice, and memory stays bounded by the batch size. Never OFFSET.

use std::sync::Arc;

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::arrow::datatypes::SchemaRef;
use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
use lockstep_plugin_sdk::{
    tracing, BatchReader, ConnectorError, FieldInfo, ReadMode, ReadRequest, Result,
};
use serde_json::{json, Map, Value};
use sqlx::Row;

use crate::catalog::{self, Table};
use crate::convert::ColumnBuilder;
use crate::error::db_error;
use crate::values::SqlValue;
use crate::Shared;
use lockstep_sql_kit::{keyset_after, Dialect, SqliteDialect};

/// What an ordering column is to the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Cursor,
    /// The i-th key column.
    Key(usize),
    /// The i-th tie-breaker column.
    Tiebreak(usize),
}

#[derive(Debug, Clone)]
struct OrderColumn {
    /// The SQL that selects it: a quoted identifier, or an unquoted rowid alias.
    sql: String,
    role: Role,
}

/// The batches of one read of one table.
pub struct SqliteReader {
    shared: Shared,
    table: String,
    fields: Vec<FieldInfo>,
    schema: SchemaRef,
    order: Vec<OrderColumn>,
    /// The key column names, for messages.
    key_names: Vec<String>,
    mode: ReadMode,
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
    let what = format!("reading table `{}`", table.name);

    let fields: Vec<FieldInfo> = match &request.fields {
        Some(names) => names
            .iter()
            .map(|n| field_of(&table, n).map(|c| c.field_info()))
            .collect::<Result<_>>()?,
        None => table.stream_info().fields,
    };

    // The key orders the read: the request's, else the primary key, else the rowid.
    let mut rowid_key = false;
    let key_names: Vec<String> = if !request.key.is_empty() {
        request
            .key
            .iter()
            .map(|k| field_of(&table, k).map(|c| c.name.clone()))
            .collect::<Result<_>>()?
    } else if !table.primary_key.is_empty() {
        table.primary_key.clone()
    } else if let Some(alias) = table.rowid_alias() {
        rowid_key = true;
        vec![alias.to_owned()]
    } else {
        return Err(ConnectorError::schema(format!(
            "table `{}` has no primary key and its rowid is shadowed by columns named rowid, \
             _rowid_ and oid; give the read a key",
            table.name
        )));
    };
    let key_sql = |name: &str| {
        if rowid_key {
            name.to_owned()
        } else {
            SqliteDialect.quote_ident(name)
        }
    };

    let mut order = Vec::new();
    let cursor = match request.mode {
        ReadMode::Full => None,
        ReadMode::Incremental => {
            let name = request
                .cursor_field
                .as_deref()
                .ok_or_else(|| missing_cursor(&table))?;
            let column = field_of(&table, name)?.name.clone();
            order.push(OrderColumn {
                sql: SqliteDialect.quote_ident(&column),
                role: Role::Cursor,
            });
            Some(column)
        }
    };
    for (i, k) in key_names.iter().enumerate() {
        if rowid_key || cursor.as_deref() != Some(k.as_str()) {
            order.push(OrderColumn {
                sql: key_sql(k),
                role: Role::Key(i),
            });
        }
    }
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
                    role: Role::Tiebreak(i),
                });
            }
        } else if let Some(alias) = table.rowid_alias() {
            order.push(OrderColumn {
                sql: alias.to_owned(),
                role: Role::Tiebreak(0),
            });
        } else {
            tracing::warn!(
                table = %table.name,
                "the read's key is not unique and the table has no rowid: rows sharing a key \
                 value may be skipped at batch boundaries"
            );
        }
    }

    let (after, inclusive) = match &request.checkpoint {
        None | Some(Value::Null) => (Vec::new(), false),
        Some(checkpoint) => decode_checkpoint(checkpoint, &order, request.mode, &key_names)
            .map_err(|reason| {
                ConnectorError::schema(format!(
                    "{what}: the checkpoint {checkpoint} does not fit this read ({reason}); the \
                     key or cursor of the sync changed since it was saved: reset the sync's \
                     checkpoint to read from the start"
                ))
            })?,
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
        key_names,
        mode: request.mode,
        after,
        inclusive,
        batch_size,
        select,
        order_by,
        done: false,
    })
}

/// The error for an incremental read without a cursor field, naming the candidates.
fn missing_cursor(table: &Table) -> ConnectorError {
    let candidates = table.stream_info().cursor_candidates;
    let candidates = if candidates.is_empty() {
        "none".to_string()
    } else {
        candidates.join(", ")
    };
    ConnectorError::config(format!(
        "an incremental read of table `{}` needs a cursor field (candidates: {candidates})",
        table.name
    ))
}

/// The column for a requested field name, or a schema error listing the table's columns.
fn field_of<'t>(table: &'t Table, name: &str) -> Result<&'t crate::catalog::Column> {
    table.column(name).ok_or_else(|| {
        let names: Vec<&str> = table.columns.iter().map(|c| c.name.as_str()).collect();
        ConnectorError::schema(format!(
            "table `{}` has no column `{name}` (columns: {})",
            table.name,
            names.join(", ")
        ))
    })
}

/// The ordering values a checkpoint holds, in ordering order, and whether they are a proper
/// prefix of the ordering (then the read resumes *at* them, inclusively).
fn decode_checkpoint(
    checkpoint: &Value,
    order: &[OrderColumn],
    mode: ReadMode,
    key_names: &[String],
) -> std::result::Result<(Vec<SqlValue>, bool), String> {
    let object = checkpoint.as_object().ok_or("it is not a JSON object")?;
    let list = |name: &str| -> std::result::Result<Vec<SqlValue>, String> {
        match object.get(name) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items.iter().map(SqlValue::from_json).collect(),
            Some(other) => Err(format!("`{name}` is {other}, not a list")),
        }
    };
    let key = list("key")?;
    let tiebreak = list("tiebreak")?;
    let cursor = object.get("cursor");
    if mode == ReadMode::Incremental && cursor.is_none() {
        return Err("it has no cursor: it comes from a full read".into());
    }
    if mode == ReadMode::Full && cursor.is_some() {
        return Err("it has a cursor: it comes from an incremental read".into());
    }
    if key.len() > key_names.len() {
        return Err(format!(
            "it holds {} key values and the key ({}) has {}",
            key.len(),
            key_names.join(", "),
            key_names.len()
        ));
    }
    let mut values = Vec::with_capacity(order.len());
    for column in order {
        let value = match column.role {
            Role::Cursor => cursor.map(SqlValue::from_json).transpose()?,
            Role::Key(i) => key.get(i).cloned(),
            Role::Tiebreak(i) => tiebreak.get(i).cloned(),
        };
        match value {
            Some(v) => values.push(v),
            None => break,
        }
    }
    let inclusive = values.len() < order.len();
    Ok((values, inclusive))
}

impl SqliteReader {
    fn checkpoint(&self, last: &[SqlValue]) -> Value {
        let mut key = vec![Value::Null; self.key_names.len()];
        let mut tiebreak = Vec::new();
        let mut cursor = Value::Null;
        for (column, value) in self.order.iter().zip(last) {
            match column.role {
                Role::Cursor => cursor = value.to_json(),
                Role::Key(i) => key[i] = value.to_json(),
                Role::Tiebreak(_) => tiebreak.push(value.to_json()),
            }
        }
        // A key column that is also the cursor is ordered once, as the cursor.
        for (i, slot) in key.iter_mut().enumerate() {
            if !self.order.iter().any(|o| o.role == Role::Key(i)) {
                *slot = cursor.clone();
            }
        }
        let mut out = Map::new();
        if self.mode == ReadMode::Incremental {
            out.insert("cursor".into(), cursor);
        }
        out.insert("key".into(), Value::Array(key));
        if !tiebreak.is_empty() {
            out.insert("tiebreak".into(), Value::Array(tiebreak));
        }
        Value::Object(out)
    }

    /// The row's key for messages: `(id = 5)`, or its rowid when the table has no key.
    fn describe_key(&self, ordering: &[SqlValue]) -> String {
        let parts: Vec<String> = self
            .order
            .iter()
            .zip(ordering)
            .filter(|(o, _)| o.role != Role::Cursor || self.key_names.is_empty())
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
            .map_err(ConnectorError::internal)?;
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
                builder
                    .push(&value)
                    .map_err(|reason| self.bad_value(field, &ordering, &value, &reason))?;
            }
            last = ordering;
        }
        let columns = builders.into_iter().map(ColumnBuilder::finish).collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        let checkpoint = self.checkpoint(&last);
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
