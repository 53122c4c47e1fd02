//! sluice-producer: the producer side of sluice. API servers use it to put their request logs
//! into SQS cheaply and safely:
//!
//! - many logs are packed into one SQS message (NDJSON, up to `max_message_bytes`, 256 KiB by
//!   default) and ten messages into one SendMessageBatch call, after at most `linger`;
//! - on a FIFO queue every message gets a MessageGroupId (a log field, or one group) and a
//!   MessageDeduplicationId (a content hash, or a hash of caller-provided keys), so a retry or a
//!   replay inside SQS's 5-minute window is dropped by SQS itself; on a standard queue the
//!   consumer's idempotent upserts (one row per `request_id`) make duplicates harmless;
//! - entries SQS reports as failed are retried with jittered exponential backoff;
//! - memory is bounded by `buffer_bytes`; when it is full the [`FullPolicy`] decides whether a
//!   caller waits (`Block`) or the log is dropped and counted (`Shed`);
//! - with a [`spool::SpoolConfig`], what SQS does not take (unreachable, throttling, 5xx after
//!   `send_attempts`) goes to a bounded append-only file on local disk and is replayed in order
//!   once SQS takes messages again. While anything is spooled, new messages queue behind it, so
//!   order is kept;
//! - **no log is dropped once taken.** Each log is made acceptable to SQS when it is taken:
//!   characters SQS refuses (U+0000..U+001F but tab and newlines, U+FFFE, U+FFFF) are written as
//!   JSON `\uXXXX` escapes, which keep the content; a FIFO group id SQS would refuse (over 128
//!   characters, or characters outside its alphabet) becomes a stable hash of it; a log larger
//!   than `max_message_bytes` (capped at the queue's own MaximumMessageSize) is refused at once.
//!   If SQS still refuses a packed message, it is split and its logs are sent one by one; a
//!   single log SQS refuses is written to the reject file (`reject_file`) with the reason,
//!   counted (`sluice_producer_logs_total{outcome="rejected"}`) and logged at ERROR. A durable
//!   send learns which of its logs was refused ([`ProduceError::LogRejected`]). The one way a
//!   taken log is lost: [`Producer::close`] with no spool (or a spool it cannot write) while the
//!   queue still does not take it within `shutdown_timeout`; `close` reports it
//!   ([`CloseReport::dropped_logs`], `sluice_producer_logs_total{outcome="dropped"}`), and
//!   `sluice ingest` fails its exit for it.
//!
//! ```no_run
//! # async fn demo(sqs: aws_sdk_sqs::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use sluice_producer::{Producer, ProducerConfig, sqs::SqsTransport};
//! let queue_url = "https://sqs.eu-west-1.amazonaws.com/123456789012/request-logs";
//! let producer = Producer::start(
//!     ProducerConfig::for_queue(queue_url),
//!     SqsTransport::new(sqs, queue_url),
//! )?;
//! producer.send(&serde_json::json!({"request_id": "r-1", "ts": 1700000000000u64,
//!     "method": "GET", "path": "/", "status": 200, "latency_ms": 3})).await?;
//! producer.close().await;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod config;
mod dispatcher;
pub mod events;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod layer;
mod reject;
pub mod send;
pub mod spool;
pub mod sqs;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod text;
mod transport;

pub use config::{ConfigProblem, DedupMode, FullPolicy, InvalidConfig, ProducerConfig};
pub use send::{BatchLimits, SendAllError, send_all};
pub use text::{sqs_allows, sqs_group_id, sqs_safe_json};
pub use transport::{
    EntryOutcome, OutMessage, SendFuture, Transport, TransportError, TransportErrorKind,
};

use sluice_common::catalog;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use sluice_common::sync::Recover;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::spool::Spool;

/// One log, serialized, with its optional FIFO group and dedup key.
#[derive(Debug, Clone)]
pub struct Log {
    json: String,
    group: Option<String>,
    dedup_key: Option<String>,
}

impl Log {
    /// A log from a JSON object.
    pub fn from_value(value: &Value) -> Result<Log, ProduceError> {
        if !value.is_object() {
            return Err(ProduceError::NotAnObject);
        }
        Ok(Log {
            json: sqs_safe_json(value.to_string()),
            group: None,
            dedup_key: None,
        })
    }

    /// A log from JSON text, which must be one object. Characters SQS refuses are escaped.
    pub fn from_json(json: impl Into<String>) -> Result<Log, ProduceError> {
        let json = json.into();
        match serde_json::from_str::<serde::de::IgnoredAny>(&json) {
            Ok(_) if json.trim_start().starts_with('{') => Ok(Log {
                json: sqs_safe_json(json.trim().to_owned()),
                group: None,
                dedup_key: None,
            }),
            _ => Err(ProduceError::NotAnObject),
        }
    }

    /// FIFO: the message group of this log (overrides `group_field`). A group id SQS would
    /// refuse becomes a stable hash of it ([`sqs_group_id`]); an empty one is ignored.
    pub fn with_group(mut self, group: impl Into<String>) -> Self {
        let group = group.into();
        self.group = (!group.is_empty()).then(|| sqs_group_id(&group));
        self
    }

    /// FIFO with [`DedupMode::CallerKeys`]: this log's idempotency key.
    pub fn with_dedup_key(mut self, key: impl Into<String>) -> Self {
        self.dedup_key = Some(key.into());
        self
    }

    /// The log's JSON text as it will be sent, with the characters SQS refuses escaped.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The FIFO group this log goes to, when it has its own.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

/// Why the producer did not take a log, or why a durable send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    /// The buffer (`buffer_bytes`) has no room and the log was not taken: shed under
    /// [`FullPolicy::Shed`], or a durable send refused whole.
    #[error("the producer's buffer is full (producer.buffer_bytes); the log was not taken")]
    Full,
    /// The log is not a JSON object (or the text is not JSON).
    #[error("a log must be a JSON object")]
    NotAnObject,
    /// The log alone is larger than a message may be; it was refused at once, never sent.
    #[error("a log of {bytes} bytes cannot fit a message of at most {max} bytes")]
    TooLarge {
        /// The log's size in bytes, its newline included.
        bytes: usize,
        /// `max_message_bytes`.
        max: usize,
    },
    /// The producer's background task is gone ([`Producer::close`] was called): nothing more is
    /// taken. A durable send gets it too when its logs were dropped at shutdown with no spool.
    #[error("the producer is closed")]
    Closed,
    /// One log of a durable send was refused by the queue for good (and written to the reject
    /// file): `index` is its place in the send.
    #[error("the queue refused log {index}: {reason}")]
    LogRejected {
        /// The refused log's 0-based place in the send (the first one, when several were).
        index: usize,
        /// The queue's reason.
        reason: String,
    },
}

/// Counters a caller can read (the same figures go to the `metrics` facade).
#[derive(Debug, Default)]
pub struct ProducerStats {
    /// Logs taken into the buffer.
    pub logs_accepted: AtomicU64,
    /// Logs dropped because the buffer was full (`send` under [`FullPolicy::Shed`], or `try_send`).
    pub logs_shed: AtomicU64,
    /// Logs refused for good: larger than `max_message_bytes` when sent, or refused by the queue
    /// (then written to the reject file).
    pub logs_rejected: AtomicU64,
    /// Logs lost at shutdown: the queue did not take them within `shutdown_timeout` and they could
    /// not be spooled.
    pub logs_dropped: AtomicU64,
    /// Messages the queue took on the direct path (replays from the spool not included).
    pub messages_sent: AtomicU64,
    /// Logs in those messages, refused ones not included.
    pub logs_sent: AtomicU64,
    /// Messages written to the spool.
    pub messages_spooled: AtomicU64,
    /// Messages sent from the spool once the queue took messages again.
    pub messages_replayed: AtomicU64,
    /// SendMessageBatch calls completed on the direct path, failed ones included.
    pub batches: AtomicU64,
    /// Batches (direct or replayed) that the queue did not take whole; each is retried or spooled.
    pub send_errors: AtomicU64,
    /// Bytes of logs in memory now (packed, in flight or waiting for a retry), at most
    /// `buffer_bytes`.
    pub buffer_bytes: AtomicU64,
    /// Bytes of messages waiting in the spool now.
    pub spool_bytes: AtomicU64,
    /// Messages waiting in the spool now.
    pub spool_messages: AtomicU64,
    /// True while the spool holds messages: new messages queue behind them, so order is kept.
    pub spooling: AtomicBool,
}

/// Completion of a group of logs: fires once each is in the queue or in the spool.
struct Ticket {
    remaining: AtomicUsize,
    /// The first log (lowest index) refused for good, and why.
    rejected: Mutex<Option<(u32, String)>>,
    tx: Mutex<Option<oneshot::Sender<Result<(), ProduceError>>>>,
}

impl Ticket {
    fn new(n: usize) -> (Arc<Ticket>, oneshot::Receiver<Result<(), ProduceError>>) {
        let (tx, rx) = oneshot::channel();
        (
            Arc::new(Ticket {
                remaining: AtomicUsize::new(n),
                rejected: Mutex::new(None),
                tx: Mutex::new(Some(tx)),
            }),
            rx,
        )
    }

    /// One log of the send was refused for good (it is in the reject file). The send fails,
    /// naming the first refused log, but only once every other log of it is settled: an answer
    /// that says "the other logs were accepted" must be true when it is given.
    fn reject(&self, index: u32, reason: &str) {
        {
            let mut r = self.rejected.locked();
            if r.as_ref().is_none_or(|(i, _)| index < *i) {
                *r = Some((index, reason.to_owned()));
            }
        }
        self.settled(1);
    }

    fn done(&self, n: usize, result: &Result<(), ProduceError>) {
        if result.is_err() {
            if let Some(tx) = self.tx.locked().take() {
                let _ = tx.send(result.clone());
            }
            return;
        }
        self.settled(n);
    }

    /// `n` more logs are settled (delivered or rejected); the last one answers.
    fn settled(&self, n: usize) {
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n
            && let Some(tx) = self.tx.locked().take()
        {
            let rejected = self.rejected.locked().take();
            let _ = tx.send(match rejected {
                Some((index, reason)) => Err(ProduceError::LogRejected {
                    index: index as usize,
                    reason,
                }),
                None => Ok(()),
            });
        }
    }
}

struct Entry {
    log: Log,
    /// A durable send's ticket, and this log's place in that send.
    ticket: Option<(Arc<Ticket>, u32)>,
}

enum Cmd {
    Log(Entry),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<CloseReport>),
}

/// What [`Producer::close`] left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CloseReport {
    /// Messages still in the spool, sent at the next start.
    pub spooled_messages: u64,
    /// Logs lost because there was no spool and the queue did not take them in time.
    pub dropped_logs: u64,
}

struct Shared {
    tx: mpsc::UnboundedSender<Cmd>,
    budget: Arc<Semaphore>,
    config: Arc<ProducerConfig>,
    stats: Arc<ProducerStats>,
}

/// The producer handle: cheap to clone, all clones feed one background task.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
}

/// Names and help of the producer's metrics, for a Prometheus exporter.
pub fn describe_metrics() {
    catalog::describe(catalog::Exporter::Producer);
}

impl Producer {
    /// Checks the config, opens the spool (replaying what an earlier run left), and starts the
    /// background task on the current Tokio runtime.
    pub fn start<T: Transport>(config: ProducerConfig, transport: T) -> Result<Producer, String> {
        let mut config = config;
        config.validate().map_err(|e| e.to_string())?;
        if config.fifo {
            config.max_in_flight = 1;
        }
        let spool = match &config.spool {
            Some(sc) => {
                let (spool, recovery) = Spool::open(sc.clone()).map_err(|e| e.to_string())?;
                if recovery.records > 0 {
                    tracing::info!(
                        messages = recovery.records,
                        bytes = recovery.bytes,
                        dir = %sc.dir.display(),
                        "spool holds messages from an earlier run; replaying them first"
                    );
                }
                Some(spool)
            }
            None => None,
        };
        let config = Arc::new(config);
        let stats = Arc::new(ProducerStats::default());
        let budget = Arc::new(Semaphore::new(config.buffer_bytes));
        let (tx, rx) = mpsc::unbounded_channel();
        if let Some(s) = &spool {
            stats
                .spool_bytes
                .store(s.pending_bytes(), Ordering::Relaxed);
            stats.spool_messages.store(s.len(), Ordering::Relaxed);
        }
        dispatcher::spawn(
            config.clone(),
            transport,
            stats.clone(),
            budget.clone(),
            rx,
            spool,
        );
        Ok(Producer {
            shared: Arc::new(Shared {
                tx,
                budget,
                config,
                stats,
            }),
        })
    }

    /// The producer's counters, shared by every clone.
    pub fn stats(&self) -> &ProducerStats {
        &self.shared.stats
    }

    /// The config in effect: as given, with `max_in_flight` forced to 1 on a FIFO queue.
    pub fn config(&self) -> &ProducerConfig {
        &self.shared.config
    }

    /// Bytes of logs waiting in memory plus bytes waiting in the spool: how far behind the queue
    /// path is.
    pub fn backlog_bytes(&self) -> u64 {
        let s = &self.shared.stats;
        s.buffer_bytes.load(Ordering::Relaxed) + s.spool_bytes.load(Ordering::Relaxed)
    }

    fn log_from_value(&self, value: &Value) -> Result<Log, ProduceError> {
        let log = Log::from_value(value)?;
        Ok(self.with_group_of(log, value))
    }

    /// A log from its JSON text and the value parsed from it (what an ingest API has): the text
    /// is kept as sent, and on a FIFO queue the group comes from `group_field`, as with
    /// [`Producer::send`].
    pub fn log_from_json(&self, json: &str, value: &Value) -> Result<Log, ProduceError> {
        let log = Log::from_json(json)?;
        Ok(self.with_group_of(log, value))
    }

    fn with_group_of(&self, mut log: Log, value: &Value) -> Log {
        if self.shared.config.fifo
            && let Some(field) = &self.shared.config.group_field
            && let Some(v) = value.get(field)
        {
            let g = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            if !g.is_empty() {
                log.group = Some(sqs_group_id(&g));
            }
        }
        log
    }

    fn cost(&self, log: &Log) -> Result<u32, ProduceError> {
        let bytes = log.json.len() + 1;
        let max = self.shared.config.max_message_bytes;
        if bytes > max {
            tracing::debug!(
                bytes,
                max,
                "a log is larger than producer.max_message_bytes; refused"
            );
            metrics::counter!(catalog::PRODUCER_LOGS_TOTAL, "outcome" => "rejected").increment(1);
            self.shared
                .stats
                .logs_rejected
                .fetch_add(1, Ordering::Relaxed);
            return Err(ProduceError::TooLarge { bytes, max });
        }
        Ok(bytes as u32)
    }

    fn enqueue(&self, log: Log, ticket: Option<(Arc<Ticket>, u32)>) -> Result<(), ProduceError> {
        self.shared
            .tx
            .send(Cmd::Log(Entry { log, ticket }))
            .map_err(|_| ProduceError::Closed)?;
        metrics::counter!(catalog::PRODUCER_LOGS_TOTAL, "outcome" => "accepted").increment(1);
        self.shared
            .stats
            .logs_accepted
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn shed(&self) -> ProduceError {
        metrics::counter!(catalog::PRODUCER_LOGS_TOTAL, "outcome" => "shed").increment(1);
        self.shared.stats.logs_shed.fetch_add(1, Ordering::Relaxed);
        ProduceError::Full
    }

    fn account(&self, bytes: u32) {
        let now = self
            .shared
            .stats
            .buffer_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed)
            + bytes as u64;
        metrics::gauge!(catalog::PRODUCER_BUFFER_BYTES).set(now as f64);
    }

    /// Queues one log (a JSON object). With [`FullPolicy::Block`] this waits while the buffer
    /// is full; with `Shed` a full buffer drops the log (counted) and says so.
    pub async fn send(&self, value: &Value) -> Result<(), ProduceError> {
        let log = self.log_from_value(value)?;
        self.send_log(log).await
    }

    /// [`Producer::send`] for a log already serialized.
    pub async fn send_log(&self, log: Log) -> Result<(), ProduceError> {
        let bytes = self.cost(&log)?;
        match self.shared.config.full_policy {
            FullPolicy::Block => {
                let permit = self
                    .shared
                    .budget
                    .acquire_many(bytes)
                    .await
                    .map_err(|_| ProduceError::Closed)?;
                permit.forget();
            }
            FullPolicy::Shed => match self.shared.budget.try_acquire_many(bytes) {
                Ok(p) => p.forget(),
                Err(_) => return Err(self.shed()),
            },
        }
        self.account(bytes);
        self.enqueue(log, None)
    }

    /// Queues one log without ever waiting: a full buffer drops it (counted as shed). What a
    /// request path uses, e.g. the tower layer.
    pub fn try_send(&self, value: &Value) -> Result<(), ProduceError> {
        let log = self.log_from_value(value)?;
        self.try_send_log(log)
    }

    /// [`Producer::try_send`] for a log already serialized: never waits; a full buffer drops it
    /// (counted as shed) and returns [`ProduceError::Full`].
    pub fn try_send_log(&self, log: Log) -> Result<(), ProduceError> {
        let bytes = self.cost(&log)?;
        match self.shared.budget.try_acquire_many(bytes) {
            Ok(p) => p.forget(),
            Err(_) => return Err(self.shed()),
        }
        self.account(bytes);
        self.enqueue(log, None)
    }

    /// Takes all the logs or none (a full buffer refuses at once, counted as `refused`), and
    /// returns once every one of them is in the queue or in the spool: the point where an
    /// ingest API may answer 202.
    pub async fn send_durable(&self, values: &[Value]) -> Result<(), ProduceError> {
        let mut logs = Vec::with_capacity(values.len());
        for v in values {
            logs.push(self.log_from_value(v)?);
        }
        self.send_logs_durable(logs).await
    }

    /// [`Producer::send_durable`] for logs already serialized: all or none are taken, and it
    /// returns once each is in the queue or in the spool. An empty list succeeds at once.
    pub async fn send_logs_durable(&self, logs: Vec<Log>) -> Result<(), ProduceError> {
        if logs.is_empty() {
            return Ok(());
        }
        let mut total = 0u32;
        for log in &logs {
            total = total.saturating_add(self.cost(log)?);
        }
        match self.shared.budget.try_acquire_many(total) {
            Ok(p) => p.forget(),
            Err(_) => {
                metrics::counter!(catalog::PRODUCER_LOGS_TOTAL, "outcome" => "refused")
                    .increment(logs.len() as u64);
                return Err(ProduceError::Full);
            }
        }
        self.account(total);
        let (ticket, rx) = Ticket::new(logs.len());
        for (i, log) in logs.into_iter().enumerate() {
            self.enqueue(log, Some((ticket.clone(), i as u32)))?;
        }
        rx.await.map_err(|_| ProduceError::Closed)?
    }

    /// Sends what is packed now, and returns once everything taken so far is in the queue or in
    /// the spool.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Sends what is left (for at most `shutdown_timeout`), spools the rest, and stops the
    /// background task.
    pub async fn close(&self) -> CloseReport {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(Cmd::Close(tx)).is_err() {
            return CloseReport::default();
        }
        rx.await.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::send::log_spans;
    use crate::spool::SpoolConfig;
    use crate::testing::FakeQueue;
    use serde_json::json;
    use sha2::{Digest, Sha256};
    use std::time::Duration;
    use tokio::time::Instant;

    fn log(i: usize) -> Value {
        json!({"request_id": format!("r{i}"), "ts": 1, "method": "GET", "path": "/x", "status": 200, "latency_ms": 1, "user": format!("u{}", i % 3)})
    }

    #[tokio::test]
    async fn packs_logs_into_few_messages_and_batches() {
        let q = FakeQueue::new();
        let p = Producer::start(
            ProducerConfig {
                max_message_bytes: 4096,
                linger: Duration::from_millis(20),
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        for i in 0..500 {
            p.send(&log(i)).await.unwrap();
        }
        p.flush().await;
        let msgs = q.messages();
        let logs: usize = msgs.iter().map(|m| m.body.lines().count()).sum();
        assert_eq!(logs, 500);
        assert!(msgs.iter().all(|m| m.body.len() <= 4096));
        // ~110 bytes a log: ~37 a message.
        assert!(msgs.len() <= 20, "{} messages", msgs.len());
        assert!(
            q.calls() <= msgs.len().div_ceil(10) + 2,
            "{} calls",
            q.calls()
        );
        assert!(
            msgs.iter()
                .all(|m| m.group_id.is_none() && m.dedup_id.is_none())
        );
        assert_eq!(p.close().await, CloseReport::default());
    }

    #[tokio::test]
    async fn fifo_messages_get_groups_and_content_hash_dedup_ids() {
        let q = FakeQueue::new();
        let p = Producer::start(
            ProducerConfig {
                fifo: true,
                group_field: Some("user".into()),
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        for i in 0..30 {
            p.send(&log(i)).await.unwrap();
        }
        p.send(&json!({"request_id": "nogroup"})).await.unwrap();
        p.flush().await;
        let msgs = q.messages();
        let mut groups: Vec<_> = msgs.iter().filter_map(|m| m.group_id.clone()).collect();
        groups.sort();
        assert_eq!(groups, vec!["sluice", "u0", "u1", "u2"]);
        for m in &msgs {
            assert_eq!(
                m.dedup_id.as_deref(),
                Some(hex::encode(Sha256::digest(m.body.as_bytes())).as_str())
            );
            let g = m.group_id.as_deref().unwrap();
            for line in m.body.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                assert_eq!(v.get("user").and_then(Value::as_str).unwrap_or("sluice"), g);
            }
        }
        // Order inside a group is send order.
        let u0: Vec<String> = msgs
            .iter()
            .filter(|m| m.group_id.as_deref() == Some("u0"))
            .flat_map(|m| m.body.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let want: Vec<String> = (0..30)
            .filter(|i| i % 3 == 0)
            .map(|i| log(i).to_string())
            .collect();
        assert_eq!(u0, want);
    }

    #[tokio::test]
    async fn caller_keys_make_the_dedup_id() {
        let q = FakeQueue::new();
        let p = Producer::start(
            ProducerConfig {
                fifo: true,
                dedup: DedupMode::CallerKeys,
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        p.send_log(Log::from_value(&log(1)).unwrap().with_dedup_key("k1"))
            .await
            .unwrap();
        p.flush().await;
        let mut h = Sha256::new();
        h.update(b"k1");
        h.update([0u8]);
        assert_eq!(
            q.messages()[0].dedup_id.as_deref(),
            Some(hex::encode(h.finalize()).as_str())
        );
    }

    #[tokio::test]
    async fn partial_batch_failures_are_retried_until_sent() {
        let q = FakeQueue::new();
        q.fail_entries_every(3); // every third entry of a call fails, transiently
        let p = Producer::start(
            ProducerConfig {
                max_message_bytes: 1024,
                retry_base: Duration::from_millis(1),
                send_attempts: 10,
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        for i in 0..300 {
            p.send(&log(i)).await.unwrap();
        }
        p.flush().await;
        let mut ids: Vec<String> = q
            .messages()
            .iter()
            .flat_map(|m| m.body.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 300);
        assert!(q.entry_failures() > 0);
    }

    #[tokio::test]
    async fn a_full_buffer_sheds_and_counts_or_blocks() {
        let q = FakeQueue::new();
        q.set_down(true);
        let cfg = ProducerConfig {
            max_message_bytes: 1024,
            buffer_bytes: 2048,
            full_policy: FullPolicy::Shed,
            retry_base: Duration::from_millis(5),
            ..Default::default()
        };
        let p = Producer::start(cfg.clone(), q.clone()).unwrap();
        let mut shed = 0;
        for i in 0..100 {
            if p.send(&log(i)).await == Err(ProduceError::Full) {
                shed += 1;
            }
        }
        assert!(shed > 70, "{shed}");
        assert_eq!(p.stats().logs_shed.load(Ordering::Relaxed), shed);
        assert!(p.stats().buffer_bytes.load(Ordering::Relaxed) <= 2048);
        q.set_down(false);
        p.flush().await;
        let sent: usize = q.messages().iter().map(|m| m.body.lines().count()).sum();
        assert_eq!(sent as u64 + shed, 100);

        // Block: the caller waits until the queue is back, and nothing is dropped.
        let q = FakeQueue::new();
        q.set_down(true);
        let p = Producer::start(
            ProducerConfig {
                full_policy: FullPolicy::Block,
                ..cfg
            },
            q.clone(),
        )
        .unwrap();
        let sender = {
            let p = p.clone();
            tokio::spawn(async move {
                for i in 0..100 {
                    p.send(&log(i)).await.unwrap();
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!sender.is_finished(), "a full buffer blocks the sender");
        q.set_down(false);
        sender.await.unwrap();
        p.flush().await;
        let sent: usize = q.messages().iter().map(|m| m.body.lines().count()).sum();
        assert_eq!(sent, 100);
        assert_eq!(p.stats().logs_shed.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_outage_spools_and_replays_in_order_then_goes_direct() {
        let dir = tempfile::tempdir().unwrap();
        let q = FakeQueue::new();
        q.set_down(true);
        let p = Producer::start(
            ProducerConfig {
                max_message_bytes: 1024,
                linger: Duration::from_millis(5),
                retry_base: Duration::from_millis(5),
                retry_max: Duration::from_millis(50),
                spool: Some(SpoolConfig::new(dir.path())),
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        let values: Vec<Value> = (0..200).map(log).collect();
        for chunk in values.chunks(20) {
            // Durable: returns once in the queue or the spool, though the queue is down.
            tokio::time::timeout(Duration::from_secs(5), p.send_durable(chunk))
                .await
                .expect("spooling answers while the queue is down")
                .unwrap();
        }
        assert!(p.stats().spooling.load(Ordering::Relaxed));
        assert!(p.stats().messages_spooled.load(Ordering::Relaxed) > 0);
        assert!(p.backlog_bytes() > 0);
        q.set_down(false);
        for i in 200..220 {
            p.send(&log(i)).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.stats().spooling.load(Ordering::Relaxed) || p.backlog_bytes() > 0 {
            assert!(Instant::now() < deadline, "spool never drained");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p.flush().await;
        let lines: Vec<String> = q
            .messages()
            .iter()
            .flat_map(|m| m.body.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let want: Vec<String> = (0..220).map(|i| log(i).to_string()).collect();
        assert_eq!(lines, want, "replayed in order, new logs after");
    }

    #[tokio::test]
    async fn close_spools_what_is_left_and_the_next_start_sends_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProducerConfig {
            retry_base: Duration::from_millis(5),
            shutdown_timeout: Duration::from_millis(200),
            spool: Some(SpoolConfig::new(dir.path())),
            ..Default::default()
        };
        let q = FakeQueue::new();
        q.set_down(true);
        let p = Producer::start(cfg.clone(), q.clone()).unwrap();
        for i in 0..50 {
            p.send(&log(i)).await.unwrap();
        }
        let report = p.close().await;
        assert!(report.spooled_messages > 0);
        assert_eq!(report.dropped_logs, 0);
        let q2 = FakeQueue::new();
        let p2 = Producer::start(cfg, q2.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while q2
            .messages()
            .iter()
            .map(|m| m.body.lines().count())
            .sum::<usize>()
            < 50
        {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        p2.close().await;
    }

    #[tokio::test]
    async fn close_replays_the_spool_while_the_queue_takes_it() {
        // An instance that spooled through an outage and is stopped once the queue is back (a
        // scale-in): its spool reaches the queue before it exits, not at a next start that may
        // never come.
        let dir = tempfile::tempdir().unwrap();
        let cfg = ProducerConfig {
            retry_base: Duration::from_millis(5),
            retry_max: Duration::from_millis(50),
            shutdown_timeout: Duration::from_secs(5),
            spool: Some(SpoolConfig::new(dir.path())),
            ..Default::default()
        };
        let q = FakeQueue::new();
        q.set_down(true);
        let p = Producer::start(cfg.clone(), q.clone()).unwrap();
        for i in 0..50 {
            p.send(&log(i)).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while p.stats().messages_spooled.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "nothing was spooled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        q.set_down(false);
        let report = p.close().await;
        assert_eq!(report.spooled_messages, 0, "{report:?}");
        assert_eq!(report.dropped_logs, 0);
        let lines: Vec<String> = q
            .messages()
            .iter()
            .flat_map(|m| m.body.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        let want: Vec<String> = (0..50).map(|i| log(i).to_string()).collect();
        assert_eq!(lines, want, "every log, in order, before close returned");
    }

    #[tokio::test]
    async fn refuses_what_can_never_be_sent() {
        let q = FakeQueue::new();
        let p = Producer::start(
            ProducerConfig {
                max_message_bytes: 1024,
                ..Default::default()
            },
            q,
        )
        .unwrap();
        let big = json!({"request_id": "x", "pad": "y".repeat(2000)});
        assert!(matches!(
            p.send(&big).await,
            Err(ProduceError::TooLarge { .. })
        ));
        assert_eq!(p.send(&json!([1])).await, Err(ProduceError::NotAnObject));
        assert!(Log::from_json("[1]").is_err());
        assert!(Log::from_json("{\"a\":1}").is_ok());
        assert!(
            ProducerConfig {
                max_batch_entries: 11,
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .names("max_batch_entries")
        );
    }

    #[test]
    fn characters_sqs_refuses_are_escaped_and_keep_the_content() {
        let value = json!({"request_id": "u", "note": "a\u{ffff}b\u{fffe}c\u{1}d\u{10000}"});
        let log = Log::from_value(&value).unwrap();
        assert!(log.json().chars().all(sqs_allows), "{}", log.json());
        assert!(log.json().contains("\\uffff") && log.json().contains("\\ufffe"));
        let back: Value = serde_json::from_str(log.json()).unwrap();
        assert_eq!(back, value, "the escapes mean the same characters");
        let raw = "{\"request_id\":\"u\",\"note\":\"x\u{ffff}\"}";
        let log = Log::from_json(raw).unwrap();
        assert!(log.json().chars().all(sqs_allows));
        assert_eq!(
            serde_json::from_str::<Value>(log.json()).unwrap(),
            serde_json::from_str::<Value>(raw).unwrap()
        );
    }

    #[test]
    fn group_ids_sqs_would_refuse_become_a_stable_valid_one() {
        assert_eq!(sqs_group_id("tenant-7"), "tenant-7");
        for bad in ["with space", "ünïcode", &"g".repeat(129), "tab\t"] {
            let g = sqs_group_id(bad);
            assert_eq!(sqs_group_id(&g), g, "{bad}: {g} is valid");
            assert_eq!(sqs_group_id(bad), g, "stable");
            assert_ne!(
                sqs_group_id(&format!("{bad}x")),
                g,
                "distinct groups stay distinct"
            );
        }
        assert!(
            ProducerConfig {
                default_group: "has space".into(),
                ..Default::default()
            }
            .validate()
            .unwrap_err()
            .names("default_group")
        );
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn body_logs(q: &FakeQueue) -> Vec<Value> {
        q.messages()
            .iter()
            .flat_map(|m| {
                log_spans(&m.body)
                    .into_iter()
                    .map(|t| serde_json::from_str::<Value>(t).unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_refused_log_is_answered_only_once_every_other_log_of_the_send_is_settled() {
        // A send of four logs packed into several messages: log 2's message is refused first,
        // while the others still wait for a retry. The answer ("log 1 refused, the others
        // accepted") must not come before they are in the queue, and names the first refused.
        let (t, mut rx) = Ticket::new(4);
        t.reject(2, "InvalidMessageContents: later");
        assert!(rx.try_recv().is_err(), "answered with logs still in flight");
        t.done(1, &Ok(()));
        t.reject(1, "InvalidMessageContents: first");
        assert!(
            rx.try_recv().is_err(),
            "answered with a log still in flight"
        );
        t.done(1, &Ok(()));
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(ProduceError::LogRejected {
                index: 1,
                reason: "InvalidMessageContents: first".into()
            })
        );
        // A failure (shutdown, exhausted attempts) still answers at once.
        let (t, mut rx) = Ticket::new(2);
        t.reject(0, "refused");
        t.done(1, &Err(ProduceError::Closed));
        assert_eq!(rx.try_recv().unwrap(), Err(ProduceError::Closed));
    }

    #[tokio::test]
    async fn a_refused_packed_message_is_split_and_only_the_refused_log_is_left_out_and_kept() {
        for whole_call in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let rejects = dir.path().join("rejects.ndjson");
            let q = FakeQueue::new();
            q.refuse_containing(Some("POISON"), whole_call);
            let p = Producer::start(
                ProducerConfig {
                    linger: Duration::from_millis(5),
                    reject_file: Some(rejects.clone()),
                    ..Default::default()
                },
                q.clone(),
            )
            .unwrap();
            let mut values: Vec<Value> = (0..20).map(log).collect();
            values[7] = json!({"request_id": "bad", "note": "POISON"});
            let err = p.send_durable(&values).await.unwrap_err();
            assert_eq!(
                err,
                ProduceError::LogRejected {
                    index: 7,
                    reason: format!(
                        "{}; it is kept in the reject file {}",
                        if whole_call {
                            "InvalidMessageContents: the call carries a body the fake refuses"
                        } else {
                            "InvalidMessageContents: the fake refuses this body"
                        },
                        rejects.display()
                    )
                },
                "whole_call {whole_call}"
            );
            // The other 19 logs, packed with it, are all in the queue.
            p.flush().await;
            let sent = body_logs(&q);
            let mut want = values.clone();
            want.remove(7);
            for v in &want {
                assert!(sent.contains(v), "{v} missing (whole_call {whole_call})");
            }
            // The refused one is kept, with its reason.
            let kept = std::fs::read_to_string(&rejects).unwrap();
            let line: Value = serde_json::from_str(kept.lines().next().unwrap()).unwrap();
            assert!(
                line["reason"]
                    .as_str()
                    .unwrap()
                    .contains("InvalidMessageContents")
            );
            assert_eq!(
                serde_json::from_str::<Value>(line["log"].as_str().unwrap()).unwrap(),
                values[7]
            );
            assert_eq!(p.stats().logs_rejected.load(Ordering::Relaxed), 1);
            // A try_send of a refused log (the tower layer's path) is kept the same way.
            p.try_send(&json!({"request_id": "bad2", "note": "POISON"}))
                .unwrap();
            p.flush().await;
            wait_for("the second reject is kept", || {
                std::fs::read_to_string(&rejects).unwrap().lines().count() == 2
            })
            .await;
            p.close().await;
        }
    }

    #[tokio::test]
    async fn a_spooled_message_the_queue_refuses_on_replay_keeps_its_other_logs_and_the_refused_one()
     {
        let dir = tempfile::tempdir().unwrap();
        let q = FakeQueue::new();
        q.set_down(true);
        let p = Producer::start(
            ProducerConfig {
                linger: Duration::from_millis(5),
                retry_base: Duration::from_millis(5),
                retry_max: Duration::from_millis(50),
                spool: Some(SpoolConfig::new(dir.path())),
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        let mut values: Vec<Value> = (0..30).map(log).collect();
        values[12] = json!({"request_id": "bad", "note": "POISON"});
        // Answered while the queue is down: in the spool, a 202 for an ingest API.
        p.send_durable(&values).await.unwrap();
        assert!(p.stats().messages_spooled.load(Ordering::Relaxed) > 0);
        q.refuse_containing(Some("POISON"), false);
        q.set_down(false);
        wait_for("the spool drains", || {
            !p.stats().spooling.load(Ordering::Relaxed) && p.backlog_bytes() == 0
        })
        .await;
        let sent = body_logs(&q);
        for (i, v) in values.iter().enumerate() {
            assert_eq!(sent.contains(v), i != 12, "log {i}");
        }
        let kept = std::fs::read_to_string(dir.path().join("rejected.ndjson")).unwrap();
        assert_eq!(kept.lines().count(), 1);
        assert!(kept.contains("POISON"));
        p.close().await;
    }
}
