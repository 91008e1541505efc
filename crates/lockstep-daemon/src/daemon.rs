//! Start-up and signals: the daemon as a whole. What its parts share is in `shared`.
//!
//! SIGHUP reloads the config: the file is loaded and validated again (and its plugins checked
//! in a `lockstep validate --offline` child); on success the new config replaces the old one
//! and each sync's task picks it up at its next tick; on failure every error is logged and the
//! old config stays. SIGTERM or SIGINT stops the daemon gracefully: no new runs start, running
//! workers are asked to stop after the batch in hand (and killed if they take longer than the
//! grace period), pending alerts are sent, then the process exits. A second signal exits at
//! once; workers then notice their closed stdin and stop the same graceful way.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lockstep_config::Config;
use lockstep_core::RunStatus;
use lockstep_state::{StateError, StateStore};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::metrics::Metrics;
use crate::shared::{scheduled, Shared};

/// How long pending alerts may take to go out when the daemon stops.
const ALERT_DRAIN: Duration = Duration::from_secs(30);

/// How to run the daemon.
pub struct DaemonOptions {
    /// The loaded, validated config. Its `path` is read again on SIGHUP.
    pub config: Config,
    /// The `lockstep` binary, run as `lockstep worker` for each run.
    pub worker_exe: PathBuf,
    /// Overrides `[daemon] listen`.
    pub listen: Option<String>,
    /// How long a worker may take to stop after SIGTERM (timeout, shutdown) before SIGKILL.
    pub kill_grace: Duration,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(
        "cannot listen on `{addr}`: {source}. Set another address with [daemon] listen in the \
         config or --listen, or stop the process using it"
    )]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the config's plugins do not check out:\n{0}")]
    Plugins(String),
    #[error("cannot set up signal handling: {0}")]
    Signals(std::io::Error),
    #[error("cannot start the status page: {0}")]
    Web(String),
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(options: DaemonOptions) -> Result<(), DaemonError> {
    // Handlers first: a SIGHUP during start-up must not kill the daemon.
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    let config = options.config;
    check_plugins(&options.worker_exe, &config.path)
        .await
        .map_err(DaemonError::Plugins)?;
    let state: Arc<dyn StateStore> = Arc::from(lockstep_state::open(&config.state_url).await?);
    let listen = options
        .listen
        .clone()
        .unwrap_or_else(|| config.daemon.listen.clone());
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: listen.clone(),
            source,
        })?;
    let local: Option<SocketAddr> = listener.local_addr().ok();

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (config_tx, _) = watch::channel(Arc::new(config));
    let shared = Arc::new(Shared {
        config: config_tx,
        state,
        metrics: Metrics::default(),
        runtime: Mutex::new(BTreeMap::new()),
        worker_exe: options.worker_exe,
        kill_grace: options.kill_grace,
        shutdown: shutdown_rx.clone(),
        http: reqwest::Client::builder()
            .user_agent(concat!("lockstep/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default(),
        alert_tasks: Mutex::new(JoinSet::new()),
        started_at: Utc::now(),
    });
    load_history(&shared).await;

    let web =
        crate::web::router(shared.clone(), local).map_err(|e| DaemonError::Web(e.to_string()))?;
    let server = {
        let app = crate::http::router(shared.clone()).merge(web);
        let mut stop = shutdown_rx.clone();
        tokio::spawn(async move {
            let stopped = async move {
                while !*stop.borrow() {
                    if stop.changed().await.is_err() {
                        break;
                    }
                }
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!("the HTTP server failed: {e}");
            }
        })
    };
    let config = shared.config();
    tracing::info!(
        config = %config.path.display(),
        listen = %local.map(|a| a.to_string()).unwrap_or(listen),
        "lockstep daemon started: {} of {} syncs scheduled; serving /healthz, /metrics, /api/syncs, /api/runs and the status page /ui",
        scheduled(&config).len(),
        config.syncs.len()
    );

    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    spawn_missing(&shared, &mut tasks);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                reload(&shared).await;
                spawn_missing(&shared, &mut tasks);
            }
            _ = terminate.recv() => { tracing::info!("SIGTERM received"); break; }
            _ = interrupt.recv() => { tracing::info!("SIGINT received"); break; }
        }
    }

    let running: Vec<String> = {
        let runtime = shared.runtime.lock().unwrap_or_else(|p| p.into_inner());
        runtime
            .iter()
            .filter(|(_, r)| r.running.is_some())
            .map(|(name, _)| name.clone())
            .collect()
    };
    if running.is_empty() {
        tracing::info!("stopping: no sync is running");
    } else {
        tracing::info!(
            "stopping: waiting for {} to finish the batch in hand and commit",
            running.join(", ")
        );
    }
    let _ = shutdown_tx.send(true);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::warn!(
            "second signal: exiting now; workers stop on their own after the batch in hand"
        );
        std::process::exit(130);
    });
    for (_, task) in tasks.drain() {
        let _ = task.await;
    }
    let mut alerts =
        std::mem::take(&mut *shared.alert_tasks.lock().unwrap_or_else(|p| p.into_inner()));
    while alerts.try_join_next().is_some() {}
    if !alerts.is_empty() {
        tracing::info!("sending {} pending alert(s)", alerts.len());
        let drained = tokio::time::timeout(ALERT_DRAIN, async {
            while alerts.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                "gave up on alerts still unsent after {}s",
                ALERT_DRAIN.as_secs()
            );
        }
    }
    let _ = server.await;
    shared.state.close().await;
    tracing::info!("lockstep daemon stopped");
    Ok(())
}

/// Starts a task for each scheduled sync that has none running.
fn spawn_missing(shared: &Arc<Shared>, tasks: &mut HashMap<String, JoinHandle<()>>) {
    tasks.retain(|_, task| !task.is_finished());
    let config = shared.config();
    for sync in scheduled(&config) {
        let name = sync.name().to_owned();
        if let std::collections::hash_map::Entry::Vacant(slot) = tasks.entry(name.clone()) {
            slot.insert(tokio::spawn(crate::scheduler::sync_loop(
                shared.clone(),
                name,
            )));
        }
    }
    // Scheduled verification, a task per sync with a `verify_schedule` (keyed apart from
    // the sync's own task).
    for sync in config
        .syncs
        .iter()
        .filter(|s| s.enabled && s.verify_schedule.is_some())
    {
        let name = sync.name().to_owned();
        if let std::collections::hash_map::Entry::Vacant(slot) =
            tasks.entry(format!("verify:{name}"))
        {
            slot.insert(tokio::spawn(crate::verifier::verify_loop(
                shared.clone(),
                name,
            )));
        }
    }
}

/// Reads what the gauges and alert rules need from the run history.
async fn load_history(shared: &Shared) {
    let config = shared.config();
    for sync in &config.syncs {
        let name = sync.name();
        let runs = match shared.state.runs(Some(name), 200).await {
            Ok(runs) => runs,
            Err(e) => {
                tracing::warn!(sync = name, "cannot read the run history: {e}");
                continue;
            }
        };
        if let Some(at) = runs
            .iter()
            .find(|r| r.status == RunStatus::Succeeded)
            .and_then(|r| r.finished_at.as_deref())
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        {
            shared.metrics.set_last_success(name, at.timestamp() as f64);
        }
        let finished: Vec<_> = runs
            .iter()
            .filter(|r| !matches!(r.status, RunStatus::Running | RunStatus::Cancelled))
            .collect();
        let failures = finished
            .iter()
            .take_while(|r| r.status != RunStatus::Succeeded)
            .count() as u32;
        shared.update_runtime(name, |r| {
            r.consecutive_failures = failures;
            // The daemon that saw the failure alerted it; a success now is a recovery.
            r.alerted_failure = failures > 0;
        });
        shared.refresh_rejected(name).await;
    }
}

/// SIGHUP: load and check the config file again; swap it in only if it is valid.
async fn reload(shared: &Shared) {
    let old = shared.config();
    let path = old.path.clone();
    tracing::info!(config = %path.display(), "SIGHUP: reloading the config");
    let new = match lockstep_config::load(&path) {
        Ok(config) => config,
        Err(errors) => {
            for error in errors.iter() {
                tracing::error!("{}", old.secrets.redact(&error.render_plain()));
            }
            tracing::error!(
                "the config was not reloaded ({}); the daemon keeps running the previous one",
                errors.summary()
            );
            shared.metrics.config_reload("invalid");
            return;
        }
    };
    if let Err(problems) = check_plugins(&shared.worker_exe, &path).await {
        for line in problems.lines().filter(|l| !l.trim().is_empty()) {
            tracing::error!("{}", new.secrets.redact(line));
        }
        tracing::error!("the config was not reloaded (its plugins do not check out); the daemon keeps running the previous one");
        shared.metrics.config_reload("invalid");
        return;
    }
    if new.daemon.listen != old.daemon.listen {
        tracing::warn!("[daemon] listen changed; the new address takes effect at the next restart");
    }
    if new.state_url != old.state_url {
        tracing::warn!("[state] url changed; the new state store takes effect at the next restart");
    }
    if new.daemon.log_format != old.daemon.log_format {
        tracing::warn!("[daemon] log_format changed; it takes effect at the next restart");
    }
    let now_scheduled: Vec<String> = scheduled(&new)
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    let before: Vec<String> = scheduled(&old)
        .iter()
        .map(|s| s.name().to_owned())
        .collect();
    let added: Vec<&String> = now_scheduled
        .iter()
        .filter(|s| !before.contains(s))
        .collect();
    let removed: Vec<&String> = before
        .iter()
        .filter(|s| !now_scheduled.contains(s))
        .collect();
    shared.config.send_replace(Arc::new(new));
    shared.metrics.config_reload("ok");
    tracing::info!(
        "config reloaded: {} syncs scheduled{}{}",
        now_scheduled.len(),
        if added.is_empty() {
            String::new()
        } else {
            format!("; added: {}", join(&added))
        },
        if removed.is_empty() {
            String::new()
        } else {
            format!("; no longer scheduled: {}", join(&removed))
        },
    );
}

fn join(names: &[&String]) -> String {
    names
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that the config's connectors exist and play their roles, in a
/// `lockstep validate --offline` child: the daemon itself never loads plugins.
async fn check_plugins(exe: &Path, config: &Path) -> Result<(), String> {
    let output = tokio::process::Command::new(exe)
        .arg("--config")
        .arg(config)
        .args(["validate", "--offline"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .map_err(|_| "`lockstep validate --offline` did not finish within 120s".to_owned())?
        .map_err(|e| format!("cannot run `{} validate --offline`: {e}", exe.display()))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!(
        "{}\n(`lockstep validate --offline` {})",
        stderr.trim_end(),
        crate::supervisor::describe_status(&output.status)
    ))
}
