//! What an upsert reports, built the same way by every destination that counts.
//!
//! Invariant: rejected rows are reported in batch order, whatever order the destination
//! found them in.

use crate::{RejectedRow, WriteOutcome};

/// The outcome of an upsert that counted its inserted, updated and unchanged rows.
pub fn upsert_outcome(
    inserted: u64,
    updated: u64,
    unchanged: u64,
    mut rejected: Vec<RejectedRow>,
) -> WriteOutcome {
    rejected.sort_by_key(|r| r.row);
    WriteOutcome {
        inserted: Some(inserted),
        updated: Some(updated),
        unchanged: Some(unchanged),
        deleted: None,
        rejected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_rows_come_in_batch_order() {
        let reject = |row| RejectedRow {
            row,
            field: None,
            reason: "no".into(),
        };
        let o = upsert_outcome(1, 2, 3, vec![reject(5), reject(0)]);
        assert_eq!(
            (o.inserted, o.updated, o.unchanged),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(o.deleted, None);
        let rows: Vec<usize> = o.rejected.iter().map(|r| r.row).collect();
        assert_eq!(rows, [0, 5]);
    }
}
