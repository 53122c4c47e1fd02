//! The few things every sluice crate needs the same way, in a crate with no sluice dependency so
//! that the producer library and the simulator (which stay free of the daemon's core) share them
//! too:
//!
//! - [`catalog`]: every metric's name, kind and help text, in one table.
//! - [`retry`]: the one backoff policy (exponential, capped, jittered) for every retry loop.
//! - [`sync`]: locks that outlive a panic.
//! - [`time`]: wall-clock milliseconds as the AWS APIs carry them.
#![warn(missing_docs)]

pub mod catalog;
pub mod retry;
pub mod sync;
pub mod time;

pub use retry::Backoff;
