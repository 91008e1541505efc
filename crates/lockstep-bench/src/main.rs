//! `lockstep-bench`: benchmarks run by `cargo xtask bench`; not tests.
//!
//! `lockstep-bench boundary [--rows N] [--batch-size N] [--runs N] [--shape contacts|numbers]
//! [--plugin PATH]` measures what the plugin boundary costs a sync. It moves the same rows
//! from the passthrough test connector's source to its destination, one batch at a time
//! (read a batch, then write it), three ways:
//!
//! - direct: in one thread of this process, through the SDK traits, calling the very code
//!   the plugin contains (the passthrough crate's rlib);
//! - threads: the same, but the source and the destination each on a thread of their own, a
//!   batch handed from one to the other through channels: the cost of the host's threading
//!   model (two thread hops per batch, batches changing cores) without the ABI;
//! - plugin: through `lockstep-plugin-host`, loading the passthrough cdylib, every call on a
//!   blocking thread and every batch exported, validated in full and imported across the
//!   Arrow C Data Interface.
//!
//! By default the rows are shaped like `cargo xtask bench pg`'s table (`contacts`: text, JSON
//! text, timestamps, integers, some nulls; about 300 bytes a row) in batches of 10,000, the
//! engine's default batch size, so that a batch costs what a sync's batch costs to produce
//! and consume; `--shape numbers` moves narrow fixed-width rows instead (10M rows of 17 bytes
//! in batches of 65,536 used to be the default, and took so little time that the ratio swung
//! from -0.01 to 0.44 between runs on a shared machine).
//!
//! The paths take turns (their order rotates), 15 runs each by default, the medians are
//! compared, and all checksums must agree. Besides wall time, each run's process CPU time is
//! shown: on a shared machine it varies less, and the difference between the two is time
//! spent waiting (for a core, or for a thread to wake up). The boundary's cost is reported
//! per batch, in microseconds ((plugin - direct) / batches), and as a share of a batch's
//! processing time without the boundary ((plugin - direct) / direct: generating every value
//! of the batch and reading every value back). The last line of output is
//! `boundary_overhead=<share>`, for scripts.
//!
//! `lockstep-bench hops` measures the round trip of an empty `spawn_blocking` call, the floor
//! of every plugin call's cost.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use lockstep_plugin_host::{no_redaction, LoadedPlugin};
use lockstep_plugin_sdk::arrow::array::RecordBatch;
use lockstep_plugin_sdk::{
    block_on, standalone_context, BatchReader as _, DestinationConnector as _,
    SourceConnector as _, StreamWriter as _,
};
use lockstep_protocol::{OpenStreamRequest, ReadMode, ReadRequest, SchemaEvolution};
use lockstep_testplugin_passthrough::{
    Checksum, Config, Generator, PassthroughDestination, PassthroughSource, Shape, Summer,
};
use serde_json::{json, Value};
use tracing_subscriber::layer::SubscriberExt as _;

const USAGE: &str = "usage: lockstep-bench boundary [--rows N] [--batch-size N] [--runs N] \
                     [--shape contacts|numbers] [--plugin PATH]\n       lockstep-bench hops";

struct Options {
    rows: u64,
    batch_size: usize,
    runs: usize,
    shape: Shape,
    plugin: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("boundary") => boundary(parse(&args[1..])?),
        Some("hops") => hops(),
        _ => bail!("{USAGE}"),
    }
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        rows: 1_000_000,
        batch_size: 10_000,
        runs: 15,
        shape: Shape::Contacts,
        plugin: None,
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
            "--shape" => {
                options.shape = match value()?.as_str() {
                    "contacts" => Shape::Contacts,
                    "numbers" => Shape::Numbers,
                    other => {
                        bail!("--shape takes `contacts` or `numbers`, found `{other}`; {USAGE}")
                    }
                }
            }
            "--plugin" => options.plugin = Some(PathBuf::from(value()?)),
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

fn config(o: &Options) -> Config {
    Config {
        rows: o.rows,
        batch_size: o.batch_size,
        shape: o.shape,
    }
}

fn read_request(batch_size: usize, shape: Shape) -> ReadRequest {
    ReadRequest {
        stream: shape.stream().into(),
        mode: ReadMode::Full,
        batch_size: Some(batch_size),
        ..Default::default()
    }
}

fn open_request(shape: Shape) -> OpenStreamRequest {
    OpenStreamRequest {
        stream: shape.stream().into(),
        fields: shape.fields(),
        key: vec!["id".into()],
        create_if_missing: true,
        schema_evolution: SchemaEvolution::AddColumns,
    }
}

async fn open_reader(config: Config) -> Result<Generator> {
    let (batch_size, shape) = (config.batch_size, config.shape);
    let mut source = PassthroughSource::open(config, standalone_context()).await?;
    Ok(source.read(read_request(batch_size, shape)).await?)
}

async fn open_writer(config: Config) -> Result<Summer> {
    let shape = config.shape;
    let mut destination = PassthroughDestination::open(config, standalone_context()).await?;
    Ok(destination.open_stream(open_request(shape)).await?)
}

/// One direct run. Times from the read to the flush, like the other paths.
///
/// It runs on a thread of its own, as the plugin's calls do (on the host's blocking
/// threads): glibc's allocator trims the main thread's heap back after every batch is freed,
/// so on the main thread every batch would fault its pages in afresh, and the comparison
/// would measure that instead of the boundary.
fn run_direct(o: &Options) -> Result<(Duration, Checksum)> {
    let config = config(o);
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                block_on(async {
                    let start = Instant::now();
                    let mut reader = open_reader(config.clone()).await?;
                    let mut writer = open_writer(config).await?;
                    while let Some((batch, _checkpoint)) = reader.next_batch().await? {
                        writer.upsert(batch).await?;
                    }
                    writer.flush().await?;
                    Ok((start.elapsed(), writer.checksum()))
                })
            })
            .join()
            .map_err(|_| anyhow!("the direct run panicked"))?
    })
}

/// One run with the source and the destination on threads of their own, driven batch by
/// batch from this thread as the host drives plugins: no ABI, but the same thread hops.
fn run_threads(o: &Options) -> Result<(Duration, Checksum)> {
    let config = config(o);
    let (ask_source, source_asked) = mpsc::channel::<()>();
    let (source_answers, source_answer) = mpsc::channel::<Result<Option<RecordBatch>>>();
    let (ask_destination, destination_asked) = mpsc::channel::<Option<RecordBatch>>();
    let (destination_answers, destination_answer) = mpsc::channel::<Result<Option<Checksum>>>();
    std::thread::scope(|scope| {
        let source_config = config.clone();
        scope.spawn(move || {
            block_on(async {
                let mut reader = match open_reader(source_config).await {
                    Ok(reader) => reader,
                    Err(e) => return drop(source_answers.send(Err(e))),
                };
                while source_asked.recv().is_ok() {
                    let next = reader.next_batch().await.map(|b| b.map(|(batch, _)| batch));
                    let end = !matches!(next, Ok(Some(_)));
                    if source_answers.send(next.map_err(Into::into)).is_err() || end {
                        break;
                    }
                }
            })
        });
        scope.spawn(move || {
            block_on(async {
                let mut writer = match open_writer(config).await {
                    Ok(writer) => writer,
                    Err(e) => return drop(destination_answers.send(Err(e))),
                };
                while let Ok(message) = destination_asked.recv() {
                    let answer = match message {
                        Some(batch) => writer.upsert(batch).await.map(|_| None),
                        None => writer.flush().await.map(|()| Some(writer.checksum())),
                    };
                    if destination_answers
                        .send(answer.map_err(Into::into))
                        .is_err()
                    {
                        break;
                    }
                }
            })
        });
        let start = Instant::now();
        let gone = || anyhow!("a thread of the threads run stopped");
        loop {
            ask_source.send(()).map_err(|_| gone())?;
            let Some(batch) = source_answer.recv().map_err(|_| gone())?? else {
                break;
            };
            ask_destination.send(Some(batch)).map_err(|_| gone())?;
            destination_answer.recv().map_err(|_| gone())??;
        }
        ask_destination.send(None).map_err(|_| gone())?;
        let checksum = destination_answer.recv().map_err(|_| gone())??;
        let elapsed = start.elapsed();
        drop(ask_source);
        drop(ask_destination);
        Ok((elapsed, checksum.context("the flush returned no checksum")?))
    })
}

/// One run through the plugin host. Times from the read to the flush; the checksum is the
/// one the plugin's destination logs on flush.
async fn run_plugin(
    plugin: &LoadedPlugin,
    o: &Options,
    logged: &Logged,
) -> Result<(Duration, Checksum)> {
    let shape = match o.shape {
        Shape::Contacts => "contacts",
        Shape::Numbers => "numbers",
    };
    let config = json!({ "rows": o.rows, "batch_size": o.batch_size, "shape": shape });
    let mut source = plugin.open_source(&config, no_redaction()).await?;
    let mut destination = plugin.open_destination(&config, no_redaction()).await?;
    let start = Instant::now();
    let mut batches = source.read(&read_request(o.batch_size, o.shape)).await?;
    let mut writer = destination.open_stream(&open_request(o.shape)).await?;
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
        .map_err(|_| anyhow!("the log capture panicked"))?
        .take()
        .context("the plugin destination logged no checksum on flush")?;
    let number = |name: &str| fields.get(name).and_then(Value::as_u64);
    let checksum = Checksum {
        rows: number("rows").context("the checksum log line has no `rows`")?,
        sum: number("checksum").context("the checksum log line has no `checksum`")?,
    };
    Ok((elapsed, checksum))
}

/// The structured fields of the last `lockstep::plugin` log event with a checksum.
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

/// The round trip of one `spawn_blocking` call that does nothing: the floor of what each
/// plugin call costs through the host.
fn hops() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    const CALLS: u32 = 20_000;
    let elapsed = runtime.block_on(async {
        tokio::task::spawn_blocking(|| ()).await?;
        let start = Instant::now();
        for _ in 0..CALLS {
            tokio::task::spawn_blocking(|| ()).await?;
        }
        Ok::<_, anyhow::Error>(start.elapsed())
    })?;
    println!(
        "spawn_blocking round trip: {:.1} µs",
        elapsed.as_secs_f64() * 1e6 / f64::from(CALLS)
    );
    Ok(())
}

/// The CPU time this process has used so far (all threads).
fn process_cpu_time() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill in.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) } == 0;
    if ok {
        Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
    } else {
        Duration::ZERO
    }
}

fn median(times: &[Duration]) -> Duration {
    let mut times = times.to_vec();
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

#[derive(Clone, Copy)]
enum Path {
    Direct,
    Threads,
    Plugin,
}

const PATHS: [Path; 3] = [Path::Direct, Path::Threads, Path::Plugin];

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Threads => "threads",
            Path::Plugin => "plugin",
        }
    }
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
    let run = |which: Path| match which {
        Path::Direct => run_direct(&o),
        Path::Threads => run_threads(&o),
        Path::Plugin => runtime.block_on(run_plugin(&plugin, &o, &logged)),
    };
    let batches = o.rows.div_ceil(o.batch_size as u64);
    let columns: Vec<String> = o
        .shape
        .fields()
        .iter()
        .map(|f| format!("{} {:?}", f.name, f.data_type).to_lowercase())
        .collect();
    println!(
        "boundary: {} rows of ({}) in {batches} batches of {}; {} runs of each path in \
         rotating order, after one warm-up each",
        o.rows,
        columns.join(", "),
        o.batch_size,
        o.runs
    );
    println!("plugin: {}", path.display());

    let (_, expected) = run(Path::Direct)?;
    for which in PATHS {
        run(which)?;
    }
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut cpu: [Vec<Duration>; 3] = Default::default();
    for round in 0..o.runs {
        for i in 0..PATHS.len() {
            let which = PATHS[(round + i) % PATHS.len()];
            let cpu_before = process_cpu_time();
            let (time, checksum) = run(which)?;
            cpu[which as usize].push(process_cpu_time().saturating_sub(cpu_before));
            ensure!(
                checksum == expected,
                "the {} checksum {checksum:?} differs from the direct one {expected:?}",
                which.name()
            );
            times[which as usize].push(time);
        }
    }

    let rate = |d: Duration| o.rows as f64 / d.as_secs_f64() / 1e6;
    let medians = times.each_ref().map(|t| median(t));
    for which in PATHS {
        let list: Vec<String> = times[which as usize].iter().map(|t| millis(*t)).collect();
        let m = medians[which as usize];
        println!(
            "{:>7}: median {} ({:.1} M rows/s), CPU {}; runs: {}",
            which.name(),
            millis(m),
            rate(m),
            millis(median(&cpu[which as usize])),
            list.join(", ")
        );
    }
    let [direct, threads, plugin] = medians.map(|d| d.as_secs_f64());
    let per_batch = |from: f64, to: f64| (to - from) / batches.max(1) as f64 * 1e6;
    let share = (plugin - direct) / direct;
    println!(
        "checksums agree: {} rows, sum {:#018x}",
        expected.rows, expected.sum
    );
    println!(
        "cost per batch over direct: threads {:+.1} µs, plugin {:+.1} µs (of which the ABI, \
         over threads: {:+.1} µs)",
        per_batch(direct, threads),
        per_batch(direct, plugin),
        per_batch(threads, plugin)
    );
    println!(
        "a batch of {} rows: {:.1} µs to produce and consume directly; the boundary adds \
         {:+.1} µs, {:+.1}% of that",
        o.batch_size.min(o.rows as usize),
        per_batch(0.0, direct),
        per_batch(direct, plugin),
        100.0 * share
    );
    println!("boundary_overhead={share:.3}");
    Ok(())
}
