//! The state of two-way syncs (semantics.md, "Two-way sync and conflicts"): the base ledger,
//! one row per record that both sides last agreed on, and the conflict queue.
//!
//! The base ledger keeps, per record, the values both sides last agreed on (a JSON object in
//! the sync's mapped space: side b's field names) and each side's fingerprint as Lockstep last
//! saw or wrote it, so that a run can tell which side changed, which fields changed, and
//! recognise its own writes coming back.
//!
//! A conflict is recorded once, when a run first finds both sides changed differently, with
//! the base, both sides' values and the decision. An `open` conflict waits for a person
//! (policy `manual`); `resolved` means a person decided and the next run applies it;
//! `applied` and `auto` (a policy decided) are history.
//!
//! Invariants:
//! - A two-way commit is one transaction: the fencing check, the run's progress, base ledger
//!   upserts and deletes, new conflicts, conflicts marked applied, and both sides'
//!   checkpoints. On any error nothing is written.
//! - A sync has at most one `open` conflict per key: a run that finds the record in conflict
//!   again updates that conflict in place.
//! - A two-way sync has at most one pending rejected record per key that its runs keep
//!   (see [`TwoWayRejects`]): a record refused again updates it in place, and a run that
//!   delivers the record resolves it. Rejected records live in the `rejected` table that
//!   one-way syncs use, so `lockstep rejects` lists them.
//! - Statements about many keys carry them in a few parameters (a JSON array for SQLite, one
//!   array per column for PostgreSQL), never one parameter per value.

use std::collections::HashMap;
use std::fmt;

use async_trait::async_trait;
use lockstep_core::RunMetrics;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Result, StateError};
use crate::sql::{dedup_by_key, limit, Param};

/// One row of a two-way sync's base ledger.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BaseEntry {
    /// The record key (canonical JSON of the key values, as for one-way syncs).
    pub key: String,
    /// The values both sides last agreed on, by mapped field name.
    pub base: Map<String, Value>,
    /// Side a's fingerprint as last read or written by Lockstep.
    pub fingerprint_a: u128,
    /// Side b's fingerprint as last read or written by Lockstep.
    pub fingerprint_b: u128,
}

/// The two fingerprints of a base ledger row, without its values: all a run needs to tell
/// that neither side changed a record it read (see [`TwoWayStore::base_fingerprints`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseFingerprints {
    /// Side a's fingerprint as last read or written by Lockstep.
    pub a: u128,
    /// Side b's fingerprint as last read or written by Lockstep.
    pub b: u128,
}

/// Where a conflict stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictStatus {
    /// Waits for a person (policy `manual`): neither side was written for the record.
    Open,
    /// A person decided; the next run (or `conflicts resolve --apply`) writes the decision.
    Resolved,
    /// A person's decision was written to both sides.
    Applied,
    /// The sync's policy decided during the run that found it, and the run wrote it.
    Auto,
}

impl ConflictStatus {
    /// The stable text stored in the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictStatus::Open => "open",
            ConflictStatus::Resolved => "resolved",
            ConflictStatus::Applied => "applied",
            ConflictStatus::Auto => "auto",
        }
    }

    /// Parses the stored text.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "open" => ConflictStatus::Open,
            "resolved" => ConflictStatus::Resolved,
            "applied" => ConflictStatus::Applied,
            "auto" => ConflictStatus::Auto,
            _ => return None,
        })
    }
}

impl fmt::Display for ConflictStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A conflict: both sides changed one record differently since they last agreed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Conflict {
    /// The store's id; 0 for a conflict not yet stored.
    pub id: i64,
    pub sync: String,
    /// The run that found it.
    pub run: i64,
    pub key: String,
    /// The values both sides last agreed on; `None` when the record is new on both sides.
    pub base: Option<Map<String, Value>>,
    /// Side a's values; `None` when side a deleted the record.
    pub a: Option<Map<String, Value>>,
    /// Side b's values; `None` when side b deleted the record.
    pub b: Option<Map<String, Value>>,
    /// The fields that differ between a and b.
    pub fields: Vec<String>,
    /// The policy that decided (`newest-wins`, `prefer-a`, `merge-fields`, `manual`, ...).
    pub policy: String,
    /// What was decided: `a`, `b`, `merge`, `delete`, or `queued` while open; for a
    /// person's decision, `take a`, `take b` or `set`.
    pub decision: String,
    /// The values written to both sides (`None` for a delete, and while open).
    pub resolution: Option<Map<String, Value>>,
    /// Whether the resolution deletes the record on both sides.
    pub resolution_deletes: bool,
    pub status: ConflictStatus,
    /// When it was found (RFC 3339).
    pub created_at: String,
    /// Who resolved it (for a person's decision: the user and host), and when.
    pub resolved_by: Option<String>,
    pub resolved_at: Option<String>,
}

/// Which conflicts to list.
#[derive(Clone, Debug, Default)]
pub struct ConflictFilter {
    pub sync: Option<String>,
    /// Only these statuses; any when empty.
    pub statuses: Vec<ConflictStatus>,
    /// At most this many, newest first; all when 0.
    pub limit: usize,
}

/// A person's decision on an open conflict, stored by [`TwoWayStore::resolve_conflict`].
#[derive(Clone, Debug, PartialEq)]
pub struct ConflictResolution {
    /// `take a`, `take b` or `set` (as [`Conflict::decision`]).
    pub decision: String,
    /// The values to write to both sides; `None` to delete the record on both sides.
    pub values: Option<Map<String, Value>>,
    /// Who decided (user and host).
    pub by: String,
}

/// Everything one two-way run commits at once, by [`TwoWayStore::commit_two_way`].
#[derive(Clone, Copy, Debug)]
pub struct TwoWayCommit<'a> {
    pub sync: &'a str,
    pub run: i64,
    /// When set, refused with [`crate::StateError::LeaseLost`] unless still current.
    pub lease_token: Option<i64>,
    /// The run's metrics so far (stored as its progress).
    pub metrics: &'a RunMetrics,
    /// Base ledger rows to insert or replace.
    pub upserts: &'a [BaseEntry],
    /// Base ledger keys to remove (the record is gone from both sides).
    pub deletes: &'a [String],
    /// Conflicts found by this run, stored with their status (`open` or `auto`; any other is
    /// refused with [`crate::StateError::InvalidArgument`]). A key that already has an open
    /// conflict has it updated in place (new a and b values) instead of a second row. Their
    /// `id`, `sync`, `run` and `created_at` are ignored: the store assigns them from this
    /// commit; an `auto` conflict without `resolved_at` was resolved at the commit's time.
    pub conflicts: &'a [Conflict],
    /// Conflicts (by id) whose person's resolution this commit wrote: they become `applied`.
    /// Ids of other syncs' conflicts, and of conflicts that are not `resolved`, are ignored.
    pub applied: &'a [i64],
    /// The new checkpoint of the sync (both sides' positions), when it advanced.
    pub checkpoint: Option<&'a Value>,
}

/// What a two-way run records about the records a side refused, in one transaction by
/// [`TwoWayStore::commit_two_way_rejects`], after both sides' writes flushed.
#[derive(Clone, Copy, Debug)]
pub struct TwoWayRejects<'a> {
    pub sync: &'a str,
    pub run: i64,
    /// When set, refused with [`crate::StateError::LeaseLost`] unless still current.
    pub lease_token: Option<i64>,
    /// The run's metrics so far (stored as its progress).
    pub metrics: &'a RunMetrics,
    /// Records a side refused in this run, at most one per key (keyless ones are refused
    /// with [`crate::StateError::InvalidArgument`]). A key that has a pending rejected record
    /// has its newest one updated in place (run, field, reason and raw value; its id and
    /// creation time stay) and any older pending ones of the key noted as superseded by it;
    /// another key gets a new pending record. Their `id`, `sync`, `created_at` and `retried`
    /// are ignored, and `run` is this commit's.
    pub refused: &'a [crate::types::RejectedRecord],
    /// Keys whose pending rejected records this run settled (it delivered the record, or
    /// found nothing left to deliver): they are resolved with `note` as their outcome.
    /// Applied before `refused`, so a key in both stays pending.
    pub resolved: &'a [String],
    /// The outcome recorded on the records of `resolved`.
    pub note: &'a str,
}

/// The two-way part of the state store; every [`crate::StateStore`] is one.
#[async_trait]
pub trait TwoWayStore: Send + Sync {
    /// The base ledger entries of `sync` for those of `keys` that have one.
    async fn base_lookup(&self, sync: &str, keys: &[String]) -> Result<HashMap<String, BaseEntry>>;

    /// The two fingerprints of the base ledger entries of `sync` for those of `keys` that
    /// have one, without reading their values: a run looks the values up
    /// ([`Self::base_lookup`]) only for the records whose decision needs them.
    async fn base_fingerprints(
        &self,
        sync: &str,
        keys: &[String],
    ) -> Result<HashMap<String, BaseFingerprints>>;

    /// Up to `limit` base ledger keys of `sync` greater than `after`, in byte order.
    async fn base_keys(&self, sync: &str, after: Option<&str>, limit: usize)
        -> Result<Vec<String>>;

    /// How many base ledger entries `sync` has.
    async fn base_count(&self, sync: &str) -> Result<u64>;

    /// Commits a two-way run's changes in one transaction (see [`TwoWayCommit`]).
    async fn commit_two_way(&self, commit: &TwoWayCommit<'_>) -> Result<()>;

    /// Records the records a two-way run's sides refused and resolves the pending rejected
    /// records it settled, in one transaction (see [`TwoWayRejects`]). On any error nothing
    /// is written; with a stale lease token the error is `LeaseLost`.
    async fn commit_two_way_rejects(&self, commit: &TwoWayRejects<'_>) -> Result<()>;

    /// Conflicts matching `filter`, newest first.
    async fn conflicts(&self, filter: &ConflictFilter) -> Result<Vec<Conflict>>;

    /// The conflict with this id.
    async fn conflict(&self, id: i64) -> Result<Option<Conflict>>;

    /// The open and resolved (not yet applied) conflicts of `sync`, by key: what a run must
    /// skip (open) or apply (resolved).
    async fn unsettled_conflicts(&self, sync: &str) -> Result<HashMap<String, Conflict>>;

    /// Records a person's decision on open conflict `id`: it becomes `resolved`. Fails with
    /// [`crate::StateError::InvalidArgument`] when the conflict does not exist or is not open.
    async fn resolve_conflict(&self, id: i64, resolution: &ConflictResolution) -> Result<()>;

    /// How many conflicts wait for a person (`open`), per sync.
    async fn open_conflict_counts(&self) -> Result<HashMap<String, u64>>;
}

/// Conflicts per insert or update statement. Each row carries up to four JSON objects, so a
/// statement holds fewer of them than the ledger's statements hold rows.
pub(crate) const CONFLICT_CHUNK: usize = 1_000;

/// The columns a conflict is read with, in [`ConflictRow`]'s order.
const CONFLICT_COLUMNS: &str = r#""id", "sync", "run", "key", "base", "a", "b", "fields",
    "policy", "decision", "resolution", "resolution_deletes", "status", "created_at",
    "resolved_by", "resolved_at""#;

/// `value` as the JSON text the store keeps.
pub(crate) fn json_text(value: &impl Serialize, what: &str) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| StateError::InvalidArgument(format!("{what} cannot be stored as JSON: {e}")))
}

/// A base ledger row as bound: the base as JSON text.
pub(crate) struct BaseUpsert<'a> {
    pub(crate) key: &'a str,
    pub(crate) base: String,
    pub(crate) fingerprint_a: u128,
    pub(crate) fingerprint_b: u128,
}

/// The upserts of a commit as bound, each key once (the last entry wins, as for the one-way
/// ledger: PostgreSQL refuses a statement that upserts the same row twice).
pub(crate) fn prepare_base(entries: &[BaseEntry]) -> Result<Vec<BaseUpsert<'_>>> {
    dedup_by_key(entries, |e| e.key.as_str())
        .into_iter()
        .map(|e| {
            Ok(BaseUpsert {
                key: &e.key,
                base: json_text(&e.base, &format!("the base of key `{}`", e.key))?,
                fingerprint_a: e.fingerprint_a,
                fingerprint_b: e.fingerprint_b,
            })
        })
        .collect()
}

/// A conflict to insert, as bound: its maps and field list as JSON text.
#[derive(Debug, PartialEq)]
pub(crate) struct NewConflict<'a> {
    pub(crate) key: &'a str,
    pub(crate) base: Option<String>,
    pub(crate) a: Option<String>,
    pub(crate) b: Option<String>,
    pub(crate) fields: String,
    pub(crate) policy: &'a str,
    pub(crate) decision: &'a str,
    pub(crate) resolution: Option<String>,
    pub(crate) resolution_deletes: bool,
    pub(crate) status: ConflictStatus,
    pub(crate) resolved_by: Option<&'a str>,
    pub(crate) resolved_at: Option<String>,
}

/// The new values of an open conflict found again, updated in place.
#[derive(Debug, PartialEq)]
pub(crate) struct ConflictUpdate {
    pub(crate) id: i64,
    pub(crate) a: Option<String>,
    pub(crate) b: Option<String>,
    pub(crate) fields: String,
}

/// The conflicts of a commit as bound, in the commit's order. Only `open` and `auto`
/// conflicts can be committed; an `auto` one without `resolved_at` was resolved at `now`.
pub(crate) fn prepare_conflicts<'a>(
    conflicts: &'a [Conflict],
    now: &str,
) -> Result<Vec<NewConflict<'a>>> {
    conflicts
        .iter()
        .map(|c| {
            if !matches!(c.status, ConflictStatus::Open | ConflictStatus::Auto) {
                return Err(StateError::InvalidArgument(format!(
                    "the conflict on key `{}` has status `{}`, but a run records only `open` \
                     and `auto` conflicts",
                    c.key, c.status
                )));
            }
            let map = |value: &Option<Map<String, Value>>, what: &str| {
                value
                    .as_ref()
                    .map(|v| json_text(v, &format!("the {what} of the conflict on `{}`", c.key)))
                    .transpose()
            };
            let resolved_at = match (&c.resolved_at, c.status) {
                (None, ConflictStatus::Auto) => Some(now.to_owned()),
                (at, _) => at.clone(),
            };
            Ok(NewConflict {
                key: &c.key,
                base: map(&c.base, "base")?,
                a: map(&c.a, "side a values")?,
                b: map(&c.b, "side b values")?,
                fields: json_text(&c.fields, "the fields of a conflict")?,
                policy: &c.policy,
                decision: &c.decision,
                resolution: map(&c.resolution, "resolution")?,
                resolution_deletes: c.resolution_deletes,
                status: c.status,
                resolved_by: c.resolved_by.as_deref(),
                resolved_at,
            })
        })
        .collect()
}

/// What a commit writes to the conflicts table.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ConflictPlan<'a> {
    /// Open conflicts found again, by id, each id once.
    pub(crate) updates: Vec<ConflictUpdate>,
    /// Automatic conflicts of unsettled runs found again: they stay as recorded, but move to
    /// the committing run, whose end settles them.
    pub(crate) adopted: Vec<i64>,
    /// New rows, in the commit's order.
    pub(crate) inserts: Vec<NewConflict<'a>>,
}

/// The newest open or automatically decided conflict of a key, as a commit finds it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct FoundConflict {
    pub(crate) id: i64,
    pub(crate) status: ConflictStatus,
    /// The base as stored (JSON text).
    pub(crate) base: Option<String>,
    /// Whether the run that recorded it, or a later run of the sync, ended `succeeded` or
    /// `held`: the conflict's outcome was committed (by its run, or by the rerun that found
    /// the record agreeing after a kill), so the conflict is history and a later one is a new
    /// conflict.
    pub(crate) settled: bool,
}

/// Decides, for the conflicts of a commit in order, which become new rows, which update a
/// stored conflict in place, and which are already recorded: `found` maps keys to their
/// newest stored `open` or `auto` conflict.
///
/// - A stored `open` conflict (a record waiting for a person) found again is updated in
///   place with the sides' new values.
/// - A stored `auto` conflict with the same base, recorded by a run that did not commit its
///   outcome (it crashed, failed or was killed between recording the conflict and its final
///   commit), is the same conflict found again by the rerun: it stays as first recorded (the
///   rerun may see the killed run's own partial writes as a side's values) and nothing is
///   added. A settled conflict (its run or a later one committed) is history: a later one
///   is new, even with an equal base (a value set back, a record deleted and created again).
/// - Anything else is a new row. Within one commit, a later open conflict of a key updates an
///   earlier open one.
pub(crate) fn plan_conflicts<'a>(
    conflicts: Vec<NewConflict<'a>>,
    found: &HashMap<String, FoundConflict>,
) -> ConflictPlan<'a> {
    let mut plan = ConflictPlan::default();
    let mut updated: HashMap<i64, usize> = HashMap::new();
    let mut inserted: HashMap<&'a str, usize> = HashMap::new();
    for conflict in conflicts {
        if let Some(i) = inserted
            .get(conflict.key)
            .copied()
            .filter(|&i| plan.inserts[i].status == ConflictStatus::Open)
        {
            let row = &mut plan.inserts[i];
            row.a = conflict.a;
            row.b = conflict.b;
            row.fields = conflict.fields;
            continue;
        }
        let stored = found
            .get(conflict.key)
            .filter(|_| !inserted.contains_key(conflict.key));
        match stored {
            Some(stored) if stored.status == ConflictStatus::Open => {
                let update = ConflictUpdate {
                    id: stored.id,
                    a: conflict.a,
                    b: conflict.b,
                    fields: conflict.fields,
                };
                match updated.get(&stored.id) {
                    Some(&i) => plan.updates[i] = update,
                    None => {
                        updated.insert(stored.id, plan.updates.len());
                        plan.updates.push(update);
                    }
                }
            }
            Some(stored)
                if stored.status == ConflictStatus::Auto
                    && conflict.status == ConflictStatus::Auto
                    && !stored.settled
                    && stored.base == conflict.base =>
            {
                plan.adopted.push(stored.id);
            }
            _ => {
                inserted.insert(conflict.key, plan.inserts.len());
                plan.inserts.push(conflict);
            }
        }
    }
    plan
}

/// The id and key of the pending rejected records of sync `$1` whose key is in `key_list`
/// (the backend's list of the keys in `$2`), by the index `rejected_pending`.
pub(crate) fn pending_rejects_sql(key_list: &str) -> String {
    format!(
        r#"SELECT "id", "key" FROM "rejected"
           WHERE "sync" = $1 AND "retried" IS NULL AND "key" IN ({key_list})"#
    )
}

/// Refuses again pending rejected record `$5`: `$1` the run, `$2` the field, `$3` the
/// reason, `$4` the raw value (JSON text).
pub(crate) const REJECT_AGAIN_SQL: &str = r#"UPDATE "rejected"
    SET "run" = $1, "field" = $2, "reason" = $3, "raw" = $4
    WHERE "id" = $5 AND "retried" IS NULL"#;

/// What a two-way commit does with its refused records (see [`plan_refusals`]).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct RefusalPlan {
    /// For each refused record, in order, the pending record it updates in place (`None`: a
    /// new record).
    pub(crate) targets: Vec<Option<i64>>,
    /// Older pending records of the same keys, with the id that supersedes each.
    pub(crate) superseded: Vec<(i64, i64)>,
}

/// Plans the refused records of a two-way commit: each updates the newest pending record of
/// its key, whose older pending records it supersedes. `pending` is every pending (id, key)
/// of the commit's keys.
pub(crate) fn plan_refusals(
    refused: &[crate::types::RejectedRecord],
    pending: &[(i64, String)],
) -> Result<RefusalPlan> {
    let mut newest: HashMap<&str, i64> = HashMap::new();
    for (id, key) in pending {
        let slot = newest.entry(key.as_str()).or_insert(*id);
        *slot = (*slot).max(*id);
    }
    let mut targets = Vec::with_capacity(refused.len());
    for r in refused {
        let key = r.key.as_deref().ok_or_else(|| {
            StateError::InvalidArgument(
                "a record a two-way run's side refused has no key; it cannot be retried by key"
                    .into(),
            )
        })?;
        targets.push(newest.get(key).copied());
    }
    let superseded = pending
        .iter()
        .filter_map(|(id, key)| {
            let newest = newest.get(key.as_str()).copied().unwrap_or(*id);
            (newest != *id).then_some((*id, newest))
        })
        .collect();
    Ok(RefusalPlan {
        targets,
        superseded,
    })
}

/// `$1` the sync, the keys in `key_list` (the backend's list of the keys in `$2`).
pub(crate) fn base_lookup_sql(key_list: &str) -> String {
    format!(
        r#"SELECT "key", "base", "fingerprint_a", "fingerprint_b" FROM "two_way_ledger"
           WHERE "sync" = $1 AND "key" IN ({key_list})"#
    )
}

/// `$1` the sync, the keys in `key_list` (the backend's list of the keys in `$2`): the
/// fingerprints only.
pub(crate) fn base_fingerprints_sql(key_list: &str) -> String {
    format!(
        r#"SELECT "key", "fingerprint_a", "fingerprint_b" FROM "two_way_ledger"
           WHERE "sync" = $1 AND "key" IN ({key_list})"#
    )
}

/// `$1` the sync, the keys in `key_list` (the backend's list of the keys in `$2`).
/// How many of the keys in the list are in sync `$1`'s base ledger.
pub(crate) fn base_present_sql(key_list: &str) -> String {
    format!(r#"SELECT COUNT(*) FROM "two_way_ledger" WHERE "sync" = $1 AND "key" IN ({key_list})"#)
}

/// Adds `$2` to sync `$1`'s stored base count (see migration 9).
pub(crate) const BASE_COUNT_ADD_SQL: &str = r#"INSERT INTO "two_way_counts" ("sync", "records")
    VALUES ($1, $2)
    ON CONFLICT ("sync") DO UPDATE SET "records" = "two_way_counts"."records" + excluded."records""#;

pub(crate) fn base_delete_sql(key_list: &str) -> String {
    format!(r#"DELETE FROM "two_way_ledger" WHERE "sync" = $1 AND "key" IN ({key_list})"#)
}

pub(crate) fn base_keys_sql(after: bool) -> &'static str {
    if after {
        r#"SELECT "key" FROM "two_way_ledger" WHERE "sync" = $1 AND "key" > $2
           ORDER BY "key" LIMIT $3"#
    } else {
        r#"SELECT "key" FROM "two_way_ledger" WHERE "sync" = $1 ORDER BY "key" LIMIT $2"#
    }
}

/// What a base upsert does with a key the base ledger already has: replace the whole row.
const BASE_ON_CONFLICT: &str = r#"ON CONFLICT ("sync", "key") DO UPDATE SET
    "base" = excluded."base", "fingerprint_a" = excluded."fingerprint_a",
    "fingerprint_b" = excluded."fingerprint_b", "synced_at" = excluded."synced_at""#;

/// The key, id, status and base of the open and automatically decided conflicts of sync
/// `$1` whose key is in `key_list` (the backend's list of the keys in `$2`), by the index
/// `conflicts_by_key`, with whether each one is settled: the run that recorded it ended
/// `succeeded` or `held`, or a later run of the sync did. A conflict recorded by a run that
/// was killed is found again only by the runs up to the first one that commits its outcome
/// (its rerun); once one has, the conflict is history even if that rerun found the record
/// agreeing (the killed run had written both sides), so a conflict with an equal base much
/// later is a new one.
pub(crate) fn found_conflicts_sql(key_list: &str) -> String {
    format!(
        r#"SELECT "c"."key", "c"."id", "c"."status", "c"."base",
                  CASE WHEN EXISTS (
                      SELECT 1 FROM "runs" AS "r"
                      WHERE "r"."sync" = "c"."sync" AND "r"."id" >= "c"."run"
                        AND "r"."status" IN ('succeeded', 'held')
                  ) THEN 1 ELSE 0 END
           FROM "conflicts" AS "c"
           WHERE "c"."sync" = $1 AND "c"."key" IN ({key_list})
             AND "c"."status" IN ('open', 'auto')"#
    )
}

/// Marks the resolved conflicts of sync `$1` whose id is in `id_list` (the backend's list of
/// the ids in `$2`) applied. Ids of other syncs, and conflicts in another status, are left
/// alone.
pub(crate) fn mark_applied_sql(id_list: &str) -> String {
    format!(
        r#"UPDATE "conflicts" SET "status" = 'applied'
           WHERE "sync" = $1 AND "status" = 'resolved' AND "id" IN ({id_list})"#
    )
}

/// Moves the conflicts of sync `$1` whose id is in `id_list` (the backend's list of the ids
/// in `$3`) to run `$2`.
pub(crate) fn adopt_conflicts_sql(id_list: &str) -> String {
    format!(r#"UPDATE "conflicts" SET "run" = $2 WHERE "sync" = $1 AND "id" IN ({id_list})"#)
}

pub(crate) fn conflict_sql() -> String {
    format!(r#"SELECT {CONFLICT_COLUMNS} FROM "conflicts" WHERE "id" = $1"#)
}

/// The open and resolved conflicts of sync `$1`, oldest first (so that, collected by key, the
/// newest of a key wins).
pub(crate) fn unsettled_sql() -> String {
    format!(
        r#"SELECT {CONFLICT_COLUMNS} FROM "conflicts"
           WHERE "sync" = $1 AND "status" IN ('open', 'resolved') ORDER BY "id""#
    )
}

/// Records a person's decision on conflict `$1` if it is open: `$2` decision, `$3`
/// resolution, `$4` whether it deletes, `$5` who, `$6` when.
pub(crate) fn resolve_sql() -> &'static str {
    r#"UPDATE "conflicts" SET "status" = 'resolved', "decision" = $2, "resolution" = $3,
           "resolution_deletes" = $4, "resolved_by" = $5, "resolved_at" = $6
       WHERE "id" = $1 AND "status" = 'open'"#
}

pub(crate) fn conflict_status_sql() -> &'static str {
    r#"SELECT "status" FROM "conflicts" WHERE "id" = $1"#
}

pub(crate) fn open_counts_sql() -> &'static str {
    r#"SELECT "sync", COUNT(*) FROM "conflicts" WHERE "status" = 'open' GROUP BY "sync""#
}

/// The query listing conflicts matching `filter`, newest first, with its parameters. A limit
/// of 0 lists them all.
pub(crate) fn conflicts_query(filter: &ConflictFilter) -> (String, Vec<Param>) {
    let mut conditions = Vec::new();
    let mut binds = Vec::new();
    if let Some(sync) = &filter.sync {
        binds.push(Param::Text(sync.clone()));
        conditions.push(format!(r#""sync" = ${}"#, binds.len()));
    }
    if !filter.statuses.is_empty() {
        let mut statuses = Vec::new();
        for status in &filter.statuses {
            binds.push(Param::Text(status.as_str().to_owned()));
            statuses.push(format!("${}", binds.len()));
        }
        conditions.push(format!(r#""status" IN ({})"#, statuses.join(", ")));
    }
    let mut sql = format!(r#"SELECT {CONFLICT_COLUMNS} FROM "conflicts""#);
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(r#" ORDER BY "id" DESC"#);
    if filter.limit > 0 {
        binds.push(Param::Int(limit(filter.limit)));
        sql.push_str(&format!(" LIMIT ${}", binds.len()));
    }
    (sql, binds)
}

/// A base ledger row as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct BaseRow {
    key: String,
    base: String,
    fingerprint_a: Vec<u8>,
    fingerprint_b: Vec<u8>,
}

impl BaseRow {
    pub(crate) fn into_entry(self) -> Result<BaseEntry> {
        let fingerprint_a = stored_fingerprint(&self.key, &self.fingerprint_a, "a")?;
        let fingerprint_b = stored_fingerprint(&self.key, &self.fingerprint_b, "b")?;
        let base = serde_json::from_str(&self.base).map_err(|e| {
            StateError::Corrupt(format!(
                "base ledger key `{}` has a base that is not a JSON object: {e}",
                self.key
            ))
        })?;
        Ok(BaseEntry {
            key: self.key,
            base,
            fingerprint_a,
            fingerprint_b,
        })
    }
}

/// A base ledger row's fingerprints as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct FingerprintRow {
    key: String,
    fingerprint_a: Vec<u8>,
    fingerprint_b: Vec<u8>,
}

impl FingerprintRow {
    pub(crate) fn into_pair(self) -> Result<(String, BaseFingerprints)> {
        let a = stored_fingerprint(&self.key, &self.fingerprint_a, "a")?;
        let b = stored_fingerprint(&self.key, &self.fingerprint_b, "b")?;
        Ok((self.key, BaseFingerprints { a, b }))
    }
}

/// A stored fingerprint (16 bytes, big-endian) of side `side` of base ledger key `key`.
fn stored_fingerprint(key: &str, bytes: &[u8], side: &str) -> Result<u128> {
    <[u8; 16]>::try_from(bytes)
        .map(u128::from_be_bytes)
        .map_err(|_| {
            StateError::Corrupt(format!(
                "base ledger key `{key}` has a side {side} fingerprint of {} bytes instead of 16",
                bytes.len()
            ))
        })
}

/// A conflict as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct ConflictRow {
    id: i64,
    sync: String,
    run: i64,
    key: String,
    base: Option<String>,
    a: Option<String>,
    b: Option<String>,
    fields: String,
    policy: String,
    decision: String,
    resolution: Option<String>,
    resolution_deletes: bool,
    status: String,
    created_at: String,
    resolved_by: Option<String>,
    resolved_at: Option<String>,
}

impl ConflictRow {
    pub(crate) fn into_conflict(self) -> Result<Conflict> {
        let id = self.id;
        let corrupt = |column: &str, e: serde_json::Error| {
            StateError::Corrupt(format!("conflict {id} has a bad `{column}`: {e}"))
        };
        let map = |text: Option<String>, column: &str| {
            text.map(|t| serde_json::from_str::<Map<String, Value>>(&t))
                .transpose()
                .map_err(|e| corrupt(column, e))
        };
        Ok(Conflict {
            id,
            base: map(self.base, "base")?,
            a: map(self.a, "a")?,
            b: map(self.b, "b")?,
            fields: serde_json::from_str(&self.fields).map_err(|e| corrupt("fields", e))?,
            resolution: map(self.resolution, "resolution")?,
            status: ConflictStatus::parse(&self.status).ok_or_else(|| {
                StateError::Corrupt(format!("conflict {id} has status `{}`", self.status))
            })?,
            sync: self.sync,
            run: self.run,
            key: self.key,
            policy: self.policy,
            decision: self.decision,
            resolution_deletes: self.resolution_deletes,
            created_at: self.created_at,
            resolved_by: self.resolved_by,
            resolved_at: self.resolved_at,
        })
    }
}

/// The SQLite flavour of the bulk statements: a batch is one JSON array parameter.
pub(crate) mod sqlite {
    use std::sync::LazyLock;

    use serde_json::json;

    use super::{BaseUpsert, ConflictUpdate, NewConflict, BASE_ON_CONFLICT};

    /// `$1` the sync, `$2` the commit time, `$3` a JSON array of rows
    /// `[key, base as JSON text, fingerprint_a as hex, fingerprint_b as hex]`. The `WHERE
    /// true` lets SQLite's parser tell the upsert clause from a join constraint.
    pub(crate) fn base_upsert_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                r#"INSERT INTO "two_way_ledger"
                       ("sync", "key", "base", "fingerprint_a", "fingerprint_b", "synced_at")
                   SELECT $1, "value" ->> 0, "value" ->> 1, unhex("value" ->> 2),
                          unhex("value" ->> 3), $2
                   FROM json_each($3) WHERE true
                   {BASE_ON_CONFLICT}"#
            )
        });
        &SQL
    }

    /// The JSON array of `rows`, one array of four values per row. The base travels as a
    /// JSON string, so that it is stored exactly as serialized.
    pub(crate) fn base_rows_json(rows: &[BaseUpsert<'_>]) -> String {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                json!([
                    r.key,
                    r.base,
                    format!("{:032x}", r.fingerprint_a),
                    format!("{:032x}", r.fingerprint_b),
                ])
            })
            .collect();
        serde_json::Value::from(rows).to_string()
    }

    /// `$1` the sync, `$2` the run, `$3` the commit time, `$4` a JSON array of rows as
    /// [`conflict_rows_json`] makes them. `json_each` walks the array in order, so ids follow
    /// the commit's order.
    pub(crate) fn conflict_insert_sql() -> &'static str {
        r#"INSERT INTO "conflicts" ("sync", "run", "key", "base", "a", "b", "fields", "policy",
               "decision", "resolution", "resolution_deletes", "status", "created_at",
               "resolved_by", "resolved_at")
           SELECT $1, $2, "value" ->> 0, "value" ->> 1, "value" ->> 2, "value" ->> 3,
                  "value" ->> 4, "value" ->> 5, "value" ->> 6, "value" ->> 7, "value" ->> 8,
                  "value" ->> 9, $3, "value" ->> 10, "value" ->> 11
           FROM json_each($4)"#
    }

    /// The JSON array of `rows`, one array of twelve values per row; JSON texts travel as
    /// strings, and `->>` turns JSON null into NULL and true and false into 1 and 0.
    pub(crate) fn conflict_rows_json(rows: &[NewConflict<'_>]) -> String {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                json!([
                    r.key,
                    r.base,
                    r.a,
                    r.b,
                    r.fields,
                    r.policy,
                    r.decision,
                    r.resolution,
                    r.resolution_deletes,
                    r.status.as_str(),
                    r.resolved_by,
                    r.resolved_at,
                ])
            })
            .collect();
        serde_json::Value::from(rows).to_string()
    }

    /// `$1` the run, `$2` a JSON array of rows `[id, a, b, fields]`.
    pub(crate) fn conflict_update_sql() -> &'static str {
        r#"UPDATE "conflicts" SET "run" = $1, "a" = "new"."value" ->> 1,
               "b" = "new"."value" ->> 2, "fields" = "new"."value" ->> 3
           FROM json_each($2) AS "new"
           WHERE "conflicts"."id" = "new"."value" ->> 0"#
    }

    pub(crate) fn conflict_updates_json(rows: &[ConflictUpdate]) -> String {
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| json!([r.id, r.a, r.b, r.fields]))
            .collect();
        serde_json::Value::from(rows).to_string()
    }

    /// A one-column table, column `"value"`, of the ids in parameter `$n`, bound as
    /// [`id_list`] makes it.
    pub(crate) fn id_list_sql(n: usize) -> String {
        format!(r#"SELECT "value" FROM json_each(${n})"#)
    }

    /// `ids` as the one parameter [`id_list_sql`] reads: a JSON array.
    pub(crate) fn id_list(ids: &[i64]) -> String {
        serde_json::Value::from(ids).to_string()
    }
}

/// The PostgreSQL flavour of the bulk statements: a batch is one array per column.
pub(crate) mod postgres {
    use std::sync::LazyLock;

    use super::{BaseUpsert, ConflictUpdate, NewConflict, BASE_ON_CONFLICT};

    /// `$1` the sync, `$2` the commit time, `$3`..`$6` the columns as arrays.
    pub(crate) fn base_upsert_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                r#"INSERT INTO "two_way_ledger"
                       ("sync", "key", "base", "fingerprint_a", "fingerprint_b", "synced_at")
                   SELECT $1, u."key", u."base", u."fingerprint_a", u."fingerprint_b", $2
                   FROM UNNEST($3::text[], $4::text[], $5::bytea[], $6::bytea[])
                        AS u("key", "base", "fingerprint_a", "fingerprint_b")
                   {BASE_ON_CONFLICT}"#
            )
        });
        &SQL
    }

    /// The base upsert's columns, as the arrays [`base_upsert_sql`] binds.
    pub(crate) struct BaseColumns<'a> {
        pub(crate) keys: Vec<&'a str>,
        pub(crate) bases: Vec<&'a str>,
        pub(crate) fingerprints_a: Vec<[u8; 16]>,
        pub(crate) fingerprints_b: Vec<[u8; 16]>,
    }

    pub(crate) fn base_columns<'a>(rows: &'a [BaseUpsert<'a>]) -> BaseColumns<'a> {
        BaseColumns {
            keys: rows.iter().map(|r| r.key).collect(),
            bases: rows.iter().map(|r| r.base.as_str()).collect(),
            fingerprints_a: rows.iter().map(|r| r.fingerprint_a.to_be_bytes()).collect(),
            fingerprints_b: rows.iter().map(|r| r.fingerprint_b.to_be_bytes()).collect(),
        }
    }

    /// `$1` the sync, `$2` the run, `$3` the commit time, `$4`..`$15` the columns as arrays.
    /// The ordinality keeps ids in the commit's order.
    pub(crate) fn conflict_insert_sql() -> &'static str {
        r#"INSERT INTO "conflicts" ("sync", "run", "key", "base", "a", "b", "fields", "policy",
               "decision", "resolution", "resolution_deletes", "status", "created_at",
               "resolved_by", "resolved_at")
           SELECT $1, $2, u."key", u."base", u."a", u."b", u."fields", u."policy", u."decision",
                  u."resolution", u."resolution_deletes", u."status", $3, u."resolved_by",
                  u."resolved_at"
           FROM UNNEST($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[],
                       $10::text[], $11::text[], $12::bool[], $13::text[], $14::text[],
                       $15::text[])
                WITH ORDINALITY AS u("key", "base", "a", "b", "fields", "policy", "decision",
                                     "resolution", "resolution_deletes", "status",
                                     "resolved_by", "resolved_at", "n")
           ORDER BY u."n""#
    }

    /// The insert's columns, as the arrays [`conflict_insert_sql`] binds.
    pub(crate) struct ConflictColumns<'a> {
        pub(crate) keys: Vec<&'a str>,
        pub(crate) bases: Vec<Option<&'a str>>,
        pub(crate) a: Vec<Option<&'a str>>,
        pub(crate) b: Vec<Option<&'a str>>,
        pub(crate) fields: Vec<&'a str>,
        pub(crate) policies: Vec<&'a str>,
        pub(crate) decisions: Vec<&'a str>,
        pub(crate) resolutions: Vec<Option<&'a str>>,
        pub(crate) resolution_deletes: Vec<bool>,
        pub(crate) statuses: Vec<&'static str>,
        pub(crate) resolved_by: Vec<Option<&'a str>>,
        pub(crate) resolved_at: Vec<Option<&'a str>>,
    }

    pub(crate) fn conflict_columns<'a>(rows: &'a [NewConflict<'a>]) -> ConflictColumns<'a> {
        ConflictColumns {
            keys: rows.iter().map(|r| r.key).collect(),
            bases: rows.iter().map(|r| r.base.as_deref()).collect(),
            a: rows.iter().map(|r| r.a.as_deref()).collect(),
            b: rows.iter().map(|r| r.b.as_deref()).collect(),
            fields: rows.iter().map(|r| r.fields.as_str()).collect(),
            policies: rows.iter().map(|r| r.policy).collect(),
            decisions: rows.iter().map(|r| r.decision).collect(),
            resolutions: rows.iter().map(|r| r.resolution.as_deref()).collect(),
            resolution_deletes: rows.iter().map(|r| r.resolution_deletes).collect(),
            statuses: rows.iter().map(|r| r.status.as_str()).collect(),
            resolved_by: rows.iter().map(|r| r.resolved_by).collect(),
            resolved_at: rows.iter().map(|r| r.resolved_at.as_deref()).collect(),
        }
    }

    /// `$1` the run, `$2`..`$5` the columns `id`, `a`, `b`, `fields` as arrays.
    pub(crate) fn conflict_update_sql() -> &'static str {
        r#"UPDATE "conflicts" SET "run" = $1, "a" = u."a", "b" = u."b", "fields" = u."fields"
           FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[])
                AS u("id", "a", "b", "fields")
           WHERE "conflicts"."id" = u."id""#
    }

    /// The update's columns, as the arrays [`conflict_update_sql`] binds.
    pub(crate) struct UpdateColumns<'a> {
        pub(crate) ids: Vec<i64>,
        pub(crate) a: Vec<Option<&'a str>>,
        pub(crate) b: Vec<Option<&'a str>>,
        pub(crate) fields: Vec<&'a str>,
    }

    pub(crate) fn update_columns(rows: &[ConflictUpdate]) -> UpdateColumns<'_> {
        UpdateColumns {
            ids: rows.iter().map(|r| r.id).collect(),
            a: rows.iter().map(|r| r.a.as_deref()).collect(),
            b: rows.iter().map(|r| r.b.as_deref()).collect(),
            fields: rows.iter().map(|r| r.fields.as_str()).collect(),
        }
    }

    /// A one-column table, column `"value"`, of the ids in parameter `$n`, bound as
    /// [`id_list`] makes it.
    pub(crate) fn id_list_sql(n: usize) -> String {
        format!(r#"SELECT unnest(${n}::bigint[]) AS "value""#)
    }

    /// `ids` as the one parameter [`id_list_sql`] reads: a `bigint[]`.
    pub(crate) fn id_list(ids: &[i64]) -> &[i64] {
        ids
    }
}

/// Implements [`TwoWayStore`] for a backend type. Besides what `backend.rs` lists, a backend
/// type provides the two-way bulk statements, whose SQL and parameters differ by backend (see
/// the `sqlite` and `postgres` modules above): `id_list_sql(n)` and `id_list(ids)`, as
/// `key_list_sql` and `key_list` for ids, and, on a transaction's connection,
/// `base_upsert_chunk(tx, sync, now, rows)`, `conflict_insert_chunk(tx, sync, run, now, rows)`
/// and `conflict_update_chunk(tx, run, rows)`.
macro_rules! impl_two_way_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::two_way::TwoWayStore for $store {
            async fn base_lookup(
                &self,
                sync: &str,
                keys: &[String],
            ) -> $crate::error::Result<
                std::collections::HashMap<String, $crate::two_way::BaseEntry>,
            > {
                let text = $crate::two_way::base_lookup_sql(&Self::key_list_sql(2));
                let mut found = std::collections::HashMap::with_capacity(keys.len());
                for chunk in keys.chunks($crate::ledger::LEDGER_CHUNK) {
                    let rows: Vec<$crate::two_way::BaseRow> = sqlx::query_as(&text)
                        .bind(sync)
                        .bind(Self::key_list(chunk.iter().map(String::as_str)))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::db("looking up base ledger entries"))?;
                    for row in rows {
                        let entry = row.into_entry()?;
                        found.insert(entry.key.clone(), entry);
                    }
                }
                Ok(found)
            }

            async fn base_fingerprints(
                &self,
                sync: &str,
                keys: &[String],
            ) -> $crate::error::Result<
                std::collections::HashMap<String, $crate::two_way::BaseFingerprints>,
            > {
                let text = $crate::two_way::base_fingerprints_sql(&Self::key_list_sql(2));
                let mut found = std::collections::HashMap::with_capacity(keys.len());
                for chunk in keys.chunks($crate::ledger::LEDGER_CHUNK) {
                    let rows: Vec<$crate::two_way::FingerprintRow> = sqlx::query_as(&text)
                        .bind(sync)
                        .bind(Self::key_list(chunk.iter().map(String::as_str)))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::db("looking up base ledger fingerprints"))?;
                    for row in rows {
                        let (key, fingerprints) = row.into_pair()?;
                        found.insert(key, fingerprints);
                    }
                }
                Ok(found)
            }

            async fn base_keys(
                &self,
                sync: &str,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<String>> {
                use $crate::sql::limit as sql_limit;
                use $crate::two_way::base_keys_sql;
                match after {
                    Some(after) => {
                        sqlx::query_scalar(base_keys_sql(true))
                            .bind(sync)
                            .bind(after)
                            .bind(sql_limit(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                    None => {
                        sqlx::query_scalar(base_keys_sql(false))
                            .bind(sync)
                            .bind(sql_limit(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                }
                .map_err($crate::error::db("listing base ledger keys"))
            }

            async fn base_count(&self, sync: &str) -> $crate::error::Result<u64> {
                // Kept by every commit (migration 9), not counted: counting reads the table.
                let count: Option<i64> = sqlx::query_scalar(
                    r#"SELECT "records" FROM "two_way_counts" WHERE "sync" = $1"#,
                )
                .bind(sync)
                .fetch_optional(&self.pool)
                .await
                .map_err($crate::error::db("reading the base ledger's count"))?;
                Ok(count.and_then(|c| u64::try_from(c).ok()).unwrap_or(0))
            }

            async fn commit_two_way(
                &self,
                c: &$crate::two_way::TwoWayCommit<'_>,
            ) -> $crate::error::Result<()> {
                use $crate::error::db;
                use $crate::ledger::LEDGER_CHUNK;
                use $crate::sql;
                use $crate::two_way as tw;
                const OP: &str = "committing a two-way batch";

                // Everything that can fail without the database is prepared first.
                let metrics = sql::metric_values(c.metrics)?;
                let upserts = tw::prepare_base(c.upserts)?;
                let checkpoint = c.checkpoint.map(|v| v.to_string());
                let now = sql::timestamp(self.now().await?);
                let conflicts = tw::prepare_conflicts(c.conflicts, &now)?;

                // Dropping `tx` on an early return rolls everything back.
                let mut tx = self.begin_write().await?;
                $crate::backend::fence_and_progress!(tx, c, metrics, now, OP, "two-way commit");
                // The stored base count follows what the statements below really change: the
                // keys new to the base, less the rows deleted.
                let mut count_change: i64 = 0;
                let present_sql = tw::base_present_sql(&Self::key_list_sql(2));
                for chunk in upserts.chunks(LEDGER_CHUNK) {
                    let present: i64 = sqlx::query_scalar(&present_sql)
                        .bind(c.sync)
                        .bind(Self::key_list(chunk.iter().map(|u| u.key)))
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                    count_change += chunk.len() as i64 - present;
                    Self::base_upsert_chunk(&mut *tx, c.sync, &now, chunk).await?;
                }
                if !c.deletes.is_empty() {
                    let text = tw::base_delete_sql(&Self::key_list_sql(2));
                    for chunk in c.deletes.chunks(LEDGER_CHUNK) {
                        let deleted = sqlx::query(&text)
                            .bind(c.sync)
                            .bind(Self::key_list(chunk.iter().map(String::as_str)))
                            .execute(&mut *tx)
                            .await
                            .map_err(db(OP))?
                            .rows_affected();
                        count_change -= deleted as i64;
                    }
                }
                if count_change != 0 {
                    sqlx::query(tw::BASE_COUNT_ADD_SQL)
                        .bind(c.sync)
                        .bind(count_change)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                }
                if !conflicts.is_empty() {
                    // A conflict found again updates its stored row (see `plan_conflicts`).
                    let mut keys: Vec<&str> = conflicts.iter().map(|n| n.key).collect();
                    keys.sort_unstable();
                    keys.dedup();
                    let text = tw::found_conflicts_sql(&Self::key_list_sql(2));
                    let mut found: std::collections::HashMap<String, tw::FoundConflict> =
                        std::collections::HashMap::new();
                    for chunk in keys.chunks(LEDGER_CHUNK) {
                        let rows: Vec<(String, i64, String, Option<String>, i32)> =
                            sqlx::query_as(&text)
                                .bind(c.sync)
                                .bind(Self::key_list(chunk.iter().copied()))
                                .fetch_all(&mut *tx)
                                .await
                                .map_err(db(OP))?;
                        for (key, id, status, base, settled) in rows {
                            let Some(status) = $crate::two_way::ConflictStatus::parse(&status)
                            else {
                                continue;
                            };
                            // The newest conflict of the key is the one a run can find again.
                            let candidate = tw::FoundConflict {
                                id,
                                status,
                                base,
                                settled: settled != 0,
                            };
                            match found.get(&key) {
                                Some(existing) if existing.id > id => {}
                                _ => {
                                    found.insert(key, candidate);
                                }
                            }
                        }
                    }
                    let plan = tw::plan_conflicts(conflicts, &found);
                    for chunk in plan.updates.chunks(tw::CONFLICT_CHUNK) {
                        Self::conflict_update_chunk(&mut *tx, c.run, chunk).await?;
                    }
                    if !plan.adopted.is_empty() {
                        let text = tw::adopt_conflicts_sql(&Self::id_list_sql(3));
                        for chunk in plan.adopted.chunks(LEDGER_CHUNK) {
                            sqlx::query(&text)
                                .bind(c.sync)
                                .bind(c.run)
                                .bind(Self::id_list(chunk))
                                .execute(&mut *tx)
                                .await
                                .map_err(db(OP))?;
                        }
                    }
                    for chunk in plan.inserts.chunks(tw::CONFLICT_CHUNK) {
                        Self::conflict_insert_chunk(&mut *tx, c.sync, c.run, &now, chunk).await?;
                    }
                }
                if !c.applied.is_empty() {
                    let text = tw::mark_applied_sql(&Self::id_list_sql(2));
                    for chunk in c.applied.chunks(LEDGER_CHUNK) {
                        sqlx::query(&text)
                            .bind(c.sync)
                            .bind(Self::id_list(chunk))
                            .execute(&mut *tx)
                            .await
                            .map_err(db(OP))?;
                    }
                }
                if let Some(checkpoint) = &checkpoint {
                    sqlx::query(sql::checkpoint_upsert_sql())
                        .bind(c.sync)
                        .bind(checkpoint.as_str())
                        .bind(c.run)
                        .bind(&now)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                }
                tx.commit().await.map_err(db(OP))
            }

            async fn commit_two_way_rejects(
                &self,
                c: &$crate::two_way::TwoWayRejects<'_>,
            ) -> $crate::error::Result<()> {
                use $crate::error::db;
                use $crate::ledger::LEDGER_CHUNK;
                use $crate::sql;
                use $crate::two_way as tw;
                const OP: &str = "recording a two-way run's refused records";

                // Everything that can fail without the database is prepared first.
                let metrics = sql::metric_values(c.metrics)?;
                let raws: Vec<String> = c.refused.iter().map(|r| r.raw.to_string()).collect();
                let mut refused_keys: Vec<&str> = Vec::with_capacity(c.refused.len());
                for r in c.refused {
                    refused_keys.push(r.key.as_deref().ok_or_else(|| {
                        $crate::error::StateError::InvalidArgument(
                            "a record a two-way run's side refused has no key".into(),
                        )
                    })?);
                }
                let now = sql::timestamp(self.now().await?);

                // Dropping `tx` on an early return rolls everything back.
                let mut tx = self.begin_write().await?;
                $crate::backend::fence_and_progress!(
                    tx,
                    c,
                    metrics,
                    now,
                    OP,
                    "two-way rejects commit"
                );
                if !c.resolved.is_empty() {
                    let text = sql::rejected_resolve_sql(&Self::key_list_sql(3));
                    for chunk in c.resolved.chunks(LEDGER_CHUNK) {
                        sqlx::query(&text)
                            .bind(c.note)
                            .bind(c.sync)
                            .bind(Self::key_list(chunk.iter().map(String::as_str)))
                            .execute(&mut *tx)
                            .await
                            .map_err(db(OP))?;
                    }
                }
                if c.refused.is_empty() {
                    return tx.commit().await.map_err(db(OP));
                }
                let text = tw::pending_rejects_sql(&Self::key_list_sql(2));
                let mut pending: Vec<(i64, String)> = Vec::new();
                for chunk in refused_keys.chunks(LEDGER_CHUNK) {
                    let rows: Vec<(i64, String)> = sqlx::query_as(&text)
                        .bind(c.sync)
                        .bind(Self::key_list(chunk.iter().copied()))
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                    pending.extend(rows);
                }
                let tw::RefusalPlan {
                    targets,
                    superseded,
                } = tw::plan_refusals(c.refused, &pending)?;
                for (id, by) in superseded {
                    sqlx::query(&sql::rejected_retried_sql(1))
                        .bind(format!("superseded by rejected record {by}, pending for the same key"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                }
                let mut new: Vec<(&$crate::types::RejectedRecord, &String)> = Vec::new();
                for ((record, raw), target) in c.refused.iter().zip(&raws).zip(targets) {
                    match target {
                        Some(id) => {
                            sqlx::query(tw::REJECT_AGAIN_SQL)
                                .bind(c.run)
                                .bind(record.field.as_deref())
                                .bind(record.reason.as_str())
                                .bind(raw.as_str())
                                .bind(id)
                                .execute(&mut *tx)
                                .await
                                .map_err(db(OP))?;
                        }
                        None => new.push((record, raw)),
                    }
                }
                for chunk in new.chunks(sql::REJECTED_CHUNK) {
                    let text = sql::rejected_insert_sql(chunk.len());
                    let mut query = sqlx::query(&text);
                    for (record, raw) in chunk {
                        query = query
                            .bind(c.sync)
                            .bind(c.run)
                            .bind(record.key.as_deref())
                            .bind(record.field.as_deref())
                            .bind(record.reason.as_str())
                            .bind(raw.as_str())
                            .bind(now.as_str());
                    }
                    query.execute(&mut *tx).await.map_err(db(OP))?;
                }
                tx.commit().await.map_err(db(OP))
            }

            async fn conflicts(
                &self,
                filter: &$crate::two_way::ConflictFilter,
            ) -> $crate::error::Result<Vec<$crate::two_way::Conflict>> {
                use $crate::sql::Param;
                use $crate::two_way::{conflicts_query, ConflictRow};
                let (text, params) = conflicts_query(filter);
                let mut query = sqlx::query_as::<_, ConflictRow>(&text);
                for param in &params {
                    query = match param {
                        Param::Int(value) => query.bind(*value),
                        Param::Text(value) => query.bind(value.as_str()),
                    };
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::db("listing conflicts"))?;
                rows.into_iter().map(ConflictRow::into_conflict).collect()
            }

            async fn conflict(
                &self,
                id: i64,
            ) -> $crate::error::Result<Option<$crate::two_way::Conflict>> {
                let row: Option<$crate::two_way::ConflictRow> =
                    sqlx::query_as(&$crate::two_way::conflict_sql())
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::db("reading a conflict"))?;
                row.map($crate::two_way::ConflictRow::into_conflict)
                    .transpose()
            }

            async fn unsettled_conflicts(
                &self,
                sync: &str,
            ) -> $crate::error::Result<
                std::collections::HashMap<String, $crate::two_way::Conflict>,
            > {
                let rows: Vec<$crate::two_way::ConflictRow> =
                    sqlx::query_as(&$crate::two_way::unsettled_sql())
                        .bind(sync)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::db("listing unsettled conflicts"))?;
                let mut by_key = std::collections::HashMap::with_capacity(rows.len());
                // Oldest first: a newer conflict of the same key replaces an older one.
                for row in rows {
                    let conflict = row.into_conflict()?;
                    by_key.insert(conflict.key.clone(), conflict);
                }
                Ok(by_key)
            }

            async fn resolve_conflict(
                &self,
                id: i64,
                resolution: &$crate::two_way::ConflictResolution,
            ) -> $crate::error::Result<()> {
                use $crate::error::{db, StateError};
                const OP: &str = "resolving a conflict";
                let deletes = resolution.values.is_none();
                let values = resolution
                    .values
                    .as_ref()
                    .map(|v| $crate::two_way::json_text(v, "the resolution's values"))
                    .transpose()?;
                let now = $crate::sql::timestamp(self.now().await?);
                let done = sqlx::query($crate::two_way::resolve_sql())
                    .bind(id)
                    .bind(resolution.decision.as_str())
                    .bind(values)
                    .bind(deletes)
                    .bind(resolution.by.as_str())
                    .bind(&now)
                    .execute(&self.pool)
                    .await
                    .map_err(db(OP))?;
                if done.rows_affected() > 0 {
                    return Ok(());
                }
                let status: Option<String> =
                    sqlx::query_scalar($crate::two_way::conflict_status_sql())
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db(OP))?;
                Err(StateError::InvalidArgument(match status {
                    None => format!("conflict {id} does not exist"),
                    Some(status) => format!(
                        "conflict {id} is `{status}`, not `open`: only an open conflict can be \
                         resolved"
                    ),
                }))
            }

            async fn open_conflict_counts(
                &self,
            ) -> $crate::error::Result<std::collections::HashMap<String, u64>> {
                let rows: Vec<(String, i64)> =
                    sqlx::query_as($crate::two_way::open_counts_sql())
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::error::db("counting open conflicts"))?;
                Ok(rows
                    .into_iter()
                    .map(|(sync, count)| (sync, u64::try_from(count).unwrap_or(0)))
                    .collect())
            }
        }
    };
}

pub(crate) use impl_two_way_store;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn conflict(key: &str, status: ConflictStatus, a: i64) -> Conflict {
        Conflict {
            id: 0,
            sync: String::new(),
            run: 0,
            key: key.to_owned(),
            base: None,
            a: Some(json!({ "n": a }).as_object().unwrap().clone()),
            b: None,
            fields: vec!["n".into()],
            policy: "manual".into(),
            decision: "queued".into(),
            resolution: None,
            resolution_deletes: false,
            status,
            created_at: String::new(),
            resolved_by: None,
            resolved_at: None,
        }
    }

    fn a_of<'r>(row: &'r NewConflict<'_>) -> Option<&'r str> {
        row.a.as_deref()
    }

    #[test]
    fn an_automatic_conflict_found_again_with_its_base_is_not_recorded_twice() {
        let now = "2024-01-01T00:00:00.000000Z";
        let with_base = |key: &str, a: i64, base: i64| Conflict {
            base: Some(json!({ "n": base }).as_object().unwrap().clone()),
            ..conflict(key, ConflictStatus::Auto, a)
        };
        let stored = |id: i64, settled: bool| FoundConflict {
            id,
            status: ConflictStatus::Auto,
            base: Some(r#"{"n":0}"#.into()),
            settled,
        };
        // [1] was recorded with base 0 by a run that crashed before committing its outcome:
        // found again, it stays as recorded. [2] was recorded with base 0 and committed, and
        // is found with base 5; [3] was committed too, and its base came back to 0: both are
        // new conflicts.
        let found = HashMap::from([
            ("[1]".to_owned(), stored(10, false)),
            ("[2]".to_owned(), stored(11, true)),
            ("[3]".to_owned(), stored(12, true)),
        ]);
        let conflicts = [
            with_base("[1]", 7, 0),
            with_base("[2]", 8, 5),
            with_base("[3]", 9, 0),
        ];
        let plan = plan_conflicts(prepare_conflicts(&conflicts, now).unwrap(), &found);
        assert!(plan.updates.is_empty());
        assert_eq!(plan.adopted, [10]);
        let keys: Vec<&str> = plan.inserts.iter().map(|r| r.key).collect();
        assert_eq!(keys, ["[2]", "[3]"]);
    }

    #[test]
    fn a_refusal_updates_the_newest_pending_reject_of_its_key() {
        let refused = |key: Option<&str>| crate::types::RejectedRecord {
            id: 0,
            sync: String::new(),
            run: 0,
            key: key.map(str::to_owned),
            field: None,
            reason: "no".into(),
            raw: Value::Null,
            created_at: None,
            retried: None,
        };
        let pending = [
            (3, "[1]".to_owned()),
            (9, "[1]".to_owned()),
            (4, "[2]".to_owned()),
        ];
        let plan = plan_refusals(&[refused(Some("[1]")), refused(Some("[5]"))], &pending).unwrap();
        assert_eq!(
            plan,
            RefusalPlan {
                targets: vec![Some(9), None],
                superseded: vec![(3, 9)],
            }
        );
        assert!(matches!(
            plan_refusals(&[refused(None)], &pending),
            Err(StateError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_commit_stores_only_open_and_auto_conflicts() {
        let now = "2024-01-01T00:00:00.000000Z";
        for status in [ConflictStatus::Resolved, ConflictStatus::Applied] {
            let conflicts = [conflict("[1]", status, 1)];
            match prepare_conflicts(&conflicts, now) {
                Err(StateError::InvalidArgument(message)) => {
                    assert!(message.contains(status.as_str()), "{message}");
                    assert!(message.contains("[1]"), "{message}");
                }
                other => panic!("expected InvalidArgument, got {other:?}"),
            }
        }
        let conflicts = [
            conflict("[1]", ConflictStatus::Open, 1),
            conflict("[2]", ConflictStatus::Auto, 2),
        ];
        let rows = prepare_conflicts(&conflicts, now).unwrap();
        assert_eq!(rows[0].resolved_at, None);
        assert_eq!(rows[1].resolved_at.as_deref(), Some(now));
        assert_eq!(rows[0].a.as_deref(), Some(r#"{"n":1}"#));
        assert_eq!(rows[0].fields, r#"["n"]"#);
        assert_eq!(rows[0].base, None);
    }

    #[test]
    fn a_key_found_again_updates_its_open_conflict() {
        let now = "2024-01-01T00:00:00.000000Z";
        let conflicts = [
            conflict("[1]", ConflictStatus::Open, 1),
            conflict("[2]", ConflictStatus::Open, 2),
            conflict("[1]", ConflictStatus::Open, 3),
            conflict("[3]", ConflictStatus::Auto, 4),
            conflict("[3]", ConflictStatus::Open, 5),
            conflict("[3]", ConflictStatus::Open, 6),
            conflict("[2]", ConflictStatus::Open, 7),
        ];
        // Key [2] has open conflict 40 in the store; the others have none.
        let found = HashMap::from([(
            "[2]".to_owned(),
            FoundConflict {
                id: 40,
                status: ConflictStatus::Open,
                base: None,
                settled: true,
            },
        )]);
        let plan = plan_conflicts(prepare_conflicts(&conflicts, now).unwrap(), &found);
        assert_eq!(
            plan.updates,
            [ConflictUpdate {
                id: 40,
                a: Some(r#"{"n":7}"#.into()),
                b: None,
                fields: r#"["n"]"#.into(),
            }]
        );
        let inserted: Vec<(&str, ConflictStatus, Option<&str>)> = plan
            .inserts
            .iter()
            .map(|r| (r.key, r.status, a_of(r)))
            .collect();
        assert_eq!(
            inserted,
            [
                ("[1]", ConflictStatus::Open, Some(r#"{"n":3}"#)),
                ("[3]", ConflictStatus::Auto, Some(r#"{"n":4}"#)),
                ("[3]", ConflictStatus::Open, Some(r#"{"n":6}"#)),
            ]
        );
    }

    #[test]
    fn conflict_queries_number_their_parameters_in_order() {
        let (sql, binds) = conflicts_query(&ConflictFilter {
            sync: Some("s".into()),
            statuses: vec![ConflictStatus::Open, ConflictStatus::Resolved],
            limit: 5,
        });
        assert!(
            sql.contains(
                r#"WHERE "sync" = $1 AND "status" IN ($2, $3) ORDER BY "id" DESC LIMIT $4"#
            ),
            "{sql}"
        );
        assert_eq!(binds.len(), 4);
        let (sql, binds) = conflicts_query(&ConflictFilter::default());
        assert!(
            sql.ends_with(r#"FROM "conflicts" ORDER BY "id" DESC"#),
            "{sql}"
        );
        assert!(binds.is_empty());
        let lookup = base_lookup_sql(&crate::ledger::sqlite::key_list_sql(2));
        assert!(
            lookup.ends_with(r#""key" IN (SELECT "value" FROM json_each($2))"#),
            "{lookup}"
        );
        let applied = mark_applied_sql(&postgres::id_list_sql(2));
        assert!(
            applied.ends_with(r#""id" IN (SELECT unnest($2::bigint[]) AS "value")"#),
            "{applied}"
        );
    }

    #[test]
    fn sqlite_rows_carry_json_as_strings_and_fingerprints_as_32_hex_digits() {
        let entries = [BaseEntry {
            key: "[1]".into(),
            base: json!({"x": [1, 2]}).as_object().unwrap().clone(),
            fingerprint_a: u128::MAX,
            fingerprint_b: 0xff,
        }];
        let rows = prepare_base(&entries).unwrap();
        let json: Value = serde_json::from_str(&sqlite::base_rows_json(&rows)).unwrap();
        assert_eq!(
            json,
            json!([[
                "[1]",
                r#"{"x":[1,2]}"#,
                "ffffffffffffffffffffffffffffffff",
                "000000000000000000000000000000ff"
            ]])
        );
        assert_eq!(sqlite::id_list(&[3, 1]), "[3,1]");
    }
}
