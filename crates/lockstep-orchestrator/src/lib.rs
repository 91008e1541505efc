//! The sync engine: runs one sync from source to destination by the rules of
//! semantics.md (plan, map, diff against the record ledger, apply, commit).
//!
//! Invariants:
//! - A source checkpoint is committed only after the destination has flushed the writes of
//!   the same batch, in the same state transaction as the ledger changes, under the lease's
//!   fencing token.
//! - Two runs of one sync never overlap: a run holds the sync's lease from start to end,
//!   renewed by a task of its own, and stops before its next destination write if it loses it.
//! - Every record read is counted exactly once as added, updated, unchanged or rejected.
//! - No delete reaches the destination before the mass-delete guard has counted every delete
//!   of the run (see `deletes`).
//! - Plugins are reached only through `lockstep-plugin-host`, the state only through
//!   `lockstep-state`.

mod deletes;
mod engine;
mod error;
mod faults;
mod lease;
mod pipeline;
mod plan;
mod reconcile;
mod retry;
mod summary;

pub use deletes::SAMPLE_KEYS as DELETE_SAMPLE_KEYS;
pub use engine::{
    hostname, Endpoint, Engine, Progress, ProgressFn, RunOptions, RunReport, StartFn, SyncJob,
};
pub use error::EngineError;
pub use plan::{FieldChange, PlanReport, PlannedRejection, PlannedUpdate, SAMPLE_SIZE};
pub use retry::RetryOutcome;
