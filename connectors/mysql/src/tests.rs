//! Tests against a real server: MariaDB or MySQL at `LOCKSTEP_TEST_MYSQL_URL` (default
//! `mysql://root@127.0.0.1:3306/test`). Each test works in a database of
//! its own from `lockstep_test_support::LiveDb`, dropped even when the test fails; an
//! unreachable server is a recorded skip, and a failure under CI.

use std::collections::BTreeSet;

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::{batch_from_rows, rows_from_batch};
use lockstep_plugin_sdk::serde_json::{self, json, Map, Value};
use lockstep_plugin_sdk::{
    block_on, standalone_context, BatchReader, ConnectorError, CursorCheckpoint, DataType,
    FieldInfo, ReadMode, SchemaEvolution, StreamWriter, WriteOutcome,
};
use sqlx::{Connection, Row};

use super::*;
use lockstep_sql_kit::ReadConfig;
use lockstep_test_support::{LiveDb, Server};

fn base_url() -> String {
    Server::MySql.base_url()
}

/// A database of its own for one test (the shared live-database fixture), dropped when the
/// value is, with an administration connection into it.
struct TestDb {
    name: String,
    admin: MySqlConnection,
    // Declared last: the connection closes before the database is dropped.
    _live: LiveDb,
}

impl TestDb {
    async fn new() -> Option<Self> {
        let live = LiveDb::create(Server::MySql, "lockstep_my")?;
        let mut admin = MySqlConnection::connect(&live.url())
            .await
            .expect("connect to the fresh test database");
        admin
            .execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES', time_zone = '+00:00'")
            .await
            .unwrap();
        Some(TestDb {
            name: live.name().to_owned(),
            admin,
            _live: live,
        })
    }

    fn config(&self) -> Config {
        Config {
            url: format!("{}/{}", base_url(), self.name),
            password_env: None,
            read: ReadConfig::default(),
        }
    }

    async fn exec(&mut self, sql: &str) {
        if let Err(e) = self.admin.execute(sql).await {
            panic!("{sql}: {e}");
        }
    }

    /// The rows of `sql`, every column cast to text by the caller's SQL.
    async fn strings(&mut self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = sqlx::query(sql).fetch_all(&mut self.admin).await.unwrap();
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get_unchecked::<Option<String>, _>(i).unwrap())
                    .collect()
            })
            .collect()
    }

    async fn source(&self) -> MySqlSource {
        MySqlSource::open(self.config(), standalone_context())
            .await
            .unwrap()
    }

    async fn destination(&self) -> MySqlDestination {
        MySqlDestination::open(self.config(), standalone_context())
            .await
            .unwrap()
    }
}

/// Runs a test body against a fresh database, or skips it when there is no server.
fn with_db<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    block_on(async move {
        if let Some(db) = TestDb::new().await {
            body(db).await;
        }
    })
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
        .unwrap()
        .iter()
        .map(|v| v.as_object().unwrap().clone())
        .collect()
}

fn batch(fields: &[FieldInfo], values: Value) -> RecordBatch {
    batch_from_rows(fields, &rows(values)).unwrap()
}

fn request(stream: &str) -> ReadRequest {
    ReadRequest {
        stream: stream.into(),
        ..Default::default()
    }
}

async fn read_all(source: &mut MySqlSource, req: ReadRequest) -> Result<Vec<(RecordBatch, Value)>> {
    let mut reader = source.read(req).await?;
    let mut out = Vec::new();
    while let Some(b) = reader.next_batch().await? {
        out.push(b);
    }
    Ok(out)
}

fn all_rows(batches: &[(RecordBatch, Value)]) -> Vec<Map<String, Value>> {
    batches
        .iter()
        .flat_map(|(b, _)| rows_from_batch(b))
        .collect()
}

fn counts(o: &WriteOutcome) -> (Option<u64>, Option<u64>, Option<u64>) {
    (o.inserted, o.updated, o.unchanged)
}

fn open_request(stream: &str, fields: Vec<FieldInfo>, key: &[&str]) -> OpenStreamRequest {
    OpenStreamRequest {
        stream: stream.into(),
        fields,
        key: key.iter().map(|k| k.to_string()).collect(),
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

const EVERY_TYPE: &str = "CREATE TABLE every (
    id INT PRIMARY KEY,
    b BOOLEAN, ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT, i INT,
    iu INT UNSIGNED, bi BIGINT, biu BIGINT UNSIGNED, f FLOAT, d DOUBLE,
    dec1 DECIMAL(38,10), dec2 DECIMAL(5,2), wide DECIMAL(50,5),
    c CHAR(5), vc VARCHAR(100), t TEXT, lt LONGTEXT,
    bin BINARY(4), vb VARBINARY(10), bl BLOB,
    dt DATE, tm TIME(6), dtm DATETIME(6), ts TIMESTAMP(6) NULL,
    j JSON, u UUID, e ENUM('x','y'), st SET('a','b'), y YEAR, bit1 BIT(1),
    updated_at DATETIME(6) NOT NULL DEFAULT '2024-01-01'
) DEFAULT CHARSET=utf8mb4";

const EVERY_ROWS: &str = "INSERT INTO every
    (id, b, ti, tiu, si, mi, i, iu, bi, biu, f, d, dec1, dec2, wide, c, vc, t, lt, bin, vb, bl,
     dt, tm, dtm, ts, j, u, e, st, y, bit1) VALUES
    (1, 1, 127, 255, 32767, 8388607, 2147483647, 4294967295, 9223372036854775807,
     18446744073709551615, 1.5, 1.7976931348623157e308,
     '9999999999999999999999999999.9999999999', -999.99,
     '123456789012345678901234567890123456789012345.12345',
     'abc', 'Zoë 😀 ✓ 表', '', REPEAT('xyz😀', 30000), 0x00ff0001, X'', 0x00,
     '9999-12-31', '23:59:59.999999', '9999-12-31 23:59:59.999999',
     '2038-01-19 03:14:07.999999', '{\"a\": [1, 2, {\"b\": \"😀\"}]}',
     '123e4567-e89b-12d3-a456-426614174000', 'y', 'a,b', 2155, 1),
    (2, 0, -128, 0, -32768, -8388608, -2147483648, 0, -9223372036854775808, 0, -1.25,
     -2.5e-308, '-0.0000000001', 0.01, '-0.00001', '', '', 'a', '', 0x00000000, 0xff, X'',
     '1000-01-01', '00:00:00', '1000-01-01 00:00:00', '1970-01-01 00:00:01', '[]',
     '00000000-0000-0000-0000-000000000000', 'x', '', 1901, 0),
    (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL)";

#[test]
fn manifest_describes_the_config() {
    let m = lockstep_plugin_sdk::full_manifest::<MySqlConnector>();
    assert_eq!(m.name, "mysql");
    for key in ["url", "password_env", "batch_size", "lookback"] {
        assert!(
            m.config_schema["properties"][key]["description"].is_string(),
            "{key}"
        );
    }
    assert!(m.features.iter().any(|f| f == "incremental"));
}

#[test]
fn discover_maps_types_keys_and_cursors() {
    with_db(|mut db| async move {
        db.exec(EVERY_TYPE).await;
        db.exec("CREATE TABLE pairs (a INT, b VARCHAR(10), seq BIGINT UNSIGNED AUTO_INCREMENT UNIQUE, PRIMARY KEY (b, a))")
            .await;
        db.exec("CREATE VIEW v AS SELECT id, vc FROM every").await;
        let mut source = db.source().await;
        source.check().await.unwrap();
        let catalog = source.discover().await.unwrap();
        let names: Vec<&str> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["every", "pairs", "v"]);

        let every = catalog.stream("every").unwrap();
        let t = |n: &str| every.field(n).unwrap_or_else(|| panic!("{n}")).data_type;
        let dec = |precision, scale| DataType::Decimal { precision, scale };
        let expected = [
            ("id", DataType::Int32),
            ("b", DataType::Boolean),
            ("ti", DataType::Int32),
            ("tiu", DataType::Int32),
            ("si", DataType::Int32),
            ("mi", DataType::Int32),
            ("i", DataType::Int32),
            ("iu", DataType::Int64),
            ("bi", DataType::Int64),
            ("biu", dec(20, 0)),
            ("f", DataType::Float32),
            ("d", DataType::Float64),
            ("dec1", dec(38, 10)),
            ("dec2", dec(5, 2)),
            ("wide", DataType::Text),
            ("c", DataType::Text),
            ("vc", DataType::Text),
            ("t", DataType::Text),
            ("lt", DataType::Text),
            ("bin", DataType::Binary),
            ("vb", DataType::Binary),
            ("bl", DataType::Binary),
            ("dt", DataType::Date),
            ("tm", DataType::Time),
            ("dtm", DataType::Timestamp),
            ("ts", DataType::TimestampTz),
            ("j", DataType::Json),
            ("u", DataType::Uuid),
            ("e", DataType::Text),
            ("st", DataType::Text),
            ("y", DataType::Int32),
            ("bit1", DataType::Boolean),
            ("updated_at", DataType::Timestamp),
        ];
        for (name, data_type) in expected {
            assert_eq!(t(name), data_type, "{name}");
        }
        assert_eq!(every.fields.len(), expected.len());
        assert_eq!(every.primary_key, ["id"]);
        assert!(!every.field("id").unwrap().nullable);
        assert!(every.field("vc").unwrap().nullable);
        assert!(!every.field("updated_at").unwrap().nullable);
        assert_eq!(
            every.field("j").unwrap().native_type.as_deref(),
            Some("json")
        );
        assert_eq!(every.cursor_candidates, ["dtm", "ts", "updated_at"]);

        let pairs = catalog.stream("pairs").unwrap();
        assert_eq!(pairs.primary_key, ["b", "a"]);
        assert_eq!(pairs.cursor_candidates, ["seq"]);
        assert!(catalog.stream("v").unwrap().primary_key.is_empty());
    });
}

#[test]
fn full_reads_page_by_key_and_resume_from_checkpoints() {
    with_db(|mut db| async move {
        db.exec("CREATE TABLE items (g VARCHAR(10), n INT, label TEXT, PRIMARY KEY (g, n))")
            .await;
        let values: Vec<String> = (0..25)
            .map(|i| format!("('{}', {}, 'item {i}')", ["b", "a", "c"][i % 3], i))
            .collect();
        db.exec(&format!("INSERT INTO items VALUES {}", values.join(", ")))
            .await;
        let mut source = db.source().await;
        let req = ReadRequest {
            batch_size: Some(10),
            ..request("items")
        };
        let batches = read_all(&mut source, req.clone()).await.unwrap();
        assert_eq!(
            batches
                .iter()
                .map(|(b, _)| b.num_rows())
                .collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let got = all_rows(&batches);
        let keys: Vec<(String, i64)> = got
            .iter()
            .map(|r| {
                (
                    r["g"].as_str().unwrap().to_owned(),
                    r["n"].as_i64().unwrap(),
                )
            })
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "rows come in key order");
        assert_eq!(BTreeSet::from_iter(keys.iter().cloned()).len(), 25);
        assert_eq!(batches[0].1, json!({"key": [keys[9].0, keys[9].1]}));

        // Resuming after the first batch reads exactly the rest.
        let resumed = read_all(
            &mut source,
            ReadRequest {
                checkpoint: Some(batches[0].1.clone()),
                ..req.clone()
            },
        )
        .await
        .unwrap();
        let rest = all_rows(&resumed);
        assert_eq!(rest.len(), 15);
        assert_eq!(rest, got[10..]);

        // Requested fields only, in the requested order; the key is still tracked.
        let narrow = read_all(
            &mut source,
            ReadRequest {
                fields: Some(vec!["label".into()]),
                ..req.clone()
            },
        )
        .await
        .unwrap();
        assert_eq!(narrow[0].0.num_columns(), 1);
        assert_eq!(narrow[0].1, batches[0].1);
        assert_eq!(all_rows(&narrow).len(), 25);

        // Unknown streams and fields are schema errors that list what exists.
        let e = read_all(&mut source, request("nope")).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("items"), "{}", e.message);
        let e = read_all(
            &mut source,
            ReadRequest {
                fields: Some(vec!["nope".into()]),
                ..request("items")
            },
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("label"), "{}", e.message);

        // A table dropped under a running read is a schema error.
        let mut reader = source.read(req).await.unwrap();
        reader.next_batch().await.unwrap().unwrap();
        db.exec("DROP TABLE items").await;
        let e = reader.next_batch().await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA, "{}", e.message);
        assert!(e.message.contains("1146"), "{}", e.message);
    });
}

#[test]
fn keys_of_unusual_types_page_consistently() {
    with_db(|mut db| async move {
        // MariaDB's UUID type sorts in its own order, ENUM by index, DECIMAL numerically:
        // pages must agree with ORDER BY for each.
        db.exec("CREATE TABLE by_uuid (u UUID PRIMARY KEY, n INT)")
            .await;
        let uuids: Vec<String> = (0..30)
            .map(|i| {
                format!(
                    "('{:08x}-{:04x}-1{:03x}-8000-{:012x}', {i})",
                    i * 7919 % 1000,
                    i * 31,
                    i,
                    999 - i
                )
            })
            .collect();
        db.exec(&format!("INSERT INTO by_uuid VALUES {}", uuids.join(", ")))
            .await;
        db.exec("CREATE TABLE by_enum (e ENUM('b','a','c') PRIMARY KEY)")
            .await;
        db.exec("INSERT INTO by_enum VALUES ('a'), ('b'), ('c')")
            .await;
        db.exec("CREATE TABLE by_dec (d DECIMAL(30,5) PRIMARY KEY)")
            .await;
        db.exec(
            "INSERT INTO by_dec VALUES (1234567890123456789012345.00001), \
             (1234567890123456789012345.00002), (-1), (0.5), (99)",
        )
        .await;
        let mut source = db.source().await;
        for (table, expected, batch_size) in
            [("by_uuid", 30, 7), ("by_enum", 3, 1), ("by_dec", 5, 2)]
        {
            let rows = all_rows(
                &read_all(
                    &mut source,
                    ReadRequest {
                        batch_size: Some(batch_size),
                        ..request(table)
                    },
                )
                .await
                .unwrap(),
            );
            let distinct: BTreeSet<String> = rows
                .iter()
                .map(|r| Value::Object(r.clone()).to_string())
                .collect();
            assert_eq!(
                (rows.len(), distinct.len()),
                (expected, expected),
                "{table}"
            );
        }
    });
}

#[test]
fn reads_by_keys_find_composite_typed_and_many_keys_and_skip_missing_ones() {
    with_db(|mut db| async move {
        db.exec(
            "CREATE TABLE `lines` (`order` VARCHAR(20), line INT, amount DECIMAL(10,2) NOT NULL, \
             at DATETIME(6) NOT NULL, PRIMARY KEY (`order`, line))",
        )
        .await;
        db.exec("CREATE TABLE digits (d INT)").await;
        db.exec("INSERT INTO digits VALUES (0), (1), (2), (3), (4), (5), (6), (7), (8), (9)")
            .await;
        db.exec(
            "INSERT INTO `lines` SELECT CONCAT('o', n DIV 10), n MOD 10, n / 4, \
             TIMESTAMPADD(MINUTE, n, '2026-01-01 00:00:00') FROM (SELECT a.d + 10 * b.d + \
             100 * c.d + 1000 * e.d AS n FROM digits a, digits b, digits c, digits e \
             WHERE e.d < 3) g",
        )
        .await;
        let mut source = db.source().await;
        let by_keys = |key: &[&str], keys: Value, batch_size: Option<usize>| ReadRequest {
            key: key.iter().map(|k| k.to_string()).collect(),
            keys: Some(
                keys.as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_array().unwrap().clone())
                    .collect(),
            ),
            batch_size,
            ..request("lines")
        };
        let pairs = |batches: &[(RecordBatch, Value)]| -> Vec<(String, i64)> {
            all_rows(batches)
                .iter()
                .map(|r| {
                    (
                        r["order"].as_str().unwrap().to_owned(),
                        r["line"].as_i64().unwrap(),
                    )
                })
                .collect()
        };

        // A composite key, with keys that match nothing (a null among them); rows come in
        // key order.
        let found = read_all(
            &mut source,
            by_keys(
                &["order", "line"],
                json!([
                    ["o5", 3],
                    ["missing", 1],
                    ["o299", 9],
                    ["o5", 99],
                    ["o5", null]
                ]),
                None,
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            pairs(&found),
            [("o299".to_owned(), 9), ("o5".to_owned(), 3)]
        );
        assert_eq!(found[0].1, Value::Null, "a read by keys has no position");

        // Values compare as their column's type: 1.5 is the decimal 1.50, and a datetime read
        // from the table finds its row.
        let found = read_all(
            &mut source,
            by_keys(&["amount"], json!([[1.5], ["2.25"]]), None),
        )
        .await
        .unwrap();
        assert_eq!(pairs(&found), [("o0".to_owned(), 6), ("o0".to_owned(), 9)]);
        let everything = read_all(
            &mut source,
            ReadRequest {
                fields: Some(vec!["at".into()]),
                ..request("lines")
            },
        )
        .await
        .unwrap();
        let at_10 = all_rows(&everything)[10]["at"].clone();
        let found = read_all(&mut source, by_keys(&["at"], json!([[at_10]]), None))
            .await
            .unwrap();
        assert_eq!(pairs(&found), [("o1".to_owned(), 0)]);

        // Many keys go in chunks of at most the batch size; a chunk that finds nothing is
        // skipped, and every row is found once.
        let real: Vec<Value> = (0..3000)
            .map(|g| json!([format!("o{}", g / 10), g % 10]))
            .collect();
        let mut keys = real[..1400].to_vec();
        keys.extend((0..700).map(|g| json!([format!("none{g}"), 1])));
        keys.extend_from_slice(&real[1400..]);
        let found = read_all(
            &mut source,
            by_keys(&["order", "line"], Value::Array(keys), Some(700)),
        )
        .await
        .unwrap();
        let sizes: Vec<usize> = found.iter().map(|(b, _)| b.num_rows()).collect();
        assert_eq!(sizes, [700, 700, 700, 700, 200]);
        let distinct: BTreeSet<(String, i64)> = pairs(&found).into_iter().collect();
        assert_eq!(distinct.len(), 3000);

        // No keys, no rows; a key of the wrong width is refused with the key's fields.
        let none = read_all(&mut source, by_keys(&["order", "line"], json!([]), None))
            .await
            .unwrap();
        assert!(none.is_empty());
        let e = read_all(
            &mut source,
            by_keys(&["order", "line"], json!([["o1"]]), None),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(e.message.contains("order, line"), "{}", e.message);
        assert!(MySqlConnector::manifest()
            .features
            .iter()
            .any(|f| f == "read-by-keys"));
    });
}

#[test]
fn reads_by_keys_share_one_connection_and_survive_its_end() {
    with_db(|mut db| async move {
        db.exec("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10))")
            .await;
        db.exec("INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')")
            .await;
        let mut source = db.source().await;
        let by_keys = |ids: &[i64]| ReadRequest {
            key: vec!["id".into()],
            keys: Some(ids.iter().map(|i| vec![json!(i)]).collect()),
            ..request("t")
        };
        // Reads a whole read by keys; the ids it found and the connection it used.
        async fn whole(source: &mut MySqlSource, req: ReadRequest) -> (Vec<i64>, u64) {
            let mut reader = source.read(req).await.expect("read by keys");
            let mut found = Vec::new();
            while let Some((batch, _)) = reader.next_batch().await.expect("batch") {
                found.extend(
                    rows_from_batch(&batch)
                        .iter()
                        .map(|r| r["id"].as_i64().unwrap()),
                );
            }
            (found, reader.connection_id())
        }

        // Reads by keys one after another: one server connection.
        let (found, first) = whole(&mut source, by_keys(&[1, 3])).await;
        assert_eq!(found, [1, 3]);
        for _ in 0..3 {
            let (found, again) = whole(&mut source, by_keys(&[2])).await;
            assert_eq!((found.as_slice(), again), (&[2][..], first));
        }
        // A read by keys started while the kept connection is taken has its own; the first
        // of the two to end keeps its connection for the next.
        let mut held = source.read(by_keys(&[1])).await.unwrap();
        assert_eq!(held.connection_id(), first);
        let (found, other) = whole(&mut source, by_keys(&[3])).await;
        assert_eq!(found, [3]);
        assert_ne!(other, first);
        while held.next_batch().await.unwrap().is_some() {}
        drop(held);
        let (_, kept) = whole(&mut source, by_keys(&[1])).await;
        assert_eq!(kept, other, "the first read to end keeps its connection");

        // The server ends the kept connection: the next read connects anew, and succeeds.
        db.exec(&format!("KILL CONNECTION {kept}")).await;
        let (found, after) = whole(&mut source, by_keys(&[1, 2, 3])).await;
        assert_eq!(found, [1, 2, 3]);
        assert_ne!(after, kept);
        source.close().await;
    })
}

#[test]
fn incremental_reads_are_tie_safe() {
    with_db(|mut db| async move {
        db.exec("CREATE TABLE events (id INT PRIMARY KEY, at DATETIME(6), note TEXT)")
            .await;
        // 40 rows share one cursor value; the batch (7) is smaller than the group.
        let mut values: Vec<String> = (1..=40)
            .map(|i| format!("({i}, '2024-05-01 10:00:00', 'same {i}')"))
            .collect();
        values.extend((41..=45).map(|i| format!("({i}, '2024-05-01 09:00:00', 'early {i}')")));
        values.push("(46, NULL, 'no cursor')".into());
        db.exec(&format!("INSERT INTO events VALUES {}", values.join(", ")))
            .await;
        let mut source = db.source().await;
        let req = ReadRequest {
            mode: ReadMode::Incremental,
            cursor_field: Some("at".into()),
            batch_size: Some(7),
            ..request("events")
        };
        let batches = read_all(&mut source, req.clone()).await.unwrap();
        let ids: Vec<i64> = all_rows(&batches)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        let expected: Vec<i64> = (41..=45).chain(1..=40).collect();
        assert_eq!(
            ids, expected,
            "each row exactly once, in (cursor, key) order"
        );
        let first: CursorCheckpoint = serde_json::from_value(batches[0].1.clone()).unwrap();
        // Five early rows, then the first two of the tied group.
        assert_eq!(first.cursor, json!("2024-05-01T10:00:00"));
        assert_eq!(first.key, [json!(2)]);

        // Resume in the middle of the tied group: the rest of the group, nothing twice.
        let middle = batches[2].1.clone();
        let cp: CursorCheckpoint = serde_json::from_value(middle.clone()).unwrap();
        assert_eq!(cp.cursor, json!("2024-05-01T10:00:00"));
        let resumed = read_all(
            &mut source,
            ReadRequest {
                checkpoint: Some(middle.clone()),
                ..req.clone()
            },
        )
        .await
        .unwrap();
        let ids: Vec<i64> = all_rows(&resumed)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, expected[21..]);

        // At the end, a new row with the same cursor and a higher key is picked up; one
        // with a lower key at that cursor (a late commit) needs the lookback.
        let last = batches.last().unwrap().1.clone();
        db.exec("INSERT INTO events VALUES (50, '2024-05-01 10:00:00', 'late high'), (0, '2024-05-01 10:00:00', 'late low')")
            .await;
        let after = read_all(
            &mut source,
            ReadRequest {
                checkpoint: Some(last.clone()),
                ..req.clone()
            },
        )
        .await
        .unwrap();
        let ids: Vec<i64> = all_rows(&after)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(ids, [50]);

        let mut config = db.config();
        config.read.lookback = Some("30m".into());
        let mut with_lookback = MySqlSource::open(config, standalone_context())
            .await
            .unwrap();
        let again = read_all(
            &mut with_lookback,
            ReadRequest {
                checkpoint: Some(last),
                ..req.clone()
            },
        )
        .await
        .unwrap();
        let ids: Vec<i64> = all_rows(&again)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        assert_eq!(
            ids.len(),
            42,
            "the whole 10:00 group again, the 09:00 rows not: {ids:?}"
        );
        assert!(ids.contains(&0) && ids.contains(&50) && !ids.contains(&41));

        // No cursor field: a clear error.
        let e = read_all(
            &mut source,
            ReadRequest {
                cursor_field: None,
                ..req
            },
        )
        .await
        .err()
        .unwrap();
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(e.message.contains("at"), "{}", e.message);
    });
}

#[test]
fn every_type_round_trips_with_nulls_unicode_and_extremes() {
    with_db(|mut db| async move {
        db.exec(EVERY_TYPE).await;
        db.exec(EVERY_ROWS).await;
        let mut source = db.source().await;
        let catalog = source.discover().await.unwrap();
        let stream = catalog.stream("every").unwrap().clone();
        let batches = read_all(&mut source, request("every")).await.unwrap();
        let got = all_rows(&batches);
        assert_eq!(got.len(), 3);
        let (max, min, nulls) = (&got[0], &got[1], &got[2]);
        let expect_max = json!({
            "b": true, "ti": 127, "tiu": 255, "si": 32767, "mi": 8388607, "i": 2147483647,
            "iu": 4294967295u64, "bi": 9223372036854775807i64, "biu": "18446744073709551615",
            "f": 1.5, "d": 1.7976931348623157e308,
            "dec1": "9999999999999999999999999999.9999999999", "dec2": "-999.99",
            "wide": "123456789012345678901234567890123456789012345.12345",
            "c": "abc", "vc": "Zoë 😀 ✓ 表", "t": "", "bin": "\\x00ff0001", "vb": "\\x",
            "bl": "\\x00", "dt": "9999-12-31", "tm": "23:59:59.999999",
            "dtm": "9999-12-31T23:59:59.999999", "ts": "2038-01-19T03:14:07.999999Z",
            "j": {"a": [1, 2, {"b": "😀"}]}, "u": "123e4567-e89b-12d3-a456-426614174000",
            "e": "y", "st": "a,b", "y": 2155, "bit1": true
        });
        for (k, v) in expect_max.as_object().unwrap() {
            assert_eq!(&max[k], v, "max {k}");
        }
        assert_eq!(max["lt"].as_str().unwrap(), "xyz😀".repeat(30000));
        let expect_min = json!({
            "b": false, "ti": -128, "tiu": 0, "si": -32768, "mi": -8388608, "i": -2147483648i64,
            "iu": 0, "bi": -9223372036854775808i64, "biu": "0", "f": -1.25, "d": -2.5e-308,
            "dec1": "-0.0000000001", "dec2": "0.01", "wide": "-0.00001", "c": "", "vc": "",
            "bin": "\\x00000000", "dt": "1000-01-01", "tm": "00:00:00",
            "dtm": "1000-01-01T00:00:00", "ts": "1970-01-01T00:00:01Z", "j": [],
            "u": "00000000-0000-0000-0000-000000000000", "e": "x", "st": "", "y": 1901,
            "bit1": false
        });
        for (k, v) in expect_min.as_object().unwrap() {
            assert_eq!(&min[k], v, "min {k}");
        }
        for (k, v) in nulls {
            if k != "id" && k != "updated_at" {
                assert_eq!(v, &Value::Null, "null {k}");
            }
        }

        // Write everything to a new table and read it back unchanged.
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request("copy", stream.fields.clone(), &["id"]))
            .await
            .unwrap();
        for (b, _) in &batches {
            let outcome = writer.upsert(b.clone()).await.unwrap();
            assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
            assert_eq!(counts(&outcome), (Some(3), Some(0), Some(0)));
        }
        writer.flush().await.unwrap();
        let copied = all_rows(&read_all(&mut source, request("copy")).await.unwrap());
        assert_eq!(copied.len(), 3);
        for (a, b) in got.iter().zip(&copied) {
            for (k, v) in a {
                let w = &b[k];
                if k == "ts" && !v.is_null() {
                    // timestamp-tz is stored as DATETIME(6) in UTC and reads back as a
                    // timestamp without zone: the same instant without the `Z`.
                    assert_eq!(format!("{}Z", w.as_str().unwrap()), v.as_str().unwrap());
                } else {
                    assert_eq!(v, w, "copied {k}");
                }
            }
        }
        let copy_catalog = source.discover().await.unwrap();
        let copy = copy_catalog.stream("copy").unwrap();
        assert_eq!(copy.field("u").unwrap().data_type, DataType::Uuid);
        assert_eq!(copy.field("j").unwrap().data_type, DataType::Json);
        assert_eq!(
            copy.field("biu").unwrap().data_type,
            stream.field("biu").unwrap().data_type
        );
        let create = db.strings("SHOW CREATE TABLE copy").await;
        let ddl = create[0][1].clone().unwrap();
        assert!(ddl.contains("`vc` longtext"), "{ddl}");
        assert!(
            ddl.contains("COLLATE=utf8mb4_nopad_bin") || ddl.contains("utf8mb4_0900_bin"),
            "{ddl}"
        );
    });
}

#[test]
fn a_boolean_column_holding_another_number_is_a_read_error_not_true() {
    with_db(|mut db| async move {
        db.exec("CREATE TABLE flags (id INT PRIMARY KEY, flag BOOLEAN, bit1 BIT(1))")
            .await;
        db.exec("INSERT INTO flags VALUES (1, 0, 0), (2, 1, 1), (3, NULL, NULL)")
            .await;
        let mut source = db.source().await;
        let got = all_rows(&read_all(&mut source, request("flags")).await.unwrap());
        let flags: Vec<&Value> = got.iter().map(|r| &r["flag"]).collect();
        assert_eq!(flags, [&json!(false), &json!(true), &Value::Null]);

        db.exec("INSERT INTO flags VALUES (4, 2, 1)").await;
        let e = read_all(&mut source, request("flags")).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        for part in ["`flag`", "tinyint(1)", "2 is not a boolean"] {
            assert!(e.message.contains(part), "{part} in {}", e.message);
        }
        db.exec("UPDATE flags SET flag = -1 WHERE id = 4").await;
        let e = read_all(&mut source, request("flags")).await.unwrap_err();
        assert!(e.message.contains("-1 is not a boolean"), "{}", e.message);
    });
}

/// Integer keys are counted with one look at the table when no key comes twice, and with
/// two when one does: the counts are the same either way.
#[test]
fn upserts_with_integer_keys_count_inserted_updated_and_unchanged() {
    with_db(|mut db| async move {
        let fields = vec![
            field("id", DataType::Int64, false),
            field("v", DataType::Int64, true),
        ];
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request("ints", fields.clone(), &["id"]))
            .await
            .unwrap();
        let o = writer
            .upsert(batch(
                &fields,
                json!([{"id": 1, "v": 1}, {"id": 2, "v": 2}, {"id": 3, "v": 3}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&o), (Some(3), Some(0), Some(0)));
        // Existing keys unchanged and changed, a new key: no key twice.
        let o = writer
            .upsert(batch(
                &fields,
                json!([{"id": 1, "v": 1}, {"id": 2, "v": 20}, {"id": 4, "v": 4}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&o), (Some(1), Some(1), Some(1)));
        // Key 5 twice (inserted, then updated by its second row), key 3 changed.
        let o = writer
            .upsert(batch(
                &fields,
                json!([{"id": 5, "v": 5}, {"id": 3, "v": 30}, {"id": 5, "v": 50}]),
            ))
            .await
            .unwrap();
        assert_eq!(counts(&o), (Some(1), Some(2), Some(0)));
        writer.flush().await.unwrap();
        assert_eq!(
            db.strings("SELECT CAST(SUM(v) AS CHAR) FROM ints").await[0][0].as_deref(),
            Some("105")
        );
    });
}

#[test]
fn upserts_count_inserted_updated_and_unchanged() {
    with_db(|mut db| async move {
        let fields = vec![
            field("k", DataType::Text, false),
            field("v", DataType::Int64, true),
            field("note", DataType::Text, true),
        ];
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request("kv", fields.clone(), &["k"]))
            .await
            .unwrap();
        // Keys differing only in case, accents or trailing spaces stay distinct.
        let first = batch(
            &fields,
            json!([{"k": "a", "v": 1}, {"k": "A", "v": 2}, {"k": "á", "v": 3}, {"k": "a ", "v": 4}]),
        );
        let o = writer.upsert(first.clone()).await.unwrap();
        assert_eq!(counts(&o), (Some(4), Some(0), Some(0)));
        // Not visible to others before the flush, visible after.
        assert_eq!(
            db.strings("SELECT CAST(COUNT(*) AS CHAR) FROM kv").await[0][0].as_deref(),
            Some("0")
        );
        writer.flush().await.unwrap();
        assert_eq!(
            db.strings("SELECT CAST(COUNT(*) AS CHAR) FROM kv").await[0][0].as_deref(),
            Some("4")
        );

        let o = writer.upsert(first).await.unwrap();
        assert_eq!(counts(&o), (Some(0), Some(0), Some(4)));
        let o = writer
            .upsert(batch(
                &fields,
                json!([{"k": "a", "v": 10}, {"k": "A", "v": 2}, {"k": "new", "v": 5},
                       {"k": "new", "v": 6}, {"k": "á", "v": 3, "note": "x"}]),
            ))
            .await
            .unwrap();
        // "new" twice: inserted, then updated by its second row.
        assert_eq!(counts(&o), (Some(1), Some(3), Some(1)));
        writer.flush().await.unwrap();
        let rows = db
            .strings("SELECT k, CAST(v AS CHAR), note FROM kv ORDER BY k")
            .await;
        let rows: Vec<(String, String, Option<String>)> = rows
            .into_iter()
            .map(|r| (r[0].clone().unwrap(), r[1].clone().unwrap(), r[2].clone()))
            .collect();
        assert!(rows.contains(&("a".into(), "10".into(), None)));
        assert!(rows.contains(&("new".into(), "6".into(), None)));
        assert!(rows.contains(&("á".into(), "3".into(), Some("x".into()))));
        assert_eq!(rows.len(), 5);

        // A batch with only some columns leaves the others alone.
        let partial = vec![
            field("k", DataType::Text, false),
            field("note", DataType::Text, true),
        ];
        let o = writer
            .upsert(batch(&partial, json!([{"k": "a", "note": "only note"}])))
            .await
            .unwrap();
        assert_eq!(counts(&o), (Some(0), Some(1), Some(0)));
        writer.flush().await.unwrap();
        assert_eq!(
            db.strings("SELECT CAST(v AS CHAR), note FROM kv WHERE k = 'a' COLLATE utf8mb4_bin")
                .await,
            [[Some("10".to_owned()), Some("only note".to_owned())]]
        );

        // Large batches are split into several statements and still counted exactly.
        let big: Vec<Value> = (0..25_000)
            .map(|i| json!({"k": format!("big{i}"), "v": i}))
            .collect();
        let o = writer
            .upsert(batch(&fields, Value::Array(big.clone())))
            .await
            .unwrap();
        assert_eq!(counts(&o), (Some(25_000), Some(0), Some(0)));
        let mut changed = big;
        for row in changed.iter_mut().take(100) {
            row["v"] = json!(-1);
        }
        let o = writer
            .upsert(batch(&fields, Value::Array(changed)))
            .await
            .unwrap();
        assert_eq!(counts(&o), (Some(0), Some(100), Some(24_900)));
        writer.flush().await.unwrap();
    });
}

#[test]
fn deletes_remove_rows_by_key() {
    with_db(|db| async move {
        let fields = vec![
            field("a", DataType::Int32, false),
            field("b", DataType::Text, false),
            field("v", DataType::Text, true),
        ];
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request("pairs", fields.clone(), &["a", "b"]))
            .await
            .unwrap();
        let rows: Vec<Value> = (0..10)
            .map(|i| json!({"a": i % 3, "b": format!("k{i}"), "v": "x"}))
            .collect();
        writer
            .upsert(batch(&fields, Value::Array(rows)))
            .await
            .unwrap();
        writer.flush().await.unwrap();
        let keys = vec![
            field("a", DataType::Int32, false),
            field("b", DataType::Text, false),
        ];
        let o = writer
            .delete(batch(
                &keys,
                json!([{"a": 0, "b": "k0"}, {"a": 1, "b": "k1"}, {"a": 2, "b": "k1"}, {"a": 9, "b": "zz"}]),
            ))
            .await
            .unwrap();
        assert_eq!(o.deleted, Some(2));
        writer.flush().await.unwrap();
        let mut source = db.source().await;
        let left = all_rows(&read_all(&mut source, request("pairs")).await.unwrap());
        assert_eq!(left.len(), 8);
        assert!(!left
            .iter()
            .any(|r| r["b"] == json!("k0") || r["b"] == json!("k1")));
        // A delete batch may carry more than the key; only the key is used.
        let o = writer
            .delete(batch(&fields, json!([{"a": 2, "b": "k2", "v": "ignored"}])))
            .await
            .unwrap();
        assert_eq!(o.deleted, Some(1));
        writer.flush().await.unwrap();
    });
}

#[test]
fn schema_evolution_adds_ignores_or_fails() {
    with_db(|mut db| async move {
        db.exec("CREATE TABLE people (id BIGINT PRIMARY KEY, name VARCHAR(50))")
            .await;
        db.exec("CREATE TABLE loose (id BIGINT, name TEXT)").await;
        let fields = vec![
            field("id", DataType::Int64, false),
            field("name", DataType::Text, true),
            field("born", DataType::Date, true),
        ];
        let mut destination = db.destination().await;
        let mut req = open_request("people", fields.clone(), &["id"]);

        req.schema_evolution = SchemaEvolution::Fail;
        let e = destination.open_stream(req.clone()).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("born"), "{}", e.message);

        req.schema_evolution = SchemaEvolution::Ignore;
        let mut writer = destination.open_stream(req.clone()).await.unwrap();
        let rows = json!([{"id": 1, "name": "Ada", "born": "1815-12-10"}]);
        let o = writer.upsert(batch(&fields, rows.clone())).await.unwrap();
        assert_eq!(o.inserted, Some(1));
        writer.flush().await.unwrap();
        assert_eq!(db.strings("SELECT CAST(COUNT(*) AS CHAR) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'people'").await[0][0].as_deref(), Some("2"));

        req.schema_evolution = SchemaEvolution::AddColumns;
        let mut writer = destination.open_stream(req.clone()).await.unwrap();
        let o = writer.upsert(batch(&fields, rows)).await.unwrap();
        assert_eq!(counts(&o), (Some(0), Some(1), Some(0)));
        writer.flush().await.unwrap();
        assert_eq!(
            db.strings("SELECT CAST(born AS CHAR) FROM people").await,
            [[Some("1815-12-10".to_owned())]]
        );

        // An existing table without a unique index on the key cannot be upserted into.
        let e = destination
            .open_stream(open_request("loose", fields[..2].to_vec(), &["id"]))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("ADD UNIQUE (`id`)"), "{}", e.message);

        // A missing table with creation off is a schema error.
        let mut no_create = open_request("absent", fields.clone(), &["id"]);
        no_create.create_if_missing = false;
        let e = destination.open_stream(no_create).await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::SCHEMA);
    });
}

#[test]
fn odd_identifiers_are_quoted_everywhere() {
    with_db(|db| async move {
        let table = "odd `name` é 表 select";
        let fields = vec![
            field("select", DataType::Int32, false),
            field("a b", DataType::Text, false),
            field("x`y", DataType::Text, true),
            field("ünï", DataType::TimestampTz, true),
            field(
                "order",
                DataType::Decimal {
                    precision: 12,
                    scale: 2,
                },
                true,
            ),
        ];
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request(table, fields.clone(), &["select", "a b"]))
            .await
            .unwrap();
        let written = json!([
            {"select": 1, "a b": "p q", "x`y": "`", "ünï": "2024-01-01T00:00:00Z", "order": "1.50"},
            {"select": 1, "a b": "r", "x`y": null, "ünï": null, "order": null},
            {"select": 2, "a b": "p q", "x`y": "''", "ünï": "2024-06-01T12:30:00.5Z", "order": "-0.01"}
        ]);
        let o = writer.upsert(batch(&fields, written)).await.unwrap();
        assert_eq!(o.inserted, Some(3));
        let keys = vec![
            field("select", DataType::Int32, false),
            field("a b", DataType::Text, false),
        ];
        let o = writer
            .delete(batch(&keys, json!([{"select": 1, "a b": "r"}])))
            .await
            .unwrap();
        assert_eq!(o.deleted, Some(1));
        writer.flush().await.unwrap();

        let mut source = db.source().await;
        let catalog = source.discover().await.unwrap();
        let stream = catalog.stream(table).unwrap();
        assert_eq!(stream.primary_key, ["select", "a b"]);
        let got = all_rows(
            &read_all(
                &mut source,
                ReadRequest {
                    mode: ReadMode::Incremental,
                    cursor_field: Some("ünï".into()),
                    batch_size: Some(1),
                    fields: Some(vec!["x`y".into(), "order".into()]),
                    ..request(table)
                },
            )
            .await
            .unwrap(),
        );
        assert_eq!(
            got,
            rows(json!([{"x`y": "`", "order": "1.50"}, {"x`y": "''", "order": "-0.01"}]))
        );
    });
}

#[test]
fn values_that_do_not_fit_are_rejected_not_truncated() {
    with_db(|mut db| async move {
        db.exec(
            "CREATE TABLE strict_t (id INT PRIMARY KEY, n INT, s VARCHAR(3), m VARCHAR(10) CHARACTER SET utf8mb3, \
             p DECIMAL(5,2), at DATETIME, tm TIME, j JSON, u UUID)",
        )
        .await;
        let fields = vec![
            field("id", DataType::Int32, false),
            field("n", DataType::Int64, true),
            field("s", DataType::Text, true),
            field("m", DataType::Text, true),
            field(
                "p",
                DataType::Decimal {
                    precision: 10,
                    scale: 4,
                },
                true,
            ),
            field("at", DataType::Timestamp, true),
            field("tm", DataType::Time, true),
            field("j", DataType::Json, true),
            field("u", DataType::Uuid, true),
        ];
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request("strict_t", fields.clone(), &["id"]))
            .await
            .unwrap();
        let rows = json!([
            {"id": 1, "n": 5, "s": "abc", "m": "ok", "p": "1.2500", "at": "2024-01-01T00:00:00", "tm": "10:00:00", "j": {"a": 1}},
            {"id": 2, "n": 1i64 << 40},
            {"id": 3, "s": "abcd"},
            {"id": 4, "m": "😀"},
            {"id": 5, "p": "1.2550"},
            {"id": 6, "p": "123456.0000"},
            {"id": 7, "at": "0999-12-31T23:59:59"},
            {"id": 8, "at": "2024-01-01T00:00:00.5"},
            {"id": 9, "tm": "10:00:00.25"},
            {"id": 10, "u": "not-a-uuid"},
            {"id": 11, "s": "xyz"}
        ]);
        let mut b = batch(&fields, rows);
        // Invalid JSON text cannot come from batch_from_rows; splice it in.
        let mut json_col = lockstep_plugin_sdk::arrow::array::StringBuilder::new();
        for i in 0..b.num_rows() {
            if i == 10 {
                json_col.append_value("{not json");
            } else if i == 0 {
                json_col.append_value("{\"a\": 1}");
            } else {
                json_col.append_null();
            }
        }
        let mut columns = b.columns().to_vec();
        columns[7] = std::sync::Arc::new(json_col.finish());
        b = RecordBatch::try_new(b.schema(), columns).unwrap();

        let o = writer.upsert(b).await.unwrap();
        let rejected: Vec<(usize, Option<&str>)> = o
            .rejected
            .iter()
            .map(|r| (r.row, r.field.as_deref()))
            .collect();
        assert_eq!(
            rejected,
            [
                (1, Some("n")),
                (2, Some("s")),
                (3, Some("m")),
                (4, Some("p")),
                (5, Some("p")),
                (6, Some("at")),
                (7, Some("at")),
                (8, Some("tm")),
                (9, Some("u")),
                (10, Some("j")),
            ],
            "{:#?}",
            o.rejected
        );
        assert_eq!(o.inserted, Some(1));
        writer.flush().await.unwrap();
        assert_eq!(
            db.strings("SELECT CAST(id AS CHAR), s, CAST(p AS CHAR) FROM strict_t")
                .await,
            [[
                Some("1".to_owned()),
                Some("abc".to_owned()),
                Some("1.25".to_owned())
            ]]
        );

        // Created tables refuse dates before year 1000 too.
        let ts = vec![
            field("id", DataType::Int32, false),
            field("at", DataType::TimestampTz, true),
        ];
        let mut writer = destination
            .open_stream(open_request("times", ts.clone(), &["id"]))
            .await
            .unwrap();
        let o = writer
            .upsert(batch(&ts, json!([{"id": 1, "at": "0500-01-01T00:00:00Z"}, {"id": 2, "at": "1000-01-01T00:00:00Z"}])))
            .await
            .unwrap();
        assert_eq!(o.rejected.len(), 1);
        assert_eq!(
            (o.rejected[0].row, o.rejected[0].field.as_deref()),
            (0, Some("at"))
        );
        assert!(
            o.rejected[0].reason.contains("year 500"),
            "{}",
            o.rejected[0].reason
        );
        writer.flush().await.unwrap();
    });
}

#[test]
fn a_connection_killed_mid_read_is_transient_and_the_read_resumes() {
    with_db(|mut db| async move {
        db.exec("CREATE TABLE big (id INT PRIMARY KEY, v TEXT)")
            .await;
        let values: Vec<String> = (0..20).map(|i| format!("({i}, 'v{i}')")).collect();
        db.exec(&format!("INSERT INTO big VALUES {}", values.join(", ")))
            .await;
        let mut source = db.source().await;
        let mut reader = source
            .read(ReadRequest {
                batch_size: Some(5),
                ..request("big")
            })
            .await
            .unwrap();
        let (first, _) = reader.next_batch().await.unwrap().unwrap();
        let mut ids: Vec<i64> = rows_from_batch(&first)
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect();
        db.exec(&format!("KILL CONNECTION {}", reader.connection_id()))
            .await;
        let e = reader
            .next_batch()
            .await
            .expect_err("the killed connection fails");
        assert_eq!(e.kind, ErrorKind::TRANSIENT, "{}", e.message);
        while let Some((b, _)) = reader.next_batch().await.unwrap() {
            ids.extend(
                rows_from_batch(&b)
                    .iter()
                    .map(|r| r["id"].as_i64().unwrap()),
            );
        }
        assert_eq!(ids, (0..20).collect::<Vec<i64>>());

        // Killed while a query runs: a view that sleeps per row keeps the query busy.
        db.exec("CREATE VIEW slow AS SELECT id, v, SLEEP(0.1) AS z FROM big")
            .await;
        let mut reader = source
            .read(ReadRequest {
                key: vec!["id".into()],
                batch_size: Some(20),
                ..request("slow")
            })
            .await
            .unwrap();
        let id = reader.connection_id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(400));
            block_on(async move {
                let mut c = MySqlConnection::connect(&base_url()).await.unwrap();
                c.execute(format!("KILL CONNECTION {id}").as_str())
                    .await
                    .unwrap();
            })
        });
        let e = reader
            .next_batch()
            .await
            .expect_err("the killed query fails");
        killer.join().unwrap();
        assert_eq!(e.kind, ErrorKind::TRANSIENT, "{}", e.message);
    });
}

#[test]
fn a_writer_whose_transaction_was_lost_fails_its_flush() {
    with_db(|mut db| async move {
        let fields = vec![field("id", DataType::Int32, false)];
        let mut destination = db.destination().await;
        let mut writer = destination
            .open_stream(open_request("w", fields.clone(), &["id"]))
            .await
            .unwrap();
        writer
            .upsert(batch(&fields, json!([{"id": 1}])))
            .await
            .unwrap();
        let id = db
            .strings("SELECT CAST(ID AS CHAR) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()")
            .await;
        for row in id {
            db.exec(&format!("KILL CONNECTION {}", row[0].clone().unwrap()))
                .await;
        }
        let e = writer
            .upsert(batch(&fields, json!([{"id": 2}])))
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind, ErrorKind::TRANSIENT, "{}", e.message);
        let e = writer.flush().await.err().unwrap();
        assert_eq!(e.kind, ErrorKind::TRANSIENT);
        assert!(e.message.contains("lost"), "{}", e.message);
        // The writer reconnects and goes on.
        writer
            .upsert(batch(&fields, json!([{"id": 1}, {"id": 2}])))
            .await
            .unwrap();
        writer.flush().await.unwrap();
        assert_eq!(
            db.strings("SELECT CAST(COUNT(*) AS CHAR) FROM w").await[0][0].as_deref(),
            Some("2")
        );
    });
}

#[test]
fn deadlocks_are_transient_and_the_victim_reports_lost_writes() {
    with_db(|db| async move {
        let fields = vec![
            field("id", DataType::Int32, false),
            field("by", DataType::Text, true),
        ];
        let mut destination = db.destination().await;
        let mut b = destination
            .open_stream(open_request("locks", fields.clone(), &["id"]))
            .await
            .unwrap();
        b.upsert(batch(&fields, json!([{"id": 2, "by": "b"}])))
            .await
            .unwrap();
        // Writer A lives on a thread with its own runtime (connections belong to the
        // runtime that opened them): it locks row 1, then waits for row 2, held by B.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let config = db.config();
        let fields_a = fields.clone();
        let waiting = std::thread::spawn(move || {
            block_on(async move {
                let mut destination = MySqlDestination::open(config, standalone_context())
                    .await
                    .unwrap();
                let mut a = destination
                    .open_stream(open_request("locks", fields_a.clone(), &["id"]))
                    .await
                    .unwrap();
                a.upsert(batch(&fields_a, json!([{"id": 1, "by": "a"}])))
                    .await
                    .unwrap();
                ready_tx.send(()).unwrap();
                let r = a
                    .upsert(batch(&fields_a, json!([{"id": 2, "by": "a"}])))
                    .await;
                let flushed = a.flush().await;
                (r, flushed)
            })
        });
        ready_rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let r_b = b
            .upsert(batch(&fields, json!([{"id": 1, "by": "b"}])))
            .await;
        let flushed_b = b.flush().await;
        let (r_a, flushed_a) = waiting.join().unwrap();
        let (victim, victim_flush, winner, winner_flush) = match r_b {
            Err(e) => (e, flushed_b, r_a, flushed_a),
            Ok(o) => (
                r_a.expect_err("one side is the deadlock victim"),
                flushed_a,
                Ok(o),
                flushed_b,
            ),
        };
        assert_eq!(victim.kind, ErrorKind::TRANSIENT, "{}", victim.message);
        assert!(victim.message.contains("1213"), "{}", victim.message);
        let lost = victim_flush.expect_err("the victim's earlier write was rolled back");
        assert_eq!(lost.kind, ErrorKind::TRANSIENT);
        winner.unwrap();
        winner_flush.unwrap();
    });
}

fn open_error(config: Config) -> ConnectorError {
    block_on(async {
        let mut source = match MySqlSource::open(config, standalone_context()).await {
            Ok(s) => s,
            Err(e) => return e,
        };
        source.check().await.expect_err("the check fails")
    })
}

#[test]
fn errors_have_the_right_kinds_and_no_secrets() {
    with_db(|db| async move {
        let url = base_url();
        let (scheme, host) = url.split_once("://").unwrap();
        let host = host
            .rsplit_once('@')
            .map(|(_, h)| h)
            .unwrap_or(host)
            .to_owned();
        let scheme = scheme.to_owned();
        let name = db.name.clone();
        let results = std::thread::spawn(move || {
            let config = |url: String| Config {
                url,
                password_env: None,
                read: ReadConfig::default(),
            };
            let auth = open_error(config(format!(
                "{scheme}://nobody_here:s3cret-pw@{host}/{name}"
            )));
            let unknown_db = open_error(config(format!(
                "{scheme}://root@{host}/lockstep_no_such_db"
            )));
            let refused = open_error(config(format!(
                "{scheme}://root:s3cret-pw@127.0.0.1:1/{name}"
            )));
            std::env::set_var("LOCKSTEP_TEST_MYSQL_PW", "env-s3cret");
            let env_auth = open_error(Config {
                password_env: Some("LOCKSTEP_TEST_MYSQL_PW".into()),
                ..config(format!("{scheme}://nobody_here@{host}/{name}"))
            });
            std::env::set_var("LOCKSTEP_TEST_MYSQL_EMPTY_PW", "");
            let env_ok = block_on(async {
                let mut source = MySqlSource::open(
                    Config {
                        password_env: Some("LOCKSTEP_TEST_MYSQL_EMPTY_PW".into()),
                        ..config(format!("{scheme}://root@{host}/{name}"))
                    },
                    standalone_context(),
                )
                .await?;
                source.check().await
            });
            assert!(env_ok.is_ok(), "{:?}", env_ok.err());
            let missing_env = open_error(Config {
                password_env: Some("LOCKSTEP_TEST_NO_SUCH_VAR".into()),
                ..config(format!("{scheme}://root@{host}/{name}"))
            });
            (auth, unknown_db, refused, env_auth, missing_env)
        })
        .join()
        .unwrap();
        let (auth, unknown_db, refused, env_auth, missing_env) = results;
        assert_eq!(auth.kind, ErrorKind::AUTH, "{}", auth.message);
        assert_eq!(env_auth.kind, ErrorKind::AUTH, "{}", env_auth.message);
        assert_eq!(unknown_db.kind, ErrorKind::CONFIG, "{}", unknown_db.message);
        assert_eq!(refused.kind, ErrorKind::TRANSIENT, "{}", refused.message);
        assert_eq!(
            missing_env.kind,
            ErrorKind::CONFIG,
            "{}",
            missing_env.message
        );
        for e in [&auth, &unknown_db, &refused, &env_auth, &missing_env] {
            assert!(!e.message.contains("s3cret"), "{}", e.message);
        }

        // TLS required against a server without it is refused, not downgraded.
        let mut tls = db.config();
        tls.url.push_str("?ssl-mode=required");
        let mut plain = MySqlSource::open(db.config(), standalone_context())
            .await
            .unwrap();
        let admin = plain.shared.conn().await.unwrap();
        let have_ssl: String = sqlx::query("SELECT CAST(@@have_ssl AS CHAR)")
            .fetch_one(&mut *admin.0)
            .await
            .and_then(|r| r.try_get_unchecked(0))
            .unwrap_or_else(|_| "YES".into());
        if have_ssl != "YES" {
            let e = std::thread::spawn(move || open_error(tls)).join().unwrap();
            assert_eq!(e.kind, ErrorKind::CONFIG, "{}", e.message);
            assert!(e.message.contains("ssl-mode"), "{}", e.message);
        }
    });
}
