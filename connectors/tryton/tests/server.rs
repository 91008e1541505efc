//! The Tryton connector against a real `trytond` 8.2 (the test-support harness starts one
//! per test on a copy of a shared template database): discovery, exact decoding of
//! Decimals, datetimes and SQLite's 0/1 booleans, full and incremental reads (new records,
//! archived records, the overlap window without duplicates), a session that expires,
//! writes with a refused record, a wrong password, and the conformance kit.

use std::sync::Once;
use std::time::Duration;

use lockstep_connector_tryton::{Tryton, TrytonConfig};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::rows_from_batch;
use lockstep_plugin_sdk::{
    BatchReader, DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, StreamWriter,
};
use lockstep_test_support::skip::skip_or_fail;
use lockstep_test_support::tryton::{TrytonOptions, TrytonServer, ADMIN_LOGIN, ADMIN_PASSWORD};
use serde_json::{json, Value};

const PASSWORD_VAR: &str = "LOCKSTEP_TRYTON_TEST_PASSWORD";
const WRONG_VAR: &str = "LOCKSTEP_TRYTON_TEST_WRONG_PASSWORD";
const WRONG_PASSWORD: &str = "not-the-password-81c2d";

fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(PASSWORD_VAR, ADMIN_PASSWORD);
        std::env::set_var(WRONG_VAR, WRONG_PASSWORD);
    });
}

fn server(options: TrytonOptions) -> Option<TrytonServer> {
    environment();
    match TrytonServer::start_with(options) {
        Ok(server) => Some(server),
        Err(e) => {
            skip_or_fail(e);
            None
        }
    }
}

fn config_json(server: &TrytonServer, extra: Value) -> Value {
    let mut config = json!({
        "url": server.url(),
        "database": server.database,
        "username": ADMIN_LOGIN,
        "password_env": PASSWORD_VAR,
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    config
}

fn connect(server: &TrytonServer, extra: Value) -> Tryton {
    let config: TrytonConfig = serde_json::from_value(config_json(server, extra)).unwrap();
    Tryton::connect(config).unwrap()
}

/// Creates records of `model` through the connector's own RPC, returning their ids.
async fn create(tryton: &Tryton, model: &str, records: Value) -> Vec<i64> {
    let answer = tryton
        .rpc()
        .call(
            &format!("model.{model}.create"),
            vec![records],
            None,
            false,
            "test setup",
        )
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()));
    answer
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect()
}

async fn call(tryton: &Tryton, method: &str, params: Vec<Value>) -> Value {
    tryton
        .rpc()
        .call(method, params, None, false, "test setup")
        .await
        .unwrap_or_else(|e| panic!("{}", e.message()))
}

fn read_request(stream: &str, mode: ReadMode, checkpoint: Option<Value>) -> ReadRequest {
    ReadRequest {
        stream: stream.into(),
        mode,
        cursor_field: (mode == ReadMode::Incremental).then(|| "last_modified_at".into()),
        checkpoint,
        batch_size: Some(3),
        ..ReadRequest::default()
    }
}

/// Reads to the end: the rows as JSON and the last checkpoint.
async fn read_all(
    tryton: &Tryton,
    request: ReadRequest,
) -> (Vec<serde_json::Map<String, Value>>, Option<Value>) {
    let mut reader = tryton.start_read(request).await.unwrap();
    let mut rows = Vec::new();
    let mut checkpoint = None;
    while let Some((batch, cp)) = reader.next_batch().await.unwrap() {
        assert!(batch.num_rows() <= 3);
        rows.extend(rows_from_batch(&batch));
        checkpoint = Some(cp);
    }
    (rows, checkpoint)
}

fn ids(rows: &[serde_json::Map<String, Value>]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn parties_read_in_full_then_incrementally_with_new_and_archived_records() {
    let Some(server) = server(TrytonOptions::default()) else {
        return;
    };
    let tryton = connect(&server, json!({"page_size": 2, "overlap_seconds": 30}));
    let catalog = tryton.catalog().await.unwrap();
    let party = catalog
        .streams
        .iter()
        .find(|s| s.name == "party.party")
        .unwrap();
    assert_eq!(party.primary_key, ["id"]);
    assert_eq!(party.field("active").unwrap().data_type, DataType::Boolean);
    assert_eq!(
        party.field("write_date").unwrap().data_type,
        DataType::TimestampTz
    );
    assert!(
        party.field("addresses").is_none(),
        "one2many fields are streams of their own"
    );
    let address = catalog
        .streams
        .iter()
        .find(|s| s.name == "party.address")
        .unwrap();
    assert_eq!(address.field("party").unwrap().data_type, DataType::Int64);

    let names = ["Ann", "Bob", "Cy", "Di", "Ed"];
    let created = create(
        &tryton,
        "party.party",
        json!(names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>()),
    )
    .await;
    let (rows, full_checkpoint) =
        read_all(&tryton, read_request("party.party", ReadMode::Full, None)).await;
    // The template's company party comes first.
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert_eq!(&ids(&rows)[1..], created.as_slice());
    assert_eq!(rows[1]["name"], json!("Ann"));
    assert_eq!(rows[1]["active"], json!(true), "SQLite's 1 is true");
    assert!(full_checkpoint.is_some());

    let (first, checkpoint) = read_all(
        &tryton,
        read_request("party.party", ReadMode::Incremental, None),
    )
    .await;
    assert_eq!(first.len(), 6);
    // Nothing changed: the overlap window reads the records again, but delivers none twice.
    let (idle, idle_checkpoint) = read_all(
        &tryton,
        read_request("party.party", ReadMode::Incremental, checkpoint.clone()),
    )
    .await;
    assert!(idle.is_empty(), "{idle:?}");
    assert!(
        idle_checkpoint.is_none(),
        "a read of nothing keeps the checkpoint"
    );
    let checkpoint = checkpoint.unwrap();

    // A new address has no write_date (never written; with a street, Tryton would write
    // its derived street fields at once): found by its create_date.
    let address_ids = create(
        &tryton,
        "party.address",
        json!([{"party": created[0], "city": "Springfield"}]),
    )
    .await;
    let (addresses, _) = read_all(
        &tryton,
        read_request("party.address", ReadMode::Incremental, None),
    )
    .await;
    let new_address = addresses
        .iter()
        .find(|r| r["id"] == json!(address_ids[0]))
        .expect("the new address is read");
    assert_eq!(new_address["write_date"], Value::Null, "{new_address:?}");
    assert_eq!(new_address["party"], json!(created[0]));

    // An archived party and a renamed one are read; the others are not read again.
    call(
        &tryton,
        "model.party.party.write",
        vec![
            json!([created[1]]),
            json!({"active": false}),
            json!([created[2]]),
            json!({"name": "Cyrus"}),
        ],
    )
    .await;
    let (changed, _) = read_all(
        &tryton,
        read_request("party.party", ReadMode::Incremental, Some(checkpoint)),
    )
    .await;
    assert_eq!(ids(&changed), [created[1], created[2]], "{changed:?}");
    assert_eq!(changed[0]["active"], json!(false));
    assert_eq!(changed[1]["name"], json!("Cyrus"));
}

#[tokio::test]
async fn decimals_keep_every_digit_and_a_session_that_expires_is_replaced() {
    let Some(server) = server(TrytonOptions {
        session_timeout: Some(1),
    }) else {
        return;
    };
    let tryton = connect(
        &server,
        json!({"models": ["product.template"], "fields": {"product.template": ["name", "list_price", "default_uom"]}, "rec_names": true}),
    );
    let catalog = tryton.catalog().await.unwrap();
    let price = catalog.streams[0].field("list_price").unwrap();
    assert_eq!(
        price.data_type,
        DataType::Decimal {
            precision: 38,
            scale: 4
        }
    );
    create(&tryton, "product.template", json!([
        {"name": "Widget", "default_uom": 1, "list_price": {"__class__": "Decimal", "decimal": "12345678901234.5678"}},
        {"name": "Gadget", "default_uom": 1, "list_price": {"__class__": "Decimal", "decimal": "0.0001"}},
    ])).await;
    // Idle past the session's timeout: the next call logs in again by itself.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (rows, _) = read_all(
        &tryton,
        read_request("product.template", ReadMode::Full, None),
    )
    .await;
    let prices: Vec<&Value> = rows.iter().map(|r| &r["list_price"]).collect();
    assert_eq!(prices, [&json!("12345678901234.5678"), &json!("0.0001")]);
    assert_eq!(rows[0]["default_uom"], json!(1));
    assert_eq!(rows[0]["default_uom_rec_name"], json!("Unit"));
}

fn party_fields() -> Vec<FieldInfo> {
    let field = |name: &str| FieldInfo {
        name: name.into(),
        data_type: DataType::Text,
        nullable: true,
        native_type: None,
    };
    vec![field("code"), field("name")]
}

fn text_batch(rows: &[(&str, &str)]) -> RecordBatch {
    let rows: Vec<serde_json::Map<String, Value>> = rows
        .iter()
        .map(|(code, name)| {
            json!({"code": code, "name": name})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    lockstep_plugin_sdk::rows::batch_from_rows(&party_fields(), &rows).unwrap()
}

#[tokio::test]
async fn a_record_tryton_refuses_is_one_reject_and_the_rest_of_the_batch_lands() {
    let Some(server) = server(TrytonOptions::default()) else {
        return;
    };
    let tryton = connect(&server, json!({"models": ["party.party"]}));
    let mut writer = tryton
        .start_write(OpenStreamRequest {
            stream: "party.party".into(),
            fields: party_fields(),
            key: vec!["code".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let first = writer
        .upsert(text_batch(&[("C-1", "Ann"), ("C-2", "Bob"), ("C-3", "Cy")]))
        .await
        .unwrap();
    assert_eq!(
        (first.inserted, first.updated),
        (Some(3), Some(0)),
        "{first:?}"
    );
    // C-2 renamed, and three new parties, two of which share a code: Tryton refuses the
    // second by its uniqueness constraint on codes.
    let second = writer
        .upsert(text_batch(&[
            ("C-2", "Robert"),
            ("C-4", "Di"),
            ("C-4", "Dup"),
            ("C-5", "Ed"),
        ]))
        .await
        .unwrap();
    assert_eq!(second.rejected.len(), 1, "{second:?}");
    assert_eq!(second.rejected[0].row, 2);
    assert!(
        second.rejected[0].reason.contains("code") || second.rejected[0].reason.contains("unique"),
        "Tryton's own message: {}",
        second.rejected[0].reason
    );
    assert_eq!(
        (second.inserted, second.updated),
        (Some(2), Some(1)),
        "{second:?}"
    );
    let (rows, _) = read_all(&tryton, read_request("party.party", ReadMode::Full, None)).await;
    let mut pairs: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["code"].as_str().is_some_and(|c| c.starts_with("C-")))
        .map(|r| {
            (
                r["code"].as_str().unwrap().into(),
                r["name"].as_str().unwrap().into(),
            )
        })
        .collect();
    pairs.sort();
    let expected: Vec<(String, String)> = [
        ("C-1", "Ann"),
        ("C-2", "Robert"),
        ("C-3", "Cy"),
        ("C-4", "Di"),
        ("C-5", "Ed"),
    ]
    .iter()
    .map(|(c, n)| (c.to_string(), n.to_string()))
    .collect();
    assert_eq!(pairs, expected);

    // A delete by code removes the record for good.
    let outcome = writer.delete(text_batch(&[("C-5", "Ed")])).await.unwrap();
    assert_eq!(outcome.deleted, Some(1));
    let (rows, _) = read_all(&tryton, read_request("party.party", ReadMode::Full, None)).await;
    assert!(rows.iter().all(|r| r["code"] != json!("C-5")));
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_naming_password_env_without_the_password() {
    let Some(server) = server(TrytonOptions::default()) else {
        return;
    };
    let tryton = connect(&server, json!({"password_env": WRONG_VAR}));
    let started = std::time::Instant::now();
    let error = tryton.check_access().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::AUTH, "{}", error.message);
    assert!(
        error.message.contains("password_env") && error.message.contains(WRONG_VAR),
        "{}",
        error.message
    );
    assert!(!error.message.contains(WRONG_PASSWORD) && !error.message.contains(ADMIN_PASSWORD));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not retried: {:?}",
        started.elapsed()
    );
    let unset: Result<Tryton, _> = Tryton::connect(
        serde_json::from_value(config_json(
            &server,
            json!({"password_env": "LOCKSTEP_TRYTON_UNSET_VARIABLE"}),
        ))
        .unwrap(),
    );
    let error = unset.err().unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(
        error.message.contains("LOCKSTEP_TRYTON_UNSET_VARIABLE"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let Some(server) = server(TrytonOptions::default()) else {
        return;
    };
    let tryton = connect(&server, json!({}));
    create(
        &tryton,
        "party.party",
        json!((0..8)
            .map(|i| json!({"name": format!("Party {i}")}))
            .collect::<Vec<_>>()),
    )
    .await;
    let report = lockstep_test_support::Conformance::new(lockstep_test_support::cdylib_path(
        "lockstep_connector_tryton",
    ))
    .source_config(config_json(&server, json!({"models": ["party.party"]})))
    .bad_config(json!({"url": server.url()}))
    .stream("party.party")
    .cursor_field("last_modified_at")
    .run()
    .await
    .assert_passed();
    println!("{report}");
}
