//! The Mailchimp connector end to end, through the built `lockstep` binary against the
//! in-repo fake Mailchimp (started in this test process on a free port) behind Prism's
//! validating proxy (every request and answer checked against Mailchimp's published OpenAPI
//! description), and real PostgreSQL: contacts into an audience (new ones subscribed, renamed
//! ones updated, an unsubscribe in Mailchimp never overwritten, deleted ones archived),
//! members into PostgreSQL incrementally with archived members deleted, exact counts under
//! injected 429s and 5xx, and a bad API key that fails at once without retries and without
//! the key in any output.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lockstep_e2e::{lockstep, pg_exec, pg_rows, postgres_database, run, run_report};
use lockstep_fake_mailchimp::prism::Prism;
use lockstep_fake_mailchimp::{FakeMailchimp, Options};
use serde_json::Value;

/// The variable that carries the key to the `lockstep` child process only.
pub(crate) const KEY_VAR: &str = "LOCKSTEP_E2E_MAILCHIMP_KEY";
/// The key the fake accepts.
pub(crate) const KEY: &str = "7c0ffee15a1e5b0b0c0ffee15a1e5b0b-us21";
pub(crate) const LIST: &str = "e2e0aud1ce";

/// A fake Mailchimp served by a runtime of its own, behind Prism; both live as long as the
/// value.
pub(crate) struct Fake {
    pub(crate) fake: FakeMailchimp,
    prism: Prism,
    _runtime: tokio::runtime::Runtime,
}

impl Fake {
    /// `None` (after a notice, or a failure under CI) when Prism is not installed.
    pub(crate) fn start(options: Options) -> Option<Self> {
        if !Prism::installed() {
            lockstep_test_support::skip::skip_or_fail(
                "the Mailchimp tests need Prism and Mailchimp's OpenAPI description: run `npm ci` \
                 in crates/lockstep-fake-mailchimp/contract",
            );
            return None;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake");
        let fake = runtime
            .block_on(FakeMailchimp::start(Options {
                api_key: KEY.into(),
                ..options
            }))
            .expect("the fake Mailchimp starts");
        fake.create_list(
            LIST,
            &[
                ("FNAME", "First Name", "text", false),
                ("LNAME", "Last Name", "text", false),
            ],
        );
        let prism = Prism::start(&fake.base_url()).unwrap_or_else(|e| panic!("{e}"));
        Some(Self {
            fake,
            prism,
            _runtime: runtime,
        })
    }

    /// The live members as (email, status, FNAME, LNAME), sorted by email.
    pub(crate) fn live(&self) -> Vec<[String; 4]> {
        let mut rows: Vec<[String; 4]> = self
            .fake
            .members(LIST)
            .into_iter()
            .filter(|m| m.status != "archived")
            .map(|m| {
                let merge = |tag: &str| {
                    m.merge_fields
                        .get(tag)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                };
                [
                    m.email_address.clone(),
                    m.status.clone(),
                    merge("FNAME"),
                    merge("LNAME"),
                ]
            })
            .collect();
        rows.sort();
        rows
    }

    pub(crate) fn assert_valid(&self) {
        let violations = self.prism.violations();
        assert!(
            violations.is_empty(),
            "requests or answers outside Mailchimp's OpenAPI description:\n{}",
            violations.join("\n")
        );
    }

    pub(crate) fn connection(&self) -> String {
        format!(
            r#"
[connections.mc]
connector = "mailchimp"
[connections.mc.config]
api_key_env = "{KEY_VAR}"
list_id = "{LIST}"
base_url = "{}"
"#,
            self.prism.base_url()
        )
    }
}

fn lockstep_with(dir: &Path, key: &str) -> Command {
    let mut cmd = lockstep(dir);
    cmd.env(KEY_VAR, key);
    cmd
}

fn run_json(dir: &Path, sync: &str) -> (bool, Value, String) {
    run_report(lockstep_with(dir, KEY).args(["run", sync, "--output", "json"]))
}

/// (read, added, updated, unchanged, deleted, rejected) from a run's JSON report.
fn counts(report: &Value) -> [u64; 6] {
    [
        "read",
        "added",
        "updated",
        "unchanged",
        "deleted",
        "rejected",
    ]
    .map(|k| report["metrics"][k].as_u64().unwrap_or(0))
}

/// PostgreSQL contacts into the audience, as a mirror: a file with the sync `contacts_out`.
fn outbound_config(dir: &Path, fake: &Fake, db_url: &str) {
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{mc}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.contacts_out]
source = "pg.contacts"
destination = "mc.members"
mode = "mirror"
cursor = "updated_at"
key = ["email_address"]
max_delete_fraction = 0.5
[syncs.contacts_out.fields]
email_address = {{ expr = "lower(trim(email))" }}
FNAME = "first_name"
LNAME = "last_name"
"#,
        mc = fake.connection()
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

fn row(email: &str, status: &str, first: &str, last: &str) -> [String; 4] {
    [email, status, first, last].map(String::from)
}

#[test]
fn postgres_contacts_become_members_unsubscribes_stay_and_deleted_contacts_are_archived() {
    let Some(db) = postgres_database("mailchimp_out") else {
        return;
    };
    let Some(fake) = Fake::start(Options::default()) else {
        return;
    };
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE contacts (id int PRIMARY KEY, email text NOT NULL, first_name text, \
             last_name text, updated_at timestamptz NOT NULL)",
            "INSERT INTO contacts VALUES \
             (1, 'alice@northwind.io', 'Alice', 'Archer', '2026-01-01 10:00:00+00'), \
             (2, 'bob@northwind.io', 'Bob', 'Baker', '2026-01-01 10:00:01+00'), \
             (3, ' Carol@Northwind.io', 'Carol', 'Cooper', '2026-01-01 10:00:02+00'), \
             (4, 'dan@northwind.io', 'Dan', 'Dyer', '2026-01-01 10:00:03+00'), \
             (5, 'eve@northwind.io', 'Eve', 'Evans', '2026-01-01 10:00:04+00')",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    outbound_config(d, &fake, &db.url);

    // First run: every contact becomes a subscribed member.
    let (ok, first, stderr) = run_json(d, "contacts_out");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [5, 5, 0, 0, 0, 0], "{first}");
    assert_eq!(
        fake.live(),
        [
            row("alice@northwind.io", "subscribed", "Alice", "Archer"),
            row("bob@northwind.io", "subscribed", "Bob", "Baker"),
            row("carol@northwind.io", "subscribed", "Carol", "Cooper"),
            row("dan@northwind.io", "subscribed", "Dan", "Dyer"),
            row("eve@northwind.io", "subscribed", "Eve", "Evans"),
        ]
    );

    // Dan unsubscribes in Mailchimp; in the CRM Bob is renamed, Dan's name is corrected, Eve
    // is deleted and Fay is added.
    assert!(fake
        .fake
        .change_member(LIST, "dan@northwind.io", Some("unsubscribed"), &[]));
    pg_exec(
        &db.url,
        &[
            "UPDATE contacts SET last_name = 'Brewer', updated_at = '2026-02-01 09:00:00+00' WHERE id = 2",
            "UPDATE contacts SET first_name = 'Daniel', updated_at = '2026-02-01 09:00:01+00' WHERE id = 4",
            "DELETE FROM contacts WHERE id = 5",
            "INSERT INTO contacts VALUES (6, 'fay@northwind.io', 'Fay', 'Fisher', '2026-02-01 09:00:02+00')",
        ],
    );
    let (ok, second, stderr) = run_json(d, "contacts_out");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [3, 1, 2, 0, 1, 0], "{second}");
    assert_eq!(
        fake.live(),
        [
            row("alice@northwind.io", "subscribed", "Alice", "Archer"),
            row("bob@northwind.io", "subscribed", "Bob", "Brewer"),
            row("carol@northwind.io", "subscribed", "Carol", "Cooper"),
            // Updated, and still unsubscribed: the sync does not overwrite the unsubscribe.
            row("dan@northwind.io", "unsubscribed", "Daniel", "Dyer"),
            row("fay@northwind.io", "subscribed", "Fay", "Fisher"),
        ]
    );
    assert_eq!(
        fake.fake.member(LIST, "eve@northwind.io").unwrap().status,
        "archived",
        "a deleted contact is archived, not erased"
    );

    // Dan changes again in the CRM: still not resubscribed by the next run.
    pg_exec(
        &db.url,
        &["UPDATE contacts SET last_name = 'Dyson', updated_at = '2026-03-01 09:00:00+00' WHERE id = 4"],
    );
    let (ok, third, stderr) = run_json(d, "contacts_out");
    assert!(ok, "{third}\n{stderr}");
    assert_eq!(counts(&third), [1, 0, 1, 0, 0, 0], "{third}");
    let dan = fake.fake.member(LIST, "dan@northwind.io").unwrap();
    assert_eq!(
        (dan.status.as_str(), dan.merge_fields["LNAME"].as_str()),
        ("unsubscribed", Some("Dyson"))
    );

    // Nothing changed: nothing read, nothing written.
    let (ok, idle, stderr) = run_json(d, "contacts_out");
    assert!(ok, "{idle}\n{stderr}");
    assert_eq!(counts(&idle), [0, 0, 0, 0, 0, 0], "{idle}");
    fake.assert_valid();
}

#[test]
fn members_arrive_in_postgres_incrementally_and_archived_members_are_deleted() {
    let Some(db) = postgres_database("mailchimp_in") else {
        return;
    };
    let Some(fake) = Fake::start(Options::default()) else {
        return;
    };
    for i in 0..1500 {
        fake.fake.add_member(
            LIST,
            &format!("member{i:04}@northwind.io"),
            if i % 10 == 0 {
                "unsubscribed"
            } else {
                "subscribed"
            },
            &[("FNAME", &format!("First{i}")), ("LNAME", "Last")],
        );
    }
    fake.fake
        .set_tags(LIST, "member0002@northwind.io", &["vip", "crm"]);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{mc}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.members_in]
source = "mc.members"
destination = "pg.subscribers"
mode = "mirror"
cursor = "last_changed"
tombstone = "archived"
key = ["member_id"]
[syncs.members_in.fields]
member_id = "id"
email = "email_address"
first_name = "FNAME"
status = "status"
tags = "tags"
"#,
        mc = fake.connection(),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();
    // Members changed in the current second are read by the next run; let it pass.
    std::thread::sleep(Duration::from_millis(1100));

    let (ok, first, stderr) = run_json(d, "members_in");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [1500, 1500, 0, 0, 0, 0], "{first}");
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        pg_rows(&db.url, "SELECT email, first_name, status, tags FROM subscribers WHERE email = 'member0002@northwind.io'"),
        [vec![s("member0002@northwind.io"), s("First2"), s("subscribed"), s("vip,crm")]]
    );
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT count(*)::text FROM subscribers WHERE status = 'unsubscribed'"
        ),
        [vec![s("150")]]
    );

    // In Mailchimp: one renamed, one unsubscribed, two archived, one signed up.
    assert!(fake.fake.change_member(
        LIST,
        "member0007@northwind.io",
        None,
        &[("FNAME", "Renamed")]
    ));
    assert!(fake
        .fake
        .change_member(LIST, "member0008@northwind.io", Some("unsubscribed"), &[]));
    assert!(fake
        .fake
        .change_member(LIST, "member0011@northwind.io", Some("archived"), &[]));
    assert!(fake
        .fake
        .change_member(LIST, "member0012@northwind.io", Some("archived"), &[]));
    fake.fake.add_member(
        LIST,
        "newcomer@northwind.io",
        "subscribed",
        &[("FNAME", "New")],
    );
    std::thread::sleep(Duration::from_millis(1100));

    let (ok, second, stderr) = run_json(d, "members_in");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [5, 1, 2, 0, 2, 0], "{second}");
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM subscribers"),
        [vec![s("1499")]]
    );
    assert_eq!(
        pg_rows(&db.url, "SELECT first_name, status FROM subscribers WHERE email IN ('member0007@northwind.io', 'member0008@northwind.io') ORDER BY email"),
        [vec![s("Renamed"), s("subscribed")], vec![s("First8"), s("unsubscribed")]]
    );

    let (ok, idle, stderr) = run_json(d, "members_in");
    assert!(ok, "{idle}\n{stderr}");
    assert_eq!(counts(&idle), [0, 0, 0, 0, 0, 0], "{idle}");
    fake.assert_valid();
}

#[test]
fn with_ten_percent_injected_429s_and_5xx_counts_are_exact_and_nothing_is_lost() {
    let Some(db) = postgres_database("mailchimp_faults") else {
        return;
    };
    let Some(fake) = Fake::start(Options {
        fault_rate: 0.1,
        ..Options::default()
    }) else {
        return;
    };
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE contacts (id int PRIMARY KEY, email text NOT NULL, first_name text, \
             last_name text, updated_at timestamptz NOT NULL)",
            "INSERT INTO contacts SELECT i, 'c' || i || '@northwind.io', 'First' || i, 'Last', \
             '2026-01-01 00:00:00+00'::timestamptz + i * interval '1 second' \
             FROM generate_series(1, 1200) AS i",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    outbound_config(d, &fake, &db.url);

    let (ok, first, stderr) = run_json(d, "contacts_out");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [1200, 1200, 0, 0, 0, 0], "{first}");
    assert_eq!(fake.live().len(), 1200);

    // 100 deleted (one request each), 100 renamed.
    pg_exec(
        &db.url,
        &[
            "DELETE FROM contacts WHERE id <= 100",
            "UPDATE contacts SET last_name = 'Changed', updated_at = '2026-06-01 00:00:00+00' \
             WHERE id > 1100",
        ],
    );
    let (ok, second, stderr) = run_json(d, "contacts_out");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [100, 0, 100, 0, 100, 0], "{second}");
    let live = fake.live();
    assert_eq!(live.len(), 1100);
    assert_eq!(live.iter().filter(|m| m[3] == "Changed").count(), 100);
    assert_eq!(
        fake.fake.members(LIST).len(),
        1200,
        "the deleted ones archived, none lost"
    );
    let seen = fake.fake.counts();
    assert!(
        seen.throttled + seen.faults > 0,
        "faults were injected: {seen:?}"
    );
    fake.assert_valid();
}

#[test]
fn a_bad_api_key_fails_at_once_naming_api_key_env_without_retries_or_the_key_in_any_output() {
    let Some(db) = postgres_database("mailchimp_auth") else {
        return;
    };
    let Some(fake) = Fake::start(Options::default()) else {
        return;
    };
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE contacts (id int PRIMARY KEY, email text NOT NULL, first_name text, \
             last_name text, updated_at timestamptz NOT NULL)",
            "INSERT INTO contacts VALUES (1, 'ann@northwind.io', 'Ann', 'Lee', '2026-01-01 10:00:00+00')",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    outbound_config(d, &fake, &db.url);
    let wrong = "0badc0de0badc0de0badc0de0badc0de-us21";

    let (out, stdout, stderr) =
        run(lockstep_with(d, wrong).args(["run", "contacts_out", "--output", "json"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["error"]["kind"], "auth", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("api_key_env") && message.contains(KEY_VAR),
        "the message names the setting and the variable: {message}"
    );
    let seen = fake.fake.counts();
    assert_eq!(
        (seen.requests, seen.unauthorized),
        (1, 1),
        "one refused request, no retries"
    );

    let (out, text_out, text_err) = run(lockstep_with(d, wrong).args(["run", "contacts_out"]));
    assert!(!out.status.success());
    assert!(text_err.contains("api_key_env"), "{text_err}");
    assert_eq!(fake.fake.counts().requests, 2, "again exactly one request");
    let (_, runs_text, runs_err) = run(lockstep_with(d, wrong).args(["runs"]));
    let (_, runs_json, runs_json_err) =
        run(lockstep_with(d, wrong).args(["runs", "--output", "json"]));
    let history: Value = serde_json::from_str(&runs_json).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
    for output in [
        &stdout,
        &stderr,
        &text_out,
        &text_err,
        &runs_text,
        &runs_err,
        &runs_json,
        &runs_json_err,
    ] {
        assert!(
            !output.contains(wrong) && !output.contains(KEY),
            "a key leaked: {output}"
        );
        // Nor the part before the data center, should a message cut the key.
        assert!(!output.contains(&wrong[..32]), "a key leaked: {output}");
    }
    assert!(fake.fake.members(LIST).is_empty());
    fake.assert_valid();
}
