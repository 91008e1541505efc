//! Reconciliation by merging two key-ordered streams, for single integer keys: the source's
//! and the destination's keys are read at once, each in ascending order, and walked side by
//! side like the two halves of a merge sort. A destination key the walk passes without
//! meeting it in the source is one the source no longer has. Nothing is held but the batch
//! in hand on each side, and the two reads overlap instead of running one after the other
//! (the hash method keeps 8 bytes per source record and reads the destination only once the
//! source is done).
//!
//! Invariants:
//! - Used only for a key of one field whose values are integers on both sides: integers
//!   order alike in every system, so both ascending orders are the same order. The walk
//!   checks it: every key read must be greater than the one before it on its side. A key
//!   out of order (a connector that does not read in key order, a duplicate key) or a key
//!   that is not an integer makes the merge decline, and the caller reconciles by hashes.
//! - A decline may come after some deletes were recorded as pending. Recording a pending
//!   delete twice changes nothing (the state keeps one per key), and every key recorded
//!   here is a destination key the source provably lacked, so the hash method that follows
//!   finds it again. Plans (which count what they record) never merge.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::{
    DataType as ArrowType, Int16Type, Int32Type, Int64Type, Int8Type, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use lockstep_core::record_keys;
use lockstep_plugin_core::source_rejects::is_rejects_batch;
use lockstep_plugin_host::BatchStream;
use lockstep_state::DeleteOrigin;

use crate::context::Context;
use crate::error::EngineError;
use crate::job::RunState;
use crate::sink::Sink;

/// How a merge ended.
pub(super) enum Merged {
    /// The destination's keys were all walked; this many.
    Done { in_destination: u64, gone: u64 },
    /// The keys were not both ascending integers; why, for the log.
    Declined(String),
}

/// Maps a batch as read into the batch whose key field is compared.
pub(super) type MapBatch<'m> =
    &'m (dyn Fn(&RecordBatch) -> Result<RecordBatch, EngineError> + Sync);

/// Why a walk stopped early: it declines (the reason, for the log), or it failed.
enum Stop {
    Decline(String),
    Fail(EngineError),
}

impl From<EngineError> for Stop {
    fn from(e: EngineError) -> Self {
        Stop::Fail(e)
    }
}

/// One side's keys, a batch at a time, checked to ascend.
struct Ascending<'m> {
    reader: BatchStream,
    side: &'static str,
    /// The field holding the key in this side's (mapped) batches.
    field: String,
    map: Option<MapBatch<'m>>,
    batch: Option<RecordBatch>,
    keys: Vec<i128>,
    at: usize,
    last: Option<i128>,
    /// Rows of `batch` the source lacks (destination side only).
    gone: Vec<u32>,
    /// The record keys of the gone rows of batches already left behind.
    left_gone: Vec<String>,
}

impl<'m> Ascending<'m> {
    fn new(
        reader: BatchStream,
        side: &'static str,
        field: &str,
        map: Option<MapBatch<'m>>,
    ) -> Self {
        Ascending {
            reader,
            side,
            field: field.to_owned(),
            map,
            batch: None,
            keys: Vec::new(),
            at: 0,
            last: None,
            gone: Vec::new(),
            left_gone: Vec::new(),
        }
    }

    /// The next key, reading the next batch when this one is done (`None` at the end).
    async fn peek(&mut self) -> Result<Option<i128>, Stop> {
        while self.at >= self.keys.len() {
            self.leave_batch()?;
            let Some((batch, _)) = self.reader.next().await.map_err(EngineError::from)? else {
                return Ok(None);
            };
            if is_rejects_batch(&batch) {
                return Err(Stop::Decline(format!(
                    "the {} could not read {} of its records",
                    self.side,
                    batch.num_rows()
                )));
            }
            let batch = match self.map {
                Some(map) => map(&batch)?,
                None => batch,
            };
            let column = batch.column_by_name(&self.field).ok_or_else(|| {
                EngineError::Internal(format!(
                    "the {}'s key batch lacks key field `{}`",
                    self.side, self.field
                ))
            })?;
            self.keys = integers(column).ok_or_else(|| {
                Stop::Decline(format!(
                    "the {}'s key field `{}` holds {}, not integers without nulls",
                    self.side,
                    self.field,
                    column.data_type()
                ))
            })?;
            for &key in &self.keys {
                if let Some(last) = self.last.filter(|&last| key <= last) {
                    return Err(Stop::Decline(format!(
                        "the {} did not read its keys in ascending order ({key} after {last})",
                        self.side
                    )));
                }
                self.last = Some(key);
            }
            self.batch = Some(batch);
            self.at = 0;
        }
        Ok(Some(self.keys[self.at]))
    }

    fn advance(&mut self) {
        self.at += 1;
    }

    /// Marks the key in hand as one the source lacks, and moves past it.
    fn mark_gone(&mut self) {
        self.gone.push(self.at as u32);
        self.at += 1;
    }

    /// Turns the gone rows of the batch in hand into record keys (as the engine writes
    /// them), kept in `left_gone`, before the batch is dropped.
    fn leave_batch(&mut self) -> Result<(), EngineError> {
        if let (Some(batch), false) = (self.batch.take(), self.gone.is_empty()) {
            let rows = UInt32Array::from(std::mem::take(&mut self.gone));
            let picked = take_record_batch(&batch, &rows)
                .map_err(|e| EngineError::Internal(format!("picking the deleted keys: {e}")))?;
            self.left_gone
                .extend(record_keys(&picked, std::slice::from_ref(&self.field))?);
        }
        Ok(())
    }
}

/// The values of an integer column as `i128` (every integer type fits), or `None` for any
/// other type or a null.
fn integers(column: &ArrayRef) -> Option<Vec<i128>> {
    if column.null_count() > 0 {
        return None;
    }
    macro_rules! widen {
        ($t:ty) => {
            column
                .as_primitive::<$t>()
                .values()
                .iter()
                .map(|&v| i128::from(v))
                .collect()
        };
    }
    Some(match column.data_type() {
        ArrowType::Int8 => widen!(Int8Type),
        ArrowType::Int16 => widen!(Int16Type),
        ArrowType::Int32 => widen!(Int32Type),
        ArrowType::Int64 => widen!(Int64Type),
        ArrowType::UInt8 => widen!(UInt8Type),
        ArrowType::UInt16 => widen!(UInt16Type),
        ArrowType::UInt32 => widen!(UInt32Type),
        ArrowType::UInt64 => widen!(UInt64Type),
        _ => return None,
    })
}

/// Walks the source's keys (`source`, mapped through the key's mapping by `map`) and the
/// destination's (`destination`) side by side and records, a destination batch at a time,
/// the destination keys the source lacks as pending deletes.
pub(super) async fn merge<S: Sink>(
    ctx: &Context<'_>,
    sink: &mut S,
    run: &mut RunState,
    source: BatchStream,
    map: MapBatch<'_>,
    destination: BatchStream,
    key_field: &str,
) -> Result<Merged, EngineError> {
    let mut src = Ascending::new(source, "source", key_field, Some(map));
    let mut dst = Ascending::new(destination, "destination", key_field, None);
    let mut in_destination = 0u64;
    let mut gone = 0u64;
    let walked = async {
        loop {
            let d = dst.peek().await?;
            if !dst.left_gone.is_empty() {
                let keys = std::mem::take(&mut dst.left_gone);
                gone += keys.len() as u64;
                sink.wait_deletes(ctx, run, DeleteOrigin::Reconcile, &keys, &[])
                    .await?;
            }
            let Some(d) = d else {
                return Ok::<(), Stop>(());
            };
            in_destination += 1;
            loop {
                match src.peek().await? {
                    Some(s) if s < d => src.advance(),
                    Some(s) if s == d => {
                        src.advance();
                        dst.advance();
                        break;
                    }
                    _ => {
                        dst.mark_gone();
                        break;
                    }
                }
            }
        }
    };
    match walked.await {
        Ok(()) => Ok(Merged::Done {
            in_destination,
            gone,
        }),
        Err(Stop::Decline(reason)) => Ok(Merged::Declined(reason)),
        Err(Stop::Fail(e)) => Err(e),
    }
}
