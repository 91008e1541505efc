//! Reading a list's member roster, in full, page by page.
//!
//! Mailman keeps no timestamps on members and has no modified-since filter, so every read is
//! a full scan; the engine's record ledger tells added, updated and unchanged members apart.
//! The roster (`GET /lists/{list_id}/roster/member?count=N&page=P`) is ordered by email and
//! paged by position, so a subscription or an unsubscription during a scan shifts the later
//! pages: a member can then come twice (at a page boundary) or not at all. Hence:
//!
//! - members are deduplicated by member id across the whole read;
//! - a pass over the pages is trusted only when every page reported the same `total_size`
//!   and the pass saw exactly that many distinct members; otherwise the roster is scanned
//!   again, delivering only members not delivered yet, up to [`MAX_PASSES`] passes.
//!
//! A checkpoint names the pass, the next page and what the pass has counted so far, so a
//! read resumes where it stopped; the checkpoint of a finished scan reads nothing more.

use std::collections::HashSet;

use lockstep_http_kit::convert::{batch_from_json, select_fields, JsonField};
use lockstep_http_kit::{HttpClient, Request};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{BatchReader, ConnectorError, ReadMode, ReadRequest, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::schema;

/// Scans of one read before the read gives up on a roster that keeps changing.
pub const MAX_PASSES: u32 = 5;

/// Where a read stands; serialized as its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Position {
    /// The scan, from 1.
    pass: u32,
    /// The next page to read, from 1.
    page: u64,
    /// The `total_size` the pass's first page reported.
    total: Option<u64>,
    /// Distinct members this pass has seen.
    seen: u64,
    /// Whether every page of the pass reported the same `total_size`.
    steady: bool,
    /// The scan is complete: nothing more to read.
    finished: bool,
}

impl Position {
    fn start(pass: u32) -> Self {
        Self {
            pass,
            page: 1,
            total: None,
            seen: 0,
            steady: true,
            finished: false,
        }
    }
}

/// The batches of one read of one list's members.
pub struct MailmanReader {
    client: HttpClient,
    list_id: String,
    fields: Vec<JsonField>,
    page_size: usize,
    position: Position,
    /// Member ids seen by the current pass (since this read started).
    pass_ids: HashSet<String>,
    /// Member ids delivered by this read.
    delivered: HashSet<String>,
}

#[derive(Deserialize)]
struct RosterPage {
    total_size: u64,
    #[serde(default)]
    entries: Vec<Value>,
}

pub(crate) fn open(
    client: HttpClient,
    request: ReadRequest,
    page_size: usize,
) -> Result<MailmanReader> {
    if request.mode == ReadMode::Incremental {
        return Err(ConnectorError::config(format!(
            "Mailman members carry no timestamps, so list `{}` cannot be read incrementally; \
             use mode = \"full\", or mode = \"mirror\" without a cursor (every run reads the \
             whole roster and the record ledger counts what changed)",
            request.stream
        )));
    }
    let fields = select_fields(
        schema::json_fields(),
        request.fields.as_deref(),
        |name, all| {
            ConnectorError::schema(format!(
                "Mailman members have no field `{name}`; the fields are {}",
                all.iter()
                    .map(|f| format!("`{}`", f.field.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        },
    )?;
    let position = match &request.checkpoint {
        None | Some(Value::Null) => Position::start(1),
        Some(checkpoint) => serde_json::from_value(checkpoint.clone()).map_err(|e| {
            ConnectorError::config(format!(
                "the checkpoint {checkpoint} is not one of a Mailman roster read ({e}); reset \
                 the sync's checkpoint"
            ))
        })?,
    };
    let page_size = request.batch_size.unwrap_or(page_size).clamp(1, page_size);
    Ok(MailmanReader {
        client,
        list_id: request.stream,
        fields,
        page_size,
        position,
        pass_ids: HashSet::new(),
        delivered: HashSet::new(),
    })
}

impl MailmanReader {
    async fn page(&self, page: u64) -> Result<RosterPage> {
        let request = Request::get(format!(
            "/lists/{}/roster/member",
            crate::path::segment(&self.list_id)
        ))
        .query("count", self.page_size)
        .query("page", page)
        .describe(format!(
            "reading the members of Mailman list `{}`",
            self.list_id
        ));
        Ok(self.client.send_json(&request).await?)
    }

    fn batch(&self, records: &[Value]) -> Result<RecordBatch> {
        batch_from_json(&self.fields, records).map_err(|e| {
            let email = records
                .get(e.row)
                .and_then(|r| r["email"].as_str())
                .unwrap_or("?");
            ConnectorError::schema(format!(
                "Mailman list `{}`, member {email}, field `{}`: {}",
                self.list_id, e.field, e.reason
            ))
        })
    }
}

impl BatchReader for MailmanReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        loop {
            if self.position.finished {
                return Ok(None);
            }
            let answer = self.page(self.position.page).await?;
            let position = &mut self.position;
            match position.total {
                None => position.total = Some(answer.total_size),
                Some(total) if total != answer.total_size => position.steady = false,
                Some(_) => {}
            }
            let mut fresh = Vec::new();
            for entry in answer.entries.iter() {
                let Some(id) = entry["member_id"].as_str() else {
                    return Err(ConnectorError::internal(format!(
                        "Mailman answered a member of list `{}` without a `member_id`: {entry}",
                        self.list_id
                    )));
                };
                if self.pass_ids.insert(id.to_owned()) {
                    position.seen += 1;
                }
                if self.delivered.insert(id.to_owned()) {
                    fresh.push(entry.clone());
                }
            }
            let read_to = position.page * self.page_size as u64;
            position.page += 1;
            if answer.entries.len() < self.page_size || read_to >= answer.total_size {
                // The pass is over: trust it, or scan again.
                if position.steady && position.seen == answer.total_size {
                    position.finished = true;
                } else if position.pass >= MAX_PASSES {
                    return Err(ConnectorError::transient(format!(
                        "the roster of Mailman list `{}` kept changing during {MAX_PASSES} scans \
                         (the last saw {} distinct members, the server counted {}); run the sync \
                         again when the list is quieter",
                        self.list_id, position.seen, answer.total_size
                    )));
                } else {
                    *position = Position::start(position.pass + 1);
                    self.pass_ids.clear();
                }
            }
            if fresh.is_empty() {
                continue;
            }
            let checkpoint = json!(self.position);
            return Ok(Some((self.batch(&fresh)?, checkpoint)));
        }
    }
}
