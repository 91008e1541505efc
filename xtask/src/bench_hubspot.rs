//! `cargo xtask bench hubspot [--contacts N]`: how much of HubSpot's request budget a sync
//! uses, against the in-repo fake HubSpot limited to 100 requests per 10 seconds (the
//! documented private-app limit).
//!
//! It builds the release `lockstep` binary and the PostgreSQL and HubSpot plugins, starts the
//! fake in this process, generates N contacts (20,000 by default) in a scratch PostgreSQL
//! database, then runs two syncs with the release binary: (a) PostgreSQL into HubSpot
//! (batch upserts by email), (b) HubSpot back into an empty table (a full read). Each phase
//! reports its requests, its achieved rate against the allowed one, and the 429s the fake
//! answered after the phase's first 10 seconds (a process starts with a full budget, so a
//! burst in its first window is the budget's own business; after it, a 429 means the client
//! ran faster than the limit). The read-back is checked against the source by count.
//! The last line reads `rate_use=<achieved/allowed> throttled=<n> peak_rss_mib=<n>`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use lockstep_fake_hubspot::{FakeHubSpot, Options};
use sqlx::{Connection, Row};

use crate::{cargo, root};

const PG: &str = "postgres://postgres@127.0.0.1:5432";
const TOKEN_VAR: &str = "LOCKSTEP_BENCH_HUBSPOT_TOKEN";
const TOKEN: &str = "pat-na1-bench-fake-token";
/// The fake's limit: HubSpot's private-app limit.
const LIMIT: (u32, Duration) = (100, Duration::from_secs(10));

pub fn run(args: &[&str]) -> Result<()> {
    let mut contacts: i64 = 20_000;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--contacts" => contacts = it.next().context("--contacts takes a number")?.parse()?,
            other => {
                bail!("unknown argument `{other}`; usage: cargo xtask bench hubspot [--contacts N]")
            }
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
        "lockstep-connector-hubspot",
    ])?;
    // The fake is served by this runtime's worker while the lockstep child runs.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let name = format!("lockstep_bench_hubspot_{}", std::process::id());
    let result = bench(&rt, contacts, &name);
    rt.block_on(async {
        if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{PG}/test")).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    });
    result
}

/// What one phase measured.
struct Phase {
    requests: u64,
    seconds: f64,
    throttled_after_first_window: u64,
    peak_rss: u64,
}

fn bench(rt: &tokio::runtime::Runtime, contacts: i64, name: &str) -> Result<()> {
    let fake = rt.block_on(FakeHubSpot::start(Options {
        token: TOKEN.into(),
        rate_limit: Some(LIMIT),
        search_per_second: Some(5),
        ..Options::default()
    }))?;
    let url = format!("{PG}/{name}");
    rt.block_on(async {
        let mut admin = sqlx::PgConnection::connect(&format!("{PG}/test"))
            .await
            .context("PostgreSQL at 127.0.0.1:5432 (user postgres) is needed")?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        let mut c = sqlx::PgConnection::connect(&url).await?;
        sqlx::query(
            "CREATE TABLE customers (id bigint PRIMARY KEY, email text NOT NULL, \
             first_name text, last_name text, updated_at timestamptz NOT NULL)",
        )
        .execute(&mut c)
        .await?;
        sqlx::query(
            "INSERT INTO customers SELECT g, 'customer' || g || '@example.com', 'First' || g, \
             'Last' || g, timestamptz '2026-01-01' + g * interval '1 second' \
             FROM generate_series(1, $1) g",
        )
        .bind(contacts)
        .execute(&mut c)
        .await?;
        anyhow::Ok(())
    })?;

    let dir = tempfile_dir()?;
    std::fs::write(
        dir.join("lockstep.toml"),
        format!(
            r#"
[state]
url = "sqlite://state.db"

[connections.crm]
connector = "hubspot"
[connections.crm.config]
token_env = "{TOKEN_VAR}"
base_url = "{base}"
rate_limit = {{ requests = {requests}, per_seconds = {seconds} }}
properties = {{ contacts = ["email", "firstname", "lastname"] }}

[connections.pg]
connector = "postgres"
config = {{ url = "{url}" }}

[syncs.to_hubspot]
source = "pg.customers"
destination = "crm.contacts"
mode = "full"
key = ["email"]
batch_size = 1000
[syncs.to_hubspot.fields]
email = "email"
firstname = "first_name"
lastname = "last_name"

[syncs.from_hubspot]
source = "crm.contacts"
destination = "pg.contacts_back"
mode = "full"
key = ["hubspot_id"]
batch_size = 1000
[syncs.from_hubspot.fields]
hubspot_id = "id"
email = "email"
first_name = "firstname"
last_name = "lastname"
"#,
            base = fake.base_url(),
            requests = LIMIT.0,
            seconds = LIMIT.1.as_secs(),
        ),
    )?;

    let allowed = f64::from(LIMIT.0) / LIMIT.1.as_secs_f64();
    eprintln!("{contacts} contacts; the fake allows {allowed} requests per second");
    let write = phase(&fake, &dir, "to_hubspot")?;
    report("postgres -> hubspot", &write, allowed);
    let live = fake
        .records(lockstep_fake_hubspot::ObjectType::Contacts)
        .len() as i64;
    if live != contacts {
        bail!("HubSpot holds {live} contacts after the write, not {contacts}");
    }
    let read = phase(&fake, &dir, "from_hubspot")?;
    report("hubspot -> postgres", &read, allowed);
    let back: i64 = rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url).await?;
        let row = sqlx::query(
            "SELECT count(DISTINCT b.email) FROM contacts_back b JOIN customers c USING (email)",
        )
        .fetch_one(&mut c)
        .await?;
        anyhow::Ok(row.get::<i64, _>(0))
    })?;
    if back != contacts {
        bail!("{back} of the {contacts} contacts came back into PostgreSQL");
    }
    let _ = std::fs::remove_dir_all(&dir);

    let requests = write.requests + read.requests;
    let seconds = write.seconds + read.seconds;
    let rate_use = requests as f64 / seconds.max(1e-9) / allowed;
    println!(
        "rate_use={rate_use:.2} throttled={} peak_rss_mib={}",
        write.throttled_after_first_window + read.throttled_after_first_window,
        write.peak_rss.max(read.peak_rss) / (1024 * 1024)
    );
    Ok(())
}

fn report(what: &str, phase: &Phase, allowed: f64) {
    eprintln!(
        "{what:<20} {:>6} requests in {:>7.2} s  rate_use={:.2}  throttled after 10 s={}  peak_rss_mib={}",
        phase.requests,
        phase.seconds,
        phase.requests as f64 / phase.seconds.max(1e-9) / allowed,
        phase.throttled_after_first_window,
        phase.peak_rss / (1024 * 1024)
    );
}

/// A scratch directory under `target/` for the bench's config and state.
fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = root()
        .join("target")
        .join(format!("bench-hubspot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `lockstep run SYNC` with the release binary and measures the fake's requests and
/// late 429s, the time and the peak RSS.
fn phase(fake: &FakeHubSpot, dir: &Path, sync: &str) -> Result<Phase> {
    let (requests_before, _) = fake.counts();
    // The 429s counted at the end of the phase's first window, sampled by a watcher thread.
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (fake, done) = (fake.clone(), done.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < LIMIT.1 && !done.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            fake.counts().1
        })
    };
    let run = crate::bench_pg::lockstep_with_env(dir, sync, &[(TOKEN_VAR, TOKEN)]);
    done.store(true, Ordering::SeqCst);
    let throttled_at_window_end = watcher.join().expect("the watcher thread");
    let (seconds, peak_rss) = run?;
    let (requests_after, throttled_after) = fake.counts();
    // A run shorter than the window has no "after the first window": its watcher saw the
    // final count, and the difference is zero.
    Ok(Phase {
        requests: requests_after - requests_before,
        seconds,
        throttled_after_first_window: throttled_after - throttled_at_window_end,
        peak_rss,
    })
}
