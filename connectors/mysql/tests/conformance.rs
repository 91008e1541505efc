//! Runs the Lockstep conformance kit against the MySQL/MariaDB plugin `cargo test` just
//! built, reading from and writing to a live database of its own.

use lockstep_test_support::{cdylib_path, checks, Conformance, LiveDb, Server};
use serde_json::json;
use sqlx::{Connection, Executor, MySqlConnection};

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let Some(db) = LiveDb::create(Server::MySql, "lockstep_my_conf") else {
        return;
    };
    let mut conn = MySqlConnection::connect(&db.url()).await.unwrap();
    conn.execute(
        "CREATE TABLE contacts (id BIGINT PRIMARY KEY, name VARCHAR(100) NOT NULL, \
           score DOUBLE, updated_at DATETIME(6) NOT NULL) \
           CHARACTER SET utf8mb4",
    )
    .await
    .unwrap();
    for id in 1..=7 {
        sqlx::query(
            "INSERT INTO contacts VALUES (?, ?, ?, TIMESTAMP('2024-01-01') + INTERVAL ? HOUR)",
        )
        .bind(id)
        .bind(format!("contact {id}, «ü»"))
        .bind(id as f64 / 4.0)
        .bind(id % 3)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    conn.close().await.unwrap();

    let config = json!({ "url": db.url() });
    let report = Conformance::new(cdylib_path("lockstep_connector_mysql"))
        .source_config(config.clone())
        .stream("contacts")
        .cursor_field("updated_at")
        .bad_config(json!({ "url": 5 }))
        .bad_config(json!({ "url": "postgres://127.0.0.1/db" }))
        .destination_config(config)
        .run()
        .await
        .assert_passed();
    println!("{report}");
    for name in [
        checks::SOURCE_FULL_READ,
        checks::SOURCE_RESUME_FULL,
        checks::SOURCE_RESUME_INCREMENTAL,
        checks::DESTINATION_READ_BACK,
        checks::DESTINATION_UPSERT_AGAIN,
        checks::DESTINATION_DELETE,
    ] {
        let check = report
            .check(name)
            .unwrap_or_else(|| panic!("{name} ran\n{report}"));
        assert!(check.passed(), "{name}: {:?}\n{report}", check.outcome);
    }
}
