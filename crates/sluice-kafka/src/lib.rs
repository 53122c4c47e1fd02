//! Kafka as sluice's buffer: a consumer group as a [`sluice_core::Source`] with per-partition
//! commit watermarks, rebalance safety and a DLQ topic.

pub mod admin;
pub mod source;
pub mod watermark;

pub use source::{KafkaConfig, KafkaHandle, KafkaSource, OffsetReset};

/// Creates every Kafka counter at zero, each label value included, so a dashboard or an alert
/// sees `0` rather than no series before the first event (an error that never happened yet is
/// still a line on the graph).
pub fn register_metrics() {
    for outcome in ["ok", "error"] {
        metrics::counter!("sluice_kafka_commits_total", "outcome" => outcome).increment(0);
    }
    for kind in ["assign", "revoke", "error"] {
        metrics::counter!("sluice_kafka_rebalances_total", "kind" => kind).increment(0);
    }
    metrics::counter!("sluice_kafka_abandoned_total").increment(0);
    metrics::counter!("sluice_kafka_client_errors_total").increment(0);
}

/// Registers help text for the Kafka metrics (call once, after installing a recorder).
pub fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "sluice_kafka_consumer_lag",
        "Records behind the partition's end, per topic and partition (librdkafka statistics, every 5 s)."
    );
    describe_counter!(
        "sluice_kafka_commits_total",
        "Offset commits, by outcome (ok, error). Offsets are committed only up to the lowest record not yet written."
    );
    describe_counter!(
        "sluice_kafka_rebalances_total",
        "Rebalance events, by kind (assign, revoke, error)."
    );
    describe_counter!(
        "sluice_kafka_abandoned_total",
        "Records still in progress when their partition was revoked: the new owner reads them again."
    );
    describe_counter!(
        "sluice_kafka_client_errors_total",
        "Errors librdkafka reported (broker down, fetch errors); it retries by itself."
    );
}
