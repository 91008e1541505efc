//! The lease on a sync, end to end: a run keeps it for as long as it lasts, however its time
//! is spent (many small batches, or one slow read), so a second run of the same sync is
//! refused, naming the holder; and a run whose lease is taken over stops before its next
//! write, saying what happened. Three daemons sharing a PostgreSQL state store never run the
//! sync twice at once, and take over from one killed in the middle of a run.
//!
//! The lease lives 3 s (`state.lease_ttl`), so a run of 10 s or more needs many renewals (one
//! a second); a renewal has 2 s to reach the state store. (With 2 s, a renewal had 1.3 s, and
//! on a CI machine whose disk stalls an fsync for longer under the other tests' load, a run
//! lost its lease and the test failed for a reason it does not test.) The
//! source is the panicky test plugin (installed into a scratch directory as a connector) with
//! `rows`, `batch_size` and `sleep_ms` shaping how long the run takes; the destination is a
//! real SQLite database.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lockstep_e2e::{
    block_on, lockstep, plugin_library, postgres_database, run, sqlite_count, sqlite_exec,
};
use serde_json::Value;
use sqlx::Connection;

/// A scratch directory with the panicky plugin as connector `panicky` and a config syncing
/// its `items` (`rows` rows, `sleep_ms` before each batch of `batch_size`) into SQLite.
fn scratch(rows: u64, batch_size: u64, sleep_ms: u64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let name = format!(
        "{}lockstep_connector_panicky{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    std::fs::copy(
        plugin_library("lockstep_testplugin_panicky"),
        plugins.join(name),
    )
    .unwrap();
    let config = format!(
        r#"
[state]
url = "sqlite://state.db"
lease_ttl = "3s"

[connectors]
paths = ["plugins"]

[connections.slow]
connector = "panicky"
config = {{ rows = {rows}, sleep_ms = {sleep_ms} }}

[connections.dst]
connector = "sqlite"
config = {{ path = "dst.db" }}

[syncs.items]
source = "slow.items"
destination = "dst.items"
batch_size = {batch_size}
"#
    );
    std::fs::write(dir.path().join("lockstep.toml"), config).unwrap();
    dir
}

/// Starts `lockstep run items --output json` in the background.
fn start_run(dir: &Path) -> Child {
    lockstep(dir)
        .args(["run", "items", "--output", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for a background run and returns its JSON report and its stderr.
fn finish(child: Child) -> (Value, String) {
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout: {}; stderr: {stderr}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    (report, stderr)
}

/// Runs the sync once in the background, tries a second run of it 5 s later, and checks that
/// the second is refused naming the first, and that the first keeps its lease to the end.
fn a_run_of_at_least_10_s_keeps_its_lease(rows: u64, batch_size: u64, sleep_ms: u64) {
    let dir = scratch(rows, batch_size, sleep_ms);
    let d = dir.path();
    let started = Instant::now();
    let first = start_run(d);
    std::thread::sleep(Duration::from_secs(5).saturating_sub(started.elapsed()));

    let (out, _, stderr) = run(lockstep(d).args(["run", "items"]));
    assert!(
        !out.status.success(),
        "a second run started 5 s into the first was not refused: {stderr}"
    );
    assert!(
        stderr.contains(&format!("already being run by process {}", first.id())),
        "the refusal does not name the holder (process {}): {stderr}",
        first.id()
    );

    let (report, stderr) = finish(first);
    let lasted = started.elapsed();
    assert_eq!(report["status"], "succeeded", "{report}\n{stderr}");
    assert_eq!(report["metrics"]["read"], rows, "{report}");
    assert_eq!(report["metrics"]["added"], rows, "{report}");
    assert!(
        lasted >= Duration::from_secs(10),
        "the run lasted only {lasted:?}, too short to prove anything"
    );
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        rows as i64
    );
    // The refused run left no run behind.
    assert_eq!(
        sqlite_count(&d.join("state.db"), "SELECT count(*) FROM runs"),
        1
    );
}

#[test]
fn a_run_of_many_small_batches_keeps_its_lease_and_a_second_run_is_refused() {
    // 300 batches of one row, 40 ms apart: at least 12 s, each batch far shorter than the TTL.
    a_run_of_at_least_10_s_keeps_its_lease(300, 1, 40);
}

#[test]
fn a_run_waiting_on_a_slow_read_keeps_its_lease_and_a_second_run_is_refused() {
    // 3 batches of one row, each read taking 3.5 s (longer than the TTL): 10.5 s.
    a_run_of_at_least_10_s_keeps_its_lease(3, 1, 3500);
}

#[test]
fn a_run_whose_lease_is_taken_over_stops_before_its_next_write_and_says_so() {
    // Each read takes 4 s; the lease is taken over 1 s in, while the first read is waiting.
    let dir = scratch(3, 1, 4000);
    let d = dir.path();
    let started = Instant::now();
    let first = start_run(d);
    let state = d.join("state.db");
    let deadline = Instant::now() + Duration::from_secs(30);
    let leased = || {
        state.exists()
            && sqlite_count(
                &state,
                "SELECT count(*) FROM sqlite_master WHERE name = 'leases'",
            ) > 0
            && sqlite_count(&state, "SELECT count(*) FROM leases") > 0
    };
    while !leased() {
        assert!(Instant::now() < deadline, "the run never took its lease");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1).saturating_sub(started.elapsed()));
    // Another node takes the lease over, as it would after an expiry.
    sqlite_exec(
        &state,
        &["UPDATE leases SET token = token + 1, host = 'another-node', pid = 1"],
    );

    let (report, stderr) = finish(first);
    assert_eq!(report["status"], "failed", "{report}\n{stderr}");
    assert_eq!(report["error"]["kind"], "lease-lost", "{report}");
    let message = report["error"]["message"].as_str().unwrap();
    for part in [
        "lost its lease: another holder took it over",
        "stopped before its next write to the destination",
        "harmless because writes are upserts",
    ] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    // The read in progress was abandoned: no batch was written, and the run ended without
    // waiting for the source's first batch (4 s). (The process itself exits once the plugin's
    // read call returns: this test plugin sleeps without checking for cancellation.)
    assert_eq!(report["metrics"]["read"], 0, "{report}");
    assert_eq!(report["metrics"]["added"], 0, "{report}");
    let lasted = report["duration_ms"].as_u64().unwrap();
    assert!(
        lasted < 3500,
        "the run went on for {lasted} ms after losing its lease 1 s in: {report}"
    );
}

/// One run row as stored: id, status, start and finish (fixed-width RFC 3339 text).
type RunRow = (i64, String, String, Option<String>);

/// The runs of sync `shared` in the PostgreSQL state store at `url`, by start.
fn shared_runs(url: &str) -> Vec<RunRow> {
    block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let rows = sqlx::query_as(
            r#"SELECT "id", "status", "started_at", "finished_at" FROM "runs"
               WHERE "sync" = 'shared' ORDER BY "started_at", "id""#,
        )
        .fetch_all(&mut c)
        .await
        .unwrap_or_default();
        let _ = c.close().await;
        rows
    })
}

/// The process holding the live lease on sync `shared`, if any.
fn shared_holder(url: &str) -> Option<u32> {
    block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let pid: Option<i64> = sqlx::query_scalar(
            r#"SELECT "pid" FROM "leases" WHERE "sync" = 'shared'
               AND "expires_at" > to_char(now() AT TIME ZONE 'UTC',
                                          'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#,
        )
        .fetch_optional(&mut c)
        .await
        .ok()
        .flatten();
        let _ = c.close().await;
        pid.map(|p| p as u32)
    })
}

/// The parent of process `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces; the parent follows.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Three daemons share one PostgreSQL state store and run one sync every second for over 200
/// ticks; one of them is killed (with its worker) in the middle of a run. No two runs of the
/// sync overlap, another daemon takes the sync over within the lease's TTL, and the
/// destination ends equal to the source.
#[test]
fn three_daemons_on_one_state_store_never_overlap_and_take_over_a_killed_one() {
    let Some(db) = postgres_database("lease_nodes") else {
        return;
    };
    const ROWS: i64 = 20;
    // Longer than the other tests' 3 s: three daemons starting a worker every second on a
    // shared 2-core machine have been seen to delay a PostgreSQL commit by seconds.
    const TTL: Duration = Duration::from_secs(10);
    // Runs of 10 batches 1.2 s apart: each lasts longer than the TTL, so only renewal keeps
    // the other daemons (which try every second) out.
    let dir = scratch(ROWS as u64, 2, 1200);
    let d = dir.path();
    let config = std::fs::read_to_string(d.join("lockstep.toml"))
        .unwrap()
        .replace("sqlite://state.db", &db.url)
        .replace("[syncs.items]", "[syncs.shared]")
        .replace(
            "lease_ttl = \"3s\"",
            &format!("lease_ttl = \"{}s\"", TTL.as_secs()),
        )
        + "[syncs.shared.schedule]\nevery = \"1s\"\n";
    std::fs::write(d.join("lockstep.toml"), config).unwrap();

    let started = Instant::now();
    let mut daemons: Vec<Child> = (0..3)
        .map(|i| {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            lockstep(d)
                .args(["daemon", "--listen", &format!("127.0.0.1:{port}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(d.join(format!("daemon{i}.log"))).unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let logs = |d: &Path| {
        (0..3)
            .map(|i| std::fs::read_to_string(d.join(format!("daemon{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };

    // About a third of the way in, kill the daemon whose worker is running the sync, and the
    // worker with it, as a machine dying would.
    std::thread::sleep(Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(30);
    let (killed, worker) = loop {
        assert!(
            Instant::now() < deadline,
            "no run in progress to kill:\n{}",
            logs(d)
        );
        // A live lease and a run in progress (runs last 12 s; it cannot end before the kill).
        let running = shared_runs(&db.url).iter().any(|r| r.1 == "running");
        let found = shared_holder(&db.url)
            .filter(|_| running)
            .and_then(|worker| {
                let parent = parent_of(worker)?;
                let daemon = daemons.iter().position(|c| c.id() == parent)?;
                Some((daemon, worker))
            });
        if let Some(found) = found {
            break found;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // SAFETY: kill(2) with plain integers; both processes are alive children of this test or
    // of its daemon.
    unsafe {
        libc::kill(worker as libc::pid_t, libc::SIGKILL);
        libc::kill(daemons[killed].id() as libc::pid_t, libc::SIGKILL);
    }
    let killed_at = Instant::now();
    let _ = daemons[killed].wait();

    // Another daemon takes the sync over (marking the killed run abandoned) and runs it within
    // the TTL, give or take a tick. (On the same host the dead worker's lease is taken over at
    // once; from another host, after the TTL.)
    let takeover_deadline = Instant::now() + Duration::from_secs(30);
    let (killed_run, taken_over) = loop {
        let runs = shared_runs(&db.url);
        if let Some(killed_run) = runs.iter().find(|r| r.1 == "abandoned").map(|r| r.0) {
            if runs.iter().any(|r| r.0 > killed_run) {
                break (killed_run, killed_at.elapsed());
            }
        }
        assert!(
            Instant::now() < takeover_deadline,
            "no takeover:\n{}",
            logs(d)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        taken_over < TTL + Duration::from_secs(4),
        "the sync was taken over only {taken_over:?} after the kill"
    );

    // At least 200 ticks in all, then stop the survivors.
    std::thread::sleep(Duration::from_secs(205).saturating_sub(started.elapsed()));
    for (i, daemon) in daemons.iter_mut().enumerate() {
        if i != killed {
            // SAFETY: as above.
            unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
            let _ = daemon.wait();
        }
    }

    let runs = shared_runs(&db.url);
    let succeeded = runs.iter().filter(|r| r.1 == "succeeded").count();
    assert!(
        succeeded >= 5,
        "only {succeeded} runs succeeded:\n{}",
        logs(d)
    );
    assert!(
        runs.iter().all(|r| r.1 != "failed"),
        "failed runs: {runs:?}\n{}",
        logs(d)
    );
    assert!(
        runs.iter().any(|r| r.0 > killed_run && r.1 == "succeeded"),
        "no run succeeded after the takeover: {runs:?}"
    );
    let abandoned: Vec<i64> = runs
        .iter()
        .filter(|r| r.1 == "abandoned")
        .map(|r| r.0)
        .collect();
    assert_eq!(
        abandoned,
        [killed_run],
        "only the killed run is abandoned: {runs:?}"
    );
    for pair in runs.windows(2) {
        let finished = pair[0].3.as_deref().expect("every run has finished");
        assert!(
            pair[1].2.as_str() >= finished,
            "runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT count(*) FROM items"),
        ROWS
    );
    assert_eq!(
        sqlite_count(&d.join("dst.db"), "SELECT sum(id) FROM items"),
        ROWS * (ROWS + 1) / 2
    );
}
