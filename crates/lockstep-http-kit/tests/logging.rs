//! The kit's request and response logging, in a test binary of its own: `tracing` caches
//! each call site's interest across threads, so a test that captures logs with a scoped
//! subscriber could miss lines while other tests of the same binary run the same call sites
//! without one.

use std::sync::{Arc, Mutex};

use lockstep_http_kit::Request;
use serde_json::json;

mod common;
use common::*;

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn requests_and_answers_are_logged_at_debug_without_the_secret() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (app, _) = scripted(vec![
        (500, vec![], json!({"message": format!("echoing {SECRET}")})),
        (200, vec![], json!({"token": SECRET})),
    ]);
    let client = make_client(&serve(app).await, |_| {});
    client
        .send(
            &Request::post("/x?api_key=abc")
                .idempotent(true)
                .json(json!({"q": SECRET})),
        )
        .await
        .unwrap();
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for needle in [
        "HTTP request",
        "HTTP response",
        "status=500",
        "status=200",
        "retrying",
    ] {
        assert!(logs.contains(needle), "{needle} missing from:\n{logs}");
    }
    assert!(
        !logs.contains(SECRET),
        "the secret leaked into the logs:\n{logs}"
    );
    assert!(logs.contains("[REDACTED]"), "{logs}");
}
