//! A test connector, `panicky`, that fails hard in the entry point its config names.
//!
//! Config: `{"panic_in": "<entry>"}` panics in that entry point, `{"abort_in": "<entry>"}`
//! calls `std::process::abort` there and `{"segv_in": "<entry>"}` dereferences a null
//! pointer there. The entry points are those of [`ENTRY_POINTS`]. Without any of these it
//! is a tiny in-memory source of 3 rows (stream `items`) and a destination that accepts
//! everything.
//!
//! Two more options shape a source for scheduler tests: `{"fail_transient_times": N,
//! "state_file": "path"}` fails the first N reads with a transient error (the count lives in
//! `state_file`, so it survives from one process to the next), and `{"sleep_ms": M}` sleeps M
//! milliseconds before each batch (a slow source). `{"rows": N}` makes the source N rows long
//! instead of 3 (with `batch_size` and `sleep_ms`, a run of many small batches that lasts as
//! long as a test needs).
//!
//! More options for the daemon's tests: `{"rate_limited_times": N, "retry_after_ms": M,
//! "state_file": "path"}` fails the first N reads as rate-limited, asking to wait M
//! milliseconds; `{"spawn_child": "path"}` starts two `sleep` child processes when the read
//! begins, one of them deaf to SIGTERM, and appends their pids to that file (a plugin whose
//! helper processes must not outlive a killed run); `{"leak": "text"}` fails the read with an auth error whose message, and a
//! warning logged just before it, echo `text` (give it a secret from the environment to test
//! redaction), and `"leak_stdout": true` also prints `text` on the process's stdout.
//!
//! Panics are for in-process tests of the SDK's panic guard and the host's handling of it;
//! aborts and segfaults kill the process that loaded the plugin, so they are only for tests
//! of worker-process isolation and must never be used in the test process itself. This crate
//! is a test fixture: it must never be named like a plugin (`lockstep_connector_*`), so that
//! scans of `target/` never pick it up.

use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::rows::batch_from_rows;
use lockstep_plugin_sdk::{
    BatchReader, Catalog, Connector, ConnectorError, Context, DataType, DestinationConnector,
    FieldInfo, Manifest, OpenStreamRequest, ReadRequest, Result, SourceConnector, StreamInfo,
    StreamWriter, WriteOutcome,
};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// Every entry point the config can name.
pub const ENTRY_POINTS: [&str; 10] = [
    "open_source",
    "check",
    "discover",
    "read",
    "next_batch",
    "open_destination",
    "open_stream",
    "upsert",
    "delete",
    "flush",
];

/// The connection's config: where to fail, and how.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trip {
    /// Panic in this entry point.
    #[serde(default)]
    #[schemars(extend("enum" = ENTRY_POINTS))]
    pub panic_in: Option<String>,
    /// Abort the process in this entry point.
    #[serde(default)]
    #[schemars(extend("enum" = ENTRY_POINTS))]
    pub abort_in: Option<String>,
    /// Dereference a null pointer in this entry point.
    #[serde(default)]
    #[schemars(extend("enum" = ENTRY_POINTS))]
    pub segv_in: Option<String>,
    /// Fail this many reads with a transient error before succeeding; needs `state_file`.
    #[serde(default)]
    pub fail_transient_times: Option<u64>,
    /// Where the count of transient failures so far is kept.
    #[serde(default)]
    pub state_file: Option<String>,
    /// Sleep this long before each batch.
    #[serde(default)]
    pub sleep_ms: Option<u64>,
    /// Fail this many reads as rate-limited before succeeding; needs `state_file`.
    #[serde(default)]
    pub rate_limited_times: Option<u64>,
    /// How long a rate-limited read asks the caller to wait.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Start two helper processes when the read begins, appending their pids to this file.
    #[serde(default)]
    pub spawn_child: Option<String>,
    /// Fail the read with an auth error that echoes this text (and log it first).
    #[serde(default)]
    pub leak: Option<String>,
    /// With `leak`: print the text on stdout too.
    #[serde(default)]
    pub leak_stdout: bool,
    /// How many rows the source has (ids 1 to `rows`); 3 when unset.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub rows: Option<i64>,
}

impl Trip {
    fn validate(&self) -> Result<()> {
        for entry in [&self.panic_in, &self.abort_in, &self.segv_in]
            .into_iter()
            .flatten()
        {
            if !ENTRY_POINTS.contains(&entry.as_str()) {
                return Err(ConnectorError::config(format!(
                    "unknown entry point `{entry}`; expected one of {}",
                    ENTRY_POINTS.join(", ")
                )));
            }
        }
        if self.fail_transient_times.is_some() && self.state_file.is_none() {
            return Err(ConnectorError::config(
                "`fail_transient_times` needs a `state_file` to count the failures in",
            ));
        }
        if self.rate_limited_times.is_some() && self.state_file.is_none() {
            return Err(ConnectorError::config(
                "`rate_limited_times` needs a `state_file` to count the failures in",
            ));
        }
        Ok(())
    }

    /// Counts one more failure in `state_file` while fewer than `times` have been counted;
    /// returns the failure's number, or `None` when enough have failed.
    fn count_failure(&self, times: Option<u64>) -> Result<Option<(u64, u64)>> {
        let (Some(times), Some(file)) = (times, &self.state_file) else {
            return Ok(None);
        };
        let failed: u64 = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        if failed >= times {
            return Ok(None);
        }
        std::fs::write(file, (failed + 1).to_string())
            .map_err(|e| ConnectorError::internal(format!("cannot write `{file}`: {e}")))?;
        Ok(Some((failed + 1, times)))
    }

    /// Fails as rate-limited while fewer than `rate_limited_times` reads have failed.
    fn rate_limit(&self) -> Result<()> {
        match self.count_failure(self.rate_limited_times)? {
            None => Ok(()),
            Some((n, times)) => Err(ConnectorError::rate_limited(
                format!("panicky: deliberate rate limit {n} of {times}"),
                self.retry_after_ms.unwrap_or(0),
            )),
        }
    }

    /// Starts the two helper processes of `spawn_child` and appends their pids to its file:
    /// `plain PID` (a `sleep` that SIGTERM ends) and `stubborn PID` (one that ignores SIGTERM,
    /// so only SIGKILL ends it).
    fn spawn_child(&self) -> Result<()> {
        let Some(file) = &self.spawn_child else {
            return Ok(());
        };
        let start = |label: &str, program: &str, args: &[&str]| -> Result<String> {
            let child = std::process::Command::new(program)
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .map_err(|e| ConnectorError::internal(format!("cannot start `{program}`: {e}")))?;
            let line = format!("{label} {}\n", child.id());
            // The child is deliberately neither waited for nor killed: whoever runs the
            // plugin must end it with the run.
            std::mem::forget(child);
            Ok(line)
        };
        let mut lines = start("plain", "sleep", &["300"])?;
        // An ignored signal stays ignored across exec, so the sleep ignores SIGTERM.
        lines += &start("stubborn", "sh", &["-c", "trap '' TERM; exec sleep 300"])?;
        use std::io::Write as _;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .and_then(|mut f| f.write_all(lines.as_bytes()))
            .map_err(|e| ConnectorError::internal(format!("cannot write `{file}`: {e}")))?;
        Ok(())
    }

    /// Fails with an auth error echoing `leak`, the way a careless connector would.
    fn leak(&self) -> Result<()> {
        let Some(text) = &self.leak else {
            return Ok(());
        };
        lockstep_plugin_sdk::tracing::warn!("panicky: logging in with token {text}");
        if self.leak_stdout {
            println!("panicky: token {text} refused");
        }
        Err(ConnectorError::auth(format!(
            "panicky: the server refused token {text}"
        )))
    }

    /// Fails with a transient error while fewer than `fail_transient_times` reads have failed.
    fn transient_failure(&self) -> Result<()> {
        match self.count_failure(self.fail_transient_times)? {
            None => Ok(()),
            Some((n, times)) => Err(ConnectorError::transient(format!(
                "panicky: deliberate transient failure {n} of {times}"
            ))),
        }
    }

    /// Fails the way the config says if `entry` is the one it names.
    fn at(&self, entry: &str) {
        let is = |field: &Option<String>| field.as_deref() == Some(entry);
        if is(&self.panic_in) {
            panic!("panicky: deliberate panic in {entry}");
        }
        if is(&self.abort_in) {
            std::process::abort();
        }
        if is(&self.segv_in) {
            let null = std::hint::black_box(std::ptr::null::<u8>());
            // SAFETY: none; crashing the process with SIGSEGV is the point.
            let byte = unsafe { std::ptr::read_volatile(null) };
            std::hint::black_box(byte);
        }
    }
}

/// The connector.
pub struct Panicky;

impl Connector for Panicky {
    type Source = PanickySource;
    type Destination = PanickyDestination;

    fn manifest() -> Manifest {
        Manifest {
            name: "panicky".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Fails hard in a chosen entry point (test fixture).".into(),
            features: vec!["upsert".into(), "delete".into()],
        }
    }
}

fn stream() -> StreamInfo {
    StreamInfo {
        name: "items".into(),
        fields: vec![
            FieldInfo {
                name: "id".into(),
                data_type: DataType::Int64,
                nullable: false,
                native_type: None,
            },
            FieldInfo {
                name: "name".into(),
                data_type: DataType::Text,
                nullable: true,
                native_type: None,
            },
        ],
        primary_key: vec!["id".into()],
        cursor_candidates: vec![],
    }
}

/// The in-memory source of 3 rows.
pub struct PanickySource {
    trip: Trip,
}

impl SourceConnector for PanickySource {
    type Config = Trip;
    type Reader = Rows;

    async fn open(trip: Trip, _ctx: Context) -> Result<Self> {
        trip.validate()?;
        trip.at("open_source");
        Ok(Self { trip })
    }

    async fn check(&mut self) -> Result<()> {
        self.trip.at("check");
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.trip.at("discover");
        Ok(Catalog {
            streams: vec![stream()],
        })
    }

    async fn read(&mut self, request: ReadRequest) -> Result<Rows> {
        self.trip.at("read");
        self.trip.transient_failure()?;
        self.trip.rate_limit()?;
        self.trip.leak()?;
        self.trip.spawn_child()?;
        if request.stream != "items" {
            return Err(ConnectorError::schema(format!(
                "no stream `{}`; panicky offers `items`",
                request.stream
            )));
        }
        let after = request
            .checkpoint
            .as_ref()
            .and_then(|c| c["key"][0].as_i64())
            .unwrap_or(i64::MIN);
        Ok(Rows {
            trip: self.trip.clone(),
            next: after.saturating_add(1).max(1),
            batch_size: request.batch_size.unwrap_or(10_000).max(1) as i64,
        })
    }
}

/// The rows of one read: ids `next..=rows` (3 unless the config says).
pub struct Rows {
    trip: Trip,
    next: i64,
    batch_size: i64,
}

impl BatchReader for Rows {
    async fn next_batch(&mut self) -> Result<Option<(RecordBatch, Value)>> {
        self.trip.at("next_batch");
        let rows = self.trip.rows.unwrap_or(3);
        if self.next > rows {
            return Ok(None);
        }
        if let Some(ms) = self.trip.sleep_ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
        let last = (self.next + self.batch_size - 1).min(rows);
        let names = ["one", "two"];
        let rows: Vec<Map<String, Value>> = (self.next..=last)
            .map(|id| {
                let name = names.get(id as usize - 1).copied();
                let mut row = Map::new();
                row.insert("id".into(), id.into());
                row.insert("name".into(), name.into());
                row
            })
            .collect();
        self.next = last + 1;
        let batch = batch_from_rows(&stream().fields, &rows)?;
        Ok(Some((batch, json!({ "key": [last] }))))
    }
}

/// The destination that accepts everything.
pub struct PanickyDestination {
    trip: Trip,
}

impl DestinationConnector for PanickyDestination {
    type Config = Trip;
    type Writer = Sink;

    async fn open(trip: Trip, _ctx: Context) -> Result<Self> {
        trip.validate()?;
        trip.at("open_destination");
        Ok(Self { trip })
    }

    async fn check(&mut self) -> Result<()> {
        self.trip.at("check");
        Ok(())
    }

    async fn discover(&mut self) -> Result<Catalog> {
        self.trip.at("discover");
        Ok(Catalog::default())
    }

    async fn open_stream(&mut self, _request: OpenStreamRequest) -> Result<Sink> {
        self.trip.at("open_stream");
        Ok(Sink {
            trip: self.trip.clone(),
        })
    }
}

/// A writer that counts and forgets.
pub struct Sink {
    trip: Trip,
}

impl StreamWriter for Sink {
    async fn upsert(&mut self, batch: RecordBatch) -> Result<WriteOutcome> {
        self.trip.at("upsert");
        Ok(WriteOutcome {
            inserted: Some(batch.num_rows() as u64),
            ..Default::default()
        })
    }

    async fn delete(&mut self, keys: RecordBatch) -> Result<WriteOutcome> {
        self.trip.at("delete");
        Ok(WriteOutcome {
            deleted: Some(keys.num_rows() as u64),
            ..Default::default()
        })
    }

    async fn flush(&mut self) -> Result<()> {
        self.trip.at("flush");
        Ok(())
    }
}

lockstep_plugin_sdk::export_connector!(Panicky);
