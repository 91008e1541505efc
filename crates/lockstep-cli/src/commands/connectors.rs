//! `lockstep connectors list|inspect`.

use std::path::Path;

use lockstep_plugin_host::LoadedPlugin;

use super::{registry, CliError, CmdResult};
use crate::app::OutputFormat;
use crate::output::{outln, Table};

/// The config when its file exists; connectors can be listed without one.
fn optional_config(path: &Path) -> Result<Option<lockstep_config::Config>, CliError> {
    if path.exists() {
        super::load_config(path).map(Some)
    } else {
        Ok(None)
    }
}

pub async fn list(config: &Path, output: OutputFormat) -> CmdResult {
    let config = optional_config(config)?;
    let registry = registry(config.as_ref());
    if output == OutputFormat::Json {
        let plugins: Vec<_> = registry
            .plugins()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "name": p.manifest.name,
                    "version": p.manifest.version,
                    "roles": p.manifest.roles,
                    "features": p.manifest.features,
                    "abi_version": p.manifest.abi_version,
                    "path": p.path,
                })
            })
            .collect();
        let failures: Vec<String> = registry.failures().iter().map(|e| e.to_string()).collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "connectors": plugins, "failures": failures })
            )?
        );
        return Ok(());
    }
    let mut table = Table::new(["NAME", "VERSION", "ROLES", "ABI", "PATH"]);
    for p in registry.plugins() {
        let roles: Vec<String> = p
            .manifest
            .roles
            .iter()
            .map(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            })
            .collect();
        table.row([
            p.manifest.name.clone(),
            p.manifest.version.clone(),
            roles.join(","),
            p.manifest.abi_version.clone(),
            p.path.display().to_string(),
        ]);
    }
    if table.is_empty() {
        outln!("No connector plugins found. Put plugins (liblockstep_connector_<name>.so) next to the lockstep binary, in a directory listed under [connectors] paths, or in LOCKSTEP_CONNECTOR_PATH.");
    } else {
        outln!("{}", table.render());
    }
    for failure in registry.failures() {
        eprintln!("warning: {failure}");
    }
    Ok(())
}

pub async fn inspect(config: &Path, plugin: &str) -> CmdResult {
    let as_path = Path::new(plugin);
    let loaded = if as_path.exists() {
        LoadedPlugin::load(as_path)?
    } else {
        let config = optional_config(config)?;
        registry(config.as_ref()).get(plugin)?.clone()
    };
    let m = &loaded.manifest;
    outln!("name:         {}", m.name);
    outln!("version:      {}", m.version);
    if !m.description.is_empty() {
        outln!("description:  {}", m.description);
    }
    outln!("file:         {}", loaded.path.display());
    outln!(
        "plugin API:   {} (this lockstep speaks {}.x, API {})",
        m.abi_version,
        lockstep_plugin_api_major(),
        lockstep_plugin_api_version()
    );
    outln!("SDK:          {}", m.sdk_version);
    outln!(
        "roles:        {}",
        serde_json::to_string(&m.roles)?
            .trim_matches(|c| c == '[' || c == ']')
            .replace('"', "")
    );
    outln!("features:     {}", m.features.join(", "));
    outln!(
        "config schema:\n{}",
        serde_json::to_string_pretty(&m.config_schema)?
    );
    Ok(())
}

fn lockstep_plugin_api_major() -> u32 {
    lockstep_plugin_host::ABI_MAJOR
}

fn lockstep_plugin_api_version() -> &'static str {
    lockstep_plugin_host::ABI_VERSION
}
