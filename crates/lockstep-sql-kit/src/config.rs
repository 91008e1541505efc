//! The read settings that the SQL connectors' configs share: `batch_size` and `lookback`.
//!
//! [`ReadConfig`] holds both; a connector's `Config` takes it in with `#[serde(flatten)]`, so
//! the keys stay at the top level of the connection's `config` table and of its JSON Schema,
//! beside the connector's own keys. What the values mean is the connector's (PostgreSQL
//! reads the lookback as an interval, MySQL as a duration such as `1h30m`; a request's batch
//! size caps or replaces the config's), so a connector states it in its schema with
//! [`describe_read_config`].
//!
//! Invariants:
//! - Flattened, [`ReadConfig`] adds exactly the optional keys `batch_size` (at least 1, 10,000
//!   by default) and `lookback` (`"0s"` by default) to a config and to its schema.
//! - Deserializing checks types only: ranges and formats are the connector's to check, with
//!   its own messages.

use lockstep_plugin_sdk::schemars::Schema;
use lockstep_plugin_sdk::serde_json::Value;
use lockstep_plugin_sdk::JsonSchema;
use serde::Deserialize;

/// The rows per read batch when neither the config nor the request says.
pub const DEFAULT_BATCH_SIZE: usize = 10_000;

/// The read settings of a SQL connection, flattened into the connector's `Config`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[schemars(crate = "lockstep_plugin_sdk::schemars")]
pub struct ReadConfig {
    /// Rows per read batch.
    #[serde(default)]
    #[schemars(range(min = 1), extend("default" = DEFAULT_BATCH_SIZE))]
    pub batch_size: Option<usize>,
    /// How far before the checkpoint's cursor incremental reads restart, to catch late
    /// commits.
    #[serde(default)]
    #[schemars(extend("default" = "0s"))]
    pub lookback: Option<String>,
}

/// Replaces the descriptions of `batch_size` and `lookback` in `schema`, the schema of a
/// config that flattens [`ReadConfig`], with the connector's own words (for a
/// `#[schemars(transform = ...)]` function of the connector's config type).
pub fn describe_read_config(schema: &mut Schema, batch_size: &str, lookback: &str) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (key, text) in [("batch_size", batch_size), ("lookback", lookback)] {
        if let Some(property) = properties.get_mut(key).and_then(Value::as_object_mut) {
            property.insert("description".into(), Value::String(text.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_plugin_sdk::schemars::schema_for;
    use lockstep_plugin_sdk::serde_json::{self, json};

    /// A connector's config, as the SQL connectors declare theirs.
    #[derive(Debug, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(crate = "lockstep_plugin_sdk::schemars", transform = describe)]
    struct Config {
        /// Where the database is.
        url: String,
        #[serde(flatten)]
        read: ReadConfig,
    }

    fn describe(schema: &mut Schema) {
        describe_read_config(schema, "Rows per batch.", "A duration.");
    }

    #[test]
    fn flattened_keys_stay_at_the_top_level_of_the_config_and_its_schema() {
        let config: Config =
            serde_json::from_value(json!({"url": "x", "batch_size": 5, "lookback": "5m"})).unwrap();
        assert_eq!(config.url, "x");
        assert_eq!(
            config.read,
            ReadConfig {
                batch_size: Some(5),
                lookback: Some("5m".into()),
            }
        );
        let bare: Config = serde_json::from_value(json!({"url": "x"})).unwrap();
        assert_eq!(bare.read, ReadConfig::default());
        let unknown = serde_json::from_value::<Config>(json!({"url": "x", "batch": 5}));
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `batch`"));

        let schema = serde_json::to_value(schema_for!(Config)).unwrap();
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["required"], json!(["url"]));
        assert_eq!(
            schema["properties"]["batch_size"],
            json!({
                "description": "Rows per batch.",
                "type": ["integer", "null"],
                "format": "uint",
                "minimum": 1,
                "default": DEFAULT_BATCH_SIZE,
            })
        );
        assert_eq!(
            schema["properties"]["lookback"],
            json!({
                "description": "A duration.",
                "type": ["string", "null"],
                "default": "0s",
            })
        );
    }
}
