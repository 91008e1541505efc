//! The Mailman connector end to end, through the built `lockstep` binary against the shared
//! real Mailman 3.3.10 core (see `lockstep_test_support::mailman`; each test makes its own
//! domain and lists) and real PostgreSQL: a list into PostgreSQL with a subscription during
//! a paged scan (nobody skipped, nobody twice, exact counts), unchanged and renamed members
//! on later runs; a PostgreSQL table into a list (subscribe, "already subscribed" as an
//! update, rename, unsubscribe through mirror reconciliation), with exact per-run counts;
//! and a wrong password.

use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use lockstep_e2e::{counts, lockstep, pg_exec, pg_rows, postgres_database, run, run_report};
use lockstep_http_kit::{Auth, ClientConfig, HttpClient, Method, Request};
use lockstep_test_support::mailman::{unique_name, MailmanServer, ADMIN_PASSWORD, ADMIN_USER};
use lockstep_test_support::skip::skip_or_fail;
use serde_json::{json, Value};

/// The variable that carries the password to the `lockstep` child processes only.
pub(crate) const PASSWORD_VAR: &str = "LOCKSTEP_E2E_MAILMAN_PASSWORD";
/// The variable this test process's own Mailman client reads the password from.
const LOCAL_PASSWORD_VAR: &str = "LOCKSTEP_E2E_MAILMAN_ADMIN_PASSWORD";

/// The shared server with an admin client for making lists and members.
pub(crate) struct Lists {
    server: MailmanServer,
    client: HttpClient,
    runtime: tokio::runtime::Runtime,
}

impl Lists {
    pub(crate) fn start() -> Option<Self> {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| std::env::set_var(LOCAL_PASSWORD_VAR, ADMIN_PASSWORD));
        let server = match MailmanServer::shared() {
            Ok(server) => server,
            Err(e) => {
                skip_or_fail(e);
                return None;
            }
        };
        let auth = Auth::basic_from_env(ADMIN_USER, "password_env", LOCAL_PASSWORD_VAR).unwrap();
        let settings = ClientConfig::new("Mailman", format!("{}/3.1", server.url()), auth);
        let client = HttpClient::new(settings).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        Some(Self {
            server,
            client,
            runtime,
        })
    }

    fn send(&self, request: Request) -> Value {
        let response = self
            .runtime
            .block_on(self.client.send(&request))
            .unwrap_or_else(|e| panic!("{e}"));
        serde_json::from_slice(&response.body).unwrap_or(Value::Null)
    }

    /// A new list in a new domain; its list id. Addresses are shared by every list of the
    /// server (a display name is kept from the first subscription), so tests make theirs
    /// in their list's domain with [`addr`].
    pub(crate) fn new_list(&self) -> String {
        let domain = format!("{}.example.com", unique_name("e2e"));
        self.send(Request::post("/domains").json(json!({"mail_host": domain})));
        self.send(Request::post("/lists").json(json!({"fqdn_listname": format!("news@{domain}")})));
        format!("news.{domain}")
    }

    fn subscribe(&self, list_id: &str, email: &str, name: &str) {
        self.send(Request::post("/members").json(json!({
            "list_id": list_id, "subscriber": email, "display_name": name,
            "pre_verified": true, "pre_confirmed": true, "pre_approved": true,
            "send_welcome_message": false,
        })));
    }

    fn unsubscribe(&self, list_id: &str, emails: &[&str]) {
        self.send(
            Request::new(Method::DELETE, format!("/lists/{list_id}/roster/member"))
                .json(json!({ "emails": emails })),
        );
    }

    fn rename(&self, email: &str, name: &str) {
        self.send(
            Request::new(Method::PATCH, format!("/addresses/{email}"))
                .json(json!({"display_name": name})),
        );
    }

    /// (email, display name, delivery mode) of every member, by email.
    pub(crate) fn members(&self, list_id: &str) -> Vec<(String, String, String)> {
        let answer = self.send(Request::get(format!("/lists/{list_id}/roster/member")));
        let mut members: Vec<(String, String, String)> = answer["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|m| {
                let text = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                (text("email"), text("display_name"), text("delivery_mode"))
            })
            .collect();
        members.sort();
        members
    }

    /// The connection, as a config file's `[connections.NAME]`.
    pub(crate) fn connection(&self, name: &str, list_id: &str, extra: &str) -> String {
        format!(
            r#"
[connections.{name}]
connector = "mailman"
[connections.{name}.config]
url = "{}"
username = "{ADMIN_USER}"
password_env = "{PASSWORD_VAR}"
list_id = "{list_id}"
{extra}
"#,
            self.server.url()
        )
    }
}

/// `local@<the list's domain>`: an address no other test uses.
pub(crate) fn addr(list_id: &str, local: &str) -> String {
    format!("{local}@{}", list_id.trim_start_matches("news."))
}

fn lockstep_with(dir: &Path, password: &str) -> Command {
    let mut cmd = lockstep(dir);
    cmd.env(PASSWORD_VAR, password);
    cmd
}

fn run_json(dir: &Path, sync: &str) -> (bool, Value, String) {
    run_report(lockstep_with(dir, ADMIN_PASSWORD).args(["run", sync, "--output", "json"]))
}

fn pg_count(url: &str, table: &str) -> Option<u64> {
    let exists = pg_rows(
        url,
        &format!("SELECT count(*)::text FROM pg_tables WHERE tablename = '{table}'"),
    );
    if exists[0][0].as_deref() != Some("1") {
        return None;
    }
    pg_rows(url, &format!("SELECT count(*)::text FROM \"{table}\""))[0][0]
        .as_deref()
        .and_then(|n| n.parse().ok())
}

#[test]
fn a_list_reaches_postgres_with_a_subscription_during_the_paged_scan() {
    let Some(db) = postgres_database("mailman_in") else {
        return;
    };
    let Some(lists) = Lists::start() else {
        return;
    };
    let list_id = lists.new_list();
    let early = addr(&list_id, "a-early");
    for i in 0..30 {
        lists.subscribe(
            &list_id,
            &addr(&list_id, &format!("m{i:02}")),
            &format!("Member {i:02}"),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // One member a page, ten requests a second: the scan takes seconds, so the
    // subscription below lands in its middle.
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{mm}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.members]
source = "mm.{list_id}"
destination = "pg.subscribers"
key = ["email"]
# No cursor: Mailman has no timestamps, so each run reads the roster in full and the
# ledger and reconciliation tell what changed and who left.
mode = "mirror"
[syncs.members.fields]
email = "email"
member_id = "member_id"
full_name = "display_name"
delivery = "delivery_mode"
"#,
        mm = lists.connection("mm", &list_id, "page_size = 1\nrequests_per_second = 10"),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    let child = lockstep_with(d, ADMIN_PASSWORD)
        .args(["run", "members", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once five members have landed, the scan is well past the start of the list: a new
    // member whose address sorts first shifts every later page by one.
    let deadline = Instant::now() + Duration::from_secs(120);
    let landed_before = loop {
        if let Some(n) = pg_count(&db.url, "subscribers").filter(|n| *n >= 5) {
            break n;
        }
        assert!(Instant::now() < deadline, "the run wrote nothing in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    lists.subscribe(&list_id, &early, "Early Bird");
    let landed_after = pg_count(&db.url, "subscribers").unwrap();
    assert!(
        landed_before < 20 && landed_after < 25,
        "the subscription came in the middle of the scan ({landed_after} of 30 landed)"
    );
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let first: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        counts(&first),
        [31, 31, 0, 0, 0],
        "nobody skipped, nobody twice: {first}"
    );
    let rows = pg_rows(
        &db.url,
        "SELECT email, full_name, delivery FROM subscribers ORDER BY email",
    );
    assert_eq!(rows.len(), 31);
    assert_eq!(
        rows[0],
        [
            Some(early.clone()),
            Some("Early Bird".into()),
            Some("regular".into())
        ]
    );
    assert_eq!(rows[30][1].as_deref(), Some("Member 29"));
    let member_ids = pg_rows(
        &db.url,
        "SELECT count(DISTINCT member_id)::text FROM subscribers",
    );
    assert_eq!(member_ids[0][0].as_deref(), Some("31"));

    // Nothing changed: a full read again, every member unchanged.
    let (ok, second, stderr) = run_json(d, "members");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [31, 0, 0, 31, 0], "{second}");

    // One renamed in Mailman: exactly one update.
    let seventh = addr(&list_id, "m07");
    lists.rename(&seventh, "Member Seven");
    let (ok, third, stderr) = run_json(d, "members");
    assert!(ok, "{third}\n{stderr}");
    assert_eq!(counts(&third), [31, 0, 1, 30, 0], "{third}");
    assert_eq!(
        pg_rows(
            &db.url,
            &format!("SELECT full_name FROM subscribers WHERE email = '{seventh}'")
        ),
        [vec![Some("Member Seven".to_owned())]]
    );

    // Two leave the list in Mailman: the full read no longer has them, and reconciliation
    // deletes exactly those two from PostgreSQL.
    let (gone_a, gone_b) = (addr(&list_id, "m03"), addr(&list_id, "m21"));
    lists.unsubscribe(&list_id, &[&gone_a, &gone_b]);
    let (ok, fourth, stderr) = run_json(d, "members");
    assert!(ok, "{fourth}\n{stderr}");
    assert_eq!(counts(&fourth), [29, 0, 0, 29, 2], "{fourth}");
    let left = pg_rows(
        &db.url,
        &format!("SELECT count(*)::text FROM subscribers WHERE email IN ('{gone_a}', '{gone_b}')"),
    );
    assert_eq!(left[0][0].as_deref(), Some("0"));
    assert_eq!(pg_count(&db.url, "subscribers"), Some(29));
}

#[test]
fn a_postgres_table_drives_a_list_subscribe_update_and_unsubscribe() {
    let Some(db) = postgres_database("mailman_out") else {
        return;
    };
    let Some(lists) = Lists::start() else {
        return;
    };
    let list_id = lists.new_list();
    // Already subscribed before the first run: the sync's subscription becomes an update.
    let [ann, bo, cy, di] = ["ann", "bo", "cy", "di"].map(|n| addr(&list_id, n));
    lists.subscribe(&list_id, &bo, "Bo (old)");
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE people (email text PRIMARY KEY, name text, delivery text, \
             changed_at timestamptz NOT NULL DEFAULT now())",
            &format!(
                "INSERT INTO people (email, name, delivery) VALUES \
                 ('{ann}', 'Ann', 'regular'), ('{bo}', 'Bo', 'mime_digests'), \
                 ('{cy}', 'Cy', 'regular'), ('{di}', 'Di', 'plaintext_digests')"
            ),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{mm}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.people]
source = "pg.people"
destination = "mm.{list_id}"
mode = "mirror"
cursor = "changed_at"
key = ["email"]
max_delete_fraction = 0.5
[syncs.people.fields]
email = "email"
display_name = "name"
delivery_mode = "delivery"
"#,
        mm = lists.connection("mm", &list_id, ""),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    let (ok, first, stderr) = run_json(d, "people");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [4, 4, 0, 0, 0], "{first}");
    let s = |e: &str, n: &str, m: &str| (e.to_owned(), n.to_owned(), m.to_owned());
    assert_eq!(
        lists.members(&list_id),
        [
            s(&ann, "Ann", "regular"),
            s(&bo, "Bo", "mime_digests"),
            s(&cy, "Cy", "regular"),
            s(&di, "Di", "plaintext_digests"),
        ]
    );

    // A rename and a removal in PostgreSQL: one update, one unsubscribe.
    pg_exec(
        &db.url,
        &[
            &format!(
                "UPDATE people SET name = 'Cy Renamed', \
                 changed_at = now() + interval '1 second' WHERE email = '{cy}'"
            ),
            &format!("DELETE FROM people WHERE email = '{di}'"),
        ],
    );
    let (ok, second, stderr) = run_json(d, "people");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [1, 0, 1, 0, 1], "{second}");
    assert_eq!(
        lists.members(&list_id),
        [
            s(&ann, "Ann", "regular"),
            s(&bo, "Bo", "mime_digests"),
            s(&cy, "Cy Renamed", "regular"),
        ]
    );

    // Nothing changed: nothing read, nothing written.
    let (ok, third, stderr) = run_json(d, "people");
    assert!(ok, "{third}\n{stderr}");
    assert_eq!(counts(&third), [0, 0, 0, 0, 0], "{third}");
}

#[test]
fn a_wrong_password_fails_at_once_naming_the_setting_and_never_showing_the_password() {
    let Some(db) = postgres_database("mailman_auth") else {
        return;
    };
    let Some(lists) = Lists::start() else {
        return;
    };
    let list_id = lists.new_list();
    lists.subscribe(&list_id, &addr(&list_id, "x"), "X");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{mm}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.members]
source = "mm.{list_id}"
destination = "pg.subscribers"
key = ["email"]
[syncs.members.fields]
email = "email"
"#,
        mm = lists.connection("mm", &list_id, ""),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();
    let wrong = "mailman-wrong-password-9d2b7e";
    let (out, stdout, stderr) =
        run(lockstep_with(d, wrong).args(["run", "members", "--output", "json"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["error"]["kind"], "auth", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("password_env") && message.contains(PASSWORD_VAR),
        "the message names the setting and the variable: {message}"
    );
    assert!(!stdout.contains(wrong) && !stderr.contains(wrong));
    // Every request logged: exactly one attempt, no retry, and still no password.
    let (_, text_out, text_err) = run(lockstep_with(d, wrong)
        .env("LOCKSTEP_LOG", "debug")
        .args(["run", "members"]));
    assert!(text_err.contains("password_env"), "{text_err}");
    assert!(
        text_err.contains("HTTP request"),
        "the plugin's request log is on: {text_err}"
    );
    assert!(!text_err.contains("retrying"), "{text_err}");
    assert!(
        text_err.contains("401"),
        "Mailman's 401 is named: {text_err}"
    );
    for text in [&text_out, &text_err] {
        assert!(!text.contains(wrong), "the password leaked: {text}");
    }
    // The run history holds the failure, without the password.
    let (_, history, _) =
        run(lockstep_with(d, wrong).args(["runs", "members", "--output", "json"]));
    assert!(!history.contains(wrong), "{history}");
}
