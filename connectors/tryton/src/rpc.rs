//! Tryton's JSON-RPC protocol over the HTTP kit: `POST /<database>/rpc/` with
//! `{"id", "method", "params"}`, a session from `common.db.login`, and the user's
//! preferences as the context of every call.
//!
//! Invariants:
//! - The password travels only in the login call's body. The login client holds it as its
//!   secret without sending it in a header, so the kit scrubs it from every logged body and
//!   every error text, and an authentication failure names `password_env` and the variable.
//! - A session the server no longer knows (401, after five idle minutes by default) is
//!   replaced by a new login and the call sent again, once; a login refused is an
//!   authentication error at once, never retried.
//! - Tryton answers a refused call with HTTP 200 and `{"error": [name, args]}`; such an
//!   answer becomes [`RpcError::Tryton`] with Tryton's own message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::Engine as _;
use lockstep_http_kit::auth::AuthScheme;
use lockstep_http_kit::{
    Auth, ClientConfig, ExposeSecret, HeaderName, HttpClient, HttpError, Request, SecretString,
    StatusCode,
};
use lockstep_plugin_sdk::{ConnectorError, Result};
use serde_json::{json, Map, Value};
use tokio::sync::Mutex;

use crate::config::TrytonConfig;

/// A failed call.
#[derive(Debug, Clone)]
pub enum RpcError {
    /// The call did not get an answer, or the answer was an HTTP error.
    Http(HttpError),
    /// Tryton answered with an exception.
    Tryton {
        /// What the call was doing, e.g. `creating party.party records`.
        request: String,
        /// The exception's name (`UserError`, `ConcurrencyException`), or the text of an
        /// unexpected server exception.
        name: String,
        /// Tryton's message for people.
        message: String,
    },
}

impl RpcError {
    /// Whether Tryton refused what was sent (a `UserError`, a `UserWarning`, or another
    /// exception raised by the data), as opposed to the call failing.
    pub fn is_refusal(&self) -> bool {
        match self {
            RpcError::Tryton { name, .. } => !matches!(
                name.as_str(),
                "ConcurrencyException" | "LoginException" | "RateLimitException"
            ),
            RpcError::Http(e) => e.is_refusal(),
        }
    }

    /// Tryton's message, for a reject.
    pub fn message(&self) -> String {
        match self {
            RpcError::Tryton { message, .. } => message.clone(),
            RpcError::Http(e) => e.to_string(),
        }
    }
}

impl From<HttpError> for RpcError {
    fn from(e: HttpError) -> Self {
        RpcError::Http(e)
    }
}

impl From<RpcError> for ConnectorError {
    fn from(e: RpcError) -> Self {
        match e {
            RpcError::Http(e) => e.into(),
            RpcError::Tryton {
                request,
                name,
                message,
            } => {
                let text = format!("{request}: Tryton answered {name}: {message}");
                match name.as_str() {
                    "UserError" | "UserWarning" => ConnectorError::schema(text),
                    "ConcurrencyException" | "RateLimitException" => {
                        ConnectorError::transient(text)
                    }
                    "LoginException" => ConnectorError::auth(text),
                    _ => ConnectorError::internal(text),
                }
            }
        }
    }
}

/// A logged-in session: the client that sends its header, and the context of its calls.
#[derive(Clone)]
struct Session {
    client: HttpClient,
    context: Map<String, Value>,
    /// Which login this is; a 401 replaces the session only if no other call did already.
    generation: u64,
}

/// The JSON-RPC connection of one connector instance. Cheap to clone.
#[derive(Clone)]
pub struct Rpc {
    inner: Arc<Inner>,
}

struct Inner {
    login_client: HttpClient,
    path: String,
    username: String,
    password: SecretString,
    password_variable: String,
    base: ClientConfig,
    extra_context: Map<String, Value>,
    session: Mutex<Option<Session>>,
    next_id: AtomicU64,
    generations: AtomicU64,
}

impl Rpc {
    /// Reads the password from `password_env` (a config error when unset) and builds the
    /// login client. Nothing is sent yet.
    pub fn new(config: &TrytonConfig) -> Result<Self> {
        Self::with_retry(config, lockstep_http_kit::RetryPolicy::default())
    }

    /// As [`Rpc::new`], with a retry policy of the caller's (tests use a quick one).
    pub fn with_retry(
        config: &TrytonConfig,
        retry: lockstep_http_kit::RetryPolicy,
    ) -> Result<Self> {
        config.validate()?;
        // The kit reads and checks the variable; the secret then travels in the login body
        // only (the scheme sends no header).
        let probe = Auth::basic_from_env(&config.username, "password_env", &config.password_env)?;
        drop(probe);
        let password = SecretString::from(
            std::env::var(&config.password_env)
                .map(|p| p.trim().to_owned())
                .unwrap_or_default(),
        );
        let login_auth = Auth::with_secret(
            AuthScheme::None,
            "password_env",
            &config.password_env,
            password.clone(),
        );
        let mut base = ClientConfig::new("Tryton", config.url.trim_end_matches('/'), login_auth);
        base.concurrency = config.concurrency.unwrap_or(2).max(1);
        base.retry = retry;
        let login_client = HttpClient::new(base.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                login_client,
                path: format!("/{}/rpc/", config.database.trim_matches('/')),
                username: config.username.clone(),
                password,
                password_variable: config.password_env.clone(),
                base,
                extra_context: config.context.clone(),
                session: Mutex::new(None),
                next_id: AtomicU64::new(1),
                generations: AtomicU64::new(0),
            }),
        })
    }

    /// Logs in and reads the user's preferences into the session's context.
    async fn login(&self) -> std::result::Result<Session, RpcError> {
        let inner = &*self.inner;
        let body = json!({
            "id": inner.next_id.fetch_add(1, Ordering::Relaxed),
            "method": "common.db.login",
            "params": [inner.username, {"password": inner.password.expose_secret()}],
        });
        let request = Request::post(inner.path.clone())
            .json(body)
            .idempotent(true)
            .describe(format!("logging in to Tryton as `{}`", inner.username));
        let answer: Value = inner.login_client.send_json(&request).await?;
        let result = unwrap_answer(&request.label(), answer)?;
        let (user_id, key) = match &result {
            Value::Array(parts) if parts.len() >= 2 => (parts[0].clone(), parts[1].clone()),
            _ => {
                return Err(RpcError::Http(HttpError::Decode {
                    request: request.label(),
                    detail: "the login answer is not [user id, session key, …]".into(),
                }))
            }
        };
        let user_id = user_id.as_i64().unwrap_or_default();
        let key = key.as_str().unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{user_id}:{key}", inner.username));
        let session_auth = Auth::with_secret(
            AuthScheme::ApiKeyHeader {
                header: HeaderName::from_static("authorization"),
            },
            "password_env",
            &inner.password_variable,
            SecretString::from(format!("Session {token}")),
        );
        let mut settings = inner.base.clone();
        settings.auth = session_auth;
        let client = HttpClient::new(settings)?;
        let generation = inner.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let mut session = Session {
            client,
            context: Map::new(),
            generation,
        };
        let preferences = self
            .send(
                &session,
                "model.res.user.get_preferences",
                vec![json!(true), json!({})],
                true,
                "reading the user's preferences",
            )
            .await?;
        if let Value::Object(preferences) = preferences {
            session.context = preferences;
        }
        session.context.extend(
            inner
                .extra_context
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
        Ok(session)
    }

    /// The current session, logging in when there is none.
    async fn session(&self) -> std::result::Result<Session, RpcError> {
        let mut slot = self.inner.session.lock().await;
        if let Some(session) = slot.as_ref() {
            return Ok(session.clone());
        }
        let session = self.login().await?;
        *slot = Some(session.clone());
        Ok(session)
    }

    /// Forgets `generation`'s session, unless another call replaced it already.
    async fn expire(&self, generation: u64) {
        let mut slot = self.inner.session.lock().await;
        if slot.as_ref().is_some_and(|s| s.generation == generation) {
            *slot = None;
        }
    }

    /// Calls `method` with `params`, the session's context appended (with `extra_context`
    /// over it). `idempotent` calls are retried after a timeout, a reset or a 5xx.
    pub async fn call(
        &self,
        method: &str,
        params: Vec<Value>,
        extra_context: Option<Value>,
        idempotent: bool,
        what: &str,
    ) -> std::result::Result<Value, RpcError> {
        let mut session = self.session().await?;
        let mut relogged = false;
        loop {
            let mut params = params.clone();
            let mut context = session.context.clone();
            if let Some(Value::Object(extra)) = &extra_context {
                context.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            params.push(Value::Object(context));
            match self.send(&session, method, params, idempotent, what).await {
                Err(RpcError::Http(HttpError::Auth { status, .. }))
                    if status == StatusCode::UNAUTHORIZED && !relogged =>
                {
                    lockstep_plugin_sdk::tracing::debug!(
                        method,
                        "the Tryton session expired; logging in again"
                    );
                    self.expire(session.generation).await;
                    session = self.session().await?;
                    relogged = true;
                }
                other => return other,
            }
        }
    }

    async fn send(
        &self,
        session: &Session,
        method: &str,
        params: Vec<Value>,
        idempotent: bool,
        what: &str,
    ) -> std::result::Result<Value, RpcError> {
        let body = json!({
            "id": self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            "method": method,
            "params": params,
        });
        let request = Request::post(self.inner.path.clone())
            .json(body)
            .idempotent(idempotent)
            .describe(format!("{what} ({method})"));
        let answer: Value = session.client.send_json(&request).await?;
        unwrap_answer(&request.label(), answer)
    }
}

/// The `result` of an answer, or its `error` as [`RpcError::Tryton`].
fn unwrap_answer(label: &str, mut answer: Value) -> std::result::Result<Value, RpcError> {
    if let Some(result) = answer.get_mut("result") {
        return Ok(result.take());
    }
    let Some(error) = answer.get("error") else {
        return Err(RpcError::Http(HttpError::Decode {
            request: label.to_owned(),
            detail: "the answer has neither `result` nor `error`".into(),
        }));
    };
    let (name, message) = tryton_error(error);
    Err(RpcError::Tryton {
        request: label.to_owned(),
        name,
        message,
    })
}

/// (name, message) of an `error` member: `[name, [message, description, …]]` for Tryton's
/// exceptions, `[text, traceback]` for unexpected ones (the traceback is left out).
fn tryton_error(error: &Value) -> (String, String) {
    let name = error[0].as_str().unwrap_or("error").to_owned();
    match &error[1] {
        Value::Array(args) => {
            let mut message = args
                .first()
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if let Some(description) = args.get(1).and_then(Value::as_str) {
                if !description.is_empty() {
                    message = format!("{message} {description}");
                }
            }
            if message.is_empty() {
                message = name.clone();
            }
            (name, message)
        }
        _ => {
            // An unexpected server exception: its text is the name; the traceback is no
            // message for people.
            ("ServerError".into(), name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_trytons_message_and_drop_tracebacks() {
        let user = json!([
            "UserError",
            ["A value is required for field \"Name\".", "", null]
        ]);
        assert_eq!(
            tryton_error(&user),
            (
                "UserError".to_owned(),
                "A value is required for field \"Name\".".to_owned()
            )
        );
        let bug = json!(["division by zero", "Traceback (most recent call last): …"]);
        assert_eq!(
            tryton_error(&bug),
            ("ServerError".to_owned(), "division by zero".to_owned())
        );
        let refused = unwrap_answer("x", json!({"id": 1, "error": user})).unwrap_err();
        assert!(refused.is_refusal());
        assert_eq!(
            ConnectorError::from(refused).kind,
            lockstep_plugin_sdk::api::ErrorKind::SCHEMA
        );
        let busy = unwrap_answer("x", json!({"error": ["ConcurrencyException", ["busy"]]}));
        assert!(!busy.unwrap_err().is_refusal());
        assert_eq!(
            unwrap_answer("x", json!({"result": [1]})).unwrap(),
            json!([1])
        );
    }
}
