//! `lockstep status`: every sync of the config with its schedule, its next run (as the
//! schedule computes it now, before jitter) and its last run's status and counts. While the
//! config file is invalid, the syncs found in the run history with their last runs (see
//! `history`).

use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use lockstep_daemon::cdc_slot::{human_bytes, SlotStatus};
use lockstep_daemon::schedule::Plan;
use serde_json::json;

use super::{history, CliError, CmdResult};
use crate::app::OutputFormat;
use crate::output::{human_duration, outln, Table};

/// One line of the status: a sync of the config, or, while the config file is invalid, a
/// sync found in the run history (whose schedule is then unknown).
struct Row<'a> {
    name: String,
    sync: Option<&'a lockstep_config::Sync>,
    plan: Option<Plan>,
    next: Option<chrono::DateTime<Utc>>,
    last: Option<lockstep_core::RunSummary>,
    exit_detail: Option<String>,
    /// A cdc sync's replication slot, from its committed checkpoint.
    cdc: Option<SlotStatus>,
}

/// How many recent runs are searched for the syncs to show while the config is invalid.
const HISTORY_SCAN: usize = 10_000;

pub async fn run(config_path: &Path, output: OutputFormat, state_url: Option<&str>) -> CmdResult {
    let history = history::open(config_path, state_url).await?;
    let state = history.state;
    let now = Utc::now();
    let mut rows = Vec::new();
    match &history.config {
        Some(config) => {
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
                let cdc = if sync.spec.mode == lockstep_core::SyncMode::Cdc {
                    state
                        .checkpoint(name)
                        .await?
                        .as_ref()
                        .and_then(SlotStatus::from_checkpoint)
                } else {
                    None
                };
                rows.push(Row {
                    name: name.to_owned(),
                    sync: Some(sync),
                    plan,
                    next,
                    last,
                    exit_detail: None,
                    cdc,
                });
            }
        }
        None => {
            // Newest first: the first run seen of each sync is its last.
            let mut seen = std::collections::BTreeSet::new();
            for run in state.runs(None, HISTORY_SCAN).await? {
                if seen.insert(run.sync.clone()) {
                    rows.push(Row {
                        name: run.sync.clone(),
                        sync: None,
                        plan: None,
                        next: None,
                        last: Some(run),
                        exit_detail: None,
                        cdc: None,
                    });
                }
            }
            rows.sort_by(|a, b| a.name.cmp(&b.name));
        }
    }
    for row in &mut rows {
        if let Some(run) = &row.last {
            row.exit_detail = state.run_exit_detail(run.id).await?;
        }
    }
    state.close().await;

    if output == OutputFormat::Json {
        let list: Vec<_> = rows
            .iter()
            .map(|row| {
                json!({
                    "name": row.name,
                    "enabled": row.sync.map(|s| s.enabled),
                    "schedule": row.plan.as_ref().map(|p| p.describe()),
                    "timezone": row.sync.and_then(|s| s.schedule.as_ref()).map(|s| s.timezone.as_str()),
                    "next_run": row.next.map(|t| t.to_rfc3339()),
                    "last_run": row.last.as_ref().map(|r| {
                        let mut value = serde_json::to_value(r).unwrap_or_default();
                        value["exit_detail"] = json!(row.exit_detail);
                        value
                    }),
                    "cdc": row.cdc.as_ref().map(|c| json!({
                        "slot": c.slot,
                        "retained_wal_bytes": c.retained_wal_bytes,
                        "caught_up_at": c.caught_up_at.map(|t| t.to_rfc3339()),
                        "lag_seconds": c.lag_seconds(now),
                    })),
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    if rows.is_empty() {
        match &history.config {
            Some(config) => outln!("No syncs in {}.", config.path.display()),
            None => outln!("No runs in the state store."),
        }
        return Ok(());
    }
    let mut table = Table::new([
        "SYNC", "SCHEDULE", "NEXT RUN", "LAST RUN", "STATUS", "STARTED", "DURATION", "READ",
        "ADDED", "UPDATED", "DELETED", "REJECTED", "ERROR",
    ]);
    for Row {
        name,
        sync,
        plan,
        next,
        last,
        ..
    } in &rows
    {
        let (schedule, next) = match sync {
            // The config is invalid: its schedules are unknown.
            None => ("? (config invalid)".to_owned(), "?".to_owned()),
            Some(sync) => (
                match plan {
                    Some(p) => p.describe().to_owned(),
                    None => "- (run by hand)".to_owned(),
                },
                if !sync.enabled {
                    "disabled".to_owned()
                } else {
                    next.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                        .unwrap_or_else(|| "-".into())
                },
            ),
        };
        let mut row = vec![name.clone(), schedule, next];
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
    outln!("{}", table.render());
    for row in &rows {
        let Some(cdc) = &row.cdc else { continue };
        let lag = match cdc.lag_seconds(now) {
            Some(seconds) => format!(
                "lag {} (the destination has every change committed before {})",
                human_duration(Duration::from_millis((seconds * 1000.0) as u64)),
                cdc.caught_up_at
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
                    .unwrap_or_default()
            ),
            None => "lag unknown until the first snapshot ends".to_owned(),
        };
        outln!(
            "cdc {}: replication slot `{}` retained {} of WAL at the last run's start; {lag}",
            row.name,
            cdc.slot,
            human_bytes(cdc.retained_wal_bytes)
        );
    }
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
