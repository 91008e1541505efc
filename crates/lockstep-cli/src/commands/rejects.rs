//! `lockstep rejects list|show|retry`.

use std::path::Path;

use lockstep_core::SyncMode;
use lockstep_orchestrator::{Engine, RunOptions};
use lockstep_state::RejectedFilter;

use super::{job, load_config, redactor, registry_for, state, CliError, CmdResult};
use crate::app::{OutputFormat, RejectsCommand};
use crate::output::{outln, Table};

pub async fn run(config_path: &Path, command: RejectsCommand) -> CmdResult {
    let config = load_config(config_path)?;
    let state = state(&config).await?;
    let redact = redactor(&config);
    match command {
        RejectsCommand::List {
            sync,
            all,
            limit,
            output,
        } => {
            let records = state
                .rejected(&RejectedFilter {
                    sync,
                    pending_only: !all,
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            if output == OutputFormat::Json {
                outln!("{}", redact(&serde_json::to_string_pretty(&records)?));
                return Ok(());
            }
            if records.is_empty() {
                outln!("No rejected records{}.", if all { "" } else { " pending" });
                return Ok(());
            }
            let mut table = Table::new(["ID", "SYNC", "RUN", "KEY", "FIELD", "REASON", "RETRIED"]);
            for r in &records {
                table.row([
                    r.id.to_string(),
                    r.sync.clone(),
                    r.run.to_string(),
                    r.key.clone().unwrap_or_default(),
                    r.field.clone().unwrap_or_default(),
                    r.reason.clone(),
                    r.retried.clone().unwrap_or_default(),
                ]);
            }
            outln!("{}", redact(&table.render()));
            Ok(())
        }
        RejectsCommand::Show { id } => {
            let records = state
                .rejected(&RejectedFilter {
                    id: Some(id),
                    ..Default::default()
                })
                .await?;
            let Some(r) = records.first() else {
                return Err(CliError::Message(format!(
                    "no rejected record with id {id}; `lockstep rejects list --all` shows them"
                )));
            };
            outln!("{}", redact(&serde_json::to_string_pretty(r)?));
            Ok(())
        }
        RejectsCommand::Retry { sync, ids, output } => {
            let job = job(&config, &sync)?;
            let registry = registry_for(&config, &job);
            let engine = Engine {
                registry: &registry,
                state: state.as_ref(),
                redactor: redact.clone(),
            };
            let outcome = engine
                .retry_rejected(
                    &job,
                    &ids,
                    RunOptions {
                        lease_ttl: config.lease_ttl,
                        ..RunOptions::new()
                    },
                )
                .await
                .map_err(|e| CliError::Message(redact(&e.to_string())))?;
            if output == OutputFormat::Json {
                outln!("{}", redact(&serde_json::to_string_pretty(&outcome)?));
            } else if outcome.retried == 0 {
                outln!("No pending rejected records to retry for sync `{sync}`.");
            } else if job.spec.mode == SyncMode::TwoWay {
                outln!(
                    "ran two-way sync {} (run {}), which decides every pending rejected record                      of the sync again against both sides: of the {} asked for, {} delivered                      or settled (resolved), {} refused again (still pending, retried at every                      run)",
                    sync,
                    outcome.run_id,
                    outcome.retried,
                    outcome.succeeded,
                    outcome.failed.len()
                );
                for (id, reason) in &outcome.failed {
                    outln!("  {id}: {}", redact(reason));
                }
            } else {
                outln!(
                    "retried {} records of sync {} in run {} from their current source version: \
                     {} succeeded, {} failed again, {} no longer in the source (resolved, \
                     nothing written)",
                    outcome.retried,
                    sync,
                    outcome.run_id,
                    outcome.succeeded,
                    outcome.failed.len(),
                    outcome.gone.len()
                );
                for id in &outcome.gone {
                    outln!("  {id}: no longer in the source");
                }
                for (id, reason) in &outcome.failed {
                    outln!("  {id}: failed again: {}", redact(reason));
                }
            }
            if outcome.failed.is_empty() {
                Ok(())
            } else {
                Err(CliError::Reported(1))
            }
        }
    }
}
