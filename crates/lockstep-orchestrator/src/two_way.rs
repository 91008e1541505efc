//! A two-way run (semantics.md, "Two-way sync and conflicts"): read what changed on each
//! side since its own checkpoint, find each side's deletes by comparing its key set with the
//! base ledger, then, chunk by chunk of touched keys, decide each record (`conflict`),
//! record the chunk's conflicts, write both sides, read back what was written and commit the
//! chunk's base rows; last, apply the deletes and commit both checkpoints. A first run over
//! two filled sides compares them without holding either whole (`two_way/initial.rs`).
//!
//! Side a is the sync's `source`, side b its `destination`. Values are compared in the mapped
//! space: side a's records go through the sync's mapping, side b's are read under the mapped
//! names; writing to side a renames them back (a two-way mapping only renames, which the
//! config validator checks).
//!
//! Invariants:
//! - A chunk's base rows are committed only after both sides flushed the chunk's writes, and
//!   the checkpoints move only with the last commit, after every chunk and the deletes. A
//!   crash re-reads both sides from the old checkpoints: the records of committed chunks are
//!   unchanged on both sides against their new base, and those written without a commit show
//!   up as changed on both sides to the same values: an agreement, not a conflict.
//! - The deletes (keys only) wait for the end of the run, behind the mass-delete guard; the
//!   forgotten base rows, and the person's decisions that delete, are committed with them.
//! - What Lockstep wrote is read back (where the connector reads by key) and its fingerprint
//!   becomes the side's base fingerprint, so a side that normalises what it stores (lowercased
//!   emails, rounded times) does not echo the write back as a change.
//! - A conflict queued for a person (`manual`) writes neither side and is recorded once: while
//!   it is open, later runs update it in place.
//! - Deletes are checked against `max_delete_fraction` per side before any is applied; past
//!   it, the run writes everything else and keeps those records' base, so the next run finds
//!   the same deletes again (`--allow-mass-delete` applies them).
//! - Memory holds the records changed since the last run (both sides) in their read form
//!   (Arrow batches and a small entry per key), the key sets as 8-byte hashes, the base
//!   fingerprints looked up ahead for up to [`PREFETCH_KEYS`] keys, and two chunks of
//!   records as values: the chunk being written (its records, base entries and writes) and
//!   the next one, decided while it is written (with its conflicts).
//! - The state store works while the sides do: as chunk N is written, chunk N+1 is decided
//!   and one transaction commits chunk N-1's base rows with chunk N+1's conflicts. Commits
//!   land in chunk order; a chunk's conflicts are recorded before any of its writes.
//! - Which side changed a record is told by the base's fingerprints; the base's values are
//!   read only for the records whose decision needs them (both sides changed it, or one
//!   changed what the other deleted: [`conflict::needs_base_values`]).
//! - Nothing a side refuses is lost (`two_way/rejects.rs`). A record a side's writer refuses
//!   keeps its base and is stored as a pending rejected record (`lockstep rejects list`):
//!   its key, which side refused it (the reason starts `side a (source)` or `side b
//!   (destination)`), the connector's reason, and the values that were written (mapped
//!   names), before the commit that moves both checkpoints past the change. Every run decides
//!   the keys of the sync's pending rejects again: they join the touched keys, the current
//!   record of the side the refused change came from is read by key (both sides' when both
//!   refused; a side whose connector cannot read by key is read in full, only those keys
//!   kept; a side without a cursor is read in full every run anyway), and they are decided
//!   against the base like any change. So the refused change is written again, or meets a
//!   later edit of the other side as a conflict. A side that alone refused is not read by
//!   key: it holds what it held when it refused, and its own later changes reach its read of
//!   changes, so the run decides as the refusing run did and does not find that run's
//!   conflict again at every retry.
//! - A reject is resolved when a run decided its key again and nothing of it was refused
//!   (nor queued for a person, nor held by the mass-delete guard); refused again, it stays
//!   pending, updated in place with the run, the new reason and the attempt count, so a key
//!   has one pending reject. A key whose current record a side's read cannot map is left
//!   pending. A refused write counts as rejected, not as added or updated.
//! - A pending reject retried and refused again, with no new edit of its record, counts in
//!   the run's `rejected` but not against `max_rejected`, which judges the records the run
//!   read as changes: a record stuck on a side would otherwise fail every run until fixed.
//!   The threshold is checked after the commit, so a run past it keeps what it committed.

use std::collections::{HashMap, HashSet};

use arrow::array::RecordBatch;
use lockstep_core::protocol::arrow_types::json_value;
use lockstep_core::protocol::{
    DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, Role, SchemaEvolution,
    StreamInfo, FEATURE_READ_BY_KEYS,
};
use lockstep_core::{
    record_keys, EndpointSpec, FieldMapping, Side, SyncMode, SyncSpec, TwoWaySpec,
};
use lockstep_mapping::{MappedBatch, Mapper};
use lockstep_plugin_core::rows::batch_from_rows;
use lockstep_plugin_core::source_rejects::is_rejects_batch;
use lockstep_state::{
    BaseEntry, BaseFingerprints, Conflict, ConflictStatus, RejectedFilter, RejectedRecord,
    TwoWayCommit, TwoWayRejects,
};
use serde_json::{Map, Value};

use crate::conflict::{self, Base, Change, Fields, Outcome, Resolution, SideRecord, SideState};
use crate::diff::KeySet;
use crate::error::EngineError;
use crate::faults::{fault_point, FaultPoint};
use crate::job::{Endpoint, Progress, RunOptions, RunState, SyncJob};
use crate::lease::{FencedWriter, HeldLease};
use crate::services::Services;

mod initial;
mod rejects;
use rejects::{check_rejected, prepare_retries, store_rejects, Refusal, RetrySettled};

/// How many keys one base-ledger lookup or read-back carries.
const CHUNK: usize = 10_000;

/// One side of the sync, opened: how to read it, map it and write it.
struct SideIo<'j> {
    side: Side,
    endpoint: &'j Endpoint,
    stream: StreamInfo,
    /// From the side's records to the mapped space.
    mapper: Mapper,
    /// The side's cursor (and modification time) field.
    cursor: Option<String>,
    /// The side's field that marks a record it deleted but still lists.
    tombstone: Option<String>,
    /// For each mapped field written to this side, the side's own field.
    written: Vec<(String, FieldInfo)>,
    /// The side's key fields, in mapped-key order.
    key_fields: Vec<FieldInfo>,
    reads_by_keys: bool,
}

/// What a read of one side's changes found.
#[derive(Default)]
struct SideChanges {
    records: HashMap<String, Held>,
    /// The read's mapped batches, which hold the values of its [`Held::Row`] records; a
    /// batch is freed once every record of it was taken.
    batches: Vec<Option<RecordBatch>>,
    /// For each batch, how many of its rows `records` still refers to.
    live: Vec<u32>,
    /// Keys of the records the side marks as deleted (its tombstones).
    tombstoned: HashSet<String>,
    /// Every key of the side, when the read covered all of it.
    keys: Option<KeySet>,
    checkpoint: Option<Value>,
    read: u64,
    rejected: u64,
}

/// What the run will do, decided before anything is written.
#[derive(Default)]
struct Plan {
    upserts: [Vec<(String, Map<String, Value>)>; 2],
    deletes: [Vec<String>; 2],
    /// The new base of each record written or agreed, with the fingerprint of each side
    /// when known without reading back (`None`: read back after the write).
    base: Vec<PendingBase>,
    forget: Vec<String>,
    conflicts: Vec<Conflict>,
    applied: Vec<i64>,
    /// Conflicts whose person's decision is a delete on both sides: marked applied with the
    /// run's deletes, at its end.
    applied_deletes: Vec<i64>,
    /// The keys of `upserts` (per side) counted as `added` rather than `updated`, so that a
    /// write the side refuses is taken out of the right count.
    adds: [HashSet<String>; 2],
}

/// A record a side's read holds until its chunk is decided: compactly, as its row in the
/// read's mapped batches (the values become a map only when taken), or as the record itself.
enum Held {
    Row {
        batch: u32,
        row: u32,
        fingerprint: u128,
        modified: Option<Value>,
    },
    Record(SideRecord),
}

impl SideChanges {
    fn contains(&self, key: &str) -> bool {
        self.records.contains_key(key)
    }

    /// Holds `record` as the side's record of `key`, replacing any other.
    fn insert(&mut self, key: String, record: SideRecord) {
        let old = self.records.insert(key, Held::Record(record));
        self.release(old, false);
    }

    /// Forgets the side's record of `key`.
    fn remove(&mut self, key: &str) {
        let old = self.records.remove(key);
        self.release(old, false);
    }

    /// Keeps `batch` (a mapped batch of the read) for the records [`SideChanges::insert_row`]
    /// will hold as its rows.
    fn hold(&mut self, batch: &RecordBatch) {
        self.batches.push(Some(batch.clone()));
        self.live.push(0);
    }

    /// Holds row `row` of the last batch pushed as the side's record of `key`.
    fn insert_row(&mut self, key: String, row: usize, fingerprint: u128, modified: Option<Value>) {
        let batch = self.batches.len().saturating_sub(1);
        if let Some(live) = self.live.get_mut(batch) {
            *live += 1;
        }
        let old = self.records.insert(
            key,
            Held::Row {
                batch: batch as u32,
                row: row as u32,
                fingerprint,
                modified,
            },
        );
        self.release(old, false);
    }

    /// The fingerprint of the side's record of `key`, without taking it.
    fn fingerprint(&self, key: &str) -> Option<u128> {
        self.records.get(key).map(|held| match held {
            Held::Row { fingerprint, .. } => *fingerprint,
            Held::Record(r) => r.fingerprint,
        })
    }

    /// Drops the side's record of `key` without turning it into a map (after the read).
    fn discard(&mut self, key: &str) {
        let old = self.records.remove(key);
        self.release(old, true);
    }

    /// Takes the side's record of `key` out, its values as a map.
    fn take(&mut self, key: &str) -> Option<SideRecord> {
        let held = self.records.remove(key)?;
        let record = match &held {
            Held::Record(_) => None,
            Held::Row {
                batch,
                row,
                fingerprint,
                modified,
            } => self.batches[*batch as usize].as_ref().map(|b| SideRecord {
                values: row_values(b, *row as usize),
                fingerprint: *fingerprint,
                modified: modified.clone(),
            }),
        };
        match held {
            Held::Record(r) => Some(r),
            row => {
                self.release(Some(row), true);
                record
            }
        }
    }

    /// Counts a row no longer held; with `free` (after the read), frees its batch when it
    /// was the batch's last.
    fn release(&mut self, old: Option<Held>, free: bool) {
        if let Some(Held::Row { batch, .. }) = old {
            let i = batch as usize;
            if let Some(live) = self.live.get_mut(i) {
                *live = live.saturating_sub(1);
                if *live == 0 && free {
                    self.batches[i] = None;
                }
            }
        }
    }

    /// Frees the last batch pushed when no held record refers to it (none will later).
    fn seal_last(&mut self) {
        if let (Some(batch), Some(0)) = (self.batches.last_mut(), self.live.last()) {
            *batch = None;
        }
    }

    /// Frees the batches no held record refers to, once the read is done.
    fn seal(&mut self) {
        for (batch, live) in self.batches.iter_mut().zip(&self.live) {
            if *live == 0 {
                *batch = None;
            }
        }
    }
}

/// Row `row` of `batch` as a map by field name.
fn row_values(batch: &RecordBatch, row: usize) -> Map<String, Value> {
    row_values_typed(batch, row, &logical_types(batch))
}

/// The logical type of each of `batch`'s columns.
fn logical_types(batch: &RecordBatch) -> Vec<Option<DataType>> {
    batch
        .schema()
        .fields()
        .iter()
        .map(|f| DataType::from_arrow_field(f))
        .collect()
}

/// Row `row` of `batch` as a map by field name, its columns' logical types known.
fn row_values_typed(
    batch: &RecordBatch,
    row: usize,
    logical: &[Option<DataType>],
) -> Map<String, Value> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(logical)
        .enumerate()
        .map(|(i, (f, logical))| (f.name().clone(), json_value(batch.column(i), row, *logical)))
        .collect()
}

struct PendingBase {
    key: String,
    values: Map<String, Value>,
    fingerprints: [Option<u128>; 2],
}

fn index(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

/// What a two-way run would do, for `lockstep plan`: its counts and samples.
#[derive(Debug, Default)]
pub(crate) struct Preview {
    /// Records a run would write, with the side they would be written to.
    pub(crate) writes: Vec<(Side, Map<String, Value>)>,
    /// Keys a run would delete, with the side.
    pub(crate) deletes: Vec<(Side, String)>,
    /// One line per conflict a run would find (sampled), and other things to know.
    pub(crate) notes: Vec<String>,
}

/// How many records of each kind a preview keeps.
const PREVIEW_SAMPLE: usize = 20;

/// Runs two-way sync `job` once under `lease`. Returns Ok(true) when it completed, Ok(false)
/// when a stop request ended it before it wrote anything.
pub(crate) async fn run(
    services: Services<'_>,
    job: &SyncJob,
    options: &RunOptions,
    lease: &HeldLease,
    run: &mut RunState,
) -> Result<bool, EngineError> {
    Ok(execute(services, job, options, Some(lease), run)
        .await?
        .is_none())
}

/// What a run of two-way sync `job` would do now, writing nothing; `run` gets the counts.
pub(crate) async fn preview(
    services: Services<'_>,
    job: &SyncJob,
    options: &RunOptions,
    run: &mut RunState,
) -> Result<Preview, EngineError> {
    Ok(execute(services, job, options, None, run)
        .await?
        .unwrap_or_default())
}

/// A run with `lease`, or without one a preview (dry-run reads, nothing written). Returns the
/// preview; a run returns `None` when it completed, and an empty preview when a stop request
/// ended it before it wrote anything.
async fn execute(
    services: Services<'_>,
    job: &SyncJob,
    options: &RunOptions,
    lease: Option<&HeldLease>,
    run: &mut RunState,
) -> Result<Option<Preview>, EngineError> {
    let dry_run = lease.is_none();
    let spec = &job.spec;
    let tw = spec.two_way.as_ref().ok_or_else(|| {
        EngineError::Config(format!(
            "sync `{}` is two-way but has no [syncs.{}.two_way] table",
            spec.name, spec.name
        ))
    })?;
    for endpoint in [&job.source, &job.destination] {
        for (role, what) in [(Role::Source, "read"), (Role::Destination, "written")] {
            if !services.registry.supports(&endpoint.connector, role) {
                return Err(EngineError::Config(format!(
                    "sync `{}` is two-way, so both sides are read and written, but connector \
                     `{}` cannot be {what}; use a one-way mode",
                    spec.name, endpoint.connector
                )));
            }
        }
    }

    // Side a: its stream and the sync's mapping.
    let (mut source_a, stream_a) = services.open_source_stream(job).await?;
    let mapper_a = Mapper::new(spec, &stream_a)?;
    let mapped_fields = mapper_a.target_fields();
    let fields = Fields::new(mapped_fields.iter().map(|f| f.name.clone()).collect(), tw);
    let key = mapper_a.key().to_vec();

    // Side b: created from the mapped schema when missing, as a one-way destination is.
    let writer_b = match lease {
        Some(_) => {
            let mut destination_b = services.open_destination(&job.destination).await?;
            Some(
                destination_b
                    .open_stream(&OpenStreamRequest {
                        stream: spec.destination.stream.clone(),
                        fields: mapped_fields.clone(),
                        key: key.clone(),
                        create_if_missing: true,
                        schema_evolution: SchemaEvolution::AddColumns,
                    })
                    .await?,
            )
        }
        None => None,
    };
    let mut source_b = services.open_source(&job.destination).await?;
    let stream_b = source_b
        .discover()
        .await?
        .stream(&spec.destination.stream)
        .cloned()
        .ok_or_else(|| {
            EngineError::Schema(format!(
                "sync `{}`: side b `{}` has no stream `{}`{}",
                spec.name,
                spec.destination.connection,
                spec.destination.stream,
                if dry_run {
                    "; the first run creates it from the mapping and writes every record of \
                     side a to it"
                } else {
                    " after opening it for writing"
                }
            ))
        })?;
    let spec_b = side_b_spec(spec, tw, &fields, &key);
    let mapper_b = Mapper::new(&spec_b, &stream_b)?;

    let side_a = SideIo {
        side: Side::A,
        endpoint: &job.source,
        written: fields
            .shared
            .iter()
            .map(|f| {
                let own = spec.source_of(f).unwrap_or(f);
                let info = stream_a.field(own).cloned().ok_or_else(|| {
                    EngineError::Schema(format!(
                        "sync `{}`: side a has no field `{own}` to write `{f}` to",
                        spec.name
                    ))
                })?;
                Ok((
                    f.clone(),
                    FieldInfo {
                        native_type: None,
                        ..info
                    },
                ))
            })
            .collect::<Result<_, EngineError>>()?,
        key_fields: own_fields(&stream_a, mapper_a.source_key(), spec)?,
        cursor: spec.cursor_field.clone(),
        tombstone: spec.delete.tombstone.clone(),
        reads_by_keys: reads_by_keys(services, &job.source),
        mapper: mapper_a,
        stream: stream_a,
    };
    let side_b = SideIo {
        side: Side::B,
        endpoint: &job.destination,
        written: mapped_fields
            .iter()
            .map(|f| {
                (
                    f.name.clone(),
                    FieldInfo {
                        native_type: None,
                        ..f.clone()
                    },
                )
            })
            .collect(),
        key_fields: mapped_fields
            .iter()
            .filter(|f| key.contains(&f.name))
            .cloned()
            .collect(),
        cursor: tw.b_cursor_field.clone(),
        tombstone: tw.b_tombstone_field.clone(),
        reads_by_keys: reads_by_keys(services, &job.destination),
        mapper: mapper_b,
        stream: stream_b,
    };

    let mut writers = match (lease, writer_b) {
        (Some(lease), Some(writer_b)) => {
            let mut destination_a = services.open_destination(&job.source).await?;
            let writer_a = destination_a
                .open_stream(&OpenStreamRequest {
                    stream: spec.source.stream.clone(),
                    fields: side_a.written.iter().map(|(_, f)| f.clone()).collect(),
                    key: side_a.key_fields.iter().map(|f| f.name.clone()).collect(),
                    create_if_missing: false,
                    schema_evolution: SchemaEvolution::Fail,
                })
                .await?;
            Some([
                FencedWriter::new(writer_a, Some(lease.watch())),
                FencedWriter::new(writer_b, Some(lease.watch())),
            ])
        }
        _ => None,
    };

    // What changed on each side since its checkpoint.
    // The two sides are different systems: both are read at once.
    let checkpoint = run.checkpoint.clone().unwrap_or(Value::Null);
    let state = services.state;
    let in_base = state.base_count(&spec.name).await?;
    // Key sets are compared every `reconcile_every` runs (tombstones arrive every run).
    let compares_keys = in_base > 0 && crate::reconcile::due(services, job, run.run_id).await?;
    let mut sets_unchanged = false;
    let mut prefetched = Prefetched::default();
    let mut changes = if initial::applies(in_base, &checkpoint) {
        // A first run: the sides are compared without holding either whole.
        initial::read_both(
            services,
            spec,
            [&side_a, &side_b],
            [&mut source_a, &mut source_b],
            &fields,
            dry_run,
            lease,
            run,
        )
        .await?
    } else {
        // The key-set summaries are computed in the databases while the changes are read.
        let summaries = async {
            compares_keys
                && key_sets_unchanged(services, job, [&side_a, &side_b], &key, in_base).await
        };
        // Once both reads are done, and while the summaries may still run, the base
        // fingerprints of the keys read are looked up ahead of their chunks.
        let reads = async {
            let (changes_a, changes_b) = tokio::join!(
                read_changes(
                    spec,
                    &side_a,
                    &mut source_a,
                    checkpoint.get("a"),
                    &fields,
                    dry_run,
                ),
                read_changes(
                    spec,
                    &side_b,
                    &mut source_b,
                    checkpoint.get("b"),
                    &fields,
                    dry_run,
                ),
            );
            let changes = [changes_a?, changes_b?];
            let prefetched = Prefetched::look_up(state, &spec.name, &changes).await?;
            Ok::<_, EngineError>((changes, prefetched))
        };
        let (read, unchanged) = tokio::join!(reads, summaries);
        let (changes, looked_up) = read?;
        sets_unchanged = unchanged;
        prefetched = looked_up;
        changes
    };
    for c in &changes {
        run.metrics.read += c.read;
        run.metrics.rejected += c.rejected;
    }

    // Each side's deletes: base keys the side no longer has.
    let mut deleted: [HashSet<String>; 2] = Default::default();
    if compares_keys && !sets_unchanged {
        for (side, source) in [(&side_a, &mut source_a), (&side_b, &mut source_b)] {
            let i = index(side.side);
            if changes[i].keys.is_none() {
                changes[i].keys = Some(read_keys(spec, side, source, dry_run).await?);
            }
        }
        let mut after: Option<String> = None;
        loop {
            let page = state.base_keys(&spec.name, after.as_deref(), CHUNK).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.clone());
            for key in page {
                for i in 0..2 {
                    if let Some(keys) = &changes[i].keys {
                        if !keys.contains(&key) && !changes[i].records.contains_key(&key) {
                            deleted[i].insert(key.clone());
                        }
                    }
                }
            }
        }
    }
    // Tombstones are deletes wherever the record was in the base.
    for i in 0..2 {
        let tombstoned = std::mem::take(&mut changes[i].tombstoned);
        deleted[i].extend(tombstoned);
    }
    drop(source_a);
    drop(source_b);

    // The records a side refused in earlier runs are decided again (see the header).
    let retries = prepare_retries(
        services,
        spec,
        [&side_a, &side_b],
        &mut changes,
        &mut deleted,
        &fields,
        dry_run,
    )
    .await?;
    run.metrics.read += retries.read;

    // Decide every record either side touched, and those a person decided.
    let unsettled = state.unsettled_conflicts(&spec.name).await?;
    let mut touched: Vec<String> = changes[0]
        .records
        .keys()
        .chain(changes[1].records.keys())
        .chain(deleted[0].iter())
        .chain(deleted[1].iter())
        .chain(
            unsettled
                .values()
                .filter(|c| c.status == ConflictStatus::Resolved)
                .map(|c| &c.key),
        )
        .chain(retries.keys.iter())
        .cloned()
        .collect();
    touched.sort_unstable();
    touched.dedup();
    // Each side's size for the mass-delete guard: its key set when read, else the base's.
    let sizes: [u64; 2] =
        [0, 1].map(|i| changes[i].keys.as_ref().map_or(in_base, |k| k.len() as u64));
    for c in &mut changes {
        c.keys = None;
    }
    let new_checkpoint = serde_json::json!({
        "a": changes[0].checkpoint.take().or_else(|| checkpoint.get("a").cloned()),
        "b": changes[1].checkpoint.take().or_else(|| checkpoint.get("b").cloned()),
    });

    let mut totals = Totals::default();
    let deciding = Deciding {
        spec,
        tw,
        fields: &fields,
        run: run.run_id,
        unsettled: &unsettled,
        deleted: &deleted,
    };
    let (lease, writers) = match (lease, writers.as_mut()) {
        (Some(lease), Some(writers)) => (lease, writers),
        _ => {
            // A preview decides chunk by chunk too, keeping samples only.
            let mut preview = Preview::default();
            for chunk in touched.chunks(touched_chunk()) {
                let plan = decide_next(
                    state,
                    &deciding,
                    chunk,
                    &mut changes,
                    &mut prefetched,
                    &mut run.metrics,
                    &mut totals,
                )
                .await?;
                sample_into(&mut preview, &plan, &mut totals.conflicts);
            }
            guard_deletes(spec, options, run, &mut totals, sizes);
            sample_deletes(&mut preview, &totals);
            return Ok(Some(preview));
        }
    };
    drop(checkpoint);
    if *options.stop.borrow() {
        return Ok(Some(Preview::default()));
    }

    // Chunk by chunk: decide, record the conflicts, write both sides, flush each and read
    // back what was written, then commit the chunk's base rows. The records as read leave
    // `changes` as their chunk is decided, so memory holds the values of two chunks (the one
    // being written and the next, decided), and the base rows of the one before until they
    // are committed. The checkpoints move only with the last commit, after every chunk and
    // the deletes.
    //
    // The state store works while the sides do: as chunk N is written, chunk N+1 is decided,
    // then one transaction commits chunk N-1's base rows and chunk N+1's conflicts. So a
    // chunk's conflicts are recorded before any of its writes, its base rows after both
    // sides flushed them, and commits land in chunk order. The chunks' keys are disjoint: a
    // decision never reads a base row that a commit in flight writes.
    let sides = [&side_a, &side_b];
    // The values read back are needed only to refresh side a's one-way fields.
    let keep_read_back = fields.shared.len() != fields.all.len();
    // Opened at the first chunk that writes.
    let mut read_back_sources: [Option<lockstep_plugin_host::SourceHandle>; 2] = [None, None];
    let mut rejected_keys: HashSet<String> = HashSet::new();
    let mut refusals: Vec<Refusal> = Vec::new();
    let run_id = run.run_id;
    let token = lease.lease().token;
    let chunks: Vec<&[String]> = touched.chunks(touched_chunk()).collect();
    // The first chunk is decided, and its conflicts recorded, before anything is written.
    let mut decided = match chunks.first() {
        Some(first) => {
            let mut plan = decide_next(
                state,
                &deciding,
                first,
                &mut changes,
                &mut prefetched,
                &mut run.metrics,
                &mut totals,
            )
            .await?;
            totals.trace_retries(&plan, &retries);
            let conflicts = ChunkCommit::conflicts_only(&plan);
            conflicts
                .commit(state, &spec.name, run_id, token, &run.metrics)
                .await?;
            totals.conflicts_recorded(&mut plan);
            Some(plan)
        }
        None => None,
    };
    let mut in_flight: Option<WrittenChunk> = None;
    for (at, number) in (0..chunks.len()).zip(1u64..) {
        let mut plan = decided.take().ok_or_else(|| {
            EngineError::Internal(format!("two-way chunk {number} was not decided"))
        })?;
        let prior = in_flight.take();
        let next_chunk = chunks.get(at + 1).copied();
        // The next chunk's decision, then one commit: the base rows of the chunk before
        // this one and the next chunk's conflicts. A chunk's conflicts are recorded before
        // anything of it is written: a crash between its writes and its base commit would
        // otherwise lose an automatically decided conflict, since the rerun finds both sides
        // agreeing. A rerun that finds the same conflict again (same key, same base) updates
        // the record instead of adding one.
        let ahead = async {
            let mut next = match next_chunk {
                Some(chunk) => {
                    let plan = decide_next(
                        state,
                        &deciding,
                        chunk,
                        &mut changes,
                        &mut prefetched,
                        &mut run.metrics,
                        &mut totals,
                    )
                    .await?;
                    totals.trace_retries(&plan, &retries);
                    Some(plan)
                }
                None => None,
            };
            let commit = ChunkCommit {
                upserts: prior.as_ref().map_or(&[][..], |p| p.upserts.as_slice()),
                applied: prior.as_ref().map_or(&[][..], |p| p.applied.as_slice()),
                conflicts: next.as_ref().map_or(&[][..], |p| p.conflicts.as_slice()),
            };
            commit
                .commit(state, &spec.name, run_id, token, &run.metrics)
                .await?;
            if let Some(prior) = &prior {
                fault_point(FaultPoint::AfterCommit, prior.number);
            }
            if let Some(next) = next.as_mut() {
                totals.conflicts_recorded(next);
            }
            Ok::<_, EngineError>(next)
        };
        // This chunk's writes. Side a first when its one-way fields, read back, feed side
        // b's writes; else both sides at once (they are different systems).
        let work = async {
            let mut counts = CountFix::default();
            if plan.upserts.iter().any(|u| !u.is_empty()) {
                for side in sides {
                    let back = &mut read_back_sources[index(side.side)];
                    if side.reads_by_keys && back.is_none() {
                        *back = Some(services.open_source(side.endpoint).await?);
                    }
                }
            }
            let [writer_a, writer_b] = &mut *writers;
            let [back_a, back_b] = &mut read_back_sources;
            let written: [SideWrite; 2] = if keep_read_back {
                let upserts_a = std::mem::take(&mut plan.upserts[0]);
                let a = write_side(
                    spec,
                    &side_a,
                    writer_a,
                    back_a.as_mut(),
                    upserts_a,
                    &fields,
                    true,
                )
                .await?;
                counts.refreshed += refresh_one_way(&mut plan, &a.read_back, &fields);
                let upserts_b = std::mem::take(&mut plan.upserts[1]);
                let b = write_side(
                    spec,
                    &side_b,
                    writer_b,
                    back_b.as_mut(),
                    upserts_b,
                    &fields,
                    false,
                )
                .await?;
                [a, b]
            } else {
                let [upserts_a, upserts_b] = std::mem::take(&mut plan.upserts);
                let (a, b) = tokio::join!(
                    write_side(
                        spec,
                        &side_a,
                        writer_a,
                        back_a.as_mut(),
                        upserts_a,
                        &fields,
                        false
                    ),
                    write_side(
                        spec,
                        &side_b,
                        writer_b,
                        back_b.as_mut(),
                        upserts_b,
                        &fields,
                        false
                    ),
                );
                [a?, b?]
            };
            let mut read_back: [HashMap<String, u128>; 2] = Default::default();
            for (i, w) in written.into_iter().enumerate() {
                for refusal in w.refusals {
                    rejected_keys.insert(refusal.key.clone());
                    // A refused write is no write: it counts as rejected only.
                    if plan.adds[i].contains(&refusal.key) {
                        counts.refused_adds += 1;
                    } else {
                        counts.refused_updates += 1;
                    }
                    refusals.push(refusal);
                }
                read_back[i] = w
                    .read_back
                    .into_iter()
                    .map(|(k, (fp, _))| (k, fp))
                    .collect();
            }

            fault_point(FaultPoint::AfterFlush, number);

            // The chunk's base rows, committed once both sides flushed its writes.
            let upserts: Vec<BaseEntry> = std::mem::take(&mut plan.base)
                .into_iter()
                .filter(|b| !rejected_keys.contains(&b.key))
                .map(|b| {
                    let fp = |i: usize| {
                        b.fingerprints[i]
                            .or_else(|| read_back[i].get(&b.key).copied())
                            .unwrap_or_else(|| written_fingerprint(&b.values, i, &fields))
                    };
                    let (fingerprint_a, fingerprint_b) = (fp(0), fp(1));
                    BaseEntry {
                        key: b.key,
                        base: b.values,
                        fingerprint_a,
                        fingerprint_b,
                    }
                })
                .collect();
            let written = WrittenChunk {
                number,
                upserts,
                applied: std::mem::take(&mut plan.applied),
            };
            Ok::<_, EngineError>((written, counts))
        };
        let (next, written) = tokio::join!(ahead, work);
        let (written, counts) = written?;
        counts.apply(&mut run.metrics);
        decided = next?;
        in_flight = Some(written);
    }
    if let Some(last) = in_flight.take() {
        last.as_commit()
            .commit(state, &spec.name, run_id, token, &run.metrics)
            .await?;
        fault_point(FaultPoint::AfterCommit, last.number);
    }
    drop(read_back_sources);
    drop(changes);
    drop(deleted);

    // The deletes, each side's checked against its size first (keys only, kept to the end).
    guard_deletes(spec, options, run, &mut totals, sizes);
    fault_point(FaultPoint::BeforeDelete, 1);
    for i in 0..2 {
        let side = sides[i];
        if totals.deletes[i].is_empty() {
            continue;
        }
        let key_fields: Vec<(String, FieldInfo)> = side
            .key_fields
            .iter()
            .map(|f| (f.name.clone(), f.clone()))
            .collect();
        for chunk in totals.deletes[i].chunks(spec.batch_size.max(1)) {
            let rows = chunk
                .iter()
                .map(|k| key_row(k, side))
                .collect::<Result<Vec<_>, _>>()?;
            writers[i]
                .delete(to_batch(spec, side, &key_fields, &rows)?)
                .await?;
        }
        writers[i].flush().await?;
    }
    fault_point(FaultPoint::AfterDelete, 1);
    run.metrics.rejected += rejected_keys.len() as u64;
    let traced: HashSet<String> = totals
        .traced
        .iter()
        .cloned()
        .chain(
            totals
                .forget
                .iter()
                .filter(|k| retries.keys.contains(*k))
                .cloned(),
        )
        .collect();
    store_rejects(
        services,
        spec,
        run,
        lease,
        &retries,
        &refusals,
        &rejected_keys,
        &RetrySettled {
            queued: &totals.queued,
            traced: &traced,
        },
        &unsettled,
    )
    .await?;
    drop(refusals);

    // The last commit: the forgotten keys, the person's deletes applied, both checkpoints.
    state
        .commit_two_way(&TwoWayCommit {
            sync: &spec.name,
            run: run.run_id,
            lease_token: Some(lease.lease().token),
            metrics: &run.metrics,
            upserts: &[],
            deletes: &totals.forget,
            conflicts: &[],
            applied: &totals.applied_deletes,
            checkpoint: Some(&new_checkpoint),
        })
        .await?;
    if compares_keys {
        crate::reconcile::mark_reconciled(services, job, run.run_id).await?;
    }
    run.checkpoint = Some(new_checkpoint);
    run.batches += 1;
    let queued = totals.queued.len();
    if queued > 0 {
        tracing::warn!(
            queued,
            "conflicts wait for a person: see `lockstep conflicts list {}`",
            spec.name
        );
    }
    if let Some(progress) = &options.progress {
        progress(&Progress {
            run_id: run.run_id,
            metrics: run.metrics,
            batches: run.batches,
        });
    }
    check_rejected(job, run, &rejected_keys, &retries)?;
    Ok(None)
}

/// A chunk's base rows (and the person's decisions it applied), written to both sides and
/// flushed, waiting for their commit.
struct WrittenChunk {
    number: u64,
    upserts: Vec<BaseEntry>,
    applied: Vec<i64>,
}

impl WrittenChunk {
    fn as_commit(&self) -> ChunkCommit<'_> {
        ChunkCommit {
            upserts: &self.upserts,
            applied: &self.applied,
            conflicts: &[],
        }
    }
}

/// One state commit of the chunk loop: a written chunk's base rows and applied decisions,
/// with the conflicts of the chunk decided next.
struct ChunkCommit<'a> {
    upserts: &'a [BaseEntry],
    applied: &'a [i64],
    conflicts: &'a [Conflict],
}

impl ChunkCommit<'_> {
    /// The conflicts of a decided chunk alone (the first chunk's, before anything is written).
    fn conflicts_only(plan: &Plan) -> ChunkCommit<'_> {
        ChunkCommit {
            upserts: &[],
            applied: &[],
            conflicts: &plan.conflicts,
        }
    }

    /// Commits it under the lease's fencing `token`, with the run's counts as they stand;
    /// nothing when it holds nothing.
    async fn commit(
        &self,
        state: &dyn lockstep_state::StateStore,
        sync: &str,
        run: i64,
        token: i64,
        metrics: &lockstep_core::RunMetrics,
    ) -> Result<(), EngineError> {
        if self.upserts.is_empty() && self.applied.is_empty() && self.conflicts.is_empty() {
            return Ok(());
        }
        state
            .commit_two_way(&TwoWayCommit {
                sync,
                run,
                lease_token: Some(token),
                metrics,
                upserts: self.upserts,
                deletes: &[],
                conflicts: self.conflicts,
                applied: self.applied,
                checkpoint: None,
            })
            .await?;
        Ok(())
    }
}

/// How a chunk's writes correct the run's counts, applied once the chunk is written (the
/// next chunk's decision counts into the run's metrics meanwhile).
#[derive(Default)]
struct CountFix {
    /// Adds a side refused: rejected, not added.
    refused_adds: u64,
    /// Updates a side refused: rejected, not updated.
    refused_updates: u64,
    /// Side a's one-way fields refreshed from its read-back.
    refreshed: u64,
}

impl CountFix {
    fn apply(&self, metrics: &mut lockstep_core::RunMetrics) {
        metrics.added = metrics.added.saturating_sub(self.refused_adds);
        metrics.updated = metrics.updated.saturating_sub(self.refused_updates) + self.refreshed;
    }
}

/// What writing one side's share of a chunk gave.
struct SideWrite {
    /// The records the side refused.
    refusals: Vec<Refusal>,
    /// The fingerprints (and with `keep_values`, the values) of what the side now holds,
    /// read back by key; empty when its connector cannot read by key.
    read_back: HashMap<String, (u128, Map<String, Value>)>,
}

/// Writes `upserts` to `side`, flushes it, and reads back what it took.
async fn write_side(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    writer: &mut FencedWriter,
    source: Option<&mut lockstep_plugin_host::SourceHandle>,
    upserts: Vec<(String, Map<String, Value>)>,
    fields: &Fields,
    keep_values: bool,
) -> Result<SideWrite, EngineError> {
    let mut refusals = Vec::new();
    let mut refused: HashSet<String> = HashSet::new();
    for rows in upserts.chunks(spec.batch_size.max(1)) {
        let own: Vec<Map<String, Value>> = rows.iter().map(|(_, v)| own_row(side, v)).collect();
        let batch = to_batch(spec, side, &side.written, &own)?;
        drop(own);
        let outcome = writer.upsert(batch).await?;
        for r in &outcome.rejected {
            if let Some((key, values)) = rows.get(r.row) {
                tracing::warn!(side = %side.side, key, reason = r.reason, "side refused a record");
                refused.insert(key.clone());
                refusals.push(Refusal {
                    side: side.side,
                    key: key.clone(),
                    values: values.clone(),
                    field: r.field.clone(),
                    reason: r.reason.clone(),
                });
            }
        }
    }
    if upserts.is_empty() {
        return Ok(SideWrite {
            refusals,
            read_back: HashMap::new(),
        });
    }
    writer.flush().await?;
    let keys: Vec<&String> = upserts
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !refused.contains(*k))
        .collect();
    let read_back = match source {
        Some(source) if !keys.is_empty() => {
            read_fingerprints(spec, side, source, &keys, fields, keep_values).await?
        }
        _ => HashMap::new(),
    };
    Ok(SideWrite {
        refusals,
        read_back,
    })
}

/// How many touched keys one chunk decides, writes and commits: what a run holds of the
/// records' values at once.
const TOUCHED_CHUNK: usize = 1_024;

/// [`TOUCHED_CHUNK`], or `LOCKSTEP_TWO_WAY_CHUNK` when set to a positive number: the crash
/// tests use chunks of a few keys, so that a kill lands between chunks.
fn touched_chunk() -> usize {
    static CHUNK_SIZE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CHUNK_SIZE.get_or_init(|| {
        std::env::var("LOCKSTEP_TWO_WAY_CHUNK")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(TOUCHED_CHUNK)
    })
}

/// What a run keeps across its chunks: keys only, for the deletes and the last commit.
#[derive(Default)]
struct Totals {
    /// Keys to delete on each side, written after every chunk (behind the mass-delete guard).
    deletes: [Vec<String>; 2],
    /// Base keys to forget, in the last commit.
    forget: Vec<String>,
    /// Conflicts (by id) whose person's decision is a delete: applied with the deletes.
    applied_deletes: Vec<i64>,
    /// Keys of the conflicts this run queued for a person.
    queued: HashSet<String>,
    /// Keys of pending rejects whose record got a new base in this run.
    traced: HashSet<String>,
    /// How many conflicts the run found.
    conflicts: usize,
}

impl Totals {
    /// Moves the keys of `plan`'s deletes into the totals.
    /// Counts the conflicts of `plan`, now recorded, and remembers the keys queued for a
    /// person; the plan keeps none of them.
    fn conflicts_recorded(&mut self, plan: &mut Plan) {
        self.conflicts += plan.conflicts.len();
        self.queued.extend(
            plan.conflicts
                .iter()
                .filter(|c| c.status == ConflictStatus::Open)
                .map(|c| c.key.clone()),
        );
        plan.conflicts = Vec::new();
    }

    fn take_keys(&mut self, plan: &mut Plan) {
        for i in 0..2 {
            self.deletes[i].append(&mut plan.deletes[i]);
        }
        self.forget.append(&mut plan.forget);
        self.applied_deletes.append(&mut plan.applied_deletes);
    }

    /// Notes which pending rejects `plan` gives a new base.
    fn trace_retries(&mut self, plan: &Plan, retries: &rejects::Retries) {
        if retries.keys.is_empty() {
            return;
        }
        self.traced.extend(
            plan.base
                .iter()
                .filter(|b| retries.keys.contains(&b.key))
                .map(|b| b.key.clone()),
        );
    }
}

/// The mass-delete guard, per side: the deletes a run would apply on a side against its size.
/// Past `max_delete_fraction`, none of that side's deletes is applied and their records keep
/// their base.
fn guard_deletes(
    spec: &SyncSpec,
    options: &RunOptions,
    run: &mut RunState,
    totals: &mut Totals,
    sizes: [u64; 2],
) {
    for side in [Side::A, Side::B] {
        let i = index(side);
        let found = totals.deletes[i].len() as u64;
        let size = sizes[i].max(found);
        let limit = spec.delete.max_delete_fraction * size as f64;
        if found > 0 && found as f64 > limit && !options.allow_mass_delete {
            let held: HashSet<String> = totals.deletes[i].drain(..).collect();
            totals.forget.retain(|k| !held.contains(k));
            // A person's delete is applied only when both sides' deletes are.
            totals.applied_deletes.clear();
            run.metrics.deleted -= found;
            run.held = Some(format!(
                "sync `{}`: side {} lost {found} records since the last run, which would delete \
                 {found} of the {size} records of side {side}, more than max_delete_fraction \
                 ({}) allows; they were not deleted. If the deletes are real, run `lockstep run \
                 {} --allow-mass-delete`",
                spec.name,
                side.other(),
                spec.delete.max_delete_fraction,
                spec.name
            ));
        }
    }
}

/// Adds samples of one chunk's `plan` to `preview`: its writes, and a line per conflict
/// (`seen` counts the conflicts of earlier chunks).
fn sample_into(preview: &mut Preview, plan: &Plan, seen: &mut usize) {
    for side in [Side::A, Side::B] {
        let i = index(side);
        let room = PREVIEW_SAMPLE
            .saturating_sub(preview.writes.iter().filter(|(s, _)| *s == side).count());
        preview.writes.extend(
            plan.upserts[i]
                .iter()
                .take(room)
                .map(|(_, v)| (side, v.clone())),
        );
    }
    for c in &plan.conflicts {
        *seen += 1;
        if *seen > PREVIEW_SAMPLE {
            continue;
        }
        let show = |m: &Option<Map<String, Value>>, f: &str| match m {
            None => "(deleted)".to_owned(),
            Some(m) => m.get(f).map_or("null".to_owned(), Value::to_string),
        };
        let fields: Vec<String> = c
            .fields
            .iter()
            .map(|f| format!("{f}: a {} / b {}", show(&c.a, f), show(&c.b, f)))
            .collect();
        preview.notes.push(format!(
            "conflict on {}: {}; {} decides: {}",
            c.key,
            fields.join(", "),
            c.policy,
            match c.status {
                ConflictStatus::Open => "queued for a person".to_owned(),
                _ => format!("take {}", c.decision),
            }
        ));
    }
}

/// Adds the samples of the deletes, and the count of conflicts past the sample, to `preview`.
fn sample_deletes(preview: &mut Preview, totals: &Totals) {
    for side in [Side::A, Side::B] {
        preview.deletes.extend(
            totals.deletes[index(side)]
                .iter()
                .take(PREVIEW_SAMPLE)
                .map(|k| (side, k.clone())),
        );
    }
    if totals.conflicts > PREVIEW_SAMPLE {
        preview.notes.push(format!(
            "... and {} more conflicts",
            totals.conflicts - PREVIEW_SAMPLE
        ));
    }
}

/// What [`decide_chunk`] decides with.
struct Deciding<'a> {
    spec: &'a SyncSpec,
    tw: &'a TwoWaySpec,
    fields: &'a Fields,
    run: i64,
    unsettled: &'a HashMap<String, Conflict>,
    deleted: &'a [HashSet<String>; 2],
}

/// Looks up the base of `chunk` and decides its keys, taking their records out of `changes`;
/// the keys of the chunk's deletes move into `totals`. The base's fingerprints tell which
/// side changed each record; its values are looked up only for the records whose decision
/// reads them ([`conflict::needs_base_values`]: both sides changed it, or one changed what the
/// other deleted), so that the records a run reads back unchanged, Lockstep's own writes
/// above all, cost no parsing of their base.
#[allow(clippy::too_many_arguments)]
async fn decide_next(
    state: &dyn lockstep_state::StateStore,
    d: &Deciding<'_>,
    chunk: &[String],
    changes: &mut [SideChanges; 2],
    prefetched: &mut Prefetched,
    metrics: &mut lockstep_core::RunMetrics,
    totals: &mut Totals,
) -> Result<Plan, EngineError> {
    let mut plan = Plan::default();
    let missing: Vec<String> = chunk
        .iter()
        .filter(|k| !prefetched.covers(k))
        .cloned()
        .collect();
    let mut fingerprints = if missing.is_empty() {
        HashMap::new()
    } else {
        state.base_fingerprints(&d.spec.name, &missing).await?
    };
    drop(missing);
    prefetched.take_into(chunk, &mut fingerprints);
    let wanted: Vec<String> = chunk
        .iter()
        .filter(|key| {
            !d.unsettled.contains_key(*key) && fingerprints.contains_key(*key) && {
                let [a, b] = side_changes(d, &fingerprints, changes, key);
                conflict::needs_base_values(a, b)
            }
        })
        .cloned()
        .collect();
    let bases = if wanted.is_empty() {
        HashMap::new()
    } else {
        state.base_lookup(&d.spec.name, &wanted).await?
    };
    drop(wanted);
    decide_chunk(
        &mut plan,
        metrics,
        d,
        &Bases {
            fingerprints: &fingerprints,
            values: &bases,
        },
        chunk,
        changes,
    )?;
    totals.take_keys(&mut plan);
    Ok(plan)
}

/// The most keys whose base fingerprints a run looks up ahead of their chunks (about 100
/// bytes each while held).
const PREFETCH_KEYS: usize = 32_768;

/// Base fingerprints looked up ahead of their chunks: those of the first [`PREFETCH_KEYS`]
/// keys (in key order, the order chunks take them) that the sides' reads returned, looked
/// up while the key-set summaries run in the databases. No base row of these keys changes
/// before its chunk is decided: a run commits a key's base only after deciding it.
#[derive(Default)]
struct Prefetched {
    /// By key: the fingerprints, or `None` when the key has no base.
    found: HashMap<String, Option<BaseFingerprints>>,
}

impl Prefetched {
    async fn look_up(
        state: &dyn lockstep_state::StateStore,
        sync: &str,
        changes: &[SideChanges; 2],
    ) -> Result<Self, EngineError> {
        let mut keys: Vec<&String> = changes[0]
            .records
            .keys()
            .chain(changes[1].records.keys())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys.truncate(PREFETCH_KEYS);
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        if keys.is_empty() {
            return Ok(Self::default());
        }
        let mut found = state.base_fingerprints(sync, &keys).await?;
        Ok(Self {
            found: keys
                .into_iter()
                .map(|k| {
                    let fingerprints = found.remove(&k);
                    (k, fingerprints)
                })
                .collect(),
        })
    }

    /// Whether `key` was looked up.
    fn covers(&self, key: &str) -> bool {
        self.found.contains_key(key)
    }

    /// Moves the fingerprints of `chunk`'s looked-up keys that have a base into `into`.
    fn take_into(&mut self, chunk: &[String], into: &mut HashMap<String, BaseFingerprints>) {
        if self.found.is_empty() {
            return;
        }
        for key in chunk {
            if let Some((key, Some(fingerprints))) = self.found.remove_entry(key) {
                into.insert(key, fingerprints);
            }
        }
    }
}

/// The base of a chunk's keys: every key's fingerprints, and the values of those whose
/// decision reads them.
struct Bases<'a> {
    fingerprints: &'a HashMap<String, BaseFingerprints>,
    values: &'a HashMap<String, BaseEntry>,
}

/// Side `i`'s fingerprint in `base`.
fn base_fingerprint(base: &BaseFingerprints, i: usize) -> u128 {
    if i == 0 {
        base.a
    } else {
        base.b
    }
}

/// What each side did to `key` since its base (by fingerprints), before its records are
/// taken.
fn side_changes(
    d: &Deciding<'_>,
    fingerprints: &HashMap<String, BaseFingerprints>,
    changes: &[SideChanges; 2],
    key: &str,
) -> [Change; 2] {
    let base = fingerprints.get(key);
    [0, 1].map(|i| match changes[i].fingerprint(key) {
        Some(fp) if base.is_some_and(|b| base_fingerprint(b, i) == fp) => Change::Same,
        Some(_) => Change::Changed,
        // A side's tombstone of a record the base never had is no delete.
        None if base.is_some() && d.deleted[i].contains(key) => Change::Deleted,
        None if base.is_some() => Change::Same,
        None => Change::Absent,
    })
}

/// Decides the keys of `chunk` into `plan`, taking their records out of `changes`. A side's
/// record is turned into a map only when the side changed it.
fn decide_chunk(
    plan: &mut Plan,
    metrics: &mut lockstep_core::RunMetrics,
    d: &Deciding<'_>,
    bases: &Bases<'_>,
    chunk: &[String],
    changes: &mut [SideChanges; 2],
) -> Result<(), EngineError> {
    for key in chunk {
        if let Some(c) = d.unsettled.get(key) {
            let records: [Option<SideRecord>; 2] = [changes[0].take(key), changes[1].take(key)];
            if c.status == ConflictStatus::Resolved {
                apply_resolution(plan, metrics, key, c);
            } else {
                still_open(plan, metrics, key, c, &records, d.deleted);
            }
            continue;
        }
        let kinds = side_changes(d, bases.fingerprints, changes, key);
        let read = changes.iter().filter(|c| c.contains(key)).count() as u64;
        let records: [Option<SideRecord>; 2] = [0, 1].map(|i| {
            if kinds[i] == Change::Changed {
                changes[i].take(key)
            } else {
                changes[i].discard(key);
                None
            }
        });
        let base = if conflict::needs_base_values(kinds[0], kinds[1])
            && bases.fingerprints.contains_key(key)
        {
            // Looked up by `decide_next` for exactly these keys, under the run's lease.
            Some(
                &bases
                    .values
                    .get(key)
                    .ok_or_else(|| {
                        EngineError::Internal(format!(
                    "sync `{}`: the base of key `{key}` was gone from the state store between \
                     two lookups of the same run",
                    d.spec.name
                ))
                    })?
                    .base,
            )
        } else {
            None
        };
        let states: [SideState<'_>; 2] = [0, 1].map(|i| match (kinds[i], &records[i]) {
            (Change::Changed, Some(r)) => SideState::Changed(r),
            (Change::Deleted, _) => SideState::Deleted,
            (Change::Absent, _) => SideState::Absent,
            _ => SideState::Same,
        });
        let outcome = conflict::decide(
            d.tw,
            d.fields,
            base.map(|values| Base { values }),
            states[0],
            states[1],
        );
        record_outcome(
            plan,
            metrics,
            &Decided {
                spec: d.spec,
                fields: d.fields,
                read,
                run: d.run,
                key,
                base,
                states: &states,
            },
            outcome,
        );
    }
    Ok(())
}

/// Whether both sides are known to still hold exactly the base's keys, by their key-set
/// summaries (count and order-independent hash, computed in place): then neither side
/// deleted anything and no key needs streaming. `false` means "not known".
async fn key_sets_unchanged(
    services: Services<'_>,
    job: &SyncJob,
    sides: [&SideIo<'_>; 2],
    key: &[String],
    in_base: u64,
) -> bool {
    let Some(a_key) = sides[0].mapper.key_copies() else {
        return false;
    };
    if !sides
        .iter()
        .all(|s| crate::summary::summarizes(services, &s.endpoint.connector))
    {
        return false;
    }
    let a = crate::summary::summary(services, &job.source, &sides[0].stream.name, a_key);
    let b = crate::summary::summary(
        services,
        &job.destination,
        &sides[1].stream.name,
        key.to_vec(),
    );
    match tokio::join!(a, b) {
        (Ok(a), Ok(b)) => {
            a.algorithm == b.algorithm
                && a.hash == b.hash
                && a.count == b.count
                && a.count == in_base
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "could not summarize the key sets; reading the keys instead");
            false
        }
    }
}

/// The spec that reads side b into the mapped space: every mapped field under its own name.
fn side_b_spec(spec: &SyncSpec, tw: &TwoWaySpec, fields: &Fields, key: &[String]) -> SyncSpec {
    SyncSpec {
        name: spec.name.clone(),
        source: spec.destination.clone(),
        destination: EndpointSpec {
            connection: spec.source.connection.clone(),
            stream: spec.source.stream.clone(),
        },
        mode: SyncMode::Full,
        cursor_field: tw.b_cursor_field.clone(),
        key: key.to_vec(),
        fields: fields
            .all
            .iter()
            .map(|f| FieldMapping::copy(f.clone(), f.clone()))
            .collect(),
        batch_size: spec.batch_size,
        delete: spec.delete.clone(),
        max_rejected: spec.max_rejected,
        use_ledger: true,
        two_way: None,
        cdc: None,
    }
}

/// The side's own fields named `names` (side a's key fields).
fn own_fields(
    stream: &StreamInfo,
    names: &[String],
    spec: &SyncSpec,
) -> Result<Vec<FieldInfo>, EngineError> {
    names
        .iter()
        .map(|n| {
            stream
                .field(n)
                .cloned()
                .map(|f| FieldInfo {
                    native_type: None,
                    ..f
                })
                .ok_or_else(|| {
                    EngineError::Schema(format!(
                        "sync `{}`: side a has no key field `{n}`",
                        spec.name
                    ))
                })
        })
        .collect()
}

fn reads_by_keys(services: Services<'_>, endpoint: &Endpoint) -> bool {
    services.registry.get(&endpoint.connector).is_ok_and(|p| {
        p.manifest
            .features
            .iter()
            .any(|f| f == FEATURE_READ_BY_KEYS)
    })
}

/// The read of what changed on `side` since `checkpoint` (everything, without a cursor):
/// the mapping's fields, the cursor and the tombstone mark.
fn changes_request(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    checkpoint: Option<&Value>,
    dry_run: bool,
) -> ReadRequest {
    let mut read_fields = side.mapper.source_fields();
    for extra in [&side.cursor, &side.tombstone].into_iter().flatten() {
        if !read_fields.contains(extra) {
            read_fields.push(extra.clone());
        }
    }
    ReadRequest {
        stream: side.stream.name.clone(),
        mode: if side.cursor.is_some() {
            ReadMode::Incremental
        } else {
            ReadMode::Full
        },
        fields: Some(read_fields),
        cursor_field: side.cursor.clone(),
        key: side.mapper.source_key().to_vec(),
        checkpoint: checkpoint.filter(|c| !c.is_null()).cloned(),
        batch_size: Some(spec.batch_size),
        dry_run,
        ..Default::default()
    }
}

/// Reads what changed on `side` since `checkpoint` (everything, without a cursor).
async fn read_changes(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    source: &mut lockstep_plugin_host::SourceHandle,
    checkpoint: Option<&Value>,
    fields: &Fields,
    dry_run: bool,
) -> Result<SideChanges, EngineError> {
    let incremental = side.cursor.is_some();
    let request = changes_request(spec, side, checkpoint, dry_run);
    // Both sides are read at once, beside the key-set summaries, in one task.
    let mut reader = source.read(&request).await?.on_plugin_thread();
    let mut out = SideChanges::default();
    let mut keys = KeySet::default();
    while let Some((batch, next)) = reader.next().await? {
        let mapped = take_batch(spec, side, &mut out, &batch, next)?;
        // The records are held as rows of the mapped batch, not as maps.
        out.hold(&mapped.batch);
        side_records(
            side,
            fields,
            &batch,
            &mapped,
            false,
            |_| true,
            |row, key, record| {
                match record {
                    // A later row of the same key in this read decides: the last one wins.
                    None => {
                        out.remove(&key);
                        out.tombstoned.insert(key);
                    }
                    Some(record) => {
                        out.tombstoned.remove(&key);
                        if !incremental {
                            keys.insert(&key);
                        }
                        out.insert_row(key, row, record.fingerprint, record.modified);
                    }
                }
            },
        )?;
        out.seal_last();
    }
    out.seal();
    if !incremental {
        keys.seal();
        out.keys = Some(keys);
    }
    Ok(out)
}

/// The head of every loop that reads a side's changes: refuses a batch of records the side
/// could not read (a two-way run cannot tell them from deleted ones), moves the side's
/// checkpoint and counts, and maps the batch, warning of each record the mapping rejects.
fn take_batch(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    out: &mut SideChanges,
    batch: &RecordBatch,
    next: Value,
) -> Result<MappedBatch, EngineError> {
    refuse_rejects(spec, side, batch)?;
    out.checkpoint = Some(next);
    out.read += batch.num_rows() as u64;
    let mapped = side.mapper.map(batch)?;
    for r in &mapped.rejected {
        tracing::warn!(side = %side.side, row = r.row, field = r.field.as_deref(), reason = r.reason, "record could not be mapped");
    }
    out.rejected += mapped.rejected.len() as u64;
    Ok(mapped)
}

/// Turns one batch of `side` (`batch` as read, `mapped` its mapping) into the side's
/// records: each row's key with its record (values, fingerprint over the side's compared
/// fields, and the cursor column as modification time), or `None` for a row the side's
/// tombstone marks deleted, with the row's index in `mapped`. Rows whose key `keep` refuses
/// are skipped before any work. Without `with_values` the records' values are left empty
/// and the fingerprint is hashed from the batch's columns, no map built: for a caller that
/// keeps the row, or only the fingerprint.
fn side_records(
    side: &SideIo<'_>,
    fields: &Fields,
    batch: &RecordBatch,
    mapped: &MappedBatch,
    with_values: bool,
    keep: impl Fn(&str) -> bool,
    mut each: impl FnMut(usize, String, Option<SideRecord>),
) -> Result<(), EngineError> {
    let row_keys = record_keys(&mapped.batch, side.mapper.key())?;
    let marks = side.tombstone.as_ref().map(|field| {
        crate::rows::mapped_marks(
            &crate::rows::tombstoned(batch, field).unwrap_or_default(),
            &mapped.source_rows,
        )
    });
    let cursor_column = side.cursor.as_ref().and_then(|c| {
        let schema = batch.schema();
        let i = schema.index_of(c).ok()?;
        Some((
            batch.column(i).clone(),
            DataType::from_arrow_field(schema.field(i)),
        ))
    });
    // One row's values at a time: a whole batch as maps would be many times its size.
    let logical = logical_types(&mapped.batch);
    let compared = fields.of(side.side);
    let schema = mapped.batch.schema();
    let columns: Vec<Option<usize>> = compared.iter().map(|f| schema.index_of(f).ok()).collect();
    for (row, (key, source_row)) in row_keys.into_iter().zip(&mapped.source_rows).enumerate() {
        if !keep(&key) {
            continue;
        }
        if marks.as_ref().is_some_and(|m| m.get(row) == Some(&true)) {
            each(row, key, None);
            continue;
        }
        let (values, fingerprint) = if with_values {
            let values = row_values_typed(&mapped.batch, row, &logical);
            let fingerprint = conflict::fingerprint(&values, compared);
            (values, fingerprint)
        } else {
            let fingerprint = conflict::fingerprint_by(compared, |i| {
                columns[i].map(|c| json_value(mapped.batch.column(c), row, logical[c]))
            });
            (Map::new(), fingerprint)
        };
        let modified = cursor_column
            .as_ref()
            .map(|(column, logical)| json_value(column, *source_row, *logical));
        each(
            row,
            key,
            Some(SideRecord {
                values,
                fingerprint,
                modified,
            }),
        );
    }
    Ok(())
}

/// Every key `side` has now, through its mapping of the key.
async fn read_keys(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    source: &mut lockstep_plugin_host::SourceHandle,
    dry_run: bool,
) -> Result<KeySet, EngineError> {
    let key_mapper = side.mapper.key_mapper();
    let request = ReadRequest {
        stream: side.stream.name.clone(),
        mode: ReadMode::Full,
        fields: Some(key_mapper.source_fields()),
        key: key_mapper.source_key().to_vec(),
        batch_size: Some(spec.batch_size.max(50_000)),
        dry_run,
        ..Default::default()
    };
    let mut reader = source.read(&request).await?;
    let mut keys = KeySet::default();
    while let Some((batch, _)) = reader.next().await? {
        refuse_rejects(spec, side, &batch)?;
        let mapped = key_mapper.map(&batch)?;
        for key in record_keys(&mapped.batch, key_mapper.key())? {
            keys.insert(&key);
        }
    }
    keys.seal();
    Ok(keys)
}

fn refuse_rejects(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    batch: &RecordBatch,
) -> Result<(), EngineError> {
    if is_rejects_batch(batch) {
        return Err(EngineError::Schema(format!(
            "sync `{}`: side {} could not read {} of its records; a two-way run cannot tell \
             them from deleted ones. Fix them in `{}` and run again",
            spec.name,
            side.side,
            batch.num_rows(),
            side.endpoint.connector
        )));
    }
    Ok(())
}

/// Reads the records just written to `side` back by key: their fingerprints as the side
/// stores them, and (with `keep_values`, else empty maps) their values in the mapped space.
async fn read_fingerprints(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    source: &mut lockstep_plugin_host::SourceHandle,
    keys: &[&String],
    fields: &Fields,
    keep_values: bool,
) -> Result<HashMap<String, (u128, Map<String, Value>)>, EngineError> {
    let mut out = HashMap::with_capacity(keys.len());
    for chunk in keys.chunks(CHUNK) {
        let key_values = chunk
            .iter()
            .map(|k| serde_json::from_str::<Vec<Value>>(k))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| EngineError::Internal(format!("a record key is not a JSON array: {e}")))?;
        let request = ReadRequest {
            stream: side.stream.name.clone(),
            mode: ReadMode::Full,
            fields: Some(side.mapper.source_fields()),
            key: side.mapper.source_key().to_vec(),
            batch_size: Some(spec.batch_size),
            keys: Some(key_values),
            ..Default::default()
        };
        // Both sides' writes and read-backs run at once, in one task.
        let mut reader = source.read(&request).await?.on_plugin_thread();
        while let Some((batch, _)) = reader.next().await? {
            let mapped = side.mapper.map(&batch)?;
            let row_keys = record_keys(&mapped.batch, side.mapper.key())?;
            let logical = logical_types(&mapped.batch);
            for (row, key) in row_keys.into_iter().enumerate() {
                let values = row_values_typed(&mapped.batch, row, &logical);
                let fingerprint = conflict::fingerprint(&values, fields.of(side.side));
                out.insert(
                    key,
                    (fingerprint, if keep_values { values } else { Map::new() }),
                );
            }
        }
    }
    Ok(out)
}

/// After side a received records from side b: its one-way fields are computed from what it
/// now holds (say `shout = upper(name)` after b changed `name`), so where side a's values
/// read back differ from the planned base, they become the base and go to side b too (side b
/// is written after side a). Returns how many records this adds to side b's writes.
fn refresh_one_way(
    plan: &mut Plan,
    read_back: &HashMap<String, (u128, Map<String, Value>)>,
    fields: &Fields,
) -> u64 {
    let mut added = 0;
    let one_way: Vec<&String> = fields
        .all
        .iter()
        .filter(|f| !fields.shared.contains(f))
        .collect();
    let mut to_b: HashMap<String, usize> = plan.upserts[1]
        .iter()
        .enumerate()
        .map(|(i, (k, _))| (k.clone(), i))
        .collect();
    for pending in plan.base.iter_mut() {
        let Some((_, now)) = read_back.get(&pending.key) else {
            continue;
        };
        let stale = one_way
            .iter()
            .any(|f| !conflict::same_value(pending.values.get(*f), now.get(*f)));
        if !stale {
            continue;
        }
        for f in &one_way {
            pending
                .values
                .insert((*f).clone(), now.get(*f).cloned().unwrap_or(Value::Null));
        }
        pending.fingerprints[1] = None;
        let upserts = &mut plan.upserts[1];
        match to_b.get(&pending.key) {
            Some(&i) => upserts[i].1 = pending.values.clone(),
            None => {
                to_b.insert(pending.key.clone(), upserts.len());
                upserts.push((pending.key.clone(), pending.values.clone()));
                added += 1;
            }
        }
    }
    added
}

/// A side's fingerprint of what was written to it, for a side that cannot be read by key.
fn written_fingerprint(values: &Map<String, Value>, i: usize, fields: &Fields) -> u128 {
    let side = if i == 0 { Side::A } else { Side::B };
    conflict::fingerprint(values, fields.of(side))
}

/// A mapped row under the side's own field names (only the fields written to it).
fn own_row(side: &SideIo<'_>, values: &Map<String, Value>) -> Map<String, Value> {
    side.written
        .iter()
        .map(|(mapped, own)| {
            (
                own.name.clone(),
                values.get(mapped).cloned().unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// The key columns of `key` (canonical key text) under the side's own key names.
fn key_row(key: &str, side: &SideIo<'_>) -> Result<Map<String, Value>, EngineError> {
    let values: Vec<Value> = serde_json::from_str(key).map_err(|e| {
        EngineError::Internal(format!("record key `{key}` is not a JSON array: {e}"))
    })?;
    Ok(side
        .key_fields
        .iter()
        .map(|f| f.name.clone())
        .zip(values)
        .collect())
}

fn to_batch(
    spec: &SyncSpec,
    side: &SideIo<'_>,
    written: &[(String, FieldInfo)],
    rows: &[Map<String, Value>],
) -> Result<RecordBatch, EngineError> {
    let infos: Vec<FieldInfo> = written.iter().map(|(_, f)| f.clone()).collect();
    batch_from_rows(&infos, rows).map_err(|e| {
        EngineError::Schema(format!(
            "sync `{}`: a value does not fit side {}'s field ({e}); the two sides' types \
             differ for that field",
            spec.name, side.side
        ))
    })
}

/// Plans the writes of a person's decision: the values on both sides, or a delete on both.
fn apply_resolution(
    plan: &mut Plan,
    metrics: &mut lockstep_core::RunMetrics,
    key: &str,
    c: &Conflict,
) {
    match &c.resolution {
        Some(values) if !c.resolution_deletes => {
            plan.upserts[0].push((key.to_owned(), values.clone()));
            plan.upserts[1].push((key.to_owned(), values.clone()));
            plan.base.push(PendingBase {
                key: key.to_owned(),
                values: values.clone(),
                fingerprints: [None, None],
            });
            metrics.updated += 2;
        }
        _ => {
            plan.deletes[0].push(key.to_owned());
            plan.deletes[1].push(key.to_owned());
            plan.forget.push(key.to_owned());
            metrics.deleted += 2;
            plan.applied_deletes.push(c.id);
            return;
        }
    }
    plan.applied.push(c.id);
}

/// A record whose conflict waits for a person: nothing is written for it. When a side
/// changed it again, the queued conflict gets the new values (in place, not a new conflict).
fn still_open(
    plan: &mut Plan,
    metrics: &mut lockstep_core::RunMetrics,
    key: &str,
    c: &Conflict,
    records: &[Option<SideRecord>; 2],
    deleted: &[HashSet<String>; 2],
) {
    let now: [Option<Map<String, Value>>; 2] = [0, 1].map(|i| match &records[i] {
        Some(r) => Some(r.values.clone()),
        None if deleted[i].contains(key) => None,
        None => [&c.a, &c.b][i].clone(),
    });
    let read = records.iter().filter(|r| r.is_some()).count() as u64;
    metrics.unchanged += read;
    let same = |x: &Option<Map<String, Value>>, y: &Option<Map<String, Value>>| match (x, y) {
        (Some(x), Some(y)) => {
            let fields: Vec<String> = x.keys().chain(y.keys()).cloned().collect();
            conflict::fingerprint(x, &fields) == conflict::fingerprint(y, &fields)
        }
        (None, None) => true,
        _ => false,
    };
    if same(&now[0], &c.a) && same(&now[1], &c.b) {
        return;
    }
    let [a, b] = now;
    plan.conflicts.push(Conflict { a, b, ..c.clone() });
}

/// What [`record_outcome`] is deciding about.
struct Decided<'a> {
    spec: &'a SyncSpec,
    fields: &'a Fields,
    /// How many of the sides' reads had the record.
    read: u64,
    run: i64,
    key: &'a str,
    /// The base's values, when the decision needed them (every conflict on a key with a
    /// base does); `None` without a base.
    base: Option<&'a Map<String, Value>>,
    states: &'a [SideState<'a>; 2],
}

/// Adds one record's outcome to the plan and the metrics.
fn record_outcome(
    plan: &mut Plan,
    metrics: &mut lockstep_core::RunMetrics,
    d: &Decided<'_>,
    outcome: Outcome,
) {
    let Decided {
        spec,
        fields,
        read: read_here,
        run,
        key,
        base,
        states,
    } = *d;
    let record = |i: usize| match states[i] {
        SideState::Changed(r) => Some(r),
        _ => None,
    };
    let write = |plan: &mut Plan,
                 metrics: &mut lockstep_core::RunMetrics,
                 to: Side,
                 values: &Map<String, Value>| {
        plan.upserts[index(to)].push((key.to_owned(), values.clone()));
        if matches!(states[index(to)], SideState::Absent | SideState::Deleted) {
            metrics.added += 1;
            plan.adds[index(to)].insert(key.to_owned());
        } else {
            metrics.updated += 1;
        }
    };
    match outcome {
        Outcome::Nothing => metrics.unchanged += read_here,
        Outcome::Agreed(values) => {
            metrics.unchanged += read_here;
            plan.base.push(PendingBase {
                key: key.to_owned(),
                values,
                fingerprints: [
                    record(0).map(|r| r.fingerprint),
                    record(1).map(|r| r.fingerprint),
                ],
            });
        }
        Outcome::Write { to, values } => {
            write(plan, metrics, to, &values);
            let from = record(index(to.other()));
            let mut fingerprints = [None, None];
            fingerprints[index(to.other())] = from.map(|r| r.fingerprint);
            plan.base.push(PendingBase {
                key: key.to_owned(),
                values: from.map_or(values, |r| r.values.clone()),
                fingerprints,
            });
        }
        Outcome::Delete { on } => {
            plan.deletes[index(on)].push(key.to_owned());
            plan.forget.push(key.to_owned());
            metrics.deleted += 1;
        }
        Outcome::Forget => {
            metrics.unchanged += read_here;
            plan.forget.push(key.to_owned());
        }
        Outcome::Conflict(decision) => {
            metrics.conflicts += 1;
            let queued = decision.resolution == Resolution::Queued;
            let (resolution, deletes) = match &decision.resolution {
                Resolution::Values { values, .. } => {
                    let mut fingerprints = [None, None];
                    for (i, known) in fingerprints.iter_mut().enumerate() {
                        let side = if i == 0 { Side::A } else { Side::B };
                        let holds = record(i).is_some_and(|r| {
                            r.fingerprint == conflict::fingerprint(values, fields.of(side))
                        });
                        if holds {
                            *known = record(i).map(|r| r.fingerprint);
                        } else {
                            write(plan, metrics, side, values);
                        }
                    }
                    plan.base.push(PendingBase {
                        key: key.to_owned(),
                        values: values.clone(),
                        fingerprints,
                    });
                    (Some(values.clone()), false)
                }
                Resolution::Delete => {
                    for i in 0..2 {
                        if record(i).is_some() {
                            plan.deletes[i].push(key.to_owned());
                            metrics.deleted += 1;
                        }
                    }
                    plan.forget.push(key.to_owned());
                    (None, true)
                }
                Resolution::Queued => {
                    metrics.unchanged += read_here;
                    (None, false)
                }
            };
            plan.conflicts.push(Conflict {
                id: 0,
                sync: spec.name.clone(),
                run,
                key: key.to_owned(),
                base: base.cloned(),
                a: record(0).map(|r| r.values.clone()),
                b: record(1).map(|r| r.values.clone()),
                fields: decision.fields,
                policy: decision.policy.as_str().to_owned(),
                decision: decision.resolution.decision().to_owned(),
                resolution,
                resolution_deletes: deletes,
                status: if queued {
                    ConflictStatus::Open
                } else {
                    ConflictStatus::Auto
                },
                created_at: String::new(),
                resolved_by: None,
                resolved_at: None,
            });
        }
    }
}
