//! The error type connectors return, and its conversion to the ABI's error.

use lockstep_plugin_api::{ErrorKind, PluginError};
use lockstep_plugin_core::rows::RowError;

/// The result type of connector code.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// An error from connector code: a kind that tells the host whether to retry, and a message
/// for people. Messages must say what went wrong, where, and what to do, without secrets.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    /// What kind of failure this is; the host retries `transient` and `rate_limited` errors
    /// and never `config` or `auth` ones.
    pub kind: ErrorKind,
    /// For people: what went wrong, where, and what to do. Never a secret.
    pub message: String,
    /// Structured details (a JSON object) for machines, or `Null`.
    pub details: serde_json::Value,
    /// For rate-limit errors: how long to wait, in milliseconds.
    pub retry_after_ms: u64,
}

impl ConnectorError {
    /// An error of `kind`; the constructors below name the kinds.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            details: serde_json::Value::Null,
            retry_after_ms: 0,
        }
    }
    /// The connection's config is wrong (a missing key, a file that does not exist): not
    /// retried. Say which key and what would fix it.
    ///
    /// ```
    /// use lockstep_plugin_sdk::{ConnectorError, ErrorKind};
    ///
    /// let error = ConnectorError::config("`dir` = /nowhere is not a directory; create it");
    /// assert_eq!(error.kind, ErrorKind::CONFIG);
    /// assert_eq!(error.to_string(), "`dir` = /nowhere is not a directory; create it");
    /// ```
    pub fn config(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CONFIG, message)
    }
    /// The credentials were refused: not retried.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AUTH, message)
    }
    /// A failure that may pass (a dropped connection, a timeout): retried with backoff.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::TRANSIENT, message)
    }
    /// The system asked to slow down: retried after `retry_after_ms` milliseconds.
    pub fn rate_limited(message: impl Into<String>, retry_after_ms: u64) -> Self {
        Self {
            retry_after_ms,
            ..Self::new(ErrorKind::RATE_LIMITED, message)
        }
    }
    /// The data does not fit (an unknown stream or field, a value of the wrong type, a
    /// change the schema evolution policy forbids).
    pub fn schema(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::SCHEMA, message)
    }
    /// A bug in the connector or a state it cannot handle.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::INTERNAL, message)
    }
    /// The connector does not do what was asked (a read mode, deletes). The conformance kit
    /// skips its resume and delete checks, rather than failing them, when refused this way.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::UNSUPPORTED, message)
    }

    /// Adds structured details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// Prefixes the message with what was being done: `reading "contacts": <message>`.
    pub fn context(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl From<ConnectorError> for PluginError {
    fn from(e: ConnectorError) -> Self {
        PluginError {
            kind: e.kind,
            message: e.message.into(),
            details: if e.details.is_null() {
                Default::default()
            } else {
                e.details.to_string().into()
            },
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl From<arrow::error::ArrowError> for ConnectorError {
    fn from(e: arrow::error::ArrowError) -> Self {
        ConnectorError::internal(format!("Arrow error: {e}"))
    }
}

/// A value that does not fit its field is a schema error, with the row and field named.
impl From<RowError> for ConnectorError {
    fn from(e: RowError) -> Self {
        ConnectorError::schema(e.to_string())
    }
}
