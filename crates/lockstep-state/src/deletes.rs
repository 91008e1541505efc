//! Pending deletes: the deletes runs found (from tombstones and from key-set reconciliation)
//! that wait in the state store until the end of a run checks them, all together, against the
//! sync's `max_delete_fraction` (semantics.md, "Modes").
//!
//! A delete is `pending` from the moment a run finds it until the end of that run; then it is
//! either `approved` (within the guard, or approved by a person) and applied, or `held` until a
//! person approves or discards it. Rows leave the table when the destination has flushed the
//! delete, when a run sees the record again in the source (not deleted), or when a person
//! discards them.
//!
//! Invariants:
//! - A delete is applied only while its row says `approved`, and the row is removed only after
//!   the destination flushed it: a crash in between leaves it `approved`, and the next run
//!   applies it again (deleting a missing record is harmless).
//! - Changes made during a run carry the run's fencing token, checked in the same transaction.

use std::fmt;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// What found a delete.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteOrigin {
    /// The source marked the record deleted (the sync's `tombstone` field).
    Tombstone,
    /// Key-set reconciliation found the key in the destination but not in the source.
    Reconcile,
}

impl DeleteOrigin {
    /// The stable text stored in the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteOrigin::Tombstone => "tombstone",
            DeleteOrigin::Reconcile => "reconcile",
        }
    }
}

/// Where a delete waits.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DeleteStatus {
    /// Found by a run that has not yet checked it against the guard.
    Pending,
    /// Past the guard: waits for a person.
    Held,
    /// Within the guard or approved by a person: the next delete phase applies it.
    Approved,
}

impl DeleteStatus {
    /// The stable text stored in the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteStatus::Pending => "pending",
            DeleteStatus::Held => "held",
            DeleteStatus::Approved => "approved",
        }
    }
}

impl fmt::Display for DeleteStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change to a sync's pending deletes, made in one transaction by
/// [`PendingDeleteStore::change_pending_deletes`].
#[derive(Clone, Copy, Debug)]
pub struct PendingDeleteChange<'a> {
    pub sync: &'a str,
    /// The run making the change.
    pub run: i64,
    /// When set, the change is refused with [`crate::StateError::LeaseLost`] unless this is
    /// still the sync's current lease token.
    pub lease_token: Option<i64>,
    /// What found the deletes of `add`.
    pub origin: DeleteOrigin,
    /// Keys to record as `pending`. A key that already has a row keeps it (and its status).
    pub add: &'a [String],
    /// Keys the source has again: their rows are removed, whatever their status. Applied
    /// before `add`.
    pub cancel: &'a [String],
}

/// The deletes waiting for a sync: counts by status and a sample of keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingDeletes {
    pub sync: String,
    /// Found by a run that has not checked them yet (a run in progress, or one that crashed).
    pub pending: u64,
    /// Past `max_delete_fraction`: waiting for `lockstep deletes approve`.
    pub held: u64,
    /// Approved: the next run applies them.
    pub approved: u64,
    /// Up to the requested number of keys, in key order, of any status.
    pub sample: Vec<String>,
    /// The first run that found one of them.
    pub first_run: Option<i64>,
    /// When the oldest of them was found (RFC 3339).
    pub since: Option<String>,
}

impl PendingDeletes {
    /// Every waiting delete, whatever its status.
    pub fn total(&self) -> u64 {
        self.pending + self.held + self.approved
    }
}

/// The pending-delete part of the state store; every [`crate::StateStore`] is one.
#[async_trait]
pub trait PendingDeleteStore: Send + Sync {
    /// Removes the rows of `change.cancel` and records `change.add` as `pending` deletes, in
    /// one transaction under the fencing check. Returns how many rows were cancelled.
    async fn change_pending_deletes(&self, change: &PendingDeleteChange<'_>) -> Result<u64>;

    /// The deletes waiting for `sync`: counts by status and up to `sample` keys.
    async fn pending_deletes(&self, sync: &str, sample: usize) -> Result<PendingDeletes>;

    /// Up to `limit` keys of `sync`'s deletes in `status` (any status when `None`) found by
    /// `origin` (any when `None`), greater than `after`, in byte order (for paging through
    /// them).
    async fn pending_delete_keys(
        &self,
        sync: &str,
        status: Option<DeleteStatus>,
        origin: Option<DeleteOrigin>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Moves `sync`'s deletes in any of the statuses `from` to `to` and returns how many. With
    /// `lease_token`, refused with `LeaseLost` unless that lease is current.
    async fn set_pending_delete_status(
        &self,
        sync: &str,
        from: &[DeleteStatus],
        to: DeleteStatus,
        lease_token: Option<i64>,
    ) -> Result<u64>;

    /// Forgets `sync`'s deletes in `status` (the records stay in the destination) and returns
    /// how many.
    async fn discard_pending_deletes(&self, sync: &str, status: DeleteStatus) -> Result<u64>;
}

/// `$first, $first+1, ...`, `count` parameters.
fn params(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records pending deletes of the keys in `key_list` (the backend's list of the keys in `$5`):
/// `$1` sync, `$2` origin, `$3` run, `$4` time.
pub(crate) fn insert_sql(key_list: &str) -> String {
    format!(
        r#"INSERT INTO "pending_deletes" ("sync", "key", "origin", "status", "run", "created_at")
           SELECT $1, "keys"."value", $2, 'pending', $3, $4 FROM ({key_list}) AS "keys" WHERE true
           ON CONFLICT ("sync", "key") DO NOTHING"#
    )
}

/// Removes the rows of the keys in `key_list` (the backend's list of the keys in `$2`): `$1`
/// sync.
pub(crate) fn remove_sql(key_list: &str) -> String {
    format!(r#"DELETE FROM "pending_deletes" WHERE "sync" = $1 AND "key" IN ({key_list})"#)
}

/// Moves rows from `from` statuses to `$2`: `$1` sync, then the statuses.
pub(crate) fn set_status_sql(from: usize) -> String {
    format!(
        r#"UPDATE "pending_deletes" SET "status" = $2 WHERE "sync" = $1 AND "status" IN ({})"#,
        params(3, from)
    )
}

pub(crate) fn counts_sql() -> &'static str {
    r#"SELECT "status", COUNT(*), MIN("run"), MIN("created_at") FROM "pending_deletes"
       WHERE "sync" = $1 GROUP BY "status""#
}

pub(crate) fn sample_sql() -> &'static str {
    r#"SELECT "key" FROM "pending_deletes" WHERE "sync" = $1 ORDER BY "key" LIMIT $2"#
}

/// The paging query of `pending_delete_keys` with its text parameters after `$1` (the sync);
/// the limit is the last parameter.
pub(crate) fn keys_query(
    status: Option<DeleteStatus>,
    origin: Option<DeleteOrigin>,
    after: Option<&str>,
) -> (String, Vec<&str>) {
    let mut text = r#"SELECT "key" FROM "pending_deletes" WHERE "sync" = $1"#.to_owned();
    let mut binds = Vec::new();
    for (column, value) in [
        ("status", status.map(DeleteStatus::as_str)),
        ("origin", origin.map(DeleteOrigin::as_str)),
    ] {
        if let Some(value) = value {
            binds.push(value);
            text.push_str(&format!(r#" AND "{column}" = ${}"#, binds.len() + 1));
        }
    }
    if let Some(after) = after {
        binds.push(after);
        text.push_str(&format!(r#" AND "key" > ${}"#, binds.len() + 1));
    }
    text.push_str(&format!(r#" ORDER BY "key" LIMIT ${}"#, binds.len() + 2));
    (text, binds)
}

pub(crate) fn discard_sql() -> &'static str {
    r#"DELETE FROM "pending_deletes" WHERE "sync" = $1 AND "status" = $2"#
}

/// Implements [`PendingDeleteStore`] for a backend type (see `backend.rs` for what one
/// provides).
macro_rules! impl_pending_delete_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::deletes::PendingDeleteStore for $store {
            async fn change_pending_deletes(
                &self,
                c: &$crate::deletes::PendingDeleteChange<'_>,
            ) -> $crate::error::Result<u64> {
                use $crate::error::{db, StateError};
                const OP: &str = "recording pending deletes";
                if c.add.is_empty() && c.cancel.is_empty() {
                    return Ok(0);
                }
                let now = $crate::sql::timestamp(self.now().await?);
                let mut tx = self.begin_write().await?;
                if let Some(token) = c.lease_token {
                    let fenced = sqlx::query($crate::sql::fence_sql())
                        .bind(c.sync)
                        .bind(token)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                    if fenced.rows_affected() == 0 {
                        return Err(StateError::LeaseLost {
                            sync: c.sync.to_owned(),
                        });
                    }
                }
                let mut cancelled = 0;
                // Each chunk of keys travels as one parameter (see `ledger.rs` on why).
                let remove = $crate::deletes::remove_sql(&Self::key_list_sql(2));
                for chunk in c.cancel.chunks($crate::ledger::LEDGER_CHUNK) {
                    cancelled += sqlx::query(&remove)
                        .bind(c.sync)
                        .bind(Self::key_list(chunk.iter().map(String::as_str)))
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?
                        .rows_affected();
                }
                let insert = $crate::deletes::insert_sql(&Self::key_list_sql(5));
                for chunk in c.add.chunks($crate::ledger::LEDGER_CHUNK) {
                    sqlx::query(&insert)
                        .bind(c.sync)
                        .bind(c.origin.as_str())
                        .bind(c.run)
                        .bind(now.as_str())
                        .bind(Self::key_list(chunk.iter().map(String::as_str)))
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                }
                tx.commit().await.map_err(db(OP))?;
                Ok(cancelled)
            }

            async fn pending_deletes(
                &self,
                sync: &str,
                sample: usize,
            ) -> $crate::error::Result<$crate::deletes::PendingDeletes> {
                use $crate::error::{db, StateError};
                const OP: &str = "listing pending deletes";
                let rows: Vec<(String, i64, Option<i64>, Option<String>)> =
                    sqlx::query_as($crate::deletes::counts_sql())
                        .bind(sync)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db(OP))?;
                let mut out = $crate::deletes::PendingDeletes {
                    sync: sync.to_owned(),
                    ..Default::default()
                };
                for (status, count, run, since) in rows {
                    let count = u64::try_from(count).unwrap_or(0);
                    match status.as_str() {
                        "pending" => out.pending = count,
                        "held" => out.held = count,
                        "approved" => out.approved = count,
                        other => {
                            return Err(StateError::Corrupt(format!(
                                "a pending delete of sync `{sync}` has status `{other}`"
                            )))
                        }
                    }
                    out.first_run = match (out.first_run, run) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    out.since = match (out.since.take(), since) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                }
                out.sample = sqlx::query_scalar($crate::deletes::sample_sql())
                    .bind(sync)
                    .bind($crate::sql::limit(sample))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(db(OP))?;
                Ok(out)
            }

            async fn pending_delete_keys(
                &self,
                sync: &str,
                status: Option<$crate::deletes::DeleteStatus>,
                origin: Option<$crate::deletes::DeleteOrigin>,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<String>> {
                let (text, binds) = $crate::deletes::keys_query(status, origin, after);
                let mut query = sqlx::query_scalar(&text).bind(sync);
                for value in binds {
                    query = query.bind(value);
                }
                query
                    .bind($crate::sql::limit(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::db("listing pending deletes"))
            }

            async fn set_pending_delete_status(
                &self,
                sync: &str,
                from: &[$crate::deletes::DeleteStatus],
                to: $crate::deletes::DeleteStatus,
                lease_token: Option<i64>,
            ) -> $crate::error::Result<u64> {
                use $crate::error::{db, StateError};
                const OP: &str = "changing the status of pending deletes";
                if from.is_empty() {
                    return Ok(0);
                }
                let mut tx = self.begin_write().await?;
                if let Some(token) = lease_token {
                    let fenced = sqlx::query($crate::sql::fence_sql())
                        .bind(sync)
                        .bind(token)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                    if fenced.rows_affected() == 0 {
                        return Err(StateError::LeaseLost {
                            sync: sync.to_owned(),
                        });
                    }
                }
                let text = $crate::deletes::set_status_sql(from.len());
                let mut query = sqlx::query(&text).bind(sync).bind(to.as_str());
                for status in from {
                    query = query.bind(status.as_str());
                }
                let changed = query
                    .execute(&mut *tx)
                    .await
                    .map_err(db(OP))?
                    .rows_affected();
                tx.commit().await.map_err(db(OP))?;
                Ok(changed)
            }

            async fn discard_pending_deletes(
                &self,
                sync: &str,
                status: $crate::deletes::DeleteStatus,
            ) -> $crate::error::Result<u64> {
                let done = sqlx::query($crate::deletes::discard_sql())
                    .bind(sync)
                    .bind(status.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("discarding pending deletes"))?;
                Ok(done.rows_affected())
            }
        }
    };
}

pub(crate) use impl_pending_delete_store;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_number_their_parameters_in_order() {
        let insert = insert_sql(&crate::ledger::sqlite::key_list_sql(5));
        assert!(
            insert.contains(r#"SELECT $1, "keys"."value", $2, 'pending', $3, $4 FROM (SELECT "value" FROM json_each($5))"#),
            "{insert}"
        );
        let remove = remove_sql(&crate::ledger::postgres::key_list_sql(2));
        assert!(
            remove.ends_with(r#""key" IN (SELECT unnest($2::text[]) AS "value")"#),
            "{remove}"
        );
        assert!(set_status_sql(2).ends_with("IN ($3, $4)"));
        let (text, binds) = keys_query(None, Some(DeleteOrigin::Reconcile), Some("[1]"));
        assert!(
            text.ends_with(r#""origin" = $2 AND "key" > $3 ORDER BY "key" LIMIT $4"#),
            "{text}"
        );
        assert_eq!(binds, ["reconcile", "[1]"]);
    }
}
