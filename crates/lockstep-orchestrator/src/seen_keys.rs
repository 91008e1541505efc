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
//! (a false positive, about 1.5% of new keys after 1,000,000 keys, about half after
//! 10,000,000) is looked up as before and found absent; the filter never misses a key it was
//! given. Both bits of a key lie in one 64-bit word (a blocked filter): one cache miss a key
//! instead of two, for a slightly higher false-positive rate than two independent bits.
//!
//! Invariants:
//! - No false negatives: [`SeenKeys::insert`] returns true for every key given to it before.
//! - A run uses the filter only when the ledger had no entry for the sync at the start of
//!   its read and the run holds the sync's lease (a plan, which holds none, looks every key
//!   up), and it adds every key of a batch before that batch's ledger rows can commit.

use xxhash_rust::xxh3::xxh3_64;

/// Words in the filter: 2^18 words of 64 bits, 2 MiB.
const WORDS: u64 = 1 << 18;

/// A blocked Bloom filter of record keys with two probes a key, both in one word.
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
            words: vec![0; WORDS as usize],
        }
    }

    /// The word of `key` and the mask of its two bits in it, from one 64-bit hash: the word
    /// from the low 32 bits, each bit from six of the high ones.
    fn probe(key: &str) -> (usize, u64) {
        let hash = xxh3_64(key.as_bytes());
        let word = ((hash & 0xffff_ffff) % WORDS) as usize;
        let mask = (1 << ((hash >> 32) & 63)) | (1 << ((hash >> 38) & 63));
        (word, mask)
    }

    /// Records `key` as met, and says whether it may have been met before: false when it
    /// certainly was not.
    pub(crate) fn insert(&mut self, key: &str) -> bool {
        let (word, mask) = Self::probe(key);
        let before = self.words[word];
        self.words[word] = before | mask;
        before & mask == mask
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_inserted_key_is_reported_and_most_others_are_not() {
        let mut seen = SeenKeys::new();
        assert!(!seen.insert("[1]"), "an empty filter has met nothing");
        assert!(seen.insert("[1]"), "a key inserted before");
        let mut seen = SeenKeys::new();
        // While the filter fills up to 10^6 keys, about 0.8% of new keys are claimed as met.
        let claimed = (0..1_000_000)
            .filter(|i| seen.insert(&format!("[{i}]")))
            .count();
        assert!(claimed < 15_000, "{claimed} of 1,000,000 new keys claimed");
        for i in 0..1_000_000 {
            assert!(seen.insert(&format!("[{i}]")), "key {i}");
        }
        // Two bits in one of 2^18 words after 10^6 keys: about 1.5% expected.
        let false_positives = (1_000_000..1_100_000)
            .filter(|i| seen.insert(&format!("[{i}]")))
            .count();
        assert!(false_positives < 3_000, "{false_positives} of 100,000");
    }
}
