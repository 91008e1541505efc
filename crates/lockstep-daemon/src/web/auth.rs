//! Who may use the status page, and the CSRF tokens of its forms.
//!
//! Ways in: a bearer token (`[daemon] web_token_env` names the variable holding it), sent as
//! `Authorization: Bearer ...` or exchanged on `/ui/login` for a session cookie; basic auth
//! against an argon2 hash (`web_user`, `web_password_hash`); or nothing at all on a loopback
//! address when neither is configured (the user is then `local`).
//!
//! Invariants:
//! - Secrets are compared in constant time and never logged or rendered; the session cookie
//!   is an HMAC of the token under the daemon's random key, not the token, and ends when the
//!   daemon restarts.
//! - A CSRF token is the HMAC of the user's name under the same key: a page from elsewhere
//!   cannot compute it, and a form without the right one is refused with 403.
//! - Without authentication configured on an address other than loopback, nobody gets in.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use argon2::Argon2;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use maud::html;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::pages::layout;
use super::Web;

/// The session cookie's name.
const COOKIE: &str = "lockstep_session";

/// Why the page's authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WebSetupError {
    #[error(
        "[daemon] web_token_env names `{0}`, which is not set or empty; export it with the \
         status page's bearer token before starting the daemon, or remove web_token_env"
    )]
    UnsetToken(String),
    #[error(
        "[daemon] web_password_hash is not a valid argon2 PHC string ({0}); write the output \
         of e.g. `printf %s \"$PASSWORD\" | argon2 \"$(openssl rand -hex 16)\" -id -e`"
    )]
    BadHash(String),
    #[error("cannot draw the random key of the status page's CSRF tokens: {0}")]
    Random(String),
}

/// Who made a request: the basic-auth user, `token` for the bearer token, or `local`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Actor(pub String);

/// The page's gatekeeper: what it accepts and the key of its MACs.
pub(crate) struct Gate {
    token: Option<String>,
    basic: Option<(String, String)>,
    key: [u8; 32],
    /// Why nobody gets in, when authentication is required but not configured.
    refused: Option<String>,
    /// MACs of basic-auth headers already verified, so that argon2 runs once per password.
    verified: Mutex<HashSet<Vec<u8>>>,
}

impl Gate {
    pub(crate) fn new(
        auth: &lockstep_config::WebAuth,
        local: Option<SocketAddr>,
    ) -> Result<Gate, WebSetupError> {
        let token = match &auth.token_env {
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Some(value),
                _ => return Err(WebSetupError::UnsetToken(var.clone())),
            },
            None => None,
        };
        let basic = match &auth.basic {
            Some(b) => {
                PasswordHash::new(&b.password_hash)
                    .map_err(|e| WebSetupError::BadHash(e.to_string()))?;
                Some((b.user.clone(), b.password_hash.clone()))
            }
            None => None,
        };
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| WebSetupError::Random(e.to_string()))?;
        let loopback = local.is_some_and(|a| a.ip().is_loopback());
        let refused = (!auth.is_configured() && !loopback).then(|| {
            format!(
                "the daemon listens on {}, which is not a loopback address, and no \
                 authentication is configured. Set [daemon] web_token_env (a variable \
                 holding a bearer token) or web_user with web_password_hash, or listen on \
                 127.0.0.1",
                local.map_or_else(|| "an unknown address".to_owned(), |a| a.to_string())
            )
        });
        Ok(Gate {
            token,
            basic,
            key,
            refused,
            verified: Mutex::new(HashSet::new()),
        })
    }

    /// Why the page is off, if it is.
    pub(crate) fn refused(&self) -> Option<&str> {
        self.refused.as_deref()
    }

    fn requires_auth(&self) -> bool {
        self.token.is_some() || self.basic.is_some()
    }

    fn mac(&self, purpose: &str, data: &[u8]) -> Vec<u8> {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            return Vec::new();
        };
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().to_vec()
    }

    /// The session cookie's value for the bearer token.
    fn session(&self) -> Option<String> {
        let token = self.token.as_ref()?;
        Some(URL_SAFE_NO_PAD.encode(self.mac("session", token.as_bytes())))
    }

    /// The CSRF token of `actor`'s forms.
    pub(crate) fn csrf(&self, actor: &Actor) -> String {
        URL_SAFE_NO_PAD.encode(self.mac("csrf", actor.0.as_bytes()))
    }

    /// Whether `given` is `actor`'s CSRF token.
    pub(crate) fn csrf_ok(&self, actor: &Actor, given: Option<&str>) -> bool {
        given.is_some_and(|g| eq(g, &self.csrf(actor)))
    }

    /// The user a request's credentials name, or `None` when they are missing or wrong.
    pub(crate) fn actor(&self, headers: &HeaderMap) -> Option<Actor> {
        if self.refused.is_some() {
            return None;
        }
        if !self.requires_auth() {
            return Some(Actor("local".into()));
        }
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if let (Some(token), Some(given)) = (&self.token, authorization.strip_prefix("Bearer ")) {
            if eq(given.trim(), token) {
                return Some(Actor("token".into()));
            }
        }
        if let (Some(session), Some(given)) = (self.session(), cookie(headers, COOKIE)) {
            if eq(&given, &session) {
                return Some(Actor("token".into()));
            }
        }
        if let (Some((user, hash)), Some(given)) =
            (&self.basic, authorization.strip_prefix("Basic "))
        {
            let decoded = STANDARD.decode(given.trim()).ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (name, password) = text.split_once(':')?;
            if !eq(name, user) {
                return None;
            }
            let seen = self.mac("basic", text.as_bytes());
            let mut verified = self.verified.lock().unwrap_or_else(|p| p.into_inner());
            if verified.contains(&seen) {
                return Some(Actor(user.clone()));
            }
            let parsed = PasswordHash::new(hash).ok()?;
            if Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
            {
                // A handful of passwords at most: the set cannot grow past the users who
                // know the password.
                verified.insert(seen);
                return Some(Actor(user.clone()));
            }
        }
        None
    }

    /// The answer to a request without valid credentials: 401, asking for basic auth when it
    /// is configured, with the token's login form otherwise.
    pub(crate) fn challenge(&self) -> Response {
        let body = layout(
            "Sign in",
            html! {
                h1 { "Sign in" }
                @if self.token.is_some() {
                    (login_markup(false))
                } @else {
                    p { "This page needs the user and password set in the daemon's config ([daemon] web_user)." }
                }
            },
        );
        let mut response = (StatusCode::UNAUTHORIZED, body).into_response();
        if self.basic.is_some() {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"lockstep\", charset=\"UTF-8\""),
            );
        }
        response
    }
}

/// Constant-time equality of two strings.
fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The value of cookie `name` in a request.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn login_markup(wrong: bool) -> maud::Markup {
    html! {
        @if wrong { p.error { "That token is not the one the daemon was started with." } }
        form method="post" action="/ui/login" {
            label for="token" { "Bearer token" }
            input #token type="password" name="token" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
    }
}

pub(crate) async fn login_form(State(web): State<Arc<Web>>) -> Response {
    if web.gate.token.is_none() {
        return Redirect::to("/ui").into_response();
    }
    layout("Sign in", html! { h1 { "Sign in" } (login_markup(false)) }).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

/// Exchanges the bearer token for a session cookie (HttpOnly, SameSite=Strict).
pub(crate) async fn login(State(web): State<Arc<Web>>, Form(login): Form<Login>) -> Response {
    let (Some(token), Some(session)) = (&web.gate.token, web.gate.session()) else {
        return Redirect::to("/ui").into_response();
    };
    if web.gate.refused.is_some() || !eq(login.token.trim(), token) {
        return (
            StatusCode::UNAUTHORIZED,
            layout("Sign in", html! { h1 { "Sign in" } (login_markup(true)) }),
        )
            .into_response();
    }
    let cookie = format!("{COOKIE}={session}; Path=/ui; HttpOnly; SameSite=Strict");
    let mut response = Redirect::to("/ui").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}
