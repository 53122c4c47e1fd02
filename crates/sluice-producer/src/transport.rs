//! What a producer sends through: the queue (SQS) or a topic (Kafka), behind one trait.

use std::future::Future;
use std::pin::Pin;

/// One message as it goes to the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// The body: one or more logs as NDJSON, at most `max_message_bytes`.
    pub body: String,
    /// FIFO: the MessageGroupId; None on a standard queue.
    pub group_id: Option<String>,
    /// FIFO: the MessageDeduplicationId (a hash, see [`DedupMode`](crate::DedupMode)); None on a
    /// standard queue.
    pub dedup_id: Option<String>,
    /// DelaySeconds (0..=900, standard queues only); None: the queue's own delay.
    pub delay_seconds: Option<u32>,
}

/// What the queue said of one entry of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOutcome {
    /// The queue took the message.
    Sent,
    /// A transient failure (throttled, internal error): try again.
    Retry(String),
    /// The queue will never take this message (the sender's fault).
    Rejected(String),
}

/// How a whole failed call is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportErrorKind {
    /// The queue says slow down.
    Throttled,
    /// No answer, a 5xx, a timeout: the queue is not reachable now.
    Unavailable,
    /// The queue refuses the whole call for what it carries (a body it cannot take, a batch too
    /// long): retrying the same call cannot help, its entries are tried one by one.
    Refused,
}

impl TransportErrorKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            TransportErrorKind::Throttled => "throttled",
            TransportErrorKind::Unavailable => "unavailable",
            TransportErrorKind::Refused => "refused",
        }
    }
}

/// The whole call failed; every entry may be retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TransportError {
    /// What kind of failure: decides between backing off, spooling, and splitting the batch.
    pub kind: TransportErrorKind,
    /// The error in words, with the queue's own message.
    pub message: String,
}

/// What [`Transport::send`] returns, boxed: one outcome per message in order, or the whole call's
/// error.
pub type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<EntryOutcome>, TransportError>> + Send + 'a>>;

/// Where messages go: SQS ([`SqsTransport`](crate::sqs::SqsTransport)), or a fake in tests.
pub trait Transport: Send + Sync + 'static {
    /// Sends one batch; on `Ok`, one outcome per message, in order.
    fn send<'a>(&'a self, batch: &'a [OutMessage]) -> SendFuture<'a>;
}
