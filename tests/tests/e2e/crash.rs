//! The kill harness: syncs of 100k rows (20k between SQLite files) are killed at many points —
//! injected aborts at four places of a batch (before the write, before the flush, between the
//! destination's flush and the state commit, after the commit) at five batch positions, at two
//! places of the delete phase (before the destination deletes a page of approved deletes, and
//! after it flushed them but before the state store forgot them), plus external SIGKILLs at
//! random moments — and rerun. After each recovery the destination must equal the source,
//! with no duplicates, and the metrics of every completed run must add up.
//! Scenarios: SQLite to PostgreSQL, PostgreSQL to MariaDB, and SQLite to SQLite with and
//! without a ledger (`ledger = false`), so that crash safety is covered on any machine.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lockstep_e2e::{lockstep, mysql_database, postgres_database, run, TempDatabase};
use sqlx::Connection;

/// Rows of the scenarios with a database server.
const ROWS: i64 = 100_000;
/// Rows of the SQLite-to-SQLite scenarios, which must stay quick on any machine.
const SQLITE_ROWS: i64 = 20_000;
const BATCH: usize = 2_000;
const FAULT_POINTS: [&str; 4] = [
    "before-write",
    "before-flush",
    "after-flush",
    "after-commit",
];
/// Points of the delete phase, at its first page: the second round deletes about 1% of the
/// rows (one page of approved deletes found by reconciliation).
const DELETE_FAULT_POINTS: [&str; 2] = ["before-delete", "after-delete"];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Every row of a table as canonical text, ordered by id: what "equal" means here.
type Rows = Vec<String>;

fn canonical(id: i64, email: &str, name: Option<&str>, score: i64, amount: &str) -> String {
    // Amounts are compared as exact decimals with two places, whatever the system prints.
    let amount = format!("{:.2}", amount.parse::<f64>().unwrap_or(f64::NAN));
    format!("{id}|{email}|{}|{score}|{amount}", name.unwrap_or("∅"))
}

fn generate(id: i64, round: i64) -> (String, Option<String>, i32, String, String) {
    (
        format!("user{id}@example.com"),
        if id % 11 == 0 {
            None
        } else {
            Some(format!("Ünïcode {id} r{round}"))
        },
        ((id * 7 + round) % 1000) as i32,
        format!("{}.{:02}", (id * 13 + round) % 100_000, id % 100),
        format!("2026-01-{:02} 00:00:{:02}", 1 + round, id % 60),
    )
}

enum Side<'a> {
    Sqlite(&'a Path),
    Postgres(&'a TempDatabase),
    Mysql(&'a TempDatabase),
}

impl Side<'_> {
    fn connection(&self, name: &str) -> String {
        match self {
            Side::Sqlite(p) => format!(
                "[connections.{name}]\nconnector = \"sqlite\"\nconfig = {{ path = \"{}\" }}\n",
                p.display()
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

    async fn exec(&self, statements: &[String]) {
        match self {
            Side::Sqlite(p) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(p)
                    .create_if_missing(true);
                let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                for s in statements {
                    sqlx::query(s).execute(&mut c).await.unwrap();
                }
            }
            Side::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                for s in statements {
                    sqlx::query(s).execute(&mut c).await.unwrap();
                }
            }
            Side::Mysql(db) => {
                let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
                for s in statements {
                    sqlx::query(s).execute(&mut c).await.unwrap();
                }
            }
        }
    }

    /// Creates the source table with `rows` rows.
    async fn create_source(&self, rows: i64) {
        let ddl = match self {
            Side::Sqlite(_) => "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT, score INTEGER NOT NULL, amount NUMERIC(12,2) NOT NULL, updated_at TIMESTAMP NOT NULL)",
            Side::Postgres(_) => "CREATE TABLE contacts (id BIGINT PRIMARY KEY, email TEXT NOT NULL, name TEXT, score INTEGER NOT NULL, amount NUMERIC(12,2) NOT NULL, updated_at TIMESTAMP NOT NULL)",
            Side::Mysql(_) => unreachable!("MariaDB is only a destination here"),
        };
        self.exec(&[ddl.to_owned()]).await;
        let mut inserts = Vec::new();
        for chunk in (1..=rows).collect::<Vec<_>>().chunks(1000) {
            let values: Vec<String> = chunk
                .iter()
                .map(|&id| {
                    let (email, name, score, amount, at) = generate(id, 0);
                    let name = name
                        .map(|n| format!("'{n}'"))
                        .unwrap_or_else(|| "NULL".into());
                    format!("({id}, '{email}', {name}, {score}, {amount}, '{at}')")
                })
                .collect();
            inserts.push(format!("INSERT INTO contacts VALUES {}", values.join(", ")));
        }
        self.exec(&inserts).await;
    }

    /// Changes the source of `rows` rows for another round: updates and inserts.
    async fn mutate(&self, round: i64, rows: i64) {
        let mut statements = Vec::new();
        for id in (round..rows).step_by(23) {
            let (_, name, score, amount, at) = generate(id, round);
            let name = name
                .map(|n| format!("'{n}'"))
                .unwrap_or_else(|| "NULL".into());
            statements.push(format!(
                "UPDATE contacts SET name = {name}, score = {score}, amount = {amount}, updated_at = '{at}' WHERE id = {id}"
            ));
        }
        for id in (rows + round * 1000)..(rows + round * 1000 + 500) {
            let (email, name, score, amount, at) = generate(id, round);
            let name = name
                .map(|n| format!("'{n}'"))
                .unwrap_or_else(|| "NULL".into());
            statements.push(format!(
                "INSERT INTO contacts VALUES ({id}, '{email}', {name}, {score}, {amount}, '{at}')"
            ));
        }
        // One transaction keeps this quick on every system.
        let mut all = vec!["BEGIN".to_owned()];
        all.extend(statements);
        all.push("COMMIT".to_owned());
        self.exec(&all).await;
    }

    /// Deletes about 1% of the source's rows for another round.
    async fn delete_some(&self, round: i64) {
        self.exec(&[format!("DELETE FROM contacts WHERE id % 97 = {round}")])
            .await;
    }

    async fn rows(&self) -> Rows {
        let q = "SELECT CAST(id AS SIGNED), CONVERT(email USING utf8mb4), CONVERT(name USING utf8mb4), CAST(score AS SIGNED), CAST(amount AS CHAR(40)) FROM contacts ORDER BY id";
        let pq =
            "SELECT id::bigint, email, name, score::bigint, amount::text FROM contacts ORDER BY id";
        use sqlx::Row;
        match self {
            Side::Sqlite(p) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(p);
                let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                let rows = sqlx::query(
                    "SELECT id, email, name, score, CAST(amount AS TEXT) FROM contacts ORDER BY id",
                )
                .fetch_all(&mut c)
                .await
                .unwrap();
                rows.iter()
                    .map(|r| {
                        canonical(
                            r.get(0),
                            r.get::<&str, _>(1),
                            r.get::<Option<&str>, _>(2),
                            r.get::<i64, _>(3),
                            r.get::<&str, _>(4),
                        )
                    })
                    .collect()
            }
            Side::Postgres(db) => {
                let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let rows = sqlx::query(pq).fetch_all(&mut c).await.unwrap();
                rows.iter()
                    .map(|r| {
                        canonical(
                            r.get(0),
                            r.get::<&str, _>(1),
                            r.get::<Option<&str>, _>(2),
                            r.get(3),
                            r.get::<&str, _>(4),
                        )
                    })
                    .collect()
            }
            Side::Mysql(db) => {
                let mut c = sqlx::MySqlConnection::connect(&db.url).await.unwrap();
                let rows = sqlx::query(q).fetch_all(&mut c).await.unwrap();
                rows.iter()
                    .map(|r| {
                        canonical(
                            r.get(0),
                            r.get::<&str, _>(1),
                            r.get::<Option<&str>, _>(2),
                            r.get(3),
                            r.get::<&str, _>(4),
                        )
                    })
                    .collect()
            }
        }
    }
}

/// The sync's config; `extra` adds keys to `[syncs.contacts]`.
fn config(dir: &Path, source: &Side, destination: &Side, extra: &str) {
    let text = format!(
        "[state]\nurl = \"sqlite://state.db\"\n\n{}\n{}\n[syncs.contacts]\nsource = \"src.contacts\"\ndestination = \"dst.contacts\"\nmode = \"mirror\"\ncursor = \"updated_at\"\nbatch_size = {BATCH}\nmax_delete_fraction = 0.5\n{extra}\n\n[syncs.contacts.fields]\nid = \"id\"\nemail = \"email\"\nname = \"name\"\nscore = \"score\"\namount = \"amount\"\n",
        source.connection("src"),
        destination.connection("dst"),
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

/// Runs to completion and checks that the run's metrics add up.
fn complete_run(dir: &Path) -> serde_json::Value {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", "contacts", "--output", "json"]));
    assert!(
        out.status.success(),
        "the recovery run failed:\n{stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let m = &report["metrics"];
    let n = |k: &str| m[k].as_u64().unwrap();
    assert_eq!(
        n("read"),
        n("added") + n("updated") + n("unchanged") + n("rejected"),
        "metrics add up: {report}"
    );
    assert_eq!(n("rejected"), 0, "{report}");
    report
}

/// Kills runs at every injected fault point and at random moments, then recovers, over two
/// rounds of changes to a source of `rows` rows; returns how many kill points were exercised
/// and how many of them were in the delete phase.
fn kill_and_recover(dir: &Path, source: &Side, destination: &Side, rows: i64) -> (usize, usize) {
    let rt = rt();
    let mut kills = 0;
    let mut delete_kills = 0;
    let mut seed: u64 = 0x5eed;
    for round in 0..2 {
        if round > 0 {
            rt.block_on(source.mutate(round, rows));
        }
        // Injected aborts: every point at batch positions 1..=5 of the round's first runs.
        let positions: &[u64] = if round == 0 {
            &[1, 2, 3, 4, 5]
        } else {
            &[1, 2]
        };
        // Then, in later rounds, records are deleted from the source and the delete phase is
        // killed at its points, at its first page.
        let faults = positions
            .iter()
            .flat_map(|&batch| FAULT_POINTS.iter().map(move |point| (*point, batch)));
        let delete_faults = DELETE_FAULT_POINTS.iter().map(|point| (*point, 1));
        let mut faults: Vec<(&str, u64)> = faults.collect();
        if round > 0 {
            faults.push(("delete-some", 0));
            faults.extend(delete_faults);
        }
        for (point, batch) in faults {
            if point == "delete-some" {
                rt.block_on(source.delete_some(round));
                continue;
            }
            let (out, _, stderr) = run(lockstep(dir)
                .args(["run", "contacts"])
                .env("LOCKSTEP_FAULT", format!("{point}:{batch}")));
            if !out.status.success() {
                assert!(
                    stderr.contains("injected fault"),
                    "a run failed for another reason:\n{stderr}"
                );
                kills += 1;
                if point.ends_with("-delete") {
                    delete_kills += 1;
                }
            }
        }
        // External SIGKILLs at pseudo-random moments.
        for _ in 0..4 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let delay = Duration::from_millis(150 + (seed >> 33) % 900);
            let mut child = lockstep(dir)
                .args(["run", "contacts"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap();
                kills += 1;
            }
            child.wait().unwrap();
        }
        complete_run(dir);
        let (want, got) = rt.block_on(async { (source.rows().await, destination.rows().await) });
        assert_eq!(
            got.len(),
            want.len(),
            "round {round}: row counts differ (duplicates or losses)"
        );
        if let Some(i) = (0..want.len()).find(|&i| want[i] != got[i]) {
            panic!(
                "round {round}: first difference at row {i}:\n source {}\n   dest {}",
                want[i], got[i]
            );
        }
        // A further run finds nothing to do.
        let again = complete_run(dir);
        assert_eq!(again["metrics"]["read"], 0, "{again}");
    }
    (kills, delete_kills)
}

#[test]
fn sqlite_to_postgres_survives_kills_at_every_point() {
    let Some(pg) = postgres_database("crash_dst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.db");
    let source = Side::Sqlite(&src_path);
    let destination = Side::Postgres(&pg);
    rt().block_on(source.create_source(ROWS));
    config(dir.path(), &source, &destination, "");
    let (kills, delete_kills) = kill_and_recover(dir.path(), &source, &destination, ROWS);
    eprintln!("sqlite -> postgres: {kills} kills ({delete_kills} deleting), {ROWS} rows");
    assert!(kills >= 20, "only {kills} kill points were exercised");
    assert_eq!(delete_kills, 2, "both delete-phase points were exercised");
}

#[test]
fn postgres_to_mariadb_survives_kills_at_every_point() {
    let Some(pg) = postgres_database("crash_src") else {
        return;
    };
    let Some(my) = mysql_database("crash_dst") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let source = Side::Postgres(&pg);
    let destination = Side::Mysql(&my);
    rt().block_on(source.create_source(ROWS));
    config(dir.path(), &source, &destination, "");
    let (kills, delete_kills) = kill_and_recover(dir.path(), &source, &destination, ROWS);
    eprintln!("postgres -> mariadb: {kills} kills ({delete_kills} deleting), {ROWS} rows");
    assert!(kills >= 20, "only {kills} kill points were exercised");
    assert_eq!(delete_kills, 2, "both delete-phase points were exercised");
}

/// Kills the SQLite scenarios must reach. Their 20k rows make 10 batches, and every
/// `after-commit` kill moves the checkpoint on, so the last batch positions of the first round
/// find the read already done; 15 kills still cover every point.
const SQLITE_MIN_KILLS: usize = 15;

/// The kill harness between two SQLite files: no database server needed.
fn sqlite_to_sqlite(extra: &str) -> (usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let src_path = dir.path().join("src.db");
    let dst_path = dir.path().join("dst.db");
    let source = Side::Sqlite(&src_path);
    let destination = Side::Sqlite(&dst_path);
    rt().block_on(source.create_source(SQLITE_ROWS));
    config(dir.path(), &source, &destination, extra);
    kill_and_recover(dir.path(), &source, &destination, SQLITE_ROWS)
}

#[test]
fn sqlite_to_sqlite_survives_kills_at_every_point() {
    let (kills, delete_kills) = sqlite_to_sqlite("");
    eprintln!("sqlite -> sqlite: {kills} kills ({delete_kills} deleting), {SQLITE_ROWS} rows");
    assert!(
        kills >= SQLITE_MIN_KILLS,
        "only {kills} kill points were exercised"
    );
    assert_eq!(delete_kills, 2, "both delete-phase points were exercised");
}

#[test]
fn sqlite_to_sqlite_without_a_ledger_survives_kills_at_every_point() {
    let (kills, delete_kills) = sqlite_to_sqlite("ledger = false");
    eprintln!(
        "sqlite -> sqlite, no ledger: {kills} kills ({delete_kills} deleting), {SQLITE_ROWS} rows"
    );
    assert!(
        kills >= SQLITE_MIN_KILLS,
        "only {kills} kill points were exercised"
    );
    assert_eq!(delete_kills, 2, "both delete-phase points were exercised");
}

/// A crash between the destination's delete and the state commit must not leave the ledger
/// claiming the record: when the same record comes back with identical content, it is
/// written again, not skipped as unchanged.
#[test]
fn a_record_deleted_by_a_crashed_reconciliation_comes_back_when_it_returns() {
    for point in ["before-delete", "after-delete"] {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let src_path = d.join("src.db");
        let dst_path = d.join("dst.db");
        let source = Side::Sqlite(&src_path);
        let destination = Side::Sqlite(&dst_path);
        rt().block_on(source.create_source(50));
        config(d, &source, &destination, "");
        complete_run(d);
        lockstep_e2e::sqlite_exec(&src_path, &["DELETE FROM contacts WHERE id = 7"]);
        let (out, _, stderr) = run(lockstep(d)
            .args(["run", "contacts"])
            .env("LOCKSTEP_FAULT", format!("{point}:1")));
        assert!(
            !out.status.success() && stderr.contains("injected fault"),
            "{point}: {stderr}"
        );
        // The record returns as it was, but for its (unmapped) cursor value: the same mapped
        // content, so a ledger that still claimed it would skip it as unchanged.
        let (email, name, score, amount, _) = generate(7, 0);
        let at = "2026-02-01 00:00:00";
        let name = name.map(|n| format!("'{n}'")).unwrap_or("NULL".into());
        lockstep_e2e::sqlite_exec(
            &src_path,
            &[&format!(
                "INSERT INTO contacts VALUES (7, '{email}', {name}, {score}, {amount}, '{at}')"
            )],
        );
        complete_run(d);
        let (want, got) = rt().block_on(async { (source.rows().await, destination.rows().await) });
        assert_eq!(got, want, "{point}: the destination equals the source");
    }
}
