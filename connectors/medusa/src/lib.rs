//! The Medusa connector of Lockstep: a Medusa v2 shop's products, product variants (SKU,
//! options, a price per store currency), product categories, stock levels per location,
//! customers and orders through Medusa's admin REST API, as a cdylib plugin built on
//! `lockstep-plugin-sdk` and `lockstep-http-kit`.
//!
//! [`streams`] declares the streams and flattens Medusa's records into rows; [`read`] reads
//! incrementally by `updated_at` (ties at page boundaries handled by millisecond) or in full
//! by id; [`write`](mod@write) creates and updates products, variants with their prices, categories and
//! stock levels one record a request, turning the records Medusa refuses into rejects.
//!
//! Invariants:
//! - Every request goes through the kit's client: retries of transient failures, errors
//!   classified into the SDK's kinds (a refused key is an authentication error, never
//!   retried), and the API key scrubbed from every message and log.
//! - The API key is read from the environment variable `api_key_env` names and sent as the
//!   basic-auth user, as Medusa's "API Key Authentication" asks; the config never holds it.
//! - A value that does not fit its field's logical type is a schema error naming the stream,
//!   the record id and the field, never a null.

mod config;
pub mod read;
pub mod streams;
pub mod write;

use lockstep_http_kit::{HttpClient, Request};
use lockstep_plugin_sdk::{
    Catalog, Connector, ConnectorError, Context, DestinationConnector, Manifest, OpenStreamRequest,
    ReadRequest, Result, SourceConnector,
};
use serde_json::Value;

pub use config::{FilterValue, MedusaConfig, ProductDelete};
pub use read::MedusaReader;
pub use write::MedusaWriter;

/// A connection to one Medusa server.
pub struct Medusa {
    config: MedusaConfig,
    client: HttpClient,
}

impl Medusa {
    /// Opens a connection: checks the config and reads the key from `api_key_env` (a config
    /// error when unset). Nothing is sent yet.
    pub fn connect(config: MedusaConfig) -> Result<Self> {
        let client = config.client()?;
        Ok(Self { config, client })
    }

    /// As [`Medusa::connect`], with the caller's retry policy (tests).
    pub fn connect_with_retry(
        config: MedusaConfig,
        retry: lockstep_http_kit::RetryPolicy,
    ) -> Result<Self> {
        let client = config.client_with(retry)?;
        Ok(Self { config, client })
    }

    /// The connection's config.
    pub fn config(&self) -> &MedusaConfig {
        &self.config
    }

    /// The HTTP client, for requests this crate does not wrap (tests set up records with
    /// it).
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The store's currencies (lowercase codes, sorted): one price column each.
    pub async fn currencies(&self) -> Result<Vec<String>> {
        let answer: Value = self
            .client
            .send_json(
                &Request::get("/admin/stores")
                    .query("fields", "id,supported_currencies.currency_code")
                    .describe("reading the Medusa store's currencies"),
            )
            .await?;
        let mut codes: Vec<String> = answer["stores"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .flat_map(|s| {
                s["supported_currencies"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| c["currency_code"].as_str().map(str::to_lowercase))
            .collect();
        codes.sort();
        codes.dedup();
        Ok(codes)
    }

    fn def(stream: &str) -> Result<streams::StreamDef> {
        streams::def(stream).ok_or_else(|| {
            ConnectorError::schema(format!(
                "Medusa has no stream `{stream}` here; this connector serves {}",
                streams::STREAMS.join(", ")
            ))
        })
    }

    /// The streams with their fields.
    pub async fn catalog(&self) -> Result<Catalog> {
        let currencies = self.currencies().await?;
        Ok(Catalog {
            streams: streams::STREAMS
                .iter()
                .map(|s| streams::stream_info(s, &currencies))
                .collect(),
        })
    }

    /// Starts reading one stream.
    pub async fn start_read(&self, request: ReadRequest) -> Result<MedusaReader> {
        let def = Self::def(&request.stream)?;
        let currencies = if def.name == "product_variants" {
            self.currencies().await?
        } else {
            Vec::new()
        };
        read::open(
            self.client.clone(),
            def,
            streams::fields(def.name, &currencies),
            self.config.filters(def.name),
            self.config.page_size(),
            request,
        )
    }

    /// Prepares one stream for writing.
    pub async fn start_write(&self, request: OpenStreamRequest) -> Result<MedusaWriter> {
        let def = Self::def(&request.stream)?;
        let currencies = if def.name == "product_variants" {
            self.currencies().await?
        } else {
            Vec::new()
        };
        write::open(
            self.client.clone(),
            def.name,
            currencies,
            self.config.product_delete,
            request,
        )
    }

    /// Checks that Medusa answers and takes the key: the store's currencies.
    pub async fn check_access(&self) -> Result<()> {
        self.currencies().await.map(drop)
    }
}

impl Connector for Medusa {
    type Source = Medusa;
    type Destination = Medusa;

    fn manifest() -> Manifest {
        Manifest {
            name: "medusa".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Medusa v2 commerce: products, variants and prices, categories, stock \
                          levels, customers and orders (admin API)."
                .into(),
            features: ["incremental", "upsert", "delete"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl SourceConnector for Medusa {
    type Config = MedusaConfig;
    type Reader = MedusaReader;

    async fn open(config: MedusaConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn read(&mut self, request: ReadRequest) -> Result<MedusaReader> {
        self.start_read(request).await
    }
}

impl DestinationConnector for Medusa {
    type Config = MedusaConfig;
    type Writer = MedusaWriter;

    async fn open(config: MedusaConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<MedusaWriter> {
        self.start_write(request).await
    }
}

lockstep_plugin_sdk::export_connector!(Medusa);
