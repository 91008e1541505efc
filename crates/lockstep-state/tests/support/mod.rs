//! Runs one test body against each backend: SQLite in a temporary directory, and PostgreSQL in
//! a database created for the test and dropped after it.
//!
//! PostgreSQL is found at `LOCKSTEP_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`). When it is unreachable the PostgreSQL variants
//! fail if `CI=true` (or `CI=1`), and otherwise print a notice and are recorded as skipped
//! (`lockstep_test_support::skip`).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockstep_state::{open, StateStore};
use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// Generates, for each named test body, one test per backend: `sqlite::<name>` and
/// `postgres::<name>`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::support::on_sqlite(super::$name).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    $crate::support::on_postgres(super::$name).await;
                }
            )*
        }
    };
}

/// Runs `body` on a fresh SQLite store in a directory that does not exist yet (so that
/// opening has to create it).
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(Box<dyn StateStore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let url = format!(
        "sqlite://{}",
        dir.path().join("not/yet/there/state.db").display()
    );
    let store = open(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
    let outcome = tokio::spawn(body(store)).await;
    drop(dir);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Runs `body` on a fresh PostgreSQL store in its own database, dropped afterwards even when
/// `body` panics.
pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(Box<dyn StateStore>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let base = postgres_url();
    let Some(mut admin) = admin_connection(&base).await else {
        return;
    };
    let name = format!(
        "lockstep_state_test_{}_{}",
        std::process::id(),
        NEXT_DATABASE.fetch_add(1, Ordering::Relaxed)
    );
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .expect("cannot drop a leftover test database");
    admin
        .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e}"));
    let url = with_database(&base, &name);
    let outcome = match open(&url).await {
        Ok(store) => tokio::spawn(body(store)).await,
        Err(e) => tokio::spawn(async move { panic!("cannot open {url}: {e}") }).await,
    };
    // `FORCE` ends the connections the dropped store's pool may still be closing.
    admin
        .execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str())
        .await
        .unwrap_or_else(|e| panic!("cannot drop the test database {name}: {e}"));
    let _ = admin.close().await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// The PostgreSQL server the tests use.
pub fn postgres_url() -> String {
    std::env::var("LOCKSTEP_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES_URL.into())
}

/// Whether PostgreSQL answers; when it does not, fails under `CI=true` and otherwise warns.
pub async fn postgres_available() -> bool {
    match admin_connection(&postgres_url()).await {
        Some(conn) => {
            let _ = conn.close().await;
            true
        }
        None => false,
    }
}

async fn admin_connection(url: &str) -> Option<PgConnection> {
    let shown = lockstep_state::redact_url(url);
    let why = match tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(url)).await {
        Ok(Ok(conn)) => return Some(conn),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 seconds".to_owned(),
    };
    lockstep_test_support::skip::skip_or_fail(format!(
        "PostgreSQL at {shown} is unreachable ({why}), so the PostgreSQL variant of this test \
         did not run; start PostgreSQL or point LOCKSTEP_TEST_POSTGRES_URL at one"
    ));
    None
}

/// `base` with its database name replaced by `name`.
fn with_database(base: &str, name: &str) -> String {
    let (before_query, query) = match base.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (base, None),
    };
    let scheme_end = before_query.find("://").map_or(0, |i| i + 3);
    let server = match before_query[scheme_end..].find('/') {
        Some(slash) => &before_query[..scheme_end + slash],
        None => before_query,
    };
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}
