//! Where a run's changes go. A [`Sink`] takes one batch's upserts, the deletes it found,
//! and its state commit: [`WriteSink`] sends them to the destination and the state store (a
//! run, a retry); the plan's collector counts and samples them (a dry run). The batch path
//! (`batch`), reconciliation and the delete phase go through this one trait, so a run and
//! its plan take the same steps.
//!
//! Invariants:
//! - A write sink refuses every destination write once the run's lease is lost
//!   ([`FencedWriter`]), and every state change it makes carries the lease's fencing token.
//! - Deletes are never applied where they are found: [`Sink::wait_deletes`] records them as
//!   pending, for the delete phase to check against the guard (`deletes`).
//! - The trait is called once per batch (or page), never per row.

use arrow::array::RecordBatch;
use lockstep_core::protocol::WriteOutcome;
use lockstep_state::{BatchCommit, DeleteOrigin, PendingDeleteChange, RejectedRecord};

use crate::context::Context;
use crate::diff::Upsert;
use crate::error::EngineError;
use crate::job::RunState;
use crate::lease::FencedWriter;

/// Where a batch's changes go: the destination and the state store, or a plan.
pub(crate) trait Sink {
    /// Whether this sink changes the destination and the state store (a run), rather than
    /// counting what a run would do (a plan).
    fn writes(&self) -> bool;

    /// Inserts or updates `rows` by key; what the destination did with them.
    async fn upsert(&mut self, rows: RecordBatch) -> Result<WriteOutcome, EngineError>;

    /// Deletes the records whose key columns `keys` holds.
    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome, EngineError>;

    /// Makes the writes so far durable.
    async fn flush(&mut self) -> Result<(), EngineError>;

    /// Records the deletes `found` (by key) as pending, and cancels the waiting deletes of
    /// `seen`, records the source has again. A plan counts and samples `found` instead.
    async fn wait_deletes(
        &mut self,
        ctx: &Context<'_>,
        run: &mut RunState,
        origin: DeleteOrigin,
        found: &[String],
        seen: &[String],
    ) -> Result<(), EngineError>;

    /// Commits one batch (or delete page) to the state store, after its writes flushed.
    async fn commit(&mut self, commit: &BatchCommit<'_>) -> Result<(), EngineError>;

    /// Keeps samples of a batch's upserts, for a plan (`mapped` and `keys` are the mapped
    /// batch and its rows' keys). A run keeps nothing.
    fn sample(&mut self, mapped: &RecordBatch, keys: &[String], upserts: &[Upsert]);

    /// Keeps samples of a batch's rejected records, for a plan.
    fn sample_rejects(&mut self, rejected: &[RejectedRecord]);
}

/// The sink of a run: the destination stream (fenced by the lease) and the state store.
pub(crate) struct WriteSink<'a> {
    writer: FencedWriter,
    state: &'a dyn lockstep_state::StateStore,
}

impl<'a> WriteSink<'a> {
    pub(crate) fn new(writer: FencedWriter, state: &'a dyn lockstep_state::StateStore) -> Self {
        WriteSink { writer, state }
    }
}

impl Sink for WriteSink<'_> {
    fn writes(&self) -> bool {
        true
    }

    async fn upsert(&mut self, rows: RecordBatch) -> Result<WriteOutcome, EngineError> {
        self.writer.upsert(rows).await
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome, EngineError> {
        self.writer.delete(keys).await
    }

    async fn flush(&mut self) -> Result<(), EngineError> {
        self.writer.flush().await
    }

    async fn wait_deletes(
        &mut self,
        ctx: &Context<'_>,
        run: &mut RunState,
        origin: DeleteOrigin,
        found: &[String],
        seen: &[String],
    ) -> Result<(), EngineError> {
        let waiting = run.deletes_waiting;
        record_deletes(self.state, ctx, run.run_id, waiting, origin, found, seen).await?;
        run.deletes_waiting |= !found.is_empty();
        Ok(())
    }

    async fn commit(&mut self, commit: &BatchCommit<'_>) -> Result<(), EngineError> {
        Ok(self.state.commit_batch(commit).await?)
    }

    fn sample(&mut self, _mapped: &RecordBatch, _keys: &[String], _upserts: &[Upsert]) {}

    fn sample_rejects(&mut self, _rejected: &[RejectedRecord]) {}
}

/// Records the deletes `found` (by key) as pending in `state`, and cancels the waiting
/// deletes of `seen`, records the source has again (when `deletes_waiting` says any wait).
/// The run's write sink does this at each batch; the pipelined run (`pipeline`) calls it
/// beside the next batch's writes.
pub(crate) async fn record_deletes(
    state: &dyn lockstep_state::StateStore,
    ctx: &Context<'_>,
    run_id: i64,
    deletes_waiting: bool,
    origin: DeleteOrigin,
    found: &[String],
    seen: &[String],
) -> Result<(), EngineError> {
    // Without waiting deletes there is nothing for `seen` to cancel.
    let seen: &[String] = if deletes_waiting { seen } else { &[] };
    if found.is_empty() && seen.is_empty() {
        return Ok(());
    }
    let cancelled = state
        .change_pending_deletes(&PendingDeleteChange {
            sync: &ctx.job.spec.name,
            run: run_id,
            lease_token: ctx.lease_token(),
            origin,
            add: found,
            cancel: seen,
        })
        .await?;
    if cancelled > 0 {
        tracing::info!(
            cancelled,
            "records the source has again cancelled their waiting deletes"
        );
    }
    Ok(())
}
