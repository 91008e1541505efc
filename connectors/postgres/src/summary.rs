//! Key-set summaries (the `key-summary` feature): how many rows a table has and an
//! order-independent hash of their keys, computed by the server in one aggregate. A mirror
//! sync's reconciliation compares the source's summary with the destination's and streams
//! the keys only when they differ.
//!
//! The hash is the sum, modulo 2^64, of `hashtextextended(key text, 0)` over the rows, where
//! a row's key text is the text forms of its key columns joined by U+001F. PostgreSQL's hash
//! partitioning relies on `hashtextextended`, so it gives the same value on every server
//! version. Summaries name their algorithm ([`ALGORITHM`]); the host compares only summaries
//! of the same algorithm, so another connector's summary is never mistaken for this one's.
//!
//! Each summary has a session of its own, whose parallel workers are the config's
//! `key_summary_workers` (none by default): a summary runs beside the run's own reads, and a
//! two-way run's two summaries beside each other, often on one server.

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::protocol::KeySummary;
use lockstep_plugin_sdk::{ConnectorError, ReadRequest, Result};
use sqlx::Row;

use crate::catalog::qualified;
use crate::catalog::Table;
use crate::config::Settings;
use crate::error::map_sqlx;
use lockstep_sql_kit::{Dialect, PostgresDialect};

/// The name of this connector's summary algorithm.
pub const ALGORITHM: &str = "postgres-hashtextextended-sum-v1";

/// 2^64, to bring the signed sum into `0..2^64` whatever its sign.
const MODULUS: &str = "18446744073709551616";

/// The aggregate query summarizing the key set `key` of `table` (its primary key when
/// `key` is empty).
fn summary_sql(schema: &str, table: &Table, key: &[String]) -> Result<String> {
    let key = if key.is_empty() {
        &table.keys.primary_key
    } else {
        key
    };
    if key.is_empty() {
        return Err(ConnectorError::schema(format!(
            "summarizing the keys of `{}`: it has no primary key; give the read a `key`",
            table.name
        )));
    }
    let mut texts = Vec::with_capacity(key.len());
    for name in key {
        let column = table.column(name).ok_or_else(|| {
            ConnectorError::schema(format!(
                "summarizing the keys of `{}`: key field `{name}` is not a column; columns: {}",
                table.name,
                table.column_names()
            ))
        })?;
        texts.push(format!(
            "{}::text",
            PostgresDialect.quote_ident(&column.name)
        ));
    }
    // One key column's text is what `concat_ws` would give for it alone (a null joins as
    // nothing), without the call. The sum of `int8` hashes is exact (PostgreSQL adds them in
    // 128 bits and returns a numeric), so no per-row cast to numeric is needed.
    let key_text = match texts.as_slice() {
        [one] => format!("coalesce({one}, '')"),
        _ => format!("concat_ws(chr(31), {})", texts.join(", ")),
    };
    Ok(format!(
        "SELECT count(*)::int8, \
         ((coalesce(sum(hashtextextended({key_text}, 0)), 0) \
           % {MODULUS} + {MODULUS}) % {MODULUS})::text \
         FROM {}",
        qualified(schema, &table.name)
    ))
}

/// A session for one summary: the parallel workers it may use are `key_summary_workers`
/// (0 by default: the summary runs beside the sync's own reads, which need the cores more
/// than a summary needs workers on a small server).
pub(crate) async fn connect(settings: &Settings) -> Result<sqlx::PgConnection> {
    let workers = settings.key_summary_workers.to_string();
    let options = settings
        .options
        .clone()
        .options([("max_parallel_workers_per_gather", workers.as_str())]);
    settings.connect_with(&options).await
}

/// The summary of the key set of `table` that `request` reads, as the one-row batch of a
/// [`KeySummary`].
pub async fn key_summary(
    settings: &Settings,
    table: &Table,
    request: &ReadRequest,
) -> Result<RecordBatch> {
    let sql = summary_sql(&settings.schema, table, &request.key)?;
    let mut conn = connect(settings).await?;
    let row = sqlx::query(&sql)
        .fetch_one(&mut conn)
        .await
        .map_err(map_sqlx)?;
    crate::config::close(conn).await;
    let count: i64 = row.try_get(0).map_err(map_sqlx)?;
    let hash: String = row.try_get(1).map_err(map_sqlx)?;
    KeySummary {
        algorithm: ALGORITHM.to_owned(),
        count: u64::try_from(count).unwrap_or(0),
        hash,
    }
    .to_batch()
    .map_err(|e| ConnectorError::internal(format!("summarizing the keys of `{}`: {e}", table.name)))
}
