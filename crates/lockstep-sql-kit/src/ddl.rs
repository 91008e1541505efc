//! Table definitions the SQL connectors write alike.
//!
//! Invariants:
//! - Key fields and non-nullable fields are `NOT NULL`; every other column is nullable.
//! - The key is the primary key, in the request's order; identifiers are quoted.
//! - The type of each column is the connector's choice, asked through a closure.

use lockstep_plugin_sdk::{FieldInfo, OpenStreamRequest, Result};

use crate::dialect::Dialect;

/// What goes between the parentheses of `CREATE TABLE t (...)` for `request`: one
/// definition a field, `name type NOT NULL` for key and non-nullable fields and `name type`
/// followed by `nullable` (such as `" NULL"`, or nothing) for the others, then `PRIMARY KEY
/// (key)`. `is_key` says whether a field name is in the key (databases differ in how they
/// compare names); `type_of` gives a field's column type, knowing whether it is a key field.
pub fn table_body(
    dialect: &impl Dialect,
    request: &OpenStreamRequest,
    is_key: impl Fn(&str) -> bool,
    mut type_of: impl FnMut(&FieldInfo, bool) -> Result<String>,
    nullable: &str,
) -> Result<String> {
    let mut defs = Vec::with_capacity(request.fields.len() + 1);
    for f in &request.fields {
        let key = is_key(&f.name);
        let null = if key || !f.nullable {
            " NOT NULL"
        } else {
            nullable
        };
        let column_type = type_of(f, key)?;
        defs.push(format!(
            "{} {column_type}{null}",
            dialect.quote_ident(&f.name)
        ));
    }
    if !request.key.is_empty() {
        defs.push(format!(
            "PRIMARY KEY ({})",
            dialect.ident_list(request.key.iter().map(String::as_str), "")
        ));
    }
    Ok(defs.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MySqlDialect, PostgresDialect};
    use lockstep_plugin_sdk::{DataType, SchemaEvolution};

    fn request() -> OpenStreamRequest {
        let field = |name: &str, nullable: bool| FieldInfo {
            name: name.into(),
            data_type: DataType::Int64,
            nullable,
            native_type: None,
        };
        OpenStreamRequest {
            stream: "t".into(),
            fields: vec![field("id", true), field("a b", true), field("c", false)],
            key: vec!["id".into()],
            create_if_missing: true,
            schema_evolution: SchemaEvolution::AddColumns,
        }
    }

    #[test]
    fn keys_and_required_fields_are_not_null_and_the_key_is_the_primary_key() {
        let r = request();
        let body = table_body(
            &PostgresDialect,
            &r,
            |n| n == "id",
            |_, _| Ok("bigint".into()),
            "",
        )
        .unwrap();
        assert_eq!(
            body,
            "\"id\" bigint NOT NULL, \"a b\" bigint, \"c\" bigint NOT NULL, PRIMARY KEY (\"id\")"
        );
        let body = table_body(
            &MySqlDialect,
            &r,
            |n| n == "id",
            |_, key| Ok(if key { "BIGINT" } else { "INT" }.into()),
            " NULL",
        )
        .unwrap();
        assert_eq!(
            body,
            "`id` BIGINT NOT NULL, `a b` INT NULL, `c` INT NOT NULL, PRIMARY KEY (`id`)"
        );
    }
}
