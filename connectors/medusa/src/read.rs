//! Reading a stream: incremental reads by `updated_at`, full reads by `id`.
//!
//! Medusa's list endpoints page with `limit`/`offset` and order by one field only, and
//! stamp `updated_at` in milliseconds. An incremental read therefore never pages a changing
//! result with an offset: each page is a fresh query `updated_at[$gte]=<start>` ordered by
//! `updated_at`, from the millisecond after the last one delivered in full. A full page is
//! delivered only up to (not including) its last millisecond; when a whole page shares one
//! millisecond, the records of exactly that millisecond are read by id (`updated_at[$gte]=T`,
//! `updated_at[$lt]=T+1ms`, `order=id`, offset paging within the millisecond, which no new
//! record can join), and a read resumed from a checkpoint `(T, id)` first reads the rest of
//! millisecond T that way. Ties at a page boundary are thus neither skipped nor repeated. A
//! record changed while the read runs moves to a later millisecond and is read again there.
//!
//! Products are read with `with_deleted=true` when resuming from a checkpoint: Medusa stamps
//! a product's deletion in both `deleted_at` and `updated_at`, so a deleted product arrives in
//! its place in the order with `deleted_at` set (a mirror sync's `tombstone`). The first read
//! of a sync leaves deleted records out.
//!
//! A full read orders by `id` (Medusa's ids are ULID-based, so later records sort last) and
//! pages by offset with an anchor: each page starts one record before where the last ended;
//! when that record is not the one delivered last, records before it were deleted meanwhile
//! and the read steps back, so a delete during the read never makes it skip a record. Rows
//! with an id at or before the last delivered are never delivered again.
//!
//! Checkpoints: an incremental read's is the SDK's cursor checkpoint `{"cursor": "<RFC 3339
//! ms>", "key": ["<id>"]}`; a full read's is `{"page": {"after": "<id>", "offset": n}}`.

use std::collections::VecDeque;

use lockstep_http_kit::convert::{batch_from_json, select_fields, JsonField};
use lockstep_http_kit::{HttpClient, Request};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::checkpoint::unusable_checkpoint;
use lockstep_plugin_sdk::{
    checkpoint_after, resume_point, BatchReader, ConnectorError, ReadMode, ReadRequest, Result,
};
use serde_json::{json, Value};

use crate::streams::{self, StreamDef};

/// A record's place in an incremental read: (`updated_at` in ms, id).
type Position = (i64, String);

/// The batches of one read.
pub struct MedusaReader {
    client: HttpClient,
    def: StreamDef,
    fields: Vec<JsonField>,
    filters: Vec<(String, String)>,
    limit: usize,
    how: How,
    finished: bool,
}

enum How {
    Incremental(Incremental),
    Full(Full),
}

struct Incremental {
    /// The last position delivered.
    after: Option<Position>,
    /// Whether every record of `after`'s millisecond has been delivered.
    bucket_done: bool,
    /// Reading the records of exactly this millisecond by id, from this offset.
    tie: Option<(i64, u64)>,
    /// Whether deleted records are listed too.
    with_deleted: bool,
}

struct Full {
    /// The last id delivered.
    after: Option<String>,
    /// The server's index of the record after `after`.
    offset: u64,
    /// Fetched records not yet delivered, with their server index.
    pending: VecDeque<(u64, Value)>,
    /// Whether the server has no more records past `pending`.
    exhausted: bool,
}

pub(crate) fn open(
    client: HttpClient,
    def: StreamDef,
    all_fields: Vec<JsonField>,
    filters: Vec<(String, String)>,
    page_size: usize,
    request: ReadRequest,
) -> Result<MedusaReader> {
    let fields = select_fields(all_fields, request.fields.as_deref(), |name, all| {
        ConnectorError::schema(format!(
            "Medusa {} have no field `{name}`; the fields are {}",
            def.name,
            all.iter()
                .map(|f| f.field.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let limit = request
        .batch_size
        .unwrap_or(page_size)
        .clamp(1, page_size.max(1));
    let how = match request.mode {
        ReadMode::Cdc => {
            return Err(lockstep_plugin_sdk::resolve::cdc_unsupported(
                &request.stream,
            ))
        }
        ReadMode::Incremental => {
            if !def.incremental {
                return Err(ConnectorError::config(format!(
                    "Medusa {} cannot be read incrementally: {}; use `mode = \"full\"`, or \
                     `mode = \"mirror\"` without a cursor (docs/medusa.md)",
                    def.name,
                    if def.name == "inventory_levels" {
                        "inventory items refuse an `updated_at` filter, and a reservation \
                         changes a level without touching its item"
                    } else {
                        "its list has no change filter"
                    }
                )));
            }
            if let Some(field) = &request.cursor_field {
                if field != "updated_at" {
                    return Err(ConnectorError::config(format!(
                        "Medusa {} are read incrementally by `updated_at` only, not `{field}`; \
                         set the sync's `cursor = \"updated_at\"`",
                        def.name
                    )));
                }
            }
            let after = resume_after(&request)?;
            How::Incremental(Incremental {
                tie: after.as_ref().map(|(ms, _)| (*ms, 0)),
                with_deleted: def.tombstones && after.is_some(),
                bucket_done: false,
                after,
            })
        }
        ReadMode::Full => {
            let (after, offset) = full_resume(&request)?;
            How::Full(Full {
                after,
                offset,
                pending: VecDeque::new(),
                exhausted: false,
            })
        }
    };
    Ok(MedusaReader {
        client,
        def,
        fields,
        filters,
        limit,
        how,
        finished: false,
    })
}

/// Where an incremental read resumes, from the SDK's cursor checkpoint.
fn resume_after(request: &ReadRequest) -> Result<Option<Position>> {
    let Some(checkpoint) = request.checkpoint.as_ref().filter(|c| !c.is_null()) else {
        return Ok(None);
    };
    let bad = |why: &str| unusable_checkpoint(&request.stream, checkpoint, why);
    let Some(point) = resume_point(request, 2)? else {
        return Err(bad(
            "it has no cursor: it is not one of an incremental read",
        ));
    };
    let at = point
        .cursor
        .as_ref()
        .and_then(Value::as_str)
        .and_then(millis)
        .ok_or_else(|| bad("its cursor is not a timestamp"))?;
    let id = point
        .key
        .first()
        .and_then(Value::as_str)
        .ok_or_else(|| bad("its key is not a Medusa id"))?;
    Ok(Some((at, id.to_owned())))
}

/// Where a full read resumes, from `{"page": {"after": id, "offset": n}}`.
fn full_resume(request: &ReadRequest) -> Result<(Option<String>, u64)> {
    let Some(checkpoint) = request.checkpoint.as_ref().filter(|c| !c.is_null()) else {
        return Ok((None, 0));
    };
    let page = &checkpoint["page"];
    match (page["after"].as_str(), page["offset"].as_u64()) {
        (Some(after), Some(offset)) => Ok((Some(after.to_owned()), offset)),
        _ => Err(unusable_checkpoint(
            &request.stream,
            checkpoint,
            "it is not one of a full Medusa read",
        )),
    }
}

fn millis(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

impl MedusaReader {
    /// One list request: `params` on top of the stream's fields and the config's filters.
    async fn list(&self, params: &[(&str, String)], what: &str) -> Result<Vec<Value>> {
        let mut request = Request::get(self.def.path)
            .query("fields", streams::fields_param(self.def.name))
            .describe(format!("listing Medusa {} ({what})", self.def.name));
        for (name, value) in &self.filters {
            request = request.query(name.clone(), value);
        }
        for (name, value) in params {
            request = request.query(*name, value);
        }
        let answer: Value = self.client.send_json(&request).await?;
        match answer.get(self.def.list_key) {
            Some(Value::Array(records)) => Ok(records.clone()),
            _ => Err(ConnectorError::internal(format!(
                "Medusa's answer to {} has no `{}` list: {}",
                self.def.path,
                self.def.list_key,
                excerpt(&answer)
            ))),
        }
    }

    fn position(&self, record: &Value) -> Result<Position> {
        let id = record["id"].as_str();
        let at = record["updated_at"].as_str().and_then(millis);
        match (at, id) {
            (Some(at), Some(id)) => Ok((at, id.to_owned())),
            _ => Err(ConnectorError::internal(format!(
                "Medusa answered a {} record without an `id` or an `updated_at`: {}",
                self.def.name,
                excerpt(record)
            ))),
        }
    }

    fn batch(&self, mut records: Vec<Value>) -> Result<RecordBatch> {
        if self.def.name != "inventory_levels" {
            for record in &mut records {
                streams::shape(self.def.name, record);
            }
        }
        batch_from_json(&self.fields, &records).map_err(|e| {
            let id = records
                .get(e.row)
                .and_then(|r| r["id"].as_str())
                .unwrap_or("?");
            ConnectorError::schema(format!(
                "Medusa {} record {id}, field `{}`: {}",
                self.def.name, e.field, e.reason
            ))
        })
    }

    async fn next_incremental(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        let limit = self.limit;
        loop {
            let How::Incremental(state) = &self.how else {
                unreachable!("called for incremental reads only")
            };
            let with_deleted = state.with_deleted;
            let mut params: Vec<(&str, String)> =
                vec![("limit", limit.to_string()), ("order", "updated_at".into())];
            if with_deleted {
                params.push(("with_deleted", "true".into()));
            }
            if let Some((ms, offset)) = state.tie {
                params[1].1 = "id".into();
                params.push(("offset", offset.to_string()));
                params.push(("updated_at[$gte]", format_ms(ms)));
                params.push(("updated_at[$lt]", format_ms(ms + 1)));
                let records = self.list(&params, "changes in one millisecond").await?;
                let full = records.len() == limit;
                let mut positioned = records
                    .into_iter()
                    .map(|r| self.position(&r).map(|p| (p, r)))
                    .collect::<Result<Vec<_>>>()?;
                let How::Incremental(state) = &mut self.how else {
                    unreachable!("matched above")
                };
                positioned.retain(|(p, _)| state.after.as_ref().is_none_or(|a| p > a));
                positioned.sort_by(|a, b| a.0.cmp(&b.0));
                if full {
                    state.tie = Some((ms, offset + limit as u64));
                } else {
                    state.tie = None;
                    state.bucket_done = true;
                    if state.after.as_ref().is_none_or(|(a, _)| *a < ms) {
                        // Nothing of this millisecond was delivered before: the bucket is
                        // done once this batch is.
                        state.after = Some((ms, String::new()));
                    }
                }
                if positioned.is_empty() {
                    continue;
                }
                return self.deliver(positioned).map(Some);
            }
            if let Some((ms, _)) = &state.after {
                let start = if state.bucket_done { ms + 1 } else { *ms };
                params.push(("updated_at[$gte]", format_ms(start)));
            }
            let records = self.list(&params, "changes").await?;
            let full = records.len() == limit;
            let mut positioned = records
                .into_iter()
                .map(|r| self.position(&r).map(|p| (p, r)))
                .collect::<Result<Vec<_>>>()?;
            positioned.sort_by(|a, b| a.0.cmp(&b.0));
            let How::Incremental(state) = &mut self.how else {
                unreachable!("matched above")
            };
            if positioned.is_empty() {
                self.finished = true;
                return Ok(None);
            }
            if full {
                let last = positioned.last().expect("not empty").0 .0;
                positioned.retain(|(p, _)| p.0 < last);
                if positioned.is_empty() {
                    state.tie = Some((last, 0));
                    continue;
                }
            } else {
                self.finished = true;
            }
            state.bucket_done = true;
            return self.deliver(positioned).map(Some);
        }
    }

    /// Delivers records in position order, checkpointing the last.
    fn deliver(&mut self, positioned: Vec<(Position, Value)>) -> Result<(RecordBatch, Value)> {
        let last = positioned.last().expect("not empty").0.clone();
        if let How::Incremental(state) = &mut self.how {
            state.after = Some(last.clone());
        }
        let records: Vec<Value> = positioned.into_iter().map(|(_, r)| r).collect();
        let checkpoint = checkpoint_after(true, vec![json!(format_ms(last.0)), json!(last.1)]);
        Ok((self.batch(records)?, checkpoint))
    }

    /// Fills the full read's queue with the next page.
    async fn fetch_full_page(&mut self) -> Result<()> {
        let limit = self.limit;
        loop {
            let How::Full(state) = &self.how else {
                unreachable!("called for full reads only")
            };
            let anchored = state.after.is_some() && state.offset > 0;
            let start = if anchored {
                state.offset - 1
            } else {
                state.offset
            };
            let asked = limit + usize::from(anchored);
            let params = [
                ("limit", asked.to_string()),
                ("offset", start.to_string()),
                ("order", "id".to_owned()),
            ];
            let records = self.list(&params, "all records").await?;
            let How::Full(state) = &mut self.how else {
                unreachable!("matched above")
            };
            let first_after_anchor = match (&state.after, records.first()) {
                (Some(after), Some(first)) if anchored => {
                    first["id"].as_str().unwrap_or_default() > after.as_str()
                }
                _ => false,
            };
            if first_after_anchor && start > 0 {
                // Records before the anchor were deleted: step back and look again.
                state.offset = state.offset.saturating_sub(limit as u64).max(1);
                continue;
            }
            state.exhausted = records.len() < asked;
            let mut index = start;
            for record in records {
                let id = record["id"].as_str().unwrap_or_default().to_owned();
                if state
                    .after
                    .as_ref()
                    .is_none_or(|a| id.as_str() > a.as_str())
                {
                    state.pending.push_back((index, record));
                }
                index += 1;
            }
            if state.pending.is_empty() && !state.exhausted {
                state.offset = index;
                continue;
            }
            return Ok(());
        }
    }

    async fn next_full(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        let How::Full(state) = &self.how else {
            unreachable!("called for full reads only")
        };
        if state.pending.is_empty() {
            if state.exhausted {
                self.finished = true;
                return Ok(None);
            }
            self.fetch_full_page().await?;
        }
        let limit = self.limit;
        let levels = self.def.name == "inventory_levels";
        let How::Full(state) = &mut self.how else {
            unreachable!("matched above")
        };
        if state.pending.is_empty() {
            self.finished = true;
            return Ok(None);
        }
        let mut rows = Vec::new();
        let mut last = None;
        while let Some((index, record)) = state.pending.front() {
            let row_count = if levels {
                streams::levels_of(record).len()
            } else {
                1
            };
            if last.is_some() && rows.len() + row_count > limit {
                break;
            }
            let id = record["id"].as_str().unwrap_or_default().to_owned();
            last = Some((*index, id));
            let (_, record) = state.pending.pop_front().expect("looked at above");
            if levels {
                rows.extend(streams::levels_of(&record));
            } else {
                rows.push(record);
            }
        }
        let (index, id) = last.expect("the queue was not empty");
        state.after = Some(id.clone());
        state.offset = index + 1;
        let checkpoint = json!({"page": {"after": id, "offset": index + 1}});
        Ok(Some((self.batch(rows)?, checkpoint)))
    }
}

impl BatchReader for MedusaReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            let next = match self.how {
                How::Incremental(_) => self.next_incremental().await?,
                How::Full(_) => self.next_full().await?,
            };
            match next {
                // Inventory items without location levels give no rows: go on to the next.
                Some((batch, _)) if batch.num_rows() == 0 => continue,
                other => return Ok(other),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incremental(checkpoint: Option<Value>) -> ReadRequest {
        ReadRequest {
            stream: "products".into(),
            mode: ReadMode::Incremental,
            checkpoint,
            ..ReadRequest::default()
        }
    }

    #[test]
    fn incremental_checkpoints_round_trip() {
        let at = millis("2026-05-01T10:00:00.250Z").unwrap();
        let written = checkpoint_after(true, vec![json!(format_ms(at)), json!("prod_01")]);
        assert_eq!(
            written,
            json!({"cursor": "2026-05-01T10:00:00.250Z", "key": ["prod_01"]})
        );
        assert_eq!(
            resume_after(&incremental(Some(written))).unwrap(),
            Some((at, "prod_01".to_owned()))
        );
        assert_eq!(resume_after(&incremental(None)).unwrap(), None);
    }

    #[test]
    fn checkpoints_of_another_shape_are_refused() {
        for bad in [
            json!({"cursor": "yesterday", "key": ["prod_01"]}),
            json!({"cursor": "2026-05-01T10:00:00Z", "key": [1]}),
            json!({"page": {"after": "prod_01", "offset": 3}}),
        ] {
            let e = resume_after(&incremental(Some(bad.clone()))).unwrap_err();
            assert_eq!(e.kind, lockstep_plugin_sdk::ErrorKind::CONFIG, "{bad}");
        }
        let full = ReadRequest {
            stream: "products".into(),
            checkpoint: Some(json!({"cursor": "x", "key": ["y"]})),
            ..ReadRequest::default()
        };
        assert!(full_resume(&full).is_err());
    }
}
