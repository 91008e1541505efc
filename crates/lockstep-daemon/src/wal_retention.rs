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

use chrono::{DateTime, Utc};
use lockstep_config::Config;
use serde_json::Value;

use crate::shared::Shared;

/// What a cdc sync's committed checkpoint says of its replication slot, for `lockstep status`
/// and `/metrics`.
#[derive(Clone, Debug, PartialEq)]
pub struct SlotStatus {
    pub slot: String,
    /// The WAL the server retained for the slot when the last read began.
    pub retained_wal_bytes: u64,
    /// The destination has every change committed before this (absent before the first
    /// snapshot has ended).
    pub caught_up_at: Option<DateTime<Utc>>,
}

impl SlotStatus {
    /// The slot's status from a cdc checkpoint; `None` for a checkpoint of another kind.
    pub fn from_checkpoint(checkpoint: &Value) -> Option<SlotStatus> {
        Some(SlotStatus {
            slot: checkpoint.get("slot")?.as_str()?.to_owned(),
            retained_wal_bytes: checkpoint.get("retained_wal_bytes")?.as_u64()?,
            caught_up_at: checkpoint
                .get("caught_up_at")
                .and_then(Value::as_str)
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&Utc)),
        })
    }

    /// How far the destination is behind the source at `now`: the time since the moment
    /// before which it has every change. `None` before the first snapshot has ended.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> Option<f64> {
        self.caught_up_at
            .map(|t| ((now - t).num_milliseconds().max(0) as f64) / 1000.0)
    }
}

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

/// Bytes for people: `3.2 MB` (powers of 1024, as `max_retained_wal` reads them).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("kB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return format!("{:.1} {unit}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes} B")
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
    fn a_cdc_checkpoint_gives_the_slot_status_and_its_lag() {
        let status = SlotStatus::from_checkpoint(&serde_json::json!({
            "slot": "lockstep_people", "phase": "changes", "lsn": "0/1",
            "retained_wal_bytes": 2048, "caught_up_at": "2026-12-06T01:00:00.000Z"
        }))
        .unwrap();
        assert_eq!(status.slot, "lockstep_people");
        assert_eq!(status.retained_wal_bytes, 2048);
        let now = DateTime::parse_from_rfc3339("2026-12-06T01:00:42.500Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(status.lag_seconds(now), Some(42.5));
        // During the first snapshot there is no lag yet; a cursor is not a cdc checkpoint.
        let snapshot = SlotStatus::from_checkpoint(&serde_json::json!({
            "slot": "s", "phase": "snapshot", "lsn": "0/1", "retained_wal_bytes": 0
        }))
        .unwrap();
        assert_eq!(snapshot.lag_seconds(now), None);
        assert_eq!(
            SlotStatus::from_checkpoint(&serde_json::json!({"cursor": 5, "key": [1]})),
            None
        );
    }

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
