//! Diagnostics: one [`ConfigError`] per problem, each with the file, a location, what is wrong
//! and a hint, and [`ConfigErrors`] for the whole list a load reports at once.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme, LabeledSpan, NamedSource};

use crate::secrets::Secrets;

/// A place in the config file.
///
/// `line` and `column` are 1-based, and the column counts characters, not bytes. `offset` and
/// `len` are the byte range of the item in the file; diagnostics use them to underline it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    pub line: usize,
    pub column: usize,
    pub offset: usize,
    pub len: usize,
}

impl Location {
    /// The location of byte range `span` in `text`.
    ///
    /// A range that runs past the end of `text`, or that starts inside a character, is clamped.
    pub fn from_span(text: &str, span: Range<usize>) -> Self {
        let mut start = span.start.min(text.len());
        while !text.is_char_boundary(start) {
            start -= 1;
        }
        let end = span.end.clamp(start, text.len());
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_start..start].chars().count() + 1;
        Location {
            line,
            column,
            offset: start,
            len: end - start,
        }
    }

    /// The byte range this location covers.
    pub fn span(&self) -> Range<usize> {
        self.offset..self.offset + self.len
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// What kind of problem a [`ConfigError`] reports. Each kind has a stable code
/// (`lockstep::config::<name>`), shown by the fancy renderer and listed in docs/config.md.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The config file could not be read.
    Io,
    /// The file is not valid TOML.
    Syntax,
    /// A key that the format does not have (often a typo).
    UnknownKey,
    /// A value of the wrong TOML type.
    WrongType,
    /// A value outside a fixed set of accepted values.
    InvalidValue,
    /// A required key is absent.
    MissingKey,
    /// A connection or sync name with characters other than letters, digits, `_` and `-`.
    InvalidName,
    /// A sync names a connection that is not defined.
    UnknownConnection,
    /// A sync endpoint that is not `"connection.stream"` or `{ connection, stream }`.
    InvalidEndpoint,
    /// A sync whose source and destination are the same stream.
    SameEndpoint,
    /// An incremental or mirror sync without a cursor.
    MissingCursor,
    /// A field named twice where names must be unique.
    DuplicateField,
    /// An empty `key` list.
    EmptyKey,
    /// A `key` field that the field mapping does not produce.
    KeyNotMapped,
    /// A number or duration outside its accepted range.
    OutOfRange,
    /// A schedule with both or neither of `cron` and `every`.
    ScheduleTrigger,
    /// A cron expression that does not parse.
    InvalidCron,
    /// A duration that does not parse.
    InvalidDuration,
    /// A time zone name that is not in the IANA database.
    UnknownTimezone,
    /// A URL with an unsupported scheme.
    InvalidUrl,
    /// A socket or email address that does not parse.
    InvalidAddress,
    /// `${VAR}` names an environment variable that is not set.
    UnsetVariable,
    /// A malformed `${...}` interpolation.
    InvalidInterpolation,
    /// A field-mapping expression that does not parse, calls an unknown function or passes
    /// wrong arguments.
    InvalidExpression,
    /// Any other problem, for diagnostics that later stages (the CLI) add in the same format.
    Other,
}

impl ErrorKind {
    /// The stable diagnostic code, e.g. `lockstep::config::unknown-key`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Io => "lockstep::config::io",
            ErrorKind::Syntax => "lockstep::config::syntax",
            ErrorKind::UnknownKey => "lockstep::config::unknown-key",
            ErrorKind::WrongType => "lockstep::config::wrong-type",
            ErrorKind::InvalidValue => "lockstep::config::invalid-value",
            ErrorKind::MissingKey => "lockstep::config::missing-key",
            ErrorKind::InvalidName => "lockstep::config::invalid-name",
            ErrorKind::UnknownConnection => "lockstep::config::unknown-connection",
            ErrorKind::InvalidEndpoint => "lockstep::config::invalid-endpoint",
            ErrorKind::SameEndpoint => "lockstep::config::same-endpoint",
            ErrorKind::MissingCursor => "lockstep::config::missing-cursor",
            ErrorKind::DuplicateField => "lockstep::config::duplicate-field",
            ErrorKind::EmptyKey => "lockstep::config::empty-key",
            ErrorKind::KeyNotMapped => "lockstep::config::key-not-mapped",
            ErrorKind::OutOfRange => "lockstep::config::out-of-range",
            ErrorKind::ScheduleTrigger => "lockstep::config::schedule-trigger",
            ErrorKind::InvalidCron => "lockstep::config::invalid-cron",
            ErrorKind::InvalidDuration => "lockstep::config::invalid-duration",
            ErrorKind::UnknownTimezone => "lockstep::config::unknown-timezone",
            ErrorKind::InvalidUrl => "lockstep::config::invalid-url",
            ErrorKind::InvalidAddress => "lockstep::config::invalid-address",
            ErrorKind::UnsetVariable => "lockstep::config::unset-variable",
            ErrorKind::InvalidInterpolation => "lockstep::config::invalid-interpolation",
            ErrorKind::InvalidExpression => "lockstep::config::invalid-expression",
            ErrorKind::Other => "lockstep::config::error",
        }
    }
}

/// The text of a config file as diagnostics show it: its name and contents.
pub(crate) type SourceFile = Arc<NamedSource<String>>;

pub(crate) fn source_file(path: &Path, text: &str) -> SourceFile {
    Arc::new(NamedSource::new(path.display().to_string(), text.to_owned()).with_language("toml"))
}

/// One problem in a config file: where, what, and what to do about it.
///
/// `Display` prints the message alone (as miette expects); [`ConfigError::render_plain`] prints
/// the `path:line:col: error: message` block with its hint, and the [`Diagnostic`] impl gives
/// miette's fancy rendering with the source snippet and a labelled span.
///
/// Messages never contain a value that came from the environment.
#[derive(Clone, thiserror::Error)]
#[error("{message}")]
pub struct ConfigError {
    kind: ErrorKind,
    message: String,
    hint: String,
    label: String,
    path: PathBuf,
    location: Option<Location>,
    source_file: Option<SourceFile>,
}

impl ConfigError {
    /// A diagnostic about the file at `path`, at `location` if the problem has one.
    ///
    /// `hint` says what to do; an empty hint is not printed. The kind is [`ErrorKind::Other`]
    /// until [`ConfigError::with_kind`] sets another. Add the file's text with
    /// [`ConfigError::with_source_text`] (or build the error with [`crate::Config::error_at`])
    /// to get a source snippet in the fancy rendering.
    pub fn new(
        path: impl Into<PathBuf>,
        location: Option<Location>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ConfigError {
            kind: ErrorKind::Other,
            message: message.into(),
            hint: hint.into(),
            label: String::new(),
            path: path.into(),
            location,
            source_file: None,
        }
    }

    /// Sets the kind (and so the diagnostic code).
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.kind = kind;
        self
    }

    /// Sets the short text written under the underlined span in the fancy rendering.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Attaches the file's text so the fancy rendering can show the snippet.
    pub fn with_source_text(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.source_file = Some(source_file(&self.path, &text));
        self
    }

    pub(crate) fn with_source_file(mut self, file: SourceFile) -> Self {
        self.source_file = Some(file);
        self
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// What to do about it; empty when there is nothing useful to say.
    pub fn hint(&self) -> &str {
        &self.hint
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn location(&self) -> Option<Location> {
        self.location
    }

    /// The plain-text block: `path:line:col: error: message`, then `  hint: ...` when there is
    /// a hint. No trailing newline.
    pub fn render_plain(&self) -> String {
        let mut out = match self.location {
            Some(at) => format!("{}:{}:{}: error: ", self.path.display(), at.line, at.column),
            None => format!("{}: error: ", self.path.display()),
        };
        out.push_str(&self.message);
        if !self.hint.is_empty() {
            out.push_str("\n  hint: ");
            out.push_str(&self.hint);
        }
        out
    }

    /// Replaces every secret in the message, hint and label. A safety net: messages are written
    /// not to quote values from the environment in the first place.
    pub(crate) fn redact(&mut self, secrets: &Secrets) {
        if secrets.is_empty() {
            return;
        }
        self.message = secrets.redact(&self.message);
        self.hint = secrets.redact(&self.hint);
        self.label = secrets.redact(&self.label);
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The file's text is left out: it is long, and the snippet belongs to the fancy rendering.
        f.debug_struct("ConfigError")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("location", &self.location)
            .field("message", &self.message)
            .field("hint", &self.hint)
            .finish()
    }
}

impl Diagnostic for ConfigError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.kind.code()))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        if self.hint.is_empty() {
            None
        } else {
            Some(Box::new(&self.hint))
        }
    }

    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        match (&self.source_file, self.location) {
            (Some(file), Some(_)) => Some(&**file),
            _ => None,
        }
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        self.source_file.as_ref()?;
        let at = self.location?;
        let label = (!self.label.is_empty()).then(|| self.label.clone());
        Some(Box::new(std::iter::once(
            LabeledSpan::new_primary_with_span(label, (at.offset, at.len)),
        )))
    }
}

/// Renders diagnostics as plain text, one block per error (see [`ConfigError::render_plain`]),
/// separated by newlines, with no trailing newline.
pub fn render_plain(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ConfigError::render_plain)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every problem found in one config file. Never empty when returned by [`crate::load`] or
/// [`crate::parse`].
///
/// `Display` prints every error as plain text (see [`render_plain`]); the [`Diagnostic`] impl
/// returns them as related diagnostics. For miette's fancy output of the whole list, use
/// [`ConfigErrors::render_fancy`] (a `miette::Report` of `ConfigErrors` would print the plain
/// text as its heading).
#[derive(Clone, Debug)]
pub struct ConfigErrors {
    path: PathBuf,
    errors: Vec<ConfigError>,
}

impl ConfigErrors {
    pub fn new(path: impl Into<PathBuf>, errors: Vec<ConfigError>) -> Self {
        ConfigErrors {
            path: path.into(),
            errors,
        }
    }

    /// The config file the errors are about.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn errors(&self) -> &[ConfigError] {
        &self.errors
    }

    pub fn into_errors(self) -> Vec<ConfigError> {
        self.errors
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.errors.iter()
    }

    /// Adds a diagnostic, e.g. one found by a later stage.
    pub fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// miette's graphical rendering of every error, each with its snippet and hint, then a
    /// one-line summary. `color` picks a colored or a plain unicode theme.
    pub fn render_fancy(&self, color: bool) -> String {
        let theme = if color {
            GraphicalTheme::unicode()
        } else {
            GraphicalTheme::unicode_nocolor()
        };
        let handler = GraphicalReportHandler::new_themed(theme);
        let mut out = String::new();
        for error in &self.errors {
            // Writing to a String cannot fail.
            let _ = handler.render_report(&mut out, error);
            out.push('\n');
        }
        out.push_str(&self.summary());
        out
    }

    /// `N errors in <path>`.
    pub fn summary(&self) -> String {
        let n = self.errors.len();
        format!(
            "{n} error{} in {}",
            if n == 1 { "" } else { "s" },
            self.path.display()
        )
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render_plain(&self.errors))
    }
}

impl std::error::Error for ConfigErrors {}

impl Diagnostic for ConfigErrors {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new("lockstep::config::invalid"))
    }

    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        Some(Box::new(self.errors.iter().map(|e| e as &dyn Diagnostic)))
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.iter()
    }
}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.errors.into_iter()
    }
}
