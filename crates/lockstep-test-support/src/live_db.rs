//! A database of its own for one test, on a live PostgreSQL or MariaDB/MySQL server.
//!
//! [`LiveDb::create`] makes a uniquely named database (`<prefix>_<pid>_<n>`) on the server
//! whose administration URL `LOCKSTEP_TEST_POSTGRES_URL` or `LOCKSTEP_TEST_MYSQL_URL` names
//! (by default the `test` database of PostgreSQL as user `postgres` and of MariaDB as
//! `root`, both on 127.0.0.1 with trust or empty passwords), and dropping the value drops the
//! database, even when the test fails.
//!
//! Invariants:
//! - A server that cannot be reached is not a pass: `create` calls
//!   [`skip_or_fail`](crate::skip::skip_or_fail) (a failure under CI, a recorded skip
//!   elsewhere) and returns `None`, and the test returns early.
//! - Every statement runs on a thread of its own with its own runtime, so the fixture works
//!   the same from synchronous tests and from inside a test's runtime (including `Drop`).
//! - Database names are quoted identifiers; no URL (it may hold a password) is printed.

use std::sync::atomic::{AtomicUsize, Ordering};

use sqlx::{Connection, Executor};

/// The kind of server a [`LiveDb`] lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    /// PostgreSQL.
    Postgres,
    /// MariaDB or MySQL.
    MySql,
}

impl Server {
    /// The URL of the database administration statements run in: `LOCKSTEP_TEST_POSTGRES_URL`
    /// or `LOCKSTEP_TEST_MYSQL_URL` (as the end-to-end tests read them), else the local
    /// server's `test` database.
    pub fn admin_url(self) -> String {
        let (var, default) = match self {
            Server::Postgres => (
                "LOCKSTEP_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            Server::MySql => (
                "LOCKSTEP_TEST_MYSQL_URL",
                "mysql://root@127.0.0.1:3306/test",
            ),
        };
        std::env::var(var).unwrap_or_else(|_| default.to_owned())
    }

    /// The server's URL without a database: the administration URL up to its last `/`.
    pub fn base_url(self) -> String {
        let admin = self.admin_url();
        match admin.rsplit_once('/') {
            Some((base, _)) if base.contains("://") && !base.ends_with('/') => base.to_owned(),
            _ => admin,
        }
    }

    /// The server's host and port, for messages (no user, no password).
    pub fn shown(self) -> String {
        let url = self.base_url();
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        rest.rsplit_once('@')
            .map_or(rest, |(_, host)| host)
            .to_owned()
    }

    fn name(self) -> &'static str {
        match self {
            Server::Postgres => "PostgreSQL",
            Server::MySql => "MariaDB/MySQL",
        }
    }

    fn quote(self, name: &str) -> String {
        match self {
            Server::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
            Server::MySql => format!("`{}`", name.replace('`', "``")),
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A database created for one test and dropped with this value.
#[derive(Debug)]
pub struct LiveDb {
    server: Server,
    name: String,
}

impl LiveDb {
    /// Creates a fresh database named `<prefix>_<pid>_<n>` on `server`, or records the
    /// skip (fails under CI) and returns `None` when the server cannot be reached.
    pub fn create(server: Server, prefix: &str) -> Option<LiveDb> {
        let name = format!(
            "{prefix}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let quoted = server.quote(&name);
        let statements = vec![
            format!("DROP DATABASE IF EXISTS {quoted}"),
            format!("CREATE DATABASE {quoted}"),
        ];
        match admin(server, statements) {
            Ok(()) => Some(LiveDb { server, name }),
            Err(e) => {
                crate::skip::skip_or_fail(format!(
                    "the {} server at {} is unreachable or refused to create a database ({e})",
                    server.name(),
                    server.shown()
                ));
                None
            }
        }
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server the database lives on.
    pub fn server(&self) -> Server {
        self.server
    }

    /// The URL of the database (it may carry the server's password: never print it).
    pub fn url(&self) -> String {
        format!("{}/{}", self.server.base_url(), self.name)
    }
}

impl Drop for LiveDb {
    fn drop(&mut self) {
        let quoted = self.server.quote(&self.name);
        let statement = match self.server {
            Server::Postgres => format!("DROP DATABASE IF EXISTS {quoted} WITH (FORCE)"),
            Server::MySql => format!("DROP DATABASE IF EXISTS {quoted}"),
        };
        if let Err(e) = admin(self.server, vec![statement]) {
            eprintln!(
                "NOTICE: could not drop the test database {}: {e}",
                self.name
            );
        }
    }
}

/// Runs `statements` on the server's administration connection, on a thread of its own.
fn admin(server: Server, statements: Vec<String>) -> Result<(), String> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        runtime.block_on(async move {
            let url = server.admin_url();
            match server {
                Server::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&url)
                        .await
                        .map_err(|e| e.to_string())?;
                    for s in &statements {
                        c.execute(s.as_str()).await.map_err(|e| e.to_string())?;
                    }
                }
                Server::MySql => {
                    let mut c = sqlx::MySqlConnection::connect(&url)
                        .await
                        .map_err(|e| e.to_string())?;
                    for s in &statements {
                        c.execute(s.as_str()).await.map_err(|e| e.to_string())?;
                    }
                }
            }
            Ok(())
        })
    })
    .join()
    .map_err(|_| "the administration thread panicked".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn databases_are_created_and_dropped_on_both_servers() {
        for server in [Server::Postgres, Server::MySql] {
            let Some(db) = LiveDb::create(server, "lockstep_live_db") else {
                continue;
            };
            let name = db.name().to_owned();
            assert!(exists(server, &name), "{name} exists after create");
            drop(db);
            assert!(!exists(server, &name), "{name} is gone after drop");
        }
    }

    fn exists(server: Server, name: &str) -> bool {
        let name = name.to_owned();
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async move {
                    let url = server.admin_url();
                    match server {
                        Server::Postgres => {
                            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
                            sqlx::query_scalar::<_, i64>(
                                "SELECT count(*) FROM pg_database WHERE datname = $1",
                            )
                            .bind(name)
                            .fetch_one(&mut c)
                            .await
                            .unwrap()
                                == 1
                        }
                        Server::MySql => {
                            let mut c = sqlx::MySqlConnection::connect(&url).await.unwrap();
                            sqlx::query_scalar::<_, i64>(
                                "SELECT COUNT(*) FROM information_schema.SCHEMATA \
                                 WHERE SCHEMA_NAME = ?",
                            )
                            .bind(name)
                            .fetch_one(&mut c)
                            .await
                            .unwrap()
                                == 1
                        }
                    }
                })
        })
        .join()
        .unwrap()
    }
}
