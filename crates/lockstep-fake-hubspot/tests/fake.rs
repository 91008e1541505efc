//! The fake HubSpot against HubSpot's documented behaviour: auth, paging, properties,
//! search and its caps, batches and their limits, timestamps, 429s and faults.

use std::time::{Duration, Instant};

use lockstep_fake_hubspot::{FakeHubSpot, ObjectType, Options};
use reqwest::StatusCode;
use serde_json::{json, Value};

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(fake: &FakeHubSpot) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: fake.base_url(),
            token: fake.token(),
        }
    }

    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        let (status, headers) = (r.status(), r.headers().clone());
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

async fn start() -> (FakeHubSpot, Client) {
    let fake = FakeHubSpot::start(Options::default()).await.unwrap();
    let client = Client::new(&fake);
    (fake, client)
}

fn ids(body: &Value) -> Vec<u64> {
    body["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_a_401_in_hubspots_error_shape() {
    let (fake, mut client) = start().await;
    client.token = "wrong".into();
    let (status, _, body) = client.get("/crm/v3/objects/contacts").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["status"], "error");
    assert_eq!(body["category"], "INVALID_AUTHENTICATION");
    assert!(
        body["correlationId"].as_str().unwrap().len() == 36,
        "{body}"
    );
    let r = reqwest::get(format!("{}/crm/v3/objects/contacts", fake.base_url()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn lists_page_with_limit_and_after_and_show_archived_records_apart() {
    let (fake, client) = start().await;
    for i in 0..25 {
        fake.insert(ObjectType::Contacts, &[("email", &format!("c{i}@x.io"))]);
    }
    let mut seen = Vec::new();
    let mut path = "/crm/v3/objects/contacts?limit=10&properties=email,phone,nosuch".to_owned();
    let mut pages = 0;
    loop {
        let (status, _, body) = client.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        pages += 1;
        let first = &body["results"][0]["properties"];
        assert!(
            first["email"].is_string() && first["phone"].is_null(),
            "{first}"
        );
        assert!(
            first.get("nosuch").is_none(),
            "unknown properties are left out"
        );
        seen.extend(ids(&body));
        match body["paging"]["next"]["after"].as_str() {
            Some(after) => {
                path = format!("/crm/v3/objects/contacts?limit=10&properties=email&after={after}")
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 25);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "id order, each once");

    let (status, _, body) = client.get("/crm/v3/objects/contacts?limit=101").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["category"], "VALIDATION_ERROR");

    let archived = json!({"inputs": [{"id": seen[0].to_string()}, {"id": seen[1].to_string()}]});
    let (status, _) = client
        .post("/crm/v3/objects/contacts/batch/archive", archived)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, _, body) = client
        .get("/crm/v3/objects/contacts?limit=100&archived=true")
        .await;
    assert_eq!(ids(&body), seen[..2].to_vec());
    assert_eq!(body["results"][0]["archived"], true);
    assert!(body["results"][0]["archivedAt"].is_string());
    let (_, _, body) = client.get("/crm/v3/objects/contacts?limit=100").await;
    assert_eq!(ids(&body).len(), 23);
}

#[tokio::test]
async fn the_properties_api_gives_types_and_read_only_flags() {
    let (_fake, client) = start().await;
    let (status, _, body) = client.get("/crm/v3/properties/contacts").await;
    assert_eq!(status, StatusCode::OK);
    let find = |name: &str| {
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(find("lastmodifieddate")["type"], "datetime");
    assert_eq!(
        find("lastmodifieddate")["modificationMetadata"]["readOnlyValue"],
        true
    );
    assert_eq!(find("email")["hasUniqueValue"], true);
    assert_eq!(find("num_associated_deals")["calculated"], true);
    assert_eq!(find("lifecyclestage")["options"][1]["value"], "lead");
    let (status, _, _) = client.get("/crm/v3/properties/widgets").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn search_filters_sorts_and_stops_at_ten_thousand_results() {
    let (fake, client) = start().await;
    for i in 0..10_050 {
        fake.insert(
            ObjectType::Contacts,
            &[
                ("email", &format!("c{i}@x.io")),
                ("firstname", if i % 2 == 0 { "even" } else { "odd" }),
            ],
        );
    }
    let search = |after: Option<String>, limit: u64| {
        let mut body = json!({
            "filterGroups": [{"filters": [{"propertyName": "lastmodifieddate", "operator": "GTE", "value": "0"}]}],
            "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            "properties": ["email", "lastmodifieddate"],
            "limit": limit,
        });
        if let Some(after) = after {
            body["after"] = json!(after);
        }
        body
    };
    let mut after = None;
    let mut count = 0;
    loop {
        let (status, body) = client
            .post(
                "/crm/v3/objects/contacts/search",
                search(after.clone(), 200),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["total"], 10_050);
        count += body["results"].as_array().unwrap().len();
        match body["paging"]["next"]["after"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        count, 10_000,
        "a query pages through 10,000 results at most"
    );
    let (status, body) = client
        .post(
            "/crm/v3/objects/contacts/search",
            search(Some("10000".into()), 1),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = client
        .post("/crm/v3/objects/contacts/search", search(None, 201))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let odd = json!({
        "filterGroups": [{"filters": [{"propertyName": "firstname", "operator": "EQ", "value": "odd"},
                                      {"propertyName": "hs_object_id", "operator": "LTE", "value": "10"}]}],
        "sorts": [{"propertyName": "hs_object_id", "direction": "DESCENDING"}],
        "limit": 10,
    });
    let (_, body) = client.post("/crm/v3/objects/contacts/search", odd).await;
    assert_eq!(ids(&body), vec![10, 8, 6, 4, 2]);
    let two_sorts = json!({"sorts": ["email", "firstname"]});
    let (status, _) = client
        .post("/crm/v3/objects/contacts/search", two_sorts)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn batches_take_a_hundred_inputs_and_report_partial_failures() {
    let (fake, client) = start().await;
    let too_many: Vec<Value> = (0..101)
        .map(|i| json!({"properties": {"email": format!("{i}@x.io")}}))
        .collect();
    let (status, body) = client
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": too_many}),
        )
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_ERROR"))
    );
    assert!(fake.records(ObjectType::Contacts).is_empty());

    let (status, body) = client
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": [{"properties": {"email": "Ann@X.io", "firstname": "Ann"}}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let ann = body["results"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        body["results"][0]["properties"]["email"], "ann@x.io",
        "emails are stored in lower case"
    );
    let (status, body) = client
        .post(
            "/crm/v3/objects/contacts/batch/create",
            json!({"inputs": [{"properties": {"email": "ann@x.io"}}]}),
        )
        .await;
    assert_eq!(
        (status, body["category"].as_str()),
        (StatusCode::CONFLICT, Some("CONFLICT"))
    );

    let upsert = json!({"inputs": [
        {"id": "ANN@x.io", "idProperty": "email", "properties": {"lastname": "Lee"}},
        {"id": "bob@x.io", "idProperty": "email", "properties": {"firstname": "Bob"}},
    ]});
    let (status, body) = client
        .post("/crm/v3/objects/contacts/batch/upsert", upsert)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["id"], ann.as_str());
    assert_eq!(
        (
            body["results"][0]["new"].as_bool(),
            body["results"][1]["new"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert_eq!(fake.records(ObjectType::Contacts).len(), 2);

    let update = json!({"inputs": [{"id": ann, "properties": {"phone": "123"}}, {"id": "999999", "properties": {"phone": "1"}}]});
    let (status, body) = client
        .post("/crm/v3/objects/contacts/batch/update", update)
        .await;
    assert_eq!(status, StatusCode::MULTI_STATUS, "{body}");
    assert_eq!(body["numErrors"], 1);
    assert_eq!(body["errors"][0]["category"], "OBJECT_NOT_FOUND");
    assert_eq!(body["errors"][0]["context"]["ids"], json!(["999999"]));
    assert_eq!(body["results"][0]["id"], ann.as_str());

    let before = fake.records(ObjectType::Contacts);
    for bad in [
        json!({"inputs": [{"id": ann, "properties": {"date_of_birth": "yesterday"}}]}),
        json!({"inputs": [{"id": ann, "properties": {"lastmodifieddate": "0"}}]}),
        json!({"inputs": [{"id": ann, "properties": {"nosuch": "x"}}]}),
        json!({"inputs": [{"id": ann, "properties": {"lifecyclestage": "king"}}]}),
        json!({"inputs": [{"id": ann, "properties": {}}, {"id": ann, "properties": {}}]}),
    ] {
        let (status, body) = client
            .post("/crm/v3/objects/contacts/batch/update", bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert_eq!(body["category"], "VALIDATION_ERROR");
    }
    let after = fake.records(ObjectType::Contacts);
    assert_eq!(
        before[0].updated_ms, after[0].updated_ms,
        "a refused batch changes nothing"
    );
}

#[tokio::test]
async fn every_write_sets_a_millisecond_last_modified_time_that_never_goes_back() {
    let (fake, client) = start().await;
    let mut last = 0;
    for i in 0..5 {
        let body = json!({"inputs": [
            {"id": format!("d{i}.io"), "idProperty": "domain", "properties": {"name": "A"}},
            {"id": format!("e{i}.io"), "idProperty": "domain", "properties": {"name": "B"}},
        ]});
        let (status, body) = client
            .post("/crm/v3/objects/companies/batch/upsert", body)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let stamps: Vec<&str> = body["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["updatedAt"].as_str().unwrap())
            .collect();
        assert_eq!(stamps[0], stamps[1], "one batch, one time");
        assert!(
            stamps[0].len() == 24 && stamps[0].ends_with('Z'),
            "milliseconds: {}",
            stamps[0]
        );
        let ms = chrono::DateTime::parse_from_rfc3339(stamps[0])
            .unwrap()
            .timestamp_millis();
        assert!(ms >= last);
        last = ms;
    }
    let (_, _, body) = client
        .get("/crm/v3/objects/companies?limit=1&properties=hs_lastmodifieddate")
        .await;
    let record = &body["results"][0];
    assert_eq!(
        record["properties"]["hs_lastmodifieddate"],
        record["updatedAt"]
    );
    assert_eq!(fake.records(ObjectType::Companies).len(), 10);
}

#[tokio::test]
async fn requests_past_the_rolling_limit_get_hubspots_429() {
    let fake = FakeHubSpot::start(Options {
        rate_limit: Some((3, Duration::from_millis(500))),
        search_per_second: Some(2),
        ..Options::default()
    })
    .await
    .unwrap();
    let client = Client::new(&fake);
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let (status, headers, _) = client.get("/crm/v3/objects/deals").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-hubspot-ratelimit-max"], "3");
        assert_eq!(headers["x-hubspot-ratelimit-interval-milliseconds"], "500");
        remaining.push(
            headers["x-hubspot-ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let (status, headers, body) = client.get("/crm/v3/objects/deals").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["x-hubspot-ratelimit-remaining"], "0");
    assert_eq!(body["errorType"], "RATE_LIMIT");
    assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
    assert_eq!(body["status"], "error");
    tokio::time::sleep(Duration::from_millis(550)).await;
    assert_eq!(client.get("/crm/v3/objects/deals").await.0, StatusCode::OK);

    for _ in 0..2 {
        assert_eq!(
            client
                .post("/crm/v3/objects/deals/search", json!({}))
                .await
                .0,
            StatusCode::OK
        );
    }
    let (status, body) = client.post("/crm/v3/objects/deals/search", json!({})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["policyName"], "SECONDLY");
    assert_eq!(fake.counts(), (8, 2));
}

#[tokio::test]
async fn faults_answer_5xx_and_slow_answers_wait() {
    let fake = FakeHubSpot::start(Options {
        fault_rate: 1.0,
        ..Options::default()
    })
    .await
    .unwrap();
    let client = Client::new(&fake);
    for _ in 0..5 {
        let (status, _, body) = client.get("/crm/v3/objects/contacts").await;
        assert!(status.is_server_error(), "{status}");
        assert_eq!(body["status"], "error");
    }
    fake.set_options(Options {
        delay: Duration::from_millis(200),
        ..Options::default()
    });
    let started = Instant::now();
    assert_eq!(
        client.get("/crm/v3/objects/contacts").await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
}
