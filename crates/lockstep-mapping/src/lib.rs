//! Schema mapping on Arrow record batches: from the source stream's fields to the
//! destination's, as a sync's field mapping says.
//!
//! Invariants:
//! - Pure: no I/O, no clock, no randomness. The same batch and mapping give the same output.
//! - A mapping problem that can be known from the schemas alone (an unknown source field, a
//!   duplicate target) is found by [`Mapper::new`], before any record is read.
//! - A record that cannot be mapped is rejected with its row, field and reason; it never
//!   fails the whole batch and is never dropped silently.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch};
use arrow::datatypes::{Field, Schema, SchemaRef};
use lockstep_core::protocol::arrow_types::arrow_schema;
use lockstep_core::protocol::{FieldInfo, StreamInfo};
use lockstep_core::SyncSpec;

/// A mapping that does not fit the source stream.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MappingError {
    #[error("field mapping of sync `{sync}`: `{target}` reads source field `{source_field}`, which stream `{stream}` does not have; its fields are: {available}")]
    UnknownSourceField {
        sync: String,
        target: String,
        source_field: String,
        stream: String,
        available: String,
    },
    #[error("field mapping of sync `{sync}`: destination field `{target}` is mapped twice; give each destination field one source")]
    DuplicateTarget { sync: String, target: String },
    #[error("sync `{sync}`: key field `{key}` is not among the destination fields ({available}); name key fields by their destination names")]
    UnknownKey {
        sync: String,
        key: String,
        available: String,
    },
    #[error("sync `{sync}`: cursor field `{cursor}` is not a field of stream `{stream}`; its fields are: {available}")]
    UnknownCursor {
        sync: String,
        cursor: String,
        stream: String,
        available: String,
    },
    #[error("sync `{sync}`: no match key: stream `{stream}` has no primary key; set `key = [\"...\"]` in the sync")]
    NoKey { sync: String, stream: String },
    #[error("sync `{sync}`: the source's primary key field `{field}` is not carried by the field mapping; map it, or set `key` to destination fields that identify a record")]
    KeyNotMapped { sync: String, field: String },
    #[error("a batch does not have the source field `{0}` the mapping needs")]
    MissingColumn(String),
    #[error("a mapped batch does not fit the destination schema: {0}")]
    InvalidBatch(String),
}

/// A record that could not be mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct RowRejection {
    pub row: usize,
    pub field: Option<String>,
    pub reason: String,
}

/// A mapped batch and the rows that could not be mapped.
#[derive(Debug, Clone)]
pub struct MappedBatch {
    /// The mapped rows; rows rejected during mapping are not in it.
    pub batch: RecordBatch,
    /// For each row of `batch`, its row index in the source batch.
    pub source_rows: Vec<usize>,
    pub rejected: Vec<RowRejection>,
}

/// A compiled mapping from one source stream to destination fields.
#[derive(Debug, Clone)]
pub struct Mapper {
    /// (source column name, destination field) in destination order.
    columns: Vec<(String, FieldInfo)>,
    schema: SchemaRef,
    key: Vec<String>,
    source_key: Vec<String>,
}

impl Mapper {
    /// Compiles the mapping of `spec` against the source stream, checking every field.
    pub fn new(spec: &SyncSpec, stream: &StreamInfo) -> Result<Self, MappingError> {
        let available = || {
            stream
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut columns: Vec<(String, FieldInfo)> = Vec::new();
        if spec.fields.is_empty() {
            for f in &stream.fields {
                columns.push((f.name.clone(), f.clone()));
            }
        } else {
            for m in &spec.fields {
                let source = stream.field(&m.source).ok_or_else(|| MappingError::UnknownSourceField {
                    sync: spec.name.clone(),
                    target: m.target.clone(),
                    source_field: m.source.clone(),
                    stream: stream.name.clone(),
                    available: available(),
                })?;
                if columns.iter().any(|(_, f)| f.name == m.target) {
                    return Err(MappingError::DuplicateTarget {
                        sync: spec.name.clone(),
                        target: m.target.clone(),
                    });
                }
                columns.push((
                    m.source.clone(),
                    FieldInfo {
                        name: m.target.clone(),
                        native_type: None,
                        ..source.clone()
                    },
                ));
            }
        }
        if let Some(cursor) = &spec.cursor_field {
            if stream.field(cursor).is_none() {
                return Err(MappingError::UnknownCursor {
                    sync: spec.name.clone(),
                    cursor: cursor.clone(),
                    stream: stream.name.clone(),
                    available: available(),
                });
            }
        }
        let key = if spec.key.is_empty() {
            if stream.primary_key.is_empty() {
                return Err(MappingError::NoKey {
                    sync: spec.name.clone(),
                    stream: stream.name.clone(),
                });
            }
            stream
                .primary_key
                .iter()
                .map(|pk| {
                    columns
                        .iter()
                        .find(|(s, _)| s == pk)
                        .map(|(_, f)| f.name.clone())
                        .ok_or_else(|| MappingError::KeyNotMapped {
                            sync: spec.name.clone(),
                            field: pk.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            spec.key.clone()
        };
        let mut source_key = Vec::with_capacity(key.len());
        for k in &key {
            let source = columns
                .iter()
                .find(|(_, f)| &f.name == k)
                .map(|(s, _)| s.clone())
                .ok_or_else(|| MappingError::UnknownKey {
                    sync: spec.name.clone(),
                    key: k.clone(),
                    available: columns
                        .iter()
                        .map(|(_, f)| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            source_key.push(source);
        }
        // Key fields are never null in the destination.
        for (_, f) in columns.iter_mut() {
            if key.contains(&f.name) {
                f.nullable = false;
            }
        }
        let fields: Vec<FieldInfo> = columns.iter().map(|(_, f)| f.clone()).collect();
        let schema = Arc::new(arrow_schema(&fields));
        Ok(Self {
            columns,
            schema,
            key,
            source_key,
        })
    }

    /// The destination fields, in order.
    pub fn target_fields(&self) -> Vec<FieldInfo> {
        self.columns.iter().map(|(_, f)| f.clone()).collect()
    }

    /// The source fields the mapping reads.
    pub fn source_fields(&self) -> Vec<String> {
        self.columns.iter().map(|(s, _)| s.clone()).collect()
    }

    /// The match key, in destination field names.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// The match key, in source field names.
    pub fn source_key(&self) -> &[String] {
        &self.source_key
    }

    /// The destination schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Maps one source batch. Rows whose key is null are rejected.
    pub fn map(&self, batch: &RecordBatch) -> Result<MappedBatch, MappingError> {
        let source_schema = batch.schema();
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        let mut fields: Vec<Field> = Vec::with_capacity(self.columns.len());
        for (index, (source, target)) in self.columns.iter().enumerate() {
            let i = source_schema
                .index_of(source)
                .map_err(|_| MappingError::MissingColumn(source.clone()))?;
            arrays.push(batch.column(i).clone());
            let mut field = self.schema.field(index).clone();
            // Nullability follows the data so that null keys surface as rejections below.
            field = field.with_nullable(target.nullable || batch.column(i).null_count() > 0);
            fields.push(field);
        }
        let mapped = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
        let mut rejected = Vec::new();
        let mut keep = vec![true; mapped.num_rows()];
        for k in &self.key {
            let column = mapped.column(mapped.schema().index_of(k).expect("key is mapped"));
            if column.null_count() == 0 {
                continue;
            }
            for (row, keep_row) in keep.iter_mut().enumerate() {
                if column.is_null(row) && *keep_row {
                    *keep_row = false;
                    rejected.push(RowRejection {
                        row,
                        field: Some(k.clone()),
                        reason: format!("key field `{k}` is null; every record needs a key"),
                    });
                }
            }
        }
        let source_rows: Vec<usize> = (0..mapped.num_rows()).filter(|r| keep[*r]).collect();
        let batch = if rejected.is_empty() {
            mapped
        } else {
            let mask = arrow::array::BooleanArray::from(keep);
            arrow::compute::filter_record_batch(&mapped, &mask)
                .map_err(|e| MappingError::InvalidBatch(e.to_string()))?
        };
        let batch = RecordBatch::try_new(self.schema.clone(), batch.columns().to_vec())
            .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
        Ok(MappedBatch {
            batch,
            source_rows,
            rejected,
        })
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use lockstep_core::protocol::DataType;
    use lockstep_core::{DeletePolicy, EndpointSpec, FieldMapping, SyncMode};

    fn stream() -> StreamInfo {
        StreamInfo {
            name: "contacts".into(),
            fields: vec![
                FieldInfo {
                    name: "id".into(),
                    data_type: DataType::Int64,
                    nullable: false,
                    native_type: None,
                },
                FieldInfo {
                    name: "email".into(),
                    data_type: DataType::Text,
                    nullable: true,
                    native_type: Some("TEXT".into()),
                },
            ],
            primary_key: vec!["id".into()],
            cursor_candidates: vec![],
        }
    }

    fn spec(fields: Vec<(&str, &str)>, key: Vec<&str>) -> SyncSpec {
        SyncSpec {
            name: "s".into(),
            source: EndpointSpec {
                connection: "a".into(),
                stream: "contacts".into(),
            },
            destination: EndpointSpec {
                connection: "b".into(),
                stream: "people".into(),
            },
            mode: SyncMode::Full,
            cursor_field: None,
            key: key.into_iter().map(String::from).collect(),
            fields: fields
                .into_iter()
                .map(|(t, s)| FieldMapping {
                    target: t.into(),
                    source: s.into(),
                })
                .collect(),
            batch_size: 10,
            delete: DeletePolicy::default(),
        }
    }

    fn batch(emails: Vec<Option<&str>>) -> RecordBatch {
        let ids: Vec<i64> = (1..=emails.len() as i64).collect();
        RecordBatch::try_new(
            Arc::new(arrow_schema(&stream().fields)),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(emails)),
            ],
        )
        .unwrap()
    }

    #[test]
    fn renames_and_keys_follow_the_mapping() {
        let m = Mapper::new(&spec(vec![("person_id", "id"), ("mail", "email")], vec![]), &stream())
            .unwrap();
        assert_eq!(m.key(), ["person_id"]);
        assert_eq!(m.source_key(), ["id"]);
        let out = m.map(&batch(vec![Some("a@x"), None])).unwrap();
        assert_eq!(out.batch.schema().field(1).name(), "mail");
        assert_eq!(out.batch.num_rows(), 2);
        assert!(out.rejected.is_empty());
    }

    #[test]
    fn schema_problems_are_found_before_reading() {
        let e = Mapper::new(&spec(vec![("mail", "e_mail")], vec!["mail"]), &stream()).unwrap_err();
        assert!(e.to_string().contains("`e_mail`") && e.to_string().contains("id, email"), "{e}");
        let e = Mapper::new(&spec(vec![("mail", "email")], vec![]), &stream()).unwrap_err();
        assert!(matches!(e, MappingError::KeyNotMapped { .. }), "{e}");
        let e = Mapper::new(&spec(vec![("a", "id"), ("a", "email")], vec![]), &stream()).unwrap_err();
        assert!(matches!(e, MappingError::DuplicateTarget { .. }), "{e}");
        let e = Mapper::new(&spec(vec![], vec!["nope"]), &stream()).unwrap_err();
        assert!(matches!(e, MappingError::UnknownKey { .. }), "{e}");
    }

    #[test]
    fn null_keys_are_rejected_per_row() {
        let m = Mapper::new(&spec(vec![("mail", "email"), ("id", "id")], vec!["mail"]), &stream())
            .unwrap();
        let out = m.map(&batch(vec![Some("a@x"), None, Some("b@x")])).unwrap();
        assert_eq!(out.batch.num_rows(), 2);
        assert_eq!(out.source_rows, vec![0, 2]);
        assert_eq!(out.rejected.len(), 1);
        assert_eq!(out.rejected[0].row, 1);
        assert_eq!(out.rejected[0].field.as_deref(), Some("mail"));
    }
}
