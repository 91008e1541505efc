//! The daemon's HTTP endpoint: `/healthz`, `/metrics` (Prometheus text format), `/api/syncs`
//! and `/api/runs` (JSON). Read-only; nothing here changes the daemon or the state store.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use lockstep_core::RunSummary;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::metrics::SyncGauge;
use crate::schedule::{human, Plan};
use crate::shared::{scheduled, Shared};

/// At most this many runs per `/api/runs` request.
const MAX_RUNS: usize = 1000;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/syncs", get(syncs))
        .route("/api/runs", get(runs))
        .with_state(shared)
}

async fn healthz(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "status": if shared.stopping() { "stopping" } else { "ok" },
        "started_at": shared.started_at.to_rfc3339(),
        "uptime_seconds": (Utc::now() - shared.started_at).num_seconds(),
    }))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    let config = shared.config();
    let mut gauges = Vec::with_capacity(config.syncs.len());
    for s in &config.syncs {
        // A cdc sync's slot, as its committed checkpoint last measured it.
        let cdc = if s.spec.mode == lockstep_core::SyncMode::Cdc {
            match shared.state.checkpoint(s.name()).await {
                Ok(checkpoint) => checkpoint
                    .as_ref()
                    .and_then(crate::cdc_slot::SlotStatus::from_checkpoint),
                Err(e) => {
                    tracing::warn!(
                        sync = s.name(),
                        "cannot read the checkpoint for /metrics: {e}"
                    );
                    None
                }
            }
        } else {
            None
        };
        gauges.push(SyncGauge {
            name: s.name().to_owned(),
            running: shared.runtime_of(s.name()).running.is_some(),
            cdc,
        });
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.render(&gauges),
    )
        .into_response()
}

async fn syncs(State(shared): State<Arc<Shared>>) -> Result<Json<Vec<Value>>, ApiError> {
    let config = shared.config();
    let scheduled: Vec<&str> = scheduled(&config).iter().map(|s| s.name()).collect();
    let mut out = Vec::with_capacity(config.syncs.len());
    for sync in &config.syncs {
        let name = sync.name();
        let runtime = shared.runtime_of(name);
        let last_run = shared.state.runs(Some(name), 1).await?.into_iter().next();
        let schedule = sync.schedule.as_ref().map(|s| {
            json!({
                "description": Plan::new(s).map(|p| p.describe().to_owned()).unwrap_or_default(),
                "timezone": s.timezone,
                "jitter": human(s.jitter),
                "catch_up": s.catch_up.as_str(),
                "timeout": s.timeout.map(human),
            })
        });
        out.push(json!({
            "name": name,
            "enabled": sync.enabled,
            "scheduled": scheduled.contains(&name),
            "schedule": schedule,
            "retry": {
                "max_attempts": sync.retry.max_attempts,
                "initial_backoff": human(sync.retry.initial_backoff),
                "max_backoff": human(sync.retry.max_backoff),
            },
            "next_run": runtime.next_run.map(|t| t.to_rfc3339()),
            "running": runtime.running,
            "consecutive_failures": runtime.consecutive_failures,
            "last_run": last_run,
        }));
    }
    Ok(Json(out))
}

#[derive(Deserialize)]
struct RunsQuery {
    sync: Option<String>,
    limit: Option<usize>,
}

/// A run with how its worker ended, when that was recorded.
#[derive(Serialize)]
struct RunView {
    #[serde(flatten)]
    run: RunSummary,
    exit_detail: Option<String>,
}

async fn runs(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<RunsQuery>,
) -> Result<Json<Vec<RunView>>, ApiError> {
    let limit = query.limit.unwrap_or(50).min(MAX_RUNS);
    let runs = shared.state.runs(query.sync.as_deref(), limit).await?;
    let mut out = Vec::with_capacity(runs.len());
    for run in runs {
        let exit_detail = shared.state.run_exit_detail(run.id).await?;
        out.push(RunView { run, exit_detail });
    }
    Ok(Json(out))
}

/// A state store failure, as a 503 with a JSON body.
struct ApiError(String);

impl From<lockstep_state::StateError> for ApiError {
    fn from(e: lockstep_state::StateError) -> Self {
        ApiError(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "error": self.0 })),
        )
            .into_response()
    }
}
