//! Writing a list's members: subscribe, update, unsubscribe.
//!
//! - A record whose address is not subscribed is subscribed (`POST /members` with the
//!   config's `pre_verified`, `pre_confirmed`, `pre_approved` and `send_welcome_message`);
//!   its display name is then set on the address, since Mailman uses the given name only for
//!   an address it creates.
//! - "Member already subscribed" (409) makes the record an update: the member is looked up
//!   (`GET /members/find`), its delivery mode and moderation action patched
//!   (`PATCH /members/{id}`) and its address's display name patched
//!   (`PATCH /addresses/{email}`).
//! - Deletes unsubscribe in bulk: `DELETE /lists/{list}/roster/member` with the emails.
//! - Any other refusal of one record (a banned address, an invalid email or value, a
//!   subscription request already pending) becomes a reject of that record with Mailman's
//!   message; authentication failures and outages fail the batch.
//!
//! Invariant: records are found by `email` only, and `member_id` and `role`, which Mailman
//! sets itself, are never written.

use lockstep_http_kit::convert::{json_from_batch, JsonField, NullStyle, ValueStyle};
use lockstep_http_kit::{HttpClient, HttpError, Method, Request, StatusCode};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{
    ConnectorError, OpenStreamRequest, RejectedRow, Result, StreamWriter, WriteOutcome,
};
use serde_json::{json, Map, Value};

use crate::path::segment;
use crate::schema::{self, KEY};

/// Emails per bulk unsubscribe request.
const UNSUBSCRIBE_BATCH: usize = 500;

/// Writes the members of one list.
pub struct MailmanWriter {
    client: HttpClient,
    list_id: String,
    fields: Vec<JsonField>,
    flags: [(&'static str, bool); 4],
}

pub(crate) fn open(
    client: HttpClient,
    request: OpenStreamRequest,
    flags: [(&'static str, bool); 4],
) -> Result<MailmanWriter> {
    let list_id = request.stream.clone();
    if request.key.as_slice() != [KEY] {
        return Err(ConnectorError::config(format!(
            "Mailman finds the members of list `{list_id}` by `{KEY}`, not by {:?}; set the \
             sync's key = [\"{KEY}\"] and map the address to `{KEY}`",
            request.key
        )));
    }
    let mut fields = Vec::new();
    for field in &request.fields {
        let Some(known) = schema::FIELDS.iter().find(|f| f.name == field.name) else {
            return Err(ConnectorError::schema(format!(
                "Mailman members have no field `{}`; a sync may write {}",
                field.name,
                writable_names()
            )));
        };
        if !known.writable {
            return Err(ConnectorError::schema(format!(
                "`{}` is set by Mailman itself and cannot be written; a sync may write {}",
                field.name,
                writable_names()
            )));
        }
        let mut json_field = JsonField::top_level(field.clone());
        json_field.field.data_type = field.data_type;
        fields.push(json_field);
    }
    Ok(MailmanWriter {
        client,
        list_id,
        fields,
        flags,
    })
}

fn writable_names() -> String {
    schema::FIELDS
        .iter()
        .filter(|f| f.writable)
        .map(|f| format!("`{}`", f.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What became of one record.
enum Done {
    Subscribed,
    Updated,
}

impl MailmanWriter {
    /// The member id of `email` in this list's member roster. Found through
    /// `/members/find` (query parameters, not the path, carry the address), keeping only
    /// the exact address since `*` in a subscriber is a wildcard there.
    async fn member_id(&self, email: &str) -> Result<String, HttpError> {
        let found: Value = self
            .client
            .send_json(
                &Request::get("/members/find")
                    .query("list_id", &self.list_id)
                    .query("subscriber", email)
                    .query("role", "member")
                    .describe(format!("finding member {email} of `{}`", self.list_id)),
            )
            .await?;
        let wanted = email.to_lowercase();
        found["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["email"].as_str().map(str::to_lowercase) == Some(wanted.clone()))
            .and_then(|m| m["member_id"].as_str().map(str::to_owned))
            .ok_or_else(|| HttpError::Decode {
                request: format!("finding member {email} of `{}`", self.list_id),
                detail: "Mailman said the address is subscribed, but its member roster does \
                         not hold it"
                    .into(),
            })
    }

    /// Subscribes or updates one member; `Err(HttpError::Refused)` is that record's refusal.
    async fn write_one(&self, email: &str, record: &Map<String, Value>) -> Result<Done, HttpError> {
        let mut body = json!({"list_id": self.list_id, "subscriber": email});
        for (flag, value) in self.flags {
            body[flag] = json!(value);
        }
        for name in ["display_name", "delivery_mode"] {
            if let Some(value) = record.get(name).filter(|v| !v.is_null()) {
                body[name] = value.clone();
            }
        }
        // Not idempotent: a repeated subscription would answer 409 and become an update,
        // which is correct, but the first answer's fate would be unknown; the kit retries
        // it only when it surely did not reach the server.
        let subscribe = Request::post("/members").json(body).describe(format!(
            "subscribing {email} to Mailman list `{}`",
            self.list_id
        ));
        let done = match self.client.send(&subscribe).await {
            Ok(_) => Done::Subscribed,
            Err(HttpError::Refused {
                status, message, ..
            }) if status == StatusCode::CONFLICT && message.contains("already subscribed") => {
                Done::Updated
            }
            Err(e) => return Err(e),
        };
        let mut member_patch = Map::new();
        if matches!(done, Done::Updated) {
            if let Some(value) = record.get("delivery_mode").filter(|v| !v.is_null()) {
                member_patch.insert("delivery_mode".into(), value.clone());
            }
        }
        if let Some(value) = record.get("moderation_action") {
            // An empty moderation action is the list's default.
            member_patch.insert(
                "moderation_action".into(),
                if value.is_null() {
                    json!("")
                } else {
                    value.clone()
                },
            );
        }
        if !member_patch.is_empty() {
            let id = self.member_id(email).await?;
            let id = id.as_str();
            self.client
                .send(
                    &Request::new(Method::PATCH, format!("/members/{}", segment(id)))
                        .json(Value::Object(member_patch))
                        .idempotent(true)
                        .describe(format!("updating member {email} of `{}`", self.list_id)),
                )
                .await?;
        }
        if let Some(name) = record.get("display_name") {
            let name = name.as_str().unwrap_or_default();
            self.client
                .send(
                    &Request::new(Method::PATCH, format!("/addresses/{}", segment(email)))
                        .json(json!({"display_name": name}))
                        .idempotent(true)
                        .describe(format!("setting the display name of {email}")),
                )
                .await?;
        }
        Ok(done)
    }
}

impl StreamWriter for MailmanWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let records = json_from_batch(&self.fields, &batch, ValueStyle::text(NullStyle::Null))?;
        let mut outcome = WriteOutcome::default();
        for (row, record) in records.into_iter().enumerate() {
            let record = match record {
                Value::Object(map) => map,
                _ => Map::new(),
            };
            let Some(email) = record
                .get(KEY)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|e| !e.is_empty())
            else {
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some(KEY.into()),
                    reason: format!("no `{KEY}`: Mailman needs the address to subscribe"),
                });
                continue;
            };
            if email.contains('/') && record.contains_key("display_name") {
                // Mailman's server decodes `%2F` before routing, so no path can name it.
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some(KEY.into()),
                    reason: format!(
                        "{email} holds a `/`, and Mailman's REST API sets display names by a \
                         path that holds the address, which a `/` breaks; subscribe it without \
                         `display_name` or change it in Mailman's web interface"
                    ),
                });
                continue;
            }
            match self.write_one(email, &record).await {
                Ok(Done::Subscribed) => *outcome.inserted.get_or_insert(0) += 1,
                Ok(Done::Updated) => *outcome.updated.get_or_insert(0) += 1,
                Err(HttpError::Refused {
                    status, message, ..
                }) => outcome.rejected.push(RejectedRow {
                    row,
                    field: None,
                    reason: format!("Mailman refused {email} ({status}): {message}"),
                }),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let records = json_from_batch(&self.fields, &keys, ValueStyle::KEYS)?;
        let emails: Vec<String> = records
            .iter()
            .filter_map(|r| r[KEY].as_str().map(str::to_owned))
            .collect();
        let mut deleted = 0;
        for chunk in emails.chunks(UNSUBSCRIBE_BATCH) {
            let answer: Value = self
                .client
                .send_json(
                    &Request::new(
                        Method::DELETE,
                        format!("/lists/{}/roster/member", segment(&self.list_id)),
                    )
                    .json(json!({"emails": chunk}))
                    .describe(format!(
                        "unsubscribing {} members from Mailman list `{}`",
                        chunk.len(),
                        self.list_id
                    )),
                )
                .await?;
            // The answer maps each email to whether a member was unsubscribed; false means
            // it was not a member (already gone).
            deleted += answer
                .as_object()
                .map(|o| o.values().filter(|v| v.as_bool() == Some(true)).count())
                .unwrap_or(0) as u64;
        }
        Ok(WriteOutcome {
            deleted: Some(deleted),
            ..WriteOutcome::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        // Every request is durable once Mailman has answered it.
        Ok(())
    }
}
