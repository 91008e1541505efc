//! Key-set reconciliation for mirror mode: destination records whose key the source no
//! longer has are deleted, behind the mass-delete guard.
//!
//! Both key sets are streamed. The source's keys are kept as sorted 64-bit hashes (8 bytes a
//! record) and each destination key is looked up among them, so memory stays at a few bytes
//! per record whatever the orderings and collations of the two systems. A hash collision can
//! only spare a record that should have been deleted (never delete one that should not), and
//! at 64 bits it is vanishingly rare.

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::{concat_batches, filter_record_batch};
use lockstep_core::protocol::{ReadMode, ReadRequest, Role};
use lockstep_core::{record_keys, RunMetrics};
use lockstep_state::BatchCommit;
use xxhash_rust::xxh3::xxh3_64;

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

/// Finds the destination's keys that the source no longer has and deletes them (or, for a
/// plan, counts them).
pub(crate) async fn run(
    ctx: &Context<'_>,
    sink: Sink<'_>,
    run: &mut RunState,
    allow_mass_delete: bool,
) -> Result<(), EngineError> {
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
    if crate::summary::key_sets_match(ctx).await {
        tracing::info!("reconciliation: the key sets' summaries match, nothing to delete");
        return mark_done(ctx, &sink, run).await;
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

    // The destination's keys that are not among them.
    let plugin = engine.registry.get(&job.destination.connector)?;
    let mut destination = plugin
        .open_source(&job.destination.config, engine.redactor.clone())
        .await?;
    let catalog = destination.discover().await?;
    if catalog.stream(&spec.destination.stream).is_none() {
        return Ok(());
    }
    request.stream = spec.destination.stream.clone();
    request.fields = Some(ctx.mapper.key().to_vec());
    request.key = ctx.mapper.key().to_vec();
    let mut reader = destination.read(&request).await?;
    let mut in_destination = 0u64;
    let mut gone: Vec<RecordBatch> = Vec::new();
    let mut gone_keys: Vec<String> = Vec::new();
    while let Some((batch, _)) = reader.next().await? {
        in_destination += batch.num_rows() as u64;
        let keys = record_keys(&batch, ctx.mapper.key())?;
        let mask: Vec<bool> = keys
            .iter()
            .map(|k| source_keys.binary_search(&xxh3_64(k.as_bytes())).is_err())
            .collect();
        if mask.iter().any(|m| *m) {
            gone_keys.extend(
                keys.into_iter()
                    .zip(&mask)
                    .filter(|(_, m)| **m)
                    .map(|(k, _)| k),
            );
            gone.push(filter_record_batch(&batch, &BooleanArray::from(mask))?);
        }
    }
    drop(reader);
    drop(destination);
    drop(source_keys);

    let count = gone_keys.len() as u64;
    if count == 0 {
        return mark_done(ctx, &sink, run).await;
    }
    let limit = spec.delete.max_delete_fraction;
    if count as f64 > limit * in_destination as f64 && !allow_mass_delete {
        return Err(EngineError::MassDelete(format!(
            "sync `{}`: this run would delete {count} of the {in_destination} records in `{}` \
             ({:.1}%), more than max_delete_fraction allows ({:.1}%). Nothing was deleted. If \
             the source really lost those records, run again with --allow-mass-delete, or \
             raise max_delete_fraction for this sync",
            spec.name,
            spec.destination.stream,
            100.0 * count as f64 / in_destination.max(1) as f64,
            100.0 * limit
        )));
    }

    match sink {
        Sink::Plan(plan) => {
            run.metrics.deleted += count;
            for key in &gone_keys {
                plan.delete(key);
            }
            Ok(())
        }
        Sink::Write(writer) => {
            let all = concat_batches(&gone[0].schema(), &gone)?;
            drop(gone);
            let mut offset = 0;
            while offset < all.num_rows() {
                let len = spec.batch_size.min(all.num_rows() - offset);
                let chunk = all.slice(offset, len);
                let outcome = writer.delete(chunk).await?;
                writer.flush().await?;
                let keys = &gone_keys[offset..offset + len];
                let deleted = outcome.deleted.unwrap_or(len as u64);
                run.metrics.add(&RunMetrics {
                    deleted,
                    ..Default::default()
                });
                engine
                    .state
                    .commit_batch(&BatchCommit {
                        sync: &spec.name,
                        run: run.run_id,
                        lease_token: ctx.lease.map(|l| l.token),
                        ledger_upserts: &[],
                        ledger_deletes: keys,
                        checkpoint: None,
                        metrics: &run.metrics,
                        rejected: &[],
                    })
                    .await?;
                offset += len;
            }
            tracing::info!(
                deleted = count,
                "reconciliation deleted records the source no longer has"
            );
            let sink = Sink::Write(writer);
            mark_done(ctx, &sink, run).await
        }
    }
}

async fn mark_done(ctx: &Context<'_>, sink: &Sink<'_>, run: &RunState) -> Result<(), EngineError> {
    if let Sink::Write(_) = sink {
        ctx.engine
            .state
            .put_checkpoint(
                &marker(ctx.job),
                Some(run.run_id),
                &serde_json::json!({ "run": run.run_id }),
            )
            .await?;
    }
    Ok(())
}
