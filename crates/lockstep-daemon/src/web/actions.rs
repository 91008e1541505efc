//! The status page's actions, each a POST form: approve or discard a sync's held deletes,
//! retry its rejected records, resolve a conflict by taking a side or setting a field.
//!
//! Every action goes the same way: the CSRF token is checked first (403 when missing or
//! wrong, before anything else is read), then the target is looked up (404), then a first
//! POST without `confirmed=yes` answers with a confirmation page, and the confirmed POST does
//! the action through the same state store calls as the CLI's `lockstep deletes`,
//! `rejects` and `conflicts` commands and records it in the action log with who and when.
//!
//! Invariants: nothing changes without a valid CSRF token and a confirmation; a retry of
//! rejected records runs in a `lockstep rejects retry` child process, never in the daemon
//! (which loads no plugin); error text is redacted before it is shown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use lockstep_state::{ConflictStatus, DeleteStatus, NewAction, TakeSide};
use serde_json::Value;

use super::auth::Actor;
use super::pages::{confirm_page, done_page, error_page, state_error};
use super::Web;

/// How long a retry of rejected records may take before the page gives up on it.
const RETRY_TIMEOUT: Duration = Duration::from_secs(600);

type Fields = HashMap<String, String>;

/// The refusal of a form without the right CSRF token.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        "Refused: the form's CSRF token is missing or wrong. Reload the page and try again.\n",
    )
        .into_response()
}

fn confirmed(form: &Fields) -> bool {
    form.get("confirmed").is_some_and(|v| v == "yes")
}

/// Checks the CSRF token and that the sync exists; the refusal to answer otherwise.
fn check(web: &Web, actor: &Actor, form: &Fields, sync: Option<&str>) -> Option<Response> {
    if !web
        .gate
        .csrf_ok(actor, form.get("csrf").map(String::as_str))
    {
        return Some(forbidden());
    }
    if let Some(sync) = sync {
        if web.shared.config().sync(sync).is_none() {
            return Some(error_page(
                StatusCode::NOT_FOUND,
                &format!("There is no sync named `{sync}`."),
            ));
        }
    }
    None
}

/// Records `action` in the action log; a failure to record is logged, the action stands.
async fn record(web: &Web, actor: &Actor, action: &str, sync: &str, detail: &str) {
    let entry = NewAction {
        actor: &actor.0,
        action,
        sync,
        detail,
    };
    match web.shared.state.record_action(&entry).await {
        Ok(_) => tracing::info!(actor = %actor.0, action, sync, "{detail}"),
        Err(e) => tracing::warn!(
            action,
            sync,
            "cannot record the action {action} ({detail}): {e}"
        ),
    }
}

pub(crate) async fn approve_deletes(
    State(web): State<Arc<Web>>,
    Extension(actor): Extension<Actor>,
    Path(sync): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    if let Some(refusal) = check(&web, &actor, &form, Some(&sync)) {
        return refusal;
    }
    let back = format!("/ui/syncs/{sync}");
    let state = &web.shared.state;
    if !confirmed(&form) {
        let held = match state.pending_deletes(&sync, 0).await {
            Ok(d) => d.held,
            Err(e) => return state_error(&web, e),
        };
        return confirm_page(
            "Approve held deletes",
            &format!(
                "Approve {held} held deletes of sync {sync}? Its next run deletes those records \
                 from the destination."
            ),
            &format!("{back}/deletes/approve"),
            &web.gate.csrf(&actor),
            &[],
            &back,
        );
    }
    let approved = match state
        .set_pending_delete_status(&sync, &[DeleteStatus::Held], DeleteStatus::Approved, None)
        .await
    {
        Ok(n) => n,
        Err(e) => return state_error(&web, e),
    };
    if approved == 0 {
        return done_page(
            "Nothing to approve",
            &format!("No held deletes for sync {sync}."),
            &back,
        );
    }
    let detail = format!("approved {approved} held deletes");
    record(&web, &actor, "deletes-approve", &sync, &detail).await;
    done_page(
        "Deletes approved",
        &format!("Approved {approved} held deletes of sync {sync}: its next run applies them."),
        &back,
    )
}

pub(crate) async fn discard_deletes(
    State(web): State<Arc<Web>>,
    Extension(actor): Extension<Actor>,
    Path(sync): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    if let Some(refusal) = check(&web, &actor, &form, Some(&sync)) {
        return refusal;
    }
    let back = format!("/ui/syncs/{sync}");
    let state = &web.shared.state;
    if !confirmed(&form) {
        let held = match state.pending_deletes(&sync, 0).await {
            Ok(d) => d.held,
            Err(e) => return state_error(&web, e),
        };
        return confirm_page(
            "Discard held deletes",
            &format!(
                "Discard {held} held deletes of sync {sync}? The records stay in the destination."
            ),
            &format!("{back}/deletes/discard"),
            &web.gate.csrf(&actor),
            &[],
            &back,
        );
    }
    let discarded = match state
        .discard_pending_deletes(&sync, DeleteStatus::Held)
        .await
    {
        Ok(n) => n,
        Err(e) => return state_error(&web, e),
    };
    if discarded == 0 {
        return done_page(
            "Nothing to discard",
            &format!("No held deletes for sync {sync}."),
            &back,
        );
    }
    let detail = format!("discarded {discarded} held deletes");
    record(&web, &actor, "deletes-discard", &sync, &detail).await;
    done_page(
        "Deletes discarded",
        &format!("Discarded {discarded} held deletes of sync {sync}: those records stay in the destination."),
        &back,
    )
}

pub(crate) async fn retry_rejects(
    State(web): State<Arc<Web>>,
    Extension(actor): Extension<Actor>,
    Path(sync): Path<String>,
    Form(form): Form<Fields>,
) -> Response {
    if let Some(refusal) = check(&web, &actor, &form, Some(&sync)) {
        return refusal;
    }
    let back = format!("/ui/syncs/{sync}");
    if !confirmed(&form) {
        return confirm_page(
            "Retry rejected records",
            &format!(
                "Retry the pending rejected records of sync {sync}? Each is read again from the \
                 source by its key and its current version written."
            ),
            &format!("{back}/rejects/retry"),
            &web.gate.csrf(&actor),
            &[],
            &back,
        );
    }
    let config = web.shared.config();
    let child = tokio::process::Command::new(&web.shared.worker_exe)
        .arg("--config")
        .arg(&config.path)
        .args(["rejects", "retry", &sync, "--output", "json"])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(RETRY_TIMEOUT, child).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("Cannot start `lockstep rejects retry`: {e}"),
            )
        }
        Err(_) => {
            return error_page(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "`lockstep rejects retry {sync}` did not finish within {}s",
                    RETRY_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let outcome: Option<Value> = serde_json::from_slice(&output.stdout).ok();
    let Some(outcome) = outcome else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        let message = config.secrets.redact(&format!(
            "`lockstep rejects retry {sync}` {}: {}",
            crate::supervisor::describe_status(&output.status),
            tail.join("\n")
        ));
        record(&web, &actor, "rejects-retry", &sync, "retry failed").await;
        web.shared.refresh_rejected(&sync).await;
        return error_page(StatusCode::BAD_GATEWAY, &message);
    };
    let count = |k: &str| match &outcome[k] {
        Value::Array(items) => items.len() as u64,
        v => v.as_u64().unwrap_or(0),
    };
    let detail = format!(
        "retried {} rejected records in run {}: {} succeeded, {} failed again, {} no longer in \
         the source",
        count("retried"),
        outcome["run_id"],
        count("succeeded"),
        count("failed"),
        count("gone")
    );
    record(&web, &actor, "rejects-retry", &sync, &detail).await;
    web.shared.refresh_rejected(&sync).await;
    done_page(
        "Rejected records retried",
        &config.secrets.redact(&detail),
        &back,
    )
}

pub(crate) async fn resolve_conflict(
    State(web): State<Arc<Web>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<i64>,
    Form(form): Form<Fields>,
) -> Response {
    if let Some(refusal) = check(&web, &actor, &form, None) {
        return refusal;
    }
    let state = &web.shared.state;
    let conflict = match state.conflict(id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                &format!("There is no conflict {id}."),
            )
        }
        Err(e) => return state_error(&web, e),
    };
    let back = format!("/ui/conflicts/{id}");
    if conflict.status != ConflictStatus::Open {
        return error_page(
            StatusCode::CONFLICT,
            &format!("Conflict {id} is {}, not open: only a conflict waiting for a person can be resolved.", conflict.status),
        );
    }
    let take = form.get("take").map(String::as_str).unwrap_or_default();
    let side = match take {
        "a" => TakeSide::A,
        "b" => TakeSide::B,
        _ => return error_page(StatusCode::BAD_REQUEST, "Say which side to take: a or b."),
    };
    let field = form.get("field").filter(|f| !f.is_empty());
    let text = form.get("value").map(String::as_str).unwrap_or_default();
    let value = serde_json::from_str::<Value>(text).unwrap_or_else(|_| Value::from(text));
    let set: Vec<(String, Value)> = field
        .map(|f| vec![(f.clone(), value.clone())])
        .unwrap_or_default();
    let by = format!("{} (status page)", actor.0);
    let resolution = match lockstep_state::decide(&conflict, Some(side), &set, by) {
        Ok(resolution) => resolution,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, &format!("{e}.")),
    };
    let question = match field {
        None => format!(
            "Resolve conflict {id} of sync {} by taking side {take}?",
            conflict.sync
        ),
        Some(field) => format!(
            "Resolve conflict {id} of sync {} by taking side {take} with {field} set to {value}?",
            conflict.sync
        ),
    };
    if !confirmed(&form) {
        let mut fields: Vec<(&str, &str)> = vec![("take", take)];
        if let Some(field) = field {
            fields.push(("field", field));
            fields.push((
                "value",
                form.get("value").map(String::as_str).unwrap_or_default(),
            ));
        }
        return confirm_page(
            "Resolve a conflict",
            &question,
            &format!("/ui/conflicts/{id}/resolve"),
            &web.gate.csrf(&actor),
            &fields,
            &back,
        );
    }
    let decision = resolution.decision.clone();
    if let Err(e) = state.resolve_conflict(id, &resolution).await {
        return state_error(&web, e);
    }
    record(
        &web,
        &actor,
        "conflict-resolve",
        &conflict.sync,
        &format!("resolved conflict {id} ({decision})"),
    )
    .await;
    web.shared.refresh_conflicts().await;
    done_page(
        "Conflict resolved",
        &format!(
            "Conflict {id} of sync {} resolved ({decision}); the sync's next run writes it to both sides.",
            conflict.sync
        ),
        &format!("/ui/syncs/{}", conflict.sync),
    )
}
