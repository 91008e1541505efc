//! What Lockstep's SQL connectors (PostgreSQL, MySQL/MariaDB, SQLite) share, after sqlx's
//! core/driver split: the SQL text they build alike, parameterised by a small [`Dialect`].
//!
//! - [`dialect`]: the [`Dialect`] trait (identifier quoting, placeholders, where NULL sorts,
//!   how a keyset cut is best written) and its three implementations.
//! - [`ddl`]: the body of a `CREATE TABLE` for an open-stream request.
//! - [`keys`]: a table's primary and unique keys, and whether they allow an upsert by a key.
//! - [`keyset`]: the predicate "strictly after (cursor, key)" of keyset paging.
//! - [`upsert`]: the `ON CONFLICT` action of an upsert by key.
//!
//! The connector-agnostic parts (the schema-evolution planner, the resolution of a read
//! request, checkpoints) live in the SDK, since file and API connectors need them too.
//!
//! Invariants:
//! - Depends on `lockstep-plugin-sdk` alone, so connectors that use it stay buildable out of
//!   tree.
//! - Identifiers are always quoted; values never appear in the SQL text this crate builds:
//!   they are placeholders or expressions the connector supplies.
//! - Builds text only: no I/O, no driver.

pub mod ddl;
pub mod dialect;
pub mod keys;
pub mod keyset;
pub mod upsert;

pub use dialect::{Dialect, MySqlDialect, PostgresDialect, SqliteDialect};
pub use keyset::{keyset_after, KeysetPredicate};
