//! `[producer]`: how `sluice ingest` and `sluice load` put logs into the queue.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use sluice_producer::spool::{FsyncPolicy, SpoolConfig};
use sluice_producer::{FullPolicy, ProducerConfig};

use super::Mode;
use super::problems::{Check, Problems};

/// When the spool's appends reach the disk. Not [`FsyncPolicy`] itself: its `Interval` carries
/// the period, which is a key of its own here (`spool_fsync_interval`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncSetting {
    Always,
    Interval,
    Never,
}

/// The producer `sluice ingest` (and `sluice load`) put logs into SQS with: packing, batching,
/// buffering, retries, the disk spool, and Kafka as the target instead. Not
/// [`ProducerConfig`] itself: the spool is flat keys here and an optional struct there, FIFO
/// follows from the queue's URL, and the Kafka keys belong to no SQS producer.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    /// Logs are packed (NDJSON) into messages of at most this many bytes; SQS takes up to 1 MiB.
    pub max_message_bytes: usize,
    /// Bodies per SendMessageBatch at most, in bytes (SQS: 1 MiB).
    pub max_batch_bytes: usize,
    /// Longest a log waits for its message (and a message for its batch) to fill.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Bytes of logs held in memory; beyond it `full_policy` applies (ingest answers 503).
    pub buffer_bytes: usize,
    /// `block` (callers wait) or `shed` (logs dropped and counted) when the buffer is full.
    #[serde(deserialize_with = "super::de::variant")]
    pub full_policy: FullPolicy,
    /// SendMessageBatch calls in flight (FIFO queues use 1).
    pub max_in_flight: usize,
    /// FIFO queues: the log field whose value is the MessageGroupId.
    pub group_field: Option<String>,
    /// FIFO queues: the group of logs without `group_field`.
    pub default_group: String,
    /// DelaySeconds on every message (standard queues), 0..=900.
    pub delay_seconds: Option<u32>,
    /// Attempts per batch before its messages go to the spool.
    pub send_attempts: u32,
    /// First retry delay of a failed send (doubles, jittered, up to `retry_max`).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Directory of the durable spool; unset keeps undeliverable logs in memory only.
    pub spool_dir: Option<PathBuf>,
    /// Where a log SQS refuses for good is kept (NDJSON with the reason, fsynced). Unset:
    /// `rejected.ndjson` in `spool_dir`; with no spool either, the log goes into the ERROR log.
    pub reject_file: Option<PathBuf>,
    /// Bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// Size of one spool segment file.
    pub spool_segment_bytes: u64,
    /// `always` (fsync each append), `interval` (every `spool_fsync_interval`) or `never`.
    #[serde(deserialize_with = "super::de::variant")]
    pub spool_fsync: FsyncSetting,
    #[serde(with = "humantime_serde")]
    pub spool_fsync_interval: Duration,
    /// At shutdown, how long to keep sending before the rest goes to the spool.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Publish to this Kafka topic (brokers and properties from `[kafka]`) instead of
    /// sqs.queue_url.
    pub kafka_topic: Option<String>,
    /// Kafka: the log field used as the record key (one partition per request id).
    pub kafka_key_field: String,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        let d = ProducerConfig::default();
        let s = SpoolConfig::new("");
        ProducerSettings {
            max_message_bytes: d.max_message_bytes,
            max_batch_bytes: d.max_batch_bytes,
            linger: d.linger,
            buffer_bytes: d.buffer_bytes,
            full_policy: d.full_policy,
            max_in_flight: d.max_in_flight,
            group_field: None,
            default_group: d.default_group,
            delay_seconds: None,
            send_attempts: d.send_attempts,
            retry_base: d.retry_base,
            retry_max: d.retry_max,
            spool_dir: None,
            reject_file: None,
            spool_max_bytes: s.max_bytes,
            spool_segment_bytes: s.segment_bytes,
            spool_fsync: FsyncSetting::Always,
            spool_fsync_interval: Duration::from_secs(1),
            shutdown_timeout: d.shutdown_timeout,
            kafka_topic: None,
            kafka_key_field: "request_id".into(),
        }
    }
}

impl ProducerSettings {
    pub fn producer_config(&self, queue_url: &str) -> ProducerConfig {
        ProducerConfig {
            max_message_bytes: self.max_message_bytes,
            max_batch_bytes: self.max_batch_bytes,
            linger: self.linger,
            buffer_bytes: self.buffer_bytes,
            full_policy: self.full_policy,
            max_in_flight: self.max_in_flight,
            group_field: self.group_field.clone(),
            default_group: self.default_group.clone(),
            delay_seconds: self.delay_seconds,
            send_attempts: self.send_attempts,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            spool: self.spool_dir.as_ref().map(|dir| SpoolConfig {
                dir: dir.clone(),
                max_bytes: self.spool_max_bytes,
                segment_bytes: self.spool_segment_bytes,
                fsync: match self.spool_fsync {
                    FsyncSetting::Always => FsyncPolicy::Always,
                    FsyncSetting::Interval => FsyncPolicy::Interval(self.spool_fsync_interval),
                    FsyncSetting::Never => FsyncPolicy::Never,
                },
            }),
            shutdown_timeout: self.shutdown_timeout,
            reject_file: self.reject_file.clone(),
            ..ProducerConfig::for_queue(queue_url)
        }
    }

    /// The producer's own rules ([`ProducerConfig::validate`]), for the queue it would fill
    /// (a FIFO queue has rules of its own), each as a problem of its `producer.` key.
    pub fn check_for_queue(&self, queue_url: &str, p: &mut Problems) {
        if let Err(invalid) = self.producer_config(queue_url).validate() {
            for problem in invalid.0 {
                p.push(
                    format!("producer.{}", problem.field),
                    format!("producer.{problem}"),
                );
            }
        }
    }
}

impl Check for ProducerSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        p.check(
            self.kafka_topic
                .as_ref()
                .is_none_or(|t| !t.trim().is_empty()),
            "producer.kafka_topic",
            "producer.kafka_topic must not be empty (unset it to send to SQS)",
        );
        if self.spool_dir.is_some() {
            // A record is the message plus its header, group and deduplication ids (under
            // 1 KiB): a spool that cannot hold one full message would refuse every one.
            p.check(
                self.spool_max_bytes >= self.max_message_bytes as u64 + 1024,
                "producer.spool_max_bytes",
                "producer.spool_max_bytes must hold at least one full message and its record (producer.max_message_bytes + 1024)",
            );
            p.check(
                self.spool_segment_bytes >= 4096,
                "producer.spool_segment_bytes",
                "producer.spool_segment_bytes must be at least 4096",
            );
        }
    }
}
