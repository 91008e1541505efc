//! SQL text helpers. Identifiers are always quoted; values never appear in SQL text.

/// `name` as a quoted identifier, embedded quotes doubled: `a"b` becomes `"a""b"`.
pub fn ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// `"schema"."table"`.
pub fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", ident(schema), ident(table))
}

/// Quoted identifiers joined by `, `, each prefixed by `prefix` (such as `t.`).
pub fn ident_list<'a>(names: impl IntoIterator<Item = &'a str>, prefix: &str) -> String {
    names
        .into_iter()
        .map(|n| format!("{prefix}{}", ident(n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A comma-separated list in parentheses when there is more than one item.
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
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(ident("order"), "\"order\"");
        assert_eq!(ident("a\"b c"), "\"a\"\"b c\"");
        assert_eq!(qualified("my schema", "ünï"), "\"my schema\".\"ünï\"");
        assert_eq!(ident_list(["a", "b"], "t."), "t.\"a\", t.\"b\"");
    }
}
