//! What every part of the daemon shares: the config of the moment, the state store, the
//! metrics, what the daemon knows of each sync between runs, and the shutdown signal.
//!
//! Invariants:
//! - This module uses no other module of the daemon but the metrics it holds: `daemon`,
//!   `http` and `scheduler` all use it, so it must never use them back.
//! - The runtime map's lock is held only to read or change an entry, never across an await.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lockstep_config::Config;
use lockstep_state::{RejectedFilter, StateStore};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;

/// Rejected records counted per sync for the gauge.
pub(crate) const REJECTED_COUNT_CAP: usize = 10_000;

/// What every part of the daemon shares.
pub(crate) struct Shared {
    pub config: watch::Sender<Arc<Config>>,
    pub state: Arc<dyn StateStore>,
    pub metrics: Metrics,
    pub runtime: Mutex<BTreeMap<String, SyncRuntime>>,
    pub worker_exe: PathBuf,
    pub kill_grace: Duration,
    pub shutdown: watch::Receiver<bool>,
    pub http: reqwest::Client,
    pub alert_tasks: Mutex<JoinSet<()>>,
    pub started_at: DateTime<Utc>,
}

/// What the daemon knows of a sync between runs.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct SyncRuntime {
    /// When the next run is due (jitter included); `None` while running or unscheduled.
    pub next_run: Option<DateTime<Utc>>,
    pub running: Option<Running>,
    /// Failed runs in a row, as of the last execution.
    pub consecutive_failures: u32,
    /// A failure was alerted and no success followed yet (for the recovery alert).
    #[serde(skip)]
    pub alerted_failure: bool,
    /// When the last failure alert of the current run of failures went out (for
    /// `[alerts] repeat_interval`); `None` after a success and at start-up.
    #[serde(skip)]
    pub last_failure_alert: Option<std::time::Instant>,
}

/// A worker at work.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Running {
    pub run: Option<i64>,
    pub pid: Option<u32>,
    pub since: DateTime<Utc>,
    pub attempt: u32,
}

impl Shared {
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    pub(crate) fn update_runtime(&self, sync: &str, f: impl FnOnce(&mut SyncRuntime)) {
        let mut runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        f(runtime.entry(sync.to_owned()).or_default());
    }

    pub(crate) fn runtime_of(&self, sync: &str) -> SyncRuntime {
        let runtime = self.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime.get(sync).cloned().unwrap_or_default()
    }

    pub(crate) fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Refreshes the rejected-records gauge of `sync` from the state store.
    pub(crate) async fn refresh_rejected(&self, sync: &str) {
        let filter = RejectedFilter {
            sync: Some(sync.to_owned()),
            pending_only: true,
            limit: Some(REJECTED_COUNT_CAP),
            ..Default::default()
        };
        match self.state.rejected(&filter).await {
            Ok(records) => self
                .metrics
                .set_rejected_pending(sync, records.len() as u64),
            Err(e) => tracing::warn!(sync, "cannot count rejected records: {e}"),
        }
        self.refresh_conflicts().await;
    }

    /// Refreshes the open-conflicts gauge of every sync from the state store.
    pub(crate) async fn refresh_conflicts(&self) {
        match self.state.open_conflict_counts().await {
            Ok(counts) => {
                for sync in self.config().syncs.iter().map(|s| &s.spec.name) {
                    let count = counts.get(sync).copied().unwrap_or(0);
                    self.metrics.set_open_conflicts(sync, count);
                }
            }
            Err(e) => tracing::warn!("cannot count open conflicts: {e}"),
        }
    }
}

/// The syncs the daemon runs: enabled, with a schedule.
pub(crate) fn scheduled(config: &Config) -> Vec<&lockstep_config::Sync> {
    config
        .syncs
        .iter()
        .filter(|s| s.enabled && s.schedule.is_some())
        .collect()
}
