//! A test connector that moves generated rows as cheaply as possible, for measuring what the
//! plugin boundary costs (`lockstep-bench boundary`).
//!
//! The source generates `rows` rows of one stream in batches of `batch_size`; the destination
//! folds every value it is given into a [`Checksum`] and logs it on flush. The stream's
//! [`Shape`] is either `numbers` (`id` int64, `value` int64, `flag` boolean: narrow
//! fixed-width rows) or `contacts` (the columns of `cargo xtask bench pg`'s table: text,
//! JSON text, timestamps, an int32, some nulls; about 300 bytes a row). Config:
//! `{"rows": 10000000, "batch_size": 65536, "shape": "numbers"}`.
//!
//! The generation ([`Generator`]) and consumption ([`Checksum`]) code is public so that the
//! benchmark can drive the very same code in-process, through the SDK traits, and compare.
//! This crate is a test fixture: it must never be named like a plugin
//! (`lockstep_connector_*`), so that scans of `target/` never pick it up.

use std::sync::Arc;

use lockstep_plugin_sdk::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use lockstep_plugin_sdk::arrow::buffer::BooleanBuffer;
use lockstep_plugin_sdk::arrow::datatypes::{
    DataType as ArrowType, Int32Type, Int64Type, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use lockstep_plugin_sdk::protocol::arrow_types::arrow_schema;
use lockstep_plugin_sdk::{
    Catalog, Connector, ConnectorError, Context, CursorCheckpoint, DataType, DestinationConnector,
    FieldInfo, Manifest, OpenStreamRequest, ReadRequest, Result, SourceConnector, StreamInfo,
    WriteOutcome,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

/// The stream the source offers with the `numbers` shape.
pub const STREAM: &str = "numbers";
/// The stream the source offers with the `contacts` shape.
pub const CONTACTS_STREAM: &str = "contacts";

/// What the generated rows look like.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `id` int64, `value` int64, `flag` boolean: 17 bytes a row, no nulls.
    #[default]
    Numbers,
    /// The columns of `cargo xtask bench pg`'s `contacts` table: about 300 bytes a row of
    /// text, JSON text, timestamps and integers, with some nulls.
    Contacts,
}

impl Shape {
    /// The name of the one stream of this shape.
    pub fn stream(self) -> &'static str {
        match self {
            Shape::Numbers => STREAM,
            Shape::Contacts => CONTACTS_STREAM,
        }
    }

    /// The fields of the stream of this shape.
    pub fn fields(self) -> Vec<FieldInfo> {
        match self {
            Shape::Numbers => fields(),
            Shape::Contacts => contact_fields(),
        }
    }
}

/// The connection's config.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How many rows the source generates.
    #[serde(default = "default_rows")]
    pub rows: u64,
    /// Rows per batch (a read request may ask for fewer).
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// What the rows look like.
    #[serde(default)]
    pub shape: Shape,
}

fn default_rows() -> u64 {
    10_000_000
}

fn default_batch_size() -> usize {
    65_536
}

/// The fields of [`STREAM`].
pub fn fields() -> Vec<FieldInfo> {
    let field = |name: &str, data_type| FieldInfo {
        name: name.into(),
        data_type,
        nullable: false,
        native_type: None,
    };
    vec![
        field("id", DataType::Int64),
        field("value", DataType::Int64),
        field("flag", DataType::Boolean),
    ]
}

/// The fields of [`CONTACTS_STREAM`], like `cargo xtask bench pg`'s table.
pub fn contact_fields() -> Vec<FieldInfo> {
    let field = |name: &str, data_type, nullable| FieldInfo {
        name: name.into(),
        data_type,
        nullable,
        native_type: None,
    };
    vec![
        field("id", DataType::Int64, false),
        field("email", DataType::Text, false),
        field("first_name", DataType::Text, true),
        field("last_name", DataType::Text, true),
        field("company", DataType::Text, true),
        field("phone", DataType::Text, true),
        field("lifecycle_stage", DataType::Text, true),
        field("score", DataType::Int32, true),
        field("created_at", DataType::TimestampTz, false),
        field("updated_at", DataType::TimestampTz, false),
        field("props", DataType::Json, true),
    ]
}

/// The contacts of ids `start..stop`, generated the way `cargo xtask bench pg` fills its
/// table (every tenth phone and every thirteenth `props` null).
fn contact_columns(start: i64, stop: i64) -> Vec<ArrayRef> {
    const FIRST: [&str; 8] = [
        "Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken",
    ];
    const LAST: [&str; 8] = [
        "Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson",
    ];
    const STAGES: [&str; 5] = [
        "lead",
        "subscriber",
        "marketing-qualified",
        "customer",
        "evangelist",
    ];
    const SOURCES: [&str; 4] = ["web", "import", "api", "event"];
    // 2024-01-01 and 2025-01-01, in microseconds since the epoch.
    const CREATED: i64 = 1_704_067_200_000_000;
    const UPDATED: i64 = 1_735_689_600_000_000;
    let ids = start..stop;
    let pick = |list: &[&'static str], n: i64| list[n.rem_euclid(list.len() as i64) as usize];
    let text = |f: &dyn Fn(i64) -> Option<String>| -> ArrayRef {
        Arc::new(ids.clone().map(f).collect::<StringArray>())
    };
    vec![
        Arc::new(Int64Array::from_iter_values(ids.clone())),
        text(&|g| Some(format!("contact.{g}@example-company-{}.com", g % 20_000))),
        text(&|g| Some(format!("{} {}", pick(&FIRST, g), g % 977))),
        text(&|g| Some(format!("{}-{}", pick(&LAST, g / 8), g % 4421))),
        text(&|g| Some(format!("Company {} Holdings International Ltd", g % 20_000))),
        text(&|g| (g % 10 != 0).then(|| format!("+1-555-{:07}", g % 10_000_000))),
        text(&|g| Some(pick(&STAGES, g).to_owned())),
        Arc::new(Int32Array::from_iter_values(
            ids.clone()
                .map(|g| (g.wrapping_mul(37).rem_euclid(100)) as i32),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                ids.clone().map(|g| CREATED + g * 7_000_000),
            )
            .with_timezone("UTC"),
        ),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(
                ids.clone().map(|g| UPDATED + g * 3_000_000),
            )
            .with_timezone("UTC"),
        ),
        text(&|g| {
            (g % 13 != 0).then(|| {
                format!(
                    r#"{{"source": "{}", "campaign": "spring-{}", "visits": {}, "vip": {}, "region": "region-{}"}}"#,
                    pick(&SOURCES, g),
                    g % 50,
                    g % 17,
                    g % 7 == 0,
                    g % 9
                )
            })
        }),
    ]
}

/// The value column of row `id`: cheap to compute, but not a constant or a copy of `id`.
pub fn value_of(id: i64) -> i64 {
    id.wrapping_mul(2_654_435_761).rem_euclid(1_000_003)
}

/// Generates the rows of one read, batch by batch.
pub struct Generator {
    schema: SchemaRef,
    shape: Shape,
    next: i64,
    end: i64,
    batch_size: usize,
}

impl Generator {
    /// Rows of `shape` with ids `[start, end)` in batches of at most `batch_size` (at least
    /// 1).
    pub fn new(start: i64, end: i64, batch_size: usize, shape: Shape) -> Self {
        Self {
            schema: Arc::new(arrow_schema(&shape.fields())),
            shape,
            next: start,
            end,
            batch_size: batch_size.max(1),
        }
    }

    /// The next batch, or `None` when every row was generated.
    pub fn next_record_batch(&mut self) -> Option<RecordBatch> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next;
        let stop = self.end.min(start.saturating_add(self.batch_size as i64));
        self.next = stop;
        if self.shape == Shape::Contacts {
            let batch = RecordBatch::try_new(self.schema.clone(), contact_columns(start, stop))
                .expect("the columns match the schema by construction");
            return Some(batch);
        }
        let ids = Int64Array::from_iter_values(start..stop);
        let values = Int64Array::from_iter_values((start..stop).map(value_of));
        let raw = values.values();
        let flags = BooleanArray::new(
            BooleanBuffer::collect_bool(raw.len(), |i| raw[i] % 3 == 0),
            None,
        );
        let batch = RecordBatch::try_new(
            self.schema.clone(),
            vec![Arc::new(ids), Arc::new(values), Arc::new(flags)],
        )
        .expect("the columns match the schema by construction");
        Some(batch)
    }

    /// The id of the last row generated so far.
    pub fn last_id(&self) -> i64 {
        self.next - 1
    }
}

/// A checksum over every column of every batch consumed, weighted by column position so
/// that swapped columns show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u64,
}

impl Checksum {
    /// Adds a batch whose columns are int64, int32, boolean, text or timestamps. Every value
    /// takes part (text byte by byte), so the checksum costs what reading every value of a
    /// batch costs.
    pub fn add(&mut self, batch: &RecordBatch) -> Result<()> {
        for (position, column) in batch.columns().iter().enumerate() {
            let column_sum: u64 = match column.data_type() {
                ArrowType::Int32 => column
                    .as_primitive::<Int32Type>()
                    .iter()
                    .flatten()
                    .fold(0i64, |acc, v| acc.wrapping_add(i64::from(v)))
                    as u64,
                ArrowType::Timestamp(TimeUnit::Microsecond, _) => column
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .flatten()
                    .fold(0i64, i64::wrapping_add)
                    as u64,
                ArrowType::Utf8 => {
                    // Each value's own rolling hash (the order of its bytes counts), summed, so
                    // that the checksum does not depend on where the batches are cut.
                    column
                        .as_string::<i32>()
                        .iter()
                        .flatten()
                        .map(|text| {
                            text.bytes()
                                .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)))
                        })
                        .fold(0u64, u64::wrapping_add)
                }
                ArrowType::Int64 => {
                    let column = column.as_primitive::<Int64Type>();
                    if column.null_count() == 0 {
                        column
                            .values()
                            .iter()
                            .fold(0i64, |acc, v| acc.wrapping_add(*v))
                            as u64
                    } else {
                        column.iter().flatten().fold(0i64, i64::wrapping_add) as u64
                    }
                }
                ArrowType::Boolean => {
                    let column = column.as_boolean();
                    match column.nulls() {
                        None => column.values().count_set_bits() as u64,
                        Some(_) => column.iter().filter(|v| *v == Some(true)).count() as u64,
                    }
                }
                other => {
                    return Err(ConnectorError::schema(format!(
                        "column `{}` has type {other}; passthrough consumes int64, int32, \
                         boolean, text and timestamp columns only",
                        batch.schema().field(position).name()
                    )))
                }
            };
            let weight = 2 * position as u64 + 1;
            self.sum = self.sum.wrapping_add(column_sum.wrapping_mul(weight));
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }
}

/// The connector.
pub struct Passthrough;

impl Connector for Passthrough {
    type Source = PassthroughSource;
    type Destination = PassthroughDestination;

    fn manifest() -> Manifest {
        Manifest {
            name: "passthrough".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Generates and consumes rows cheaply (benchmark fixture).".into(),
            features: vec!["incremental".into(), "upsert".into(), "delete".into()],
        }
    }
}

/// The generating source.
pub struct PassthroughSource {
    config: Config,
}

impl SourceConnector for PassthroughSource {
    type Config = Config;
    type Reader = Generator;

    async fn open(config: Config, _ctx: Context) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(ConnectorError::config("`batch_size` must be at least 1"));
        }
        if config.rows > i64::MAX as u64 {
            return Err(ConnectorError::config("`rows` is too large"));
        }
        Ok(Self { config })
    }

    async fn check(&mut self) -> Result<()> {
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        let shape = self.config.shape;
        Ok(Catalog {
            streams: vec![StreamInfo {
                name: shape.stream().into(),
                fields: shape.fields(),
                primary_key: vec!["id".into()],
                cursor_candidates: vec!["id".into()],
            }],
        })
    }

    async fn read(&mut self, request: ReadRequest) -> Result<Generator> {
        let shape = self.config.shape;
        if request.stream != shape.stream() {
            return Err(ConnectorError::schema(format!(
                "no stream `{}`; passthrough offers `{}` only",
                request.stream,
                shape.stream()
            )));
        }
        let all: Vec<String> = shape.fields().into_iter().map(|f| f.name).collect();
        if request.fields.as_ref().is_some_and(|f| *f != all) {
            return Err(ConnectorError::unsupported(format!(
                "passthrough reads all of its fields, in order: {}",
                all.join(", ")
            )));
        }
        // The id is both the key and the cursor, so both modes resume after the same id.
        let start = match &request.checkpoint {
            None => 0,
            Some(checkpoint) => {
                let parsed: CursorCheckpoint = serde_json::from_value(checkpoint.clone())
                    .map_err(|e| ConnectorError::internal(format!("bad checkpoint: {e}")))?;
                parsed
                    .key
                    .first()
                    .and_then(Value::as_i64)
                    .ok_or_else(|| ConnectorError::internal("the checkpoint has no id"))?
                    + 1
            }
        };
        let batch_size = request
            .batch_size
            .map_or(self.config.batch_size, |b| b.min(self.config.batch_size));
        Ok(Generator::new(
            start,
            self.config.rows as i64,
            batch_size,
            shape,
        ))
    }
}

impl lockstep_plugin_sdk::BatchReader for Generator {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        Ok(self.next_record_batch().map(|batch| {
            let id = self.last_id();
            (batch, json!({ "cursor": id, "key": [id] }))
        }))
    }
}

/// The consuming destination: it keeps nothing but checksums.
pub struct PassthroughDestination;

impl DestinationConnector for PassthroughDestination {
    type Config = Config;
    type Writer = Summer;

    async fn open(_config: Config, _ctx: Context) -> Result<Self> {
        Ok(Self)
    }

    async fn check(&mut self) -> Result<()> {
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        Ok(Catalog::default())
    }

    async fn open_stream(&mut self, request: OpenStreamRequest) -> Result<Summer> {
        Ok(Summer {
            stream: request.stream,
            checksum: Checksum::default(),
        })
    }
}

/// Sums what it is given; logs the checksum on flush.
pub struct Summer {
    stream: String,
    checksum: Checksum,
}

impl Summer {
    /// The checksum of every row upserted so far.
    pub fn checksum(&self) -> Checksum {
        self.checksum
    }
}

impl lockstep_plugin_sdk::StreamWriter for Summer {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        self.checksum.add(&batch)?;
        Ok(WriteOutcome {
            inserted: Some(batch.num_rows() as u64),
            ..Default::default()
        })
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        Ok(WriteOutcome {
            deleted: Some(keys.num_rows() as u64),
            ..Default::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        let Checksum { rows, sum } = self.checksum;
        lockstep_plugin_sdk::tracing::info!(
            stream = %self.stream,
            rows,
            checksum = sum,
            "passthrough consumed {rows} rows, checksum {sum}"
        );
        Ok(())
    }
}

lockstep_plugin_sdk::export_connector!(Passthrough);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_rows_checksum_the_same_in_any_batch_size() {
        let sum = |batch_size| {
            let mut generator = Generator::new(0, 1000, batch_size, Shape::Numbers);
            let mut checksum = Checksum::default();
            while let Some(batch) = generator.next_record_batch() {
                checksum.add(&batch).unwrap();
            }
            checksum
        };
        let one = sum(1000);
        assert_eq!(one.rows, 1000);
        assert_eq!(sum(7), one);
        assert_ne!(value_of(1), 1);
    }

    #[test]
    fn contacts_checksum_the_same_in_any_batch_size_and_see_every_text() {
        let sum = |batch_size| {
            let mut generator = Generator::new(0, 100, batch_size, Shape::Contacts);
            let mut checksum = Checksum::default();
            while let Some(batch) = generator.next_record_batch() {
                assert_eq!(batch.num_columns(), contact_fields().len());
                checksum.add(&batch).unwrap();
            }
            checksum
        };
        let whole = sum(100);
        assert_eq!(whole.rows, 100);
        assert_eq!(sum(7), whole);
        // A batch whose email differs in one byte sums differently.
        let mut columns = contact_columns(0, 10);
        let mut emails: Vec<Option<String>> = columns[1]
            .as_string::<i32>()
            .iter()
            .map(|v| v.map(str::to_owned))
            .collect();
        emails[3] = emails[3].as_ref().map(|e| e.replacen('c', "d", 1));
        let (mut a, mut b) = (Checksum::default(), Checksum::default());
        let schema = Arc::new(arrow_schema(&contact_fields()));
        a.add(&RecordBatch::try_new(schema.clone(), columns.clone()).unwrap())
            .unwrap();
        columns[1] = Arc::new(emails.into_iter().collect::<StringArray>());
        b.add(&RecordBatch::try_new(schema, columns).unwrap())
            .unwrap();
        assert_ne!(a, b);
    }
}
