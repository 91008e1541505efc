//! What a cdc sync's committed checkpoint says of its replication slot: the WAL the server
//! retained for it and how far the destination is behind, for `lockstep status` and the
//! daemon's `/metrics`. Neither loads a plugin nor asks the source server: the figures are
//! those of the last committed read, and the lag is computed at the moment of asking, so a
//! sync whose runs stopped shows a lag that keeps growing.
//!
//! Invariants:
//! - A checkpoint of another kind (a cursor) gives no status.
//! - Pure: no I/O.

use chrono::{DateTime, Utc};
use serde_json::Value;

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
}
