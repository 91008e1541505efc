//! The `ON CONFLICT` action of an upsert by key (PostgreSQL and SQLite spell it alike).
//!
//! Invariant: a row whose non-key values are unchanged is not updated (the condition the
//! connector gives says when a row changed), so the database can tell updated rows from
//! unchanged ones; a table with only key columns does nothing on conflict.

use crate::dialect::Dialect;

/// `DO UPDATE SET c = EXCLUDED.c, ... WHERE <changed>` for the `non_key` columns, or `DO
/// NOTHING` when there are none. `changed` builds the condition only when it is needed.
pub fn conflict_action(
    dialect: &impl Dialect,
    non_key: &[&str],
    changed: impl FnOnce() -> String,
) -> String {
    if non_key.is_empty() {
        return "DO NOTHING".to_owned();
    }
    let sets: Vec<String> = non_key
        .iter()
        .map(|c| format!("{0} = EXCLUDED.{0}", dialect.quote_ident(c)))
        .collect();
    format!("DO UPDATE SET {} WHERE {}", sets.join(", "), changed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SqliteDialect;

    #[test]
    fn non_key_columns_are_set_when_changed_and_key_only_tables_do_nothing() {
        let action = conflict_action(&SqliteDialect, &["a", "b c"], || "x".into());
        assert_eq!(
            action,
            "DO UPDATE SET \"a\" = EXCLUDED.\"a\", \"b c\" = EXCLUDED.\"b c\" WHERE x"
        );
        let action = conflict_action(&SqliteDialect, &[], || unreachable!());
        assert_eq!(action, "DO NOTHING");
    }
}
