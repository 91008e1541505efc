//! `[state]`: where the state store lives (`url`) and how long a run's lease lasts
//! (`lease_ttl`).
//!
//! A `sqlite:` URL is a prefix and a file path (relative paths are not URLs to a URL parser);
//! any other URL is parsed with the `url` crate, as the state store parses it
//! (`lockstep-state`'s `Target::parse`), and must be a PostgreSQL one: scheme `postgres` or
//! `postgresql` and an authority (`postgres://...`). sqlx's `PgConnectOptions` is not used
//! here: it reads `~/.pgpass`, and this crate reads only the config file and the environment.
//!
//! Invariants:
//! - A SQLite path is made absolute against the config file's directory, so that the store is
//!   the same whatever directory lockstep runs in.
//! - A URL the store would refuse to parse is an error at its line, with a hint; the message
//!   never shows a URL that may hold a password (a PostgreSQL URL, or a value from the
//!   environment).

use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;
use url::Url;

use super::reader::{Reader, Tbl};
use crate::diagnostic::ErrorKind;
use crate::model::{DEFAULT_LEASE_TTL, DEFAULT_STATE_URL, MAX_LEASE_TTL, MIN_LEASE_TTL};

/// The keys accepted in `[state]`.
pub(super) const STATE_KEYS: &[&str] = &["url", "lease_ttl"];

impl Reader<'_> {
    pub(super) fn state(&mut self, root: &Tbl<'_, '_>) -> String {
        let Some(t) = self.table(root, "state") else {
            return self.resolve_sqlite(&DEFAULT_STATE_URL["sqlite:".len()..]);
        };
        self.check_keys(&t, STATE_KEYS);
        let Some((url, from_env, span)) = self.interpolated(&t, "url") else {
            return self.resolve_sqlite(&DEFAULT_STATE_URL["sqlite:".len()..]);
        };
        if let Some(rest) = url.strip_prefix("sqlite:") {
            if rest.contains('?') {
                // The store refuses them when it opens; say so here, at the line.
                self.error(
                    ErrorKind::InvalidUrl,
                    span,
                    "`state.url`: SQLite state URLs take no query parameters",
                    "query parameters",
                    "remove the `?...` part: the state store always uses WAL mode, \
                     synchronous=FULL and a busy timeout",
                );
                return String::new();
            }
            return self.resolve_sqlite(rest);
        }
        match Url::parse(&url) {
            Ok(parsed) if is_postgres(parsed.scheme()) && !parsed.cannot_be_a_base() => {
                return url;
            }
            Err(error) if url.split_once("://").is_some_and(|(s, _)| is_postgres(s)) => {
                self.error(
                    ErrorKind::InvalidUrl,
                    span,
                    format!("`state.url` is not a valid PostgreSQL URL ({error})"),
                    "invalid url",
                    "write url = \"postgres://user:${PGPASSWORD}@host:5432/db\", with the \
                     characters that URLs reserve percent-encoded in the user and password \
                     (`/` as %2F, `@` as %40, `:` as %3A, `?` as %3F, `#` as %23)",
                );
                return String::new();
            }
            _ => {}
        }
        let found = if from_env {
            " (the value comes from the environment and is not shown)".to_owned()
        } else {
            format!(", found `{url}`")
        };
        self.error(
            ErrorKind::InvalidUrl,
            span,
            format!("`state.url` must start with `sqlite:` or `postgres://`{found}"),
            "unsupported url",
            "write url = \"sqlite://.lockstep/state.db\" (a file next to the config) or \
             url = \"postgres://user:${PGPASSWORD}@host/db\"",
        );
        String::new()
    }

    /// `state.lease_ttl`: how long a run's lease on its sync lives without renewal.
    pub(super) fn lease_ttl(&mut self, root: &Tbl<'_, '_>) -> Duration {
        // A `state` that is not a table was reported by `state`.
        let Some(value) = root.get("state") else {
            return DEFAULT_LEASE_TTL;
        };
        let DeValue::Table(table) = value.get_ref() else {
            return DEFAULT_LEASE_TTL;
        };
        let t = Tbl {
            table,
            path: root.child("state"),
            span: value.span(),
        };
        let Some((ttl, span)) = self.duration(&t, "lease_ttl", true) else {
            return DEFAULT_LEASE_TTL;
        };
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&ttl) {
            self.error(
                ErrorKind::OutOfRange,
                span,
                format!(
                    "`state.lease_ttl` must be between {}s and {}s, found {}",
                    MIN_LEASE_TTL.as_secs(),
                    MAX_LEASE_TTL.as_secs(),
                    if ttl.subsec_millis() == 0 {
                        format!("{}s", ttl.as_secs())
                    } else {
                        format!("{}ms", ttl.as_millis())
                    }
                ),
                "out of range",
                "a run renews its lease every third of lease_ttl, and a crashed run's sync is \
                 taken over by another node after it; the default is 30s",
            );
            return DEFAULT_LEASE_TTL;
        }
        ttl
    }

    /// `sqlite:` + `rest` (which holds no query string), with a relative path resolved against
    /// the config file's directory.
    pub(super) fn resolve_sqlite(&self, rest: &str) -> String {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        if rest.is_empty() || rest == ":memory:" || Path::new(rest).is_absolute() {
            return format!("sqlite://{rest}");
        }
        format!("sqlite://{}", self.base_dir().join(rest).display())
    }
}

/// Whether `scheme` names PostgreSQL, ignoring ASCII case as URL schemes do.
fn is_postgres(scheme: &str) -> bool {
    scheme.eq_ignore_ascii_case("postgres") || scheme.eq_ignore_ascii_case("postgresql")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::{parse, ConfigError, ErrorKind};

    const PASSWORD: &str = "pw-from-env-77";

    fn env(name: &str) -> Option<String> {
        match name {
            "PG_URL" => Some(format!("postgres://sync:{PASSWORD}@db:notaport/lockstep")),
            "PG_PASSWORD" => Some(PASSWORD.to_owned()),
            _ => None,
        }
    }

    fn state_url(url: &str) -> Result<String, Vec<ConfigError>> {
        let text = format!("[state]\nurl = \"{url}\"\n");
        parse(&text, Path::new("/etc/lockstep/lockstep.toml"), &env)
            .map(|config| config.state_url)
            .map_err(|errors| errors.into_errors())
    }

    /// The one error `url` gets, checked to be an invalid-url error at the url's line.
    fn refused(url: &str) -> ConfigError {
        let mut errors = state_url(url).expect_err(url);
        assert_eq!(errors.len(), 1, "{url}: {errors:?}");
        let error = errors.remove(0);
        assert_eq!(error.kind(), ErrorKind::InvalidUrl, "{url}");
        assert_eq!(error.location().map(|l| l.line), Some(2), "{url}");
        error
    }

    #[test]
    fn postgres_urls_that_parse_are_kept_as_written() {
        for url in [
            "postgres://sync:p%2Fss%40w0rd@db.example:5432/lockstep?sslmode=require",
            "postgresql://db/lockstep",
            "postgres:///lockstep",
            "postgres://[::1]:5432/lockstep",
            "POSTGRES://db/lockstep",
        ] {
            assert_eq!(state_url(url).unwrap(), url);
        }
        assert_eq!(
            state_url("postgres://sync:${PG_PASSWORD}@db/lockstep").unwrap(),
            format!("postgres://sync:{PASSWORD}@db/lockstep")
        );
    }

    #[test]
    fn a_postgres_url_that_does_not_parse_is_refused_at_its_line_without_its_password() {
        for (url, reason) in [
            (
                "postgres://sync:secret-pw@db:notaport/lockstep",
                "invalid port number",
            ),
            // An unescaped `/` in the password ends the authority early.
            ("postgres://sync:se/cret@db/lockstep", "invalid port number"),
            ("postgresql://sync@[::1/lockstep", "invalid IPv6 address"),
        ] {
            let error = refused(url);
            assert_eq!(
                error.message(),
                format!("`state.url` is not a valid PostgreSQL URL ({reason})"),
                "{url}"
            );
            assert!(error.hint().contains("percent-encoded"), "{}", error.hint());
            assert!(!error.message().contains("secret"), "{}", error.message());
        }
        let error = refused("${PG_URL}");
        assert!(!error.to_string().contains(PASSWORD), "{error}");
        assert!(error.message().contains("invalid port number"), "{error}");
    }

    #[test]
    fn other_schemes_and_forms_are_refused_naming_the_accepted_ones() {
        for url in [
            "mysql://db/lockstep",
            "postgres:lockstep",
            "state.db",
            "http://db/x",
        ] {
            let error = refused(url);
            assert_eq!(
                error.message(),
                format!("`state.url` must start with `sqlite:` or `postgres://`, found `{url}`")
            );
        }
    }
}
