//! Errors of a run, each with a kind that decides whether a retry may help.

use lockstep_plugin_host::{ErrorKind, HostError};
use lockstep_state::StateError;

/// Why a run failed or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Mapping(#[from] lockstep_mapping::MappingError),
    #[error(transparent)]
    Fingerprint(#[from] lockstep_core::FingerprintError),
    #[error("{0}")]
    Schema(String),
    #[error("{0}")]
    Config(String),
    /// More records were rejected than the sync's `max_rejected` allows.
    #[error("{0}")]
    TooManyRejected(String),
    /// A run would delete more than `max_delete_fraction` of the destination: its deletes
    /// are held (the run's status is `held`, and this is its message).
    #[error("{0}")]
    MassDelete(String),
    /// The run's lease was taken over, or could not be renewed; the run stopped before its
    /// next destination write.
    #[error("{0}")]
    LeaseLost(String),
    #[error("Arrow error while processing a batch: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    /// The kind's stable name: config, auth, transient, rate-limited, schema, panic,
    /// internal, cancelled, unsupported, lease-held or state.
    pub fn kind_name(&self) -> &'static str {
        match self {
            EngineError::Host(e) => e.kind().name(),
            EngineError::State(StateError::LeaseHeld { .. }) => "lease-held",
            EngineError::State(StateError::LeaseLost { .. }) | EngineError::LeaseLost(_) => {
                "lease-lost"
            }
            EngineError::State(StateError::Connect { .. }) => ErrorKind::TRANSIENT.name(),
            EngineError::State(_) => "state",
            EngineError::Mapping(_) | EngineError::Fingerprint(_) | EngineError::Schema(_) => {
                ErrorKind::SCHEMA.name()
            }
            EngineError::Config(_) => ErrorKind::CONFIG.name(),
            EngineError::TooManyRejected(_) => "too-many-rejected",
            EngineError::MassDelete(_) => "mass-delete",
            EngineError::Arrow(_) | EngineError::Internal(_) => ErrorKind::INTERNAL.name(),
        }
    }

    /// Whether running again later may succeed (transient and rate-limited failures).
    pub fn is_retryable(&self) -> bool {
        match self {
            EngineError::Host(e) => e.kind().is_retryable(),
            EngineError::State(StateError::Connect { .. }) => true,
            _ => false,
        }
    }

    /// How long the remote system asked to wait, for rate-limited failures.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            EngineError::Host(HostError::Plugin { retry_after_ms, .. }) if *retry_after_ms > 0 => {
                Some(std::time::Duration::from_millis(*retry_after_ms))
            }
            _ => None,
        }
    }
}
