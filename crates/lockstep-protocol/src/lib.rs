//! The JSON control plane shared by the host and connectors: manifests, catalogs, read and
//! write requests, write outcomes, and the logical type system with its Arrow mapping.
//!
//! Invariants:
//! - Every message tolerates unknown fields and gives new fields defaults, so that a host and
//!   a plugin one minor version apart still understand each other.
//! - The Arrow representation of each [`DataType`] is fixed here and nowhere else: connectors
//!   and the host both call [`DataType::to_arrow_field`] and [`DataType::from_arrow_field`].
//! - No I/O.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[cfg(feature = "arrow")]
pub mod arrow_types;

/// Field metadata key that carries the logical type where Arrow's type alone is ambiguous
/// (uuid and json are both stored as Utf8).
pub const LOGICAL_TYPE_METADATA_KEY: &str = "lockstep.type";

/// What a connector can be used as.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Source,
    Destination,
}

/// A connector's description of itself, returned by the root module's `manifest` function.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The name configs refer to, such as `sqlite`.
    pub name: String,
    /// The connector's own version.
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub roles: Vec<Role>,
    /// Optional capabilities such as `incremental`, `delete`, `create-stream`.
    #[serde(default)]
    pub features: Vec<String>,
    /// A JSON Schema for the connection's `config` table.
    #[serde(default)]
    pub config_schema: Value,
    /// The plugin API version the connector was built against (filled in by the SDK).
    #[serde(default)]
    pub abi_version: String,
    /// The SDK version the connector was built with (filled in by the SDK).
    #[serde(default)]
    pub sdk_version: String,
}

/// The logical type of a field. Every connector maps its native types onto these.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum DataType {
    Boolean,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Exact decimal; precision up to 38.
    Decimal {
        precision: u8,
        scale: i8,
    },
    Text,
    Binary,
    Date,
    /// Time of day, microseconds.
    Time,
    /// Timestamp without time zone, microseconds.
    Timestamp,
    /// Timestamp with time zone, microseconds, stored in UTC.
    TimestampTz,
    /// A UUID in its canonical hyphenated text form.
    Uuid,
    /// A JSON document in text form.
    Json,
}

impl DataType {
    /// A short name for messages and tables, such as `decimal(10,2)`.
    pub fn describe(&self) -> String {
        match self {
            DataType::Decimal { precision, scale } => format!("decimal({precision},{scale})"),
            other => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| format!("{other:?}")),
        }
    }
}

/// One field of a stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FieldInfo {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: DataType,
    #[serde(default = "default_true")]
    pub nullable: bool,
    /// The system's own type name, for people (`varchar(255)`, `INTEGER`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_type: Option<String>,
}

fn default_true() -> bool {
    true
}

/// One stream (table, object type, list) a system offers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StreamInfo {
    pub name: String,
    pub fields: Vec<FieldInfo>,
    /// The fields that identify a record; empty when the system has none.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// Fields that could serve as an incremental cursor (monotonic modification times or ids).
    #[serde(default)]
    pub cursor_candidates: Vec<String>,
}

impl StreamInfo {
    /// The field named `name`, if the stream has one.
    pub fn field(&self, name: &str) -> Option<&FieldInfo> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// Every stream of a system.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Catalog {
    pub streams: Vec<StreamInfo>,
}

impl Catalog {
    /// The stream named `name`, if the catalog has one.
    pub fn stream(&self, name: &str) -> Option<&StreamInfo> {
        self.streams.iter().find(|s| s.name == name)
    }
}

/// How a source reads a stream.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum ReadMode {
    /// Everything, in primary key order.
    #[default]
    Full,
    /// Records whose (cursor, key) is after the checkpoint's, in (cursor, key) order.
    Incremental,
    /// Change data capture ([`FEATURE_CDC`]): a snapshot, then the source's change log in
    /// commit order from the checkpoint's position; deleted records arrive as rows whose
    /// [`CDC_DELETED_FIELD`] is true. Settings in [`ReadRequest::cdc`].
    Cdc,
}

/// A request to read one stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReadRequest {
    pub stream: String,
    #[serde(default)]
    pub mode: ReadMode,
    /// The fields to read; all of them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
    /// The cursor field; required for incremental reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor_field: Option<String>,
    /// The fields that break cursor ties and order full reads; the primary key when empty.
    #[serde(default)]
    pub key: Vec<String>,
    /// Where to resume: a checkpoint this source returned earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Value>,
    /// Upper bound of rows per batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// Only the records whose `key` values equal one of these (each a list of values in
    /// `key` order, as JSON). Honoured by connectors that declare the feature
    /// [`FEATURE_READ_BY_KEYS`]; the host never sends it to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<Vec<Value>>>,
    /// Instead of the records, a summary of the stream's key set (the `key` fields): one
    /// batch of one row, a [`KeySummary`]. Honoured by connectors that declare the feature
    /// [`FEATURE_KEY_SUMMARY`]; the host never sends it to others.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub key_summary: bool,
    /// The read serves a check, not a run (`lockstep plan`, `lockstep verify`, `lockstep
    /// connectors read`): none of its checkpoints is committed. The source reads as usual but
    /// changes nothing on its side that a run's read may change, such as moving or deleting
    /// files that the committed checkpoint says were read.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The change log to read, for [`ReadMode::Cdc`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc: Option<CdcRequest>,
    /// Only the records at these places, each the `location` of a source reject this source
    /// sent (for files: `{"file": .., "line": ..}`) with the reject's `text` added, read
    /// again as they are now, for a retry.
    /// The read returns exactly one batch per location, in order: the record (one row), a
    /// source-rejects batch of one when it still cannot be read, or no rows when no record
    /// is at that place any more. Honoured by connectors that declare the feature
    /// [`FEATURE_READ_LOCATIONS`]; the host never sends it to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<Value>>,
    /// Instead of the records, hashes of ranges of the key space computed where the records
    /// are (`lockstep verify`): per range a count and an order-independent hash, or the
    /// (key, row hash) pairs of chosen ranges. Honoured by connectors that declare the feature
    /// [`FEATURE_RANGE_HASH`]; the host never sends it to others (an older plugin would
    /// ignore the field and read the records instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_hash: Option<RangeHashRequest>,
}

/// Manifest feature: reads honour [`ReadRequest::range_hash`].
pub const FEATURE_RANGE_HASH: &str = "range-hash";

/// The most ranges a [`RangeHashRequest`] may cut the key space into (2^24).
pub const RANGE_HASH_MAX_RANGES: u64 = 1 << 24;

/// A range-hash read ([`ReadRequest::range_hash`]): the records of the stream (their
/// [`ReadRequest::key`] and these `fields`) hashed in the system, in a canonical text form
/// that the connector's [`RangeSummary::algorithm`] names.
///
/// The key space is cut into `ranges` ranges (a power of two): a record's range is the hash
/// of its key's canonical text modulo `ranges`, so ranges do not depend on how a system
/// orders or collates keys, and two systems that give a record the same canonical text put it
/// in the same range. Without `list` the read returns one [`RangeSummary`] row per range that
/// holds records; with `list` it returns one [`RangeEntry`] row per record of those ranges.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RangeHashRequest {
    /// The fields hashed with the key, in this order (the key fields may be among them).
    pub fields: Vec<String>,
    /// How many ranges: a power of two from 1 to [`RANGE_HASH_MAX_RANGES`].
    pub ranges: u64,
    /// List the (key, row hash) pairs of the records of these ranges instead of summarizing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<Vec<u64>>,
    /// A field whose greatest value (its canonical text) each summary row carries, over the
    /// whole stream: the freshness of `lockstep verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<String>,
}

/// One range of a range-hash read: how many records it holds and the sum, modulo 2^64, of
/// their row hashes (order-independent), in decimal text.
///
/// On the data plane it is a row of a batch with the fields `algorithm` (text), `range`
/// (int64), `count` (int64), `hash` (text) and `newest` (text, nullable), in that order
/// (`RangeSummary::to_batch`, `RangeSummary::from_batch`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RangeSummary {
    /// The hash and canonical text form; summaries of different algorithms never compare.
    pub algorithm: String,
    pub range: u64,
    pub count: u64,
    pub hash: String,
    /// The greatest value of [`RangeHashRequest::newest`] over the stream, as canonical text.
    pub newest: Option<String>,
}

/// One record of a listed range: its key's canonical text, one value per key field (null for
/// a null), and its row hash in decimal text.
///
/// On the data plane it is a row of a batch with the text fields `key_0` .. `key_{n-1}`
/// (nullable) and `row_hash`, in that order (`RangeEntry::to_batch`,
/// `RangeEntry::from_batch`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RangeEntry {
    pub key: Vec<Option<String>>,
    pub hash: String,
}

/// Where a change-data-capture read ([`ReadMode::Cdc`]) takes its changes from: for
/// PostgreSQL, a logical replication slot and a publication (created when missing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct CdcRequest {
    pub slot: String,
    pub publication: String,
    /// Instead of reading, drop the slot and the publication (`lockstep cdc drop`): the read
    /// returns one batch of [`CdcDropped`] rows, one per object, and changes nothing else.
    /// Honoured by connectors that declare the feature [`FEATURE_CDC_DROP`]; the host never
    /// sends it to others (an older plugin would ignore the field and read instead).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drop: bool,
    /// With `drop`: leave the publication alone, because another sync uses it too.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_publication: bool,
}

/// Manifest feature: cdc reads honour [`CdcRequest::drop`].
pub const FEATURE_CDC_DROP: &str = "cdc-drop";

/// What a cdc drop ([`CdcRequest::drop`]) did to one object of the source.
///
/// On the data plane it is one row of a batch with the text fields `object` (what kind of
/// object, such as `replication slot`), `name`, `outcome` (one of [`CdcDropped::DROPPED`],
/// [`CdcDropped::ABSENT`], [`CdcDropped::KEPT`]) and `detail` (why, for people), in that
/// order (`CdcDropped::to_batch`, `CdcDropped::from_batch`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CdcDropped {
    pub object: String,
    pub name: String,
    pub outcome: String,
    pub detail: String,
}

impl CdcDropped {
    /// The object existed and was dropped.
    pub const DROPPED: &'static str = "dropped";
    /// The object did not exist.
    pub const ABSENT: &'static str = "absent";
    /// The object exists and was left alone (`detail` says why).
    pub const KEPT: &'static str = "kept";
}

/// Whether `checkpoint` is one of a cdc read in its snapshot: a cdc read's checkpoint is a
/// JSON object whose `phase` is `snapshot` while it reads the table itself and something
/// else (`changes`) once it reads the change log. After a read that took a snapshot the
/// engine reconciles key sets, since a snapshot cannot see the deletes it replaced.
pub fn is_cdc_snapshot_checkpoint(checkpoint: &Value) -> bool {
    checkpoint.get("phase").and_then(Value::as_str) == Some("snapshot")
}

/// Manifest feature: reads honour [`ReadMode::Cdc`].
pub const FEATURE_CDC: &str = "cdc";

/// The boolean field a change-data-capture read adds to its batches: true for a deleted
/// record (whose fields other than the key may be null), false for an inserted or updated
/// one. The engine treats it as the sync's tombstone field.
pub const CDC_DELETED_FIELD: &str = "_lockstep_deleted";

/// Manifest feature: reads honour [`ReadRequest::locations`] (a retry reads a source reject
/// again at its place).
pub const FEATURE_READ_LOCATIONS: &str = "read-locations";

/// Manifest feature: reads honour [`ReadRequest::keys`].
pub const FEATURE_READ_BY_KEYS: &str = "read-by-keys";

/// Manifest feature: reads honour [`ReadRequest::key_summary`].
pub const FEATURE_KEY_SUMMARY: &str = "key-summary";

/// A summary of a stream's key set: how many records it has and an order-independent hash
/// of their keys, computed where the records are (in the database, for database
/// connectors). Two summaries of the same `algorithm` are equal when the key sets are equal,
/// and differ, but for a hash collision, when they are not. The algorithm names the hash and
/// the text form of the keys it hashes; summaries of different algorithms are not
/// comparable.
///
/// On the data plane it is a batch of one row with the fields `algorithm` (text), `count`
/// (int64) and `hash` (text), in that order (`KeySummary::to_batch`, `KeySummary::from_batch`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeySummary {
    pub algorithm: String,
    pub count: u64,
    pub hash: String,
}

/// The conventional checkpoint of a cursor-based read: the last (cursor, key) delivered.
/// Connectors may use any JSON; this shape lets the host print cursors.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CursorCheckpoint {
    #[serde(default)]
    pub cursor: Value,
    #[serde(default)]
    pub key: Vec<Value>,
}

/// What to do when the destination stream lacks fields the sync writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SchemaEvolution {
    /// Add the missing columns.
    #[default]
    AddColumns,
    /// Write only the columns that exist.
    Ignore,
    /// Refuse to write.
    Fail,
}

/// A request to prepare a destination stream for writing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OpenStreamRequest {
    pub stream: String,
    /// The fields that will be written, with their logical types.
    pub fields: Vec<FieldInfo>,
    /// The match key: upserts and deletes find rows by these fields.
    pub key: Vec<String>,
    #[serde(default = "default_true")]
    pub create_if_missing: bool,
    #[serde(default)]
    pub schema_evolution: SchemaEvolution,
}

/// A row the destination refused, by its index in the batch it was sent in.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RejectedRow {
    pub row: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub reason: String,
}

/// What a write call did. Counts a destination cannot tell are `None`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WriteOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inserted: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedRow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_types_round_trip_through_json() {
        let types = [
            DataType::Boolean,
            DataType::Int64,
            DataType::Decimal {
                precision: 12,
                scale: 2,
            },
            DataType::TimestampTz,
            DataType::Json,
        ];
        for t in types {
            let text = serde_json::to_string(&t).unwrap();
            assert_eq!(
                serde_json::from_str::<DataType>(&text).unwrap(),
                t,
                "{text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&DataType::TimestampTz).unwrap(),
            "\"timestamp-tz\""
        );
        assert_eq!(
            DataType::Decimal {
                precision: 10,
                scale: 2
            }
            .describe(),
            "decimal(10,2)"
        );
    }

    #[test]
    fn messages_tolerate_unknown_fields() {
        let req: ReadRequest =
            serde_json::from_str(r#"{"stream":"t","mode":"incremental","future":1}"#).unwrap();
        assert_eq!(req.mode, ReadMode::Incremental);
        assert!(req.key.is_empty());
    }
}
