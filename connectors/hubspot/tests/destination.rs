//! The HubSpot destination against the fake HubSpot: upserts by a unique property, updates by
//! id, partial failures as rejects of exactly the refused records, archiving, and refused
//! streams.

use std::sync::Once;

use lockstep_connector_hubspot::{HubSpot, HubSpotConfig};
use lockstep_fake_hubspot::{FakeHubSpot, ObjectType, Options};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::{DataType, FieldInfo, OpenStreamRequest, SchemaEvolution, StreamWriter};
use serde_json::{json, Map, Value};

const TOKEN: &str = "pat-na1-fake-token-for-destination-tests";
const TOKEN_VAR: &str = "LOCKSTEP_HUBSPOT_DESTINATION_TEST_TOKEN";

/// Sets the token's variable once, before any test reads the environment.
fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var(TOKEN_VAR, TOKEN));
}

async fn start() -> (FakeHubSpot, HubSpot) {
    environment();
    let fake = FakeHubSpot::start(Options {
        token: TOKEN.into(),
        ..Options::default()
    })
    .await
    .unwrap();
    let config: HubSpotConfig =
        serde_json::from_value(json!({"token_env": TOKEN_VAR, "base_url": fake.base_url()}))
            .unwrap();
    let hubspot = HubSpot::connect(config).unwrap();
    (fake, hubspot)
}

fn field(name: &str, data_type: DataType) -> FieldInfo {
    FieldInfo {
        name: name.into(),
        data_type,
        nullable: true,
        native_type: None,
    }
}

fn request(stream: &str, key: &str, fields: Vec<FieldInfo>) -> OpenStreamRequest {
    OpenStreamRequest {
        stream: stream.into(),
        fields,
        key: vec![key.into()],
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

fn rows(values: Vec<Value>) -> Vec<Map<String, Value>> {
    values
        .into_iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect()
}

fn contact_fields() -> Vec<FieldInfo> {
    vec![
        field("email", DataType::Text),
        field("firstname", DataType::Text),
        field("lifecyclestage", DataType::Text),
    ]
}

#[tokio::test]
async fn upserts_by_email_write_and_reject_exactly_the_refused_records() {
    let (fake, hubspot) = start().await;
    fake.insert(
        ObjectType::Contacts,
        &[("email", "old@x.io"), ("firstname", "Old")],
    );
    let mut writer = hubspot
        .start_write(request("contacts", "email", contact_fields()))
        .await
        .unwrap();
    let mut values: Vec<Value> = (0..150)
        .map(|i| json!({"email": format!("c{i}@x.io"), "firstname": format!("N{i}"), "lifecyclestage": "lead"}))
        .collect();
    values[0] = json!({"email": "OLD@x.io", "firstname": "Renamed", "lifecyclestage": "customer"});
    values[7]["lifecyclestage"] = json!("king");
    values[120]["lifecyclestage"] = json!("emperor");
    values[33] = json!({"email": null, "firstname": "Nobody"});
    let batch = batch_from_rows(&contact_fields(), &rows(values)).unwrap();
    let outcome = writer.upsert(batch).await.unwrap();
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.row).collect();
    assert_eq!(rejected, vec![7, 33, 120], "{:?}", outcome.rejected);
    assert!(
        outcome.rejected[0].reason.contains("king"),
        "{}",
        outcome.rejected[0].reason
    );
    assert_eq!(outcome.rejected[1].field.as_deref(), Some("email"));
    assert_eq!((outcome.inserted, outcome.updated), (Some(146), Some(1)));
    writer.flush().await.unwrap();

    let records = fake.records(ObjectType::Contacts);
    assert_eq!(records.len(), 147);
    let old = records
        .iter()
        .find(|r| r.properties["email"] == "old@x.io")
        .unwrap();
    assert_eq!(old.properties["firstname"], "Renamed");
    assert!(!records.iter().any(|r| r.properties["email"] == "c7@x.io"));

    // Writing the same rows again updates, never duplicates.
    let again = batch_from_rows(
        &contact_fields(),
        &rows(vec![json!({"email": "c1@x.io", "firstname": "Again"})]),
    )
    .unwrap();
    let outcome = writer.upsert(again).await.unwrap();
    assert_eq!((outcome.inserted, outcome.updated), (None, Some(1)));
    assert_eq!(fake.records(ObjectType::Contacts).len(), 147);

    // Deleting by email archives.
    let keys = batch_from_rows(
        &[field("email", DataType::Text)],
        &rows(vec![
            json!({"email": "c1@x.io"}),
            json!({"email": "c2@x.io"}),
        ]),
    )
    .unwrap();
    let outcome = writer.delete(keys).await.unwrap();
    assert_eq!(outcome.deleted, Some(2));
    let archived = fake
        .records(ObjectType::Contacts)
        .into_iter()
        .filter(|r| r.archived_ms.is_some())
        .count();
    assert_eq!(archived, 2);
}

#[tokio::test]
async fn updates_by_id_reject_records_hubspot_does_not_have() {
    let (fake, hubspot) = start().await;
    let id = fake.insert(ObjectType::Deals, &[("dealname", "Big"), ("amount", "10")]);
    let fields = vec![
        field("id", DataType::Int64),
        field("amount", DataType::Float64),
    ];
    let mut writer = hubspot
        .start_write(request("deals", "id", fields.clone()))
        .await
        .unwrap();
    let batch = batch_from_rows(
        &fields,
        &rows(vec![
            json!({"id": id, "amount": 12.5}),
            json!({"id": 999999, "amount": 1}),
        ]),
    )
    .unwrap();
    let outcome = writer.upsert(batch).await.unwrap();
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].row, 1);
    assert!(
        outcome.rejected[0]
            .reason
            .contains("Could not get some DEAL objects"),
        "{}",
        outcome.rejected[0].reason
    );
    assert_eq!(
        fake.records(ObjectType::Deals)[0].properties["amount"],
        "12.5"
    );
}

#[tokio::test]
async fn streams_keys_and_fields_hubspot_cannot_take_are_refused_up_front() {
    let (_fake, hubspot) = start().await;
    let error = hubspot
        .start_write(request("contacts", "firstname", contact_fields()))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(error.message.contains("`email`"), "{}", error.message);
    let mut fields = contact_fields();
    fields.push(field("lastmodifieddate", DataType::TimestampTz));
    let error = hubspot
        .start_write(request("contacts", "email", fields))
        .await
        .err()
        .unwrap();
    assert!(error.message.contains("read-only"), "{}", error.message);
    let error = hubspot
        .start_write(request("tickets", "id", vec![]))
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::SCHEMA);
}

#[tokio::test]
async fn with_faults_writes_are_exact_and_stay_within_the_budget() {
    environment();
    let fake = FakeHubSpot::start(Options {
        token: TOKEN.into(),
        rate_limit: Some((3, std::time::Duration::from_secs(1))),
        fault_rate: 0.1,
        ..Options::default()
    })
    .await
    .unwrap();
    let config: HubSpotConfig = serde_json::from_value(json!({
        "token_env": TOKEN_VAR, "base_url": fake.base_url(),
        "rate_limit": {"requests": 3, "per_seconds": 1}
    }))
    .unwrap();
    let hubspot = HubSpot::connect(config).unwrap();
    let mut writer = hubspot
        .start_write(request("contacts", "email", contact_fields()))
        .await
        .unwrap();
    for round in 0..2 {
        let values = (0..250)
            .map(|i| json!({"email": format!("c{i}@x.io"), "firstname": format!("R{round}")}))
            .collect();
        let outcome = writer
            .upsert(batch_from_rows(&contact_fields(), &rows(values)).unwrap())
            .await
            .unwrap();
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    }
    let records = fake.records(ObjectType::Contacts);
    assert_eq!(records.len(), 250, "retried upserts never duplicate");
    assert!(records.iter().all(|r| r.properties["firstname"] == "R1"));
    assert_eq!(fake.counts().1, 0, "no 429: the budget kept to the limit");
}

#[tokio::test]
async fn batch_calls_run_concurrently_up_to_the_connections_limit() {
    environment();
    // Slow answers, as HubSpot's batch calls take a few hundred milliseconds: one call at a
    // time could not use the budget.
    let fake = FakeHubSpot::start(Options {
        token: TOKEN.into(),
        delay: std::time::Duration::from_millis(150),
        ..Options::default()
    })
    .await
    .unwrap();
    let config: HubSpotConfig = serde_json::from_value(json!({
        "token_env": TOKEN_VAR, "base_url": fake.base_url(), "concurrency": 3
    }))
    .unwrap();
    let hubspot = HubSpot::connect(config).unwrap();
    let mut writer = hubspot
        .start_write(request("contacts", "email", contact_fields()))
        .await
        .unwrap();
    let mut values: Vec<Value> = (0..1_000)
        .map(|i| json!({"email": format!("p{i}@x.io"), "firstname": "P"}))
        .collect();
    // One invalid value among them: its call is refused and bisected while others run.
    values[537] = json!({"email": "p537@x.io", "lifecyclestage": "not-a-stage"});
    let outcome = writer
        .upsert(batch_from_rows(&contact_fields(), &rows(values)).unwrap())
        .await
        .unwrap();
    assert_eq!(
        outcome.rejected.iter().map(|r| r.row).collect::<Vec<_>>(),
        vec![537]
    );
    assert_eq!(outcome.inserted, Some(999));
    assert_eq!(fake.records(ObjectType::Contacts).len(), 999);
    assert_eq!(
        fake.most_concurrent(),
        3,
        "10 batch calls with concurrency 3 keep exactly 3 in flight at the busiest"
    );
}
