//! The source role: reads a stream in full, ordered by its key, in batches.
//!
//! Invariant: each batch's checkpoint is `{"key": [...]}` of its last row, and a read from a
//! checkpoint delivers exactly the rows after it, so that an interrupted sync resumes without
//! losing or repeating a record.

use std::cmp::Ordering;
use std::fs;

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::serde_json::{json, Value};
use lockstep_plugin_sdk::{
    BatchReader, Catalog, ConnectorError, Context, FieldInfo, ReadMode, ReadRequest, Result,
    SourceConnector,
};

use crate::dir::{io_error, key_of, Config, Dir, Row};

/// Reads streams.
pub struct JsonlSource {
    dir: Dir,
}

impl SourceConnector for JsonlSource {
    type Config = Config;
    type Reader = JsonlReader;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        Ok(Self {
            dir: Dir::open(config)?,
        })
    }

    async fn check(&mut self) -> Result<()> {
        fs::read_dir(&self.dir.path).map_err(|e| io_error(&self.dir.path, e))?;
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.dir.catalog()
    }

    async fn read(&mut self, request: ReadRequest) -> Result<JsonlReader> {
        // Without the `incremental` feature the engine asks for full reads only; refusing any
        // other mode as unsupported is what the conformance kit expects.
        if request.mode != ReadMode::Full {
            return Err(ConnectorError::unsupported(
                "this connector reads streams in full only (mode = \"full\")",
            ));
        }
        let info = self.dir.stream(&request.stream)?;
        let key = if request.key.is_empty() {
            info.primary_key.clone()
        } else {
            request.key.clone()
        };
        if key.is_empty() {
            return Err(ConnectorError::schema(format!(
                "stream `{}` has no key to order by: add \"primary_key\" to {}",
                info.name,
                self.dir.schema_file(&info.name).display()
            )));
        }
        let field = |name: &String| {
            info.field(name).cloned().ok_or_else(|| {
                let known: Vec<&str> = info.fields.iter().map(|f| f.name.as_str()).collect();
                ConnectorError::schema(format!(
                    "stream `{}` has no field `{name}`; fields: {}",
                    info.name,
                    known.join(", ")
                ))
            })
        };
        for name in &key {
            field(name)?;
        }
        let fields = match &request.fields {
            Some(names) => names.iter().map(field).collect::<Result<Vec<_>>>()?,
            None => info.fields.clone(),
        };

        let mut rows = self.dir.load(&info.name, None)?;
        rows.sort_by(|a, b| compare(&key_of(a, &key), &key_of(b, &key)));
        if let Some(after) = request.checkpoint.as_ref().map(|c| &c["key"]) {
            rows.retain(|row| compare(&key_of(row, &key), after).is_gt());
        }
        Ok(JsonlReader {
            stream: info.name,
            rows: rows.into_iter(),
            fields,
            key,
            batch_size: request.batch_size.unwrap_or(10_000).max(1),
        })
    }
}

/// The batches of one read.
pub struct JsonlReader {
    stream: String,
    rows: std::vec::IntoIter<Row>,
    fields: Vec<FieldInfo>,
    key: Vec<String>,
    batch_size: usize,
}

impl BatchReader for JsonlReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        let chunk: Vec<Row> = self.rows.by_ref().take(self.batch_size).collect();
        let Some(last) = chunk.last() else {
            return Ok(None);
        };
        let checkpoint = json!({ "key": key_of(last, &self.key) });
        let batch = batch_from_rows(&self.fields, &chunk).map_err(|e| {
            ConnectorError::from(e).context(format!("reading `{}.jsonl`", self.stream))
        })?;
        Ok(Some((batch, checkpoint)))
    }
}

/// Orders JSON values: null, booleans, numbers, text, then documents by their text.
fn compare(a: &Value, b: &Value) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            _ => 4,
        }
    }
    match (a, b) {
        (Value::Array(a), Value::Array(b)) => a
            .iter()
            .zip(b)
            .map(|(x, y)| compare(x, y))
            .find(|o| o.is_ne())
            .unwrap_or(a.len().cmp(&b.len())),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x.cmp(&y),
            _ => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(Ordering::Equal),
        },
        (Value::String(x), Value::String(y)) => x.cmp(y),
        _ => rank(a)
            .cmp(&rank(b))
            .then_with(|| a.to_string().cmp(&b.to_string())),
    }
}
