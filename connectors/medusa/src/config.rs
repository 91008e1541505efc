//! The connection's config: where the Medusa server is, which environment variable holds the
//! secret API key, extra list filters per stream, and what deleting a product does.
//!
//! Invariant: the API key is never part of the config, only the name of the environment
//! variable that holds it (`api_key_env`); no message built here contains it.

use std::collections::BTreeMap;

use lockstep_http_kit::{Auth, ClientConfig, HttpClient, RetryPolicy};
use lockstep_plugin_sdk::{ConnectorError, Result};
use schemars::JsonSchema;
use serde::Deserialize;

use crate::streams::STREAMS;

/// The query parameters the connector sets itself, which `filters` may not name.
const RESERVED_PARAMS: [&str; 7] = [
    "limit",
    "offset",
    "order",
    "fields",
    "with_deleted",
    "updated_at",
    "deleted_at",
];

/// The `config` table of a Medusa connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MedusaConfig {
    /// The server's address, e.g. `https://shop.example.com` (the admin API is under
    /// `/admin`).
    pub url: String,
    /// The environment variable holding a secret admin API key (`sk_…`; Settings > Secret
    /// API Keys, or `POST /admin/api-keys` with `type: "secret"`).
    pub api_key_env: String,
    /// Extra query parameters of a stream's list request, per stream:
    /// `{ customers = { q = "@example.com" }, products = { sales_channel_id = "sc_…" } }`.
    /// A list value sends the parameter once per value. Medusa ignores parameters it does
    /// not know, so check the spelling against its admin API reference.
    #[serde(default)]
    pub filters: BTreeMap<String, BTreeMap<String, FilterValue>>,
    /// Records per list request (default 100, at most 1000).
    #[serde(default)]
    #[schemars(range(min = 1, max = 1000), extend("default" = 100))]
    pub page_size: Option<usize>,
    /// Requests in flight at once (default 4).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 4))]
    pub concurrency: Option<usize>,
    /// What deleting a product does: `delete` (the default; Medusa keeps it as a tombstone
    /// with `deleted_at` set) or `unpublish` (its status becomes `draft`, and it stays).
    #[serde(default)]
    pub product_delete: ProductDelete,
}

/// One filter's value.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FilterValue {
    One(String),
    Many(Vec<String>),
}

/// How a product is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProductDelete {
    /// `DELETE /admin/products/{id}`: soft-deleted, listed with `with_deleted=true`.
    #[default]
    Delete,
    /// `POST /admin/products/{id}` with `status = "draft"`: off the storefront, kept.
    Unpublish,
}

impl MedusaConfig {
    /// Checks the settings that can be checked without the server.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [("url", &self.url), ("api_key_env", &self.api_key_env)] {
            if value.trim().is_empty() {
                return Err(ConnectorError::config(format!(
                    "`{key}` is empty in the Medusa connection's config; set it (see docs/medusa.md)"
                )));
            }
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConnectorError::config(format!(
                "`url = \"{}\"` is not an http:// or https:// address; give the Medusa server's \
                 root, e.g. `https://shop.example.com`",
                self.url
            )));
        }
        if let Some(size) = self.page_size {
            if !(1..=1000).contains(&size) {
                return Err(ConnectorError::config(format!(
                    "`page_size` must be between 1 and 1000; found {size}"
                )));
            }
        }
        if self.concurrency == Some(0) {
            return Err(ConnectorError::config("`concurrency` must be at least 1"));
        }
        for (stream, params) in &self.filters {
            if !STREAMS.contains(&stream.as_str()) {
                return Err(ConnectorError::config(format!(
                    "`filters` names the stream `{stream}`, which this connector does not serve; \
                     it serves {}",
                    STREAMS.join(", ")
                )));
            }
            for name in params.keys() {
                let base = name.split('[').next().unwrap_or(name);
                if RESERVED_PARAMS.contains(&base) {
                    return Err(ConnectorError::config(format!(
                        "`filters.{stream}` sets `{name}`, which the connector sets itself \
                         (it pages, orders and reads changes with {}); leave it out",
                        RESERVED_PARAMS.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }

    /// Records per list request.
    pub fn page_size(&self) -> usize {
        self.page_size.unwrap_or(100)
    }

    /// The extra query parameters of `stream`'s list request, in order.
    pub fn filters(&self, stream: &str) -> Vec<(String, String)> {
        let mut params = Vec::new();
        for (name, value) in self.filters.get(stream).into_iter().flatten() {
            match value {
                FilterValue::One(v) => params.push((name.clone(), v.clone())),
                FilterValue::Many(values) => {
                    for v in values {
                        params.push((format!("{name}[]"), v.clone()));
                    }
                }
            }
        }
        params
    }

    /// The HTTP client: the key from `api_key_env` as the basic-auth user, as Medusa's
    /// "API Key Authentication" asks.
    pub fn client(&self) -> Result<HttpClient> {
        self.client_with(RetryPolicy::default())
    }

    /// [`MedusaConfig::client`] with the caller's retry policy.
    pub fn client_with(&self, retry: RetryPolicy) -> Result<HttpClient> {
        self.validate()?;
        let auth = Auth::basic_secret_as_user_from_env("api_key_env", &self.api_key_env)?;
        let mut settings = ClientConfig::new("Medusa", self.url.trim_end_matches('/'), auth);
        settings.concurrency = self.concurrency.unwrap_or(4).max(1);
        settings.retry = retry;
        // Medusa answers errors as `{"type": "invalid_data", "message": "…"}`.
        settings.error_message_pointers = vec!["/message".into()];
        Ok(HttpClient::new(settings)?)
    }
}
