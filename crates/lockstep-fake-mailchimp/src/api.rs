//! The fake's HTTP endpoints and the gate every request passes: authentication, the
//! simultaneous-connection limit and injected faults.
//!
//! Handlers' helpers return `Result<_, Response>`: the error is the HTTP answer itself, made
//! once per request, so its size does not matter and boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::model::{parse_time, subscriber_hash, Member, Store};
use crate::{Counters, Locked, Options};

/// Per "Batch subscribe or unsubscribe" (mailchimp.com/developer/marketing/api/lists/
/// batch-subscribe-or-unsubscribe): "Up to 500 members may be added or updated with each API
/// call."
const BATCH_LIMIT: usize = 500;
/// Per "List members info" and "List merge fields": `count` defaults to 10 and is at most
/// 1000.
const DEFAULT_COUNT: usize = 10;
const MAX_COUNT: usize = 1000;
/// Per "Errors" (mailchimp.com/developer/marketing/docs/errors): every error is a problem
/// document whose `type` points at this page.
const ERROR_TYPE: &str = "https://mailchimp.com/developer/marketing/docs/errors/";

pub(crate) struct Shared {
    pub options: Locked<Options>,
    pub store: Locked<Store>,
    pub counters: Locked<Counters>,
    in_flight: AtomicUsize,
}

impl Shared {
    pub fn new(options: Options) -> Self {
        Self {
            options: Locked::new(options),
            store: Locked::new(Store::default()),
            counters: Locked::new(Counters::default()),
            in_flight: AtomicUsize::new(0),
        }
    }
}

pub(crate) fn router(state: Arc<Shared>) -> Router {
    Router::new()
        .route("/ping", get(ping))
        .route("/lists/{list_id}", post(batch))
        .route("/lists/{list_id}/members", get(members))
        .route("/lists/{list_id}/merge-fields", get(merge_fields))
        .route("/lists/{list_id}/members/{hash}", delete(archive))
        .route(
            "/lists/{list_id}/members/{hash}/actions/delete-permanent",
            post(delete_permanent),
        )
        .with_state(state)
}

/// A problem document ("Errors": `type`, `title`, `status`, `detail`, `instance`), served as
/// `application/problem+json`.
fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    problem_with(status, title, detail, Value::Null)
}

fn problem_with(
    status: StatusCode,
    title: &str,
    detail: impl Into<String>,
    extra: Value,
) -> Response {
    let mut body = json!({
        "type": ERROR_TYPE,
        "title": title,
        "status": status.as_u16(),
        "detail": detail.into(),
        "instance": instance_id(),
    });
    if let (Value::Object(body), Value::Object(extra)) = (&mut body, extra) {
        body.extend(extra);
    }
    (
        status,
        [(
            header::CONTENT_TYPE,
            "application/problem+json; charset=utf-8",
        )],
        body.to_string(),
    )
        .into_response()
}

fn instance_id() -> String {
    let hex = |n: usize| {
        (0..n)
            .map(|_| fastrand::char('a'..='f'))
            .collect::<String>()
    };
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Resource Not Found",
        "The requested resource could not be found.",
    )
}

/// Counts a request in flight until it is dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Authentication, the connection limit and faults, in that order. The returned guard holds
/// the request's place among those in flight.
async fn gate<'a>(state: &'a Shared, headers: &HeaderMap) -> Result<InFlight<'a>, Response> {
    let options = state.options.lock().unwrap().clone();
    state.counters.lock().unwrap().requests += 1;
    let guard = InFlight(&state.in_flight);
    let in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    // Per "Fundamentals" (mailchimp.com/developer/marketing/docs/fundamentals): HTTP Basic
    // authentication with any user name and the API key as the password; a wrong key is a
    // 401 "API Key Invalid".
    if !authorized(headers, &options.api_key) {
        state.counters.lock().unwrap().unauthorized += 1;
        return Err(problem(
            StatusCode::UNAUTHORIZED,
            "API Key Invalid",
            "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
        ));
    }
    // Per "Fundamentals", throttling: "each user account is permitted up to 10 simultaneous
    // connections"; beyond that Mailchimp answers 429.
    if in_flight > options.max_connections {
        state.counters.lock().unwrap().throttled += 1;
        return Err(too_many());
    }
    if options.fault_rate > 0.0 && fastrand::f64() < options.fault_rate {
        let mut counters = state.counters.lock().unwrap();
        if fastrand::bool() {
            counters.throttled += 1;
            return Err(too_many());
        }
        counters.faults += 1;
        let status = [
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::BAD_GATEWAY,
            StatusCode::SERVICE_UNAVAILABLE,
        ][fastrand::usize(..3)];
        return Err(problem(
            status,
            "Internal Server Error",
            "An unexpected internal error has occurred (injected by the fake).",
        ));
    }
    if !options.delay.is_zero() {
        tokio::time::sleep(options.delay).await;
    }
    Ok(guard)
}

fn too_many() -> Response {
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        "Too Many Requests",
        "You have exceeded the limit of 10 simultaneous connections.",
    )
}

fn authorized(headers: &HeaderMap, api_key: &str) -> bool {
    use base64::Engine;
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|pair| pair.split_once(':').map(|(_, key)| key == api_key))
        .unwrap_or(false)
}

async fn ping(State(state): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let _guard = match gate(&state, &headers).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    Json(json!({"health_status": "Everything's Chimpy!"})).into_response()
}

/// `count` and `offset` as "List members info" documents them.
fn paging(query: &HashMap<String, String>) -> Result<(usize, usize), Response> {
    let number = |name: &str, default: usize| -> Result<usize, Response> {
        match query.get(name) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Resource",
                    format!("The value of `{name}` must be a non-negative integer; got {text:?}."),
                )
            }),
        }
    };
    let count = number("count", DEFAULT_COUNT)?;
    if count > MAX_COUNT {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "Invalid Resource",
            format!("The count {count} is too large: the most a page holds is {MAX_COUNT}."),
        ));
    }
    Ok((count, number("offset", 0)?))
}

/// Keeps only the top-level fields of each member that `fields` names
/// (`members.email_address,total_items`), as "List members info" describes `fields`.
fn select_fields(
    query: &HashMap<String, String>,
    mut members: Vec<Value>,
    mut body: Value,
) -> Value {
    if let Some(fields) = query.get("fields") {
        let wanted: Vec<&str> = fields.split(',').map(str::trim).collect();
        let member_fields: HashSet<&str> = wanted
            .iter()
            .filter_map(|f| f.strip_prefix("members."))
            .collect();
        if !member_fields.is_empty() && !wanted.contains(&"members") {
            for member in &mut members {
                if let Value::Object(map) = member {
                    map.retain(|k, _| member_fields.contains(k.as_str()));
                }
            }
        }
        if let Value::Object(map) = &mut body {
            map.retain(|k, _| {
                wanted
                    .iter()
                    .any(|w| w == k || w.starts_with(&format!("{k}.")))
            });
        }
    }
    body["members"] = Value::Array(members);
    body
}

async fn members(
    State(state): State<Arc<Shared>>,
    Path(list_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let _guard = match gate(&state, &headers).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let (count, offset) = match paging(&query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let time = |name: &str| -> Result<Option<i64>, Response> {
        match query.get(name) {
            None => Ok(None),
            Some(text) => parse_time(text).map(Some).ok_or_else(|| {
                problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid Resource",
                    format!("`{name}` must be an ISO 8601 time such as 2015-10-21T15:41:36+00:00; got {text:?}."),
                )
            }),
        }
    };
    let (since, before) = match (time("since_last_changed"), time("before_last_changed")) {
        (Ok(s), Ok(b)) => (s, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let status = query.get("status").cloned();
    let store = state.store.lock().unwrap();
    let Some(list) = store.lists.get(&list_id) else {
        return not_found();
    };
    // Archived members are listed only when asked for by `status=archived`, as Mailchimp's
    // UI and API keep them out of the audience.
    let mut found: Vec<&Member> = list
        .members
        .iter()
        .filter(|m| match &status {
            Some(s) => &m.status == s,
            None => m.status != "archived",
        })
        // "Restrict results to subscribers whose information changed after the set
        // timeframe" / "before the set timeframe": both bounds are exclusive.
        .filter(|m| since.is_none_or(|s| m.last_changed > s))
        .filter(|m| before.is_none_or(|b| m.last_changed < b))
        .collect();
    match query.get("sort_field").map(String::as_str) {
        None => {}
        Some("last_changed") => found.sort_by_key(|m| m.last_changed),
        Some("timestamp_signup") | Some("timestamp_opt") => {
            found.sort_by_key(|m| m.timestamp_signup)
        }
        Some(other) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid Resource",
                format!("`sort_field` {other:?} is not one of timestamp_opt, timestamp_signup, last_changed."),
            )
        }
    }
    if query.get("sort_dir").map(String::as_str) == Some("DESC") {
        found.reverse();
    }
    let total = found.len();
    let page: Vec<Value> = found
        .into_iter()
        .skip(offset)
        .take(count)
        .map(|m| m.to_json(&list_id))
        .collect();
    let body = json!({"list_id": list_id, "total_items": total, "_links": []});
    Json(select_fields(&query, page, body)).into_response()
}

async fn merge_fields(
    State(state): State<Arc<Shared>>,
    Path(list_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let _guard = match gate(&state, &headers).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let (count, offset) = match paging(&query) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let store = state.store.lock().unwrap();
    let Some(list) = store.lists.get(&list_id) else {
        return not_found();
    };
    let page: Vec<Value> = list
        .merge_fields
        .iter()
        .skip(offset)
        .take(count)
        .map(|f| {
            json!({
                "merge_id": f.merge_id,
                "tag": f.tag,
                "name": f.name,
                "type": f.kind,
                "required": f.required,
                "default_value": "",
                "public": true,
                "display_order": f.merge_id,
                "list_id": list_id,
                "_links": [],
            })
        })
        .collect();
    Json(json!({
        "merge_fields": page,
        "list_id": list_id,
        "total_items": list.merge_fields.len(),
        "_links": [],
    }))
    .into_response()
}

/// Whether Mailchimp would take the address. Per "Batch subscribe or unsubscribe" a refused
/// address comes back in `errors`; Mailchimp refuses malformed addresses and ones it
/// "looks fake or invalid", which includes the documentation domains.
fn address_problem(email: &str) -> Option<String> {
    let Some((local, domain)) = email.split_once('@') else {
        return Some(format!(
            "{email} looks fake or invalid, please enter a real email address."
        ));
    };
    let malformed = local.is_empty()
        || domain.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || email.chars().any(char::is_whitespace)
        || domain.contains('@');
    let fake =
        ["example.com", "example.org", "example.net"].contains(&domain.to_lowercase().as_str());
    (malformed || fake)
        .then(|| format!("{email} looks fake or invalid, please enter a real email address."))
}

const WRITABLE_STATUSES: [&str; 5] = [
    "subscribed",
    "unsubscribed",
    "cleaned",
    "pending",
    "transactional",
];

async fn batch(
    State(state): State<Arc<Shared>>,
    Path(list_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _guard = match gate(&state, &headers).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Exception",
            "We encountered an unspecified JSON parsing error.",
        );
    };
    let Some(members) = body.get("members").and_then(Value::as_array) else {
        return problem_with(
            StatusCode::BAD_REQUEST,
            "Invalid Resource",
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.",
            json!({"errors": [{"field": "members", "message": "Schema describes array, but none was given"}]}),
        );
    };
    if members.len() > BATCH_LIMIT {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid Resource",
            format!(
                "You may add or update at most {BATCH_LIMIT} members per request; {} were sent.",
                members.len()
            ),
        );
    }
    let update_existing = body
        .get("update_existing")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let skip_merge_validation =
        query.get("skip_merge_validation").map(String::as_str) == Some("true");
    let mut store = state.store.lock().unwrap();
    let now = store.tick();
    let Some(list) = store.lists.get(&list_id).cloned() else {
        return not_found();
    };
    let mut list = list;
    let mut new_members = Vec::new();
    let mut updated_members = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    for member in members {
        let email = member
            .get("email_address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        let mut refuse = |message: String, code: &str, field: &str| {
            errors.push(json!({"email_address": email, "error": message, "error_code": code, "field": field}));
        };
        if let Some(message) = address_problem(&email) {
            refuse(message, "ERROR_GENERIC", "email_address");
            continue;
        }
        let hash = subscriber_hash(&email);
        // "skip_duplicate_check: … This defaults to false": a repeated address is refused.
        if !seen.insert(hash.clone()) {
            refuse(
                format!("{email} appears more than once in this request."),
                "ERROR_GENERIC",
                "email_address",
            );
            continue;
        }
        // The documented parameters require each member's status.
        let Some(status) = member.get("status").and_then(Value::as_str) else {
            refuse("A status is required for each member (subscribed, unsubscribed, cleaned, pending or transactional).".into(), "ERROR_GENERIC", "status");
            continue;
        };
        if !WRITABLE_STATUSES.contains(&status) {
            refuse(
                format!("{status:?} is not a status a member can be given."),
                "ERROR_GENERIC",
                "status",
            );
            continue;
        }
        if list.forgotten.contains(&hash) {
            refuse(
                format!("{email} was permanently deleted and cannot be re-imported. The contact must re-subscribe to get back on the list."),
                "ERROR_GENERIC",
                "email_address",
            );
            continue;
        }
        let mut merge = BTreeMap::new();
        let mut merge_error = None;
        if let Some(given) = member.get("merge_fields") {
            let Some(given) = given.as_object() else {
                refuse(
                    "merge_fields must be an object of merge tags and values.".into(),
                    "ERROR_GENERIC",
                    "merge_fields",
                );
                continue;
            };
            for (tag, value) in given {
                let Some(field) = list.merge_fields.iter().find(|f| &f.tag == tag) else {
                    merge_error = Some((format!("Your merge fields were invalid: the audience has no merge field {tag}."), tag.clone()));
                    break;
                };
                let fits = match field.kind.as_str() {
                    "number" => {
                        value.is_number()
                            || value
                                .as_str()
                                .is_some_and(|s| s.is_empty() || s.parse::<f64>().is_ok())
                    }
                    _ => value.is_string(),
                };
                if !fits {
                    merge_error = Some((
                        format!(
                            "Your merge fields were invalid: {tag} must be a {}.",
                            field.kind
                        ),
                        tag.clone(),
                    ));
                    break;
                }
                merge.insert(tag.clone(), value.clone());
            }
        }
        if let Some((message, tag)) = merge_error {
            refuse(message, "ERROR_GENERIC", &tag);
            continue;
        }
        let existing = list.member_mut(&hash);
        match existing {
            Some(existing) if existing.status != "archived" => {
                if !update_existing {
                    refuse(
                        format!("{email} is already a list member. Use PUT to insert or update list members."),
                        "ERROR_CONTACT_EXISTS",
                        "email_address",
                    );
                    continue;
                }
                // A cleaned address bounced: Mailchimp does not let it be subscribed again.
                if existing.status == "cleaned" && status != "cleaned" {
                    refuse(format!("{email} was cleaned from this audience (it bounced) and cannot be re-subscribed."), "ERROR_GENERIC", "status");
                    continue;
                }
                // The fake applies a status change as sent, resubscribing an unsubscribed
                // member too: a connector must not rely on Mailchimp to protect consent.
                let changed = existing.status != status
                    || merge
                        .iter()
                        .any(|(k, v)| existing.merge_fields.get(k) != Some(v));
                existing.status = status.to_owned();
                existing.merge_fields.extend(merge);
                if changed {
                    existing.last_changed = now;
                }
                updated_members.push(existing.to_json(&list_id));
            }
            existing => {
                let revived = existing.is_some();
                if !skip_merge_validation {
                    if let Some(missing) = list.merge_fields.iter().find(|f| {
                        f.required && merge.get(&f.tag).is_none_or(|v| v.as_str() == Some(""))
                    }) {
                        refuse(
                            format!(
                                "Your merge fields were invalid: {} is required.",
                                missing.tag
                            ),
                            "ERROR_GENERIC",
                            &missing.tag.clone(),
                        );
                        continue;
                    }
                }
                if revived {
                    // An archived member sent again is added back.
                    let member = list.member_mut(&hash).expect("found above");
                    member.status = status.to_owned();
                    member.merge_fields.extend(merge);
                    member.last_changed = now;
                    new_members.push(member.to_json(&list_id));
                } else {
                    let member = Member {
                        email_address: email.clone(),
                        status: status.to_owned(),
                        merge_fields: merge,
                        tags: Vec::new(),
                        last_changed: now,
                        timestamp_signup: now,
                        web_id: 0,
                    };
                    list.members.push(member);
                    let index = list.members.len() - 1;
                    new_members.push(index.into());
                }
            }
        }
    }
    // Web ids for the members created, then their JSON.
    for value in &mut new_members {
        if let Some(index) = value.as_u64() {
            let web_id = store.next_web_id();
            let member = &mut list.members[index as usize];
            member.web_id = web_id;
            *value = member.to_json(&list_id);
        }
    }
    store.lists.insert(list_id.clone(), list);
    Json(json!({
        "new_members": new_members,
        "updated_members": updated_members,
        "errors": errors,
        "total_created": new_members.len(),
        "total_updated": updated_members.len(),
        "error_count": errors.len(),
        "_links": [],
    }))
    .into_response()
}

/// Per "Archive list member" (DELETE /lists/{list_id}/members/{subscriber_hash}): the member
/// is archived, 204; an unknown or already archived member is a 404.
async fn archive(
    State(state): State<Arc<Shared>>,
    Path((list_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let _guard = match gate(&state, &headers).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut store = state.store.lock().unwrap();
    let now = store.tick();
    let Some(member) = store
        .lists
        .get_mut(&list_id)
        .and_then(|l| l.member_mut(&hash))
    else {
        return not_found();
    };
    if member.status == "archived" {
        return not_found();
    }
    member.status = "archived".into();
    member.last_changed = now;
    StatusCode::NO_CONTENT.into_response()
}

/// Per "Delete list member" (POST …/actions/delete-permanent): the member and its history
/// are gone for good, 204, and the address cannot be imported again.
async fn delete_permanent(
    State(state): State<Arc<Shared>>,
    Path((list_id, hash)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let _guard = match gate(&state, &headers).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let mut store = state.store.lock().unwrap();
    let Some(list) = store.lists.get_mut(&list_id) else {
        return not_found();
    };
    let before = list.members.len();
    list.members.retain(|m| m.id() != hash);
    if list.members.len() == before {
        return not_found();
    }
    list.forgotten.insert(hash);
    StatusCode::NO_CONTENT.into_response()
}
