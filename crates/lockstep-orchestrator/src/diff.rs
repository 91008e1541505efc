//! The diff: what a mapped batch changes against the record ledger (semantics.md, "The
//! record ledger"), and which keys of a key set the source no longer has. Two-way sync runs
//! the same function once per side.
//!
//! Invariants:
//! - Pure: no I/O, no plugins, no state store; the caller looks the ledger up and applies
//!   the result.
//! - Every row of the batch lands in exactly one of upserts (added or updated), unchanged,
//!   deletes or rejects: `Changes::total` equals the rows read.
//! - When a key repeats within a batch its last row wins; the earlier rows count as
//!   unchanged (nothing is sent for them).
//! - A record whose fingerprint equals the ledger's is unchanged and is not sent.
//! - Key sets compare 64-bit hashes: a collision can only spare a record that should have been
//!   deleted, never delete one that should not.

use std::collections::HashMap;

use lockstep_mapping::RowRejection;
use lockstep_state::LedgerEntry;
use xxhash_rust::xxh3::xxh3_64;

/// A map keyed by record keys of one batch. The keys come from the operator's own systems;
/// foldhash, randomly seeded per process, hashes them several times faster than the
/// standard library's SipHash.
pub(crate) type KeyMap<'k, V> = HashMap<&'k str, V, foldhash::fast::RandomState>;

/// The record keys of a mapped batch, and which row of each key counts (the last).
pub(crate) struct BatchKeys<'k> {
    keys: &'k [String],
    last_row: KeyMap<'k, usize>,
}

impl<'k> BatchKeys<'k> {
    /// Indexes `keys`, one per mapped row.
    pub(crate) fn new(keys: &'k [String]) -> Self {
        let mut last_row: KeyMap<usize> =
            KeyMap::with_capacity_and_hasher(keys.len(), Default::default());
        for (row, key) in keys.iter().enumerate() {
            last_row.insert(key.as_str(), row);
        }
        BatchKeys { keys, last_row }
    }

    /// The distinct keys, for the ledger lookup.
    pub(crate) fn unique(&self) -> Vec<String> {
        self.unique_keys().map(str::to_owned).collect()
    }

    /// The distinct keys, borrowed.
    pub(crate) fn unique_keys(&self) -> impl Iterator<Item = &'k str> + '_ {
        self.last_row.keys().copied()
    }

    /// The distinct keys whose last row is a record present in the source (not a delete):
    /// they cancel the deletes that wait for them.
    pub(crate) fn present(&self, changes: &Changes) -> Vec<String> {
        let mut deleted = vec![false; self.keys.len()];
        for delete in &changes.deletes {
            deleted[delete.row] = true;
        }
        self.last_row
            .iter()
            .filter(|(_, &row)| !deleted[row])
            .map(|(key, _)| (*key).to_owned())
            .collect()
    }
}

/// A mapped batch as the diff sees it: its rows' keys and fingerprints, their tombstone
/// marks, and the source rows the mapping rejected.
pub(crate) struct MappedRecords<'a> {
    pub(crate) keys: &'a BatchKeys<'a>,
    /// One per mapped row.
    pub(crate) fingerprints: &'a [u128],
    /// Whether each mapped row is marked deleted in the source; `None` when nothing can be.
    pub(crate) tombstoned: Option<&'a [bool]>,
    pub(crate) rejected: &'a [RowRejection],
}

/// A mapped row to send to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Upsert {
    pub(crate) row: usize,
    /// Whether the ledger does not know the key yet (an add, else an update).
    pub(crate) added: bool,
}

/// A mapped row whose record the source marks deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delete {
    pub(crate) row: usize,
    /// Whether the ledger knows the key (the destination should have the record).
    pub(crate) in_ledger: bool,
}

/// What one batch changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Changes {
    /// Adds and updates, in row order.
    pub(crate) upserts: Vec<Upsert>,
    /// Rows identical to the ledger, or superseded by a later row of the same key.
    pub(crate) unchanged: u64,
    /// Tombstones, in row order (one per key: the key's last row).
    pub(crate) deletes: Vec<Delete>,
    /// The source rows the mapping rejected.
    pub(crate) rejects: Vec<usize>,
}

impl Changes {
    /// The rows that are adds.
    #[cfg(test)]
    pub(crate) fn adds(&self) -> impl Iterator<Item = usize> + '_ {
        self.upserts.iter().filter(|u| u.added).map(|u| u.row)
    }

    /// The rows that are updates.
    #[cfg(test)]
    pub(crate) fn updates(&self) -> impl Iterator<Item = usize> + '_ {
        self.upserts.iter().filter(|u| !u.added).map(|u| u.row)
    }

    /// Which of `rows` mapped rows are sent, as a filter mask.
    pub(crate) fn upsert_mask(&self, rows: usize) -> Vec<bool> {
        let mut mask = vec![false; rows];
        for upsert in &self.upserts {
            mask[upsert.row] = true;
        }
        mask
    }

    /// How many rows the changes account for: every row read, once.
    pub(crate) fn total(&self) -> u64 {
        (self.upserts.len() + self.deletes.len() + self.rejects.len()) as u64 + self.unchanged
    }
}

/// What `records` change against `ledger` (the ledger entries of their keys).
pub(crate) fn diff(records: &MappedRecords<'_>, ledger: &HashMap<String, LedgerEntry>) -> Changes {
    let keys = records.keys;
    let mut changes = Changes {
        rejects: records.rejected.iter().map(|r| r.row).collect(),
        ..Changes::default()
    };
    for (row, key) in keys.keys.iter().enumerate() {
        if keys.last_row.get(key.as_str()) != Some(&row) {
            // An earlier row of a key that a later row of this batch supersedes.
            changes.unchanged += 1;
            continue;
        }
        let known = ledger.get(key);
        if records.tombstoned.is_some_and(|marks| marks[row]) {
            changes.deletes.push(Delete {
                row,
                in_ledger: known.is_some(),
            });
            continue;
        }
        match known {
            Some(entry) if entry.fingerprint == records.fingerprints[row] => changes.unchanged += 1,
            Some(_) => changes.upserts.push(Upsert { row, added: false }),
            None => changes.upserts.push(Upsert { row, added: true }),
        }
    }
    changes
}

/// A set of record keys kept as sorted 64-bit hashes (8 bytes a key), to find the keys of
/// another side that it lacks whatever the orderings and collations of the two systems.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    hashes: Vec<u64>,
}

impl KeySet {
    /// Adds `key`; call [`KeySet::seal`] once every key is in.
    pub(crate) fn insert(&mut self, key: &str) {
        self.hashes.push(xxh3_64(key.as_bytes()));
    }

    /// Sorts the set for lookups.
    pub(crate) fn seal(&mut self) {
        self.hashes.sort_unstable();
        self.hashes.dedup();
    }

    /// How many distinct keys the (sealed) set has.
    pub(crate) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the set has `key` (a sealed set).
    pub(crate) fn contains(&self, key: &str) -> bool {
        self.hashes.binary_search(&xxh3_64(key.as_bytes())).is_ok()
    }

    /// The keys of `other` that the set lacks: the records to delete on the side `other`
    /// comes from.
    pub(crate) fn missing(&self, other: Vec<String>) -> Vec<String> {
        other.into_iter().filter(|k| !self.contains(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use lockstep_core::{fingerprints, record_keys};

    use super::*;

    /// A mapped batch of (id, name) rows, keyed by id, with its keys and fingerprints.
    fn mapped(rows: &[(i64, &str)]) -> (Vec<String>, Vec<u128>) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let keys = record_keys(&batch, &["id".to_owned()]).unwrap();
        (keys, fingerprints(&batch).unwrap())
    }

    /// The ledger after writing `rows`.
    fn ledger(rows: &[(i64, &str)]) -> HashMap<String, LedgerEntry> {
        let (keys, prints) = mapped(rows);
        keys.into_iter()
            .zip(prints)
            .map(|(key, fingerprint)| {
                let entry = LedgerEntry {
                    key: key.clone(),
                    dest_key: None,
                    fingerprint,
                    source_version: None,
                    synced_at: None,
                };
                (key, entry)
            })
            .collect()
    }

    fn run_diff(
        rows: &[(i64, &str)],
        tombstoned: Option<&[bool]>,
        rejected: &[RowRejection],
        ledger: &HashMap<String, LedgerEntry>,
    ) -> Changes {
        let (keys, prints) = mapped(rows);
        let keys = BatchKeys::new(&keys);
        let changes = diff(
            &MappedRecords {
                keys: &keys,
                fingerprints: &prints,
                tombstoned,
                rejected,
            },
            ledger,
        );
        assert_eq!(
            changes.total(),
            (rows.len() + rejected.len()) as u64,
            "every row is counted once: {changes:?}"
        );
        changes
    }

    #[test]
    fn new_keys_are_adds_changed_fingerprints_updates_equal_ones_unchanged() {
        let ledger = ledger(&[(1, "Ada"), (2, "Grace")]);
        let changes = run_diff(
            &[(1, "Ada"), (2, "Grace Hopper"), (3, "Edsger")],
            None,
            &[],
            &ledger,
        );
        assert_eq!(changes.unchanged, 1);
        assert_eq!(changes.updates().collect::<Vec<_>>(), [1]);
        assert_eq!(changes.adds().collect::<Vec<_>>(), [2]);
        assert!(changes.deletes.is_empty() && changes.rejects.is_empty());
        assert_eq!(changes.upsert_mask(3), [false, true, true]);
    }

    #[test]
    fn equal_values_have_equal_fingerprints_whatever_the_batch() {
        // The same record in another batch, at another position, is unchanged.
        let ledger = ledger(&[(7, "Linus"), (8, "Barbara")]);
        let changes = run_diff(&[(9, "Ken"), (8, "Barbara")], None, &[], &ledger);
        assert_eq!(changes.unchanged, 1);
        assert_eq!(
            changes.upserts,
            [Upsert {
                row: 0,
                added: true
            }]
        );
        // One changed character is an update.
        let changes = run_diff(&[(8, "barbara")], None, &[], &ledger);
        assert_eq!(
            changes.upserts,
            [Upsert {
                row: 0,
                added: false
            }]
        );
    }

    #[test]
    fn the_last_row_of_a_key_repeated_in_a_batch_wins() {
        let ledger = ledger(&[(1, "old")]);
        let rows = [(1, "first"), (2, "x"), (1, "old"), (2, "y")];
        let changes = run_diff(&rows, None, &[], &ledger);
        // Rows 0 and 1 are superseded; row 2 equals the ledger; row 3 is the add of key 2.
        assert_eq!(changes.unchanged, 3);
        assert_eq!(
            changes.upserts,
            [Upsert {
                row: 3,
                added: true
            }]
        );
        let (keys, _) = mapped(&rows);
        let mut unique = BatchKeys::new(&keys).unique();
        unique.sort();
        assert_eq!(unique, ["[1]", "[2]"]);
    }

    #[test]
    fn tombstones_are_deletes_known_or_not_and_present_keys_exclude_them() {
        let ledger = ledger(&[(1, "a"), (3, "c")]);
        let rows = [(1, "a"), (2, "b"), (3, "c"), (3, "c")];
        let marks = [true, true, true, false];
        let changes = run_diff(&rows, Some(&marks), &[], &ledger);
        assert_eq!(
            changes.deletes,
            [
                Delete {
                    row: 0,
                    in_ledger: true
                },
                Delete {
                    row: 1,
                    in_ledger: false
                }
            ]
        );
        // Key 3's last row is not a tombstone: it stays, unchanged; its earlier row is
        // superseded.
        assert_eq!(changes.unchanged, 2);
        assert!(changes.upserts.is_empty());
        let (keys, _) = mapped(&rows);
        let keys = BatchKeys::new(&keys);
        assert_eq!(keys.present(&changes), ["[3]"]);
    }

    #[test]
    fn rows_the_mapping_rejected_are_rejects() {
        let rejected = [
            RowRejection {
                row: 1,
                field: Some("email".into()),
                reason: "not an email".into(),
            },
            RowRejection {
                row: 4,
                field: None,
                reason: "no key".into(),
            },
        ];
        let changes = run_diff(&[(1, "a"), (2, "b")], None, &rejected, &HashMap::new());
        assert_eq!(changes.rejects, [1, 4]);
        assert_eq!(changes.adds().count(), 2);
    }

    #[test]
    fn keys_missing_from_a_key_set_are_its_deletes() {
        let ledger = ledger(&[(1, "a"), (2, "b"), (3, "c")]);
        let mut source = KeySet::default();
        for key in ["[3]", "[1]", "[1]", "[4]"] {
            source.insert(key);
        }
        source.seal();
        let mut in_ledger: Vec<String> = ledger.into_keys().collect();
        in_ledger.sort();
        assert_eq!(source.missing(in_ledger), ["[2]"]);
        assert!(source.contains("[4]") && !source.contains("[5]"));
    }
}
