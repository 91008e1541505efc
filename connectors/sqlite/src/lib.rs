//! The SQLite connector of Lockstep: reads tables of a SQLite file as streams and writes
//! streams into tables, as a cdylib plugin built on `lockstep-plugin-sdk`.
//!
//! One type, [`SqliteConnector`], plays both roles. A source opens the file read-only and
//! never creates it; a destination opens it in WAL mode with `synchronous = FULL` and a 5 s
//! busy timeout, creating it unless told not to.
//!
//! Invariants:
//! - Reads use keyset pagination on a total order (cursor, key, tie-breaker), never OFFSET;
//!   a checkpoint holds the last row's stored values, so a resumed read neither skips nor
//!   repeats rows, and memory is bounded by the batch size.
//! - A stored value that does not parse as its column's logical type is a schema error naming
//!   the table, column, key and value, never a NULL.
//! - A table the connector creates discovers back to the logical types it was created with.
//! - Writes happen in one transaction per flush; nothing is committed before `flush`.
//! - Identifiers are always quoted; values are always bound parameters.

mod catalog;
mod config;
mod convert;
mod error;
mod read;
mod types;
mod values;
mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use lockstep_plugin_sdk::{
    Catalog, Connector, Context, DestinationConnector, Manifest, OpenStreamRequest, ReadRequest,
    Result, SourceConnector,
};
use sqlx::sqlite::SqliteConnection;
use tokio::sync::Mutex;

pub use config::SqliteConfig;
pub use read::SqliteReader;
pub use write::SqliteWriter;

use config::Role;

/// The connection of one connector instance and whether a write transaction is open on it.
pub(crate) struct State {
    pub(crate) conn: SqliteConnection,
    pub(crate) in_transaction: bool,
}

/// The connection, shared by an instance and the readers and writers it hands out.
pub(crate) type Shared = Arc<Mutex<State>>;

/// A connection to one SQLite database file, as a source or a destination.
pub struct SqliteConnector {
    shared: Shared,
    config: SqliteConfig,
}

impl SqliteConnector {
    async fn open_as(config: SqliteConfig, role: Role) -> Result<Self> {
        let conn = config.connect(role).await?;
        Ok(Self {
            shared: Arc::new(Mutex::new(State {
                conn,
                in_transaction: false,
            })),
            config,
        })
    }

    /// Opens `config`'s database as a source (read-only; the file must exist).
    pub async fn open_source(config: SqliteConfig) -> Result<Self> {
        Self::open_as(config, Role::Source).await
    }

    /// Opens `config`'s database as a destination (created when missing, by default).
    pub async fn open_destination(config: SqliteConfig) -> Result<Self> {
        Self::open_as(config, Role::Destination).await
    }

    /// Checks that the file is a readable SQLite database.
    pub async fn check_database(&mut self) -> Result<()> {
        let mut state = self.shared.lock().await;
        sqlx::query("SELECT count(*) FROM sqlite_master")
            .execute(&mut state.conn)
            .await
            .map_err(error::db_error("checking the SQLite database"))?;
        Ok(())
    }

    /// Checks that the database takes writes: takes the write lock and lets it go.
    pub async fn check_writable(&mut self) -> Result<()> {
        let mut state = self.shared.lock().await;
        if state.in_transaction {
            return Ok(());
        }
        for statement in ["BEGIN IMMEDIATE", "ROLLBACK"] {
            sqlx::query(statement)
                .execute(&mut state.conn)
                .await
                .map_err(error::db_error(
                    "checking that the SQLite database takes writes",
                ))?;
        }
        Ok(())
    }

    /// The streams: every ordinary table, with its columns, key and cursor candidates.
    pub async fn catalog(&mut self) -> Result<Catalog> {
        let mut state = self.shared.lock().await;
        catalog::catalog(&mut state.conn).await
    }

    /// Starts reading one table.
    pub async fn start_read(&mut self, request: ReadRequest) -> Result<SqliteReader> {
        read::open_reader(self.shared.clone(), request, self.config.batch_size()?).await
    }

    /// Prepares one table for writing.
    pub async fn start_write(&mut self, request: OpenStreamRequest) -> Result<SqliteWriter> {
        write::open_writer(self.shared.clone(), request, self.config.batch_size()?).await
    }
}

impl Connector for SqliteConnector {
    type Source = SqliteConnector;
    type Destination = SqliteConnector;

    fn manifest() -> Manifest {
        Manifest {
            name: "sqlite".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Tables of a SQLite database file, as a source and as a destination."
                .into(),
            features: lockstep_sql_kit::TABLE_FEATURES
                .into_iter()
                .chain([
                    "add-columns",
                    lockstep_plugin_sdk::protocol::FEATURE_READ_BY_KEYS,
                ])
                .map(String::from)
                .collect(),
        }
    }
}

impl SourceConnector for SqliteConnector {
    type Config = SqliteConfig;
    type Reader = SqliteReader;

    async fn open(config: SqliteConfig, _ctx: Context) -> Result<Self> {
        Self::open_source(config).await
    }

    async fn check(&mut self) -> Result<()> {
        self.check_database().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn read(&mut self, request: ReadRequest) -> Result<SqliteReader> {
        self.start_read(request).await
    }
}

impl DestinationConnector for SqliteConnector {
    type Config = SqliteConfig;
    type Writer = SqliteWriter;

    async fn open(config: SqliteConfig, _ctx: Context) -> Result<Self> {
        Self::open_destination(config).await
    }

    async fn check(&mut self) -> Result<()> {
        self.check_database().await?;
        self.check_writable().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.catalog().await
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<SqliteWriter> {
        self.start_write(request).await
    }
}

lockstep_plugin_sdk::export_connector!(SqliteConnector);
