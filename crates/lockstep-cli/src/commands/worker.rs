//! `lockstep worker SYNC` (hidden): one run for the daemon, in a process of its own so that a
//! plugin that aborts or segfaults takes down this process only.
//!
//! Protocol (lockstep_daemon::protocol): with `--supervised`, the first stdin line carries the
//! config text the daemon validated, and end of file on stdin means the daemon is gone. On
//! stdout: `{"event":"started","run":ID}` as soon as the run is recorded, then one
//! `{"event":"finished",...}` line with the report, also when the run could not start. Logs
//! go to stderr (the daemon asks for JSON). SIGTERM, SIGINT or the end of stdin stop the run
//! after the batch in hand; the report then says `cancelled`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use lockstep_config::Config;
use lockstep_core::{RunMetrics, RunStatus};
use lockstep_daemon::protocol::{WorkerError, WorkerEvent, WorkerReport};
use lockstep_orchestrator::{Engine, EngineError, RunOptions, RunReport};
use lockstep_plugin_host::Redactor;
use lockstep_state::StateError;
use tokio::sync::watch;
use tracing::Instrument;

use super::{job, load_config, redactor, registry_for, CliError, CmdResult};

pub async fn run(config_path: &Path, sync: &str, supervised: bool) -> CmdResult {
    let started = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    spawn_signal_handler(stop_tx.clone());

    let config = if supervised {
        match supervised_config(config_path, stop_tx).await {
            Ok(config) => config,
            Err(message) => return unstarted(sync, started, "config", message, false, None),
        }
    } else {
        match load_config(config_path) {
            Ok(config) => config,
            Err(e) => {
                let _ = unstarted(
                    sync,
                    started,
                    "config",
                    "the config file is invalid (see the errors above)".into(),
                    false,
                    None,
                );
                return Err(e);
            }
        }
    };
    let redact = redactor(&config);
    let job = match job(&config, sync) {
        Ok(job) => job,
        Err(CliError::Message(message)) => {
            return unstarted(sync, started, "config", message, false, None)
        }
        Err(e) => return Err(e),
    };
    let span = tracing::info_span!("worker", sync);
    async {
        let registry = registry_for(&config, &job);
        for failure in registry.failures() {
            tracing::warn!("{}", redact(&failure.to_string()));
        }
        let state = match lockstep_state::open(&config.state_url).await {
            Ok(state) => state,
            Err(e) => {
                let retryable = matches!(e, StateError::Connect { .. });
                let kind = if retryable { "transient" } else { "state" };
                return unstarted(sync, started, kind, redact(&e.to_string()), retryable, None);
            }
        };
        let mut options = RunOptions::new();
        options.stop = stop_rx;
        options.lease_ttl = config.lease_ttl;
        options.on_start = Some(Arc::new(|run: i64| emit(&WorkerEvent::Started { run })));
        let engine = Engine {
            registry: &registry,
            state: state.as_ref(),
            redactor: redact.clone(),
        };
        let result = engine.run(&job, options).await;
        state.close().await;
        match result {
            Ok(report) => {
                emit(&WorkerEvent::Finished(worker_report(&report, &redact)));
                match report.status {
                    RunStatus::Succeeded => Ok(()),
                    RunStatus::Cancelled => Err(CliError::Reported(130)),
                    RunStatus::Held => Err(CliError::Reported(super::run::HELD_EXIT_CODE)),
                    _ => Err(CliError::Reported(1)),
                }
            }
            Err(e) => engine_error(sync, started, &e, &redact),
        }
    }
    .instrument(span)
    .await
}

/// Reads the config the daemon sends, then watches stdin: its end means the daemon is gone.
async fn supervised_config(path: &Path, stop: Arc<watch::Sender<bool>>) -> Result<Config, String> {
    // A plain thread reads stdin: the first line now, then until end of file.
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::stdin().lock().lines();
        let first = lines.next();
        let _ = first_tx.send(first);
        for line in lines {
            if line.is_err() {
                break;
            }
        }
        if !*stop.borrow() {
            tracing::warn!("the daemon is gone (stdin closed); stopping after the batch in hand");
            let _ = stop.send(true);
        }
    });
    let first = match first_rx.await {
        Ok(Some(Ok(line))) => line,
        Ok(Some(Err(e))) => return Err(format!("cannot read the config from stdin: {e}")),
        _ => return Err("stdin closed before the config was sent".to_owned()),
    };
    let config = super::parse_daemon_config(&first, path)?;
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::env::set_current_dir(dir)
            .map_err(|e| format!("cannot enter the config's directory {}: {e}", dir.display()))?;
    }
    Ok(config)
}

/// The first SIGTERM or SIGINT stops the run after the batch in hand. Later ones are
/// ignored: the daemon kills a worker that takes too long.
fn spawn_signal_handler(stop: Arc<watch::Sender<bool>>) {
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if !*stop.borrow() {
                tracing::info!("stop requested: stopping after the batch in hand");
                let _ = stop.send(true);
            }
        }
    });
}

/// Writes one event line to stdout at once.
fn emit(event: &WorkerEvent) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", event.to_line());
    let _ = out.flush();
}

fn worker_report(report: &RunReport, redact: &Redactor) -> WorkerReport {
    WorkerReport {
        run: Some(report.run_id),
        sync: report.sync.clone(),
        status: report.status,
        metrics: report.metrics,
        duration_ms: report.duration.as_millis() as u64,
        error: report.error.as_ref().map(|e| worker_error(e, redact)),
    }
}

fn worker_error(e: &EngineError, redact: &Redactor) -> WorkerError {
    WorkerError {
        kind: e.kind_name().to_owned(),
        message: redact(&e.to_string()),
        retryable: e.is_retryable(),
        retry_after_ms: e.retry_after().map(|d| d.as_millis() as u64),
    }
}

fn engine_error(sync: &str, started: Instant, e: &EngineError, redact: &Redactor) -> CmdResult {
    let error = worker_error(e, redact);
    tracing::error!(kind = %error.kind, "the run could not start: {}", error.message);
    unstarted(
        sync,
        started,
        &error.kind,
        error.message,
        error.retryable,
        error.retry_after_ms,
    )
}

/// Reports a run that could not start, and fails.
fn unstarted(
    sync: &str,
    started: Instant,
    kind: &str,
    message: String,
    retryable: bool,
    retry_after_ms: Option<u64>,
) -> CmdResult {
    emit(&WorkerEvent::Finished(WorkerReport {
        run: None,
        sync: sync.to_owned(),
        status: RunStatus::Failed,
        metrics: RunMetrics::default(),
        duration_ms: started.elapsed().as_millis() as u64,
        error: Some(WorkerError {
            kind: kind.to_owned(),
            message: message.clone(),
            retryable,
            retry_after_ms,
        }),
    }));
    Err(CliError::Message(message))
}
