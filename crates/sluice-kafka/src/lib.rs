//! Kafka as sluice's buffer: a consumer group as a [`sluice_core::Source`] with per-partition
//! commit watermarks, rebalance safety and a DLQ topic.
#![warn(missing_docs)]

pub mod admin;
pub mod events;
pub mod source;
pub mod watermark;

pub use source::{KafkaConfig, KafkaHandle, KafkaSource, OffsetReset};

use sluice_common::catalog;

/// Creates every Kafka counter at zero, each label value included, so a dashboard or an alert
/// sees `0` rather than no series before the first event (an error that never happened yet is
/// still a line on the graph).
pub fn register_metrics() {
    for outcome in ["ok", "error"] {
        metrics::counter!(catalog::KAFKA_COMMITS_TOTAL, "outcome" => outcome).increment(0);
    }
    for kind in ["assign", "revoke", "error"] {
        metrics::counter!(catalog::KAFKA_REBALANCES_TOTAL, "kind" => kind).increment(0);
    }
    metrics::counter!(catalog::KAFKA_ABANDONED_TOTAL).increment(0);
    metrics::counter!(catalog::KAFKA_CLIENT_ERRORS_TOTAL).increment(0);
}
