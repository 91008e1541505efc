//! Errors of the state store.
//!
//! No variant ever holds a database URL with its password: URLs are redacted (see
//! [`crate::redact_url`]) before they are put in an error, and driver messages produced while
//! connecting are scrubbed of the URL's secrets.

use crate::types::LeaseHolder;

/// The result type of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;

/// What can go wrong in the state store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The state store URL is not one of the accepted forms.
    #[error(
        "the state store URL `{url}` is not usable: {reason}. Use `sqlite://path/to/state.db`, \
         a plain file path, or `postgres://user@host:port/database`"
    )]
    InvalidUrl {
        /// The URL without its userinfo or password parameters.
        url: String,
        reason: String,
    },

    /// The database could not be reached or opened.
    #[error(
        "cannot open the state store at `{url}`: {detail}. Check that the database server is \
         running and reachable and the credentials are right, or, for SQLite, that the \
         directory is writable"
    )]
    Connect {
        /// The URL without its userinfo or password parameters.
        url: String,
        /// The driver's message, scrubbed of the URL's secrets.
        detail: String,
    },

    /// The schema could not be brought up to date.
    #[error(
        "cannot migrate the state store at `{url}`: {detail}. If another Lockstep version \
         created this store, run the newest version against it; otherwise restore it from a \
         backup"
    )]
    Migrate {
        /// The URL without its userinfo or password parameters.
        url: String,
        detail: String,
    },

    /// Another process holds a live lease on the sync.
    #[error(
        "sync `{sync}` is already being run by {holder} (lease taken at {since}). Wait for that \
         run to end; if that process is gone, its lease expires on its own"
    )]
    LeaseHeld {
        sync: String,
        holder: LeaseHolder,
        since: String,
    },

    /// The caller's lease was taken over (or never existed): its token is no longer current.
    /// From a batch commit, the state store recorded nothing of the batch, though the
    /// destination may already hold its writes.
    #[error(
        "the lease on sync `{sync}` is no longer this run's: another holder took it over, so \
         the state store refused to record this run's work. If a batch was already written to \
         the destination, it is not recorded as done: the current holder re-reads from the last \
         committed checkpoint and writes it again, which is harmless because writes are upserts \
         by key. Stop this run"
    )]
    LeaseLost { sync: String },

    /// The run does not exist, or belongs to another sync.
    #[error(
        "run {run} does not exist in the state store for this sync; record it with `start_run` \
         before committing to it or finishing it"
    )]
    UnknownRun { run: i64 },

    /// The caller passed a value the store cannot accept.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A stored value could not be read back.
    #[error(
        "the state store holds an unreadable value ({0}). The store may have been edited by \
         hand or by another program; fix or delete that row"
    )]
    Corrupt(String),

    /// The database failed an operation.
    #[error(
        "the state database failed while {op}: {source}. Check that the database is \
         reachable and has free space, then retry"
    )]
    Database {
        /// What the store was doing, as a phrase ("committing a batch").
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
}

/// Returns a closure that wraps a driver error with what the store was doing.
pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> StateError {
    move |source| StateError::Database { op, source }
}
