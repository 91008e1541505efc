//! Connections: the server a config names, session setup, turning server errors into
//! connector errors that name the server, how a connection ends (`close`), and the one
//! connection a source keeps for its reads by keys (`Db::take_spare`, `Db::keep_spare`).

use std::fmt::Display;
use std::str::FromStr;

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::serde_json::json;
use lockstep_plugin_sdk::{tracing, ConnectorError, Result};
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use crate::config::url_password;
use crate::error::{classify, connection_lost, error_number, redact};
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
    /// The connection of the last read by keys that ended whole, with its server id, kept
    /// for the next one: a two-way run reads back every chunk it writes, and each new
    /// connection costs a handshake and three statements before the read's first query.
    spare: std::sync::Mutex<Option<(MySqlConnection, u64)>>,
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
            spare: std::sync::Mutex::new(None),
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

/// How long ending a connection as the protocol asks may take before it is simply dropped.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Db {
    /// The kept connection of an earlier read by keys, if there is one (see `spare`).
    pub fn take_spare(&self) -> Option<(MySqlConnection, u64)> {
        self.spare.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Keeps `conn` for the next read by keys, or closes it when one is kept already.
    pub async fn keep_spare(&self, conn: MySqlConnection, id: u64) {
        let refused = {
            let mut spare = self.spare.lock().unwrap_or_else(|p| p.into_inner());
            if spare.is_none() {
                *spare = Some((conn, id));
                None
            } else {
                Some(conn)
            }
        };
        if let Some(conn) = refused {
            close(conn).await;
        }
    }

    /// Closes the kept connection, if any (when the source closes).
    pub async fn close_spare(&self) {
        if let Some((conn, _)) = self.take_spare() {
            close(conn).await;
        }
    }
}

/// Ends `conn` as the protocol asks (`COM_QUIT`). A connection dropped instead is counted
/// by the server in `Aborted_clients` and, at the default `log_warnings`, logged as "Aborted
/// connection ... (Got an error reading communication packets)": once for every read and
/// write, which looks like a network fault to whoever watches the server. A connection that
/// does not end within `CLOSE_WAIT` is dropped.
pub async fn close(conn: MySqlConnection) {
    let _ = tokio::time::timeout(CLOSE_WAIT, conn.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_parse() {
        let m = Flavor::parse("10.11.6-MariaDB-0+deb12u1");
        assert!(m.mariadb && m.has_uuid_type());
        let my = Flavor::parse("8.0.36");
        assert!(!my.mariadb && !my.has_uuid_type());
        assert_eq!((my.major, my.minor), (8, 0));
    }

    #[test]
    fn urls_without_a_database_or_with_a_bad_scheme_are_config_errors() {
        let config = |url: &str| Config {
            url: url.into(),
            password_env: None,
            read: lockstep_sql_kit::ReadConfig::default(),
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
