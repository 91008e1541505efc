//! The record ledger's bulk statements, one flavour per backend: lookups, upserts and deletes
//! of many keys at once; and the key list other many-key statements (resolving rejected
//! records, pending deletes) read their keys from.
//!
//! A batch of keys or ledger rows never travels as one numbered parameter per value: the
//! SQLite driver looks each numbered parameter up by name (`sqlite3_bind_parameter_name`
//! walks a list), so a statement of 5,000 of them cost time in the square of that number:
//! measured, 61% of a default full run's CPU went there (issue 9). On SQLite a batch of keys
//! is one JSON text that `json_each` unpacks, and ledger rows go in multi-row `VALUES`
//! statements of anonymous `?` parameters (no names to look up) of four fixed sizes;
//! unpacking rows from JSON took about a third of the state store's CPU in a full run
//! (`jsonb_each`, which would hand rows over without re-parsing, is not in the SQLite this
//! build bundles). PostgreSQL gets one array per column that `UNNEST` zips into rows. Every
//! statement has a fixed text, so each is prepared once and reused.
//!
//! Invariants:
//! - The statements mean the same on both backends: a lookup returns the rows of the keys
//!   given that exist; an upsert inserts or replaces whole rows (a missing `synced_at` becomes
//!   the commit time); a delete forgets the keys given.
//! - Upserts given to PostgreSQL carry each key once (it refuses to update a row twice in one
//!   statement); [`crate::sql::sorted_unique_upserts`] sees to that before these functions run.
//! - PostgreSQL's insert without a conflict clause ([`postgres::insert_sql`]) is only a faster
//!   way to the upsert's result: it runs for keys the engine knows to be new, under a
//!   savepoint, and the upsert runs instead should one be present.

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

/// The SQLite flavour: keys travel as one JSON array parameter, ledger rows as multi-row
/// `VALUES` of anonymous parameters.
pub(crate) mod sqlite {
    use std::sync::LazyLock;

    use super::{COLUMNS, ON_CONFLICT};

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

    /// Rows per upsert statement, largest first. A batch's rows go in statements of these
    /// sizes (1,234 rows: one of 1,000, two of 100, three of 10, four of 1), so that four
    /// statements, each prepared once per connection, serve every batch size.
    pub(crate) const UPSERT_ROWS: [usize; 4] = [1000, 100, 10, 1];

    /// Values a row binds in an upsert statement: key, dest_key, fingerprint (16 bytes),
    /// source_version, synced_at (null for the commit time). The sync and the commit time are
    /// bound once per statement, before the rows.
    pub(crate) const UPSERT_ROW_VALUES: usize = 5;

    /// Values a row binds in a compact upsert statement, for rows without a destination key
    /// and whose `synced_at` is the commit time (every row of a one-way run): key,
    /// fingerprint, source_version. Two values fewer a row to bind and to copy.
    pub(crate) const COMPACT_ROW_VALUES: usize = 3;

    /// The upsert of `rows` rows: two anonymous parameters (the sync, the commit time), then
    /// five a row in the order of [`UPSERT_ROW_VALUES`], or three in the order of
    /// [`COMPACT_ROW_VALUES`] when `compact`. Anonymous parameters have no name for the driver
    /// to look up, so binding 5,000 of them costs no more than 5,000 values; SQLite allows
    /// 32,766. The `WHERE true` lets SQLite's parser tell the upsert clause from a join
    /// constraint.
    fn values_upsert_sql(rows: usize, compact: bool) -> String {
        let (values, columns) = if compact {
            (
                COMPACT_ROW_VALUES,
                r#""rows"."column1", NULL, "rows"."column2", "rows"."column3", "batch"."now""#,
            )
        } else {
            (
                UPSERT_ROW_VALUES,
                r#""rows"."column1", "rows"."column2", "rows"."column3", "rows"."column4",
                   coalesce("rows"."column5", "batch"."now")"#,
            )
        };
        let row = format!("({})", vec!["?"; values].join(","));
        format!(
            r#"WITH "batch" ("sync", "now") AS (SELECT ?, ?)
               INSERT INTO "ledger" ("sync", "key", "dest_key", "fingerprint", "source_version", "synced_at")
               SELECT "batch"."sync", {columns}
               FROM "batch", (VALUES {}) AS "rows" WHERE true
               {ON_CONFLICT}"#,
            vec![row.as_str(); rows].join(",")
        )
    }

    /// The statements that upsert `n` rows: how many rows each takes, in order, and its SQL;
    /// the compact form when `compact` ([`COMPACT_ROW_VALUES`]).
    pub(crate) fn upsert_plan(n: usize, compact: bool) -> Vec<(usize, &'static str)> {
        static SQL: LazyLock<[Vec<String>; 2]> = LazyLock::new(|| {
            [false, true].map(|compact| {
                UPSERT_ROWS
                    .iter()
                    .map(|&rows| values_upsert_sql(rows, compact))
                    .collect()
            })
        });
        let mut plan = Vec::new();
        let mut left = n;
        for (&rows, sql) in UPSERT_ROWS.iter().zip(SQL[usize::from(compact)].iter()) {
            while left >= rows {
                plan.push((rows, sql.as_str()));
                left -= rows;
            }
        }
        plan
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

    /// The insert both statements below share: `$1` the sync, `$2` the commit time, `$3`..`$7`
    /// the columns as arrays.
    const INSERT: &str = r#"INSERT INTO "ledger" ("sync", "key", "dest_key", "fingerprint", "source_version", "synced_at")
                   SELECT $1, u."key", u."dest_key", u."fingerprint", u."source_version",
                          coalesce(u."synced_at", $2)
                   FROM UNNEST($3::text[], $4::text[], $5::bytea[], $6::text[], $7::text[])
                        AS u("key", "dest_key", "fingerprint", "source_version", "synced_at")"#;

    /// `$1` the sync, `$2` the commit time, `$3`..`$7` the columns as arrays.
    pub(crate) fn upsert_sql() -> &'static str {
        static SQL: LazyLock<String> = LazyLock::new(|| format!("{INSERT}\n{ON_CONFLICT}"));
        &SQL
    }

    /// The same as [`upsert_sql`] without the conflict clause, for keys known to be absent:
    /// PostgreSQL's speculative insertion (the conflict check) costs about as much again as
    /// the insert (measured on 10,000 new keys into a 1M-row ledger: 42 to 48 ms against 24 to
    /// 27 ms).
    pub(crate) fn insert_sql() -> &'static str {
        INSERT
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
    fn sqlite_upserts_split_into_the_prepared_sizes() {
        let sizes =
            |n| -> Vec<usize> { sqlite::upsert_plan(n, false).iter().map(|p| p.0).collect() };
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(1234), vec![1000, 100, 100, 10, 10, 10, 1, 1, 1, 1]);
        assert_eq!(sizes(10_000), vec![1000; 10]);
        for n in [0, 7, 999, 1001, 10_000] {
            assert_eq!(sizes(n).iter().sum::<usize>(), n);
        }
        for (compact, values) in [
            (false, sqlite::UPSERT_ROW_VALUES),
            (true, sqlite::COMPACT_ROW_VALUES),
        ] {
            let plan = sqlite::upsert_plan(1111, compact);
            assert_eq!(plan.len(), 4);
            for (rows, sql) in plan {
                assert_eq!(
                    sql.matches('?').count(),
                    2 + rows * values,
                    "{rows} rows, compact {compact}"
                );
            }
        }
    }
}
