//! The HubSpot source against the fake HubSpot: discovery, full and incremental reads
//! (ties, the 10,000-result cap), faults and 429s, a bad token, and the conformance kit.

use std::collections::BTreeSet;
use std::sync::Once;
use std::time::Duration;

use lockstep_connector_hubspot::{HubSpot, HubSpotConfig};
use lockstep_fake_hubspot::{FakeHubSpot, ObjectType, Options};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::{Array, Int64Array};
use lockstep_plugin_sdk::{BatchReader, DataType, ReadMode, ReadRequest};
use serde_json::{json, Value};

const TOKEN: &str = "pat-na1-fake-token-for-tests";
const TOKEN_VAR: &str = "LOCKSTEP_HUBSPOT_TEST_TOKEN";
const WRONG_VAR: &str = "LOCKSTEP_HUBSPOT_TEST_WRONG_TOKEN";

/// Sets the tests' variables once, before any test reads the environment.
fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(TOKEN_VAR, TOKEN);
        std::env::set_var(WRONG_VAR, "pat-na1-revoked-token");
    });
}

async fn fake(options: Options) -> FakeHubSpot {
    environment();
    FakeHubSpot::start(Options {
        token: TOKEN.into(),
        ..options
    })
    .await
    .unwrap()
}

fn config(fake: &FakeHubSpot, extra: Value) -> HubSpotConfig {
    let mut config = json!({"token_env": TOKEN_VAR, "base_url": fake.base_url()});
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(config).unwrap()
}

fn insert_contacts(fake: &FakeHubSpot, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            fake.insert(
                ObjectType::Contacts,
                &[("email", &format!("c{i}@x.io")), ("firstname", "Ann")],
            )
        })
        .collect()
}

/// Reads to the end; returns the ids in order and the last checkpoint.
async fn read_all(hubspot: &HubSpot, request: ReadRequest) -> (Vec<i64>, Option<Value>, usize) {
    let mut reader = hubspot.start_read(request).await.unwrap();
    let mut ids = Vec::new();
    let mut checkpoint = None;
    let mut batches = 0;
    while let Some((batch, cp)) = reader.next_batch().await.unwrap() {
        batches += 1;
        let column = batch
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        ids.extend((0..column.len()).map(|i| column.value(i)));
        checkpoint = Some(cp);
    }
    (ids, checkpoint, batches)
}

fn full(batch_size: usize) -> ReadRequest {
    ReadRequest {
        stream: "contacts".into(),
        mode: ReadMode::Full,
        batch_size: Some(batch_size),
        ..ReadRequest::default()
    }
}

fn incremental(batch_size: usize, checkpoint: Option<Value>) -> ReadRequest {
    ReadRequest {
        stream: "contacts".into(),
        mode: ReadMode::Incremental,
        cursor_field: Some("lastmodifieddate".into()),
        batch_size: Some(batch_size),
        checkpoint,
        ..ReadRequest::default()
    }
}

#[tokio::test]
async fn discovery_maps_properties_to_logical_types() {
    let fake = fake(Options::default()).await;
    let hubspot = HubSpot::connect(config(&fake, json!({}))).unwrap();
    let catalog = hubspot.catalog().await.unwrap();
    assert_eq!(catalog.streams.len(), 3);
    let contacts = catalog.stream("contacts").unwrap();
    assert_eq!(contacts.primary_key, vec!["id"]);
    assert_eq!(contacts.cursor_candidates, vec!["lastmodifieddate"]);
    let field = |name: &str| contacts.field(name).unwrap().clone();
    assert_eq!(field("id").data_type, DataType::Int64);
    assert_eq!(
        field("email").native_type.as_deref(),
        Some("string (unique)")
    );
    assert_eq!(field("lastmodifieddate").data_type, DataType::TimestampTz);
    assert_eq!(
        field("lastmodifieddate").native_type.as_deref(),
        Some("datetime (read-only)")
    );
    assert_eq!(field("date_of_birth").data_type, DataType::Date);
    assert_eq!(field("hs_email_optout").data_type, DataType::Boolean);
    assert_eq!(
        field("num_associated_deals").native_type.as_deref(),
        Some("number (read-only)")
    );
    assert_eq!(
        catalog
            .stream("deals")
            .unwrap()
            .field("amount")
            .unwrap()
            .data_type,
        DataType::Float64
    );

    let limited = HubSpot::connect(config(
        &fake,
        json!({"properties": {"contacts": ["email"]}}),
    ))
    .unwrap();
    let names: Vec<String> = limited
        .catalog()
        .await
        .unwrap()
        .stream("contacts")
        .unwrap()
        .fields
        .iter()
        .map(|f| f.name.clone())
        .collect();
    assert_eq!(names, ["id", "archived", "email", "lastmodifieddate"]);
    let unknown = HubSpot::connect(config(
        &fake,
        json!({"properties": {"contacts": ["emial"]}}),
    ))
    .unwrap();
    let error = unknown.catalog().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(error.message.contains("emial"), "{}", error.message);
}

#[tokio::test]
async fn a_full_read_pages_through_the_list_and_resumes_after_its_checkpoint() {
    let fake = fake(Options::default()).await;
    let all: Vec<i64> = insert_contacts(&fake, 250)
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    let hubspot = HubSpot::connect(config(&fake, json!({}))).unwrap();
    let (ids, _, batches) = read_all(&hubspot, full(100)).await;
    assert_eq!((ids.clone(), batches), (all.clone(), 3));

    let mut reader = hubspot.start_read(full(100)).await.unwrap();
    let (_, checkpoint) = reader.next_batch().await.unwrap().unwrap();
    let mut resumed = full(100);
    resumed.checkpoint = Some(checkpoint);
    let (rest, _, _) = read_all(&hubspot, resumed).await;
    assert_eq!(rest, all[100..].to_vec());
}

#[tokio::test]
async fn incremental_reads_deliver_each_change_once_across_timestamp_ties() {
    let fake = fake(Options::default()).await;
    // Inserted in a tight loop, many records share a millisecond: ties at page boundaries.
    let all: BTreeSet<i64> = insert_contacts(&fake, 600)
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    let hubspot = HubSpot::connect(config(&fake, json!({"search_per_second": 1000}))).unwrap();
    let (ids, checkpoint, _) = read_all(&hubspot, incremental(7, None)).await;
    assert_eq!(ids.len(), 600, "no record twice");
    assert_eq!(
        ids.iter().copied().collect::<BTreeSet<_>>(),
        all,
        "no record missed"
    );

    // Nothing changed: nothing read. Then three changes: exactly those.
    let (again, _, _) = read_all(&hubspot, incremental(7, checkpoint.clone())).await;
    assert!(again.is_empty(), "{again:?}");
    for id in ["5", "300", "42"] {
        assert!(fake.update(ObjectType::Contacts, id, &[("firstname", "Changed")]));
    }
    let (changed, _, _) = read_all(&hubspot, incremental(7, checkpoint)).await;
    assert_eq!(
        changed.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from([5, 42, 300])
    );
    assert_eq!(changed.len(), 3);
}

#[tokio::test]
async fn archived_records_arrive_in_incremental_reads_flagged_for_mirror_syncs() {
    let fake = fake(Options::default()).await;
    let ids = insert_contacts(&fake, 30);
    let hubspot = HubSpot::connect(config(&fake, json!({"search_per_second": 1000}))).unwrap();
    let (first, checkpoint, _) = read_all(&hubspot, incremental(4, None)).await;
    assert_eq!(first.len(), 30);
    // A few milliseconds apart, so that the three changes have distinct timestamps.
    for id in [&ids[3], &ids[17]] {
        std::thread::sleep(Duration::from_millis(3));
        assert!(fake.archive(ObjectType::Contacts, id));
    }
    std::thread::sleep(Duration::from_millis(3));
    assert!(fake.update(ObjectType::Contacts, &ids[9], &[("firstname", "Live")]));
    let mut reader = hubspot
        .start_read(incremental(4, checkpoint.clone()))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some((batch, _)) = reader.next_batch().await.unwrap() {
        let id = batch
            .column_by_name("id")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap()
            .clone();
        let archived = batch
            .column_by_name("archived")
            .unwrap()
            .as_any()
            .downcast_ref::<lockstep_plugin_sdk::arrow::array::BooleanArray>()
            .unwrap()
            .clone();
        seen.extend((0..batch.num_rows()).map(|i| (id.value(i), archived.value(i))));
    }
    let expected = |i: usize, archived: bool| (ids[i].parse::<i64>().unwrap(), archived);
    // In (last-modified, id) order: the two archived records, then the later update.
    assert_eq!(
        seen,
        vec![expected(3, true), expected(17, true), expected(9, false)]
    );

    // A later read from the end delivers nothing again.
    let (_, end, _) = read_all(&hubspot, incremental(4, checkpoint)).await;
    let (again, _, _) = read_all(&hubspot, incremental(4, end)).await;
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test]
async fn archived_records_and_updates_sharing_timestamps_are_each_read_once() {
    let fake = fake(Options::default()).await;
    let ids = insert_contacts(&fake, 200);
    let hubspot = HubSpot::connect(config(&fake, json!({"search_per_second": 1000}))).unwrap();
    let (_, checkpoint, _) = read_all(&hubspot, incremental(50, None)).await;
    let mut expected = BTreeSet::new();
    for (i, id) in ids.iter().enumerate().step_by(5) {
        if i % 2 == 0 {
            assert!(fake.archive(ObjectType::Contacts, id));
        } else {
            assert!(fake.update(ObjectType::Contacts, id, &[("firstname", "Changed")]));
        }
        expected.insert(id.parse::<i64>().unwrap());
    }
    let (changed, _, batches) = read_all(&hubspot, incremental(7, checkpoint)).await;
    assert_eq!(changed.len(), expected.len(), "no change read twice");
    assert_eq!(changed.into_iter().collect::<BTreeSet<_>>(), expected);
    assert!(batches >= 6, "{batches}");
}

#[tokio::test]
async fn twenty_five_thousand_changes_cross_the_search_cap_and_are_read_once() {
    let fake = fake(Options::default()).await;
    insert_contacts(&fake, 25_000);
    let hubspot = HubSpot::connect(config(
        &fake,
        json!({"search_per_second": 1000, "properties": {"contacts": ["email"]}}),
    ))
    .unwrap();
    let (ids, _, _) = read_all(&hubspot, incremental(200, None)).await;
    assert_eq!(ids.len(), 25_000);
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>().len(), 25_000);
}

#[tokio::test]
async fn with_faults_and_a_tight_limit_counts_are_exact_and_the_budget_avoids_429s() {
    let fake = fake(Options {
        rate_limit: Some((20, Duration::from_secs(1))),
        fault_rate: 0.1,
        ..Options::default()
    })
    .await;
    let all: BTreeSet<i64> = insert_contacts(&fake, 300)
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    let hubspot = HubSpot::connect(config(
        &fake,
        json!({"rate_limit": {"requests": 20, "per_seconds": 1}, "search_per_second": 1000}),
    ))
    .unwrap();
    let (ids, _, _) = read_all(&hubspot, full(10)).await;
    assert_eq!(ids.len(), 300);
    assert_eq!(ids.iter().copied().collect::<BTreeSet<_>>(), all);
    let (ids, _, _) = read_all(&hubspot, incremental(25, None)).await;
    assert_eq!(ids.len(), 300);
    let (requests, throttled) = fake.counts();
    assert!(requests > 30, "{requests}");
    assert_eq!(throttled, 0, "the budget kept the reads within the limit");
}

#[tokio::test]
async fn a_bad_token_fails_at_once_naming_token_env_without_the_token() {
    let fake = fake(Options::default()).await;
    let mut bad = config(&fake, json!({}));
    bad.token_env = WRONG_VAR.into();
    let hubspot = HubSpot::connect(bad).unwrap();
    let error = hubspot.check_access().await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::AUTH);
    assert!(
        error.message.contains("token_env") && error.message.contains(WRONG_VAR),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains("revoked-token"),
        "{}",
        error.message
    );
    assert_eq!(fake.counts().0, 1, "authentication errors are not retried");

    let mut unset = config(&fake, json!({}));
    unset.token_env = "LOCKSTEP_HUBSPOT_TEST_UNSET".into();
    let error = HubSpot::connect(unset).err().unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(
        error.message.contains("LOCKSTEP_HUBSPOT_TEST_UNSET"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_passes_the_conformance_kit() {
    let fake = fake(Options::default()).await;
    insert_contacts(&fake, 9);
    let report = lockstep_test_support::Conformance::new(lockstep_test_support::cdylib_path(
        "lockstep_connector_hubspot",
    ))
    .source_config(json!({"token_env": TOKEN_VAR, "base_url": fake.base_url()}))
    .bad_config(json!({"base_url": fake.base_url()}))
    .stream("contacts")
    .cursor_field("lastmodifieddate")
    .run()
    .await
    .assert_passed();
    println!("{report}");
}
