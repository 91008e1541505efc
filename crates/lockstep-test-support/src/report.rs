//! The results of a conformance run: every check with its outcome, and
//! [`Report::assert_passed`], the one call that turns a failed check into a failed test.
//!
//! Invariant: a [`Report`] is `#[must_use]`, and what it prints (its `Display`, and the panic
//! of `assert_passed`) lists every check with its outcome and reason, so that a failure never
//! has to be looked for.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_plugin_host::HostError;

/// How one check went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The check passed.
    Pass,
    /// The check failed, for this reason.
    Fail(String),
    /// The check did not apply or could not run, for this reason.
    Skip(String),
}

/// One named check and its outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The check's name, one of the [`crate::checks`] constants.
    pub name: &'static str,
    /// How it went.
    pub outcome: Outcome,
    /// What was seen when the check passed (counts, versions); may be empty.
    pub note: String,
}

impl Check {
    /// Whether the check passed.
    pub fn passed(&self) -> bool {
        self.outcome == Outcome::Pass
    }

    /// Whether the check failed (a skipped check did not).
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Fail(_))
    }
}

/// Every check of a run, in the order they ran.
///
/// A report nobody looks at cannot fail a test: end the run with
/// [`assert_passed`](Report::assert_passed).
///
/// ```no_run
/// # async fn example() {
/// use lockstep_test_support::{cdylib_path, checks, Conformance};
/// use serde_json::json;
///
/// let report = Conformance::new(cdylib_path("lockstep_connector_acme"))
///     .source_config(json!({ "dir": "tests/data" }))
///     .run()
///     .await
///     .assert_passed();
/// // Single checks can be looked up by name, for instance to see that one ran at all.
/// assert!(report.check(checks::SOURCE_RESUME_FULL).unwrap().passed());
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a conformance report that nobody checks cannot fail: call `.assert_passed()`"]
pub struct Report {
    /// The library checked.
    pub plugin: PathBuf,
    /// The connector's name, once the library loaded.
    pub connector: Option<String>,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    pub(crate) fn crashed(plugin: PathBuf, reason: impl Into<String>) -> Self {
        Report {
            plugin,
            connector: None,
            checks: vec![Check {
                name: crate::checks::LOAD,
                outcome: Outcome::Fail(reason.into()),
                note: String::new(),
            }],
        }
    }

    /// Whether no check failed (skipped checks do not count as failures).
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(Check::failed)
    }

    /// The checks that failed.
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| c.failed())
    }

    /// The first check named `name` (see [`crate::checks`]).
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// `Ok(self)` when no check failed, else the failures.
    pub fn into_result(self) -> Result<Report, Failures> {
        if self.passed() {
            Ok(self)
        } else {
            Err(Failures { report: self })
        }
    }

    /// Returns the report when no check failed; otherwise panics with every check listed
    /// (name, outcome and reason), which fails the test that called it. Skipped checks are
    /// listed but do not fail.
    ///
    /// ```should_panic
    /// use lockstep_test_support::Conformance;
    ///
    /// // No library at this path: the "library loads" check fails, and so does the test.
    /// let _ = Conformance::new("/nonexistent/liblockstep_connector_none.so")
    ///     .source_config(serde_json::json!({}))
    ///     .run_blocking()
    ///     .assert_passed();
    /// ```
    #[track_caller]
    pub fn assert_passed(self) -> Report {
        match self.into_result() {
            Ok(report) => report,
            Err(failures) => panic!("{failures}"),
        }
    }

    /// For callers written when `run` returned `Result<Report, Failures>`:
    /// `.run().await.unwrap_or_else(|failures| panic!("{failures}"))` still compiles and
    /// still fails on a failed check. New code calls [`Report::assert_passed`].
    #[doc(hidden)]
    #[track_caller]
    pub fn unwrap_or_else(self, on_failure: impl FnOnce(Failures) -> Report) -> Report {
        self.into_result().unwrap_or_else(on_failure)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let who = match &self.connector {
            Some(name) => format!("connector `{name}` ({})", self.plugin.display()),
            None => self.plugin.display().to_string(),
        };
        writeln!(f, "conformance of {who}:")?;
        for check in &self.checks {
            match &check.outcome {
                Outcome::Pass if check.note.is_empty() => writeln!(f, "  PASS  {}", check.name)?,
                Outcome::Pass => writeln!(f, "  PASS  {} ({})", check.name, check.note)?,
                Outcome::Fail(reason) => writeln!(f, "  FAIL  {}: {reason}", check.name)?,
                Outcome::Skip(reason) => writeln!(f, "  SKIP  {}: {reason}", check.name)?,
            }
        }
        let failed = self.failures().count();
        write!(
            f,
            "{} checks: {} passed, {failed} failed, {} skipped",
            self.checks.len(),
            self.checks.iter().filter(|c| c.passed()).count(),
            self.checks
                .iter()
                .filter(|c| matches!(c.outcome, Outcome::Skip(_)))
                .count(),
        )
    }
}

/// A report with at least one failed check. Its `Display` lists every check.
#[derive(Debug, Clone, thiserror::Error)]
#[error("connector conformance failed ({} failed):\n{report}", report.failures().count())]
pub struct Failures {
    /// The whole report, passed checks included.
    pub report: Report,
}

/// Collects checks as a run goes, and times plugin calls out.
pub(crate) struct Recorder {
    report: Report,
    pub(crate) timeout: Duration,
}

impl Recorder {
    pub(crate) fn new(plugin: &Path, timeout: Duration) -> Self {
        Self {
            report: Report {
                plugin: plugin.to_owned(),
                connector: None,
                checks: Vec::new(),
            },
            timeout,
        }
    }

    pub(crate) fn set_connector(&mut self, name: &str) {
        self.report.connector = Some(name.to_owned());
    }

    fn push(&mut self, name: &'static str, outcome: Outcome, note: String) {
        self.report.checks.push(Check {
            name,
            outcome,
            note,
        });
    }

    pub(crate) fn pass(&mut self, name: &'static str, note: impl Into<String>) {
        self.push(name, Outcome::Pass, note.into());
    }

    pub(crate) fn fail(&mut self, name: &'static str, reason: impl Into<String>) {
        self.push(name, Outcome::Fail(reason.into()), String::new());
    }

    pub(crate) fn skip(&mut self, name: &'static str, reason: impl Into<String>) {
        self.push(name, Outcome::Skip(reason.into()), String::new());
    }

    /// Records `result` as `name`'s outcome; returns whether it passed.
    pub(crate) fn record(&mut self, name: &'static str, result: Result<String, String>) -> bool {
        match result {
            Ok(note) => {
                self.pass(name, note);
                true
            }
            Err(reason) => {
                self.fail(name, reason);
                false
            }
        }
    }

    pub(crate) fn finish(self) -> Report {
        self.report
    }

    /// Awaits one plugin call, turning a timeout or an error into a message for a check.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, HostError>>,
    ) -> Result<T, CallError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(CallError::Host(what.to_owned(), error)),
            Err(_) => Err(CallError::Timeout(what.to_owned(), self.timeout)),
        }
    }
}

/// A failed plugin call.
#[derive(Debug)]
pub(crate) enum CallError {
    Host(String, HostError),
    Timeout(String, Duration),
}

impl CallError {
    /// Whether the plugin said it does not support what was asked.
    pub(crate) fn is_unsupported(&self) -> bool {
        matches!(self, CallError::Host(_, e) if e.kind() == lockstep_plugin_host::ErrorKind::UNSUPPORTED)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Host(what, e) => write!(f, "{what} failed: {e}"),
            CallError::Timeout(what, t) => write!(f, "{what} did not return within {t:?}"),
        }
    }
}

impl From<CallError> for String {
    fn from(e: CallError) -> Self {
        e.to_string()
    }
}
