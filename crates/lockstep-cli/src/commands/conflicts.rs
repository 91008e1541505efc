//! `lockstep conflicts list|show|resolve`: the conflicts of two-way syncs, and a person's
//! decision on the ones a sync's policy queued for review.

use std::path::Path;

use lockstep_state::{
    Conflict, ConflictFilter, ConflictResolution, ConflictStatus, DecideError, TakeSide,
};
use serde_json::{Map, Value};

use super::{load_config, redactor, state, CliError, CmdResult};
use crate::app::{ConflictsCommand, OutputFormat};
use crate::output::{outln, Table};

pub async fn run(config_path: &Path, command: ConflictsCommand) -> CmdResult {
    let config = load_config(config_path)?;
    let state = state(&config).await?;
    let redact = redactor(&config);
    match command {
        ConflictsCommand::List {
            sync,
            all,
            limit,
            output,
        } => {
            let conflicts = state
                .conflicts(&ConflictFilter {
                    sync,
                    statuses: if all {
                        Vec::new()
                    } else {
                        vec![ConflictStatus::Open, ConflictStatus::Resolved]
                    },
                    limit,
                })
                .await?;
            if output == OutputFormat::Json {
                outln!("{}", redact(&serde_json::to_string_pretty(&conflicts)?));
                return Ok(());
            }
            if conflicts.is_empty() {
                outln!(
                    "No conflicts{}.",
                    if all { "" } else { " waiting for a person" }
                );
                return Ok(());
            }
            let mut table = Table::new([
                "ID", "SYNC", "RUN", "KEY", "FIELDS", "POLICY", "DECISION", "STATUS",
            ]);
            for c in &conflicts {
                table.row([
                    c.id.to_string(),
                    c.sync.clone(),
                    c.run.to_string(),
                    c.key.clone(),
                    c.fields.join(", "),
                    c.policy.clone(),
                    c.decision.clone(),
                    c.status.to_string(),
                ]);
            }
            outln!("{}", redact(&table.render()));
            Ok(())
        }
        ConflictsCommand::Show { id, output } => {
            let conflict = find(state.as_ref(), id).await?;
            if output == OutputFormat::Json {
                outln!("{}", redact(&serde_json::to_string_pretty(&conflict)?));
            } else {
                outln!("{}", redact(&describe(&conflict)));
            }
            Ok(())
        }
        ConflictsCommand::Resolve {
            id,
            take,
            set,
            apply,
            output,
        } => {
            let conflict = find(state.as_ref(), id).await?;
            if conflict.status != ConflictStatus::Open {
                return Err(CliError::Message(format!(
                    "conflict {id} is {}, not open: only a conflict waiting for a person can be \
                     resolved",
                    conflict.status
                )));
            }
            let resolution = decide(&conflict, take.as_deref(), &set)?;
            state.resolve_conflict(id, &resolution).await?;
            super::deletes::record(
                state.as_ref(),
                "conflict-resolve",
                &conflict.sync,
                &format!("resolved conflict {id} ({})", resolution.decision),
            )
            .await;
            if output == OutputFormat::Json && !apply {
                // With --apply, the run's report is the one JSON document printed.
                let stored = find(state.as_ref(), id).await?;
                outln!("{}", redact(&serde_json::to_string_pretty(&stored)?));
            } else if output == OutputFormat::Text {
                outln!(
                    "conflict {id} of sync {} resolved ({}); {}",
                    conflict.sync,
                    resolution.decision,
                    if apply {
                        "applying it now"
                    } else {
                        "the sync's next run writes it to both sides"
                    }
                );
            }
            if apply {
                state.close().await;
                return super::run::run_loaded(&config, &conflict.sync, false, false, output).await;
            }
            Ok(())
        }
    }
}

async fn find(state: &dyn lockstep_state::StateStore, id: i64) -> Result<Conflict, CliError> {
    state.conflict(id).await?.ok_or_else(|| {
        CliError::Message(format!(
            "no conflict with id {id}; `lockstep conflicts list --all` shows them"
        ))
    })
}

/// The person's decision from `--take` and `--set` (built by the state store's `decide`, as
/// the daemon's status page builds its own).
fn decide(
    conflict: &Conflict,
    take: Option<&str>,
    set: &[String],
) -> Result<ConflictResolution, CliError> {
    let side = match take {
        Some("a") => Some(TakeSide::A),
        Some("b") => Some(TakeSide::B),
        Some(other) => {
            return Err(CliError::Message(format!(
                "--take `{other}`: write --take a or --take b"
            )))
        }
        None => None,
    };
    let mut assignments = Vec::with_capacity(set.len());
    for assignment in set {
        let (field, text) = assignment.split_once('=').ok_or_else(|| {
            CliError::Message(format!(
                "--set `{assignment}`: write FIELD=VALUE, e.g. --set 'phone=\"+1 555 0100\"'"
            ))
        })?;
        let value = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::from(text));
        assignments.push((field.to_owned(), value));
    }
    let by = format!(
        "{}@{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
        lockstep_state::hostname()
    );
    lockstep_state::decide(conflict, side, &assignments, by).map_err(|e| {
        CliError::Message(match e {
            DecideError::Nothing => {
                "say what to keep: --take a, --take b, or --set FIELD=VALUE (repeatable)".into()
            }
            DecideError::SideDeleted(side) => format!(
                "side {side} deleted the record, so there are no values to --set fields on; take \
                 the other side and --set on top of it"
            ),
            DecideError::UnknownField { field, fields } => {
                format!("--set `{field}`: the record has no such field; its fields are: {fields}")
            }
            other => other.to_string(),
        })
    })
}

/// A conflict as a person reads it: one line per field, base, a and b side by side.
fn describe(c: &Conflict) -> String {
    let mut out = format!(
        "conflict {} of sync {} (run {}), key {}\nstatus {}, policy {}, decision {}",
        c.id, c.sync, c.run, c.key, c.status, c.policy, c.decision
    );
    if let (Some(by), Some(at)) = (&c.resolved_by, &c.resolved_at) {
        out.push_str(&format!(", resolved by {by} at {at}"));
    }
    out.push_str(&format!("\nfound {}\n\n", c.created_at));
    let mut fields: Vec<&String> = [&c.base, &c.a, &c.b, &c.resolution]
        .into_iter()
        .flatten()
        .flat_map(Map::keys)
        .collect();
    fields.sort();
    fields.dedup();
    let cell = |m: &Option<Map<String, Value>>, deleted: &str, f: &str| match m {
        None => deleted.to_owned(),
        Some(m) => m.get(f).map_or(String::new(), Value::to_string),
    };
    let mut table = Table::new(["FIELD", "BASE", "A", "B", "RESOLUTION", ""]);
    for f in fields {
        let marker = if c.fields.contains(f) { "differs" } else { "" };
        let resolution = if c.resolution_deletes {
            "(deleted)".to_owned()
        } else {
            cell(&c.resolution, "", f)
        };
        table.row([
            f.clone(),
            cell(&c.base, "(new)", f),
            cell(&c.a, "(deleted)", f),
            cell(&c.b, "(deleted)", f),
            resolution,
            marker.to_owned(),
        ]);
    }
    out.push_str(&table.render());
    out
}
