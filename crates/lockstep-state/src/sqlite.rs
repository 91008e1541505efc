//! The SQLite backend: the embedded default, one file per installation.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, SqliteConnection, Transaction};

use crate::audit::impl_audit_store;
use crate::backend::impl_state_store;
use crate::deletes::impl_pending_delete_store;
use crate::error::{db, Result, StateError};
use crate::ledger;
use crate::sql::LedgerRow;
use crate::two_way::{self, impl_two_way_store, BaseUpsert, ConflictUpdate, NewConflict};
use crate::types::LedgerEntry;
use crate::url::redact_url;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Each connection's page cache, in SQLite's notation (negative: KiB). SQLite's default is
/// 2,000 KiB; a run's connections filled theirs to 9 MiB between them (heaptrack), while
/// what they read again and again is the ledger B-tree's interior pages (about 300, 1.2 MiB,
/// for two million entries). A batch's scattered ledger pages miss any cache of this size.
const PAGE_CACHE: &str = "-1024";
/// Connections to a file database. SQLite allows one writer at a time; more connections only
/// serve concurrent reads.
const MAX_CONNECTIONS: u32 = 4;

pub(crate) struct SqliteStore {
    pool: SqlitePool,
}

/// Turns SQLite's allocation statistics off, once per process, before the library's first
/// use.
///
/// With statistics on (the library's default), every allocation and free inside SQLite takes
/// one process-wide mutex. sqlx reads a row's values on its worker thread and frees them on
/// the thread that dropped the row, so a run's engine thread and the store's worker thread
/// contend for that mutex on every value: in a two-way run of 19,000 changes this cost a
/// fifth of the process's system CPU (futex waits and wake-ups). Nothing in Lockstep reads the
/// statistics. `sqlite3_config` must run before `sqlite3_initialize` and while no other
/// thread uses the library, so both run here, under a `OnceLock`, before the first connection
/// of the first store; once the library is initialised (by something else in the process)
/// the call is refused and changes nothing, which is only slower.
fn configure_library() {
    static CONFIGURED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    CONFIGURED.get_or_init(|| {
        // SAFETY: `SQLITE_CONFIG_MEMSTATUS` takes one `int` argument, as passed. The call
        // reads and writes SQLite's global configuration, which the `OnceLock` keeps from
        // running twice at once. In Lockstep's programs the state store is SQLite's first
        // user (a connector plugin that uses SQLite links its own copy of the library into
        // its own file); a program that uses SQLite elsewhere too gets `SQLITE_MISUSE` here
        // once the library is initialised, and keeps the statistics.
        let status =
            unsafe { libsqlite3_sys::sqlite3_config(libsqlite3_sys::SQLITE_CONFIG_MEMSTATUS, 0) };
        if status != libsqlite3_sys::SQLITE_OK {
            tracing::debug!(
                status,
                "SQLite was initialised already; its allocation statistics stay on"
            );
        }
        // SAFETY: `sqlite3_initialize` takes no arguments and may be called at any time.
        unsafe { libsqlite3_sys::sqlite3_initialize() };
    });
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, or an in-memory database when `path`
    /// is `None`, and brings its schema up to date.
    pub(crate) async fn open(path: Option<&Path>, url: &str) -> Result<Self> {
        configure_library();
        let redacted = redact_url(url);
        let connect_error = |detail: String| StateError::Connect {
            url: redacted.clone(),
            detail,
        };
        let (options, pool_options) = match path {
            Some(path) => {
                if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(parent).await.map_err(|e| {
                        connect_error(format!(
                            "cannot create the directory `{}`: {e}",
                            parent.display()
                        ))
                    })?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(BUSY_TIMEOUT)
                    .foreign_keys(true)
                    .pragma("cache_size", PAGE_CACHE);
                let pool = SqlitePoolOptions::new().max_connections(MAX_CONNECTIONS);
                (options, pool)
            }
            None => {
                // An in-memory database lives only as long as a connection to it, so the pool
                // keeps exactly one connection for its whole life.
                let options = SqliteConnectOptions::from_str("sqlite::memory:")
                    .map_err(|e| connect_error(e.to_string()))?
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
                (options, pool)
            }
        };
        let pool = pool_options
            .connect_with(options)
            .await
            .map_err(|e| connect_error(e.to_string()))?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StateError::Migrate {
                url: redacted.clone(),
                detail: e.to_string(),
            })?;
        tracing::debug!(url = %redacted, "SQLite state store open");
        Ok(SqliteStore { pool })
    }

    /// The clock of this process: the database is local.
    async fn now(&self) -> Result<DateTime<Utc>> {
        Ok(Utc::now())
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front. A deferred transaction that reads and
    /// then writes can fail with `SQLITE_BUSY` at once, without waiting for the busy timeout.
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db("starting a transaction"))
    }

    /// A one-column table, column `"value"`, of the keys in parameter `$n`; for statements
    /// about many keys, which bind them as one parameter made by [`Self::key_list`].
    fn key_list_sql(n: usize) -> String {
        ledger::sqlite::key_list_sql(n)
    }

    /// `keys` as the one parameter [`Self::key_list_sql`] reads.
    fn key_list<'k>(keys: impl IntoIterator<Item = &'k str>) -> String {
        ledger::sqlite::key_list(keys)
    }

    /// The ledger rows of those of `keys` that have one; the keys travel as one JSON array.
    async fn ledger_lookup_chunk(&self, sync: &str, keys: &[String]) -> Result<Vec<LedgerRow>> {
        sqlx::query_as(ledger::sqlite::lookup_sql())
            .bind(sync)
            .bind(Self::key_list(keys.iter().map(String::as_str)))
            .fetch_all(&self.pool)
            .await
            .map_err(db("looking up ledger entries"))
    }

    /// Upserts `entries` in statements of the prepared sizes; a missing `synced_at` becomes
    /// `now`. Entries without a destination key or a `synced_at` of their own (every entry of
    /// a one-way run) take the compact statements, which bind three values a row. Whether the
    /// keys are known to be new does not matter here: SQLite checks the key once either way.
    async fn ledger_upsert_chunk(
        tx: &mut SqliteConnection,
        sync: &str,
        now: &str,
        entries: &[&LedgerEntry],
        _keys_new: bool,
    ) -> Result<()> {
        let fingerprints: Vec<[u8; 16]> = entries
            .iter()
            .map(|e| e.fingerprint.to_be_bytes())
            .collect();
        let compact = entries
            .iter()
            .all(|e| e.dest_key.is_none() && e.synced_at.is_none());
        let mut start = 0;
        for (rows, sql) in ledger::sqlite::upsert_plan(entries.len(), compact) {
            let mut query = sqlx::query(sql).bind(sync).bind(now);
            for (entry, fingerprint) in entries[start..start + rows]
                .iter()
                .zip(&fingerprints[start..start + rows])
            {
                query = if compact {
                    query
                        .bind(entry.key.as_str())
                        .bind(&fingerprint[..])
                        .bind(entry.source_version.as_deref())
                } else {
                    query
                        .bind(entry.key.as_str())
                        .bind(entry.dest_key.as_deref())
                        .bind(&fingerprint[..])
                        .bind(entry.source_version.as_deref())
                        .bind(entry.synced_at.as_deref())
                };
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(db("committing a batch"))?;
            start += rows;
        }
        Ok(())
    }

    /// Forgets `keys` in one statement.
    async fn ledger_delete_chunk(
        tx: &mut SqliteConnection,
        sync: &str,
        keys: &[String],
    ) -> Result<()> {
        sqlx::query(ledger::sqlite::delete_sql())
            .bind(sync)
            .bind(Self::key_list(keys.iter().map(String::as_str)))
            .execute(tx)
            .await
            .map_err(db("committing a batch"))?;
        Ok(())
    }
}

/// The two-way bulk statements (see `two_way.rs`): each batch travels as one JSON array.
impl SqliteStore {
    /// A one-column table, column `"value"`, of the ids in parameter `$n`, bound as one
    /// parameter made by [`Self::id_list`].
    fn id_list_sql(n: usize) -> String {
        two_way::sqlite::id_list_sql(n)
    }

    /// `ids` as the one parameter [`Self::id_list_sql`] reads.
    fn id_list(ids: &[i64]) -> String {
        two_way::sqlite::id_list(ids)
    }

    /// Upserts base ledger `rows` in one statement, synced at `now`.
    async fn base_upsert_chunk(
        tx: &mut SqliteConnection,
        sync: &str,
        now: &str,
        rows: &[BaseUpsert<'_>],
    ) -> Result<()> {
        sqlx::query(two_way::sqlite::base_upsert_sql())
            .bind(sync)
            .bind(now)
            .bind(two_way::sqlite::base_rows_json(rows))
            .execute(tx)
            .await
            .map_err(db("committing a two-way batch"))?;
        Ok(())
    }

    /// Inserts conflicts `rows`, found by `run` at `now`, in one statement.
    async fn conflict_insert_chunk(
        tx: &mut SqliteConnection,
        sync: &str,
        run: i64,
        now: &str,
        rows: &[NewConflict<'_>],
    ) -> Result<()> {
        sqlx::query(two_way::sqlite::conflict_insert_sql())
            .bind(sync)
            .bind(run)
            .bind(now)
            .bind(two_way::sqlite::conflict_rows_json(rows))
            .execute(tx)
            .await
            .map_err(db("committing a two-way batch"))?;
        Ok(())
    }

    /// Updates open conflicts found again by `run` in one statement.
    async fn conflict_update_chunk(
        tx: &mut SqliteConnection,
        run: i64,
        rows: &[ConflictUpdate],
    ) -> Result<()> {
        sqlx::query(two_way::sqlite::conflict_update_sql())
            .bind(run)
            .bind(two_way::sqlite::conflict_updates_json(rows))
            .execute(tx)
            .await
            .map_err(db("committing a two-way batch"))?;
        Ok(())
    }
}

impl_state_store!(SqliteStore);
impl_pending_delete_store!(SqliteStore);
impl_two_way_store!(SqliteStore);
impl_audit_store!(SqliteStore);

#[cfg(test)]
mod tests {
    use super::*;

    /// The store turns SQLite's allocation statistics off before first use: SQLite then
    /// counts no memory in use, where with them on an open database holds some.
    #[tokio::test]
    async fn sqlite_keeps_no_allocation_statistics() {
        let store = SqliteStore::open(None, "sqlite::memory:").await.unwrap();
        sqlx::query("CREATE TABLE t (x TEXT)")
            .execute(&store.pool)
            .await
            .unwrap();
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
             INSERT INTO t SELECT hex(randomblob(100)) FROM n",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        // SAFETY: `sqlite3_memory_used` takes no arguments and may be called at any time.
        let used = unsafe { libsqlite3_sys::sqlite3_memory_used() };
        assert_eq!(used, 0, "SQLite keeps allocation statistics");
    }
}
