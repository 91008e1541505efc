//! `lockstep cdc drop SYNC` on the server: drops a retired cdc sync's logical replication
//! slot and its publication, so that the server stops retaining WAL for it.
//!
//! It arrives as a cdc read whose `CdcRequest::drop` is set (the feature `cdc-drop`): the
//! plugin owns the slot, so the host never talks to PostgreSQL itself. The read returns one
//! batch of `CdcDropped` rows, one per object.
//!
//! Invariants:
//! - Everything is checked before anything is dropped: a slot in use (a read of the sync in
//!   progress holds it, or its temporary copy; or another consumer does), or a slot that is
//!   not a `pgoutput` slot of this database, refuses the whole drop.
//! - A publication is dropped only when it publishes nothing but the sync's table; one that
//!   publishes more (or all tables), or that another sync uses, is kept and the outcome says
//!   why.
//! - The table need not exist any more: a retired sync's table may be gone.
//! - Identifiers are always quoted; names travel as bound parameters.

use lockstep_plugin_sdk::protocol::{CdcDropped, CdcRequest};
use lockstep_plugin_sdk::{ConnectorError, Result};
use lockstep_sql_kit::{Dialect, PostgresDialect};
use sqlx::{PgConnection, Row};

use super::slot::{anchor_name, temporary_prefix};
use crate::error::map_sqlx;

const SLOT: &str = "replication slot";
const PUBLICATION: &str = "publication";

/// Drops the slot and the publication of `request` for table `schema`.`table`; returns what
/// was done to each.
pub async fn drop_objects(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    request: &CdcRequest,
) -> Result<Vec<CdcDropped>> {
    let slot_exists = check_slot(conn, &request.slot).await?;
    let publication = plan_publication(conn, request, schema, table).await?;
    let mut outcomes = Vec::new();
    if slot_exists {
        sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(&request.slot)
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                let mut e = map_sqlx(e);
                e.message.push_str(&format!(
                    " (dropping replication slot `{}`: the user needs the REPLICATION \
                     attribute, and the slot must not be in use)",
                    request.slot
                ));
                e
            })?;
        lockstep_plugin_sdk::tracing::info!(slot = %request.slot, "dropped the replication slot");
        outcomes.push(outcome(SLOT, &request.slot, CdcDropped::DROPPED, ""));
    } else {
        outcomes.push(outcome(
            SLOT,
            &request.slot,
            CdcDropped::ABSENT,
            "the server has no slot of that name",
        ));
    }
    // The anchor slot every run leaves for the next (`slot::anchor_name`), when it is one of
    // this database.
    let anchor = anchor_name(&request.slot);
    sqlx::query(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
          WHERE slot_name = $1 AND plugin = 'pgoutput' AND database = current_database() \
            AND active_pid IS NULL",
    )
    .bind(&anchor)
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        let mut e = map_sqlx(e);
        e.message.push_str(&format!(
            " (dropping the anchor replication slot `{anchor}` of slot `{}`)",
            request.slot
        ));
        e
    })?;
    match publication {
        PublicationPlan::Drop => {
            let quoted = PostgresDialect.quote_ident(&request.publication);
            sqlx::query(&format!("DROP PUBLICATION {quoted}"))
                .execute(&mut *conn)
                .await
                .map_err(|e| {
                    let mut e = map_sqlx(e);
                    e.message.push_str(&format!(
                        " (dropping publication `{}`: only its owner can; the replication \
                         slot `{}` is already dropped, so run DROP PUBLICATION {quoted}; as \
                         the owner)",
                        request.publication, request.slot
                    ));
                    e
                })?;
            lockstep_plugin_sdk::tracing::info!(
                publication = %request.publication,
                "dropped the publication"
            );
            outcomes.push(outcome(
                PUBLICATION,
                &request.publication,
                CdcDropped::DROPPED,
                "",
            ));
        }
        PublicationPlan::Absent => outcomes.push(outcome(
            PUBLICATION,
            &request.publication,
            CdcDropped::ABSENT,
            "the database has no publication of that name",
        )),
        PublicationPlan::Keep(why) => {
            outcomes.push(outcome(
                PUBLICATION,
                &request.publication,
                CdcDropped::KEPT,
                &why,
            ));
        }
    }
    Ok(outcomes)
}

fn outcome(object: &str, name: &str, outcome: &str, detail: &str) -> CdcDropped {
    CdcDropped {
        object: object.into(),
        name: name.into(),
        outcome: outcome.into(),
        detail: detail.into(),
    }
}

/// Whether the slot exists; refuses a slot that is in use or is not the sync's kind.
async fn check_slot(conn: &mut PgConnection, name: &str) -> Result<bool> {
    let database: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    let rows = sqlx::query(
        "SELECT slot_name::text AS name, coalesce(plugin::text, '') AS plugin, \
                coalesce(database::text, '') AS database, temporary, active_pid \
           FROM pg_replication_slots",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let copies = temporary_prefix(name);
    let mut exists = false;
    for row in rows {
        let slot: String = row.try_get("name").map_err(map_sqlx)?;
        let temporary: bool = row.try_get("temporary").map_err(map_sqlx)?;
        let active: Option<i32> = row.try_get("active_pid").map_err(map_sqlx)?;
        let ours = slot == name;
        let copy = temporary && slot.starts_with(&copies);
        if !ours && !copy {
            continue;
        }
        if let Some(pid) = active {
            return Err(ConnectorError::config(format!(
                "replication slot `{slot}` is in use by server process {pid}{}: a run of the \
                 sync is reading it, or another consumer is. Nothing was dropped; wait for the \
                 run to end (or stop it) and run `lockstep cdc drop` again",
                if copy {
                    format!(" (a temporary copy of `{name}` that a read makes)")
                } else {
                    String::new()
                }
            )));
        }
        if ours {
            let plugin: String = row.try_get("plugin").map_err(map_sqlx)?;
            let db: String = row.try_get("database").map_err(map_sqlx)?;
            if plugin != "pgoutput" || db != database {
                return Err(ConnectorError::config(format!(
                    "replication slot `{name}` is not a logical slot of plugin `pgoutput` in \
                     database `{database}` (it is `{plugin}` in `{db}`), so it is not this \
                     sync's: nothing was dropped. Check `slot` in [syncs.NAME.cdc]"
                )));
            }
            exists = true;
        }
    }
    Ok(exists)
}

/// What to do with the publication.
enum PublicationPlan {
    Drop,
    Absent,
    Keep(String),
}

async fn plan_publication(
    conn: &mut PgConnection,
    request: &CdcRequest,
    schema: &str,
    table: &str,
) -> Result<PublicationPlan> {
    let all: Option<bool> =
        sqlx::query_scalar("SELECT puballtables FROM pg_publication WHERE pubname = $1")
            .bind(&request.publication)
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_sqlx)?;
    let Some(all) = all else {
        return Ok(PublicationPlan::Absent);
    };
    if request.keep_publication {
        return Ok(PublicationPlan::Keep(
            "another sync of the config uses it too".into(),
        ));
    }
    if all {
        return Ok(PublicationPlan::Keep(format!(
            "it publishes all tables (FOR ALL TABLES), not only this sync's; drop it when \
             nothing uses it: DROP PUBLICATION {};",
            PostgresDialect.quote_ident(&request.publication)
        )));
    }
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT schemaname::text, tablename::text FROM pg_publication_tables \
          WHERE pubname = $1 ORDER BY 1, 2",
    )
    .bind(&request.publication)
    .fetch_all(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let others: Vec<String> = tables
        .iter()
        .filter(|(s, t)| !(s == schema && t == table))
        .map(|(s, t)| format!("{s}.{t}"))
        .collect();
    if others.is_empty() {
        Ok(PublicationPlan::Drop)
    } else {
        Ok(PublicationPlan::Keep(format!(
            "it also publishes {}; remove this sync's table from it with ALTER PUBLICATION {} \
             DROP TABLE {}; if nothing else needs it",
            others.join(", "),
            PostgresDialect.quote_ident(&request.publication),
            crate::catalog::qualified(schema, table)
        )))
    }
}
