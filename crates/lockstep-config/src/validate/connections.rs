//! `[connectors]` (extra plugin directories) and `[connections.NAME]` (a connector and its
//! opaque `config`, passed to the plugin as JSON).
//!
//! Invariant: every string of a connection's `config` is interpolated, and nothing else of a
//! connection is.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::Value as Json;
use toml::de::DeValue;

use super::reader::{entries, Expected, Reader, Tbl};
use crate::model::Connection;
use crate::secrets::Secrets;

/// The keys accepted in `[connectors]`.
pub(super) const CONNECTORS_KEYS: &[&str] = &["paths"];
/// The keys accepted in a `[connections.NAME]` table (its `config` is the plugin's).
pub(super) const CONNECTION_KEYS: &[&str] = &["connector", "config"];

impl Reader<'_> {
    pub(super) fn connectors(&mut self, root: &Tbl<'_, '_>) -> Vec<PathBuf> {
        let Some(t) = self.table(root, "connectors") else {
            return Vec::new();
        };
        self.check_keys(&t, CONNECTORS_KEYS);
        let Some((paths, _)) = self.strings(&t, "paths", false) else {
            return Vec::new();
        };
        let base = self.base_dir();
        paths.iter().map(|p| base.join(p.value)).collect()
    }

    pub(super) fn connections(
        &mut self,
        root: &Tbl<'_, '_>,
    ) -> (BTreeMap<String, Connection>, BTreeSet<String>) {
        let mut connections = BTreeMap::new();
        let mut names = BTreeSet::new();
        let Some(all) = self.table(root, "connections") else {
            return (connections, names);
        };
        for (key, value) in entries(all.table) {
            let name: &str = key.get_ref();
            // Defined, even if broken: syncs that name it must not get a second error.
            names.insert(name.to_owned());
            self.check_name("connection", key);
            let Some(t) = self.as_table(&all.child(name), name, value) else {
                continue;
            };
            self.check_keys(&t, CONNECTION_KEYS);
            let connector = if t.has("connector") {
                self.name_string(
                    &t,
                    "connector",
                    "write the name of a connector from a plugin, e.g. connector = \"sqlite\"",
                )
            } else {
                self.missing(
                    &t,
                    "connector",
                    "add connector = \"<name>\" with a connector from a plugin, e.g. \"sqlite\"",
                );
                None
            };
            let config = match t.get("config") {
                Some(value) if matches!(value.get_ref(), DeValue::Table(_)) => {
                    self.json_of(value, &t.child("config"))
                }
                Some(value) => {
                    self.wrong_type(&t.child("config"), "config", value, Expected::Table);
                    Json::Object(serde_json::Map::new())
                }
                None => Json::Object(serde_json::Map::new()),
            };
            if let Some(connector) = connector {
                connections.insert(
                    name.to_owned(),
                    Connection {
                        name: name.to_owned(),
                        connector: connector.value.to_owned(),
                        config,
                        location: self.loc(&key.span()),
                        connector_location: self.loc(&connector.span),
                        secrets: Secrets::default(),
                    },
                );
            }
        }
        (connections, names)
    }
}
