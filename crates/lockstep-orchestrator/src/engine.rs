//! One run of one sync: read, map, diff against the ledger, write, commit.
//!
//! The commit protocol (semantics.md, "Durability and idempotence"): for each batch the
//! destination writes and flushes first; only then does one state transaction record the
//! ledger changes, rejected records, progress and the new source checkpoint, under the
//! lease's fencing token. A crash anywhere re-reads from the last committed checkpoint and
//! re-applies idempotent upserts: nothing is lost and nothing is duplicated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use lockstep_core::protocol::arrow_types::json_value;
use lockstep_core::protocol::{
    DataType, OpenStreamRequest, ReadMode, ReadRequest, SchemaEvolution, WriteOutcome,
};
use lockstep_core::{fingerprints, record_keys, RunMetrics, RunStatus, SyncSpec};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::{PluginRegistry, Redactor};
use lockstep_state::{
    BatchCommit, Lease, LeaseHolder, LedgerEntry, RejectedRecord, RunEnd, StateError, StateStore,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::error::EngineError;

/// A connection as the engine needs it: which connector, with what config.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub connector: String,
    /// The connector's config, secrets already interpolated.
    pub config: Value,
}

/// A sync with its two connections resolved.
#[derive(Clone, Debug)]
pub struct SyncJob {
    pub spec: SyncSpec,
    pub source: Endpoint,
    pub destination: Endpoint,
}

/// Progress reported after each committed batch.
#[derive(Clone, Debug)]
pub struct Progress {
    pub run_id: i64,
    pub metrics: RunMetrics,
    pub batches: u64,
}

/// Called after each committed batch.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Forget the checkpoint and ledger first: read everything and rewrite what differs.
    pub full_refresh: bool,
    /// When it turns true, the run stops after committing the batch in hand.
    pub stop: watch::Receiver<bool>,
    pub progress: Option<ProgressFn>,
    /// How long a lease lives without renewal; renewed every third of it.
    pub lease_ttl: Duration,
    pub holder: LeaseHolder,
}

impl RunOptions {
    /// Options for a run in this process, never stopped from outside.
    pub fn new() -> Self {
        let (tx, stop) = watch::channel(false);
        // The sender is leaked on purpose: a dropped sender would read as "never stop" anyway,
        // and keeping it alive keeps `changed()` pending instead of erroring.
        std::mem::forget(tx);
        Self {
            full_refresh: false,
            stop,
            progress: None,
            lease_ttl: Duration::from_secs(30),
            holder: LeaseHolder {
                host: hostname(),
                pid: std::process::id(),
            },
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// This machine's host name, for lease holders.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// What a run did.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: i64,
    pub sync: String,
    pub status: RunStatus,
    pub metrics: RunMetrics,
    pub duration: Duration,
    pub cursor_before: Option<Value>,
    pub cursor_after: Option<Value>,
    pub error: Option<EngineError>,
}

/// Runs syncs against loaded plugins and a state store.
pub struct Engine<'a> {
    pub registry: &'a PluginRegistry,
    pub state: &'a dyn StateStore,
    pub redactor: Redactor,
}

impl Engine<'_> {
    /// Runs `job` once. Errors before the run exists (the lease is held elsewhere, the state
    /// store is down) are returned as `Err`; anything after is recorded on the run and
    /// returned in the report with status `failed`.
    pub async fn run(&self, job: &SyncJob, options: RunOptions) -> Result<RunReport, EngineError> {
        let sync = job.spec.name.as_str();
        let lease = self.acquire_lease(sync, &options).await?;
        let result = self.run_leased(job, &options, &lease).await;
        if let Err(e) = self.state.release_lease(&lease).await {
            tracing::warn!(sync, "could not release the lease: {e}");
        }
        result
    }

    async fn acquire_lease(&self, sync: &str, options: &RunOptions) -> Result<Lease, EngineError> {
        match self
            .state
            .acquire_lease(sync, &options.holder, options.lease_ttl)
            .await
        {
            Ok(lease) => Ok(lease),
            Err(StateError::LeaseHeld { holder, .. })
                if holder.host == options.holder.host && !process_alive(holder.pid) =>
            {
                // The holder was a process on this machine that no longer exists (killed, or
                // crashed): its lease is stale now rather than after the TTL.
                tracing::warn!(sync, "taking over the lease of dead process {}", holder.pid);
                self.state.expire_lease(sync, &holder).await?;
                Ok(self
                    .state
                    .acquire_lease(sync, &options.holder, options.lease_ttl)
                    .await?)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn run_leased(
        &self,
        job: &SyncJob,
        options: &RunOptions,
        lease: &Lease,
    ) -> Result<RunReport, EngineError> {
        let sync = job.spec.name.as_str();
        let abandoned = self.state.mark_abandoned(sync).await?;
        if abandoned > 0 {
            tracing::warn!(sync, abandoned, "earlier runs ended without a record; marked abandoned");
        }
        if options.full_refresh {
            self.state.reset_sync(sync).await?;
        }
        let cursor_before = if job.spec.mode.uses_cursor() {
            self.state.checkpoint(sync).await?
        } else {
            None
        };
        let run_id = self.state.start_run(sync, cursor_before.as_ref()).await?;
        let started = Instant::now();
        let span = tracing::info_span!("run", sync, run = run_id);
        let mut run = RunState {
            run_id,
            metrics: RunMetrics::default(),
            checkpoint: cursor_before.clone(),
            batches: 0,
        };
        let outcome = self
            .execute(job, options, lease, &mut run)
            .instrument(span.clone())
            .await;
        let (status, error) = match outcome {
            Ok(true) => (RunStatus::Succeeded, None),
            Ok(false) => (RunStatus::Cancelled, None),
            Err(e) => (RunStatus::Failed, Some(e)),
        };
        let end = RunEnd {
            status,
            metrics: run.metrics,
            error_kind: error.as_ref().map(|e| e.kind_name().to_owned()),
            error: error.as_ref().map(|e| (self.redactor)(&e.to_string())),
            cursor_after: run.checkpoint.clone(),
            exit_detail: None,
        };
        self.state.finish_run(run_id, &end).await?;
        let _entered = span.enter();
        match &error {
            None => tracing::info!(status = status.as_str(), metrics = ?run.metrics, "run ended"),
            Some(e) => tracing::error!(kind = e.kind_name(), "run failed: {}", (self.redactor)(&e.to_string())),
        }
        Ok(RunReport {
            run_id,
            sync: sync.to_owned(),
            status,
            metrics: run.metrics,
            duration: started.elapsed(),
            cursor_before,
            cursor_after: run.checkpoint,
            error,
        })
    }

    /// Returns Ok(true) when the read completed, Ok(false) when it was stopped.
    async fn execute(
        &self,
        job: &SyncJob,
        options: &RunOptions,
        lease: &Lease,
        run: &mut RunState,
    ) -> Result<bool, EngineError> {
        let spec = &job.spec;
        let source_plugin = self.registry.get(&job.source.connector)?;
        let destination_plugin = self.registry.get(&job.destination.connector)?;
        let mut source = source_plugin
            .open_source(&job.source.config, self.redactor.clone())
            .await?;
        let catalog = source.discover().await?;
        let stream = catalog.stream(&spec.source.stream).ok_or_else(|| {
            EngineError::Schema(format!(
                "connection `{}` has no stream `{}`; it has: {}",
                spec.source.connection,
                spec.source.stream,
                catalog
                    .streams
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let mapper = Mapper::new(spec, stream)?;
        let cursor_type = spec
            .cursor_field
            .as_ref()
            .and_then(|c| stream.field(c))
            .map(|f| f.data_type);

        let mut destination = destination_plugin
            .open_destination(&job.destination.config, self.redactor.clone())
            .await?;
        let mut writer = destination
            .open_stream(&OpenStreamRequest {
                stream: spec.destination.stream.clone(),
                fields: mapper.target_fields(),
                key: mapper.key().to_vec(),
                create_if_missing: true,
                schema_evolution: SchemaEvolution::AddColumns,
            })
            .await?;

        let mut fields = mapper.source_fields();
        if let Some(cursor) = &spec.cursor_field {
            if !fields.contains(cursor) {
                fields.push(cursor.clone());
            }
        }
        let request = ReadRequest {
            stream: spec.source.stream.clone(),
            mode: if spec.mode.uses_cursor() {
                ReadMode::Incremental
            } else {
                ReadMode::Full
            },
            fields: Some(fields),
            cursor_field: spec.cursor_field.clone(),
            key: mapper.source_key().to_vec(),
            checkpoint: run.checkpoint.clone(),
            batch_size: Some(spec.batch_size),
        };
        let mut reader = source.read(&request).await?;
        let source_cancel = source.cancel_handle();

        // The reader runs ahead by up to two batches so that reading overlaps writing.
        let (tx, mut rx) = mpsc::channel(2);
        let read_task = tokio::spawn(
            async move {
                loop {
                    let next = reader.next().await;
                    let end = !matches!(next, Ok(Some(_)));
                    if tx.send(next).await.is_err() || end {
                        break;
                    }
                }
            }
            .in_current_span(),
        );

        let mut stop = options.stop.clone();
        let renew_every = options.lease_ttl / 3;
        let completed = loop {
            if *stop.borrow() {
                break false;
            }
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = stop.changed() => {
                    if *stop.borrow() { break false; }
                    continue;
                }
            };
            let Some(next) = next else {
                return Err(EngineError::Internal("the source reader stopped without an end".into()));
            };
            let Some((batch, checkpoint)) = next? else {
                break true;
            };
            // The lease is renewed while the batch is applied, however long that takes.
            {
                let apply = self.apply_batch(
                    job, &mapper, cursor_type, &mut writer, lease, run, batch, checkpoint,
                );
                tokio::pin!(apply);
                loop {
                    tokio::select! {
                        result = &mut apply => { result?; break; }
                        _ = tokio::time::sleep(renew_every) => {
                            self.state.renew_lease(lease, options.lease_ttl).await?;
                        }
                    }
                }
            }
            if let Some(progress) = &options.progress {
                progress(&Progress {
                    run_id: run.run_id,
                    metrics: run.metrics,
                    batches: run.batches,
                });
            }
        };
        if !completed {
            source_cancel.cancel();
        }
        drop(rx);
        let _ = read_task.await;
        Ok(completed)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_batch(
        &self,
        job: &SyncJob,
        mapper: &Mapper,
        cursor_type: Option<DataType>,
        writer: &mut lockstep_plugin_host::StreamWriterHandle,
        lease: &Lease,
        run: &mut RunState,
        batch: RecordBatch,
        checkpoint: Value,
    ) -> Result<(), EngineError> {
        let sync = job.spec.name.as_str();
        let mut metrics = RunMetrics {
            read: batch.num_rows() as u64,
            ..Default::default()
        };
        let mapped = mapper.map(&batch)?;
        let mut rejected: Vec<RejectedRecord> = mapped
            .rejected
            .iter()
            .map(|r| rejection(sync, run.run_id, None, r.field.clone(), &r.reason, &batch, r.row))
            .collect();

        let keys = record_keys(&mapped.batch, mapper.key())?;
        let prints = fingerprints(&mapped.batch)?;
        let versions = cursor_versions(job, &batch, cursor_type, &mapped.source_rows);

        // When a key repeats within a batch, its last row wins.
        let mut last_row: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
        for (row, key) in keys.iter().enumerate() {
            last_row.insert(key.as_str(), row);
        }
        let unique: Vec<String> = last_row.keys().map(|k| (*k).to_owned()).collect();
        let ledger = self.state.ledger_lookup(sync, &unique).await?;

        let mut write_mask = vec![false; keys.len()];
        let mut added_rows = Vec::new();
        for (row, key) in keys.iter().enumerate() {
            if last_row.get(key.as_str()) != Some(&row) {
                // An earlier duplicate of a key: superseded by a later row of the same batch.
                metrics.unchanged += 1;
                continue;
            }
            match ledger.get(key) {
                Some(entry) if entry.fingerprint == prints[row] => metrics.unchanged += 1,
                Some(_) => write_mask[row] = true,
                None => {
                    write_mask[row] = true;
                    added_rows.push(row);
                }
            }
        }
        let written_rows: Vec<usize> = (0..keys.len()).filter(|r| write_mask[*r]).collect();
        let mut outcome = WriteOutcome::default();
        if !written_rows.is_empty() {
            let to_write = filter_record_batch(&mapped.batch, &BooleanArray::from(write_mask.clone()))?;
            outcome = writer.upsert(to_write).await?;
        }
        writer.flush().await?;

        // Rows the destination refused are rejected, not recorded in the ledger.
        let mut refused = vec![false; keys.len()];
        for r in &outcome.rejected {
            let Some(&row) = written_rows.get(r.row) else {
                return Err(EngineError::Internal(format!(
                    "the destination rejected row {} of a batch of {}",
                    r.row,
                    written_rows.len()
                )));
            };
            refused[row] = true;
            rejected.push(rejection(
                sync,
                run.run_id,
                Some(keys[row].clone()),
                r.field.clone(),
                &r.reason,
                &batch,
                mapped.source_rows[row],
            ));
        }
        let mut upserts = Vec::with_capacity(written_rows.len());
        for &row in &written_rows {
            if refused[row] {
                continue;
            }
            if added_rows.binary_search(&row).is_ok() {
                metrics.added += 1;
            } else {
                metrics.updated += 1;
            }
            upserts.push(LedgerEntry {
                key: keys[row].clone(),
                dest_key: None,
                fingerprint: prints[row],
                source_version: versions.as_ref().and_then(|v| v[row].clone()),
                synced_at: None,
            });
        }
        metrics.rejected = rejected.len() as u64;
        run.metrics.add(&metrics);
        run.batches += 1;
        let new_checkpoint = job.spec.mode.uses_cursor().then_some(checkpoint);
        self.state
            .commit_batch(&BatchCommit {
                sync,
                run: run.run_id,
                lease_token: Some(lease.token),
                ledger_upserts: &upserts,
                ledger_deletes: &[],
                checkpoint: new_checkpoint.as_ref(),
                metrics: &run.metrics,
                rejected: &rejected,
            })
            .await?;
        if let Some(c) = new_checkpoint {
            run.checkpoint = Some(c);
        }
        tracing::debug!(batch = run.batches, ?metrics, "batch committed");
        Ok(())
    }
}

/// Mutable state of a run in progress.
struct RunState {
    run_id: i64,
    metrics: RunMetrics,
    checkpoint: Option<Value>,
    batches: u64,
}

/// The cursor value of each mapped row as text, for the ledger's source version.
fn cursor_versions(
    job: &SyncJob,
    batch: &RecordBatch,
    cursor_type: Option<DataType>,
    source_rows: &[usize],
) -> Option<Vec<Option<String>>> {
    let cursor = job.spec.cursor_field.as_ref()?;
    let column = batch.column(batch.schema().index_of(cursor).ok()?);
    Some(
        source_rows
            .iter()
            .map(|&row| match json_value(column, row, cursor_type) {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
    )
}

fn rejection(
    sync: &str,
    run: i64,
    key: Option<String>,
    field: Option<String>,
    reason: &str,
    batch: &RecordBatch,
    row: usize,
) -> RejectedRecord {
    let schema = batch.schema();
    let raw: serde_json::Map<String, Value> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                f.name().clone(),
                json_value(batch.column(i), row, DataType::from_arrow_field(f)),
            )
        })
        .collect();
    RejectedRecord {
        id: 0,
        sync: sync.to_owned(),
        run,
        key,
        field,
        reason: reason.to_owned(),
        raw: Value::Object(raw),
        created_at: None,
        retried: None,
    }
}

/// Whether process `pid` exists on this machine. Where that cannot be told (no `/proc`), it
/// is assumed alive, so that only the lease's expiry frees it.
fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}
