//! Reading the `members` stream: full reads page through the audience by `offset` and
//! `count` (up to 1000 a page, "List members info"); incremental reads ask for the members
//! changed since the checkpoint (`since_last_changed`, sorted by `last_changed` ascending),
//! then for the members archived since it (`status=archived`, which Mailchimp lists only when
//! asked), whose `archived` flag is a mirror sync's tombstone.
//!
//! `since_last_changed` is exclusive and Mailchimp's timestamps carry whole seconds. When a
//! page ended inside a second (more members may share its timestamp), the next query starts
//! one second earlier and the members already delivered at that timestamp (kept in the
//! checkpoint) are asked for again and skipped by id (by offset only when they alone fill a
//! page: a member of that second changing during the read could then shift one past the
//! read, a known limit for seconds with more than 1,000 changes). Once a second is complete,
//! the next query starts strictly after it. Each page is a fresh query from the newest checkpoint, so a member that changes
//! during the read moves behind the read's position instead of shifting a page boundary.
//! A member changed in the second the answer was made (by the answer's `Date`) is left for
//! the next read, so a checkpoint never lies inside a second that may still see changes.
//! The checkpoint holds one such position for live members and one for archived ones:
//! `{"live": {"at": <seconds>, "ids": [...]}, "archived": {...}}`.

use lockstep_http_kit::convert::{batch_from_json, select_fields, JsonField};
use lockstep_http_kit::{HttpClient, Pager, PagerState, Paging, Request};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{BatchReader, ConnectorError, ReadMode, ReadRequest, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::schema::{audience_error, flatten, Schema, CURSOR, STREAM};

/// The largest page "List members info" serves.
const MAX_PAGE: usize = 1000;

/// How far an incremental phase has come: the last `last_changed` delivered (seconds) and
/// the ids delivered at exactly that second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Position {
    pub at: Option<i64>,
    #[serde(default)]
    pub ids: Vec<String>,
    /// Every member changed at `at` or earlier has been delivered: the next query starts
    /// strictly after `at` and `ids` is empty.
    #[serde(default)]
    pub complete: bool,
}

/// The checkpoint of an incremental read.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub live: Position,
    pub archived: Position,
}

enum How {
    Full(Box<Pager>),
    Incremental {
        checkpoint: Checkpoint,
        /// Reading archived members (the live ones are done).
        archived_phase: bool,
    },
}

/// The batches of one read.
pub struct MailchimpReader {
    client: HttpClient,
    list_id: String,
    fields: Vec<JsonField>,
    page: usize,
    how: How,
    finished: bool,
}

pub(crate) fn open(
    client: HttpClient,
    list_id: String,
    schema: Schema,
    request: ReadRequest,
) -> Result<MailchimpReader> {
    if request.stream != STREAM {
        return Err(ConnectorError::schema(format!(
            "Mailchimp has no stream `{}` here; this connector serves `{STREAM}`",
            request.stream
        )));
    }
    let fields = select_fields(
        schema.json_fields(),
        request.fields.as_deref(),
        |name, _| {
            ConnectorError::schema(format!(
                "Mailchimp members have no field `{name}`; the fields are id, email_address, \
                 status, archived, tags, last_changed and the audience's merge tags"
            ))
        },
    )?;
    let page = request.batch_size.unwrap_or(MAX_PAGE).clamp(1, MAX_PAGE);
    let how = match request.mode {
        ReadMode::Cdc => {
            return Err(lockstep_plugin_sdk::resolve::cdc_unsupported(
                &request.stream,
            ));
        }
        ReadMode::Full => {
            let template = Request::get(format!("/lists/{list_id}/members")).describe(format!(
                "listing the members of Mailchimp audience {list_id}"
            ));
            let paging = Paging::Offset {
                offset_param: "offset".into(),
                limit_param: "count".into(),
                page_size: page as u64,
            };
            let state = PagerState::from_checkpoint(request.checkpoint.as_ref()).map_err(|e| {
                bad_checkpoint(
                    request.checkpoint.as_ref().unwrap_or(&Value::Null),
                    "a full",
                    &e,
                )
            })?;
            How::Full(Box::new(Pager::resume(template, paging, "/members", state)))
        }
        ReadMode::Incremental => {
            if let Some(field) = &request.cursor_field {
                if field != CURSOR {
                    return Err(ConnectorError::config(format!(
                        "Mailchimp members are read incrementally by `{CURSOR}` only, not \
                         `{field}`; set the sync's `cursor = \"{CURSOR}\"`"
                    )));
                }
            }
            let checkpoint = match &request.checkpoint {
                None | Some(Value::Null) => Checkpoint::default(),
                Some(value) => serde_json::from_value(value.clone())
                    .map_err(|e| bad_checkpoint(value, "an incremental", &e))?,
            };
            How::Incremental {
                checkpoint,
                archived_phase: false,
            }
        }
    };
    Ok(MailchimpReader {
        client,
        list_id,
        fields,
        page,
        how,
        finished: false,
    })
}

fn bad_checkpoint(checkpoint: &Value, kind: &str, error: &serde_json::Error) -> ConnectorError {
    ConnectorError::config(format!(
        "the checkpoint {checkpoint} is not one of {kind} Mailchimp read ({error}); reset the \
         sync's checkpoint"
    ))
}

fn seconds(member: &Value) -> Option<i64> {
    member["last_changed"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
}

/// Mailchimp's time format, `2015-10-21T15:41:36+00:00`.
fn format_seconds(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

impl MailchimpReader {
    fn batch(&self, members: &[Value]) -> Result<RecordBatch> {
        let records: Vec<Value> = members.iter().map(flatten).collect();
        batch_from_json(&self.fields, &records).map_err(|e| {
            let email = records
                .get(e.row)
                .and_then(|r| r["email_address"].as_str())
                .unwrap_or("?");
            ConnectorError::schema(format!(
                "Mailchimp member {email}, field `{}`: {}",
                e.field, e.reason
            ))
        })
    }

    /// One page of an incremental phase from `position`; returns the members not yet
    /// delivered and whether the page was the last.
    async fn changed_since(
        &self,
        position: &Position,
        archived: bool,
    ) -> Result<(Vec<Value>, bool)> {
        // The members already delivered at the position's second come first again; asking
        // for that many more keeps the page's new members at the requested size. Only when
        // they alone fill a page are they skipped by offset.
        let seen = if position.complete {
            0
        } else {
            position.ids.len()
        };
        let (count, offset) = if self.page + seen <= MAX_PAGE {
            (self.page + seen, 0)
        } else if seen < MAX_PAGE {
            (MAX_PAGE, 0)
        } else {
            (MAX_PAGE, seen)
        };
        let mut request = Request::get(format!("/lists/{}/members", self.list_id))
            .query("count", count)
            .query("sort_field", "last_changed")
            .query("sort_dir", "ASC")
            .describe(format!(
                "listing the {} members of Mailchimp audience {} changed since the checkpoint",
                if archived { "archived" } else { "live" },
                self.list_id
            ));
        if archived {
            request = request.query("status", "archived");
        }
        if let (Some(at), true) = (position.at, position.complete) {
            request = request.query("since_last_changed", format_seconds(at));
        } else if let Some(at) = position.at {
            request = request
                .query("since_last_changed", format_seconds(at - 1))
                .query("offset", offset);
        }
        let response = self
            .client
            .send(&request)
            .await
            .map_err(|e| audience_error(&self.list_id, e))?;
        // Mailchimp's clock, from the answer's `Date`; this machine's when it has none.
        let now = response
            .headers
            .get("date")
            .and_then(|d| d.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.timestamp())
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        let answer: Value = response.json()?;
        let Some(members) = answer["members"].as_array() else {
            return Err(ConnectorError::internal(format!(
                "Mailchimp's members answer has no `members` array: {}",
                excerpt(&answer)
            )));
        };
        let mut last = members.len() < count;
        let mut fresh = Vec::new();
        for member in members {
            let Some(at) = seconds(member) else {
                return Err(ConnectorError::internal(format!(
                    "Mailchimp answered a member without a `last_changed` time: {}",
                    excerpt(member)
                )));
            };
            // A member changed in the current second is held back for the next read: a
            // later change in the same second would carry the same timestamp, and a
            // checkpoint inside that second would hide it.
            if at >= now {
                last = true;
                break;
            }
            let id = member["id"].as_str().unwrap_or_default();
            let delivered = position
                .at
                .is_some_and(|p| at < p || (at == p && position.ids.iter().any(|seen| seen == id)));
            if !delivered {
                fresh.push(member.clone());
            }
        }
        fresh.sort_by_key(|m| seconds(m).unwrap_or_default());
        Ok((fresh, last))
    }
}

fn excerpt(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(300) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

/// Moves `position` past `members` (sorted by time).
fn advance(position: &mut Position, members: &[Value]) {
    for member in members {
        let at = seconds(member).unwrap_or_default();
        let id = member["id"].as_str().unwrap_or_default().to_owned();
        if position.at == Some(at) && !position.complete {
            position.ids.push(id);
        } else {
            position.at = Some(at);
            position.ids = vec![id];
            position.complete = false;
        }
    }
}

impl BatchReader for MailchimpReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        loop {
            if self.finished {
                return Ok(None);
            }
            match &mut self.how {
                How::Full(pager) => {
                    let Some((records, checkpoint)) = pager
                        .next_records(&self.client)
                        .await
                        .map_err(|e| audience_error(&self.list_id, e))?
                    else {
                        self.finished = true;
                        return Ok(None);
                    };
                    return Ok(Some((self.batch(&records)?, checkpoint)));
                }
                How::Incremental {
                    checkpoint,
                    archived_phase,
                } => {
                    let archived = *archived_phase;
                    let position = if archived {
                        checkpoint.archived.clone()
                    } else {
                        checkpoint.live.clone()
                    };
                    let (members, last) = self.changed_since(&position, archived).await?;
                    let How::Incremental {
                        checkpoint,
                        archived_phase,
                    } = &mut self.how
                    else {
                        unreachable!("matched above")
                    };
                    if last {
                        if archived {
                            self.finished = true;
                        } else {
                            *archived_phase = true;
                        }
                    }
                    let target = if archived {
                        &mut checkpoint.archived
                    } else {
                        &mut checkpoint.live
                    };
                    advance(target, &members);
                    if last {
                        target.complete = true;
                        target.ids.clear();
                    }
                    if members.is_empty() {
                        if last {
                            continue;
                        }
                        // A full page of members delivered before: the offset moves past
                        // them on the next query only if the position does, which it did
                        // not; stop rather than loop.
                        return Err(ConnectorError::internal(format!(
                            "Mailchimp returned a full page of members already delivered for \
                             audience {}; reset the sync's checkpoint",
                            self.list_id
                        )));
                    }
                    let value = serde_json::to_value(&*checkpoint)
                        .map_err(|e| ConnectorError::internal(e.to_string()))?;
                    return Ok(Some((self.batch(&members)?, value)));
                }
            }
        }
    }
}
