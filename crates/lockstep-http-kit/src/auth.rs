//! How a connection proves who it is: a bearer token, basic credentials, or an API key in a
//! header, each read from an environment variable that the connection's config names.
//!
//! Invariant: the secret is held in a [`SecretString`] from the moment it is read; `Debug`
//! shows the scheme and the variable's name, never the value.

use std::fmt;

use lockstep_plugin_sdk::ConnectorError;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

/// The way credentials travel with each request.
#[derive(Debug, Clone)]
pub enum AuthScheme {
    /// No credentials (public APIs and tests).
    None,
    /// `Authorization: Bearer <secret>` (private-app tokens, OAuth access tokens).
    Bearer,
    /// `Authorization: Basic base64(<username>:<secret>)`.
    Basic { username: String },
    /// `Authorization: Basic base64(<secret>:)`: the secret is the user and the password is
    /// empty (Medusa's secret API keys).
    BasicSecretAsUser,
    /// `<header>: <secret>`.
    ApiKeyHeader { header: HeaderName },
}

/// A connection's credentials, and where they came from (for messages that say what to fix).
#[derive(Clone)]
pub struct Auth {
    scheme: AuthScheme,
    secret: Option<SecretString>,
    /// The config key that names the variable, e.g. `token_env`.
    setting: String,
    /// The environment variable the secret was read from, e.g. `HUBSPOT_TOKEN`.
    variable: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("scheme", &self.scheme)
            .field("setting", &self.setting)
            .field("variable", &self.variable)
            .field("secret", &self.secret.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl Auth {
    /// No credentials.
    pub fn none() -> Self {
        Self {
            scheme: AuthScheme::None,
            secret: None,
            setting: String::new(),
            variable: String::new(),
        }
    }

    /// A bearer token read from the environment variable `variable`, which the config key
    /// `setting` names (for instance `token_env = "HUBSPOT_TOKEN"`).
    pub fn bearer_from_env(setting: &str, variable: &str) -> Result<Self, ConnectorError> {
        Ok(Self::with_secret(
            AuthScheme::Bearer,
            setting,
            variable,
            read_env(setting, variable)?,
        ))
    }

    /// Basic credentials: `username` with the password read from `variable`.
    pub fn basic_from_env(
        username: &str,
        setting: &str,
        variable: &str,
    ) -> Result<Self, ConnectorError> {
        Ok(Self::with_secret(
            AuthScheme::Basic {
                username: username.to_owned(),
            },
            setting,
            variable,
            read_env(setting, variable)?,
        ))
    }

    /// Basic credentials whose user is the secret read from `variable`, with an empty
    /// password.
    pub fn basic_secret_as_user_from_env(
        setting: &str,
        variable: &str,
    ) -> Result<Self, ConnectorError> {
        Ok(Self::with_secret(
            AuthScheme::BasicSecretAsUser,
            setting,
            variable,
            read_env(setting, variable)?,
        ))
    }

    /// An API key sent in the header `header`, read from `variable`.
    pub fn api_key_header_from_env(
        header: &str,
        setting: &str,
        variable: &str,
    ) -> Result<Self, ConnectorError> {
        let header = HeaderName::from_bytes(header.as_bytes()).map_err(|_| {
            ConnectorError::config(format!(
                "`{header}` is not a valid HTTP header name for the API key; use letters, digits \
                 and dashes, e.g. `X-Api-Key`"
            ))
        })?;
        Ok(Self::with_secret(
            AuthScheme::ApiKeyHeader { header },
            setting,
            variable,
            read_env(setting, variable)?,
        ))
    }

    /// Credentials from a secret already in hand (tests, secrets from files).
    pub fn with_secret(
        scheme: AuthScheme,
        setting: &str,
        variable: &str,
        secret: SecretString,
    ) -> Self {
        Self {
            scheme,
            secret: Some(secret),
            setting: setting.to_owned(),
            variable: variable.to_owned(),
        }
    }

    /// The secret, for scrubbing it out of texts; `None` without credentials.
    pub(crate) fn secret(&self) -> Option<&SecretString> {
        self.secret.as_ref()
    }

    /// What to tell a person whose credentials were refused: which setting and variable.
    pub fn fix_hint(&self) -> String {
        if self.secret.is_none() {
            return "the connection sends no credentials; configure them".into();
        }
        format!(
            "check the credentials in the environment variable `{}` (named by the connection's \
             `{}` setting): they may be wrong, expired, revoked or lack a permission",
            self.variable, self.setting
        )
    }

    /// Adds the credentials to a request. The header value is marked sensitive, so that
    /// reqwest and `http` print it redacted.
    pub(crate) fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let Some(secret) = &self.secret else {
            return request;
        };
        match &self.scheme {
            AuthScheme::None => request,
            AuthScheme::Bearer => request.bearer_auth(secret.expose_secret()),
            AuthScheme::Basic { username } => {
                request.basic_auth(username, Some(secret.expose_secret()))
            }
            AuthScheme::BasicSecretAsUser => {
                request.basic_auth(secret.expose_secret(), None::<&str>)
            }
            AuthScheme::ApiKeyHeader { header } => {
                match HeaderValue::from_str(secret.expose_secret()) {
                    Ok(mut value) => {
                        value.set_sensitive(true);
                        request.header(header.clone(), value)
                    }
                    // Checked when the client is built (see `validate`); unreachable there.
                    Err(_) => request,
                }
            }
        }
    }

    /// Checks that the secret can travel in a header, so that a bad value is a config error
    /// when the connection opens rather than a confusing failure later.
    pub(crate) fn validate(&self) -> Result<(), ConnectorError> {
        if let Some(secret) = &self.secret {
            if HeaderValue::from_str(secret.expose_secret()).is_err() {
                return Err(ConnectorError::config(format!(
                    "the environment variable `{}` (named by `{}`) holds characters that cannot \
                     travel in an HTTP header (a line break or a control character?); store the \
                     credential alone, without quotes or newlines",
                    self.variable, self.setting
                )));
            }
        }
        Ok(())
    }
}

fn read_env(setting: &str, variable: &str) -> Result<SecretString, ConnectorError> {
    if variable.is_empty() {
        return Err(ConnectorError::config(format!(
            "`{setting}` is empty: set it to the name of the environment variable that holds the \
             credential, e.g. `{setting} = \"ACME_TOKEN\"`"
        )));
    }
    match std::env::var(variable) {
        Ok(value) if value.trim().is_empty() => Err(ConnectorError::config(format!(
            "the environment variable `{variable}` (named by `{setting}`) is empty: put the \
             credential in it before the run"
        ))),
        Ok(value) => Ok(SecretString::from(value.trim().to_owned())),
        Err(std::env::VarError::NotPresent) => Err(ConnectorError::config(format!(
            "the environment variable `{variable}` (named by `{setting}`) is not set: export \
             the credential in it before the run, or point `{setting}` at the variable that \
             holds it"
        ))),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConnectorError::config(format!(
            "the environment variable `{variable}` (named by `{setting}`) is not valid UTF-8"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let auth = Auth::with_secret(
            AuthScheme::Bearer,
            "token_env",
            "ACME_TOKEN",
            SecretString::from("pat-na1-very-secret"),
        );
        let text = format!("{auth:?}");
        assert!(!text.contains("very-secret"), "{text}");
        assert!(
            text.contains("ACME_TOKEN") && text.contains("REDACTED"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_variable_is_a_config_error_naming_setting_and_variable() {
        let e = Auth::bearer_from_env("token_env", "LOCKSTEP_HTTP_KIT_SURELY_UNSET").unwrap_err();
        assert_eq!(e.kind, lockstep_plugin_sdk::api::ErrorKind::CONFIG);
        assert!(e.message.contains("token_env"), "{}", e.message);
        assert!(
            e.message.contains("LOCKSTEP_HTTP_KIT_SURELY_UNSET"),
            "{}",
            e.message
        );
        let e = Auth::bearer_from_env("token_env", "").unwrap_err();
        assert!(e.message.contains("`token_env` is empty"), "{}", e.message);
    }

    #[test]
    fn a_secret_with_a_newline_is_refused_when_validated() {
        let auth = Auth::with_secret(
            AuthScheme::Bearer,
            "token_env",
            "T",
            SecretString::from("abc\ndef"),
        );
        let e = auth.validate().unwrap_err();
        assert!(e.message.contains("`T`") && !e.message.contains("abc"));
    }
}
