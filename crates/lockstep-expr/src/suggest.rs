//! "Did you mean" suggestions by edit distance, shared by the config validator (unknown keys,
//! enum values, connection and time zone names) and the expression checks (function and type
//! names).
//!
//! Invariant: a suggestion is made only when it is a plausible typo: the same word in another
//! case, or at most a third of the longer word's length in edits (at least one edit).

/// The candidate closest to `word`, if one is close enough to be a plausible typo: a
/// case-insensitive match, or at most a third of the longer word's length in edits (at least
/// one). Ties go to the first candidate.
pub fn did_you_mean<'a, I>(word: &str, candidates: I) -> Option<&'a str>
where
    I: IntoIterator<Item = &'a str>,
{
    let lower = word.to_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_lowercase();
        let distance = strsim::levenshtein(&lower, &candidate_lower);
        let limit = (lower.chars().count().max(candidate_lower.chars().count()) / 3).max(1);
        if distance <= limit && best.is_none_or(|(best_distance, _)| distance < best_distance) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, candidate)| candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_only_close_candidates() {
        let keys = ["cursor", "source", "destination", "mode"];
        assert_eq!(did_you_mean("curser", keys), Some("cursor"));
        assert_eq!(did_you_mean("Mode", keys), Some("mode"));
        assert_eq!(did_you_mean("schedule", keys), None);
        assert_eq!(did_you_mean("lowr", ["lower", "upper"]), Some("lower"));
        assert_eq!(did_you_mean("x", ["lower", "upper"]), None);
    }
}
