//! Writing a table: creation and evolution at `open_stream`, multi-row upserts, deletes by
//! key, and the transaction that `flush` commits.

use lockstep_sql_kit::ddl::table_body;
use lockstep_sql_kit::{Dialect, MySqlDialect};
use std::collections::HashSet;
use std::sync::Arc;

use lockstep_plugin_sdk::arrow::array::{ArrayRef, RecordBatch};
use lockstep_plugin_sdk::arrow::datatypes::DataType as ArrowType;
use lockstep_plugin_sdk::arrow::row::{RowConverter, SortField};
use lockstep_plugin_sdk::evolution::{plan_evolution, EvolutionPlan};
use lockstep_plugin_sdk::{
    tracing, ConnectorError, DataType, OpenStreamRequest, RejectedRow, Result, StreamWriter,
    WriteOutcome,
};
use sqlx::mysql::{MySqlArguments, MySqlConnection};
use sqlx::{Executor, Row};

use crate::catalog::{create_type, key_collation, load_tables, Column, Table};
use crate::error::{connection_lost, error_number};
use crate::session::{Db, Flavor};
use crate::types::{bind_cell, normalize, placeholder, refuse, wire_size};

/// MySQL's limit of parameters in one prepared statement.
const MAX_PARAMS: usize = 65_535;
/// Keys per `IN` list at most, which keeps MySQL's range optimizer within its default
/// memory limit (`range_optimizer_max_mem_size`), past which it would scan the table.
const MAX_KEYS: usize = 5_000;
/// Rows per upsert statement at most: one key list counts a statement's existing rows.
const MAX_ROWS: usize = MAX_KEYS;

/// Whether a statement over `rows` rows is kept prepared on the connection for reuse: only
/// when it is full-sized (`full` rows, the most a statement takes). Preparing a statement of
/// thousands of placeholders costs the server a parse and one parameter description each,
/// which was a third of its time in a bulk load (measured with `perf` on MariaDB 10.11); a
/// bulk load's statements are all full-sized but the last of each batch, so at most one
/// text per kind of statement stays prepared, however many sizes the other statements take.
fn reuse_prepared(rows: usize, full: usize) -> bool {
    rows == full
}

/// Server errors that refuse a value for data reasons: the row is rejected, the rest go on.
const DATA_ERRORS: &[u16] = &[
    1048, // column cannot be null
    1062, // duplicate entry (another unique index)
    1264, // out of range
    1265, // data truncated
    1292, // incorrect date/time/uuid value
    1366, // incorrect string/integer value
    1367, // illegal value
    1406, // data too long
    1411, // incorrect value for function
    1416, // cannot get geometry object
    1452, // foreign key: no parent row
    1690, // value out of range in an expression
    3140, // MySQL: invalid JSON text
    3819, // MySQL: check constraint violated
    4025, // MariaDB: check constraint (json_valid) failed
];

/// One column of a batch, ready to bind.
struct BatchColumn {
    name: String,
    logical: DataType,
    array: ArrayRef,
    column: Column,
}

/// The writer of one stream. It owns its own connection and at most one open transaction,
/// begun by the first write after a flush.
pub struct MySqlWriter {
    db: Arc<Db>,
    conn: Option<MySqlConnection>,
    table: Table,
    key: Vec<String>,
    ignored: HashSet<String>,
    in_tx: bool,
    /// Rows written in the open transaction.
    tx_writes: u64,
    /// Set when a transaction with writes in it was rolled back by an error: the next flush
    /// reports it, since those writes are gone although their calls succeeded.
    lost: Option<String>,
    max_packet: usize,
}

async fn session_setup(db: &Db, conn: &mut MySqlConnection, flavor: Flavor) -> Result<usize> {
    // READ COMMITTED lets the counting queries see rows other sessions committed since the
    // transaction began, exactly as the upsert itself does, and takes fewer gap locks. With
    // statement-based binary logging InnoDB refuses writes under it, so the session then
    // keeps the server's level.
    let binlog = sqlx::query("SELECT CAST(@@SESSION.binlog_format AS CHAR)")
        .fetch_one(&mut *conn)
        .await
        .ok()
        .and_then(|r| r.try_get_unchecked::<Option<String>, _>(0).ok().flatten())
        .unwrap_or_default();
    if !binlog.eq_ignore_ascii_case("STATEMENT") {
        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(|e| db.error(e, "setting up the writer session"))?;
    }
    if flavor.mariadb {
        // MariaDB rewrites long IN lists into joins with a derived table, which for
        // composite keys probe the index by its first column only; plain IN lists become
        // exact index ranges. Servers before 10.3.18 lack the variable and need nothing.
        let _ = conn
            .execute("SET SESSION in_predicate_conversion_threshold = 0")
            .await;
    }
    let row = sqlx::query("SELECT CAST(@@max_allowed_packet AS CHAR)")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db.error(e, "reading max_allowed_packet"))?;
    Ok(row
        .try_get_unchecked::<String, _>(0)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4 << 20))
}

impl MySqlWriter {
    /// Prepares `request.stream`: creates or evolves the table and checks the key.
    pub(crate) async fn open(db: Arc<Db>, request: OpenStreamRequest) -> Result<Self> {
        let stream = request.stream.clone();
        let mut seen = HashSet::new();
        for f in &request.fields {
            if !seen.insert(f.name.as_str()) {
                return Err(ConnectorError::schema(format!(
                    "stream `{stream}`: field `{}` appears twice",
                    f.name
                )));
            }
        }
        for k in &request.key {
            if !seen.contains(k.as_str()) {
                return Err(ConnectorError::schema(format!(
                    "stream `{stream}`: key field `{k}` is not among the fields written"
                )));
            }
        }
        let (mut conn, flavor) = db.connect().await?;
        let max_packet = session_setup(&db, &mut conn, flavor).await?;
        let existing = load_tables(&db, &mut conn, flavor, Some(&stream))
            .await?
            .pop();
        let mut ignored = HashSet::new();
        let table = match existing {
            None if !request.create_if_missing => {
                return Err(ConnectorError::schema(format!(
                    "table `{stream}` does not exist in {} and creating it is off",
                    db.location
                )))
            }
            None => {
                create_table(&db, &mut conn, flavor, &request).await?;
                load_tables(&db, &mut conn, flavor, Some(&stream))
                    .await?
                    .pop()
                    .ok_or_else(|| {
                        ConnectorError::internal(format!(
                            "table `{stream}` vanished after creation"
                        ))
                    })?
            }
            Some(table) => {
                if let Some(k) = request.key.iter().find(|k| table.column(k).is_none()) {
                    return Err(ConnectorError::schema(format!(
                        "table `{stream}` has no column for key field `{k}`; add it with a \
                         unique index, or choose another key"
                    )));
                }
                match plan_evolution(&request, |name| table.column(name).is_some())? {
                    EvolutionPlan::Unchanged => table,
                    EvolutionPlan::Ignore(fields) => {
                        ignored.extend(fields.iter().map(|f| f.name.clone()));
                        table
                    }
                    EvolutionPlan::Add(fields) => {
                        let mut adds = Vec::new();
                        for f in &fields {
                            let t = create_type(f.data_type, false, flavor).map_err(|e| {
                                ConnectorError::schema(format!("field `{}`: {e}", f.name))
                            })?;
                            adds.push(format!(
                                "ADD COLUMN {} {t} NULL",
                                MySqlDialect.quote_ident(&f.name)
                            ));
                        }
                        let names = EvolutionPlan::Add(fields).names();
                        let sql = format!(
                            "ALTER TABLE {} {}",
                            MySqlDialect.quote_ident(&stream),
                            adds.join(", ")
                        );
                        conn.execute(sql.as_str()).await.map_err(|e| {
                            db.error(e, format!("adding columns {names} to `{stream}`"))
                        })?;
                        tracing::info!(stream = %stream, fields = %names, "columns added");
                        load_tables(&db, &mut conn, flavor, Some(&stream))
                            .await?
                            .pop()
                            .ok_or_else(|| {
                                ConnectorError::internal(format!("table `{stream}` vanished"))
                            })?
                    }
                }
            }
        };
        let key = if request.key.is_empty() {
            table.keys.primary_key.clone()
        } else {
            request.key.clone()
        };
        if !key.is_empty() && !table.has_unique_key(&key) {
            let cols: Vec<String> = key.iter().map(|k| MySqlDialect.quote_ident(k)).collect();
            return Err(ConnectorError::schema(format!(
                "table `{stream}` has no primary key or unique index on ({}), so rows cannot \
                 be matched by that key; fix it with: ALTER TABLE {} ADD UNIQUE ({})",
                key.join(", "),
                MySqlDialect.quote_ident(&stream),
                cols.join(", ")
            )));
        }
        if key.is_empty() {
            tracing::warn!(stream = %stream, "no key: upserts are plain inserts and deletes are refused");
        }
        Ok(MySqlWriter {
            db,
            conn: Some(conn),
            table,
            key,
            ignored,
            in_tx: false,
            tx_writes: 0,
            lost: None,
            max_packet,
        })
    }

    async fn connection(&mut self) -> Result<&mut MySqlConnection> {
        if self.conn.is_none() {
            let (mut conn, flavor) = self.db.connect().await?;
            self.max_packet = session_setup(&self.db, &mut conn, flavor).await?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("set above"))
    }

    async fn begin(&mut self) -> Result<()> {
        if self.in_tx {
            return Ok(());
        }
        let conn = self.connection().await?;
        if let Err(e) = conn.execute("START TRANSACTION").await {
            return Err(self.fail(e, "starting a transaction").await);
        }
        self.in_tx = true;
        self.tx_writes = 0;
        Ok(())
    }

    /// Turns a statement error into the error to return, rolling the transaction back and
    /// remembering writes that were lost with it.
    async fn fail(&mut self, e: sqlx::Error, what: &str) -> ConnectorError {
        let lost_connection = connection_lost(&e);
        let error = self.db.error(e, format!("{what} (`{}`)", self.table.name));
        if self.in_tx {
            if self.tx_writes > 0 {
                self.lost = Some(format!(
                    "the transaction on `{}` was rolled back after an error ({}); {} rows \
                     written since the last flush were lost and must be written again",
                    self.table.name, error.message, self.tx_writes
                ));
            }
            if !lost_connection {
                if let Some(conn) = self.conn.as_mut() {
                    let _ = conn.execute("ROLLBACK").await;
                }
            }
            self.in_tx = false;
            self.tx_writes = 0;
        }
        if lost_connection {
            self.conn = None;
        }
        error
    }

    /// The batch's columns that are written, normalized, with their table columns.
    fn batch_columns(&self, batch: &RecordBatch, need_key_only: bool) -> Result<Vec<BatchColumn>> {
        let schema = batch.schema();
        let mut out = Vec::new();
        for (i, f) in schema.fields().iter().enumerate() {
            let name = f.name();
            if self.ignored.contains(name) || (need_key_only && !self.key.contains(name)) {
                continue;
            }
            let column = self.table.column(name).cloned().ok_or_else(|| {
                ConnectorError::schema(format!(
                    "the batch has field `{name}`, which table `{}` lacks and the stream was \
                     not opened with",
                    self.table.name
                ))
            })?;
            let logical = DataType::from_arrow_field(f).ok_or_else(|| {
                ConnectorError::schema(format!(
                    "field `{name}` has Arrow type {}, which Lockstep does not carry",
                    f.data_type()
                ))
            })?;
            let array = normalize(batch.column(i), logical)
                .map_err(|e| ConnectorError::schema(format!("field `{name}`: {e}")))?;
            out.push(BatchColumn {
                name: name.clone(),
                logical,
                array,
                column,
            });
        }
        for k in &self.key {
            if !out.iter().any(|c| &c.name == k) {
                return Err(ConnectorError::schema(format!(
                    "the batch for `{}` lacks key field `{k}`",
                    self.table.name
                )));
            }
        }
        Ok(out)
    }

    /// The most rows one statement over `cols` takes: `max_rows`, or fewer when their
    /// parameters would pass MySQL's limit.
    fn full_chunk(&self, cols: &[BatchColumn], max_rows: usize) -> usize {
        (MAX_PARAMS / cols.len().max(1)).clamp(1, max_rows)
    }

    /// Splits rows into statements under the parameter, row and packet limits. Rows too big
    /// for any packet are rejected.
    fn chunks(
        &self,
        cols: &[BatchColumn],
        rows: impl Iterator<Item = usize>,
        max_rows: usize,
        rejected: &mut Vec<RejectedRow>,
    ) -> Vec<Vec<usize>> {
        let budget = (self.max_packet / 4 * 3).clamp(64 << 10, 16 << 20);
        let max_rows = self.full_chunk(cols, max_rows);
        let mut chunks = Vec::new();
        let mut current: Vec<usize> = Vec::new();
        let mut bytes = 0;
        for row in rows {
            let size: usize = cols
                .iter()
                .map(|c| wire_size(&c.array, row, c.logical) + 4)
                .sum();
            if size + 1024 > self.max_packet {
                rejected.push(RejectedRow {
                    row,
                    field: None,
                    reason: format!(
                        "the row takes about {size} bytes, more than the server's \
                         max_allowed_packet ({})",
                        self.max_packet
                    ),
                });
                continue;
            }
            if !current.is_empty() && (current.len() >= max_rows || bytes + size > budget) {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            current.push(row);
            bytes += size;
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        chunks
    }

    /// `(k1, k2) IN ((?, ?), ...)` over `rows`, with its parameters.
    fn key_filter(&self, cols: &[BatchColumn], rows: &[usize]) -> Result<(String, MySqlArguments)> {
        let keys: Vec<&BatchColumn> = self
            .key
            .iter()
            .map(|k| {
                cols.iter()
                    .find(|c| &c.name == k)
                    .expect("checked by batch_columns")
            })
            .collect();
        let names: Vec<String> = keys
            .iter()
            .map(|c| MySqlDialect.quote_ident(&c.name))
            .collect();
        let tuple: Vec<String> = keys.iter().map(|c| placeholder(&c.column)).collect();
        let one = if keys.len() == 1 {
            tuple[0].clone()
        } else {
            format!("({})", tuple.join(", "))
        };
        let lhs = if keys.len() == 1 {
            names[0].clone()
        } else {
            format!("({})", names.join(", "))
        };
        let mut args = MySqlArguments::default();
        for &row in rows {
            for c in &keys {
                bind_cell(&mut args, &c.array, row, c.logical).map_err(|e| {
                    ConnectorError::schema(format!("row {row}, field `{}`: {e}", c.name))
                })?;
            }
        }
        let list = vec![one; rows.len()].join(", ");
        Ok((format!("{lhs} IN ({list})"), args))
    }

    /// Whether `rows` hold no key twice, told exactly as the server tells keys apart. Only
    /// integer and date values written into integer and date columns are judged here: a text
    /// key's equality depends on its collation (case, accents, trailing spaces), a
    /// timestamp's on the column's fractional digits, and an integer stored in another type
    /// (`double`, `year`, `enum`, text) may meet another value there, so for those the
    /// answer is `false` and the caller counts on the server instead.
    fn keys_distinct(&self, cols: &[BatchColumn], rows: &[usize]) -> bool {
        let keys: Vec<&BatchColumn> = self
            .key
            .iter()
            .filter_map(|k| cols.iter().find(|c| &c.name == k))
            .collect();
        let exact = |c: &BatchColumn| match c.array.data_type() {
            t if t.is_integer() => matches!(
                c.column.data_type.as_str(),
                "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
            ),
            ArrowType::Date32 => c.column.data_type == "date",
            _ => false,
        };
        if keys.len() != self.key.len() || !keys.iter().all(|c| exact(c)) {
            return false;
        }
        let Ok(converter) = RowConverter::new(
            keys.iter()
                .map(|c| SortField::new(c.array.data_type().clone()))
                .collect(),
        ) else {
            return false;
        };
        let arrays: Vec<ArrayRef> = keys.iter().map(|c| c.array.clone()).collect();
        let Ok(converted) = converter.convert_columns(&arrays) else {
            return false;
        };
        let mut seen = HashSet::with_capacity(rows.len());
        rows.iter().all(|&row| seen.insert(converted.row(row)))
    }

    async fn count_existing(&mut self, cols: &[BatchColumn], rows: &[usize]) -> Result<u64> {
        let mut total = 0;
        for part in rows.chunks(MAX_KEYS) {
            let (filter, args) = self.key_filter(cols, part)?;
            let sql = format!(
                "SELECT CAST(COUNT(*) AS CHAR) FROM {} WHERE {filter}",
                MySqlDialect.quote_ident(&self.table.name)
            );
            let conn = self.connection().await?;
            match sqlx::query_with(&sql, args)
                .persistent(reuse_prepared(part.len(), MAX_KEYS))
                .fetch_one(conn)
                .await
            {
                Ok(row) => {
                    total += row
                        .try_get_unchecked::<String, _>(0)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                }
                Err(e) => return Err(self.fail(e, "counting existing keys").await),
            }
        }
        Ok(total)
    }

    /// Runs one multi-row upsert. `Ok(Err(e))` is a data error for one of `rows`.
    async fn upsert_rows(
        &mut self,
        cols: &[BatchColumn],
        rows: &[usize],
    ) -> Result<std::result::Result<(u64, u64, u64), sqlx::Error>> {
        let names: Vec<String> = cols
            .iter()
            .map(|c| MySqlDialect.quote_ident(&c.name))
            .collect();
        let tuple = format!("({})", vec!["?"; cols.len()].join(", "));
        let values = vec![tuple.as_str(); rows.len()].join(", ");
        let mut sql = format!(
            "INSERT INTO {} ({}) VALUES {values}",
            MySqlDialect.quote_ident(&self.table.name),
            names.join(", ")
        );
        if !self.key.is_empty() {
            let updates: Vec<String> = cols
                .iter()
                .filter(|c| !self.key.contains(&c.name))
                .map(|c| format!("{0} = VALUES({0})", MySqlDialect.quote_ident(&c.name)))
                .collect();
            let updates = if updates.is_empty() {
                let k = MySqlDialect.quote_ident(&self.key[0]);
                format!("{k} = {k}")
            } else {
                updates.join(", ")
            };
            sql.push_str(" ON DUPLICATE KEY UPDATE ");
            sql.push_str(&updates);
        }
        let mut args = MySqlArguments::default();
        for &row in rows {
            for c in cols {
                bind_cell(&mut args, &c.array, row, c.logical).map_err(|e| {
                    ConnectorError::schema(format!("row {row}, field `{}`: {e}", c.name))
                })?;
            }
        }
        let before = if self.key.is_empty() {
            0
        } else {
            self.count_existing(cols, rows).await?
        };
        let distinct = !self.key.is_empty() && self.keys_distinct(cols, rows);
        let full = self.full_chunk(cols, MAX_ROWS);
        let conn = self.connection().await?;
        let affected = match sqlx::query_with(&sql, args)
            .persistent(reuse_prepared(rows.len(), full))
            .execute(conn)
            .await
        {
            Ok(r) => r.rows_affected(),
            Err(e) if error_number(&e).is_some_and(|n| DATA_ERRORS.contains(&n)) => {
                return Ok(Err(e))
            }
            Err(e) => return Err(self.fail(e, "upserting rows").await),
        };
        let n = rows.len() as u64;
        if self.key.is_empty() {
            return Ok(Ok((affected, 0, 0)));
        }
        // With no key twice among the rows, every key of the rows exists now, and every row
        // whose key did not exist before was inserted; otherwise a second row of a key
        // updates the first, and the keys that exist now are counted on the server.
        let after = if distinct {
            n
        } else {
            self.count_existing(cols, rows).await?
        };
        // sqlx sets CLIENT_FOUND_ROWS, so each row counts 1 when inserted, 2 when updated
        // and 1 when it matched an identical row: affected = rows + updated.
        let inserted = after.saturating_sub(before).min(n);
        let updated = affected.saturating_sub(n).min(n - inserted);
        Ok(Ok((inserted, updated, n - inserted - updated)))
    }

    async fn write_rows(
        &mut self,
        cols: &[BatchColumn],
        rows: Vec<usize>,
        outcome: &mut WriteOutcome,
    ) -> Result<()> {
        // Statements that fail for data reasons are narrowed down to the offending row
        // (named by the server's "at row N", else by bisection); the others are retried.
        let mut work = vec![rows];
        while let Some(rows) = work.pop() {
            if rows.is_empty() {
                continue;
            }
            let e = match self.upsert_rows(cols, &rows).await? {
                Ok((i, u, s)) => {
                    *outcome.inserted.get_or_insert(0) += i;
                    *outcome.updated.get_or_insert(0) += u;
                    *outcome.unchanged.get_or_insert(0) += s;
                    self.tx_writes += rows.len() as u64;
                    continue;
                }
                Err(e) => e,
            };
            let message = match &e {
                sqlx::Error::Database(d) => d.message().to_owned(),
                other => other.to_string(),
            };
            let at = row_number(&message).filter(|n| (1..=rows.len()).contains(n));
            let culprit = match at {
                Some(n) => Some(n - 1),
                None if rows.len() == 1 => Some(0),
                None => None,
            };
            match culprit {
                Some(i) => {
                    let row = rows[i];
                    outcome.rejected.push(RejectedRow {
                        row,
                        field: field_in(&message, cols),
                        reason: format!("MySQL error {}: {message}", error_number(&e).unwrap_or(0)),
                    });
                    let rest: Vec<usize> = rows.into_iter().filter(|r| *r != row).collect();
                    work.push(rest);
                }
                None => {
                    let (a, b) = rows.split_at(rows.len() / 2);
                    work.push(b.to_vec());
                    work.push(a.to_vec());
                }
            }
        }
        Ok(())
    }
}

/// The `at row N` of a MySQL data error.
fn row_number(message: &str) -> Option<usize> {
    let at = message.rfind("at row ")?;
    let digits: String = message[at + 7..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The batch field a server message names, if any (the longest name that matches).
fn field_in(message: &str, cols: &[BatchColumn]) -> Option<String> {
    cols.iter()
        .filter(|c| {
            let q = c.name.replace('`', "``");
            message.contains(&format!("'{}'", c.name))
                || message.contains(&format!("`{q}`"))
                || message.contains(&format!(".{}`", c.name))
        })
        .max_by_key(|c| c.name.len())
        .map(|c| c.name.clone())
}

async fn create_table(
    db: &Db,
    conn: &mut MySqlConnection,
    flavor: Flavor,
    request: &OpenStreamRequest,
) -> Result<()> {
    let collation = key_collation(db, conn).await?;
    let body = table_body(
        &MySqlDialect,
        request,
        |name| request.key.iter().any(|k| k == name),
        |f, is_key| {
            create_type(f.data_type, is_key, flavor)
                .map_err(|e| ConnectorError::schema(format!("field `{}`: {e}", f.name)))
        },
        " NULL",
    )?;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({body}) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation}",
        MySqlDialect.quote_ident(&request.stream)
    );
    conn.execute(sql.as_str())
        .await
        .map_err(|e| db.error(e, format!("creating table `{}`", request.stream)))?;
    tracing::info!(stream = %request.stream, "table created");
    Ok(())
}

impl StreamWriter for MySqlWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome {
            inserted: Some(0),
            updated: Some(0),
            unchanged: Some(0),
            ..Default::default()
        };
        if batch.num_rows() == 0 {
            return Ok(outcome);
        }
        let cols = self.batch_columns(&batch, false)?;
        let mut good = Vec::with_capacity(batch.num_rows());
        'rows: for row in 0..batch.num_rows() {
            for c in &cols {
                if let Some(reason) = refuse(&c.array, row, c.logical, &c.column) {
                    outcome.rejected.push(RejectedRow {
                        row,
                        field: Some(c.name.clone()),
                        reason,
                    });
                    continue 'rows;
                }
            }
            good.push(row);
        }
        let chunks = self.chunks(&cols, good.into_iter(), MAX_ROWS, &mut outcome.rejected);
        self.begin().await?;
        for chunk in chunks {
            self.write_rows(&cols, chunk, &mut outcome).await?;
        }
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        if self.key.is_empty() {
            return Err(ConnectorError::unsupported(format!(
                "table `{}` has no key, so rows cannot be deleted by key",
                self.table.name
            )));
        }
        let mut outcome = WriteOutcome {
            deleted: Some(0),
            ..Default::default()
        };
        if keys.num_rows() == 0 {
            return Ok(outcome);
        }
        let cols = self.batch_columns(&keys, true)?;
        let chunks = self.chunks(&cols, 0..keys.num_rows(), MAX_KEYS, &mut outcome.rejected);
        self.begin().await?;
        for rows in chunks {
            let (filter, args) = self.key_filter(&cols, &rows)?;
            let sql = format!(
                "DELETE FROM {} WHERE {filter}",
                MySqlDialect.quote_ident(&self.table.name)
            );
            let full = self.full_chunk(&cols, MAX_KEYS);
            let conn = self.connection().await?;
            match sqlx::query_with(&sql, args)
                .persistent(reuse_prepared(rows.len(), full))
                .execute(conn)
                .await
            {
                Ok(r) => {
                    *outcome.deleted.get_or_insert(0) += r.rows_affected();
                    self.tx_writes += rows.len() as u64;
                }
                Err(e) => return Err(self.fail(e, "deleting rows").await),
            }
        }
        Ok(outcome)
    }

    async fn flush(&mut self) -> Result<()> {
        if let Some(message) = self.lost.take() {
            return Err(ConnectorError::transient(message));
        }
        if !self.in_tx {
            return Ok(());
        }
        let conn = self.connection().await?;
        if let Err(e) = conn.execute("COMMIT").await {
            return Err(self.fail(e, "committing").await);
        }
        self.in_tx = false;
        self.tx_writes = 0;
        Ok(())
    }

    /// An open transaction (writes not flushed) ends with the session, rolled back, as it
    /// would with a dropped connection.
    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            crate::session::close(conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_numbers_are_read_from_messages() {
        assert_eq!(
            row_number("Out of range value for column 'n' at row 2"),
            Some(2)
        );
        assert_eq!(row_number("Column 'id' cannot be null"), None);
    }
}
