//! The HubSpot connector end to end, through the built `lockstep` binary against the in-repo
//! fake HubSpot (started in this test process on a free port) and real PostgreSQL: contacts
//! into PostgreSQL (full, incremental and mirror, with field mappings), PostgreSQL rows into
//! HubSpot contacts (created, updated, archived), and a bad token that fails at once without
//! retries and without the token in any output.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lockstep_e2e::{counts, lockstep, pg_exec, pg_rows, postgres_database, run, run_report};
use lockstep_fake_hubspot::{FakeHubSpot, ObjectType, Options};
use serde_json::Value;

/// The variable that carries the token to the `lockstep` child process only.
pub(crate) const TOKEN_VAR: &str = "LOCKSTEP_E2E_HUBSPOT_TOKEN";
/// The token the fake accepts.
pub(crate) const TOKEN: &str = "pat-na1-e2e-fake-token-0f3c9a";

/// A fake HubSpot served by a runtime of its own, which lives as long as the value: the
/// `lockstep` child processes talk to it while the test thread waits for them.
pub(crate) struct Fake {
    pub(crate) fake: FakeHubSpot,
    _runtime: tokio::runtime::Runtime,
}

impl Fake {
    pub(crate) fn start() -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake");
        let fake = runtime
            .block_on(FakeHubSpot::start(Options {
                token: TOKEN.into(),
                ..Options::default()
            }))
            .expect("the fake HubSpot starts");
        Self {
            fake,
            _runtime: runtime,
        }
    }

    pub(crate) fn contact(&self, email: &str, first: &str, last: &str, stage: &str) -> String {
        self.fake.insert(
            ObjectType::Contacts,
            &[
                ("email", email),
                ("firstname", first),
                ("lastname", last),
                ("lifecyclestage", stage),
            ],
        )
    }

    /// The live (not archived) contacts, as (email, firstname, lastname, lifecyclestage),
    /// sorted by email.
    fn live_contacts(&self) -> Vec<[String; 4]> {
        let mut rows: Vec<[String; 4]> = self
            .fake
            .records(ObjectType::Contacts)
            .into_iter()
            .filter(|r| r.archived_ms.is_none())
            .map(|r| {
                let p = |name: &str| r.properties.get(name).cloned().unwrap_or_default();
                [
                    p("email"),
                    p("firstname"),
                    p("lastname"),
                    p("lifecyclestage"),
                ]
            })
            .collect();
        rows.sort();
        rows
    }
}

/// A `lockstep` command with the token's variable set (to `token`) for the child only.
fn lockstep_with(dir: &Path, token: &str) -> Command {
    let mut cmd = lockstep(dir);
    cmd.env(TOKEN_VAR, token);
    cmd
}

fn run_json(dir: &Path, sync: &str) -> (bool, Value, String) {
    run_report(lockstep_with(dir, TOKEN).args(["run", sync, "--output", "json"]))
}

/// The connection to the fake, as a config file's `[connections.crm]`.
fn crm_connection(fake: &Fake) -> String {
    format!(
        r#"
[connections.crm]
connector = "hubspot"
[connections.crm.config]
token_env = "{TOKEN_VAR}"
base_url = "{}"
properties = {{ contacts = ["email", "firstname", "lastname", "lifecyclestage"] }}
"#,
        fake.fake.base_url()
    )
}

/// HubSpot contacts into PostgreSQL: a full sync and a mirror sync into two tables, with
/// HubSpot's property names mapped to the database's column names.
fn inbound_config(dir: &Path, fake: &Fake, db_url: &str) {
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{crm}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.contacts_full]
source = "crm.contacts"
destination = "pg.contacts_snapshot"
mode = "full"
key = ["hubspot_id"]
[syncs.contacts_full.fields]
hubspot_id = "id"
email_address = "email"
first_name = "firstname"
last_name = "lastname"
stage = "lifecyclestage"

[syncs.contacts_in]
source = "crm.contacts"
destination = "pg.crm_contacts"
mode = "mirror"
cursor = "lastmodifieddate"
tombstone = "archived"
key = ["hubspot_id"]
[syncs.contacts_in.fields]
hubspot_id = "id"
email_address = "email"
first_name = "firstname"
last_name = "lastname"
stage = "lifecyclestage"
modified_at = "lastmodifieddate"
"#,
        crm = crm_connection(fake)
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

#[test]
fn hubspot_contacts_arrive_in_postgres_full_then_incremental_and_archives_delete() {
    let Some(db) = postgres_database("hubspot_in") else {
        return;
    };
    let fake = Fake::start();
    // More than one list page (100 a page) and more than one search page.
    let mut ids = Vec::new();
    for i in 0..230 {
        ids.push(fake.contact(
            &format!("person{i:03}@example.com"),
            &format!("First{i}"),
            &format!("Last{i}"),
            if i % 2 == 0 { "lead" } else { "customer" },
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    inbound_config(d, &fake, &db.url);

    // First runs: everything arrives, under the database's column names.
    let (ok, full, stderr) = run_json(d, "contacts_full");
    assert!(ok, "{full}\n{stderr}");
    assert_eq!(counts(&full), [230, 230, 0, 0, 0], "{full}");
    let (ok, first, stderr) = run_json(d, "contacts_in");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [230, 230, 0, 0, 0], "{first}");
    let row = pg_rows(
        &db.url,
        &format!(
            "SELECT email_address, first_name, last_name, stage FROM crm_contacts WHERE hubspot_id = {}",
            ids[7]
        ),
    );
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        row,
        [vec![
            s("person007@example.com"),
            s("First7"),
            s("Last7"),
            s("customer")
        ]]
    );
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM contacts_snapshot"),
        [vec![s("230")]]
    );

    // Changes made in HubSpot between runs: one renamed, one saved without a change, one new.
    assert!(fake
        .fake
        .update(ObjectType::Contacts, &ids[10], &[("firstname", "Renamed")]));
    assert!(fake
        .fake
        .update(ObjectType::Contacts, &ids[20], &[("firstname", "First20")]));
    let new_id = fake.contact("newcomer@example.com", "New", "Comer", "subscriber");

    // The incremental run reads exactly the three changed records. The mirror sync maps
    // `lastmodifieddate` to `modified_at`, so the contact saved without a change is an update
    // there (its modification time moved).
    let (ok, second, stderr) = run_json(d, "contacts_in");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [3, 1, 2, 0, 0], "{second}");
    // The full sync reads everything again; it does not map the modification time, so the
    // contact saved without a change is unchanged there.
    let (ok, full2, stderr) = run_json(d, "contacts_full");
    assert!(ok, "{full2}\n{stderr}");
    assert_eq!(counts(&full2), [231, 1, 1, 229, 0], "{full2}");
    for table in ["crm_contacts", "contacts_snapshot"] {
        assert_eq!(
            pg_rows(
                &db.url,
                &format!(
                    "SELECT first_name FROM {table} WHERE hubspot_id IN ({}, {new_id}) ORDER BY hubspot_id",
                    ids[10]
                )
            ),
            [vec![s("Renamed")], vec![s("New")]],
            "{table}"
        );
    }

    // Nothing changed: the incremental run reads nothing.
    let (ok, idle, stderr) = run_json(d, "contacts_in");
    assert!(ok, "{idle}\n{stderr}");
    assert_eq!(counts(&idle), [0, 0, 0, 0, 0], "{idle}");

    // Mirror: a contact archived in HubSpot is deleted in PostgreSQL.
    assert!(fake.fake.archive(ObjectType::Contacts, &ids[3]));
    let (ok, third, stderr) = run_json(d, "contacts_in");
    assert!(ok, "{third}\n{stderr}");
    assert_eq!(third["metrics"]["deleted"], 1, "{third}");
    assert_eq!(third["metrics"]["added"], 0, "{third}");
    assert_eq!(
        pg_rows(
            &db.url,
            &format!(
                "SELECT count(*)::text FROM crm_contacts WHERE hubspot_id = {}",
                ids[3]
            )
        ),
        [vec![s("0")]]
    );
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM crm_contacts"),
        [vec![s("230")]]
    );
}

#[test]
fn postgres_rows_become_hubspot_contacts_and_a_deleted_row_is_archived() {
    let Some(db) = postgres_database("hubspot_out") else {
        return;
    };
    let fake = Fake::start();
    // A contact HubSpot already has: the sync's first run updates it by email, never
    // duplicates it.
    fake.contact("carol@example.com", "Caroline", "Old", "subscriber");
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE customers (id int PRIMARY KEY, email_address text NOT NULL, \
             first_name text, last_name text, stage text, updated_at timestamptz NOT NULL)",
            "INSERT INTO customers VALUES \
             (1, 'alice@example.com', 'Alice', 'Archer', 'lead', '2026-01-01 10:00:00+00'), \
             (2, 'bob@example.com', 'Bob', 'Baker', 'customer', '2026-01-01 10:00:01+00'), \
             (3, 'Carol@Example.com', 'Carol', 'Cooper', 'customer', '2026-01-01 10:00:02+00'), \
             (4, 'dan@example.com', 'Dan', 'Dyer', 'subscriber', '2026-01-01 10:00:03+00'), \
             (5, 'eve@example.com', 'Eve', 'Evans', 'lead', '2026-01-01 10:00:04+00')",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{crm}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.customers_out]
source = "pg.customers"
destination = "crm.contacts"
mode = "mirror"
cursor = "updated_at"
key = ["email"]
max_delete_fraction = 0.5
[syncs.customers_out.fields]
email = {{ expr = "lower(trim(email_address))" }}
firstname = "first_name"
lastname = "last_name"
lifecyclestage = "stage"
"#,
        crm = crm_connection(&fake),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    let (ok, first, stderr) = run_json(d, "customers_out");
    assert!(ok, "{first}\n{stderr}");
    // Carol is matched by her email (lower-cased and trimmed by the mapping, as HubSpot stores
    // emails) and updated in place; the other four are created. The run counts all five as
    // added: with the ledger on, "added" means new to this sync.
    assert_eq!(counts(&first), [5, 5, 0, 0, 0], "{first}");
    assert_eq!(first["metrics"]["rejected"], 0, "{first}");
    let row = |e: &str, f: &str, l: &str, s: &str| [e, f, l, s].map(String::from);
    assert_eq!(
        fake.live_contacts(),
        [
            row("alice@example.com", "Alice", "Archer", "lead"),
            row("bob@example.com", "Bob", "Baker", "customer"),
            row("carol@example.com", "Carol", "Cooper", "customer"),
            row("dan@example.com", "Dan", "Dyer", "subscriber"),
            row("eve@example.com", "Eve", "Evans", "lead"),
        ]
    );
    assert_eq!(fake.fake.records(ObjectType::Contacts).len(), 5);

    // In the database: one row changed, one added, one deleted.
    pg_exec(
        &db.url,
        &[
            "UPDATE customers SET last_name = 'Brewer', updated_at = '2026-02-01 09:00:00+00' WHERE id = 2",
            "INSERT INTO customers VALUES (6, 'fay@example.com', 'Fay', 'Fisher', 'lead', '2026-02-01 09:00:01+00')",
            "DELETE FROM customers WHERE id = 4",
        ],
    );
    let (ok, second, stderr) = run_json(d, "customers_out");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [2, 1, 1, 0, 1], "{second}");
    assert_eq!(
        fake.live_contacts(),
        [
            row("alice@example.com", "Alice", "Archer", "lead"),
            row("bob@example.com", "Bob", "Brewer", "customer"),
            row("carol@example.com", "Carol", "Cooper", "customer"),
            row("eve@example.com", "Eve", "Evans", "lead"),
            row("fay@example.com", "Fay", "Fisher", "lead"),
        ]
    );
    let dan: Vec<_> = fake
        .fake
        .records(ObjectType::Contacts)
        .into_iter()
        .filter(|r| r.properties.get("email").map(String::as_str) == Some("dan@example.com"))
        .collect();
    assert_eq!(dan.len(), 1);
    assert!(dan[0].archived_ms.is_some(), "dan was archived, not kept");

    // Nothing changed: nothing read, nothing written.
    let (ok, idle, stderr) = run_json(d, "customers_out");
    assert!(ok, "{idle}\n{stderr}");
    assert_eq!(counts(&idle), [0, 0, 0, 0, 0], "{idle}");
}

#[test]
fn a_bad_token_fails_at_once_naming_token_env_without_retries_or_the_token_in_any_output() {
    let Some(db) = postgres_database("hubspot_auth") else {
        return;
    };
    let fake = Fake::start();
    fake.contact("ann@example.com", "Ann", "Lee", "lead");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    inbound_config(d, &fake, &db.url);
    let wrong = "pat-na1-revoked-4d1e7b99c2";

    let started = Instant::now();
    let (out, stdout, stderr) =
        run(lockstep_with(d, wrong).args(["run", "contacts_in", "--output", "json"]));
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["error"]["kind"], "auth", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("token_env") && message.contains(TOKEN_VAR),
        "the message names the setting and the variable: {message}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "an auth failure is not retried: {elapsed:?}"
    );
    let (requests, _) = fake.fake.counts();
    assert_eq!(requests, 1, "one refused request, no retries");

    // The text form of the same run, and the run history.
    let (out, text_out, text_err) = run(lockstep_with(d, wrong).args(["run", "contacts_in"]));
    assert!(!out.status.success());
    assert!(
        text_err.contains("token_env"),
        "the text form says which setting to fix: {text_err}"
    );
    assert_eq!(fake.fake.counts().0, 2, "again exactly one request");
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
            !output.contains(wrong) && !output.contains(TOKEN),
            "a token leaked: {output}"
        );
    }
    // Nothing reached the database.
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT count(*)::text FROM pg_tables WHERE tablename = 'crm_contacts'"
        ),
        [vec![Some("0".to_owned())]]
    );
}
