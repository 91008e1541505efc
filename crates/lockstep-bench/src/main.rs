//! `lockstep-bench`: benchmarks run by `cargo xtask bench`; not tests.
//!
//! `lockstep-bench boundary [--rows N] [--batch-size N] [--runs N] [--plugin PATH]` measures
//! what the plugin boundary costs. It moves the same rows from the passthrough test
//! connector's source to its destination twice over:
//!
//! - direct: in this process, through the SDK traits, calling the very code the plugin
//!   contains (the passthrough crate's rlib);
//! - plugin: through `lockstep-plugin-host`, loading the passthrough cdylib, with every call on
//!   a blocking thread and every batch exported, validated and imported across the C Data
//!   Interface, as a sync does.
//!
//! The two alternate, the medians are compared, and both checksums must agree. The last line
//! of output is `boundary_overhead=<fraction>`, (plugin - direct) / direct, for scripts.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use lockstep_plugin_host::{no_redaction, LoadedPlugin};
use lockstep_plugin_sdk::{
    block_on, standalone_context, BatchReader as _, DestinationConnector as _,
    SourceConnector as _, StreamWriter as _,
};
use lockstep_protocol::{OpenStreamRequest, ReadMode, ReadRequest, SchemaEvolution};
use lockstep_testplugin_passthrough::{
    fields, Checksum, Config, PassthroughDestination, PassthroughSource, STREAM,
};
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt as _;

const USAGE: &str =
    "usage: lockstep-bench boundary [--rows N] [--batch-size N] [--runs N] [--plugin PATH]";

struct Options {
    rows: u64,
    batch_size: usize,
    runs: usize,
    plugin: Option<PathBuf>,
    /// `direct` or `plugin`: time one path only (for profiling one of them).
    only: Option<String>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("boundary") => boundary(parse(&args[1..])?),
        _ => bail!("{USAGE}"),
    }
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        rows: 10_000_000,
        batch_size: 65_536,
        runs: 5,
        plugin: None,
        only: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{flag} needs a value; {USAGE}"))
        };
        match flag.as_str() {
            "--rows" => options.rows = value()?.replace('_', "").parse()?,
            "--batch-size" => options.batch_size = value()?.replace('_', "").parse()?,
            "--runs" => options.runs = value()?.parse()?,
            "--plugin" => options.plugin = Some(PathBuf::from(value()?)),
            "--only" => options.only = Some(value()?.clone()),
            other => bail!("unknown argument `{other}`; {USAGE}"),
        }
    }
    ensure!(options.batch_size > 0 && options.runs > 0, "{USAGE}");
    Ok(options)
}

/// The passthrough cdylib: given, or beside this binary (cargo leaves a dependency's cdylib
/// in `deps/` unless it is built as a package of its own).
fn plugin_path(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        return Ok(path);
    }
    let file = format!(
        "{}lockstep_testplugin_passthrough{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the binary has a directory")?;
    [dir.join(&file), dir.join("deps").join(&file)]
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| {
            format!(
                "{file} is not beside {}: build it with `cargo build --release -p \
                 lockstep-testplugin-passthrough`, or give --plugin PATH",
                exe.display()
            )
        })
}

fn read_request(batch_size: usize) -> ReadRequest {
    ReadRequest {
        stream: STREAM.into(),
        mode: ReadMode::Full,
        batch_size: Some(batch_size),
        ..Default::default()
    }
}

fn open_request() -> OpenStreamRequest {
    OpenStreamRequest {
        stream: STREAM.into(),
        fields: fields(),
        key: vec!["id".into()],
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

/// One run in this process, through the SDK traits. Times from the read to the flush.
///
/// It runs on a thread of its own, as the plugin's calls do (on the host's blocking
/// threads): glibc's allocator trims the main thread's heap back after every batch is freed,
/// so on the main thread every batch would fault its pages in afresh, and the comparison
/// would measure that instead of the boundary.
fn run_direct(o: &Options) -> Result<(Duration, Checksum)> {
    let config = Config {
        rows: o.rows,
        batch_size: o.batch_size,
    };
    let batch_size = o.batch_size;
    std::thread::scope(|scope| {
        scope
            .spawn(move || direct_on_this_thread(config, batch_size))
            .join()
            .map_err(|_| anyhow::anyhow!("the direct run panicked"))?
    })
}

fn direct_on_this_thread(config: Config, batch_size: usize) -> Result<(Duration, Checksum)> {
    block_on(async {
        let mut source = PassthroughSource::open(config.clone(), standalone_context()).await?;
        let mut destination = PassthroughDestination::open(config, standalone_context()).await?;
        let start = Instant::now();
        let mut reader = source.read(read_request(batch_size)).await?;
        let mut writer = destination.open_stream(open_request()).await?;
        while let Some((batch, _checkpoint)) = reader.next_batch().await? {
            writer.upsert(batch).await?;
        }
        writer.flush().await?;
        Ok((start.elapsed(), writer.checksum()))
    })
}

/// One run through the plugin host. Times from the read to the flush; the checksum is the
/// one the plugin's destination logs on flush.
async fn run_plugin(
    plugin: &LoadedPlugin,
    o: &Options,
    logged: &Logged,
) -> Result<(Duration, Checksum)> {
    let config = json!({ "rows": o.rows, "batch_size": o.batch_size });
    let mut source = plugin.open_source(&config, no_redaction()).await?;
    let mut destination = plugin.open_destination(&config, no_redaction()).await?;
    let start = Instant::now();
    let mut batches = source.read(&read_request(o.batch_size)).await?;
    let mut writer = destination.open_stream(&open_request()).await?;
    let mut inserted = 0;
    while let Some((batch, _checkpoint)) = batches.next().await? {
        inserted += writer.upsert(batch).await?.inserted.unwrap_or(0);
    }
    writer.flush().await?;
    let elapsed = start.elapsed();
    ensure!(
        inserted == o.rows,
        "the plugin destination took {inserted} rows of {}",
        o.rows
    );
    let fields = logged
        .lock()
        .map_err(|_| anyhow::anyhow!("the log capture panicked"))?
        .take()
        .context("the plugin destination logged no checksum on flush")?;
    let number = |name: &str| fields.get(name).and_then(Value::as_u64);
    let checksum = Checksum {
        rows: number("rows").context("the checksum log line has no `rows`")?,
        sum: number("checksum").context("the checksum log line has no `checksum`")?,
    };
    Ok((elapsed, checksum))
}

/// The structured fields of the last `lockstep::plugin` log event.
type Logged = Arc<Mutex<Option<serde_json::Map<String, Value>>>>;

/// Keeps the fields of plugin log events (the host forwards them as one JSON `fields` value).
struct Capture(Logged);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Fields(Option<String>);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "fields" {
                    self.0 = Some(format!("{value:?}"));
                }
            }
        }
        if event.metadata().target() != "lockstep::plugin" {
            return;
        }
        let mut fields = Fields(None);
        event.record(&mut fields);
        let parsed = fields.0.and_then(|text| serde_json::from_str(&text).ok());
        if let (Some(Value::Object(map)), Ok(mut slot)) = (parsed, self.0.lock()) {
            if map.contains_key("checksum") {
                *slot = Some(map);
            }
        }
    }
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    let n = times.len();
    if n % 2 == 1 {
        times[n / 2]
    } else {
        (times[n / 2 - 1] + times[n / 2]) / 2
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn boundary(o: Options) -> Result<()> {
    let logged = Logged::default();
    // Info and above only, so that plugins (which ask the host for its level) skip finer logs.
    let subscriber = tracing_subscriber::registry()
        .with(Capture(logged.clone()))
        .with(tracing_subscriber::filter::LevelFilter::INFO);
    tracing::subscriber::set_global_default(subscriber)?;

    let path = plugin_path(o.plugin.clone())?;
    let plugin = LoadedPlugin::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let batches = o.rows.div_ceil(o.batch_size as u64);
    println!(
        "boundary: {} rows of (id int64, value int64, flag boolean) in {batches} batches of {}, \
         {} runs each, interleaved, after one warm-up each",
        o.rows, o.batch_size, o.runs
    );
    println!("plugin: {}", path.display());

    let (_, expected) = run_direct(&o)?;
    runtime.block_on(run_plugin(&plugin, &o, &logged))?;
    let (mut direct, mut plugged) = (Vec::new(), Vec::new());
    for run in 0..o.runs {
        // Alternate which goes first, so that neither always runs on a warmer machine.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for direct_now in order {
            if o.only
                .as_deref()
                .is_some_and(|only| (only == "direct") != direct_now)
            {
                continue;
            }
            let (time, checksum) = if direct_now {
                run_direct(&o)?
            } else {
                runtime.block_on(run_plugin(&plugin, &o, &logged))?
            };
            let path = if direct_now { "direct" } else { "plugin" };
            ensure!(
                checksum == expected,
                "the {path} checksum {checksum:?} differs from the direct one {expected:?}"
            );
            if direct_now {
                &mut direct
            } else {
                &mut plugged
            }
            .push(time);
        }
    }
    let list = |times: &[Duration]| {
        times
            .iter()
            .map(|t| millis(*t))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rate = |d: Duration| o.rows as f64 / d.as_secs_f64() / 1e6;
    for (name, times) in [("direct", &mut direct), ("plugin", &mut plugged)] {
        if !times.is_empty() {
            println!("{name} runs: {}", list(times));
            let m = median(times);
            println!("{name}: median {}, {:.1} M rows/s", millis(m), rate(m));
        }
    }
    if o.only.is_some() {
        return Ok(());
    }
    let (direct, plugged) = (median(&mut direct), median(&mut plugged));
    let per_batch = (plugged.as_secs_f64() - direct.as_secs_f64()) / batches.max(1) as f64;
    println!(
        "checksums agree: rows {}, sum {:#018x}; boundary cost per batch: {:.1} µs",
        expected.rows,
        expected.sum,
        per_batch * 1e6
    );
    let overhead = (plugged.as_secs_f64() - direct.as_secs_f64()) / direct.as_secs_f64();
    println!("boundary_overhead={overhead:.3}");
    Ok(())
}
