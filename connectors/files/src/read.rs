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
//! Invariants: memory is bounded by one batch of records; a batch never spans two files, so
//! records taken back (a row that fails to convert) always belong to the file being read.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::{
    rejects_batch, tracing, BatchReader, ConnectorError, FieldInfo, ReadRequest, Result,
    SourceReject, StreamInfo,
};
use serde_json::{Map, Value};

use crate::config::StreamSpec;
use crate::parse::FileRecords;
use crate::scan::{self, Checkpoint, Current, FileEntry, ToRead};
use crate::schema::names;

/// The file being read.
struct OpenFile {
    to_read: ToRead,
    records: FileRecords,
    /// The records (good or rejected) of this file handed on in batches, counting those of
    /// earlier reads that were skipped.
    delivered: u64,
    modified: String,
    /// The file's last record has been read.
    at_end: bool,
    /// Records read from the file but taken back from a batch, to be handed on next.
    taken_back: VecDeque<Item>,
}

/// One record of a file, read and ready for a batch, or rejected.
enum Item {
    Row {
        values: Map<String, Value>,
        line: u64,
    },
    Reject(SourceReject),
}

/// What the next step of a read gave.
enum Step {
    Item(Item),
    /// The current file has no more records.
    EndOfFile,
    /// No file is left.
    Done,
}

/// The batches of one read of one stream.
pub struct FilesReader {
    spec: StreamSpec,
    /// The stream's fields, to check each record's names against.
    stream: StreamInfo,
    /// The fields the request asked for, in the stream's order.
    fields: Vec<FieldInfo>,
    batch_size: usize,
    /// The fields of type json, whose CSV text is parsed as JSON.
    json_fields: Vec<String>,
    done: Vec<FileEntry>,
    queue: VecDeque<ToRead>,
    current: Option<OpenFile>,
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
    let json_fields = stream
        .fields
        .iter()
        .filter(|f| f.data_type == lockstep_plugin_sdk::DataType::Json)
        .map(|f| f.name.clone())
        .collect();
    Ok(FilesReader {
        json_fields,
        batch_size: request.batch_size.unwrap_or(default_batch_size).max(1),
        spec,
        stream,
        fields,
        done: plan.done,
        queue: plan.to_read.into(),
        current: None,
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
            for _ in 0..to_read.skip_records {
                if records.next_record()?.is_none() {
                    break;
                }
            }
            let modified = DateTime::<Utc>::from_timestamp_micros(found.mtime_us)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            return Ok(Some(OpenFile {
                delivered: to_read.skip_records,
                to_read,
                records,
                modified,
                at_end: false,
                taken_back: VecDeque::new(),
            }));
        }
        Ok(None)
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

    /// A reject at `line` of the current file.
    fn reject(&self, line: u64, raw: String, field: Option<String>, reason: String) -> Item {
        let file = self
            .current
            .as_ref()
            .map(|open| open.to_read.found.name.clone())
            .unwrap_or_default();
        Item::Reject(SourceReject {
            reason,
            raw,
            location: Map::from_iter([
                ("file".to_owned(), Value::String(file)),
                ("line".to_owned(), Value::from(line)),
            ]),
            field,
        })
    }

    /// The next record of the current file (opening the next file when there is none).
    fn step(&mut self) -> Result<Step> {
        if self.current.is_none() {
            self.current = self.open_next()?;
        }
        let Some(open) = self.current.as_mut() else {
            return Ok(Step::Done);
        };
        if let Some(item) = open.taken_back.pop_front() {
            open.delivered += 1;
            return Ok(Step::Item(item));
        }
        if open.at_end {
            return Ok(Step::EndOfFile);
        }
        let record = match open.records.next_record()? {
            None => {
                open.at_end = true;
                return Ok(Step::EndOfFile);
            }
            Some(Err(malformed)) => {
                open.delivered += 1;
                return Ok(Step::Item(self.reject(
                    malformed.line,
                    malformed.raw,
                    None,
                    malformed.reason,
                )));
            }
            Some(Ok(record)) => record,
        };
        open.delivered += 1;
        let modified = open.modified.clone();
        let shown = open.to_read.found.name.clone();
        // A CSV file's columns were checked against the stream once, at its header.
        let checked = open.records.columns().is_some();
        let mut values = record.values;
        if !checked {
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
                return Ok(Step::Item(self.reject(
                    record.line,
                    row_text(&values),
                    Some(unknown),
                    reason,
                )));
            }
        } else {
            // A CSV value of a json field is JSON text: parse it, so that it is not taken for
            // a JSON string.
            for name in &self.json_fields {
                if let Some(Value::String(text)) = values.get(name) {
                    match serde_json::from_str(text) {
                        Ok(parsed) => {
                            values.insert(name.clone(), parsed);
                        }
                        Err(e) => {
                            let reason = format!(
                                "field `{name}` is declared json, but its value is not JSON \
                                 ({e}); fix the value or declare the field as text in \
                                 `streams.{}.fields`",
                                self.spec.name
                            );
                            let field = Some(name.clone());
                            return Ok(Step::Item(self.reject(
                                record.line,
                                row_text(&values),
                                field,
                                reason,
                            )));
                        }
                    }
                }
            }
        }
        if let Some(name) = &self.spec.file_field {
            values.insert(name.clone(), Value::String(shown));
        }
        if let Some(name) = &self.spec.line_field {
            values.insert(name.clone(), Value::from(record.line));
        }
        if let Some(name) = &self.spec.modified_field {
            values.insert(name.clone(), Value::String(modified));
        }
        Ok(Step::Item(Item::Row {
            values,
            line: record.line,
        }))
    }

    /// Puts `items` back in front of the current file's unread records.
    fn take_back(&mut self, items: Vec<Item>) {
        if let Some(open) = self.current.as_mut() {
            open.delivered -= items.len() as u64;
            for item in items.into_iter().rev() {
                open.taken_back.push_front(item);
            }
        }
    }

    /// The checkpoint after a batch; a file whose last record it holds is closed first, so
    /// that the checkpoint counts the file as read whole.
    fn checkpoint_after_batch(&mut self) -> Result<Value> {
        if self
            .current
            .as_ref()
            .is_some_and(|open| open.at_end && open.taken_back.is_empty())
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

    async fn next(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        loop {
            let mut rows: Vec<Map<String, Value>> = Vec::new();
            let mut lines: Vec<u64> = Vec::new();
            let mut rejects: Vec<SourceReject> = Vec::new();
            while rows.len() + rejects.len() < self.batch_size {
                match self.step()? {
                    Step::Done => break,
                    Step::EndOfFile if rows.is_empty() && rejects.is_empty() => {
                        self.finish_file()?
                    }
                    // A batch never spans two files.
                    Step::EndOfFile => break,
                    Step::Item(Item::Row { values, line }) => {
                        if !rejects.is_empty() {
                            self.take_back(vec![Item::Row { values, line }]);
                            break;
                        }
                        rows.push(values);
                        lines.push(line);
                    }
                    Step::Item(Item::Reject(reject)) => {
                        if !rows.is_empty() {
                            self.take_back(vec![Item::Reject(reject)]);
                            break;
                        }
                        rejects.push(reject);
                    }
                }
            }
            if !rejects.is_empty() {
                let batch = rejects_batch(&rejects).map_err(|e| {
                    ConnectorError::internal(format!("cannot build a batch of rejects: {e}"))
                })?;
                return Ok(Some((batch, self.checkpoint_after_batch()?)));
            }
            // A value that does not convert to its field's type rejects its row: the rows
            // before it form the batch, the rest go back to be read again.
            while !rows.is_empty() {
                match batch_from_rows(&self.fields, &rows) {
                    Ok(batch) => return Ok(Some((batch, self.checkpoint_after_batch()?))),
                    Err(e) => {
                        let mut tail = rows.split_off(e.row.min(rows.len() - 1));
                        let tail_lines = lines.split_off(rows.len());
                        let mut back = Vec::with_capacity(tail.len());
                        let first = tail.remove(0);
                        back.push(self.reject(
                            tail_lines[0],
                            row_text(&first),
                            Some(e.field.clone()),
                            format!(
                                "field `{}`: {}; declare the field's type in \
                                 `streams.{}.fields` (e.g. as text, and cast it in the sync's \
                                 mapping) or fix the value",
                                e.field, e.reason, self.spec.name
                            ),
                        ));
                        back.extend(
                            tail.into_iter()
                                .zip(tail_lines.into_iter().skip(1))
                                .map(|(values, line)| Item::Row { values, line }),
                        );
                        self.take_back(back);
                    }
                }
            }
            if self.current.is_none() && self.queue.is_empty() {
                return Ok(None);
            }
        }
    }
}

/// A record's values as JSON text, the text of a reject that parsed as a record.
fn row_text(values: &Map<String, Value>) -> String {
    serde_json::to_string(values).unwrap_or_default()
}

impl BatchReader for FilesReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        self.next().await
    }
}
