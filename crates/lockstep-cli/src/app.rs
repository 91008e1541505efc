//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lockstep",
    version,
    about = "Keeps records consistent across systems with scheduled, incremental syncs.",
    after_help = "Logs go to stderr; set LOCKSTEP_LOG (e.g. `info`, `lockstep=debug`) to see more."
)]
pub struct Cli {
    /// The config file. Relative paths inside it resolve against its directory.
    #[arg(
        short,
        long,
        global = true,
        env = "LOCKSTEP_CONFIG",
        default_value = "lockstep.toml"
    )]
    pub config: PathBuf,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the config file: syntax, references, environment, connectors and, unless
    /// --offline, the streams and field mappings against the live systems.
    Validate {
        /// Do not connect to any system; check the file and the plugins only.
        #[arg(long)]
        offline: bool,
    },
    /// List or inspect connector plugins.
    Connectors {
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// Run one sync now, in this process.
    Run {
        /// The sync's name, as in [syncs.NAME].
        sync: String,
        /// Forget the stored cursor and ledger first: read everything again.
        #[arg(long)]
        full_refresh: bool,
        /// Apply deletes even past the sync's max_delete_fraction.
        #[arg(long)]
        allow_mass_delete: bool,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show what a run would do now, without writing anything: the counts, and samples of
    /// the records it would add, update (field by field) and delete.
    Plan {
        sync: String,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Check that the sync's two systems agree: counts on both sides, freshness (newest
    /// cursor value, last successful run, lag) and the records missing, extra or different
    /// in the destination, compared by key in the mapped fields. Exit codes: 0 the systems
    /// agree (or --repair made them agree), 1 they differ, 2 verify itself failed.
    Verify {
        sync: String,
        /// How many records of each kind of difference to show (JSON output lists all).
        #[arg(long, default_value_t = 10)]
        sample: usize,
        /// Fix what differs through the normal write path, as a run of kind `verify-repair`:
        /// upsert the source's current records that are missing or different, and delete
        /// extra ones under the sync's max_delete_fraction.
        #[arg(long)]
        repair: bool,
        /// With --repair, delete extra records even past the sync's max_delete_fraction.
        #[arg(long, requires = "repair")]
        allow_mass_delete: bool,
        /// Read the config as the daemon sends it on stdin (one JSON line with the text it
        /// loaded) instead of from the file: the daemon's scheduled verify uses this.
        #[arg(long, hide = true)]
        config_from_daemon: bool,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// List, show and retry records that runs could not map or write.
    Rejects {
        #[command(subcommand)]
        command: RejectsCommand,
    },
    /// List, show and resolve the conflicts of two-way syncs: records both sides changed
    /// differently since they last agreed.
    Conflicts {
        #[command(subcommand)]
        command: ConflictsCommand,
    },
    /// List, approve or discard the deletes a mirror sync holds because they were past its
    /// max_delete_fraction.
    Deletes {
        #[command(subcommand)]
        command: DeletesCommand,
    },
    /// Change data capture: drop a retired cdc sync's replication slot and publication.
    Cdc {
        #[command(subcommand)]
        command: CdcCommand,
    },
    /// Show run history, newest first.
    Runs {
        /// Only this sync's runs.
        sync: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        /// Read the history from this state store (sqlite:PATH or postgres://...) instead of
        /// the config's. Without it, an invalid config file falls back to the state store of
        /// its last valid version.
        #[arg(long, value_name = "URL")]
        state: Option<String>,
    },
    /// Run every scheduled sync of the config, each run in a worker process, with metrics,
    /// health and a JSON API over HTTP. SIGHUP reloads the config; SIGTERM stops after the
    /// batches in hand.
    Daemon {
        /// The HTTP address, overriding `[daemon] listen` (default 127.0.0.1:9464).
        #[arg(long)]
        listen: Option<String>,
        /// How long a worker may take to stop after SIGTERM (run timeout, daemon shutdown)
        /// before it is killed.
        #[arg(long, default_value = "30s", value_parser = parse_duration_arg)]
        kill_grace: std::time::Duration,
    },
    /// Run one sync in this process for the daemon: one JSON line on stdout when the run
    /// starts and one with its report; logs as JSON on stderr.
    #[command(hide = true)]
    Worker {
        sync: String,
        /// Read the config text from the first stdin line and stop when stdin closes.
        #[arg(long)]
        supervised: bool,
    },
    /// List the syncs with their schedule, next run and last run.
    Status {
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        /// Read the history from this state store (sqlite:PATH or postgres://...) instead of
        /// the config's. Without it, an invalid config file falls back to the state store of
        /// its last valid version.
        #[arg(long, value_name = "URL")]
        state: Option<String>,
    },
    /// Print the completion script of a shell: `lockstep completions bash > /etc/bash_completion.d/lockstep`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// About the config file itself.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Write the man pages of lockstep and its subcommands into a directory (for packaging).
    #[command(hide = true)]
    Manpages {
        /// The directory to write `lockstep.1`, `lockstep-run.1`, ... into.
        dir: PathBuf,
    },
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    lockstep_config::parse_duration(text).map_err(|e| e.to_string())
}

#[derive(Subcommand, Debug)]
pub enum RejectsCommand {
    /// Pending rejected records, newest first.
    List {
        /// Only this sync's records.
        sync: Option<String>,
        /// Include records already retried.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// One rejected record with its raw value.
    Show { id: i64 },
    /// Send a sync's pending rejected records (or only the given ids) through the mapping
    /// and into the destination again.
    Retry {
        sync: String,
        /// Only these record ids.
        ids: Vec<i64>,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConflictsCommand {
    /// Conflicts waiting for a person (or, with --all, every recorded conflict), newest first.
    List {
        /// Only this sync's conflicts.
        sync: Option<String>,
        /// Include conflicts already decided (by a policy or a person).
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// One conflict: the base both sides last agreed on, each side's values and the decision.
    Show {
        id: i64,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Decide an open conflict: take one side's values (`--take a|b`), or set fields by hand
    /// (`--set field=value`, on top of --take's values, or of the base). The sync's next run
    /// writes the decision to both sides; --apply runs the sync now.
    Resolve {
        id: i64,
        /// Take this side's values (or its delete).
        #[arg(long, value_parser = ["a", "b"])]
        take: Option<String>,
        /// Set a field: `field=value`, the value as JSON (`42`, `true`, `"text"`) or, when it
        /// does not parse as JSON, as text. Repeatable.
        #[arg(long = "set", value_name = "FIELD=VALUE")]
        set: Vec<String>,
        /// Run the sync now to write the decision.
        #[arg(long)]
        apply: bool,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeletesCommand {
    /// How many deletes wait (held, approved, pending) and a sample of their keys.
    List {
        sync: String,
        /// How many keys to show.
        #[arg(long, default_value_t = lockstep_orchestrator::DELETE_SAMPLE_KEYS)]
        sample: usize,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Approve the held deletes and run the sync once to apply them.
    Approve {
        sync: String,
        /// Only approve them; the sync's next run applies them.
        #[arg(long)]
        no_run: bool,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Forget the held deletes: the records stay in the destination.
    Discard { sync: String },
}

#[derive(Subcommand, Debug)]
pub enum CdcCommand {
    /// Drop the sync's replication slot and publication on the source (through its
    /// connector), so that the server stops retaining WAL for it, and reset the sync's
    /// checkpoint: run it before removing a cdc sync from the config. Refused while a run of
    /// the sync holds its lease. A sync still configured takes a new snapshot at its next run.
    Drop {
        sync: String,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConnectorsCommand {
    /// List the plugins found in the connector directories.
    List {
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show a plugin's manifest and ABI versions, by file path or connector name.
    Inspect {
        /// A plugin file, or the name of a connector in the connector directories.
        plugin: String,
    },
    /// Open a connection and run its connector's check: ok, or the error and what to fix.
    /// Exits 1 when a check fails.
    Check {
        /// A connection of the config file, as in [connections.NAME].
        #[arg(required_unless_present = "connector", conflicts_with = "connector")]
        connection: Option<String>,
        #[command(flatten)]
        target: crate::commands::probe::TargetArgs,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show a connection's catalog: streams, fields with their logical types, keys, cursor
    /// candidates, and the connector's features.
    Discover {
        /// A connection of the config file, as in [connections.NAME].
        #[arg(required_unless_present = "connector", conflicts_with = "connector")]
        connection: Option<String>,
        #[command(flatten)]
        target: crate::commands::probe::TargetArgs,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Write a new connector crate: a working connector over JSON Lines files, a
    /// conformance test and a README. Neither --source nor --destination means both roles.
    New {
        /// The connector's name, as configs spell it: lowercase letters, digits, underscores.
        name: String,
        /// The connector reads (plays the source role).
        #[arg(long)]
        source: bool,
        /// The connector writes (plays the destination role).
        #[arg(long)]
        destination: bool,
        /// The crate's directory [default: ./lockstep-connector-NAME].
        #[arg(long)]
        path: Option<std::path::PathBuf>,
        /// Where the crate takes the SDK from: path:DIR (a Lockstep checkout), git:URL, or a
        /// release version such as 0.1 [default: git, this project's repository].
        #[arg(long, value_name = "path:DIR|git:URL|VERSION")]
        sdk: Option<String>,
    },
    /// Read records of one stream without a sync: nothing is written, the state store is not
    /// opened. A table, or JSON lines with --output json.
    Read {
        /// CONNECTION.STREAM, or only STREAM with --connector.
        stream: String,
        /// Stop after this many records; 0 reads the whole stream.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        target: crate::commands::probe::TargetArgs,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print a JSON Schema of the config file, with the config schema of every connector found
    /// in the connector directories, for editors to complete and check lockstep.toml.
    Schema,
}
