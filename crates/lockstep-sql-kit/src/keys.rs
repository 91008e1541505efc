//! Questions about a table's keys that every SQL destination asks.
//!
//! Invariant: names compare exactly (as the catalog spells them); a connector whose
//! database compares names another way answers these questions itself.

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
}
