//! Values placed in URL paths: an email or a list id becomes exactly one path segment.
//!
//! Invariant: every character that could end a segment or start a query or fragment (`/`,
//! `?`, `#`, `%`, spaces and the like) is percent-escaped, so a value never reaches another
//! endpoint. Mailman's WSGI server decodes `%2F` back to `/` before routing, though, so no
//! path names an address holding a `/`: the writer refuses to rename those, and finds
//! members through query parameters instead.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// What stays as it is: the characters of ordinary addresses and list ids.
const KEPT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'@')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'+');

/// `value` as one escaped path segment.
pub fn segment(value: &str) -> String {
    utf8_percent_encode(value, KEPT).to_string()
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn separators_are_escaped_and_addresses_kept() {
        assert_eq!(segment("ann+news@example.org"), "ann+news@example.org");
        assert_eq!(segment("a/b?c#d e%@x.org"), "a%2Fb%3Fc%23d%20e%25@x.org");
    }
}
