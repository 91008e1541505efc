//! The resolution of a [`ReadRequest`] against the [`StreamInfo`] a source discovered.
//!
//! Every source must answer the same questions before it reads: which fields, ordered and
//! resumed by which key, and (incremental reads) which cursor. [`resolve_read`] answers them
//! once, with one wording for each refusal, so that connectors differ only in how they read.
//!
//! Invariants:
//! - A name the stream does not have is a `schema` error naming the stream, the role of the
//!   name (requested field, key field, cursor field) and every field the stream has.
//! - An incremental read without a cursor field is a `config` error naming the candidates.
//! - A read without a key (neither the request's nor a primary key) is a `schema` error:
//!   keyset paging and resuming need one.
//! - The order is the cursor (incremental), then the key fields not already in it; it never
//!   repeats a name.

use crate::{ConnectorError, FieldInfo, ReadMode, ReadRequest, Result, StreamInfo};

/// What a read reads and how it is ordered.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedRead {
    /// The fields of the batches, in the request's order (the stream's when it names none).
    pub fields: Vec<FieldInfo>,
    /// The fields that identify a record: the request's key, else the primary key.
    pub key: Vec<String>,
    /// The cursor field of an incremental read.
    pub cursor: Option<String>,
    /// The ordering fields: the cursor first (incremental), then the key fields.
    pub order: Vec<String>,
}

impl ResolvedRead {
    /// Whether the read is incremental (it has a cursor).
    pub fn incremental(&self) -> bool {
        self.cursor.is_some()
    }
}

/// Resolves `request` against `stream`.
pub fn resolve_read(request: &ReadRequest, stream: &StreamInfo) -> Result<ResolvedRead> {
    let find = |name: &str, role: &str| -> Result<FieldInfo> {
        stream
            .field(name)
            .cloned()
            .ok_or_else(|| unknown_field(stream, name, role))
    };
    let fields = match &request.fields {
        Some(names) => names
            .iter()
            .map(|n| find(n, "requested field"))
            .collect::<Result<_>>()?,
        None => stream.fields.clone(),
    };
    let key: Vec<String> = if request.key.is_empty() {
        stream.primary_key.clone()
    } else {
        request.key.clone()
    };
    if key.is_empty() {
        return Err(ConnectorError::schema(format!(
            "stream `{}` has no primary key: give the read a key (fields that identify a \
             record) so that it can be read in order and resumed",
            stream.name
        )));
    }
    for k in &key {
        find(k, "key field")?;
    }
    let cursor = match request.mode {
        ReadMode::Full => None,
        ReadMode::Incremental => {
            let name = request.cursor_field.as_deref().ok_or_else(|| {
                let candidates = if stream.cursor_candidates.is_empty() {
                    "none".to_owned()
                } else {
                    stream.cursor_candidates.join(", ")
                };
                ConnectorError::config(format!(
                    "an incremental read of stream `{}` needs a cursor field (candidates: \
                     {candidates})",
                    stream.name
                ))
            })?;
            Some(find(name, "cursor field")?.name)
        }
    };
    let mut order: Vec<String> = cursor.iter().cloned().collect();
    for k in &key {
        if !order.contains(k) {
            order.push(k.clone());
        }
    }
    Ok(ResolvedRead {
        fields,
        key,
        cursor,
        order,
    })
}

/// The error for a name `stream` does not have, listing the fields it has.
pub fn unknown_field(stream: &StreamInfo, name: &str, role: &str) -> ConnectorError {
    ConnectorError::schema(format!(
        "stream `{}` has no field `{name}` ({role}); its fields: {}",
        stream.name,
        crate::evolution::backticked(stream.fields.iter().map(|f| f.name.as_str()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataType;

    fn stream() -> StreamInfo {
        let field = |name: &str| FieldInfo {
            name: name.into(),
            data_type: DataType::Int64,
            nullable: false,
            native_type: None,
        };
        StreamInfo {
            name: "people".into(),
            fields: vec![field("id"), field("name"), field("at")],
            primary_key: vec!["id".into()],
            cursor_candidates: vec!["at".into()],
        }
    }

    fn request() -> ReadRequest {
        ReadRequest {
            stream: "people".into(),
            mode: ReadMode::Full,
            fields: None,
            cursor_field: None,
            key: vec![],
            checkpoint: None,
            batch_size: None,
            keys: None,
            key_summary: false,
            dry_run: false,
        }
    }

    #[test]
    fn a_full_read_of_everything_orders_by_the_primary_key() {
        let r = resolve_read(&request(), &stream()).unwrap();
        assert_eq!(r.fields.len(), 3);
        assert_eq!(r.key, ["id"]);
        assert_eq!(r.order, ["id"]);
        assert!(!r.incremental());
    }

    #[test]
    fn an_incremental_read_orders_by_cursor_then_key_without_repeats() {
        let req = ReadRequest {
            mode: ReadMode::Incremental,
            cursor_field: Some("at".into()),
            key: vec!["at".into(), "id".into()],
            fields: Some(vec!["name".into()]),
            ..request()
        };
        let r = resolve_read(&req, &stream()).unwrap();
        assert_eq!(r.order, ["at", "id"]);
        assert_eq!(r.fields.len(), 1);
        assert_eq!(r.cursor.as_deref(), Some("at"));
    }

    #[test]
    fn refusals_name_the_stream_the_role_and_what_exists() {
        let req = ReadRequest {
            fields: Some(vec!["nme".into()]),
            ..request()
        };
        let e = resolve_read(&req, &stream()).unwrap_err();
        assert_eq!(e.kind, crate::api::ErrorKind::SCHEMA);
        assert_eq!(
            e.message,
            "stream `people` has no field `nme` (requested field); its fields: `id`, `name`, `at`"
        );
        let req = ReadRequest {
            mode: ReadMode::Incremental,
            ..request()
        };
        let e = resolve_read(&req, &stream()).unwrap_err();
        assert_eq!(e.kind, crate::api::ErrorKind::CONFIG);
        assert!(e.message.contains("candidates: at"), "{}", e.message);
        let mut keyless = stream();
        keyless.primary_key.clear();
        let e = resolve_read(&request(), &keyless).unwrap_err();
        assert!(e.message.contains("no primary key"), "{}", e.message);
        let req = ReadRequest {
            key: vec!["nope".into()],
            ..request()
        };
        let e = resolve_read(&req, &stream()).unwrap_err();
        assert!(e.message.contains("(key field)"), "{}", e.message);
    }
}
