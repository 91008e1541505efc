//! The status page: an HTML view of the daemon for operators, under `/ui`, served by the same
//! axum server as `/metrics` and `/api` (issue 18).
//!
//! Parts: `pages` (the overview, a sync's page, a conflict's page, all rendered on the server
//! with maud), `charts` (inline SVG bar charts, readable without JavaScript), `actions` (the
//! POST forms: approve or discard held deletes, retry rejected records, resolve a conflict),
//! `auth` (bearer token or basic auth, and the CSRF tokens of the forms), and the two assets
//! in `crates/lockstep-daemon/assets/`, compiled into the binary.
//!
//! Invariants:
//! - Nothing is loaded from elsewhere: the stylesheet and the polling script are embedded
//!   with `include_str!`, charts are inline SVG, and a strict Content-Security-Policy
//!   (`default-src 'self'`) goes with every answer.
//! - On an address other than loopback the page is served only with authentication
//!   configured (`[daemon] web_token_env`, or `web_user` with `web_password_hash`); without,
//!   every `/ui` request is refused and the daemon logs how to fix it.
//! - Every change is a POST carrying a CSRF token (an HMAC of the user under a random key
//!   drawn at start-up); a missing or wrong token is refused with 403 before anything is
//!   read. Each change asks for confirmation first and is recorded in the state store's
//!   action log with who and when.
//! - Every value is HTML-escaped by the templates; config values are shown with secrets
//!   redacted, and no resolved environment value is ever rendered.
//! - The page changes the daemon only through the state store (and, for a retry of rejected
//!   records, a `lockstep rejects retry` child): it never loads a plugin.

mod actions;
mod auth;
mod charts;
mod pages;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::shared::Shared;

use auth::Gate;
pub(crate) use auth::WebSetupError;

/// The stylesheet, compiled in.
const STYLE: &str = include_str!("../../assets/style.css");
/// The script that refreshes a page's live part, compiled in.
const SCRIPT: &str = include_str!("../../assets/live.js");

/// The security headers of every answer under `/ui`.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the page's handlers share.
pub(crate) struct Web {
    pub shared: Arc<Shared>,
    pub gate: Gate,
}

/// The status page's routes, to merge into the daemon's router. `local` is the address the
/// daemon listens on: whether it is loopback decides whether the page may go without
/// authentication. Fails when the configured authentication cannot be set up (an unset token
/// variable, a malformed hash).
pub(crate) fn router(
    shared: Arc<Shared>,
    local: Option<SocketAddr>,
) -> Result<Router, WebSetupError> {
    let config = shared.config();
    let gate = Gate::new(&config.daemon.web_auth, local)?;
    if let Some(reason) = gate.refused() {
        tracing::error!("the status page is off: {reason}");
    }
    let web = Arc::new(Web { shared, gate });
    let protected = Router::new()
        .route("/ui", get(pages::overview))
        .route("/ui/syncs/{sync}", get(pages::sync_page))
        .route("/ui/conflicts/{id}", get(pages::conflict_page))
        .route(
            "/ui/syncs/{sync}/deletes/approve",
            post(actions::approve_deletes),
        )
        .route(
            "/ui/syncs/{sync}/deletes/discard",
            post(actions::discard_deletes),
        )
        .route(
            "/ui/syncs/{sync}/rejects/retry",
            post(actions::retry_rejects),
        )
        .route(
            "/ui/conflicts/{id}/resolve",
            post(actions::resolve_conflict),
        )
        .route_layer(middleware::from_fn_with_state(web.clone(), require_user));
    Ok(Router::new()
        .route("/", get(|| async { Redirect::to("/ui") }))
        .route("/ui/login", get(auth::login_form).post(auth::login))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/assets/live.js", get(script))
        .merge(protected)
        .layer(middleware::from_fn(security_headers))
        .with_state(web))
}

/// Lets a request through only with a user: checks the credentials and puts the [`Actor`]
/// into the request for the handlers.
async fn require_user(State(web): State<Arc<Web>>, mut request: Request, next: Next) -> Response {
    if let Some(reason) = web.gate.refused() {
        return (
            StatusCode::FORBIDDEN,
            format!("The status page is off: {reason}\n"),
        )
            .into_response();
    }
    match web.gate.actor(request.headers()) {
        Some(actor) => {
            request.extensions_mut().insert(actor);
            next.run(request).await
        }
        None => web.gate.challenge(),
    }
}

/// Adds the security headers to every answer: no framing, no sniffing, no referrer, no cache,
/// and a Content-Security-Policy that allows this origin only.
async fn security_headers(request: Request, next: Next) -> Response {
    let is_ui = request.uri().path().starts_with("/ui");
    let mut response = next.run(request).await;
    if is_ui {
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers
            .entry(header::CACHE_CONTROL)
            .or_insert(HeaderValue::from_static("no-store"));
    }
    response
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        SCRIPT,
    )
        .into_response()
}

#[cfg(test)]
mod tests;
