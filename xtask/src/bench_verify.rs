//! `cargo xtask bench verify [--rows N]`: how long `lockstep verify` takes between two
//! PostgreSQL tables of N rows (the `bench pg` table and generator), against PostgreSQL's
//! own binary `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe of the same table, timed in the
//! same run.
//!
//! Three verifies, each checked against what the bench changed: identical tables; a
//! destination where 0.2% of the rows, scattered over the key range, are missing, extra or
//! changed in one field; and the same destination with its key index (the primary key)
//! dropped. The last line reads `verify_same_vs_copy=<r> verify_diff_vs_copy=<r>
//! peak_rss_mib=<n>`; the line before it gives the run without the key index. Each verify's
//! peak RSS comes from the kernel (`wait4`).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sqlx::Connection;

use crate::bench_pg::{report, DDL, GENERATE, PG};
use crate::{cargo, root};

const USAGE: &str = "usage: cargo xtask bench verify [--rows N]";

/// Of every `SPREAD` consecutive ids, one is deleted, one changed and one added: 0.2% of the
/// rows differ, scattered over the whole key range.
const SPREAD: i64 = 1500;

pub fn run(args: &[&str]) -> Result<()> {
    let mut rows: i64 = 1_000_000;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--rows" => {
                let value = it
                    .next()
                    .with_context(|| format!("--rows takes a number; {USAGE}"))?;
                rows = value.replace('_', "").parse().with_context(|| {
                    format!("--rows takes a positive number of rows, found `{value}`; {USAGE}")
                })?;
                if rows < SPREAD {
                    bail!("--rows takes at least {SPREAD} rows, found {rows}; {USAGE}");
                }
            }
            other => bail!("unknown argument `{other}`; {USAGE}"),
        }
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "lockstep-cli",
        "-p",
        "lockstep-connector-postgres",
    ])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tag = std::process::id();
    let names = [
        format!("lockstep_bverify_src_{tag}"),
        format!("lockstep_bverify_dst_{tag}"),
        format!("lockstep_bverify_copy_{tag}"),
    ];
    let result = rt.block_on(bench(rows, &names));
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{PG}/test")).await {
            for n in &names {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    });
    result
}

/// The binary COPY pipe of `contacts` from database `from` into database `to` of the local
/// server; its seconds.
pub(crate) fn copy_pipe(from: &str, to: &str) -> Result<f64> {
    copy_pipe_at(PG, from, to)
}

/// The binary COPY pipe of `contacts` from database `from` into database `to` of the server
/// at `server` (a URL without a database); its seconds.
pub(crate) fn copy_pipe_at(server: &str, from: &str, to: &str) -> Result<f64> {
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; psql -X -q -d {server}/{from} -c 'COPY contacts TO STDOUT (FORMAT binary)' | psql -X -q -d {server}/{to} -c 'COPY contacts FROM STDIN (FORMAT binary)'"
        ))
        .status()?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the psql COPY pipe failed ({status})");
    }
    Ok(seconds)
}

async fn bench(rows: i64, names: &[String; 3]) -> Result<()> {
    let [src, dst, copy] = names;
    let mut admin = sqlx::PgConnection::connect(&format!("{PG}/test"))
        .await
        .context("PostgreSQL at 127.0.0.1:5432")?;
    for n in names {
        sqlx::query(&format!("CREATE DATABASE \"{n}\""))
            .execute(&mut admin)
            .await?;
    }
    eprintln!("generating {rows} contacts…");
    let mut source = sqlx::PgConnection::connect(&format!("{PG}/{src}")).await?;
    sqlx::query(DDL).execute(&mut source).await?;
    sqlx::query(GENERATE)
        .bind(rows)
        .execute(&mut source)
        .await?;
    sqlx::query("VACUUM ANALYZE contacts")
        .execute(&mut source)
        .await?;
    let mut dest = sqlx::PgConnection::connect(&format!("{PG}/{dst}")).await?;
    sqlx::query(DDL).execute(&mut dest).await?;
    copy_pipe(src, dst)?;
    sqlx::query("VACUUM ANALYZE contacts")
        .execute(&mut dest)
        .await?;

    // The baseline: the COPY pipe into an empty table (with its primary key, as the
    // destination has).
    let mut target = sqlx::PgConnection::connect(&format!("{PG}/{copy}")).await?;
    sqlx::query(DDL).execute(&mut target).await?;
    // Each timed step starts after a checkpoint, so that none pays for the writes of the
    // steps before it (generating and loading two million rows fills the write-ahead log).
    // The pipe runs twice, into the empty table and again once it is emptied, and the faster
    // run is the baseline: the first, right after the load, has taken up to half as long
    // again as a settled one, which flattered every ratio against it.
    checkpoint(&mut admin).await?;
    let first_s = copy_pipe(src, copy)?;
    report("copy pipe", rows, first_s, None);
    sqlx::query("TRUNCATE contacts")
        .execute(&mut target)
        .await?;
    checkpoint(&mut admin).await?;
    let second_s = copy_pipe(src, copy)?;
    report("copy pipe, again", rows, second_s, None);
    let copy_s = first_s.min(second_s);

    let dir = root().join("target/bench-verify");
    std::fs::create_dir_all(&dir)?;
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    std::fs::write(
        dir.join("lockstep.toml"),
        format!(
            "[state]\nurl = \"sqlite://state.db\"\n\n\
             [connections.source]\nconnector = \"postgres\"\nconfig = {{ url = \"{PG}/{src}\" }}\n\n\
             [connections.dest]\nconnector = \"postgres\"\nconfig = {{ url = \"{PG}/{dst}\" }}\n\n\
             [syncs.contacts]\nsource = \"source.contacts\"\ndestination = \"dest.contacts\"\n\
             mode = \"full\"\nbatch_size = 10000\nledger = false\n"
        ),
    )?;

    // 1. Identical tables.
    checkpoint(&mut admin).await?;
    let (same_s, same_rss, same) = verify(&dir, 0)?;
    expect(&same, 0, 0, 0, "identical tables")?;
    report("verify, identical", rows, same_s, Some(same_rss));

    // 2. 0.2% of the rows differ, scattered: deleted, changed in one field, added.
    let missing: i64 = sqlx::query("DELETE FROM contacts WHERE id % $1 = 1")
        .bind(SPREAD)
        .execute(&mut dest)
        .await?
        .rows_affected() as i64;
    let different: i64 = sqlx::query("UPDATE contacts SET score = score + 1 WHERE id % $1 = 2")
        .bind(SPREAD)
        .execute(&mut dest)
        .await?
        .rows_affected() as i64;
    let extra: i64 = sqlx::query(
        "INSERT INTO contacts SELECT id + $2, email, first_name, last_name, company, phone, \
         lifecycle_stage, score, created_at, updated_at, props FROM contacts WHERE id % $1 = 3",
    )
    .bind(SPREAD)
    .bind(rows * 10)
    .execute(&mut dest)
    .await?
    .rows_affected() as i64;
    sqlx::query("VACUUM ANALYZE contacts")
        .execute(&mut dest)
        .await?;
    eprintln!(
        "destination: {missing} missing, {different} changed, {extra} extra ({:.2}% of the rows)",
        100.0 * (missing + different + extra) as f64 / rows as f64
    );
    checkpoint(&mut admin).await?;
    let (diff_s, diff_rss, diff) = verify(&dir, 1)?;
    expect(
        &diff,
        missing,
        extra,
        different,
        "0.2% scattered differences",
    )?;
    report("verify, 0.2% differ", rows, diff_s, Some(diff_rss));

    // 3. The same, without an index on the destination's key.
    sqlx::query("ALTER TABLE contacts DROP CONSTRAINT contacts_pkey")
        .execute(&mut dest)
        .await?;
    checkpoint(&mut admin).await?;
    let (noindex_s, noindex_rss, noindex) = verify(&dir, 1)?;
    expect(
        &noindex,
        missing,
        extra,
        different,
        "0.2% differ, no key index",
    )?;
    report("verify, no key index", rows, noindex_s, Some(noindex_rss));

    let peak = same_rss.max(diff_rss).max(noindex_rss);
    println!(
        "without the destination's key index: verify_noindex_vs_copy={:.2}",
        noindex_s / copy_s
    );
    println!(
        "verify_same_vs_copy={:.2} verify_diff_vs_copy={:.2} peak_rss_mib={}",
        same_s / copy_s,
        diff_s / copy_s,
        peak >> 20
    );
    Ok(())
}

/// Writes every dirty page of the server to disk now.
async fn checkpoint(admin: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("CHECKPOINT").execute(admin).await?;
    Ok(())
}

/// Fails unless `report` counts exactly these differences.
fn expect(
    report: &serde_json::Value,
    missing: i64,
    extra: i64,
    different: i64,
    what: &str,
) -> Result<()> {
    let found = (
        report["missing"].as_i64(),
        report["extra"].as_i64(),
        report["different"].as_i64(),
    );
    // How verify compared: in the databases (range hashes) or by reading both sides.
    eprintln!("{what}: content compared by {}", report["content"]);
    if found != (Some(missing), Some(extra), Some(different)) {
        bail!(
            "{what}: verify found (missing, extra, different) = {found:?}, expected \
             ({missing}, {extra}, {different})"
        );
    }
    Ok(())
}

/// Runs `lockstep verify contacts --output json`, expecting exit code `code`; returns
/// (seconds, peak RSS in bytes, the report).
fn verify(dir: &Path, code: i32) -> Result<(f64, u64, serde_json::Value)> {
    let bin = root().join("target/release/lockstep");
    let started = Instant::now();
    let child = Command::new(&bin)
        .args([
            "--config",
            "lockstep.toml",
            "verify",
            "contacts",
            "--output",
            "json",
        ])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = String::new();
    // The report is read before waiting: a long one would fill the pipe and stall the child.
    if let Some(mut out) = child.stdout {
        use std::io::Read;
        out.read_to_string(&mut stdout)?;
    }
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for the child we spawned.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    if waited != pid {
        bail!(
            "waiting for lockstep failed: {}",
            std::io::Error::last_os_error()
        );
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == code) {
        bail!("lockstep verify ended with status {status}, expected exit code {code}:\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&stdout).context("lockstep verify's JSON report")?;
    Ok((seconds, usage.ru_maxrss as u64 * 1024, report))
}
