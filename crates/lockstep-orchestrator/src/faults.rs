//! Fault injection for the crash tests: `LOCKSTEP_FAULT=<point>:<batch>` aborts the process
//! at that point of that batch, as a `kill -9` would, with nothing flushed or cleaned up.
//!
//! Points of a batch (with or without a ledger): `before-write`, `before-flush`,
//! `after-flush` (the destination has the batch but the state store does not: the window the
//! commit protocol must survive) and `after-commit`. Points of the delete phase, where the
//! number counts pages of approved deletes (from tombstones and reconciliation alike):
//! `before-delete` (the ledger has forgotten the page's records, the destination still has
//! them) and `after-delete` (the destination has flushed the delete, the state store still
//! lists it as approved). In a two-way run the number counts chunks of touched keys:
//! `after-flush` (both sides flushed the chunk's writes, its base rows are not committed) and
//! `after-commit` (the chunk's base rows are, the checkpoints are not); `before-delete:1` and
//! `after-delete:1` bracket the run's deletes, which come after every chunk. Unset, it costs
//! one relaxed load per batch.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultPoint {
    BeforeWrite,
    BeforeFlush,
    AfterFlush,
    AfterCommit,
    BeforeDelete,
    AfterDelete,
}

impl FaultPoint {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "before-write" => FaultPoint::BeforeWrite,
            "before-flush" => FaultPoint::BeforeFlush,
            "after-flush" => FaultPoint::AfterFlush,
            "after-commit" => FaultPoint::AfterCommit,
            "before-delete" => FaultPoint::BeforeDelete,
            "after-delete" => FaultPoint::AfterDelete,
            _ => return None,
        })
    }
}

fn configured() -> Option<(FaultPoint, u64)> {
    static FAULT: OnceLock<Option<(FaultPoint, u64)>> = OnceLock::new();
    *FAULT.get_or_init(|| {
        let text = std::env::var("LOCKSTEP_FAULT").ok()?;
        let (point, batch) = text.split_once(':')?;
        let parsed = (FaultPoint::parse(point)?, batch.parse().ok()?);
        tracing::warn!("fault injection armed: {text}");
        Some(parsed)
    })
}

/// Aborts the process if the configured fault is this point of this batch.
pub(crate) fn fault_point(point: FaultPoint, batch: u64) {
    if configured() == Some((point, batch)) {
        eprintln!("lockstep: injected fault {point:?} at batch {batch}: aborting");
        std::process::abort();
    }
}
