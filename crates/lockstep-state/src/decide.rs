//! A person's decision on an open conflict, built from what they chose: a side to take, and
//! fields to set on top of it. The CLI's `lockstep conflicts resolve` and the daemon's status
//! page both build their [`ConflictResolution`] here, so they decide alike.
//!
//! Invariants: pure (no I/O); a field can only be set when the record has it on some side
//! (or in the base); taking a side that deleted the record resolves to a delete on both
//! sides, and setting fields on it is refused.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::two_way::{Conflict, ConflictResolution};

/// A side of a two-way sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakeSide {
    A,
    B,
}

impl TakeSide {
    pub fn as_str(self) -> &'static str {
        match self {
            TakeSide::A => "a",
            TakeSide::B => "b",
        }
    }
}

/// Why a decision cannot be built.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecideError {
    /// Neither a side nor a field was chosen.
    #[error("say what to keep: a side to take, or fields to set")]
    Nothing,
    /// Fields were set on a side that deleted the record.
    #[error("side {0} deleted the record, so there are no values to set fields on; take the other side and set fields on top of it")]
    SideDeleted(&'static str),
    /// A field the record does not have.
    #[error("the record has no field `{field}`; its fields are: {fields}")]
    UnknownField { field: String, fields: String },
}

/// The resolution of `conflict` that takes `take` (with none, side b, else side a, else the
/// base, as the starting values for `set`) and sets each `(field, value)` of `set` on top,
/// decided by `by`. Its decision is `take a`, `take b` or `set`.
pub fn decide(
    conflict: &Conflict,
    take: Option<TakeSide>,
    set: &[(String, Value)],
    by: impl Into<String>,
) -> Result<ConflictResolution, DecideError> {
    let by = by.into();
    if take.is_none() && set.is_empty() {
        return Err(DecideError::Nothing);
    }
    let taken = match take {
        Some(TakeSide::A) => conflict.a.clone(),
        Some(TakeSide::B) => conflict.b.clone(),
        None => conflict
            .b
            .clone()
            .or_else(|| conflict.a.clone())
            .or_else(|| conflict.base.clone()),
    };
    if set.is_empty() {
        return Ok(ConflictResolution {
            decision: format!("take {}", take.map_or("", TakeSide::as_str)),
            values: taken,
            by,
        });
    }
    let Some(mut values) = taken else {
        return Err(DecideError::SideDeleted(take.map_or("", TakeSide::as_str)));
    };
    for (field, value) in set {
        if !known_field(conflict, field) {
            return Err(DecideError::UnknownField {
                field: field.clone(),
                fields: fields(conflict).join(", "),
            });
        }
        values.insert(field.clone(), value.clone());
    }
    Ok(ConflictResolution {
        decision: "set".into(),
        values: Some(values),
        by,
    })
}

/// Whether the record has `field` on some side or in its base.
pub fn known_field(conflict: &Conflict, field: &str) -> bool {
    [&conflict.base, &conflict.a, &conflict.b]
        .into_iter()
        .flatten()
        .any(|m| m.contains_key(field))
}

/// The record's fields on either side, sorted.
pub fn fields(conflict: &Conflict) -> Vec<String> {
    let names: BTreeSet<&String> = [&conflict.a, &conflict.b]
        .into_iter()
        .flatten()
        .flat_map(Map::keys)
        .collect();
    names.into_iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::two_way::ConflictStatus;

    fn conflict(a: Option<Value>, b: Option<Value>) -> Conflict {
        Conflict {
            id: 1,
            sync: "s".into(),
            run: 1,
            key: "[1]".into(),
            base: json!({"email": "o", "name": "N"}).as_object().cloned(),
            a: a.and_then(|v| v.as_object().cloned()),
            b: b.and_then(|v| v.as_object().cloned()),
            fields: vec!["email".into()],
            policy: "manual".into(),
            decision: "queued".into(),
            resolution: None,
            resolution_deletes: false,
            status: ConflictStatus::Open,
            created_at: String::new(),
            resolved_by: None,
            resolved_at: None,
        }
    }

    #[test]
    fn sides_and_sets() {
        let c = conflict(
            Some(json!({"email": "a", "name": "N"})),
            Some(json!({"email": "b", "name": "N"})),
        );
        let r = decide(&c, Some(TakeSide::A), &[], "me").unwrap();
        assert_eq!(
            (r.decision.as_str(), r.values.unwrap()["email"].clone()),
            ("take a", json!("a"))
        );
        let r = decide(&c, None, &[("email".into(), json!("x"))], "me").unwrap();
        assert_eq!(r.decision, "set");
        let values = r.values.unwrap();
        assert_eq!(
            (values["email"].clone(), values["name"].clone()),
            (json!("x"), json!("N"))
        );
        assert_eq!(decide(&c, None, &[], "me"), Err(DecideError::Nothing));
        let unknown = decide(&c, Some(TakeSide::B), &[("nope".into(), json!(1))], "me");
        assert_eq!(
            unknown,
            Err(DecideError::UnknownField {
                field: "nope".into(),
                fields: "email, name".into()
            })
        );
    }

    #[test]
    fn a_deleted_side_resolves_to_a_delete_and_takes_no_fields() {
        let c = conflict(None, Some(json!({"email": "b", "name": "N"})));
        let r = decide(&c, Some(TakeSide::A), &[], "me").unwrap();
        assert_eq!(r.values, None);
        assert_eq!(
            decide(&c, Some(TakeSide::A), &[("email".into(), json!("x"))], "me"),
            Err(DecideError::SideDeleted("a"))
        );
    }
}
