//! Project automation, run as `cargo xtask <command>` (an alias in .cargo/config.toml).
//!
//! - `demo`: builds lockstep and the SQLite connector, creates two SQLite "systems", syncs
//!   them, changes a few rows and syncs again to show incremental counts.
//! - `test`: builds every crate and plugin, then runs the whole test suite.
//! - `bench boundary`: the plugin-boundary benchmark (release build).
//! - `bench pg [--rows N] [--state sqlite|postgres]`: PostgreSQL sync speed, fast and default
//!   paths, against PostgreSQL's own COPY pipe.
//! - `bench files`: a CSV drop into PostgreSQL against PostgreSQL's own `COPY FROM`.
//! - `bench two-way [--rows N] [--state sqlite|postgres]`: a two-way sync between two
//!   PostgreSQL databases against a one-way incremental sync of the same amount of changes.
//! - `bench verify [--rows N]`: `lockstep verify` of the `bench pg` table against its COPY pipe.
//! - `bench hubspot`: how much of HubSpot's request budget a sync to and from the fake uses.
//! - `dist [--profile release|dev] [--no-build] [--no-dbgsym]`: the release tarball and the
//!   Debian package under target/dist (see docs/packaging.md).

mod bench_files;
mod bench_hubspot;
mod bench_pg;
mod bench_two_way;
mod bench_verify;
mod deb;
mod demo;
mod dist;
mod manpage;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["demo"] => demo::run(),
        ["test", rest @ ..] => test(rest),
        ["bench", "boundary", rest @ ..] => bench_boundary(rest),
        ["bench", "pg", rest @ ..] => bench_pg::run(rest),
        ["bench", "files", rest @ ..] => bench_files::run(rest),
        ["bench", "hubspot", rest @ ..] => bench_hubspot::run(rest),
        ["bench", "verify", rest @ ..] => bench_verify::run(rest),
        ["bench", "two-way", rest @ ..] => bench_two_way::run(rest),
        ["dist", rest @ ..] => dist::run(rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 demo                 a real sync between two SQLite databases, then an incremental one\n  \
                 test [ARGS...]       build everything and run every test (ARGS go to cargo test)\n  \
                 bench boundary       plugin-boundary overhead benchmark\n  \
                 bench pg [--rows N] [--state sqlite|postgres]\n                      \
                 PostgreSQL sync speed against the COPY pipe (needs PostgreSQL and MariaDB)\n  \
                 bench files          a CSV drop into PostgreSQL against COPY FROM\n  \
                 bench hubspot        request-budget use against the fake HubSpot (needs PostgreSQL)\n  \
                 bench verify [--rows N]  `lockstep verify` against the COPY pipe (needs PostgreSQL)\n  \
                 bench two-way [--rows N] [--state sqlite|postgres]\n                      \
                 two-way sync against a one-way incremental sync (needs PostgreSQL)\n  \
                 dist [--profile release|dev] [--no-build] [--no-dbgsym]\n                      \
                 the release tarball and the Debian package, in target/dist"
            );
            bail!("unknown or missing command");
        }
    }
}

/// The workspace's root directory.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Runs `cargo` with `args` in the workspace root, failing when it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The file, under `target/`, that tests which could not run record themselves in (see
/// `lockstep_test_support::skip`).
const SKIP_LOG: &str = "target/skipped-tests.log";

fn test(extra: &[&str]) -> Result<()> {
    // The end-to-end tests drive the built binary and plugins, so build them all first.
    cargo(&["build", "--workspace"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend_from_slice(extra);
    let skip_log = root().join(SKIP_LOG);
    // A fresh log: only this run's skips count.
    match std::fs::remove_file(&skip_log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("cannot clear {}: {e}", skip_log.display())
        }
        _ => {}
    }
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let mut child = Command::new(cargo_bin)
        .args(&args)
        .current_dir(root())
        .env("LOCKSTEP_SKIPPED_TESTS", &skip_log)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through, keeping it for the closing line.
    let stdout = child.stdout.take().context("cargo test's output")?;
    let mut output = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        output.push(line);
    }
    let status = child.wait()?;
    let skips = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let summary = Summary::of(&output, &skips);
    if !summary.skipped_tests.is_empty() {
        println!("\nskipped (a service they need is not reachable; CI=true makes this a failure):");
        for test in &summary.skipped_tests {
            println!("  {test}");
        }
    }
    println!("\n{}", summary.line());
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// The closing count of a `cargo test` run.
#[derive(Debug, Default, PartialEq)]
struct Summary {
    passed: u64,
    failed: u64,
    skipped: u64,
    /// The tests that skipped themselves, with why: `binary::test: reason`.
    skipped_tests: Vec<String>,
}

impl Summary {
    /// Adds up libtest's `test result:` lines, then moves the tests recorded in `skip_log`
    /// (one `binary::test: reason` line each; a test may record several) from passed to
    /// skipped. A test that recorded a skip and then failed stays failed. Ignored tests are
    /// skipped too.
    fn of(output: &[String], skip_log: &str) -> Summary {
        let mut summary = Summary::default();
        let mut failed_tests = std::collections::BTreeSet::new();
        for line in output {
            if let Some(rest) = line.strip_prefix("test result: ") {
                let count = |word: &str| -> u64 {
                    rest.split(';')
                        .find_map(|part| part.trim().strip_suffix(word))
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                        .unwrap_or(0)
                };
                summary.passed += count(" passed");
                summary.failed += count(" failed");
                summary.skipped += count(" ignored");
            } else if let Some(name) = line
                .strip_prefix("test ")
                .and_then(|rest| rest.strip_suffix(" ... FAILED"))
            {
                failed_tests.insert(name.to_owned());
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for entry in skip_log.lines().filter(|l| !l.trim().is_empty()) {
            let id = entry.split_once(": ").map_or(entry, |(id, _)| id);
            let test = id.split_once("::").map_or(id, |(_, test)| test);
            if failed_tests.contains(test) || !seen.insert(id.to_owned()) {
                continue;
            }
            summary.skipped_tests.push(entry.to_owned());
            summary.passed = summary.passed.saturating_sub(1);
            summary.skipped += 1;
        }
        summary
    }

    /// `tests: N passed, N failed, N skipped`.
    fn line(&self) -> String {
        format!(
            "tests: {} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

fn bench_boundary(extra: &[&str]) -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "lockstep-bench",
        "-p",
        "lockstep-testplugin-passthrough",
    ])?;
    let bin = root().join("target/release/lockstep-bench");
    let status = Command::new(&bin)
        .arg("boundary")
        .args(extra)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("the boundary benchmark failed ({status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    #[test]
    fn skipped_tests_are_counted_as_skipped_not_passed() {
        let output = lines(
            "test a::one ... ok\n\
             test a::two ... ok\n\
             test a::three ... ignored\n\
             test result: ok. 2 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n\
             test b::four ... ok\n\
             test b::five ... FAILED\n\
             test b::six ... ok\n\
             test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        // `two` skipped twice (two backends), `five` skipped a part and then failed.
        let log = "a-123::a::two: PostgreSQL is not reachable\n\
                   a-123::a::two: MariaDB is not reachable\n\
                   b-456::b::five: PostgreSQL is not reachable\n\
                   b-456::b::six: maildev is not reachable\n";
        let summary = Summary::of(&output, log);
        assert_eq!(summary.line(), "tests: 2 passed, 1 failed, 3 skipped");
        assert_eq!(
            summary.skipped_tests,
            [
                "a-123::a::two: PostgreSQL is not reachable",
                "b-456::b::six: maildev is not reachable"
            ]
        );
        // Without skips, the libtest counts stand.
        let summary = Summary::of(&output, "");
        assert_eq!(summary.line(), "tests: 4 passed, 1 failed, 1 skipped");
    }
}
