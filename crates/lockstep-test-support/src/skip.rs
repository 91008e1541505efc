//! Tests that cannot run here, counted as skipped rather than passed.
//!
//! A test that needs a server (PostgreSQL, MariaDB, maildev) that is not reachable returns
//! early; libtest then counts it as passed. To keep reports honest, such a test calls
//! [`skip_or_fail`]: under CI (`CI=true` or `CI=1`) that fails the test, since CI must run
//! everything; otherwise it prints a notice and appends one line, `<test binary>::<test
//! name>: <reason>`, to the file named by [`SKIP_LOG_ENV`] when that variable is set.
//! `cargo xtask test` sets it and reports those tests as skipped in its closing line.
//!
//! Crates that cannot depend on this one (connectors may depend on the SDK only) follow the
//! same protocol in a few lines of their own.

use std::io::Write as _;

/// The environment variable naming the file that skipped tests are recorded in.
pub const SKIP_LOG_ENV: &str = "LOCKSTEP_SKIPPED_TESTS";

/// Whether the tests run in CI, where a missing service is a failure: `CI` is `true` or `1`
/// (in any case).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The calling test cannot run because of `reason` (e.g. "PostgreSQL at 127.0.0.1:5432 is
/// not reachable: connection refused"). Panics under CI; otherwise prints a notice and
/// records the skip (see the module documentation). The caller returns early afterwards.
#[track_caller]
pub fn skip_or_fail(reason: impl std::fmt::Display) {
    if in_ci() {
        panic!("{reason}; CI is set (CI=true or CI=1), so the test must run and this fails it");
    }
    eprintln!("NOTICE: test SKIPPED: {reason}; set CI=true to make this a failure");
    record_skip(&reason.to_string());
}

/// Appends the calling test's skip line to the file named by [`SKIP_LOG_ENV`], if set.
fn record_skip(reason: &str) {
    let Some(log) = std::env::var_os(SKIP_LOG_ENV) else {
        return;
    };
    let line = format!("{}: {}\n", test_id(), reason.replace('\n', " "));
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(e) = appended {
        eprintln!(
            "NOTICE: cannot record the skip in {}: {e}",
            std::path::Path::new(&log).display()
        );
    }
}

/// `<test binary>::<test name>`: libtest names each test's thread after the test.
pub fn test_id() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "unknown".to_owned());
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("unknown");
    format!("{binary}::{test}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_recorded_with_the_test_binary_and_name() {
        let log = std::env::temp_dir().join(format!("lockstep-skip-{}.log", std::process::id()));
        // No other test of this crate reads or writes this variable.
        std::env::set_var(SKIP_LOG_ENV, &log);
        record_skip("no server\nhere");
        std::env::remove_var(SKIP_LOG_ENV);
        let text = std::fs::read_to_string(&log).unwrap();
        let _ = std::fs::remove_file(&log);
        assert!(text.starts_with("lockstep_test_support-"), "{text}");
        assert!(
            text.ends_with(
                "::skip::tests::a_skip_is_recorded_with_the_test_binary_and_name: no server here\n"
            ),
            "{text}"
        );
    }
}
