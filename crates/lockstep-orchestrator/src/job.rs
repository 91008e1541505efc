//! What a run is given (a sync with its connections resolved, and how to run it) and what it
//! accumulates while it goes (metrics, checkpoint, batches).
//!
//! Invariants:
//! - Nothing here does I/O or knows the plugins or the state store: every module of a run
//!   may use these types without importing the modules that run it.

use std::sync::Arc;
use std::time::Duration;

use lockstep_core::{RunMetrics, SyncSpec};
use lockstep_state::LeaseHolder;
use serde_json::Value;
use tokio::sync::watch;

use crate::seen_keys::SeenKeys;

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
    /// The keys this run has met, when its ledger was empty as its read started: only those
    /// can have a ledger entry, so only those are looked up (`seen_keys`).
    pub(crate) seen_keys: Option<SeenKeys>,
}

impl RunState {
    /// A run that has done nothing yet, starting from `checkpoint`.
    pub(crate) fn new(run_id: i64, checkpoint: Option<Value>) -> Self {
        RunState {
            run_id,
            metrics: RunMetrics::default(),
            checkpoint,
            batches: 0,
            deletes_waiting: false,
            held: None,
            seen_keys: None,
        }
    }
}
