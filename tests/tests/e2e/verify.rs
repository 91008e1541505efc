//! `lockstep verify` through the built binary against real databases: PostgreSQL to
//! PostgreSQL, PostgreSQL to MariaDB and SQLite to PostgreSQL, with renamed and computed
//! fields. A destination changed behind Lockstep's back (rows deleted, added, and edited in
//! one field) is found exactly, `--repair` converges, and verify then exits 0. Also: a
//! destination table without an index on the key (and a key held twice), and a source that
//! cannot count in place (SQLite has no `key-summary`).

use std::path::Path;

use lockstep_e2e::{lockstep, mysql_database, postgres_database, run, sqlite_exec, TempDatabase};
use serde_json::Value;
use sqlx::Connection;

/// How many records each source holds.
const ROWS: i64 = 60;

/// One side of a sync under test.
enum Side<'a> {
    Sqlite(&'a Path),
    Postgres(&'a TempDatabase),
    Mysql(&'a TempDatabase),
}

impl Side<'_> {
    fn connection(&self, name: &str) -> String {
        match self {
            Side::Sqlite(path) => format!(
                "[connections.{name}]\nconnector = \"sqlite\"\nconfig = {{ path = \"{}\" }}\n",
                path.display()
            ),
            Side::Postgres(db) => format!(
                "[connections.{name}]\nconnector = \"postgres\"\nconfig = {{ url = \"{}\" }}\n",
                db.url
            ),
            Side::Mysql(db) => format!(
                "[connections.{name}]\nconnector = \"mysql\"\nconfig = {{ url = \"{}\" }}\n",
                db.url
            ),
        }
    }

    /// Runs SQL statements on this side.
    fn exec(&self, statements: &[String]) {
        match self {
            Side::Sqlite(path) => {
                let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
                sqlite_exec(path, &refs)
            }
            Side::Postgres(db) => lockstep_e2e::block_on(async {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                for s in statements {
                    sqlx::query(s).execute(&mut c).await.unwrap();
                }
                c.close().await.unwrap();
            }),
            Side::Mysql(db) => lockstep_e2e::block_on(async {
                let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
                for s in statements {
                    sqlx::query(s).execute(&mut c).await.unwrap();
                }
                c.close().await.unwrap();
            }),
        }
    }

    /// A `people` source with ids 1..=ROWS, mixed-case emails and a cursor.
    fn create_source(&self) {
        let (int, text, ts) = match self {
            Side::Sqlite(_) => ("INTEGER", "TEXT", "TIMESTAMP"),
            Side::Postgres(_) => ("BIGINT", "TEXT", "TIMESTAMP"),
            Side::Mysql(_) => ("BIGINT", "VARCHAR(200)", "DATETIME(6)"),
        };
        let mut statements = vec![format!(
            "CREATE TABLE people (id {int} PRIMARY KEY, full_name {text} NOT NULL, \
             email {text} NOT NULL, score {int}, updated_at {ts} NOT NULL)"
        )];
        let values: Vec<String> = (1..=ROWS)
            .map(|id| {
                format!(
                    "({id}, 'Person {id}', 'Person{id}@Example.COM', {}, '2026-01-01 00:{:02}:00')",
                    id * 10,
                    id % 60
                )
            })
            .collect();
        statements.push(format!(
            "INSERT INTO people (id, full_name, email, score, updated_at) VALUES {}",
            values.join(", ")
        ));
        self.exec(&statements);
    }
}

/// A full sync `people` from `source` to `destination` table `contacts`, with a renamed and
/// a computed field.
fn write_config(dir: &Path, source: &Side, destination: &Side) {
    let text = format!(
        "[state]\nurl = \"sqlite://state.db\"\n\n{}\n{}\n\
         [syncs.people]\nsource = \"src.people\"\ndestination = \"dst.contacts\"\n\
         mode = \"incremental\"\ncursor = \"updated_at\"\nbatch_size = 25\nmax_delete_fraction = 0.5\n\n\
         [syncs.people.fields]\nid = \"id\"\nname = \"full_name\"\n\
         email = {{ expr = \"lower(email)\" }}\nscore = \"score\"\nupdated_at = \"updated_at\"\n",
        source.connection("src"),
        destination.connection("dst"),
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

/// `lockstep verify people --output json [args]`: (exit code, report).
fn verify(dir: &Path, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["verify", "people", "--output", "json"];
    all.extend_from_slice(args);
    let (out, stdout, stderr) = run(lockstep(dir).args(&all));
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("verify printed no JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report)
}

fn sync(dir: &Path) {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", "people", "-o", "json"]));
    assert!(out.status.success(), "run failed: {stdout}\n{stderr}");
}

fn keys(list: &Value) -> Vec<String> {
    let mut keys: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

/// Deletes two records, adds one and edits one field of another, behind Lockstep's back.
fn tamper(destination: &Side) {
    destination.exec(&[
        "DELETE FROM contacts WHERE id IN (3, 7)".to_owned(),
        "INSERT INTO contacts (id, name, email, score, updated_at) VALUES \
         (1001, 'Stranger', 'stranger@example.com', 5, '2026-01-01 00:00:00')"
            .to_owned(),
        "UPDATE contacts SET name = 'Edited' WHERE id = 10".to_owned(),
    ]);
}

/// Verify finds exactly the tampering, repair converges, verify then agrees.
fn finds_repairs_and_agrees(dir: &Path, destination: &Side) -> Value {
    sync(dir);
    let (code, report) = verify(dir, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["source"]["count"], ROWS);
    assert_eq!(report["destination"]["count"], ROWS);
    assert_eq!(report["missing"], 0);
    assert!(
        report["last_success"]["run_id"].as_i64().is_some(),
        "{report:#}"
    );

    tamper(destination);
    let (code, report) = verify(dir, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["destination"]["count"], ROWS - 1);
    assert_eq!(
        keys(&report["missing_records"]),
        ["[3]", "[7]"],
        "{report:#}"
    );
    assert_eq!(
        report["missing_records"][0]["record"]["email"],
        "person3@example.com"
    );
    assert_eq!(keys(&report["extra_records"]), ["[1001]"], "{report:#}");
    let different = report["different_records"].as_array().unwrap();
    assert_eq!(different.len(), 1, "{report:#}");
    assert_eq!(different[0]["key"], "[10]");
    assert_eq!(
        different[0]["fields"],
        serde_json::json!([{ "field": "name", "source": "Person 10", "destination": "Edited" }])
    );
    assert_eq!(
        (&report["missing"], &report["extra"], &report["different"]),
        (&Value::from(2), &Value::from(1), &Value::from(1))
    );

    let (code, report) = verify(dir, &["--repair"]);
    assert_eq!(code, 0, "{report:#}");
    let repair = &report["repair"];
    assert_eq!(repair["status"], "succeeded", "{report:#}");
    assert_eq!(repair["metrics"]["added"], 2, "{report:#}");
    assert_eq!(repair["metrics"]["updated"], 1, "{report:#}");
    assert_eq!(repair["metrics"]["deleted"], 1, "{report:#}");

    let (code, after) = verify(dir, &[]);
    assert_eq!(code, 0, "{after:#}");
    assert_eq!(after["destination"]["count"], ROWS);
    // The repair is a run of its own kind in the history, not the last successful sync run.
    let (out, stdout, stderr) = run(lockstep(dir).args(["runs", "people", "-o", "json"]));
    assert!(out.status.success(), "{stderr}");
    let runs: Value = serde_json::from_str(&stdout).unwrap();
    let kinds: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(kinds, ["verify-repair", "sync"], "{runs:#}");
    assert_ne!(after["last_success"]["run_id"], repair["run_id"]);
    report
}

#[test]
fn postgres_to_postgres_verify_finds_the_drift_and_repairs_it() {
    let Some(src) = postgres_database("verify_src") else {
        return;
    };
    let Some(dst) = postgres_database("verify_dst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (source, destination) = (Side::Postgres(&src), Side::Postgres(&dst));
    source.create_source();
    write_config(dir.path(), &source, &destination);
    let report = finds_repairs_and_agrees(dir.path(), &destination);
    // PostgreSQL counts in place (key-summary) on both sides.
    assert_eq!(report["source"]["counted_by"], "connector");
    assert_eq!(report["destination"]["counted_by"], "connector");
    assert_eq!(
        report["source"]["newest_cursor"],
        report["destination"]["newest_cursor"]
    );
    // A computed field (`lower(email)`): the databases' hashes would not be comparable, so
    // verify read both sides, and says why.
    assert_eq!(report["content"]["method"], "read", "{report:#}");
    let declined = report["content"]["declined"].as_str().unwrap();
    assert!(declined.contains("`email` is computed"), "{declined}");
}

/// A PostgreSQL `people` table whose fields a sync copies as they are (renamed at most):
/// text, a nullable text, numeric(12,2), a float and a timestamp with time zone.
fn create_plain_source(source: &Side) {
    source.exec(&[
        "CREATE TABLE people (id bigint PRIMARY KEY, full_name text NOT NULL, note text, \
         amount numeric(12,2), ratio float8, updated_at timestamptz NOT NULL)"
            .to_owned(),
        format!(
            "INSERT INTO people SELECT g, 'Person ' || g, CASE WHEN g % 4 = 0 THEN NULL \
             ELSE 'note ' || g END, g / 2.0, g / 3.0, \
             timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute' \
             FROM generate_series(1, {ROWS}) g"
        ),
    ]);
}

/// A sync of `people` whose mapping is plain copies (one renamed): verify may hash in place.
fn write_plain_config(dir: &Path, source: &Side, destination: &Side) {
    let text = format!(
        "[state]\nurl = \"sqlite://state.db\"\n\n{}\n{}\n\
         [syncs.people]\nsource = \"src.people\"\ndestination = \"dst.contacts\"\n\
         mode = \"incremental\"\ncursor = \"updated_at\"\nbatch_size = 25\nmax_delete_fraction = 0.5\n\n\
         [syncs.people.fields]\nid = \"id\"\nname = \"full_name\"\nnote = \"note\"\n\
         amount = \"amount\"\nratio = \"ratio\"\nupdated_at = \"updated_at\"\n",
        source.connection("src"),
        destination.connection("dst"),
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

#[test]
fn postgres_to_postgres_with_plain_copies_is_compared_in_the_databases_and_exactly() {
    let Some(src) = postgres_database("verify_psrc") else {
        return;
    };
    let Some(dst) = postgres_database("verify_pdst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, destination) = (Side::Postgres(&src), Side::Postgres(&dst));
    create_plain_source(&source);
    write_plain_config(d, &source, &destination);
    sync(d);

    // Identical tables: one summary of the ranges a side, nothing else read.
    let (code, report) = verify(d, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["content"]["method"], "range-hash", "{report:#}");
    assert_eq!(report["content"]["differing_ranges"], 0, "{report:#}");
    assert_eq!(report["content"]["listed"], 0, "{report:#}");
    assert_eq!(report["content"]["candidates"], 0, "{report:#}");
    assert_eq!(report["source"]["count"], ROWS);
    assert_eq!(report["destination"]["count"], ROWS);
    assert_eq!(report["source"]["counted_by"], "connector");
    assert_eq!(report["source"]["newest_cursor"], "2026-01-01T01:00:00Z");
    assert_eq!(
        report["source"]["newest_cursor"],
        report["destination"]["newest_cursor"]
    );

    // Scattered drift: two missing, one extra, one field changed, a null against an empty
    // text; and a numeric written again as 2.5 where the source has 2.50 (the same value).
    destination.exec(&[
        "DELETE FROM contacts WHERE id IN (3, 37)".to_owned(),
        "INSERT INTO contacts (id, name, note, amount, ratio, updated_at) VALUES \
         (1001, 'Stranger', NULL, 1, 1, '2026-01-01 00:00:00+00')"
            .to_owned(),
        "UPDATE contacts SET name = 'Edited' WHERE id = 10".to_owned(),
        "UPDATE contacts SET note = '' WHERE id = 12".to_owned(),
        // numeric(12,2) stores 2.5 as 2.50 whichever way it is written.
        "UPDATE contacts SET amount = 2.5 WHERE id = 5".to_owned(),
    ]);
    let (code, report) = verify(d, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["content"]["method"], "range-hash", "{report:#}");
    assert_eq!(report["content"]["candidates"], 5, "{report:#}");
    assert_eq!(
        keys(&report["missing_records"]),
        ["[37]", "[3]"],
        "{report:#}"
    );
    assert_eq!(keys(&report["extra_records"]), ["[1001]"], "{report:#}");
    let mut different: Vec<Value> = report["different_records"].as_array().unwrap().clone();
    different.sort_by_key(|r| r["key"].as_str().unwrap().to_owned());
    assert_eq!(
        different,
        [
            serde_json::json!({ "key": "[10]", "fields": [
                { "field": "name", "source": "Person 10", "destination": "Edited" }
            ] }),
            serde_json::json!({ "key": "[12]", "fields": [
                { "field": "note", "source": null, "destination": "" }
            ] }),
        ],
        "{report:#}"
    );
    assert_eq!(report["destination"]["count"], ROWS - 1);

    // Repair converges, and verify agrees in place again.
    let (code, report) = verify(d, &["--repair"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["repair"]["metrics"]["added"], 2, "{report:#}");
    assert_eq!(report["repair"]["metrics"]["updated"], 2, "{report:#}");
    assert_eq!(report["repair"]["metrics"]["deleted"], 1, "{report:#}");
    let (code, report) = verify(d, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["content"]["method"], "range-hash", "{report:#}");
}

#[test]
fn postgres_to_postgres_in_place_finds_a_key_held_twice_without_an_index() {
    let Some(src) = postgres_database("verify_psrc") else {
        return;
    };
    let Some(dst) = postgres_database("verify_pdst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, destination) = (Side::Postgres(&src), Side::Postgres(&dst));
    create_plain_source(&source);
    write_plain_config(d, &source, &destination);
    sync(d);
    destination.exec(&[
        "ALTER TABLE contacts DROP CONSTRAINT contacts_pkey".to_owned(),
        "INSERT INTO contacts SELECT * FROM contacts WHERE id = 5".to_owned(),
        "UPDATE contacts SET ratio = 0 WHERE id = 20".to_owned(),
    ]);
    let (code, report) = verify(d, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["content"]["method"], "range-hash", "{report:#}");
    assert_eq!(
        report["duplicate_keys"],
        serde_json::json!(["[5]"]),
        "{report:#}"
    );
    assert_eq!(
        (&report["missing"], &report["extra"]),
        (&Value::from(0), &Value::from(0))
    );
    assert_eq!(report["different_records"][0]["key"], "[20]", "{report:#}");
    assert_eq!(
        report["different_records"][0]["fields"][0]["field"],
        "ratio"
    );
    assert_eq!(report["different"], 1, "{report:#}");
}

#[test]
fn postgres_to_mariadb_verify_finds_the_drift_and_repairs_it() {
    let Some(src) = postgres_database("verify_src") else {
        return;
    };
    let Some(dst) = mysql_database("verify_dst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (source, destination) = (Side::Postgres(&src), Side::Mysql(&dst));
    source.create_source();
    write_config(dir.path(), &source, &destination);
    let report = finds_repairs_and_agrees(dir.path(), &destination);
    // MariaDB cannot count in place: its count is read, and still exact.
    assert_eq!(report["destination"]["counted_by"], "read");
}

#[test]
fn sqlite_to_postgres_verify_finds_the_drift_and_repairs_it_without_a_count_capability() {
    let Some(dst) = postgres_database("verify_dst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    let (source, destination) = (Side::Sqlite(&src), Side::Postgres(&dst));
    source.create_source();
    write_config(dir.path(), &source, &destination);
    let report = finds_repairs_and_agrees(dir.path(), &destination);
    // SQLite cannot count in place: the count comes from reading, and is right.
    assert_eq!(report["source"]["counted_by"], "read");
    assert_eq!(report["source"]["count"], ROWS);
}

#[test]
fn a_destination_without_an_index_on_the_key_is_compared_and_a_key_held_twice_is_found() {
    let Some(dst) = postgres_database("verify_noidx") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    let (source, destination) = (Side::Sqlite(&src), Side::Postgres(&dst));
    source.create_source();
    write_config(dir.path(), &source, &destination);
    sync(dir.path());
    // The key's index goes, and the table's physical order is shuffled by updates.
    destination.exec(&[
        "ALTER TABLE contacts DROP CONSTRAINT contacts_pkey".to_owned(),
        "UPDATE contacts SET score = score WHERE id % 2 = 0".to_owned(),
        "INSERT INTO contacts SELECT * FROM contacts WHERE id = 5".to_owned(),
        "UPDATE contacts SET score = 0 WHERE id = 20".to_owned(),
        "DELETE FROM contacts WHERE id = 30".to_owned(),
    ]);
    let (code, report) = verify(dir.path(), &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        report["duplicate_keys"],
        serde_json::json!(["[5]"]),
        "{report:#}"
    );
    assert_eq!(keys(&report["missing_records"]), ["[30]"], "{report:#}");
    assert_eq!(report["extra"], 0, "{report:#}");
    assert_eq!(report["different_records"][0]["key"], "[20]", "{report:#}");
    assert_eq!(
        report["different_records"][0]["fields"],
        serde_json::json!([{ "field": "score", "source": 200, "destination": 0 }])
    );
    assert_eq!(report["different"], 1);
}

#[test]
fn verify_of_an_unknown_sync_exits_2_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src.db");
    let dst = dir.path().join("dst.db");
    write_config(dir.path(), &Side::Sqlite(&src), &Side::Sqlite(&dst));
    let (out, _, stderr) = run(lockstep(dir.path()).args(["verify", "nope"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no sync named `nope`"), "{stderr}");
}

#[test]
fn the_daemon_verifies_on_its_schedule_alerts_on_drift_and_exports_the_gauge() {
    use std::time::{Duration, Instant};

    use crate::daemon::{Daemon, Receiver};

    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (src, dst) = (d.join("src.db"), d.join("dst.db"));
    let (source, destination) = (Side::Sqlite(&src), Side::Sqlite(&dst));
    source.create_source();
    write_config(d, &source, &destination);
    sync(d);
    destination.exec(&["DELETE FROM contacts WHERE id IN (4, 5, 6)".to_owned()]);
    // Verified every second (a 6-field cron, seconds first); no run schedule at all.
    let mut text = std::fs::read_to_string(d.join("lockstep.toml")).unwrap();
    text = text.replace(
        "max_delete_fraction = 0.5\n",
        "max_delete_fraction = 0.5\nverify_schedule = \"* * * * * *\"\n",
    );
    text.push_str(&format!(
        "\n[[alerts.webhook]]\nurl = \"{}\"\n",
        receiver.url
    ));
    std::fs::write(d.join("lockstep.toml"), text).unwrap();

    let daemon = Daemon::start(d);
    // The file is edited behind the daemon (no reload): its scheduled verify still uses the
    // config the daemon loaded, as its runs do.
    std::fs::write(d.join("lockstep.toml"), "this is [not a config").unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let drift = loop {
        if let Some(b) = receiver.bodies().into_iter().find(|b| b["kind"] == "drift") {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "no drift alert; received: {:?}\n{}",
            receiver.bodies(),
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(drift["sync"], "people", "{drift}");
    let reason = drift["reason"].as_str().unwrap();
    assert!(
        reason.contains("verify found 3 differences: 3 records missing"),
        "{reason}"
    );
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("lockstep_verify_differences{sync=\"people\"} 3"),
        "{metrics}"
    );
}

#[test]
fn a_source_that_can_only_be_read_in_full_is_verified_and_repaired_in_a_second_pass() {
    // A CSV source: no count in place (`key-summary`) and no reading by key (`read-by-keys`),
    // so verify counts what it reads and fetches the differing records in a filtered pass.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("in")).unwrap();
    let mut csv = String::from("id,full_name,score\n");
    for id in 1..=ROWS {
        csv.push_str(&format!("{id},Person {id},{}\n", id * 10));
    }
    std::fs::write(d.join("in/people.csv"), csv).unwrap();
    let dst = d.join("dst.db");
    let destination = Side::Sqlite(&dst);
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            "[state]\nurl = \"sqlite://state.db\"\n\n\
             [connections.src]\nconnector = \"files\"\n\
             [connections.src.config.streams.people]\npath = \"in/people.csv\"\nprimary_key = [\"id\"]\n\
             settle = \"0s\"\n\n{}\n\
             [syncs.people]\nsource = \"src.people\"\ndestination = \"dst.contacts\"\nmode = \"full\"\n\
             max_delete_fraction = 0.5\n\n\
             [syncs.people.fields]\nid = \"id\"\nname = {{ expr = \"upper(full_name)\" }}\nscore = \"score\"\n",
            destination.connection("dst")
        ),
    )
    .unwrap();
    sync(d);
    destination.exec(&[
        "DELETE FROM contacts WHERE id = 9".to_owned(),
        "UPDATE contacts SET score = -1 WHERE id = 11".to_owned(),
        "INSERT INTO contacts (id, name, score) VALUES (500, 'X', 1)".to_owned(),
    ]);
    let (code, report) = verify(d, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["source"]["counted_by"], "read");
    assert_eq!(report["source"]["count"], ROWS);
    assert_eq!(report["fetched_by_key"], false);
    assert_eq!(keys(&report["missing_records"]), ["[9]"]);
    assert_eq!(report["missing_records"][0]["record"]["name"], "PERSON 9");
    assert_eq!(keys(&report["extra_records"]), ["[500]"]);
    assert_eq!(
        report["different_records"],
        serde_json::json!([{ "key": "[11]", "fields": [
            { "field": "score", "source": 110, "destination": -1 }
        ] }])
    );
    let (code, report) = verify(d, &["--repair"]);
    assert_eq!(code, 0, "{report:#}");
    let (code, report) = verify(d, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["destination"]["count"], ROWS);

    // A line the source cannot read (one field too many): its key is unknown, so verify
    // refuses to call anything missing or extra, and says why.
    let mut csv = std::fs::read_to_string(d.join("in/people.csv")).unwrap();
    csv.push_str("77777,Broken,1,extra\n");
    std::fs::write(d.join("in/people.csv"), csv).unwrap();
    let (out, _, stderr) = run(lockstep(d).args(["verify", "people"]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the source could not read 1 of its records"),
        "{stderr}"
    );
}
