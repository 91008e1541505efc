//! Parsing state store URLs, and keeping their secrets out of messages.
//!
//! `postgres://` URLs are parsed by `url::Url` (and then by sqlx's `PgConnectOptions` when the
//! store connects); SQLite URLs are a prefix and a file path, which is all they are here, since
//! relative paths (`sqlite://state.db`) are not URLs to a URL parser.
//!
//! Invariant: no function here returns or formats a password or a password query parameter.

use std::path::PathBuf;

use percent_encoding::percent_decode_str;
use url::Url;

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
        if !url.contains("://") {
            return Ok(Target::SqliteFile(PathBuf::from(url)));
        }
        match Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "postgres" | "postgresql") => {
                Ok(Target::Postgres)
            }
            Ok(parsed) => Err(invalid(&format!(
                "the scheme `{}` is not supported (only `sqlite` and `postgres`)",
                parsed.scheme()
            ))),
            Err(error) => Err(invalid(&format!("it is not a valid URL ({error})"))),
        }
    }
}

/// Returns `url` without userinfo (user and password) and with the values of password query
/// parameters replaced by `REDACTED`, fit for messages and logs.
///
/// Text without `://` (a plain file path) is returned unchanged. A URL that does not parse
/// (a bad port, a password with an unescaped `/`) loses everything up to its last `@`, which
/// errs on the side of hiding too much, so that the message can still name the server.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let Ok(mut parsed) = Url::parse(url) else {
        let (scheme, rest) = url.split_at(scheme_end + 3);
        let rest = rest.rfind('@').map_or(rest, |at| &rest[at + 1..]);
        return match rest.split_once('?') {
            Some((before_query, query)) => {
                format!("{scheme}{before_query}?{}", redact_query(query))
            }
            None => format!("{scheme}{rest}"),
        };
    };
    // Clearing fails only for URLs that cannot have a user (no host), which hold none.
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    if let Some(query) = parsed.query().map(redact_query) {
        parsed.set_query(Some(&query));
    }
    parsed.to_string()
}

/// A query string with the values of password parameters replaced by `REDACTED`.
fn redact_query(query: &str) -> String {
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => format!("{name}=REDACTED"),
            _ => pair.to_owned(),
        })
        .collect();
    pairs.join("&")
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
    match Url::parse(url) {
        Ok(parsed) => {
            if let Some(password) = parsed.password() {
                found.push(password.to_owned());
            }
            for pair in parsed.query().unwrap_or_default().split('&') {
                if let Some((name, value)) = pair.split_once('=') {
                    if is_secret_param(name) {
                        found.push(value.to_owned());
                    }
                }
            }
        }
        // A URL that does not parse never reaches a driver's connection; still, everything
        // between the scheme and the last `@` is treated as a secret.
        Err(_) => {
            if let (Some(scheme_end), Some(at)) = (url.find("://"), url.rfind('@')) {
                if let Some(userinfo) = url.get(scheme_end + 3..at) {
                    found.push(userinfo.to_owned());
                }
            }
        }
    }
    let decoded: Vec<String> = found
        .iter()
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

fn is_secret_param(name: &str) -> bool {
    SECRET_PARAMS.iter().any(|p| name.eq_ignore_ascii_case(p))
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
            redact_url("postgres://u:p%2Fa%3Fs%40s@host/db?sslmode=require&password=x&PWD=y"),
            "postgres://host/db?sslmode=require&password=REDACTED&PWD=REDACTED"
        );
        // An unescaped `/` in the password makes the URL invalid: all up to the last `@` goes.
        assert_eq!(
            redact_url("postgres://u:p/a?s@s@host/db?sslmode=require&password=x"),
            "postgres://host/db?sslmode=require&password=REDACTED"
        );
        assert_eq!(
            redact_url("postgres://u:secret@127.0.0.1:notaport/db"),
            "postgres://127.0.0.1:notaport/db"
        );
        assert_eq!(redact_url("sqlite://a/b.db"), "sqlite://a/b.db");
        assert_eq!(redact_url("sqlite::memory:"), "sqlite::memory:");
        assert_eq!(redact_url("postgres://host/db"), "postgres://host/db");
        assert_eq!(redact_url("some/file.db"), "some/file.db");
    }

    #[test]
    fn scrubbing_removes_raw_and_decoded_passwords() {
        let url = "postgres://u:s%40cret99@host/db?password=other-secret";
        let text = "a s%40cret99 b s@cret99 c other-secret";
        assert_eq!(scrub(text, url), "a REDACTED b REDACTED c REDACTED");
        // A URL that does not parse shows none of what might be a secret.
        let broken = "postgres://u:p/a?s@s@host/db";
        assert_eq!(scrub("x u:p/a?s@s y", broken), "x REDACTED y");
    }
}
