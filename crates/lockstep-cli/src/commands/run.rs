//! `lockstep run SYNC`: one run in this process, with a progress bar on a terminal and a
//! summary of the run's metrics at the end.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use lockstep_config::Config;
use lockstep_core::RunStatus;
use lockstep_orchestrator::{Engine, Progress, RunOptions, RunReport};
use tokio::sync::watch;

use super::{job, load_config, redactor, registry_for, state, CliError, CmdResult};
use crate::app::OutputFormat;
use crate::output::{human_duration, outln, Table};

pub async fn run(
    config_path: &Path,
    sync: &str,
    full_refresh: bool,
    allow_mass_delete: bool,
    output: OutputFormat,
) -> CmdResult {
    let config = load_config(config_path)?;
    run_loaded(&config, sync, full_refresh, allow_mass_delete, output).await
}

/// Exit code of a run whose deletes are held (past `max_delete_fraction`).
pub const HELD_EXIT_CODE: u8 = 3;

/// One run of `sync` of an already loaded config.
pub async fn run_loaded(
    config: &Config,
    sync: &str,
    full_refresh: bool,
    allow_mass_delete: bool,
    output: OutputFormat,
) -> CmdResult {
    let job = job(config, sync)?;
    let registry = registry_for(config, &job);
    let state = state(config).await?;
    let redactor = redactor(config);

    let (stop_tx, stop_rx) = watch::channel(false);
    spawn_signal_handler(stop_tx);

    let bar = (output == OutputFormat::Text && std::io::stderr().is_terminal()).then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar.set_message(format!("{sync}: starting"));
        bar
    });
    let progress_bar = bar.clone();
    let sync_name = sync.to_owned();
    let mut options = RunOptions::new();
    options.full_refresh = full_refresh;
    options.lease_ttl = config.lease_ttl;
    options.allow_mass_delete = allow_mass_delete;
    options.stop = stop_rx;
    options.progress = Some(Arc::new(move |p: &Progress| {
        if let Some(bar) = &progress_bar {
            let m = &p.metrics;
            bar.set_message(format!(
                "{sync_name}: read {} (added {}, updated {}, unchanged {}, rejected {}) in {} batches",
                m.read, m.added, m.updated, m.unchanged, m.rejected, p.batches
            ));
        }
    }));

    let engine = Engine {
        registry: &registry,
        state: state.as_ref(),
        redactor: redactor.clone(),
    };
    let report = engine.run(&job, options).await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let report = report.map_err(|e| CliError::Message(redactor(&e.to_string())))?;
    match output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::to_string_pretty(&json_report(&report, &redactor))?
        ),
        OutputFormat::Text => print_summary(&report, &redactor),
    }
    match report.status {
        RunStatus::Succeeded => Ok(()),
        RunStatus::Cancelled => Err(CliError::Reported(130)),
        RunStatus::Held => Err(CliError::Reported(HELD_EXIT_CODE)),
        _ => Err(CliError::Reported(1)),
    }
}

/// The first SIGINT or SIGTERM stops the run after the batch in hand; a second one exits.
fn spawn_signal_handler(stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            count += 1;
            if count == 1 {
                eprintln!("stopping after the batch in hand (signal again to exit at once)");
                let _ = stop.send(true);
            } else {
                std::process::exit(130);
            }
        }
    });
}

fn json_report(report: &RunReport, redact: &lockstep_plugin_host::Redactor) -> serde_json::Value {
    serde_json::json!({
        "sync": report.sync,
        "run": report.run_id,
        "status": report.status,
        "duration_ms": report.duration.as_millis() as u64,
        "metrics": report.metrics,
        "cursor_before": report.cursor_before,
        "cursor_after": report.cursor_after,
        "error": report.error.as_ref().map(|e| serde_json::json!({
            "kind": e.kind_name(),
            "message": redact(&e.to_string()),
        })),
    })
}

fn print_summary(report: &RunReport, redact: &lockstep_plugin_host::Redactor) {
    outln!(
        "sync {}  run {}  {}  in {}",
        report.sync,
        report.run_id,
        report.status.as_str(),
        human_duration(report.duration)
    );
    let entries = report.metrics.entries();
    let mut table = Table::new(entries.iter().map(|(name, _)| *name));
    table.row(entries.iter().map(|(_, v)| v.to_string()));
    outln!("{}", table.render());
    if report.cursor_before.is_some() || report.cursor_after.is_some() {
        let show = |c: &Option<serde_json::Value>| {
            c.as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(none)".into())
        };
        outln!(
            "cursor: {} -> {}",
            show(&report.cursor_before),
            show(&report.cursor_after)
        );
    }
    match &report.error {
        Some(e) if report.status == RunStatus::Held => {
            eprintln!("held: {}", redact(&e.to_string()))
        }
        Some(e) => eprintln!("error ({}): {}", e.kind_name(), redact(&e.to_string())),
        None => {}
    }
}
