//! Runs: one execution of a sync.

use serde::{Deserialize, Serialize};

use crate::metrics::RunMetrics;

/// Where a run is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
    /// Stopped on request (SIGTERM, timeout) after committing the batch in hand.
    Cancelled,
    /// The process running it died without recording an end (found later as stale).
    Abandoned,
    /// The run's upserts committed, but its deletes were past `max_delete_fraction` and are
    /// held in the state store until a person approves them (`lockstep deletes approve`).
    Held,
}

impl RunStatus {
    /// The stable text stored in the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Abandoned => "abandoned",
            RunStatus::Held => "held",
        }
    }

    /// The status stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "abandoned" => RunStatus::Abandoned,
            "held" => RunStatus::Held,
            _ => return None,
        })
    }
}

/// Why a run failed (or could not start), as the state store records it in `error_kind`.
///
/// The stored text ([`RunErrorKind::as_str`], also the serde form) is stable: run history,
/// `lockstep runs --json`, alerts and the daemon's API show it, and older rows keep it.
/// The first nine are the plugin ABI's error kinds by their names; the rest are the engine's
/// and the daemon's own.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum RunErrorKind {
    /// The configuration is wrong; retrying cannot help.
    Config,
    /// Credentials were refused.
    Auth,
    /// A passing failure (network, timeout, a state store that could not be reached).
    Transient,
    /// The remote system asked to slow down.
    RateLimited,
    /// The data does not fit the schema or the mapping.
    Schema,
    /// A plugin panicked.
    Panic,
    /// A bug or an unexpected state.
    Internal,
    /// A plugin call was cancelled.
    Cancelled,
    /// A plugin does not support what was asked.
    Unsupported,
    /// A plugin error kind this version does not know.
    Unknown,
    /// The state store failed.
    State,
    /// Another process holds the sync's lease: the run did not start.
    LeaseHeld,
    /// The run lost its lease and stopped before its next destination write.
    LeaseLost,
    /// More records were rejected than `max_rejected` allows.
    TooManyRejected,
    /// Deletes past `max_delete_fraction` are held (the run's status is `held`).
    MassDelete,
    /// The run exceeded its schedule's timeout (recorded by the daemon).
    Timeout,
    /// The worker did not stop within the grace period after SIGTERM and was killed.
    Killed,
    /// The worker process died without a report (a signal, an abort, an early exit).
    Crash,
}

impl RunErrorKind {
    /// Every kind, in declaration order.
    pub const ALL: [RunErrorKind; 18] = [
        RunErrorKind::Config,
        RunErrorKind::Auth,
        RunErrorKind::Transient,
        RunErrorKind::RateLimited,
        RunErrorKind::Schema,
        RunErrorKind::Panic,
        RunErrorKind::Internal,
        RunErrorKind::Cancelled,
        RunErrorKind::Unsupported,
        RunErrorKind::Unknown,
        RunErrorKind::State,
        RunErrorKind::LeaseHeld,
        RunErrorKind::LeaseLost,
        RunErrorKind::TooManyRejected,
        RunErrorKind::MassDelete,
        RunErrorKind::Timeout,
        RunErrorKind::Killed,
        RunErrorKind::Crash,
    ];

    /// The stable text stored in the state store.
    pub fn as_str(self) -> &'static str {
        match self {
            RunErrorKind::Config => "config",
            RunErrorKind::Auth => "auth",
            RunErrorKind::Transient => "transient",
            RunErrorKind::RateLimited => "rate-limited",
            RunErrorKind::Schema => "schema",
            RunErrorKind::Panic => "panic",
            RunErrorKind::Internal => "internal",
            RunErrorKind::Cancelled => "cancelled",
            RunErrorKind::Unsupported => "unsupported",
            RunErrorKind::Unknown => "unknown",
            RunErrorKind::State => "state",
            RunErrorKind::LeaseHeld => "lease-held",
            RunErrorKind::LeaseLost => "lease-lost",
            RunErrorKind::TooManyRejected => "too-many-rejected",
            RunErrorKind::MassDelete => "mass-delete",
            RunErrorKind::Timeout => "timeout",
            RunErrorKind::Killed => "killed",
            RunErrorKind::Crash => "crash",
        }
    }

    /// The kind stored as `text`, if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether running again later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, RunErrorKind::Transient | RunErrorKind::RateLimited)
    }
}

impl std::fmt::Display for RunErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A run as recorded in the state store.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub id: i64,
    pub sync: String,
    pub status: RunStatus,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time, when the run has ended.
    pub finished_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub metrics: RunMetrics,
    /// The error kind (`transient`, `config`, ...) when the run failed.
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The source checkpoint when the run started and when it ended.
    pub cursor_before: Option<serde_json::Value>,
    pub cursor_after: Option<serde_json::Value>,
    /// What kind of run this is: `sync` (a sync's run, or a retry of rejected records) or
    /// `verify-repair` (the repair of a `lockstep verify`).
    #[serde(default = "sync_kind")]
    pub kind: String,
}

/// The kind of a run that says nothing else.
fn sync_kind() -> String {
    RUN_KIND_SYNC.to_owned()
}

/// The kind of a sync's run (and of a retry of its rejected records).
pub const RUN_KIND_SYNC: &str = "sync";
/// The kind of the run a `lockstep verify --repair` records.
pub const RUN_KIND_VERIFY_REPAIR: &str = "verify-repair";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip() {
        for s in [
            RunStatus::Running,
            RunStatus::Succeeded,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::Abandoned,
            RunStatus::Held,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(RunStatus::parse("done"), None);
    }

    #[test]
    fn error_kinds_round_trip_as_their_stored_text() {
        for kind in RunErrorKind::ALL {
            assert_eq!(RunErrorKind::parse(kind.as_str()), Some(kind));
            // The serde form is the stored text, so JSON output and stored rows agree.
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().to_owned())
            );
        }
        assert_eq!(RunErrorKind::RateLimited.as_str(), "rate-limited");
        assert_eq!(RunErrorKind::TooManyRejected.as_str(), "too-many-rejected");
        assert_eq!(RunErrorKind::parse("broken"), None);
    }
}
