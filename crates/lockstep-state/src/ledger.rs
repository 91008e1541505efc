//! The record ledger's bulk statements, one flavour per backend: lookups, upserts and deletes
//! of many keys at once; and the key list other many-key statements (resolving rejected
//! records, pending deletes) read their keys from.
//!
//! A batch of keys or ledger rows travels as a few parameters, never as one parameter per
//! value: SQLite gets the whole batch as one JSON text that `json_each` unpacks, PostgreSQL
//! gets one array per column that `UNNEST` zips into rows. The SQLite driver looks each
//! numbered parameter up by name (`sqlite3_bind_parameter_name` walks a list), so a statement
//! of 5,000 parameters cost time in the square of that number: measured, 61% of a default
//! full run's CPU went there (issue 9). With a fixed, small number of parameters per
//! statement the statements are also prepared once and reused.
//!
//! Invariants:
//! - The statements mean the same on both backends: a lookup returns the rows of the keys
//!   given that exist; an upsert inserts or replaces whole rows (a missing `synced_at` becomes
//!   the commit time); a delete forgets the keys given.
//! - Upserts given to PostgreSQL carry each key once (it refuses to update a row twice in one
//!   statement); [`crate::sql::dedup_upserts`] sees to that before these functions run.

use crate::types::LedgerEntry;

/// Keys or rows per statement. Bounds the size of one statement's parameter (a JSON text or
/// arrays), not their number.
pub(crate) const LEDGER_CHUNK: usize = 10_000;

/// The columns a lookup returns, in [`crate::sql::LedgerRow`]'s order.
const COLUMNS: &str = r#""key", "dest_key", "fingerprint", "source_version", "synced_at""#;

/// What an upsert does with a key the ledger already has: replace the whole row.
const ON_CONFLICT: &str = r#"ON CONFLICT ("sync", "key") DO UPDATE SET
    "dest_key" = excluded."dest_key", "fingerprint" = excluded."fingerprint",
    "source_version" = excluded."source_version", "synced_at" = excluded."synced_at""#;

/// The SQLite flavour: a batch is one JSON array parameter.
pub(crate) mod sqlite {
    use std::sync::LazyLock;

    use super::{LedgerEntry, COLUMNS, ON_CONFLICT};

    /// `$1` the sync, `$2` a JSON array of keys.
    pub(crate) fn lookup_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                r#"SELECT {COLUMNS} FROM "ledger"
                   WHERE "sync" = $1 AND "key" IN (SELECT "value" FROM json_each($2))"#
            )
        });
        &SQL
    }

    /// `$1` the sync, `$2` the commit time, `$3` a JSON array of rows
    /// `[key, dest_key, fingerprint as hex, source_version, synced_at]`. The `WHERE true`
    /// lets SQLite's parser tell the upsert clause from a join constraint.
    pub(crate) fn upsert_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                r#"INSERT INTO "ledger" ("sync", "key", "dest_key", "fingerprint", "source_version", "synced_at")
                   SELECT $1, "value" ->> 0, "value" ->> 1, unhex("value" ->> 2), "value" ->> 3,
                          coalesce("value" ->> 4, $2)
                   FROM json_each($3) WHERE true
                   {ON_CONFLICT}"#
            )
        });
        &SQL
    }

    /// `$1` the sync, `$2` a JSON array of keys.
    pub(crate) fn delete_sql() -> &'static str {
        r#"DELETE FROM "ledger"
           WHERE "sync" = $1 AND "key" IN (SELECT "value" FROM json_each($2))"#
    }

    /// A one-column table, column `"value"`, of the keys in parameter `$n`, bound as
    /// [`key_list`] makes it.
    pub(crate) fn key_list_sql(n: usize) -> String {
        format!(r#"SELECT "value" FROM json_each(${n})"#)
    }

    /// `keys` as the one parameter [`key_list_sql`] reads: a JSON array.
    pub(crate) fn key_list<'k>(keys: impl IntoIterator<Item = &'k str>) -> String {
        serde_json::Value::from_iter(keys).to_string()
    }

    /// The JSON array of `entries`, one array of five values per row.
    pub(crate) fn rows_json(entries: &[&LedgerEntry]) -> String {
        let rows: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| {
                serde_json::json!([
                    e.key,
                    e.dest_key,
                    format!("{:032x}", e.fingerprint),
                    e.source_version,
                    e.synced_at,
                ])
            })
            .collect();
        serde_json::Value::from(rows).to_string()
    }
}

/// The PostgreSQL flavour: a batch is one array per column.
pub(crate) mod postgres {
    use std::sync::LazyLock;

    use super::{LedgerEntry, COLUMNS, ON_CONFLICT};

    /// `$1` the sync, `$2` a `text[]` of keys.
    pub(crate) fn lookup_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(r#"SELECT {COLUMNS} FROM "ledger" WHERE "sync" = $1 AND "key" = ANY($2)"#)
        });
        &SQL
    }

    /// `$1` the sync, `$2` the commit time, `$3`..`$7` the columns as arrays.
    pub(crate) fn upsert_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| {
            format!(
                r#"INSERT INTO "ledger" ("sync", "key", "dest_key", "fingerprint", "source_version", "synced_at")
                   SELECT $1, u."key", u."dest_key", u."fingerprint", u."source_version",
                          coalesce(u."synced_at", $2)
                   FROM UNNEST($3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[])
                        AS u("key", "dest_key", "fingerprint", "source_version", "synced_at")
                   {ON_CONFLICT}"#
            )
        });
        &SQL
    }

    /// `$1` the sync, `$2` a `text[]` of keys.
    pub(crate) fn delete_sql() -> &'static str {
        r#"DELETE FROM "ledger" WHERE "sync" = $1 AND "key" = ANY($2)"#
    }

    /// A one-column table, column `"value"`, of the keys in parameter `$n`, bound as
    /// [`key_list`] makes it.
    pub(crate) fn key_list_sql(n: usize) -> String {
        format!(r#"SELECT unnest(${n}::text[]) AS "value""#)
    }

    /// `keys` as the one parameter [`key_list_sql`] reads: a `text[]`.
    pub(crate) fn key_list<'k>(keys: impl IntoIterator<Item = &'k str>) -> Vec<&'k str> {
        keys.into_iter().collect()
    }

    /// The upsert's columns, as the arrays `upsert_sql` binds.
    pub(crate) struct Columns<'a> {
        pub(crate) keys: Vec<&'a str>,
        pub(crate) dest_keys: Vec<Option<&'a str>>,
        pub(crate) fingerprints: Vec<[u8; 16]>,
        pub(crate) source_versions: Vec<Option<&'a str>>,
        pub(crate) synced_at: Vec<Option<&'a str>>,
    }

    pub(crate) fn columns<'a>(entries: &[&'a LedgerEntry]) -> Columns<'a> {
        Columns {
            keys: entries.iter().map(|e| e.key.as_str()).collect(),
            dest_keys: entries.iter().map(|e| e.dest_key.as_deref()).collect(),
            fingerprints: entries
                .iter()
                .map(|e| e.fingerprint.to_be_bytes())
                .collect(),
            source_versions: entries
                .iter()
                .map(|e| e.source_version.as_deref())
                .collect(),
            synced_at: entries.iter().map(|e| e.synced_at.as_deref()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_rows_carry_the_fingerprint_as_32_hex_digits() {
        let entry = LedgerEntry {
            key: r#"[1,"a"]"#.into(),
            dest_key: None,
            fingerprint: 0xff,
            source_version: Some("v".into()),
            synced_at: None,
        };
        let json: serde_json::Value = serde_json::from_str(&sqlite::rows_json(&[&entry])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([[
                r#"[1,"a"]"#,
                null,
                "000000000000000000000000000000ff",
                "v",
                null
            ]])
        );
    }
}
