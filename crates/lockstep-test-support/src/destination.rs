//! The destination checks: bad configs, open and check, open_stream, upsert, read back,
//! upsert again, delete.

use std::sync::Arc;

use arrow::array::{BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use lockstep_plugin_host::{no_redaction, DestinationHandle, LoadedPlugin, StreamWriterHandle};
use lockstep_protocol::arrow_types::arrow_schema;
use lockstep_protocol::{
    DataType, FieldInfo, OpenStreamRequest, ReadMode, ReadRequest, Role, SchemaEvolution,
    WriteOutcome,
};
use serde_json::{json, Map, Value};

use crate::checks;
use crate::report::Recorder;
use crate::source::{read, refuses_bad_configs, ReadError};
use crate::util::{same_value, some_of};
use crate::Conformance;

/// One row of the test data.
#[derive(Clone)]
struct Row {
    id: i64,
    name: Option<&'static str>,
    score: Option<f64>,
    active: Option<bool>,
}

fn fields() -> Vec<FieldInfo> {
    let field = |name: &str, data_type, nullable| FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: None,
    };
    vec![
        field("id", DataType::Int64, false),
        field("name", DataType::Text, true),
        field("score", DataType::Float64, true),
        field("active", DataType::Boolean, true),
    ]
}

/// Test rows with the values connectors most often get wrong: quotes, commas, non-ASCII
/// text, nulls in every nullable field, negative and fractional numbers.
fn sample() -> Vec<Row> {
    let row = |id, name, score, active| Row {
        id,
        name,
        score,
        active,
    };
    vec![
        row(1, Some("one"), Some(1.5), Some(true)),
        row(2, Some("Zoë \"quoted\" O'Brien"), Some(-0.25), Some(false)),
        row(3, None, None, None),
        row(
            4,
            Some("four, with a comma\nand a newline"),
            Some(1024.125),
            Some(true),
        ),
        row(5, Some(""), Some(0.0), Some(false)),
    ]
}

fn batch(rows: &[Row]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(arrow_schema(&fields())),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.id))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.name))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.score))),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.active))),
        ],
    )
    .expect("the sample columns match the sample fields")
}

fn keys(ids: &[i64]) -> RecordBatch {
    RecordBatch::try_new(
        Arc::new(arrow_schema(&fields()[..1])),
        vec![Arc::new(Int64Array::from_iter_values(ids.iter().copied()))],
    )
    .expect("the key column matches the key field")
}

fn as_json(row: &Row) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "id": row.id,
        "name": row.name,
        "score": row.score,
        "active": row.active,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    map
}

fn unique_stream_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "lockstep_conformance_{:x}",
        (nanos as u64) ^ ((std::process::id() as u64) << 40)
    )
}

pub(crate) async fn check(
    r: &mut Recorder,
    plugin: &LoadedPlugin,
    config: &Value,
    opts: &Conformance,
) {
    let refused = refuses_bad_configs(r, plugin, Role::Destination, &opts.bad_configs).await;
    r.record(checks::DESTINATION_BAD_CONFIG, refused);

    let later = [
        checks::DESTINATION_OPEN_STREAM,
        checks::DESTINATION_UPSERT,
        checks::DESTINATION_READ_BACK,
        checks::DESTINATION_UPSERT_AGAIN,
        checks::DESTINATION_DELETE,
    ];
    let skip_later = |r: &mut Recorder, from: usize, why: &str| {
        for name in &later[from..] {
            r.skip(name, why);
        }
    };

    let opened = r
        .call(
            "new_destination",
            plugin.open_destination(config, no_redaction()),
        )
        .await;
    let mut destination = match opened {
        Ok(d) => d,
        Err(e) => {
            r.fail(checks::DESTINATION_OPEN, e);
            return skip_later(r, 0, "the destination did not open");
        }
    };
    if let Err(e) = r.call("check", destination.check()).await {
        r.fail(checks::DESTINATION_OPEN, e);
        return skip_later(r, 0, "the destination's check failed");
    }
    r.pass(checks::DESTINATION_OPEN, "");

    let stream = unique_stream_name();
    let mut writer = match open_stream(r, &mut destination, &stream).await {
        Ok((writer, note)) => {
            r.pass(checks::DESTINATION_OPEN_STREAM, note);
            writer
        }
        Err(reason) => {
            let opened = reason.starts_with("open_stream");
            r.fail(checks::DESTINATION_OPEN_STREAM, reason);
            if opened {
                return skip_later(r, 1, "open_stream failed");
            }
            // The writer exists even though discover does not show the stream: go on.
            match r
                .call("open_stream", destination.open_stream(&request(&stream)))
                .await
            {
                Ok(writer) => writer,
                Err(_) => return skip_later(r, 1, "open_stream failed"),
            }
        }
    };

    let readable = plugin.manifest.roles.contains(&Role::Source);
    let no_source = "the write succeeded, but the connector has no source role to read it back";
    let mut rows = sample();

    let written = write(r, &mut writer, "upsert", batch(&rows))
        .await
        .map_err(|(_, e)| e);
    let written = written.and_then(|outcome| {
        counts(&outcome, rows.len(), 0)?;
        Ok(format!("{} rows", rows.len()))
    });
    if !r.record(checks::DESTINATION_UPSERT, written) {
        return skip_later(r, 2, "the first upsert failed");
    }
    if readable {
        let back = read_back(r, plugin, config, &stream, &rows, opts).await;
        r.record(checks::DESTINATION_READ_BACK, back);
    } else {
        r.skip(checks::DESTINATION_READ_BACK, no_source);
    }

    // The same keys again, one row changed: an update, not new rows.
    rows[1].name = Some("two, updated");
    let again = write(r, &mut writer, "the second upsert", batch(&rows))
        .await
        .map_err(|(_, e)| e);
    let again = again.and_then(|outcome| counts(&outcome, 0, rows.len()));
    match again {
        Err(reason) => r.fail(checks::DESTINATION_UPSERT_AGAIN, reason),
        Ok(()) if !readable => r.skip(checks::DESTINATION_UPSERT_AGAIN, no_source),
        Ok(()) => {
            let back = read_back(r, plugin, config, &stream, &rows, opts).await;
            r.record(checks::DESTINATION_UPSERT_AGAIN, back);
        }
    }

    let deleted = write(r, &mut writer, "delete", keys(&[1, 3])).await;
    rows.retain(|row| row.id != 1 && row.id != 3);
    match deleted {
        Err((true, reason)) => r.skip(checks::DESTINATION_DELETE, reason),
        Err((false, reason)) => r.fail(checks::DESTINATION_DELETE, reason),
        Ok(WriteOutcome {
            deleted: Some(n), ..
        }) if n != 2 => r.fail(
            checks::DESTINATION_DELETE,
            format!("deleting 2 existing keys reported {n} deleted"),
        ),
        Ok(_) if !readable => r.skip(checks::DESTINATION_DELETE, no_source),
        Ok(_) => {
            let back = read_back(r, plugin, config, &stream, &rows, opts).await;
            r.record(checks::DESTINATION_DELETE, back);
        }
    }
}

fn request(stream: &str) -> OpenStreamRequest {
    OpenStreamRequest {
        stream: stream.to_owned(),
        fields: fields(),
        key: vec!["id".into()],
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

/// Opens a new stream and checks that discover lists it with the fields asked for.
async fn open_stream(
    r: &Recorder,
    destination: &mut DestinationHandle,
    stream: &str,
) -> Result<(StreamWriterHandle, String), String> {
    let writer = r
        .call("open_stream", destination.open_stream(&request(stream)))
        .await?;
    let catalog = r
        .call("discover after open_stream", destination.discover())
        .await?;
    let Some(info) = catalog.stream(stream) else {
        return Err(format!(
            "after open_stream, discover does not list the new stream `{stream}`"
        ));
    };
    let missing: Vec<String> = fields()
        .iter()
        .filter(|f| info.field(&f.name).is_none())
        .map(|f| format!("`{}`", f.name))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "after open_stream, discover lists `{stream}` without fields {}",
            missing.join(", ")
        ));
    }
    Ok((writer, format!("`{stream}`")))
}

/// One write (upsert or delete, chosen by `what`) and a flush. Errors say whether the
/// connector does not support the write at all.
async fn write(
    r: &Recorder,
    writer: &mut StreamWriterHandle,
    what: &str,
    batch: RecordBatch,
) -> Result<WriteOutcome, (bool, String)> {
    let outcome = if what == "delete" {
        r.call(what, writer.delete(batch)).await
    } else {
        r.call(what, writer.upsert(batch)).await
    };
    let outcome = outcome.map_err(|e| (e.is_unsupported(), e.to_string()))?;
    if !outcome.rejected.is_empty() {
        let rejected: Vec<String> = outcome
            .rejected
            .iter()
            .map(|x| format!("row {}: {}", x.row, x.reason))
            .collect();
        return Err((
            false,
            format!("{what} rejected valid rows: {}", some_of(&rejected)),
        ));
    }
    let flushed = r.call(&format!("flush after {what}"), writer.flush()).await;
    flushed.map_err(|e| (false, e.to_string()))?;
    Ok(outcome)
}

/// Checks the counts an upsert reported, where it reported them.
fn counts(outcome: &WriteOutcome, inserted: usize, existing: usize) -> Result<(), String> {
    let given = |n: Option<u64>| n.unwrap_or(0) as usize;
    if let Some(n) = outcome.inserted {
        if n as usize != inserted {
            return Err(format!(
                "the upsert of {} rows ({inserted} new) reported {n} inserted",
                inserted + existing
            ));
        }
    }
    let changed = given(outcome.updated) + given(outcome.unchanged);
    if (outcome.updated.is_some() || outcome.unchanged.is_some()) && changed != existing {
        return Err(format!(
            "the upsert of {} rows ({existing} existing) reported {changed} updated or unchanged",
            inserted + existing
        ));
    }
    Ok(())
}

/// Reads `stream` through a new source instance and compares it with `expected`.
async fn read_back(
    r: &Recorder,
    plugin: &LoadedPlugin,
    config: &Value,
    stream: &str,
    expected: &[Row],
    opts: &Conformance,
) -> Result<String, String> {
    let mut source = r
        .call(
            "new_source on the destination's config",
            plugin.open_source(config, no_redaction()),
        )
        .await?;
    let catalog = r.call("discover (reading back)", source.discover()).await?;
    let info = catalog
        .stream(stream)
        .cloned()
        .ok_or_else(|| format!("a new source instance does not list stream `{stream}`"))?;
    let request = ReadRequest {
        stream: stream.to_owned(),
        mode: ReadMode::Full,
        batch_size: Some(opts.batch_size),
        ..Default::default()
    };
    let read = read(r, &mut source, &request, &info)
        .await
        .map_err(|e| match e {
            ReadError::Call(e) => format!("reading back: {e}"),
            ReadError::Bad(reason) => format!("reading back: {reason}"),
        })?;
    let got: Vec<&Map<String, Value>> = read.batches.iter().flatten().collect();
    let mut problems = Vec::new();
    for want in expected.iter().map(as_json) {
        let matching: Vec<_> = got
            .iter()
            .filter(|row| same_value(&row["id"], &want["id"]))
            .collect();
        match matching.as_slice() {
            [] => problems.push(format!("row id={} is missing", want["id"])),
            [row] => {
                for (field, value) in &want {
                    match row.get(field) {
                        None => problems.push(format!("field `{field}` is missing")),
                        Some(v) if !same_value(v, value) => problems.push(format!(
                            "row id={}: `{field}` is {v}, expected {value}",
                            want["id"]
                        )),
                        Some(_) => {}
                    }
                }
            }
            more => problems.push(format!(
                "row id={} is there {} times",
                want["id"],
                more.len()
            )),
        }
    }
    if got.len() > expected.len() && problems.is_empty() {
        problems.push(format!(
            "{} rows came back, expected {}",
            got.len(),
            expected.len()
        ));
    }
    if problems.is_empty() {
        Ok(format!("{} rows", got.len()))
    } else {
        Err(format!(
            "read back of `{stream}` differs from what was written: {}",
            some_of(&problems)
        ))
    }
}
