//! The subcommands, and what they share: loading the config, finding plugins, logging.

mod cdc;
mod completions;
mod config_schema;
mod conflicts;
mod connectors;
mod connectors_new;
mod daemon;
mod deletes;
mod history;
mod plan;
pub(crate) mod probe;
mod rejects;
mod run;
mod runs;
mod status;
mod validate;
mod verify;
mod worker;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use lockstep_config::{Config, ConfigErrors};
use lockstep_orchestrator::{Endpoint, SyncJob};
use lockstep_plugin_host::{default_search_path, PluginRegistry, Redactor};

use crate::app::{Cli, Command, ConfigCommand, ConnectorsCommand, LogFormat};

pub type CmdResult = Result<(), CliError>;

/// Errors of a command: either already reported, or a message to print.
pub enum CliError {
    Reported(u8),
    Message(String),
}

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError::Message(e.to_string())
    }
}

pub async fn dispatch(cli: Cli) -> ExitCode {
    // The daemon sets up logging itself, once it knows the config's log format.
    if !matches!(cli.command, Command::Daemon { .. }) {
        init_logging(
            cli.log_format,
            matches!(cli.command, Command::Run { .. } | Command::Verify { .. }),
        );
    }
    let result = match cli.command {
        Command::Validate { offline } => validate::run(&cli.config, offline).await,
        Command::Connectors { command } => match command {
            ConnectorsCommand::List { output } => connectors::list(&cli.config, output).await,
            ConnectorsCommand::Inspect { plugin } => {
                connectors::inspect(&cli.config, &plugin).await
            }
            ConnectorsCommand::Check {
                connection,
                target,
                output,
            } => probe::check(&cli.config, connection.as_deref(), &target, output).await,
            ConnectorsCommand::Discover {
                connection,
                target,
                output,
            } => probe::discover(&cli.config, connection.as_deref(), &target, output).await,
            ConnectorsCommand::New {
                name,
                source,
                destination,
                path,
                sdk,
            } => connectors_new::run(&name, source, destination, path.as_deref(), sdk.as_deref()),
            ConnectorsCommand::Read {
                stream,
                limit,
                target,
                output,
            } => probe::read(&cli.config, &stream, limit, &target, output).await,
        },
        Command::Run {
            sync,
            full_refresh,
            allow_mass_delete,
            output,
        } => run::run(&cli.config, &sync, full_refresh, allow_mass_delete, output).await,
        Command::Plan { sync, output } => plan::run(&cli.config, &sync, output).await,
        Command::Verify {
            sync,
            sample,
            repair,
            allow_mass_delete,
            config_from_daemon,
            output,
        } => {
            verify::run(
                &cli.config,
                config_from_daemon,
                &sync,
                sample,
                repair,
                allow_mass_delete,
                output,
            )
            .await
        }
        Command::Rejects { command } => rejects::run(&cli.config, command).await,
        Command::Conflicts { command } => conflicts::run(&cli.config, command).await,
        Command::Deletes { command } => deletes::run(&cli.config, command).await,
        Command::Cdc { command } => cdc::run(&cli.config, command).await,
        Command::Runs {
            sync,
            limit,
            output,
            state,
        } => {
            runs::run(
                &cli.config,
                sync.as_deref(),
                limit,
                output,
                state.as_deref(),
            )
            .await
        }
        Command::Daemon { listen, kill_grace } => {
            daemon::run(&cli.config, cli.log_format, listen, kill_grace).await
        }
        Command::Worker { sync, supervised } => worker::run(&cli.config, &sync, supervised).await,
        Command::Status { output, state } => {
            status::run(&cli.config, output, state.as_deref()).await
        }
        Command::Completions { shell } => completions::print(shell),
        Command::Config {
            command: ConfigCommand::Schema,
        } => config_schema::print(&cli.config),
        Command::Manpages { dir } => completions::write_manpages(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Reported(code)) => ExitCode::from(code),
        Err(CliError::Message(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, interactive_run: bool) {
    use tracing_subscriber::EnvFilter;
    // During an interactive run the progress bar and summary say what happens; logs stay
    // at warnings unless asked for.
    let default = if interactive_run {
        "warn"
    } else {
        "warn,lockstep=info"
    };
    let filter = std::env::var("LOCKSTEP_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none());
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Loads the config file, printing every error with its location when it is invalid, and
/// moves into its directory so that relative paths in it resolve there.
pub fn load_config(path: &Path) -> Result<Config, CliError> {
    // An absolute path keeps the config's own relative paths right after the move below.
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    match lockstep_config::load(&path) {
        Ok(config) => {
            enter_config_dir(&config)?;
            Ok(config)
        }
        Err(errors) => {
            print_config_errors(&errors);
            Err(CliError::Reported(2))
        }
    }
}

/// The config a daemon sends on stdin (one [`WorkerInput`] JSON line: the text it loaded and
/// validated), parsed as if it were the file at `path`, so that a child of the daemon works
/// with the config the daemon holds even when the file was edited since its last reload.
///
/// [`WorkerInput`]: lockstep_daemon::protocol::WorkerInput
pub fn config_from_daemon(path: &Path) -> Result<Config, CliError> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| CliError::Message(format!("cannot read the config from stdin: {e}")))?;
    if line.trim().is_empty() {
        return Err(CliError::Message(
            "stdin closed before the daemon sent the config".to_owned(),
        ));
    }
    let config = parse_daemon_config(&line, path).map_err(CliError::Message)?;
    enter_config_dir(&config)?;
    Ok(config)
}

/// Parses the daemon's config line (a [`WorkerInput`]) as the config file at `path`; its
/// errors are printed, and the message sums them up.
///
/// [`WorkerInput`]: lockstep_daemon::protocol::WorkerInput
pub fn parse_daemon_config(line: &str, path: &Path) -> Result<Config, String> {
    let input: lockstep_daemon::protocol::WorkerInput = serde_json::from_str(line)
        .map_err(|e| format!("the config line on stdin is not valid: {e}"))?;
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    lockstep_config::parse(&input.config, &path, &|name| std::env::var(name).ok()).map_err(
        |errors| {
            print_config_errors(&errors);
            errors.summary()
        },
    )
}

/// Moves into the config file's directory, so that relative paths in it resolve there.
pub fn enter_config_dir(config: &Config) -> Result<(), CliError> {
    if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::env::set_current_dir(dir).map_err(|e| {
            CliError::Message(format!(
                "cannot enter the config's directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    Ok(())
}

pub fn print_config_errors(errors: &ConfigErrors) {
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    if color {
        eprintln!("{}", errors.render_fancy(true));
    } else {
        eprintln!("{errors}");
        eprintln!("{}", errors.summary());
    }
}

/// The redactor built from the config's secrets.
pub fn redactor(config: &Config) -> Redactor {
    let secrets = config.secrets.clone();
    Arc::new(move |text: &str| secrets.redact(text))
}

/// Every plugin in the config's connector paths and the default ones.
pub fn registry(config: Option<&Config>) -> PluginRegistry {
    let paths = config
        .map(|c| c.connector_paths.clone())
        .unwrap_or_default();
    PluginRegistry::scan(&default_search_path(&paths))
}

/// The plugins of a sync's two connectors only (see [`PluginRegistry::scan_for`]): a run, a
/// plan or a verify neither pays for nor hears about the other plugins installed.
pub fn registry_for(config: &Config, job: &SyncJob) -> PluginRegistry {
    PluginRegistry::scan_for(
        &default_search_path(&config.connector_paths),
        &[&job.source.connector, &job.destination.connector],
    )
}

/// The sync named `name` with its connections resolved.
pub fn job(config: &Config, name: &str) -> Result<SyncJob, CliError> {
    let Some(sync) = config.syncs.iter().find(|s| s.spec.name == name) else {
        let names: Vec<&str> = config.syncs.iter().map(|s| s.spec.name.as_str()).collect();
        return Err(CliError::Message(format!(
            "{}: no sync named `{name}`; defined syncs: {}",
            config.path.display(),
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let endpoint = |connection: &str| -> Result<Endpoint, CliError> {
        let c = config.connections.get(connection).ok_or_else(|| {
            CliError::Message(format!(
                "sync `{name}` names unknown connection `{connection}`"
            ))
        })?;
        Ok(Endpoint {
            connector: c.connector.clone(),
            config: c.config.clone(),
        })
    };
    Ok(SyncJob {
        spec: sync.spec.clone(),
        source: endpoint(&sync.spec.source.connection)?,
        destination: endpoint(&sync.spec.destination.connection)?,
    })
}

/// Opens the config's state store, and remembers where it is for the time the config file
/// is invalid (see [`history`]).
pub async fn state(config: &Config) -> Result<Box<dyn lockstep_state::StateStore>, CliError> {
    let state = lockstep_state::open(&config.state_url)
        .await
        .map_err(|e| CliError::Message(e.to_string()))?;
    history::remember_state(config);
    Ok(state)
}
