//! Helpers shared by the kit's test binaries: a local server, a scripted router and a client
//! with fast retries.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use lockstep_http_kit::auth::AuthScheme;
use lockstep_http_kit::{Auth, ClientConfig, HttpClient, RetryPolicy, SecretString};
use serde_json::Value;

pub const SECRET: &str = "pat-na1-0123-secret-token";

pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

pub fn bearer() -> Auth {
    Auth::with_secret(
        AuthScheme::Bearer,
        "token_env",
        "ACME_TOKEN",
        SecretString::from(SECRET),
    )
}

pub fn fast_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_wait: Duration::from_secs(5),
    }
}

pub fn make_client(base: &str, configure: impl FnOnce(&mut ClientConfig)) -> HttpClient {
    let mut config = ClientConfig::new("Acme", base, bearer());
    config.retry = fast_retries(4);
    configure(&mut config);
    HttpClient::new(config).unwrap()
}

/// A status, headers and a JSON body.
pub type Answer = (u16, Vec<(&'static str, &'static str)>, Value);

/// A router whose one route answers `answers[n]` to the n-th call (the last one after that)
/// and counts the calls.
pub fn scripted(answers: Vec<Answer>) -> (Router, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let handler = move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let (status, headers, body) = answers[n.min(answers.len() - 1)].clone();
        async move {
            let mut response = (StatusCode::from_u16(status).unwrap(), Json(body)).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
    };
    (
        Router::new()
            .route("/x", get(handler.clone()))
            .route("/x", post(handler)),
        calls,
    )
}
