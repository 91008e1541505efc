//! Reading a stream with `search_read`, in pages keyed by `id`.
//!
//! Every read pages in `id` order with `[('id', '>', last id)]`, so a page boundary never
//! skips or repeats a record, and the context carries `active_test = false`, so archived
//! records (`active = false`) are read and exposed rather than hidden by Tryton's default
//! domain.
//!
//! An incremental read asks for `['OR', [('write_date', '>=', T)], [('create_date', '>=',
//! T)]]`: `write_date` stays NULL until a record's first write, so new records are found by
//! `create_date`. T is the last completed read's watermark (the latest change it delivered)
//! minus the overlap window: Tryton stamps records with their transaction's start, so a long
//! transaction can commit records stamped before the watermark. Records read again inside
//! the window are recognised by (id, change time) and not delivered twice; the checkpoint
//! keeps the pairs whose change time lies within the window of the watermark.
//!
//! Checkpoints: `{"after_id": X}` for full reads; `{"from": T, "after_id": X, "max": M,
//! "seen": [[id, micros], …], "recent": [[id, micros], …]}` for incremental ones, where
//! `after_id` is null once the read
//! is complete. A read holds back one record past each batch, so the last batch of a read
//! always carries the completed checkpoint.
//!
//! Invariant: a checkpoint never claims a record that was not delivered, so a resumed read
//! misses nothing.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use lockstep_http_kit::convert::{batch_from_json, JsonField};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{BatchReader, ConnectorError, ReadMode, ReadRequest, Result};
use serde_json::{json, Map, Value};

use crate::rpc::Rpc;
use crate::schema::{Field, StreamSchema, CURSORS};
use crate::values::{datetime_micros, datetime_value, decode};

/// The batches of one read.
pub struct TrytonReader {
    rpc: Rpc,
    model: String,
    fields: Vec<Field>,
    json_fields: Vec<JsonField>,
    /// The Tryton field names asked for.
    asked: Vec<String>,
    page: usize,
    batch_size: usize,
    incremental: bool,
    overlap_micros: i64,
    /// Incremental: the lower bound of changes read, in microseconds.
    from: Option<i64>,
    /// The last id fetched from Tryton.
    fetched_after: i64,
    /// The last id delivered.
    delivered_after: i64,
    /// Incremental: the latest change delivered so far (this read or earlier ones).
    max: Option<i64>,
    /// Incremental: (id, change time) pairs delivered by earlier reads that this read may
    /// meet again (those inside the overlap window of their watermark).
    seen: BTreeSet<(i64, i64)>,
    /// Incremental: pairs this read delivered that a later read may meet again (those
    /// inside the overlap window of this read's latest change so far). Kept apart from
    /// `seen` so that each set stays as small as its own window.
    recent: BTreeSet<(i64, i64)>,
    /// Fetched records not yet delivered: (id, change time, record).
    buffer: VecDeque<(i64, Option<i64>, Value)>,
    exhausted: bool,
    /// Whether this read resumed an unfinished one (its end must then be checkpointed even
    /// when it delivers nothing).
    resumed: bool,
    delivered_any: bool,
    finished: bool,
}

pub(crate) fn open(
    rpc: Rpc,
    schema: StreamSchema,
    request: ReadRequest,
    page_size: usize,
    overlap: Duration,
) -> Result<TrytonReader> {
    let fields: Vec<Field> = match &request.fields {
        None => schema.fields.clone(),
        Some(names) => {
            for name in names {
                if schema.field(name).is_none() {
                    return Err(ConnectorError::schema(format!(
                        "Tryton's {} has no field `{name}` here (or it is not in the \
                         connection's `fields`); its fields are {}",
                        schema.model,
                        schema
                            .fields
                            .iter()
                            .map(|f| f.info.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
            schema
                .fields
                .iter()
                .filter(|f| names.contains(&f.info.name))
                .cloned()
                .collect()
        }
    };
    let mut asked: Vec<String> = fields.iter().map(|f| f.tryton_name.clone()).collect();
    for always in ["id", "write_date", "create_date"] {
        if !asked.iter().any(|a| a == always) {
            asked.push(always.into());
        }
    }
    let json_fields = fields
        .iter()
        .map(|f| JsonField::top_level(f.info.clone()))
        .collect();
    let batch_size = request.batch_size.unwrap_or(page_size).max(1);
    let incremental = request.mode == ReadMode::Incremental;
    if incremental {
        if let Some(cursor) = &request.cursor_field {
            if !CURSORS.contains(&cursor.as_str()) {
                return Err(ConnectorError::config(format!(
                    "Tryton's {} is read incrementally by when records changed, not by \
                     `{cursor}`; set the sync's `cursor` to one of {}",
                    schema.model,
                    CURSORS.join(", ")
                )));
            }
        }
    }
    let mut reader = TrytonReader {
        rpc,
        model: schema.model,
        fields,
        json_fields,
        asked,
        page: page_size.max(1),
        batch_size,
        incremental,
        overlap_micros: overlap.as_micros() as i64,
        from: None,
        fetched_after: 0,
        delivered_after: 0,
        max: None,
        seen: BTreeSet::new(),
        recent: BTreeSet::new(),
        buffer: VecDeque::new(),
        exhausted: false,
        resumed: false,
        delivered_any: false,
        finished: false,
    };
    reader.resume(request.checkpoint.as_ref())?;
    Ok(reader)
}

impl TrytonReader {
    fn resume(&mut self, checkpoint: Option<&Value>) -> Result<()> {
        let Some(checkpoint) = checkpoint.filter(|c| !c.is_null()) else {
            return Ok(());
        };
        let bad = |what: &str| {
            ConnectorError::config(format!(
                "the checkpoint {checkpoint} is not one of a{what} Tryton read of {}; reset the \
                 sync's checkpoint",
                self.model
            ))
        };
        let after_id = match &checkpoint["after_id"] {
            Value::Null => None,
            v => Some(v.as_i64().ok_or_else(|| bad("")).map(|id| id.max(0))?),
        };
        if !self.incremental {
            if checkpoint.get("seen").is_some() {
                return Err(bad(" full"));
            }
            self.fetched_after = after_id.unwrap_or(0);
            self.delivered_after = self.fetched_after;
            return Ok(());
        }
        let micros = |v: &Value| -> Result<Option<i64>> {
            match v {
                Value::Null => Ok(None),
                v => v.as_i64().map(Some).ok_or_else(|| bad("n incremental")),
            }
        };
        self.max = micros(&checkpoint["max"])?;
        for (member, set) in [("seen", &mut self.seen), ("recent", &mut self.recent)] {
            for pair in checkpoint[member]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                match (pair[0].as_i64(), pair[1].as_i64()) {
                    (Some(id), Some(at)) => {
                        set.insert((id, at));
                    }
                    _ => return Err(bad("n incremental")),
                }
            }
        }
        match after_id {
            Some(after) => {
                self.from = micros(&checkpoint["from"])?;
                self.fetched_after = after;
                self.delivered_after = after;
                self.resumed = true;
            }
            None => {
                self.from = self.max.map(|m| m - self.overlap_micros);
            }
        }
        Ok(())
    }

    /// The domain of the next page.
    fn domain(&self) -> Value {
        let mut domain = vec![json!(["id", ">", self.fetched_after])];
        if let Some(from) = self.from.filter(|_| self.incremental) {
            let at = datetime_value(from);
            domain.push(json!([
                "OR",
                [["write_date", ">=", at]],
                [["create_date", ">=", at]]
            ]));
        }
        Value::Array(domain)
    }

    /// Fetches one page into the buffer, leaving out records already delivered.
    async fn fetch(&mut self) -> Result<()> {
        let answer = self
            .rpc
            .call(
                &format!("model.{}.search_read", self.model),
                vec![
                    self.domain(),
                    json!(0),
                    json!(self.page),
                    json!([["id", "ASC"]]),
                    json!(self.asked),
                ],
                Some(json!({"active_test": false})),
                true,
                &format!("reading {} records", self.model),
            )
            .await?;
        let Value::Array(records) = answer else {
            return Err(ConnectorError::internal(format!(
                "Tryton's search_read of {} did not answer a list of records",
                self.model
            )));
        };
        if records.len() < self.page {
            self.exhausted = true;
        }
        for record in records {
            let Some(id) = record["id"].as_i64() else {
                return Err(ConnectorError::internal(format!(
                    "Tryton answered a {} record without an integer id",
                    self.model
                )));
            };
            self.fetched_after = self.fetched_after.max(id);
            let changed = datetime_micros(&record["write_date"])
                .or_else(|| datetime_micros(&record["create_date"]));
            if let (true, Some(at)) = (self.incremental, changed) {
                if self.seen.contains(&(id, at)) || self.recent.contains(&(id, at)) {
                    continue;
                }
            }
            self.buffer.push_back((id, changed, record));
        }
        Ok(())
    }

    /// A record's values under the stream's field names, decoded.
    fn plain(&self, id: i64, record: &Value) -> Result<Value> {
        let mut out = Map::new();
        for field in &self.fields {
            let raw = match field.tryton_name.split_once('.') {
                Some((relation, target)) => &record[format!("{relation}.")][target],
                None => &record[&field.tryton_name],
            };
            let value = decode(raw, field.kind).map_err(|reason| {
                ConnectorError::schema(format!(
                    "Tryton's {} record {id}, field `{}`: {reason}",
                    self.model, field.info.name
                ))
            })?;
            out.insert(field.info.name.clone(), value);
        }
        Ok(Value::Object(out))
    }

    fn checkpoint(&mut self, complete: bool) -> Value {
        if !self.incremental {
            return json!({ "after_id": self.delivered_after });
        }
        // A later read starts at its watermark minus the overlap: older pairs cannot meet
        // it again.
        let later_floor = self.max.map(|max| max - self.overlap_micros);
        if let Some(floor) = later_floor {
            self.recent.retain(|(_, at)| *at >= floor);
        }
        let pairs = |set: &BTreeSet<(i64, i64)>| -> Vec<[i64; 2]> {
            set.iter().map(|(id, at)| [*id, *at]).collect()
        };
        if complete {
            let mut all = std::mem::take(&mut self.seen);
            all.append(&mut self.recent);
            if let Some(floor) = later_floor {
                all.retain(|(_, at)| *at >= floor);
            }
            self.seen = all;
            return json!({
                "from": self.from,
                "after_id": Value::Null,
                "max": self.max,
                "seen": pairs(&self.seen),
            });
        }
        // This read still meets the earlier reads' pairs from `from` on.
        if let Some(from) = self.from {
            self.seen.retain(|(_, at)| *at >= from);
        }
        json!({
            "from": self.from,
            "after_id": self.delivered_after,
            "max": self.max,
            "seen": pairs(&self.seen),
            "recent": pairs(&self.recent),
        })
    }
}

impl BatchReader for TrytonReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if self.finished {
            return Ok(None);
        }
        // One record more than a batch is fetched ahead, so that the last batch is known to
        // be the last and carries the completed checkpoint.
        while !self.exhausted && self.buffer.len() <= self.batch_size {
            self.fetch().await?;
        }
        if self.buffer.is_empty() {
            self.finished = true;
            if self.resumed && !self.delivered_any {
                // A resumed read that found nothing more still completes its checkpoint.
                let records: Vec<Value> = Vec::new();
                let batch = self.batch(&records)?;
                return Ok(Some((batch, self.checkpoint(true))));
            }
            return Ok(None);
        }
        let take = self.buffer.len().min(self.batch_size);
        let mut records = Vec::with_capacity(take);
        for (id, changed, record) in self.buffer.drain(..take).collect::<Vec<_>>() {
            records.push(self.plain(id, &record)?);
            self.delivered_after = id;
            if let Some(at) = changed {
                self.recent.insert((id, at));
                self.max = Some(self.max.map_or(at, |m| m.max(at)));
            }
        }
        self.delivered_any = true;
        let complete = self.exhausted && self.buffer.is_empty();
        if complete {
            self.finished = true;
        }
        let checkpoint = self.checkpoint(complete);
        Ok(Some((self.batch(&records)?, checkpoint)))
    }
}

impl TrytonReader {
    fn batch(&self, records: &[Value]) -> Result<RecordBatch> {
        batch_from_json(&self.json_fields, records).map_err(|e| {
            let id = records
                .get(e.row)
                .and_then(|r| r["id"].as_i64())
                .unwrap_or_default();
            ConnectorError::schema(format!(
                "Tryton's {} record {id}, field `{}`: {}",
                self.model, e.field, e.reason
            ))
        })
    }
}
