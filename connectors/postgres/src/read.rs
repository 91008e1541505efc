//! The source: reads a table or view batch by batch with one binary COPY per batch.
//!
//! Each batch is `COPY (SELECT cols FROM t WHERE <after position> ORDER BY <order> LIMIT n)
//! TO STDOUT (FORMAT binary)`, decoded straight into Arrow builders. The position (the last
//! row's key, and cursor for incremental reads) is handed to the server as session settings
//! bound as parameters (`set_config`), and read back in the query as
//! `(SELECT current_setting('lockstep.k0')::type)`: COPY takes no parameters, and values never
//! go into SQL text. Each reader owns its own connection (reads by keys share one, below), on
//! a worker thread that fetches one batch ahead.
//!
//! A read by keys (`request.keys`, the `read-by-keys` feature) sends the keys the same way:
//! each chunk of at most [`KEYS_PER_QUERY`] keys (and never more than the batch size) is one
//! JSON setting, and the query selects `WHERE (k1, k2) IN (SELECT (e->>0)::type1, (e->>1)::type2
//! FROM jsonb_array_elements(current_setting('lockstep.keys')::jsonb) e)`: each key value is
//! cast to its column's type, so comparisons are the column's own (numbers as numbers,
//! timestamps as timestamps), composite keys compare as rows, and the statement's size does not
//! grow with the number of keys. Keys that match no row are simply absent from the result.
//! Reads by keys run on one thread and connection that the source keeps between them
//! (`key_reads.rs`).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::arrow::datatypes::SchemaRef;
use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
use lockstep_plugin_sdk::resolve::unknown_field;
use lockstep_plugin_sdk::{
    checkpoint_after, resolve_read, resume_point, BatchReader, Catalog, ConnectorError, Context,
    DataType, FieldInfo, ReadRequest, ResolvedRead, Result, SourceConnector,
};
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::mpsc;

use crate::catalog::qualified;
use crate::catalog::{ReadExpr, Table, Wire};
use crate::config::{effective_batch_size, Config, Settings};
use crate::copy_decode::CopyDecoder;
use crate::error::map_sqlx;
use crate::key_reads::KeyReads;
use crate::session::Session;
use crate::types::{checkpoint_value, json_to_text};
use lockstep_sql_kit::dialect::row_of;
use lockstep_sql_kit::{keyset_after, Dialect, PostgresDialect};

/// The PostgreSQL source.
pub struct PgSource {
    session: Session,
    ctx: Context,
    /// The thread and connection of its reads by keys, started with the first one.
    key_reads: Option<KeyReads>,
}

impl SourceConnector for PgSource {
    type Config = Config;
    type Reader = PgReader;

    async fn open(config: Config, ctx: Context) -> Result<Self> {
        Ok(PgSource {
            session: Session::open(config).await?,
            ctx,
            key_reads: None,
        })
    }

    async fn check(&mut self) -> Result<()> {
        self.session.check().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.session.discover().await
    }

    async fn close(&mut self) {
        let key_reads = self.key_reads.take();
        let key_reads = async move {
            if let Some(key_reads) = key_reads {
                key_reads.close().await;
            }
        };
        tokio::join!(key_reads, self.session.close());
    }

    async fn read(&mut self, request: ReadRequest) -> Result<PgReader> {
        if request.mode == lockstep_plugin_sdk::ReadMode::Cdc
            && request.cdc.as_ref().is_some_and(|c| c.drop)
        {
            return crate::cdc::drop_read(&self.session, &request, self.ctx.clone()).await;
        }
        let Some(table) = self.session.table(&request.stream).await? else {
            return Err(self.session.unknown_stream(&request.stream).await);
        };
        if request.mode == lockstep_plugin_sdk::ReadMode::Cdc {
            return crate::cdc::start(&self.session, table, request, self.ctx.clone());
        }
        if let Some(hash) = &request.range_hash {
            return crate::range_hash::start(
                &self.session.settings,
                &table,
                &request,
                hash,
                self.ctx.clone(),
            )
            .map_err(|e| self.session.settings.scrub_error(e));
        }
        if request.key_summary {
            let summary = crate::summary::key_summary(&self.session.settings, &table, &request)
                .await
                .map_err(|e| self.session.settings.scrub_error(e))?;
            let label = format!("summarizing the keys of `{}`", table.name);
            return Ok(PgReader::ready(&label, self.ctx.clone(), summary));
        }
        let mut plan = ReadPlan::new(&table, &request, &self.session)?;
        // A read by keys goes to the source's thread for them while it is free.
        if plan.keys.is_some() {
            if self.key_reads.is_none() {
                // A thread that cannot start leaves the read to start one of its own.
                self.key_reads = KeyReads::start(self.session.settings.clone()).ok();
            }
            if let Some(key_reads) = &self.key_reads {
                match key_reads.try_start(plan, self.ctx.clone()) {
                    Ok(reader) => return Ok(reader),
                    Err(back) => plan = *back,
                }
            }
        }
        PgReader::start(plan, self.session.settings.clone(), self.ctx.clone())
    }
}

/// The most keys one query of a read by keys asks for.
pub const KEYS_PER_QUERY: usize = 1000;

/// A read by keys: the key columns and the chunks of keys still to read.
struct KeyFilter {
    /// The condition selecting the rows whose key is in the `lockstep.keys` setting.
    condition: String,
    /// Each chunk's keys as a JSON array of arrays of text (null for a SQL NULL).
    chunks: VecDeque<String>,
}

impl KeyFilter {
    fn new(
        table: &Table,
        key: &[String],
        keys: &[Vec<Value>],
        limit: usize,
        label: &str,
    ) -> Result<Self> {
        let mut columns = Vec::new();
        let mut casts = Vec::new();
        for (i, name) in key.iter().enumerate() {
            let c = table.column(name).ok_or_else(|| {
                ConnectorError::schema(format!(
                    "{label}: key field `{name}` is not a column; columns: {}",
                    table.column_names()
                ))
            })?;
            columns.push(PostgresDialect.quote_ident(&c.name));
            casts.push(format!("(e->>{i})::{}", c.cast_type));
        }
        let condition = format!(
            "{} IN (SELECT {} FROM jsonb_array_elements(current_setting('lockstep.keys')::jsonb) \
             AS e)",
            row_of(&columns),
            casts.join(", ")
        );
        let mut chunks = VecDeque::new();
        for chunk in keys.chunks(KEYS_PER_QUERY.min(limit).max(1)) {
            let mut texts = Vec::with_capacity(chunk.len());
            for k in chunk {
                if k.len() != key.len() {
                    return Err(ConnectorError::config(format!(
                        "{label}: a key to read has {} values but the key ({}) has {} fields",
                        k.len(),
                        key.join(", "),
                        key.len()
                    )));
                }
                texts.push(Value::Array(
                    k.iter()
                        .map(|v| json_to_text(v).map_or(Value::Null, Value::String))
                        .collect(),
                ));
            }
            chunks.push_back(Value::Array(texts).to_string());
        }
        Ok(KeyFilter { condition, chunks })
    }
}

/// Everything a reader needs to build its queries.
pub(crate) struct ReadPlan {
    label: String,
    /// `SELECT <exprs> FROM <table>`.
    select: String,
    /// The quoted order columns: cursor first (incremental), then the key.
    order: Vec<String>,
    /// The cast type of each order column.
    order_types: Vec<String>,
    incremental: bool,
    limit: usize,
    columns: Vec<(String, Wire)>,
    logical: Vec<DataType>,
    /// The batch carries the first `out_fields` selected columns.
    out_fields: usize,
    schema: SchemaRef,
    /// Indexes of the order columns among the selected ones.
    order_idx: Vec<usize>,
    /// Text of the last row's order values; `None` before the first row.
    position: Option<Vec<String>>,
    /// The lookback interval, for the first query only.
    lookback: Option<String>,
    /// The last batch was short: nothing is left.
    done: bool,
    /// The bytes of values each column held in the last batch: the next batch's buffers
    /// start that large (with an eighth more), so that they need no growing.
    value_bytes: Vec<usize>,
    /// Only these keys (`request.keys`); the read then ignores positions and checkpoints.
    keys: Option<KeyFilter>,
}

impl ReadPlan {
    /// What the read is, for messages.
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn new(table: &Table, request: &ReadRequest, session: &Session) -> Result<Self> {
        let label = format!("reading `{}`", table.name);
        let stream = table.stream_info();
        let ResolvedRead {
            fields,
            key,
            cursor,
            order,
        } = resolve_read(request, &stream)?;
        let wanted: Vec<&FieldInfo> = fields.iter().collect();
        let incremental = cursor.is_some();
        let mut order_types = Vec::new();
        for name in &order {
            let c = table
                .column(name)
                .ok_or_else(|| unknown_field(&stream, name, "key or cursor field"))?;
            if c.expr == ReadExpr::Json {
                return Err(ConnectorError::schema(format!(
                    "{label}: `{name}` is an array column ({}); it cannot order a read",
                    c.native
                )));
            }
            order_types.push(c.cast_type.clone());
        }
        let mut lookback = session.settings.lookback.clone();
        if incremental && lookback.is_some() {
            let cursor = table.column(&order[0]).expect("checked above");
            if !matches!(cursor.base.as_str(), "date" | "timestamp" | "timestamptz") {
                return Err(ConnectorError::config(format!(
                    "{label}: `lookback` applies to date and timestamp cursors, but `{}` is {}; \
                     remove `lookback` from the config or choose another cursor",
                    cursor.name, cursor.native
                )));
            }
        }
        if !incremental {
            lookback = None;
        }

        let mut selected: Vec<&FieldInfo> = wanted.clone();
        for name in &order {
            if !selected.iter().any(|f| &f.name == name) {
                selected.push(stream.field(name).expect("order columns exist"));
            }
        }
        let columns: Vec<(String, Wire)> = selected
            .iter()
            .map(|f| {
                let c = table.column(&f.name).expect("fields come from the table");
                (c.name.clone(), c.wire)
            })
            .collect();
        let exprs: Vec<String> = selected
            .iter()
            .map(|f| {
                table
                    .column(&f.name)
                    .expect("fields come from the table")
                    .read_expr()
            })
            .collect();
        let order_idx = order
            .iter()
            .map(|n| {
                selected
                    .iter()
                    .position(|f| &f.name == n)
                    .expect("selected above")
            })
            .collect();
        let out: Vec<FieldInfo> = wanted.iter().map(|f| (*f).clone()).collect();
        let schema = Arc::new(arrow_schema(&out));
        let position = parse_checkpoint(request, &order, &label)?;
        let limit = effective_batch_size(request.batch_size, session.settings.batch_size);
        let keys = match &request.keys {
            Some(keys) => Some(KeyFilter::new(table, &key, keys, limit, &label)?),
            None => None,
        };
        Ok(ReadPlan {
            keys,
            select: format!(
                "SELECT {} FROM {}",
                exprs.join(", "),
                qualified(&session.settings.schema, &table.name)
            ),
            order: order
                .iter()
                .map(|n| PostgresDialect.quote_ident(n))
                .collect(),
            order_types,
            incremental,
            limit,
            logical: selected.iter().map(|f| f.data_type).collect(),
            columns,
            out_fields: out.len(),
            schema,
            order_idx,
            position,
            lookback,
            label,
            done: false,
            value_bytes: Vec::new(),
        })
    }

    /// The COPY statement for the next chunk of a read by keys and the setting it reads.
    fn next_keys_query(&self, chunk: &str) -> (String, Vec<(String, String)>) {
        let condition = self.keys.as_ref().map_or("", |k| k.condition.as_str());
        let sql = format!(
            "COPY ({} WHERE {condition} ORDER BY {}) TO STDOUT (FORMAT binary)",
            self.select,
            self.order.join(", ")
        );
        (sql, vec![("lockstep.keys".into(), chunk.to_owned())])
    }

    /// The COPY statement for the next batch and the settings it reads.
    fn next_query(&self) -> (String, Vec<(String, String)>) {
        let mut params: Vec<(String, String)> = Vec::new();
        let mut conditions: Vec<String> = Vec::new();
        let setting = |name: &str, ty: &str| format!("(SELECT current_setting('{name}')::{ty})");
        if self.incremental {
            conditions.push(format!("{} IS NOT NULL", self.order[0]));
        }
        if let Some(values) = &self.position {
            match (&self.lookback, self.incremental) {
                (Some(lookback), true) => {
                    params.push(("lockstep.p0".into(), values[0].clone()));
                    params.push(("lockstep.lookback".into(), lookback.clone()));
                    conditions.push(format!(
                        "{} >= (SELECT current_setting('lockstep.p0')::{} \
                         - current_setting('lockstep.lookback')::interval)",
                        self.order[0], self.order_types[0]
                    ));
                }
                _ => {
                    // A checkpoint may carry fewer values than there are order columns (a
                    // cursor without a key): the predicate compares the prefix it has.
                    let mut exprs = Vec::new();
                    for (i, (ty, value)) in self.order_types.iter().zip(values).enumerate() {
                        let name = format!("lockstep.p{i}");
                        exprs.push(Some(setting(&name, ty)));
                        params.push((name, value.clone()));
                    }
                    if !exprs.is_empty() {
                        let cut = keyset_after(&PostgresDialect, &self.order, &exprs, false);
                        conditions.push(cut.sql);
                    }
                }
            }
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "COPY ({}{filter} ORDER BY {} LIMIT {}) TO STDOUT (FORMAT binary)",
            self.select,
            self.order.join(", "),
            self.limit
        );
        (sql, params)
    }
}

/// The order values a checkpoint resumes after, as text.
fn parse_checkpoint(
    request: &ReadRequest,
    order: &[String],
    label: &str,
) -> Result<Option<Vec<String>>> {
    let Some(point) = resume_point(request, order.len())? else {
        return Ok(None);
    };
    point
        .order_values()
        .iter()
        .map(|v| {
            json_to_text(v).ok_or_else(|| {
                ConnectorError::config(format!(
                    "{label}: the checkpoint {} cannot be resumed: it holds a null",
                    request.checkpoint.as_ref().unwrap_or(&Value::Null)
                ))
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

pub(crate) type BatchResult = Result<Option<(RecordBatch, Value)>>;

/// Reads one stream. A worker thread with its own connection and runtime fetches the batches
/// one ahead of the caller, so that reading the next batch overlaps with whatever the host
/// does with the current one (writing it, typically). At most two batches exist at a time:
/// the one handed out and the one being fetched.
pub struct PgReader {
    label: String,
    ctx: Context,
    /// Asks the worker for one more batch.
    go: mpsc::UnboundedSender<()>,
    batches: mpsc::Receiver<BatchResult>,
    /// A batch was asked for and not received yet.
    pending: bool,
    done: bool,
}

impl PgReader {
    fn start(plan: ReadPlan, settings: Settings, ctx: Context) -> Result<Self> {
        let label = plan.label.clone();
        let (go, go_rx) = mpsc::unbounded_channel();
        let (tx, batches) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("lockstep-pg-reader".into())
            .spawn(move || worker(plan, settings, go_rx, tx))
            .map_err(|e| ConnectorError::internal(format!("cannot start a reader thread: {e}")))?;
        Ok(Self::from_channels(label, ctx, go, batches))
    }

    /// A reader of a worker speaking the protocol of [`worker`] (one batch sent on `batches`
    /// per `go` received), already asked for its first batch.
    pub(crate) fn from_channels(
        label: String,
        ctx: Context,
        go: mpsc::UnboundedSender<()>,
        batches: mpsc::Receiver<BatchResult>,
    ) -> Self {
        let mut reader = PgReader {
            label,
            ctx,
            go,
            batches,
            pending: false,
            done: false,
        };
        reader.ask();
        reader
    }

    /// A reader whose batches a worker thread of the caller's makes (a cdc read), speaking
    /// the same protocol as [`worker`]: one batch sent on `batches` per `go` received.
    pub(crate) fn with_worker(
        label: String,
        ctx: Context,
        spawn: impl FnOnce(mpsc::UnboundedReceiver<()>, mpsc::Sender<BatchResult>) + Send + 'static,
    ) -> Result<Self> {
        let (go, go_rx) = mpsc::unbounded_channel();
        let (tx, batches) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("lockstep-pg-cdc".into())
            .spawn(move || spawn(go_rx, tx))
            .map_err(|e| ConnectorError::internal(format!("cannot start a reader thread: {e}")))?;
        Ok(Self::from_channels(label, ctx, go, batches))
    }

    /// A reader of one batch made already (a key summary), without a worker.
    pub(crate) fn ready(label: &str, ctx: Context, batch: RecordBatch) -> Self {
        let (go, _) = mpsc::unbounded_channel();
        let (tx, batches) = mpsc::channel(2);
        // The channel has room for both, and its receiver is alive: neither send fails.
        let _ = tx.try_send(Ok(Some((batch, Value::Null))));
        let _ = tx.try_send(Ok(None));
        PgReader {
            label: label.to_owned(),
            ctx,
            go,
            batches,
            pending: false,
            done: false,
        }
    }

    fn ask(&mut self) {
        if !self.pending && self.go.send(()).is_ok() {
            self.pending = true;
        }
    }
}

/// A reader worker thread's own runtime; `None` after telling the reader why there is none.
pub(crate) fn worker_runtime(tx: &mpsc::Sender<BatchResult>) -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => Some(runtime),
        Err(e) => {
            let _ = tx.blocking_send(Err(ConnectorError::internal(format!(
                "cannot start the reader's runtime: {e}"
            ))));
            None
        }
    }
}

/// The worker: fetches one batch per request until the end, the reader's drop, or forever
/// failing. A transient failure drops the connection; the next request reconnects and
/// retries the same batch.
fn worker(
    mut plan: ReadPlan,
    settings: Settings,
    mut go: mpsc::UnboundedReceiver<()>,
    tx: mpsc::Sender<BatchResult>,
) {
    let Some(runtime) = worker_runtime(&tx) else {
        return;
    };
    runtime.block_on(async move {
        let mut conn: Option<PgConnection> = None;
        while go.recv().await.is_some() {
            let result = async {
                if conn.is_none() {
                    conn = Some(settings.connect().await?);
                }
                fetch(conn.as_mut().expect("set just above"), &mut plan).await
            }
            .await;
            let result = result.map_err(|e| {
                if e.kind == ErrorKind::TRANSIENT {
                    conn = None;
                }
                settings.scrub_error(e.context(&plan.label))
            });
            let end = matches!(result, Ok(None));
            if tx.send(result).await.is_err() || end {
                break;
            }
        }
        // The reader has its last batch (or is gone): the connection ends while it goes on.
        if let Some(conn) = conn.take() {
            crate::config::close(conn).await;
        }
    });
}

/// Runs one COPY of `plan`'s columns with its settings: the row count and the columns.
async fn copy_rows(
    conn: &mut PgConnection,
    plan: &mut ReadPlan,
    sql: &str,
    params: &[(String, String)],
) -> Result<(usize, Vec<lockstep_plugin_sdk::arrow::array::ArrayRef>)> {
    if !params.is_empty() {
        let calls: Vec<String> = (0..params.len())
            .map(|i| format!("set_config(${}, ${}, false)", 2 * i + 1, 2 * i + 2))
            .collect();
        let query = format!("SELECT {}", calls.join(", "));
        let mut q = sqlx::query(&query);
        for (name, value) in params {
            q = q.bind(name).bind(value);
        }
        q.execute(&mut *conn).await.map_err(map_sqlx)?;
    }
    let hints: Vec<usize> = plan.value_bytes.iter().map(|b| b + b / 8).collect();
    let mut decoder =
        CopyDecoder::with_value_bytes(&plan.columns, plan.limit.min(65_536), 1 << 16, &hints);
    {
        let mut stream = conn.copy_out_raw(sql).await.map_err(map_sqlx)?;
        while let Some(chunk) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            let chunk = chunk.map_err(map_sqlx)?;
            decoder
                .feed(&chunk)
                .map_err(|e| ConnectorError::schema(e.to_string()))?;
        }
    }
    let rows = decoder.rows();
    plan.value_bytes = decoder.value_bytes();
    let columns = decoder
        .finish()
        .map_err(|e| ConnectorError::internal(e.to_string()))?;
    Ok((rows, columns))
}

/// The batch of the first selected columns of a COPY's result.
fn out_batch(
    plan: &ReadPlan,
    mut columns: Vec<lockstep_plugin_sdk::arrow::array::ArrayRef>,
) -> Result<RecordBatch> {
    columns.truncate(plan.out_fields);
    RecordBatch::try_new(plan.schema.clone(), columns)
        .map_err(|e| ConnectorError::schema(e.to_string()))
}

/// Fetches the next chunk of a read by keys that finds rows; chunks that find none are
/// skipped. A failed chunk stays first, so that a retry reads it again.
async fn fetch_keys(conn: &mut PgConnection, plan: &mut ReadPlan) -> BatchResult {
    loop {
        let Some(chunk) = plan.keys.as_ref().and_then(|k| k.chunks.front().cloned()) else {
            plan.done = true;
            return Ok(None);
        };
        let (sql, params) = plan.next_keys_query(&chunk);
        let (rows, columns) = copy_rows(conn, plan, &sql, &params).await?;
        if let Some(keys) = plan.keys.as_mut() {
            keys.chunks.pop_front();
        }
        if rows > 0 {
            return Ok(Some((out_batch(plan, columns)?, Value::Null)));
        }
    }
}

/// Fetches the next batch of `plan`. A failed batch leaves the position where it was, so
/// that a retry reads it again.
pub(crate) async fn fetch(conn: &mut PgConnection, plan: &mut ReadPlan) -> BatchResult {
    if plan.done {
        return Ok(None);
    }
    if plan.keys.is_some() {
        return fetch_keys(conn, plan).await;
    }
    let (sql, params) = plan.next_query();
    let (rows, columns) = copy_rows(conn, plan, &sql, &params).await?;
    plan.lookback = None;
    if rows < plan.limit {
        plan.done = true;
    }
    if rows == 0 {
        return Ok(None);
    }
    let last = rows - 1;
    let values: Vec<Value> = plan
        .order_idx
        .iter()
        .map(|&i| checkpoint_value(&columns[i], last, plan.logical[i]))
        .collect();
    let texts = values
        .iter()
        .zip(&plan.order)
        .map(|(v, name)| {
            json_to_text(v).ok_or_else(|| {
                ConnectorError::schema(format!(
                    "the key field {name} is NULL in a row; paging needs keys without NULLs \
                     (choose another `key`)"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    plan.position = Some(texts);
    let checkpoint = checkpoint_after(plan.incremental, values);
    Ok(Some((out_batch(plan, columns)?, checkpoint)))
}

impl BatchReader for PgReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if self.done {
            return Ok(None);
        }
        if self.ctx.is_cancelled() {
            return Err(ConnectorError::new(
                ErrorKind::CANCELLED,
                format!("{}: cancelled", self.label),
            ));
        }
        self.ask();
        let result = self.batches.recv().await.unwrap_or_else(|| {
            Err(ConnectorError::internal(format!(
                "{}: the reader thread stopped",
                self.label
            )))
        });
        self.pending = false;
        match &result {
            Ok(Some(_)) => self.ask(),
            Ok(None) => self.done = true,
            Err(_) => {}
        }
        result
    }
}
