//! `cargo xtask bench pg [--rows N]`: PostgreSQL-to-PostgreSQL sync speed against
//! PostgreSQL's own `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe, measured in one run.
//!
//! It builds release binaries, generates a `contacts` table of N rows (about 300 bytes each)
//! in a scratch source database, then measures: (a) the psql binary COPY pipe into an empty
//! table; (b) a full `lockstep run` into an empty destination; (c) an incremental run after
//! updating 1%, inserting 0.5% and deleting 0.2% of the rows; (d) an incremental run with no
//! changes; (e) the same full sync into MariaDB. Each lockstep run's peak RSS comes from the
//! kernel (`wait4`). Every result is checked against the source with a content checksum.
//! The last line reads `full_vs_copy=<ratio> incr_s=<s> noop_s=<s> peak_rss_mib=<n>`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sqlx::{Connection, Row};

use crate::{cargo, root};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const MY: &str = "mysql://root@127.0.0.1:3306";

/// The columns compared between source and destination, as one text per row.
const PG_ROW: &str =
    "concat_ws('|', id, email, first_name, last_name, company, phone, lifecycle_stage, score, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), props::text)";
/// The columns both PostgreSQL and MariaDB print the same way.
const PORTABLE_ROW: &str =
    "concat_ws('|', id, email, first_name, last_name, company, phone, lifecycle_stage, score)";

pub fn run(args: &[&str]) -> Result<()> {
    let mut rows: i64 = 1_000_000;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--rows" => rows = it.next().context("--rows takes a number")?.parse()?,
            other => bail!("unknown argument `{other}`; usage: cargo xtask bench pg [--rows N]"),
        }
    }
    cargo(&[
        "build",
        "--release",
        "-p",
        "lockstep-cli",
        "-p",
        "lockstep-connector-postgres",
        "-p",
        "lockstep-connector-mysql",
    ])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tag = std::process::id();
    let names = [
        format!("lockstep_bench_src_{tag}"),
        format!("lockstep_bench_dst_{tag}"),
        format!("lockstep_bench_copy_{tag}"),
    ];
    let my_name = format!("lockstep_bench_my_{tag}");
    let result = rt.block_on(bench(rows, &names, &my_name));
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{PG}/test")).await {
            for n in &names {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
        if let Ok(mut c) = sqlx::MySqlConnection::connect(&format!("{MY}/test")).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{my_name}`"))
                .execute(&mut c)
                .await;
        }
    });
    result
}

async fn bench(rows: i64, names: &[String; 3], my_name: &str) -> Result<()> {
    let [src, dst, copy] = names;
    let mut admin = sqlx::PgConnection::connect(&format!("{PG}/test"))
        .await
        .context("PostgreSQL at 127.0.0.1:5432")?;
    for n in names {
        sqlx::query(&format!("CREATE DATABASE \"{n}\""))
            .execute(&mut admin)
            .await?;
    }
    let mut my = sqlx::MySqlConnection::connect(&format!("{MY}/test"))
        .await
        .context("MariaDB at 127.0.0.1:3306")?;
    sqlx::query(&format!("CREATE DATABASE `{my_name}`"))
        .execute(&mut my)
        .await?;

    eprintln!("generating {rows} contacts…");
    let mut source = sqlx::PgConnection::connect(&format!("{PG}/{src}")).await?;
    sqlx::query(DDL).execute(&mut source).await?;
    sqlx::query(GENERATE)
        .bind(rows)
        .execute(&mut source)
        .await?;
    // Incremental reads page by (cursor, key); like any cursor-based sync, they need an index
    // on it. The COPY baseline's target gets no index, so the comparison favours the baseline.
    sqlx::query("CREATE INDEX contacts_cursor ON contacts (updated_at, id)")
        .execute(&mut source)
        .await?;
    sqlx::query("VACUUM ANALYZE contacts")
        .execute(&mut source)
        .await?;
    let bytes: i64 = sqlx::query("SELECT pg_table_size('contacts')")
        .fetch_one(&mut source)
        .await?
        .get(0);
    eprintln!(
        "source table: {} MiB, {} bytes a row",
        bytes >> 20,
        bytes / rows.max(1)
    );

    // (a) The baseline: PostgreSQL's own binary COPY pipe into an empty table.
    let mut target = sqlx::PgConnection::connect(&format!("{PG}/{copy}")).await?;
    sqlx::query(DDL).execute(&mut target).await?;
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; psql -X -q -h 127.0.0.1 -U postgres -d {src} -c 'COPY contacts TO STDOUT (FORMAT binary)' | psql -X -q -h 127.0.0.1 -U postgres -d {copy} -c 'COPY contacts FROM STDIN (FORMAT binary)'"
        ))
        .status()?;
    let copy_s = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the psql COPY pipe failed ({status})");
    }
    check_equal(&mut source, &mut target, "COPY pipe").await?;
    report("copy pipe", rows, copy_s, None);

    let dir = root().join("target/bench-pg");
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("state.db"));
    std::fs::write(dir.join("lockstep.toml"), config(src, dst, my_name))?;

    // (b) A full sync into an empty destination.
    let (full_s, rss_full) = lockstep(&dir, "pg_to_pg")?;
    let mut dest = sqlx::PgConnection::connect(&format!("{PG}/{dst}")).await?;
    check_equal(&mut source, &mut dest, "full sync").await?;
    report("lockstep full", rows, full_s, Some(rss_full));

    // (c) An incremental run after changes: 1% updated, 0.5% inserted, 0.2% deleted.
    sqlx::query(CHANGE).bind(rows).execute(&mut source).await?;
    let (incr_s, rss_incr) = lockstep(&dir, "pg_to_pg")?;
    check_equal(&mut source, &mut dest, "incremental sync").await?;
    report(
        "lockstep incremental",
        rows / 100 + rows / 200,
        incr_s,
        Some(rss_incr),
    );

    // (d) An incremental run with nothing to do.
    let (noop_s, rss_noop) = lockstep(&dir, "pg_to_pg")?;
    report("lockstep no-op", 0, noop_s, Some(rss_noop));

    // (e) The same full sync into MariaDB.
    let (maria_s, rss_maria) = lockstep(&dir, "pg_to_mariadb")?;
    let mut maria = sqlx::MySqlConnection::connect(&format!("{MY}/{my_name}")).await?;
    check_mariadb(&mut source, &mut maria).await?;
    report(
        "lockstep full to MariaDB",
        rows + rows / 200 - rows / 500,
        maria_s,
        Some(rss_maria),
    );

    let peak = [rss_full, rss_incr, rss_noop, rss_maria]
        .into_iter()
        .max()
        .unwrap_or(0);
    println!(
        "full_vs_copy={:.2} incr_s={:.2} noop_s={:.2} peak_rss_mib={}",
        full_s / copy_s,
        incr_s,
        noop_s,
        peak >> 20
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

async fn checksum_pg(c: &mut sqlx::PgConnection, row: &str) -> Result<(i64, String)> {
    let r = sqlx::query(&format!(
        "SELECT count(*), coalesce(md5(string_agg({row}, E'\\n' ORDER BY id)), '') FROM contacts"
    ))
    .fetch_one(c)
    .await?;
    Ok((r.get(0), r.get(1)))
}

async fn check_equal(
    source: &mut sqlx::PgConnection,
    dest: &mut sqlx::PgConnection,
    what: &str,
) -> Result<()> {
    let (a, b) = (
        checksum_pg(source, PG_ROW).await?,
        checksum_pg(dest, PG_ROW).await?,
    );
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

/// A hash of every row's portable text, in id order, read in pages so that no server-side
/// aggregate limit (MariaDB's max_allowed_packet caps GROUP_CONCAT) can truncate it.
macro_rules! paged_digest {
    ($conn:expr, $query:expr) => {{
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        let (mut last, mut rows) = (i64::MIN, 0i64);
        loop {
            let page = sqlx::query($query)
                .bind(last)
                .fetch_all(&mut *$conn)
                .await?;
            if page.is_empty() {
                break;
            }
            for row in &page {
                last = row.get::<i64, _>(0);
                row.get::<String, _>(1).hash(&mut hasher);
                rows += 1;
            }
        }
        (rows, hasher.finish())
    }};
}

async fn check_mariadb(
    source: &mut sqlx::PgConnection,
    dest: &mut sqlx::MySqlConnection,
) -> Result<()> {
    let a = paged_digest!(
        source,
        &format!("SELECT id, {PORTABLE_ROW} FROM contacts WHERE id > $1 ORDER BY id LIMIT 50000")
    );
    let b = paged_digest!(dest, &format!(
        "SELECT CAST(id AS SIGNED), CONVERT({PORTABLE_ROW} USING utf8mb4) FROM contacts WHERE id > ? ORDER BY id LIMIT 50000"
    ));
    if a != b {
        bail!(
            "MariaDB: the destination differs from the source (rows {} vs {}, digest {:x} vs {:x})",
            a.0,
            b.0,
            a.1,
            b.1
        );
    }
    Ok(())
}

fn config(src: &str, dst: &str, my: &str) -> String {
    format!(
        r#"[state]
url = "sqlite://state.db"

[connections.source]
connector = "postgres"
config = {{ url = "{PG}/{src}" }}

[connections.dest]
connector = "postgres"
config = {{ url = "{PG}/{dst}" }}

[connections.maria]
connector = "mysql"
config = {{ url = "{MY}/{my}" }}

# Database to database: no ledger (the destination's upsert tells added from updated), and a
# key-set reconciliation every second run for the deletes.
[syncs.pg_to_pg]
source = "source.contacts"
destination = "dest.contacts"
mode = "mirror"
cursor = "updated_at"
batch_size = 10000
ledger = false
reconcile_every = 2
max_delete_fraction = 0.05

[syncs.pg_to_mariadb]
source = "source.contacts"
destination = "maria.contacts"
mode = "full"
batch_size = 10000
ledger = false
"#
    )
}

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

const CHANGE: &str = "WITH n AS (SELECT $1::bigint AS rows)
, upd AS (
    UPDATE contacts SET score = score + 1, lifecycle_stage = 'customer',
           updated_at = timestamptz '2026-06-01 00:00:00+00' + make_interval(secs => id)
    WHERE id % 100 = 1
)
, ins AS (
    INSERT INTO contacts
    SELECT (SELECT rows FROM n) + g, 'new.' || g || '@example.com', 'New', 'Contact', 'Acme', NULL, 'lead', 0,
           timestamptz '2026-06-02 00:00:00+00', timestamptz '2026-06-02 00:00:00+00' + make_interval(secs => g),
           '{\"source\": \"api\"}'::jsonb
    FROM generate_series(1, (SELECT rows FROM n) / 200) AS g
)
DELETE FROM contacts WHERE id % 500 = 7";
