//! `lockstep runs [SYNC]`: run history, newest first (also while the config file is invalid:
//! see `history`).

use std::path::Path;
use std::time::Duration;

use super::{history, CmdResult};
use crate::app::OutputFormat;
use crate::output::{human_duration, outln, Table};

pub async fn run(
    config: &Path,
    sync: Option<&str>,
    limit: usize,
    output: OutputFormat,
    state_url: Option<&str>,
) -> CmdResult {
    let history = history::open(config, state_url).await?;
    let runs = history.state.runs(sync, limit).await?;
    history.state.close().await;
    if output == OutputFormat::Json {
        outln!("{}", serde_json::to_string_pretty(&runs)?);
        return Ok(());
    }
    if runs.is_empty() {
        outln!(
            "No runs yet{}.",
            sync.map(|s| format!(" of sync `{s}`")).unwrap_or_default()
        );
        return Ok(());
    }
    let mut table = Table::new([
        "RUN",
        "SYNC",
        "STATUS",
        "STARTED",
        "DURATION",
        "READ",
        "ADDED",
        "UPDATED",
        "UNCHANGED",
        "DELETED",
        "CONFLICTS",
        "REJECTED",
        "ERROR",
    ]);
    for r in &runs {
        let m = &r.metrics;
        table.row([
            r.id.to_string(),
            // A run of another kind than a sync's (a verify's repair) says so.
            if r.kind == lockstep_core::RUN_KIND_SYNC {
                r.sync.clone()
            } else {
                format!("{} ({})", r.sync, r.kind)
            },
            r.status.as_str().to_owned(),
            r.started_at.clone(),
            r.duration_ms
                .map(|ms| human_duration(Duration::from_millis(ms.max(0) as u64)))
                .unwrap_or_else(|| "-".into()),
            m.read.to_string(),
            m.added.to_string(),
            m.updated.to_string(),
            m.unchanged.to_string(),
            m.deleted.to_string(),
            m.conflicts.to_string(),
            m.rejected.to_string(),
            r.error
                .as_ref()
                .map(|e| {
                    format!(
                        "{}: {}",
                        r.error_kind.as_deref().unwrap_or("error"),
                        one_line(e)
                    )
                })
                .unwrap_or_default(),
        ]);
    }
    outln!("{}", table.render());
    Ok(())
}

fn one_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(99).collect::<String>())
    } else {
        line.to_owned()
    }
}
