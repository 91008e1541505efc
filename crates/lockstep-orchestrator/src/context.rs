//! What every step of a run shares and that stays the same from its first batch to its
//! delete phase: the services, the sync, its compiled mapping and the run's lease.
//!
//! Invariants:
//! - A context is built once a run has opened its source and compiled the mapping; it is
//!   only read afterwards.

use lockstep_core::protocol::DataType;
use lockstep_mapping::Mapper;
use lockstep_state::Lease;

use crate::job::SyncJob;
use crate::services::Services;

/// Everything a batch needs that stays the same through the run.
pub(crate) struct Context<'a> {
    pub(crate) services: Services<'a>,
    pub(crate) job: &'a SyncJob,
    pub(crate) mapper: &'a Mapper,
    pub(crate) cursor_type: Option<DataType>,
    /// The run's lease, whose token goes with every state commit; `None` for a plan.
    pub(crate) lease: Option<&'a Lease>,
    /// Whether this run created the destination stream: a new stream holds nothing that
    /// could need deleting.
    pub(crate) destination_is_new: bool,
}

impl Context<'_> {
    /// The lease's fencing token, for state commits.
    pub(crate) fn lease_token(&self) -> Option<i64> {
        self.lease.map(|l| l.token)
    }
}

/// The source fields a read of the sync asks for: the mapping's, and the cursor and
/// tombstone fields the engine itself needs.
pub(crate) fn fields_to_read(job: &SyncJob, mapper: &Mapper) -> Vec<String> {
    let spec = &job.spec;
    let mut fields = mapper.source_fields();
    // A cdc read adds its tombstone field by itself; other reads of the stream (retries,
    // verify) could not find it.
    let tombstone = spec
        .delete
        .tombstone
        .as_ref()
        .filter(|_| spec.mode != lockstep_core::SyncMode::Cdc);
    for extra in [spec.cursor_field.as_ref(), tombstone]
        .into_iter()
        .flatten()
    {
        if !fields.contains(extra) {
            fields.push(extra.clone());
        }
    }
    fields
}
