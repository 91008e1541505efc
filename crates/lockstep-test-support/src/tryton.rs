//! A real Tryton server for tests: `trytond` 8.2 with the `party` and `product` modules
//! (and `company`, which they bring), on SQLite, one server per test.
//!
//! The first test of a run makes sure a virtual environment with `trytond`, `trytond_party`
//! and `trytond_product` 8.2 exists (installing it with pip when missing) and initialises a
//! template database once (`trytond-admin --all`, then `-u party product
//! --activate-dependencies`, then a company with a currency for the admin user, which
//! company-dependent fields such as a product's list price need). Both live in a cache
//! directory shared by every run and every worktree: `$LOCKSTEP_TRYTON_HOME`, or
//! `$XDG_CACHE_HOME/lockstep/tryton-8.2`, or `~/.cache/lockstep/tryton-8.2`. Each test then
//! copies the template file into a directory of its own and starts `trytond -d <db>` on a
//! free port (without `-d`, 8.2 answers every login with an error).
//!
//! Invariants:
//! - The venv and the template are created under an exclusive file lock and published by a
//!   rename, so parallel tests and parallel runs never see half of either.
//! - A server is killed when its [`TrytonServer`] is dropped; its files go with its
//!   temporary directory.
//! - Nothing here prints the admin password.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::service_home::{self, DirLock};

/// The Tryton series the tests run against.
pub const TRYTON_SERIES: &str = "8.2";
/// The packages installed in the venv, as pip requirements.
pub const REQUIREMENTS: [&str; 3] = [
    "trytond>=8.2,<8.3",
    "trytond_party>=8.2,<8.3",
    "trytond_product>=8.2,<8.3",
];
/// The login of the template's administrator.
pub const ADMIN_LOGIN: &str = "admin";
/// The administrator's password in the template database.
pub const ADMIN_PASSWORD: &str = "lockstep-tryton-admin-5c1e9f";
/// The template's file name; bump it when the template's recipe changes, so that caches made
/// by an older recipe are not used.
pub const TEMPLATE_FILE: &str = "lockstep-v1.sqlite";
/// The name of the template's company.
pub const COMPANY_NAME: &str = "Lockstep Test Company";

/// Why a Tryton server could not be provided (pip failed, Python missing, the server did not
/// come up), with what to do about it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("Tryton is not available: {0}")]
pub struct TrytonUnavailable(pub String);

/// Options of one server.
#[derive(Debug, Clone, Default)]
pub struct TrytonOptions {
    /// Seconds a session may stay idle (`[session] timeout`; Tryton's default is 300).
    pub session_timeout: Option<u32>,
}

/// One running `trytond` with its own copy of the template database.
#[derive(Debug)]
pub struct TrytonServer {
    /// The database's name.
    pub database: String,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    trytond: PathBuf,
}

/// The cache directory holding the venv and the template.
pub fn home() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_TRYTON_HOME") {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache
        .join("lockstep")
        .join(format!("tryton-{TRYTON_SERIES}"))
}

/// The venv's directory.
pub fn venv_dir() -> PathBuf {
    home().join("venv")
}

fn unavailable(message: impl Into<String>) -> TrytonUnavailable {
    TrytonUnavailable(message.into())
}

/// Runs `command`, or returns an error with the tail of what it printed.
fn run_quietly(command: &mut Command, what: &str) -> Result<(), TrytonUnavailable> {
    service_home::run_quietly(command, what).map_err(unavailable)
}

/// Takes the exclusive lock `name` in the cache directory.
fn lock(name: &str) -> Result<DirLock, TrytonUnavailable> {
    DirLock::take(&home(), name).map_err(unavailable)
}

/// Makes sure the venv exists, creating it with `python3 -m venv` and pip when missing.
/// Returns its `bin` directory.
pub fn ensure_venv() -> Result<PathBuf, TrytonUnavailable> {
    let venv = venv_dir();
    let bin = venv.join("bin");
    if bin.join("trytond").exists() && venv.join(".complete").exists() {
        return Ok(bin);
    }
    let _lock = lock("venv.lock")?;
    if bin.join("trytond").exists() && venv.join(".complete").exists() {
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
        "pip install of trytond, trytond_party and trytond_product",
    )?;
    fs::write(venv.join(".complete"), REQUIREMENTS.join("\n"))
        .map_err(|e| unavailable(format!("cannot mark the venv complete: {e}")))?;
    Ok(bin)
}

/// The template database file, initialising it once.
pub fn ensure_template() -> Result<PathBuf, TrytonUnavailable> {
    let bin = ensure_venv()?;
    let template = home().join("template").join(TEMPLATE_FILE);
    if template.exists() {
        return Ok(template);
    }
    let _lock = lock("template.lock")?;
    if template.exists() {
        return Ok(template);
    }
    let work = home().join("template.building");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)
        .map_err(|e| unavailable(format!("cannot create {}: {e}", work.display())))?;
    let database = "lockstep";
    File::create(work.join(format!("{database}.sqlite")))
        .map_err(|e| unavailable(format!("cannot create the template file: {e}")))?;
    let conf = write_config(&work, 0, &TrytonOptions::default())?;
    let pass_file = work.join("admin-password");
    fs::write(&pass_file, ADMIN_PASSWORD)
        .map_err(|e| unavailable(format!("cannot write the password file: {e}")))?;
    let admin = |args: &[&str], what: &str| {
        run_quietly(
            Command::new(bin.join("trytond-admin"))
                .arg("-c")
                .arg(&conf)
                .args(["-d", database])
                .args(args)
                .env("TRYTONPASSFILE", &pass_file),
            what,
        )
    };
    admin(
        &["--all", "--email", "admin@example.com"],
        "trytond-admin --all",
    )?;
    admin(
        &["-u", "party", "product", "--activate-dependencies"],
        "trytond-admin -u party product",
    )?;
    let script = format!(
        "from decimal import Decimal\n\
         Currency = pool.get('currency.currency')\n\
         Party = pool.get('party.party')\n\
         Company = pool.get('company.company')\n\
         User = pool.get('res.user')\n\
         usd, = Currency.create([{{'name': 'US Dollar', 'code': 'USD', 'symbol': '$', \
         'digits': 2, 'rounding': Decimal('0.01')}}])\n\
         party, = Party.create([{{'name': '{COMPANY_NAME}'}}])\n\
         company, = Company.create([{{'party': party.id, 'currency': usd.id}}])\n\
         admin, = User.search([('login', '=', '{ADMIN_LOGIN}')])\n\
         User.write([admin], {{'companies': [('add', [company.id])], 'company': company.id}})\n\
         transaction.commit()\n"
    );
    let mut console = Command::new(bin.join("trytond-console"))
        .arg("-c")
        .arg(&conf)
        .args(["-d", database])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| unavailable(format!("cannot start trytond-console: {e}")))?;
    console
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())
        .map_err(|e| unavailable(format!("cannot feed trytond-console: {e}")))?;
    let output = console
        .wait_with_output()
        .map_err(|e| unavailable(format!("trytond-console: {e}")))?;
    // The console goes on after an exception, printing its traceback to stderr.
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || stderr.contains("Traceback") || stderr.contains("Error") {
        return Err(unavailable(format!(
            "creating the template's company failed: {stderr}"
        )));
    }
    let dir = template.parent().expect("the template is in a directory");
    fs::create_dir_all(dir)
        .map_err(|e| unavailable(format!("cannot create {}: {e}", dir.display())))?;
    let staged = dir.join(format!("{TEMPLATE_FILE}.new"));
    fs::copy(work.join(format!("{database}.sqlite")), &staged)
        .and_then(|_| fs::rename(&staged, &template))
        .map_err(|e| unavailable(format!("cannot publish the template: {e}")))?;
    let _ = fs::remove_dir_all(&work);
    Ok(template)
}

/// Writes `trytond.conf` for a database directory and port.
fn write_config(
    dir: &Path,
    port: u16,
    options: &TrytonOptions,
) -> Result<PathBuf, TrytonUnavailable> {
    let mut text = format!(
        "[database]\nuri = sqlite://\npath = {}\n\n[web]\nlisten = 127.0.0.1:{port}\n",
        dir.display()
    );
    if let Some(timeout) = options.session_timeout {
        text.push_str(&format!("\n[session]\ntimeout = {timeout}\n"));
    }
    let path = dir.join("trytond.conf");
    fs::write(&path, text).map_err(|e| unavailable(format!("cannot write trytond.conf: {e}")))?;
    Ok(path)
}

fn free_port() -> Result<u16, TrytonUnavailable> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| unavailable(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| unavailable(format!("no free port: {e}")))
}

impl TrytonServer {
    /// A fresh server with Tryton's defaults.
    pub fn start() -> Result<Self, TrytonUnavailable> {
        Self::start_with(TrytonOptions::default())
    }

    /// A fresh server: the template copied into a directory of its own, `trytond` started on
    /// a free port and answering.
    pub fn start_with(options: TrytonOptions) -> Result<Self, TrytonUnavailable> {
        let template = ensure_template()?;
        let trytond = venv_dir().join("bin").join("trytond");
        let dir = tempfile::Builder::new()
            .prefix("lockstep-tryton-")
            .tempdir()
            .map_err(|e| unavailable(format!("no temporary directory: {e}")))?;
        let database = "lockstep".to_owned();
        fs::copy(&template, dir.path().join(format!("{database}.sqlite")))
            .map_err(|e| unavailable(format!("cannot copy the template: {e}")))?;
        let port = free_port()?;
        write_config(dir.path(), port, &options)?;
        let mut server = Self {
            database,
            port,
            dir,
            child: None,
            trytond,
        };
        server.launch()?;
        Ok(server)
    }

    /// The server's address, for a connection's `url`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The SQLite file the server works on (tests may inspect it).
    pub fn database_file(&self) -> PathBuf {
        self.dir.path().join(format!("{}.sqlite", self.database))
    }

    /// What the server printed so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("trytond.log")).unwrap_or_default()
    }

    fn launch(&mut self) -> Result<(), TrytonUnavailable> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("trytond.log"))
            .map_err(|e| unavailable(format!("cannot open the server log: {e}")))?;
        let err = log
            .try_clone()
            .map_err(|e| unavailable(format!("cannot open the server log: {e}")))?;
        let child = Command::new(&self.trytond)
            .arg("-c")
            .arg(self.dir.path().join("trytond.conf"))
            .args(["-d", &self.database])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| unavailable(format!("cannot start trytond: {e}")))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(unavailable(format!(
                    "trytond exited at start ({status}):\n{}",
                    self.log()
                )));
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(unavailable(format!(
            "trytond did not listen on port {} within 60 s:\n{}",
            self.port,
            self.log()
        )))
    }

    /// Stops the server (SIGKILL, as a crash would) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the stopped server again on the same port and database.
    pub fn resume(&mut self) -> Result<(), TrytonUnavailable> {
        if self.child.is_none() {
            self.launch()?;
        }
        Ok(())
    }

    /// Stops the server and starts it again on the same port and database.
    pub fn restart(&mut self) -> Result<(), TrytonUnavailable> {
        self.stop();
        self.resume()
    }
}

impl Drop for TrytonServer {
    fn drop(&mut self) {
        self.stop();
    }
}
