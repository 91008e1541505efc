//! One run in a `lockstep worker` child process: spawn it, hand it the config, follow its
//! events, forward its logs, enforce the timeout, and tell how it ended.
//!
//! The worker gets its own process group, so a Ctrl-C at the daemon's terminal reaches the
//! daemon only; the daemon decides when workers stop (SIGTERM: stop after the batch in hand)
//! and, past a grace period, kills them (SIGKILL). Both signals go to the whole group, so
//! processes a plugin started get them too, and once the worker has ended, whatever is left
//! in its group is killed: nothing a run started outlives it. The worker's stdin stays open
//! for its whole life: if the daemon dies, the worker reads end of file and stops the same
//! graceful way.
//!
//! Everything the worker writes (log lines on stderr, stray lines on stdout) is redacted with
//! the config's secrets before the daemon logs or keeps it.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use lockstep_config::Secrets;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::protocol::{WorkerEvent, WorkerInput, WorkerReport};

/// How much of the worker's stderr is kept for the record of a crash.
pub(crate) const STDERR_TAIL_BYTES: usize = 4096;

/// What to run.
pub(crate) struct WorkerSpec<'a> {
    pub exe: &'a Path,
    pub config_path: &'a Path,
    pub config_text: &'a str,
    pub sync: &'a str,
    pub timeout: Option<Duration>,
    /// How long a worker may take to stop after SIGTERM before it is killed.
    pub grace: Duration,
    pub secrets: &'a Secrets,
}

/// How a worker process ended.
#[derive(Debug)]
pub(crate) struct WorkerExit {
    /// The run the worker announced, if it got that far.
    pub run: Option<i64>,
    /// The final report, if the worker wrote one.
    pub report: Option<WorkerReport>,
    pub status: ExitStatus,
    /// The end of its stderr, logs rendered as text, secrets redacted.
    pub stderr_tail: String,
    /// The timeout expired and the worker was told to stop.
    pub timed_out: bool,
    /// The worker was killed with SIGKILL after the grace period.
    pub killed: bool,
    /// The daemon is stopping and told the worker to stop (SIGTERM).
    pub stopped: bool,
}

impl WorkerExit {
    /// "exited with status 3", "was killed by signal SIGSEGV (invalid memory access)".
    pub(crate) fn describe(&self) -> String {
        describe_status(&self.status)
    }

    /// Whether the worker died of the SIGTERM the daemon sent it while stopping: a worker
    /// still starting (its handler not yet installed) ends that way instead of after the
    /// batch in hand. That is a stopped run, not a crash.
    pub(crate) fn died_of_shutdown(&self) -> bool {
        self.stopped
            && !self.timed_out
            && !self.killed
            && self.report.is_none()
            && self.status.signal() == Some(libc::SIGTERM)
    }

    /// Whether the process died by a signal or ended without a report: a crash, not a failed
    /// run.
    pub(crate) fn crashed(&self) -> bool {
        self.report.is_none() || self.status.signal().is_some()
    }
}

/// Runs one worker to its end. `on_started` is called with the run id and the worker's pid
/// as soon as the worker announces its run.
pub(crate) async fn run_worker(
    spec: &WorkerSpec<'_>,
    mut shutdown: watch::Receiver<bool>,
    on_started: impl Fn(i64, Option<u32>),
) -> std::io::Result<WorkerExit> {
    let mut child = Command::new(spec.exe)
        .arg("--config")
        .arg(spec.config_path)
        .args(["--log-format", "json", "worker", "--supervised"])
        .arg(spec.sync)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()?;
    let pid = child.id();
    tracing::debug!(pid, "worker started");

    // The config goes first; stdin then stays open until the worker ends.
    let mut stdin = child.stdin.take();
    if let Some(input) = stdin.as_mut() {
        let line = serde_json::to_string(&WorkerInput {
            config: spec.config_text.to_owned(),
        })
        .map_err(std::io::Error::other)?;
        // A worker that died at once shows up in its exit status below.
        let _ = input.write_all(format!("{line}\n").as_bytes()).await;
        let _ = input.flush().await;
    }

    let (event_tx, mut events) = mpsc::unbounded_channel();
    let stdout = child.stdout.take();
    let stdout_secrets = spec.secrets.clone();
    let stdout_task = tokio::spawn(
        async move {
            let Some(stdout) = stdout else { return };
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match WorkerEvent::parse(&line) {
                    Some(event) => {
                        let _ = event_tx.send(event);
                    }
                    None if !line.trim().is_empty() => {
                        tracing::info!("worker stdout: {}", stdout_secrets.redact(&line))
                    }
                    None => {}
                }
            }
        }
        .in_current_span(),
    );
    let stderr = child.stderr.take();
    let secrets = spec.secrets.clone();
    let stderr_task = tokio::spawn(
        async move {
            let mut tail = Tail::default();
            let Some(stderr) = stderr else {
                return tail.text();
            };
            let mut reader = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = secrets.redact(String::from_utf8_lossy(&buf).trim_end());
                        if !line.is_empty() {
                            tail.push(forward_log_line(&line));
                        }
                    }
                }
            }
            tail.text()
        }
        .in_current_span(),
    );

    let mut run = None;
    let mut report = None;
    let deadline = spec.timeout.map(|t| Instant::now() + t);
    let mut term_sent: Option<Instant> = None;
    let mut timed_out = false;
    let mut killed = false;
    let mut stopped = false;
    let mut events_open = true;
    let far = Instant::now() + Duration::from_secs(100 * 365 * 86_400);
    let status = loop {
        let kill_at = term_sent.map(|t| t + spec.grace).unwrap_or(far);
        tokio::select! {
            status = child.wait() => break status?,
            event = events.recv(), if events_open => match event {
                Some(WorkerEvent::Started { run: id }) => {
                    run = Some(id);
                    on_started(id, pid);
                }
                Some(WorkerEvent::Finished(r)) => report = Some(r),
                None => events_open = false,
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() && term_sent.is_none() => {
                timed_out = true;
                tracing::warn!(
                    "the run exceeded its timeout of {}; asking the worker to stop after the batch in hand",
                    crate::schedule::human(spec.timeout.unwrap_or_default())
                );
                signal_group(pid, libc::SIGTERM);
                term_sent = Some(Instant::now());
            }
            changed = shutdown.changed(), if term_sent.is_none() => {
                if changed.is_err() || *shutdown.borrow() {
                    tracing::info!("stopping: asking the worker to stop after the batch in hand");
                    signal_group(pid, libc::SIGTERM);
                    term_sent = Some(Instant::now());
                    stopped = true;
                }
            }
            _ = tokio::time::sleep_until(kill_at), if term_sent.is_some() && !killed => {
                tracing::warn!(
                    "the worker did not stop within {} of SIGTERM; killing it",
                    crate::schedule::human(spec.grace)
                );
                signal_group(pid, libc::SIGKILL);
                killed = true;
            }
        }
    };
    // Helper processes a plugin started (and left running when the worker ended, crashed or
    // was killed) end with the run.
    if signal_group(pid, libc::SIGKILL) {
        tracing::warn!("killed the processes the worker left running in its process group");
    }
    drop(stdin);
    let _ = stdout_task.await;
    while let Ok(event) = events.try_recv() {
        match event {
            WorkerEvent::Started { run: id } => {
                run = Some(id);
                on_started(id, pid);
            }
            WorkerEvent::Finished(r) => report = Some(r),
        }
    }
    let stderr_tail = stderr_task.await.unwrap_or_default();
    if run.is_none() {
        run = report.as_ref().and_then(|r| r.run);
    }
    Ok(WorkerExit {
        run,
        report,
        status,
        stderr_tail,
        timed_out,
        killed,
        stopped,
    })
}

/// Sends `signal` to every process of the worker's process group (the worker was started as
/// the leader of a group of its own, so the group's id is the worker's pid). Returns whether
/// a process received it.
///
/// After the worker has been reaped, the group's id stays reserved as long as any process of
/// the group is alive, so the signal cannot reach a stranger while a helper is left; only when
/// the group is already empty could its id have been reused, within the moments since the
/// worker ended.
fn signal_group(pid: Option<u32>, signal: libc::c_int) -> bool {
    let Some(pid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return false;
    };
    if pid <= 1 {
        return false;
    }
    // SAFETY: kill(2) takes plain integers and has no memory effects; a negative pid names
    // the process group.
    let rc = unsafe { libc::kill(-pid, signal) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::ESRCH) {
            tracing::debug!("signal {signal} to worker group {pid}: {error}");
        }
    }
    rc == 0
}

/// Re-logs one stderr line of the worker in the daemon's log (inside the current span, which
/// names the sync and the run) and returns it as text for the tail. Worker logs are JSON
/// lines; anything else (a panic message, the runtime's abort notice) is logged as a warning.
fn forward_log_line(line: &str) -> String {
    let Some(parsed) = line
        .starts_with('{')
        .then(|| serde_json::from_str::<serde_json::Value>(line).ok())
        .flatten()
        .and_then(|v| match v {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        })
    else {
        tracing::warn!(target: "lockstep::worker", "{line}");
        return line.to_owned();
    };
    let level = parsed
        .get("level")
        .and_then(|l| l.as_str())
        .unwrap_or("INFO")
        .to_owned();
    let target = parsed
        .get("target")
        .and_then(|t| t.as_str())
        .unwrap_or("worker")
        .to_owned();
    let message = parsed
        .get("message")
        .and_then(|m| m.as_str())
        .unwrap_or("")
        .to_owned();
    let skip = [
        "timestamp",
        "level",
        "target",
        "message",
        "span",
        "spans",
        "filename",
        "line_number",
        "threadId",
        "threadName",
    ];
    let mut fields = String::new();
    for (key, value) in &parsed {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let value = match value {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        fields.push_str(&format!(" {key}={value}"));
    }
    let text = format!("{message}{fields}");
    match level.as_str() {
        "ERROR" => tracing::error!(target: "lockstep::worker", worker_target = %target, "{text}"),
        "WARN" => tracing::warn!(target: "lockstep::worker", worker_target = %target, "{text}"),
        "DEBUG" => tracing::debug!(target: "lockstep::worker", worker_target = %target, "{text}"),
        "TRACE" => tracing::trace!(target: "lockstep::worker", worker_target = %target, "{text}"),
        _ => tracing::info!(target: "lockstep::worker", worker_target = %target, "{text}"),
    }
    format!("{level} {target}: {text}")
}

/// The last lines of a stream, up to [`STDERR_TAIL_BYTES`].
#[derive(Default)]
struct Tail {
    lines: VecDeque<String>,
    bytes: usize,
}

impl Tail {
    fn push(&mut self, line: String) {
        let line = if line.len() > STDERR_TAIL_BYTES {
            let mut start = line.len() - STDERR_TAIL_BYTES;
            while !line.is_char_boundary(start) {
                start += 1;
            }
            line[start..].to_owned()
        } else {
            line
        };
        self.bytes += line.len() + 1;
        self.lines.push_back(line);
        while self.bytes > STDERR_TAIL_BYTES {
            match self.lines.pop_front() {
                Some(old) => self.bytes -= old.len() + 1,
                None => break,
            }
        }
    }

    fn text(&self) -> String {
        self.lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// How a process ended, for people.
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    if let Some(signal) = status.signal() {
        let (name, meaning) = signal_name(signal);
        let core = if status.core_dumped() {
            ", core dumped"
        } else {
            ""
        };
        match meaning {
            Some(meaning) => format!("was killed by signal {name} ({meaning}{core})"),
            None => format!("was killed by signal {name}{core}"),
        }
    } else {
        match status.code() {
            Some(code) => format!("exited with status {code}"),
            None => "ended in an unknown way".to_owned(),
        }
    }
}

/// The name of a signal and, for those a crash produces, what it usually means.
pub(crate) fn signal_name(signal: i32) -> (String, Option<&'static str>) {
    let (name, meaning) = match signal {
        libc::SIGSEGV => ("SIGSEGV", Some("invalid memory access")),
        libc::SIGABRT => (
            "SIGABRT",
            Some("the process aborted, e.g. a failed allocation or a panic while panicking"),
        ),
        libc::SIGBUS => ("SIGBUS", Some("bus error")),
        libc::SIGILL => ("SIGILL", Some("illegal instruction")),
        libc::SIGFPE => ("SIGFPE", Some("arithmetic error")),
        libc::SIGKILL => (
            "SIGKILL",
            Some("killed: by the out-of-memory killer, an operator or the daemon's timeout"),
        ),
        libc::SIGTERM => ("SIGTERM", None),
        libc::SIGINT => ("SIGINT", None),
        libc::SIGHUP => ("SIGHUP", None),
        libc::SIGQUIT => ("SIGQUIT", None),
        libc::SIGPIPE => ("SIGPIPE", Some("wrote to a closed pipe")),
        libc::SIGTRAP => ("SIGTRAP", Some("trap")),
        libc::SIGSYS => ("SIGSYS", Some("bad system call")),
        libc::SIGXCPU => ("SIGXCPU", Some("CPU time limit exceeded")),
        libc::SIGXFSZ => ("SIGXFSZ", Some("file size limit exceeded")),
        other => return (format!("{other}"), None),
    };
    (name.to_owned(), meaning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A worker that died of `signal` (or exited with `code`), with no report.
    fn exit(signal: Option<i32>, code: i32, stopped: bool) -> WorkerExit {
        WorkerExit {
            run: None,
            report: None,
            // A wait status: the signal number in the low bits, or the exit code above them.
            status: ExitStatus::from_raw(signal.unwrap_or(code << 8)),
            stderr_tail: String::new(),
            timed_out: false,
            killed: false,
            stopped,
        }
    }

    #[test]
    fn only_the_daemons_own_sigterm_while_stopping_is_a_stop_and_not_a_crash() {
        assert!(exit(Some(libc::SIGTERM), 0, true).died_of_shutdown());
        // A SIGTERM from anyone else, while the daemon runs on, is a crash.
        assert!(!exit(Some(libc::SIGTERM), 0, false).died_of_shutdown());
        // Other deaths while stopping stay what they are.
        assert!(!exit(Some(libc::SIGSEGV), 0, true).died_of_shutdown());
        assert!(!exit(Some(libc::SIGKILL), 0, true).died_of_shutdown());
        assert!(!exit(None, 3, true).died_of_shutdown());
        // The grace period's SIGKILL, or the timeout's SIGTERM, are not a plain stop.
        let mut killed = exit(Some(libc::SIGTERM), 0, true);
        killed.killed = true;
        assert!(!killed.died_of_shutdown());
        let mut timed_out = exit(Some(libc::SIGTERM), 0, true);
        timed_out.timed_out = true;
        assert!(!timed_out.died_of_shutdown());
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut tail = Tail::default();
        for i in 0..2000 {
            tail.push(format!("line {i}"));
        }
        let text = tail.text();
        assert!(text.len() <= STDERR_TAIL_BYTES, "{}", text.len());
        assert!(text.ends_with("line 1999"));
        tail.push("é".repeat(STDERR_TAIL_BYTES));
        assert!(tail.text().len() <= STDERR_TAIL_BYTES);
    }

    #[test]
    fn signals_are_named() {
        let segv = ExitStatus::from_raw(libc::SIGSEGV);
        assert_eq!(
            describe_status(&segv),
            "was killed by signal SIGSEGV (invalid memory access)"
        );
        let code = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe_status(&code), "exited with status 3");
    }
}
