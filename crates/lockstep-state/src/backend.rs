//! The [`StateStore`](crate::StateStore) implementation shared by both backends.
//!
//! sqlx's generic bounds over `Database` are unwieldy, and the SQL is identical on both
//! backends, so the implementation is written once as a macro and expanded for each backend
//! type. A backend type provides:
//!
//! - a `pool` field (`sqlx::Pool<DB>`), its only field (cloning the pool shares the store);
//! - `async fn now(&self) -> Result<DateTime<Utc>>`, the clock leases and timestamps use;
//! - `async fn begin_write(&self) -> Result<sqlx::Transaction<'static, DB>>`, a transaction
//!   that is allowed to write;
//! - the record ledger's bulk statements, whose SQL and parameters differ by backend (see
//!   `ledger.rs`): `async fn ledger_lookup_chunk(&self, sync, keys) -> Result<Vec<LedgerRow>>`,
//!   and `ledger_upsert_chunk(tx, sync, now, entries)` and `ledger_delete_chunk(tx, sync,
//!   keys)` on a transaction's connection;
//! - `key_list_sql(n)` and `key_list(keys)`, a many-key statement's list of keys as one
//!   parameter;
//! - the two-way bulk statements that `impl_two_way_store!` (`two_way.rs`) lists.
//!
//! Inside a transaction the code only uses the transaction, never the pool, so that a pool of
//! one connection (in-memory SQLite) cannot deadlock.

/// Inside a commit's transaction `$tx`: refuses the commit with `LeaseLost` unless `$c`'s
/// lease token (if any) is the sync's current one, then stores `$c.run`'s progress
/// (`$metrics` as `sql::metric_values` gives them, at `$now`). `$what` names the commit in
/// the log line of a refusal. Shared by every commit of the state store.
macro_rules! fence_and_progress {
    ($tx:ident, $c:ident, $metrics:ident, $now:ident, $op:ident, $what:literal) => {
        if let Some(token) = $c.lease_token {
            let fenced = sqlx::query($crate::sql::fence_sql())
                .bind($c.sync)
                .bind(token)
                .execute(&mut *$tx)
                .await
                .map_err($crate::error::db($op))?;
            if fenced.rows_affected() == 0 {
                tracing::warn!(
                    sync = $c.sync,
                    token,
                    concat!($what, " refused: lease lost")
                );
                return Err($crate::error::StateError::LeaseLost {
                    sync: $c.sync.to_owned(),
                });
            }
        }
        let progressed = sqlx::query($crate::sql::progress_sql())
            .bind($c.run)
            .bind($c.sync)
            .bind($metrics[0])
            .bind($metrics[1])
            .bind($metrics[2])
            .bind($metrics[3])
            .bind($metrics[4])
            .bind($metrics[5])
            .bind($metrics[6])
            .bind(&$now)
            .bind($c.lease_token)
            .execute(&mut *$tx)
            .await
            .map_err($crate::error::db($op))?;
        if progressed.rows_affected() == 0 {
            return Err($crate::error::StateError::UnknownRun { run: $c.run });
        }
    };
}
pub(crate) use fence_and_progress;

macro_rules! impl_state_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::StateStore for $store {
            async fn start_run(
                &self,
                sync: &str,
                cursor_before: Option<&serde_json::Value>,
            ) -> $crate::error::Result<i64> {
                let now = $crate::sql::timestamp(self.now().await?);
                let cursor = cursor_before.map(|v| v.to_string());
                sqlx::query_scalar::<_, i64>($crate::sql::start_run_sql())
                    .bind(sync)
                    .bind(&now)
                    .bind(cursor)
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::error::db("starting a run"))
            }

            async fn finish_run(
                &self,
                run: i64,
                end: &$crate::types::RunEnd,
            ) -> $crate::error::Result<()> {
                use $crate::error::StateError;
                if end.status == lockstep_core::RunStatus::Running {
                    return Err(StateError::InvalidArgument(format!(
                        "run {run} cannot finish with status `running`"
                    )));
                }
                let metrics = $crate::sql::metric_values(&end.metrics)?;
                let now = self.now().await?;
                let started: Option<String> =
                    sqlx::query_scalar(r#"SELECT "started_at" FROM "runs" WHERE "id" = $1"#)
                        .bind(run)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::db("finishing a run"))?;
                let started = started.ok_or(StateError::UnknownRun { run })?;
                let started = $crate::sql::parse_time(&started, "run start")?;
                let duration_ms = (now - started).num_milliseconds().max(0);
                let done = sqlx::query($crate::sql::finish_run_sql())
                    .bind(run)
                    .bind(end.status.as_str())
                    .bind($crate::sql::timestamp(now))
                    .bind(duration_ms)
                    .bind(metrics[0])
                    .bind(metrics[1])
                    .bind(metrics[2])
                    .bind(metrics[3])
                    .bind(metrics[4])
                    .bind(metrics[5])
                    .bind(metrics[6])
                    .bind(end.error_kind.map(lockstep_core::RunErrorKind::as_str))
                    .bind(end.error.as_deref())
                    .bind(end.cursor_after.as_ref().map(|v| v.to_string()))
                    .bind(end.exit_detail.as_deref())
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("finishing a run"))?;
                if done.rows_affected() == 0 {
                    return Err(StateError::UnknownRun { run });
                }
                Ok(())
            }

            async fn runs(
                &self,
                sync: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<lockstep_core::RunSummary>> {
                use $crate::sql::{limit as sql_limit, runs_sql, RunRow};
                let rows: Vec<RunRow> = match sync {
                    Some(sync) => {
                        sqlx::query_as(&runs_sql(true))
                            .bind(sync)
                            .bind(sql_limit(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                    None => {
                        sqlx::query_as(&runs_sql(false))
                            .bind(sql_limit(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                }
                .map_err($crate::error::db("listing runs"))?;
                rows.into_iter().map(RunRow::into_summary).collect()
            }

            async fn run(
                &self,
                id: i64,
            ) -> $crate::error::Result<Option<lockstep_core::RunSummary>> {
                let row: Option<$crate::sql::RunRow> = sqlx::query_as(&$crate::sql::run_sql())
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::error::db("reading a run"))?;
                row.map($crate::sql::RunRow::into_summary).transpose()
            }

            async fn set_run_kind(&self, run: i64, kind: &str) -> $crate::error::Result<()> {
                let done = sqlx::query(r#"UPDATE "runs" SET "kind" = $2 WHERE "id" = $1"#)
                    .bind(run)
                    .bind(kind)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("recording a run's kind"))?;
                if done.rows_affected() == 0 {
                    return Err($crate::error::StateError::UnknownRun { run });
                }
                Ok(())
            }

            async fn run_exit_detail(&self, id: i64) -> $crate::error::Result<Option<String>> {
                let detail: Option<Option<String>> =
                    sqlx::query_scalar(r#"SELECT "exit_detail" FROM "runs" WHERE "id" = $1"#)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::db("reading a run"))?;
                Ok(detail.flatten())
            }

            async fn mark_abandoned(&self, sync: &str) -> $crate::error::Result<u64> {
                let now = $crate::sql::timestamp(self.now().await?);
                let done = sqlx::query($crate::sql::mark_abandoned_sql())
                    .bind(sync)
                    .bind(&now)
                    .bind($crate::sql::ABANDONED_ERROR)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("marking abandoned runs"))?;
                if done.rows_affected() > 0 {
                    tracing::info!(sync, runs = done.rows_affected(), "marked runs abandoned");
                }
                Ok(done.rows_affected())
            }

            async fn checkpoint(
                &self,
                sync: &str,
            ) -> $crate::error::Result<Option<serde_json::Value>> {
                let text: Option<String> =
                    sqlx::query_scalar(r#"SELECT "value" FROM "checkpoints" WHERE "sync" = $1"#)
                        .bind(sync)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::error::db("reading a checkpoint"))?;
                text.map(|t| serde_json::from_str(&t))
                    .transpose()
                    .map_err(|e| {
                        $crate::error::StateError::Corrupt(format!(
                            "the checkpoint of sync `{sync}` is not JSON: {e}"
                        ))
                    })
            }

            async fn put_checkpoint(
                &self,
                key: &str,
                run: Option<i64>,
                value: &serde_json::Value,
            ) -> $crate::error::Result<()> {
                let now = $crate::sql::timestamp(self.now().await?);
                sqlx::query($crate::sql::checkpoint_upsert_sql())
                    .bind(key)
                    .bind(value.to_string())
                    .bind(run)
                    .bind(&now)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("writing a checkpoint"))?;
                Ok(())
            }

            async fn ledger_lookup(
                &self,
                sync: &str,
                keys: &[String],
            ) -> $crate::error::Result<
                std::collections::HashMap<String, $crate::types::LedgerEntry>,
            > {
                let mut found = std::collections::HashMap::with_capacity(keys.len());
                for chunk in keys.chunks($crate::ledger::LEDGER_CHUNK) {
                    let rows = self.ledger_lookup_chunk(sync, chunk).await?;
                    $crate::sql::ledger_map(rows, &mut found)?;
                }
                Ok(found)
            }

            async fn ledger_count(&self, sync: &str) -> $crate::error::Result<u64> {
                let count: i64 =
                    sqlx::query_scalar(r#"SELECT COUNT(*) FROM "ledger" WHERE "sync" = $1"#)
                        .bind(sync)
                        .fetch_one(&self.pool)
                        .await
                        .map_err($crate::error::db("counting ledger entries"))?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            async fn ledger_count_at_most(
                &self,
                sync: &str,
                at_most: u64,
            ) -> $crate::error::Result<u64> {
                let count: i64 = sqlx::query_scalar(
                    r#"SELECT COUNT(*) FROM
                       (SELECT 1 FROM "ledger" WHERE "sync" = $1 LIMIT $2) AS "entries""#,
                )
                .bind(sync)
                .bind(i64::try_from(at_most).unwrap_or(i64::MAX))
                .fetch_one(&self.pool)
                .await
                .map_err($crate::error::db("counting ledger entries"))?;
                Ok(u64::try_from(count).unwrap_or(0))
            }

            async fn ledger_keys(
                &self,
                sync: &str,
                after: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<String>> {
                use $crate::sql::{ledger_keys_sql, limit as sql_limit};
                match after {
                    Some(after) => {
                        sqlx::query_scalar(ledger_keys_sql(true))
                            .bind(sync)
                            .bind(after)
                            .bind(sql_limit(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                    None => {
                        sqlx::query_scalar(ledger_keys_sql(false))
                            .bind(sync)
                            .bind(sql_limit(limit))
                            .fetch_all(&self.pool)
                            .await
                    }
                }
                .map_err($crate::error::db("listing ledger keys"))
            }

            async fn commit_batch(
                &self,
                c: &$crate::types::BatchCommit<'_>,
            ) -> $crate::error::Result<()> {
                use $crate::error::db;
                use $crate::sql;
                const OP: &str = "committing a batch";

                // Everything that can fail without the database is prepared first.
                let metrics = sql::metric_values(c.metrics)?;
                let upserts = sql::sorted_unique_upserts(c.ledger_upserts);
                let raws: Vec<String> = c.rejected.iter().map(|r| r.raw.to_string()).collect();
                let checkpoint = c.checkpoint.map(|v| v.to_string());
                let now = sql::timestamp(self.now().await?);

                // Dropping `tx` on an early return rolls everything back.
                let mut tx = self.begin_write().await?;
                $crate::backend::fence_and_progress!(tx, c, metrics, now, OP, "commit");
                for chunk in upserts.chunks($crate::ledger::LEDGER_CHUNK) {
                    Self::ledger_upsert_chunk(&mut *tx, c.sync, &now, chunk, c.ledger_keys_new)
                        .await?;
                }
                for chunk in c.ledger_deletes.chunks($crate::ledger::LEDGER_CHUNK) {
                    Self::ledger_delete_chunk(&mut *tx, c.sync, chunk).await?;
                }
                // A pending rejected record of a key this commit writes is superseded: the
                // destination now holds a newer version of that record. Resolved before this
                // batch's own rejects are inserted, so those stay pending.
                // Most syncs have none pending: one probe of an index says so.
                let pending: i64 = if upserts.is_empty() {
                    0
                } else {
                    sqlx::query_scalar(sql::rejected_any_pending_sql())
                        .bind(c.sync)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(db(OP))?
                };
                if pending > 0 {
                    let resolved = sql::rejected_resolved_note(c.run);
                    let text = sql::rejected_resolve_sql(&Self::key_list_sql(3));
                    for chunk in upserts.chunks($crate::ledger::LEDGER_CHUNK) {
                        sqlx::query(&text)
                            .bind(resolved.as_str())
                            .bind(c.sync)
                            .bind(Self::key_list(chunk.iter().map(|e| e.key.as_str())))
                            .execute(&mut *tx)
                            .await
                            .map_err(db(OP))?;
                    }
                }
                if let Some(checkpoint) = &checkpoint {
                    sqlx::query(sql::checkpoint_upsert_sql())
                        .bind(c.sync)
                        .bind(checkpoint.as_str())
                        .bind(c.run)
                        .bind(&now)
                        .execute(&mut *tx)
                        .await
                        .map_err(db(OP))?;
                }
                let rejected: Vec<_> = c.rejected.iter().zip(&raws).collect();
                for chunk in rejected.chunks(sql::REJECTED_CHUNK) {
                    let text = sql::rejected_insert_sql(chunk.len());
                    let mut query = sqlx::query(&text);
                    for (record, raw) in chunk {
                        query = query
                            .bind(c.sync)
                            .bind(c.run)
                            .bind(record.key.as_deref())
                            .bind(record.field.as_deref())
                            .bind(record.reason.as_str())
                            .bind(raw.as_str())
                            .bind(now.as_str());
                    }
                    query.execute(&mut *tx).await.map_err(db(OP))?;
                }
                tx.commit().await.map_err(db(OP))
            }

            async fn rejected(
                &self,
                filter: &$crate::types::RejectedFilter,
            ) -> $crate::error::Result<Vec<$crate::types::RejectedRecord>> {
                use $crate::sql::{rejected_query, Param, RejectedRow};
                let (text, params) = rejected_query(filter);
                let mut query = sqlx::query_as::<_, RejectedRow>(&text);
                for param in &params {
                    query = match param {
                        Param::Int(value) => query.bind(*value),
                        Param::Text(value) => query.bind(value.as_str()),
                    };
                }
                let rows = query
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::error::db("listing rejected records"))?;
                rows.into_iter().map(RejectedRow::into_record).collect()
            }

            async fn mark_rejected_retried(
                &self,
                ids: &[i64],
                outcome: &str,
            ) -> $crate::error::Result<()> {
                const OP: &str = "recording retries of rejected records";
                if ids.is_empty() {
                    return Ok(());
                }
                let mut tx = self.begin_write().await?;
                for chunk in ids.chunks($crate::sql::KEY_CHUNK) {
                    let text = $crate::sql::rejected_retried_sql(chunk.len());
                    let mut query = sqlx::query(&text).bind(outcome);
                    for id in chunk {
                        query = query.bind(*id);
                    }
                    query
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::error::db(OP))?;
                }
                tx.commit().await.map_err($crate::error::db(OP))
            }

            async fn acquire_lease(
                &self,
                sync: &str,
                holder: &$crate::types::LeaseHolder,
                ttl: std::time::Duration,
            ) -> $crate::error::Result<$crate::types::Lease> {
                use $crate::error::{db, StateError};
                use $crate::sql;
                const OP: &str = "acquiring a lease";
                const ATTEMPTS: usize = 3;
                let ttl = sql::ttl(ttl)?;
                for attempt in 1..=ATTEMPTS {
                    let now = self.now().await?;
                    let expires = now.checked_add_signed(ttl).ok_or_else(|| {
                        StateError::InvalidArgument(format!("lease ttl {ttl} is too long"))
                    })?;
                    let since = sql::timestamp(now);
                    let token: Option<i64> = sqlx::query_scalar(sql::acquire_lease_sql())
                        .bind(sync)
                        .bind(holder.host.as_str())
                        .bind(i64::from(holder.pid))
                        .bind(&since)
                        .bind(sql::timestamp(expires))
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db(OP))?;
                    if let Some(token) = token {
                        tracing::debug!(sync, token, %holder, "lease acquired");
                        return Ok($crate::types::Lease {
                            sync: sync.to_owned(),
                            token,
                            holder: holder.clone(),
                            since,
                        });
                    }
                    let row: Option<sql::LeaseRow> = sqlx::query_as(sql::lease_sql())
                        .bind(sync)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(db(OP))?;
                    // The lease may have been released between the two statements; then the
                    // next attempt takes it.
                    if let Some(row) = row {
                        if row.expires_at > since || attempt == ATTEMPTS {
                            return Err(StateError::LeaseHeld {
                                sync: sync.to_owned(),
                                holder: row.holder(),
                                since: row.since,
                            });
                        }
                    }
                }
                Err(StateError::Corrupt(format!(
                    "the lease of sync `{sync}` could neither be taken nor read"
                )))
            }

            async fn renew_lease(
                &self,
                lease: &$crate::types::Lease,
                ttl: std::time::Duration,
            ) -> $crate::error::Result<()> {
                use $crate::error::StateError;
                let ttl = $crate::sql::ttl(ttl)?;
                let expires = self.now().await?.checked_add_signed(ttl).ok_or_else(|| {
                    StateError::InvalidArgument(format!("lease ttl {ttl} is too long"))
                })?;
                let done = sqlx::query($crate::sql::renew_lease_sql())
                    .bind(lease.sync.as_str())
                    .bind(lease.token)
                    .bind($crate::sql::timestamp(expires))
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("renewing a lease"))?;
                if done.rows_affected() == 0 {
                    return Err(StateError::LeaseLost {
                        sync: lease.sync.clone(),
                    });
                }
                Ok(())
            }

            async fn release_lease(
                &self,
                lease: &$crate::types::Lease,
            ) -> $crate::error::Result<()> {
                let now = $crate::sql::timestamp(self.now().await?);
                sqlx::query($crate::sql::release_lease_sql())
                    .bind(lease.sync.as_str())
                    .bind(lease.token)
                    .bind(&now)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("releasing a lease"))?;
                Ok(())
            }

            async fn expire_lease(
                &self,
                sync: &str,
                holder: &$crate::types::LeaseHolder,
            ) -> $crate::error::Result<bool> {
                let now = $crate::sql::timestamp(self.now().await?);
                let done = sqlx::query($crate::sql::expire_lease_sql())
                    .bind(sync)
                    .bind(holder.host.as_str())
                    .bind(i64::from(holder.pid))
                    .bind(&now)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::error::db("expiring a lease"))?;
                Ok(done.rows_affected() > 0)
            }

            fn shared(&self) -> std::sync::Arc<dyn $crate::store::StateStore> {
                std::sync::Arc::new(Self {
                    pool: self.pool.clone(),
                })
            }

            async fn reset_sync(&self, sync: &str) -> $crate::error::Result<()> {
                const OP: &str = "resetting a sync";
                let mut tx = self.begin_write().await?;
                for text in [
                    r#"DELETE FROM "ledger" WHERE "sync" = $1"#,
                    r#"DELETE FROM "two_way_ledger" WHERE "sync" = $1"#,
                    r#"DELETE FROM "two_way_counts" WHERE "sync" = $1"#,
                    r#"DELETE FROM "checkpoints" WHERE "sync" = $1"#,
                ] {
                    sqlx::query(text)
                        .bind(sync)
                        .execute(&mut *tx)
                        .await
                        .map_err($crate::error::db(OP))?;
                }
                tx.commit().await.map_err($crate::error::db(OP))?;
                tracing::info!(sync, "checkpoint, ledger and base ledger forgotten");
                Ok(())
            }

            async fn close(&self) {
                self.pool.close().await;
            }
        }
    };
}

pub(crate) use impl_state_store;
