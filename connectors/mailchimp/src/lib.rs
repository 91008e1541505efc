//! The Mailchimp connector of Lockstep: the members of one Mailchimp audience through the
//! Marketing API 3.0, as a cdylib plugin built on `lockstep-plugin-sdk` and
//! `lockstep-http-kit`.
//!
//! One stream, `members`: fields from the audience's merge fields ([`schema`]); full reads
//! page by offset, incremental reads by `last_changed` with archived members as tombstones
//! ([`read`]); writes through batch subscribe with consent rules, deletes archive or erase
//! ([`write`](mod@write)).
//!
//! Invariants:
//! - Every request goes through the kit's client: at most 10 in flight (Mailchimp's limit of
//!   simultaneous connections), retries with backoff for 429 and 5xx, authentication errors
//!   (401, 403) never retried and naming `api_key_env`; the key never appears in a message
//!   or a log.
//! - A sync never resubscribes a member who unsubscribed or was cleaned unless it maps the
//!   status itself and the config allows it.
//! - Each behaviour names the Mailchimp documentation page it follows.

mod config;
pub mod read;
pub mod schema;
pub mod write;

use lockstep_http_kit::{HttpClient, Request};
use lockstep_plugin_sdk::{
    Catalog, Connector, Context, DestinationConnector, Manifest, OpenStreamRequest, ReadRequest,
    Result, SourceConnector,
};

pub use config::{DeleteMode, MailchimpConfig, NewMemberStatus};
pub use read::MailchimpReader;
pub use write::{subscriber_hash, MailchimpWriter};

/// A connection to one Mailchimp audience.
pub struct Mailchimp {
    config: MailchimpConfig,
    client: HttpClient,
}

impl Mailchimp {
    /// Opens a connection: reads the key from `api_key_env` (a config error when unset) and
    /// builds the client. Nothing is sent yet.
    pub fn connect(config: MailchimpConfig) -> Result<Self> {
        let client = config.client()?;
        Ok(Self { config, client })
    }

    /// The `members` stream with the audience's merge fields.
    pub async fn catalog(&self) -> Result<Catalog> {
        let schema = schema::load(&self.client, &self.config.list_id).await?;
        Ok(Catalog {
            streams: vec![schema.stream_info()],
        })
    }

    /// Starts reading the members.
    pub async fn start_read(&self, request: ReadRequest) -> Result<MailchimpReader> {
        let schema = schema::load(&self.client, &self.config.list_id).await?;
        read::open(
            self.client.clone(),
            self.config.list_id.clone(),
            schema,
            request,
        )
    }

    /// Prepares writing members: checks the fields against the merge fields and reads the
    /// members' statuses.
    pub async fn start_write(&self, request: OpenStreamRequest) -> Result<MailchimpWriter> {
        let schema = schema::load(&self.client, &self.config.list_id).await?;
        write::open(self.client.clone(), self.config.clone(), schema, request).await
    }

    /// Checks that Mailchimp takes the key (`GET /ping`) and knows the audience.
    pub async fn check_access(&self) -> Result<()> {
        self.client
            .send(&Request::get("/ping").describe("checking access to Mailchimp"))
            .await?;
        schema::load(&self.client, &self.config.list_id).await?;
        Ok(())
    }
}

impl Connector for Mailchimp {
    type Source = Mailchimp;
    type Destination = Mailchimp;

    fn manifest() -> Manifest {
        Manifest {
            name: "mailchimp".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Mailchimp audience members (Marketing API 3.0).".into(),
            features: ["incremental", "upsert", "delete"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl SourceConnector for Mailchimp {
    type Config = MailchimpConfig;
    type Reader = MailchimpReader;

    async fn open(config: MailchimpConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn read(&mut self, request: ReadRequest) -> Result<MailchimpReader> {
        self.start_read(request).await
    }
}

impl DestinationConnector for Mailchimp {
    type Config = MailchimpConfig;
    type Writer = MailchimpWriter;

    async fn open(config: MailchimpConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<MailchimpWriter> {
        self.start_write(request).await
    }
}

lockstep_plugin_sdk::export_connector!(Mailchimp);
