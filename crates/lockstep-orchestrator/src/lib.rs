//! The sync engine: runs one sync from source to destination by the rules of
//! semantics.md (plan, map, diff against the record ledger, apply, commit).
//!
//! Invariants:
//! - A source checkpoint is committed only after the destination has flushed the writes of
//!   the same batch, in the same state transaction as the ledger changes, under the lease's
//!   fencing token.
//! - Two runs of one sync never overlap: a run holds the sync's lease from start to end.
//! - Every record read is counted exactly once as added, updated, unchanged or rejected.
//! - Plugins are reached only through `lockstep-plugin-host`, the state only through
//!   `lockstep-state`.

mod engine;
mod error;
mod faults;
mod pipeline;
mod plan;
mod reconcile;
mod retry;
mod summary;

pub use engine::{
    hostname, Endpoint, Engine, Progress, ProgressFn, RunOptions, RunReport, StartFn, SyncJob,
};
pub use error::EngineError;
pub use plan::{FieldChange, PlanReport, PlannedRejection, PlannedUpdate, SAMPLE_SIZE};
pub use retry::RetryOutcome;
