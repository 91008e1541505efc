//! Reading the TOML document into the model, collecting every problem on the way.
//!
//! The stages: TOML syntax (all syntax errors, then stop: a broken document gives misleading
//! errors further on); then one walk over the document that checks structure (unknown keys,
//! types, enum values), references and ranges (connections, cursors, keys, schedules, durations)
//! and the environment (`${VAR}` interpolation), and records every problem it meets.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use croner::errors::CronError;
use lockstep_core::{DeletePolicy, EndpointSpec, FieldMapping, RejectLimit, SyncMode, SyncSpec};
use serde_json::Value as Json;
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

mod fields;

use crate::diagnostic::{source_file, ConfigError, ConfigErrors, ErrorKind, Location, SourceFile};
use crate::duration::{parse_duration, DURATION_FORMS};
use crate::interpolate::{interpolate, InterpolationError};
use crate::model::{
    AlertsConfig, CatchUp, Config, Connection, DaemonConfig, EmailAlert, LogFormat, RetryPolicy,
    Schedule, StartTls, Sync, SyncLocations, Trigger, WebhookAlert, DEFAULT_BATCH_SIZE,
    DEFAULT_LEASE_TTL, DEFAULT_STATE_URL, MAX_BATCH_SIZE, MAX_LEASE_TTL, MIN_LEASE_TTL,
};
use crate::secrets::Secrets;
use crate::suggest::did_you_mean;

type Span = Range<usize>;
type Key<'i> = Spanned<DeString<'i>>;
type Val<'i> = Spanned<DeValue<'i>>;
type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

const ROOT_KEYS: &[&str] = &[
    "state",
    "connectors",
    "connections",
    "syncs",
    "daemon",
    "alerts",
];
const STATE_KEYS: &[&str] = &["url", "lease_ttl"];
const CONNECTORS_KEYS: &[&str] = &["paths"];
const CONNECTION_KEYS: &[&str] = &["connector", "config"];
const SYNC_KEYS: &[&str] = &[
    "source",
    "destination",
    "mode",
    "cursor",
    "key",
    "batch_size",
    "max_delete_fraction",
    "tombstone",
    "reconcile_every",
    "max_rejected",
    "ledger",
    "enabled",
    "fields",
    "schedule",
    "retry",
];
const ENDPOINT_KEYS: &[&str] = &["connection", "stream"];
const SCHEDULE_KEYS: &[&str] = &["cron", "every", "timezone", "jitter", "catch_up", "timeout"];
const RETRY_KEYS: &[&str] = &["max_attempts", "initial_backoff", "max_backoff"];
const DAEMON_KEYS: &[&str] = &["listen", "log_format"];
const ALERTS_KEYS: &[&str] = &[
    "consecutive_failures",
    "repeat_interval",
    "on_recovery",
    "low_volume_fraction",
    "low_volume_window",
    "webhook",
    "email",
];
const WEBHOOK_KEYS: &[&str] = &["url"];
const EMAIL_KEYS: &[&str] = &[
    "smtp_host",
    "smtp_port",
    "starttls",
    "username",
    "password",
    "from",
    "to",
];

const MODES: &[(&str, SyncMode)] = &[
    ("full", SyncMode::Full),
    ("incremental", SyncMode::Incremental),
    ("mirror", SyncMode::Mirror),
];
const CATCH_UPS: &[(&str, CatchUp)] = &[("skip", CatchUp::Skip), ("run-once", CatchUp::RunOnce)];
const LOG_FORMATS: &[(&str, LogFormat)] = &[("text", LogFormat::Text), ("json", LogFormat::Json)];
const STARTTLS: &[(&str, StartTls)] = &[
    ("off", StartTls::Off),
    ("opportunistic", StartTls::Opportunistic),
    ("required", StartTls::Required),
];

/// Parses and validates `text`, the contents of the config file at `path`.
pub(crate) fn build(text: &str, path: &Path, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let source = source_file(path, text);
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let mut errors: Vec<ConfigError> = syntax_errors
            .iter()
            .map(|e| syntax_error(text, path, &source, e))
            .collect();
        sort(&mut errors);
        return Err(ConfigErrors::new(path, errors));
    }
    let builder = Builder {
        text,
        path,
        env,
        source,
        errors: Vec::new(),
        from_env: Vec::new(),
    };
    builder.config(document.get_ref())
}

fn syntax_error(
    text: &str,
    path: &Path,
    source: &SourceFile,
    error: &toml::de::Error,
) -> ConfigError {
    let mut message = error.message().trim_end().to_owned();
    let unquoted = error
        .span()
        .and_then(|span| unquoted_string(text, span.start));
    let hint = if let Some((key, value)) = &unquoted {
        // The parser's wording depends on the word ("invalid float, expected `inf`" for a word
        // starting with `i`); say plainly what is wrong instead.
        message = format!("string value `{value}` must be quoted");
        &format!("put string values in quotes: {key} = \"{value}\"")
    } else if message.contains("duplicate key") {
        "a key, or a table header, may appear only once in a table: remove or rename the repeated \
         one (in a field mapping, each destination field is mapped once)"
    } else if message.contains("must be quoted") {
        "put string values in quotes: key = \"value\""
    } else if message.contains("unclosed") || message.contains("expected `") {
        "close the string, array or table that starts here"
    } else {
        "check the TOML syntax here (see https://toml.io)"
    };
    let location = error.span().map(|span| Location::from_span(text, span));
    ConfigError::new(path, location, format!("invalid TOML: {message}"), hint)
        .with_kind(ErrorKind::Syntax)
        .with_label("here")
        .with_source_file(source.clone())
}

/// The key and the bare word of a `key = word` line around byte `offset`, when the word looks
/// like a string that lacks its quotes.
fn unquoted_string(text: &str, offset: usize) -> Option<(String, String)> {
    let offset = offset.min(text.len());
    let line_start = text.get(..offset)?.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let (key, value) = text[line_start..line_end].split_once('=')?;
    let key = key.trim();
    let value = value.split('#').next().unwrap_or_default().trim();
    let bare_word = value.starts_with(|c: char| c.is_ascii_alphabetic())
        && !matches!(value, "true" | "false" | "inf" | "nan")
        && !value.contains(['"', '\'', '[', '{']);
    (bare_word && !key.is_empty()).then(|| (key.to_owned(), value.to_owned()))
}

/// Errors in file order; those without a location (none after syntax) first.
fn sort(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| e.location().map(|l| (l.offset, l.len)));
}

/// What a key should hold, for type errors.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expected {
    Str,
    Int,
    Number,
    Bool,
    Table,
    List,
    StrOrList,
    Endpoint,
}

impl Expected {
    fn describe(self) -> &'static str {
        match self {
            Expected::Str => "a string",
            Expected::Int => "an integer",
            Expected::Number => "a number",
            Expected::Bool => "true or false",
            Expected::Table => "a table",
            Expected::List => "a list",
            Expected::StrOrList => "a string or a list of strings",
            Expected::Endpoint => {
                "\"connection.stream\" or { connection = \"...\", stream = \"...\" }"
            }
        }
    }
}

fn with_article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

/// A key as it appears in a dotted path: bare when it can be, quoted otherwise.
fn path_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        path_key(key)
    } else {
        format!("{parent}.{}", path_key(key))
    }
}

fn entries<'t, 'i>(table: &'t DeTable<'i>) -> Vec<(&'t Key<'i>, &'t Val<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
}

fn list(names: &[&str]) -> String {
    names.join(", ")
}

fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A table being read: its contents, its dotted path, and where to point when a key is missing.
struct Tbl<'t, 'i> {
    table: &'t DeTable<'i>,
    path: String,
    span: Span,
}

impl<'t, 'i> Tbl<'t, 'i> {
    fn get(&self, key: &str) -> Option<&'t Val<'i>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    fn key_span(&self, key: &str) -> Option<Span> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(k, _)| k.span())
    }

    fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    fn child(&self, key: &str) -> String {
        join_path(&self.path, key)
    }
}

/// A string value and where it is.
struct Str<'t> {
    value: &'t str,
    span: Span,
}

struct Builder<'a> {
    text: &'a str,
    path: &'a Path,
    env: Env<'a>,
    source: SourceFile,
    errors: Vec<ConfigError>,
    /// Every value taken from the environment; they become the config's secrets.
    from_env: Vec<String>,
}

impl Builder<'_> {
    fn loc(&self, span: &Span) -> Location {
        Location::from_span(self.text, span.clone())
    }

    fn error(
        &mut self,
        kind: ErrorKind,
        span: Span,
        message: impl Into<String>,
        label: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let error = ConfigError::new(self.path, Some(self.loc(&span)), message, hint)
            .with_kind(kind)
            .with_label(label)
            .with_source_file(self.source.clone());
        self.errors.push(error);
    }

    fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The byte offset in the file where the raw text of string `raw` starts, when the file
    /// holds it verbatim between one pair of quotes (no escapes, not multi-line).
    fn verbatim_start(&self, raw: &str, span: &Span) -> Option<usize> {
        if span.end < span.start + 2 {
            return None;
        }
        let inner = span.start + 1..span.end - 1;
        (self.text.get(inner.clone()) == Some(raw)).then_some(inner.start)
    }

    // ---- Structure -------------------------------------------------------------------------

    fn check_keys(&mut self, t: &Tbl<'_, '_>, known: &[&str]) {
        for (key, _) in entries(t.table) {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let place = if t.path.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `{}`", t.path)
            };
            let hint = match did_you_mean(name, known.iter().copied()) {
                Some(suggestion) => format!("did you mean `{suggestion}`?"),
                None => format!("the keys accepted {place} are: {}", list(known)),
            };
            self.error(
                ErrorKind::UnknownKey,
                key.span(),
                format!("unknown key `{name}` {place}"),
                "unknown key",
                hint,
            );
        }
    }

    fn wrong_type(&mut self, path: &str, key: &str, value: &Val<'_>, expected: Expected) {
        let found = value.get_ref().type_str();
        let raw = &self.text[value.span()];
        let hint = match (expected, value.get_ref()) {
            (Expected::Int | Expected::Number, DeValue::String(s))
                if s.trim().parse::<f64>().is_ok() =>
            {
                format!("remove the quotes: {key} = {}", s.trim())
            }
            (Expected::Bool, DeValue::String(s)) if s == "true" || s == "false" => {
                format!("remove the quotes: {key} = {s}")
            }
            (
                Expected::Str | Expected::StrOrList | Expected::Endpoint,
                DeValue::Integer(_) | DeValue::Float(_) | DeValue::Boolean(_),
            ) => format!("put it in quotes: {key} = \"{raw}\""),
            (Expected::Table, _) => {
                format!("write it as a table: a [{path}] header, or {key} = {{ ... }}")
            }
            (Expected::List | Expected::StrOrList, _) => {
                format!("write a list: {key} = [\"...\"]")
            }
            (Expected::Endpoint, _) => format!(
                "write {key} = \"connection.stream\" or {key} = {{ connection = \"...\", stream = \"...\" }}"
            ),
            (Expected::Str, _) => format!("write a string: {key} = \"...\""),
            (Expected::Int, _) => format!("write a whole number: {key} = 10"),
            (Expected::Number, _) => format!("write a number: {key} = 0.5"),
            (Expected::Bool, _) => format!("write {key} = true or {key} = false"),
        };
        self.error(
            ErrorKind::WrongType,
            value.span(),
            format!(
                "`{path}` must be {}, found {}",
                expected.describe(),
                with_article(found)
            ),
            format!("expected {}", expected.describe()),
            hint,
        );
    }

    fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, hint: impl Into<String>) {
        self.error(
            ErrorKind::MissingKey,
            t.span.clone(),
            format!("missing `{key}` in `{}`", t.path),
            format!("`{key}` is required here"),
            hint,
        );
    }

    fn check_name(&mut self, what: &str, key: &Key<'_>) {
        let name: &str = key.get_ref();
        if is_valid_name(name) {
            return;
        }
        let suggestion: String = if name.is_empty() {
            format!("my_{what}")
        } else {
            name.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let why = if what == "connection" {
            " (a dot would make \"connection.stream\" ambiguous)"
        } else {
            ""
        };
        self.error(
            ErrorKind::InvalidName,
            key.span(),
            format!(
                "{what} name `{name}` may contain only ASCII letters, digits, `_` and `-`{why}"
            ),
            "invalid name",
            format!("rename it, e.g. `{suggestion}`"),
        );
    }

    // ---- Typed getters: each reports a wrong type and returns None for it -------------------

    fn table<'t, 'i>(&mut self, t: &Tbl<'t, 'i>, key: &str) -> Option<Tbl<'t, 'i>> {
        let value = t.get(key)?;
        self.as_table(&t.child(key), key, value)
    }

    fn as_table<'t, 'i>(
        &mut self,
        path: &str,
        key: &str,
        value: &'t Val<'i>,
    ) -> Option<Tbl<'t, 'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(Tbl {
                table,
                path: path.to_owned(),
                span: value.span(),
            }),
            _ => {
                self.wrong_type(path, key, value, Expected::Table);
                None
            }
        }
    }

    fn string<'t>(&mut self, t: &Tbl<'t, '_>, key: &str) -> Option<Str<'t>> {
        let value = t.get(key)?;
        self.as_string(&t.child(key), key, value)
    }

    fn as_string<'t>(&mut self, path: &str, key: &str, value: &'t Val<'_>) -> Option<Str<'t>> {
        match value.get_ref() {
            DeValue::String(s) => Some(Str {
                value: s.as_ref(),
                span: value.span(),
            }),
            _ => {
                self.wrong_type(path, key, value, Expected::Str);
                None
            }
        }
    }

    /// A string that must not be empty.
    fn name_string<'t>(&mut self, t: &Tbl<'t, '_>, key: &str, hint: &str) -> Option<Str<'t>> {
        let s = self.string(t, key)?;
        if s.value.trim().is_empty() {
            self.error(
                ErrorKind::InvalidValue,
                s.span,
                format!("`{}` is empty", t.child(key)),
                "empty",
                hint,
            );
            return None;
        }
        Some(s)
    }

    fn bool(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<bool> {
        let value = t.get(key)?;
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(&t.child(key), key, value, Expected::Bool);
                None
            }
        }
    }

    /// An integer in `min..=max`.
    fn int(&mut self, t: &Tbl<'_, '_>, key: &str, min: i64, max: i64, hint: &str) -> Option<i64> {
        let value = t.get(key)?;
        let DeValue::Integer(int) = value.get_ref() else {
            self.wrong_type(&t.child(key), key, value, Expected::Int);
            return None;
        };
        let parsed = i64::from_str_radix(int.as_str(), int.radix()).ok();
        match parsed {
            Some(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.error(
                    ErrorKind::OutOfRange,
                    value.span(),
                    format!(
                        "`{}` must be between {min} and {max}, found {}",
                        t.child(key),
                        &self.text[value.span()]
                    ),
                    "out of range",
                    hint,
                );
                None
            }
        }
    }

    /// A number in `0.0..=1.0` (an integer 0 or 1 is accepted too).
    /// `max_rejected`: a whole number is a count of records, a number between 0.0 and 1.0 a
    /// share of the records read.
    fn reject_limit(&mut self, t: &Tbl<'_, '_>) -> RejectLimit {
        const HINT: &str = "max_rejected is a count of records (e.g. 100) or a share of the \
                            records read (e.g. 0.05); the default is 0.1";
        match t.get("max_rejected").map(|v| v.get_ref()) {
            None => RejectLimit::default(),
            Some(DeValue::Integer(_)) => self
                .int(t, "max_rejected", 0, i64::MAX, HINT)
                .map_or_else(RejectLimit::default, |n| RejectLimit::Count(n as u64)),
            Some(_) => self
                .fraction(t, "max_rejected", HINT)
                .map_or_else(RejectLimit::default, RejectLimit::Fraction),
        }
    }

    fn fraction(&mut self, t: &Tbl<'_, '_>, key: &str, hint: &str) -> Option<f64> {
        let value = t.get(key)?;
        let number = match value.get_ref() {
            DeValue::Float(x) => x.as_str().parse::<f64>().ok(),
            DeValue::Integer(int) => i64::from_str_radix(int.as_str(), int.radix())
                .ok()
                .map(|n| n as f64),
            _ => {
                self.wrong_type(&t.child(key), key, value, Expected::Number);
                return None;
            }
        };
        match number {
            Some(x) if (0.0..=1.0).contains(&x) => Some(x),
            _ => {
                self.error(
                    ErrorKind::OutOfRange,
                    value.span(),
                    format!(
                        "`{}` must be between 0.0 and 1.0, found {}",
                        t.child(key),
                        &self.text[value.span()]
                    ),
                    "out of range",
                    hint,
                );
                None
            }
        }
    }

    fn enumerated<T: Copy>(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        choices: &[(&'static str, T)],
    ) -> Option<T> {
        let s = self.string(t, key)?;
        if let Some((_, choice)) = choices.iter().find(|(name, _)| *name == s.value) {
            return Some(*choice);
        }
        let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
        let hint = match did_you_mean(s.value, names.iter().copied()) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None => format!("write one of: {}", list(&names)),
        };
        self.error(
            ErrorKind::InvalidValue,
            s.span,
            format!(
                "`{}` must be one of {}, found `{}`",
                t.child(key),
                backticked(&names),
                s.value
            ),
            "not an accepted value",
            hint,
        );
        None
    }

    /// A duration; `positive` rejects zero.
    fn duration(&mut self, t: &Tbl<'_, '_>, key: &str, positive: bool) -> Option<(Duration, Span)> {
        let s = self.string(t, key)?;
        match parse_duration(s.value) {
            Ok(d) if positive && d.is_zero() => {
                self.error(
                    ErrorKind::OutOfRange,
                    s.span,
                    format!("`{}` must be longer than zero", t.child(key)),
                    "zero",
                    format!("write a positive duration, e.g. {key} = \"5m\""),
                );
                None
            }
            Ok(d) => Some((d, s.span)),
            Err(_) => {
                self.error(
                    ErrorKind::InvalidDuration,
                    s.span,
                    format!("invalid duration `{}` for `{}`", s.value, t.child(key)),
                    "not a duration",
                    format!("write {DURATION_FORMS}"),
                );
                None
            }
        }
    }

    /// A list of strings (or, with `single`, one string), and the span of the whole value.
    fn strings<'t>(
        &mut self,
        t: &Tbl<'t, '_>,
        key: &str,
        single: bool,
    ) -> Option<(Vec<Str<'t>>, Span)> {
        let value = t.get(key)?;
        let path = t.child(key);
        match value.get_ref() {
            DeValue::String(s) if single => Some((
                vec![Str {
                    value: s.as_ref(),
                    span: value.span(),
                }],
                value.span(),
            )),
            DeValue::Array(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    if let Some(s) = self.as_string(&format!("{path}[{i}]"), key, item) {
                        out.push(s);
                    }
                }
                Some((out, value.span()))
            }
            _ => {
                let expected = if single {
                    Expected::StrOrList
                } else {
                    Expected::List
                };
                self.wrong_type(&path, key, value, expected);
                None
            }
        }
    }

    // ---- Environment -----------------------------------------------------------------------

    /// Interpolates `raw` (the string at `span`, known as `path`), reporting every problem.
    /// Returns the value and whether any part of it came from the environment.
    fn interpolate(&mut self, raw: &str, span: &Span, path: &str) -> (String, bool) {
        let (out, problems) = interpolate(raw, self.env);
        let start = self.verbatim_start(raw, span);
        let at = |range: &Range<usize>| match start {
            Some(start) => start + range.start..start + range.end,
            None => span.clone(),
        };
        for problem in problems {
            match problem {
                InterpolationError::Unset { name, at: range } => self.error(
                    ErrorKind::UnsetVariable,
                    at(&range),
                    format!("environment variable `{name}` is not set (used in `{path}`)"),
                    "not set",
                    format!(
                        "set {name} in the environment lockstep runs in, or give a default: \
                         ${{{name}:-default}}"
                    ),
                ),
                InterpolationError::Unterminated { at: range } => self.error(
                    ErrorKind::InvalidInterpolation,
                    at(&range),
                    format!("unterminated `${{` in `{path}`"),
                    "no closing `}`",
                    "close it: ${NAME}, or write $$ for a literal dollar sign",
                ),
                InterpolationError::InvalidName { expr, at: range } => self.error(
                    ErrorKind::InvalidInterpolation,
                    at(&range),
                    format!("invalid interpolation `{expr}` in `{path}`"),
                    "invalid interpolation",
                    "write ${NAME} or ${NAME:-default}, where NAME is letters, digits and _ \
                     (not starting with a digit); write $$ for a literal dollar sign",
                ),
            }
        }
        let from_env = !out.from_env.is_empty();
        self.from_env.extend(out.from_env);
        (out.value, from_env)
    }

    /// A string key that is interpolated.
    fn interpolated(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<(String, bool, Span)> {
        let s = self.string(t, key)?;
        let (value, from_env) = self.interpolate(s.value, &s.span, &t.child(key));
        Some((value, from_env, s.span))
    }

    /// A TOML value as JSON, with every string interpolated.
    fn json_of(&mut self, value: &Val<'_>, path: &str) -> Json {
        match value.get_ref() {
            DeValue::String(s) => Json::String(self.interpolate(s, &value.span(), path).0),
            DeValue::Integer(int) => i64::from_str_radix(int.as_str(), int.radix())
                .map(Json::from)
                .unwrap_or(Json::Null),
            DeValue::Float(x) => {
                match x
                    .as_str()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => Json::Number(n),
                    None => {
                        self.error(
                            ErrorKind::InvalidValue,
                            value.span(),
                            format!("`{path}` is not a finite number, which JSON cannot carry"),
                            "not finite",
                            "use a finite number, or a string the connector understands",
                        );
                        Json::Null
                    }
                }
            }
            DeValue::Boolean(b) => Json::Bool(*b),
            DeValue::Datetime(d) => Json::String(d.to_string()),
            DeValue::Array(items) => Json::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.json_of(item, &format!("{path}[{i}]")))
                    .collect(),
            ),
            DeValue::Table(table) => {
                let mut object = serde_json::Map::new();
                for (k, v) in entries(table) {
                    let key: &str = k.get_ref();
                    let json = self.json_of(v, &join_path(path, key));
                    object.insert(key.to_owned(), json);
                }
                Json::Object(object)
            }
        }
    }

    // ---- The document ----------------------------------------------------------------------

    fn config(mut self, document: &DeTable<'_>) -> Result<Config, ConfigErrors> {
        let root = Tbl {
            table: document,
            path: String::new(),
            span: 0..0,
        };
        self.check_keys(&root, ROOT_KEYS);
        let (mut connections, connection_names) = self.connections(&root);
        let state_url = self.state(&root);
        let lease_ttl = self.lease_ttl(&root);
        let connector_paths = self.connectors(&root);
        let syncs = self.syncs(&root, &connection_names);
        let daemon = self.daemon(&root);
        let mut alerts = self.alerts(&root);

        let secrets = Secrets::new(std::mem::take(&mut self.from_env));
        if !self.errors.is_empty() {
            let mut errors = self.errors;
            for error in &mut errors {
                error.redact(&secrets);
            }
            sort(&mut errors);
            return Err(ConfigErrors::new(self.path, errors));
        }
        for connection in connections.values_mut() {
            connection.secrets = secrets.clone();
        }
        for webhook in &mut alerts.webhooks {
            webhook.secrets = secrets.clone();
        }
        if let Some(email) = &mut alerts.email {
            email.secrets = secrets.clone();
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            state_url,
            lease_ttl,
            connector_paths,
            connections,
            syncs,
            daemon,
            alerts,
            secrets,
            source: self.source,
        })
    }

    fn state(&mut self, root: &Tbl<'_, '_>) -> String {
        let Some(t) = self.table(root, "state") else {
            return self.resolve_sqlite(&DEFAULT_STATE_URL["sqlite:".len()..]);
        };
        self.check_keys(&t, STATE_KEYS);
        let Some((url, from_env, span)) = self.interpolated(&t, "url") else {
            return self.resolve_sqlite(&DEFAULT_STATE_URL["sqlite:".len()..]);
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            return self.resolve_sqlite(rest);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return url;
        }
        let found = if from_env {
            " (the value comes from the environment and is not shown)".to_owned()
        } else {
            format!(", found `{url}`")
        };
        self.error(
            ErrorKind::InvalidUrl,
            span,
            format!("`state.url` must start with `sqlite:` or `postgres://`{found}"),
            "unsupported url",
            "write url = \"sqlite://.lockstep/state.db\" (a file next to the config) or \
             url = \"postgres://user:${PGPASSWORD}@host/db\"",
        );
        String::new()
    }

    /// `state.lease_ttl`: how long a run's lease on its sync lives without renewal.
    fn lease_ttl(&mut self, root: &Tbl<'_, '_>) -> Duration {
        // A `state` that is not a table was reported by `state`.
        let Some(value) = root.get("state") else {
            return DEFAULT_LEASE_TTL;
        };
        let DeValue::Table(table) = value.get_ref() else {
            return DEFAULT_LEASE_TTL;
        };
        let t = Tbl {
            table,
            path: root.child("state"),
            span: value.span(),
        };
        let Some((ttl, span)) = self.duration(&t, "lease_ttl", true) else {
            return DEFAULT_LEASE_TTL;
        };
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&ttl) {
            self.error(
                ErrorKind::OutOfRange,
                span,
                format!(
                    "`state.lease_ttl` must be between {}s and {}s, found {}",
                    MIN_LEASE_TTL.as_secs(),
                    MAX_LEASE_TTL.as_secs(),
                    if ttl.subsec_millis() == 0 {
                        format!("{}s", ttl.as_secs())
                    } else {
                        format!("{}ms", ttl.as_millis())
                    }
                ),
                "out of range",
                "a run renews its lease every third of lease_ttl, and a crashed run's sync is \
                 taken over by another node after it; the default is 30s",
            );
            return DEFAULT_LEASE_TTL;
        }
        ttl
    }

    /// `sqlite:` + `rest`, with a relative path resolved against the config file's directory.
    fn resolve_sqlite(&self, rest: &str) -> String {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (file, query) = match rest.find('?') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if file.is_empty() || file == ":memory:" || Path::new(file).is_absolute() {
            return format!("sqlite://{file}{query}");
        }
        format!("sqlite://{}{query}", self.base_dir().join(file).display())
    }

    fn connectors(&mut self, root: &Tbl<'_, '_>) -> Vec<PathBuf> {
        let Some(t) = self.table(root, "connectors") else {
            return Vec::new();
        };
        self.check_keys(&t, CONNECTORS_KEYS);
        let Some((paths, _)) = self.strings(&t, "paths", false) else {
            return Vec::new();
        };
        let base = self.base_dir();
        paths.iter().map(|p| base.join(p.value)).collect()
    }

    fn connections(
        &mut self,
        root: &Tbl<'_, '_>,
    ) -> (BTreeMap<String, Connection>, BTreeSet<String>) {
        let mut connections = BTreeMap::new();
        let mut names = BTreeSet::new();
        let Some(all) = self.table(root, "connections") else {
            return (connections, names);
        };
        for (key, value) in entries(all.table) {
            let name: &str = key.get_ref();
            // Defined, even if broken: syncs that name it must not get a second error.
            names.insert(name.to_owned());
            self.check_name("connection", key);
            let Some(t) = self.as_table(&all.child(name), name, value) else {
                continue;
            };
            self.check_keys(&t, CONNECTION_KEYS);
            let connector = if t.has("connector") {
                self.name_string(
                    &t,
                    "connector",
                    "write the name of a connector from a plugin, e.g. connector = \"sqlite\"",
                )
            } else {
                self.missing(
                    &t,
                    "connector",
                    "add connector = \"<name>\" with a connector from a plugin, e.g. \"sqlite\"",
                );
                None
            };
            let config = match t.get("config") {
                Some(value) if matches!(value.get_ref(), DeValue::Table(_)) => {
                    self.json_of(value, &t.child("config"))
                }
                Some(value) => {
                    self.wrong_type(&t.child("config"), "config", value, Expected::Table);
                    Json::Object(serde_json::Map::new())
                }
                None => Json::Object(serde_json::Map::new()),
            };
            if let Some(connector) = connector {
                connections.insert(
                    name.to_owned(),
                    Connection {
                        name: name.to_owned(),
                        connector: connector.value.to_owned(),
                        config,
                        location: self.loc(&key.span()),
                        connector_location: self.loc(&connector.span),
                        secrets: Secrets::default(),
                    },
                );
            }
        }
        (connections, names)
    }

    fn syncs(&mut self, root: &Tbl<'_, '_>, connections: &BTreeSet<String>) -> Vec<Sync> {
        let mut syncs = Vec::new();
        let Some(all) = self.table(root, "syncs") else {
            return syncs;
        };
        for (key, value) in entries(all.table) {
            let name: &str = key.get_ref();
            self.check_name("sync", key);
            let Some(t) = self.as_table(&all.child(name), name, value) else {
                continue;
            };
            if let Some(sync) = self.sync(name, &key.span(), &t, connections) {
                syncs.push(sync);
            }
        }
        syncs
    }

    fn sync(
        &mut self,
        name: &str,
        name_span: &Span,
        t: &Tbl<'_, '_>,
        connections: &BTreeSet<String>,
    ) -> Option<Sync> {
        self.check_keys(t, SYNC_KEYS);
        let source = self.endpoint(t, "source", connections);
        let destination = self.endpoint(t, "destination", connections);
        if let (Some((s, _)), Some((d, d_span))) = (&source, &destination) {
            if s == d {
                self.error(
                    ErrorKind::SameEndpoint,
                    d_span.clone(),
                    format!(
                        "sync `{name}` writes to its own source `{}.{}`",
                        s.connection, s.stream
                    ),
                    "same as the source",
                    "a sync copies from one stream to another: name a different destination",
                );
            }
        }

        let mode = self.enumerated(t, "mode", MODES).unwrap_or_default();
        let mode_location = t.get("mode").map(|v| self.loc(&v.span()));
        let cursor = self.name_string(
            t,
            "cursor",
            "name the source field that records when a row last changed, e.g. cursor = \"updated_at\"",
        );
        if mode.uses_cursor() && !t.has("cursor") {
            let span = t.get("mode").map_or(t.span.clone(), |v| v.span());
            let mode_name = MODES
                .iter()
                .find(|(_, m)| *m == mode)
                .map_or("", |(n, _)| *n);
            self.error(
                ErrorKind::MissingCursor,
                span,
                format!("sync `{name}` uses mode `{mode_name}`, which needs a `cursor`"),
                "needs a cursor",
                "add cursor = \"<source field>\", a last-modified field that only grows \
                 (e.g. \"updated_at\"), or use mode = \"full\"",
            );
        }

        let (fields, field_locations) = self.fields(t);
        let (key, key_location) = self.key(t, &fields);
        let batch_size = self
            .int(
                t,
                "batch_size",
                1,
                MAX_BATCH_SIZE as i64,
                "batch_size is the number of rows per batch; the default is 10000",
            )
            .map_or(DEFAULT_BATCH_SIZE, |n| n as usize);
        let max_delete_fraction = self
            .fraction(
                t,
                "max_delete_fraction",
                "max_delete_fraction is the share of the destination one run may delete, e.g. 0.1 \
                 for 10%; the default is 0.1",
            )
            .unwrap_or(DeletePolicy::default().max_delete_fraction);
        let tombstone = self
            .name_string(
                t,
                "tombstone",
                "name the source field that marks deleted records, e.g. tombstone = \"deleted_at\"",
            )
            .map(|s| s.value.to_owned());
        let reconcile_every = self
            .int(
                t,
                "reconcile_every",
                0,
                i64::from(u32::MAX),
                "reconcile_every is how many runs pass between key-set reconciliations in mirror \
                 mode: 1 for every run, 0 for never",
            )
            .map_or(DeletePolicy::default().reconcile_every, |n| n as u32);
        let max_rejected = self.reject_limit(t);
        let use_ledger = self.bool(t, "ledger").unwrap_or(true);
        let enabled = self.bool(t, "enabled").unwrap_or(true);
        let schedule = self.schedule(t);
        let retry = self.retry(t);

        let (source, source_span) = source?;
        let (destination, destination_span) = destination?;
        Some(Sync {
            spec: SyncSpec {
                name: name.to_owned(),
                source,
                destination,
                mode,
                cursor_field: cursor.as_ref().map(|c| c.value.to_owned()),
                key,
                fields,
                batch_size,
                delete: DeletePolicy {
                    max_delete_fraction,
                    tombstone,
                    reconcile_every,
                },
                max_rejected,
                use_ledger,
            },
            enabled,
            schedule,
            retry,
            location: self.loc(name_span),
            locations: SyncLocations {
                source: self.loc(&source_span),
                destination: self.loc(&destination_span),
                mode: mode_location,
                cursor: cursor.map(|c| self.loc(&c.span)),
                key: key_location,
                fields: field_locations,
            },
        })
    }

    /// A sync's source or destination; reports it missing too.
    fn endpoint(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        connections: &BTreeSet<String>,
    ) -> Option<(EndpointSpec, Span)> {
        let path = t.child(key);
        let Some(value) = t.get(key) else {
            self.missing(
                t,
                key,
                format!(
                    "add {key} = \"connection.stream\", e.g. {key} = \"crm.contacts\", or \
                     {key} = {{ connection = \"crm\", stream = \"contacts\" }}"
                ),
            );
            return None;
        };
        let (connection, connection_span, stream) = match value.get_ref() {
            DeValue::String(s) => {
                let split = s
                    .split_once('.')
                    .filter(|(c, st)| !c.is_empty() && !st.is_empty());
                let Some((connection, stream)) = split else {
                    let hint =
                        if !s.is_empty() && !s.contains('.') && connections.contains(s.as_ref()) {
                            format!(
                            "add the stream: {key} = \"{s}.<stream>\", or {key} = {{ connection = \
                             \"{s}\", stream = \"...\" }}"
                        )
                        } else {
                            format!(
                                "write {key} = \"connection.stream\", e.g. \"crm.contacts\", or \
                             {key} = {{ connection = \"crm\", stream = \"contacts\" }}"
                            )
                        };
                    self.error(
                        ErrorKind::InvalidEndpoint,
                        value.span(),
                        format!("`{path}` must be \"connection.stream\", found `{s}`"),
                        "not connection.stream",
                        hint,
                    );
                    return None;
                };
                let span = match self.verbatim_start(s, &value.span()) {
                    Some(start) => start..start + connection.len(),
                    None => value.span(),
                };
                (connection.to_owned(), span, stream.to_owned())
            }
            DeValue::Table(table) => {
                let inner = Tbl {
                    table,
                    path: path.clone(),
                    span: value.span(),
                };
                self.check_keys(&inner, ENDPOINT_KEYS);
                let mut parts = Vec::new();
                for part in ENDPOINT_KEYS {
                    if inner.has(part) {
                        parts.push(self.name_string(
                            &inner,
                            part,
                            &format!("write the {part}'s name, e.g. {part} = \"contacts\""),
                        ));
                    } else {
                        self.missing(
                            &inner,
                            part,
                            "write { connection = \"crm\", stream = \"contacts\" }",
                        );
                        parts.push(None);
                    }
                }
                let (Some(Some(connection)), Some(Some(stream))) = (parts.first(), parts.get(1))
                else {
                    return None;
                };
                (
                    connection.value.to_owned(),
                    connection.span.clone(),
                    stream.value.to_owned(),
                )
            }
            _ => {
                self.wrong_type(&path, key, value, Expected::Endpoint);
                return None;
            }
        };
        if !connections.contains(&connection) {
            let defined: Vec<&str> = connections.iter().map(String::as_str).collect();
            let hint = match did_you_mean(&connection, defined.iter().copied()) {
                Some(suggestion) => format!(
                    "did you mean `{suggestion}`? defined connections: {}",
                    list(&defined)
                ),
                None if defined.is_empty() => format!(
                    "no connections are defined: add a [connections.{}] table with a connector",
                    path_key(&connection)
                ),
                None => format!(
                    "defined connections: {}; or define this one in a [connections.{}] table",
                    list(&defined),
                    path_key(&connection)
                ),
            };
            self.error(
                ErrorKind::UnknownConnection,
                connection_span,
                format!("`{path}` names connection `{connection}`, which is not defined"),
                "unknown connection",
                hint,
            );
            return None;
        }
        Some((EndpointSpec { connection, stream }, value.span()))
    }

    fn key(&mut self, t: &Tbl<'_, '_>, fields: &[FieldMapping]) -> (Vec<String>, Option<Location>) {
        let Some((names, span)) = self.strings(t, "key", true) else {
            return (Vec::new(), None);
        };
        let path = t.child("key");
        if names.is_empty()
            && matches!(t.get("key").map(|v| v.get_ref()), Some(DeValue::Array(a)) if a.is_empty())
        {
            self.error(
                ErrorKind::EmptyKey,
                span.clone(),
                format!("`{path}` is an empty list"),
                "empty key",
                "list at least one destination field, e.g. key = [\"id\"], or remove `key` to match \
                 on the source's primary key",
            );
        }
        // Destination fields: `props.score` writes field `props`.
        let columns: Vec<String> = fields.iter().map(FieldMapping::column).collect();
        let mut targets: Vec<&str> = Vec::new();
        for c in &columns {
            if !targets.contains(&c.as_str()) {
                targets.push(c);
            }
        }
        let mut seen = BTreeSet::new();
        let mut key = Vec::new();
        for name in &names {
            if name.value.trim().is_empty() {
                self.error(
                    ErrorKind::InvalidValue,
                    name.span.clone(),
                    format!("`{path}` has an empty field name"),
                    "empty",
                    "write destination field names, e.g. key = [\"email\"]",
                );
                continue;
            }
            if !seen.insert(name.value) {
                self.error(
                    ErrorKind::DuplicateField,
                    name.span.clone(),
                    format!(
                        "destination field `{}` appears twice in `{path}`",
                        name.value
                    ),
                    "repeated",
                    "list each key field once",
                );
                continue;
            }
            if !targets.is_empty() && !targets.contains(&name.value) {
                let hint = match did_you_mean(name.value, targets.iter().copied()) {
                    Some(suggestion) => format!(
                        "did you mean `{suggestion}`? the key names destination fields, and the \
                         mapping produces: {}",
                        list(&targets)
                    ),
                    None => format!(
                        "the key names destination fields, and the mapping produces: {}; add \
                         `{}` to `{}`",
                        list(&targets),
                        name.value,
                        t.child("fields")
                    ),
                };
                self.error(
                    ErrorKind::KeyNotMapped,
                    name.span.clone(),
                    format!(
                        "key field `{}` is not a destination field of `{}`",
                        name.value,
                        t.child("fields")
                    ),
                    "not mapped",
                    hint,
                );
            }
            key.push(name.value.to_owned());
        }
        (key, Some(self.loc(&span)))
    }

    fn schedule(&mut self, t: &Tbl<'_, '_>) -> Option<Schedule> {
        let st = self.table(t, "schedule")?;
        self.check_keys(&st, SCHEDULE_KEYS);
        let trigger = match (st.key_span("cron"), st.key_span("every")) {
            (Some(cron_at), Some(every_at)) => {
                let later = if cron_at.start > every_at.start {
                    ("cron", cron_at)
                } else {
                    ("every", every_at)
                };
                self.error(
                    ErrorKind::ScheduleTrigger,
                    later.1,
                    format!("`{}` has both `cron` and `every`", st.path),
                    format!("second trigger `{}`", later.0),
                    "keep one: `cron` for times on the calendar, `every` for a fixed interval",
                );
                None
            }
            (None, None) => {
                self.error(
                    ErrorKind::ScheduleTrigger,
                    st.span.clone(),
                    format!("`{}` has neither `cron` nor `every`", st.path),
                    "no trigger",
                    "add cron = \"*/5 * * * *\" (times on the calendar) or every = \"5m\" (a fixed \
                     interval)",
                );
                None
            }
            (Some(_), None) => self.cron(&st),
            (None, Some(_)) => self
                .duration(&st, "every", true)
                .map(|(d, _)| Trigger::Every(d)),
        };
        let timezone = self.timezone(&st);
        let jitter = self
            .duration(&st, "jitter", false)
            .map_or(Duration::ZERO, |(d, _)| d);
        let catch_up = self
            .enumerated(&st, "catch_up", CATCH_UPS)
            .unwrap_or_default();
        let timeout = self.duration(&st, "timeout", true).map(|(d, _)| d);
        Some(Schedule {
            trigger: trigger?,
            timezone: timezone.unwrap_or_else(|| "UTC".to_owned()),
            jitter,
            catch_up,
            timeout,
            location: self.loc(&st.span),
        })
    }

    fn cron(&mut self, st: &Tbl<'_, '_>) -> Option<Trigger> {
        let s = self.string(st, "cron")?;
        let parser = croner::parser::CronParser::builder()
            .year(croner::parser::Year::Disallowed)
            .build();
        match parser.parse(s.value) {
            Ok(_) => Some(Trigger::Cron(s.value.trim().to_owned())),
            Err(e) => {
                let reason = match e {
                    CronError::InvalidPattern(reason) | CronError::ComponentError(reason) => reason,
                    other => other.to_string(),
                };
                self.error(
                    ErrorKind::InvalidCron,
                    s.span,
                    format!(
                        "invalid cron expression `{}` in `{}`: {}",
                        s.value,
                        st.child("cron"),
                        reason.trim_end_matches('.')
                    ),
                    "invalid cron",
                    "write 5 fields (minute hour day-of-month month day-of-week), or 6 with \
                     seconds first; e.g. \"*/5 * * * *\" runs every five minutes",
                );
                None
            }
        }
    }

    fn timezone(&mut self, st: &Tbl<'_, '_>) -> Option<String> {
        let s = self.string(st, "timezone")?;
        if s.value.parse::<chrono_tz::Tz>().is_ok() {
            return Some(s.value.to_owned());
        }
        let names = chrono_tz::TZ_VARIANTS.iter().map(|tz| tz.name());
        let hint = match did_you_mean(s.value, names) {
            Some(suggestion) => format!("did you mean `{suggestion}`?"),
            None => "use an IANA time zone name, e.g. \"UTC\" or \"Europe/Paris\"".to_owned(),
        };
        self.error(
            ErrorKind::UnknownTimezone,
            s.span,
            format!(
                "unknown time zone `{}` in `{}`",
                s.value,
                st.child("timezone")
            ),
            "unknown time zone",
            hint,
        );
        None
    }

    fn retry(&mut self, t: &Tbl<'_, '_>) -> RetryPolicy {
        let mut retry = RetryPolicy::default();
        let Some(rt) = self.table(t, "retry") else {
            return retry;
        };
        self.check_keys(&rt, RETRY_KEYS);
        if let Some(n) = self.int(
            &rt,
            "max_attempts",
            1,
            100,
            "max_attempts counts every attempt, the first included; 1 means no retry",
        ) {
            retry.max_attempts = n as u32;
        }
        let initial = self.duration(&rt, "initial_backoff", false);
        let max = self.duration(&rt, "max_backoff", false);
        if let Some((d, _)) = initial {
            retry.initial_backoff = d;
        }
        if let Some((d, _)) = max {
            retry.max_backoff = d;
        }
        if retry.max_backoff < retry.initial_backoff {
            let span = max.or(initial).map_or(rt.span.clone(), |(_, span)| span);
            self.error(
                ErrorKind::OutOfRange,
                span,
                format!(
                    "`{}` is shorter than `{}`",
                    rt.child("max_backoff"),
                    rt.child("initial_backoff")
                ),
                "shorter than initial_backoff",
                "the backoff doubles from initial_backoff up to max_backoff: make max_backoff at \
                 least as long (defaults: 10s and 10m)",
            );
        }
        retry
    }

    fn daemon(&mut self, root: &Tbl<'_, '_>) -> DaemonConfig {
        let mut daemon = DaemonConfig::default();
        let Some(t) = self.table(root, "daemon") else {
            return daemon;
        };
        self.check_keys(&t, DAEMON_KEYS);
        if let Some(listen) = self.string(&t, "listen") {
            let valid = listen
                .value
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if valid {
                daemon.listen = listen.value.to_owned();
            } else {
                self.error(
                    ErrorKind::InvalidAddress,
                    listen.span,
                    format!("`daemon.listen` must be host:port, found `{}`", listen.value),
                    "not host:port",
                    "write e.g. listen = \"127.0.0.1:9464\", or \"0.0.0.0:9464\" for every interface",
                );
            }
        }
        if let Some(format) = self.enumerated(&t, "log_format", LOG_FORMATS) {
            daemon.log_format = format;
        }
        daemon
    }

    fn alerts(&mut self, root: &Tbl<'_, '_>) -> AlertsConfig {
        let mut alerts = AlertsConfig::default();
        let Some(t) = self.table(root, "alerts") else {
            return alerts;
        };
        self.check_keys(&t, ALERTS_KEYS);
        if let Some(n) = self.int(
            &t,
            "consecutive_failures",
            1,
            1000,
            "alert after this many failed runs in a row; the default is 3",
        ) {
            alerts.consecutive_failures = n as u32;
        }
        if let Some((d, _)) = self.duration(&t, "repeat_interval", true) {
            alerts.repeat_interval = d;
        }
        if let Some(b) = self.bool(&t, "on_recovery") {
            alerts.on_recovery = b;
        }
        if let Some(x) = self.fraction(
            &t,
            "low_volume_fraction",
            "a run below this fraction of the median volume alerts, e.g. 0.2; 0.0 turns the alert off",
        ) {
            alerts.low_volume_fraction = x;
        }
        if let Some(n) = self.int(
            &t,
            "low_volume_window",
            1,
            1000,
            "the number of past successful runs whose median is compared; the default is 10",
        ) {
            alerts.low_volume_window = n as u32;
        }
        if let Some(value) = t.get("webhook") {
            let path = t.child("webhook");
            match value.get_ref() {
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let item_path = format!("{path}[{i}]");
                        if let Some(wt) = self.as_table(&item_path, "webhook", item) {
                            if let Some(webhook) = self.webhook(&wt) {
                                alerts.webhooks.push(webhook);
                            }
                        }
                    }
                }
                DeValue::Table(_) => {
                    if let Some(wt) = self.as_table(&path, "webhook", value) {
                        if let Some(webhook) = self.webhook(&wt) {
                            alerts.webhooks.push(webhook);
                        }
                    }
                }
                other => self.error(
                    ErrorKind::WrongType,
                    value.span(),
                    format!(
                        "`{path}` must be a table or a list of tables, found {}",
                        with_article(other.type_str())
                    ),
                    "expected tables",
                    "write one [[alerts.webhook]] table per webhook, each with url = \"https://...\"",
                ),
            }
        }
        if let Some(et) = self.table(&t, "email") {
            alerts.email = self.email(&et);
        }
        alerts
    }

    fn webhook(&mut self, t: &Tbl<'_, '_>) -> Option<WebhookAlert> {
        self.check_keys(t, WEBHOOK_KEYS);
        if !t.has("url") {
            self.missing(
                t,
                "url",
                "add url = \"https://...\", where the alert is POSTed as JSON",
            );
            return None;
        }
        let (url, from_env, span) = self.interpolated(t, "url")?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            let found = if from_env {
                " (the value comes from the environment and is not shown)".to_owned()
            } else {
                format!(", found `{url}`")
            };
            self.error(
                ErrorKind::InvalidUrl,
                span,
                format!(
                    "`{}` must be an http:// or https:// url{found}",
                    t.child("url")
                ),
                "not an http url",
                "write url = \"https://hooks.example.com/...\"",
            );
            return None;
        }
        Some(WebhookAlert {
            url,
            location: self.loc(&t.span),
            secrets: Secrets::default(),
        })
    }

    fn email_address(&mut self, path: &str, value: &str, from_env: bool, span: Span) -> bool {
        let valid = value
            .split_once('@')
            .is_some_and(|(user, domain)| !user.is_empty() && !domain.is_empty())
            && !value.chars().any(char::is_whitespace);
        if !valid {
            let found = if from_env {
                " (the value comes from the environment and is not shown)".to_owned()
            } else {
                format!(", found `{value}`")
            };
            self.error(
                ErrorKind::InvalidAddress,
                span,
                format!("`{path}` must be an email address{found}"),
                "not an email address",
                "write an address like \"ops@example.com\"",
            );
        }
        valid
    }

    fn email(&mut self, t: &Tbl<'_, '_>) -> Option<EmailAlert> {
        self.check_keys(t, EMAIL_KEYS);
        let mut complete = true;
        let smtp_host = if t.has("smtp_host") {
            self.interpolated(t, "smtp_host").map(|(host, _, _)| host)
        } else {
            self.missing(t, "smtp_host", "add smtp_host = \"smtp.example.com\"");
            None
        };
        let smtp_port = self
            .int(t, "smtp_port", 1, 65535, "write a TCP port, e.g. 587 or 25")
            .map_or(587, |p| p as u16);
        let starttls = self.enumerated(t, "starttls", STARTTLS).unwrap_or_default();
        let username = self.interpolated(t, "username");
        let password = self.interpolated(t, "password");
        for (present, absent) in [("username", "password"), ("password", "username")] {
            if t.has(present) && !t.has(absent) {
                let span = t.key_span(present).unwrap_or(t.span.clone());
                self.error(
                    ErrorKind::MissingKey,
                    span,
                    format!("`{}` has `{present}` but no `{absent}`", t.path),
                    format!("`{absent}` missing"),
                    "set both username and password, or neither for a relay that needs no login",
                );
                complete = false;
            }
        }
        let from = if t.has("from") {
            self.interpolated(t, "from")
                .filter(|(from, from_env, span)| {
                    self.email_address(&t.child("from"), from, *from_env, span.clone())
                })
                .map(|(from, _, _)| from)
        } else {
            self.missing(t, "from", "add from = \"lockstep@example.com\"");
            None
        };
        let mut to = Vec::new();
        if t.has("to") {
            if let Some((addresses, span)) = self.strings(t, "to", true) {
                if addresses.is_empty() {
                    self.error(
                        ErrorKind::MissingKey,
                        span,
                        format!("`{}` is an empty list", t.child("to")),
                        "no recipients",
                        "list at least one address: to = [\"ops@example.com\"]",
                    );
                }
                for (i, address) in addresses.iter().enumerate() {
                    let path = format!("{}[{i}]", t.child("to"));
                    let (value, from_env) = self.interpolate(address.value, &address.span, &path);
                    if self.email_address(&path, &value, from_env, address.span.clone()) {
                        to.push(value);
                    }
                }
            }
        } else {
            self.missing(t, "to", "add to = [\"ops@example.com\"]");
        }
        if !complete {
            return None;
        }
        Some(EmailAlert {
            smtp_host: smtp_host?,
            smtp_port,
            starttls,
            username: username.map(|(u, _, _)| u),
            password: password.map(|(p, _, _)| p),
            from: from?,
            to,
            location: self.loc(&t.span),
            secrets: Secrets::default(),
        })
    }
}
