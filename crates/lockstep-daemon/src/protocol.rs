//! What a `lockstep worker` process and the daemon say to each other.
//!
//! The daemon writes one JSON line to the worker's stdin, [`WorkerInput`], with the text of the
//! config it has validated (so that a worker runs what the daemon scheduled, even when the file
//! on disk was edited since), and keeps stdin open: end of file tells the worker its daemon is
//! gone, and it stops after the batch in hand. The worker writes [`WorkerEvent`]s to stdout, one
//! JSON line each: `started` as soon as the run is recorded, then `finished` with the report.
//! Logs go to stderr as JSON lines.

use lockstep_core::{RunMetrics, RunStatus};
use serde::{Deserialize, Serialize};

/// The first line on a supervised worker's stdin.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerInput {
    /// The config file's text, as the daemon loaded and validated it (before interpolation).
    pub config: String,
}

/// One line on a worker's stdout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum WorkerEvent {
    /// The run is recorded in the state store with this id.
    Started { run: i64 },
    /// The run ended (or could not start); the worker exits next.
    Finished(WorkerReport),
}

impl WorkerEvent {
    /// The event as one JSON line, without the newline.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                r#"{{"event":"invalid","error":{}}}"#,
                serde_json::Value::String(e.to_string())
            )
        })
    }

    /// Parses a stdout line; `None` for anything that is not an event (a plugin printing to
    /// stdout, say).
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        if !line.starts_with('{') {
            return None;
        }
        serde_json::from_str(line).ok()
    }
}

/// How a run ended, as the worker reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkerReport {
    /// The run's id; `None` when the run could not start (no lease, no state store, no plugin).
    pub run: Option<i64>,
    pub sync: String,
    pub status: RunStatus,
    pub metrics: RunMetrics,
    pub duration_ms: u64,
    pub error: Option<WorkerError>,
}

/// Why a run failed or could not start.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkerError {
    /// The error kind: config, auth, transient, rate-limited, schema, panic, internal, state,
    /// lease-held, ...
    pub kind: String,
    /// The message, with secrets redacted.
    pub message: String,
    /// Whether running again later may succeed (transient and rate-limited errors).
    pub retryable: bool,
    /// How long the remote system asked to wait before a retry.
    pub retry_after_ms: Option<u64>,
}

/// The error kind of a run that could not start because another process holds the sync's
/// lease: not a failure, the sync is simply running elsewhere.
pub const LEASE_HELD: &str = "lease-held";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_as_tagged_json_lines() {
        let started = WorkerEvent::Started { run: 42 };
        assert_eq!(started.to_line(), r#"{"event":"started","run":42}"#);
        assert_eq!(WorkerEvent::parse(&started.to_line()), Some(started));

        let finished = WorkerEvent::Finished(WorkerReport {
            run: Some(42),
            sync: "contacts".into(),
            status: RunStatus::Failed,
            metrics: RunMetrics {
                read: 3,
                ..Default::default()
            },
            duration_ms: 1200,
            error: Some(WorkerError {
                kind: "transient".into(),
                message: "timed out".into(),
                retryable: true,
                retry_after_ms: Some(500),
            }),
        });
        let line = finished.to_line();
        assert!(
            line.starts_with(r#"{"event":"finished","run":42,"#),
            "{line}"
        );
        assert_eq!(WorkerEvent::parse(&line), Some(finished));
        assert_eq!(WorkerEvent::parse("hello from a plugin"), None);
        assert_eq!(WorkerEvent::parse(r#"{"event":"unknown"}"#), None);
    }
}
