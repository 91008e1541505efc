//! Records a source could not read, passed to the engine as a tagged batch of their own.
//!
//! A source that finds a malformed record (a CSV row with the wrong number of values, a line
//! that is not JSON, a value that does not parse as its declared type) hands it on as a
//! *source reject* instead of stopping the read: the reader returns a batch whose schema
//! carries the metadata `lockstep.batch = source-rejects` and whose columns are fixed
//! (`reason`, `raw`, `location`, `field`), with the checkpoint that follows those records like
//! any other batch. The engine stores each row as a rejected record, counts it in the run's
//! `rejected` metric, and commits the checkpoint with it.
//!
//! Why a tagged batch: it needs no change to the ABI. It crosses the boundary as an ordinary
//! Arrow batch through `next_batch`, so plugins built against an older API (which never send
//! one) and the host's batch validation are unaffected.
//!
//! Invariants:
//! - A rejects batch is recognised by its schema metadata alone, never by its column names,
//!   so a stream that happens to have a `reason` column is never taken for one.
//! - A rejects batch converts back to exactly the rejects it was built from.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::error::ArrowError;
use serde_json::{Map, Value};

/// The schema metadata key that tags a batch's kind.
pub const BATCH_KIND: &str = "lockstep.batch";

/// The value of [`BATCH_KIND`] for a batch of source rejects.
pub const SOURCE_REJECTS: &str = "source-rejects";

/// One record a source could not read.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceReject {
    /// Why the record could not be read, for people.
    pub reason: String,
    /// The record's text as the source holds it (a CSV row, a JSON line).
    pub raw: String,
    /// Where the record is, as a JSON object (for files: `{"file": .., "line": ..}`).
    pub location: Map<String, Value>,
    /// The offending field, when one field is to blame.
    pub field: Option<String>,
}

impl SourceReject {
    /// Where the record is, as text: `file "a.csv", line 4` style pairs, or `unknown`.
    pub fn location_text(&self) -> String {
        if self.location.is_empty() {
            return "an unknown place".into();
        }
        self.location
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k} `{s}`"),
                other => format!("{k} {other}"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The schema of a rejects batch.
fn schema() -> Schema {
    Schema::new(vec![
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw", DataType::Utf8, false),
        Field::new("location", DataType::Utf8, false),
        Field::new("field", DataType::Utf8, true),
    ])
    .with_metadata(HashMap::from([(
        BATCH_KIND.to_owned(),
        SOURCE_REJECTS.to_owned(),
    )]))
}

/// Builds the batch that carries `rejects` to the engine.
pub fn rejects_batch(rejects: &[SourceReject]) -> Result<RecordBatch, ArrowError> {
    let reasons: StringArray = rejects.iter().map(|r| Some(r.reason.as_str())).collect();
    let raws: StringArray = rejects.iter().map(|r| Some(r.raw.as_str())).collect();
    let locations: StringArray = rejects
        .iter()
        .map(|r| Some(Value::Object(r.location.clone()).to_string()))
        .collect();
    let fields: StringArray = rejects.iter().map(|r| r.field.as_deref()).collect();
    RecordBatch::try_new(
        Arc::new(schema()),
        vec![
            Arc::new(reasons),
            Arc::new(raws),
            Arc::new(locations),
            Arc::new(fields),
        ],
    )
}

/// Whether `batch` is a batch of source rejects rather than records.
pub fn is_rejects_batch(batch: &RecordBatch) -> bool {
    batch
        .schema()
        .metadata()
        .get(BATCH_KIND)
        .is_some_and(|kind| kind == SOURCE_REJECTS)
}

/// The rejects of a rejects batch; an error names what is wrong with a malformed one.
pub fn rejects_from_batch(batch: &RecordBatch) -> Result<Vec<SourceReject>, String> {
    let column = |name: &str, nullable: bool| -> Result<&StringArray, String> {
        let array = batch
            .column_by_name(name)
            .ok_or_else(|| format!("a source-rejects batch has no `{name}` column"))?;
        let strings = array
            .as_string_opt::<i32>()
            .ok_or_else(|| format!("the `{name}` column of a source-rejects batch is not utf8"))?;
        if !nullable && strings.null_count() > 0 {
            return Err(format!(
                "the `{name}` column of a source-rejects batch has nulls"
            ));
        }
        Ok(strings)
    };
    let reasons = column("reason", false)?;
    let raws = column("raw", false)?;
    let locations = column("location", false)?;
    let fields = column("field", true)?;
    (0..batch.num_rows())
        .map(|row| {
            let location = match serde_json::from_str::<Value>(locations.value(row)) {
                Ok(Value::Object(map)) => map,
                _ => {
                    return Err(format!(
                        "row {row} of a source-rejects batch has a `location` that is not a \
                         JSON object"
                    ))
                }
            };
            Ok(SourceReject {
                reason: reasons.value(row).to_owned(),
                raw: raws.value(row).to_owned(),
                location,
                field: fields.is_valid(row).then(|| fields.value(row).to_owned()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ffi::{export_batch, import_batch, Validation};

    fn sample() -> Vec<SourceReject> {
        vec![
            SourceReject {
                reason: "3 values where the header has 2 columns".into(),
                raw: "1,a,b".into(),
                location: serde_json::json!({"file": "a.csv", "line": 4})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
                field: None,
            },
            SourceReject {
                reason: "`x` is not an integer".into(),
                raw: "x,b".into(),
                location: Map::new(),
                field: Some("id".into()),
            },
        ]
    }

    #[test]
    fn rejects_cross_the_boundary_and_come_back_equal() {
        let batch = rejects_batch(&sample()).expect("build");
        let back =
            import_batch(export_batch(batch).expect("export"), Validation::Full).expect("import");
        assert!(
            is_rejects_batch(&back),
            "the schema metadata must survive the C interface"
        );
        assert_eq!(rejects_from_batch(&back).expect("decode"), sample());
    }

    #[test]
    fn a_batch_with_the_same_columns_but_no_tag_is_records() {
        let tagged = rejects_batch(&sample()).expect("build");
        let plain = RecordBatch::try_new(
            Arc::new(Schema::new(tagged.schema().fields().clone())),
            tagged.columns().to_vec(),
        )
        .expect("plain");
        assert!(!is_rejects_batch(&plain));
    }

    #[test]
    fn the_location_reads_as_text() {
        assert_eq!(sample()[0].location_text(), "file `a.csv`, line 4");
        assert_eq!(sample()[1].location_text(), "an unknown place");
    }
}
