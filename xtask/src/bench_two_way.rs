//! `cargo xtask bench two-way [--rows N] [--state sqlite|postgres]`: a two-way sync between
//! two PostgreSQL databases against a one-way incremental sync of the same amount of
//! changes, measured in the same run.
//!
//! It builds release binaries and loads the `bench pg` contacts table (N rows, 1,000,000 by
//! default) into four scratch databases: the two sides of the two-way sync (a = its
//! `source`, b = its `destination`) and the one-way baseline's source, plus an empty table of
//! the same shape for the baseline's destination. Every table has its primary key, an index
//! on `(updated_at, id)` for cursor reads, and an `updated_at` kept by a `BEFORE INSERT OR
//! UPDATE` trigger (`clock_timestamp()`), as an application's table would; `updated_at` is
//! each side's cursor and modification time, and is not mapped.
//!
//! Steps:
//! 1. an initial two-way run over the identical sides, so that the base ledger exists (its
//!    time is reported, it has no goal), and a first one-way run of the baseline;
//! 2. 1% of the records changed on side a and 1% on side b, 0.1% of all records being the
//!    same records on both sides (conflicts, decided `newest-wins`: b changed them later);
//!    2% of the baseline's source changed;
//! 3. the one-way incremental run (the baseline) and the two-way run, each timed;
//! 4. a two-way run with no edits since (it reads back its own writes, which must not count
//!    as changes) and one more; neither may write anything.
//!
//! After each two-way run both sides must hold the same content in the mapped fields, and
//! the edits must have gone where the policy sends them; the bench fails otherwise. Each
//! lockstep run's peak RSS comes from the kernel (`wait4`).
//!
//! With `--perf DIR`, the timed two-way run and the first run without edits run under `perf
//! record -F 299 --call-graph dwarf`, into `DIR/two-way.perf.data` and `DIR/noop.perf.data`
//! (their times then include perf's overhead: profile with it, measure without it). With
//! `--keep`, the databases stay (their names are printed) for profiling by hand.
//!
//! The last line reads `two_way_vs_one_way=<ratio> noop_s=<s> peak_rss_mib=<n>
//! conflicts=<n>` (goals: at most 2, under 0.5 s, 64 MiB; `conflicts` is what the run
//! reported, checked against the records changed on both sides).

use std::path::Path;

use anyhow::{bail, Context, Result};
use sqlx::{Connection, Row};

use crate::bench_pg::{lockstep_report_under, report, DDL, GENERATE, PG};
use crate::bench_verify::copy_pipe;
use crate::{cargo, root};

const USAGE: &str =
    "usage: cargo xtask bench two-way [--rows N] [--state sqlite|postgres] [--perf DIR] [--keep]";

/// The mapped fields (each side's `updated_at` is its own), as one text per row.
const MAPPED_ROW: &str =
    "concat_ws('|', id, email, first_name, last_name, company, phone, lifecycle_stage, score, \
     to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), props::text)";

/// The mapping of both syncs: every column but `updated_at`, under its own name.
const MAPPED: &[&str] = &[
    "id",
    "email",
    "first_name",
    "last_name",
    "company",
    "phone",
    "lifecycle_stage",
    "score",
    "created_at",
    "props",
];

/// What makes a table an application's: `updated_at` kept by the database itself.
const TRIGGER_FUNCTION: &str = "CREATE FUNCTION touch_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END
$$";
const TRIGGER: &str = "CREATE TRIGGER contacts_touch BEFORE INSERT OR UPDATE ON contacts \
     FOR EACH ROW EXECUTE FUNCTION touch_updated_at()";
const CURSOR_INDEX: &str = "CREATE INDEX contacts_cursor ON contacts (updated_at, id)";

/// Side a's edits: 1% of the records.
const A_EDITED: &str = "id % 100 = 1";
const A_EDIT: &str = "UPDATE contacts SET first_name = first_name || ' (a)', score = score + 1";
/// Side b's edits: 1% of the records, of which 0.1% of all records are among side a's.
const B_EDITED: &str = "id % 1000 = 1 OR (id % 100 = 2 AND id % 1000 <> 2)";
const B_EDIT: &str = "UPDATE contacts SET company = company || ' (b)', score = score + 2";
/// The baseline's edits: 2% of the records, on its source.
const ONE_EDITED: &str = "id % 100 IN (1, 2)";

/// Where the lockstep runs keep their state.
#[derive(Clone, Copy, PartialEq, Eq)]
enum StateBackend {
    Sqlite,
    Postgres,
}

/// The scratch databases of one bench run.
struct Names {
    /// Side a of the two-way sync.
    a: String,
    /// Side b of the two-way sync.
    b: String,
    /// The one-way baseline's source.
    one_src: String,
    /// The one-way baseline's destination.
    one_dst: String,
    /// The PostgreSQL state store, with `--state postgres`.
    state: String,
}

impl Names {
    fn all(&self) -> [&str; 5] {
        [&self.a, &self.b, &self.one_src, &self.one_dst, &self.state]
    }
}

pub fn run(args: &[&str]) -> Result<()> {
    let mut rows: i64 = 1_000_000;
    let mut state = StateBackend::Sqlite;
    let mut perf: Option<std::path::PathBuf> = None;
    let mut keep = false;
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
                // At least one record changed on both sides.
                if rows < 1000 {
                    bail!("--rows takes at least 1000 rows, found {rows}; {USAGE}");
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
            "--perf" => {
                let dir = it
                    .next()
                    .with_context(|| format!("--perf takes a directory; {USAGE}"))?;
                let dir = std::path::absolute(dir)?;
                std::fs::create_dir_all(&dir)?;
                perf = Some(dir);
            }
            "--keep" => keep = true,
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
    let names = Names {
        a: format!("lockstep_btwoway_a_{tag}"),
        b: format!("lockstep_btwoway_b_{tag}"),
        one_src: format!("lockstep_btwoway_src_{tag}"),
        one_dst: format!("lockstep_btwoway_dst_{tag}"),
        state: format!("lockstep_btwoway_state_{tag}"),
    };
    let result = rt.block_on(bench(rows, state, &names, perf.as_deref()));
    if keep {
        eprintln!(
            "kept the databases (--keep): {}; the state and config in target/bench-two-way",
            names.all().join(", ")
        );
        return result;
    }
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{PG}/test")).await {
            for n in names.all() {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{n}\" WITH (FORCE)"))
                    .execute(&mut c)
                    .await;
            }
        }
    });
    result
}

/// One timed lockstep run.
struct Timed {
    seconds: f64,
    rss: u64,
    metrics: serde_json::Value,
}

impl Timed {
    fn count(&self, name: &str) -> i64 {
        self.metrics[name].as_i64().unwrap_or(-1)
    }

    fn written(&self) -> i64 {
        self.count("added") + self.count("updated") + self.count("deleted")
    }
}

fn lockstep(dir: &Path, sync: &str) -> Result<Timed> {
    profiled(dir, sync, None)
}

/// [`lockstep`], under `perf record` into `profile` when it is given.
fn profiled(dir: &Path, sync: &str, profile: Option<std::path::PathBuf>) -> Result<Timed> {
    let wrapper: Vec<String> = match &profile {
        Some(out) => [
            "perf",
            "record",
            "-F",
            "299",
            "--call-graph",
            "dwarf",
            "-q",
            "-o",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain([out.display().to_string(), "--".to_owned()])
        .collect(),
        None => Vec::new(),
    };
    let (seconds, rss, report) = lockstep_report_under(dir, sync, &[], &wrapper)?;
    Ok(Timed {
        seconds,
        rss,
        metrics: report["metrics"].clone(),
    })
}

async fn connect(db: &str) -> Result<sqlx::PgConnection> {
    Ok(sqlx::PgConnection::connect(&format!("{PG}/{db}")).await?)
}

async fn execute(c: &mut sqlx::PgConnection, sql: &str) -> Result<u64> {
    Ok(sqlx::query(sql).execute(c).await?.rows_affected())
}

async fn count(c: &mut sqlx::PgConnection, filter: &str) -> Result<i64> {
    Ok(
        sqlx::query(&format!("SELECT count(*) FROM contacts WHERE {filter}"))
            .fetch_one(c)
            .await?
            .get(0),
    )
}

/// Makes the table an application's: the `updated_at` trigger and the cursor index.
async fn as_application_table(c: &mut sqlx::PgConnection) -> Result<()> {
    for sql in [TRIGGER_FUNCTION, TRIGGER, CURSOR_INDEX] {
        execute(c, sql).await?;
    }
    Ok(())
}

async fn bench(rows: i64, state: StateBackend, names: &Names, perf: Option<&Path>) -> Result<()> {
    let profile = |name: &str| perf.map(|d| d.join(format!("{name}.perf.data")));
    let mut admin = sqlx::PgConnection::connect(&format!("{PG}/test"))
        .await
        .context("PostgreSQL at 127.0.0.1:5432")?;
    for n in names.all() {
        execute(&mut admin, &format!("CREATE DATABASE \"{n}\"")).await?;
    }

    eprintln!("generating {rows} contacts…");
    let mut a = connect(&names.a).await?;
    execute(&mut a, DDL).await?;
    sqlx::query(GENERATE).bind(rows).execute(&mut a).await?;
    // The same rows on side b and in the baseline's source; its destination starts empty.
    let mut b = connect(&names.b).await?;
    let mut one_src = connect(&names.one_src).await?;
    let mut one_dst = connect(&names.one_dst).await?;
    for (c, db) in [(&mut b, &names.b), (&mut one_src, &names.one_src)] {
        execute(c, DDL).await?;
        copy_pipe(&names.a, db)?;
    }
    execute(&mut one_dst, DDL).await?;
    for c in [&mut a, &mut b, &mut one_src, &mut one_dst] {
        as_application_table(c).await?;
        execute(c, "VACUUM ANALYZE contacts").await?;
    }

    let dir = root().join("target/bench-two-way");
    std::fs::create_dir_all(&dir)?;
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(dir.join(file));
    }
    let state_url = match state {
        StateBackend::Sqlite => "sqlite://state.db".to_owned(),
        StateBackend::Postgres => format!("{PG}/{}", names.state),
    };
    std::fs::write(dir.join("lockstep.toml"), config(&state_url, names))?;

    // 1. The base ledger: an initial two-way run over identical sides, and the baseline's
    //    first run.
    let initial = lockstep(&dir, "contacts_two_way")?;
    check_same(&mut a, &mut b, "initial two-way run").await?;
    if initial.written() != 0 || initial.count("conflicts") != 0 {
        bail!(
            "the initial two-way run over identical sides wrote or found conflicts: {}",
            initial.metrics
        );
    }
    report(
        "two-way initial",
        2 * rows,
        initial.seconds,
        Some(initial.rss),
    );
    let one_initial = lockstep(&dir, "contacts_one_way")?;
    check_same(&mut one_src, &mut one_dst, "one-way initial run").await?;
    report(
        "one-way initial",
        rows,
        one_initial.seconds,
        Some(one_initial.rss),
    );

    // 2. The edits: side a first, then side b, so that b's are newer where both edited.
    let a_edited = execute(&mut a, &format!("{A_EDIT} WHERE {A_EDITED}")).await? as i64;
    let b_edited = execute(&mut b, &format!("{B_EDIT} WHERE {B_EDITED}")).await? as i64;
    let both = count(&mut a, &format!("({A_EDITED}) AND ({B_EDITED})")).await?;
    let one_edited = execute(&mut one_src, &format!("{A_EDIT} WHERE {ONE_EDITED}")).await? as i64;
    eprintln!(
        "edited: {a_edited} on side a, {b_edited} on side b, {both} of them on both; \
         {one_edited} in the one-way source"
    );

    // 3. The baseline, then the two-way run.
    let one_way = lockstep(&dir, "contacts_one_way")?;
    check_same(&mut one_src, &mut one_dst, "one-way incremental run").await?;
    if one_way.written() != one_edited {
        bail!(
            "the one-way incremental run wrote {} records, expected {one_edited}: {}",
            one_way.written(),
            one_way.metrics
        );
    }
    report(
        "one-way incremental",
        one_edited,
        one_way.seconds,
        Some(one_way.rss),
    );
    let two_way = profiled(&dir, "contacts_two_way", profile("two-way"))?;
    check_same(&mut a, &mut b, "two-way run").await?;
    check_edits(&mut a, &mut b, a_edited - both, b_edited).await?;
    let conflicts = two_way.count("conflicts");
    if conflicts != both {
        bail!(
            "the two-way run reported {conflicts} conflicts, but {both} records were edited on \
             both sides: {}",
            two_way.metrics
        );
    }
    report(
        "two-way run",
        a_edited + b_edited - both,
        two_way.seconds,
        Some(two_way.rss),
    );

    // 4. No edits since: the run reads back what the last one wrote, which is no change.
    let noop = profiled(&dir, "contacts_two_way", profile("noop"))?;
    let steady = lockstep(&dir, "contacts_two_way")?;
    for (run, what) in [(&noop, "first"), (&steady, "second")] {
        if run.written() != 0 || run.count("conflicts") != 0 {
            bail!(
                "the {what} two-way run without edits wrote or found conflicts: {}",
                run.metrics
            );
        }
    }
    check_same(&mut a, &mut b, "two-way runs without edits").await?;
    report("two-way no-op (echoes)", 0, noop.seconds, Some(noop.rss));
    report(
        "two-way no-op (steady)",
        0,
        steady.seconds,
        Some(steady.rss),
    );

    let state_name = match state {
        StateBackend::Sqlite => "SQLite",
        StateBackend::Postgres => "PostgreSQL",
    };
    let ratio = two_way.seconds / one_way.seconds;
    println!(
        "{state_name} state, {rows} records: initial two-way run {:.2} s ({} MiB); \
         two-way run {:.2} s ({} MiB, {conflicts} conflicts) against one-way incremental \
         {:.2} s ({} MiB): {ratio:.2}x; no-op runs {:.2} s and {:.2} s",
        initial.seconds,
        initial.rss >> 20,
        two_way.seconds,
        two_way.rss >> 20,
        one_way.seconds,
        one_way.rss >> 20,
        noop.seconds,
        steady.seconds,
    );
    println!(
        "goals: two_way_vs_one_way <= 2 {}, noop_s < 0.5 {}, peak_rss_mib <= 64 {}",
        verdict(ratio <= 2.0),
        verdict(noop.seconds < 0.5),
        verdict(two_way.rss >> 20 <= 64),
    );
    println!(
        "two_way_vs_one_way={ratio:.2} noop_s={:.2} peak_rss_mib={} conflicts={conflicts}",
        noop.seconds,
        two_way.rss >> 20
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "NOT met"
    }
}

/// Fails unless both tables hold the same records in the mapped fields.
async fn check_same(
    a: &mut sqlx::PgConnection,
    b: &mut sqlx::PgConnection,
    what: &str,
) -> Result<()> {
    crate::bench_pg::check_equal_rows(a, b, MAPPED_ROW, what).await
}

/// Fails unless each side's edits reached the other as the policy says: side a's where only
/// a edited (`a_only` records), side b's everywhere b edited (`b_edited`, the conflicts
/// included, since b's edits are the newer).
async fn check_edits(
    a: &mut sqlx::PgConnection,
    b: &mut sqlx::PgConnection,
    a_only: i64,
    b_edited: i64,
) -> Result<()> {
    for (c, side) in [(a, "a"), (b, "b")] {
        let from_a = count(c, "first_name LIKE '% (a)'").await?;
        let from_b = count(c, "company LIKE '% (b)'").await?;
        if (from_a, from_b) != (a_only, b_edited) {
            bail!(
                "two-way run: side {side} holds {from_a} records with side a's edit and \
                 {from_b} with side b's, expected {a_only} and {b_edited}"
            );
        }
    }
    Ok(())
}

fn config(state_url: &str, names: &Names) -> String {
    let Names {
        a,
        b,
        one_src,
        one_dst,
        ..
    } = names;
    let fields: String = MAPPED.iter().map(|f| format!("{f} = \"{f}\"\n")).collect();
    format!(
        r#"[state]
url = "{state_url}"

[connections.a]
connector = "postgres"
config = {{ url = "{PG}/{a}" }}

[connections.b]
connector = "postgres"
config = {{ url = "{PG}/{b}" }}

[connections.one_src]
connector = "postgres"
config = {{ url = "{PG}/{one_src}" }}

[connections.one_dst]
connector = "postgres"
config = {{ url = "{PG}/{one_dst}" }}

# Side a is the source, side b the destination; each side's updated_at is its own (its
# cursor and modification time), not mapped.
[syncs.contacts_two_way]
source = "a.contacts"
destination = "b.contacts"
mode = "two-way"
cursor = "updated_at"
key = ["id"]

[syncs.contacts_two_way.fields]
{fields}
[syncs.contacts_two_way.two_way]
policy = "newest-wins"
b_cursor = "updated_at"

# The baseline: a one-way incremental sync of the same table and mapping, the ledger on.
[syncs.contacts_one_way]
source = "one_src.contacts"
destination = "one_dst.contacts"
mode = "incremental"
cursor = "updated_at"
key = ["id"]

[syncs.contacts_one_way.fields]
{fields}"#
    )
}
