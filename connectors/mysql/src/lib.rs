//! The MySQL / MariaDB connector of Lockstep: reads tables of one database (full or
//! incremental, in keyset pages) and writes them (create, evolve, upsert, delete).
//!
//! Invariants:
//! - Every session runs with `sql_mode` STRICT_ALL_TABLES (plus NO_ZERO_DATE and friends)
//!   and `time_zone = '+00:00'`: a value that does not fit its column is an error, never a
//!   silent truncation, and TIMESTAMP columns read and write in UTC. Values the server would
//!   still round silently (extra fractional seconds or decimal places, years before 1000)
//!   are refused before they are sent.
//! - Reads never use OFFSET: pages follow the key (full) or (cursor, key) (incremental)
//!   with row comparisons, so rows that share a cursor value are neither skipped nor re-read.
//!   A page holds at most `batch_size` rows. A read by keys binds every key value as its
//!   column's type, in chunks of bounded size.
//! - Identifiers are always quoted with backticks (embedded backticks doubled); values are
//!   always bound parameters of prepared statements.
//! - Writes of one stream run in one transaction from the first write after a flush to the
//!   next flush. A transaction lost to an error with writes in it makes the next flush fail.
//! - Passwords never appear in errors or logs.

mod catalog;
mod config;
mod error;
mod read;
mod session;
mod types;
mod write;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use lockstep_plugin_sdk::{
    export_connector, Catalog, Connector, Context, DestinationConnector, Manifest,
    OpenStreamRequest, ReadRequest, Result, SourceConnector,
};
use sqlx::mysql::MySqlConnection;
use sqlx::Executor;

pub use read::MySqlReader;
pub use write::MySqlWriter;

pub use config::{Config, DEFAULT_BATCH_SIZE};
use session::{Db, Flavor};

/// The connector.
pub struct MySqlConnector;

impl Connector for MySqlConnector {
    type Source = MySqlSource;
    type Destination = MySqlDestination;

    fn manifest() -> Manifest {
        Manifest {
            name: "mysql".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "MySQL 8 and MariaDB 10.5+ tables: full and incremental keyset reads, \
                          upserts, deletes, table creation and schema evolution"
                .into(),
            features: [
                "incremental",
                "lookback",
                lockstep_plugin_sdk::protocol::FEATURE_READ_BY_KEYS,
                "upsert",
                "delete",
                "create-stream",
                "schema-evolution",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
        }
    }
}

export_connector!(MySqlConnector);

/// What source and destination share: the parsed config and a lazily opened connection.
struct Shared {
    db: Arc<Db>,
    batch_size: usize,
    lookback_us: i64,
    conn: Option<(MySqlConnection, Flavor)>,
}

impl Shared {
    fn new(config: Config) -> Result<Self> {
        let lookback_us = match config.read.lookback.as_deref() {
            Some(text) => read::parse_lookback(text)?,
            None => 0,
        };
        if config.read.batch_size == Some(0) {
            return Err(lockstep_plugin_sdk::ConnectorError::config(
                "`batch_size` must be at least 1",
            ));
        }
        Ok(Shared {
            db: Arc::new(Db::from_config(&config)?),
            batch_size: config.read.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
            lookback_us,
            conn: None,
        })
    }

    /// Ends the control connection as the protocol asks (see [`session::close`]).
    async fn close(&mut self) {
        if let Some((conn, _)) = self.conn.take() {
            session::close(conn).await;
        }
        self.db.close_spare().await;
    }

    async fn conn(&mut self) -> Result<(&mut MySqlConnection, Flavor)> {
        if self.conn.is_none() {
            self.conn = Some(self.db.connect().await?);
        }
        let (conn, flavor) = self.conn.as_mut().expect("connected above");
        Ok((conn, *flavor))
    }

    /// Checks the server with a trivial query; a failed connection is dropped so that the
    /// next call reconnects.
    async fn check(&mut self) -> Result<()> {
        let db = Arc::clone(&self.db);
        let (conn, _) = self.conn().await?;
        let result = conn.execute("SELECT 1").await;
        if let Err(e) = result {
            self.conn = None;
            return Err(db.error(e, format!("checking {}", db.location)));
        }
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        let db = Arc::clone(&self.db);
        let (conn, flavor) = self.conn().await?;
        let result = catalog::catalog(&db, conn, flavor).await;
        if result.is_err() {
            self.conn = None;
        }
        result
    }
}

/// The source role.
pub struct MySqlSource {
    shared: Shared,
}

impl SourceConnector for MySqlSource {
    type Config = Config;
    type Reader = MySqlReader;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        Ok(MySqlSource {
            shared: Shared::new(config)?,
        })
    }

    async fn check(&mut self) -> Result<()> {
        self.shared.check().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.shared.discover().await
    }

    async fn close(&mut self) {
        self.shared.close().await;
    }

    async fn read(&mut self, request: ReadRequest) -> Result<MySqlReader> {
        let db = Arc::clone(&self.shared.db);
        let (conn, flavor) = self.shared.conn().await?;
        let table = match catalog::require_table(&db, conn, flavor, &request.stream).await {
            Ok(t) => t,
            Err(e) => {
                if e.kind == lockstep_plugin_sdk::api::ErrorKind::TRANSIENT {
                    self.shared.conn = None;
                }
                return Err(e);
            }
        };
        MySqlReader::open(
            db,
            table,
            request,
            self.shared.batch_size,
            self.shared.lookback_us,
        )
        .await
    }
}

/// The destination role.
pub struct MySqlDestination {
    shared: Shared,
}

impl DestinationConnector for MySqlDestination {
    type Config = Config;
    type Writer = MySqlWriter;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        Ok(MySqlDestination {
            shared: Shared::new(config)?,
        })
    }

    async fn check(&mut self) -> Result<()> {
        self.shared.check().await
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.shared.discover().await
    }

    async fn close(&mut self) {
        self.shared.close().await;
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<MySqlWriter> {
        MySqlWriter::open(Arc::clone(&self.shared.db), request).await
    }
}
