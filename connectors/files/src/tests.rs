//! Tests of the connector's types, driven directly on real files in temporary directories.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime};

use lockstep_plugin_sdk::rows::rows_from_batch;
use lockstep_plugin_sdk::{
    block_on, BatchReader, ConnectorError, DataType, OpenStreamRequest, ReadMode, ReadRequest,
    SchemaEvolution, StreamWriter,
};
use serde_json::{json, Map, Value};

use lockstep_plugin_sdk::source_rejects::{is_rejects_batch, rejects_from_batch};
use lockstep_plugin_sdk::SourceReject;

use crate::{FilesConfig, FilesConnector};

type Row = Map<String, Value>;

fn config(value: Value) -> FilesConfig {
    serde_json::from_value(value).expect("a valid test config")
}

fn source(value: Value) -> FilesConnector {
    FilesConnector::open_source(config(value)).expect("the source opens")
}

/// Sets a file's modification time `ago` in the past, as if written then.
fn age(path: &Path, ago: Duration) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() - ago).unwrap();
}

fn write_old(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap();
    age(path, Duration::from_secs(60));
}

/// Reads a stream to the end: its rows and the last checkpoint (or the one given); a
/// source reject fails the test.
fn read(
    conn: &mut FilesConnector,
    stream: &str,
    checkpoint: Option<Value>,
    batch_size: usize,
) -> Result<(Vec<Row>, Option<Value>), ConnectorError> {
    let (rows, rejects, last) = read_with_rejects(conn, stream, checkpoint, batch_size)?;
    assert!(rejects.is_empty(), "unexpected rejects: {rejects:?}");
    Ok((rows, last))
}

/// A whole read: its rows, its source rejects and its last checkpoint.
type ReadAll = (Vec<Row>, Vec<SourceReject>, Option<Value>);

/// Reads a stream to the end: its rows, its source rejects and the last checkpoint.
fn read_with_rejects(
    conn: &mut FilesConnector,
    stream: &str,
    checkpoint: Option<Value>,
    batch_size: usize,
) -> Result<ReadAll, ConnectorError> {
    block_on(async {
        conn.catalog()?;
        let mut reader = conn.start_read(ReadRequest {
            stream: stream.into(),
            mode: ReadMode::Incremental,
            checkpoint: checkpoint.clone(),
            batch_size: Some(batch_size),
            ..Default::default()
        })?;
        let mut rows = Vec::new();
        let mut rejects = Vec::new();
        let mut last = checkpoint;
        while let Some((batch, cp)) = reader.next_batch().await? {
            assert!(batch.num_rows() <= batch_size);
            if is_rejects_batch(&batch) {
                rejects.extend(rejects_from_batch(&batch).expect("a well-formed rejects batch"));
            } else {
                rows.extend(rows_from_batch(&batch));
            }
            last = Some(cp);
        }
        Ok((rows, rejects, last))
    })
}

fn names(rows: &[Row]) -> Vec<String> {
    rows.iter()
        .map(|r| r["name"].as_str().unwrap_or("<null>").to_owned())
        .collect()
}

#[test]
fn erp_csv_in_latin1_with_quoted_commas_and_embedded_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let (latin1, _, _) = encoding_rs::WINDOWS_1252
        .encode("id;name;city;balance\n1;Zoë Ærø;\"Paris; 8e\";12.50\n2;\"Müller, Hans\nSohn\";Köln;\n3;plain;;-3\n");
    write_old(&dir.path().join("parties-1.csv"), &latin1);
    let mut conn = source(json!({ "streams": { "parties": {
        "path": format!("{}/parties-*.csv", dir.path().display()),
        "delimiter": ";", "encoding": "latin-1",
        "fields": { "balance": "decimal(10,2)" },
        "primary_key": ["id"],
        "line_field": "_line", "file_field": "_file",
    }}}));
    let catalog = conn.catalog().unwrap();
    let stream = catalog.stream("parties").unwrap();
    let types: Vec<(&str, DataType)> = stream
        .fields
        .iter()
        .map(|f| (f.name.as_str(), f.data_type))
        .collect();
    assert_eq!(
        types,
        [
            ("id", DataType::Int64),
            ("name", DataType::Text),
            ("city", DataType::Text),
            (
                "balance",
                DataType::Decimal {
                    precision: 10,
                    scale: 2
                }
            ),
            ("_file", DataType::Text),
            ("_line", DataType::Int64),
        ]
    );
    let (rows, _) = read(&mut conn, "parties", None, 2).unwrap();
    assert_eq!(names(&rows), ["Zoë Ærø", "Müller, Hans\nSohn", "plain"]);
    assert_eq!(rows[0]["city"], json!("Paris; 8e"));
    assert_eq!(rows[0]["balance"], json!("12.50"));
    assert_eq!(rows[1]["balance"], Value::Null);
    assert_eq!(rows[2]["city"], Value::Null);
    // The second record spans lines 3 and 4; the third starts on line 5.
    let lines: Vec<&Value> = rows.iter().map(|r| &r["_line"]).collect();
    assert_eq!(lines, [&json!(2), &json!(3), &json!(5)]);
    assert!(rows[0]["_file"]
        .as_str()
        .unwrap()
        .ends_with("parties-1.csv"));
}

#[test]
fn a_utf8_bom_is_accepted_and_json_lines_are_read() {
    let dir = tempfile::tempdir().unwrap();
    write_old(
        &dir.path().join("a.csv"),
        "\u{feff}id,name\n1,Zoë\n".as_bytes(),
    );
    write_old(
        &dir.path().join("b.jsonl"),
        b"{\"id\": 1, \"name\": \"x\", \"tags\": [1, 2]}\n\n{\"id\": 2, \"name\": null}\n",
    );
    let mut conn = source(json!({ "streams": {
        "a": { "path": format!("{}/a.csv", dir.path().display()) },
        "b": { "path": format!("{}/b.jsonl", dir.path().display()) },
    }}));
    let (rows, _) = read(&mut conn, "a", None, 10).unwrap();
    assert_eq!(rows[0]["id"], json!(1));
    assert_eq!(names(&rows), ["Zoë"]);
    let catalog = conn.catalog().unwrap();
    let b = catalog.stream("b").unwrap();
    assert_eq!(b.field("tags").unwrap().data_type, DataType::Json);
    let (rows, _) = read(&mut conn, "b", None, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["tags"], json!([1, 2]));
    assert_eq!(rows[1]["name"], Value::Null);
}

#[test]
fn incremental_reads_take_new_and_rewritten_files_but_not_renamed_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    write_old(&p("x-1.csv"), b"id,name\n1,a\n2,b\n");
    let mut conn = source(json!({ "streams": { "x": {
        "path": format!("{}/x-*.csv", dir.path().display()), "settle": "0s",
    }}}));
    let (rows, cp) = read(&mut conn, "x", None, 10).unwrap();
    assert_eq!(names(&rows), ["a", "b"]);

    // Nothing new: nothing read.
    let (rows, cp) = read(&mut conn, "x", cp, 10).unwrap();
    assert!(rows.is_empty(), "{rows:?}");

    // A renamed file is not read again; a touched one neither.
    fs::rename(p("x-1.csv"), p("x-1-renamed.csv")).unwrap();
    age(&p("x-1-renamed.csv"), Duration::from_secs(30));
    let (rows, cp) = read(&mut conn, "x", cp, 10).unwrap();
    assert!(rows.is_empty(), "{rows:?}");

    // A file rewritten in place is read again; a new file is read.
    write_old(&p("x-1-renamed.csv"), b"id,name\n1,a2\n2,b\n");
    write_old(&p("x-2.csv"), b"id,name\n3,c\n");
    let (rows, cp) = read(&mut conn, "x", cp, 10).unwrap();
    let mut got = names(&rows);
    got.sort();
    assert_eq!(got, ["a2", "b", "c"]);
    let (rows, _) = read(&mut conn, "x", cp, 10).unwrap();
    assert!(rows.is_empty(), "{rows:?}");
}

#[test]
fn a_read_resumes_inside_a_file_after_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    write_old(
        &dir.path().join("r.csv"),
        b"id,name\n1,a\n2,b\n3,c\n4,d\n5,e\n",
    );
    let mut conn = source(json!({ "streams": { "r": {
        "path": format!("{}/r.csv", dir.path().display()),
    }}}));
    let first = block_on(async {
        conn.catalog().unwrap();
        let mut reader = conn
            .start_read(ReadRequest {
                stream: "r".into(),
                batch_size: Some(2),
                ..Default::default()
            })
            .unwrap();
        reader.next_batch().await.unwrap().unwrap()
    });
    assert_eq!(names(&rows_from_batch(&first.0)), ["a", "b"]);
    let (rest, _) = read(&mut conn, "r", Some(first.1), 2).unwrap();
    assert_eq!(names(&rest), ["c", "d", "e"]);
}

#[test]
fn files_still_being_written_are_left_for_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let mut conn = source(json!({ "streams": { "s": {
        "path": format!("{}/*.csv", dir.path().display()), "settle": "10s",
    }}}));
    write_old(&p("done.csv"), b"id,name\n1,done\n");
    // Written just now: within the settle time.
    fs::write(p("growing.csv"), b"id,name\n2,first half\n").unwrap();
    // A temporary name, however old.
    write_old(&p("upload.csv.part"), b"id,name\n3,partial\n");
    write_old(&p(".hidden.csv"), b"id,name\n4,hidden\n");
    let (rows, cp) = read(&mut conn, "s", None, 10).unwrap();
    assert_eq!(names(&rows), ["done"]);

    // It grows during the settle time: still not read.
    let mut text = fs::read(p("growing.csv")).unwrap();
    text.extend_from_slice(b"5,second half\n");
    fs::write(p("growing.csv"), &text).unwrap();
    let (rows, cp) = read(&mut conn, "s", cp, 10).unwrap();
    assert!(rows.is_empty(), "{rows:?}");

    // Once it has been left alone for the settle time, it is read whole.
    age(&p("growing.csv"), Duration::from_secs(11));
    let (rows, _) = read(&mut conn, "s", cp, 10).unwrap();
    assert_eq!(names(&rows), ["first half", "second half"]);
}

/// The (file, line, reason) of each reject.
fn where_and_why(rejects: &[SourceReject]) -> Vec<(String, u64, String)> {
    rejects
        .iter()
        .map(|r| {
            (
                r.location["file"].as_str().unwrap_or_default().to_owned(),
                r.location["line"].as_u64().unwrap_or_default(),
                r.reason.clone(),
            )
        })
        .collect()
}

#[test]
fn malformed_rows_are_rejects_with_file_and_line_and_the_rest_arrives() {
    let dir = tempfile::tempdir().unwrap();
    write_old(
        &dir.path().join("bad.csv"),
        b"id,name,amount\n1,a,1\n2,b\n3,c,3\n4,d,4,extra\n5,e,5\n",
    );
    write_old(
        &dir.path().join("bad.jsonl"),
        b"{\"id\": 1}\n{\"id\": 2\n[3]\n{\"id\": 4}\n",
    );
    let mut conn = source(json!({ "streams": {
        "c": { "path": format!("{}/bad.csv", dir.path().display()) },
        "j": { "path": format!("{}/bad.jsonl", dir.path().display()) },
    }}));
    for batch_size in [1, 2, 10] {
        let (rows, rejects, _) = read_with_rejects(&mut conn, "c", None, batch_size).unwrap();
        assert_eq!(names(&rows), ["a", "c", "e"], "batch size {batch_size}");
        let found = where_and_why(&rejects);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[0].0.ends_with("/bad.csv"), "{found:?}");
        assert_eq!(found[0].1, 3);
        assert!(
            found[0]
                .2
                .contains("2 values where the header has 3 columns"),
            "{found:?}"
        );
        assert_eq!(found[1].1, 5);
        assert!(found[1].2.contains("4 values"), "{found:?}");
        assert_eq!(rejects[0].raw, "2,b");
        assert_eq!(rejects[1].raw, "4,d,4,extra");
    }
    let (rows, rejects, _) = read_with_rejects(&mut conn, "j", None, 10).unwrap();
    assert_eq!(rows.len(), 2);
    let found = where_and_why(&rejects);
    assert_eq!(found[0].1, 2);
    assert!(found[0].2.contains("invalid JSON"), "{found:?}");
    assert_eq!(rejects[0].raw, "{\"id\": 2");
    assert_eq!(found[1].1, 3);
    assert!(
        found[1].2.contains("a JSON Lines record must be an object"),
        "{found:?}"
    );
}

#[test]
fn a_reject_carries_the_record_as_the_file_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    // A byte-order mark, Windows line breaks, quoted delimiters, doubled quotes and a line
    // break inside a quoted value: the reject's text is the file's own text.
    let mut csv = b"\xEF\xBB\xBFid,name,city\r\n".to_vec();
    csv.extend_from_slice(b"1,\"Ann, A.\",Paris\r\n");
    csv.extend_from_slice(b"2,\"Bob \"\"the\"\" B.\"\r\n");
    csv.extend_from_slice(b"3,\"multi\r\nline\",Oslo,extra\r\n");
    csv.extend_from_slice(b"x,\"Eve, E.\",Rome\r\n");
    csv.extend_from_slice(b"5,Fay,Nice\r\n");
    write_old(&dir.path().join("q.csv"), &csv);
    let (latin1, _, _) = encoding_rs::WINDOWS_1252.encode("id,name,city\n1,\"Zoë; Ärger\"\n");
    write_old(&dir.path().join("l.csv"), &latin1);
    write_old(
        &dir.path().join("j.jsonl"),
        b"{\"id\": 1, \"name\": \"a\"}\n{ \"id\" : \"abc\",  \"name\": \"b\" }\r\n{\"id\": 3, \"name\": \"c\"}\n",
    );
    // A quote left open runs to the end of the file: the text kept is cut.
    let mut open = b"id,name,city\n1,\"open quote".to_vec();
    open.extend(std::iter::repeat_n(b'z', 100_000));
    open.extend_from_slice(b"\n");
    write_old(&dir.path().join("o.csv"), &open);
    let stream = |file: &str| json!({ "path": format!("{}/{file}", dir.path().display()), "fields": { "id": "int64" } });
    let mut conn = source(json!({ "streams": {
        "q": stream("q.csv"),
        "l": { "path": format!("{}/l.csv", dir.path().display()), "encoding": "latin-1" },
        "j": stream("j.jsonl"),
        "o": stream("o.csv"),
    }}));
    for batch_size in [1, 2, 10] {
        let (rows, rejects, _) = read_with_rejects(&mut conn, "q", None, batch_size).unwrap();
        assert_eq!(names(&rows), ["Ann, A.", "Fay"], "batch size {batch_size}");
        let found = where_and_why(&rejects);
        assert_eq!(
            found.iter().map(|r| r.1).collect::<Vec<_>>(),
            [3, 4, 6],
            "{found:?}"
        );
        let raws: Vec<&str> = rejects.iter().map(|r| r.raw.as_str()).collect();
        assert_eq!(
            raws,
            [
                "2,\"Bob \"\"the\"\" B.\"",
                "3,\"multi\r\nline\",Oslo,extra",
                "x,\"Eve, E.\",Rome"
            ]
        );
        assert_eq!(rejects[2].field.as_deref(), Some("id"));
        assert!(found[2].2.contains("`x` is not an integer"), "{found:?}");
    }
    let (_, rejects, _) = read_with_rejects(&mut conn, "l", None, 10).unwrap();
    assert_eq!(rejects[0].raw, "1,\"Zoë; Ärger\"");
    let (rows, rejects, _) = read_with_rejects(&mut conn, "j", None, 10).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rejects[0].raw, "{ \"id\" : \"abc\",  \"name\": \"b\" }");
    assert_eq!(where_and_why(&rejects)[0].1, 2);
    let (_, rejects, _) = read_with_rejects(&mut conn, "o", None, 10).unwrap();
    assert!(
        rejects[0].raw.starts_with("1,\"open quotezzz"),
        "{}",
        &rejects[0].raw[..40]
    );
    assert!(
        rejects[0].raw.len() < 70 * 1024 && rejects[0].raw.contains("… (cut: the record takes"),
        "{}",
        rejects[0].raw.len()
    );
}

/// Reads `stream` again at the places of `rejects` (a retry): one batch each.
fn read_at(
    conn: &mut FilesConnector,
    stream: &str,
    rejects: &[SourceReject],
) -> Vec<lockstep_plugin_sdk::arrow::array::RecordBatch> {
    block_on(async {
        conn.catalog().unwrap();
        let locations = rejects
            .iter()
            .map(|r| {
                let mut place = r.location.clone();
                place.insert("text".into(), Value::String(r.raw.clone()));
                Value::Object(place)
            })
            .collect();
        let mut reader = conn
            .start_read(ReadRequest {
                stream: stream.into(),
                locations: Some(locations),
                ..Default::default()
            })
            .unwrap();
        let mut batches = Vec::new();
        while let Some((batch, checkpoint)) = reader.next_batch().await.unwrap() {
            assert_eq!(
                checkpoint,
                Value::Null,
                "a read at places keeps no position"
            );
            batches.push(batch);
        }
        batches
    })
}

#[test]
fn a_rejected_line_is_read_again_at_its_place_as_it_is_now() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.csv");
    write_old(&path, b"id,name,amount\n1,a,1\n2,\"b, c\"\n3,d,x\n4,e,4\n");
    let stream = |amount: &str| {
        json!({ "streams": { "p": {
            "path": format!("{}/p.csv", dir.path().display()),
            "fields": { "amount": amount },
            "line_field": "line",
        }}})
    };
    let mut conn = source(stream("int64"));
    let (rows, rejects, _) = read_with_rejects(&mut conn, "p", None, 10).unwrap();
    assert_eq!(names(&rows), ["a", "e"]);
    assert_eq!(
        where_and_why(&rejects)
            .iter()
            .map(|r| r.1)
            .collect::<Vec<_>>(),
        [3, 4]
    );

    // Unchanged, both still cannot be read: one rejects batch each, in order, same lines.
    let batches = read_at(&mut conn, "p", &rejects);
    assert_eq!(batches.len(), 2);
    for (batch, line) in batches.iter().zip([3, 4]) {
        assert!(is_rejects_batch(batch));
        let again = rejects_from_batch(batch).unwrap();
        assert_eq!(where_and_why(&again)[0].1, line);
    }

    // With the type declared as text, line 4 reads; line 3 still has too few values.
    let mut as_text = source(stream("text"));
    let batches = read_at(&mut as_text, "p", &rejects);
    assert!(is_rejects_batch(&batches[0]));
    let row = rows_from_batch(&batches[1]);
    assert_eq!(row.len(), 1);
    assert_eq!(
        (row[0]["name"].clone(), row[0]["amount"].clone()),
        (json!("d"), json!("x"))
    );
    assert_eq!(row[0]["line"], json!(4));

    // Fixed in place: line 3 now reads. A line past the end holds no record any more.
    write_old(&path, b"id,name,amount\n1,a,1\n2,\"b, c\",2\n3,d,3\n");
    let mut beyond = rejects[1].clone();
    beyond.location.insert("line".into(), json!(9));
    let batches = read_at(&mut conn, "p", &[rejects[0].clone(), beyond]);
    let row = rows_from_batch(&batches[0]);
    assert_eq!(
        (row[0]["name"].clone(), row[0]["line"].clone()),
        (json!("b, c"), json!(3))
    );
    assert!(!is_rejects_batch(&batches[1]));
    assert_eq!(batches[1].num_rows(), 0);

    // A file that is gone (moved by `after_read`, say): a reject saying so, with the text.
    fs::remove_file(&path).unwrap();
    let batches = read_at(&mut conn, "p", &rejects[..1]);
    let again = rejects_from_batch(&batches[0]).unwrap();
    assert!(
        again[0].reason.contains("is no longer among the files"),
        "{again:?}"
    );
    assert_eq!(again[0].raw, "2,\"b, c\"");
}

#[test]
fn a_read_resumed_after_a_rejects_batch_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_old(
        &dir.path().join("r.csv"),
        b"id,name\n1,a\n2,b,x\n3,c\n4\n5,e\n",
    );
    let mut conn = source(json!({ "streams": {
        "r": { "path": format!("{}/r.csv", dir.path().display()) },
    }}));
    // Stop after every batch and resume from its checkpoint: each record arrives once.
    let mut checkpoint = None;
    let mut rows = Vec::new();
    let mut rejects = Vec::new();
    for _ in 0..20 {
        let (batch_rows, batch_rejects, next) = block_on(async {
            conn.catalog()?;
            let mut reader = conn.start_read(ReadRequest {
                stream: "r".into(),
                mode: ReadMode::Incremental,
                checkpoint: checkpoint.clone(),
                batch_size: Some(2),
                ..Default::default()
            })?;
            Ok::<_, ConnectorError>(match reader.next_batch().await? {
                None => (Vec::new(), Vec::new(), None),
                Some((batch, cp)) if is_rejects_batch(&batch) => {
                    (Vec::new(), rejects_from_batch(&batch).unwrap(), Some(cp))
                }
                Some((batch, cp)) => (rows_from_batch(&batch), Vec::new(), Some(cp)),
            })
        })
        .unwrap();
        let Some(next) = next else { break };
        rows.extend(batch_rows);
        rejects.extend(batch_rejects);
        checkpoint = Some(next);
    }
    assert_eq!(names(&rows), ["a", "c", "e"]);
    let lines: Vec<u64> = where_and_why(&rejects).iter().map(|r| r.1).collect();
    assert_eq!(lines, [3, 5]);
}

#[test]
fn a_value_that_does_not_parse_as_its_declared_type_is_a_reject_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    write_old(
        &dir.path().join("t.csv"),
        b"id,amount\n1,2.5\n2,abc\n3,4\n4,x\n",
    );
    let mut conn = source(json!({ "streams": { "t": {
        "path": format!("{}/t.csv", dir.path().display()),
        "fields": { "amount": "decimal(10,2)" },
    }}}));
    for batch_size in [1, 3, 10] {
        let (rows, rejects, _) = read_with_rejects(&mut conn, "t", None, batch_size).unwrap();
        let ids: Vec<&Value> = rows.iter().map(|r| &r["id"]).collect();
        assert_eq!(ids.len(), 2, "batch size {batch_size}: {rows:?}");
        let found = where_and_why(&rejects);
        assert_eq!(
            found.iter().map(|r| r.1).collect::<Vec<_>>(),
            [3, 5],
            "batch size {batch_size}"
        );
        assert_eq!(rejects[0].field.as_deref(), Some("amount"));
        assert!(
            found[0].2.contains("`abc` is not a decimal number"),
            "{found:?}"
        );
    }
}

#[test]
fn a_wrong_encoding_names_the_file_and_the_option_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let (latin1, _, _) = encoding_rs::WINDOWS_1252.encode("id,name\n1,Zoë\n");
    write_old(&dir.path().join("l.csv"), &latin1);
    let mut conn = source(json!({ "streams": { "l": {
        "path": format!("{}/l.csv", dir.path().display()),
    }}}));
    let e = conn.catalog().unwrap_err();
    assert_eq!(e.kind, lockstep_plugin_sdk::api::ErrorKind::CONFIG);
    assert!(e.message.contains("l.csv`, line 2"), "{}", e.message);
    assert!(e.message.contains("not valid UTF-8"), "{}", e.message);
    assert!(
        e.message.contains("set `encoding = \"windows-1252\"`") && e.message.contains("streams.l"),
        "{}",
        e.message
    );
}

#[test]
fn bad_configs_are_refused_naming_the_key() {
    let bad = |value: Value, expected: &str| {
        let e = FilesConfig::deserialize_and_open(value).unwrap_err();
        assert!(
            e.message.contains(expected),
            "{} (expected {expected})",
            e.message
        );
    };
    bad(json!({}), "needs `streams`");
    bad(
        json!({ "streams": { "s": { "path": "a.csv", "encoding": "ebcdic" } } }),
        "`streams.s.encoding` must be",
    );
    bad(
        json!({ "streams": { "s": { "path": "a.dat" } } }),
        "set `streams.s.format`",
    );
    bad(
        json!({ "streams": { "s": { "path": "a.csv", "fields": { "x": "int" } } } }),
        "unknown type `int`",
    );
    bad(
        json!({ "streams": { "s": { "path": "a.csv", "settle": "5 minutes" } } }),
        "`streams.s.settle`: invalid duration",
    );
    bad(
        json!({ "streams": { "s": { "path": "a.csv", "delimiter": ";;" } } }),
        "one ASCII character",
    );
}

impl FilesConfig {
    fn deserialize_and_open(value: Value) -> Result<FilesConnector, ConnectorError> {
        let config: FilesConfig =
            serde_json::from_value(value).map_err(|e| ConnectorError::config(e.to_string()))?;
        FilesConnector::open_source(config)
    }
}

fn test_batch() -> lockstep_plugin_sdk::arrow::array::RecordBatch {
    use lockstep_plugin_sdk::rows::batch_from_rows;
    let rows: Vec<Row> = (1..=4)
        .map(|i| {
            let Value::Object(row) = json!({
                "id": i,
                "name": format!("name, {i}\n\"quoted\""),
                "amount": format!("{i}.25"),
                "props": if i % 2 == 0 { json!({"vip": i, "tags": ["a, b"]}) } else { json!("plain \"text\"") },
            }) else {
                unreachable!()
            };
            row
        })
        .collect();
    batch_from_rows(&dest_fields(), &rows).unwrap()
}

fn dest_fields() -> Vec<lockstep_plugin_sdk::FieldInfo> {
    let field = |name: &str, data_type| lockstep_plugin_sdk::FieldInfo {
        name: name.into(),
        data_type,
        nullable: true,
        native_type: None,
    };
    vec![
        field("id", DataType::Int64),
        field("name", DataType::Text),
        field(
            "amount",
            DataType::Decimal {
                precision: 10,
                scale: 2,
            },
        ),
        field("props", DataType::Json),
    ]
}

fn open_request() -> OpenStreamRequest {
    OpenStreamRequest {
        stream: "contacts".into(),
        fields: dest_fields(),
        key: vec!["id".into()],
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

fn visible_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

#[test]
fn the_destination_publishes_files_on_flush_and_a_source_reads_them_back() {
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({ "dir": dir.path().display().to_string() });
    let mut dest = FilesConnector::open_destination(config(conf.clone())).unwrap();
    block_on(async {
        let mut writer = dest.start_write(open_request()).unwrap();
        writer.upsert(test_batch()).await.unwrap();
        // Nothing is visible before the flush.
        assert!(visible_files(dir.path()).is_empty());
        writer.flush().await.unwrap();
        let files = visible_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert!(files[0].starts_with("contacts-") && files[0].ends_with("-00001.csv"));
        // A delete is refused as unsupported: files only add records.
        let e = writer.delete(test_batch()).await.unwrap_err();
        assert_eq!(e.kind, lockstep_plugin_sdk::api::ErrorKind::UNSUPPORTED);
        // Written but not flushed: gone with the writer.
        writer.upsert(test_batch()).await.unwrap();
    });
    assert_eq!(visible_files(dir.path()).len(), 1);
    assert_eq!(
        fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count(),
        0
    );

    let mut back = source(conf);
    let catalog = back.catalog().unwrap();
    let stream = catalog.stream("contacts").unwrap();
    assert_eq!(stream.fields, dest_fields());
    assert_eq!(stream.primary_key, ["id"]);
    let (rows, _) = read(&mut back, "contacts", None, 3).unwrap();
    let expected = lockstep_plugin_sdk::rows::rows_from_batch(&test_batch());
    assert_eq!(rows, expected);
}

#[test]
fn one_file_per_run_is_published_when_the_run_ends_and_what_a_flush_promised_survives() {
    use lockstep_plugin_sdk::run_end::run_end_batch;
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({ "dir": dir.path().display().to_string(), "one_file_per_run": true });
    let ids = |conf: &Value| -> Vec<i64> {
        let mut back = source(conf.clone());
        let (rows, _) = read(&mut back, "contacts", None, 100).unwrap();
        rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
    };
    let mut dest = FilesConnector::open_destination(config(conf.clone())).unwrap();

    // Three batches, each flushed: one file, visible only once the run ends.
    let mut writer = dest.start_write(open_request()).unwrap();
    for _ in 0..3 {
        block_on(writer.upsert(test_batch())).unwrap();
        block_on(writer.flush()).unwrap();
        assert!(
            visible_files(dir.path()).is_empty(),
            "no file before the run ends"
        );
    }
    block_on(writer.upsert(run_end_batch(true).unwrap())).unwrap();
    block_on(writer.flush()).unwrap();
    drop(writer);
    let files = visible_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(ids(&conf).len(), 12);

    // A run that fails after a flush: the flushed batch is published, the unflushed one not.
    std::thread::sleep(Duration::from_millis(5));
    let mut writer = dest.start_write(open_request()).unwrap();
    block_on(writer.upsert(test_batch())).unwrap();
    block_on(writer.flush()).unwrap();
    block_on(writer.upsert(test_batch())).unwrap();
    drop(writer);
    assert_eq!(visible_files(dir.path()).len(), 2);
    assert_eq!(ids(&conf).len(), 16);

    // A crash after a flush (no clean-up at all): the next writer publishes the flushed part.
    std::thread::sleep(Duration::from_millis(5));
    let mut writer = dest.start_write(open_request()).unwrap();
    block_on(writer.upsert(test_batch())).unwrap();
    block_on(writer.flush()).unwrap();
    block_on(writer.upsert(test_batch())).unwrap();
    block_on(writer.upsert(test_batch())).unwrap();
    std::mem::forget(writer);
    assert_eq!(
        visible_files(dir.path()).len(),
        2,
        "not visible before recovery"
    );
    std::thread::sleep(Duration::from_millis(5));
    let writer = dest.start_write(open_request()).unwrap();
    drop(writer);
    assert_eq!(visible_files(dir.path()).len(), 3);
    assert_eq!(ids(&conf).len(), 20, "the flushed batch only");
    let leftovers: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".flushed"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn the_destination_rolls_files_by_size_and_writes_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({
        "dir": dir.path().display().to_string(),
        "format": "jsonl",
        "max_file_bytes": 100,
        "file_name": "{stream}_{seq}_{run}.{ext}",
    });
    let mut dest = FilesConnector::open_destination(config(conf.clone())).unwrap();
    block_on(async {
        let mut writer = dest.start_write(open_request()).unwrap();
        writer.upsert(test_batch()).await.unwrap();
        writer.flush().await.unwrap();
    });
    let files = visible_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");
    assert!(files.iter().all(|f| f.ends_with(".jsonl")));
    let mut back = source(conf);
    let (rows, _) = read(&mut back, "contacts", None, 10).unwrap();
    let mut ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3, 4]);
}

#[test]
fn a_stream_does_not_read_the_files_of_a_stream_whose_name_it_prefixes() {
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({ "dir": dir.path().display().to_string() });
    let mut dest = FilesConnector::open_destination(config(conf.clone())).unwrap();
    block_on(async {
        for stream in ["contacts", "contacts-archive"] {
            let mut writer = dest
                .start_write(OpenStreamRequest {
                    stream: stream.into(),
                    ..open_request()
                })
                .unwrap();
            writer.upsert(test_batch()).await.unwrap();
            writer.flush().await.unwrap();
        }
    });
    assert_eq!(visible_files(dir.path()).len(), 2);
    let mut back = source(conf);
    let (rows, _) = read(&mut back, "contacts", None, 10).unwrap();
    assert_eq!(rows.len(), 4);
}

#[test]
fn a_file_growing_while_a_run_reads_it_fails_the_run_as_transient_and_is_read_whole_later() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g-1.csv");
    write_old(&path, b"id,name\n1,a\n2,b\n3,c\n");
    let mut conn = source(json!({ "streams": { "g": {
        "path": format!("{}/g-*.csv", dir.path().display()), "settle": "0s",
    }}}));
    let error = block_on(async {
        conn.catalog().unwrap();
        let mut reader = conn
            .start_read(ReadRequest {
                stream: "g".into(),
                mode: ReadMode::Incremental,
                batch_size: Some(1),
                ..Default::default()
            })
            .unwrap();
        let mut delivered = 0;
        loop {
            match reader.next_batch().await {
                Ok(Some(_)) => {
                    delivered += 1;
                    if delivered == 1 {
                        // The exporter appends while the run reads.
                        let mut text = fs::read(&path).unwrap();
                        text.extend_from_slice(b"4,d\n");
                        fs::write(&path, text).unwrap();
                    }
                }
                Ok(None) => panic!("the read ended without noticing the change"),
                Err(e) => break e,
            }
        }
    });
    assert_eq!(error.kind, lockstep_plugin_sdk::api::ErrorKind::TRANSIENT);
    assert!(
        error.message.contains("g-1.csv` changed while it was read")
            && error.message.contains("streams.g.settle"),
        "{}",
        error.message
    );
    // Once it has settled, the next run reads it whole, from its start.
    age(&path, Duration::from_secs(60));
    let (rows, _) = read(&mut conn, "g", None, 10).unwrap();
    assert_eq!(names(&rows), ["a", "b", "c", "d"]);
}

#[test]
fn a_file_appearing_while_a_run_reads_is_left_for_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    write_old(&p("a-1.csv"), b"id,name\n1,a\n2,b\n");
    let mut conn = source(json!({ "streams": { "a": {
        "path": format!("{}/a-*.csv", dir.path().display()), "settle": "0s",
    }}}));
    let (first, checkpoint) = block_on(async {
        conn.catalog().unwrap();
        let mut reader = conn
            .start_read(ReadRequest {
                stream: "a".into(),
                batch_size: Some(1),
                ..Default::default()
            })
            .unwrap();
        let mut rows = Vec::new();
        let mut last = None;
        while let Some((batch, cp)) = reader.next_batch().await.unwrap() {
            rows.extend(rows_from_batch(&batch));
            last = Some(cp);
            if rows.len() == 1 {
                // A new export lands in the middle of the read.
                write_old(&p("a-2.csv"), b"id,name\n3,c\n");
            }
        }
        (rows, last)
    });
    assert_eq!(names(&first), ["a", "b"]);
    let (rows, _) = read(&mut conn, "a", checkpoint, 10).unwrap();
    assert_eq!(names(&rows), ["c"]);
}

#[test]
fn a_field_the_stream_does_not_have_is_a_reject_or_for_a_csv_header_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write_old(
        &dir.path().join("u.jsonl"),
        b"{\"id\": 1}\n{\"id\": 2, \"extra\": true}\n{\"id\": 3}\n",
    );
    write_old(&dir.path().join("u-1.csv"), b"id\n1\n");
    write_old(&dir.path().join("u-2.csv"), b"id,extra\n2,x\n");
    let mut conn = source(json!({ "streams": {
        "j": { "path": format!("{}/u.jsonl", dir.path().display()), "infer_rows": 1 },
        "c": { "path": format!("{}/u-*.csv", dir.path().display()) },
    }}));
    let (rows, rejects, _) = read_with_rejects(&mut conn, "j", None, 10).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let found = where_and_why(&rejects);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].0.ends_with("u.jsonl") && found[0].1 == 2,
        "{found:?}"
    );
    assert!(found[0].2.contains("field `extra`"), "{found:?}");
    assert!(
        found[0].2.contains("declare it in `streams.j.fields`"),
        "{found:?}"
    );
    assert_eq!(rejects[0].field.as_deref(), Some("extra"));
    // A CSV header names the columns of every row: a column the stream does not know stops
    // the read, naming the file.
    let e = read(&mut conn, "c", None, 10).unwrap_err();
    assert!(e.message.contains("field `extra`"), "{}", e.message);
}

#[test]
fn after_read_acts_only_on_files_of_the_committed_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    fs::create_dir_all(p("in")).unwrap();
    write_old(&p("in/a-1.csv"), b"id,name\n1,a\n");
    write_old(&p("in/b-1.csv"), b"id,name\n1,b\n");
    let mut conn = source(json!({ "streams": {
        "a": {
            "path": format!("{}/in/a-*.csv", dir.path().display()),
            "settle": "0s",
            "after_read": { "move_to": format!("{}/done", dir.path().display()) },
        },
        "b": {
            "path": format!("{}/in/b-*.csv", dir.path().display()),
            "settle": "0s",
            "after_read": "delete",
        },
    }}));
    for (stream, file) in [("a", "in/a-1.csv"), ("b", "in/b-1.csv")] {
        // A read whose checkpoint was never committed (the next read opens without it)
        // leaves the file, which is read again.
        let (rows, _) = read(&mut conn, stream, None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(p(file).exists());
        let (rows, committed) = read(&mut conn, stream, None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert!(p(file).exists());
        // The read that opens with the committed checkpoint acts on the file first.
        let (rows, _) = read(&mut conn, stream, committed, 10).unwrap();
        assert!(rows.is_empty(), "{rows:?}");
        assert!(!p(file).exists(), "{file} is moved or deleted");
    }
    assert_eq!(fs::read(p("done/a-1.csv")).unwrap(), b"id,name\n1,a\n");

    // A file rewritten since its read is left alone.
    write_old(&p("in/b-2.csv"), b"id,name\n2,b\n");
    let (_, committed) = read(&mut conn, "b", None, 10).unwrap();
    write_old(&p("in/b-2.csv"), b"id,name\n2,changed\n");
    let (rows, _) = read(&mut conn, "b", committed, 10).unwrap();
    assert_eq!(names(&rows), ["changed"]);
    assert!(p("in/b-2.csv").exists());

    let bad = FilesConnector::open_source(config(json!({ "streams": { "c": {
        "path": "x/*.csv", "after_read": "archive",
    }}})));
    let e = bad.and_then(|c| c.check_source().map(|()| c)).unwrap_err();
    assert!(e.message.contains("streams.c.after_read"), "{}", e.message);
}

#[test]
fn snapshot_mode_replaces_the_file_set_only_when_a_run_ends_having_written_every_record() {
    use lockstep_plugin_sdk::run_end::run_end_batch;
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({ "dir": dir.path().display().to_string(), "snapshot": true });
    let link = dir.path().join("contacts");
    let mut dest = FilesConnector::open_destination(config(conf.clone())).unwrap();
    let ids = |conf: &Value| {
        let mut back = source(conf.clone());
        let (rows, _) = read(&mut back, "contacts", None, 10).unwrap();
        let mut ids: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
        ids.sort();
        ids
    };
    let generations = || {
        fs::read_dir(dir.path().join(".lockstep/snapshots/contacts"))
            .unwrap()
            .count()
    };
    {
        // First run: flushed batches stay out of sight until the run ends.
        let mut writer = dest.start_write(open_request()).unwrap();
        block_on(writer.upsert(test_batch())).unwrap();
        block_on(writer.flush()).unwrap();
        assert!(
            fs::symlink_metadata(&link).is_err(),
            "no snapshot before the run ends"
        );
        block_on(writer.upsert(run_end_batch(true).unwrap())).unwrap();
        block_on(writer.flush()).unwrap();
        drop(writer);
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(ids(&conf), [1, 2, 3, 4]);

        // Second run: while it writes, readers still see the first set, whole.
        let mut writer = dest.start_write(open_request()).unwrap();
        let first_two = test_batch().slice(0, 2);
        block_on(writer.upsert(first_two)).unwrap();
        block_on(writer.flush()).unwrap();
        assert_eq!(ids(&conf), [1, 2, 3, 4], "the old set, not a mix");
        block_on(writer.upsert(run_end_batch(true).unwrap())).unwrap();
        block_on(writer.flush()).unwrap();
        drop(writer);
        assert_eq!(ids(&conf), [1, 2], "the new set replaced the old one");
        assert_eq!(
            generations(),
            2,
            "the previous generation is kept until the next swap"
        );

        // A run that did not write every record is refused at its end; the snapshot stays.
        let mut writer = dest.start_write(open_request()).unwrap();
        block_on(writer.upsert(test_batch().slice(3, 1))).unwrap();
        block_on(writer.flush()).unwrap();
        block_on(writer.upsert(run_end_batch(false).unwrap())).unwrap();
        let e = block_on(writer.flush()).unwrap_err();
        assert!(e.message.contains("ledger = false"), "{}", e.message);
        drop(writer);
        assert_eq!(ids(&conf), [1, 2]);
        assert_eq!(generations(), 2, "an unpublished generation is removed");

        // A run that stops before its end (no run-end) leaves the snapshot too.
        let mut writer = dest.start_write(open_request()).unwrap();
        block_on(writer.upsert(test_batch())).unwrap();
        block_on(writer.flush()).unwrap();
        drop(writer);
        assert_eq!(ids(&conf), [1, 2]);

        // The third published run removes the first generation.
        let mut writer = dest.start_write(open_request()).unwrap();
        block_on(writer.upsert(test_batch().slice(2, 2))).unwrap();
        block_on(writer.upsert(run_end_batch(true).unwrap())).unwrap();
        block_on(writer.flush()).unwrap();
        drop(writer);
        assert_eq!(ids(&conf), [3, 4]);
        assert_eq!(generations(), 2);
    }

    // A real directory where the link goes is refused, naming it.
    let other = tempfile::tempdir().unwrap();
    fs::create_dir(other.path().join("contacts")).unwrap();
    let mut dest = FilesConnector::open_destination(config(
        json!({ "dir": other.path().display().to_string(), "snapshot": true }),
    ))
    .unwrap();
    let e = dest.start_write(open_request()).map(|_| ()).unwrap_err();
    assert!(e.message.contains("snapshot mode"), "{}", e.message);
}
