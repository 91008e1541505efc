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

// The run's modules form a line, each using only those above it: `job`, `services`,
// `context`, `rows` and `diff` know nothing of how a run proceeds; `sink` is where changes
// go; `batch` is the one path from a batch to a commit; `reconcile` and `deletes` are the
// mirror phases; `pipeline` runs them; `conflict` is the pure two-way decision and `two_way`
// the two-way run; `engine`, `plan`, `retry`, `verify` and `cdc_drop` are the entry points
// (`compare` is verify's pure comparison, `verify_pushdown` its comparison in the databases).
mod batch;
mod cdc_drop;
mod compare;
mod conflict;
mod context;
mod deletes;
mod diff;
mod engine;
mod error;
mod faults;
mod job;
mod lease;
mod memory;
mod pipeline;
mod plan;
mod reconcile;
mod retry;
mod rows;
mod seen_keys;
mod services;
mod sink;
mod source_rejects;
mod summary;
mod two_way;
mod verify;
mod verify_pushdown;

pub use cdc_drop::CdcDropReport;
pub use deletes::SAMPLE_KEYS as DELETE_SAMPLE_KEYS;
pub use engine::{Engine, RunReport};
pub use error::EngineError;
pub use job::{hostname, Endpoint, Progress, ProgressFn, RunOptions, StartFn, SyncJob};
pub use memory::tune_allocator;
pub use plan::{FieldChange, PlanReport, PlannedRejection, PlannedUpdate, SAMPLE_SIZE};
pub use retry::RetryOutcome;
pub use verify::{
    ChangedRecord, FieldDifference, LastRun, RecordDifference, RepairReport, SideReport,
    VerifyOptions, VerifyReport,
};
pub use verify_pushdown::ContentComparison;
