//! `keystore`: the connector guide's destination-only example. Each stream is one JSON file,
//! `<dir>/<stream>.json`, holding the stream's description and its records by key.
//!
//! Invariants: nothing is durable before `flush`, everything is after it; the file is
//! replaced by a rename, so a crash leaves the old file or the new one; rows whose key is
//! null are rejected (reported, not dropped).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ANCHOR: destination
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::evolution::plan_evolution;
use lockstep_plugin_sdk::rows::rows_from_batch;
use lockstep_plugin_sdk::serde_json::{self, Map, Value};
use lockstep_plugin_sdk::{
    Catalog, Connector, ConnectorError, Context, DestinationConnector, JsonSchema, Manifest,
    OpenStreamRequest, RejectedRow, Result, StreamInfo, StreamWriter, Unsupported, WriteOutcome,
};
use serde::{Deserialize, Serialize};

pub struct Keystore;

impl Connector for Keystore {
    type Source = Unsupported; // this connector only writes
    type Destination = KeystoreDestination;

    fn manifest() -> Manifest {
        Manifest {
            name: "keystore".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Records by key in one JSON file per stream.".into(),
            // Each feature is a promise the engine relies on; see "Features" in the guide.
            features: vec![
                "upsert".into(),
                "delete".into(),
                "create-stream".into(),
                "add-columns".into(),
            ],
        }
    }
}

lockstep_plugin_sdk::export_connector!(Keystore);

/// The `config` table of a `keystore` connection.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "lockstep_plugin_sdk::schemars")]
pub struct Config {
    /// The directory of the stream files; it must exist.
    pub dir: PathBuf,
}

/// The destination role.
pub struct KeystoreDestination {
    dir: PathBuf,
}

impl DestinationConnector for KeystoreDestination {
    type Config = Config;
    type Writer = KeystoreWriter;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        if !config.dir.is_dir() {
            return Err(ConnectorError::config(format!(
                "`dir` = {} is not a directory; create it or fix the path",
                config.dir.display()
            )));
        }
        Ok(Self { dir: config.dir })
    }

    async fn check(&mut self) -> Result<()> {
        std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        Ok(())
    }

    /// The streams that exist: one per `.json` file.
    async fn discover(&mut self) -> Result<Catalog> {
        let mut streams = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(|e| io_error(&self.dir, e))? {
            let path = entry.map_err(|e| io_error(&self.dir, e))?.path();
            if path.extension().is_some_and(|e| e == "json") {
                streams.push(load(&path)?.stream);
            }
        }
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Catalog { streams })
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<KeystoreWriter> {
        let name = &request.stream;
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(ConnectorError::schema(format!(
                "`{name}` cannot be a stream here: it must be a plain file name"
            )));
        }
        let path = self.dir.join(format!("{name}.json"));
        let mut file = if path.exists() {
            load(&path)?
        } else if request.create_if_missing {
            // `create-stream`: a new stream from the request's fields and key.
            StoreFile {
                stream: StreamInfo {
                    name: name.clone(),
                    fields: vec![],
                    primary_key: request.key.clone(),
                    cursor_candidates: vec![],
                },
                records: BTreeMap::new(),
            }
        } else {
            return Err(ConnectorError::schema(format!(
                "stream `{name}` does not exist in {}",
                self.dir.display()
            )));
        };
        if file.stream.primary_key != request.key {
            return Err(ConnectorError::schema(format!(
                "stream `{name}` is keyed by {:?}, but the sync matches records on {:?}",
                file.stream.primary_key, request.key
            )));
        }
        // `add-columns`: the planner applies the request's schema evolution policy and
        // refuses, with the one wording every connector shares, what the policy forbids.
        let plan = plan_evolution(&request, |field| file.stream.field(field).is_some())?;
        let added: Vec<_> = plan.added().iter().map(|f| (*f).clone()).collect();
        file.stream.fields.extend(added);
        let writer = KeystoreWriter { path, file };
        writer.save()?; // the new stream exists from now on
        Ok(writer)
    }
}
// ANCHOR_END: destination

// ANCHOR: writer
/// Writes one stream: records by key in memory, the file replaced on flush.
pub struct KeystoreWriter {
    path: PathBuf,
    file: StoreFile,
}

impl StreamWriter for KeystoreWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        let (mut inserted, mut updated) = (0, 0);
        for (key, row) in self.keyed_rows(&batch, &mut outcome.rejected) {
            match self.file.records.insert(key, row) {
                None => inserted += 1,
                Some(_) => updated += 1,
            }
        }
        outcome.inserted = Some(inserted);
        outcome.updated = Some(updated);
        Ok(outcome)
    }

    /// The batch holds the key columns only; keys that match nothing are no error.
    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        let mut outcome = WriteOutcome::default();
        let mut deleted = 0;
        for (key, _) in self.keyed_rows(&keys, &mut outcome.rejected) {
            deleted += u64::from(self.file.records.remove(&key).is_some());
        }
        outcome.deleted = Some(deleted);
        Ok(outcome)
    }

    async fn flush(&mut self) -> Result<()> {
        self.save()
    }
}
// ANCHOR_END: writer

impl KeystoreWriter {
    /// The rows of `batch` with their keys (the key values as JSON text); a row whose key
    /// has a null is rejected, with its index, the field and the reason.
    fn keyed_rows(
        &self,
        batch: &RecordBatch,
        rejected: &mut Vec<RejectedRow>,
    ) -> Vec<(String, Map<String, Value>)> {
        let key = &self.file.stream.primary_key;
        let mut keyed = Vec::new();
        for (index, row) in rows_from_batch(batch).into_iter().enumerate() {
            let values: Vec<&Value> = key
                .iter()
                .map(|k| row.get(k).unwrap_or(&Value::Null))
                .collect();
            if let Some(position) = values.iter().position(|v| v.is_null()) {
                rejected.push(RejectedRow {
                    row: index,
                    field: Some(key[position].clone()),
                    reason: "a key field is null".into(),
                });
                continue;
            }
            keyed.push((
                Value::from(values.into_iter().cloned().collect::<Vec<_>>()).to_string(),
                row,
            ));
        }
        keyed
    }

    /// Replaces the stream's file: write a temporary file, sync it, rename it over the old.
    fn save(&self) -> Result<()> {
        let text = serde_json::to_vec(&self.file)
            .map_err(|e| ConnectorError::internal(format!("cannot encode the stream: {e}")))?;
        let temp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut out = std::fs::File::create(&temp)?;
            std::io::Write::write_all(&mut out, &text)?;
            out.sync_all()?;
            std::fs::rename(&temp, &self.path)
        };
        write().map_err(|e| io_error(&self.path, e))
    }
}

/// What one stream file holds.
#[derive(Serialize, Deserialize)]
struct StoreFile {
    stream: StreamInfo,
    /// By the key values' JSON text.
    records: BTreeMap<String, Map<String, Value>>,
}

fn load(path: &Path) -> Result<StoreFile> {
    let text = std::fs::read(path).map_err(|e| io_error(path, e))?;
    serde_json::from_slice(&text).map_err(|e| {
        ConnectorError::schema(format!(
            "{}: not a keystore stream file: {e}",
            path.display()
        ))
    })
}

/// An I/O error naming the file; a missing file or a permission problem is the config's.
fn io_error(path: &Path, e: std::io::Error) -> ConnectorError {
    let message = format!("{}: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            ConnectorError::config(message)
        }
        _ => ConnectorError::transient(message),
    }
}
