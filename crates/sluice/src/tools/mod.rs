//! Development commands: nothing on the daemon's or ingest's path imports them.
//!
//! - [`load`]: generate request logs into SQS, Kafka or `sluice ingest`.
//! - [`demo`]: the whole pipeline once, with a summary.
//! - [`bench`]: the pacing benchmark (`sluice bench-pacing`).
//! - [`shape`]: realistic request logs (`sluice load --shape realistic`, the demo).
//! - [`sim`]: `sluice sim`, the in-memory SQS + DynamoDB server.

pub mod bench;
pub mod demo;
pub mod load;
pub mod shape;
pub mod sim;
