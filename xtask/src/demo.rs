//! `cargo xtask demo`: the quickstart. Two SQLite databases stand in for a CRM and an
//! email-marketing tool with different column names; lockstep syncs one into the other,
//! then a few rows change and an incremental run carries only those.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::Row;

use crate::{cargo, root};

const CONFIG: &str = r#"# The quickstart's config: a CRM's contacts into a marketing tool's subscribers.
[state]
url = "sqlite://state.db"

[connections.crm]
connector = "sqlite"
config = { path = "crm.db" }

[connections.marketing]
connector = "sqlite"
config = { path = "marketing.db" }

[syncs.contacts_to_marketing]
source = "crm.contacts"
destination = "marketing.subscribers"
mode = "incremental"
cursor = "updated_at"
key = ["contact_id"]
batch_size = 250

# destination field = source field
[syncs.contacts_to_marketing.fields]
contact_id = "id"
email_address = "email"
given_name = "first_name"
family_name = "last_name"
organisation = "company"
stage = "lifecycle_stage"
lead_score = "score"
last_changed = "updated_at"
"#;

const CONTACTS: i64 = 1000;

pub fn run() -> Result<()> {
    cargo(&[
        "build",
        "-p",
        "lockstep-cli",
        "-p",
        "lockstep-connector-sqlite",
    ])?;
    let dir = root().join("target/demo");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("lockstep.toml"), CONFIG)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let crm = dir.join("crm.db");
    rt.block_on(create_crm(&crm))?;
    println!(
        "\nCreated {} with {CONTACTS} contacts, and an empty marketing.db.",
        crm.display()
    );

    lockstep(&dir, &["validate"])?;
    lockstep(&dir, &["connectors", "list"])?;
    println!("\n== First run: everything is new ==");
    lockstep(&dir, &["run", "contacts_to_marketing"])?;

    println!("\n== In the CRM, 5 contacts change and 3 are created ==");
    rt.block_on(change_crm(&crm))?;
    println!("\n== Second run: only the changes travel ==");
    lockstep(&dir, &["run", "contacts_to_marketing"])?;
    println!("\n== A run with nothing new ==");
    lockstep(&dir, &["run", "contacts_to_marketing"])?;
    lockstep(&dir, &["runs"])?;
    rt.block_on(show_marketing(&dir.join("marketing.db")))?;
    println!(
        "\nThe demo lives in {}: try `target/debug/lockstep --config {}/lockstep.toml runs`.",
        dir.display(),
        dir.display()
    );
    Ok(())
}

fn lockstep(dir: &Path, args: &[&str]) -> Result<()> {
    let bin = root().join("target/debug/lockstep");
    println!("\n$ lockstep {}", args.join(" "));
    let status = Command::new(&bin)
        .args(["--config", "lockstep.toml"])
        .args(args)
        .current_dir(dir)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("`lockstep {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

async fn open(path: &Path) -> Result<SqlitePool> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    Ok(SqlitePool::connect_with(options).await?)
}

async fn create_crm(path: &Path) -> Result<()> {
    let pool = open(path).await?;
    sqlx::query(
        "CREATE TABLE contacts (
            id INTEGER PRIMARY KEY,
            email TEXT NOT NULL,
            first_name TEXT,
            last_name TEXT,
            company TEXT,
            lifecycle_stage TEXT,
            score INTEGER,
            updated_at TIMESTAMP NOT NULL
        )",
    )
    .execute(&pool)
    .await?;
    let first = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
    ];
    let last = [
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    ];
    let companies = ["Acme", "Globex", "Initech", "Umbrella", "Hooli"];
    let stages = ["lead", "subscriber", "customer", "evangelist"];
    let mut tx = pool.begin().await?;
    for id in 1..=CONTACTS {
        let i = id as usize;
        sqlx::query("INSERT INTO contacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(id)
            .bind(
                format!("{}.{}{}@example.com", first[i % 8], last[(i / 8) % 8], id).to_lowercase(),
            )
            .bind(first[i % 8])
            .bind(last[(i / 8) % 8])
            .bind(companies[i % 5])
            .bind(stages[i % 4])
            .bind((id * 37) % 100)
            // Several contacts share each timestamp, as real systems' clocks do.
            .bind(format!("2026-01-01 09:{:02}:00", id / 20))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    pool.close().await;
    Ok(())
}

async fn change_crm(path: &Path) -> Result<()> {
    let pool = open(path).await?;
    sqlx::query(
        "UPDATE contacts SET lifecycle_stage = 'customer', score = score + 10,
         updated_at = '2026-02-01 10:00:00' WHERE id IN (3, 141, 592, 653, 999)",
    )
    .execute(&pool)
    .await?;
    for (id, email) in [
        (1001, "new.one@example.com"),
        (1002, "new.two@example.com"),
        (1003, "new.three@example.com"),
    ] {
        sqlx::query(
            "INSERT INTO contacts VALUES (?, ?, 'New', 'Contact', 'Acme', 'lead', 0, '2026-02-01 10:05:00')",
        )
        .bind(id)
        .bind(email)
        .execute(&pool)
        .await?;
    }
    pool.close().await;
    Ok(())
}

async fn show_marketing(path: &Path) -> Result<()> {
    let pool = open(path).await?;
    let count: i64 = sqlx::query("SELECT count(*) FROM subscribers")
        .fetch_one(&pool)
        .await?
        .get(0);
    println!("\nmarketing.db has {count} subscribers; the ones that changed:");
    let rows = sqlx::query(
        "SELECT contact_id, email_address, given_name, family_name, stage, lead_score
         FROM subscribers WHERE contact_id IN (3, 141, 1001) ORDER BY contact_id",
    )
    .fetch_all(&pool)
    .await?;
    for row in rows {
        println!(
            "  {:>5}  {:<32} {:<8} {:<10} {:<10} {}",
            row.get::<i64, _>(0),
            row.get::<String, _>(1),
            row.get::<Option<String>, _>(2).unwrap_or_default(),
            row.get::<Option<String>, _>(3).unwrap_or_default(),
            row.get::<Option<String>, _>(4).unwrap_or_default(),
            row.get::<Option<i64>, _>(5).unwrap_or_default(),
        );
    }
    pool.close().await;
    Ok(())
}
