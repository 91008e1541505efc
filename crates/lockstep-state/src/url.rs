//! Parsing state store URLs, and keeping their secrets out of messages.

use std::path::PathBuf;

use crate::error::StateError;

/// Query parameters whose values are secrets.
const SECRET_PARAMS: [&str; 4] = ["password", "sslpassword", "pass", "pwd"];

/// Secrets shorter than this are not scrubbed from driver messages: replacing every "a" in a
/// message would make it unreadable, and drivers never echo passwords anyway. Scrubbing is a
/// second line of defence; the first is that URLs are redacted before use in messages.
const MIN_SCRUBBED_SECRET: usize = 4;

/// Where a state store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    SqliteFile(PathBuf),
    SqliteMemory,
    Postgres,
}

impl Target {
    /// Chooses the backend for `url`, or explains which forms are accepted.
    pub(crate) fn parse(url: &str) -> Result<Target, StateError> {
        let invalid = |reason: &str| StateError::InvalidUrl {
            url: redact_url(url),
            reason: reason.to_owned(),
        };
        let url = url.trim();
        if url.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest == ":memory:" {
                return Ok(Target::SqliteMemory);
            }
            if rest.contains('?') {
                return Err(invalid(
                    "SQLite URLs take no query parameters (the store always uses WAL mode, \
                     synchronous=FULL and a busy timeout)",
                ));
            }
            if rest.is_empty() {
                return Err(invalid("it names no database file"));
            }
            return Ok(Target::SqliteFile(PathBuf::from(rest)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres);
        }
        if let Some((scheme, _)) = url.split_once("://") {
            return Err(invalid(&format!(
                "the scheme `{scheme}` is not supported (only `sqlite` and `postgres`)"
            )));
        }
        Ok(Target::SqliteFile(PathBuf::from(url)))
    }
}

/// Returns `url` without userinfo (user and password) and with the values of password query
/// parameters replaced by `REDACTED`, fit for messages and logs.
///
/// Text without `://` (a plain file path) is returned unchanged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_at(scheme_end + 3);
    // The userinfo ends at the last `@`. Searching the whole rest, not only the authority,
    // errs on the side of hiding too much when a password holds an unescaped `/` or `?`.
    let rest = match rest.rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let Some((before_query, query)) = rest.split_once('?') else {
        return format!("{scheme}{rest}");
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{scheme}{before_query}?{}", query.join("&"))
}

/// Replaces the secrets of `url` (its password, raw and percent-decoded, and password query
/// parameters) in `text` with `REDACTED`.
pub(crate) fn scrub(text: &str, url: &str) -> String {
    let mut text = text.to_owned();
    for secret in secrets(url) {
        if secret.len() >= MIN_SCRUBBED_SECRET {
            text = text.replace(&secret, "REDACTED");
        }
    }
    text
}

/// The secrets written in `url`, longest first (so that a secret containing another is
/// replaced whole).
fn secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        return found;
    };
    let rest = &url[scheme_end + 3..];
    if let Some(at) = rest.rfind('@') {
        let userinfo = &rest[..at];
        if let Some((_, password)) = userinfo.split_once(':') {
            found.push(password.to_owned());
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some((name, value)) = pair.split_once('=') {
                if is_secret_param(name) {
                    found.push(value.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
}

/// Decodes `%XX` escapes; invalid escapes and invalid UTF-8 are kept as they are.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_chosen_by_scheme() {
        assert_eq!(
            Target::parse("sqlite://a/b.db").unwrap(),
            Target::SqliteFile("a/b.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///abs/b.db").unwrap(),
            Target::SqliteFile("/abs/b.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:b.db").unwrap(),
            Target::SqliteFile("b.db".into())
        );
        assert_eq!(
            Target::parse("state.db").unwrap(),
            Target::SqliteFile("state.db".into())
        );
        assert_eq!(
            Target::parse("sqlite::memory:").unwrap(),
            Target::SqliteMemory
        );
        assert_eq!(
            Target::parse("postgres://u@h/db").unwrap(),
            Target::Postgres
        );
        assert_eq!(
            Target::parse("postgresql://u@h/db").unwrap(),
            Target::Postgres
        );
    }

    #[test]
    fn bad_urls_say_what_is_accepted_without_secrets() {
        for url in [
            "mysql://root:hunter22@db/x",
            "",
            "sqlite://",
            "sqlite://x.db?mode=ro",
        ] {
            let message = Target::parse(url).unwrap_err().to_string();
            assert!(!message.contains("hunter22"), "{message}");
            assert!(message.contains("sqlite://path/to/state.db"), "{message}");
            assert!(message.contains("postgres://"), "{message}");
        }
        let message = Target::parse("mysql://root:hunter22@db/x")
            .unwrap_err()
            .to_string();
        assert!(message.contains("`mysql://db/x`"), "{message}");
        assert!(message.contains("`mysql`"), "{message}");
    }

    #[test]
    fn redaction_strips_userinfo_and_password_parameters() {
        assert_eq!(
            redact_url("postgres://u:p4ss@host:5432/db"),
            "postgres://host:5432/db"
        );
        assert_eq!(
            redact_url("postgres://u:p/a?s@s@host/db?sslmode=require&password=x&PWD=y"),
            "postgres://host/db?sslmode=require&password=REDACTED&PWD=REDACTED"
        );
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        assert_eq!(redact_url("some/file.db"), "some/file.db");
    }

    #[test]
    fn scrubbing_removes_raw_and_decoded_passwords() {
        let url = "postgres://u:s%40cret99@host/db?password=other-secret";
        let text = "a s%40cret99 b s@cret99 c other-secret";
        assert_eq!(scrub(text, url), "a REDACTED b REDACTED c REDACTED");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%41%zz"), "A%zz");
    }
}
