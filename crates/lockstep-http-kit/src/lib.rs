//! The HTTP kit for Lockstep's SaaS connectors (CRMs, ERPs, mailing-list services).
//!
//! Everything a connector to a vendor's REST API needs besides the vendor's own endpoints:
//!
//! - [`HttpClient`]: one `reqwest` client (rustls) per connector instance, with the
//!   connection's [`Auth`] (bearer token, basic, or an API key in a header, read from the
//!   environment), a [`RateBudget`] set from the vendor's documented limit and corrected by
//!   what responses say (remaining-requests headers, `Retry-After`), a concurrency limit, and
//!   retries with jittered exponential backoff ([`RetryPolicy`]) for 429, 5xx, connection
//!   resets and timeouts.
//! - [`HttpError`]: every failure classified into the SDK's error kinds (transient,
//!   rate-limited with `retry_after`, authentication naming the setting to fix, config, and
//!   refusals a connector can turn into rejected records).
//! - [`paging`]: page-token, next-URL and offset pagination.
//! - [`convert`]: JSON records to Arrow batches from a declared list of fields and logical
//!   types, and back, on top of the SDK's `rows` helpers.
//!
//! Invariants:
//! - A secret never reaches a log line, an error message or a `Debug` output: it lives in a
//!   [`secrecy::SecretString`], the auth header is marked sensitive, and every text taken
//!   from a server (error bodies, logged excerpts) has the secret scrubbed out of it.
//! - Authentication failures (401, 403) are never retried.
//! - A request that may have reached the server is retried only when it is idempotent;
//!   a 429 (which the server refused before doing anything) is always retried.
//! - Nothing here is specific to one vendor: vendors differ by configuration (limits, header
//!   names, JSON pointers), never by code in this crate.

pub mod auth;
pub mod budget;
pub mod client;
pub mod convert;
pub mod error;
pub mod paging;
mod redact;
pub mod retry;

pub use auth::Auth;
pub use budget::{RateBudget, RateLimit};
pub use client::{ClientConfig, HttpClient, RateLimitHeaders, Request, Response};
pub use error::HttpError;
pub use paging::{Page, Pager, PagerState, Paging, TokenPlacement};
pub use reqwest::header::HeaderName;
pub use reqwest::{Method, StatusCode};
pub use retry::RetryPolicy;
pub use secrecy::{ExposeSecret, SecretString};
