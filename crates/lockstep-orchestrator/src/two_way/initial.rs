//! The first run of a two-way sync over two sides that already hold records: the base is
//! empty, and holding both sides whole would need memory in proportion to their size.
//!
//! Side b is read first into a compact index: per record, an 8-byte hash of its key and its
//! fingerprint over the shared fields. Side a is then streamed: a record whose key and
//! values side b has too is an agreement, and its base row (a's values, both fingerprints)
//! is committed in chunks as the read goes; only a's records that differ from b's, or that
//! b lacks, are held (as rows of the read's batches). Last, side b is read again for the
//! records the index did not find agreeing (b's alone, different, marked deleted, or
//! sharing a key hash), and those go through the run's chunks like any change.
//!
//! Invariants:
//! - An agreement is only taken from an index entry whose key hash is unique on side b and
//!   whose fingerprint equals a's record's over the shared fields (which include the key
//!   fields): a hash shared by two of b's keys, a record read twice, or a tombstone sends
//!   every record of that hash to the general path, so no record of either side is skipped.
//! - The base rows committed here carry no checkpoint: a crash leaves a partial base and the
//!   old (empty) checkpoints, so the rerun reads both sides in full and decides every
//!   record against that base, where the records committed here are unchanged on both
//!   sides.
//! - Memory: 32 bytes per record of side b, plus the records that differ, plus one batch of
//!   side a and one chunk of base rows (a record's values become a map only for its base
//!   row).

use arrow::array::RecordBatch;
use lockstep_core::protocol::arrow_types::json_value;
use lockstep_core::protocol::DataType;
use lockstep_core::record_keys;
use lockstep_state::{BaseEntry, TwoWayCommit};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::{
    changes_request, logical_types, refuse_rejects, row_values_typed, side_records, take_batch,
    touched_chunk, Fields, SideChanges, SideIo,
};
use crate::conflict;
use crate::error::EngineError;
use crate::job::RunState;
use crate::lease::HeldLease;
use crate::services::Services;

/// How many of the run's chunks of base rows one commit of agreements carries: each commit
/// syncs the state store's log, and a first run over two filled sides commits every record.
/// Measured at 1M records (runs alternating): commits of 1,024 rows, median 33.3 s and 81 MB
/// at the peak; of 4,096, 26.7 and 28.6 s and 104 MB; of a read batch (10,000, as before the
/// values became maps a chunk at a time), 28.4 s and 142 to 150 MB.
const AGREED_CHUNKS_PER_COMMIT: usize = 4;

/// What the index knows of one key hash of side b.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// One record of b, not yet met on side a.
    Alone,
    /// Side a has the same record: its base row is written, b's record is not needed.
    Agreed,
    /// Not an agreement (values differ, a tombstone, a hash two keys share, a key read
    /// twice): b's records of this hash are read again and decided like any change.
    General,
}

/// One record of side b in the index.
struct Entry {
    hash: u64,
    fingerprint: u128,
    seen: Seen,
}

/// Side b's records by key hash, sorted.
struct Index(Vec<Entry>);

impl Index {
    fn find(&mut self, key: &str) -> Option<&mut Entry> {
        let hash = xxh3_64(key.as_bytes());
        let i = self.0.binary_search_by_key(&hash, |e| e.hash).ok()?;
        Some(&mut self.0[i])
    }

    fn general(&self, key: &str) -> bool {
        let hash = xxh3_64(key.as_bytes());
        match self.0.binary_search_by_key(&hash, |e| e.hash) {
            Ok(i) => self.0[i].seen != Seen::Agreed,
            Err(_) => false,
        }
    }
}

/// Reads both sides of a first run (empty base, no checkpoints) as described in the module
/// header: commits the base rows of the records both sides hold alike (unless `lease` is
/// `None`, a preview), and returns both sides' other records as the run's changes.
#[allow(clippy::too_many_arguments)]
pub(super) async fn read_both(
    services: Services<'_>,
    spec: &lockstep_core::SyncSpec,
    sides: [&SideIo<'_>; 2],
    sources: [&mut lockstep_plugin_host::SourceHandle; 2],
    fields: &Fields,
    dry_run: bool,
    lease: Option<&HeldLease>,
    run: &mut RunState,
) -> Result<[SideChanges; 2], EngineError> {
    let [side_a, side_b] = sides;
    let [source_a, source_b] = sources;
    let mut changes: [SideChanges; 2] = Default::default();

    // Side b, into the index.
    let request_b = changes_request(spec, side_b, None, dry_run);
    let mut entries: Vec<Entry> = Vec::new();
    let mut reader = source_b.read(&request_b).await?;
    while let Some((batch, next)) = reader.next().await? {
        let mapped = take_batch(spec, side_b, &mut changes[1], &batch, next)?;
        side_records(
            side_b,
            fields,
            &batch,
            &mapped,
            false,
            |_| true,
            |_, key, record| {
                entries.push(Entry {
                    hash: xxh3_64(key.as_bytes()),
                    fingerprint: record.as_ref().map_or(0, |r| r.fingerprint),
                    seen: if record.is_some() {
                        Seen::Alone
                    } else {
                        Seen::General
                    },
                });
            },
        )?;
    }
    drop(reader);
    entries.sort_unstable_by_key(|e| e.hash);
    // A hash met twice (two keys, or one key read twice): all its records go the general way.
    entries.dedup_by(|later, kept| {
        let same = later.hash == kept.hash;
        if same {
            kept.seen = Seen::General;
        }
        same
    });
    entries.shrink_to_fit();
    let mut index = Index(entries);

    // Side a, streamed against the index. A record's values become a map only when its
    // base row is built, a chunk at a time: a batch's maps would be many times its size.
    let request_a = changes_request(spec, side_a, None, dry_run);
    let chunk = touched_chunk() * AGREED_CHUNKS_PER_COMMIT;
    let mut agreed: Vec<BaseEntry> = Vec::new();
    let mut alike: Vec<Alike> = Vec::new();
    let mut reader = source_a.read(&request_a).await?;
    let out = &mut changes[0];
    while let Some((batch, next)) = reader.next().await? {
        let mapped = take_batch(spec, side_a, out, &batch, next)?;
        out.hold(&mapped.batch);
        let logical = logical_types(&mapped.batch);
        let shared = SharedColumns::new(&mapped.batch, fields);
        side_records(
            side_a,
            fields,
            &batch,
            &mapped,
            false,
            |_| true,
            |row, key, record| {
                let entry = index.find(&key);
                let Some(record) = record else {
                    if let Some(entry) = entry {
                        entry.seen = Seen::General;
                    }
                    out.remove(&key);
                    out.tombstoned.insert(key);
                    return;
                };
                out.tombstoned.remove(&key);
                if let Some(entry) = entry {
                    let same = entry.seen == Seen::Alone
                        && !out.contains(&key)
                        && entry.fingerprint
                            == shared
                                .fingerprint(&mapped.batch, row, &logical, fields)
                                .unwrap_or(record.fingerprint);
                    if same {
                        entry.seen = Seen::Agreed;
                        run.metrics.unchanged += 2;
                        alike.push(Alike {
                            key,
                            row,
                            fingerprint_a: record.fingerprint,
                            fingerprint_b: entry.fingerprint,
                        });
                        return;
                    }
                    if entry.seen == Seen::Agreed {
                        // A key a's read returned twice: its base row stands, and the later
                        // record is decided against it with b's record.
                        run.metrics.unchanged = run.metrics.unchanged.saturating_sub(2);
                    }
                    entry.seen = Seen::General;
                }
                out.insert_row(key, row, record.fingerprint, record.modified);
            },
        )?;
        out.seal_last();
        for a in alike.drain(..) {
            agreed.push(BaseEntry {
                base: row_values_typed(&mapped.batch, a.row, &logical),
                key: a.key,
                fingerprint_a: a.fingerprint_a,
                fingerprint_b: a.fingerprint_b,
            });
            if agreed.len() >= chunk {
                commit_agreed(services, spec, lease, run, &mut agreed).await?;
            }
        }
    }
    drop(reader);
    commit_agreed(services, spec, lease, run, &mut agreed).await?;
    changes[0].seal();

    // Side b again, for the records the index did not find agreeing.
    if index.0.iter().any(|e| e.seen != Seen::Agreed) {
        let mut reader = source_b.read(&request_b).await?;
        let out = &mut changes[1];
        while let Some((batch, _)) = reader.next().await? {
            refuse_rejects(spec, side_b, &batch)?;
            let mapped = side_b.mapper.map(&batch)?;
            let keys = record_keys(&mapped.batch, side_b.mapper.key())?;
            if !keys.iter().any(|k| index.general(k)) {
                continue;
            }
            drop(keys);
            out.hold(&mapped.batch);
            side_records(
                side_b,
                fields,
                &batch,
                &mapped,
                false,
                |key| index.general(key),
                |row, key, record| match record {
                    None => {
                        out.remove(&key);
                        out.tombstoned.insert(key);
                    }
                    Some(record) => {
                        out.tombstoned.remove(&key);
                        out.insert_row(key, row, record.fingerprint, record.modified);
                    }
                },
            )?;
            out.seal_last();
        }
        changes[1].seal();
    }
    Ok(changes)
}

/// A record of side a that side b holds alike: its base row is built from its batch's `row`.
struct Alike {
    key: String,
    row: usize,
    fingerprint_a: u128,
    fingerprint_b: u128,
}

/// Where a mapped batch of side a holds the shared fields, when side a has fields of its own
/// (one-way fields): side b's fingerprint covers the shared fields only.
struct SharedColumns(Option<Vec<Option<usize>>>);

impl SharedColumns {
    fn new(batch: &RecordBatch, fields: &Fields) -> Self {
        if fields.shared.len() == fields.all.len() {
            return Self(None);
        }
        let schema = batch.schema();
        Self(Some(
            fields
                .shared
                .iter()
                .map(|f| schema.index_of(f).ok())
                .collect(),
        ))
    }

    /// The fingerprint of `row` over the shared fields; `None` when they are all of side a's
    /// fields (then it is the record's own fingerprint).
    fn fingerprint(
        &self,
        batch: &RecordBatch,
        row: usize,
        logical: &[Option<DataType>],
        fields: &Fields,
    ) -> Option<u128> {
        let columns = self.0.as_ref()?;
        Some(conflict::fingerprint_by(&fields.shared, |i| {
            columns[i].map(|c| json_value(batch.column(c), row, logical[c]))
        }))
    }
}

/// Commits the base rows of `agreed` (none in a preview) and empties it.
async fn commit_agreed(
    services: Services<'_>,
    spec: &lockstep_core::SyncSpec,
    lease: Option<&HeldLease>,
    run: &RunState,
    agreed: &mut Vec<BaseEntry>,
) -> Result<(), EngineError> {
    if let (Some(lease), false) = (lease, agreed.is_empty()) {
        services
            .state
            .commit_two_way(&TwoWayCommit {
                sync: &spec.name,
                run: run.run_id,
                lease_token: Some(lease.lease().token),
                metrics: &run.metrics,
                upserts: agreed,
                deletes: &[],
                conflicts: &[],
                applied: &[],
                checkpoint: None,
            })
            .await?;
    }
    agreed.clear();
    Ok(())
}

/// Whether a run is a first run that [`read_both`] reads: an empty base and no checkpoint of
/// either side. `Value` is the sync's checkpoint (`{"a": .., "b": ..}`).
pub(super) fn applies(in_base: u64, checkpoint: &Value) -> bool {
    in_base == 0
        && ["a", "b"]
            .iter()
            .all(|s| checkpoint.get(*s).is_none_or(Value::is_null))
}
