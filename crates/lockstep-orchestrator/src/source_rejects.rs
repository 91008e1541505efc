//! Records the source could not read (a batch tagged as source rejects, see
//! `lockstep_plugin_core::source_rejects`), stored and counted as every rejected record is.
//!
//! Invariants:
//! - Each source reject is one rejected record of the run, stored in the same state commit as
//!   the checkpoint that follows it, and counted once in the run's `read` and `rejected`.
//! - A source reject never holds the checkpoint back: the records after it still arrive.
//! - Its stored row is `{"source_reject": {..location, "text": raw}}`, which `lockstep
//!   rejects retry` recognises (a source reject has no key to read again by).

use lockstep_core::RunMetrics;
use lockstep_plugin_core::source_rejects::{rejects_from_batch, SourceReject};
use lockstep_state::{BatchCommit, RejectedRecord};
use serde_json::{Map, Value};

use crate::context::Context;
use crate::error::EngineError;
use crate::job::RunState;
use crate::sink::Sink;

/// The key of a stored source reject's row.
pub(crate) const STORED_KEY: &str = "source_reject";

/// Stores the rejects of one source-rejects `batch` and commits the checkpoint after them.
pub(crate) async fn apply_source_rejects<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    batch: &arrow::array::RecordBatch,
    checkpoint: Value,
) -> Result<(), EngineError> {
    let spec = &ctx.job.spec;
    let rejects = rejects_from_batch(batch).map_err(|reason| {
        EngineError::Schema(format!(
            "sync `{}`: the source connector `{}` sent a malformed batch of rejected \
             records ({reason}); this is a bug in the connector, report it to its authors",
            spec.name, ctx.job.source.connector
        ))
    })?;
    let rejected: Vec<RejectedRecord> = rejects
        .iter()
        .map(|r| stored(&spec.name, run.run_id, r))
        .collect();
    let count = rejected.len() as u64;
    run.metrics.add(&RunMetrics {
        read: count,
        rejected: count,
        ..Default::default()
    });
    run.batches += 1;
    sink.sample_rejects(&rejected);
    let new_checkpoint = (spec.mode.uses_cursor() && !checkpoint.is_null()).then_some(checkpoint);
    sink.commit(&BatchCommit {
        sync: &spec.name,
        run: run.run_id,
        lease_token: ctx.lease_token(),
        ledger_upserts: &[],
        ledger_keys_new: false,
        ledger_deletes: &[],
        checkpoint: new_checkpoint.as_ref(),
        metrics: &run.metrics,
        rejected: &rejected,
    })
    .await?;
    if let Some(c) = new_checkpoint {
        run.checkpoint = Some(c);
    }
    tracing::debug!(count, "source rejects committed");
    Ok(())
}

/// A source reject as the state store keeps it.
fn stored(sync: &str, run: i64, reject: &SourceReject) -> RejectedRecord {
    let mut row: Map<String, Value> = reject.location.clone();
    row.insert("text".into(), Value::String(reject.raw.clone()));
    RejectedRecord {
        id: 0,
        sync: sync.to_owned(),
        run,
        key: None,
        field: reject.field.clone(),
        reason: format!(
            "the source could not read the record at {}: {}",
            reject.location_text(),
            reject.reason
        ),
        raw: Value::Object(Map::from_iter([(
            STORED_KEY.to_owned(),
            Value::Object(row),
        )])),
        created_at: None,
        retried: None,
    }
}

/// Whether a stored rejected record is a source reject.
pub(crate) fn is_source_reject(record: &RejectedRecord) -> bool {
    record.key.is_none() && record.raw.get(STORED_KEY).is_some_and(Value::is_object)
}
