//! The WAL-retention alert of cdc syncs: a logical replication slot that is not confirmed
//! keeps the server from recycling its WAL, forever, until the disk fills. Each cdc read
//! records in its checkpoint the WAL its slot retained when the read began
//! (`retained_wal_bytes`: `pg_current_wal_lsn() - confirmed_flush_lsn`); after each execution
//! of a cdc sync the daemon compares it with the sync's `[syncs.NAME.cdc] max_retained_wal`.
//!
//! Invariants:
//! - The alert is raised when the retained WAL goes above the threshold, not at every run
//!   while it stays there (remembered in memory; a restarted daemon alerts again once).
//! - A sync that is not cdc, or whose checkpoint has no measurement, is never alerted.

use std::collections::HashSet;
use std::sync::Mutex;

use lockstep_config::Config;

use crate::cdc_slot::human_bytes;
use crate::shared::Shared;

/// The cdc syncs whose slot is above its threshold, as last seen.
static ABOVE: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// The verdict for `retained` bytes against `threshold`, given whether the sync was above it
/// at the last check: the alert's reason when it crosses.
pub(crate) fn verdict(
    sync: &str,
    slot: &str,
    retained: u64,
    threshold: u64,
    was_above: bool,
) -> Option<String> {
    (retained > threshold && !was_above).then(|| {
        format!(
            "replication slot `{slot}` retains {} of WAL, above max_retained_wal ({}): the \
             server keeps this WAL until the sync confirms it. Make sure sync `{sync}` runs and \
             succeeds; if the sync is retired, drop its slot and publication with `lockstep \
             cdc drop {sync}` (or SELECT pg_drop_replication_slot('{slot}'))",
            human_bytes(retained),
            human_bytes(threshold)
        )
    })
}

/// After an execution of sync `name`: the WAL-retention alert's reason, if it is due.
pub(crate) async fn check(shared: &Shared, config: &Config, name: &str) -> Option<String> {
    let cdc = config.sync(name)?.spec.cdc.clone()?;
    let checkpoint = match shared.state.checkpoint(name).await {
        Ok(c) => c?,
        Err(e) => {
            tracing::warn!(
                sync = name,
                "cannot read the checkpoint for the WAL alert: {e}"
            );
            return None;
        }
    };
    let retained = checkpoint.get("retained_wal_bytes")?.as_u64()?;
    let mut above = ABOVE.lock().unwrap_or_else(|e| e.into_inner());
    let set = above.get_or_insert_with(HashSet::new);
    let was_above = set.contains(name);
    let reason = verdict(name, &cdc.slot, retained, cdc.max_retained_wal, was_above);
    if retained > cdc.max_retained_wal {
        set.insert(name.to_owned());
    } else {
        set.remove(name);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_when_crossing_the_threshold_only() {
        let reason = verdict("people", "lockstep_people", 3 << 30, 1 << 30, false).unwrap();
        assert!(reason.contains("retains 3.0 GB of WAL"), "{reason}");
        assert!(
            reason.contains("above max_retained_wal (1.0 GB)"),
            "{reason}"
        );
        assert!(reason.contains("lockstep cdc drop people"), "{reason}");
        assert!(reason.contains("pg_drop_replication_slot('lockstep_people')"));
        assert_eq!(verdict("people", "s", 3 << 30, 1 << 30, true), None);
        assert_eq!(verdict("people", "s", 1 << 20, 1 << 30, false), None);
    }
}
