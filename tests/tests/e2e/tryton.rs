//! The Tryton connector end to end, through the built `lockstep` binary against a real
//! `trytond` 8.2 (one per test, on a copy of the shared template database; see
//! `lockstep_test_support::tryton`) and real PostgreSQL: parties into PostgreSQL (full,
//! incremental with never-written and archived records, mirror with a party deleted in
//! Tryton), PostgreSQL rows into Tryton parties with one refused, product prices through
//! `numeric` and back without losing a digit, a wrong password, and a server restarted in
//! the middle of a run.

use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::time::{Duration, Instant};

use lockstep_connector_tryton::{Tryton, TrytonConfig};
use lockstep_e2e::{counts, lockstep, pg_exec, pg_rows, postgres_database, run, run_report};
use lockstep_test_support::skip::skip_or_fail;
use lockstep_test_support::tryton::{TrytonServer, ADMIN_LOGIN, ADMIN_PASSWORD};
use serde_json::{json, Value};

/// The variable that carries the password to the `lockstep` child processes only.
pub(crate) const PASSWORD_VAR: &str = "LOCKSTEP_E2E_TRYTON_PASSWORD";
/// The variable this test process's own Tryton client reads the password from.
const LOCAL_PASSWORD_VAR: &str = "LOCKSTEP_E2E_TRYTON_ADMIN_PASSWORD";

/// A Tryton server with a client for changing its records, and a runtime to drive it.
pub(crate) struct Erp {
    server: TrytonServer,
    client: Tryton,
    runtime: tokio::runtime::Runtime,
}

impl Erp {
    /// A fresh server, or `None` after `skip_or_fail` when Tryton cannot be provided.
    pub(crate) fn start() -> Option<Self> {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| std::env::set_var(LOCAL_PASSWORD_VAR, ADMIN_PASSWORD));
        let server = match TrytonServer::start() {
            Ok(server) => server,
            Err(e) => {
                skip_or_fail(e);
                return None;
            }
        };
        let config: TrytonConfig = serde_json::from_value(json!({
            "url": server.url(),
            "database": server.database,
            "username": ADMIN_LOGIN,
            "password_env": LOCAL_PASSWORD_VAR,
        }))
        .unwrap();
        let client = Tryton::connect(config).unwrap();
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

    pub(crate) fn call(&self, method: &str, params: Vec<Value>) -> Value {
        self.runtime
            .block_on(self.client.rpc().call(method, params, None, false, "test"))
            .unwrap_or_else(|e| panic!("{method}: {}", e.message()))
    }

    pub(crate) fn create(&self, model: &str, records: Value) -> Vec<i64> {
        self.call(&format!("model.{model}.create"), vec![records])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    }

    fn search_read(&self, model: &str, domain: Value, fields: &[&str]) -> Vec<Value> {
        let answer = self.runtime.block_on(self.client.rpc().call(
            &format!("model.{model}.search_read"),
            vec![
                domain,
                json!(0),
                Value::Null,
                json!([["id", "ASC"]]),
                json!(fields),
            ],
            Some(json!({"active_test": false})),
            true,
            "test",
        ));
        answer
            .unwrap_or_else(|e| panic!("{}", e.message()))
            .as_array()
            .unwrap()
            .clone()
    }

    /// The connection, as a config file's `[connections.erp]`.
    pub(crate) fn connection(&self, extra: &str) -> String {
        format!(
            r#"
[connections.erp]
connector = "tryton"
[connections.erp.config]
url = "{}"
database = "{}"
username = "{ADMIN_LOGIN}"
password_env = "{PASSWORD_VAR}"
{extra}
"#,
            self.server.url(),
            self.server.database
        )
    }
}

/// A `lockstep` command with the password's variable set (to `password`) for the child only.
fn lockstep_with(dir: &Path, password: &str) -> Command {
    let mut cmd = lockstep(dir);
    cmd.env(PASSWORD_VAR, password);
    cmd
}

fn run_json(dir: &Path, sync: &str) -> (bool, Value, String) {
    run_report(lockstep_with(dir, ADMIN_PASSWORD).args(["run", sync, "--output", "json"]))
}

fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

#[test]
fn tryton_parties_reach_postgres_full_incremental_and_mirror() {
    let Some(db) = postgres_database("tryton_in") else {
        return;
    };
    let Some(erp) = Erp::start() else {
        return;
    };
    let parties = erp.create(
        "party.party",
        json!([{"name": "Ann"}, {"name": "Bob"}, {"name": "Cy"}, {"name": "Di"}]),
    );
    erp.create(
        "party.address",
        json!([{"party": parties[0], "city": "Springfield"}]),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{erp}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.customers]
source = "erp.party.party"
destination = "pg.customers"
mode = "mirror"
cursor = "last_modified_at"
key = ["tryton_id"]
max_delete_fraction = 0.5
[syncs.customers.fields]
tryton_id = "id"
customer_name = "name"
customer_code = "code"
active = "active"
changed_at = "last_modified_at"

[syncs.addresses]
source = "erp.party.address"
destination = "pg.customer_addresses"
mode = "incremental"
cursor = "last_modified_at"
key = ["tryton_id"]
[syncs.addresses.fields]
tryton_id = "id"
customer_id = "party"
city = "city"
"#,
        erp = erp.connection("models = [\"party.party\", \"party.address\"]\noverlap_seconds = 5"),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    // First runs: the template's company party and the four new ones; one address.
    let (ok, first, stderr) = run_json(d, "customers");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [5, 5, 0, 0, 0], "{first}");
    let (ok, first_addresses, stderr) = run_json(d, "addresses");
    assert!(ok, "{first_addresses}\n{stderr}");
    assert_eq!(
        counts(&first_addresses),
        [1, 1, 0, 0, 0],
        "{first_addresses}"
    );
    assert_eq!(
        pg_rows(
            &db.url,
            &format!(
                "SELECT customer_name, active::text FROM customers WHERE tryton_id = {}",
                parties[1]
            )
        ),
        [vec![s("Bob"), s("true")]]
    );

    // In Tryton: one renamed, one archived, one new party with a new address. The address
    // has never been written, so its write_date is NULL.
    erp.call(
        "model.party.party.write",
        vec![
            json!([parties[1]]),
            json!({"name": "Robert"}),
            json!([parties[2]]),
            json!({"active": false}),
        ],
    );
    let eve = erp.create("party.party", json!([{"name": "Eve"}]))[0];
    let eve_address = erp.create(
        "party.address",
        json!([{"party": eve, "city": "Shelbyville"}]),
    )[0];
    let stored = erp.search_read(
        "party.address",
        json!([["id", "=", eve_address]]),
        &["write_date"],
    );
    assert_eq!(stored[0]["write_date"], Value::Null, "{stored:?}");

    let (ok, second, stderr) = run_json(d, "customers");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(counts(&second), [3, 1, 2, 0, 0], "{second}");
    assert_eq!(
        pg_rows(
            &db.url,
            &format!(
                "SELECT tryton_id::text, customer_name, active::text FROM customers \
                 WHERE tryton_id IN ({}, {}, {eve}) ORDER BY tryton_id",
                parties[1], parties[2]
            )
        ),
        [
            vec![s(&parties[1].to_string()), s("Robert"), s("true")],
            vec![s(&parties[2].to_string()), s("Cy"), s("false")],
            vec![s(&eve.to_string()), s("Eve"), s("true")],
        ],
        "the archived party is kept, marked inactive"
    );
    let (ok, second_addresses, stderr) = run_json(d, "addresses");
    assert!(ok, "{second_addresses}\n{stderr}");
    assert_eq!(
        counts(&second_addresses),
        [1, 1, 0, 0, 0],
        "{second_addresses}"
    );
    assert_eq!(
        pg_rows(
            &db.url,
            &format!("SELECT city FROM customer_addresses WHERE customer_id = {eve}")
        ),
        [vec![s("Shelbyville")]]
    );

    // Nothing changed: the overlap window reads recent records again, none is delivered.
    let (ok, idle, stderr) = run_json(d, "customers");
    assert!(ok, "{idle}\n{stderr}");
    assert_eq!(counts(&idle), [0, 0, 0, 0, 0], "{idle}");

    // Mirror: a party deleted in Tryton (a hard delete) is deleted in PostgreSQL.
    erp.call("model.party.party.delete", vec![json!([parties[3]])]);
    let (ok, third, stderr) = run_json(d, "customers");
    assert!(ok, "{third}\n{stderr}");
    assert_eq!(counts(&third), [0, 0, 0, 0, 1], "{third}");
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM customers"),
        [vec![s("5")]]
    );
    assert_eq!(
        pg_rows(
            &db.url,
            &format!(
                "SELECT count(*)::text FROM customers WHERE tryton_id = {}",
                parties[3]
            )
        ),
        [vec![s("0")]]
    );
}

#[test]
fn postgres_rows_become_tryton_parties_and_a_refused_one_is_one_reject() {
    let Some(db) = postgres_database("tryton_out") else {
        return;
    };
    let Some(erp) = Erp::start() else {
        return;
    };
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE crm_parties (code text PRIMARY KEY, name text, updated_at timestamptz NOT NULL)",
            "INSERT INTO crm_parties VALUES \
             ('P-1', 'Ann', '2026-01-01 10:00:00+00'), \
             ('P-2', 'Bob', '2026-01-01 10:00:01+00'), \
             ('   ', 'Nobody', '2026-01-01 10:00:02+00'), \
             ('P-4', 'Di', '2026-01-01 10:00:03+00')",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{erp}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.parties_out]
source = "pg.crm_parties"
destination = "erp.party.party"
mode = "incremental"
cursor = "updated_at"
key = ["code"]
max_rejected = 5
[syncs.parties_out.fields]
code = "code"
name = "name"
"#,
        erp = erp.connection("models = [\"party.party\"]"),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    let (ok, first, stderr) = run_json(d, "parties_out");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(first["metrics"]["rejected"], 1, "{first}");
    assert_eq!(counts(&first)[..2], [4, 3], "{first}");
    let (_, listed, _) = run(lockstep_with(d, ADMIN_PASSWORD).args([
        "rejects",
        "list",
        "parties_out",
        "--output",
        "json",
    ]));
    let rejects: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rejects.as_array().unwrap().len(), 1, "{rejects}");
    let reason = rejects[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("A value is required for field \"Code\""),
        "Tryton's own message: {reason}"
    );
    assert_eq!(rejects[0]["raw"]["name"], "Nobody", "{rejects}");
    let names = |erp: &Erp| -> Vec<(String, String)> {
        erp.search_read(
            "party.party",
            json!([["code", "like", "P-%"]]),
            &["code", "name"],
        )
        .iter()
        .map(|r| {
            (
                r["code"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
    };
    let pair = |c: &str, n: &str| (c.to_owned(), n.to_owned());
    assert_eq!(
        names(&erp),
        [pair("P-1", "Ann"), pair("P-2", "Bob"), pair("P-4", "Di")]
    );

    // A renamed row updates its party in place, found by its code.
    pg_exec(
        &db.url,
        &["UPDATE crm_parties SET name = 'Robert', updated_at = '2026-02-01 09:00:00+00' WHERE code = 'P-2'"],
    );
    let (ok, second, stderr) = run_json(d, "parties_out");
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(second["metrics"]["rejected"], 0, "{second}");
    assert_eq!(counts(&second), [1, 0, 1, 0, 0], "{second}");
    assert_eq!(
        names(&erp),
        [pair("P-1", "Ann"), pair("P-2", "Robert"), pair("P-4", "Di")]
    );
}

#[test]
fn product_prices_round_trip_through_postgres_numeric_without_losing_a_digit() {
    let Some(db) = postgres_database("tryton_prices") else {
        return;
    };
    let Some(erp) = Erp::start() else {
        return;
    };
    let decimal = |d: &str| json!({"__class__": "Decimal", "decimal": d});
    let ids = erp.create(
        "product.template",
        json!([
            {"name": "Widget", "code": "W-1", "default_uom": 1, "list_price": decimal("98765432109876543210.1234")},
            {"name": "Gadget", "code": "G-1", "default_uom": 1, "list_price": decimal("0.0001")},
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{erp}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.products_in]
source = "erp.product.template"
destination = "pg.products"
key = ["tryton_id"]
[syncs.products_in.fields]
tryton_id = "id"
product_name = "name"
price = "list_price"

[syncs.products_out]
source = "pg.products"
destination = "erp.product.template"
key = ["id"]
[syncs.products_out.fields]
id = "tryton_id"
list_price = "price"
"#,
        erp = erp.connection(
            "models = [\"product.template\"]\nfields = { \"product.template\" = [\"name\", \"list_price\"] }"
        ),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    let (ok, first, stderr) = run_json(d, "products_in");
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(counts(&first), [2, 2, 0, 0, 0], "{first}");
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT price::text, format_type(a.atttypid, a.atttypmod) FROM products, pg_attribute a \
             WHERE a.attrelid = 'products'::regclass AND a.attname = 'price' ORDER BY tryton_id"
        ),
        [
            vec![s("98765432109876543210.1234"), s("numeric(38,4)")],
            vec![s("0.0001"), s("numeric(38,4)")],
        ]
    );

    // Prices changed in PostgreSQL go back to Tryton, digit for digit.
    pg_exec(
        &db.url,
        &[&format!(
            "UPDATE products SET price = 12345678901234567890.9876 WHERE tryton_id = {}",
            ids[1]
        )],
    );
    let (ok, back, stderr) = run_json(d, "products_out");
    assert!(ok, "{back}\n{stderr}");
    assert_eq!(back["metrics"]["rejected"], 0, "{back}");
    let prices: Vec<Value> = erp
        .search_read("product.template", json!([]), &["list_price"])
        .iter()
        .map(|r| r["list_price"].clone())
        .collect();
    assert_eq!(
        prices,
        [
            decimal("98765432109876543210.1234"),
            decimal("12345678901234567890.9876")
        ]
    );
}

#[test]
fn a_wrong_password_fails_at_once_and_a_restart_mid_run_is_retried_to_exact_counts() {
    let Some(db) = postgres_database("tryton_faults") else {
        return;
    };
    let Some(mut erp) = Erp::start() else {
        return;
    };
    let parties: Vec<Value> = (0..120)
        .map(|i| json!({"name": format!("Party {i:03}")}))
        .collect();
    erp.create("party.party", Value::Array(parties));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = format!(
        r#"
[state]
url = "sqlite://state.db"
{erp}
[connections.pg]
connector = "postgres"
config = {{ url = "{db_url}" }}

[syncs.customers]
source = "erp.party.party"
destination = "pg.customers"
key = ["tryton_id"]
batch_size = 5
[syncs.customers.fields]
tryton_id = "id"
customer_name = "name"
"#,
        erp = erp.connection("models = [\"party.party\"]\npage_size = 5"),
        db_url = db.url
    );
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    // A wrong password: an authentication error at once, naming the setting and variable.
    let wrong = "tryton-wrong-password-3e8a1c";
    let started = Instant::now();
    let (out, stdout, stderr) =
        run(lockstep_with(d, wrong).args(["run", "customers", "--output", "json"]));
    let elapsed = started.elapsed();
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    assert_eq!(report["error"]["kind"], "auth", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("password_env") && message.contains(PASSWORD_VAR),
        "the message names the setting and the variable: {message}"
    );
    assert!(
        elapsed < Duration::from_secs(15),
        "an auth failure is not retried: {elapsed:?}"
    );
    // The text form, with every log line down to trace level (the login body included).
    let (_, text_out, text_err) = run(lockstep_with(d, wrong)
        .env("RUST_LOG", "trace")
        .args(["run", "customers"]));
    assert!(text_err.contains("password_env"), "{text_err}");
    assert!(
        text_err.contains("logging in to Tryton"),
        "the plugin's request log is on: {text_err}"
    );

    // The server killed and started again while a run reads: the run retries and completes.
    let mut child = lockstep_with(d, ADMIN_PASSWORD)
        .args(["run", "customers", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let landed = pg_rows(
            &db.url,
            "SELECT count(*)::text FROM pg_tables WHERE tablename = 'customers'",
        );
        if landed == [vec![s("1")]]
            && pg_rows(&db.url, "SELECT count(*)::text FROM customers")[0][0]
                .as_deref()
                .is_some_and(|n| n.parse::<u32>().unwrap() >= 10)
        {
            break;
        }
        assert!(Instant::now() < deadline, "the run wrote nothing in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "the run was still going when the server went down"
    );
    erp.server.stop();
    std::thread::sleep(Duration::from_millis(1500));
    erp.server.resume().unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(counts(&report), [121, 121, 0, 0, 0], "{report}");
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT count(*)::text, count(DISTINCT tryton_id)::text FROM customers"
        ),
        [vec![s("121"), s("121")]]
    );

    // The password appears in no output and no run history.
    let (_, runs_text, runs_err) = run(lockstep_with(d, wrong).args(["runs"]));
    let (_, runs_json, _) = run(lockstep_with(d, wrong).args(["runs", "--output", "json"]));
    let history: Value = serde_json::from_str(&runs_json).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 3, "{history}");
    for output in [
        &stdout, &stderr, &text_out, &text_err, &runs_text, &runs_err, &runs_json,
    ] {
        assert!(
            !output.contains(wrong) && !output.contains(ADMIN_PASSWORD),
            "a password leaked: {output}"
        );
    }
}
