//! The validated configuration, as the rest of lockstep uses it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lockstep_core::SyncSpec;

use crate::diagnostic::{ConfigError, ErrorKind, Location, SourceFile};
use crate::secrets::{redacted_debug, Secrets};

/// The state url used when the file has no `[state]` table (resolved against the config file's
/// directory).
pub const DEFAULT_STATE_URL: &str = "sqlite://.lockstep/state.db";
/// How often a sync that keeps failing is alerted again, when `[alerts] repeat_interval` is not
/// set (Alertmanager's default).
pub const DEFAULT_REPEAT_INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// How long a run's lease on its sync lives without renewal, when `state.lease_ttl` is not set.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// The shortest accepted `state.lease_ttl`.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(1);
/// The longest accepted `state.lease_ttl`.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(3600);
/// The daemon's default metrics and health address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";
/// Rows per batch when a sync does not say.
pub const DEFAULT_BATCH_SIZE: usize = 10_000;
/// The largest accepted `batch_size`.
pub const MAX_BATCH_SIZE: usize = 1_000_000;

/// A loaded, validated config file.
///
/// Strings interpolated from the environment are in place; the values taken from it are also in
/// [`Config::secrets`]. The `Debug` impl redacts them.
#[derive(Clone)]
pub struct Config {
    /// The config file, as given.
    pub path: PathBuf,
    /// The state store url, interpolated; a relative SQLite path is resolved against the config
    /// file's directory.
    pub state_url: String,
    /// How long a run's lease on its sync lives without renewal (`state.lease_ttl`): a run
    /// renews it every third of this, and another node takes over a crashed run's sync after it.
    pub lease_ttl: Duration,
    /// Extra plugin directories, resolved against the config file's directory.
    pub connector_paths: Vec<PathBuf>,
    pub connections: BTreeMap<String, Connection>,
    /// In file order.
    pub syncs: Vec<Sync>,
    pub daemon: DaemonConfig,
    pub alerts: AlertsConfig,
    pub secrets: Secrets,
    pub(crate) source: SourceFile,
}

impl Config {
    /// The sync named `name`.
    pub fn sync(&self, name: &str) -> Option<&Sync> {
        self.syncs.iter().find(|s| s.spec.name == name)
    }

    /// The text of the config file as it was read (before interpolation, so with no values from
    /// the environment).
    pub fn source_text(&self) -> &str {
        self.source.inner()
    }

    /// The file's `[state]` table alone, as TOML text before interpolation (so with no value
    /// from the environment): a config file of its own that [`crate::parse`] turns into this
    /// config's state url again, e.g. to find the run history while the file is invalid. Empty
    /// when the file has no state url (the default applies).
    pub fn state_section(&self) -> String {
        let url = self
            .source_text()
            .parse::<toml::Table>()
            .ok()
            .and_then(|doc| doc.get("state")?.get("url")?.as_str().map(str::to_owned));
        match url {
            Some(url) => format!("[state]\nurl = {}\n", toml::Value::String(url)),
            None => String::new(),
        }
    }

    /// A diagnostic about this file at `location`, in the same format as the ones `load`
    /// reports, with the source snippet for the fancy rendering. For later stages, e.g. the CLI
    /// checking connector names against loaded plugins. Secrets are redacted from the message
    /// and hint.
    pub fn error_at(
        &self,
        location: Location,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> ConfigError {
        let mut error = ConfigError::new(self.path.clone(), Some(location), message, hint)
            .with_kind(ErrorKind::Other)
            .with_source_file(self.source.clone());
        error.redact(&self.secrets);
        error
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[derive(Debug)]
        #[allow(dead_code)] // Read through Debug only.
        struct Config<'a> {
            path: &'a PathBuf,
            state_url: &'a str,
            lease_ttl: Duration,
            connector_paths: &'a [PathBuf],
            connections: &'a BTreeMap<String, Connection>,
            syncs: &'a [Sync],
            daemon: &'a DaemonConfig,
            alerts: &'a AlertsConfig,
            secrets: &'a Secrets,
        }
        let view = Config {
            path: &self.path,
            state_url: &self.state_url,
            lease_ttl: self.lease_ttl,
            connector_paths: &self.connector_paths,
            connections: &self.connections,
            syncs: &self.syncs,
            daemon: &self.daemon,
            alerts: &self.alerts,
            secrets: &self.secrets,
        };
        redacted_debug(f, &self.secrets, &view)
    }
}

/// A connection: a connector and the config passed to it.
#[derive(Clone, PartialEq)]
pub struct Connection {
    /// The connection's name (its key under `[connections]`).
    pub name: String,
    /// A connector name from a plugin's manifest.
    pub connector: String,
    /// The `[connections.NAME.config]` table as JSON, interpolated; an empty object when absent.
    pub config: serde_json::Value,
    /// The name in `[connections.NAME]`.
    pub location: Location,
    /// The `connector = "..."` value.
    pub connector_location: Location,
    pub(crate) secrets: Secrets,
}

impl Connection {
    /// A connection built in code, with no location and no secrets.
    pub fn new(
        name: impl Into<String>,
        connector: impl Into<String>,
        config: serde_json::Value,
    ) -> Self {
        Connection {
            name: name.into(),
            connector: connector.into(),
            config,
            location: Location::default(),
            connector_location: Location::default(),
            secrets: Secrets::default(),
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[derive(Debug)]
        #[allow(dead_code)] // Read through Debug only.
        struct Connection<'a> {
            name: &'a str,
            connector: &'a str,
            config: &'a serde_json::Value,
            location: Location,
        }
        let view = Connection {
            name: &self.name,
            connector: &self.connector,
            config: &self.config,
            location: self.location,
        };
        redacted_debug(f, &self.secrets, &view)
    }
}

/// A sync: the engine's [`SyncSpec`] plus what the CLI and the daemon need around it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sync {
    pub spec: SyncSpec,
    /// Disabled syncs are loaded and validated but not scheduled.
    pub enabled: bool,
    pub schedule: Option<Schedule>,
    /// When the daemon verifies the sync (`lockstep verify`): a cron expression, in the time
    /// zone of the sync's schedule (UTC without one).
    pub verify_schedule: Option<String>,
    pub retry: RetryPolicy,
    /// The name in `[syncs.NAME]`.
    pub location: Location,
    /// Where each part of the sync is written, for diagnostics of later stages.
    pub locations: SyncLocations,
}

impl Sync {
    pub fn name(&self) -> &str {
        &self.spec.name
    }
}

/// Where the parts of a sync are in the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncLocations {
    pub source: Location,
    pub destination: Location,
    /// The `mode` value, when the sync sets one.
    pub mode: Option<Location>,
    pub cursor: Option<Location>,
    pub key: Option<Location>,
    /// One per entry of `spec.fields`, in the same order.
    pub fields: Vec<FieldLocation>,
}

/// Where one `target = "source"` line of a field mapping is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldLocation {
    pub target: Location,
    pub source: Location,
}

/// When the daemon runs a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub trigger: Trigger,
    /// An IANA time zone name (checked against chrono-tz's database); `"UTC"` by default.
    pub timezone: String,
    /// A random delay up to this long before each run; zero by default.
    pub jitter: Duration,
    pub catch_up: CatchUp,
    /// A run that takes longer is cancelled; none by default.
    pub timeout: Option<Duration>,
    /// The `[syncs.NAME.schedule]` table.
    pub location: Location,
}

/// What starts a scheduled run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A 5-field (minute first) or 6-field (seconds first) cron expression, validated with
    /// croner; `@hourly`-style nicknames are accepted.
    Cron(String),
    /// A fixed interval, greater than zero.
    Every(Duration),
}

/// What the daemon does about runs missed while it was down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CatchUp {
    /// Forget them; wait for the next slot.
    #[default]
    Skip,
    /// Run once at start-up, however many were missed.
    RunOnce,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::Skip => "skip",
            CatchUp::RunOnce => "run-once",
        }
    }
}

/// How a failed run is retried (transient and rate-limited errors only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; at least 1.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    /// The backoff doubles up to this; never below `initial_backoff`.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
        }
    }
}

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    /// `host:port` for metrics and health.
    pub listen: String,
    pub log_format: LogFormat,
    /// Who may use the status page (`web_token_env`, `web_user`, `web_password_hash`).
    pub web_auth: WebAuth,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            listen: DEFAULT_LISTEN.to_owned(),
            log_format: LogFormat::Text,
            web_auth: WebAuth::default(),
        }
    }
}

/// Who may use the daemon's status page. With neither way set the page is served on a
/// loopback address only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebAuth {
    /// The environment variable holding the bearer token (`web_token_env`); its value is read
    /// by the daemon at start-up and never kept here.
    pub token_env: Option<String>,
    /// Basic auth: a user and the PHC string of an argon2 hash of its password.
    pub basic: Option<BasicAuth>,
}

impl WebAuth {
    /// Whether any way of authenticating is configured.
    pub fn is_configured(&self) -> bool {
        self.token_env.is_some() || self.basic.is_some()
    }
}

/// `web_user` and `web_password_hash`. The `Debug` impl hides the hash.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: String,
    /// An argon2 PHC string (`$argon2id$v=19$m=...`).
    pub password_hash: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password_hash", &crate::secrets::REDACTED)
            .finish()
    }
}

/// How the daemon writes its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[alerts]`: when to alert and where to send alerts.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertsConfig {
    /// Alert after this many failed runs in a row; at least 1.
    pub consecutive_failures: u32,
    /// While a sync keeps failing, alert again at most this often (after the first failure and
    /// the `consecutive_failures` alert); greater than zero.
    pub repeat_interval: Duration,
    /// Alert when a sync succeeds again after an alerted failure.
    pub on_recovery: bool,
    /// Alert when a successful run read or wrote below this fraction of the median of the last
    /// `low_volume_window` successful runs; 0.0 turns the alert off.
    pub low_volume_fraction: f64,
    pub low_volume_window: u32,
    pub webhooks: Vec<WebhookAlert>,
    pub email: Option<EmailAlert>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            consecutive_failures: 3,
            repeat_interval: DEFAULT_REPEAT_INTERVAL,
            on_recovery: true,
            low_volume_fraction: 0.2,
            low_volume_window: 10,
            webhooks: Vec::new(),
            email: None,
        }
    }
}

/// `[[alerts.webhook]]`: a JSON body POSTed to `url`.
#[derive(Clone, PartialEq)]
pub struct WebhookAlert {
    /// An `http://` or `https://` url, interpolated.
    pub url: String,
    pub location: Location,
    pub(crate) secrets: Secrets,
}

impl fmt::Debug for WebhookAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[derive(Debug)]
        #[allow(dead_code)] // Read through Debug only.
        struct WebhookAlert<'a> {
            url: &'a str,
            location: Location,
        }
        let view = WebhookAlert {
            url: &self.url,
            location: self.location,
        };
        redacted_debug(f, &self.secrets, &view)
    }
}

/// `[alerts.email]`: alerts sent over SMTP. Every string is interpolated.
#[derive(Clone, PartialEq)]
pub struct EmailAlert {
    pub smtp_host: String,
    /// 587 by default.
    pub smtp_port: u16,
    pub starttls: StartTls,
    /// Set together with `password`, or neither.
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    /// At least one address.
    pub to: Vec<String>,
    pub location: Location,
    pub(crate) secrets: Secrets,
}

impl fmt::Debug for EmailAlert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        #[derive(Debug)]
        #[allow(dead_code)] // Read through Debug only.
        struct EmailAlert<'a> {
            smtp_host: &'a str,
            smtp_port: u16,
            starttls: StartTls,
            username: Option<&'a str>,
            password: Option<&'a str>,
            from: &'a str,
            to: &'a [String],
            location: Location,
        }
        let view = EmailAlert {
            smtp_host: &self.smtp_host,
            smtp_port: self.smtp_port,
            starttls: self.starttls,
            username: self.username.as_deref(),
            // A password is never printed, whether or not it came from the environment.
            password: self.password.as_ref().map(|_| crate::secrets::REDACTED),
            from: &self.from,
            to: &self.to,
            location: self.location,
        };
        redacted_debug(f, &self.secrets, &view)
    }
}

/// Whether the SMTP connection is upgraded with STARTTLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StartTls {
    /// Plain text (local relays and test servers only).
    Off,
    /// Upgrade when the server offers it.
    Opportunistic,
    /// Refuse to send unless the connection is upgraded.
    #[default]
    Required,
}

impl StartTls {
    pub fn as_str(self) -> &'static str {
        match self {
            StartTls::Off => "off",
            StartTls::Opportunistic => "opportunistic",
            StartTls::Required => "required",
        }
    }
}
