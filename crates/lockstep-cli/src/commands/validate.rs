//! `lockstep validate`: staged checks that report every problem with its location.
//!
//! Stages: the file (syntax, structure, references, environment; done by lockstep-config),
//! then the plugins (every connector exists, plays the role its syncs need and declares the
//! features their modes rely on), then, unless `--offline`, the live systems (each source
//! stream exists and the field mapping fits it).

use std::path::Path;

use lockstep_config::{Config, ConfigError, ConfigErrors};
use lockstep_core::SyncMode;
use lockstep_mapping::Mapper;
use lockstep_plugin_host::PluginRegistry;
use lockstep_protocol::Role;

use super::{load_config, print_config_errors, redactor, registry, CliError, CmdResult};
use crate::output::outln;

pub async fn run(path: &Path, offline: bool) -> CmdResult {
    let config = load_config(path)?;
    let registry = registry(Some(&config));
    let mut errors = plugin_errors(&config, &registry);
    if errors.is_empty() && !offline {
        errors.extend(live_errors(&config, &registry).await);
    }
    for failure in registry.failures() {
        eprintln!("warning: {failure}");
    }
    if !errors.is_empty() {
        print_config_errors(&ConfigErrors::new(config.path.clone(), errors));
        return Err(CliError::Reported(2));
    }
    outln!(
        "{}: valid ({} connections, {} syncs{})",
        config.path.display(),
        config.connections.len(),
        config.syncs.len(),
        if offline {
            "; live systems not checked"
        } else {
            "; streams and mappings checked against the live systems"
        }
    );
    Ok(())
}

fn plugin_errors(config: &Config, registry: &PluginRegistry) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let available = || {
        let names: Vec<&str> = registry.plugins().iter().map(|p| p.name()).collect();
        if names.is_empty() {
            "none were found".to_owned()
        } else {
            names.join(", ")
        }
    };
    for connection in config.connections.values() {
        if registry.get(&connection.connector).is_err() {
            errors.push(config.error_at(
                connection.connector_location,
                format!("connection `{}` uses connector `{}`, which is not installed", connection.name, connection.connector),
                format!("installed connectors: {}; run `lockstep connectors list` to see where plugins are looked for", available()),
            ));
        }
    }
    for sync in &config.syncs {
        let checks = [
            (
                &sync.spec.source.connection,
                Role::Source,
                sync.locations.source,
                "source",
            ),
            (
                &sync.spec.destination.connection,
                Role::Destination,
                sync.locations.destination,
                "destination",
            ),
        ];
        for (connection, role, location, side) in checks {
            let Some(c) = config.connections.get(connection.as_str()) else {
                continue;
            };
            if registry.get(&c.connector).is_ok() && !registry.supports(&c.connector, role) {
                errors.push(config.error_at(
                    location,
                    format!("sync `{}` uses connection `{connection}` as its {side}, but connector `{}` cannot be a {side}", sync.spec.name, c.connector),
                    format!("pick a connection whose connector supports the {side} role (see `lockstep connectors list`)"),
                ));
            }
        }
    }
    errors.extend(feature_errors(config, registry));
    errors
}

/// Syncs whose mode needs a feature (or role) their connectors do not declare. The engine
/// would otherwise fail only at run time, or, worse, read or write something else than the
/// mode promises. What each feature promises is in docs/connector-guide.md.
fn feature_errors(config: &Config, registry: &PluginRegistry) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let plugin = |connection: &str| {
        config
            .connections
            .get(connection)
            .and_then(|c| registry.get(&c.connector).ok())
    };
    let hint_tail = "`lockstep connectors list --output json` shows each connector's features, \
                     and docs/connector-guide.md what each one means";
    for sync in &config.syncs {
        let spec = &sync.spec;
        let mode_location = sync.locations.mode.unwrap_or(sync.location);
        let mode = match spec.mode {
            SyncMode::Full => "full",
            SyncMode::Incremental => "incremental",
            SyncMode::Mirror => "mirror",
            SyncMode::TwoWay => "two-way",
            SyncMode::Cdc => "cdc",
        };
        let source = plugin(&spec.source.connection);
        let destination = plugin(&spec.destination.connection);
        let lacks = |p: &lockstep_plugin_host::LoadedPlugin, feature: &str| {
            !p.manifest.features.iter().any(|f| f == feature)
        };
        if let Some(source) = source {
            if spec.mode == SyncMode::Cdc && lacks(source, "cdc") {
                errors.push(config.error_at(
                    mode_location,
                    format!(
                        "sync `{}` uses mode `cdc`, which reads the source's change log, but its \
                         source connector `{}` (connection `{}`) does not declare the `cdc` \
                         feature",
                        spec.name,
                        source.name(),
                        spec.source.connection
                    ),
                    format!("use mode = \"mirror\", or a PostgreSQL source; {hint_tail}"),
                ));
            }
            if spec.mode != SyncMode::Cdc && spec.reads_by_cursor() && lacks(source, "incremental")
            {
                errors.push(config.error_at(
                    mode_location,
                    format!(
                        "sync `{}` uses mode `{mode}`, which reads only what changed since the \
                         last run, but its source connector `{}` (connection `{}`) does not \
                         declare the `incremental` feature",
                        spec.name,
                        source.name(),
                        spec.source.connection
                    ),
                    format!(
                        "use mode = \"full\" for this sync, or a source whose connector \
                         declares `incremental`; {hint_tail}"
                    ),
                ));
            }
        }
        let Some(destination) = destination else {
            continue;
        };
        if spec.mode.propagates_deletes() && lacks(destination, "delete") {
            errors.push(config.error_at(
                mode_location,
                format!(
                    "sync `{}` uses mode `mirror`, which deletes from its destination the \
                     records deleted in the source, but its destination connector `{}` \
                     (connection `{}`) does not declare the `delete` feature",
                    spec.name,
                    destination.name(),
                    spec.destination.connection
                ),
                format!(
                    "use mode = \"incremental\" (no deletes) for this sync, or a destination \
                     whose connector declares `delete`; {hint_tail}"
                ),
            ));
        }
        if spec.mode == SyncMode::Mirror
            && spec.delete.reconcile_every > 0
            && !destination.manifest.roles.contains(&Role::Source)
        {
            errors.push(config.error_at(
                mode_location,
                format!(
                    "sync `{}` reconciles key sets (mode `mirror` with reconcile_every = {}), \
                     which reads the destination's keys, but its destination connector `{}` \
                     (connection `{}`) cannot be read: it is not a source",
                    spec.name,
                    spec.delete.reconcile_every,
                    destination.name(),
                    spec.destination.connection
                ),
                "set reconcile_every = 0 and mark deletes with a `tombstone` field, or use a \
                 destination whose connector is also a source",
            ));
        }
    }
    errors
}

async fn live_errors(config: &Config, registry: &PluginRegistry) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let redact = redactor(config);
    for sync in &config.syncs {
        let spec = &sync.spec;
        let Some(connection) = config.connections.get(&spec.source.connection) else {
            continue;
        };
        let Ok(plugin) = registry.get(&connection.connector) else {
            continue;
        };
        let catalog = async {
            let mut source = plugin
                .open_source(&connection.config, redact.clone())
                .await?;
            source.discover().await
        }
        .await;
        let catalog = match catalog {
            Ok(c) => c,
            Err(e) => {
                errors.push(config.error_at(
                    connection.location,
                    format!("cannot read the catalog of connection `{}`: {}", connection.name, redact(&e.to_string())),
                    "check the connection's config and that the system is reachable; `--offline` skips this stage",
                ));
                continue;
            }
        };
        let Some(stream) = catalog.stream(&spec.source.stream) else {
            let names: Vec<&str> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
            errors.push(config.error_at(
                sync.locations.source,
                format!(
                    "sync `{}`: connection `{}` has no stream `{}`",
                    spec.name, spec.source.connection, spec.source.stream
                ),
                format!(
                    "its streams are: {}",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
            continue;
        };
        match Mapper::new(spec, stream) {
            Err(e) => {
                // Point at the field's own line when the error is about one field.
                let location = e
                    .target()
                    .and_then(|t| spec.fields.iter().position(|f| f.target == t))
                    .and_then(|i| sync.locations.fields.get(i))
                    .map_or(sync.location, |f| f.source);
                errors.push(config.error_at(
                    location,
                    e.to_string(),
                    "fix the sync's `fields`, `key` or `cursor` to match the source stream",
                ));
            }
            Ok(mapper) => {
                for (field, reason) in mapper.nullable_key_fields() {
                    eprintln!(
                        "warning: sync `{}`: key field `{field}` can be null ({reason}); records without a key are rejected",
                        spec.name
                    );
                }
            }
        }
        let Some(dest) = config.connections.get(&spec.destination.connection) else {
            continue;
        };
        let Ok(dest_plugin) = registry.get(&dest.connector) else {
            continue;
        };
        let checked = async {
            let mut d = dest_plugin
                .open_destination(&dest.config, redact.clone())
                .await?;
            d.check().await
        }
        .await;
        if let Err(e) = checked {
            errors.push(config.error_at(
                dest.location,
                format!("cannot reach connection `{}`: {}", dest.name, redact(&e.to_string())),
                "check the connection's config and that the system is reachable; `--offline` skips this stage",
            ));
        }
    }
    errors
}
