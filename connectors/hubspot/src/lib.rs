//! The HubSpot connector of Lockstep: contacts, companies and deals of a HubSpot account
//! through the CRM v3 API, as a cdylib plugin built on `lockstep-plugin-sdk` and
//! `lockstep-http-kit`.
//!
//! Fields come from the Properties API; full reads page through the list endpoint;
//! incremental reads query the search endpoint by the last-modified property (see
//! [`read`] for how ties and the 10,000-result cap are handled); writes go through the batch
//! endpoints, and refused records become rejects ([`write`](mod@write)).
//!
//! Invariants:
//! - Every request goes through the kit's client: the account's rate budget (100 requests
//!   per 10 s unless configured), the search endpoints' own lower budget, retries, and
//!   errors classified into the SDK's kinds; the token never appears in a message or a log.
//! - A value that does not fit its property's logical type is a schema error naming the
//!   stream, the record id and the property, never a null.
//! - Each behaviour names the HubSpot documentation page it follows.

mod config;
pub mod read;
mod schema;
pub mod write;

use std::sync::Arc;
use std::time::Duration;

use lockstep_http_kit::{HttpClient, RateBudget, RateLimit, Request};
use lockstep_plugin_sdk::{
    Catalog, Connector, Context, DestinationConnector, Manifest, OpenStreamRequest, ReadRequest,
    Result, SourceConnector,
};

pub use config::HubSpotConfig;
pub use read::HubSpotReader;
pub use write::HubSpotWriter;

/// A connection to one HubSpot account.
pub struct HubSpot {
    config: HubSpotConfig,
    client: HttpClient,
    search_budget: Arc<RateBudget>,
}

impl HubSpot {
    /// Opens a connection: reads the token from `token_env` (a config error when unset) and
    /// builds the client. Nothing is sent yet.
    pub fn connect(config: HubSpotConfig) -> Result<Self> {
        let client = config.client()?;
        let search_budget = Arc::new(RateBudget::new(RateLimit::new(
            config.search_per_second(),
            Duration::from_secs(1),
        )));
        Ok(Self {
            config,
            client,
            search_budget,
        })
    }

    /// The streams with their fields, from the Properties API.
    pub async fn catalog(&self) -> Result<Catalog> {
        let mut streams = Vec::new();
        for stream in schema::STREAMS {
            let schema =
                schema::load(&self.client, stream, self.config.properties.get(stream)).await?;
            streams.push(schema.stream_info());
        }
        Ok(Catalog { streams })
    }

    /// Starts reading one stream.
    pub async fn start_read(&self, request: ReadRequest) -> Result<HubSpotReader> {
        let schema = schema::load(
            &self.client,
            &request.stream,
            self.config.properties.get(&request.stream),
        )
        .await?;
        read::open(
            self.client.clone(),
            schema,
            request,
            self.search_budget.clone(),
        )
    }

    /// Prepares one object type for writing. HubSpot's object types and properties exist
    /// already: a field that is not a writable property is a schema error.
    pub async fn start_write(&self, request: OpenStreamRequest) -> Result<HubSpotWriter> {
        let schema = schema::load(&self.client, &request.stream, None).await?;
        write::open(self.client.clone(), schema, request)
    }

    /// Checks that HubSpot answers and takes the token: one list request of one contact.
    pub async fn check_access(&self) -> Result<()> {
        self.client
            .send(
                &Request::get("/crm/v3/objects/contacts")
                    .query("limit", 1)
                    .describe("checking access to HubSpot"),
            )
            .await?;
        Ok(())
    }
}

impl Connector for HubSpot {
    type Source = HubSpot;
    type Destination = HubSpot;

    fn manifest() -> Manifest {
        Manifest {
            name: "hubspot".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "HubSpot CRM contacts, companies and deals (CRM v3 API).".into(),
            features: ["incremental", "upsert", "delete"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl SourceConnector for HubSpot {
    type Config = HubSpotConfig;
    type Reader = HubSpotReader;

    async fn open(config: HubSpotConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn read(&mut self, request: ReadRequest) -> Result<HubSpotReader> {
        self.start_read(request).await
    }
}

impl DestinationConnector for HubSpot {
    type Config = HubSpotConfig;
    type Writer = HubSpotWriter;

    async fn open(config: HubSpotConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<HubSpotWriter> {
        self.start_write(request).await
    }
}

lockstep_plugin_sdk::export_connector!(HubSpot);
