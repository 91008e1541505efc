//! Keeping secrets out of logs and messages: the secret itself scrubbed from any text taken
//! from a server, credential-like query parameters masked in logged URLs, and long bodies cut
//! to an excerpt.

use secrecy::{ExposeSecret, SecretString};

/// What replaces a secret in texts.
pub(crate) const REDACTED: &str = "[REDACTED]";

/// The longest body excerpt a log line or message carries, in bytes.
pub(crate) const EXCERPT_BYTES: usize = 1024;

/// Query parameter names whose values are masked in logged URLs (substrings, any case).
const SECRET_PARAMS: [&str; 7] = [
    "token",
    "key",
    "secret",
    "password",
    "signature",
    "auth",
    "code",
];

/// `text` with every occurrence of `secret` replaced.
pub(crate) fn scrub(text: &str, secret: Option<&SecretString>) -> String {
    match secret.map(|s| s.expose_secret()) {
        Some(secret) if !secret.is_empty() && text.contains(secret) => {
            text.replace(secret, REDACTED)
        }
        _ => text.to_owned(),
    }
}

/// The start of a body, as text, cut at a character boundary.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.len() <= EXCERPT_BYTES {
        return text.into_owned();
    }
    let mut end = EXCERPT_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], body.len())
}

/// A URL for logs: credential-like query parameters masked, and user info removed.
pub(crate) fn url_for_log(url: &reqwest::Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let lower = k.to_ascii_lowercase();
                let secret = SECRET_PARAMS.iter().any(|p| lower.contains(p));
                (
                    k.into_owned(),
                    if secret {
                        REDACTED.to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_and_urls_masked() {
        let secret = SecretString::from("s3cr3t");
        assert_eq!(
            scrub("token s3cr3t refused", Some(&secret)),
            "token [REDACTED] refused"
        );
        let url = reqwest::Url::parse("https://u:p@h/x?limit=10&api_key=s3cr3t").unwrap();
        let logged = url_for_log(&url);
        assert!(
            !logged.contains("s3cr3t") && !logged.contains("u:p"),
            "{logged}"
        );
        assert!(logged.contains("limit=10"), "{logged}");
        let long = "é".repeat(2000);
        assert!(excerpt(long.as_bytes()).ends_with("(4000 bytes in all)"));
    }
}
