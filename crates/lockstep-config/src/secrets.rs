//! The values that came from the environment, kept so they can be redacted.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

/// What a secret is replaced with.
pub const REDACTED: &str = "***";

/// Every string that `${VAR}` interpolation took from the environment while loading a config
/// (in connection configs, the state url and alert settings).
///
/// Callers redact them from logs and from plugin error messages with [`Secrets::redact`]. The
/// `Debug` impl prints only how many there are. Cloning is cheap (the set is shared).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets {
    inner: Arc<Inner>,
}

#[derive(Default, PartialEq, Eq)]
struct Inner {
    values: BTreeSet<String>,
    /// Each value as written raw, as Rust's `Debug` escapes it and as JSON escapes it, longest
    /// first so that a secret containing another is replaced whole.
    patterns: Vec<String>,
}

impl Secrets {
    /// A set of secrets. Empty strings are ignored: there is nothing to redact.
    pub fn new<I, S>(values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let values: BTreeSet<String> = values
            .into_iter()
            .map(Into::into)
            .filter(|v| !v.is_empty())
            .collect();
        let mut patterns = BTreeSet::new();
        for value in &values {
            patterns.insert(value.clone());
            let debug = format!("{value:?}");
            patterns.insert(debug[1..debug.len() - 1].to_owned());
            let json = serde_json::Value::String(value.clone()).to_string();
            patterns.insert(json[1..json.len() - 1].to_owned());
        }
        let mut patterns: Vec<String> = patterns.into_iter().collect();
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Secrets {
            inner: Arc::new(Inner { values, patterns }),
        }
    }

    /// How many distinct secrets there are.
    pub fn len(&self) -> usize {
        self.inner.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.values.is_empty()
    }

    /// Whether `value` is one of the secrets (exactly).
    pub fn contains(&self, value: &str) -> bool {
        self.inner.values.contains(value)
    }

    /// `text` with every occurrence of every secret replaced by `***`. Escaped forms (as Rust's
    /// `Debug` or JSON would write the secret) are replaced too.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for pattern in &self.inner.patterns {
            if out.contains(pattern.as_str()) {
                out = out.replace(pattern.as_str(), REDACTED);
            }
        }
        out
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secrets({} redacted)", self.len())
    }
}

/// Writes `view`'s `Debug` output (honouring `{:#?}`) with every secret redacted.
pub(crate) fn redacted_debug(
    f: &mut fmt::Formatter<'_>,
    secrets: &Secrets,
    view: &dyn fmt::Debug,
) -> fmt::Result {
    let text = if f.alternate() {
        format!("{view:#?}")
    } else {
        format!("{view:?}")
    };
    f.write_str(&secrets.redact(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_every_occurrence_and_escaped_forms() {
        let secrets = Secrets::new(["hunter2", "quo\"te", ""]);
        assert_eq!(secrets.len(), 2);
        assert_eq!(
            secrets.redact("pw=hunter2, again hunter2"),
            "pw=***, again ***"
        );
        assert_eq!(
            secrets.redact(&format!("{:?}", "quo\"te")),
            "\"***\"",
            "the Debug-escaped form is redacted"
        );
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }

    #[test]
    fn a_longer_secret_is_replaced_whole() {
        let secrets = Secrets::new(["abc", "abcdef"]);
        assert_eq!(secrets.redact("x abcdef y abc"), "x *** y ***");
    }
}
