//! The connection's config, and opening the database file it names.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_plugin_sdk::{ConnectorError, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteSynchronous};
use sqlx::ConnectOptions;

use crate::error::db_error;

/// The rows per read batch when neither the request nor the config says.
pub(crate) const DEFAULT_BATCH_SIZE: usize = 10_000;

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite connection
///
/// The `config` table of a SQLite connection: `path` or `url` names the database file.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("oneOf" = [{ "required": ["path"] }, { "required": ["url"] }]))]
pub struct SqliteConfig {
    /// The database file. A relative path resolves against the current directory, which the
    /// CLI sets to the config file's directory.
    #[serde(default)]
    pub path: Option<String>,
    /// The database as a URL instead of `path`: `sqlite://data.db` (relative) or
    /// `sqlite:///var/data/data.db` (absolute). No query parameters.
    #[serde(default)]
    pub url: Option<String>,
    /// Destinations only: create the database file when it does not exist (default true). A
    /// source always requires an existing file.
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub create_if_missing: Option<bool>,
    /// The largest number of rows per read batch (a smaller batch size in the read request
    /// wins) and per write statement.
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = DEFAULT_BATCH_SIZE))]
    pub batch_size: Option<usize>,
}

/// The role a connection is opened for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Source,
    Destination,
}

impl SqliteConfig {
    /// A config for the file at `path`, with defaults elsewhere.
    pub fn for_path(path: impl Into<String>) -> Self {
        Self {
            path: Some(path.into()),
            url: None,
            create_if_missing: None,
            batch_size: None,
        }
    }

    /// The database file the config names, as given (relative or absolute).
    pub(crate) fn file(&self) -> Result<PathBuf> {
        let text = match (&self.path, &self.url) {
            (Some(_), Some(_)) => {
                return Err(ConnectorError::config(
                    "the SQLite config sets both `path` and `url`; keep one of them",
                ))
            }
            (None, None) => return Err(ConnectorError::config(
                "the SQLite config needs `path` (the database file, e.g. `path = \"data.db\"`) \
                     or `url` (e.g. `url = \"sqlite://data.db\"`)",
            )),
            (Some(path), None) => path.clone(),
            (None, Some(url)) => path_from_url(url)?,
        };
        if text.trim().is_empty() {
            return Err(ConnectorError::config("the SQLite `path` is empty"));
        }
        if text == ":memory:" || text.starts_with("file::memory:") {
            return Err(ConnectorError::config(
                "an in-memory SQLite database lives only as long as one connection; give a file \
                 path instead",
            ));
        }
        // SQLite reads a name starting with `file:` as a URI; `./` keeps it a plain path.
        if text.starts_with("file:") {
            return Ok(Path::new(".").join(text));
        }
        Ok(PathBuf::from(text))
    }

    /// The configured batch size, refusing zero.
    pub(crate) fn batch_size(&self) -> Result<Option<usize>> {
        match self.batch_size {
            Some(0) => Err(ConnectorError::config(
                "the SQLite `batch_size` must be at least 1",
            )),
            other => Ok(other),
        }
    }

    /// Opens the database for `role`. A source opens read-only and never creates the file; a
    /// destination opens in WAL mode with `synchronous = FULL`, creating the file unless
    /// `create_if_missing = false`.
    pub(crate) async fn connect(&self, role: Role) -> Result<SqliteConnection> {
        let file = self.file()?;
        self.batch_size()?;
        let shown = display_path(&file);
        let create = role == Role::Destination && self.create_if_missing.unwrap_or(true);
        if file.is_dir() {
            return Err(ConnectorError::config(format!(
                "the SQLite path {shown} is a directory; name a database file"
            )));
        }
        if !file.exists() && !create {
            let hint = match role {
                Role::Source => "a source never creates its database; check `path`",
                Role::Destination => "set `create_if_missing = true` to create it, or check `path`",
            };
            return Err(ConnectorError::config(format!(
                "the SQLite database file {shown} does not exist ({hint})"
            ))
            .with_details(json!({ "path": file.to_string_lossy() })));
        }
        let mut options = SqliteConnectOptions::new()
            .filename(&file)
            .busy_timeout(BUSY_TIMEOUT)
            .disable_statement_logging();
        options = match role {
            Role::Source => options.read_only(true),
            Role::Destination => options
                .create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full),
        };
        let mut conn = options
            .connect()
            .await
            .map_err(db_error(format!("opening the SQLite database {shown}")))?;
        // Reading the schema proves the file is a database (SQLite opens lazily).
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&mut conn)
            .await
            .map_err(db_error(format!("opening the SQLite database {shown}")))?;
        Ok(conn)
    }
}

/// `sqlite://a.db`, `sqlite:///abs/a.db` and `sqlite:a.db` name a file; other forms are
/// config errors.
fn path_from_url(url: &str) -> Result<String> {
    let url = url.trim();
    let rest = url.strip_prefix("sqlite:").ok_or_else(|| {
        ConnectorError::config(format!(
            "the SQLite `url` `{}` does not start with `sqlite:`; use `sqlite://path/to/file.db` \
             or the `path` key",
            redact(url)
        ))
    })?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    if rest.contains('?') {
        return Err(ConnectorError::config(format!(
            "the SQLite `url` `{}` has query parameters, which the connector does not take (it \
             sets WAL mode, synchronous = FULL and a busy timeout itself)",
            redact(url)
        )));
    }
    if rest.is_empty() {
        return Err(ConnectorError::config(
            "the SQLite `url` names no file; use `sqlite://path/to/file.db`",
        ));
    }
    Ok(rest.to_owned())
}

/// `url` without userinfo, fit for messages.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A path for messages: as given, plus the absolute path when it was relative.
fn display_path(path: &Path) -> String {
    if path.is_absolute() {
        return format!("`{}`", path.display());
    }
    match std::env::current_dir() {
        Ok(dir) => format!(
            "`{}` (resolved to `{}`)",
            path.display(),
            dir.join(path).display()
        ),
        Err(_) => format!("`{}`", path.display()),
    }
}
