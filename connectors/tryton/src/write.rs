//! Writing a stream with `create`, `write` and `delete`, in batches.
//!
//! Records are found by `id`, or by another field of the model (a party's `code`, say): one
//! `search_read` per batch maps the key values to ids, archived records included. Records
//! found are written, the others created (with the key `id`, a record Tryton does not have is
//! rejected: Tryton chooses ids itself).
//!
//! Tryton runs each call in one transaction: one record it refuses (a `UserError`: a
//! required field, a constraint, a domain) refuses the whole call. A refused call is split
//! in halves until each refused record stands alone, so the records around it land, and
//! each refused record becomes one reject carrying Tryton's message.
//!
//! A party's addresses and contact mechanisms are not written nested in the party (Tryton's
//! `[["create", [...]]]` form): they are the `party.address` and `party.contact_mechanism`
//! streams, whose `party` field is the party's id.
//!
//! Deletes are hard deletes (`delete`), as Tryton's own.

use std::collections::HashMap;

use lockstep_http_kit::convert::{json_from_batch, JsonField, NullStyle, ValueStyle};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{
    ConnectorError, OpenStreamRequest, RejectedRow, Result, StreamWriter, WriteOutcome,
};
use serde_json::{json, Map, Value};

use crate::rpc::Rpc;
use crate::schema::{Field, StreamSchema};
use crate::values::encode;

/// Writes to one Tryton model.
pub struct TrytonWriter {
    rpc: Rpc,
    model: String,
    key: Field,
    fields: Vec<Field>,
    json_fields: Vec<JsonField>,
    batch: usize,
}

pub(crate) fn open(
    rpc: Rpc,
    schema: StreamSchema,
    request: OpenStreamRequest,
    batch: usize,
) -> Result<TrytonWriter> {
    let model = schema.model.clone();
    let key = match request.key.as_slice() {
        [k] => schema
            .field(k)
            .filter(|f| f.info.name == "id" || f.writable),
        _ => None,
    };
    let Some(key) = key.cloned() else {
        return Err(ConnectorError::config(format!(
            "Tryton's {model} records are found by `id` or by one writable field (such as a \
             party's `code`), not by {:?}; set the sync's key to one of them",
            request.key
        )));
    };
    let mut fields = Vec::new();
    for wanted in &request.fields {
        let Some(field) = schema.field(&wanted.name) else {
            return Err(ConnectorError::schema(format!(
                "Tryton's {model} has no field `{}`; leave it out of the sync's fields or map \
                 it to one of {}",
                wanted.name,
                schema
                    .fields
                    .iter()
                    .filter(|f| f.writable)
                    .map(|f| f.info.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        if !field.writable && field.info.name != "id" {
            return Err(ConnectorError::schema(format!(
                "`{}` of Tryton's {model} is read-only (computed or set by Tryton); leave it \
                 out of the sync's fields",
                wanted.name
            )));
        }
        let mut field = field.clone();
        field.info.data_type = wanted.data_type;
        fields.push(field);
    }
    let json_fields = fields
        .iter()
        .map(|f| JsonField::top_level(f.info.clone()))
        .collect();
    Ok(TrytonWriter {
        rpc,
        model,
        key,
        fields,
        json_fields,
        batch: batch.max(1),
    })
}

/// One record to send, with the row it came from.
struct Input {
    row: usize,
    /// The id, for writes.
    id: Option<i64>,
    values: Value,
}

impl TrytonWriter {
    fn records(&self, batch: &RecordBatch) -> Result<Vec<Value>> {
        json_from_batch(
            &self.json_fields,
            batch,
            ValueStyle {
                as_text: false,
                nulls: NullStyle::Null,
            },
        )
        .map_err(|e| ConnectorError::schema(e.to_string()))
    }

    /// The ids of the records whose key field holds one of `values`.
    async fn ids_by_key(&self, values: &[Value]) -> Result<HashMap<String, i64>> {
        let mut found = HashMap::new();
        if self.key.info.name == "id" {
            let answer = self
                .call_search(json!([["id", "in", values]]), json!(["id"]))
                .await?;
            for record in answer {
                if let Some(id) = record["id"].as_i64() {
                    found.insert(id.to_string(), id);
                }
            }
            return Ok(found);
        }
        let name = &self.key.tryton_name;
        let answer = self
            .call_search(json!([[name, "in", values]]), json!(["id", name]))
            .await?;
        for record in answer {
            if let Some(id) = record["id"].as_i64() {
                found.insert(key_text(&record[name]), id);
            }
        }
        Ok(found)
    }

    async fn call_search(&self, domain: Value, fields: Value) -> Result<Vec<Value>> {
        let answer = self
            .rpc
            .call(
                &format!("model.{}.search_read", self.model),
                vec![
                    domain,
                    json!(0),
                    Value::Null,
                    json!([["id", "ASC"]]),
                    fields,
                ],
                Some(json!({"active_test": false})),
                true,
                &format!("finding {} records by `{}`", self.model, self.key.info.name),
            )
            .await?;
        match answer {
            Value::Array(records) => Ok(records),
            _ => Err(ConnectorError::internal(format!(
                "Tryton's search_read of {} did not answer a list",
                self.model
            ))),
        }
    }

    /// Sends `inputs` with `method` in calls of at most `batch` records, splitting refused
    /// calls down to single records; returns how many landed.
    async fn send_all(
        &self,
        method: &str,
        inputs: &[Input],
        rejected: &mut Vec<RejectedRow>,
    ) -> Result<u64> {
        let mut landed = 0;
        let mut pending: Vec<&[Input]> = inputs.chunks(self.batch).rev().collect();
        while let Some(chunk) = pending.pop() {
            let (params, idempotent) = match method {
                "create" => (
                    vec![Value::Array(
                        chunk.iter().map(|i| i.values.clone()).collect(),
                    )],
                    false,
                ),
                "write" => (
                    chunk
                        .iter()
                        .flat_map(|i| [json!([i.id]), i.values.clone()])
                        .collect(),
                    true,
                ),
                _ => (
                    vec![Value::Array(chunk.iter().map(|i| json!(i.id)).collect())],
                    false,
                ),
            };
            let what = format!("{method} of {} {} records", chunk.len(), self.model);
            match self
                .rpc
                .call(
                    &format!("model.{}.{method}", self.model),
                    params,
                    None,
                    idempotent,
                    &what,
                )
                .await
            {
                Ok(_) => landed += chunk.len() as u64,
                Err(e) if e.is_refusal() && chunk.len() == 1 => rejected.push(RejectedRow {
                    row: chunk[0].row,
                    field: None,
                    reason: format!("Tryton refused the record: {}", e.message()),
                }),
                Err(e) if e.is_refusal() => {
                    let (left, right) = chunk.split_at(chunk.len() / 2);
                    pending.push(right);
                    pending.push(left);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(landed)
    }
}

/// A key value as text, for matching what Tryton answers with what the batch holds.
fn key_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl StreamWriter for TrytonWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let records = self.records(&batch)?;
        let mut outcome = WriteOutcome::default();
        let key_name = self.key.info.name.clone();
        let mut keyed = Vec::new();
        for (row, record) in records.iter().enumerate() {
            let key = record.get(&key_name).filter(|v| !v.is_null());
            let Some(key) = key else {
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some(key_name.clone()),
                    reason: format!(
                        "no value for the key `{key_name}`, which finds the record in Tryton"
                    ),
                });
                continue;
            };
            let mut values = Map::new();
            let mut bad = None;
            for field in &self.fields {
                if field.info.name == "id" {
                    continue;
                }
                let value = record.get(&field.info.name).unwrap_or(&Value::Null);
                match encode(value, field.kind) {
                    Ok(v) => {
                        values.insert(field.tryton_name.clone(), v);
                    }
                    Err(reason) => {
                        bad = Some((field.info.name.clone(), reason));
                        break;
                    }
                }
            }
            if let Some((field, reason)) = bad {
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some(field),
                    reason,
                });
                continue;
            }
            let key_value = encode(key, self.key.kind).unwrap_or_else(|_| key.clone());
            keyed.push((row, key_value, Value::Object(values)));
        }
        let key_values: Vec<Value> = keyed.iter().map(|(_, k, _)| k.clone()).collect();
        let ids = if key_values.is_empty() {
            HashMap::new()
        } else {
            self.ids_by_key(&key_values).await?
        };
        let (mut creates, mut writes) = (Vec::new(), Vec::new());
        for (row, key, values) in keyed {
            match ids.get(&key_text(&key)) {
                Some(id) => {
                    // The key already holds its value; Tryton may refuse writing it again
                    // (a party's code is read-only once set).
                    let mut values = values;
                    if let Value::Object(map) = &mut values {
                        map.remove(&self.key.tryton_name);
                    }
                    writes.push(Input {
                        row,
                        id: Some(*id),
                        values,
                    })
                }
                None if key_name == "id" => outcome.rejected.push(RejectedRow {
                    row,
                    field: Some("id".into()),
                    reason: format!(
                        "Tryton has no {} record with id {key}; Tryton chooses ids itself, so \
                         new records need another key (such as a code)",
                        self.model
                    ),
                }),
                None => creates.push(Input {
                    row,
                    id: None,
                    values,
                }),
            }
        }
        let inserted = self
            .send_all("create", &creates, &mut outcome.rejected)
            .await?;
        let updated = self
            .send_all("write", &writes, &mut outcome.rejected)
            .await?;
        outcome.inserted = Some(inserted);
        outcome.updated = Some(updated);
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let records = self.records(&keys)?;
        let key_name = self.key.info.name.clone();
        let values: Vec<(usize, Value)> = records
            .iter()
            .enumerate()
            .filter_map(|(row, r)| {
                let v = r.get(&key_name).filter(|v| !v.is_null())?;
                Some((row, encode(v, self.key.kind).unwrap_or_else(|_| v.clone())))
            })
            .collect();
        let mut outcome = WriteOutcome::default();
        if values.is_empty() {
            outcome.deleted = Some(0);
            return Ok(outcome);
        }
        let ids = self
            .ids_by_key(&values.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())
            .await?;
        // A key Tryton no longer has is already deleted.
        let inputs: Vec<Input> = values
            .iter()
            .filter_map(|(row, v)| {
                ids.get(&key_text(v)).map(|id| Input {
                    row: *row,
                    id: Some(*id),
                    values: Value::Null,
                })
            })
            .collect();
        let deleted = self
            .send_all("delete", &inputs, &mut outcome.rejected)
            .await?;
        outcome.deleted = Some(deleted);
        Ok(outcome)
    }

    async fn flush(&mut self) -> Result<()> {
        // Every call is committed by Tryton once it has answered.
        Ok(())
    }
}
