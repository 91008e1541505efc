//! `[syncs.NAME.cdc]`: the change log of a cdc sync (`mode = "cdc"`): its replication slot,
//! its publication and the WAL-retention alert threshold.
//!
//! Invariants:
//! - A cdc sync always gets a [`CdcSpec`]: without the table, the slot and the publication
//!   are named after the sync (`lockstep_<sync>`, lowercased, other characters as `_`).
//! - A cdc sync's deletes come from the change log: a `cursor` or a `tombstone` is refused
//!   (the engine uses the reserved tombstone field of cdc reads), and `[syncs.NAME.cdc]` on a
//!   sync of another mode is refused too.

use lockstep_core::{CdcSpec, SyncMode};

use super::reader::{Reader, Tbl};
use crate::diagnostic::ErrorKind;

/// The keys accepted in `[syncs.NAME.cdc]`.
pub(super) const CDC_KEYS: &[&str] = &["slot", "publication", "max_retained_wal"];

/// The default WAL-retention alert threshold: 1 GiB.
pub const DEFAULT_MAX_RETAINED_WAL: u64 = 1 << 30;

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1).
const MAX_NAME: usize = 63;

/// The default slot and publication name of sync `sync`.
pub fn default_cdc_name(sync: &str) -> String {
    let mut name: String = format!("lockstep_{sync}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(MAX_NAME);
    name
}

/// Parses a size such as `"512MB"`, `"1GB"`, `"64kB"` or `"1048576"` (bytes; units are
/// powers of 1024, as PostgreSQL's own settings spell them).
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

impl Reader<'_> {
    /// The sync's change-log settings: `Some` for a cdc sync, `None` for every other mode
    /// (a `[syncs.NAME.cdc]` table there is reported).
    pub(super) fn cdc(&mut self, t: &Tbl<'_, '_>, name: &str, mode: SyncMode) -> Option<CdcSpec> {
        let table = self.table(t, "cdc");
        if mode != SyncMode::Cdc {
            if let Some(table) = table {
                self.error(
                    ErrorKind::InvalidValue,
                    t.key_span("cdc").unwrap_or(table.span),
                    format!("`{}` applies to mode \"cdc\" only", t.child("cdc")),
                    "not a cdc sync",
                    "set mode = \"cdc\", or remove the table",
                );
            }
            return None;
        }
        for key in ["cursor", "tombstone"] {
            if let Some(span) = t.key_span(key) {
                self.error(
                    ErrorKind::InvalidValue,
                    span,
                    format!(
                        "sync `{name}` uses mode \"cdc\", which reads the change log and needs no \
                         `{key}`"
                    ),
                    "not used by cdc",
                    "remove it: inserts, updates and deletes come from the source's change \
                     log (PostgreSQL logical decoding)",
                );
            }
        }
        let mut spec = CdcSpec {
            slot: default_cdc_name(name),
            publication: default_cdc_name(name),
            max_retained_wal: DEFAULT_MAX_RETAINED_WAL,
        };
        let Some(table) = table else {
            return Some(spec);
        };
        self.check_keys(&table, CDC_KEYS);
        for key in ["slot", "publication"] {
            let hint = format!(
                "a PostgreSQL name of lowercase letters, digits and underscores, at most \
                 {MAX_NAME} characters, e.g. {key} = \"{}\"",
                default_cdc_name(name)
            );
            let Some(value) = self.name_string(&table, key, &hint) else {
                continue;
            };
            let valid = value.value.len() <= MAX_NAME
                && value
                    .value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid {
                self.error(
                    ErrorKind::InvalidValue,
                    value.span.clone(),
                    format!(
                        "`{}` must be a name of lowercase letters, digits and underscores",
                        table.child(key)
                    ),
                    "invalid name",
                    hint,
                );
                continue;
            }
            match key {
                "slot" => spec.slot = value.value.to_owned(),
                _ => spec.publication = value.value.to_owned(),
            }
        }
        if let Some(value) = self.string(&table, "max_retained_wal") {
            match parse_size(value.value) {
                Some(bytes) if bytes > 0 => spec.max_retained_wal = bytes,
                _ => self.error(
                    ErrorKind::InvalidValue,
                    value.span.clone(),
                    format!(
                        "`{}` must be a size such as \"1GB\", found `{}`",
                        table.child("max_retained_wal"),
                        value.value
                    ),
                    "not a size",
                    "write a number of bytes with a unit: B, kB, MB, GB or TB (powers of 1024), \
                     e.g. max_retained_wal = \"1GB\"",
                ),
            }
        }
        Some(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_default_names() {
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("64kB"), Some(64 << 10));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("1 MB"), Some(1 << 20));
        assert_eq!(parse_size("1PB"), None);
        assert_eq!(parse_size("MB"), None);
        assert_eq!(default_cdc_name("Contacts-EU"), "lockstep_contacts_eu");
        assert_eq!(default_cdc_name(&"x".repeat(100)).len(), 63);
    }
}
