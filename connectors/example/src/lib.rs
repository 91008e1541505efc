//! `example`: a Lockstep connector for a directory of JSON Lines files, and the template of
//! the connector author guide.
//!
//! Config: `{"dir": "/path/to/dir"}`. Each stream is a file `<stream>.jsonl` holding one JSON
//! object per line. A stream's fields come from its side file `<stream>.schema.json` (a
//! `StreamInfo` as JSON) when there is one, else they are inferred from its first lines.
//!
//! - As a source it reads a stream in full, ordered by its key, in batches; each batch's
//!   checkpoint is `{"key": [...]}` of its last row, and a read resumes after it.
//! - As a destination it keeps a stream's records by key and, on flush, rewrites the file
//!   atomically (write a temporary file, fsync it, rename it over the old one, fsync the
//!   directory), so a crash leaves the old file or the new one, never half of one.
//!
//! Invariants: it depends on `lockstep-plugin-sdk` alone; bad input is an error of the right
//! kind that names the file, never a panic; a stream is held in memory whole, so it is meant
//! for small files.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::{batch_from_rows, rows_from_batch};
use lockstep_plugin_sdk::serde_json::{self, json, Map, Value};
use lockstep_plugin_sdk::evolution::plan_evolution;
use lockstep_plugin_sdk::{
    tracing, BatchReader, Catalog, Connector, ConnectorError, Context, DataType,
    DestinationConnector, FieldInfo, JsonSchema, Manifest, OpenStreamRequest, ReadMode,
    ReadRequest, RejectedRow, Result, SourceConnector, StreamInfo, StreamWriter,
    WriteOutcome,
};
use serde::Deserialize;

/// One record: a JSON object.
type Row = Map<String, Value>;

/// How many lines discover looks at to infer a stream's fields.
const INFER_LINES: usize = 100;

/// The connector: its manifest, and the types that play its two roles.
pub struct Example;

impl Connector for Example {
    type Source = JsonlSource;
    type Destination = JsonlDestination;

    fn manifest() -> Manifest {
        Manifest {
            name: "example".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "JSON Lines files in a directory, one file per stream.".into(),
            features: vec!["upsert".into(), "delete".into(), "create-stream".into()],
        }
    }
}

lockstep_plugin_sdk::export_connector!(Example);

/// The connection's config. Unknown keys are refused, so that typos do not pass silently.
///
/// The manifest's config schema is derived from this type: the doc comment of each field
/// becomes its description, and `deny_unknown_fields` becomes `additionalProperties: false`.
/// `crate = ...` points the derive at the SDK's copy of `schemars`, so that the connector
/// needs no dependency of its own on it.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "lockstep_plugin_sdk::schemars")]
pub struct Config {
    /// The directory holding one `<stream>.jsonl` file per stream.
    pub dir: PathBuf,
}

/// A directory of streams: what both roles share.
#[derive(Debug, Clone)]
pub struct Dir {
    path: PathBuf,
}

impl Dir {
    fn open(config: Config) -> Result<Self> {
        if !config.dir.is_dir() {
            return Err(ConnectorError::config(format!(
                "`dir` = {} is not a directory; create it or fix the path",
                config.dir.display()
            )));
        }
        Ok(Self { path: config.dir })
    }

    fn data_file(&self, stream: &str) -> PathBuf {
        self.path.join(format!("{stream}.jsonl"))
    }

    fn schema_file(&self, stream: &str) -> PathBuf {
        self.path.join(format!("{stream}.schema.json"))
    }

    /// Every stream with known fields, by name.
    fn catalog(&self) -> Result<Catalog> {
        let entries = fs::read_dir(&self.path).map_err(|e| io_error(&self.path, e))?;
        let mut names: Vec<String> = entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
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
                tracing::warn!("skipping stream `{name}`: it is empty and has no schema file");
            } else {
                streams.push(stream);
            }
        }
        Ok(Catalog { streams })
    }

    /// One stream's description: from its schema file, else inferred from its first lines.
    fn stream(&self, name: &str) -> Result<StreamInfo> {
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
        let data_file = self.data_file(name);
        if !data_file.exists() {
            let known = self.catalog_names();
            return Err(ConnectorError::schema(format!(
                "no stream `{name}` in {}; streams: {known}",
                self.path.display()
            )));
        }
        Ok(infer(name, &self.load(name, Some(INFER_LINES))?))
    }

    fn catalog_names(&self) -> String {
        match self.catalog() {
            Ok(c) if !c.streams.is_empty() => c
                .streams
                .iter()
                .map(|s| format!("`{}`", s.name))
                .collect::<Vec<_>>()
                .join(", "),
            _ => "none".into(),
        }
    }

    /// The records of a stream (the first `limit` when given); a missing file is empty.
    fn load(&self, name: &str, limit: Option<usize>) -> Result<Vec<Row>> {
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
fn check_name(name: &str) -> Result<()> {
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
fn io_error(path: &Path, e: io::Error) -> ConnectorError {
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
fn key_of(row: &Row, key: &[String]) -> Value {
    Value::Array(
        key.iter()
            .map(|k| row.get(k).cloned().unwrap_or(Value::Null))
            .collect(),
    )
}

/// Orders JSON values: null, booleans, numbers, text, then documents by their text.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            _ => 4,
        }
    }
    match (a, b) {
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .map(|(x, y)| compare(x, y))
            .find(|o| o.is_ne())
            .unwrap_or(a.len().cmp(&b.len())),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(Ordering::Equal),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}

/// Replaces `path` with `lines` so that a crash leaves either the old file or the new one.
fn write_atomically<'a>(path: &Path, lines: impl Iterator<Item = &'a Row>) -> io::Result<()> {
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("stream");
    let temp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut out = BufWriter::new(File::create(&temp)?);
    for row in lines {
        serde_json::to_writer(&mut out, row)?;
        out.write_all(b"\n")?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    fs::rename(&temp, path)?;
    // The rename is durable once the directory is synced.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The source role.

/// Reads streams.
pub struct JsonlSource {
    dir: Dir,
}

impl SourceConnector for JsonlSource {
    type Config = Config;
    type Reader = JsonlReader;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        Ok(Self {
            dir: Dir::open(config)?,
        })
    }

    async fn check(&mut self) -> Result<()> {
        fs::read_dir(&self.dir.path).map_err(|e| io_error(&self.dir.path, e))?;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.dir.catalog()
    }

    async fn read(&mut self, request: ReadRequest) -> Result<JsonlReader> {
        if request.mode != ReadMode::Full {
            return Err(ConnectorError::unsupported(
                "the example connector reads streams in full only (mode = \"full\")",
            ));
        }
        let info = self.dir.stream(&request.stream)?;
        let key = if request.key.is_empty() {
            info.primary_key.clone()
        } else {
            request.key.clone()
        };
        if key.is_empty() {
            return Err(ConnectorError::schema(format!(
                "stream `{}` has no key to order by: add \"primary_key\" to {}",
                info.name,
                self.dir.schema_file(&info.name).display()
            )));
        }
        let field = |name: &String| {
            info.field(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = info.fields.iter().map(|f| f.name.as_str()).collect();
                ConnectorError::schema(format!(
                    "stream `{}` has no field `{name}`; fields: {}",
                    info.name,
                    known.join(", ")
                ))
            })
        };
        for name in &key {
            field(name)?;
        }
        let fields = match &request.fields {
            Some(names) => names.iter().map(field).collect::<Result<Vec<_>>>()?,
            None => info.fields.clone(),
        };

        let mut rows = self.dir.load(&info.name, None)?;
        rows.sort_by(|a, b| compare(&key_of(a, &key), &key_of(b, &key)));
        if let Some(after) = request.checkpoint.as_ref().map(|c| &c["key"]) {
            rows.retain(|row| compare(&key_of(row, &key), after).is_gt());
        }
        Ok(JsonlReader {
            stream: info.name,
            rows: rows.into_iter(),
            fields,
            key,
            batch_size: request.batch_size.unwrap_or(10_000).max(1),
        })
    }
}

/// The batches of one read.
pub struct JsonlReader {
    stream: String,
    rows: std::vec::IntoIter<Row>,
    fields: Vec<FieldInfo>,
    key: Vec<String>,
    batch_size: usize,
}

impl BatchReader for JsonlReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        let chunk: Vec<Row> = self.rows.by_ref().take(self.batch_size).collect();
        let Some(last) = chunk.last() else {
            return Ok(None);
        };
        let checkpoint = json!({ "key": key_of(last, &self.key) });
        let batch = batch_from_rows(&self.fields, &chunk).map_err(|e| {
            ConnectorError::from(e).context(format!("reading `{}.jsonl`", self.stream))
        })?;
        Ok(Some((batch, checkpoint)))
    }
}

// ---------------------------------------------------------------------------------------
// The destination role.

/// Writes streams.
pub struct JsonlDestination {
    dir: Dir,
}

impl DestinationConnector for JsonlDestination {
    type Config = Config;
    type Writer = JsonlWriter;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        Ok(Self {
            dir: Dir::open(config)?,
        })
    }

    async fn check(&mut self) -> Result<()> {
        let probe = self
            .dir
            .path
            .join(format!(".lockstep-check.{}", std::process::id()));
        fs::write(&probe, b"").map_err(|e| io_error(&self.dir.path, e))?;
        fs::remove_file(&probe).map_err(|e| io_error(&probe, e))
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.dir.catalog()
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<JsonlWriter> {
        let name = request.stream.as_str();
        check_name(name)?;
        let exists = self.dir.data_file(name).exists() || self.dir.schema_file(name).exists();
        if !exists && !request.create_if_missing {
            return Err(ConnectorError::schema(format!(
                "stream `{name}` does not exist in {} and the sync may not create it",
                self.dir.path.display()
            )));
        }
        let mut info = match exists {
            true => self.dir.stream(name)?,
            false => StreamInfo {
                name: name.to_owned(),
                fields: vec![],
                primary_key: request.key.clone(),
                cursor_candidates: vec![],
            },
        };
        if info.primary_key != request.key {
            return Err(ConnectorError::schema(format!(
                "stream `{name}` is keyed by {:?}, but the sync matches records on {:?}",
                info.primary_key, request.key
            )));
        }
        let added: Vec<FieldInfo> = plan_evolution(&request, |n| info.field(n).is_some())?
            .added()
            .iter()
            .map(|f| (*f).clone())
            .collect();
        info.fields.extend(added);

        // The schema file records the exact types, so that reads need not infer them.
        let schema_file = self.dir.schema_file(name);
        let text = serde_json::to_string_pretty(&info)
            .map_err(|e| ConnectorError::internal(format!("cannot encode the stream: {e}")))?;
        fs::write(&schema_file, text).map_err(|e| io_error(&schema_file, e))?;
        let records = self
            .dir
            .load(name, None)?
            .into_iter()
            .map(|row| (key_of(&row, &info.primary_key).to_string(), row))
            .collect();
        let writer = JsonlWriter {
            path: self.dir.data_file(name),
            info,
            records,
            dirty: true,
        };
        // Creating the (empty) file now makes the new stream visible at once.
        writer.save()?;
        Ok(writer)
    }
}

/// Writes one stream: records by key in memory, the file rewritten on flush.
pub struct JsonlWriter {
    path: PathBuf,
    info: StreamInfo,
    /// By the key values' JSON text.
    records: BTreeMap<String, Row>,
    dirty: bool,
}

impl JsonlWriter {
    fn save(&self) -> Result<()> {
        write_atomically(&self.path, self.records.values()).map_err(|e| io_error(&self.path, e))
    }

    /// The rows of a batch restricted to the stream's fields, with their keys; rows whose
    /// key has a null are rejected.
    fn keyed_rows(
        &self,
        batch: &RecordBatch,
        rejected: &mut Vec<RejectedRow>,
    ) -> Vec<(String, Row)> {
        let mut keyed = Vec::with_capacity(batch.num_rows());
        for (index, mut row) in rows_from_batch(batch).into_iter().enumerate() {
            row.retain(|name, _| self.info.field(name).is_some());
            let null_key = self
                .info
                .primary_key
                .iter()
                .find(|k| row.get(*k).is_none_or(Value::is_null));
            if let Some(field) = null_key {
                rejected.push(RejectedRow {
                    row: index,
                    field: Some(field.clone()),
                    reason: "a key field is null".into(),
                });
                continue;
            }
            keyed.push((key_of(&row, &self.info.primary_key).to_string(), row));
        }
        keyed
    }
}

impl StreamWriter for JsonlWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        let (mut inserted, mut updated, mut unchanged) = (0, 0, 0);
        for (key, row) in self.keyed_rows(&batch, &mut outcome.rejected) {
            match self.records.get_mut(&key) {
                None => {
                    self.records.insert(key, row);
                    inserted += 1;
                }
                Some(existing) => {
                    let before = existing.clone();
                    existing.extend(row);
                    if *existing == before {
                        unchanged += 1
                    } else {
                        updated += 1
                    }
                }
            }
        }
        self.dirty = true;
        outcome.inserted = Some(inserted);
        outcome.updated = Some(updated);
        outcome.unchanged = Some(unchanged);
        Ok(outcome)
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        let mut deleted = 0;
        for (key, _) in self.keyed_rows(&keys, &mut outcome.rejected) {
            deleted += u64::from(self.records.remove(&key).is_some());
        }
        self.dirty = true;
        outcome.deleted = Some(deleted);
        Ok(outcome)
    }

    async fn flush(&mut self) -> Result<()> {
        if self.dirty {
            self.save()?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::{block_on, standalone_context};

    fn rows(lines: &[Value]) -> Vec<Row> {
        lines
            .iter()
            .map(|v| v.as_object().unwrap().clone())
            .collect()
    }

    #[test]
    fn fields_are_inferred_from_lines() {
        let info = infer(
            "t",
            &rows(&[
                json!({"id": 1, "n": 1, "s": "a", "x": null}),
                json!({"id": 2, "n": 2.5, "s": 3, "doc": {"a": 1}}),
            ]),
        );
        let types: Vec<(&str, DataType)> = info
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.data_type))
            .collect();
        assert_eq!(
            types,
            [
                ("id", DataType::Int64),
                ("n", DataType::Float64),
                ("s", DataType::Text),
                ("x", DataType::Text),
                ("doc", DataType::Json)
            ]
        );
        assert_eq!(info.primary_key, ["id"]);
    }

    #[test]
    fn reads_are_ordered_by_key_and_resume_after_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("t.jsonl"),
            "{\"id\": 3}\n{\"id\": 1}\n\n{\"id\": 2}\n",
        )
        .unwrap();
        let config = Config {
            dir: dir.path().to_owned(),
        };
        block_on(async {
            let mut source = JsonlSource::open(config, standalone_context())
                .await
                .unwrap();
            let request = ReadRequest {
                stream: "t".into(),
                batch_size: Some(2),
                ..Default::default()
            };
            let mut reader = source.read(request.clone()).await.unwrap();
            let (batch, checkpoint) = reader.next_batch().await.unwrap().unwrap();
            assert_eq!(
                rows_from_batch(&batch),
                rows(&[json!({"id": 1}), json!({"id": 2})])
            );
            assert_eq!(checkpoint, json!({"key": [2]}));
            let resumed = ReadRequest {
                checkpoint: Some(checkpoint),
                ..request
            };
            let mut reader = source.read(resumed).await.unwrap();
            let (batch, _) = reader.next_batch().await.unwrap().unwrap();
            assert_eq!(rows_from_batch(&batch), rows(&[json!({"id": 3})]));
            assert!(reader.next_batch().await.unwrap().is_none());
        });
    }

    #[test]
    fn bad_lines_are_schema_errors_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t.jsonl"), "{\"id\": 1}\n[1, 2]\n").unwrap();
        let err = Dir {
            path: dir.path().to_owned(),
        }
        .load("t", None)
        .unwrap_err();
        assert_eq!(err.kind, lockstep_plugin_sdk::api::ErrorKind::SCHEMA);
        assert!(
            err.message.ends_with("t.jsonl:2: not a JSON object"),
            "{}",
            err.message
        );
    }
}
