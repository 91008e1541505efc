//! SQL text helpers. Identifiers are always quoted; values are always bound parameters.

/// SQLite's default limit on bound parameters per statement (SQLITE_MAX_VARIABLE_NUMBER).
pub(crate) const MAX_PARAMS: usize = 32_766;

/// `name` as a quoted SQL identifier, embedded quotes doubled.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `n` comma-separated `?` placeholders in parentheses: `(?, ?, ?)`.
pub(crate) fn placeholders(n: usize) -> String {
    format!("({})", vec!["?"; n].join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_quotes_doubled() {
        assert_eq!(ident("order"), "\"order\"");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(placeholders(2), "(?, ?)");
    }
}
