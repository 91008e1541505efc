//! The Mailman connector against a real Mailman 3.3.10 core (the test-support harness
//! shares one server between every test; each test makes its own domain and list):
//! discovery, a paged full read, subscriptions and unsubscriptions during a paged scan
//! (nobody skipped, nobody twice), subscribe / update ("already subscribed") / reject /
//! bulk unsubscribe, a wrong password, and the conformance kit.

use std::sync::Once;

use lockstep_connector_mailman::{Mailman, MailmanConfig};
use lockstep_http_kit::{Method, Request};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::{batch_from_rows, rows_from_batch};
use lockstep_plugin_sdk::{
    BatchReader, DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, StreamWriter,
};
use lockstep_test_support::mailman::{unique_name, MailmanServer, ADMIN_PASSWORD, ADMIN_USER};
use lockstep_test_support::skip::skip_or_fail;
use serde_json::{json, Map, Value};

const PASSWORD_VAR: &str = "LOCKSTEP_MAILMAN_TEST_PASSWORD";
const WRONG_VAR: &str = "LOCKSTEP_MAILMAN_TEST_WRONG_PASSWORD";
const WRONG_PASSWORD: &str = "not-the-password-6f1a9c";

fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(PASSWORD_VAR, ADMIN_PASSWORD);
        std::env::set_var(WRONG_VAR, WRONG_PASSWORD);
    });
}

fn server() -> Option<MailmanServer> {
    environment();
    match MailmanServer::shared() {
        Ok(server) => Some(server),
        Err(e) => {
            skip_or_fail(e);
            None
        }
    }
}

fn config_json(server: &MailmanServer, list_id: &str, extra: Value) -> Value {
    let mut config = json!({
        "url": server.url(),
        "username": ADMIN_USER,
        "password_env": PASSWORD_VAR,
        "list_id": list_id,
    });
    config
        .as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    config
}

fn connect(server: &MailmanServer, list_id: &str, extra: Value) -> Mailman {
    let config: MailmanConfig =
        serde_json::from_value(config_json(server, list_id, extra)).unwrap();
    Mailman::connect(config).unwrap()
}

async fn send(mailman: &Mailman, request: Request) -> Value {
    let response = mailman
        .client()
        .send(&request)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

/// A new domain and list of this test's own; returns the list id.
async fn new_list(server: &MailmanServer) -> String {
    let domain = format!("{}.example.com", unique_name("t"));
    let admin = connect(server, "x.example.com", json!({}));
    send(
        &admin,
        Request::post("/domains").json(json!({"mail_host": domain})),
    )
    .await;
    send(
        &admin,
        Request::post("/lists").json(json!({"fqdn_listname": format!("news@{domain}")})),
    )
    .await;
    format!("news.{domain}")
}

/// `local@<the list's domain>`: addresses are shared by every list of the server (a display
/// name is kept from the first subscription), so each test uses its own.
fn addr(list_id: &str, local: &str) -> String {
    format!("{local}@{}", list_id.trim_start_matches("news."))
}

async fn subscribe(mailman: &Mailman, list_id: &str, email: &str, name: &str) {
    send(
        mailman,
        Request::post("/members").json(json!({
            "list_id": list_id, "subscriber": email, "display_name": name,
            "pre_verified": true, "pre_confirmed": true, "pre_approved": true,
            "send_welcome_message": false,
        })),
    )
    .await;
}

async fn unsubscribe(mailman: &Mailman, list_id: &str, email: &str) {
    send(
        mailman,
        Request::new(Method::DELETE, format!("/lists/{list_id}/roster/member"))
            .json(json!({"emails": [email]})),
    )
    .await;
}

fn full(list_id: &str, batch_size: usize) -> ReadRequest {
    ReadRequest {
        stream: list_id.into(),
        mode: ReadMode::Full,
        batch_size: Some(batch_size),
        ..ReadRequest::default()
    }
}

async fn read_all(mailman: &Mailman, request: ReadRequest) -> Vec<Map<String, Value>> {
    let mut reader = mailman.start_read(request).await.unwrap();
    let mut rows = Vec::new();
    while let Some((batch, _)) = reader.next_batch().await.unwrap() {
        rows.extend(rows_from_batch(&batch));
    }
    rows
}

fn emails(rows: &[Map<String, Value>]) -> Vec<String> {
    let mut emails: Vec<String> = rows
        .iter()
        .map(|r| r["email"].as_str().unwrap().to_owned())
        .collect();
    emails.sort();
    emails
}

#[tokio::test]
async fn a_list_is_discovered_and_read_in_pages_with_every_field() {
    let Some(server) = server() else { return };
    let list_id = new_list(&server).await;
    let mailman = connect(&server, &list_id, json!({"page_size": 2}));
    for i in 0..5 {
        subscribe(
            &mailman,
            &list_id,
            &addr(&list_id, &format!("m{i}")),
            &format!("M {i}"),
        )
        .await;
    }
    let catalog = mailman.catalog().await.unwrap();
    assert_eq!(catalog.streams.len(), 1);
    let stream = &catalog.streams[0];
    assert_eq!(stream.name, list_id);
    assert_eq!(stream.primary_key, ["email"]);
    assert_eq!(
        stream
            .fields
            .iter()
            .map(|f| f.name.as_str())
            .collect::<Vec<_>>(),
        [
            "member_id",
            "email",
            "display_name",
            "delivery_mode",
            "role",
            "moderation_action"
        ]
    );
    let mut reader = mailman.start_read(full(&list_id, 100)).await.unwrap();
    let mut rows = Vec::new();
    let mut batches = 0;
    while let Some((batch, _)) = reader.next_batch().await.unwrap() {
        assert!(batch.num_rows() <= 2, "page_size 2 bounds the batches");
        batches += 1;
        rows.extend(rows_from_batch(&batch));
    }
    assert_eq!(batches, 3);
    assert_eq!(
        emails(&rows),
        (0..5)
            .map(|i| addr(&list_id, &format!("m{i}")))
            .collect::<Vec<_>>()
    );
    let first = rows
        .iter()
        .find(|r| r["email"] == addr(&list_id, "m0").as_str())
        .unwrap();
    assert_eq!(first["display_name"], "M 0");
    assert_eq!(first["delivery_mode"], "regular");
    assert_eq!(first["role"], "member");
    assert_eq!(first["moderation_action"], Value::Null);
    assert_eq!(first["member_id"].as_str().unwrap().len(), 32);

    // Without `list_id`, every list of the server is a stream, this one among them.
    let all = connect(&server, &list_id, json!({}));
    let mut config = all.config().clone();
    config.list_id = None;
    let all = Mailman::connect(config).unwrap();
    let catalog = all.catalog().await.unwrap();
    assert!(catalog.streams.iter().any(|s| s.name == list_id));

    // An incremental read is refused: members carry no timestamps.
    let error = mailman
        .start_read(ReadRequest {
            mode: ReadMode::Incremental,
            cursor_field: Some("email".into()),
            ..full(&list_id, 10)
        })
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(
        error.message.contains("mode = \"full\""),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn changes_during_a_paged_scan_skip_nobody_and_repeat_nobody() {
    let Some(server) = server() else { return };
    let list_id = new_list(&server).await;
    let mailman = connect(&server, &list_id, json!({"page_size": 2}));
    for i in 0..10 {
        subscribe(&mailman, &list_id, &addr(&list_id, &format!("m{i:02}")), "").await;
    }

    // A subscription sorting before the scan's position shifts every later page by one.
    let mut reader = mailman.start_read(full(&list_id, 2)).await.unwrap();
    let mut rows = Vec::new();
    let (batch, _) = reader.next_batch().await.unwrap().unwrap();
    rows.extend(rows_from_batch(&batch));
    let early = addr(&list_id, "a-early");
    subscribe(&mailman, &list_id, &early, "Early").await;
    while let Some((batch, _)) = reader.next_batch().await.unwrap() {
        rows.extend(rows_from_batch(&batch));
    }
    let mut expected: Vec<String> = (0..10)
        .map(|i| addr(&list_id, &format!("m{i:02}")))
        .collect();
    expected.insert(0, early.clone());
    assert_eq!(rows.len(), 11, "nobody twice: {:?}", emails(&rows));
    assert_eq!(emails(&rows), expected, "nobody skipped");

    // An unsubscription behind the scan's position shifts the later pages back by one:
    // the member at the page boundary is found by the second scan.
    let mut reader = mailman.start_read(full(&list_id, 2)).await.unwrap();
    let mut rows = Vec::new();
    for _ in 0..2 {
        let (batch, _) = reader.next_batch().await.unwrap().unwrap();
        rows.extend(rows_from_batch(&batch));
    }
    unsubscribe(&mailman, &list_id, &early).await;
    while let Some((batch, _)) = reader.next_batch().await.unwrap() {
        rows.extend(rows_from_batch(&batch));
    }
    assert_eq!(rows.len(), 11, "{:?}", emails(&rows));
    assert_eq!(
        emails(&rows),
        expected,
        "the member read before it left stays read"
    );

    // A quiet list reads in one pass: exactly the ten members.
    let rows = read_all(&mailman, full(&list_id, 3)).await;
    assert_eq!(emails(&rows), expected[1..]);
}

fn member_fields() -> Vec<FieldInfo> {
    let field = |name: &str| FieldInfo {
        name: name.into(),
        data_type: DataType::Text,
        nullable: true,
        native_type: None,
    };
    vec![
        field("email"),
        field("display_name"),
        field("delivery_mode"),
    ]
}

fn member_batch(rows: &[(&String, &str, &str)]) -> RecordBatch {
    let rows: Vec<Map<String, Value>> = rows
        .iter()
        .map(|(email, name, mode)| {
            json!({"email": email, "display_name": name, "delivery_mode": mode})
                .as_object()
                .unwrap()
                .clone()
        })
        .collect();
    batch_from_rows(&member_fields(), &rows).unwrap()
}

#[tokio::test]
async fn subscribe_update_reject_and_unsubscribe_in_bulk() {
    let Some(server) = server() else { return };
    let list_id = new_list(&server).await;
    let mailman = connect(&server, &list_id, json!({}));
    let [old, new, bad_mode, never] =
        ["old", "new", "bad-mode", "never"].map(|n| addr(&list_id, n));
    subscribe(&mailman, &list_id, &old, "Old Name").await;
    // Characters that mean something in a URL path travel escaped.
    let odd = addr(&list_id, "o'neil+news");
    let slash = addr(&list_id, "a/b");
    subscribe(&mailman, &list_id, &odd, "Odd").await;
    let mut writer = mailman
        .start_write(OpenStreamRequest {
            stream: list_id.clone(),
            fields: member_fields(),
            key: vec!["email".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .unwrap();
    let outcome = writer
        .upsert(member_batch(&[
            (&new, "New Person", "regular"),
            (&old, "Renamed", "mime_digests"),
            (&"not an address".to_owned(), "Nobody", "regular"),
            (&bad_mode, "Bad Mode", "by-carrier-pigeon"),
            (&odd, "Odd Renamed", "summary_digests"),
            (&slash, "Slash", "regular"),
        ]))
        .await
        .unwrap();
    writer.flush().await.unwrap();
    assert_eq!(outcome.inserted, Some(1), "{outcome:?}");
    assert_eq!(outcome.updated, Some(2), "409 is an update: {outcome:?}");
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.row).collect();
    assert_eq!(rejected, [2, 3, 5], "{outcome:?}");
    assert!(
        outcome.rejected[2].reason.contains("holds a `/`"),
        "{}",
        outcome.rejected[2].reason
    );
    assert!(
        outcome.rejected[1].reason.contains("delivery_mode"),
        "{}",
        outcome.rejected[1].reason
    );

    let rows = read_all(&mailman, full(&list_id, 100)).await;
    let mut expected = vec![new.clone(), odd.clone(), old.clone()];
    expected.sort();
    assert_eq!(emails(&rows), expected);
    let odd_row = rows.iter().find(|r| r["email"] == odd.as_str()).unwrap();
    assert_eq!(odd_row["display_name"], "Odd Renamed");
    assert_eq!(odd_row["delivery_mode"], "summary_digests");
    let old_row = rows.iter().find(|r| r["email"] == old.as_str()).unwrap();
    assert_eq!(old_row["display_name"], "Renamed");
    assert_eq!(old_row["delivery_mode"], "mime_digests");
    let new_row = rows.iter().find(|r| r["email"] == new.as_str()).unwrap();
    assert_eq!(new_row["display_name"], "New Person");

    let keys = batch_from_rows(
        &member_fields()[..1],
        &[
            json!({"email": new}).as_object().unwrap().clone(),
            json!({"email": old}).as_object().unwrap().clone(),
            json!({"email": never}).as_object().unwrap().clone(),
            json!({"email": odd}).as_object().unwrap().clone(),
        ],
    )
    .unwrap();
    let outcome = writer.delete(keys).await.unwrap();
    assert_eq!(outcome.deleted, Some(3), "{outcome:?}");
    assert!(read_all(&mailman, full(&list_id, 100)).await.is_empty());

    // `member_id` is Mailman's own: a sync cannot write it.
    let error = mailman
        .start_write(OpenStreamRequest {
            stream: list_id.clone(),
            fields: vec![FieldInfo {
                name: "member_id".into(),
                data_type: DataType::Text,
                nullable: true,
                native_type: None,
            }],
            key: vec!["email".into()],
            create_if_missing: false,
            schema_evolution: Default::default(),
        })
        .await
        .err()
        .unwrap();
    assert_eq!(error.kind, ErrorKind::SCHEMA);
}

#[tokio::test]
async fn a_wrong_password_is_an_auth_error_naming_the_setting_without_the_secret() {
    let Some(server) = server() else { return };
    let mut config: MailmanConfig =
        serde_json::from_value(config_json(&server, "news.example.com", json!({}))).unwrap();
    config.password_env = WRONG_VAR.into();
    let mut mailman = Mailman::connect(config.clone()).unwrap();
    let error = mailman.check_access().await.err().unwrap();
    assert_eq!(error.kind, ErrorKind::AUTH, "{}", error.message);
    assert!(error.message.contains("password_env"), "{}", error.message);
    assert!(error.message.contains(WRONG_VAR), "{}", error.message);
    assert!(!error.message.contains(WRONG_PASSWORD), "{}", error.message);
    let error = lockstep_plugin_sdk::SourceConnector::discover(&mut mailman)
        .await
        .err();
    assert!(error.is_none() || error.unwrap().kind == ErrorKind::AUTH);

    config.password_env = "LOCKSTEP_MAILMAN_TEST_UNSET".into();
    let error = Mailman::connect(config).err().unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(
        error.message.contains("LOCKSTEP_MAILMAN_TEST_UNSET"),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let Some(server) = server() else { return };
    let list_id = new_list(&server).await;
    let mailman = connect(&server, &list_id, json!({}));
    for i in 0..7 {
        subscribe(
            &mailman,
            &list_id,
            &addr(&list_id, &format!("c{i}")),
            &format!("C {i}"),
        )
        .await;
    }
    let report = lockstep_test_support::Conformance::new(lockstep_test_support::cdylib_path(
        "lockstep_connector_mailman",
    ))
    .source_config(config_json(&server, &list_id, json!({})))
    .bad_config(json!({"url": server.url()}))
    .stream(&list_id)
    .run()
    .await
    .unwrap_or_else(|failures| panic!("{failures}"));
    println!("{report}");
}
