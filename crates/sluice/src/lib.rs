//! The `sluice` binary's library: config, wiring, telemetry and the commands, so the
//! integration tests drive exactly what the binary runs.
//!
//! The daemon's path (`run`, `ingest` and what they stand on) imports nothing from [`tools`],
//! the development commands (load generation, the demo, the pacing benchmark, the simulator).

pub mod command;
pub mod config;
pub mod dlq;
pub mod events;
pub mod ingest;
pub mod items;
pub mod kafka_cmd;
pub mod membership;
pub mod notify;
pub mod pipeline;
pub mod producers;
pub mod queue_metrics;
pub mod run;
pub mod serve;
pub mod signals;
pub mod spot;
pub mod startup;
pub mod telemetry;
pub mod tools;
pub mod validate;
