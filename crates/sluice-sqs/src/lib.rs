//! SQS for sluice: the [`SqsSource`] the engine polls, and [`admin`], the queue administration
//! the tools share (dead-letter discovery, counts). Sending is the producer crate's
//! (`sluice_producer::send`): there is one SendMessageBatch loop.
//!
//! Receives are long polls (WaitTimeSeconds up to 20) asking for ApproximateReceiveCount; acks
//! are DeleteMessageBatch calls of up to 10 entries whose per-entry failures are reported back;
//! nacks are ChangeMessageVisibility. The SDK's own retries stay on for these calls: each is a
//! single idempotent step the engine does not retry itself (the acker retries only the entries
//! SQS reported as failed).
//!
//! No call goes without a deadline: [`client_with_deadlines`] gives every attempt
//! `request_timeout` and every operation, retries included, three times that; ReceiveMessage gets
//! the long-poll wait on top of both. A server that accepts a call and never answers costs one
//! deadline, never a hang.
#![warn(missing_docs)]

use sluice_core::source::dead_letter;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageAttributeValue, MessageSystemAttributeName,
};
use bytes::Bytes;
use sluice_core::{AckFailure, AttributeBody, MessageAttribute, Received, Source, SourceError};

/// SQS's longest visibility timeout: 12 hours.
pub const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);

/// An SQS client whose every call has a deadline: `request_timeout` per attempt, three times
/// that per operation (SDK retries included).
pub fn client_with_deadlines(sdk: &aws_config::SdkConfig, request_timeout: Duration) -> Client {
    let config = aws_sdk_sqs::config::Builder::from(sdk)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_attempt_timeout(request_timeout)
                .operation_timeout(request_timeout * 3)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

/// What [`SqsSource`] reads from and how: one queue, its long poll, the visibility asked for, the
/// dead-letter queue sluice writes poison to, and the per-call deadline.
#[derive(Debug, Clone)]
pub struct SqsSourceConfig {
    /// The URL of the queue to drain (standard or FIFO), as SQS returns it from GetQueueUrl.
    pub queue_url: String,
    /// Long-poll wait, 0..=20 seconds.
    pub wait_time_seconds: u32,
    /// Visibility timeout asked for on receive; `None` keeps the queue's own.
    pub visibility_timeout: Option<Duration>,
    /// Where poison goes, with its reason; `None` leaves it to the queue's redrive policy.
    pub dead_letter_queue_url: Option<String>,
    /// The attempt deadline of a call; ReceiveMessage gets the long-poll wait on top.
    pub request_timeout: Duration,
}

/// One SQS queue as the engine's [`Source`]: ReceiveMessage long polls (at most 10 messages each),
/// DeleteMessageBatch acks, ChangeMessageVisibility nacks and extensions, and SendMessage of poison
/// to the dead-letter queue. It keeps no state between calls beyond the DLQ's size limit, read
/// once.
pub struct SqsSource {
    client: Client,
    config: SqsSourceConfig,
    /// The dead-letter queue's MaximumMessageSize, read once.
    dlq_max_bytes: tokio::sync::OnceCell<usize>,
}

impl SqsSource {
    /// A source over `client`, which should come from [`client_with_deadlines`] so that no call
    /// hangs. Makes no call: a wrong URL or missing permission shows on the first receive.
    pub fn new(client: Client, config: SqsSourceConfig) -> Self {
        SqsSource {
            client,
            config,
            dlq_max_bytes: tokio::sync::OnceCell::new(),
        }
    }

    /// The URL of the queue this source drains.
    pub fn queue_url(&self) -> &str {
        &self.config.queue_url
    }
}

/// Turns an SDK error into a [`SourceError`], keeping the whole cause chain in the message.
fn source_error<E, R>(op: &str, err: SdkError<E, R>) -> SourceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let retryable = match &err {
        SdkError::ServiceError(se) => !matches!(
            se.err().code(),
            Some(
                "AWS.SimpleQueueService.NonExistentQueue"
                    | "QueueDoesNotExist"
                    | "AccessDenied"
                    | "AccessDeniedException"
                    | "InvalidAddress"
                    | "KMS.AccessDeniedException"
            )
        ),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    };
    SourceError {
        message: format!("SQS {op} failed: {}", DisplayErrorContext(&err)),
        retryable,
    }
}

/// SQS's largest message when the queue does not say (1 MiB since 2025).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// SQS's most message attributes on one message.
pub const MAX_MESSAGE_ATTRIBUTES: usize = 10;

/// The attributes a dead-lettered message carries: the message's own (the producer's), then
/// sluice's in order of use (reason, error, source message id, receive count, source queue) as
/// long as SQS's ten-attribute limit and the queue's `max` bytes leave room; the error text is cut
/// to fit. None: the body with the message's own attributes and the reason does not fit.
pub fn dead_letter_attributes<H>(
    message: &Received<H>,
    body_bytes: usize,
    max: usize,
    ours: [(&str, String); 5],
) -> Option<Vec<MessageAttribute>> {
    let mut out: Vec<MessageAttribute> = message
        .attributes
        .iter()
        .filter(|a| !a.name.starts_with("sluice_"))
        .take(MAX_MESSAGE_ATTRIBUTES)
        .cloned()
        .collect();
    let mut used = body_bytes + out.iter().map(MessageAttribute::size).sum::<usize>();
    for (i, (name, value)) in ours.into_iter().enumerate() {
        if out.len() >= MAX_MESSAGE_ATTRIBUTES {
            break;
        }
        // SQS refuses an attribute value with a character a body may not hold (an error text
        // can quote a log's NUL or U+FFFF): such characters are written as \uXXXX escapes.
        let mut value = sqs_text(&value);
        let fixed = name.len() + "String".len();
        let room = max.saturating_sub(used + fixed);
        if room == 0 || (i == 0 && room < value.len()) {
            if i == 0 {
                return None; // not even the reason fits
            }
            break;
        }
        if value.len() > room {
            let mut end = room;
            while !value.is_char_boundary(end) {
                end -= 1;
            }
            value.truncate(end);
        }
        if value.is_empty() {
            continue;
        }
        used += fixed + value.len();
        out.push(MessageAttribute {
            name: name.to_owned(),
            data_type: "String".into(),
            value: AttributeBody::Text(value),
        });
    }
    (used <= max).then_some(out)
}

/// `text` with every character SQS refuses in a message (attribute) written as a `\uXXXX`
/// escape: #x9, #xA, #xD, #x20-#xD7FF, #xE000-#xFFFD and #x10000-#x10FFFF stay.
pub fn sqs_text(text: &str) -> String {
    let allowed = |c: char| matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..);
    if text.chars().all(allowed) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if allowed(c) {
                c.to_string()
            } else {
                format!("\\u{:04x}", c as u32)
            }
        })
        .collect()
}

fn secs(d: Duration) -> i32 {
    d.min(MAX_VISIBILITY).as_secs() as i32
}

impl Source for SqsSource {
    type Handle = String;

    async fn receive(&self, max: usize) -> Result<Vec<Received<String>>, SourceError> {
        let wait = Duration::from_secs(u64::from(self.config.wait_time_seconds.min(20)));
        let attempt = wait + self.config.request_timeout;
        let out = self
            .client
            .receive_message()
            .queue_url(&self.config.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            .wait_time_seconds(self.config.wait_time_seconds.min(20) as i32)
            .set_visibility_timeout(self.config.visibility_timeout.map(secs))
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .customize()
            .config_override(
                aws_sdk_sqs::config::Builder::default().timeout_config(
                    TimeoutConfig::builder()
                        .operation_attempt_timeout(attempt)
                        .operation_timeout(attempt + self.config.request_timeout)
                        .build(),
                ),
            )
            .send()
            .await
            .map_err(|e| source_error("ReceiveMessage", e))?;
        let received_at = tokio::time::Instant::now();
        let mut messages = Vec::with_capacity(out.messages().len());
        for m in out.messages() {
            let Some(handle) = m.receipt_handle() else {
                continue; // cannot be acked or nacked; SQS always sends one
            };
            let attribute = |name: MessageSystemAttributeName| {
                m.attributes()
                    .and_then(|a| a.get(&name))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            let receive_count =
                attribute(MessageSystemAttributeName::ApproximateReceiveCount).unwrap_or(1) as u32;
            let sent_at_ms = attribute(MessageSystemAttributeName::SentTimestamp);
            let group_id = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                .cloned();
            let attributes = m
                .message_attributes()
                .map(|a| {
                    let mut v: Vec<MessageAttribute> = a
                        .iter()
                        .filter_map(|(name, v)| {
                            let value = match (v.string_value(), v.binary_value()) {
                                (Some(t), _) => AttributeBody::Text(t.to_owned()),
                                (None, Some(b)) => {
                                    AttributeBody::Binary(Bytes::copy_from_slice(b.as_ref()))
                                }
                                _ => return None,
                            };
                            Some(MessageAttribute {
                                name: name.clone(),
                                data_type: v.data_type().to_owned(),
                                value,
                            })
                        })
                        .collect();
                    v.sort_by(|a, b| a.name.cmp(&b.name));
                    v
                })
                .unwrap_or_default();
            messages.push(Received {
                message_id: m.message_id().unwrap_or_default().to_string(),
                body: Bytes::copy_from_slice(m.body().unwrap_or_default().as_bytes()),
                receive_count,
                handle: handle.to_string(),
                received_at,
                sent_at_ms,
                group_id,
                attributes,
            });
        }
        Ok(messages)
    }

    async fn ack(&self, handles: &[String]) -> Vec<AckFailure> {
        let entries: Vec<_> = handles
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .build()
                    .ok()
            })
            .collect();
        let result = self
            .client
            .delete_message_batch()
            .queue_url(&self.config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match result {
            Ok(out) => out
                .failed()
                .iter()
                .filter_map(|f| {
                    let index = f.id().parse().ok()?;
                    Some(AckFailure {
                        index,
                        error: SourceError {
                            message: format!(
                                "DeleteMessageBatch entry failed: {} {}",
                                f.code(),
                                f.message().unwrap_or_default()
                            ),
                            // A sender fault (a stale receipt handle) will not heal by retrying.
                            retryable: !f.sender_fault(),
                        },
                    })
                })
                .collect(),
            Err(e) => {
                let error = source_error("DeleteMessageBatch", e);
                (0..handles.len())
                    .map(|index| AckFailure {
                        index,
                        error: error.clone(),
                    })
                    .collect()
            }
        }
    }

    async fn extend(&self, handles: &[String], delay: Duration) -> Vec<AckFailure> {
        let entries: Vec<_> = handles
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(h)
                    .visibility_timeout(secs(delay))
                    .build()
                    .ok()
            })
            .collect();
        match self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.config.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
        {
            Ok(out) => out
                .failed()
                .iter()
                .filter_map(|f| {
                    Some(AckFailure {
                        index: f.id().parse().ok()?,
                        error: SourceError {
                            message: format!("{} {}", f.code(), f.message().unwrap_or_default()),
                            retryable: !f.sender_fault(),
                        },
                    })
                })
                .collect(),
            Err(e) => {
                let error = source_error("ChangeMessageVisibilityBatch", e);
                (0..handles.len())
                    .map(|index| AckFailure {
                        index,
                        error: error.clone(),
                    })
                    .collect()
            }
        }
    }

    async fn dead_letter(
        &self,
        message: &Received<String>,
        reason: &str,
        error: &str,
    ) -> Result<bool, SourceError> {
        let Some(dlq) = &self.config.dead_letter_queue_url else {
            return Ok(false);
        };
        let body = String::from_utf8_lossy(&message.body).into_owned();
        let body = if body.is_empty() {
            " ".to_string()
        } else {
            body
        };
        let max = *self
            .dlq_max_bytes
            .get_or_init(|| async {
                admin::max_message_bytes(&self.client, dlq)
                    .await
                    .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES)
            })
            .await;
        let Some(attributes) = dead_letter_attributes(
            message,
            body.len(),
            max,
            [
                (dead_letter::REASON, reason.to_string()),
                (dead_letter::ERROR, error.to_string()),
                (dead_letter::SOURCE_MESSAGE_ID, message.message_id.clone()),
                (
                    dead_letter::RECEIVE_COUNT,
                    message.receive_count.to_string(),
                ),
                (dead_letter::SOURCE_QUEUE, self.config.queue_url.clone()),
            ],
        ) else {
            tracing::warn!(
                message_id = %message.message_id,
                bytes = body.len(),
                dlq_max = max,
                reason,
                "a poison message does not fit the dead-letter queue with its attributes; leaving it to the queue's redrive policy"
            );
            return Ok(false);
        };
        let mut send = self.client.send_message().queue_url(dlq).message_body(body);
        for a in attributes {
            let v = MessageAttributeValue::builder().data_type(&a.data_type);
            let v = match a.value {
                AttributeBody::Text(t) => v.string_value(t),
                AttributeBody::Binary(b) => {
                    v.binary_value(aws_sdk_sqs::primitives::Blob::new(b.to_vec()))
                }
            };
            if let Ok(v) = v.build() {
                send = send.message_attributes(a.name, v);
            }
        }
        if let Some(g) = &message.group_id {
            // A FIFO dead-letter queue needs a group and a deduplication id.
            if dlq.ends_with(".fifo") {
                send = send
                    .message_group_id(g)
                    .message_deduplication_id(&message.message_id);
            }
        }
        match send.send().await {
            Ok(_) => Ok(true),
            Err(e)
                if e.code() == Some("InvalidParameterValue")
                    || e.code() == Some("MessageTooLong") =>
            {
                // The queue refused its size (or an attribute) after all: a retry cannot
                // help, and nacking it would loop; the redrive policy moves it.
                tracing::warn!(message_id = %message.message_id, error = %DisplayErrorContext(&e), "the dead-letter queue refused a poison message; leaving it to the queue's redrive policy");
                Ok(false)
            }
            Err(e) => Err(source_error("SendMessage (dead-letter queue)", e)),
        }
    }

    async fn nack(&self, handle: &String, delay: Duration) -> Result<(), SourceError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.config.queue_url)
            .receipt_handle(handle)
            .visibility_timeout(secs(delay))
            .send()
            .await
            .map_err(|e| source_error("ChangeMessageVisibility", e))?;
        Ok(())
    }
}

/// Queue administration used by `sluice demo` and the tests.
pub mod admin {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use aws_sdk_sqs::Client;
    use aws_sdk_sqs::error::DisplayErrorContext;
    use aws_sdk_sqs::types::QueueAttributeName;

    /// Creates a queue with these attributes (VisibilityTimeout, RedrivePolicy, FifoQueue, …);
    /// returns the URL the server gives (its shape differs per server: always use this one).
    pub async fn create_queue(
        client: &Client,
        name: &str,
        attributes: &[(QueueAttributeName, String)],
    ) -> Result<String, String> {
        let out = client
            .create_queue()
            .queue_name(name)
            .set_attributes(Some(attributes.iter().cloned().collect()))
            .send()
            .await
            .map_err(|e| format!("CreateQueue {name}: {}", DisplayErrorContext(&e)))?;
        out.queue_url()
            .map(String::from)
            .ok_or_else(|| format!("CreateQueue {name} returned no URL"))
    }

    /// `deadLetterTargetArn` of a RedrivePolicy JSON document.
    pub fn dead_letter_target_arn(redrive_policy: &str) -> Option<String> {
        let policy: serde_json::Value = serde_json::from_str(redrive_policy).ok()?;
        policy
            .get("deadLetterTargetArn")?
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// `arn:PARTITION:sqs:REGION:ACCOUNT:NAME` → (ACCOUNT, NAME).
    pub fn queue_name_from_arn(arn: &str) -> Option<(String, String)> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        match parts.as_slice() {
            ["arn", _, "sqs", _, account, name] if !name.is_empty() => {
                Some((account.to_string(), name.to_string()))
            }
            _ => None,
        }
    }

    /// The URL of the queue an ARN names (GetQueueUrl with the owner's account).
    pub async fn queue_url_of_arn(client: &Client, arn: &str) -> Result<String, String> {
        let (account, name) = queue_name_from_arn(arn)
            .ok_or_else(|| format!("`{arn}` is not the ARN of an SQS queue"))?;
        let out = client
            .get_queue_url()
            .queue_name(&name)
            .queue_owner_aws_account_id(account)
            .send()
            .await
            .map_err(|e| format!("GetQueueUrl {name}: {}", DisplayErrorContext(&e)))?;
        out.queue_url()
            .map(String::from)
            .ok_or_else(|| format!("GetQueueUrl {name} returned no URL"))
    }

    /// One GetQueueAttributes call for `names`: what SQS answered (an attribute the queue does
    /// not have is absent). The one place the admin functions read a queue's attributes.
    async fn attributes(
        client: &Client,
        url: &str,
        names: &[QueueAttributeName],
    ) -> Result<HashMap<QueueAttributeName, String>, String> {
        let out = client
            .get_queue_attributes()
            .queue_url(url)
            .set_attribute_names(Some(names.to_vec()))
            .send()
            .await
            .map_err(|e| format!("GetQueueAttributes {url}: {}", DisplayErrorContext(&e)))?;
        Ok(out.attributes().cloned().unwrap_or_default())
    }

    /// The one attribute `name`, parsed; an error naming it when SQS did not answer it.
    async fn attribute<T: std::str::FromStr>(
        client: &Client,
        url: &str,
        name: QueueAttributeName,
    ) -> Result<T, String> {
        attributes(client, url, std::slice::from_ref(&name))
            .await?
            .get(&name)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("GetQueueAttributes returned no {}", name.as_str()))
    }

    /// The dead-letter queue a queue's RedrivePolicy names, if it has one.
    pub async fn redrive_dead_letter_url(
        client: &Client,
        url: &str,
    ) -> Result<Option<String>, String> {
        let policy = attributes(client, url, &[QueueAttributeName::RedrivePolicy]).await?;
        let Some(arn) = policy
            .get(&QueueAttributeName::RedrivePolicy)
            .and_then(|p| dead_letter_target_arn(p))
        else {
            return Ok(None);
        };
        queue_url_of_arn(client, &arn).await.map(Some)
    }

    /// The queue's ARN (what a RedrivePolicy names as its dead-letter target).
    pub async fn queue_arn(client: &Client, url: &str) -> Result<String, String> {
        attribute(client, url, QueueAttributeName::QueueArn).await
    }

    /// The queue's own visibility timeout (what a receive gets unless it asks for another).
    pub async fn visibility_timeout(client: &Client, url: &str) -> Result<Duration, String> {
        attribute(client, url, QueueAttributeName::VisibilityTimeout)
            .await
            .map(Duration::from_secs)
    }

    /// The queue's MaximumMessageSize.
    pub async fn max_message_bytes(client: &Client, url: &str) -> Result<usize, String> {
        attribute(client, url, QueueAttributeName::MaximumMessageSize).await
    }

    /// Deletes the queue (DeleteQueue). SQS may take up to 60 seconds to forget the name, so a
    /// queue of the same name created right after can fail. Err: the SDK error, with its cause
    /// chain.
    pub async fn delete_queue(client: &Client, url: &str) -> Result<(), String> {
        client
            .delete_queue()
            .queue_url(url)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| format!("DeleteQueue: {}", DisplayErrorContext(&e)))
    }

    /// A queue's message counts as GetQueueAttributes reports them: approximate, and lagging
    /// right after a burst (poll them).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct QueueCounts {
        /// Ready to receive (ApproximateNumberOfMessages).
        pub visible: u64,
        /// Received and not yet deleted or visible again (…NotVisible).
        pub in_flight: u64,
        /// Sent with a delay not yet over (…Delayed).
        pub delayed: u64,
    }

    /// The queue's counts, and its RedrivePolicy (the JSON SQS keeps) when `with_redrive` asks
    /// for it and the queue has one. The one reader of queue counts: the queue gauges,
    /// `sluice dlq stats`, the demo and the tests.
    pub async fn counts(
        client: &Client,
        url: &str,
        with_redrive: bool,
    ) -> Result<(QueueCounts, Option<String>), String> {
        let mut names = vec![
            QueueAttributeName::ApproximateNumberOfMessages,
            QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
            QueueAttributeName::ApproximateNumberOfMessagesDelayed,
        ];
        if with_redrive {
            names.push(QueueAttributeName::RedrivePolicy);
        }
        let mut got = attributes(client, url, &names).await?;
        let number = |name: QueueAttributeName| {
            got.get(&name)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let counts = QueueCounts {
            visible: number(QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: number(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            delayed: number(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        };
        let redrive = got.remove(&QueueAttributeName::RedrivePolicy);
        Ok((counts, redrive))
    }

    /// (visible, in flight): [`counts`] for callers that need only those two.
    pub async fn queue_counts(client: &Client, url: &str) -> Result<(u64, u64), String> {
        let (c, _) = counts(client, url, false).await?;
        Ok((c.visible, c.in_flight))
    }

    /// Waits until the queue reports no message, visible or in flight, twice in a row.
    pub async fn wait_empty(client: &Client, url: &str, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let mut zeros = 0;
        loop {
            let (visible, in_flight) = queue_counts(client, url).await?;
            if visible == 0 && in_flight == 0 {
                zeros += 1;
                if zeros == 2 {
                    return Ok(());
                }
            } else {
                zeros = 0;
            }
            if started.elapsed() > limit {
                return Err(format!(
                    "queue not empty after {limit:?}: {visible} visible, {in_flight} in flight"
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_dlq_is_named_by_the_redrive_policy_arn() {
            let policy = r#"{"deadLetterTargetArn":"arn:aws:sqs:eu-west-1:123456789012:logs-dlq","maxReceiveCount":3}"#;
            let arn = dead_letter_target_arn(policy).unwrap();
            assert_eq!(
                queue_name_from_arn(&arn),
                Some(("123456789012".into(), "logs-dlq".into()))
            );
            // maxReceiveCount as a string, as older SQS APIs return it.
            assert!(
                dead_letter_target_arn(
                    r#"{"deadLetterTargetArn":"arn:aws-us-gov:sqs:us-gov-west-1:1:q.fifo","maxReceiveCount":"5"}"#
                )
                .is_some()
            );
            assert_eq!(
                queue_name_from_arn("arn:aws-cn:sqs:cn-north-1:1:q.fifo"),
                Some(("1".into(), "q.fifo".into()))
            );
        }

        #[test]
        fn anything_else_is_no_dlq() {
            assert_eq!(dead_letter_target_arn(""), None);
            assert_eq!(dead_letter_target_arn("not json"), None);
            assert_eq!(dead_letter_target_arn(r#"{"maxReceiveCount":3}"#), None);
            assert_eq!(queue_name_from_arn("arn:aws:sns:us-east-1:1:topic"), None);
            assert_eq!(queue_name_from_arn("arn:aws:sqs:us-east-1:1:"), None);
            assert_eq!(queue_name_from_arn("logs-dlq"), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: usize, own: usize) -> Received<String> {
        Received {
            message_id: "m-1".into(),
            body: Bytes::from(vec![b'x'; body]),
            receive_count: 2,
            handle: "h".into(),
            received_at: tokio::time::Instant::now(),
            sent_at_ms: None,
            group_id: None,
            attributes: (0..own)
                .map(|i| MessageAttribute {
                    name: format!("attr{i}"),
                    data_type: "String".into(),
                    value: AttributeBody::Text("v".repeat(10)),
                })
                .collect(),
        }
    }

    fn ours(error: &str) -> [(&'static str, String); 5] {
        [
            (dead_letter::REASON, "too_large".into()),
            (dead_letter::ERROR, error.into()),
            (dead_letter::SOURCE_MESSAGE_ID, "m-1".into()),
            (dead_letter::RECEIVE_COUNT, "2".into()),
            (dead_letter::SOURCE_QUEUE, "https://q/logs".into()),
        ]
    }

    #[test]
    fn dead_letter_attributes_keep_the_producers_and_fit_the_queue() {
        let max = 1024 * 1024;
        // Room for everything.
        let m = message(1000, 2);
        let a = dead_letter_attributes(&m, 1000, max, ours("short")).unwrap();
        assert_eq!(a.len(), 7);
        assert!(
            a.iter().take(2).all(|a| a.name.starts_with("attr")),
            "the producer's first"
        );
        // Near the limit: the error text is cut to fit, the total never over.
        let body = max - 300;
        let m = message(body, 2);
        let a = dead_letter_attributes(&m, body, max, ours(&"e".repeat(5000))).unwrap();
        let total = body + a.iter().map(MessageAttribute::size).sum::<usize>();
        assert!(total <= max, "{total}");
        assert!(a.iter().any(|a| a.name == dead_letter::REASON));
        // Ten attributes of the producer's (SQS's most): they all stay; sluice's find no slot.
        let m = message(1000, 10);
        let a = dead_letter_attributes(&m, 1000, max, ours("x")).unwrap();
        assert_eq!(a.len(), 10);
        // Characters SQS refuses in a value are escaped, so the send always validates.
        let m = message(1000, 0);
        let a = dead_letter_attributes(&m, 1000, max, ours("bad \u{0}\u{ffff} log")).unwrap();
        let error = a.iter().find(|a| a.name == dead_letter::ERROR).unwrap();
        assert!(
            matches!(&error.value, AttributeBody::Text(t) if t == "bad \\u0000\\uffff log"),
            "{:?}",
            error.value
        );
        // Not even the reason fits: None (left to the queue's redrive policy).
        let m = message(max - 10, 0);
        assert!(dead_letter_attributes(&m, max - 10, max, ours("x")).is_none());
    }
}
