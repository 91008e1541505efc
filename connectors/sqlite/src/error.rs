//! Mapping SQLite and sqlx errors to connector error kinds.

use lockstep_plugin_sdk::ConnectorError;

/// SQLite's primary result codes that matter here (the low byte of extended codes).
const SQLITE_ERROR: i64 = 1;
const SQLITE_PERM: i64 = 3;
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_CORRUPT: i64 = 11;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;
const SQLITE_PROTOCOL: i64 = 15;
const SQLITE_TOOBIG: i64 = 18;
const SQLITE_CONSTRAINT: i64 = 19;
const SQLITE_MISMATCH: i64 = 20;
const SQLITE_RANGE: i64 = 25;
const SQLITE_AUTH: i64 = 23;
const SQLITE_NOTADB: i64 = 26;

/// The primary SQLite result code of a database error, if `e` is one.
pub(crate) fn primary_code(e: &sqlx::Error) -> Option<i64> {
    let code = e.as_database_error()?.code()?;
    code.parse::<i64>().ok().map(|c| c & 0xff)
}

/// Whether SQLite refused a row for what it holds (a constraint, a type mismatch in a STRICT
/// table, a value too big): the row is rejected, the write goes on.
pub(crate) fn is_data_error(e: &sqlx::Error) -> bool {
    matches!(
        primary_code(e),
        Some(SQLITE_CONSTRAINT | SQLITE_MISMATCH | SQLITE_TOOBIG | SQLITE_RANGE)
    )
}

/// The message of a database error without sqlx's decoration.
pub(crate) fn db_message(e: &sqlx::Error) -> String {
    match e.as_database_error() {
        Some(d) => d.message().to_owned(),
        None => e.to_string(),
    }
}

/// A closure mapping an sqlx error to a connector error of the right kind, prefixed with what
/// was being done.
pub(crate) fn db_error(what: impl std::fmt::Display) -> impl FnOnce(sqlx::Error) -> ConnectorError {
    move |e| classify(&e).context(what)
}

/// The connector error for an sqlx error.
pub(crate) fn classify(e: &sqlx::Error) -> ConnectorError {
    let message = db_message(e);
    match primary_code(e) {
        Some(SQLITE_BUSY | SQLITE_LOCKED | SQLITE_PROTOCOL) => ConnectorError::transient(format!(
            "{message} (another process holds a lock on the database for longer than the \
             5 s busy timeout; the run can be retried)"
        )),
        Some(SQLITE_IOERR | SQLITE_FULL) => ConnectorError::transient(message),
        Some(SQLITE_CANTOPEN | SQLITE_NOTADB | SQLITE_READONLY | SQLITE_PERM) => {
            ConnectorError::config(message)
        }
        Some(SQLITE_AUTH) => ConnectorError::auth(message),
        Some(SQLITE_CORRUPT) => ConnectorError::internal(format!(
            "{message} (the database file is damaged; restore it or run `.recover` in the \
             sqlite3 shell)"
        )),
        Some(SQLITE_ERROR | SQLITE_CONSTRAINT | SQLITE_MISMATCH | SQLITE_TOOBIG | SQLITE_RANGE) => {
            ConnectorError::schema(message)
        }
        Some(_) => ConnectorError::internal(message),
        None => match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => {
                ConnectorError::transient(message)
            }
            sqlx::Error::Configuration(_) => ConnectorError::config(message),
            _ => ConnectorError::internal(message),
        },
    }
}
