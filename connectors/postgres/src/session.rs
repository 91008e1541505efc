//! The control connection a source or destination keeps for checks and metadata.

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::{Catalog, ConnectorError, Result};
use sqlx::PgConnection;

use crate::catalog::{load_tables, schema_exists, Table};
use crate::config::{Config, Settings};
use crate::error::map_sqlx;

/// Settings plus one lazily (re)opened connection.
pub struct Session {
    pub settings: Settings,
    conn: Option<PgConnection>,
}

impl Session {
    /// Checks the config and connects, so that bad URLs and credentials fail at once.
    pub async fn open(config: Config) -> Result<Self> {
        let mut settings = Settings::from_config(config)?;
        let mut conn = settings.connect().await?;
        settings
            .check_lookback(&mut conn)
            .await
            .map_err(|e| settings.scrub_error(e))?;
        Ok(Session {
            settings,
            conn: Some(conn),
        })
    }

    /// Ends the connection as the protocol asks (see [`crate::config::close`]).
    pub async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            crate::config::close(conn).await;
        }
    }

    async fn conn(&mut self) -> Result<&mut PgConnection> {
        if self.conn.is_none() {
            self.conn = Some(self.settings.connect().await?);
        }
        Ok(self.conn.as_mut().expect("set just above"))
    }

    /// Forgets the connection after a transient error, so the next call reconnects. Returns
    /// whether the call is worth one more try: it failed transiently on a connection that had
    /// been open before (the server may have dropped an idle session).
    fn after<T>(&mut self, result: &Result<T>, reused: bool) -> bool {
        match result {
            Err(e) if e.kind == ErrorKind::TRANSIENT => {
                self.conn = None;
                reused
            }
            _ => false,
        }
    }

    /// Checks that the server answers and the schema exists.
    pub async fn check(&mut self) -> Result<()> {
        let schema = self.settings.schema.clone();
        let display = self.settings.display_url.clone();
        loop {
            let reused = self.conn.is_some();
            let result = async {
                let conn = self.conn().await?;
                sqlx::query("SELECT 1")
                    .execute(&mut *conn)
                    .await
                    .map_err(map_sqlx)?;
                if !schema_exists(conn, &schema).await? {
                    return Err(ConnectorError::config(format!(
                        "schema `{schema}` does not exist in {display}; set `schema` to an \
                         existing one"
                    )));
                }
                Ok(())
            }
            .await;
            if !self.after(&result, reused) {
                return result.map_err(|e| self.settings.scrub_error(e));
            }
        }
    }

    /// Every table and view of the schema.
    pub async fn discover(&mut self) -> Result<Catalog> {
        let tables = self.tables(None).await?;
        Ok(Catalog {
            streams: tables.iter().map(Table::stream_info).collect(),
        })
    }

    /// The tables of the schema (only `only` when given).
    pub async fn tables(&mut self, only: Option<&str>) -> Result<Vec<Table>> {
        let schema = self.settings.schema.clone();
        let display = self.settings.display_url.clone();
        loop {
            let reused = self.conn.is_some();
            let result = async {
                let conn = self.conn().await?;
                let tables = load_tables(conn, &schema, only).await?;
                if tables.is_empty() && only.is_none() && !schema_exists(conn, &schema).await? {
                    return Err(ConnectorError::config(format!(
                        "schema `{schema}` does not exist in {display}"
                    )));
                }
                Ok(tables)
            }
            .await;
            if !self.after(&result, reused) {
                return result.map_err(|e| self.settings.scrub_error(e));
            }
        }
    }

    /// One table, or `None` when the schema has no such table or view.
    pub async fn table(&mut self, name: &str) -> Result<Option<Table>> {
        Ok(self.tables(Some(name)).await?.into_iter().next())
    }

    /// A schema error for an unknown stream, listing the streams there are.
    pub async fn unknown_stream(&mut self, name: &str) -> ConnectorError {
        let names = match self.tables(None).await {
            Ok(tables) => tables
                .iter()
                .map(|t| format!("`{}`", t.name))
                .collect::<Vec<_>>()
                .join(", "),
            Err(e) => return e,
        };
        ConnectorError::schema(format!(
            "stream `{name}` is not a table or view of schema `{}`; streams: {}",
            self.settings.schema,
            if names.is_empty() {
                "none".into()
            } else {
                names
            }
        ))
    }
}
