//! Engine semantics through the binary on SQLite: mirror deletes (tombstones and key-set
//! reconciliation) behind the mass-delete guard (held deletes: `deletes.rs`), plans, rejected records, leases, SIGTERM,
//! and the PostgreSQL state store.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use lockstep_e2e::{lockstep, run, sqlite_count, sqlite_exec, sqlite_pool as pool};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn sql(db: &Path, statements: &[&str]) {
    sqlite_exec(db, statements)
}

fn count(db: &Path, query: &str) -> i64 {
    sqlite_count(db, query)
}

/// A source `items` table with `rows` rows and a nullable soft-delete column.
fn create_items(dir: &Path, rows: i64) {
    sql(
        &dir.join("src.db"),
        &["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, code TEXT, deleted_at TIMESTAMP, updated_at TIMESTAMP NOT NULL)"],
    );
    rt().block_on(async {
        let pool = pool(&dir.join("src.db")).await;
        let mut tx = pool.begin().await.unwrap();
        for id in 1..=rows {
            sqlx::query("INSERT INTO items VALUES (?, ?, ?, NULL, ?)")
                .bind(id)
                .bind(format!("item {id}"))
                .bind(format!("C{id:06}"))
                .bind(format!("2026-01-01 00:00:{:02}", id % 60))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    });
}

fn config(dir: &Path, state_url: &str, sync_extra: &str) {
    let text = format!(
        r#"
[state]
url = "{state_url}"

[connections.src]
connector = "sqlite"
config = {{ path = "src.db" }}

[connections.dst]
connector = "sqlite"
config = {{ path = "dst.db" }}

[syncs.items]
source = "src.items"
destination = "dst.items"
mode = "mirror"
cursor = "updated_at"
batch_size = 100
{sync_extra}

[syncs.items.fields]
id = "id"
name = "name"
code = "code"
"#
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

fn run_json(dir: &Path, args: &[&str]) -> (bool, serde_json::Value, String) {
    let mut all = vec!["run", "items", "--output", "json"];
    all.extend_from_slice(args);
    let (out, stdout, stderr) = run(lockstep(dir).args(&all));
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.success(), value, stderr)
}

#[test]
fn mirror_deletes_arrive_from_tombstones_and_from_reconciliation_behind_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 1000);
    config(
        d,
        "sqlite://state.db",
        "tombstone = \"deleted_at\"\nmax_delete_fraction = 0.1",
    );
    let (ok, first, stderr) = run_json(d, &[]);
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(first["metrics"]["added"], 1000);

    // A soft delete travels with the incremental read.
    sql(&d.join("src.db"), &["UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id IN (10, 20)"]);
    let (ok, second, _) = run_json(d, &[]);
    assert!(ok, "{second}");
    assert_eq!(second["metrics"]["deleted"], 2, "{second}");
    assert_eq!(
        count(
            &d.join("dst.db"),
            "SELECT count(*) FROM items WHERE id IN (10, 20)"
        ),
        0
    );

    // Hard deletes are found by reconciliation.
    sql(
        &d.join("src.db"),
        &["DELETE FROM items WHERE id BETWEEN 100 AND 149"],
    );
    let (ok, third, _) = run_json(d, &[]);
    assert!(ok, "{third}");
    assert_eq!(third["metrics"]["deleted"], 50, "{third}");
    assert_eq!(count(&d.join("dst.db"), "SELECT count(*) FROM items"), 948);

    // Past max_delete_fraction the run holds its deletes, deletes nothing and says how to
    // proceed.
    sql(&d.join("src.db"), &["DELETE FROM items WHERE id > 500"]);
    let (ok, refused, _) = run_json(d, &[]);
    assert!(!ok);
    assert_eq!(refused["status"], "held", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert_eq!(refused["error"]["kind"], "mass-delete");
    assert!(
        message.contains("would delete 500 of the 948")
            && message.contains("--allow-mass-delete")
            && message.contains("lockstep deletes approve items"),
        "{message}"
    );
    assert_eq!(count(&d.join("dst.db"), "SELECT count(*) FROM items"), 948);
    let (ok, allowed, _) = run_json(d, &["--allow-mass-delete"]);
    assert!(ok, "{allowed}");
    assert_eq!(allowed["metrics"]["deleted"], 500);
    assert_eq!(count(&d.join("dst.db"), "SELECT count(*) FROM items"), 448);
    assert_eq!(
        count(
            &d.join("src.db"),
            "SELECT count(*) FROM items WHERE deleted_at IS NULL"
        ),
        448
    );
}

#[test]
fn reconcile_every_n_runs_skips_the_runs_between() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 100);
    config(d, "sqlite://state.db", "reconcile_every = 3");
    // Run 1 creates the destination: nothing there can need deleting, so it does not
    // reconcile; run 2 is the first to, then every third run.
    assert!(run_json(d, &[]).0);
    sql(&d.join("src.db"), &["DELETE FROM items WHERE id = 1"]);
    let (_, r2, _) = run_json(d, &[]);
    sql(&d.join("src.db"), &["DELETE FROM items WHERE id = 2"]);
    let mut deleted = vec![r2["metrics"]["deleted"].as_u64().unwrap()];
    for _ in 3..=5 {
        let (_, r, _) = run_json(d, &[]);
        deleted.push(r["metrics"]["deleted"].as_u64().unwrap());
    }
    assert_eq!(
        deleted,
        [1, 0, 0, 1],
        "reconciliation runs on run 2, then every third run"
    );
}

#[test]
fn plan_shows_what_a_run_would_do_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 50);
    config(d, "sqlite://state.db", "");
    assert!(run_json(d, &[]).0);
    sql(
        &d.join("src.db"),
        &[
            "UPDATE items SET name = 'renamed', updated_at = '2026-03-01 00:00:00' WHERE id = 7",
            "INSERT INTO items VALUES (51, 'fresh', 'C000051', NULL, '2026-03-01 00:00:01')",
            "DELETE FROM items WHERE id = 3",
        ],
    );
    let before = std::fs::read(d.join("dst.db")).unwrap();
    let (out, stdout, stderr) = run(lockstep(d).args(["plan", "items", "--output", "json"]));
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(plan["metrics"]["added"], 1, "{plan}");
    assert_eq!(plan["metrics"]["updated"], 1, "{plan}");
    assert_eq!(plan["metrics"]["deleted"], 1, "{plan}");
    assert_eq!(plan["adds"][0]["name"], "fresh");
    assert_eq!(plan["deletes"][0], "[3]");
    let change = &plan["updates"][0];
    assert_eq!(change["key"], "[7]");
    assert_eq!(change["changes"][0]["field"], "name");
    assert_eq!(change["changes"][0]["after"], "renamed");
    assert_eq!(change["changes"][0]["before"], "item 7", "{plan}");
    assert_eq!(
        std::fs::read(d.join("dst.db")).unwrap(),
        before,
        "plan wrote to the destination"
    );
    // The text form says the same.
    let (_, text, _) = run(lockstep(d).args(["plan", "items"]));
    assert!(
        text.contains("nothing was written") && text.contains("name: \"item 7\" -> \"renamed\""),
        "{text}"
    );
    // And the next run does what the plan said.
    let (_, after, _) = run_json(d, &[]);
    assert_eq!(
        (
            after["metrics"]["added"].as_u64(),
            after["metrics"]["updated"].as_u64(),
            after["metrics"]["deleted"].as_u64()
        ),
        (Some(1), Some(1), Some(1))
    );
}

#[test]
fn rejected_records_are_kept_listed_and_limit_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 100);
    // The match key is `code`, and three items have none: they cannot be matched.
    sql(
        &d.join("src.db"),
        &["UPDATE items SET code = NULL WHERE id IN (5, 6, 7)"],
    );
    config(d, "sqlite://state.db", "key = [\"code\"]\nmax_rejected = 5");
    let (ok, report, stderr) = run_json(d, &[]);
    assert!(ok, "{report}\n{stderr}");
    assert_eq!(report["metrics"]["rejected"], 3);
    assert_eq!(report["metrics"]["added"], 97);
    let (_, stdout, _) = run(lockstep(d).args(["rejects", "list", "items", "--output", "json"]));
    let rejects: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(rejects.as_array().unwrap().len(), 3);
    let first = &rejects[0];
    assert_eq!(first["field"], "code");
    assert!(
        first["reason"].as_str().unwrap().contains("null"),
        "{first}"
    );
    assert!(
        first["raw"]["id"].as_i64().unwrap() >= 5
            && first["raw"]["name"].as_str().unwrap().starts_with("item "),
        "the raw record is kept: {first}"
    );
    let id = first["id"].as_i64().unwrap().to_string();
    let (out, shown, _) = run(lockstep(d).args(["rejects", "show", &id]));
    assert!(
        out.status.success() && shown.contains("\"reason\""),
        "{shown}"
    );

    // Retrying without fixing anything fails again, and says why.
    let (out, retried, _) = run(lockstep(d).args(["rejects", "retry", "items"]));
    assert!(!out.status.success());
    assert!(retried.contains("3 failed again"), "{retried}");

    // Past max_rejected the run fails and points at the rejects.
    sql(&d.join("src.db"), &["UPDATE items SET code = NULL, updated_at = '2026-04-01 00:00:00' WHERE id BETWEEN 20 AND 29"]);
    let (ok, failed, _) = run_json(d, &[]);
    assert!(!ok);
    assert_eq!(failed["error"]["kind"], "too-many-rejected");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lockstep rejects list items"),
        "{failed}"
    );
}

#[test]
fn a_second_run_of_the_same_sync_is_refused_naming_the_holder_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 100_000);
    config(d, "sqlite://state.db", "reconcile_every = 0");
    let first = lockstep(d)
        .args(["run", "items", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it holds the lease and has written something.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !d.join("dst.db").exists()
        || count(&d.join("state.db"), "SELECT count(*) FROM ledger") < 1000
    {
        assert!(Instant::now() < deadline, "the first run made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (out, _, stderr) = run(lockstep(d).args(["run", "items"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("already being run by process") && stderr.contains(&first.id().to_string()),
        "{stderr}"
    );

    // SIGTERM: the first run commits the batch in hand and ends cancelled.
    unsafe { libc::kill(first.id() as i32, libc::SIGTERM) };
    let output = first.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["status"], "cancelled", "{report}");
    let written = report["metrics"]["added"].as_i64().unwrap();
    assert!(written > 0 && written < 100_000, "{report}");
    assert_eq!(
        count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        written,
        "what was committed is exactly what was written"
    );

    // The rerun finishes the job.
    let (ok, rest, _) = run_json(d, &[]);
    assert!(ok, "{rest}");
    assert_eq!(
        count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        100_000
    );
}

#[test]
fn the_state_store_can_live_in_postgresql() {
    let Some(db) = lockstep_e2e::postgres_database("state") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 300);
    config(d, &db.url, "");
    let (ok, first, stderr) = run_json(d, &[]);
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(first["metrics"]["added"], 300);
    sql(
        &d.join("src.db"),
        &["UPDATE items SET name = 'x', updated_at = '2026-05-01 00:00:00' WHERE id = 1"],
    );
    let (ok, second, _) = run_json(d, &[]);
    assert!(ok);
    assert_eq!(
        (
            second["metrics"]["read"].as_u64(),
            second["metrics"]["updated"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let (_, stdout, _) = run(lockstep(d).args(["runs", "--output", "json"]));
    let runs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    assert!(!d.join("state.db").exists(), "no SQLite state was created");
}

#[test]
fn without_a_ledger_the_destination_tells_added_updated_and_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    create_items(d, 200);
    config(
        d,
        "sqlite://state.db",
        "ledger = false\ntombstone = \"deleted_at\"",
    );
    let (ok, first, stderr) = run_json(d, &[]);
    assert!(ok, "{first}\n{stderr}");
    assert_eq!(first["metrics"]["added"], 200, "{first}");
    sql(&d.join("src.db"), &[
        "UPDATE items SET name = 'changed', updated_at = '2026-06-01 00:00:00' WHERE id IN (1, 2)",
        "UPDATE items SET updated_at = '2026-06-01 00:00:00' WHERE id = 3",
        "UPDATE items SET deleted_at = '2026-06-01', updated_at = '2026-06-01 00:00:00' WHERE id = 4",
    ]);
    let (ok, second, _) = run_json(d, &[]);
    assert!(ok, "{second}");
    let m = &second["metrics"];
    assert_eq!(
        (
            m["read"].as_u64(),
            m["updated"].as_u64(),
            m["unchanged"].as_u64(),
            m["deleted"].as_u64()
        ),
        (Some(4), Some(2), Some(1), Some(1)),
        "{second}"
    );
    assert_eq!(
        count(&d.join("state.db"), "SELECT count(*) FROM ledger"),
        0,
        "no ledger was kept"
    );
    assert_eq!(count(&d.join("dst.db"), "SELECT count(*) FROM items"), 199);
}

#[test]
fn records_the_destination_refused_succeed_on_retry_once_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    sql(&d.join("src.db"), &[
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL, updated_at TIMESTAMP NOT NULL)",
        "WITH RECURSIVE n(v) AS (SELECT 1 UNION ALL SELECT v + 1 FROM n WHERE v < 10) \
         INSERT INTO orders SELECT v, CASE v WHEN 4 THEN -4 ELSE v END, '2026-01-01 00:00:00' FROM n",
    ]);
    // The destination refuses negative quantities.
    sql(
        &d.join("dst.db"),
        &["CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER CHECK (qty >= 0))"],
    );
    std::fs::write(
        d.join("lockstep.toml"),
        "[connections.src]\nconnector = \"sqlite\"\nconfig = { path = \"src.db\" }\n\
         [connections.dst]\nconnector = \"sqlite\"\nconfig = { path = \"dst.db\" }\n\
         [syncs.orders]\nsource = \"src.orders\"\ndestination = \"dst.orders\"\nmode = \"incremental\"\ncursor = \"updated_at\"\n\
         [syncs.orders.fields]\nid = \"id\"\nqty = \"qty\"\n",
    )
    .unwrap();
    let (out, stdout, stderr) = run(lockstep(d).args(["run", "orders", "--output", "json"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        (
            report["metrics"]["added"].as_u64(),
            report["metrics"]["rejected"].as_u64()
        ),
        (Some(9), Some(1)),
        "{report}"
    );
    let (_, listed, _) = run(lockstep(d).args(["rejects", "list", "orders", "--output", "json"]));
    let rejects: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(rejects[0]["key"], "[4]", "{rejects}");
    assert!(
        rejects[0]["reason"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("check"),
        "{rejects}"
    );

    // Fix the destination, then retry: the stored record goes through.
    sql(
        &d.join("dst.db"),
        &[
            "ALTER TABLE orders RENAME TO refusing",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER)",
            "INSERT INTO orders SELECT id, qty FROM refusing",
            "DROP TABLE refusing",
        ],
    );
    let (out, retried, stderr) = run(lockstep(d).args(["rejects", "retry", "orders"]));
    assert!(out.status.success(), "{retried}\n{stderr}");
    assert!(retried.contains("1 succeeded, 0 failed again"), "{retried}");
    assert_eq!(
        count(&d.join("dst.db"), "SELECT qty FROM orders WHERE id = 4"),
        -4
    );
    assert_eq!(count(&d.join("dst.db"), "SELECT count(*) FROM orders"), 10);
    let (_, pending, _) = run(lockstep(d).args(["rejects", "list", "orders", "--output", "json"]));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&pending).unwrap(),
        serde_json::json!([])
    );
    // The retry is a run of its own in the history.
    let (_, runs, _) = run(lockstep(d).args(["runs", "orders", "--output", "json"]));
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);
    // The refused record was never in the destination, so its retry added it.
    assert_eq!(
        (
            runs[0]["metrics"]["added"].as_u64(),
            runs[0]["metrics"]["updated"].as_u64()
        ),
        (Some(1), Some(0)),
        "{runs}"
    );
}

/// Runs one statement batch on a PostgreSQL database.
fn pg_exec(url: &str, statements: &str) {
    use sqlx::Connection;
    lockstep_e2e::block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::raw_sql(statements).execute(&mut conn).await.unwrap();
    });
}

fn pg_count(url: &str, query: &str) -> i64 {
    use sqlx::Connection;
    lockstep_e2e::block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar(query)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    })
}

/// Two new PostgreSQL databases named after `prefix`: a source whose table `items` holds
/// `rows` records (ids 1 to `rows`, a name, an `updated_at` cursor), and an empty destination.
/// `None` where PostgreSQL is missing outside CI.
fn items_source_and_destination(
    prefix: &str,
    rows: u32,
) -> Option<(lockstep_e2e::TempDatabase, lockstep_e2e::TempDatabase)> {
    let src = lockstep_e2e::postgres_database(&format!("{prefix}_src"))?;
    let dst = lockstep_e2e::postgres_database(&format!("{prefix}_dst"))?;
    pg_exec(
        &src.url,
        &format!(
            "CREATE TABLE items (id bigint PRIMARY KEY, name text, updated_at timestamptz NOT NULL);
             INSERT INTO items SELECT g, 'item ' || g, timestamptz '2026-01-01' + make_interval(secs => g)
             FROM generate_series(1, {rows}) g;"
        ),
    );
    Some((src, dst))
}

#[test]
fn mirror_reconciliation_compares_key_summaries_first_and_streams_keys_only_when_they_differ() {
    let Some((src, dst)) = items_source_and_destination("summary", 500) else {
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

[connections.src]
connector = "postgres"
config = {{ url = "{}" }}

[connections.dst]
connector = "postgres"
config = {{ url = "{}" }}

[syncs.items]
source = "src.items"
destination = "dst.items"
mode = "mirror"
cursor = "updated_at"
batch_size = 100
reconcile_every = 1
"#,
            src.url, dst.url
        ),
    )
    .unwrap();
    let run_logged = || {
        let (out, stdout, stderr) = run(lockstep(d)
            .env("LOCKSTEP_LOG", "info")
            .args(["run", "items", "--output", "json"]));
        let value: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        assert!(out.status.success(), "{value}\n{stderr}");
        (value, stderr)
    };
    const MATCHED: &str = "summaries match";
    let (first, _) = run_logged();
    assert_eq!(first["metrics"]["added"], 500);

    // Nothing changed: the summaries match and nothing is deleted.
    let (second, stderr) = run_logged();
    assert_eq!(second["metrics"]["deleted"], 0, "{second}");
    assert!(stderr.contains(MATCHED), "{stderr}");

    // Hard deletes in the source: the summaries differ, the keys are compared, and the
    // deletes arrive.
    pg_exec(&src.url, "DELETE FROM items WHERE id IN (3, 30, 300)");
    let (third, stderr) = run_logged();
    assert_eq!(third["metrics"]["deleted"], 3, "{third}");
    assert!(!stderr.contains(MATCHED), "{stderr}");
    assert_eq!(pg_count(&dst.url, "SELECT count(*) FROM items"), 497);

    // A key the source never had, in a destination that lost another row so that both
    // sides count 496: the hashes differ, so the keys are compared and the stray is deleted.
    pg_exec(
        &dst.url,
        "DELETE FROM items WHERE id IN (4, 5); INSERT INTO items VALUES (9999, 'stray', now());",
    );
    pg_exec(&src.url, "DELETE FROM items WHERE id = 4");
    let (fourth, stderr) = run_logged();
    assert_eq!(fourth["metrics"]["deleted"], 1, "{fourth}");
    assert!(!stderr.contains(MATCHED), "{stderr}");
    assert_eq!(
        pg_count(&dst.url, "SELECT count(*) FROM items WHERE id = 9999"),
        0
    );

    // Once the lost row is written again, the key sets are equal again.
    pg_exec(
        &src.url,
        "UPDATE items SET updated_at = timestamptz '2026-06-01' WHERE id = 5",
    );
    let (fifth, stderr) = run_logged();
    assert_eq!(fifth["metrics"]["deleted"], 0, "{fifth}");
    assert!(stderr.contains(MATCHED), "{stderr}");
}

/// When the key sets differ and the key is one integer field, the reconciliation merges the
/// two key-ordered reads as they arrive; a source that does not read in key order (a CSV
/// file) makes the merge decline, and the key hashes find the same deletes.
#[test]
fn mirror_reconciliation_merges_integer_keys_in_order_and_falls_back_to_hashes() {
    // More keys than one reconciliation read (50,000), so the merge crosses batches.
    let Some((src, dst)) = items_source_and_destination("merge", 120_001) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let csv = d.join("drop");
    std::fs::create_dir_all(&csv).unwrap();
    let rows = |ids: &[i64]| {
        let mut text = "id,name\n".to_owned();
        for id in ids {
            text += &format!("{id},row {id}\n");
        }
        text
    };
    let write_csv = |ids: &[i64]| {
        let path = csv.join("items.csv");
        std::fs::write(&path, rows(ids)).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
    };
    // Out of key order, as a file can be.
    write_csv(&[5, 3, 9, 1, 7, 2]);
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            r#"
[state]
url = "sqlite://state.db"

[connections.src]
connector = "postgres"
config = {{ url = "{src}" }}

[connections.dst]
connector = "postgres"
config = {{ url = "{dst}" }}

[connections.drop]
connector = "files"
[connections.drop.config.streams.items]
path = "drop/items.csv"
primary_key = ["id"]
fields = {{ id = "int64" }}

[syncs.items]
source = "src.items"
destination = "dst.items"
mode = "mirror"
cursor = "updated_at"
reconcile_every = 1

[syncs.from_file]
source = "drop.items"
destination = "dst.from_file"
mode = "mirror"
reconcile_every = 1
max_delete_fraction = 0.5
"#,
            src = src.url,
            dst = dst.url
        ),
    )
    .unwrap();
    let run_logged = |sync: &str| {
        let (out, stdout, stderr) = run(lockstep(d)
            .env("LOCKSTEP_LOG", "info")
            .args(["run", sync, "--output", "json"]));
        let value: serde_json::Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
        assert!(out.status.success(), "{value}\n{stderr}");
        (value, stderr)
    };
    const MERGED: &str = "(key-ordered merge) found records the source no longer has";
    const DECLINED: &str = "key-ordered merge declined";
    let (first, _) = run_logged("items");
    assert_eq!(first["metrics"]["added"], 120001, "{first}");

    // Deletes at both ends, at the edges of the reads' batches, and strays in the
    // destination before the first key and after the last.
    // A late row too (its cursor value is older than the checkpoint, so no run reads it),
    // with keys past the destination's: the walk ends with the destination and leaves the
    // source's read unfinished.
    pg_exec(
        &src.url,
        "DELETE FROM items WHERE id IN (1, 49999, 50000, 50001, 70000, 100000, 120001);
         INSERT INTO items SELECT g, 'late', timestamptz '2000-01-01'
         FROM generate_series(200000, 260000) g;",
    );
    pg_exec(
        &dst.url,
        "INSERT INTO items VALUES (-5, 'stray', now()), (150000, 'stray', now())",
    );
    let (second, stderr) = run_logged("items");
    assert_eq!(second["metrics"]["deleted"], 9, "{second}");
    assert!(stderr.contains(MERGED), "{stderr}");
    assert!(!stderr.contains(DECLINED), "{stderr}");
    let keys = "SELECT (count(*) * 1000000 + sum(id) % 1000000)::int8 FROM items \
                WHERE name <> 'late'";
    assert_eq!(pg_count(&dst.url, keys), pg_count(&src.url, keys));
    assert_eq!(pg_count(&dst.url, "SELECT count(*) FROM items"), 119994);

    // The file's keys are not in order: the merge declines and the hashes find the deletes.
    let (first, _) = run_logged("from_file");
    assert_eq!(first["metrics"]["added"], 6, "{first}");
    write_csv(&[5, 9, 1, 7]);
    let (second, stderr) = run_logged("from_file");
    assert_eq!(second["metrics"]["deleted"], 2, "{second}");
    assert!(stderr.contains(DECLINED), "{stderr}");
    assert!(stderr.contains("ascending order"), "{stderr}");
    assert_eq!(
        pg_count(
            &dst.url,
            "SELECT count(*) FROM from_file WHERE id IN (2, 3)"
        ),
        0
    );
    assert_eq!(pg_count(&dst.url, "SELECT count(*) FROM from_file"), 4);
}

/// A run commits each batch while the next one is diffed and written (`pipeline`): the next
/// batch must see the ledger rows and the waiting deletes of the batch still committing.
#[test]
fn a_batch_sees_what_the_batch_before_it_wrote_while_that_commit_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Codes are the sync's key; id 150 repeats id 50's code, one batch later; id 280 repeats
    // id 20's, two batches later, when only the committed ledger knows it (the first run
    // starts with an empty ledger and looks up only keys it has met: `seen_keys`).
    let mut statements = vec![
        "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, code TEXT, deleted_at TIMESTAMP, updated_at TIMESTAMP NOT NULL)".to_owned(),
    ];
    for id in 1..=300 {
        let code = match id {
            150 => 50,
            280 => 20,
            _ => id,
        };
        statements.push(format!(
            "INSERT INTO items VALUES ({id}, 'item {id}', 'C{code}', NULL, datetime('2026-01-01', '+{id} seconds'))"
        ));
    }
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    sql(&d.join("src.db"), &statements);
    let write_config = |batch_size: u32| {
        std::fs::write(
            d.join("lockstep.toml"),
            format!(
                r#"
[state]
url = "sqlite://state.db"

[connections.src]
connector = "sqlite"
config = {{ path = "src.db" }}

[connections.dst]
connector = "sqlite"
config = {{ path = "dst.db" }}

[syncs.items]
source = "src.items"
destination = "dst.items"
mode = "mirror"
cursor = "updated_at"
key = ["code"]
tombstone = "deleted_at"
batch_size = {batch_size}

[syncs.items.fields]
code = "code"
name = "name"
"#
            ),
        )
        .unwrap();
    };
    write_config(100);
    let (ok, first, stderr) = run_json(d, &[]);
    assert!(ok, "{first}\n{stderr}");
    // The second C50 finds the first one's ledger row, though its batch's commit may not
    // have landed when the second batch was diffed.
    assert_eq!(first["metrics"]["read"], 300, "{first}");
    assert_eq!(first["metrics"]["added"], 298, "{first}");
    assert_eq!(first["metrics"]["updated"], 2, "{first}");
    let dst = d.join("dst.db");
    assert_eq!(count(&dst, "SELECT count(*) FROM items"), 298);
    assert_eq!(
        count(
            &dst,
            "SELECT count(*) FROM items WHERE (code = 'C50' AND name = 'item 150') OR (code = 'C20' AND name = 'item 280')"
        ),
        2
    );
    assert_eq!(
        count(
            &d.join("state.db"),
            "SELECT count(*) FROM ledger WHERE sync = 'items'"
        ),
        298
    );

    // One record per batch: C60 is tombstoned in one batch, and in the next id 161 takes the
    // code C60, which cancels the delete waiting for it; C161 is gone from the source.
    write_config(1);
    sql(
        &d.join("src.db"),
        &[
            "UPDATE items SET deleted_at = '2026-02-01', updated_at = '2026-02-01 00:00:00' WHERE id = 60",
            "UPDATE items SET code = 'C60', updated_at = '2026-02-01 00:00:01' WHERE id = 161",
        ],
    );
    let (ok, second, stderr) = run_json(d, &[]);
    assert!(ok, "{second}\n{stderr}");
    assert_eq!(second["metrics"]["read"], 2, "{second}");
    assert_eq!(second["metrics"]["deleted"], 1, "only C161 goes: {second}");
    assert_eq!(
        count(&dst, "SELECT count(*) FROM items WHERE code = 'C161'"),
        0
    );
    assert_eq!(
        count(
            &dst,
            "SELECT count(*) FROM items WHERE code = 'C60' AND name = 'item 161'"
        ),
        1,
        "the record present again keeps its place"
    );
    assert_eq!(count(&dst, "SELECT count(*) FROM items"), 297);
}
