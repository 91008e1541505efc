//! The files connector of Lockstep: CSV and JSON Lines files as streams, the way ERPs and
//! warehouses still exchange data, as a cdylib plugin built on `lockstep-plugin-sdk`.
//!
//! - As a source, a stream is a glob of files (`exports/parties-*.csv`). Its fields come
//!   from the first file (CSV header, JSON keys), typed by inference from a sample, with
//!   declared types winning. Files are read oldest first; the checkpoint records each file
//!   read (name, size, modification time, content hash), so a later read takes only new or
//!   rewritten files, never a renamed one, and never a file still being written. With
//!   `after_read`, the files a committed checkpoint lists are moved or deleted when the next
//!   read opens (never before the commit).
//! - As a destination, batches become files named from a template, written under a
//!   temporary name and renamed into place on flush; in snapshot mode, each run's files
//!   replace the previous run's set atomically (a link swapped when the run ends).
//!
//! Invariants:
//! - Files are streamed: memory is bounded by one batch, whatever the file's size.
//! - Nothing is skipped silently: a malformed record, a value that does not parse as its
//!   type, a JSON key the stream does not know are source rejects naming the file, the line
//!   and the reason (the rest of the file still arrives); bytes that do not decode and a CSV
//!   header column the stream does not know are errors naming the file and what to change.
//! - `after_read` touches only files the engine's committed checkpoint lists as read whole.
//! - A destination file is visible under its final name only once complete and synced.
//! - The destination only adds records; it declares neither `upsert` nor `delete`.

mod after_read;
mod columns;
mod config;
mod parse;
mod read;
mod scan;
mod schema;
mod write;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use lockstep_plugin_sdk::{
    Catalog, Connector, ConnectorError, Context, DestinationConnector, Manifest, OpenStreamRequest,
    ReadRequest, Result, SourceConnector, StreamInfo,
};

pub use config::FilesConfig;
pub use read::FilesReader;
pub use write::FilesWriter;

use config::StreamSpec;

/// A files connection, as a source or a destination.
#[derive(Debug)]
pub struct FilesConnector {
    config: FilesConfig,
    /// The streams described by discover, so that a read uses the same fields.
    described: HashMap<String, StreamInfo>,
}

impl FilesConnector {
    /// Opens `config` as a source: it must declare streams or name a directory.
    pub fn open_source(config: FilesConfig) -> Result<Self> {
        config.stream_specs()?;
        if config.streams.is_empty() && config.dir.is_none() {
            return Err(ConnectorError::config(
                "a files source needs `streams` (e.g. `streams.parties.path = \
                 \"exports/parties-*.csv\"`) or `dir` (a directory a files destination wrote)",
            ));
        }
        Ok(Self {
            config,
            described: HashMap::new(),
        })
    }

    /// Opens `config` as a destination: it must name a directory.
    pub fn open_destination(config: FilesConfig) -> Result<Self> {
        config.check_destination()?;
        Ok(Self {
            config,
            described: HashMap::new(),
        })
    }

    /// Every stream: the declared ones, then those a destination wrote into `dir`.
    fn specs(&self) -> Result<Vec<StreamSpec>> {
        let mut specs = self.config.stream_specs()?;
        if let Some(dir) = &self.config.dir {
            for description in write::descriptions(Path::new(dir))? {
                if !specs.iter().any(|s| s.name == description.stream) {
                    specs.push(description.source_spec(Path::new(dir))?);
                }
            }
        }
        Ok(specs)
    }

    /// Checks that every declared stream's directory exists.
    pub fn check_source(&self) -> Result<()> {
        for spec in self.config.stream_specs()? {
            let dir = literal_dir(&spec.pattern);
            if !dir.is_dir() {
                return Err(ConnectorError::config(format!(
                    "the directory `{}` of `streams.{}.path` (`{}`) does not exist; paths are \
                     relative to the config file's directory",
                    dir.display(),
                    spec.name,
                    spec.pattern
                )));
            }
        }
        if let Some(dir) = &self.config.dir {
            if self.config.streams.is_empty() && !Path::new(dir).is_dir() {
                return Err(ConnectorError::config(format!(
                    "the directory `{dir}` (`dir`) does not exist"
                )));
            }
        }
        Ok(())
    }

    /// Describes every stream.
    pub fn catalog(&mut self) -> Result<Catalog> {
        let mut streams = Vec::new();
        for spec in self.specs()? {
            let info = schema::describe(&spec)?;
            self.described.insert(info.name.clone(), info.clone());
            streams.push(info);
        }
        Ok(Catalog { streams })
    }

    /// Starts reading one stream.
    pub fn start_read(&mut self, request: ReadRequest) -> Result<FilesReader> {
        let specs = self.specs()?;
        let Some(spec) = specs.into_iter().find(|s| s.name == request.stream) else {
            let names: Vec<String> = self
                .specs()?
                .iter()
                .map(|s| format!("`{}`", s.name))
                .collect();
            return Err(ConnectorError::config(format!(
                "the files connection has no stream `{}`; it has: {}",
                request.stream,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )));
        };
        let info = match self.described.get(&spec.name) {
            Some(info) => info.clone(),
            None => schema::describe(&spec)?,
        };
        read::open_reader(spec, info, &request, self.config.batch_size()?)
    }

    /// Prepares one stream for writing.
    pub fn start_write(&mut self, request: OpenStreamRequest) -> Result<FilesWriter> {
        write::open_writer(&self.config, request)
    }

    /// Checks that the destination directory can be created and written.
    pub fn check_destination(&self) -> Result<()> {
        let dir = self.config.destination_dir()?;
        std::fs::create_dir_all(&dir).map_err(|e| {
            ConnectorError::config(format!(
                "cannot create the directory `{}`: {e}",
                dir.display()
            ))
        })?;
        let probe = dir.join(format!(".lockstep-check-{}.tmp", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| {
            ConnectorError::config(format!(
                "cannot write into the directory `{}`: {e}",
                dir.display()
            ))
        })?;
        let _ = std::fs::remove_file(probe);
        Ok(())
    }
}

/// The directory part of a glob before its first wildcard (`exports` for `exports/*.csv`).
fn literal_dir(pattern: &str) -> PathBuf {
    let mut dir = PathBuf::new();
    let components: Vec<Component> = Path::new(pattern).components().collect();
    for (i, component) in components.iter().enumerate() {
        let text = component.as_os_str().to_string_lossy();
        if i + 1 == components.len() || text.contains(['*', '?', '[']) {
            break;
        }
        dir.push(component);
    }
    if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    }
}

impl Connector for FilesConnector {
    type Source = FilesConnector;
    type Destination = FilesConnector;

    fn manifest() -> Manifest {
        Manifest {
            name: "files".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "CSV and JSON Lines files: globs of files as sources, a directory of \
                          files as a destination (records are only added)."
                .into(),
            // No `upsert` and no `delete`: a files destination only adds records.
            // `run-end`: snapshot mode publishes a run's files when the engine says it ended.
            // `read-locations`: a retry reads a rejected line again where it was.
            features: [
                "incremental",
                "create-stream",
                "add-columns",
                "append-only",
                lockstep_plugin_sdk::FEATURE_RUN_END,
                lockstep_plugin_sdk::protocol::FEATURE_READ_LOCATIONS,
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

impl SourceConnector for FilesConnector {
    type Config = FilesConfig;
    type Reader = FilesReader;

    async fn open(config: FilesConfig, _ctx: Context) -> Result<Self> {
        Self::open_source(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_source()
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog()
    }

    async fn read(&mut self, request: ReadRequest) -> Result<FilesReader> {
        self.start_read(request)
    }
}

impl DestinationConnector for FilesConnector {
    type Config = FilesConfig;
    type Writer = FilesWriter;

    async fn open(config: FilesConfig, _ctx: Context) -> Result<Self> {
        Self::open_destination(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_destination()
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog()
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<FilesWriter> {
        self.start_write(request)
    }
}

lockstep_plugin_sdk::export_connector!(FilesConnector);
