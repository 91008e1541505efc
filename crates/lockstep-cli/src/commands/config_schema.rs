//! `lockstep config schema`: a JSON Schema (draft 2020-12) of the config file, for editors
//! with TOML language servers (taplo, Even Better TOML) to complete and check `lockstep.toml`.
//!
//! The config crate parses the file by hand (to report every error with its location), so the
//! file's shape is described here with types that exist only for the schema; docs/config.md is
//! the reference they follow, and a test checks that the complete example there fits. Each
//! connector's own `config` table is described by the schema in its plugin's manifest: the
//! schema says "when `connector = "NAME"`, `config` follows NAME's schema" for every plugin
//! found in the connector directories.
//!
//! Invariants:
//! - Unknown keys are refused wherever the config crate refuses them.
//! - A connector's schema is embedded as its own schema resource (`$id`), so its internal
//!   `$ref`s keep resolving.

#![allow(dead_code)] // The types below are described to schemars only; they are never built.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde_json::{json, Value};

use super::CmdResult;
use crate::output::outln;

/// A Lockstep config file (`lockstep.toml`). See lockstep.toml(5) or docs/config.md.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "lockstep.toml")]
struct ConfigFile {
    /// Where run history, cursors and the record ledger live.
    state: Option<State>,
    /// Where to look for connector plugins, besides the default search path.
    connectors: Option<Connectors>,
    /// The systems to sync, by name (ASCII letters, digits, `_` and `-`).
    connections: Option<BTreeMap<String, Connection>>,
    /// The syncs, by name, in file order.
    syncs: Option<BTreeMap<String, Sync>>,
    /// Settings of `lockstep daemon`.
    daemon: Option<Daemon>,
    /// When and where the daemon alerts about failing syncs.
    alerts: Option<Alerts>,
}

/// A duration: a whole number and a unit (`ms`, `s`, `m`, `h`, `d`), parts combined (`1h30m`).
#[derive(JsonSchema)]
#[schemars(transparent)]
struct Duration(#[schemars(regex(pattern = r"^\S+$"))] String);

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct State {
    /// `sqlite://rel/path`, `sqlite:///abs/path`, `sqlite::memory:` or `postgres://...`;
    /// environment interpolation applies. Default `sqlite://.lockstep/state.db`.
    url: Option<String>,
    /// How long a run's lease on its sync lives unrenewed, `1s..=1h`. Default `30s`.
    lease_ttl: Option<Duration>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Connectors {
    /// Extra plugin directories, relative to the config file's directory.
    paths: Option<Vec<String>>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Connection {
    /// A connector name from a plugin's manifest (`lockstep connectors list`).
    connector: String,
    /// Passed to the plugin as JSON; every string in it is interpolated.
    config: Option<BTreeMap<String, Value>>,
}

/// `"connection.stream"`, or a table with exactly `connection` and `stream`.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Endpoint {
    Dotted(String),
    Table(EndpointTable),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct EndpointTable {
    connection: String,
    stream: String,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Full,
    Incremental,
    Mirror,
    #[serde(rename = "two-way")]
    TwoWay,
    Cdc,
}

/// A field name, or a list of them.
#[derive(JsonSchema)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// A count of records, or a share (`0.0..=1.0`) of the records read.
#[derive(JsonSchema)]
#[serde(untagged)]
enum CountOrShare {
    Count(u64),
    Share(f64),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Sync {
    /// The stream read from: `"connection.stream"` or `{ connection, stream }`.
    source: Endpoint,
    /// The stream written to: `"connection.stream"` or `{ connection, stream }`.
    destination: Endpoint,
    /// Default `full`.
    mode: Option<Mode>,
    /// A source field; required for `incremental` and `mirror`.
    cursor: Option<String>,
    /// The match key, in destination field names. Default: the source's primary key.
    key: Option<OneOrMany>,
    /// Records per batch, `1..=1000000`. Default 10000.
    #[schemars(range(min = 1, max = 1_000_000))]
    batch_size: Option<u64>,
    /// Mirror mode: the largest share of the destination a run deletes before holding the
    /// deletes. Default 0.1.
    #[schemars(range(min = 0.0, max = 1.0))]
    max_delete_fraction: Option<f64>,
    /// Mirror mode: a source field whose non-null, non-false value marks a deleted record.
    tombstone: Option<String>,
    /// Mirror mode: key-set reconciliation every this many runs (0 never). Default 1.
    reconcile_every: Option<u64>,
    /// Past this many rejected records (or this share of those read) the run fails.
    max_rejected: Option<CountOrShare>,
    /// `false`: no record ledger; the destination's upsert counts. Default `true`.
    ledger: Option<bool>,
    /// Disabled syncs are validated but not scheduled. Default `true`.
    enabled: Option<bool>,
    /// Destination fields, in order, each with where its value comes from.
    fields: Option<BTreeMap<String, Field>>,
    /// When the daemon runs this sync.
    schedule: Option<Schedule>,
    /// How failed runs are retried.
    retry: Option<Retry>,
    /// When the daemon runs `lockstep verify` on the sync: a cron expression.
    verify_schedule: Option<String>,
    /// Required for mode `two-way`: how side b (the destination) is read and how conflicts
    /// are decided.
    two_way: Option<TwoWay>,
    /// Mode `cdc` only: the replication slot and publication (default `lockstep_<sync>`) and
    /// the WAL-retention alert threshold.
    cdc: Option<Cdc>,
}

/// `[syncs.NAME.cdc]`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Cdc {
    /// The logical replication slot (lowercase letters, digits, `_`; at most 63).
    slot: Option<String>,
    /// The publication the slot decodes; created for the table when missing.
    publication: Option<String>,
    /// A size such as `"1GB"`: the daemon alerts when the slot retains more WAL. Default 1GB.
    max_retained_wal: Option<String>,
}

/// `[syncs.NAME.two_way]`.
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct TwoWay {
    /// What decides a record both sides changed differently.
    policy: Policy,
    /// For `merge-fields`: what decides fields changed on both sides. Default `manual`.
    fallback: Option<Policy>,
    /// Who wins a `newest-wins` tie: `a` or `b`. Default `a`.
    prefer: Option<SideName>,
    /// Side b's last-modified field (its cursor and modification time).
    b_cursor: Option<String>,
    /// Side b's field that marks a deleted record it still lists (an `archived` flag).
    b_tombstone: Option<String>,
    /// Per mapped field, its own policy when both sides changed it.
    fields: Option<BTreeMap<String, Policy>>,
    /// Mapped fields that only flow from a to b (the only ones that may be computed).
    one_way: Option<Vec<String>>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum Policy {
    NewestWins,
    PreferA,
    PreferB,
    MergeFields,
    Manual,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum SideName {
    A,
    B,
}

/// `destination = "source_field"`, or a table with one input and at most one transform.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Field {
    Copy(String),
    Computed(Box<ComputedField>),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct ComputedField {
    /// A source field or a path into a JSON field.
    from: Option<String>,
    /// An expression, e.g. `lower(trim(email))`.
    expr: Option<String>,
    /// Expressions joined as text.
    concat: Option<Vec<String>>,
    /// A constant: string, number, boolean or TOML date/time.
    constant: Option<Value>,
    /// Convert to a type.
    cast: Option<String>,
    /// Read text as a date/time with a strftime format.
    parse: Option<String>,
    /// Write a date/time as text with a strftime format.
    format: Option<String>,
    /// Look the value up, by its text, in this table.
    map: Option<BTreeMap<String, Value>>,
    /// Hash the value.
    hash: Option<HashAlgorithm>,
    /// Split text into a JSON array.
    split: Option<String>,
    /// Used when the value is null or a missing JSON path.
    default: Option<Value>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum HashAlgorithm {
    Sha256,
    Xxh3,
}

#[derive(JsonSchema)]
#[serde(rename_all = "kebab-case")]
enum CatchUp {
    Skip,
    RunOnce,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Schedule {
    /// 5 fields (minute first) or 6 (seconds first), or an `@hourly`-style nickname.
    cron: Option<String>,
    /// A duration; exactly one of `cron` and `every`.
    every: Option<Duration>,
    /// An IANA time zone name. Default `UTC`.
    timezone: Option<String>,
    /// Default `0s`.
    jitter: Option<Duration>,
    /// What to do about runs missed while the daemon was down. Default `skip`.
    catch_up: Option<CatchUp>,
    /// A run taking longer is stopped.
    timeout: Option<Duration>,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Retry {
    /// `1..=100`, the first attempt included. Default 3.
    #[schemars(range(min = 1, max = 100))]
    max_attempts: Option<u64>,
    /// Default `10s`.
    initial_backoff: Option<Duration>,
    /// Default `10m`.
    max_backoff: Option<Duration>,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    Text,
    Json,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Daemon {
    /// The HTTP address, `host:port`. Default `127.0.0.1:9464`.
    listen: Option<String>,
    /// Default `text`.
    log_format: Option<LogFormat>,
    /// The name of the environment variable holding the status page's bearer token (not the
    /// token). Needed for `/ui` on an address other than loopback, unless basic auth is set.
    web_token_env: Option<String>,
    /// Basic auth for the status page: the user name. Needs `web_password_hash`.
    web_user: Option<String>,
    /// The argon2 hash of `web_user`'s password, in PHC form (`$argon2id$v=19$...`).
    web_password_hash: Option<String>,
}

/// One webhook, or a list of them.
#[derive(JsonSchema)]
#[serde(untagged)]
enum Webhooks {
    One(Webhook),
    Many(Vec<Webhook>),
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Webhook {
    /// `http://` or `https://`; interpolated.
    url: String,
}

#[derive(JsonSchema)]
#[serde(rename_all = "lowercase")]
enum StartTls {
    Off,
    Opportunistic,
    Required,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Email {
    smtp_host: String,
    /// Default 587.
    smtp_port: Option<u16>,
    /// Default `required`.
    starttls: Option<StartTls>,
    /// With `password`, or neither.
    username: Option<String>,
    /// With `username`, or neither.
    password: Option<String>,
    from: String,
    /// An address or a non-empty list.
    to: OneOrMany,
}

#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct Alerts {
    /// `1..=1000`. Default 3.
    #[schemars(range(min = 1, max = 1000))]
    consecutive_failures: Option<u64>,
    /// Default `4h`.
    repeat_interval: Option<Duration>,
    /// Default `true`.
    on_recovery: Option<bool>,
    /// `0.0..=1.0`; `0.0` turns the low-volume alert off. Default 0.2.
    #[schemars(range(min = 0.0, max = 1.0))]
    low_volume_fraction: Option<f64>,
    /// `1..=1000`. Default 10.
    #[schemars(range(min = 1, max = 1000))]
    low_volume_window: Option<u64>,
    webhook: Option<Webhooks>,
    email: Option<Email>,
}

/// The schema of the config file alone, without any connector's.
pub fn file_schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<ConfigFile>()
        .to_value();
    if let Value::Object(root) = &mut schema {
        root.insert("$id".into(), "urn:lockstep:config".into());
    }
    schema
}

/// Adds, for each `(name, schema)`, the rule "a connection whose `connector` is `name` has a
/// `config` that follows `schema`".
pub fn with_connectors<'a>(
    mut schema: Value,
    connectors: impl IntoIterator<Item = (&'a str, &'a Value)>,
) -> Value {
    let rules: Vec<Value> = connectors
        .into_iter()
        .map(|(name, config_schema)| {
            let mut embedded = config_schema.clone();
            if let Value::Object(object) = &mut embedded {
                // Its own resource, so that its `#/$defs/...` references resolve inside it.
                object.insert("$id".into(), format!("urn:lockstep:connector:{name}").into());
                object.remove("$schema");
            }
            json!({
                "if": { "properties": { "connector": { "const": name } }, "required": ["connector"] },
                "then": { "properties": { "config": embedded } }
            })
        })
        .collect();
    if rules.is_empty() {
        return schema;
    }
    let connection = schema
        .pointer_mut("/$defs/Connection")
        .and_then(Value::as_object_mut);
    if let Some(connection) = connection {
        connection.insert("allOf".into(), Value::Array(rules));
    }
    schema
}

/// Prints the schema, with the config schema of every connector found in the connector
/// directories (those of the config file, when it exists, then the default search path).
pub fn print(config: &Path) -> CmdResult {
    let config = if config.exists() {
        Some(super::load_config(config)?)
    } else {
        None
    };
    let registry = super::registry(config.as_ref());
    for failure in registry.failures() {
        eprintln!("warning: {failure}");
    }
    let connectors = registry
        .plugins()
        .iter()
        .map(|p| (p.manifest.name.as_str(), &p.manifest.config_schema));
    let schema = with_connectors(file_schema(), connectors);
    outln!("{}", serde_json::to_string_pretty(&schema)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `value` against the object structure of `schema`: every key must be a declared
    /// property where the schema refuses unknown keys. Enough to catch a key the schema lacks.
    fn unknown_keys(schema: &Value, root: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(reference) => root
                .pointer(reference.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("dangling reference {reference}")),
            None => schema,
        };
        for key in ["anyOf", "oneOf"] {
            if let Some(options) = schema.get(key).and_then(Value::as_array) {
                let fitting: Vec<Vec<String>> = options
                    .iter()
                    .map(|option| {
                        let mut found = Vec::new();
                        unknown_keys(option, root, value, at, &mut found);
                        found
                    })
                    .collect();
                if !fitting.iter().any(Vec::is_empty) {
                    out.extend(fitting.into_iter().flatten());
                }
                return;
            }
        }
        let Value::Object(object) = value else { return };
        let properties = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        for (key, item) in object {
            let path = format!("{at}.{key}");
            match (properties.and_then(|p| p.get(key)), extra) {
                (Some(property), _) => unknown_keys(property, root, item, &path, out),
                (None, Some(Value::Bool(false))) => out.push(path),
                (None, Some(additional @ Value::Object(_))) => {
                    unknown_keys(additional, root, item, &path, out)
                }
                (None, _) if schema.get("type") == Some(&json!("object")) => {}
                (None, _) => {}
            }
        }
    }

    /// The complete example of docs/config.md, as TOML.
    fn documented_example() -> Value {
        let doc = include_str!("../../../../docs/config.md");
        let start = doc
            .find("## A complete example")
            .expect("the example section");
        let block = &doc[start..];
        let body = &block[block.find("```toml\n").expect("a toml block") + 8..];
        let body = &body[..body.find("```").expect("the block's end")];
        let table: toml::Table = body.parse().expect("the documented example parses");
        serde_json::to_value(table).expect("TOML converts to JSON")
    }

    #[test]
    fn the_documented_example_fits_the_schema() {
        let schema = file_schema();
        let mut unknown = Vec::new();
        unknown_keys(&schema, &schema, &documented_example(), "", &mut unknown);
        assert!(unknown.is_empty(), "keys the schema lacks: {unknown:?}");
        // The check can fail: a misspelt key is caught.
        let mut wrong = documented_example();
        wrong["syncs"]["contacts"]["curser"] = json!("updated_at");
        let mut unknown = Vec::new();
        unknown_keys(&schema, &schema, &wrong, "", &mut unknown);
        assert_eq!(unknown, [".syncs.contacts.curser"]);
    }

    #[test]
    fn a_connectors_schema_applies_to_the_config_of_its_connections() {
        let sqlite = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": { "path": { "type": "string" } },
            "required": ["path"]
        });
        let schema = with_connectors(file_schema(), [("sqlite", &sqlite)]);
        let rules = schema
            .pointer("/$defs/Connection/allOf")
            .and_then(Value::as_array)
            .expect("the connection's rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0]["if"]["properties"]["connector"]["const"], "sqlite");
        let embedded = &rules[0]["then"]["properties"]["config"];
        assert_eq!(embedded["$id"], "urn:lockstep:connector:sqlite");
        assert_eq!(embedded["required"], json!(["path"]));
        assert!(embedded.get("$schema").is_none());
    }

    #[test]
    fn the_schema_names_every_top_level_table_of_the_reference() {
        let schema = file_schema();
        let properties = schema["properties"].as_object().expect("properties");
        let mut names: Vec<&str> = properties.keys().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "alerts",
                "connections",
                "connectors",
                "daemon",
                "state",
                "syncs"
            ]
        );
        assert_eq!(schema["additionalProperties"], json!(false));
    }
}
