//! `lockstep cdc drop SYNC`: drops a retired cdc sync's replication slot and publication
//! through its source connector (the CLI never talks to the source system itself), then
//! resets the sync's checkpoint, and prints what was dropped.
//!
//! The engine does the work under the sync's lease (`Engine::cdc_drop`), so a run in progress
//! refuses the drop, naming who holds it. A publication that another cdc sync of the config
//! names too is kept. The drop is recorded in the state store's action log.

use std::path::Path;

use lockstep_core::protocol::CdcDropped;
use lockstep_core::SyncMode;
use lockstep_orchestrator::{Engine, RunOptions};
use serde_json::json;

use super::{job, load_config, redactor, registry_for, state, CliError, CmdResult};
use crate::app::{CdcCommand, OutputFormat};
use crate::output::{outln, Table};

pub async fn run(config_path: &Path, command: CdcCommand) -> CmdResult {
    match command {
        CdcCommand::Drop { sync, output } => drop(config_path, &sync, output).await,
    }
}

async fn drop(config_path: &Path, sync: &str, output: OutputFormat) -> CmdResult {
    let config = load_config(config_path)?;
    let job = job(&config, sync)?;
    let Some(cdc) = job
        .spec
        .cdc
        .as_ref()
        .filter(|_| job.spec.mode == SyncMode::Cdc)
    else {
        return Err(CliError::Message(format!(
            "sync `{sync}` is not a cdc sync (its mode is not \"cdc\"): it has no \
             replication slot to drop"
        )));
    };
    // Another cdc sync of the config on the same connection and slot would lose its slot too.
    let same_connection = |other: &lockstep_config::Sync| {
        other.spec.name != sync
            && other.spec.mode == SyncMode::Cdc
            && other.spec.source.connection == job.spec.source.connection
    };
    if let Some(other) = config
        .syncs
        .iter()
        .filter(|s| same_connection(s))
        .find(|s| s.spec.cdc.as_ref().is_some_and(|c| c.slot == cdc.slot))
    {
        return Err(CliError::Message(format!(
            "sync `{}` reads replication slot `{}` too: dropping it would take its changes \
             away. Give each sync its own slot (`slot` in [syncs.NAME.cdc]) before dropping",
            other.spec.name, cdc.slot
        )));
    }
    let shared_publication = config.syncs.iter().filter(|s| same_connection(s)).any(|s| {
        s.spec
            .cdc
            .as_ref()
            .is_some_and(|c| c.publication == cdc.publication)
    });

    let registry = registry_for(&config, &job);
    let state = state(&config).await?;
    let redact = redactor(&config);
    let engine = Engine {
        registry: &registry,
        state: state.as_ref(),
        redactor: redact.clone(),
    };
    let mut options = RunOptions::new();
    options.lease_ttl = config.lease_ttl;
    let result = engine.cdc_drop(&job, &options, shared_publication).await;
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            state.close().await;
            return Err(CliError::Message(redact(&format!("sync `{sync}`: {e}"))));
        }
    };
    let summary: Vec<String> = report
        .objects
        .iter()
        .map(|o| format!("{} {} `{}`", o.outcome, o.object, o.name))
        .collect();
    super::deletes::record(state.as_ref(), "cdc-drop", sync, &summary.join(", ")).await;
    state.close().await;

    if output == OutputFormat::Json {
        let value = json!({
            "sync": sync,
            "objects": report.objects,
            "checkpoint_reset": report.checkpoint_reset,
        });
        outln!("{}", redact(&serde_json::to_string_pretty(&value)?));
        return Ok(());
    }
    let mut table = Table::new(["OBJECT", "NAME", "OUTCOME", "DETAIL"]);
    for CdcDropped {
        object,
        name,
        outcome,
        detail,
    } in &report.objects
    {
        table.row([
            object.clone(),
            name.clone(),
            outcome.clone(),
            detail.clone(),
        ]);
    }
    outln!("{}", redact(&table.render()));
    if report.checkpoint_reset {
        outln!(
            "Reset the checkpoint and ledger of sync `{sync}`: if it stays in the config, its \
             next run creates a new slot and takes a new snapshot (reconciled against the \
             destination). Remove it from the config to retire it."
        );
    }
    Ok(())
}
