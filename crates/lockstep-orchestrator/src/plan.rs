//! `plan`: a dry run that reads and diffs like a run but writes nothing, and reports the
//! counts a run would produce with samples of the records it would add, update and delete.

use arrow::array::RecordBatch;
use lockstep_core::protocol::{ReadMode, ReadRequest, FEATURE_READ_BY_KEYS};
use lockstep_core::RunMetrics;
use lockstep_state::RejectedRecord;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::engine::{Engine, RunOptions, RunState, SyncJob};
use crate::error::EngineError;
use crate::pipeline::row_json;

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
    pub(crate) fn add(&mut self, batch: &RecordBatch, row: usize, _key: &str) {
        if self.adds.len() < SAMPLE_SIZE {
            self.adds.push(row_json(batch, row));
        }
    }

    pub(crate) fn update(&mut self, batch: &RecordBatch, row: usize, key: &str) {
        if self.updates.len() < SAMPLE_SIZE {
            self.updates.push((key.to_owned(), row_json(batch, row)));
        }
    }

    pub(crate) fn delete(&mut self, key: &str) {
        if self.deletes.len() < SAMPLE_SIZE {
            self.deletes.push(key.to_owned());
        }
    }

    pub(crate) fn reject(&mut self, rejected: &[RejectedRecord]) {
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

impl Engine<'_> {
    /// What `run` would do now, without writing to the destination or the state store.
    pub async fn plan(
        &self,
        job: &SyncJob,
        options: RunOptions,
    ) -> Result<PlanReport, EngineError> {
        let sync = &job.spec.name;
        let cursor_before = if job.spec.mode.uses_cursor() {
            self.state.checkpoint(sync).await?
        } else {
            None
        };
        let mut run = RunState {
            run_id: 0,
            metrics: RunMetrics::default(),
            checkpoint: cursor_before.clone(),
            batches: 0,
            deletes_waiting: false,
            held: None,
        };
        let mut collector = PlanCollector::default();
        crate::pipeline::execute(self, job, &options, None, &mut run, Some(&mut collector)).await?;
        let mut notes = Vec::new();
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
            rejected: collector.rejected,
            notes,
        })
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
        let (_, stream) = crate::pipeline::open_source_stream(self, job)
            .await
            .map_err(|e| e.to_string())?;
        let mapper =
            lockstep_mapping::Mapper::new(&job.spec, &stream).map_err(|e| e.to_string())?;
        let key = mapper.key().to_vec();
        let keys: Vec<Vec<Value>> = updates
            .iter()
            .filter_map(|(k, _)| serde_json::from_str::<Vec<Value>>(k).ok())
            .collect();
        let mut source = plugin
            .open_source(&job.destination.config, self.redactor.clone())
            .await
            .map_err(|e| e.to_string())?;
        let mut reader = source
            .read(&ReadRequest {
                stream: job.spec.destination.stream.clone(),
                mode: ReadMode::Full,
                key: key.clone(),
                keys: Some(keys),
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
