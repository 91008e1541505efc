//! The body of a run: open both sides, read batches, map, diff against the ledger, and hand
//! each batch's changes to a sink — the destination (a run) or a plan (a dry run).

use std::collections::HashMap;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::DataType as ArrowType;
use lockstep_core::protocol::arrow_types::json_value;
use lockstep_core::protocol::{
    DataType, OpenStreamRequest, ReadMode, ReadRequest, SchemaEvolution, StreamInfo, WriteOutcome,
};
use lockstep_core::{fingerprints, record_keys, RunMetrics, SyncMode};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::{DestinationHandle, SourceHandle, StreamWriterHandle};
use lockstep_state::{BatchCommit, DeleteOrigin, Lease, LedgerEntry, RejectedRecord};
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::engine::{Engine, Progress, RunOptions, RunState, SyncJob};
use crate::error::EngineError;
use crate::faults::{fault_point, FaultPoint};
use crate::lease::{FencedWriter, HeldLease, LeaseWatch};
use crate::plan::PlanCollector;
use crate::{deletes, reconcile};

/// Where a batch's changes go.
pub(crate) enum Sink<'a> {
    /// Written to the destination (unless the run's lease is lost) and committed to the state
    /// store.
    Write(&'a mut FencedWriter),
    /// Counted and sampled for a plan; nothing is written anywhere.
    Plan(&'a mut PlanCollector),
}

/// Everything a batch needs that stays the same through the run.
pub(crate) struct Context<'a> {
    pub(crate) engine: &'a Engine<'a>,
    pub(crate) job: &'a SyncJob,
    pub(crate) mapper: &'a Mapper,
    pub(crate) cursor_type: Option<DataType>,
    pub(crate) lease: Option<&'a Lease>,
    /// Whether this run created the destination stream: a new stream holds nothing that
    /// could need deleting.
    pub(crate) destination_is_new: bool,
}

/// Opens a source instance and finds the sync's stream in its catalog.
pub(crate) async fn open_source_stream(
    engine: &Engine<'_>,
    job: &SyncJob,
) -> Result<(SourceHandle, StreamInfo), EngineError> {
    let spec = &job.spec;
    let plugin = engine.registry.get(&job.source.connector)?;
    let mut source = plugin
        .open_source(&job.source.config, engine.redactor.clone())
        .await?;
    let catalog = source.discover().await?;
    let stream = catalog
        .stream(&spec.source.stream)
        .cloned()
        .ok_or_else(|| {
            EngineError::Schema(format!(
                "connection `{}` has no stream `{}`; it has: {}",
                spec.source.connection,
                spec.source.stream,
                catalog
                    .streams
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok((source, stream))
}

/// Opens the sync's destination stream, created from the mapped schema when missing and
/// given the columns the mapping added since.
pub(crate) async fn open_destination_stream(
    destination: &mut DestinationHandle,
    job: &SyncJob,
    mapper: &Mapper,
) -> Result<StreamWriterHandle, EngineError> {
    Ok(destination
        .open_stream(&OpenStreamRequest {
            stream: job.spec.destination.stream.clone(),
            fields: mapper.target_fields(),
            key: mapper.key().to_vec(),
            create_if_missing: true,
            schema_evolution: SchemaEvolution::AddColumns,
        })
        .await?)
}

/// The source fields a read of the sync asks for: the mapping's, and the cursor and
/// tombstone fields the engine itself needs.
pub(crate) fn fields_to_read(job: &SyncJob, mapper: &Mapper) -> Vec<String> {
    let spec = &job.spec;
    let mut fields = mapper.source_fields();
    for extra in [&spec.cursor_field, &spec.delete.tombstone]
        .into_iter()
        .flatten()
    {
        if !fields.contains(extra) {
            fields.push(extra.clone());
        }
    }
    fields
}

/// Runs the sync's read and applies it to the sink. With `plan` set, nothing is written:
/// the changes are collected instead. Returns Ok(true) when the read completed, Ok(false)
/// when it was stopped.
pub(crate) async fn execute(
    engine: &Engine<'_>,
    job: &SyncJob,
    options: &RunOptions,
    lease: Option<&HeldLease>,
    run: &mut RunState,
    mut plan: Option<&mut PlanCollector>,
) -> Result<bool, EngineError> {
    let spec = &job.spec;
    let (mut source, stream) = open_source_stream(engine, job).await?;
    let mapper = Mapper::new(spec, &stream)?;
    if let Some(tombstone) = &spec.delete.tombstone {
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

    // Whether the destination stream exists before this run: a stream this run creates has
    // nothing that could need deleting.
    let mut destination_is_new = false;
    let mut writer = match plan {
        Some(_) => None,
        None => {
            let plugin = engine.registry.get(&job.destination.connector)?;
            let mut destination = plugin
                .open_destination(&job.destination.config, engine.redactor.clone())
                .await?;
            if spec.mode == SyncMode::Mirror {
                destination_is_new = destination
                    .discover()
                    .await?
                    .stream(&spec.destination.stream)
                    .is_none();
            }
            let stream = open_destination_stream(&mut destination, job, &mapper).await?;
            Some(FencedWriter::new(stream, lease.map(HeldLease::watch)))
        }
    };

    let fields = fields_to_read(job, &mapper);
    let request = ReadRequest {
        stream: spec.source.stream.clone(),
        mode: if spec.mode.uses_cursor() {
            ReadMode::Incremental
        } else {
            ReadMode::Full
        },
        fields: Some(fields),
        cursor_field: spec.cursor_field.clone(),
        key: mapper.source_key().to_vec(),
        checkpoint: run.checkpoint.clone(),
        batch_size: Some(spec.batch_size),
        ..Default::default()
    };
    let mut reader = source.read(&request).await?;
    let source_cancel = source.cancel_handle();

    // The reader runs ahead by up to two batches so that reading overlaps writing.
    let (tx, mut rx) = mpsc::channel(2);
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

    let ctx = Context {
        engine,
        job,
        mapper: &mapper,
        cursor_type,
        lease: lease.map(HeldLease::lease),
        destination_is_new,
    };
    if writer.is_some() && spec.mode == SyncMode::Mirror {
        run.deletes_waiting = engine.state.pending_deletes(&spec.name, 0).await?.total() > 0;
    }
    let mut stop = options.stop.clone();
    // The lease is renewed by its own task; losing it stops the run, even in a slow read.
    let mut lease_watch = lease.map(HeldLease::watch);
    let completed = loop {
        if *stop.borrow() {
            break false;
        }
        let next = tokio::select! {
            next = rx.recv() => next,
            _ = stop.changed() => continue,
            error = lease_lost(&mut lease_watch) => {
                source_cancel.cancel();
                return Err(error);
            }
        };
        let Some(next) = next else {
            return Err(EngineError::Internal(
                "the source reader stopped without an end".into(),
            ));
        };
        let Some((batch, checkpoint)) = next? else {
            break true;
        };
        let sink = match (&mut writer, &mut plan) {
            (Some(w), _) => Sink::Write(w),
            (None, Some(p)) => Sink::Plan(p),
            (None, None) => unreachable!("a run has a writer or a plan"),
        };
        apply_batch(&ctx, sink, run, batch, checkpoint).await?;
        if let lockstep_core::RejectLimit::Count(_) = spec.max_rejected {
            check_rejections(job, &run.metrics)?;
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
    drop(rx);
    let _ = read_task.await;
    drop(source);
    if !completed {
        return Ok(false);
    }
    check_rejections(job, &run.metrics)?;

    let mut destination_size = None;
    if spec.mode == SyncMode::Mirror
        && !destination_is_new
        && reconcile::due(engine, job, run.run_id).await?
    {
        let sink = match (&mut writer, &mut plan) {
            (Some(w), _) => Sink::Write(w),
            (None, Some(p)) => Sink::Plan(p),
            (None, None) => unreachable!("a run has a writer or a plan"),
        };
        destination_size = reconcile::run(&ctx, sink, run).await?;
    }
    // Every delete the run found now waits in the state store: they are checked against the
    // guard together, then applied or held.
    if let (Some(writer), SyncMode::Mirror) = (&mut writer, spec.mode) {
        deletes::finish(
            &ctx,
            writer,
            run,
            options.allow_mass_delete,
            destination_size,
        )
        .await?;
    }
    Ok(true)
}

/// Resolves when the run's lease is lost; never without a lease (a dry run).
async fn lease_lost(watch: &mut Option<LeaseWatch>) -> EngineError {
    match watch {
        Some(watch) => watch.lost().await,
        None => std::future::pending().await,
    }
}

/// Fails the run when its rejected records are past the sync's `max_rejected`.
fn check_rejections(job: &SyncJob, metrics: &RunMetrics) -> Result<(), EngineError> {
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

/// Whether each source row is marked deleted by the tombstone field: a value that is
/// neither null nor false (nor 0, nor an empty string).
fn tombstoned(batch: &RecordBatch, field: &str) -> Option<Vec<bool>> {
    let column = batch.column(batch.schema().index_of(field).ok()?);
    let rows = batch.num_rows();
    Some(match column.data_type() {
        ArrowType::Boolean => {
            let a = column.as_boolean();
            (0..rows).map(|r| a.is_valid(r) && a.value(r)).collect()
        }
        ArrowType::Utf8 => {
            let a = column.as_string::<i32>();
            (0..rows)
                .map(|r| a.is_valid(r) && !matches!(a.value(r), "" | "0" | "false" | "f"))
                .collect()
        }
        ArrowType::Int32 | ArrowType::Int64 => {
            let values = arrow::compute::cast(column, &ArrowType::Int64).ok()?;
            let a = values.as_primitive::<arrow::datatypes::Int64Type>();
            (0..rows)
                .map(|r| a.is_valid(r) && a.value(r) != 0)
                .collect()
        }
        _ => (0..rows).map(|r| column.is_valid(r)).collect(),
    })
}

/// Applies one source batch to the sink and, for a real run, commits it.
pub(crate) async fn apply_batch(
    ctx: &Context<'_>,
    sink: Sink<'_>,
    run: &mut RunState,
    batch: RecordBatch,
    checkpoint: Value,
) -> Result<(), EngineError> {
    let job = ctx.job;
    let spec = &job.spec;
    let sync = spec.name.as_str();
    let state = ctx.engine.state;
    let batch_number = run.batches + 1;
    let mut metrics = RunMetrics {
        read: batch.num_rows() as u64,
        ..Default::default()
    };
    let mapped = ctx.mapper.map(&batch)?;
    let mut reject_keys = mapping_reject_keys(ctx.mapper, &batch, &mapped.rejected);
    let mut rejected: Vec<RejectedRecord> = mapped
        .rejected
        .iter()
        .map(|r| {
            rejection(
                sync,
                run.run_id,
                reject_keys.remove(&r.row),
                r.field.clone(),
                &r.reason,
                &batch,
                r.row,
            )
        })
        .collect();
    if !spec.use_ledger {
        return apply_without_ledger(
            ctx, sink, run, &batch, mapped, rejected, metrics, checkpoint,
        )
        .await;
    }

    let keys = record_keys(&mapped.batch, ctx.mapper.key())?;
    let prints = fingerprints(&mapped.batch)?;
    let versions = cursor_versions(job, &batch, ctx.cursor_type, &mapped.source_rows);
    let deleted_in_source: Vec<bool> = match (&spec.delete.tombstone, spec.mode) {
        (Some(field), SyncMode::Mirror) => {
            let marks = tombstoned(&batch, field).unwrap_or_default();
            mapped
                .source_rows
                .iter()
                .map(|&r| marks.get(r).copied().unwrap_or(false))
                .collect()
        }
        _ => vec![false; keys.len()],
    };

    // When a key repeats within a batch, its last row wins.
    let mut last_row: HashMap<&str, usize> = HashMap::with_capacity(keys.len());
    for (row, key) in keys.iter().enumerate() {
        last_row.insert(key.as_str(), row);
    }
    let unique: Vec<String> = last_row.keys().map(|k| (*k).to_owned()).collect();
    let ledger = state.ledger_lookup(sync, &unique).await?;

    let mut write_mask = vec![false; keys.len()];
    let mut delete_mask = vec![false; keys.len()];
    let mut is_new = vec![false; keys.len()];
    for (row, key) in keys.iter().enumerate() {
        if last_row.get(key.as_str()) != Some(&row) {
            // An earlier row of a key that a later row of this batch supersedes.
            metrics.unchanged += 1;
            continue;
        }
        let known = ledger.get(key);
        if deleted_in_source[row] {
            delete_mask[row] = true;
            continue;
        }
        match known {
            Some(entry) if entry.fingerprint == prints[row] => metrics.unchanged += 1,
            Some(_) => write_mask[row] = true,
            None => {
                write_mask[row] = true;
                is_new[row] = true;
            }
        }
    }
    let written_rows: Vec<usize> = (0..keys.len()).filter(|r| write_mask[*r]).collect();
    let deleted_rows: Vec<usize> = (0..keys.len()).filter(|r| delete_mask[*r]).collect();
    let to_write = if written_rows.is_empty() {
        None
    } else {
        Some(filter_record_batch(
            &mapped.batch,
            &BooleanArray::from(write_mask.clone()),
        )?)
    };

    let writer = match sink {
        Sink::Plan(plan) => {
            // A plan counts what a run would do and keeps samples; it writes nothing.
            for &row in &written_rows {
                if is_new[row] {
                    metrics.added += 1;
                    plan.add(&mapped.batch, row, &keys[row]);
                } else {
                    metrics.updated += 1;
                    plan.update(&mapped.batch, row, &keys[row]);
                }
            }
            for &row in &deleted_rows {
                if ledger.contains_key(&keys[row]) {
                    metrics.deleted += 1;
                    plan.delete(&keys[row]);
                }
            }
            metrics.rejected = rejected.len() as u64;
            plan.reject(&rejected);
            run.metrics.add(&metrics);
            run.batches += 1;
            if spec.mode.uses_cursor() {
                run.checkpoint = Some(checkpoint);
            }
            return Ok(());
        }
        Sink::Write(writer) => writer,
    };

    fault_point(FaultPoint::BeforeWrite, batch_number);
    let mut outcome = WriteOutcome::default();
    if let Some(batch) = to_write {
        outcome = writer.upsert(batch).await?;
    }
    fault_point(FaultPoint::BeforeFlush, batch_number);
    writer.flush().await?;
    fault_point(FaultPoint::AfterFlush, batch_number);

    // Rows the destination refused are rejected, not recorded in the ledger.
    let mut refused = vec![false; keys.len()];
    for r in &outcome.rejected {
        let Some(&row) = written_rows.get(r.row) else {
            return Err(EngineError::Internal(format!(
                "the destination rejected row {} of a batch of {}",
                r.row,
                written_rows.len()
            )));
        };
        refused[row] = true;
        rejected.push(rejection(
            sync,
            run.run_id,
            Some(keys[row].clone()),
            r.field.clone(),
            &r.reason,
            &batch,
            mapped.source_rows[row],
        ));
    }
    let mut upserts = Vec::with_capacity(written_rows.len());
    for &row in &written_rows {
        if refused[row] {
            continue;
        }
        if is_new[row] {
            metrics.added += 1;
        } else {
            metrics.updated += 1;
        }
        upserts.push(LedgerEntry {
            key: keys[row].clone(),
            dest_key: None,
            fingerprint: prints[row],
            source_version: versions.as_ref().and_then(|v| v[row].clone()),
            synced_at: None,
        });
    }
    // Tombstones are not applied here: they wait in the state store until the end of the run
    // has counted every delete against the guard. A record present (not deleted) cancels the
    // delete that waits for it. A stream this run created has nothing to delete.
    let found: Vec<String> = if ctx.destination_is_new {
        Vec::new()
    } else {
        deleted_rows.iter().map(|&r| keys[r].clone()).collect()
    };
    let seen: Vec<String> = if run.deletes_waiting {
        last_row
            .iter()
            .filter(|(_, &row)| !delete_mask[row])
            .map(|(key, _)| (*key).to_owned())
            .collect()
    } else {
        Vec::new()
    };
    deletes::record(ctx, run, DeleteOrigin::Tombstone, &found, &seen).await?;
    metrics.rejected = rejected.len() as u64;
    run.metrics.add(&metrics);
    run.batches += 1;
    // A null checkpoint (a read by keys, for a retry) leaves the stored one where it is.
    let new_checkpoint = (spec.mode.uses_cursor() && !checkpoint.is_null()).then_some(checkpoint);
    state
        .commit_batch(&BatchCommit {
            sync,
            run: run.run_id,
            lease_token: ctx.lease.map(|l| l.token),
            ledger_upserts: &upserts,
            ledger_deletes: &[],
            checkpoint: new_checkpoint.as_ref(),
            metrics: &run.metrics,
            rejected: &rejected,
        })
        .await?;
    fault_point(FaultPoint::AfterCommit, batch_number);
    if let Some(c) = new_checkpoint {
        run.checkpoint = Some(c);
    }
    tracing::debug!(batch = run.batches, ?metrics, "batch committed");
    Ok(())
}

/// `apply_batch` for syncs without a ledger: every record read is sent, and the
/// destination's upsert says what was added, updated or unchanged. No keys or fingerprints
/// are computed, which keeps database-to-database syncs close to the databases' own speed.
#[allow(clippy::too_many_arguments)]
async fn apply_without_ledger(
    ctx: &Context<'_>,
    sink: Sink<'_>,
    run: &mut RunState,
    batch: &RecordBatch,
    mapped: lockstep_mapping::MappedBatch,
    mut rejected: Vec<RejectedRecord>,
    mut metrics: RunMetrics,
    checkpoint: Value,
) -> Result<(), EngineError> {
    let spec = &ctx.job.spec;
    let sync = spec.name.as_str();
    let batch_number = run.batches + 1;
    let deleted_in_source: Option<Vec<bool>> = match (&spec.delete.tombstone, spec.mode) {
        (Some(field), SyncMode::Mirror) => {
            let marks = tombstoned(batch, field).unwrap_or_default();
            let rows: Vec<bool> = mapped
                .source_rows
                .iter()
                .map(|&r| marks.get(r).copied().unwrap_or(false))
                .collect();
            rows.iter().any(|d| *d).then_some(rows)
        }
        _ => None,
    };
    let (to_write, to_delete) = match &deleted_in_source {
        None => (mapped.batch.clone(), None),
        Some(deleted) => {
            let keep: Vec<bool> = deleted.iter().map(|d| !d).collect();
            let keys_only = mapped
                .batch
                .project(&key_indices(&mapped.batch, ctx.mapper.key())?)?;
            (
                filter_record_batch(&mapped.batch, &BooleanArray::from(keep))?,
                Some(filter_record_batch(
                    &keys_only,
                    &BooleanArray::from(deleted.clone()),
                )?),
            )
        }
    };
    let written = to_write.num_rows() as u64;
    // Tombstoned records wait in the state store like any delete (see `deletes`); their keys
    // are computed only then, and the keys of the written records only when deletes wait.
    let found = match (&to_delete, ctx.destination_is_new, &sink) {
        (Some(keys_batch), false, Sink::Write(_)) => record_keys(keys_batch, ctx.mapper.key())?,
        _ => Vec::new(),
    };
    let seen = match (run.deletes_waiting, &sink) {
        (true, Sink::Write(_)) => record_keys(&to_write, ctx.mapper.key())?,
        _ => Vec::new(),
    };
    let writer = match sink {
        Sink::Plan(_) => {
            // Without a ledger a plan cannot tell added from updated or unchanged.
            metrics.updated += written;
            metrics.deleted += to_delete.map_or(0, |d| d.num_rows() as u64);
            metrics.rejected = rejected.len() as u64;
            run.metrics.add(&metrics);
            run.batches += 1;
            if spec.mode.uses_cursor() {
                run.checkpoint = Some(checkpoint);
            }
            return Ok(());
        }
        Sink::Write(writer) => writer,
    };
    fault_point(FaultPoint::BeforeWrite, batch_number);
    let outcome = if written > 0 {
        writer.upsert(to_write.clone()).await?
    } else {
        WriteOutcome::default()
    };
    fault_point(FaultPoint::BeforeFlush, batch_number);
    writer.flush().await?;
    fault_point(FaultPoint::AfterFlush, batch_number);
    for r in &outcome.rejected {
        let key = record_keys(
            &to_write.slice(r.row.min(to_write.num_rows().saturating_sub(1)), 1),
            ctx.mapper.key(),
        )
        .ok()
        .and_then(|k| k.into_iter().next());
        // Without tombstones the written rows are the mapped rows, in order.
        let source_row = match &deleted_in_source {
            None => mapped.source_rows.get(r.row).copied(),
            Some(_) => None,
        };
        rejected.push(RejectedRecord {
            raw: source_row
                .map(|row| Value::Object(row_json(batch, row)))
                .unwrap_or_else(|| Value::Object(row_json(&to_write, r.row))),
            ..rejection(
                sync,
                run.run_id,
                key,
                r.field.clone(),
                &r.reason,
                &to_write,
                r.row,
            )
        });
    }
    deletes::record(ctx, run, DeleteOrigin::Tombstone, &found, &seen).await?;
    let refused = outcome.rejected.len() as u64;
    metrics.added += outcome.inserted.unwrap_or(0);
    metrics.unchanged += outcome.unchanged.unwrap_or(0);
    metrics.updated += outcome.updated.unwrap_or_else(|| {
        written.saturating_sub(
            refused + outcome.inserted.unwrap_or(0) + outcome.unchanged.unwrap_or(0),
        )
    });
    metrics.rejected = rejected.len() as u64;
    run.metrics.add(&metrics);
    run.batches += 1;
    // A null checkpoint (a read by keys, for a retry) leaves the stored one where it is.
    let new_checkpoint = (spec.mode.uses_cursor() && !checkpoint.is_null()).then_some(checkpoint);
    ctx.engine
        .state
        .commit_batch(&BatchCommit {
            sync,
            run: run.run_id,
            lease_token: ctx.lease.map(|l| l.token),
            ledger_upserts: &[],
            ledger_deletes: &[],
            checkpoint: new_checkpoint.as_ref(),
            metrics: &run.metrics,
            rejected: &rejected,
        })
        .await?;
    fault_point(FaultPoint::AfterCommit, batch_number);
    if let Some(c) = new_checkpoint {
        run.checkpoint = Some(c);
    }
    Ok(())
}

/// The match key of each source row the mapping rejected, where the key fields themselves
/// map (the failure is in another field): so that a later run that writes that key resolves
/// the reject. Rows whose key cannot be computed are absent.
fn mapping_reject_keys(
    mapper: &Mapper,
    batch: &RecordBatch,
    rejected: &[lockstep_mapping::RowRejection],
) -> HashMap<usize, String> {
    if rejected.is_empty() {
        return HashMap::new();
    }
    let rows: Vec<u32> = rejected
        .iter()
        .filter_map(|r| u32::try_from(r.row).ok())
        .collect();
    let keys = (|| {
        let indices = arrow::array::UInt32Array::from(rows.clone());
        let columns = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c, &indices, None))
            .collect::<Result<Vec<_>, _>>()
            .ok()?;
        let subset = RecordBatch::try_new(batch.schema(), columns).ok()?;
        let mapped = mapper.key_mapper().map(&subset).ok()?;
        let keys = record_keys(&mapped.batch, mapper.key()).ok()?;
        Some((mapped.source_rows, keys))
    })();
    let Some((source_rows, keys)) = keys else {
        return HashMap::new();
    };
    source_rows
        .into_iter()
        .zip(keys)
        .filter_map(|(i, key)| Some((*rows.get(i)? as usize, key)))
        .collect()
}

/// The column indices of `key` in `batch`.
pub(crate) fn key_indices(batch: &RecordBatch, key: &[String]) -> Result<Vec<usize>, EngineError> {
    key.iter()
        .map(|k| {
            batch.schema().index_of(k).map_err(|_| {
                EngineError::Internal(format!("key field `{k}` is missing from a mapped batch"))
            })
        })
        .collect()
}

/// The cursor value of each mapped row as text, for the ledger's source version.
fn cursor_versions(
    job: &SyncJob,
    batch: &RecordBatch,
    cursor_type: Option<DataType>,
    source_rows: &[usize],
) -> Option<Vec<Option<String>>> {
    let cursor = job.spec.cursor_field.as_ref()?;
    let column = batch.column(batch.schema().index_of(cursor).ok()?);
    Some(
        source_rows
            .iter()
            .map(|&row| match json_value(column, row, cursor_type) {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
    )
}

/// A rejected record with the source row as read.
fn rejection(
    sync: &str,
    run: i64,
    key: Option<String>,
    field: Option<String>,
    reason: &str,
    batch: &RecordBatch,
    row: usize,
) -> RejectedRecord {
    RejectedRecord {
        id: 0,
        sync: sync.to_owned(),
        run,
        key,
        field,
        reason: reason.to_owned(),
        raw: Value::Object(row_json(batch, row)),
        created_at: None,
        retried: None,
    }
}

/// One row of a batch as a JSON object.
pub(crate) fn row_json(batch: &RecordBatch, row: usize) -> serde_json::Map<String, Value> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            (
                f.name().clone(),
                json_value(batch.column(i), row, DataType::from_arrow_field(f)),
            )
        })
        .collect()
}
