//! The status page's endpoints and actions, against a real axum server on a loopback port
//! and an in-memory state store: pages, charts, each action with its confirmation and its
//! record in the action log, and the refusals (no credentials, wrong credentials, a missing
//! or wrong CSRF token, no authentication on an address other than loopback).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lockstep_core::{RunMetrics, RunStatus};
use lockstep_state::{
    Conflict, ConflictStatus, DeleteOrigin, DeleteStatus, PendingDeleteChange, RunEnd, StateStore,
    TwoWayCommit,
};
use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::metrics::Metrics;
use crate::shared::Shared;

/// A value from the environment in the config: it must never reach a page.
const SECRET: &str = "pw-from-env-9f3c";
/// A password written inline in a connection config: hidden by its key's name.
const INLINE: &str = "inline-password-77";
/// The argon2id hash of `password`, as `argon2 SALT -id -e` would write it.
fn argon2_hash(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(b"lockstep-test-salt").unwrap();
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .unwrap()
        .to_string()
}

fn config_text(daemon: &str) -> String {
    format!(
        r#"
[daemon]
{daemon}

[connections.crm]
connector = "sqlite"
config = {{ path = "crm.db", password = "{INLINE}" }}

[connections.wh]
connector = "postgres"
config = {{ url = "postgres://sync:${{WEB_TEST_SECRET}}@db.internal/wh", password_env = "WH_PASSWORD" }}

[syncs.items]
source = "crm.items"
destination = "wh.items"
mode = "full"
[syncs.items.schedule]
every = "1h"

[syncs.contacts]
source = "crm.contacts"
destination = "wh.contacts"
mode = "full"
"#
    )
}

struct Daemon {
    base: String,
    shared: Arc<Shared>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// Starts the page's router on a loopback port, the daemon seemingly listening on `local`.
async fn start(daemon_section: &str, env: &[(&str, &str)], local: Option<SocketAddr>) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain([("WEB_TEST_SECRET".to_owned(), SECRET.to_owned())])
        .collect();
    let config = lockstep_config::parse(
        &config_text(daemon_section),
        &dir.path().join("lockstep.toml"),
        &|name| env.get(name).cloned(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let state: Arc<dyn StateStore> =
        Arc::from(lockstep_state::open("sqlite::memory:").await.unwrap());
    let (_stop, shutdown) = watch::channel(false);
    let retry = dir.path().join("fake-lockstep");
    std::fs::write(
        &retry,
        "#!/bin/sh\necho '{\"retried\":2,\"succeeded\":1,\"failed\":[[5,\"still bad\"]],\"gone\":[],\"run_id\":9}'\nexit 1\n",
    )
    .unwrap();
    make_executable(&retry);
    let shared = Arc::new(Shared {
        config: watch::channel(Arc::new(config)).0,
        state,
        metrics: Metrics::default(),
        runtime: Mutex::new(BTreeMap::new()),
        worker_exe: retry,
        kill_grace: Duration::from_secs(1),
        shutdown,
        http: reqwest::Client::new(),
        alert_tasks: Mutex::new(JoinSet::new()),
        started_at: Utc::now(),
    });
    let app = crate::web::router(
        shared.clone(),
        local.or(Some(SocketAddr::from(([127, 0, 0, 1], 9464)))),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Daemon {
        base: format!("http://{addr}"),
        shared,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        _dir: dir,
    }
}

fn make_executable(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

impl Daemon {
    async fn get(&self, path: &str) -> (StatusCode, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> (StatusCode, String) {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .form(form)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    /// The CSRF token in a page's forms.
    async fn csrf(&self, path: &str) -> String {
        let (status, page) = self.get(path).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        csrf_of(&page)
    }

    async fn finished_run(
        &self,
        sync: &str,
        status: RunStatus,
        read: u64,
        error: Option<&str>,
    ) -> i64 {
        let state = &self.shared.state;
        let run = state.start_run(sync, None).await.unwrap();
        let mut end = RunEnd::new(
            status,
            RunMetrics {
                read,
                added: read / 2,
                updated: read / 4,
                ..Default::default()
            },
        );
        end.error = error.map(str::to_owned);
        if error.is_some() {
            end.exit_detail = Some(format!(
                "worker was killed by signal SIGSEGV; stderr: {SECRET}"
            ));
        }
        state.finish_run(run, &end).await.unwrap();
        run
    }

    async fn reject(&self, sync: &str, reason: &str) {
        let state = &self.shared.state;
        let run = state.start_run(sync, None).await.unwrap();
        let record = lockstep_state::RejectedRecord {
            id: 0,
            sync: String::new(),
            run: 0,
            key: Some("[42]".into()),
            field: Some("email".into()),
            reason: reason.into(),
            raw: json!({"id": 42, "email": "not an address"}),
            created_at: None,
            retried: None,
        };
        state
            .commit_batch(&lockstep_state::BatchCommit {
                sync,
                run,
                lease_token: None,
                ledger_upserts: &[],
                ledger_keys_new: false,
                ledger_deletes: &[],
                checkpoint: None,
                metrics: &RunMetrics::default(),
                rejected: &[record],
            })
            .await
            .unwrap();
        state
            .finish_run(
                run,
                &RunEnd::new(RunStatus::Succeeded, RunMetrics::default()),
            )
            .await
            .unwrap();
    }

    async fn hold_deletes(&self, sync: &str, keys: &[&str]) {
        let state = &self.shared.state;
        let run = state.start_run(sync, None).await.unwrap();
        let keys: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        state
            .change_pending_deletes(&PendingDeleteChange {
                sync,
                run,
                lease_token: None,
                origin: DeleteOrigin::Reconcile,
                add: &keys,
                cancel: &[],
            })
            .await
            .unwrap();
        state
            .set_pending_delete_status(sync, &[DeleteStatus::Pending], DeleteStatus::Held, None)
            .await
            .unwrap();
        state
            .finish_run(run, &RunEnd::new(RunStatus::Held, RunMetrics::default()))
            .await
            .unwrap();
    }

    async fn open_conflict(&self, sync: &str) -> i64 {
        let state = &self.shared.state;
        let run = state.start_run(sync, None).await.unwrap();
        let map = |v: serde_json::Value| v.as_object().cloned();
        let conflict = Conflict {
            id: 0,
            sync: sync.into(),
            run,
            key: "[7]".into(),
            base: map(json!({"email": "old@example.com", "name": "Ann"})),
            a: map(json!({"email": "a@example.com", "name": "Ann"})),
            b: map(json!({"email": "b@example.com", "name": "<script>alert(1)</script>"})),
            fields: vec!["email".into(), "name".into()],
            policy: "manual".into(),
            decision: "queued".into(),
            resolution: None,
            resolution_deletes: false,
            status: ConflictStatus::Open,
            created_at: String::new(),
            resolved_by: None,
            resolved_at: None,
        };
        state
            .commit_two_way(&TwoWayCommit {
                sync,
                run,
                lease_token: None,
                metrics: &RunMetrics::default(),
                upserts: &[],
                deletes: &[],
                conflicts: &[conflict],
                applied: &[],
                checkpoint: None,
            })
            .await
            .unwrap();
        state
            .finish_run(
                run,
                &RunEnd::new(RunStatus::Succeeded, RunMetrics::default()),
            )
            .await
            .unwrap();
        state
            .conflicts(&lockstep_state::ConflictFilter {
                sync: Some(sync.into()),
                ..Default::default()
            })
            .await
            .unwrap()[0]
            .id
    }
}

fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF field in {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn assert_no_secret(page: &str) {
    assert!(
        !page.contains(SECRET),
        "a secret from the environment leaked: {page}"
    );
    assert!(!page.contains(INLINE), "an inline password leaked: {page}");
}

#[tokio::test]
async fn the_overview_lists_every_sync_with_counts_chart_and_what_needs_attention() {
    let d = start("", &[], None).await;
    d.hold_deletes("items", &["[1]", "[2]"]).await;
    d.open_conflict("contacts").await;
    for read in [100, 110, 3] {
        d.finished_run("items", RunStatus::Succeeded, read, None)
            .await;
    }
    d.finished_run(
        "contacts",
        RunStatus::Failed,
        0,
        Some("the source refused the login"),
    )
    .await;

    let (status, page) = d.get("/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    assert!(page.contains("<tr data-sync=\"items\""), "{page}");
    assert!(
        page.contains("<tr data-sync=\"contacts\" class=\"failing\""),
        "{page}"
    );
    assert!(page.contains("every 1h"), "{page}");
    assert!(page.contains("not scheduled"), "{page}");
    // The last run of items read 3 records, added 1 and updated 0; its bar is marked low.
    assert!(
        page.contains("<td class=\"num\" data-label=\"Read\">3</td>"),
        "{page}"
    );
    assert!(page.contains("class=\"s0 low\""), "{page}");
    assert!(page.contains("the source refused the login"), "{page}");
    assert!(page.contains("2 held deletes wait for approval"), "{page}");
    assert!(page.contains("1 open conflicts"), "{page}");
    assert!(page.contains("href=\"/ui/assets/style.css\""), "{page}");
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "nothing from elsewhere: {page}"
    );
    assert_no_secret(&page);

    let (status, css) = d.get("/ui/assets/style.css").await;
    assert_eq!(status, StatusCode::OK);
    assert!(css.contains("@media (max-width: 700px)"));
    let (status, js) = d.get("/ui/assets/live.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(js.contains("X-Lockstep-Live"));
    let response = d.client.get(format!("{}/ui", d.base)).send().await.unwrap();
    let csp = response.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    let (status, _) = d.get("/").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_sync_page_shows_runs_charts_exit_details_redacted_config_and_queues() {
    let d = start("", &[], None).await;
    d.finished_run("items", RunStatus::Succeeded, 40, None)
        .await;
    d.reject("items", "`email` is not an email address").await;
    let failed = d
        .finished_run("items", RunStatus::Failed, 0, Some("boom"))
        .await;
    d.hold_deletes("items", &["[1]"]).await;
    let (status, page) = d.get("/ui/syncs/items").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains(&format!("<tr data-run=\"{failed}\" class=\"failed\"")),
        "{page}"
    );
    assert!(
        page.contains("worker was killed by signal SIGSEGV"),
        "{page}"
    );
    assert!(
        page.contains("read, added, updated and deleted per run of items"),
        "{page}"
    );
    assert!(page.contains("duration in milliseconds per run"), "{page}");
    assert!(page.contains("Approve 1 held deletes"), "{page}");
    assert!(
        page.contains("1 rejected records wait for a retry"),
        "{page}"
    );
    assert!(page.contains("`email` is not an email address"), "{page}");
    assert!(
        page.contains("action=\"/ui/syncs/items/rejects/retry\""),
        "{page}"
    );
    let (_, overview) = d.get("/ui").await;
    assert!(
        overview.contains("items</a>: 1 rejected records"),
        "{overview}"
    );
    assert!(
        page.contains("password_env"),
        "the names of variables are shown: {page}"
    );
    assert!(page.contains("WH_PASSWORD"), "{page}");
    assert!(page.contains("db.internal/wh"), "{page}");
    assert_no_secret(&page);

    let (status, page) = d.get("/ui/syncs/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(page.contains("There is no sync named `nope`."));
}

#[tokio::test]
async fn approving_held_deletes_asks_first_then_approves_and_records_who_and_when() {
    let d = start("", &[], None).await;
    d.hold_deletes("items", &["[1]", "[2]", "[3]"]).await;
    let csrf = d.csrf("/ui/syncs/items").await;

    let (status, page) = d
        .post("/ui/syncs/items/deletes/approve", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Approve 3 held deletes of sync items?"),
        "{page}"
    );
    assert!(page.contains("name=\"confirmed\" value=\"yes\""), "{page}");
    let waiting = d.shared.state.pending_deletes("items", 0).await.unwrap();
    assert_eq!(waiting.held, 3, "nothing changes before the confirmation");

    let (status, page) = d
        .post(
            "/ui/syncs/items/deletes/approve",
            &[("csrf", &csrf), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("Approved 3 held deletes of sync items"),
        "{page}"
    );
    let waiting = d.shared.state.pending_deletes("items", 0).await.unwrap();
    assert_eq!((waiting.held, waiting.approved), (0, 3));
    let actions = d.shared.state.actions(Some("items"), 10).await.unwrap();
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].actor, "local");
    assert_eq!(actions[0].action, "deletes-approve");
    assert_eq!(actions[0].detail, "approved 3 held deletes");
    assert!(!actions[0].at.is_empty());
    let (_, page) = d.get("/ui/syncs/items").await;
    assert!(
        page.contains("deletes-approve: approved 3 held deletes"),
        "{page}"
    );
}

#[tokio::test]
async fn discarding_held_deletes_forgets_them() {
    let d = start("", &[], None).await;
    d.hold_deletes("items", &["[1]", "[2]"]).await;
    let csrf = d.csrf("/ui/syncs/items").await;
    let (status, page) = d
        .post(
            "/ui/syncs/items/deletes/discard",
            &[("csrf", &csrf), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Discarded 2 held deletes"), "{page}");
    assert_eq!(
        d.shared
            .state
            .pending_deletes("items", 0)
            .await
            .unwrap()
            .total(),
        0
    );
    let actions = d.shared.state.actions(Some("items"), 10).await.unwrap();
    assert_eq!(actions[0].action, "deletes-discard");
}

#[tokio::test]
async fn every_action_is_refused_without_the_right_csrf_token() {
    let d = start("", &[], None).await;
    d.hold_deletes("items", &["[1]"]).await;
    let id = d.open_conflict("contacts").await;
    let csrf = d.csrf("/ui/syncs/items").await;
    let forged = format!("{}x", &csrf[..csrf.len() - 1]);
    let resolve = format!("/ui/conflicts/{id}/resolve");
    for path in [
        "/ui/syncs/items/deletes/approve",
        "/ui/syncs/items/deletes/discard",
        "/ui/syncs/items/rejects/retry",
        resolve.as_str(),
    ] {
        for form in [
            vec![("confirmed", "yes"), ("take", "a")],
            vec![
                ("csrf", forged.as_str()),
                ("confirmed", "yes"),
                ("take", "a"),
            ],
            vec![("csrf", ""), ("confirmed", "yes"), ("take", "a")],
        ] {
            let (status, body) = d.post(path, &form).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{path} {form:?}: {body}");
            assert!(body.contains("CSRF token is missing or wrong"), "{body}");
        }
        // GET does not act either.
        let response = d
            .client
            .get(format!("{}{path}", d.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
    }
    assert_eq!(
        d.shared
            .state
            .pending_deletes("items", 0)
            .await
            .unwrap()
            .held,
        1
    );
    let conflict = d.shared.state.conflict(id).await.unwrap().unwrap();
    assert_eq!(conflict.status, ConflictStatus::Open);
    assert!(d.shared.state.actions(None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_conflict_is_resolved_by_taking_a_side_or_setting_a_field() {
    let d = start("", &[], None).await;
    let first = d.open_conflict("contacts").await;
    let (status, page) = d.get(&format!("/ui/conflicts/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "values are escaped: {page}"
    );
    assert!(!page.contains("<script>alert(1)"), "{page}");
    let csrf = csrf_of(&page);
    let path = format!("/ui/conflicts/{first}/resolve");

    let (status, page) = d
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("take", "a"),
                ("field", "email"),
                ("value", "x@example.com"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("with email set to &quot;x@example.com&quot;?"),
        "{page}"
    );
    let (status, page) = d
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("take", "a"),
                ("field", "email"),
                ("value", "x@example.com"),
                ("confirmed", "yes"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let conflict = d.shared.state.conflict(first).await.unwrap().unwrap();
    assert_eq!(conflict.status, ConflictStatus::Resolved);
    assert_eq!(conflict.decision, "set");
    let resolution = conflict.resolution.unwrap();
    assert_eq!(resolution["email"], "x@example.com");
    assert_eq!(resolution["name"], "Ann");
    assert_eq!(conflict.resolved_by.as_deref(), Some("local (status page)"));
    assert!(conflict.resolved_at.is_some());

    // A resolved conflict cannot be resolved again.
    let (status, _) = d
        .post(
            &path,
            &[("csrf", &csrf), ("take", "b"), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let second = d.open_conflict("contacts").await;
    let path = format!("/ui/conflicts/{second}/resolve");
    let (status, _) = d
        .post(
            &path,
            &[("csrf", &csrf), ("take", "c"), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = d
        .post(
            &path,
            &[
                ("csrf", &csrf),
                ("take", "b"),
                ("field", "nope"),
                ("value", "1"),
                ("confirmed", "yes"),
            ],
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, page) = d
        .post(
            &path,
            &[("csrf", &csrf), ("take", "b"), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let conflict = d.shared.state.conflict(second).await.unwrap().unwrap();
    assert_eq!(conflict.decision, "take b");
    let actions = d.shared.state.actions(Some("contacts"), 10).await.unwrap();
    assert_eq!(actions.len(), 2);
    assert!(actions.iter().all(|a| a.action == "conflict-resolve"));
    let (status, _) = d.get("/ui/conflicts/9999").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn retrying_rejects_runs_the_cli_in_a_child_and_records_its_outcome() {
    let d = start("", &[], None).await;
    // A form on the page to take the CSRF token from.
    d.hold_deletes("items", &["[1]"]).await;
    let csrf = d.csrf("/ui/syncs/items").await;
    let (status, page) = d
        .post("/ui/syncs/items/rejects/retry", &[("csrf", &csrf)])
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        page.contains("Retry the pending rejected records of sync items?"),
        "{page}"
    );
    let (status, page) = d
        .post(
            "/ui/syncs/items/rejects/retry",
            &[("csrf", &csrf), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(
        page.contains("retried 2 rejected records in run 9: 1 succeeded, 1 failed again, 0 no longer in the source"),
        "{page}"
    );
    let actions = d.shared.state.actions(Some("items"), 10).await.unwrap();
    assert_eq!(actions[0].action, "rejects-retry");
    let (status, _) = d
        .post(
            "/ui/syncs/nope/rejects/retry",
            &[("csrf", &csrf), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn without_authentication_the_page_is_off_on_an_address_other_than_loopback() {
    let d = start("", &[], Some(SocketAddr::from(([0, 0, 0, 0], 9464)))).await;
    for path in ["/ui", "/ui/syncs/items"] {
        let (status, body) = d.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(body.contains("web_token_env"), "{body}");
    }
    let (status, _) = d
        .post("/ui/syncs/items/deletes/approve", &[("confirmed", "yes")])
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_bearer_token_or_its_session_cookie_lets_in_and_nothing_else_does() {
    // The gate reads the variable from the process environment; the name is this test's.
    std::env::set_var("WEB_TEST_TOKEN_B", "t0ken-b");
    let d = start(
        "web_token_env = \"WEB_TEST_TOKEN_B\"",
        &[],
        Some(SocketAddr::from(([0, 0, 0, 0], 9464))),
    )
    .await;
    d.hold_deletes("items", &["[1]"]).await;
    let (status, page) = d.get("/ui").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("action=\"/ui/login\""), "{page}");
    let wrong = d
        .client
        .get(format!("{}/ui", d.base))
        .bearer_auth("t0ken-c")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let right = d
        .client
        .get(format!("{}/ui/syncs/items", d.base))
        .bearer_auth("t0ken-b")
        .send()
        .await
        .unwrap();
    assert_eq!(right.status(), StatusCode::OK);
    let page = right.text().await.unwrap();
    assert!(!page.contains("t0ken-b"), "the token is never shown");
    let csrf = csrf_of(&page);

    // An action without credentials is refused even with a valid CSRF token.
    let (status, _) = d
        .post(
            "/ui/syncs/items/deletes/approve",
            &[("csrf", &csrf), ("confirmed", "yes")],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The login form exchanges the token for a session cookie that is not the token.
    let (status, _) = d.post("/ui/login", &[("token", "nope")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let login = d
        .client
        .post(format!("{}/ui/login", d.base))
        .form(&[("token", "t0ken-b")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("t0ken-b"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = d
        .client
        .get(format!("{}/ui", d.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(with_cookie.status(), StatusCode::OK);
    let forged = d
        .client
        .get(format!("{}/ui", d.base))
        .header("cookie", "lockstep_session=AAAA")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_unset_token_variable_stops_the_page_from_starting() {
    let config = lockstep_config::parse(
        &config_text("web_token_env = \"WEB_TEST_TOKEN_UNSET_Q\""),
        &PathBuf::from("/tmp/lockstep.toml"),
        &|name| (name == "WEB_TEST_SECRET").then(|| SECRET.to_owned()),
    )
    .unwrap();
    let error = match super::auth::Gate::new(&config.daemon.web_auth, None) {
        Ok(_) => panic!("the gate started without its token"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("WEB_TEST_TOKEN_UNSET_Q"), "{error}");
    assert!(error.contains("export it"), "{error}");
}

#[tokio::test]
async fn basic_auth_checks_the_argon2_hash_and_names_the_actor() {
    let d = start(
        &format!(
            "web_user = \"ops\"\nweb_password_hash = \"{}\"",
            argon2_hash("correct horse")
        ),
        &[],
        Some(SocketAddr::from(([10, 0, 0, 1], 9464))),
    )
    .await;
    d.hold_deletes("items", &["[1]"]).await;
    let response = d.client.get(format!("{}/ui", d.base)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    for (user, password) in [("ops", "wrong"), ("root", "correct horse")] {
        let response = d
            .client
            .get(format!("{}/ui", d.base))
            .basic_auth(user, Some(password))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "{user}:{password}"
        );
    }
    let page = d
        .client
        .get(format!("{}/ui/syncs/items", d.base))
        .basic_auth("ops", Some("correct horse"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let csrf = csrf_of(&page.text().await.unwrap());
    let done = d
        .client
        .post(format!("{}/ui/syncs/items/deletes/approve", d.base))
        .basic_auth("ops", Some("correct horse"))
        .form(&[("csrf", csrf.as_str()), ("confirmed", "yes")])
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    let actions = d.shared.state.actions(Some("items"), 10).await.unwrap();
    assert_eq!(actions[0].actor, "ops");
}
