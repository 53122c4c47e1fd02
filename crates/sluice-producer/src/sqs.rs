//! The SQS transport: SendMessageBatch through the official AWS SDK, with the SDK's own retries
//! turned off (the producer owns retries, so they do not stack).

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::retry::RetryConfig;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use crate::{EntryOutcome, OutMessage, SendFuture, Transport, TransportError, TransportErrorKind};

/// Error codes with which SQS refuses a whole SendMessageBatch for what it carries: the same
/// call can never succeed, but its entries one by one may.
const REFUSED_CODES: &[&str] = &[
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "BatchRequestTooLong",
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
    "BatchEntryIdsNotDistinct",
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "TooManyEntriesInBatchRequest",
    "InvalidMessageContents",
    "AWS.SimpleQueueService.InvalidMessageContents",
    "InvalidParameterValue",
    "InvalidParameterValueException",
    "MessageTooLong",
];

/// Error codes SQS uses for "slow down".
const THROTTLE_CODES: &[&str] = &[
    "RequestThrottled",
    "ThrottlingException",
    "Throttling",
    "AWS.SimpleQueueService.RequestThrottled",
    "KmsThrottled",
];

/// A [`Transport`] to one SQS queue: one SendMessageBatch per batch, SDK retries off (the producer
/// owns retries). Whole-call failures are sorted into throttled, unavailable or refused; each
/// entry's failure into retry or rejected.
#[derive(Clone)]
pub struct SqsTransport {
    client: Client,
    queue_url: String,
}

impl SqsTransport {
    /// Wraps `client` with SDK retries off and a 10 s limit per call attempt (an unreachable
    /// endpoint then fails in bounded time, and the producer spools).
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        let conf = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            )
            .build();
        SqsTransport {
            client: Client::from_conf(conf),
            queue_url: queue_url.into(),
        }
    }

    /// Sends ready-made bodies, batched by SQS's limits, retrying entries SQS reports as failed
    /// (8 calls per batch, 50 ms doubling to 2 s between them): Ok once SQS took every one. For
    /// the demo, benchmarks and tests; an application sends logs through the [`crate::Producer`].
    pub async fn send_bodies(&self, bodies: &[String]) -> Result<(), crate::SendAllError> {
        let msgs: Vec<OutMessage> = bodies
            .iter()
            .map(|b| OutMessage {
                body: b.clone(),
                group_id: None,
                dedup_id: None,
                delay_seconds: None,
            })
            .collect();
        let backoff = sluice_common::Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        };
        let transport = std::sync::Arc::new(self.clone());
        crate::send_all(transport, &msgs, crate::BatchLimits::default(), 8, backoff).await
    }

    /// The queue this transport sends to.
    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }

    /// The queue's MaximumMessageSize (GetQueueAttributes): the largest message it takes.
    pub async fn max_message_bytes(&self) -> Result<usize, String> {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "cannot read MaximumMessageSize of {}: {}",
                    self.queue_url,
                    DisplayErrorContext(&e)
                )
            })?;
        out.attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::MaximumMessageSize))
            .and_then(|v| v.parse::<usize>().ok())
            .ok_or_else(|| format!("{} reports no MaximumMessageSize", self.queue_url))
    }
}

impl Transport for SqsTransport {
    fn send<'a>(&'a self, batch: &'a [OutMessage]) -> SendFuture<'a> {
        Box::pin(async move {
            let mut entries = Vec::with_capacity(batch.len());
            for (i, m) in batch.iter().enumerate() {
                let mut e = SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(&m.body);
                if let Some(g) = &m.group_id {
                    e = e.message_group_id(g);
                }
                if let Some(d) = &m.dedup_id {
                    e = e.message_deduplication_id(d);
                }
                if let Some(d) = m.delay_seconds {
                    e = e.delay_seconds(d as i32);
                }
                entries.push(e.build().map_err(|e| TransportError {
                    kind: TransportErrorKind::Unavailable,
                    message: format!("cannot build a SendMessageBatch entry: {e}"),
                })?);
            }
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| {
                    let code = e.code().unwrap_or_default().to_owned();
                    let kind = match &e {
                        SdkError::ServiceError(_) if THROTTLE_CODES.contains(&code.as_str()) => {
                            TransportErrorKind::Throttled
                        }
                        SdkError::ServiceError(_) if REFUSED_CODES.contains(&code.as_str()) => {
                            TransportErrorKind::Refused
                        }
                        _ => TransportErrorKind::Unavailable,
                    };
                    TransportError {
                        kind,
                        message: format!("SendMessageBatch failed: {}", DisplayErrorContext(&e)),
                    }
                })?;
            // An entry is sent only when the answer lists it as successful: one listed nowhere
            // (or under an Id that is not ours) is tried again, never counted as delivered.
            let mut outcomes = vec![
                EntryOutcome::Retry(
                    "the answer listed the entry neither as successful nor as failed".into()
                );
                batch.len()
            ];
            for ok in out.successful() {
                if let Some(slot) = ok
                    .id()
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| outcomes.get_mut(i))
                {
                    *slot = EntryOutcome::Sent;
                }
            }
            for f in out.failed() {
                let Ok(i) = f.id().parse::<usize>() else {
                    continue;
                };
                let Some(slot) = outcomes.get_mut(i) else {
                    continue;
                };
                let why = format!("{}: {}", f.code(), f.message().unwrap_or_default());
                *slot = if f.sender_fault() {
                    EntryOutcome::Rejected(why)
                } else {
                    EntryOutcome::Retry(why)
                };
            }
            Ok(outcomes)
        })
    }
}
