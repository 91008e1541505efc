//! End-to-end tests: one binary, one module per area.

mod cli;
mod config_errors;
mod crash;
mod daemon;
mod engine;
mod files;
mod hubspot;
mod ops;
mod plugins;
mod retry;
mod tidy;
mod types;
