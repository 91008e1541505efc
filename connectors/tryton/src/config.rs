//! The connection's config: where the Tryton server is, who logs in, which models are
//! streams, and how incremental reads overlap.
//!
//! Invariant: the password is never part of the config, only the name of the environment
//! variable that holds it (`password_env`).

use std::collections::BTreeMap;
use std::time::Duration;

use lockstep_plugin_sdk::{ConnectorError, Result};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// The models served when `models` is not set.
pub const DEFAULT_MODELS: [&str; 5] = [
    "party.party",
    "party.address",
    "party.contact_mechanism",
    "product.template",
    "product.product",
];

/// The `config` table of a Tryton connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrytonConfig {
    /// The server's address, e.g. `https://erp.example.com` (without the database).
    pub url: String,
    /// The database on that server.
    pub database: String,
    /// The Tryton user that logs in.
    pub username: String,
    /// The environment variable holding the user's password.
    pub password_env: String,
    /// The models exposed as streams.
    #[serde(default)]
    #[schemars(extend("default" = DEFAULT_MODELS))]
    pub models: Option<Vec<String>>,
    /// Which fields to read, per model (`{ "party.party" = ["name", "code"] }`); every
    /// stored field when a model is not named.
    #[serde(default)]
    pub fields: BTreeMap<String, Vec<String>>,
    /// Whether each many-to-one field also comes with the related record's name, as
    /// `<field>_rec_name`.
    #[serde(default)]
    pub rec_names: bool,
    /// How far back before the last watermark an incremental read looks again, in seconds
    /// (default 60): Tryton stamps a record with its transaction's start, so a transaction
    /// that commits late can hold records stamped before the watermark.
    #[serde(default)]
    #[schemars(range(min = 0.0), extend("default" = 60))]
    pub overlap_seconds: Option<f64>,
    /// Records per `search_read` call (default 500).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 500))]
    pub page_size: Option<usize>,
    /// Records per `create`, `write` or `delete` call (default 100).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 100))]
    pub write_batch: Option<usize>,
    /// Extra context sent with every call, merged over the user's preferences
    /// (`{ company = 1 }`).
    #[serde(default)]
    pub context: serde_json::Map<String, Value>,
    /// Requests in flight at once (default 2).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 2))]
    pub concurrency: Option<usize>,
}

impl TrytonConfig {
    /// Checks the settings that can be checked without the server.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("url", &self.url),
            ("database", &self.database),
            ("username", &self.username),
            ("password_env", &self.password_env),
        ] {
            if value.trim().is_empty() {
                return Err(ConnectorError::config(format!(
                    "`{key}` is empty in the Tryton connection's config; set it (see docs/tryton.md)"
                )));
            }
        }
        if self.database.contains('/') {
            return Err(ConnectorError::config(format!(
                "`database = \"{}\"` holds a `/`; give the database's name alone, and the \
                 server's address in `url`",
                self.database
            )));
        }
        if let Some(overlap) = self.overlap_seconds {
            if !(overlap >= 0.0 && overlap.is_finite()) {
                return Err(ConnectorError::config(format!(
                    "`overlap_seconds` must be a number of seconds, 0 or more; found {overlap}"
                )));
            }
        }
        if self.page_size == Some(0) || self.write_batch == Some(0) {
            return Err(ConnectorError::config(
                "`page_size` and `write_batch` must be at least 1",
            ));
        }
        for model in self.fields.keys() {
            if !self.models().iter().any(|m| m == model) {
                return Err(ConnectorError::config(format!(
                    "`fields` names the model `{model}`, which is not in `models` ({})",
                    self.models().join(", ")
                )));
            }
        }
        Ok(())
    }

    /// The models served.
    pub fn models(&self) -> Vec<String> {
        match &self.models {
            Some(models) => models.clone(),
            None => DEFAULT_MODELS.map(String::from).to_vec(),
        }
    }

    /// The overlap window of incremental reads.
    pub fn overlap(&self) -> Duration {
        Duration::from_secs_f64(self.overlap_seconds.unwrap_or(60.0))
    }

    pub fn page_size(&self) -> usize {
        self.page_size.unwrap_or(500)
    }

    pub fn write_batch(&self) -> usize {
        self.write_batch.unwrap_or(100)
    }
}
