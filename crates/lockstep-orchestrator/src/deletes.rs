//! The delete phase of a mirror run: every delete a run finds (a tombstone in a batch, a key
//! that reconciliation finds only in the destination) is recorded as pending in the state
//! store by the sink (`Sink::wait_deletes`), never applied where it is found. When the read and the reconciliation are done, all
//! waiting deletes are checked together against the sync's `max_delete_fraction`; within it
//! (or with `--allow-mass-delete`) they are approved and applied, past it they are held for a
//! person, and the run ends `held`.
//!
//! Invariants:
//! - No delete reaches the destination before the guard has counted every delete of the run.
//! - The ledger never claims a record the destination may no longer hold: a page of deletes
//!   leaves the ledger (one state commit) before the destination deletes it, and leaves the
//!   pending table only after the destination has flushed. A crash in between leaves the
//!   deletes `approved`; the next run applies them again, which is harmless.
//! - Memory stays bounded: deletes are applied a page (`batch_size` keys) at a time, read back
//!   from the state store in key order.

use lockstep_core::protocol::{FieldInfo, ReadMode, ReadRequest, Role};
use lockstep_plugin_core::rows::batch_from_rows;
use lockstep_state::{BatchCommit, DeleteOrigin, DeleteStatus, PendingDeleteChange};
use serde_json::{Map, Value};

use crate::context::Context;
use crate::error::EngineError;
use crate::faults::{fault_point, FaultPoint};
use crate::job::RunState;
use crate::sink::Sink;

/// How many keys `lockstep deletes list` and the held message show.
pub const SAMPLE_KEYS: usize = 10;

/// Ends the delete phase of a completed mirror run: checks the waiting deletes against the
/// guard, then applies the approved ones. `destination_size` is the number of records in the
/// destination when reconciliation counted them in this run. Sets `run.held` when the guard
/// held deletes.
pub(crate) async fn finish<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    allow_mass_delete: bool,
    destination_size: Option<u64>,
) -> Result<(), EngineError> {
    let state = ctx.services.state;
    let spec = &ctx.job.spec;
    let sync = spec.name.as_str();
    let token = ctx.lease_token();
    let waiting = state.pending_deletes(sync, SAMPLE_KEYS).await?;
    if waiting.total() == 0 {
        return Ok(());
    }
    let unapproved = waiting.pending + waiting.held;
    if unapproved > 0 {
        let size = match destination_size {
            Some(n) => Some(n),
            None => guard_size(ctx, unapproved).await?,
        };
        let limit = spec.delete.max_delete_fraction;
        let within = size.is_some_and(|n| unapproved as f64 <= limit * n as f64);
        if within || allow_mass_delete {
            state
                .set_pending_delete_status(
                    sync,
                    &[DeleteStatus::Pending, DeleteStatus::Held],
                    DeleteStatus::Approved,
                    token,
                )
                .await?;
        } else {
            state
                .set_pending_delete_status(
                    sync,
                    &[DeleteStatus::Pending],
                    DeleteStatus::Held,
                    token,
                )
                .await?;
            run.held = Some(held_message(ctx, unapproved, size, &waiting.sample));
        }
    }
    apply_approved(ctx, sink, run).await
}

/// What a held run says: how many deletes wait, why, and how to approve or drop them.
fn held_message(ctx: &Context<'_>, held: u64, size: Option<u64>, sample: &[String]) -> String {
    let spec = &ctx.job.spec;
    let name = &spec.name;
    let limit = 100.0 * spec.delete.max_delete_fraction;
    let why = match size {
        Some(size) => format!(
            "this run would delete {held} of the {size} records in `{}` ({:.1}%), more than \
             max_delete_fraction allows ({limit:.1}%)",
            spec.destination.stream,
            100.0 * held as f64 / size.max(1) as f64,
        ),
        None => format!(
            "this run would delete {held} records from `{}`, whose size cannot be read to \
             check max_delete_fraction ({limit:.1}%): its connector cannot read",
            spec.destination.stream
        ),
    };
    format!(
        "sync `{name}`: {held} deletes are held: {why}. The run's other changes were committed; \
         none of these records was deleted. Keys: {}{}. See them with `lockstep deletes list \
         {name}`; apply them with `lockstep deletes approve {name}` (or `lockstep run {name} \
         --allow-mass-delete`), or keep the records with `lockstep deletes discard {name}`",
        sample.join(", "),
        if (sample.len() as u64) < held {
            ", ..."
        } else {
            ""
        }
    )
}

/// Applies every approved delete, a page at a time.
async fn apply_approved<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
) -> Result<(), EngineError> {
    let state = ctx.services.state;
    let spec = &ctx.job.spec;
    let sync = spec.name.as_str();
    let token = ctx.lease_token();
    let key_fields = key_fields(ctx)?;
    let mut after: Option<String> = None;
    let mut page = 0u64;
    let mut applied = 0u64;
    loop {
        let keys = state
            .pending_delete_keys(
                sync,
                Some(DeleteStatus::Approved),
                None,
                after.as_deref(),
                spec.batch_size,
            )
            .await?;
        let Some(last) = keys.last() else { break };
        after = Some(last.clone());
        page += 1;
        let batch = keys_batch(&key_fields, ctx.mapper.key(), &keys)?;
        if spec.use_ledger {
            // The ledger stops claiming these records before the destination loses them, so
            // that a crash after the delete cannot leave a ledger entry for a record the
            // destination no longer holds (a record coming back would be skipped as unchanged).
            sink.commit(&BatchCommit {
                sync,
                run: run.run_id,
                lease_token: token,
                ledger_upserts: &[],
                ledger_keys_new: false,
                ledger_deletes: &keys,
                checkpoint: None,
                metrics: &run.metrics,
                rejected: &[],
            })
            .await?;
        }
        fault_point(FaultPoint::BeforeDelete, page);
        let outcome = sink.delete(batch).await?;
        sink.flush().await?;
        fault_point(FaultPoint::AfterDelete, page);
        let deleted = outcome.deleted.unwrap_or(keys.len() as u64);
        run.metrics.deleted += deleted;
        applied += deleted;
        state
            .change_pending_deletes(&PendingDeleteChange {
                sync,
                run: run.run_id,
                lease_token: token,
                origin: DeleteOrigin::Tombstone,
                add: &[],
                cancel: &keys,
            })
            .await?;
    }
    if page > 0 {
        tracing::info!(deleted = applied, pages = page, "deletes applied");
    }
    Ok(())
}

/// The size the mass-delete guard compares `deletes` with, when no reconciliation counted the
/// destination: the ledger's entries for a sync that keeps one, else the destination's
/// records ([`read_destination_size`]).
///
/// The ledger is counted only as far as the guard needs: past `deletes / max_delete_fraction`
/// entries the deletes are within the guard whatever the rest holds, so a large ledger is not
/// read in full (a count of a million entries costs about 0.1 s). Below that the count is
/// exact, and it is what a held run's message shows.
pub(crate) async fn guard_size(
    ctx: &Context<'_>,
    deletes: u64,
) -> Result<Option<u64>, EngineError> {
    let spec = &ctx.job.spec;
    if !spec.use_ledger {
        return read_destination_size(ctx).await;
    }
    let state = ctx.services.state;
    let fraction = spec.delete.max_delete_fraction;
    // One entry more than the bound, so that rounding cannot put a count that reached it on
    // the wrong side of the limit.
    let enough = if fraction.is_finite() && fraction > 0.0 {
        ((deletes as f64 / fraction).ceil() as u64).saturating_add(1)
    } else {
        u64::MAX
    };
    Ok(Some(state.ledger_count_at_most(&spec.name, enough).await?))
}

/// How many records the destination stream holds, by reading its keys; `None` when its
/// connector cannot read or the stream does not exist. For syncs without a ledger, whose
/// guard needs the destination's size when no reconciliation counted it.
pub(crate) async fn read_destination_size(ctx: &Context<'_>) -> Result<Option<u64>, EngineError> {
    let services = ctx.services;
    let job = ctx.job;
    let spec = &job.spec;
    if !services
        .registry
        .supports(&job.destination.connector, Role::Source)
    {
        return Ok(None);
    }
    let mut destination = services.open_source(&job.destination).await?;
    if destination
        .discover()
        .await?
        .stream(&spec.destination.stream)
        .is_none()
    {
        return Ok(None);
    }
    let mut reader = destination
        .read(&ReadRequest {
            stream: spec.destination.stream.clone(),
            mode: ReadMode::Full,
            fields: Some(ctx.mapper.key().to_vec()),
            key: ctx.mapper.key().to_vec(),
            batch_size: Some(spec.batch_size.max(50_000)),
            ..Default::default()
        })
        .await?;
    let mut size = 0u64;
    while let Some((batch, _)) = reader.next().await? {
        size += batch.num_rows() as u64;
    }
    Ok(Some(size))
}

/// The mapped key fields, in key order.
fn key_fields(ctx: &Context<'_>) -> Result<Vec<FieldInfo>, EngineError> {
    let targets = ctx.mapper.target_fields();
    ctx.mapper
        .key()
        .iter()
        .map(|name| {
            targets
                .iter()
                .find(|f| &f.name == name)
                .cloned()
                .ok_or_else(|| {
                    EngineError::Internal(format!("key field `{name}` is not a mapped field"))
                })
        })
        .collect()
}

/// A batch of key columns from stored record keys (canonical JSON arrays of the key values).
fn keys_batch(
    fields: &[FieldInfo],
    names: &[String],
    keys: &[String],
) -> Result<arrow::array::RecordBatch, EngineError> {
    let mut rows = Vec::with_capacity(keys.len());
    for key in keys {
        let values = match serde_json::from_str::<Value>(key) {
            Ok(Value::Array(values)) if values.len() == names.len() => values,
            _ => {
                return Err(EngineError::Internal(format!(
                    "the waiting delete of key `{key}` does not match the sync's key ({}); \
                     if the key changed, drop the waiting deletes with `lockstep deletes \
                     discard`",
                    names.join(", ")
                )))
            }
        };
        rows.push(names.iter().cloned().zip(values).collect::<Map<_, _>>());
    }
    batch_from_rows(fields, &rows).map_err(|e| {
        EngineError::Internal(format!(
            "the keys of waiting deletes cannot be turned into a batch: {e}"
        ))
    })
}
