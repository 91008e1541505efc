//! The status page's views: the overview of every sync, a sync's page (runs, charts, config,
//! queues) and a conflict's page, all rendered on the server with maud (which escapes every
//! value it writes).
//!
//! Invariants: a page reads the state store and the daemon's runtime and changes nothing;
//! text that could hold a value from the environment goes through the config's redaction
//! before it is rendered; the part of a page that changes while runs progress sits in
//! `<main id="live">`, which the polling script swaps without a reload.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use lockstep_config::Config;
use lockstep_core::{RunStatus, RunSummary};
use lockstep_state::{
    Action, Conflict, ConflictFilter, ConflictStatus, PendingDeletes, RejectedFilter,
    RejectedRecord,
};
use maud::{html, Markup, DOCTYPE};
use serde_json::Value;

use super::auth::Actor;
use super::charts::{self, Point};
use super::Web;
use crate::schedule::Plan;
use crate::shared::{SyncRuntime, REJECTED_COUNT_CAP};

/// Runs in the overview's chart.
const OVERVIEW_RUNS: usize = 20;
/// Runs on a sync's page.
const SYNC_RUNS: usize = 30;
/// Rejected records and held-delete keys listed on a sync's page.
const LISTED: usize = 50;

/// A page: the shell around `body`, with the stylesheet and the polling script.
pub(crate) fn layout(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · lockstep" }
                    link rel="stylesheet" href="/ui/assets/style.css";
                    script src="/ui/assets/live.js" defer {}
                }
                body {
                    header.top {
                        a.brand href="/ui" { "lockstep" }
                        span #updated .muted {}
                    }
                    (body)
                }
            }
        }
        .into_string(),
    )
}

/// An error page: the state store did not answer, or the thing asked for does not exist.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    (
        status,
        layout(
            "Error",
            html! { main { h1 { "Error" } p.error { (message) } p { a href="/ui" { "Back to the overview" } } } },
        ),
    )
        .into_response()
}

/// A state store failure as a 503 page, with secrets redacted.
pub(crate) fn state_error(web: &Web, e: lockstep_state::StateError) -> Response {
    let text = web.shared.config().secrets.redact(&e.to_string());
    error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("The state store did not answer: {text}"),
    )
}

/// What the overview shows of one sync.
struct SyncRow {
    name: String,
    enabled: bool,
    schedule: Option<String>,
    runtime: SyncRuntime,
    runs: Vec<RunSummary>,
    held: u64,
    conflicts: u64,
    rejected: usize,
}

impl SyncRow {
    fn failing(&self) -> bool {
        self.runtime.consecutive_failures > 0
            || self
                .runs
                .iter()
                .find(|r| r.status != RunStatus::Running)
                .is_some_and(|r| matches!(r.status, RunStatus::Failed | RunStatus::Abandoned))
    }
}

async fn sync_row(
    web: &Web,
    sync: &lockstep_config::Sync,
    conflicts: &HashMap<String, u64>,
    runs: usize,
) -> Result<SyncRow, lockstep_state::StateError> {
    let state = &web.shared.state;
    let name = sync.name();
    // The gauge the daemon keeps up to date after each run (and each retry from the page);
    // counted from the store only before it is first set.
    let rejected = match web.shared.metrics.rejected_pending(name) {
        Some(count) => usize::try_from(count).unwrap_or(usize::MAX),
        None => state
            .rejected(&RejectedFilter {
                sync: Some(name.to_owned()),
                pending_only: true,
                limit: Some(REJECTED_COUNT_CAP),
                ..Default::default()
            })
            .await?
            .len(),
    };
    Ok(SyncRow {
        name: name.to_owned(),
        enabled: sync.enabled,
        schedule: sync
            .schedule
            .as_ref()
            .map(|s| Plan::new(s).map_or_else(|e| e, |p| p.describe().to_owned())),
        runtime: web.shared.runtime_of(name),
        runs: state.runs(Some(name), runs).await?,
        held: state.pending_deletes(name, 0).await?.held,
        conflicts: conflicts.get(name).copied().unwrap_or(0),
        rejected,
    })
}

fn status_badge(status: RunStatus) -> Markup {
    html! { span class=(format!("badge {}", status.as_str())) { (status.as_str()) } }
}

fn time(t: Option<&str>) -> Markup {
    match t.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => {
            let utc = t.with_timezone(&Utc);
            html! { time datetime=(utc.to_rfc3339()) { (utc.format("%Y-%m-%d %H:%M:%S UTC")) } }
        }
        None => html! { span.muted { "–" } },
    }
}

fn duration(ms: Option<i64>) -> String {
    match ms {
        None => "–".into(),
        Some(ms) if ms < 1000 => format!("{ms} ms"),
        Some(ms) if ms < 60_000 => format!("{:.1} s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

/// The overview: every sync, what needs attention first.
pub(crate) async fn overview(State(web): State<Arc<Web>>) -> Response {
    let config = web.shared.config();
    let conflicts = match web.shared.state.open_conflict_counts().await {
        Ok(c) => c,
        Err(e) => return state_error(&web, e),
    };
    let mut rows = Vec::new();
    for sync in &config.syncs {
        match sync_row(&web, sync, &conflicts, OVERVIEW_RUNS).await {
            Ok(row) => rows.push(row),
            Err(e) => return state_error(&web, e),
        }
    }
    let attention: Vec<Markup> = rows.iter().flat_map(attention_items).collect();
    let body = html! {
        main #live data-live="overview" {
            h1 { "Syncs" }
            section.attention {
                h2 { "Needs attention" }
                @if attention.is_empty() {
                    p.ok #all-well { "Nothing needs attention." }
                } @else {
                    ul #attention { @for item in &attention { (item) } }
                }
            }
            section {
                h2 { "All syncs" }
                div.table-wrap {
                    table #syncs {
                        thead { tr {
                            th { "Sync" } th { "Schedule" } th { "Next run" } th { "Last run" }
                            th.num { "Read" } th.num { "Added" } th.num { "Updated" } th.num { "Deleted" }
                            th.num { "Rejected" } th { "Records per run" }
                        } }
                        tbody {
                            @for row in &rows { (overview_row(row)) }
                        }
                    }
                }
            }
        }
    };
    layout("Syncs", body).into_response()
}

fn attention_items(row: &SyncRow) -> Vec<Markup> {
    let link = format!("/ui/syncs/{}", row.name);
    let mut items = Vec::new();
    if row.failing() {
        let error = row
            .runs
            .iter()
            .find(|r| r.status != RunStatus::Running)
            .and_then(|r| r.error.clone())
            .unwrap_or_default();
        items.push(html! {
            li.failing data-sync=(row.name) {
                a href=(link) { (row.name) } " is failing"
                @if row.runtime.consecutive_failures > 1 { " (" (row.runtime.consecutive_failures) " runs in a row)" }
                @if !error.is_empty() { ": " span.error { (error) } }
            }
        });
    }
    if row.held > 0 {
        items.push(html! { li.held data-sync=(row.name) { a href=(link) { (row.name) } ": " (row.held) " held deletes wait for approval" } });
    }
    if row.conflicts > 0 {
        items.push(html! { li.conflicts data-sync=(row.name) { a href=(link) { (row.name) } ": " (row.conflicts) " open conflicts" } });
    }
    if row.rejected > 0 {
        items.push(html! { li.rejected data-sync=(row.name) { a href=(link) { (row.name) } ": " (row.rejected) " rejected records" } });
    }
    items
}

fn overview_row(row: &SyncRow) -> Markup {
    // The last run that ended: a run in progress shows in the next-run column.
    let last = row.runs.iter().find(|r| r.status != RunStatus::Running);
    let metrics = last.map(|r| r.metrics).unwrap_or_default();
    let points: Vec<Point> = row
        .runs
        .iter()
        .rev()
        .map(|r| Point {
            label: format!("run {}", r.id),
            values: vec![r.metrics.read],
        })
        .collect();
    html! {
        tr data-sync=(row.name) class=(if row.failing() { "failing" } else { "" }) {
            td data-label="Sync" {
                a href=(format!("/ui/syncs/{}", row.name)) { (row.name) }
                @if !row.enabled { " " span.badge.disabled { "disabled" } }
                @if row.failing() { " " span.badge.failed { "failing" } }
            }
            td data-label="Schedule" { (row.schedule.as_deref().unwrap_or("not scheduled")) }
            td data-label="Next run" {
                @if let Some(running) = &row.runtime.running {
                    span.badge.running { "running" } " since " (time(Some(&running.since.to_rfc3339())))
                } @else {
                    (time(row.runtime.next_run.map(|t| t.to_rfc3339()).as_deref()))
                }
            }
            td data-label="Last run" {
                @if let Some(run) = last {
                    (status_badge(run.status)) " " (time(run.finished_at.as_deref().or(Some(&run.started_at))))
                } @else { span.muted { "never" } }
            }
            td.num data-label="Read" { (metrics.read) }
            td.num data-label="Added" { (metrics.added) }
            td.num data-label="Updated" { (metrics.updated) }
            td.num data-label="Deleted" { (metrics.deleted) }
            td.num data-label="Rejected" { (metrics.rejected) }
            td.chart-cell data-label="Records per run" {
                (charts::bars(&format!("records read per run of {}", row.name), &["read"], &points, true))
            }
        }
    }
}

/// A sync's page: its runs, charts, queues and config.
pub(crate) async fn sync_page(
    State(web): State<Arc<Web>>,
    Extension(actor): Extension<Actor>,
    Path(name): Path<String>,
) -> Response {
    let config = web.shared.config();
    let Some(sync) = config.sync(&name) else {
        return error_page(
            StatusCode::NOT_FOUND,
            &format!("There is no sync named `{name}`."),
        );
    };
    match sync_details(&web, &config, sync).await {
        Ok(details) => {
            let csrf = web.gate.csrf(&actor);
            layout(&name, render_sync(&config, sync, &details, &csrf)).into_response()
        }
        Err(e) => state_error(&web, e),
    }
}

struct SyncDetails {
    row: SyncRow,
    exit_details: HashMap<i64, String>,
    deletes: PendingDeletes,
    rejects: Vec<RejectedRecord>,
    conflicts: Vec<Conflict>,
    actions: Vec<Action>,
}

async fn sync_details(
    web: &Web,
    config: &Config,
    sync: &lockstep_config::Sync,
) -> Result<SyncDetails, lockstep_state::StateError> {
    let state = &web.shared.state;
    let name = sync.name();
    let conflicts = state.open_conflict_counts().await?;
    let row = sync_row(web, sync, &conflicts, SYNC_RUNS).await?;
    let mut exit_details = HashMap::new();
    for run in row
        .runs
        .iter()
        .filter(|r| matches!(r.status, RunStatus::Failed | RunStatus::Abandoned))
    {
        if let Some(detail) = state.run_exit_detail(run.id).await? {
            exit_details.insert(run.id, config.secrets.redact(&detail));
        }
    }
    Ok(SyncDetails {
        deletes: state.pending_deletes(name, LISTED).await?,
        rejects: state
            .rejected(&RejectedFilter {
                sync: Some(name.to_owned()),
                pending_only: true,
                limit: Some(LISTED),
                ..Default::default()
            })
            .await?,
        conflicts: state
            .conflicts(&ConflictFilter {
                sync: Some(name.to_owned()),
                statuses: vec![ConflictStatus::Open, ConflictStatus::Resolved],
                limit: LISTED,
            })
            .await?,
        actions: state.actions(Some(name), 20).await?,
        row,
        exit_details,
    })
}

/// A hidden CSRF field and a confirm-first submit button: the action's first POST answers
/// with a confirmation page.
fn action_form(action: &str, csrf: &str, label: &str, extra: Markup) -> Markup {
    html! {
        form.action method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf);
            (extra)
            button type="submit" { (label) }
        }
    }
}

fn render_sync(
    config: &Config,
    sync: &lockstep_config::Sync,
    d: &SyncDetails,
    csrf: &str,
) -> Markup {
    let name = sync.name();
    let redact = |s: &str| config.secrets.redact(s);
    let oldest_first: Vec<&RunSummary> = d.row.runs.iter().rev().collect();
    let counts: Vec<Point> = oldest_first
        .iter()
        .map(|r| Point {
            label: format!("run {}", r.id),
            values: vec![
                r.metrics.read,
                r.metrics.added,
                r.metrics.updated,
                r.metrics.deleted,
            ],
        })
        .collect();
    let durations: Vec<Point> = oldest_first
        .iter()
        .map(|r| Point {
            label: format!("run {}", r.id),
            values: vec![u64::try_from(r.duration_ms.unwrap_or(0)).unwrap_or(0)],
        })
        .collect();
    let base = format!("/ui/syncs/{name}");
    html! {
        main #live data-live="sync" data-sync=(name) {
            p.crumbs { a href="/ui" { "Syncs" } " › " (name) }
            h1 { (name)
                @if d.row.failing() { " " span.badge.failed { "failing" } }
                @if d.row.runtime.running.is_some() { " " span.badge.running { "running" } }
            }
            p {
                (d.row.schedule.as_deref().unwrap_or("not scheduled"))
                @if let Some(next) = d.row.runtime.next_run { " · next run " (time(Some(&next.to_rfc3339()))) }
                @if d.row.runtime.consecutive_failures > 0 { " · " (d.row.runtime.consecutive_failures) " failed runs in a row" }
            }
            section.charts {
                div {
                    h2 { "Records per run" }
                    (charts::bars(&format!("read, added, updated and deleted per run of {name}"), &["read", "added", "updated", "deleted"], &counts, false))
                }
                div {
                    h2 { "Duration per run (ms)" }
                    (charts::bars(&format!("duration in milliseconds per run of {name}"), &["duration"], &durations, false))
                }
            }
            section #deletes {
                h2 { "Held deletes" }
                @if d.deletes.total() == 0 {
                    p.muted { "No deletes wait." }
                } @else {
                    p { (d.deletes.held) " held, " (d.deletes.approved) " approved (the next run applies them), " (d.deletes.pending) " pending" }
                    p.keys { "Keys" @if (d.deletes.sample.len() as u64) < d.deletes.total() { " (first " (d.deletes.sample.len()) ")" } ": "
                        code { (redact(&d.deletes.sample.join(", "))) } }
                    @if d.deletes.held > 0 {
                        div.buttons {
                            (action_form(&format!("{base}/deletes/approve"), csrf, &format!("Approve {} held deletes", d.deletes.held), html!{}))
                            (action_form(&format!("{base}/deletes/discard"), csrf, "Discard them (keep the records)", html!{}))
                        }
                    }
                }
            }
            section #conflicts {
                h2 { "Conflicts" }
                @if d.conflicts.is_empty() {
                    p.muted { "No conflicts wait." }
                } @else {
                    div.table-wrap { table {
                        thead { tr { th { "Id" } th { "Key" } th { "Fields" } th { "Status" } th { "Found" } } }
                        tbody { @for c in &d.conflicts {
                            tr {
                                td data-label="Id" { a href=(format!("/ui/conflicts/{}", c.id)) { (c.id) } }
                                td data-label="Key" { code { (redact(&c.key)) } }
                                td data-label="Fields" { (c.fields.join(", ")) }
                                td data-label="Status" { (c.status.to_string()) }
                                td data-label="Found" { (time(Some(&c.created_at))) }
                            }
                        } }
                    } }
                }
            }
            section #rejects {
                h2 { "Rejected records" }
                @if d.rejects.is_empty() {
                    p.muted { "No rejected records wait." }
                } @else {
                    p { (d.row.rejected) " rejected records wait for a retry" @if d.rejects.len() < d.row.rejected { " (the newest " (d.rejects.len()) " below)" } "." }
                    (action_form(&format!("{base}/rejects/retry"), csrf, "Retry them", html!{}))
                    div.table-wrap { table {
                        thead { tr { th { "Id" } th { "Run" } th { "Key" } th { "Field" } th { "Reason" } } }
                        tbody { @for r in &d.rejects {
                            tr {
                                td data-label="Id" { (r.id) }
                                td data-label="Run" { (r.run) }
                                td data-label="Key" { code { (redact(r.key.as_deref().unwrap_or(""))) } }
                                td data-label="Field" { (r.field.as_deref().unwrap_or("")) }
                                td data-label="Reason" { (redact(&r.reason)) }
                            }
                        } }
                    } }
                }
            }
            section #runs {
                h2 { "Runs" }
                div.table-wrap { table {
                    thead { tr {
                        th { "Run" } th { "Status" } th { "Started" } th { "Duration" }
                        th.num { "Read" } th.num { "Added" } th.num { "Updated" } th.num { "Unchanged" } th.num { "Deleted" } th.num { "Rejected" }
                        th { "Error" }
                    } }
                    tbody { @for r in &d.row.runs {
                        tr data-run=(r.id) class=(r.status.as_str()) {
                            td data-label="Run" { (r.id) @if r.kind != "sync" { " (" (r.kind) ")" } }
                            td data-label="Status" { (status_badge(r.status)) }
                            td data-label="Started" { (time(Some(&r.started_at))) }
                            td data-label="Duration" { (duration(r.duration_ms)) }
                            td.num data-label="Read" { (r.metrics.read) }
                            td.num data-label="Added" { (r.metrics.added) }
                            td.num data-label="Updated" { (r.metrics.updated) }
                            td.num data-label="Unchanged" { (r.metrics.unchanged) }
                            td.num data-label="Deleted" { (r.metrics.deleted) }
                            td.num data-label="Rejected" { (r.metrics.rejected) }
                            td data-label="Error" {
                                @if let Some(e) = &r.error { span.error { (redact(e)) } }
                                @if let Some(detail) = d.exit_details.get(&r.id) { pre.exit { (detail) } }
                            }
                        }
                    } }
                } }
            }
            section #actions {
                h2 { "Actions taken" }
                @if d.actions.is_empty() { p.muted { "None yet." } } @else {
                    ul { @for a in &d.actions {
                        li { (time(Some(&a.at))) " · " b { (a.actor) } " · " (a.action) ": " (a.detail) }
                    } }
                }
            }
            section #config {
                h2 { "Config, as the daemon runs it" }
                p.muted { "Secrets are redacted; settings ending in _env name environment variables." }
                @for connection in [&sync.spec.source.connection, &sync.spec.destination.connection] {
                    @if let Some(c) = config.connections.get(connection.as_str()) {
                        h3 { "Connection " (c.name) " (" (c.connector) ")" }
                        pre { (redacted_json(config, &c.config)) }
                    }
                }
                h3 { "Sync" }
                pre { (redact(&format!("{:#?}", sync.spec))) }
                h3 { "Schedule and retries" }
                pre { (redact(&format!("enabled: {}\n{:#?}\n{:#?}", sync.enabled, sync.schedule, sync.retry))) }
            }
        }
    }
}

/// Whether a config key holds a secret by its name (a password written inline, say).
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.ends_with("_env")
        && [
            "password",
            "secret",
            "token",
            "api_key",
            "apikey",
            "credential",
            "private_key",
        ]
        .iter()
        .any(|s| key.contains(s))
}

/// A connection's config as pretty JSON, with values from the environment and values of
/// secret-looking keys replaced by `***`.
pub(crate) fn redacted_json(config: &Config, value: &Value) -> String {
    fn walk(value: &Value) -> Value {
        match value {
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        let v = if secret_key(k) && !v.is_null() {
                            Value::String(lockstep_config::REDACTED.into())
                        } else {
                            walk(v)
                        };
                        (k.clone(), v)
                    })
                    .collect(),
            ),
            Value::Array(items) => Value::Array(items.iter().map(walk).collect()),
            // A URL's password (`postgres://user:pw@host`) goes too.
            Value::String(s) if s.contains("://") => Value::String(lockstep_state::redact_url(s)),
            other => other.clone(),
        }
    }
    let text = serde_json::to_string_pretty(&walk(value)).unwrap_or_default();
    config.secrets.redact(&text)
}

/// A conflict's page: base, a and b side by side, and the forms that decide it.
pub(crate) async fn conflict_page(
    State(web): State<Arc<Web>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
) -> Response {
    let conflict = match web.shared.state.conflict(id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("There is no conflict {id}."),
            )
        }
        Err(e) => return state_error(&web, e),
    };
    let config = web.shared.config();
    let redact = |s: &str| config.secrets.redact(s);
    let csrf = web.gate.csrf(&actor);
    let mut fields: Vec<&String> = [
        &conflict.base,
        &conflict.a,
        &conflict.b,
        &conflict.resolution,
    ]
    .into_iter()
    .flatten()
    .flat_map(|m| m.keys())
    .collect();
    fields.sort();
    fields.dedup();
    let cell = |m: &Option<serde_json::Map<String, Value>>, missing: &str, f: &str| match m {
        None => missing.to_owned(),
        Some(m) => m.get(f).map_or(String::new(), Value::to_string),
    };
    let action = format!("/ui/conflicts/{id}/resolve");
    let body = html! {
        main #live data-live="conflict" {
            p.crumbs { a href="/ui" { "Syncs" } " › " a href=(format!("/ui/syncs/{}", conflict.sync)) { (conflict.sync) } " › conflict " (id) }
            h1 { "Conflict " (id) }
            p { "Key " code { (redact(&conflict.key)) } ", found by run " (conflict.run) " at " (time(Some(&conflict.created_at)))
                ". Status " b { (conflict.status.to_string()) } ", policy " (conflict.policy) ", decision " (conflict.decision)
                @if let (Some(by), Some(at)) = (&conflict.resolved_by, &conflict.resolved_at) { ", resolved by " (by) " at " (time(Some(at))) }
                "." }
            div.table-wrap { table #fields {
                thead { tr { th { "Field" } th { "Base" } th { "A" } th { "B" } th { "Resolution" } } }
                tbody { @for f in &fields {
                    tr class=(if conflict.fields.contains(f) { "differs" } else { "" }) {
                        td data-label="Field" { (f) }
                        td data-label="Base" { code { (redact(&cell(&conflict.base, "(new)", f))) } }
                        td data-label="A" { code { (redact(&cell(&conflict.a, "(deleted)", f))) } }
                        td data-label="B" { code { (redact(&cell(&conflict.b, "(deleted)", f))) } }
                        td data-label="Resolution" { code { (redact(&cell(&conflict.resolution, "", f))) } }
                    }
                } }
            } }
            @if conflict.status == ConflictStatus::Open {
                h2 { "Decide" }
                div.buttons {
                    (action_form(&action, &csrf, "Take side a", html! { input type="hidden" name="take" value="a"; }))
                    (action_form(&action, &csrf, "Take side b", html! { input type="hidden" name="take" value="b"; }))
                }
                form.action.set method="post" action=(action) {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Start from side " select name="take" { option value="b" { "b" } option value="a" { "a" } } }
                    label { "and set field " select name="field" { @for f in &fields { option value=(f) { (f) } } } }
                    label { "to (JSON, or text) " input type="text" name="value" required; }
                    button type="submit" { "Set the field" }
                }
            }
        }
    };
    layout(&format!("Conflict {id}"), body).into_response()
}

/// The confirmation page of an action: what will happen, and the form that does it.
pub(crate) fn confirm_page(
    title: &str,
    question: &str,
    action: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    back: &str,
) -> Response {
    layout(
        title,
        html! {
            main.confirm {
                h1 { (title) }
                p #question { (question) }
                form method="post" action=(action) {
                    input type="hidden" name="csrf" value=(csrf);
                    input type="hidden" name="confirmed" value="yes";
                    @for (name, value) in fields { input type="hidden" name=(name) value=(value); }
                    button #confirm type="submit" { "Yes, do it" }
                    " "
                    a.cancel href=(back) { "Cancel" }
                }
            }
        },
    )
    .into_response()
}

/// The page after an action: what was done.
pub(crate) fn done_page(title: &str, message: &str, back: &str) -> Response {
    layout(
        title,
        html! {
            main.done {
                h1 { (title) }
                p #outcome { (message) }
                p { a href=(back) { "Back" } }
            }
        },
    )
    .into_response()
}
