//! The contract between the engine and a buffer (SQS, Kafka, an in-memory fake).
//!
//! # Delivery contract
//! - A message is acked ([`Source::ack`]) only after every log it carries is durably written, or
//!   after it was handed to the dead-letter path with its reason. Nothing else deletes a message.
//! - A message that cannot be finished is nacked ([`Source::nack`]): it becomes visible again
//!   after the given delay and is delivered again, to this worker or another.
//! - Keys are deterministic, so a message delivered twice writes the same rows twice: an upsert,
//!   never a second row.
//! - A source must tolerate a receive future being dropped (that is how shutdown cancels a parked
//!   long poll): whatever it had dequeued comes back after its visibility timeout.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

/// A message as received, with the handle needed to ack or nack it.
#[derive(Debug)]
pub struct Received<H> {
    /// The buffer's id of the message (SQS MessageId; Kafka: topic, partition and offset), for logs
    /// and the dead-letter attributes.
    pub message_id: String,
    /// The body as the producer sent it, undecoded.
    pub body: Bytes,
    /// How many times the buffer has handed this message out, this time included (SQS's
    /// ApproximateReceiveCount).
    pub receive_count: u32,
    /// What acks, nacks or extends this delivery; only valid for this receive.
    pub handle: H,
    /// When the receive returned, on this process's monotonic clock: the 12-hour visibility limit
    /// and the processing time are counted from here.
    pub received_at: Instant,
    /// When the producer sent it (SQS's SentTimestamp), in milliseconds since the epoch.
    pub sent_at_ms: Option<u64>,
    /// FIFO queues: the message group. Messages of one group are written in order.
    pub group_id: Option<String>,
    /// The message's own attributes (SQS MessageAttributes), kept when it is dead-lettered.
    pub attributes: Vec<MessageAttribute>,
}

/// One message attribute as the buffer carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAttribute {
    /// The attribute's name; sluice's own start with `sluice_` ([`dead_letter`]).
    pub name: String,
    /// SQS's DataType: `String`, `Number`, `Binary`, or one of those with a `.custom` suffix.
    pub data_type: String,
    /// The value, as text or bytes according to the data type.
    pub value: AttributeBody,
}

/// A message attribute's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeBody {
    /// SQS's StringValue, for the `String` and `Number` data types.
    Text(String),
    /// SQS's BinaryValue, for the `Binary` data type.
    Binary(Bytes),
}

impl MessageAttribute {
    /// Bytes SQS counts for it against the message size: name, data type and value.
    pub fn size(&self) -> usize {
        self.name.len()
            + self.data_type.len()
            + match &self.value {
                AttributeBody::Text(t) => t.len(),
                AttributeBody::Binary(b) => b.len(),
            }
    }
}

/// A failure talking to the buffer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SourceError {
    /// What failed, with the buffer's own error text; shown to operators and in logs as is.
    pub message: String,
    /// Whether trying the same call again may succeed.
    pub retryable: bool,
}

impl SourceError {
    /// An error the same call may get past when tried again (throttling, a time-out, a 5xx).
    pub fn retryable(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            retryable: true,
        }
    }

    /// An error no retry mends (a missing queue, access denied, a stale receipt handle).
    pub fn fatal(message: impl Into<String>) -> Self {
        SourceError {
            message: message.into(),
            retryable: false,
        }
    }
}

/// One entry of an ack call that did not go through.
#[derive(Debug, Clone)]
pub struct AckFailure {
    /// Index into the handles given to [`Source::ack`].
    pub index: usize,
    /// Why that entry failed; retryable when the acker may try it again.
    pub error: SourceError,
}

/// A buffer of messages: receive, ack, nack.
pub trait Source: Send + Sync + 'static {
    /// What identifies one delivery of one message (an SQS receipt handle).
    type Handle: Send + Sync + Clone + std::fmt::Debug + 'static;

    /// Receives up to `max` messages, waiting for them up to the source's long-poll time.
    fn receive(
        &self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Received<Self::Handle>>, SourceError>> + Send;

    /// Deletes these deliveries (at most [`Source::max_ack_batch`]); returns those that failed.
    fn ack(&self, handles: &[Self::Handle]) -> impl Future<Output = Vec<AckFailure>> + Send;

    /// Makes a delivery visible again after `delay`.
    fn nack(
        &self,
        handle: &Self::Handle,
        delay: Duration,
    ) -> impl Future<Output = Result<(), SourceError>> + Send;

    /// Sets the visibility of several held deliveries at once (the heartbeat: at most
    /// [`Source::max_ack_batch`]); returns those that failed.
    fn extend(
        &self,
        handles: &[Self::Handle],
        visibility: Duration,
    ) -> impl Future<Output = Vec<AckFailure>> + Send;

    /// Hands a message that can never be written to the dead-letter path, with the reason.
    /// `Ok(true)`: it is there, and the engine deletes it from the source. `Ok(false)`: this
    /// source has no dead-letter path; the engine leaves it to the queue's redrive policy.
    fn dead_letter(
        &self,
        message: &Received<Self::Handle>,
        reason: &str,
        error: &str,
    ) -> impl Future<Output = Result<bool, SourceError>> + Send {
        let _ = (message, reason, error);
        async { Ok(false) }
    }

    /// The most handles one ack call takes (SQS: 10).
    fn max_ack_batch(&self) -> usize {
        10
    }
}

/// The attributes (SQS) or headers (Kafka) a dead-lettered message carries, so `sluice dlq` and
/// people reading the dead-letter queue see why it is there and where it came from.
pub mod dead_letter {
    /// Why it was dead-lettered: `not_json`, `schema`, `too_large`, `rejected`, …
    pub const REASON: &str = "sluice_reason";
    /// The error in words.
    pub const ERROR: &str = "sluice_error";
    /// How many times the buffer had delivered it.
    pub const RECEIVE_COUNT: &str = "sluice_receive_count";
    /// SQS: the message's id and queue in the source queue.
    pub const SOURCE_MESSAGE_ID: &str = "sluice_source_message_id";
    /// SQS: the URL of the queue the message was received from.
    pub const SOURCE_QUEUE: &str = "sluice_source_queue";
    /// Kafka: where the record was read.
    pub const SOURCE_TOPIC: &str = "sluice_source_topic";
    /// Kafka: the record's partition.
    pub const SOURCE_PARTITION: &str = "sluice_source_partition";
    /// Kafka: the record's offset in its partition.
    pub const SOURCE_OFFSET: &str = "sluice_source_offset";
}
