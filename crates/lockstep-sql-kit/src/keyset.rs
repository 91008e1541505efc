//! The keyset predicate: "the order columns are strictly after (or at) these values".
//!
//! Keyset paging reads the rows after the last row of the previous page, `(c, k) > (c0,
//! k0)` in the read's order (cursor, then key), so that rows sharing a cursor value are
//! neither skipped nor read twice, and no page costs more than its rows (never OFFSET).
//!
//! Invariants:
//! - Without NULLs among the values the predicate is one row-value comparison (which every
//!   database answers from an index); dialects that say so get the expanded form next to it.
//! - A NULL value is compared where the dialect sorts NULL (first or last), in the expanded
//!   form, never with `=` or `>` (which are never true for NULL).
//! - The predicate is one parenthesised condition when it has more than one term, so it can
//!   be joined with others by `AND`.
//! - Values are never in the text: each is the SQL expression the caller gives (a
//!   placeholder, or an expression reading a bound setting), and [`KeysetPredicate::binds`]
//!   says which value each positional placeholder takes, in order.

use crate::dialect::{row_of, Dialect};

/// A keyset condition and the values its placeholders take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysetPredicate {
    /// The condition, e.g. `("at", "id") > (?, ?)`.
    pub sql: String,
    /// For each occurrence of a value expression in `sql`, in order, the index of its
    /// value: what to bind to positional (`?`) placeholders.
    pub binds: Vec<usize>,
}

/// The condition "`columns` are after `values`" (at or after them when `inclusive`).
///
/// `columns` are the order columns' SQL (quoted identifiers); `values` the first
/// `values.len()` of them to compare (a prefix of the order is allowed), each the SQL that
/// stands for the value, or `None` for a NULL.
pub fn keyset_after(
    dialect: &impl Dialect,
    columns: &[String],
    values: &[Option<String>],
    inclusive: bool,
) -> KeysetPredicate {
    let n = values.len().min(columns.len());
    let columns = &columns[..n];
    let values = &values[..n];
    let op = if inclusive { ">=" } else { ">" };
    if let Some(exprs) = values.iter().cloned().collect::<Option<Vec<String>>>() {
        let row = format!("{} {op} {}", row_of(columns), row_of(&exprs));
        if n < 2 || inclusive || !dialect.expands_row_comparison() {
            return KeysetPredicate {
                sql: row,
                binds: (0..n).collect(),
            };
        }
        let expanded = expanded(dialect, columns, values, false);
        let mut binds = expanded.binds;
        binds.extend(0..n);
        return KeysetPredicate {
            sql: format!("{} AND {row}", expanded.sql),
            binds,
        };
    }
    expanded(dialect, columns, values, inclusive)
}

/// `(c0 > v0) OR (c0 = v0 AND c1 > v1) ...` [`OR (c0 = v0 AND ...)` when inclusive], with
/// NULLs compared where the dialect sorts them.
fn expanded(
    dialect: &impl Dialect,
    columns: &[String],
    values: &[Option<String>],
    inclusive: bool,
) -> KeysetPredicate {
    let mut binds = Vec::new();
    let eq = |i: usize, binds: &mut Vec<usize>| match &values[i] {
        None => format!("{} IS NULL", columns[i]),
        Some(v) => {
            binds.push(i);
            format!("{} = {v}", columns[i])
        }
    };
    let gt = |i: usize, binds: &mut Vec<usize>| match (&values[i], dialect.nulls_first()) {
        (None, true) => format!("{} IS NOT NULL", columns[i]),
        // Nothing sorts after NULL when NULL sorts last.
        (None, false) => "FALSE".to_owned(),
        (Some(v), true) => {
            binds.push(i);
            format!("{} > {v}", columns[i])
        }
        (Some(v), false) => {
            binds.push(i);
            format!("({} > {v} OR {} IS NULL)", columns[i], columns[i])
        }
    };
    let mut terms = Vec::new();
    for i in 0..values.len() {
        let mut parts: Vec<String> = (0..i).map(|j| eq(j, &mut binds)).collect();
        parts.push(gt(i, &mut binds));
        terms.push(format!("({})", parts.join(" AND ")));
    }
    if inclusive {
        let parts: Vec<String> = (0..values.len()).map(|j| eq(j, &mut binds)).collect();
        terms.push(format!("({})", parts.join(" AND ")));
    }
    KeysetPredicate {
        sql: format!("({})", terms.join(" OR ")),
        binds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MySqlDialect, PostgresDialect, SqliteDialect};

    fn cols(d: &impl Dialect, names: &[&str]) -> Vec<String> {
        names.iter().map(|n| d.quote_ident(n)).collect()
    }

    fn marks(n: usize) -> Vec<Option<String>> {
        vec![Some("?".to_owned()); n]
    }

    #[test]
    fn without_nulls_the_cut_is_one_row_comparison() {
        let p = keyset_after(
            &SqliteDialect,
            &cols(&SqliteDialect, &["at", "id"]),
            &marks(2),
            false,
        );
        assert_eq!(p.sql, "(\"at\", \"id\") > (?, ?)");
        assert_eq!(p.binds, [0, 1]);
        let p = keyset_after(
            &SqliteDialect,
            &cols(&SqliteDialect, &["at", "id"]),
            &marks(2),
            true,
        );
        assert_eq!(p.sql, "(\"at\", \"id\") >= (?, ?)");
        let p = keyset_after(
            &MySqlDialect,
            &cols(&MySqlDialect, &["id"]),
            &marks(1),
            false,
        );
        assert_eq!(p.sql, "`id` > ?");
        assert_eq!(p.binds, [0]);
    }

    #[test]
    fn postgres_compares_rows_of_the_expressions_it_is_given() {
        let values = vec![Some("$1".to_owned()), Some("$2".to_owned())];
        let p = keyset_after(
            &PostgresDialect,
            &cols(&PostgresDialect, &["at", "id"]),
            &values,
            false,
        );
        assert_eq!(p.sql, "(\"at\", \"id\") > ($1, $2)");
        // A prefix of the order (a cursor without a key) compares the prefix.
        let p = keyset_after(
            &PostgresDialect,
            &cols(&PostgresDialect, &["at", "id"]),
            &values[..1],
            false,
        );
        assert_eq!(p.sql, "\"at\" > $1");
    }

    #[test]
    fn mysql_spells_the_cut_out_next_to_the_row_comparison() {
        let p = keyset_after(
            &MySqlDialect,
            &cols(&MySqlDialect, &["at", "id"]),
            &marks(2),
            false,
        );
        assert_eq!(
            p.sql,
            "((`at` > ?) OR (`at` = ? AND `id` > ?)) AND (`at`, `id`) > (?, ?)"
        );
        assert_eq!(p.binds, [0, 0, 1, 0, 1]);
    }

    #[test]
    fn nulls_are_compared_where_the_dialect_sorts_them() {
        let values = vec![None, Some("?".to_owned())];
        let p = keyset_after(
            &SqliteDialect,
            &cols(&SqliteDialect, &["at", "id"]),
            &values,
            false,
        );
        assert_eq!(
            p.sql,
            "((\"at\" IS NOT NULL) OR (\"at\" IS NULL AND \"id\" > ?))"
        );
        assert_eq!(p.binds, [1]);
        let p = keyset_after(
            &SqliteDialect,
            &cols(&SqliteDialect, &["at", "id"]),
            &values,
            true,
        );
        assert_eq!(
            p.sql,
            "((\"at\" IS NOT NULL) OR (\"at\" IS NULL AND \"id\" > ?) OR (\"at\" IS NULL AND \
             \"id\" = ?))"
        );
        assert_eq!(p.binds, [1, 1]);
        let values = vec![Some("$1".to_owned()), None];
        let p = keyset_after(
            &PostgresDialect,
            &cols(&PostgresDialect, &["at", "id"]),
            &values,
            false,
        );
        assert_eq!(
            p.sql,
            "(((\"at\" > $1 OR \"at\" IS NULL)) OR (\"at\" = $1 AND FALSE))"
        );
    }
}
