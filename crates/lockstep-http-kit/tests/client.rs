//! The kit's client against local HTTP servers (axum on 127.0.0.1, port 0): auth, error
//! classification, retries, rate budget, concurrency, paging and redacted logging.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use lockstep_http_kit::auth::AuthScheme;
use lockstep_http_kit::{
    Auth, ClientConfig, HttpClient, HttpError, Pager, Paging, RateLimit, Request, SecretString,
    TokenPlacement,
};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::ConnectorError;
use serde_json::{json, Value};

mod common;

use common::*;

#[tokio::test]
async fn each_auth_scheme_reaches_the_server_and_debug_hides_it() {
    let app = Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let get = |n: &str| headers.get(n).map(|v| v.to_str().unwrap().to_owned());
            Json(json!({"authorization": get("authorization"), "key": get("x-api-key")}))
        }),
    );
    let base = serve(app).await;
    let schemes = [
        (
            AuthScheme::Bearer,
            "authorization",
            format!("Bearer {SECRET}"),
        ),
        (
            AuthScheme::Basic {
                username: "me".into(),
            },
            "authorization",
            "Basic bWU6cGF0LW5hMS0wMTIzLXNlY3JldC10b2tlbg==".into(),
        ),
        (
            AuthScheme::BasicSecretAsUser,
            "authorization",
            "Basic cGF0LW5hMS0wMTIzLXNlY3JldC10b2tlbjo=".into(),
        ),
        (
            AuthScheme::ApiKeyHeader {
                header: "x-api-key".parse().unwrap(),
            },
            "key",
            SECRET.into(),
        ),
    ];
    for (scheme, field, expected) in schemes {
        let auth = Auth::with_secret(scheme, "key_env", "K", SecretString::from(SECRET));
        let client = HttpClient::new(ClientConfig::new("Acme", &base, auth)).unwrap();
        assert!(!format!("{client:?}").contains(SECRET));
        let echo: Value = client.send_json(&Request::get("/echo")).await.unwrap();
        assert_eq!(echo[field], json!(expected), "{echo}");
    }
}

#[tokio::test]
async fn a_401_fails_at_once_naming_the_setting_without_the_secret() {
    let (app, calls) = scripted(vec![(
        401,
        vec![],
        json!({"status": "error", "message": format!("The token {SECRET} is invalid"),
               "category": "INVALID_AUTHENTICATION"}),
    )]);
    let client = make_client(&serve(app).await, |_| {});
    let error = client
        .send(&Request::get("/x").describe("listing things"))
        .await
        .unwrap_err();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "auth errors are never retried"
    );
    let error = ConnectorError::from(error);
    assert_eq!(error.kind, ErrorKind::AUTH);
    for needle in [
        "token_env",
        "ACME_TOKEN",
        "listing things (GET /x)",
        "[REDACTED]",
    ] {
        assert!(
            error.message.contains(needle),
            "{needle}: {}",
            error.message
        );
    }
    assert!(!error.message.contains(SECRET), "{}", error.message);
}

#[tokio::test]
async fn a_429_waits_for_retry_after_then_succeeds() {
    let (app, calls) = scripted(vec![
        (
            429,
            vec![("retry-after", "1")],
            json!({"message": "slow down"}),
        ),
        (200, vec![], json!({"ok": true})),
    ]);
    let client = make_client(&serve(app).await, |c| {
        c.rate_limit = Some(RateLimit::new(100, Duration::from_secs(10)))
    });
    let started = Instant::now();
    let answer: Value = client.send_json(&Request::get("/x")).await.unwrap();
    assert_eq!(answer, json!({"ok": true}));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_retry_after_longer_than_the_client_waits_becomes_a_rate_limited_error() {
    let (app, calls) = scripted(vec![(
        429,
        vec![("retry-after", "120")],
        json!({"message": "You have reached your ten secondly limit."}),
    )]);
    let client = make_client(&serve(app).await, |_| {});
    let error = ConnectorError::from(client.send(&Request::get("/x")).await.unwrap_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(error.kind, ErrorKind::RATE_LIMITED);
    assert_eq!(error.retry_after_ms, 120_000);
    assert!(
        error.message.contains("ten secondly limit"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn server_errors_are_retried_until_they_pass_or_the_attempts_run_out() {
    let (app, calls) = scripted(vec![
        (502, vec![], json!({"message": "bad gateway"})),
        (500, vec![], json!({"message": "oops"})),
        (200, vec![], json!({"ok": 1})),
    ]);
    let client = make_client(&serve(app).await, |_| {});
    assert_eq!(
        client
            .send_json::<Value>(&Request::get("/x"))
            .await
            .unwrap(),
        json!({"ok": 1})
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (app, calls) = scripted(vec![(500, vec![], json!({"message": "down for good"}))]);
    let client = make_client(&serve(app).await, |_| {});
    let error = client.send(&Request::get("/x")).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert!(error.to_string().contains("after 4 attempt(s)"), "{error}");
    assert!(error.to_string().contains("down for good"), "{error}");
    assert_eq!(ConnectorError::from(error).kind, ErrorKind::TRANSIENT);
}

#[tokio::test]
async fn a_post_that_is_not_idempotent_is_retried_only_when_the_server_did_nothing() {
    let (app, calls) = scripted(vec![(500, vec![], json!({"message": "half done?"}))]);
    let client = make_client(&serve(app).await, |_| {});
    client.send(&Request::post("/x")).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let (app, calls) = scripted(vec![
        (503, vec![], json!({})),
        (429, vec![], json!({})),
        (201, vec![], json!({"id": "1"})),
    ]);
    let client = make_client(&serve(app).await, |_| {});
    client.send(&Request::post("/x")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    let (app, calls) = scripted(vec![(500, vec![], json!({}))]);
    let client = make_client(&serve(app).await, |_| {});
    client
        .send(&Request::post("/x").idempotent(true))
        .await
        .unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn other_client_errors_are_refusals_with_the_vendors_message_and_body() {
    let body = json!({"status": "error", "message": "Property values were not valid",
                      "errors": [{"message": "bad email", "context": {"propertyName": ["email"]}}]});
    let (app, calls) = scripted(vec![(400, vec![], body.clone())]);
    let client = make_client(&serve(app).await, |_| {});
    let error = client.send(&Request::get("/x")).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    match &error {
        HttpError::Refused {
            status,
            message,
            body: answer,
            ..
        } => {
            assert_eq!(status.as_u16(), 400);
            assert_eq!(message, "Property values were not valid");
            assert_eq!(answer, &body);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(error.reject_rows([3]).unwrap()[0].row, 3);

    let (app, _) = scripted(vec![(404, vec![], json!({"message": "no such object"}))]);
    let client = make_client(&serve(app).await, |_| {});
    let error = ConnectorError::from(client.send(&Request::get("/x")).await.unwrap_err());
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(error.message.contains("base URL"), "{}", error.message);
}

/// A server that reads each request and closes the connection without answering.
async fn resetting_server() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buffer = [0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer).await;
            drop(socket);
        }
    });
    (format!("http://{addr}"), accepted)
}

#[tokio::test]
async fn resets_are_retried_for_idempotent_requests_only() {
    let (base, accepted) = resetting_server().await;
    let client = make_client(&base, |_| {});
    let error = client.send(&Request::get("/x")).await.unwrap_err();
    assert_eq!(accepted.load(Ordering::SeqCst), 4);
    assert!(
        matches!(error, HttpError::Transport { attempts: 4, .. }),
        "{error:?}"
    );
    assert_eq!(ConnectorError::from(error).kind, ErrorKind::TRANSIENT);

    let (base, accepted) = resetting_server().await;
    let client = make_client(&base, |_| {});
    client.send(&Request::post("/x")).await.unwrap_err();
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn refused_connections_and_timeouts_are_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let error = make_client(&base, |_| {})
        .send(&Request::post("/x"))
        .await
        .unwrap_err();
    assert!(
        matches!(error, HttpError::Transport { attempts: 4, .. }),
        "{error:?}"
    );

    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new().route(
        "/slow",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                "late"
            }
        }),
    );
    let client = make_client(&serve(app).await, |c| {
        c.timeout = Duration::from_millis(100);
        c.retry = fast_retries(2);
    });
    let error = client.send(&Request::get("/slow")).await.unwrap_err();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert!(error.to_string().contains("timed out"), "{error}");
}

/// A route that records when each request arrived and how many were in flight at most.
#[derive(Default)]
struct Recorder {
    arrivals: Mutex<Vec<Instant>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

fn recording(recorder: Arc<Recorder>, pause: Duration, remaining: Option<u32>) -> Router {
    Router::new()
        .route(
            "/r",
            get(move |State(rec): State<Arc<Recorder>>| async move {
                rec.arrivals.lock().unwrap().push(Instant::now());
                let now = rec.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                rec.max_in_flight.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(pause).await;
                rec.in_flight.fetch_sub(1, Ordering::SeqCst);
                let mut response: Response = Json(json!({})).into_response();
                if let Some(remaining) = remaining {
                    response.headers_mut().insert(
                        "x-ratelimit-remaining",
                        remaining.to_string().parse().unwrap(),
                    );
                }
                response
            }),
        )
        .with_state(recorder)
}

#[tokio::test]
async fn the_budget_keeps_every_window_within_the_limit() {
    let recorder = Arc::new(Recorder::default());
    let base = serve(recording(recorder.clone(), Duration::ZERO, None)).await;
    let client = make_client(&base, |c| {
        c.rate_limit = Some(RateLimit::new(5, Duration::from_millis(300)));
        c.concurrency = 20;
    });
    let started = Instant::now();
    let calls = (0..12).map(|_| {
        let client = client.clone();
        async move { client.send(&Request::get("/r")).await.unwrap() }
    });
    futures_join_all(calls).await;
    let mut arrivals = recorder.arrivals.lock().unwrap().clone();
    arrivals.sort();
    assert_eq!(arrivals.len(), 12);
    for i in 5..arrivals.len() {
        assert!(
            arrivals[i] - arrivals[i - 5] >= Duration::from_millis(290),
            "requests {} and {i} arrived within one window",
            i - 5
        );
    }
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_remaining_header_of_zero_holds_the_next_request_for_a_window() {
    let recorder = Arc::new(Recorder::default());
    let base = serve(recording(recorder.clone(), Duration::ZERO, Some(0))).await;
    let client = make_client(&base, |c| {
        c.rate_limit = Some(RateLimit::new(100, Duration::from_millis(500)))
    });
    client.send(&Request::get("/r")).await.unwrap();
    client.send(&Request::get("/r")).await.unwrap();
    let arrivals = recorder.arrivals.lock().unwrap().clone();
    assert!(
        arrivals[1] - arrivals[0] >= Duration::from_millis(480),
        "{:?}",
        arrivals[1] - arrivals[0]
    );
}

#[tokio::test]
async fn no_more_requests_than_the_concurrency_limit_are_in_flight() {
    let recorder = Arc::new(Recorder::default());
    let base = serve(recording(recorder.clone(), Duration::from_millis(40), None)).await;
    let client = make_client(&base, |c| c.concurrency = 3);
    let calls = (0..12).map(|_| {
        let client = client.clone();
        async move { client.send(&Request::get("/r")).await.unwrap() }
    });
    futures_join_all(calls).await;
    assert_eq!(recorder.max_in_flight.load(Ordering::SeqCst), 3);
}

/// Runs futures concurrently on the current task (the kit has no `futures` dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(futures: impl Iterator<Item = F>)
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for handle in handles {
        handle.await.unwrap();
    }
}

/// Seven items, served by every kind of paging the kit knows.
fn paged_app() -> Router {
    let items: Vec<Value> = (1..=7).map(|i| json!({"id": i})).collect();
    let by_token = items.clone();
    let by_body = items.clone();
    let by_link = items.clone();
    let by_offset = items;
    fn window(items: &[Value], from: usize, size: usize) -> (Vec<Value>, Option<usize>) {
        let end = (from + size).min(items.len());
        let next = (end < items.len()).then_some(end);
        (items[from.min(items.len())..end].to_vec(), next)
    }
    Router::new()
        .route(
            "/token",
            get(move |Query(q): Query<std::collections::HashMap<String, String>>| async move {
                let from = q.get("after").map(|a| a.parse().unwrap()).unwrap_or(0);
                let (results, next) = window(&by_token, from, 3);
                let mut body = json!({"results": results});
                if let Some(next) = next {
                    body["paging"] = json!({"next": {"after": next.to_string()}});
                }
                Json(body)
            }),
        )
        .route(
            "/search",
            post(move |Json(request): Json<Value>| async move {
                let from = request["after"].as_str().map(|a| a.parse().unwrap()).unwrap_or(0);
                assert_eq!(request["filters"], json!(["kept"]));
                let (results, next) = window(&by_body, from, 3);
                Json(json!({"results": results, "paging": {"next": {"after": next.map(|n| n.to_string())}}}))
            }),
        )
        .route(
            "/linked",
            get(move |Query(q): Query<std::collections::HashMap<String, String>>, headers: HeaderMap| async move {
                let host = headers["host"].to_str().unwrap().to_owned();
                let from = q.get("page").map(|a| a.parse().unwrap()).unwrap_or(0);
                let (results, next) = window(&by_link, from, 3);
                let mut response = Json(results).into_response();
                if let Some(next) = next {
                    let link = format!("<http://{host}/linked?page={next}>; rel=\"next\"");
                    response.headers_mut().insert("link", link.parse().unwrap());
                }
                response
            }),
        )
        .route(
            "/offset",
            get(move |Query(q): Query<std::collections::HashMap<String, usize>>| async move {
                let (results, _) = window(&by_offset, q["offset"], q["limit"]);
                Json(json!({"data": results}))
            }),
        )
}

async fn walk(client: &HttpClient, mut pager: Pager) -> (Vec<i64>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    while let Some(page) = pager.next_page(client).await.unwrap() {
        pages += 1;
        ids.extend(page.records.iter().map(|r| r["id"].as_i64().unwrap()));
    }
    (ids, pages)
}

#[tokio::test]
async fn every_kind_of_paging_reads_each_item_once() {
    let client = make_client(&serve(paged_app()).await, |_| {});
    let all: Vec<i64> = (1..=7).collect();
    let token = Paging::PageToken {
        token_at: "/paging/next/after".into(),
        placement: TokenPlacement::Query("after".into()),
    };
    assert_eq!(
        walk(
            &client,
            Pager::new(Request::get("/token"), token.clone(), "/results")
        )
        .await,
        (all.clone(), 3)
    );
    let body = Paging::PageToken {
        token_at: "/paging/next/after".into(),
        placement: TokenPlacement::Body("after".into()),
    };
    let search = Request::post("/search").json(json!({"filters": ["kept"]}));
    assert_eq!(
        walk(&client, Pager::new(search, body, "/results")).await,
        (all.clone(), 3)
    );
    let link = Paging::NextUrl { url_at: None };
    assert_eq!(
        walk(&client, Pager::new(Request::get("/linked"), link, "")).await,
        (all.clone(), 3)
    );
    let offset = Paging::Offset {
        offset_param: "offset".into(),
        limit_param: "limit".into(),
        page_size: 3,
    };
    assert_eq!(
        walk(
            &client,
            Pager::new(Request::get("/offset"), offset, "/data")
        )
        .await,
        (all.clone(), 3)
    );

    // A walk resumes from a saved state without repeating the pages before it.
    let mut pager = Pager::new(Request::get("/token"), token.clone(), "/results");
    pager.next_page(&client).await.unwrap();
    let saved = serde_json::to_value(pager.state()).unwrap();
    let resumed = Pager::resume(
        Request::get("/token"),
        token,
        "/results",
        serde_json::from_value(saved).unwrap(),
    );
    assert_eq!(walk(&client, resumed).await, ((4..=7).collect(), 2));
}

#[tokio::test]
async fn a_next_page_on_another_host_is_refused_rather_than_sent_the_token() {
    let app = Router::new().route(
        "/leak",
        get(|| async { Json(json!({"items": [], "next": "http://127.0.0.2:9/steal"})) }),
    );
    let client = make_client(&serve(app).await, |_| {});
    let mut pager = Pager::new(
        Request::get("/leak"),
        Paging::NextUrl {
            url_at: Some("/next".into()),
        },
        "/items",
    );
    pager.next_page(&client).await.unwrap();
    let error = pager.next_page(&client).await.unwrap_err();
    assert!(
        error
            .to_string()
            .contains("outside the connection's base URL"),
        "{error}"
    );
}
