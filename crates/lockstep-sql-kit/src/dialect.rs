//! The differences between SQL databases that the shared SQL text depends on.
//!
//! Invariants:
//! - [`Dialect::quote_ident`] always quotes and doubles an embedded quote character, so any
//!   name (keywords, spaces, quotes, non-ASCII) is one identifier and never SQL.
//! - A dialect is a unit type: choosing one costs nothing per row.

/// What one database does its own way.
pub trait Dialect {
    /// The character that quotes identifiers: `"` (standard SQL) or `` ` `` (MySQL).
    fn quote_char(&self) -> char;

    /// The placeholder of the `n`-th bound value (1-based): `$n` or `?`.
    fn placeholder(&self, n: usize) -> String;

    /// Whether NULL sorts before every value in ascending order.
    fn nulls_first(&self) -> bool;

    /// Whether a keyset cut over several columns should spell out `a > ? OR (a = ? AND b >
    /// ?)` next to the row comparison, so that the optimizer sees an index range on every
    /// column (MySQL's does not on a row comparison alone).
    fn expands_row_comparison(&self) -> bool {
        false
    }

    /// `name` as a quoted identifier, embedded quote characters doubled.
    fn quote_ident(&self, name: &str) -> String {
        let q = self.quote_char();
        let mut out = String::with_capacity(name.len() + 2);
        out.push(q);
        for c in name.chars() {
            if c == q {
                out.push(q);
            }
            out.push(c);
        }
        out.push(q);
        out
    }

    /// Quoted identifiers joined by `, `, each prefixed by `prefix` (such as `t.`).
    fn ident_list<'a>(&self, names: impl IntoIterator<Item = &'a str>, prefix: &str) -> String
    where
        Self: Sized,
    {
        names
            .into_iter()
            .map(|n| format!("{prefix}{}", self.quote_ident(n)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `(p1, p2, ...)`: `n` placeholders numbered from `first`, in parentheses.
    fn placeholder_row(&self, first: usize, n: usize) -> String {
        let marks: Vec<String> = (first..first + n).map(|i| self.placeholder(i)).collect();
        format!("({})", marks.join(", "))
    }
}

/// PostgreSQL: `"ident"`, `$n`, NULLs last.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresDialect;

impl Dialect for PostgresDialect {
    fn quote_char(&self) -> char {
        '"'
    }
    fn placeholder(&self, n: usize) -> String {
        format!("${n}")
    }
    fn nulls_first(&self) -> bool {
        false
    }
}

/// MySQL and MariaDB: `` `ident` ``, `?`, NULLs first, expanded keyset cuts.
#[derive(Debug, Clone, Copy, Default)]
pub struct MySqlDialect;

impl Dialect for MySqlDialect {
    fn quote_char(&self) -> char {
        '`'
    }
    fn placeholder(&self, _: usize) -> String {
        "?".to_owned()
    }
    fn nulls_first(&self) -> bool {
        true
    }
    fn expands_row_comparison(&self) -> bool {
        true
    }
}

/// SQLite: `"ident"`, `?`, NULLs first.
#[derive(Debug, Clone, Copy, Default)]
pub struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn quote_char(&self) -> char {
        '"'
    }
    fn placeholder(&self, _: usize) -> String {
        "?".to_owned()
    }
    fn nulls_first(&self) -> bool {
        true
    }
}

/// A comma-separated list in parentheses when there is more than one item; the item alone
/// otherwise (a row value of one column is the column).
pub fn row_of(items: &[String]) -> String {
    if items.len() == 1 {
        items[0].clone()
    } else {
        format!("({})", items.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_the_quote_character_doubled() {
        assert_eq!(PostgresDialect.quote_ident("order"), "\"order\"");
        assert_eq!(PostgresDialect.quote_ident("a\"b c"), "\"a\"\"b c\"");
        assert_eq!(SqliteDialect.quote_ident("ünï"), "\"ünï\"");
        assert_eq!(MySqlDialect.quote_ident("a`b c"), "`a``b c`");
        assert_eq!(MySqlDialect.quote_ident("a\"b"), "`a\"b`");
        assert_eq!(
            PostgresDialect.ident_list(["a", "b"], "t."),
            "t.\"a\", t.\"b\""
        );
    }

    #[test]
    fn placeholders_follow_the_dialect() {
        assert_eq!(PostgresDialect.placeholder_row(3, 2), "($3, $4)");
        assert_eq!(MySqlDialect.placeholder_row(1, 3), "(?, ?, ?)");
        assert_eq!(SqliteDialect.placeholder_row(1, 1), "(?)");
        assert_eq!(row_of(&["a".into()]), "a");
        assert_eq!(row_of(&["a".into(), "b".into()]), "(a, b)");
    }
}
