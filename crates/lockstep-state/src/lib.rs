//! The state store of Lockstep: run history and metrics, source checkpoints, the record ledger,
//! rejected records, deletes waiting behind the mass-delete guard, the base ledger and conflicts
//! of two-way syncs, and the leases that keep two runs of one sync from overlapping. It has two backends behind the [`StateStore`] trait:
//! SQLite (embedded, the default) and PostgreSQL (shared by several daemons). [`open`] picks
//! one by URL and brings the schema up to date.
//!
//! Invariants:
//! - Only this crate talks to the state database; other crates go through [`StateStore`].
//! - A batch commit ([`StateStore::commit_batch`]) is one transaction: ledger changes, the new
//!   checkpoint, rejected records and run progress are written together or not at all.
//! - The fencing token of a lease is checked inside that transaction: a holder whose lease was
//!   taken over writes nothing. Tokens only grow, per sync (lease rows are never deleted).
//! - Both backends run the same SQL on logically identical schemas (`migrations/`), with
//!   quoted identifiers, `$N` parameters, RFC 3339 UTC text times and byte-order text keys;
//!   only the bulk statements differ (the ledger's in `ledger.rs`, the two-way ones in
//!   `two_way.rs`), each carrying a whole batch in a few parameters.
//! - No error or log line carries a database password: URLs are redacted first.

mod audit;
mod backend;
mod decide;
mod deletes;
mod error;
mod ledger;
mod postgres;
mod sql;
mod sqlite;
mod store;
mod two_way;
mod types;
mod url;

pub use audit::{Action, AuditStore, NewAction};
pub use decide::{decide, DecideError, TakeSide};
pub use deletes::{
    DeleteOrigin, DeleteStatus, PendingDeleteChange, PendingDeleteStore, PendingDeletes,
};
pub use error::{Result, StateError};
pub use store::StateStore;
pub use two_way::{
    BaseEntry, BaseFingerprints, Conflict, ConflictFilter, ConflictResolution, ConflictStatus,
    TwoWayCommit, TwoWayRejects, TwoWayStore,
};
pub use types::{
    hostname, BatchCommit, Lease, LeaseHolder, LedgerEntry, RejectedFilter, RejectedRecord, RunEnd,
};
pub use url::redact_url;

use url::Target;

/// Opens the state store at `url` and brings its schema up to date.
///
/// Accepted forms: `sqlite://path/to/state.db` (also `sqlite:path`; `sqlite:///abs/path` for
/// an absolute path), a plain file path, `sqlite::memory:` (for tests), and
/// `postgres://user:password@host:port/database` (or `postgresql://`). A SQLite file and its
/// directory are created when missing.
pub async fn open(url: &str) -> Result<Box<dyn StateStore>> {
    Ok(match Target::parse(url)? {
        Target::SqliteFile(path) => Box::new(sqlite::SqliteStore::open(Some(&path), url).await?),
        Target::SqliteMemory => Box::new(sqlite::SqliteStore::open(None, url).await?),
        Target::Postgres => Box::new(postgres::PgStore::open(url).await?),
    })
}
