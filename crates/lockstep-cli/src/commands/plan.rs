//! `lockstep plan SYNC`: what a run would do now, without writing anything.

use std::path::Path;

use lockstep_orchestrator::{Engine, PlanReport, RunOptions};

use super::{job, load_config, redactor, registry_for, state, CliError, CmdResult};
use crate::app::OutputFormat;
use crate::output::{outln, Table};

pub async fn run(config_path: &Path, sync: &str, output: OutputFormat) -> CmdResult {
    let config = load_config(config_path)?;
    let job = job(&config, sync)?;
    let registry = registry_for(&config, &job);
    let state = state(&config).await?;
    let redactor = redactor(&config);
    let engine = Engine {
        registry: &registry,
        state: state.as_ref(),
        redactor: redactor.clone(),
    };
    let report = engine
        .plan(&job, RunOptions::new())
        .await
        .map_err(|e| CliError::Message(redactor(&e.to_string())))?;
    match output {
        OutputFormat::Json => outln!("{}", redactor(&serde_json::to_string_pretty(&report)?)),
        OutputFormat::Text => outln!("{}", redactor(&render(&report))),
    }
    Ok(())
}

fn render(report: &PlanReport) -> String {
    let mut out = format!("plan for sync {} (nothing was written)\n", report.sync);
    let entries = report.metrics.entries();
    let mut table = Table::new(entries.iter().map(|(name, _)| *name));
    table.row(entries.iter().map(|(_, v)| v.to_string()));
    out.push_str(&table.render());
    if !report.adds.is_empty() {
        out.push_str(&format!("\n\nwould add (first {}):", report.adds.len()));
        for add in &report.adds {
            out.push_str(&format!("\n  + {}", serde_json::Value::Object(add.clone())));
        }
    }
    if !report.updates.is_empty() {
        out.push_str(&format!(
            "\n\nwould update (first {}):",
            report.updates.len()
        ));
        for update in &report.updates {
            out.push_str(&format!("\n  ~ {}", update.key));
            for change in &update.changes {
                let before = change
                    .before
                    .as_ref()
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "?".into());
                out.push_str(&format!(
                    "\n      {}: {} -> {}",
                    change.field, before, change.after
                ));
            }
        }
    }
    if !report.deletes.is_empty() && report.held_deletes > 0 {
        out.push_str(&format!(
            "\n\nwould hold {} deletes, past max_delete_fraction (first {}):",
            report.held_deletes,
            report.deletes.len()
        ));
    } else if !report.deletes.is_empty() {
        out.push_str(&format!(
            "\n\nwould delete (first {}):",
            report.deletes.len()
        ));
        for key in &report.deletes {
            out.push_str(&format!("\n  - {key}"));
        }
    }
    if !report.rejected.is_empty() {
        out.push_str(&format!(
            "\n\nwould reject (first {}):",
            report.rejected.len()
        ));
        for r in &report.rejected {
            out.push_str(&format!(
                "\n  ! {} {}: {}",
                r.key.as_deref().unwrap_or("(no key)"),
                r.field.as_deref().unwrap_or(""),
                r.reason
            ));
        }
    }
    for note in &report.notes {
        out.push_str(&format!("\n\nnote: {note}"));
    }
    out
}
