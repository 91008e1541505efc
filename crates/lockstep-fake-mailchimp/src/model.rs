//! The fake's data: audiences (lists) with their merge fields and members, and the clock
//! that stamps `last_changed`.
//!
//! Invariants: a member's `id` is the MD5 hash of its lower-cased email address, as Mailchimp
//! documents for the subscriber hash ("List members": "The MD5 hash of the lowercase version
//! of the list member's email address"); `last_changed` never goes back; an address deleted
//! permanently is remembered, because Mailchimp refuses to import it again.

use std::collections::{BTreeMap, BTreeSet};

use md5::{Digest, Md5};
use serde_json::{json, Value};

/// The subscriber hash of an email address: MD5 of its lower-cased form, in hex.
pub fn subscriber_hash(email: &str) -> String {
    format!("{:x}", Md5::digest(email.to_lowercase().as_bytes()))
}

/// A merge field of an audience.
#[derive(Debug, Clone, PartialEq)]
pub struct MergeField {
    pub merge_id: u32,
    /// The merge tag, e.g. `FNAME`.
    pub tag: String,
    pub name: String,
    /// `text`, `number`, `date`, `phone`, `url`, … ("Merge fields").
    pub kind: String,
    pub required: bool,
}

/// One member of an audience.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub email_address: String,
    pub status: String,
    pub merge_fields: BTreeMap<String, Value>,
    pub tags: Vec<String>,
    /// Seconds since the epoch.
    pub last_changed: i64,
    pub timestamp_signup: i64,
    pub web_id: u64,
}

impl Member {
    pub fn id(&self) -> String {
        subscriber_hash(&self.email_address)
    }

    /// The member as "List members" describes it (the fields the fake keeps).
    pub fn to_json(&self, list_id: &str) -> Value {
        let merge: serde_json::Map<String, Value> = self
            .merge_fields
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let full_name = [
            self.merge_fields.get("FNAME").and_then(Value::as_str),
            self.merge_fields.get("LNAME").and_then(Value::as_str),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        json!({
            "id": self.id(),
            "email_address": self.email_address,
            "unique_email_id": &self.id()[..10],
            "contact_id": self.id(),
            "full_name": full_name,
            "web_id": self.web_id,
            "email_type": "html",
            "status": self.status,
            "merge_fields": merge,
            "vip": false,
            "language": "",
            "timestamp_signup": format_time(self.timestamp_signup),
            "last_changed": format_time(self.last_changed),
            "tags_count": self.tags.len(),
            "tags": self.tags.iter().enumerate().map(|(i, name)| json!({"id": i + 1, "name": name})).collect::<Vec<_>>(),
            "list_id": list_id,
        })
    }
}

/// One audience.
#[derive(Debug, Clone, Default)]
pub struct List {
    pub merge_fields: Vec<MergeField>,
    /// Members in the order they were added.
    pub members: Vec<Member>,
    /// Hashes of addresses deleted permanently.
    pub forgotten: BTreeSet<String>,
}

impl List {
    pub fn member_mut(&mut self, hash: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id() == hash)
    }
}

/// Everything the fake holds.
#[derive(Debug, Default)]
pub struct Store {
    pub lists: BTreeMap<String, List>,
    last_tick: i64,
    next_web_id: u64,
}

impl Store {
    /// The current time in whole seconds (Mailchimp's timestamps carry seconds), never
    /// earlier than the previous tick.
    pub fn tick(&mut self) -> i64 {
        let now = chrono::Utc::now().timestamp();
        self.last_tick = self.last_tick.max(now);
        self.last_tick
    }

    pub fn next_web_id(&mut self) -> u64 {
        self.next_web_id += 1;
        self.next_web_id
    }
}

/// ISO 8601 as Mailchimp writes it: `2015-09-15T14:40:36+00:00`.
pub fn format_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

/// Parses an ISO 8601 time with an offset (`2015-10-21T15:41:36+00:00`) into seconds.
pub fn parse_time(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp())
}
