//! One test per documented error (message, line and hint), the full example, secrets, and
//! multiple errors reported together.

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_core::{DeletePolicy, EndpointSpec, FieldMapping, RejectLimit, SyncMode, SyncSpec};
use serde_json::json;

use crate::*;

mod fields;
mod web;

const PATH: &str = "/etc/lockstep/lockstep.toml";

const CRM_PASSWORD: &str = "crm-pw-5f1e2d";
const SMTP_USER: &str = "mailer-7a7a";
const SMTP_PASSWORD: &str = "smtp-pw-9c8b";

fn env(name: &str) -> Option<String> {
    match name {
        "CRM_PASSWORD" => Some(CRM_PASSWORD.to_owned()),
        "SMTP_USER" => Some(SMTP_USER.to_owned()),
        "SMTP_PASSWORD" => Some(SMTP_PASSWORD.to_owned()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn parse_ok(text: &str) -> Config {
    match parse(text, Path::new(PATH), &env) {
        Ok(config) => config,
        Err(errors) => panic!("expected a valid config, got:\n{errors}"),
    }
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text, Path::new(PATH), &env) {
        Ok(config) => panic!("expected errors, got {config:#?}"),
        Err(errors) => errors.into_errors(),
    }
}

/// The single error `text` has; it must have exactly one.
fn only_error(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(
        all.len(),
        1,
        "expected one error, got:\n{}",
        render_plain(&all)
    );
    all.remove(0)
}

#[track_caller]
fn check(error: &ConfigError, kind: ErrorKind, line: usize, message: &str, hint: &str) {
    assert_eq!(error.kind(), kind, "{error:#?}");
    assert_eq!(error.message(), message);
    assert_eq!(error.hint(), hint);
    assert_eq!(error.location().map(|l| l.line), Some(line), "{error:#?}");
    assert_eq!(error.path(), Path::new(PATH));
}

/// Two connections, then whatever the test adds from line 5 on.
fn with_connections(rest: &str) -> String {
    format!(
        "[connections.crm]\nconnector = \"sqlite\"\n[connections.marketing]\nconnector = \"sqlite\"\n{rest}"
    )
}

/// A valid sync at lines 5-7 (`[syncs.contacts]` on line 5), then `rest` from line 8 on.
fn with_sync(rest: &str) -> String {
    with_connections(&format!(
        "[syncs.contacts]\nsource = \"crm.contacts\"\ndestination = \"marketing.subscribers\"\n{rest}"
    ))
}

// ---- The full example -------------------------------------------------------------------------

const EXAMPLE: &str = r#"[state]
url = "sqlite://.lockstep/state.db"

[connectors]
paths = ["plugins"]

[connections.crm]
connector = "sqlite"
[connections.crm.config]
path = "crm.db"
password = "${CRM_PASSWORD}"
pool = { size = 4, ratio = 0.5, tags = ["a", "b"] }
price = "$$5 ${MISSING:-none}"

[connections.marketing]
connector = "sqlite"

[syncs.contacts]
source = "crm.contacts"
destination = "marketing.subscribers"
mode = "incremental"
cursor = "updated_at"
key = ["email_address"]
batch_size = 5000
max_delete_fraction = 0.1
enabled = true
[syncs.contacts.fields]
email_address = "email"
given_name = "first_name"
[syncs.contacts.schedule]
cron = "*/5 * * * *"
timezone = "Europe/Paris"
jitter = "10s"
catch_up = "skip"
timeout = "1h"
[syncs.contacts.retry]
max_attempts = 3
initial_backoff = "10s"
max_backoff = "10m"

[syncs.accounts]
source = { connection = "crm", stream = "accounts" }
destination = "marketing.companies"
key = "id"
[syncs.accounts.schedule]
every = "1h30m"
catch_up = "run-once"

[daemon]
listen = "127.0.0.1:9464"
log_format = "json"

[alerts]
consecutive_failures = 3
repeat_interval = "1h"
on_recovery = true
low_volume_fraction = 0.2
low_volume_window = 10
[[alerts.webhook]]
url = "https://hooks.example.com/T000"
[alerts.email]
smtp_host = "127.0.0.1"
smtp_port = 1025
starttls = "off"
username = "${SMTP_USER}"
password = "${SMTP_PASSWORD}"
from = "lockstep@example.com"
to = ["ops@example.com"]
"#;

#[test]
fn the_full_example_parses_into_the_expected_model() {
    let config = parse_ok(EXAMPLE);
    assert_eq!(config.path, PathBuf::from(PATH));
    assert_eq!(
        config.state_url,
        "sqlite:///etc/lockstep/.lockstep/state.db"
    );
    assert_eq!(
        config.connector_paths,
        vec![PathBuf::from("/etc/lockstep/plugins")]
    );

    assert_eq!(
        config.connections.keys().collect::<Vec<_>>(),
        ["crm", "marketing"]
    );
    let crm = &config.connections["crm"];
    assert_eq!(crm.name, "crm");
    assert_eq!(crm.connector, "sqlite");
    assert_eq!(
        crm.config,
        json!({
            "path": "crm.db",
            "password": CRM_PASSWORD,
            "pool": { "size": 4, "ratio": 0.5, "tags": ["a", "b"] },
            "price": "$5 none",
        })
    );
    assert_eq!((crm.location.line, crm.location.column), (7, 14));
    assert_eq!(crm.connector_location.line, 8);
    assert_eq!(config.connections["marketing"].config, json!({}));

    // Syncs keep file order, not alphabetical order.
    let names: Vec<&str> = config.syncs.iter().map(Sync::name).collect();
    assert_eq!(names, ["contacts", "accounts"]);

    let contacts = config.sync("contacts").unwrap();
    assert_eq!(
        contacts.spec,
        SyncSpec {
            name: "contacts".into(),
            source: EndpointSpec {
                connection: "crm".into(),
                stream: "contacts".into(),
            },
            destination: EndpointSpec {
                connection: "marketing".into(),
                stream: "subscribers".into(),
            },
            mode: SyncMode::Incremental,
            cursor_field: Some("updated_at".into()),
            key: vec!["email_address".into()],
            fields: vec![
                FieldMapping::copy("email_address", "email"),
                FieldMapping::copy("given_name", "first_name"),
            ],
            batch_size: 5000,
            delete: DeletePolicy {
                max_delete_fraction: 0.1,
                ..DeletePolicy::default()
            },
            max_rejected: RejectLimit::default(),
            use_ledger: true,
            two_way: None,
            cdc: None,
        }
    );
    assert!(contacts.enabled);
    let schedule = contacts.schedule.as_ref().unwrap();
    assert_eq!(schedule.trigger, Trigger::Cron("*/5 * * * *".into()));
    assert_eq!(schedule.timezone, "Europe/Paris");
    assert_eq!(schedule.jitter, Duration::from_secs(10));
    assert_eq!(schedule.catch_up, CatchUp::Skip);
    assert_eq!(schedule.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(schedule.location.line, 30);
    assert_eq!(
        contacts.retry,
        RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(600),
        }
    );
    assert_eq!((contacts.location.line, contacts.location.column), (18, 8));
    let at = &contacts.locations;
    assert_eq!((at.source.line, at.source.column), (19, 10));
    assert_eq!(at.destination.line, 20);
    assert_eq!(at.cursor.map(|l| l.line), Some(22));
    assert_eq!(at.key.map(|l| l.line), Some(23));
    assert_eq!(
        at.fields
            .iter()
            .map(|f| (f.target.line, f.target.column, f.source.column))
            .collect::<Vec<_>>(),
        [(28, 1, 17), (29, 1, 14)]
    );

    let accounts = config.sync("accounts").unwrap();
    assert_eq!(
        accounts.spec.source,
        EndpointSpec {
            connection: "crm".into(),
            stream: "accounts".into(),
        }
    );
    assert_eq!(accounts.spec.mode, SyncMode::Full);
    assert_eq!(accounts.spec.key, ["id"]);
    assert_eq!(accounts.spec.batch_size, DEFAULT_BATCH_SIZE);
    assert_eq!(accounts.spec.delete, DeletePolicy::default());
    assert!(accounts.spec.fields.is_empty());
    let schedule = accounts.schedule.as_ref().unwrap();
    assert_eq!(schedule.trigger, Trigger::Every(Duration::from_secs(5400)));
    assert_eq!(schedule.timezone, "UTC");
    assert_eq!(schedule.jitter, Duration::ZERO);
    assert_eq!(schedule.catch_up, CatchUp::RunOnce);
    assert_eq!(schedule.timeout, None);
    assert_eq!(accounts.retry, RetryPolicy::default());

    assert_eq!(
        config.daemon,
        DaemonConfig {
            listen: "127.0.0.1:9464".into(),
            log_format: LogFormat::Json,
            ..Default::default()
        }
    );

    let alerts = &config.alerts;
    assert_eq!(alerts.consecutive_failures, 3);
    assert_eq!(alerts.repeat_interval, Duration::from_secs(3600));
    assert!(alerts.on_recovery);
    assert_eq!(alerts.low_volume_fraction, 0.2);
    assert_eq!(alerts.low_volume_window, 10);
    assert_eq!(alerts.webhooks.len(), 1);
    assert_eq!(alerts.webhooks[0].url, "https://hooks.example.com/T000");
    let email = alerts.email.as_ref().unwrap();
    assert_eq!(email.smtp_host, "127.0.0.1");
    assert_eq!(email.smtp_port, 1025);
    assert_eq!(email.starttls, StartTls::Off);
    assert_eq!(email.username.as_deref(), Some(SMTP_USER));
    assert_eq!(email.password.as_deref(), Some(SMTP_PASSWORD));
    assert_eq!(email.from, "lockstep@example.com");
    assert_eq!(email.to, ["ops@example.com"]);

    assert_eq!(config.secrets.len(), 3);
    assert!(config.secrets.contains(CRM_PASSWORD));
    assert!(config.secrets.contains(SMTP_USER));
    assert!(config.secrets.contains(SMTP_PASSWORD));
}

#[test]
fn the_state_section_gives_the_same_state_url_without_secrets() {
    let env = |name: &str| (name == "PG_PW").then(|| "pw-from-env".to_owned());
    let config = parse(
        "[state]\nurl = \"postgres://sync:${PG_PW}@db/lockstep\"\n",
        Path::new(PATH),
        &env,
    )
    .unwrap();
    let section = config.state_section();
    assert!(!section.contains("pw-from-env"), "{section}");
    let again = parse(&section, Path::new(PATH), &env).unwrap();
    assert_eq!(again.state_url, "postgres://sync:pw-from-env@db/lockstep");
    // A relative SQLite path resolves against the config's directory again.
    let config = parse("[state]\nurl = \"sqlite://s.db\"", Path::new(PATH), &env).unwrap();
    let again = parse(&config.state_section(), Path::new(PATH), &env).unwrap();
    assert_eq!(again.state_url, "sqlite:///etc/lockstep/s.db");
    assert_eq!(
        parse("", Path::new(PATH), &env).unwrap().state_section(),
        ""
    );
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let config = parse("", Path::new("lockstep.toml"), &env).unwrap();
    assert_eq!(config.state_url, "sqlite://.lockstep/state.db");
    assert!(config.connector_paths.is_empty());
    assert!(config.connections.is_empty());
    assert!(config.syncs.is_empty());
    assert_eq!(config.daemon, DaemonConfig::default());
    assert_eq!(config.alerts, AlertsConfig::default());
    assert!(config.secrets.is_empty());
}

#[test]
fn state_urls_resolve_against_the_config_directory() {
    let url = |text: &str| parse_ok(text).state_url;
    assert_eq!(
        url("[state]\nurl = \"sqlite:data/state.db\""),
        "sqlite:///etc/lockstep/data/state.db"
    );
    assert_eq!(
        url("[state]\nurl = \"sqlite:///var/lib/lockstep.db\""),
        "sqlite:///var/lib/lockstep.db"
    );
    assert_eq!(
        url("[state]\nurl = \"sqlite::memory:\""),
        "sqlite://:memory:"
    );
    let config = parse_ok("[state]\nurl = \"postgres://lockstep:${CRM_PASSWORD}@db/lockstep\"");
    assert_eq!(
        config.state_url,
        format!("postgres://lockstep:{CRM_PASSWORD}@db/lockstep")
    );
    assert!(config.secrets.contains(CRM_PASSWORD));
}

#[test]
fn a_sqlite_state_url_with_query_parameters_is_refused_at_its_line() {
    let error = only_error("[state]\nurl = \"sqlite:data/state.db?mode=rwc\"");
    assert_eq!(error.kind(), ErrorKind::InvalidUrl);
    assert_eq!(error.location().unwrap().line, 2);
    assert!(
        error.to_string().contains("take no query parameters"),
        "{error}"
    );
}

#[test]
fn a_single_webhook_table_and_a_key_string_are_accepted() {
    let config = parse_ok(&with_sync(
        "key = \"email\"\n[alerts.webhook]\nurl = \"http://localhost:9000/hook\"",
    ));
    assert_eq!(config.syncs[0].spec.key, ["email"]);
    assert_eq!(config.alerts.webhooks[0].url, "http://localhost:9000/hook");
    assert_eq!(config.alerts.webhooks[0].location.line, 9);
}

// ---- Secrets ----------------------------------------------------------------------------------

#[test]
fn secrets_are_collected_but_never_printed() {
    let config = parse_ok(EXAMPLE);
    let debug = format!("{config:?}");
    let pretty = format!("{config:#?}");
    for secret in [CRM_PASSWORD, SMTP_USER, SMTP_PASSWORD] {
        assert!(!debug.contains(secret), "{secret} in {debug}");
        assert!(!pretty.contains(secret), "{secret} in {pretty}");
        assert!(!format!("{:?}", config.connections["crm"]).contains(secret));
        assert!(!format!("{:?}", config.alerts).contains(secret));
        assert!(!format!("{:?}", config.secrets).contains(secret));
    }
    assert!(debug.contains("\"***\""), "redacted values show as ***");
    assert!(pretty.contains("connector: \"sqlite\""), "{pretty}");
    assert_eq!(
        config
            .secrets
            .redact(&format!("login failed for {SMTP_USER} with {CRM_PASSWORD}")),
        "login failed for *** with ***"
    );
}

#[test]
fn secrets_never_appear_in_errors() {
    let text = "\
[state]
url = \"${CRM_PASSWORD}\"
[connections.crm]
connector = \"sqlite\"
config = { password = \"${CRM_PASSWORD}\", other = \"${UNSET_ONE}\" }
[[alerts.webhook]]
url = \"${SMTP_PASSWORD}\"
[alerts.email]
smtp_host = \"localhost\"
from = \"${SMTP_USER}\"
to = [\"${SMTP_USER}\"]
";
    let errors = parse(text, Path::new(PATH), &env).unwrap_err();
    assert_eq!(errors.len(), 5, "{errors}");
    check(
        &errors.errors()[0],
        ErrorKind::InvalidUrl,
        2,
        "`state.url` must start with `sqlite:` or `postgres://` (the value comes from the \
         environment and is not shown)",
        "write url = \"sqlite://.lockstep/state.db\" (a file next to the config) or \
         url = \"postgres://user:${PGPASSWORD}@host/db\"",
    );
    let rendered = [
        errors.to_string(),
        errors.render_fancy(false),
        format!("{errors:?}"),
    ];
    for text in rendered {
        for secret in [CRM_PASSWORD, SMTP_USER, SMTP_PASSWORD] {
            assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
        }
    }
}

// ---- Many errors at once ----------------------------------------------------------------------

#[test]
fn every_error_in_a_file_is_reported_in_file_order() {
    let text = "\
[connections.crm]
connector = \"sqlite\"
config = { token = \"${NO_SUCH_TOKEN}\" }
[syncs.contacts]
source = \"crmm.contacts\"
destination = \"crm\"
mode = \"incremental\"
curser = \"updated_at\"
batch_size = 0
[syncs.contacts.schedule]
cron = \"*/5 * * *\"
every = \"5 minutes\"
[daemon]
log_format = \"yaml\"
";
    let errors = parse(text, Path::new(PATH), &env).unwrap_err();
    let summary: Vec<(usize, ErrorKind)> = errors
        .iter()
        .map(|e| (e.location().unwrap().line, e.kind()))
        .collect();
    assert_eq!(
        summary,
        [
            (3, ErrorKind::UnsetVariable),
            (5, ErrorKind::UnknownConnection),
            (6, ErrorKind::InvalidEndpoint),
            (7, ErrorKind::MissingCursor),
            (8, ErrorKind::UnknownKey),
            (9, ErrorKind::OutOfRange),
            (12, ErrorKind::ScheduleTrigger),
            (14, ErrorKind::InvalidValue),
        ]
    );
    assert_eq!(errors.len(), 8);
    assert_eq!(errors.summary(), format!("8 errors in {PATH}"));
}

#[test]
fn plain_rendering_is_one_block_per_error() {
    let errors = parse(
        "colour = 1\n[daemon]\nlisten = \"9464\"\n",
        Path::new(PATH),
        &env,
    )
    .unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{PATH}:1:1: error: unknown key `colour` at the top level
  hint: the keys accepted at the top level are: state, connectors, connections, syncs, daemon, alerts
{PATH}:3:10: error: `daemon.listen` must be host:port, found `9464`
  hint: write e.g. listen = \"127.0.0.1:9464\", or \"0.0.0.0:9464\" for every interface"
        )
    );
}

#[test]
fn fancy_rendering_shows_the_snippet_the_label_and_the_code() {
    let errors = parse(&with_sync("curser = \"updated_at\""), Path::new(PATH), &env).unwrap_err();
    let fancy = errors.render_fancy(false);
    assert!(fancy.contains("lockstep::config::unknown-key"), "{fancy}");
    assert!(
        fancy.contains("unknown key `curser` in `syncs.contacts`"),
        "{fancy}"
    );
    assert!(fancy.contains(&format!("[{PATH}:8:1]")), "{fancy}");
    assert!(fancy.contains("curser = \"updated_at\""), "{fancy}");
    assert!(fancy.contains("unknown key"), "{fancy}");
    assert!(fancy.contains("did you mean `cursor`?"), "{fancy}");
    assert!(fancy.ends_with(&format!("1 error in {PATH}")), "{fancy}");
    // The Diagnostic impl of the list hands out every error as related.
    let related = miette::Diagnostic::related(&errors).unwrap().count();
    assert_eq!(related, 1);
}

#[test]
fn later_stages_report_in_the_same_format() {
    let config = parse_ok(EXAMPLE);
    let crm = &config.connections["crm"];
    let error = config
        .error_at(
            crm.connector_location,
            "no plugin provides connector `sqlite`",
            "add its directory to [connectors] paths",
        )
        .with_label("unknown connector");
    assert_eq!(
        error.render_plain(),
        format!(
            "{PATH}:8:13: error: no plugin provides connector `sqlite`\n  hint: add its \
             directory to [connectors] paths"
        )
    );
    let fancy = ConfigErrors::new(PATH, vec![error.clone()]).render_fancy(false);
    assert!(fancy.contains("connector = \"sqlite\""), "{fancy}");
    assert!(fancy.contains("unknown connector"), "{fancy}");

    let standalone = ConfigError::new("other.toml", None, "something is off", "");
    assert_eq!(
        standalone.render_plain(),
        "other.toml: error: something is off"
    );
    assert_eq!(standalone.kind(), ErrorKind::Other);
}

// ---- One test per documented error ------------------------------------------------------------

#[test]
fn io_a_missing_file_names_the_path_and_the_flag() {
    let path = Path::new("/nonexistent/lockstep-test/lockstep.toml");
    let errors = load(path).unwrap_err();
    assert_eq!(errors.len(), 1);
    let error = &errors.errors()[0];
    assert_eq!(error.kind(), ErrorKind::Io);
    assert_eq!(
        error.message(),
        "config file `/nonexistent/lockstep-test/lockstep.toml` not found"
    );
    assert_eq!(
        error.hint(),
        "pass the config file with --config <path>, or create \
         `/nonexistent/lockstep-test/lockstep.toml`"
    );
    assert_eq!(error.location(), None);
    assert!(errors
        .to_string()
        .starts_with("/nonexistent/lockstep-test/lockstep.toml: error: config file"));
}

#[test]
fn syntax_an_unquoted_string() {
    let error = only_error(&with_sync("mode = incremental"));
    check(
        &error,
        ErrorKind::Syntax,
        8,
        "invalid TOML: string value `incremental` must be quoted",
        "put string values in quotes: mode = \"incremental\"",
    );
    assert_eq!(error.location().unwrap().column, 8);
}

#[test]
fn syntax_a_destination_field_mapped_twice() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\nemail = \"email\"\n\"email\" = \"mail\"",
    ));
    check(
        &error,
        ErrorKind::Syntax,
        10,
        "invalid TOML: duplicate key",
        "a key, or a table header, may appear only once in a table: remove or rename the \
         repeated one (in a field mapping, each destination field is mapped once)",
    );
}

#[test]
fn syntax_every_syntax_error_is_reported() {
    let all = errors("a = \nb = [1, 2\nc = 'x'\n");
    assert!(all.len() >= 2, "{}", render_plain(&all));
    assert!(all.iter().all(|e| e.kind() == ErrorKind::Syntax));
}

#[test]
fn unknown_key_with_a_suggestion() {
    let error = only_error(&with_sync("curser = \"updated_at\""));
    check(
        &error,
        ErrorKind::UnknownKey,
        8,
        "unknown key `curser` in `syncs.contacts`",
        "did you mean `cursor`?",
    );
}

#[test]
fn unknown_key_without_a_suggestion_lists_the_accepted_keys() {
    let error = only_error(&with_sync("[syncs.contacts.retry]\nbackoff_factor = 2"));
    check(
        &error,
        ErrorKind::UnknownKey,
        9,
        "unknown key `backoff_factor` in `syncs.contacts.retry`",
        "the keys accepted in `syncs.contacts.retry` are: max_attempts, initial_backoff, \
         max_backoff",
    );
}

#[test]
fn wrong_type_a_quoted_number() {
    let error = only_error(&with_sync("batch_size = \"5000\""));
    check(
        &error,
        ErrorKind::WrongType,
        8,
        "`syncs.contacts.batch_size` must be an integer, found a string",
        "remove the quotes: batch_size = 5000",
    );
}

#[test]
fn wrong_type_a_table_expected() {
    let error = only_error("[connections]\ncrm = \"sqlite\"\n");
    check(
        &error,
        ErrorKind::WrongType,
        2,
        "`connections.crm` must be a table, found a string",
        "write it as a table: a [connections.crm] header, or crm = { ... }",
    );
}

#[test]
fn wrong_type_a_webhook_that_is_not_a_table() {
    let error = only_error("[alerts]\nwebhook = \"https://hooks.example.com\"\n");
    check(
        &error,
        ErrorKind::WrongType,
        2,
        "`alerts.webhook` must be a table or a list of tables, found a string",
        "write one [[alerts.webhook]] table per webhook, each with url = \"https://...\"",
    );
}

#[test]
fn wrong_type_a_dotted_destination_field() {
    let error = only_error(&with_sync(
        "[syncs.contacts.fields]\naddress.city = \"city\"",
    ));
    check(
        &error,
        ErrorKind::WrongType,
        9,
        "`syncs.contacts.fields.address` must be a source field or a field table ({ from = \
         \"...\" }, { expr = \"...\" }...), found a table with `city`",
        "a destination field name with dots must be quoted: \"address.city\" = \"source_field\"",
    );
}

#[test]
fn invalid_value_with_a_suggestion() {
    let error = only_error(&with_sync(
        "mode = \"incremantal\"\ncursor = \"updated_at\"",
    ));
    check(
        &error,
        ErrorKind::InvalidValue,
        8,
        "`syncs.contacts.mode` must be one of `full`, `incremental`, `mirror`, `two-way`, `cdc`, found \
         `incremantal`",
        "did you mean `incremental`?",
    );
}

#[test]
fn invalid_value_lists_the_accepted_values() {
    let error = only_error(
        "[alerts.email]\nsmtp_host = \"localhost\"\nstarttls = \"tls\"\nfrom = \"a@b.c\"\nto = \"d@e.f\"\n",
    );
    check(
        &error,
        ErrorKind::InvalidValue,
        3,
        "`alerts.email.starttls` must be one of `off`, `opportunistic`, `required`, found `tls`",
        "write one of: off, opportunistic, required",
    );
}

#[test]
fn invalid_value_an_empty_connector() {
    let error = only_error("[connections.crm]\nconnector = \"\"\n");
    check(
        &error,
        ErrorKind::InvalidValue,
        2,
        "`connections.crm.connector` is empty",
        "write the name of a connector from a plugin, e.g. connector = \"sqlite\"",
    );
}

#[test]
fn invalid_value_a_non_finite_number_in_a_connection_config() {
    let error = only_error("[connections.crm]\nconnector = \"sqlite\"\nconfig = { ratio = nan }\n");
    check(
        &error,
        ErrorKind::InvalidValue,
        3,
        "`connections.crm.config.ratio` is not a finite number, which JSON cannot carry",
        "use a finite number, or a string the connector understands",
    );
}

#[test]
fn missing_key_in_a_sync() {
    let error = only_error(&with_connections(
        "[syncs.contacts]\nsource = \"crm.contacts\"",
    ));
    check(
        &error,
        ErrorKind::MissingKey,
        5,
        "missing `destination` in `syncs.contacts`",
        "add destination = \"connection.stream\", e.g. destination = \"crm.contacts\", or \
         destination = { connection = \"crm\", stream = \"contacts\" }",
    );
}

#[test]
fn missing_key_a_connection_without_connector() {
    let error = only_error("[connections.crm]\nconfig = { path = \"crm.db\" }\n");
    check(
        &error,
        ErrorKind::MissingKey,
        1,
        "missing `connector` in `connections.crm`",
        "add connector = \"<name>\" with a connector from a plugin, e.g. \"sqlite\"",
    );
}

#[test]
fn missing_key_half_of_the_smtp_credentials() {
    let error = only_error(
        "[alerts.email]\nsmtp_host = \"localhost\"\nusername = \"me\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\n",
    );
    check(
        &error,
        ErrorKind::MissingKey,
        3,
        "`alerts.email` has `username` but no `password`",
        "set both username and password, or neither for a relay that needs no login",
    );
}

#[test]
fn invalid_name_a_connection_with_a_dot() {
    let error = only_error("[connections.\"crm.eu\"]\nconnector = \"sqlite\"\n");
    check(
        &error,
        ErrorKind::InvalidName,
        1,
        "connection name `crm.eu` may contain only ASCII letters, digits, `_` and `-` (a dot \
         would make \"connection.stream\" ambiguous)",
        "rename it, e.g. `crm_eu`",
    );
}

#[test]
fn unknown_connection_with_a_suggestion() {
    let error = only_error(&with_connections(
        "[syncs.contacts]\nsource = \"crmm.contacts\"\ndestination = \"marketing.subscribers\"",
    ));
    check(
        &error,
        ErrorKind::UnknownConnection,
        6,
        "`syncs.contacts.source` names connection `crmm`, which is not defined",
        "did you mean `crm`? defined connections: crm, marketing",
    );
    let at = error.location().unwrap();
    assert_eq!(
        (at.column, at.len),
        (11, 4),
        "points at the connection name"
    );
}

#[test]
fn unknown_connection_when_none_is_defined() {
    let all = errors(
        "[syncs.contacts]\nsource = { connection = \"crm\", stream = \"contacts\" }\n\
         destination = \"crm.subscribers\"\n",
    );
    assert_eq!(all.len(), 2, "{}", render_plain(&all));
    check(
        &all[0],
        ErrorKind::UnknownConnection,
        2,
        "`syncs.contacts.source` names connection `crm`, which is not defined",
        "no connections are defined: add a [connections.crm] table with a connector",
    );
    assert_eq!(all[1].location().unwrap().line, 3);
}

#[test]
fn unknown_connection_lists_the_defined_ones() {
    let all = errors(
        "[connections.crm]\nconnector = \"sqlite\"\n[syncs.contacts]\n\
         source = { connection = \"warehouse\", stream = \"contacts\" }\ndestination = \"crm.x\"\n",
    );
    assert_eq!(all.len(), 1, "{}", render_plain(&all));
    check(
        &all[0],
        ErrorKind::UnknownConnection,
        4,
        "`syncs.contacts.source` names connection `warehouse`, which is not defined",
        "defined connections: crm; or define this one in a [connections.warehouse] table",
    );
}

#[test]
fn invalid_endpoint_without_a_stream() {
    let error = only_error(&with_connections(
        "[syncs.contacts]\nsource = \"crm\"\ndestination = \"marketing.subscribers\"",
    ));
    check(
        &error,
        ErrorKind::InvalidEndpoint,
        6,
        "`syncs.contacts.source` must be \"connection.stream\", found `crm`",
        "add the stream: source = \"crm.<stream>\", or source = { connection = \"crm\", stream = \
         \"...\" }",
    );
}

#[test]
fn same_endpoint() {
    let error = only_error(&with_connections(
        "[syncs.loop]\nsource = \"crm.contacts\"\ndestination = { connection = \"crm\", stream = \"contacts\" }",
    ));
    check(
        &error,
        ErrorKind::SameEndpoint,
        7,
        "sync `loop` writes to its own source `crm.contacts`",
        "a sync copies from one stream to another: name a different destination",
    );
}

#[test]
fn missing_cursor_for_incremental() {
    let error = only_error(&with_sync("mode = \"incremental\""));
    check(
        &error,
        ErrorKind::MissingCursor,
        8,
        "sync `contacts` uses mode `incremental`, which needs a `cursor`",
        "add cursor = \"<source field>\", a last-modified field that only grows (e.g. \
         \"updated_at\"), or use mode = \"full\" (or \"mirror\", which reads in full every \
         run when there is no cursor and also propagates deletes)",
    );
}

#[test]
fn mirror_without_a_cursor_reads_in_full_every_run() {
    let config = parse_ok(&with_sync("mode = \"mirror\""));
    let spec = &config.syncs[0].spec;
    assert_eq!(spec.mode, SyncMode::Mirror);
    assert!(!spec.reads_by_cursor());
}

#[test]
fn duplicate_field_in_the_key() {
    let error = only_error(&with_sync("key = [\"email\", \"email\"]"));
    check(
        &error,
        ErrorKind::DuplicateField,
        8,
        "destination field `email` appears twice in `syncs.contacts.key`",
        "list each key field once",
    );
    assert_eq!(
        error.location().unwrap().column,
        17,
        "points at the second one"
    );
}

#[test]
fn empty_key() {
    let error = only_error(&with_sync("key = []"));
    check(
        &error,
        ErrorKind::EmptyKey,
        8,
        "`syncs.contacts.key` is an empty list",
        "list at least one destination field, e.g. key = [\"id\"], or remove `key` to match on \
         the source's primary key",
    );
}

#[test]
fn key_not_mapped() {
    let error = only_error(&with_sync(
        "key = \"email\"\n[syncs.contacts.fields]\nemail_address = \"email\"",
    ));
    check(
        &error,
        ErrorKind::KeyNotMapped,
        8,
        "key field `email` is not a destination field of `syncs.contacts.fields`",
        "the key names destination fields, and the mapping produces: email_address; add `email` \
         to `syncs.contacts.fields`",
    );
}

#[test]
fn out_of_range_batch_size() {
    let error = only_error(&with_sync("batch_size = 0"));
    check(
        &error,
        ErrorKind::OutOfRange,
        8,
        "`syncs.contacts.batch_size` must be between 1 and 1000000, found 0",
        "batch_size is the number of rows per batch; the default is 10000",
    );
}

#[test]
fn out_of_range_max_delete_fraction() {
    let error = only_error(&with_sync("max_delete_fraction = 1.5"));
    check(
        &error,
        ErrorKind::OutOfRange,
        8,
        "`syncs.contacts.max_delete_fraction` must be between 0.0 and 1.0, found 1.5",
        "max_delete_fraction is the share of the destination one run may delete, e.g. 0.1 for \
         10%; the default is 0.1",
    );
}

#[test]
fn the_lease_ttl_defaults_to_30s_and_accepts_1s_to_1h() {
    assert_eq!(parse_ok("").lease_ttl, Duration::from_secs(30));
    assert_eq!(
        parse_ok("[state]\nlease_ttl = \"2s\"").lease_ttl,
        Duration::from_secs(2)
    );
    let error = only_error("[state]\nlease_ttl = \"500ms\"");
    check(
        &error,
        ErrorKind::OutOfRange,
        2,
        "`state.lease_ttl` must be between 1s and 3600s, found 500ms",
        "a run renews its lease every third of lease_ttl, and a crashed run's sync is taken \
         over by another node after it; the default is 30s",
    );
    let error = only_error("[state]\nlease_ttl = \"2h\"");
    assert!(error.message().ends_with("found 7200s"), "{error:#?}");
    let error = only_error("[state]\nlease_ttl = 30");
    assert_eq!(error.kind(), ErrorKind::WrongType, "{error:#?}");
}

#[test]
fn out_of_range_backoffs() {
    let error = only_error(&with_sync(
        "[syncs.contacts.retry]\ninitial_backoff = \"10m\"\nmax_backoff = \"1m\"",
    ));
    check(
        &error,
        ErrorKind::OutOfRange,
        10,
        "`syncs.contacts.retry.max_backoff` is shorter than `syncs.contacts.retry.initial_backoff`",
        "the backoff doubles from initial_backoff up to max_backoff: make max_backoff at least as \
         long (defaults: 10s and 10m)",
    );
}

#[test]
fn out_of_range_a_zero_interval() {
    let error = only_error(&with_sync("[syncs.contacts.schedule]\nevery = \"0s\""));
    check(
        &error,
        ErrorKind::OutOfRange,
        9,
        "`syncs.contacts.schedule.every` must be longer than zero",
        "write a positive duration, e.g. every = \"5m\"",
    );
}

#[test]
fn alerts_repeat_interval_defaults_to_four_hours_and_must_be_positive() {
    let config = parse("[alerts]\nconsecutive_failures = 2", Path::new(PATH), &env).unwrap();
    assert_eq!(config.alerts.repeat_interval, Duration::from_secs(4 * 3600));
    let error = only_error("[alerts]\nrepeat_interval = \"0s\"");
    check(
        &error,
        ErrorKind::OutOfRange,
        2,
        "`alerts.repeat_interval` must be longer than zero",
        "write a positive duration, e.g. repeat_interval = \"5m\"",
    );
    let error = only_error("[alerts]\nrepeat_interval = \"often\"");
    check(
        &error,
        ErrorKind::InvalidDuration,
        2,
        "invalid duration `often` for `alerts.repeat_interval`",
        &format!("write {}", crate::DURATION_FORMS),
    );
}

#[test]
fn schedule_with_both_triggers() {
    let error = only_error(&with_sync(
        "[syncs.contacts.schedule]\ncron = \"0 * * * *\"\nevery = \"5m\"",
    ));
    check(
        &error,
        ErrorKind::ScheduleTrigger,
        10,
        "`syncs.contacts.schedule` has both `cron` and `every`",
        "keep one: `cron` for times on the calendar, `every` for a fixed interval",
    );
}

#[test]
fn schedule_with_neither_trigger() {
    let error = only_error(&with_sync("[syncs.contacts.schedule]\ntimezone = \"UTC\""));
    check(
        &error,
        ErrorKind::ScheduleTrigger,
        8,
        "`syncs.contacts.schedule` has neither `cron` nor `every`",
        "add cron = \"*/5 * * * *\" (times on the calendar) or every = \"5m\" (a fixed interval)",
    );
}

#[test]
fn invalid_cron() {
    let error = only_error(&with_sync(
        "[syncs.contacts.schedule]\ncron = \"*/5 * * *\"",
    ));
    assert_eq!(error.kind(), ErrorKind::InvalidCron);
    assert_eq!(error.location().unwrap().line, 9);
    assert!(
        error
            .message()
            .starts_with("invalid cron expression `*/5 * * *` in `syncs.contacts.schedule.cron`: "),
        "{}",
        error.message()
    );
    assert_eq!(
        error.hint(),
        "write 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first; \
         e.g. \"*/5 * * * *\" runs every five minutes"
    );
    // Seven fields (a year) are refused too; six (seconds first) are fine.
    let seven = only_error(&with_sync(
        "[syncs.contacts.schedule]\ncron = \"0 0 * * * * 2030\"",
    ));
    assert_eq!(seven.kind(), ErrorKind::InvalidCron);
    parse_ok(&with_sync(
        "[syncs.contacts.schedule]\ncron = \"30 */5 * * * *\"",
    ));
}

#[test]
fn a_verify_schedule_is_a_cron_expression_checked_like_a_schedules() {
    let error = only_error(&with_sync("verify_schedule = \"0 3 * *\""));
    assert_eq!(error.kind(), ErrorKind::InvalidCron);
    assert_eq!(error.location().unwrap().line, 8);
    assert!(
        error
            .message()
            .starts_with("invalid cron expression `0 3 * *` in `syncs.contacts.verify_schedule`: "),
        "{}",
        error.message()
    );
    let config = parse_ok(&with_sync("verify_schedule = \" 0 3 * * * \""));
    assert_eq!(
        config.syncs[0].verify_schedule.as_deref(),
        Some("0 3 * * *")
    );
    assert_eq!(parse_ok(&with_sync("")).syncs[0].verify_schedule, None);
}

#[test]
fn invalid_duration() {
    let error = only_error(&with_sync(
        "[syncs.contacts.schedule]\nevery = \"5 minutes\"",
    ));
    check(
        &error,
        ErrorKind::InvalidDuration,
        9,
        "invalid duration `5 minutes` for `syncs.contacts.schedule.every`",
        "write a whole number followed by a unit: ms, s, m, h or d (e.g. \"500ms\", \"30s\", \
         \"5m\", \"2h\", \"1d\"); parts may be combined, as in \"1h30m\"",
    );
}

#[test]
fn unknown_timezone() {
    let error = only_error(&with_sync(
        "[syncs.contacts.schedule]\nevery = \"5m\"\ntimezone = \"Europe/Pariss\"",
    ));
    check(
        &error,
        ErrorKind::UnknownTimezone,
        10,
        "unknown time zone `Europe/Pariss` in `syncs.contacts.schedule.timezone`",
        "did you mean `Europe/Paris`?",
    );
}

#[test]
fn invalid_url_for_the_state_store() {
    let error = only_error("[state]\nurl = \"mysql://db/lockstep\"\n");
    check(
        &error,
        ErrorKind::InvalidUrl,
        2,
        "`state.url` must start with `sqlite:` or `postgres://`, found `mysql://db/lockstep`",
        "write url = \"sqlite://.lockstep/state.db\" (a file next to the config) or \
         url = \"postgres://user:${PGPASSWORD}@host/db\"",
    );
}

#[test]
fn invalid_url_for_a_webhook() {
    let error = only_error("[[alerts.webhook]]\nurl = \"ftp://hooks.example.com\"\n");
    check(
        &error,
        ErrorKind::InvalidUrl,
        2,
        "`alerts.webhook[0].url` must be an http:// or https:// url, found \
         `ftp://hooks.example.com`",
        "write url = \"https://hooks.example.com/...\"",
    );
}

#[test]
fn invalid_address_for_the_daemon() {
    let error = only_error("[daemon]\nlisten = \"localhost\"\n");
    check(
        &error,
        ErrorKind::InvalidAddress,
        2,
        "`daemon.listen` must be host:port, found `localhost`",
        "write e.g. listen = \"127.0.0.1:9464\", or \"0.0.0.0:9464\" for every interface",
    );
}

#[test]
fn invalid_address_for_email() {
    let error =
        only_error("[alerts.email]\nsmtp_host = \"localhost\"\nfrom = \"a@b.c\"\nto = [\"ops\"]\n");
    check(
        &error,
        ErrorKind::InvalidAddress,
        4,
        "`alerts.email.to[0]` must be an email address, found `ops`",
        "write an address like \"ops@example.com\"",
    );
}

#[test]
fn unset_variable() {
    let error = only_error(
        "[connections.crm]\nconnector = \"sqlite\"\n[connections.crm.config]\ntoken = \"Bearer ${CRM_TOKEN}\"\n",
    );
    check(
        &error,
        ErrorKind::UnsetVariable,
        4,
        "environment variable `CRM_TOKEN` is not set (used in `connections.crm.config.token`)",
        "set CRM_TOKEN in the environment lockstep runs in, or give a default: \
         ${CRM_TOKEN:-default}",
    );
    let at = error.location().unwrap();
    assert_eq!((at.column, at.len), (17, 12), "points at ${{CRM_TOKEN}}");
}

#[test]
fn unset_variable_with_a_default_is_fine() {
    let config = parse_ok(
        "[connections.crm]\nconnector = \"sqlite\"\nconfig = { a = \"${CRM_TOKEN:-x}\", b = \"${EMPTY:-y}\", c = \"${EMPTY}\" }\n",
    );
    assert_eq!(
        config.connections["crm"].config,
        json!({ "a": "x", "b": "y", "c": "" })
    );
    assert!(config.secrets.is_empty());
}

#[test]
fn invalid_interpolation_unterminated() {
    let error = only_error(
        "[alerts.email]\nsmtp_host = \"${SMTP_HOST\"\nfrom = \"a@b.c\"\nto = \"d@e.f\"\n",
    );
    check(
        &error,
        ErrorKind::InvalidInterpolation,
        2,
        "unterminated `${` in `alerts.email.smtp_host`",
        "close it: ${NAME}, or write $$ for a literal dollar sign",
    );
}

#[test]
fn invalid_interpolation_bad_name() {
    let error = only_error(
        "[connections.crm]\nconnector = \"sqlite\"\nconfig = { pw = \"${1PASSWORD}\" }\n",
    );
    check(
        &error,
        ErrorKind::InvalidInterpolation,
        3,
        "invalid interpolation `${1PASSWORD}` in `connections.crm.config.pw`",
        "write ${NAME} or ${NAME:-default}, where NAME is letters, digits and _ (not starting \
         with a digit); write $$ for a literal dollar sign",
    );
}

#[test]
fn strings_outside_connection_configs_state_and_alerts_are_not_interpolated() {
    let config = parse_ok(&with_sync("cursor = \"${NOT_INTERPOLATED}\""));
    assert_eq!(
        config.syncs[0].spec.cursor_field.as_deref(),
        Some("${NOT_INTERPOLATED}")
    );
}

#[test]
fn reject_limits_and_delete_options_parse() {
    let config = parse_ok(&with_sync(
        "max_rejected = 25\ntombstone = \"deleted_at\"\nreconcile_every = 5",
    ));
    let spec = &config.syncs[0].spec;
    assert_eq!(spec.max_rejected, RejectLimit::Count(25));
    assert_eq!(spec.delete.tombstone.as_deref(), Some("deleted_at"));
    assert_eq!(spec.delete.reconcile_every, 5);
    assert!(spec.use_ledger);
    let config = parse_ok(&with_sync("ledger = false"));
    assert!(!config.syncs[0].spec.use_ledger);
    let config = parse_ok(&with_sync("max_rejected = 0.02"));
    assert_eq!(
        config.syncs[0].spec.max_rejected,
        RejectLimit::Fraction(0.02)
    );
    let error = only_error(&with_sync("max_rejected = 1.5"));
    assert!(
        error.message().contains("between 0.0 and 1.0"),
        "{}",
        error.message()
    );
}

#[test]
fn a_two_way_sync_reads_its_policy_and_side_b_cursor() {
    let config = parse_ok(&with_sync(
        "mode = \"two-way\"\ncursor = \"updated_at\"\n\
         [syncs.contacts.fields]\nemail = \"email\"\nname = \"full_name\"\n\
         [syncs.contacts.two_way]\npolicy = \"merge-fields\"\nfallback = \"prefer-b\"\n\
         b_cursor = \"modified\"\nfields = { name = \"manual\" }\n",
    ));
    let spec = &config.syncs[0].spec;
    assert_eq!(spec.mode, SyncMode::TwoWay);
    let tw = spec.two_way.as_ref().expect("two_way");
    assert_eq!(tw.policy, lockstep_core::ConflictPolicy::MergeFields);
    assert_eq!(tw.fallback, lockstep_core::ConflictPolicy::PreferB);
    assert_eq!(tw.b_cursor_field.as_deref(), Some("modified"));
    assert_eq!(
        tw.field_policies.get("name"),
        Some(&lockstep_core::ConflictPolicy::Manual)
    );
}

#[test]
fn a_two_way_sync_names_each_sides_tombstone() {
    let config = parse_ok(&with_sync(
        "mode = \"two-way\"\ncursor = \"updated_at\"\ntombstone = \"archived\"\n\
         [syncs.contacts.two_way]\npolicy = \"prefer-a\"\nb_tombstone = \"deleted\"\n",
    ));
    let spec = &config.syncs[0].spec;
    assert_eq!(spec.delete.tombstone.as_deref(), Some("archived"));
    let tw = spec.two_way.as_ref().expect("two_way");
    assert_eq!(tw.b_tombstone_field.as_deref(), Some("deleted"));
    let error = only_error(&with_sync(
        "mode = \"two-way\"\n[syncs.contacts.two_way]\npolicy = \"prefer-a\"\nb_tombstone = 3\n",
    ));
    assert!(
        error.message().contains("b_tombstone"),
        "{}",
        error.message()
    );
}

#[test]
fn a_two_way_mapping_must_be_invertible() {
    let text = with_sync(
        "mode = \"two-way\"\n[syncs.contacts.fields]\nemail = { expr = \"lower(email)\" }\n\
         name = \"full_name\"\n[syncs.contacts.two_way]\npolicy = \"prefer-a\"\n",
    );
    let error = only_error(&text);
    assert!(
        error
            .to_string()
            .contains("field `email` of two-way sync `contacts`"),
        "{error}"
    );
    assert!(error.hint().contains("one_way"), "{error:?}");
    // Listed as one-way, the computed field is accepted.
    let text = with_sync(
        "mode = \"two-way\"\nkey = [\"name\"]\n[syncs.contacts.fields]\n\
         email = { expr = \"lower(email)\" }\nname = \"full_name\"\n\
         [syncs.contacts.two_way]\npolicy = \"prefer-a\"\none_way = [\"email\"]\n",
    );
    assert_eq!(
        parse_ok(&text).syncs[0]
            .spec
            .two_way
            .as_ref()
            .unwrap()
            .one_way,
        ["email"]
    );
}

#[test]
fn newest_wins_needs_both_modification_times_and_a_policy_is_required() {
    let errors = errors(&with_sync(
        "mode = \"two-way\"\n[syncs.contacts.two_way]\npolicy = \"newest-wins\"\n",
    ));
    let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("needs side a's modification time")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.contains("needs side b's modification time")),
        "{text:?}"
    );
    let error = only_error(&with_sync("mode = \"two-way\""));
    assert!(
        error
            .to_string()
            .contains("needs a `[syncs.contacts.two_way]` table"),
        "{error}"
    );
    let error = only_error(&with_sync(
        "[syncs.contacts.two_way]\npolicy = \"manual\"\n",
    ));
    assert!(
        error.to_string().contains("is not a two-way sync"),
        "{error}"
    );
}

// ---- Change data capture ----------------------------------------------------------------------

#[test]
fn a_cdc_sync_gets_its_slot_publication_and_reserved_tombstone() {
    let config = parse_ok(&with_sync("mode = \"cdc\""));
    let spec = &config.syncs[0].spec;
    assert_eq!(spec.mode, SyncMode::Cdc);
    let cdc = spec.cdc.as_ref().expect("cdc settings");
    assert_eq!(cdc.slot, "lockstep_contacts");
    assert_eq!(cdc.publication, "lockstep_contacts");
    assert_eq!(cdc.max_retained_wal, 1 << 30);
    assert_eq!(spec.delete.tombstone.as_deref(), Some("_lockstep_deleted"));
    assert!(spec.reads_by_cursor());

    let config = parse_ok(&with_sync(
        "mode = \"cdc\"\n[syncs.contacts.cdc]\nslot = \"s1\"\npublication = \"p1\"\nmax_retained_wal = \"512MB\"",
    ));
    let cdc = config.syncs[0].spec.cdc.clone().unwrap();
    assert_eq!((cdc.slot.as_str(), cdc.publication.as_str()), ("s1", "p1"));
    assert_eq!(cdc.max_retained_wal, 512 << 20);
}

#[test]
fn cdc_settings_are_checked() {
    let errs = errors(&with_sync(
        "mode = \"cdc\"\ncursor = \"updated_at\"\n[syncs.contacts.cdc]\nslot = \"Bad-Name\"\nmax_retained_wal = \"lots\"\ncolour = 1",
    ));
    let messages: Vec<&str> = errs.iter().map(|e| e.message()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("mode \"cdc\", which reads the change log and needs no `cursor`")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`syncs.contacts.cdc.slot` must be a name of lowercase letters")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("`syncs.contacts.cdc.max_retained_wal` must be a size")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("colour")),
        "{messages:?}"
    );
    assert_eq!(errs.len(), 4, "{messages:?}");

    let errs = errors(&with_sync(
        "mode = \"mirror\"\n[syncs.contacts.cdc]\nslot = \"s\"",
    ));
    assert_eq!(errs.len(), 1);
    assert_eq!(
        errs[0].message(),
        "`syncs.contacts.cdc` applies to mode \"cdc\" only"
    );
}
