//! Connections: config parsing, session setup, identifier quoting and error classification.

use std::fmt::Display;
use std::str::FromStr;

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::serde_json::json;
use lockstep_plugin_sdk::{tracing, ConnectorError, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection, MySqlDatabaseError};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use crate::Config;

/// The session settings every connection gets. Strict mode turns values that do not fit
/// (out of range, too long, invalid dates) into errors instead of silent truncation, and
/// a UTC session time zone makes TIMESTAMP columns read and write in UTC.
const SESSION_SETUP: &str = "SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,\
NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', time_zone = '+00:00'";

/// Which server speaks at the other end, for the few places where MySQL and MariaDB differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flavor {
    pub mariadb: bool,
    pub major: u32,
    pub minor: u32,
}

impl Flavor {
    /// Parses `SELECT VERSION()` output such as `10.11.6-MariaDB-0+deb12u1` or `8.0.36`.
    pub fn parse(version: &str) -> Self {
        let mut numbers = version
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>().unwrap_or(0));
        Flavor {
            mariadb: version.to_ascii_lowercase().contains("mariadb"),
            major: numbers.next().unwrap_or(0),
            minor: numbers.next().unwrap_or(0),
        }
    }

    /// Whether the server has MariaDB's native UUID type (10.7 and later).
    pub fn has_uuid_type(&self) -> bool {
        self.mariadb && (self.major, self.minor) >= (10, 7)
    }
}

/// Where and how to connect. Holds the password only inside the sqlx options and, for
/// redaction, in `secret`; neither is ever printed.
pub(crate) struct Db {
    options: MySqlConnectOptions,
    secret: Option<String>,
    /// `host:port/database`, safe to show.
    pub location: String,
}

impl Db {
    pub fn from_config(config: &Config) -> Result<Self> {
        let raw = config.url.trim();
        let rest = raw
            .strip_prefix("mysql://")
            .or_else(|| raw.strip_prefix("mariadb://"))
            .ok_or_else(|| {
                ConnectorError::config(
                    "`url` must start with mysql:// or mariadb:// \
                     (mysql://user@host:3306/database?ssl-mode=required)",
                )
            })?;
        let url = format!("mysql://{rest}");
        let mut url_secret = None;
        let mut options = MySqlConnectOptions::from_str(&url).map_err(|e| {
            ConnectorError::config(redact(
                &format!("`url` is not a valid MySQL URL: {e}"),
                url_password(rest).as_deref(),
            ))
        })?;
        if let Some(p) = url_password(rest) {
            url_secret = Some(p);
        }
        let database = options
            .get_database()
            .map(str::to_owned)
            .filter(|d| !d.is_empty())
            .ok_or_else(|| {
                ConnectorError::config(
                    "`url` names no database: add it as the path (mysql://host:3306/mydb)",
                )
            })?;
        let mut secret = url_secret;
        if let Some(var) = &config.password_env {
            let password = std::env::var(var).map_err(|_| {
                ConnectorError::config(format!(
                    "`password_env` names the environment variable `{var}`, which is not set"
                ))
            })?;
            // An empty variable means "no password" (sqlx would send an empty one).
            if !password.is_empty() {
                options = options.password(&password);
                secret = Some(password);
            }
        }
        let location = format!("{}:{}/{}", options.get_host(), options.get_port(), database);
        let options = options
            .pipes_as_concat(false)
            .timezone(Some("+00:00".to_owned()))
            .charset("utf8mb4")
            .disable_statement_logging();
        Ok(Db {
            options,
            secret,
            location,
        })
    }

    /// Opens a connection with the session settings applied.
    pub async fn connect(&self) -> Result<(MySqlConnection, Flavor)> {
        let what = format!("connecting to MySQL at {}", self.location);
        let mut conn = MySqlConnection::connect_with(&self.options)
            .await
            .map_err(|e| self.error(e, &what))?;
        conn.execute(SESSION_SETUP)
            .await
            .map_err(|e| self.error(e, &what))?;
        let version: String = sqlx::query("SELECT VERSION()")
            .fetch_one(&mut conn)
            .await
            .and_then(|row| row.try_get_unchecked::<String, _>(0))
            .map_err(|e| self.error(e, &what))?;
        let flavor = Flavor::parse(&version);
        tracing::debug!(location = %self.location, %version, "connected");
        Ok((conn, flavor))
    }

    /// A connector error for a database error, with the kind the host needs and no secret.
    pub fn error(&self, e: sqlx::Error, what: impl Display) -> ConnectorError {
        let number = error_number(&e);
        let kind = classify(&e);
        let text = match &e {
            sqlx::Error::Database(d) => format!(
                "MySQL error {} ({}): {}",
                number.unwrap_or(0),
                d.code().unwrap_or(std::borrow::Cow::Borrowed("HY000")),
                d.message()
            ),
            other => other.to_string(),
        };
        let hint = match (kind, number) {
            (_, Some(1049)) => " (check the database name in `url`)",
            (ErrorKind::AUTH, _) => " (check the user and password of the connection)",
            (_, _) if matches!(e, sqlx::Error::Tls(_)) => {
                " (check `ssl-mode` in `url` and the server's TLS setup)"
            }
            (ErrorKind::TRANSIENT, _) if connection_lost(&e) => {
                " (the connection failed or was closed by the server; retrying can succeed)"
            }
            _ => "",
        };
        let message = redact(&format!("{what}: {text}{hint}"), self.secret.as_deref());
        let error = ConnectorError::new(kind, message);
        match number {
            Some(n) => error.with_details(json!({ "mysql_error": n })),
            None => error,
        }
    }
}

/// The password of a `user:password@host` URL body, percent-decoded, if any.
fn url_password(rest: &str) -> Option<String> {
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    let decoded = percent_decode(password);
    (!decoded.is_empty()).then_some(decoded)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

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

/// A quoted identifier: backticks around it, embedded backticks doubled.
pub(crate) fn quote(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_and_backticks_doubled() {
        assert_eq!(quote("a`b c"), "`a``b c`");
        assert_eq!(quote("select"), "`select`");
    }

    #[test]
    fn flavors_parse() {
        let m = Flavor::parse("10.11.6-MariaDB-0+deb12u1");
        assert!(m.mariadb && m.has_uuid_type());
        let my = Flavor::parse("8.0.36");
        assert!(!my.mariadb && !my.has_uuid_type());
        assert_eq!((my.major, my.minor), (8, 0));
    }

    #[test]
    fn passwords_are_found_and_redacted() {
        assert_eq!(url_password("u:p%40ss1@h:1/db").as_deref(), Some("p@ss1"));
        assert_eq!(url_password("u@h/db"), None);
        assert_eq!(redact("bad hunter22!", Some("hunter22")), "bad ***!");
    }

    #[test]
    fn urls_without_a_database_or_with_a_bad_scheme_are_config_errors() {
        let config = |url: &str| Config {
            url: url.into(),
            password_env: None,
            batch_size: None,
            lookback: None,
        };
        let e = Db::from_config(&config("mysql://root:sekret99@h:3306"))
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(!e.message.contains("sekret99"), "{}", e.message);
        let e = Db::from_config(&config("postgres://h/db")).err().unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        let e = Db::from_config(&config("mysql://root:sekret99@h/db?ssl-mode=bogus"))
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(!e.message.contains("sekret99"), "{}", e.message);
        let db = Db::from_config(&config("mariadb://root:sekret99@h:3307/db")).unwrap();
        assert_eq!(db.location, "h:3307/db");
    }
}
