//! The source checks: bad configs, open and check, discover, full read, resuming.

use std::collections::HashSet;
use std::fmt;

use arrow::datatypes::Schema;
use lockstep_plugin_host::{no_redaction, ErrorKind, LoadedPlugin, SourceHandle};
use lockstep_protocol::arrow_types::arrow_schema;
use lockstep_protocol::{Catalog, ReadMode, ReadRequest, Role, StreamInfo};
use serde_json::{Map, Value};

use crate::checks;
use crate::report::{CallError, Recorder};
use crate::util::{identity, schema_mismatch, some_of};
use crate::Conformance;
use lockstep_plugin_core::rows::rows_from_batch;

/// A read that does not end after this many rows is taken to be looping.
const MAX_ROWS: usize = 1_000_000;

pub(crate) async fn check(
    r: &mut Recorder,
    plugin: &LoadedPlugin,
    config: &Value,
    opts: &Conformance,
) {
    let refused = refuses_bad_configs(r, plugin, Role::Source, &opts.bad_configs).await;
    r.record(checks::SOURCE_BAD_CONFIG, refused);

    let later = [
        checks::SOURCE_DISCOVER,
        checks::SOURCE_FULL_READ,
        checks::SOURCE_RESUME_FULL,
        checks::SOURCE_RESUME_INCREMENTAL,
    ];
    let skip_later = |r: &mut Recorder, from: usize, why: &str| {
        for name in &later[from..] {
            r.skip(name, why);
        }
    };

    let mut source = match r
        .call("new_source", plugin.open_source(config, no_redaction()))
        .await
    {
        Ok(source) => source,
        Err(e) => {
            r.fail(checks::SOURCE_OPEN, e);
            return skip_later(r, 0, "the source did not open");
        }
    };
    let checked = r
        .call("check", source.check())
        .await
        .map(|()| String::new());
    if !r.record(checks::SOURCE_OPEN, checked.map_err(String::from)) {
        return skip_later(r, 0, "the source's check failed");
    }

    let catalog = r.call("discover", source.discover()).await;
    let stream = match catalog
        .map_err(String::from)
        .and_then(|c| pick_stream(c, opts.stream.as_deref()))
    {
        Ok(stream) => stream,
        Err(reason) => {
            r.fail(checks::SOURCE_DISCOVER, reason);
            return skip_later(r, 1, "discover failed");
        }
    };
    r.pass(
        checks::SOURCE_DISCOVER,
        format!(
            "stream `{}` with {} fields",
            stream.name,
            stream.fields.len()
        ),
    );

    let full = ReadRequest {
        stream: stream.name.clone(),
        mode: ReadMode::Full,
        batch_size: Some(opts.batch_size),
        ..Default::default()
    };
    let first = match read(r, &mut source, &full, &stream).await {
        Ok(read) => read,
        Err(e) => {
            r.fail(checks::SOURCE_FULL_READ, e.to_string());
            return skip_later(r, 2, "the full read failed");
        }
    };
    let in_order = first.key_order_problem(&stream);
    r.record(
        checks::SOURCE_FULL_READ,
        match in_order {
            Some(problem) => Err(problem),
            None => Ok(format!(
                "{} rows in {} batches",
                first.rows(),
                first.batches.len()
            )),
        },
    );

    let resumed = resume(r, &mut source, &full, &stream, &first).await;
    record_resume(r, checks::SOURCE_RESUME_FULL, resumed);

    let incremental = incremental(r, plugin, &mut source, &stream, opts).await;
    record_resume(r, checks::SOURCE_RESUME_INCREMENTAL, incremental);
}

/// Opens the role with each of `configs`, expecting a refusal of kind `config`.
pub(crate) async fn refuses_bad_configs(
    r: &Recorder,
    plugin: &LoadedPlugin,
    role: Role,
    configs: &[Value],
) -> Result<String, String> {
    for config in configs {
        let opened = match role {
            Role::Source => r
                .call("new_source", plugin.open_source(config, no_redaction()))
                .await
                .map(drop),
            Role::Destination => r
                .call(
                    "new_destination",
                    plugin.open_destination(config, no_redaction()),
                )
                .await
                .map(drop),
        };
        match opened {
            Ok(()) => return Err(format!("the config {config} was accepted")),
            Err(CallError::Host(_, e)) if e.kind() == ErrorKind::CONFIG => {}
            Err(CallError::Host(_, e)) if e.kind() == ErrorKind::PANIC => {
                return Err(format!("the config {config} made the connector panic: {e}"))
            }
            Err(CallError::Host(_, e)) => {
                return Err(format!(
                    "the config {config} was refused with kind `{}` instead of `config`: {e}",
                    e.kind().name()
                ))
            }
            Err(timeout) => return Err(timeout.to_string()),
        }
    }
    Ok(format!("{} refused", configs.len()))
}

/// Checks the catalog's shape and returns the stream under test.
fn pick_stream(catalog: Catalog, wanted: Option<&str>) -> Result<StreamInfo, String> {
    let mut problems = Vec::new();
    for stream in &catalog.streams {
        if stream.fields.is_empty() {
            problems.push(format!("stream `{}` has no fields", stream.name));
        }
        let mut seen = HashSet::new();
        for field in &stream.fields {
            if !seen.insert(field.name.as_str()) {
                problems.push(format!(
                    "stream `{}` has two fields named `{}`",
                    stream.name, field.name
                ));
            }
        }
        for name in stream.primary_key.iter().chain(&stream.cursor_candidates) {
            if stream.field(name).is_none() {
                problems.push(format!(
                    "stream `{}` names `{name}` as a key or cursor, but has no such field",
                    stream.name
                ));
            }
        }
    }
    let names = catalog
        .streams
        .iter()
        .map(|s| format!("`{}`", s.name))
        .collect::<Vec<_>>();
    let stream =
        match wanted {
            Some(name) => catalog
                .streams
                .iter()
                .find(|s| s.name == name)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "the catalog has no stream `{name}`; it has: {}",
                        if names.is_empty() {
                            "none".into()
                        } else {
                            names.join(", ")
                        }
                    )
                }),
            None => catalog.streams.first().cloned().ok_or_else(|| {
                "the catalog has no streams; give the source some test data".to_owned()
            }),
        };
    match (stream, problems.is_empty()) {
        (Ok(stream), true) => Ok(stream),
        (Ok(_), false) => Err(problems.join("; ")),
        (Err(missing), _) => Err(std::iter::once(missing)
            .chain(problems)
            .collect::<Vec<_>>()
            .join("; ")),
    }
}

/// Why a read failed: the plugin's error, or a batch that breaks the contract.
pub(crate) enum ReadError {
    Call(CallError),
    Bad(String),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Call(e) => e.fmt(f),
            ReadError::Bad(reason) => f.write_str(reason),
        }
    }
}

/// Every batch of one read, as JSON rows, with the checkpoint after each.
pub(crate) struct Read {
    pub(crate) batches: Vec<Vec<Map<String, Value>>>,
    pub(crate) checkpoints: Vec<Value>,
}

impl Read {
    pub(crate) fn rows(&self) -> usize {
        self.batches.iter().map(Vec::len).sum()
    }

    fn identities(&self, key: &[String], from_batch: usize) -> Vec<String> {
        self.batches[from_batch.min(self.batches.len())..]
            .iter()
            .flatten()
            .map(|row| identity(row, key))
            .collect()
    }

    /// For numeric keys (whose order every system agrees on): whether rows came in key order.
    fn key_order_problem(&self, stream: &StreamInfo) -> Option<String> {
        let key = &stream.primary_key;
        if key.is_empty() {
            return None;
        }
        let keys: Vec<Vec<f64>> = self
            .batches
            .iter()
            .flatten()
            .map_while(|row| {
                key.iter()
                    .map(|k| row.get(k).and_then(Value::as_f64))
                    .collect()
            })
            .collect();
        if keys.len() != self.rows() {
            return None;
        }
        keys.windows(2).find(|w| w[0] >= w[1]).map(|w| {
            format!(
                "a full read must deliver rows in key order without repeats, but key {:?} came after {:?}",
                w[1], w[0]
            )
        })
    }
}

/// Reads `request` to the end, checking every batch against the catalog's fields.
pub(crate) async fn read(
    r: &Recorder,
    source: &mut SourceHandle,
    request: &ReadRequest,
    stream: &StreamInfo,
) -> Result<Read, ReadError> {
    let expected: Schema = arrow_schema(&stream.fields);
    let mut batches = r
        .call("read", source.read(request))
        .await
        .map_err(ReadError::Call)?;
    let mut read = Read {
        batches: Vec::new(),
        checkpoints: Vec::new(),
    };
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some((batch, checkpoint)) = r
        .call("next_batch", batches.next())
        .await
        .map_err(ReadError::Call)?
    {
        let n = read.batches.len() + 1;
        if let Some(problem) = schema_mismatch(&expected, &batch.schema()) {
            return Err(ReadError::Bad(format!(
                "batch {n} does not match the catalog: {problem}"
            )));
        }
        if let Some(limit) = request.batch_size {
            if batch.num_rows() > limit {
                return Err(ReadError::Bad(format!(
                    "batch {n} has {} rows, more than the {limit} the request allowed",
                    batch.num_rows()
                )));
            }
        }
        if checkpoint.is_null() {
            return Err(ReadError::Bad(format!(
                "the checkpoint after batch {n} is null; it must be JSON the source can resume from"
            )));
        }
        let rows = rows_from_batch(&batch);
        for row in &rows {
            let id = identity(row, &stream.primary_key);
            if !stream.primary_key.is_empty() && !seen.insert(id.clone()) {
                return Err(ReadError::Bad(format!(
                    "the row with key {id} was delivered twice"
                )));
            }
        }
        total += rows.len();
        if total > MAX_ROWS {
            return Err(ReadError::Bad(format!(
                "the read did not end after {MAX_ROWS} rows; is it looping? (use a small test stream)"
            )));
        }
        read.batches.push(rows);
        read.checkpoints.push(checkpoint);
    }
    Ok(read)
}

/// A resume check's result: passed with a note, failed, or skipped with a reason.
pub(crate) enum Resume {
    Pass(String),
    Fail(String),
    Skip(String),
}

fn record_resume(r: &mut Recorder, name: &'static str, resume: Resume) {
    match resume {
        Resume::Pass(note) => r.pass(name, note),
        Resume::Fail(reason) => r.fail(name, reason),
        Resume::Skip(reason) => r.skip(name, reason),
    }
}

/// Reads again from the first and the last checkpoint of `first`, which read `request`.
async fn resume(
    r: &Recorder,
    source: &mut SourceHandle,
    request: &ReadRequest,
    stream: &StreamInfo,
    first: &Read,
) -> Resume {
    if first.rows() == 0 {
        return Resume::Skip(format!(
            "stream `{}` is empty; give it more rows than the batch size",
            stream.name
        ));
    }
    let key = &stream.primary_key;
    let mut notes = Vec::new();
    // From the first checkpoint, exactly the rows of the later batches must come.
    if first.batches.len() >= 2 {
        let again = ReadRequest {
            checkpoint: Some(first.checkpoints[0].clone()),
            ..request.clone()
        };
        let got = match read(r, source, &again, stream).await {
            Ok(read) => read.identities(key, 0),
            Err(ReadError::Call(e)) if e.is_unsupported() => return Resume::Skip(e.to_string()),
            Err(e) => return Resume::Fail(format!("resuming after the first batch: {e}")),
        };
        let delivered: HashSet<String> = first
            .identities(key, 0)
            .into_iter()
            .take(first.batches[0].len())
            .collect();
        let expected = first.identities(key, 1);
        let got_set: HashSet<&String> = got.iter().collect();
        let again: Vec<&String> = got.iter().filter(|id| delivered.contains(*id)).collect();
        let missing: Vec<&String> = expected.iter().filter(|id| !got_set.contains(id)).collect();
        if !again.is_empty() {
            return Resume::Fail(format!(
                "resuming after the first batch delivered {} rows again: {}",
                again.len(),
                some_of(&again)
            ));
        }
        if !missing.is_empty() {
            return Resume::Fail(format!(
                "resuming after the first batch skipped {} rows: {}",
                missing.len(),
                some_of(&missing)
            ));
        }
        notes.push(format!("after batch 1 of {}", first.batches.len()));
    } else {
        notes.push(format!(
            "only one batch, so not mid-way: give stream `{}` more than {} rows",
            stream.name,
            request.batch_size.unwrap_or(0)
        ));
    }
    // From the last checkpoint, nothing already delivered may come again.
    let again = ReadRequest {
        checkpoint: first.checkpoints.last().cloned(),
        ..request.clone()
    };
    let got = match read(r, source, &again, stream).await {
        Ok(read) => read.identities(key, 0),
        Err(ReadError::Call(e)) if e.is_unsupported() => return Resume::Skip(e.to_string()),
        Err(e) => return Resume::Fail(format!("resuming after the last batch: {e}")),
    };
    let delivered: HashSet<String> = first.identities(key, 0).into_iter().collect();
    let again: Vec<&String> = got.iter().filter(|id| delivered.contains(*id)).collect();
    if !again.is_empty() {
        return Resume::Fail(format!(
            "resuming after the last batch delivered {} rows again: {}",
            again.len(),
            some_of(&again)
        ));
    }
    notes.push("after the last batch".into());
    Resume::Pass(notes.join(", "))
}

/// An incremental read from scratch, then resumed from its checkpoints.
async fn incremental(
    r: &Recorder,
    plugin: &LoadedPlugin,
    source: &mut SourceHandle,
    stream: &StreamInfo,
    opts: &Conformance,
) -> Resume {
    if !plugin.manifest.features.iter().any(|f| f == "incremental") {
        return Resume::Skip("the manifest does not declare the `incremental` feature".into());
    }
    let Some(cursor) = opts
        .cursor_field
        .clone()
        .or_else(|| stream.cursor_candidates.first().cloned())
    else {
        return Resume::Skip(format!(
            "stream `{}` has no cursor candidates; name one with Conformance::cursor_field",
            stream.name
        ));
    };
    let request = ReadRequest {
        stream: stream.name.clone(),
        mode: ReadMode::Incremental,
        cursor_field: Some(cursor.clone()),
        batch_size: Some(opts.batch_size),
        ..Default::default()
    };
    let first = match read(r, source, &request, stream).await {
        Ok(read) => read,
        Err(ReadError::Call(e)) if e.is_unsupported() => return Resume::Skip(e.to_string()),
        Err(e) => return Resume::Fail(format!("the incremental read by `{cursor}` failed: {e}")),
    };
    let cursors: Vec<&Value> = first
        .batches
        .iter()
        .flatten()
        .filter_map(|row| row.get(&cursor))
        .collect();
    if let Some(w) = cursors.windows(2).find(|w| decreases(w[0], w[1])) {
        return Resume::Fail(format!(
            "an incremental read must deliver rows in cursor order, but `{cursor}` {} came after {}",
            w[1], w[0]
        ));
    }
    match resume(r, source, &request, stream, &first).await {
        Resume::Pass(note) => Resume::Pass(format!("by `{cursor}`, {note}")),
        other => other,
    }
}

/// Whether `b` comes before `a`, for values every system orders alike (numbers; strings of
/// equal length, such as ISO 8601 timestamps).
fn decreases(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => b.as_f64() < a.as_f64(),
        (Value::String(a), Value::String(b)) if a.len() == b.len() => b < a,
        _ => false,
    }
}
