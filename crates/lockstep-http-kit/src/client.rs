//! The HTTP client of one connector instance: auth, rate budget, concurrency limit,
//! retries, error classification and redacted debug logging around `reqwest`.
//!
//! Invariants:
//! - A request holds a concurrency permit from just before it is counted against the rate
//!   budget until its answer has been read, so the budget counts requests when they leave.
//! - Every answer, whatever its status, is read for the vendor's remaining-requests headers.
//! - Credentials go only to the base URL's origin: a next-page URL on another host is
//!   refused rather than sent the token.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderName, RETRY_AFTER};
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::auth::Auth;
use crate::budget::{RateBudget, RateLimit};
use crate::error::HttpError;
use crate::redact::{excerpt, scrub, url_for_log};
use crate::retry::RetryPolicy;

/// The response headers in which a vendor says how many requests remain in its window.
#[derive(Debug, Clone)]
pub struct RateLimitHeaders {
    /// Header names, tried in order; the first one present is used.
    pub remaining: Vec<HeaderName>,
}

impl Default for RateLimitHeaders {
    fn default() -> Self {
        Self {
            remaining: vec![
                HeaderName::from_static("ratelimit-remaining"),
                HeaderName::from_static("x-ratelimit-remaining"),
            ],
        }
    }
}

/// Everything a client is built from.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The vendor's name, for messages ("HubSpot").
    pub vendor: String,
    /// The API's base URL; request paths are appended to it.
    pub base_url: String,
    /// The connection's credentials.
    pub auth: Auth,
    /// The vendor's documented rate limit for this connection; `None` for no budget.
    pub rate_limit: Option<RateLimit>,
    /// How many requests may be in flight at once.
    pub concurrency: usize,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
    /// How long one attempt may take, from sending to the end of the answer.
    pub timeout: Duration,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// Where the vendor reports the requests remaining in its window.
    pub rate_limit_headers: RateLimitHeaders,
    /// JSON pointers to the human message in the vendor's error bodies, tried in order.
    pub error_message_pointers: Vec<String>,
    /// The `User-Agent` sent with every request.
    pub user_agent: String,
}

impl ClientConfig {
    /// A config with the kit's defaults: no rate budget, 4 requests in flight, the default
    /// retry policy, 60 s per attempt.
    pub fn new(vendor: impl Into<String>, base_url: impl Into<String>, auth: Auth) -> Self {
        Self {
            vendor: vendor.into(),
            base_url: base_url.into(),
            auth,
            rate_limit: None,
            concurrency: 4,
            retry: RetryPolicy::default(),
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            rate_limit_headers: RateLimitHeaders::default(),
            error_message_pointers: ["/message", "/error/message", "/error_description", "/error"]
                .map(String::from)
                .to_vec(),
            user_agent: format!("lockstep/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// One request, kept as data so that each retry sends it afresh.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    path: String,
    query: Vec<(String, String)>,
    body: Option<Value>,
    what: Option<String>,
    idempotent: bool,
    budgets: Vec<Arc<RateBudget>>,
}

impl Request {
    /// A request with `method` to `path` (relative to the base URL, or a URL on its host).
    /// GET, HEAD, PUT, DELETE and OPTIONS are idempotent by default; POST and PATCH are not.
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        let idempotent = matches!(
            method,
            Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
        );
        Self {
            method,
            path: path.into(),
            query: Vec::new(),
            body: None,
            what: None,
            idempotent,
            budgets: Vec::new(),
        }
    }

    pub fn get(path: impl Into<String>) -> Self {
        Self::new(Method::GET, path)
    }

    pub fn post(path: impl Into<String>) -> Self {
        Self::new(Method::POST, path)
    }

    /// The same request to another path or URL, without the query parameters.
    pub fn at(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self.query.clear();
        self
    }

    /// Adds a query parameter.
    pub fn query(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.query.push((name.into(), value.to_string()));
        self
    }

    /// Sets (or replaces) a query parameter.
    pub fn set_query(mut self, name: &str, value: impl ToString) -> Self {
        self.query.retain(|(k, _)| k != name);
        self.query(name, value)
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: Value) -> Self {
        self.body = Some(body);
        self
    }

    /// The JSON body, if any.
    pub fn body(&self) -> Option<&Value> {
        self.body.as_ref()
    }

    /// The JSON body, for changing it (a page token in the body, for instance).
    pub fn body_mut(&mut self) -> Option<&mut Value> {
        self.body.as_mut()
    }

    /// Says what the request does, for messages: `listing contacts`.
    pub fn describe(mut self, what: impl Into<String>) -> Self {
        self.what = Some(what.into());
        self
    }

    /// Declares whether sending the request twice has the effect of sending it once
    /// (searches and upserts by a unique property are; creates are not). Only idempotent
    /// requests are retried after a timeout, a reset or a 5xx.
    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Counts the request against `budget` as well as the connection's own budget (for
    /// endpoints with a lower limit of their own, such as search endpoints).
    pub fn budget(mut self, budget: Arc<RateBudget>) -> Self {
        self.budgets.push(budget);
        self
    }

    /// The HTTP method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Whether the request may be sent twice (see [`Request::idempotent`]).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// `listing contacts (GET /crm/v3/objects/contacts)`, or just the method and path.
    pub fn label(&self) -> String {
        let path = self.path.split('?').next().unwrap_or_default();
        match &self.what {
            Some(what) => format!("{what} ({} {path})", self.method),
            None => format!("{} {path}", self.method),
        }
    }
}

/// A successful answer (2xx, including 207 multi-status).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    label: String,
}

impl Response {
    /// The body as `T`, or a decode error naming the request.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HttpError> {
        serde_json::from_slice(&self.body).map_err(|e| HttpError::Decode {
            request: self.label.clone(),
            detail: format!(
                "the body is not the JSON expected ({e}): {}",
                excerpt(&self.body)
            ),
        })
    }
}

/// The client of one connector instance. Cheap to clone; clones share the budget and the
/// concurrency limit.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Url,
    config: ClientConfig,
    budget: Option<Arc<RateBudget>>,
    permits: Semaphore,
}

/// What one attempt came to.
enum Attempt {
    Done(Response),
    /// Worth another try; the server's `Retry-After`, if it gave one.
    Retry(HttpError, Option<Duration>),
    Fatal(HttpError),
}

impl HttpClient {
    /// Builds the client. A malformed base URL or credential is a config error.
    pub fn new(config: ClientConfig) -> Result<Self, HttpError> {
        let base = Url::parse(config.base_url.trim_end_matches('/')).map_err(|e| {
            HttpError::Config(format!(
                "the {} base URL `{}` is not a valid URL ({e}); write it like \
                 `https://api.example.com`",
                config.vendor, config.base_url
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(HttpError::Config(format!(
                "the {} base URL `{}` must start with https:// (or http:// for a local test \
                 server)",
                config.vendor, config.base_url
            )));
        }
        config
            .auth
            .validate()
            .map_err(|e| HttpError::Config(e.message))?;
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(config.user_agent.clone())
            .build()
            .map_err(|e| HttpError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                budget: config.rate_limit.map(|l| Arc::new(RateBudget::new(l))),
                permits: Semaphore::new(config.concurrency.max(1)),
                config,
            }),
        })
    }

    /// The connection's own rate budget, if it has one.
    pub fn budget(&self) -> Option<&Arc<RateBudget>> {
        self.inner.budget.as_ref()
    }

    /// The config the client was built from.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Sends `request`, retrying as the policy says, and returns the 2xx answer.
    pub async fn send(&self, request: &Request) -> Result<Response, HttpError> {
        let url = self.url(request)?;
        let label = request.label();
        let mut delays = self.inner.config.retry.delays();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (error, retry_after) = match self.attempt(request, &url, &label, attempts).await {
                Attempt::Done(response) => return Ok(response),
                Attempt::Fatal(error) => return Err(error),
                Attempt::Retry(error, retry_after) => (error, retry_after),
            };
            if let (Some(budget), Some(delay)) = (&self.inner.budget, retry_after) {
                budget.pause_for(delay);
            }
            let max_wait = self.inner.config.retry.max_wait;
            let Some(backoff) = delays.next() else {
                return Err(with_attempts(error, attempts, retry_after));
            };
            let wait = backoff.max(retry_after.unwrap_or_default());
            if retry_after.is_some_and(|r| r > max_wait) {
                return Err(with_attempts(error, attempts, retry_after));
            }
            tracing::debug!(
                request = %label,
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                error = %error,
                "retrying"
            );
            tokio::time::sleep(wait).await;
        }
    }

    /// Sends `request` and parses the answer as `T`.
    pub async fn send_json<T: DeserializeOwned>(&self, request: &Request) -> Result<T, HttpError> {
        self.send(request).await?.json()
    }

    fn url(&self, request: &Request) -> Result<Url, HttpError> {
        let base = &self.inner.base;
        let path = request.path.as_str();
        if path.starts_with("http://") || path.starts_with("https://") {
            let url = Url::parse(path).map_err(|e| HttpError::Decode {
                request: request.label(),
                detail: format!("`{path}` is not a URL: {e}"),
            })?;
            if url.origin() != base.origin() {
                return Err(HttpError::Decode {
                    request: request.label(),
                    detail: format!(
                        "the server pointed to `{}`, outside the connection's base URL; the \
                         credentials are not sent there",
                        url_for_log(&url)
                    ),
                });
            }
            return Ok(url);
        }
        let joined = format!(
            "{}/{}",
            base.as_str().trim_end_matches('/'),
            path.trim_start_matches('/')
        );
        Url::parse(&joined).map_err(|e| HttpError::Config(format!("`{joined}` is not a URL: {e}")))
    }

    async fn attempt(&self, request: &Request, url: &Url, label: &str, attempt: u32) -> Attempt {
        let inner = &*self.inner;
        let secret = inner.config.auth.secret();
        // The permit comes before the budget, so that a request counts when it leaves.
        let _permit = match inner.permits.acquire().await {
            Ok(permit) => permit,
            Err(_) => {
                return Attempt::Fatal(HttpError::Config("the HTTP client was closed".into()))
            }
        };
        if let Some(budget) = &inner.budget {
            budget.acquire().await;
        }
        for budget in &request.budgets {
            budget.acquire().await;
        }
        let mut builder = inner
            .http
            .request(request.method.clone(), url.clone())
            .query(&request.query);
        if let Some(body) = &request.body {
            builder = builder.json(body);
        }
        builder = inner.config.auth.apply(builder);
        tracing::debug!(
            method = %request.method,
            url = %url_for_log(url),
            attempt,
            "HTTP request"
        );
        if let Some(body) = &request.body {
            tracing::trace!(body = %scrub(&excerpt(body.to_string().as_bytes()), secret), "HTTP request body");
        }
        let started = Instant::now();
        let sent = async {
            let response = builder.send().await?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body.to_vec()))
        }
        .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (status, headers, body) = match sent {
            Ok(answer) => answer,
            Err(e) => {
                let reached_server = !e.is_connect();
                let detail = scrub(&describe_transport_error(&e), secret);
                tracing::debug!(request = %label, elapsed_ms, error = %detail, "HTTP request failed");
                let error = HttpError::Transport {
                    request: label.to_owned(),
                    detail: format!("could not reach {}: {detail}", inner.config.vendor),
                    attempts: attempt,
                };
                return if reached_server && !request.idempotent {
                    Attempt::Fatal(error)
                } else {
                    Attempt::Retry(error, None)
                };
            }
        };
        tracing::debug!(
            request = %label,
            status = status.as_u16(),
            elapsed_ms,
            body = %scrub(&excerpt(&body), secret),
            "HTTP response"
        );
        self.observe_headers(&headers);
        if status.is_success() {
            return Attempt::Done(Response {
                status,
                headers,
                body,
                label: label.to_owned(),
            });
        }
        let message = scrub(&self.vendor_message(&body), secret);
        let label = label.to_owned();
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = retry_after(&headers);
                Attempt::Retry(
                    HttpError::RateLimited {
                        request: label,
                        message,
                        retry_after: retry_after.unwrap_or_default(),
                        attempts: attempt,
                    },
                    retry_after,
                )
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Attempt::Fatal(HttpError::Auth {
                request: label,
                status,
                message,
                hint: inner.config.auth.fix_hint(),
            }),
            StatusCode::NOT_FOUND => Attempt::Fatal(HttpError::NotFound {
                request: label,
                status,
                message,
            }),
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => {
                let error = HttpError::Server {
                    request: label,
                    status,
                    message,
                    attempts: attempt,
                };
                // A 503 says the server did not take the request on; the others may have
                // done part of it.
                if request.idempotent || status == StatusCode::SERVICE_UNAVAILABLE {
                    Attempt::Retry(error, retry_after(&headers))
                } else {
                    Attempt::Fatal(error)
                }
            }
            s if s.is_server_error() => Attempt::Fatal(HttpError::Server {
                request: label,
                status,
                message,
                attempts: attempt,
            }),
            s if s.is_client_error() => Attempt::Fatal(HttpError::Refused {
                request: label,
                status,
                message,
                body: serde_json::from_slice(&body)
                    .unwrap_or_else(|_| Value::String(scrub(&excerpt(&body), secret))),
            }),
            _ => Attempt::Fatal(HttpError::Decode {
                request: label,
                detail: format!("unexpected status {status}"),
            }),
        }
    }

    fn observe_headers(&self, headers: &HeaderMap) {
        let Some(budget) = &self.inner.budget else {
            return;
        };
        let remaining = self
            .inner
            .config
            .rate_limit_headers
            .remaining
            .iter()
            .find_map(|name| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok());
        if let Some(remaining) = remaining {
            budget.observe_remaining(remaining);
        }
    }

    /// The vendor's own words from an error body, or the body's start.
    fn vendor_message(&self, body: &[u8]) -> String {
        if let Ok(json) = serde_json::from_slice::<Value>(body) {
            for pointer in &self.inner.config.error_message_pointers {
                if let Some(Value::String(message)) = json.pointer(pointer) {
                    return message.clone();
                }
            }
        }
        if body.is_empty() {
            "(no message)".into()
        } else {
            excerpt(body)
        }
    }
}

/// The final error once retries are over, with the attempts made and (for 429s) the wait
/// the server asked for.
fn with_attempts(error: HttpError, attempts: u32, retry_after: Option<Duration>) -> HttpError {
    match error {
        HttpError::Transport {
            request, detail, ..
        } => HttpError::Transport {
            request,
            detail,
            attempts,
        },
        HttpError::Server {
            request,
            status,
            message,
            ..
        } => HttpError::Server {
            request,
            status,
            message,
            attempts,
        },
        HttpError::RateLimited {
            request, message, ..
        } => HttpError::RateLimited {
            request,
            message,
            // Without a `Retry-After`, a second is a reasonable first wait for a scheduler.
            retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
            attempts,
        },
        other => other,
    }
}

/// `Retry-After` as seconds (whole or decimal) or an HTTP date.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

/// A transport error's chain of causes, without the URL (which `label` already names).
fn describe_transport_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "the request timed out".to_owned()
    } else if e.is_connect() {
        "the connection failed".to_owned()
    } else {
        "the connection broke".to_owned()
    };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(7)));
        headers.insert(RETRY_AFTER, "0.25".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        let later = SystemTime::now() + Duration::from_secs(30);
        headers.insert(RETRY_AFTER, httpdate::fmt_http_date(later).parse().unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }
}
