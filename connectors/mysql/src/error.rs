//! Server errors: their numbers, the kinds the host retries by, whether a connection
//! survived them, and keeping the password out of their messages.

use lockstep_plugin_sdk::api::ErrorKind;
use sqlx::mysql::MySqlDatabaseError;

/// Replaces every occurrence of `secret` in `message`. Secrets shorter than four
/// characters are left alone: replacing them would garble messages without hiding much.
pub(crate) fn redact(message: &str, secret: Option<&str>) -> String {
    match secret {
        Some(s) if s.chars().count() >= 4 => message.replace(s, "***"),
        _ => message.to_owned(),
    }
}

/// The MySQL error number of a server error.
pub(crate) fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// Server errors after which retrying later can succeed.
const TRANSIENT: &[u16] = &[
    1040, // too many connections
    1053, // server shutdown in progress
    1158, 1159, 1160, 1161, // network read/write errors and timeouts
    1205, // lock wait timeout
    1213, // deadlock
    1317, // query execution was interrupted
    1927, // MariaDB: connection was killed
    1969, // MariaDB: max_statement_time exceeded
    2002, 2003, 2006, 2013, 2055, // client-side connection errors
    3024, // MySQL: max_execution_time exceeded
    4031, // MySQL: disconnected by the server
];
const AUTH: &[u16] = &[1044, 1045, 1142, 1143, 1227, 1251, 1698, 1862, 3118];
const CONFIG: &[u16] = &[1049];
const SCHEMA: &[u16] = &[
    1005, 1048, 1054, 1060, 1062, 1071, 1074, 1091, 1101, 1113, 1117, 1118, 1146, 1166, 1170, 1215,
    1264, 1265, 1292, 1364, 1366, 1406, 1690, 3140, 3780, 3819, 4025,
];

/// The error kind the host needs to decide whether to retry.
pub(crate) fn classify(e: &sqlx::Error) -> ErrorKind {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::PoolTimedOut => {
            ErrorKind::TRANSIENT
        }
        sqlx::Error::Protocol(m) if protocol_says_disconnected(m) => ErrorKind::TRANSIENT,
        sqlx::Error::Configuration(_) | sqlx::Error::Tls(_) => ErrorKind::CONFIG,
        sqlx::Error::Database(_) => match error_number(e) {
            Some(n) if TRANSIENT.contains(&n) => ErrorKind::TRANSIENT,
            Some(n) if AUTH.contains(&n) => ErrorKind::AUTH,
            Some(n) if CONFIG.contains(&n) => ErrorKind::CONFIG,
            Some(n) if SCHEMA.contains(&n) => ErrorKind::SCHEMA,
            _ => ErrorKind::INTERNAL,
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::Encode(_) => {
            ErrorKind::SCHEMA
        }
        _ => ErrorKind::INTERNAL,
    }
}

fn protocol_says_disconnected(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["eof", "closed", "reset", "broken pipe", "connection"]
        .iter()
        .any(|w| m.contains(w))
}

/// Whether the connection is unusable after `e` and must be replaced.
pub(crate) fn connection_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(_) => matches!(
            error_number(e),
            Some(1053 | 1927 | 2002 | 2003 | 2006 | 2013 | 2055 | 4031)
        ),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(redact("bad hunter22!", Some("hunter22")), "bad ***!");
        assert_eq!(redact("bad abc!", Some("abc")), "bad abc!");
    }
}
