//! `lockstep verify SYNC`: whether the sync's two systems agree (counts, freshness, and the
//! records missing, extra or different in the destination), and with `--repair` a run of kind
//! `verify-repair` that fixes them.
//!
//! Invariants:
//! - Exit codes: 0 the systems agree (after a repair that converged, too), 1 they differ,
//!   2 verify itself failed (a bad config, an unreachable system, a failed repair).
//! - Everything printed goes through the config's redactor.

use std::path::Path;

use lockstep_core::RunStatus;
use lockstep_orchestrator::{Engine, RunOptions, VerifyOptions, VerifyReport};

use super::{
    config_from_daemon, job, load_config, redactor, registry_for, state, CliError, CmdResult,
};
use crate::app::OutputFormat;
use crate::output::{outln, Table};

/// Exit code when the systems differ.
pub const DIFFER_EXIT_CODE: u8 = 1;
/// Exit code when verify itself failed.
pub const FAILED_EXIT_CODE: u8 = 2;

/// Verifies `sync` of the config at `config_path`, or, with `from_daemon`, of the config the
/// daemon sends on stdin (see [`config_from_daemon`]).
pub async fn run(
    config_path: &Path,
    from_daemon: bool,
    sync: &str,
    sample: usize,
    repair: bool,
    allow_mass_delete: bool,
    output: OutputFormat,
) -> CmdResult {
    let loaded = if from_daemon {
        config_from_daemon(config_path)
    } else {
        load_config(config_path)
    };
    let result = match loaded {
        Ok(config) => verify(&config, sync, sample, repair, allow_mass_delete, output).await,
        Err(e) => Err(e),
    };
    match result {
        Err(CliError::Message(message)) => {
            eprintln!("error: {message}");
            Err(CliError::Reported(FAILED_EXIT_CODE))
        }
        // A config that does not load was reported with exit code 2 already.
        other => other,
    }
}

async fn verify(
    config: &lockstep_config::Config,
    sync: &str,
    sample: usize,
    repair: bool,
    allow_mass_delete: bool,
    output: OutputFormat,
) -> CmdResult {
    let job = job(config, sync)?;
    let registry = registry_for(config, &job);
    let state = state(config).await?;
    let redactor = redactor(config);
    let engine = Engine {
        registry: &registry,
        state: state.as_ref(),
        redactor: redactor.clone(),
    };
    let mut run = RunOptions::new();
    run.lease_ttl = config.lease_ttl;
    run.allow_mass_delete = allow_mass_delete;
    let report = engine
        .verify(
            &job,
            VerifyOptions {
                // JSON lists everything; text shows samples.
                sample: (output == OutputFormat::Text).then_some(sample),
                repair,
                run,
            },
        )
        .await
        .map_err(|e| CliError::Message(redactor(&e.to_string())))?;
    match output {
        OutputFormat::Json => outln!("{}", redactor(&serde_json::to_string_pretty(&report)?)),
        OutputFormat::Text => {
            let mut text = render(&report);
            if job.spec.mode == lockstep_core::SyncMode::TwoWay && !report.agrees() {
                // A two-way sync is not repaired by copying one side over the other.
                if let Some(at) = text.find("\n\nrepair with") {
                    text.truncate(at);
                }
                text.push_str(&format!(
                    "\n\nsync {sync} is two-way: `lockstep run {sync}` brings the sides \
                     together, and `lockstep conflicts list {sync}` shows the records waiting \
                     for a decision"
                ));
            }
            outln!("{}", redactor(&text))
        }
    }
    exit_code(&report)
}

/// 0 when the systems agree or a repair made them agree, 1 when they differ, 2 when a repair
/// failed.
fn exit_code(report: &VerifyReport) -> CmdResult {
    if report.agrees() {
        return Ok(());
    }
    match &report.repair {
        Some(r) if r.status == RunStatus::Failed => Err(CliError::Reported(FAILED_EXIT_CODE)),
        Some(r)
            if r.status == RunStatus::Succeeded
                && r.metrics.rejected == 0
                && report.duplicates == 0 =>
        {
            Ok(())
        }
        _ => Err(CliError::Reported(DIFFER_EXIT_CODE)),
    }
}

fn render(report: &VerifyReport) -> String {
    let mut out = format!(
        "verify {}: {}\n",
        report.sync,
        if report.agrees() {
            "the systems agree".to_owned()
        } else {
            format!(
                "{} missing in the destination, {} extra, {} different{}",
                report.missing,
                report.extra,
                report.different,
                if report.duplicates > 0 {
                    format!(", {} keys held twice by the destination", report.duplicates)
                } else {
                    String::new()
                }
            )
        }
    );
    let cursor = |v: &Option<serde_json::Value>| {
        v.as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut table = Table::new(["side", "records", "counted by", "newest cursor"]);
    for (name, side) in [
        ("source", &report.source),
        ("destination", &report.destination),
    ] {
        table.row([
            name.to_owned(),
            side.count.to_string(),
            side.counted_by.to_owned(),
            cursor(&side.newest_cursor),
        ]);
    }
    out.push_str(&table.render());
    match &report.last_success {
        Some(last) => out.push_str(&format!(
            "\nlast successful run: {} ({}){}",
            last.run_id,
            last.finished_at.as_deref().unwrap_or("-"),
            report
                .seconds_since_last_success
                .map(|s| format!(", {s} s ago"))
                .unwrap_or_default()
        )),
        None => out.push_str("\nlast successful run: none"),
    }
    if let Some(lag) = report.cursor_lag_seconds {
        out.push_str(&format!(
            "\nlag: the destination's newest cursor is {lag} s behind the source's"
        ));
    }
    if report.unmappable > 0 {
        out.push_str(&format!(
            "\nnote: {} source records cannot be mapped and were not compared (see `lockstep \
             rejects list {}`)",
            report.unmappable, report.sync
        ));
    }
    if !report.missing_records.is_empty() {
        out.push_str(&format!(
            "\n\nmissing in the destination (first {}):",
            report.missing_records.len()
        ));
        for r in &report.missing_records {
            out.push_str(&format!(
                "\n  + {} {}",
                r.key,
                serde_json::Value::Object(r.record.clone())
            ));
        }
    }
    if !report.extra_records.is_empty() {
        out.push_str(&format!(
            "\n\nextra in the destination (first {}):",
            report.extra_records.len()
        ));
        for r in &report.extra_records {
            out.push_str(&format!(
                "\n  - {} {}",
                r.key,
                serde_json::Value::Object(r.record.clone())
            ));
        }
    }
    if !report.different_records.is_empty() {
        out.push_str(&format!(
            "\n\ndifferent (first {}):",
            report.different_records.len()
        ));
        for r in &report.different_records {
            out.push_str(&format!("\n  ~ {}", r.key));
            for f in &r.fields {
                out.push_str(&format!(
                    "\n      {}: source {} destination {}",
                    f.field, f.source, f.destination
                ));
            }
        }
    }
    if !report.duplicate_keys.is_empty() {
        out.push_str(&format!(
            "\n\nheld twice by the destination (first {}): {}",
            report.duplicate_keys.len(),
            report.duplicate_keys.join(", ")
        ));
    }
    if let Some(repair) = &report.repair {
        let m = &repair.metrics;
        out.push_str(&format!(
            "\n\nrepair: run {} {}: added {}, updated {}, deleted {}, rejected {}",
            repair.run_id,
            repair.status.as_str(),
            m.added,
            m.updated,
            m.deleted,
            m.rejected
        ));
        if let Some(held) = &repair.held {
            out.push_str(&format!("\nheld: {held}"));
        }
    } else if !report.agrees() {
        out.push_str(&format!(
            "\n\nrepair with `lockstep verify {} --repair`",
            report.sync
        ));
    }
    out
}
