//! `cargo xtask bench pg [--rows N] [--state sqlite|postgres]`: PostgreSQL-to-PostgreSQL
//! sync speed against PostgreSQL's own `COPY ... TO STDOUT | COPY ... FROM STDIN` pipe,
//! measured in one run.
//!
//! It builds release binaries, generates a `contacts` table of N rows (about 300 bytes each)
//! in a scratch source database, then measures two paths side by side:
//!
//! - the fast path (opt-in): `ledger = false`, into a table the first run creates, a
//!   key-set reconciliation every second run;
//! - the default path, what a user who writes the README's config gets: the record ledger
//!   on, mode mirror with `reconcile_every = 1`, into an existing destination table whose
//!   only indexes are the primary key on `id` and an index on `updated_at`.
//!
//! For each: a full run, an incremental run after 1% of the rows were updated, 0.5% inserted
//! and 0.2% deleted (both paths see the same changes), and a run with no changes. A third
//! sync in mode cdc (a snapshot, then the same changes from a logical replication slot; the
//! server needs `wal_level = logical`) is timed on the same changes against the default
//! path's cursor-based mirror run. The
//! baseline is the psql binary COPY pipe into an empty table, timed in the same run; last,
//! the fast path's full sync into MariaDB against MariaDB's own bulk load of the same rows
//! (`psql COPY | LOAD DATA LOCAL INFILE`). The state store is a SQLite file, or with
//! `--state postgres` a scratch PostgreSQL database. Each lockstep run's peak RSS comes from
//! the kernel (`wait4`). Every result is checked against the source by content.
//!
//! The last line reads `full_vs_copy=<ratio> default_vs_copy=<ratio>
//! default_incr_vs_copy=<ratio> incr_s=<s> noop_s=<s> maria_vs_load=<ratio>
//! peak_rss_mib=<n> cdc_vs_mirror=<ratio> cdc_latency_s=<s>`: `full_vs_copy` is the fast
//! path's full run, `incr_s` its incremental
//! run, `noop_s` the default path's no-op run (which reconciles), `maria_vs_load` the MariaDB
//! sync against LOAD DATA, `peak_rss_mib` the largest of all lockstep runs, and
//! `cdc_vs_mirror` the cdc run of the changes against the default path's incremental run,
//! and `cdc_latency_s` the median time from a source commit to the destination's commit of
//! it while `lockstep daemon` runs the cdc sync every second.
//!
//! `LOCKSTEP_BENCH_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432`) names another
//! PostgreSQL server, for one with `wal_level = logical`.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sqlx::{Connection, Row};

use crate::{cargo, root};

pub(crate) const PG: &str = "postgres://postgres@127.0.0.1:5432";

/// The PostgreSQL server this bench uses, without a database: `LOCKSTEP_BENCH_POSTGRES_URL`
/// (the cdc sync needs `wal_level = logical`, which a shared server may not have), else
/// [`PG`].
fn pg() -> String {
    std::env::var("LOCKSTEP_BENCH_POSTGRES_URL").unwrap_or_else(|_| PG.to_owned())
}
const MY: &str = "mysql://root@127.0.0.1:3306";

/// The columns compared between source and destination, as one text per row.
const PG_ROW: &str =
    "concat_ws('|', id, email, first_name, last_name, company, phone, lifecycle_stage, score, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), props::text)";
/// The source's columns as text MariaDB's LOAD DATA reads into the table the MySQL connector
/// creates: timestamps in UTC without a zone.
const LOAD_COLUMNS: &str = "id, email, first_name, last_name, company, phone, lifecycle_stage, \
     score, to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
     to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), props::text";
/// The columns both PostgreSQL and MariaDB print the same way.
const PORTABLE_ROW: &str =
    "concat_ws('|', id, email, first_name, last_name, company, phone, lifecycle_stage, score)";

const USAGE: &str = "usage: cargo xtask bench pg [--rows N] [--state sqlite|postgres]";

/// Where the lockstep runs keep their state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StateBackend {
    Sqlite,
    Postgres,
}

pub fn run(args: &[&str]) -> Result<()> {
    let mut rows: i64 = 1_000_000;
    let mut state = StateBackend::Sqlite;
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
                if rows < 1 {
                    bail!("--rows takes a positive number of rows, found {rows}; {USAGE}");
                }
            }
            "--state" => {
                state = match it.next().copied() {
                    Some("sqlite") => StateBackend::Sqlite,
                    Some("postgres") => StateBackend::Postgres,
                    other => bail!(
                        "--state takes `sqlite` or `postgres`, found {}; {USAGE}",
                        other.map_or("nothing".to_owned(), |o| format!("`{o}`"))
                    ),
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
        "-p",
        "lockstep-connector-mysql",
    ])?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tag = std::process::id();
    let names = Names {
        src: format!("lockstep_bench_src_{tag}"),
        dst: format!("lockstep_bench_dst_{tag}"),
        default_dst: format!("lockstep_bench_default_{tag}"),
        copy: format!("lockstep_bench_copy_{tag}"),
        state: format!("lockstep_bench_state_{tag}"),
        maria: format!("lockstep_bench_my_{tag}"),
        cdc_dst: format!("lockstep_bench_cdc_{tag}"),
        slot: format!("lockstep_bench_cdc_{tag}"),
    };
    let result = rt.block_on(bench(rows, state, &names));
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{}/test", pg())).await {
            // The cdc sync's slot (and the anchor a snapshot run leaves) keeps WAL and its
            // database from being dropped.
            let _ = sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name IN ($1, $1 || '_anchor')",
            )
            .bind(&names.slot)
            .execute(&mut c)
            .await;
            for n in names.postgres() {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
        if let Ok(mut c) = sqlx::MySqlConnection::connect(&format!("{MY}/test")).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{}`", names.maria))
                .execute(&mut c)
                .await;
        }
    });
    result
}

/// The scratch databases of one bench run.
struct Names {
    src: String,
    /// The fast path's destination, created by its first run.
    dst: String,
    /// The default path's destination, created beforehand like a user's existing table.
    default_dst: String,
    copy: String,
    /// The PostgreSQL state store, with `--state postgres`.
    state: String,
    maria: String,
    /// The cdc sync's destination, created by its first run.
    cdc_dst: String,
    /// The cdc sync's replication slot and publication.
    slot: String,
}

impl Names {
    fn postgres(&self) -> [&str; 6] {
        [
            &self.src,
            &self.dst,
            &self.default_dst,
            &self.copy,
            &self.state,
            &self.cdc_dst,
        ]
    }
}

/// The timings of one path's three runs.
struct PathRuns {
    full_s: f64,
    incr_s: f64,
    noop_s: f64,
    peak_rss: u64,
}

async fn bench(rows: i64, state: StateBackend, names: &Names) -> Result<()> {
    let mut admin = sqlx::PgConnection::connect(&format!("{}/test", pg()))
        .await
        .with_context(|| format!("PostgreSQL at {}", pg()))?;
    for n in names.postgres() {
        sqlx::query(&format!("CREATE DATABASE \"{n}\""))
            .execute(&mut admin)
            .await?;
    }
    let mut my = sqlx::MySqlConnection::connect(&format!("{MY}/test"))
        .await
        .context("MariaDB at 127.0.0.1:3306")?;
    sqlx::query(&format!("CREATE DATABASE `{}`", names.maria))
        .execute(&mut my)
        .await?;

    eprintln!("generating {rows} contacts…");
    let mut source = sqlx::PgConnection::connect(&format!("{}/{}", pg(), names.src)).await?;
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

    // The default path's destination exists before the first run, as a user's table would,
    // with the indexes most tables have: the primary key and one on the modification time.
    let mut default_dest =
        sqlx::PgConnection::connect(&format!("{}/{}", pg(), names.default_dst)).await?;
    sqlx::query(DDL).execute(&mut default_dest).await?;
    sqlx::query("CREATE INDEX contacts_updated_at ON contacts (updated_at)")
        .execute(&mut default_dest)
        .await?;

    // (a) The baseline: PostgreSQL's own binary COPY pipe into an empty table, after a
    // checkpoint, twice (the second time into the emptied table); the faster is the baseline.
    let mut target = sqlx::PgConnection::connect(&format!("{}/{}", pg(), names.copy)).await?;
    sqlx::query(DDL).execute(&mut target).await?;
    let copy_pipe = || -> Result<f64> {
        checkpoint()?;
        crate::bench_verify::copy_pipe_at(&pg(), &names.src, &names.copy)
    };
    let first_s = copy_pipe()?;
    report("copy pipe", rows, first_s, None);
    sqlx::query("TRUNCATE contacts")
        .execute(&mut target)
        .await?;
    let second_s = copy_pipe()?;
    let copy_s = first_s.min(second_s);
    check_equal(&mut source, &mut target, "COPY pipe").await?;
    report("copy pipe, again", rows, second_s, None);

    let dir = root().join("target/bench-pg");
    std::fs::create_dir_all(&dir)?;
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    let state_url = match state {
        StateBackend::Sqlite => "sqlite://state.db".to_owned(),
        StateBackend::Postgres => format!("{}/{}", pg(), names.state),
    };
    std::fs::write(dir.join("lockstep.toml"), config(&state_url, names))?;
    let mut dest = sqlx::PgConnection::connect(&format!("{}/{}", pg(), names.dst)).await?;

    // Full runs into empty destinations.
    let (fast_full_s, fast_full_rss) = lockstep(&dir, "pg_to_pg")?;
    check_equal(&mut source, &mut dest, "fast path, full sync").await?;
    report("fast path full", rows, fast_full_s, Some(fast_full_rss));
    let (full_s, full_rss) = lockstep(&dir, "pg_default")?;
    check_equal(&mut source, &mut default_dest, "default path, full sync").await?;
    report("default path full", rows, full_s, Some(full_rss));
    let mut cdc_dest = sqlx::PgConnection::connect(&format!("{}/{}", pg(), names.cdc_dst)).await?;
    let (cdc_full_s, cdc_full_rss) = lockstep(&dir, "pg_cdc")?;
    check_equal(&mut source, &mut cdc_dest, "cdc, snapshot").await?;
    report("cdc snapshot", rows, cdc_full_s, Some(cdc_full_rss));

    // Incremental runs after changes: 1% updated, 0.5% inserted, 0.2% deleted.
    sqlx::query(CHANGE).bind(rows).execute(&mut source).await?;
    let changed = rows / 100 + rows / 200;
    let (fast_incr_s, fast_incr_rss) = lockstep(&dir, "pg_to_pg")?;
    check_equal(&mut source, &mut dest, "fast path, incremental sync").await?;
    report(
        "fast path incremental",
        changed,
        fast_incr_s,
        Some(fast_incr_rss),
    );
    let (incr_s, incr_rss) = lockstep(&dir, "pg_default")?;
    check_equal(
        &mut source,
        &mut default_dest,
        "default path, incremental sync",
    )
    .await?;
    report("default path incremental", changed, incr_s, Some(incr_rss));
    let (cdc_incr_s, cdc_incr_rss) = lockstep(&dir, "pg_cdc")?;
    check_equal(&mut source, &mut cdc_dest, "cdc, changes").await?;
    report("cdc changes", changed, cdc_incr_s, Some(cdc_incr_rss));

    // Runs with nothing to do; both reconcile key sets (the fast path every second run).
    let (fast_noop_s, fast_noop_rss) = lockstep(&dir, "pg_to_pg")?;
    check_equal(&mut source, &mut dest, "fast path, no-op sync").await?;
    report("fast path no-op", 0, fast_noop_s, Some(fast_noop_rss));
    let (noop_s, noop_rss) = lockstep(&dir, "pg_default")?;
    check_equal(&mut source, &mut default_dest, "default path, no-op sync").await?;
    report("default path no-op", 0, noop_s, Some(noop_rss));

    let fast = PathRuns {
        full_s: fast_full_s,
        incr_s: fast_incr_s,
        noop_s: fast_noop_s,
        peak_rss: fast_full_rss.max(fast_incr_rss).max(fast_noop_rss),
    };
    let default = PathRuns {
        full_s,
        incr_s,
        noop_s,
        peak_rss: full_rss.max(incr_rss).max(noop_rss),
    };

    // The fast path's full sync into MariaDB.
    let (maria_s, rss_maria) = lockstep(&dir, "pg_to_mariadb")?;
    let mut maria = sqlx::MySqlConnection::connect(&format!("{MY}/{}", names.maria)).await?;
    check_mariadb(&mut source, &mut maria, "contacts").await?;
    let maria_rows = rows + rows / 200 - rows / 500;
    report(
        "fast path full to MariaDB",
        maria_rows,
        maria_s,
        Some(rss_maria),
    );
    // MariaDB's own bulk load of the same rows into a table of the same shape, fed by
    // PostgreSQL's text COPY (tab-separated, `\N` for NULL: LOAD DATA's default format).
    sqlx::query("CREATE TABLE contacts_load LIKE contacts")
        .execute(&mut maria)
        .await?;
    let started = Instant::now();
    let status = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; psql -X -q -d {pg}/{} -c \"COPY (SELECT {LOAD_COLUMNS} FROM contacts) TO STDOUT\" | mariadb -h 127.0.0.1 -u root --local-infile=1 {} -e \"LOAD DATA LOCAL INFILE '/dev/stdin' INTO TABLE contacts_load\"",
            names.src, names.maria, pg = pg()
        ))
        .status()?;
    let load_s = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("the psql COPY | mariadb LOAD DATA pipe failed ({status})");
    }
    check_mariadb(&mut source, &mut maria, "contacts_load").await?;
    report("MariaDB LOAD DATA pipe", maria_rows, load_s, None);

    // The end-to-end latency of cdc while the daemon runs the sync continuously.
    let (latency_median, latency_max) =
        cdc_latency(&dir, &mut source, &mut cdc_dest, LATENCY_SAMPLES).await?;
    check_equal(&mut source, &mut cdc_dest, "cdc, under the daemon").await?;

    let state_name = match state {
        StateBackend::Sqlite => "SQLite",
        StateBackend::Postgres => "PostgreSQL",
    };
    for (name, path) in [
        ("fast path (ledger = false, opt-in)", &fast),
        (
            "default path (ledger, mirror, reconcile_every = 1)",
            &default,
        ),
    ] {
        println!(
            "{name}, {state_name} state: full {:.2}x COPY, incremental {:.2}x COPY, \
             no-op {:.2} s, peak RSS {} MiB",
            path.full_s / copy_s,
            path.incr_s / copy_s,
            path.noop_s,
            path.peak_rss >> 20
        );
    }
    println!(
        "cdc (mode cdc, ledger): snapshot {:.2}x COPY, the same changes {:.2}x the default \
         path's mirror run ({:.2} s against {:.2} s), peak RSS {} MiB",
        cdc_full_s / copy_s,
        cdc_incr_s / default.incr_s,
        cdc_incr_s,
        default.incr_s,
        cdc_full_rss.max(cdc_incr_rss) >> 20
    );
    println!(
        "cdc under the daemon (every = \"1s\"): a source commit reaches the destination's \
         commit in {latency_median:.2} s (median of {LATENCY_SAMPLES}), {latency_max:.2} s at most"
    );
    let peak = fast
        .peak_rss
        .max(default.peak_rss)
        .max(rss_maria)
        .max(cdc_full_rss)
        .max(cdc_incr_rss);
    println!(
        "MariaDB destination (fast path, full): {:.2}x MariaDB's LOAD DATA pipe, peak RSS {} MiB",
        maria_s / load_s,
        rss_maria >> 20
    );
    println!(
        "full_vs_copy={:.2} default_vs_copy={:.2} default_incr_vs_copy={:.2} incr_s={:.2} \
         noop_s={:.2} maria_vs_load={:.2} peak_rss_mib={} cdc_vs_mirror={:.2} \
         cdc_latency_s={:.2}",
        fast.full_s / copy_s,
        default.full_s / copy_s,
        default.incr_s / copy_s,
        fast.incr_s,
        default.noop_s,
        maria_s / load_s,
        peak >> 20,
        cdc_incr_s / default.incr_s,
        latency_median
    );
    Ok(())
}

/// How many source commits the latency of cdc is measured on.
const LATENCY_SAMPLES: usize = 15;

/// The end-to-end latency of cdc: `lockstep daemon` runs the cdc sync every second (its
/// shortest schedule) while single-row updates are committed in the source, each at another
/// point of the schedule's second; each is timed from its commit to the moment a poll of the
/// destination sees it. Returns the median and the largest, in seconds.
async fn cdc_latency(
    dir: &Path,
    source: &mut sqlx::PgConnection,
    destination: &mut sqlx::PgConnection,
    samples: usize,
) -> Result<(f64, f64)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let text = std::fs::read_to_string(dir.join("lockstep.toml"))?;
    std::fs::write(
        dir.join("lockstep-daemon.toml"),
        format!(
            "{text}\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n\n[syncs.pg_cdc.schedule]\n\
             every = \"1s\"\n"
        ),
    )?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let mut daemon = Command::new(root().join("target/release/lockstep"))
        .args(["--config", "lockstep-daemon.toml", "daemon"])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting lockstep daemon")?;
    let measured = async {
        // The daemon's first run of the sync catches up with nothing.
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        let mut latencies = Vec::with_capacity(samples);
        for i in 0..samples {
            // Spread the commits over the schedule's second.
            let offset = 250 + (i as u64 * 373) % 1000;
            tokio::time::sleep(std::time::Duration::from_millis(offset)).await;
            let marker = format!("latency-{i}");
            // Rows the bench's changes left alone (they delete the ids ≡ 7 mod 500).
            let id = 12 + 10 * i as i64;
            sqlx::query("UPDATE contacts SET first_name = $1 WHERE id = $2")
                .bind(&marker)
                .bind(id)
                .execute(&mut *source)
                .await?;
            let committed = Instant::now();
            loop {
                let seen: Option<String> =
                    sqlx::query_scalar("SELECT first_name FROM contacts WHERE id = $1")
                        .bind(id)
                        .fetch_optional(&mut *destination)
                        .await?
                        .flatten();
                if seen.as_deref() == Some(marker.as_str()) {
                    break;
                }
                if committed.elapsed() > std::time::Duration::from_secs(60) {
                    bail!(
                        "the daemon did not bring an update to the cdc destination within 60 s \
                         (see {})",
                        dir.join("daemon.log").display()
                    );
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            latencies.push(committed.elapsed().as_secs_f64());
        }
        Ok::<_, anyhow::Error>(latencies)
    }
    .await;
    // SIGTERM: the daemon stops its worker after the batch in hand and exits.
    // SAFETY: kill(2) on the pid of a child we spawned and have not waited for.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let _ = daemon.wait();
    let mut latencies = measured?;
    latencies.sort_by(f64::total_cmp);
    let median = latencies[latencies.len() / 2];
    let max = latencies.last().copied().unwrap_or(median);
    eprintln!("  cdc latencies (s): {latencies:.2?}");
    Ok((median, max))
}

pub(crate) fn report(what: &str, rows: i64, seconds: f64, rss: Option<u64>) {
    let rss = rss
        .map(|b| format!(", peak RSS {} MiB", b >> 20))
        .unwrap_or_default();
    println!(
        "{what:<26} {seconds:>8.2} s  {:>12.0} rows/s{rss}",
        rows as f64 / seconds.max(1e-9)
    );
}

/// Runs `lockstep run SYNC` after a checkpoint of the PostgreSQL server and returns (seconds,
/// peak RSS in bytes).
pub(crate) fn lockstep(dir: &Path, sync: &str) -> Result<(f64, u64)> {
    checkpoint()?;
    lockstep_with_env(dir, sync, &[])
}

/// Makes the PostgreSQL server write every dirty page now, so that the next timed step does
/// not pay for the writes of the steps before it (each load of the table writes hundreds of
/// megabytes of write-ahead log, and a checkpoint they start lands in whatever runs next).
fn checkpoint() -> Result<()> {
    let status = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-d",
            &format!("{}/test", pg()),
            "-c",
            "CHECKPOINT",
        ])
        .status()
        .context("running psql for a CHECKPOINT")?;
    if !status.success() {
        bail!("CHECKPOINT failed ({status})");
    }
    Ok(())
}

/// Runs `lockstep run SYNC` with `env` added to its environment (and without `RUST_LOG`, so
/// that logging costs what it costs a user) and returns (seconds, peak RSS in bytes).
pub(crate) fn lockstep_with_env(
    dir: &Path,
    sync: &str,
    env: &[(&str, &str)],
) -> Result<(f64, u64)> {
    lockstep_report(dir, sync, env).map(|(seconds, rss, _)| (seconds, rss))
}

/// Runs `lockstep run SYNC --output json` as [`lockstep_with_env`] does and returns
/// (seconds, peak RSS in bytes, the run's JSON report).
pub(crate) fn lockstep_report(
    dir: &Path,
    sync: &str,
    env: &[(&str, &str)],
) -> Result<(f64, u64, serde_json::Value)> {
    lockstep_report_under(dir, sync, env, &[])
}

/// [`lockstep_report`], the lockstep command run by the command `wrapper` (say `perf
/// record ... --`) when it is not empty; the time and peak RSS are then the wrapper's.
pub(crate) fn lockstep_report_under(
    dir: &Path,
    sync: &str,
    env: &[(&str, &str)],
    wrapper: &[String],
) -> Result<(f64, u64, serde_json::Value)> {
    let bin = root().join("target/release/lockstep");
    let started = Instant::now();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut command = Command::new(program);
            command.args(args).arg(&bin);
            command
        }
        None => Command::new(&bin),
    };
    let child = command
        .args(["--config", "lockstep.toml", "run", sync, "--output", "json"])
        .current_dir(dir)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
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
    Ok((seconds, usage.ru_maxrss as u64 * 1024, report))
}

async fn checksum_pg(c: &mut sqlx::PgConnection, row: &str) -> Result<(i64, String)> {
    // One md5 per row, then one over those: aggregating the rows' text itself would pass
    // PostgreSQL's 1 GB limit for a value at about 3.5 million rows.
    let r = sqlx::query(&format!(
        "SELECT count(*), coalesce(md5(string_agg(md5({row}), '' ORDER BY id)), '') FROM contacts"
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
    check_equal_rows(source, dest, PG_ROW, what).await
}

/// Fails unless both `contacts` tables hold the same rows, each compared as the text `row`
/// (an SQL expression over the table's columns) makes of it.
pub(crate) async fn check_equal_rows(
    source: &mut sqlx::PgConnection,
    dest: &mut sqlx::PgConnection,
    row: &str,
    what: &str,
) -> Result<()> {
    let (a, b) = (
        checksum_pg(source, row).await?,
        checksum_pg(dest, row).await?,
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

/// Fails unless MariaDB's `table` holds the source's rows.
async fn check_mariadb(
    source: &mut sqlx::PgConnection,
    dest: &mut sqlx::MySqlConnection,
    table: &str,
) -> Result<()> {
    let a = paged_digest!(
        source,
        &format!("SELECT id, {PORTABLE_ROW} FROM contacts WHERE id > $1 ORDER BY id LIMIT 50000")
    );
    let b = paged_digest!(dest, &format!(
        "SELECT CAST(id AS SIGNED), CONVERT({PORTABLE_ROW} USING utf8mb4) FROM `{table}` WHERE id > ? ORDER BY id LIMIT 50000"
    ));
    if a != b {
        bail!(
            "MariaDB `{table}`: differs from the source (rows {} vs {}, digest {:x} vs {:x})",
            a.0,
            b.0,
            a.1,
            b.1
        );
    }
    Ok(())
}

fn config(state_url: &str, names: &Names) -> String {
    let pg = pg();
    let Names {
        src,
        dst,
        default_dst,
        maria,
        cdc_dst,
        slot,
        ..
    } = names;
    format!(
        r#"[state]
url = "{state_url}"

[connections.source]
connector = "postgres"
config = {{ url = "{pg}/{src}" }}

[connections.dest]
connector = "postgres"
config = {{ url = "{pg}/{dst}" }}

[connections.default_dest]
connector = "postgres"
config = {{ url = "{pg}/{default_dst}" }}

[connections.maria]
connector = "mysql"
config = {{ url = "{MY}/{maria}" }}

# The default path: what the README's config gives, in mode mirror (the ledger on, a key-set
# reconciliation every run, default batch size and guard).
[syncs.pg_default]
source = "source.contacts"
destination = "default_dest.contacts"
mode = "mirror"
cursor = "updated_at"

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

[connections.cdc_dest]
connector = "postgres"
config = {{ url = "{pg}/{cdc_dst}" }}

# Change data capture: a snapshot, then the changes from a logical replication slot.
[syncs.pg_cdc]
source = "source.contacts"
destination = "cdc_dest.contacts"
mode = "cdc"
max_delete_fraction = 0.05
[syncs.pg_cdc.cdc]
slot = "{slot}"
publication = "{slot}"

[syncs.pg_to_mariadb]
source = "source.contacts"
destination = "maria.contacts"
mode = "full"
batch_size = 10000
ledger = false
"#
    )
}

pub(crate) const DDL: &str = "CREATE TABLE contacts (
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

pub(crate) const GENERATE: &str = "INSERT INTO contacts
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
