//! The engine, the public entry point of a run: it takes the sync's lease, records the run,
//! hands the run's services to the pipeline, and records how the run ended.
//!
//! The commit protocol (semantics.md, "Durability and idempotence"): for each batch the
//! destination writes and flushes first; only then does one state transaction record the
//! ledger changes, rejected records, progress and the new source checkpoint, under the
//! lease's fencing token. A crash anywhere re-reads from the last committed checkpoint and
//! re-applies idempotent upserts: nothing is lost and nothing is duplicated.

use std::time::{Duration, Instant};

use lockstep_core::{RunMetrics, RunStatus, SyncMode};
use lockstep_plugin_host::{PluginRegistry, Redactor};
use lockstep_state::{Lease, RunEnd, StateError, StateStore};
use serde_json::Value;
use tracing::Instrument;

use crate::error::EngineError;
use crate::job::{RunOptions, RunState, SyncJob};
use crate::lease::HeldLease;
use crate::services::Services;

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
    /// The services a run takes from the engine.
    pub(crate) fn services(&self) -> Services<'_> {
        Services {
            registry: self.registry,
            state: self.state,
            redactor: &self.redactor,
        }
    }

    /// Runs `job` once. Errors before the run exists (the lease is held elsewhere, the state
    /// store is down) are returned as `Err`; anything after is recorded on the run and
    /// returned in the report with status `failed`.
    pub async fn run(&self, job: &SyncJob, options: RunOptions) -> Result<RunReport, EngineError> {
        let sync = job.spec.name.as_str();
        let lease = self.acquire_lease_for(sync, &options).await?;
        let result = self.run_leased(job, &options, &lease).await;
        if let Err(e) = lease.release().await {
            tracing::warn!(sync, "could not release the lease: {e}");
        }
        result
    }

    /// Takes the sync's lease and starts renewing it; the caller releases it with
    /// [`HeldLease::release`] when the run is over.
    pub(crate) async fn acquire_lease_for(
        &self,
        sync: &str,
        options: &RunOptions,
    ) -> Result<HeldLease, EngineError> {
        let requested = tokio::time::Instant::now();
        let lease = self.acquire_lease(sync, options).await?;
        Ok(HeldLease::start(
            self.state,
            lease,
            options.lease_ttl,
            requested,
        ))
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
        lease: &HeldLease,
    ) -> Result<RunReport, EngineError> {
        let sync = job.spec.name.as_str();
        let abandoned = self.state.mark_abandoned(sync).await?;
        if abandoned > 0 {
            tracing::warn!(
                sync,
                abandoned,
                "earlier runs ended without a record; marked abandoned"
            );
        }
        if options.full_refresh {
            self.state.reset_sync(sync).await?;
        }
        let two_way = job.spec.mode == SyncMode::TwoWay;
        // A two-way sync's checkpoint holds both sides' positions.
        let cursor_before = if job.spec.reads_by_cursor() || two_way {
            self.state.checkpoint(sync).await?
        } else {
            None
        };
        let run_id = self.state.start_run(sync, cursor_before.as_ref()).await?;
        if let Some(on_start) = &options.on_start {
            on_start(run_id);
        }
        let started = Instant::now();
        let span = tracing::info_span!("run", sync, run = run_id);
        let mut run = RunState::new(run_id, cursor_before.clone());
        let outcome = if two_way {
            crate::two_way::run(self.services(), job, options, lease, &mut run)
                .instrument(span.clone())
                .await
        } else {
            crate::pipeline::run_sync(self.services(), job, options, lease, &mut run)
                .instrument(span.clone())
                .await
        };
        let (status, error) = match outcome {
            Ok(true) => match run.held.take() {
                Some(message) => (RunStatus::Held, Some(EngineError::MassDelete(message))),
                None => (RunStatus::Succeeded, None),
            },
            Ok(false) => (RunStatus::Cancelled, None),
            Err(e) => (RunStatus::Failed, Some(e)),
        };
        let end = RunEnd {
            status,
            metrics: run.metrics,
            error_kind: error.as_ref().map(EngineError::kind),
            error: error.as_ref().map(|e| (self.redactor)(&e.to_string())),
            cursor_after: run.checkpoint.clone(),
            exit_detail: None,
        };
        self.state.finish_run(run_id, &end).await?;
        let _entered = span.enter();
        // The error itself is the caller's to report (the CLI's summary, the worker's report,
        // the daemon's log): logging it here too would say it twice.
        match &error {
            None => tracing::info!(status = status.as_str(), metrics = ?run.metrics, "run ended"),
            Some(e) => tracing::info!(
                status = status.as_str(),
                kind = e.kind().as_str(),
                metrics = ?run.metrics,
                "run ended"
            ),
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
}

/// Whether process `pid` exists on this machine. Where that cannot be told (no `/proc`), it
/// is assumed alive, so that only the lease's expiry frees it.
fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}
