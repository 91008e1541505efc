//! Scheduled verification: one task per sync with a `verify_schedule`, which at each tick
//! runs `lockstep verify SYNC --output json` in a child process, sets the
//! `lockstep_verify_differences` gauge from its report, and raises a `drift` alert through
//! the alert channels when the systems differ.
//!
//! Invariants:
//! - The daemon loads no plugin: verify runs in a child process, like a run's worker, and is
//!   killed with the daemon (`kill_on_drop`, its own process group).
//! - A verify that fails (exit code 2) is logged and leaves the gauge as it was: a failure to
//!   look is not a verdict on the data.
//! - What the child prints is redacted with the config's secrets before it is logged.
//! - The child verifies with the config the daemon holds (sent on stdin, as a run's worker
//!   gets it), not with the file as it is now: an edit takes effect at the next reload.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lockstep_config::{CatchUp, Config, Schedule, Trigger};
use lockstep_core::{RunMetrics, RunStatus};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::alerts::{Alert, AlertKind};
use crate::protocol::WorkerInput;
use crate::schedule::Plan;
use crate::shared::Shared;

/// The counts of differences a verify report carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Drift {
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    pub duplicates: u64,
}

impl Drift {
    /// The counts of a `lockstep verify --output json` report; `None` when it is not one.
    pub(crate) fn from_report(report: &Value) -> Option<Drift> {
        let count = |name: &str| report.get(name)?.as_u64();
        Some(Drift {
            missing: count("missing")?,
            extra: count("extra")?,
            different: count("different")?,
            duplicates: count("duplicates").unwrap_or(0),
        })
    }

    pub(crate) fn total(&self) -> u64 {
        self.missing + self.extra + self.different + self.duplicates
    }

    /// What the alert says.
    pub(crate) fn reason(&self, sync: &str) -> String {
        format!(
            "verify found {} differences: {} records missing in the destination, {} extra, {} \
             different, {} keys held twice; see them with `lockstep verify {sync}` and repair \
             with `lockstep verify {sync} --repair`",
            self.total(),
            self.missing,
            self.extra,
            self.different,
            self.duplicates
        )
    }
}

/// The plan of a sync's verify schedule: its cron in the time zone of the sync's schedule.
pub(crate) fn verify_plan(config: &Config, name: &str) -> Option<Result<Plan, String>> {
    let sync = config.sync(name).filter(|s| s.enabled)?;
    let cron = sync.verify_schedule.clone()?;
    let schedule = Schedule {
        trigger: Trigger::Cron(cron),
        timezone: sync
            .schedule
            .as_ref()
            .map(|s| s.timezone.clone())
            .unwrap_or_else(|| "UTC".to_owned()),
        jitter: Duration::ZERO,
        catch_up: CatchUp::Skip,
        timeout: None,
        location: sync.location,
    };
    Some(Plan::new(&schedule))
}

/// Verifies `name` on its verify schedule until the daemon stops or the schedule goes.
pub(crate) async fn verify_loop(shared: Arc<Shared>, name: String) {
    let mut config_rx = shared.config.subscribe();
    let mut shutdown = shared.shutdown.clone();
    loop {
        if shared.stopping() {
            break;
        }
        let config = config_rx.borrow_and_update().clone();
        let plan = match verify_plan(&config, &name) {
            None => {
                tracing::info!(sync = %name, "the sync is no longer verified on a schedule");
                break;
            }
            Some(Err(e)) => {
                tracing::error!(sync = %name, "cannot schedule verification: {e}");
                break;
            }
            Some(Ok(plan)) => plan,
        };
        let Some(due) = plan.next_after(Utc::now()) else {
            tracing::warn!(sync = %name, "the verify schedule {} has no future tick", plan.describe());
            break;
        };
        let wait = (due - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = config_rx.changed() => {
                if changed.is_err() { break; }
                continue;
            }
            _ = shutdown.changed() => continue,
        }
        verify_once(&shared, &shared.config(), &name).await;
    }
}

/// Runs `lockstep verify NAME --output json` in a child process with the config the daemon
/// holds, sent on stdin as a worker's is: a file edited since the last reload is not read.
async fn run_verify(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    name: &str,
) -> std::io::Result<std::process::Output> {
    let mut child = Command::new(&shared.worker_exe)
        .arg("--config")
        .arg(&config.path)
        .args(["--log-format", "json", "verify", name, "--output", "json"])
        .arg("--config-from-daemon")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let line = serde_json::to_string(&WorkerInput {
            config: config.source_text().to_owned(),
        })
        .map_err(std::io::Error::other)?;
        // A child that died at once shows up in its exit status; stdin closes when dropped.
        let _ = stdin.write_all(format!("{line}\n").as_bytes()).await;
        let _ = stdin.flush().await;
    }
    child.wait_with_output().await
}

/// Runs one verify in a child process and acts on its report.
async fn verify_once(shared: &Arc<Shared>, config: &Arc<Config>, name: &str) {
    let started = std::time::Instant::now();
    let output = run_verify(shared, config, name);
    let mut shutdown = shared.shutdown.clone();
    let output = tokio::select! {
        output = output => output,
        _ = shutdown.changed() => return,
    };
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            tracing::error!(sync = name, "could not start `lockstep verify`: {e}");
            return;
        }
    };
    let stdout = config
        .secrets
        .redact(&String::from_utf8_lossy(&output.stdout));
    let stderr = config
        .secrets
        .redact(&String::from_utf8_lossy(&output.stderr));
    let drift = serde_json::from_str::<Value>(&stdout)
        .ok()
        .and_then(|report| Drift::from_report(&report));
    let Some(drift) = drift.filter(|_| matches!(output.status.code(), Some(0 | 1))) else {
        let tail: String = stderr
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        tracing::error!(
            sync = name,
            "scheduled verify failed ({}): {}",
            output.status,
            tail.trim()
        );
        return;
    };
    shared.metrics.set_verify_differences(name, drift.total());
    if drift.total() == 0 {
        tracing::info!(sync = name, "scheduled verify: the systems agree");
        return;
    }
    let alert = Alert {
        kind: AlertKind::Drift,
        sync: name.to_owned(),
        run: None,
        status: RunStatus::Succeeded,
        metrics: RunMetrics::default(),
        reason: drift.reason(name),
        error_kind: None,
        attempts: 1,
        consecutive_failures: 0,
        duration: started.elapsed(),
        exit_detail: None,
        host: lockstep_state::hostname(),
    }
    .redacted(&config.secrets);
    tracing::warn!(
        sync = name,
        alert = AlertKind::Drift.name(),
        "alert: {}: {}",
        alert.headline(),
        alert.reason
    );
    shared.metrics.alert_sent(name, AlertKind::Drift.name());
    let shared2 = shared.clone();
    let config = config.clone();
    let mut tasks = shared.alert_tasks.lock().unwrap_or_else(|p| p.into_inner());
    while tasks.try_join_next().is_some() {}
    tasks.spawn(async move {
        crate::channels::deliver(
            &config.alerts,
            &config.secrets,
            &shared2.http,
            &shared2.metrics,
            &alert,
        )
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_gives_its_counts_and_other_json_gives_none() {
        let report = serde_json::json!({
            "missing": 2, "extra": 1, "different": 3, "duplicates": 0, "sync": "people"
        });
        let drift = Drift::from_report(&report).unwrap();
        assert_eq!(drift.total(), 6);
        assert!(drift.reason("people").contains("2 records missing"));
        assert_eq!(Drift::from_report(&serde_json::json!({"error": "x"})), None);
    }
}
