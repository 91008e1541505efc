//! One run of one sync: read, map, diff against the ledger, write, commit.
//!
//! The commit protocol (semantics.md, "Durability and idempotence"): for each batch the
//! destination writes and flushes first; only then does one state transaction record the
//! ledger changes, rejected records, progress and the new source checkpoint, under the
//! lease's fencing token. A crash anywhere re-reads from the last committed checkpoint and
//! re-applies idempotent upserts: nothing is lost and nothing is duplicated.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_core::{RunMetrics, RunStatus, SyncSpec};
use lockstep_plugin_host::{PluginRegistry, Redactor};
use lockstep_state::{Lease, LeaseHolder, RunEnd, StateError, StateStore};
use serde_json::Value;
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::EngineError;
use crate::lease::HeldLease;

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

/// Called once with the run's id as soon as the run is recorded, before any plugin is called
/// (a supervisor learns which run to close if the process dies).
pub type StartFn = Arc<dyn Fn(i64) + Send + Sync>;

/// How to run.
#[derive(Clone)]
pub struct RunOptions {
    /// Forget the checkpoint and ledger first: read everything and rewrite what differs.
    pub full_refresh: bool,
    /// When it turns true, the run stops after committing the batch in hand.
    pub stop: watch::Receiver<bool>,
    pub progress: Option<ProgressFn>,
    /// Called when the run has been recorded, with its id.
    pub on_start: Option<StartFn>,
    /// How long a lease lives without renewal (`state.lease_ttl`); a task of the run renews it
    /// every third of it, from acquisition to release.
    pub lease_ttl: Duration,
    pub holder: LeaseHolder,
    /// Apply deletes even past the sync's `max_delete_fraction` (held ones included).
    pub allow_mass_delete: bool,
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
            on_start: None,
            lease_ttl: Duration::from_secs(30),
            holder: LeaseHolder {
                host: hostname(),
                pid: std::process::id(),
            },
            allow_mass_delete: false,
        }
    }
}

impl Default for RunOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// This machine's host name, for lease holders (one function, in lockstep-state).
pub use lockstep_state::hostname;

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
        let cursor_before = if job.spec.mode.uses_cursor() {
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
        let mut run = RunState {
            run_id,
            metrics: RunMetrics::default(),
            checkpoint: cursor_before.clone(),
            batches: 0,
            deletes_waiting: false,
            held: None,
        };
        let outcome = crate::pipeline::execute(self, job, options, Some(lease), &mut run, None)
            .instrument(span.clone())
            .await;
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
            error_kind: error.as_ref().map(|e| e.kind_name().to_owned()),
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
                kind = e.kind_name(),
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

/// Mutable state of a run in progress.
pub(crate) struct RunState {
    pub(crate) run_id: i64,
    pub(crate) metrics: RunMetrics,
    pub(crate) checkpoint: Option<Value>,
    pub(crate) batches: u64,
    /// Whether the sync may have deletes waiting in the state store (checked at the start of
    /// a mirror run, set when the run records one): records seen again then cancel theirs.
    pub(crate) deletes_waiting: bool,
    /// Set when the mass-delete guard held deletes: what the run reports.
    pub(crate) held: Option<String>,
}

/// Whether process `pid` exists on this machine. Where that cannot be told (no `/proc`), it
/// is assumed alive, so that only the lease's expiry frees it.
fn process_alive(pid: u32) -> bool {
    let proc = std::path::Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}
