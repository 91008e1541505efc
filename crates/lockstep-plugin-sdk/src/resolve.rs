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
//! - Resolved names are the stream's spelling. Names match exactly, or (with
//!   [`ResolveOptions::ignore_ascii_case`], as SQLite compares identifiers) ignoring ASCII case
//!   when no name matches exactly.
//! - A key the stream does not declare is used only where the source says it has one
//!   ([`ResolveOptions::implicit_key`], SQLite's rowid), and only when neither the request nor
//!   the stream names a key.

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

/// How a source matches names and which key it falls back to. The defaults (exact names, no
/// implicit key) are [`resolve_read`]'s.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolveOptions {
    /// Whether a name that matches no field exactly may match one ignoring ASCII case (SQLite
    /// compares identifiers that way). The resolved read then uses the stream's spelling.
    pub ignore_ascii_case: bool,
    /// A key that orders and identifies rows without being one of the stream's fields (SQLite's
    /// rowid), for reads that name no key of a stream without a primary key.
    pub implicit_key: Option<String>,
}

/// Resolves `request` against `stream`.
pub fn resolve_read(request: &ReadRequest, stream: &StreamInfo) -> Result<ResolvedRead> {
    resolve_read_with(request, stream, &ResolveOptions::default())
}

/// Resolves `request` against `stream` as `options` say.
pub fn resolve_read_with(
    request: &ReadRequest,
    stream: &StreamInfo,
    options: &ResolveOptions,
) -> Result<ResolvedRead> {
    let find = |name: &str, role: &str| -> Result<FieldInfo> {
        let folded = || {
            if !options.ignore_ascii_case {
                return None;
            }
            stream
                .fields
                .iter()
                .find(|f| f.name.eq_ignore_ascii_case(name))
        };
        stream
            .field(name)
            .or_else(folded)
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
    let named = if request.key.is_empty() {
        &stream.primary_key
    } else {
        &request.key
    };
    let key: Vec<String> = if !named.is_empty() {
        named
            .iter()
            .map(|k| find(k, "key field").map(|f| f.name))
            .collect::<Result<_>>()?
    } else if let Some(implicit) = &options.implicit_key {
        vec![implicit.clone()]
    } else {
        return Err(ConnectorError::schema(format!(
            "stream `{}` has no primary key: give the read a key (fields that identify a \
             record) so that it can be read in order and resumed",
            stream.name
        )));
    };
    let cursor = match request.mode {
        ReadMode::Full => None,
        ReadMode::Cdc => return Err(cdc_unsupported(&stream.name)),
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

/// The refusal of a change-data-capture read ([`ReadMode::Cdc`]) by a connector without a
/// change log: one wording for every connector.
pub fn cdc_unsupported(stream: &str) -> ConnectorError {
    ConnectorError::unsupported(format!(
        "stream `{stream}`: this connector has no change log to read (mode \"cdc\" needs a \
         connector that declares the `cdc` feature, such as postgres); use mode \"mirror\""
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
            cdc: None,
            locations: None,
            range_hash: None,
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

    #[test]
    fn names_may_match_ignoring_case_and_resolve_to_the_streams_spelling() {
        let req = ReadRequest {
            mode: ReadMode::Incremental,
            cursor_field: Some("AT".into()),
            key: vec!["Id".into()],
            fields: Some(vec!["NAME".into()]),
            ..request()
        };
        let e = resolve_read(&req, &stream()).unwrap_err();
        assert!(e.message.contains("no field `NAME`"), "{}", e.message);
        let options = ResolveOptions {
            ignore_ascii_case: true,
            ..ResolveOptions::default()
        };
        let r = resolve_read_with(&req, &stream(), &options).unwrap();
        assert_eq!(r.fields[0].name, "name");
        assert_eq!(r.key, ["id"]);
        assert_eq!(r.cursor.as_deref(), Some("at"));
        assert_eq!(r.order, ["at", "id"]);
    }

    #[test]
    fn an_implicit_key_serves_only_streams_without_a_key() {
        let options = ResolveOptions {
            implicit_key: Some("rowid".into()),
            ..ResolveOptions::default()
        };
        let mut keyless = stream();
        keyless.primary_key.clear();
        let r = resolve_read_with(&request(), &keyless, &options).unwrap();
        assert_eq!(r.key, ["rowid"]);
        assert_eq!(r.order, ["rowid"]);
        let r = resolve_read_with(&request(), &stream(), &options).unwrap();
        assert_eq!(r.key, ["id"]);
        let req = ReadRequest {
            key: vec!["rowid".into()],
            ..request()
        };
        let e = resolve_read_with(&req, &keyless, &options).unwrap_err();
        assert!(e.message.contains("(key field)"), "{}", e.message);
    }
}
