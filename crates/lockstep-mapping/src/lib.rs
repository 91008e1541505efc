//! Schema mapping on Arrow record batches: from the source stream's fields to the
//! destination's, as a sync's field mapping says.
//!
//! A destination field is a copy of a source field (a rename), a path into a JSON source field
//! (`address.city`), or computed by an expression of [`lockstep_expr`]
//! (`lower(trim(email))`, `cast(score, 'int64')`, `map(level, {'1': 'gold'}, 'bronze')`...).
//! A destination name with dots (`props.score`) is a path into a JSON field the mapping
//! builds (`props`).
//!
//! Invariants:
//! - Pure: no I/O, no clock, no randomness. The same batch and mapping give the same output.
//! - A mapping problem that can be known from the schemas alone (an unknown source field, a
//!   duplicate target, lower() of a number, a path into a field that is not JSON, a cast that
//!   cannot work, a key that is not a mapped field) is found by [`Mapper::new`], before any
//!   record is read.
//! - A record that cannot be mapped (a value that does not cast, a date that does not parse, a
//!   missing JSON path without a default, a null key) is rejected with its row, field and
//!   reason; it never fails the whole batch and is never dropped silently. Each rejected
//!   record has one rejection, for the first field (in destination order) that failed.
//! - Every destination field has the type its expression declares: a copy keeps the source's
//!   type, `cast` gives its target, string functions text, paths and nested fields json.

mod cast;
mod compile;
mod eval;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use lockstep_core::protocol::arrow_types::arrow_schema;
use lockstep_core::protocol::{DataType, FieldInfo, StreamInfo};
use lockstep_core::SyncSpec;
use lockstep_expr::path_text;

use crate::cast::Errors;
use crate::compile::{Compiler, Node, Op};
use crate::eval::{eval, Ctx};

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
    #[error("field mapping of sync `{sync}`: `{target}` conflicts with `{other}`: `{at}` cannot be both a value and a JSON object built from paths; keep one")]
    ConflictingTarget {
        sync: String,
        /// The later of the two destination fields, as written.
        target: String,
        other: String,
        /// The destination path both write.
        at: String,
    },
    #[error("field mapping of sync `{sync}`: destination field `{target}`: {message}")]
    InvalidExpression {
        sync: String,
        target: String,
        message: String,
    },
    #[error("field mapping of sync `{sync}`: destination field `{target}`: {message}")]
    IncompatibleType {
        sync: String,
        target: String,
        message: String,
    },
    #[error("sync `{sync}`: key field `{key}` is not among the destination fields ({available}); name key fields by their destination names")]
    UnknownKey {
        sync: String,
        key: String,
        available: String,
    },
    #[error("sync `{sync}`: key field `{key}` {reason}")]
    InvalidKey {
        sync: String,
        key: String,
        reason: String,
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

impl MappingError {
    /// The destination field (as written in the mapping) the error is about, if it is about
    /// one: to point a diagnostic at that line of `[syncs.NAME.fields]`.
    pub fn target(&self) -> Option<&str> {
        match self {
            MappingError::UnknownSourceField { target, .. }
            | MappingError::DuplicateTarget { target, .. }
            | MappingError::InvalidExpression { target, .. }
            | MappingError::IncompatibleType { target, .. }
            | MappingError::ConflictingTarget { target, .. } => Some(target),
            _ => None,
        }
    }
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
    /// In row order, one per rejected row.
    pub rejected: Vec<RowRejection>,
}

/// One destination field (column) and how it is computed.
#[derive(Debug, Clone)]
struct Column {
    field: FieldInfo,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    /// `target` as written in the mapping.
    Node { target: String, node: Node },
    /// A JSON object built from paths: (target as written, path below the column, value).
    Object(Vec<(String, Vec<String>, Node)>),
}

/// A compiled mapping from one source stream to destination fields.
#[derive(Debug, Clone)]
pub struct Mapper {
    columns: Vec<Column>,
    schema: SchemaRef,
    key: Vec<String>,
    source_key: Vec<String>,
    sources: Vec<String>,
}

impl Mapper {
    /// Compiles the mapping of `spec` against the source stream, checking every field, every
    /// expression and the key.
    pub fn new(spec: &SyncSpec, stream: &StreamInfo) -> Result<Self, MappingError> {
        let sync = spec.name.as_str();
        let available = || {
            stream
                .fields
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut columns: Vec<Column> = Vec::new();
        if spec.fields.is_empty() {
            for f in &stream.fields {
                columns.push(Column {
                    field: FieldInfo {
                        native_type: None,
                        ..f.clone()
                    },
                    value: Value::Node {
                        target: f.name.clone(),
                        node: Compiler {
                            sync,
                            target: &f.name,
                            stream,
                        }
                        .compile(&lockstep_core::spec::Expr::Field(vec![f.name.clone()]))?,
                    },
                });
            }
        }
        for m in &spec.fields {
            let invalid = |message: String| MappingError::InvalidExpression {
                sync: sync.to_owned(),
                target: m.target.clone(),
                message,
            };
            let path = m
                .target_path()
                .map_err(|e| invalid(format!("invalid destination name: {}", e.message)))?;
            let expr = m
                .value()
                .map_err(|e| invalid(format!("invalid source `{}`: {}", m.source, e.message)))?;
            let node = Compiler {
                sync,
                target: &m.target,
                stream,
            }
            .compile(&expr)?;
            if node.null_literal {
                return Err(invalid(
                    "a constant null has no type; give it one, e.g. cast(null, 'text')".to_owned(),
                ));
            }
            add_column(&mut columns, sync, &m.target, path, node)?;
        }

        if let Some(cursor) = &spec.cursor_field {
            if stream.field(cursor).is_none() {
                return Err(MappingError::UnknownCursor {
                    sync: sync.to_owned(),
                    cursor: cursor.clone(),
                    stream: stream.name.clone(),
                    available: available(),
                });
            }
        }

        let plain_source = |c: &Column| match &c.value {
            Value::Node { node, .. } => match &node.op {
                Op::Column(s) => Some(s.clone()),
                _ => None,
            },
            Value::Object(_) => None,
        };
        let key = if spec.key.is_empty() {
            if stream.primary_key.is_empty() {
                return Err(MappingError::NoKey {
                    sync: sync.to_owned(),
                    stream: stream.name.clone(),
                });
            }
            stream
                .primary_key
                .iter()
                .map(|pk| {
                    columns
                        .iter()
                        .find(|c| plain_source(c).as_ref() == Some(pk))
                        .map(|c| c.field.name.clone())
                        .ok_or_else(|| MappingError::KeyNotMapped {
                            sync: sync.to_owned(),
                            field: pk.clone(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            spec.key.clone()
        };
        let mut key_sources: Vec<Option<String>> = Vec::new();
        let mut key_reads: Vec<String> = Vec::new();
        for k in &key {
            let column = columns.iter().find(|c| &c.field.name == k).ok_or_else(|| {
                MappingError::UnknownKey {
                    sync: sync.to_owned(),
                    key: k.clone(),
                    available: columns
                        .iter()
                        .map(|c| c.field.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                }
            })?;
            let invalid_key = |reason: String| MappingError::InvalidKey {
                sync: sync.to_owned(),
                key: k.clone(),
                reason,
            };
            let node = match &column.value {
                Value::Object(leaves) => {
                    return Err(invalid_key(format!(
                        "is a JSON object built from paths ({}); a key must be a plain field",
                        leaves
                            .iter()
                            .map(|(t, _, _)| format!("`{t}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
                Value::Node { node, .. } => node,
            };
            let mut reads = Vec::new();
            node.columns(&mut reads);
            if reads.is_empty() {
                return Err(invalid_key(format!(
                    "is the constant `{}`: every record would have the same key; compute the key \
                     from source fields",
                    node.text
                )));
            }
            for r in reads {
                if !key_reads.iter().any(|x| x == r) {
                    key_reads.push(r.to_owned());
                }
            }
            key_sources.push(plain_source(column));
        }
        // Reads are ordered (and cursor ties broken) by the source fields of the key when it
        // is made of copies; otherwise by the source's primary key, else by what the key reads.
        let source_key: Vec<String> = if key_sources.iter().all(Option::is_some) {
            key_sources.into_iter().flatten().collect()
        } else if !stream.primary_key.is_empty()
            && stream
                .primary_key
                .iter()
                .all(|pk| stream.field(pk).is_some())
        {
            stream.primary_key.clone()
        } else {
            key_reads
        };

        // Key fields are never null in the destination.
        for c in columns.iter_mut() {
            if key.contains(&c.field.name) {
                c.field.nullable = false;
            }
        }

        let mut sources: Vec<String> = Vec::new();
        {
            let mut reads: Vec<&str> = Vec::new();
            for c in &columns {
                match &c.value {
                    Value::Node { node, .. } => node.columns(&mut reads),
                    Value::Object(leaves) => {
                        leaves.iter().for_each(|(_, _, n)| n.columns(&mut reads))
                    }
                }
            }
            sources.extend(reads.into_iter().map(str::to_owned));
        }
        for k in &source_key {
            if !sources.contains(k) {
                sources.push(k.clone());
            }
        }

        let fields: Vec<FieldInfo> = columns.iter().map(|c| c.field.clone()).collect();
        let schema = Arc::new(arrow_schema(&fields));
        Ok(Self {
            columns,
            schema,
            key,
            source_key,
            sources,
        })
    }

    /// The destination fields, in order.
    pub fn target_fields(&self) -> Vec<FieldInfo> {
        self.columns.iter().map(|c| c.field.clone()).collect()
    }

    /// The source fields the mapping reads (each once, in order of first use), the fields of
    /// [`Mapper::source_key`] included.
    pub fn source_fields(&self) -> Vec<String> {
        self.sources.clone()
    }

    /// The match key, in destination field names.
    pub fn key(&self) -> &[String] {
        &self.key
    }

    /// The source fields that order reads and break cursor ties: the source fields of the
    /// match key when each key field is a copy of one; otherwise (a computed key such as
    /// `lower(trim(email))`) the source's primary key, or when it has none the fields the key
    /// is computed from.
    pub fn source_key(&self) -> &[String] {
        &self.source_key
    }

    /// The source field each key field copies, in key order, when every key field is a plain
    /// copy of one (renamed or not, without a transform or cast); `None` otherwise. Such a
    /// key has the same values on both sides, so the two systems can compare their key sets
    /// in place, without the engine mapping them.
    pub fn key_copies(&self) -> Option<Vec<String>> {
        self.key
            .iter()
            .map(|k| {
                let column = self.columns.iter().find(|c| &c.field.name == k)?;
                match &column.value {
                    Value::Node { node, .. } => match &node.op {
                        Op::Column(source) => Some(source.clone()),
                        _ => None,
                    },
                    Value::Object(_) => None,
                }
            })
            .collect()
    }

    /// The mapping of the key fields alone: what reads only the match key of source records
    /// needs (a key-set reconciliation): read [`Mapper::source_fields`] of it, map, and take
    /// [`lockstep_core::record_keys`] of the mapped batch with [`Mapper::key`]. The keys are
    /// those the full mapping gives, computed keys included.
    pub fn key_mapper(&self) -> Mapper {
        let columns: Vec<Column> = self
            .key
            .iter()
            .filter_map(|k| self.columns.iter().find(|c| &c.field.name == k).cloned())
            .collect();
        let mut reads: Vec<&str> = Vec::new();
        for c in &columns {
            if let Value::Node { node, .. } = &c.value {
                node.columns(&mut reads);
            }
        }
        let mut sources: Vec<String> = reads.into_iter().map(str::to_owned).collect();
        for k in &self.source_key {
            if !sources.contains(k) {
                sources.push(k.clone());
            }
        }
        let fields: Vec<FieldInfo> = columns.iter().map(|c| c.field.clone()).collect();
        Mapper {
            schema: Arc::new(arrow_schema(&fields)),
            columns,
            key: self.key.clone(),
            source_key: self.source_key.clone(),
            sources,
        }
    }

    /// The key fields that can be null (a nullable source field, a JSON path): records whose
    /// key is null are rejected, one by one. For `validate` and `plan` to warn about.
    pub fn nullable_key_fields(&self) -> Vec<(String, String)> {
        self.key
            .iter()
            .filter_map(|k| {
                let c = self.columns.iter().find(|c| &c.field.name == k)?;
                match &c.value {
                    Value::Node { node, .. } if node.nullable => {
                        Some((k.clone(), node.text.clone()))
                    }
                    _ => None,
                }
            })
            .collect()
    }

    /// Each destination field as written in the mapping (`props.score` for a nested one) and
    /// what it is computed from, as expression text, in destination order.
    pub fn describe(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for c in &self.columns {
            match &c.value {
                Value::Node { target, node } => out.push((target.clone(), node.text.clone())),
                Value::Object(leaves) => {
                    for (target, _, node) in leaves {
                        out.push((target.clone(), node.text.clone()));
                    }
                }
            }
        }
        out
    }

    /// The destination schema.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Maps one source batch. Rows that fail (a cast, a parse, a missing JSON path, a null
    /// key...) are rejected with their reason; the others are mapped.
    pub fn map(&self, batch: &RecordBatch) -> Result<MappedBatch, MappingError> {
        let rows = batch.num_rows();
        let mut ctx = Ctx::new(batch);
        let mut rejected: Vec<Option<RowRejection>> = vec![None; rows];
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for column in &self.columns {
            let array = match &column.value {
                Value::Node { target, node } => evaluate(node, target, &mut ctx, &mut rejected)?,
                Value::Object(leaves) => {
                    let mut values = Vec::with_capacity(leaves.len());
                    for (target, path, node) in leaves {
                        values.push((
                            path,
                            node.ty,
                            evaluate(node, target, &mut ctx, &mut rejected)?,
                        ));
                    }
                    let objects: StringArray = (0..rows)
                        .map(|row| {
                            let mut object = serde_json::Map::new();
                            for (path, ty, array) in &values {
                                eval::insert_path(
                                    &mut object,
                                    path,
                                    eval::leaf_json(array, row, *ty),
                                );
                            }
                            Some(serde_json::Value::Object(object).to_string())
                        })
                        .collect();
                    Arc::new(objects)
                }
            };
            arrays.push(array);
        }
        for (index, column) in self.columns.iter().enumerate() {
            let k = &column.field.name;
            if !self.key.contains(k) || arrays[index].null_count() == 0 {
                continue;
            }
            for (row, slot) in rejected.iter_mut().enumerate() {
                if slot.is_none() && arrays[index].is_null(row) {
                    *slot = Some(RowRejection {
                        row,
                        field: Some(k.clone()),
                        reason: format!("key field `{k}` is null; every record needs a key"),
                    });
                }
            }
        }
        let keep: Vec<bool> = rejected.iter().map(Option::is_none).collect();
        let rejected: Vec<RowRejection> = rejected.into_iter().flatten().collect();
        let source_rows: Vec<usize> = (0..rows).filter(|r| keep[*r]).collect();
        // Nullability follows the data until rejected rows are filtered out.
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .zip(&arrays)
            .map(|(f, a)| {
                f.as_ref()
                    .clone()
                    .with_nullable(f.is_nullable() || a.null_count() > 0)
            })
            .collect();
        let mapped = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
        let mapped = if rejected.is_empty() {
            mapped
        } else {
            let mask = arrow::array::BooleanArray::from(keep);
            arrow::compute::filter_record_batch(&mapped, &mask)
                .map_err(|e| MappingError::InvalidBatch(e.to_string()))?
        };
        let batch = RecordBatch::try_new(self.schema.clone(), mapped.columns().to_vec())
            .map_err(|e| MappingError::InvalidBatch(e.to_string()))?;
        Ok(MappedBatch {
            batch,
            source_rows,
            rejected,
        })
    }
}

/// Evaluates one destination value, recording the rows that failed as rejections of `target`.
fn evaluate(
    node: &Node,
    target: &str,
    ctx: &mut Ctx<'_>,
    rejected: &mut [Option<RowRejection>],
) -> Result<ArrayRef, MappingError> {
    let mut errors: Vec<Option<String>> = vec![None; ctx.rows];
    let out = eval(node, ctx, &mut errors)?;
    let errors: &mut Errors = &mut errors;
    for (row, reason) in out.missing {
        cast::fail(errors, row, || reason);
    }
    for (row, reason) in errors.iter_mut().enumerate() {
        if let (Some(reason), None) = (reason.take(), &rejected[row]) {
            rejected[row] = Some(RowRejection {
                row,
                field: Some(target.to_owned()),
                reason: format!("field `{target}`: {reason}"),
            });
        }
    }
    // A destination field has its declared type whatever the expression's Arrow form.
    cast::normalize(&out.array, node.ty, target)
}

/// Adds destination `target` (at `path`) to the columns, checking that no field is mapped
/// twice and that a JSON field is either built from paths or mapped whole.
fn add_column(
    columns: &mut Vec<Column>,
    sync: &str,
    target: &str,
    path: Vec<String>,
    node: Node,
) -> Result<(), MappingError> {
    let name = path[0].clone();
    let duplicate = || MappingError::DuplicateTarget {
        sync: sync.to_owned(),
        target: target.to_owned(),
    };
    let conflict = |other: String, at: String| MappingError::ConflictingTarget {
        sync: sync.to_owned(),
        target: target.to_owned(),
        other,
        at,
    };
    let existing = columns.iter_mut().find(|c| c.field.name == name);
    match (existing, path.len()) {
        (None, 1) => columns.push(Column {
            field: FieldInfo {
                name,
                data_type: node.ty,
                nullable: node.nullable,
                native_type: None,
            },
            value: Value::Node {
                target: target.to_owned(),
                node,
            },
        }),
        (None, _) => columns.push(Column {
            field: FieldInfo {
                name,
                data_type: DataType::Json,
                nullable: false,
                native_type: None,
            },
            value: Value::Object(vec![(target.to_owned(), path[1..].to_vec(), node)]),
        }),
        (Some(c), 1) => {
            return Err(match &c.value {
                Value::Node { .. } => duplicate(),
                Value::Object(leaves) => conflict(leaves[0].0.clone(), path_text(&path)),
            })
        }
        (Some(c), _) => {
            let leaves = match &mut c.value {
                Value::Object(leaves) => leaves,
                Value::Node { target: other, .. } => {
                    return Err(conflict(other.clone(), path_text(&path[..1])))
                }
            };
            let below = &path[1..];
            for (other, p, _) in leaves.iter() {
                if p.as_slice() == below {
                    return Err(duplicate());
                }
                let shorter = p.len().min(below.len());
                if p[..shorter] == below[..shorter] {
                    return Err(conflict(other.clone(), path_text(&path[..=shorter])));
                }
            }
            leaves.push((target.to_owned(), below.to_vec(), node));
        }
    }
    Ok(())
}
