//! Retrying rejected records: the stored source rows go through the mapping and into the
//! destination again, as a run of their own so that history shows it.

use arrow::array::RecordBatch;
use lockstep_core::protocol::{OpenStreamRequest, SchemaEvolution};
use lockstep_core::{fingerprints, record_keys, RunMetrics, RunStatus};
use lockstep_mapping::Mapper;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_state::{BatchCommit, LedgerEntry, RejectedFilter, RunEnd};

use crate::engine::{Engine, RunOptions, SyncJob};
use crate::error::EngineError;
use crate::pipeline::open_source_stream;

/// What a retry did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetryOutcome {
    pub run_id: i64,
    pub retried: usize,
    pub succeeded: usize,
    /// Of the succeeded records, those the destination did not have before.
    pub added: usize,
    /// (rejected record id, why it failed again)
    pub failed: Vec<(i64, String)>,
}

impl RetryOutcome {
    /// The counts of the retry's run.
    fn metrics(&self) -> RunMetrics {
        RunMetrics {
            read: self.retried as u64,
            added: self.added as u64,
            updated: (self.succeeded - self.added) as u64,
            rejected: self.failed.len() as u64,
            ..Default::default()
        }
    }
}

impl Engine<'_> {
    /// Retries the sync's pending rejected records (or only `ids`) under the sync's lease.
    pub async fn retry_rejected(
        &self,
        job: &SyncJob,
        ids: &[i64],
        options: RunOptions,
    ) -> Result<RetryOutcome, EngineError> {
        let sync = job.spec.name.as_str();
        let lease = self.acquire_lease_for(sync, &options).await?;
        let result = self.retry_leased(job, ids, lease.lease()).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(sync, "could not release the lease: {e}");
        }
        result
    }

    async fn retry_leased(
        &self,
        job: &SyncJob,
        ids: &[i64],
        lease: &lockstep_state::Lease,
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
        if records.is_empty() {
            return Ok(outcome);
        }
        let run_id = self.state.start_run(sync, None).await?;
        outcome.run_id = run_id;
        let result = self
            .retry_records(job, lease, run_id, &records, &mut outcome)
            .await;
        let metrics = outcome.metrics();
        let mut end = RunEnd::new(
            if result.is_ok() {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
            metrics,
        );
        if let Err(e) = &result {
            end.error_kind = Some(e.kind_name().to_owned());
            end.error = Some((self.redactor)(&e.to_string()));
        }
        end.exit_detail = Some(format!("retry of {} rejected records", records.len()));
        self.state.finish_run(run_id, &end).await?;
        result.map(|()| outcome)
    }

    async fn retry_records(
        &self,
        job: &SyncJob,
        lease: &lockstep_state::Lease,
        run_id: i64,
        records: &[lockstep_state::RejectedRecord],
        outcome: &mut RetryOutcome,
    ) -> Result<(), EngineError> {
        let sync = job.spec.name.as_str();
        let (_, stream) = open_source_stream(self, job).await?;
        let mapper = Mapper::new(&job.spec, &stream)?;
        let mut ok_ids = Vec::new();
        let mut ledger = Vec::new();
        let plugin = self.registry.get(&job.destination.connector)?;
        let mut destination = plugin
            .open_destination(&job.destination.config, self.redactor.clone())
            .await?;
        let mut writer = destination
            .open_stream(&OpenStreamRequest {
                stream: job.spec.destination.stream.clone(),
                fields: mapper.target_fields(),
                key: mapper.key().to_vec(),
                create_if_missing: true,
                schema_evolution: SchemaEvolution::AddColumns,
            })
            .await?;
        // One record at a time: each succeeds or fails on its own, with its own reason.
        for record in records {
            let row = match record.raw.as_object() {
                Some(o) => o.clone(),
                None => {
                    outcome
                        .failed
                        .push((record.id, "the stored record is not a JSON object".into()));
                    continue;
                }
            };
            let fields: Vec<_> = stream
                .fields
                .iter()
                .filter(|f| row.contains_key(&f.name))
                .cloned()
                .collect();
            let batch: RecordBatch = match batch_from_rows(&fields, std::slice::from_ref(&row)) {
                Ok(b) => b,
                Err(e) => {
                    outcome.failed.push((record.id, e.to_string()));
                    continue;
                }
            };
            let mapped = match mapper.map(&batch) {
                Ok(m) => m,
                Err(e) => {
                    outcome.failed.push((record.id, e.to_string()));
                    continue;
                }
            };
            if let Some(r) = mapped.rejected.first() {
                outcome.failed.push((record.id, r.reason.clone()));
                continue;
            }
            let keys = record_keys(&mapped.batch, mapper.key())?;
            let prints = fingerprints(&mapped.batch)?;
            let written = writer.upsert(mapped.batch.clone()).await?;
            if let Some(r) = written.rejected.first() {
                outcome.failed.push((record.id, r.reason.clone()));
                continue;
            }
            ok_ids.push(record.id);
            ledger.push(LedgerEntry {
                key: keys[0].clone(),
                dest_key: None,
                fingerprint: prints[0],
                source_version: None,
                synced_at: None,
            });
        }
        writer.flush().await?;
        outcome.succeeded = ok_ids.len();
        // A record the ledger did not know was added by this retry; the rest were updates.
        let keys: Vec<String> = ledger.iter().map(|e| e.key.clone()).collect();
        let known = self.state.ledger_lookup(sync, &keys).await?;
        outcome.added = keys.iter().filter(|k| !known.contains_key(*k)).count();
        let metrics = outcome.metrics();
        self.state
            .commit_batch(&BatchCommit {
                sync,
                run: run_id,
                lease_token: Some(lease.token),
                ledger_upserts: &ledger,
                ledger_deletes: &[],
                checkpoint: None,
                metrics: &metrics,
                rejected: &[],
            })
            .await?;
        self.state
            .mark_rejected_retried(&ok_ids, &format!("succeeded in run {run_id}"))
            .await?;
        for (id, reason) in &outcome.failed {
            self.state
                .mark_rejected_retried(&[*id], &format!("failed again in run {run_id}: {reason}"))
                .await?;
        }
        Ok(())
    }
}
