//! A sync as the engine sees it, resolved from the config file.

use serde::{Deserialize, Serialize};

/// The expression language, re-exported so that a spec's types are reachable from here.
pub use lockstep_expr as expr;
pub use lockstep_expr::{Expr, ExprError, Literal};

/// One side of a sync: a connection and a stream in it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub connection: String,
    pub stream: String,
}

/// What a run reads and what it propagates.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// Read everything; write what differs.
    #[default]
    Full,
    /// Read what changed since the stored cursor.
    Incremental,
    /// Incremental, and deletes reach the destination.
    Mirror,
    /// Both sides are read for what changed and each change goes to the other side;
    /// records changed on both sides are conflicts ([`TwoWaySpec`]).
    TwoWay,
    /// Change data capture: a snapshot, then the source's change log (inserts, updates and
    /// deletes in commit order) from the stored log position ([`CdcSpec`]).
    Cdc,
}

impl SyncMode {
    /// Whether this mode reads by cursor.
    pub fn uses_cursor(self) -> bool {
        matches!(self, SyncMode::Incremental | SyncMode::Mirror)
    }

    /// Whether deletes reach the destination (through pending deletes and the mass-delete
    /// guard): mirror and cdc.
    pub fn propagates_deletes(self) -> bool {
        matches!(self, SyncMode::Mirror | SyncMode::Cdc)
    }
}

/// A cdc sync's change log settings (`[syncs.NAME.cdc]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CdcSpec {
    /// The logical replication slot whose position is the checkpoint.
    pub slot: String,
    /// The publication the slot decodes.
    pub publication: String,
    /// The daemon alerts when the slot retains more WAL than this many bytes.
    pub max_retained_wal: u64,
}

/// How deletes are found and how many may be applied in one run (mirror mode).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DeletePolicy {
    /// The share of the destination's records one run may delete before it refuses.
    pub max_delete_fraction: f64,
    /// A source field that marks deleted records (a soft-delete column or flag): a record
    /// whose value is neither null nor false is deleted from the destination.
    pub tombstone: Option<String>,
    /// Run a key-set reconciliation (destination keys the source no longer has are
    /// deleted) every this many runs; 0 never.
    pub reconcile_every: u32,
}

impl Default for DeletePolicy {
    fn default() -> Self {
        Self {
            max_delete_fraction: 0.1,
            tombstone: None,
            reconcile_every: 1,
        }
    }
}

/// How many rejected records a run tolerates before it fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub enum RejectLimit {
    /// At most this many records.
    Count(u64),
    /// At most this share of the records read.
    Fraction(f64),
}

impl Default for RejectLimit {
    fn default() -> Self {
        RejectLimit::Fraction(0.1)
    }
}

impl RejectLimit {
    /// Whether `rejected` of `read` records is past the limit.
    pub fn exceeded(&self, rejected: u64, read: u64) -> bool {
        match *self {
            RejectLimit::Count(n) => rejected > n,
            RejectLimit::Fraction(f) => rejected > 0 && rejected as f64 > f * read as f64,
        }
    }
}

impl std::fmt::Display for RejectLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RejectLimit::Count(n) => write!(f, "{n} records"),
            RejectLimit::Fraction(x) => write!(f, "{}% of the records read", x * 100.0),
        }
    }
}

/// One destination field and where its value comes from.
///
/// A copy (`expr` is `None`) reads `source`; a computed field evaluates `expr`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct FieldMapping {
    /// The field's name in the destination. With dots (`props.score`), a path into a JSON
    /// field the mapping builds (`props`); a part in backticks is taken as it is
    /// (`` `a.b` `` is the field named `a.b`). See [`expr::parse_path`].
    pub target: String,
    /// For a copy: the source field it is copied from, or a dotted path into a JSON source
    /// field (`address.city`). For a computed field: the expression's text, for messages.
    pub source: String,
    /// How the value is computed; `None` for a copy of `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expr: Option<Expr>,
}

impl FieldMapping {
    /// `target` copied from source field (or path) `source`.
    pub fn copy(target: impl Into<String>, source: impl Into<String>) -> Self {
        FieldMapping {
            target: target.into(),
            source: source.into(),
            expr: None,
        }
    }

    /// `target` computed by `expr`.
    pub fn computed(target: impl Into<String>, expr: Expr) -> Self {
        FieldMapping {
            target: target.into(),
            source: expr.to_string(),
            expr: Some(expr),
        }
    }

    /// Whether the field is a copy of a source field (a rename, or a path into a JSON field).
    pub fn is_copy(&self) -> bool {
        self.expr.is_none()
    }

    /// The destination path: one part for a plain field, more for a path into a JSON field.
    pub fn target_path(&self) -> Result<Vec<String>, ExprError> {
        expr::parse_path(&self.target)
    }

    /// The destination field (column) this mapping writes: the first part of its path.
    pub fn column(&self) -> String {
        match self.target_path() {
            Ok(mut path) => path.swap_remove(0),
            Err(_) => self.target.clone(),
        }
    }

    /// What the field's value is computed from: `expr`, or the copied field.
    pub fn value(&self) -> Result<Expr, ExprError> {
        match &self.expr {
            Some(e) => Ok(e.clone()),
            None => Expr::field(&self.source),
        }
    }
}

/// A sync: what to copy from where to where, and how.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SyncSpec {
    pub name: String,
    pub source: EndpointSpec,
    pub destination: EndpointSpec,
    pub mode: SyncMode,
    /// The source field read as the incremental cursor.
    pub cursor_field: Option<String>,
    /// The match key, in destination field names. Empty: the source's primary key, mapped.
    pub key: Vec<String>,
    /// The field mapping. Empty: every source field under its own name.
    pub fields: Vec<FieldMapping>,
    /// Rows per batch read from the source and written to the destination.
    pub batch_size: usize,
    pub delete: DeletePolicy,
    /// How many rejected records the run tolerates.
    pub max_rejected: RejectLimit,
    /// Keep the record ledger (fingerprints of what was written). Without it every record
    /// read is sent, and the destination's own upsert tells added, updated and unchanged
    /// apart: the fast path for database-to-database syncs.
    pub use_ledger: bool,
    /// How a two-way sync (mode `two-way`) reads side b and resolves conflicts; `None` for
    /// one-way syncs. Side a is the sync's `source`, side b its `destination`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub two_way: Option<TwoWaySpec>,
    /// The change log of a cdc sync (mode `cdc`); `None` for other modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdc: Option<CdcSpec>,
}

/// One side of a two-way sync.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum Side {
    /// The sync's `source`.
    A,
    /// The sync's `destination`.
    B,
}

impl Side {
    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::A => "a",
            Side::B => "b",
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What decides a conflict: a record both sides changed differently since they last agreed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ConflictPolicy {
    /// The side whose change is later by its own modification time wins; a tie goes to
    /// [`TwoWaySpec::prefer`]. A delete against an update: the update wins (a deleted
    /// record has no modification time).
    NewestWins,
    /// Side a is the source of truth: its values (or its delete) win.
    PreferA,
    /// Side b is the source of truth.
    PreferB,
    /// A field changed on one side only is taken from that side; fields changed on both
    /// sides, and a delete against an update, fall to [`TwoWaySpec::fallback`].
    MergeFields,
    /// Neither side is written for the record: the conflict waits for a person.
    Manual,
}

impl ConflictPolicy {
    /// The policy's name in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictPolicy::NewestWins => "newest-wins",
            ConflictPolicy::PreferA => "prefer-a",
            ConflictPolicy::PreferB => "prefer-b",
            ConflictPolicy::MergeFields => "merge-fields",
            ConflictPolicy::Manual => "manual",
        }
    }
}

impl std::fmt::Display for ConflictPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a two-way sync reads its second side and decides conflicts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TwoWaySpec {
    /// Side b's field that records when a record last changed there: its incremental
    /// cursor and, for `newest-wins`, its modification time. Side a's is the sync's
    /// `cursor_field`. A side without one is read in full every run.
    pub b_cursor_field: Option<String>,
    /// Side b's field that marks a record it deleted but still lists (an `archived` flag, a
    /// `deleted_at` time): such a record is a delete on side b. Side a's is the sync's
    /// `delete.tombstone`. Without one, a side's deletes are found by comparing key sets.
    #[serde(default)]
    pub b_tombstone_field: Option<String>,
    /// The sync's conflict policy.
    pub policy: ConflictPolicy,
    /// For `merge-fields`: what decides the fields changed on both sides (and a delete
    /// against an update). Never `merge-fields` itself.
    pub fallback: ConflictPolicy,
    /// Who wins a `newest-wins` tie.
    pub prefer: Side,
    /// Per-field policies (by mapped field name) that replace the sync's for that field when
    /// both sides changed it differently. Record-level questions (a delete against an
    /// update) stay with the sync's policy.
    #[serde(default)]
    pub field_policies: std::collections::BTreeMap<String, ConflictPolicy>,
    /// Mapped fields that only flow from a to b (computed fields, or fields b must not
    /// send back): never written to side a, never a conflict.
    #[serde(default)]
    pub one_way: Vec<String>,
}

impl Default for TwoWaySpec {
    fn default() -> Self {
        TwoWaySpec {
            b_cursor_field: None,
            b_tombstone_field: None,
            policy: ConflictPolicy::NewestWins,
            fallback: ConflictPolicy::Manual,
            prefer: Side::A,
            field_policies: Default::default(),
            one_way: Vec::new(),
        }
    }
}

impl SyncSpec {
    /// Whether runs read only what changed since the stored checkpoint: an incremental or
    /// mirror sync with a cursor field. A mirror sync without one reads its source in full
    /// every run (a source with no change tracking, such as a mailing list's roster); the
    /// ledger still tells added, updated and unchanged apart, and reconciliation finds its
    /// deletes. A cdc sync resumes from its stored log position.
    pub fn reads_by_cursor(&self) -> bool {
        (self.mode.uses_cursor() && self.cursor_field.is_some()) || self.mode == SyncMode::Cdc
    }

    /// The destination name of source field `source`, if the mapping carries it.
    pub fn target_of<'a>(&'a self, source: &'a str) -> Option<&'a str> {
        if self.fields.is_empty() {
            return Some(source);
        }
        self.fields
            .iter()
            .find(|m| m.is_copy() && m.source == source)
            .map(|m| m.target.as_str())
    }

    /// The source field that feeds destination field `target`, if any.
    pub fn source_of<'a>(&'a self, target: &'a str) -> Option<&'a str> {
        if self.fields.is_empty() {
            return Some(target);
        }
        self.fields
            .iter()
            .find(|m| m.is_copy() && m.target == target)
            .map(|m| m.source.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fields: Vec<FieldMapping>) -> SyncSpec {
        SyncSpec {
            name: "s".into(),
            source: EndpointSpec {
                connection: "a".into(),
                stream: "t".into(),
            },
            destination: EndpointSpec {
                connection: "b".into(),
                stream: "u".into(),
            },
            mode: SyncMode::Incremental,
            cursor_field: Some("updated_at".into()),
            key: vec![],
            fields,
            batch_size: 100,
            delete: DeletePolicy::default(),
            max_rejected: RejectLimit::default(),
            use_ledger: true,
            two_way: None,
            cdc: None,
        }
    }

    #[test]
    fn reject_limits_count_and_share() {
        assert!(!RejectLimit::Count(2).exceeded(2, 10));
        assert!(RejectLimit::Count(2).exceeded(3, 10));
        assert!(!RejectLimit::Fraction(0.1).exceeded(1, 10));
        assert!(RejectLimit::Fraction(0.1).exceeded(2, 10));
        assert!(!RejectLimit::Fraction(0.1).exceeded(0, 0));
    }

    #[test]
    fn an_empty_mapping_passes_every_field_through() {
        let s = spec(vec![]);
        assert_eq!(s.target_of("email"), Some("email"));
        assert_eq!(s.source_of("email"), Some("email"));
    }

    #[test]
    fn renames_resolve_both_ways() {
        let s = spec(vec![FieldMapping {
            target: "email_address".into(),
            source: "email".into(),
            expr: None,
        }]);
        assert_eq!(s.target_of("email"), Some("email_address"));
        assert_eq!(s.source_of("email_address"), Some("email"));
        assert_eq!(s.target_of("phone"), None);
    }

    #[test]
    fn computed_fields_are_not_renames() {
        let key = expr::parse("lower(trim(email))").unwrap();
        let s = spec(vec![
            FieldMapping::copy("props.score", "score"),
            FieldMapping::computed("email_key", key.clone()),
            FieldMapping::copy("`a.b`", "x"),
        ]);
        assert_eq!(s.fields[1].source, "lower(trim(email))");
        assert_eq!(s.source_of("email_key"), None);
        assert_eq!(s.target_of("email"), None);
        assert_eq!(s.source_of("props.score"), Some("score"));
        assert_eq!(s.fields[0].column(), "props");
        assert_eq!(s.fields[0].target_path().unwrap(), ["props", "score"]);
        assert_eq!(s.fields[2].column(), "a.b");
        assert_eq!(s.fields[1].value().unwrap(), key);
        assert_eq!(
            s.fields[0].value().unwrap(),
            Expr::Field(vec!["score".into()])
        );
        // A spec serializes with the expression as text, and a copy without `expr`.
        let json = serde_json::to_value(&s.fields).unwrap();
        assert_eq!(json[1]["expr"], "lower(trim(email))");
        assert!(json[0].get("expr").is_none());
        let back: Vec<FieldMapping> = serde_json::from_value(json).unwrap();
        assert_eq!(back, s.fields);
    }
}
