//! SQL text and row conversions shared by both backends.
//!
//! The SQL is the same for SQLite and PostgreSQL: both accept `$N` parameters, quoted
//! identifiers, `ON CONFLICT ... DO UPDATE` and `RETURNING`. Lists of keys are bound in chunks
//! so that a statement stays well under either database's parameter limit.

use std::collections::HashMap;

use chrono::{DateTime, SecondsFormat, Utc};
use lockstep_core::{RunMetrics, RunStatus, RunSummary};

use crate::error::{Result, StateError};
use crate::types::{LeaseHolder, LedgerEntry, RejectedFilter, RejectedRecord};

/// Ids per statement for marking rejected records retried. (The ledger's bulk statements
/// are in `ledger.rs`.)
pub(crate) const KEY_CHUNK: usize = 1000;
/// Rows per statement for rejected records (7 parameters each).
pub(crate) const REJECTED_CHUNK: usize = 500;

/// The message stored on runs found abandoned.
pub(crate) const ABANDONED_ERROR: &str =
    "the process running this run ended without recording an end, and its lease is gone";

/// Formats a time the way the store keeps it: RFC 3339, UTC, microseconds, fixed width.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Converts a count to the signed integer the databases store.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| StateError::InvalidArgument(format!("{what} is too large to store: {value}")))
}

/// Converts a limit to the signed integer `LIMIT` takes; larger limits mean "all".
pub(crate) fn limit(value: usize) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The longest lease accepted: 100 years. Expiry times must stay four-digit years, or text
/// order would stop being time order.
const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 24 * 3600);

/// Converts a lease time to live to a chrono duration.
pub(crate) fn ttl(ttl: std::time::Duration) -> Result<chrono::Duration> {
    let too_long = || {
        StateError::InvalidArgument(format!(
            "a lease ttl of {ttl:?} is too long; the limit is 100 years"
        ))
    };
    if ttl > MAX_TTL {
        return Err(too_long());
    }
    chrono::Duration::from_std(ttl).map_err(|_| too_long())
}

/// The metrics as the seven integers stored, in [`RunMetrics::entries`] order.
pub(crate) fn metric_values(m: &RunMetrics) -> Result<[i64; 7]> {
    let mut out = [0; 7];
    for (slot, (name, value)) in out.iter_mut().zip(m.entries()) {
        *slot = to_i64(value, name)?;
    }
    Ok(out)
}

/// `$first, $first+1, ...`, `count` parameters.
fn params(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($first, ..., $first+width-1), (...)`, `rows` groups of `width` parameters.
fn row_params(first: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", params(first + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) const RUN_COLUMNS: &str = r#""id", "sync", "status", "started_at", "finished_at",
    "duration_ms", "read", "added", "updated", "unchanged", "deleted", "conflicts", "rejected",
    "error_kind", "error", "cursor_before", "cursor_after", "kind""#;

pub(crate) fn start_run_sql() -> &'static str {
    r#"INSERT INTO "runs" ("sync", "status", "started_at", "cursor_before", "lease_token")
       VALUES ($1, 'running', $2, $3,
               (SELECT "token" FROM "leases" WHERE "sync" = $1 AND "expires_at" > $2))
       RETURNING "id""#
}

pub(crate) fn finish_run_sql() -> &'static str {
    r#"UPDATE "runs" SET "status" = $2, "finished_at" = $3, "duration_ms" = $4,
           "read" = $5, "added" = $6, "updated" = $7, "unchanged" = $8, "deleted" = $9,
           "conflicts" = $10, "rejected" = $11, "error_kind" = $12, "error" = $13,
           "cursor_after" = $14, "exit_detail" = $15
       WHERE "id" = $1"#
}

pub(crate) fn runs_sql(by_sync: bool) -> String {
    if by_sync {
        format!(r#"SELECT {RUN_COLUMNS} FROM "runs" WHERE "sync" = $1 ORDER BY "id" DESC LIMIT $2"#)
    } else {
        format!(r#"SELECT {RUN_COLUMNS} FROM "runs" ORDER BY "id" DESC LIMIT $1"#)
    }
}

pub(crate) fn run_sql() -> String {
    format!(r#"SELECT {RUN_COLUMNS} FROM "runs" WHERE "id" = $1"#)
}

/// Marks as abandoned the running runs of a sync that were not started or committed under
/// the sync's live lease.
pub(crate) fn mark_abandoned_sql() -> &'static str {
    r#"UPDATE "runs" SET "status" = 'abandoned', "finished_at" = $2, "error" = $3
       WHERE "sync" = $1 AND "status" = 'running'
         AND NOT EXISTS (SELECT 1 FROM "leases"
                         WHERE "leases"."sync" = $1 AND "leases"."expires_at" > $2
                           AND "leases"."token" = "runs"."lease_token")"#
}

/// Locks the lease row and proves the token current; zero rows affected means it is not.
pub(crate) fn fence_sql() -> &'static str {
    r#"UPDATE "leases" SET "token" = "token" WHERE "sync" = $1 AND "token" = $2"#
}

pub(crate) fn progress_sql() -> &'static str {
    r#"UPDATE "runs" SET "read" = $3, "added" = $4, "updated" = $5, "unchanged" = $6,
           "deleted" = $7, "conflicts" = $8, "rejected" = $9, "progress_at" = $10,
           "lease_token" = COALESCE($11, "lease_token")
       WHERE "id" = $1 AND "sync" = $2"#
}

pub(crate) fn ledger_keys_sql(after: bool) -> &'static str {
    if after {
        r#"SELECT "key" FROM "ledger" WHERE "sync" = $1 AND "key" > $2 ORDER BY "key" LIMIT $3"#
    } else {
        r#"SELECT "key" FROM "ledger" WHERE "sync" = $1 ORDER BY "key" LIMIT $2"#
    }
}

pub(crate) fn checkpoint_upsert_sql() -> &'static str {
    r#"INSERT INTO "checkpoints" ("sync", "value", "run", "updated_at") VALUES ($1, $2, $3, $4)
       ON CONFLICT ("sync") DO UPDATE SET "value" = excluded."value", "run" = excluded."run",
           "updated_at" = excluded."updated_at""#
}

/// Inserts `rows` rejected records, 7 parameters each.
pub(crate) fn rejected_insert_sql(rows: usize) -> String {
    format!(
        r#"INSERT INTO "rejected" ("sync", "run", "key", "field", "reason", "raw", "created_at")
           VALUES {}"#,
        row_params(1, rows, 7)
    )
}

pub(crate) fn rejected_retried_sql(ids: usize) -> String {
    format!(
        r#"UPDATE "rejected" SET "retried" = $1 WHERE "id" IN ({})"#,
        params(2, ids)
    )
}

/// Marks the pending rejected records of sync `$2` whose key is in `key_list` (the backend's
/// list of the keys in `$3`) as resolved with the note `$1`.
pub(crate) fn rejected_resolve_sql(key_list: &str) -> String {
    format!(
        r#"UPDATE "rejected" SET "retried" = $1
           WHERE "sync" = $2 AND "retried" IS NULL AND "key" IN ({key_list})"#
    )
}

/// 1 when sync `$1` has a pending rejected record, else 0 (an index probe, see migration 7).
pub(crate) fn rejected_any_pending_sql() -> &'static str {
    r#"SELECT COUNT(*) FROM (SELECT 1 FROM "rejected"
       WHERE "sync" = $1 AND "retried" IS NULL LIMIT 1) AS "pending""#
}

/// The note a batch commit leaves on the rejected records it supersedes.
pub(crate) fn rejected_resolved_note(run: i64) -> String {
    format!("resolved in run {run}: a newer version of the record was written")
}

/// A parameter of a dynamically built query.
pub(crate) enum Param {
    Int(i64),
    Text(String),
}

/// The query listing rejected records matching `filter`, newest first, with its parameters.
pub(crate) fn rejected_query(filter: &RejectedFilter) -> (String, Vec<Param>) {
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    if let Some(sync) = &filter.sync {
        binds.push(Param::Text(sync.clone()));
        conditions.push(format!(r#""sync" = ${}"#, binds.len()));
    }
    if let Some(run) = filter.run {
        binds.push(Param::Int(run));
        conditions.push(format!(r#""run" = ${}"#, binds.len()));
    }
    if let Some(id) = filter.id {
        binds.push(Param::Int(id));
        conditions.push(format!(r#""id" = ${}"#, binds.len()));
    }
    if filter.pending_only {
        conditions.push(r#""retried" IS NULL"#.to_owned());
    }
    let mut sql = r#"SELECT "id", "sync", "run", "key", "field", "reason", "raw", "created_at",
        "retried" FROM "rejected""#
        .to_owned();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(r#" ORDER BY "id" DESC"#);
    if let Some(n) = filter.limit {
        binds.push(Param::Int(limit(n)));
        sql.push_str(&format!(" LIMIT ${}", binds.len()));
    }
    (sql, binds)
}

/// Tries to take the lease: inserts it, or takes over an expired one with the next token.
/// Returns the token when the lease was taken, no row when it is held.
pub(crate) fn acquire_lease_sql() -> &'static str {
    r#"INSERT INTO "leases" ("sync", "token", "host", "pid", "since", "expires_at")
       VALUES ($1, 1, $2, $3, $4, $5)
       ON CONFLICT ("sync") DO UPDATE SET "token" = "leases"."token" + 1,
           "host" = excluded."host", "pid" = excluded."pid", "since" = excluded."since",
           "expires_at" = excluded."expires_at"
       WHERE "leases"."expires_at" <= excluded."since"
       RETURNING "token""#
}

pub(crate) fn lease_sql() -> &'static str {
    r#"SELECT "host", "pid", "since", "expires_at" FROM "leases" WHERE "sync" = $1"#
}

pub(crate) fn renew_lease_sql() -> &'static str {
    r#"UPDATE "leases" SET "expires_at" = $3 WHERE "sync" = $1 AND "token" = $2"#
}

/// Releasing expires the lease now; the row stays so that the next token is higher.
pub(crate) fn expire_lease_sql() -> &'static str {
    r#"UPDATE "leases" SET "expires_at" = $4 WHERE "sync" = $1 AND "host" = $2 AND "pid" = $3"#
}

pub(crate) fn release_lease_sql() -> &'static str {
    r#"UPDATE "leases" SET "expires_at" = $3 WHERE "sync" = $1 AND "token" = $2"#
}

/// A run as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct RunRow {
    id: i64,
    sync: String,
    status: String,
    started_at: String,
    finished_at: Option<String>,
    duration_ms: Option<i64>,
    read: i64,
    added: i64,
    updated: i64,
    unchanged: i64,
    deleted: i64,
    conflicts: i64,
    rejected: i64,
    error_kind: Option<String>,
    error: Option<String>,
    cursor_before: Option<String>,
    cursor_after: Option<String>,
    kind: String,
}

impl RunRow {
    pub(crate) fn into_summary(self) -> Result<RunSummary> {
        let id = self.id;
        let count = |value: i64, name: &str| {
            u64::try_from(value)
                .map_err(|_| StateError::Corrupt(format!("run {id} has {name} = {value}")))
        };
        let json = |text: Option<String>, name: &str| {
            text.map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| StateError::Corrupt(format!("run {id} has a bad {name}: {e}")))
        };
        Ok(RunSummary {
            id,
            status: RunStatus::parse(&self.status).ok_or_else(|| {
                StateError::Corrupt(format!("run {id} has status `{}`", self.status))
            })?,
            metrics: RunMetrics {
                read: count(self.read, "read")?,
                added: count(self.added, "added")?,
                updated: count(self.updated, "updated")?,
                unchanged: count(self.unchanged, "unchanged")?,
                deleted: count(self.deleted, "deleted")?,
                conflicts: count(self.conflicts, "conflicts")?,
                rejected: count(self.rejected, "rejected")?,
            },
            cursor_before: json(self.cursor_before, "cursor_before")?,
            cursor_after: json(self.cursor_after, "cursor_after")?,
            sync: self.sync,
            started_at: self.started_at,
            finished_at: self.finished_at,
            duration_ms: self.duration_ms,
            error_kind: self.error_kind,
            error: self.error,
            kind: self.kind,
        })
    }
}

/// A ledger entry as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct LedgerRow {
    key: String,
    dest_key: Option<String>,
    fingerprint: Vec<u8>,
    source_version: Option<String>,
    synced_at: String,
}

impl LedgerRow {
    pub(crate) fn into_entry(self) -> Result<LedgerEntry> {
        let bytes: [u8; 16] = self.fingerprint.as_slice().try_into().map_err(|_| {
            StateError::Corrupt(format!(
                "ledger key `{}` has a fingerprint of {} bytes instead of 16",
                self.key,
                self.fingerprint.len()
            ))
        })?;
        Ok(LedgerEntry {
            key: self.key,
            dest_key: self.dest_key,
            fingerprint: u128::from_be_bytes(bytes),
            source_version: self.source_version,
            synced_at: Some(self.synced_at),
        })
    }
}

/// Collects looked-up rows into the map `ledger_lookup` returns.
pub(crate) fn ledger_map(
    rows: Vec<LedgerRow>,
    into: &mut HashMap<String, LedgerEntry>,
) -> Result<()> {
    for row in rows {
        let entry = row.into_entry()?;
        into.insert(entry.key.clone(), entry);
    }
    Ok(())
}

/// The upserts of a batch in key order, the ledger's own order, with duplicate keys removed,
/// the last entry winning. PostgreSQL refuses a statement that upserts the same row twice;
/// in key order each statement walks the ledger's index front to back, and neighbouring keys
/// share the pages they change. One stable sort does both (no hash map of the keys).
pub(crate) fn sorted_unique_upserts(entries: &[LedgerEntry]) -> Vec<&LedgerEntry> {
    let mut sorted: Vec<&LedgerEntry> = entries.iter().collect();
    // Stable: entries with equal keys keep their order, so the last of each run is the last.
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut unique: Vec<&LedgerEntry> = Vec::with_capacity(sorted.len());
    for entry in sorted {
        match unique.last_mut() {
            Some(last) if last.key == entry.key => *last = entry,
            _ => unique.push(entry),
        }
    }
    unique
}

/// `entries` with duplicate keys removed, the last entry winning, in first-seen order.
pub(crate) fn dedup_by_key<'a, T>(entries: &'a [T], key: impl Fn(&'a T) -> &'a str) -> Vec<&'a T> {
    let mut position: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
    let mut out: Vec<&T> = Vec::with_capacity(entries.len());
    for entry in entries {
        match position.get(key(entry)) {
            Some(&i) => out[i] = entry,
            None => {
                position.insert(key(entry), out.len());
                out.push(entry);
            }
        }
    }
    out
}

/// A rejected record as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct RejectedRow {
    id: i64,
    sync: String,
    run: i64,
    key: Option<String>,
    field: Option<String>,
    reason: String,
    raw: String,
    created_at: String,
    retried: Option<String>,
}

impl RejectedRow {
    pub(crate) fn into_record(self) -> Result<RejectedRecord> {
        let raw = serde_json::from_str(&self.raw).map_err(|e| {
            StateError::Corrupt(format!("rejected record {} has bad raw JSON: {e}", self.id))
        })?;
        Ok(RejectedRecord {
            id: self.id,
            sync: self.sync,
            run: self.run,
            key: self.key,
            field: self.field,
            reason: self.reason,
            raw,
            created_at: Some(self.created_at),
            retried: self.retried,
        })
    }
}

/// A lease as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct LeaseRow {
    pub(crate) host: String,
    pub(crate) pid: i64,
    pub(crate) since: String,
    pub(crate) expires_at: String,
}

impl LeaseRow {
    pub(crate) fn holder(&self) -> LeaseHolder {
        LeaseHolder {
            host: self.host.clone(),
            // A pid that does not fit was not written by this crate; show it as 0.
            pid: u32::try_from(self.pid).unwrap_or(0),
        }
    }
}

/// Parses a stored time.
pub(crate) fn parse_time(text: &str, what: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StateError::Corrupt(format!("{what} `{text}` is not an RFC 3339 time: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_numbered_in_order() {
        assert_eq!(params(2, 3), "$2, $3, $4");
        assert_eq!(row_params(1, 2, 2), "($1, $2), ($3, $4)");
    }

    #[test]
    fn rejected_query_binds_every_filter() {
        let (sql, binds) = rejected_query(&RejectedFilter {
            sync: Some("s".into()),
            run: Some(3),
            id: None,
            pending_only: true,
            limit: Some(5),
        });
        assert!(
            sql.contains(r#""sync" = $1 AND "run" = $2 AND "retried" IS NULL"#),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT $3"), "{sql}");
        assert_eq!(binds.len(), 3);
    }

    #[test]
    fn upserts_come_in_key_order_and_the_last_entry_of_a_key_wins() {
        let entry = |key: &str, fingerprint| LedgerEntry {
            key: key.into(),
            dest_key: None,
            fingerprint,
            source_version: None,
            synced_at: None,
        };
        let kept = |entries: &[LedgerEntry]| -> Vec<(String, u128)> {
            sorted_unique_upserts(entries)
                .iter()
                .map(|e| (e.key.clone(), e.fingerprint))
                .collect()
        };
        let pairs = |p: &[(&str, u128)]| -> Vec<(String, u128)> {
            p.iter().map(|(k, f)| (k.to_string(), *f)).collect()
        };
        assert_eq!(
            kept(&[entry("a", 1), entry("b", 2), entry("a", 3)]),
            pairs(&[("a", 3), ("b", 2)])
        );
        assert_eq!(
            kept(&[
                entry("c", 1),
                entry("a", 2),
                entry("c", 3),
                entry("b", 4),
                entry("c", 5),
                entry("a", 6)
            ]),
            pairs(&[("a", 6), ("b", 4), ("c", 5)])
        );
        assert_eq!(kept(&[]), pairs(&[]));
    }

    #[test]
    fn absurd_lease_ttls_are_refused() {
        assert!(ttl(std::time::Duration::from_secs(30)).is_ok());
        assert!(matches!(
            ttl(std::time::Duration::MAX),
            Err(StateError::InvalidArgument(_))
        ));
        assert!(ttl(MAX_TTL + std::time::Duration::from_secs(1)).is_err());
    }

    #[test]
    fn timestamps_are_fixed_width_utc() {
        let t = DateTime::parse_from_rfc3339("2024-05-06T07:08:09.5+02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(t), "2024-05-06T05:08:09.500000Z");
        assert_eq!(parse_time(&timestamp(t), "t").unwrap(), t);
    }
}
