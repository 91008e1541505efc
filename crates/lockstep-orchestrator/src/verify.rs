//! `lockstep verify`: do the sync's two systems really agree? Counts, freshness and a content
//! diff in the mapped space, and, when asked, a repair through the run's own write path.
//!
//! How it compares (see docs/verify.md): the source is read in full through its connector and
//! mapped; each record becomes (hash of its mapped key, hash of its mapped values, its source
//! key) in a compact index (`compare`). The destination is read through a source instance of
//! its own connector, cast to the mapped types, and each record is looked up in the index as
//! it arrives. Whole records are fetched again only for the keys that differ: by key when the
//! source connector reads by key (`read-by-keys`), else in one filtered pass.
//!
//! Where both sides provably hash alike (the same connector with `range-hash`, a mapping of
//! plain copies, the same types), the comparison happens in the databases instead
//! (`verify_pushdown`): ranges of the key space are hashed on both sides, and only the
//! records of candidate keys (those whose hashes differ) are read, indexed and probed as
//! above, so the report is the same either way.
//!
//! Invariants:
//! - Both sides are compared as mapped values of the destination's fields, so a rename, a
//!   transform or a type the systems store differently (INT against BIGINT) is no difference.
//! - Verify without `--repair` writes nothing, to either system or to the state store.
//! - A repair writes the source's current values (read now, by key), through the batch path of
//!   a run (the ledger forgets the repaired keys first, so that they are sent, not taken for
//!   unchanged), and deletes extra records only through the delete phase and its mass-delete
//!   guard; it is recorded as a run of kind `verify-repair`, under the sync's lease.
//! - Memory holds the source's index (24 bytes and the source key's text a record) and the
//!   differences, never a whole side.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Field, Schema};
use lockstep_core::protocol::{
    KeySummary, ReadMode, ReadRequest, Role, FEATURE_KEY_SUMMARY, FEATURE_READ_BY_KEYS,
};
use lockstep_core::{
    fingerprints, record_keys, RunMetrics, RunStatus, RunSummary, RUN_KIND_VERIFY_REPAIR,
};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::SourceHandle;
use lockstep_state::{BatchCommit, DeleteOrigin, RunEnd};
use serde::Serialize;
use serde_json::{Map, Value};

use lockstep_plugin_core::source_rejects::is_rejects_batch;

use crate::batch::apply_batch;
use crate::compare::{key_hash, Probe, SourceIndex};
use crate::context::{fields_to_read, Context};
use crate::engine::Engine;
use crate::error::EngineError;
use crate::job::{RunOptions, RunState, SyncJob};
use crate::lease::{FencedWriter, HeldLease};
use crate::rows::row_json;
use crate::services::{open_destination_stream, Services};
use crate::sink::{Sink, WriteSink};
use crate::verify_pushdown::{self, Compared as PushdownCompared, ContentComparison};

/// The most keys one read by keys asks for.
const KEYS_PER_READ: usize = 500;
/// The smallest batch verify reads with: bigger batches cost less per record.
const READ_BATCH: usize = 10_000;

/// How to verify.
#[derive(Clone)]
pub struct VerifyOptions {
    /// How many records of each kind of difference the report lists; `None` lists them all.
    pub sample: Option<usize>,
    /// Repair what differs (upserts of the source's values, deletes of extra records).
    pub repair: bool,
    /// The lease and mass-delete options of the repair's run.
    pub run: RunOptions,
}

/// One side's count and newest cursor value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideReport {
    /// The records of the stream.
    pub count: u64,
    /// Where the count came from: `connector` (counted in place, the `key-summary` feature)
    /// or `read` (counted while reading every record).
    pub counted_by: &'static str,
    /// The newest value of the sync's cursor field on this side (on the destination, of the
    /// field the cursor is copied to), when the sync has one.
    pub newest_cursor: Option<Value>,
}

/// The last successful run of the sync.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    pub run_id: i64,
    pub finished_at: Option<String>,
}

/// A record in one system and not the other.
#[derive(Debug, Clone, Serialize)]
pub struct RecordDifference {
    /// The record's mapped key (`[42]`).
    pub key: String,
    /// The record's mapped values, as that side has them.
    pub record: Map<String, Value>,
}

/// One field that differs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FieldDifference {
    pub field: String,
    pub source: Value,
    pub destination: Value,
}

/// A record both systems have, with other values.
#[derive(Debug, Clone, Serialize)]
pub struct ChangedRecord {
    pub key: String,
    pub fields: Vec<FieldDifference>,
}

/// What a repair did.
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    pub run_id: i64,
    pub status: RunStatus,
    pub metrics: RunMetrics,
    /// Why deletes were held (past `max_delete_fraction`), when they were.
    pub held: Option<String>,
    pub error: Option<String>,
}

/// What verify found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub sync: String,
    pub source: SideReport,
    pub destination: SideReport,
    /// The last successful run of the sync (repairs not counted).
    pub last_success: Option<LastRun>,
    /// Seconds since the last successful run ended.
    pub seconds_since_last_success: Option<i64>,
    /// How far the destination's newest cursor value is behind the source's, in seconds,
    /// when both are times.
    pub cursor_lag_seconds: Option<i64>,
    /// Counts of each kind of difference.
    pub missing: u64,
    pub extra: u64,
    pub different: u64,
    /// Keys the destination holds more than once (a table without a unique key).
    pub duplicates: u64,
    /// Source records the mapping cannot map: not compared (`lockstep rejects` has them).
    pub unmappable: u64,
    /// The records of each kind (a sample of `--sample`, or all).
    pub missing_records: Vec<RecordDifference>,
    pub extra_records: Vec<RecordDifference>,
    pub different_records: Vec<ChangedRecord>,
    pub duplicate_keys: Vec<String>,
    /// Whether the source was fetched by key (`read-by-keys`) or in a second, filtered pass.
    pub fetched_by_key: bool,
    /// How the content was compared: range hashes in both systems, or by reading both sides.
    pub content: ContentComparison,
    pub repair: Option<RepairReport>,
}

impl VerifyReport {
    /// Whether the two systems agree.
    pub fn agrees(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.different == 0 && self.duplicates == 0
    }

    /// The total count of differences (missing, extra, different, duplicate keys).
    pub fn differences(&self) -> u64 {
        self.missing + self.extra + self.different + self.duplicates
    }
}

/// What the comparison of the two sides gives the report.
struct Compared {
    index: SourceIndex,
    found: Found,
    source_side: SideReport,
    destination_side: SideReport,
    unmappable: u64,
    content: ContentComparison,
}

/// What both ways of comparing need.
struct CompareArgs<'a> {
    job: &'a SyncJob,
    mapper: &'a Mapper,
    /// The source fields to read.
    fields: &'a [String],
    cursor_type: Option<lockstep_core::protocol::DataType>,
    /// The destination field the cursor is copied to.
    cursor_target: Option<&'a str>,
}

/// The differences found, with what a repair needs.
#[derive(Default)]
struct Found {
    /// Extra keys in the destination, with the records (all of them kept: a repair deletes
    /// them).
    extra: Vec<(String, Map<String, Value>)>,
    /// Differing records: mapped key, the destination's record, the source key text.
    different: Vec<(String, Map<String, Value>, String)>,
    duplicates: Vec<String>,
    destination_count: u64,
    newest_cursor: Option<Value>,
}

impl Engine<'_> {
    /// Verifies the sync: counts, freshness and content; repairs when asked.
    pub async fn verify(
        &self,
        job: &SyncJob,
        options: VerifyOptions,
    ) -> Result<VerifyReport, EngineError> {
        let services = self.services();
        let spec = &job.spec;
        if options.repair && spec.mode == lockstep_core::SyncMode::TwoWay {
            return Err(EngineError::Config(format!(
                "sync `{}` is two-way: --repair would copy side a over side b, but either side \
                 may hold the newer values. Run the sync (`lockstep run {}`) and decide its \
                 conflicts (`lockstep conflicts list {}`) instead",
                spec.name, spec.name, spec.name
            )));
        }
        if !services
            .registry
            .supports(&job.destination.connector, Role::Source)
        {
            return Err(EngineError::Config(format!(
                "sync `{}`: verify reads the destination, but connector `{}` of connection `{}` \
                 cannot be read (it has no source role); verify needs a destination it can read",
                spec.name, job.destination.connector, spec.destination.connection
            )));
        }
        let (mut source, stream) = services.open_source_stream(job).await?;
        let mapper = Mapper::new(spec, &stream)?;
        let cursor_type = spec
            .cursor_field
            .as_ref()
            .and_then(|c| stream.field(c))
            .map(|f| f.data_type);
        let fields = fields_to_read(job, &mapper);
        let cursor_target = spec
            .cursor_field
            .as_ref()
            .and_then(|c| copied_to(&mapper, c));

        // 1-3. Compare: in the databases where both sides compute the same hashes, else by
        // reading both sides.
        let reading = CompareArgs {
            job,
            mapper: &mapper,
            fields: &fields,
            cursor_type,
            cursor_target: cursor_target.as_deref(),
        };
        let compared = match self
            .compare_in_place(&reading, &stream, &mut source)
            .await?
        {
            Ok(compared) => {
                tracing::info!(
                    sync = %spec.name,
                    ranges = compared.content.ranges,
                    differing_ranges = compared.content.differing_ranges,
                    candidates = compared.content.candidates,
                    "verify compared range hashes computed in both systems"
                );
                compared
            }
            Err(reason) => {
                tracing::info!(
                    sync = %spec.name,
                    reason = %reason,
                    "verify reads both sides: the range-hash pushdown does not apply"
                );
                self.compare_by_reading(&reading, &mut source, reason)
                    .await?
            }
        };
        let Compared {
            index,
            found,
            source_side,
            destination_side,
            unmappable,
            content,
        } = compared;

        // 4. The source's current records of the keys that differ.
        let wanted: Vec<(u64, String)> = index
            .missing()
            .map(|(h, k)| (h, k.to_owned()))
            .chain(
                found
                    .different
                    .iter()
                    .map(|(key, _, source_key)| (key_hash(key), source_key.clone())),
            )
            .collect();
        let fetched_by_key = reads_by_key(services, &job.source.connector);
        let fetched = if wanted.is_empty() {
            Vec::new()
        } else {
            fetch(&mut source, job, &mapper, &fields, &wanted, fetched_by_key).await?
        };
        drop(source);

        // 5. The report.
        let mut source_records: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
        for raw in &fetched {
            let mapped = mapper.map(raw)?;
            let keys = record_keys(&mapped.batch, mapper.key())?;
            for (row, key) in keys.into_iter().enumerate() {
                source_records.insert(key, row_json(&mapped.batch, row));
            }
        }
        let different_keys: HashSet<&str> =
            found.different.iter().map(|(k, _, _)| k.as_str()).collect();
        let limit = options.sample.unwrap_or(usize::MAX);
        let mut missing_records: Vec<RecordDifference> = Vec::new();
        let mut missing = 0u64;
        for (key, record) in &source_records {
            if different_keys.contains(key.as_str()) {
                continue;
            }
            missing += 1;
            if missing_records.len() < limit {
                missing_records.push(RecordDifference {
                    key: key.clone(),
                    record: record.clone(),
                });
            }
        }
        // A record missing when compared but gone from the source when fetched again was
        // deleted in between: it is no longer missing.
        let mut different_records = Vec::new();
        let mut different = 0u64;
        for (key, destination, _) in &found.different {
            // Likewise a record that changed back, or left the source, in between.
            let Some(source) = source_records.get(key) else {
                continue;
            };
            let fields = field_differences(source, destination);
            // Values that differ only in encoding (a decimal's scale) are the same values.
            if fields.is_empty() {
                continue;
            }
            different += 1;
            if different_records.len() < limit {
                different_records.push(ChangedRecord {
                    key: key.clone(),
                    fields,
                });
            }
        }
        let extra_records = found
            .extra
            .iter()
            .take(limit)
            .map(|(key, record)| RecordDifference {
                key: key.clone(),
                record: record.clone(),
            })
            .collect();
        let last_success = self.last_success(&spec.name).await?;
        let now = Some(chrono::Utc::now());
        let mut report = VerifyReport {
            sync: spec.name.clone(),
            seconds_since_last_success: last_success
                .as_ref()
                .and_then(|r| r.finished_at.as_deref())
                .and_then(parse_time)
                .zip(now)
                .map(|(t, now)| (now - t).num_seconds()),
            cursor_lag_seconds: source_side
                .newest_cursor
                .as_ref()
                .and_then(time_of)
                .zip(destination_side.newest_cursor.as_ref().and_then(time_of))
                .map(|(s, d)| (s - d).num_seconds().max(0)),
            last_success,
            source: source_side,
            destination: destination_side,
            missing,
            extra: found.extra.len() as u64,
            different,
            duplicates: found.duplicates.len() as u64,
            unmappable,
            missing_records,
            extra_records,
            different_records,
            duplicate_keys: found.duplicates.iter().take(limit).cloned().collect(),
            fetched_by_key,
            content,
            repair: None,
        };
        if index.duplicates() > 0 {
            tracing::warn!(
                records = index.duplicates(),
                "source records share a mapped key with another; only the last of each was \
                 compared, as a run writes the last"
            );
        }
        drop(index);

        if options.repair && (report.missing > 0 || report.different > 0 || report.extra > 0) {
            let extra_keys: Vec<String> = found.extra.iter().map(|(k, _)| k.clone()).collect();
            let repair_keys: HashSet<String> = source_records.keys().cloned().collect();
            report.repair = Some(
                self.repair(
                    job,
                    &mapper,
                    cursor_type,
                    fetched,
                    &repair_keys,
                    &extra_keys,
                    report.destination.count,
                    (report.missing, report.different),
                    &options.run,
                )
                .await?,
            );
        }
        Ok(report)
    }

    /// Compares by reading both sides in full: the source into the index, the destination
    /// probed record by record; counts in place where the connectors can (`key-summary`).
    async fn compare_by_reading(
        &self,
        args: &CompareArgs<'_>,
        source: &mut SourceHandle,
        declined: String,
    ) -> Result<Compared, EngineError> {
        let services = self.services();
        let CompareArgs {
            job,
            mapper,
            fields,
            cursor_type,
            cursor_target,
        } = *args;
        let spec = &job.spec;
        let source_key = mapper.source_key().to_vec();

        // 1. The source, into the index.
        let mut index = SourceIndex::default();
        let mut source_side = SideReport {
            counted_by: "read",
            ..Default::default()
        };
        let mut unmappable = 0u64;
        let request = ReadRequest {
            stream: spec.source.stream.clone(),
            mode: ReadMode::Full,
            fields: Some(fields.to_vec()),
            key: source_key.clone(),
            batch_size: Some(spec.batch_size.max(READ_BATCH)),
            dry_run: true,
            ..Default::default()
        };
        let mut reader = source.read(&request).await?;
        while let Some((batch, _)) = reader.next().await? {
            refuse_unreadable(&batch, &spec.name, "source")?;
            source_side.count += batch.num_rows() as u64;
            if let Some(cursor) = &spec.cursor_field {
                newest(&mut source_side.newest_cursor, &batch, cursor, cursor_type);
            }
            unmappable += index_batch(&mut index, &batch, mapper)?;
        }
        drop(reader);
        index.seal();

        // 2. The destination, probed record by record.
        let mut found = self
            .read_destination(job, mapper, &mut index, cursor_target)
            .await?;

        // 3. Counts in place, where the connectors can (the key-summary feature).
        let mut destination_side = SideReport {
            count: found.destination_count,
            counted_by: "read",
            newest_cursor: found.newest_cursor.take(),
        };
        if let Some(count) = connector_count(
            services,
            &job.source.connector,
            &job.source,
            &spec.source.stream,
            &source_key,
        )
        .await
        {
            source_side.count = count;
            source_side.counted_by = "connector";
        }
        if let Some(count) = connector_count(
            services,
            &job.destination.connector,
            &job.destination,
            &spec.destination.stream,
            mapper.key(),
        )
        .await
        {
            destination_side.count = count;
            destination_side.counted_by = "connector";
        }
        Ok(Compared {
            index,
            found,
            source_side,
            destination_side,
            unmappable,
            content: ContentComparison {
                method: "read",
                declined: Some(declined),
                ..Default::default()
            },
        })
    }

    /// Compares in the databases (the `range-hash` feature) when both sides provably compute
    /// the same hashes: ranges narrow the comparison down to candidate keys, whose records
    /// are fetched by key on both sides and compared as a full read would compare them. The
    /// reason, instead, when the pushdown does not apply or its reads failed.
    async fn compare_in_place(
        &self,
        args: &CompareArgs<'_>,
        stream: &lockstep_core::protocol::StreamInfo,
        source: &mut SourceHandle,
    ) -> Result<Result<Compared, String>, EngineError> {
        let services = self.services();
        let CompareArgs {
            job,
            mapper,
            fields,
            cursor_type,
            cursor_target,
        } = *args;
        let spec = &job.spec;
        if let Err(reason) = verify_pushdown::check_connectors(services, job) {
            return Ok(Err(reason));
        }
        // The destination's own description decides whether both sides hash alike; it is
        // read again by the comparison by reading when the pushdown steps back.
        let mut destination = services.open_source(&job.destination).await?;
        let catalog = destination.discover().await?;
        let plan = match verify_pushdown::plan(
            services,
            job,
            mapper,
            stream,
            catalog.stream(&spec.destination.stream),
            cursor_target,
        ) {
            Ok(plan) => plan,
            Err(reason) => return Ok(Err(reason)),
        };
        let outcome = match verify_pushdown::compare(source, &mut destination, job, &plan).await {
            Ok(PushdownCompared::Done(outcome)) => outcome,
            Ok(PushdownCompared::Declined(reason)) => return Ok(Err(reason)),
            Err(e) => {
                tracing::warn!(sync = %spec.name, error = %e, "the range-hash reads failed");
                return Ok(Err(format!("its reads failed: {e}")));
            }
        };

        // The candidates' records on both sides, compared as a full read compares them.
        let keys = verify_pushdown::json_keys(&outcome.candidates);
        let mut index = SourceIndex::default();
        let mut unmappable = 0u64;
        let batch_size = Some(spec.batch_size.max(READ_BATCH));
        for chunk in keys.chunks(KEYS_PER_READ) {
            let request = ReadRequest {
                stream: spec.source.stream.clone(),
                mode: ReadMode::Full,
                fields: Some(fields.to_vec()),
                key: plan.source_key.clone(),
                keys: Some(chunk.to_vec()),
                batch_size,
                dry_run: true,
                ..Default::default()
            };
            let mut reader = source.read(&request).await?;
            while let Some((batch, _)) = reader.next().await? {
                refuse_unreadable(&batch, &spec.name, "source")?;
                unmappable += index_batch(&mut index, &batch, mapper)?;
            }
        }
        index.seal();
        let schema = compared_schema(mapper);
        let wanted: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mut found = Found::default();
        for chunk in keys.chunks(KEYS_PER_READ) {
            let request = ReadRequest {
                stream: spec.destination.stream.clone(),
                mode: ReadMode::Full,
                fields: Some(wanted.clone()),
                key: plan.destination_key.clone(),
                keys: Some(chunk.to_vec()),
                batch_size,
                dry_run: true,
                ..Default::default()
            };
            let mut reader = destination.read(&request).await?;
            while let Some((batch, _)) = reader.next().await? {
                refuse_unreadable(&batch, &spec.name, "destination")?;
                let batch = cast_to(&batch, &schema, &spec.destination.stream)?;
                probe_batch(&mut found, &mut index, &batch, mapper)?;
            }
        }

        // Counts and the newest cursor values come from the summaries.
        let source_newest = match (&plan.source_newest, outcome.source_newest) {
            (Some(field), Some(text)) => {
                typed_newest(source, &spec.source.stream, field, text, cursor_type).await?
            }
            _ => None,
        };
        let destination_newest = match (&plan.destination_newest, outcome.destination_newest) {
            (Some(field), Some(text)) => {
                typed_newest(
                    &mut destination,
                    &spec.destination.stream,
                    field,
                    text,
                    None,
                )
                .await?
            }
            _ => None,
        };
        found.destination_count = outcome.destination_count;
        Ok(Ok(Compared {
            index,
            found,
            source_side: SideReport {
                count: outcome.source_count,
                counted_by: "connector",
                newest_cursor: source_newest,
            },
            destination_side: SideReport {
                count: outcome.destination_count,
                counted_by: "connector",
                newest_cursor: destination_newest,
            },
            unmappable,
            content: outcome.stats,
        }))
    }

    /// Reads the destination's records, casts them to the mapped types and probes the index.
    async fn read_destination(
        &self,
        job: &SyncJob,
        mapper: &Mapper,
        index: &mut SourceIndex,
        cursor_target: Option<&str>,
    ) -> Result<Found, EngineError> {
        let spec = &job.spec;
        let mut found = Found::default();
        let mut destination = self.services().open_source(&job.destination).await?;
        let catalog = destination.discover().await?;
        let Some(stream) = catalog.stream(&spec.destination.stream) else {
            // A destination never written: every source record is missing.
            return Ok(found);
        };
        let wanted: Vec<String> = mapper
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let absent: Vec<&String> = wanted
            .iter()
            .filter(|f| stream.field(f).is_none())
            .collect();
        if !absent.is_empty() {
            return Err(EngineError::Schema(format!(
                "sync `{}`: the destination stream `{}` of connection `{}` has no field {}; a run \
                 adds the mapping's new fields to it (`lockstep run {}`), then verify can compare",
                spec.name,
                spec.destination.stream,
                spec.destination.connection,
                absent
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                spec.name
            )));
        }
        let schema = compared_schema(mapper);
        let request = ReadRequest {
            stream: spec.destination.stream.clone(),
            mode: ReadMode::Full,
            fields: Some(wanted.clone()),
            key: mapper.key().to_vec(),
            batch_size: Some(spec.batch_size.max(READ_BATCH)),
            dry_run: true,
            ..Default::default()
        };
        let mut reader = destination.read(&request).await?;
        while let Some((batch, _)) = reader.next().await? {
            refuse_unreadable(&batch, &spec.name, "destination")?;
            found.destination_count += batch.num_rows() as u64;
            let batch = cast_to(&batch, &schema, &spec.destination.stream)?;
            if let Some(cursor) = cursor_target {
                newest(&mut found.newest_cursor, &batch, cursor, None);
            }
            probe_batch(&mut found, index, &batch, mapper)?;
        }
        Ok(found)
    }

    /// The last successful run of `sync` that was a sync's run.
    async fn last_success(&self, sync: &str) -> Result<Option<LastRun>, EngineError> {
        let runs: Vec<RunSummary> = self.state.runs(Some(sync), 200).await?;
        Ok(runs
            .into_iter()
            .find(|r| r.status == RunStatus::Succeeded && r.kind != RUN_KIND_VERIFY_REPAIR)
            .map(|r| LastRun {
                run_id: r.id,
                finished_at: r.finished_at,
            }))
    }

    /// Repairs under the sync's lease, as a run of kind `verify-repair`.
    #[allow(clippy::too_many_arguments)]
    async fn repair(
        &self,
        job: &SyncJob,
        mapper: &Mapper,
        cursor_type: Option<lockstep_core::protocol::DataType>,
        fetched: Vec<RecordBatch>,
        repair_keys: &HashSet<String>,
        extra_keys: &[String],
        destination_size: u64,
        (missing, different): (u64, u64),
        options: &RunOptions,
    ) -> Result<RepairReport, EngineError> {
        let sync = job.spec.name.as_str();
        let held = self.acquire_lease_for(sync, options).await?;
        let run_id = match self.state.start_run(sync, None).await {
            Ok(id) => id,
            Err(e) => {
                let _ = held.release().await;
                return Err(e.into());
            }
        };
        let mut run = RunState::new(run_id, None);
        let result = async {
            self.state
                .set_run_kind(run_id, RUN_KIND_VERIFY_REPAIR)
                .await?;
            self.repair_leased(
                job,
                mapper,
                cursor_type,
                fetched,
                repair_keys,
                extra_keys,
                destination_size,
                &held,
                &mut run,
                options.allow_mass_delete,
            )
            .await
        }
        .await;
        // What the ledger counts as added, verify knows better: a record the destination had
        // with other values was updated.
        let written = run.metrics.added + run.metrics.updated;
        run.metrics.updated = different.min(written);
        run.metrics.added = written - run.metrics.updated;
        let status = match (&result, &run.held) {
            (Err(_), _) => RunStatus::Failed,
            (Ok(()), Some(_)) => RunStatus::Held,
            (Ok(()), None) => RunStatus::Succeeded,
        };
        let mut end = RunEnd::new(status, run.metrics);
        let error = result
            .as_ref()
            .err()
            .map(|e| (self.redactor)(&e.to_string()));
        if let Err(e) = &result {
            end.error_kind = Some(e.kind());
            end.error = error.clone();
        } else if let Some(h) = &run.held {
            end.error = Some(h.clone());
        }
        end.exit_detail = Some(format!(
            "verify repair: {missing} missing, {different} different, {} extra",
            extra_keys.len()
        ));
        let finished = self.state.finish_run(run_id, &end).await;
        if let Err(e) = held.release().await {
            tracing::warn!(sync, "could not release the lease: {e}");
        }
        finished?;
        result?;
        Ok(RepairReport {
            run_id,
            status,
            metrics: run.metrics,
            held: run.held,
            error,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn repair_leased(
        &self,
        job: &SyncJob,
        mapper: &Mapper,
        cursor_type: Option<lockstep_core::protocol::DataType>,
        fetched: Vec<RecordBatch>,
        repair_keys: &HashSet<String>,
        extra_keys: &[String],
        destination_size: u64,
        held: &HeldLease,
        run: &mut RunState,
        allow_mass_delete: bool,
    ) -> Result<(), EngineError> {
        let services = self.services();
        let spec = &job.spec;
        let lease = held.lease();
        let mut destination = services.open_destination(&job.destination).await?;
        let writer = open_destination_stream(&mut destination, job, mapper).await?;
        let mut sink = WriteSink::new(FencedWriter::new(writer, Some(held.watch())), self.state);
        let ctx = Context {
            services,
            job,
            mapper,
            cursor_type,
            lease: Some(lease),
            destination_is_new: false,
        };
        run.deletes_waiting = self.state.pending_deletes(&spec.name, 0).await?.total() > 0;

        // The ledger forgets the keys to repair, so that the batch path sends them: by the
        // ledger they are unchanged, but the destination lost or changed them behind our back.
        let forget: Vec<String> = repair_keys.iter().cloned().collect();
        for keys in forget.chunks(10_000) {
            self.state
                .commit_batch(&BatchCommit {
                    sync: &spec.name,
                    run: run.run_id,
                    lease_token: Some(lease.token),
                    ledger_upserts: &[],
                    ledger_keys_new: false,
                    ledger_deletes: keys,
                    checkpoint: None,
                    metrics: &run.metrics,
                    rejected: &[],
                })
                .await?;
        }
        for batch in fetched {
            // A null checkpoint leaves the sync's stored checkpoint where it is.
            apply_batch(&ctx, &mut sink, run, batch, Value::Null).await?;
        }
        sink.flush().await?;

        // Extra records wait as deletes and go through the guard like a run's.
        for keys in extra_keys.chunks(10_000) {
            sink.wait_deletes(&ctx, run, DeleteOrigin::Reconcile, keys, &[])
                .await?;
        }
        if run.deletes_waiting {
            crate::deletes::finish(
                &ctx,
                &mut sink,
                run,
                allow_mass_delete,
                Some(destination_size),
            )
            .await?;
        }
        Ok(())
    }
}

/// Every mapped field, nullable: a destination may hold nulls the mapping would refuse, and
/// those are differences to report, not errors. Destination batches are cast to it.
fn compared_schema(mapper: &Mapper) -> Arc<Schema> {
    Arc::new(Schema::new(
        mapper
            .schema()
            .fields()
            .iter()
            .map(|f| Field::clone(f).with_nullable(true))
            .collect::<Vec<_>>(),
    ))
}

/// Maps a raw source batch and adds its records to the index; the count of records the
/// mapping rejected (not compared).
fn index_batch(
    index: &mut SourceIndex,
    batch: &RecordBatch,
    mapper: &Mapper,
) -> Result<u64, EngineError> {
    let mapped = mapper.map(batch)?;
    let keys = record_keys(&mapped.batch, mapper.key())?;
    let fps = fingerprints(&mapped.batch)?;
    let source_keys = key_texts(batch, mapper.source_key(), &mapped.source_rows)?;
    for ((key, fp), source_key) in keys.iter().zip(&fps).zip(&source_keys) {
        index
            .insert(key, *fp, source_key)
            .map_err(|e| EngineError::Config(e.to_string()))?;
    }
    Ok(mapped.rejected.len() as u64)
}

/// Looks each record of a destination batch (cast to [`compared_schema`]) up in the sealed
/// index, keeping the differences in `found`.
fn probe_batch(
    found: &mut Found,
    index: &mut SourceIndex,
    batch: &RecordBatch,
    mapper: &Mapper,
) -> Result<(), EngineError> {
    let keys = record_keys(batch, mapper.key())?;
    let fps = fingerprints(batch)?;
    for (row, (key, fp)) in keys.into_iter().zip(fps).enumerate() {
        match index.probe(&key, fp) {
            Probe::Same => {}
            Probe::Different(source_key) => {
                let source_key = source_key.to_owned();
                found
                    .different
                    .push((key, row_json(batch, row), source_key));
            }
            Probe::Extra => found.extra.push((key, row_json(batch, row))),
            Probe::Duplicate => found.duplicates.push(key),
        }
    }
    Ok(())
}

/// The value of `field` whose canonical text a range summary gave as the newest, as a read
/// gives it (read by that value, one record).
async fn typed_newest(
    handle: &mut SourceHandle,
    stream: &str,
    field: &str,
    text: String,
    logical: Option<lockstep_core::protocol::DataType>,
) -> Result<Option<Value>, EngineError> {
    let request = ReadRequest {
        stream: stream.to_owned(),
        mode: ReadMode::Full,
        fields: Some(vec![field.to_owned()]),
        key: vec![field.to_owned()],
        keys: Some(vec![vec![Value::String(text)]]),
        batch_size: Some(1),
        dry_run: true,
        ..Default::default()
    };
    let mut reader = handle.read(&request).await?;
    while let Some((batch, _)) = reader.next().await? {
        if batch.num_rows() == 0 {
            continue;
        }
        if let Some(column) = batch.column_by_name(field) {
            return Ok(Some(lockstep_core::protocol::arrow_types::json_value(
                column, 0, logical,
            )));
        }
    }
    Ok(None)
}

/// The source records of `wanted` (key hash, source key text), as raw source batches holding
/// only those records: by key when the connector can, else in one filtered full read.
async fn fetch(
    source: &mut SourceHandle,
    job: &SyncJob,
    mapper: &Mapper,
    fields: &[String],
    wanted: &[(u64, String)],
    by_key: bool,
) -> Result<Vec<RecordBatch>, EngineError> {
    let spec = &job.spec;
    let hashes: HashSet<u64> = wanted.iter().map(|(h, _)| *h).collect();
    let base = ReadRequest {
        stream: spec.source.stream.clone(),
        mode: ReadMode::Full,
        fields: Some(fields.to_vec()),
        key: mapper.source_key().to_vec(),
        batch_size: Some(spec.batch_size.max(READ_BATCH)),
        dry_run: true,
        ..Default::default()
    };
    let mut requests = Vec::new();
    if by_key {
        let keys: Vec<Vec<Value>> = wanted
            .iter()
            .map(|(_, text)| match serde_json::from_str(text) {
                Ok(Value::Array(values)) => Ok(values),
                _ => Err(EngineError::Internal(format!(
                    "verify kept a source key that is not a JSON array: {text}"
                ))),
            })
            .collect::<Result<_, _>>()?;
        for chunk in keys.chunks(KEYS_PER_READ) {
            requests.push(ReadRequest {
                keys: Some(chunk.to_vec()),
                ..base.clone()
            });
        }
    } else {
        requests.push(base);
    }
    let mut out = Vec::new();
    for request in &requests {
        let mut reader = source.read(request).await?;
        while let Some((batch, _)) = reader.next().await? {
            refuse_unreadable(&batch, &spec.name, "source")?;
            // Only the wanted records, picked by their mapped key; those that fail to map are
            // not compared (and not repaired): a run rejects them.
            let mapped = mapper.map(&batch)?;
            let keys = record_keys(&mapped.batch, mapper.key())?;
            let mut mask = vec![false; batch.num_rows()];
            for (row, key) in keys.iter().enumerate() {
                if hashes.contains(&key_hash(key)) {
                    mask[mapped.source_rows[row]] = true;
                }
            }
            if mask.iter().any(|m| *m) {
                out.push(filter_record_batch(&batch, &BooleanArray::from(mask))?);
            }
        }
    }
    Ok(out)
}

/// The source key text (`[42]`) of each mapped row, from the source batch.
fn key_texts(
    batch: &RecordBatch,
    key: &[String],
    rows: &[usize],
) -> Result<Vec<String>, EngineError> {
    let schema = batch.schema();
    let columns: Vec<(ArrayRef, Option<lockstep_core::protocol::DataType>)> = key
        .iter()
        .map(|k| {
            let i = schema.index_of(k).map_err(|_| {
                EngineError::Internal(format!("source key field `{k}` is missing from a batch"))
            })?;
            Ok((
                batch.column(i).clone(),
                lockstep_core::protocol::DataType::from_arrow_field(schema.field(i)),
            ))
        })
        .collect::<Result<_, EngineError>>()?;
    Ok(rows
        .iter()
        .map(|&row| {
            Value::Array(
                columns
                    .iter()
                    .map(|(c, t)| lockstep_core::protocol::arrow_types::json_value(c, row, *t))
                    .collect(),
            )
            .to_string()
        })
        .collect())
}

/// A destination batch as the mapping's types and field order, named for errors by `stream`.
fn cast_to(
    batch: &RecordBatch,
    schema: &Arc<Schema>,
    stream: &str,
) -> Result<RecordBatch, EngineError> {
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                EngineError::Schema(format!(
                    "the destination stream `{stream}` answered without field `{}`",
                    field.name()
                ))
            })?;
            if column.data_type() == field.data_type() {
                return Ok(column.clone());
            }
            arrow::compute::cast(column, field.data_type()).map_err(|e| {
                EngineError::Schema(format!(
                    "field `{}` of the destination stream `{stream}` holds {} values, which \
                     cannot be compared as the mapping's {}: {e}",
                    field.name(),
                    column.data_type(),
                    field.data_type()
                ))
            })
        })
        .collect::<Result<Vec<_>, EngineError>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The destination field that is a plain copy of source field `source`, if any.
fn copied_to(mapper: &Mapper, source: &str) -> Option<String> {
    mapper
        .describe()
        .into_iter()
        .find(|(target, expr)| expr == source && !target.contains('.'))
        .map(|(target, _)| target)
}

/// Keeps in `newest` the greatest value of column `field` of `batch` seen so far.
fn newest(
    newest: &mut Option<Value>,
    batch: &RecordBatch,
    field: &str,
    logical: Option<lockstep_core::protocol::DataType>,
) {
    let Some(column) = batch.column_by_name(field) else {
        return;
    };
    for row in 0..batch.num_rows() {
        if column.is_null(row) {
            continue;
        }
        let value = lockstep_core::protocol::arrow_types::json_value(column, row, logical);
        let greater = match newest.as_ref() {
            None => true,
            Some(current) => greater(&value, current),
        };
        if greater {
            *newest = Some(value);
        }
    }
}

/// Whether `a` sorts after `b`: numbers as numbers, times as times, other values as text.
fn greater(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(f64::MIN) > y.as_f64().unwrap_or(f64::MIN)
        }
        _ => match (time_of(a), time_of(b)) {
            (Some(x), Some(y)) => x > y,
            _ => match (a.as_str(), b.as_str()) {
                (Some(x), Some(y)) => x > y,
                _ => {
                    let (x, y) = (a.to_string(), b.to_string());
                    x.as_str() > y.as_str()
                }
            },
        },
    }
}

/// A JSON value as a time, when it is one (RFC 3339, or a date and time without a zone, read
/// as UTC).
fn time_of(value: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    parse_time(value.as_str()?)
}

fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&chrono::Utc));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"]
        .iter()
        .find_map(|f| chrono::NaiveDateTime::parse_from_str(text, f).ok())
        .map(|t| t.and_utc())
}

/// The fields whose values differ, in the source record's field order.
fn field_differences(
    source: &Map<String, Value>,
    destination: &Map<String, Value>,
) -> Vec<FieldDifference> {
    source
        .iter()
        .filter_map(|(field, value)| {
            let other = destination.get(field).cloned().unwrap_or(Value::Null);
            (!same_value(value, &other)).then(|| FieldDifference {
                field: field.clone(),
                source: value.clone(),
                destination: other,
            })
        })
        .collect()
}

/// Whether two JSON values are the same value (numbers compared as numbers, so `1.50` and
/// `1.5` are one).
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

/// Whether connector `name` reads records by key.
fn reads_by_key(services: Services<'_>, name: &str) -> bool {
    has_feature(services, name, FEATURE_READ_BY_KEYS)
}

fn has_feature(services: Services<'_>, name: &str, feature: &str) -> bool {
    services
        .registry
        .get(name)
        .map(|p| p.manifest.features.iter().any(|f| f == feature))
        .unwrap_or(false)
}

/// The count of a stream's records as the connector answers it in place (the count of a
/// `key-summary` read), when the connector can; `None` otherwise, and the count read is used.
async fn connector_count(
    services: Services<'_>,
    connector: &str,
    endpoint: &crate::job::Endpoint,
    stream: &str,
    key: &[String],
) -> Option<u64> {
    if !has_feature(services, connector, FEATURE_KEY_SUMMARY) {
        return None;
    }
    let count = async {
        let mut source = services.open_source(endpoint).await?;
        let mut reader = source
            .read(&ReadRequest {
                stream: stream.to_owned(),
                mode: ReadMode::Full,
                fields: Some(key.to_vec()),
                key: key.to_vec(),
                key_summary: true,
                dry_run: true,
                ..Default::default()
            })
            .await?;
        let Some((batch, _)) = reader.next().await? else {
            return Ok::<_, EngineError>(None);
        };
        Ok(KeySummary::from_batch(&batch).ok().map(|s| s.count))
    }
    .await;
    match count {
        Ok(count) => count,
        Err(e) => {
            tracing::warn!(connector, stream, error = %e, "could not count in place; using the count read");
            None
        }
    }
}

/// Fails verification when a connector hands over records it could not read (a source-rejects
/// batch, such as malformed lines of a file): their keys are unknown, so any record could be
/// among them, and no claim of "missing" or "extra" could be trusted.
fn refuse_unreadable(batch: &RecordBatch, sync: &str, side: &str) -> Result<(), EngineError> {
    if !is_rejects_batch(batch) {
        return Ok(());
    }
    Err(EngineError::Schema(format!(
        "sync `{sync}`: verify stopped: the {side} could not read {} of its records (malformed \
         lines of a file, say), and a record whose key is unknown could be any of the missing or \
         extra ones. Fix those records (`lockstep rejects list {sync}` names them after a run) \
         and verify again",
        batch.num_rows()
    )))
}
