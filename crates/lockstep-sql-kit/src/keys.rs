//! Questions about a table's keys that every SQL destination asks.
//!
//! Invariant: names compare exactly (as the catalog spells them); a connector whose
//! database compares names another way answers these questions itself.

/// A table's primary key and unique keys, as its catalog reports them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableKeys {
    /// The primary key's columns; empty when the table has none.
    pub primary_key: Vec<String>,
    /// The columns of every unique index usable for upserts (the primary key included).
    pub unique_keys: Vec<Vec<String>>,
}

impl TableKeys {
    /// Records a unique index over `columns`: the primary key when `primary`, and a key
    /// upserts can use when it covers `whole_values` (not prefixes of them).
    pub fn add_unique_index(&mut self, columns: Vec<String>, primary: bool, whole_values: bool) {
        if primary {
            self.primary_key = columns.clone();
        }
        if whole_values {
            self.unique_keys.push(columns);
        }
    }

    /// Whether a unique key is exactly the columns `key`, in any order.
    pub fn has_unique_key(&self, key: &[String]) -> bool {
        has_unique_key(&self.unique_keys, key)
    }
}

/// Whether one of `unique_keys` (each the columns of a primary key or unique index) is
/// exactly the columns `key`, in any order: what an upsert by `key` needs.
pub fn has_unique_key(unique_keys: &[Vec<String>], key: &[String]) -> bool {
    let mut wanted: Vec<&str> = key.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    unique_keys.iter().any(|k| {
        let mut have: Vec<&str> = k.iter().map(String::as_str).collect();
        have.sort_unstable();
        have == wanted
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unique_key_must_be_exactly_the_key_in_any_order() {
        let keys = vec![vec!["b".to_owned(), "a".to_owned()], vec!["id".to_owned()]];
        assert!(has_unique_key(&keys, &["a".into(), "b".into()]));
        assert!(has_unique_key(&keys, &["id".into()]));
        assert!(!has_unique_key(&keys, &["a".into()]));
        assert!(!has_unique_key(&keys, &["id".into(), "a".into()]));
        assert!(!has_unique_key(&keys, &["ID".into()]));
    }

    #[test]
    fn prefix_indexes_name_the_primary_key_but_do_not_serve_upserts() {
        let mut keys = TableKeys::default();
        keys.add_unique_index(vec!["name".into()], true, false);
        keys.add_unique_index(vec!["id".into()], false, true);
        assert_eq!(keys.primary_key, ["name"]);
        assert!(!keys.has_unique_key(&["name".into()]));
        assert!(keys.has_unique_key(&["id".into()]));
    }
}
