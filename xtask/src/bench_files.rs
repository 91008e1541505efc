//! `cargo xtask bench files [--rows N]`: a CSV file into PostgreSQL through the files
//! connector, against PostgreSQL's own `COPY FROM` of the same file, measured in one run.
//!
//! It builds release binaries, generates N rows (1,000,000 by default) of the `bench pg`
//! contacts table in a scratch database, exports them to one CSV file with `\copy ... TO`,
//! then times (a) `\copy contacts FROM` that file into an empty table and (b) a full
//! `lockstep run` of the file into an empty PostgreSQL database (`ledger = false`, the
//! database fast path), whose peak RSS comes from the kernel (`wait4`). The result is checked
//! against the source with a content checksum. The last line reads
//! `files_vs_copy=<ratio> file_mib=<n> peak_rss_mib=<n>`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sqlx::Connection;

use crate::bench_pg::{check_equal_rows, lockstep, report, DDL, GENERATE, PG};
use crate::{cargo, root};

/// The columns compared between source and destination, as one text per row.
const ROW: &str = "concat_ws('|', id, email, first_name, last_name, company, phone, \
     lifecycle_stage, score, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), props::jsonb::text)";

pub fn run(args: &[&str]) -> Result<()> {
    let mut rows: i64 = 1_000_000;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--rows" => rows = it.next().context("--rows takes a number")?.parse()?,
            other => {
                bail!("unknown argument `{other}`; usage: cargo xtask bench files [--rows N]")
            }
        }
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "lockstep-cli",
        "-p",
        "lockstep-connector-files",
        "-p",
        "lockstep-connector-postgres",
    ])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tag = std::process::id();
    let names = [
        format!("lockstep_bench_files_src_{tag}"),
        format!("lockstep_bench_files_dst_{tag}"),
        format!("lockstep_bench_files_copy_{tag}"),
    ];
    let dir = root().join("target/bench-files");
    let result = rt.block_on(bench(rows, &names, &dir));
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{PG}/test")).await {
            for n in &names {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    });
    let _ = std::fs::remove_file(dir.join("contacts.csv"));
    result
}

fn psql(database: &str, command: &str) -> Result<()> {
    let status = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-d", database, "-c", command])
        .status()
        .context("running psql")?;
    if !status.success() {
        bail!("psql `{command}` failed ({status})");
    }
    Ok(())
}

async fn bench(rows: i64, names: &[String; 3], dir: &Path) -> Result<()> {
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

    std::fs::create_dir_all(dir)?;
    let _ = std::fs::remove_file(dir.join("state.db"));
    let file = dir.join("contacts.csv");
    psql(
        src,
        &format!(
            "\\copy (SELECT * FROM contacts ORDER BY id) TO '{}' (FORMAT csv, HEADER)",
            file.display()
        ),
    )?;
    // Old enough to be past the settle time.
    std::fs::File::options()
        .write(true)
        .open(&file)?
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60))?;
    let file_bytes = std::fs::metadata(&file)?.len();
    eprintln!("CSV file: {} MiB", file_bytes >> 20);

    // (a) The baseline: PostgreSQL's own COPY FROM of the same file into an empty table.
    let mut target = sqlx::PgConnection::connect(&format!("{PG}/{copy}")).await?;
    sqlx::query(DDL).execute(&mut target).await?;
    let started = Instant::now();
    psql(
        copy,
        &format!(
            "\\copy contacts FROM '{}' (FORMAT csv, HEADER)",
            file.display()
        ),
    )?;
    let copy_s = started.elapsed().as_secs_f64();
    check_equal_rows(&mut source, &mut target, ROW, "COPY FROM").await?;
    report("COPY FROM the CSV file", rows, copy_s, None);

    // (b) The same file through the files connector.
    std::fs::write(dir.join("lockstep.toml"), config(dst))?;
    let (files_s, rss) = lockstep(dir, "csv_to_pg")?;
    let mut dest = sqlx::PgConnection::connect(&format!("{PG}/{dst}")).await?;
    check_equal_rows(&mut source, &mut dest, ROW, "files sync").await?;
    report("lockstep files -> pg", rows, files_s, Some(rss));

    println!(
        "files_vs_copy={:.2} file_mib={} peak_rss_mib={}",
        files_s / copy_s,
        file_bytes >> 20,
        rss >> 20
    );
    Ok(())
}

fn config(dst: &str) -> String {
    format!(
        r#"[state]
url = "sqlite://state.db"

[connections.csv]
connector = "files"
[connections.csv.config.streams.contacts]
path = "contacts.csv"
primary_key = ["id"]
settle = "0s"
fields = {{ score = "int32", props = "json" }}

[connections.dest]
connector = "postgres"
config = {{ url = "{PG}/{dst}" }}

[syncs.csv_to_pg]
source = "csv.contacts"
destination = "dest.contacts"
mode = "full"
batch_size = 10000
ledger = false
"#
    )
}
