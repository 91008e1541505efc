//! `numbers`: the connector guide's source-only example. It reads one stream, `numbers`, of
//! `count` generated records (`id`, its `square`, and a `label`), in key order, in batches,
//! with a checkpoint after each batch.
//!
//! Invariant: a read from a checkpoint delivers exactly the records after it, in `id` order,
//! so that a sync interrupted anywhere resumes without losing or repeating a record.

// ANCHOR: connector
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::serde_json::{json, Map, Value};
use lockstep_plugin_sdk::{
    arrow::array::RecordBatch, BatchReader, Catalog, Connector, ConnectorError, Context, DataType,
    FieldInfo, JsonSchema, Manifest, ReadMode, ReadRequest, Result, SourceConnector, StreamInfo,
    Unsupported,
};
use serde::Deserialize;

/// The connector: its manifest and the types that play its roles.
pub struct Numbers;

impl Connector for Numbers {
    type Source = NumbersSource;
    // This connector only reads: `Unsupported` plays no role, and the manifest says so.
    type Destination = Unsupported;

    fn manifest() -> Manifest {
        Manifest {
            name: "numbers".into(), // configs say `connector = "numbers"`
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Generated numbers and their squares.".into(),
            // Full reads only: no `incremental`, so `lockstep validate` refuses
            // incremental syncs from it.
            features: vec![],
        }
    }
}

lockstep_plugin_sdk::export_connector!(Numbers);
// ANCHOR_END: connector

// ANCHOR: config
/// The `config` table of a `numbers` connection. Its JSON Schema (in the manifest) is
/// derived from this type: doc comments become descriptions, `deny_unknown_fields` refuses
/// typos.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(crate = "lockstep_plugin_sdk::schemars")]
pub struct Config {
    /// How many records the stream has.
    #[schemars(range(min = 1))]
    pub count: i64,
}
// ANCHOR_END: config

// ANCHOR: source
/// The source role. One instance serves one connection for the length of a run.
pub struct NumbersSource {
    count: i64,
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
        field("square", DataType::Int64, false),
        field("label", DataType::Text, true),
    ]
}

impl SourceConnector for NumbersSource {
    type Config = Config;
    type Reader = NumbersReader;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        // Refuse a bad config here, as a config error that says what to fix.
        if config.count < 1 {
            return Err(ConnectorError::config(format!(
                "`count` = {} must be at least 1",
                config.count
            )));
        }
        Ok(Self {
            count: config.count,
        })
    }

    async fn check(&mut self) -> Result<()> {
        Ok(()) // nothing to connect to
    }

    async fn discover(&mut self) -> Result<Catalog> {
        Ok(Catalog {
            streams: vec![StreamInfo {
                name: "numbers".into(),
                fields: fields(),
                primary_key: vec!["id".into()],
                cursor_candidates: vec![],
            }],
        })
    }

    async fn read(&mut self, request: ReadRequest) -> Result<NumbersReader> {
        if request.stream != "numbers" {
            return Err(ConnectorError::schema(format!(
                "no stream `{}`: this connector has only `numbers`",
                request.stream
            )));
        }
        if request.mode != ReadMode::Full {
            return Err(ConnectorError::unsupported("`numbers` reads in full only"));
        }
        if !request.key.is_empty() && request.key != ["id"] {
            return Err(ConnectorError::schema(
                "`numbers` can be ordered by `id` only",
            ));
        }
        // Only the fields asked for, in the order asked for.
        let all = fields();
        let fields = match &request.fields {
            None => all,
            Some(names) => names
                .iter()
                .map(|name| {
                    all.iter()
                        .find(|f| &f.name == name)
                        .cloned()
                        .ok_or_else(|| {
                            ConnectorError::schema(format!("`numbers` has no field `{name}`"))
                        })
                })
                .collect::<Result<_>>()?,
        };
        // Resume right after the checkpoint's key, when there is one.
        let after = match &request.checkpoint {
            None => 0,
            Some(checkpoint) => checkpoint["key"][0].as_i64().ok_or_else(|| {
                ConnectorError::config(format!("not a checkpoint of this connector: {checkpoint}"))
            })?,
        };
        Ok(NumbersReader {
            next: after + 1,
            last: self.count,
            fields,
            batch_size: request.batch_size.unwrap_or(10_000).max(1) as i64,
        })
    }
}
// ANCHOR_END: source

// ANCHOR: reader
/// The batches of one read.
pub struct NumbersReader {
    next: i64,
    last: i64,
    fields: Vec<FieldInfo>,
    batch_size: i64,
}

impl BatchReader for NumbersReader {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        if self.next > self.last {
            return Ok(None); // the end of the stream
        }
        let end = (self.next + self.batch_size - 1).min(self.last);
        let rows: Vec<Map<String, Value>> = (self.next..=end)
            .map(|id| {
                let row = json!({ "id": id, "square": id * id, "label": format!("n{id}") });
                let Value::Object(mut row) = row else {
                    unreachable!("json! of an object literal is an object")
                };
                row.retain(|name, _| self.fields.iter().any(|f| &f.name == name));
                row
            })
            .collect();
        self.next = end + 1;
        // Rows of JSON values become an Arrow batch of exactly these fields.
        let batch = batch_from_rows(&self.fields, &rows)?;
        // The checkpoint after this batch's last record: a read given it resumes after it.
        Ok(Some((batch, json!({ "key": [end] }))))
    }
}
// ANCHOR_END: reader
