//! The domain model of Lockstep: sync specifications, runs and their metrics, record keys
//! and fingerprints.
//!
//! Invariants:
//! - No I/O: no files, network, databases or clocks other than what callers pass in.
//! - A fingerprint depends only on the mapped values of a record, never on the Arrow
//!   representation details (offsets, slicing, string view vs string), so that the same
//!   record always hashes the same, in any run, on any machine.

pub mod fingerprint;
pub mod metrics;
pub mod run;
pub mod spec;

pub use fingerprint::{fingerprints, record_keys, FingerprintError};
pub use lockstep_protocol as protocol;
pub use metrics::RunMetrics;
pub use run::{RunErrorKind, RunStatus, RunSummary, RUN_KIND_SYNC, RUN_KIND_VERIFY_REPAIR};
pub use spec::{
    CdcSpec, ConflictPolicy, DeletePolicy, EndpointSpec, FieldMapping, RejectLimit, Side, SyncMode,
    SyncSpec, TwoWaySpec,
};
