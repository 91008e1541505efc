//! The one path from a source batch to a commit, for runs, plans and retries alike: map,
//! work out the batch's changes (with the ledger: the diff; without one: every record, the
//! destination telling what it did), then through the sink: upsert, flush, record the
//! deletes found, commit.
//!
//! Invariants:
//! - The commit protocol (semantics.md, "Durability and idempotence"): the destination
//!   flushes a batch's writes before one state transaction records its ledger rows,
//!   rejected records, progress and checkpoint, under the lease's fencing token.
//! - Every record read is counted once: added, updated, unchanged or rejected (tombstones
//!   are counted as deletes when the delete phase applies them).
//! - Per row there is only the work of keys, fingerprints and the diff; the sink is called
//!   once per batch.

use std::collections::{HashMap, HashSet};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use lockstep_core::protocol::WriteOutcome;
use lockstep_core::{fingerprints, record_keys, RunMetrics, SyncMode};
use lockstep_mapping::MappedBatch;
use lockstep_plugin_core::source_rejects::is_rejects_batch;
use lockstep_state::{BatchCommit, DeleteOrigin, LedgerEntry, RejectedRecord};
use serde_json::Value;

use crate::context::Context;
use crate::diff::{diff, BatchKeys, Changes, MappedRecords};
use crate::error::EngineError;
use crate::faults::{fault_point, FaultPoint};
use crate::job::RunState;
use crate::rows::{
    cursor_versions, key_indices, mapped_marks, mapping_reject_keys, rejection, row_json,
    tombstoned,
};
use crate::seen_keys::SeenKeys;
use crate::sink::Sink;
use crate::source_rejects::apply_source_rejects;

/// Applies one source batch to the sink and commits it.
pub(crate) async fn apply_batch<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    batch: RecordBatch,
    checkpoint: Value,
) -> Result<(), EngineError> {
    if is_rejects_batch(&batch) {
        return apply_source_rejects(ctx, sink, run, &batch, checkpoint).await;
    }
    let deletes_may_wait = run.deletes_waiting;
    let flushed = write_batch(ctx, sink, run, batch, checkpoint, None, deletes_may_wait).await?;
    sink.wait_deletes(
        ctx,
        run,
        DeleteOrigin::Tombstone,
        &flushed.found,
        &flushed.seen,
    )
    .await?;
    sink.commit(&flushed.commit(ctx)).await?;
    flushed.committed(sink.writes(), run);
    Ok(())
}

/// A batch whose writes the destination has flushed, with what its state commit records.
/// A run commits it while the next batch is read, diffed and written (`pipeline`), so the
/// state store's work overlaps the destination's.
pub(crate) struct Flushed {
    run_id: i64,
    batch_number: u64,
    /// Ledger rows of the records the destination accepted.
    ledger: Vec<LedgerEntry>,
    /// Whether every key of `ledger` was absent from the ledger (all adds).
    ledger_keys_new: bool,
    rejected: Vec<RejectedRecord>,
    /// Keys of tombstoned records, to wait as pending deletes.
    found: Vec<String>,
    /// Keys of records present, which cancel the deletes waiting for them.
    seen: Vec<String>,
    /// The checkpoint the commit records, if any.
    checkpoint: Option<Value>,
    /// The run's metrics up to and including this batch.
    metrics: RunMetrics,
}

impl Flushed {
    /// The state commit of this batch.
    pub(crate) fn commit<'c>(&'c self, ctx: &'c Context<'_>) -> BatchCommit<'c> {
        BatchCommit {
            sync: ctx.job.spec.name.as_str(),
            run: self.run_id,
            lease_token: ctx.lease_token(),
            ledger_upserts: &self.ledger,
            ledger_keys_new: self.ledger_keys_new,
            ledger_deletes: &[],
            checkpoint: self.checkpoint.as_ref(),
            metrics: &self.metrics,
            rejected: &self.rejected,
        }
    }

    /// Whether this batch found deletes that now wait in the state store.
    pub(crate) fn found_deletes(&self) -> bool {
        !self.found.is_empty()
    }

    /// The keys of this batch's tombstones and of its records present.
    pub(crate) fn deletes(&self) -> (&[String], &[String]) {
        (&self.found, &self.seen)
    }

    /// Records in `run` that this batch committed: its checkpoint, and, when it wrote,
    /// whether deletes it found now wait in the state store.
    pub(crate) fn committed(self, writes: bool, run: &mut RunState) {
        if writes {
            run.deletes_waiting |= self.found_deletes();
            fault_point(FaultPoint::AfterCommit, self.batch_number);
        }
        if let Some(c) = self.checkpoint {
            run.checkpoint = Some(c);
        }
        tracing::debug!(batch = self.batch_number, "batch committed");
    }
}

/// Maps one source batch, works out its changes, and writes and flushes them; what its
/// commit records comes back. `in_flight` is the previous batch when its commit has not
/// landed yet: its ledger rows stand in for the store's. `deletes_may_wait` says whether
/// deletes may be waiting (in the store, or found by `in_flight`), so that the records this
/// batch has again can cancel them.
pub(crate) async fn write_batch<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    batch: RecordBatch,
    checkpoint: Value,
    in_flight: Option<&Flushed>,
    deletes_may_wait: bool,
) -> Result<Flushed, EngineError> {
    let spec = &ctx.job.spec;
    let sync = spec.name.as_str();
    let batch_number = run.batches + 1;
    let writes = sink.writes();
    let mut metrics = RunMetrics {
        read: batch.num_rows() as u64,
        ..Default::default()
    };
    let mapped = ctx.mapper.map(&batch)?;
    let mut reject_keys = mapping_reject_keys(ctx.mapper, &batch, &mapped.rejected);
    let mut rejected: Vec<RejectedRecord> = mapped
        .rejected
        .iter()
        .map(|r| {
            rejection(
                sync,
                run.run_id,
                reject_keys.remove(&r.row),
                r.field.clone(),
                &r.reason,
                &batch,
                r.row,
            )
        })
        .collect();
    // Tombstones count in mirror mode only (and cdc, whose reads mark deleted records).
    let marks = match (&spec.delete.tombstone, spec.mode) {
        (Some(field), SyncMode::Mirror | SyncMode::Cdc) => Some(mapped_marks(
            &tombstoned(&batch, field).unwrap_or_default(),
            &mapped.source_rows,
        )),
        _ => None,
    };
    let changes = if spec.use_ledger {
        BatchChanges::Ledger(
            LedgerChanges::new(
                ctx,
                sink,
                &mapped,
                marks,
                in_flight,
                run.seen_keys.as_mut(),
                deletes_may_wait,
            )
            .await?,
        )
    } else {
        BatchChanges::Direct(DirectChanges::new(ctx, &mapped, marks, deletes_may_wait)?)
    };

    if writes {
        fault_point(FaultPoint::BeforeWrite, batch_number);
    }
    let outcome = match changes.rows_to_write() {
        Some(rows) if rows.num_rows() > 0 => sink.upsert(rows.clone()).await?,
        _ => WriteOutcome::default(),
    };
    if writes {
        fault_point(FaultPoint::BeforeFlush, batch_number);
    }
    sink.flush().await?;
    if writes {
        fault_point(FaultPoint::AfterFlush, batch_number);
    }
    let written = Written {
        batch: &batch,
        mapped: &mapped,
        outcome: &outcome,
    };
    let settled = changes.settle(ctx, run, &written, writes, &mut metrics, &mut rejected)?;
    metrics.rejected = rejected.len() as u64;
    run.metrics.add(&metrics);
    run.batches += 1;
    sink.sample_rejects(&rejected);
    // A null checkpoint (a read by keys, for a retry) leaves the stored one where it is.
    let checkpoint = (spec.reads_by_cursor() && !checkpoint.is_null()).then_some(checkpoint);
    tracing::debug!(batch = run.batches, ?metrics, "batch written");
    // Tombstones are not applied here: they wait in the state store until the end of the run
    // has counted every delete against the guard. A record present (not deleted) cancels the
    // delete that waits for it.
    Ok(Flushed {
        run_id: run.run_id,
        batch_number,
        ledger: settled.ledger,
        ledger_keys_new: settled.ledger_keys_new,
        rejected,
        found: settled.found,
        seen: settled.seen,
        checkpoint,
        metrics: run.metrics,
    })
}

/// What a batch changes, by the sync's kind.
enum BatchChanges {
    /// Diffed against the ledger: only what differs is sent.
    Ledger(LedgerChanges),
    /// Without a ledger: every record is sent.
    Direct(DirectChanges),
}

/// A source batch, its mapping, and what the destination did with the rows sent.
#[derive(Clone, Copy)]
struct Written<'b> {
    batch: &'b RecordBatch,
    mapped: &'b MappedBatch,
    outcome: &'b WriteOutcome,
}

/// What a batch commits besides its metrics and rejects, once its writes flushed.
struct Settled {
    /// Ledger rows of the records the destination accepted.
    ledger: Vec<LedgerEntry>,
    /// Whether every key of `ledger` was absent from the ledger: each is an add, found in
    /// neither the store (looked up under the lease, or certainly never met) nor the batch
    /// in flight.
    ledger_keys_new: bool,
    /// Keys of tombstoned records, to wait as pending deletes.
    found: Vec<String>,
    /// Keys of records present, which cancel the deletes waiting for them.
    seen: Vec<String>,
}

impl BatchChanges {
    /// The mapped rows to upsert, if any.
    fn rows_to_write(&self) -> Option<&RecordBatch> {
        match self {
            BatchChanges::Ledger(l) => l.to_write.as_ref(),
            BatchChanges::Direct(d) => Some(&d.to_write),
        }
    }

    /// Counts what the destination did with the rows sent, turns the rows it refused into
    /// rejects, and hands over what the commit records.
    fn settle(
        self,
        ctx: &Context<'_>,
        run: &RunState,
        written: &Written<'_>,
        writes: bool,
        metrics: &mut RunMetrics,
        rejected: &mut Vec<RejectedRecord>,
    ) -> Result<Settled, EngineError> {
        match self {
            BatchChanges::Ledger(l) => l.settle(ctx, run, written, writes, metrics, rejected),
            BatchChanges::Direct(d) => d.settle(ctx, run, written, metrics, rejected),
        }
    }
}

/// A batch diffed against the ledger.
struct LedgerChanges {
    keys: Vec<String>,
    fingerprints: Vec<u128>,
    changes: Changes,
    /// The mapped rows to send, when there are any.
    to_write: Option<RecordBatch>,
    /// Keys present in the batch, when deletes wait that they may cancel.
    present: Vec<String>,
}

impl LedgerChanges {
    /// Computes keys and fingerprints, looks the keys up in the ledger and diffs; a plan
    /// samples the upserts.
    async fn new<S: Sink>(
        ctx: &Context<'_>,
        sink: &mut S,
        mapped: &MappedBatch,
        marks: Option<Vec<bool>>,
        in_flight: Option<&Flushed>,
        seen_keys: Option<&mut SeenKeys>,
        deletes_may_wait: bool,
    ) -> Result<Self, EngineError> {
        let keys = record_keys(&mapped.batch, ctx.mapper.key())?;
        let fingerprints = fingerprints(&mapped.batch)?;
        let batch_keys = BatchKeys::new(&keys);
        // In a run that started with an empty ledger, a key the run has not met yet has no
        // entry; the keys are recorded before this batch's entries can commit.
        let lookup: Vec<String> = match seen_keys {
            Some(seen) => batch_keys
                .unique_keys()
                .filter(|key| seen.insert(key))
                .map(str::to_owned)
                .collect(),
            None => batch_keys.unique(),
        };
        let mut ledger = if lookup.is_empty() {
            HashMap::new()
        } else {
            ctx.services
                .state
                .ledger_lookup(&ctx.job.spec.name, &lookup)
                .await?
        };
        // The previous batch's ledger rows are newer than the store's while its commit is in
        // flight. Only looked-up keys can have one: with the filter, a key in the previous
        // batch was met, so it is looked up.
        if let Some(previous) = in_flight.filter(|p| !p.ledger.is_empty() && !lookup.is_empty()) {
            let wanted: HashSet<&str, foldhash::fast::RandomState> =
                lookup.iter().map(String::as_str).collect();
            for entry in &previous.ledger {
                if wanted.contains(entry.key.as_str()) {
                    ledger.insert(entry.key.clone(), entry.clone());
                }
            }
        }
        let changes = diff(
            &MappedRecords {
                keys: &batch_keys,
                fingerprints: &fingerprints,
                tombstoned: marks.as_deref(),
                rejected: &mapped.rejected,
            },
            &ledger,
        );
        debug_assert_eq!(
            changes.total(),
            (mapped.batch.num_rows() + mapped.rejected.len()) as u64,
            "the diff counts every row once"
        );
        let present = if deletes_may_wait {
            batch_keys.present(&changes)
        } else {
            Vec::new()
        };
        drop(batch_keys);
        let to_write = if changes.upserts.is_empty() {
            None
        } else {
            let mask = changes.upsert_mask(keys.len());
            Some(filter_record_batch(
                &mapped.batch,
                &BooleanArray::from(mask),
            )?)
        };
        sink.sample(&mapped.batch, &keys, &changes.upserts);
        Ok(LedgerChanges {
            keys,
            fingerprints,
            changes,
            to_write,
            present,
        })
    }

    fn settle(
        self,
        ctx: &Context<'_>,
        run: &RunState,
        written: &Written<'_>,
        writes: bool,
        metrics: &mut RunMetrics,
        rejected: &mut Vec<RejectedRecord>,
    ) -> Result<Settled, EngineError> {
        let spec = &ctx.job.spec;
        let Written {
            batch,
            mapped,
            outcome,
        } = *written;
        let LedgerChanges {
            mut keys,
            fingerprints,
            changes,
            present,
            ..
        } = self;
        metrics.unchanged += changes.unchanged;
        // Rows the destination refused are rejected, not recorded in the ledger.
        let mut refused = vec![false; keys.len()];
        for r in &outcome.rejected {
            let Some(upsert) = changes.upserts.get(r.row) else {
                return Err(EngineError::Internal(format!(
                    "the destination rejected row {} of a batch of {}",
                    r.row,
                    changes.upserts.len()
                )));
            };
            refused[upsert.row] = true;
            rejected.push(rejection(
                &spec.name,
                run.run_id,
                Some(keys[upsert.row].clone()),
                r.field.clone(),
                &r.reason,
                batch,
                mapped.source_rows[upsert.row],
            ));
        }
        let mut versions = if writes {
            cursor_versions(
                spec.cursor_field.as_ref(),
                batch,
                ctx.cursor_type,
                &mapped.source_rows,
            )
        } else {
            None
        };
        let mut ledger = Vec::with_capacity(if writes { changes.upserts.len() } else { 0 });
        for upsert in &changes.upserts {
            let row = upsert.row;
            if refused[row] {
                continue;
            }
            if upsert.added {
                metrics.added += 1;
            } else {
                metrics.updated += 1;
            }
            if writes {
                // Each row is upserted at most once and never also deleted: its key and
                // version move into the entry.
                ledger.push(LedgerEntry {
                    key: std::mem::take(&mut keys[row]),
                    dest_key: None,
                    fingerprint: fingerprints[row],
                    source_version: versions.as_mut().and_then(|v| v[row].take()),
                    synced_at: None,
                });
            }
        }
        // A run records every tombstone as a pending delete; a plan counts those whose record
        // the ledger knows. A stream this run created has nothing to delete.
        let found = if ctx.destination_is_new {
            Vec::new()
        } else {
            changes
                .deletes
                .iter()
                .filter(|d| writes || d.in_ledger)
                .map(|d| keys[d.row].clone())
                .collect()
        };
        Ok(Settled {
            ledger,
            ledger_keys_new: changes.upserts.iter().all(|upsert| upsert.added),
            found,
            seen: present,
        })
    }
}

/// A batch of a sync without a ledger: every record read is sent, and the destination's
/// upsert says what was added, updated or unchanged. No fingerprints are computed, and keys
/// only for tombstones and when deletes wait, which keeps database-to-database syncs close to
/// the databases' own speed.
struct DirectChanges {
    /// Whether each mapped row is a tombstone, when any is.
    deleted_in_source: Option<Vec<bool>>,
    to_write: RecordBatch,
    found: Vec<String>,
    seen: Vec<String>,
}

impl DirectChanges {
    fn new(
        ctx: &Context<'_>,
        mapped: &MappedBatch,
        marks: Option<Vec<bool>>,
        deletes_may_wait: bool,
    ) -> Result<Self, EngineError> {
        let deleted_in_source = marks.filter(|rows| rows.iter().any(|d| *d));
        let (to_write, to_delete) = match &deleted_in_source {
            None => (mapped.batch.clone(), None),
            Some(deleted) => {
                let keep: Vec<bool> = deleted.iter().map(|d| !d).collect();
                let keys_only = mapped
                    .batch
                    .project(&key_indices(&mapped.batch, ctx.mapper.key())?)?;
                (
                    filter_record_batch(&mapped.batch, &BooleanArray::from(keep))?,
                    Some(filter_record_batch(
                        &keys_only,
                        &BooleanArray::from(deleted.clone()),
                    )?),
                )
            }
        };
        // Tombstoned records wait in the state store like any delete (see `deletes`); their
        // keys are computed only then, and the keys of the written records only when deletes
        // wait.
        let found = match (&to_delete, ctx.destination_is_new) {
            (Some(keys_batch), false) => record_keys(keys_batch, ctx.mapper.key())?,
            _ => Vec::new(),
        };
        let seen = if deletes_may_wait {
            record_keys(&to_write, ctx.mapper.key())?
        } else {
            Vec::new()
        };
        Ok(DirectChanges {
            deleted_in_source,
            to_write,
            found,
            seen,
        })
    }

    fn settle(
        self,
        ctx: &Context<'_>,
        run: &RunState,
        written: &Written<'_>,
        metrics: &mut RunMetrics,
        rejected: &mut Vec<RejectedRecord>,
    ) -> Result<Settled, EngineError> {
        let sync = ctx.job.spec.name.as_str();
        let Written {
            batch,
            mapped,
            outcome,
        } = *written;
        let to_write = &self.to_write;
        for r in &outcome.rejected {
            let key = record_keys(
                &to_write.slice(r.row.min(to_write.num_rows().saturating_sub(1)), 1),
                ctx.mapper.key(),
            )
            .ok()
            .and_then(|k| k.into_iter().next());
            // Without tombstones the written rows are the mapped rows, in order.
            let source_row = match &self.deleted_in_source {
                None => mapped.source_rows.get(r.row).copied(),
                Some(_) => None,
            };
            rejected.push(RejectedRecord {
                raw: source_row
                    .map(|row| Value::Object(row_json(batch, row)))
                    .unwrap_or_else(|| Value::Object(row_json(to_write, r.row))),
                ..rejection(
                    sync,
                    run.run_id,
                    key,
                    r.field.clone(),
                    &r.reason,
                    to_write,
                    r.row,
                )
            });
        }
        let sent = to_write.num_rows() as u64;
        let refused = outcome.rejected.len() as u64;
        metrics.added += outcome.inserted.unwrap_or(0);
        metrics.unchanged += outcome.unchanged.unwrap_or(0);
        metrics.updated += outcome.updated.unwrap_or_else(|| {
            sent.saturating_sub(
                refused + outcome.inserted.unwrap_or(0) + outcome.unchanged.unwrap_or(0),
            )
        });
        Ok(Settled {
            ledger: Vec::new(),
            ledger_keys_new: true,
            found: self.found,
            seen: self.seen,
        })
    }
}
