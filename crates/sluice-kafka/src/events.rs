//! What the Kafka source reports as it goes wrong: one type per event, whose `emit` counts its
//! metric and writes its log line together (names and help text are in
//! [`sluice_common::catalog`]).

use rdkafka::error::KafkaError;
use sluice_common::catalog;

/// librdkafka reported an error (a broker down, a failed fetch, a failed poll); it retries by
/// itself.
pub struct ClientError<'a> {
    /// What librdkafka said.
    pub error: &'a KafkaError,
    /// Where it came from (librdkafka's reason, or "poll").
    pub reason: &'a str,
}

impl ClientError<'_> {
    /// Counts `sluice_kafka_client_errors_total` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::KAFKA_CLIENT_ERRORS_TOTAL).increment(1);
        if self.reason == "poll" {
            tracing::warn!(error = %self.error, "kafka poll error");
        } else {
            tracing::warn!(error = %self.error, reason = self.reason, "kafka client error");
        }
    }
}

/// A periodic offset commit failed; it is tried again at the next tick (what it would have
/// committed is read again after a restart, and rewritten to the same rows).
pub struct CommitFailed<'a> {
    /// What the broker or librdkafka said.
    pub error: &'a KafkaError,
}

impl CommitFailed<'_> {
    /// Counts `sluice_kafka_commits_total{outcome="error"}` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::KAFKA_COMMITS_TOTAL, "outcome" => "error").increment(1);
        tracing::warn!(error = %self.error, "offset commit failed; retrying on the next tick");
    }
}

/// A rebalance failed; the group tries again by itself.
pub struct RebalanceFailed<'a> {
    /// What librdkafka said.
    pub error: &'a KafkaError,
}

impl RebalanceFailed<'_> {
    /// Counts `sluice_kafka_rebalances_total{kind="error"}` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::KAFKA_REBALANCES_TOTAL, "kind" => "error").increment(1);
        tracing::warn!(error = %self.error, "rebalance error");
    }
}
