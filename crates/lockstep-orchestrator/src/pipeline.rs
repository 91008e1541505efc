//! The body of a run: open the source and compile the mapping, open the sink, read batches
//! (the reader runs ahead) and apply each one (`batch`), honour stop requests and a lost
//! lease between batches, then, in mirror mode (and after a cdc snapshot), reconcile and end
//! the delete phase.
//!
//! A run's batches overlap: batch N's state commit (its pending deletes, then ledger rows,
//! rejects, metrics and checkpoint) runs while batch N+1 is mapped, diffed and written, so
//! the state store works while the destination does.
//!
//! Invariants:
//! - The commit protocol holds per batch: a batch commits after its own writes flushed, and
//!   commits land in batch order (batch N+1's commit starts after batch N's landed).
//! - Batch N+1 sees batch N as committed: its diff takes N's ledger rows over the store's,
//!   and records present in it cancel the deletes N found.
//! - A stop request is honoured between batches: the batch in hand commits first, and so
//!   does the batch written before a failed read or a reject limit reached.
//! - A lost lease stops the run at once, even in a slow read, and cancels the read.
//! - No delete reaches the destination before the whole read and the reconciliation are done
//!   (`deletes`).

use arrow::array::RecordBatch;
use lockstep_core::protocol::{
    is_cdc_snapshot_checkpoint, CdcRequest, DataType, ReadMode, ReadRequest,
};
use lockstep_core::{RunMetrics, SyncMode};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::SourceHandle;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::batch::{apply_batch, write_batch, Flushed};
use crate::context::{fields_to_read, Context};
use crate::error::EngineError;
use crate::job::{Progress, RunOptions, RunState, SyncJob};
use crate::lease::{FencedWriter, HeldLease, LeaseWatch};
use crate::seen_keys::SeenKeys;
use crate::services::{open_destination_stream, Services};
use crate::sink::{record_deletes, Sink, WriteSink};
use crate::{deletes, reconcile};
use lockstep_plugin_core::run_end::{run_end_batch, FEATURE_RUN_END};
use lockstep_plugin_core::source_rejects::is_rejects_batch;
use lockstep_state::DeleteOrigin;

/// The sync's source, opened, with its stream and the mapping compiled against it.
pub(crate) struct OpenedSource {
    pub(crate) source: SourceHandle,
    pub(crate) mapper: Mapper,
    pub(crate) cursor_type: Option<DataType>,
}

/// Opens the source, finds the stream and compiles the mapping: unknown fields, keys,
/// cursors and tombstones fail here, before any read.
pub(crate) async fn open_source(
    services: Services<'_>,
    job: &SyncJob,
) -> Result<OpenedSource, EngineError> {
    let spec = &job.spec;
    let (source, mut stream) = services.open_source_stream(job).await?;
    // A delete in a change log carries the key alone: a cdc batch's other fields may be null
    // whatever the table says, so the mapping must accept nulls there.
    if spec.mode == SyncMode::Cdc {
        let key = stream.primary_key.clone();
        for field in stream.fields.iter_mut().filter(|f| !key.contains(&f.name)) {
            field.nullable = true;
        }
    }
    let mapper = Mapper::new(spec, &stream)?;
    // A cdc read adds its tombstone field (`CDC_DELETED_FIELD`) itself.
    if let Some(tombstone) = spec
        .delete
        .tombstone
        .as_ref()
        .filter(|_| spec.mode != SyncMode::Cdc)
    {
        if stream.field(tombstone).is_none() {
            return Err(EngineError::Schema(format!(
                "sync `{}`: tombstone field `{tombstone}` is not a field of stream `{}`",
                spec.name, stream.name
            )));
        }
    }
    let cursor_type = spec
        .cursor_field
        .as_ref()
        .and_then(|c| stream.field(c))
        .map(|f| f.data_type);
    Ok(OpenedSource {
        source,
        mapper,
        cursor_type,
    })
}

/// Opens the destination stream for a run's writes, fenced by `lease`. Also says whether the
/// stream is new (created by this run, in mirror mode): a new stream holds nothing that could
/// need deleting.
pub(crate) async fn open_write_sink<'a>(
    services: Services<'a>,
    job: &SyncJob,
    mapper: &Mapper,
    lease: Option<&HeldLease>,
) -> Result<(WriteSink<'a>, bool), EngineError> {
    let spec = &job.spec;
    let mut destination = services.open_destination(&job.destination).await?;
    let mut destination_is_new = false;
    // Not for cdc: its first run's change log may delete records its snapshot wrote.
    if spec.mode == SyncMode::Mirror {
        destination_is_new = destination
            .discover()
            .await?
            .stream(&spec.destination.stream)
            .is_none();
    }
    let stream = open_destination_stream(&mut destination, job, mapper).await?;
    let writer = FencedWriter::new(stream, lease.map(HeldLease::watch));
    Ok((WriteSink::new(writer, services.state), destination_is_new))
}

/// Runs `job` once under `lease`, writing to its destination. Returns Ok(true) when the read
/// completed, Ok(false) when it was stopped.
pub(crate) async fn run_sync(
    services: Services<'_>,
    job: &SyncJob,
    options: &RunOptions,
    lease: &HeldLease,
    run: &mut RunState,
) -> Result<bool, EngineError> {
    let OpenedSource {
        source,
        mapper,
        cursor_type,
        ..
    } = open_source(services, job).await?;
    let (mut sink, destination_is_new) =
        open_write_sink(services, job, &mapper, Some(lease)).await?;
    let ctx = Context {
        services,
        job,
        mapper: &mapper,
        cursor_type,
        lease: Some(lease.lease()),
        destination_is_new,
    };
    let completed = execute(&ctx, source, &mut sink, options, Some(lease.watch()), run).await?;
    // A destination that asked for it (a snapshot) learns that the run wrote everything.
    let wants_run_end = services
        .registry
        .get(&job.destination.connector)?
        .manifest
        .features
        .iter()
        .any(|f| f == FEATURE_RUN_END);
    if completed && wants_run_end {
        let every_record = job.spec.mode == SyncMode::Full && !job.spec.use_ledger;
        sink.upsert(run_end_batch(every_record)?).await?;
        sink.flush().await?;
    }
    Ok(completed)
}

/// Runs the sync's read from `source` and applies it to the sink; with a plan's sink nothing
/// is written. Returns Ok(true) when the read completed, Ok(false) when it was stopped.
pub(crate) async fn execute<S: Sink>(
    ctx: &Context<'_>,
    mut source: SourceHandle,
    sink: &mut S,
    options: &RunOptions,
    mut lease: Option<LeaseWatch>,
    run: &mut RunState,
) -> Result<bool, EngineError> {
    let job = ctx.job;
    let spec = &job.spec;
    let request = ReadRequest {
        stream: spec.source.stream.clone(),
        mode: if spec.mode == SyncMode::Cdc {
            ReadMode::Cdc
        } else if spec.reads_by_cursor() {
            ReadMode::Incremental
        } else {
            ReadMode::Full
        },
        fields: Some(fields_to_read(job, ctx.mapper)),
        cursor_field: spec.cursor_field.clone(),
        key: ctx.mapper.source_key().to_vec(),
        checkpoint: run.checkpoint.clone(),
        batch_size: Some(spec.batch_size),
        // A plan's sink writes nothing: its read is a dry run.
        dry_run: !sink.writes(),
        cdc: spec.cdc.as_ref().map(|c| CdcRequest {
            slot: c.slot.clone(),
            publication: c.publication.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut reader = source.read(&request).await?;
    let source_cancel = source.cancel_handle();

    // The reader runs ahead so that reading overlaps writing: one batch waits here, one in
    // the reading task's hand and one in the plugin (its readers build the next batch while
    // the host takes the last). A second waiting batch kept another batch's memory (3 to 4
    // MiB of columns at 10,000 rows of 300 bytes): a cdc run applying 170,000 changes peaked
    // at 64.9 to 65.1 MiB with one, 66.9 to 68.1 MiB with two.
    let (tx, mut rx) = mpsc::channel::<Result<Option<(RecordBatch, Value)>, _>>(1);
    let read_task = tokio::spawn(
        async move {
            loop {
                let next = reader.next().await;
                let end = !matches!(next, Ok(Some(_)));
                if tx.send(next).await.is_err() || end {
                    break;
                }
            }
        }
        .in_current_span(),
    );

    if sink.writes() && spec.mode.propagates_deletes() {
        run.deletes_waiting = ctx
            .services
            .state
            .pending_deletes(&spec.name, 0)
            .await?
            .total()
            > 0;
    }
    // A run whose ledger is empty as it starts (a first load) looks up only the keys it has
    // met itself; a plan, which holds no lease, looks every key up.
    run.seen_keys = None;
    if spec.use_ledger
        && sink.writes()
        && ctx.lease.is_some()
        && ctx
            .services
            .state
            .ledger_count_at_most(&spec.name, 1)
            .await?
            == 0
    {
        run.seen_keys = Some(SeenKeys::new());
    }
    // A mirror run that reconciles summarizes the source's key set while it reads and writes
    // its changes (see `summary`), and the destination's as soon as they are flushed, beside
    // the last batch's state commit.
    let reconcile_mirror = spec.mode == SyncMode::Mirror
        && !ctx.destination_is_new
        && reconcile::due(ctx.services, job, run.run_id).await?;
    let summarize_early = reconcile_mirror && !run.deletes_waiting;
    let early_summary = async {
        if summarize_early {
            Some(crate::summary::source_summary(ctx).await)
        } else {
            None
        }
    };
    // A run that fails or stops does not wait for the summary (on a large table it can take
    // as long as the run): the summary is dropped with its read.
    tokio::pin!(early_summary);
    let mut summarized = None;
    let changed = {
        let changes = async {
            let mut stop = options.stop.clone();
            // The written batch whose state commit has not been made yet.
            let mut in_flight: Option<Flushed> = None;
            // Whether a cdc read took a snapshot (its first run, or one after its slot was
            // dropped).
            let mut cdc_snapshot = false;
            let completed = loop {
                if *stop.borrow() {
                    break false;
                }
                let next = tokio::select! {
                    next = rx.recv() => next,
                    _ = stop.changed() => continue,
                    // The lease is renewed by its own task; losing it stops the run, even in a slow
                    // read.
                    error = lease_lost(&mut lease) => {
                        source_cancel.cancel();
                        return Err(error);
                    }
                };
                let next = match next {
                    Some(Ok(next)) => next,
                    // What was written before the read failed still commits.
                    Some(Err(e)) => {
                        finish_in_flight(ctx, run, &mut in_flight).await?;
                        return Err(e.into());
                    }
                    None => {
                        finish_in_flight(ctx, run, &mut in_flight).await?;
                        return Err(EngineError::Internal(
                            "the source reader stopped without an end".into(),
                        ));
                    }
                };
                let Some((batch, checkpoint)) = next else {
                    break true;
                };
                if spec.mode == SyncMode::Cdc && is_cdc_snapshot_checkpoint(&checkpoint) {
                    cdc_snapshot = true;
                }
                if sink.writes() && !is_rejects_batch(&batch) {
                    // This batch is mapped, diffed and written while the previous one commits.
                    let previous = in_flight.take();
                    let deletes_may_wait = run.deletes_waiting
                        || previous.as_ref().is_some_and(Flushed::found_deletes);
                    let waiting = run.deletes_waiting;
                    let run_id = run.run_id;
                    let (committed, written) = tokio::join!(
                        commit_flushed(ctx, run_id, waiting, previous.as_ref()),
                        write_batch(
                            ctx,
                            sink,
                            run,
                            batch,
                            checkpoint,
                            previous.as_ref(),
                            deletes_may_wait
                        ),
                    );
                    committed?;
                    if let Some(previous) = previous {
                        previous.committed(true, run);
                    }
                    in_flight = Some(written?);
                } else {
                    finish_in_flight(ctx, run, &mut in_flight).await?;
                    apply_batch(ctx, sink, run, batch, checkpoint).await?;
                }
                crate::memory::release_free_memory();
                if let lockstep_core::RejectLimit::Count(_) = spec.max_rejected {
                    if let Err(e) = check_rejections(job, &run.metrics) {
                        // The rejects that went past the limit are kept, for `rejects list`.
                        finish_in_flight(ctx, run, &mut in_flight).await?;
                        return Err(e);
                    }
                }
                if let Some(progress) = &options.progress {
                    progress(&Progress {
                        run_id: run.run_id,
                        metrics: run.metrics,
                        batches: run.batches,
                    });
                }
            };
            if !completed {
                source_cancel.cancel();
            }
            // The batch in hand commits, whether the read ended or a stop was asked for. Every
            // batch is flushed to the destination by now, so once the read ended the
            // destination's summary counts all the run wrote: it is taken beside that commit
            // (and beside what is left of the source's). A failed commit drops it with its read.
            let destination_summary = async {
                Ok(if completed && summarize_early {
                    Some(crate::summary::destination_summary(ctx).await)
                } else {
                    None
                })
            };
            let ((), destination_summary) = tokio::try_join!(
                finish_in_flight(ctx, run, &mut in_flight),
                destination_summary
            )?;
            drop(rx);
            let _ = read_task.await;
            drop(source);
            Ok::<_, EngineError>((completed, cdc_snapshot, destination_summary))
        };
        tokio::pin!(changes);
        loop {
            tokio::select! {
                changed = &mut changes => break changed,
                summary = &mut early_summary, if summarized.is_none() => {
                    summarized = Some(summary);
                }
            }
        }
    };
    let (completed, cdc_snapshot, written_summary) = changed?;
    if !completed {
        return Ok(false);
    }
    check_rejections(job, &run.metrics)?;
    let early_summary = match summarized {
        Some(summary) => summary,
        None => early_summary.await,
    };

    let mut destination_size = None;
    let reconcile_now = match spec.mode {
        SyncMode::Mirror => reconcile_mirror,
        // A snapshot cannot see the records deleted before it (from a destination that held
        // records already, or while the sync's slot was gone): the key sets tell.
        SyncMode::Cdc if cdc_snapshot => {
            let readable = ctx.services.registry.supports(
                &job.destination.connector,
                lockstep_core::protocol::Role::Source,
            );
            if !readable {
                tracing::warn!(
                    "the cdc snapshot is not reconciled: connector `{}` cannot be read, so \
                     records deleted from the source before the snapshot stay in the destination",
                    job.destination.connector
                );
            }
            readable
        }
        _ => false,
    };
    if reconcile_now {
        destination_size = reconcile::run(ctx, sink, run, early_summary, written_summary).await?;
    }
    // Every delete the run found now waits in the state store: they are checked against the
    // guard together, then applied or held.
    if sink.writes() && spec.mode.propagates_deletes() {
        deletes::finish(ctx, sink, run, options.allow_mass_delete, destination_size).await?;
    }
    Ok(true)
}

/// Makes the state commit of a written batch (when there is one): its pending deletes, then
/// its ledger rows, rejects, metrics and checkpoint, in one transaction under the lease.
async fn commit_flushed(
    ctx: &Context<'_>,
    run_id: i64,
    deletes_waiting: bool,
    flushed: Option<&Flushed>,
) -> Result<(), EngineError> {
    let Some(flushed) = flushed else {
        return Ok(());
    };
    let state = ctx.services.state;
    let (found, seen) = flushed.deletes();
    record_deletes(
        state,
        ctx,
        run_id,
        deletes_waiting,
        DeleteOrigin::Tombstone,
        found,
        seen,
    )
    .await?;
    state.commit_batch(&flushed.commit(ctx)).await?;
    Ok(())
}

/// Commits the batch still in flight, if any, and records that in `run`.
async fn finish_in_flight(
    ctx: &Context<'_>,
    run: &mut RunState,
    in_flight: &mut Option<Flushed>,
) -> Result<(), EngineError> {
    let Some(flushed) = in_flight.take() else {
        return Ok(());
    };
    commit_flushed(ctx, run.run_id, run.deletes_waiting, Some(&flushed)).await?;
    flushed.committed(true, run);
    Ok(())
}

/// Resolves when the run's lease is lost; never without a lease (a dry run).
async fn lease_lost(watch: &mut Option<LeaseWatch>) -> EngineError {
    match watch {
        Some(watch) => watch.lost().await,
        None => std::future::pending().await,
    }
}

/// Fails the run when its rejected records are past the sync's `max_rejected`.
pub(crate) fn check_rejections(job: &SyncJob, metrics: &RunMetrics) -> Result<(), EngineError> {
    let limit = job.spec.max_rejected;
    if limit.exceeded(metrics.rejected, metrics.read) {
        return Err(EngineError::TooManyRejected(format!(
            "sync `{}`: {} of {} records were rejected, past max_rejected ({limit}); see them \
             with `lockstep rejects list {}`, fix the mapping or the data, then `lockstep \
             rejects retry {}`",
            job.spec.name, metrics.rejected, metrics.read, job.spec.name, job.spec.name
        )));
    }
    Ok(())
}
