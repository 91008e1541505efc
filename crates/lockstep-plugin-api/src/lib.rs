//! The stable ABI between the Lockstep host and its connector plugins.
//!
//! A connector is a dynamic library that exports one root module, [`ConnectorModuleRef`].
//! The control plane (configs, catalogs, read and write requests, checkpoints, error
//! details) crosses the boundary as JSON strings; record data crosses it as Arrow record
//! batches through the Arrow C Data Interface, one batch per call ([`FfiBatch`]).
//!
//! Invariants of this crate:
//! - It depends on `abi_stable` alone: no tokio, no arrow-rs, no serde. The Arrow C structs
//!   are mirrored here (`#[repr(C)]`) so that the ABI does not pin an arrow-rs version.
//! - It never breaks the ABI within a major version. New capabilities arrive as new fields
//!   of the root module (after the last prefix field) that return new trait objects; an
//!   existing `#[sabi_trait]` never gains a method, because older plugins would then fail to
//!   load (abi_stable issue 118).
//! - Every call is synchronous. The host makes them from a blocking thread and cancels
//!   through a [`Canceller`] obtained beforehand.

// The `#[sabi_trait]` expansion defines impls inside a const block.
#![allow(non_local_definitions)]

use std::ffi::{c_char, c_void};

use abi_stable::{
    declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, RBox, ROption, RResult, RStr, RString},
    StableAbi,
};

/// The major version of this ABI. Plugins built against another major are refused.
pub const ABI_MAJOR: u32 = 1;

/// The version of this crate, which is the ABI version a plugin was built against.
pub const ABI_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What kind of failure an error is. An integer newtype so that the set can grow within
/// the major version: an unknown value must be treated as [`ErrorKind::INTERNAL`].
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct ErrorKind(pub u32);

impl ErrorKind {
    /// The configuration is invalid; retrying cannot help.
    pub const CONFIG: Self = Self(1);
    /// Credentials were refused; retrying cannot help.
    pub const AUTH: Self = Self(2);
    /// A passing failure (network, timeout, server restart); a retry may succeed.
    pub const TRANSIENT: Self = Self(3);
    /// The remote system asked to slow down; retry after `retry_after_ms`.
    pub const RATE_LIMITED: Self = Self(4);
    /// The data does not fit the schema (unknown stream, missing column, bad type).
    pub const SCHEMA: Self = Self(5);
    /// The plugin panicked; the instance is poisoned and refuses further calls.
    pub const PANIC: Self = Self(6);
    /// A bug or an unexpected state inside the plugin.
    pub const INTERNAL: Self = Self(7);
    /// The call stopped because the host cancelled it.
    pub const CANCELLED: Self = Self(8);
    /// The plugin does not support what was asked (a role, a mode, an operation).
    pub const UNSUPPORTED: Self = Self(9);

    /// A stable lower-case name, used in logs, JSON output and the state store.
    pub fn name(self) -> &'static str {
        match self {
            Self::CONFIG => "config",
            Self::AUTH => "auth",
            Self::TRANSIENT => "transient",
            Self::RATE_LIMITED => "rate-limited",
            Self::SCHEMA => "schema",
            Self::PANIC => "panic",
            Self::INTERNAL => "internal",
            Self::CANCELLED => "cancelled",
            Self::UNSUPPORTED => "unsupported",
            _ => "unknown",
        }
    }

    /// Whether a retry of the same call may succeed.
    pub fn is_retryable(self) -> bool {
        self == Self::TRANSIENT || self == Self::RATE_LIMITED
    }
}

/// An error returned across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginError {
    pub kind: ErrorKind,
    /// A message for people: what went wrong, where, and what to do about it. It must not
    /// contain secrets.
    pub message: RString,
    /// Structured details as a JSON object, or an empty string.
    pub details: RString,
    /// For [`ErrorKind::RATE_LIMITED`]: how long to wait before retrying; 0 when unknown.
    pub retry_after_ms: u64,
}

impl PluginError {
    /// An error of `kind` with a message and no details.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: RString::from(message.into()),
            details: RString::new(),
            retry_after_ms: 0,
        }
    }
}

/// Mirror of the Arrow C Data Interface `struct ArrowSchema`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiArrowSchema {
    pub format: *const c_char,
    pub name: *const c_char,
    pub metadata: *const c_char,
    pub flags: i64,
    pub n_children: i64,
    pub children: *mut *mut FfiArrowSchema,
    pub dictionary: *mut FfiArrowSchema,
    pub release: Option<unsafe extern "C" fn(schema: *mut FfiArrowSchema)>,
    pub private_data: *mut c_void,
}

/// Mirror of the Arrow C Data Interface `struct ArrowArray`.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiArrowArray {
    pub length: i64,
    pub null_count: i64,
    pub offset: i64,
    pub n_buffers: i64,
    pub n_children: i64,
    pub buffers: *mut *const c_void,
    pub children: *mut *mut FfiArrowArray,
    pub dictionary: *mut FfiArrowArray,
    pub release: Option<unsafe extern "C" fn(array: *mut FfiArrowArray)>,
    pub private_data: *mut c_void,
}

/// One record batch, exported as a struct array (one child per column) with its schema.
///
/// Ownership moves with the value: whoever holds it last must either import it (taking the
/// release callbacks over) or drop it, which calls the release callbacks.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct FfiBatch {
    pub array: FfiArrowArray,
    pub schema: FfiArrowSchema,
}

// SAFETY: the C Data Interface requires that released structs may be released from any
// thread, and an exported batch is immutable.
unsafe impl Send for FfiBatch {}

impl Drop for FfiBatch {
    fn drop(&mut self) {
        // SAFETY: the producer filled these callbacks in; each is called at most once because
        // the C Data Interface requires `release` to mark the struct released (set to null).
        unsafe {
            if let Some(release) = self.array.release {
                release(&mut self.array);
            }
            if let Some(release) = self.schema.release {
                release(&mut self.schema);
            }
        }
    }
}

/// A batch read from a source together with the checkpoint that follows its last record.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct SourceBatch {
    pub batch: FfiBatch,
    /// JSON; opaque to the host. Passing it back in a read request resumes after this batch.
    pub checkpoint: RString,
}

/// Severity of a log record forwarded from a plugin.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogLevel(pub u8);

impl LogLevel {
    pub const ERROR: Self = Self(1);
    pub const WARN: Self = Self(2);
    pub const INFO: Self = Self(3);
    pub const DEBUG: Self = Self(4);
    pub const TRACE: Self = Self(5);
}

/// Services the host offers to a plugin instance.
#[sabi_trait]
pub trait HostContext: Send + Sync + Clone {
    /// Forwards one log record to the host's subscriber. `fields` is a JSON object or empty.
    fn log(&self, level: LogLevel, target: RStr<'_>, message: RStr<'_>, fields: RStr<'_>);

    /// The most verbose level the host will record; plugins skip formatting anything finer.
    #[sabi(last_prefix_field)]
    fn max_level(&self) -> LogLevel;
}

/// The host's context as passed to a plugin.
pub type HostContextBox = HostContext_TO<'static, RArc<()>>;

/// Cancels the calls in flight of one plugin instance; callable from any thread.
#[sabi_trait]
pub trait Canceller: Send + Sync {
    #[sabi(last_prefix_field)]
    fn cancel(&self);
}

/// A canceller as passed across the boundary.
pub type CancellerBox = Canceller_TO<'static, RBox<()>>;

/// A source of records: one per connection and run.
#[sabi_trait]
pub trait Source: Send {
    /// Checks that the system is reachable and the credentials work.
    fn check(&mut self) -> RResult<(), PluginError>;

    /// Describes the streams this source offers, as a JSON catalog.
    fn discover(&mut self) -> RResult<RString, PluginError>;

    /// Starts reading one stream. `request` is a JSON read request.
    fn read(&mut self, request: RStr<'_>) -> RResult<BatchReaderBox, PluginError>;

    /// A handle that cancels this instance's calls in flight.
    #[sabi(last_prefix_field)]
    fn canceller(&self) -> CancellerBox;
}

/// A source as passed across the boundary.
pub type SourceBox = Source_TO<'static, RBox<()>>;

/// The batches of one read, in order.
#[sabi_trait]
pub trait BatchReader: Send {
    /// The next batch with its checkpoint, or `None` when the read is complete.
    #[sabi(last_prefix_field)]
    fn next_batch(&mut self) -> RResult<ROption<SourceBatch>, PluginError>;
}

/// A batch reader as passed across the boundary.
pub type BatchReaderBox = BatchReader_TO<'static, RBox<()>>;

/// A destination of records: one per connection and run.
#[sabi_trait]
pub trait Destination: Send {
    /// Checks that the system is reachable and the credentials work.
    fn check(&mut self) -> RResult<(), PluginError>;

    /// Describes the streams that exist in the destination, as a JSON catalog.
    fn discover(&mut self) -> RResult<RString, PluginError>;

    /// Prepares a stream for writing (creating it when missing) and returns its writer.
    /// `request` is a JSON open-stream request carrying the stream's schema and key.
    fn open_stream(&mut self, request: RStr<'_>) -> RResult<StreamWriterBox, PluginError>;

    /// A handle that cancels this instance's calls in flight.
    #[sabi(last_prefix_field)]
    fn canceller(&self) -> CancellerBox;
}

/// A destination as passed across the boundary.
pub type DestinationBox = Destination_TO<'static, RBox<()>>;

/// Writes to one stream. Writes may be buffered until [`StreamWriter::flush`].
#[sabi_trait]
pub trait StreamWriter: Send {
    /// Inserts or updates the batch's rows by the stream's key. Returns a JSON write outcome.
    fn upsert(&mut self, batch: FfiBatch) -> RResult<RString, PluginError>;

    /// Deletes rows by key; the batch holds the key columns only. Returns a JSON outcome.
    fn delete(&mut self, keys: FfiBatch) -> RResult<RString, PluginError>;

    /// Makes every write so far durable. After it returns, a crash loses none of them.
    #[sabi(last_prefix_field)]
    fn flush(&mut self) -> RResult<(), PluginError>;
}

/// A stream writer as passed across the boundary.
pub type StreamWriterBox = StreamWriter_TO<'static, RBox<()>>;

/// The root module every connector exports.
///
/// Fields after the last prefix field are optional: a host reads them through accessors that
/// return `None` for plugins built before they existed.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ConnectorModuleRef)))]
#[sabi(missing_field(panic))]
pub struct ConnectorModule {
    /// The manifest as JSON: name, version, roles, features and the config's JSON Schema.
    pub manifest: extern "C" fn() -> RString,

    /// Builds a source from a JSON config. Fails with [`ErrorKind::UNSUPPORTED`] when the
    /// connector has no source role.
    pub new_source:
        extern "C" fn(config: RStr<'_>, host: HostContextBox) -> RResult<SourceBox, PluginError>,

    /// Builds a destination from a JSON config. Fails with [`ErrorKind::UNSUPPORTED`] when
    /// the connector has no destination role.
    #[sabi(last_prefix_field)]
    pub new_destination: extern "C" fn(
        config: RStr<'_>,
        host: HostContextBox,
    ) -> RResult<DestinationBox, PluginError>,
}

impl RootModule for ConnectorModuleRef {
    declare_root_module_statics! {ConnectorModuleRef}
    const BASE_NAME: &'static str = "lockstep_connector";
    const NAME: &'static str = "lockstep connector";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_have_stable_names() {
        assert_eq!(ErrorKind::RATE_LIMITED.name(), "rate-limited");
        assert_eq!(ErrorKind(999).name(), "unknown");
        assert!(ErrorKind::TRANSIENT.is_retryable());
        assert!(!ErrorKind::CONFIG.is_retryable());
        assert!(!ErrorKind::AUTH.is_retryable());
    }

    #[test]
    fn mirrors_have_the_c_layout() {
        // The C Data Interface fixes these sizes on 64-bit targets.
        assert_eq!(std::mem::size_of::<FfiArrowSchema>(), 72);
        assert_eq!(std::mem::size_of::<FfiArrowArray>(), 80);
    }
}
