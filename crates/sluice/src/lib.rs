//! The `sluice` binary's library: config, wiring, telemetry and the commands, so the
//! integration tests drive exactly what the binary runs.

pub mod bench;
pub mod config;
pub mod demo;
pub mod dlq;
pub mod ingest;
pub mod kafka_cmd;
pub mod load;
pub mod membership;
pub mod notify;
pub mod pipeline;
pub mod queue_metrics;
pub mod run;
pub mod serve;
pub mod sim;
pub mod spot;
pub mod telemetry;
