//! Writing a stream through HubSpot's batch endpoints, 100 inputs a call.
//!
//! Records are found by `id` (batch update) or by a unique property such as `email` (batch
//! upsert with `idProperty`). Per "Update contacts" and "Upsert contacts" (developers.
//! hubspot.com/docs/api/crm/contacts, batch), a record the server cannot find comes back in
//! a 207 multi-status answer naming its id, and an invalid value refuses the whole call with
//! a 400. Both become rejects of exactly the records refused: a refused call is split in
//! halves until each refused record stands alone, so the records around it are written.
//! Deletes archive (batch archive, 204).

use std::collections::{HashMap, VecDeque};

use futures_util::stream::{FuturesUnordered, StreamExt, TryStreamExt};

use lockstep_http_kit::convert::{json_from_batch, JsonField, NullStyle, ValueStyle};
use lockstep_http_kit::{HttpClient, HttpError, Request};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{
    ConnectorError, OpenStreamRequest, RejectedRow, Result, StreamWriter, WriteOutcome,
};
use serde_json::{json, Value};

use crate::schema::StreamSchema;

/// The most inputs one batch call takes ("Batch" limits: 100 inputs).
const BATCH_INPUTS: usize = 100;

/// How records are found.
#[derive(Debug, Clone, PartialEq)]
enum Key {
    Id,
    Unique(String),
}

/// Writes to one HubSpot object type.
pub struct HubSpotWriter {
    client: HttpClient,
    stream: String,
    key: Key,
    fields: Vec<JsonField>,
}

pub(crate) fn open(
    client: HttpClient,
    schema: StreamSchema,
    request: OpenStreamRequest,
) -> Result<HubSpotWriter> {
    let stream = schema.name.clone();
    let key = match request.key.as_slice() {
        [k] if k == "id" => Key::Id,
        [k] if schema
            .properties
            .iter()
            .any(|p| &p.name == k && p.has_unique_value) =>
        {
            Key::Unique(k.clone())
        }
        other => {
            return Err(ConnectorError::config(format!(
                "HubSpot finds {stream} by `id` or by a unique property ({}), not by {other:?}; \
                 set the sync's key to one of them",
                schema
                    .properties
                    .iter()
                    .filter(|p| p.has_unique_value)
                    .map(|p| format!("`{}`", p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    let all = schema.json_fields();
    let mut fields = Vec::new();
    for field in &request.fields {
        if field.name == "id" {
            fields.push(all[0].clone());
            continue;
        }
        let Some(property) = schema.properties.iter().find(|p| p.name == field.name) else {
            return Err(ConnectorError::schema(format!(
                "HubSpot {stream} have no property `{}`; create it in HubSpot (Settings > \
                 Properties) or leave it out of the sync's fields",
                field.name
            )));
        };
        if property.read_only() {
            return Err(ConnectorError::schema(format!(
                "`{}` is a read-only or calculated HubSpot property of {stream}; HubSpot sets it \
                 itself, so leave it out of the sync's fields",
                field.name
            )));
        }
        let mut json_field = all
            .iter()
            .find(|f| f.field.name == field.name)
            .expect("every property has a field")
            .clone();
        json_field.field.data_type = field.data_type;
        fields.push(json_field);
    }
    Ok(HubSpotWriter {
        client,
        stream,
        key,
        fields,
    })
}

/// One input ready to send, with the row it came from.
struct Input {
    row: usize,
    /// The record's id, or its unique property's value.
    key: String,
    body: Value,
}

impl HubSpotWriter {
    fn path(&self, operation: &str) -> String {
        format!("/crm/v3/objects/{}/batch/{operation}", self.stream)
    }

    /// Sends `inputs` in calls of at most 100, up to the connection's `concurrency` calls at
    /// once, splitting refused calls down to single records, and records outcomes and
    /// rejects.
    ///
    /// Calls run concurrently because one call at a time cannot use the account's budget: at
    /// HubSpot's usual few hundred milliseconds a batch call, a single caller makes 2-4 calls
    /// a second against the 10 a second of the private-app limit. The rate budget still
    /// decides when each call may start.
    async fn send_all(&self, inputs: Vec<Input>, outcome: &mut WriteOutcome) -> Result<()> {
        let operation = match self.key {
            Key::Id => "update",
            Key::Unique(_) => "upsert",
        };
        let concurrency = self.client.config().concurrency.max(1);
        let mut pending: VecDeque<&[Input]> = inputs.chunks(BATCH_INPUTS).collect();
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < concurrency {
                let Some(chunk) = pending.pop_front() else {
                    break;
                };
                in_flight.push(self.send_chunk(operation, chunk));
            }
            let Some((chunk, answer)) = in_flight.next().await else {
                break;
            };
            match answer {
                Ok(answer) => self.account(chunk, &answer, outcome),
                Err(HttpError::Refused { message, .. }) if chunk.len() == 1 => {
                    outcome.rejected.push(RejectedRow {
                        row: chunk[0].row,
                        field: None,
                        reason: format!("HubSpot refused the record: {message}"),
                    });
                }
                Err(HttpError::Refused { .. }) => {
                    let (left, right) = chunk.split_at(chunk.len() / 2);
                    pending.push_front(right);
                    pending.push_front(left);
                }
                // The calls still in flight are dropped: the engine writes the whole batch
                // again, and upserts and updates may be sent twice safely.
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// One batch call for `chunk`, with the chunk it answers.
    async fn send_chunk<'a>(
        &self,
        operation: &str,
        chunk: &'a [Input],
    ) -> (&'a [Input], std::result::Result<Value, HttpError>) {
        let body = json!({"inputs": chunk.iter().map(|i| i.body.clone()).collect::<Vec<_>>()});
        let request = Request::post(self.path(operation))
            .json(body)
            // Updates by id and upserts by a unique value may be sent twice safely.
            .idempotent(true)
            .describe(format!("writing {} HubSpot {}", chunk.len(), self.stream));
        let answer = match self.client.send(&request).await {
            Ok(response) => response.json(),
            Err(e) => Err(e),
        };
        (chunk, answer)
    }

    /// Counts a batch answer's results and turns its errors into rejects.
    fn account(&self, chunk: &[Input], answer: &Value, outcome: &mut WriteOutcome) {
        let results = answer["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        for result in results {
            match result["new"].as_bool() {
                Some(true) => *outcome.inserted.get_or_insert(0) += 1,
                _ => *outcome.updated.get_or_insert(0) += 1,
            }
        }
        let by_key: HashMap<&str, usize> = chunk.iter().map(|i| (i.key.as_str(), i.row)).collect();
        for error in answer["errors"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let message = error["message"].as_str().unwrap_or("refused");
            let ids = error["context"]["ids"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            for id in ids.iter().filter_map(Value::as_str) {
                let row = by_key
                    .get(id)
                    .or_else(|| by_key.get(id.to_lowercase().as_str()))
                    .copied();
                if let Some(row) = row {
                    outcome.rejected.push(RejectedRow {
                        row,
                        field: None,
                        reason: format!("HubSpot refused the record: {message}"),
                    });
                }
            }
        }
    }
}

impl StreamWriter for HubSpotWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        // Per "Update contacts": a value is cleared by an empty string.
        let style = ValueStyle::text(NullStyle::EmptyString);
        let records = json_from_batch(&self.fields, &batch, style)?;
        let mut outcome = WriteOutcome::default();
        let mut inputs = Vec::new();
        for (row, mut record) in records.into_iter().enumerate() {
            let (key_field, key) = match &self.key {
                Key::Id => ("id", record["id"].as_str().map(str::to_owned)),
                Key::Unique(p) => (
                    p.as_str(),
                    record["properties"][p].as_str().map(str::to_owned),
                ),
            };
            let Some(key) = key.filter(|k| !k.is_empty()) else {
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some(key_field.to_owned()),
                    reason: format!("no value for the key `{key_field}`, which HubSpot needs to find the record"),
                });
                continue;
            };
            let properties = record
                .as_object_mut()
                .and_then(|o| o.remove("properties"))
                .unwrap_or_else(|| json!({}));
            let body = match &self.key {
                Key::Id => json!({"id": key, "properties": properties}),
                Key::Unique(p) => json!({"id": key, "idProperty": p, "properties": properties}),
            };
            inputs.push(Input { row, key, body });
        }
        self.send_all(inputs, &mut outcome).await?;
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let records = json_from_batch(&self.fields, &keys, ValueStyle::KEYS)?;
        let mut ids = Vec::new();
        match &self.key {
            Key::Id => ids.extend(
                records
                    .iter()
                    .filter_map(|r| r["id"].as_str().map(str::to_owned)),
            ),
            Key::Unique(p) => {
                let values: Vec<String> = records
                    .iter()
                    .filter_map(|r| r["properties"][p].as_str().map(str::to_owned))
                    .collect();
                // Per "CRM search": an IN filter finds the records holding any of the values.
                for chunk in values.chunks(BATCH_INPUTS) {
                    let body = json!({
                        "filterGroups": [{"filters": [{"propertyName": p, "operator": "IN", "values": chunk}]}],
                        "properties": [p],
                        "limit": BATCH_INPUTS,
                    });
                    let answer: Value = self
                        .client
                        .send_json(
                            &Request::post(format!("/crm/v3/objects/{}/search", self.stream))
                                .json(body)
                                .idempotent(true)
                                .describe(format!("finding HubSpot {} to archive", self.stream)),
                        )
                        .await?;
                    ids.extend(
                        answer["results"]
                            .as_array()
                            .map(Vec::as_slice)
                            .unwrap_or_default()
                            .iter()
                            .filter_map(|r| r["id"].as_str().map(str::to_owned)),
                    );
                }
            }
        }
        // Archive calls run concurrently, as writes do (see `send_all`).
        let concurrency = self.client.config().concurrency.max(1);
        let this = &*self;
        futures_util::stream::iter(ids.chunks(BATCH_INPUTS).map(Ok))
            .try_for_each_concurrent(concurrency, |chunk| async move {
                let body = json!({
                    "inputs": chunk.iter().map(|id| json!({"id": id})).collect::<Vec<_>>()
                });
                let request = Request::post(this.path("archive"))
                    .json(body)
                    .idempotent(true)
                    .describe(format!("archiving {} HubSpot {}", chunk.len(), this.stream));
                this.client.send(&request).await.map(drop)
            })
            .await?;
        Ok(WriteOutcome {
            deleted: Some(ids.len() as u64),
            ..WriteOutcome::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        // Every batch call is durable once HubSpot has answered it.
        Ok(())
    }
}
