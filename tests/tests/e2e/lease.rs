//! The lease on a sync, end to end: a run keeps it for as long as it lasts, however its time
//! is spent (many small batches, or one slow read), so a second run of the same sync is
//! refused, naming the holder; and a run whose lease is taken over stops before its next
//! write, saying what happened.
//!
//! The lease lives 2 s (`state.lease_ttl`), so a run of 10 s or more needs many renewals. The
//! source is the panicky test plugin (installed into a scratch directory as a connector) with
//! `rows`, `batch_size` and `sleep_ms` shaping how long the run takes; the destination is a
//! real SQLite database.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use lockstep_e2e::{lockstep, plugin_library, run, sqlite_count, sqlite_exec};
use serde_json::Value;

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
lease_ttl = "2s"

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
