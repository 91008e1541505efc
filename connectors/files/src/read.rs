//! Reading a stream: its files in order, in batches of at most the batch size, each batch
//! with a checkpoint (the files read whole, and the file the batch ended in with the count of
//! its records delivered), so a read resumes exactly after the last batch delivered.
//!
//! Malformed records: a record that cannot be read (wrong number of values, bad JSON, a
//! value that does not parse as its field's type, a JSON key the stream does not know) is a
//! *source reject* (`lockstep_plugin_sdk::source_rejects`) naming the file, the line and the
//! reason, with the record's text; the records after it still arrive. Rejects travel in
//! batches of their own, in file order with the records: a batch holds either records or
//! rejects, so each batch's checkpoint covers exactly what was delivered before it.
//! What stops the read: bytes that do not decode (the `encoding` option), a CSV header with
//! a column the stream does not know, a file changing while it is read.
//!
//! CSV rows go straight into typed Arrow columns (`crate::columns`), each value parsed once;
//! JSON Lines records are JSON objects already and become a batch through
//! `lockstep_plugin_sdk::rows::batch_from_rows`. A reject's text is the record's text as the
//! file holds it (read again from the file at the record's span).
//!
//! A read at locations (`ReadRequest::locations`, a retry of source rejects) gives one batch
//! per place, in order: the record that starts at that line of that file as the file is now,
//! a reject when it still cannot be read or its file is no longer among the stream's files,
//! or no rows when no record starts there. It moves no file and keeps no position.
//!
//! Invariants: memory is bounded by one batch of records; a batch never spans two files, so
//! records held back for the next batch always belong to the file being read.

use std::collections::VecDeque;

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::{
    rejects_batch, tracing, BatchReader, ConnectorError, FieldInfo, ReadRequest, Result,
    SourceReject, StreamInfo,
};
use serde_json::{Map, Value};

use crate::columns::{CsvColumns, RowSource, Slot};
use crate::config::{Format, StreamSpec};
use crate::parse::{FileRecords, Span};
use crate::scan::{self, Checkpoint, Current, FileEntry, ToRead};
use crate::schema::names;

/// The file being read.
struct OpenFile {
    to_read: ToRead,
    records: FileRecords,
    /// The records (good or rejected) of this file handed on in batches, counting those of
    /// earlier reads that were skipped.
    delivered: u64,
    /// The file's modification time, microseconds since the epoch.
    modified_us: i64,
    /// The file's last record has been read.
    at_end: bool,
    /// Records read from the file but held back for the next batch (a batch holds either
    /// records or rejects).
    held: VecDeque<Held>,
    /// For a CSV file, the columns its rows are read into.
    columns: Option<CsvColumns>,
}

/// A record read but not yet in a batch.
enum Held {
    Reject(SourceReject),
    /// A CSV row that checked; its values, copied.
    Csv {
        record: csv::ByteRecord,
        line: u64,
    },
    /// A JSON Lines record with its added fields.
    Json {
        values: Map<String, Value>,
        line: u64,
        span: Span,
    },
}

/// The batches of one read of one stream.
pub struct FilesReader {
    spec: StreamSpec,
    /// The stream's fields, to check each record's names against.
    stream: StreamInfo,
    /// The fields the request asked for, in the stream's order.
    fields: Vec<FieldInfo>,
    batch_size: usize,
    done: Vec<FileEntry>,
    queue: VecDeque<ToRead>,
    current: Option<OpenFile>,
    /// For a read at locations (a retry of source rejects), the locations still to read.
    locations: Option<VecDeque<Value>>,
}

/// Starts a read of `stream` (described by `spec`) as `request` asks.
pub(crate) fn open_reader(
    spec: StreamSpec,
    stream: StreamInfo,
    request: &ReadRequest,
    default_batch_size: usize,
) -> Result<FilesReader> {
    if stream.fields.is_empty() {
        return Err(ConnectorError::config(format!(
            "stream `{}` has no fields: no file matches `{}` yet and `streams.{}.fields` \
             declares none",
            spec.name, spec.pattern, spec.name
        )));
    }
    let fields = match &request.fields {
        None => stream.fields.clone(),
        Some(wanted) => {
            for name in wanted {
                if stream.field(name).is_none() {
                    return Err(ConnectorError::schema(format!(
                        "stream `{}` has no field `{name}`; its fields are: {}",
                        spec.name,
                        names(&stream.fields)
                    )));
                }
            }
            stream
                .fields
                .iter()
                .filter(|f| wanted.contains(&f.name))
                .cloned()
                .collect()
        }
    };
    if let Some(locations) = &request.locations {
        // A retry reads single records again; it neither moves files nor keeps a position.
        return Ok(FilesReader {
            batch_size: 1,
            spec,
            stream,
            fields,
            done: Vec::new(),
            queue: VecDeque::new(),
            current: None,
            locations: Some(locations.iter().cloned().collect()),
        });
    }
    let checkpoint: Checkpoint = match &request.checkpoint {
        None | Some(Value::Null) => Checkpoint::default(),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
            ConnectorError::config(format!(
                "the checkpoint of stream `{}` is not one the files connector wrote ({e}); \
                 reset the sync with `lockstep run --full-refresh`",
                spec.name
            ))
        })?,
    };
    // The checkpoint given is the one the engine committed: the files it lists as read whole
    // are durable in the destination, and `after_read` may move or delete them now; not in a
    // dry run (a plan, a verify), which must leave the source as it found it.
    if !request.dry_run {
        crate::after_read::apply(&spec, &checkpoint.files)?;
    }
    let plan = scan::plan(&spec, &checkpoint, scan::now_us())?;
    tracing::info!(
        stream = %spec.name,
        to_read = plan.to_read.len(),
        already_read = plan.done.len(),
        "files planned"
    );
    Ok(FilesReader {
        batch_size: request.batch_size.unwrap_or(default_batch_size).max(1),
        spec,
        stream,
        fields,
        done: plan.done,
        queue: plan.to_read.into(),
        current: None,
        locations: None,
    })
}

impl FilesReader {
    /// Opens the next file of the queue, skipping records an earlier read delivered; `None`
    /// when no file is left.
    fn open_next(&mut self) -> Result<Option<OpenFile>> {
        while let Some(to_read) = self.queue.pop_front() {
            let found = &to_read.found;
            match scan::restat(found) {
                Some((size, mtime)) if size == found.size && mtime == found.mtime_us => {}
                Some(_) => {
                    tracing::info!(
                        file = %found.name,
                        "not read in this run: it changed since the run listed it (still being \
                         written?)"
                    );
                    continue;
                }
                None => {
                    tracing::info!(file = %found.name, "not read: it was removed or renamed");
                    continue;
                }
            }
            let mut records = FileRecords::open(&found.path, &found.name, &self.spec)?;
            self.check_columns(&records, &found.name)?;
            let columns = match records.csv() {
                Some(csv) => Some(CsvColumns::new(
                    self.fields.clone(),
                    self.slots(csv.columns()),
                    self.spec.csv.null.clone(),
                    self.spec.encoding,
                    self.batch_size.min(64 * 1024),
                )?),
                None => None,
            };
            records.skip(to_read.skip_records)?;
            return Ok(Some(OpenFile {
                delivered: to_read.skip_records,
                modified_us: found.mtime_us,
                to_read,
                records,
                at_end: false,
                held: VecDeque::new(),
                columns,
            }));
        }
        Ok(None)
    }

    /// Where each requested field's values come from in a CSV file with `columns`.
    fn slots(&self, columns: &[String]) -> Vec<Slot> {
        let is = |option: &Option<String>, name: &str| option.as_deref() == Some(name);
        self.fields
            .iter()
            .map(|field| {
                let name = field.name.as_str();
                if is(&self.spec.file_field, name) {
                    Slot::File
                } else if is(&self.spec.line_field, name) {
                    Slot::Line
                } else if is(&self.spec.modified_field, name) {
                    Slot::Modified
                } else {
                    columns
                        .iter()
                        .position(|c| c == name)
                        .map_or(Slot::Missing, Slot::Column)
                }
            })
            .collect()
    }

    /// A CSV file whose header has a column the stream does not know is refused.
    fn check_columns(&self, records: &FileRecords, shown: &str) -> Result<()> {
        for column in records.columns().unwrap_or_default() {
            if self.stream.field(column).is_none() {
                return Err(self.unknown_field(shown, 1, column));
            }
        }
        Ok(())
    }

    fn unknown_field(&self, shown: &str, line: u64, name: &str) -> ConnectorError {
        ConnectorError::schema(format!(
            "file `{shown}`, line {line}: field `{name}` is not a field of stream `{}` (its \
             fields come from the first file and `streams.{}.fields`: {}); declare it in \
             `streams.{}.fields` with its type",
            self.spec.name,
            self.spec.name,
            names(&self.stream.fields),
            self.spec.name
        ))
    }

    fn checkpoint(&self) -> Value {
        let checkpoint = Checkpoint {
            files: self.done.clone(),
            current: self.current.as_ref().map(|open| Current {
                file: open.to_read.entry.clone(),
                records: open.delivered,
            }),
        };
        serde_json::to_value(checkpoint).unwrap_or(Value::Null)
    }

    /// The checkpoint after a batch; a file whose last record it holds is closed first, so
    /// that the checkpoint counts the file as read whole.
    fn checkpoint_after_batch(&mut self) -> Result<Value> {
        if self
            .current
            .as_ref()
            .is_some_and(|open| open.at_end && open.held.is_empty())
        {
            self.finish_file()?;
        }
        Ok(self.checkpoint())
    }

    /// Closes the current file, whose records have all been delivered.
    fn finish_file(&mut self) -> Result<()> {
        let Some(open) = self.current.take() else {
            return Ok(());
        };
        let found = &open.to_read.found;
        if scan::restat(found) != Some((found.size, found.mtime_us)) {
            return Err(ConnectorError::transient(format!(
                "file `{}` changed while it was read (something still writes it: write it \
                 under a temporary name and rename it when complete, or raise \
                 `streams.{}.settle`); the run can be retried",
                found.name, self.spec.name
            )));
        }
        self.done.push(open.to_read.entry);
        Ok(())
    }

    /// The next batch of the current CSV file (its rows or its rejects), or `None` when the
    /// file has no more records.
    fn csv_batch(&mut self) -> Result<Option<RecordBatch>> {
        let batch_size = self.batch_size;
        let mut rejects: Vec<SourceReject> = Vec::new();
        let Some(open) = self.current.as_mut() else {
            return Ok(None);
        };
        let shown = open.to_read.found.name.clone();
        loop {
            let Some(columns) = open.columns.as_mut() else {
                return Ok(None);
            };
            if columns.len() + rejects.len() >= batch_size {
                break;
            }
            // A row read before, held back from the last batch, or the file's next row.
            let (line, held_record) = match open.held.pop_front() {
                Some(Held::Reject(reject)) => {
                    if columns.len() > 0 {
                        open.held.push_front(Held::Reject(reject));
                        break;
                    }
                    rejects.push(reject);
                    continue;
                }
                Some(Held::Csv { record, line }) => (line, Some(record)),
                Some(Held::Json { .. }) => {
                    return Err(ConnectorError::internal(
                        "a JSON Lines record held back in a CSV file",
                    ))
                }
                None if open.at_end => break,
                None => {
                    let Some(csv) = open.records.csv() else {
                        return Ok(None);
                    };
                    let Some(row) = csv.read_row()? else {
                        open.at_end = true;
                        break;
                    };
                    let problem = match row.wrong_count {
                        Some(reason) => Some((None, reason)),
                        None => columns.check(csv.record()).err().map(|bad| {
                            let reason = bad_value_reason(&self.spec.name, &bad.field, &bad.reason);
                            (Some(bad.field), reason)
                        }),
                    };
                    if let Some((field, reason)) = problem {
                        let reject = source_reject(
                            &shown,
                            row.line,
                            open.records.raw_text(row.span)?,
                            field,
                            reason,
                        );
                        if columns.len() > 0 {
                            open.held.push_back(Held::Reject(reject));
                            break;
                        }
                        rejects.push(reject);
                        continue;
                    }
                    if !rejects.is_empty() {
                        open.held.push_back(Held::Csv {
                            record: csv.record().clone(),
                            line: row.line,
                        });
                        break;
                    }
                    let source = RowSource {
                        file: &shown,
                        line: row.line,
                        modified_us: open.modified_us,
                    };
                    columns.append(csv.record(), &source);
                    continue;
                }
            };
            // A held row checked when it was read; it is checked again to fill the cells.
            let Some(record) = held_record else { continue };
            if !rejects.is_empty() {
                open.held.push_front(Held::Csv { record, line });
                break;
            }
            if let Err(bad) = columns.check(&record) {
                return Err(ConnectorError::internal(format!(
                    "a held row of file `{shown}`, line {line} no longer checks: {}",
                    bad.reason
                )));
            }
            let source = RowSource {
                file: &shown,
                line,
                modified_us: open.modified_us,
            };
            columns.append(&record, &source);
        }
        let rows = open.columns.as_ref().map_or(0, CsvColumns::len);
        if !rejects.is_empty() {
            open.delivered += rejects.len() as u64;
            return rejects_batch(&rejects).map(Some).map_err(|e| {
                ConnectorError::internal(format!("cannot build a batch of rejects: {e}"))
            });
        }
        if rows == 0 {
            return Ok(None);
        }
        open.delivered += rows as u64;
        match open.columns.as_mut() {
            Some(columns) => columns.finish().map(Some),
            None => Ok(None),
        }
    }

    /// The next batch of the current JSON Lines file (its records or its rejects), or `None`
    /// when the file has no more records.
    fn json_batch(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            let mut rows: Vec<Map<String, Value>> = Vec::new();
            let mut lines: Vec<(u64, Span)> = Vec::new();
            let mut rejects: Vec<SourceReject> = Vec::new();
            while rows.len() + rejects.len() < self.batch_size {
                let Some(item) = self.next_json_item()? else {
                    break;
                };
                let Some(open) = self.current.as_mut() else {
                    break;
                };
                match item {
                    Held::Json { values, line, span } => {
                        if !rejects.is_empty() {
                            open.held.push_front(Held::Json { values, line, span });
                            break;
                        }
                        rows.push(values);
                        lines.push((line, span));
                    }
                    Held::Reject(reject) => {
                        if !rows.is_empty() {
                            open.held.push_front(Held::Reject(reject));
                            break;
                        }
                        rejects.push(reject);
                    }
                    Held::Csv { .. } => {
                        return Err(ConnectorError::internal(
                            "a CSV row held back in a JSON Lines file",
                        ))
                    }
                }
            }
            let Some(open) = self.current.as_mut() else {
                return Ok(None);
            };
            if !rejects.is_empty() {
                open.delivered += rejects.len() as u64;
                return rejects_batch(&rejects).map(Some).map_err(|e| {
                    ConnectorError::internal(format!("cannot build a batch of rejects: {e}"))
                });
            }
            if rows.is_empty() {
                return Ok(None);
            }
            match batch_from_rows(&self.fields, &rows) {
                Ok(batch) => {
                    open.delivered += rows.len() as u64;
                    return Ok(Some(batch));
                }
                // A value that does not convert to its field's type rejects its record: the
                // records before it form the next batch, the rest are read again after it.
                Err(e) => {
                    let at = e.row.min(rows.len() - 1);
                    let shown = open.to_read.found.name.clone();
                    let (line, span) = lines[at];
                    let reject = source_reject(
                        &shown,
                        line,
                        open.records.raw_text(span)?,
                        Some(e.field.clone()),
                        bad_value_reason(&self.spec.name, &e.field, &e.reason),
                    );
                    let tail = rows.split_off(at + 1);
                    let tail_lines = lines.split_off(at + 1);
                    rows.truncate(at);
                    lines.truncate(at);
                    let Some(open) = self.current.as_mut() else {
                        return Ok(None);
                    };
                    for (values, (line, span)) in tail.into_iter().zip(tail_lines).rev() {
                        open.held.push_front(Held::Json { values, line, span });
                    }
                    open.held.push_front(Held::Reject(reject));
                    for (values, (line, span)) in rows.into_iter().zip(lines).rev() {
                        open.held.push_front(Held::Json { values, line, span });
                    }
                }
            }
        }
    }

    /// The next record of the current JSON Lines file, held back or read, with its added
    /// fields; `None` at the end of the file.
    fn next_json_item(&mut self) -> Result<Option<Held>> {
        let Some(open) = self.current.as_mut() else {
            return Ok(None);
        };
        if let Some(item) = open.held.pop_front() {
            return Ok(Some(item));
        }
        if open.at_end {
            return Ok(None);
        }
        let shown = open.to_read.found.name.clone();
        let record = match open.records.next_record()? {
            None => {
                open.at_end = true;
                return Ok(None);
            }
            Some(Err(malformed)) => {
                return Ok(Some(Held::Reject(source_reject(
                    &shown,
                    malformed.line,
                    malformed.raw,
                    None,
                    malformed.reason,
                ))));
            }
            Some(Ok(record)) => record,
        };
        let mut values = record.values;
        if let Some(unknown) = values.keys().find(|k| self.stream.field(k).is_none()) {
            let reason = format!(
                "field `{unknown}` is not a field of stream `{}` (its fields come from the \
                 first file and `streams.{}.fields`: {}); declare it in `streams.{}.fields` \
                 with its type",
                self.spec.name,
                self.spec.name,
                names(&self.stream.fields),
                self.spec.name
            );
            let unknown = unknown.clone();
            let raw = open.records.raw_text(record.span)?;
            return Ok(Some(Held::Reject(source_reject(
                &shown,
                record.line,
                raw,
                Some(unknown),
                reason,
            ))));
        }
        if let Some(name) = &self.spec.file_field {
            values.insert(name.clone(), Value::String(shown));
        }
        if let Some(name) = &self.spec.line_field {
            values.insert(name.clone(), Value::from(record.line));
        }
        if let Some(name) = &self.spec.modified_field {
            let modified = chrono::DateTime::<chrono::Utc>::from_timestamp_micros(open.modified_us)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            values.insert(name.clone(), Value::String(modified));
        }
        Ok(Some(Held::Json {
            values,
            line: record.line,
            span: record.span,
        }))
    }

    /// The one batch of a read at `location` (`{"file", "line", "text"}`): the record that
    /// starts at that line of that file as it is now, a source reject when it still cannot be
    /// read (or its file is gone), or no rows when no record starts there any more.
    fn read_at(&self, location: &Value) -> Result<RecordBatch> {
        let file = location.get("file").and_then(Value::as_str);
        let line = location.get("line").and_then(Value::as_u64);
        let (Some(file), Some(line)) = (file, line) else {
            return Err(ConnectorError::config(format!(
                "a place to read a record again at must name a `file` and a `line`, found \
                 {location}"
            )));
        };
        let no_rows = || {
            batch_from_rows(&self.fields, &[])
                .map_err(|e| ConnectorError::internal(format!("cannot build a batch: {e}")))
        };
        let listed = scan::list_files(&self.spec)?
            .into_iter()
            .find(|f| f.name == file);
        let Some(found) = listed else {
            let text = location
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let reject = source_reject(
                file,
                line,
                text.to_owned(),
                None,
                format!(
                    "file `{file}` is no longer among the files of stream `{}` (`{}`): it was \
                     moved, deleted (`after_read`?) or renamed, so the record cannot be read \
                     again; fix the record and drop it in a new file",
                    self.spec.name, self.spec.pattern
                ),
            );
            return rejects_batch(&[reject]).map_err(|e| {
                ConnectorError::internal(format!("cannot build a batch of rejects: {e}"))
            });
        };
        // The position of the record that starts at `line`, counted as a resumed read skips.
        let mut records = FileRecords::open(&found.path, &found.name, &self.spec)?;
        let mut index = 0u64;
        let skip = loop {
            let start = match records.csv() {
                Some(csv) => csv.read_row()?.map(|row| row.line),
                None => records.next_record()?.map(|next| match next {
                    Ok(record) => record.line,
                    Err(malformed) => malformed.line,
                }),
            };
            match start {
                Some(at) if at < line => index += 1,
                Some(at) if at == line => break Some(index),
                _ => break None,
            }
        };
        let Some(skip) = skip else {
            return no_rows();
        };
        let entry = FileEntry {
            name: found.name.clone(),
            size: found.size,
            mtime_us: found.mtime_us,
            hash: String::new(),
        };
        let mut one = FilesReader {
            spec: self.spec.clone(),
            stream: self.stream.clone(),
            fields: self.fields.clone(),
            batch_size: 1,
            done: Vec::new(),
            queue: VecDeque::from([ToRead {
                found,
                entry,
                skip_records: skip,
            }]),
            current: None,
            locations: None,
        };
        match one.read_next()? {
            Some((batch, _)) => Ok(batch),
            None => no_rows(),
        }
    }

    async fn next(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if let Some(locations) = self.locations.as_mut() {
            let Some(location) = locations.pop_front() else {
                return Ok(None);
            };
            return Ok(Some((self.read_at(&location)?, Value::Null)));
        }
        self.read_next()
    }

    fn read_next(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        loop {
            if self.current.is_none() {
                self.current = self.open_next()?;
                if self.current.is_none() {
                    return Ok(None);
                }
            }
            let batch = match self.spec.format {
                Format::Csv => self.csv_batch()?,
                Format::JsonLines => self.json_batch()?,
            };
            match batch {
                Some(batch) => return Ok(Some((batch, self.checkpoint_after_batch()?))),
                None => self.finish_file()?,
            }
        }
    }
}

/// The reason of a reject for a value that does not fit its field.
fn bad_value_reason(stream: &str, field: &str, reason: &str) -> String {
    format!(
        "field `{field}`: {reason}; declare the field's type in `streams.{stream}.fields` (e.g. \
         as text, and cast it in the sync's mapping) or fix the value"
    )
}

/// A reject at `line` of `file`.
fn source_reject(
    file: &str,
    line: u64,
    raw: String,
    field: Option<String>,
    reason: String,
) -> SourceReject {
    SourceReject {
        reason,
        raw,
        location: Map::from_iter([
            ("file".to_owned(), Value::String(file.to_owned())),
            ("line".to_owned(), Value::from(line)),
        ]),
        field,
    }
}

impl BatchReader for FilesReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        self.next().await
    }
}
