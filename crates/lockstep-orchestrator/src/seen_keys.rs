//! Which record keys a run has met, so that a run which started with an empty ledger looks up
//! only the keys that can be in it.
//!
//! A first full load looks every batch's keys up in a ledger that holds nothing but what the
//! run itself wrote; measured on 1,000,000 rows (SQLite state, 10,000-row batches), those
//! lookups took 15 ms of each batch's 70 ms, all of it on the path from reading a batch to
//! writing it (issue 9). When a sync's ledger is empty as its run starts, every entry it holds
//! later came from this run: the run's lease keeps every other writer of the sync out. A key
//! the run has not met is then certainly absent and needs no lookup.
//!
//! The set is a Bloom filter of fixed size (two bits a key in 2 MiB), not the keys: a run of
//! 10,000,000 records stays within its memory budget. A key it claims to have met but has not
//! (a false positive, about 1% of new keys after 1,000,000 keys, about half after 10,000,000)
//! is looked up as before and found absent; the filter never misses a key it was given.
//!
//! Invariants:
//! - No false negatives: [`SeenKeys::may_contain`] is true for every key given to
//!   [`SeenKeys::insert`].
//! - A run uses the filter only when the ledger had no entry for the sync at the start of
//!   its read and the run holds the sync's lease (a plan, which holds none, looks every key
//!   up), and it adds every key of a batch before that batch's ledger rows can commit.

use xxhash_rust::xxh3::xxh3_64;

/// Bits in the filter: 2^24, 2 MiB.
const BITS: u64 = 1 << 24;

/// A Bloom filter of record keys with two probes a key.
pub(crate) struct SeenKeys {
    words: Vec<u64>,
}

impl std::fmt::Debug for SeenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeenKeys").finish_non_exhaustive()
    }
}

impl SeenKeys {
    /// An empty filter.
    pub(crate) fn new() -> Self {
        SeenKeys {
            words: vec![0; (BITS / 64) as usize],
        }
    }

    /// The two bit positions of `key`, from the two halves of one 64-bit hash.
    fn probes(key: &str) -> [u64; 2] {
        let hash = xxh3_64(key.as_bytes());
        [(hash & 0xffff_ffff) % BITS, (hash >> 32) % BITS]
    }

    /// Records `key` as met.
    pub(crate) fn insert(&mut self, key: &str) {
        for bit in Self::probes(key) {
            self.words[(bit / 64) as usize] |= 1 << (bit % 64);
        }
    }

    /// False when `key` was certainly never inserted.
    pub(crate) fn may_contain(&self, key: &str) -> bool {
        Self::probes(key)
            .iter()
            .all(|bit| self.words[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_key_is_reported_and_most_others_are_not() {
        let mut seen = SeenKeys::new();
        for i in 0..1_000_000 {
            seen.insert(&format!("[{i}]"));
        }
        for i in 0..1_000_000 {
            assert!(seen.may_contain(&format!("[{i}]")), "key {i}");
        }
        let false_positives = (1_000_000..1_100_000)
            .filter(|i| seen.may_contain(&format!("[{i}]")))
            .count();
        // Two probes in 2^24 bits after 10^6 keys: about 1.4% expected.
        assert!(false_positives < 3_000, "{false_positives} of 100,000");
        assert!(!SeenKeys::new().may_contain("[1]"));
    }
}
