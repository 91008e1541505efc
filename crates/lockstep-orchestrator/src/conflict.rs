//! The two-way decision (semantics.md, "Two-way sync and conflicts"): for one record, what
//! each side did since the base both last agreed on, and what to write where. Conflicts are
//! decided here by the sync's policy, field by field where the policy allows.
//!
//! Invariants:
//! - Pure: no I/O; values are compared in the mapped space after [`normalize`], so that
//!   `5` and `5.0`, or two spellings of one JSON object, are one value.
//! - A side whose fingerprint equals the base's for that side did not change (this is how
//!   Lockstep's own writes coming back are recognised): it never causes a write or a conflict.
//! - Changes on both sides to the same values are an agreement, never a conflict.
//! - A record with any field decided `manual` is queued whole: neither side is written.

use std::cmp::Ordering;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use lockstep_core::{ConflictPolicy, Side, TwoWaySpec};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::Xxh3;

/// A record as one side holds it, in the mapped space.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SideRecord {
    pub(crate) values: Map<String, Value>,
    /// [`fingerprint`] of `values` over the side's compared fields.
    pub(crate) fingerprint: u128,
    /// The side's modification time of the record (its cursor field), when it has one.
    pub(crate) modified: Option<Value>,
}

/// What one side did to a record since the base.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SideState<'r> {
    /// Not changed since the base (or Lockstep's own write read back).
    Same,
    /// Changed, or created, since the base.
    Changed(&'r SideRecord),
    /// Deleted since the base.
    Deleted,
    /// Never had it (no base, not read).
    Absent,
}

/// What one side did to a record, without its values ([`SideState`] as a kind): enough to
/// tell whether a decision reads the base's values ([`needs_base_values`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Same,
    Changed,
    Deleted,
    Absent,
}

#[cfg(test)]
impl SideState<'_> {
    /// This state's kind.
    pub(crate) fn change(&self) -> Change {
        match self {
            SideState::Same => Change::Same,
            SideState::Changed(_) => Change::Changed,
            SideState::Deleted => Change::Deleted,
            SideState::Absent => Change::Absent,
        }
    }
}

/// Whether [`decide`] reads the base's values for a record whose sides did `a` and `b`: only
/// when both sides changed it (`merge-fields` compares each field with the base) or one
/// side changed what the other deleted, the two cases that can end in a conflict, which is
/// recorded with its base. In every other case the outcome is the same whatever the base's
/// values, so a run needs only the base's fingerprints to decide it.
pub(crate) fn needs_base_values(a: Change, b: Change) -> bool {
    use Change::*;
    matches!(
        (a, b),
        (Changed, Changed) | (Changed, Deleted) | (Deleted, Changed)
    )
}

/// The base both sides last agreed on.
pub(crate) struct Base<'b> {
    pub(crate) values: &'b Map<String, Value>,
}

/// What to do with one record.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Nothing to write, nothing to record.
    Nothing,
    /// Both sides hold the same values: record them as the new base, write nothing.
    Agreed(Map<String, Value>),
    /// Write `values` to side `to` (the other side already holds them).
    Write {
        to: Side,
        values: Map<String, Value>,
    },
    /// Delete the record on side `on` (the other side deleted it).
    Delete { on: Side },
    /// Both sides deleted it: forget the base.
    Forget,
    /// Both sides changed it differently: `decision` says what the policy did.
    Conflict(ConflictDecision),
}

/// How a conflict was decided.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ConflictDecision {
    /// The mapped fields whose values differ between the sides (all fields for a delete
    /// against an update).
    pub(crate) fields: Vec<String>,
    /// The policy that decided (the sync's, or `field:<policy>` mixes are named by the sync's).
    pub(crate) policy: ConflictPolicy,
    pub(crate) resolution: Resolution,
}

/// What a conflict's decision writes.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Resolution {
    /// Neither side is written; a person decides.
    Queued,
    /// Both sides end with `values`; `taken` names the side whose values they are, `None`
    /// for a merge of both.
    Values {
        values: Map<String, Value>,
        taken: Option<Side>,
    },
    /// The record is deleted on the side that still has it.
    Delete,
}

impl Resolution {
    /// The decision's text for the conflict history.
    pub(crate) fn decision(&self) -> &'static str {
        match self {
            Resolution::Queued => "queued",
            Resolution::Values {
                taken: Some(Side::A),
                ..
            } => "a",
            Resolution::Values {
                taken: Some(Side::B),
                ..
            } => "b",
            Resolution::Values { taken: None, .. } => "merge",
            Resolution::Delete => "delete",
        }
    }
}

/// The fields a side's fingerprint covers and that the sides compare: every mapped field
/// for side a; for side b, all but the one-way fields (which b never sends back).
pub(crate) struct Fields {
    /// Every mapped field, in mapping order.
    pub(crate) all: Vec<String>,
    /// The fields that flow both ways.
    pub(crate) shared: Vec<String>,
}

impl Fields {
    pub(crate) fn new(all: Vec<String>, spec: &TwoWaySpec) -> Self {
        let shared = all
            .iter()
            .filter(|f| !spec.one_way.contains(f))
            .cloned()
            .collect();
        Fields { all, shared }
    }

    /// The fields side `side`'s fingerprint covers.
    pub(crate) fn of(&self, side: Side) -> &[String] {
        match side {
            Side::A => &self.all,
            Side::B => &self.shared,
        }
    }
}

/// A value in the one spelling the sides are compared in: integral numbers as integers,
/// other numbers as `f64`, objects with sorted keys (serde_json's map is ordered).
pub(crate) fn normalize(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            if n.is_i64() || n.is_u64() {
                value.clone()
            } else {
                match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Value::from(f as i64),
                    _ => value.clone(),
                }
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(normalize).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalize(v))).collect())
        }
        _ => value.clone(),
    }
}

/// Whether two values are one value, after [`normalize`].
pub(crate) fn same_value(a: Option<&Value>, b: Option<&Value>) -> bool {
    let null = Value::Null;
    normalize(a.unwrap_or(&null)) == normalize(b.unwrap_or(&null))
}

/// The fingerprint of `values` over `fields`: XXH3-128 of each field's name and normalized
/// JSON text, so that the same values give the same fingerprint whichever side's types
/// they were read as.
pub(crate) fn fingerprint(values: &Map<String, Value>, fields: &[String]) -> u128 {
    fingerprint_by(fields, |i| values.get(&fields[i]))
}

/// [`fingerprint`] over `fields`, field `i`'s value given by `value(i)` (`None` for null):
/// what a caller that holds the values in another form than a map (a row of a batch)
/// hashes without building one.
pub(crate) fn fingerprint_by<V: std::borrow::Borrow<Value>>(
    fields: &[String],
    mut value: impl FnMut(usize) -> Option<V>,
) -> u128 {
    let mut hasher = Xxh3::new();
    let mut text = Vec::with_capacity(64);
    for (i, field) in fields.iter().enumerate() {
        text.clear();
        match value(i) {
            Some(v) => normalized_text(v.borrow(), &mut text),
            None => text.extend_from_slice(b"null"),
        }
        hasher.update(&(field.len() as u32).to_le_bytes());
        hasher.update(field.as_bytes());
        hasher.update(&(text.len() as u32).to_le_bytes());
        hasher.update(&text);
    }
    hasher.digest128()
}

/// Appends the JSON text of `normalize(value)` to `out`, without copying a scalar.
fn normalized_text(value: &Value, out: &mut Vec<u8>) {
    use std::io::Write;
    let written = match value {
        Value::Number(n) if !(n.is_i64() || n.is_u64()) => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => write!(out, "{}", f as i64),
            _ => serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from),
        },
        Value::Array(_) | Value::Object(_) => {
            serde_json::to_writer(&mut *out, &normalize(value)).map_err(std::io::Error::from)
        }
        _ => serde_json::to_writer(&mut *out, value).map_err(std::io::Error::from),
    };
    // Writing JSON into a vector cannot fail.
    debug_assert!(written.is_ok());
}

/// A modification time as an instant, from the forms databases and APIs use: RFC 3339,
/// `YYYY-MM-DD HH:MM:SS[.f]` (taken as UTC), a date, or seconds (or milliseconds, when
/// larger than 10^11) since the epoch.
pub(crate) fn instant(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => {
            if let Ok(t) = DateTime::parse_from_rfc3339(s) {
                return Some(t.with_timezone(&Utc));
            }
            for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
                if let Ok(t) = NaiveDateTime::parse_from_str(s, format) {
                    return Some(t.and_utc());
                }
            }
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
        }
        Value::Number(n) => {
            let n = n.as_f64()?;
            let millis = if n.abs() > 1e11 { n } else { n * 1000.0 };
            DateTime::from_timestamp_millis(millis as i64)
        }
        _ => None,
    }
}

/// Which side's change is newer by the sides' own modification times; a tie, or a side
/// without a usable time, goes to `prefer`.
pub(crate) fn newer(a: &SideRecord, b: &SideRecord, prefer: Side) -> Side {
    let ta = a.modified.as_ref().and_then(instant);
    let tb = b.modified.as_ref().and_then(instant);
    match (ta, tb) {
        (Some(ta), Some(tb)) => match ta.cmp(&tb) {
            Ordering::Greater => Side::A,
            Ordering::Less => Side::B,
            Ordering::Equal => prefer,
        },
        _ => prefer,
    }
}

/// Decides one record from both sides' states and the base (`None`: never agreed).
pub(crate) fn decide(
    spec: &TwoWaySpec,
    fields: &Fields,
    base: Option<Base<'_>>,
    a: SideState<'_>,
    b: SideState<'_>,
) -> Outcome {
    use SideState::*;
    match (a, b) {
        // Same needs a base and Absent means there is none: those pairs cannot meet, and
        // nothing is written for them.
        (Same, Same) | (Absent, Absent) | (Same, Absent) | (Absent, Same) => Outcome::Nothing,
        // Gone from both sides (or from the only side that had it): forget the base.
        (Deleted, Deleted) | (Deleted, Absent) | (Absent, Deleted) => Outcome::Forget,
        (Changed(r), Same) | (Changed(r), Absent) => write_to(Side::B, r, fields),
        (Same, Changed(r)) | (Absent, Changed(r)) => write_to(Side::A, r, fields),
        (Deleted, Same) => Outcome::Delete { on: Side::B },
        (Same, Deleted) => Outcome::Delete { on: Side::A },
        (Changed(ra), Changed(rb)) => both_changed(spec, fields, base, ra, rb),
        (Changed(r), Deleted) => delete_against_update(spec, fields, Side::A, r),
        (Deleted, Changed(r)) => delete_against_update(spec, fields, Side::B, r),
    }
}

/// Side `to` gets the record the other side changed: only the fields that flow that way.
fn write_to(to: Side, record: &SideRecord, fields: &Fields) -> Outcome {
    let values = match to {
        Side::B => record.values.clone(),
        // Side a gets the shared fields; its one-way fields stay as they are.
        Side::A => subset(&record.values, &fields.shared),
    };
    Outcome::Write { to, values }
}

fn subset(values: &Map<String, Value>, fields: &[String]) -> Map<String, Value> {
    fields
        .iter()
        .map(|f| (f.clone(), values.get(f).cloned().unwrap_or(Value::Null)))
        .collect()
}

fn both_changed(
    spec: &TwoWaySpec,
    fields: &Fields,
    base: Option<Base<'_>>,
    a: &SideRecord,
    b: &SideRecord,
) -> Outcome {
    let differing: Vec<String> = fields
        .shared
        .iter()
        .filter(|f| !same_value(a.values.get(*f), b.values.get(*f)))
        .cloned()
        .collect();
    if differing.is_empty() {
        // Both sides hold the same values (a crash between the two writes heals here). Side
        // a's one-way fields are what b should have: b compares without them.
        return Outcome::Agreed(a.values.clone());
    }
    let changed_on = |record: &SideRecord, field: &str| match &base {
        Some(base) => !same_value(base.values.get(field), record.values.get(field)),
        None => true,
    };
    let newer_side = newer(a, b, spec.prefer);
    // Start from a's values (its one-way fields always stand), then settle each differing
    // field.
    let mut merged = a.values.clone();
    let mut took_a = false;
    let mut took_b = false;
    for field in &differing {
        let policy = spec
            .field_policies
            .get(field)
            .copied()
            .unwrap_or_else(|| match spec.policy {
                ConflictPolicy::MergeFields => match (changed_on(a, field), changed_on(b, field)) {
                    (true, false) => ConflictPolicy::PreferA,
                    (false, true) => ConflictPolicy::PreferB,
                    _ => spec.fallback,
                },
                other => other,
            });
        let side = match policy {
            ConflictPolicy::PreferA => Side::A,
            ConflictPolicy::PreferB => Side::B,
            ConflictPolicy::NewestWins => newer_side,
            ConflictPolicy::Manual | ConflictPolicy::MergeFields => {
                return Outcome::Conflict(ConflictDecision {
                    fields: differing,
                    policy: spec.policy,
                    resolution: Resolution::Queued,
                });
            }
        };
        match side {
            Side::A => took_a = true,
            Side::B => {
                took_b = true;
                merged.insert(
                    field.clone(),
                    b.values.get(field).cloned().unwrap_or(Value::Null),
                );
            }
        }
    }
    let taken = match (took_a, took_b) {
        (_, false) => Some(Side::A),
        (false, true) => Some(Side::B),
        (true, true) => None,
    };
    Outcome::Conflict(ConflictDecision {
        fields: differing,
        policy: spec.policy,
        resolution: Resolution::Values {
            values: merged,
            taken,
        },
    })
}

/// Side `updated` changed the record that the other side deleted.
fn delete_against_update(
    spec: &TwoWaySpec,
    fields: &Fields,
    updated: Side,
    record: &SideRecord,
) -> Outcome {
    let policy = match spec.policy {
        ConflictPolicy::MergeFields => spec.fallback,
        other => other,
    };
    let keep_update = match policy {
        ConflictPolicy::PreferA => Some(updated == Side::A),
        ConflictPolicy::PreferB => Some(updated == Side::B),
        // A deleted record has no modification time: keeping the data is the safe side.
        ConflictPolicy::NewestWins => Some(true),
        ConflictPolicy::Manual | ConflictPolicy::MergeFields => None,
    };
    let resolution = match keep_update {
        None => Resolution::Queued,
        Some(true) => Resolution::Values {
            values: match updated {
                Side::A => record.values.clone(),
                Side::B => subset(&record.values, &fields.shared),
            },
            taken: Some(updated),
        },
        Some(false) => Resolution::Delete,
    };
    Outcome::Conflict(ConflictDecision {
        fields: fields.shared.clone(),
        policy: spec.policy,
        resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(policy: ConflictPolicy) -> TwoWaySpec {
        TwoWaySpec {
            policy,
            ..TwoWaySpec::default()
        }
    }

    fn fields() -> Fields {
        Fields::new(
            vec!["id".into(), "name".into(), "phone".into()],
            &spec(ConflictPolicy::Manual),
        )
    }

    fn record(values: Value, modified: &str) -> SideRecord {
        let values = values.as_object().unwrap().clone();
        let fingerprint = fingerprint(&values, &fields().all);
        SideRecord {
            values,
            fingerprint,
            modified: Some(json!(modified)),
        }
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn one_sided_changes_go_to_the_other_side() {
        let f = fields();
        let a = record(
            json!({"id": 1, "name": "Ann", "phone": "1"}),
            "2026-01-01T00:00:00Z",
        );
        let s = spec(ConflictPolicy::Manual);
        assert_eq!(
            decide(&s, &f, None, SideState::Changed(&a), SideState::Absent),
            Outcome::Write {
                to: Side::B,
                values: a.values.clone()
            }
        );
        assert_eq!(
            decide(&s, &f, None, SideState::Same, SideState::Changed(&a)),
            Outcome::Write {
                to: Side::A,
                values: a.values.clone()
            }
        );
        assert_eq!(
            decide(&s, &f, None, SideState::Deleted, SideState::Same),
            Outcome::Delete { on: Side::B }
        );
        assert_eq!(
            decide(&s, &f, None, SideState::Deleted, SideState::Deleted),
            Outcome::Forget
        );
        assert_eq!(
            decide(&s, &f, None, SideState::Same, SideState::Same),
            Outcome::Nothing
        );
    }

    /// Every pair of states that [`needs_base_values`] says reads no base values decides
    /// the same, under every policy, whatever the base's values (or without them).
    #[test]
    fn only_the_states_that_need_base_values_read_them() {
        let f = fields();
        let a = record(
            json!({"id": 1, "name": "Anne", "phone": "1"}),
            "2026-01-02T00:00:00Z",
        );
        let b = record(
            json!({"id": 1, "name": "Ann", "phone": "2"}),
            "2026-01-01T00:00:00Z",
        );
        let bases = [
            map(json!({"id": 1, "name": "Ann", "phone": "1"})),
            map(json!({"id": 1, "name": "Anne", "phone": "2"})),
            map(json!({})),
        ];
        let states = |record| {
            [
                SideState::Same,
                SideState::Changed(record),
                SideState::Deleted,
                SideState::Absent,
            ]
        };
        let policies = [
            ConflictPolicy::NewestWins,
            ConflictPolicy::PreferA,
            ConflictPolicy::PreferB,
            ConflictPolicy::MergeFields,
            ConflictPolicy::Manual,
        ];
        let mut needing = 0;
        for sa in states(&a) {
            for sb in states(&b) {
                if needs_base_values(sa.change(), sb.change()) {
                    needing += 1;
                    continue;
                }
                for policy in policies {
                    let s = TwoWaySpec {
                        fallback: ConflictPolicy::Manual,
                        ..spec(policy)
                    };
                    let without = decide(&s, &f, None, sa, sb);
                    for base in &bases {
                        assert_eq!(
                            decide(&s, &f, Some(Base { values: base }), sa, sb),
                            without,
                            "{sa:?} / {sb:?} under {policy:?}"
                        );
                    }
                    assert!(
                        !matches!(without, Outcome::Conflict(_)),
                        "{sa:?} / {sb:?} is a conflict, which records its base"
                    );
                }
            }
        }
        assert_eq!(needing, 3);
        // And the states that need them do read them: merge-fields of two changes.
        let s = spec(ConflictPolicy::MergeFields);
        let decided = |base: &Map<String, Value>| {
            decide(
                &s,
                &f,
                Some(Base { values: base }),
                SideState::Changed(&a),
                SideState::Changed(&b),
            )
        };
        assert_ne!(decided(&bases[0]), decided(&bases[1]));
    }

    /// The fingerprint hashes each value's normalized JSON text: the same bits as hashing
    /// `normalize(value).to_string()`, which the stored fingerprints were made with.
    #[test]
    fn fingerprints_hash_the_normalized_text() {
        let reference = |values: &Map<String, Value>, fields: &[String]| {
            let mut hasher = Xxh3::new();
            for field in fields {
                let text = normalize(values.get(field).unwrap_or(&Value::Null)).to_string();
                hasher.update(&(field.len() as u32).to_le_bytes());
                hasher.update(field.as_bytes());
                hasher.update(&(text.len() as u32).to_le_bytes());
                hasher.update(text.as_bytes());
            }
            hasher.digest128()
        };
        let values = map(json!({
            "int": 5, "neg": -3, "big": u64::MAX, "whole": 5.0, "half": 2.5, "huge": 1e300,
            "tiny": -0.0, "text": "Zoë \"q\"\n", "empty": "", "yes": true, "null": null,
            "list": [1.0, "x", {"b": 2.0, "a": null}], "object": {"z": 1, "a": [3.0]}
        }));
        let mut fields: Vec<String> = values.keys().cloned().collect();
        fields.push("missing".into());
        assert_eq!(fingerprint(&values, &fields), reference(&values, &fields));
        for f in &fields {
            let one = [f.clone()];
            assert_eq!(fingerprint(&values, &one), reference(&values, &one), "{f}");
        }
        // 5 and 5.0 are one value; 5 and "5" are not.
        let five = |v: Value| fingerprint(&map(json!({ "n": v })), &["n".into()]);
        assert_eq!(five(json!(5)), five(json!(5.0)));
        assert_ne!(five(json!(5)), five(json!("5")));
    }

    #[test]
    fn equal_changes_on_both_sides_agree() {
        let f = fields();
        let a = record(
            json!({"id": 1, "name": "Ann", "phone": 5}),
            "2026-01-01T00:00:00Z",
        );
        let b = record(
            json!({"id": 1, "name": "Ann", "phone": 5.0}),
            "2026-01-02T00:00:00Z",
        );
        let out = decide(
            &spec(ConflictPolicy::Manual),
            &f,
            None,
            SideState::Changed(&a),
            SideState::Changed(&b),
        );
        assert_eq!(out, Outcome::Agreed(a.values.clone()));
    }

    #[test]
    fn policies_decide_conflicts() {
        let f = fields();
        let base = map(json!({"id": 1, "name": "Ann", "phone": "1"}));
        let a = record(
            json!({"id": 1, "name": "Anne", "phone": "1"}),
            "2026-01-02T00:00:00Z",
        );
        let b = record(
            json!({"id": 1, "name": "Ann", "phone": "2"}),
            "2026-01-01 00:00:00",
        );
        let run = |policy, fallback| {
            let s = TwoWaySpec {
                fallback,
                ..spec(policy)
            };
            decide(
                &s,
                &f,
                Some(Base { values: &base }),
                SideState::Changed(&a),
                SideState::Changed(&b),
            )
        };
        let resolved = |o: Outcome| match o {
            Outcome::Conflict(d) => d.resolution,
            other => panic!("not a conflict: {other:?}"),
        };
        // a is newer.
        assert_eq!(
            resolved(run(ConflictPolicy::NewestWins, ConflictPolicy::Manual)),
            Resolution::Values {
                values: a.values.clone(),
                taken: Some(Side::A)
            }
        );
        assert_eq!(
            resolved(run(ConflictPolicy::PreferB, ConflictPolicy::Manual)),
            Resolution::Values {
                values: b.values.clone(),
                taken: Some(Side::B)
            }
        );
        // Each side changed a different field: merged without a fallback.
        assert_eq!(
            resolved(run(ConflictPolicy::MergeFields, ConflictPolicy::Manual)),
            Resolution::Values {
                values: map(json!({"id": 1, "name": "Anne", "phone": "2"})),
                taken: None
            }
        );
        assert_eq!(
            resolved(run(ConflictPolicy::Manual, ConflictPolicy::Manual)),
            Resolution::Queued
        );
        // Both change the same field: merge-fields falls back.
        let b2 = record(
            json!({"id": 1, "name": "Annie", "phone": "1"}),
            "2026-01-03T00:00:00Z",
        );
        let s = TwoWaySpec {
            fallback: ConflictPolicy::NewestWins,
            ..spec(ConflictPolicy::MergeFields)
        };
        let out = decide(
            &s,
            &f,
            Some(Base { values: &base }),
            SideState::Changed(&a),
            SideState::Changed(&b2),
        );
        assert_eq!(
            resolved(out),
            Resolution::Values {
                values: b2.values.clone(),
                taken: Some(Side::B)
            }
        );
    }

    #[test]
    fn a_field_policy_overrides_the_syncs() {
        let f = fields();
        let base = map(json!({"id": 1, "name": "Ann", "phone": "1"}));
        let a = record(
            json!({"id": 1, "name": "Anne", "phone": "3"}),
            "2026-01-02T00:00:00Z",
        );
        let b = record(
            json!({"id": 1, "name": "Annie", "phone": "2"}),
            "2026-01-01T00:00:00Z",
        );
        let mut s = spec(ConflictPolicy::PreferA);
        s.field_policies
            .insert("phone".into(), ConflictPolicy::PreferB);
        let out = decide(
            &s,
            &f,
            Some(Base { values: &base }),
            SideState::Changed(&a),
            SideState::Changed(&b),
        );
        let Outcome::Conflict(d) = out else { panic!() };
        assert_eq!(d.fields, ["name", "phone"]);
        assert_eq!(
            d.resolution,
            Resolution::Values {
                values: map(json!({"id": 1, "name": "Anne", "phone": "2"})),
                taken: None
            }
        );
    }

    #[test]
    fn a_delete_against_an_update_is_a_conflict() {
        let f = fields();
        let a = record(
            json!({"id": 1, "name": "Anne", "phone": "1"}),
            "2026-01-02T00:00:00Z",
        );
        let decided = |policy| match decide(
            &spec(policy),
            &f,
            None,
            SideState::Changed(&a),
            SideState::Deleted,
        ) {
            Outcome::Conflict(d) => d.resolution,
            other => panic!("{other:?}"),
        };
        assert_eq!(decided(ConflictPolicy::PreferB), Resolution::Delete);
        assert_eq!(
            decided(ConflictPolicy::NewestWins),
            Resolution::Values {
                values: a.values.clone(),
                taken: Some(Side::A)
            }
        );
        assert_eq!(decided(ConflictPolicy::Manual), Resolution::Queued);
    }

    #[test]
    fn modification_times_parse_in_the_usual_forms() {
        let a = instant(&json!("2026-01-02T03:04:05.123Z")).unwrap();
        assert_eq!(a, instant(&json!("2026-01-02 03:04:05.123")).unwrap());
        assert_eq!(
            instant(&json!(1_767_323_045_123i64)).unwrap(),
            instant(&json!(1_767_323_045.123)).unwrap()
        );
        assert!(instant(&json!("yesterday")).is_none());
    }

    #[test]
    fn fingerprints_ignore_number_spelling_but_not_values() {
        let fields = ["x".to_string()];
        let one = fingerprint(&map(json!({"x": 1})), &fields);
        assert_eq!(one, fingerprint(&map(json!({"x": 1.0})), &fields));
        assert_ne!(one, fingerprint(&map(json!({"x": 2})), &fields));
        assert_ne!(one, fingerprint(&map(json!({"x": "1"})), &fields));
    }
}
