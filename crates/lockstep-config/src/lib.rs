//! The `lockstep` config file: its model, and staged validation that reports every problem at
//! once, each with the file, line and column, what is wrong and a hint.
//!
//! [`load`] reads a file and [`parse`] takes its text; both return a validated [`Config`] or
//! [`ConfigErrors`] with every diagnostic found. Validation runs in stages, in the manner of
//! `vector validate`: TOML syntax (every syntax error, then stop); then structure (unknown keys,
//! with a "did you mean" hint, wrong types, values outside an enum), references and ranges
//! (connections named by syncs, cursors, keys, schedules, cron expressions, durations, time
//! zones) and the environment (`${VAR}` interpolation), all collected in one pass. Later stages
//! (the CLI checking connector names against plugins, streams against catalogs) add their own
//! diagnostics in the same format with [`Config::error_at`] or [`ConfigError::new`].
//!
//! Invariants:
//! - No I/O but reading the config file (in [`load`]) and the process environment, which goes
//!   through a closure so tests inject it.
//! - A value taken from the environment never appears in an error message, a hint, or the
//!   `Debug` output of any type here. Such values are collected in [`Secrets`] so callers can
//!   redact them from logs and plugin messages as well.
//!
//! # The format
//!
//! docs/config.md is the reference; in short:
//!
//! ```toml
//! [state]
//! url = "sqlite://.lockstep/state.db"  # the default; relative paths resolve against the config
//!                                      # file's directory; or postgres://...
//! [connectors]
//! paths = ["plugins"]                  # extra plugin directories, relative to the config file
//!
//! [connections.crm]
//! connector = "sqlite"                 # a connector name from a plugin's manifest
//! [connections.crm.config]             # opaque to lockstep; passed to the plugin as JSON
//! path = "crm.db"
//! password = "${CRM_PASSWORD}"         # ${VAR}, ${VAR:-default}; $$ is a literal $
//!
//! [syncs.contacts]
//! source = "crm.contacts"              # "connection.stream" or { connection = "crm", stream = "contacts" }
//! destination = "marketing.subscribers"
//! mode = "incremental"                 # full (default) | incremental | mirror
//! cursor = "updated_at"                # required for incremental and mirror
//! key = ["email_address"]              # destination field names; a string or a list; optional
//! batch_size = 5000                    # 1..=1_000_000, default 10000
//! max_delete_fraction = 0.1            # 0.0..=1.0, default 0.1
//! enabled = true
//! [syncs.contacts.fields]              # destination_field = "source_field", in order
//! email_address = "email"
//! email_key = { expr = "lower(trim(email))" }  # computed: expr, concat, constant, from + cast,
//!                                      # parse, format, map, hash or split, and default
//! [syncs.contacts.schedule]            # optional; used by the daemon
//! cron = "*/5 * * * *"                 # or every = "5m": exactly one of the two
//! timezone = "Europe/Paris"            # IANA name, default UTC
//! jitter = "10s"
//! catch_up = "skip"                    # skip | run-once
//! timeout = "1h"
//! [syncs.contacts.retry]
//! max_attempts = 3
//! initial_backoff = "10s"
//! max_backoff = "10m"
//!
//! [daemon]
//! listen = "127.0.0.1:9464"
//! log_format = "text"                  # text | json
//!
//! [alerts]
//! consecutive_failures = 3
//! repeat_interval = "4h"               # while failing, alert again at most this often
//! on_recovery = true
//! low_volume_fraction = 0.2
//! low_volume_window = 10
//! [[alerts.webhook]]
//! url = "https://hooks.example.com/T000"
//! [alerts.email]
//! smtp_host = "127.0.0.1"
//! smtp_port = 1025
//! starttls = "off"                     # off | opportunistic | required (default)
//! username = "${SMTP_USER}"
//! password = "${SMTP_PASSWORD}"
//! from = "lockstep@example.com"
//! to = ["ops@example.com"]
//! ```
//!
//! Interpolation applies to every string of a connection's `config`, to `state.url` and to the
//! strings of `[alerts]` (urls, host, credentials, addresses); nowhere else. Durations are a
//! whole number and a unit (`ms`, `s`, `m`, `h`, `d`), possibly combined (`"1h30m"`), read by
//! `humantime` (see [`parse_duration`]).
//!
//! The validator's layout: `validate/reader.rs` reads TOML keeping positions; one file of rules
//! per section (`state`, `connections`, `syncs`, `fields`, `schedule`, `daemon`, `alerts`) owns
//! the `*_KEYS` list of keys it accepts.

mod diagnostic;
mod duration;
mod interpolate;
mod model;
mod secrets;
mod validate;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use diagnostic::{render_plain, ConfigError, ConfigErrors, ErrorKind, Location};
pub use duration::{parse_duration, DurationError, DURATION_FORMS};
pub use model::{
    AlertsConfig, BasicAuth, CatchUp, Config, Connection, DaemonConfig, EmailAlert, FieldLocation,
    LogFormat, RetryPolicy, Schedule, StartTls, Sync, SyncLocations, Trigger, WebAuth,
    WebhookAlert, DEFAULT_BATCH_SIZE, DEFAULT_LEASE_TTL, DEFAULT_LISTEN, DEFAULT_REPEAT_INTERVAL,
    DEFAULT_STATE_URL, MAX_BATCH_SIZE, MAX_LEASE_TTL, MIN_LEASE_TTL,
};
pub use secrets::{Secrets, REDACTED};

/// Reads and validates the config file at `path`, interpolating from the process environment.
///
/// A file that cannot be read gives one [`ErrorKind::Io`] error that names the path tried.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) => return Err(ConfigErrors::new(path, vec![read_error(path, &error)])),
    };
    parse(&text, path, &|name| std::env::var(name).ok())
}

fn read_error(path: &Path, error: &std::io::Error) -> ConfigError {
    let (message, hint) = if error.kind() == std::io::ErrorKind::NotFound {
        (
            format!("config file `{}` not found", path.display()),
            format!(
                "pass the config file with --config <path>, or create `{}`",
                path.display()
            ),
        )
    } else {
        (
            format!("cannot read config file `{}`: {error}", path.display()),
            "check that the file is readable UTF-8 text, or pass another with --config <path>"
                .to_owned(),
        )
    };
    ConfigError::new(path, None, message, hint).with_kind(ErrorKind::Io)
}

/// Validates `text`, the contents of the config file at `path` (used to resolve relative paths
/// and in diagnostics), reading environment variables through `env`.
pub fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    validate::build(text, path, env)
}
