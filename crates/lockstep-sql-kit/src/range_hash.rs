//! Range hashes in SQL (the `range-hash` feature, `lockstep verify`'s pushdown): the queries
//! that make a database count and hash the records of each range of its key space, or list
//! the (key, row hash) pairs of some ranges, so that two systems compare only what differs.
//!
//! A record's *range* is a 64-bit hash of its key columns (the dialect's
//! [`RangeHashDialect::key_hash`]) masked to the range count (a power of two), which depends
//! on the key's values only, never on how the system orders or collates keys. Its *row hash*
//! is a 64-bit hash of its key columns and then the requested columns
//! ([`RangeHashDialect::row_hash`], then [`RangeHashDialect::finish_hash`] over it),
//! which must tell apart any two records that the engine's comparison tells apart (but for a
//! 64-bit collision), and must not be linear in the columns' hashes: a range's summary is its
//! record count and the *sum* of its row hashes (independent of the order the system visits
//! the records), and a sum of linear row hashes would not see two records of one range
//! swapping a value.
//!
//! The summary query computes range and inner row hash below an optimization fence
//! ([`RangeHashDialect::fence`]), so that the grouping sees two integers a record rather than
//! the whole record (the planner cannot know that the ranges are few, and would otherwise sort
//! whole records), and so that the finishing hash, which may name the inner hash twice,
//! computes it once; it returns one row per range that holds records, in range order: the
//! engine merges two sides' summaries as two streams.
//!
//! Invariants:
//! - Identifiers are quoted by the dialect; the list of ranges is a bound parameter, never
//!   SQL text. What each column contributes (its hash expression, its canonical text) is the
//!   connector's (a [`HashColumn`]): this module only assembles it.
//! - The same request on two systems of the same connector gives the same SQL over the same
//!   expressions, hence the same summaries for the same records.

use lockstep_plugin_sdk::protocol::{RangeHashRequest, RANGE_HASH_MAX_RANGES};
use lockstep_plugin_sdk::{ConnectorError, Result};

use crate::Dialect;

/// The most ranges one listing read may name.
pub const MAX_LISTED_RANGES: usize = 1 << 20;

/// What a dialect needs to hash in SQL.
pub trait RangeHashDialect: Dialect {
    /// An int64 expression hashing the key columns `key`: a record's range is its low bits.
    /// Equal keys must give equal hashes; unequal keys may collide (they only share a range).
    fn key_hash(&self, key: &[HashColumn]) -> String;
    /// An int64 expression over the columns `columns` (the key's, then the requested
    /// fields'), computed once a record below the fence: the row hash before
    /// [`RangeHashDialect::finish_hash`]. It differs for two records the engine tells apart
    /// (but for a 64-bit collision).
    fn row_hash(&self, columns: &[HashColumn]) -> String;
    /// The row hash: an int64 expression over `inner`, a reference to the value of
    /// [`RangeHashDialect::row_hash`] (which it may name more than once: it is computed once,
    /// below the fence). Together the two are not linear in the columns' own hashes, nor in
    /// any combination of them that a sum could undo: two records of one range swapping a
    /// value must change the range's sum.
    fn finish_hash(&self, inner: &str) -> String;
    /// What follows the inner query of a summary so that the planner computes its range and
    /// row hash before grouping (PostgreSQL: ` OFFSET 0`), or nothing.
    fn fence(&self) -> &'static str;
    /// The decimal text of an exact, order-independent sum of the int64 expression `hash`
    /// over a group.
    fn sum_text(&self, hash: &str) -> String;
    /// The decimal text of an int64 expression.
    fn int_text(&self, int: &str) -> String;
    /// The condition "int64 expression `range` is one of the ranges bound at parameter 1".
    fn range_in_list(&self, range: &str) -> String;
    /// The canonical text of the value expression `value` (a column's type, such as the
    /// greatest value of a column).
    fn value_text(&self, value: &str) -> String;
}

/// One column to hash: its name, the SQL expression of its value in canonical text form (the
/// text a listed key carries, which the connector casts back to the column's type), and what
/// the dialect's row hash hashes for it (expressions over the column's quoted name).
#[derive(Clone, Debug)]
pub struct HashColumn {
    pub name: String,
    pub text: String,
    pub hash: Vec<HashPart>,
    /// The column's value as an integer expression, when it is one that the dialect may hash
    /// directly for a record's range (a key of one integer column).
    pub int_key: Option<String>,
}

/// One value a row hash hashes for a column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashPart {
    /// A value expression that the dialect hashes within a record, by its type's own hash.
    Value(String),
    /// A value expression and a seeded 64-bit hash function of the dialect over it,
    /// `function(value, seed)`, exact for the engine's comparison: different seeds give
    /// unrelated functions, and no value hashes to anything that depends on the seed alone.
    /// The dialect may hash such a value on its own, seeded by its position in the record.
    Seeded {
        function: &'static str,
        value: String,
    },
}

impl HashPart {
    /// The value expression.
    pub fn value(&self) -> &str {
        match self {
            HashPart::Value(v) | HashPart::Seeded { value: v, .. } => v,
        }
    }
}

/// Checks a range-hash request: a power-of-two range count within bounds, a listing of
/// ranges that exist, and no more of them than [`MAX_LISTED_RANGES`].
pub fn check_request(request: &RangeHashRequest, label: &str) -> Result<()> {
    if request.ranges == 0
        || !request.ranges.is_power_of_two()
        || request.ranges > RANGE_HASH_MAX_RANGES
    {
        return Err(ConnectorError::config(format!(
            "{label}: a range-hash read needs a power of two from 1 to {RANGE_HASH_MAX_RANGES} \
             ranges, not {}",
            request.ranges
        )));
    }
    if let Some(list) = &request.list {
        if list.len() > MAX_LISTED_RANGES {
            return Err(ConnectorError::config(format!(
                "{label}: a range-hash read lists at most {MAX_LISTED_RANGES} ranges at once, \
                 not {}",
                list.len()
            )));
        }
        if let Some(bad) = list.iter().find(|r| **r >= request.ranges) {
            return Err(ConnectorError::config(format!(
                "{label}: range {bad} does not exist among {} ranges",
                request.ranges
            )));
        }
    }
    Ok(())
}

/// The parts of a range-hash query over a table.
struct Parts {
    range: String,
    row_hash: String,
}

fn parts<D: RangeHashDialect>(
    dialect: &D,
    key: &[HashColumn],
    fields: &[HashColumn],
    ranges: u64,
) -> Parts {
    let all: Vec<HashColumn> = key.iter().chain(fields).cloned().collect();
    Parts {
        range: format!("({} & {})", dialect.key_hash(key), ranges - 1),
        row_hash: dialect.row_hash(&all),
    }
}

/// The query summarizing each range of `table` (a qualified, quoted name): columns range
/// (int64), count (int64), hash (text) and, with `newest` (a quoted column), the canonical
/// text of that column's greatest value over the whole table (a window over the groups).
/// One row per range that holds records, in range order.
pub fn summary_sql<D: RangeHashDialect>(
    dialect: &D,
    table: &str,
    key: &[HashColumn],
    fields: &[HashColumn],
    ranges: u64,
    newest: Option<&str>,
) -> String {
    let p = parts(dialect, key, fields, ranges);
    let (inner_newest, outer_newest) = match newest {
        Some(column) => (
            format!(", {column} AS n"),
            dialect.value_text("max(max(t.n)) OVER ()"),
        ),
        None => (String::new(), "NULL".to_owned()),
    };
    format!(
        "SELECT t.r, count(*), {sum}, {outer_newest} FROM (SELECT {range} AS r, {row_hash} AS h\
         {inner_newest} FROM {table}{fence}) AS t GROUP BY t.r ORDER BY t.r",
        sum = dialect.sum_text(&dialect.finish_hash("t.h")),
        fence = dialect.fence(),
        range = p.range,
        row_hash = p.row_hash,
    )
}

/// The query listing the records of the ranges bound at parameter 1: one text column per key
/// field (its canonical text, null for a null), then the row hash's decimal text. The key
/// texts and the inner row hash are computed below the fence, for the listed records only.
pub fn list_sql<D: RangeHashDialect>(
    dialect: &D,
    table: &str,
    key: &[HashColumn],
    fields: &[HashColumn],
    ranges: u64,
) -> String {
    let p = parts(dialect, key, fields, ranges);
    let inner: Vec<String> = key
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} AS k{i}", dialect.value_text(&c.text)))
        .collect();
    let outer: Vec<String> = (0..key.len()).map(|i| format!("t.k{i}")).collect();
    format!(
        "SELECT {}, {} FROM (SELECT {}, {} AS h FROM {table} WHERE {}{}) AS t",
        outer.join(", "),
        dialect.int_text(&dialect.finish_hash("t.h")),
        inner.join(", "),
        p.row_hash,
        dialect.range_in_list(&p.range),
        dialect.fence()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PostgresDialect;

    struct Pg;
    impl Dialect for Pg {
        fn quote_char(&self) -> char {
            PostgresDialect.quote_char()
        }
        fn placeholder(&self, n: usize) -> String {
            PostgresDialect.placeholder(n)
        }
        fn nulls_first(&self) -> bool {
            PostgresDialect.nulls_first()
        }
    }
    impl RangeHashDialect for Pg {
        fn key_hash(&self, key: &[HashColumn]) -> String {
            let parts: Vec<&str> = key
                .iter()
                .flat_map(|c| c.hash.iter().map(HashPart::value))
                .collect();
            format!("k({})", parts.join(", "))
        }
        fn row_hash(&self, columns: &[HashColumn]) -> String {
            let parts: Vec<&str> = columns
                .iter()
                .flat_map(|c| c.hash.iter().map(HashPart::value))
                .collect();
            format!("h({})", parts.join(", "))
        }
        fn finish_hash(&self, inner: &str) -> String {
            format!("f({inner})")
        }
        fn fence(&self) -> &'static str {
            " OFFSET 0"
        }
        fn sum_text(&self, hash: &str) -> String {
            format!("s({hash})")
        }
        fn int_text(&self, int: &str) -> String {
            format!("i({int})")
        }
        fn range_in_list(&self, range: &str) -> String {
            format!("{range} = ANY($1)")
        }
        fn value_text(&self, value: &str) -> String {
            format!("({value})::text")
        }
    }

    fn column(name: &str) -> HashColumn {
        let quoted = Pg.quote_ident(name);
        HashColumn {
            name: name.to_owned(),
            text: format!("{quoted}::text"),
            hash: vec![HashPart::Value(format!("e({quoted})"))],
            int_key: None,
        }
    }

    #[test]
    fn summaries_hash_the_key_for_the_range_and_the_whole_row_for_the_hash() {
        let sql = summary_sql(&Pg, "\"t\"", &[column("id")], &[column("a\"b")], 16, None);
        assert_eq!(
            sql,
            "SELECT t.r, count(*), s(f(t.h)), NULL FROM (SELECT (k(e(\"id\")) & 15) AS r, \
             h(e(\"id\"), e(\"a\"\"b\")) AS h FROM \"t\" OFFSET 0) AS t GROUP BY t.r \
             ORDER BY t.r"
        );
        let sql = summary_sql(&Pg, "\"t\"", &[column("id")], &[], 1, Some("\"at\""));
        assert!(sql.contains("(max(max(t.n)) OVER ())::text"), "{sql}");
        assert!(sql.contains(", \"at\" AS n FROM"), "{sql}");
        assert!(sql.contains("& 0)"), "{sql}");
    }

    #[test]
    fn listings_filter_by_the_bound_ranges() {
        let sql = list_sql(&Pg, "\"t\"", &[column("id"), column("k")], &[], 4);
        assert_eq!(
            sql,
            "SELECT t.k0, t.k1, i(f(t.h)) FROM (SELECT (\"id\"::text)::text AS k0, \
             (\"k\"::text)::text AS k1, h(e(\"id\"), e(\"k\")) AS h FROM \"t\" WHERE \
             (k(e(\"id\"), e(\"k\")) & 3) = ANY($1) OFFSET 0) AS t"
        );
    }

    #[test]
    fn requests_must_have_a_power_of_two_ranges_and_name_existing_ones() {
        let mut request = RangeHashRequest {
            ranges: 8,
            ..Default::default()
        };
        check_request(&request, "t").unwrap();
        request.ranges = 6;
        assert!(check_request(&request, "t")
            .unwrap_err()
            .message
            .contains("power of two"));
        request.ranges = 8;
        request.list = Some(vec![1, 8]);
        assert!(check_request(&request, "t")
            .unwrap_err()
            .message
            .contains("range 8"));
    }
}
