//! sluice-core: everything sluice decides, with no IO of its own.
//!
//! - [`codec`]: message bodies (one JSON log, an array, or NDJSON) into DynamoDB items, with
//!   deterministic keys and poison detection.
//! - [`item`]: items and their size counted the way DynamoDB counts it, hence their WCU cost.
//! - [`stored`]: compressed items (zstd with a dictionary kept in the table), and reading any
//!   item back into its log.
//! - [`number`]: DynamoDB numbers: range, precision, normalised text, size.
//! - [`rate`]: the WCU token bucket and the backoff policy.
//! - [`pacer`]: every budget a write is paced against (table, indexes, hot keys), throttles read.
//! - [`source`]: the contract a buffer (SQS, Kafka) implements, with the delivery contract.
//! - [`cache`]: the look-aside write cache (no write paid twice).
//! - [`writer`]: batches of up to 25 items, duplicate collapse, UnprocessedItems retries.
//! - [`engine`]: the worker pool tying them together.
//! - `testing` (feature `testing`, or `cfg(test)`): in-memory fakes of a queue and a table, for tests.
#![warn(missing_docs)]

pub mod aimd;
pub mod breaker;
pub mod cache;
pub mod codec;
pub mod engine;
pub mod events;
pub mod item;
pub mod membership;
pub mod number;
pub mod pacer;
pub mod rate;
pub mod source;
pub mod stored;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod writer;

pub use sluice_common::{catalog, retry, sync, time};

pub use aimd::{Aimd, AimdConfig, RateChange};
pub use breaker::{Breaker, BreakerConfig, BreakerState};
pub use cache::{CacheConfig, SharedSeen, WriteCache};
pub use codec::{DecodeError, Schema, TtlRule, decode_message};
pub use engine::{Engine, EngineConfig, EngineStats, StatsSnapshot};
pub use item::{AttrValue, Item};
pub use pacer::{Consumed, IndexSpec, Pacer, Projection, ThrottleCause};
pub use rate::{Backoff, FleetConfig, Lease, LeaseSource, WcuLimiter};
pub use source::{AckFailure, AttributeBody, MessageAttribute, Received, Source, SourceError};
pub use stored::{Compression, Dictionaries, StoredError, read_log};
pub use writer::{
    BatchResult, BatchWriter, Bill, WriteError, WriteErrorKind, WriteFailure, Writer, WriterConfig,
    WriterStats,
};
