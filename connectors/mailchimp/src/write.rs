//! Writing members: batch subscribe or update (`POST /lists/{list_id}`, at most 500 members
//! a call, `update_existing: true`), deletes by archiving (default) or permanent deletion.
//!
//! Consent: when the writer opens it reads every member's status once. A member who
//! unsubscribed or was cleaned keeps that status unless the sync maps `status` itself and
//! the config sets `allow_resubscribe = true`; a member the sync does not give a status keeps
//! theirs; a new member gets the sync's status or `default_status`. Mailchimp itself applies
//! whatever status a batch sends, so this rule is the only thing between a sync and a
//! resubscription nobody asked for.
//!
//! Per "Batch subscribe or unsubscribe" (mailchimp.com/developer/marketing/api/lists/
//! batch-subscribe-or-unsubscribe), members Mailchimp refuses come back in the answer's
//! `errors` with their email address: each becomes a reject of exactly that row. A call
//! refused as a whole (400) rejects its rows with Mailchimp's message.

use std::collections::HashMap;

use futures_util::StreamExt;
use lockstep_http_kit::convert::{json_from_batch, JsonField, NullStyle, ValueStyle};
use lockstep_http_kit::{HttpClient, HttpError, Request};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{
    ConnectorError, FieldInfo, OpenStreamRequest, RejectedRow, Result, StreamWriter, WriteOutcome,
};
use md5::{Digest, Md5};
use serde_json::{json, Map, Value};

use crate::config::{DeleteMode, MailchimpConfig};
use crate::schema::{audience_error, Schema, STREAM, WRITABLE_STATUSES};

/// "Up to 500 members may be added or updated with each API call."
const BATCH_MEMBERS: usize = 500;
/// Members per page when reading the statuses.
const STATUS_PAGE: usize = 1000;

/// The subscriber hash: MD5 of the lower-cased email address, in hex ("List members").
pub fn subscriber_hash(email: &str) -> String {
    format!("{:x}", Md5::digest(email.trim().to_lowercase().as_bytes()))
}

/// Writes the members of one audience.
pub struct MailchimpWriter {
    client: HttpClient,
    list_id: String,
    config: MailchimpConfig,
    fields: Vec<JsonField>,
    /// Whether the sync maps `status`.
    maps_status: bool,
    /// Live members' statuses by subscriber hash (archived members are absent).
    statuses: HashMap<String, String>,
}

pub(crate) async fn open(
    client: HttpClient,
    config: MailchimpConfig,
    schema: Schema,
    request: OpenStreamRequest,
) -> Result<MailchimpWriter> {
    if request.stream != STREAM {
        return Err(ConnectorError::schema(format!(
            "Mailchimp has no stream `{}` here; this connector writes `{STREAM}`",
            request.stream
        )));
    }
    if request.key != ["email_address"] {
        return Err(ConnectorError::config(format!(
            "Mailchimp finds members by `email_address`, not by {:?}; set the sync's key to \
             [\"email_address\"]",
            request.key
        )));
    }
    let mut fields = Vec::new();
    let mut maps_status = false;
    for field in &request.fields {
        let json_field = match field.name.as_str() {
            "email_address" => JsonField::at(text(field), "/email_address"),
            "status" => {
                maps_status = true;
                JsonField::at(text(field), "/status")
            }
            "id" | "archived" | "tags" | "last_changed" => {
                return Err(ConnectorError::schema(format!(
                    "`{}` is read-only in Mailchimp (batch subscribe cannot set it); leave it out \
                     of the sync's fields",
                    field.name
                )))
            }
            tag => {
                if schema.merge_field(tag).is_none() {
                    return Err(ConnectorError::schema(format!(
                        "audience {} has no merge field `{tag}`; create it in Mailchimp \
                         (Audience > Settings > Audience fields and *|MERGE|* tags) or leave it \
                         out of the sync's fields (merge tags are case-sensitive: {})",
                        config.list_id,
                        schema
                            .merge_fields
                            .iter()
                            .map(|m| m.tag.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                JsonField::at(
                    FieldInfo {
                        name: tag.to_owned(),
                        data_type: field.data_type,
                        nullable: true,
                        native_type: None,
                    },
                    format!(
                        "/merge_fields/{}",
                        lockstep_http_kit::convert::escape_pointer(tag)
                    ),
                )
            }
        };
        fields.push(json_field);
    }
    let mut writer = MailchimpWriter {
        list_id: config.list_id.clone(),
        client,
        config,
        fields,
        maps_status,
        statuses: HashMap::new(),
    };
    writer.load_statuses().await?;
    Ok(writer)
}

fn text(field: &FieldInfo) -> FieldInfo {
    FieldInfo {
        name: field.name.clone(),
        data_type: field.data_type,
        nullable: true,
        native_type: None,
    }
}

impl MailchimpWriter {
    /// Reads every live member's status, 1000 a page, only the two fields needed.
    async fn load_statuses(&mut self) -> Result<()> {
        let mut offset = 0;
        loop {
            let answer: Value = self
                .client
                .send_json(
                    &Request::get(format!("/lists/{}/members", self.list_id))
                        .query("count", STATUS_PAGE)
                        .query("offset", offset)
                        .query("fields", "members.email_address,members.status,total_items")
                        .describe(format!(
                            "reading the statuses of Mailchimp audience {}",
                            self.list_id
                        )),
                )
                .await
                .map_err(|e| audience_error(&self.list_id, e))?;
            let members = answer["members"].as_array().cloned().unwrap_or_default();
            for member in &members {
                if let (Some(email), Some(status)) =
                    (member["email_address"].as_str(), member["status"].as_str())
                {
                    self.statuses
                        .insert(subscriber_hash(email), status.to_owned());
                }
            }
            offset += members.len();
            if members.len() < STATUS_PAGE {
                return Ok(());
            }
        }
    }

    /// The status to send for a member, by the consent rules of this module.
    fn status_for(&self, hash: &str, wanted: Option<&str>) -> String {
        match self.statuses.get(hash).map(String::as_str) {
            None => wanted
                .unwrap_or(self.config.default_status.as_str())
                .to_owned(),
            Some(current @ ("unsubscribed" | "cleaned")) => match wanted {
                Some(w) if w != current && self.maps_status && self.config.allow_resubscribe => {
                    w.to_owned()
                }
                _ => current.to_owned(),
            },
            Some(current) => wanted.unwrap_or(current).to_owned(),
        }
    }

    /// Sends one call of at most 500 members and accounts for its answer.
    async fn send(
        &mut self,
        chunk: Vec<(usize, String, Value)>,
        outcome: &mut WriteOutcome,
    ) -> Result<()> {
        let body = json!({
            "members": chunk.iter().map(|(_, _, m)| m.clone()).collect::<Vec<_>>(),
            "update_existing": true,
        });
        let request = Request::post(format!("/lists/{}", self.list_id))
            .json(body)
            // An upsert by email address: sending it twice leaves the same state.
            .idempotent(true)
            .describe(format!(
                "subscribing or updating {} members of Mailchimp audience {}",
                chunk.len(),
                self.list_id
            ));
        let answer: Value = match self.client.send_json(&request).await {
            Ok(answer) => answer,
            Err(e @ HttpError::Refused { .. }) => {
                outcome.rejected.extend(
                    e.reject_rows(chunk.iter().map(|(row, _, _)| *row))
                        .unwrap_or_default(),
                );
                return Ok(());
            }
            Err(e) => return Err(audience_error(&self.list_id, e)),
        };
        for (key, count) in [
            ("new_members", &mut outcome.inserted),
            ("updated_members", &mut outcome.updated),
        ] {
            for member in answer[key]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                *count.get_or_insert(0) += 1;
                if let (Some(email), Some(status)) =
                    (member["email_address"].as_str(), member["status"].as_str())
                {
                    self.statuses
                        .insert(subscriber_hash(email), status.to_owned());
                }
            }
        }
        let rows: HashMap<&str, usize> = chunk
            .iter()
            .map(|(row, hash, _)| (hash.as_str(), *row))
            .collect();
        for error in answer["errors"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let email = error["email_address"].as_str().unwrap_or_default();
            let message = error["error"].as_str().unwrap_or("refused");
            match rows.get(subscriber_hash(email).as_str()) {
                Some(&row) => outcome.rejected.push(RejectedRow {
                    row,
                    field: error["field"]
                        .as_str()
                        .filter(|f| !f.is_empty())
                        .map(str::to_owned),
                    reason: format!("Mailchimp refused the member: {message}"),
                }),
                None => {
                    return Err(ConnectorError::internal(format!(
                        "Mailchimp refused an address this call did not send ({email}): {message}"
                    )))
                }
            }
        }
        Ok(())
    }
}

impl StreamWriter for MailchimpWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        // Per "Add or update list member": a merge value is cleared with "".
        let style = ValueStyle::text(NullStyle::EmptyString);
        let records = json_from_batch(&self.fields, &batch, style)?;
        let mut outcome = WriteOutcome::default();
        let mut members = Vec::new();
        let mut in_batch: HashMap<String, usize> = HashMap::new();
        for (row, record) in records.into_iter().enumerate() {
            let email = record["email_address"]
                .as_str()
                .map(str::trim)
                .unwrap_or_default()
                .to_owned();
            if email.is_empty() {
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some("email_address".into()),
                    reason: "no email address, which Mailchimp needs to find the member".into(),
                });
                continue;
            }
            let hash = subscriber_hash(&email);
            if let Some(first) = in_batch.insert(hash.clone(), row) {
                outcome.rejected.push(RejectedRow {
                    row,
                    field: Some("email_address".into()),
                    reason: format!(
                        "{email} is the same Mailchimp member as row {first} of this batch \
                         (addresses differ only in case); Mailchimp refuses duplicates"
                    ),
                });
                continue;
            }
            let wanted = record["status"].as_str().filter(|s| !s.is_empty());
            if let Some(status) = wanted {
                if !WRITABLE_STATUSES.contains(&status) {
                    outcome.rejected.push(RejectedRow {
                        row,
                        field: Some("status".into()),
                        reason: format!(
                            "{status:?} is not a status Mailchimp members can be given; use one \
                             of {}",
                            WRITABLE_STATUSES.join(", ")
                        ),
                    });
                    continue;
                }
            }
            let status = self.status_for(&hash, wanted);
            let mut member = Map::new();
            member.insert("email_address".into(), Value::String(email));
            member.insert("status".into(), Value::String(status));
            if let Some(merge) = record.get("merge_fields").filter(|m| m.is_object()) {
                member.insert("merge_fields".into(), merge.clone());
            }
            members.push((row, hash, Value::Object(member)));
        }
        let mut rest = members;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(BATCH_MEMBERS));
            let chunk = std::mem::replace(&mut rest, tail);
            self.send(chunk, &mut outcome).await?;
        }
        outcome.rejected.sort_by_key(|r| r.row);
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let records = json_from_batch(&self.fields, &keys, ValueStyle::KEYS)?;
        let hashes: Vec<String> = records
            .iter()
            .filter_map(|r| r["email_address"].as_str().filter(|e| !e.is_empty()))
            .map(subscriber_hash)
            .collect();
        // One request per member, as many in flight as the connection allows (the client
        // holds them to `concurrency`, at most Mailchimp's 10).
        let client = &self.client;
        let list_id = &self.list_id;
        let mode = self.config.delete;
        let results: Vec<std::result::Result<(), HttpError>> =
            futures_util::stream::iter(hashes.iter().map(|hash| async move {
                let path = format!("/lists/{list_id}/members/{hash}");
                let request = match mode {
                    // Per "Archive list member".
                    DeleteMode::Archive => Request::new(lockstep_http_kit::Method::DELETE, path)
                        .describe(format!(
                            "archiving a member of Mailchimp audience {list_id}"
                        )),
                    // Per "Delete list member": permanent, the address cannot be imported
                    // again.
                    DeleteMode::Permanent => {
                        Request::post(format!("{path}/actions/delete-permanent"))
                            .idempotent(true)
                            .describe(format!(
                                "permanently deleting a member of Mailchimp audience {list_id}"
                            ))
                    }
                };
                match client.send(&request).await {
                    Ok(_) => Ok(()),
                    // Already archived or deleted (by a retry whose first answer was lost,
                    // or in Mailchimp): the member is gone, as wanted.
                    Err(HttpError::NotFound { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }))
            .buffer_unordered(client.config().concurrency.max(1))
            .collect()
            .await;
        let mut deleted = 0;
        for result in results {
            result?;
            deleted += 1;
        }
        for hash in &hashes {
            self.statuses.remove(hash);
        }
        Ok(WriteOutcome {
            deleted: Some(deleted),
            ..WriteOutcome::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        // Every call is durable once Mailchimp has answered it.
        Ok(())
    }
}
