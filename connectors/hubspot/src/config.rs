//! The connection's config.

use std::collections::BTreeMap;
use std::time::Duration;

use lockstep_http_kit::{Auth, ClientConfig, HeaderName, HttpClient, RateLimit, RateLimitHeaders};
use lockstep_plugin_sdk::{ConnectorError, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// HubSpot's API host.
pub const DEFAULT_BASE_URL: &str = "https://api.hubapi.com";

/// The `config` table of a HubSpot connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSpotConfig {
    /// The environment variable holding the private app's access token.
    pub token_env: String,
    /// The API's base URL (tests point it at a fake).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The account's request limit. Per "API usage guidelines" (developers.hubspot.com/docs/
    /// api/usage-details): private apps may make 100 requests per 10 seconds by default.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// Search requests per second. Per "CRM search": the search endpoints are limited to
    /// five requests per second per account; the default stays one under it.
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 4))]
    pub search_per_second: Option<u32>,
    /// Which properties to read, per stream (`{ contacts = ["email", "firstname"] }`); every
    /// property when a stream is not named.
    #[serde(default)]
    pub properties: BTreeMap<String, Vec<String>>,
    /// Requests in flight at once (default 4).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 4))]
    pub concurrency: Option<usize>,
}

/// `requests` per `per_seconds`.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// How many requests the window allows.
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// The window's length in seconds.
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub per_seconds: f64,
}

fn default_base_url() -> String {
    DEFAULT_BASE_URL.into()
}

impl HubSpotConfig {
    /// The account's limit, checked.
    pub fn rate_limit(&self) -> Result<RateLimit> {
        let limit = self.rate_limit.unwrap_or(RateLimitConfig {
            requests: 100,
            per_seconds: 10.0,
        });
        if limit.requests == 0 || !(limit.per_seconds > 0.0 && limit.per_seconds.is_finite()) {
            return Err(ConnectorError::config(format!(
                "`rate_limit` must allow at least one request per a positive number of seconds, \
                 e.g. `rate_limit = {{ requests = 100, per_seconds = 10 }}`; found {} per {}",
                limit.requests, limit.per_seconds
            )));
        }
        Ok(RateLimit::new(
            limit.requests,
            Duration::from_secs_f64(limit.per_seconds),
        ))
    }

    /// The HTTP client for this connection: bearer token from `token_env`, the account's
    /// budget, HubSpot's rate-limit headers.
    pub fn client(&self) -> Result<HttpClient> {
        let auth = Auth::bearer_from_env("token_env", &self.token_env)?;
        let mut settings = ClientConfig::new("HubSpot", &self.base_url, auth);
        settings.rate_limit = Some(self.rate_limit()?);
        settings.concurrency = self.concurrency.unwrap_or(4).max(1);
        // Per "API usage guidelines": answers carry X-HubSpot-RateLimit-Remaining.
        settings.rate_limit_headers = RateLimitHeaders {
            remaining: vec![HeaderName::from_static("x-hubspot-ratelimit-remaining")],
        };
        Ok(HttpClient::new(settings)?)
    }

    /// Search requests per second.
    pub fn search_per_second(&self) -> u32 {
        self.search_per_second.unwrap_or(4).max(1)
    }
}
