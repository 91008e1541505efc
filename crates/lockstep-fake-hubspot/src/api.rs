//! The fake's HTTP endpoints and the gate every request passes: authentication, faults,
//! rate limits and delays.
//!
//! Handlers' helpers return `Result<_, Response>`: the error is the HTTP answer itself, made
//! once per request, so its size does not matter and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::model::{format_ms, parse_datetime_ms, ObjectType, PropertyType, Store};
use crate::{Counters, Locked, Options};

/// The most inputs one batch call takes. Per "Batch" in "CRM objects" (developers.hubspot.
/// com/docs/api/crm/understanding-the-crm): batch operations are limited to 100 inputs.
const BATCH_LIMIT: usize = 100;
/// The largest `limit` of the list endpoint ("List contacts": maximum 100 per page).
const LIST_LIMIT: usize = 100;
/// The largest `limit` of a search page, and the most results one search query can page
/// through. Per "CRM search" (developers.hubspot.com/docs/api/crm/search), limitations: "the
/// search endpoints are limited to 10,000 total results for any given query" and a page holds
/// at most 200 records.
const SEARCH_LIMIT: usize = 200;
const SEARCH_CAP: usize = 10_000;
/// Per "CRM search": up to five filter groups with up to six filters each, and at most 18
/// filters in all.
const MAX_FILTER_GROUPS: usize = 5;
const MAX_FILTERS_PER_GROUP: usize = 6;
const MAX_FILTERS: usize = 18;

pub(crate) struct Shared {
    pub options: Locked<Options>,
    pub store: Locked<Store>,
    pub counters: Locked<Counters>,
    general: Locked<VecDeque<Instant>>,
    search: Locked<VecDeque<Instant>>,
}

impl Shared {
    pub fn new(options: Options) -> Self {
        Self {
            options: Locked::new(options),
            store: Locked::new(Store::default()),
            counters: Locked::new(Counters::default()),
            general: Locked::new(VecDeque::new()),
            search: Locked::new(VecDeque::new()),
        }
    }
}

pub(crate) fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/crm/v3/objects/{object}", get(list))
        .route("/crm/v3/objects/{object}/search", post(search))
        .route("/crm/v3/objects/{object}/batch/{operation}", post(batch))
        .route("/crm/v3/properties/{object}", get(properties))
        .with_state(state)
}

/// HubSpot's error body. Per "API usage guidelines" and the error-handling guide
/// (developers.hubspot.com/docs/api/error-handling): `status`, `message`, `correlationId`,
/// `category`, and optionally `errors` and `context`.
fn error(status: StatusCode, category: &str, message: impl Into<String>) -> Response {
    error_with(status, category, message, Value::Null)
}

fn error_with(
    status: StatusCode,
    category: &str,
    message: impl Into<String>,
    extra: Value,
) -> Response {
    let mut body = json!({
        "status": "error",
        "message": message.into(),
        "correlationId": correlation_id(),
        "category": category,
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (status, Json(body)).into_response()
}

fn correlation_id() -> String {
    let hex = |n: usize| {
        (0..n)
            .map(|_| fastrand::char('a'..='f'))
            .collect::<String>()
    };
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

/// Which rate limit a request counts against.
#[derive(Clone, Copy, PartialEq)]
enum Class {
    General,
    Search,
}

/// Authentication, faults, rate limits and delay, in that order. `Ok` carries the headers to
/// add to the answer.
async fn gate(state: &Shared, headers: &HeaderMap, class: Class) -> Result<HeaderMap, Response> {
    let options = state.options.lock().unwrap().clone();
    state.counters.lock().unwrap().requests += 1;
    if !options.delay.is_zero() {
        {
            let mut counters = state.counters.lock().unwrap();
            counters.in_delay += 1;
            counters.most_in_delay = counters.most_in_delay.max(counters.in_delay);
        }
        tokio::time::sleep(options.delay).await;
        state.counters.lock().unwrap().in_delay -= 1;
    }
    // Per "Authentication overview": private apps send `Authorization: Bearer <token>`; a
    // missing or wrong token is a 401 with category INVALID_AUTHENTICATION.
    let expected = format!("Bearer {}", options.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found. This API supports OAuth 2.0 authentication \
             and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
        ));
    }
    if options.fault_rate > 0.0 && fastrand::f64() < options.fault_rate {
        let status = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][fastrand::usize(..3)];
        return Err(error(
            status,
            "INTERNAL_ERROR",
            "internal error (injected by the fake)",
        ));
    }
    let mut answer = HeaderMap::new();
    let now = Instant::now();
    match class {
        // Per "API usage guidelines": private apps may make 100 requests per 10 seconds
        // (TEN_SECONDLY_ROLLING); answers carry X-HubSpot-RateLimit-Max, -Remaining and
        // -Interval-Milliseconds, and a request over the limit is a 429 whose body names the
        // policy, with `errorType` RATE_LIMIT.
        Class::General => {
            if let Some((max, interval)) = options.rate_limit {
                let mut window = state.general.lock().unwrap();
                while window
                    .front()
                    .is_some_and(|&t| now.duration_since(t) >= interval)
                {
                    window.pop_front();
                }
                let used = window.len() as u32;
                let set = |h: &mut HeaderMap, name: &'static str, v: String| {
                    h.insert(name, HeaderValue::from_str(&v).unwrap());
                };
                set(&mut answer, "x-hubspot-ratelimit-max", max.to_string());
                set(
                    &mut answer,
                    "x-hubspot-ratelimit-interval-milliseconds",
                    interval.as_millis().to_string(),
                );
                if used >= max {
                    set(&mut answer, "x-hubspot-ratelimit-remaining", "0".into());
                    state.counters.lock().unwrap().throttled += 1;
                    return Err(throttled(
                        answer,
                        "TEN_SECONDLY_ROLLING",
                        "ten_secondly_rolling",
                    ));
                }
                window.push_back(now);
                set(
                    &mut answer,
                    "x-hubspot-ratelimit-remaining",
                    (max - used - 1).to_string(),
                );
            }
        }
        // Per "CRM search": search endpoints are limited to five requests per second per
        // account and do not return the standard rate-limit headers.
        Class::Search => {
            if let Some(per_second) = options.search_per_second {
                let mut window = state.search.lock().unwrap();
                while window
                    .front()
                    .is_some_and(|&t| now.duration_since(t) >= Duration::from_secs(1))
                {
                    window.pop_front();
                }
                if window.len() as u32 >= per_second {
                    state.counters.lock().unwrap().throttled += 1;
                    return Err(throttled(HeaderMap::new(), "SECONDLY", "secondly"));
                }
                window.push_back(now);
            }
        }
    }
    Ok(answer)
}

fn throttled(headers: HeaderMap, policy: &str, name: &str) -> Response {
    let body = json!({
        "status": "error",
        "message": format!("You have reached your {name} limit."),
        "errorType": "RATE_LIMIT",
        "correlationId": correlation_id(),
        "policyName": policy,
    });
    (StatusCode::TOO_MANY_REQUESTS, headers, Json(body)).into_response()
}

fn object_type(name: &str) -> Result<ObjectType, Response> {
    ObjectType::parse(name).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            format!("Unable to infer object type from: {name}"),
        )
    })
}

fn with_headers(headers: HeaderMap, response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    parts.headers.extend(headers);
    Response::from_parts(parts, body)
}

fn validation(message: impl Into<String>) -> Response {
    error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", message)
}

/// `GET /crm/v3/objects/{object}`. Per "List contacts" (developers.hubspot.com/docs/api/crm/
/// contacts): `limit` (default 10, at most 100), `after` (the cursor of the next page, from
/// `paging.next.after`), `properties` (comma-separated), `archived` (only archived records
/// when true); records in id order.
async fn list(
    State(state): State<Arc<Shared>>,
    Path(object): Path<String>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let headers = match gate(&state, &headers, Class::General).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let response = (|| {
        let object = object_type(&object)?;
        let param = |name: &str| {
            query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let limit = match param("limit") {
            None => 10,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=LIST_LIMIT).contains(&n) => n,
                _ => {
                    return Err(validation(format!(
                        "limit must be between 1 and {LIST_LIMIT}, got {text}"
                    )))
                }
            },
        };
        let after = match param("after") {
            None => 0,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| validation(format!("after must be a paging cursor, got {text}")))?,
        };
        let archived = match param("archived") {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(validation(format!(
                    "archived must be true or false, got {other}"
                )))
            }
        };
        let asked: Vec<String> = query
            .iter()
            .filter(|(k, _)| k == "properties")
            .flat_map(|(_, v)| v.split(','))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let store = state.store.lock().unwrap();
        let mut page: Vec<_> = store
            .records_from(object, after)
            .filter(|r| r.archived_ms.is_some() == archived)
            .take(limit + 1)
            .collect();
        let next = (page.len() > limit)
            .then(|| page.pop().map(|r| r.id))
            .flatten();
        page.truncate(limit);
        let mut body = json!({
            "results": page.iter().map(|r| r.to_json(object, Some(&asked))).collect::<Vec<_>>(),
        });
        if let Some(next) = next {
            body["paging"] =
                json!({"next": {"after": next.to_string(), "link": format!("?after={next}")}});
        }
        Ok(Json(body).into_response())
    })();
    with_headers(headers, response.unwrap_or_else(|e| e))
}

/// `GET /crm/v3/properties/{object}`: every property definition.
async fn properties(
    State(state): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
) -> Response {
    let headers = match gate(&state, &headers, Class::General).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let response = match object_type(&object) {
        Ok(object) => Json(json!({
            "results": object.properties().iter().map(|p| p.to_json()).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(r) => r,
    };
    with_headers(headers, response)
}

/// `POST /crm/v3/objects/{object}/search`, per "CRM search": `filterGroups` (ORed; filters in
/// a group ANDed), `sorts` (one), `properties`, `limit` (at most 200), `after` (an offset),
/// at most 10,000 results per query; archived records are never found.
async fn search(
    State(state): State<Arc<Shared>>,
    Path(object): Path<String>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    if let Err(r) = gate(&state, &headers, Class::Search).await {
        return r;
    }
    let run = || -> Result<Response, Response> {
        let object = object_type(&object)?;
        let Some(Json(request)) = body else {
            return Err(validation(
                "Invalid input JSON: the body must be a JSON object",
            ));
        };
        let limit = match request.get("limit") {
            None | Some(Value::Null) => 10,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=SEARCH_LIMIT as u64).contains(&n) => n as usize,
                _ => {
                    return Err(validation(format!(
                        "limit must be between 1 and {SEARCH_LIMIT}"
                    )))
                }
            },
        };
        let after = match request.get("after") {
            None | Some(Value::Null) => 0,
            Some(Value::String(s)) => s
                .parse::<usize>()
                .map_err(|_| validation(format!("Invalid after: {s}")))?,
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0) as usize,
            Some(other) => return Err(validation(format!("Invalid after: {other}"))),
        };
        if after + limit > SEARCH_CAP {
            return Err(validation(format!(
                "The request would page past the {SEARCH_CAP} results a search can return (after={after}, limit={limit}); narrow the query's filters"
            )));
        }
        let groups = parse_filter_groups(object, request.get("filterGroups"))?;
        let sort = parse_sort(object, request.get("sorts"))?;
        let asked: Vec<String> = match request.get("properties") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        let store = state.store.lock().unwrap();
        let mut found: Vec<_> = store
            .records(object)
            .filter(|r| r.archived_ms.is_none())
            .filter(|r| {
                groups.is_empty()
                    || groups
                        .iter()
                        .any(|g| g.iter().all(|f| f.matches(object, r)))
            })
            .collect();
        if let Some((property, descending)) = &sort {
            let kind = kind_of(object, property);
            let mut keyed: Vec<_> = found
                .into_iter()
                .map(|r| (Typed::of(object, r, property, kind), r))
                .collect();
            keyed.sort_by(|(a, ra), (b, rb)| {
                let order = compare(a.as_ref(), b.as_ref()).then(ra.id.cmp(&rb.id));
                if *descending {
                    order.reverse()
                } else {
                    order
                }
            });
            found = keyed.into_iter().map(|(_, r)| r).collect();
        }
        let total = found.len();
        let page: Vec<Value> = found
            .iter()
            .skip(after)
            .take(limit)
            .map(|r| r.to_json(object, Some(&asked)))
            .collect();
        let mut body = json!({"total": total, "results": page});
        let next = after + limit;
        if next < total && next < SEARCH_CAP {
            body["paging"] = json!({"next": {"after": next.to_string()}});
        }
        Ok(Json(body).into_response())
    };
    run().unwrap_or_else(|e| e)
}

fn kind_of(object: ObjectType, property: &str) -> PropertyType {
    object
        .properties()
        .iter()
        .find(|p| p.name == property)
        .map(|p| p.kind)
        .unwrap_or(PropertyType::String)
}

/// A value as its property's type compares it.
#[derive(Debug, Clone, PartialEq)]
enum Typed {
    Number(f64),
    Millis(i64),
    Text(String),
}

impl Typed {
    fn parse(kind: PropertyType, text: &str) -> Option<Self> {
        Some(match kind {
            PropertyType::Number => Typed::Number(text.parse().ok()?),
            PropertyType::DateTime => Typed::Millis(parse_datetime_ms(text)?),
            _ => Typed::Text(text.to_owned()),
        })
    }

    /// A record's value of `property`, read without formatting the system timestamps.
    fn of(
        object: ObjectType,
        record: &crate::Record,
        property: &str,
        kind: PropertyType,
    ) -> Option<Self> {
        match property {
            "hs_object_id" => Some(Typed::Number(record.id as f64)),
            "createdate" => Some(Typed::Millis(record.created_ms)),
            p if p == object.last_modified_property() => Some(Typed::Millis(record.updated_ms)),
            p => Self::parse(kind, record.properties.get(p).filter(|v| !v.is_empty())?),
        }
    }
}

/// Compares two values; no value sorts first.
fn compare(a: Option<&Typed>, b: Option<&Typed>) -> std::cmp::Ordering {
    use std::cmp::Ordering::*;
    match (a, b) {
        (None, None) => Equal,
        (None, Some(_)) => Less,
        (Some(_), None) => Greater,
        (Some(Typed::Number(a)), Some(Typed::Number(b))) => a.total_cmp(b),
        (Some(Typed::Millis(a)), Some(Typed::Millis(b))) => a.cmp(b),
        (Some(Typed::Text(a)), Some(Typed::Text(b))) => a.cmp(b),
        // A filter value that does not parse as the property's type matches nothing.
        _ => Less,
    }
}

struct Filter {
    property: String,
    kind: PropertyType,
    operator: String,
    text: Option<String>,
    value: Option<Typed>,
    high: Option<Typed>,
    values: Vec<Typed>,
}

impl Filter {
    fn matches(&self, object: ObjectType, record: &crate::Record) -> bool {
        let actual = Typed::of(object, record, &self.property, self.kind);
        let cmp = |v: Option<&Typed>| compare(actual.as_ref(), v);
        use std::cmp::Ordering::*;
        match self.operator.as_str() {
            "HAS_PROPERTY" => actual.is_some(),
            "NOT_HAS_PROPERTY" => actual.is_none(),
            _ if actual.is_none() => false,
            "EQ" => cmp(self.value.as_ref()) == Equal,
            "NEQ" => cmp(self.value.as_ref()) != Equal,
            "LT" => cmp(self.value.as_ref()) == Less,
            "LTE" => cmp(self.value.as_ref()) != Greater,
            "GT" => cmp(self.value.as_ref()) == Greater,
            "GTE" => cmp(self.value.as_ref()) != Less,
            "BETWEEN" => cmp(self.value.as_ref()) != Less && cmp(self.high.as_ref()) != Greater,
            "IN" => self.values.iter().any(|v| cmp(Some(v)) == Equal),
            "NOT_IN" => !self.values.iter().any(|v| cmp(Some(v)) == Equal),
            "CONTAINS_TOKEN" | "NOT_CONTAINS_TOKEN" => {
                let text = record
                    .property(object, &self.property)
                    .unwrap_or_default()
                    .to_lowercase();
                let token = self
                    .text
                    .as_deref()
                    .unwrap_or_default()
                    .trim_matches('*')
                    .to_lowercase();
                text.contains(&token) == (self.operator == "CONTAINS_TOKEN")
            }
            _ => false,
        }
    }
}

const OPERATORS: [&str; 13] = [
    "EQ",
    "NEQ",
    "LT",
    "LTE",
    "GT",
    "GTE",
    "BETWEEN",
    "IN",
    "NOT_IN",
    "HAS_PROPERTY",
    "NOT_HAS_PROPERTY",
    "CONTAINS_TOKEN",
    "NOT_CONTAINS_TOKEN",
];

fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn parse_filter_groups(
    object: ObjectType,
    groups: Option<&Value>,
) -> Result<Vec<Vec<Filter>>, Response> {
    let groups = match groups {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(g)) => g,
        Some(_) => return Err(validation("filterGroups must be an array")),
    };
    if groups.len() > MAX_FILTER_GROUPS {
        return Err(validation(format!(
            "Too many filter groups: {} (the most is {MAX_FILTER_GROUPS})",
            groups.len()
        )));
    }
    let mut total = 0;
    let defs = object.properties();
    let mut parsed = Vec::new();
    for group in groups {
        let filters = group
            .get("filters")
            .and_then(Value::as_array)
            .ok_or_else(|| validation("each filter group needs a filters array"))?;
        if filters.len() > MAX_FILTERS_PER_GROUP {
            return Err(validation(format!(
                "Too many filters in a group: {} (the most is {MAX_FILTERS_PER_GROUP})",
                filters.len()
            )));
        }
        total += filters.len();
        let mut group_filters = Vec::new();
        for f in filters {
            let property = f
                .get("propertyName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !defs.iter().any(|p| p.name == property) {
                return Err(validation(format!(
                    "There was a problem with the request: property {property} does not exist"
                )));
            }
            let operator = f
                .get("operator")
                .and_then(Value::as_str)
                .unwrap_or("EQ")
                .to_owned();
            if !OPERATORS.contains(&operator.as_str()) {
                return Err(validation(format!("Unknown filter operator: {operator}")));
            }
            let kind = kind_of(object, &property);
            let text = f.get("value").and_then(value_text);
            let value = text.as_deref().and_then(|t| Typed::parse(kind, t));
            let needs_value = !matches!(
                operator.as_str(),
                "HAS_PROPERTY" | "NOT_HAS_PROPERTY" | "IN" | "NOT_IN"
            );
            if needs_value && text.is_none() {
                return Err(validation(format!(
                    "The {operator} filter on {property} needs a value"
                )));
            }
            let values = f
                .get("values")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(value_text)
                        .filter_map(|t| Typed::parse(kind, &t))
                        .collect()
                })
                .unwrap_or_default();
            let high = f
                .get("highValue")
                .and_then(value_text)
                .and_then(|t| Typed::parse(kind, &t));
            group_filters.push(Filter {
                property,
                kind,
                operator,
                text,
                value,
                high,
                values,
            });
        }
        parsed.push(group_filters);
    }
    if total > MAX_FILTERS {
        return Err(validation(format!(
            "Too many filters: {total} (the most is {MAX_FILTERS})"
        )));
    }
    Ok(parsed)
}

/// One sort, per "CRM search": "You can only sort by one property per search". A sort is
/// `{"propertyName": …, "direction": "ASCENDING" | "DESCENDING"}` or a property name.
fn parse_sort(
    object: ObjectType,
    sorts: Option<&Value>,
) -> Result<Option<(String, bool)>, Response> {
    let sorts = match sorts {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Array(s)) => s,
        Some(_) => return Err(validation("sorts must be an array")),
    };
    if sorts.len() > 1 {
        return Err(validation("Only one sort is allowed per search"));
    }
    let Some(sort) = sorts.first() else {
        return Ok(None);
    };
    let (property, descending) = match sort {
        Value::String(name) => match name.strip_prefix('-') {
            Some(name) => (name.to_owned(), true),
            None => (name.clone(), false),
        },
        Value::Object(o) => (
            o.get("propertyName")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            match o.get("direction").and_then(Value::as_str) {
                None | Some("ASCENDING") => false,
                Some("DESCENDING") => true,
                Some(other) => return Err(validation(format!("Unknown sort direction: {other}"))),
            },
        ),
        _ => return Err(validation("a sort must be an object or a property name")),
    };
    if !object.properties().iter().any(|p| p.name == property) {
        return Err(validation(format!(
            "Cannot sort by {property}: no such property"
        )));
    }
    Ok(Some((property, descending)))
}

/// `POST /crm/v3/objects/{object}/batch/{create|update|upsert|archive}`.
async fn batch(
    State(state): State<Arc<Shared>>,
    Path((object, operation)): Path<(String, String)>,
    headers: HeaderMap,
    body: Option<Json<Value>>,
) -> Response {
    let headers = match gate(&state, &headers, Class::General).await {
        Ok(h) => h,
        Err(r) => return r,
    };
    let run = || -> Result<Response, Response> {
        let object = object_type(&object)?;
        let inputs = body
            .as_ref()
            .and_then(|Json(b)| b.get("inputs"))
            .and_then(Value::as_array)
            .ok_or_else(|| validation("Invalid input JSON: the body needs an `inputs` array"))?;
        if inputs.len() > BATCH_LIMIT {
            return Err(validation(format!(
                "Too many inputs: {} (a batch takes at most {BATCH_LIMIT})",
                inputs.len()
            )));
        }
        let mut store = state.store.lock().unwrap();
        match operation.as_str() {
            "create" => create(&mut store, object, inputs),
            "update" => update(&mut store, object, inputs),
            "upsert" => upsert(&mut store, object, inputs),
            "archive" => archive(&mut store, object, inputs),
            other => Err(error(
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                format!("Unknown batch operation: {other}"),
            )),
        }
    };
    with_headers(headers, run().unwrap_or_else(|e| e))
}

/// Checks an input's properties. Per "Update contacts": "Read-only and non-existent
/// properties will result in an error", reported the way HubSpot reports invalid property
/// values: the whole batch is refused with a 400 whose message lists each problem.
fn check_properties(
    object: ObjectType,
    input: &Value,
) -> Result<BTreeMap<String, String>, Response> {
    let defs = object.properties();
    let mut problems = Vec::new();
    let mut checked = BTreeMap::new();
    if let Some(properties) = input.get("properties").and_then(Value::as_object) {
        for (name, value) in properties {
            match defs.iter().find(|p| p.name == name) {
                None => problems.push(json!({"isValid": false, "message": format!("Property \"{name}\" does not exist"), "error": "PROPERTY_DOESNT_EXIST", "name": name})),
                Some(p) if p.read_only => problems.push(json!({"isValid": false, "message": format!("\"{name}\" is a read only property; its value cannot be set."), "error": "READ_ONLY_VALUE", "name": name})),
                Some(p) => match p.check(value) {
                    Ok(mut text) => {
                        // HubSpot stores email addresses in lower case.
                        if name == "email" {
                            text = text.to_lowercase();
                        }
                        checked.insert(name.clone(), text);
                    }
                    Err((message, code)) => problems.push(json!({"isValid": false, "message": message, "error": code, "name": name})),
                },
            }
        }
    } else if input.get("properties").is_some() {
        return Err(validation("properties must be an object"));
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(validation(format!(
            "Property values were not valid: {}",
            Value::Array(problems)
        )))
    }
}

fn input_id(input: &Value) -> Option<String> {
    input.get("id").and_then(value_text)
}

fn duplicates_check(ids: &[String]) -> Result<(), Response> {
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(validation(format!(
                "Duplicate IDs found in batch input: [{id}]. IDs must be unique"
            )));
        }
    }
    Ok(())
}

fn batch_answer(
    status: StatusCode,
    results: Vec<Value>,
    errors: Vec<Value>,
    started: i64,
) -> Response {
    let now = format_ms(chrono::Utc::now().timestamp_millis());
    let mut body = json!({
        "status": "COMPLETE",
        "results": results,
        "startedAt": format_ms(started),
        "completedAt": now,
    });
    let status = if errors.is_empty() {
        status
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = Value::Array(errors);
        StatusCode::MULTI_STATUS
    };
    (status, Json(body)).into_response()
}

/// Per "Create a batch of contacts": 201 with the created records. A unique value that
/// another record holds refuses the whole batch with 409 CONFLICT.
fn create(store: &mut Store, object: ObjectType, inputs: &[Value]) -> Result<Response, Response> {
    let checked: Vec<_> = inputs
        .iter()
        .map(|i| check_properties(object, i))
        .collect::<Result<_, _>>()?;
    let uniques: Vec<_> = object
        .properties()
        .into_iter()
        .filter(|p| p.unique)
        .collect();
    let mut seen = HashSet::new();
    for properties in &checked {
        for p in &uniques {
            if let Some(value) = properties.get(p.name).filter(|v| !v.is_empty()) {
                if let Some(existing) = store.find_unique(object, p.name, value) {
                    return Err(error(
                        StatusCode::CONFLICT,
                        "CONFLICT",
                        format!(
                            "{} already exists. Existing ID: {existing}",
                            object.error_name()
                        ),
                    ));
                }
                if !seen.insert((p.name, value.clone())) {
                    return Err(validation(format!(
                        "Duplicate {} values in batch input: {value}",
                        p.name
                    )));
                }
            }
        }
    }
    let now = store.tick();
    let results = checked
        .into_iter()
        .map(|properties| store.create(object, properties, now).to_json(object, None))
        .collect();
    Ok(batch_answer(StatusCode::CREATED, results, Vec::new(), now))
}

/// Per "Update contacts": inputs by `id` (or by a unique `idProperty`); ids that do not exist
/// are reported in a 207 answer with category OBJECT_NOT_FOUND, the others are updated.
fn update(store: &mut Store, object: ObjectType, inputs: &[Value]) -> Result<Response, Response> {
    let ids: Vec<String> = inputs
        .iter()
        .map(|i| input_id(i).ok_or_else(|| validation("every input needs an id")))
        .collect::<Result<_, _>>()?;
    duplicates_check(&ids)?;
    let checked: Vec<_> = inputs
        .iter()
        .map(|i| check_properties(object, i))
        .collect::<Result<_, _>>()?;
    let now = store.tick();
    let mut results = Vec::new();
    let mut missing = Vec::new();
    for ((input, id), properties) in inputs.iter().zip(&ids).zip(checked) {
        let target = match input.get("idProperty").and_then(Value::as_str) {
            Some(property) => unique_property(object, property)?
                .and_then(|p| store.find_unique(object, p, &id.to_lowercase())),
            None => id.parse::<u64>().ok(),
        };
        let live = target.filter(|&t| {
            store
                .get(object, t)
                .is_some_and(|r| r.archived_ms.is_none())
        });
        match live.and_then(|t| {
            store.modify(object, t, |record| {
                record.properties.extend(properties);
                record.updated_ms = now;
                record.to_json(object, None)
            })
        }) {
            Some(json) => results.push(json),
            None => missing.push(id.clone()),
        }
    }
    let errors = if missing.is_empty() {
        Vec::new()
    } else {
        vec![json!({
            "status": "error",
            "category": "OBJECT_NOT_FOUND",
            "message": format!("Could not get some {} objects, they may be deleted or not exist. Check that ids are valid.", object.error_name()),
            "context": {"ids": missing},
        })]
    };
    Ok(batch_answer(StatusCode::OK, results, errors, now))
}

/// The unique property named by `idProperty`, or a 400 when it is not unique.
fn unique_property(object: ObjectType, name: &str) -> Result<Option<&'static str>, Response> {
    match object.properties().into_iter().find(|p| p.name == name) {
        Some(p) if p.unique => Ok(Some(p.name)),
        _ => Err(validation(format!(
            "{name} is not a unique property of {}; idProperty must name one",
            object.error_name()
        ))),
    }
}

/// Per "Upsert contacts": each input's `id` is a value of the unique property `idProperty`;
/// the record holding it is updated, or one is created with it. Results say `new`.
fn upsert(store: &mut Store, object: ObjectType, inputs: &[Value]) -> Result<Response, Response> {
    let mut keys = Vec::new();
    for input in inputs {
        let id = input_id(input).ok_or_else(|| validation("every input needs an id"))?;
        let property = input
            .get("idProperty")
            .and_then(Value::as_str)
            .ok_or_else(|| validation("every upsert input needs an idProperty"))?;
        let property = unique_property(object, property)?.expect("checked unique");
        let id = if property == "email" {
            id.to_lowercase()
        } else {
            id
        };
        keys.push((property, id));
    }
    duplicates_check(&keys.iter().map(|(_, v)| v.clone()).collect::<Vec<_>>())?;
    let checked: Vec<_> = inputs
        .iter()
        .map(|i| check_properties(object, i))
        .collect::<Result<_, _>>()?;
    let now = store.tick();
    let mut results = Vec::new();
    for ((property, value), mut properties) in keys.into_iter().zip(checked) {
        properties.insert(property.to_owned(), value.clone());
        let json = match store.find_unique(object, property, &value) {
            Some(id) => {
                let mut json = store
                    .modify(object, id, |record| {
                        record.properties.extend(properties);
                        record.updated_ms = now;
                        record.to_json(object, None)
                    })
                    .expect("found above");
                json["new"] = json!(false);
                json
            }
            None => {
                let mut json = store.create(object, properties, now).to_json(object, None);
                json["new"] = json!(true);
                json
            }
        };
        results.push(json);
    }
    Ok(batch_answer(StatusCode::OK, results, Vec::new(), now))
}

/// Per "Archive a batch of contacts by ID": 204 No Content; archived records move to the
/// list's `archived=true` view and out of search.
fn archive(store: &mut Store, object: ObjectType, inputs: &[Value]) -> Result<Response, Response> {
    let ids: Vec<String> = inputs
        .iter()
        .map(|i| input_id(i).ok_or_else(|| validation("every input needs an id")))
        .collect::<Result<_, _>>()?;
    let now = store.tick();
    for id in ids {
        if let Ok(id) = id.parse() {
            store.modify(object, id, |record| {
                if record.archived_ms.is_none() {
                    record.archived_ms = Some(now);
                    record.updated_ms = now;
                }
            });
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
