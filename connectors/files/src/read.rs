//! Reading a stream: its files in order, in batches of at most the batch size, each batch
//! with a checkpoint (the files read whole, and the file the batch ended in with the count of
//! its records delivered), so a read resumes exactly after the last batch delivered.
//!
//! Malformed records: the source protocol has no way to report a rejected record (a reader
//! returns batches and checkpoints only), so a malformed record (wrong number of values, bad
//! JSON, a value that does not parse as its field's type) fails the read with an error that
//! names the file, the line and the reason of every malformed record of that file (up to
//! [`MAX_REPORTED`]). The records before it have been delivered; nothing after it is skipped
//! silently, and once the file is fixed it is read again from its start.
//!
//! Invariant: memory is bounded by one batch of records.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::{
    tracing, BatchReader, ConnectorError, FieldInfo, ReadRequest, Result, StreamInfo,
};
use serde_json::{Map, Value};

use crate::config::StreamSpec;
use crate::parse::{FileRecords, Malformed};
use crate::scan::{self, Checkpoint, Current, FileEntry, ToRead};
use crate::schema::names;

/// How many malformed records of a file one error lists.
pub(crate) const MAX_REPORTED: usize = 20;

/// The file being read.
struct OpenFile {
    to_read: ToRead,
    records: FileRecords,
    delivered: u64,
    modified: String,
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

    /// The error for a file with malformed records: this one and the next ones of the file.
    fn malformed(&mut self, first: Malformed) -> ConnectorError {
        let Some(open) = self.current.as_mut() else {
            return ConnectorError::internal("a malformed record without an open file");
        };
        let shown = open.to_read.found.name.clone();
        let mut problems = vec![first];
        let mut more = 0usize;
        while let Ok(Some(next)) = open.records.next_record() {
            if let Err(m) = next {
                if problems.len() < MAX_REPORTED {
                    problems.push(m);
                } else {
                    more += 1;
                }
            }
        }
        let lines: Vec<String> = problems
            .iter()
            .map(|m| format!("line {}: {}", m.line, m.reason))
            .collect();
        let details = serde_json::json!({
            "file": shown,
            "malformed": problems.iter().map(|m| serde_json::json!({"line": m.line, "reason": m.reason})).collect::<Vec<_>>(),
        });
        let and_more = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        ConnectorError::schema(format!(
            "file `{shown}` has {} malformed record{}: {}{and_more}. The records before line {} \
             were delivered; the files connector cannot pass a single record on as a reject \
             (the source protocol has no channel for it), so the read stops here: fix the file \
             and the next run reads it again from its start",
            problems.len() + more,
            if problems.len() + more == 1 { "" } else { "s" },
            lines.join("; "),
            problems[0].line
        ))
        .with_details(details)
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

    async fn next(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        let mut rows: Vec<Map<String, Value>> = Vec::new();
        // The file and line of each row, for messages.
        let mut origins: Vec<(String, u64)> = Vec::new();
        while rows.len() < self.batch_size {
            if self.current.is_none() {
                self.current = self.open_next()?;
                if self.current.is_none() {
                    break;
                }
            }
            let Some(open) = self.current.as_mut() else {
                break;
            };
            let next = open.records.next_record()?;
            let record = match next {
                None => {
                    let found = &open.to_read.found;
                    if scan::restat(found) != Some((found.size, found.mtime_us)) {
                        return Err(ConnectorError::transient(format!(
                            "file `{}` changed while it was read (something still writes it: \
                             write it under a temporary name and rename it when complete, or \
                             raise `streams.{}.settle`); the run can be retried",
                            found.name, self.spec.name
                        )));
                    }
                    let finished = self.current.take().map(|o| o.to_read.entry);
                    self.done.extend(finished);
                    continue;
                }
                Some(Err(malformed)) => return Err(self.malformed(malformed)),
                Some(Ok(record)) => record,
            };
            let shown = open.to_read.found.name.clone();
            // A CSV file's columns were checked against the stream once, at its header.
            let checked = open.records.columns().is_some();
            let mut values = record.values;
            if !checked {
                if let Some(unknown) = values.keys().find(|k| self.stream.field(k).is_none()) {
                    return Err(self.unknown_field(&shown, record.line, unknown));
                }
            } else {
                // A CSV value of a json field is JSON text: parse it, so that it is not taken
                // for a JSON string.
                for name in &self.json_fields {
                    if let Some(value) = values.get_mut(name) {
                        if let Value::String(text) = value {
                            *value = serde_json::from_str(text).map_err(|e| {
                                ConnectorError::schema(format!(
                                    "file `{shown}`, line {}: field `{name}` is declared json, \
                                     but its value is not JSON ({e}); fix the value or declare \
                                     the field as text in `streams.{}.fields`",
                                    record.line, self.spec.name
                                ))
                            })?;
                        }
                    }
                }
            }
            if let Some(name) = &self.spec.file_field {
                values.insert(name.clone(), Value::String(shown.clone()));
            }
            if let Some(name) = &self.spec.line_field {
                values.insert(name.clone(), Value::from(record.line));
            }
            if let Some(name) = &self.spec.modified_field {
                values.insert(name.clone(), Value::String(open.modified.clone()));
            }
            open.delivered += 1;
            rows.push(values);
            origins.push((shown, record.line));
        }
        if rows.is_empty() {
            return Ok(None);
        }
        let batch = batch_from_rows(&self.fields, &rows).map_err(|e| {
            let (file, line) = origins
                .get(e.row)
                .cloned()
                .unwrap_or_else(|| (String::from("?"), 0));
            ConnectorError::schema(format!(
                "file `{file}`, line {line}: field `{}`: {}. Declare the field's type in \
                 `streams.{}.fields` (e.g. as text, and cast it in the sync's mapping, which \
                 rejects single records) or fix the value; the batches before this one were \
                 delivered, and the file is read again from its start once it changes",
                e.field, e.reason, self.spec.name
            ))
            .with_details(serde_json::json!({ "file": file, "line": line, "field": e.field }))
        })?;
        Ok(Some((batch, self.checkpoint())))
    }
}

impl BatchReader for FilesReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        self.next().await
    }
}
