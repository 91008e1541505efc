//! What operators read and what a run leaves behind: one error line per failed run, the run
//! history while the config file is invalid, alerts that remind instead of repeating, helper
//! processes that end with their run, secrets that never show, and rate limits honoured.
//!
//! The daemon helpers (scratch directories with the panicky test plugin, a daemon, a webhook
//! receiver, maildev) are those of `daemon.rs`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lockstep_e2e::{lockstep, run};
use serde_json::Value;

use crate::daemon::{
    cli_runs, config_head, count, epoch, panicky_sync, scratch, write, Daemon, Maildev, Receiver,
};

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

#[test]
fn a_failed_run_prints_its_error_once() {
    let dir = scratch();
    let state_file = dir.path().join("broken.count");
    let mut config = config_head();
    config += &panicky_sync(
        "broken",
        &format!("{{ fail_transient_times = 100, state_file = {state_file:?} }}"),
        r#"every = "1h""#,
        "",
    );
    write(dir.path(), &config);

    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["run", "broken"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let error = "deliberate transient failure 1 of 100";
    assert_eq!(
        stderr.matches(error).count(),
        1,
        "the error is printed once on stderr:\n{stderr}"
    );
    assert!(stderr.contains("error (transient): "), "{stderr}");

    // With --output json the error is in the report, and stderr does not repeat it.
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["run", "broken", "--output", "json"]));
    assert!(!out.status.success());
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(
        report["error"]["message"]
            .as_str()
            .unwrap()
            .contains("deliberate transient failure 2 of 100"),
        "{report}"
    );
    assert!(
        !stderr.contains("deliberate transient failure"),
        "stderr repeats the error of the JSON report:\n{stderr}"
    );
}

#[test]
fn status_and_runs_show_the_history_while_the_config_is_invalid() {
    let dir = scratch();
    let mut config = config_head();
    config += &panicky_sync("contacts", "{}", r#"every = "1h""#, "");
    write(dir.path(), &config);
    let (out, _, stderr) = run(lockstep(dir.path()).args(["run", "contacts"]));
    assert!(out.status.success(), "{stderr}");

    // The file breaks: the history stays readable, with a warning that names the problem.
    write(
        dir.path(),
        &format!("{config}\n[daemon]\nlisten = \"localhost\"\n"),
    );
    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["runs"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("contacts"), "{stdout}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(
        stderr.contains("`daemon.listen` must be host:port"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: the config file")
            && stderr.contains("is invalid (1 error)")
            && stderr.contains("the state store of its last valid version"),
        "{stderr}"
    );
    let runs = cli_runs(dir.path(), "contacts");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["status"], "succeeded");

    let (out, stdout, stderr) = run(lockstep(dir.path()).args(["status"]));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("contacts"))
        .unwrap_or_else(|| panic!("no line for contacts:\n{stdout}"));
    assert!(line.contains("config invalid"), "{line}");
    assert!(line.contains("succeeded"), "{line}");
    let (out, stdout, _) = run(lockstep(dir.path()).args(["status", "--output", "json"]));
    assert!(out.status.success());
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status[0]["name"], "contacts", "{status}");
    assert_eq!(status[0]["last_run"]["status"], "succeeded", "{status}");

    // Without a remembered state store, the error says what to do, and --state works.
    std::fs::remove_file(dir.path().join(".lockstep/lockstep.toml.last-state.toml")).unwrap();
    let (out, _, stderr) = run(lockstep(dir.path()).args(["runs"]));
    assert!(!out.status.success());
    assert!(stderr.contains("--state URL"), "{stderr}");
    let (out, stdout, stderr) =
        run(lockstep(dir.path()).args(["runs", "--state", "sqlite://state.db"]));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("succeeded"), "{stdout}");
    assert!(
        stderr.contains("the state store given with --state"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------------------------------
// The daemon
// ---------------------------------------------------------------------------------------

#[test]
fn a_sync_that_keeps_failing_alerts_first_at_the_threshold_then_at_the_repeat_interval() {
    let receiver = Receiver::start();
    let dir = scratch();
    let state_file = dir.path().join("broken.count");
    let mut config = config_head();
    config += &format!(
        "\n[alerts]\nconsecutive_failures = 3\nrepeat_interval = \"4s\"\n\
         [[alerts.webhook]]\nurl = \"{}\"\n",
        receiver.url
    );
    config += &panicky_sync(
        "broken",
        &format!("{{ fail_transient_times = 1000000, state_file = {state_file:?} }}"),
        r#"every = "1s""#,
        "",
    );
    config += "[syncs.broken.retry]\nmax_attempts = 1\n";
    write(dir.path(), &config);
    let daemon = Daemon::start(dir.path());
    daemon.wait_for(Duration::from_secs(90), "twelve failed runs", |d| {
        count(&d.finished_runs("broken"), "failed") >= 12
    });
    // The source heals: the next run succeeds.
    std::fs::write(&state_file, "1000000").unwrap();
    let alerts = || -> Vec<Value> {
        receiver
            .bodies()
            .into_iter()
            .filter(|b| b["sync"] == "broken")
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !alerts().iter().any(|b| b["kind"] == "recovery") {
        assert!(
            Instant::now() < deadline,
            "no recovery alert; received {:?}\n{}",
            alerts(),
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let runs = daemon.finished_runs("broken");
    let failed = count(&runs, "failed");
    let alerts = alerts();
    let kinds: Vec<&str> = alerts.iter().map(|b| b["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds[..2], ["failure", "consecutive-failures"], "{kinds:?}");
    assert_eq!(kinds.last(), Some(&"recovery"), "{kinds:?}");
    let reminders = &kinds[2..kinds.len() - 1];
    assert!(
        !reminders.is_empty() && reminders.iter().all(|k| *k == "still-failing"),
        "between the threshold and the recovery, only reminders: {kinds:?}"
    );
    assert!(
        kinds.len() - 1 < failed / 2,
        "{} failure alerts for {failed} failed runs: {kinds:?}",
        kinds.len() - 1
    );
    // The first failed run, the third, then reminders at least the interval apart.
    assert_eq!(alerts[0]["run"], runs[0]["id"], "{:?}", alerts[0]);
    assert_eq!(alerts[1]["run"], runs[2]["id"], "{:?}", alerts[1]);
    assert_eq!(alerts[1]["consecutive_failures"], 3);
    let finished_at = |run: &Value| -> f64 {
        let run = runs
            .iter()
            .find(|r| r["id"] == *run)
            .unwrap_or_else(|| panic!("no run {run}"));
        epoch(run["finished_at"].as_str().unwrap())
    };
    for pair in alerts[1..alerts.len() - 1].windows(2) {
        let gap = finished_at(&pair[1]["run"]) - finished_at(&pair[0]["run"]);
        assert!(
            gap >= 3.5,
            "alerts {gap:.2}s apart, under repeat_interval = 4s: {alerts:?}"
        );
    }
    let reminder = &alerts[2];
    assert!(
        reminder["text"]
            .as_str()
            .unwrap()
            .contains("sync broken still failing: "),
        "{reminder}"
    );
    assert!(
        daemon
            .logs()
            .contains("not alerted again before the repeat interval"),
        "{}",
        daemon.logs()
    );
}

/// Whether process `pid` is alive (a zombie is not: it has ended and waits to be reaped).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next()),
            Some('Z' | 'X')
        ),
        Err(_) => false,
    }
}

/// The helper processes the panicky plugin recorded in `file`: (label, pid) in order.
fn helpers(file: &Path) -> Vec<(String, i32)> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (label, pid) = l.split_once(' ')?;
            Some((label.to_owned(), pid.trim().parse().ok()?))
        })
        .collect()
}

/// Kills the helpers a failed test left behind (only `sleep` processes, by pid).
struct HelperCleanup(PathBuf);

impl Drop for HelperCleanup {
    fn drop(&mut self) {
        for (_, pid) in helpers(&self.0) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if alive(pid) && String::from_utf8_lossy(&cmdline).contains("sleep") {
                // SAFETY: kill(2) with plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn processes_a_plugin_started_end_with_a_killed_run() {
    let dir = scratch();
    let pid_file = dir.path().join("helpers.pids");
    let _cleanup = HelperCleanup(pid_file.clone());
    let mut config = config_head();
    // One batch of 8 seconds: past the timeout of 1s, SIGTERM asks the worker to stop after
    // the batch in hand; 5s later (the daemon's kill grace in these tests) SIGKILL ends it.
    config += &panicky_sync(
        "helpers",
        &format!("{{ spawn_child = {pid_file:?}, sleep_ms = 8000 }}"),
        "every = \"1s\"\ntimeout = \"1s\"",
        "",
    );
    write(dir.path(), &config);
    let mut daemon = Daemon::start(dir.path());
    daemon.wait_for(Duration::from_secs(30), "the helper processes", |_| {
        helpers(&pid_file).len() >= 2
    });
    let started = helpers(&pid_file);
    let (plain, stubborn) = (started[0].1, started[1].1);
    assert_eq!(started[0].0, "plain");
    assert_eq!(started[1].0, "stubborn");

    // SIGTERM reaches the whole process group: the plain helper ends while the worker is
    // still in its batch.
    daemon.wait_for(
        Duration::from_secs(10),
        "the plain helper to end at the timeout's SIGTERM",
        |_| !alive(plain),
    );
    let first = daemon.runs("helpers")[0].clone();
    assert_eq!(
        first["status"], "running",
        "the worker is still in its batch: {first}"
    );
    assert!(alive(stubborn), "the stubborn helper ignores SIGTERM");

    // SIGKILL reaches the whole group too: the helper that ignores SIGTERM ends with the run.
    daemon.wait_for(Duration::from_secs(20), "the first run to end", |d| {
        !d.finished_runs("helpers").is_empty()
    });
    let ended = &daemon.finished_runs("helpers")[0];
    assert_eq!(ended["id"], first["id"]);
    assert_eq!(ended["status"], "failed", "{ended}");
    assert_eq!(ended["error_kind"], "timeout", "{ended}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(stubborn) {
        assert!(
            Instant::now() < deadline,
            "the helper deaf to SIGTERM outlived its killed run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // A stopped daemon leaves no helper of any run behind.
    let status = daemon.stop(Duration::from_secs(30));
    assert!(status.success(), "{status}");
    let left: Vec<(String, i32)> = helpers(&pid_file)
        .into_iter()
        .filter(|(_, pid)| alive(*pid))
        .collect();
    assert!(left.is_empty(), "helpers left running: {left:?}");
}

#[test]
fn a_secret_a_connector_echoes_shows_in_no_output() {
    const TOKEN: &str = "tok-7c1e55-hush";
    const SMTP_PASSWORD: &str = "smtp-pw-41f0";
    let Some(maildev) = Maildev::start("lockstep", SMTP_PASSWORD) else {
        return;
    };
    let receiver = Receiver::start();
    let dir = scratch();
    let mut config = config_head();
    config += &format!(
        r#"
[alerts]
consecutive_failures = 1

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

[connections.leaky_src]
connector = "panicky"
config = {{ leak = "${{LEAK_TOKEN}}" }}

[syncs.leaky]
source = "leaky_src.items"
destination = "sink.leaky"
"#,
        receiver.url, maildev.smtp_port
    );
    // In a worker the plugin also prints the token on stdout, which the daemon logs.
    config += &panicky_sync(
        "leaky_daemon",
        r#"{ leak = "${LEAK_TOKEN}", leak_stdout = true }"#,
        r#"every = "1s""#,
        "",
    );
    config += "[syncs.leaky_daemon.retry]\nmax_attempts = 1\n";
    write(dir.path(), &config);
    let cli = |args: &[&str]| {
        let (_, stdout, stderr) = run(lockstep(dir.path())
            .args(args)
            .env("LEAK_TOKEN", TOKEN)
            .env("SMTP_PASSWORD", SMTP_PASSWORD));
        let shown = format!("{stdout}\n{stderr}");
        assert!(
            !shown.contains(TOKEN),
            "`lockstep {}` shows the secret:\n{shown}",
            args.join(" ")
        );
        shown
    };

    // The CLI: the run's stderr, its JSON report, the history.
    let shown = cli(&["run", "leaky"]);
    assert!(
        shown.contains("panicky: the server refused token ***"),
        "{shown}"
    );
    assert!(
        shown.contains("panicky: logging in with token ***"),
        "{shown}"
    );
    let shown = cli(&["run", "leaky", "--output", "json"]);
    assert!(shown.contains("refused token ***"), "{shown}");
    let shown = cli(&["runs"]);
    assert!(shown.contains("refused token ***"), "{shown}");
    cli(&["runs", "--output", "json"]);
    cli(&["status", "--output", "json"]);

    // The daemon: its log, its API, webhook and email alerts.
    let daemon = Daemon::start_with(
        dir.path(),
        "daemon",
        &[("LEAK_TOKEN", TOKEN), ("SMTP_PASSWORD", SMTP_PASSWORD)],
    );
    daemon.wait_for(Duration::from_secs(60), "two failed runs", |d| {
        count(&d.finished_runs("leaky_daemon"), "failed") >= 2
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let emails = loop {
        let emails = maildev.emails();
        let webhook = receiver.bodies();
        if !webhook.is_empty() && !emails.is_empty() {
            break emails;
        }
        assert!(
            Instant::now() < deadline,
            "no alerts: webhook {webhook:?}, email {emails:?}\n{}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let logs = daemon.logs();
    assert!(!logs.contains(TOKEN), "the daemon log shows the secret");
    assert!(
        logs.contains("worker stdout: panicky: token *** refused"),
        "the worker's stdout line is logged, redacted:\n{logs}"
    );
    let out = std::fs::read_to_string(dir.path().join("daemon.out")).unwrap_or_default();
    assert!(!out.contains(TOKEN), "the daemon's stdout shows the secret");
    let api_runs = daemon.get("/api/runs");
    assert!(!api_runs.contains(TOKEN), "/api/runs shows the secret");
    assert!(api_runs.contains("refused token ***"), "{api_runs}");
    assert!(!daemon.get("/api/syncs").contains(TOKEN));
    let webhook = serde_json::to_string(&receiver.bodies()).unwrap();
    assert!(!webhook.contains(TOKEN), "a webhook alert shows the secret");
    assert!(webhook.contains("refused token ***"), "{webhook}");
    let email = serde_json::to_string(&emails).unwrap();
    assert!(!email.contains(TOKEN), "an email alert shows the secret");
    assert!(email.contains("refused token ***"), "{email}");
    assert!(!logs.contains(SMTP_PASSWORD) && !webhook.contains(SMTP_PASSWORD));
}

#[test]
fn a_rate_limited_run_is_retried_no_sooner_than_the_source_asked() {
    let dir = scratch();
    let state_file = dir.path().join("limited.count");
    let mut config = config_head();
    config += &panicky_sync(
        "limited",
        &format!(
            "{{ rate_limited_times = 1, retry_after_ms = 3000, state_file = {state_file:?} }}"
        ),
        r#"every = "1s""#,
        "",
    );
    // The sync's own backoff is far shorter than what the source asks for.
    config += "[syncs.limited.retry]\nmax_attempts = 3\ninitial_backoff = \"100ms\"\nmax_backoff = \"200ms\"\n";
    write(dir.path(), &config);
    let daemon = Daemon::start(dir.path());
    daemon.wait_for(Duration::from_secs(60), "the retry to succeed", |d| {
        count(&d.finished_runs("limited"), "succeeded") >= 1
    });
    let runs = daemon.finished_runs("limited");
    assert_eq!(runs[0]["status"], "failed", "{runs:?}");
    assert_eq!(runs[0]["error_kind"], "rate-limited", "{runs:?}");
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap()
            .contains("deliberate rate limit 1 of 1"),
        "{runs:?}"
    );
    assert_eq!(runs[1]["status"], "succeeded", "{runs:?}");
    let waited = epoch(runs[1]["started_at"].as_str().unwrap())
        - epoch(runs[0]["finished_at"].as_str().unwrap());
    assert!(
        waited >= 3.0,
        "the retry came {waited:.2}s after the rate-limited run, sooner than retry_after (3s)"
    );
    let logs = daemon.logs();
    assert!(
        logs.contains("the run failed with a rate-limited error; retrying in 3s (attempt 2 of 3)"),
        "{logs}"
    );
}
