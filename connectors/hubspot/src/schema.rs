//! Streams and their fields, from HubSpot's Properties API.

use lockstep_http_kit::convert::{escape_pointer, JsonField};
use lockstep_http_kit::{HttpClient, Request};
use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo, Result, StreamInfo};
use serde::Deserialize;

/// The streams this connector serves.
pub const STREAMS: [&str; 3] = ["contacts", "companies", "deals"];

/// The property holding the last modification time. Per "CRM search" (developers.hubspot.com/
/// docs/api/crm/search): `lastmodifieddate` for contacts, `hs_lastmodifieddate` otherwise.
pub fn last_modified(stream: &str) -> &'static str {
    if stream == "contacts" {
        "lastmodifieddate"
    } else {
        "hs_lastmodifieddate"
    }
}

/// One property definition, as "Properties" (developers.hubspot.com/docs/api/crm/properties)
/// documents it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Property {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub has_unique_value: bool,
    #[serde(default)]
    pub calculated: bool,
    #[serde(default)]
    pub modification_metadata: Option<ModificationMetadata>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModificationMetadata {
    #[serde(default)]
    pub read_only_value: bool,
}

impl Property {
    /// Read-only and calculated properties are never written.
    pub fn read_only(&self) -> bool {
        self.calculated
            || self
                .modification_metadata
                .as_ref()
                .is_some_and(|m| m.read_only_value)
    }

    /// The logical type of the property's values.
    pub fn data_type(&self) -> DataType {
        match self.kind.as_str() {
            "number" => DataType::Float64,
            "bool" => DataType::Boolean,
            "date" => DataType::Date,
            "datetime" => DataType::TimestampTz,
            // string, enumeration (option values), phone_number and anything new.
            _ => DataType::Text,
        }
    }
}

/// A stream's properties and fields.
#[derive(Debug, Clone)]
pub struct StreamSchema {
    pub name: String,
    pub properties: Vec<Property>,
}

impl StreamSchema {
    /// The stream's fields: `id` then every property, each at its place in a record.
    pub fn json_fields(&self) -> Vec<JsonField> {
        let mut fields = vec![JsonField::at(
            FieldInfo {
                name: "id".into(),
                data_type: DataType::Int64,
                nullable: false,
                native_type: Some("object id".into()),
            },
            "/id",
        )];
        // Archived records arrive in incremental reads with `archived = true`: a mirror
        // sync's tombstone.
        fields.push(JsonField::at(
            FieldInfo {
                name: "archived".into(),
                data_type: DataType::Boolean,
                nullable: false,
                native_type: Some("archived flag (read-only)".into()),
            },
            "/archived",
        ));
        for p in &self.properties {
            fields.push(JsonField::at(
                FieldInfo {
                    name: p.name.clone(),
                    data_type: p.data_type(),
                    nullable: true,
                    native_type: Some(match (p.read_only(), p.has_unique_value) {
                        (true, _) => format!("{} (read-only)", p.kind),
                        (false, true) => format!("{} (unique)", p.kind),
                        (false, false) => p.kind.clone(),
                    }),
                },
                format!("/properties/{}", escape_pointer(&p.name)),
            ));
        }
        fields
    }

    pub fn stream_info(&self) -> StreamInfo {
        StreamInfo {
            name: self.name.clone(),
            fields: self.json_fields().into_iter().map(|f| f.field).collect(),
            primary_key: vec!["id".into()],
            cursor_candidates: vec![last_modified(&self.name).into()],
        }
    }
}

#[derive(Deserialize)]
struct Properties {
    results: Vec<Property>,
}

/// The schema of `stream`, limited to `wanted` properties when given (the last-modified
/// property is always kept: incremental reads need it).
pub async fn load(
    client: &HttpClient,
    stream: &str,
    wanted: Option<&Vec<String>>,
) -> Result<StreamSchema> {
    if !STREAMS.contains(&stream) {
        return Err(ConnectorError::schema(format!(
            "HubSpot has no stream `{stream}` here; this connector serves {}",
            STREAMS.join(", ")
        )));
    }
    let answer: Properties = client
        .send_json(
            &Request::get(format!("/crm/v3/properties/{stream}"))
                .describe(format!("reading the properties of HubSpot {stream}")),
        )
        .await?;
    let mut properties = answer.results;
    properties.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(wanted) = wanted {
        for name in wanted {
            if !properties.iter().any(|p| &p.name == name) {
                return Err(ConnectorError::config(format!(
                    "`properties.{stream}` names `{name}`, which HubSpot {stream} do not have; \
                     check the spelling against Settings > Properties"
                )));
            }
        }
        let cursor = last_modified(stream);
        properties.retain(|p| p.name == cursor || wanted.contains(&p.name));
    }
    Ok(StreamSchema {
        name: stream.into(),
        properties,
    })
}
