//! The Tryton connector of Lockstep: the records of Tryton ERP models (parties, addresses,
//! contact mechanisms, product templates and variants by default) through Tryton's JSON-RPC
//! API, as a cdylib plugin built on `lockstep-plugin-sdk` and `lockstep-http-kit`.
//!
//! [`rpc`] logs in and calls methods (re-logging in when a session expires); [`schema`] maps
//! `fields_get` to fields; [`read`] pages through `search_read` by id, incrementally by
//! `write_date` or `create_date` with an overlap window; [`write`](mod@write) creates, writes and
//! deletes in batches and turns records Tryton refuses into rejects. Deletes made in Tryton
//! reach a mirror sync through Lockstep's key-set reconciliation (docs/tryton.md says why).
//!
//! Invariants:
//! - Every request goes through the kit's client: retries of transient failures, errors
//!   classified into the SDK's kinds, and the password and session key scrubbed from every
//!   message and log.
//! - A value that does not fit its field's logical type is a schema error naming the model,
//!   the record id and the field, never a null.

mod config;
pub mod read;
pub mod rpc;
pub mod schema;
pub mod values;
pub mod write;

use lockstep_plugin_sdk::{
    Catalog, Connector, Context, DestinationConnector, Manifest, OpenStreamRequest, ReadRequest,
    Result, SourceConnector,
};

pub use config::{TrytonConfig, DEFAULT_MODELS};
pub use read::TrytonReader;
pub use rpc::Rpc;
pub use write::TrytonWriter;

/// A connection to one Tryton database.
pub struct Tryton {
    config: TrytonConfig,
    rpc: Rpc,
}

impl Tryton {
    /// Opens a connection: checks the config and reads the password from `password_env` (a
    /// config error when unset). Nothing is sent yet.
    pub fn connect(config: TrytonConfig) -> Result<Self> {
        let rpc = Rpc::new(&config)?;
        Ok(Self { config, rpc })
    }

    /// As [`Tryton::connect`], with the caller's retry policy.
    pub fn connect_with_retry(
        config: TrytonConfig,
        retry: lockstep_http_kit::RetryPolicy,
    ) -> Result<Self> {
        let rpc = Rpc::with_retry(&config, retry)?;
        Ok(Self { config, rpc })
    }

    /// The connection's config.
    pub fn config(&self) -> &TrytonConfig {
        &self.config
    }

    /// The JSON-RPC connection, for calls this crate does not wrap.
    pub fn rpc(&self) -> &Rpc {
        &self.rpc
    }

    async fn schema(&self, model: &str) -> Result<schema::StreamSchema> {
        schema::load(
            &self.rpc,
            model,
            &self.config.models(),
            self.config.fields.get(model),
            self.config.rec_names,
        )
        .await
    }

    /// The streams with their fields, from `fields_get`.
    pub async fn catalog(&self) -> Result<Catalog> {
        let mut streams = Vec::new();
        for model in self.config.models() {
            streams.push(self.schema(&model).await?.stream_info());
        }
        Ok(Catalog { streams })
    }

    /// Starts reading one stream.
    pub async fn start_read(&self, request: ReadRequest) -> Result<TrytonReader> {
        let schema = self.schema(&request.stream).await?;
        read::open(
            self.rpc.clone(),
            schema,
            request,
            self.config.page_size(),
            self.config.overlap(),
        )
    }

    /// Prepares one model for writing. Tryton's models exist already: a field that is not a
    /// writable field of the model is a schema error.
    pub async fn start_write(&self, request: OpenStreamRequest) -> Result<TrytonWriter> {
        let schema = self.schema(&request.stream).await?;
        write::open(self.rpc.clone(), schema, request, self.config.write_batch())
    }

    /// Checks that Tryton answers and takes the credentials: a login and the user's
    /// preferences.
    pub async fn check_access(&self) -> Result<()> {
        self.rpc
            .call(
                "model.res.user.get_preferences",
                vec![serde_json::json!(true)],
                None,
                true,
                "checking access to Tryton",
            )
            .await?;
        Ok(())
    }
}

impl Connector for Tryton {
    type Source = Tryton;
    type Destination = Tryton;

    fn manifest() -> Manifest {
        Manifest {
            name: "tryton".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Tryton ERP parties, addresses, contact mechanisms and products \
                          (JSON-RPC)."
                .into(),
            features: ["incremental", "upsert", "delete"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl SourceConnector for Tryton {
    type Config = TrytonConfig;
    type Reader = TrytonReader;

    async fn open(config: TrytonConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn read(&mut self, request: ReadRequest) -> Result<TrytonReader> {
        self.start_read(request).await
    }
}

impl DestinationConnector for Tryton {
    type Config = TrytonConfig;
    type Writer = TrytonWriter;

    async fn open(config: TrytonConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<TrytonWriter> {
        self.start_write(request).await
    }
}

lockstep_plugin_sdk::export_connector!(Tryton);
