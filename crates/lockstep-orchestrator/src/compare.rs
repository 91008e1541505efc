//! The content comparison of `lockstep verify`, without I/O: the source side's records as a
//! compact index of (hash of the mapped key, hash of the mapped values, source key text),
//! and the destination's records looked up in it one at a time, in whatever order the
//! destination returns them.
//!
//! Invariants:
//! - Pure: no plugins, no state store, no async. Unit-tested on its own.
//! - Memory is 24 bytes a source record plus its source key's text; the destination side is
//!   streamed and only its differences are kept. Neither side's order matters, so two systems
//!   that sort keys differently (collations, a table without an index on the key) compare in
//!   O(n log n), never quadratically.
//! - A 64-bit key hash that collides can only hide a difference (two keys taken for one),
//!   never invent one; at 64 bits this is vanishingly rare, as in reconciliation.

use xxhash_rust::xxh3::xxh3_64;

/// One source record in the index.
#[derive(Clone, Copy, Debug)]
struct Entry {
    key_hash: u64,
    /// The low 64 bits of the record's fingerprint (XXH3-128 of the mapped values).
    values_hash: u64,
    /// Where the record's source key text starts in the arena, and its length.
    source_key_start: u32,
    source_key_len: u32,
}

/// Why the source index cannot grow.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error(
    "the source's keys take more than 4 GiB of text, more than verify keeps in memory; \
     verify a narrower sync (for example with a filter on the source stream)"
)]
pub(crate) struct IndexFull;

/// The source side of a comparison, built record by record, then sealed and probed.
#[derive(Default)]
pub(crate) struct SourceIndex {
    entries: Vec<Entry>,
    arena: String,
    /// Which entries the destination has, by position after sealing.
    seen: Vec<bool>,
    /// Keys the source has more than once (a computed key that maps two records alike).
    duplicates: u64,
}

/// What the destination's record of one key is, against the source's.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Probe<'a> {
    /// The source has the key with the same values.
    Same,
    /// The source has the key with other values; here is its source key text.
    Different(&'a str),
    /// The source does not have the key.
    Extra,
    /// The destination already had this key earlier in the stream.
    Duplicate,
}

/// The hash verify gives a mapped key's canonical text.
pub(crate) fn key_hash(key: &str) -> u64 {
    xxh3_64(key.as_bytes())
}

impl SourceIndex {
    /// Adds a source record: its mapped key text, its fingerprint and its source key text.
    pub(crate) fn insert(
        &mut self,
        key: &str,
        fingerprint: u128,
        source_key: &str,
    ) -> Result<(), IndexFull> {
        let start = u32::try_from(self.arena.len()).map_err(|_| IndexFull)?;
        let len = u32::try_from(source_key.len()).map_err(|_| IndexFull)?;
        start.checked_add(len).ok_or(IndexFull)?;
        self.arena.push_str(source_key);
        self.entries.push(Entry {
            key_hash: key_hash(key),
            values_hash: fingerprint as u64,
            source_key_start: start,
            source_key_len: len,
        });
        Ok(())
    }

    /// Sorts the index by key hash so that it can be probed. A key the source has twice
    /// keeps its last record, as a run would have written it last.
    pub(crate) fn seal(&mut self) {
        // A stable sort keeps equal keys in read order; the last of each run wins.
        self.entries.sort_by_key(|e| e.key_hash);
        let before = self.entries.len();
        self.entries.reverse();
        self.entries.dedup_by_key(|e| e.key_hash);
        self.entries.reverse();
        self.duplicates = (before - self.entries.len()) as u64;
        self.entries.shrink_to_fit();
        self.seen = vec![false; self.entries.len()];
    }

    /// How many distinct keys the source has.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// How many source records shared a key with another (only the last was compared).
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    fn source_key(&self, e: &Entry) -> &str {
        let start = e.source_key_start as usize;
        &self.arena[start..start + e.source_key_len as usize]
    }

    /// Looks one destination record up (its mapped key text and fingerprint) and marks its
    /// key as present in the destination.
    pub(crate) fn probe(&mut self, key: &str, fingerprint: u128) -> Probe<'_> {
        let hash = key_hash(key);
        let Ok(at) = self.entries.binary_search_by_key(&hash, |e| e.key_hash) else {
            return Probe::Extra;
        };
        if std::mem::replace(&mut self.seen[at], true) {
            return Probe::Duplicate;
        }
        let entry = self.entries[at];
        if entry.values_hash == fingerprint as u64 {
            Probe::Same
        } else {
            Probe::Different(self.source_key(&self.entries[at]))
        }
    }

    /// The source key texts (and key hashes) of the records the destination does not have.
    pub(crate) fn missing(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.entries
            .iter()
            .zip(&self.seen)
            .filter(|(_, seen)| !**seen)
            .map(|(e, _)| (e.key_hash, self.source_key(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(records: &[(&str, u128)]) -> SourceIndex {
        let mut index = SourceIndex::default();
        for (key, fp) in records {
            index.insert(key, *fp, &format!("src{key}")).unwrap();
        }
        index.seal();
        index
    }

    #[test]
    fn finds_same_different_extra_and_missing_in_any_order() {
        let mut index = index(&[("[3]", 30), ("[1]", 10), ("[2]", 20), ("[4]", 40)]);
        assert_eq!(index.probe("[4]", 40), Probe::Same);
        assert_eq!(index.probe("[2]", 21), Probe::Different("src[2]"));
        assert_eq!(index.probe("[9]", 90), Probe::Extra);
        assert_eq!(index.probe("[1]", 10), Probe::Same);
        assert_eq!(index.probe("[1]", 10), Probe::Duplicate);
        let missing: Vec<&str> = index.missing().map(|(_, k)| k).collect();
        assert_eq!(missing, vec!["src[3]"]);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn a_key_read_twice_keeps_its_last_record() {
        let mut index = index(&[("[1]", 10), ("[1]", 11)]);
        assert_eq!(index.len(), 1);
        assert_eq!(index.duplicates(), 1);
        assert_eq!(index.probe("[1]", 11), Probe::Same);
    }

    #[test]
    fn an_empty_source_makes_every_destination_record_extra() {
        let mut index = index(&[]);
        assert_eq!(index.probe("[1]", 1), Probe::Extra);
        assert_eq!(index.missing().count(), 0);
    }
}
