//! The position-keeping TOML reader that the section rules are written with.
//!
//! It holds the document's text, turns TOML syntax errors into diagnostics, and gives the rules
//! typed getters (`string`, `int`, `fraction`, `duration`, `enumerated`, ...) that report a wrong
//! type or an out-of-range value at its place in the file and return `None` for it, so that one
//! walk over the document collects every problem. It also does `${VAR}` interpolation, recording
//! every value taken from the environment so that it becomes a secret.
//!
//! Invariants:
//! - Every diagnostic carries the file, a location (line, column, byte span) and a hint.
//! - A value that came from the environment is never copied into a message or a hint.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_core::RejectLimit;
use lockstep_expr::did_you_mean;
use serde_json::Value as Json;
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::diagnostic::{ConfigError, ErrorKind, Location, SourceFile};
use crate::duration::{parse_duration, DURATION_FORMS};
use crate::interpolate::{interpolate, InterpolationError};

pub(super) type Span = Range<usize>;
pub(super) type Key<'i> = Spanned<DeString<'i>>;
pub(super) type Val<'i> = Spanned<DeValue<'i>>;
pub(super) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// A TOML syntax error as a diagnostic, with a plainer message and a hint for the usual
/// mistakes (an unquoted string, a repeated key, an unclosed string or table).
pub(super) fn syntax_error(
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
pub(super) fn unquoted_string(text: &str, offset: usize) -> Option<(String, String)> {
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
pub(super) fn sort(errors: &mut [ConfigError]) {
    errors.sort_by_key(|e| e.location().map(|l| (l.offset, l.len)));
}

/// What a key should hold, for type errors.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Expected {
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
    pub(super) fn describe(self) -> &'static str {
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

pub(super) fn with_article(type_name: &str) -> String {
    match type_name {
        "integer" | "array" => format!("an {type_name}"),
        other => format!("a {other}"),
    }
}

/// A key as it appears in a dotted path: bare when it can be, quoted otherwise.
pub(super) fn path_key(key: &str) -> String {
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

pub(super) fn join_path(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        path_key(key)
    } else {
        format!("{parent}.{}", path_key(key))
    }
}

pub(super) fn entries<'t, 'i>(table: &'t DeTable<'i>) -> Vec<(&'t Key<'i>, &'t Val<'i>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    entries
}

pub(super) fn list(names: &[&str]) -> String {
    names.join(", ")
}

pub(super) fn backticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A table being read: its contents, its dotted path, and where to point when a key is missing.
pub(super) struct Tbl<'t, 'i> {
    pub(super) table: &'t DeTable<'i>,
    pub(super) path: String,
    pub(super) span: Span,
}

impl<'t, 'i> Tbl<'t, 'i> {
    pub(super) fn get(&self, key: &str) -> Option<&'t Val<'i>> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(_, v)| v)
    }

    pub(super) fn key_span(&self, key: &str) -> Option<Span> {
        self.table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == key)
            .map(|(k, _)| k.span())
    }

    pub(super) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub(super) fn child(&self, key: &str) -> String {
        join_path(&self.path, key)
    }
}

/// A string value and where it is.
pub(super) struct Str<'t> {
    pub(super) value: &'t str,
    pub(super) span: Span,
}

/// The document being read: its text and path, where values come from, and every problem
/// found so far.
pub(super) struct Reader<'a> {
    pub(super) text: &'a str,
    pub(super) path: &'a Path,
    pub(super) env: Env<'a>,
    pub(super) source: SourceFile,
    pub(super) errors: Vec<ConfigError>,
    /// Every value taken from the environment; they become the config's secrets.
    pub(super) from_env: Vec<String>,
}

impl Reader<'_> {
    pub(super) fn loc(&self, span: &Span) -> Location {
        Location::from_span(self.text, span.clone())
    }

    pub(super) fn error(
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

    pub(super) fn base_dir(&self) -> PathBuf {
        self.path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    /// The byte offset in the file where the raw text of string `raw` starts, when the file
    /// holds it verbatim between one pair of quotes (no escapes, not multi-line).
    pub(super) fn verbatim_start(&self, raw: &str, span: &Span) -> Option<usize> {
        if span.end < span.start + 2 {
            return None;
        }
        let inner = span.start + 1..span.end - 1;
        (self.text.get(inner.clone()) == Some(raw)).then_some(inner.start)
    }

    // ---- Structure -------------------------------------------------------------------------

    pub(super) fn check_keys(&mut self, t: &Tbl<'_, '_>, known: &[&str]) {
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

    pub(super) fn wrong_type(
        &mut self,
        path: &str,
        key: &str,
        value: &Val<'_>,
        expected: Expected,
    ) {
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

    pub(super) fn missing(&mut self, t: &Tbl<'_, '_>, key: &str, hint: impl Into<String>) {
        self.error(
            ErrorKind::MissingKey,
            t.span.clone(),
            format!("missing `{key}` in `{}`", t.path),
            format!("`{key}` is required here"),
            hint,
        );
    }

    pub(super) fn check_name(&mut self, what: &str, key: &Key<'_>) {
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

    pub(super) fn table<'t, 'i>(&mut self, t: &Tbl<'t, 'i>, key: &str) -> Option<Tbl<'t, 'i>> {
        let value = t.get(key)?;
        self.as_table(&t.child(key), key, value)
    }

    pub(super) fn as_table<'t, 'i>(
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

    pub(super) fn string<'t>(&mut self, t: &Tbl<'t, '_>, key: &str) -> Option<Str<'t>> {
        let value = t.get(key)?;
        self.as_string(&t.child(key), key, value)
    }

    pub(super) fn as_string<'t>(
        &mut self,
        path: &str,
        key: &str,
        value: &'t Val<'_>,
    ) -> Option<Str<'t>> {
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
    pub(super) fn name_string<'t>(
        &mut self,
        t: &Tbl<'t, '_>,
        key: &str,
        hint: &str,
    ) -> Option<Str<'t>> {
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

    pub(super) fn bool(&mut self, t: &Tbl<'_, '_>, key: &str) -> Option<bool> {
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
    pub(super) fn int(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        min: i64,
        max: i64,
        hint: &str,
    ) -> Option<i64> {
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
    pub(super) fn reject_limit(&mut self, t: &Tbl<'_, '_>) -> RejectLimit {
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

    pub(super) fn fraction(&mut self, t: &Tbl<'_, '_>, key: &str, hint: &str) -> Option<f64> {
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

    pub(super) fn enumerated<T: Copy>(
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
    pub(super) fn duration(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
        positive: bool,
    ) -> Option<(Duration, Span)> {
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
    pub(super) fn strings<'t>(
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
    pub(super) fn interpolate(&mut self, raw: &str, span: &Span, path: &str) -> (String, bool) {
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
    pub(super) fn interpolated(
        &mut self,
        t: &Tbl<'_, '_>,
        key: &str,
    ) -> Option<(String, bool, Span)> {
        let s = self.string(t, key)?;
        let (value, from_env) = self.interpolate(s.value, &s.span, &t.child(key));
        Some((value, from_env, s.span))
    }

    /// A TOML value as JSON, with every string interpolated.
    pub(super) fn json_of(&mut self, value: &Val<'_>, path: &str) -> Json {
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
}
