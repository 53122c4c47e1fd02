//! `[sqs]`: the queue `sluice run` drains (and `sluice ingest` fills).

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::Mode;
use super::problems::{Check, Problems, human};

/// The queue `sluice run` drains and `sluice ingest` fills, and how it is polled, acked and
/// nacked.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsSettings {
    /// The queue to drain. Required (unless Kafka is the buffer).
    #[serde(deserialize_with = "super::de::http_url_or_empty")]
    pub queue_url: Option<Url>,
    /// Long-poll wait per receive, 0..=20 seconds.
    pub wait_time_seconds: u32,
    /// Messages asked for per receive, 1..=10.
    pub max_messages: u32,
    /// Concurrent long pollers.
    pub pollers: NonZeroUsize,
    /// Visibility timeout asked for on receive; unset keeps the queue's own.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Option<Duration>,
    /// Nack backoff: a message whose write failed or timed out stays invisible for
    /// base × 2^(receive count − 1), at most `nack_backoff_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub nack_backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub nack_backoff_max: Duration,
    /// Where poison goes at once, with its reason as message attributes. Unset: poison is nacked
    /// with `poison_nack_delay` and the queue's redrive policy moves it after maxReceiveCount.
    #[serde(deserialize_with = "super::de::http_url")]
    pub dead_letter_queue_url: Option<Url>,
    /// How long a poison message stays invisible (it returns until the queue's redrive policy
    /// moves it to the DLQ).
    #[serde(with = "humantime_serde")]
    pub poison_nack_delay: Duration,
    /// How long acks wait to fill a DeleteMessageBatch of 10.
    #[serde(with = "humantime_serde")]
    pub ack_linger: Duration,
    /// Deadline of one attempt of every SQS call (ReceiveMessage gets the long-poll wait on
    /// top); an operation, retries included, gets three times this. A call that hangs is cut
    /// and retried, so shutdown and the heartbeat never wait on a silent server.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SqsSettings {
    fn default() -> Self {
        SqsSettings {
            queue_url: None,
            wait_time_seconds: 20,
            max_messages: 10,
            pollers: NonZeroUsize::new(4).expect("4 > 0"),
            visibility_timeout: None,
            nack_backoff_base: Duration::from_secs(2),
            nack_backoff_max: Duration::from_secs(300),
            dead_letter_queue_url: None,
            poison_nack_delay: Duration::from_secs(60),
            ack_linger: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl SqsSettings {
    /// The queue's URL, empty when unset (Kafka as the buffer, or a tool that needs none).
    pub fn queue_url_str(&self) -> &str {
        self.queue_url.as_ref().map_or("", Url::as_str)
    }

    /// The dead-letter queue's URL, when set.
    pub fn dead_letter_queue_url_string(&self) -> Option<String> {
        self.dead_letter_queue_url.as_ref().map(Url::to_string)
    }
}

impl Check for SqsSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        p.check(
            self.wait_time_seconds <= 20,
            "sqs.wait_time_seconds",
            format!(
                "sqs.wait_time_seconds must be 0..=20, got {}",
                self.wait_time_seconds
            ),
        );
        p.check(
            (1..=10).contains(&self.max_messages),
            "sqs.max_messages",
            format!("sqs.max_messages must be 1..=10, got {}", self.max_messages),
        );
        if let Some(v) = self.visibility_timeout {
            p.check(
                v <= sluice_sqs::MAX_VISIBILITY,
                "sqs.visibility_timeout",
                "sqs.visibility_timeout must be at most 12h",
            );
            p.check(
                v >= Duration::from_secs(2),
                "sqs.visibility_timeout",
                format!(
                    "sqs.visibility_timeout must be at least 2s (the heartbeat extends it while a message is held), got {}",
                    human(v)
                ),
            );
        }
        p.check(
            !self.nack_backoff_base.is_zero() && self.nack_backoff_base <= self.nack_backoff_max,
            "sqs.nack_backoff_base",
            "sqs.nack_backoff_base must be above zero and at most sqs.nack_backoff_max",
        );
        p.check(
            self.nack_backoff_max <= sluice_sqs::MAX_VISIBILITY,
            "sqs.nack_backoff_max",
            "sqs.nack_backoff_max must be at most 12h",
        );
        p.check(
            !self.request_timeout.is_zero() && self.request_timeout <= Duration::from_secs(60),
            "sqs.request_timeout",
            format!(
                "sqs.request_timeout must be above zero and at most 60s, got {}",
                human(self.request_timeout)
            ),
        );
    }
}
