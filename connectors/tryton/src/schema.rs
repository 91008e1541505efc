//! Streams and their fields, from Tryton's `fields_get`.
//!
//! Each model named in the config is a stream keyed by `id`. Its fields are the model's
//! fields of a kind that has one value per record, mapped to logical types: boolean,
//! integer (64-bit), float, numeric (an exact decimal at the field's scale: `digits =
//! [integer digits or null, scale]`, at most 38 digits), char, text and selection (text),
//! date, timestamp and datetime (timestamps in UTC), time, many-to-one and one-to-one (the
//! related record's id, and with `rec_names` its `rec_name` as `<field>_rec_name`), dict
//! and multiselection (JSON). One-to-many and many-to-many fields are not fields of a
//! stream: their records are streams of their own (a party's addresses are `party.address`
//! records whose `party` is the party's id). Binary fields are left out.
//!
//! Invariant: the field list is sorted by name after `id`, so a stream's schema does not
//! depend on the order of Tryton's answer.

use lockstep_plugin_sdk::{ConnectorError, DataType, FieldInfo, Result, StreamInfo};
use serde_json::{json, Value};

use crate::rpc::Rpc;
use crate::values::Kind;

/// The field that holds when a record last changed (`write_date`, or `create_date` for a
/// record never written), computed by Tryton.
pub const LAST_MODIFIED: &str = "last_modified_at";

/// The fields an incremental read may be asked to follow; all of them are read by
/// `write_date` or `create_date`.
pub const CURSORS: [&str; 3] = [LAST_MODIFIED, "write_date", "create_date"];

/// The suffix of a many-to-one's companion field holding the related record's name.
pub const REC_NAME_SUFFIX: &str = "_rec_name";

/// One field of a stream.
#[derive(Debug, Clone)]
pub struct Field {
    pub info: FieldInfo,
    pub kind: Kind,
    /// The name Tryton reads it by (`party.rec_name` for `party_rec_name`).
    pub tryton_name: String,
    /// Whether a write may set it.
    pub writable: bool,
    /// Whether Tryton requires it on create.
    pub required: bool,
}

/// A model's fields.
#[derive(Debug, Clone)]
pub struct StreamSchema {
    pub model: String,
    pub fields: Vec<Field>,
}

impl StreamSchema {
    pub fn stream_info(&self) -> StreamInfo {
        StreamInfo {
            name: self.model.clone(),
            fields: self.fields.iter().map(|f| f.info.clone()).collect(),
            primary_key: vec!["id".into()],
            cursor_candidates: CURSORS
                .iter()
                .filter(|c| self.field(c).is_some())
                .map(|c| c.to_string())
                .collect(),
        }
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.info.name == name)
    }
}

/// The kind and logical type of a `fields_get` description, or `None` for fields that are
/// not one value per record.
fn kind_of(description: &Value) -> Option<(Kind, DataType)> {
    let kind = description["type"].as_str().unwrap_or_default();
    Some(match kind {
        "boolean" => (Kind::Boolean, DataType::Boolean),
        "integer" | "biginteger" => (Kind::Integer, DataType::Int64),
        "float" => (Kind::Float, DataType::Float64),
        "numeric" => (Kind::Numeric, decimal_type(&description["digits"])),
        "char" | "text" | "selection" | "reference" | "fmany2one" => (Kind::Text, DataType::Text),
        "date" => (Kind::Date, DataType::Date),
        "datetime" | "timestamp" => (Kind::DateTime, DataType::TimestampTz),
        "time" => (Kind::Time, DataType::Time),
        "timedelta" => (Kind::Float, DataType::Float64),
        "many2one" | "one2one" => (Kind::Relation, DataType::Int64),
        "dict" | "multiselection" => (Kind::Json, DataType::Json),
        // one2many, many2many, binary and anything new.
        _ => return None,
    })
}

/// `digits` is `[integer digits or null, decimal digits]`, as a list or as its JSON text;
/// without a usable scale, 38 digits with 10 after the point.
fn decimal_type(digits: &Value) -> DataType {
    let parsed = match digits {
        Value::String(text) => serde_json::from_str(text).unwrap_or(Value::Null),
        other => other.clone(),
    };
    let scale = parsed[1].as_u64().filter(|s| *s <= 30);
    let integer = parsed[0].as_u64();
    match scale {
        Some(scale) => {
            let precision = integer
                .map(|i| (i + scale).min(38))
                .unwrap_or(38)
                .max(scale.max(1));
            DataType::Decimal {
                precision: precision as u8,
                scale: scale as i8,
            }
        }
        None => DataType::Decimal {
            precision: 38,
            scale: 10,
        },
    }
}

/// The schema of `model`, limited to `wanted` fields when given (`id` and the change
/// timestamps are always kept: keys and incremental reads need them).
pub async fn load(
    rpc: &Rpc,
    model: &str,
    models: &[String],
    wanted: Option<&Vec<String>>,
    rec_names: bool,
) -> Result<StreamSchema> {
    if !models.iter().any(|m| m == model) {
        return Err(ConnectorError::schema(format!(
            "the Tryton connection has no stream `{model}`; it serves {} (add the model to the \
             connection's `models`)",
            models.join(", ")
        )));
    }
    let answer = rpc
        .call(
            &format!("model.{model}.fields_get"),
            vec![Value::Null],
            None,
            true,
            &format!("reading the fields of {model}"),
        )
        .await?;
    let Value::Object(descriptions) = answer else {
        return Err(ConnectorError::internal(format!(
            "Tryton's fields_get of {model} is not an object of fields"
        )));
    };
    if let Some(wanted) = wanted {
        for name in wanted {
            if !descriptions.contains_key(name) {
                return Err(ConnectorError::config(format!(
                    "`fields.\"{model}\"` names `{name}`, which {model} does not have; check \
                     the spelling against the model's fields in Tryton"
                )));
            }
        }
    }
    let keep = |name: &str| {
        name == "id"
            || CURSORS.contains(&name)
            || name == "active"
            || wanted.is_none_or(|w| w.iter().any(|n| n == name))
    };
    let mut names: Vec<&String> = descriptions.keys().filter(|n| keep(n)).collect();
    names.sort_by_key(|n| (n.as_str() != "id", n.as_str()));
    let mut fields = Vec::new();
    for name in names {
        let description = &descriptions[name];
        let Some((kind, data_type)) = kind_of(description) else {
            continue;
        };
        let readonly = description["readonly"].as_bool().unwrap_or(false);
        let required = description["required"].as_bool().unwrap_or(false);
        let native = description["type"].as_str().unwrap_or_default();
        let relation = description["relation"].as_str();
        fields.push(Field {
            info: FieldInfo {
                name: name.clone(),
                data_type,
                nullable: name != "id",
                native_type: Some(match (relation, readonly) {
                    (Some(r), true) => format!("{native} to {r} (read-only)"),
                    (Some(r), false) => format!("{native} to {r}"),
                    (None, true) => format!("{native} (read-only)"),
                    (None, false) => native.to_owned(),
                }),
            },
            kind,
            tryton_name: name.clone(),
            writable: !readonly && name != "id",
            required,
        });
        if rec_names && kind == Kind::Relation {
            fields.push(Field {
                info: FieldInfo {
                    name: format!("{name}{REC_NAME_SUFFIX}"),
                    data_type: DataType::Text,
                    nullable: true,
                    native_type: Some(format!("rec_name of {name} (read-only)")),
                },
                kind: Kind::Text,
                tryton_name: format!("{name}.rec_name"),
                writable: false,
                required: false,
            });
        }
    }
    if fields.first().is_none_or(|f| f.info.name != "id") {
        return Err(ConnectorError::internal(format!(
            "Tryton's fields_get of {model} has no `id` field: {}",
            json!(descriptions.keys().collect::<Vec<_>>())
        )));
    }
    Ok(StreamSchema {
        model: model.to_owned(),
        fields,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_digits_become_decimal_types() {
        assert_eq!(
            decimal_type(&json!("[null, 4]")),
            DataType::Decimal {
                precision: 38,
                scale: 4
            }
        );
        assert_eq!(
            decimal_type(&json!([16, 2])),
            DataType::Decimal {
                precision: 18,
                scale: 2
            }
        );
        assert_eq!(
            decimal_type(&json!("currency_digits")),
            DataType::Decimal {
                precision: 38,
                scale: 10
            }
        );
        assert!(kind_of(&json!({"type": "one2many"})).is_none());
        assert_eq!(
            kind_of(&json!({"type": "many2one"})).unwrap().1,
            DataType::Int64
        );
    }
}
