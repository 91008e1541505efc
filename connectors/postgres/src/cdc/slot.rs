//! The server side of a cdc read: `wal_level`, the table's replica identity, the publication
//! and the logical replication slot (created with the built-in `pgoutput` plugin), the slot's
//! confirmation (`pg_replication_slot_advance`) and the WAL it retains.
//!
//! Invariants:
//! - Identifiers are always quoted; names and positions travel as bound parameters.
//! - A slot is advanced only to a position the caller got from a committed checkpoint, never
//!   past it, and never backwards (PostgreSQL refuses that).
//! - Every refusal says what to set, on which object.

use lockstep_plugin_sdk::{ConnectorError, Result};
use lockstep_sql_kit::{Dialect, PostgresDialect};
use sqlx::{PgConnection, Row};

use super::pgoutput::{format_lsn, parse_lsn};
use crate::catalog::qualified;
use crate::error::map_sqlx;

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Clone, Debug)]
pub struct SlotInfo {
    pub plugin: String,
    pub database: String,
    /// Where the slot's consumer confirmed to; decoding starts there.
    pub confirmed_flush: u64,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`: the WAL written since the slot's last
    /// confirmation, which the server keeps for it.
    pub retained_wal_bytes: u64,
    /// The server invalidated the slot (`wal_status = 'lost'`): it cannot decode any more.
    pub lost: bool,
}

/// Refuses a server whose `wal_level` is not `logical`.
pub async fn check_wal_level(conn: &mut PgConnection) -> Result<()> {
    let level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    if level != "logical" {
        return Err(ConnectorError::config(format!(
            "mode \"cdc\" needs logical decoding, but the server's wal_level is `{level}`: run \
             ALTER SYSTEM SET wal_level = logical; and restart PostgreSQL (a superuser must do \
             it; see connectors/postgres/README.md, \"Change data capture\")"
        )));
    }
    Ok(())
}

/// The columns that identify a changed row in the table's WAL records (its replica
/// identity): the primary key by default, a chosen unique index, or every column (`FULL`).
/// Refuses a table without any, saying what to set.
pub async fn replica_identity(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<Identity> {
    let row = sqlx::query(
        "SELECT c.relreplident::text AS ident, c.relkind::text AS kind, \
                (SELECT array_agg(a.attname::text ORDER BY k.n) \
                   FROM pg_index i \
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = c.oid AND i.indisprimary) AS pk, \
                (SELECT array_agg(a.attname::text ORDER BY k.n) \
                   FROM pg_index i \
                   CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                   JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                  WHERE i.indrelid = c.oid AND i.indisreplident) AS ident_index \
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
          WHERE n.nspname = $1 AND c.relname = $2",
    )
    .bind(schema)
    .bind(table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_sqlx)?
    .ok_or_else(|| ConnectorError::schema(format!("table `{schema}`.`{table}` does not exist")))?;
    let ident: String = row.try_get("ident").map_err(map_sqlx)?;
    let kind: String = row.try_get("kind").map_err(map_sqlx)?;
    let pk: Option<Vec<String>> = row.try_get("pk").map_err(map_sqlx)?;
    let index: Option<Vec<String>> = row.try_get("ident_index").map_err(map_sqlx)?;
    let name = qualified(schema, table);
    if kind != "r" {
        return Err(ConnectorError::schema(format!(
            "mode \"cdc\" reads the changes of ordinary tables, and {name} is not one (relkind \
             `{kind}`: a view, a partitioned table or another relation); sync a table, or use \
             mode \"mirror\""
        )));
    }
    let refuse = || {
        ConnectorError::schema(format!(
            "table {name} has no primary key and no replica identity, so its updates and \
             deletes cannot be told apart in the change log: add a primary key (ALTER TABLE \
             {name} ADD PRIMARY KEY (...)), or set a replica identity (ALTER TABLE {name} \
             REPLICA IDENTITY USING INDEX <a unique index on NOT NULL columns>, or ALTER TABLE \
             {name} REPLICA IDENTITY FULL)"
        ))
    };
    match ident.as_str() {
        "f" => Ok(Identity::Full),
        "d" => pk.map(Identity::Columns).ok_or_else(refuse),
        "i" => index.map(Identity::Columns).ok_or_else(refuse),
        _ => Err(refuse()),
    }
}

/// What identifies a changed row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// These columns (the primary key, or the replica identity index).
    Columns(Vec<String>),
    /// Every column (`REPLICA IDENTITY FULL`).
    Full,
}

impl Identity {
    /// Refuses a read key that the identity does not carry: deletes could not be keyed.
    pub fn check_key(&self, table: &str, key: &[String]) -> Result<()> {
        let Identity::Columns(columns) = self else {
            return Ok(());
        };
        let missing: Vec<&String> = key.iter().filter(|k| !columns.contains(k)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(ConnectorError::schema(format!(
            "the sync's key ({}) is not part of the replica identity of table `{table}` ({}): \
             a delete in the change log carries only the identity's columns; match on them \
             (`key`), or set ALTER TABLE ... REPLICA IDENTITY FULL",
            key.join(", "),
            columns.join(", ")
        )))
    }
}

/// Whether the publication exists, and whether it publishes the table.
pub async fn publication(
    conn: &mut PgConnection,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<Option<bool>> {
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_publication WHERE pubname = $1")
        .bind(publication)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    if exists.is_none() {
        return Ok(None);
    }
    let has: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM pg_publication_tables \
          WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
    )
    .bind(publication)
    .bind(schema)
    .bind(table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    Ok(Some(has.is_some()))
}

/// Creates a publication of the one table, or refuses one that exists without it.
pub async fn ensure_publication(
    conn: &mut PgConnection,
    name: &str,
    schema: &str,
    table: &str,
) -> Result<()> {
    let qualified_table = qualified(schema, table);
    let quoted = PostgresDialect.quote_ident(name);
    match publication(conn, name, schema, table).await? {
        Some(true) => Ok(()),
        Some(false) => Err(ConnectorError::config(format!(
            "publication `{name}` exists but does not publish {qualified_table}: run ALTER \
             PUBLICATION {quoted} ADD TABLE {qualified_table}; or name another publication \
             (`publication` in [syncs.NAME.cdc])"
        ))),
        None => {
            sqlx::query(&format!(
                "CREATE PUBLICATION {quoted} FOR TABLE {qualified_table}"
            ))
            .execute(&mut *conn)
            .await
            .map_err(|e| {
                let mut e = map_sqlx(e);
                e.message.push_str(&format!(
                    " (creating publication `{name}`: the user needs the CREATE privilege on \
                     the database and must own the table; or create it as an owner: CREATE \
                     PUBLICATION {quoted} FOR TABLE {qualified_table})"
                ));
                e
            })?;
            lockstep_plugin_sdk::tracing::info!(publication = name, "created the publication");
            Ok(())
        }
    }
}

/// The slot, if it exists.
pub async fn slot(conn: &mut PgConnection, slot: &str) -> Result<Option<SlotInfo>> {
    let row = sqlx::query(
        "SELECT coalesce(plugin::text, '') AS plugin, coalesce(database::text, '') AS database, \
                coalesce(confirmed_flush_lsn::text, '0/0') AS confirmed, \
                coalesce((pg_current_wal_lsn() - confirmed_flush_lsn)::bigint, 0) AS retained, \
                coalesce(wal_status = 'lost', false) AS lost \
           FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_sqlx)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let confirmed: String = row.try_get("confirmed").map_err(map_sqlx)?;
    let retained: i64 = row.try_get("retained").map_err(map_sqlx)?;
    Ok(Some(SlotInfo {
        plugin: row.try_get("plugin").map_err(map_sqlx)?,
        database: row.try_get("database").map_err(map_sqlx)?,
        confirmed_flush: parse_lsn(&confirmed).ok_or_else(|| {
            ConnectorError::internal(format!(
                "slot `{slot}`: the server gave confirmed_flush_lsn `{confirmed}`, not an LSN"
            ))
        })?,
        retained_wal_bytes: retained.max(0) as u64,
        lost: row.try_get("lost").map_err(map_sqlx)?,
    }))
}

/// The server's `server_version_num` (such as 150004).
pub async fn server_version(conn: &mut PgConnection) -> Result<i32> {
    let text: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    text.trim().parse().map_err(|_| {
        ConnectorError::internal(format!(
            "the server's version number `{text}` is not a number"
        ))
    })
}

/// The name of the database the connection is in.
pub async fn current_database(conn: &mut PgConnection) -> Result<String> {
    sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(map_sqlx)
}

/// Refuses a slot of another plugin or database.
pub async fn check_slot(conn: &mut PgConnection, name: &str, info: &SlotInfo) -> Result<()> {
    let database = current_database(conn).await?;
    if info.plugin != "pgoutput" || info.database != database {
        return Err(ConnectorError::config(format!(
            "replication slot `{name}` exists but is not a logical slot of plugin `pgoutput` in \
             database `{database}` (it is `{}` in `{}`): name another slot (`slot` in \
             [syncs.NAME.cdc])",
            info.plugin, info.database
        )));
    }
    Ok(())
}

/// Creates the slot; returns its consistent point, where its changes begin.
pub async fn create_slot(conn: &mut PgConnection, name: &str) -> Result<u64> {
    let lsn: String = sqlx::query_scalar(
        "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
    )
    .bind(name)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        let mut e = map_sqlx(e);
        e.message.push_str(&format!(
            " (creating replication slot `{name}`: the user needs the REPLICATION attribute, \
             ALTER ROLE ... WITH REPLICATION, and the server free slots, max_replication_slots)"
        ));
        e
    })?;
    lockstep_plugin_sdk::tracing::info!(slot = name, lsn = %lsn, "created the replication slot");
    parse_lsn(&lsn).ok_or_else(|| {
        ConnectorError::internal(format!("the new slot's LSN `{lsn}` is not an LSN"))
    })
}

/// Drops the slot (one the server invalidated, before it is made again).
pub async fn drop_slot(conn: &mut PgConnection, name: &str) -> Result<()> {
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            let mut e = map_sqlx(e);
            e.message.push_str(&format!(
                " (dropping the invalidated replication slot `{name}`)"
            ));
            e
        })?;
    Ok(())
}

/// Confirms the slot to `lsn`: the server may recycle the WAL before it.
pub async fn advance(conn: &mut PgConnection, name: &str, lsn: u64) -> Result<()> {
    sqlx::query("SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)")
        .bind(name)
        .bind(format_lsn(lsn))
        .execute(&mut *conn)
        .await
        .map_err(map_sqlx)?;
    lockstep_plugin_sdk::tracing::debug!(slot = name, lsn = %format_lsn(lsn), "confirmed the replication slot");
    Ok(())
}

/// Copies `slot` into a temporary slot of this session, which a read consumes chunk by
/// chunk while `slot` stays where the last committed checkpoint confirmed it.
pub async fn copy_temporary(conn: &mut PgConnection, slot: &str, copy: &str) -> Result<()> {
    sqlx::query("SELECT pg_copy_logical_replication_slot($1, $2, true)")
        .bind(slot)
        .bind(copy)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            let mut e = map_sqlx(e);
            e.message.push_str(&format!(
                " (copying replication slot `{slot}` for this read: the user needs the \
                 REPLICATION attribute, and the server a free slot, max_replication_slots)"
            ));
            e
        })?;
    Ok(())
}

/// Copies `source` into a new persistent slot `target` (same restart and confirmed
/// positions): the anchor's hand-over (`anchor_name`).
pub async fn copy_persistent(conn: &mut PgConnection, source: &str, target: &str) -> Result<()> {
    sqlx::query("SELECT pg_copy_logical_replication_slot($1, $2, false)")
        .bind(source)
        .bind(target)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            let mut e = map_sqlx(e);
            e.message.push_str(&format!(
                " (copying replication slot `{source}` into `{target}`: the user needs the \
                 REPLICATION attribute, and the server a free slot, max_replication_slots)"
            ));
            e
        })?;
    Ok(())
}

/// The name of the anchor slot of `slot`: a slot every run leaves for the next, confirmed at
/// or before its last checkpoint, so that the next run can take it over instead of making
/// the server decode the WAL since the slot's restart point to confirm `slot` (see
/// `cdc/mod.rs`, "The anchor").
pub fn anchor_name(slot: &str) -> String {
    let mut name: String = slot.chars().take(56).collect();
    name.push_str("_anchor");
    name
}

/// The start of the names of the temporary copies a read makes of `slot` (`copy_temporary`).
pub fn temporary_prefix(slot: &str) -> String {
    let mut prefix: String = slot.chars().take(30).collect();
    prefix.push_str("_tmp_");
    prefix
}
