//! Reading a table in keyset pages, decoded straight from rows into Arrow builders.
//!
//! A read by keys (`request.keys`, the `read-by-keys` feature) instead selects chunks of at
//! most [`KEYS_PER_QUERY`] keys (never more than the batch size) with `WHERE (k1, k2) IN ((?,
//! ?), ...)`: every value is a bound parameter of its column's type (decimals cast to the
//! column's precision), so comparisons are the column's own, and the statement stays bounded
//! however many keys are asked for. Keys that match no row, or hold a null, find nothing.

use lockstep_sql_kit::{keyset_after, ColumnBuilder, Dialect, MySqlDialect};
use std::collections::VecDeque;
use std::sync::Arc;

use chrono::NaiveDate;
use lockstep_plugin_sdk::arrow::array::{ArrayRef, RecordBatch};
use lockstep_plugin_sdk::protocol::arrow_types::{arrow_schema, json_value};
use lockstep_plugin_sdk::resolve::unknown_field;
use lockstep_plugin_sdk::rows::parse_decimal;
use lockstep_plugin_sdk::serde_json::Value;
use lockstep_plugin_sdk::{
    checkpoint_after, resolve_read, resume_point, tracing, BatchReader, ConnectorError, DataType,
    FieldInfo, ReadRequest, ResolvedRead, Result,
};
use sqlx::mysql::types::MySqlTime;
use sqlx::mysql::{MySqlArguments, MySqlConnection, MySqlRow, MySqlValueRef};
use sqlx::{Decode, MySql, Row, ValueRef};

use crate::catalog::{Column, Table, Wire};
use crate::error::connection_lost;
use crate::session::Db;
use crate::types::{bind_json, minus_lookback, placeholder};

/// Where the next page starts.
#[derive(Clone, Debug)]
enum Position {
    /// At the beginning.
    Start,
    /// Strictly after these values of the order columns.
    After(Vec<Value>),
    /// At this cursor value or later (the start of a lookback window).
    AtLeast(Value),
}

/// The reader of one `read` call. It owns its connection (a read by keys may have taken the
/// one an earlier read by keys left), and replaces it after a connection error so that a
/// retried `next_batch` resumes where the last batch ended.
pub struct MySqlReader {
    db: Arc<Db>,
    conn: Option<MySqlConnection>,
    table: String,
    /// The selected columns: the requested fields first, then key or cursor columns the
    /// checkpoint needs but the request left out.
    columns: Vec<Column>,
    fields: Vec<FieldInfo>,
    /// Indexes into `columns` of the ordering columns: the cursor (incremental), then keys.
    order: Vec<usize>,
    incremental: bool,
    position: Position,
    batch_size: usize,
    done: bool,
    connection_id: u64,
    /// A read by keys: the chunks of keys still to read.
    keys: Option<VecDeque<Vec<Vec<Value>>>>,
    /// The connection is an earlier read's, kept (`Db::take_spare`), and no query has run on
    /// it yet: the server may have ended it since, so a lost connection is replaced and the
    /// query tried again once.
    kept: bool,
}

/// The most keys one query of a read by keys asks for.
pub const KEYS_PER_QUERY: usize = 1000;

/// Parses a lookback such as `0s`, `90s`, `5m`, `1h30m`, `2d` or `250ms` into microseconds.
pub(crate) fn parse_lookback(text: &str) -> Result<i64> {
    let bad = || {
        ConnectorError::config(format!(
            "`lookback` = `{text}` is not a duration (examples: 0s, 30s, 5m, 1h30m, 2d)"
        ))
    };
    let t = text.trim();
    if t == "0" {
        return Ok(0);
    }
    if t.is_empty() {
        return Err(bad());
    }
    let mut total: i64 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = match &rest[..letters] {
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" | "min" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            _ => return Err(bad()),
        };
        rest = &rest[letters..];
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

impl MySqlReader {
    /// Ends the read's connection once its last rows are in (see [`crate::session::close`]);
    /// a read by keys that ended whole leaves it for the next one instead.
    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.keys.is_some() && self.done {
                self.db.keep_spare(conn, self.connection_id).await;
            } else {
                crate::session::close(conn).await;
            }
        }
    }

    /// Plans a read of `table` as `request` asks.
    pub(crate) async fn open(
        db: Arc<Db>,
        table: Table,
        request: ReadRequest,
        default_batch_size: usize,
        lookback_us: i64,
    ) -> Result<Self> {
        let stream = &request.stream;
        let stream_info = table.stream_info();
        // A column of a type Lockstep cannot read exists: say so rather than "no field".
        let named = request.fields.iter().flatten();
        for name in named.chain(&request.key).chain(&request.cursor_field) {
            if let Some(c) = table.column(name).filter(|c| c.mapping.is_none()) {
                return Err(ConnectorError::schema(format!(
                    "field `{name}` of stream `{stream}` has type {}, which Lockstep cannot read",
                    c.column_type
                )));
            }
        }
        let ResolvedRead {
            fields,
            key,
            cursor,
            order: order_names,
        } = resolve_read(&request, &stream_info)?;
        let incremental = cursor.is_some();
        let column = |name: &str| {
            table
                .column(name)
                .cloned()
                .ok_or_else(|| unknown_field(&stream_info, name, "field"))
        };
        let mut columns: Vec<Column> = fields
            .iter()
            .map(|f| column(&f.name))
            .collect::<Result<_>>()?;
        let mut order = Vec::new();
        for name in &order_names {
            let at = match columns.iter().position(|c| &c.name == name) {
                Some(i) => i,
                None => {
                    columns.push(column(name)?);
                    columns.len() - 1
                }
            };
            order.push(at);
        }

        let position = start_position(&request, &columns, &order, lookback_us)?;
        let batch_size = request.batch_size.unwrap_or(default_batch_size).max(1);
        let keys = match &request.keys {
            None => None,
            Some(keys) => {
                let mut usable = Vec::with_capacity(keys.len());
                for k in keys {
                    if k.len() != key.len() {
                        return Err(ConnectorError::config(format!(
                            "reading `{stream}` by keys: a key has {} values but the key ({}) \
                             has {} fields",
                            k.len(),
                            key.join(", "),
                            key.len()
                        )));
                    }
                    // A null equals nothing: such a key finds no row.
                    if k.iter().all(|v| !v.is_null()) {
                        usable.push(k.clone());
                    }
                }
                Some(
                    usable
                        .chunks(KEYS_PER_QUERY.min(batch_size))
                        .map(<[_]>::to_vec)
                        .collect(),
                )
            }
        };
        // A read by keys takes the connection an earlier one left, when there is one.
        let kept = match keys {
            Some(_) => db.take_spare(),
            None => None,
        };
        let (conn, connection_id, kept) = match kept {
            Some((conn, id)) => (conn, id, true),
            None => (db.connect().await?.0, 0, false),
        };
        let mut reader = MySqlReader {
            db,
            conn: Some(conn),
            table: table.name,
            columns,
            fields,
            order,
            incremental,
            position,
            batch_size,
            done: false,
            connection_id,
            keys,
            kept,
        };
        if !kept {
            reader.connection_id = reader.fetch_connection_id().await?;
        }
        Ok(reader)
    }

    /// The server's id of the reader's connection (for `KILL` in tests and in logs).
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }

    async fn fetch_connection_id(&mut self) -> Result<u64> {
        let conn = self.conn.as_mut().expect("connected just before");
        let row = sqlx::query("SELECT CAST(CONNECTION_ID() AS CHAR)")
            .fetch_one(conn)
            .await
            .map_err(|e| self.db.error(e, "reading the connection id"))?;
        Ok(row
            .try_get_unchecked::<String, _>(0)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    fn order_exprs(&self) -> Vec<String> {
        self.order
            .iter()
            .map(|&i| self.columns[i].order_expr())
            .collect()
    }

    /// The SELECT of one chunk of a read by keys and its parameters.
    fn keys_query(&self, keys: &[Vec<Value>]) -> Result<(String, MySqlArguments)> {
        let select: Vec<String> = self
            .columns
            .iter()
            .map(|c| MySqlDialect.quote_ident(&c.name))
            .collect();
        // The key columns are the order columns after the cursor.
        let key_cols: Vec<&Column> = self.order[self.incremental as usize..]
            .iter()
            .map(|&i| &self.columns[i])
            .collect();
        let names: Vec<String> = key_cols
            .iter()
            .map(|c| MySqlDialect.quote_ident(&c.name))
            .collect();
        let marks: Vec<String> = key_cols.iter().map(|c| placeholder(c)).collect();
        let one = if key_cols.len() == 1 {
            marks[0].clone()
        } else {
            format!("({})", marks.join(", "))
        };
        let left = if key_cols.len() == 1 {
            names[0].clone()
        } else {
            format!("({})", names.join(", "))
        };
        let mut args = MySqlArguments::default();
        for key in keys {
            for (v, c) in key.iter().zip(&key_cols) {
                bind_json(&mut args, v, c).map_err(|e| {
                    ConnectorError::config(format!("reading `{}` by keys: {e}", self.table))
                })?;
            }
        }
        let sql = format!(
            "SELECT {} FROM {} WHERE {left} IN ({}) ORDER BY {}",
            select.join(", "),
            MySqlDialect.quote_ident(&self.table),
            vec![one; keys.len()].join(", "),
            self.order_exprs().join(", ")
        );
        Ok((sql, args))
    }

    /// The next chunk of a read by keys that finds rows; chunks that find none are skipped.
    /// A failed chunk stays first, so that a retried `next_batch` reads it again.
    async fn next_keys_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        let what = format!("reading `{}` by keys from {}", self.table, self.db.location);
        loop {
            let Some(chunk) = self.keys.as_ref().and_then(|k| k.front().cloned()) else {
                self.done = true;
                self.close().await;
                return Ok(None);
            };
            if self.conn.is_none() {
                let (conn, _) = self.db.connect().await?;
                self.conn = Some(conn);
                self.connection_id = self.fetch_connection_id().await?;
            }
            let (sql, args) = self.keys_query(&chunk)?;
            let conn = self.conn.as_mut().expect("connected above");
            let kept = std::mem::take(&mut self.kept);
            let rows = match sqlx::query_with(&sql, args).fetch_all(&mut *conn).await {
                Ok(rows) => rows,
                Err(e) => {
                    if connection_lost(&e) {
                        self.conn = None;
                        if kept {
                            tracing::debug!(
                                table = %self.table,
                                error = %e,
                                "the kept connection for reads by keys was gone; connecting anew"
                            );
                            continue;
                        }
                    }
                    return Err(self.db.error(e, &what));
                }
            };
            if let Some(keys) = self.keys.as_mut() {
                keys.pop_front();
            }
            if rows.is_empty() {
                continue;
            }
            let arrays = decode_rows(&rows, &self.columns).map_err(|e| e.context(&what))?;
            let schema = Arc::new(arrow_schema(&self.fields));
            let batch = RecordBatch::try_new(schema, arrays[..self.fields.len()].to_vec())
                .map_err(|e| ConnectorError::internal(format!("{what}: {e}")))?;
            return Ok(Some((batch, Value::Null)));
        }
    }

    /// The SELECT of the next page and its parameters.
    fn page_query(&self) -> Result<(String, MySqlArguments)> {
        let select: Vec<String> = self
            .columns
            .iter()
            .map(|c| MySqlDialect.quote_ident(&c.name))
            .collect();
        let exprs = self.order_exprs();
        let mut conditions = Vec::new();
        let mut args = MySqlArguments::default();
        let bind_err =
            |e: String| ConnectorError::config(format!("resuming `{}`: {e}", self.table));
        if self.incremental {
            conditions.push(format!("{} IS NOT NULL", exprs[0]));
        }
        match &self.position {
            Position::Start => {}
            Position::AtLeast(cursor) => {
                let c = &self.columns[self.order[0]];
                conditions.push(format!("{} >= {}", exprs[0], placeholder(c)));
                bind_json(&mut args, cursor, c).map_err(bind_err)?;
            }
            Position::After(values) => {
                let cols: Vec<&Column> = self.order.iter().map(|&i| &self.columns[i]).collect();
                let marks: Vec<Option<String>> = values
                    .iter()
                    .zip(&cols)
                    .map(|(v, c)| (!v.is_null()).then(|| placeholder(c)))
                    .collect();
                let cut = keyset_after(&MySqlDialect, &exprs, &marks, false);
                conditions.push(cut.sql);
                for i in cut.binds {
                    bind_json(&mut args, &values[i], cols[i]).map_err(bind_err)?;
                }
            }
        }
        let sql = format!(
            "SELECT {} FROM {}{} ORDER BY {} LIMIT ?",
            select.join(", "),
            MySqlDialect.quote_ident(&self.table),
            if conditions.is_empty() {
                String::new()
            } else {
                format!(" WHERE {}", conditions.join(" AND "))
            },
            exprs.join(", ")
        );
        sqlx::Arguments::add(&mut args, self.batch_size as u64)
            .map_err(|e| ConnectorError::internal(e.to_string()))?;
        Ok((sql, args))
    }
}

/// The position a read starts from, given the request's checkpoint.
fn start_position(
    request: &ReadRequest,
    columns: &[Column],
    order: &[usize],
    lookback_us: i64,
) -> Result<Position> {
    let Some(point) = resume_point(request, order.len())? else {
        return Ok(Position::Start);
    };
    if let (true, Some(cursor_value)) = (lookback_us > 0, &point.cursor) {
        let cursor = &columns[order[0]];
        let logical = cursor.logical().unwrap_or(DataType::Text);
        if let Some(start) = minus_lookback(cursor_value, logical, lookback_us) {
            return Ok(Position::AtLeast(start));
        }
        tracing::warn!(
            stream = %request.stream,
            cursor = %cursor.name,
            "lookback applies to timestamp and date cursors only; ignored for this cursor"
        );
    }
    Ok(Position::After(point.order_values()))
}

impl BatchReader for MySqlReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if self.done {
            return Ok(None);
        }
        if self.keys.is_some() {
            return self.next_keys_batch().await;
        }
        let what = format!("reading `{}` from {}", self.table, self.db.location);
        if self.conn.is_none() {
            let (conn, _) = self.db.connect().await?;
            self.conn = Some(conn);
            self.connection_id = self.fetch_connection_id().await?;
        }
        let (sql, args) = self.page_query()?;
        let conn = self.conn.as_mut().expect("connected above");
        let rows = match sqlx::query_with(&sql, args).fetch_all(&mut *conn).await {
            Ok(rows) => rows,
            Err(e) => {
                if connection_lost(&e) {
                    self.conn = None;
                }
                return Err(self.db.error(e, &what));
            }
        };
        if rows.len() < self.batch_size {
            self.done = true;
            self.close().await;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let arrays = decode_rows(&rows, &self.columns).map_err(|e| e.context(&what))?;
        drop(rows);
        let last = arrays[0].len() - 1;
        let values: Vec<Value> = self
            .order
            .iter()
            .map(|&i| json_value(&arrays[i], last, self.columns[i].logical()))
            .collect();
        let checkpoint = checkpoint_after(self.incremental, values.clone());
        self.position = Position::After(values);
        let schema = Arc::new(arrow_schema(&self.fields));
        let batch = RecordBatch::try_new(schema, arrays[..self.fields.len()].to_vec())
            .map_err(|e| ConnectorError::internal(format!("{what}: {e}")))?;
        Ok(Some((batch, checkpoint)))
    }
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// Decodes one non-null value off the wire into `builder`.
fn append(builder: &mut ColumnBuilder, wire: Wire, v: MySqlValueRef<'_>) -> Result<(), String> {
    fn dec<'r, T: Decode<'r, MySql>>(v: MySqlValueRef<'r>) -> Result<T, String> {
        T::decode(v).map_err(|e| e.to_string())
    }
    let int = |v| -> Result<i128, String> {
        match wire {
            Wire::UInt => dec::<u64>(v).map(i128::from),
            _ => dec::<i64>(v).map(i128::from),
        }
    };
    match (builder, wire) {
        (ColumnBuilder::Boolean(b), Wire::Bits) => {
            b.append_value(dec::<&[u8]>(v)?.iter().any(|x| *x != 0))
        }
        // tinyint(1) holds -128..127: only 0 and 1 are booleans, anything else would
        // arrive as `true` and come back as 1.
        (ColumnBuilder::Boolean(b), _) => b.append_value(match int(v)? {
            0 => false,
            1 => true,
            other => {
                return Err(format!(
                    "{other} is not a boolean (0 or 1); change the column to TINYINT to \
                     read it as an integer"
                ))
            }
        }),
        (ColumnBuilder::Int32(b), _) => b.append_value(
            i32::try_from(int(v)?).map_err(|_| "value does not fit a 32-bit integer".to_owned())?,
        ),
        (ColumnBuilder::Int64(b), _) => b.append_value(
            i64::try_from(int(v)?).map_err(|_| "value does not fit a 64-bit integer".to_owned())?,
        ),
        (ColumnBuilder::Float32(b), _) => b.append_value(dec::<f32>(v)?),
        (ColumnBuilder::Float64(b), _) => b.append_value(dec::<f64>(v)?),
        (ColumnBuilder::Decimal(b, ..), Wire::UInt | Wire::Int) => b.append_value(int(v)?),
        (ColumnBuilder::Decimal(b, p, s), _) => {
            b.append_value(parse_decimal(dec::<&str>(v)?, *p, *s)?)
        }
        (ColumnBuilder::Text(b) | ColumnBuilder::Uuid(b) | ColumnBuilder::Json(b), _) => {
            b.append_value(dec::<&str>(v)?)
        }
        (ColumnBuilder::Binary(b), _) => b.append_value(dec::<&[u8]>(v)?),
        (ColumnBuilder::Date(b), _) => {
            let d: NaiveDate = dec(v).map_err(zero_date)?;
            b.append_value((d - EPOCH).num_days() as i32)
        }
        (ColumnBuilder::Time(b), _) => {
            let t: MySqlTime = dec(v)?;
            if !t.is_valid_time_of_day() {
                return Err(format!(
                    "{}{}:{:02}:{:02} is not a time of day (00:00:00 to 23:59:59.999999); \
                     read the column as text with a view to keep durations",
                    if t.is_negative() { "-" } else { "" },
                    t.hours(),
                    t.minutes(),
                    t.seconds()
                ));
            }
            b.append_value(
                ((t.hours() as i64 * 60 + t.minutes() as i64) * 60 + t.seconds() as i64)
                    * 1_000_000
                    + t.microseconds() as i64,
            )
        }
        (ColumnBuilder::Timestamp(b), _) => {
            let dt: chrono::NaiveDateTime = dec(v).map_err(zero_date)?;
            b.append_value(dt.and_utc().timestamp_micros())
        }
    }
    Ok(())
}

fn zero_date(e: String) -> String {
    if e.contains("null") || e.contains("NULL") {
        "a zero date (0000-00-00) has no Lockstep equivalent; set it to NULL or a real date"
            .to_owned()
    } else {
        e
    }
}

/// Decodes rows into one array per column.
pub(crate) fn decode_rows(rows: &[MySqlRow], columns: &[Column]) -> Result<Vec<ArrayRef>> {
    let mut builders = Vec::with_capacity(columns.len());
    for c in columns {
        let (t, _) = c.mapping.expect("only mapped columns are selected");
        builders.push(ColumnBuilder::new(t, rows.len())?);
    }
    for (r, row) in rows.iter().enumerate() {
        for (i, (c, b)) in columns.iter().zip(builders.iter_mut()).enumerate() {
            let (_, wire) = c.mapping.expect("only mapped columns are selected");
            let v = row
                .try_get_raw(i)
                .map_err(|e| ConnectorError::internal(e.to_string()))?;
            if v.is_null() {
                if !c.nullable {
                    return Err(ConnectorError::schema(format!(
                        "row {r} of the page, field `{}`: null in a column declared NOT NULL",
                        c.name
                    )));
                }
                b.append_null();
            } else {
                append(b, wire, v).map_err(|reason| {
                    ConnectorError::schema(format!(
                        "row {r} of the page, field `{}` ({}): {reason}",
                        c.name, c.column_type
                    ))
                })?;
            }
        }
    }
    Ok(builders.into_iter().map(ColumnBuilder::finish).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookbacks_parse() {
        assert_eq!(parse_lookback("0s").unwrap(), 0);
        assert_eq!(parse_lookback("90s").unwrap(), 90_000_000);
        assert_eq!(parse_lookback("1h30m").unwrap(), 5_400_000_000);
        assert_eq!(parse_lookback("250ms").unwrap(), 250_000);
        assert_eq!(parse_lookback("2d").unwrap(), 172_800_000_000);
        assert!(parse_lookback("soon").is_err());
        assert!(parse_lookback("").is_err());
        assert!(parse_lookback("5y").is_err());
    }
}
