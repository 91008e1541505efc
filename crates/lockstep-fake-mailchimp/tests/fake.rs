//! The fake Mailchimp's own tests: it is as strict as Mailchimp documents (authentication,
//! page and batch limits, per-member errors, archived members hidden unless asked for,
//! exclusive `since_last_changed`, permanent deletion remembered, 429 beyond 10 requests in
//! flight, problem-details errors), and, through Prism, its answers fit Mailchimp's OpenAPI
//! description while a request outside it is refused and reported.

use std::time::Duration;

use lockstep_fake_mailchimp::prism::Prism;
use lockstep_fake_mailchimp::{subscriber_hash, FakeMailchimp, Options};
use serde_json::{json, Value};

const LIST: &str = "list0001";

async fn start(options: Options) -> (FakeMailchimp, reqwest::Client) {
    let fake = FakeMailchimp::start(options).await.unwrap();
    fake.create_list(
        LIST,
        &[
            ("FNAME", "First Name", "text", false),
            ("AGE", "Age", "number", true),
        ],
    );
    (fake, reqwest::Client::new())
}

async fn call(
    client: &reqwest::Client,
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, String) {
    let mut request = client
        .request(method, format!("{base}{path}"))
        .basic_auth("anyone", Some(key));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        content_type,
    )
}

fn assert_problem(body: &Value, status: u16) {
    for field in ["type", "title", "detail", "instance"] {
        assert!(body[field].is_string(), "{field} in {body}");
    }
    assert_eq!(body["status"], status, "{body}");
}

#[tokio::test]
async fn a_wrong_key_is_a_401_problem_document() {
    let (fake, client) = start(Options::default()).await;
    let (status, body, content_type) = call(
        &client,
        &fake.base_url(),
        "wrong-us21",
        reqwest::Method::GET,
        "/ping",
        None,
    )
    .await;
    assert_eq!(status, 401);
    assert_problem(&body, 401);
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    let (status, body, _) = call(
        &client,
        &fake.base_url(),
        &fake.api_key(),
        reqwest::Method::GET,
        "/ping",
        None,
    )
    .await;
    assert_eq!(
        (status, body["health_status"].as_str()),
        (200, Some("Everything's Chimpy!"))
    );
    assert_eq!(fake.counts().unauthorized, 1);
}

#[tokio::test]
async fn batches_apply_members_and_report_refused_ones_per_member() {
    let (fake, client) = start(Options::default()).await;
    let (base, key) = (fake.base_url(), fake.api_key());
    fake.add_member(LIST, "old@northwind.io", "unsubscribed", &[("AGE", "30")]);
    let body = json!({"update_existing": true, "members": [
        {"email_address": "new@northwind.io", "status": "subscribed", "merge_fields": {"FNAME": "New", "AGE": 41}},
        {"email_address": "OLD@northwind.io", "status": "unsubscribed", "merge_fields": {"FNAME": "Old"}},
        {"email_address": "noage@northwind.io", "status": "subscribed"},
        {"email_address": "who@example.com", "status": "subscribed", "merge_fields": {"AGE": 1}},
        {"email_address": "new@northwind.io", "status": "subscribed", "merge_fields": {"AGE": 2}},
        {"email_address": "nostatus@northwind.io", "merge_fields": {"AGE": 2}},
        {"email_address": "bad@northwind.io", "status": "subscribed", "merge_fields": {"NOPE": "x", "AGE": 3}},
    ]});
    let path = format!("/lists/{LIST}");
    let (status, answer, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &path,
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["total_created"], 1, "{answer}");
    assert_eq!(answer["total_updated"], 1, "{answer}");
    assert_eq!(answer["error_count"], 5, "{answer}");
    let refused: Vec<&str> = answer["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["email_address"].as_str().unwrap())
        .collect();
    assert_eq!(
        refused,
        [
            "noage@northwind.io",
            "who@example.com",
            "new@northwind.io",
            "nostatus@northwind.io",
            "bad@northwind.io"
        ]
    );
    let old = fake.member(LIST, "old@northwind.io").unwrap();
    assert_eq!(old.status, "unsubscribed");
    assert_eq!(old.merge_fields["FNAME"], "Old");
    assert_eq!(
        fake.members(LIST).len(),
        2,
        "refused members change nothing"
    );

    // Without update_existing an existing member is refused.
    let body = json!({"members": [{"email_address": "old@northwind.io", "status": "subscribed"}]});
    let (_, answer, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &path,
        Some(body),
    )
    .await;
    assert_eq!(
        answer["errors"][0]["error_code"], "ERROR_CONTACT_EXISTS",
        "{answer}"
    );

    // More than 500 members: the whole call is refused.
    let members: Vec<Value> = (0..501)
        .map(|i| json!({"email_address": format!("m{i}@northwind.io"), "status": "subscribed", "merge_fields": {"AGE": 1}}))
        .collect();
    let (status, answer, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &path,
        Some(json!({"members": members})),
    )
    .await;
    assert_eq!(status, 400);
    assert_problem(&answer, 400);
    assert_eq!(fake.members(LIST).len(), 2);
}

#[tokio::test]
async fn member_lists_page_hide_archived_members_and_filter_by_change_time() {
    let (fake, client) = start(Options::default()).await;
    let (base, key) = (fake.base_url(), fake.api_key());
    for i in 0..15 {
        fake.add_member(LIST, &format!("p{i:02}@northwind.io"), "subscribed", &[]);
    }
    let get = |path: String| {
        let (client, base, key) = (client.clone(), base.clone(), key.clone());
        async move { call(&client, &base, &key, reqwest::Method::GET, &path, None).await }
    };
    let (_, page, _) = get(format!("/lists/{LIST}/members")).await;
    assert_eq!(
        page["members"].as_array().unwrap().len(),
        10,
        "count defaults to 10"
    );
    assert_eq!(page["total_items"], 15);
    let (status, body, _) = get(format!("/lists/{LIST}/members?count=1001")).await;
    assert_eq!(status, 400, "{body}");

    // Archive one through the API: it leaves the default listing.
    let hash = subscriber_hash("P03@northwind.io");
    let (status, _, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::DELETE,
        &format!("/lists/{LIST}/members/{hash}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::DELETE,
        &format!("/lists/{LIST}/members/{hash}"),
        None,
    )
    .await;
    assert_eq!(status, 404, "already archived");
    let (_, page, _) = get(format!("/lists/{LIST}/members?count=1000")).await;
    assert_eq!(page["total_items"], 14);
    let (_, page, _) = get(format!("/lists/{LIST}/members?status=archived")).await;
    assert_eq!(page["members"][0]["email_address"], "p03@northwind.io");

    // since_last_changed is exclusive.
    let at = page["members"][0]["last_changed"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, page, _) = get(format!(
        "/lists/{LIST}/members?status=archived&since_last_changed={}",
        at.replace('+', "%2B")
    ))
    .await;
    assert_eq!(page["total_items"], 0, "{page}");

    // `fields` keeps only what is asked for.
    let (_, page, _) = get(format!(
        "/lists/{LIST}/members?count=1&fields=members.email_address,total_items"
    ))
    .await;
    assert_eq!(page["members"][0].as_object().unwrap().len(), 1, "{page}");
    assert!(page.get("list_id").is_none(), "{page}");

    // Permanent deletion is remembered.
    let hash = subscriber_hash("p04@northwind.io");
    let (status, _, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &format!("/lists/{LIST}/members/{hash}/actions/delete-permanent"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let body = json!({"members": [{"email_address": "p04@northwind.io", "status": "subscribed", "merge_fields": {"AGE": 1}}]});
    let (_, answer, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &format!("/lists/{LIST}"),
        Some(body),
    )
    .await;
    assert!(
        answer["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains("permanently deleted"),
        "{answer}"
    );
    let (status, body, _) = get("/lists/nosuch/members".into()).await;
    assert_eq!(status, 404);
    assert_problem(&body, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_ten_requests_in_flight_are_answered_429() {
    let (fake, client) = start(Options {
        delay: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    let mut tasks = Vec::new();
    for _ in 0..15 {
        let (client, base, key) = (client.clone(), fake.base_url(), fake.api_key());
        tasks.push(tokio::spawn(async move {
            call(&client, &base, &key, reqwest::Method::GET, "/ping", None).await
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body, _) = task.await.unwrap();
        if status == 429 {
            assert_problem(&body, 429);
        }
        statuses.push(status);
    }
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        10,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(fake.counts().throttled, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_prism_the_answers_fit_the_description_and_a_bad_request_is_refused() {
    if !Prism::installed() {
        lockstep_test_support::skip::skip_or_fail(
            "the contract test needs Prism: run `npm ci` in crates/lockstep-fake-mailchimp/contract",
        );
        return;
    }
    let (fake, client) = start(Options::default()).await;
    fake.add_member(LIST, "a@northwind.io", "subscribed", &[("AGE", "3")]);
    let upstream = fake.base_url();
    let prism = tokio::task::spawn_blocking(move || Prism::start(&upstream))
        .await
        .unwrap()
        .unwrap();
    let (base, key) = (prism.base_url(), fake.api_key());
    for path in [
        format!("/lists/{LIST}/members?count=1000&status=subscribed"),
        format!("/lists/{LIST}/merge-fields?count=1000"),
        format!("/lists/{LIST}/members?status=archived"),
        "/lists/nosuch/members".into(),
        "/ping".into(),
    ] {
        call(&client, &base, &key, reqwest::Method::GET, &path, None).await;
    }
    let body = json!({"update_existing": true, "members": [
        {"email_address": "b@northwind.io", "status": "subscribed", "merge_fields": {"AGE": "4"}},
        {"email_address": "c@example.com", "status": "subscribed"},
    ]});
    let (status, _, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &format!("/lists/{LIST}"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200);
    call(
        &client,
        &base,
        "wrong-us21",
        reqwest::Method::GET,
        "/ping",
        None,
    )
    .await;
    assert_eq!(
        prism.violations(),
        Vec::<String>::new(),
        "{}",
        prism.log_text()
    );

    // Requests Mailchimp would refuse never reach the fake, and are reported.
    let before = fake.counts().requests;
    let (status, _, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::GET,
        &format!("/lists/{LIST}/members?count=5000"),
        None,
    )
    .await;
    assert_eq!(status, 422);
    let body = json!({"members": [{"email_address": "d@northwind.io", "status": "archived"}]});
    let (status, _, _) = call(
        &client,
        &base,
        &key,
        reqwest::Method::POST,
        &format!("/lists/{LIST}"),
        Some(body),
    )
    .await;
    assert_eq!(
        status, 422,
        "archived is not a status batch subscribe takes"
    );
    assert_eq!(fake.counts().requests, before);
    assert_eq!(prism.violations().len(), 2, "{}", prism.log_text());
}
