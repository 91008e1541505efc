//! Held deletes: every delete of a mirror run (tombstones and key-set reconciliation) counts
//! against `max_delete_fraction` before any is applied; past it the run ends `held`, its
//! upserts and checkpoint committed and its deletes waiting in the state store until
//! `lockstep deletes approve`, a run with `--allow-mass-delete`, or the record coming back.
//! Destinations: PostgreSQL, and SQLite.

use std::path::Path;

use lockstep_e2e::{lockstep, postgres_database, run, sqlite_count, sqlite_exec, TempDatabase};
use sqlx::Connection;

/// A SQLite source `items` with ids 1..=`rows` and a soft-delete column.
fn create_source(dir: &Path, rows: i64) {
    sqlite_exec(
        &dir.join("src.db"),
        &[
            "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, deleted_at TIMESTAMP, updated_at TIMESTAMP NOT NULL)",
            &format!(
                "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < {rows}) \
                 INSERT INTO items SELECT v, 'item ' || v, NULL, '2026-01-01 00:00:00' FROM n"
            ),
        ],
    );
}

/// A mirror sync from the SQLite source to `destination` (a connection table).
fn config(dir: &Path, destination: &str, extra: &str) {
    std::fs::write(
        dir.join("lockstep.toml"),
        format!(
            "[state]\nurl = \"sqlite://state.db\"\n\n\
             [connections.src]\nconnector = \"sqlite\"\nconfig = {{ path = \"src.db\" }}\n\n\
             {destination}\n\
             [syncs.items]\nsource = \"src.items\"\ndestination = \"dst.items\"\nmode = \"mirror\"\n\
             cursor = \"updated_at\"\nbatch_size = 100\nmax_delete_fraction = 0.1\n{extra}\n\n\
             [syncs.items.fields]\nid = \"id\"\nname = \"name\"\n"
        ),
    )
    .unwrap();
}

fn postgres_destination(db: &TempDatabase) -> String {
    format!(
        "[connections.dst]\nconnector = \"postgres\"\nconfig = {{ url = \"{}\" }}\n",
        db.url
    )
}

/// `lockstep run items --output json [args]`: (exit code, report).
fn run_items(dir: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let mut all = vec!["run", "items", "--output", "json"];
    all.extend_from_slice(args);
    let (out, stdout, stderr) = run(lockstep(dir).args(&all));
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.code().unwrap_or(-1), report)
}

/// `lockstep deletes list items --output json`.
fn waiting(dir: &Path) -> serde_json::Value {
    let (out, stdout, stderr) = run(lockstep(dir).args(["deletes", "list", "items", "-o", "json"]));
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn pg_count(db: &TempDatabase, query: &str) -> i64 {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        let n: i64 = sqlx::query_scalar(query).fetch_one(&mut c).await.unwrap();
        c.close().await.unwrap();
        n
    })
}

fn src(dir: &Path, statements: &[&str]) {
    sqlite_exec(&dir.join("src.db"), statements)
}

#[test]
fn tombstones_past_the_guard_are_held_until_approved() {
    let Some(db) = postgres_database("held_tombstones") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_source(d, 1000);
    config(
        d,
        &postgres_destination(&db),
        "tombstone = \"deleted_at\"\nreconcile_every = 0",
    );
    let (code, first) = run_items(d, &[]);
    assert_eq!(
        (code, first["metrics"]["added"].as_u64()),
        (0, Some(1000)),
        "{first}"
    );

    // Half the records are soft-deleted and one other record changes.
    src(d, &[
        "UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id <= 500",
        "UPDATE items SET name = 'renamed', updated_at = '2026-02-01 00:00:00' WHERE id = 600",
    ]);
    let (code, held) = run_items(d, &[]);
    assert_eq!(code, 3, "a held run exits 3: {held}");
    assert_eq!(held["status"], "held", "{held}");
    assert_eq!(held["metrics"]["deleted"], 0, "{held}");
    assert_eq!(held["metrics"]["updated"], 1, "upserts commit: {held}");
    let message = held["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("500 deletes are held")
            && message.contains("would delete 500 of the 1000")
            && message.contains("lockstep deletes approve items"),
        "{message}"
    );
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM items"),
        1000,
        "nothing was deleted"
    );
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM items WHERE name = 'renamed'"),
        1
    );
    let list = waiting(d);
    assert_eq!(list["held"], 500, "{list}");
    // Ten sample keys, in byte order, all of soft-deleted records.
    let sample = list["sample"].as_array().unwrap();
    assert_eq!(sample.len(), 10, "{list}");
    assert_eq!(sample[0], "[100]", "{list}");
    assert!(sample.iter().all(|k| {
        let id: i64 = k
            .as_str()
            .unwrap()
            .trim_matches(['[', ']'])
            .parse()
            .unwrap();
        id <= 500
    }));

    // The checkpoint moved on: the next run reads nothing, and the deletes still wait.
    let (code, again) = run_items(d, &[]);
    assert_eq!(
        (code, again["metrics"]["read"].as_u64()),
        (3, Some(0)),
        "{again}"
    );
    assert_eq!(waiting(d)["held"], 500);
    let (_, runs, _) = run(lockstep(d).args(["runs", "items", "-o", "json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs[0]["status"], "held", "{runs}");
    let (_, text, _) = run(lockstep(d).args(["runs", "items"]));
    assert!(text.contains("held"), "{text}");

    // A record that comes back (undeleted, with identical content) cancels its delete.
    src(
        d,
        &["UPDATE items SET deleted_at = NULL, updated_at = '2026-03-01 00:00:00' WHERE id = 1"],
    );
    let (_, back) = run_items(d, &[]);
    assert_eq!(back["metrics"]["unchanged"], 1, "{back}");
    assert_eq!(waiting(d)["held"], 499);

    // Approval applies the rest through a run.
    let (out, stdout, stderr) =
        run(lockstep(d).args(["deletes", "approve", "items", "-o", "json"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let applied: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(applied["status"], "succeeded", "{applied}");
    assert_eq!(applied["metrics"]["deleted"], 499, "{applied}");
    assert_eq!(pg_count(&db, "SELECT count(*) FROM items"), 501);
    assert_eq!(pg_count(&db, "SELECT count(*) FROM items WHERE id = 1"), 1);
    let list = waiting(d);
    assert_eq!(
        (list["held"].as_u64(), list["approved"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(
        sqlite_count(&d.join("state.db"), "SELECT count(*) FROM ledger"),
        501,
        "the ledger holds what the destination holds"
    );
}

#[test]
fn reconciliation_past_the_guard_is_held_until_allowed_and_a_returning_record_cancels() {
    let Some(db) = postgres_database("held_reconcile") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_source(d, 1000);
    config(d, &postgres_destination(&db), "");
    assert_eq!(run_items(d, &[]).0, 0);

    src(d, &["DELETE FROM items WHERE id > 500"]);
    let (code, held) = run_items(d, &[]);
    assert_eq!((code, held["status"].as_str()), (3, Some("held")), "{held}");
    assert_eq!(pg_count(&db, "SELECT count(*) FROM items"), 1000);
    assert_eq!(waiting(d)["held"], 500);

    // Record 700 comes back as it was: its delete is cancelled and it was never lost.
    src(
        d,
        &["INSERT INTO items VALUES (700, 'item 700', NULL, '2026-03-01 00:00:00')"],
    );
    let (code, _) = run_items(d, &[]);
    assert_eq!(code, 3);
    assert_eq!(waiting(d)["held"], 499);

    // Discarding is possible too, but here the mass delete is wanted.
    let (code, allowed) = run_items(d, &["--allow-mass-delete"]);
    assert_eq!(code, 0, "{allowed}");
    assert_eq!(allowed["metrics"]["deleted"], 499, "{allowed}");
    assert_eq!(pg_count(&db, "SELECT count(*) FROM items"), 501);
    assert_eq!(
        pg_count(&db, "SELECT count(*) FROM items WHERE id = 700"),
        1
    );
    assert_eq!(waiting(d)["held"], 0);
}

#[test]
fn held_deletes_into_sqlite_can_be_discarded_and_ledgerless_syncs_hold_too() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_source(d, 1000);
    let sqlite = "[connections.dst]\nconnector = \"sqlite\"\nconfig = { path = \"dst.db\" }\n";
    config(
        d,
        sqlite,
        "tombstone = \"deleted_at\"\nreconcile_every = 0\nledger = false",
    );
    assert_eq!(run_items(d, &[]).0, 0);
    src(d, &["UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id <= 500"]);
    let (code, held) = run_items(d, &[]);
    assert_eq!((code, held["status"].as_str()), (3, Some("held")), "{held}");
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        1000
    );
    let (out, text, _) = run(lockstep(d).args(["deletes", "list", "items"]));
    assert!(out.status.success());
    assert!(
        text.contains("500 deletes held") && text.contains("lockstep deletes approve items"),
        "{text}"
    );
    let (out, text, _) = run(lockstep(d).args(["deletes", "discard", "items"]));
    assert!(
        out.status.success() && text.contains("discarded 500"),
        "{text}"
    );
    assert_eq!(
        sqlite_count(
            &d.join("state.db"),
            "SELECT count(*) FROM actions WHERE action = 'deletes-discard' AND actor LIKE '%@%'"
        ),
        1,
        "the discard is in the action log with who"
    );
    let (code, after) = run_items(d, &[]);
    assert_eq!(
        (code, after["metrics"]["deleted"].as_u64()),
        (0, Some(0)),
        "{after}"
    );
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        1000
    );

    // Within the guard, deletes are applied at the end of the run.
    src(d, &["UPDATE items SET deleted_at = '2026-03-01', updated_at = '2026-03-01 00:00:00' WHERE id BETWEEN 501 AND 520"]);
    let (code, within) = run_items(d, &[]);
    assert_eq!(
        (code, within["metrics"]["deleted"].as_u64()),
        (0, Some(20)),
        "{within}"
    );
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        980
    );
}

#[test]
fn a_held_run_in_the_daemon_raises_one_deletes_held_alert() {
    use std::time::{Duration, Instant};

    use crate::daemon::{count, Daemon, Receiver};

    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_source(d, 100);
    let sqlite = "[connections.dst]\nconnector = \"sqlite\"\nconfig = { path = \"dst.db\" }\n";
    config(
        d,
        sqlite,
        &format!(
            "tombstone = \"deleted_at\"\nreconcile_every = 0\n\n\
             [syncs.items.schedule]\nevery = \"1s\"\n\n\
             [[alerts.webhook]]\nurl = \"{}\"\n",
            receiver.url
        ),
    );
    let daemon = Daemon::start(d);
    daemon.wait_for(Duration::from_secs(60), "a first run of items", |d| {
        count(&d.finished_runs("items"), "succeeded") >= 1
    });
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        100
    );

    // Half the records are soft-deleted: past the guard of 10%, the next run holds them.
    src(d, &["UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id <= 50"]);
    let held_alerts = || -> Vec<serde_json::Value> {
        receiver
            .bodies()
            .into_iter()
            .filter(|b| b["kind"] == "deletes-held")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while held_alerts().is_empty() {
        assert!(
            Instant::now() < deadline,
            "no deletes-held alert; received: {:?}\n{}",
            receiver.bodies(),
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    // Later runs stay held with the same message: they do not alert again.
    daemon.wait_for(Duration::from_secs(60), "three held runs", |d| {
        count(&d.finished_runs("items"), "held") >= 3
    });

    let alerts = held_alerts();
    assert_eq!(
        alerts.len(),
        1,
        "one alert for a hold that does not change: {alerts:?}"
    );
    let alert = &alerts[0];
    let runs = daemon.finished_runs("items");
    let first_held = runs.iter().find(|r| r["status"] == "held").unwrap();
    assert_eq!(alert["sync"], "items", "{alert}");
    assert_eq!(alert["status"], "held", "{alert}");
    assert_eq!(alert["run"], first_held["id"], "{alert}");
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.contains("50 deletes are held")
            && reason.contains("would delete 50 of the 100")
            && reason.contains("lockstep deletes approve items"),
        "{reason}"
    );
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .starts_with("[lockstep] sync items: deletes held for approval (run "),
        "{alert}"
    );
    assert!(
        receiver
            .bodies()
            .iter()
            .all(|b| b["kind"] == "deletes-held"),
        "a held run is not a failure: {:?}",
        receiver.bodies()
    );
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("lockstep_alerts_total{sync=\"items\",kind=\"deletes-held\"} 1"),
        "{metrics}"
    );
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        100,
        "held deletes are not applied"
    );
    assert_eq!(waiting(d)["held"], 50);
}

#[test]
fn plan_says_deletes_past_the_guard_would_be_held_and_how_many() {
    let Some(db) = postgres_database("plan_held") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_source(d, 1000);
    config(
        d,
        &postgres_destination(&db),
        "tombstone = \"deleted_at\"\nreconcile_every = 0",
    );
    let (code, first) = run_items(d, &[]);
    assert_eq!(code, 0, "{first}");
    let plan = |args: &[&str]| {
        let mut all = vec!["plan", "items"];
        all.extend_from_slice(args);
        let (out, stdout, stderr) = run(lockstep(d).args(&all));
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };

    // Within the guard (50 of 1000, 5%): the plan shows deletes that would apply.
    src(d, &["UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id <= 50"]);
    let within: serde_json::Value = serde_json::from_str(&plan(&["--output", "json"])).unwrap();
    assert_eq!(within["metrics"]["deleted"], 50, "{within}");
    assert_eq!(within["held_deletes"], 0, "{within}");
    assert!(plan(&[]).contains("would delete (first 10)"));

    // Past it (500 of 1000): the plan says they would be held, and how many.
    src(d, &["UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id <= 500"]);
    let past: serde_json::Value = serde_json::from_str(&plan(&["--output", "json"])).unwrap();
    assert_eq!(past["held_deletes"], 500, "{past}");
    assert_eq!(
        past["metrics"]["deleted"], 0,
        "nothing would be deleted: {past}"
    );
    let notes = past["notes"].to_string();
    assert!(
        notes.contains("a run would hold 500 deletes")
            && notes.contains("500 of the 1000 records")
            && notes.contains("lockstep deletes approve items"),
        "{notes}"
    );
    let text = plan(&[]);
    assert!(
        text.contains("would hold 500 deletes, past max_delete_fraction"),
        "{text}"
    );
    assert!(!text.contains("would delete (first"), "{text}");

    // The plan wrote nothing: a run still holds all 500.
    assert_eq!(pg_count(&db, "SELECT count(*) FROM items"), 1000);
}
