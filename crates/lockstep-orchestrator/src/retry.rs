//! Retrying rejected records, as a run of its own so that history shows it.
//!
//! A retry never replays the row stored with a rejected record: the record may have changed
//! and synced since, and writing the stored row would put older data over newer. Instead it
//! reads the current version of each record from the source by its source key (the
//! connector's `read-by-keys` feature) and sends what it reads through the same path as a
//! run: mapping, the ledger diff, the destination write and one state commit per batch.
//!
//! Invariants:
//! - Nothing older than the source's current record is written; a source connector without
//!   `read-by-keys` is refused before anything happens.
//! - A rejected record is resolved only when the current version of its key is in the
//!   destination (written now, or already there by the ledger) or when the record no longer
//!   exists in the source (then nothing is written, in any mode).
//! - A record that fails again stays pending: the retry's run stores it as a new rejected
//!   record with today's reason and value, and the old one notes the retry.
//! - A source reject (a record the source could not read) has no key. When the source
//!   declares `read-locations`, the retry reads it again at its place (a file's line) as it
//!   is now: a record that now reads is sent through the same path and resolves the reject;
//!   one that still cannot be read fails again (pending in the retry's run with today's
//!   reason); a place that holds no record any more resolves it with nothing written. Other
//!   sources leave it pending with a message saying to fix the source.
//! - The stored checkpoint does not move: a read by keys is not a position in the source.
//! - A two-way sync is never retried this way (its rejects carry mapped values, and a side's
//!   current record may be newer on either side): a retry runs the sync, whose runs decide
//!   every pending reject again against both sides (see `two_way.rs`), and reports what
//!   became of the rejects asked for.

use std::collections::{BTreeMap, HashMap, HashSet};

use lockstep_core::protocol::{
    ReadMode, ReadRequest, FEATURE_READ_BY_KEYS, FEATURE_READ_LOCATIONS,
};
use lockstep_core::{RunMetrics, RunStatus, SyncMode};
use lockstep_mapping::Mapper;
use lockstep_plugin_core::rows::batch_from_rows;
use lockstep_plugin_core::source_rejects::{is_rejects_batch, rejects_from_batch};
use lockstep_state::{BatchCommit, RejectedFilter, RejectedRecord, RunEnd};
use serde_json::Value;

use crate::batch::apply_batch;
use crate::context::{fields_to_read, Context};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::job::{RunOptions, RunState, SyncJob};
use crate::lease::{FencedWriter, HeldLease};
use crate::rows::row_json;
use crate::services::open_destination_stream;
use crate::sink::{Sink, WriteSink};
use crate::source_rejects::{is_source_reject, STORED_KEY};

/// The most keys one read by keys asks for.
const KEYS_PER_READ: usize = 500;

/// What a retry did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetryOutcome {
    pub run_id: i64,
    /// The rejected records retried.
    pub retried: usize,
    /// Of those, the records whose current version is now in the destination.
    pub succeeded: usize,
    /// Records the destination did not have before (counted once per key).
    pub added: usize,
    /// The ids of rejected records whose key no longer exists in the source: resolved, and
    /// nothing was written for them.
    pub gone: Vec<i64>,
    /// (rejected record id, why it failed again); each stays pending as a new rejected
    /// record of the retry's run.
    pub failed: Vec<(i64, String)>,
    /// The counts of the retry's run.
    pub metrics: RunMetrics,
}

/// The canonical text of a record's source key, from a row as JSON; `None` when a key field
/// is missing or null (the record cannot be looked up).
fn source_key_of(row: &serde_json::Map<String, Value>, key: &[String]) -> Option<Vec<Value>> {
    key.iter()
        .map(|k| row.get(k).filter(|v| !v.is_null()).cloned())
        .collect()
}

impl Engine<'_> {
    /// Retries the sync's pending rejected records (or only `ids`) under the sync's lease.
    pub async fn retry_rejected(
        &self,
        job: &SyncJob,
        ids: &[i64],
        options: RunOptions,
    ) -> Result<RetryOutcome, EngineError> {
        if job.spec.mode == SyncMode::TwoWay {
            return self.retry_two_way(job, ids, options).await;
        }
        let sync = job.spec.name.as_str();
        let lease = self.acquire_lease_for(sync, &options).await?;
        let result = self.retry_leased(job, ids, &lease).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(sync, "could not release the lease: {e}");
        }
        result
    }

    /// Retries the pending rejects of two-way sync `job` (or only `ids`) by running it: the
    /// run decides every pending reject of the sync again, whichever were asked for.
    async fn retry_two_way(
        &self,
        job: &SyncJob,
        ids: &[i64],
        options: RunOptions,
    ) -> Result<RetryOutcome, EngineError> {
        let pending = RejectedFilter {
            sync: Some(job.spec.name.clone()),
            pending_only: true,
            ..Default::default()
        };
        let mut asked = self.state.rejected(&pending).await?;
        if !ids.is_empty() {
            asked.retain(|r| ids.contains(&r.id));
        }
        let mut outcome = RetryOutcome {
            retried: asked.len(),
            ..Default::default()
        };
        if asked.is_empty() {
            return Ok(outcome);
        }
        let report = self.run(job, options).await?;
        outcome.run_id = report.run_id;
        outcome.metrics = report.metrics;
        outcome.added = report.metrics.added as usize;
        match report.error {
            // The run committed what it did; the rejects below say what became of them.
            None | Some(EngineError::TooManyRejected(_) | EngineError::MassDelete(_)) => {}
            Some(e) => return Err(e),
        }
        let still: HashMap<i64, RejectedRecord> = self
            .state
            .rejected(&pending)
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        for record in &asked {
            match still.get(&record.id) {
                None => outcome.succeeded += 1,
                Some(_) if record.key.is_none() => outcome.failed.push((
                    record.id,
                    "not retryable: the record has no key (a one-way run of this sync could                      not map it), so a two-way run cannot look it up; fix it in the source"
                        .into(),
                )),
                Some(now) => outcome.failed.push((record.id, now.reason.clone())),
            }
        }
        outcome.failed.sort();
        Ok(outcome)
    }

    async fn retry_leased(
        &self,
        job: &SyncJob,
        ids: &[i64],
        lease: &HeldLease,
    ) -> Result<RetryOutcome, EngineError> {
        let sync = job.spec.name.as_str();
        let mut records = self
            .state
            .rejected(&RejectedFilter {
                sync: Some(sync.to_owned()),
                pending_only: true,
                ..Default::default()
            })
            .await?;
        if !ids.is_empty() {
            records.retain(|r| ids.contains(&r.id));
        }
        let mut outcome = RetryOutcome {
            retried: records.len(),
            ..Default::default()
        };
        // A record the source could not read has no key to read it again by: a source that
        // reads by location reads it again at its place; for any other, it stays pending
        // until the source is fixed.
        let (unreadable, records): (Vec<_>, Vec<_>) =
            records.into_iter().partition(is_source_reject);
        let plugin = self.registry.get(&job.source.connector)?;
        let reads_locations = plugin
            .manifest
            .features
            .iter()
            .any(|f| f == FEATURE_READ_LOCATIONS);
        let (at_location, unreadable) = if reads_locations {
            (unreadable, Vec::new())
        } else {
            (Vec::new(), unreadable)
        };
        for record in &unreadable {
            outcome.failed.push((
                record.id,
                "not retryable: the source could not read this record, so there is no key to \
                 read it again by, and its connector cannot read it again at its place (it \
                 does not declare `read-locations`); fix it in the source and a run reads it. \
                 It stays pending"
                    .into(),
            ));
        }
        if records.is_empty() && at_location.is_empty() && unreadable.is_empty() {
            return Ok(outcome);
        }
        if records.is_empty() && at_location.is_empty() {
            // Only source rejects: the retry's run records that nothing could be retried.
            let run_id = self.state.start_run(sync, None).await?;
            outcome.run_id = run_id;
            let mut end = RunEnd::new(RunStatus::Succeeded, RunMetrics::default());
            end.exit_detail = Some(format!(
                "retry of {} rejected records the source could not read: not retryable",
                unreadable.len()
            ));
            self.state.finish_run(run_id, &end).await?;
            return Ok(outcome);
        }
        if !records.is_empty()
            && !plugin
                .manifest
                .features
                .iter()
                .any(|f| f == FEATURE_READ_BY_KEYS)
        {
            return Err(EngineError::Config(format!(
                "sync `{sync}`: connector `{}` of connection `{}` cannot read records by key \
                 (it does not declare the `{FEATURE_READ_BY_KEYS}` feature), so a retry cannot \
                 fetch the current version of the {} rejected records, and replaying the stored \
                 rows could overwrite newer data; nothing was retried. A run resolves a rejected \
                 record when it writes a newer version of its key: fix the record in the source \
                 and run `lockstep run {sync}`",
                job.source.connector,
                job.spec.source.connection,
                records.len()
            )));
        }
        let run_id = self.state.start_run(sync, None).await?;
        outcome.run_id = run_id;
        let mut run = RunState::new(run_id, None);
        let result = self
            .retry_records(job, lease, &mut run, &records, &at_location, &mut outcome)
            .await;
        outcome.metrics = run.metrics;
        outcome.added = run.metrics.added as usize;
        let mut end = RunEnd::new(
            if result.is_ok() {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            run.metrics,
        );
        if let Err(e) = &result {
            end.error_kind = Some(e.kind());
            end.error = Some((self.redactor)(&e.to_string()));
        }
        end.exit_detail = Some(format!(
            "retry of {} rejected records",
            records.len() + at_location.len()
        ));
        self.state.finish_run(run_id, &end).await?;
        result.map(|()| outcome)
    }

    async fn retry_records(
        &self,
        job: &SyncJob,
        held: &HeldLease,
        run: &mut RunState,
        records: &[RejectedRecord],
        at_location: &[RejectedRecord],
        outcome: &mut RetryOutcome,
    ) -> Result<(), EngineError> {
        let spec = &job.spec;
        let run_id = run.run_id;
        let services = self.services();
        let (mut source, stream) = services.open_source_stream(job).await?;
        let mapper = Mapper::new(spec, &stream)?;
        let source_key = mapper.source_key().to_vec();

        // The records by source key; several rejects (from several runs) may share one.
        let mut by_key: BTreeMap<String, (Vec<Value>, Vec<&RejectedRecord>)> = BTreeMap::new();
        let mut unkeyed: Vec<&RejectedRecord> = Vec::new();
        for record in records {
            match record
                .raw
                .as_object()
                .and_then(|row| source_key_of(row, &source_key))
            {
                Some(values) => {
                    let text = Value::Array(values.clone()).to_string();
                    by_key
                        .entry(text)
                        .or_insert_with(|| (values, Vec::new()))
                        .1
                        .push(record);
                }
                None => unkeyed.push(record),
            }
        }

        let mut destination = services.open_destination(&job.destination).await?;
        let lease = held.lease();
        let writer = open_destination_stream(&mut destination, job, &mapper).await?;
        // Every write is refused once the lease is lost, as in a run.
        let mut sink = WriteSink::new(FencedWriter::new(writer, Some(held.watch())), self.state);
        let ctx = Context {
            services,
            job,
            mapper: &mapper,
            cursor_type: spec
                .cursor_field
                .as_ref()
                .and_then(|c| stream.field(c))
                .map(|f| f.data_type),
            lease: Some(lease),
            // A retry writes into a stream that exists: its records were refused there.
            destination_is_new: false,
        };
        // A record the retry writes cancels a delete that waits for its key, as in a run.
        if spec.mode.propagates_deletes() {
            run.deletes_waiting = self.state.pending_deletes(&spec.name, 0).await?.total() > 0;
        }
        let fields = fields_to_read(job, &mapper);

        // Read the current records and apply them as a run would.
        let wanted: Vec<Vec<Value>> = by_key.values().map(|(v, _)| v.clone()).collect();
        let mut found: HashSet<String> = HashSet::new();
        for chunk in wanted.chunks(KEYS_PER_READ) {
            let mut reader = source
                .read(&ReadRequest {
                    stream: spec.source.stream.clone(),
                    mode: ReadMode::Full,
                    fields: Some(fields.clone()),
                    cursor_field: None,
                    key: source_key.clone(),
                    checkpoint: None,
                    batch_size: Some(spec.batch_size),
                    keys: Some(chunk.to_vec()),
                    ..Default::default()
                })
                .await?;
            while let Some((batch, _)) = reader.next().await? {
                for row in 0..batch.num_rows() {
                    let json = row_json(&batch, row);
                    if let Some(values) = source_key_of(&json, &source_key) {
                        found.insert(Value::Array(values).to_string());
                    }
                }
                // A null checkpoint leaves the sync's stored checkpoint where it is.
                apply_batch(&ctx, &mut sink, run, batch, Value::Null).await?;
            }
        }
        sink.flush().await?;

        // The records this retry's run rejected again, by source key, with their reason.
        let mut again: HashMap<String, String> = HashMap::new();
        for r in self
            .state
            .rejected(&RejectedFilter {
                run: Some(run_id),
                ..Default::default()
            })
            .await?
        {
            if let Some(values) = r
                .raw
                .as_object()
                .and_then(|o| source_key_of(o, &source_key))
            {
                again.insert(Value::Array(values).to_string(), r.reason);
            }
        }

        let mut succeeded = Vec::new();
        let mut failed_again: Vec<(i64, String)> = Vec::new();
        for (text, (_, group)) in &by_key {
            let ids = group.iter().map(|r| r.id);
            if !found.contains(text) {
                outcome.gone.extend(ids);
            } else if let Some(reason) = again.get(text) {
                failed_again.extend(ids.map(|id| (id, reason.clone())));
            } else {
                succeeded.extend(ids);
            }
        }

        // Source rejects, each read again at its place as it is now.
        for record in at_location {
            let Some(location) = stored_location(record) else {
                failed_again.push((
                    record.id,
                    "the stored record does not say where the source found it".into(),
                ));
                continue;
            };
            let mut reader = source
                .read(&ReadRequest {
                    stream: spec.source.stream.clone(),
                    mode: ReadMode::Full,
                    fields: Some(fields.clone()),
                    key: source_key.clone(),
                    batch_size: Some(1),
                    locations: Some(vec![location]),
                    ..Default::default()
                })
                .await?;
            let Some((batch, _)) = reader.next().await? else {
                outcome.gone.push(record.id);
                continue;
            };
            if is_rejects_batch(&batch) {
                let reason = rejects_from_batch(&batch)
                    .ok()
                    .and_then(|r| r.into_iter().next())
                    .map(|r| r.reason)
                    .unwrap_or_default();
                apply_batch(&ctx, &mut sink, run, batch, Value::Null).await?;
                failed_again.push((
                    record.id,
                    format!("the source still cannot read it: {reason}"),
                ));
            } else if batch.num_rows() == 0 {
                outcome.gone.push(record.id);
            } else {
                let rejected_before = run.metrics.rejected;
                apply_batch(&ctx, &mut sink, run, batch, Value::Null).await?;
                if run.metrics.rejected > rejected_before {
                    let reason = self
                        .state
                        .rejected(&RejectedFilter {
                            run: Some(run_id),
                            ..Default::default()
                        })
                        .await?
                        .into_iter()
                        .max_by_key(|r| r.id)
                        .map(|r| r.reason)
                        .unwrap_or_default();
                    failed_again.push((record.id, reason));
                } else {
                    succeeded.push(record.id);
                }
            }
        }
        sink.flush().await?;

        // Records without a source key cannot be looked up: they fail again, with the
        // mapping's reason when their stored row does not map either.
        let mut carried = Vec::new();
        for record in &unkeyed {
            let reason = self.unkeyed_reason(&mapper, &stream, record, &source_key);
            failed_again.push((record.id, reason.clone()));
            carried.push(RejectedRecord {
                reason,
                ..(*record).clone()
            });
        }
        if !carried.is_empty() {
            run.metrics.rejected += carried.len() as u64;
            self.state
                .commit_batch(&BatchCommit {
                    sync: &spec.name,
                    run: run_id,
                    lease_token: Some(lease.token),
                    ledger_upserts: &[],
                    ledger_keys_new: false,
                    ledger_deletes: &[],
                    checkpoint: None,
                    metrics: &run.metrics,
                    rejected: &carried,
                })
                .await?;
        }

        self.state
            .mark_rejected_retried(&succeeded, &format!("succeeded in run {run_id}"))
            .await?;
        self.state
            .mark_rejected_retried(
                &outcome.gone,
                &format!(
                    "resolved in run {run_id}: the record no longer exists in the source; \
                     nothing was written"
                ),
            )
            .await?;
        for (id, reason) in &failed_again {
            self.state
                .mark_rejected_retried(
                    &[*id],
                    &format!(
                        "failed again in run {run_id} (pending there as a new record): {reason}"
                    ),
                )
                .await?;
        }
        outcome.succeeded = succeeded.len();
        outcome.failed.extend(failed_again);
        outcome.failed.sort();
        outcome.gone.sort();
        Ok(())
    }

    /// Why a rejected record whose stored row lacks its source key fails again: the
    /// mapping's reason when the stored row does not map, else that it cannot be looked up.
    fn unkeyed_reason(
        &self,
        mapper: &Mapper,
        stream: &lockstep_core::protocol::StreamInfo,
        record: &RejectedRecord,
        source_key: &[String],
    ) -> String {
        let cannot_look_up = format!(
            "the stored record has no value for its source key ({}), so its current version \
             cannot be read from the source; fix the record there and a run will sync it",
            source_key
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let Some(row) = record.raw.as_object() else {
            return cannot_look_up;
        };
        let fields: Vec<_> = stream
            .fields
            .iter()
            .filter(|f| row.contains_key(&f.name))
            .cloned()
            .collect();
        let mapped = batch_from_rows(&fields, std::slice::from_ref(row))
            .map_err(|e| e.to_string())
            .and_then(|batch| mapper.map(&batch).map_err(|e| e.to_string()));
        match mapped {
            Err(reason) => reason,
            Ok(m) => match m.rejected.first() {
                Some(r) => r.reason.clone(),
                None => cannot_look_up,
            },
        }
    }
}

/// Where the source found a source reject: its stored location, with the record's text as
/// it was then (`text`).
fn stored_location(record: &RejectedRecord) -> Option<Value> {
    record
        .raw
        .get(STORED_KEY)
        .filter(|v| v.is_object())
        .cloned()
}
