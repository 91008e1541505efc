//! The manifest an author writes, and the full manifest the SDK builds from it for the host.
//!
//! An author states only what the code cannot: name, version, description and features. The
//! rest is derived, so that it cannot disagree with the code:
//! - the roles, from the connector's associated types (a role whose type is [`Unsupported`]
//!   is not declared);
//! - the config schema, from the role's `Config` type through its [`JsonSchema`] derive (doc
//!   comments on the fields become descriptions);
//! - the plugin API and SDK versions, from the crates the connector was built against.
//!
//! Invariant: what [`full_manifest`] returns is the wire manifest (`lockstep_protocol::Manifest`)
//! exactly as before the author's type existed: same fields, same JSON.

use std::any::TypeId;

use lockstep_protocol::Role;
use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use serde_json::Value;

use crate::{Connector, DestinationConnector, SourceConnector, Unsupported, SDK_VERSION};

/// What a connector says about itself. Everything else in the manifest the host reads is
/// derived by the SDK (see [`full_manifest`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// The name configs refer to, such as `sqlite`. Lowercase, no spaces.
    pub name: String,
    /// The connector's own version, a semantic version: usually
    /// `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// One sentence for `lockstep connectors list`.
    pub description: String,
    /// Optional capabilities such as `incremental`, `upsert`, `delete`, `create-stream`, and
    /// the `lockstep_protocol::FEATURE_*` constants.
    pub features: Vec<String>,
}

/// The manifest the host receives for connector `C`: the author's [`Connector::manifest`] with
/// the roles, config schema and versions filled in.
pub fn full_manifest<C: Connector>() -> lockstep_protocol::Manifest {
    let Manifest {
        name,
        version,
        description,
        features,
    } = C::manifest();
    let is_source = TypeId::of::<C::Source>() != TypeId::of::<Unsupported>();
    let is_destination = TypeId::of::<C::Destination>() != TypeId::of::<Unsupported>();
    let roles = [
        (is_source, Role::Source),
        (is_destination, Role::Destination),
    ]
    .into_iter()
    .filter_map(|(plays, role)| plays.then_some(role))
    .collect();
    lockstep_protocol::Manifest {
        name,
        version,
        description,
        roles,
        features,
        config_schema: config_schema::<C>(is_source, is_destination),
        abi_version: lockstep_plugin_api::ABI_VERSION.to_owned(),
        sdk_version: SDK_VERSION.to_owned(),
    }
}

type SourceConfig<C> = <<C as Connector>::Source as SourceConnector>::Config;
type DestinationConfig<C> = <<C as Connector>::Destination as DestinationConnector>::Config;

/// The JSON Schema of the connection's `config` table: that of the config type of the roles
/// the connector plays. When its two roles take different config types, a config must fit
/// one of them.
fn config_schema<C: Connector>(is_source: bool, is_destination: bool) -> Value {
    let same_type = SourceConfig::<C>::schema_id() == DestinationConfig::<C>::schema_id();
    match (is_source, is_destination) {
        (true, true) if !same_type => {
            let mut generator = SchemaSettings::draft2020_12().into_generator();
            let source = generator.subschema_for::<SourceConfig<C>>();
            let destination = generator.subschema_for::<DestinationConfig<C>>();
            let mut schema = generator.into_root_schema_for::<Value>().to_value();
            if let Value::Object(root) = &mut schema {
                root.retain(|key, _| key.starts_with('$'));
                root.insert("type".into(), "object".into());
                root.insert(
                    "anyOf".into(),
                    Value::Array(vec![source.to_value(), destination.to_value()]),
                );
            }
            schema
        }
        (false, true) => schema_of::<DestinationConfig<C>>(),
        _ => schema_of::<SourceConfig<C>>(),
    }
}

fn schema_of<T: JsonSchema>() -> Value {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Catalog, ConnectorError, Context, OpenStreamRequest, ReadRequest, Result};
    use serde::Deserialize;

    /// The config of the test source.
    #[derive(Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct ReadConfig {
        /// Where the rows come from.
        path: String,
        /// Rows per batch.
        #[serde(default)]
        batch_size: Option<u32>,
    }

    /// The config of the test destination.
    #[derive(Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct WriteConfig {
        /// Where the rows go.
        target: String,
    }

    struct ReadOnly;

    impl SourceConnector for ReadOnly {
        type Config = ReadConfig;
        type Reader = Unsupported;
        async fn open(_: ReadConfig, _: Context) -> Result<Self> {
            Ok(ReadOnly)
        }
        async fn check(&mut self) -> Result<()> {
            Ok(())
        }
        async fn discover(&mut self) -> Result<Catalog> {
            Ok(Catalog { streams: vec![] })
        }
        async fn read(&mut self, _: ReadRequest) -> Result<Unsupported> {
            Err(ConnectorError::unsupported("the test source reads nothing"))
        }
    }

    struct WriteOnly;

    impl DestinationConnector for WriteOnly {
        type Config = WriteConfig;
        type Writer = Unsupported;
        async fn open(_: WriteConfig, _: Context) -> Result<Self> {
            Ok(WriteOnly)
        }
        async fn check(&mut self) -> Result<()> {
            Ok(())
        }
        async fn discover(&mut self) -> Result<Catalog> {
            Ok(Catalog { streams: vec![] })
        }
        async fn open_stream(&mut self, _: OpenStreamRequest) -> Result<Unsupported> {
            Err(ConnectorError::unsupported(
                "the test destination writes nothing",
            ))
        }
    }

    fn about(name: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: "1.2.3".into(),
            description: "A test connector.".into(),
            features: vec!["incremental".into()],
        }
    }

    struct SourceOnly;
    impl Connector for SourceOnly {
        type Source = ReadOnly;
        type Destination = Unsupported;
        fn manifest() -> Manifest {
            about("source-only")
        }
    }

    struct DestinationOnly;
    impl Connector for DestinationOnly {
        type Source = Unsupported;
        type Destination = WriteOnly;
        fn manifest() -> Manifest {
            about("destination-only")
        }
    }

    struct Both;
    impl Connector for Both {
        type Source = ReadOnly;
        type Destination = WriteOnly;
        fn manifest() -> Manifest {
            about("both")
        }
    }

    #[test]
    fn the_sdk_fills_in_versions_and_keeps_what_the_author_wrote() {
        let m = full_manifest::<SourceOnly>();
        assert_eq!(m.name, "source-only");
        assert_eq!(m.version, "1.2.3");
        assert_eq!(m.description, "A test connector.");
        assert_eq!(m.features, ["incremental"]);
        assert_eq!(m.abi_version, lockstep_plugin_api::ABI_VERSION);
        assert_eq!(m.sdk_version, SDK_VERSION);
    }

    #[test]
    fn roles_follow_the_associated_types() {
        assert_eq!(full_manifest::<SourceOnly>().roles, [Role::Source]);
        assert_eq!(
            full_manifest::<DestinationOnly>().roles,
            [Role::Destination]
        );
        assert_eq!(
            full_manifest::<Both>().roles,
            [Role::Source, Role::Destination]
        );
    }

    #[test]
    fn the_config_schema_is_derived_from_the_roles_config_type() {
        let schema = full_manifest::<SourceOnly>().config_schema;
        assert_eq!(schema["type"], "object");
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(schema["required"], serde_json::json!(["path"]));
        assert_eq!(
            schema["properties"]["path"]["description"],
            "Where the rows come from."
        );
        assert_eq!(
            schema["properties"]["batch_size"]["description"],
            "Rows per batch."
        );
        let schema = full_manifest::<DestinationOnly>().config_schema;
        assert_eq!(
            schema["properties"]["target"]["description"],
            "Where the rows go."
        );
        assert!(schema["properties"].get("path").is_none(), "{schema}");
    }

    #[test]
    fn different_configs_per_role_make_a_schema_either_may_satisfy() {
        let schema = full_manifest::<Both>().config_schema;
        assert_eq!(schema["type"], "object");
        let choices = schema["anyOf"].as_array().expect("anyOf");
        assert_eq!(choices.len(), 2, "{schema}");
        let text = schema.to_string();
        assert!(text.contains("Where the rows come from."), "{text}");
        assert!(text.contains("Where the rows go."), "{text}");
    }

    #[test]
    fn the_wire_manifest_round_trips_as_json() {
        let m = full_manifest::<Both>();
        let text = serde_json::to_string(&m).unwrap();
        let back: lockstep_protocol::Manifest = serde_json::from_str(&text).unwrap();
        assert_eq!(back.roles, m.roles);
        assert_eq!(back.config_schema, m.config_schema);
        assert_eq!(back.abi_version, m.abi_version);
    }
}
