//! Fault injection for the crash tests: `LOCKSTEP_FAULT=<point>:<batch>` aborts the process
//! at that point of that batch, as a `kill -9` would, with nothing flushed or cleaned up.
//!
//! Points: `before-write`, `before-flush`, `after-flush` (the destination has the batch but
//! the state store does not: the window the commit protocol must survive) and
//! `after-commit`. Unset, it costs one relaxed load per batch.

use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FaultPoint {
    BeforeWrite,
    BeforeFlush,
    AfterFlush,
    AfterCommit,
}

impl FaultPoint {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "before-write" => FaultPoint::BeforeWrite,
            "before-flush" => FaultPoint::BeforeFlush,
            "after-flush" => FaultPoint::AfterFlush,
            "after-commit" => FaultPoint::AfterCommit,
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
