//! `lockstep connectors check|discover|read`: the host-free loop. Each opens one connection,
//! from the config file or from `--connector NAME --config JSON`, and exercises its connector
//! without a sync: nothing is written, and the state store is never opened.
//!
//! Invariants:
//! - Everything printed that came from a plugin or an error passes through the config's
//!   redactor, so values taken from the environment never reach the terminal.
//! - Plugins are loaded in this process, as `lockstep run` does.

use std::path::Path;

use lockstep_config::Config;
use lockstep_plugin_host::{no_redaction, ErrorKind, HostError, LoadedPlugin, Redactor};
use lockstep_protocol::arrow_types::json_value;
use lockstep_protocol::{Catalog, DataType, ReadMode, ReadRequest, Role};
use serde_json::{json, Value};

use super::{load_config, redactor, registry, CliError, CmdResult};
use crate::app::OutputFormat;
use crate::output::{out, outln, Table};

/// The options that pick what to open besides a connection name.
#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// Use this connector directly, without a config file; `--config` then takes the
    /// connection's config as a JSON object, e.g. --config '{"path": "crm.db"}'.
    #[arg(long)]
    pub connector: Option<String>,
    /// The role to open the connection in. By default, the roles the config's syncs use it
    /// in, or else its connector's source role when it has one.
    #[arg(long, value_enum)]
    pub role: Option<RoleArg>,
}

/// A role on the command line.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoleArg {
    Source,
    Destination,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Source => Role::Source,
            RoleArg::Destination => Role::Destination,
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Source => "source",
        Role::Destination => "destination",
    }
}

/// One connection, resolved to its plugin and config.
struct Target {
    /// The connection's name; `None` with `--connector`.
    connection: Option<String>,
    plugin: LoadedPlugin,
    config: Value,
    redact: Redactor,
    /// The roles the config's syncs use the connection in, source first.
    used_roles: Vec<Role>,
    /// Where to fix the connection's config, for hints.
    config_place: String,
}

impl Target {
    /// `connection `crm` (sqlite)`, or `connector `sqlite``.
    fn label(&self) -> String {
        match &self.connection {
            Some(name) => format!("connection `{name}` ({})", self.plugin.name()),
            None => format!("connector `{}`", self.plugin.name()),
        }
    }

    /// The roles to open it in: the one asked for, or the roles its syncs use, or else its
    /// source role when it has one.
    fn roles(&self, asked: Option<RoleArg>) -> Result<Vec<Role>, CliError> {
        let declared = &self.plugin.manifest.roles;
        if let Some(role) = asked.map(Role::from) {
            if !declared.contains(&role) {
                return Err(CliError::Message(format!(
                    "{} cannot be opened as a {}: connector `{}` declares only the {} role(s); \
                     leave out --role or pick a declared one",
                    self.label(),
                    role_name(role),
                    self.plugin.name(),
                    declared
                        .iter()
                        .map(|r| role_name(*r))
                        .collect::<Vec<_>>()
                        .join(" and ")
                )));
            }
            return Ok(vec![role]);
        }
        let used: Vec<Role> = self
            .used_roles
            .iter()
            .copied()
            .filter(|r| declared.contains(r))
            .collect();
        if !used.is_empty() {
            return Ok(used);
        }
        Ok(vec![if declared.contains(&Role::Source) {
            Role::Source
        } else {
            Role::Destination
        }])
    }

    /// What to do about an error of `kind`.
    fn hint(&self, error: &HostError) -> String {
        match error.kind() {
            ErrorKind::CONFIG => format!(
                "fix {}; `lockstep connectors inspect {}` shows the config it accepts",
                self.config_place,
                self.plugin.name()
            ),
            ErrorKind::AUTH => format!(
                "the system refused the credentials: check those in {} and the environment \
                 variables it reads",
                self.config_place
            ),
            ErrorKind::TRANSIENT | ErrorKind::RATE_LIMITED => {
                "the system is unreachable or busy right now: check that it is up and reachable \
                 from here, then try again"
                    .to_owned()
            }
            ErrorKind::SCHEMA => {
                "the system's data does not fit what the connector expects: compare the stream \
                 with `lockstep connectors discover`"
                    .to_owned()
            }
            _ => format!(
                "this looks like a bug in connector `{}`: report it with this message",
                self.plugin.name()
            ),
        }
    }
}

/// Resolves a connection of the config file, or `--connector` with `--config` as JSON.
fn resolve(
    config_arg: &Path,
    connection: Option<&str>,
    args: &TargetArgs,
) -> Result<Target, CliError> {
    if let Some(connector) = &args.connector {
        let text = config_arg.to_string_lossy();
        let trimmed = text.trim();
        if !trimmed.starts_with('{') {
            return Err(CliError::Message(format!(
                "with --connector, --config takes the connection's config as a JSON object, \
                 found `{trimmed}`; write e.g. --config '{{\"path\": \"crm.db\"}}' (or '{{}}'), \
                 or name a connection of the config file instead of --connector"
            )));
        }
        let config: Value = serde_json::from_str(trimmed).map_err(|e| {
            CliError::Message(format!(
                "--config is not valid JSON ({e}); write the connection's config as one JSON \
                 object, e.g. --config '{{\"path\": \"crm.db\"}}'"
            ))
        })?;
        if !config.is_object() {
            return Err(CliError::Message(
                "--config must be a JSON object, e.g. --config '{\"path\": \"crm.db\"}'".into(),
            ));
        }
        let plugin = registry(None).get(connector)?.clone();
        return Ok(Target {
            connection: None,
            plugin,
            config,
            redact: no_redaction(),
            used_roles: Vec::new(),
            config_place: "the --config JSON".to_owned(),
        });
    }
    let Some(name) = connection else {
        return Err(CliError::Message(
            "name a connection of the config file, or pass --connector NAME --config JSON".into(),
        ));
    };
    let config = load_config(config_arg)?;
    from_config(&config, name)
}

fn from_config(config: &Config, name: &str) -> Result<Target, CliError> {
    let Some(connection) = config.connections.get(name) else {
        let names: Vec<&str> = config.connections.keys().map(String::as_str).collect();
        return Err(CliError::Message(format!(
            "{}: no connection named `{name}`; defined connections: {}",
            config.path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let plugin = registry(Some(config)).get(&connection.connector)?.clone();
    let mut used_roles = Vec::new();
    if config
        .syncs
        .iter()
        .any(|s| s.spec.source.connection == name)
    {
        used_roles.push(Role::Source);
    }
    if config
        .syncs
        .iter()
        .any(|s| s.spec.destination.connection == name)
    {
        used_roles.push(Role::Destination);
    }
    Ok(Target {
        connection: Some(name.to_owned()),
        plugin,
        config: connection.config.clone(),
        redact: redactor(config),
        used_roles,
        config_place: format!("[connections.{name}.config] in {}", config.path.display()),
    })
}

/// Opens the target in `role` and runs `check`, then `discover` when asked.
async fn open_and(
    target: &Target,
    role: Role,
    discover: bool,
) -> Result<Option<Catalog>, HostError> {
    let redact = target.redact.clone();
    match role {
        Role::Source => {
            let mut source = target.plugin.open_source(&target.config, redact).await?;
            if discover {
                source.discover().await.map(Some)
            } else {
                source.check().await.map(|()| None)
            }
        }
        Role::Destination => {
            let mut dest = target
                .plugin
                .open_destination(&target.config, redact)
                .await?;
            if discover {
                dest.discover().await.map(Some)
            } else {
                dest.check().await.map(|()| None)
            }
        }
    }
}

pub async fn check(
    config: &Path,
    connection: Option<&str>,
    args: &TargetArgs,
    output: OutputFormat,
) -> CmdResult {
    let target = resolve(config, connection, args)?;
    let redact = target.redact.clone();
    let mut results = Vec::new();
    let mut failed = false;
    for role in target.roles(args.role)? {
        match open_and(&target, role, false).await {
            Ok(_) => {
                if output == OutputFormat::Text {
                    outln!("{} as a {}: ok", target.label(), role_name(role));
                }
                results.push(json!({ "role": role_name(role), "ok": true }));
            }
            Err(e) => {
                failed = true;
                let message = redact(&e.to_string());
                let hint = redact(&target.hint(&e));
                if output == OutputFormat::Text {
                    outln!("{} as a {}: failed", target.label(), role_name(role));
                    outln!("  error: {message}");
                    outln!("  hint: {hint}");
                }
                results.push(json!({
                    "role": role_name(role),
                    "ok": false,
                    "kind": e.kind().name(),
                    "error": message,
                    "hint": hint,
                }));
            }
        }
    }
    if output == OutputFormat::Json {
        let report = json!({
            "connection": target.connection,
            "connector": target.plugin.name(),
            "ok": !failed,
            "checks": results,
        });
        outln!("{}", serde_json::to_string_pretty(&report)?);
    }
    if failed {
        Err(CliError::Reported(1))
    } else {
        Ok(())
    }
}

pub async fn discover(
    config: &Path,
    connection: Option<&str>,
    args: &TargetArgs,
    output: OutputFormat,
) -> CmdResult {
    let target = resolve(config, connection, args)?;
    let redact = target.redact.clone();
    let role = target.roles(args.role)?[0];
    let catalog = match open_and(&target, role, true).await {
        Ok(catalog) => catalog.unwrap_or_default(),
        Err(e) => {
            return Err(CliError::Message(format!(
                "cannot read the catalog of {}: {}\n  hint: {}",
                target.label(),
                redact(&e.to_string()),
                redact(&target.hint(&e))
            )))
        }
    };
    let features = &target.plugin.manifest.features;
    if output == OutputFormat::Json {
        let report = json!({
            "connection": target.connection,
            "connector": target.plugin.name(),
            "role": role_name(role),
            "features": features,
            "streams": catalog.streams,
        });
        outln!("{}", redact(&serde_json::to_string_pretty(&report)?));
        return Ok(());
    }
    let mut text = format!(
        "{} as a {}\nfeatures: {}\n",
        target.label(),
        role_name(role),
        if features.is_empty() {
            "none".to_owned()
        } else {
            features.join(", ")
        }
    );
    if catalog.streams.is_empty() {
        text.push_str("no streams\n");
    }
    for stream in &catalog.streams {
        let list = |names: &[String]| {
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        };
        text.push_str(&format!(
            "\nstream {}  (key: {}; cursor candidates: {})\n",
            stream.name,
            list(&stream.primary_key),
            list(&stream.cursor_candidates)
        ));
        let mut table = Table::new(["FIELD", "TYPE", "NULLABLE", "NATIVE TYPE"]);
        for field in &stream.fields {
            table.row([
                field.name.clone(),
                field.data_type.describe(),
                if field.nullable { "yes" } else { "no" }.to_owned(),
                field.native_type.clone().unwrap_or_default(),
            ]);
        }
        text.push_str(&table.render());
        text.push('\n');
    }
    out!("{}", redact(&text));
    Ok(())
}

pub async fn read(
    config: &Path,
    stream: &str,
    limit: usize,
    args: &TargetArgs,
    output: OutputFormat,
) -> CmdResult {
    // CONNECTION.STREAM splits at the first dot, as endpoints in the config file do, so
    // stream names may contain dots.
    let (connection, stream) = if args.connector.is_some() {
        (None, stream)
    } else {
        match stream.split_once('.') {
            Some((c, s)) if !c.is_empty() && !s.is_empty() => (Some(c), s),
            _ => {
                return Err(CliError::Message(format!(
                    "`{stream}` is not CONNECTION.STREAM; write e.g. `lockstep connectors read \
                     crm.contacts`, or pass --connector NAME --config JSON and the stream alone"
                )))
            }
        }
    };
    let target = resolve(config, connection, args)?;
    if args.role == Some(RoleArg::Destination) {
        return Err(CliError::Message(
            "`connectors read` reads a source; leave out --role destination".into(),
        ));
    }
    if !target.plugin.manifest.roles.contains(&Role::Source) {
        return Err(CliError::Message(format!(
            "{} cannot be read: connector `{}` is not a source",
            target.label(),
            target.plugin.name()
        )));
    }
    let redact = target.redact.clone();
    let fail = |e: HostError, what: &str| {
        CliError::Message(format!(
            "{what} {}: {}\n  hint: {}",
            target.label(),
            redact(&e.to_string()),
            redact(&target.hint(&e))
        ))
    };
    let mut source = target
        .plugin
        .open_source(&target.config, redact.clone())
        .await
        .map_err(|e| fail(e, "cannot open"))?;
    let catalog = source
        .discover()
        .await
        .map_err(|e| fail(e, "cannot read the catalog of"))?;
    if catalog.stream(stream).is_none() {
        let names: Vec<&str> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
        return Err(CliError::Message(redact(&format!(
            "{} has no stream `{stream}`; its streams are: {} (`lockstep connectors discover` \
             lists them with their fields)",
            target.label(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        ))));
    }
    let request = ReadRequest {
        stream: stream.to_owned(),
        mode: ReadMode::Full,
        batch_size: Some(if limit == 0 {
            10_000
        } else {
            limit.min(10_000)
        }),
        dry_run: true,
        ..Default::default()
    };
    let mut reader = source
        .read(&request)
        .await
        .map_err(|e| fail(e, "cannot read"))?;
    let mut rows: Vec<serde_json::Map<String, Value>> = Vec::new();
    let mut columns: Vec<String> = Vec::new();
    let mut count = 0usize;
    let mut stopped = false;
    while let Some((batch, _checkpoint)) = reader
        .next()
        .await
        .map_err(|e| fail(e, "reading failed on"))?
    {
        let schema = batch.schema();
        if columns.is_empty() {
            columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        }
        for row in 0..batch.num_rows() {
            if limit != 0 && count == limit {
                stopped = true;
                break;
            }
            let record: serde_json::Map<String, Value> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let logical: Option<DataType> = DataType::from_arrow_field(f);
                    (f.name().clone(), json_value(batch.column(i), row, logical))
                })
                .collect();
            count += 1;
            if output == OutputFormat::Json {
                outln!("{}", redact(&Value::Object(record).to_string()));
            } else {
                rows.push(record);
            }
        }
        if stopped || (limit != 0 && count == limit) {
            stopped = true;
            break;
        }
    }
    // A read stopped at the limit is abandoned: the connector is told to stop.
    if stopped {
        source.cancel_handle().cancel();
    }
    drop(reader);
    if output == OutputFormat::Text {
        let mut table = Table::new(columns.clone());
        for record in &rows {
            table.row(columns.iter().map(|c| match record.get(c) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => "null".to_owned(),
                Some(other) => other.to_string(),
            }));
        }
        if !columns.is_empty() {
            outln!("{}", redact(&table.render()));
        }
    }
    eprintln!(
        "{count} record(s) read from stream `{stream}`{}",
        if stopped {
            format!(" (stopped at --limit {limit})")
        } else {
            String::new()
        }
    );
    Ok(())
}
