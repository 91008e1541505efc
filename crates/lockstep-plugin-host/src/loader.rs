//! Finding, loading and checking plugin files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use abi_stable::library::{lib_header_from_path, LibraryError, RootModule};
use lockstep_plugin_api::{ConnectorModuleRef, ABI_MAJOR};
use lockstep_protocol::{Manifest, Role};
use serde_json::Value;

use crate::handles::{open_destination, open_source, DestinationHandle, SourceHandle};
use crate::{HostError, Redactor};

/// The file-name stem every plugin library has after the platform's `lib` prefix.
const PLUGIN_PREFIX: &str = "lockstep_connector_";

/// Modules already initialized, by canonical path. abi_stable initializes a library's root
/// module once per process, so a second load of the same file must reuse the first.
static LOADED: Mutex<Option<HashMap<PathBuf, ConnectorModuleRef>>> = Mutex::new(None);

/// A plugin library that loaded and passed the version and layout checks.
#[derive(Clone)]
pub struct LoadedPlugin {
    pub path: PathBuf,
    pub manifest: Manifest,
    module: ConnectorModuleRef,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("path", &self.path)
            .field("name", &self.manifest.name)
            .finish()
    }
}

/// The connector name a plugin file's name gives (`sqlite` for
/// `liblockstep_connector_sqlite.so`), if it is named like a plugin library of this platform.
fn plugin_stem(path: &Path) -> Option<&str> {
    let name = path.file_name()?.to_str()?;
    let stem = name.strip_prefix("lib").unwrap_or(name);
    let rest = stem.strip_prefix(PLUGIN_PREFIX)?;
    rest.strip_suffix(std::env::consts::DLL_SUFFIX)
        .filter(|connector| !connector.is_empty())
}

impl LoadedPlugin {
    /// Loads the plugin at `path`, checking its ABI version and layout, and reads its manifest.
    pub fn load(path: &Path) -> Result<Self, HostError> {
        let canonical = path.canonicalize().map_err(|e| HostError::NotAPlugin {
            path: path.to_owned(),
            reason: format!("cannot open it: {e}"),
        })?;
        let cached = LOADED
            .lock()
            .ok()
            .and_then(|m| m.as_ref().and_then(|m| m.get(&canonical).copied()));
        let module = match cached {
            Some(module) => module,
            None => {
                let module = init_module(&canonical)?;
                if let Ok(mut map) = LOADED.lock() {
                    map.get_or_insert_with(HashMap::new)
                        .insert(canonical, module);
                }
                module
            }
        };
        let manifest = read_manifest(path, module)?;
        Ok(Self {
            path: path.to_owned(),
            manifest,
            module,
        })
    }

    /// The connector's name, as configs refer to it.
    pub fn name(&self) -> &str {
        &self.manifest.name
    }

    /// Builds a source from a connection's config.
    pub async fn open_source(
        &self,
        config: &Value,
        redactor: Redactor,
    ) -> Result<SourceHandle, HostError> {
        open_source(self.module, self.name(), config, redactor).await
    }

    /// Builds a destination from a connection's config.
    pub async fn open_destination(
        &self,
        config: &Value,
        redactor: Redactor,
    ) -> Result<DestinationHandle, HostError> {
        open_destination(self.module, self.name(), config, redactor).await
    }
}

fn init_module(path: &Path) -> Result<ConnectorModuleRef, HostError> {
    let not_a_plugin = |reason: String| HostError::NotAPlugin {
        path: path.to_owned(),
        reason,
    };
    let header = lib_header_from_path(path).map_err(|e| match e {
        LibraryError::OpenError { err, .. } => {
            not_a_plugin(format!("it is not a loadable library: {err}"))
        }
        LibraryError::GetSymbolError { .. } => {
            not_a_plugin("it exports no abi_stable root module".into())
        }
        other => not_a_plugin(other.to_string()),
    })?;
    let consts = header.root_mod_consts();
    if consts.base_name().as_str() != ConnectorModuleRef::BASE_NAME {
        return Err(not_a_plugin(format!(
            "it is an abi_stable library of another kind (`{}`)",
            consts.base_name()
        )));
    }
    let found = header.version_strings();
    let found_text = found.version.to_string();
    let found_major = found_text
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    if found_major != Some(ABI_MAJOR) {
        return Err(HostError::IncompatibleAbi {
            path: path.to_owned(),
            found: found_text,
            expected: ABI_MAJOR,
        });
    }
    header
        .init_root_module::<ConnectorModuleRef>()
        .map_err(|e| match e {
            LibraryError::AbiInstability(details) => HostError::LayoutMismatch {
                path: path.to_owned(),
                details: first_lines(&details.to_string(), 12),
            },
            LibraryError::IncompatibleVersionNumber { actual_version, .. } => {
                HostError::IncompatibleAbi {
                    path: path.to_owned(),
                    found: actual_version.to_string(),
                    expected: ABI_MAJOR,
                }
            }
            other => not_a_plugin(format!("its root module failed to initialize: {other}")),
        })
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join(" ")
}

fn read_manifest(path: &Path, module: ConnectorModuleRef) -> Result<Manifest, HostError> {
    let bad = |reason: String| HostError::BadManifest {
        path: path.to_owned(),
        reason,
    };
    let text = (module.manifest())();
    let value: Value =
        serde_json::from_str(text.as_str()).map_err(|e| bad(format!("it is not JSON: {e}")))?;
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(bad(error.to_owned()));
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| bad(format!("it does not fit the schema: {e}")))?;
    let valid_name = !manifest.name.is_empty()
        && manifest
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid_name {
        return Err(bad(format!(
            "the name `{}` must be lower-case letters, digits, `-` and `_`",
            manifest.name
        )));
    }
    if manifest.roles.is_empty() {
        return Err(bad("it declares no role (source or destination)".into()));
    }
    Ok(manifest)
}

/// The system-wide plugin directory, searched last. Distribution builds set it at compile time
/// through the `LOCKSTEP_SYSTEM_CONNECTOR_DIR` environment variable (see docs/packaging.md);
/// the default is where the Debian package installs its plugins.
pub const SYSTEM_CONNECTOR_DIR: &str = match option_env!("LOCKSTEP_SYSTEM_CONNECTOR_DIR") {
    Some(dir) => dir,
    None => "/usr/lib/lockstep/connectors",
};

/// The directories searched for plugins, in order: those from the config file, those in
/// `LOCKSTEP_CONNECTOR_PATH` (separated like `PATH`), then next to the running binary (the
/// binary's own `connectors/` subdirectory, `../lib/lockstep/connectors` for installs under a
/// prefix, and the binary's own directory), then [`SYSTEM_CONNECTOR_DIR`]. A directory listed
/// twice is searched once, at its first place.
pub fn default_search_path(config_paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = config_paths.to_vec();
    if let Some(var) = std::env::var_os("LOCKSTEP_CONNECTOR_PATH") {
        dirs.extend(std::env::split_paths(&var).filter(|p| !p.as_os_str().is_empty()));
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_owned))
    {
        dirs.push(exe_dir.join("connectors"));
        dirs.push(exe_dir.join("../lib/lockstep/connectors"));
        dirs.push(exe_dir);
    }
    if !SYSTEM_CONNECTOR_DIR.is_empty() {
        dirs.push(PathBuf::from(SYSTEM_CONNECTOR_DIR));
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let key = d.canonicalize().unwrap_or_else(|_| d.clone());
        if seen.contains(&key) {
            false
        } else {
            seen.push(key);
            true
        }
    });
    dirs
}

/// Every plugin found in a list of directories.
#[derive(Debug, Default)]
pub struct PluginRegistry {
    plugins: Vec<LoadedPlugin>,
    searched: Vec<PathBuf>,
    failures: Vec<HostError>,
}

impl PluginRegistry {
    /// Loads every plugin file in `dirs`. Files that fail to load are kept as failures (see
    /// [`PluginRegistry::failures`]) so that one broken plugin does not hide the others.
    /// When two files have the same connector name, the first directory wins and the second
    /// is recorded as a failure.
    pub fn scan(dirs: &[PathBuf]) -> Self {
        Self::scan_where(dirs, |_| true)
    }

    /// Loads the plugin files in `dirs` whose connector name (by file name) `keep` accepts,
    /// directory by directory in order, each directory's files sorted by name.
    fn scan_where(dirs: &[PathBuf], keep: impl Fn(&str) -> bool) -> Self {
        let mut registry = PluginRegistry {
            searched: dirs.to_vec(),
            ..Default::default()
        };
        for dir in dirs {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| plugin_stem(p).is_some_and(&keep))
                .collect();
            files.sort();
            for file in files {
                registry.add_file(&file);
            }
        }
        registry
    }

    /// Loads only the plugins of the connectors named in `names`, found by their file names
    /// (`liblockstep_connector_<name>`, a `-` in the name written `_`), so that a run does not
    /// map and initialize every plugin installed: each costs start-up time and several MiB of
    /// resident memory. Files named for a wanted connector are loaded from every directory, so
    /// a duplicate is still reported. When a wanted connector has no file of its name, or the
    /// file under its name declares another connector, every plugin is loaded as
    /// [`PluginRegistry::scan`] does: a plugin whose file name differs from its connector's
    /// name is still found.
    pub fn scan_for(dirs: &[PathBuf], names: &[&str]) -> Self {
        let wanted: Vec<String> = names.iter().map(|n| n.replace('-', "_")).collect();
        let registry = Self::scan_where(dirs, |stem| wanted.iter().any(|w| w == stem));
        if names.iter().all(|name| registry.get(name).is_ok()) {
            registry
        } else {
            Self::scan(dirs)
        }
    }

    /// Loads one plugin file into the registry.
    pub fn add_file(&mut self, file: &Path) {
        match LoadedPlugin::load(file) {
            Ok(plugin) => {
                if let Some(first) = self.plugins.iter().find(|p| p.name() == plugin.name()) {
                    let same = first.path.canonicalize().ok() == file.canonicalize().ok();
                    if !same {
                        self.failures.push(HostError::Duplicate {
                            name: plugin.name().to_owned(),
                            first: first.path.clone(),
                            second: file.to_owned(),
                        });
                    }
                } else {
                    self.plugins.push(plugin);
                }
            }
            Err(e) => self.failures.push(e),
        }
    }

    /// The plugins that loaded, in search order.
    pub fn plugins(&self) -> &[LoadedPlugin] {
        &self.plugins
    }

    /// The plugin files that did not load, with the reason.
    pub fn failures(&self) -> &[HostError] {
        &self.failures
    }

    /// The plugin named `name`, or an error listing where it was looked for and what exists.
    pub fn get(&self, name: &str) -> Result<&LoadedPlugin, HostError> {
        self.plugins
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| HostError::NotFound {
                name: name.to_owned(),
                searched: self
                    .searched
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                available: if self.plugins.is_empty() {
                    "none".to_owned()
                } else {
                    self.plugins
                        .iter()
                        .map(|p| p.name().to_owned())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            })
    }

    /// Whether plugin `name` exists and plays `role`.
    pub fn supports(&self, name: &str, role: Role) -> bool {
        self.get(name)
            .map(|p| p.manifest.roles.contains(&role))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_directory_is_searched_last_after_the_config_paths() {
        let config_dir = std::env::temp_dir().join("lockstep-search-path-config-dir");
        let dirs = default_search_path(std::slice::from_ref(&config_dir));
        assert_eq!(dirs.first(), Some(&config_dir));
        assert_eq!(
            dirs.last().map(PathBuf::as_path),
            Some(Path::new(SYSTEM_CONNECTOR_DIR))
        );
    }

    #[test]
    fn plugin_file_names_are_recognized() {
        let so = std::env::consts::DLL_SUFFIX;
        let stem = |name: String| plugin_stem(Path::new(&name)).map(str::to_owned);
        assert_eq!(
            stem(format!("/x/liblockstep_connector_sqlite{so}")).as_deref(),
            Some("sqlite")
        );
        assert_eq!(
            stem(format!("lockstep_connector_a{so}")).as_deref(),
            Some("a")
        );
        assert_eq!(stem(format!("/x/liblockstep_connector_{so}")), None);
        assert_eq!(stem(format!("/x/libsqlite3{so}")), None);
        assert_eq!(
            stem("/x/liblockstep_connector_sqlite.rlib".to_owned()),
            None
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_with_its_path() {
        let dir = std::env::temp_dir().join(format!("lockstep-host-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!(
            "liblockstep_connector_fake{}",
            std::env::consts::DLL_SUFFIX
        ));
        std::fs::write(&file, b"not a library").unwrap();
        let registry = PluginRegistry::scan(std::slice::from_ref(&dir));
        assert!(registry.plugins().is_empty());
        let message = registry.failures()[0].to_string();
        assert!(message.contains("liblockstep_connector_fake"), "{message}");
        assert!(message.contains("not a loadable library"), "{message}");
        let missing = registry.get("sqlite").unwrap_err().to_string();
        assert!(missing.contains("no connector named `sqlite`"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
