//! The PostgreSQL connector of Lockstep: a source and a destination for the tables of one
//! schema, moving data with binary COPY in both directions.
//!
//! Reads are keyset-paged: one `COPY (SELECT ... ORDER BY key LIMIT n) TO STDOUT (FORMAT
//! binary)` per batch, decoded straight into Arrow builders ([`copy_decode`]). Writes COPY each
//! batch in binary, encoded from Arrow directly ([`copy_encode`]), into a session TEMP staging
//! table and upsert from there with one `INSERT ... ON CONFLICT` that reports inserted and
//! updated rows ([`write`](mod@write)).
//!
//! Invariants:
//! - Identifiers are always quoted; values never appear in SQL text (read positions travel as
//!   bound `set_config` parameters, batch data as binary COPY).
//! - Nothing is rounded, truncated or dropped silently: a value that the target cannot hold
//!   exactly is a rejected row (row, field, reason) or an error.
//! - Memory is bounded by the batch size: a read holds one batch, a write one batch plus a
//!   1 MiB COPY buffer.
//! - The URL's password never appears in errors or logs.
//! - Rows sharing a cursor value are neither skipped nor re-read forever: incremental reads
//!   order and resume by (cursor, key).
//! - A read by keys (`read-by-keys`) compares each key value as its column's type, and its
//!   statement does not grow with the number of keys.

pub mod catalog;
pub mod cdc;
pub mod config;
pub mod copy_decode;
pub mod copy_encode;
pub mod error;
mod key_reads;
pub mod numeric;
pub mod range_hash;
pub mod read;
pub mod session;
pub mod summary;
pub mod types;
pub mod write;

#[cfg(test)]
mod tests;

use lockstep_plugin_sdk::{Connector, Manifest};

pub use config::Config;
pub use read::{PgReader, PgSource};
pub use write::{PgDestination, PgWriter};

/// The connector: a [`PgSource`] and a [`PgDestination`].
pub struct PostgresConnector;

impl Connector for PostgresConnector {
    type Source = PgSource;
    type Destination = PgDestination;

    fn manifest() -> Manifest {
        Manifest {
            name: "postgres".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "PostgreSQL tables and views (views read-only), moved with binary COPY"
                .into(),
            features: lockstep_sql_kit::TABLE_FEATURES
                .into_iter()
                .chain([
                    "lookback",
                    lockstep_plugin_sdk::protocol::FEATURE_READ_BY_KEYS,
                    lockstep_plugin_sdk::protocol::FEATURE_KEY_SUMMARY,
                    lockstep_plugin_sdk::protocol::FEATURE_RANGE_HASH,
                    lockstep_plugin_sdk::protocol::FEATURE_CDC,
                    lockstep_plugin_sdk::protocol::FEATURE_CDC_DROP,
                ])
                .map(String::from)
                .collect(),
        }
    }
}

lockstep_plugin_sdk::export_connector!(PostgresConnector);
