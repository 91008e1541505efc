//! The destination: upserts and deletes through binary COPY into session staging tables.
//!
//! Per upsert batch: `TRUNCATE` the writer's TEMP staging table, COPY the batch into it in
//! binary (encoded from Arrow directly, with the batch row index as first column), then one
//! `INSERT INTO target SELECT ... FROM staging ON CONFLICT (key) DO UPDATE ... WHERE (target
//! columns) IS DISTINCT FROM (excluded columns) RETURNING (xmax = 0)`, counted server-side into
//! inserted and updated; the rest of the batch is unchanged. When that statement fails for a
//! data reason (SQLSTATE classes 22 and 23), the batch is bisected by row index under
//! savepoints until the refused rows are isolated; they are reported as rejected with the
//! server's reason and the rest is written. Deletes COPY the keys into a staging table and run
//! one `DELETE ... USING`.
//!
//! Fast path: while the target was empty when the stream was opened, batches are copied into
//! the target directly (under a savepoint). The first batch that the target refuses (a key
//! that already exists, a constraint) is rolled back and replayed through staging, and the
//! writer stays on the staging path from then on.
//!
//! Transactions: the first write after a flush sends `BEGIN`; `flush` commits. Each write call
//! runs under a savepoint, so a failed call leaves earlier unflushed writes intact.

use std::collections::HashSet;

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::arrow::datatypes::Schema;
use lockstep_plugin_sdk::evolution::plan_evolution;
use lockstep_plugin_sdk::outcome::upsert_outcome;
use lockstep_plugin_sdk::{
    tracing, Catalog, ConnectorError, Context, DataType, DestinationConnector, OpenStreamRequest,
    RejectedRow, Result, SchemaEvolution, StreamWriter, WriteOutcome,
};
use sqlx::{PgConnection, Row};

use crate::catalog::qualified;
use crate::catalog::{load_tables, native_for, Column, RelKind, Table};
use crate::config::{Config, Settings};
use crate::copy_encode::{BatchEncoder, Enc, EncColumn, Prepared, HEADER, TRAILER};
use crate::error::{db_message, is_data_error, map_sqlx, sqlstate};
use crate::session::Session;
use lockstep_sql_kit::ddl::table_body;
use lockstep_sql_kit::dialect::row_of;
use lockstep_sql_kit::upsert::conflict_action;
use lockstep_sql_kit::{Dialect, PostgresDialect};

/// Bytes of COPY data sent per message.
const CHUNK: usize = 1 << 20;
/// More refused rows than this in one batch fail the batch instead.
const MAX_REJECTED: usize = 1000;
/// The staging tables' row index column.
const ROW_COLUMN: &str = "__lockstep_row";

/// The PostgreSQL destination.
pub struct PgDestination {
    session: Session,
}

impl DestinationConnector for PgDestination {
    type Config = Config;
    type Writer = PgWriter;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        Ok(PgDestination {
            session: Session::open(config).await?,
        })
    }

    async fn check(&mut self) -> Result<()> {
        self.session.check().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.session.discover().await
    }

    async fn close(&mut self) {
        self.session.close().await;
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<PgWriter> {
        let settings = self.session.settings.clone();
        let label = format!("writing `{}`", request.stream);
        let mut conn = settings.connect().await?;
        let result = open_writer(&mut conn, &settings, &request).await;
        match result {
            Ok((table, key, empty)) => Ok(PgWriter {
                conn: WriterConn(Some(conn)),
                qualified: qualified(&settings.schema, &table.name),
                settings,
                table,
                key,
                evolution: request.schema_evolution,
                label,
                in_tx: false,
                broken: None,
                direct: empty,
                plans: Vec::new(),
                delete_plan: None,
                next_id: 0,
                warned_generated: HashSet::new(),
            }),
            Err(e) => Err(settings.scrub_error(e.context(label))),
        }
    }
}

/// Creates or checks the target; returns it, the key, and whether it is empty.
async fn open_writer(
    conn: &mut PgConnection,
    settings: &Settings,
    request: &OpenStreamRequest,
) -> Result<(Table, Vec<String>, bool)> {
    let schema = &settings.schema;
    let target = qualified(schema, &request.stream);
    // Staging tables are session-local; give them room before the first one is touched.
    sqlx::raw_sql("SET temp_buffers = '64MB'")
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let existing = load_tables(conn, schema, Some(&request.stream))
        .await?
        .into_iter()
        .next();
    let mut created = false;
    let table = match existing {
        None => {
            if !request.create_if_missing {
                return Err(ConnectorError::schema(format!(
                    "table {target} does not exist and the sync does not create streams \
                     (`create_if_missing` is false); create it or allow creation"
                )));
            }
            let key = &request.key;
            if key.is_empty() {
                return Err(ConnectorError::schema(
                    "creating a table needs a key (the fields that identify a row)",
                ));
            }
            for k in key {
                if !request.fields.iter().any(|f| &f.name == k) {
                    return Err(ConnectorError::schema(format!(
                        "key field `{k}` is not among the stream's fields"
                    )));
                }
            }
            let body = table_body(
                &PostgresDialect,
                request,
                |name| key.iter().any(|k| k == name),
                |f, _| Ok(native_for(f.data_type)),
                "",
            )?;
            let ddl = format!("CREATE TABLE IF NOT EXISTS {target} ({body})");
            sqlx::raw_sql(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                PostgresDialect.quote_ident(schema)
            ))
            .execute(&mut *conn)
            .await
            .map_err(map_sqlx)?;
            sqlx::raw_sql(&ddl)
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
            tracing::info!(table = %target, "created the table");
            created = true;
            reload(conn, schema, &request.stream).await?
        }
        Some(table) => table,
    };
    if table.kind != RelKind::Table {
        return Err(ConnectorError::schema(format!(
            "{target} is a {}, which is read-only here; write to a table",
            table.kind.describe()
        )));
    }
    let key = if request.key.is_empty() {
        table.keys.primary_key.clone()
    } else {
        request.key.clone()
    };
    if key.is_empty() {
        return Err(ConnectorError::schema(format!(
            "{target} has no primary key and the sync gives no key; set the sync's key"
        )));
    }
    for k in &key {
        if table.column(k).is_none() {
            return Err(ConnectorError::schema(format!(
                "key field `{k}` is not a column of {target}; columns: {}",
                table.column_names()
            )));
        }
    }
    if !table.has_unique_key(&key) {
        return Err(ConnectorError::schema(format!(
            "the key ({}) is not unique in {target}: upserts need a primary key or unique \
             index on exactly these columns; add one with CREATE UNIQUE INDEX ON {target} ({})",
            key.join(", "),
            PostgresDialect.ident_list(key.iter().map(String::as_str), "")
        )));
    }
    let plan = plan_evolution(request, |name| table.column(name).is_some())?;
    let table = if plan.added().is_empty() {
        table
    } else {
        for f in plan.added() {
            let ddl = format!(
                "ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {} {}",
                PostgresDialect.quote_ident(&f.name),
                native_for(f.data_type)
            );
            sqlx::raw_sql(&ddl)
                .execute(&mut *conn)
                .await
                .map_err(map_sqlx)?;
        }
        tracing::info!(table = %target, columns = %plan.names(), "added columns");
        reload(conn, schema, &request.stream).await?
    };
    let empty = created || {
        let sql = format!("SELECT NOT EXISTS (SELECT 1 FROM {target})");
        sqlx::query_scalar::<_, bool>(&sql)
            .fetch_one(&mut *conn)
            .await
            .map_err(map_sqlx)?
    };
    Ok((table, key, empty))
}

async fn reload(conn: &mut PgConnection, schema: &str, name: &str) -> Result<Table> {
    load_tables(conn, schema, Some(name))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| {
            ConnectorError::schema(format!("table `{name}` vanished while being opened"))
        })
}

/// One written column of a batch shape.
struct PlanColumn {
    batch_index: usize,
    column: Column,
    enc: Enc,
    logical: DataType,
}

/// The statements for batches of one shape (column names and types).
struct UpsertPlan {
    shape: Vec<(String, DataType)>,
    columns: Vec<PlanColumn>,
    stage: String,
    create_stage: String,
    staged: bool,
    copy_stage: String,
    copy_direct: Option<String>,
    insert: String,
    insert_dedupe: String,
}

struct DeletePlan {
    shape: Vec<(String, DataType)>,
    columns: Vec<PlanColumn>,
    stage: String,
    create_stage: String,
    staged: bool,
    copy_stage: String,
    delete: String,
}

/// The writer's connection. Only [`StreamWriter::close`] takes it out, as the host lets the
/// writer go, so every other use finds it.
struct WriterConn(Option<PgConnection>);

impl std::ops::Deref for WriterConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        self.0
            .as_ref()
            .expect("a writer's connection is taken out only as the writer is dropped")
    }
}

impl std::ops::DerefMut for WriterConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        self.0
            .as_mut()
            .expect("a writer's connection is taken out only as the writer is dropped")
    }
}

/// Writes one table.
pub struct PgWriter {
    conn: WriterConn,
    settings: Settings,
    table: Table,
    qualified: String,
    key: Vec<String>,
    evolution: SchemaEvolution,
    label: String,
    in_tx: bool,
    /// Why the transaction cannot go on, once it cannot.
    broken: Option<String>,
    /// Copy straight into the target (it was empty and nothing conflicted yet).
    direct: bool,
    plans: Vec<UpsertPlan>,
    delete_plan: Option<DeletePlan>,
    next_id: usize,
    warned_generated: HashSet<String>,
}

enum CopyError {
    Db(sqlx::Error),
    Other(ConnectorError),
}

impl From<ConnectorError> for CopyError {
    fn from(e: ConnectorError) -> Self {
        CopyError::Other(e)
    }
}

impl CopyError {
    fn into_connector(self) -> ConnectorError {
        match self {
            CopyError::Db(e) => map_sqlx(e),
            CopyError::Other(e) => e,
        }
    }
}

async fn exec(conn: &mut PgConnection, sql: &str) -> Result<()> {
    sqlx::raw_sql(sql).execute(conn).await.map_err(map_sqlx)?;
    Ok(())
}

/// COPYs `rows` rows of `cols` with `sql`; returns the rows the server took and the rows the
/// encoder refused.
async fn copy_rows(
    conn: &mut PgConnection,
    sql: &str,
    cols: &[EncColumn<'_>],
    rows: usize,
    with_row_index: bool,
    direct: bool,
) -> std::result::Result<(u64, Vec<RejectedRow>), CopyError> {
    let mut encoder = BatchEncoder::new(cols, with_row_index, direct)?;
    let mut copy = conn.copy_in_raw(sql).await.map_err(CopyError::Db)?;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + (64 << 10));
    buf.extend_from_slice(HEADER);
    let mut row = 0;
    loop {
        row = encoder.encode(row, rows, &mut buf, CHUNK);
        if row >= rows {
            buf.extend_from_slice(TRAILER);
        }
        copy.send(buf.as_slice()).await.map_err(CopyError::Db)?;
        buf.clear();
        if row >= rows {
            break;
        }
    }
    let copied = copy.finish().await.map_err(CopyError::Db)?;
    Ok((copied, encoder.rejected))
}

impl PgWriter {
    fn guard(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(ConnectorError::transient(format!(
                "{}: the connection's transaction was lost ({why}); the writes since the last \
                 flush were rolled back; open the stream again and replay them",
                self.label
            ))),
            None => Ok(()),
        }
    }

    async fn begin(&mut self) -> Result<()> {
        if !self.in_tx {
            exec(&mut self.conn, "BEGIN").await?;
            self.in_tx = true;
        }
        exec(&mut self.conn, "SAVEPOINT lockstep_call").await
    }

    /// Ends a write call: keeps its work on success, undoes only it on failure.
    async fn end_call<T>(&mut self, result: Result<T>) -> Result<T> {
        let end = match &result {
            Ok(_) => exec(&mut self.conn, "RELEASE SAVEPOINT lockstep_call").await,
            Err(_) => {
                exec(
                    &mut self.conn,
                    "ROLLBACK TO SAVEPOINT lockstep_call; RELEASE SAVEPOINT lockstep_call",
                )
                .await
            }
        };
        if let Err(e) = end {
            self.broken = Some(e.message.clone());
            // The original error says more than the failed cleanup.
            return Err(self.finish_error(result.err().unwrap_or(e)));
        }
        result.map_err(|e| self.finish_error(e))
    }

    fn finish_error(&self, e: ConnectorError) -> ConnectorError {
        self.settings.scrub_error(e.context(&self.label))
    }

    /// The plan for a batch's shape, built on first sight.
    fn plan_index(&mut self, schema: &Schema) -> Result<usize> {
        let shape: Vec<(String, DataType)> = schema
            .fields()
            .iter()
            .map(|f| {
                DataType::from_arrow_field(f)
                    .map(|t| (f.name().clone(), t))
                    .ok_or_else(|| {
                        ConnectorError::schema(format!(
                            "field `{}` has Arrow type {}, which Lockstep does not carry",
                            f.name(),
                            f.data_type()
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        if let Some(i) = self.plans.iter().position(|p| p.shape == shape) {
            return Ok(i);
        }
        let columns = self.plan_columns(&shape, false)?;
        for k in &self.key {
            if !columns.iter().any(|c| &c.column.name == k) {
                return Err(ConnectorError::schema(format!(
                    "the batch lacks key field `{k}`; upserts find rows by ({})",
                    self.key.join(", ")
                )));
            }
        }
        self.next_id += 1;
        let stage = PostgresDialect.quote_ident(&format!("lockstep_stage_{}", self.next_id));
        let names: Vec<&str> = columns.iter().map(|c| c.column.name.as_str()).collect();
        let cols_sql = PostgresDialect.ident_list(names.iter().copied(), "");
        let exprs: Vec<String> = columns
            .iter()
            .map(|c| {
                format!(
                    "s.{}::{}",
                    PostgresDialect.quote_ident(&c.column.name),
                    c.column.cast_type
                )
            })
            .collect();
        let non_key: Vec<&PlanColumn> = columns
            .iter()
            .filter(|c| !self.key.contains(&c.column.name))
            .collect();
        let names: Vec<&str> = non_key.iter().map(|c| c.column.name.as_str()).collect();
        let conflict = conflict_action(&PostgresDialect, &names, || {
            let compared = |prefix: &str| -> Vec<String> {
                non_key
                    .iter()
                    .map(|c| {
                        let v = format!("{prefix}{}", PostgresDialect.quote_ident(&c.column.name));
                        if c.column.comparable() {
                            v
                        } else {
                            format!("{v}::text")
                        }
                    })
                    .collect()
            };
            format!(
                "{} IS DISTINCT FROM {}",
                row_of(&compared("t.")),
                row_of(&compared("EXCLUDED."))
            )
        });
        let keys = PostgresDialect.ident_list(self.key.iter().map(String::as_str), "");
        let skeys = PostgresDialect.ident_list(self.key.iter().map(String::as_str), "s.");
        let range = format!(
            "s.{0} >= $1 AND s.{0} < $2",
            PostgresDialect.quote_ident(ROW_COLUMN)
        );
        let insert_with = |select: String| {
            format!(
                "WITH w AS (INSERT INTO {} AS t ({cols_sql}) OVERRIDING SYSTEM VALUE {select} \
                 ON CONFLICT ({keys}) {conflict} RETURNING (t.xmax = 0) AS ins) \
                 SELECT count(*) FILTER (WHERE ins), count(*) FILTER (WHERE NOT ins) FROM w",
                self.qualified
            )
        };
        let insert = insert_with(format!(
            "SELECT {} FROM pg_temp.{stage} s WHERE {range}",
            exprs.join(", ")
        ));
        // Later rows win when a batch holds a key twice.
        let insert_dedupe = insert_with(format!(
            "SELECT DISTINCT ON ({skeys}) {} FROM pg_temp.{stage} s WHERE {range} \
             ORDER BY {skeys}, s.{} DESC",
            exprs.join(", "),
            PostgresDialect.quote_ident(ROW_COLUMN)
        ));
        let stage_defs: Vec<String> = std::iter::once(format!(
            "{} integer",
            PostgresDialect.quote_ident(ROW_COLUMN)
        ))
        .chain(columns.iter().map(|c| {
            format!(
                "{} {}",
                PostgresDialect.quote_ident(&c.column.name),
                c.enc.stage_type()
            )
        }))
        .collect();
        let plan = UpsertPlan {
            shape,
            create_stage: format!(
                "CREATE TEMP TABLE IF NOT EXISTS {stage} ({})",
                stage_defs.join(", ")
            ),
            copy_stage: format!(
                "COPY pg_temp.{stage} ({}, {cols_sql}) FROM STDIN (FORMAT binary)",
                PostgresDialect.quote_ident(ROW_COLUMN)
            ),
            copy_direct: columns.iter().all(|c| c.enc.direct_ok()).then(|| {
                format!(
                    "COPY {} ({cols_sql}) FROM STDIN (FORMAT binary)",
                    self.qualified
                )
            }),
            columns,
            stage,
            staged: false,
            insert,
            insert_dedupe,
        };
        self.plans.push(plan);
        Ok(self.plans.len() - 1)
    }

    /// The target columns a batch shape writes, by the schema evolution rule.
    fn plan_columns(
        &mut self,
        shape: &[(String, DataType)],
        keys_only: bool,
    ) -> Result<Vec<PlanColumn>> {
        let mut columns = Vec::new();
        for (i, (name, logical)) in shape.iter().enumerate() {
            if keys_only && !self.key.contains(name) {
                continue;
            }
            match self.table.column(name) {
                Some(c) if c.generated => {
                    if self.warned_generated.insert(name.clone()) {
                        tracing::warn!(column = %name, "not writing a generated column");
                    }
                }
                Some(c) => columns.push(PlanColumn {
                    batch_index: i,
                    column: c.clone(),
                    enc: Enc::choose(c, *logical),
                    logical: *logical,
                }),
                None if self.evolution == SchemaEvolution::Ignore => {}
                None => {
                    return Err(ConnectorError::schema(format!(
                        "field `{name}` is not a column of {}; columns: {}. Open the stream \
                         with this field (schema evolution `add-columns` adds it) or use \
                         `ignore`",
                        self.qualified,
                        self.table.column_names()
                    )))
                }
            }
        }
        Ok(columns)
    }

    async fn upsert_batch(&mut self, index: usize, batch: &RecordBatch) -> Result<WriteOutcome> {
        let rows = batch.num_rows();
        let plan = &self.plans[index];
        let prepared = plan
            .columns
            .iter()
            .map(|c| Prepared::new(batch.column(c.batch_index), c.logical, &c.column.name))
            .collect::<Result<Vec<_>>>()?;
        let cols: Vec<EncColumn> = plan
            .columns
            .iter()
            .zip(&prepared)
            .map(|(c, data)| EncColumn {
                column: &c.column,
                enc: c.enc,
                data,
            })
            .collect();
        if !plan.staged {
            exec(&mut self.conn, &plan.create_stage).await?;
        }
        if let (true, Some(sql)) = (self.direct, &plan.copy_direct) {
            exec(&mut self.conn, "SAVEPOINT lockstep_try").await?;
            match copy_rows(&mut self.conn, sql, &cols, rows, false, true).await {
                Ok((copied, rejected)) => {
                    exec(&mut self.conn, "RELEASE SAVEPOINT lockstep_try").await?;
                    return Ok(WriteOutcome {
                        inserted: Some(copied),
                        updated: Some(0),
                        unchanged: Some(0),
                        deleted: None,
                        rejected,
                    });
                }
                Err(CopyError::Db(e)) if sqlstate(&e).is_some_and(|c| is_data_error(&c)) => {
                    exec(
                        &mut self.conn,
                        "ROLLBACK TO SAVEPOINT lockstep_try; RELEASE SAVEPOINT lockstep_try",
                    )
                    .await?;
                    tracing::debug!(reason = %db_message(&e), "leaving the direct COPY path");
                    self.direct = false;
                }
                Err(e) => return Err(e.into_connector()),
            }
        }
        let plan = &self.plans[index];
        exec(&mut self.conn, &format!("TRUNCATE pg_temp.{}", plan.stage)).await?;
        let (_, mut rejected) =
            copy_rows(&mut self.conn, &plan.copy_stage, &cols, rows, true, false)
                .await
                .map_err(|e| e.into_connector().context("copying into the staging table"))?;
        let (inserted, updated) = self.insert_staged(index, rows, &mut rejected).await?;
        let unchanged = (rows as u64)
            .saturating_sub(rejected.len() as u64)
            .saturating_sub(inserted + updated);
        Ok(upsert_outcome(inserted, updated, unchanged, rejected))
    }

    /// Moves the staged rows into the target, isolating refused rows by bisection.
    async fn insert_staged(
        &mut self,
        index: usize,
        rows: usize,
        rejected: &mut Vec<RejectedRow>,
    ) -> Result<(u64, u64)> {
        let mut ranges = vec![(0usize, rows)];
        let mut dedupe = false;
        let (mut inserted, mut updated) = (0u64, 0u64);
        while let Some((lo, hi)) = ranges.pop() {
            let plan = &self.plans[index];
            let sql = if dedupe {
                &plan.insert_dedupe
            } else {
                &plan.insert
            };
            exec(&mut self.conn, "SAVEPOINT lockstep_try").await?;
            let result = sqlx::query(sql)
                .bind(lo as i32)
                .bind(hi as i32)
                .fetch_one(&mut *self.conn)
                .await;
            match result {
                Ok(row) => {
                    exec(&mut self.conn, "RELEASE SAVEPOINT lockstep_try").await?;
                    inserted += row.get::<i64, _>(0) as u64;
                    updated += row.get::<i64, _>(1) as u64;
                }
                Err(e) => {
                    let code = sqlstate(&e).unwrap_or_default();
                    if code != "21000" && !is_data_error(&code) {
                        return Err(map_sqlx(e));
                    }
                    exec(
                        &mut self.conn,
                        "ROLLBACK TO SAVEPOINT lockstep_try; RELEASE SAVEPOINT lockstep_try",
                    )
                    .await?;
                    if code == "21000" && !dedupe {
                        // The batch holds a key twice: keep its last row per key.
                        dedupe = true;
                        ranges.push((lo, hi));
                    } else if hi - lo <= 1 {
                        let field = match &e {
                            sqlx::Error::Database(db) => db
                                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                                .and_then(|pg| pg.column().map(str::to_owned)),
                            _ => None,
                        };
                        let field = match field {
                            Some(f) => Some(f),
                            None => self.probe_field(index, lo).await?,
                        };
                        rejected.push(RejectedRow {
                            row: lo,
                            field,
                            reason: db_message(&e),
                        });
                        if rejected.len() > MAX_REJECTED {
                            return Err(ConnectorError::schema(format!(
                                "more than {MAX_REJECTED} rows of one batch were refused; the \
                                 first: row {}: {}",
                                rejected[0].row, rejected[0].reason
                            )));
                        }
                    } else {
                        let mid = lo + (hi - lo) / 2;
                        ranges.push((mid, hi));
                        ranges.push((lo, mid));
                    }
                }
            }
        }
        Ok((inserted, updated))
    }

    /// Finds the column whose cast refuses row `row` of the staging table, if one does.
    async fn probe_field(&mut self, index: usize, row: usize) -> Result<Option<String>> {
        let plan = &self.plans[index];
        let probes: Vec<(String, String)> = plan
            .columns
            .iter()
            .map(|c| {
                (
                    c.column.name.clone(),
                    format!(
                        "SELECT s.{}::{} FROM pg_temp.{} s WHERE s.{} = $1",
                        PostgresDialect.quote_ident(&c.column.name),
                        c.column.cast_type,
                        plan.stage,
                        PostgresDialect.quote_ident(ROW_COLUMN)
                    ),
                )
            })
            .collect();
        for (name, sql) in probes {
            exec(&mut self.conn, "SAVEPOINT lockstep_probe").await?;
            let result = sqlx::query(&sql)
                .bind(row as i32)
                .fetch_all(&mut *self.conn)
                .await;
            let release = if result.is_ok() {
                "RELEASE SAVEPOINT lockstep_probe"
            } else {
                "ROLLBACK TO SAVEPOINT lockstep_probe; RELEASE SAVEPOINT lockstep_probe"
            };
            exec(&mut self.conn, release).await?;
            if result.is_err() {
                return Ok(Some(name));
            }
        }
        Ok(None)
    }

    async fn delete_batch(&mut self, keys: &RecordBatch) -> Result<WriteOutcome> {
        let schema = keys.schema();
        let shape: Vec<(String, DataType)> = schema
            .fields()
            .iter()
            .filter_map(|f| DataType::from_arrow_field(f).map(|t| (f.name().clone(), t)))
            .filter(|(n, _)| self.key.contains(n))
            .collect();
        if shape.len() != self.key.len() {
            return Err(ConnectorError::schema(format!(
                "a delete batch needs the key fields ({}); it has {}",
                self.key.join(", "),
                schema
                    .fields()
                    .iter()
                    .map(|f| format!("`{}`", f.name()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self.delete_plan.as_ref().is_none_or(|p| p.shape != shape) {
            let columns = self.plan_columns(&shape, true)?;
            // Shape indexes count only key fields; map them back to batch columns.
            let columns = columns
                .into_iter()
                .map(|mut c| {
                    c.batch_index = schema.index_of(&c.column.name).unwrap_or(c.batch_index);
                    c
                })
                .collect::<Vec<_>>();
            self.next_id += 1;
            let stage = PostgresDialect.quote_ident(&format!("lockstep_keys_{}", self.next_id));
            let names =
                PostgresDialect.ident_list(columns.iter().map(|c| c.column.name.as_str()), "");
            let defs: Vec<String> = columns
                .iter()
                .map(|c| {
                    format!(
                        "{} {}",
                        PostgresDialect.quote_ident(&c.column.name),
                        c.enc.stage_type()
                    )
                })
                .collect();
            let on: Vec<String> = columns
                .iter()
                .map(|c| {
                    let n = PostgresDialect.quote_ident(&c.column.name);
                    format!("t.{n} = s.{n}::{}", c.column.cast_type)
                })
                .collect();
            self.delete_plan = Some(DeletePlan {
                shape,
                create_stage: format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {stage} ({})",
                    defs.join(", ")
                ),
                copy_stage: format!("COPY pg_temp.{stage} ({names}) FROM STDIN (FORMAT binary)"),
                delete: format!(
                    "DELETE FROM {} AS t USING pg_temp.{stage} s WHERE {}",
                    self.qualified,
                    on.join(" AND ")
                ),
                columns,
                stage,
                staged: false,
            });
        }
        let plan = self.delete_plan.as_ref().expect("built above");
        let prepared = plan
            .columns
            .iter()
            .map(|c| Prepared::new(keys.column(c.batch_index), c.logical, &c.column.name))
            .collect::<Result<Vec<_>>>()?;
        let cols: Vec<EncColumn> = plan
            .columns
            .iter()
            .zip(&prepared)
            .map(|(c, data)| EncColumn {
                column: &c.column,
                enc: c.enc,
                data,
            })
            .collect();
        if !plan.staged {
            exec(&mut self.conn, &plan.create_stage).await?;
        }
        exec(&mut self.conn, &format!("TRUNCATE pg_temp.{}", plan.stage)).await?;
        let (_, rejected) = copy_rows(
            &mut self.conn,
            &plan.copy_stage,
            &cols,
            keys.num_rows(),
            false,
            false,
        )
        .await
        .map_err(|e| {
            e.into_connector()
                .context("copying keys into the staging table")
        })?;
        let deleted = sqlx::query(&plan.delete)
            .execute(&mut *self.conn)
            .await
            .map_err(map_sqlx)?
            .rows_affected();
        Ok(WriteOutcome {
            deleted: Some(deleted),
            rejected,
            ..WriteOutcome::default()
        })
    }
}

/// Hooks for the connector's own benchmark only (feature `bench-hooks`), never for
/// production callers.
impl PgWriter {
    /// For benchmarks: always go through staging.
    #[cfg(feature = "bench-hooks")]
    pub fn direct_off_for_bench(&mut self) {
        self.direct = false;
    }

    /// For benchmarks: encodes a batch for the target without sending it; returns its size.
    #[cfg(feature = "bench-hooks")]
    pub fn encode_only_for_bench(&mut self, batch: &RecordBatch) -> Result<usize> {
        let index = self.plan_index(&batch.schema())?;
        let plan = &self.plans[index];
        let prepared = plan
            .columns
            .iter()
            .map(|c| Prepared::new(batch.column(c.batch_index), c.logical, &c.column.name))
            .collect::<Result<Vec<_>>>()?;
        let cols: Vec<EncColumn> = plan
            .columns
            .iter()
            .zip(&prepared)
            .map(|(c, data)| EncColumn {
                column: &c.column,
                enc: c.enc,
                data,
            })
            .collect();
        let mut encoder = BatchEncoder::new(&cols, false, true)?;
        let mut buf = Vec::with_capacity(CHUNK + (64 << 10));
        let (mut row, mut total) = (0, 0);
        while row < batch.num_rows() {
            row = encoder.encode(row, batch.num_rows(), &mut buf, CHUNK);
            total += buf.len();
            buf.clear();
        }
        Ok(total)
    }
}

impl StreamWriter for PgWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        self.guard()?;
        if batch.num_rows() == 0 {
            return Ok(WriteOutcome {
                inserted: Some(0),
                updated: Some(0),
                unchanged: Some(0),
                ..WriteOutcome::default()
            });
        }
        let index = self
            .plan_index(&batch.schema())
            .map_err(|e| self.finish_error(e))?;
        if let Err(e) = self.begin().await {
            self.broken = Some(e.message.clone());
            return Err(self.finish_error(e));
        }
        let result = self.upsert_batch(index, &batch).await;
        let result = self.end_call(result).await;
        if result.is_ok() {
            self.plans[index].staged = true;
        }
        result
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        self.guard()?;
        if keys.num_rows() == 0 {
            return Ok(WriteOutcome {
                deleted: Some(0),
                ..WriteOutcome::default()
            });
        }
        if let Err(e) = self.begin().await {
            self.broken = Some(e.message.clone());
            return Err(self.finish_error(e));
        }
        let result = self.delete_batch(&keys).await;
        let result = self.end_call(result).await;
        if result.is_ok() {
            if let Some(p) = self.delete_plan.as_mut() {
                p.staged = true;
            }
        }
        result
    }

    async fn flush(&mut self) -> Result<()> {
        self.guard()?;
        if self.in_tx {
            let result = exec(&mut self.conn, "COMMIT").await;
            self.in_tx = false;
            if let Err(e) = result {
                if e.kind == ErrorKind::TRANSIENT {
                    self.broken = Some(e.message.clone());
                }
                return Err(self.finish_error(e.context("committing")));
            }
        }
        Ok(())
    }

    /// An open transaction (writes not flushed) ends with the session, rolled back, as it
    /// would with a dropped connection.
    async fn close(&mut self) {
        if let Some(conn) = self.conn.0.take() {
            crate::config::close(conn).await;
        }
    }
}
