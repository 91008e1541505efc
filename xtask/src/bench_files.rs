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
use sqlx::{Connection, Row};

use crate::{cargo, root};

const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// The columns compared between source and destination, as one text per row.
const ROW: &str = "concat_ws('|', id, email, first_name, last_name, company, phone, \
     lifecycle_stage, score, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), props::jsonb::text)";

/// The `bench pg` contacts table.
const DDL: &str = "CREATE TABLE contacts (
    id bigint PRIMARY KEY,
    email text NOT NULL,
    first_name text,
    last_name text,
    company text,
    phone text,
    lifecycle_stage text,
    score integer,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    props jsonb
)";

/// The `bench pg` contacts rows: about 300 bytes each.
const GENERATE: &str = "INSERT INTO contacts
SELECT g,
       'contact.' || g || '@example-company-' || (g % 20000) || '.com',
       (ARRAY['Ada','Grace','Alan','Edsger','Barbara','Donald','Frances','Ken'])[1 + g % 8] || ' ' || (g % 977),
       (ARRAY['Lovelace','Hopper','Turing','Dijkstra','Liskov','Knuth','Allen','Thompson'])[1 + (g / 8) % 8] || '-' || (g % 4421),
       'Company ' || (g % 20000) || ' Holdings International Ltd',
       '+1-555-' || lpad((g % 10000000)::text, 7, '0'),
       (ARRAY['lead','subscriber','marketing-qualified','customer','evangelist'])[1 + g % 5],
       (g * 37) % 100,
       timestamptz '2024-01-01 00:00:00+00' + make_interval(secs => g * 7),
       timestamptz '2025-01-01 00:00:00+00' + make_interval(secs => g * 3),
       jsonb_build_object('source', (ARRAY['web','import','api','event'])[1 + g % 4], 'campaign', 'spring-' || (g % 50),
                          'visits', g % 17, 'vip', g % 7 = 0, 'region', 'region-' || (g % 9))
FROM generate_series(1, $1) AS g";

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
    check_equal(&mut source, &mut target, "COPY FROM").await?;
    report("COPY FROM the CSV file", rows, copy_s, None);

    // (b) The same file through the files connector.
    std::fs::write(dir.join("lockstep.toml"), config(dst))?;
    let (files_s, rss) = lockstep(dir, "csv_to_pg")?;
    let mut dest = sqlx::PgConnection::connect(&format!("{PG}/{dst}")).await?;
    check_equal(&mut source, &mut dest, "files sync").await?;
    report("lockstep files -> pg", rows, files_s, Some(rss));

    println!(
        "files_vs_copy={:.2} file_mib={} peak_rss_mib={}",
        files_s / copy_s,
        file_bytes >> 20,
        rss >> 20
    );
    Ok(())
}

fn report(what: &str, rows: i64, seconds: f64, rss: Option<u64>) {
    let rss = rss
        .map(|b| format!(", peak RSS {} MiB", b >> 20))
        .unwrap_or_default();
    println!(
        "{what:<26} {seconds:>8.2} s  {:>12.0} rows/s{rss}",
        rows as f64 / seconds.max(1e-9)
    );
}

/// Runs `lockstep run SYNC` and returns (seconds, peak RSS in bytes).
fn lockstep(dir: &Path, sync: &str) -> Result<(f64, u64)> {
    let bin = root().join("target/release/lockstep");
    let started = Instant::now();
    let child = Command::new(&bin)
        .args(["--config", "lockstep.toml", "run", sync, "--output", "json"])
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let pid = child.id() as libc::pid_t;
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
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout {
        use std::io::Read;
        out.read_to_string(&mut stdout)?;
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("lockstep run {sync} failed:\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&stdout).context("lockstep's JSON report")?;
    eprintln!("  {sync}: {}", report["metrics"]);
    Ok((seconds, usage.ru_maxrss as u64 * 1024))
}

async fn check_equal(
    source: &mut sqlx::PgConnection,
    dest: &mut sqlx::PgConnection,
    what: &str,
) -> Result<()> {
    let query = format!(
        "SELECT count(*), coalesce(md5(string_agg({ROW}, E'\\n' ORDER BY id)), '') FROM contacts"
    );
    let a = sqlx::query(&query).fetch_one(&mut *source).await?;
    let b = sqlx::query(&query).fetch_one(&mut *dest).await?;
    let (a, b): ((i64, String), (i64, String)) = ((a.get(0), a.get(1)), (b.get(0), b.get(1)));
    if a != b {
        bail!(
            "{what}: the destination differs from the source (rows {} vs {}, md5 {} vs {})",
            a.0,
            b.0,
            a.1,
            b.1
        );
    }
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
