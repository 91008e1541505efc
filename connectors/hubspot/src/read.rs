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

use std::collections::VecDeque;
use std::sync::Arc;

use lockstep_http_kit::convert::{batch_from_json, JsonField};
use lockstep_http_kit::{
    HttpClient, Pager, PagerState, Paging, RateBudget, Request, TokenPlacement,
};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{BatchReader, ConnectorError, ReadMode, ReadRequest, Result};
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
    let all = schema.json_fields();
    let fields: Vec<JsonField> = match &request.fields {
        None => all,
        Some(names) => {
            for name in names {
                if !all.iter().any(|f| &f.field.name == name) {
                    return Err(ConnectorError::schema(format!(
                        "HubSpot {} have no property `{name}` (or it is not in `properties`)",
                        schema.name
                    )));
                }
            }
            all.into_iter()
                .filter(|f| names.contains(&f.field.name))
                .collect()
        }
    };
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
            let state = match &request.checkpoint {
                None | Some(Value::Null) => PagerState::Start,
                Some(checkpoint) => {
                    serde_json::from_value(checkpoint["page"].clone()).map_err(|e| {
                        ConnectorError::config(format!(
                            "the checkpoint {checkpoint} is not one of a full HubSpot read ({e}); \
                         reset the sync's checkpoint"
                        ))
                    })?
                }
            };
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
                after: parse_checkpoint(request.checkpoint.as_ref())?,
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

/// `{"cursor": "<RFC 3339 ms>", "key": [<id>]}` to (ms, id).
fn parse_checkpoint(checkpoint: Option<&Value>) -> Result<Option<(i64, i64)>> {
    let Some(checkpoint) = checkpoint.filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let bad = || {
        ConnectorError::config(format!(
            "the checkpoint {checkpoint} is not one of an incremental HubSpot read (expected \
             {{\"cursor\": \"<timestamp>\", \"key\": [<id>]}}); reset the sync's checkpoint"
        ))
    };
    let cursor = checkpoint["cursor"]
        .as_str()
        .and_then(millis)
        .ok_or_else(bad)?;
    let key = match &checkpoint["key"][0] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Some((cursor, key)))
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
                    let Some(page) = pager.next_page(&self.client).await? else {
                        self.finished = true;
                        return Ok(None);
                    };
                    let checkpoint = json!({ "page": pager.state() });
                    if *pager.state() == PagerState::Done {
                        self.finished = true;
                    }
                    if page.records.is_empty() {
                        if self.finished {
                            return Ok(None);
                        }
                        continue;
                    }
                    return Ok(Some((self.batch(&page.records)?, checkpoint)));
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
                    let checkpoint = json!({"cursor": format_ms(position.0), "key": [position.1]});
                    return Ok(Some((self.batch(&records)?, checkpoint)));
                }
            }
        }
    }
}
