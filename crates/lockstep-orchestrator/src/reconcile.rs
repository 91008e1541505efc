//! Key-set reconciliation for mirror mode: destination records whose key the source no
//! longer has are recorded as pending deletes, which the end of the run checks against the
//! mass-delete guard with every other delete of the run before applying any (see `deletes`).
//!
//! Both key sets are streamed. The source's keys are kept as sorted 64-bit hashes (8 bytes a
//! record) and each destination key is looked up among them, so memory stays at a few bytes
//! per record whatever the orderings and collations of the two systems. A hash collision can
//! only spare a record that should have been deleted (never delete one that should not), and
//! at 64 bits it is vanishingly rare.

use lockstep_core::protocol::{ReadMode, ReadRequest, Role};
use lockstep_core::record_keys;
use lockstep_state::DeleteOrigin;
use xxhash_rust::xxh3::xxh3_64;

use crate::deletes;
use crate::engine::{Engine, RunState, SyncJob};
use crate::error::EngineError;
use crate::pipeline::{open_source_stream, Context, Sink};

fn marker(job: &SyncJob) -> String {
    format!("{}/reconciled", job.spec.name)
}

/// Whether this run should reconcile, by the sync's `reconcile_every`.
pub(crate) async fn due(
    engine: &Engine<'_>,
    job: &SyncJob,
    run_id: i64,
) -> Result<bool, EngineError> {
    let every = job.spec.delete.reconcile_every;
    if every <= 1 {
        return Ok(every == 1);
    }
    let last = engine
        .state
        .checkpoint(&marker(job))
        .await?
        .and_then(|v| v.get("run").and_then(|r| r.as_i64()));
    let Some(last) = last else { return Ok(true) };
    let recent = engine
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
/// deletes (or, for a plan, counts them). Returns how many records the destination holds,
/// when it could be read.
pub(crate) async fn run(
    ctx: &Context<'_>,
    sink: Sink<'_>,
    run: &mut RunState,
) -> Result<Option<u64>, EngineError> {
    let engine = ctx.engine;
    let job = ctx.job;
    let spec = &job.spec;
    if !engine
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
    if !run.deletes_waiting && crate::summary::key_sets_match(ctx).await {
        tracing::info!("reconciliation: the key sets' summaries match, nothing to delete");
        // A plan records nothing; a run records that it reconciled.
        if matches!(sink, Sink::Write(_)) {
            mark_done(ctx, run).await?;
        }
        return Ok(None);
    }
    let read_size = spec.batch_size.max(50_000);

    // The source's keys, as sorted hashes, computed through the mapping of the key alone so
    // that computed keys (`lower(trim(email))`) compare equal to what the runs wrote.
    let key_mapper = ctx.mapper.key_mapper();
    let (mut source, _) = open_source_stream(engine, job).await?;
    let mut request = ReadRequest {
        stream: spec.source.stream.clone(),
        mode: ReadMode::Full,
        fields: Some(key_mapper.source_fields()),
        key: key_mapper.source_key().to_vec(),
        batch_size: Some(read_size),
        ..Default::default()
    };
    let mut reader = source.read(&request).await?;
    let mut source_keys: Vec<u64> = Vec::new();
    while let Some((batch, _)) = reader.next().await? {
        // Records whose key cannot be mapped were rejected by the runs; they match nothing.
        let mapped = key_mapper.map(&batch)?;
        for key in record_keys(&mapped.batch, key_mapper.key())? {
            source_keys.push(xxh3_64(key.as_bytes()));
        }
    }
    drop(reader);
    drop(source);
    source_keys.sort_unstable();
    source_keys.dedup();
    if let Sink::Write(_) = &sink {
        cancel_returned(ctx, run, &source_keys).await?;
    }

    // The destination's keys that are not among them.
    let plugin = engine.registry.get(&job.destination.connector)?;
    let mut destination = plugin
        .open_source(&job.destination.config, engine.redactor.clone())
        .await?;
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
    let mut plan = match sink {
        Sink::Plan(plan) => Some(plan),
        Sink::Write(_) => None,
    };
    while let Some((batch, _)) = reader.next().await? {
        in_destination += batch.num_rows() as u64;
        let gone: Vec<String> = record_keys(&batch, ctx.mapper.key())?
            .into_iter()
            .filter(|k| source_keys.binary_search(&xxh3_64(k.as_bytes())).is_err())
            .collect();
        count += gone.len() as u64;
        match &mut plan {
            Some(plan) => gone.iter().for_each(|key| plan.delete(key)),
            // Recorded a destination batch at a time: memory stays at the source's hashes.
            None => deletes::record(ctx, run, DeleteOrigin::Reconcile, &gone, &[]).await?,
        }
    }
    drop(reader);
    drop(destination);
    drop(source_keys);

    if plan.is_some() {
        run.metrics.deleted += count;
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

/// Cancels the waiting deletes found by earlier reconciliations whose key the source has
/// again (inserted again, possibly with a cursor value the incremental read has passed), a
/// page at a time. Tombstone deletes are left alone: their records are still in the source.
async fn cancel_returned(
    ctx: &Context<'_>,
    run: &mut RunState,
    source_keys: &[u64],
) -> Result<(), EngineError> {
    if !run.deletes_waiting {
        return Ok(());
    }
    let mut after: Option<String> = None;
    loop {
        let keys = ctx
            .engine
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
            .filter(|k| source_keys.binary_search(&xxh3_64(k.as_bytes())).is_ok())
            .collect();
        deletes::record(ctx, run, DeleteOrigin::Reconcile, &[], &returned).await?;
    }
}

/// How many records the destination stream holds, by reading its keys; `None` when its
/// connector cannot read or the stream does not exist. For syncs without a ledger, whose
/// guard needs the destination's size when no reconciliation counted it.
pub(crate) async fn destination_size(ctx: &Context<'_>) -> Result<Option<u64>, EngineError> {
    let engine = ctx.engine;
    let job = ctx.job;
    let spec = &job.spec;
    if !engine
        .registry
        .supports(&job.destination.connector, Role::Source)
    {
        return Ok(None);
    }
    let plugin = engine.registry.get(&job.destination.connector)?;
    let mut destination = plugin
        .open_source(&job.destination.config, engine.redactor.clone())
        .await?;
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

/// Records that this run reconciled, for `reconcile_every`.
async fn mark_done(ctx: &Context<'_>, run: &RunState) -> Result<(), EngineError> {
    ctx.engine
        .state
        .put_checkpoint(
            &marker(ctx.job),
            Some(run.run_id),
            &serde_json::json!({ "run": run.run_id }),
        )
        .await?;
    Ok(())
}
