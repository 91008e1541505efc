//! The PostgreSQL backend: one store shared by several daemons.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::audit::impl_audit_store;
use crate::backend::impl_state_store;
use crate::deletes::impl_pending_delete_store;
use crate::error::{db, Result, StateError};
use crate::ledger;
use crate::sql::LedgerRow;
use crate::two_way::{self, impl_two_way_store, BaseUpsert, ConflictUpdate, NewConflict};
use crate::types::LedgerEntry;
use crate::url::{redact_url, scrub};

/// PostgreSQL's SQLSTATE for a duplicate key.
const UNIQUE_VIOLATION: &str = "23505";

/// How long opening the store waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an operation waits for a free pooled connection (or a new one).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_CONNECTIONS: u32 = 5;

pub(crate) struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` and brings its schema up to date.
    pub(crate) async fn open(url: &str) -> Result<Self> {
        let redacted = redact_url(url);
        let connect_error = |detail: String| StateError::Connect {
            url: redacted.clone(),
            detail: scrub(&detail, url),
        };
        let options = PgConnectOptions::from_str(url).map_err(|e| StateError::InvalidUrl {
            url: redacted.clone(),
            reason: scrub(&e.to_string(), url),
        })?;
        // One direct attempt first, for a precise error: the pool retries refused connections
        // until its timeout and then reports only that it timed out.
        let probe = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| {
                connect_error(format!(
                    "no answer within {} seconds",
                    CONNECT_TIMEOUT.as_secs()
                ))
            })?
            .map_err(|e| connect_error(e.to_string()))?;
        // The probe was only a check; failing to close it politely changes nothing.
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        // Migrations take an advisory lock, so daemons starting together do not race.
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StateError::Migrate {
                url: redacted.clone(),
                detail: scrub(&e.to_string(), url),
            })?;
        tracing::debug!(url = %redacted, "PostgreSQL state store open");
        Ok(PgStore { pool })
    }

    /// The database server's clock, so that daemons on several hosts agree on lease expiry.
    async fn now(&self) -> Result<DateTime<Utc>> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
            .map_err(db("reading the database clock"))
    }

    async fn begin_write(&self) -> Result<Transaction<'static, Postgres>> {
        self.pool
            .begin()
            .await
            .map_err(db("starting a transaction"))
    }

    /// A one-column table, column `"value"`, of the keys in parameter `$n`; for statements
    /// about many keys, which bind them as one parameter made by [`Self::key_list`].
    fn key_list_sql(n: usize) -> String {
        ledger::postgres::key_list_sql(n)
    }

    /// `keys` as the one parameter [`Self::key_list_sql`] reads.
    fn key_list<'k>(keys: impl IntoIterator<Item = &'k str>) -> Vec<&'k str> {
        ledger::postgres::key_list(keys)
    }

    /// The ledger rows of those of `keys` that have one; the keys travel as one array.
    async fn ledger_lookup_chunk(&self, sync: &str, keys: &[String]) -> Result<Vec<LedgerRow>> {
        sqlx::query_as(ledger::postgres::lookup_sql())
            .bind(sync)
            .bind(keys)
            .fetch_all(&self.pool)
            .await
            .map_err(db("looking up ledger entries"))
    }

    /// Upserts `entries` (each key once) in one statement; a missing `synced_at` becomes
    /// `now`. Keys known to be new are inserted without the conflict check, under a savepoint:
    /// should one be present after all, the insert is rolled back and the chunk upserted.
    async fn ledger_upsert_chunk(
        tx: &mut PgConnection,
        sync: &str,
        now: &str,
        entries: &[&LedgerEntry],
        keys_new: bool,
    ) -> Result<()> {
        const OP: &str = "committing a batch";
        let columns = ledger::postgres::columns(entries);
        let statement = |sql| {
            sqlx::query(sql)
                .bind(sync)
                .bind(now)
                .bind(&columns.keys)
                .bind(&columns.dest_keys)
                .bind(&columns.fingerprints)
                .bind(&columns.source_versions)
                .bind(&columns.synced_at)
        };
        if keys_new {
            sqlx::query(r#"SAVEPOINT "ledger_insert""#)
                .execute(&mut *tx)
                .await
                .map_err(db(OP))?;
            match statement(ledger::postgres::insert_sql())
                .execute(&mut *tx)
                .await
            {
                Ok(_) => {
                    sqlx::query(r#"RELEASE SAVEPOINT "ledger_insert""#)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                    return Ok(());
                }
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
                    tracing::warn!(
                        sync,
                        "a ledger key the engine took for new was present; the batch's ledger \
                         rows are upserted instead"
                    );
                    sqlx::query(r#"ROLLBACK TO SAVEPOINT "ledger_insert""#)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                }
                Err(e) => return Err(db(OP)(e)),
            }
        }
        statement(ledger::postgres::upsert_sql())
            .execute(tx)
            .await
            .map_err(db(OP))?;
        Ok(())
    }

    /// Forgets `keys` in one statement.
    async fn ledger_delete_chunk(tx: &mut PgConnection, sync: &str, keys: &[String]) -> Result<()> {
        sqlx::query(ledger::postgres::delete_sql())
            .bind(sync)
            .bind(keys)
            .execute(tx)
            .await
            .map_err(db("committing a batch"))?;
        Ok(())
    }
}

/// The two-way bulk statements (see `two_way.rs`): each batch travels as one array per
/// column.
impl PgStore {
    /// A one-column table, column `"value"`, of the ids in parameter `$n`, bound as one
    /// parameter made by [`Self::id_list`].
    fn id_list_sql(n: usize) -> String {
        two_way::postgres::id_list_sql(n)
    }

    /// `ids` as the one parameter [`Self::id_list_sql`] reads.
    fn id_list(ids: &[i64]) -> &[i64] {
        two_way::postgres::id_list(ids)
    }

    /// Upserts base ledger `rows` (each key once) in one statement, synced at `now`.
    async fn base_upsert_chunk(
        tx: &mut PgConnection,
        sync: &str,
        now: &str,
        rows: &[BaseUpsert<'_>],
    ) -> Result<()> {
        let columns = two_way::postgres::base_columns(rows);
        sqlx::query(two_way::postgres::base_upsert_sql())
            .bind(sync)
            .bind(now)
            .bind(&columns.keys)
            .bind(&columns.bases)
            .bind(&columns.fingerprints_a)
            .bind(&columns.fingerprints_b)
            .execute(tx)
            .await
            .map_err(db("committing a two-way batch"))?;
        Ok(())
    }

    /// Inserts conflicts `rows`, found by `run` at `now`, in one statement.
    async fn conflict_insert_chunk(
        tx: &mut PgConnection,
        sync: &str,
        run: i64,
        now: &str,
        rows: &[NewConflict<'_>],
    ) -> Result<()> {
        let columns = two_way::postgres::conflict_columns(rows);
        sqlx::query(two_way::postgres::conflict_insert_sql())
            .bind(sync)
            .bind(run)
            .bind(now)
            .bind(&columns.keys)
            .bind(&columns.bases)
            .bind(&columns.a)
            .bind(&columns.b)
            .bind(&columns.fields)
            .bind(&columns.policies)
            .bind(&columns.decisions)
            .bind(&columns.resolutions)
            .bind(&columns.resolution_deletes)
            .bind(&columns.statuses)
            .bind(&columns.resolved_by)
            .bind(&columns.resolved_at)
            .execute(tx)
            .await
            .map_err(db("committing a two-way batch"))?;
        Ok(())
    }

    /// Updates open conflicts found again by `run` in one statement.
    async fn conflict_update_chunk(
        tx: &mut PgConnection,
        run: i64,
        rows: &[ConflictUpdate],
    ) -> Result<()> {
        let columns = two_way::postgres::update_columns(rows);
        sqlx::query(two_way::postgres::conflict_update_sql())
            .bind(run)
            .bind(&columns.ids)
            .bind(&columns.a)
            .bind(&columns.b)
            .bind(&columns.fields)
            .execute(tx)
            .await
            .map_err(db("committing a two-way batch"))?;
        Ok(())
    }
}

impl_state_store!(PgStore);
impl_pending_delete_store!(PgStore);
impl_two_way_store!(PgStore);
impl_audit_store!(PgStore);
