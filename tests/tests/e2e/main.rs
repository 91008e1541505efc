//! End-to-end tests: one binary, one module per area.

mod cli;
mod config_errors;
mod crash;
mod daemon;
mod engine;
mod lease;
mod plugins;
mod tidy;
mod types;
