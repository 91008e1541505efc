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
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Show run history, newest first.
    Runs {
        /// Only this sync's runs.
        sync: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
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
}
