//! `[state]`: where the state store lives (`url`) and how long a run's lease lasts
//! (`lease_ttl`).
//!
//! Invariant: a SQLite path is made absolute against the config file's directory, so that the
//! store is the same whatever directory lockstep runs in.

use std::path::Path;
use std::time::Duration;

use toml::de::DeValue;

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
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return url;
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
