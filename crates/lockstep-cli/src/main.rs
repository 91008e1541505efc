//! The `lockstep` command-line interface: validate configs, inspect connectors, run syncs
//! and read their history.
//!
//! Invariants:
//! - Every failure exits non-zero with a message that says what is wrong and what to do.
//! - Secrets from the config's environment interpolation never reach the terminal or logs:
//!   everything printed from plugins and errors passes through the config's redactor.
//! - Relative paths in a config file resolve against the file's directory: the process
//!   works in that directory once the config is loaded.

mod app;
mod commands;
mod output;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before the runtime starts its threads (and a plugin its own).
    lockstep_orchestrator::tune_allocator();
    let cli = app::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(commands::dispatch(cli))
}
