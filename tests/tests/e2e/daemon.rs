//! `lockstep daemon` end to end: schedules on time, no overlap, retries, timeouts, crashing
//! plugins in worker processes, alerts by webhook and email (maildev), SIGHUP reload and
//! SIGTERM graceful stop, `/metrics` and the JSON API, `lockstep status` and `lockstep runs`.
//!
//! Schedules are second-level (`every = "1s"`, six-field cron) and every wait is bounded.
//! The panicky test plugin is copied into a scratch directory as a connector; its options
//! make slow sources (`sleep_ms`), flaky ones (`fail_transient_times`) and crashing ones
//! (`segv_in`, `abort_in`, `panic_in`).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockstep_e2e::{in_ci, lockstep, plugin_library, run, service_available, workspace_root};
use serde_json::Value;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A scratch directory with the panicky plugin installed as connector `panicky` in
/// `plugins/`.
pub(crate) fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let plugins = dir.path().join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let lib = plugin_library("lockstep_testplugin_panicky");
    let name = format!(
        "{}lockstep_connector_panicky{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    std::fs::copy(lib, plugins.join(name)).unwrap();
    dir
}

/// The head of a config: state, plugins, and the `[daemon]` table.
pub(crate) fn config_head() -> String {
    r#"
[state]
url = "sqlite://state.db"

[connectors]
paths = ["plugins"]

[connections.sink]
connector = "panicky"
"#
    .to_owned()
}

/// A panicky-to-panicky sync with a source connection of its own.
pub(crate) fn panicky_sync(name: &str, source_config: &str, schedule: &str, extra: &str) -> String {
    format!(
        r#"
[connections.{name}_src]
connector = "panicky"
config = {source_config}

[syncs.{name}]
source = "{name}_src.items"
destination = "sink.{name}"
{extra}
[syncs.{name}.schedule]
{schedule}
"#
    )
}

pub(crate) fn write(dir: &Path, config: &str) -> PathBuf {
    let path = dir.join("lockstep.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// A minimal HTTP/1.1 GET.
pub(crate) fn http_get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Seconds since the epoch of the state store's `2026-01-02T03:04:05.678901Z`.
pub(crate) fn epoch(text: &str) -> f64 {
    let (date, time) = text
        .trim_end_matches('Z')
        .split_once('T')
        .expect("an RFC 3339 time");
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    days as f64 * 86_400.0 + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

/// A running `lockstep daemon`, killed when dropped.
pub(crate) struct Daemon {
    child: Child,
    pub(crate) addr: String,
    log: PathBuf,
    dir: PathBuf,
}

impl Daemon {
    pub(crate) fn start(dir: &Path) -> Daemon {
        Self::start_with(dir, "daemon", &[])
    }

    /// Starts a daemon in `dir`, logging to `<name>.log`.
    pub(crate) fn start_with(dir: &Path, name: &str, envs: &[(&str, &str)]) -> Daemon {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join(format!("{name}.log"));
        let mut cmd = lockstep(dir);
        cmd.args(["daemon", "--listen", &addr, "--kill-grace", "5s"])
            .stdin(Stdio::null())
            .stdout(File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(File::create(&log).unwrap());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("the lockstep binary starts");
        let mut daemon = Daemon {
            child,
            addr,
            log,
            dir: dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = http_get(&daemon.addr, "/healthz") {
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!(
                    "the daemon exited at start-up ({status}):\n{}",
                    daemon.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not come up:\n{}",
                daemon.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        daemon
    }

    pub(crate) fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn get(&self, path: &str) -> String {
        match http_get(&self.addr, path) {
            Ok((200, body)) => body,
            other => panic!("GET {path}: {other:?}\n{}", self.logs()),
        }
    }

    pub(crate) fn json(&self, path: &str) -> Value {
        let body = self.get(path);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
    }

    /// Runs of `sync`, oldest first, from `/api/runs`.
    pub(crate) fn runs(&self, sync: &str) -> Vec<Value> {
        let mut runs = self
            .json(&format!("/api/runs?sync={sync}&limit=500"))
            .as_array()
            .unwrap()
            .clone();
        runs.reverse();
        runs
    }

    pub(crate) fn finished_runs(&self, sync: &str) -> Vec<Value> {
        self.runs(sync)
            .into_iter()
            .filter(|r| r["status"] != "running")
            .collect()
    }

    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with plain integers; the child has not been reaped yet.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits until `what` holds, polling; panics with the logs after `timeout`.
    pub(crate) fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&Daemon) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self, timeout: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ({}) ---\n{}",
                self.dir.display(),
                self.logs()
            );
        }
    }
}

/// `lockstep runs --output json` for `sync`, oldest first.
pub(crate) fn cli_runs(dir: &Path, sync: &str) -> Vec<Value> {
    let (out, stdout, stderr) =
        run(lockstep(dir).args(["runs", sync, "--limit", "500", "--output", "json"]));
    assert!(out.status.success(), "{stderr}");
    let mut runs: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    runs.reverse();
    runs
}

pub(crate) fn count(runs: &[Value], status: &str) -> usize {
    runs.iter().filter(|r| r["status"] == status).count()
}

/// A local webhook receiver that stores every JSON body POSTed to it.
pub(crate) struct Receiver {
    pub(crate) url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub(crate) fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://{}/hooks/T000/SECRET",
            listener.local_addr().unwrap()
        );
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let store = bodies.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let store = store.clone();
                std::thread::spawn(move || {
                    let _ = serve_one(stream, &store);
                });
            }
        });
        Receiver { url, bodies }
    }

    pub(crate) fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }
}

fn serve_one(stream: TcpStream, store: &Mutex<Vec<Value>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    if let Ok(value) = serde_json::from_slice(&body) {
        store.lock().unwrap().push(value);
    }
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")?;
    Ok(())
}

/// A maildev SMTP server on free ports, stopped when dropped.
pub(crate) struct Maildev {
    child: Child,
    pub(crate) smtp_port: u16,
    web: String,
}

impl Maildev {
    /// Starts maildev, or returns `None` after a notice when it is not installed (a failure
    /// under CI; `.ci/run` installs it).
    pub(crate) fn start(user: &str, password: &str) -> Option<Maildev> {
        let smtp_port = free_port();
        let web_port = free_port();
        let child = Command::new("maildev")
            .args([
                "--ip",
                "127.0.0.1",
                "--web-ip",
                "127.0.0.1",
                "-s",
                &smtp_port.to_string(),
                "-w",
                &web_port.to_string(),
            ])
            .args(["--incoming-user", user, "--incoming-pass", password])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                service_available("maildev (npm install -g maildev)", e);
                return None;
            }
        };
        let mut maildev = Maildev {
            child,
            smtp_port,
            web: format!("127.0.0.1:{web_port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http_get(&maildev.web, "/api/email") {
                if TcpStream::connect(("127.0.0.1", smtp_port)).is_ok() {
                    return Some(maildev);
                }
            }
            if let Ok(Some(status)) = maildev.child.try_wait() {
                let error = format!("maildev exited at start-up ({status})");
                if in_ci() {
                    panic!("{error}");
                }
                service_available("maildev", error);
                return None;
            }
            assert!(
                Instant::now() < deadline,
                "maildev did not come up within 30s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub(crate) fn emails(&self) -> Vec<Value> {
        let (_, body) = http_get(&self.web, "/api/email").expect("maildev answers");
        serde_json::from_str(&body).unwrap_or_default()
    }
}

impl Drop for Maildev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[test]
fn the_daemon_never_loads_plugins_itself() {
    // The daemon crate must not be able to: it depends on neither the plugin host nor the
    // engine (docs/architecture.md, "Architecture invariant").
    let manifest: toml::Table =
        std::fs::read_to_string(workspace_root().join("crates/lockstep-daemon/Cargo.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let deps = manifest["dependencies"].as_table().unwrap();
    for forbidden in [
        "lockstep-plugin-host",
        "lockstep-orchestrator",
        "abi_stable",
        "libloading",
    ] {
        assert!(
            !deps.contains_key(forbidden),
            "lockstep-daemon depends on {forbidden}"
        );
    }
}

#[test]
fn syncs_run_on_schedule_and_a_slow_one_never_overlaps() {
    let dir = scratch();
    let mut config = config_head();
    config += &panicky_sync("every_second", "{}", r#"every = "1s""#, "");
    config += &panicky_sync("cron_two", "{}", r#"cron = "*/2 * * * * *""#, "");
    // Three batches of one row, 700ms each: a run takes over two seconds, ticks every second.
    config += &panicky_sync(
        "slow",
        "{ sleep_ms = 700 }",
        r#"every = "1s""#,
        "batch_size = 1\n",
    );
    write(dir.path(), &config);

    let daemon = Daemon::start(dir.path());
    let t0 = Instant::now();
    daemon.wait_for(Duration::from_secs(60), "runs of every sync", |d| {
        count(&d.finished_runs("every_second"), "succeeded") >= 5
            && count(&d.finished_runs("cron_two"), "succeeded") >= 3
            && count(&d.finished_runs("slow"), "succeeded") >= 3
    });
    let elapsed = t0.elapsed().as_secs_f64();

    // On time: an every-second sync starts close to each second; a 2-second cron on even
    // seconds. Start-up of a worker process is part of the delay, so the bounds are loose.
    let fast = daemon.finished_runs("every_second");
    let starts: Vec<f64> = fast
        .iter()
        .map(|r| epoch(r["started_at"].as_str().unwrap()))
        .collect();
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (0.3..=2.5).contains(&gap),
            "every_second runs {gap:.2}s apart: {starts:?}"
        );
    }
    assert!(
        fast.len() as f64 <= elapsed + 2.0,
        "{} runs in {elapsed:.1}s is more than one a second",
        fast.len()
    );
    let cron = daemon.finished_runs("cron_two");
    let starts: Vec<f64> = cron
        .iter()
        .map(|r| epoch(r["started_at"].as_str().unwrap()))
        .collect();
    for pair in starts.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            (1.0..=4.5).contains(&gap),
            "cron_two runs {gap:.2}s apart: {starts:?}"
        );
    }

    // The slow sync: each run starts after the previous one finished, and reads all rows.
    let slow = daemon.finished_runs("slow");
    for pair in slow.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let finished = epoch(a["finished_at"].as_str().unwrap());
        let started = epoch(b["started_at"].as_str().unwrap());
        assert!(started >= finished, "slow runs overlap: {a}\n{b}");
    }
    for r in slow.iter().filter(|r| r["status"] == "succeeded") {
        assert_eq!(r["metrics"]["read"], 3, "{r}");
        assert!(r["duration_ms"].as_i64().unwrap() >= 2000, "{r}");
    }
    assert!(
        daemon.logs().contains("passed during the run; skipped"),
        "missed ticks are logged"
    );

    // The JSON API and the metrics.
    let syncs = daemon.json("/api/syncs");
    let names: Vec<&str> = syncs
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["every_second", "cron_two", "slow"]);
    let cron_sync = &syncs[1];
    assert_eq!(cron_sync["schedule"]["description"], "cron */2 * * * * *");
    assert!(
        cron_sync["last_run"]["id"].as_i64().is_some(),
        "{cron_sync}"
    );
    let metrics = daemon.get("/metrics");
    for needle in [
        "# TYPE lockstep_runs counter",
        "lockstep_runs_total{sync=\"every_second\",status=\"succeeded\"}",
        "lockstep_records_total{sync=\"slow\",kind=\"read\"}",
        "lockstep_run_duration_seconds_bucket{le=\"+Inf\",sync=\"slow\"}",
        "lockstep_last_success_timestamp_seconds{sync=\"cron_two\"}",
        "lockstep_rejected_records{sync=\"slow\"} 0",
        "lockstep_open_conflicts{sync=\"slow\"} 0",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
    eprintln!("--- /metrics excerpt ---");
    for line in metrics
        .lines()
        .filter(|l| l.contains("sync=\"slow\"") && !l.contains("_bucket"))
    {
        eprintln!("{line}");
    }

    // Every line about a run names its sync and its run.
    let logs = daemon.logs();
    let run_lines: Vec<&str> = logs.lines().filter(|l| l.contains("run started")).collect();
    assert!(!run_lines.is_empty(), "{logs}");
    for line in run_lines {
        assert!(line.contains("sync=") && line.contains("run="), "{line}");
    }

    // `lockstep status` while the daemon runs.
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["status"]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.lines().next().unwrap().contains("NEXT RUN"),
        "{stdout}"
    );
    let slow_line = stdout.lines().find(|l| l.starts_with("slow ")).unwrap();
    assert!(slow_line.contains("every 1s"), "{stdout}");
    let (out, stdout, _) = run(lockstep(dir.path()).args(["status", "--output", "json"]));
    assert!(out.status.success());
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status[1]["schedule"], "cron */2 * * * * *");
    assert!(status[1]["next_run"].as_str().is_some(), "{status}");
    assert!(
        status[1]["last_run"]["metrics"]["read"].as_u64().is_some(),
        "{status}"
    );
}

#[test]
fn sigterm_stops_after_the_batch_in_hand() {
    let dir = scratch();
    let mut config = config_head();
    config += &panicky_sync(
        "slow",
        "{ sleep_ms = 1500 }",
        r#"every = "1s""#,
        "batch_size = 1\n",
    );
    write(dir.path(), &config);
    let mut daemon = Daemon::start(dir.path());
    // Wait for the first batch of a run to be committed.
    daemon.wait_for(
        Duration::from_secs(40),
        "a run with one batch committed",
        |d| {
            d.runs("slow")
                .iter()
                .any(|r| r["status"] == "running" && r["metrics"]["read"] == 1)
        },
    );
    let status = daemon.stop(Duration::from_secs(30));
    assert!(
        status.success(),
        "the daemon exits 0 after a graceful stop: {status}"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("stopping: waiting for slow to finish the batch in hand"),
        "{logs}"
    );
    assert!(logs.contains("lockstep daemon stopped"), "{logs}");

    let runs = cli_runs(dir.path(), "slow");
    let last = runs.last().unwrap();
    assert_eq!(last["status"], "cancelled", "{last}");
    let read = last["metrics"]["read"].as_u64().unwrap();
    assert!(
        (1..=2).contains(&read),
        "the run stopped after the batch in hand: {last}"
    );
    assert_eq!(
        count(&runs, "running"),
        0,
        "no run is left running: {runs:?}"
    );
}

#[test]
fn two_daemons_sharing_a_state_store_never_run_a_sync_twice_at_once() {
    let dir = scratch();
    let mut config = config_head();
    config += &panicky_sync(
        "shared",
        "{ sleep_ms = 400 }",
        r#"every = "1s""#,
        "batch_size = 1\n",
    );
    write(dir.path(), &config);
    let first = Daemon::start_with(dir.path(), "first", &[]);
    let second = Daemon::start_with(dir.path(), "second", &[]);
    first.wait_for(
        Duration::from_secs(60),
        "runs of the shared sync and a skip",
        |d| {
            let skipped = d
                .logs()
                .contains("skipped: another process is running this sync")
                || second
                    .logs()
                    .contains("skipped: another process is running this sync");
            count(&d.finished_runs("shared"), "succeeded") >= 4 && skipped
        },
    );
    let runs = first.finished_runs("shared");
    for pair in runs.windows(2) {
        let finished = epoch(pair[0]["finished_at"].as_str().unwrap());
        let started = epoch(pair[1]["started_at"].as_str().unwrap());
        assert!(
            started >= finished,
            "runs overlap:\n{}\n{}",
            pair[0],
            pair[1]
        );
    }
    // A skip is not a failure: nothing failed, nothing was alerted.
    assert_eq!(count(&runs, "failed"), 0, "{runs:?}");
    for d in [&first, &second] {
        assert!(!d.logs().contains("alert:"), "{}", d.logs());
    }
}

#[test]
fn sighup_reloads_a_valid_config_and_keeps_the_old_one_otherwise() {
    let dir = scratch();
    let first = config_head() + &panicky_sync("alpha", "{}", r#"every = "1s""#, "");
    write(dir.path(), &first);
    let daemon = Daemon::start(dir.path());
    daemon.wait_for(Duration::from_secs(40), "a run of alpha", |d| {
        count(&d.finished_runs("alpha"), "succeeded") >= 1
    });

    // Invalid TOML: kept, with the error logged.
    write(
        dir.path(),
        &(first.clone() + "\n[syncs.alpha.schedule\nevery = 1s\n"),
    );
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(
        Duration::from_secs(20),
        "the invalid config to be refused",
        |d| d.logs().contains("the config was not reloaded"),
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("lockstep.toml:"),
        "the error names the file and line:\n{logs}"
    );

    // Valid TOML, but a connector that is not installed: refused by the plugin check.
    let missing = first.clone()
        + "\n[connections.ghost]\nconnector = \"nonexistent\"\n\n[syncs.ghostly]\nsource = \"ghost.items\"\ndestination = \"sink.ghostly\"\n[syncs.ghostly.schedule]\nevery = \"1s\"\n";
    write(dir.path(), &missing);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(
        Duration::from_secs(60),
        "the config with a missing connector to be refused",
        |d| d.logs().matches("the config was not reloaded").count() >= 2,
    );
    assert!(daemon.logs().contains("nonexistent"), "{}", daemon.logs());

    // The old config still runs.
    let before = count(&daemon.finished_runs("alpha"), "succeeded");
    daemon.wait_for(Duration::from_secs(30), "alpha to keep running", |d| {
        count(&d.finished_runs("alpha"), "succeeded") >= before + 2
    });
    assert!(daemon.runs("ghostly").is_empty());

    // A valid config: alpha goes, beta comes.
    let second = config_head() + &panicky_sync("beta", "{}", r#"cron = "* * * * * *""#, "");
    write(dir.path(), &second);
    daemon.signal(libc::SIGHUP);
    daemon.wait_for(Duration::from_secs(60), "beta to run", |d| {
        count(&d.finished_runs("beta"), "succeeded") >= 2
    });
    let logs = daemon.logs();
    assert!(
        logs.contains(
            "config reloaded: 1 syncs scheduled; added: beta; no longer scheduled: alpha"
        ),
        "{logs}"
    );
    let alpha_done = daemon.finished_runs("alpha").len();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        daemon.runs("alpha").len() <= alpha_done + 1,
        "alpha is no longer scheduled"
    );
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("lockstep_config_reloads_total{result=\"invalid\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lockstep_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
}

/// How many runs of sync `healthy` succeeded that started after the first run of sync
/// `segfaults` had finished (0 before that run finished).
fn healthy_after_first_crash(daemon: &Daemon) -> usize {
    let Some(first_crash) = daemon
        .finished_runs("segfaults")
        .first()
        .and_then(|r| r["finished_at"].as_str().map(epoch))
    else {
        return 0;
    };
    daemon
        .finished_runs("healthy")
        .iter()
        .filter(|r| {
            r["status"] == "succeeded" && epoch(r["started_at"].as_str().unwrap()) > first_crash
        })
        .count()
}

#[test]
fn crashing_plugins_fail_their_run_and_the_daemon_keeps_scheduling() {
    let dir = scratch();
    let mut config = config_head();
    config += &panicky_sync(
        "segfaults",
        r#"{ segv_in = "next_batch" }"#,
        r#"every = "1s""#,
        "",
    );
    config += &panicky_sync(
        "aborts",
        r#"{ abort_in = "next_batch" }"#,
        r#"every = "1s""#,
        "",
    );
    config += &panicky_sync(
        "panics",
        r#"{ panic_in = "next_batch" }"#,
        r#"every = "1s""#,
        "",
    );
    // Over its timeout during one of its first three batches: asked to stop, it stops after
    // the batch in hand, long before its 10 rows are read. A batch takes 3 s and the timeout
    // is 8 s, so the count is 1 to 3 for any worker start-up under 8 s (a machine loaded by
    // parallel test suites has taken over 4 s to start one).
    config += &panicky_sync(
        "too_slow",
        "{ sleep_ms = 3000, rows = 10 }",
        "every = \"1s\"\ntimeout = \"8s\"",
        "batch_size = 1\n",
    );
    config += &panicky_sync("healthy", "{}", r#"every = "1s""#, "");
    write(dir.path(), &config);
    let daemon = Daemon::start(dir.path());
    daemon.wait_for(
        Duration::from_secs(90),
        "crashes, a timeout and healthy runs",
        |d| {
            d.finished_runs("segfaults").len() >= 2
                && d.finished_runs("aborts").len() >= 2
                && !d.finished_runs("panics").is_empty()
                && !d.finished_runs("too_slow").is_empty()
                && count(&d.finished_runs("healthy"), "succeeded") >= 4
                && healthy_after_first_crash(d) >= 2
        },
    );

    for (sync, signal) in [("segfaults", "SIGSEGV"), ("aborts", "SIGABRT")] {
        for r in daemon.finished_runs(sync) {
            assert_eq!(r["status"], "failed", "{r}");
            assert_eq!(r["error_kind"], "crash", "{r}");
            assert!(r["error"].as_str().unwrap().contains(signal), "{r}");
            let detail = r["exit_detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(&format!("was killed by signal {signal}")),
                "{r}"
            );
            assert!(
                detail.contains("stderr"),
                "the exit detail carries the stderr tail: {r}"
            );
        }
    }
    // A panic is caught by the SDK: a normal failed report, no crash.
    for r in daemon.finished_runs("panics") {
        assert_eq!(r["status"], "failed", "{r}");
        assert_eq!(r["error_kind"], "panic", "{r}");
        assert!(r["exit_detail"].is_null(), "{r}");
    }
    let timed_out = &daemon.finished_runs("too_slow")[0];
    assert_eq!(timed_out["status"], "failed", "{timed_out}");
    assert_eq!(timed_out["error_kind"], "timeout", "{timed_out}");
    let read = timed_out["metrics"]["read"].as_u64().unwrap();
    assert!(
        (1..=3).contains(&read),
        "stopped after the batch in hand: {timed_out}"
    );

    // The healthy sync ran on, also after the crashes (the wait above saw two such runs).
    let healthy_after = healthy_after_first_crash(&daemon);
    assert!(
        healthy_after >= 2,
        "healthy runs after the first crash: {healthy_after}"
    );
    assert_eq!(http_get(&daemon.addr, "/healthz").unwrap().0, 200);
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("lockstep_worker_crashes_total{sync=\"segfaults\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("lockstep_runs_total{sync=\"aborts\",status=\"failed\"}"),
        "{metrics}"
    );

    // `lockstep runs` shows the crashes.
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["runs", "segfaults"]));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("crash: the worker process was killed by signal SIGSEGV"),
        "{stdout}"
    );
    let json = cli_runs(dir.path(), "aborts");
    assert!(
        json[0]["error"].as_str().unwrap().contains("SIGABRT"),
        "{}",
        json[0]
    );
    let (out, stdout, _) = run(lockstep(dir.path()).args(["status", "--output", "json"]));
    assert!(out.status.success());
    let status: Value = serde_json::from_str(&stdout).unwrap();
    let segv = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "segfaults")
        .unwrap();
    assert!(
        segv["last_run"]["exit_detail"]
            .as_str()
            .unwrap()
            .contains("SIGSEGV"),
        "{segv}"
    );
}

#[test]
fn transient_failures_are_retried_with_backoff_and_config_errors_are_not() {
    let dir = scratch();
    let state_file = dir.path().join("flaky.count");
    let mut config = config_head();
    config += &panicky_sync(
        "flaky",
        &format!(
            "{{ fail_transient_times = 2, state_file = {:?} }}",
            state_file.to_str().unwrap()
        ),
        r#"every = "1h""#,
        "",
    );
    config += "[syncs.flaky.retry]\nmax_attempts = 3\ninitial_backoff = \"300ms\"\nmax_backoff = \"2s\"\n";
    // A config error: never retried.
    config += &panicky_sync(
        "misconfigured",
        r#"{ panic_in = "nowhere" }"#,
        r#"every = "1h""#,
        "",
    );
    config += "[syncs.misconfigured.retry]\nmax_attempts = 5\ninitial_backoff = \"100ms\"\n";
    // catch_up = run-once with no history: nothing to catch up; so both run at start via a
    // one-off run of each first.
    write(dir.path(), &config);
    for sync in ["flaky", "misconfigured"] {
        // Seed the history: these by-hand runs make the schedule's previous tick "missed".
        let _ = run(lockstep(dir.path()).args(["run", sync]));
    }
    // The by-hand run of flaky used one of its two transient failures.
    assert_eq!(std::fs::read_to_string(&state_file).unwrap(), "1");
    // Pretend the by-hand runs happened long ago, so the hourly tick in between was missed.
    rewind_history(dir.path());
    let config = config.replace("every = \"1h\"", "every = \"1h\"\ncatch_up = \"run-once\"");
    write(dir.path(), &config);

    let daemon = Daemon::start(dir.path());
    daemon.wait_for(Duration::from_secs(60), "flaky to recover", |d| {
        count(&d.finished_runs("flaky"), "succeeded") >= 1
    });
    daemon.wait_for(Duration::from_secs(30), "misconfigured to fail", |d| {
        d.finished_runs("misconfigured").len() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));

    let flaky = daemon.finished_runs("flaky");
    let statuses: Vec<(&str, &str)> = flaky
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap(),
                r["error_kind"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    // The by-hand run, then the daemon's: one transient failure, a retry that succeeds.
    assert_eq!(
        statuses,
        [
            ("failed", "transient"),
            ("failed", "transient"),
            ("succeeded", "-")
        ],
        "{flaky:?}"
    );
    let gap = epoch(flaky[2]["started_at"].as_str().unwrap())
        - epoch(flaky[1]["finished_at"].as_str().unwrap());
    assert!(gap >= 0.3, "the retry waited for the backoff: {gap:.2}s");
    let logs = daemon.logs();
    assert!(
        logs.contains("retrying in 300ms (attempt 2 of 3)"),
        "{logs}"
    );

    // The config error ran once at start-up (catch-up) and was not retried.
    let misconfigured = daemon.finished_runs("misconfigured");
    assert_eq!(
        misconfigured.len(),
        2,
        "the by-hand run and one daemon run: {misconfigured:?}"
    );
    assert_eq!(
        misconfigured[1]["error_kind"], "config",
        "{}",
        misconfigured[1]
    );
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("lockstep_retries_total{sync=\"flaky\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("lockstep_retries_total{sync=\"misconfigured\"}"),
        "{metrics}"
    );
    assert!(
        logs.contains("running once now (catch_up = \"run-once\")"),
        "{logs}"
    );
}

/// Moves every recorded run two hours back.
fn rewind_history(dir: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
        let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(dir.join("state.db")))
            .await
            .unwrap();
        sqlx::query(
            r#"UPDATE "runs" SET "started_at" = strftime('%Y-%m-%dT%H:%M:%f000Z', "started_at", '-2 hours'),
               "finished_at" = strftime('%Y-%m-%dT%H:%M:%f000Z', "finished_at", '-2 hours')"#,
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    });
}

#[test]
fn alerts_arrive_by_webhook_and_email_with_the_right_content() {
    const PASSWORD: &str = "s3cr3t-smtp-pw";
    let Some(maildev) = Maildev::start("lockstep", PASSWORD) else {
        return;
    };
    let receiver = Receiver::start();
    let dir = scratch();
    let state_file = dir.path().join("flaky.count");
    create_contacts(&dir.path().join("crm.db"), 20);

    let mut config = config_head();
    config += &format!(
        r#"
[alerts]
consecutive_failures = 2
on_recovery = true
low_volume_fraction = 0.5
low_volume_window = 5

[[alerts.webhook]]
url = "{}"

[alerts.email]
smtp_host = "127.0.0.1"
smtp_port = {}
starttls = "off"
username = "lockstep"
password = "${{SMTP_PASSWORD}}"
from = "lockstep@example.com"
to = ["ops@example.com"]
"#,
        receiver.url, maildev.smtp_port
    );
    // Fails twice (no retries), then succeeds: failure, 2 in a row, recovery.
    config += &panicky_sync(
        "flaky",
        &format!(
            "{{ fail_transient_times = 2, state_file = {:?} }}",
            state_file.to_str().unwrap()
        ),
        r#"every = "2s""#,
        "",
    );
    config += "[syncs.flaky.retry]\nmax_attempts = 1\n";
    // A full sync of 20 contacts, until the source table is emptied: low volume.
    config += r#"
[connections.crm]
connector = "sqlite"
config = { path = "crm.db" }

[connections.mkt]
connector = "sqlite"
config = { path = "marketing.db" }

[syncs.contacts]
source = "crm.contacts"
destination = "mkt.subscribers"
[syncs.contacts.schedule]
every = "1s"
"#;
    write(dir.path(), &config);
    let daemon = Daemon::start_with(dir.path(), "daemon", &[("SMTP_PASSWORD", PASSWORD)]);

    daemon.wait_for(
        Duration::from_secs(60),
        "three runs of contacts and flaky's recovery",
        |d| {
            count(&d.finished_runs("contacts"), "succeeded") >= 3
                && count(&d.finished_runs("flaky"), "succeeded") >= 1
        },
    );
    delete_contacts(&dir.path().join("crm.db"));
    let bodies_of = |kind: &str| -> Vec<Value> {
        receiver
            .bodies()
            .into_iter()
            .filter(|b| b["kind"] == kind)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while bodies_of("low-volume").is_empty() || bodies_of("recovery").is_empty() {
        assert!(
            Instant::now() < deadline,
            "alerts missing; received: {:?}\n{}",
            receiver.bodies(),
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Webhook: failure, then 2 in a row, then recovery, for flaky.
    let flaky_runs = daemon.finished_runs("flaky");
    let flaky: Vec<Value> = receiver
        .bodies()
        .into_iter()
        .filter(|b| b["sync"] == "flaky")
        .collect();
    let kinds: Vec<&str> = flaky.iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds[..3],
        ["failure", "consecutive-failures", "recovery"],
        "{flaky:?}"
    );
    for (body, run) in flaky.iter().zip(&flaky_runs) {
        assert_eq!(body["run"], run["id"], "{body}");
        assert_eq!(body["status"], run["status"], "{body}");
    }
    let failure = &flaky[0];
    assert!(
        failure["reason"].as_str().unwrap().contains("transient"),
        "{failure}"
    );
    assert!(
        failure["reason"]
            .as_str()
            .unwrap()
            .contains("deliberate transient failure 1 of 2"),
        "{failure}"
    );
    assert_eq!(failure["metrics"]["read"], 0, "{failure}");
    let text = failure["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!(
            "[lockstep] sync flaky failed (run {})",
            flaky_runs[0]["id"]
        )),
        "{text}"
    );
    assert!(
        flaky[1]["text"]
            .as_str()
            .unwrap()
            .contains("failed 2 times in a row"),
        "{}",
        flaky[1]
    );
    assert_eq!(flaky[1]["consecutive_failures"], 2);
    assert!(
        flaky[2]["reason"]
            .as_str()
            .unwrap()
            .contains("succeeded after 2 failed runs"),
        "{}",
        flaky[2]
    );
    assert_eq!(flaky[2]["metrics"]["read"], 3);

    // Low volume: the zero-record run after the source was emptied.
    let low = &bodies_of("low-volume")[0];
    assert_eq!(low["sync"], "contacts");
    assert_eq!(low["status"], "succeeded");
    assert_eq!(low["metrics"]["read"], 0, "{low}");
    let reason = low["reason"].as_str().unwrap();
    assert!(
        reason.contains("read 0 records, below 50% of the median of the last"),
        "{reason}"
    );
    assert!(reason.contains("(20)"), "the median is 20: {reason}");

    // Email: the same alerts through SMTP with authentication.
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = format!("[lockstep] sync contacts: low volume (run {})", low["run"]);
    loop {
        let emails = maildev.emails();
        if emails.iter().any(|e| e["subject"] == wanted.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no email `{wanted}`; got {emails:?}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let emails = maildev.emails();
    let subject_of = |e: &Value| e["subject"].as_str().unwrap_or_default().to_owned();
    let failure_mail = emails
        .iter()
        .find(|e| {
            subject_of(e) == format!("[lockstep] sync flaky failed (run {})", flaky_runs[0]["id"])
        })
        .unwrap_or_else(|| panic!("no failure email: {emails:?}"));
    let body = failure_mail["text"].as_str().unwrap();
    assert!(body.contains("Reason: transient: "), "{body}");
    assert!(body.contains("Sync: flaky"), "{body}");
    assert!(
        body.contains("Counts: read 0, added 0, updated 0, unchanged 0, deleted 0"),
        "{body}"
    );
    assert_eq!(failure_mail["to"][0]["address"], "ops@example.com");
    assert_eq!(failure_mail["from"][0]["address"], "lockstep@example.com");
    let low_mail = emails.iter().find(|e| subject_of(e) == wanted).unwrap();
    let low_body = low_mail["text"].as_str().unwrap();
    assert!(low_body.contains("Counts: read 0"), "{low_body}");
    assert!(low_body.contains("below 50% of the median"), "{low_body}");
    eprintln!(
        "--- received email ---\nSubject: {}\n\n{}",
        subject_of(low_mail),
        low_body
    );
    eprintln!(
        "--- received email ---\nSubject: {}\n\n{}",
        subject_of(failure_mail),
        body
    );

    // The SMTP password and the webhook's token never show up in logs or alerts.
    let logs = daemon.logs();
    assert!(
        !logs.contains(PASSWORD),
        "the SMTP password leaked into the logs"
    );
    assert!(
        !logs.contains("SECRET"),
        "the webhook url's token leaked into the logs"
    );
    assert!(!serde_json::to_string(&receiver.bodies())
        .unwrap()
        .contains(PASSWORD));
    let metrics = daemon.get("/metrics");
    assert!(
        metrics.contains("lockstep_alerts_total{sync=\"contacts\",kind=\"low-volume\"}"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("lockstep_alert_delivery_failures_total{"),
        "{metrics}"
    );
}

fn create_contacts(db: &Path, rows: i64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(db)
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query("CREATE TABLE contacts (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        for id in 1..=rows {
            sqlx::query("INSERT INTO contacts VALUES (?, ?)")
                .bind(id)
                .bind(format!("user{id}@example.com"))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool.close().await;
    });
}

fn delete_contacts(db: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
        let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(db))
            .await
            .unwrap();
        sqlx::query("DELETE FROM contacts")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
}
