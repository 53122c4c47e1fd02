//! Every metric sluice exports, with its help text. Names follow `sluice_<what>_<unit>`, with
//! `_total` on counters. A name here never changes silently: dashboards and alerts depend on it.

use metrics::{describe_counter, describe_gauge, describe_histogram};

/// Registers help text for every metric (call once, after installing a recorder).
pub fn describe() {
    describe_counter!(
        "sluice_messages_received_total",
        "Messages received from the queue."
    );
    describe_counter!(
        "sluice_messages_acked_total",
        "Messages deleted from the queue after all their logs were written."
    );
    describe_counter!(
        "sluice_messages_nacked_total",
        "Messages returned to the queue, by reason (poison, dead_letter_failed, timeout, write_failed, fifo_order, shutdown, breaker_open)."
    );
    describe_counter!(
        "sluice_nack_failures_total",
        "ChangeMessageVisibility calls that failed."
    );
    describe_counter!(
        "sluice_startup_retries_total",
        "Start-up checks (DescribeTable) retried after a transient error (dynamodb.startup_retry_for)."
    );
    describe_counter!(
        "sluice_ack_failures_total",
        "Written messages whose delete failed; they are delivered again and rewritten idempotently."
    );
    describe_counter!(
        "sluice_receive_requests_total",
        "Successful receive (long-poll) calls."
    );
    describe_counter!("sluice_receive_errors_total", "Failed receive calls.");
    describe_counter!("sluice_logs_written_total", "Logs written to the table.");
    describe_counter!(
        "sluice_wcu_consumed_total",
        "Write capacity units the table itself consumed (its global secondary indexes not included), as DynamoDB reported (or as computed when it did not)."
    );
    describe_counter!(
        "sluice_throttled_requests_total",
        "BatchWriteItem calls refused with a throttling error."
    );
    describe_counter!(
        "sluice_unprocessed_items_retried_total",
        "Items a BatchWriteItem left unprocessed and that were sent again."
    );
    describe_counter!(
        "sluice_duplicates_collapsed_total",
        "Items collapsed into a later item with the same key inside one batch."
    );
    describe_counter!(
        "sluice_batch_write_requests_total",
        "BatchWriteItem calls by outcome (ok, throttled, transient_error, invalid_item, write_failed)."
    );
    describe_gauge!(
        "sluice_messages_in_flight",
        "Messages received and not yet acked or nacked."
    );
    describe_gauge!(
        "sluice_write_budget_wcu_per_second",
        "The write budget the limiter paces to, in WCU per second."
    );
    describe_gauge!(
        "sluice_paced_rate_wcu_per_second",
        "The rate writes are paced to now: the budget, or less after throttles (AIMD)."
    );
    describe_gauge!(
        "sluice_table_capacity_wcu",
        "The table's provisioned write capacity, as DescribeTable last reported it."
    );
    describe_counter!(
        "sluice_throttles_total",
        "Throttles by resource (table, index:NAME) and reason from DynamoDB's ThrottlingReasons: capacity, key_range, max_on_demand, account_limit, other, unknown (UnprocessedItems, which give none)."
    );
    describe_gauge!(
        "sluice_index_write_budget_wcu_per_second",
        "The pacing budget of each global secondary index, by index."
    );
    describe_gauge!(
        "sluice_index_paced_rate_wcu_per_second",
        "The rate writes are paced to on each global secondary index now (its budget, or less after throttles)."
    );
    describe_gauge!(
        "sluice_write_backlog_wcu",
        "WCU of the messages held (each counted whole from receipt) and not yet settled; intake pauses while it exceeds rate × intake_horizon."
    );
    describe_counter!(
        "sluice_aimd_decreases_total",
        "Cuts of the paced rate after a throttle or UnprocessedItems."
    );
    describe_counter!(
        "sluice_aimd_increases_total",
        "Additive recovery steps of the paced rate back towards the budget."
    );
    describe_histogram!(
        "sluice_message_write_seconds",
        "Seconds one message needs at this instance's paced rate (its WCU over the rate; the tightest budget binds), at receipt. Over a minute: the share is small for messages this packed."
    );
    describe_gauge!(
        "sluice_fleet_write_budget_wcu_per_second",
        "What the whole fleet may write to the table, WCU per second (target_utilization × capacity, or rate.wcu_per_second): the same in every instance; sluice_write_budget_wcu_per_second is this instance's part of it."
    );
    describe_counter!(
        "sluice_capacity_refresh_errors_total",
        "DescribeTable calls of the capacity refresh (every rate.refresh_interval) that failed: the budgets stay as they were and capacity changes are not followed."
    );
    describe_gauge!(
        "sluice_fleet_members",
        "rate.mode = \"membership\": live members this instance counted at its last read of the lease table (itself included)."
    );
    describe_gauge!(
        "sluice_fleet_share",
        "rate.mode = \"membership\": the fraction of every budget this instance paces to (1 / members); 0 while it is held (joining, or its lease could not be renewed)."
    );
    describe_counter!(
        "sluice_fleet_errors_total",
        "rate.mode = \"membership\": lease-table calls that failed or timed out, by op (read, renew)."
    );
    describe_counter!(
        "sluice_fleet_lease_lapses_total",
        "rate.mode = \"membership\": times this instance held its writes because its lease could not be renewed in time."
    );
    describe_counter!(
        "sluice_redis_lease_failures_total",
        "Leases from the shared Redis bucket that failed; the instance paced to its local share."
    );
    describe_counter!(
        "sluice_visibility_extensions_total",
        "Visibility extensions the heartbeat made for held messages."
    );
    describe_counter!(
        "sluice_visibility_extension_failures_total",
        "Visibility extensions that failed (usually a message settled meanwhile)."
    );
    describe_counter!(
        "sluice_poison_messages_total",
        "Messages that can never be written, by reason (not_utf8, not_json, empty, schema, invalid_value, too_large, rejected)."
    );
    describe_counter!(
        "sluice_dead_lettered_total",
        "Poison messages sent to the dead-letter queue, by reason."
    );
    describe_gauge!(
        "sluice_circuit_open",
        "1 while the circuit breaker is open (the table keeps failing, receiving stopped)."
    );
    describe_counter!(
        "sluice_circuit_opened_total",
        "Times the circuit breaker opened."
    );
    describe_counter!(
        "sluice_spot_notices_total",
        "Spot interruption notices received."
    );
    describe_counter!(
        "sluice_spot_poll_errors_total",
        "Failed reads of the spot interruption notice from IMDS."
    );
    describe_histogram!(
        "sluice_message_processing_seconds",
        "Time from receipt to ack or nack of a message."
    );
    describe_histogram!(
        "sluice_message_age_seconds",
        "Time from the producer's send (SQS SentTimestamp) to receipt: how far behind the backlog is."
    );
    describe_histogram!(
        "sluice_rate_limiter_wait_seconds",
        "Time a batch waited for write capacity tokens."
    );
}
