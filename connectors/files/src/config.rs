//! The connection's config: the source's streams (each a glob of files with its format and
//! schema) and the destination's directory, format and file names.
//!
//! Everything a config can get wrong is found when the connection opens, as a `config` error
//! naming the key (`streams.parties.encoding`) and saying what to write instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use lockstep_plugin_sdk::{ConnectorError, DataType, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// The rows per read batch when neither the request nor the config says.
pub(crate) const DEFAULT_BATCH_SIZE: usize = 10_000;
/// How many records discover reads from the first file to infer the fields' types.
pub(crate) const DEFAULT_INFER_ROWS: usize = 1_000;
/// How long a file must have been left alone before it is read.
pub(crate) const DEFAULT_SETTLE: Duration = Duration::from_secs(5);
/// The destination's file name template.
pub(crate) const DEFAULT_FILE_NAME: &str = "{stream}-{run}-{seq}.{ext}";
/// File names that are still being written by the usual tools (editors, copiers, browsers,
/// rsync), never read.
pub(crate) const DEFAULT_TEMPORARY: &[&str] = &[
    ".*",
    "~*",
    "*~",
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.filepart",
    "*.crdownload",
];

/// Files connection (CSV and JSON Lines)
///
/// The `config` table of a files connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilesConfig {
    /// Source streams by name; each is a glob of files.
    #[serde(default)]
    pub streams: BTreeMap<String, StreamConfig>,
    /// Destination: the directory files are written to. A source with `dir` also offers the
    /// streams a destination wrote there.
    #[serde(default)]
    pub dir: Option<String>,
    /// Destination: `csv` (default) or `jsonl`.
    #[serde(default)]
    #[schemars(extend("enum" = ["csv", "jsonl"], "default" = "csv"))]
    pub format: Option<String>,
    /// Destination: the file name template (`{stream}`, `{run}`, `{seq}`, `{ext}`).
    #[serde(default)]
    pub file_name: Option<String>,
    /// Destination: start a new file once one holds this many bytes.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_file_bytes: Option<u64>,
    /// Destination: one file per run (rolled only by `max_file_bytes`), renamed into place
    /// when the run ends, instead of one file per flush (batch). Each flush still makes the
    /// records written so far durable (kept under the temporary name, with their length).
    #[serde(default)]
    pub one_file_per_run: Option<bool>,
    /// Destination: replace the stream's whole file set at the end of each run, atomically
    /// (`<dir>/<stream>` is a link to the newest complete generation). Needs a sync with
    /// `mode = "full"` and `ledger = false`, so that each run writes every record.
    #[serde(default)]
    pub snapshot: Option<bool>,
    /// Destination: CSV field delimiter (one ASCII character, default `,`).
    #[serde(default)]
    pub delimiter: Option<String>,
    /// Destination: the text written for null in CSV (default empty).
    #[serde(default)]
    pub null: Option<String>,
    /// The largest number of rows per read batch.
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = DEFAULT_BATCH_SIZE))]
    pub batch_size: Option<usize>,
}

/// One source stream: which files, how to parse them, and their fields.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// A glob of files, relative to the config file's directory: `exports/parties-*.csv`.
    pub path: String,
    /// `csv` or `jsonl`; by default from the pattern's extension.
    #[serde(default)]
    #[schemars(extend("enum" = ["csv", "jsonl"]))]
    pub format: Option<String>,
    /// Whether CSV files start with a header row naming the columns (default true).
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub header: Option<bool>,
    /// Column names, for CSV files without a header row.
    #[serde(default)]
    pub columns: Option<Vec<String>>,
    /// One ASCII character; default `,`; `\t` for a tab.
    #[serde(default)]
    pub delimiter: Option<String>,
    /// One ASCII character; default `"`.
    #[serde(default)]
    pub quote: Option<String>,
    /// An escape character for quotes inside quoted values (default none: quotes are doubled).
    #[serde(default)]
    pub escape: Option<String>,
    /// `utf-8` (default), `latin-1`, `iso-8859-1` or `windows-1252`.
    #[serde(default)]
    #[schemars(extend(
        "enum" = ["utf-8", "latin-1", "iso-8859-1", "windows-1252"],
        "default" = "utf-8"
    ))]
    pub encoding: Option<String>,
    /// The text that means null in CSV (default: an empty value).
    #[serde(default)]
    pub null: Option<String>,
    /// Field types: `{ id = "int64", amount = "decimal(12,2)" }` overrides the inferred
    /// types by name.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// The fields that identify a record.
    #[serde(default)]
    pub primary_key: Vec<String>,
    /// How many records of the first file to infer types from.
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = DEFAULT_INFER_ROWS))]
    pub infer_rows: Option<usize>,
    /// How long a file's size and modification time must be unchanged before it is read
    /// (default `5s`).
    #[serde(default)]
    pub settle: Option<String>,
    /// Glob patterns of file names never read (files still being written).
    #[serde(default)]
    pub temporary: Option<Vec<String>>,
    /// The name of an optional field holding each record's file name.
    #[serde(default)]
    pub file_field: Option<String>,
    /// The name of an optional field holding each record's line number.
    #[serde(default)]
    pub line_field: Option<String>,
    /// The name of an optional field holding each record's file modification time (a
    /// cursor candidate).
    #[serde(default)]
    pub modified_field: Option<String>,
    /// What happens to a file once a run that read it whole has committed: `"keep"`
    /// (default), `"delete"`, or `{ move_to = "dir" }` (relative to the config file's
    /// directory, on the same file system).
    #[serde(default)]
    pub after_read: Option<AfterReadConfig>,
}

/// `after_read` as the config spells it.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AfterReadConfig {
    /// `"keep"` or `"delete"`.
    Action(String),
    /// `{ move_to = "dir" }`.
    Move {
        /// The directory files are moved into.
        move_to: String,
    },
}

/// What happens to a file once the run that read it has committed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AfterRead {
    #[default]
    Keep,
    Delete,
    MoveTo(std::path::PathBuf),
}

/// A file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    JsonLines,
}

impl Format {
    pub(crate) fn parse(text: &str, key: &str) -> Result<Format> {
        match text.to_ascii_lowercase().as_str() {
            "csv" => Ok(Format::Csv),
            "jsonl" | "json-lines" | "ndjson" => Ok(Format::JsonLines),
            other => Err(ConnectorError::config(format!(
                "`{key}` must be `csv` or `jsonl`, found `{other}`"
            ))),
        }
    }

    /// The file extension the destination writes.
    pub(crate) fn extension(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::JsonLines => "jsonl",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        self.extension()
    }
}

/// How the bytes of a text file are decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    /// Windows-1252, which the WHATWG Encoding Standard also uses for `latin-1`: the same
    /// characters as ISO-8859-1 where that has printable ones.
    Windows1252,
}

impl Encoding {
    pub(crate) fn parse(text: &str, key: &str) -> Result<Encoding> {
        match text.to_ascii_lowercase().replace('_', "-").as_str() {
            "utf-8" | "utf8" => Ok(Encoding::Utf8),
            "latin-1" | "latin1" | "iso-8859-1" | "windows-1252" | "cp1252" => {
                Ok(Encoding::Windows1252)
            }
            other => Err(ConnectorError::config(format!(
                "`{key}` must be `utf-8`, `latin-1` or `windows-1252`, found `{other}`"
            ))),
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "utf-8",
            Encoding::Windows1252 => "windows-1252",
        }
    }
}

/// CSV parsing options, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvOptions {
    pub header: bool,
    pub columns: Option<Vec<String>>,
    pub delimiter: u8,
    pub quote: u8,
    pub escape: Option<u8>,
    pub null: String,
}

impl Default for CsvOptions {
    fn default() -> Self {
        Self {
            header: true,
            columns: None,
            delimiter: b',',
            quote: b'"',
            escape: None,
            null: String::new(),
        }
    }
}

/// A source stream's config, resolved and checked.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    /// The glob, as the config gives it (relative to the working directory, which the CLI
    /// sets to the config file's directory).
    pub pattern: String,
    pub format: Format,
    pub csv: CsvOptions,
    pub encoding: Encoding,
    /// Declared types by field name.
    pub declared: BTreeMap<String, DataType>,
    /// Declared field order (from a destination's stream description); inferred otherwise.
    pub declared_order: Option<Vec<(String, DataType, bool)>>,
    pub primary_key: Vec<String>,
    pub infer_rows: usize,
    pub settle: Duration,
    pub temporary: Vec<glob::Pattern>,
    pub file_field: Option<String>,
    pub line_field: Option<String>,
    pub modified_field: Option<String>,
    pub after_read: AfterRead,
}

impl FilesConfig {
    /// The configured batch size, refusing zero.
    pub(crate) fn batch_size(&self) -> Result<usize> {
        match self.batch_size {
            Some(0) => Err(ConnectorError::config(
                "`batch_size` must be at least 1 (the rows per read batch)",
            )),
            Some(n) => Ok(n),
            None => Ok(DEFAULT_BATCH_SIZE),
        }
    }

    /// The source streams the config declares, checked.
    pub(crate) fn stream_specs(&self) -> Result<Vec<StreamSpec>> {
        self.batch_size()?;
        self.streams
            .iter()
            .map(|(name, stream)| stream.resolve(name))
            .collect()
    }

    /// The destination directory.
    pub(crate) fn destination_dir(&self) -> Result<PathBuf> {
        match &self.dir {
            Some(dir) if !dir.trim().is_empty() => Ok(PathBuf::from(dir)),
            _ => Err(ConnectorError::config(
                "a files destination needs `dir`, the directory to write files into (e.g. \
                 `dir = \"outbox\"`, relative to the config file's directory)",
            )),
        }
    }

    pub(crate) fn destination_format(&self) -> Result<Format> {
        self.format
            .as_deref()
            .map(|f| Format::parse(f, "format"))
            .unwrap_or(Ok(Format::Csv))
    }

    pub(crate) fn destination_delimiter(&self) -> Result<u8> {
        self.delimiter
            .as_deref()
            .map(|d| one_byte(d, "delimiter"))
            .unwrap_or(Ok(b','))
    }

    pub(crate) fn file_name_template(&self) -> Result<String> {
        let template = self.file_name.as_deref().unwrap_or(DEFAULT_FILE_NAME);
        if !template.contains("{seq}") {
            return Err(ConnectorError::config(format!(
                "`file_name` `{template}` has no `{{seq}}`: every file a run writes needs a name \
                 of its own; e.g. `{DEFAULT_FILE_NAME}`"
            )));
        }
        if template.contains('/') || template.contains('\\') || template.starts_with('.') {
            return Err(ConnectorError::config(format!(
                "`file_name` `{template}` must be a plain file name, without directories and \
                 not starting with `.` (set the directory with `dir`)"
            )));
        }
        Ok(template.to_owned())
    }

    /// Checks the destination keys without touching the disk.
    pub(crate) fn check_destination(&self) -> Result<()> {
        self.destination_dir()?;
        self.destination_format()?;
        self.destination_delimiter()?;
        self.file_name_template()?;
        if self.max_file_bytes == Some(0) {
            return Err(ConnectorError::config(
                "`max_file_bytes` must be at least 1; leave it out for no limit",
            ));
        }
        Ok(())
    }
}

impl StreamConfig {
    fn resolve(&self, name: &str) -> Result<StreamSpec> {
        let key = |k: &str| format!("streams.{name}.{k}");
        if self.path.trim().is_empty() {
            return Err(ConnectorError::config(format!(
                "`{}` is empty; give a glob of files such as `exports/{name}-*.csv`",
                key("path")
            )));
        }
        glob::Pattern::new(&self.path).map_err(|e| {
            ConnectorError::config(format!(
                "`{}` `{}` is not a valid glob: {e}",
                key("path"),
                self.path
            ))
        })?;
        let format = match &self.format {
            Some(f) => Format::parse(f, &key("format"))?,
            None => format_from_extension(&self.path).ok_or_else(|| {
                ConnectorError::config(format!(
                    "cannot tell the format of `{}` `{}` from its extension; set `{}` to `csv` \
                     or `jsonl`",
                    key("path"),
                    self.path,
                    key("format")
                ))
            })?,
        };
        let encoding = match &self.encoding {
            Some(e) => Encoding::parse(e, &key("encoding"))?,
            None => Encoding::Utf8,
        };
        let mut csv = CsvOptions::default();
        if let Some(d) = &self.delimiter {
            csv.delimiter = one_byte(d, &key("delimiter"))?;
        }
        if let Some(q) = &self.quote {
            csv.quote = one_byte(q, &key("quote"))?;
        }
        if let Some(e) = &self.escape {
            csv.escape = Some(one_byte(e, &key("escape"))?);
        }
        if let Some(n) = &self.null {
            csv.null = n.clone();
        }
        csv.header = self.header.unwrap_or(true);
        csv.columns = self.columns.clone();
        if !csv.header && csv.columns.is_none() && format == Format::Csv {
            return Err(ConnectorError::config(format!(
                "`{}` is false, so the files have no column names: list them in `{}`",
                key("header"),
                key("columns")
            )));
        }
        let mut declared = BTreeMap::new();
        for (field, type_name) in &self.fields {
            let data_type = parse_type(type_name).map_err(|reason| {
                ConnectorError::config(format!("`{}.{field}`: {reason}", key("fields")))
            })?;
            declared.insert(field.clone(), data_type);
        }
        let settle = match &self.settle {
            Some(text) => parse_duration(text).map_err(|reason| {
                ConnectorError::config(format!("`{}`: {reason}", key("settle")))
            })?,
            None => DEFAULT_SETTLE,
        };
        let temporary = match &self.temporary {
            Some(list) => list.iter().map(String::as_str).collect::<Vec<_>>(),
            None => DEFAULT_TEMPORARY.to_vec(),
        };
        let temporary = temporary
            .into_iter()
            .map(|p| {
                glob::Pattern::new(p).map_err(|e| {
                    ConnectorError::config(format!(
                        "`{}` has an invalid pattern `{p}`: {e}",
                        key("temporary")
                    ))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if self.infer_rows == Some(0) {
            return Err(ConnectorError::config(format!(
                "`{}` must be at least 1",
                key("infer_rows")
            )));
        }
        let metadata = [&self.file_field, &self.line_field, &self.modified_field];
        let names: Vec<&String> = metadata.iter().filter_map(|f| f.as_ref()).collect();
        for (i, n) in names.iter().enumerate() {
            if names[..i].contains(n) {
                return Err(ConnectorError::config(format!(
                    "stream `{name}` uses the field name `{n}` for two of `file_field`, \
                     `line_field` and `modified_field`; give each its own name"
                )));
            }
        }
        let after_read = match &self.after_read {
            None => AfterRead::Keep,
            Some(AfterReadConfig::Action(a)) if a == "keep" => AfterRead::Keep,
            Some(AfterReadConfig::Action(a)) if a == "delete" => AfterRead::Delete,
            Some(AfterReadConfig::Move { move_to }) if !move_to.trim().is_empty() => {
                AfterRead::MoveTo(move_to.into())
            }
            Some(other) => {
                return Err(ConnectorError::config(format!(
                    "`{}` must be \"keep\", \"delete\" or {{ move_to = \"dir\" }} (a \
                     directory, relative to the config file's directory); found {other:?}",
                    key("after_read")
                )))
            }
        };
        Ok(StreamSpec {
            after_read,
            name: name.to_owned(),
            pattern: self.path.clone(),
            format,
            csv,
            encoding,
            declared,
            declared_order: None,
            primary_key: self.primary_key.clone(),
            infer_rows: self.infer_rows.unwrap_or(DEFAULT_INFER_ROWS),
            settle,
            temporary,
            file_field: self.file_field.clone(),
            line_field: self.line_field.clone(),
            modified_field: self.modified_field.clone(),
        })
    }
}

fn format_from_extension(pattern: &str) -> Option<Format> {
    let lower = pattern.to_ascii_lowercase();
    if lower.ends_with(".csv") || lower.ends_with(".txt") || lower.ends_with(".tsv") {
        Some(Format::Csv)
    } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
        Some(Format::JsonLines)
    } else {
        None
    }
}

/// One ASCII character (`\t` is accepted for a tab).
fn one_byte(text: &str, key: &str) -> Result<u8> {
    let text = if text == "\\t" { "\t" } else { text };
    match text.as_bytes() {
        [b] if b.is_ascii() => Ok(*b),
        _ => Err(ConnectorError::config(format!(
            "`{key}` must be one ASCII character, found `{text}`"
        ))),
    }
}

/// A type name as the config reference writes them: `int64`, `decimal(12,2)`, `timestamptz`.
pub(crate) fn parse_type(text: &str) -> std::result::Result<DataType, String> {
    let t = text.trim().to_ascii_lowercase().replace(' ', "");
    Ok(match t.as_str() {
        "boolean" | "bool" => DataType::Boolean,
        "int32" => DataType::Int32,
        "int64" | "integer" => DataType::Int64,
        "float32" => DataType::Float32,
        "float64" | "float" => DataType::Float64,
        "text" | "string" => DataType::Text,
        "binary" => DataType::Binary,
        "date" => DataType::Date,
        "time" => DataType::Time,
        "timestamp" => DataType::Timestamp,
        "timestamptz" | "timestamp-tz" => DataType::TimestampTz,
        "uuid" => DataType::Uuid,
        "json" => DataType::Json,
        other => {
            let inner = other
                .strip_prefix("decimal(")
                .and_then(|rest| rest.strip_suffix(')'));
            let parsed = inner.and_then(|inner| {
                let (p, s) = inner.split_once(',')?;
                Some((p.parse::<u8>().ok()?, s.parse::<i8>().ok()?))
            });
            match parsed {
                Some((precision, scale))
                    if (1..=38).contains(&precision) && scale >= 0 && scale as u8 <= precision =>
                {
                    DataType::Decimal { precision, scale }
                }
                _ => {
                    return Err(format!(
                        "unknown type `{text}`; use boolean, int32, int64, float32, float64, \
                         decimal(p,s) (p up to 38), text, binary, date, time, timestamp, \
                         timestamptz, uuid or json"
                    ))
                }
            }
        }
    })
}

/// A duration as the config reference writes them: `500ms`, `30s`, `5m`, `1h30m`.
pub(crate) fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration `{text}`; write a whole number followed by a unit: ms, s, m, h or \
             d (e.g. `5s`)"
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        total += Duration::from_millis(number.saturating_mul(millis));
    }
    Ok(total)
}
