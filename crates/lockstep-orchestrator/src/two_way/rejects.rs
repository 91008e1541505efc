//! The records a side refuses in a two-way run: stored as pending rejected records, decided
//! again by every later run until delivered, and judged against `max_rejected` (see the
//! invariants in the header of `two_way.rs`).
//!
//! Invariants:
//! - A refusal is stored before the commit that moves both checkpoints past the change it
//!   carries; a reject is resolved only when a run decided its key again and nothing of it
//!   was refused or queued for a person.
//! - A key has at most one pending reject that two-way runs keep: refused again, it is
//!   updated in place with the run, the reason and the attempt count.
//! - What is stored is the mapped record that was written and the connector's reason; the
//!   connection's settings (and so its secrets) never are.

use std::collections::{HashMap, HashSet};

use lockstep_core::protocol::{ReadMode, ReadRequest};
use lockstep_core::{RunMetrics, Side, SyncSpec};
use lockstep_state::{Conflict, ConflictStatus};
use serde_json::{Map, Value};

use super::{
    index, refuse_rejects, side_records, Fields, RejectedFilter, RejectedRecord, SideChanges,
    SideIo, TwoWayRejects, CHUNK,
};
use crate::conflict::SideRecord;
use crate::error::EngineError;
use crate::job::{RunState, SyncJob};
use crate::lease::HeldLease;
use crate::services::Services;

/// The pending rejects of a sync that a run decides again.
#[derive(Default)]
pub(super) struct Retries {
    /// The newest pending reject of each key. Keyless ones (a record a one-way run could not
    /// map, from the sync's one-way past) cannot be looked up and are left alone.
    pending: HashMap<String, RejectedRecord>,
    /// The keys of `pending` this run decides again: every one but those a side's read
    /// could not map.
    pub(super) keys: HashSet<String>,
    /// Keys of `keys` that neither side's changes had: read only to retry them.
    retried_only: HashSet<String>,
    /// The records read for the retries (counted in the run's `read`).
    pub(super) read: u64,
}

/// A record a side's writer refused in this run.
pub(super) struct Refusal {
    pub(super) side: Side,
    pub(super) key: String,
    /// What was written, by mapped field name.
    pub(super) values: Map<String, Value>,
    pub(super) field: Option<String>,
    pub(super) reason: String,
}

/// Loads the sync's pending rejects and reads both sides' current records of their keys into
/// `changes` (a record a side no longer has, or marks deleted, into `deleted`), so that the
/// run decides them like any change. A side read in full this run (no cursor) has them
/// already.
pub(super) async fn prepare_retries(
    services: Services<'_>,
    spec: &SyncSpec,
    sides: [&SideIo<'_>; 2],
    changes: &mut [SideChanges; 2],
    deleted: &mut [HashSet<String>; 2],
    fields: &Fields,
    dry_run: bool,
) -> Result<Retries, EngineError> {
    let records = services
        .state
        .rejected(&RejectedFilter {
            sync: Some(spec.name.clone()),
            pending_only: true,
            ..Default::default()
        })
        .await?;
    let mut out = Retries::default();
    // Newest first: the first reject of a key is its newest.
    for record in records {
        if let Some(key) = record.key.clone() {
            out.pending.entry(key).or_insert(record);
        }
    }
    if out.pending.is_empty() {
        return Ok(out);
    }
    for key in out.pending.keys() {
        let seen = (0..2).any(|i| changes[i].contains(key) || deleted[i].contains(key));
        if !seen {
            out.retried_only.insert(key.clone());
        }
    }
    let mut unmapped: HashSet<String> = HashSet::new();
    for side in sides {
        let i = index(side.side);
        if side.cursor.is_none() {
            continue;
        }
        // The side a refused change came from holds it, unseen since its checkpoint moved
        // past it: that side is read. A side that alone refused holds what it held before
        // (its own later changes reach its read of changes like any): it is left to that
        // read, as the run that refused decided, so a conflict decided then is not found
        // again at every retry.
        let wanted: Vec<&String> = out
            .pending
            .iter()
            .filter(|(k, r)| {
                let refused = refused_by(&r.reason);
                let alone = refused[i] && !refused[1 - i];
                let seen = changes[i].contains(k) || deleted[i].contains(*k);
                !alone && !seen
            })
            .map(|(k, _)| k)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let mut found = read_records(services, spec, side, &wanted, fields, dry_run).await?;
        out.read += found.records.len() as u64;
        for key in wanted {
            if let Some(record) = found.records.remove(key) {
                changes[i].insert(key.clone(), record);
            } else if found.unmapped.contains(key) || found.unmapped_unkeyed {
                unmapped.insert(key.clone());
            } else {
                // Gone from the side, or marked deleted there: the side's delete, where the
                // base has the record.
                deleted[i].insert(key.clone());
            }
        }
    }
    if !unmapped.is_empty() {
        tracing::warn!(
            keys = unmapped.len(),
            "pending rejects whose current record a side's read could not map are left \
             pending for a later run"
        );
    }
    out.keys = out
        .pending
        .keys()
        .filter(|k| !unmapped.contains(*k))
        .cloned()
        .collect();
    Ok(out)
}

/// Which sides refused the record of a stored reason ([`refusal_reason`]'s form); a reason
/// of another form is a one-way run's, whose destination (side b) refused or whose source
/// record (side a) did not map.
fn refused_by(reason: &str) -> [bool; 2] {
    let a = reason.contains("side a (source) refused the record");
    let b = reason.contains("side b (destination) refused the record");
    if a || b {
        [a, b]
    } else {
        [false, true]
    }
}

/// What [`read_records`] found.
struct Found {
    records: HashMap<String, SideRecord>,
    /// Keys of records the side has but its read could not map.
    unmapped: HashSet<String>,
    /// Whether the read had a record it could not map whose key is unknown too: then a key
    /// not found may be that record, and is not taken for a delete.
    unmapped_unkeyed: bool,
}

/// Reads the records of `keys` from `side` as they are now, as the read of its changes gives
/// them: by key where its connector can, else by a full read that keeps only those keys. A
/// record the side marks deleted (its tombstone) is not returned.
async fn read_records(
    services: Services<'_>,
    spec: &SyncSpec,
    side: &SideIo<'_>,
    keys: &[&String],
    fields: &Fields,
    dry_run: bool,
) -> Result<Found, EngineError> {
    let mut read_fields = side.mapper.source_fields();
    for extra in [&side.cursor, &side.tombstone].into_iter().flatten() {
        if !read_fields.contains(extra) {
            read_fields.push(extra.clone());
        }
    }
    let wanted: HashSet<&str> = keys.iter().map(|k| k.as_str()).collect();
    let requests: Vec<Option<Vec<Vec<Value>>>> = if side.reads_by_keys {
        keys.chunks(CHUNK)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|k| serde_json::from_str::<Vec<Value>>(k))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some)
            })
            .collect::<Result<_, _>>()
            .map_err(|e| EngineError::Internal(format!("a record key is not a JSON array: {e}")))?
    } else {
        tracing::info!(
            side = %side.side,
            keys = keys.len(),
            "connector `{}` cannot read by key: reading side {} in full to retry its pending \
             rejects",
            side.endpoint.connector,
            side.side
        );
        vec![None]
    };
    let mut source = services.open_source(side.endpoint).await?;
    let mut out = Found {
        records: HashMap::new(),
        unmapped: HashSet::new(),
        unmapped_unkeyed: false,
    };
    for keys in requests {
        let request = ReadRequest {
            stream: side.stream.name.clone(),
            mode: ReadMode::Full,
            fields: Some(read_fields.clone()),
            key: side.mapper.source_key().to_vec(),
            batch_size: Some(spec.batch_size),
            keys,
            dry_run,
            ..Default::default()
        };
        let mut reader = source.read(&request).await?;
        while let Some((batch, _)) = reader.next().await? {
            refuse_rejects(spec, side, &batch)?;
            let mapped = side.mapper.map(&batch)?;
            if !mapped.rejected.is_empty() {
                let keyed =
                    crate::rows::mapping_reject_keys(&side.mapper, &batch, &mapped.rejected);
                out.unmapped_unkeyed |= keyed.len() < mapped.rejected.len();
                out.unmapped
                    .extend(keyed.into_values().filter(|k| wanted.contains(k.as_str())));
            }
            side_records(
                side,
                fields,
                &batch,
                &mapped,
                true,
                |key| wanted.contains(key),
                |_, key, record| match record {
                    None => {
                        out.records.remove(&key);
                    }
                    Some(record) => {
                        out.records.insert(key, record);
                    }
                },
            )?;
        }
    }
    Ok(out)
}

/// What a run did with the keys of its pending rejects, for [`store_rejects`].
pub(super) struct RetrySettled<'a> {
    /// Keys of the conflicts the run queued for a person.
    pub(super) queued: &'a HashSet<String>,
    /// Keys of pending rejects the run gave a new base or forgot (deletes held by the
    /// mass-delete guard are not among them).
    pub(super) traced: &'a HashSet<String>,
}

/// Stores this run's refusals as pending rejects (a key refused again updates its pending
/// one) and resolves the pending rejects the run settled: those whose key it decided again
/// with nothing refused, and no conflict left waiting for a person. Called after both sides
/// flushed and before the commit that moves the checkpoints.
#[allow(clippy::too_many_arguments)]
pub(super) async fn store_rejects(
    services: Services<'_>,
    spec: &SyncSpec,
    run: &RunState,
    lease: &HeldLease,
    retries: &Retries,
    refusals: &[Refusal],
    rejected_keys: &HashSet<String>,
    settled: &RetrySettled<'_>,
    unsettled: &HashMap<String, Conflict>,
) -> Result<(), EngineError> {
    let queued: HashSet<&str> = settled
        .queued
        .iter()
        .map(String::as_str)
        .chain(
            unsettled
                .values()
                .filter(|c| c.status == ConflictStatus::Open)
                .map(|c| c.key.as_str()),
        )
        .collect();
    // When the mass-delete guard held deletes, a key that left no trace in the plan may be
    // one of them: it stays pending until a run applies its delete.
    let traced: Option<&HashSet<String>> = run.held.as_ref().map(|_| settled.traced);
    let mut resolved: Vec<String> = retries
        .keys
        .iter()
        .filter(|k| !rejected_keys.contains(*k) && !queued.contains(k.as_str()))
        .filter(|k| traced.is_none_or(|t| t.contains(*k)))
        .cloned()
        .collect();
    resolved.sort_unstable();
    let refused = rejected_records(&spec.name, run.run_id, refusals, &retries.pending);
    if refused.is_empty() && resolved.is_empty() {
        return Ok(());
    }
    let note = format!(
        "resolved in run {}: the record was decided again against both sides, and nothing of \
         it was refused",
        run.run_id
    );
    services
        .state
        .commit_two_way_rejects(&TwoWayRejects {
            sync: &spec.name,
            run: run.run_id,
            lease_token: Some(lease.lease().token),
            metrics: &run.metrics,
            refused: &refused,
            resolved: &resolved,
            note: &note,
        })
        .await?;
    if !refused.is_empty() {
        tracing::warn!(
            refused = refused.len(),
            "records a side refused wait as rejects, retried at every run: see `lockstep \
             rejects list {}`",
            spec.name
        );
    }
    Ok(())
}

/// The rejected records of `refusals`, one per key (a key both sides refused carries both
/// reasons), counting the attempts of keys that were pending already.
fn rejected_records(
    sync: &str,
    run: i64,
    refusals: &[Refusal],
    pending: &HashMap<String, RejectedRecord>,
) -> Vec<RejectedRecord> {
    let mut out: Vec<RejectedRecord> = Vec::new();
    let mut by_key: HashMap<&str, usize> = HashMap::new();
    for r in refusals {
        let reason = refusal_reason(r.side, &r.reason, pending.get(&r.key));
        match by_key.get(r.key.as_str()) {
            Some(&i) => {
                let record = &mut out[i];
                record.reason = format!("{}; {reason}", record.reason);
                record.field = record.field.take().or_else(|| r.field.clone());
            }
            None => {
                by_key.insert(&r.key, out.len());
                out.push(RejectedRecord {
                    id: 0,
                    sync: sync.to_owned(),
                    run,
                    key: Some(r.key.clone()),
                    field: r.field.clone(),
                    reason,
                    raw: Value::Object(r.values.clone()),
                    created_at: None,
                    retried: None,
                });
            }
        }
    }
    out
}

/// The stored reason of a refusal by `side`: which side refused, how many times (when the
/// record was pending already), and the connector's reason.
fn refusal_reason(side: Side, reason: &str, previous: Option<&RejectedRecord>) -> String {
    let role = match side {
        Side::A => "source",
        Side::B => "destination",
    };
    match previous {
        None => format!("side {side} ({role}) refused the record: {reason}"),
        Some(p) => format!(
            "side {side} ({role}) refused the record again (attempt {}): {reason}",
            attempts(&p.reason) + 1
        ),
    }
}

/// How many times a two-way run tried the record of a stored reason: the attempt it names,
/// else 1 (a first refusal, or a reject a one-way run stored).
fn attempts(reason: &str) -> u32 {
    reason
        .split_once("(attempt ")
        .and_then(|(_, rest)| rest.split_once(')'))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

/// Fails the run when the records it refused are past the sync's `max_rejected`, as a
/// one-way run does. Pending rejects retried without a new edit and refused again are left
/// out, with the records read only to retry them (see the header of `two_way.rs`).
pub(super) fn check_rejected(
    job: &SyncJob,
    run: &RunState,
    rejected_keys: &HashSet<String>,
    retries: &Retries,
) -> Result<(), EngineError> {
    let fresh = rejected_keys
        .iter()
        .filter(|k| !retries.retried_only.contains(*k))
        .count() as u64;
    let judged = RunMetrics {
        read: run.metrics.read.saturating_sub(retries.read),
        rejected: fresh,
        ..run.metrics
    };
    crate::pipeline::check_rejections(job, &judged)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(reason: &str) -> RejectedRecord {
        RejectedRecord {
            id: 7,
            sync: "s".into(),
            run: 1,
            key: Some("[1]".into()),
            field: None,
            reason: reason.into(),
            raw: Value::Null,
            created_at: None,
            retried: None,
        }
    }

    #[test]
    fn a_refusal_names_its_side_and_counts_its_attempts() {
        let first = refusal_reason(Side::B, "CHECK constraint failed", None);
        assert_eq!(
            first,
            "side b (destination) refused the record: CHECK constraint failed"
        );
        let second = refusal_reason(Side::B, "too long", Some(&pending(&first)));
        assert_eq!(
            second,
            "side b (destination) refused the record again (attempt 2): too long"
        );
        let third = refusal_reason(Side::A, "x (attempt 9)", Some(&pending(&second)));
        assert_eq!(
            third,
            "side a (source) refused the record again (attempt 3): x (attempt 9)"
        );
        assert_eq!(attempts("a one-way reason"), 1);
    }

    #[test]
    fn the_refusing_sides_are_read_from_the_reason() {
        let b = refusal_reason(Side::B, "x", None);
        let a = refusal_reason(Side::A, "y", Some(&pending(&b)));
        assert_eq!(refused_by(&b), [false, true]);
        assert_eq!(refused_by(&a), [true, false]);
        assert_eq!(refused_by(&format!("{a}; {b}")), [true, true]);
        assert_eq!(refused_by("field `n`: `x` is not an int64"), [false, true]);
    }

    #[test]
    fn a_key_both_sides_refused_is_one_reject_with_both_reasons() {
        let refusal = |side, key: &str, reason: &str| Refusal {
            side,
            key: key.into(),
            values: Map::new(),
            field: None,
            reason: reason.into(),
        };
        let records = rejected_records(
            "s",
            3,
            &[
                refusal(Side::A, "[1]", "no"),
                refusal(Side::B, "[2]", "nope"),
                refusal(Side::B, "[1]", "never"),
            ],
            &HashMap::new(),
        );
        let seen: Vec<(Option<&str>, &str)> = records
            .iter()
            .map(|r| (r.key.as_deref(), r.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (
                    Some("[1]"),
                    "side a (source) refused the record: no; side b (destination) refused \
                     the record: never"
                ),
                (Some("[2]"), "side b (destination) refused the record: nope"),
            ]
        );
    }
}
