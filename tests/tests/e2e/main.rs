//! End-to-end tests: one binary, one module per area.

mod abi_compat;
mod authors;
mod cli;
mod config_errors;
mod crash;
mod daemon;
mod deletes;
mod engine;
mod files;
mod guide;
mod hubspot;
mod lease;
mod ops;
mod plugins;
mod retry;
mod tidy;
mod tryton;
mod types;
