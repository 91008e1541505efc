//! Change data capture (`mode = "cdc"`): a snapshot of the table, then its changes in commit
//! order from a logical replication slot of the built-in `pgoutput` plugin, read over an
//! ordinary connection with the SQL interface.
//!
//! A read goes like this (`drive`):
//! 1. Checks: `wal_level = logical`, the table has a replica identity that carries the key,
//!    the publication publishes the table (created when missing), the slot is a `pgoutput`
//!    slot of this database (created when missing).
//! 2. Without a checkpoint, or with one of an unfinished snapshot: the slot is created first
//!    (its consistent point is where its changes begin), then the table is read in key order
//!    as a full read does. The SQL interface exports no snapshot, so the rows read may be
//!    newer than the slot's start; replaying, in commit order, the changes committed after
//!    that start onto them converges to the table's state, because each change is an upsert
//!    of the whole row or a delete by key (idempotent, and the last one of a key wins).
//! 3. The confirmation: the checkpoint a read opens with is the one the state store committed
//!    after the destination flushed, so the slot is advanced (`pg_replication_slot_advance`)
//!    to its position then, and only then: the after-commit hook every source of Lockstep
//!    uses (as the files connector's `after_read`). A dry run never advances. The advance
//!    runs on a connection of its own while the changes are read (step 5), since each is a
//!    pass of the server's decoder over the WAL from the slot's restart point.
//! 4. The anchor: every run leaves a second slot (`<slot>_anchor`) for the next, at or before
//!    its last checkpoint. A run of changes copies its consumed temporary copy (step 5) when
//!    the read ends (`leave_anchor`): confirmed exactly at its last checkpoint. A snapshot
//!    run creates a new slot past the WAL the snapshot generated (`create_anchor`), then reads
//!    the changes since the slot's start, so its last checkpoint is at or past the anchor's
//!    start. The next run replaces the slot by a copy of the anchor (`take_anchor`) when the
//!    anchor is at or before the committed checkpoint: a confirmation that costs no decoding
//!    pass (an advance decodes from the slot's restart point, which the SQL interface moves
//!    only at the WAL's running-transactions records, so it trails by seconds to minutes).
//! 5. The changes: the slot is copied (before the advance) into a temporary slot of the
//!    session, whose changes are consumed with `pg_logical_slot_get_binary_changes` in chunks
//!    of at most `CHUNK_CHANGES` changes (PostgreSQL returns whole transactions, so a chunk
//!    may be longer) until a call returns fewer. The rows stream from the server; memory
//!    holds one batch. The changes up to the checkpoint, which the copy still holds, are
//!    skipped by position.
//!
//! Checkpoints (`CdcCheckpoint`) name the slot and a position: the end LSN of the last
//! transaction applied whole, plus, inside a transaction split across batches, its commit
//! LSN and how many of its changes to the table were applied. On a rerun, the changes at or
//! before that position that the slot still holds are skipped, so nothing is applied twice
//! and nothing is lost, whatever point a run was killed at.
//!
//! Invariants:
//! - The slot is confirmed only to a committed checkpoint's position (an anchor replaces it
//!   only when the anchor is at or before that position).
//! - A truncate of the table is refused (it has no rows to delete by key); a change that
//!   cannot be decoded is an error naming it, never a skipped record.
//! - Unchanged TOASTed values are never written as NULL (`changes`).

pub mod changes;
pub mod drop;
pub mod pgoutput;
pub mod slot;

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;

use futures_core::Stream;
use lockstep_plugin_sdk::arrow::array::{BooleanArray, RecordBatch};
use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
use lockstep_plugin_sdk::protocol::CDC_DELETED_FIELD;
use lockstep_plugin_sdk::{
    resolve_read, ConnectorError, Context, FieldInfo, ReadMode, ReadRequest, ResolvedRead, Result,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgConnection, Row};
use tokio::sync::mpsc;

use self::changes::{ChangeBuffer, Layout, Positions};
use self::pgoutput::{format_lsn, parse_lsn, Message};
use crate::catalog::{ReadExpr, Table};
use crate::config::{effective_batch_size, Settings};
use crate::read::{fetch, BatchResult, PgReader, ReadPlan};
use crate::session::Session;

/// How to start a cdc sync over, for messages.
const RESET: &str = "to start over with a new snapshot, run `lockstep cdc drop NAME` (it drops \
                     the slot and the publication and resets the sync's checkpoint) and run the \
                     sync again";

/// The most changes one `pg_logical_slot_get_binary_changes` call asks for.
pub const CHUNK_CHANGES: i32 = 20_000;

/// A cdc read's checkpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CdcCheckpoint {
    pub slot: String,
    /// `snapshot` while the table is being read, `changes` after.
    pub phase: Phase,
    /// In the snapshot: the slot's start. In the changes: the end LSN of the last
    /// transaction applied whole; the slot is confirmed to it.
    pub lsn: String,
    /// The snapshot's own checkpoint (the last key read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Value>,
    /// A transaction applied in part: its commit LSN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    /// A transaction applied in part: how many of its changes to the table were applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<u64>,
    /// The WAL the slot retained when the read began (`pg_current_wal_lsn() -
    /// confirmed_flush_lsn`), for the daemon's WAL-retention alert.
    #[serde(default)]
    pub retained_wal_bytes: u64,
    /// The destination has every change of the table committed before this time (RFC 3339,
    /// UTC): the commit time of the last transaction applied, or, once a read has consumed
    /// the change log, when its last look at it began. `lockstep status` and the daemon's
    /// `/metrics` show the time since as the sync's lag. Absent during a snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caught_up_at: Option<String>,
}

/// Where a cdc read is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Snapshot,
    Changes,
}

/// Everything the worker needs.
struct CdcPlan {
    settings: Settings,
    slot: String,
    publication: String,
    dry_run: bool,
    layout: Layout,
    batch_size: usize,
    checkpoint: Option<CdcCheckpoint>,
    /// The snapshot read, resuming from the checkpoint's snapshot position.
    snapshot: ReadPlan,
    /// The snapshot read from the start, for when the slot must be created again.
    fresh_snapshot: ReadPlan,
    label: String,
}

/// A cdc read that drops the slot and the publication instead (`CdcRequest::drop`, `lockstep
/// cdc drop`): one batch of `CdcDropped` rows. The stream's table need not exist.
pub(crate) async fn drop_read(
    session: &Session,
    request: &ReadRequest,
    ctx: Context,
) -> Result<PgReader> {
    let Some(cdc) = request.cdc.as_ref() else {
        return Err(ConnectorError::internal(
            "a cdc drop without its slot and publication",
        ));
    };
    let label = format!(
        "dropping the replication slot and publication of `{}`",
        request.stream
    );
    let result = async {
        let mut conn = session.settings.connect().await?;
        let outcomes =
            drop::drop_objects(&mut conn, &session.settings.schema, &request.stream, cdc).await;
        crate::config::close(conn).await;
        let outcomes = outcomes?;
        lockstep_plugin_sdk::protocol::CdcDropped::to_batch(&outcomes)
            .map_err(|e| ConnectorError::internal(format!("the cdc drop's outcome: {e}")))
    }
    .await
    .map_err(|e| session.settings.scrub_error(e.context(&label)))?;
    Ok(PgReader::ready(&label, ctx, result))
}

/// Starts a cdc read of `table`.
pub(crate) fn start(
    session: &Session,
    table: Table,
    request: ReadRequest,
    ctx: Context,
) -> Result<PgReader> {
    let label = format!("reading the changes of `{}`", table.name);
    let cdc = request.cdc.clone().ok_or_else(|| {
        ConnectorError::config(format!(
            "{label}: a cdc read needs a replication slot and a publication (the request's \
             `cdc`); the host sends them for syncs of mode \"cdc\""
        ))
    })?;
    let checkpoint = match request.checkpoint.as_ref().filter(|c| !c.is_null()) {
        None => None,
        Some(value) => {
            let parsed: CdcCheckpoint = serde_json::from_value(value.clone()).map_err(|e| {
                ConnectorError::config(format!(
                    "{label}: the checkpoint {value} is not one of a cdc read ({e}); a sync \
                     that changed mode to \"cdc\" needs its checkpoint reset"
                ))
            })?;
            if parsed.slot != cdc.slot {
                return Err(ConnectorError::config(format!(
                    "{label}: the checkpoint is a position of slot `{}`, but the sync now names \
                     slot `{}`; set `slot` back, or {RESET}",
                    parsed.slot, cdc.slot
                )));
            }
            Some(parsed)
        }
    };
    // The snapshot is a full read of the fields asked for, without the deleted flag.
    let fields = request.fields.as_ref().map(|f| {
        f.iter()
            .filter(|n| n.as_str() != CDC_DELETED_FIELD)
            .cloned()
            .collect::<Vec<_>>()
    });
    let snapshot_checkpoint = checkpoint
        .as_ref()
        .filter(|c| c.phase == Phase::Snapshot)
        .and_then(|c| c.snapshot.clone());
    let full = ReadRequest {
        stream: request.stream.clone(),
        mode: ReadMode::Full,
        fields,
        key: request.key.clone(),
        checkpoint: snapshot_checkpoint,
        batch_size: request.batch_size,
        ..Default::default()
    };
    let ResolvedRead {
        fields: out, key, ..
    } = resolve_read(&full, &table.stream_info())?;
    let snapshot = ReadPlan::new(&table, &full, session)?;
    let fresh_snapshot = ReadPlan::new(
        &table,
        &ReadRequest {
            checkpoint: None,
            ..full.clone()
        },
        session,
    )?;
    let columns = out
        .iter()
        .map(|f| {
            table.column(&f.name).cloned().ok_or_else(|| {
                ConnectorError::schema(format!(
                    "change data capture of `{}`: field `{}` is not one of its columns; \
                     columns: {}",
                    table.name,
                    f.name,
                    table.column_names()
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut schema_fields: Vec<FieldInfo> = out
        .iter()
        .map(|f| FieldInfo {
            nullable: true,
            ..f.clone()
        })
        .collect();
    schema_fields.push(FieldInfo {
        name: CDC_DELETED_FIELD.into(),
        data_type: lockstep_plugin_sdk::DataType::Boolean,
        nullable: false,
        native_type: None,
    });
    let layout = Layout {
        schema_name: session.settings.schema.clone(),
        table: table.name.clone(),
        columns,
        key,
        schema: Arc::new(arrow_schema(&schema_fields)),
        binary: false,
    };
    let plan = CdcPlan {
        settings: session.settings.clone(),
        slot: cdc.slot,
        publication: cdc.publication,
        dry_run: request.dry_run,
        layout,
        batch_size: effective_batch_size(request.batch_size, session.settings.batch_size),
        checkpoint,
        snapshot,
        fresh_snapshot,
        label: label.clone(),
    };
    PgReader::with_worker(label, ctx, move |go, tx| worker(plan, go, tx))
}

/// The worker thread: its own runtime and connections; one batch per request.
fn worker(plan: CdcPlan, go: mpsc::UnboundedReceiver<()>, tx: mpsc::Sender<BatchResult>) {
    let Some(runtime) = crate::read::worker_runtime(&tx) else {
        return;
    };
    runtime.block_on(async move {
        let mut out = Outlet { go, tx };
        if drive(plan, &mut out).await.is_ok() {
            // The end of the read.
            let _ = out.send(Ok(None)).await;
        }
    });
}

/// The reader went away: stop quietly.
struct Stop;

/// Where batches go: one per request of the reader.
struct Outlet {
    go: mpsc::UnboundedReceiver<()>,
    tx: mpsc::Sender<BatchResult>,
}

impl Outlet {
    async fn send(&mut self, result: BatchResult) -> std::result::Result<(), Stop> {
        if self.go.recv().await.is_none() {
            return Err(Stop);
        }
        self.tx.send(result).await.map_err(|_| Stop)
    }
}

/// Runs the read; errors are sent to the reader, which then stops asking.
async fn drive(mut plan: CdcPlan, out: &mut Outlet) -> std::result::Result<(), Stop> {
    let settings = plan.settings.clone();
    let label = plan.label.clone();
    match run(&mut plan, out).await {
        Ok(()) => Ok(()),
        Err(Failure::Stop) => Err(Stop),
        Err(Failure::Error(e)) => {
            out.send(Err(settings.scrub_error(e.context(&label))))
                .await?;
            Err(Stop)
        }
    }
}

enum Failure {
    Stop,
    Error(ConnectorError),
}

impl From<ConnectorError> for Failure {
    fn from(e: ConnectorError) -> Self {
        Failure::Error(e)
    }
}

impl From<Stop> for Failure {
    fn from(_: Stop) -> Self {
        Failure::Stop
    }
}

type Flow = std::result::Result<(), Failure>;

fn checkpoint_value(c: &CdcCheckpoint) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

/// A snapshot batch with the deleted flag (all false) added.
fn with_flag(layout: &Layout, batch: RecordBatch) -> Result<RecordBatch> {
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(BooleanArray::from(vec![false; batch.num_rows()])));
    RecordBatch::try_new(layout.schema.clone(), columns).map_err(|e| {
        ConnectorError::internal(format!(
            "the snapshot batch does not fit the cdc schema: {e}"
        ))
    })
}

async fn run(plan: &mut CdcPlan, out: &mut Outlet) -> Flow {
    let mut conn = plan.settings.connect().await?;
    let mut side = plan.settings.connect().await?;
    let flow = run_on(plan, out, &mut conn, &mut side).await;
    tokio::join!(crate::config::close(conn), crate::config::close(side));
    flow
}

/// [`run`] on its two connections: `conn` for the slot and the snapshot, `side` for the
/// changes' TOASTed values.
async fn run_on(
    plan: &mut CdcPlan,
    out: &mut Outlet,
    conn: &mut PgConnection,
    side: &mut PgConnection,
) -> Flow {
    let (schema, table) = (plan.layout.schema_name.clone(), plan.layout.table.clone());
    slot::check_wal_level(&mut *conn).await?;
    // Binary values when every column is read as itself and pgoutput has the option.
    plan.layout.binary = plan
        .layout
        .columns
        .iter()
        .all(|c| c.expr == ReadExpr::Plain)
        && slot::server_version(&mut *conn).await? >= 140_000;
    lockstep_plugin_sdk::tracing::debug!(
        binary = plan.layout.binary,
        "changes are read with binary values when true, cast from text by the server otherwise"
    );
    let identity = slot::replica_identity(&mut *conn, &schema, &table).await?;
    identity.check_key(&table, &plan.layout.key)?;
    let has_publication = if plan.dry_run {
        slot::publication(&mut *conn, &plan.publication, &schema, &table)
            .await?
            .unwrap_or(false)
    } else {
        slot::ensure_publication(&mut *conn, &plan.publication, &schema, &table).await?;
        true
    };
    let mut info = slot::slot(&mut *conn, &plan.slot).await?;
    if let Some(info) = &info {
        slot::check_slot(&mut *conn, &plan.slot, info).await?;
    }
    let mut checkpoint = plan.checkpoint.clone();
    let anchor = slot::anchor_name(&plan.slot);
    if !plan.dry_run {
        info = take_anchor(&mut *conn, &plan.slot, &anchor, checkpoint.as_ref(), info).await?;
    }
    // A slot the server invalidated (past `max_slot_wal_keep_size`) cannot decode any more:
    // it is dropped and made again, as a slot that was dropped.
    if info.as_ref().is_some_and(|i| i.lost) {
        lockstep_plugin_sdk::tracing::warn!(
            slot = %plan.slot,
            "replication slot `{}` was invalidated by the server (its WAL went past \
             max_slot_wal_keep_size): dropping it",
            plan.slot
        );
        if !plan.dry_run {
            slot::drop_slot(&mut *conn, &plan.slot).await?;
        }
        info = None;
    }
    match (&info, &checkpoint) {
        (None, Some(c)) => {
            lockstep_plugin_sdk::tracing::warn!(
                slot = %plan.slot,
                "replication slot `{}` does not exist any more (dropped, by `lockstep cdc \
                 drop` or by hand, or invalidated), so the changes after LSN {} cannot be \
                 read: taking a new snapshot of `{}`; the run then reconciles key sets to find \
                 the records deleted meanwhile",
                plan.slot,
                c.lsn,
                table
            );
            checkpoint = None;
        }
        (_, None) => lockstep_plugin_sdk::tracing::info!(
            slot = %plan.slot,
            "taking a snapshot of `{table}` (the sync has no checkpoint: its first run, or \
             one after `lockstep cdc drop` or a full refresh)"
        ),
        _ => {}
    }
    let lsn_of = |text: &str| {
        parse_lsn(text).ok_or_else(|| {
            ConnectorError::config(format!("the checkpoint's LSN `{text}` is not an LSN"))
        })
    };

    // Whether this run read a snapshot and made its anchor (`create_anchor`).
    let mut snapshot_anchor = false;
    // The position changes resume from, and the partial transaction.
    let mut position: Position;
    // Where to confirm the slot to, while the changes are read.
    let mut confirm: Option<u64> = None;
    match checkpoint.as_ref().filter(|c| c.phase == Phase::Changes) {
        Some(c) => {
            let lsn = lsn_of(&c.lsn)?;
            let Some(slot_info) = &info else {
                return Err(ConnectorError::internal(format!(
                    "replication slot `{}` vanished while the read began",
                    plan.slot
                ))
                .into());
            };
            if slot_info.confirmed_flush > lsn {
                return Err(ConnectorError::config(format!(
                    "replication slot `{}` was confirmed to LSN {}, past this sync's checkpoint \
                     {}: another consumer used it and the changes between are lost to this \
                     sync. Give each sync its own slot; then {RESET}",
                    plan.slot,
                    format_lsn(slot_info.confirmed_flush),
                    c.lsn
                ))
                .into());
            }
            // The after-commit hook: this checkpoint was committed, its changes are durable
            // in the destination; the slot may now let go of them (confirmed while the
            // changes are read, below).
            if !plan.dry_run && slot_info.confirmed_flush < lsn {
                confirm = Some(lsn);
            }
            let partial = match (&c.txn, c.changes) {
                (Some(txn), Some(n)) => Some((lsn_of(txn)?, n)),
                _ => None,
            };
            position = Position { done: lsn, partial };
        }
        None => {
            // The snapshot, started or resumed.
            let resume = checkpoint.as_ref().filter(|c| c.phase == Phase::Snapshot);
            let (start, reader) = match (&info, resume) {
                (Some(_), Some(c)) => (lsn_of(&c.lsn)?, &mut plan.snapshot),
                (Some(i), None) => (i.confirmed_flush, &mut plan.fresh_snapshot),
                (None, _) if plan.dry_run => (0, &mut plan.fresh_snapshot),
                (None, _) => {
                    let start = slot::create_slot(&mut *conn, &plan.slot).await?;
                    info = slot::slot(&mut *conn, &plan.slot).await?;
                    (start, &mut plan.fresh_snapshot)
                }
            };
            let retained = info.as_ref().map_or(0, |i| i.retained_wal_bytes);
            loop {
                let next = fetch(&mut *side, reader).await?;
                let Some((batch, inner)) = next else {
                    break;
                };
                let c = CdcCheckpoint {
                    slot: plan.slot.clone(),
                    phase: Phase::Snapshot,
                    lsn: format_lsn(start),
                    snapshot: Some(inner),
                    txn: None,
                    changes: None,
                    retained_wal_bytes: retained,
                    caught_up_at: None,
                };
                let batch = with_flag(&plan.layout, batch)?;
                out.send(Ok(Some((batch, checkpoint_value(&c))))).await?;
            }
            if info.is_none() {
                // A dry run of a sync whose slot does not exist yet: the snapshot is all.
                return Ok(());
            }
            if !plan.dry_run {
                create_anchor(&plan.settings, &anchor).await;
                snapshot_anchor = true;
            }
            let c = CdcCheckpoint {
                slot: plan.slot.clone(),
                phase: Phase::Changes,
                lsn: format_lsn(start),
                snapshot: None,
                txn: None,
                changes: None,
                retained_wal_bytes: retained,
                caught_up_at: None,
            };
            let empty = RecordBatch::new_empty(plan.layout.schema.clone());
            out.send(Ok(Some((empty, checkpoint_value(&c))))).await?;
            position = Position {
                done: start,
                partial: None,
            };
        }
    }
    if !has_publication {
        return Ok(());
    }
    // The WAL retained once the slot is confirmed to the committed checkpoint.
    let retained = slot::slot(&mut *conn, &plan.slot).await?.map_or(0, |i| {
        let confirming = confirm.map_or(0, |lsn| lsn.saturating_sub(i.confirmed_flush));
        i.retained_wal_bytes.saturating_sub(confirming)
    });
    if retained > 0 {
        lockstep_plugin_sdk::tracing::debug!(
            slot = %plan.slot,
            retained_wal_bytes = retained,
            "the replication slot retains WAL"
        );
    }
    let copy = temporary_name(&plan.slot);
    slot::copy_temporary(&mut *conn, &plan.slot, &copy).await?;
    // Each pass over the WAL (a confirmation, a read) decodes from the slot's restart point,
    // whatever the position: confirming the slot on a connection of its own while the copy is
    // read overlaps the two passes. The copy was taken before the confirmation, so it returns
    // the changes up to the checkpoint too; they are skipped by position.
    let confirmation = async {
        let Some(lsn) = confirm else {
            return Ok(());
        };
        let mut own = plan.settings.connect().await?;
        let advanced = slot::advance(&mut own, &plan.slot, lsn).await;
        crate::config::close(own).await;
        advanced
    };
    let read = changes(
        plan,
        &copy,
        &mut *conn,
        &mut *side,
        &mut position,
        retained,
        out,
    );
    let (confirmed, read) = tokio::join!(confirmation, read);
    if read.is_ok() && !plan.dry_run && !snapshot_anchor {
        leave_anchor(&plan.settings, &mut *conn, &copy, &anchor).await;
    }
    let _ = sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(&copy)
        .execute(&mut *conn)
        .await;
    read?;
    confirmed.map_err(Failure::from)
}

/// The anchor's hand-over at the start of a run: when the anchor slot the last run left
/// (`leave_anchor`, `create_anchor`) sits at or before the committed checkpoint, and at or
/// after the sync's slot, the slot is replaced by a copy of it (same restart and confirmed
/// positions), which confirms nothing past the checkpoint and spares the server a decoding
/// pass. An anchor of this sync that cannot be used is dropped; one of another
/// database or plugin is left alone. A kill between the slot's drop and the copy is finished
/// by the next run, which finds the anchor and no slot. Returns the slot as it is after.
async fn take_anchor(
    conn: &mut PgConnection,
    name: &str,
    anchor: &str,
    checkpoint: Option<&CdcCheckpoint>,
    info: Option<slot::SlotInfo>,
) -> Result<Option<slot::SlotInfo>> {
    let Some(found) = slot::slot(conn, anchor).await? else {
        return Ok(info);
    };
    let database = slot::current_database(conn).await?;
    if found.plugin != "pgoutput" || found.database != database {
        return Ok(info);
    }
    let committed = checkpoint
        .filter(|c| c.phase == Phase::Changes)
        .and_then(|c| parse_lsn(&c.lsn));
    let usable = !found.lost
        && committed.is_some_and(|lsn| found.confirmed_flush <= lsn)
        && info
            .as_ref()
            .is_none_or(|i| i.lost || i.confirmed_flush <= found.confirmed_flush);
    if usable {
        if info.is_some() {
            slot::drop_slot(conn, name).await?;
        }
        slot::copy_persistent(conn, anchor, name).await?;
        lockstep_plugin_sdk::tracing::debug!(
            slot = name,
            lsn = %format_lsn(found.confirmed_flush),
            "took over the anchor slot the last run left"
        );
    }
    sqlx::query("SELECT pg_drop_replication_slot($1)")
        .bind(anchor)
        .execute(&mut *conn)
        .await
        .map_err(|e| {
            let mut e = crate::error::map_sqlx(e);
            e.message.push_str(&format!(
                " (dropping the anchor replication slot `{anchor}`)"
            ));
            e
        })?;
    if usable {
        slot::slot(conn, name).await
    } else {
        Ok(info)
    }
}

/// Creates the anchor slot once a snapshot is read: its start is past the WAL the snapshot
/// generated until then, the destination's writes included when it is on the same server.
/// The run goes on to read the changes since the slot's start, so its last checkpoint is at
/// or past the anchor's start, and the next run takes the anchor over (`take_anchor`).
/// Creating a slot waits for the transactions running on the server to end: past
/// `ANCHOR_WAIT` the run goes on without an anchor (the next run then confirms the slot the
/// slow way), as it does on any other failure.
async fn create_anchor(settings: &Settings, anchor: &str) {
    let created = async {
        let mut own = settings.connect().await?;
        let created = async {
            sqlx::query(&format!("SET statement_timeout = '{ANCHOR_WAIT}'"))
                .execute(&mut own)
                .await
                .map_err(crate::error::map_sqlx)?;
            slot::create_slot(&mut own, anchor).await
        }
        .await;
        crate::config::close(own).await;
        created
    }
    .await;
    if let Err(e) = created {
        lockstep_plugin_sdk::tracing::info!(
            slot = anchor,
            "no anchor slot for the snapshot ({}); the next run confirms the slot by decoding \
             the snapshot's WAL",
            settings.scrub_error(e).message
        );
    }
}

/// Leaves the anchor for the next run once the changes are read: a persistent copy of the
/// consumed temporary copy, so confirmed exactly at the run's last checkpoint, and with a
/// restart point the read itself moved forward. When the state store commits that
/// checkpoint, the next run takes the anchor over (`take_anchor`) and its read decodes from
/// there; without it, the next run would confirm the slot with a decoding pass from the
/// slot's restart point (which lags a run behind, since the SQL interface moves it only to
/// the first candidate past the old confirmed position) and read a copy taken before that,
/// decoding the WAL of the last two runs twice. A copy takes no decoding and waits for no
/// transaction. On failure the run goes on without an anchor (the next run confirms the slow
/// way).
async fn leave_anchor(settings: &Settings, conn: &mut PgConnection, copy: &str, anchor: &str) {
    if let Err(e) = slot::copy_persistent(conn, copy, anchor).await {
        lockstep_plugin_sdk::tracing::info!(
            slot = anchor,
            "no anchor slot for the next run ({}); it confirms the slot by decoding the WAL \
             since the slot's restart point",
            settings.scrub_error(e).message
        );
    }
}

/// How long a snapshot run waits to create its anchor slot.
const ANCHOR_WAIT: &str = "10s";

/// How far the changes were applied.
#[derive(Clone, Copy, Debug)]
struct Position {
    /// The end LSN of the last transaction applied (or skipped) whole.
    done: u64,
    /// The transaction applied in part: its commit LSN and how many of its changes to the
    /// table were applied.
    partial: Option<(u64, u64)>,
}

/// The transaction being decoded.
struct Txn {
    final_lsn: u64,
    /// Changes to the table seen so far.
    seen: u64,
    /// Changes to skip from its start (applied by an earlier run).
    skip: u64,
}

async fn changes(
    plan: &CdcPlan,
    copy: &str,
    conn: &mut PgConnection,
    side: &mut PgConnection,
    position: &mut Position,
    retained: u64,
    out: &mut Outlet,
) -> Flow {
    let resume = *position;
    let mut buffer = ChangeBuffer::default();
    let mut positions: Option<(u32, Positions)> = None;
    let mut txn: Option<Txn> = None;
    let sql = "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, $2, \
               'proto_version', '1', 'publication_names', $3, 'binary', $4)";
    // The destination holds every change committed before this, once the checkpoint is
    // committed: the last whole transaction's commit time, or the start of the last look at a
    // change log that then had nothing more.
    let mut caught_up: Option<String> = plan
        .checkpoint
        .as_ref()
        .and_then(|c| c.caught_up_at.clone());
    let checkpoint = |position: &Position, caught_up: &Option<String>| CdcCheckpoint {
        slot: plan.slot.clone(),
        phase: Phase::Changes,
        lsn: format_lsn(position.done),
        snapshot: None,
        txn: position.partial.map(|(lsn, _)| format_lsn(lsn)),
        changes: position.partial.map(|(_, n)| n),
        retained_wal_bytes: retained,
        caught_up_at: caught_up.clone(),
    };
    loop {
        let mut rows = 0usize;
        let looked = chrono::Utc::now();
        let mut stream = sqlx::query(sql)
            .bind(copy)
            .bind(CHUNK_CHANGES)
            .bind(&plan.publication)
            .bind(if plan.layout.binary { "true" } else { "false" })
            .fetch(&mut *conn);
        while let Some(row) = poll_fn(|cx| Pin::new(&mut stream).poll_next(cx)).await {
            let row = row.map_err(crate::error::map_sqlx)?;
            rows += 1;
            let data: Vec<u8> = row.try_get(0).map_err(crate::error::map_sqlx)?;
            let message = pgoutput::parse(&data).map_err(|e| {
                ConnectorError::internal(format!(
                    "{e} (after LSN {} of slot `{}`)",
                    format_lsn(position.done),
                    plan.slot
                ))
            })?;
            match message {
                Message::Begin { final_lsn, .. } => {
                    let skip = if final_lsn < resume.done {
                        u64::MAX
                    } else {
                        match resume.partial {
                            Some((lsn, n)) if lsn == final_lsn => n,
                            _ => 0,
                        }
                    };
                    txn = Some(Txn {
                        final_lsn,
                        seen: 0,
                        skip,
                    });
                }
                Message::Commit {
                    end_lsn, timestamp, ..
                } => {
                    txn = None;
                    position.done = position.done.max(end_lsn);
                    position.partial = None;
                    caught_up = Some(pgoutput::format_timestamp(timestamp));
                    if buffer.len() >= plan.batch_size {
                        emit(
                            plan,
                            side,
                            key_types(&positions),
                            &mut buffer,
                            checkpoint(position, &caught_up),
                            out,
                        )
                        .await?;
                    }
                }
                Message::Relation(relation) => {
                    if relation.namespace == plan.layout.schema_name
                        && relation.name == plan.layout.table
                    {
                        positions = Some((relation.oid, relation_positions(plan, &relation)?));
                    }
                }
                Message::Truncate { relations, .. } => {
                    let ours = positions
                        .as_ref()
                        .is_some_and(|(oid, _)| relations.contains(oid));
                    let skipped = txn.as_ref().is_some_and(|t| t.skip == u64::MAX);
                    if ours && !skipped {
                        return Err(ConnectorError::schema(format!(
                            "table `{}` was truncated (in the transaction committed at LSN {}): \
                             a truncate has no rows to delete by key, so cdc cannot apply it \
                             (slot `{}`). {RESET}: the new snapshot's key-set reconciliation \
                             deletes the truncated records (past max_delete_fraction they wait \
                             for `lockstep deletes`)",
                            plan.layout.table,
                            txn.as_ref()
                                .map_or_else(String::new, |t| format_lsn(t.final_lsn)),
                            plan.slot
                        ))
                        .into());
                    }
                }
                Message::Insert { relation, .. }
                | Message::Update { relation, .. }
                | Message::Delete { relation, .. } => {
                    let Some((oid, pos)) = &positions else {
                        continue;
                    };
                    if relation != *oid {
                        continue;
                    }
                    let Some(t) = txn.as_mut() else {
                        return Err(ConnectorError::internal(format!(
                            "slot `{}`: a change arrived outside a transaction",
                            plan.slot
                        ))
                        .into());
                    };
                    t.seen += 1;
                    if t.seen <= t.skip {
                        continue;
                    }
                    match &message {
                        Message::Insert { new, .. } => buffer.insert(&plan.layout, pos, new)?,
                        Message::Update { old, new, .. } => {
                            buffer.update(&plan.layout, pos, old.as_ref(), new)?
                        }
                        Message::Delete { old, .. } => buffer.delete(&plan.layout, pos, old)?,
                        _ => {}
                    }
                    let (final_lsn, seen) = (t.final_lsn, t.seen);
                    if buffer.len() >= plan.batch_size {
                        position.partial = Some((final_lsn, seen));
                        emit(
                            plan,
                            side,
                            key_types(&positions),
                            &mut buffer,
                            checkpoint(position, &caught_up),
                            out,
                        )
                        .await?;
                    }
                }
                Message::Origin { .. } | Message::Type { .. } | Message::Message { .. } => {}
            }
        }
        drop(stream);
        // PostgreSQL stops a call early only once it returned `CHUNK_CHANGES` rows; fewer
        // mean it decoded up to the end of the WAL as it was when the call began. Each call
        // decodes again from the slot's restart point, so asking once more to hear "nothing"
        // would cost a whole extra pass over the WAL.
        if rows < CHUNK_CHANGES as usize {
            if txn.is_none() {
                caught_up = Some(looked.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
            }
            break;
        }
    }
    if txn.is_some() {
        return Err(ConnectorError::internal(format!(
            "slot `{}`: the changes ended inside a transaction",
            plan.slot
        ))
        .into());
    }
    // The copy has consumed the WAL up to its confirmed position, transactions of other
    // tables included (pgoutput sends nothing for those): the position moves past them too,
    // or a busy database would make the slot of a quiet table retain its WAL forever.
    if let Some(consumed) = slot::slot(conn, copy).await? {
        if consumed.confirmed_flush > position.done && position.partial.is_none() {
            position.done = consumed.confirmed_flush;
        }
    }
    // A run that found nothing still records its measurement of the retained WAL, which the
    // daemon's alert reads from the checkpoint, and how far it caught up (the lag).
    emit(
        plan,
        side,
        key_types(&positions),
        &mut buffer,
        checkpoint(position, &caught_up),
        out,
    )
    .await
}

/// The key columns' type OIDs of the table's latest Relation message.
fn key_types(positions: &Option<(u32, Positions)>) -> &[u32] {
    positions
        .as_ref()
        .map_or(&[], |(_, p)| p.key_types.as_slice())
}

/// Sends the buffered changes as one batch with `checkpoint`.
async fn emit(
    plan: &CdcPlan,
    side: &mut PgConnection,
    key_types: &[u32],
    buffer: &mut ChangeBuffer,
    checkpoint: CdcCheckpoint,
    out: &mut Outlet,
) -> Flow {
    let mut rows = buffer.take();
    let gone = changes::fill_unchanged(side, &plan.layout, key_types, &mut rows).await?;
    if gone > 0 {
        lockstep_plugin_sdk::tracing::debug!(
            rows = gone,
            "updates of rows the table no longer has are left to their later deletes"
        );
    }
    // The rows are consumed by the decoding: the batch waits for the host's request alone.
    let batch = changes::to_batch(side, &plan.layout, rows).await?;
    out.send(Ok(Some((batch, checkpoint_value(&checkpoint)))))
        .await?;
    Ok(())
}

/// Where the layout's columns are in `relation`; refuses a relation without one of them.
fn relation_positions(plan: &CdcPlan, relation: &pgoutput::Relation) -> Result<Positions> {
    let find = |name: &str| {
        relation
            .columns
            .iter()
            .position(|c| c.name == name)
            .ok_or_else(|| {
                ConnectorError::schema(format!(
                    "column `{name}` of table `{}` is not in the change log's description of \
                     the table any more (dropped or renamed); the next run reads the table's \
                     new shape and applies the sync's schema-evolution rules",
                    plan.layout.table
                ))
            })
    };
    Ok(Positions {
        columns: plan
            .layout
            .columns
            .iter()
            .map(|c| {
                if c.generated && !relation.columns.iter().any(|r| r.name == c.name) {
                    Ok(None)
                } else {
                    find(&c.name).map(Some)
                }
            })
            .collect::<Result<_>>()?,
        key: plan
            .layout
            .key
            .iter()
            .map(|k| find(k))
            .collect::<Result<_>>()?,
        key_types: plan
            .layout
            .key
            .iter()
            .map(|k| find(k).map(|i| relation.columns[i].type_oid))
            .collect::<Result<_>>()?,
    })
}

/// A name for the session's temporary copy of `slot`, unique on the server.
fn temporary_name(slot: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{}{}_{nanos}",
        slot::temporary_prefix(slot),
        std::process::id()
    )
}
