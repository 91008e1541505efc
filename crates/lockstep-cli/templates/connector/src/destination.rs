//! The destination role: keeps a stream's records by key and, on flush, rewrites its file.
//!
//! Invariant: the file is replaced atomically (write a temporary file, fsync it, rename it
//! over the old one, fsync the directory), so a crash leaves the old file or the new one,
//! never half of one; nothing is durable before `flush` returns.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::evolution::plan_evolution;
use lockstep_plugin_sdk::rows::rows_from_batch;
use lockstep_plugin_sdk::serde_json::{self, Value};
use lockstep_plugin_sdk::{
    Catalog, ConnectorError, Context, DestinationConnector, FieldInfo, OpenStreamRequest,
    RejectedRow, Result, StreamInfo, StreamWriter, WriteOutcome,
};

use crate::dir::{check_name, io_error, key_of, Config, Dir, Row};

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
        // New fields are added (the `add-columns` feature); anything else the request would
        // change is refused by `plan_evolution` with an error naming the field.
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
    /// key has a null are rejected (and counted by the engine), not dropped silently.
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
