//! `lockstep rejects retry` writes the current source version of a rejected record, never the
//! row stored when it was rejected; a later run that writes a newer version of a key resolves
//! that key's pending rejects; and `plan` shows the destination's before-values on database
//! destinations. Each scenario runs on real systems: SQLite, PostgreSQL, and MariaDB as the
//! source.

use std::path::{Path, PathBuf};

use lockstep_e2e::{
    block_on, lockstep, mysql_database, plugin_library, postgres_database, run, TempDatabase,
};
use sqlx::Connection;

/// One side of a sync: a database holding an `orders` table.
enum Side {
    Sqlite(PathBuf),
    Postgres(TempDatabase),
    Mariadb(TempDatabase),
}

impl Side {
    fn connection_toml(&self, name: &str) -> String {
        let (connector, config) = match self {
            Side::Postgres(db) => ("postgres", format!("url = \"{}\"", db.url)),
            Side::Mariadb(db) => ("mysql", format!("url = \"{}\"", db.url)),
            Side::Sqlite(p) => ("sqlite", format!("path = \"{}\"", p.display())),
        };
        format!("[connections.{name}]\nconnector = \"{connector}\"\nconfig = {{ {config} }}\n\n")
    }

    fn exec(&self, statements: &[&str]) {
        block_on(async {
            macro_rules! each {
                ($c:expr) => {{
                    let mut c = $c;
                    for s in statements {
                        sqlx::query(s)
                            .execute(&mut c)
                            .await
                            .unwrap_or_else(|e| panic!("{s}: {e}"));
                    }
                }};
            }
            match self {
                Side::Postgres(db) => each!(sqlx::PgConnection::connect(&db.url).await.unwrap()),
                Side::Mariadb(db) => each!(sqlx::MySqlConnection::connect(&db.url).await.unwrap()),
                Side::Sqlite(p) => each!(sqlx::SqliteConnection::connect_with(
                    &sqlx::sqlite::SqliteConnectOptions::new()
                        .filename(p)
                        .create_if_missing(true)
                )
                .await
                .unwrap()),
            }
        })
    }

    /// The `qty` of every row of `orders`, by id.
    fn quantities(&self) -> Vec<(i64, i64)> {
        const QUERY: &str =
            "SELECT CAST(id AS BIGINT), CAST(qty AS BIGINT) FROM orders ORDER BY id";
        block_on(async {
            match self {
                Side::Postgres(db) => {
                    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
                    sqlx::query_as(QUERY).fetch_all(&mut c).await.unwrap()
                }
                Side::Sqlite(p) => {
                    let opts = sqlx::sqlite::SqliteConnectOptions::new().filename(p);
                    let mut c = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
                    sqlx::query_as(QUERY).fetch_all(&mut c).await.unwrap()
                }
                Side::Mariadb(_) => unreachable!("MariaDB is only a source here"),
            }
        })
    }

    /// Creates the source `orders` with ids 1 to 5; 2, 3 and 4 have negative quantities.
    fn create_source(&self) {
        let timestamp = match self {
            // MariaDB gives a first `TIMESTAMP NOT NULL` column an automatic update.
            Side::Mariadb(_) => "DATETIME",
            _ => "TIMESTAMP",
        };
        self.exec(&[
            &format!(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER NOT NULL, \
                 updated_at {timestamp} NOT NULL)"
            ),
            "INSERT INTO orders (id, qty, updated_at) VALUES (1, 1, '2026-01-01 00:00:00'), \
             (2, -2, '2026-01-01 00:00:00'), (3, -3, '2026-01-01 00:00:00'), \
             (4, -4, '2026-01-01 00:00:00'), (5, 5, '2026-01-01 00:00:00')",
        ]);
    }

    /// Creates the destination `orders`, which refuses negative quantities.
    fn create_refusing_destination(&self) {
        self.exec(&["CREATE TABLE orders (id INTEGER PRIMARY KEY, \
                     qty INTEGER CONSTRAINT qty_positive CHECK (qty >= 0))"]);
    }

    /// Makes the destination accept negative quantities, keeping its rows.
    fn stop_refusing(&self) {
        match self {
            Side::Sqlite(_) => self.exec(&[
                "ALTER TABLE orders RENAME TO refusing",
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty INTEGER)",
                "INSERT INTO orders SELECT id, qty FROM refusing",
                "DROP TABLE refusing",
            ]),
            _ => self.exec(&["ALTER TABLE orders DROP CONSTRAINT qty_positive"]),
        }
    }
}

fn write_config(dir: &Path, source: &Side, destination: &Side) {
    let text = format!(
        "{}{}[syncs.orders]\nsource = \"src.orders\"\ndestination = \"dst.orders\"\n\
         mode = \"incremental\"\ncursor = \"updated_at\"\nmax_rejected = 10\n\
         [syncs.orders.fields]\nid = \"id\"\nqty = \"qty\"\n",
        source.connection_toml("src"),
        destination.connection_toml("dst"),
    );
    std::fs::write(dir.join("lockstep.toml"), text).unwrap();
}

/// `lockstep ARGS --output json`: whether it succeeded, and its JSON.
fn json(dir: &Path, args: &[&str]) -> (bool, serde_json::Value) {
    let (out, stdout, stderr) = run(lockstep(dir).args(args).args(["--output", "json"]));
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.success(), value)
}

fn counts(report: &serde_json::Value, names: &[&str]) -> Vec<u64> {
    names
        .iter()
        .map(|n| report["metrics"][n].as_u64().unwrap_or(u64::MAX))
        .collect()
}

fn pending_keys(dir: &Path) -> Vec<String> {
    let (ok, listed) = json(dir, &["rejects", "list", "orders"]);
    assert!(ok, "{listed}");
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["key"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Records are refused by the destination; one is fixed in the source and synced by a run,
/// another is changed in the source without a run, a third is deleted from the source. The
/// run resolves the first's reject, and the retry writes the second's current value and
/// resolves the third without writing it; a later run finds nothing stale.
fn retry_writes_the_current_source_version(source: Side, destination: Side, dir: &Path) {
    source.create_source();
    destination.create_refusing_destination();
    write_config(dir, &source, &destination);

    let (ok, first) = json(dir, &["run", "orders"]);
    assert!(ok, "{first}");
    assert_eq!(counts(&first, &["added", "rejected"]), [2, 3], "{first}");

    // Record 2 is fixed in the source and synced by a normal run: its reject is resolved.
    source.exec(&["UPDATE orders SET qty = 20, updated_at = '2026-02-01 00:00:00' WHERE id = 2"]);
    let (ok, second) = json(dir, &["run", "orders"]);
    assert!(ok, "{second}");
    assert_eq!(counts(&second, &["added", "rejected"]), [1, 0], "{second}");
    assert_eq!(pending_keys(dir), ["[4]", "[3]"]);

    // Record 3 changes without a run; record 4 leaves the source; the destination is fixed.
    source.exec(&[
        "UPDATE orders SET qty = 30, updated_at = '2026-03-01 00:00:00' WHERE id = 3",
        "DELETE FROM orders WHERE id = 4",
    ]);
    destination.stop_refusing();
    let (out, retried, stderr) = run(lockstep(dir).args(["rejects", "retry", "orders"]));
    assert!(out.status.success(), "{retried}\n{stderr}");
    assert!(
        retried.contains("1 succeeded, 0 failed again, 1 no longer in the source"),
        "{retried}"
    );
    assert_eq!(
        destination.quantities(),
        [(1, 1), (2, 20), (3, 30), (5, 5)],
        "the destination holds each record's newest value, and nothing the source deleted"
    );
    assert_eq!(pending_keys(dir), Vec::<String>::new());

    // The retry recorded what it wrote: the run that reads record 3's change finds it
    // unchanged, and nothing stale is left for later runs to miss.
    let (ok, third) = json(dir, &["run", "orders"]);
    assert!(ok, "{third}");
    assert_eq!(
        counts(&third, &["read", "added", "updated", "unchanged"]),
        [1, 0, 0, 1],
        "{third}"
    );
}

/// `plan` reads the destination's current values by key and shows them as before-values.
fn plan_shows_before_values(source: &Side, dir: &Path) {
    source.exec(&["UPDATE orders SET qty = 50, updated_at = '2026-04-01 00:00:00' WHERE id = 5"]);
    let (ok, plan) = json(dir, &["plan", "orders"]);
    assert!(ok, "{plan}");
    assert_eq!(
        plan["updates"],
        serde_json::json!([{"key": "[5]", "changes": [{"field": "qty", "before": 5, "after": 50}]}]),
        "{plan}"
    );
    assert_eq!(plan["notes"], serde_json::json!([]), "{plan}");
}

#[test]
fn retry_writes_the_current_version_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    retry_writes_the_current_source_version(
        Side::Sqlite(d.join("src.db")),
        Side::Sqlite(d.join("dst.db")),
        d,
    );
}

#[test]
fn retry_writes_the_current_version_postgres() {
    let (Some(src), Some(dst)) = (
        postgres_database("retry_src"),
        postgres_database("retry_dst"),
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    retry_writes_the_current_source_version(Side::Postgres(src), Side::Postgres(dst), d);
}

#[test]
fn retry_writes_the_current_version_mariadb_source() {
    let (Some(src), Some(dst)) = (mysql_database("retry_src"), postgres_database("retry_dst"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    retry_writes_the_current_source_version(Side::Mariadb(src), Side::Postgres(dst), dir.path());
}

#[test]
fn plan_shows_before_values_from_postgres() {
    let (Some(src), Some(dst)) = (postgres_database("plan_src"), postgres_database("plan_dst"))
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, destination) = (Side::Postgres(src), Side::Postgres(dst));
    source.create_source();
    source.exec(&["UPDATE orders SET qty = 0 WHERE qty < 0"]);
    write_config(d, &source, &destination);
    let (ok, first) = json(d, &["run", "orders"]);
    assert!(ok, "{first}");
    plan_shows_before_values(&source, d);
}

#[test]
fn plan_shows_before_values_from_mariadb() {
    let (Some(src), Some(dst)) = (mysql_database("plan_src"), mysql_database("plan_dst")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, destination) = (Side::Mariadb(src), Side::Mariadb(dst));
    source.create_source();
    source.exec(&["UPDATE orders SET qty = 0 WHERE qty < 0"]);
    write_config(d, &source, &destination);
    let (ok, first) = json(d, &["run", "orders"]);
    assert!(ok, "{first}");
    plan_shows_before_values(&source, d);
}

/// A source without `read-by-keys` cannot give a record's current version: the retry is
/// refused, says why and what to do, and leaves the rejected record pending.
#[test]
fn retry_is_refused_for_a_source_that_cannot_read_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The panicky test plugin's source offers `items` (ids 1 to 3; 3 has no name) and no
    // read-by-keys.
    std::fs::create_dir_all(d.join("plugins")).unwrap();
    std::fs::copy(
        plugin_library("lockstep_testplugin_panicky"),
        d.join("plugins").join(format!(
            "{}lockstep_connector_panicky{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        )),
    )
    .unwrap();
    let destination = Side::Sqlite(d.join("dst.db"));
    destination.exec(&["CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"]);
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            "[connectors]\npaths = [\"plugins\"]\n\n[connections.src]\nconnector = \"panicky\"\n\n\
             {}[syncs.items]\nsource = \"src.items\"\ndestination = \"dst.items\"\n\
             max_rejected = 5\n",
            destination.connection_toml("dst")
        ),
    )
    .unwrap();
    let (ok, first) = json(d, &["run", "items"]);
    assert!(ok, "{first}");
    assert_eq!(counts(&first, &["added", "rejected"]), [2, 1], "{first}");

    let (out, stdout, stderr) = run(lockstep(d).args(["rejects", "retry", "items"]));
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("`panicky`")
            && stderr.contains("`read-by-keys`")
            && stderr.contains("nothing was retried"),
        "{stderr}"
    );
    let (ok, listed) = json(d, &["rejects", "list", "items"]);
    assert!(ok, "{listed}");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["retried"], serde_json::Value::Null, "{listed}");
}

/// A record the mapping rejects (in a field other than the key) keeps its key, so the run
/// that later writes a fixed version of it resolves the reject.
#[test]
fn a_run_that_writes_a_fixed_record_resolves_its_mapping_reject() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (source, destination) = (
        Side::Sqlite(d.join("src.db")),
        Side::Sqlite(d.join("dst.db")),
    );
    source.exec(&[
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, qty TEXT, updated_at TIMESTAMP NOT NULL)",
        "INSERT INTO orders VALUES (1, '1', '2026-01-01 00:00:00'), \
         (2, 'two', '2026-01-01 00:00:00'), (3, '3', '2026-01-01 00:00:00')",
    ]);
    std::fs::write(
        d.join("lockstep.toml"),
        format!(
            "{}{}[syncs.orders]\nsource = \"src.orders\"\ndestination = \"dst.orders\"\n\
             mode = \"incremental\"\ncursor = \"updated_at\"\nmax_rejected = 5\n\
             [syncs.orders.fields]\nid = \"id\"\nqty = {{ from = \"qty\", cast = \"int64\" }}\n",
            source.connection_toml("src"),
            destination.connection_toml("dst"),
        ),
    )
    .unwrap();
    let (ok, first) = json(d, &["run", "orders"]);
    assert!(ok, "{first}");
    assert_eq!(counts(&first, &["added", "rejected"]), [2, 1], "{first}");
    assert_eq!(pending_keys(d), ["[2]"]);

    source.exec(&["UPDATE orders SET qty = '2', updated_at = '2026-02-01 00:00:00' WHERE id = 2"]);
    let (ok, second) = json(d, &["run", "orders"]);
    assert!(ok, "{second}");
    assert_eq!(counts(&second, &["added", "rejected"]), [1, 0], "{second}");
    assert_eq!(pending_keys(d), Vec::<String>::new());
    assert_eq!(destination.quantities(), [(1, 1), (2, 2), (3, 3)]);
}
