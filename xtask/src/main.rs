//! Project automation, run as `cargo xtask <command>` (an alias in .cargo/config.toml).
//!
//! - `demo`: builds lockstep and the SQLite connector, creates two SQLite "systems", syncs
//!   them, changes a few rows and syncs again to show incremental counts.
//! - `test`: builds every crate and plugin, then runs the whole test suite.
//! - `bench boundary`: the plugin-boundary benchmark (release build).
//! - `bench pg [--rows N] [--state sqlite|postgres]`: PostgreSQL sync speed, fast and default
//!   paths, against PostgreSQL's own COPY pipe.

mod bench_pg;
mod demo;

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
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 demo                 a real sync between two SQLite databases, then an incremental one\n  \
                 test [ARGS...]       build everything and run every test (ARGS go to cargo test)\n  \
                 bench boundary       plugin-boundary overhead benchmark\n  \
                 bench pg [--rows N] [--state sqlite|postgres]\n                      \
                 PostgreSQL sync speed against the COPY pipe (needs PostgreSQL and MariaDB)"
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

fn test(extra: &[&str]) -> Result<()> {
    // The end-to-end tests drive the built binary and plugins, so build them all first.
    cargo(&["build", "--workspace"])?;
    let mut args = vec!["test", "--workspace", "--no-fail-fast"];
    args.extend_from_slice(extra);
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let mut child = Command::new(cargo_bin)
        .args(&args)
        .current_dir(root())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    // Pass the output through, adding up every test binary's result line.
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    let stdout = child.stdout.take().context("cargo test's output")?;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| -> u64 {
                rest.split(';')
                    .find_map(|part| part.trim().strip_suffix(word))
                    .and_then(|n| n.trim().rsplit(' ').next()?.parse().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
            ignored += count(" ignored");
        }
    }
    let status = child.wait()?;
    println!("\ntests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
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
