//! The failures of an HTTP call, classified into the SDK's error kinds.
//!
//! | failure | kind | retried by the client |
//! | --- | --- | --- |
//! | connection refused or reset, timeout, body cut short | transient | yes (resets and timeouts only when the request is idempotent) |
//! | 500, 502, 503, 504 | transient | yes, when idempotent |
//! | 429 | rate-limited, with `retry_after` | yes, honouring `Retry-After` |
//! | 401, 403 | auth, naming the setting to fix | never |
//! | 404 | config (the base URL or an object name is wrong) | never |
//! | other 4xx | a refusal: the connector turns it into rejected records, or a schema error | never |
//! | an answer that does not parse | internal | never |
//!
//! Invariant: every message names the request (what was being done, the method and the
//! path) and the server's own message, with the connection's secret scrubbed out.

use std::time::Duration;

use lockstep_plugin_sdk::{ConnectorError, RejectedRow};
use reqwest::StatusCode;
use serde_json::Value;

/// A failed HTTP call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The server could not be reached, or the answer did not arrive in time.
    #[error("{request}: {detail} (after {attempts} attempt(s))")]
    Transport {
        request: String,
        detail: String,
        attempts: u32,
    },
    /// The server failed (5xx).
    #[error("{request}: the server answered {status}: {message} (after {attempts} attempt(s))")]
    Server {
        request: String,
        status: StatusCode,
        message: String,
        attempts: u32,
    },
    /// The server asked to slow down (429) for longer than the client waits by itself, or
    /// kept asking until the retries ran out.
    #[error(
        "{request}: the server is rate-limiting this connection (429: {message}); retry in {} s \
         (after {attempts} attempt(s))",
        retry_after.as_secs_f64().ceil()
    )]
    RateLimited {
        request: String,
        message: String,
        retry_after: Duration,
        attempts: u32,
    },
    /// The credentials were refused (401, 403).
    #[error("{request}: the server refused the credentials ({status}: {message}); {hint}")]
    Auth {
        request: String,
        status: StatusCode,
        message: String,
        hint: String,
    },
    /// The server does not know the address (404).
    #[error(
        "{request}: the server answered {status}: {message}; check the connection's base URL \
         and the object's name"
    )]
    NotFound {
        request: String,
        status: StatusCode,
        message: String,
    },
    /// The server refused the request for what it holds (400, 409, 422 and other 4xx).
    #[error("{request}: the server refused the request ({status}: {message})")]
    Refused {
        request: String,
        status: StatusCode,
        message: String,
        /// The server's answer, as JSON when it was JSON (otherwise a JSON string).
        body: Value,
    },
    /// The answer arrived but is not what the vendor documents.
    #[error("{request}: unexpected answer from the server: {detail}")]
    Decode { request: String, detail: String },
    /// The request could not be built from the connection's settings.
    #[error("{0}")]
    Config(String),
}

impl HttpError {
    /// The HTTP status the server answered, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            HttpError::Server { status, .. }
            | HttpError::Auth { status, .. }
            | HttpError::NotFound { status, .. }
            | HttpError::Refused { status, .. } => Some(*status),
            HttpError::RateLimited { .. } => Some(StatusCode::TOO_MANY_REQUESTS),
            _ => None,
        }
    }

    /// Whether this is the server refusing the data sent (a 4xx other than auth, 404 and
    /// 429): a connector writing records turns it into rejected rows rather than failing.
    pub fn is_refusal(&self) -> bool {
        matches!(self, HttpError::Refused { .. })
    }

    /// Rejects every row in `rows` with the server's message, for a refused write of a
    /// batch the server does not answer record by record. `None` when this is no refusal.
    pub fn reject_rows(&self, rows: impl IntoIterator<Item = usize>) -> Option<Vec<RejectedRow>> {
        let HttpError::Refused {
            status, message, ..
        } = self
        else {
            return None;
        };
        Some(
            rows.into_iter()
                .map(|row| RejectedRow {
                    row,
                    field: None,
                    reason: format!("refused by the server ({status}): {message}"),
                })
                .collect(),
        )
    }
}

impl From<HttpError> for ConnectorError {
    fn from(e: HttpError) -> Self {
        let message = e.to_string();
        match e {
            HttpError::Transport { .. } | HttpError::Server { .. } => {
                ConnectorError::transient(message)
            }
            HttpError::RateLimited { retry_after, .. } => {
                ConnectorError::rate_limited(message, retry_after.as_millis() as u64)
            }
            HttpError::Auth { .. } => ConnectorError::auth(message),
            HttpError::NotFound { .. } | HttpError::Config(_) => ConnectorError::config(message),
            HttpError::Refused { .. } => ConnectorError::schema(message),
            HttpError::Decode { .. } => ConnectorError::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::api::ErrorKind;

    #[test]
    fn kinds_follow_the_table() {
        let rate = HttpError::RateLimited {
            request: "GET /x".into(),
            message: "slow down".into(),
            retry_after: Duration::from_millis(2500),
            attempts: 3,
        };
        let e = ConnectorError::from(rate);
        assert_eq!((e.kind, e.retry_after_ms), (ErrorKind::RATE_LIMITED, 2500));
        assert!(e.message.contains("retry in 3 s"), "{}", e.message);
        let refused = HttpError::Refused {
            request: "POST /x".into(),
            status: StatusCode::BAD_REQUEST,
            message: "Property values were not valid".into(),
            body: Value::Null,
        };
        let rows = refused.reject_rows([0, 2]).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[1].reason.contains("Property values were not valid"));
        assert_eq!(ConnectorError::from(refused).kind, ErrorKind::SCHEMA);
        let auth = HttpError::Auth {
            request: "GET /x".into(),
            status: StatusCode::UNAUTHORIZED,
            message: "bad token".into(),
            hint: "check `token_env`".into(),
        };
        assert_eq!(ConnectorError::from(auth).kind, ErrorKind::AUTH);
    }
}
