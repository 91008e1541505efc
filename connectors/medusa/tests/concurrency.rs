//! How many write requests the Medusa writer keeps in flight, observed by a local HTTP server
//! that answers the two admin endpoints a product write uses (the lookup by handle, answering
//! "none", and the create, answering after a delay). What Medusa does with the requests is
//! tested against the real server in `server.rs`; this file checks only their timing: up to
//! the connection's `concurrency` at once, and never two at once for the same handle.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use lockstep_connector_medusa::{Medusa, MedusaConfig};
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::{DataType, FieldInfo, OpenStreamRequest, StreamWriter};
use serde_json::{json, Map, Value};

/// What the server saw.
#[derive(Default)]
struct Seen {
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
    /// Handles with a create in flight now.
    active: Mutex<HashSet<String>>,
    /// Handles whose creates overlapped.
    overlapped: Mutex<Vec<String>>,
    created: Mutex<Vec<String>>,
}

async fn list_products() -> Json<Value> {
    Json(json!({"products": [], "count": 0, "offset": 0, "limit": 50}))
}

async fn create_product(State(seen): State<Arc<Seen>>, Json(body): Json<Value>) -> Json<Value> {
    let handle = body["handle"].as_str().unwrap_or_default().to_owned();
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.most_in_flight.fetch_max(now, Ordering::SeqCst);
    if !seen.active.lock().unwrap().insert(handle.clone()) {
        seen.overlapped.lock().unwrap().push(handle.clone());
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    seen.active.lock().unwrap().remove(&handle);
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    seen.created.lock().unwrap().push(handle.clone());
    Json(json!({"product": {"id": format!("prod_{handle}"), "handle": handle}}))
}

#[tokio::test]
async fn product_writes_keep_up_to_concurrency_requests_in_flight_one_at_a_time_per_handle() {
    let seen = Arc::new(Seen::default());
    let app = Router::new()
        .route("/admin/products", get(list_products).post(create_product))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    std::env::set_var("LOCKSTEP_MEDUSA_CONCURRENCY_TEST_KEY", "sk_local");
    let config: MedusaConfig = serde_json::from_value(json!({
        "url": format!("http://{addr}"),
        "api_key_env": "LOCKSTEP_MEDUSA_CONCURRENCY_TEST_KEY",
        "concurrency": 3,
    }))
    .unwrap();
    let medusa = Medusa::connect(config).unwrap();
    let fields: Vec<FieldInfo> = [("handle", DataType::Text), ("title", DataType::Text)]
        .into_iter()
        .map(|(name, data_type)| FieldInfo {
            name: name.into(),
            data_type,
            nullable: true,
            native_type: None,
        })
        .collect();
    let mut writer = medusa
        .start_write(OpenStreamRequest {
            stream: "products".into(),
            fields: fields.clone(),
            key: vec!["handle".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    // Ten new products, the handle `p-1` three times (rows 1, 5 and 9).
    let rows: Vec<Map<String, Value>> = (0..10)
        .map(|i| {
            let handle = if i % 4 == 1 {
                "p-1".to_owned()
            } else {
                format!("p-{i}")
            };
            match json!({"handle": handle, "title": format!("Product {i}")}) {
                Value::Object(row) => row,
                _ => unreachable!(),
            }
        })
        .collect();
    let outcome = writer
        .upsert(batch_from_rows(&fields, &rows).unwrap())
        .await
        .unwrap();

    assert_eq!(outcome.inserted, Some(10), "{outcome:?}");
    assert!(outcome.rejected.is_empty(), "{outcome:?}");
    assert_eq!(seen.created.lock().unwrap().len(), 10);
    assert_eq!(
        seen.most_in_flight.load(Ordering::SeqCst),
        3,
        "the connection's concurrency (3) is what the writer keeps in flight"
    );
    assert!(
        seen.overlapped.lock().unwrap().is_empty(),
        "requests for one handle overlapped: {:?}",
        seen.overlapped.lock().unwrap()
    );
}
