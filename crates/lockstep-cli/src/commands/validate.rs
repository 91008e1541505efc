//! `lockstep validate`: staged checks that report every problem with its location.
//!
//! Stages: the file (syntax, structure, references, environment; done by lockstep-config),
//! then the plugins (every connector exists and plays the role its syncs need), then, unless
//! `--offline`, the live systems (each source stream exists and the field mapping fits it).

use std::path::Path;

use lockstep_config::{Config, ConfigError, ConfigErrors};
use lockstep_mapping::Mapper;
use lockstep_plugin_host::PluginRegistry;
use lockstep_protocol::Role;

use super::{load_config, print_config_errors, redactor, registry, CliError, CmdResult};

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
    println!(
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
