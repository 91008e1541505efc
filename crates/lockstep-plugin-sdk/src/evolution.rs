//! The schema-evolution planner every destination shares.
//!
//! A destination stream may lack fields a sync writes. The request's [`SchemaEvolution`]
//! policy says what happens: add them, write without them, or refuse. [`plan_evolution`]
//! compares the request's fields with what the stream has and returns the plan; the
//! connector only carries it out (DDL for a database, a schema file for a file store).
//!
//! Invariants:
//! - Every refusal has one wording, whichever connector refuses: it names the stream, the
//!   missing fields (each in backticks) and the two policies that would accept them.
//! - The planner does no I/O; whether a field exists is the connector's question, asked
//!   through a closure (databases differ in how they compare names).

use crate::{ConnectorError, FieldInfo, OpenStreamRequest, Result, SchemaEvolution};

/// What to do with the fields a destination stream lacks.
#[derive(Debug, Clone, PartialEq)]
pub enum EvolutionPlan<'r> {
    /// The stream has every field the sync writes.
    Unchanged,
    /// Add these fields to the stream (policy `add-columns`).
    Add(Vec<&'r FieldInfo>),
    /// Write without these fields (policy `ignore`).
    Ignore(Vec<&'r FieldInfo>),
}

impl EvolutionPlan<'_> {
    /// The names of the fields the plan adds or ignores, each in backticks, for messages.
    pub fn names(&self) -> String {
        match self {
            EvolutionPlan::Unchanged => String::new(),
            EvolutionPlan::Add(fields) | EvolutionPlan::Ignore(fields) => field_names(fields),
        }
    }

    /// The fields the plan adds (empty unless it is [`EvolutionPlan::Add`]).
    pub fn added(&self) -> &[&FieldInfo] {
        match self {
            EvolutionPlan::Add(fields) => fields,
            _ => &[],
        }
    }

    /// The fields the plan ignores (empty unless it is [`EvolutionPlan::Ignore`]).
    pub fn ignored(&self) -> &[&FieldInfo] {
        match self {
            EvolutionPlan::Ignore(fields) => fields,
            _ => &[],
        }
    }
}

/// Plans how stream `request.stream` takes `request.fields`, given which fields it has
/// (`has_field`), under `request.schema_evolution`.
///
/// An ignored field is logged once here; the refusal of policy `fail` is the one error
/// every connector returns for it (kind `schema`).
pub fn plan_evolution<'r>(
    request: &'r OpenStreamRequest,
    has_field: impl Fn(&str) -> bool,
) -> Result<EvolutionPlan<'r>> {
    plan_fields(
        &request.stream,
        &request.fields,
        request.schema_evolution,
        has_field,
    )
}

/// [`plan_evolution`] for connectors that keep the stream name, fields and policy apart.
pub fn plan_fields<'r>(
    stream: &str,
    fields: &'r [FieldInfo],
    policy: SchemaEvolution,
    has_field: impl Fn(&str) -> bool,
) -> Result<EvolutionPlan<'r>> {
    let missing: Vec<&FieldInfo> = fields.iter().filter(|f| !has_field(&f.name)).collect();
    if missing.is_empty() {
        return Ok(EvolutionPlan::Unchanged);
    }
    match policy {
        SchemaEvolution::AddColumns => Ok(EvolutionPlan::Add(missing)),
        SchemaEvolution::Ignore => {
            tracing::info!(
                stream = %stream,
                fields = %field_names(&missing),
                "the stream lacks these fields; they are not written (schema evolution `ignore`)"
            );
            Ok(EvolutionPlan::Ignore(missing))
        }
        SchemaEvolution::Fail => Err(refusal(stream, &missing)),
    }
}

/// The one refusal of policy `fail`.
fn refusal(stream: &str, missing: &[&FieldInfo]) -> ConnectorError {
    ConnectorError::schema(format!(
        "stream `{stream}` lacks the fields {} that the sync writes, and its schema evolution \
         is `fail`; add them to the stream, or set schema evolution to `add-columns` or \
         `ignore`",
        field_names(missing)
    ))
}

fn field_names(fields: &[&FieldInfo]) -> String {
    backticked(fields.iter().map(|f| f.name.as_str()))
}

/// Names in backticks, joined by `, `, as every refusal of the SDK lists them.
pub(crate) fn backticked<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DataType;

    fn request(policy: SchemaEvolution) -> OpenStreamRequest {
        let field = |name: &str| FieldInfo {
            name: name.into(),
            data_type: DataType::Text,
            nullable: true,
            native_type: None,
        };
        OpenStreamRequest {
            stream: "people".into(),
            fields: vec![field("id"), field("name"), field("born")],
            key: vec!["id".into()],
            create_if_missing: true,
            schema_evolution: policy,
        }
    }

    fn has(names: &'static [&'static str]) -> impl Fn(&str) -> bool {
        move |n| names.contains(&n)
    }

    #[test]
    fn a_stream_with_every_field_is_unchanged_under_every_policy() {
        for policy in [
            SchemaEvolution::AddColumns,
            SchemaEvolution::Ignore,
            SchemaEvolution::Fail,
        ] {
            let r = request(policy);
            let plan = plan_evolution(&r, has(&["id", "name", "born", "extra"])).unwrap();
            assert_eq!(plan, EvolutionPlan::Unchanged);
        }
    }

    #[test]
    fn missing_fields_are_added_or_ignored_in_request_order() {
        let r = request(SchemaEvolution::AddColumns);
        let plan = plan_evolution(&r, has(&["id"])).unwrap();
        let names: Vec<&str> = plan.added().iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["name", "born"]);
        assert!(plan.ignored().is_empty());
        assert_eq!(plan.names(), "`name`, `born`");

        let r = request(SchemaEvolution::Ignore);
        let plan = plan_evolution(&r, has(&["id", "name"])).unwrap();
        assert_eq!(plan.ignored().len(), 1);
        assert!(plan.added().is_empty());
    }

    #[test]
    fn policy_fail_refuses_with_the_one_wording() {
        let r = request(SchemaEvolution::Fail);
        let e = plan_evolution(&r, has(&["id"])).unwrap_err();
        assert_eq!(e.kind, crate::api::ErrorKind::SCHEMA);
        assert_eq!(
            e.message,
            "stream `people` lacks the fields `name`, `born` that the sync writes, and its \
             schema evolution is `fail`; add them to the stream, or set schema evolution to \
             `add-columns` or `ignore`"
        );
    }
}
