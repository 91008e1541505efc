//! Loads connector plugins and drives them safely from async code.
//!
//! This is the only crate that loads dynamic libraries, and nearly all of Lockstep's
//! `unsafe` lives in the ABI glue it uses. It finds plugin files in the connector
//! directories, checks each one's ABI version and layout before use (errors name the file,
//! the expected and found versions, and what to do), reads manifests, and wraps the ABI's
//! trait objects in async handles ([`SourceHandle`], [`DestinationHandle`]).
//!
//! Invariants:
//! - Plugin code never stalls the async runtime: reads run under `block_in_place` (the worker
//!   becomes a blocking thread for the call) on a multi-threaded runtime, and every other call
//!   runs on one of the host's plugin threads (`threads.rs`). A read awaited beside other
//!   work in the same task goes to a plugin thread too (`BatchStream::on_plugin_thread`):
//!   `block_in_place` suspends the whole calling task, every branch of a `join!` with it.
//! - Every batch a plugin hands over is validated (buffers, offsets, UTF-8) before use.
//! - Libraries are never unloaded (abi_stable leaks them by design), so release callbacks
//!   and vtables stay valid for the life of the process.
//! - Messages from plugins (errors, logs) pass through the redactor before they reach logs.

mod handles;
mod loader;
mod threads;

pub use handles::{BatchStream, CancelHandle, DestinationHandle, SourceHandle, StreamWriterHandle};
pub use loader::{default_search_path, LoadedPlugin, PluginRegistry, SYSTEM_CONNECTOR_DIR};
pub use lockstep_plugin_api::{ErrorKind, ABI_MAJOR, ABI_VERSION};

use std::path::PathBuf;
use std::sync::Arc;

/// Replaces secrets in text with `***` before it is logged or shown.
pub type Redactor = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// A redactor that changes nothing.
pub fn no_redaction() -> Redactor {
    Arc::new(|s: &str| s.to_owned())
}

/// Errors from loading or calling plugins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("{path}: not a Lockstep connector plugin ({reason}); connector directories should contain only plugin libraries named like liblockstep_connector_<name>.so")]
    NotAPlugin { path: PathBuf, reason: String },

    #[error("{path}: built against lockstep-plugin-api {found}, but this Lockstep speaks {expected}.x; rebuild the connector against lockstep-plugin-api {expected}.x (lockstep-plugin-sdk of this release), or use a Lockstep release that supports API {found}")]
    IncompatibleAbi {
        path: PathBuf,
        found: String,
        expected: u32,
    },

    #[error("{path}: the plugin's ABI layout does not match this Lockstep's ({details}); rebuild the connector against the lockstep-plugin-sdk of this release")]
    LayoutMismatch { path: PathBuf, details: String },

    #[error("{path}: the plugin's manifest is invalid: {reason}")]
    BadManifest { path: PathBuf, reason: String },

    #[error("no connector named `{name}`; searched {searched}; available: {available}. Put the plugin in one of those directories, add its directory to [connectors] paths in the config, or set LOCKSTEP_CONNECTOR_PATH")]
    NotFound {
        name: String,
        searched: String,
        available: String,
    },

    #[error("two plugins are named `{name}`: {first} and {second}; remove one of them from the connector directories")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },

    #[error("connector `{connector}` failed in {operation} ({kind}): {message}", kind = kind.name())]
    Plugin {
        connector: String,
        operation: &'static str,
        kind: ErrorKind,
        message: String,
        details: Option<serde_json::Value>,
        retry_after_ms: u64,
    },

    #[error("connector `{connector}` returned an invalid batch from {operation}: {reason}")]
    InvalidBatch {
        connector: String,
        operation: &'static str,
        reason: String,
    },

    #[error("connector `{connector}`: {operation} could not run: {reason}")]
    Call {
        connector: String,
        operation: &'static str,
        reason: String,
    },
}

impl HostError {
    /// The error kind, for retry decisions: load problems are config errors, invalid
    /// batches are internal errors of the plugin.
    pub fn kind(&self) -> ErrorKind {
        match self {
            HostError::Plugin { kind, .. } => *kind,
            HostError::InvalidBatch { .. } | HostError::Call { .. } => ErrorKind::INTERNAL,
            _ => ErrorKind::CONFIG,
        }
    }
}
