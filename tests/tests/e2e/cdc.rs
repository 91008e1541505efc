//! Change data capture from PostgreSQL (`mode = "cdc"`): a snapshot, then inserts, updates
//! and deletes from a logical replication slot in commit order — a transaction of 100,000
//! rows and interleaved transactions of two connections included; kills between the
//! destination's commit and the slot's confirmation, then a rerun, leave the destination
//! equal to the source; an update that leaves a TOASTed column unchanged keeps its value; a
//! table without a replica identity is refused with the documented message; the checkpoint
//! reports the WAL the slot retains; each run hands the slot over to the next through an
//! anchor slot at its committed checkpoint, and an anchor past it is dropped, not taken.
//!
//! The server must run with `wal_level = logical` (`.ci/run` sets it); without it these tests
//! are skipped, and under CI they fail. Slots are cluster-wide: each test names its own and
//! drops it before its databases go.

use std::path::Path;

use lockstep_e2e::{lockstep, postgres_database, run, TempDatabase};
use sqlx::{Connection, Row};

static SLOTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A slot and publication name of this test alone, dropped (slot) with the guard.
struct Slot {
    name: String,
    url: String,
}

impl Slot {
    fn new(source: &TempDatabase) -> Slot {
        let n = SLOTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Slot {
            name: format!("lockstep_e2e_cdc_{}_{n}", std::process::id()),
            url: source.url.clone(),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let (url, name) = (self.url.clone(), self.name.clone());
        // A thread of its own: the drop may happen inside a test's runtime.
        let _ = std::thread::spawn(move || {
            lockstep_e2e::block_on(async {
                let Ok(mut c) = sqlx::PgConnection::connect(&url).await else {
                    return;
                };
                // A worker of a killed daemon may still hold it for a moment.
                for _ in 0..50 {
                    let _ = sqlx::query(
                        "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
                         WHERE slot_name = $1 AND active_pid IS NOT NULL",
                    )
                    .bind(&name)
                    .execute(&mut c)
                    .await;
                    // The slot, and the anchor a snapshot run leaves for the next run.
                    let dropped = sqlx::query(
                        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                         WHERE slot_name IN ($1, $1 || '_anchor')",
                    )
                    .bind(&name)
                    .execute(&mut c)
                    .await;
                    if dropped.is_ok() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            })
        })
        .join();
    }
}

/// Whether the server decodes logically; records a skip (a failure under CI) when not.
fn logical_decoding(db: &TempDatabase) -> bool {
    let level: String = lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar("SHOW wal_level")
            .fetch_one(&mut c)
            .await
            .unwrap()
    });
    if level == "logical" {
        return true;
    }
    lockstep_test_support::skip::skip_or_fail(format!(
        "the PostgreSQL server runs with wal_level = {level}; cdc needs logical (.ci/run sets it)"
    ));
    false
}

/// A source and a destination database with logical decoding, or `None` after a skip.
fn databases(prefix: &str) -> Option<(TempDatabase, TempDatabase)> {
    let source = postgres_database(&format!("{prefix}_src"))?;
    let destination = postgres_database(&format!("{prefix}_dst"))?;
    logical_decoding(&source).then_some((source, destination))
}

fn exec(db: &TempDatabase, statements: &[&str]) {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        for s in statements {
            sqlx::query(s)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    })
}

/// Every row of `people` as text, ordered by id (the bio as its length and md5).
fn rows(db: &TempDatabase) -> Vec<String> {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query(
            "SELECT format('%s|%s|%s|%s|%s', id, coalesce(name, '∅'), coalesce(score::text, '∅'), \
             coalesce(length(bio)::text, '∅'), coalesce(md5(bio), '∅')) FROM people ORDER BY id",
        )
        .fetch_all(&mut c)
        .await
        .map(|rows| rows.iter().map(|r| r.get::<String, _>(0)).collect())
        .unwrap_or_default()
    })
}

fn config(
    dir: &Path,
    source: &TempDatabase,
    destination: &TempDatabase,
    slot: &Slot,
    batch: usize,
) {
    let text = format!(
        "[state]\nurl = \"sqlite://state.db\"\n\n\
         [connections.src]\nconnector = \"postgres\"\nconfig = {{ url = \"{}\" }}\n\n\
         [connections.dst]\nconnector = \"postgres\"\nconfig = {{ url = \"{}\" }}\n\n\
         [syncs.people]\nsource = \"src.people\"\ndestination = \"dst.people\"\nmode = \"cdc\"\n\
         key = [\"id\"]\nbatch_size = {batch}\nmax_delete_fraction = 0.9\n\n\
         [syncs.people.cdc]\nslot = \"{}\"\npublication = \"{}\"\nmax_retained_wal = \"1MB\"\n",
        source.url, destination.url, slot.name, slot.name
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

/// `lockstep run people --output json`, which must succeed: its report.
fn run_ok(dir: &Path) -> serde_json::Value {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", "people", "--output", "json"]));
    assert!(out.status.success(), "the run failed:\n{stdout}\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A source of `rows` people (`p1`, `p2`, ...; the score is the id) and a cdc sync of it in
/// batches of `batch` whose first run (the snapshot) succeeded: the source, the destination,
/// the slot and the directory of the sync's config and state (dropped in reverse, the slot
/// before the databases). `None` when the test is skipped (no logical decoding).
fn synced_people(
    prefix: &str,
    rows: u32,
    batch: usize,
) -> Option<(TempDatabase, TempDatabase, Slot, tempfile::TempDir)> {
    let (source, destination) = databases(prefix)?;
    let slot = Slot::new(&source);
    let dir = tempfile::tempdir().unwrap();
    let people =
        format!("INSERT INTO people SELECT g, 'p' || g, g, NULL FROM generate_series(1, {rows}) g");
    exec(&source, &[TABLE, &people]);
    config(dir.path(), &source, &destination, &slot, batch);
    run_ok(dir.path());
    Some((source, destination, slot, dir))
}

/// `score` is NOT NULL: a delete in the change log carries the key alone.
const TABLE: &str =
    "CREATE TABLE people (id BIGINT PRIMARY KEY, name TEXT, score INTEGER NOT NULL, bio TEXT)";

/// The sync's committed checkpoint.
fn checkpoint(dir: &Path) -> serde_json::Value {
    let state = dir.join("state.db");
    let text: String = lockstep_e2e::block_on(async {
        let pool = lockstep_e2e::sqlite_pool(&state).await;
        sqlx::query_scalar("SELECT value FROM checkpoints WHERE sync = 'people'")
            .fetch_one(&pool)
            .await
            .unwrap()
    });
    serde_json::from_str(&text).unwrap()
}

/// The slot's confirmed position.
fn confirmed(db: &TempDatabase, slot: &Slot) -> String {
    confirmed_position(db, &slot.name)
        .unwrap_or_else(|| panic!("replication slot `{}` does not exist", slot.name))
}

/// The confirmed position of the replication slot `name`, if the server has it.
fn confirmed_position(db: &TempDatabase, name: &str) -> Option<String> {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(name)
        .fetch_optional(&mut c)
        .await
        .unwrap()
    })
}

#[test]
fn cdc_applies_inserts_updates_and_deletes_in_commit_order() {
    let Some((source, destination)) = databases("cdc_order") else {
        return;
    };
    let slot = Slot::new(&source);
    let dir = tempfile::tempdir().unwrap();
    exec(
        &source,
        &[
            TABLE,
            "INSERT INTO people SELECT g, 'p' || g, g % 100, NULL FROM generate_series(1, 1000) g",
        ],
    );
    config(dir.path(), &source, &destination, &slot, 5_000);
    let first = run_ok(dir.path());
    assert_eq!(first["metrics"]["added"], 1000, "{first}");
    assert_eq!(rows(&source), rows(&destination));

    // One transaction of 100,000 rows, then updates and deletes.
    exec(
        &source,
        &[
            "INSERT INTO people SELECT g, 'big' || g, g % 7, NULL FROM generate_series(1001, 101000) g",
            "UPDATE people SET score = -1 WHERE id % 10 = 0 AND id <= 2000",
            "DELETE FROM people WHERE id % 100 = 1",
            // A key deleted and inserted again, and a key changed.
            "DELETE FROM people WHERE id = 5",
            "INSERT INTO people VALUES (5, 'back', 55, NULL)",
            "UPDATE people SET id = 200000 WHERE id = 6",
        ],
    );
    // Interleaved transactions of two connections: commit order, not statement order, wins.
    lockstep_e2e::block_on(async {
        let mut a = sqlx::PgConnection::connect(&source.url).await.unwrap();
        let mut b = sqlx::PgConnection::connect(&source.url).await.unwrap();
        for s in ["BEGIN", "UPDATE people SET name = 'a first' WHERE id = 7"] {
            sqlx::query(s).execute(&mut a).await.unwrap();
        }
        for s in [
            "BEGIN",
            "UPDATE people SET name = 'b' WHERE id = 8",
            "INSERT INTO people VALUES (300000, 'b new', 1, NULL)",
            "DELETE FROM people WHERE id = 9",
        ] {
            sqlx::query(s).execute(&mut b).await.unwrap();
        }
        // Row 8 is locked by b: a's update waits until b commits, from another branch.
        let a_update = sqlx::query("UPDATE people SET name = 'a' WHERE id = 8").execute(&mut a);
        let commit_b = async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            sqlx::query("COMMIT").execute(&mut b).await.unwrap();
        };
        let (updated, ()) = tokio::join!(a_update, commit_b);
        updated.unwrap();
        sqlx::query("INSERT INTO people VALUES (9, 'a nine', 9, NULL)")
            .execute(&mut a)
            .await
            .unwrap();
        sqlx::query("COMMIT").execute(&mut a).await.unwrap();
    });
    let second = run_ok(dir.path());
    let m = &second["metrics"];
    assert!(m["read"].as_u64().unwrap() >= 100_000, "{second}");
    assert!(m["deleted"].as_u64().unwrap() >= 1_000, "{second}");
    let expected = rows(&source);
    assert!(
        expected.iter().any(|r| r.starts_with("8|a|")),
        "a committed last"
    );
    assert!(expected.iter().any(|r| r.starts_with("9|a nine|")));
    assert!(expected.iter().any(|r| r.starts_with("200000|p6|")));
    assert_eq!(expected.len(), rows(&destination).len());
    assert_eq!(expected, rows(&destination));

    // Nothing new: nothing read, and the slot is confirmed at the next run.
    let third = run_ok(dir.path());
    assert_eq!(third["metrics"]["read"], 0, "{third}");
    assert_eq!(expected, rows(&destination));
}

/// A run's batches overlap (a batch's state commit runs while the next one is looked up and
/// written): a key changed in batches two apart must be diffed against its value from the
/// first of them, not the store's older one. Here keys go back to their values before the
/// run, which a stale lookup would call unchanged and leave unwritten.
#[test]
fn cdc_keys_changed_in_batches_two_apart_end_with_their_last_values() {
    let Some((source, destination, _slot, dir)) = synced_people("cdc_two_apart", 10, 1) else {
        return;
    };
    assert_eq!(rows(&source), rows(&destination));

    // One change a transaction and a batch: keys 1 to 4 each change, then change back two
    // batches later, so that every second batch has a key of the batch two before it; keys 9
    // and 10 change back in the very next batch.
    let mut changes = Vec::new();
    for id in 1..=4 {
        changes.push(format!(
            "UPDATE people SET name = 'changed' WHERE id = {id}"
        ));
        changes.push(format!(
            "UPDATE people SET score = score + 100 WHERE id = {}",
            id + 4
        ));
        changes.push(format!("UPDATE people SET name = 'p{id}' WHERE id = {id}"));
    }
    for id in [9, 10] {
        changes.push(format!(
            "UPDATE people SET name = 'changed' WHERE id = {id}"
        ));
        changes.push(format!("UPDATE people SET name = 'p{id}' WHERE id = {id}"));
    }
    let statements: Vec<&str> = changes.iter().map(String::as_str).collect();
    exec(&source, &statements);
    let second = run_ok(dir.path());
    let m = &second["metrics"];
    assert_eq!(m["read"], 16, "{second}");
    assert_eq!(m["updated"], 16, "{second}");
    assert_eq!(m["unchanged"], 0, "{second}");
    let expected = rows(&source);
    assert!(
        expected.iter().any(|r| r.starts_with("1|p1|1|")),
        "{expected:?}"
    );
    assert!(
        expected.iter().any(|r| r.starts_with("10|p10|10|")),
        "{expected:?}"
    );
    assert_eq!(expected, rows(&destination));
}

#[test]
fn cdc_kills_between_commit_and_slot_confirmation_lose_and_repeat_nothing() {
    let Some((source, destination, slot, dir)) = synced_people("cdc_kill", 3000, 500) else {
        return;
    };
    for (round, fault) in [
        "after-commit:2",
        "after-flush:3",
        "after-commit:1",
        "before-flush:2",
    ]
    .iter()
    .enumerate()
    {
        let round = round as i64 + 1;
        // Many transactions, some bigger than a batch, and keys that come and go.
        let mut statements = vec![
            format!("UPDATE people SET score = score + {round} WHERE id % 3 = 0"),
            format!("DELETE FROM people WHERE id % 50 = {round}"),
            format!(
                "INSERT INTO people SELECT g, 'r{round}', g, NULL FROM generate_series({}, {}) g",
                10_000 * round,
                10_000 * round + 700
            ),
        ];
        for id in 1..40 {
            statements.push(format!(
                "UPDATE people SET name = 'n{round}_{id}' WHERE id = {}",
                id * 31
            ));
        }
        statements.push(format!(
            "DELETE FROM people WHERE id = {}",
            10_000 * round + 3
        ));
        statements.push(format!(
            "INSERT INTO people VALUES ({}, 'again', 0, NULL)",
            10_000 * round + 3
        ));
        let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
        exec(&source, &refs);

        let (out, stdout, stderr) = run(lockstep(dir.path())
            .args(["run", "people", "--output", "json"])
            .env("LOCKSTEP_FAULT", fault));
        assert!(
            !out.status.success(),
            "the run with fault {fault} should have been killed:\n{stdout}\n{stderr}"
        );
        let report = run_ok(dir.path());
        assert_eq!(
            rows(&source),
            rows(&destination),
            "after a kill at {fault} and a rerun: {report}"
        );
        // Another run finds nothing, and confirms the slot to the checkpoint it opened with
        // (it may commit a later one: WAL of other databases moves the position too).
        let committed = checkpoint(dir.path())["lsn"].as_str().unwrap().to_owned();
        let next = run_ok(dir.path());
        assert_eq!(next["metrics"]["read"], 0, "{next}");
        assert_eq!(
            confirmed(&source, &slot),
            committed,
            "after the round with {fault}"
        );
    }
}

#[test]
fn cdc_keeps_unchanged_toasted_values() {
    let Some((source, destination)) = databases("cdc_toast") else {
        return;
    };
    let slot = Slot::new(&source);
    let dir = tempfile::tempdir().unwrap();
    // About 100 kB of hex text: stored out of line (TOASTed), so that an update leaving it
    // alone does not send it.
    let bio =
        "(SELECT string_agg(md5(random()::text || g::text), '') FROM generate_series(1, 3000) g)";
    exec(
        &source,
        &[
            TABLE,
            // A generated column, which pgoutput does not send either.
            "ALTER TABLE people ADD COLUMN twice INTEGER GENERATED ALWAYS AS (score * 2) STORED",
            &format!(
                "INSERT INTO people SELECT g, 'p' || g, g, {bio} FROM generate_series(1, 20) g"
            ),
        ],
    );
    config(dir.path(), &source, &destination, &slot, 1000);
    run_ok(dir.path());
    exec(
        &source,
        &[
            "UPDATE people SET name = 'renamed' WHERE id <= 10",
            // Twice in one batch, and an update of a row deleted later.
            "UPDATE people SET score = 0 WHERE id = 1",
            "UPDATE people SET name = 'gone soon' WHERE id = 20",
            "DELETE FROM people WHERE id = 20",
        ],
    );
    run_ok(dir.path());
    let (s, d) = (rows(&source), rows(&destination));
    assert!(s[0].starts_with("1|renamed|0|96000|"), "{}", s[0]);
    assert_eq!(s, d);
    let twice = |db: &TempDatabase| -> Vec<String> {
        lockstep_e2e::block_on(async {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar("SELECT format('%s|%s', id, twice) FROM people ORDER BY id")
                .fetch_all(&mut c)
                .await
                .unwrap()
        })
    };
    assert_eq!(twice(&source)[0], "1|0");
    assert_eq!(twice(&source), twice(&destination));
}

#[test]
fn cdc_refuses_a_table_without_replica_identity() {
    let Some((source, destination)) = databases("cdc_ident") else {
        return;
    };
    let slot = Slot::new(&source);
    let dir = tempfile::tempdir().unwrap();
    exec(
        &source,
        &[
            "CREATE TABLE people (id BIGINT NOT NULL, name TEXT, score INTEGER, bio TEXT)",
            "INSERT INTO people VALUES (1, 'a', 1, NULL)",
        ],
    );
    config(dir.path(), &source, &destination, &slot, 1000);
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["run", "people"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let text = format!("{stdout}\n{stderr}");
    assert!(
        text.contains("has no primary key and no replica identity")
            && text.contains("REPLICA IDENTITY FULL"),
        "{text}"
    );
    assert!(rows(&destination).is_empty());
}

#[test]
fn cdc_wal_retention_alert_fires() {
    let Some((source, destination)) = databases("cdc_wal") else {
        return;
    };
    let slot = Slot::new(&source);
    let dir = tempfile::tempdir().unwrap();
    exec(
        &source,
        &[TABLE, "INSERT INTO people VALUES (1, 'a', 1, NULL)"],
    );
    config(dir.path(), &source, &destination, &slot, 1000);
    run_ok(dir.path());
    assert!(
        checkpoint(dir.path())["retained_wal_bytes"]
            .as_u64()
            .unwrap()
            < 1 << 20
    );

    // The daemon runs the sync every second and posts its alerts to a local webhook.
    let receiver = crate::daemon::Receiver::start();
    let mut text = std::fs::read_to_string(dir.path().join("lockstep.toml")).unwrap();
    text += &format!(
        "\n[syncs.people.schedule]\nevery = \"1s\"\n\n[[alerts.webhook]]\nurl = \"{}\"\n",
        receiver.url
    );
    std::fs::write(dir.path().join("lockstep.toml"), text).unwrap();
    let daemon = crate::daemon::Daemon::start(dir.path());
    // Several MB of WAL that the slot has not confirmed when the next run starts.
    exec(
        &source,
        &["INSERT INTO people SELECT g, repeat('x', 200), g, NULL FROM generate_series(2, 30000) g"],
    );
    let alerts = || {
        receiver
            .bodies()
            .into_iter()
            .filter(|b| b["kind"] == "wal-retention")
            .collect::<Vec<_>>()
    };
    daemon.wait_for(
        std::time::Duration::from_secs(60),
        "the wal-retention alert",
        |_| !alerts().is_empty(),
    );
    let alert = &alerts()[0];
    let reason = alert["reason"].as_str().unwrap();
    assert!(
        reason.contains(&format!("replication slot `{}` retains", slot.name))
            && reason.contains("above max_retained_wal (1.0 MB)")
            && reason.contains("pg_drop_replication_slot"),
        "{alert}"
    );
    assert!(
        checkpoint(dir.path())["retained_wal_bytes"]
            .as_u64()
            .unwrap()
            > 1 << 20
    );
    // The destination catches up (the crossing rule itself is a unit test of the daemon:
    // other tests' WAL on the same server would make a count here flaky).
    daemon.wait_for(
        std::time::Duration::from_secs(60),
        "the destination to catch up",
        |_| rows(&destination).len() == 30_000,
    );
    // `/metrics` shows the slot's retained WAL and the sync's lag, from its checkpoint.
    let gauge = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{sync=\"people\"}} ")))
            .and_then(|v| v.parse().ok())
    };
    let metrics = daemon.get("/metrics");
    let retained = gauge(&metrics, "lockstep_cdc_retained_wal_bytes")
        .unwrap_or_else(|| panic!("no retained-WAL gauge in\n{metrics}"));
    assert!(retained >= 0.0, "{metrics}");
    let lag = gauge(&metrics, "lockstep_cdc_lag_seconds")
        .unwrap_or_else(|| panic!("no lag gauge in\n{metrics}"));
    // The sync runs every second: its destination is a few seconds behind at most.
    assert!((0.0..30.0).contains(&lag), "lag {lag}\n{metrics}");
    // Stopped with its workers (a killed daemon's worker would finish its run on its own).
    let mut daemon = daemon;
    daemon.stop(std::time::Duration::from_secs(60));

    // `lockstep status` says the same, and its lag grows while no run catches up.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["status", "--output", "json"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let cdc = &status[0]["cdc"];
    assert_eq!(cdc["slot"], slot.name.as_str(), "{status}");
    assert_eq!(
        cdc["retained_wal_bytes"],
        checkpoint(dir.path())["retained_wal_bytes"],
        "{status}"
    );
    let later = cdc["lag_seconds"]
        .as_f64()
        .unwrap_or_else(|| panic!("{status}"));
    assert!(
        later >= 1.5 && later < lag + 60.0,
        "lag {later} after {lag}: {status}"
    );
    let (out, stdout, _) = run(lockstep(dir.path()).arg("status"));
    assert!(out.status.success());
    assert!(
        stdout.contains(&format!(
            "cdc people: replication slot `{}` retained",
            slot.name
        )) && stdout.contains("the destination has every change committed before"),
        "{stdout}"
    );
}

#[test]
fn cdc_slot_moves_past_the_wal_of_other_tables() {
    let Some((source, destination)) = databases("cdc_quiet") else {
        return;
    };
    let slot = Slot::new(&source);
    let dir = tempfile::tempdir().unwrap();
    exec(
        &source,
        &[
            TABLE,
            "INSERT INTO people VALUES (1, 'a', 1, NULL)",
            "CREATE TABLE busy (id BIGINT PRIMARY KEY, v TEXT)",
        ],
    );
    config(dir.path(), &source, &destination, &slot, 1000);
    run_ok(dir.path());
    // Only another table changes: nothing to read, but the slot must not hold that WAL.
    exec(
        &source,
        &["INSERT INTO busy SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"],
    );
    let busy_end: String = lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&source.url).await.unwrap();
        sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut c)
            .await
            .unwrap()
    });
    let quiet = run_ok(dir.path());
    assert_eq!(quiet["metrics"]["read"], 0, "{quiet}");
    // The next run confirms the slot to the quiet run's checkpoint: past the busy WAL.
    run_ok(dir.path());
    let passed: bool = lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&source.url).await.unwrap();
        sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $1::text::pg_lsn FROM pg_replication_slots \
             WHERE slot_name = $2",
        )
        .bind(&busy_end)
        .bind(&slot.name)
        .fetch_one(&mut c)
        .await
        .unwrap()
    });
    assert!(
        passed,
        "the slot stayed at {} before the other table's WAL ended at {busy_end}",
        confirmed(&source, &slot)
    );
    assert_eq!(rows(&source), rows(&destination));
}

/// How many rows `query` (with the slot's name as `$1`) counts on the source server.
fn count_on(db: &TempDatabase, query: &str, name: &str) -> i64 {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(query)
            .bind(name)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
    })
}

/// Replication slots named `slot` or starting with it (a read's temporary copies).
fn slots_of(db: &TempDatabase, slot: &Slot) -> i64 {
    count_on(
        db,
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1 \
         OR starts_with(slot_name::text, $1 || '_tmp_')",
        &slot.name,
    )
}

fn publications_named(db: &TempDatabase, name: &str) -> i64 {
    count_on(
        db,
        "SELECT count(*) FROM pg_publication WHERE pubname = $1",
        name,
    )
}

fn has_checkpoint(dir: &Path) -> bool {
    lockstep_e2e::sqlite_count(
        &dir.join("state.db"),
        "SELECT count(*) FROM checkpoints WHERE sync = 'people'",
    ) > 0
}

#[test]
fn cdc_drop_removes_the_slot_and_publication_and_a_later_run_takes_a_new_snapshot() {
    let Some((source, destination, slot, dir)) = synced_people("cdc_drop", 300, 100) else {
        return;
    };
    exec(
        &source,
        &["UPDATE people SET name = 'changed' WHERE id <= 10"],
    );
    run_ok(dir.path());
    assert_eq!(rows(&source), rows(&destination));
    assert_eq!(slots_of(&source, &slot), 1);
    assert_eq!(publications_named(&source, &slot.name), 1);

    // A run in progress elsewhere holds the sync's lease: the drop is refused, nothing dropped.
    let state = dir.path().join("state.db");
    lockstep_e2e::sqlite_exec(
        &state,
        &[
            "UPDATE leases SET token = token + 1, host = 'another-node', pid = 4242, \
           expires_at = '9999-12-31T00:00:00Z'",
        ],
    );
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["cdc", "drop", "people"]));
    assert!(
        !out.status.success(),
        "dropped under a held lease:\n{stdout}"
    );
    assert!(
        stderr.contains("is already being run by process 4242 on host `another-node`"),
        "{stderr}"
    );
    assert_eq!(
        slots_of(&source, &slot),
        1,
        "the slot went despite the lease"
    );
    assert_eq!(publications_named(&source, &slot.name), 1);
    assert!(has_checkpoint(dir.path()));
    lockstep_e2e::sqlite_exec(
        &state,
        &["UPDATE leases SET expires_at = '2000-01-01T00:00:00Z'"],
    );

    // The drop: both objects go, and the sync's checkpoint with them.
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["cdc", "drop", "people"]));
    assert!(out.status.success(), "cdc drop failed:\n{stdout}\n{stderr}");
    for line in [
        format!("replication slot  {}", slot.name),
        format!("publication       {}", slot.name),
    ] {
        let shown = stdout
            .lines()
            .any(|l| l.starts_with(&line) && l.contains("dropped"));
        assert!(shown, "no `{line} ... dropped` line in:\n{stdout}");
    }
    assert!(stdout.contains("takes a new snapshot"), "{stdout}");
    assert_eq!(slots_of(&source, &slot), 0, "the slot is still there");
    assert_eq!(publications_named(&source, &slot.name), 0);
    assert!(
        !has_checkpoint(dir.path()),
        "the checkpoint still points into the dropped slot"
    );
    // Dropping again finds nothing, and says so.
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["cdc", "drop", "people", "--output", "json"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let again: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let outcomes: Vec<&str> = again["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["absent", "absent"], "{again}");

    // The sync stays configured: while it had no slot, rows were deleted, updated and
    // inserted. Its next run takes a new snapshot, and its reconciliation finds the deletes.
    exec(
        &source,
        &[
            "DELETE FROM people WHERE id BETWEEN 100 AND 109",
            "UPDATE people SET score = -5 WHERE id = 50",
            "INSERT INTO people VALUES (1000, 'new', 1, NULL)",
        ],
    );
    let report = run_ok(dir.path());
    assert_eq!(report["metrics"]["deleted"], 10, "{report}");
    assert_eq!(rows(&source), rows(&destination));
    assert_eq!(slots_of(&source, &slot), 1, "the run made its slot again");
    assert_eq!(publications_named(&source, &slot.name), 1);
    // And the change log works again from there.
    exec(&source, &["DELETE FROM people WHERE id = 1"]);
    run_ok(dir.path());
    assert_eq!(rows(&source), rows(&destination));
}

#[test]
fn cdc_falls_back_to_a_new_snapshot_when_its_slot_was_dropped_under_it() {
    let Some((source, destination, slot, dir)) = synced_people("cdc_lost", 200, 100) else {
        return;
    };
    exec(&source, &["UPDATE people SET name = 'seen' WHERE id = 1"]);
    run_ok(dir.path());
    assert_eq!(checkpoint(dir.path())["phase"], "changes");
    // A DBA drops the slot by hand and leaves its anchor: the anchor, confirmed at the
    // committed checkpoint, still holds the changes made since, so the next run takes it
    // over and applies exactly them, with no new snapshot.
    exec(
        &source,
        &[
            &format!("SELECT pg_drop_replication_slot('{}')", slot.name),
            "UPDATE people SET name = 'kept' WHERE id = 4",
            "DELETE FROM people WHERE id = 5",
        ],
    );
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["run", "people", "--output", "json"]));
    assert!(out.status.success(), "the run failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains("taking a new snapshot"),
        "a new snapshot although the anchor was there:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["metrics"]["read"], 2, "{report}");
    assert_eq!(report["metrics"]["deleted"], 1, "{report}");
    assert_eq!(rows(&source), rows(&destination));
    // Now the slot and its anchor both go; changes happen that no slot records.
    exec(
        &source,
        &[
            &format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name IN ('{0}', '{0}_anchor')",
                slot.name
            ),
            "DELETE FROM people WHERE id BETWEEN 10 AND 14",
            "UPDATE people SET name = 'unseen' WHERE id = 2",
            "INSERT INTO people VALUES (500, 'unseen', 5, NULL)",
        ],
    );
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["run", "people", "--output", "json"]));
    assert!(out.status.success(), "the run failed:\n{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "replication slot `{}` does not exist any more",
            slot.name
        )) && stderr.contains("taking a new snapshot of `people`"),
        "no log line about the new snapshot:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["metrics"]["deleted"], 5, "{report}");
    assert_eq!(rows(&source), rows(&destination));
    assert_eq!(slots_of(&source, &slot), 1);
    exec(&source, &["UPDATE people SET name = 'after' WHERE id = 3"]);
    let next = run_ok(dir.path());
    assert_eq!(next["metrics"]["updated"], 1, "{next}");
    assert_eq!(rows(&source), rows(&destination));
}

/// The confirmed position of the anchor slot a run leaves for the next, if there is one.
fn anchor_confirmed(db: &TempDatabase, slot: &Slot) -> Option<String> {
    confirmed_position(db, &format!("{}_anchor", slot.name))
}

/// Each run of changes leaves an anchor slot confirmed at its last checkpoint; the next run,
/// once that checkpoint is committed, takes it over instead of confirming the slot with a
/// decoding pass. An anchor past the committed checkpoint (a run killed before its state
/// commit) is dropped, not taken, and nothing is lost or applied twice.
#[test]
fn cdc_runs_hand_the_slot_over_through_an_anchor_at_the_committed_checkpoint() {
    let Some((source, destination, slot, dir)) = synced_people("cdc_anchor", 500, 100) else {
        return;
    };
    for round in 1..=3 {
        exec(
            &source,
            &[
                &format!("UPDATE people SET score = score + {round} WHERE id % 7 = 0"),
                &format!("DELETE FROM people WHERE id = {}", 100 + round),
            ],
        );
        let (out, stdout, stderr) = run(lockstep(dir.path())
            .args(["run", "people", "--output", "json"])
            .env("LOCKSTEP_LOG", "debug"));
        assert!(out.status.success(), "round {round}:\n{stdout}\n{stderr}");
        let committed = checkpoint(dir.path())["lsn"].as_str().unwrap().to_owned();
        assert_eq!(
            anchor_confirmed(&source, &slot).as_deref(),
            Some(committed.as_str()),
            "round {round}: the anchor should sit at the committed checkpoint"
        );
        // From the second run of changes on, the run takes over the anchor the one before
        // left (the first takes over the snapshot's anchor).
        assert!(
            stderr.contains("took over the anchor slot the last run left"),
            "round {round}: the anchor was not taken over:\n{stderr}"
        );
        assert_eq!(rows(&source), rows(&destination), "round {round}");
    }
    // The next run takes the last anchor over: the slot is confirmed at the last committed
    // checkpoint without a decoding pass.
    let committed = checkpoint(dir.path())["lsn"].as_str().unwrap().to_owned();
    let quiet = run_ok(dir.path());
    assert_eq!(quiet["metrics"]["read"], 0, "{quiet}");
    assert_eq!(confirmed(&source, &slot), committed);

    // An anchor past the committed checkpoint, as a run killed after its read and before
    // its state commit leaves: the next run drops it and confirms the slot the slow way.
    exec(&source, &["UPDATE people SET name = 'late' WHERE id = 1"]);
    let committed = checkpoint(dir.path())["lsn"].as_str().unwrap().to_owned();
    exec(
        &source,
        &[&format!(
            "SELECT pg_drop_replication_slot('{}_anchor')",
            slot.name
        )],
    );
    // A slot created now starts past the checkpoint (and past the update above).
    exec(
        &source,
        &[&format!(
            "SELECT 1 FROM pg_create_logical_replication_slot('{}_anchor', 'pgoutput')",
            slot.name
        )],
    );
    let ahead = anchor_confirmed(&source, &slot).unwrap();
    assert_ne!(ahead, committed);
    let (out, stdout, stderr) = run(lockstep(dir.path())
        .args(["run", "people", "--output", "json"])
        .env("LOCKSTEP_LOG", "debug"));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stderr.contains("took over the anchor slot"),
        "an anchor past the committed checkpoint was taken over:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["metrics"]["updated"], 1, "{report}");
    assert_eq!(rows(&source), rows(&destination));
}

/// The rows of `table` as text, `row` an SQL expression over its columns, ordered by id.
fn typed_rows(db: &TempDatabase, table: &str, row: &str) -> Vec<String> {
    lockstep_e2e::block_on(async {
        let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar(&format!("SELECT {row} FROM {table} ORDER BY id"))
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("reading {table}: {e}"))
    })
}

#[test]
fn cdc_values_of_every_kind_equal_the_source_in_binary_and_text_reads() {
    let Some((source, destination)) = databases("cdc_types") else {
        return;
    };
    let (binary_slot, text_slot) = (Slot::new(&source), Slot::new(&source));
    let dir = tempfile::tempdir().unwrap();
    // `typed` has only columns read as themselves: its changes arrive as binary values. An
    // array and an interval make `texty` read through text casts on the server.
    exec(
        &source,
        &[
            "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
            "CREATE DOMAIN short_text AS varchar(12)",
            "CREATE TABLE typed (id bigint PRIMARY KEY, i2 smallint, n numeric(10,2), \
             u numeric, f float8, bo boolean, ts timestamptz, t timestamp, d date, tm time, \
             j jsonb, js json, b bytea, uid uuid, e mood, vc varchar(10), dom short_text)",
            "CREATE TABLE texty (id integer PRIMARY KEY, arr integer[], iv interval, \
             name text)",
            "INSERT INTO typed SELECT g, g, g * 1.25, g / 7.0, g / 3.0, g % 2 = 0, \
             timestamptz '2024-01-01 00:00:00.123456+00' + g * interval '1 hour', \
             timestamp '2024-02-29 23:59:59.5' + g * interval '1 minute', \
             date '2000-01-01' + g, time '12:34:56.789' + g * interval '1 second', \
             jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g)), \
             json_build_object('g', g), decode(lpad(to_hex(g), 8, '0'), 'hex'), \
             md5(g::text)::uuid, (ARRAY['sad','ok','happy'])[1 + g % 3]::mood, \
             'vc' || g, 'dom' || g FROM generate_series(1, 50) g",
            "INSERT INTO texty SELECT g, ARRAY[g, g + 1], g * interval '1 day 2 hours', \
             'n' || g FROM generate_series(1, 50) g",
        ],
    );
    let text = format!(
        "[state]\nurl = \"sqlite://state.db\"\n\n\
         [connections.src]\nconnector = \"postgres\"\nconfig = {{ url = \"{}\" }}\n\n\
         [connections.dst]\nconnector = \"postgres\"\nconfig = {{ url = \"{}\" }}\n\n\
         [syncs.typed]\nsource = \"src.typed\"\ndestination = \"dst.typed\"\nmode = \"cdc\"\n\
         batch_size = 7\nmax_delete_fraction = 0.9\n\
         [syncs.typed.cdc]\nslot = \"{b}\"\npublication = \"{b}\"\n\n\
         [syncs.texty]\nsource = \"src.texty\"\ndestination = \"dst.texty\"\nmode = \"cdc\"\n\
         batch_size = 7\nmax_delete_fraction = 0.9\n\
         [syncs.texty.cdc]\nslot = \"{t}\"\npublication = \"{t}\"\n",
        source.url,
        destination.url,
        b = binary_slot.name,
        t = text_slot.name
    );
    std::fs::write(dir.path().join("lockstep.toml"), text).unwrap();
    let run_sync = |sync: &str| {
        let (out, stdout, stderr) =
            run(lockstep(dir.path()).args(["run", sync, "--output", "json"]));
        assert!(
            out.status.success(),
            "run {sync} failed:\n{stdout}\n{stderr}"
        );
    };
    let typed_row = "concat_ws('|', id, i2, n, u, f, bo, ts, t, d, tm, j::jsonb, js::jsonb, \
                     encode(b, 'hex'), uid, e::text, vc, dom, num_nulls(i2, n, u, f, bo, ts, \
                     t, d, tm, j, js, b, uid, e, vc, dom))";
    let check = |when: &str| {
        assert_eq!(
            typed_rows(&source, "typed", typed_row),
            typed_rows(&destination, "typed", typed_row),
            "typed, {when}"
        );
        assert_eq!(
            typed_rows(
                &source,
                "texty",
                "concat_ws('|', id, to_jsonb(arr), iv, name)"
            ),
            typed_rows(
                &destination,
                "texty",
                "concat_ws('|', id, arr::text::jsonb, iv, name)"
            ),
            "texty, {when}"
        );
    };
    run_sync("typed");
    run_sync("texty");
    check("after the snapshot");
    exec(
        &source,
        &[
            "UPDATE typed SET n = -n, u = u * 1000000000000, f = 'NaN', bo = NOT bo, \
             ts = ts - interval '30 years', j = '{\"nested\": {\"x\": [1, 2.5, null]}}', \
             b = '\\x00ff00'::bytea, e = 'happy', vc = 'é€😀' WHERE id % 3 = 0",
            "UPDATE typed SET i2 = NULL, n = NULL, u = 'NaN', tm = NULL, js = NULL, \
             uid = NULL, dom = NULL WHERE id % 5 = 0",
            "DELETE FROM typed WHERE id % 7 = 0",
            "INSERT INTO typed (id, ts, u) VALUES (1000, '0001-01-01 00:00:00+00', 123.456), \
             (1001, '9999-12-31 23:59:59.999999+00', 0.000001)",
            "UPDATE texty SET arr = ARRAY[-1, NULL], iv = '-3 months 4 seconds' WHERE id % 4 = 0",
            "DELETE FROM texty WHERE id % 9 = 0",
            "INSERT INTO texty VALUES (1000, '{}', '1 year', NULL)",
        ],
    );
    run_sync("typed");
    run_sync("texty");
    check("after the changes");
}
