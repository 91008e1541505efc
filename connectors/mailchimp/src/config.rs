//! The connection's config, and the HTTP client it makes.
//!
//! Invariant: the API key is read from the environment variable `api_key_env` names and
//! goes straight into the kit's secret holder; no message built here contains it.

use lockstep_http_kit::auth::AuthScheme;
use lockstep_http_kit::{Auth, ClientConfig, HttpClient, SecretString};
use lockstep_plugin_sdk::{ConnectorError, Result};
use schemars::JsonSchema;
use serde::Deserialize;

/// Per "Fundamentals" (mailchimp.com/developer/marketing/docs/fundamentals): "each user
/// account is permitted up to 10 simultaneous connections".
pub const MAX_CONNECTIONS: usize = 10;

/// The `config` table of a Mailchimp connection.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MailchimpConfig {
    /// The environment variable holding the API key (which ends in the account's data
    /// center, e.g. `-us21`).
    pub api_key_env: String,
    /// The audience (list) id, as shown under Audience > Settings > Audience name and
    /// defaults.
    pub list_id: String,
    /// The API root; by default `https://<dc>.api.mailchimp.com/3.0`, with the data center
    /// taken from the key's suffix (tests point it at a fake).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Requests in flight at once (default and maximum 10, Mailchimp's limit per account).
    #[serde(default)]
    #[schemars(range(min = 1, max = 10), extend("default" = 10))]
    pub concurrency: Option<usize>,
    /// The status given to new members when the sync does not map `status`.
    #[serde(default)]
    pub default_status: NewMemberStatus,
    /// Whether a sync that maps `status` explicitly may resubscribe a member who
    /// unsubscribed or was cleaned. Off by default: consent given up in Mailchimp is never
    /// overwritten by a sync.
    #[serde(default)]
    pub allow_resubscribe: bool,
    /// What deleting a member does: `archive` (the default; the member can be added back)
    /// or `permanent` (the member and their history are erased and cannot be imported
    /// again).
    #[serde(default)]
    pub delete: DeleteMode,
}

/// The status of members a sync adds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NewMemberStatus {
    /// Subscribed at once.
    #[default]
    Subscribed,
    /// Sent a confirmation email first (double opt-in).
    Pending,
    /// Added for transactional mail only.
    Transactional,
}

impl NewMemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NewMemberStatus::Subscribed => "subscribed",
            NewMemberStatus::Pending => "pending",
            NewMemberStatus::Transactional => "transactional",
        }
    }
}

/// How a member is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeleteMode {
    /// `DELETE /lists/{list_id}/members/{hash}`: archived, can be added back.
    #[default]
    Archive,
    /// `POST …/actions/delete-permanent`: erased for good.
    Permanent,
}

impl MailchimpConfig {
    /// The API key from the environment, checked.
    fn api_key(&self) -> Result<String> {
        let variable = &self.api_key_env;
        match std::env::var(variable) {
            Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
            _ => Err(ConnectorError::config(format!(
                "the environment variable `{variable}` (named by the connection's `api_key_env`) \
                 is not set or empty; set it to the Mailchimp API key (Profile > Extras > API \
                 keys)"
            ))),
        }
    }

    /// The API root: `base_url`, or the data center's from the key's `-<dc>` suffix.
    fn root(&self, key: &str) -> Result<String> {
        if let Some(url) = &self.base_url {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        // Per "Fundamentals": "the last part of your Mailchimp API key that follows the
        // dash" is the data center, and the root is https://<dc>.api.mailchimp.com/3.0.
        let dc = key.rsplit_once('-').map(|(_, dc)| dc).unwrap_or("");
        let valid = !dc.is_empty()
            && dc.len() <= 8
            && dc
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && dc.chars().any(|c| c.is_ascii_digit());
        if !valid {
            return Err(ConnectorError::config(format!(
                "the API key in `{}` (named by `api_key_env`) does not end in a data center such \
                 as `-us21`; copy the whole key from Mailchimp, or set `base_url`",
                self.api_key_env
            )));
        }
        Ok(format!("https://{dc}.api.mailchimp.com/3.0"))
    }

    /// The HTTP client: Basic authentication with the key as the password, at most
    /// `concurrency` (10) requests in flight, problem-details messages.
    pub fn client(&self) -> Result<HttpClient> {
        if self.list_id.trim().is_empty() {
            return Err(ConnectorError::config(
                "`list_id` is empty; set it to the audience id (Audience > Settings > Audience \
                 name and defaults)",
            ));
        }
        let concurrency = self.concurrency.unwrap_or(MAX_CONNECTIONS);
        if !(1..=MAX_CONNECTIONS).contains(&concurrency) {
            return Err(ConnectorError::config(format!(
                "`concurrency` must be between 1 and {MAX_CONNECTIONS} (Mailchimp allows 10 \
                 simultaneous connections per account); found {concurrency}"
            )));
        }
        let key = self.api_key()?;
        let root = self.root(&key)?;
        // Per "Fundamentals": HTTP Basic with any user name and the key as the password.
        let auth = Auth::with_secret(
            AuthScheme::Basic {
                username: "lockstep".into(),
            },
            "api_key_env",
            &self.api_key_env,
            SecretString::from(key),
        );
        let mut settings = ClientConfig::new("Mailchimp", root, auth);
        settings.concurrency = concurrency;
        // Per "Errors" (mailchimp.com/developer/marketing/docs/errors): a problem document
        // whose `detail` says what happened and `title` names the kind.
        settings.error_message_pointers = ["/detail", "/title"].map(String::from).to_vec();
        Ok(HttpClient::new(settings)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(base_url: Option<&str>) -> MailchimpConfig {
        serde_json::from_value(serde_json::json!({
            "api_key_env": "MAILCHIMP_KEY_FOR_UNIT_TESTS",
            "list_id": "abc",
            "base_url": base_url,
        }))
        .unwrap()
    }

    #[test]
    fn the_data_center_comes_from_the_keys_suffix() {
        let root = config(None)
            .root("0123456789abcdef0123456789abcdef-us21")
            .unwrap();
        assert_eq!(root, "https://us21.api.mailchimp.com/3.0");
        let overridden = config(Some("http://127.0.0.1:9/"))
            .root("no-suffix")
            .unwrap();
        assert_eq!(overridden, "http://127.0.0.1:9");
    }

    #[test]
    fn a_key_without_a_data_center_is_a_config_error_that_does_not_show_the_key() {
        for key in [
            "0123456789abcdef0123456789abcdef",
            "secret-",
            "secret-US21!",
        ] {
            let error = config(None).root(key).unwrap_err();
            assert_eq!(error.kind, lockstep_plugin_sdk::api::ErrorKind::CONFIG);
            assert!(error.message.contains("api_key_env"), "{}", error.message);
            assert!(!error.message.contains(key), "{}", error.message);
        }
    }
}
