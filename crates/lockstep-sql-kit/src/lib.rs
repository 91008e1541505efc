//! What Lockstep's SQL connectors (PostgreSQL, MySQL/MariaDB, SQLite) share, after sqlx's
//! core/driver split: the SQL text they build alike, parameterised by a small [`Dialect`],
//! and what their readers share besides (config settings, Arrow column builders).
//!
//! - [`columns`]: one Arrow column builder per logical type, for readers that decode rows
//!   value by value.
//! - [`config`]: the read settings (`batch_size`, `lookback`) that the connectors' configs
//!   flatten in.
//! - [`dialect`]: the [`Dialect`] trait (identifier quoting, placeholders, where NULL sorts,
//!   how a keyset cut is best written) and its three implementations.
//! - [`ddl`]: the body of a `CREATE TABLE` for an open-stream request.
//! - [`keys`]: a table's primary and unique keys, and whether they allow an upsert by a key.
//! - [`keyset`]: the predicate "strictly after (cursor, key)" of keyset paging.
//! - [`range_hash`]: the queries of range hashes (`range-hash`, verify's pushdown).
//! - [`upsert`]: the `ON CONFLICT` action of an upsert by key.
//!
//! The connector-agnostic parts (the schema-evolution planner, the resolution of a read
//! request, checkpoints) live in the SDK, since file and API connectors need them too.
//!
//! Invariants:
//! - Depends on `lockstep-plugin-sdk` alone among Lockstep's crates (and on serde for a
//!   derive), so connectors that use it stay buildable out of tree.
//! - Identifiers are always quoted; values never appear in the SQL text this crate builds:
//!   they are placeholders or expressions the connector supplies.
//! - Builds text and Arrow columns only: no I/O, no driver.

pub mod columns;
pub mod config;
pub mod ddl;
pub mod dialect;
pub mod keys;
pub mod keyset;
pub mod range_hash;
pub mod upsert;

pub use columns::ColumnBuilder;
pub use config::{describe_read_config, ReadConfig, DEFAULT_BATCH_SIZE};
pub use dialect::{Dialect, MySqlDialect, PostgresDialect, SqliteDialect};
pub use keyset::{keyset_after, KeysetPredicate};

/// The manifest features that this kit's parts give a SQL connector, first in its manifest:
/// incremental keyset reads ([`keyset`]), upserts and deletes by key ([`upsert`], [`keys`])
/// and creating tables ([`ddl`]).
pub const TABLE_FEATURES: [&str; 4] = ["incremental", "upsert", "delete", "create-stream"];
