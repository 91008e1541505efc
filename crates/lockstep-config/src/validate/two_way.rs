//! `[syncs.NAME.two_way]`: how a two-way sync (`mode = "two-way"`) reads side b and decides
//! conflicts, and the rules a two-way sync's mapping must follow.
//!
//! Invariants:
//! - A two-way sync's mapping is invertible: every field not listed in `one_way` is a plain
//!   copy of a source field (a rename), so that what side b holds can be written back to side
//!   a. Anything else is refused with the field named.
//! - `newest-wins` needs a modification time on both sides: the sync's `cursor` (side a) and
//!   `two_way.b_cursor` (side b).
//! - A side that keeps deleted records as tombstones names its mark: the sync's `tombstone`
//!   (side a) and `two_way.b_tombstone` (side b).

use lockstep_core::{ConflictPolicy, FieldMapping, Side, SyncMode, TwoWaySpec};

use super::reader::{entries, Reader, Span, Tbl};
use crate::diagnostic::ErrorKind;

/// The keys accepted in `[syncs.NAME.two_way]`.
pub(super) const TWO_WAY_KEYS: &[&str] = &[
    "policy",
    "fallback",
    "prefer",
    "b_cursor",
    "b_tombstone",
    "fields",
    "one_way",
];

/// The accepted conflict policies.
const POLICIES: &[(&str, ConflictPolicy)] = &[
    ("newest-wins", ConflictPolicy::NewestWins),
    ("prefer-a", ConflictPolicy::PreferA),
    ("prefer-b", ConflictPolicy::PreferB),
    ("merge-fields", ConflictPolicy::MergeFields),
    ("manual", ConflictPolicy::Manual),
];

/// The accepted sides.
const SIDES: &[(&str, Side)] = &[("a", Side::A), ("b", Side::B)];

/// What the sync's other keys say, for the two-way rules.
pub(super) struct TwoWayContext<'f> {
    pub(super) name: &'f str,
    pub(super) mode: SyncMode,
    /// The span of `mode`, or of the sync's table.
    pub(super) mode_span: Span,
    pub(super) has_cursor: bool,
    pub(super) fields: &'f [FieldMapping],
    pub(super) field_spans: &'f [Span],
    pub(super) ledger_off_span: Option<Span>,
}

impl Reader<'_> {
    /// Reads `two_way` of sync table `t` and checks the two-way rules. `None` for a one-way
    /// sync (after reporting a `two_way` table it should not have).
    pub(super) fn two_way(
        &mut self,
        t: &Tbl<'_, '_>,
        cx: &TwoWayContext<'_>,
    ) -> Option<TwoWaySpec> {
        let name = cx.name;
        let table = self.table(t, "two_way");
        if cx.mode != SyncMode::TwoWay {
            if let Some(table) = table {
                self.error(
                    ErrorKind::InvalidValue,
                    table.span,
                    format!("sync `{name}` has a `two_way` table but is not a two-way sync"),
                    "only for mode = \"two-way\"",
                    "set mode = \"two-way\", or remove the table",
                );
            }
            return None;
        }
        let Some(tw) = table else {
            self.error(
                ErrorKind::MissingKey,
                cx.mode_span.clone(),
                format!("two-way sync `{name}` needs a `[syncs.{name}.two_way]` table with its conflict `policy`"),
                "no conflict policy",
                format!(
                    "add [syncs.{name}.two_way] with policy = \"newest-wins\", \"prefer-a\", \
                     \"prefer-b\", \"merge-fields\" or \"manual\" (see docs/two-way.md)"
                ),
            );
            return None;
        };
        self.check_keys(&tw, TWO_WAY_KEYS);
        let policy = if tw.has("policy") {
            self.enumerated(&tw, "policy", POLICIES)
        } else {
            self.missing(
                &tw,
                "policy",
                "policy = \"newest-wins\", \"prefer-a\", \"prefer-b\", \"merge-fields\" or \
                 \"manual\"",
            );
            None
        };
        let fallback = self.enumerated(&tw, "fallback", POLICIES);
        if fallback == Some(ConflictPolicy::MergeFields) {
            let span = tw.get("fallback").map_or(tw.span.clone(), |v| v.span());
            self.error(
                ErrorKind::InvalidValue,
                span,
                format!("`{}` cannot be `merge-fields`", tw.child("fallback")),
                "merge-fields again",
                "the fallback decides the fields both sides changed: name \"newest-wins\", \
                 \"prefer-a\", \"prefer-b\" or \"manual\"",
            );
        }
        let prefer = self.enumerated(&tw, "prefer", SIDES).unwrap_or(Side::A);
        let b_cursor = self.name_string(
            &tw,
            "b_cursor",
            "name side b's field that records when a record last changed there, e.g. \
             b_cursor = \"updated_at\"",
        );
        let b_tombstone = self.name_string(
            &tw,
            "b_tombstone",
            "name side b's field that marks a deleted record, e.g. b_tombstone = \"archived\"",
        );

        let mut field_policies = std::collections::BTreeMap::new();
        if let Some(ft) = self.table(&tw, "fields") {
            for (key, _) in entries(ft.table) {
                let field: &str = key.get_ref();
                if let Some(p) = self.enumerated(&ft, field, POLICIES) {
                    if p == ConflictPolicy::MergeFields {
                        self.error(
                            ErrorKind::InvalidValue,
                            key.span(),
                            format!("`{}` cannot be `merge-fields`", ft.child(field)),
                            "a field's own policy",
                            "a field either takes one side's value or waits for a person: \
                             name \"newest-wins\", \"prefer-a\", \"prefer-b\" or \"manual\"",
                        );
                        continue;
                    }
                    if !self.is_mapped(cx, field) {
                        self.unknown_field(cx, ft.child(field), key.span());
                        continue;
                    }
                    field_policies.insert(field.to_owned(), p);
                }
            }
        }
        let mut one_way = Vec::new();
        if let Some((names, _)) = self.strings(&tw, "one_way", false) {
            for n in names {
                if !self.is_mapped(cx, n.value) {
                    self.unknown_field(cx, format!("{}.one_way", tw.path), n.span);
                    continue;
                }
                one_way.push(n.value.to_owned());
            }
        }

        // The mapping must be invertible, but for the fields that only flow from a to b.
        for (mapping, span) in cx.fields.iter().zip(cx.field_spans) {
            if one_way.contains(&mapping.target) {
                continue;
            }
            let plain_target = matches!(mapping.target_path(), Ok(p) if p.len() == 1);
            let plain_source = !mapping.source.contains('.') && mapping.is_copy();
            if !(plain_target && plain_source) {
                self.error(
                    ErrorKind::InvalidValue,
                    span.clone(),
                    format!(
                        "field `{}` of two-way sync `{name}` is `{}`, which cannot be written \
                         back to side a",
                        mapping.target, mapping.source
                    ),
                    "not invertible",
                    format!(
                        "a two-way mapping may only rename fields; make `{}` a plain copy of \
                         a source field, or list it in `[syncs.{name}.two_way] one_way` so it \
                         only flows from a to b",
                        mapping.target
                    ),
                );
            }
        }

        if policy == Some(ConflictPolicy::NewestWins)
            || field_policies
                .values()
                .any(|p| *p == ConflictPolicy::NewestWins)
            || fallback == Some(ConflictPolicy::NewestWins)
        {
            let span = tw.get("policy").map_or(tw.span.clone(), |v| v.span());
            if !cx.has_cursor {
                self.error(
                    ErrorKind::MissingCursor,
                    span.clone(),
                    format!("newest-wins in sync `{name}` needs side a's modification time"),
                    "no cursor on side a",
                    "set the sync's cursor = \"<side a's last-modified field>\"",
                );
            }
            if b_cursor.is_none() {
                self.error(
                    ErrorKind::MissingCursor,
                    span,
                    format!("newest-wins in sync `{name}` needs side b's modification time"),
                    "no b_cursor",
                    "set b_cursor = \"<side b's last-modified field>\" in the two_way table",
                );
            }
        }
        if let Some(span) = cx.ledger_off_span.clone() {
            self.error(
                ErrorKind::InvalidValue,
                span,
                format!("two-way sync `{name}` needs its ledger"),
                "ledger = false",
                "a two-way sync compares both sides with the values they last agreed on, \
                 which the ledger keeps: remove `ledger = false`",
            );
        }
        Some(TwoWaySpec {
            b_cursor_field: b_cursor.map(|c| c.value.to_owned()),
            b_tombstone_field: b_tombstone.map(|t| t.value.to_owned()),
            policy: policy?,
            fallback: fallback.unwrap_or(ConflictPolicy::Manual),
            prefer,
            field_policies,
            one_way,
        })
    }

    /// Whether `field` is a mapped (side b) field of the sync; any field when the mapping
    /// passes every field through.
    fn is_mapped(&self, cx: &TwoWayContext<'_>, field: &str) -> bool {
        cx.fields.is_empty() || cx.fields.iter().any(|m| m.target == field)
    }

    fn unknown_field(&mut self, cx: &TwoWayContext<'_>, path: String, span: Span) {
        let mapped: Vec<&str> = cx.fields.iter().map(|m| m.target.as_str()).collect();
        self.error(
            ErrorKind::InvalidValue,
            span,
            format!("`{path}` names a field the sync's mapping does not have"),
            "not a mapped field",
            format!("name one of the mapped fields: {}", mapped.join(", ")),
        );
    }
}
