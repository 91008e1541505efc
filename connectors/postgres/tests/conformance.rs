//! Runs the Lockstep conformance kit against the PostgreSQL plugin `cargo test` just built,
//! reading from and writing to a live database of its own.

use lockstep_test_support::{cdylib_path, checks, Conformance, LiveDb, Server};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection};

#[tokio::test]
async fn the_plugin_passes_the_conformance_kit() {
    let Some(db) = LiveDb::create(Server::Postgres, "lockstep_pg_conf") else {
        return;
    };
    let mut conn = PgConnection::connect(&db.url()).await.unwrap();
    conn.execute(
        "CREATE TABLE contacts (id bigint PRIMARY KEY, name text NOT NULL, \
           score double precision, updated_at timestamptz NOT NULL); \
         INSERT INTO contacts SELECT g, 'contact ' || g || ', «ü»', g / 4.0, \
           '2024-01-01'::timestamptz + (g % 3) * interval '1 hour' \
         FROM generate_series(1, 7) g;",
    )
    .await
    .unwrap();
    conn.close().await.unwrap();

    let config = json!({ "url": db.url(), "schema": "public" });
    let report = Conformance::new(cdylib_path("lockstep_connector_postgres"))
        .source_config(config.clone())
        .stream("contacts")
        .cursor_field("updated_at")
        .bad_config(json!({ "url": 5 }))
        .bad_config(json!({ "url": db.url(), "shema": "public" }))
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
