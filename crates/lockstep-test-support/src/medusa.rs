//! A real Medusa v2 commerce server for tests: `@medusajs/medusa`, `@medusajs/framework` and
//! `@medusajs/cli` at the version pinned by `medusa/package-lock.json` (next to this crate's
//! manifest), on a database of its own on the local PostgreSQL, ONE server shared by every
//! test of every process, each test working with records of its own (unique names, SKUs and
//! emails; [`unique_name`]).
//!
//! The npm project is installed with `npm ci` when its `node_modules` is missing (CI installs
//! it beforehand, in `.ci/run`). The first test that finds no live server creates a database
//! named `lockstep_medusa_<pid>_<time>`, runs `medusa db:migrate`, creates the admin user
//! with `medusa user`, starts `node node_modules/.bin/medusa start -H 127.0.0.1 -p <port>` in
//! a process group of its own, waits for `/health`, and runs `harness.js setup` (a secret API
//! key, EUR and USD as the store's currencies, a region for draft orders). The server's port,
//! pid, database, key and set-up timings are kept in `server.json` in a cache directory
//! shared by every run and every worktree: `$LOCKSTEP_MEDUSA_HOME`, or
//! `$XDG_CACHE_HOME/lockstep/medusa-<version>`, or `~/.cache/lockstep/medusa-<version>`.
//! Later tests, in the same process or another, find it there with a liveness check. A
//! watchdog (`harness.js watchdog`) stops the server after `$LOCKSTEP_MEDUSA_IDLE_SECS`
//! (default 600) seconds without a test asking for it and drops its database; a database
//! left by a server that died is dropped when the next one starts.
//!
//! Invariants:
//! - Installation and start-up happen under exclusive file locks (`install.lock` in the
//!   cache directory, `server.lock`), so parallel tests and runs never see half of either.
//! - Only databases this harness created (named in its own `server.json`) are ever dropped.
//! - Nothing here prints the admin password or the API key.

use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::service_home::{self, DirLock};

/// The Medusa version the tests run against (pinned by the lock file).
pub const MEDUSA_VERSION: &str = "2.21.2";
/// The admin user's email.
pub const ADMIN_EMAIL: &str = "admin@lockstep.test";
/// The admin user's password.
pub const ADMIN_PASSWORD: &str = "lockstep-medusa-admin-7e3a91";
/// The set-up's recipe version; bump it when the set-up changes, so that a server set up by
/// an older recipe is not reused.
const RECIPE: u64 = 1;

/// Why a Medusa server could not be provided (npm or Node missing, the install or a
/// migration failed, the server did not come up), with what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Medusa is not available: {0}")]
pub struct MedusaUnavailable(pub String);

fn unavailable(message: impl Into<String>) -> MedusaUnavailable {
    MedusaUnavailable(message.into())
}

/// How long the set-up steps of the running server took, in seconds (`None` for a step this
/// server did not need, such as an install that was already there).
#[derive(Debug, Clone, Default)]
pub struct Timings {
    pub install: Option<f64>,
    pub migrate: Option<f64>,
    pub ready: Option<f64>,
}

/// The shared server.
#[derive(Debug, Clone)]
pub struct MedusaServer {
    /// The port on 127.0.0.1.
    pub port: u16,
    /// The server process's pid (the leader of its process group).
    pub pid: u32,
    /// The PostgreSQL database it works on.
    pub database: String,
    /// A secret admin API key (send it as the basic-auth user).
    pub api_key: String,
    /// The store's id.
    pub store_id: String,
    /// A region in EUR (countries `de` and `fr`), for draft orders.
    pub region_id: String,
    /// The store's default sales channel.
    pub sales_channel_id: String,
    /// What starting it took.
    pub timings: Timings,
}

/// The npm project (`package.json`, lock file, `medusa-config.js`, `harness.js`).
pub fn project_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_MEDUSA_PROJECT") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("medusa")
}

/// The cache directory holding the server's state and logs.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_MEDUSA_HOME") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("lockstep")
        .join(format!("medusa-{MEDUSA_VERSION}"))
}

/// The PostgreSQL server the Medusa databases live on, without a database:
/// `$LOCKSTEP_MEDUSA_POSTGRES`, or `postgres://postgres@127.0.0.1:5432`.
fn postgres_base() -> String {
    std::env::var("LOCKSTEP_MEDUSA_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
        .trim_end_matches('/')
        .to_owned()
}

fn lock(name: &str) -> Result<DirLock, MedusaUnavailable> {
    DirLock::take(&home(), name).map_err(unavailable)
}

fn node() -> String {
    std::env::var("LOCKSTEP_NODE").unwrap_or_else(|_| "node".into())
}

/// Makes sure the npm project is installed, running `npm ci` when `node_modules` is missing
/// or older than the lock file. Returns how long an install took, if one ran.
pub fn ensure_installed() -> Result<Option<f64>, MedusaUnavailable> {
    let project = project_dir();
    if !project.join("package-lock.json").exists() {
        return Err(unavailable(format!(
            "{} has no package-lock.json; the Medusa test project is missing from the checkout",
            project.display()
        )));
    }
    // npm writes `node_modules/.package-lock.json` at the end of a finished install; one at
    // least as new as the lock file is an install of it (by this harness or by `.ci/run`).
    let hidden_lock = project.join("node_modules").join(".package-lock.json");
    let lock_file = project.join("package-lock.json");
    let modified = |path: &Path| fs::metadata(path).and_then(|m| m.modified()).ok();
    let current = || {
        project.join("node_modules/.bin/medusa").exists()
            && matches!(
                (modified(&hidden_lock), modified(&lock_file)),
                (Some(installed), Some(wanted)) if installed >= wanted
            )
    };
    if current() {
        return Ok(None);
    }
    let _lock = lock("install.lock")?;
    if current() {
        return Ok(None);
    }
    let started = Instant::now();
    let npm = std::env::var("LOCKSTEP_NPM").unwrap_or_else(|_| "npm".into());
    service_home::run_quietly(
        Command::new(&npm)
            .args(["ci", "--no-fund", "--no-audit", "--loglevel=error"])
            .current_dir(&project),
        &format!(
            "`{npm} ci` in {} (install Node.js 20 or later with npm)",
            project.display()
        ),
    )
    .map_err(unavailable)?;
    Ok(Some(started.elapsed().as_secs_f64()))
}

fn free_port() -> Result<u16, MedusaUnavailable> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| unavailable(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| unavailable(format!("no free port: {e}")))
}

fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by the test process that started it) is not alive.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `GET /health` answers 200.
fn healthy(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    ) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

fn touch(dir: &Path) {
    let _ = fs::write(dir.join("last-used"), b"");
}

/// Runs `node harness.js <args>` in the project and returns what it printed.
fn harness(args: &[&str], what: &str) -> Result<String, MedusaUnavailable> {
    let output = Command::new(node())
        .arg("harness.js")
        .args(args)
        .current_dir(project_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| unavailable(format!("{what}: cannot run node ({e})")))?;
    if !output.status.success() {
        return Err(unavailable(format!(
            "{what} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs the Medusa CLI with `args` on `database`.
fn medusa_cli(database: &str, args: &[&str], what: &str) -> Result<(), MedusaUnavailable> {
    service_home::run_quietly(
        Command::new(node())
            .arg("node_modules/.bin/medusa")
            .args(args)
            .current_dir(project_dir())
            .env("DATABASE_URL", format!("{}/{database}", postgres_base())),
        what,
    )
    .map_err(unavailable)
}

impl MedusaServer {
    /// The shared server, started when no live one is found.
    pub fn shared() -> Result<Self, MedusaUnavailable> {
        let install = ensure_installed()?;
        let dir = home();
        let _lock = lock("server.lock")?;
        touch(&dir);
        let state = dir.join("server.json");
        let saved: Option<serde_json::Value> = fs::read_to_string(&state)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        if let Some(saved) = &saved {
            if let Some(server) = Self::from_saved(saved) {
                if alive(server.pid) && healthy(server.port) {
                    return Ok(server);
                }
            }
            // The server it names is gone: stop what may be left of it and drop its
            // database, which this harness created.
            if let Some(pid) = saved["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) {
                if alive(pid) {
                    kill_group(pid);
                }
            }
            if let Some(old) = saved["database"].as_str() {
                let admin = format!("{}/postgres", postgres_base());
                let _ = harness(
                    &["drop-db", &admin, old],
                    "dropping a stale Medusa database",
                );
            }
            let _ = fs::remove_file(&state);
        }
        Self::start(&dir, install)
    }

    fn start(dir: &Path, install: Option<f64>) -> Result<Self, MedusaUnavailable> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let database = format!(
            "lockstep_medusa_{}_{}_{:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos % 0xffff_ffff
        );
        let admin = format!("{}/postgres", postgres_base());
        harness(
            &["create-db", &admin, &database],
            "creating the Medusa database (is PostgreSQL at 127.0.0.1:5432 up?)",
        )?;
        let started = Instant::now();
        let set_up = (|| {
            medusa_cli(&database, &["db:migrate"], "medusa db:migrate")?;
            let migrate = started.elapsed().as_secs_f64();
            medusa_cli(
                &database,
                &["user", "-e", ADMIN_EMAIL, "-p", ADMIN_PASSWORD],
                "medusa user (creating the admin)",
            )?;
            Ok::<f64, MedusaUnavailable>(migrate)
        })();
        let migrate = match set_up {
            Ok(seconds) => seconds,
            Err(e) => {
                let _ = harness(&["drop-db", &admin, &database], "dropping the database");
                return Err(e);
            }
        };
        let port = free_port()?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .map_err(|e| unavailable(format!("cannot open the server log: {e}")))?;
        let err = log
            .try_clone()
            .map_err(|e| unavailable(format!("cannot open the server log: {e}")))?;
        let launched = Instant::now();
        let child = Command::new(node())
            .arg("node_modules/.bin/medusa")
            .args(["start", "-H", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(project_dir())
            .env("DATABASE_URL", format!("{}/{database}", postgres_base()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // A group of its own: it outlives the test process that starts it, and the
            // watchdog stops the whole group.
            .process_group(0)
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => {
                let _ = harness(&["drop-db", &admin, &database], "dropping the database");
                return Err(unavailable(format!("cannot start medusa: {e}")));
            }
        };
        let pid = child.id();
        // The watchdog measures idleness from this stamp: the set-up so far is no idleness.
        touch(dir);
        let idle = std::env::var("LOCKSTEP_MEDUSA_IDLE_SECS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(600);
        // The watchdog starts at once, so that a server whose set-up fails below, or whose
        // test process dies meanwhile, is stopped and its database dropped all the same.
        let watchdog = Command::new(node())
            .arg("harness.js")
            .args([
                "watchdog",
                &pid.to_string(),
                &dir.join("last-used").display().to_string(),
                &idle.to_string(),
                &admin,
                &database,
            ])
            .current_dir(project_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| unavailable(format!("cannot start the idle watchdog: {e}")));
        if let Err(e) = watchdog {
            kill_group(pid);
            let _ = harness(&["drop-db", &admin, &database], "dropping the database");
            return Err(e);
        }
        // About 10 s on an idle machine; much longer on a loaded one.
        let deadline = Instant::now() + Duration::from_secs(300);
        while !healthy(port) {
            let exited = !alive(pid);
            if exited || Instant::now() > deadline {
                kill_group(pid);
                let _ = harness(&["drop-db", &admin, &database], "dropping the database");
                return Err(unavailable(format!(
                    "medusa {} on port {port}; see {}",
                    if exited {
                        "exited before it answered /health"
                    } else {
                        "did not answer /health within 300 s"
                    },
                    dir.join("server.log").display()
                )));
            }
            touch(dir);
            std::thread::sleep(Duration::from_millis(200));
        }
        let ready = launched.elapsed().as_secs_f64();
        let base = format!("http://127.0.0.1:{port}");
        let setup = harness(
            &["setup", &base, ADMIN_EMAIL, ADMIN_PASSWORD],
            "setting up the Medusa store (API key, currencies, region)",
        )
        .inspect_err(|_| kill_group(pid))?;
        let setup: serde_json::Value = serde_json::from_str(setup.trim())
            .map_err(|e| unavailable(format!("the set-up's answer is not JSON: {e}")))
            .inspect_err(|_| kill_group(pid))?;
        let saved = serde_json::json!({
            "recipe": RECIPE,
            "port": port,
            "pid": pid,
            "database": database,
            "api_key": setup["api_key"],
            "store_id": setup["store_id"],
            "region_id": setup["region_id"],
            "sales_channel_id": setup["sales_channel_id"],
            "timings": {"install": install, "migrate": migrate, "ready": ready},
        });
        // The set-up's answer holds the API key: an error names the fields, not the answer.
        let server = Self::from_saved(&saved)
            .ok_or_else(|| {
                let keys: Vec<&String> = setup
                    .as_object()
                    .map(|o| o.keys().collect())
                    .unwrap_or_default();
                unavailable(format!(
                    "the set-up's answer lacks a field; it has {keys:?}"
                ))
            })
            .inspect_err(|_| kill_group(pid))?;
        fs::write(dir.join("server.json"), saved.to_string())
            .map_err(|e| unavailable(format!("cannot write server.json: {e}")))
            .inspect_err(|_| kill_group(pid))?;
        eprintln!(
            "medusa {MEDUSA_VERSION}: install {}, migrations {migrate:.1} s, ready {ready:.1} s \
             after start (port {port}, database {database})",
            install.map_or("already there".into(), |s| format!("{s:.1} s"))
        );
        Ok(server)
    }

    fn from_saved(saved: &serde_json::Value) -> Option<Self> {
        if saved["recipe"].as_u64()? != RECIPE {
            return None;
        }
        let text = |key: &str| saved[key].as_str().map(str::to_owned);
        Some(Self {
            port: u16::try_from(saved["port"].as_u64()?).ok()?,
            pid: u32::try_from(saved["pid"].as_u64()?).ok()?,
            database: text("database")?,
            api_key: text("api_key")?,
            store_id: text("store_id")?,
            region_id: text("region_id")?,
            sales_channel_id: text("sales_channel_id")?,
            timings: Timings {
                install: saved["timings"]["install"].as_f64(),
                migrate: saved["timings"]["migrate"].as_f64(),
                ready: saved["timings"]["ready"].as_f64(),
            },
        })
    }

    /// The server's root, for a connection's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of the PostgreSQL database the server works on, for tests that arrange what
    /// the API cannot (timestamps, say).
    pub fn database_url(&self) -> String {
        format!("{}/{}", postgres_base(), self.database)
    }

    /// What the server printed (`server.log` in the cache directory).
    pub fn log(&self) -> String {
        fs::read_to_string(home().join("server.log")).unwrap_or_default()
    }
}

/// Kills the process group `pid` leads (a server this harness started).
fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A name no other test of any run uses: `<prefix>-<pid>-<counter>-<time>`, lowercase, fit
/// for a handle, a SKU or an email's local part.
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
