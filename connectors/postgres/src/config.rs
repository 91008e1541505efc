//! The connection's config, how it becomes sqlx connect options, how secrets are kept out of
//! messages, and how a connection ends (`close`).

use std::str::FromStr;
use std::time::Duration;

use lockstep_plugin_sdk::{ConnectorError, Result};
use lockstep_sql_kit::{describe_read_config, ReadConfig};
use schemars::{JsonSchema, Schema};
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::error::map_sqlx;

pub use lockstep_sql_kit::DEFAULT_BATCH_SIZE;

/// The `config` table of a PostgreSQL connection.
#[derive(Deserialize, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(transform = describe_read_settings)]
pub struct Config {
    /// Connection URL:
    /// `postgres://user[:password]@host:5432/db?sslmode=disable|prefer|require|verify-ca|verify-full`.
    /// TLS is configured by `sslmode` (and `sslrootcert`). The password is never logged.
    pub url: String,
    /// The schema whose tables (read-write) and views (read-only) are the streams.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// `batch_size` and `lookback`, as the SQL connectors share them.
    #[serde(flatten)]
    pub read: ReadConfig,
    /// Name of an environment variable holding the password, for URLs without one.
    #[serde(default)]
    pub password_env: Option<String>,
    /// How many parallel workers the server may give one key-set summary (a mirror sync's
    /// reconciliation, a two-way run's delete check): 0, the default, summarizes in one
    /// process. The summary runs beside the sync's own reads (and a two-way run's other
    /// side's summary); on a server with few cores, workers take the cores those reads wait
    /// for. On a server with cores to spare, 2 to 4 shorten the summary of a large table.
    #[serde(default)]
    pub key_summary_workers: u32,
}

/// PostgreSQL's own limit of `max_parallel_workers_per_gather`.
const MAX_WORKERS_PER_GATHER: u32 = 1024;

fn default_schema() -> String {
    "public".to_owned()
}

/// What `batch_size` and `lookback` mean here, in the config schema.
fn describe_read_settings(schema: &mut Schema) {
    describe_read_config(
        schema,
        "Rows per read batch (one `COPY ... LIMIT n` per batch). The smaller of this and the\n\
         host's request wins; writes take whatever batch they are given.",
        "A PostgreSQL interval (`\"5m\"`, `\"1 hour\"`). Incremental reads on a date or timestamp\n\
         cursor restart at (checkpoint cursor - lookback) to catch late commits; upserts make\n\
         the overlap harmless.",
    );
}

impl std::fmt::Debug for Config {
    /// Never prints the URL: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("url", &redact_url(&self.url))
            .field("schema", &self.schema)
            .field("batch_size", &self.read.batch_size)
            .field("lookback", &self.read.lookback)
            .field("password_env", &self.password_env)
            .field("key_summary_workers", &self.key_summary_workers)
            .finish()
    }
}

/// What a connection needs after the config was checked.
#[derive(Clone)]
pub struct Settings {
    pub options: PgConnectOptions,
    pub schema: String,
    pub batch_size: Option<usize>,
    /// The lookback as PostgreSQL interval text, when it is not zero.
    pub lookback: Option<String>,
    /// The URL without user info, for messages.
    pub display_url: String,
    /// Parallel workers a key-set summary may use (`key_summary_workers`).
    pub key_summary_workers: u32,
    /// Secrets to scrub from any message that could echo them.
    secrets: Vec<String>,
}

impl Settings {
    /// Checks `config` and builds connect options. Nothing is contacted yet.
    pub fn from_config(config: Config) -> Result<Self> {
        let display_url = redact_url(&config.url);
        let mut secrets = Vec::new();
        if let Some(password) = url_password(&config.url) {
            secrets.push(password);
        }
        if !(config.url.starts_with("postgres://") || config.url.starts_with("postgresql://")) {
            return Err(ConnectorError::config(format!(
                "`url` ({display_url}) must start with postgres:// or postgresql://"
            )));
        }
        let mut options = PgConnectOptions::from_str(&config.url).map_err(|e| {
            ConnectorError::config(scrub(
                &format!("`url` ({display_url}) is not a valid PostgreSQL URL: {e}"),
                &secrets,
            ))
        })?;
        if let Some(var) = &config.password_env {
            let password = std::env::var(var).map_err(|_| {
                ConnectorError::config(format!(
                    "`password_env` names the environment variable `{var}`, which is not set \
                     (or not valid UTF-8)"
                ))
            })?;
            secrets.push(password.clone());
            options = options.password(&password);
        }
        if config.schema.is_empty() {
            return Err(ConnectorError::config("`schema` must not be empty"));
        }
        if config.key_summary_workers > MAX_WORKERS_PER_GATHER {
            return Err(ConnectorError::config(format!(
                "`key_summary_workers` = {} is more than PostgreSQL allows \
                 (`max_parallel_workers_per_gather` goes up to {MAX_WORKERS_PER_GATHER}); \
                 give 0 to summarize in one process, or a few workers",
                config.key_summary_workers
            )));
        }
        if config.read.batch_size == Some(0) {
            return Err(ConnectorError::config("`batch_size` must be at least 1"));
        }
        let lookback = config
            .read
            .lookback
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty());
        // Sessions run in UTC with ISO dates so that text forms of values (checkpoints,
        // server-side casts) never depend on the server's defaults.
        options = options
            .application_name("lockstep-postgres")
            .options([
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO"),
                ("IntervalStyle", "postgres"),
            ])
            .disable_statement_logging();
        Ok(Settings {
            options,
            schema: config.schema,
            batch_size: config.read.batch_size,
            lookback,
            display_url,
            key_summary_workers: config.key_summary_workers,
            secrets,
        })
    }

    /// Opens a new session.
    pub async fn connect(&self) -> Result<PgConnection> {
        self.connect_with(&self.options).await
    }

    /// Opens a new session with `options` (these settings' options with more session
    /// settings), its errors scrubbed as [`Settings::connect`]'s.
    pub async fn connect_with(&self, options: &PgConnectOptions) -> Result<PgConnection> {
        PgConnection::connect_with(options).await.map_err(|e| {
            self.scrub_error(map_sqlx(e).context(format!("connecting to {}", self.display_url)))
        })
    }

    /// Removes secrets from an error's message.
    pub fn scrub_error(&self, mut e: ConnectorError) -> ConnectorError {
        e.message = scrub(&e.message, &self.secrets);
        e
    }

    /// Checks the lookback with the server's own interval parser; `None` when it is zero.
    pub async fn check_lookback(&mut self, conn: &mut PgConnection) -> Result<()> {
        let Some(text) = self.lookback.clone() else {
            return Ok(());
        };
        let row: std::result::Result<(bool, bool), sqlx::Error> = sqlx::query_as(
            "SELECT $1::text::interval > interval '0', $1::text::interval < interval '0'",
        )
        .bind(&text)
        .fetch_one(&mut *conn)
        .await;
        match row {
            Ok((positive, negative)) => {
                if negative {
                    return Err(ConnectorError::config(format!(
                        "`lookback` = \"{text}\" is negative; give a window such as \"5m\""
                    )));
                }
                if !positive {
                    self.lookback = None;
                }
                Ok(())
            }
            Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("22")) => {
                Err(ConnectorError::config(format!(
                    "`lookback` = \"{text}\" is not a PostgreSQL interval ({}); write it like \
                     \"5m\", \"90s\" or \"1 hour\"",
                    e.message()
                )))
            }
            Err(e) => Err(map_sqlx(e)),
        }
    }
}

/// The password part of a URL, percent-decoded and raw, if there is one.
fn url_password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    if password.is_empty() {
        return None;
    }
    Some(password.to_owned())
}

/// `url` without its user info (`postgres://host:5432/db`), for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "<url>".to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    // Query parameters may carry passwords too (`password=`): drop them all.
    let path = tail.split('?').next().unwrap_or("");
    format!("{scheme}://{host}{path}")
}

/// `message` with every secret (raw or percent-decoded) replaced by `***`.
pub fn scrub(message: &str, secrets: &[String]) -> String {
    let mut out = message.to_owned();
    for secret in secrets.iter().filter(|s| s.len() >= 2) {
        out = out.replace(secret.as_str(), "***");
        let decoded = percent_decode(secret);
        if decoded != *secret && decoded.len() >= 2 {
            out = out.replace(decoded.as_str(), "***");
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The batch size of a read: the smaller of the request's and the config's, else the default.
pub fn effective_batch_size(request: Option<usize>, config: Option<usize>) -> usize {
    match (request.filter(|n| *n > 0), config) {
        (Some(r), Some(c)) => r.min(c),
        (Some(r), None) => r,
        (None, Some(c)) => c,
        (None, None) => DEFAULT_BATCH_SIZE,
    }
}

/// How long ending a connection as the protocol asks may take before it is simply dropped.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Ends `conn` as the protocol asks: reads what the server still has to say (the
/// `ReadyForQuery` a finished query leaves unread), sends `Terminate`, and closes the socket.
///
/// A connection dropped instead is reset whenever replies are left unread: the server logs
/// "could not receive data from client: Connection reset by peer" and counts the session in
/// `pg_stat_database.sessions_abandoned`, once for every read, which on a busy schedule fills
/// a server's log with what looks like a network fault. A connection that does not end within
/// `CLOSE_WAIT` (a server gone away) is dropped.
pub async fn close(mut conn: PgConnection) {
    let polite = async move {
        conn.ping().await?;
        conn.close().await
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, polite).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_user_info_in_messages() {
        assert_eq!(
            redact_url("postgres://bob:s3cr%40t@db.example:5432/app?sslmode=require&password=x"),
            "postgres://db.example:5432/app"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            url_password("postgres://bob:s3cr%40t@h/db").as_deref(),
            Some("s3cr%40t")
        );
        assert_eq!(url_password("postgres://bob@h/db"), None);
        let secrets = vec!["s3cr%40t".to_owned()];
        assert_eq!(
            scrub("bad s3cr@t and s3cr%40t", &secrets),
            "bad *** and ***"
        );
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        let config = Config {
            url: "postgres://bob:hunter22@host:notaport/db".into(),
            schema: "public".into(),
            read: ReadConfig::default(),
            password_env: None,
            key_summary_workers: 0,
        };
        let e = Settings::from_config(config).err().expect("invalid port");
        assert_eq!(e.kind, lockstep_plugin_sdk::api::ErrorKind::CONFIG);
        assert!(!e.message.contains("hunter22"), "{}", e.message);
    }

    #[test]
    fn batch_sizes_take_the_smaller_bound() {
        assert_eq!(effective_batch_size(Some(100), Some(50)), 50);
        assert_eq!(effective_batch_size(None, Some(50)), 50);
        assert_eq!(effective_batch_size(Some(7), None), 7);
        assert_eq!(effective_batch_size(None, None), DEFAULT_BATCH_SIZE);
    }
}
