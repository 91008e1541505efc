//! Key-set reconciliation for mirror mode: destination records whose key the source no
//! longer has are recorded as pending deletes, which the end of the run checks against the
//! mass-delete guard with every other delete of the run before applying any (see `deletes`).
//!
//! When both connectors summarize key sets and the summaries are equal, nothing is streamed
//! (`summary`). Otherwise both key sets are streamed, one of two ways:
//! - a key of one integer field is merged: both sides are read at once in ascending key
//!   order and walked side by side (`merge`), holding only the batch in hand; a side that
//!   turns out not to read in key order makes the merge decline, and
//! - the hash method, for every other key and after a decline: the source's keys are kept
//!   as sorted 64-bit hashes (8 bytes a record) and each destination key is looked up among
//!   them, so memory stays at a few bytes per record whatever the orderings and collations
//!   of the two systems. A hash collision can only spare a record that should have been
//!   deleted (never delete one that should not), and at 64 bits it is vanishingly rare.

use arrow::array::RecordBatch;
use lockstep_core::protocol::{ReadMode, ReadRequest, Role};
use lockstep_core::record_keys;
use lockstep_plugin_core::source_rejects::is_rejects_batch;
use lockstep_state::DeleteOrigin;

use crate::context::Context;
use crate::diff::KeySet;
use crate::error::EngineError;
use crate::job::{RunState, SyncJob};
use crate::services::Services;
use crate::sink::Sink;

mod merge;

fn marker(job: &SyncJob) -> String {
    format!("{}/reconciled", job.spec.name)
}

/// Whether this run should reconcile, by the sync's `reconcile_every`.
pub(crate) async fn due(
    services: Services<'_>,
    job: &SyncJob,
    run_id: i64,
) -> Result<bool, EngineError> {
    let every = job.spec.delete.reconcile_every;
    if every <= 1 {
        return Ok(every == 1);
    }
    let last = services
        .state
        .checkpoint(&marker(job))
        .await?
        .and_then(|v| v.get("run").and_then(|r| r.as_i64()));
    let Some(last) = last else { return Ok(true) };
    let recent = services
        .state
        .runs(Some(&job.spec.name), every as usize)
        .await?;
    let since = recent
        .iter()
        .filter(|r| r.id > last && r.id <= run_id)
        .count();
    Ok(since >= every as usize)
}

/// Finds the destination's keys that the source no longer has and records them as pending
/// deletes (a plan counts them). Returns how many records the destination holds, when it
/// could be read. `early` is the source's key-set summary when the run took it while
/// writing its changes (`summary::source_summary`), `written` the destination's when the
/// run took it once they were written (`summary::destination_summary`).
pub(crate) async fn run<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    early: Option<crate::summary::TakenSummary>,
    written: Option<crate::summary::TakenSummary>,
) -> Result<Option<u64>, EngineError> {
    let services = ctx.services;
    let job = ctx.job;
    let spec = &job.spec;
    if !services
        .registry
        .supports(&job.destination.connector, Role::Source)
    {
        return Err(EngineError::Config(format!(
            "sync `{}`: mirror reconciliation reads the destination's keys, but connector `{}` \
             cannot be read; set reconcile_every = 0 and mark deletes with a `tombstone` field",
            spec.name, job.destination.connector
        )));
    }
    // With deletes waiting, the keys are streamed even when the key sets look equal: the
    // streaming pass is what cancels a waiting delete whose record the source has again.
    if !run.deletes_waiting && crate::summary::key_sets_match(ctx, early, written).await {
        tracing::info!("reconciliation: the key sets' summaries match, nothing to delete");
        // A plan records nothing; a run records that it reconciled.
        if sink.writes() {
            mark_done(ctx, run).await?;
        }
        return Ok(None);
    }
    let read_size = spec.batch_size.max(50_000);
    let key_mapper = ctx.mapper.key_mapper();
    // A key of one integer field: both key orders are the same order, and the two reads
    // are merged as they arrive (see `merge`). A plan does not merge: it counts what it
    // records, and a merge that declines midway hands over to the hash method.
    if sink.writes() && !run.deletes_waiting && ctx.mapper.key().len() == 1 {
        if let Some(in_destination) = merge_keys(ctx, sink, run, &key_mapper, read_size).await? {
            mark_done(ctx, run).await?;
            return Ok(Some(in_destination));
        }
    }

    // The source's keys, as a set of hashes, computed through the mapping of the key alone so
    // that computed keys (`lower(trim(email))`) compare equal to what the runs wrote.
    let (mut source, _) = services.open_source_stream(job).await?;
    let mut request = ReadRequest {
        stream: spec.source.stream.clone(),
        mode: ReadMode::Full,
        fields: Some(key_mapper.source_fields()),
        key: key_mapper.source_key().to_vec(),
        batch_size: Some(read_size),
        dry_run: !sink.writes(),
        ..Default::default()
    };
    let mut reader = source.read(&request).await?;
    let mut source_keys = KeySet::default();
    while let Some((batch, _)) = reader.next().await? {
        // A record the source could not read has no key: any destination record could be
        // it, so no delete by absence can be trusted.
        if is_rejects_batch(&batch) {
            return Err(EngineError::Schema(format!(
                "sync `{}`: reconciliation stopped before finding any delete: the source could \
                 not read {} of its records (see `lockstep rejects list {}`), and a record \
                 whose key is unknown would be taken for a deleted one. Fix the source records \
                 (for files: the lines named) and run again",
                spec.name,
                batch.num_rows(),
                spec.name
            )));
        }
        // Records whose key cannot be mapped were rejected by the runs; they match nothing.
        let mapped = key_mapper.map(&batch)?;
        for key in record_keys(&mapped.batch, key_mapper.key())? {
            source_keys.insert(&key);
        }
    }
    drop(reader);
    drop(source);
    source_keys.seal();
    if sink.writes() {
        cancel_returned(ctx, sink, run, &source_keys).await?;
    }

    // The destination's keys that are not among them.
    let mut destination = services.open_source(&job.destination).await?;
    let catalog = destination.discover().await?;
    if catalog.stream(&spec.destination.stream).is_none() {
        return Ok(None);
    }
    request.stream = spec.destination.stream.clone();
    request.fields = Some(ctx.mapper.key().to_vec());
    request.key = ctx.mapper.key().to_vec();
    let mut reader = destination.read(&request).await?;
    let mut in_destination = 0u64;
    let mut count = 0u64;
    while let Some((batch, _)) = reader.next().await? {
        in_destination += batch.num_rows() as u64;
        let gone = source_keys.missing(record_keys(&batch, ctx.mapper.key())?);
        count += gone.len() as u64;
        // Recorded a destination batch at a time: memory stays at the source's hashes.
        sink.wait_deletes(ctx, run, DeleteOrigin::Reconcile, &gone, &[])
            .await?;
    }
    drop(reader);
    drop(destination);
    drop(source_keys);

    if !sink.writes() {
        return Ok(Some(in_destination));
    }
    if count > 0 {
        tracing::info!(
            found = count,
            in_destination,
            "reconciliation found records the source no longer has"
        );
    }
    mark_done(ctx, run).await?;
    Ok(Some(in_destination))
}

/// Reconciles by merging the source's and the destination's key-ordered reads (`merge`):
/// the destination's record count, or `None` when the merge declined (the reason is logged)
/// or the destination has no such stream yet, for the hash method to take over.
async fn merge_keys<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    key_mapper: &lockstep_mapping::Mapper,
    read_size: usize,
) -> Result<Option<u64>, EngineError> {
    let services = ctx.services;
    let job = ctx.job;
    let spec = &job.spec;
    let mut destination = services.open_source(&job.destination).await?;
    let catalog = destination.discover().await?;
    if catalog.stream(&spec.destination.stream).is_none() {
        return Ok(None);
    }
    let (mut source, _) = services.open_source_stream(job).await?;
    let source_request = ReadRequest {
        stream: spec.source.stream.clone(),
        mode: ReadMode::Full,
        fields: Some(key_mapper.source_fields()),
        key: key_mapper.source_key().to_vec(),
        batch_size: Some(read_size),
        ..Default::default()
    };
    let destination_request = ReadRequest {
        stream: spec.destination.stream.clone(),
        mode: ReadMode::Full,
        fields: Some(ctx.mapper.key().to_vec()),
        key: ctx.mapper.key().to_vec(),
        batch_size: Some(read_size),
        ..Default::default()
    };
    let source_reader = source.read(&source_request).await?;
    let destination_reader = destination.read(&destination_request).await?;
    let map = |batch: &RecordBatch| -> Result<RecordBatch, EngineError> {
        Ok(key_mapper.map(batch)?.batch)
    };
    let merged = merge::merge(
        ctx,
        sink,
        run,
        source_reader,
        &map,
        destination_reader,
        &ctx.mapper.key()[0],
    )
    .await?;
    match merged {
        merge::Merged::Done {
            in_destination,
            gone,
        } => {
            if gone > 0 {
                tracing::info!(
                    found = gone,
                    in_destination,
                    "reconciliation (key-ordered merge) found records the source no longer has"
                );
            }
            Ok(Some(in_destination))
        }
        merge::Merged::Declined(reason) => {
            tracing::info!(
                reason,
                "reconciliation: the key-ordered merge declined; comparing by key hashes instead"
            );
            Ok(None)
        }
    }
}

/// Cancels the waiting deletes found by earlier reconciliations whose key the source has
/// again (inserted again, possibly with a cursor value the incremental read has passed), a
/// page at a time. Tombstone deletes are left alone: their records are still in the source.
async fn cancel_returned<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    source_keys: &KeySet,
) -> Result<(), EngineError> {
    if !run.deletes_waiting {
        return Ok(());
    }
    let mut after: Option<String> = None;
    loop {
        let keys = ctx
            .services
            .state
            .pending_delete_keys(
                &ctx.job.spec.name,
                None,
                Some(DeleteOrigin::Reconcile),
                after.as_deref(),
                10_000,
            )
            .await?;
        let Some(last) = keys.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        let returned: Vec<String> = keys
            .into_iter()
            .filter(|k| source_keys.contains(k))
            .collect();
        sink.wait_deletes(ctx, run, DeleteOrigin::Reconcile, &[], &returned)
            .await?;
    }
}

/// Records that this run reconciled, for `reconcile_every`.
async fn mark_done(ctx: &Context<'_>, run: &RunState) -> Result<(), EngineError> {
    mark_reconciled(ctx.services, ctx.job, run.run_id).await
}

/// Records that run `run_id` of `job` compared key sets, for `reconcile_every` (a two-way
/// run's delete detection counts as its reconciliation).
pub(crate) async fn mark_reconciled(
    services: Services<'_>,
    job: &SyncJob,
    run_id: i64,
) -> Result<(), EngineError> {
    services
        .state
        .put_checkpoint(
            &marker(job),
            Some(run_id),
            &serde_json::json!({ "run": run_id }),
        )
        .await?;
    Ok(())
}
