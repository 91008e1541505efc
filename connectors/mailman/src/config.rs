//! The connection's config: where Mailman core's REST API is, who logs in, which lists are
//! streams, how members are paged and how subscriptions are made.
//!
//! Invariant: the password is never part of the config, only the name of the environment
//! variable that holds it (`password_env`).

use std::time::Duration;

use lockstep_http_kit::{Auth, ClientConfig, HttpClient, RateLimit};
use lockstep_plugin_sdk::{ConnectorError, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// The REST API version this connector speaks.
pub const API_VERSION: &str = "3.1";

/// The `config` table of a Mailman connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailmanConfig {
    /// The REST API's root, e.g. `http://localhost:8001` (a trailing `/3.1` is accepted).
    pub url: String,
    /// The REST admin user (`[webservice] admin_user` in mailman.cfg).
    pub username: String,
    /// The environment variable holding the REST admin password.
    pub password_env: String,
    /// The one list served, by list id (`news.example.com`); every list of the server, one
    /// stream each, when not set.
    #[serde(default)]
    pub list_id: Option<String>,
    /// Members per page of a roster read (default 100).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 100))]
    pub page_size: Option<usize>,
    /// Subscribe without verifying the address by mail (default true).
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub pre_verified: Option<bool>,
    /// Subscribe without asking the subscriber to confirm by mail (default true).
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub pre_confirmed: Option<bool>,
    /// Subscribe without the list moderator's approval (default true).
    #[serde(default)]
    #[schemars(extend("default" = true))]
    pub pre_approved: Option<bool>,
    /// Send the list's welcome message to new subscribers (default false).
    #[serde(default)]
    #[schemars(extend("default" = false))]
    pub send_welcome_message: Option<bool>,
    /// At most this many requests per second (default: no limit; a self-hosted server has
    /// no documented limit).
    #[serde(default)]
    #[schemars(extend("exclusiveMinimum" = 0))]
    pub requests_per_second: Option<f64>,
    /// Requests in flight at once (default 2).
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = 2))]
    pub concurrency: Option<usize>,
}

impl MailmanConfig {
    /// Checks the settings that can be checked without the server.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("url", &self.url),
            ("username", &self.username),
            ("password_env", &self.password_env),
        ] {
            if value.trim().is_empty() {
                return Err(ConnectorError::config(format!(
                    "`{key}` is empty in the Mailman connection's config; set it (see docs/mailman.md)"
                )));
            }
        }
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConnectorError::config(format!(
                "`url = \"{}\"` is not an http:// or https:// address; give the REST API's root, \
                 e.g. `url = \"http://localhost:8001\"`",
                self.url
            )));
        }
        if let Some(list_id) = &self.list_id {
            if list_id.contains('@') || !list_id.contains('.') {
                return Err(ConnectorError::config(format!(
                    "`list_id = \"{list_id}\"` is not a Mailman list id; a list id is the posting \
                     address with a dot for the `@`: `news.example.com` for news@example.com"
                )));
            }
        }
        if self.page_size == Some(0) {
            return Err(ConnectorError::config("`page_size` must be at least 1"));
        }
        if let Some(rate) = self.requests_per_second {
            if !(rate > 0.0 && rate.is_finite()) {
                return Err(ConnectorError::config(format!(
                    "`requests_per_second` must be a positive number, found {rate}"
                )));
            }
        }
        Ok(())
    }

    /// The REST root with the API version: `http://host:8001/3.1`.
    pub fn api_root(&self) -> String {
        let root = self.url.trim_end_matches('/');
        let root = root
            .strip_suffix(&format!("/{API_VERSION}"))
            .unwrap_or(root);
        format!("{root}/{API_VERSION}")
    }

    pub fn page_size(&self) -> usize {
        self.page_size.unwrap_or(100).max(1)
    }

    /// The subscription flags, as the REST API names them.
    pub fn subscription_flags(&self) -> [(&'static str, bool); 4] {
        [
            ("pre_verified", self.pre_verified.unwrap_or(true)),
            ("pre_confirmed", self.pre_confirmed.unwrap_or(true)),
            ("pre_approved", self.pre_approved.unwrap_or(true)),
            (
                "send_welcome_message",
                self.send_welcome_message.unwrap_or(false),
            ),
        ]
    }

    /// The HTTP client: basic auth with the password from `password_env`.
    pub fn client(&self) -> Result<HttpClient> {
        self.validate()?;
        let auth = Auth::basic_from_env(&self.username, "password_env", &self.password_env)?;
        let mut settings = ClientConfig::new("Mailman", self.api_root(), auth);
        settings.concurrency = self.concurrency.unwrap_or(2).max(1);
        if let Some(rate) = self.requests_per_second {
            // One request per 1/rate seconds, as a budget of one request per interval.
            settings.rate_limit = Some(RateLimit::new(1, Duration::from_secs_f64(1.0 / rate)));
        }
        // Mailman's REST errors are falcon's `{"title": "409 Conflict", "description": ...}`.
        settings.error_message_pointers = ["/description", "/title", "/message"]
            .map(String::from)
            .to_vec();
        Ok(HttpClient::new(settings)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::api::ErrorKind;
    use serde_json::json;

    fn config(extra: serde_json::Value) -> MailmanConfig {
        let mut base = json!({"url": "http://localhost:8001", "username": "restadmin",
                              "password_env": "MAILMAN_PASSWORD"});
        base.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn the_api_root_takes_the_version_once() {
        assert_eq!(config(json!({})).api_root(), "http://localhost:8001/3.1");
        let given = config(json!({"url": "https://lists.example.com/3.1/"}));
        assert_eq!(given.api_root(), "https://lists.example.com/3.1");
    }

    #[test]
    fn bad_settings_are_config_errors_naming_the_key() {
        for (extra, named) in [
            (json!({"list_id": "news@example.com"}), "list_id"),
            (json!({"page_size": 0}), "page_size"),
            (json!({"requests_per_second": -1.0}), "requests_per_second"),
            (json!({"url": "localhost:8001"}), "url"),
            (json!({"username": " "}), "username"),
        ] {
            let error = config(extra.clone()).validate().unwrap_err();
            assert_eq!(error.kind, ErrorKind::CONFIG, "{extra}");
            assert!(error.message.contains(named), "{extra}: {}", error.message);
        }
        assert!(config(json!({"list_id": "news.example.com"}))
            .validate()
            .is_ok());
    }

    #[test]
    fn subscriptions_mail_nobody_by_default() {
        assert_eq!(
            config(json!({})).subscription_flags(),
            [
                ("pre_verified", true),
                ("pre_confirmed", true),
                ("pre_approved", true),
                ("send_welcome_message", false),
            ]
        );
    }
}
