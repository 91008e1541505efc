//! The `members` stream and its fields: the member's own (`id`, `email_address`, `status`,
//! `archived`, `tags`, `last_changed`) and one per merge field of the audience, discovered
//! from `GET /lists/{list_id}/merge-fields`.
//!
//! Invariant: a member is turned into a flat record ([`flatten`]) before conversion, so the
//! field list and the record agree on every name; a merge value that is not a scalar (an
//! address) arrives as its JSON text, never dropped.

use lockstep_http_kit::convert::{escape_pointer, JsonField};
use lockstep_http_kit::{HttpClient, HttpError, Request};
use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo, Result, StreamInfo};
use serde::Deserialize;
use serde_json::{json, Value};

/// The one stream this connector serves.
pub const STREAM: &str = "members";
/// The cursor of incremental reads.
pub const CURSOR: &str = "last_changed";
/// The statuses a member can be given ("List members": `status`; `archived` is read-only).
pub const WRITABLE_STATUSES: [&str; 5] = [
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
];

/// A merge field as "List merge fields" (GET /lists/{list_id}/merge-fields) describes it.
#[derive(Debug, Clone, Deserialize)]
pub struct MergeField {
    pub tag: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub required: bool,
}

impl MergeField {
    /// The logical type of the field's values: numbers for `number`, dates for `date`
    /// (Mailchimp writes them `YYYY-MM-DD`), text for everything else.
    pub fn data_type(&self) -> DataType {
        match self.kind.as_str() {
            "number" => DataType::Float64,
            "date" => DataType::Date,
            _ => DataType::Text,
        }
    }
}

/// The audience's schema.
#[derive(Debug, Clone)]
pub struct Schema {
    pub merge_fields: Vec<MergeField>,
}

fn field(name: &str, data_type: DataType, nullable: bool, native: &str) -> FieldInfo {
    FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: Some(native.into()),
    }
}

impl Schema {
    /// Every field, each at its place in a flattened record.
    pub fn json_fields(&self) -> Vec<JsonField> {
        let mut fields = vec![
            JsonField::at(
                field("id", DataType::Text, false, "subscriber hash (read-only)"),
                "/id",
            ),
            JsonField::at(
                field("email_address", DataType::Text, false, "email (unique)"),
                "/email_address",
            ),
            JsonField::at(field("status", DataType::Text, false, "status"), "/status"),
            JsonField::at(
                field(
                    "archived",
                    DataType::Boolean,
                    false,
                    "archived flag (read-only)",
                ),
                "/archived",
            ),
            JsonField::at(
                field(
                    "tags",
                    DataType::Text,
                    true,
                    "tag names, comma-separated (read-only)",
                ),
                "/tags",
            ),
            JsonField::at(
                field(
                    CURSOR,
                    DataType::TimestampTz,
                    false,
                    "date-time (read-only)",
                ),
                "/last_changed",
            ),
        ];
        for merge in &self.merge_fields {
            fields.push(JsonField::at(
                field(
                    &merge.tag,
                    merge.data_type(),
                    true,
                    &format!("merge field, {}", merge.kind),
                ),
                format!("/merge_fields/{}", escape_pointer(&merge.tag)),
            ));
        }
        fields
    }

    pub fn stream_info(&self) -> StreamInfo {
        StreamInfo {
            name: STREAM.into(),
            fields: self.json_fields().into_iter().map(|f| f.field).collect(),
            primary_key: vec!["id".into()],
            cursor_candidates: vec![CURSOR.into()],
        }
    }

    pub fn merge_field(&self, tag: &str) -> Option<&MergeField> {
        self.merge_fields.iter().find(|m| m.tag == tag)
    }
}

/// A member as the stream's record: tags as comma-separated names, `archived` from the
/// status, merge values that are objects as JSON text.
pub fn flatten(member: &Value) -> Value {
    let tags = member["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t["name"].as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let merge: serde_json::Map<String, Value> = member["merge_fields"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::Object(_) | Value::Array(_) => Value::String(v.to_string()),
                        other => other.clone(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": member["id"],
        "email_address": member["email_address"],
        "status": member["status"],
        "archived": member["status"] == "archived",
        "tags": tags,
        "last_changed": member["last_changed"],
        "merge_fields": merge,
    })
}

#[derive(Deserialize)]
struct MergeFieldsPage {
    merge_fields: Vec<MergeField>,
    total_items: usize,
}

/// Turns a 404 on an audience's path into an error naming `list_id`.
pub fn audience_error(list_id: &str, error: HttpError) -> ConnectorError {
    match error {
        HttpError::NotFound { .. } => ConnectorError::config(format!(
            "Mailchimp has no audience `{list_id}`; check the connection's `list_id` (Audience > \
             Settings > Audience name and defaults) and `base_url`"
        )),
        other => other.into(),
    }
}

/// The audience's merge fields, all pages of them.
pub async fn load(client: &HttpClient, list_id: &str) -> Result<Schema> {
    const PAGE: usize = 1000;
    let mut merge_fields = Vec::new();
    loop {
        let page: MergeFieldsPage = client
            .send_json(
                &Request::get(format!("/lists/{list_id}/merge-fields"))
                    .query("count", PAGE)
                    .query("offset", merge_fields.len())
                    .describe(format!(
                        "reading the merge fields of Mailchimp audience {list_id}"
                    )),
            )
            .await
            .map_err(|e| audience_error(list_id, e))?;
        let got = page.merge_fields.len();
        merge_fields.extend(page.merge_fields);
        if got < PAGE || merge_fields.len() >= page.total_items {
            break;
        }
    }
    Ok(Schema { merge_fields })
}
