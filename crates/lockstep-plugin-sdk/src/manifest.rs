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
    let roles = [(is_source, Role::Source), (is_destination, Role::Destination)]
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
