//! Reading the records of one file, CSV or JSON Lines, one at a time.
//!
//! A record is a JSON object of the file's values (CSV values as strings, or null where the
//! value is the stream's null text) with the line it starts on. A record that cannot be
//! parsed (a CSV row with the wrong number of values, a JSON line that is not an object) is
//! a [`Malformed`] naming its line; the records after it can still be read. Bytes that do
//! not decode in the stream's encoding are an error for the whole file, naming the file, the
//! line and the `encoding` option to set.
//!
//! Every record knows its span, the bytes it takes in the file, so that a rejected record's
//! text is the file's own text (quotes, delimiters and line breaks as written), read again
//! from the file when a record is rejected rather than kept for every record.
//!
//! Invariant: memory is bounded by one record; files are streamed through buffered readers,
//! never loaded whole (a rejected record's text is cut at [`MAX_RAW_BYTES`]).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use lockstep_plugin_sdk::{ConnectorError, Result};
use serde_json::{Map, Value};

use crate::config::{Encoding, Format, StreamSpec};

/// The UTF-8 byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The most bytes of a rejected record's text kept (a quote left open can make a record run
/// to the end of the file).
pub(crate) const MAX_RAW_BYTES: u64 = 64 * 1024;

/// The bytes a record takes in its file, from the first byte after the byte-order mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub start: u64,
    pub end: u64,
}

/// Where a file's records come from, to read a record's text again.
#[derive(Debug, Clone)]
struct Origin {
    path: PathBuf,
    shown: String,
    stream: String,
    encoding: Encoding,
    /// The length of the byte-order mark the file starts with (0 or 3).
    bom: u64,
}

impl Origin {
    /// The text of the record at `span` as the file holds it, without the line breaks around
    /// it; cut at [`MAX_RAW_BYTES`] with a note saying so.
    fn raw_text(&self, span: Span) -> Result<String> {
        let mut file = File::open(&self.path).map_err(|e| io_error(&self.shown, "opening", &e))?;
        file.seek(SeekFrom::Start(self.bom + span.start))
            .map_err(|e| io_error(&self.shown, "reading", &e))?;
        let length = span.end.saturating_sub(span.start);
        let mut bytes = Vec::new();
        file.take(length.min(MAX_RAW_BYTES))
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(&self.shown, "reading", &e))?;
        let start = bytes
            .iter()
            .position(|b| !matches!(b, b'\r' | b'\n'))
            .unwrap_or(bytes.len());
        let mut end = bytes.len();
        while end > start && matches!(bytes[end - 1], b'\r' | b'\n') {
            end -= 1;
        }
        let bytes = &bytes[start..end];
        if length <= MAX_RAW_BYTES {
            return Ok(match self.encoding {
                Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
                Encoding::Windows1252 => encoding_rs::WINDOWS_1252
                    .decode_without_bom_handling(bytes)
                    .0
                    .into_owned(),
            });
        }
        let text = match self.encoding {
            Encoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Windows1252 => encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
                .into_owned(),
        };
        Ok(format!(
            "{text}… (cut: the record takes {length} bytes, from line break to line break)"
        ))
    }
}

/// One record of a file and the line it starts on (1-based).
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub line: u64,
    pub values: Map<String, Value>,
    pub span: Span,
}

/// A record that could not be parsed, and why.
#[derive(Debug, Clone)]
pub(crate) struct Malformed {
    pub line: u64,
    pub reason: String,
    /// The record's text as the file holds it.
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
        let origin = Origin {
            path: path.to_owned(),
            shown: shown.to_owned(),
            stream: spec.name.clone(),
            encoding: spec.encoding,
            bom: if has_bom { BOM.len() as u64 } else { 0 },
        };
        match spec.format {
            Format::Csv => CsvRecords::open(reader, origin, spec).map(FileRecords::Csv),
            Format::JsonLines => Ok(FileRecords::JsonLines(JsonRecords {
                reader,
                origin,
                line: 0,
                offset: 0,
                buffer: Vec::new(),
            })),
        }
    }

    /// The CSV records, for reading them straight into columns; `None` for JSON Lines.
    pub(crate) fn csv(&mut self) -> Option<&mut CsvRecords> {
        match self {
            FileRecords::Csv(csv) => Some(csv),
            FileRecords::JsonLines(_) => None,
        }
    }

    /// The text of the record at `span` as the file holds it.
    pub(crate) fn raw_text(&self, span: Span) -> Result<String> {
        match self {
            FileRecords::Csv(csv) => csv.origin.raw_text(span),
            FileRecords::JsonLines(json) => json.origin.raw_text(span),
        }
    }

    /// Skips `count` records (good or malformed), those an earlier read delivered.
    pub(crate) fn skip(&mut self, count: u64) -> Result<()> {
        for _ in 0..count {
            let more = match self {
                FileRecords::Csv(csv) => csv.read_row()?.is_some(),
                FileRecords::JsonLines(json) => json.next_record()?.is_some(),
            };
            if !more {
                break;
            }
        }
        Ok(())
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

/// One CSV row as read: the line it starts on, its span, and whether it has the wrong
/// number of values (the reason); its values are in [`CsvRecords::record`].
#[derive(Debug, Clone)]
pub(crate) struct CsvRow {
    pub line: u64,
    pub span: Span,
    pub wrong_count: Option<String>,
}

/// The records of a CSV file.
pub(crate) struct CsvRecords {
    reader: csv::Reader<BufReader<File>>,
    record: csv::ByteRecord,
    columns: Vec<String>,
    null: String,
    origin: Origin,
    endings: LineEndings,
}

/// How a CSV file ends its lines, so that a record's line is right whatever the line breaks.
///
/// The CSV parser counts lines by `\n` and sets a record's position before the line breaks
/// that precede it (the `\n` of a Windows line break, blank lines), so the line a record
/// starts on is counted back from the line it ends on instead: minus the line breaks inside
/// its quoted values, minus its own `\n` when the parser took it with the record (Unix line
/// breaks, except for a last line without one).
#[derive(Debug, Clone, Copy)]
struct LineEndings {
    /// The first line ends with `\r\n`: the parser ends each record at its `\r`.
    windows: bool,
    /// The length of the file after the byte-order mark.
    length: u64,
    /// The file's last byte is a `\n`.
    ends_with_newline: bool,
}

impl LineEndings {
    fn of(origin: &Origin) -> Result<LineEndings> {
        let io = |e: std::io::Error| io_error(&origin.shown, "reading", &e);
        let mut file = File::open(&origin.path).map_err(io)?;
        let length = file
            .metadata()
            .map_err(io)?
            .len()
            .saturating_sub(origin.bom);
        let mut first = Vec::new();
        (&mut file)
            .take(64 * 1024)
            .read_to_end(&mut first)
            .map_err(io)?;
        let windows = first
            .iter()
            .position(|b| *b == b'\n')
            .is_some_and(|at| at > 0 && first[at - 1] == b'\r');
        let mut last = [0u8; 1];
        let ends_with_newline = length > 0
            && file.seek(SeekFrom::End(-1)).is_ok()
            && file.read_exact(&mut last).is_ok()
            && last[0] == b'\n';
        Ok(LineEndings {
            windows,
            length,
            ends_with_newline,
        })
    }

    /// The line a record starts on, from the line the parser is on after it, the record's
    /// span and its values.
    fn start_line(&self, line_after: u64, span: Span, values: &[u8]) -> u64 {
        let inside = values.iter().filter(|b| **b == b'\n').count() as u64;
        let took_newline = !self.windows && (span.end < self.length || self.ends_with_newline);
        line_after
            .saturating_sub(inside + u64::from(took_newline))
            .max(1)
    }
}

impl CsvRecords {
    fn open(reader: BufReader<File>, origin: Origin, spec: &StreamSpec) -> Result<CsvRecords> {
        let options = &spec.csv;
        let mut builder = csv::ReaderBuilder::new();
        builder
            .has_headers(false)
            .flexible(true)
            .delimiter(options.delimiter)
            .quote(options.quote)
            .double_quote(options.escape.is_none())
            .escape(options.escape);
        let endings = LineEndings::of(&origin)?;
        let mut records = CsvRecords {
            reader: builder.from_reader(reader),
            record: csv::ByteRecord::new(),
            columns: Vec::new(),
            null: options.null.clone(),
            origin,
            endings,
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

    /// The values of the row [`read_row`](Self::read_row) gave last.
    pub(crate) fn record(&self) -> &csv::ByteRecord {
        &self.record
    }

    /// The columns, in file order.
    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    fn decode(&self, bytes: &[u8], line: u64) -> Result<String> {
        decode(
            bytes,
            self.origin.encoding,
            &self.origin.shown,
            &self.origin.stream,
            line,
        )
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
            let name = self.decode(raw, 1)?.trim().to_owned();
            if name.is_empty() {
                return Err(ConnectorError::schema(format!(
                    "file `{}`, line 1: column {} of the header has no name; name every column, \
                     or set `header = false` and `columns = [...]` in `streams.{}`",
                    self.origin.shown,
                    i + 1,
                    self.origin.stream
                )));
            }
            if columns.contains(&name) {
                return Err(ConnectorError::schema(format!(
                    "file `{}`, line 1: the header names column `{name}` twice; give each column \
                     its own name",
                    self.origin.shown
                )));
            }
            columns.push(name);
        }
        Ok(columns)
    }

    fn csv_error(&self, e: csv::Error) -> ConnectorError {
        let text = e.to_string();
        match e.into_kind() {
            csv::ErrorKind::Io(io) => io_error(&self.origin.shown, "reading", &io),
            _ => ConnectorError::schema(format!("file `{}`: {text}", self.origin.shown)),
        }
    }

    /// Reads the next row into [`record`](Self::record), or `None` at the end of the file.
    /// Text that does not decode in the stream's encoding is an error for the whole file,
    /// naming the option to set.
    pub(crate) fn read_row(&mut self) -> Result<Option<CsvRow>> {
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
        let after = self.reader.position();
        let span = Span {
            start: self.record.position().map(|p| p.byte()).unwrap_or(0),
            end: after.byte(),
        };
        let line = self
            .endings
            .start_line(after.line(), span, self.record.as_slice());
        if self.origin.encoding == Encoding::Utf8
            && std::str::from_utf8(self.record.as_slice()).is_err()
        {
            for value in self.record.iter() {
                self.decode(value, line)?;
            }
        }
        let wrong_count = (self.record.len() != self.columns.len()).then(|| {
            let quote_hint = if self.record.len() < self.columns.len() {
                "a value with the delimiter or a line break in it that is not quoted, or a \
                 quote left open?"
            } else {
                "a value with the delimiter in it that is not quoted?"
            };
            format!(
                "{} values where the header has {} columns ({quote_hint})",
                self.record.len(),
                self.columns.len()
            )
        });
        Ok(Some(CsvRow {
            line,
            span,
            wrong_count,
        }))
    }

    /// The next row as a record of text values (for inference), or a malformed one.
    fn next_record(&mut self) -> Result<Next> {
        let Some(row) = self.read_row()? else {
            return Ok(None);
        };
        if let Some(reason) = row.wrong_count {
            return Ok(Some(Err(Malformed {
                line: row.line,
                raw: self.origin.raw_text(row.span)?,
                reason,
            })));
        }
        let mut values = Map::with_capacity(self.columns.len());
        for (column, raw) in self.columns.iter().zip(self.record.iter()) {
            let text = self.decode(raw, row.line)?;
            let value = if text == self.null {
                Value::Null
            } else {
                Value::String(text)
            };
            values.insert(column.clone(), value);
        }
        Ok(Some(Ok(Record {
            line: row.line,
            values,
            span: row.span,
        })))
    }
}

/// The records of a JSON Lines file: one JSON object per line; blank lines are allowed.
pub(crate) struct JsonRecords {
    reader: BufReader<File>,
    origin: Origin,
    line: u64,
    /// The bytes read so far, after the byte-order mark.
    offset: u64,
    buffer: Vec<u8>,
}

impl JsonRecords {
    fn next_record(&mut self) -> Result<Next> {
        loop {
            self.buffer.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut self.buffer)
                .map_err(|e| io_error(&self.origin.shown, "reading", &e))?;
            if n == 0 {
                return Ok(None);
            }
            let span = Span {
                start: self.offset,
                end: self.offset + n as u64,
            };
            self.offset = span.end;
            self.line += 1;
            let full = decode(
                &self.buffer,
                self.origin.encoding,
                &self.origin.shown,
                &self.origin.stream,
                self.line,
            )?;
            let text = full.trim();
            if text.is_empty() {
                continue;
            }
            let line = self.line;
            // The line as the file holds it, without its line break.
            let raw = || full.trim_end_matches(['\r', '\n']).to_owned();
            return Ok(Some(match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(values)) => Ok(Record { line, values, span }),
                Ok(other) => Err(Malformed {
                    line,
                    raw: raw(),
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
                    raw: raw(),
                    reason: format!("invalid JSON: {e}"),
                }),
            }));
        }
    }
}
