//! Reading a stream: full reads through the list endpoint, incremental reads through the
//! search endpoint on the last-modified property.
//!
//! Incremental reads never page a search with `after`: each page is a fresh query from the
//! last (last-modified, id) delivered, so the search endpoint's cap of 10,000 results per
//! query ("CRM search", limitations) is never reached however many records changed. HubSpot
//! sorts by one property only and does not promise an order among records that share a
//! timestamp, so a full page is delivered only up to (not including) its last timestamp;
//! the records at that timestamp are then read by a query on that exact timestamp sorted by
//! `hs_object_id`. Ties at a page boundary are thus neither skipped nor repeated.
//!
//! An incremental read's checkpoint is the SDK's cursor checkpoint of its last record,
//! `{"cursor": "<RFC 3339 ms>", "key": [<id>]}`, read back with `resume_point`; a full read's
//! is the pager's state, `{"page": ...}`.

use std::collections::VecDeque;
use std::sync::Arc;

use lockstep_http_kit::convert::{batch_from_json, select_fields, JsonField};
use lockstep_http_kit::{
    HttpClient, Pager, PagerState, Paging, RateBudget, Request, TokenPlacement,
};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::checkpoint::unusable_checkpoint;
use lockstep_plugin_sdk::{
    checkpoint_after, resume_point, BatchReader, ConnectorError, ReadMode, ReadRequest, Result,
};
use serde_json::{json, Value};

use crate::schema::{last_modified, StreamSchema};

/// Records per list page, the endpoint's maximum ("List contacts": at most 100).
const LIST_PAGE: usize = 100;
/// Records per search page, the endpoint's maximum ("CRM search": at most 200).
const SEARCH_PAGE: usize = 200;

/// The batches of one read.
pub struct HubSpotReader {
    client: HttpClient,
    stream: String,
    fields: Vec<JsonField>,
    /// The property names to ask for.
    asked: Vec<String>,
    batch_size: usize,
    how: How,
    finished: bool,
}

/// A record with its (last-modified in ms, id).
type Positioned = ((i64, i64), Value);

enum How {
    Full(Box<Pager>),
    Incremental {
        search_budget: Arc<RateBudget>,
        /// The last (last-modified in ms, id) delivered.
        after: Option<(i64, i64)>,
        /// Reading the records of exactly this timestamp, by id.
        tie: Option<i64>,
        /// Archived records changed after the checkpoint, in (last-modified, id) order, not
        /// yet delivered; loaded from the list's archived view at the read's start.
        archived: Option<VecDeque<Positioned>>,
    },
}

pub(crate) fn open(
    client: HttpClient,
    schema: StreamSchema,
    request: ReadRequest,
    search_budget: Arc<RateBudget>,
) -> Result<HubSpotReader> {
    let fields = select_fields(
        schema.json_fields(),
        request.fields.as_deref(),
        |name, _| {
            ConnectorError::schema(format!(
                "HubSpot {} have no property `{name}` (or it is not in `properties`)",
                schema.name
            ))
        },
    )?;
    let cursor = last_modified(&schema.name);
    let mut asked: Vec<String> = fields
        .iter()
        .filter(|f| f.field.name != "id" && f.field.name != "archived")
        .map(|f| f.field.name.clone())
        .collect();
    if !asked.iter().any(|n| n == cursor) {
        asked.push(cursor.into());
    }
    let batch_size = request
        .batch_size
        .unwrap_or(SEARCH_PAGE)
        .clamp(1, SEARCH_PAGE);
    let how = match request.mode {
        ReadMode::Cdc => {
            return Err(lockstep_plugin_sdk::resolve::cdc_unsupported(
                &request.stream,
            ));
        }
        ReadMode::Full => {
            let page = batch_size.min(LIST_PAGE);
            let template = Request::get(format!("/crm/v3/objects/{}", schema.name))
                .query("limit", page)
                .query("properties", asked.join(","))
                .describe(format!("listing HubSpot {}", schema.name));
            let paging = Paging::PageToken {
                token_at: "/paging/next/after".into(),
                placement: TokenPlacement::Query("after".into()),
            };
            let state = PagerState::from_checkpoint(request.checkpoint.as_ref()).map_err(|e| {
                ConnectorError::config(format!(
                    "the checkpoint {} is not one of a full HubSpot read ({e}); reset the \
                     sync's checkpoint",
                    request.checkpoint.as_ref().unwrap_or(&Value::Null)
                ))
            })?;
            How::Full(Box::new(Pager::resume(template, paging, "/results", state)))
        }
        ReadMode::Incremental => {
            if let Some(field) = &request.cursor_field {
                if field != cursor {
                    return Err(ConnectorError::config(format!(
                        "HubSpot {} are read incrementally by `{cursor}` only, not `{field}`; \
                         set the sync's `cursor = \"{cursor}\"`",
                        schema.name
                    )));
                }
            }
            How::Incremental {
                search_budget,
                after: resume_after(&request)?,
                tie: None,
                archived: None,
            }
        }
    };
    Ok(HubSpotReader {
        client,
        stream: schema.name,
        fields,
        asked,
        batch_size,
        how,
        finished: false,
    })
}

/// The (last-modified in ms, id) an incremental read resumes after, from the SDK's cursor
/// checkpoint `{"cursor": "<RFC 3339 ms>", "key": [<id>]}`; `None` reads from the start.
fn resume_after(request: &ReadRequest) -> Result<Option<(i64, i64)>> {
    let Some(checkpoint) = request.checkpoint.as_ref().filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let bad = |why: &str| unusable_checkpoint(&request.stream, checkpoint, why);
    // The read is ordered by two columns: last-modified, then id. A checkpoint without a
    // cursor means "from the start" to the SDK; every checkpoint of an incremental HubSpot
    // read has one, so any other (a full read's pager state) is refused, not restarted from.
    let Some(point) = resume_point(request, 2)? else {
        return Err(bad(
            "it has no cursor: it is not one of an incremental read",
        ));
    };
    let cursor = point
        .cursor
        .as_ref()
        .and_then(Value::as_str)
        .and_then(millis)
        .ok_or_else(|| bad("its cursor is not a HubSpot timestamp"))?;
    let id = match point.key.first() {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| bad("its key is not a HubSpot record id"))?;
    Ok(Some((cursor, id)))
}

fn millis(text: &str) -> Option<i64> {
    if let Ok(ms) = text.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl HubSpotReader {
    /// A record's (last-modified in ms, id), or an error naming the record.
    fn position(&self, record: &Value) -> Result<(i64, i64)> {
        let cursor = last_modified(&self.stream);
        let id = record["id"].as_str().and_then(|s| s.parse::<i64>().ok());
        let at = record["properties"][cursor].as_str().and_then(millis);
        match (at, id) {
            (Some(at), Some(id)) => Ok((at, id)),
            _ => Err(ConnectorError::internal(format!(
                "HubSpot answered a {} record without a numeric `id` or a `{cursor}` \
                 timestamp: {}",
                self.stream,
                excerpt(record)
            ))),
        }
    }

    fn batch(&self, records: &[Value]) -> Result<RecordBatch> {
        batch_from_json(&self.fields, records).map_err(|e| {
            let id = records
                .get(e.row)
                .and_then(|r| r["id"].as_str())
                .unwrap_or("?");
            ConnectorError::schema(format!(
                "HubSpot {} record {id}, property `{}`: {}",
                self.stream, e.field, e.reason
            ))
        })
    }

    /// The archived records changed after `after`, in (last-modified, id) order. Search never
    /// finds archived records; per "List contacts", the list endpoint with `archived=true`
    /// does, without a time filter, so the whole archived view is read once per read.
    async fn archived_since(&self, after: Option<(i64, i64)>) -> Result<VecDeque<Positioned>> {
        let template = Request::get(format!("/crm/v3/objects/{}", self.stream))
            .query("limit", LIST_PAGE)
            .query("archived", "true")
            .query("properties", self.asked.join(","))
            .describe(format!("listing archived HubSpot {}", self.stream));
        let paging = Paging::PageToken {
            token_at: "/paging/next/after".into(),
            placement: TokenPlacement::Query("after".into()),
        };
        let mut pager = Pager::new(template, paging, "/results");
        let mut found = Vec::new();
        while let Some(page) = pager.next_page(&self.client).await? {
            for record in page.records {
                let position = self.position(&record)?;
                if after.is_none_or(|after| position > after) {
                    found.push((position, record));
                }
            }
        }
        found.sort_by_key(|(p, _)| *p);
        Ok(found.into())
    }

    async fn search(&self, budget: &Arc<RateBudget>, body: Value) -> Result<Vec<Value>> {
        let request = Request::post(format!("/crm/v3/objects/{}/search", self.stream))
            .json(body)
            .idempotent(true)
            .budget(budget.clone())
            .describe(format!(
                "searching HubSpot {} changed since the checkpoint",
                self.stream
            ));
        let answer: Value = self.client.send_json(&request).await?;
        match answer.get("results") {
            Some(Value::Array(results)) => Ok(results.clone()),
            _ => Err(ConnectorError::internal(format!(
                "HubSpot's search answer has no `results` array: {}",
                excerpt(&answer)
            ))),
        }
    }
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

impl BatchReader for HubSpotReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if self.finished {
            return Ok(None);
        }
        let cursor = last_modified(&self.stream);
        loop {
            if let How::Incremental {
                archived: None,
                after,
                ..
            } = &self.how
            {
                let loaded = self.archived_since(*after).await?;
                if let How::Incremental { archived, .. } = &mut self.how {
                    *archived = Some(loaded);
                }
            }
            match &mut self.how {
                How::Full(pager) => {
                    let Some((records, checkpoint)) = pager.next_records(&self.client).await?
                    else {
                        self.finished = true;
                        return Ok(None);
                    };
                    return Ok(Some((self.batch(&records)?, checkpoint)));
                }
                How::Incremental {
                    search_budget,
                    after,
                    tie,
                    ..
                } => {
                    let budget = search_budget.clone();
                    let limit = self.batch_size;
                    let (body, tie_query) = match (*tie, *after) {
                        (Some(at), after) => {
                            let mut filters = vec![
                                json!({"propertyName": cursor, "operator": "EQ", "value": at.to_string()}),
                            ];
                            if let Some((_, k)) = after.filter(|(c, _)| *c == at) {
                                filters.push(json!({"propertyName": "hs_object_id", "operator": "GT", "value": k.to_string()}));
                            }
                            (
                                json!({
                                    "filterGroups": [{"filters": filters}],
                                    "sorts": [{"propertyName": "hs_object_id", "direction": "ASCENDING"}],
                                    "properties": self.asked,
                                    "limit": limit,
                                }),
                                true,
                            )
                        }
                        (None, after) => {
                            let groups = match after {
                                None => json!([]),
                                Some((c, k)) => json!([
                                    {"filters": [{"propertyName": cursor, "operator": "GT", "value": c.to_string()}]},
                                    {"filters": [{"propertyName": cursor, "operator": "EQ", "value": c.to_string()},
                                                 {"propertyName": "hs_object_id", "operator": "GT", "value": k.to_string()}]},
                                ]),
                            };
                            (
                                json!({
                                    "filterGroups": groups,
                                    "sorts": [{"propertyName": cursor, "direction": "ASCENDING"}],
                                    "properties": self.asked,
                                    "limit": limit,
                                }),
                                false,
                            )
                        }
                    };
                    let records = self.search(&budget, body).await?;
                    let full = records.len() == limit;
                    let mut positioned = records
                        .into_iter()
                        .map(|r| self.position(&r).map(|p| (p, r)))
                        .collect::<Result<Vec<_>>>()?;
                    positioned.sort_by_key(|(p, _)| *p);
                    let How::Incremental {
                        after,
                        tie,
                        archived,
                        ..
                    } = &mut self.how
                    else {
                        unreachable!("matched above")
                    };
                    if tie_query {
                        if !full {
                            *tie = None;
                        }
                        if positioned.is_empty() {
                            continue;
                        }
                    } else {
                        if positioned.is_empty() {
                            // The changes are all read: the archived records come last.
                            let pending = archived.as_mut().expect("loaded above");
                            if pending.is_empty() {
                                self.finished = true;
                                return Ok(None);
                            }
                            let take = pending.len().min(limit);
                            positioned = pending.drain(..take).collect();
                        }
                        if full {
                            let last = positioned.last().expect("a full page").0 .0;
                            positioned.retain(|(p, _)| p.0 < last);
                            if positioned.is_empty() {
                                *tie = Some(last);
                                continue;
                            }
                        }
                    }
                    // Archived records up to this batch's last position join it, in order; the
                    // batch is cut back to the batch size, and whatever the cut leaves is read
                    // again after the new checkpoint.
                    let bound = positioned.last().expect("not empty").0;
                    let pending = archived.as_mut().expect("loaded above");
                    while pending.front().is_some_and(|(p, _)| *p <= bound) {
                        positioned.push(pending.pop_front().expect("checked above"));
                    }
                    positioned.sort_by_key(|(p, _)| *p);
                    if positioned.len() > limit {
                        // Archived records cut off go back to the queue, in order; live ones
                        // are found again by the next query, which starts after this batch.
                        let cut = positioned.split_off(limit);
                        for entry in cut.into_iter().rev() {
                            if entry.1["archived"] == Value::Bool(true) {
                                pending.push_front(entry);
                            }
                        }
                    }
                    let position = positioned.last().expect("not empty").0;
                    *after = Some(position);
                    let records: Vec<Value> = positioned.into_iter().map(|(_, r)| r).collect();
                    let checkpoint = checkpoint_after(
                        true,
                        vec![json!(format_ms(position.0)), json!(position.1)],
                    );
                    return Ok(Some((self.batch(&records)?, checkpoint)));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incremental(checkpoint: Option<Value>) -> ReadRequest {
        ReadRequest {
            stream: "contacts".into(),
            mode: ReadMode::Incremental,
            fields: None,
            cursor_field: None,
            key: vec![],
            checkpoint,
            batch_size: None,
            keys: None,
            key_summary: false,
            dry_run: false,
            cdc: None,
            locations: None,
            range_hash: None,
        }
    }

    #[test]
    fn stored_incremental_checkpoints_load_and_round_trip() {
        let at = millis("2024-05-01T10:00:00.250Z").unwrap();
        for stored in [
            json!({"cursor": "2024-05-01T10:00:00.250Z", "key": [42]}),
            json!({"cursor": "2024-05-01T10:00:00.250Z", "key": ["42"]}),
        ] {
            assert_eq!(
                resume_after(&incremental(Some(stored))).unwrap(),
                Some((at, 42))
            );
        }
        let written = checkpoint_after(true, vec![json!(format_ms(at)), json!(42)]);
        assert_eq!(
            written,
            json!({"cursor": "2024-05-01T10:00:00.250Z", "key": [42]})
        );
        assert_eq!(resume_after(&incremental(None)).unwrap(), None);
        assert_eq!(resume_after(&incremental(Some(Value::Null))).unwrap(), None);
    }

    #[test]
    fn checkpoints_of_another_shape_are_refused_with_the_sdks_wording() {
        for bad in [
            json!({"cursor": "2024-05-01T10:00:00Z"}),
            json!({"cursor": "yesterday", "key": [1]}),
            json!({"cursor": "2024-05-01T10:00:00Z", "key": [{"id": 1}]}),
            json!({"page": {"at": "start"}}),
            json!({"cursor": null, "key": [1]}),
        ] {
            let e = resume_after(&incremental(Some(bad.clone()))).unwrap_err();
            assert_eq!(e.kind, lockstep_plugin_sdk::ErrorKind::CONFIG, "{bad}");
            assert!(e.message.contains("reset"), "{bad}: {}", e.message);
        }
    }
}
