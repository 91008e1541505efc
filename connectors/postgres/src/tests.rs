//! Tests against the real server at `LOCKSTEP_TEST_POSTGRES_URL` (by default 127.0.0.1:5432, user
//! `postgres`, trust auth). Each test works in a database of its own from
//! `lockstep_test_support::LiveDb`, dropped when done, even when the test fails; an
//! unreachable server is a recorded skip, and a failure under CI.

use lockstep_plugin_sdk::api::ErrorKind;
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::{batch_from_rows, rows_from_batch};
use lockstep_plugin_sdk::{
    block_on, standalone_context, BatchReader, ConnectorError, DataType, DestinationConnector,
    FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, SchemaEvolution, SourceConnector,
    StreamWriter, WriteOutcome,
};
use serde_json::{json, Map, Value};
use sqlx::{Connection, PgConnection};

use crate::config::{Config, Settings};
use crate::{PgDestination, PgReader, PgSource, PgWriter};
use lockstep_sql_kit::ReadConfig;
use lockstep_test_support::{LiveDb, Server};

/// The server the tests run against, without a database.
fn server() -> String {
    Server::Postgres.base_url()
}

/// A database of its own for one test (the shared live-database fixture), dropped on drop.
struct TestDb {
    live: LiveDb,
}

impl TestDb {
    fn create() -> Option<TestDb> {
        LiveDb::create(Server::Postgres, "lockstep_pg").map(|live| TestDb { live })
    }

    fn url(&self) -> String {
        self.live.url()
    }

    fn config(&self, schema: &str, batch_size: Option<usize>, lookback: Option<&str>) -> Config {
        Config {
            url: self.url(),
            schema: schema.into(),
            read: ReadConfig {
                batch_size,
                lookback: lookback.map(str::to_owned),
            },
            password_env: None,
            key_summary_workers: 0,
        }
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url())
            .await
            .expect("connect to the test database")
    }

    async fn exec(&self, sql: &str) {
        let mut c = self.conn().await;
        sqlx::raw_sql(sql)
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn text(&self, sql: &str) -> String {
        let mut c = self.conn().await;
        sqlx::query_scalar::<_, Option<String>>(sql)
            .fetch_one(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or_default()
    }

    async fn source(&self, batch_size: Option<usize>) -> PgSource {
        ok(PgSource::open(
            self.config("public", batch_size, None),
            standalone_context(),
        )
        .await)
    }

    async fn dest(&self) -> PgDestination {
        ok(PgDestination::open(self.config("public", None, None), standalone_context()).await)
    }
}

fn ok<T>(r: Result<T, ConnectorError>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("unexpected error ({}): {}", e.kind.name(), e.message),
    }
}

fn err<T>(r: Result<T, ConnectorError>) -> ConnectorError {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn field(name: &str, data_type: DataType, nullable: bool) -> FieldInfo {
    FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: None,
    }
}

fn objects(rows: Value) -> Vec<Map<String, Value>> {
    rows.as_array()
        .expect("an array of rows")
        .iter()
        .map(|r| r.as_object().expect("a row object").clone())
        .collect()
}

fn batch(fields: &[FieldInfo], rows: Value) -> RecordBatch {
    batch_from_rows(fields, &objects(rows)).expect("rows fit the fields")
}

async fn read_all(reader: &mut PgReader) -> Vec<(RecordBatch, Value)> {
    let mut out = Vec::new();
    while let Some(b) = ok(reader.next_batch().await) {
        out.push(b);
        assert!(out.len() < 10_000, "a read that never ends");
    }
    out
}

fn ids(batches: &[(RecordBatch, Value)], name: &str) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|(b, _)| rows_from_batch(b))
        .map(|r| r[name].as_i64().expect("an integer id"))
        .collect()
}

fn request(stream: &str) -> ReadRequest {
    ReadRequest {
        stream: stream.into(),
        ..ReadRequest::default()
    }
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
        o.inserted.unwrap_or(99),
        o.updated.unwrap_or(99),
        o.unchanged.unwrap_or(99),
    )
}

const ALL_TYPES_DDL: &str = r#"
CREATE EXTENSION IF NOT EXISTS citext;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE all_types (
    id bigint PRIMARY KEY,
    b boolean,
    i2 smallint,
    i4 integer,
    i8 bigint,
    f4 real,
    f8 double precision,
    n_10_2 numeric(10,2),
    n_38 numeric(38,0),
    n_38_37 numeric(38,37),
    n_free numeric,
    n_wide numeric(50,5),
    t text,
    vc varchar(10),
    ch char(5),
    ci citext,
    by bytea,
    d date,
    tm time,
    ts timestamp,
    tstz timestamptz,
    ts3 timestamp(3),
    u uuid,
    j json,
    jb jsonb,
    ai integer[],
    at text[],
    m mood,
    p posint,
    iv interval,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"#;

const ALL_TYPES_ROWS: &str = r#"
INSERT INTO all_types VALUES
 (1, true, 32767, 2147483647, 9223372036854775807, 3.4028235e38, 1.7976931348623157e308,
  12345678.91, 99999999999999999999999999999999999999, 9.9999999999999999999999999999999999999,
  123456789012345678901234567890.123456789012345678901234567890,
  123456789012345678901234567890123456789012345.12345,
  'Zoë ☃ 日本語 🎉', 'ten chars!', 'ab', 'MiXeD', '\x00ff10'::bytea,
  '2024-02-29', '23:59:59.999999', '2024-05-01 10:00:00.123456', '2024-05-01 10:00:00.123456+02',
  '2024-05-01 10:00:00.123', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"b": 1, "a": [1, 2.5, null]}', '{"k": "v", "n": {"x": true}}',
  '{1,NULL,-3}', '{"a \"quoted\" b", "", NULL, "ü"}', 'happy', 7, '1 day 02:03:04', '2024-05-01 00:00:00+00'),
 (2, false, -32768, -2147483648, -9223372036854775808, -1.5, -0.0, -0.01,
  -99999999999999999999999999999999999999, -0.0000000000000000000000000000000000001,
  'NaN', -0.00001, '', '', '', '', ''::bytea,
  'infinity', '00:00:00', '-infinity', 'infinity', '4713-12-01 00:00:00 BC',
  '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', 'sad', 1, '-1 mons', '2024-05-01 00:00:00+00'),
 (3, NULL, NULL, NULL, NULL, 'NaN', 'Infinity', NULL, 0, 0, '-Infinity', NULL, NULL, NULL, NULL, NULL, NULL,
  '0044-03-15 BC', NULL, '1999-12-31 23:59:59.999999', '1970-01-01 00:00:00+00', NULL, NULL,
  'null', 'null', '{{1,2},{3,4}}', NULL, NULL, NULL, NULL, '2024-05-02 00:00:00+00'),
 (4, NULL, NULL, NULL, NULL, NULL, '-Infinity', NULL, NULL, NULL, '0.000', NULL, 'line1
line2	tab \ backslash '' quote', NULL, NULL, NULL, NULL,
  '-infinity', '24:00:00', NULL, '-infinity', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2024-05-02 00:00:00+00');
"#;

#[test]
fn discover_maps_native_types_to_logical_ones() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(ALL_TYPES_DDL).await;
        db.exec(
            "CREATE VIEW v_types AS SELECT id, t FROM all_types; \
             CREATE TABLE pairs (a int, b text, modified_on timestamp, PRIMARY KEY (b, a));",
        )
        .await;
        let mut source = db.source(None).await;
        ok(source.check().await);
        let catalog = ok(source.discover().await);
        let names: Vec<&str> = catalog.streams.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["all_types", "pairs", "v_types"]);
        let all = catalog.stream("all_types").unwrap();
        let ty = |n: &str| {
            all.field(n)
                .unwrap_or_else(|| panic!("field {n}"))
                .data_type
        };
        use DataType as D;
        for (name, expected) in [
            ("b", D::Boolean),
            ("i2", D::Int32),
            ("i4", D::Int32),
            ("i8", D::Int64),
            ("f4", D::Float32),
            ("f8", D::Float64),
            (
                "n_10_2",
                D::Decimal {
                    precision: 10,
                    scale: 2,
                },
            ),
            (
                "n_38",
                D::Decimal {
                    precision: 38,
                    scale: 0,
                },
            ),
            (
                "n_38_37",
                D::Decimal {
                    precision: 38,
                    scale: 37,
                },
            ),
            ("n_free", D::Text),
            ("n_wide", D::Text),
            ("t", D::Text),
            ("vc", D::Text),
            ("ch", D::Text),
            ("ci", D::Text),
            ("by", D::Binary),
            ("d", D::Date),
            ("tm", D::Time),
            ("ts", D::Timestamp),
            ("tstz", D::TimestampTz),
            ("u", D::Uuid),
            ("j", D::Json),
            ("jb", D::Json),
            ("ai", D::Json),
            ("at", D::Json),
            ("m", D::Text),
            ("p", D::Int32),
            ("iv", D::Text),
        ] {
            assert_eq!(ty(name), expected, "{name}");
        }
        assert_eq!(all.primary_key, ["id"]);
        assert!(!all.field("id").unwrap().nullable);
        assert!(all.field("t").unwrap().nullable);
        assert!(!all.field("updated_at").unwrap().nullable);
        assert_eq!(
            all.field("vc").unwrap().native_type.as_deref(),
            Some("character varying(10)")
        );
        assert_eq!(all.cursor_candidates, ["updated_at", "id"]);
        let pairs = catalog.stream("pairs").unwrap();
        assert_eq!(pairs.primary_key, ["b", "a"]);
        // A modification time counts; a composite key does not.
        assert_eq!(pairs.cursor_candidates, ["modified_on"]);
        let view = catalog.stream("v_types").unwrap();
        assert!(view.primary_key.is_empty());
    });
}

#[test]
fn full_reads_page_by_key_and_resume_from_checkpoints() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE people (id int PRIMARY KEY, name text NOT NULL); \
             INSERT INTO people SELECT g, 'p' || g FROM generate_series(25, 1, -1) g;",
        )
        .await;
        let mut source = db.source(Some(10)).await;
        let mut reader = ok(source.read(request("people")).await);
        let batches = read_all(&mut reader).await;
        assert_eq!(
            batches
                .iter()
                .map(|(b, _)| b.num_rows())
                .collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert_eq!(ids(&batches, "id"), (1..=25).collect::<Vec<_>>());
        assert_eq!(batches[0].1, json!({"key": [10]}));
        assert_eq!(batches[2].1, json!({"key": [25]}));

        // Resume after the first batch, reading one field only.
        let mut req = request("people");
        req.checkpoint = Some(batches[0].1.clone());
        req.fields = Some(vec!["name".into()]);
        req.batch_size = Some(4);
        let mut reader = ok(source.read(req).await);
        let rest = read_all(&mut reader).await;
        assert_eq!(rest[0].0.schema().fields().len(), 1);
        assert_eq!(rest.iter().map(|(b, _)| b.num_rows()).sum::<usize>(), 15);
        let names: Vec<Value> = rest
            .iter()
            .flat_map(|(b, _)| rows_from_batch(b))
            .map(|r| r["name"].clone())
            .collect();
        assert_eq!(names[0], json!("p11"));
        assert_eq!(rest.last().unwrap().1, json!({"key": [25]}));

        // Unknown streams and fields are schema errors that list what exists.
        let e = err(source.read(request("nobody")).await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("`people`"), "{}", e.message);
        let mut req = request("people");
        req.fields = Some(vec!["nme".into()]);
        let e = err(source.read(req).await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(
            e.message.contains("nme") && e.message.contains("`name`"),
            "{}",
            e.message
        );
    });
}

#[test]
fn reads_by_keys_find_composite_typed_and_many_keys_and_skip_missing_ones() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE lines (\"order\" text, line int, at timestamptz NOT NULL, \
             amount numeric(10,2) NOT NULL, PRIMARY KEY (\"order\", line)); \
             INSERT INTO lines SELECT 'o' || (g / 10), g % 10, \
             timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute', g / 4.0 \
             FROM generate_series(0, 2999) g;",
        )
        .await;
        let mut source = db.source(None).await;
        let by_keys = |key: &[&str], keys: Value, batch_size: Option<usize>| {
            let mut r = request("lines");
            r.key = key.iter().map(|k| k.to_string()).collect();
            r.keys = Some(
                keys.as_array()
                    .unwrap()
                    .iter()
                    .map(|k| k.as_array().unwrap().clone())
                    .collect(),
            );
            r.batch_size = batch_size;
            r
        };
        let rows_of = |batches: &[(RecordBatch, Value)]| -> Vec<(String, i64)> {
            batches
                .iter()
                .flat_map(|(b, _)| rows_from_batch(b))
                .map(|r| {
                    (
                        r["order"].as_str().unwrap().to_owned(),
                        r["line"].as_i64().unwrap(),
                    )
                })
                .collect()
        };

        // A composite key, with keys that match nothing; rows come in key order.
        let mut reader = ok(source
            .read(by_keys(
                &["order", "line"],
                json!([["o5", 3], ["missing", 1], ["o299", 9], ["o5", 99]]),
                None,
            ))
            .await);
        let found = read_all(&mut reader).await;
        assert_eq!(
            rows_of(&found),
            [("o299".to_owned(), 9), ("o5".to_owned(), 3)]
        );
        assert_eq!(found[0].1, Value::Null, "a read by keys has no position");

        // Values compare as their column's type: 1.5 is the numeric 1.50, and a timestamp
        // read from the table finds its row.
        let mut reader = ok(source
            .read(by_keys(&["amount"], json!([[1.5], ["2.25"]]), None))
            .await);
        assert_eq!(
            rows_of(&read_all(&mut reader).await),
            [("o0".to_owned(), 6), ("o0".to_owned(), 9)]
        );
        let mut all = request("lines");
        all.fields = Some(vec!["at".into()]);
        let at_10 = rows_from_batch(&read_all(&mut ok(source.read(all).await)).await[0].0)[10]
            ["at"]
            .clone();
        let mut reader = ok(source.read(by_keys(&["at"], json!([[at_10]]), None)).await);
        assert_eq!(
            rows_of(&read_all(&mut reader).await),
            [("o1".to_owned(), 0)]
        );

        // Many keys go in chunks of at most the batch size; a chunk that finds nothing is
        // skipped, and every row is found once.
        let real: Vec<Value> = (0..3000)
            .map(|g| json!([format!("o{}", g / 10), g % 10]))
            .collect();
        let mut keys = real[..1400].to_vec();
        keys.extend((0..700).map(|g| json!([format!("none{g}"), 1])));
        keys.extend_from_slice(&real[1400..]);
        let mut reader = ok(source
            .read(by_keys(&["order", "line"], Value::Array(keys), Some(700)))
            .await);
        let found = read_all(&mut reader).await;
        let sizes: Vec<usize> = found.iter().map(|(b, _)| b.num_rows()).collect();
        assert_eq!(sizes, [700, 700, 700, 700, 200]);
        let mut rows = rows_of(&found);
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), 3000);

        // No keys, no rows; a key of the wrong width is refused with the key's fields.
        let mut reader = ok(source
            .read(by_keys(&["order", "line"], json!([]), None))
            .await);
        assert!(read_all(&mut reader).await.is_empty());
        let e = err(source
            .read(by_keys(&["order", "line"], json!([["o1"]]), None))
            .await);
        assert_eq!(e.kind, ErrorKind::CONFIG);
        assert!(e.message.contains("order, line"), "{}", e.message);
    });
}

#[test]
fn incremental_reads_neither_skip_nor_repeat_rows_sharing_a_cursor() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE ev (id int PRIMARY KEY, updated_at timestamptz); \
             INSERT INTO ev SELECT g, '2024-05-01 10:00:00+00' FROM generate_series(1, 30) g; \
             INSERT INTO ev VALUES (100, NULL);",
        )
        .await;
        let mut source = db.source(None).await;
        let incremental = |checkpoint: Option<Value>| ReadRequest {
            stream: "ev".into(),
            mode: ReadMode::Incremental,
            cursor_field: Some("updated_at".into()),
            checkpoint,
            batch_size: Some(7),
            ..ReadRequest::default()
        };
        let mut reader = ok(source.read(incremental(None)).await);
        let batches = read_all(&mut reader).await;
        assert_eq!(ids(&batches, "id"), (1..=30).collect::<Vec<_>>());
        assert_eq!(batches.len(), 5);
        assert_eq!(
            batches[1].1,
            json!({"cursor": "2024-05-01T10:00:00Z", "key": [14]})
        );
        let last = batches.last().unwrap().1.clone();

        // Resuming in the middle of the tie reads the rest of it once.
        let mut reader = ok(source.read(incremental(Some(batches[1].1.clone()))).await);
        assert_eq!(
            ids(&read_all(&mut reader).await, "id"),
            (15..=30).collect::<Vec<_>>()
        );

        // New rows at the same instant with larger keys, and later ones, are read next.
        db.exec(
            "INSERT INTO ev SELECT g, '2024-05-01 10:00:00+00' FROM generate_series(31, 35) g; \
             INSERT INTO ev VALUES (36, '2024-05-01 10:00:01+00'), (0, '2024-05-01 10:00:02+00');",
        )
        .await;
        let mut reader = ok(source.read(incremental(Some(last))).await);
        let next = read_all(&mut reader).await;
        assert_eq!(ids(&next, "id"), [31, 32, 33, 34, 35, 36, 0]);
        let end = next.last().unwrap().1.clone();
        let mut reader = ok(source.read(incremental(Some(end))).await);
        assert!(read_all(&mut reader).await.is_empty());

        // A cursor is required.
        let mut req = incremental(None);
        req.cursor_field = None;
        assert_eq!(err(source.read(req).await).kind, ErrorKind::CONFIG);
    });
}

#[test]
fn lookback_rereads_a_window_before_the_cursor() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE ev (id int PRIMARY KEY, updated_at timestamp NOT NULL); \
             INSERT INTO ev VALUES (1, '2024-05-01 09:50:00'), (2, '2024-05-01 09:57:00'), \
                                   (3, '2024-05-01 10:00:00'), (4, '2024-05-01 10:00:00'), \
                                   (5, '2024-05-01 10:01:00');",
        )
        .await;
        let checkpoint = json!({"cursor": "2024-05-01T10:00:00", "key": [3]});
        let req = |checkpoint: Value, batch: usize| ReadRequest {
            stream: "ev".into(),
            mode: ReadMode::Incremental,
            cursor_field: Some("updated_at".into()),
            checkpoint: Some(checkpoint),
            batch_size: Some(batch),
            ..ReadRequest::default()
        };
        let mut plain = db.source(None).await;
        let mut reader = ok(plain.read(req(checkpoint.clone(), 10)).await);
        assert_eq!(ids(&read_all(&mut reader).await, "id"), [4, 5]);

        let mut source =
            ok(PgSource::open(db.config("public", None, Some("5m")), standalone_context()).await);
        for batch in [10, 1, 2] {
            let mut reader = ok(source.read(req(checkpoint.clone(), batch)).await);
            assert_eq!(
                ids(&read_all(&mut reader).await, "id"),
                [2, 3, 4, 5],
                "batch {batch}"
            );
        }
        // Lookback only applies to time cursors; bad intervals are config errors.
        let mut by_id = req(json!({"cursor": 3, "key": [3]}), 10);
        by_id.cursor_field = Some("id".into());
        assert_eq!(err(source.read(by_id).await).kind, ErrorKind::CONFIG);
        let e = err(PgSource::open(
            db.config("public", None, Some("5 parsecs")),
            standalone_context(),
        )
        .await);
        assert_eq!(e.kind, ErrorKind::CONFIG, "{}", e.message);
        let mut zero =
            ok(PgSource::open(db.config("public", None, Some("0s")), standalone_context()).await);
        let mut reader = ok(zero.read(req(checkpoint.clone(), 10)).await);
        assert_eq!(ids(&read_all(&mut reader).await, "id"), [4, 5]);
    });
}

#[test]
fn every_type_round_trips_through_a_sync() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(ALL_TYPES_DDL).await;
        db.exec(ALL_TYPES_ROWS).await;
        db.exec("CREATE TABLE copy_of (LIKE all_types INCLUDING ALL)")
            .await;
        let mut source = db.source(Some(3)).await;
        let catalog = ok(source.discover().await);
        let fields = catalog.stream("all_types").unwrap().fields.clone();
        let mut reader = ok(source.read(request("all_types")).await);
        let batches = read_all(&mut reader).await;
        assert_eq!(batches.len(), 2);
        let rows: Vec<_> = batches
            .iter()
            .flat_map(|(b, _)| rows_from_batch(b))
            .collect();
        assert_eq!(rows[0]["i8"], json!(i64::MAX));
        assert_eq!(rows[1]["i8"], json!(i64::MIN));
        assert_eq!(
            rows[0]["n_38"],
            json!("99999999999999999999999999999999999999")
        );
        assert_eq!(
            rows[0]["n_38_37"],
            json!("9.9999999999999999999999999999999999999")
        );
        assert_eq!(
            rows[0]["n_free"],
            json!("123456789012345678901234567890.123456789012345678901234567890")
        );
        assert_eq!(rows[1]["n_free"], json!("NaN"));
        assert_eq!(rows[3]["n_free"], json!("0.000"));
        assert_eq!(rows[0]["t"], json!("Zoë ☃ 日本語 🎉"));
        assert_eq!(rows[1]["t"], json!(""));
        assert_eq!(rows[0]["ch"], json!("ab   "));
        assert_eq!(rows[0]["by"], json!("\\x00ff10"));
        assert_eq!(rows[0]["tstz"], json!("2024-05-01T08:00:00.123456Z"));
        assert_eq!(rows[0]["u"], json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"));
        assert_eq!(rows[0]["jb"], json!({"k": "v", "n": {"x": true}}));
        assert_eq!(rows[0]["ai"], json!([1, null, -3]));
        assert_eq!(rows[2]["ai"], json!([[1, 2], [3, 4]]));
        assert_eq!(rows[0]["at"], json!(["a \"quoted\" b", "", null, "ü"]));
        assert_eq!(rows[0]["m"], json!("happy"));
        assert_eq!(rows[0]["iv"], json!("1 day 02:03:04"));
        assert_eq!(rows[2]["b"], Value::Null);

        // Into an identical table: every value comes back exactly (text forms compared).
        let mut dest = db.dest().await;
        let mut writer = ok(dest
            .open_stream(open_request("copy_of", &fields, &["id"]))
            .await);
        for (b, _) in &batches {
            let o = ok(writer.upsert(b.clone()).await);
            assert!(o.rejected.is_empty(), "{:?}", o.rejected);
            assert_eq!(o.inserted, Some(b.num_rows() as u64));
        }
        ok(writer.flush().await);
        let dump = |t: &str| format!("SELECT string_agg(x::text, E'\\n' ORDER BY id) FROM {t} x");
        let original = db.text(&dump("all_types")).await;
        assert_eq!(db.text(&dump("copy_of")).await, original);
        // Writing the same rows again changes nothing.
        for (b, _) in &batches {
            let o = ok(writer.upsert(b.clone()).await);
            assert_eq!(counts(&o), (0, 0, b.num_rows() as u64), "{:?}", o.rejected);
        }
        ok(writer.flush().await);
        assert_eq!(db.text(&dump("copy_of")).await, original);

        // Into a table the destination creates from the logical types.
        let mut writer = ok(dest
            .open_stream(open_request("created", &fields, &["id"]))
            .await);
        for (b, _) in &batches {
            let o = ok(writer.upsert(b.clone()).await);
            assert!(o.rejected.is_empty(), "{:?}", o.rejected);
        }
        ok(writer.flush().await);
        let types = db
            .text(
                "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum) \
                 FROM pg_attribute WHERE attrelid = 'created'::regclass AND attnum > 0",
            )
            .await;
        for expected in [
            "id bigint",
            "b boolean",
            "i2 integer",
            "i8 bigint",
            "f4 real",
            "f8 double precision",
            "n_10_2 numeric(10,2)",
            "n_38 numeric(38,0)",
            "n_free text",
            "t text",
            "by bytea",
            "d date",
            "tm time without time zone",
            "ts timestamp without time zone",
            "tstz timestamp with time zone",
            "u uuid",
            "j jsonb",
            "ai jsonb",
            "m text",
        ] {
            assert!(types.contains(expected), "{expected} not in {types}");
        }
        let mut source2 = db.source(None).await;
        let mut reader = ok(source2.read(request("created")).await);
        let back: Vec<_> = read_all(&mut reader)
            .await
            .iter()
            .flat_map(|(b, _)| rows_from_batch(b))
            .collect();
        assert_eq!(back.len(), rows.len());
        for (a, b) in rows.iter().zip(&back) {
            for key in [
                "id", "b", "i2", "i4", "i8", "f4", "f8", "n_10_2", "n_38", "n_38_37", "n_free",
                "n_wide", "t", "vc", "ch", "ci", "by", "d", "tm", "ts", "tstz", "ts3", "u", "jb",
                "ai", "at", "m", "p", "iv",
            ] {
                assert_eq!(a[key], b[key], "{key} of row {}", a["id"]);
            }
        }
        assert_eq!(
            db.text("SELECT string_agg(coalesce(ts::text, '') || '|' || d::text, ',' ORDER BY id) FROM created").await,
            "2024-05-01 10:00:00.123456|2024-02-29,-infinity|infinity,1999-12-31 23:59:59.999999|0044-03-15 BC,|-infinity"
        );
    });
}

#[test]
fn upserts_count_inserted_updated_and_unchanged_rows() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        let fields = vec![
            field("id", DataType::Int64, false),
            field("name", DataType::Text, true),
            field(
                "score",
                DataType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                true,
            ),
            field("doc", DataType::Json, true),
        ];
        let mut dest = db.dest().await;
        let mut writer = ok(dest
            .open_stream(open_request("scores", &fields, &["id"]))
            .await);
        let first = json!([
            {"id": 1, "name": "a", "score": "1.50", "doc": {"x": 1}},
            {"id": 2, "name": "b", "score": "2.00", "doc": null},
            {"id": 3, "name": null, "score": null, "doc": [1]},
        ]);
        let o = ok(writer.upsert(batch(&fields, first.clone())).await);
        assert_eq!(counts(&o), (3, 0, 0));
        // Not visible to others before the flush.
        assert_eq!(db.text("SELECT count(*)::text FROM scores").await, "0");
        ok(writer.flush().await);
        assert_eq!(db.text("SELECT count(*)::text FROM scores").await, "3");

        let o = ok(writer.upsert(batch(&fields, first)).await);
        assert_eq!(counts(&o), (0, 0, 3));
        let o = ok(writer
            .upsert(batch(
                &fields,
                json!([
                    {"id": 1, "name": "a", "score": "1.50", "doc": {"x": 1}},
                    {"id": 2, "name": "B", "score": "2.00", "doc": null},
                    {"id": 3, "name": null, "score": null, "doc": [1]},
                    {"id": 4, "name": "d", "score": "-4.25", "doc": "s"},
                ]),
            ))
            .await);
        assert_eq!(counts(&o), (1, 1, 2));
        // A key twice in one batch: the later row wins.
        let o = ok(writer
            .upsert(batch(
                &fields,
                json!([{"id": 5, "name": "first"}, {"id": 5, "name": "second"}]),
            ))
            .await);
        assert_eq!(counts(&o), (1, 0, 1));
        // Only the columns present in the batch are written.
        let partial = vec![
            field("id", DataType::Int64, false),
            field(
                "score",
                DataType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                true,
            ),
        ];
        let o = ok(writer
            .upsert(batch(&partial, json!([{"id": 4, "score": "9.99"}])))
            .await);
        assert_eq!(counts(&o), (0, 1, 0));
        ok(writer.flush().await);
        assert_eq!(
            db.text("SELECT string_agg(id || ':' || coalesce(name, '-') || ':' || coalesce(score::text, '-'), ',' ORDER BY id) FROM scores").await,
            "1:a:1.50,2:B:2.00,3:-:-,4:d:9.99,5:second:-"
        );

        // A failing call leaves the earlier unflushed writes of the transaction intact.
        let o = ok(writer
            .upsert(batch(&fields, json!([{"id": 6, "name": "six"}])))
            .await);
        assert_eq!(counts(&o), (1, 0, 0));
        let stranger = vec![
            field("id", DataType::Int64, false),
            field("nope", DataType::Text, true),
        ];
        let e = err(writer
            .upsert(batch(&stranger, json!([{"id": 7, "nope": "x"}])))
            .await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("nope"), "{}", e.message);
        // A statement that fails inside the transaction (a key the server cannot cast).
        let text_key = vec![field("id", DataType::Text, false)];
        let e = err(writer
            .delete(batch(&text_key, json!([{"id": "abc"}])))
            .await);
        assert_eq!(e.kind, ErrorKind::SCHEMA, "{}", e.message);
        ok(writer.flush().await);
        assert_eq!(db.text("SELECT name FROM scores WHERE id = 6").await, "six");
    });
}

#[test]
fn deletes_remove_rows_by_key() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE kv (k text, n int, v text, PRIMARY KEY (k, n)); \
             INSERT INTO kv VALUES ('a', 1, 'x'), ('a', 2, 'y'), ('b', 1, 'z');",
        )
        .await;
        let keys = vec![
            field("k", DataType::Text, false),
            field("n", DataType::Int32, false),
        ];
        let mut dest = db.dest().await;
        let mut writer = ok(dest.open_stream(open_request("kv", &keys, &[])).await);
        let o = ok(writer
            .delete(batch(
                &keys,
                json!([{"k": "a", "n": 2}, {"k": "b", "n": 1}, {"k": "zz", "n": 9}]),
            ))
            .await);
        assert_eq!(o.deleted, Some(2));
        ok(writer.flush().await);
        assert_eq!(
            db.text("SELECT string_agg(k || n, ',') FROM kv").await,
            "a1"
        );
        // A delete batch without the key is refused.
        let e = err(writer.delete(batch(&keys[..1], json!([{"k": "a"}]))).await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
    });
}

#[test]
fn schema_evolution_adds_ignores_or_refuses_missing_columns() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec("CREATE TABLE t (id int PRIMARY KEY, a text)").await;
        let fields = vec![
            field("id", DataType::Int32, false),
            field("a", DataType::Text, true),
            field("b", DataType::Int64, true),
        ];
        let rows = json!([{"id": 1, "a": "x", "b": 10}]);
        let mut dest = db.dest().await;

        let mut req = open_request("t", &fields, &["id"]);
        req.schema_evolution = SchemaEvolution::Fail;
        let e = err(dest.open_stream(req.clone()).await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("`b`"), "{}", e.message);

        req.schema_evolution = SchemaEvolution::Ignore;
        let mut writer = ok(dest.open_stream(req.clone()).await);
        let o = ok(writer.upsert(batch(&fields, rows.clone())).await);
        assert_eq!(counts(&o), (1, 0, 0));
        ok(writer.flush().await);
        assert_eq!(db.text("SELECT string_agg(attname, ',' ORDER BY attnum) FROM pg_attribute WHERE attrelid = 't'::regclass AND attnum > 0").await, "id,a");

        req.schema_evolution = SchemaEvolution::AddColumns;
        let mut writer = ok(dest.open_stream(req).await);
        let o = ok(writer.upsert(batch(&fields, rows)).await);
        assert_eq!(counts(&o), (0, 1, 0));
        ok(writer.flush().await);
        assert_eq!(db.text("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'b'").await, "bigint");
        assert_eq!(db.text("SELECT b::text FROM t").await, "10");
    });
}

#[test]
fn odd_identifiers_work_for_schemas_tables_and_columns() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            r#"CREATE SCHEMA "we""ird sch ema";
               CREATE TABLE "we""ird sch ema"."select ""tbl"" ü" (
                   "order" int PRIMARY KEY, "a""b" text, "sp ace" bigint, "ünï" timestamptz, "FROM" bool);
               INSERT INTO "we""ird sch ema"."select ""tbl"" ü"
                   SELECT g, 'v' || g, g * 10, '2024-01-01'::timestamptz + g * interval '1 hour', g % 2 = 0
                   FROM generate_series(1, 5) g;"#,
        )
        .await;
        let schema = "we\"ird sch ema";
        let mut source =
            ok(PgSource::open(db.config(schema, Some(2), None), standalone_context()).await);
        let catalog = ok(source.discover().await);
        let stream = catalog
            .stream("select \"tbl\" ü")
            .expect("the table is discovered");
        assert_eq!(stream.primary_key, ["order"]);
        let mut req = request("select \"tbl\" ü");
        req.mode = ReadMode::Incremental;
        req.cursor_field = Some("ünï".into());
        let mut reader = ok(source.read(req).await);
        let batches = read_all(&mut reader).await;
        assert_eq!(ids(&batches, "order"), [1, 2, 3, 4, 5]);

        let mut dest =
            ok(PgDestination::open(db.config(schema, None, None), standalone_context()).await);
        let mut writer = ok(dest
            .open_stream(open_request("dest ☃ \"x\"", &stream.fields, &["order"]))
            .await);
        for (b, _) in &batches {
            ok(writer.upsert(b.clone()).await);
        }
        ok(writer
            .delete(batch(&stream.fields[..1], json!([{"order": 5}])))
            .await);
        ok(writer.flush().await);
        assert_eq!(
            db.text(r#"SELECT string_agg("order" || "a""b" || "sp ace" || "FROM", ',' ORDER BY "order") FROM "we""ird sch ema"."dest ☃ ""x""""#).await,
            "1v110false,2v220true,3v330false,4v440true"
        );
    });
}

#[test]
fn values_the_target_cannot_hold_are_rejected_not_truncated() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TYPE color AS ENUM ('red', 'green'); \
             CREATE TABLE strict (id int PRIMARY KEY, t text, n numeric(5,2), v varchar(3), \
                                  c color, pos int CHECK (pos > 0), j jsonb, ts timestamp(0));",
        )
        .await;
        let fields = vec![
            field("id", DataType::Int64, false),
            field("t", DataType::Text, true),
            field(
                "n",
                DataType::Decimal {
                    precision: 10,
                    scale: 3,
                },
                true,
            ),
            field("v", DataType::Text, true),
            field("c", DataType::Text, true),
            field("pos", DataType::Int64, true),
            field("j", DataType::Text, true),
            field("ts", DataType::Timestamp, true),
        ];
        let rows = json!([
            {"id": 0, "t": "fine", "n": "123.45", "v": "abc", "c": "red", "pos": 1, "j": "{}", "ts": "2024-01-01 00:00:01"},
            {"id": 1, "t": "nul\u{0}byte"},
            {"id": 2, "n": "1234.5"},
            {"id": 3, "n": "1.234"},
            {"id": 4, "v": "abcd"},
            {"id": 5, "pos": -1},
            {"id": 6, "c": "blue"},
            {"id": 7, "pos": 3000000000i64},
            {"id": 8, "j": "{not json"},
            {"id": 9, "ts": "2024-01-01 00:00:01.5"},
            {"id": 10, "t": "also fine", "v": "äöü"},
        ]);
        let mut dest = db.dest().await;
        let mut writer = ok(dest
            .open_stream(open_request("strict", &fields, &["id"]))
            .await);
        let o = ok(writer.upsert(batch(&fields, rows.clone())).await);
        let got: Vec<(usize, Option<&str>)> = o
            .rejected
            .iter()
            .map(|r| (r.row, r.field.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                (1, Some("t")),
                (2, Some("n")),
                (3, Some("n")),
                (4, Some("v")),
                (5, None),
                (6, Some("c")),
                (7, Some("pos")),
                (8, Some("j")),
                (9, Some("ts"))
            ],
            "{:#?}",
            o.rejected
        );
        assert!(
            o.rejected[0].reason.contains("NUL"),
            "{}",
            o.rejected[0].reason
        );
        assert!(
            o.rejected[4].reason.contains("check"),
            "{}",
            o.rejected[4].reason
        );
        assert_eq!(counts(&o), (2, 0, 0));
        ok(writer.flush().await);
        assert_eq!(
            db.text("SELECT string_agg(id::text || coalesce(v, ''), ',' ORDER BY id) FROM strict")
                .await,
            "0abc,10äöü"
        );
        // The same again through the staging path (the table is no longer empty).
        let mut writer = ok(dest
            .open_stream(open_request("strict", &fields, &["id"]))
            .await);
        let o = ok(writer.upsert(batch(&fields, rows)).await);
        assert_eq!(o.rejected.len(), 9, "{:#?}", o.rejected);
        assert_eq!(counts(&o), (0, 0, 2));
    });
}

#[test]
fn a_terminated_backend_mid_read_is_a_transient_error() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE big (id int PRIMARY KEY, pad text); \
             INSERT INTO big SELECT g, repeat('x', 100) FROM generate_series(1, 1000) g;",
        )
        .await;
        let mut source = db.source(Some(100)).await;
        let mut reader = ok(source.read(request("big")).await);
        assert!(ok(reader.next_batch().await).is_some());
        let mut admin = PgConnection::connect(&format!("{}/test", server()))
            .await
            .unwrap();
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name = 'lockstep-postgres'",
        )
        .bind(db.live.name())
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(killed >= 1);
        // The reader fetches one batch ahead, which may have arrived before the kill.
        let mut failure = None;
        for _ in 0..10 {
            match reader.next_batch().await {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let e = failure.expect("reading on after the backend was terminated fails");
        assert_eq!(e.kind, ErrorKind::TRANSIENT, "{}", e.message);
        // The reader reconnects when asked again, and goes on where it stopped.
        let rest = read_all(&mut reader).await;
        assert!(!rest.is_empty());
        assert_eq!(ids(&rest, "id").last(), Some(&1000));
        // The source reconnects for its next call.
        ok(source.check().await);
    });
}

#[test]
fn connection_problems_map_to_error_kinds_without_secrets() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        let open = |url: String, schema: &str| {
            let config = Config {
                url,
                schema: schema.into(),
                read: ReadConfig::default(),
                password_env: None,
                key_summary_workers: 0,
            };
            PgSource::open(config, standalone_context())
        };
        let e = err(open(format!("{}/no_such_db_here", server()), "public").await);
        assert_eq!(e.kind, ErrorKind::CONFIG, "{}", e.message);
        let e = err(open(
            "postgres://postgres:sekrit99@127.0.0.1:1/x".into(),
            "public",
        )
        .await);
        assert_eq!(e.kind, ErrorKind::TRANSIENT, "{}", e.message);
        assert!(!e.message.contains("sekrit99"), "{}", e.message);
        assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);
        let e = err(open("mysql://h/db".into(), "public").await);
        assert_eq!(e.kind, ErrorKind::CONFIG, "{}", e.message);
        let mut source = ok(open(db.url(), "no_such_schema").await);
        assert_eq!(err(source.check().await).kind, ErrorKind::CONFIG);
        assert_eq!(err(source.discover().await).kind, ErrorKind::CONFIG);

        std::env::set_var("LOCKSTEP_PG_TEST_PASSWORD", "whatever");
        let config = Config {
            password_env: Some("LOCKSTEP_PG_TEST_PASSWORD".into()),
            ..db.config("public", None, None)
        };
        ok(PgSource::open(config, standalone_context()).await);
        let config = Config {
            password_env: Some("LOCKSTEP_PG_TEST_UNSET_VARIABLE".into()),
            ..db.config("public", None, None)
        };
        assert_eq!(
            err(PgSource::open(config, standalone_context()).await).kind,
            ErrorKind::CONFIG
        );
    });
}

#[test]
fn views_are_read_only_and_keys_must_be_unique() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE loose (id int, v text); INSERT INTO loose VALUES (2, 'b'), (1, 'a'); \
             CREATE VIEW loose_view AS SELECT * FROM loose;",
        )
        .await;
        let fields = vec![
            field("id", DataType::Int32, true),
            field("v", DataType::Text, true),
        ];
        let mut dest = db.dest().await;
        let e = err(dest
            .open_stream(open_request("loose_view", &fields, &["id"]))
            .await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("view"), "{}", e.message);
        let e = err(dest
            .open_stream(open_request("loose", &fields, &["id"]))
            .await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("CREATE UNIQUE INDEX"), "{}", e.message);
        let mut req = open_request("missing", &fields, &["id"]);
        req.create_if_missing = false;
        assert_eq!(err(dest.open_stream(req).await).kind, ErrorKind::SCHEMA);

        // A view reads with an explicit key; without one it cannot be paged.
        let mut source = db.source(None).await;
        assert_eq!(
            err(source.read(request("loose_view")).await).kind,
            ErrorKind::SCHEMA
        );
        let mut req = request("loose_view");
        req.key = vec!["id".into()];
        let mut reader = ok(source.read(req).await);
        assert_eq!(ids(&read_all(&mut reader).await, "id"), [1, 2]);
    });
}

/// Times a PostgreSQL-to-PostgreSQL full sync through the connector against
/// `psql COPY TO STDOUT (FORMAT binary) | psql COPY FROM STDIN (FORMAT binary)`.
/// Run with `cargo test --release -p lockstep-connector-postgres -- --ignored bench --nocapture`
/// (`LOCKSTEP_BENCH_ROWS` sets the row count; `--features bench-hooks` with
/// `LOCKSTEP_BENCH_PARTS=1` times reading, encoding and writing apart).
#[test]
#[ignore]
fn bench_full_sync_against_psql_copy() {
    let Some(db) = TestDb::create() else { return };
    let rows: usize = std::env::var("LOCKSTEP_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let ddl = "(id bigint PRIMARY KEY, name text, amount numeric(12,2), qty integer, \
               score double precision, active boolean, created_at timestamptz, \
               tag uuid, doc jsonb)";
    block_on(db.exec(&format!(
        "CREATE TABLE src {ddl}; CREATE TABLE psql_dst {ddl}; CREATE TABLE conn_dst {ddl}; \
         INSERT INTO src SELECT g, 'name ' || g, (g % 100000) / 100.0, g % 1000, g * 0.5, \
           g % 2 = 0, '2024-01-01'::timestamptz + g * interval '1 second', \
           md5(g::text)::uuid, jsonb_build_object('g', g, 'k', 'v') \
         FROM generate_series(1, {rows}) g;"
    )));
    block_on(db.exec("VACUUM ANALYZE src"));
    let url = db.url();
    let reps: usize = std::env::var("LOCKSTEP_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let (mut psql_times, mut connector_times) = (Vec::new(), Vec::new());
    // Alternate the two, so that load from elsewhere on the machine hits both alike.
    for rep in 0..reps {
        block_on(db.exec("TRUNCATE psql_dst, conn_dst; CHECKPOINT"));
        let start = std::time::Instant::now();
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!(
                "set -o pipefail; psql -X -q '{url}' -c 'COPY src TO STDOUT (FORMAT binary)' | \
                 psql -X -q '{url}' -c 'COPY psql_dst FROM STDIN (FORMAT binary)'"
            ))
            .status()
            .expect("psql runs");
        assert!(status.success());
        psql_times.push(start.elapsed());
        block_on(db.exec("CHECKPOINT"));

        let start = std::time::Instant::now();
        let synced = block_on(async {
            let mut source = db.source(Some(50_000)).await;
            let catalog = ok(source.discover().await);
            let fields = catalog.stream("src").unwrap().fields.clone();
            let mut dest = db.dest().await;
            let mut writer = ok(dest
                .open_stream(open_request("conn_dst", &fields, &["id"]))
                .await);
            let mut reader = ok(source.read(request("src")).await);
            let mut n = 0;
            while let Some((b, _)) = ok(reader.next_batch().await) {
                n += b.num_rows();
                let o = ok(writer.upsert(b).await);
                assert!(o.rejected.is_empty());
                ok(writer.flush().await);
            }
            n
        });
        connector_times.push(start.elapsed());
        assert_eq!(synced, rows);
        println!(
            "rep {rep}: psql COPY pipe {:.2?}, connector {:.2?}",
            psql_times[rep], connector_times[rep]
        );
    }
    psql_times.sort();
    connector_times.sort();
    let psql = psql_times[reps / 2];
    let connector = connector_times[reps / 2];
    // The parts need the writer's bench hooks: `--features bench-hooks`.
    #[cfg(feature = "bench-hooks")]
    if std::env::var("LOCKSTEP_BENCH_PARTS").is_ok() {
        block_on(async {
            let t = std::time::Instant::now();
            let mut source = db.source(Some(50_000)).await;
            let mut reader = ok(source.read(request("src")).await);
            let mut batches = Vec::new();
            while let Some((b, _)) = ok(reader.next_batch().await) {
                batches.push(b);
            }
            println!("read alone {:.2?}", t.elapsed());
            let fields = ok(source.discover().await)
                .stream("src")
                .unwrap()
                .fields
                .clone();
            db.exec("CREATE TABLE part_dst (LIKE src INCLUDING ALL)")
                .await;
            let mut dest = db.dest().await;
            let t = std::time::Instant::now();
            let mut writer = ok(dest
                .open_stream(open_request("part_dst", &fields, &["id"]))
                .await);
            for b in &batches {
                ok(writer.upsert(b.clone()).await);
                ok(writer.flush().await);
            }
            println!("write alone (direct COPY) {:.2?}", t.elapsed());
            db.exec("CREATE TABLE part_dst2 (LIKE src INCLUDING ALL)")
                .await;
            let t = std::time::Instant::now();
            let mut writer = ok(dest
                .open_stream(open_request("part_dst2", &fields, &["id"]))
                .await);
            for b in &batches {
                ok(writer.upsert(b.clone()).await);
            }
            ok(writer.flush().await);
            println!("write alone (direct COPY, one flush) {:.2?}", t.elapsed());
            let t = std::time::Instant::now();
            let mut bytes = 0;
            for b in &batches {
                bytes += ok(writer.encode_only_for_bench(b));
            }
            println!("encode alone {:.2?} ({bytes} bytes)", t.elapsed());
            let t = std::time::Instant::now();
            let mut writer = ok(dest
                .open_stream(open_request("part_dst", &fields, &["id"]))
                .await);
            for b in &batches {
                ok(writer.upsert(b.clone()).await);
                ok(writer.flush().await);
            }
            println!("write again (staging, all unchanged) {:.2?}", t.elapsed());
            db.exec("TRUNCATE part_dst").await;
            let t = std::time::Instant::now();
            let mut writer = ok(dest
                .open_stream(open_request("part_dst", &fields, &["id"]))
                .await);
            db.exec("INSERT INTO part_dst SELECT * FROM src WHERE id = -1")
                .await;
            writer.direct_off_for_bench();
            for b in &batches {
                ok(writer.upsert(b.clone()).await);
                ok(writer.flush().await);
            }
            println!(
                "write into empty via staging (all inserted) {:.2?}",
                t.elapsed()
            );
        });
        let url = db.url();
        let t = std::time::Instant::now();
        std::process::Command::new("bash").arg("-c").arg(format!("psql -X -q '{url}' -c 'COPY src TO STDOUT (FORMAT binary)' > /tmp/lockstep_bench.copy")).status().unwrap();
        println!("psql COPY out alone {:.2?}", t.elapsed());
        let t = std::time::Instant::now();
        std::process::Command::new("bash").arg("-c").arg(format!("psql -X -q '{url}' -c 'TRUNCATE psql_dst' && psql -X -q '{url}' -c 'COPY psql_dst FROM STDIN (FORMAT binary)' < /tmp/lockstep_bench.copy")).status().unwrap();
        println!("psql COPY in alone {:.2?}", t.elapsed());
    }
    println!(
        "{rows} rows, medians of {reps}: psql COPY pipe {:.2?}, connector {:.2?}, ratio {:.2}",
        psql,
        connector,
        connector.as_secs_f64() / psql.as_secs_f64()
    );
    let same = block_on(db.text(
        "SELECT (SELECT count(*) FROM (SELECT * FROM src EXCEPT SELECT * FROM conn_dst) d)::text",
    ));
    assert_eq!(same, "0");
}

// Keep `PgWriter` in the public surface tested here.
#[allow(dead_code)]
fn _writer_type(_: &PgWriter) {}

#[test]
fn key_summaries_match_equal_key_sets_and_tell_different_ones_apart() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        // The same keys inserted in different orders, with different other columns.
        db.exec(
            "CREATE TABLE a (id bigint PRIMARY KEY, name text); \
             CREATE TABLE b (ident bigint PRIMARY KEY, other int); \
             INSERT INTO a SELECT g, 'n' || g FROM generate_series(1, 1000) g; \
             INSERT INTO b SELECT g, 7 FROM generate_series(1000, 1, -1) g;",
        )
        .await;
        let mut source = db.source(None).await;
        let a = key_summary(&mut source, "a", "id").await;
        assert_eq!(a.count, 1000);
        assert_eq!(a.algorithm, crate::summary::ALGORITHM);
        assert_eq!(key_summary(&mut source, "b", "ident").await, a);
        // The algorithm as documented (the key texts joined by U+001F, hashed, summed
        // modulo 2^64), computed the long way: the summary's own query may be shorter but
        // must give the same value, or summaries of servers on two versions would differ.
        let documented = |table: &str, key: &str| {
            format!(
                "SELECT ((sum(hashtextextended(concat_ws(chr(31), {key}), 0)::numeric) \
                 % 18446744073709551616 + 18446744073709551616) % 18446744073709551616)::text \
                 FROM {table}"
            )
        };
        assert_eq!(a.hash, db.text(&documented("a", "id::text")).await);
        db.exec(
            "CREATE TABLE d (k1 int, k2 text, PRIMARY KEY (k1, k2)); \
             INSERT INTO d SELECT g, 't' || g FROM generate_series(1, 50) g;",
        )
        .await;
        let mut req = request("d");
        req.key = vec!["k1".into(), "k2".into()];
        req.key_summary = true;
        let mut reader = ok(source.read(req).await);
        let batches = read_all(&mut reader).await;
        let d = lockstep_plugin_sdk::protocol::KeySummary::from_batch(&batches[0].0).unwrap();
        assert_eq!(d.count, 50);
        assert_eq!(
            d.hash,
            db.text(&documented("d", "k1::text, k2::text")).await
        );

        // One key replaced by another: same count, another hash.
        db.exec("UPDATE b SET ident = 5000 WHERE ident = 17").await;
        let replaced = key_summary(&mut source, "b", "ident").await;
        assert_eq!(replaced.count, 1000);
        assert_ne!(replaced.hash, a.hash);
        // One key gone: another count.
        db.exec("DELETE FROM b WHERE ident = 5000").await;
        assert_eq!(key_summary(&mut source, "b", "ident").await.count, 999);

        // An empty table and an unknown key field.
        db.exec("CREATE TABLE c (id bigint PRIMARY KEY)").await;
        let empty = key_summary(&mut source, "c", "id").await;
        assert_eq!((empty.count, empty.hash.as_str()), (0, "0"));
        let mut req = request("a");
        req.key = vec!["nope".into()];
        req.key_summary = true;
        let e = err(source.read(req).await);
        assert_eq!(e.kind, ErrorKind::SCHEMA);
        assert!(e.message.contains("nope"), "{}", e.message);
    });
}

#[test]
fn key_summaries_use_the_configured_parallel_workers() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        let workers = |n: u32| {
            Settings::from_config(Config {
                key_summary_workers: n,
                ..db.config("public", None, None)
            })
        };
        // The summary's session, as `key_summary` opens it: one process by default, the
        // configured number of workers otherwise.
        for (n, expected) in [(0, "0"), (3, "3")] {
            let settings = workers(n).expect("valid settings");
            let mut conn = crate::summary::connect(&settings).await.expect("connect");
            let (shown,): (String,) = sqlx::query_as("SHOW max_parallel_workers_per_gather")
                .fetch_one(&mut conn)
                .await
                .expect("show");
            assert_eq!(shown, expected, "key_summary_workers = {n}");
        }
        let e = workers(2000).err().expect("beyond PostgreSQL's limit");
        assert_eq!(e.kind, ErrorKind::CONFIG, "{}", e.message);
        assert!(e.message.contains("key_summary_workers"), "{}", e.message);
    });
}

/// The key summary of `stream` by `key`, read as the host reads it.
async fn key_summary(
    source: &mut PgSource,
    stream: &str,
    key: &str,
) -> lockstep_plugin_sdk::protocol::KeySummary {
    let mut req = request(stream);
    req.key = vec![key.into()];
    req.key_summary = true;
    let mut reader = ok(source.read(req).await);
    let batches = read_all(&mut reader).await;
    assert_eq!(batches.len(), 1, "one summary batch");
    lockstep_plugin_sdk::protocol::KeySummary::from_batch(&batches[0].0).unwrap()
}

#[test]
fn range_hashes_match_equal_tables_and_list_exactly_the_records_that_differ() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        // The same records inserted in opposite orders, with every kind of value text.
        db.exec(
            "CREATE TABLE a (id bigint PRIMARY KEY, name text, at timestamptz, x float8, \
             n numeric(12,4), tags int[]); \
             CREATE TABLE b (LIKE a INCLUDING ALL); \
             INSERT INTO a SELECT g, 'n' || g, timestamptz '2026-01-01 00:00:00+00' + g * \
             interval '1 minute', g / 3.0, g / 7.0, ARRAY[g, g + 1] \
             FROM generate_series(1, 1000) g; \
             INSERT INTO b SELECT * FROM a ORDER BY id DESC;",
        )
        .await;
        let mut source = db.source(None).await;
        let fields = ["name", "at", "x", "n", "tags"];
        let a = range_summaries(&mut source, "a", &fields, 64, Some("at")).await;
        assert_eq!(a.iter().map(|s| s.count).sum::<u64>(), 1000);
        assert!(a.len() > 50, "{} ranges hold records", a.len());
        assert_eq!(a[0].algorithm, crate::range_hash::ALGORITHM);
        assert_eq!(a[0].newest.as_deref(), Some("2026-01-01 16:40:00+00"));
        assert_eq!(
            range_summaries(&mut source, "b", &fields, 64, Some("at")).await,
            a
        );

        // Null against an empty text, and one field changed: two ranges differ at most, and
        // their listings differ in exactly those two records.
        db.exec("UPDATE a SET name = NULL WHERE id = 10; UPDATE b SET name = '' WHERE id = 10")
            .await;
        db.exec("UPDATE b SET x = 0.5 WHERE id = 20").await;
        let a = range_summaries(&mut source, "a", &fields, 64, None).await;
        let b = range_summaries(&mut source, "b", &fields, 64, None).await;
        let differing: Vec<u64> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x.range)
            .collect();
        assert!((1..=2).contains(&differing.len()), "{differing:?}");
        let list_a = range_entries(&mut source, "a", &fields, 64, &differing).await;
        let list_b = range_entries(&mut source, "b", &fields, 64, &differing).await;
        assert_eq!(list_a.len(), list_b.len());
        let mut changed: Vec<String> = list_a
            .iter()
            .filter(|e| !list_b.contains(e))
            .map(|e| e.key[0].clone().unwrap())
            .collect();
        changed.sort();
        assert_eq!(changed, ["10", "20"]);

        // A range count that is not a power of two is refused.
        let mut req = request("a");
        req.range_hash = Some(lockstep_plugin_sdk::protocol::RangeHashRequest {
            fields: vec!["name".into()],
            ranges: 3,
            ..Default::default()
        });
        let e = err(source.read(req).await);
        assert!(e.message.contains("power of two"), "{}", e.message);
    });
}

#[test]
fn range_hashes_tell_apart_exactly_the_values_the_comparison_tells_apart() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', \
             deterministic = false); \
             CREATE TYPE mood1 AS ENUM ('sad', 'ok'); CREATE TYPE mood2 AS ENUM ('ok', 'sad');",
        )
        .await;
        // (column type of a, of b, a's values, b's values, whether the comparison calls the
        // two tables equal). Each case is two tables of (id, v) hashed as one range.
        let cases: &[(&str, &str, &str, &str, bool)] = &[
            // int8's own hash folds its halves: 1 and 2^32 hash alike.
            ("bigint", "bigint", "(1, 1)", "(1, 4294967296)", false),
            ("bigint", "bigint", "(1, -1)", "(1, 4294967295)", false),
            // timestamps fold likewise: 0 and 2^32 + 1 microseconds after 2000-01-01.
            (
                "timestamptz",
                "timestamptz",
                "(1, '2000-01-01 00:00:00+00')",
                "(1, '2000-01-01 01:11:34.967297+00')",
                false,
            ),
            (
                "timestamp",
                "timestamp",
                "(1, '2000-01-01 00:00:00')",
                "(1, '2000-01-01 01:11:34.967297')",
                false,
            ),
            (
                "time",
                "time",
                "(1, '00:00:00')",
                "(1, '01:11:34.967297')",
                false,
            ),
            // One instant written under two time zones is one value.
            (
                "timestamptz",
                "timestamptz",
                "(1, '2026-03-01 12:00:00+00')",
                "(1, '2026-03-01 13:00:00+01')",
                true,
            ),
            // An unconstrained numeric is read as its text: the scale is part of it.
            ("numeric", "numeric", "(1, 1.0)", "(1, 1.00)", false),
            ("numeric", "numeric", "(1, 'NaN')", "(1, NULL)", false),
            (
                "numeric",
                "numeric",
                "(1, 'Infinity')",
                "(1, '-Infinity')",
                false,
            ),
            // A numeric(p,s) is read as a decimal of that scale.
            (
                "numeric(12,2)",
                "numeric(12,2)",
                "(1, 1.5)",
                "(1, 1.50)",
                true,
            ),
            (
                "numeric(12,2)",
                "numeric(12,2)",
                "(1, 0)",
                "(1, NULL)",
                false,
            ),
            (
                "numeric(12,2)",
                "numeric(12,2)",
                "(1, 'NaN')",
                "(1, NULL)",
                false,
            ),
            // jsonb's own hash calls 1 and 1.0 equal; its text does not.
            (
                "jsonb",
                "jsonb",
                "(1, '{\"a\": 1}')",
                "(1, '{\"a\": 1.0}')",
                false,
            ),
            (
                "jsonb",
                "jsonb",
                "(1, '{\"a\":1, \"b\":2}')",
                "(1, '{\"b\":2,\"a\":1}')",
                true,
            ),
            (
                "json",
                "json",
                "(1, '{\"a\":1}')",
                "(1, '{\"a\": 1}')",
                false,
            ),
            // Floats: the comparison folds -0 into 0 (and every NaN into one).
            ("float8", "float8", "(1, '-0')", "(1, '0')", true),
            ("float8", "float8", "(1, 0)", "(1, NULL)", false),
            (
                "float8",
                "float8",
                "(1, 0.1)",
                "(1, 0.1000000000000001)",
                false,
            ),
            ("real", "real", "(1, 'NaN')", "(1, NULL)", false),
            // Text: a null is no empty text, and a case-insensitive collation compares
            // equal what the comparison (bytes) does not.
            ("text", "text", "(1, NULL)", "(1, '')", false),
            (
                "text COLLATE ci",
                "text COLLATE ci",
                "(1, 'a')",
                "(1, 'A')",
                false,
            ),
            ("varchar(5)", "varchar(5)", "(1, 'a')", "(1, 'a ')", false),
            // char(n) pads, so 'a' and 'a ' are one value; a bare bpchar keeps the spaces.
            ("char(3)", "char(3)", "(1, 'a')", "(1, 'a ')", true),
            ("bpchar", "bpchar", "(1, 'a')", "(1, 'a ')", false),
            ("bytea", "bytea", "(1, '')", "(1, NULL)", false),
            ("boolean", "boolean", "(1, false)", "(1, NULL)", false),
            ("integer", "integer", "(1, 0)", "(1, NULL)", false),
            ("smallint", "smallint", "(1, 0)", "(1, NULL)", false),
            ("bigint", "bigint", "(1, 0)", "(1, NULL)", false),
            ("oid", "oid", "(1, 0)", "(1, NULL)", false),
            (
                "uuid",
                "uuid",
                "(1, '00000000-0000-0000-0000-000000000000')",
                "(1, NULL)",
                false,
            ),
            (
                "uuid",
                "uuid",
                "(1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
                "(1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')",
                true,
            ),
            (
                "date",
                "date",
                "(1, '2026-01-01')",
                "(1, '2026-01-02')",
                false,
            ),
            // Two records of one range swapping a value: their hashes' sum must see it.
            (
                "text",
                "text",
                "(1, 'x'), (2, 'y')",
                "(1, 'y'), (2, 'x')",
                false,
            ),
            (
                "bigint",
                "bigint",
                "(1, 7), (2, 9)",
                "(1, 9), (2, 7)",
                false,
            ),
            // Enums hash by label, not by the label's OID (which differs between databases).
            ("mood1", "mood2", "(1, 'ok')", "(1, 'ok')", true),
            ("mood1", "mood2", "(1, 'ok')", "(1, 'sad')", false),
            ("int[]", "int[]", "(1, '{1,2}')", "(1, '{2,1}')", false),
            (
                "interval",
                "interval",
                "(1, '1 day')",
                "(1, '24 hours')",
                false,
            ),
        ];
        let mut source = db.source(None).await;
        let mut wrong = Vec::new();
        for (i, (ta, tb, va, vb, equal)) in cases.iter().enumerate() {
            db.exec(&format!(
                "CREATE TABLE a{i} (id int PRIMARY KEY, v {ta}); \
                 CREATE TABLE b{i} (id int PRIMARY KEY, v {tb}); \
                 INSERT INTO a{i} VALUES {va}; INSERT INTO b{i} VALUES {vb};"
            ))
            .await;
            let a = range_summaries(&mut source, &format!("a{i}"), &["v"], 1, None).await;
            let b = range_summaries(&mut source, &format!("b{i}"), &["v"], 1, None).await;
            assert_eq!(a[0].algorithm, crate::range_hash::ALGORITHM);
            if (a == b) != *equal {
                wrong.push(format!("{ta} {va} against {tb} {vb}: equal {}", a == b));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    });
}

#[test]
fn range_hashes_see_values_move_between_columns_and_records() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        // (columns v and w, a's rows, b's rows): never equal. Values hashed on their own are
        // seeded by their position, and a null by a constant of its position, so a value or a
        // null moving to another column changes the record's hash; the finishing hash makes
        // the sum of a range see records trading values.
        let cases: &[(&str, &str, &str)] = &[
            ("v text, w text", "(1, 'x', 'y')", "(1, 'y', 'x')"),
            ("v text, w text", "(1, NULL, 'x')", "(1, 'x', NULL)"),
            ("v text, w text", "(1, NULL, NULL)", "(1, '', '')"),
            ("v int, w int", "(1, 1, 2)", "(1, 2, 1)"),
            ("v int, w bigint", "(1, NULL, 0)", "(1, 0, NULL)"),
            (
                "v bigint, w bigint",
                "(1, 1, 2), (2, 3, 4)",
                "(1, 1, 4), (2, 3, 2)",
            ),
            (
                "v text, w float8",
                "(1, 'a', 0), (2, 'b', 1)",
                "(1, 'b', 0), (2, 'a', 1)",
            ),
            (
                "v numeric(4,1), w numeric(4,1)",
                "(1, 0, 'NaN')",
                "(1, 'NaN', 0)",
            ),
            (
                "v numeric(4,1), w float8",
                "(1, 0, 0), (2, 'NaN', 0)",
                "(1, 'NaN', 0), (2, 0, 0)",
            ),
        ];
        let mut source = db.source(None).await;
        let mut wrong = Vec::new();
        for (i, (columns, va, vb)) in cases.iter().enumerate() {
            db.exec(&format!(
                "CREATE TABLE m{i}a (id int PRIMARY KEY, {columns}); \
                 CREATE TABLE m{i}b (id int PRIMARY KEY, {columns}); \
                 INSERT INTO m{i}a VALUES {va}; INSERT INTO m{i}b VALUES {vb};"
            ))
            .await;
            let fields = ["v", "w"];
            let a = range_summaries(&mut source, &format!("m{i}a"), &fields, 1, None).await;
            let b = range_summaries(&mut source, &format!("m{i}b"), &fields, 1, None).await;
            if a == b {
                wrong.push(format!("({columns}) {va} against {vb} hash alike"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    });
}

/// The range summaries of `stream` (key `id`), read as the host reads them.
async fn range_summaries(
    source: &mut PgSource,
    stream: &str,
    fields: &[&str],
    ranges: u64,
    newest: Option<&str>,
) -> Vec<lockstep_plugin_sdk::protocol::RangeSummary> {
    let mut req = request(stream);
    req.key = vec!["id".into()];
    req.range_hash = Some(lockstep_plugin_sdk::protocol::RangeHashRequest {
        fields: fields.iter().map(|f| f.to_string()).collect(),
        ranges,
        list: None,
        newest: newest.map(str::to_owned),
    });
    let mut reader = ok(source.read(req).await);
    let batches = read_all(&mut reader).await;
    let mut out = Vec::new();
    for (batch, _) in &batches {
        assert!(batch.num_rows() <= crate::range_hash::ROWS_PER_BATCH);
        out.extend(lockstep_plugin_sdk::protocol::RangeSummary::from_batch(batch).unwrap());
    }
    assert!(
        out.windows(2).all(|w| w[0].range < w[1].range),
        "summaries come in range order"
    );
    out
}

/// The listed entries of `ranges` of `stream` (key `id`).
async fn range_entries(
    source: &mut PgSource,
    stream: &str,
    fields: &[&str],
    ranges: u64,
    list: &[u64],
) -> Vec<lockstep_plugin_sdk::protocol::RangeEntry> {
    let mut req = request(stream);
    req.key = vec!["id".into()];
    req.range_hash = Some(lockstep_plugin_sdk::protocol::RangeHashRequest {
        fields: fields.iter().map(|f| f.to_string()).collect(),
        ranges,
        list: Some(list.to_vec()),
        newest: None,
    });
    let mut reader = ok(source.read(req).await);
    let batches = read_all(&mut reader).await;
    let mut out = Vec::new();
    for (batch, _) in &batches {
        out.extend(lockstep_plugin_sdk::protocol::RangeEntry::from_batch(batch, 1).unwrap());
    }
    out
}

/// Every connection ends with `Terminate`, not by a dropped socket: the server counts a
/// connection lost without it in `pg_stat_database.sessions_abandoned` (and logs "Connection
/// reset by peer" when replies were left unread), which every read, source, destination and
/// writer once did.
/// The sessions of the database `admin` is connected to: how many began and how many were
/// abandoned (ended without `Terminate`), once at most `others` connections but `admin` are
/// left (each one's counts are in once it ended).
async fn settled(admin: &mut PgConnection, others: i64) -> (i64, i64) {
    for _ in 0..200 {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_one(&mut *admin)
        .await
        .unwrap();
        if open <= others {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *admin)
        .await
        .unwrap();
    sqlx::query_as(
        "SELECT sessions::int8, sessions_abandoned::int8 FROM pg_stat_database \
         WHERE datname = current_database()",
    )
    .fetch_one(&mut *admin)
    .await
    .unwrap()
}

/// A read by keys of `keys` (the `id` column) of `stream`.
fn by_keys(stream: &str, keys: &[i64]) -> ReadRequest {
    let mut request = request(stream);
    request.key = vec!["id".into()];
    request.keys = Some(keys.iter().map(|k| vec![json!(k)]).collect());
    request
}

/// The ids a read by keys found (in key order) and the server processes that served it.
async fn read_with_pids(reader: &mut PgReader) -> (Vec<i64>, Vec<i64>) {
    let batches = read_all(reader).await;
    let mut found = ids(&batches, "id");
    found.sort_unstable();
    let mut pids = ids(&batches, "pid");
    pids.sort_unstable();
    pids.dedup();
    (found, pids)
}

#[test]
fn reads_by_keys_share_one_connection_and_survive_its_end() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        // Each row read names the server process that read it.
        db.exec(
            "CREATE TABLE t (id bigint PRIMARY KEY, name text); \
             INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 500) g; \
             CREATE VIEW t_pid AS SELECT id, name, pg_backend_pid()::int8 AS pid FROM t;",
        )
        .await;
        let mut source = db.source(None).await;

        // Reads by keys one after another, as a two-way run reads back its chunks: one
        // connection serves them all.
        let mut served = Vec::new();
        for round in 0..5 {
            let keys = [round * 10 + 3, round * 10 + 1, round * 10 + 2, 999];
            let mut reader = ok(source.read(by_keys("t_pid", &keys)).await);
            let (found, pids) = read_with_pids(&mut reader).await;
            assert_eq!(found, [round * 10 + 1, round * 10 + 2, round * 10 + 3]);
            served.extend(pids);
        }
        served.dedup();
        assert_eq!(served.len(), 1, "five reads by keys, served by {served:?}");
        let kept = served[0];

        // Two readers held at once: the second does not wait for the first, on a connection
        // of its own.
        let mut first = ok(source.read(by_keys("t_pid", &[101, 100])).await);
        let mut second = ok(source.read(by_keys("t_pid", &[200])).await);
        let (found, pids) = read_with_pids(&mut second).await;
        assert_eq!(found, [200]);
        assert_ne!(
            pids,
            [kept],
            "the second reader waited for the first one's connection"
        );
        assert_eq!(
            read_with_pids(&mut first).await,
            (vec![100, 101], vec![kept])
        );
        drop((first, second));

        // The server ends the kept connection between two reads: the next read reconnects.
        let mut admin = PgConnection::connect(&db.url()).await.unwrap();
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1::int4)")
            .bind(kept)
            .fetch_one(&mut admin)
            .await
            .unwrap();
        assert!(ended);
        for _ in 0..200 {
            let gone: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1::int4)",
            )
            .bind(kept)
            .fetch_one(&mut admin)
            .await
            .unwrap();
            if gone {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        let mut reader = ok(source.read(by_keys("t_pid", &[8, 7])).await);
        let (found, pids) = read_with_pids(&mut reader).await;
        assert_eq!(found, [7, 8]);
        assert_ne!(pids, [kept]);
        drop(reader);
        source.close().await;
        drop(source);
        admin.close().await.unwrap();
    });
}

#[test]
fn connections_end_as_the_protocol_asks() {
    let Some(db) = TestDb::create() else { return };
    block_on(async {
        db.exec(
            "CREATE TABLE t (id bigint PRIMARY KEY, name text); \
             INSERT INTO t SELECT g, 'n' || g FROM generate_series(1, 500) g;",
        )
        .await;
        let mut admin = PgConnection::connect(&db.url()).await.unwrap();
        let mut source = db.source(None).await;
        let (began, abandoned) = settled(&mut admin, 1).await;

        // A full read, a read by keys, a key summary and a range-hash read.
        let mut reader = ok(source.read(request("t")).await);
        assert_eq!(
            read_all(&mut reader)
                .await
                .iter()
                .map(|(b, _)| b.num_rows())
                .sum::<usize>(),
            500
        );
        drop(reader);
        let mut by_keys = request("t");
        by_keys.key = vec!["id".into()];
        by_keys.keys = Some(vec![vec![json!(1)], vec![json!(2)]]);
        let mut reader = ok(source.read(by_keys).await);
        assert_eq!(read_all(&mut reader).await[0].0.num_rows(), 2);
        drop(reader);
        assert_eq!(key_summary(&mut source, "t", "id").await.count, 500);
        assert!(!range_summaries(&mut source, "t", &["name"], 16, None)
            .await
            .is_empty());
        // The source's own connection and the one of its reads by keys stay.
        let (began_reads, abandoned_reads) = settled(&mut admin, 2).await;
        assert!(
            began_reads - began >= 4,
            "the reads opened {} connections",
            began_reads - began
        );
        assert_eq!(
            abandoned_reads - abandoned,
            0,
            "read connections that ended without Terminate"
        );

        // The source's own connection, a destination's and its writer's, as the SDK ends
        // them when the host lets them go.
        let mut dest = db.dest().await;
        let fields = [
            field("id", DataType::Int64, false),
            field("name", DataType::Text, true),
        ];
        let mut writer = ok(dest.open_stream(open_request("w", &fields, &["id"])).await);
        let rows = vec![json!({"id": 1, "name": "one"}).as_object().unwrap().clone()];
        ok(writer
            .upsert(batch_from_rows(&fields, &rows).unwrap())
            .await);
        ok(writer.flush().await);
        writer.close().await;
        dest.close().await;
        source.close().await;
        let (began_all, abandoned_all) = settled(&mut admin, 0).await;
        assert!(
            began_all - began_reads >= 2,
            "a destination and a writer connected"
        );
        assert_eq!(
            abandoned_all - abandoned,
            0,
            "connections that ended without Terminate"
        );
        drop((writer, dest, source));
        admin.close().await.unwrap();
    });
}
