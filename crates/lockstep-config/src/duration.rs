//! Durations as the config file and the command line write them: `"500ms"`, `"30s"`, `"5m"`,
//! `"2h"`, `"1d"`, `"1h30m"`.
//!
//! Parsing is `humantime`'s, which also takes the longer unit names (`"5min"`, `"2hours"`,
//! `"1w"`) and fractions (`"1.5h"`). The one rule added here: a duration holds no whitespace, so that `"5 minutes"` reads
//! as the mistake it is in a config value rather than as a second form to document.

use std::time::Duration;

/// The accepted forms, for error messages.
pub const DURATION_FORMS: &str = "a whole number followed by a unit: ms, s, m, h or d \
     (e.g. \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\"); parts may be combined, as in \"1h30m\"";

/// A duration string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{input}`: expected {DURATION_FORMS}")]
pub struct DurationError {
    /// The text that was given.
    pub input: String,
}

/// Parses a duration: one or more `<digits><unit>` parts without spaces, e.g. `"500ms"`,
/// `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        input: input.to_owned(),
    };
    if input.is_empty() || input.chars().any(char::is_whitespace) {
        return Err(error());
    }
    humantime::parse_duration(input).map_err(|_| error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        // humantime's longer unit names and fractions are taken too.
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejects_other_forms_and_says_which_are_accepted() {
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "5 minutes",
            "-1s",
            "5m ",
            "99999999999999999999d",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert_eq!(err.input, bad);
            assert!(err.to_string().contains("ms, s, m, h or d"), "{err}");
        }
    }
}
