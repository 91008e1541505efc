//! The values that go in and out of the state store.

use std::fmt;

use lockstep_core::{RunErrorKind, RunMetrics, RunStatus};
use serde::{Deserialize, Serialize};

/// How a run ended, as recorded by [`crate::StateStore::finish_run`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RunEnd {
    /// Any status but `Running`.
    pub status: RunStatus,
    /// The final metrics of the run; they replace the progress stored at each commit.
    pub metrics: RunMetrics,
    /// Why the run failed, stored as the kind's stable text (`transient`, `config`, ...).
    pub error_kind: Option<RunErrorKind>,
    pub error: Option<String>,
    /// The source checkpoint when the run ended.
    pub cursor_after: Option<serde_json::Value>,
    /// How the worker process ended, when that says more than `error` (for example the signal
    /// that killed it and the tail of its stderr).
    pub exit_detail: Option<String>,
}

impl RunEnd {
    /// An end with `status` and `metrics`, and nothing else recorded.
    pub fn new(status: RunStatus, metrics: RunMetrics) -> Self {
        RunEnd {
            status,
            metrics,
            error_kind: None,
            error: None,
            cursor_after: None,
            exit_detail: None,
        }
    }
}

/// One row of the record ledger (semantics.md, "The record ledger").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The record key on the source side.
    pub key: String,
    /// The key on the destination side, when the destination assigns its own ids.
    pub dest_key: Option<String>,
    /// The fingerprint of the mapped record as last written.
    pub fingerprint: u128,
    /// The source version (cursor value) of the record as last written.
    pub source_version: Option<String>,
    /// When the record was last written (RFC 3339). Left `None` on upsert, the store fills in
    /// the commit time.
    pub synced_at: Option<String>,
}

/// A record that failed mapping or that the destination refused (semantics.md, "Rejected
/// records").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RejectedRecord {
    /// The store's id; 0 for a record not yet stored.
    pub id: i64,
    pub sync: String,
    pub run: i64,
    pub key: Option<String>,
    /// The offending field, when one field is to blame.
    pub field: Option<String>,
    pub reason: String,
    /// The record as read, so that it can be retried.
    pub raw: serde_json::Value,
    /// When it was stored (RFC 3339); set by the store.
    pub created_at: Option<String>,
    /// The outcome of the last retry, if it was retried.
    pub retried: Option<String>,
}

/// Which rejected records to list. Every filter that is set must match.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RejectedFilter {
    pub sync: Option<String>,
    pub run: Option<i64>,
    pub id: Option<i64>,
    /// Only records that were never retried.
    pub pending_only: bool,
    /// At most this many records (newest first); `None` for all.
    pub limit: Option<usize>,
}

/// Who holds a lease: a process on a host.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseHolder {
    pub host: String,
    pub pid: u32,
}

/// This machine's host name, for lease holders and alerts: the one place it is read.
///
/// Falls back to `localhost` when the system cannot say (or the name is not UTF-8), so that a
/// lease can always be taken; the pid still tells processes apart.
pub fn hostname() -> String {
    hostname::get()
        .ok()
        .and_then(|name| name.into_string().ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl fmt::Display for LeaseHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {} on host `{}`", self.pid, self.host)
    }
}

/// A lease on a sync, as granted by [`crate::StateStore::acquire_lease`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub sync: String,
    /// The fencing token: strictly increasing per sync, checked at every commit.
    pub token: i64,
    pub holder: LeaseHolder,
    /// When the lease was acquired (RFC 3339).
    pub since: String,
}

/// Everything one batch commits, in one transaction (semantics.md, "Durability and
/// idempotence").
#[derive(Clone, Copy, Debug)]
pub struct BatchCommit<'a> {
    pub sync: &'a str,
    pub run: i64,
    /// When set, the commit is refused with [`crate::StateError::LeaseLost`] (and writes
    /// nothing) unless this is still the sync's current lease token.
    pub lease_token: Option<i64>,
    /// Ledger rows to insert or replace. When a key appears twice, the last entry wins.
    pub ledger_upserts: &'a [LedgerEntry],
    /// Whether the caller knows that no key of `ledger_upserts` has a ledger entry (it looked
    /// them up under the sync's lease and found none): a store may then insert them without
    /// a conflict check. A store that finds one present anyway replaces it as an upsert
    /// would, so the flag changes only the speed, never the result.
    pub ledger_keys_new: bool,
    /// Ledger keys to forget; applied after the upserts.
    pub ledger_deletes: &'a [String],
    /// The new source checkpoint, if it moved.
    pub checkpoint: Option<&'a serde_json::Value>,
    /// The run's cumulative metrics so far, stored on the run as progress.
    pub metrics: &'a RunMetrics,
    /// Records rejected in this batch. Their `id`, `sync`, `run`, `created_at` and `retried`
    /// are ignored: the store assigns them from this commit.
    pub rejected: &'a [RejectedRecord],
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn hostname_is_the_kernels() {
        // The name the two hand-written copies used to read, which lease holders written by
        // older versions carry.
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(super::hostname(), kernel.trim());
    }
}
