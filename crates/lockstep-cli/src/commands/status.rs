//! `lockstep status`: every sync of the config with its schedule, its next run (as the
//! schedule computes it now, before jitter) and its last run's status and counts.

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use lockstep_daemon::schedule::Plan;
use serde_json::json;

use super::{load_config, state, CliError, CmdResult};
use crate::app::OutputFormat;
use crate::output::{human_duration, Table};

pub async fn run(config_path: &Path, output: OutputFormat) -> CmdResult {
    let config = load_config(config_path)?;
    let state = state(&config).await?;
    let now = Utc::now();
    let mut rows = Vec::with_capacity(config.syncs.len());
    for sync in &config.syncs {
        let name = sync.name();
        let plan = match &sync.schedule {
            Some(schedule) => Some(
                Plan::new(schedule)
                    .map_err(|e| CliError::Message(format!("sync `{name}`: {e}")))?,
            ),
            None => None,
        };
        let next = plan
            .as_ref()
            .filter(|_| sync.enabled)
            .and_then(|p| p.next_after(now));
        let last = state.runs(Some(name), 1).await?.into_iter().next();
        let exit_detail = match &last {
            Some(run) => state.run_exit_detail(run.id).await?,
            None => None,
        };
        rows.push((sync, plan, next, last, exit_detail));
    }
    state.close().await;

    if output == OutputFormat::Json {
        let list: Vec<_> = rows
            .iter()
            .map(|(sync, plan, next, last, exit_detail)| {
                json!({
                    "name": sync.name(),
                    "enabled": sync.enabled,
                    "schedule": plan.as_ref().map(|p| p.describe()),
                    "timezone": sync.schedule.as_ref().map(|s| s.timezone.as_str()),
                    "next_run": next.map(|t| t.to_rfc3339()),
                    "last_run": last.as_ref().map(|r| {
                        let mut value = serde_json::to_value(r).unwrap_or_default();
                        value["exit_detail"] = json!(exit_detail);
                        value
                    }),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("No syncs in {}.", config.path.display());
        return Ok(());
    }
    let mut table = Table::new([
        "SYNC", "SCHEDULE", "NEXT RUN", "LAST RUN", "STATUS", "STARTED", "DURATION", "READ",
        "ADDED", "UPDATED", "DELETED", "REJECTED", "ERROR",
    ]);
    for (sync, plan, next, last, _) in &rows {
        let schedule = match plan {
            Some(p) => p.describe().to_owned(),
            None => "- (run by hand)".to_owned(),
        };
        let next = if !sync.enabled {
            "disabled".to_owned()
        } else {
            next.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                .unwrap_or_else(|| "-".into())
        };
        let mut row = vec![sync.name().to_owned(), schedule, next];
        match last {
            Some(r) => {
                let m = &r.metrics;
                row.extend([
                    r.id.to_string(),
                    r.status.as_str().to_owned(),
                    r.started_at.clone(),
                    r.duration_ms
                        .map(|ms| human_duration(Duration::from_millis(ms.max(0) as u64)))
                        .unwrap_or_else(|| "-".into()),
                    m.read.to_string(),
                    m.added.to_string(),
                    m.updated.to_string(),
                    m.deleted.to_string(),
                    m.rejected.to_string(),
                    r.error
                        .as_ref()
                        .map(|e| {
                            format!(
                                "{}: {}",
                                r.error_kind.as_deref().unwrap_or("error"),
                                first_line(e)
                            )
                        })
                        .unwrap_or_default(),
                ]);
            }
            None => {
                row.extend(["-", "never run", "", "", "", "", "", "", "", ""].map(String::from))
            }
        }
        table.row(row);
    }
    println!("{}", table.render());
    Ok(())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    if line.chars().count() > 100 {
        format!("{}…", line.chars().take(99).collect::<String>())
    } else {
        line.to_owned()
    }
}
