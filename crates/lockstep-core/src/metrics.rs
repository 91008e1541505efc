//! The counts every run reports (semantics.md, "Metrics of a run").

use serde::{Deserialize, Serialize};

/// The counts of one run. Every field is always present.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunMetrics {
    /// Records read from the source.
    pub read: u64,
    /// Records the destination did not have before.
    pub added: u64,
    /// Records the destination had with other values.
    pub updated: u64,
    /// Records present and identical: no write was sent.
    pub unchanged: u64,
    /// Records deleted from the destination.
    pub deleted: u64,
    /// Records changed on both sides since the last sync (two-way sync).
    pub conflicts: u64,
    /// Records that could not be mapped or that the destination refused.
    pub rejected: u64,
}

impl RunMetrics {
    /// Adds every count of `other` to this one.
    pub fn add(&mut self, other: &RunMetrics) {
        self.read += other.read;
        self.added += other.added;
        self.updated += other.updated;
        self.unchanged += other.unchanged;
        self.deleted += other.deleted;
        self.conflicts += other.conflicts;
        self.rejected += other.rejected;
    }

    /// Records written (added plus updated plus deleted).
    pub fn written(&self) -> u64 {
        self.added + self.updated + self.deleted
    }

    /// The counts as (name, value) pairs in display order.
    pub fn entries(&self) -> [(&'static str, u64); 7] {
        [
            ("read", self.read),
            ("added", self.added),
            ("updated", self.updated),
            ("unchanged", self.unchanged),
            ("deleted", self.deleted),
            ("conflicts", self.conflicts),
            ("rejected", self.rejected),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_add_up() {
        let mut a = RunMetrics {
            read: 3,
            added: 1,
            updated: 1,
            unchanged: 1,
            ..Default::default()
        };
        a.add(&RunMetrics {
            read: 2,
            deleted: 2,
            ..Default::default()
        });
        assert_eq!(a.read, 5);
        assert_eq!(a.written(), 4);
        assert_eq!(a.entries()[4], ("deleted", 2));
    }
}
