//! sqlx errors to connector errors, by SQLSTATE class.

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::ConnectorError;
use sqlx::postgres::PgDatabaseError;

/// The error kind a SQLSTATE stands for.
pub fn kind_of_sqlstate(code: &str) -> ErrorKind {
    match code {
        "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03" | "57014" => ErrorKind::TRANSIENT,
        "3D000" | "3F000" => ErrorKind::CONFIG,
        _ if code.starts_with("08") || code.starts_with("53") => ErrorKind::TRANSIENT,
        _ if code.starts_with("28") => ErrorKind::AUTH,
        _ if code.starts_with("42") || code.starts_with("22") || code.starts_with("23") => {
            ErrorKind::SCHEMA
        }
        _ => ErrorKind::INTERNAL,
    }
}

/// Whether a SQLSTATE says the data of a row was refused (as opposed to the statement or the
/// connection failing): such errors are narrowed down to rows and reported as rejected.
pub fn is_data_error(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

/// The SQLSTATE of a database error, if `e` is one.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A database error's message with its detail and hint, for people.
pub fn db_message(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<PgDatabaseError>() {
            Some(pg) => {
                let mut m = format!("{} (SQLSTATE {})", pg.message(), pg.code());
                if let Some(detail) = pg.detail() {
                    m.push_str("; ");
                    m.push_str(detail);
                }
                if let Some(hint) = pg.hint() {
                    m.push_str("; hint: ");
                    m.push_str(hint);
                }
                m
            }
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}

/// Maps any sqlx error to a connector error of the right kind.
pub fn map_sqlx(e: sqlx::Error) -> ConnectorError {
    let kind = match &e {
        sqlx::Error::Database(db) => db
            .code()
            .map(|c| kind_of_sqlstate(&c))
            .unwrap_or(ErrorKind::INTERNAL),
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ErrorKind::TRANSIENT
        }
        // A connection that broke mid-message shows up as a protocol error.
        sqlx::Error::Protocol(_) => ErrorKind::TRANSIENT,
        sqlx::Error::Tls(_) | sqlx::Error::Configuration(_) => ErrorKind::CONFIG,
        _ => ErrorKind::INTERNAL,
    };
    let mut message = db_message(&e);
    match kind {
        ErrorKind::TRANSIENT => message.push_str(" (a retry may succeed)"),
        ErrorKind::AUTH => message.push_str(" (check the user name and the password)"),
        _ => {}
    }
    if matches!(e, sqlx::Error::Tls(_)) {
        message.push_str(" (check `sslmode` and `sslrootcert` in the URL)");
    }
    ConnectorError::new(kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_map_to_kinds() {
        for (code, kind) in [
            ("08006", ErrorKind::TRANSIENT),
            ("57P01", ErrorKind::TRANSIENT),
            ("57P03", ErrorKind::TRANSIENT),
            ("53300", ErrorKind::TRANSIENT),
            ("40001", ErrorKind::TRANSIENT),
            ("40P01", ErrorKind::TRANSIENT),
            ("28P01", ErrorKind::AUTH),
            ("28000", ErrorKind::AUTH),
            ("3D000", ErrorKind::CONFIG),
            ("42P01", ErrorKind::SCHEMA),
            ("42703", ErrorKind::SCHEMA),
            ("XX000", ErrorKind::INTERNAL),
        ] {
            assert_eq!(kind_of_sqlstate(code), kind, "{code}");
        }
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(map_sqlx(io).kind, ErrorKind::TRANSIENT);
    }
}
