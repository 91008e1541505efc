//! Tests against the real server.
