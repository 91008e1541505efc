//! One task per scheduled sync: wait for the tick, run the sync in a worker (retrying
//! transient failures with exponential backoff), record crashes, raise alerts, and work out
//! the next tick.
//!
//! Runs of one sync are sequential by construction: the task waits for its worker before it
//! looks at the clock again. Ticks that pass while a run goes on are missed; the sync's
//! `catch_up` policy says whether to forget them (`skip`: wait for the next tick) or to run
//! once at once (`run-once`). The same policy applies at start-up, to the ticks missed since
//! the sync's last recorded run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use lockstep_config::{CatchUp, Config, RetryPolicy, Schedule};
use lockstep_core::{RunErrorKind, RunMetrics, RunStatus};
use lockstep_state::RunEnd;
use tracing::Instrument;

use crate::alerts::{self, Alert, AlertKind, Execution};
use crate::protocol::LEASE_HELD;
use crate::schedule::{human, jitter, Plan};
use crate::shared::{Running, Shared};
use crate::supervisor::{run_worker, WorkerSpec};

/// How many ticks are counted when telling how many were missed.
const MISSED_CAP: u32 = 10_000;

/// Schedules `name` until the daemon stops or the sync is no longer scheduled.
pub(crate) async fn sync_loop(shared: Arc<Shared>, name: String) {
    let mut config_rx = shared.config.subscribe();
    let mut shutdown = shared.shutdown.clone();
    let mut current: Option<(Schedule, Plan)> = None;
    let mut due: Option<DateTime<Utc>> = None;
    let mut fire_at: Option<DateTime<Utc>> = None;
    let mut starting = true;
    loop {
        if shared.stopping() {
            break;
        }
        let config = config_rx.borrow_and_update().clone();
        let Some(schedule) = config
            .sync(&name)
            .filter(|s| s.enabled)
            .and_then(|s| s.schedule.clone())
        else {
            tracing::info!(sync = %name, "the sync is no longer scheduled");
            shared.update_runtime(&name, |r| r.next_run = None);
            break;
        };
        if current
            .as_ref()
            .is_none_or(|(old, _)| !same_schedule(old, &schedule))
        {
            let plan = match Plan::new(&schedule) {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::error!(sync = %name, "cannot schedule the sync: {e}");
                    break;
                }
            };
            let now = Utc::now();
            due = if starting {
                initial_due(&shared, &name, &schedule, &plan, now).await
            } else {
                tracing::info!(sync = %name, "schedule changed: {}", plan.describe());
                plan.next_after(now)
            };
            tracing::info!(
                sync = %name,
                "scheduled {}; next run at {}",
                plan.describe(),
                due.map(|d| d.to_rfc3339()).unwrap_or_else(|| "never".into())
            );
            fire_at = None;
            starting = false;
            current = Some((schedule, plan));
        }
        let Some((schedule, plan)) = current.clone() else {
            break;
        };
        let Some(due_at) = due else {
            tracing::warn!(sync = %name, "the schedule {} has no future tick", plan.describe());
            shared.update_runtime(&name, |r| r.next_run = None);
            tokio::select! {
                changed = config_rx.changed() => if changed.is_err() { break },
                _ = shutdown.changed() => {}
            }
            current = None;
            continue;
        };
        let fire = *fire_at.get_or_insert_with(|| {
            due_at + chrono::Duration::from_std(jitter(schedule.jitter)).unwrap_or_default()
        });
        shared.update_runtime(&name, |r| r.next_run = Some(fire));
        let wait = (fire - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = config_rx.changed() => {
                if changed.is_err() { break; }
                continue;
            }
            _ = shutdown.changed() => continue,
        }
        shared.update_runtime(&name, |r| r.next_run = None);
        // The config of the moment: a reload while waiting is honoured.
        let config = shared.config();
        if config.sync(&name).is_none_or(|s| !s.enabled) {
            continue;
        }
        execute(&shared, &config, &name).await;
        if shared.stopping() {
            break;
        }
        let now = Utc::now();
        let missed = plan.ticks_between(due_at, now, MISSED_CAP);
        fire_at = None;
        due = if missed == 0 {
            plan.next_after(due_at)
        } else {
            match schedule.catch_up {
                CatchUp::Skip => {
                    tracing::info!(
                        sync = %name,
                        "{missed} tick(s) passed during the run; skipped (catch_up = \"skip\")"
                    );
                    plan.next_after(now)
                }
                CatchUp::RunOnce => {
                    tracing::info!(
                        sync = %name,
                        "{missed} tick(s) passed during the run; running once now (catch_up = \"run-once\")"
                    );
                    Some(now)
                }
            }
        };
    }
    shared.update_runtime(&name, |r| r.next_run = None);
}

/// Whether two schedules tick the same way (their place in the file aside).
fn same_schedule(a: &Schedule, b: &Schedule) -> bool {
    a.trigger == b.trigger
        && a.timezone == b.timezone
        && a.jitter == b.jitter
        && a.catch_up == b.catch_up
        && a.timeout == b.timeout
}

/// The first due time at start-up: now if ticks were missed since the last run and the policy
/// is `run-once`, else the next tick.
async fn initial_due(
    shared: &Shared,
    name: &str,
    schedule: &Schedule,
    plan: &Plan,
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let next = plan.next_after(now);
    let last = match shared.state.runs(Some(name), 1).await {
        Ok(runs) => runs.into_iter().next(),
        Err(e) => {
            tracing::warn!(sync = name, "cannot read the last run: {e}");
            None
        }
    };
    let Some(started) = last
        .and_then(|r| DateTime::parse_from_rfc3339(&r.started_at).ok())
        .map(|t| t.with_timezone(&Utc))
    else {
        return next;
    };
    let missed = plan.ticks_between(started, now, MISSED_CAP);
    if missed == 0 {
        return next;
    }
    match schedule.catch_up {
        CatchUp::RunOnce => {
            tracing::info!(
                sync = name,
                "{missed} tick(s) missed since the last run started at {}; running once now (catch_up = \"run-once\")",
                started.to_rfc3339()
            );
            Some(now)
        }
        CatchUp::Skip => {
            tracing::info!(
                sync = name,
                "{missed} tick(s) missed since the last run started at {}; skipped (catch_up = \"skip\")",
                started.to_rfc3339()
            );
            next
        }
    }
}

/// How one attempt ended, as recorded.
#[derive(Clone, Debug)]
struct Attempt {
    run: Option<i64>,
    status: RunStatus,
    metrics: RunMetrics,
    duration: Duration,
    error_kind: Option<RunErrorKind>,
    error: Option<String>,
    exit_detail: Option<String>,
    retryable: bool,
    retry_after: Option<Duration>,
    /// Another process holds the sync: nothing ran, nothing to record or alert.
    lease_held: bool,
}

impl Attempt {
    fn failed(kind: RunErrorKind, error: String, duration: Duration) -> Attempt {
        Attempt {
            run: None,
            status: RunStatus::Failed,
            metrics: RunMetrics::default(),
            duration,
            error_kind: Some(kind),
            error: Some(error),
            exit_detail: None,
            retryable: false,
            retry_after: None,
            lease_held: false,
        }
    }

    fn reason(&self) -> Option<String> {
        self.error.as_ref().map(|e| match &self.error_kind {
            Some(kind) => format!("{kind}: {e}"),
            None => e.clone(),
        })
    }
}

/// The run error kind a worker reported by name; a name this daemon does not know (a worker
/// of another version) is recorded as `unknown`.
fn worker_error_kind(name: &str) -> RunErrorKind {
    RunErrorKind::parse(name).unwrap_or_else(|| {
        tracing::warn!("the worker reported an error kind this daemon does not know: `{name}`");
        RunErrorKind::Unknown
    })
}

/// One scheduled execution: attempts until success, a failure that is not retryable, the
/// last attempt, or shutdown; then the alerts.
async fn execute(shared: &Arc<Shared>, config: &Arc<Config>, name: &str) {
    let Some(sync) = config.sync(name) else {
        return;
    };
    let policy = sync.retry;
    let timeout = sync.schedule.as_ref().and_then(|s| s.timeout);
    let mut runs = Vec::new();
    let mut attempt_no = 1u32;
    let last = loop {
        let attempt = attempt_once(shared, config, name, timeout, attempt_no).await;
        shared.update_runtime(name, |r| r.running = None);
        if attempt.lease_held {
            tracing::info!(
                sync = name,
                "skipped: another process is running this sync ({})",
                attempt.error.as_deref().unwrap_or("its lease is held")
            );
            return;
        }
        if let Some(run) = attempt.run {
            runs.push(run);
        }
        shared.metrics.run_finished(
            name,
            attempt.status,
            &attempt.metrics,
            attempt.duration,
            Utc::now().timestamp_millis() as f64 / 1000.0,
        );
        let retry = attempt.status == RunStatus::Failed
            && attempt.retryable
            && attempt_no < policy.max_attempts
            && !shared.stopping();
        if !retry {
            break attempt;
        }
        let delay = backoff(&policy, attempt_no).max(attempt.retry_after.unwrap_or_default());
        tracing::warn!(
            sync = name,
            run = attempt.run,
            "the run failed with a {} error; retrying in {} (attempt {} of {})",
            attempt.error_kind.map_or("retryable", RunErrorKind::as_str),
            human(delay),
            attempt_no + 1,
            policy.max_attempts
        );
        shared.metrics.retried(name);
        shared.update_runtime(name, |r| {
            r.next_run = Some(Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default())
        });
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {
                tracing::info!(sync = name, "stopping: the retry is dropped");
                break attempt;
            }
        }
        attempt_no += 1;
    };
    conclude(shared, config, name, &last, runs, attempt_no).await;
}

/// Runs one worker and records how it ended when the worker could not.
async fn attempt_once(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    name: &str,
    timeout: Option<Duration>,
    attempt_no: u32,
) -> Attempt {
    let span = tracing::info_span!("run", sync = name, run = tracing::field::Empty);
    async {
        let since = Utc::now();
        shared.update_runtime(name, |r| {
            r.running = Some(Running {
                run: None,
                pid: None,
                since,
                attempt: attempt_no,
            })
        });
        tracing::info!(attempt = attempt_no, "starting a worker");
        let started = Instant::now();
        let spec = WorkerSpec {
            exe: &shared.worker_exe,
            config_path: &config.path,
            config_text: config.source_text(),
            sync: name,
            timeout,
            grace: shared.kill_grace,
            secrets: &config.secrets,
        };
        let on_started = |run: i64, pid: Option<u32>| {
            tracing::Span::current().record("run", run);
            shared.update_runtime(name, |r| {
                if let Some(running) = r.running.as_mut() {
                    running.run = Some(run);
                    running.pid = pid;
                }
            });
            tracing::info!(pid, "run started");
        };
        let exit = match run_worker(&spec, shared.shutdown.clone(), on_started).await {
            Ok(exit) => exit,
            Err(e) => {
                let error = format!(
                    "cannot start the worker `{} worker`: {e}",
                    shared.worker_exe.display()
                );
                tracing::error!("{error}");
                let mut attempt = Attempt::failed(RunErrorKind::Internal, error, started.elapsed());
                attempt.run = record_unstarted(shared, name, &attempt).await;
                return attempt;
            }
        };
        let duration = started.elapsed();
        if let (Some(report), false) = (&exit.report, exit.crashed()) {
            let error = report.error.as_ref();
            let mut attempt = Attempt {
                run: report.run,
                status: report.status,
                metrics: report.metrics,
                duration,
                error_kind: error.map(|e| worker_error_kind(&e.kind)),
                error: error.map(|e| e.message.clone()),
                exit_detail: None,
                retryable: error.is_some_and(|e| e.retryable),
                retry_after: error
                    .and_then(|e| e.retry_after_ms)
                    .map(Duration::from_millis),
                lease_held: error.is_some_and(|e| e.kind == LEASE_HELD),
            };
            if attempt.lease_held {
                return attempt;
            }
            if attempt.run.is_none() {
                // The run could not start (no plugin, no state store): it is recorded all the
                // same, so that `lockstep runs` and the alerts show it.
                attempt.run = record_unstarted(shared, name, &attempt).await;
            } else if exit.timed_out && attempt.status == RunStatus::Cancelled {
                attempt.status = RunStatus::Failed;
                attempt.error_kind = Some(RunErrorKind::Timeout);
                attempt.error = Some(format!(
                    "the run exceeded its timeout of {} and was stopped after the batch in hand",
                    human(timeout.unwrap_or_default())
                ));
                attempt.retryable = false;
                refinish(shared, config, name, &attempt).await;
            }
            match attempt.status {
                RunStatus::Succeeded => tracing::info!(
                    status = "succeeded",
                    read = attempt.metrics.read,
                    written = attempt.metrics.written(),
                    "run succeeded in {}",
                    human(Duration::from_millis(duration.as_millis() as u64))
                ),
                RunStatus::Cancelled => tracing::info!("run cancelled after the batch in hand"),
                RunStatus::Held => tracing::warn!(
                    status = "held",
                    "run held its deletes: {}",
                    attempt
                        .error
                        .as_deref()
                        .unwrap_or("past max_delete_fraction")
                ),
                _ => tracing::error!(
                    kind = attempt.error_kind.map_or("unknown", RunErrorKind::as_str),
                    retryable = attempt.retryable,
                    "run failed: {}",
                    attempt.error.as_deref().unwrap_or("no reason given")
                ),
            }
            return attempt;
        }

        // The daemon is stopping and its SIGTERM reached a worker still starting, before the
        // worker could catch it: the run was stopped, nothing was lost (a worker commits only
        // whole batches), and no connector crashed. A run it had begun ends cancelled, as
        // one stopped after its batch in hand does; one it had not begun is not recorded.
        if exit.died_of_shutdown() {
            tracing::info!("the worker was stopped by the daemon's shutdown while starting");
            let mut attempt = Attempt {
                run: exit.run,
                status: RunStatus::Cancelled,
                metrics: RunMetrics::default(),
                duration,
                error_kind: None,
                error: Some("the daemon stopped while the worker was starting the run".to_owned()),
                exit_detail: None,
                retryable: false,
                retry_after: None,
                lease_held: false,
            };
            if let Some(run) = attempt.run {
                if let Ok(Some(summary)) = shared.state.run(run).await {
                    attempt.metrics = summary.metrics;
                }
                refinish(shared, config, name, &attempt).await;
            }
            return attempt;
        }

        // The worker died without a report: by a signal (abort, segfault, out of memory,
        // the timeout's SIGKILL) or by exiting early. The daemon records the run itself.
        shared.metrics.worker_crashed(name);
        let how = exit.describe();
        let (kind, error) = if exit.timed_out {
            (
                RunErrorKind::Timeout,
                format!(
                    "the run exceeded its timeout of {}; the worker {how}",
                    human(timeout.unwrap_or_default())
                ),
            )
        } else if exit.killed {
            (
                RunErrorKind::Killed,
                format!(
                    "the worker did not stop within {} of SIGTERM and {how}",
                    human(shared.kill_grace)
                ),
            )
        } else {
            (
                RunErrorKind::Crash,
                format!("the worker process {how}; the connector crashed the run"),
            )
        };
        let exit_detail = if exit.stderr_tail.is_empty() {
            format!("the worker process {how}; its stderr was empty")
        } else {
            format!(
                "the worker process {how}\n--- the last {} bytes of its stderr ---\n{}",
                exit.stderr_tail.len(),
                exit.stderr_tail
            )
        };
        let exit_detail = config.secrets.redact(&exit_detail);
        tracing::error!(kind = kind.as_str(), "run failed: {error}");
        let mut attempt = Attempt {
            run: exit.run,
            status: RunStatus::Failed,
            metrics: RunMetrics::default(),
            duration,
            error_kind: Some(kind),
            error: Some(error),
            exit_detail: Some(exit_detail),
            retryable: false,
            retry_after: None,
            lease_held: false,
        };
        match attempt.run {
            Some(run) => {
                // The progress committed batch by batch stays as the run's metrics.
                if let Ok(Some(summary)) = shared.state.run(run).await {
                    attempt.metrics = summary.metrics;
                }
                refinish(shared, config, name, &attempt).await;
            }
            None => attempt.run = record_unstarted(shared, name, &attempt).await,
        }
        attempt
    }
    .instrument(span)
    .await
}

/// Records the end of `attempt` on its run (which the worker started or finished).
async fn refinish(shared: &Shared, config: &Config, name: &str, attempt: &Attempt) {
    let Some(run) = attempt.run else { return };
    let cursor_after = match config.sync(name) {
        Some(s) if s.spec.reads_by_cursor() => shared.state.checkpoint(name).await.ok().flatten(),
        _ => None,
    };
    let end = RunEnd {
        status: attempt.status,
        metrics: attempt.metrics,
        error_kind: attempt.error_kind,
        error: attempt.error.clone(),
        cursor_after,
        exit_detail: attempt.exit_detail.clone(),
    };
    if let Err(e) = shared.state.finish_run(run, &end).await {
        tracing::error!(run, "cannot record the end of the run: {e}");
    }
}

/// Records a run for an attempt that has none (the worker failed before starting one).
async fn record_unstarted(shared: &Shared, name: &str, attempt: &Attempt) -> Option<i64> {
    let run = match shared.state.start_run(name, None).await {
        Ok(run) => run,
        Err(e) => {
            tracing::error!("cannot record the failed run: {e}");
            return None;
        }
    };
    tracing::Span::current().record("run", run);
    let end = RunEnd {
        status: attempt.status,
        metrics: attempt.metrics,
        error_kind: attempt.error_kind,
        error: attempt.error.clone(),
        cursor_after: None,
        exit_detail: attempt.exit_detail.clone(),
    };
    if let Err(e) = shared.state.finish_run(run, &end).await {
        tracing::error!(run, "cannot record the failed run: {e}");
    }
    Some(run)
}

/// What to say when runs of this execution queued conflicts for a person (or found queued
/// ones changed again); `None` when they did not.
async fn queued_conflicts(shared: &Shared, name: &str, runs: &[i64]) -> Option<String> {
    let filter = lockstep_state::ConflictFilter {
        sync: Some(name.to_owned()),
        statuses: vec![lockstep_state::ConflictStatus::Open],
        limit: 10_000,
    };
    let open = match shared.state.conflicts(&filter).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(
                sync = name,
                "cannot read the conflict queue for alerts: {e}"
            );
            return None;
        }
    };
    let new = open.iter().filter(|c| runs.contains(&c.run)).count();
    (new > 0).then(|| {
        format!(
            "{new} conflict{} of this run wait for a person ({} open in all); see `lockstep \
             conflicts list {name}` and decide each with `lockstep conflicts resolve ID --take \
             a|b`",
            if new == 1 { "" } else { "s" },
            open.len()
        )
    })
}

/// After an execution: gauges, the alert rules, and delivery.
async fn conclude(
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    name: &str,
    last: &Attempt,
    runs: Vec<i64>,
    attempts: u32,
) {
    shared.refresh_rejected(name).await;
    if last.status == RunStatus::Cancelled {
        return;
    }
    let window = config.alerts.low_volume_window.max(1) as usize;
    let history = match shared
        .state
        .runs(Some(name), window * 3 + attempts as usize + 50)
        .await
    {
        // A verify's repair is no run of the sync: its few records say nothing of volume.
        Ok(mut history) => {
            history.retain(|r| r.kind != lockstep_core::RUN_KIND_VERIFY_REPAIR);
            history
        }
        Err(e) => {
            tracing::warn!(sync = name, "cannot read the run history for alerts: {e}");
            Vec::new()
        }
    };
    let runtime = shared.runtime_of(name);
    let execution = Execution {
        status: last.status,
        metrics: last.metrics,
        runs,
        attempts,
    };
    let reason = last.reason();
    let (mut raised, in_a_row) = alerts::decide(
        &config.alerts,
        &execution,
        reason.as_deref(),
        &history,
        runtime.alerted_failure,
        runtime.last_failure_alert.map(|at| at.elapsed()),
    );
    if let Some(reason) = queued_conflicts(shared, name, &execution.runs).await {
        raised.push((AlertKind::ConflictsQueued, reason));
    }
    if let Some(reason) = crate::wal_retention::check(shared, config, name).await {
        raised.push((AlertKind::WalRetention, reason));
    }
    let failed = matches!(last.status, RunStatus::Failed | RunStatus::Abandoned);
    let failure_alerted = raised.iter().any(|(kind, _)| kind.is_failure());
    if failed && !failure_alerted {
        let next = runtime
            .last_failure_alert
            .map(|at| config.alerts.repeat_interval.saturating_sub(at.elapsed()))
            .unwrap_or_default();
        tracing::info!(
            sync = name,
            run = last.run,
            "failed {in_a_row} times in a row; not alerted again before the repeat interval \
             ([alerts] repeat_interval = {}) has passed, in {}",
            human(config.alerts.repeat_interval),
            human(Duration::from_secs(next.as_secs()))
        );
    }
    shared.update_runtime(name, |r| {
        r.consecutive_failures = in_a_row;
        r.alerted_failure = failed;
        if !failed {
            r.last_failure_alert = None;
        } else if failure_alerted {
            r.last_failure_alert = Some(Instant::now());
        }
    });
    let host = lockstep_state::hostname();
    for (kind, reason) in raised {
        let alert = Alert {
            kind,
            sync: name.to_owned(),
            run: last.run,
            status: last.status,
            metrics: last.metrics,
            reason,
            error_kind: last.error_kind.map(|k| k.as_str().to_owned()),
            attempts,
            consecutive_failures: in_a_row,
            duration: last.duration,
            exit_detail: last.exit_detail.clone(),
            host: host.clone(),
        }
        .redacted(&config.secrets);
        let level_warn = kind != AlertKind::Recovery;
        if level_warn {
            tracing::warn!(
                sync = name,
                run = last.run,
                alert = kind.name(),
                "alert: {}: {}",
                alert.headline(),
                alert.reason
            );
        } else {
            tracing::info!(
                sync = name,
                run = last.run,
                alert = kind.name(),
                "alert: {}: {}",
                alert.headline(),
                alert.reason
            );
        }
        shared.metrics.alert_sent(name, kind.name());
        let shared2 = shared.clone();
        let config = config.clone();
        let mut tasks = shared.alert_tasks.lock().unwrap_or_else(|p| p.into_inner());
        // Finished deliveries are dropped so the set stays small.
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
}

/// The delay before retry number `attempt` (1 for the first retry): the initial backoff,
/// doubled each time, capped.
pub(crate) fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
    policy
        .initial_backoff
        .saturating_mul(factor)
        .min(policy.max_backoff.max(policy.initial_backoff))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(5),
        };
        let delays: Vec<u64> = (1..=5).map(|a| backoff(&policy, a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        assert_eq!(backoff(&policy, 100), Duration::from_secs(5));
    }
}
