//! The `lockstep` binary end to end on SQLite: runs, incremental counts, history, JSON
//! output, config errors, and a `kill -9` in the middle of a sync.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use lockstep_e2e::{lockstep, run, sqlite_pool as pool};
use sqlx::Row;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates `crm.db` with `rows` contacts whose `updated_at` values repeat in groups of 7.
fn create_source(dir: &Path, rows: i64) {
    rt().block_on(async {
        let pool = pool(&dir.join("crm.db")).await;
        sqlx::query(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL, name TEXT,
             score INTEGER, updated_at TIMESTAMP NOT NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        let mut tx = pool.begin().await.unwrap();
        for id in 1..=rows {
            sqlx::query("INSERT INTO contacts VALUES (?, ?, ?, ?, ?)")
                .bind(id)
                .bind(format!("user{id}@example.com"))
                .bind(if id % 10 == 0 {
                    None
                } else {
                    Some(format!("Zoë {id}"))
                })
                .bind(id % 100)
                .bind(format!(
                    "2026-01-01 00:{:02}:{:02}",
                    (id / 7) / 60 % 60,
                    (id / 7) % 60
                ))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        pool.close().await;
    });
}

fn write_config(dir: &Path, batch_size: usize) -> PathBuf {
    let config = format!(
        r#"
[state]
url = "sqlite://state.db"

[connections.crm]
connector = "sqlite"
config = {{ path = "crm.db" }}

[connections.mkt]
connector = "sqlite"
config = {{ path = "marketing.db" }}

[syncs.contacts]
source = "crm.contacts"
destination = "mkt.subscribers"
mode = "incremental"
cursor = "updated_at"
key = ["contact_id"]
batch_size = {batch_size}

[syncs.contacts.fields]
contact_id = "id"
email_address = "email"
full_name = "name"
score = "score"
"#
    );
    let path = dir.join("lockstep.toml");
    std::fs::write(&path, config).unwrap();
    path
}

fn run_json(dir: &Path) -> serde_json::Value {
    let (out, stdout, stderr) = run(lockstep(dir).args(["run", "contacts", "--output", "json"]));
    assert!(
        out.status.success(),
        "run failed:\nstdout: {stdout}\nstderr: {stderr}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// (rows, distinct keys, a checksum of every value) of a table.
fn table_digest(db: &Path, table: &str, key: &str, cols: &str) -> (i64, i64, String) {
    rt().block_on(async {
        let pool = pool(db).await;
        let row = sqlx::query(&format!(
            "SELECT count(*), count(DISTINCT \"{key}\"), \
             coalesce(group_concat(v, '|'), '') FROM \
             (SELECT \"{key}\", {cols} AS v FROM \"{table}\" ORDER BY \"{key}\")"
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        let digest = (row.get(0), row.get(1), row.get(2));
        pool.close().await;
        digest
    })
}

fn source_digest(dir: &Path) -> (i64, i64, String) {
    table_digest(
        &dir.join("crm.db"),
        "contacts",
        "id",
        "id || ',' || email || ',' || coalesce(name, '∅') || ',' || score",
    )
}

fn destination_digest(dir: &Path) -> (i64, i64, String) {
    table_digest(
        &dir.join("marketing.db"),
        "subscribers",
        "contact_id",
        "contact_id || ',' || email_address || ',' || coalesce(full_name, '∅') || ',' || score",
    )
}

#[test]
fn incremental_sync_counts_changes_and_records_history() {
    let dir = tempfile::tempdir().unwrap();
    create_source(dir.path(), 500);
    write_config(dir.path(), 64);

    let first = run_json(dir.path());
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["metrics"]["read"], 500);
    assert_eq!(first["metrics"]["added"], 500);
    assert_eq!(first["metrics"]["updated"], 0);
    assert_eq!(source_digest(dir.path()), destination_digest(dir.path()));

    // Change 3 rows, touch a fourth without changing a mapped value (the cursor is not
    // mapped), and add 2.
    rt().block_on(async {
        let pool = pool(&dir.path().join("crm.db")).await;
        sqlx::query("UPDATE contacts SET score = score + 1, updated_at = '2026-03-01 00:00:00' WHERE id IN (1, 2, 3)")
            .execute(&pool).await.unwrap();
        sqlx::query("UPDATE contacts SET updated_at = '2026-03-01 00:00:00' WHERE id = 4")
            .execute(&pool).await.unwrap();
        sqlx::query("INSERT INTO contacts VALUES (501, 'new1@example.com', 'New', 1, '2026-03-01 00:00:01'), (502, 'new2@example.com', NULL, 2, '2026-03-01 00:00:01')")
            .execute(&pool).await.unwrap();
        pool.close().await;
    });
    let second = run_json(dir.path());
    let m = &second["metrics"];
    assert_eq!(
        (
            m["read"].as_u64(),
            m["added"].as_u64(),
            m["updated"].as_u64(),
            m["unchanged"].as_u64()
        ),
        (Some(6), Some(2), Some(3), Some(1)),
        "{second}"
    );
    assert!(
        second["cursor_after"].to_string().contains("2026-03-01"),
        "{second}"
    );
    assert_eq!(source_digest(dir.path()), destination_digest(dir.path()));

    let third = run_json(dir.path());
    assert_eq!(third["metrics"]["read"], 0, "{third}");

    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["runs", "contacts"]));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three runs:\n{stdout}");
    assert!(
        lines[0].contains("READ") && lines[1].contains("succeeded"),
        "{stdout}"
    );

    // The text summary names every metric.
    let (out, stdout, _) = run(lockstep(dir.path()).args(["run", "contacts"]));
    assert!(out.status.success());
    for metric in [
        "read",
        "added",
        "updated",
        "unchanged",
        "deleted",
        "conflicts",
        "rejected",
    ] {
        assert!(stdout.contains(metric), "summary lacks {metric}:\n{stdout}");
    }
}

#[test]
fn a_failed_run_exits_non_zero_and_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    create_source(dir.path(), 10);
    let config = write_config(dir.path(), 64).to_string_lossy().into_owned();
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("crm.contacts", "crm.contactz");
    std::fs::write(&config, text).unwrap();
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["run", "contacts"]));
    assert!(!out.status.success());
    assert!(
        stderr.contains("no stream `contactz`") && stderr.contains("contacts"),
        "{stdout}\n{stderr}"
    );
    let (_, stdout, _) = run(lockstep(dir.path()).args(["runs", "--output", "json"]));
    let runs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs[0]["status"], "failed");
    assert_eq!(runs[0]["error_kind"], "schema");
}

#[test]
fn kill_9_mid_sync_then_rerun_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rows = 60_000;
    create_source(dir.path(), rows);
    write_config(dir.path(), 500);
    let mut child = lockstep(dir.path())
        .args(["run", "contacts"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some batches are committed, then kill without warning.
    let state = dir.path().join("state.db");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the run ended ({status}) before it could be killed; use more rows");
        }
        let committed = state.exists()
            && rt().block_on(async {
                let pool = pool(&state).await;
                let n: i64 = sqlx::query("SELECT count(*) FROM ledger")
                    .fetch_one(&pool)
                    .await
                    .map(|r| r.get(0))
                    .unwrap_or(0);
                pool.close().await;
                n
            }) >= 5_000;
        if committed {
            break;
        }
        assert!(Instant::now() < deadline, "no progress within two minutes");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let (partial, _, _) = destination_digest(dir.path());
    assert!(
        partial > 0 && partial < rows,
        "killed mid-way: {partial} of {rows} rows written"
    );

    let rerun = run_json(dir.path());
    assert_eq!(rerun["status"], "succeeded", "{rerun}");
    let m = &rerun["metrics"];
    let read = m["read"].as_u64().unwrap();
    assert_eq!(
        read,
        m["added"].as_u64().unwrap()
            + m["updated"].as_u64().unwrap()
            + m["unchanged"].as_u64().unwrap()
            + m["rejected"].as_u64().unwrap(),
        "metrics add up: {rerun}"
    );
    assert!(
        read < rows as u64,
        "the rerun resumed from the checkpoint instead of starting over: {rerun}"
    );
    let (count, distinct, digest) = destination_digest(dir.path());
    assert_eq!(
        (count, distinct),
        (rows, rows),
        "no duplicates, nothing lost"
    );
    assert_eq!(digest, source_digest(dir.path()).2);
    // The killed run is not left "running".
    let (_, stdout, _) = run(lockstep(dir.path()).args(["runs", "--output", "json"]));
    let runs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(runs[1]["status"], "abandoned", "{stdout}");
}

/// Output into a pipe whose reader has gone (`lockstep connectors list | head -0`) ends
/// quietly with status 0, as other command-line tools do, instead of a panic about stdout.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["connectors", "list"][..], &["completions", "bash"][..]] {
        let mut child = lockstep(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The read end closes before the process has started writing.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() && !stderr.contains("panicked"),
            "`lockstep {}` into a closed pipe: {:?}\n{stderr}",
            args.join(" "),
            output.status
        );
    }
}
