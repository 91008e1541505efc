//! Reading the records of one file, CSV or JSON Lines, one at a time.
//!
//! A record is a JSON object of the file's values (CSV values as strings, or null where the
//! value is the stream's null text) with the line it starts on. A record that cannot be
//! parsed (a CSV row with the wrong number of values, a JSON line that is not an object) is
//! a [`Malformed`] naming its line; the records after it can still be read. Bytes that do
//! not decode in the stream's encoding are an error for the whole file, naming the file, the
//! line and the `encoding` option to set.
//!
//! Invariant: memory is bounded by one record; files are streamed through buffered readers,
//! never loaded whole.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use lockstep_plugin_sdk::{ConnectorError, Result};
use serde_json::{Map, Value};

use crate::config::{Encoding, Format, StreamSpec};

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One record of a file and the line it starts on (1-based).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub line: u64,
    pub values: Map<String, Value>,
}

/// A record that could not be parsed, and why.
#[derive(Debug, Clone)]
pub(crate) struct Malformed {
    pub line: u64,
    pub reason: String,
    /// The record's text: a JSON line as it is, a CSV row's values joined by the delimiter.
    pub raw: String,
}

/// What reading the next record gave.
pub(crate) type Next = Option<std::result::Result<Record, Malformed>>;

/// The records of one open file.
pub(crate) enum FileRecords {
    Csv(CsvRecords),
    JsonLines(JsonRecords),
}

impl FileRecords {
    /// Opens `path` for `spec`'s format, reading the CSV header when there is one.
    pub(crate) fn open(path: &Path, shown: &str, spec: &StreamSpec) -> Result<FileRecords> {
        let file = File::open(path).map_err(|e| io_error(shown, "opening", &e))?;
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let has_bom = skip_bom(&mut reader).map_err(|e| io_error(shown, "reading", &e))?;
        if has_bom && spec.encoding != Encoding::Utf8 {
            return Err(ConnectorError::config(format!(
                "file `{shown}` starts with a UTF-8 byte-order mark, but stream `{}` sets \
                 `encoding = \"{}\"`; the file is UTF-8: remove `encoding` from \
                 `streams.{}` (or set it to `utf-8`)",
                spec.name,
                spec.encoding.name(),
                spec.name
            )));
        }
        match spec.format {
            Format::Csv => CsvRecords::open(reader, shown, spec).map(FileRecords::Csv),
            Format::JsonLines => Ok(FileRecords::JsonLines(JsonRecords {
                reader,
                shown: shown.to_owned(),
                stream: spec.name.clone(),
                encoding: spec.encoding,
                line: 0,
                buffer: Vec::new(),
            })),
        }
    }

    /// The CSV columns in file order; `None` for JSON Lines.
    pub(crate) fn columns(&self) -> Option<&[String]> {
        match self {
            FileRecords::Csv(csv) => Some(&csv.columns),
            FileRecords::JsonLines(_) => None,
        }
    }

    /// The next record, a malformed one, or `None` at the end of the file.
    pub(crate) fn next_record(&mut self) -> Result<Next> {
        match self {
            FileRecords::Csv(csv) => csv.next_record(),
            FileRecords::JsonLines(json) => json.next_record(),
        }
    }
}

/// Skips a UTF-8 byte-order mark at the start; says whether there was one.
fn skip_bom(reader: &mut BufReader<File>) -> std::io::Result<bool> {
    let mut start = [0u8; 3];
    let mut got = 0;
    while got < 3 {
        match reader.read(&mut start[got..])? {
            0 => break,
            n => got += n,
        }
    }
    if got == 3 && start == BOM {
        return Ok(true);
    }
    reader.seek(SeekFrom::Start(0))?;
    Ok(false)
}

fn io_error(shown: &str, doing: &str, e: &std::io::Error) -> ConnectorError {
    let message = format!("{doing} file `{shown}`: {e}");
    match e.kind() {
        std::io::ErrorKind::NotFound => ConnectorError::transient(format!(
            "{message} (it was removed or renamed while the run read it; the run can be \
             retried)"
        )),
        std::io::ErrorKind::PermissionDenied => ConnectorError::config(format!(
            "{message}; give the user Lockstep runs as read access"
        )),
        _ => ConnectorError::transient(message),
    }
}

/// Decodes one value's bytes, or says which option to set.
fn decode(
    bytes: &[u8],
    encoding: Encoding,
    shown: &str,
    stream: &str,
    line: u64,
) -> Result<String> {
    match encoding {
        Encoding::Utf8 => match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text.to_owned()),
            Err(e) => {
                let at = e.valid_up_to();
                let byte = bytes.get(at).copied().unwrap_or(0);
                Err(ConnectorError::config(format!(
                    "file `{shown}`, line {line}: the text is not valid UTF-8 (byte 0x{byte:02X} \
                     after `{}`); the file is probably in another encoding: set \
                     `encoding = \"windows-1252\"` (or `\"latin-1\"`) in `streams.{stream}`",
                    String::from_utf8_lossy(&bytes[at.saturating_sub(20)..at])
                ))
                .with_details(serde_json::json!({ "file": shown, "line": line })))
            }
        },
        Encoding::Windows1252 => Ok(encoding_rs::WINDOWS_1252
            .decode_without_bom_handling(bytes)
            .0
            .into_owned()),
    }
}

/// The records of a CSV file.
pub(crate) struct CsvRecords {
    reader: csv::Reader<BufReader<File>>,
    record: csv::ByteRecord,
    columns: Vec<String>,
    null: String,
    delimiter: u8,
    encoding: Encoding,
    shown: String,
    stream: String,
}

impl CsvRecords {
    fn open(reader: BufReader<File>, shown: &str, spec: &StreamSpec) -> Result<CsvRecords> {
        let options = &spec.csv;
        let mut builder = csv::ReaderBuilder::new();
        builder
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter)
            .quote(options.quote)
            .double_quote(options.escape.is_none())
            .escape(options.escape);
        let mut records = CsvRecords {
            reader: builder.from_reader(reader),
            record: csv::ByteRecord::new(),
            columns: Vec::new(),
            null: options.null.clone(),
            delimiter: options.delimiter,
            encoding: spec.encoding,
            shown: shown.to_owned(),
            stream: spec.name.clone(),
        };
        records.columns = match (&options.columns, options.header) {
            (Some(columns), false) => columns.clone(),
            (columns, _) => {
                let header = records.read_header()?;
                match columns {
                    Some(columns) => columns.clone(),
                    None => header,
                }
            }
        };
        Ok(records)
    }

    fn read_header(&mut self) -> Result<Vec<String>> {
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| self.csv_error(e))?;
        if !more {
            return Ok(Vec::new());
        }
        let mut columns: Vec<String> = Vec::with_capacity(self.record.len());
        for (i, raw) in self.record.iter().enumerate() {
            let name = decode(raw, self.encoding, &self.shown, &self.stream, 1)?
                .trim()
                .to_owned();
            if name.is_empty() {
                return Err(ConnectorError::schema(format!(
                    "file `{}`, line 1: column {} of the header has no name; name every column, \
                     or set `header = false` and `columns = [...]` in `streams.{}`",
                    self.shown,
                    i + 1,
                    self.stream
                )));
            }
            if columns.contains(&name) {
                return Err(ConnectorError::schema(format!(
                    "file `{}`, line 1: the header names column `{name}` twice; give each column \
                     its own name",
                    self.shown
                )));
            }
            columns.push(name);
        }
        Ok(columns)
    }

    fn csv_error(&self, e: csv::Error) -> ConnectorError {
        let text = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(io) => io_error(&self.shown, "reading", &io),
            _ => ConnectorError::schema(format!("file `{}`: {text}", self.shown)),
        }
    }

    fn next_record(&mut self) -> Result<Next> {
        loop {
            let more = self
                .reader
                .read_byte_record(&mut self.record)
                .map_err(|e| self.csv_error(e))?;
            if !more {
                return Ok(None);
            }
            // A line holding nothing at all is not a record (a trailing blank line).
            let blank = self.record.len() == 1 && self.record[0].is_empty();
            if !(blank && self.columns.len() > 1) {
                break;
            }
        }
        let line = self.record.position().map(|p| p.line()).unwrap_or(0);
        if self.record.len() != self.columns.len() {
            let quote_hint = if self.record.len() < self.columns.len() {
                "a value with the delimiter or a line break in it that is not quoted, or a \
                 quote left open?"
            } else {
                "a value with the delimiter in it that is not quoted?"
            };
            let mut raw = Vec::new();
            for (i, value) in self.record.iter().enumerate() {
                if i > 0 {
                    raw.push(self.delimiter);
                }
                raw.extend_from_slice(value);
            }
            let raw = decode(&raw, self.encoding, &self.shown, &self.stream, line)?;
            return Ok(Some(Err(Malformed {
                line,
                raw,
                reason: format!(
                    "{} values where the header has {} columns ({quote_hint})",
                    self.record.len(),
                    self.columns.len()
                ),
            })));
        }
        let mut values = Map::with_capacity(self.columns.len());
        for (column, raw) in self.columns.iter().zip(self.record.iter()) {
            let text = decode(raw, self.encoding, &self.shown, &self.stream, line)?;
            let value = if text == self.null {
                Value::Null
            } else {
                Value::String(text)
            };
            values.insert(column.clone(), value);
        }
        Ok(Some(Ok(Record { line, values })))
    }
}

/// The records of a JSON Lines file: one JSON object per line; blank lines are allowed.
pub(crate) struct JsonRecords {
    reader: BufReader<File>,
    shown: String,
    stream: String,
    encoding: Encoding,
    line: u64,
    buffer: Vec<u8>,
}

impl JsonRecords {
    fn next_record(&mut self) -> Result<Next> {
        loop {
            self.buffer.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .map_err(|e| io_error(&self.shown, "reading", &e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            let text = decode(
                &self.buffer,
                self.encoding,
                &self.shown,
                &self.stream,
                self.line,
            )?;
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let line = self.line;
            return Ok(Some(match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(values)) => Ok(Record { line, values }),
                Ok(other) => Err(Malformed {
                    line,
                    raw: text.to_owned(),
                    reason: format!(
                        "a JSON Lines record must be an object, found {}",
                        match other {
                            Value::Array(_) => "an array",
                            Value::String(_) => "a string",
                            Value::Number(_) => "a number",
                            Value::Bool(_) => "a boolean",
                            _ => "null",
                        }
                    ),
                }),
                Err(e) => Err(Malformed {
                    line,
                    raw: text.to_owned(),
                    reason: format!("invalid JSON: {e}"),
                }),
            }));
        }
    }
}
