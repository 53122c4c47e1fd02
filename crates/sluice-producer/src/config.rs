//! How a producer packs, batches, retries and spools.

use std::time::Duration;

use sluice_common::Backoff;

use crate::spool::SpoolConfig;
use crate::text::sqs_group_id;

/// What a full buffer does to a caller. In a config file: `block` or `shed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// `send` waits for room (backpressure into the caller); `try_send` still never waits.
    Block,
    /// The log is dropped and counted in `sluice_producer_logs_total{outcome="shed"}`.
    Shed,
}

/// How a FIFO message's MessageDeduplicationId is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DedupMode {
    /// SHA-256 of the message body: a resend of the same bytes is a duplicate.
    ContentHash,
    /// SHA-256 of the caller-provided keys ([`Log::with_dedup_key`](crate::Log::with_dedup_key)) of the logs in the message,
    /// falling back to the log's bytes for a log without one.
    CallerKeys,
}

/// One thing wrong with a [`ProducerConfig`]: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The field's name, e.g. `max_message_bytes`.
    pub field: &'static str,
    /// What is wrong, said after the field's name: `must be at least 1`.
    pub message: String,
}

impl std::fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.field, self.message)
    }
}

/// Every problem [`ProducerConfig::validate`] found, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidConfig(pub Vec<ConfigProblem>);

impl InvalidConfig {
    /// Whether a problem names `field`.
    pub fn names(&self, field: &str) -> bool {
        self.0.iter().any(|p| p.field == field)
    }
}

/// The problems on one line, `; ` between them (for an error that is said once).
impl std::fmt::Display for InvalidConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for InvalidConfig {}

/// How a [`Producer`](crate::Producer) packs, batches, retries, bounds its memory and spools;
/// [`ProducerConfig::validate`] names every field that does not fit. The defaults suit a standard
/// SQS queue; [`ProducerConfig::for_queue`] sets `fifo` from the URL.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Largest message body; logs are packed (NDJSON) until the next would pass it. SQS takes up
    /// to 1 MiB.
    pub max_message_bytes: usize,
    /// Largest SendMessageBatch payload (the sum of its bodies). SQS: 1 MiB.
    pub max_batch_bytes: usize,
    /// Messages per SendMessageBatch, 1..=10.
    pub max_batch_entries: usize,
    /// Longest a log waits for its message to fill before the message is sent anyway.
    pub linger: Duration,
    /// Bytes of logs held in memory (packed, in flight, waiting for a retry); beyond it
    /// `full_policy` applies.
    pub buffer_bytes: usize,
    /// What a full buffer does to a caller of `send` (default [`FullPolicy::Block`]); `try_send`
    /// never waits, and a durable send is refused whole.
    pub full_policy: FullPolicy,
    /// SendMessageBatch calls in flight at once (a FIFO queue always uses 1, to keep order).
    pub max_in_flight: usize,
    /// FIFO queue: set MessageGroupId and MessageDeduplicationId. [`ProducerConfig::for_queue`]
    /// sets it from the `.fifo` suffix.
    pub fifo: bool,
    /// FIFO: the log field whose value is the message group (logs without it, and all logs when
    /// unset, go to `default_group`).
    pub group_field: Option<String>,
    /// FIFO: the MessageGroupId of logs without a group of their own (default `sluice`); 1 to 128
    /// letters, digits or ASCII punctuation.
    pub default_group: String,
    /// FIFO: how the MessageDeduplicationId is made (default [`DedupMode::ContentHash`]). Ignored
    /// on a standard queue.
    pub dedup: DedupMode,
    /// DelaySeconds for every message (standard queues; 0..=900).
    pub delay_seconds: Option<u32>,
    /// Attempts per batch (the first send plus retries of failed entries) before its messages
    /// are spooled or, without a spool, wait in memory for the next try.
    pub send_attempts: u32,
    /// First retry delay; doubles per attempt up to `retry_max`, with jitter
    /// ([`ProducerConfig::backoff`]).
    pub retry_base: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
    /// The durable spool; `None` keeps undeliverable messages in memory only.
    pub spool: Option<SpoolConfig>,
    /// Where a log the queue refuses for good is written (NDJSON, one `{"reason", "group",
    /// "log"}` per line, fsynced). `None`: `rejected.ndjson` in the spool's directory, or, with no
    /// spool either, the log's text goes into the ERROR log line.
    pub reject_file: Option<std::path::PathBuf>,
    /// How long [`Producer::close`](crate::Producer::close) keeps sending (what is buffered, and what the spool holds,
    /// while the queue takes it) before it spools (or, without a spool, drops and counts) what is
    /// left.
    pub shutdown_timeout: Duration,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            max_message_bytes: 256 * 1024,
            max_batch_bytes: 1024 * 1024,
            max_batch_entries: 10,
            linger: Duration::from_millis(50),
            buffer_bytes: 16 * 1024 * 1024,
            full_policy: FullPolicy::Block,
            max_in_flight: 4,
            fifo: false,
            group_field: None,
            default_group: "sluice".into(),
            dedup: DedupMode::ContentHash,
            delay_seconds: None,
            send_attempts: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            spool: None,
            reject_file: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

impl ProducerConfig {
    /// The retry policy of every send and replay: `retry_base` doubling to `retry_max`.
    pub fn backoff(&self) -> Backoff {
        Backoff {
            base: self.retry_base,
            cap: self.retry_max,
        }
    }

    /// Defaults, FIFO when the URL ends in `.fifo`.
    pub fn for_queue(queue_url: &str) -> Self {
        ProducerConfig {
            fifo: queue_url.ends_with(".fifo"),
            ..Default::default()
        }
    }

    /// Every problem, each naming its field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &'static str, message: String| {
            if !ok {
                problems.push(ConfigProblem { field, message });
            }
        };
        check(
            (1024..=1024 * 1024).contains(&self.max_message_bytes),
            "max_message_bytes",
            format!(
                "must be 1 KiB..=1 MiB (SQS's limit), got {}",
                self.max_message_bytes
            ),
        );
        check(
            self.max_batch_bytes >= self.max_message_bytes,
            "max_batch_bytes",
            format!(
                "({}) must be at least max_message_bytes ({})",
                self.max_batch_bytes, self.max_message_bytes
            ),
        );
        check(
            (1..=10).contains(&self.max_batch_entries),
            "max_batch_entries",
            format!("must be 1..=10, got {}", self.max_batch_entries),
        );
        check(
            self.buffer_bytes >= self.max_message_bytes,
            "buffer_bytes",
            format!(
                "({}) must hold at least one message (max_message_bytes {})",
                self.buffer_bytes, self.max_message_bytes
            ),
        );
        check(
            self.max_in_flight >= 1,
            "max_in_flight",
            "must be at least 1".into(),
        );
        check(
            self.send_attempts >= 1,
            "send_attempts",
            "must be at least 1".into(),
        );
        check(
            self.delay_seconds.is_none_or(|d| d <= 900),
            "delay_seconds",
            "must be 0..=900".into(),
        );
        check(
            !(self.fifo && self.delay_seconds.is_some_and(|d| d > 0)),
            "delay_seconds",
            "is per queue on FIFO queues; leave it unset".into(),
        );
        check(
            sqs_group_id(&self.default_group) == self.default_group,
            "default_group",
            "must be 1..=128 letters, digits or ASCII punctuation (SQS's MessageGroupId)".into(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(InvalidConfig(problems))
        }
    }
}
