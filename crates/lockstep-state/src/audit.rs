//! The action log: what people did to a sync's queues through the daemon's status page
//! (approving or discarding held deletes, retrying rejected records, resolving conflicts),
//! with who and when.
//!
//! Invariants:
//! - A row is written once and never changed; the time is the state store's clock.
//! - `detail` says what the action did in words (counts, ids); it never holds a record's
//!   values, so the log carries nothing a sync's data could make secret.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// An action to record.
#[derive(Clone, Copy, Debug)]
pub struct NewAction<'a> {
    /// Who: the authenticated user of the page, or `local` without authentication.
    pub actor: &'a str,
    /// What: `deletes-approve`, `deletes-discard`, `rejects-retry` or `conflict-resolve`.
    pub action: &'a str,
    pub sync: &'a str,
    /// What it did, in words.
    pub detail: &'a str,
}

/// A recorded action.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Action {
    pub id: i64,
    /// RFC 3339 UTC.
    pub at: String,
    pub actor: String,
    pub action: String,
    pub sync: String,
    pub detail: String,
}

/// The action-log part of the state store; every [`crate::StateStore`] is one.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Records `action` now and returns the recorded row.
    async fn record_action(&self, action: &NewAction<'_>) -> Result<Action>;

    /// The last `limit` actions, newest first, of `sync` (of every sync when `None`).
    async fn actions(&self, sync: Option<&str>, limit: usize) -> Result<Vec<Action>>;
}

pub(crate) fn insert_sql() -> &'static str {
    r#"INSERT INTO "actions" ("at", "actor", "action", "sync", "detail")
       VALUES ($1, $2, $3, $4, $5) RETURNING "id""#
}

pub(crate) fn list_sql() -> &'static str {
    r#"SELECT "id", "at", "actor", "action", "sync", "detail" FROM "actions"
       WHERE ($1 IS NULL OR "sync" = $1) ORDER BY "id" DESC LIMIT $2"#
}

/// Implements [`AuditStore`] for a backend type (see `backend.rs` for what one provides).
macro_rules! impl_audit_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::audit::AuditStore for $store {
            async fn record_action(
                &self,
                a: &$crate::audit::NewAction<'_>,
            ) -> $crate::error::Result<$crate::audit::Action> {
                use $crate::error::db;
                const OP: &str = "recording an action";
                let at = $crate::sql::timestamp(self.now().await?);
                let mut tx = self.begin_write().await?;
                let id: i64 = sqlx::query_scalar($crate::audit::insert_sql())
                    .bind(at.as_str())
                    .bind(a.actor)
                    .bind(a.action)
                    .bind(a.sync)
                    .bind(a.detail)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db(OP))?;
                tx.commit().await.map_err(db(OP))?;
                Ok($crate::audit::Action {
                    id,
                    at,
                    actor: a.actor.to_owned(),
                    action: a.action.to_owned(),
                    sync: a.sync.to_owned(),
                    detail: a.detail.to_owned(),
                })
            }

            async fn actions(
                &self,
                sync: Option<&str>,
                limit: usize,
            ) -> $crate::error::Result<Vec<$crate::audit::Action>> {
                use $crate::error::db;
                let rows: Vec<(i64, String, String, String, String, String)> =
                    sqlx::query_as($crate::audit::list_sql())
                        .bind(sync)
                        .bind($crate::sql::limit(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(db("listing actions"))?;
                Ok(rows
                    .into_iter()
                    .map(
                        |(id, at, actor, action, sync, detail)| $crate::audit::Action {
                            id,
                            at,
                            actor,
                            action,
                            sync,
                            detail,
                        },
                    )
                    .collect())
            }
        }
    };
}
pub(crate) use impl_audit_store;
