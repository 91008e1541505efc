//! The files connector end to end, through the built `lockstep` binary: an ERP's CSV
//! exports into PostgreSQL, PostgreSQL into a CSV drop read back by a second sync, and the
//! errors a person sees for malformed rows and a wrong encoding.

use std::path::Path;
use std::time::{Duration, SystemTime};

use lockstep_e2e::{lockstep, postgres_database, run};
use serde_json::Value;
use sqlx::{Connection, Row};

/// Writes a file whose modification time is `ago` in the past, as an export finished then.
fn export(path: &Path, bytes: &[u8], ago: Duration) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - ago)
        .unwrap();
}

fn latin1(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| u8::try_from(c as u32).expect("a Latin-1 character"))
        .collect()
}

fn run_json(dir: &Path, sync: &str) -> (bool, Value, String) {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", sync, "--output", "json"]));
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.success(), value, stderr)
}

fn pg_rows(url: &str, query: &str) -> Vec<Vec<Option<String>>> {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let rows = sqlx::query(query).fetch_all(&mut c).await.unwrap();
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect()
            })
            .collect()
    })
}

fn pg_exec(url: &str, statements: &[&str]) {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        for s in statements {
            sqlx::query(s)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    })
}

#[test]
fn an_erp_csv_export_in_latin1_arrives_in_postgres_then_a_new_export_brings_its_changes() {
    let Some(db) = postgres_database("files_erp") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            r#"
[state]
url = "sqlite://state.db"

[connections.erp]
connector = "files"
[connections.erp.config.streams.parties]
path = "exports/parties-*.csv"
encoding = "latin-1"
primary_key = ["id"]
settle = "1h"
modified_field = "exported_at"
fields = {{ balance = "decimal(12,2)" }}

[connections.pg]
connector = "postgres"
config = {{ url = "{}" }}

[syncs.parties]
source = "erp.parties"
destination = "pg.parties"
mode = "incremental"
cursor = "exported_at"
[syncs.parties.fields]
id = "id"
name = "name"
address = "address"
balance = "balance"
"#,
            db.url
        ),
    )
    .unwrap();
    let first = "id,name,address,balance\n\
                 1,Zoë Ærø,\"12 rue de Paris, 75001 Paris\",1200.50\n\
                 2,\"Müller, Hans\",\"Hauptstraße 5\nHinterhaus\",-3.10\n\
                 3,Ñuñez,,0\n";
    export(
        &d.join("exports/parties-20261201.csv"),
        &latin1(first),
        Duration::from_secs(3 * 3600),
    );
    // An export still being written (just now, well within the settle time, however slow the
    // machine) and one under a temporary name wait for a later run.
    export(
        &d.join("exports/parties-20261203.csv"),
        &latin1("id,name,address,balance\n9,Later,,1\n"),
        Duration::ZERO,
    );
    export(
        &d.join("exports/parties-20261204.csv.part"),
        &latin1("id,name,address,balance\n8,Partial,,1\n"),
        Duration::from_secs(3 * 3600),
    );

    let (ok, report, stderr) = run_json(d, "parties");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 3, "{report}");
    assert_eq!(report["metrics"]["added"], 3, "{report}");
    let rows = pg_rows(
        &db.url,
        "SELECT id::text, name, address, balance::text FROM parties ORDER BY id",
    );
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows,
        [
            vec![
                s("1"),
                s("Zoë Ærø"),
                s("12 rue de Paris, 75001 Paris"),
                s("1200.50")
            ],
            vec![
                s("2"),
                s("Müller, Hans"),
                s("Hauptstraße 5\nHinterhaus"),
                s("-3.10")
            ],
            vec![s("3"), s("Ñuñez"), None, s("0.00")],
        ]
    );

    // The next export: party 2 changed, 4 is new, 1 is the same. The file still being
    // written is finished too, and an old export is touched (same content): not read again.
    std::fs::remove_file(d.join("exports/parties-20261203.csv")).unwrap();
    let second = "id,name,address,balance\n\
                  1,Zoë Ærø,\"12 rue de Paris, 75001 Paris\",1200.50\n\
                  2,\"Müller, Hans\",\"Hauptstraße 7\",99.99\n\
                  4,Çelik,\"Istanbul\",5\n";
    export(
        &d.join("exports/parties-20261202.csv"),
        &latin1(second),
        Duration::from_secs(2 * 3600),
    );
    std::fs::File::options()
        .write(true)
        .open(d.join("exports/parties-20261201.csv"))
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(90 * 60))
        .unwrap();
    let (ok, report, stderr) = run_json(d, "parties");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 3, "{report}");
    assert_eq!(report["metrics"]["added"], 1, "{report}");
    assert_eq!(report["metrics"]["updated"], 1, "{report}");
    assert_eq!(report["metrics"]["unchanged"], 1, "{report}");
    let rows = pg_rows(
        &db.url,
        "SELECT id::text, address, balance::text FROM parties WHERE id IN (2, 4) ORDER BY id",
    );
    assert_eq!(
        rows,
        [
            vec![s("2"), s("Hauptstraße 7"), s("99.99")],
            vec![s("4"), s("Istanbul"), s("5.00")],
        ]
    );

    // Nothing new: nothing read.
    let (ok, report, stderr) = run_json(d, "parties");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 0, "{report}");
}

#[test]
fn postgres_into_a_csv_drop_is_read_back_equal_by_a_second_sync() {
    let Some(db) = postgres_database("files_drop") else {
        return;
    };
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE contacts (id bigint PRIMARY KEY, name text, score numeric(10,2),
                                    active boolean, born date, updated_at timestamptz NOT NULL, props jsonb)",
            "INSERT INTO contacts VALUES
               (1, 'Zoë \"quoted\" O''Brien', 1.50, true, '1990-02-28', '2026-01-01 10:00:00+00',
                '{\"vip\": true, \"tags\": [\"a, b\", \"c\"]}'),
               (2, 'four, with a comma
and a newline', -0.25, false, NULL, '2026-01-02 11:30:00.123456+00', '\"just a string\"'),
               (3, NULL, NULL, NULL, NULL, '2026-01-03 00:00:00+00', NULL)",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            r#"
[state]
url = "sqlite://state.db"

[connections.pg]
connector = "postgres"
config = {{ url = "{url}" }}

[connections.drop]
connector = "files"
config = {{ dir = "drop" }}

[syncs.out]
source = "pg.contacts"
destination = "drop.contacts"

[syncs.back]
source = "drop.contacts"
destination = "pg.contacts_back"
"#,
            url = db.url
        ),
    )
    .unwrap();
    let (ok, report, stderr) = run_json(d, "out");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["added"], 3, "{report}");
    let files: Vec<String> = std::fs::read_dir(d.join("drop"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("contacts-") && files[0].ends_with(".csv"),
        "{files:?}"
    );

    let (ok, report, stderr) = run_json(d, "back");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["added"], 3, "{report}");
    let differences = pg_rows(
        &db.url,
        "SELECT count(*)::text FROM (
           (SELECT * FROM contacts EXCEPT SELECT * FROM contacts_back)
           UNION ALL
           (SELECT * FROM contacts_back EXCEPT SELECT * FROM contacts)) d",
    );
    assert_eq!(differences, [vec![Some("0".to_owned())]]);

    // A second run of the export writes nothing new: nothing changed.
    let (ok, report, stderr) = run_json(d, "out");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["unchanged"], 3, "{report}");
}

fn sqlite_destination_config(d: &Path, stream_extra: &str) {
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            r#"
[connections.files]
connector = "files"
[connections.files.config.streams.orders]
path = "in/orders-*.csv"
settle = "0s"
{stream_extra}

[connections.db]
connector = "sqlite"
config = {{ path = "db.sqlite" }}

[syncs.orders]
source = "files.orders"
destination = "db.orders"
"#
        ),
    )
    .unwrap();
}

#[test]
fn malformed_rows_fail_the_run_naming_the_file_and_every_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sqlite_destination_config(d, "primary_key = [\"id\"]");
    export(
        &d.join("in/orders-1.csv"),
        b"id,item,qty\n1,apple,2\n2,\"pear, green\"\n3,plum,4\n4,fig,5,extra\n",
        Duration::from_secs(60),
    );
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(!ok, "{report}\n{stderr}");
    let message = report["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("in/orders-1.csv"), "{message}");
    assert!(
        message.contains("line 3: 2 values where the header has 3 columns"),
        "{message}"
    );
    assert!(message.contains("line 5: 4 values"), "{message}");
    assert!(message.contains("fix the file"), "{message}");
}

#[test]
fn a_file_in_the_wrong_encoding_names_the_file_and_the_option_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sqlite_destination_config(d, "");
    export(
        &d.join("in/orders-1.csv"),
        &latin1("id,item\n1,crème brûlée\n"),
        Duration::from_secs(60),
    );
    let (out, stdout, stderr) = run(lockstep(d).args(["run", "orders"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let all = format!("{stdout}\n{stderr}");
    assert!(all.contains("in/orders-1.csv`, line 2"), "{all}");
    assert!(all.contains("not valid UTF-8"), "{all}");
    assert!(
        all.contains("encoding = \"windows-1252\"") && all.contains("streams.orders"),
        "{all}"
    );
}
