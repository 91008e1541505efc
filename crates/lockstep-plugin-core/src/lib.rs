//! What the Lockstep host and its connector plugins share, beyond the ABI's types: moving
//! record batches across the Arrow C Data Interface ([`ffi`]) and turning rows of JSON values
//! into batches and back ([`rows`]), and the tagged batch that carries the records a source
//! could not read ([`source_rejects`]), and the tagged batch that tells a destination its run
//! ended ([`run_end`]).
//!
//! The split follows three roles: `lockstep-plugin-api` is the ABI itself (types only),
//! this crate is code both sides run, `lockstep-plugin-sdk` is what connector authors write
//! against, and `lockstep-plugin-host` loads and drives plugins. The engine side depends on
//! this crate and never on the SDK.
//!
//! Invariants:
//! - Nothing here changes what crosses the boundary: the batch transfer is the C Data
//!   Interface as `lockstep-plugin-api` lays it out, byte for byte.
//! - No I/O, no global state and no ABI loading: pure conversions.

pub mod ffi;
pub mod rows;
pub mod run_end;
pub mod source_rejects;
