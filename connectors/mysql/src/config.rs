//! The connection's config, and the password its URL may carry (never printed).

use lockstep_sql_kit::{describe_read_config, ReadConfig};
use schemars::{JsonSchema, Schema};
use serde::Deserialize;

pub use lockstep_sql_kit::DEFAULT_BATCH_SIZE;

/// A connection's config.
#[derive(Deserialize, Clone, JsonSchema)]
#[schemars(transform = describe_read_settings)]
pub struct Config {
    /// `mysql://user[:password]@host[:port]/database[?ssl-mode=disabled|preferred|required|verify_ca|verify_identity&ssl-ca=/path/ca.pem]`.
    /// The database is required. Prefer `password_env` to a password in the URL.
    pub url: String,
    /// Name of the environment variable holding the password; overrides a password in the
    /// URL.
    #[serde(default)]
    pub password_env: Option<String>,
    /// `batch_size` and `lookback`, as the SQL connectors share them.
    #[serde(flatten)]
    pub read: ReadConfig,
}

/// What `batch_size` and `lookback` mean here, in the config schema.
fn describe_read_settings(schema: &mut Schema) {
    describe_read_config(
        schema,
        "Rows per batch when the read request sets none.",
        "Incremental reads restart this far before the checkpoint's cursor (timestamp and date\n\
         cursors only), to catch late commits: `0s`, `30s`, `5m`, `1h30m`, `2d`.",
    );
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: it is never printed.
        f.debug_struct("Config")
            .field("password_env", &self.password_env)
            .field("batch_size", &self.read.batch_size)
            .field("lookback", &self.read.lookback)
            .finish_non_exhaustive()
    }
}

/// The password of a `user:password@host` URL body, percent-decoded, if any.
pub(crate) fn url_password(rest: &str) -> Option<String> {
    let authority = rest.split(['/', '?']).next()?;
    let userinfo = authority.rsplit_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    let decoded = percent_decode(password);
    (!decoded.is_empty()).then_some(decoded)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_and_percent_decoded() {
        assert_eq!(url_password("u:p%40ss1@h:1/db").as_deref(), Some("p@ss1"));
        assert_eq!(url_password("u@h/db"), None);
    }
}
