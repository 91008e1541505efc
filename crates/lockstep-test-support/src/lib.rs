//! The conformance kit for Lockstep connectors.
//!
//! It loads a *built* connector library through the same code Lockstep itself uses
//! (`lockstep-plugin-host`) and checks that the connector keeps the contract every
//! connector must keep:
//!
//! - the library loads, and its manifest is valid: a name, a semantic version, at least one
//!   role, a config JSON Schema that is an object, and the ABI version this host speaks;
//! - a bad config is refused with an error of kind `config` (not a panic, not a crash);
//! - discover returns a catalog whose streams have fields, including the stream under test;
//! - a full read returns batches whose Arrow schema is exactly the catalog's fields (as
//!   `lockstep_protocol::arrow_types::arrow_schema` maps them: names, types, nullability),
//!   no larger than the requested batch size, each with a JSON checkpoint;
//! - reading again from a checkpoint, in full and in incremental mode, delivers no row that
//!   was already delivered and misses none (skipped when the connector does not support it);
//! - as a destination: `open_stream` creates a new stream, an upsert then a flush makes the
//!   rows durable, a *second* source instance on the same config reads back exactly those
//!   rows (when the connector plays both roles), upserting the same keys again updates
//!   without duplicating, and delete removes rows.
//!
//! Use it as a dev-dependency, in the connector's own tests, against the library that
//! `cargo test` builds (a connector's crate types include `cdylib`), and end with
//! [`Report::assert_passed`], which fails the test when any check failed and prints every
//! check with its reason:
//!
//! ```no_run
//! # async fn example() {
//! use lockstep_test_support::{cdylib_path, Conformance};
//! use serde_json::json;
//!
//! let report = Conformance::new(cdylib_path("lockstep_connector_example"))
//!     .source_config(json!({ "dir": "tests/data" }))
//!     .stream("contacts")
//!     .destination_config(json!({ "dir": "/tmp/scratch" }))
//!     .run()
//!     .await
//!     .assert_passed();
//! println!("{report}");
//! # }
//! ```
//!
//! The roles come from the connector's manifest: give a config for each role it plays (a
//! source-only connector needs no destination config). A role it plays without a config is
//! reported as skipped, a config for a role it does not play as a failure.
//!
//! [`check_source`] and [`check_destination`] run one role's checks and return the
//! [`Report`] whatever happens. The destination checks write a new stream named
//! `lockstep_conformance_<unique>` and leave it there: point the destination config at a
//! scratch database or directory.
//!
//! Invariants: the kit never panics because of what a plugin does (every misbehaviour is a
//! failed check with a reason, and every call has a timeout), and it talks to plugins only
//! through `lockstep-plugin-host`, so a connector that passes here loads and behaves the
//! same way in Lockstep.

mod destination;
#[cfg(feature = "live-db")]
pub mod live_db;
pub mod mailman;
pub mod medusa;
mod report;
mod service_home;
pub mod skip;
mod source;
pub mod tryton;
mod util;

/// The Arrow crate the kit (and the host) use, for building batches in tests.
pub use arrow;
#[cfg(feature = "live-db")]
pub use live_db::{LiveDb, Server};
pub use report::{Check, Failures, Outcome, Report};

use std::path::{Path, PathBuf};
use std::time::Duration;

use lockstep_plugin_host::LoadedPlugin;
use lockstep_protocol::Role;
use serde_json::Value;

use crate::report::Recorder;

/// Check names, so that tests can look individual results up with [`Report::check`].
pub mod checks {
    pub const LOAD: &str = "the library loads";
    pub const MANIFEST: &str = "the manifest is valid";
    pub const SOURCE_BAD_CONFIG: &str = "source: a bad config is refused as a config error";
    pub const SOURCE_OPEN: &str = "source: opens and passes check";
    pub const SOURCE_DISCOVER: &str = "source: discover returns the stream with fields";
    pub const SOURCE_FULL_READ: &str = "source: a full read matches the catalog";
    pub const SOURCE_RESUME_FULL: &str = "source: a full read resumes after its checkpoint";
    pub const SOURCE_RESUME_INCREMENTAL: &str =
        "source: an incremental read resumes after its checkpoint";
    pub const DESTINATION_BAD_CONFIG: &str =
        "destination: a bad config is refused as a config error";
    pub const DESTINATION_OPEN: &str = "destination: opens and passes check";
    pub const DESTINATION_OPEN_STREAM: &str = "destination: open_stream creates a new stream";
    pub const DESTINATION_UPSERT: &str = "destination: upsert then flush succeeds";
    pub const DESTINATION_READ_BACK: &str =
        "destination: a new source instance reads back exactly the rows written";
    pub const DESTINATION_UPSERT_AGAIN: &str =
        "destination: upserting the same keys again updates without duplicating";
    pub const DESTINATION_DELETE: &str = "destination: delete removes rows by key";
}

/// The checks to run against one connector library; see the crate documentation.
#[derive(Debug, Clone)]
pub struct Conformance {
    plugin: PathBuf,
    source_config: Option<Value>,
    destination_config: Option<Value>,
    stream: Option<String>,
    bad_configs: Vec<Value>,
    batch_size: usize,
    cursor_field: Option<String>,
    timeout: Duration,
}

impl Conformance {
    /// Checks the connector library at `plugin` (see [`cdylib_path`]).
    pub fn new(plugin: impl Into<PathBuf>) -> Self {
        Self {
            plugin: plugin.into(),
            source_config: None,
            destination_config: None,
            stream: None,
            // A JSON number fits no connector's config object.
            bad_configs: vec![Value::from(42)],
            batch_size: 2,
            cursor_field: None,
            timeout: Duration::from_secs(60),
        }
    }

    /// Runs the source checks with this config.
    pub fn source_config(mut self, config: Value) -> Self {
        self.source_config = Some(config);
        self
    }

    /// Runs the destination checks with this config (and reads back with it, as a source,
    /// when the connector plays both roles).
    pub fn destination_config(mut self, config: Value) -> Self {
        self.destination_config = Some(config);
        self
    }

    /// The source stream to read; the catalog's first stream when not given. Give it rows:
    /// more than the batch size, so that resuming from a checkpoint mid-way is checked.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.stream = Some(name.into());
        self
    }

    /// Another config that must be refused with kind `config` (for instance one missing a
    /// required key). The default list holds one config that is not an object.
    pub fn bad_config(mut self, config: Value) -> Self {
        self.bad_configs.push(config);
        self
    }

    /// The batch size of the reads (default 2, so that small test data spans batches).
    pub fn batch_size(mut self, rows: usize) -> Self {
        self.batch_size = rows.max(1);
        self
    }

    /// The cursor field of the incremental read; the stream's first cursor candidate when
    /// not given.
    pub fn cursor_field(mut self, field: impl Into<String>) -> Self {
        self.cursor_field = Some(field.into());
        self
    }

    /// How long one call into the plugin may take (default 60 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs every check and returns the report, passed or not.
    ///
    /// The report must be looked at, or the test cannot fail: end with
    /// [`Report::assert_passed`], which panics listing every check when any failed.
    ///
    /// The checks run on a runtime of their own, on a thread of their own, so that the
    /// caller's runtime (if any, and of whatever flavour) is not involved.
    #[must_use = "a conformance report that nobody checks cannot fail: end with `.assert_passed()`"]
    pub async fn run(self) -> Report {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let plugin = self.plugin.clone();
        std::thread::spawn(move || {
            let _ = tx.send(self.run_blocking());
        });
        rx.await
            .unwrap_or_else(|_| Report::crashed(plugin, "the conformance kit's thread panicked"))
    }

    /// Like [`Conformance::run`], for code that is not async.
    #[must_use = "a conformance report that nobody checks cannot fail: end with `.assert_passed()`"]
    pub fn run_blocking(self) -> Report {
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => return Report::crashed(self.plugin, format!("cannot start a runtime: {e}")),
        };
        runtime.block_on(self.check_all())
    }

    /// The same as [`Conformance::run`], under its former name.
    #[doc(hidden)]
    #[must_use = "a conformance report that nobody checks cannot fail: end with `.assert_passed()`"]
    pub async fn report(self) -> Report {
        self.run().await
    }

    /// The same as [`Conformance::run_blocking`], under its former name.
    #[doc(hidden)]
    #[must_use = "a conformance report that nobody checks cannot fail: end with `.assert_passed()`"]
    pub fn report_blocking(self) -> Report {
        self.run_blocking()
    }

    async fn check_all(self) -> Report {
        let mut r = Recorder::new(&self.plugin, self.timeout);
        let Some(plugin) = load(&mut r, &self.plugin) else {
            return r.finish();
        };
        if self.source_config.is_none() && self.destination_config.is_none() {
            r.fail(
                checks::MANIFEST,
                "nothing to check: give a source_config and/or a destination_config",
            );
            return r.finish();
        }
        // The roles come from the manifest: a role the connector does not play needs no
        // config, and a role it plays without a config here is reported as not checked.
        match &self.source_config {
            Some(config) => {
                if has_role(&mut r, &plugin, Role::Source, "source") {
                    source::check(&mut r, &plugin, config, &self).await;
                }
            }
            None => not_configured(&mut r, &plugin, Role::Source),
        }
        match &self.destination_config {
            Some(config) => {
                if has_role(&mut r, &plugin, Role::Destination, "destination") {
                    destination::check(&mut r, &plugin, config, &self).await;
                }
            }
            None => not_configured(&mut r, &plugin, Role::Destination),
        }
        r.finish()
    }
}

/// Runs the load, manifest and source checks for `stream` of the source `config`.
pub async fn check_source(plugin_path: &Path, config: &Value, stream: &str) -> Report {
    Conformance::new(plugin_path)
        .source_config(config.clone())
        .stream(stream)
        .run()
        .await
}

/// Runs the load, manifest and destination checks with `config`, reading back through a
/// source on the same config when the connector plays both roles.
pub async fn check_destination(plugin_path: &Path, config: &Value) -> Report {
    Conformance::new(plugin_path)
        .destination_config(config.clone())
        .run()
        .await
}

/// Where `cargo test` put the library of crate `lib_name` (such as
/// `lockstep_connector_example`): beside the running test binary in `<target>/<profile>/deps/`
/// (where `cargo test` leaves it), else in `<target>/<profile>/` (where `cargo build` puts
/// it), which follows `CARGO_TARGET_DIR` and the profile; else in
/// `<CARGO_TARGET_DIR or ./target>/debug`.
pub fn cdylib_path(lib_name: &str) -> PathBuf {
    let file = format!(
        "{}{lib_name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    if let Ok(exe) = std::env::current_exe() {
        let deps = exe.parent();
        let candidates = [deps, deps.and_then(Path::parent)];
        for dir in candidates.into_iter().flatten() {
            if dir.join(&file).exists() {
                return dir.join(&file);
            }
        }
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("CARGO_MANIFEST_DIR").map(|d| PathBuf::from(d).join("target")))
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("debug").join(file)
}

fn load(r: &mut Recorder, path: &Path) -> Option<LoadedPlugin> {
    let plugin = match LoadedPlugin::load(path) {
        Ok(plugin) => plugin,
        Err(e) => {
            r.fail(checks::LOAD, e.to_string());
            return None;
        }
    };
    r.pass(checks::LOAD, format!("connector `{}`", plugin.name()));
    r.set_connector(plugin.name());
    match util::manifest_problems(&plugin.manifest) {
        problems if problems.is_empty() => r.pass(
            checks::MANIFEST,
            format!(
                "version {}, API {}",
                plugin.manifest.version, plugin.manifest.abi_version
            ),
        ),
        problems => r.fail(checks::MANIFEST, problems.join("; ")),
    }
    Some(plugin)
}

/// Records, as skipped, the checks of a role the manifest declares but that was given no
/// config.
fn not_configured(r: &mut Recorder, plugin: &LoadedPlugin, role: Role) {
    if !plugin.manifest.roles.contains(&role) {
        return;
    }
    let (name, what, method) = match role {
        Role::Source => (checks::SOURCE_OPEN, "source", "source_config"),
        Role::Destination => (
            checks::DESTINATION_OPEN,
            "destination",
            "destination_config",
        ),
    };
    r.skip(
        name,
        format!(
            "the manifest declares the {what} role, but no {what} config was given: \
             call `.{method}(...)` to check it"
        ),
    );
}

fn has_role(r: &mut Recorder, plugin: &LoadedPlugin, role: Role, what: &str) -> bool {
    if plugin.manifest.roles.contains(&role) {
        return true;
    }
    r.fail(
        checks::MANIFEST,
        format!("a {what} config was given, but the manifest declares no {what} role"),
    );
    false
}
