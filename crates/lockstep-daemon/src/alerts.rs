//! When to alert, and what an alert says.
//!
//! Alerts are decided once per scheduled execution of a sync, after its retries: on the first
//! failure after a success, on the N-th consecutive failed run (the alert that crosses
//! `consecutive_failures` says so), then, while the sync keeps failing, once more every
//! `repeat_interval` at most (a `still-failing` reminder, like Alertmanager's
//! `repeat_interval`; the first failed execution after a daemon restart reminds too), on
//! recovery (the first success after an alerted failure) and on low volume (a successful run that read or wrote below `low_volume_fraction` of the
//! median of the last `low_volume_window` successful runs, with at least three of them). A
//! cancelled run (graceful stop) and a run skipped because another daemon holds the sync are
//! not alerted. A `held` run (deletes past `max_delete_fraction` wait for approval) raises a
//! deletes-held alert, unless the run before it was held with the same message; held runs
//! neither break nor extend a streak of failures.
//!
//! The content is plain text without links; every string is redacted with the config's
//! secrets before it leaves the process.

use std::time::Duration;

use lockstep_config::{AlertsConfig, Secrets};
use lockstep_core::{RunMetrics, RunStatus, RunSummary};
use serde_json::{json, Value};

/// Fewer successful runs than this in the window: no low-volume verdict.
pub(crate) const LOW_VOLUME_MIN_HISTORY: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AlertKind {
    Failure,
    ConsecutiveFailures,
    /// A reminder: the sync is still failing, `repeat_interval` after the last alert.
    StillFailing,
    Recovery,
    LowVolume,
    DeletesHeld,
    /// A scheduled `lockstep verify` found the two systems disagreeing.
    Drift,
    /// A two-way run queued conflicts for a person (policy `manual`).
    ConflictsQueued,
    /// A cdc sync's replication slot retains more WAL than `max_retained_wal`.
    WalRetention,
}

impl AlertKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            AlertKind::Failure => "failure",
            AlertKind::ConsecutiveFailures => "consecutive-failures",
            AlertKind::StillFailing => "still-failing",
            AlertKind::Recovery => "recovery",
            AlertKind::LowVolume => "low-volume",
            AlertKind::DeletesHeld => "deletes-held",
            AlertKind::Drift => "drift",
            AlertKind::ConflictsQueued => "conflicts-queued",
            AlertKind::WalRetention => "wal-retention",
        }
    }
}

/// One alert, ready to send.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Alert {
    pub kind: AlertKind,
    pub sync: String,
    /// The run it is about; `None` when the state store could not record one.
    pub run: Option<i64>,
    pub status: RunStatus,
    pub metrics: RunMetrics,
    /// Why: the error, or the volume comparison, or how long the failures lasted.
    pub reason: String,
    pub error_kind: Option<String>,
    /// Runs of this execution (1 plus retries).
    pub attempts: u32,
    /// Failed runs in a row, this one included (0 for a success).
    pub consecutive_failures: u32,
    pub duration: Duration,
    /// How the worker process ended, when it crashed.
    pub exit_detail: Option<String>,
    pub host: String,
}

impl Alert {
    fn run_text(&self) -> String {
        match self.run {
            Some(run) => format!("run {run}"),
            None => "no run recorded".to_owned(),
        }
    }

    /// One line: what happened to which sync.
    pub(crate) fn headline(&self) -> String {
        let run = self.run_text();
        match self.kind {
            AlertKind::Failure => format!("sync {} failed ({run})", self.sync),
            AlertKind::ConsecutiveFailures => format!(
                "sync {} failed {} times in a row ({run})",
                self.sync, self.consecutive_failures
            ),
            AlertKind::StillFailing => format!(
                "sync {} still failing: {} failed runs in a row ({run})",
                self.sync, self.consecutive_failures
            ),
            AlertKind::Recovery => format!("sync {} recovered ({run})", self.sync),
            AlertKind::LowVolume => format!("sync {}: low volume ({run})", self.sync),
            AlertKind::DeletesHeld => {
                format!("sync {}: deletes held for approval ({run})", self.sync)
            }
            AlertKind::Drift => format!("sync {}: the systems differ (verify)", self.sync),
            AlertKind::ConflictsQueued => {
                format!("sync {}: conflicts wait for review ({run})", self.sync)
            }
            AlertKind::WalRetention => {
                format!(
                    "sync {}: its replication slot retains WAL ({run})",
                    self.sync
                )
            }
        }
    }

    /// The email subject.
    pub(crate) fn subject(&self) -> String {
        format!("[lockstep] {}", self.headline())
    }

    /// The full text: headline, reason, counts and details.
    pub(crate) fn text(&self) -> String {
        let m = &self.metrics;
        let mut text = format!(
            "{}.\n\nReason: {}\nSync: {}\nRun: {}\nStatus: {}\nCounts: read {}, added {}, updated {}, unchanged {}, deleted {}, conflicts {}, rejected {}\nDuration: {}\n",
            capitalize(&self.headline()),
            self.reason,
            self.sync,
            self.run.map(|r| r.to_string()).unwrap_or_else(|| "none".to_owned()),
            self.status.as_str(),
            m.read,
            m.added,
            m.updated,
            m.unchanged,
            m.deleted,
            m.conflicts,
            m.rejected,
            crate::schedule::human(Duration::from_millis(self.duration.as_millis() as u64)),
        );
        if let Some(kind) = &self.error_kind {
            text.push_str(&format!("Error kind: {kind}\n"));
        }
        if self.attempts > 1 {
            text.push_str(&format!("Attempts: {}\n", self.attempts));
        }
        if self.consecutive_failures > 0 {
            text.push_str(&format!(
                "Failed runs in a row: {}\n",
                self.consecutive_failures
            ));
        }
        text.push_str(&format!("Host: {}\n", self.host));
        if let Some(detail) = &self.exit_detail {
            text.push_str(&format!("\nWorker exit:\n{detail}\n"));
        }
        text
    }

    /// The webhook body: a Slack-compatible `text` and the same facts as fields.
    pub(crate) fn webhook_body(&self) -> Value {
        json!({
            "text": format!("[lockstep] {}\n{}", self.headline(), self.short_details()),
            "kind": self.kind.name(),
            "sync": self.sync,
            "run": self.run,
            "status": self.status,
            "metrics": self.metrics,
            "reason": self.reason,
            "error_kind": self.error_kind,
            "attempts": self.attempts,
            "consecutive_failures": self.consecutive_failures,
            "duration_ms": self.duration.as_millis() as u64,
            "exit_detail": self.exit_detail,
            "host": self.host,
        })
    }

    fn short_details(&self) -> String {
        let m = &self.metrics;
        format!(
            "Reason: {}\nCounts: read {}, added {}, updated {}, unchanged {}, deleted {}, rejected {}",
            self.reason, m.read, m.added, m.updated, m.unchanged, m.deleted, m.rejected
        )
    }

    /// The alert with every secret replaced by `***`.
    pub(crate) fn redacted(mut self, secrets: &Secrets) -> Alert {
        self.reason = secrets.redact(&self.reason);
        self.exit_detail = self.exit_detail.map(|d| secrets.redact(&d));
        self
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// The end of one scheduled execution (after retries), as the alert rules see it.
#[derive(Clone, Debug)]
pub(crate) struct Execution {
    pub status: RunStatus,
    pub metrics: RunMetrics,
    /// The runs of this execution (one per attempt that recorded a run).
    pub runs: Vec<i64>,
    pub attempts: u32,
}

impl AlertKind {
    /// Whether the alert is about the sync failing (and so restarts the reminder interval).
    pub(crate) fn is_failure(self) -> bool {
        matches!(
            self,
            AlertKind::Failure | AlertKind::ConsecutiveFailures | AlertKind::StillFailing
        )
    }
}

/// What to raise for `execution`, given the sync's earlier runs (newest first; runs of this
/// execution are ignored), whether a failure of the sync has been alerted and not yet
/// followed by a success, and how long ago the last failure alert of the current streak went
/// out (`None`: none this daemon knows of). Returns the alerts' kinds with their reasons, and
/// the number of failed runs in a row.
pub(crate) fn decide(
    config: &AlertsConfig,
    execution: &Execution,
    error_reason: Option<&str>,
    history: &[RunSummary],
    alerted_failure: bool,
    since_failure_alert: Option<Duration>,
) -> (Vec<(AlertKind, String)>, u32) {
    let earlier: Vec<&RunSummary> = history
        .iter()
        .filter(|r| !execution.runs.contains(&r.id))
        .filter(|r| {
            !matches!(
                r.status,
                RunStatus::Running | RunStatus::Cancelled | RunStatus::Held
            )
        })
        .collect();
    let failed_before = earlier
        .iter()
        .take_while(|r| r.status != RunStatus::Succeeded)
        .count() as u32;
    let mut alerts = Vec::new();
    match execution.status {
        RunStatus::Failed | RunStatus::Abandoned => {
            let in_a_row = failed_before + execution.attempts.max(1);
            let threshold = config.consecutive_failures.max(1);
            let reason = error_reason.unwrap_or("the run failed").to_owned();
            if threshold > 1 && failed_before < threshold && in_a_row >= threshold {
                alerts.push((AlertKind::ConsecutiveFailures, reason));
            } else if failed_before == 0 {
                alerts.push((AlertKind::Failure, reason));
            } else if since_failure_alert.is_none_or(|ago| ago >= config.repeat_interval) {
                alerts.push((AlertKind::StillFailing, reason));
            }
            (alerts, in_a_row)
        }
        RunStatus::Succeeded => {
            if alerted_failure && config.on_recovery {
                alerts.push((
                    AlertKind::Recovery,
                    format!(
                        "the run succeeded after {failed_before} failed run{}",
                        if failed_before == 1 { "" } else { "s" }
                    ),
                ));
            }
            if let Some(reason) = low_volume(config, &execution.metrics, &earlier) {
                alerts.push((AlertKind::LowVolume, reason));
            }
            (alerts, 0)
        }
        RunStatus::Held => {
            let reason = error_reason.unwrap_or("deletes are held").to_owned();
            let previous = history
                .iter()
                .filter(|r| !execution.runs.contains(&r.id))
                .find(|r| !matches!(r.status, RunStatus::Running | RunStatus::Cancelled));
            let repeated = previous.is_some_and(|r| {
                r.status == RunStatus::Held
                    && r.error.as_deref().is_some_and(|e| reason.ends_with(e))
            });
            if !repeated {
                alerts.push((AlertKind::DeletesHeld, reason));
            }
            (alerts, failed_before)
        }
        RunStatus::Cancelled | RunStatus::Running => (alerts, failed_before),
    }
}

/// The low-volume verdict of a successful run with `metrics`, against the earlier runs.
fn low_volume(
    config: &AlertsConfig,
    metrics: &RunMetrics,
    earlier: &[&RunSummary],
) -> Option<String> {
    let fraction = config.low_volume_fraction;
    if fraction <= 0.0 {
        return None;
    }
    let window: Vec<&RunMetrics> = earlier
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .take(config.low_volume_window.max(1) as usize)
        .map(|r| &r.metrics)
        .collect();
    if window.len() < LOW_VOLUME_MIN_HISTORY {
        return None;
    }
    let checks = [
        ("read", metrics.read, median(window.iter().map(|m| m.read))),
        (
            "wrote",
            metrics.written(),
            median(window.iter().map(|m| m.written())),
        ),
    ];
    let low: Vec<String> = checks
        .iter()
        .filter(|(_, value, median)| *median > 0.0 && (*value as f64) < fraction * median)
        .map(|(verb, value, median)| {
            format!(
                "{verb} {value} records, below {}% of the median of the last {} successful runs ({})",
                trim_float(fraction * 100.0),
                window.len(),
                trim_float(*median)
            )
        })
        .collect();
    (!low.is_empty()).then(|| low.join("; "))
}

fn median(values: impl Iterator<Item = u64>) -> f64 {
    let mut v: Vec<u64> = values.collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid] as f64
    } else {
        (v[mid - 1] as f64 + v[mid] as f64) / 2.0
    }
}

fn trim_float(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, status: RunStatus, read: u64, added: u64) -> RunSummary {
        RunSummary {
            id,
            sync: "contacts".into(),
            status,
            started_at: String::new(),
            finished_at: None,
            duration_ms: None,
            metrics: RunMetrics {
                read,
                added,
                ..Default::default()
            },
            error_kind: None,
            error: None,
            cursor_before: None,
            cursor_after: None,
            kind: lockstep_core::RUN_KIND_SYNC.into(),
        }
    }

    fn execution(status: RunStatus, runs: &[i64], read: u64) -> Execution {
        Execution {
            status,
            metrics: RunMetrics {
                read,
                ..Default::default()
            },
            runs: runs.to_vec(),
            attempts: runs.len() as u32,
        }
    }

    #[test]
    fn a_held_run_alerts_once_per_new_hold_and_leaves_failure_streaks_alone() {
        let config = AlertsConfig::default();
        let message = "sync `contacts`: 500 deletes are held";
        let reason = format!("mass-delete: {message}");
        let failed = run(1, RunStatus::Failed, 0, 0);
        let (alerts, n) = decide(
            &config,
            &execution(RunStatus::Held, &[2], 1000),
            Some(&reason),
            &[run(2, RunStatus::Held, 1000, 0), failed.clone()],
            true,
            None,
        );
        assert_eq!(alerts, vec![(AlertKind::DeletesHeld, reason.clone())]);
        assert_eq!(n, 1, "a held run neither breaks nor extends the streak");
        let held_before = RunSummary {
            error: Some(message.to_owned()),
            ..run(2, RunStatus::Held, 1000, 0)
        };
        // The same hold again says nothing new; a different one does.
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Held, &[3], 0),
            Some(&reason),
            &[held_before.clone(), failed.clone()],
            false,
            None,
        );
        assert!(alerts.is_empty(), "{alerts:?}");
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Held, &[3], 0),
            Some("mass-delete: sync `contacts`: 600 deletes are held"),
            &[held_before, failed],
            false,
            None,
        );
        assert_eq!(alerts[0].0, AlertKind::DeletesHeld);
        let alert = Alert {
            kind: AlertKind::DeletesHeld,
            sync: "contacts".into(),
            run: Some(3),
            status: RunStatus::Held,
            metrics: RunMetrics::default(),
            reason: reason.clone(),
            error_kind: Some("mass-delete".into()),
            attempts: 1,
            consecutive_failures: 0,
            duration: Duration::from_secs(1),
            exit_detail: None,
            host: "h".into(),
        };
        assert_eq!(
            alert.headline(),
            "sync contacts: deletes held for approval (run 3)"
        );
        assert_eq!(alert.webhook_body()["status"], "held");
    }

    #[test]
    fn failures_alert_and_the_nth_in_a_row_says_so() {
        let config = AlertsConfig {
            consecutive_failures: 3,
            ..Default::default()
        };
        let ok = run(1, RunStatus::Succeeded, 10, 0);
        let f2 = run(2, RunStatus::Failed, 0, 0);
        let f3 = run(3, RunStatus::Failed, 0, 0);
        // The first failure after a success.
        let (alerts, n) = decide(
            &config,
            &execution(RunStatus::Failed, &[2], 0),
            Some("boom"),
            &[f2.clone(), ok.clone()],
            false,
            None,
        );
        assert_eq!(alerts, vec![(AlertKind::Failure, "boom".to_owned())]);
        assert_eq!(n, 1);
        // The third in a row, cancelled runs in between do not break the streak.
        let cancelled = run(4, RunStatus::Cancelled, 0, 0);
        let history = [
            run(5, RunStatus::Failed, 0, 0),
            cancelled,
            f3.clone(),
            f2.clone(),
            ok.clone(),
        ];
        let (alerts, n) = decide(
            &config,
            &execution(RunStatus::Failed, &[5], 0),
            Some("boom"),
            &history,
            true,
            Some(Duration::from_secs(1)),
        );
        assert_eq!(alerts[0].0, AlertKind::ConsecutiveFailures);
        assert_eq!(n, 3);
        // The fourth is not alerted: the last alert is more recent than the repeat interval.
        let history = [
            run(6, RunStatus::Failed, 0, 0),
            run(5, RunStatus::Failed, 0, 0),
            f3,
            f2,
            ok,
        ];
        let fourth = |since: Option<Duration>| {
            decide(
                &config,
                &execution(RunStatus::Failed, &[6], 0),
                None,
                &history,
                true,
                since,
            )
        };
        let (alerts, n) = fourth(Some(config.repeat_interval - Duration::from_secs(1)));
        assert!(alerts.is_empty(), "{alerts:?}");
        assert_eq!(n, 4);
        // Once the interval has passed, a reminder; also when no alert is known (a restart).
        for since in [Some(config.repeat_interval), None] {
            let (alerts, _) = fourth(since);
            assert_eq!(
                alerts,
                vec![(AlertKind::StillFailing, "the run failed".to_owned())]
            );
        }
    }

    #[test]
    fn the_first_failure_alerts_whatever_the_interval() {
        let config = AlertsConfig {
            consecutive_failures: 1,
            repeat_interval: Duration::from_secs(3600),
            ..Default::default()
        };
        let history = [
            run(3, RunStatus::Failed, 0, 0),
            run(2, RunStatus::Succeeded, 0, 0),
            run(1, RunStatus::Failed, 0, 0),
        ];
        let (alerts, n) = decide(
            &config,
            &execution(RunStatus::Failed, &[3], 0),
            Some("boom"),
            &history,
            false,
            Some(Duration::from_secs(5)),
        );
        assert_eq!(alerts, vec![(AlertKind::Failure, "boom".to_owned())]);
        assert_eq!(n, 1);
    }

    #[test]
    fn retries_count_as_runs_in_a_row() {
        let config = AlertsConfig::default();
        let history = [
            run(3, RunStatus::Failed, 0, 0),
            run(2, RunStatus::Failed, 0, 0),
            run(1, RunStatus::Failed, 0, 0),
        ];
        let (alerts, n) = decide(
            &config,
            &execution(RunStatus::Failed, &[1, 2, 3], 0),
            None,
            &history,
            false,
            None,
        );
        assert_eq!(alerts[0].0, AlertKind::ConsecutiveFailures);
        assert_eq!(n, 3);
    }

    #[test]
    fn recovery_only_after_an_alerted_failure() {
        let config = AlertsConfig::default();
        let history = [
            run(3, RunStatus::Succeeded, 5, 0),
            run(2, RunStatus::Failed, 0, 0),
        ];
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Succeeded, &[3], 5),
            None,
            &history,
            true,
            None,
        );
        assert_eq!(
            alerts,
            vec![(
                AlertKind::Recovery,
                "the run succeeded after 1 failed run".to_owned()
            )]
        );
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Succeeded, &[3], 5),
            None,
            &history,
            false,
            None,
        );
        assert!(alerts.is_empty());
    }

    #[test]
    fn low_volume_against_the_median_of_successful_runs() {
        let config = AlertsConfig {
            low_volume_fraction: 0.5,
            low_volume_window: 4,
            ..Default::default()
        };
        let history: Vec<RunSummary> = vec![
            run(10, RunStatus::Succeeded, 0, 0),
            run(9, RunStatus::Succeeded, 100, 0),
            run(8, RunStatus::Failed, 0, 0),
            run(7, RunStatus::Succeeded, 90, 0),
            run(6, RunStatus::Succeeded, 110, 0),
            run(5, RunStatus::Succeeded, 1, 0),
        ];
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Succeeded, &[10], 0),
            None,
            &history,
            false,
            None,
        );
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].0, AlertKind::LowVolume);
        // Window: 100, 90, 110, 1: median 95.
        assert_eq!(
            alerts[0].1,
            "read 0 records, below 50% of the median of the last 4 successful runs (95)"
        );
        // Enough volume: nothing.
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Succeeded, &[10], 60),
            None,
            &history,
            false,
            None,
        );
        assert!(alerts.is_empty());
        // Too little history: nothing.
        let (alerts, _) = decide(
            &config,
            &execution(RunStatus::Succeeded, &[10], 0),
            None,
            &history[..3],
            false,
            None,
        );
        assert!(alerts.is_empty());
    }

    #[test]
    fn content_names_sync_run_counts_and_reason() {
        let alert = Alert {
            kind: AlertKind::Failure,
            sync: "contacts".into(),
            run: Some(42),
            status: RunStatus::Failed,
            metrics: RunMetrics {
                read: 7,
                added: 2,
                ..Default::default()
            },
            reason: "password hunter2 refused".into(),
            error_kind: Some("auth".into()),
            attempts: 1,
            consecutive_failures: 1,
            duration: Duration::from_millis(1500),
            exit_detail: None,
            host: "h".into(),
        }
        .redacted(&Secrets::new(["hunter2"]));
        assert_eq!(alert.subject(), "[lockstep] sync contacts failed (run 42)");
        let text = alert.text();
        assert!(
            text.starts_with("Sync contacts failed (run 42).\n"),
            "{text}"
        );
        assert!(text.contains("Reason: password *** refused"), "{text}");
        assert!(
            text.contains("Counts: read 7, added 2, updated 0"),
            "{text}"
        );
        let body = alert.webhook_body();
        assert_eq!(body["sync"], "contacts");
        assert_eq!(body["run"], 42);
        assert_eq!(body["metrics"]["read"], 7);
        assert!(body["text"]
            .as_str()
            .unwrap()
            .contains("sync contacts failed (run 42)"));
        assert!(!body.to_string().contains("hunter2"));
    }
}
