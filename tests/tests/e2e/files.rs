//! The files connector end to end, through the built `lockstep` binary: an ERP's CSV
//! exports into PostgreSQL, PostgreSQL into a CSV drop read back by a second sync, malformed
//! rows as rejects naming file and line, and the error a person sees for a wrong encoding.

use std::path::Path;
use std::time::{Duration, SystemTime};

use lockstep_e2e::{lockstep, pg_exec, pg_rows, postgres_database, run, run_report};
use serde_json::Value;

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
    run_report(lockstep(dir).args(["run", sync, "--output", "json"]))
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

/// A files source of `in/orders-*.csv` into PostgreSQL, incremental by the file's line.
fn postgres_destination_config(d: &Path, url: &str, stream_extra: &str, sync_extra: &str) {
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            r#"
[state]
url = "sqlite://state.db"

[connections.files]
connector = "files"
[connections.files.config.streams.orders]
path = "in/orders-*.csv"
settle = "0s"
primary_key = ["id"]
file_field = "source_file"
line_field = "source_line"
fields = {{ qty = "integer" }}
{stream_extra}

[connections.pg]
connector = "postgres"
config = {{ url = "{url}" }}

[syncs.orders]
source = "files.orders"
destination = "pg.orders"
mode = "incremental"
cursor = "source_line"
max_rejected = 10
{sync_extra}
[syncs.orders.fields]
id = "id"
item = "item"
qty = "qty"
"#
        ),
    )
    .unwrap();
}

#[test]
fn malformed_rows_become_rejects_with_file_and_line_and_the_rest_of_the_file_arrives() {
    let Some(db) = postgres_database("files_rejects") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    postgres_destination_config(d, &db.url, "", "");
    export(
        &d.join("in/orders-1.csv"),
        b"id,item,qty\n1,apple,2\n2,\"pear, green\"\n3,plum,4\n4,fig,5,extra\n5,kiwi,many\n6,lime,7\n",
        Duration::from_secs(60),
    );
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 6, "{report}");
    assert_eq!(report["metrics"]["rejected"], 3, "{report}");
    assert_eq!(report["metrics"]["added"], 3, "{report}");
    assert_eq!(
        pg_rows(&db.url, "SELECT id::text, item FROM orders ORDER BY id"),
        [
            vec![Some("1".into()), Some("apple".into())],
            vec![Some("3".into()), Some("plum".into())],
            vec![Some("6".into()), Some("lime".into())],
        ]
    );

    // Each reject names the file, the line and the reason, and keeps the row's text.
    let (_, stdout, _) = run(lockstep(d).args(["rejects", "list", "orders", "--output", "json"]));
    let rejects: Value = serde_json::from_str(&stdout).unwrap();
    let mut found: Vec<(u64, String, String)> = rejects
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let stored = &r["raw"]["source_reject"];
            assert!(
                stored["file"]
                    .as_str()
                    .unwrap()
                    .ends_with("in/orders-1.csv"),
                "{r}"
            );
            (
                stored["line"].as_u64().unwrap(),
                stored["text"].as_str().unwrap().to_owned(),
                r["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    found.sort();
    assert_eq!(found.len(), 3, "{rejects}");
    // The text is the line as the file holds it, quotes and all.
    assert_eq!((found[0].0, found[0].1.as_str()), (3, "2,\"pear, green\""));
    assert!(
        found[0].2.contains("line 3")
            && found[0]
                .2
                .contains("2 values where the header has 3 columns"),
        "{found:?}"
    );
    assert_eq!((found[1].0, found[1].1.as_str()), (5, "4,fig,5,extra"));
    assert_eq!(found[2].0, 6);
    assert!(
        found[2].2.contains("field `qty`") && found[2].2.contains("many"),
        "{found:?}"
    );

    // The rejects did not hold the checkpoint back: the next run reads nothing again.
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 0, "{report}");

    // A retry reads each rejected line again where it was. The file is unchanged, so all
    // three fail again, and stay pending (as rejects of the retry's run, with their text).
    let pending_lines = |d: &Path| {
        let (_, stdout, _) =
            run(lockstep(d).args(["rejects", "list", "orders", "--output", "json"]));
        let pending: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        let mut lines: Vec<(u64, String)> = pending
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let stored = &r["raw"]["source_reject"];
                (
                    stored["line"].as_u64().unwrap(),
                    stored["text"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        lines.sort();
        lines
    };
    let (out, retried, stderr) = run(lockstep(d).args(["rejects", "retry", "orders"]));
    assert!(!out.status.success(), "{retried}\n{stderr}");
    assert!(retried.contains("0 succeeded, 3 failed again"), "{retried}");
    assert!(
        retried.contains("the source still cannot read it")
            && retried.contains("2 values where the header has 3 columns"),
        "{retried}"
    );
    assert_eq!(
        pending_lines(d),
        [
            (3, "2,\"pear, green\"".to_owned()),
            (5, "4,fig,5,extra".to_owned()),
            (6, "5,kiwi,many".to_owned())
        ]
    );

    // Fixed in place, the lines read: a retry writes them and resolves the rejects.
    export(
        &d.join("in/orders-1.csv"),
        b"id,item,qty\n1,apple,2\n2,\"pear, green\",3\n3,plum,4\n4,fig,5\n5,kiwi,8\n6,lime,7\n",
        Duration::from_secs(30),
    );
    let (out, retried, stderr) = run(lockstep(d).args(["rejects", "retry", "orders"]));
    assert!(out.status.success(), "{retried}\n{stderr}");
    assert!(retried.contains("3 succeeded, 0 failed again"), "{retried}");
    assert_eq!(pending_lines(d), []);
    assert_eq!(
        pg_rows(
            &db.url,
            "SELECT id::text, item, qty::text FROM orders WHERE id IN (2, 4, 5) ORDER BY id"
        ),
        [
            vec![
                Some("2".into()),
                Some("pear, green".into()),
                Some("3".into())
            ],
            vec![Some("4".into()), Some("fig".into()), Some("5".into())],
            vec![Some("5".into()), Some("kiwi".into()), Some("8".into())],
        ]
    );

    // The next run reads the rewritten file again from its start: nothing is rejected, and
    // the records already there arrive unchanged.
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["rejected"], 0, "{report}");
    assert_eq!(report["metrics"]["added"], 0, "{report}");
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM orders"),
        [vec![Some("6".into())]]
    );

    // A reject whose file has gone (moved by `after_read`, say) cannot be read again: it
    // stays pending, saying so.
    export(
        &d.join("in/orders-3.csv"),
        b"id,item,qty\n10,x\n",
        Duration::from_secs(30),
    );
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["rejected"], 1, "{report}");
    std::fs::remove_file(d.join("in/orders-3.csv")).unwrap();
    let (out, retried, stderr) = run(lockstep(d).args(["rejects", "retry", "orders"]));
    assert!(!out.status.success(), "{retried}\n{stderr}");
    assert!(
        retried.contains("is no longer among the files"),
        "{retried}"
    );
    assert_eq!(pending_lines(d), [(2, "10,x".to_owned())]);

    // Past max_rejected the run fails and points at the rejects.
    std::fs::write(
        d.join("lockstep.toml"),
        std::fs::read_to_string(d.join("lockstep.toml"))
            .unwrap()
            .replace("max_rejected = 10", "max_rejected = 1"),
    )
    .unwrap();
    export(
        &d.join("in/orders-2.csv"),
        b"id,item,qty\n7,a\n8,b\n9,c,1\n",
        Duration::from_secs(30),
    );
    let (ok, failed, _) = run_json(d, "orders");
    assert!(!ok, "{failed}");
    assert_eq!(failed["error"]["kind"], "too-many-rejected", "{failed}");
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

#[test]
fn after_read_moves_files_only_once_their_run_committed_and_a_crash_before_the_commit_keeps_them() {
    let Some(db) = postgres_database("files_after_read") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    postgres_destination_config(d, &db.url, "after_read = { move_to = \"done\" }", "");
    let file = d.join("in/orders-1.csv");
    export(
        &file,
        b"id,item,qty\n1,apple,2\n2,pear,3\n",
        Duration::from_secs(60),
    );

    // A crash after the destination has the batch and before the state commit.
    let (out, stdout, stderr) = run(lockstep(d)
        .args(["run", "orders"])
        .env("LOCKSTEP_FAULT", "after-flush:1"));
    assert!(
        !out.status.success(),
        "the fault must abort the run: {stdout}\n{stderr}"
    );
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM orders"),
        [vec![Some("2".into())]],
        "the destination has the batch"
    );
    assert!(
        file.exists(),
        "a file is never moved before its run committed"
    );

    // The next run reads it again and commits; the file is moved when the run after it opens
    // the committed checkpoint.
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 2, "{report}");
    assert!(file.exists());
    // A plan opens the same committed checkpoint, but a dry run moves nothing.
    let (out, stdout, stderr) = run(lockstep(d).args(["plan", "orders"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        file.exists(),
        "`lockstep plan` moved a file: {stdout}\n{stderr}"
    );
    let (ok, report, stderr) = run_json(d, "orders");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], 0, "{report}");
    assert!(!file.exists(), "moved after the commit");
    assert_eq!(
        std::fs::read(d.join("done/orders-1.csv")).unwrap(),
        b"id,item,qty\n1,apple,2\n2,pear,3\n"
    );
    assert_eq!(
        pg_rows(&db.url, "SELECT count(*)::text FROM orders"),
        [vec![Some("2".into())]]
    );
}

/// The CSV files of `dir` (not hidden), with their data rows (header left out), sorted.
fn snapshot_rows(dir: &Path) -> Vec<String> {
    let mut rows = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        rows.extend(text.lines().skip(1).map(str::to_owned));
    }
    rows.sort();
    rows
}

#[test]
fn a_full_sync_into_a_snapshot_replaces_the_file_set_and_mirror_is_still_refused() {
    let Some(db) = postgres_database("files_snapshot") else {
        return;
    };
    pg_exec(
        &db.url,
        &[
            "CREATE TABLE prices (sku text PRIMARY KEY, price numeric(10,2) NOT NULL)",
            "INSERT INTO prices VALUES ('a', 1.00), ('b', 2.00), ('c', 3.00)",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write_config = |mode: &str, ledger: bool| {
        std::fs::write(
            d.join("lockstep.toml"),
            format!(
                r#"
[state]
url = "sqlite://state.db"

[connections.pg]
connector = "postgres"
config = {{ url = "{url}" }}

[connections.outbox]
connector = "files"
config = {{ dir = "outbox", snapshot = true }}

[syncs.prices]
source = "pg.prices"
destination = "outbox.prices"
mode = "{mode}"
ledger = {ledger}
{cursor}
"#,
                cursor = if mode == "mirror" {
                    "cursor = \"sku\""
                } else {
                    ""
                },
                url = db.url
            ),
        )
        .unwrap();
    };

    // Validation refuses mirror into files, snapshot or not, and accepts full.
    write_config("mirror", false);
    let (out, stdout, stderr) = run(lockstep(d).args(["validate", "--offline"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("does not declare the `delete` feature"),
        "{stdout}\n{stderr}"
    );
    write_config("full", false);
    let (out, stdout, stderr) = run(lockstep(d).args(["validate", "--offline"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");

    let (ok, report, stderr) = run_json(d, "prices");
    assert!(ok, "{report}\n{stderr}");
    let link = d.join("outbox/prices");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(snapshot_rows(&link), ["a,1.00", "b,2.00", "c,3.00"]);
    let first = std::fs::read_link(&link).unwrap();

    // A record deleted and one changed at the source: the next snapshot is the new set,
    // whole, under a new generation.
    pg_exec(
        &db.url,
        &[
            "DELETE FROM prices WHERE sku = 'b'",
            "UPDATE prices SET price = 9.50 WHERE sku = 'c'",
        ],
    );
    let (ok, report, stderr) = run_json(d, "prices");
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(snapshot_rows(&link), ["a,1.00", "c,9.50"]);
    assert_ne!(std::fs::read_link(&link).unwrap(), first);

    // With a ledger a run skips unchanged records: the run fails at its end, naming the fix,
    // and the previous snapshot stays.
    write_config("full", true);
    let (ok, report, stderr) = run_json(d, "prices");
    assert!(!ok, "{report}\n{stderr}");
    let message = report["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("ledger = false"), "{message}");
    assert_eq!(snapshot_rows(&link), ["a,1.00", "c,9.50"]);
}
