//! The kill harness: syncs of 100k rows are killed at many points — injected aborts at four
//! places of a batch (before the write, before the flush, between the destination's flush and
//! the state commit, after the commit) at five batch positions, plus external SIGKILLs at
//! random moments — and rerun. After each recovery the destination must equal the source,
//! with no duplicates, and the metrics of every completed run must add up.
//! Scenarios: SQLite to PostgreSQL, and PostgreSQL to MariaDB.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use lockstep_e2e::{lockstep, mysql_database, postgres_database, run, TempDatabase};
use sqlx::Connection;

const ROWS: i64 = 100_000;
const BATCH: usize = 2_000;
const FAULT_POINTS: [&str; 4] = [
    "before-write",
    "before-flush",
    "after-flush",
    "after-commit",
];

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

    /// Creates the source table with ROWS rows.
    async fn create_source(&self) {
        let ddl = match self {
            Side::Sqlite(_) => "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT, score INTEGER NOT NULL, amount NUMERIC(12,2) NOT NULL, updated_at TIMESTAMP NOT NULL)",
            Side::Postgres(_) => "CREATE TABLE contacts (id BIGINT PRIMARY KEY, email TEXT NOT NULL, name TEXT, score INTEGER NOT NULL, amount NUMERIC(12,2) NOT NULL, updated_at TIMESTAMP NOT NULL)",
            Side::Mysql(_) => unreachable!("MariaDB is only a destination here"),
        };
        self.exec(&[ddl.to_owned()]).await;
        let mut inserts = Vec::new();
        for chunk in (1..=ROWS).collect::<Vec<_>>().chunks(1000) {
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

    /// Changes the source for another round: updates, inserts and deletes.
    async fn mutate(&self, round: i64) {
        let mut statements = Vec::new();
        for id in (round..ROWS).step_by(23) {
            let (_, name, score, amount, at) = generate(id, round);
            let name = name
                .map(|n| format!("'{n}'"))
                .unwrap_or_else(|| "NULL".into());
            statements.push(format!(
                "UPDATE contacts SET name = {name}, score = {score}, amount = {amount}, updated_at = '{at}' WHERE id = {id}"
            ));
        }
        for id in (ROWS + round * 1000)..(ROWS + round * 1000 + 500) {
            let (email, name, score, amount, at) = generate(id, round);
            let name = name
                .map(|n| format!("'{n}'"))
                .unwrap_or_else(|| "NULL".into());
            statements.push(format!(
                "INSERT INTO contacts VALUES ({id}, '{email}', {name}, {score}, {amount}, '{at}')"
            ));
        }
        statements.push(format!("DELETE FROM contacts WHERE id % 97 = {round}"));
        // One transaction keeps this quick on every system.
        let mut all = vec!["BEGIN".to_owned()];
        all.extend(statements);
        all.push("COMMIT".to_owned());
        self.exec(&all).await;
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

fn config(dir: &Path, source: &Side, destination: &Side) {
    let text = format!(
        "[state]\nurl = \"sqlite://state.db\"\n\n{}\n{}\n[syncs.contacts]\nsource = \"src.contacts\"\ndestination = \"dst.contacts\"\nmode = \"mirror\"\ncursor = \"updated_at\"\nbatch_size = {BATCH}\nmax_delete_fraction = 0.5\n\n[syncs.contacts.fields]\nid = \"id\"\nemail = \"email\"\nname = \"name\"\nscore = \"score\"\namount = \"amount\"\n",
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
/// rounds of changes; returns how many kill points were exercised.
fn kill_and_recover(dir: &Path, source: &Side, destination: &Side) -> usize {
    let rt = rt();
    let mut kills = 0;
    let mut seed: u64 = 0x5eed;
    for round in 0..2 {
        if round > 0 {
            rt.block_on(source.mutate(round));
        }
        // Injected aborts: every point at batch positions 1..=5 of the round's first runs.
        let positions: &[u64] = if round == 0 {
            &[1, 2, 3, 4, 5]
        } else {
            &[1, 2]
        };
        for &batch in positions {
            for point in FAULT_POINTS {
                let (out, _, stderr) = run(lockstep(dir)
                    .args(["run", "contacts"])
                    .env("LOCKSTEP_FAULT", format!("{point}:{batch}")));
                if !out.status.success() {
                    assert!(
                        stderr.contains("injected fault"),
                        "a run failed for another reason:\n{stderr}"
                    );
                    kills += 1;
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
    kills
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
    rt().block_on(source.create_source());
    config(dir.path(), &source, &destination);
    let kills = kill_and_recover(dir.path(), &source, &destination);
    eprintln!("sqlite -> postgres: {kills} kills, {ROWS} rows");
    assert!(kills >= 20, "only {kills} kill points were exercised");
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
    rt().block_on(source.create_source());
    config(dir.path(), &source, &destination);
    let kills = kill_and_recover(dir.path(), &source, &destination);
    eprintln!("postgres -> mariadb: {kills} kills, {ROWS} rows");
    assert!(kills >= 20, "only {kills} kill points were exercised");
}
