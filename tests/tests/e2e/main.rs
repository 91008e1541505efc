//! End-to-end tests: one binary, one module per area.

mod cli;
mod config_errors;
mod crash;
mod daemon;
mod deletes;
mod engine;
mod plugins;
mod tidy;
mod types;
