//! Errors of a run, each with a kind that decides whether a retry may help.

use lockstep_core::RunErrorKind;
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
    /// The kind recorded on the run (and reported by the CLI and the worker).
    pub fn kind(&self) -> RunErrorKind {
        match self {
            EngineError::Host(e) => plugin_kind(e.kind()),
            EngineError::State(StateError::LeaseHeld { .. }) => RunErrorKind::LeaseHeld,
            EngineError::State(StateError::LeaseLost { .. }) | EngineError::LeaseLost(_) => {
                RunErrorKind::LeaseLost
            }
            EngineError::State(StateError::Connect { .. }) => RunErrorKind::Transient,
            EngineError::State(_) => RunErrorKind::State,
            EngineError::Mapping(_) | EngineError::Fingerprint(_) | EngineError::Schema(_) => {
                RunErrorKind::Schema
            }
            EngineError::Config(_) => RunErrorKind::Config,
            EngineError::TooManyRejected(_) => RunErrorKind::TooManyRejected,
            EngineError::MassDelete(_) => RunErrorKind::MassDelete,
            EngineError::Arrow(_) | EngineError::Internal(_) => RunErrorKind::Internal,
        }
    }

    /// The kind's stable name, as stored in the run history: config, auth, transient,
    /// rate-limited, schema, panic, internal, cancelled, unsupported, lease-held, lease-lost,
    /// state, too-many-rejected or mass-delete.
    pub fn kind_name(&self) -> &'static str {
        self.kind().as_str()
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

/// The run error kind of a plugin's error kind; a kind newer than this host is `unknown`.
fn plugin_kind(kind: ErrorKind) -> RunErrorKind {
    match kind {
        ErrorKind::CONFIG => RunErrorKind::Config,
        ErrorKind::AUTH => RunErrorKind::Auth,
        ErrorKind::TRANSIENT => RunErrorKind::Transient,
        ErrorKind::RATE_LIMITED => RunErrorKind::RateLimited,
        ErrorKind::SCHEMA => RunErrorKind::Schema,
        ErrorKind::PANIC => RunErrorKind::Panic,
        ErrorKind::INTERNAL => RunErrorKind::Internal,
        ErrorKind::CANCELLED => RunErrorKind::Cancelled,
        ErrorKind::UNSUPPORTED => RunErrorKind::Unsupported,
        _ => RunErrorKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_kinds_keep_their_names_in_the_run_history() {
        for code in 0..=12 {
            let kind = ErrorKind(code);
            assert_eq!(plugin_kind(kind).as_str(), kind.name(), "error kind {code}");
        }
    }
}
