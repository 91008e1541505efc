//! A run's hold on its sync's lease: renewed by a task of its own from acquisition to
//! release, whatever the run is doing (reading, waiting on a slow source, writing,
//! reconciling), and a "lease lost" signal that the write path checks before every
//! destination write.
//!
//! Invariants:
//! - While a [`HeldLease`] exists, one renewal task extends the lease every third of its
//!   time to live; [`HeldLease::release`] stops that task (letting a renewal in flight end)
//!   before the lease is given up, so a late renewal can never extend a released lease.
//! - The lease counts as lost when a renewal finds it taken over, or when renewals have failed
//!   for two thirds of the time to live (the last third is the margin for a write in flight).
//!   From then on [`FencedWriter`] refuses every destination write, and the pipeline stops the
//!   read in progress.
//! - The fencing token is still checked at every state commit: the signal makes a lost run
//!   stop before its next write, the token makes sure it records nothing either way.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use lockstep_core::protocol::WriteOutcome;
use lockstep_plugin_host::StreamWriterHandle;
use lockstep_state::{Lease, StateError, StateStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::EngineError;

/// Why a run lost its lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaseLoss {
    /// A renewal found the lease's token no longer current: another holder took it over.
    TakenOver,
    /// Renewals failed for so long that the lease may have expired.
    Unrenewable { error: String, for_ms: u128 },
}

/// The lease of a run in progress, kept alive by its renewal task.
pub(crate) struct HeldLease {
    lease: Lease,
    watch: LeaseWatch,
    stop: watch::Sender<bool>,
    renewal: Option<JoinHandle<()>>,
    state: Arc<dyn StateStore>,
}

impl HeldLease {
    /// Starts renewing `lease`, acquired for `ttl` by a request sent at `requested`.
    pub(crate) fn start(
        state: &dyn StateStore,
        lease: Lease,
        ttl: Duration,
        requested: Instant,
    ) -> Self {
        let state = state.shared();
        let (lost_tx, lost_rx) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let renewal = tokio::spawn(renew(
            state.clone(),
            lease.clone(),
            ttl,
            requested,
            lost_tx,
            stop_rx,
        ));
        Self {
            watch: LeaseWatch {
                sync: lease.sync.clone(),
                lost: lost_rx,
            },
            lease,
            stop,
            renewal: Some(renewal),
            state,
        }
    }

    /// The lease itself (its token goes with every commit).
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// A handle on the lease-lost signal.
    pub(crate) fn watch(&self) -> LeaseWatch {
        self.watch.clone()
    }

    /// Stops the renewal, then gives the lease up so that another holder can take it at once.
    pub(crate) async fn release(mut self) -> Result<(), StateError> {
        let _ = self.stop.send(true);
        if let Some(renewal) = self.renewal.take() {
            // The task ends by itself once a renewal in flight has returned; an error here can
            // only be a panic in it, which leaves nothing to renew.
            let _ = renewal.await;
        }
        self.state.release_lease(&self.lease).await
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        // Not released (the run's future was dropped): stop renewing, and let the lease expire.
        if let Some(renewal) = self.renewal.take() {
            renewal.abort();
        }
    }
}

/// The renewal task: extends the lease every third of `ttl` until stopped or lost.
async fn renew(
    state: Arc<dyn StateStore>,
    lease: Lease,
    ttl: Duration,
    requested: Instant,
    lost: watch::Sender<Option<LeaseLoss>>,
    mut stop: watch::Receiver<bool>,
) {
    let every = ttl / 3;
    let retry_every = (ttl / 12).max(Duration::from_millis(50));
    // The start of the last request known to have extended the lease: the lease lives at least
    // until `confirmed + ttl`.
    let mut confirmed = requested;
    let mut next = confirmed + every;
    let mut last_error = String::new();
    loop {
        tokio::select! {
            biased;
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
            _ = tokio::time::sleep_until(next) => {}
        }
        // Past this, the lease may expire before a write now starting has finished.
        let deadline = confirmed + ttl - every;
        let attempt = Instant::now();
        let result = tokio::time::timeout_at(deadline, state.renew_lease(&lease, ttl)).await;
        match result {
            Ok(Ok(())) => {
                confirmed = attempt;
                next = attempt + every;
                continue;
            }
            Ok(Err(StateError::LeaseLost { .. })) => {
                tracing::error!(
                    sync = lease.sync,
                    "the lease was taken over by another holder"
                );
                let _ = lost.send(Some(LeaseLoss::TakenOver));
                return;
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => {
                if last_error.is_empty() {
                    last_error = "the state store did not answer".to_owned();
                }
            }
        }
        if Instant::now() + retry_every >= deadline {
            tracing::error!(
                sync = lease.sync,
                "the lease could not be renewed: {last_error}"
            );
            let _ = lost.send(Some(LeaseLoss::Unrenewable {
                error: last_error,
                for_ms: confirmed.elapsed().as_millis(),
            }));
            return;
        }
        tracing::warn!(
            sync = lease.sync,
            "renewing the lease failed, trying again: {last_error}"
        );
        next = Instant::now() + retry_every;
    }
}

/// The lease-lost signal of a run, cheap to clone.
#[derive(Clone)]
pub(crate) struct LeaseWatch {
    sync: String,
    lost: watch::Receiver<Option<LeaseLoss>>,
}

impl LeaseWatch {
    /// Fails once the lease is lost; the write path calls it before every destination write.
    pub(crate) fn check(&self) -> Result<(), EngineError> {
        match &*self.lost.borrow() {
            None => Ok(()),
            Some(loss) => Err(self.error(loss)),
        }
    }

    /// Resolves, with the error that stops the run, when the lease is lost; never, when the
    /// renewal ends without losing it.
    pub(crate) async fn lost(&mut self) -> EngineError {
        let loss = match self.lost.wait_for(Option::is_some).await {
            Ok(loss) => loss.clone(),
            Err(_) => None,
        };
        match loss {
            Some(loss) => self.error(&loss),
            None => std::future::pending().await,
        }
    }

    fn error(&self, loss: &LeaseLoss) -> EngineError {
        let why = match loss {
            LeaseLoss::TakenOver => "another holder took it over".to_owned(),
            LeaseLoss::Unrenewable { error, for_ms } => format!(
                "it could not be renewed for {:.1} s, so it may have expired ({error})",
                *for_ms as f64 / 1000.0
            ),
        };
        EngineError::LeaseLost(format!(
            "sync `{}`: this run lost its lease: {why}. It stopped before its next write to the \
             destination. Batches it committed stay; a batch whose write had begun may be in the \
             destination without being recorded, and the next run re-reads from the last \
             committed checkpoint and writes it again, which is harmless because writes are \
             upserts by key",
            self.sync
        ))
    }
}

/// The destination writer of a run, refusing every write once the run's lease is lost.
pub(crate) struct FencedWriter {
    inner: StreamWriterHandle,
    lease: Option<LeaseWatch>,
}

impl FencedWriter {
    /// Wraps `inner`; without a lease (a dry run) nothing is refused.
    pub(crate) fn new(inner: StreamWriterHandle, lease: Option<LeaseWatch>) -> Self {
        Self { inner, lease }
    }

    fn check(&self) -> Result<(), EngineError> {
        self.lease.as_ref().map_or(Ok(()), LeaseWatch::check)
    }

    /// Inserts or updates `batch` by key, if the lease is still held.
    pub(crate) async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome, EngineError> {
        self.check()?;
        Ok(self.inner.upsert(batch).await?)
    }

    /// Deletes the records whose keys `keys` holds, if the lease is still held.
    pub(crate) async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome, EngineError> {
        self.check()?;
        Ok(self.inner.delete(keys).await?)
    }

    /// Makes the writes so far durable, if the lease is still held.
    pub(crate) async fn flush(&mut self) -> Result<(), EngineError> {
        self.check()?;
        Ok(self.inner.flush().await?)
    }
}
