//! A real GNU Mailman 3 core for tests: `mailman` 3.3.10 with SQLAlchemy below 2.1 (with
//! 2.1 every paged REST answer is a 500), ONE server shared by every test of every run,
//! each test working in a domain and list of its own.
//!
//! The venv lives in a cache directory shared by every run and every worktree:
//! `$LOCKSTEP_MAILMAN_HOME`, or `$XDG_CACHE_HOME/lockstep/mailman-3.3`, or
//! `~/.cache/lockstep/mailman-3.3`. The server's config, var directory (SQLite database,
//! queues, logs), output and `server.json` (its port and master pid) live there too. The
//! first test that finds no live server starts one (`mailman start`, with `--run-as-root`
//! when root, its output in `server/start.log`); later tests, in the same process or
//! another, find it through `server.json` and a liveness check (the master's pid is alive
//! and the REST port accepts connections).
//!
//! Only the REST runner runs (no incoming or outgoing mail, archiver, digests, bounces),
//! with one gunicorn worker; SMTP points at a free port where nothing listens, and nothing
//! is sent anyway since the outgoing runner is off. A small watchdog stops the server
//! after `$LOCKSTEP_MAILMAN_IDLE_SECS` (default 900) seconds without a test asking for it,
//! so the shared machine does not keep it for ever.
//!
//! Invariants:
//! - The venv and the server are set up under exclusive file locks (`venv.lock`,
//!   `server.lock`); the venv is marked complete only once pip has finished, and a half-built
//!   one is removed first, so parallel tests and runs never see half of either.
//! - Nothing here prints the REST password.

use std::fs::{self, OpenOptions};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::service_home::{self, DirLock};

/// The Mailman series the tests run against.
pub const MAILMAN_SERIES: &str = "3.3";
/// The packages installed in the venv, as pip requirements.
pub const REQUIREMENTS: [&str; 2] = ["mailman==3.3.10", "SQLAlchemy<2.1"];
/// The REST admin user of the test server.
pub const ADMIN_USER: &str = "restadmin";
/// The REST admin password of the test server.
pub const ADMIN_PASSWORD: &str = "lockstep-mailman-rest-4b7d2e";
/// The config's recipe version; bump it when the config below changes, so that a server
/// started from an older recipe is not reused.
const RECIPE: u32 = 1;

/// Why a Mailman server could not be provided (pip failed, Python missing, the server did
/// not come up), with what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Mailman is not available: {0}")]
pub struct MailmanUnavailable(pub String);

fn unavailable(message: impl Into<String>) -> MailmanUnavailable {
    MailmanUnavailable(message.into())
}

/// The shared server: where its REST API listens and how to log in.
#[derive(Debug, Clone)]
pub struct MailmanServer {
    /// The REST port on 127.0.0.1.
    pub port: u16,
    /// The master process's pid.
    pub pid: u32,
}

/// The cache directory holding the venv and the server.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_MAILMAN_HOME") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("lockstep")
        .join(format!("mailman-{MAILMAN_SERIES}"))
}

/// The venv's directory.
pub fn venv_dir() -> PathBuf {
    home().join("venv")
}

/// The shared server's directory (config, var, logs, `server.json`).
pub fn server_dir() -> PathBuf {
    home().join("server")
}

/// Runs `command`, or returns an error with the tail of what it printed.
fn run_quietly(command: &mut Command, what: &str) -> Result<(), MailmanUnavailable> {
    service_home::run_quietly(command, what).map_err(unavailable)
}

/// Takes the exclusive lock `name` in the cache directory.
fn lock(name: &str) -> Result<DirLock, MailmanUnavailable> {
    DirLock::take(&home(), name).map_err(unavailable)
}

/// Makes sure the venv exists, creating it with `python3 -m venv` and pip when missing.
/// Returns its `bin` directory.
pub fn ensure_venv() -> Result<PathBuf, MailmanUnavailable> {
    let venv = venv_dir();
    let bin = venv.join("bin");
    let ready = || bin.join("mailman").exists() && venv.join(".complete").exists();
    if ready() {
        return Ok(bin);
    }
    let _lock = lock("venv.lock")?;
    if ready() {
        return Ok(bin);
    }
    // A venv's scripts name its path, so it is built where it lives; `.complete` marks a
    // finished one, and a half-built one (from an interrupted run) is removed first.
    let _ = fs::remove_dir_all(&venv);
    let python = std::env::var("LOCKSTEP_PYTHON").unwrap_or_else(|_| "python3".into());
    run_quietly(
        Command::new(&python).arg("-m").arg("venv").arg(&venv),
        &format!("`{python} -m venv` (install Python 3 with its venv module)"),
    )?;
    run_quietly(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(REQUIREMENTS),
        "pip install of mailman 3.3.10",
    )?;
    fs::write(venv.join(".complete"), REQUIREMENTS.join("\n"))
        .map_err(|e| unavailable(format!("cannot mark the venv complete: {e}")))?;
    Ok(bin)
}

fn free_port() -> Result<u16, MailmanUnavailable> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| unavailable(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| unavailable(format!("no free port: {e}")))
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Writes `mailman.cfg`: REST on `port`, everything else off.
fn write_config(dir: &Path, port: u16) -> Result<PathBuf, MailmanUnavailable> {
    let smtp_port = free_port()?;
    let lmtp_port = free_port()?;
    let mut text = format!(
        "# Written by lockstep-test-support (recipe {RECIPE}).\n\
         [mailman]\nlayout: lockstep\nsite_owner: lockstep-tests@example.com\n\n\
         [paths.lockstep]\nvar_dir: {var}\n\n\
         [webservice]\nhostname: 127.0.0.1\nport: {port}\nadmin_user: {ADMIN_USER}\n\
         admin_pass: {ADMIN_PASSWORD}\nworkers: 1\n\n\
         [mta]\nincoming: mailman.mta.null.NullMTA\nsmtp_host: 127.0.0.1\n\
         smtp_port: {smtp_port}\nlmtp_host: 127.0.0.1\nlmtp_port: {lmtp_port}\n\n\
         [archiver.prototype]\nenable: no\n",
        var = dir.join("var").display()
    );
    for runner in [
        "archive", "bounces", "command", "in", "lmtp", "out", "pipeline", "retry", "task",
        "virgin", "digest",
    ] {
        text.push_str(&format!("\n[runner.{runner}]\nstart: no\n"));
    }
    let path = dir.join("mailman.cfg");
    fs::write(&path, text).map_err(|e| unavailable(format!("cannot write mailman.cfg: {e}")))?;
    Ok(path)
}

/// Starts the idle watchdog: it stops the master once `last-used` is older than the idle
/// limit, then exits.
fn start_watchdog(bin: &Path, dir: &Path, pid: u32) -> Result<(), MailmanUnavailable> {
    let idle: u64 = std::env::var("LOCKSTEP_MAILMAN_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(900);
    let script = format!(
        "import os, signal, time\n\
         os.setsid()\n\
         stamp = {stamp:?}\n\
         while True:\n\
         \x20   time.sleep(10)\n\
         \x20   if not os.path.exists('/proc/{pid}'):\n\
         \x20       break\n\
         \x20   try:\n\
         \x20       age = time.time() - os.path.getmtime(stamp)\n\
         \x20   except OSError:\n\
         \x20       age = {idle} + 1\n\
         \x20   if age > {idle}:\n\
         \x20       os.kill({pid}, signal.SIGTERM)\n\
         \x20       break\n",
        stamp = dir.join("last-used").display().to_string(),
    );
    Command::new(bin.join("python"))
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| unavailable(format!("cannot start the idle watchdog: {e}")))?;
    Ok(())
}

fn touch(dir: &Path) {
    let _ = fs::write(dir.join("last-used"), b"");
}

impl MailmanServer {
    /// The shared server, started when no live one is found.
    pub fn shared() -> Result<Self, MailmanUnavailable> {
        let bin = ensure_venv()?;
        let dir = server_dir();
        let _lock = lock("server.lock")?;
        fs::create_dir_all(&dir)
            .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
        touch(&dir);
        if let Some(server) = Self::running(&dir) {
            return Ok(server);
        }
        let port = free_port()?;
        let config = write_config(&dir, port)?;
        let _ = fs::remove_file(dir.join("server.json"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("start.log"))
            .map_err(|e| unavailable(format!("cannot open the server log: {e}")))?;
        let err = log
            .try_clone()
            .map_err(|e| unavailable(format!("cannot open the server log: {e}")))?;
        let mut command = Command::new(bin.join("mailman"));
        if is_root() {
            command.arg("--run-as-root");
        }
        // `start` forks the master and returns; `--force` clears a lock left by a master
        // that was killed.
        let status = command
            .arg("-C")
            .arg(&config)
            .args(["start", "--force"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .status()
            .map_err(|e| unavailable(format!("cannot run `mailman start`: {e}")))?;
        let start_log = || fs::read_to_string(dir.join("start.log")).unwrap_or_default();
        if !status.success() {
            return Err(unavailable(format!(
                "`mailman start` failed ({status}):\n{}",
                start_log()
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        let pid_file = dir.join("var").join("master.pid");
        loop {
            let pid = fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            if let Some(pid) = pid.filter(|p| alive(*p)) {
                if listening(port) {
                    let saved = serde_json::json!({"port": port, "pid": pid, "recipe": RECIPE});
                    fs::write(dir.join("server.json"), saved.to_string())
                        .map_err(|e| unavailable(format!("cannot write server.json: {e}")))?;
                    start_watchdog(&bin, &dir, pid)?;
                    return Ok(Self { port, pid });
                }
            }
            if Instant::now() > deadline {
                return Err(unavailable(format!(
                    "Mailman's REST API did not listen on port {port} within 90 s; see {} \
                     and {}:\n{}",
                    dir.join("start.log").display(),
                    dir.join("var/logs/mailman.log").display(),
                    start_log()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server `server.json` names, if it is alive and from this recipe.
    fn running(dir: &Path) -> Option<Self> {
        let text = fs::read_to_string(dir.join("server.json")).ok()?;
        let saved: serde_json::Value = serde_json::from_str(&text).ok()?;
        let port = u16::try_from(saved["port"].as_u64()?).ok()?;
        let pid = u32::try_from(saved["pid"].as_u64()?).ok()?;
        if saved["recipe"].as_u64()? != u64::from(RECIPE) {
            return None;
        }
        (alive(pid) && listening(port)).then_some(Self { port, pid })
    }

    /// The REST API's root, for a connection's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the server logged (`var/logs/mailman.log`).
    pub fn log(&self) -> String {
        fs::read_to_string(server_dir().join("var/logs/mailman.log")).unwrap_or_default()
    }
}

/// A name no other test of any run uses: `<prefix>-<pid>-<counter>-<time>`, lowercase.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{}-{}-{}-{nanos:x}",
        prefix.to_lowercase(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
