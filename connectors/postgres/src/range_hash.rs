//! Range hashes (the `range-hash` feature): the server counts and hashes the records of each
//! range of a table's key space, or lists the (key, row hash) pairs of some ranges, for
//! `lockstep verify` to compare two tables without moving their rows.
//!
//! The queries are the SQL kit's ([`lockstep_sql_kit::range_hash`]); this module gives them
//! PostgreSQL's pieces. On PostgreSQL 14 and later (algorithm [`ALGORITHM`]) each value of a
//! record is hashed by its type's own extended hash function where that function tells apart
//! every two values the engine's comparison tells apart, and through the value's canonical
//! text otherwise (see `hash_exprs` and docs/verify.md for the argument, type by type).
//! Values whose hash function takes a seed and has no seed-dependent special values (text,
//! integers, uuid) are hashed one by one, seeded by their position, a null as a constant of
//! its position, and XORed; the others (floats, decimals, timestamps, dates, bytea, booleans)
//! go into one `hash_record_extended` of a row, XORed in too. XOR is linear, so the result is
//! finished above the fence by hashing its 32-bit fold and its high half (which together are
//! the 64 bits) with two seeded hashes: the sum of a range's row hashes then sees two records
//! swapping a value. Older servers, which lack `hash_record_extended`, hash each record's row
//! output `ROW(...)::text` instead (algorithm [`TEXT_ALGORITHM`]); two sides of different
//! algorithms are never compared (verify reads both sides then).
//!
//! Summaries and listings stream: the query's rows come in range order and go to the host in
//! batches of [`ROWS_PER_BATCH`], so neither the connector nor the host holds a table's worth
//! of summaries.
//!
//! Invariants:
//! - The text output of a value depends on session settings (time zone, date style, float
//!   digits, interval style, bytea output); the connection that hashes fixes all of them, so
//!   two servers give the same text for the same value. Floats use `extra_float_digits = 3`,
//!   which is exact on every server version (two different values never print alike).
//! - Text is hashed under the `C` collation (bytes), whatever the column's collation: a
//!   nondeterministic collation's hash would call `a` and `A` equal.
//! - Summaries name their algorithm; the host compares only summaries of the same algorithm.
//! - Identifiers are quoted; the listed ranges are a bound parameter.

use std::future::poll_fn;
use std::pin::Pin;

use futures_core::Stream;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::protocol::{RangeEntry, RangeHashRequest, RangeSummary};
use lockstep_plugin_sdk::{ConnectorError, Context, ReadRequest, Result};
use lockstep_sql_kit::range_hash::RangeHashDialect;
use lockstep_sql_kit::range_hash::{check_request, list_sql, summary_sql, HashColumn, HashPart};
use lockstep_sql_kit::{Dialect, PostgresDialect};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::sync::mpsc;

use crate::catalog::{qualified, Column, ReadExpr, Table, Wire};
use crate::config::Settings;
use crate::error::map_sqlx;
use crate::read::{worker_runtime, BatchResult, PgReader};

/// The range-hash algorithm of PostgreSQL 14 and later: each type's extended hash.
pub const ALGORITHM: &str = "postgres-range-hash-v3";
/// The algorithm of older servers: the hash of each record's row output.
pub const TEXT_ALGORITHM: &str = "postgres-range-hash-v1";

/// The first server version with `hash_record_extended`.
const RECORD_HASH_VERSION: i64 = 140_000;

/// The most summaries or listed records one batch carries.
pub const ROWS_PER_BATCH: usize = 4096;

/// The session settings under which every value's text is canonical, the grouping of a
/// summary (a few ranges a record, which the planner cannot know) stays in memory, and the
/// planner hands the hashing to parallel workers: it costs each hash function as one
/// operator, far below what it costs, so by default it thinks that moving rows from the
/// workers to the leader costs more than hashing them in one process. JIT compilation is
/// off: each process of the query compiled anew, for expressions that are mostly calls.
const CANONICAL_SETTINGS: [&str; 9] = [
    "SET TIME ZONE 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
    "SET work_mem = '64MB'",
    "SET parallel_tuple_cost = 0.0001",
    "SET parallel_setup_cost = 10",
    "SET jit = off",
];

/// PostgreSQL's pieces of the kit's range-hash queries: `typed` on servers with
/// `hash_record_extended`, the row output's text otherwise.
struct Pg {
    typed: bool,
}

impl Dialect for Pg {
    fn quote_char(&self) -> char {
        PostgresDialect.quote_char()
    }
    fn placeholder(&self, n: usize) -> String {
        PostgresDialect.placeholder(n)
    }
    fn nulls_first(&self) -> bool {
        PostgresDialect.nulls_first()
    }
}

impl Pg {
    fn all(columns: &[HashColumn]) -> String {
        let parts: Vec<&str> = columns
            .iter()
            .flat_map(|c| c.hash.iter().map(HashPart::value))
            .collect();
        parts.join(", ")
    }
}

/// The seed of the seeded hash of the value at `position` in a record (0, 1 and 2 are the
/// finishing hash's and the row's).
fn seed(position: usize) -> u64 {
    3 + position as u64
}

/// What a null at `position` in a record hashes as: a constant of the position, a different
/// pseudo-random 64-bit value for each (splitmix64 of the position).
fn null_hash(position: usize) -> i64 {
    let mut z = (position as u64).wrapping_add(0x6c6f_636b_7374_6570);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as i64
}

impl RangeHashDialect for Pg {
    fn key_hash(&self, key: &[HashColumn]) -> String {
        if !self.typed {
            return format!("hashtextextended(ROW({})::text, 1)", Pg::all(key));
        }
        // A single integer key hashes directly (its 32-bit fold is no concern here: equal
        // keys share a range, and unequal ones may).
        if let [one] = key {
            if let Some(int) = &one.int_key {
                return format!("hashint8extended(({int})::int8, 1)");
            }
        }
        format!("hash_record_extended(ROW({}), 1)", Pg::all(key))
    }
    fn row_hash(&self, columns: &[HashColumn]) -> String {
        if !self.typed {
            // The row output quotes a value when needed, writes a null as nothing and an
            // empty text as `""`: unambiguous, and one output call a value.
            return format!("hashtextextended(ROW({})::text, 0)", Pg::all(columns));
        }
        let mut terms = Vec::new();
        let mut in_row = Vec::new();
        for (position, part) in columns.iter().flat_map(|c| &c.hash).enumerate() {
            match part {
                HashPart::Seeded { function, value } => terms.push(format!(
                    "coalesce({function}({value}, {}), '{}'::int8)",
                    seed(position),
                    null_hash(position)
                )),
                HashPart::Value(value) => in_row.push(value.as_str()),
            }
        }
        // Seed 2: a null column hashes as 0, and no value may do so by rule (a float's zero
        // hashes as the seed, a numeric's zero as the seed minus one, a numeric's NaN as the
        // seed).
        if !in_row.is_empty() {
            terms.push(format!(
                "hash_record_extended(ROW({}), 2)",
                in_row.join(", ")
            ));
        }
        terms.join(" # ")
    }
    fn finish_hash(&self, inner: &str) -> String {
        if !self.typed {
            return inner.to_owned();
        }
        // `hashint8extended` hashes the 32-bit fold of its argument (the low half XOR the high
        // half, or its complement); with the high half hashed too, the two determine all 64
        // bits, and each hash's 64-bit output depends on its input non-linearly.
        format!("(hashint8extended({inner}, 0) # hashint4extended(({inner} >> 32)::int4, 1))")
    }
    fn fence(&self) -> &'static str {
        " OFFSET 0"
    }
    fn sum_text(&self, hash: &str) -> String {
        format!("sum({hash})::text")
    }
    fn int_text(&self, int: &str) -> String {
        format!("({int})::text")
    }
    fn range_in_list(&self, range: &str) -> String {
        format!("{range} = ANY($1::int8[])")
    }
    fn value_text(&self, value: &str) -> String {
        format!("({value})::text")
    }
}

/// What the typed algorithm hashes for column `c` (quoted `quoted`): the value itself where
/// its type's extended hash is exact for the engine's comparison, a binary form where the
/// hash folds the value, and the canonical text otherwise. Seeded parts are hashed on their
/// own ([`HashPart::Seeded`]); value parts within one row.
///
/// - `int2`, `int4`, `oid`, `uuid`: seeded, their hashes read all their bits.
/// - `int8`: its hash folds the two 32-bit halves into one (1 and 2^32 hash alike), so the
///   high half is hashed as a second seeded value.
/// - `text`, `varchar`, `name`: seeded, under the `C` collation (the bytes).
/// - `bool`, `date`, `bytea`: in the row, hashed from all their bits.
/// - `float4`, `float8`: in the row, hashed from all their bits but with `-0` folded into `0`
///   and every NaN into one, exactly as the engine's comparison folds them (their zero hashes
///   as the seed, so they are never seeded on their own).
/// - `numeric(p,s)` read as a decimal: in the row; the hash ignores the scale, but every value
///   of the column has scale `s`, and the engine compares the decimal's value (its zero and
///   NaN hash as the seed minus one and the seed, so never seeded on their own).
/// - `timestamp`, `timestamptz`, `time`: their hashes fold their 64 bits likewise, so their
///   8-byte binary form goes into the row (`timestamptz` as the instant: no time zone
///   setting).
/// - `char(n)`: its hash (and its cast to text) ignores trailing spaces, which the engine
///   reads, so its binary form goes into the row.
/// - everything else as its canonical text, seeded: unconstrained `numeric` (`1.0` and `1.00`
///   are different texts, and the engine reads the text), `json`, `jsonb` (its hash calls `1`
///   and `1.0` equal), enums (their hash is the label's OID, which differs between
///   databases), arrays (as reads send them, `to_json`), and the types read as text.
pub(crate) fn hash_exprs(c: &Column, quoted: &str) -> Vec<HashPart> {
    let seeded = |function: &'static str, value: String| HashPart::Seeded { function, value };
    let text = |expr: String| {
        vec![seeded(
            "hashtextextended",
            format!("({expr}) COLLATE \"C\""),
        )]
    };
    if c.is_array || c.expr == ReadExpr::Json {
        return text(format!("to_json({quoted})::text"));
    }
    if c.is_enum || c.expr == ReadExpr::Text {
        return text(format!("{quoted}::text"));
    }
    let typed = format!("({quoted})::{}", c.cast_type);
    match c.wire {
        Wire::Int2 => vec![seeded("hashint2extended", typed)],
        Wire::Int4 => vec![seeded("hashint4extended", typed)],
        Wire::Oid => vec![seeded("hashoidextended", typed)],
        Wire::Uuid => vec![seeded("uuid_hash_extended", typed)],
        Wire::Int8 => vec![
            seeded("hashint8extended", typed.clone()),
            seeded("hashint4extended", format!("({typed} >> 32)::int4")),
        ],
        Wire::Bool | Wire::Float4 | Wire::Float8 | Wire::Date | Wire::Bytea => {
            vec![HashPart::Value(typed)]
        }
        Wire::Decimal { .. } => vec![HashPart::Value(typed)],
        Wire::Timestamp => vec![HashPart::Value(format!("timestamp_send({typed})"))],
        Wire::TimestampTz => vec![HashPart::Value(format!("timestamptz_send({typed})"))],
        Wire::Time => vec![HashPart::Value(format!("time_send({typed})"))],
        Wire::Text if c.base == "bpchar" => vec![HashPart::Value(format!("bpcharsend({typed})"))],
        Wire::Text if matches!(c.base.as_str(), "text" | "varchar" | "name") => {
            vec![seeded("hashtextextended", format!("{typed} COLLATE \"C\""))]
        }
        Wire::Text | Wire::Jsonb | Wire::NumericText => text(format!("{quoted}::text")),
    }
}

/// The columns `names` of `table`: their canonical text, and what the algorithm hashes.
fn columns(table: &Table, names: &[String], typed: bool, label: &str) -> Result<Vec<HashColumn>> {
    names
        .iter()
        .map(|name| {
            let c = table.column(name).ok_or_else(|| {
                ConnectorError::schema(format!(
                    "{label}: field `{name}` is not a column; columns: {}",
                    table.column_names()
                ))
            })?;
            let quoted = PostgresDialect.quote_ident(&c.name);
            let text = match c.expr {
                ReadExpr::Json => format!("to_json({quoted})"),
                ReadExpr::Plain | ReadExpr::Text => quoted.clone(),
            };
            let hash = if typed {
                hash_exprs(c, &quoted)
            } else {
                vec![HashPart::Value(text.clone())]
            };
            let int_key = (typed
                && c.expr == ReadExpr::Plain
                && matches!(c.wire, Wire::Int2 | Wire::Int4 | Wire::Int8))
            .then(|| quoted.clone());
            Ok(HashColumn {
                name: c.name.clone(),
                text,
                hash,
                int_key,
            })
        })
        .collect()
}

/// Starts the range-hash read of `request` on `table`: a reader of its summaries, or of its
/// listed entries, in batches of [`ROWS_PER_BATCH`].
pub fn start(
    settings: &Settings,
    table: &Table,
    request: &ReadRequest,
    hash: &RangeHashRequest,
    ctx: Context,
) -> Result<PgReader> {
    let label = format!("hashing the ranges of `{}`", table.name);
    check_request(hash, &label)?;
    let key_names = if request.key.is_empty() {
        table.keys.primary_key.clone()
    } else {
        request.key.clone()
    };
    if key_names.is_empty() {
        return Err(ConnectorError::schema(format!(
            "{label}: it has no primary key; give the read a `key`"
        )));
    }
    // Checked now, so that a bad field fails the read rather than its first batch.
    columns(table, &key_names, true, &label)?;
    columns(table, &hash.fields, true, &label)?;
    if let Some(n) = &hash.newest {
        columns(table, std::slice::from_ref(n), true, &label)?;
    }
    let job = Job {
        settings: settings.clone(),
        table: table.clone(),
        key_names,
        hash: hash.clone(),
        label: label.clone(),
    };
    PgReader::with_worker(label, ctx, move |go, tx| worker(job, go, tx))
}

/// Everything the worker thread needs.
struct Job {
    settings: Settings,
    table: Table,
    key_names: Vec<String>,
    hash: RangeHashRequest,
    label: String,
}

/// The worker: on the first request one connection and one query, then one batch of its
/// rows per request, and the end after the last.
fn worker(job: Job, mut go: mpsc::UnboundedReceiver<()>, tx: mpsc::Sender<BatchResult>) {
    let Some(runtime) = worker_runtime(&tx) else {
        return;
    };
    runtime.block_on(async move {
        let fail = |e: ConnectorError| job.settings.scrub_error(e.context(&job.label));
        if go.recv().await.is_none() {
            return;
        }
        let started = async {
            let mut conn = prepare(&job).await?;
            let query = query(&job, &mut conn).await?;
            Ok::<_, ConnectorError>((conn, query))
        };
        let (mut conn, (sql, algorithm, key_len)) = match started.await {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(fail(e))).await;
                return;
            }
        };
        let mut q = sqlx::query(&sql);
        if let Some(list) = &job.hash.list {
            q = q.bind(list.iter().map(|r| *r as i64).collect::<Vec<i64>>());
        }
        let mut rows = q.fetch(&mut conn);
        let mut exhausted = false;
        loop {
            let mut batch: Vec<PgRow> = Vec::new();
            let mut failed = None;
            while !exhausted && batch.len() < ROWS_PER_BATCH {
                match poll_fn(|cx| Pin::new(&mut rows).poll_next(cx)).await {
                    Some(Ok(row)) => batch.push(row),
                    Some(Err(e)) => {
                        failed = Some(map_sqlx(e));
                        break;
                    }
                    None => exhausted = true,
                }
            }
            let result = match failed {
                Some(e) => Err(fail(e)),
                None if batch.is_empty() => Ok(None),
                None => to_batch(&batch, &job, algorithm, key_len)
                    .map(|b| Some((b, Value::Null)))
                    .map_err(fail),
            };
            let more = matches!(result, Ok(Some(_)));
            if tx.send(result).await.is_err() || !more || go.recv().await.is_none() {
                break;
            }
        }
        drop(rows);
        crate::config::close(conn).await;
    });
}

/// A connection with the canonical settings.
async fn prepare(job: &Job) -> Result<PgConnection> {
    let mut conn = job.settings.connect().await?;
    for statement in CANONICAL_SETTINGS {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .map_err(map_sqlx)?;
    }
    Ok(conn)
}

/// The query of `job` on this server, its algorithm, and the number of key columns.
async fn query(job: &Job, conn: &mut PgConnection) -> Result<(String, &'static str, usize)> {
    let version: String = sqlx::query_scalar("SHOW server_version_num")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let typed = version.trim().parse::<i64>().unwrap_or(0) >= RECORD_HASH_VERSION;
    let algorithm = if typed { ALGORITHM } else { TEXT_ALGORITHM };
    let (table, label) = (&job.table, &job.label);
    let key = columns(table, &job.key_names, typed, label)?;
    let fields = columns(table, &job.hash.fields, typed, label)?;
    let name = qualified(&job.settings.schema, &table.name);
    let dialect = Pg { typed };
    let sql = match &job.hash.list {
        None => {
            let newest =
                match &job.hash.newest {
                    Some(n) => Some(PostgresDialect.quote_ident(
                        &columns(table, std::slice::from_ref(n), typed, label)?[0].name,
                    )),
                    None => None,
                };
            summary_sql(
                &dialect,
                &name,
                &key,
                &fields,
                job.hash.ranges,
                newest.as_deref(),
            )
        }
        Some(_) => list_sql(&dialect, &name, &key, &fields, job.hash.ranges),
    };
    Ok((sql, algorithm, key.len()))
}

/// One batch of summaries or listed entries from the query's rows.
fn to_batch(rows: &[PgRow], job: &Job, algorithm: &str, key_len: usize) -> Result<RecordBatch> {
    let batch = if job.hash.list.is_none() {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let range: i64 = row.try_get(0).map_err(map_sqlx)?;
            let count: i64 = row.try_get(1).map_err(map_sqlx)?;
            out.push(RangeSummary {
                algorithm: algorithm.to_owned(),
                range: u64::try_from(range).unwrap_or(0),
                count: u64::try_from(count).unwrap_or(0),
                hash: row.try_get(2).map_err(map_sqlx)?,
                newest: row.try_get(3).map_err(map_sqlx)?,
            });
        }
        RangeSummary::to_batch(&out)
    } else {
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut values = Vec::with_capacity(key_len);
            for i in 0..key_len {
                values.push(row.try_get::<Option<String>, _>(i).map_err(map_sqlx)?);
            }
            out.push(RangeEntry {
                key: values,
                hash: row.try_get(key_len).map_err(map_sqlx)?,
            });
        }
        RangeEntry::to_batch(&out, key_len)
    };
    batch.map_err(|e| ConnectorError::internal(e.to_string()))
}
