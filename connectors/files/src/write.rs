//! Writing a stream as files in a directory: CSV or JSON Lines, named from a template
//! (`{stream}-{run}-{seq}.{ext}`).
//!
//! Records are written to a temporary name (`.<name>.tmp`, which readers skip) and renamed
//! into place by `flush`, after the data and then the directory are synced: a reader never
//! sees half a file, and what `flush` returned for is durable. A file holds the records of
//! one flush, or fewer when `max_file_bytes` rolls it over. Data written but not flushed when
//! the writer goes away is removed with its temporary file.
//!
//! One file per run (`one_file_per_run = true`): the file stays open under its temporary
//! name across flushes, and is renamed into place at the flush after the engine's `run-end`
//! batch (or earlier when `max_file_bytes` rolls it). A flush makes the records so far
//! durable: the data is synced, then its length is recorded beside it
//! (`.<name>.flushed`, synced). A writer that goes away before its run ended publishes the
//! flushed part (cut back to the recorded length: what came after was never promised), and
//! a crash that left a temporary file with a recorded length is published the same way when
//! the next writer opens the directory. So every record a flush promised reaches a visible
//! file, and no reader sees a file that is still growing.
//!
//! A file destination only adds records: it cannot update a record in place or delete one,
//! and says so (`delete` is refused as unsupported, and the manifest declares neither
//! `upsert` nor `delete`).
//!
//! Snapshot mode (`snapshot = true`): each run writes its files into a generation directory of
//! its own, `<dir>/.lockstep/snapshots/<stream>/<run>/`, and `<dir>/<stream>` is a symbolic
//! link to the newest complete generation. When the engine tells the writer that the run has
//! written everything (the `run-end` batch, see `lockstep_plugin_sdk::run_end`), the flush
//! that follows replaces the link atomically (a new link renamed over the old one), so a
//! reader listing `<dir>/<stream>/` sees the previous set or the new one, never a mix. The
//! previous generation is kept until the next swap (a reader may still be reading it); older
//! ones and the generations of runs that never ended are removed then. A run that does not
//! write every record it reads (a sync with a ledger skips unchanged ones) is refused at its
//! end, and the previous snapshot stays.
//!
//! Each stream has a description, `<dir>/.lockstep/<stream>.json` (its fields with their
//! logical types, its key and how its files are named), so that a files source on the same
//! directory reads the stream back with the types it was written with.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::Utc;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::evolution::plan_fields;
use lockstep_plugin_sdk::protocol::arrow_types::json_value;
use lockstep_plugin_sdk::{
    is_run_end_batch, run_wrote_every_record, tracing, ConnectorError, DataType, FieldInfo,
    OpenStreamRequest, Result, SchemaEvolution, StreamWriter, WriteOutcome,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{AfterRead, CsvOptions, Encoding, FilesConfig, Format, StreamSpec};

/// The format of `{run}` in file names: the UTC time the writer opened, to the millisecond.
const RUN_FORMAT: &str = "%Y%m%dT%H%M%S%3fZ";

/// The directory under [`DESCRIPTIONS_DIR`] that holds snapshot generations.
const SNAPSHOTS_DIR: &str = "snapshots";

/// The directory under a destination's `dir` that holds the stream descriptions.
pub(crate) const DESCRIPTIONS_DIR: &str = ".lockstep";

/// What a destination wrote about a stream, for sources reading it back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StreamDescription {
    pub stream: String,
    pub fields: Vec<FieldInfo>,
    #[serde(default)]
    pub primary_key: Vec<String>,
    pub format: String,
    /// A glob of the stream's file names, relative to the directory.
    pub pattern: String,
    #[serde(default)]
    pub delimiter: Option<String>,
    #[serde(default)]
    pub null: String,
}

impl StreamDescription {
    /// The source view of the stream, reading files in `dir`.
    pub(crate) fn source_spec(&self, dir: &Path) -> Result<StreamSpec> {
        let format = Format::parse(&self.format, "format")?;
        let mut csv = CsvOptions::default();
        if let Some(d) = self.delimiter.as_deref().and_then(|d| d.bytes().next()) {
            csv.delimiter = d;
        }
        csv.null = self.null.clone();
        let prefix = glob::Pattern::escape(&dir.to_string_lossy());
        Ok(StreamSpec {
            after_read: AfterRead::Keep,
            name: self.stream.clone(),
            pattern: format!("{prefix}/{}", self.pattern),
            format,
            csv,
            encoding: Encoding::Utf8,
            declared: Default::default(),
            declared_order: Some(
                self.fields
                    .iter()
                    .map(|f| (f.name.clone(), f.data_type, f.nullable))
                    .collect(),
            ),
            primary_key: self.primary_key.clone(),
            infer_rows: 1,
            // The destination renames complete files into place: none is ever half written.
            settle: std::time::Duration::ZERO,
            temporary: crate::config::DEFAULT_TEMPORARY
                .iter()
                .filter_map(|p| glob::Pattern::new(p).ok())
                .collect(),
            file_field: None,
            line_field: None,
            modified_field: None,
        })
    }
}

/// The descriptions of the streams written into `dir`.
pub(crate) fn descriptions(dir: &Path) -> Result<Vec<StreamDescription>> {
    let folder = dir.join(DESCRIPTIONS_DIR);
    let entries = match fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConnectorError::transient(format!(
                "listing `{}`: {e}",
                folder.display()
            )))
        }
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = fs::read_to_string(&path)
            .map_err(|e| ConnectorError::transient(format!("reading `{}`: {e}", path.display())))?;
        let description: StreamDescription = serde_json::from_str(&text).map_err(|e| {
            ConnectorError::schema(format!(
                "`{}` is not a stream description the files connector wrote ({e}); remove it \
                 or restore it",
                path.display()
            ))
        })?;
        found.push(description);
    }
    found.sort_by(|a, b| a.stream.cmp(&b.stream));
    Ok(found)
}

fn description_path(dir: &Path, stream: &str) -> PathBuf {
    dir.join(DESCRIPTIONS_DIR).join(format!("{stream}.json"))
}

/// Writes `bytes` to `path` atomically: a temporary file, synced, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let parent = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!(".{name}.tmp"));
    let io = |e: std::io::Error| io_error(&temp, e);
    let mut file = File::create(&temp).map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    fs::rename(&temp, path).map_err(|e| io_error(path, e))?;
    sync_dir(parent)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, e: std::io::Error) -> ConnectorError {
    let message = format!("writing `{}`: {e}", path.display());
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => ConnectorError::config(format!(
            "{message}; give the user Lockstep runs as write access to the directory"
        )),
        _ => ConnectorError::transient(message),
    }
}

/// Prepares `request.stream` for writing into `config`'s directory.
pub(crate) fn open_writer(config: &FilesConfig, request: OpenStreamRequest) -> Result<FilesWriter> {
    config.check_destination()?;
    let dir = config.destination_dir()?;
    let format = config.destination_format()?;
    let template = config.file_name_template()?;
    let stream = request.stream.clone();
    if stream.is_empty()
        || stream.starts_with('.')
        || stream.contains(['/', '\\'])
        || stream.chars().any(char::is_control)
    {
        return Err(ConnectorError::config(format!(
            "the stream name `{stream}` cannot be part of a file name; use letters, digits, `_`, \
             `-` and `.` (not first)"
        )));
    }
    let existing = descriptions(&dir)?.into_iter().find(|d| d.stream == stream);
    if existing.is_none() && !request.create_if_missing {
        return Err(ConnectorError::schema(format!(
            "stream `{stream}` does not exist in `{}` and the request does not allow creating it",
            dir.display()
        )));
    }
    let fields = match &existing {
        None => request.fields.clone(),
        Some(old) => evolve(
            &stream,
            &old.fields,
            &request.fields,
            request.schema_evolution,
        )?,
    };
    fs::create_dir_all(dir.join(DESCRIPTIONS_DIR)).map_err(|e| io_error(&dir, e))?;
    let ext = format.extension();
    // Digits where the template has `{run}` and `{seq}`, so that stream `a` does not match
    // the files of stream `a-b`.
    let digit = "[0-9]";
    let run_pattern = format!("{}T{}Z", digit.repeat(8), digit.repeat(9));
    let seq_pattern = format!("{}*", digit.repeat(5));
    let pattern = glob::Pattern::escape(&template)
        .replace("{stream}", &glob::Pattern::escape(&stream))
        .replace("{run}", &run_pattern)
        .replace("{seq}", &seq_pattern)
        .replace("{ext}", ext);
    let delimiter = config.destination_delimiter()?;
    let null = config.null.clone().unwrap_or_default();
    let run = Utc::now().format(RUN_FORMAT).to_string();
    if config.snapshot != Some(true) {
        recover_flushed(&dir)?;
    }
    let snapshot = if config.snapshot == Some(true) {
        Some(Snapshot::start(&dir, &stream, &run)?)
    } else {
        None
    };
    let pattern = match &snapshot {
        Some(_) => format!("{}/{pattern}", glob::Pattern::escape(&stream)),
        None => pattern,
    };
    let description = StreamDescription {
        stream: stream.clone(),
        fields: fields.clone(),
        primary_key: request.key.clone(),
        format: format.name().to_owned(),
        pattern,
        delimiter: Some((delimiter as char).to_string()),
        null: null.clone(),
    };
    let text = serde_json::to_vec_pretty(&description)
        .map_err(|e| ConnectorError::internal(e.to_string()))?;
    write_atomically(&description_path(&dir, &stream), &text)?;
    Ok(FilesWriter {
        base_name: template
            .replace("{stream}", &stream)
            .replace("{run}", &run)
            .replace("{ext}", ext),
        dir: snapshot.as_ref().map_or(dir, |s| s.generation.clone()),
        snapshot,
        fields,
        format,
        delimiter,
        null,
        max_file_bytes: config.max_file_bytes,
        per_run: config.one_file_per_run == Some(true),
        run_ended: false,
        seq: 0,
        open: None,
        staged: Vec::new(),
    })
}

/// The file beside a temporary file that records how many of its bytes a flush made durable.
fn flushed_marker(temp: &Path) -> PathBuf {
    let name = temp
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name.strip_suffix(".tmp").unwrap_or(&name);
    temp.with_file_name(format!("{base}.flushed"))
}

/// Publishes the files of one-file-per-run writers that went away without publishing them
/// (a crash): each temporary file with a recorded flushed length is cut back to it and renamed
/// into place.
fn recover_flushed(dir: &Path) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut recovered = false;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(base) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".flushed"))
        else {
            continue;
        };
        let marker = entry.path();
        let temp = dir.join(format!(".{base}.tmp"));
        let target = dir.join(base);
        let length = fs::read_to_string(&marker)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok());
        match length {
            Some(length) if temp.exists() && !target.exists() => {
                publish_flushed(&temp, &target, length)?;
                let _ = fs::remove_file(&marker);
                tracing::info!(file = %target.display(), bytes = length, "published the flushed part of a file a run left behind");
                recovered = true;
            }
            _ => {
                tracing::warn!(marker = %marker.display(), "a flushed-length record without its temporary file, or with a file of its name already in place; left as it is")
            }
        }
    }
    if recovered {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Cuts `temp` back to the `length` a flush made durable and renames it to `target`.
fn publish_flushed(temp: &Path, target: &Path, length: u64) -> Result<()> {
    let file = OpenOptions::new()
        .write(true)
        .open(temp)
        .map_err(|e| io_error(temp, e))?;
    file.set_len(length).map_err(|e| io_error(temp, e))?;
    file.sync_all().map_err(|e| io_error(temp, e))?;
    fs::rename(temp, target).map_err(|e| io_error(target, e))
}

/// The fields after applying the request's schema evolution policy to the stream's fields.
fn evolve(
    stream: &str,
    old: &[FieldInfo],
    new: &[FieldInfo],
    policy: SchemaEvolution,
) -> Result<Vec<FieldInfo>> {
    let plan = plan_fields(stream, new, policy, |name| {
        old.iter().any(|o| o.name == name)
    })?;
    let mut fields = old.to_vec();
    fields.extend(plan.added().iter().map(|f| (*f).clone()));
    Ok(fields)
}

/// A file being written under its temporary name.
struct PendingFile {
    temp: PathBuf,
    target: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    /// The bytes a flush made durable (one file per run).
    flushed: u64,
}

/// Writes one stream's records into files.
pub struct FilesWriter {
    dir: PathBuf,
    /// The file name with `{seq}` still to fill in.
    base_name: String,
    fields: Vec<FieldInfo>,
    format: Format,
    delimiter: u8,
    null: String,
    max_file_bytes: Option<u64>,
    /// One file per run: the open file is published when the run ends, not at each flush.
    per_run: bool,
    /// The engine said the run has written everything (the `run-end` batch).
    run_ended: bool,
    seq: u64,
    open: Option<PendingFile>,
    /// Complete files waiting under their temporary names for the next flush.
    staged: Vec<PendingFile>,
    /// In snapshot mode, the generation this run writes.
    snapshot: Option<Snapshot>,
}

/// A snapshot generation being written.
struct Snapshot {
    /// The destination directory.
    root: PathBuf,
    stream: String,
    /// The directory of this run's files.
    generation: PathBuf,
    /// `generation` relative to `root`, the link's target.
    target: PathBuf,
    /// Set by the run-end batch: whether the run wrote every record it read.
    ended: Option<bool>,
    /// The link points at this generation.
    published: bool,
}

impl Snapshot {
    /// Creates the generation directory of a run, refusing a `<dir>/<stream>` that is not a
    /// link this destination made.
    fn start(root: &Path, stream: &str, run: &str) -> Result<Snapshot> {
        let link = root.join(stream);
        if let Ok(meta) = fs::symlink_metadata(&link) {
            if !meta.file_type().is_symlink() {
                return Err(ConnectorError::config(format!(
                    "snapshot mode publishes stream `{stream}` as the link `{}`, but a file or \
                     directory of that name exists; move it away, or write this stream \
                     without `snapshot`",
                    link.display()
                )));
            }
        }
        let generations = Path::new(DESCRIPTIONS_DIR).join(SNAPSHOTS_DIR).join(stream);
        fs::create_dir_all(root.join(&generations)).map_err(|e| io_error(root, e))?;
        // A generation of its own, even for two runs within the same millisecond.
        let mut target = generations.join(run);
        let mut n = 1;
        while root.join(&target).exists() {
            target = generations.join(format!("{run}-{n}"));
            n += 1;
        }
        let generation = root.join(&target);
        fs::create_dir(&generation).map_err(|e| io_error(&generation, e))?;
        Ok(Snapshot {
            root: root.to_owned(),
            stream: stream.to_owned(),
            generation,
            target,
            ended: None,
            published: false,
        })
    }

    /// Points `<dir>/<stream>` at this generation atomically, then removes the generations
    /// older than the one it replaced.
    fn publish(&mut self) -> Result<()> {
        let link = self.root.join(&self.stream);
        let previous = fs::read_link(&link).ok();
        let temp = self.root.join(format!(".{}.link.tmp", self.stream));
        let _ = fs::remove_file(&temp);
        // The link is relative to `root`, so that the directory can be moved or mounted
        // elsewhere.
        std::os::unix::fs::symlink(&self.target, &temp).map_err(|e| io_error(&temp, e))?;
        fs::rename(&temp, &link).map_err(|e| io_error(&link, e))?;
        sync_dir(&self.root)?;
        self.published = true;
        tracing::info!(stream = %self.stream, generation = %self.target.display(), "snapshot published");
        let generations = self.generation.parent().map(Path::to_owned);
        let Some(generations) = generations else {
            return Ok(());
        };
        let keep: Vec<PathBuf> = [Some(self.target.clone()), previous]
            .into_iter()
            .flatten()
            .map(|t| self.root.join(t))
            .collect();
        for entry in fs::read_dir(&generations).into_iter().flatten().flatten() {
            let path = entry.path();
            if keep.iter().any(|k| k == &path) {
                continue;
            }
            if let Err(e) = fs::remove_dir_all(&path) {
                tracing::warn!(generation = %path.display(), "cannot remove an old snapshot generation: {e}");
            }
        }
        Ok(())
    }
}

impl FilesWriter {
    fn start_file(&mut self) -> Result<PendingFile> {
        self.seq += 1;
        let name = self.base_name.replace("{seq}", &format!("{:05}", self.seq));
        let target = self.dir.join(&name);
        if target.exists() {
            return Err(ConnectorError::internal(format!(
                "file `{}` already exists; the files destination never overwrites a file (check \
                 that `file_name` has `{{run}}` so that runs get names of their own)",
                target.display()
            )));
        }
        let temp = self.dir.join(format!(".{name}.tmp"));
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| io_error(&temp, e))?;
        let mut pending = PendingFile {
            temp,
            target,
            out: BufWriter::with_capacity(256 * 1024, file),
            bytes: 0,
            flushed: 0,
        };
        if self.format == Format::Csv {
            let header: Vec<&str> = self.fields.iter().map(|f| f.name.as_str()).collect();
            let line = self.csv_line(&header)?;
            write_bytes(&mut pending, &line)?;
        }
        Ok(pending)
    }

    fn csv_line<S: AsRef<[u8]>>(&self, cells: &[S]) -> Result<Vec<u8>> {
        let mut writer = csv::WriterBuilder::new()
            .delimiter(self.delimiter)
            .from_writer(Vec::new());
        writer
            .write_record(cells)
            .map_err(|e| ConnectorError::internal(format!("encoding CSV: {e}")))?;
        writer
            .into_inner()
            .map_err(|e| ConnectorError::internal(format!("encoding CSV: {e}")))
    }

    /// One row as a line of the file.
    fn encode_row(
        &self,
        batch: &RecordBatch,
        columns: &[Option<usize>],
        row: usize,
    ) -> Result<Vec<u8>> {
        let values = columns
            .iter()
            .zip(&self.fields)
            .map(|(column, field)| match column {
                Some(i) => json_value(batch.column(*i), row, Some(field.data_type)),
                None => Value::Null,
            });
        match self.format {
            Format::JsonLines => {
                let object: serde_json::Map<String, Value> = self
                    .fields
                    .iter()
                    .map(|f| f.name.clone())
                    .zip(values)
                    .collect();
                let mut line = serde_json::to_vec(&object)
                    .map_err(|e| ConnectorError::internal(format!("encoding JSON: {e}")))?;
                line.push(b'\n');
                Ok(line)
            }
            Format::Csv => {
                let cells: Vec<String> = values
                    .zip(&self.fields)
                    .map(|(value, field)| match value {
                        Value::Null => self.null.clone(),
                        // A JSON document is written as its JSON text (a JSON string quoted).
                        json if field.data_type == DataType::Json => json.to_string(),
                        Value::String(s) => s,
                        other => other.to_string(),
                    })
                    .collect();
                self.csv_line(&cells)
            }
        }
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<u64> {
        let schema = batch.schema();
        let columns: Vec<Option<usize>> = self
            .fields
            .iter()
            .map(|f| schema.index_of(&f.name).ok())
            .collect();
        if let Some(extra) = schema
            .fields()
            .iter()
            .find(|f| !self.fields.iter().any(|o| &o.name == f.name()))
        {
            return Err(ConnectorError::schema(format!(
                "the batch has field `{}`, which the stream's files do not have; open the \
                 stream with schema evolution `add-columns`",
                extra.name()
            )));
        }
        for row in 0..batch.num_rows() {
            let line = self.encode_row(batch, &columns, row)?;
            if self.open.is_none() {
                self.open = Some(self.start_file()?);
            }
            let Some(pending) = self.open.as_mut() else {
                continue;
            };
            write_bytes(pending, &line)?;
            if self.max_file_bytes.is_some_and(|max| pending.bytes >= max) {
                if let Some(full) = self.open.take() {
                    self.staged.push(close(full)?);
                }
            }
        }
        Ok(batch.num_rows() as u64)
    }

    fn publish(&mut self) -> Result<()> {
        if self.per_run && !self.run_ended {
            // The open file stays open for the run; what it holds so far becomes durable.
            if let Some(open) = self.open.as_mut() {
                make_durable(open)?;
            }
        } else if let Some(open) = self.open.take() {
            self.staged.push(close(open)?);
        }
        if self.staged.is_empty() {
            return Ok(());
        }
        for file in std::mem::take(&mut self.staged) {
            fs::rename(&file.temp, &file.target).map_err(|e| io_error(&file.target, e))?;
            remove_marker(&file.temp);
            tracing::debug!(file = %file.target.display(), bytes = file.bytes, "file written");
        }
        sync_dir(&self.dir)
    }
}

fn write_bytes(pending: &mut PendingFile, bytes: &[u8]) -> Result<()> {
    pending
        .out
        .write_all(bytes)
        .map_err(|e| io_error(&pending.temp, e))?;
    pending.bytes += bytes.len() as u64;
    Ok(())
}

/// Syncs what an open file holds so far and records its length beside it, so that a crash
/// cannot lose it (see [`recover_flushed`]).
fn make_durable(pending: &mut PendingFile) -> Result<()> {
    pending
        .out
        .flush()
        .map_err(|e| io_error(&pending.temp, e))?;
    pending
        .out
        .get_ref()
        .sync_data()
        .map_err(|e| io_error(&pending.temp, e))?;
    if pending.flushed != pending.bytes {
        write_atomically(
            &flushed_marker(&pending.temp),
            pending.bytes.to_string().as_bytes(),
        )?;
        pending.flushed = pending.bytes;
    }
    Ok(())
}

/// Removes the flushed-length record of a temporary file, if there is one.
fn remove_marker(temp: &Path) {
    let marker = flushed_marker(temp);
    match fs::remove_file(&marker) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(marker = %marker.display(), "cannot remove a flushed-length record: {e}")
        }
    }
}

/// Flushes and syncs a file's data; it stays under its temporary name.
fn close(mut pending: PendingFile) -> Result<PendingFile> {
    pending
        .out
        .flush()
        .map_err(|e| io_error(&pending.temp, e))?;
    pending
        .out
        .get_ref()
        .sync_all()
        .map_err(|e| io_error(&pending.temp, e))?;
    Ok(pending)
}

impl Drop for FilesWriter {
    fn drop(&mut self) {
        // A generation never published is never promised either.
        if let Some(snapshot) = &self.snapshot {
            if !snapshot.published {
                if let Err(e) = fs::remove_dir_all(&snapshot.generation) {
                    tracing::warn!(generation = %snapshot.generation.display(), "cannot remove an unpublished snapshot generation: {e}");
                }
            }
        }
        // One file per run, outside a snapshot: what a flush made durable was promised, so
        // each file holding some is published cut back to it.
        if self.per_run && self.snapshot.is_none() {
            let files: Vec<PendingFile> = self
                .open
                .take()
                .into_iter()
                .chain(self.staged.drain(..))
                .collect();
            let mut published = false;
            for file in files {
                if file.flushed == 0 {
                    self.staged.push(file);
                    continue;
                }
                let (temp, target, flushed) =
                    (file.temp.clone(), file.target.clone(), file.flushed);
                drop(file);
                match publish_flushed(&temp, &target, flushed) {
                    Ok(()) => {
                        remove_marker(&temp);
                        published = true;
                    }
                    // The record of the flushed length stays: the next writer retries.
                    Err(e) => {
                        tracing::warn!(file = %temp.display(), "cannot publish the flushed part of a file: {e}; the next run publishes it")
                    }
                }
            }
            if published {
                if let Err(e) = sync_dir(&self.dir) {
                    tracing::warn!("{e}");
                }
            }
        }
        // Records never flushed were never promised: their temporary files go.
        for file in self.open.take().into_iter().chain(self.staged.drain(..)) {
            if let Err(e) = fs::remove_file(&file.temp) {
                tracing::warn!(file = %file.temp.display(), "cannot remove an unflushed temporary file: {e}");
            }
        }
    }
}

impl StreamWriter for FilesWriter {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        if is_run_end_batch(&batch) {
            if let Some(snapshot) = self.snapshot.as_mut() {
                snapshot.ended = Some(run_wrote_every_record(&batch));
            }
            self.run_ended = true;
            return Ok(WriteOutcome::default());
        }
        let written = self.write(&batch)?;
        Ok(WriteOutcome {
            inserted: Some(written),
            ..Default::default()
        })
    }

    async fn delete(&mut self, _keys: RecordBatch) -> Result<WriteOutcome> {
        Err(ConnectorError::unsupported(
            "a files destination cannot delete records: it only adds files. Use mode `full` or \
             `incremental` for a sync into files, not `mirror`",
        ))
    }

    async fn flush(&mut self) -> Result<()> {
        self.publish()?;
        let Some(snapshot) = self.snapshot.as_mut() else {
            return Ok(());
        };
        match snapshot.ended {
            None => Ok(()),
            Some(true) => snapshot.publish(),
            Some(false) => Err(ConnectorError::config(format!(
                "stream `{}` is written in snapshot mode, which replaces the whole file set at \
                 the end of each run, but this run did not write every record it read (a sync \
                 with a ledger skips unchanged records), so the new set would miss records; \
                 the previous snapshot stays. Set `mode = \"full\"` and `ledger = false` on \
                 the sync",
                snapshot.stream
            ))),
        }
    }
}
