//! End-to-end tests: one binary, one module per area.

mod abi_compat;
mod authors;
mod cdc;
mod cli;
mod config_errors;
mod crash;
mod crm_to_lists;
mod daemon;
mod deletes;
mod engine;
mod files;
mod guide;
mod hubspot;
mod lease;
mod mailchimp;
mod mailman;
mod medusa;
mod ops;
mod plugins;
mod retry;
mod tidy;
mod tryton;
mod two_way;
mod types;
mod verify;
mod web;
