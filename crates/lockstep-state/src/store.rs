//! The state store interface, implemented once per backend.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use lockstep_core::RunSummary;

use crate::audit::AuditStore;
use crate::deletes::PendingDeleteStore;
use crate::error::Result;
use crate::two_way::TwoWayStore;
use crate::types::{
    BatchCommit, Lease, LeaseHolder, LedgerEntry, RejectedFilter, RejectedRecord, RunEnd,
};

/// Everything the engine keeps between runs: run history, checkpoints, the record ledger,
/// rejected records and leases; with its supertraits, pending deletes and the state of
/// two-way syncs. Open one with [`crate::open`].
#[async_trait]
pub trait StateStore: PendingDeleteStore + TwoWayStore + AuditStore + Send + Sync {
    /// Records a new run of `sync` with status `running` and returns its id. When the sync has
    /// a live lease, the run is tied to it (see [`StateStore::mark_abandoned`]).
    async fn start_run(&self, sync: &str, cursor_before: Option<&serde_json::Value>)
        -> Result<i64>;

    /// Records how run `run` ended. Fails with `UnknownRun` if there is no such run and with
    /// `InvalidArgument` if `end.status` is `Running`.
    async fn finish_run(&self, run: i64, end: &RunEnd) -> Result<()>;

    /// Records what kind of run `run` is (`verify-repair`, ...); a run is a `sync` run
    /// unless this says otherwise.
    async fn set_run_kind(&self, run: i64, kind: &str) -> Result<()>;

    /// The most recent runs, newest first, of one sync or of all.
    async fn runs(&self, sync: Option<&str>, limit: usize) -> Result<Vec<RunSummary>>;

    /// One run, if it exists.
    async fn run(&self, id: i64) -> Result<Option<RunSummary>>;

    /// The exit detail recorded by [`StateStore::finish_run`] (which [`RunSummary`] does not
    /// carry), if the run exists and has one.
    async fn run_exit_detail(&self, id: i64) -> Result<Option<String>>;

    /// Marks as `abandoned` the runs of `sync` still `running` whose lease is gone: runs not
    /// started or committed under the sync's current, unexpired lease. Returns how many.
    ///
    /// A process that has just acquired the lease calls this before starting its own run.
    async fn mark_abandoned(&self, sync: &str) -> Result<u64>;

    /// The source checkpoint of `sync` (the sync name, or any key string the caller composes,
    /// such as sync and stream), if one was committed.
    async fn checkpoint(&self, sync: &str) -> Result<Option<serde_json::Value>>;

    /// Stores `value` under `key` in the checkpoint table, outside any batch commit. For
    /// bookkeeping that is not a source position, such as when a sync last reconciled its
    /// key sets; keys should extend the sync's name (`"<sync>/reconciled"`).
    async fn put_checkpoint(
        &self,
        key: &str,
        run: Option<i64>,
        value: &serde_json::Value,
    ) -> Result<()>;

    /// The ledger entries of `sync` for those of `keys` that have one.
    async fn ledger_lookup(
        &self,
        sync: &str,
        keys: &[String],
    ) -> Result<HashMap<String, LedgerEntry>>;

    /// How many ledger entries `sync` has.
    async fn ledger_count(&self, sync: &str) -> Result<u64>;

    /// How many ledger entries `sync` has, counting no further than `at_most`: the exact count
    /// when it is below `at_most`, else `at_most`. For checks that only need to know whether
    /// the ledger holds at least so many entries (the mass-delete guard), without reading all
    /// of a large one.
    async fn ledger_count_at_most(&self, sync: &str, at_most: u64) -> Result<u64>;

    /// Up to `limit` ledger keys of `sync` greater than `after`, in byte order (for paging
    /// through the key set during reconciliation).
    async fn ledger_keys(
        &self,
        sync: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>>;

    /// Commits one batch in one transaction: the fencing check, the run's progress, ledger
    /// upserts then deletes, the checkpoint and rejected records. The pending rejected records
    /// of every key the commit upserts are resolved in the same transaction (the destination
    /// now holds a newer version); the commit's own rejected records stay pending. On any
    /// error nothing is written; with a stale lease token the error is `LeaseLost`.
    async fn commit_batch(&self, commit: &BatchCommit<'_>) -> Result<()>;

    /// Rejected records matching `filter`, newest first.
    async fn rejected(&self, filter: &RejectedFilter) -> Result<Vec<RejectedRecord>>;

    /// Records `outcome` as the retry result of the rejected records `ids`. Unknown ids are
    /// ignored.
    async fn mark_rejected_retried(&self, ids: &[i64], outcome: &str) -> Result<()>;

    /// Takes the lease on `sync` for `ttl`. Fails with `LeaseHeld` while another lease is
    /// live (including one held by the same holder); an expired or released lease is taken
    /// over with the next fencing token.
    async fn acquire_lease(&self, sync: &str, holder: &LeaseHolder, ttl: Duration)
        -> Result<Lease>;

    /// Extends `lease` to `ttl` from now. Fails with `LeaseLost` when its token is no longer
    /// current. A lease that expired but was not taken over is still renewed.
    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<()>;

    /// Gives `lease` up so that another holder can take it at once. Releasing a lease that
    /// was already lost does nothing.
    async fn release_lease(&self, lease: &Lease) -> Result<()>;

    /// Expires the lease on `sync` if `holder` holds it, so that it can be taken at once. For
    /// a holder known to be gone (a process of this host that no longer exists); returns
    /// whether a lease was expired.
    async fn expire_lease(&self, sync: &str, holder: &LeaseHolder) -> Result<bool>;

    /// Another handle on this store, sharing its connections, that a task can own for as long
    /// as it needs: a run's lease renewal runs in a task of its own, beside the run.
    fn shared(&self) -> std::sync::Arc<dyn StateStore>;

    /// Forgets the checkpoint, the ledger and the two-way base ledger of `sync`, so that its
    /// next run is a full refresh. Run history, rejected records, conflicts and the lease are
    /// kept.
    async fn reset_sync(&self, sync: &str) -> Result<()>;

    /// Closes the connections, waiting for those in use to be returned. Later calls fail.
    async fn close(&self);
}
