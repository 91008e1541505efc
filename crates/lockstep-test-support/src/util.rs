//! Comparisons the checks share: manifests, schemas, rows.

use arrow::datatypes::{Field, Schema};
use lockstep_plugin_api::ABI_MAJOR;
use lockstep_protocol::{DataType, Manifest};
use serde_json::{Map, Value};

/// Everything wrong with a manifest, as sentences.
pub(crate) fn manifest_problems(m: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    if m.name.is_empty() {
        problems.push("the name is empty".to_owned());
    }
    let semver = m.version.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = semver.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        problems.push(format!(
            "the version `{}` is not a semantic version (MAJOR.MINOR.PATCH)",
            m.version
        ));
    }
    if m.roles.is_empty() {
        problems.push("it declares no role".to_owned());
    }
    match &m.config_schema {
        Value::Object(schema) => {
            if let Some(t) = schema.get("type") {
                if t != "object" {
                    problems.push(format!(
                        "the config schema's `type` is {t}; a config is a JSON object"
                    ));
                }
            }
            if let Some(p) = schema.get("properties") {
                if !p.is_object() {
                    problems.push("the config schema's `properties` is not an object".to_owned());
                }
            }
        }
        other => problems.push(format!(
            "the config schema must be a JSON Schema object, found {}",
            if other.is_null() {
                "nothing".to_owned()
            } else {
                other.to_string()
            }
        )),
    }
    let major = m
        .abi_version
        .split('.')
        .next()
        .and_then(|v| v.parse::<u32>().ok());
    if major != Some(ABI_MAJOR) {
        problems.push(format!(
            "abi_version `{}` does not match this host's API {ABI_MAJOR}.x (the SDK fills it in; \
             build with lockstep-plugin-sdk)",
            m.abi_version
        ));
    }
    problems
}

fn describe_field(f: &Field) -> String {
    let logical = DataType::from_arrow_field(f)
        .map(|t| t.describe())
        .unwrap_or_else(|| "no logical type".into());
    format!(
        "{} {} ({logical})",
        f.data_type(),
        if f.is_nullable() {
            "nullable"
        } else {
            "not null"
        }
    )
}

/// How `actual` differs from `expected` in names, types, nullability and logical types.
pub(crate) fn schema_mismatch(expected: &Schema, actual: &Schema) -> Option<String> {
    let names = |s: &Schema| {
        s.fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if expected.fields().len() != actual.fields().len() {
        return Some(format!(
            "the batch has fields [{}] but the catalog says [{}]",
            names(actual),
            names(expected)
        ));
    }
    let mut problems = Vec::new();
    for (e, a) in expected.fields().iter().zip(actual.fields()) {
        if e.name() != a.name() {
            problems.push(format!(
                "field `{}` is where the catalog has `{}`",
                a.name(),
                e.name()
            ));
        } else if e.data_type() != a.data_type()
            || e.is_nullable() != a.is_nullable()
            || DataType::from_arrow_field(e) != DataType::from_arrow_field(a)
        {
            problems.push(format!(
                "field `{}` is {} but the catalog's fields map to {}",
                a.name(),
                describe_field(a),
                describe_field(e)
            ));
        }
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// What identifies a row: its key values when the stream has a key, else the whole row.
pub(crate) fn identity(row: &Map<String, Value>, key: &[String]) -> String {
    if key.is_empty() || key.iter().any(|k| !row.contains_key(k)) {
        return Value::Object(row.clone()).to_string();
    }
    Value::Array(key.iter().map(|k| row[k].clone()).collect()).to_string()
}

/// Whether two JSON values are the same value (numbers compare by value: 2 equals 2.0).
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// A short list of items for messages: the first few, then how many more.
pub(crate) fn some_of<T: std::fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 3;
    let mut text = items
        .iter()
        .take(SHOWN)
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        text.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockstep_protocol::arrow_types::arrow_schema;
    use lockstep_protocol::{FieldInfo, Role};
    use serde_json::json;

    fn manifest() -> Manifest {
        Manifest {
            name: "x".into(),
            version: "1.2.3".into(),
            description: String::new(),
            roles: vec![Role::Source],
            features: vec![],
            config_schema: json!({"type": "object"}),
            abi_version: format!("{ABI_MAJOR}.0.0"),
            sdk_version: "0.1.0".into(),
        }
    }

    #[test]
    fn manifests_are_checked() {
        assert!(manifest_problems(&manifest()).is_empty());
        let bad = Manifest {
            version: "one".into(),
            roles: vec![],
            config_schema: json!("object"),
            abi_version: "2.0.0".into(),
            ..manifest()
        };
        let problems = manifest_problems(&bad);
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[3].contains("2.0.0"), "{problems:?}");
    }

    #[test]
    fn schemas_are_compared_by_name_type_nullability_and_logical_type() {
        let field = |name: &str, data_type, nullable| FieldInfo {
            name: name.into(),
            data_type,
            nullable,
            native_type: None,
        };
        let expected = arrow_schema(&[
            field("id", DataType::Int64, false),
            field("doc", DataType::Json, true),
        ]);
        assert_eq!(schema_mismatch(&expected, &expected), None);
        let text = arrow_schema(&[
            field("id", DataType::Int64, false),
            field("doc", DataType::Text, true),
        ]);
        let problem = schema_mismatch(&expected, &text).unwrap();
        assert!(
            problem.contains("(text)") && problem.contains("(json)"),
            "{problem}"
        );
        let nullable = arrow_schema(&[
            field("id", DataType::Int64, true),
            field("doc", DataType::Json, true),
        ]);
        assert!(schema_mismatch(&expected, &nullable)
            .unwrap()
            .contains("nullable"));
    }

    #[test]
    fn values_compare_by_value() {
        assert!(same_value(&json!(2), &json!(2.0)));
        assert!(!same_value(&json!(true), &json!(1)));
        assert_eq!(some_of(&[1, 2, 3, 4, 5]), "1, 2, 3 and 2 more");
    }
}
