//! The `lockstep daemon`: runs every scheduled sync of a config on time, one worker process
//! per run, and says when something is wrong.
//!
//! Parts, one module each: [`schedule`] (cron in a time zone, or an interval; jitter),
//! `scheduler` (one task per sync: ticks, catch-up, retries with backoff, never two runs of a
//! sync at once), `supervisor` (the `lockstep worker` child process: events, logs, timeout,
//! crashes), `alerts` and `channels` (what to say, and webhooks and email to say it),
//! `metrics` and `http` (`/healthz`, `/metrics`, `/api/syncs`, `/api/runs`), `shared` (what
//! those parts share, so that none of them imports another back), and `daemon` (start-up,
//! SIGHUP reload, SIGTERM graceful stop), `verifier` (scheduled `lockstep verify` in a
//! child process, its gauge and its drift alert), and `web` (the status page under `/ui`:
//! overview, a sync's page, actions on its queues, with authentication and CSRF tokens),
//! `wal_retention` (the cdc alert) and [`cdc_slot`] (a cdc sync's slot status from its
//! checkpoint, shared with `lockstep status`). [`protocol`] is the line protocol between daemon and worker, shared with the CLI's
//! `worker` command.
//!
//! Invariants:
//! - The daemon never loads a plugin into its own process: it does not depend on the plugin
//!   host or the engine. Each run executes in a `lockstep worker` child, so a plugin that
//!   aborts, segfaults or runs out of memory fails that run only; the daemon records the
//!   signal and the tail of the worker's stderr on the run. Plugin checks on reload also run
//!   in a child (`lockstep validate --offline`).
//! - Two runs of one sync never overlap: one task per sync runs its workers one after the
//!   other, and each worker holds the sync's lease in the state store (which keeps several
//!   daemons sharing a store apart).
//! - Only transient and rate-limited failures are retried, never config or auth errors.
//! - Secrets from the config's environment never reach logs, alerts or the HTTP API.

mod alerts;
pub mod cdc_slot;
mod channels;
mod daemon;
mod http;
mod metrics;
pub mod protocol;
pub mod schedule;
mod scheduler;
mod shared;
mod supervisor;
mod verifier;
mod wal_retention;
mod web;

pub use daemon::{run, DaemonError, DaemonOptions};
