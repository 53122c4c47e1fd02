//! What the worker reports as it goes wrong (and back to right): one type per event, whose
//! `emit` counts its metric and writes its log line together, so no site counts without saying
//! why or says without counting, and each metric's label values live in one place. Metric names
//! and help text are in [`crate::catalog`]; the engine's own tallies ([`crate::EngineStats`])
//! stay with the engine.

use std::time::Duration;

use sluice_common::catalog;

use crate::source::SourceError;
use crate::writer::{WriteError, WriteErrorKind, WriteFailure};

/// A receive (long poll) failed; the poller pauses, then polls again.
pub struct ReceiveFailed<'a> {
    /// Which poller (0-based), for the log line.
    pub poller: usize,
    /// The source's error, with whether it is retryable.
    pub error: &'a SourceError,
    /// Receives this poller has failed in a row, this one included.
    pub errors_in_a_row: u32,
}

impl ReceiveFailed<'_> {
    /// Counts `sluice_receive_errors_total` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::RECEIVE_ERRORS_TOTAL).increment(1);
        tracing::warn!(poller = self.poller, error = %self.error, retryable = self.error.retryable, errors_in_a_row = self.errors_in_a_row, "receive failed; polling again after a pause");
    }
}

/// Messages made visible again unprocessed (received as shutdown began or the breaker opened);
/// `failed` of them could not be and return after their visibility timeout.
pub struct HandedBack {
    /// Messages handed back, the failed ones included.
    pub messages: u64,
    /// Why, as the `reason` label of `sluice_messages_nacked_total`: a short, fixed label.
    pub reason: &'static str,
    /// How many of them the source failed to make visible again.
    pub failed: usize,
}

impl HandedBack {
    /// Counts every message in `sluice_messages_nacked_total{reason}` and the failed ones in
    /// `sluice_nack_failures_total` (with a WARN line), and logs an INFO line.
    pub fn emit(self) {
        let reason = self.reason;
        metrics::counter!(catalog::MESSAGES_NACKED_TOTAL, "reason" => reason)
            .increment(self.messages);
        if self.failed > 0 {
            metrics::counter!(catalog::NACK_FAILURES_TOTAL).increment(self.failed as u64);
            tracing::warn!(
                failed = self.failed,
                reason,
                "could not hand back received messages; they return when their visibility timeout ends"
            );
        }
        tracing::info!(
            messages = self.messages,
            reason,
            "handed back received messages"
        );
    }
}

/// One message returned to the queue for `reason`; `failed`: the nack itself failed.
pub struct Nacked<'a> {
    /// The source's id of the message.
    pub message_id: &'a str,
    /// Why, as the `reason` label of `sluice_messages_nacked_total` (a write failure's reason,
    /// `timeout`, `poison`, ...).
    pub reason: &'static str,
    /// The nack call's error, when it failed; None when the source took the nack.
    pub failed: Option<&'a SourceError>,
}

impl Nacked<'_> {
    /// Counts `sluice_messages_nacked_total{reason}`; a failed nack also counts
    /// `sluice_nack_failures_total` and logs a WARN line. A nack that worked logs nothing.
    pub fn emit(self) {
        metrics::counter!(catalog::MESSAGES_NACKED_TOTAL, "reason" => self.reason).increment(1);
        if let Some(error) = self.failed {
            metrics::counter!(catalog::NACK_FAILURES_TOTAL).increment(1);
            tracing::warn!(message_id = %self.message_id, %error, "nack failed; the message returns when its visibility timeout ends");
        }
    }
}

/// What became of a poison message (one that can never be written).
pub enum PoisonOutcome<'a> {
    /// In the dead-letter queue with its reason; it is deleted from the source.
    DeadLettered,
    /// No dead-letter queue of sluice's own: the queue's redrive policy moves it.
    LeftToRedrive,
    /// Sending it to the dead-letter queue failed: it comes back later.
    DeadLetterFailed(&'a SourceError),
}

/// A poison message found, and where it went.
pub struct Poison<'a> {
    /// The source's id of the message.
    pub message_id: &'a str,
    /// How many times the message has been received, this time included.
    pub receive_count: u32,
    /// The short, fixed label for why ([`crate::DecodeError::reason`], or `rejected` for an item
    /// the table refused): the `reason` label of the metrics.
    pub reason: &'static str,
    /// The full error text, for the log line (and the dead-letter attributes).
    pub detail: &'a str,
    /// Where the message went.
    pub outcome: PoisonOutcome<'a>,
}

impl Poison<'_> {
    /// Counts `sluice_poison_messages_total{reason}`, and `sluice_dead_lettered_total{reason}` when
    /// the dead-letter queue took it, and logs a WARN line saying where it went.
    pub fn emit(self) {
        let Poison {
            message_id,
            receive_count,
            reason,
            detail,
            ..
        } = self;
        metrics::counter!(catalog::POISON_MESSAGES_TOTAL, "reason" => reason).increment(1);
        match self.outcome {
            PoisonOutcome::DeadLettered => {
                metrics::counter!(catalog::DEAD_LETTERED_TOTAL, "reason" => reason).increment(1);
                tracing::warn!(message_id, receive_count, reason, error = %detail, "poison message sent to the dead-letter queue");
            }
            PoisonOutcome::LeftToRedrive => {
                tracing::warn!(message_id, receive_count, reason, error = %detail, "poison message; leaving it to the queue's redrive policy");
            }
            PoisonOutcome::DeadLetterFailed(e) => {
                tracing::warn!(message_id, reason, error = %e, "could not dead-letter a poison message; it comes back later");
            }
        }
    }
}

/// A written message whose delete failed for good: it is delivered again and rewritten to the
/// same rows.
pub struct AckFailed<'a> {
    /// The source's error for this handle.
    pub error: &'a SourceError,
}

impl AckFailed<'_> {
    /// Counts `sluice_ack_failures_total` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::ACK_FAILURES_TOTAL).increment(1);
        tracing::warn!(error = %self.error, "could not delete a written message; it will be delivered again and rewritten to the same row");
    }
}

/// A heartbeat's visibility extension failed (usually a message acked or nacked meanwhile).
pub struct VisibilityExtensionFailed<'a> {
    /// The source's error for this handle.
    pub error: &'a SourceError,
}

impl VisibilityExtensionFailed<'_> {
    /// Counts `sluice_visibility_extension_failures_total` and logs at DEBUG only: it is usually
    /// harmless.
    pub fn emit(self) {
        metrics::counter!(catalog::VISIBILITY_EXTENSION_FAILURES_TOTAL).increment(1);
        tracing::debug!(error = %self.error, "visibility extension failed");
    }
}

/// A BatchWriteItem call that will be tried again: throttled (the budgets it names slow down)
/// or a transient error (it counts towards the breaker).
pub struct BatchWriteRetried<'a> {
    /// The error of the failed call; its kind says throttle or transient.
    pub error: &'a WriteError,
    /// Items the call carried.
    pub items: usize,
    /// Which attempt failed, from 0 for the first call.
    pub attempt: u32,
}

impl BatchWriteRetried<'_> {
    /// Counts `sluice_batch_write_requests_total{outcome}` (`throttled` or `transient_error`), a
    /// throttle also `sluice_throttled_requests_total`, and logs a WARN line.
    pub fn emit(self) {
        let outcome = if self.error.kind == WriteErrorKind::Throttled {
            metrics::counter!(catalog::THROTTLED_REQUESTS_TOTAL).increment(1);
            "throttled"
        } else {
            "transient_error"
        };
        metrics::counter!(catalog::BATCH_WRITE_REQUESTS_TOTAL, "outcome" => outcome).increment(1);
        tracing::warn!(error = %self.error, items = self.items, attempt = self.attempt, outcome, "batch write failed; retrying");
    }
}

/// A BatchWriteItem call refused for one invalid item: its items are written one by one to
/// find it.
pub struct BatchSplit<'a> {
    /// The table's error for the batch.
    pub error: &'a WriteError,
    /// Items the refused batch carried, now written one by one.
    pub items: usize,
}

impl BatchSplit<'_> {
    /// Counts `sluice_batch_write_requests_total{outcome="invalid_item"}` and logs a WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::BATCH_WRITE_REQUESTS_TOTAL, "outcome" => "invalid_item")
            .increment(1);
        tracing::warn!(error = %self.error, items = self.items, "batch rejected; writing its items one by one to find the bad one");
    }
}

/// A BatchWriteItem call no retry can mend: every message waiting on its items fails.
pub struct BatchWriteFailed<'a> {
    /// Why the batch failed; its reason is the metric's `outcome` label.
    pub failure: &'a WriteFailure,
    /// Items the batch carried.
    pub items: usize,
}

impl BatchWriteFailed<'_> {
    /// Counts `sluice_batch_write_requests_total{outcome}` with the failure's reason and logs a
    /// WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::BATCH_WRITE_REQUESTS_TOTAL, "outcome" => self.failure.reason())
            .increment(1);
        tracing::warn!(error = %self.failure, items = self.items, "batch write failed; its messages fail");
    }
}

/// Items a BatchWriteItem call left unprocessed, tried again.
pub struct UnprocessedRetried {
    /// Items handed back unprocessed by the call, to be sent again.
    pub items: usize,
    /// Which attempt of the batch left them, from 0 for the first call.
    pub attempt: u32,
}

impl UnprocessedRetried {
    /// Adds the items to `sluice_unprocessed_items_retried_total` and logs at DEBUG.
    pub fn emit(self) {
        metrics::counter!(catalog::UNPROCESSED_ITEMS_RETRIED_TOTAL).increment(self.items as u64);
        tracing::debug!(
            unprocessed = self.items,
            attempt = self.attempt,
            "retrying unprocessed items"
        );
    }
}

/// The circuit breaker opened: the table keeps failing, so receiving stops for `cooldown`.
pub struct CircuitOpened<'a> {
    /// Failed batch writes counted in a row when it opened.
    pub failures: u32,
    /// How long receiving stops before a probe.
    pub cooldown: Duration,
    /// The last failure's text, for the log line.
    pub error: &'a str,
}

impl CircuitOpened<'_> {
    /// Counts `sluice_circuit_opened_total`, sets the `sluice_circuit_open` gauge to 1 and logs a
    /// WARN line.
    pub fn emit(self) {
        metrics::counter!(catalog::CIRCUIT_OPENED_TOTAL).increment(1);
        metrics::gauge!(catalog::CIRCUIT_OPEN).set(1.0);
        tracing::warn!(
            failures = self.failures,
            cooldown_s = self.cooldown.as_secs_f64(),
            error = self.error,
            "circuit open: the table keeps failing; receiving stops, messages wait in the queue"
        );
    }
}

/// The breaker left the open state: `half_open` (one round of receives probes the table) or
/// closed (the table accepts writes again).
pub struct CircuitEased {
    /// True: the cooldown is over and a probe round begins. False: a write succeeded and the
    /// breaker closed.
    pub half_open: bool,
}

impl CircuitEased {
    /// Sets the `sluice_circuit_open` gauge to 0 and logs an INFO line.
    pub fn emit(self) {
        metrics::gauge!(catalog::CIRCUIT_OPEN).set(0.0);
        if self.half_open {
            tracing::info!("circuit half open: probing the table with one round of receives");
        } else {
            tracing::info!("circuit closed: the table accepts writes again");
        }
    }
}
