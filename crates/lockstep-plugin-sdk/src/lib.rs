//! The SDK for writing Lockstep connectors.
//!
//! A connector implements [`Connector`] (a manifest plus a source and/or destination type)
//! with plain async Rust and exports it with [`export_connector!`]. The SDK does the rest:
//! it builds the ABI root module, owns a tokio runtime per connector instance, converts
//! record batches to and from the Arrow C Data Interface, forwards `tracing` events to the
//! host, catches panics at every entry point, and turns rows of serde values into batches
//! for connectors that would rather not touch Arrow builders ([`rows`]).
//!
//! A complete, if tiny, source-only connector (the connector guide, `docs/connector-guide.md`,
//! explains each part; `lockstep connectors new NAME` writes a fuller one):
//!
//! ```no_run
//! use lockstep_plugin_sdk::arrow::array::RecordBatch;
//! use lockstep_plugin_sdk::rows::batch_from_rows;
//! use lockstep_plugin_sdk::serde_json::{json, Map, Value};
//! use lockstep_plugin_sdk::{
//!     BatchReader, Catalog, Connector, ConnectorError, Context, DataType, FieldInfo,
//!     JsonSchema, Manifest, ReadRequest, Result, SourceConnector, StreamInfo, Unsupported,
//! };
//!
//! /// The connector: a manifest, and the types of its roles.
//! pub struct Hello;
//!
//! impl Connector for Hello {
//!     type Source = HelloSource;
//!     type Destination = Unsupported; // it only reads
//!
//!     fn manifest() -> Manifest {
//!         Manifest {
//!             name: "hello".into(),
//!             version: "0.1.0".into(),
//!             description: "One greeting.".into(),
//!             features: vec![],
//!         }
//!     }
//! }
//!
//! /// The config: `{"greeting": "..."}`. `serde` is the connector's own dependency.
//! #[derive(serde::Deserialize, JsonSchema)]
//! #[serde(deny_unknown_fields)]
//! #[schemars(crate = "lockstep_plugin_sdk::schemars")]
//! pub struct Config {
//!     /// What the one record says.
//!     pub greeting: String,
//! }
//!
//! pub struct HelloSource {
//!     greeting: String,
//! }
//!
//! fn fields() -> Vec<FieldInfo> {
//!     vec![FieldInfo {
//!         name: "greeting".into(),
//!         data_type: DataType::Text,
//!         nullable: false,
//!         native_type: None,
//!     }]
//! }
//!
//! impl SourceConnector for HelloSource {
//!     type Config = Config;
//!     type Reader = HelloReader;
//!
//!     async fn open(config: Config, _ctx: Context) -> Result<Self> {
//!         if config.greeting.is_empty() {
//!             return Err(ConnectorError::config("`greeting` is empty: set it to some text"));
//!         }
//!         Ok(Self { greeting: config.greeting })
//!     }
//!     async fn check(&mut self) -> Result<()> {
//!         Ok(())
//!     }
//!     async fn discover(&mut self) -> Result<Catalog> {
//!         Ok(Catalog {
//!             streams: vec![StreamInfo {
//!                 name: "greetings".into(),
//!                 fields: fields(),
//!                 primary_key: vec!["greeting".into()],
//!                 cursor_candidates: vec![],
//!             }],
//!         })
//!     }
//!     async fn read(&mut self, request: ReadRequest) -> Result<HelloReader> {
//!         // One record; a read that resumes from the checkpoint has nothing left.
//!         let done = request.checkpoint.is_some();
//!         Ok(HelloReader { greeting: (!done).then(|| self.greeting.clone()) })
//!     }
//! }
//!
//! pub struct HelloReader {
//!     greeting: Option<String>,
//! }
//!
//! impl BatchReader for HelloReader {
//!     async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
//!         let Some(greeting) = self.greeting.take() else {
//!             return Ok(None);
//!         };
//!         let mut row = Map::new();
//!         row.insert("greeting".into(), json!(greeting));
//!         let batch = batch_from_rows(&fields(), &[row])?;
//!         Ok(Some((batch, json!({ "key": [greeting] }))))
//!     }
//! }
//!
//! lockstep_plugin_sdk::export_connector!(Hello);
//! # fn main() {}
//! ```
//!
//! Invariants:
//! - No panic ever unwinds across the ABI: every entry point is wrapped in `catch_unwind`, a
//!   panic becomes an error of kind `PANIC`, and the instance that panicked refuses every
//!   later call (it is poisoned).
//! - Building a connector with `panic = "abort"` is a compile error: such a plugin would take
//!   the whole host process down on its first panic.
//! - Connectors depend on this crate only, never on host crates.

#![warn(missing_docs)]

#[cfg(panic = "abort")]
compile_error!(
    "lockstep connectors must be built with `panic = \"unwind\"`: with `panic = \"abort\"` a \
     panic in the connector would kill the host process. Remove `panic = \"abort\"` from the \
     [profile.*] sections of your Cargo.toml."
);

pub mod checkpoint;
mod entry;
mod error;
pub mod evolution;
mod guard;
mod logging;
mod manifest;
pub mod outcome;
pub mod resolve;

pub use arrow;
pub use checkpoint::{checkpoint_after, resume_point, OrderRole, ResumePoint, RowOrder};
pub use error::{ConnectorError, Result};
pub use evolution::{plan_evolution, EvolutionPlan};
pub use lockstep_plugin_api::ErrorKind;
pub use lockstep_plugin_core::rows;
pub use lockstep_plugin_core::run_end::{
    self, is_run_end_batch, run_wrote_every_record, FEATURE_RUN_END,
};
pub use lockstep_plugin_core::source_rejects::{self, rejects_batch, SourceReject};
pub use lockstep_protocol as protocol;
pub use lockstep_protocol::{
    Catalog, CursorCheckpoint, DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest,
    RejectedRow, SchemaEvolution, StreamInfo, WriteOutcome,
};
pub use manifest::{full_manifest, Manifest};
pub use resolve::{resolve_read, resolve_read_with, ResolveOptions, ResolvedRead};
pub use schemars;
pub use schemars::JsonSchema;
pub use serde_json;
pub use tracing;

/// The ABI types, for the error kinds that connectors written before [`ErrorKind`] was
/// re-exported name as `api::ErrorKind`. New code uses [`ErrorKind`].
#[doc(hidden)]
pub use lockstep_plugin_api as api;

/// The plumbing [`export_connector!`] expands to: the ABI crates and the root module. Not part
/// of the author's surface; nothing here is stable for connector code to use.
#[doc(hidden)]
pub mod __private {
    pub use crate::entry::root_module;
    pub use abi_stable;
    pub use lockstep_plugin_api as api;
    pub use lockstep_plugin_core::ffi;
}

use arrow::array::RecordBatch;
use serde::de::DeserializeOwned;
use std::future::Future;

/// The version of this SDK, recorded in every manifest.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What each connector instance gets from the SDK.
#[derive(Clone)]
pub struct Context {
    cancel: std::sync::Arc<guard::CancelState>,
}

impl Context {
    /// Whether the host asked this instance to stop. Long loops should check it.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the host asks this instance to stop.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }
}

/// A connector: its manifest and the types that play its roles.
///
/// Use [`Unsupported`] for a role the connector does not have. The roles the host sees, the
/// config schema, and the API and SDK versions are derived from these types by the SDK (see
/// [`full_manifest`]); [`Connector::manifest`] says only what the types cannot.
pub trait Connector: 'static {
    /// The type that reads, or [`Unsupported`].
    type Source: SourceConnector;
    /// The type that writes, or [`Unsupported`].
    type Destination: DestinationConnector;

    /// The connector's name, version, description and features.
    fn manifest() -> Manifest;
}

/// A source of records. One instance serves one connection for the length of a run.
#[allow(async_fn_in_trait)]
pub trait SourceConnector: Sized + Send + 'static {
    /// The connection's config, deserialized from the JSON the host passes. Its JSON Schema
    /// (derive [`JsonSchema`]; doc comments on its fields become descriptions) is the
    /// manifest's config schema.
    type Config: DeserializeOwned + JsonSchema;
    /// The reader one `read` call returns.
    type Reader: BatchReader;

    /// Connects (or prepares to) with `config`.
    async fn open(config: Self::Config, ctx: Context) -> Result<Self>;
    /// Checks that the system is reachable and the credentials work.
    async fn check(&mut self) -> Result<()>;
    /// Describes the streams on offer.
    async fn discover(&mut self) -> Result<Catalog>;
    /// Starts reading one stream.
    async fn read(&mut self, request: ReadRequest) -> Result<Self::Reader>;
    /// Ends the instance's connections as their protocol asks, just before the host lets the
    /// instance go (see [`StreamWriter::close`]). The default does nothing.
    async fn close(&mut self) {}
}

/// The batches of one read.
#[allow(async_fn_in_trait)]
pub trait BatchReader: Send + 'static {
    /// The next batch and the checkpoint after its last record, or `None` at the end.
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, serde_json::Value)>>;
}

/// A destination of records. One instance serves one connection for the length of a run.
#[allow(async_fn_in_trait)]
pub trait DestinationConnector: Sized + Send + 'static {
    /// The connection's config, as for [`SourceConnector::Config`].
    type Config: DeserializeOwned + JsonSchema;
    /// The writer one `open_stream` call returns.
    type Writer: StreamWriter;

    /// Connects (or prepares to) with `config`.
    async fn open(config: Self::Config, ctx: Context) -> Result<Self>;
    /// Checks that the system is reachable and the credentials work.
    async fn check(&mut self) -> Result<()>;
    /// Describes the streams that exist.
    async fn discover(&mut self) -> Result<Catalog>;
    /// Prepares a stream for writing, creating or evolving it as the request says.
    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<Self::Writer>;
    /// Ends the instance's connections as their protocol asks, just before the host lets the
    /// instance go (see [`StreamWriter::close`]). The default does nothing.
    async fn close(&mut self) {}
}

/// Writes to one stream.
#[allow(async_fn_in_trait)]
pub trait StreamWriter: Send + 'static {
    /// Inserts or updates rows by key.
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome>;
    /// Deletes rows by key; the batch holds only the key columns.
    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome>;
    /// Makes every write so far durable.
    async fn flush(&mut self) -> Result<()>;
    /// Ends the writer's connections as their protocol asks, just before the host lets it go
    /// (a database's `Terminate`, an HTTP client's pool left to close): a server then sees a
    /// client that said goodbye, not a lost one. Called once, on the host's thread that drops
    /// the object, at most [`CLOSE_WAIT`] long; skipped for an instance that panicked. What
    /// was not flushed is not made durable here. The default does nothing.
    async fn close(&mut self) {}
}

/// How long a connector's `close` may take before the object is dropped anyway.
pub const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The type for a role a connector does not play. It cannot be constructed.
pub enum Unsupported {}

impl SourceConnector for Unsupported {
    type Config = serde_json::Value;
    type Reader = Unsupported;
    async fn open(_: Self::Config, _: Context) -> Result<Self> {
        Err(ConnectorError::unsupported(
            "this connector cannot be used as a source",
        ))
    }
    async fn check(&mut self) -> Result<()> {
        match *self {}
    }
    async fn discover(&mut self) -> Result<Catalog> {
        match *self {}
    }
    async fn read(&mut self, _: ReadRequest) -> Result<Self::Reader> {
        match *self {}
    }
}

impl BatchReader for Unsupported {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, serde_json::Value)>> {
        match *self {}
    }
}

impl DestinationConnector for Unsupported {
    type Config = serde_json::Value;
    type Writer = Unsupported;
    async fn open(_: Self::Config, _: Context) -> Result<Self> {
        Err(ConnectorError::unsupported(
            "this connector cannot be used as a destination",
        ))
    }
    async fn check(&mut self) -> Result<()> {
        match *self {}
    }
    async fn discover(&mut self) -> Result<Catalog> {
        match *self {}
    }
    async fn open_stream(&mut self, _: OpenStreamRequest) -> Result<Self::Writer> {
        match *self {}
    }
}

impl StreamWriter for Unsupported {
    async fn upsert(&mut self, _: RecordBatch) -> Result<WriteOutcome> {
        match *self {}
    }
    async fn delete(&mut self, _: RecordBatch) -> Result<WriteOutcome> {
        match *self {}
    }
    async fn flush(&mut self) -> Result<()> {
        match *self {}
    }
}

/// Exports a [`Connector`] as the plugin's root module. Use it once per cdylib:
///
/// ```ignore
/// lockstep_plugin_sdk::export_connector!(MyConnector);
/// ```
#[macro_export]
macro_rules! export_connector {
    ($connector:ty) => {
        /// The connector's ABI root module.
        pub fn lockstep_connector_root_module() -> $crate::__private::api::ConnectorModuleRef {
            $crate::__private::root_module::<$connector>()
        }

        // What `#[abi_stable::export_root_module]` expands to, spelled with `$crate` paths:
        // the attribute names `::abi_stable`, which a connector that depends on this SDK
        // alone does not have. The symbol name is abi_stable's `ROOT_MODULE_LOADER_NAME`
        // (a unit test of the SDK checks it).
        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static LOCKSTEP_CONNECTOR_LIB_HEADER:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased_root_module(
            ) -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(
                    lockstep_connector_root_module,
                )
            }
            // SAFETY: the constructor returns the module type the header is built for.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::__private::api::ConnectorModuleRef,
                >(
                    erased_root_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

/// Runs `future` to completion on a fresh current-thread runtime. For tests and benchmarks
/// that drive connector types directly, without the ABI.
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime needs no resources that can be missing")
        .block_on(future)
}

/// A [`Context`] for driving connector types directly, without the ABI.
pub fn standalone_context() -> Context {
    Context {
        cancel: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_connector_uses_abi_stables_root_module_symbol() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }
}
