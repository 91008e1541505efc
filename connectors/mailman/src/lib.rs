//! The GNU Mailman 3 connector of Lockstep: the members of mailing lists through Mailman
//! core's REST API 3.1, as a cdylib plugin built on `lockstep-plugin-sdk` and
//! `lockstep-http-kit`.
//!
//! Each list is a stream named by its list id (`news.example.com`): the configured
//! `list_id`, or every list of the server. [`read`] scans a list's member roster in full
//! (Mailman keeps no timestamps), deduplicating by member id and scanning again when the
//! roster changed under the scan; [`write`](mod@write) subscribes, updates and unsubscribes members,
//! turning Mailman's refusals of single records into rejects.
//!
//! Invariants:
//! - Every request goes through the kit's client: basic auth with the password read from
//!   `password_env`, retries of transient failures, errors classified into the SDK's kinds
//!   (a refused password is an authentication error naming `password_env`, never retried),
//!   and the password scrubbed from every message and log.
//! - Members are found by email, the roster's unique key; member ids are read, never
//!   written.

mod config;
mod path;
pub mod read;
pub mod schema;
pub mod write;

use lockstep_http_kit::{HttpClient, Request};
use lockstep_plugin_sdk::{
    Catalog, Connector, ConnectorError, Context, DestinationConnector, Manifest, OpenStreamRequest,
    ReadRequest, Result, SourceConnector,
};
use serde::Deserialize;

pub use config::{MailmanConfig, API_VERSION};
pub use read::MailmanReader;
pub use write::MailmanWriter;

/// A connection to one Mailman core.
pub struct Mailman {
    config: MailmanConfig,
    client: HttpClient,
}

#[derive(Deserialize)]
struct ListsPage {
    #[serde(default)]
    entries: Vec<ListEntry>,
}

#[derive(Deserialize)]
struct ListEntry {
    list_id: String,
}

/// Lists per page when discovering the server's lists.
const LIST_PAGE: usize = 100;

impl Mailman {
    /// Opens a connection: checks the config and reads the password from `password_env` (a
    /// config error when unset). Nothing is sent yet.
    pub fn connect(config: MailmanConfig) -> Result<Self> {
        let client = config.client()?;
        Ok(Self { config, client })
    }

    /// As [`Mailman::connect`], with the caller's retry policy.
    pub fn connect_with_retry(
        config: MailmanConfig,
        retry: lockstep_http_kit::RetryPolicy,
    ) -> Result<Self> {
        let mut settings = config.client()?.config().clone();
        settings.retry = retry;
        let client = HttpClient::new(settings)?;
        Ok(Self { config, client })
    }

    /// The connection's config.
    pub fn config(&self) -> &MailmanConfig {
        &self.config
    }

    /// The REST client (relative paths go under `<url>/3.1`), for calls this crate does not
    /// wrap, such as creating lists in tests.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The list ids served: the configured one, or every list of the server.
    pub async fn list_ids(&self) -> Result<Vec<String>> {
        if let Some(list_id) = &self.config.list_id {
            return Ok(vec![list_id.clone()]);
        }
        let mut ids = Vec::new();
        for page in 1.. {
            let answer: ListsPage = self
                .client
                .send_json(
                    &Request::get("/lists")
                        .query("count", LIST_PAGE)
                        .query("page", page)
                        .describe("listing the Mailman server's lists"),
                )
                .await?;
            let short = answer.entries.len() < LIST_PAGE;
            ids.extend(answer.entries.into_iter().map(|e| e.list_id));
            if short {
                break;
            }
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }

    /// One stream per list.
    pub async fn catalog(&self) -> Result<Catalog> {
        let streams = self
            .list_ids()
            .await?
            .iter()
            .map(|id| schema::stream_info(id))
            .collect();
        Ok(Catalog { streams })
    }

    /// Makes sure `list_id` is a list of the server, with an error that says how to fix it.
    async fn check_list(&self, list_id: &str) -> Result<()> {
        if let Some(configured) = &self.config.list_id {
            if configured != list_id {
                return Err(ConnectorError::config(format!(
                    "this Mailman connection serves the list `{configured}` only (its \
                     `list_id`), not `{list_id}`; use stream \"{configured}\" or remove \
                     `list_id` from the connection's config"
                )));
            }
        }
        let found = self
            .client
            .send(
                &Request::get(format!("/lists/{}", path::segment(list_id)))
                    .describe(format!("looking up Mailman list `{list_id}`")),
            )
            .await;
        match found {
            Ok(_) => Ok(()),
            Err(lockstep_http_kit::HttpError::NotFound { .. }) => {
                Err(ConnectorError::config(format!(
                    "Mailman at {} has no list `{list_id}`; a stream is a list id (the posting \
                     address with a dot for the `@`), and `lockstep probe` lists the server's",
                    self.config.api_root()
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Starts reading one list's members.
    pub async fn start_read(&self, request: ReadRequest) -> Result<MailmanReader> {
        self.check_list(&request.stream).await?;
        read::open(self.client.clone(), request, self.config.page_size())
    }

    /// Prepares one list for writing. Lists are not created by a sync: a list that does
    /// not exist is a config error.
    pub async fn start_write(&self, request: OpenStreamRequest) -> Result<MailmanWriter> {
        self.check_list(&request.stream).await?;
        write::open(
            self.client.clone(),
            request,
            self.config.subscription_flags(),
        )
    }

    /// Checks that Mailman answers and takes the credentials.
    pub async fn check_access(&self) -> Result<()> {
        self.client
            .send(&Request::get("/system/versions").describe("checking access to Mailman"))
            .await?;
        Ok(())
    }
}

impl Connector for Mailman {
    type Source = Mailman;
    type Destination = Mailman;

    fn manifest() -> Manifest {
        Manifest {
            name: "mailman".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "GNU Mailman 3 list members (core REST API 3.1).".into(),
            features: ["upsert", "delete"].map(String::from).to_vec(),
        }
    }
}

impl SourceConnector for Mailman {
    type Config = MailmanConfig;
    type Reader = MailmanReader;

    async fn open(config: MailmanConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn read(&mut self, request: ReadRequest) -> Result<MailmanReader> {
        self.start_read(request).await
    }
}

impl DestinationConnector for Mailman {
    type Config = MailmanConfig;
    type Writer = MailmanWriter;

    async fn open(config: MailmanConfig, _ctx: Context) -> Result<Self> {
        Self::connect(config)
    }

    async fn check(&mut self) -> Result<()> {
        self.check_access().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<MailmanWriter> {
        self.start_write(request).await
    }
}

lockstep_plugin_sdk::export_connector!(Mailman);
