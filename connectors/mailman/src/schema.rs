//! The fields of a list's member stream, where each sits in Mailman's member resource, and
//! which of them a sync may write.
//!
//! Invariant: the catalog, the reader and the writer all take their fields from [`FIELDS`],
//! so what is discovered is exactly what is read.

use lockstep_http_kit::convert::JsonField;
use lockstep_plugin_sdk::{DataType, FieldInfo, StreamInfo};

/// One field of a member: its name, whether it may be null, what Mailman calls it, and
/// whether a sync may write it.
pub struct MemberField {
    pub name: &'static str,
    pub nullable: bool,
    pub native: &'static str,
    pub writable: bool,
}

/// The fields of a member, in catalog order.
pub const FIELDS: [MemberField; 6] = [
    MemberField {
        name: "member_id",
        nullable: false,
        native: "member id (hex UUID, read-only)",
        writable: false,
    },
    MemberField {
        name: "email",
        nullable: false,
        native: "subscribed address (unique in a roster)",
        writable: true,
    },
    MemberField {
        name: "display_name",
        nullable: true,
        native: "the address's display name",
        writable: true,
    },
    MemberField {
        name: "delivery_mode",
        nullable: true,
        native: "regular | plaintext_digests | mime_digests | summary_digests",
        writable: true,
    },
    MemberField {
        name: "role",
        nullable: false,
        native: "member (read-only: the member roster is served)",
        writable: false,
    },
    MemberField {
        name: "moderation_action",
        nullable: true,
        native: "hold | reject | discard | accept | defer, or null for the list's default",
        writable: true,
    },
];

/// The key of a member stream: the subscribed address, unique within a list's roster.
pub const KEY: &str = "email";

fn info(field: &MemberField) -> FieldInfo {
    FieldInfo {
        name: field.name.into(),
        data_type: DataType::Text,
        nullable: field.nullable,
        native_type: Some(field.native.into()),
    }
}

/// Every field, each at the top level of a member resource under its own name.
pub fn json_fields() -> Vec<JsonField> {
    FIELDS
        .iter()
        .map(|f| JsonField::top_level(info(f)))
        .collect()
}

/// The stream of one list's members.
pub fn stream_info(list_id: &str) -> StreamInfo {
    StreamInfo {
        name: list_id.into(),
        fields: FIELDS.iter().map(info).collect(),
        primary_key: vec![KEY.into()],
        cursor_candidates: Vec::new(),
    }
}
