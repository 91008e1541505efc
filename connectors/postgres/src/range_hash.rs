//! Range hashes (the `range-hash` feature): the server counts and hashes the records of each
//! range of a table's key space, or lists the (key, row hash) pairs of some ranges, for
//! `lockstep verify` to compare two tables without moving their rows.
//!
//! The queries are the SQL kit's ([`lockstep_sql_kit::range_hash`]); this module gives them
//! PostgreSQL's pieces: `hashtextextended` (the hash PostgreSQL's hash partitioning relies on,
//! stable across server versions), an exact `sum` of int8 (numeric), and each column's
//! canonical text: a record's text is its row output, `ROW(cols)::text` (arrays as
//! `to_json(col)`, as reads send them), one output call a value.
//!
//! Invariants:
//! - The text output of a value depends on session settings (time zone, date style, float
//!   digits, interval style, bytea output); the connection that hashes fixes all of them, so
//!   two servers give the same text for the same value. Floats use `extra_float_digits = 3`,
//!   which is exact on every server version (two different values never print alike).
//! - Summaries name their algorithm ([`ALGORITHM`]); the host compares only summaries of the
//!   same algorithm.
//! - Identifiers are quoted; the listed ranges are a bound parameter.

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::protocol::{RangeEntry, RangeHashRequest, RangeSummary};
use lockstep_plugin_sdk::{ConnectorError, ReadRequest, Result};
use lockstep_sql_kit::range_hash::RangeHashDialect;
use lockstep_sql_kit::range_hash::{check_request, list_sql, summary_sql, HashColumn};
use lockstep_sql_kit::{Dialect, PostgresDialect};
use sqlx::Row;

use crate::catalog::{qualified, ReadExpr, Table};
use crate::config::Settings;
use crate::error::map_sqlx;

/// The name of this connector's range-hash algorithm.
pub const ALGORITHM: &str = "postgres-range-hash-v1";

/// The session settings under which every value's text is canonical.
const CANONICAL_SETTINGS: [&str; 5] = [
    "SET TIME ZONE 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 3",
    "SET bytea_output = 'hex'",
];

/// PostgreSQL's pieces of the kit's range-hash queries.
struct Pg;

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

impl RangeHashDialect for Pg {
    fn hash64(&self, text: &str, seed: u8) -> String {
        format!("hashtextextended({text}, {seed})")
    }
    fn encode(&self, value: &str) -> String {
        value.to_owned()
    }
    fn join(&self, parts: &[String]) -> String {
        // The row output quotes a value when needed, writes a null as nothing and an empty
        // text as `""`: unambiguous, and one output call a value.
        format!("ROW({})::text", parts.join(", "))
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

/// The columns `names` of `table` with their canonical text.
fn columns(table: &Table, names: &[String], label: &str) -> Result<Vec<HashColumn>> {
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
                ReadExpr::Plain | ReadExpr::Text => quoted,
            };
            Ok(HashColumn {
                name: c.name.clone(),
                text,
            })
        })
        .collect()
}

/// The range-hash read of `request` on `table`: its summaries, or its listed entries, as one
/// batch.
pub async fn range_hash(
    settings: &Settings,
    table: &Table,
    request: &ReadRequest,
    hash: &RangeHashRequest,
) -> Result<RecordBatch> {
    let label = format!("hashing the ranges of `{}`", table.name);
    check_request(hash, &label)?;
    let key_names = if request.key.is_empty() {
        &table.keys.primary_key
    } else {
        &request.key
    };
    if key_names.is_empty() {
        return Err(ConnectorError::schema(format!(
            "{label}: it has no primary key; give the read a `key`"
        )));
    }
    let key = columns(table, key_names, &label)?;
    let fields = columns(table, &hash.fields, &label)?;
    let name = qualified(&settings.schema, &table.name);
    let mut conn = settings.connect().await?;
    for statement in CANONICAL_SETTINGS {
        sqlx::query(statement)
            .execute(&mut conn)
            .await
            .map_err(|e| map_sqlx(e).context(&label))?;
    }
    let batch = match &hash.list {
        None => {
            let newest = match &hash.newest {
                Some(n) => Some(
                    PostgresDialect
                        .quote_ident(&columns(table, std::slice::from_ref(n), &label)?[0].name),
                ),
                None => None,
            };
            let sql = summary_sql(&Pg, &name, &key, &fields, hash.ranges, newest.as_deref());
            let rows = sqlx::query(&sql)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| map_sqlx(e).context(&label))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let range: i64 = row.try_get(0).map_err(map_sqlx)?;
                let count: i64 = row.try_get(1).map_err(map_sqlx)?;
                out.push(RangeSummary {
                    algorithm: ALGORITHM.to_owned(),
                    range: u64::try_from(range).unwrap_or(0),
                    count: u64::try_from(count).unwrap_or(0),
                    hash: row.try_get(2).map_err(map_sqlx)?,
                    newest: row.try_get(3).map_err(map_sqlx)?,
                });
            }
            RangeSummary::to_batch(&out)
        }
        Some(list) => {
            let sql = list_sql(&Pg, &name, &key, &fields, hash.ranges);
            let ranges: Vec<i64> = list.iter().map(|r| *r as i64).collect();
            let rows = sqlx::query(&sql)
                .bind(ranges)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| map_sqlx(e).context(&label))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut values = Vec::with_capacity(key.len());
                for i in 0..key.len() {
                    values.push(row.try_get::<Option<String>, _>(i).map_err(map_sqlx)?);
                }
                out.push(RangeEntry {
                    key: values,
                    hash: row.try_get(key.len()).map_err(map_sqlx)?,
                });
            }
            RangeEntry::to_batch(&out, key.len())
        }
    };
    batch.map_err(|e| ConnectorError::internal(format!("{label}: {e}")))
}
