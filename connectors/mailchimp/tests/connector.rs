//! The Mailchimp connector against the fake Mailchimp, with Prism's validating proxy between
//! them so that every request and answer is checked against Mailchimp's published OpenAPI
//! description: discovery, full and incremental reads with archived tombstones, batch writes
//! with consent rules and per-member rejects, archive and permanent deletes, injected 429s and
//! 5xx, the connection limit, a bad key, and the conformance kit.
//!
//! Prism needs Node.js and `npm ci` in `crates/lockstep-fake-mailchimp/contract` (which
//! `.ci/run` does); without them each test is recorded as skipped, except under CI, where it
//! fails.

use std::collections::BTreeSet;
use std::sync::{Arc, Once};
use std::time::Duration;

use lockstep_connector_mailchimp::{Mailchimp, MailchimpConfig};
use lockstep_fake_mailchimp::prism::Prism;
use lockstep_fake_mailchimp::{FakeMailchimp, Options};
use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use lockstep_plugin_sdk::arrow::datatypes::{DataType as ArrowType, Field, Schema};
use lockstep_plugin_sdk::{
    BatchReader, DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, StreamWriter,
};
use serde_json::{json, Value};

const KEY: &str = "5f1e2d3c4b5a69788796a5b4c3d2e1f0-us21";
const KEY_VAR: &str = "LOCKSTEP_MAILCHIMP_TEST_KEY";
const WRONG_VAR: &str = "LOCKSTEP_MAILCHIMP_TEST_WRONG_KEY";
const WRONG_KEY: &str = "deadbeefdeadbeefdeadbeefdeadbeef-us21";
const LIST: &str = "a1b2c3d4e5";

fn environment() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var(KEY_VAR, KEY);
        std::env::set_var(WRONG_VAR, WRONG_KEY);
    });
}

/// The fake behind Prism.
struct Checked {
    fake: FakeMailchimp,
    prism: Prism,
}

impl Checked {
    async fn start(options: Options) -> Option<Self> {
        environment();
        if !Prism::installed() {
            lockstep_test_support::skip::skip_or_fail(
                "the Mailchimp tests need Prism and Mailchimp's OpenAPI description: run `npm ci` \
                 in crates/lockstep-fake-mailchimp/contract",
            );
            return None;
        }
        let fake = FakeMailchimp::start(Options {
            api_key: KEY.into(),
            ..options
        })
        .await
        .unwrap();
        fake.create_list(
            LIST,
            &[
                ("FNAME", "First Name", "text", false),
                ("LNAME", "Last Name", "text", false),
                ("SCORE", "Score", "number", false),
            ],
        );
        let upstream = fake.base_url();
        let prism = tokio::task::spawn_blocking(move || Prism::start(&upstream))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"));
        Some(Self { fake, prism })
    }

    fn config(&self, extra: Value) -> MailchimpConfig {
        let mut config =
            json!({"api_key_env": KEY_VAR, "list_id": LIST, "base_url": self.prism.base_url()});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(config).unwrap()
    }

    fn connect(&self, extra: Value) -> Mailchimp {
        Mailchimp::connect(self.config(extra)).unwrap()
    }

    /// Fails when Prism saw a request or an answer Mailchimp's description does not allow.
    fn assert_valid(&self) {
        let violations = self.prism.violations();
        assert!(
            violations.is_empty(),
            "requests or answers outside Mailchimp's OpenAPI description:\n{}",
            violations.join("\n")
        );
        assert!(self.prism.requests() > 0, "the traffic went through Prism");
    }
}

fn incremental(batch_size: usize, checkpoint: Option<Value>) -> ReadRequest {
    ReadRequest {
        stream: "members".into(),
        mode: ReadMode::Incremental,
        cursor_field: Some("last_changed".into()),
        batch_size: Some(batch_size),
        checkpoint,
        ..ReadRequest::default()
    }
}

fn full(batch_size: usize) -> ReadRequest {
    ReadRequest {
        stream: "members".into(),
        mode: ReadMode::Full,
        batch_size: Some(batch_size),
        ..ReadRequest::default()
    }
}

fn strings(batch: &RecordBatch, name: &str) -> Vec<String> {
    let column = batch
        .column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    (0..column.len())
        .map(|i| column.value(i).to_owned())
        .collect()
}

/// Reads to the end: (email, status, archived) of every record, and the last checkpoint.
async fn read_all(
    mailchimp: &Mailchimp,
    request: ReadRequest,
) -> (Vec<(String, String, bool)>, Option<Value>) {
    let mut reader = mailchimp.start_read(request).await.unwrap();
    let mut rows = Vec::new();
    let mut checkpoint = None;
    while let Some((batch, cp)) = reader.next_batch().await.unwrap() {
        let archived = batch
            .column_by_name("archived")
            .unwrap()
            .as_any()
            .downcast_ref::<BooleanArray>()
            .unwrap()
            .clone();
        for (i, (email, status)) in strings(&batch, "email_address")
            .into_iter()
            .zip(strings(&batch, "status"))
            .enumerate()
        {
            rows.push((email, status, archived.value(i)));
        }
        checkpoint = Some(cp);
    }
    (rows, checkpoint)
}

fn text_field(name: &str) -> FieldInfo {
    FieldInfo {
        name: name.into(),
        data_type: DataType::Text,
        nullable: true,
        native_type: None,
    }
}

fn write_request(names: &[&str]) -> OpenStreamRequest {
    OpenStreamRequest {
        stream: "members".into(),
        fields: names.iter().map(|n| text_field(n)).collect(),
        key: vec!["email_address".into()],
        create_if_missing: false,
        schema_evolution: Default::default(),
    }
}

/// A batch of text columns.
fn batch(names: &[&str], rows: &[Vec<&str>]) -> RecordBatch {
    let schema = Arc::new(Schema::new(
        names
            .iter()
            .map(|n| Field::new(*n, ArrowType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let columns = (0..names.len())
        .map(|c| {
            Arc::new(StringArray::from(
                rows.iter().map(|r| Some(r[c])).collect::<Vec<_>>(),
            )) as Arc<dyn Array>
        })
        .collect();
    RecordBatch::try_new(schema, columns).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_reads_merge_fields_and_the_members_fields() {
    let Some(checked) = Checked::start(Options::default()).await else {
        return;
    };
    let catalog = checked.connect(json!({})).catalog().await.unwrap();
    assert_eq!(catalog.streams.len(), 1);
    let members = catalog.stream("members").unwrap();
    assert_eq!(members.primary_key, vec!["id"]);
    assert_eq!(members.cursor_candidates, vec!["last_changed"]);
    let kind = |name: &str| members.field(name).unwrap().data_type;
    assert_eq!(kind("email_address"), DataType::Text);
    assert_eq!(kind("archived"), DataType::Boolean);
    assert_eq!(kind("last_changed"), DataType::TimestampTz);
    assert_eq!(kind("FNAME"), DataType::Text);
    assert_eq!(kind("SCORE"), DataType::Float64);
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_page_by_offset_and_incremental_reads_deliver_changes_and_archives_once() {
    let Some(checked) = Checked::start(Options::default()).await else {
        return;
    };
    let fake = &checked.fake;
    for i in 0..1250 {
        fake.add_member(
            LIST,
            &format!("reader{i:04}@northwind.io"),
            "subscribed",
            &[("FNAME", "Ann")],
        );
    }
    fake.set_tags(LIST, "reader0001@northwind.io", &["vip", "crm"]);
    let mailchimp = checked.connect(json!({}));
    // Members changed in the current second are left for the next read: wait for it to pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (rows, _) = read_all(&mailchimp, full(1000)).await;
    assert_eq!(rows.len(), 1250);
    assert_eq!(
        rows.iter().map(|r| &r.0).collect::<BTreeSet<_>>().len(),
        1250
    );

    let (rows, checkpoint) = read_all(&mailchimp, incremental(400, None)).await;
    assert_eq!(rows.len(), 1250, "each member once");
    assert_eq!(
        rows.iter().map(|r| &r.0).collect::<BTreeSet<_>>().len(),
        1250
    );

    // Nothing changed: nothing read.
    let (rows, same) = read_all(&mailchimp, incremental(400, checkpoint.clone())).await;
    assert!(rows.is_empty(), "{rows:?}");
    assert!(same.is_none());

    // One renamed, one unsubscribed, one archived, one new.
    assert!(fake.change_member(
        LIST,
        "reader0007@northwind.io",
        None,
        &[("FNAME", "Renamed")]
    ));
    assert!(fake.change_member(LIST, "reader0008@northwind.io", Some("unsubscribed"), &[]));
    assert!(fake.change_member(LIST, "reader0009@northwind.io", Some("archived"), &[]));
    fake.add_member(LIST, "newcomer@northwind.io", "subscribed", &[]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (mut rows, _) = read_all(&mailchimp, incremental(400, checkpoint)).await;
    rows.sort();
    let row = |e: &str, s: &str, a: bool| (e.to_owned(), s.to_owned(), a);
    assert_eq!(
        rows,
        [
            row("newcomer@northwind.io", "subscribed", false),
            row("reader0007@northwind.io", "subscribed", false),
            row("reader0008@northwind.io", "unsubscribed", false),
            row("reader0009@northwind.io", "archived", true),
        ]
    );
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_subscribe_update_respect_unsubscribes_and_reject_refused_members() {
    let Some(checked) = Checked::start(Options::default()).await else {
        return;
    };
    let fake = &checked.fake;
    fake.add_member(
        LIST,
        "gone@northwind.io",
        "unsubscribed",
        &[("FNAME", "Gone")],
    );
    fake.add_member(LIST, "bounced@northwind.io", "cleaned", &[]);
    fake.add_member(LIST, "kept@northwind.io", "subscribed", &[("FNAME", "Old")]);
    let mailchimp = checked.connect(json!({}));
    let names = ["email_address", "FNAME", "SCORE"];
    let mut writer = mailchimp.start_write(write_request(&names)).await.unwrap();
    let mut rows: Vec<Vec<&str>> = vec![
        vec!["gone@northwind.io", "Gone Again", "1"],
        vec!["bounced@northwind.io", "Bounce", "2"],
        vec!["Kept@Northwind.io", "New", "3"],
        vec!["fake@example.com", "Nobody", "4"],
        vec!["notanaddress", "Nobody", "5"],
    ];
    let many: Vec<String> = (0..600)
        .map(|i| format!("bulk{i:03}@northwind.io"))
        .collect();
    rows.extend(many.iter().map(|e| vec![e.as_str(), "Bulk", "7"]));
    let outcome = writer.upsert(batch(&names, &rows)).await.unwrap();
    assert_eq!(outcome.inserted, Some(600), "{outcome:?}");
    assert_eq!(outcome.updated, Some(3), "{outcome:?}");
    assert_eq!(
        outcome.rejected.iter().map(|r| r.row).collect::<Vec<_>>(),
        [3, 4],
        "{outcome:?}"
    );
    assert!(outcome.rejected[0].reason.contains("looks fake or invalid"));
    let status = |email: &str| fake.member(LIST, email).unwrap().status;
    assert_eq!(
        status("gone@northwind.io"),
        "unsubscribed",
        "never resubscribed"
    );
    assert_eq!(status("bounced@northwind.io"), "cleaned");
    assert_eq!(status("kept@northwind.io"), "subscribed");
    assert_eq!(status("bulk599@northwind.io"), "subscribed");
    assert_eq!(
        fake.member(LIST, "gone@northwind.io").unwrap().merge_fields["FNAME"],
        "Gone Again",
        "the member's data is still updated"
    );

    // A sync that maps the status explicitly still does not resubscribe without the
    // config's permission...
    let with_status = ["email_address", "status"];
    let mut writer = mailchimp
        .start_write(write_request(&with_status))
        .await
        .unwrap();
    let outcome = writer
        .upsert(batch(
            &with_status,
            &[vec!["gone@northwind.io", "subscribed"]],
        ))
        .await
        .unwrap();
    assert!(outcome.rejected.is_empty(), "{outcome:?}");
    assert_eq!(status("gone@northwind.io"), "unsubscribed");
    // ...and does with it.
    let allowed = checked.connect(json!({"allow_resubscribe": true}));
    let mut writer = allowed
        .start_write(write_request(&with_status))
        .await
        .unwrap();
    let outcome = writer
        .upsert(batch(
            &with_status,
            &[
                vec!["gone@northwind.io", "subscribed"],
                vec!["x@northwind.io", "archived"],
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        outcome.rejected.len(),
        1,
        "archived is not a status to set: {outcome:?}"
    );
    assert_eq!(outcome.rejected[0].field.as_deref(), Some("status"));
    assert_eq!(status("gone@northwind.io"), "subscribed");
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_archive_by_default_and_erase_when_configured() {
    let Some(checked) = Checked::start(Options::default()).await else {
        return;
    };
    let fake = &checked.fake;
    fake.add_member(LIST, "a@northwind.io", "subscribed", &[]);
    fake.add_member(LIST, "b@northwind.io", "subscribed", &[]);
    let keys = |email: &str| batch(&["email_address"], &[vec![email]]);

    let mailchimp = checked.connect(json!({}));
    let mut writer = mailchimp
        .start_write(write_request(&["email_address"]))
        .await
        .unwrap();
    let outcome = writer.delete(keys("A@northwind.io")).await.unwrap();
    assert_eq!(outcome.deleted, Some(1));
    assert_eq!(
        fake.member(LIST, "a@northwind.io").unwrap().status,
        "archived"
    );

    let erasing = checked.connect(json!({"delete": "permanent"}));
    let mut writer = erasing
        .start_write(write_request(&["email_address"]))
        .await
        .unwrap();
    let outcome = writer.delete(keys("b@northwind.io")).await.unwrap();
    assert_eq!(outcome.deleted, Some(1));
    assert!(fake.member(LIST, "b@northwind.io").is_none());
    // Mailchimp refuses to import an erased address again: a reject, not an error.
    let outcome = writer
        .upsert(batch(&["email_address"], &[vec!["b@northwind.io"]]))
        .await
        .unwrap();
    assert_eq!(outcome.rejected.len(), 1, "{outcome:?}");
    assert!(outcome.rejected[0].reason.contains("permanently deleted"));
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_injected_429s_and_5xx_counts_are_exact_and_nothing_is_lost() {
    let Some(checked) = Checked::start(Options {
        fault_rate: 0.1,
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let fake = &checked.fake;
    let mailchimp = checked.connect(json!({}));
    let names = ["email_address", "FNAME"];
    let emails: Vec<String> = (0..400).map(|i| format!("f{i:04}@northwind.io")).collect();
    let rows: Vec<Vec<&str>> = emails.iter().map(|e| vec![e.as_str(), "Fault"]).collect();
    let mut inserted = 0;
    for chunk in rows.chunks(100) {
        let mut writer = mailchimp.start_write(write_request(&names)).await.unwrap();
        let outcome = writer.upsert(batch(&names, chunk)).await.unwrap();
        assert!(outcome.rejected.is_empty(), "{outcome:?}");
        inserted += outcome.inserted.unwrap_or(0);
    }
    assert_eq!(inserted, 400);
    assert_eq!(fake.members(LIST).len(), 400);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Small pages: about 60 more requests, so that faults are all but sure to be met.
    let (rows, _) = read_all(&mailchimp, incremental(10, None)).await;
    assert_eq!(rows.len(), 400);
    assert_eq!(
        rows.iter().map(|r| &r.0).collect::<BTreeSet<_>>().len(),
        400
    );
    // Full reads (20 requests each) until a fault was met: at a rate of 0.1, 77 requests
    // without one happened once in CI (about 1 in 3,000); six reads more make it about 1 in
    // 100 million. Every read must be whole.
    for _ in 0..7 {
        let (rows, _) = read_all(&mailchimp, full(20)).await;
        assert_eq!(
            rows.iter().map(|r| &r.0).collect::<BTreeSet<_>>().len(),
            400
        );
        let counts = fake.counts();
        if counts.throttled + counts.faults > 0 {
            break;
        }
    }
    let counts = fake.counts();
    assert!(counts.throttled + counts.faults > 0, "{counts:?}");
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_keeps_within_mailchimps_ten_simultaneous_requests() {
    let Some(checked) = Checked::start(Options {
        // Long enough for requests passing one by one through Prism to overlap at the fake.
        delay: Duration::from_millis(1000),
        ..Options::default()
    })
    .await
    else {
        return;
    };
    let mailchimp = Arc::new(checked.connect(json!({})));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let mailchimp = mailchimp.clone();
        tasks.push(tokio::spawn(async move { mailchimp.catalog().await }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let counts = checked.fake.counts();
    assert_eq!(counts.requests, 20);
    assert_eq!(counts.throttled, 0, "never more than 10 in flight");

    // The fake does answer 429 beyond 10: a second client with its own limit of 10 makes 20.
    let other = Arc::new(checked.connect(json!({})));
    let mut tasks = Vec::new();
    for m in [mailchimp.clone(), other] {
        for _ in 0..10 {
            let m = m.clone();
            tasks.push(tokio::spawn(async move { m.catalog().await }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        checked.fake.counts().throttled > 0,
        "{:?}",
        checked.fake.counts()
    );
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_key_fails_at_once_naming_api_key_env_without_the_key() {
    let Some(checked) = Checked::start(Options::default()).await else {
        return;
    };
    let mut bad = checked.config(json!({}));
    bad.api_key_env = WRONG_VAR.into();
    let error = Mailchimp::connect(bad)
        .unwrap()
        .check_access()
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::AUTH);
    assert!(
        error.message.contains("api_key_env") && error.message.contains(WRONG_VAR),
        "{}",
        error.message
    );
    assert!(
        !error.message.contains(WRONG_KEY) && !error.message.contains(KEY),
        "{}",
        error.message
    );
    assert_eq!(checked.fake.counts().requests, 1, "not retried");
    assert_eq!(checked.fake.counts().unauthorized, 1);

    let mut unset = checked.config(json!({}));
    unset.api_key_env = "LOCKSTEP_MAILCHIMP_TEST_UNSET".into();
    let error = Mailchimp::connect(unset).err().unwrap();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(
        error.message.contains("LOCKSTEP_MAILCHIMP_TEST_UNSET"),
        "{}",
        error.message
    );

    let mut unknown = checked.config(json!({}));
    unknown.list_id = "nosuchlist".into();
    let error = Mailchimp::connect(unknown)
        .unwrap()
        .check_access()
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::CONFIG);
    assert!(error.message.contains("list_id"), "{}", error.message);
    checked.assert_valid();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_passes_the_conformance_kit() {
    let Some(checked) = Checked::start(Options::default()).await else {
        return;
    };
    for i in 0..9 {
        checked.fake.add_member(
            LIST,
            &format!("c{i}@northwind.io"),
            "subscribed",
            &[("FNAME", "C")],
        );
    }
    let report = lockstep_test_support::Conformance::new(lockstep_test_support::cdylib_path(
        "lockstep_connector_mailchimp",
    ))
    .source_config(
        json!({"api_key_env": KEY_VAR, "list_id": LIST, "base_url": checked.prism.base_url()}),
    )
    .bad_config(json!({"list_id": LIST, "base_url": checked.prism.base_url()}))
    .stream("members")
    .cursor_field("last_changed")
    .run()
    .await
    .unwrap_or_else(|failures| panic!("{failures}"));
    println!("{report}");
    checked.assert_valid();
}
