//! The config and the directory of JSON Lines files that both roles work on: listing the
//! streams, describing one, loading its records.
//!
//! Invariant: a stream name is a plain file name; nothing outside the directory is touched.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader};
use std::path::{Path, PathBuf};

use lockstep_plugin_sdk::serde_json::{self, Map, Value};
use lockstep_plugin_sdk::{
    tracing, Catalog, ConnectorError, DataType, FieldInfo, JsonSchema, Result, StreamInfo,
};
use serde::Deserialize;

/// One record: a JSON object.
pub(crate) type Row = Map<String, Value>;

/// How many lines discover looks at to infer a stream's fields.
const INFER_LINES: usize = 100;

/// The connection's config. Unknown keys are refused, so that typos do not pass silently.
///
/// The manifest's config schema is derived from this type: the doc comment of each field
/// becomes its description, and `deny_unknown_fields` becomes `additionalProperties: false`.
/// `crate = ...` points the derive at the SDK's copy of `schemars`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "lockstep_plugin_sdk::schemars")]
pub struct Config {
    /// The directory holding one `<stream>.jsonl` file per stream. A relative path is
    /// relative to the directory of Lockstep's config file (Lockstep's working directory).
    pub dir: PathBuf,
}

/// A directory of streams.
#[derive(Debug, Clone)]
pub(crate) struct Dir {
    pub(crate) path: PathBuf,
}

impl Dir {
    pub(crate) fn open(config: Config) -> Result<Self> {
        if !config.dir.is_dir() {
            return Err(ConnectorError::config(format!(
                "`dir` = {} is not a directory; create it or fix the path",
                config.dir.display()
            )));
        }
        Ok(Self { path: config.dir })
    }

    pub(crate) fn data_file(&self, stream: &str) -> PathBuf {
        self.path.join(format!("{stream}.jsonl"))
    }

    pub(crate) fn schema_file(&self, stream: &str) -> PathBuf {
        self.path.join(format!("{stream}.schema.json"))
    }

    /// Every stream with known fields, by name.
    pub(crate) fn catalog(&self) -> Result<Catalog> {
        let entries = fs::read_dir(&self.path).map_err(|e| io_error(&self.path, e))?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|file| !file.starts_with('.'))
            .filter_map(|file| {
                let name = file
                    .strip_suffix(".jsonl")
                    .or(file.strip_suffix(".schema.json"))?;
                Some(name.to_owned())
            })
            .collect();
        names.sort();
        names.dedup();
        let mut streams = Vec::new();
        for name in names {
            let stream = self.stream(&name)?;
            if stream.fields.is_empty() {
                tracing::warn!("stream `{name}` is empty and has no schema file: not listed");
            } else {
                streams.push(stream);
            }
        }
        Ok(Catalog { streams })
    }

    /// One stream's description: from its schema file, else inferred from its first lines.
    pub(crate) fn stream(&self, name: &str) -> Result<StreamInfo> {
        check_name(name)?;
        let schema_file = self.schema_file(name);
        if schema_file.exists() {
            let text = fs::read_to_string(&schema_file).map_err(|e| io_error(&schema_file, e))?;
            let mut info: StreamInfo = serde_json::from_str(&text).map_err(|e| {
                ConnectorError::schema(format!(
                    "{}: not a stream description: {e}",
                    schema_file.display()
                ))
            })?;
            info.name = name.to_owned();
            return Ok(info);
        }
        if !self.data_file(name).exists() {
            return Err(ConnectorError::schema(format!(
                "no stream `{name}` in {}: there is no {name}.jsonl",
                self.path.display()
            )));
        }
        Ok(infer(name, &self.load(name, Some(INFER_LINES))?))
    }

    /// The records of a stream (the first `limit` when given); a missing file is empty.
    pub(crate) fn load(&self, name: &str, limit: Option<usize>) -> Result<Vec<Row>> {
        let path = self.data_file(name);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error(&path, e)),
        };
        let mut rows = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            if limit.is_some_and(|limit| rows.len() >= limit) {
                break;
            }
            let line = line.map_err(|e| io_error(&path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(&line) {
                Ok(Value::Object(row)) => rows.push(row),
                Ok(_) => return Err(bad_line(&path, n, "not a JSON object")),
                Err(e) => return Err(bad_line(&path, n, &e.to_string())),
            }
        }
        Ok(rows)
    }
}

/// Refuses stream names that would escape the directory or hide files.
pub(crate) fn check_name(name: &str) -> Result<()> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        return Err(ConnectorError::schema(format!(
            "`{name}` cannot be a stream name here: it must be a plain file name"
        )));
    }
    Ok(())
}

fn bad_line(path: &Path, n: usize, problem: &str) -> ConnectorError {
    ConnectorError::schema(format!("{}:{}: {problem}", path.display(), n + 1))
}

/// An I/O error, naming the file; permission and missing-path problems are the config's.
pub(crate) fn io_error(path: &Path, e: io::Error) -> ConnectorError {
    let message = format!("{}: {e}", path.display());
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::NotFound => {
            ConnectorError::config(message)
        }
        _ => ConnectorError::transient(message),
    }
}

/// Fields inferred from sample rows: every field is nullable; numbers that are sometimes
/// fractional are float64; values of mixed kinds are text, or JSON when any is a document.
/// A field named `id` is the primary key.
fn infer(name: &str, rows: &[Row]) -> StreamInfo {
    let mut found: Vec<(String, Option<DataType>)> = Vec::new();
    for row in rows {
        for (key, value) in row {
            let seen = match value {
                Value::Null => None,
                Value::Bool(_) => Some(DataType::Boolean),
                Value::Number(n) if n.is_i64() => Some(DataType::Int64),
                Value::Number(_) => Some(DataType::Float64),
                Value::String(_) => Some(DataType::Text),
                Value::Array(_) | Value::Object(_) => Some(DataType::Json),
            };
            match found.iter_mut().find(|(k, _)| k == key) {
                None => found.push((key.clone(), seen)),
                Some((_, known)) => *known = widen(*known, seen),
            }
        }
    }
    let fields: Vec<FieldInfo> = found
        .into_iter()
        .map(|(name, data_type)| FieldInfo {
            name,
            data_type: data_type.unwrap_or(DataType::Text),
            nullable: true,
            native_type: None,
        })
        .collect();
    let has_id = fields.iter().any(|f| f.name == "id");
    StreamInfo {
        name: name.to_owned(),
        fields,
        primary_key: if has_id { vec!["id".into()] } else { vec![] },
        cursor_candidates: vec![],
    }
}

fn widen(known: Option<DataType>, seen: Option<DataType>) -> Option<DataType> {
    use DataType::*;
    Some(match (known, seen) {
        (None, t) | (t, None) => return t,
        (Some(a), Some(b)) if a == b => a,
        (Some(Int64 | Float64), Some(Int64 | Float64)) => Float64,
        (Some(Json), _) | (_, Some(Json)) => Json,
        _ => Text,
    })
}

/// The key values of a row, as one JSON array.
pub(crate) fn key_of(row: &Row, key: &[String]) -> Value {
    Value::Array(
        key.iter()
            .map(|k| row.get(k).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}
