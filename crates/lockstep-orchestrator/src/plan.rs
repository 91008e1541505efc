//! `plan`: a dry run that reads and diffs like a run but writes nothing, and reports the
//! counts a run would produce with samples of the records it would add, update and delete.
//!
//! Invariants:
//! - Deletes past the sync's `max_delete_fraction` are reported as held (`held_deletes`),
//!   never as deletes that would apply, decided as a run's delete phase decides.
//! - A plan goes through the same batch path as a run, with a sink that counts and samples:
//!   it writes nothing to the destination or the state store, and takes no lease.

use arrow::array::RecordBatch;
use lockstep_core::protocol::{ReadMode, ReadRequest, WriteOutcome, FEATURE_READ_BY_KEYS};
use lockstep_state::{BatchCommit, DeleteOrigin, RejectedRecord};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::context::Context;
use crate::deletes;
use crate::diff::Upsert;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::job::{RunOptions, RunState, SyncJob};
use crate::pipeline::{execute, open_source, OpenedSource};
use crate::rows::row_json;
use crate::sink::Sink;
use lockstep_core::{RunMetrics, SyncMode};

/// How many records of each kind a plan shows.
pub const SAMPLE_SIZE: usize = 10;

/// One field an update would change.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub field: String,
    /// The destination's current value, when the destination can be read by key.
    pub before: Option<Value>,
    pub after: Value,
}

/// A sampled update.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PlannedUpdate {
    pub key: String,
    pub changes: Vec<FieldChange>,
}

/// A sampled rejection.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct PlannedRejection {
    pub key: Option<String>,
    pub field: Option<String>,
    pub reason: String,
}

/// What a run would do now.
#[derive(Serialize, Debug, Clone)]
pub struct PlanReport {
    pub sync: String,
    /// The counts a run would produce (`conflicts` stays 0 in one-way sync).
    pub metrics: RunMetrics,
    pub cursor_before: Option<Value>,
    pub cursor_after: Option<Value>,
    pub adds: Vec<Map<String, Value>>,
    pub updates: Vec<PlannedUpdate>,
    pub deletes: Vec<String>,
    /// How many deletes a run would hold rather than apply, because they are past the sync's
    /// `max_delete_fraction` (0 when the deletes would apply). When set, `metrics.deleted`
    /// is 0 and `deletes` samples the held keys.
    pub held_deletes: u64,
    pub rejected: Vec<PlannedRejection>,
    /// Things the reader should know, such as why before-values are missing.
    pub notes: Vec<String>,
}

/// Collects samples while a dry run goes through the batches.
#[derive(Default)]
pub(crate) struct PlanCollector {
    adds: Vec<Map<String, Value>>,
    updates: Vec<(String, Map<String, Value>)>,
    deletes: Vec<String>,
    rejected: Vec<PlannedRejection>,
}

impl PlanCollector {
    fn sample_add(&mut self, batch: &RecordBatch, row: usize) {
        if self.adds.len() < SAMPLE_SIZE {
            self.adds.push(row_json(batch, row));
        }
    }

    fn sample_update(&mut self, batch: &RecordBatch, row: usize, key: &str) {
        if self.updates.len() < SAMPLE_SIZE {
            self.updates.push((key.to_owned(), row_json(batch, row)));
        }
    }

    fn sample_delete(&mut self, key: &str) {
        if self.deletes.len() < SAMPLE_SIZE {
            self.deletes.push(key.to_owned());
        }
    }

    fn sample_reject(&mut self, rejected: &[RejectedRecord]) {
        for r in rejected
            .iter()
            .take(SAMPLE_SIZE.saturating_sub(self.rejected.len()))
        {
            self.rejected.push(PlannedRejection {
                key: r.key.clone(),
                field: r.field.clone(),
                reason: r.reason.clone(),
            });
        }
    }
}

/// A plan's sink: counts and samples what a run would write, and writes nothing.
impl Sink for PlanCollector {
    fn writes(&self) -> bool {
        false
    }

    async fn upsert(&mut self, _rows: RecordBatch) -> Result<WriteOutcome, EngineError> {
        // Nothing is refused: a plan counts every record it would send.
        Ok(WriteOutcome::default())
    }

    async fn delete(&mut self, _keys: RecordBatch) -> Result<WriteOutcome, EngineError> {
        Ok(WriteOutcome::default())
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn wait_deletes(
        &mut self,
        _ctx: &Context<'_>,
        run: &mut RunState,
        _origin: DeleteOrigin,
        found: &[String],
        _seen: &[String],
    ) -> Result<(), EngineError> {
        run.metrics.deleted += found.len() as u64;
        for key in found
            .iter()
            .take(SAMPLE_SIZE.saturating_sub(self.deletes.len()))
        {
            self.sample_delete(key);
        }
        Ok(())
    }

    async fn commit(&mut self, _commit: &BatchCommit<'_>) -> Result<(), EngineError> {
        Ok(())
    }

    fn sample(&mut self, mapped: &RecordBatch, keys: &[String], upserts: &[Upsert]) {
        for upsert in upserts {
            if upsert.added {
                self.sample_add(mapped, upsert.row);
            } else {
                self.sample_update(mapped, upsert.row, &keys[upsert.row]);
            }
        }
    }

    fn sample_rejects(&mut self, rejected: &[RejectedRecord]) {
        self.sample_reject(rejected);
    }
}

impl Engine<'_> {
    /// What `run` would do now, without writing to the destination or the state store.
    pub async fn plan(
        &self,
        job: &SyncJob,
        options: RunOptions,
    ) -> Result<PlanReport, EngineError> {
        let sync = &job.spec.name;
        if job.spec.mode == SyncMode::TwoWay {
            return self.plan_two_way(job, options).await;
        }
        let cursor_before = if job.spec.reads_by_cursor() {
            self.state.checkpoint(sync).await?
        } else {
            None
        };
        let mut run = RunState::new(0, cursor_before.clone());
        let mut collector = PlanCollector::default();
        let OpenedSource {
            source,
            mapper,
            cursor_type,
            ..
        } = open_source(self.services(), job).await?;
        let ctx = Context {
            services: self.services(),
            job,
            mapper: &mapper,
            cursor_type,
            lease: None,
            destination_is_new: false,
        };
        execute(&ctx, source, &mut collector, &options, None, &mut run).await?;
        let mut notes = Vec::new();
        let mut held_deletes = 0;
        if job.spec.mode.propagates_deletes() && !options.allow_mass_delete {
            if let Some((held, note)) = self.deletes_held(&ctx, run.metrics.deleted).await? {
                held_deletes = held;
                run.metrics.deleted = 0;
                notes.push(note);
            }
        }
        if !job.spec.use_ledger {
            notes.push(
                "this sync keeps no ledger: every record read counts as updated; the \
                 destination tells added from updated and unchanged only when writing"
                    .to_owned(),
            );
        }
        let updates = self.before_values(job, collector.updates, &mut notes).await;
        Ok(PlanReport {
            sync: sync.clone(),
            metrics: run.metrics,
            cursor_before,
            cursor_after: run.checkpoint,
            adds: collector.adds,
            updates,
            deletes: collector.deletes,
            held_deletes,
            rejected: collector.rejected,
            notes,
        })
    }

    /// The plan of a two-way sync: what a run would write to each side, the deletes and the
    /// conflicts it would find, with the policy's decision.
    async fn plan_two_way(
        &self,
        job: &SyncJob,
        options: RunOptions,
    ) -> Result<PlanReport, EngineError> {
        let sync = &job.spec.name;
        let cursor_before = self.state.checkpoint(sync).await?;
        let mut run = RunState::new(0, cursor_before.clone());
        let preview = crate::two_way::preview(self.services(), job, &options, &mut run).await?;
        let mut notes = preview.notes;
        if let Some(held) = run.held.take() {
            notes.push(held);
        }
        notes.push(
            "two-way sync: records are shown with the side they would be written to (`_side`); \
             added, updated and deleted count the writes to both sides"
                .to_owned(),
        );
        let adds = preview
            .writes
            .into_iter()
            .map(|(side, mut values)| {
                values.insert("_side".into(), Value::from(side.as_str()));
                values
            })
            .collect();
        let deletes = preview
            .deletes
            .into_iter()
            .map(|(side, key)| format!("{key} (side {side})"))
            .collect();
        Ok(PlanReport {
            sync: sync.clone(),
            metrics: run.metrics,
            cursor_before,
            cursor_after: None,
            adds,
            updates: Vec::new(),
            deletes,
            held_deletes: 0,
            rejected: Vec::new(),
            notes,
        })
    }

    /// Whether the mass-delete guard would hold a run's deletes (the `found` ones of this
    /// plan and those already waiting in the state store), as a run's delete phase decides:
    /// the count it would hold and a note saying so; `None` when they would apply.
    async fn deletes_held(
        &self,
        ctx: &Context<'_>,
        found: u64,
    ) -> Result<Option<(u64, String)>, EngineError> {
        let spec = &ctx.job.spec;
        let sync = spec.name.as_str();
        let waiting = self.state.pending_deletes(sync, 0).await?;
        let earlier = waiting.pending + waiting.held;
        let total = found + earlier;
        if total == 0 {
            return Ok(None);
        }
        let size = deletes::guard_size(ctx, total).await?;
        let limit = spec.delete.max_delete_fraction;
        if size.is_some_and(|n| total as f64 <= limit * n as f64) {
            return Ok(None);
        }
        let share = match size {
            Some(n) => format!(
                "{total} of the {n} records in `{}` ({:.1}%)",
                spec.destination.stream,
                100.0 * total as f64 / n.max(1) as f64
            ),
            None => format!(
                "{total} records of `{}`, whose size cannot be read",
                spec.destination.stream
            ),
        };
        let earlier_text = if earlier > 0 {
            format!(" ({found} found by this plan, {earlier} already waiting)")
        } else {
            String::new()
        };
        Ok(Some((
            total,
            format!(
                "a run would hold {total} deletes{earlier_text}, not apply them: {share} is more \
                 than max_delete_fraction allows ({:.1}%). The run would end `held` with the \
                 records still in the destination; apply them with `lockstep deletes approve \
                 {sync}` after the run, or run with `--allow-mass-delete`",
                100.0 * limit
            ),
        )))
    }

    /// Field-level changes of sampled updates, with the destination's current values when
    /// its connector can read records by key.
    async fn before_values(
        &self,
        job: &SyncJob,
        updates: Vec<(String, Map<String, Value>)>,
        notes: &mut Vec<String>,
    ) -> Vec<PlannedUpdate> {
        let mut current: std::collections::HashMap<String, Map<String, Value>> = Default::default();
        if !updates.is_empty() {
            match self.read_destination_rows(job, &updates).await {
                Ok(rows) => current = rows,
                Err(reason) => notes.push(format!("before-values are not shown: {reason}")),
            }
        }
        updates
            .into_iter()
            .map(|(key, after)| {
                let before = current.get(&key);
                let changes = after
                    .into_iter()
                    .filter_map(|(field, value)| {
                        let old = before.map(|b| b.get(&field).cloned().unwrap_or(Value::Null));
                        (old.as_ref() != Some(&value)).then_some(FieldChange {
                            field,
                            before: old,
                            after: value,
                        })
                    })
                    .collect();
                PlannedUpdate { key, changes }
            })
            .collect()
    }

    async fn read_destination_rows(
        &self,
        job: &SyncJob,
        updates: &[(String, Map<String, Value>)],
    ) -> Result<std::collections::HashMap<String, Map<String, Value>>, String> {
        let plugin = self
            .registry
            .get(&job.destination.connector)
            .map_err(|e| e.to_string())?;
        if !plugin
            .manifest
            .features
            .iter()
            .any(|f| f == FEATURE_READ_BY_KEYS)
        {
            return Err(format!(
                "connector `{}` cannot read records by key",
                job.destination.connector
            ));
        }
        let (_, stream) = self
            .services()
            .open_source_stream(job)
            .await
            .map_err(|e| e.to_string())?;
        let mapper =
            lockstep_mapping::Mapper::new(&job.spec, &stream).map_err(|e| e.to_string())?;
        let key = mapper.key().to_vec();
        let keys: Vec<Vec<Value>> = updates
            .iter()
            .filter_map(|(k, _)| serde_json::from_str::<Vec<Value>>(k).ok())
            .collect();
        let mut source = self
            .services()
            .open_source(&job.destination)
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = source
            .read(&ReadRequest {
                stream: job.spec.destination.stream.clone(),
                mode: ReadMode::Full,
                key: key.clone(),
                keys: Some(keys),
                dry_run: true,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut rows = std::collections::HashMap::new();
        while let Some((batch, _)) = reader.next().await.map_err(|e| e.to_string())? {
            let batch_keys = lockstep_core::record_keys(&batch, &key).map_err(|e| e.to_string())?;
            for (row, k) in batch_keys.into_iter().enumerate() {
                rows.insert(k, row_json(&batch, row));
            }
        }
        Ok(rows)
    }
}
