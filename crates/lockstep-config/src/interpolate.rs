//! `${VAR}` interpolation from the environment.
//!
//! `${NAME}` is replaced by the variable's value, `${NAME:-default}` by the default when the
//! variable is unset or empty, and `$$` by a single `$`. A `$` followed by anything else is
//! kept as it is. Names are `[A-Za-z_][A-Za-z0-9_]*`. Defaults are taken literally.

use std::ops::Range;

/// The result of interpolating one string.
#[derive(Debug, Default)]
pub(crate) struct Interpolated {
    pub value: String,
    /// The values taken from the environment: the caller records them as secrets.
    pub from_env: Vec<String>,
}

/// A problem in one string, with its byte range in the raw string.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InterpolationError {
    Unset { name: String, at: Range<usize> },
    Unterminated { at: Range<usize> },
    InvalidName { expr: String, at: Range<usize> },
}

fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Interpolates `raw`, reporting every problem in it.
pub(crate) fn interpolate(
    raw: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Interpolated, Vec<InterpolationError>) {
    let mut out = Interpolated::default();
    let mut errors = Vec::new();
    let mut i = 0;
    while let Some(found) = raw[i..].find('$') {
        let dollar = i + found;
        out.value.push_str(&raw[i..dollar]);
        let rest = &raw[dollar + 1..];
        if rest.starts_with('$') {
            out.value.push('$');
            i = dollar + 2;
        } else if rest.starts_with('{') {
            let Some(close) = rest.find('}') else {
                errors.push(InterpolationError::Unterminated {
                    at: dollar..raw.len(),
                });
                out.value.push_str(&raw[dollar..]);
                return (out, errors);
            };
            let expr = &rest[1..close];
            let at = dollar..dollar + 1 + close + 1;
            let (name, default) = match expr.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (expr, None),
            };
            if !is_valid_name(name) {
                errors.push(InterpolationError::InvalidName {
                    expr: raw[at.clone()].to_owned(),
                    at: at.clone(),
                });
            } else {
                match (env(name), default) {
                    (Some(value), Some(default)) if value.is_empty() => out.value.push_str(default),
                    (Some(value), _) => {
                        out.value.push_str(&value);
                        out.from_env.push(value);
                    }
                    (None, Some(default)) => out.value.push_str(default),
                    (None, None) => errors.push(InterpolationError::Unset {
                        name: name.to_owned(),
                        at: at.clone(),
                    }),
                }
            }
            i = at.end;
        } else {
            out.value.push('$');
            i = dollar + 1;
        }
    }
    out.value.push_str(&raw[i..]);
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "USER" => Some("alice".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_variables_defaults_and_escapes() {
        let (out, errors) = interpolate("${USER}:${MISSING:-x}:${EMPTY:-y}:$$:$5:${EMPTY}", &env);
        assert!(errors.is_empty());
        assert_eq!(out.value, "alice:x:y:$:$5:");
        assert_eq!(out.from_env, vec!["alice".to_owned(), String::new()]);
    }

    #[test]
    fn reports_every_problem() {
        let (_, errors) = interpolate("${A} ${1B} ${USER", &env);
        assert_eq!(
            errors,
            vec![
                InterpolationError::Unset {
                    name: "A".into(),
                    at: 0..4
                },
                InterpolationError::InvalidName {
                    expr: "${1B}".into(),
                    at: 5..10
                },
                InterpolationError::Unterminated { at: 11..17 },
            ]
        );
    }
}
