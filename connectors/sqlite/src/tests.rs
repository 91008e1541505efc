//! Tests of the connector against real SQLite files, one temporary directory per test.

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::{Array, AsArray, RecordBatch};
use lockstep_plugin_sdk::arrow::datatypes::Int64Type;
use lockstep_plugin_sdk::rows::{batch_from_rows, rows_from_batch};
use lockstep_plugin_sdk::{
    block_on, BatchReader, ConnectorError, DataType, FieldInfo, OpenStreamRequest, ReadMode,
    ReadRequest, SchemaEvolution, StreamWriter, WriteOutcome,
};
use serde_json::{json, Map, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection};
use tempfile::TempDir;

use crate::{SqliteConfig, SqliteConnector};

// ---- Helpers ------------------------------------------------------------------------------

/// A fresh directory and the path of a database file inside it.
fn temp_db() -> (TempDir, String) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("test.db").to_string_lossy().into_owned();
    (dir, path)
}

/// Runs setup SQL on the file through a connection of its own (creating the file).
async fn setup(path: &str, statements: &[&str]) {
    let mut conn: SqliteConnection = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .expect("open the test database");
    for s in statements {
        sqlx::query(s)
            .execute(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    conn.close().await.expect("close");
}

async fn source(path: &str) -> SqliteConnector {
    SqliteConnector::open_source(SqliteConfig::for_path(path))
        .await
        .expect("open source")
}

async fn destination(path: &str) -> SqliteConnector {
    SqliteConnector::open_destination(SqliteConfig::for_path(path))
        .await
        .expect("open destination")
}

fn field(name: &str, data_type: DataType, nullable: bool) -> FieldInfo {
    FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: None,
    }
}

fn rows(values: Value) -> Vec<Map<String, Value>> {
    values
        .as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| r.as_object().expect("a row object").clone())
        .collect()
}

fn batch(fields: &[FieldInfo], values: Value) -> RecordBatch {
    batch_from_rows(fields, &rows(values)).expect("a valid test batch")
}

fn full(stream: &str, batch_size: usize) -> ReadRequest {
    ReadRequest {
        stream: stream.into(),
        batch_size: Some(batch_size),
        ..ReadRequest::default()
    }
}

fn incremental(
    stream: &str,
    cursor: &str,
    batch_size: usize,
    checkpoint: Option<Value>,
) -> ReadRequest {
    ReadRequest {
        stream: stream.into(),
        mode: ReadMode::Incremental,
        cursor_field: Some(cursor.into()),
        batch_size: Some(batch_size),
        checkpoint,
        ..ReadRequest::default()
    }
}

/// Every batch of a read, with its checkpoint.
async fn read_all(conn: &mut SqliteConnector, request: ReadRequest) -> Vec<(RecordBatch, Value)> {
    let mut reader = conn.start_read(request).await.expect("start read");
    let mut out = Vec::new();
    while let Some(b) = reader.next_batch().await.expect("next batch") {
        out.push(b);
    }
    out
}

async fn read_err(conn: &mut SqliteConnector, request: ReadRequest) -> ConnectorError {
    let mut reader = match conn.start_read(request).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    loop {
        match reader.next_batch().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the read succeeded"),
            Err(e) => return e,
        }
    }
}

/// The values of int64 column `name` across batches.
fn ints(batches: &[(RecordBatch, Value)], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|(b, _)| {
            let column = b.column_by_name(name).expect("the column").clone();
            let values = column.as_primitive::<Int64Type>().clone();
            (0..values.len()).map(move |i| values.value(i))
        })
        .collect()
}

fn open_request(stream: &str, fields: &[FieldInfo], key: &[&str]) -> OpenStreamRequest {
    OpenStreamRequest {
        stream: stream.into(),
        fields: fields.to_vec(),
        key: key.iter().map(|k| k.to_string()).collect(),
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

fn counts(o: &WriteOutcome) -> (u64, u64, u64) {
    (
        o.inserted.unwrap(),
        o.updated.unwrap(),
        o.unchanged.unwrap(),
    )
}

// ---- Discovery ----------------------------------------------------------------------------

#[test]
fn discover_maps_declared_types_keys_and_cursor_candidates() {
    block_on(async {
        let (_dir, path) = temp_db();
        setup(
            &path,
            &[
                "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(50) NOT NULL, \
                 price NUMERIC(10,2), qty INT, ok BOOLEAN, ratio REAL, data BLOB, born DATE, \
                 at TIME, created DATETIME, updated_at TIMESTAMP, seen TIMESTAMPTZ, uid UUID, \
                 doc JSON, misc, big BIGINT, f DOUBLE, c CHAR(2), cl CLOB, \
                 z TIMESTAMP WITH TIME ZONE, d DECIMAL(38,10))",
                "CREATE TABLE pairs (a TEXT, b INTEGER, v TEXT, PRIMARY KEY (a, b)) WITHOUT ROWID",
                "CREATE TABLE counters (id INTEGER PRIMARY KEY AUTOINCREMENT, n INT)",
                "INSERT INTO counters (n) VALUES (1)",
                "CREATE VIEW a_view AS SELECT 1 AS one",
                "CREATE TABLE loose (k TEXT PRIMARY KEY, v TEXT)",
            ],
        )
        .await;
        let mut conn = source(&path).await;
        let catalog = conn.catalog().await.unwrap();
        let names: Vec<&str> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["counters", "items", "loose", "pairs"],
            "sqlite_* and views are left out"
        );

        let items = catalog.stream("items").unwrap();
        let expected = [
            ("id", DataType::Int64, false),
            ("name", DataType::Text, false),
            (
                "price",
                DataType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                true,
            ),
            ("qty", DataType::Int64, true),
            ("ok", DataType::Boolean, true),
            ("ratio", DataType::Float64, true),
            ("data", DataType::Binary, true),
            ("born", DataType::Date, true),
            ("at", DataType::Time, true),
            ("created", DataType::Timestamp, true),
            ("updated_at", DataType::Timestamp, true),
            ("seen", DataType::TimestampTz, true),
            ("uid", DataType::Uuid, true),
            ("doc", DataType::Json, true),
            ("misc", DataType::Text, true),
            ("big", DataType::Int64, true),
            ("f", DataType::Float64, true),
            ("c", DataType::Text, true),
            ("cl", DataType::Text, true),
            ("z", DataType::TimestampTz, true),
            (
                "d",
                DataType::Decimal {
                    precision: 38,
                    scale: 10,
                },
                true,
            ),
        ];
        let got: Vec<(&str, DataType, bool)> = items
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.data_type, f.nullable))
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            items.field("price").unwrap().native_type.as_deref(),
            Some("NUMERIC(10,2)")
        );
        assert_eq!(items.primary_key, ["id"]);
        assert_eq!(
            items.cursor_candidates,
            ["updated_at", "created", "seen", "z", "id"]
        );

        let pairs = catalog.stream("pairs").unwrap();
        assert_eq!(pairs.primary_key, ["a", "b"]);
        assert!(
            !pairs.field("a").unwrap().nullable,
            "WITHOUT ROWID keys are NOT NULL"
        );
        let loose = catalog.stream("loose").unwrap();
        assert!(
            loose.field("k").unwrap().nullable,
            "a TEXT key of a rowid table allows NULL"
        );
    });
}

// ---- Full reads ---------------------------------------------------------------------------

#[test]
fn full_read_comes_in_batches_and_resumes_after_a_checkpoint() {
    block_on(async {
        let (_dir, path) = temp_db();
        let mut statements = vec![
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, grp INT)".to_string(),
            "CREATE TABLE log (msg TEXT)".to_string(),
        ];
        for i in 1..=25 {
            statements.push(format!(
                "INSERT INTO t VALUES ({}, 'n{i}', {})",
                i * 3,
                i % 4
            ));
            statements.push(format!("INSERT INTO log VALUES ('m{i}')"));
        }
        let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
        setup(&path, &refs).await;
        let mut conn = source(&path).await;

        let batches = read_all(&mut conn, full("t", 10)).await;
        let sizes: Vec<usize> = batches.iter().map(|(b, _)| b.num_rows()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        assert_eq!(
            ints(&batches, "id"),
            (1..=25).map(|i| i * 3).collect::<Vec<_>>()
        );
        assert_eq!(batches[0].1, json!({"key": [30]}));
        assert_eq!(batches[2].1, json!({"key": [75]}));

        // Resuming after the first checkpoint reads the other 15 rows, once each.
        let mut request = full("t", 10);
        request.checkpoint = Some(batches[0].1.clone());
        let rest = read_all(&mut conn, request).await;
        assert_eq!(
            ints(&rest, "id"),
            (11..=25).map(|i| i * 3).collect::<Vec<_>>()
        );

        // Restricting the fields keeps the ordering and the checkpoints.
        let mut request = full("t", 10);
        request.fields = Some(vec!["name".into()]);
        let named = read_all(&mut conn, request).await;
        assert_eq!(named[0].0.num_columns(), 1);
        assert_eq!(named[0].0.schema().field(0).name(), "name");
        assert_eq!(named[0].1, json!({"key": [30]}));

        // Names match ignoring ASCII case, as in SQL; batches keep the table's spelling.
        let mut request = full("T", 10);
        request.fields = Some(vec!["NAME".into()]);
        request.key = vec!["Id".into()];
        let named = read_all(&mut conn, request).await;
        assert_eq!(named[0].0.schema().field(0).name(), "name");
        assert_eq!(named[0].1, json!({"key": [30]}));

        // A key that is not unique gets the primary key as tie-breaker: nothing is lost.
        let mut request = full("t", 4);
        request.key = vec!["grp".into()];
        let by_group = read_all(&mut conn, request).await;
        let mut seen = ints(&by_group, "id");
        assert_eq!(by_group[0].1, json!({"key": [0], "tiebreak": [48]}));
        seen.sort();
        assert_eq!(seen, (1..=25).map(|i| i * 3).collect::<Vec<_>>());

        // A table without a primary key is read in rowid order, the rowid as key.
        let logs = read_all(&mut conn, full("log", 10)).await;
        assert_eq!(logs.iter().map(|(b, _)| b.num_rows()).sum::<usize>(), 25);
        assert_eq!(logs[0].1, json!({"key": [10]}));
        let mut request = full("log", 10);
        request.checkpoint = Some(logs[1].1.clone());
        let tail = read_all(&mut conn, request).await;
        let first = rows_from_batch(&tail[0].0);
        assert_eq!(first[0]["msg"], json!("m21"));

        // A key that may hold NULL (a TEXT primary key of a rowid table) is not a total
        // order either: the rowid breaks ties between the NULLs.
        setup(
            &path,
            &[
                "CREATE TABLE loose (k TEXT PRIMARY KEY, v INT)",
                "INSERT INTO loose VALUES (NULL, 1), ('b', 2), (NULL, 3), ('a', 4), (NULL, 5), \
                 (NULL, 6), ('c', 7)",
            ],
        )
        .await;
        let loose = read_all(&mut conn, full("loose", 2)).await;
        assert_eq!(ints(&loose, "v"), [1, 3, 5, 6, 4, 2, 7]);
        assert_eq!(loose[0].1, json!({"key": [null], "tiebreak": [3]}));

        // The config's batch size caps the request's.
        let mut capped = SqliteConfig::for_path(&path);
        capped.batch_size = Some(7);
        let mut capped = SqliteConnector::open_source(capped).await.unwrap();
        let sizes: Vec<usize> = read_all(&mut capped, full("t", 100))
            .await
            .iter()
            .map(|(b, _)| b.num_rows())
            .collect();
        assert_eq!(sizes, [7, 7, 7, 4]);

        // Unknown streams and fields are schema errors that list what exists.
        let e = read_err(&mut conn, full("nope", 10)).await;
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("log, loose, t"), "{}", e.message);
        let mut request = full("t", 10);
        request.fields = Some(vec!["nope".into()]);
        let e = read_err(&mut conn, request).await;
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("`id`, `name`, `grp`"), "{}", e.message);
    });
}

// ---- Incremental reads --------------------------------------------------------------------

#[test]
fn incremental_read_neither_skips_nor_repeats_rows_sharing_a_cursor() {
    block_on(async {
        let (_dir, path) = temp_db();
        let mut statements = vec![
            "CREATE TABLE events (id INTEGER PRIMARY KEY, updated_at TIMESTAMP, v INT)".to_string(),
        ];
        // 4 rows without a cursor value, 10 at t1, 23 at t2 (more than a batch), 5 at t3.
        let mut id = 100;
        let mut push = |at: Option<&str>, n: usize| {
            for _ in 0..n {
                // Ids go down while time goes up, so the cursor order differs from the key's.
                id -= 1;
                let at = at.map_or("NULL".to_string(), |a| format!("'{a}'"));
                statements.push(format!("INSERT INTO events VALUES ({id}, {at}, 0)"));
            }
        };
        push(None, 4);
        push(Some("2024-05-01 10:00:00"), 10);
        push(Some("2024-05-01 10:00:00.5"), 23);
        push(Some("2024-05-02 08:00:00"), 5);
        let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
        setup(&path, &refs).await;
        let mut conn = source(&path).await;

        let batches = read_all(&mut conn, incremental("events", "updated_at", 7, None)).await;
        let ids = ints(&batches, "id");
        assert_eq!(ids.len(), 42, "every row once");
        let mut unique = ids.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 42, "no row twice");
        // Within a cursor value, rows come in key order; the NULL cursors come first.
        assert_eq!(&ids[..4], &[96, 97, 98, 99]);
        assert_eq!(
            batches[0].1,
            json!({"cursor": "2024-05-01 10:00:00", "key": [88]})
        );
        // Resuming after a row without a cursor value reads the rest of them, then the others.
        let after_null = read_all(
            &mut conn,
            incremental(
                "events",
                "updated_at",
                5,
                Some(json!({"cursor": null, "key": [97]})),
            ),
        )
        .await;
        assert_eq!(ints(&after_null, "id"), ids[2..]);
        // Batch 3 ends inside the group of 23 rows at t2.
        assert_eq!(batches[2].1["cursor"], json!("2024-05-01 10:00:00.5"));

        // Resuming from inside the group reads exactly the rows after it.
        for (i, (_, checkpoint)) in batches.iter().enumerate() {
            let rest = read_all(
                &mut conn,
                incremental("events", "updated_at", 7, Some(checkpoint.clone())),
            )
            .await;
            let consumed = batches[..=i]
                .iter()
                .map(|(b, _)| b.num_rows())
                .sum::<usize>();
            assert_eq!(ints(&rest, "id"), ids[consumed..], "after batch {i}");
        }

        // Changes after the last checkpoint, and only those, come next time.
        let last = batches.last().unwrap().1.clone();
        setup(
            &path,
            &["UPDATE events SET updated_at = '2024-05-03 00:00:00', v = 1 WHERE id IN (99, 80, 70)"],
        )
        .await;
        let changed = read_all(
            &mut conn,
            incremental("events", "updated_at", 2, Some(last)),
        )
        .await;
        assert_eq!(ints(&changed, "id"), [70, 80, 99]);
        let done = changed.last().unwrap().1.clone();
        assert!(read_all(
            &mut conn,
            incremental("events", "updated_at", 2, Some(done))
        )
        .await
        .is_empty());

        // A checkpoint with a cursor only resumes at that cursor, inclusively.
        let at = read_all(
            &mut conn,
            incremental(
                "events",
                "updated_at",
                50,
                Some(json!({"cursor": "2024-05-02 08:00:00"})),
            ),
        )
        .await;
        assert_eq!(ints(&at, "id").len(), 8);

        // The integer primary key works as a cursor too.
        let by_id = read_all(
            &mut conn,
            incremental("events", "id", 10, Some(json!({"cursor": 90, "key": [90]}))),
        )
        .await;
        assert_eq!(ints(&by_id, "id"), (91..=99).collect::<Vec<_>>());

        // A full-read checkpoint does not fit an incremental read, and says so.
        let e = read_err(
            &mut conn,
            incremental("events", "updated_at", 7, Some(json!({"key": [1]}))),
        )
        .await;
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(e.message.contains("reset"), "{}", e.message);
        let mut no_cursor = incremental("events", "updated_at", 7, None);
        no_cursor.cursor_field = None;
        let e = read_err(&mut conn, no_cursor).await;
        assert!(e.message.contains("updated_at"), "{}", e.message);
    });
}

// ---- Round trip of every logical type -----------------------------------------------------

fn every_type_fields() -> Vec<FieldInfo> {
    vec![
        field("id", DataType::Int64, false),
        field("flag", DataType::Boolean, true),
        field("small", DataType::Int32, true),
        field("f32", DataType::Float32, true),
        field("f64", DataType::Float64, true),
        field(
            "price",
            DataType::Decimal {
                precision: 10,
                scale: 2,
            },
            true,
        ),
        field(
            "wide",
            DataType::Decimal {
                precision: 38,
                scale: 10,
            },
            true,
        ),
        field("label", DataType::Text, true),
        field("bytes", DataType::Binary, true),
        field("day", DataType::Date, true),
        field("clock", DataType::Time, true),
        field("local", DataType::Timestamp, true),
        field("instant", DataType::TimestampTz, true),
        field("uid", DataType::Uuid, true),
        field("doc", DataType::Json, true),
    ]
}

#[test]
fn created_tables_round_trip_every_logical_type() {
    block_on(async {
        let (_dir, path) = temp_db();
        let fields = every_type_fields();
        // Rows in key order, so that the batch read back equals the batch written.
        let written = batch(
            &fields,
            json!([
                {"id": i64::MIN, "flag": true, "small": i32::MIN, "f32": 1.5, "f64": -0.1,
                 "price": "-12.34", "wide": "-9999999999999999999999999999.9999999999",
                 "label": "Zoë 🚀 日本語 \"quoted\" 'single'", "bytes": "\\x00ff00",
                 "day": "2024-02-29", "clock": "23:59:59.999999",
                 "local": "2024-05-01T10:00:00.123456", "instant": "2024-05-01T10:00:00Z",
                 "uid": "550e8400-e29b-41d4-a716-446655440000",
                 "doc": {"a": [1, 2, {"b": null}], "n": 1.5, "s": "ü"}},
                {"id": -1, "flag": false, "small": 0, "f32": 0.0, "f64": 0.0, "price": "0.10",
                 "wide": "0.0000000001", "label": "", "bytes": "\\x", "day": "1970-01-01",
                 "clock": "00:00:00", "local": "1969-12-31T23:59:59.999999",
                 "instant": "1900-01-01T00:00:00Z", "uid": "00000000-0000-0000-0000-000000000000",
                 "doc": ""},
                {"id": 0},
                {"id": 1, "small": i32::MAX, "f64": 1.0e300, "price": "99999999.99",
                 "wide": "1234567890123456789012345678.1234567890", "label": "line\nbreak\ttab",
                 "doc": 12345678901234567890u64, "local": "9999-12-31T23:59:59.999999",
                 "instant": "2038-01-19T03:14:08.000001Z", "day": "0001-01-01"},
                {"id": i64::MAX, "doc": [], "label": "  padded  ", "f32": -3.4028235e38,
                 "price": "-0.01"},
            ]),
        );

        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request("every type", &fields, &["id"]))
            .await
            .unwrap();
        let outcome = writer.upsert(written.clone()).await.unwrap();
        assert_eq!(counts(&outcome), (5, 0, 0));
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
        writer.flush().await.unwrap();

        let mut src = source(&path).await;
        let catalog = src.catalog().await.unwrap();
        let stream = catalog.stream("every type").unwrap();
        let discovered: Vec<(String, DataType, bool)> = stream
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.data_type, f.nullable))
            .collect();
        let requested: Vec<(String, DataType, bool)> = fields
            .iter()
            .map(|f| (f.name.clone(), f.data_type, f.nullable))
            .collect();
        assert_eq!(discovered, requested);
        assert_eq!(stream.primary_key, ["id"]);

        let read = read_all(&mut src, full("every type", 100)).await;
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0.schema(), written.schema());
        for (i, name) in fields.iter().map(|f| &f.name).enumerate() {
            assert_eq!(
                read[0].0.column(i).to_data(),
                written.column(i).to_data(),
                "column {name}: {:?} vs {:?}",
                rows_from_batch(&read[0].0)
                    .iter()
                    .map(|r| r[name].clone())
                    .collect::<Vec<_>>(),
                rows_from_batch(&written)
                    .iter()
                    .map(|r| r[name].clone())
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(read[0].0, written);

        // Writing everything again changes nothing.
        let mut writer = dest
            .start_write(open_request("every type", &fields, &["id"]))
            .await
            .unwrap();
        let again = writer.upsert(written.clone()).await.unwrap();
        assert_eq!(counts(&again), (0, 0, 5));
        writer.flush().await.unwrap();
    });
}

// ---- Upserts, deletes and the transaction -------------------------------------------------

fn people_fields() -> Vec<FieldInfo> {
    vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Text, true),
        field(
            "score",
            DataType::Decimal {
                precision: 6,
                scale: 2,
            },
            true,
        ),
    ]
}

#[test]
fn upsert_counts_inserted_updated_and_unchanged_rows() {
    block_on(async {
        let (_dir, path) = temp_db();
        let fields = people_fields();
        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request("people", &fields, &["id"]))
            .await
            .unwrap();

        let first = writer
            .upsert(batch(
                &fields,
                json!([{"id": 1, "name": "Ann", "score": "1.50"}, {"id": 2, "name": "Bob"},
                       {"id": 3, "name": "Cy", "score": "3"}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&first), (3, 0, 0));

        // Nothing is visible to others before the flush: the writes are one transaction.
        let mut other = source(&path).await;
        assert!(read_all(&mut other, full("people", 10)).await.is_empty());

        let second = writer
            .upsert(batch(
                &fields,
                json!([{"id": 2, "name": "Bobby"}, {"id": 3, "name": "Cy", "score": "3.00"},
                       {"id": 4, "name": "Di"}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&second), (1, 1, 1), "3.00 equals the stored 3");

        // A key twice in one batch: inserted, then updated.
        let twice = writer
            .upsert(batch(
                &fields,
                json!([{"id": 5, "name": "E"}, {"id": 5, "name": "Eve"}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&twice), (1, 1, 0));

        // A batch with some of the columns leaves the others as they are.
        let partial_fields = vec![
            field("id", DataType::Int64, false),
            field(
                "score",
                DataType::Decimal {
                    precision: 6,
                    scale: 2,
                },
                true,
            ),
        ];
        let partial = writer
            .upsert(batch(&partial_fields, json!([{"id": 1, "score": "9.99"}])))
            .await
            .unwrap();
        assert_eq!(counts(&partial), (0, 1, 0));
        writer.flush().await.unwrap();

        let read = read_all(&mut other, full("people", 10)).await;
        let rows = rows_from_batch(&read[0].0);
        assert_eq!(rows.len(), 5);
        assert_eq!(
            rows[0],
            rows_from_batch(&batch(
                &fields,
                json!([{"id": 1, "name": "Ann", "score": "9.99"}])
            ))[0]
        );
        assert_eq!(rows[1]["name"], json!("Bobby"));
        assert_eq!(rows[4]["name"], json!("Eve"));
    });
}

#[test]
fn delete_removes_rows_by_key() {
    block_on(async {
        let (_dir, path) = temp_db();
        let fields = people_fields();
        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request("people", &fields, &["id"]))
            .await
            .unwrap();
        writer
            .upsert(batch(&fields, json!([{"id": 1}, {"id": 2}, {"id": 3}])))
            .await
            .unwrap();
        let key = [field("id", DataType::Int64, false)];
        let outcome = writer
            .delete(batch(&key, json!([{"id": 1}, {"id": 99}])))
            .await
            .unwrap();
        assert_eq!(outcome.deleted, Some(1));
        writer.flush().await.unwrap();

        // A composite key, with a decimal part SQLite stores as a REAL.
        let pair_fields = vec![
            field("code", DataType::Text, false),
            field(
                "amount",
                DataType::Decimal {
                    precision: 8,
                    scale: 2,
                },
                false,
            ),
            field("note", DataType::Text, true),
        ];
        let mut pairs = dest
            .start_write(open_request("pairs", &pair_fields, &["code", "amount"]))
            .await
            .unwrap();
        pairs
            .upsert(batch(
                &pair_fields,
                json!([{"code": "a", "amount": "1.50"}, {"code": "a", "amount": "2"},
                       {"code": "b", "amount": "1.50"}]),
            ))
            .await
            .unwrap();
        let again = pairs
            .upsert(batch(
                &pair_fields,
                json!([{"code": "a", "amount": "1.5"}, {"code": "c", "amount": "0"}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&again), (1, 0, 1), "1.5 finds the stored 1.50");
        let keys = &pair_fields[..2];
        let outcome = pairs
            .delete(batch(
                keys,
                json!([{"code": "a", "amount": "1.5"}, {"code": "b", "amount": "2"}]),
            ))
            .await
            .unwrap();
        assert_eq!(outcome.deleted, Some(1));
        pairs.flush().await.unwrap();

        let mut src = source(&path).await;
        assert_eq!(
            ints(&read_all(&mut src, full("people", 10)).await, "id"),
            [2, 3]
        );
        let left = rows_from_batch(&read_all(&mut src, full("pairs", 10)).await[0].0);
        let left: Vec<(Value, Value)> = left
            .iter()
            .map(|r| (r["code"].clone(), r["amount"].clone()))
            .collect();
        assert_eq!(
            left,
            [
                (json!("a"), json!("2.00")),
                (json!("b"), json!("1.50")),
                (json!("c"), json!("0.00"))
            ]
        );
    });
}

#[test]
fn writes_chunk_under_the_bound_parameter_limit() {
    block_on(async {
        let (_dir, path) = temp_db();
        let fields = people_fields();
        let n = 12_000; // 36,000 parameters: more than SQLite's 32,766 per statement.
        let data: Vec<Value> = (0..n)
            .map(|i| json!({"id": i, "name": format!("p{i}"), "score": "1.25"}))
            .collect();
        let big = batch(&fields, Value::Array(data));
        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request("people", &fields, &["id"]))
            .await
            .unwrap();
        assert_eq!(
            counts(&writer.upsert(big.clone()).await.unwrap()),
            (n, 0, 0)
        );
        assert_eq!(
            counts(&writer.upsert(big.clone()).await.unwrap()),
            (0, 0, n)
        );
        writer.flush().await.unwrap();
        let keys = big.project(&[0]).unwrap();
        assert_eq!(writer.delete(keys).await.unwrap().deleted, Some(n));
        writer.flush().await.unwrap();
        assert!(read_all(&mut source(&path).await, full("people", 1000))
            .await
            .is_empty());
    });
}

// ---- Schema evolution and existing tables -------------------------------------------------

#[test]
fn schema_evolution_adds_ignores_or_refuses_missing_columns() {
    block_on(async {
        let (_dir, path) = temp_db();
        let base = vec![
            field("id", DataType::Int64, false),
            field("a", DataType::Text, true),
        ];
        let mut dest = destination(&path).await;
        dest.start_write(open_request("t", &base, &["id"]))
            .await
            .unwrap();

        // add-columns
        let mut with_b = base.clone();
        with_b.push(field("b", DataType::Date, true));
        let mut writer = dest
            .start_write(open_request("t", &with_b, &["id"]))
            .await
            .unwrap();
        writer
            .upsert(batch(
                &with_b,
                json!([{"id": 1, "a": "x", "b": "2024-01-02"}]),
            ))
            .await
            .unwrap();
        writer.flush().await.unwrap();

        // ignore
        let mut with_c = base.clone();
        with_c.push(field("c", DataType::Text, true));
        let mut request = open_request("t", &with_c, &["id"]);
        request.schema_evolution = SchemaEvolution::Ignore;
        let mut writer = dest.start_write(request).await.unwrap();
        let outcome = writer
            .upsert(batch(&with_c, json!([{"id": 2, "a": "y", "c": "dropped"}])))
            .await
            .unwrap();
        assert_eq!(counts(&outcome), (1, 0, 0));
        writer.flush().await.unwrap();

        // fail
        let mut with_d = base.clone();
        with_d.push(field("d", DataType::Int64, true));
        let mut request = open_request("t", &with_d, &["id"]);
        request.schema_evolution = SchemaEvolution::Fail;
        let e = dest.start_write(request).await.err().expect("refused");
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(
            e.message.contains("`d`") && e.message.contains("add-columns"),
            "{}",
            e.message
        );

        let catalog = dest.catalog().await.unwrap();
        let t = catalog.stream("t").unwrap();
        let names: Vec<(&str, DataType)> = t
            .fields
            .iter()
            .map(|f| (f.name.as_str(), f.data_type))
            .collect();
        assert_eq!(
            names,
            [
                ("id", DataType::Int64),
                ("a", DataType::Text),
                ("b", DataType::Date)
            ]
        );
        let read = rows_from_batch(&read_all(&mut source(&path).await, full("t", 10)).await[0].0);
        assert_eq!(read[0]["b"], json!("2024-01-02"));
        assert_eq!(read[1]["b"], Value::Null);
    });
}

#[test]
fn existing_tables_need_a_unique_key_and_missing_ones_may_not_be_created() {
    block_on(async {
        let (_dir, path) = temp_db();
        setup(&path, &["CREATE TABLE contacts (email TEXT, n INT)"]).await;
        let fields = vec![
            field("email", DataType::Text, false),
            field("n", DataType::Int64, true),
        ];
        let mut dest = destination(&path).await;
        let e = dest
            .start_write(open_request("contacts", &fields, &["email"]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("CREATE UNIQUE INDEX"), "{}", e.message);

        // With the index the message suggests, the table takes upserts by email.
        setup(
            &path,
            &["CREATE UNIQUE INDEX contacts_email ON contacts (email)"],
        )
        .await;
        let mut writer = dest
            .start_write(open_request("Contacts", &fields, &["EMAIL"]))
            .await
            .unwrap();
        let outcome = writer
            .upsert(batch(
                &fields,
                json!([{"email": "a@x", "n": 1}, {"email": "a@x", "n": 2}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&outcome), (1, 1, 0));
        writer.flush().await.unwrap();

        let mut request = open_request("absent", &fields, &["email"]);
        request.create_if_missing = false;
        let e = dest.start_write(request).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("absent"), "{}", e.message);
    });
}

#[test]
fn rows_sqlite_refuses_are_rejected_one_by_one() {
    block_on(async {
        let (_dir, path) = temp_db();
        setup(
            &path,
            &["CREATE TABLE m (id INTEGER PRIMARY KEY, n INT CHECK (n >= 0), amount NUMERIC(20,2), x REAL)"],
        )
        .await;
        let fields = vec![
            field("id", DataType::Int64, false),
            field("n", DataType::Int64, true),
            field(
                "amount",
                DataType::Decimal {
                    precision: 20,
                    scale: 2,
                },
                true,
            ),
            field("x", DataType::Float64, true),
        ];
        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request("m", &fields, &["id"]))
            .await
            .unwrap();
        let mut input = batch(
            &fields,
            json!([{"id": 1, "n": 1, "amount": "12.50"}, {"id": 2, "n": -1},
                   {"id": 3, "amount": "123456789012345678.12"}, {"id": 4, "n": 4},
                   {"id": 5, "x": 1.0}]),
        );
        // A NaN cannot come from JSON: patch it into the batch.
        let mut columns = input.columns().to_vec();
        columns[3] =
            std::sync::Arc::new(lockstep_plugin_sdk::arrow::array::Float64Array::from(vec![
                None,
                None,
                None,
                None,
                Some(f64::NAN),
            ]));
        input = RecordBatch::try_new(input.schema(), columns).unwrap();

        let outcome = writer.upsert(input).await.unwrap();
        assert_eq!(counts(&outcome), (2, 0, 0));
        let rejected: Vec<(usize, Option<&str>)> = outcome
            .rejected
            .iter()
            .map(|r| (r.row, r.field.as_deref()))
            .collect();
        assert_eq!(
            rejected,
            [(1, None), (2, Some("amount")), (4, Some("x"))],
            "{:?}",
            outcome.rejected
        );
        assert!(
            outcome.rejected[0].reason.contains("CHECK"),
            "{:?}",
            outcome.rejected
        );
        assert!(
            outcome.rejected[1].reason.contains("15 significant digits"),
            "{:?}",
            outcome.rejected
        );
        writer.flush().await.unwrap();
        assert_eq!(
            ints(
                &read_all(&mut source(&path).await, full("m", 10)).await,
                "id"
            ),
            [1, 4]
        );
    });
}

// ---- Identifiers --------------------------------------------------------------------------

#[test]
fn identifiers_with_quotes_spaces_unicode_and_reserved_words_work() {
    block_on(async {
        let (_dir, path) = temp_db();
        let table = "we\"ird tablé; DROP TABLE x";
        let fields = vec![
            field("order", DataType::Int64, false),
            field("select", DataType::Text, true),
            field("\"order\"", DataType::Text, true),
            field("with space", DataType::Int64, true),
            field("quo\"te", DataType::Text, true),
            field("ünïcödé 名前", DataType::Text, true),
        ];
        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request(table, &fields, &["order", "select"]))
            .await
            .unwrap();
        let data = json!([
            {"order": 1, "select": "a", "\"order\"": "q1", "with space": 30, "quo\"te": "x", "ünïcödé 名前": "ü"},
            {"order": 2, "select": "b", "\"order\"": "q2", "with space": 20, "quo\"te": "y", "ünïcödé 名前": "名"},
            {"order": 3, "select": "c", "\"order\"": "q3", "with space": 10, "quo\"te": "z", "ünïcödé 名前": ""},
        ]);
        assert_eq!(
            counts(&writer.upsert(batch(&fields, data.clone())).await.unwrap()),
            (3, 0, 0)
        );
        assert_eq!(
            counts(&writer.upsert(batch(&fields, data)).await.unwrap()),
            (0, 0, 3)
        );
        let keys = vec![fields[0].clone(), fields[1].clone()];
        let deleted = writer
            .delete(batch(&keys, json!([{"order": 2, "select": "b"}])))
            .await
            .unwrap();
        assert_eq!(deleted.deleted, Some(1));
        writer.flush().await.unwrap();

        let mut src = source(&path).await;
        let catalog = src.catalog().await.unwrap();
        let stream = catalog.stream(table).expect("the table");
        let names: Vec<&str> = stream.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            fields.iter().map(|f| f.name.as_str()).collect::<Vec<_>>()
        );
        assert_eq!(stream.primary_key, ["order", "select"]);

        let read = read_all(&mut src, full(table, 1)).await;
        assert_eq!(ints(&read, "order"), [1, 3]);
        assert_eq!(read[0].1, json!({"key": [1, "a"]}));
        let inc = read_all(&mut src, incremental(table, "with space", 1, None)).await;
        assert_eq!(ints(&inc, "order"), [3, 1]);
        assert_eq!(inc[0].1, json!({"cursor": 10, "key": [3, "c"]}));
        let rows = rows_from_batch(&inc[1].0);
        assert_eq!(rows[0]["\"order\""], json!("q1"));
        assert_eq!(rows[0]["ünïcödé 名前"], json!("ü"));
    });
}

// ---- Stored values of the wrong type ------------------------------------------------------

#[test]
fn a_stored_value_of_the_wrong_type_is_a_schema_error() {
    block_on(async {
        let (_dir, path) = temp_db();
        setup(
            &path,
            &[
                "CREATE TABLE t (id INTEGER PRIMARY KEY, n INTEGER, at TIMESTAMP)",
                "INSERT INTO t VALUES (1, 5, 1714557600)",
                "INSERT INTO t VALUES (2, 'abc', '2024-05-01 10:00:00')",
                "CREATE TABLE u (id INTEGER PRIMARY KEY, at TIMESTAMPTZ, day DATE)",
                "INSERT INTO u VALUES (1, '2024-05-01T12:00:00+02:00', '2024-05-01')",
                "INSERT INTO u VALUES (2, 'yesterday', '2024-05-01')",
            ],
        )
        .await;
        let mut src = source(&path).await;
        let e = read_err(&mut src, full("t", 10)).await;
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        for part in ["`t`", "`n`", "id\" = 2", "'abc'", "int64"] {
            assert!(e.message.contains(part), "{part} in {}", e.message);
        }
        assert_eq!(e.details["column"], json!("n"));

        let e = read_err(&mut src, full("u", 10)).await;
        assert!(
            e.message.contains("`at`") && e.message.contains("'yesterday'"),
            "{}",
            e.message
        );

        // Integer unix seconds and ISO text are timestamps (row 2 fails only on `n`).
        let mut request = full("t", 1);
        request.fields = Some(vec!["at".into()]);
        let batches = read_all(&mut src, request).await;
        let at: Vec<Value> = batches
            .iter()
            .map(|(b, _)| rows_from_batch(b)[0]["at"].clone())
            .collect();
        assert_eq!(
            at,
            [json!("2024-05-01T10:00:00"), json!("2024-05-01T10:00:00")]
        );
        let mut request = full("u", 1);
        request.fields = Some(vec!["at".into()]);
        let e = read_err(&mut src, request).await;
        assert!(e.message.contains("yesterday"), "{}", e.message);
    });
}

#[test]
fn a_real_beyond_float32_in_a_float4_column_is_a_schema_error_not_an_infinity() {
    block_on(async {
        let (_dir, path) = temp_db();
        setup(
            &path,
            &[
                "CREATE TABLE f (id INTEGER PRIMARY KEY, x FLOAT4)",
                "INSERT INTO f VALUES (1, 1.5), (2, -3.4028234663852886e38), (3, 1e-50)",
                "CREATE TABLE g (id INTEGER PRIMARY KEY, x FLOAT4)",
                "INSERT INTO g VALUES (1, 1.5), (2, 1e300)",
            ],
        )
        .await;
        let mut src = source(&path).await;
        // In range: rounded to the nearest float32 (1e-50 to zero), as PostgreSQL's real does.
        let batches = read_all(&mut src, full("f", 10)).await;
        let x: Vec<Value> = rows_from_batch(&batches[0].0)
            .iter()
            .map(|r| r["x"].clone())
            .collect();
        assert_eq!(x, [json!(1.5), json!(-3.4028234663852886e38), json!(0.0)]);
        let e = read_err(&mut src, full("g", 10)).await;
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        for part in [
            "`x`",
            "id\" = 2",
            "not a valid float32",
            "out of range for float32",
        ] {
            assert!(e.message.contains(part), "{part} in {}", e.message);
        }
    });
}

// ---- Config -------------------------------------------------------------------------------

#[test]
fn config_errors_name_the_file_and_the_fix() {
    block_on(async {
        let (dir, path) = temp_db();
        let e = SqliteConnector::open_source(SqliteConfig::for_path(&path))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(
            e.message.contains(&path) && e.message.contains("does not exist"),
            "{}",
            e.message
        );
        assert!(
            !std::path::Path::new(&path).exists(),
            "a source never creates the file"
        );

        let mut no_create = SqliteConfig::for_path(&path);
        no_create.create_if_missing = Some(false);
        let e = SqliteConnector::open_destination(no_create)
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG);

        // The URL form, then the file exists for a source too.
        let config: SqliteConfig =
            serde_json::from_value(json!({"url": format!("sqlite://{path}")})).unwrap();
        let mut dest = SqliteConnector::open_destination(config.clone())
            .await
            .unwrap();
        <SqliteConnector as lockstep_plugin_sdk::DestinationConnector>::check(&mut dest)
            .await
            .unwrap();
        let mut src = SqliteConnector::open_source(config).await.unwrap();
        <SqliteConnector as lockstep_plugin_sdk::SourceConnector>::check(&mut src)
            .await
            .unwrap();

        for bad in [
            json!({"path": "a.db", "url": "sqlite://a.db"}),
            json!({}),
            json!({"url": "postgres://user:secret@host/db"}),
            json!({"url": "sqlite://a.db?mode=ro"}),
            json!({"path": ":memory:"}),
            json!({"path": "a.db", "batch_size": 0}),
        ] {
            let config: SqliteConfig = serde_json::from_value(bad.clone()).unwrap();
            let e = SqliteConnector::open_destination(config)
                .await
                .err()
                .unwrap();
            assert_eq!(e.kind, ErrorKind::CONFIG, "{bad}: {}", e.message);
            assert!(!e.message.contains("secret"), "{}", e.message);
        }
        assert!(serde_json::from_value::<SqliteConfig>(json!({"pth": "a.db"})).is_err());

        // A file that is not a database.
        let junk = dir.path().join("junk.db");
        std::fs::write(&junk, vec![b'x'; 4096]).unwrap();
        let e = SqliteConnector::open_source(SqliteConfig::for_path(junk.to_string_lossy()))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG, "{}", e.message);
    });
}

#[test]
fn manifest_names_roles_features_and_config_keys() {
    let m = lockstep_plugin_sdk::full_manifest::<SqliteConnector>();
    assert_eq!(m.name, "sqlite");
    assert_eq!(m.roles.len(), 2);
    for f in ["incremental", "upsert", "delete", "create-stream"] {
        assert!(m.features.iter().any(|x| x == f), "{f}");
    }
    for key in ["path", "url", "create_if_missing", "batch_size"] {
        assert!(
            m.config_schema["properties"][key]["description"].is_string(),
            "{key}"
        );
    }
}

#[test]
fn uuids_are_written_in_canonical_form() {
    block_on(async {
        let (_dir, path) = temp_db();
        let fields = vec![
            field("id", DataType::Uuid, false),
            field("n", DataType::Int64, true),
        ];
        let mut dest = destination(&path).await;
        let mut writer = dest
            .start_write(open_request("u", &fields, &["id"]))
            .await
            .unwrap();
        let upper = json!([{"id": "550E8400-E29B-41D4-A716-446655440000", "n": 1}]);
        assert_eq!(
            counts(&writer.upsert(batch(&fields, upper)).await.unwrap()),
            (1, 0, 0)
        );
        let braces = json!([{"id": "{550e8400e29b41d4a716446655440000}", "n": 1}, {"id": "nope"}]);
        let outcome = writer.upsert(batch(&fields, braces)).await.unwrap();
        assert_eq!(
            counts(&outcome),
            (0, 0, 1),
            "the same UUID, spelled differently"
        );
        assert_eq!(outcome.rejected.len(), 1);
        assert_eq!(outcome.rejected[0].row, 1);
        writer.flush().await.unwrap();
        let read = read_all(&mut source(&path).await, full("u", 10)).await;
        assert_eq!(
            rows_from_batch(&read[0].0)[0]["id"],
            json!("550e8400-e29b-41d4-a716-446655440000")
        );
    });
}

#[test]
fn a_read_by_keys_returns_only_those_records() {
    block_on(async {
        let (_dir, path) = temp_db();
        let mut statements = vec!["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)".to_string()];
        for i in 1..=30 {
            statements.push(format!("INSERT INTO t VALUES ({i}, 'n{i}')"));
        }
        let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
        setup(&path, &refs).await;
        let mut conn = source(&path).await;
        let mut request = full("t", 2);
        request.keys = Some(vec![
            vec![json!(3)],
            vec![json!(17)],
            vec![json!(29)],
            vec![json!(99)],
        ]);
        let batches = read_all(&mut conn, request).await;
        assert_eq!(ints(&batches, "id"), [3, 17, 29]);
        let mut none = full("t", 10);
        none.keys = Some(vec![]);
        assert!(ints(&read_all(&mut conn, none).await, "id").is_empty());
    });
}
