//! Durations as the config file writes them: `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`.

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

/// Parses a duration: one or more `<digits><unit>` parts with unit `ms`, `s`, `m`, `h` or `d`,
/// no spaces, e.g. `"500ms"`, `"30s"`, `"5m"`, `"2h"`, `"1d"`, `"1h30m"`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let error = || DurationError {
        input: input.to_owned(),
    };
    let mut rest = input;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(error());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(error());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| error())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let millis_per_unit: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(error()),
        };
        rest = &rest[unit_len..];
        let millis = number.checked_mul(millis_per_unit).ok_or_else(error)?;
        total = total
            .checked_add(Duration::from_millis(millis))
            .ok_or_else(error)?;
    }
    Ok(total)
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
    }

    #[test]
    fn rejects_other_forms_and_says_which_are_accepted() {
        for bad in [
            "",
            "5",
            "m",
            "5 m",
            "5min",
            "1.5h",
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
