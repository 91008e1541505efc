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
}

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
}
