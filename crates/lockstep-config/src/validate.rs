//! Reading the TOML document into the model, collecting every problem on the way.
//!
//! The stages, in the manner of `vector validate`: TOML syntax (all syntax errors, then stop: a
//! broken document gives misleading errors further on); then one walk over the document that
//! checks structure (unknown keys, types, enum values), references and ranges (connections,
//! cursors, keys, schedules, durations) and the environment (`${VAR}` interpolation), and
//! records every problem it meets.
//!
//! `reader.rs` is the position-keeping TOML reader; each section has one file of rules that
//! owns the list of keys it accepts (a `*_KEYS` const, which the tidy test checks against
//! docs/config.md): `state.rs`, `connections.rs` (also `[connectors]`), `syncs.rs` (also
//! `retry`), `fields.rs`, `two_way.rs`, `schedule.rs`, `daemon.rs` and `alerts.rs`.

use std::path::Path;

use toml::de::DeTable;

mod alerts;
mod cdc;
mod connections;
mod daemon;
mod fields;
mod reader;
mod schedule;
mod state;
mod syncs;
mod two_way;
mod web;

use reader::{sort, syntax_error, Env, Reader, Tbl};

use crate::diagnostic::{source_file, ConfigError, ConfigErrors};
use crate::model::Config;
use crate::secrets::Secrets;

/// The keys accepted at the top level of the file.
const ROOT_KEYS: &[&str] = &[
    "state",
    "connectors",
    "connections",
    "syncs",
    "daemon",
    "alerts",
];

/// Parses and validates `text`, the contents of the config file at `path`.
pub(crate) fn build(text: &str, path: &Path, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let source = source_file(path, text);
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        let mut errors: Vec<ConfigError> = syntax_errors
            .iter()
            .map(|e| syntax_error(text, path, &source, e))
            .collect();
        sort(&mut errors);
        return Err(ConfigErrors::new(path, errors));
    }
    let reader = Reader {
        text,
        path,
        env,
        source,
        errors: Vec::new(),
        from_env: Vec::new(),
    };
    reader.config(document.get_ref())
}

impl Reader<'_> {
    fn config(mut self, document: &DeTable<'_>) -> Result<Config, ConfigErrors> {
        let root = Tbl {
            table: document,
            path: String::new(),
            span: 0..0,
        };
        self.check_keys(&root, ROOT_KEYS);
        let (mut connections, connection_names) = self.connections(&root);
        let state_url = self.state(&root);
        let lease_ttl = self.lease_ttl(&root);
        let connector_paths = self.connectors(&root);
        let syncs = self.syncs(&root, &connection_names);
        let daemon = self.daemon(&root);
        let mut alerts = self.alerts(&root);

        let secrets = Secrets::new(std::mem::take(&mut self.from_env));
        if !self.errors.is_empty() {
            let mut errors = self.errors;
            for error in &mut errors {
                error.redact(&secrets);
            }
            sort(&mut errors);
            return Err(ConfigErrors::new(self.path, errors));
        }
        for connection in connections.values_mut() {
            connection.secrets = secrets.clone();
        }
        for webhook in &mut alerts.webhooks {
            webhook.secrets = secrets.clone();
        }
        if let Some(email) = &mut alerts.email {
            email.secrets = secrets.clone();
        }
        Ok(Config {
            path: self.path.to_path_buf(),
            state_url,
            lease_ttl,
            connector_paths,
            connections,
            syncs,
            daemon,
            alerts,
            secrets,
            source: self.source,
        })
    }
}
