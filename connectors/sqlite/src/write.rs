//! Writing to a table: creating or evolving it, upserts and deletes by key, and the
//! transaction that `flush` commits.
//!
//! The first write after a flush begins a transaction (`BEGIN IMMEDIATE`, so a competing
//! writer is waited for up to the busy timeout before anything is done, rather than failing
//! half-way); `flush` commits it. The connection runs in WAL mode with `synchronous = FULL`,
//! so a committed flush survives a power cut. All writers of one destination instance share
//! its connection and so its transaction.

use std::collections::HashSet;

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::evolution::plan_fields;
use lockstep_plugin_sdk::outcome::upsert_outcome;
use lockstep_plugin_sdk::{
    tracing, ConnectorError, DataType, FieldInfo, OpenStreamRequest, RejectedRow, Result,
    SchemaEvolution, StreamWriter, WriteOutcome,
};
use sqlx::sqlite::SqliteConnection;
use sqlx::{Executor, Row};

use crate::catalog::{self, Table};
use crate::convert::{sql_value, to_uuid, writable};
use crate::error::{db_error, db_message, is_data_error};
use crate::types::declared_type;
use crate::values::{numeric_text_loses_precision, SqlValue};
use crate::{Shared, State};
use lockstep_sql_kit::ddl::table_body;
use lockstep_sql_kit::upsert::conflict_action;
use lockstep_sql_kit::{Dialect, SqliteDialect};

/// Writes to one table.
pub struct SqliteWriter {
    shared: Shared,
    table: Table,
    /// The key columns, as the table spells them.
    key: Vec<String>,
    evolution: SchemaEvolution,
    /// The largest number of rows per statement, from the config.
    max_rows: Option<usize>,
}

/// Prepares table `request.stream` for writing: creates it, or checks and evolves it.
pub(crate) async fn open_writer(
    shared: Shared,
    request: OpenStreamRequest,
    max_rows: Option<usize>,
) -> Result<SqliteWriter> {
    let stream = request.stream.as_str();
    check_request(&request)?;
    let mut state = shared.lock().await;
    let conn = &mut state.conn;
    let table = match catalog::find_table(conn, stream).await? {
        Some(table) => table,
        None if !request.create_if_missing => {
            return Err(ConnectorError::schema(format!(
                "table `{stream}` does not exist in the SQLite database and the sync does not \
                 create missing streams; create it or allow stream creation"
            )))
        }
        None => {
            create_table(conn, &request).await?;
            catalog::load_table(conn, stream).await?
        }
    };
    let table = evolve(conn, table, &request.fields, request.schema_evolution).await?;

    let mut key = Vec::with_capacity(request.key.len());
    for k in &request.key {
        let column = table.column(k).ok_or_else(|| {
            ConnectorError::schema(format!(
                "table `{}` has no column `{k}` for the sync's key; add it (a key column cannot \
                 be added automatically) or change the key",
                table.name
            ))
        })?;
        key.push(column.name.clone());
    }
    if !table.has_unique_exactly(&key) {
        return Err(not_unique(&table, &key));
    }
    // ON CONFLICT needs a unique index on exactly these columns, with their collations: let
    // SQLite confirm it before the first write.
    let probe = format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO NOTHING",
        SqliteDialect.quote_ident(&table.name),
        idents(&key),
        SqliteDialect.placeholder_row(1, key.len()),
        idents(&key)
    );
    if let Err(e) = conn.prepare(probe.as_str()).await {
        return Err(ConnectorError::schema(format!(
            "table `{}` cannot be upserted by key ({}): {}; create a unique index on exactly \
             these columns: CREATE UNIQUE INDEX ... ON {} ({})",
            table.name,
            key.join(", "),
            db_message(&e),
            SqliteDialect.quote_ident(&table.name),
            idents(&key)
        )));
    }
    drop(state);
    Ok(SqliteWriter {
        shared,
        table,
        key,
        evolution: request.schema_evolution,
        max_rows,
    })
}

fn check_request(request: &OpenStreamRequest) -> Result<()> {
    let stream = &request.stream;
    if stream.is_empty() || stream.contains('\0') {
        return Err(ConnectorError::schema(format!(
            "`{stream}` cannot name a SQLite table (empty or containing NUL)"
        )));
    }
    if request.key.is_empty() {
        return Err(ConnectorError::schema(format!(
            "writing to `{stream}` needs a key: upserts and deletes find rows by it"
        )));
    }
    let mut seen = HashSet::new();
    for f in &request.fields {
        if f.name.is_empty() || f.name.contains('\0') {
            return Err(ConnectorError::schema(format!(
                "`{}` cannot name a SQLite column (empty or containing NUL)",
                f.name
            )));
        }
        if !seen.insert(f.name.to_ascii_lowercase()) {
            return Err(ConnectorError::schema(format!(
                "the fields written to `{stream}` name `{}` twice (SQLite column names ignore \
                 case)",
                f.name
            )));
        }
    }
    for k in &request.key {
        if !request
            .fields
            .iter()
            .any(|f| f.name.eq_ignore_ascii_case(k))
        {
            return Err(ConnectorError::schema(format!(
                "the key field `{k}` of `{stream}` is not among the fields written"
            )));
        }
    }
    Ok(())
}

/// SQLite's default limit on bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER).
const MAX_PARAMS: usize = 32_766;

fn idents(names: &[String]) -> String {
    SqliteDialect.ident_list(names.iter().map(String::as_str), "")
}

fn not_unique(table: &Table, key: &[String]) -> ConnectorError {
    ConnectorError::schema(format!(
        "the key ({}) is not unique in table `{}`: it is neither its primary key nor covered by a \
         unique index on exactly these columns, so rows cannot be upserted by it; create one \
         with CREATE UNIQUE INDEX {} ON {} ({}), or use the table's primary key ({}) as the key",
        key.join(", "),
        table.name,
        SqliteDialect.quote_ident(&format!("{}_lockstep_key", table.name)),
        SqliteDialect.quote_ident(&table.name),
        idents(key),
        if table.primary_key.is_empty() {
            "none".into()
        } else {
            table.primary_key.join(", ")
        }
    ))
}

/// `CREATE TABLE IF NOT EXISTS` with the declared types of [`declared_type`], NOT NULL for
/// key and non-nullable fields, and the key as primary key.
async fn create_table(conn: &mut SqliteConnection, request: &OpenStreamRequest) -> Result<()> {
    let body = table_body(
        &SqliteDialect,
        request,
        |name| request.key.iter().any(|k| k.eq_ignore_ascii_case(name)),
        |f, _| Ok(declared_type(f.data_type)),
        "",
    )?;
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS {} ({body})",
        SqliteDialect.quote_ident(&request.stream)
    );
    sqlx::query(&sql)
        .execute(&mut *conn)
        .await
        .map_err(db_error(format!("creating table `{}`", request.stream)))?;
    tracing::info!(table = %request.stream, "created table");
    Ok(())
}

/// Adds the `fields` the table lacks, or writes without them, or refuses, as `evolution`
/// says (the SDK's planner decides; this carries the plan out).
async fn evolve(
    conn: &mut SqliteConnection,
    table: Table,
    fields: &[FieldInfo],
    evolution: SchemaEvolution,
) -> Result<Table> {
    let plan = plan_fields(&table.name, fields, evolution, |name| {
        table.column(name).is_some()
    })?;
    if plan.added().is_empty() {
        return Ok(table);
    }
    for f in plan.added() {
        // SQLite cannot add a NOT NULL column without a default: added columns are
        // nullable, and existing rows hold NULL.
        let sql = format!(
            "ALTER TABLE {} ADD COLUMN {} {}",
            SqliteDialect.quote_ident(&table.name),
            SqliteDialect.quote_ident(&f.name),
            declared_type(f.data_type)
        );
        sqlx::query(&sql)
            .execute(&mut *conn)
            .await
            .map_err(db_error(format!(
                "adding column `{}` to table `{}`",
                f.name, table.name
            )))?;
        tracing::info!(table = %table.name, column = %f.name, "added column");
    }
    catalog::load_table(conn, &table.name).await
}

/// Begins the write transaction unless one is open.
async fn begin(state: &mut State) -> Result<()> {
    if !state.in_transaction {
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut state.conn)
            .await
            .map_err(db_error("beginning a write transaction"))?;
        state.in_transaction = true;
    }
    Ok(())
}

/// The batch's columns that are written: table column name, batch column index.
struct Plan {
    columns: Vec<String>,
    indexes: Vec<usize>,
    /// Whether SQLite converts numeric-looking text in each column (numeric affinity).
    converts_text: Vec<bool>,
    declared: Vec<String>,
    /// Whether each column carries UUIDs, written in canonical form.
    uuid: Vec<bool>,
    /// Positions of the key columns in `columns`.
    key_positions: Vec<usize>,
}

impl SqliteWriter {
    /// Matches the batch's columns to the table's, adding or skipping unknown ones as the
    /// schema evolution says. `keys_only` plans a delete.
    async fn plan(&mut self, batch: &RecordBatch, keys_only: bool) -> Result<Plan> {
        let schema = batch.schema();
        let mut plan = Plan {
            columns: Vec::new(),
            indexes: Vec::new(),
            converts_text: Vec::new(),
            declared: Vec::new(),
            uuid: Vec::new(),
            key_positions: Vec::new(),
        };
        let mut unknown = Vec::new();
        for (i, field) in schema.fields().iter().enumerate() {
            let is_key = self
                .key
                .iter()
                .any(|k| k.eq_ignore_ascii_case(field.name()));
            if keys_only && !is_key {
                continue;
            }
            if !writable(field.data_type()) {
                return Err(ConnectorError::schema(format!(
                    "field `{}` has Arrow type {}, which is not a Lockstep logical type",
                    field.name(),
                    field.data_type()
                )));
            }
            match self.table.column(field.name()) {
                Some(c) if c.generated => {
                    tracing::debug!(column = %c.name, "generated column not written");
                }
                Some(c) => {
                    if plan
                        .columns
                        .iter()
                        .any(|p: &String| p.eq_ignore_ascii_case(&c.name))
                    {
                        return Err(ConnectorError::schema(format!(
                            "the batch names column `{}` twice",
                            c.name
                        )));
                    }
                    plan.columns.push(c.name.clone());
                    plan.indexes.push(i);
                    plan.converts_text.push(c.affinity.converts_text());
                    plan.declared.push(c.declared.clone());
                    plan.uuid
                        .push(DataType::from_arrow_field(field) == Some(DataType::Uuid));
                }
                None => unknown.push(field.clone()),
            }
        }
        if !unknown.is_empty() && self.evolution != SchemaEvolution::Ignore {
            let fields = unknown
                .iter()
                .map(|f| {
                    let data_type = DataType::from_arrow_field(f).ok_or_else(|| {
                        ConnectorError::schema(format!("field `{}` has no logical type", f.name()))
                    })?;
                    Ok(FieldInfo {
                        name: f.name().clone(),
                        data_type,
                        nullable: true,
                        native_type: None,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let mut state = self.shared.lock().await;
            begin(&mut state).await?;
            let table = self.table.clone();
            self.table = evolve(&mut state.conn, table, &fields, self.evolution).await?;
            drop(state);
            return Box::pin(self.plan(batch, keys_only)).await;
        }
        for k in &self.key {
            match plan.columns.iter().position(|c| c == k) {
                Some(p) => plan.key_positions.push(p),
                None => {
                    return Err(ConnectorError::schema(format!(
                        "the batch written to `{}` lacks the key field `{k}`",
                        self.table.name
                    )))
                }
            }
        }
        Ok(plan)
    }

    /// The rows of `batch` as SQLite values, and the rows refused before reaching SQLite.
    fn convert(
        &self,
        batch: &RecordBatch,
        plan: &Plan,
    ) -> (Vec<(usize, Vec<SqlValue>)>, Vec<RejectedRow>) {
        let mut rows = Vec::with_capacity(batch.num_rows());
        let mut rejected = Vec::new();
        'rows: for row in 0..batch.num_rows() {
            let mut values = Vec::with_capacity(plan.columns.len());
            for (p, &i) in plan.indexes.iter().enumerate() {
                let column = &plan.columns[p];
                let reject = |reason: String| RejectedRow {
                    row,
                    field: Some(column.clone()),
                    reason,
                };
                let value = match sql_value(batch.column(i), row).and_then(|v| match v {
                    SqlValue::Text(_) if plan.uuid[p] => to_uuid(&v).map(SqlValue::Text),
                    v => Ok(v),
                }) {
                    Ok(v) => v,
                    Err(reason) => {
                        rejected.push(reject(reason));
                        continue 'rows;
                    }
                };
                if value.is_null() && plan.key_positions.contains(&p) {
                    rejected.push(reject("the key field is null".into()));
                    continue 'rows;
                }
                if let SqlValue::Text(text) = &value {
                    if plan.converts_text[p] && numeric_text_loses_precision(text) {
                        rejected.push(reject(format!(
                            "`{text}` would lose digits: column `{column}` is declared `{}`, and \
                             SQLite keeps only 15 significant digits of numbers stored in it; \
                             declare the column TEXT (or DECIMAL_TEXT(p,s)) to keep them",
                            plan.declared[p]
                        )));
                        continue 'rows;
                    }
                }
                values.push(value);
            }
            rows.push((row, values));
        }
        (rows, rejected)
    }

    /// Rows per statement: SQLite's parameter limit, and the configured batch size.
    fn rows_per_statement(&self, columns: usize) -> usize {
        let by_params = (MAX_PARAMS / columns.max(1)).max(1);
        self.max_rows.map_or(by_params, |m| m.min(by_params)).max(1)
    }

    fn upsert_sql(&self, plan: &Plan, rows: usize) -> String {
        let table = SqliteDialect.quote_ident(&self.table.name);
        let row = SqliteDialect.placeholder_row(1, plan.columns.len());
        let values = vec![row.as_str(); rows].join(", ");
        let others: Vec<&String> = plan
            .columns
            .iter()
            .filter(|c| !self.key.contains(c))
            .collect();
        let names: Vec<&str> = others.iter().map(|c| c.as_str()).collect();
        // Rows whose values are all unchanged are not touched: SQLite then does not count
        // them as changed, which tells updated from unchanged.
        let action = conflict_action(&SqliteDialect, &names, || {
            others
                .iter()
                .map(|c| {
                    format!(
                        "{table}.{0} IS NOT excluded.{0}",
                        SqliteDialect.quote_ident(c)
                    )
                })
                .collect::<Vec<_>>()
                .join(" OR ")
        });
        format!(
            "INSERT INTO {table} ({}) VALUES {values} ON CONFLICT ({}) {action}",
            idents(&plan.columns),
            idents(&self.key)
        )
    }

    /// Which of `rows` have a key that the table holds now, by position.
    async fn existing(
        &self,
        conn: &mut SqliteConnection,
        plan: &Plan,
        rows: &[&(usize, Vec<SqlValue>)],
    ) -> Result<Vec<bool>> {
        let table = SqliteDialect.quote_ident(&self.table.name);
        let n = plan.key_positions.len();
        let values: Vec<String> = (0..rows.len())
            .map(|i| format!("({i}, {})", vec!["?"; n].join(", ")))
            .collect();
        let on: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(j, k)| {
                format!(
                    "{table}.{} = v.column{}",
                    SqliteDialect.quote_ident(k),
                    j + 2
                )
            })
            .collect();
        let sql = format!(
            "SELECT v.column1 FROM (VALUES {}) AS v JOIN {table} ON {}",
            values.join(", "),
            on.join(" AND ")
        );
        let mut query = sqlx::query(&sql);
        for (_, values) in rows {
            for &p in &plan.key_positions {
                query = values[p].bind(query);
            }
        }
        let found = query.fetch_all(&mut *conn).await.map_err(db_error(format!(
            "looking up keys in table `{}`",
            self.table.name
        )))?;
        let mut exists = vec![false; rows.len()];
        for r in found {
            let i: i64 = r.try_get(0).map_err(db_error("looking up keys"))?;
            if let Some(slot) = exists.get_mut(i as usize) {
                *slot = true;
            }
        }
        Ok(exists)
    }
}

/// The column a constraint message names (`NOT NULL constraint failed: t.c` names `c`).
fn constraint_column(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("constraint failed: ")?;
    if rest.contains(',') {
        return None;
    }
    rest.rsplit_once('.').map(|(_, c)| c.to_owned())
}

impl StreamWriter for SqliteWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let plan = self.plan(&batch, false).await?;
        let (rows, mut rejected) = self.convert(&batch, &plan);
        let (mut inserted, mut updated, mut unchanged) = (0u64, 0u64, 0u64);
        let per_statement = self.rows_per_statement(plan.columns.len());
        let mut state = self.shared.lock().await;
        if !rows.is_empty() {
            begin(&mut state).await?;
        }
        let conn = &mut state.conn;
        let what = || format!("upserting into table `{}`", self.table.name);
        for chunk in rows.chunks(per_statement) {
            let chunk: Vec<&(usize, Vec<SqlValue>)> = chunk.iter().collect();
            let in_table = self.existing(conn, &plan, &chunk).await?;
            // A key repeated within the statement exists by the time its second row applies.
            let mut seen = HashSet::new();
            let existed: Vec<bool> = chunk
                .iter()
                .zip(&in_table)
                .map(|((_, values), &found)| {
                    let key = format!(
                        "{:?}",
                        plan.key_positions
                            .iter()
                            .map(|&p| &values[p])
                            .collect::<Vec<_>>()
                    );
                    !seen.insert(key) || found
                })
                .collect();
            let sql = self.upsert_sql(&plan, chunk.len());
            let mut query = sqlx::query(&sql);
            for (_, values) in &chunk {
                for v in values {
                    query = v.bind(query);
                }
            }
            match query.execute(&mut *conn).await {
                Ok(done) => {
                    let total = chunk.len() as u64;
                    let old = existed.iter().filter(|e| **e).count() as u64;
                    let new = total - old;
                    let changed_old = done.rows_affected().saturating_sub(new).min(old);
                    inserted += new;
                    updated += changed_old;
                    unchanged += old - changed_old;
                }
                Err(e) if is_data_error(&e) => {
                    // One row spoils the statement (SQLite undid all of it): redo the rows one
                    // by one to apply the good ones and report the bad ones.
                    let single = self.upsert_sql(&plan, 1);
                    for ((row, values), &existed) in chunk.iter().zip(&existed) {
                        let mut query = sqlx::query(&single);
                        for v in values {
                            query = v.bind(query);
                        }
                        match query.execute(&mut *conn).await {
                            Ok(done) => match (existed, done.rows_affected()) {
                                (false, _) => inserted += 1,
                                (true, 0) => unchanged += 1,
                                (true, _) => updated += 1,
                            },
                            Err(e) if is_data_error(&e) => {
                                let message = db_message(&e);
                                rejected.push(RejectedRow {
                                    row: *row,
                                    field: constraint_column(&message),
                                    reason: format!("SQLite refused the row: {message}"),
                                });
                            }
                            Err(e) => return Err(db_error(what())(e)),
                        }
                    }
                }
                Err(e) => return Err(db_error(what())(e)),
            }
        }
        Ok(upsert_outcome(inserted, updated, unchanged, rejected))
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let plan = self.plan(&keys, true).await?;
        let (rows, rejected) = self.convert(&keys, &plan);
        let mut deleted = 0u64;
        let n = plan.key_positions.len();
        let per_statement = self.rows_per_statement(n);
        let table = SqliteDialect.quote_ident(&self.table.name);
        let mut state = self.shared.lock().await;
        if !rows.is_empty() {
            begin(&mut state).await?;
        }
        for chunk in rows.chunks(per_statement) {
            // The key columns' affinity applies to the bound values on both forms, so a key
            // matches however SQLite stored it.
            let sql = if n == 1 {
                format!(
                    "DELETE FROM {table} WHERE {} IN ({})",
                    SqliteDialect.quote_ident(&self.key[0]),
                    vec!["?"; chunk.len()].join(", ")
                )
            } else {
                let row = SqliteDialect.placeholder_row(1, n);
                format!(
                    "DELETE FROM {table} WHERE ({}) IN (VALUES {})",
                    idents(&self.key),
                    vec![row.as_str(); chunk.len()].join(", ")
                )
            };
            let mut query = sqlx::query(&sql);
            for (_, values) in chunk {
                for &p in &plan.key_positions {
                    query = values[p].bind(query);
                }
            }
            let done = query
                .execute(&mut state.conn)
                .await
                .map_err(db_error(format!(
                    "deleting from table `{}`",
                    self.table.name
                )))?;
            deleted += done.rows_affected();
        }
        Ok(WriteOutcome {
            deleted: Some(deleted),
            rejected,
            ..WriteOutcome::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        let mut state = self.shared.lock().await;
        if state.in_transaction {
            sqlx::query("COMMIT")
                .execute(&mut state.conn)
                .await
                .map_err(db_error(format!(
                    "committing writes to table `{}`",
                    self.table.name
                )))?;
            state.in_transaction = false;
        }
        Ok(())
    }
}
