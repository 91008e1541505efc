//! Helpers for the end-to-end tests: where the built binary and plugins are, scratch
//! directories, and running `lockstep` as a person would.
//!
//! The tests expect `cargo build --workspace` to have run first (`cargo xtask test` does it),
//! so that the binary and every plugin in `target/<profile>/` are current.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lockstep_test_support::live_db::{LiveDb, Server};

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_owned()
}

/// The directory holding the built binary and plugins (`target/debug` unless
/// `LOCKSTEP_TARGET_DIR` says otherwise).
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LOCKSTEP_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("debug")
}

/// The built `lockstep` binary; panics with instructions when it is missing.
pub fn lockstep_bin() -> PathBuf {
    let bin = target_dir().join(format!("lockstep{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first (cargo xtask test does it)",
        bin.display()
    );
    bin
}

/// The path of a plugin library built in the workspace, by crate name
/// (`lockstep_connector_sqlite`).
pub fn plugin_library(lib_name: &str) -> PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        lib_name,
        std::env::consts::DLL_SUFFIX
    );
    let path = target_dir().join(file);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` first (cargo xtask test does it)",
        path.display()
    );
    path
}

/// A `lockstep` command that runs in `dir`, with plugins found only in the build directory
/// and nothing inherited that could change its behaviour.
pub fn lockstep(dir: &Path) -> Command {
    let mut cmd = Command::new(lockstep_bin());
    cmd.current_dir(dir)
        .env_remove("LOCKSTEP_CONNECTOR_PATH")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1");
    cmd
}

/// Runs a command and returns its output, with stdout and stderr as text for messages.
pub fn run(cmd: &mut Command) -> (Output, String, String) {
    let output = cmd.output().expect("the lockstep binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// Whether the tests run in CI (`CI=true` or `CI=1`), where a missing service is a failure,
/// not a skip.
pub use lockstep_test_support::skip::in_ci;

/// Reports a missing service: fails under CI, otherwise prints a loud notice, records the
/// test as skipped (see `lockstep_test_support::skip`) and returns false so the caller can
/// return early.
#[track_caller]
pub fn service_available(name: &str, error: impl std::fmt::Display) -> bool {
    lockstep_test_support::skip::skip_or_fail(format!("{name} is not reachable ({error})"));
    false
}

/// A database created for one test and dropped when the guard goes: the live-database
/// fixture of `lockstep-test-support` ([`LiveDb`]), named `lockstep_e2e_<prefix>_<pid>_<n>`,
/// with its URL and name at hand for building configs.
pub struct TempDatabase {
    /// A URL that reaches the database.
    pub url: String,
    pub name: String,
    /// Drops the database when the guard goes.
    _live: LiveDb,
}

impl TempDatabase {
    fn create(server: Server, prefix: &str) -> Option<TempDatabase> {
        let live = LiveDb::create(server, &format!("lockstep_e2e_{prefix}"))?;
        Some(TempDatabase {
            url: live.url(),
            name: live.name().to_owned(),
            _live: live,
        })
    }
}

/// Runs a future to completion on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(f)
}

/// A fresh PostgreSQL database, or `None` (after a notice) when the server is not reachable
/// outside CI.
pub fn postgres_database(prefix: &str) -> Option<TempDatabase> {
    TempDatabase::create(Server::Postgres, prefix)
}

/// A fresh MariaDB/MySQL database, or `None` (after a notice) when the server is not
/// reachable outside CI.
pub fn mysql_database(prefix: &str) -> Option<TempDatabase> {
    TempDatabase::create(Server::MySql, prefix)
}

/// A pool on the SQLite file at `path`, created when missing.
pub async fn sqlite_pool(path: &Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true);
    sqlx::SqlitePool::connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `statements` in order on the SQLite file at `db`.
pub fn sqlite_exec(db: &Path, statements: &[&str]) {
    block_on(async {
        let pool = sqlite_pool(db).await;
        for s in statements {
            sqlx::query(s)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    });
}

/// The first column of the first row of `query` on the SQLite file at `db`, as an integer.
pub fn sqlite_count(db: &Path, query: &str) -> i64 {
    use sqlx::Row;
    block_on(async {
        let pool = sqlite_pool(db).await;
        let n: i64 = sqlx::query(query)
            .fetch_one(&pool)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"))
            .get(0);
        pool.close().await;
        n
    })
}

/// Runs a prepared `lockstep … --output json` command: whether it succeeded, the JSON report
/// it printed on stdout, and its stderr. Panics, showing both streams, when stdout is not
/// JSON.
pub fn run_report(cmd: &mut Command) -> (bool, serde_json::Value, String) {
    let (out, stdout, stderr) = run(cmd);
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}\n{stderr}"));
    (out.status.success(), value, stderr)
}

/// (read, added, updated, unchanged, deleted) from a run's JSON report; a missing metric
/// counts as 0.
pub fn counts(report: &serde_json::Value) -> [u64; 5] {
    ["read", "added", "updated", "unchanged", "deleted"]
        .map(|k| report["metrics"][k].as_u64().unwrap_or(0))
}

/// Every row `query` returns from the PostgreSQL database at `url`, each column as text (cast
/// in the query where needed); panics naming the query when it fails.
pub fn pg_rows(url: &str, query: &str) -> Vec<Vec<Option<String>>> {
    use sqlx::{Connection, Row};
    block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        let rows = sqlx::query(query)
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{query}: {e}"));
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<Option<String>, _>(i))
                    .collect()
            })
            .collect()
    })
}

/// Runs `statements` in order on the PostgreSQL database at `url`, on one connection; panics
/// naming the statement that fails.
pub fn pg_exec(url: &str, statements: &[&str]) {
    use sqlx::Connection;
    block_on(async {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        for s in statements {
            sqlx::query(s)
                .execute(&mut c)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
    })
}
