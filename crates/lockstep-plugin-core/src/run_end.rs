//! The end of a run, told to a destination as a tagged empty batch.
//!
//! A destination that replaces what it holds at the end of each run (the files connector's
//! snapshot mode) must know when a run has written everything it will write. The ABI has no
//! call for it, and a new one would be an ABI change; so the engine sends, to destinations
//! whose manifest declares the `run-end` feature only, one `upsert` of an empty batch whose
//! schema metadata holds `lockstep.batch = run-end`, then a `flush`, after the run's last
//! batch and only when the run's read completed. Older plugins never declare the feature and
//! never receive it.
//!
//! The batch also says whether the run wrote every record it read (`lockstep.every_record`:
//! mode `full` without a ledger); a run with a ledger skips unchanged records, so a snapshot
//! built from it would miss them, and a snapshot destination must refuse to publish it.
//!
//! Invariants: the batch has no rows and one placeholder column (`run_end`, a batch needs
//! a column to cross the C Data Interface); it is recognised by its metadata alone.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;

use crate::source_rejects::BATCH_KIND;

/// The value of [`BATCH_KIND`] for the end of a run.
pub const RUN_END: &str = "run-end";

/// The metadata key saying whether the run wrote every record it read (`true`/`false`).
pub const EVERY_RECORD: &str = "lockstep.every_record";

/// The manifest feature of a destination that wants to be told the end of each run.
pub const FEATURE_RUN_END: &str = "run-end";

/// The batch that tells a destination its run has written everything.
pub fn run_end_batch(every_record: bool) -> Result<RecordBatch, ArrowError> {
    let schema = Schema::new(vec![Field::new("run_end", DataType::Boolean, true)]).with_metadata(
        HashMap::from([
            (BATCH_KIND.to_owned(), RUN_END.to_owned()),
            (EVERY_RECORD.to_owned(), every_record.to_string()),
        ]),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        vec![Arc::new(BooleanArray::from(Vec::<bool>::new()))],
    )
}

/// Whether `batch` is the end of a run rather than records.
pub fn is_run_end_batch(batch: &RecordBatch) -> bool {
    batch
        .schema()
        .metadata()
        .get(BATCH_KIND)
        .is_some_and(|kind| kind == RUN_END)
}

/// Whether the run that ended wrote every record it read.
pub fn run_wrote_every_record(batch: &RecordBatch) -> bool {
    batch
        .schema()
        .metadata()
        .get(EVERY_RECORD)
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{export_batch, import_batch, Validation};

    #[test]
    fn the_run_end_crosses_the_boundary_and_is_recognised() {
        let batch = run_end_batch(true).expect("build");
        let back =
            import_batch(export_batch(batch).expect("export"), Validation::Full).expect("import");
        assert!(is_run_end_batch(&back));
        assert_eq!(back.num_rows(), 0);
        assert!(run_wrote_every_record(&back));
        assert!(!run_wrote_every_record(
            &run_end_batch(false).expect("build")
        ));
        let plain = RecordBatch::new_empty(Arc::new(Schema::new(vec![Field::new(
            "run_end",
            DataType::Boolean,
            true,
        )])));
        assert!(!is_run_end_batch(&plain));
    }
}
