//! `lockstep daemon`: runs every scheduled sync of the config (see the lockstep-daemon crate).

use std::path::Path;
use std::time::Duration;

use lockstep_daemon::{DaemonError, DaemonOptions};

use super::{init_logging, load_config, CliError, CmdResult};
use crate::app::LogFormat;

pub async fn run(
    config_path: &Path,
    log_format: LogFormat,
    listen: Option<String>,
    kill_grace: Duration,
) -> CmdResult {
    let config = load_config(config_path)?;
    super::history::remember_state(&config);
    // JSON when either the command line or the config asks for it.
    let format = if log_format == LogFormat::Json
        || config.daemon.log_format == lockstep_config::LogFormat::Json
    {
        LogFormat::Json
    } else {
        LogFormat::Text
    };
    init_logging(format, false);
    let worker_exe = std::env::current_exe().map_err(|e| {
        CliError::Message(format!(
            "cannot find the lockstep binary to run workers with: {e}"
        ))
    })?;
    let secrets = config.secrets.clone();
    let options = DaemonOptions {
        config,
        worker_exe,
        listen,
        kill_grace,
    };
    match lockstep_daemon::run(options).await {
        Ok(()) => Ok(()),
        Err(DaemonError::Plugins(problems)) => {
            eprintln!("{}", secrets.redact(&problems));
            Err(CliError::Reported(2))
        }
        Err(e) => Err(CliError::Message(secrets.redact(&e.to_string()))),
    }
}
