//! `lockstep deletes list|approve|discard`: the deletes a mirror sync holds because they were
//! past its `max_delete_fraction`.
//!
//! Approving marks the held deletes approved and runs the sync once, so that they are applied
//! through the normal write path under the sync's lease (with `--no-run`, the next run applies
//! them). Discarding forgets them: the records stay in the destination. Both are recorded in
//! the state store's action log with who (`USER@host`) and when, as the daemon's status page
//! records its own.

use std::path::Path;

use lockstep_state::{DeleteStatus, PendingDeletes};

use super::{job, load_config, redactor, state, CliError, CmdResult};
use crate::app::{DeletesCommand, OutputFormat};
use crate::output::outln;

pub async fn run(config_path: &Path, command: DeletesCommand) -> CmdResult {
    let config = load_config(config_path)?;
    let redact = redactor(&config);
    match command {
        DeletesCommand::List {
            sync,
            sample,
            output,
        } => {
            job(&config, &sync)?;
            let state = state(&config).await?;
            let waiting = state.pending_deletes(&sync, sample).await?;
            state.close().await;
            if output == OutputFormat::Json {
                outln!("{}", redact(&serde_json::to_string_pretty(&waiting)?));
            } else {
                outln!("{}", redact(&describe(&waiting)));
            }
            Ok(())
        }
        DeletesCommand::Approve {
            sync,
            no_run,
            output,
        } => {
            job(&config, &sync)?;
            let state = state(&config).await?;
            let approved = state
                .set_pending_delete_status(
                    &sync,
                    &[DeleteStatus::Held],
                    DeleteStatus::Approved,
                    None,
                )
                .await?;
            let waiting = state.pending_deletes(&sync, 0).await?;
            if approved > 0 {
                record(
                    state.as_ref(),
                    "deletes-approve",
                    &sync,
                    &format!("approved {approved} held deletes"),
                )
                .await;
            }
            state.close().await;
            if waiting.approved == 0 {
                eprintln!("No held deletes for sync `{sync}`.");
                return Ok(());
            }
            eprintln!(
                "approved {approved} held deletes of sync `{sync}` ({} approved in all)",
                waiting.approved
            );
            if no_run {
                eprintln!("the next run of `{sync}` applies them");
                return Ok(());
            }
            eprintln!("running `{sync}` now to apply them");
            let result = super::run::run_loaded(&config, &sync, false, false, output).await;
            if let Err(CliError::Message(message)) = result {
                return Err(CliError::Message(format!(
                    "{message}\nthe deletes stay approved: the next run of `{sync}` applies them"
                )));
            }
            result
        }
        DeletesCommand::Discard { sync } => {
            job(&config, &sync)?;
            let state = state(&config).await?;
            let discarded = state
                .discard_pending_deletes(&sync, DeleteStatus::Held)
                .await?;
            if discarded > 0 {
                record(
                    state.as_ref(),
                    "deletes-discard",
                    &sync,
                    &format!("discarded {discarded} held deletes"),
                )
                .await;
            }
            state.close().await;
            if discarded == 0 {
                outln!("No held deletes for sync `{sync}`.");
            } else {
                outln!(
                    "discarded {discarded} held deletes of sync `{sync}`: those records stay in \
                     the destination. A reconciliation finds the ones the source no longer has \
                     again at its next run"
                );
            }
            Ok(())
        }
    }
}

/// Records a person's decision in the state store's action log (which the daemon's status
/// page shows), as `USER@host`. A failure to record is a warning: the decision stands.
pub(super) async fn record(
    state: &dyn lockstep_state::StateStore,
    action: &str,
    sync: &str,
    detail: &str,
) {
    let actor = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        lockstep_state::hostname()
    );
    let entry = lockstep_state::NewAction {
        actor: &actor,
        action,
        sync,
        detail,
    };
    if let Err(e) = state.record_action(&entry).await {
        eprintln!("warning: cannot record the action in the state store: {e}");
    }
}

/// The text `deletes list` prints.
fn describe(waiting: &PendingDeletes) -> String {
    let sync = &waiting.sync;
    if waiting.total() == 0 {
        return format!("No deletes wait for sync `{sync}`.");
    }
    let mut text = format!(
        "sync {sync}: {} deletes held, {} approved, {} pending",
        waiting.held, waiting.approved, waiting.pending
    );
    if let (Some(run), Some(since)) = (waiting.first_run, &waiting.since) {
        text.push_str(&format!(" (the oldest found by run {run} at {since})"));
    }
    text.push_str(&format!(
        "\nkeys{}: {}",
        if (waiting.sample.len() as u64) < waiting.total() {
            format!(" (first {})", waiting.sample.len())
        } else {
            String::new()
        },
        waiting.sample.join(", ")
    ));
    if waiting.held > 0 {
        text.push_str(&format!(
            "\napply them: lockstep deletes approve {sync}   (or lockstep run {sync} \
             --allow-mass-delete)\nkeep the records: lockstep deletes discard {sync}"
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_says_how_many_wait_and_how_to_approve() {
        let waiting = PendingDeletes {
            sync: "items".into(),
            held: 500,
            sample: vec!["[1]".into(), "[2]".into()],
            first_run: Some(3),
            since: Some("2026-01-01T00:00:00.000000Z".into()),
            ..Default::default()
        };
        let text = describe(&waiting);
        assert!(
            text.starts_with("sync items: 500 deletes held, 0 approved"),
            "{text}"
        );
        assert!(text.contains("keys (first 2): [1], [2]"), "{text}");
        assert!(text.contains("lockstep deletes approve items"), "{text}");
        assert_eq!(
            describe(&PendingDeletes::default()),
            "No deletes wait for sync ``."
        );
    }
}
