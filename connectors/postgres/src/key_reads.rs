//! Reads by keys served one after another by one thread and one connection of the source.
//!
//! A two-way run reads back what it wrote after every chunk, and `lockstep verify` and
//! `lockstep rejects retry` fetch records by key in rounds: every such read used to open a
//! connection (a backend process, TLS, authentication: 5 to 10 ms here, more to a remote
//! server) and a thread of its own. A source now keeps one thread for its reads by keys, with
//! its runtime and its connection, which it keeps between reads.
//!
//! Invariants:
//! - One read at a time: a read by keys that finds the thread busy (another read by keys of
//!   the same source not finished or not dropped yet) gets a thread and a connection of its
//!   own, as every other read does, so readers held at once never wait for each other.
//! - The connection is idle between reads: every batch is one whole COPY, and the thread
//!   takes the next read only once the last one's reader has its end or is gone.
//! - A transient failure drops the connection, as in every reader; the next request
//!   reconnects. A kept connection that fails transiently at a read's first query (the
//!   server ended it between reads) is replaced at once and the query tried again.
//! - The connection ends as its protocol asks (`Terminate`) when the source is closed or
//!   dropped: the thread ends when its job channel closes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::{ConnectorError, Context, Result};
use sqlx::PgConnection;
use tokio::sync::{mpsc, oneshot};

use crate::config::Settings;
use crate::read::{fetch, BatchResult, PgReader, ReadPlan};

/// One read by keys for the thread: its plan and its reader's channels.
struct KeyJob {
    plan: ReadPlan,
    go: mpsc::UnboundedReceiver<()>,
    tx: mpsc::Sender<BatchResult>,
}

/// The source's thread for reads by keys.
pub(crate) struct KeyReads {
    jobs: mpsc::UnboundedSender<KeyJob>,
    /// A read is in hand (claimed by [`KeyReads::try_start`], released by the thread).
    busy: Arc<AtomicBool>,
    /// Told when the thread has closed its connection and ends.
    ended: Option<oneshot::Receiver<()>>,
}

impl KeyReads {
    /// Starts the thread (it connects at its first read).
    pub(crate) fn start(settings: Settings) -> Result<Self> {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let busy = Arc::new(AtomicBool::new(false));
        let (ended_tx, ended) = oneshot::channel();
        let released = busy.clone();
        std::thread::Builder::new()
            .name("lockstep-pg-keys".into())
            .spawn(move || serve(settings, receiver, released, ended_tx))
            .map_err(|e| ConnectorError::internal(format!("cannot start a reader thread: {e}")))?;
        Ok(KeyReads {
            jobs,
            busy,
            ended: Some(ended),
        })
    }

    /// The read of `plan` on this thread, or the plan back when the thread is busy or gone.
    pub(crate) fn try_start(
        &self,
        plan: ReadPlan,
        ctx: Context,
    ) -> std::result::Result<PgReader, Box<ReadPlan>> {
        if self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Box::new(plan));
        }
        let label = plan.label().to_owned();
        let (go, go_rx) = mpsc::unbounded_channel();
        let (tx, batches) = mpsc::channel(1);
        match self.jobs.send(KeyJob {
            plan,
            go: go_rx,
            tx,
        }) {
            Ok(()) => Ok(PgReader::from_channels(label, ctx, go, batches)),
            // The thread is gone (its runtime could not start): the flag stays claimed, so
            // every later read takes a thread of its own.
            Err(mpsc::error::SendError(job)) => Err(Box::new(job.plan)),
        }
    }

    /// Ends the thread: it closes its connection once the read in hand (if any) is over.
    /// Waits for that only when no read is in hand, since a reader still held would keep it.
    pub(crate) async fn close(mut self) {
        let idle = !self.busy.load(Ordering::Acquire);
        let ended = self.ended.take();
        drop(self);
        if let (true, Some(ended)) = (idle, ended) {
            let _ = ended.await;
        }
    }
}

/// The thread: one read after another on one connection, until the source lets go.
fn serve(
    settings: Settings,
    mut jobs: mpsc::UnboundedReceiver<KeyJob>,
    busy: Arc<AtomicBool>,
    ended: oneshot::Sender<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        // Without a runtime the thread ends; the reads find it gone and take their own.
        Err(_) => return,
    };
    runtime.block_on(async move {
        let mut conn: Option<PgConnection> = None;
        while let Some(job) = jobs.recv().await {
            if !run(&settings, &mut conn, job, &busy).await {
                busy.store(false, Ordering::Release);
            }
        }
        if let Some(conn) = conn.take() {
            crate::config::close(conn).await;
        }
        let _ = ended.send(());
    });
}

/// One read: one batch per request of its reader, until its end or the reader's drop.
/// Returns whether it released `busy` itself: at the read's end it does so before handing
/// over the end, so that a read started as soon as this one ended finds the thread free (the
/// connection is idle by then; the next job only waits for that last hand-over).
async fn run(
    settings: &Settings,
    conn: &mut Option<PgConnection>,
    job: KeyJob,
    busy: &AtomicBool,
) -> bool {
    let KeyJob {
        mut plan,
        mut go,
        tx,
    } = job;
    // A connection kept from an earlier read may have ended meanwhile (a server restart, an
    // idle-session timeout): a transient failure of its first query is tried once more on
    // a new connection, as a new thread would have started.
    let mut retry_once = conn.is_some();
    while go.recv().await.is_some() {
        let mut result = fetch_on(settings, conn, &mut plan).await;
        if retry_once
            && result
                .as_ref()
                .is_err_and(|e| e.kind == ErrorKind::TRANSIENT)
        {
            *conn = None;
            result = fetch_on(settings, conn, &mut plan).await;
        }
        retry_once = false;
        let result = result.map_err(|e| {
            if e.kind == ErrorKind::TRANSIENT {
                *conn = None;
            }
            settings.scrub_error(e.context(plan.label()))
        });
        let end = matches!(result, Ok(None));
        if end {
            busy.store(false, Ordering::Release);
        }
        if tx.send(result).await.is_err() || end {
            return end;
        }
    }
    false
}

/// The next batch of `plan` on `conn`, connecting first when there is none.
async fn fetch_on(
    settings: &Settings,
    conn: &mut Option<PgConnection>,
    plan: &mut ReadPlan,
) -> BatchResult {
    if conn.is_none() {
        *conn = Some(settings.connect().await?);
    }
    fetch(conn.as_mut().expect("set just above"), plan).await
}
