//! Every metric sluice exports: its name, kind, help text and who exports it, in one table.
//! Names follow `sluice_<what>_<unit>`, with `_total` on counters. A name here never changes
//! silently: dashboards and alert rules query it, and `sluice`'s `metric_catalog` test checks
//! every name they use against this table (and every name here against the README).
//!
//! Code emits a metric through its constant (`metrics::counter!(catalog::LOGS_WRITTEN_TOTAL)`),
//! never a string of its own, so a name exists once.

/// What kind of series a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution (`_bucket`, `_sum`, `_count`).
    Histogram,
}

/// Which process exports a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// `sluice run`: the worker, whatever its buffer.
    Daemon,
    /// `sluice run` with Kafka as the buffer.
    Kafka,
    /// `sluice ingest`: the HTTP API.
    Ingest,
    /// The producer library (inside `sluice ingest`, or an application that embeds it).
    Producer,
}

/// One metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    /// Its Prometheus name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// The help text Prometheus shows.
    pub help: &'static str,
    /// Who exports it.
    pub exporter: Exporter,
}

macro_rules! catalog {
    ($($konst:ident = $name:literal, $kind:ident, $exporter:ident, $help:literal;)*) => {
        $(#[doc = $help] pub const $konst: &str = $name;)*

        /// Every metric, in the order of the table above.
        pub const CATALOG: &[Metric] = &[
            $(Metric { name: $name, kind: Kind::$kind, help: $help, exporter: Exporter::$exporter },)*
        ];
    };
}

catalog! {
    MESSAGES_RECEIVED_TOTAL = "sluice_messages_received_total", Counter, Daemon,
        "Messages received from the queue.";
    MESSAGES_ACKED_TOTAL = "sluice_messages_acked_total", Counter, Daemon,
        "Messages deleted from the queue after all their logs were written.";
    MESSAGES_NACKED_TOTAL = "sluice_messages_nacked_total", Counter, Daemon,
        "Messages returned to the queue, by reason (poison, dead_letter_failed, timeout, write_failed, fifo_order, shutdown, breaker_open).";
    NACK_FAILURES_TOTAL = "sluice_nack_failures_total", Counter, Daemon,
        "ChangeMessageVisibility calls that failed.";
    STARTUP_RETRIES_TOTAL = "sluice_startup_retries_total", Counter, Daemon,
        "Start-up checks (DescribeTable) retried after a transient error (dynamodb.startup_retry_for).";
    ACK_FAILURES_TOTAL = "sluice_ack_failures_total", Counter, Daemon,
        "Written messages whose delete failed; they are delivered again and rewritten idempotently.";
    RECEIVE_REQUESTS_TOTAL = "sluice_receive_requests_total", Counter, Daemon,
        "Successful receive (long-poll) calls.";
    RECEIVE_ERRORS_TOTAL = "sluice_receive_errors_total", Counter, Daemon,
        "Failed receive calls.";
    LOGS_WRITTEN_TOTAL = "sluice_logs_written_total", Counter, Daemon,
        "Logs written to the table.";
    WCU_CONSUMED_TOTAL = "sluice_wcu_consumed_total", Counter, Daemon,
        "Write capacity units the table itself consumed (its global secondary indexes not included), as DynamoDB reported (or as computed when it did not).";
    THROTTLED_REQUESTS_TOTAL = "sluice_throttled_requests_total", Counter, Daemon,
        "BatchWriteItem calls refused with a throttling error.";
    UNPROCESSED_ITEMS_RETRIED_TOTAL = "sluice_unprocessed_items_retried_total", Counter, Daemon,
        "Items a BatchWriteItem left unprocessed and that were sent again.";
    CACHE_SKIPPED_LOGS_TOTAL = "sluice_cache_skipped_logs_total", Counter, Daemon,
        "Logs answered from the look-aside write cache without a write: their key and content were written within the cache's window.";
    CACHE_SAVED_WCU_TOTAL = "sluice_cache_saved_wcu_total", Counter, Daemon,
        "Write capacity units the write cache saved: what the logs it answered would have cost written plain.";
    CACHE_ERRORS_TOTAL = "sluice_cache_errors_total", Counter, Daemon,
        "Calls to the shared write cache (Redis) that failed; each counts as a miss, so the log is written.";
    COMPRESSION_SAVED_WCU_TOTAL = "sluice_compression_saved_wcu_total", Counter, Daemon,
        "Write capacity units compression saved: what the written items would have cost plain, less what they cost compressed.";
    DUPLICATES_COLLAPSED_TOTAL = "sluice_duplicates_collapsed_total", Counter, Daemon,
        "Items collapsed into a later item with the same key inside one batch.";
    BATCH_WRITE_REQUESTS_TOTAL = "sluice_batch_write_requests_total", Counter, Daemon,
        "BatchWriteItem calls by outcome (ok, throttled, transient_error, invalid_item, write_failed).";
    MESSAGES_IN_FLIGHT = "sluice_messages_in_flight", Gauge, Daemon,
        "Messages received and not yet acked or nacked.";
    WRITE_BUDGET_WCU_PER_SECOND = "sluice_write_budget_wcu_per_second", Gauge, Daemon,
        "The write budget the limiter paces to, in WCU per second.";
    PACED_RATE_WCU_PER_SECOND = "sluice_paced_rate_wcu_per_second", Gauge, Daemon,
        "The rate writes are paced to now: the budget, or less after throttles (AIMD).";
    TABLE_CAPACITY_WCU = "sluice_table_capacity_wcu", Gauge, Daemon,
        "The table's provisioned write capacity, as DescribeTable last reported it.";
    THROTTLES_TOTAL = "sluice_throttles_total", Counter, Daemon,
        "Throttles by resource (table, index:NAME) and reason from DynamoDB's ThrottlingReasons: capacity, key_range, max_on_demand, account_limit, other, unknown (UnprocessedItems, which give none).";
    INDEX_WRITE_BUDGET_WCU_PER_SECOND = "sluice_index_write_budget_wcu_per_second", Gauge, Daemon,
        "The pacing budget of each global secondary index, by index.";
    INDEX_PACED_RATE_WCU_PER_SECOND = "sluice_index_paced_rate_wcu_per_second", Gauge, Daemon,
        "The rate writes are paced to on each global secondary index now (its budget, or less after throttles).";
    WRITE_BACKLOG_WCU = "sluice_write_backlog_wcu", Gauge, Daemon,
        "WCU of the messages held (each counted whole from receipt) and not yet settled; intake pauses while it exceeds rate × intake_horizon.";
    AIMD_DECREASES_TOTAL = "sluice_aimd_decreases_total", Counter, Daemon,
        "Cuts of the paced rate after a throttle or UnprocessedItems.";
    AIMD_INCREASES_TOTAL = "sluice_aimd_increases_total", Counter, Daemon,
        "Additive recovery steps of the paced rate back towards the budget.";
    MESSAGE_WRITE_SECONDS = "sluice_message_write_seconds", Histogram, Daemon,
        "Seconds one message needs at this instance's paced rate (its WCU over the rate; the tightest budget binds), at receipt. Over a minute: the share is small for messages this packed.";
    FLEET_WRITE_BUDGET_WCU_PER_SECOND = "sluice_fleet_write_budget_wcu_per_second", Gauge, Daemon,
        "What the whole fleet may write to the table, WCU per second (target_utilization × capacity, or rate.wcu_per_second): the same in every instance; sluice_write_budget_wcu_per_second is this instance's part of it.";
    CAPACITY_REFRESH_ERRORS_TOTAL = "sluice_capacity_refresh_errors_total", Counter, Daemon,
        "DescribeTable calls of the capacity refresh (every rate.refresh_interval) that failed: the budgets stay as they were and capacity changes are not followed.";
    FLEET_MEMBERS = "sluice_fleet_members", Gauge, Daemon,
        "rate.mode = \"membership\": live members this instance counted at its last read of the lease table (itself included).";
    FLEET_SHARE = "sluice_fleet_share", Gauge, Daemon,
        "rate.mode = \"membership\": the fraction of every budget this instance paces to (1 / members); 0 while it is held (joining, or its lease could not be renewed).";
    FLEET_ERRORS_TOTAL = "sluice_fleet_errors_total", Counter, Daemon,
        "rate.mode = \"membership\": lease-table calls that failed or timed out, by op (read, renew).";
    FLEET_LEASE_LAPSES_TOTAL = "sluice_fleet_lease_lapses_total", Counter, Daemon,
        "rate.mode = \"membership\": times this instance held its writes because its lease could not be renewed in time.";
    REDIS_LEASE_FAILURES_TOTAL = "sluice_redis_lease_failures_total", Counter, Daemon,
        "Leases from the shared Redis bucket that failed; the instance paced to its local share.";
    VISIBILITY_EXTENSIONS_TOTAL = "sluice_visibility_extensions_total", Counter, Daemon,
        "Visibility extensions the heartbeat made for held messages.";
    VISIBILITY_EXTENSION_FAILURES_TOTAL = "sluice_visibility_extension_failures_total", Counter, Daemon,
        "Visibility extensions that failed (usually a message settled meanwhile).";
    POISON_MESSAGES_TOTAL = "sluice_poison_messages_total", Counter, Daemon,
        "Messages that can never be written, by reason (not_utf8, not_json, empty, schema, invalid_value, too_large, rejected).";
    DEAD_LETTERED_TOTAL = "sluice_dead_lettered_total", Counter, Daemon,
        "Poison messages sent to the dead-letter queue, by reason.";
    CIRCUIT_OPEN = "sluice_circuit_open", Gauge, Daemon,
        "1 while the circuit breaker is open (the table keeps failing, receiving stopped).";
    CIRCUIT_OPENED_TOTAL = "sluice_circuit_opened_total", Counter, Daemon,
        "Times the circuit breaker opened.";
    SPOT_NOTICES_TOTAL = "sluice_spot_notices_total", Counter, Daemon,
        "Spot interruption notices received.";
    SPOT_POLL_ERRORS_TOTAL = "sluice_spot_poll_errors_total", Counter, Daemon,
        "Failed IMDS reads of a watched departure signal, by signal (interruption, rebalance, scale_in).";
    REBALANCE_RECOMMENDATIONS_TOTAL = "sluice_rebalance_recommendations_total", Counter, Daemon,
        "EC2 rebalance recommendations received (spot.rebalance).";
    SCALE_IN_NOTICES_TOTAL = "sluice_scale_in_notices_total", Counter, Daemon,
        "Auto Scaling terminations of this instance seen in IMDS (spot.scale_in).";
    LIFECYCLE_ACTIONS_TOTAL = "sluice_lifecycle_actions_total", Counter, Daemon,
        "Termination lifecycle actions completed after a drain, by result (completed, failed).";
    MESSAGE_PROCESSING_SECONDS = "sluice_message_processing_seconds", Histogram, Daemon,
        "Time from receipt to ack or nack of a message.";
    MESSAGE_AGE_SECONDS = "sluice_message_age_seconds", Histogram, Daemon,
        "Time from the producer's send (SQS SentTimestamp) to receipt: how far behind the backlog is.";
    RATE_LIMITER_WAIT_SECONDS = "sluice_rate_limiter_wait_seconds", Histogram, Daemon,
        "Time a batch waited for write capacity tokens.";
    QUEUE_MESSAGES = "sluice_queue_messages", Gauge, Daemon,
        "Messages in the source queue and its dead-letter queue (queue=source|dlq), by state: visible (ApproximateNumberOfMessages), in_flight (…NotVisible), delayed (…Delayed). Read every 15 s with GetQueueAttributes; the same for every instance of a fleet.";
    QUEUE_ATTRIBUTE_ERRORS_TOTAL = "sluice_queue_attribute_errors_total", Counter, Daemon,
        "Failed reads of a queue's attributes for sluice_queue_messages, by queue (source|dlq).";
    KAFKA_CONSUMER_LAG = "sluice_kafka_consumer_lag", Gauge, Kafka,
        "Records behind the partition's end, per topic and partition (librdkafka statistics, every 5 s).";
    KAFKA_COMMITS_TOTAL = "sluice_kafka_commits_total", Counter, Kafka,
        "Offset commits, by outcome (ok, error). Offsets are committed only up to the lowest record not yet written.";
    KAFKA_REBALANCES_TOTAL = "sluice_kafka_rebalances_total", Counter, Kafka,
        "Rebalance events, by kind (assign, revoke, error).";
    KAFKA_ABANDONED_TOTAL = "sluice_kafka_abandoned_total", Counter, Kafka,
        "Records still in progress when their partition was revoked: the new owner reads them again.";
    KAFKA_CLIENT_ERRORS_TOTAL = "sluice_kafka_client_errors_total", Counter, Kafka,
        "Errors librdkafka reported (broker down, fetch errors); it retries by itself.";
    INGEST_REQUESTS_TOTAL = "sluice_ingest_requests_total", Counter, Ingest,
        "Requests to POST /v1/logs, by HTTP status code.";
    INGEST_LOGS_TOTAL = "sluice_ingest_logs_total", Counter, Ingest,
        "Logs the ingest API accepted (202: in the queue or the spool).";
    INGEST_RELOADS_TOTAL = "sluice_ingest_reloads_total", Counter, Ingest,
        "Changed files swapped in while serving (ingest.reload_interval), by what: tls (ingest.tls_cert and tls_key), api_keys (ingest.api_keys_file).";
    INGEST_RELOAD_ERRORS_TOTAL = "sluice_ingest_reload_errors_total", Counter, Ingest,
        "Changed files that did not load, by what (tls, api_keys): the previous certificate or keys stay in use.";
    PRODUCER_LOGS_TOTAL = "sluice_producer_logs_total", Counter, Producer,
        "Logs handed to the producer, by outcome: accepted, shed (buffer full, Shed policy), refused (buffer full, caller told), rejected (the queue refused the message), dropped (closed with no spool).";
    PRODUCER_MESSAGES_TOTAL = "sluice_producer_messages_total", Counter, Producer,
        "SQS messages the producer delivered, by path: direct, or replay (from the spool).";
    PRODUCER_BATCHES_TOTAL = "sluice_producer_batches_total", Counter, Producer,
        "SendMessageBatch calls the producer made.";
    PRODUCER_SEND_ERRORS_TOTAL = "sluice_producer_send_errors_total", Counter, Producer,
        "Failed sends, by kind: throttled, unavailable (whole call), entry (one entry of a batch).";
    PRODUCER_SPOOLED_MESSAGES_TOTAL = "sluice_producer_spooled_messages_total", Counter, Producer,
        "Messages written to the disk spool because the queue did not take them.";
    PRODUCER_SPOOL_CORRUPT_TOTAL = "sluice_producer_spool_corrupt_total", Counter, Producer,
        "Spool records or segments that failed their checksum on replay (data loss on disk).";
    PRODUCER_BUFFER_BYTES = "sluice_producer_buffer_bytes", Gauge, Producer,
        "Bytes of logs held in the producer's memory.";
    PRODUCER_SPOOL_BYTES = "sluice_producer_spool_bytes", Gauge, Producer,
        "Bytes of undelivered messages in the disk spool; above 0 the queue is not keeping up.";
    PRODUCER_SPOOL_MESSAGES = "sluice_producer_spool_messages", Gauge, Producer,
        "Undelivered messages in the disk spool.";
    PRODUCER_SPOOLING = "sluice_producer_spooling", Gauge, Producer,
        "1 while the producer writes to its spool instead of the queue.";
}

/// Registers the help text of every metric `exporter` exports (call once, after installing a
/// recorder).
pub fn describe(exporter: Exporter) {
    for m in CATALOG.iter().filter(|m| m.exporter == exporter) {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
    }
}

/// The metric named `name`, if it is one of sluice's.
pub fn find(name: &str) -> Option<&'static Metric> {
    CATALOG.iter().find(|m| m.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_follow_the_convention() {
        let mut seen = std::collections::HashSet::new();
        for m in CATALOG {
            assert!(seen.insert(m.name), "{} twice", m.name);
            assert!(m.name.starts_with("sluice_"), "{}", m.name);
            assert_eq!(
                m.kind == Kind::Counter,
                m.name.ends_with("_total"),
                "{}: counters, and only counters, end in _total",
                m.name
            );
            assert!(!m.help.is_empty(), "{} has no help text", m.name);
        }
    }
}
