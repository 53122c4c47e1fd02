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
//!   send learns which of its logs was refused ([`ProduceError::LogRejected`]).
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

#[cfg(feature = "kafka")]
mod config;
pub mod kafka;
pub mod layer;
pub mod spool;
pub mod sqs;
pub mod testing;
mod text;
mod transport;

pub use config::{ConfigProblem, DedupMode, FullPolicy, InvalidConfig, ProducerConfig};
pub use text::{sqs_allows, sqs_group_id, sqs_safe_json};
pub use transport::{
    EntryOutcome, OutMessage, SendFuture, Transport, TransportError, TransportErrorKind,
};

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::spool::{Position, Spool, SpoolError};

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

    pub fn json(&self) -> &str {
        &self.json
    }

    /// The FIFO group this log goes to, when it has its own.
    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error("the producer's buffer is full (producer.buffer_bytes); the log was not taken")]
    Full,
    #[error("a log must be a JSON object")]
    NotAnObject,
    #[error("a log of {bytes} bytes cannot fit a message of at most {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("the producer is closed")]
    Closed,
    #[error("the queue refused the message: {0}")]
    Rejected(String),
    /// One log of a durable send was refused by the queue for good (and written to the reject
    /// file): `index` is its place in the send.
    #[error("the queue refused log {index}: {reason}")]
    LogRejected { index: usize, reason: String },
}

/// Counters a caller can read (the same figures go to the `metrics` facade).
#[derive(Debug, Default)]
pub struct ProducerStats {
    pub logs_accepted: AtomicU64,
    pub logs_shed: AtomicU64,
    pub logs_rejected: AtomicU64,
    pub logs_dropped: AtomicU64,
    pub messages_sent: AtomicU64,
    pub logs_sent: AtomicU64,
    pub messages_spooled: AtomicU64,
    pub messages_replayed: AtomicU64,
    pub batches: AtomicU64,
    pub send_errors: AtomicU64,
    pub buffer_bytes: AtomicU64,
    pub spool_bytes: AtomicU64,
    pub spool_messages: AtomicU64,
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
            let mut r = self.rejected.lock().unwrap_or_else(|e| e.into_inner());
            if r.as_ref().is_none_or(|(i, _)| index < *i) {
                *r = Some((index, reason.to_owned()));
            }
        }
        self.settled(1);
    }

    fn done(&self, n: usize, result: &Result<(), ProduceError>) {
        if result.is_err() {
            if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(result.clone());
            }
            return;
        }
        self.settled(n);
    }

    /// `n` more logs are settled (delivered or rejected); the last one answers.
    fn settled(&self, n: usize) {
        if self.remaining.fetch_sub(n, Ordering::AcqRel) == n
            && let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            let rejected = self
                .rejected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
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
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "sluice_producer_logs_total",
        "Logs handed to the producer, by outcome: accepted, shed (buffer full, Shed policy), refused (buffer full, caller told), rejected (the queue refused the message), dropped (closed with no spool)."
    );
    describe_counter!(
        "sluice_producer_messages_total",
        "SQS messages the producer delivered, by path: direct, or replay (from the spool)."
    );
    describe_counter!(
        "sluice_producer_batches_total",
        "SendMessageBatch calls the producer made."
    );
    describe_counter!(
        "sluice_producer_send_errors_total",
        "Failed sends, by kind: throttled, unavailable (whole call), entry (one entry of a batch)."
    );
    describe_counter!(
        "sluice_producer_spooled_messages_total",
        "Messages written to the disk spool because the queue did not take them."
    );
    describe_counter!(
        "sluice_producer_spool_corrupt_total",
        "Spool records or segments that failed their checksum on replay (data loss on disk)."
    );
    describe_gauge!(
        "sluice_producer_buffer_bytes",
        "Bytes of logs held in the producer's memory."
    );
    describe_gauge!(
        "sluice_producer_spool_bytes",
        "Bytes of undelivered messages in the disk spool; above 0 the queue is not keeping up."
    );
    describe_gauge!(
        "sluice_producer_spool_messages",
        "Undelivered messages in the disk spool."
    );
    describe_gauge!(
        "sluice_producer_spooling",
        "1 while the producer writes to its spool instead of the queue."
    );
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
        let spooling = spool.as_ref().is_some_and(|s| !s.is_empty());
        if let Some(s) = &spool {
            stats
                .spool_bytes
                .store(s.pending_bytes(), Ordering::Relaxed);
            stats.spool_messages.store(s.len(), Ordering::Relaxed);
        }
        let dispatcher = Dispatcher {
            config: config.clone(),
            transport: Arc::new(transport),
            stats: stats.clone(),
            budget: budget.clone(),
            rx,
            open: HashMap::new(),
            ready: VecDeque::new(),
            tasks: JoinSet::new(),
            batches: HashMap::new(),
            next_batch: 0,
            spool,
            spooling,
            replay: None,
            replay_backoff: config.retry_base,
            next_replay: Instant::now(),
            direct_backoff: config.retry_base,
            direct_paused_until: None,
            flushers: Vec::new(),
            draining: false,
            rejects: RejectFile {
                path: config
                    .reject_file
                    .clone()
                    .or_else(|| config.spool.as_ref().map(|s| s.dir.join("rejected.ndjson"))),
            },
        };
        tokio::spawn(dispatcher.run());
        Ok(Producer {
            shared: Arc::new(Shared {
                tx,
                budget,
                config,
                stats,
            }),
        })
    }

    pub fn stats(&self) -> &ProducerStats {
        &self.shared.stats
    }

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
            metrics::counter!("sluice_producer_logs_total", "outcome" => "rejected").increment(1);
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
        metrics::counter!("sluice_producer_logs_total", "outcome" => "accepted").increment(1);
        self.shared
            .stats
            .logs_accepted
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn shed(&self) -> ProduceError {
        metrics::counter!("sluice_producer_logs_total", "outcome" => "shed").increment(1);
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
        metrics::gauge!("sluice_producer_buffer_bytes").set(now as f64);
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
                metrics::counter!("sluice_producer_logs_total", "outcome" => "refused")
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

/// Who waits for one log of a message: a durable send's ticket and the log's place in it.
type Waiter = Option<(Arc<Ticket>, u32)>;

/// A message ready to send, with what it holds of the buffer.
struct Sealed {
    sealed_at: Instant,
    msg: OutMessage,
    logs: usize,
    bytes: usize,
    /// One per log, in the body's order.
    waiters: Vec<Waiter>,
}

struct OpenMessage {
    body: String,
    logs: usize,
    bytes: usize,
    waiters: Vec<Waiter>,
    dedup: Option<Sha256>,
    since: Instant,
}

enum BatchKind {
    Direct,
    Replay { upto: Position, count: u64 },
}

/// What the queue made of one message, once the transport is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Sent,
    Rejected(String),
    Failed(String),
}

/// A log the queue refuses for good.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refused {
    /// Its place in the message body.
    at: usize,
    reason: String,
    text: String,
}

/// What became of one message: sent, or sent but for the logs the queue refused (a refused
/// message is split and its logs sent one by one), or not delivered now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Final {
    Sent,
    Partly(Vec<Refused>),
    Failed(String),
}

struct Done {
    id: u64,
    finals: Vec<Final>,
}

struct Dispatcher<T: Transport> {
    config: Arc<ProducerConfig>,
    transport: Arc<T>,
    stats: Arc<ProducerStats>,
    budget: Arc<Semaphore>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    open: HashMap<String, OpenMessage>,
    ready: VecDeque<Sealed>,
    tasks: JoinSet<Done>,
    /// Batches in flight: their messages stay here, so nothing is lost if a send is abandoned.
    batches: HashMap<u64, (BatchKind, Vec<Sealed>)>,
    next_batch: u64,
    spool: Option<Spool>,
    /// Messages go to the spool instead of the queue until it is drained.
    spooling: bool,
    replay: Option<u64>,
    replay_backoff: Duration,
    next_replay: Instant,
    direct_backoff: Duration,
    direct_paused_until: Option<Instant>,
    flushers: Vec<oneshot::Sender<()>>,
    /// A flush or close is waiting: send partial batches at once.
    draining: bool,
    rejects: RejectFile,
}

fn jittered(d: Duration) -> Duration {
    let f: f64 = rand::rng().random_range(0.5..1.0);
    d.mul_f64(f)
}

fn send_with_retries<T: Transport>(
    transport: Arc<T>,
    msgs: Vec<OutMessage>,
    attempts: u32,
    base: Duration,
    max: Duration,
) -> Pin<Box<dyn Future<Output = Vec<Outcome>> + Send>> {
    Box::pin(async move {
        let mut finals: Vec<Option<Outcome>> = vec![None; msgs.len()];
        let mut pending: Vec<usize> = (0..msgs.len()).collect();
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                let d = base.saturating_mul(1 << (attempt - 1).min(16)).min(max);
                tokio::time::sleep(jittered(d)).await;
            }
            let batch: Vec<OutMessage> = pending.iter().map(|&i| msgs[i].clone()).collect();
            metrics::counter!("sluice_producer_batches_total").increment(1);
            match transport.send(&batch).await {
                Err(e) if e.kind == TransportErrorKind::Refused => {
                    metrics::counter!("sluice_producer_send_errors_total", "kind" => e.kind.label())
                        .increment(1);
                    if let [i] = pending[..] {
                        finals[i] = Some(Outcome::Rejected(e.message));
                    } else {
                        // Which entry is it? Each alone, with the attempts left.
                        tracing::warn!(error = %e, messages = batch.len(), "SendMessageBatch refused; sending its messages one by one");
                        for &i in &pending {
                            let one = send_with_retries(
                                transport.clone(),
                                vec![msgs[i].clone()],
                                attempts - attempt,
                                base,
                                max,
                            )
                            .await;
                            finals[i] = one.into_iter().next();
                        }
                    }
                    pending.clear();
                    break;
                }
                Err(e) => {
                    metrics::counter!("sluice_producer_send_errors_total", "kind" => e.kind.label())
                        .increment(1);
                    tracing::warn!(error = %e, attempt = attempt + 1, messages = batch.len(), "SendMessageBatch failed");
                    last = e.message;
                }
                Ok(outcomes) => {
                    let mut still = Vec::new();
                    for (k, &i) in pending.iter().enumerate() {
                        match outcomes.get(k) {
                            Some(EntryOutcome::Sent) => finals[i] = Some(Outcome::Sent),
                            Some(EntryOutcome::Rejected(why)) => {
                                finals[i] = Some(Outcome::Rejected(why.clone()))
                            }
                            Some(EntryOutcome::Retry(why)) => {
                                metrics::counter!("sluice_producer_send_errors_total", "kind" => "entry")
                                    .increment(1);
                                last = why.clone();
                                still.push(i);
                            }
                            None => {
                                last = "the queue answered fewer entries than it was sent".into();
                                still.push(i);
                            }
                        }
                    }
                    pending = still;
                    if pending.is_empty() {
                        break;
                    }
                }
            }
        }
        finals
            .into_iter()
            .map(|f| f.unwrap_or_else(|| Outcome::Failed(last.clone())))
            .collect()
    })
}

/// The text of each log in a message body (NDJSON, or any whitespace-separated JSON values).
fn log_spans(body: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(Ok(_)) = stream.next() {
        let end = stream.byte_offset();
        spans.push(body[start..end].trim());
        start = end;
    }
    if spans.is_empty() {
        spans.push(body);
    }
    spans
}

/// Sends messages, and splits any the queue refuses: its logs go one by one, so only a log the
/// queue itself refuses is left out (and reported), never its neighbours.
/// How the logs of a split message are batched again: SendMessageBatch's limits.
#[derive(Clone, Copy)]
struct BatchLimits {
    entries: usize,
    bytes: usize,
}

async fn deliver<T: Transport>(
    transport: Arc<T>,
    msgs: Vec<OutMessage>,
    attempts: u32,
    (base, max): (Duration, Duration),
    limits: BatchLimits,
) -> Vec<Final> {
    let outcomes = send_with_retries(transport.clone(), msgs.clone(), attempts, base, max).await;
    let mut finals = Vec::with_capacity(outcomes.len());
    for (msg, outcome) in msgs.into_iter().zip(outcomes) {
        finals.push(match outcome {
            Outcome::Sent => Final::Sent,
            Outcome::Failed(why) => Final::Failed(why),
            Outcome::Rejected(why) => {
                let spans = log_spans(&msg.body);
                if spans.len() <= 1 {
                    Final::Partly(vec![Refused {
                        at: 0,
                        reason: why,
                        text: msg.body.clone(),
                    }])
                } else {
                    tracing::warn!(reason = %why, logs = spans.len(), "the queue refused a packed message; sending its logs one by one");
                    let singles: Vec<OutMessage> = spans
                        .iter()
                        .map(|t| OutMessage {
                            body: (*t).to_owned(),
                            group_id: msg.group_id.clone(),
                            dedup_id: msg
                                .dedup_id
                                .as_ref()
                                .map(|_| hex(&Sha256::digest(t.as_bytes()))),
                            delay_seconds: msg.delay_seconds,
                        })
                        .collect();
                    let mut each = Vec::with_capacity(singles.len());
                    let mut rest = singles.as_slice();
                    while !rest.is_empty() {
                        let mut n = 0;
                        let mut bytes = 0;
                        while n < rest.len()
                            && n < limits.entries
                            && (n == 0 || bytes + rest[n].body.len() <= limits.bytes)
                        {
                            bytes += rest[n].body.len();
                            n += 1;
                        }
                        let (chunk, tail) = rest.split_at(n);
                        each.extend(
                            send_with_retries(transport.clone(), chunk.to_vec(), attempts, base, max)
                                .await,
                        );
                        rest = tail;
                    }
                    let mut refused = Vec::new();
                    let mut failed = None;
                    for (at, (o, t)) in each.into_iter().zip(&spans).enumerate() {
                        match o {
                            Outcome::Sent => {}
                            Outcome::Rejected(reason) => refused.push(Refused {
                                at,
                                reason,
                                text: (*t).to_owned(),
                            }),
                            Outcome::Failed(why) => failed = Some(why),
                        }
                    }
                    // Not all through now: the whole message is tried again later (its logs
                    // already sent are rewritten to the same rows).
                    match failed {
                        Some(why) => Final::Failed(why),
                        None => Final::Partly(refused),
                    }
                }
            }
        });
    }
    finals
}

/// Where logs the queue refuses for good are kept.
struct RejectFile {
    path: Option<std::path::PathBuf>,
}

impl RejectFile {
    /// Keeps a refused log (fsynced, with the directory entry of a new file) and says so at
    /// ERROR; never loses it silently. Returns where it is, for the answer to the sender.
    fn keep(&self, r: &Refused, group: Option<&str>) -> String {
        metrics::counter!("sluice_producer_logs_total", "outcome" => "rejected").increment(1);
        let Some(path) = &self.path else {
            tracing::error!(reason = %r.reason, log = %r.text, "the queue refused a log for good; set producer.reject_file (or a spool) to keep such logs in a file");
            return "it is written only to sluice's ERROR log (set producer.reject_file to keep such logs in a file)".into();
        };
        let mut line = serde_json::json!({
            "at_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            "reason": r.reason,
            "group": group,
            "log": r.text,
        })
        .to_string();
        line.push('\n');
        let written = (|| -> std::io::Result<()> {
            use std::io::Write as _;
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
            if let Some(dir) = dir {
                std::fs::create_dir_all(dir)?;
            }
            let new = !path.exists();
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let before = f.metadata()?.len();
            // One write of the whole line; on failure (a full disk) the file is cut back, so
            // a half line never glues itself to the next record.
            if let Err(e) = f.write_all(line.as_bytes()).and_then(|()| f.sync_data()) {
                let _ = f.set_len(before);
                return Err(e);
            }
            if new && let Some(dir) = dir {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => {
                tracing::error!(reason = %r.reason, bytes = r.text.len(), file = %path.display(), "the queue refused a log for good; it is kept in the reject file");
                format!("it is kept in the reject file {}", path.display())
            }
            Err(e) => {
                tracing::error!(reason = %r.reason, error = %e, file = %path.display(), log = %r.text, "the queue refused a log for good and the reject file cannot be written");
                format!(
                    "the reject file {} could not be written ({e}): the log is only in sluice's ERROR log",
                    path.display()
                )
            }
        }
    }
}

impl<T: Transport> Dispatcher<T> {
    async fn run(mut self) {
        let mut closing: Option<(Instant, Option<oneshot::Sender<CloseReport>>)> = None;
        let mut rx_open = true;
        loop {
            self.pump();
            self.answer_flushers();
            if let Some((deadline, _)) = &closing {
                // Closing also replays the spool while the queue takes it, until the deadline:
                // what an instance spooled reaches the queue before it goes, instead of waiting
                // on its disk for the next start (which, after a scale-in, may never come).
                let spool_left =
                    self.spooling && self.spool.as_ref().is_some_and(|s| !s.is_empty());
                let idle = self.open.is_empty()
                    && self.ready.is_empty()
                    && self.tasks.is_empty()
                    && !spool_left;
                if idle || Instant::now() >= *deadline {
                    let report = self.finish().await;
                    if let Some((_, Some(tx))) = closing.take() {
                        let _ = tx.send(report);
                    }
                    return;
                }
            }
            let wake = self.next_wake(closing.as_ref().map(|c| c.0));
            tokio::select! {
                cmd = self.rx.recv(), if rx_open => match cmd {
                    Some(Cmd::Log(e)) => self.add(e),
                    Some(Cmd::Flush(tx)) => {
                        self.seal_all();
                        self.draining = true;
                        self.flushers.push(tx);
                    }
                    Some(Cmd::Close(tx)) => {
                        self.seal_all();
                        self.draining = true;
                        rx_open = false;
                        closing = Some((Instant::now() + self.config.shutdown_timeout, Some(tx)));
                    }
                    None => {
                        self.seal_all();
                        self.draining = true;
                        rx_open = false;
                        closing = Some((Instant::now() + self.config.shutdown_timeout, None));
                    }
                },
                Some(done) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Ok(done) = done {
                        self.on_done(done);
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    self.seal_expired();
                    if let Some(s) = &mut self.spool
                        && let Err(e) = s.tick()
                    {
                        tracing::error!(error = %e, "spool fsync failed");
                    }
                }
            }
        }
    }

    fn next_wake(&self, deadline: Option<Instant>) -> Instant {
        let mut wake = Instant::now() + Duration::from_secs(1);
        for m in self.open.values() {
            wake = wake.min(m.since + self.config.linger);
        }
        if self.spooling && self.replay.is_none() {
            wake = wake.min(self.next_replay);
        }
        if let Some(t) = self.direct_paused_until {
            wake = wake.min(t);
        }
        if let Some(front) = self.ready.front() {
            wake = wake.min(front.sealed_at + self.config.linger);
        }
        if let Some(d) = deadline {
            wake = wake.min(d);
        }
        wake
    }

    fn group_of(&self, log: &Log) -> String {
        if !self.config.fifo {
            return String::new();
        }
        log.group
            .clone()
            .unwrap_or_else(|| self.config.default_group.clone())
    }

    fn add(&mut self, e: Entry) {
        let group = self.group_of(&e.log);
        let bytes = e.log.json.len() + 1;
        let fits = self
            .open
            .get(&group)
            .is_some_and(|m| m.body.len() + e.log.json.len() < self.config.max_message_bytes);
        if !fits && let Some(m) = self.open.remove(&group) {
            self.seal(group.clone(), m);
        }
        let dedup_on = self.config.fifo && self.config.dedup == DedupMode::CallerKeys;
        let m = self.open.entry(group).or_insert_with(|| OpenMessage {
            body: String::new(),
            logs: 0,
            bytes: 0,
            waiters: Vec::new(),
            dedup: dedup_on.then(Sha256::new),
            since: Instant::now(),
        });
        if !m.body.is_empty() {
            m.body.push('\n');
        }
        m.body.push_str(&e.log.json);
        m.logs += 1;
        m.bytes += bytes;
        if let Some(h) = &mut m.dedup {
            h.update(e.log.dedup_key.as_deref().unwrap_or(&e.log.json).as_bytes());
            h.update([0u8]);
        }
        m.waiters.push(e.ticket);
        if m.body.len() + 2 > self.config.max_message_bytes
            && let Some((g, m)) = self.open.remove_entry(&self.group_of(&e.log))
        {
            self.seal(g, m);
        }
    }

    fn seal(&mut self, group: String, m: OpenMessage) {
        let (group_id, dedup_id) = if self.config.fifo {
            let dedup = match m.dedup {
                Some(h) => hex(&h.finalize()),
                None => hex(&Sha256::digest(m.body.as_bytes())),
            };
            (Some(group), Some(dedup))
        } else {
            (None, None)
        };
        self.ready.push_back(Sealed {
            sealed_at: Instant::now(),
            msg: OutMessage {
                body: m.body,
                group_id,
                dedup_id,
                delay_seconds: self.config.delay_seconds,
            },
            logs: m.logs,
            bytes: m.bytes,
            waiters: m.waiters,
        });
    }

    fn seal_all(&mut self) {
        let mut groups: Vec<_> = self.open.drain().collect();
        groups.sort_by_key(|(_, m)| m.since);
        for (g, m) in groups {
            self.seal(g, m);
        }
    }

    fn seal_expired(&mut self) {
        let now = Instant::now();
        let expired: Vec<String> = self
            .open
            .iter()
            .filter(|(_, m)| m.since + self.config.linger <= now)
            .map(|(g, _)| g.clone())
            .collect();
        for g in expired {
            if let Some(m) = self.open.remove(&g) {
                self.seal(g, m);
            }
        }
    }

    /// Gives back the buffer a message held and tells its waiters.
    fn settle(&mut self, s: Sealed, result: Result<(), ProduceError>) {
        self.budget.add_permits(s.bytes);
        let now = self
            .stats
            .buffer_bytes
            .fetch_sub(s.bytes as u64, Ordering::Relaxed)
            .saturating_sub(s.bytes as u64);
        metrics::gauge!("sluice_producer_buffer_bytes").set(now as f64);
        for (t, _) in s.waiters.iter().flatten() {
            t.done(1, &result);
        }
    }

    /// Settles a message whose `refused` logs the queue would not take: they go to the reject
    /// file, and a durable send waiting on one of them learns which; the rest are delivered.
    fn settle_partly(&mut self, s: Sealed, refused: &[Refused]) {
        let group = s.msg.group_id.clone();
        let mut rejected_at = std::collections::HashMap::new();
        for r in refused {
            self.stats.logs_rejected.fetch_add(1, Ordering::Relaxed);
            let kept = self.rejects.keep(r, group.as_deref());
            rejected_at.insert(r.at, format!("{}; {kept}", r.reason));
        }
        self.budget.add_permits(s.bytes);
        let now = self
            .stats
            .buffer_bytes
            .fetch_sub(s.bytes as u64, Ordering::Relaxed)
            .saturating_sub(s.bytes as u64);
        metrics::gauge!("sluice_producer_buffer_bytes").set(now as f64);
        for (at, w) in s.waiters.iter().enumerate() {
            if let Some((t, index)) = w {
                match rejected_at.get(&at) {
                    Some(reason) => t.reject(*index, reason),
                    None => t.done(1, &Ok(())),
                }
            }
        }
    }

    fn publish_spool(&self) {
        if let Some(s) = &self.spool {
            self.stats
                .spool_bytes
                .store(s.pending_bytes(), Ordering::Relaxed);
            self.stats.spool_messages.store(s.len(), Ordering::Relaxed);
        }
        self.stats.spooling.store(self.spooling, Ordering::Relaxed);
        metrics::gauge!("sluice_producer_spooling").set(if self.spooling { 1.0 } else { 0.0 });
    }

    fn take_batch(&mut self) -> Vec<Sealed> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(front) = self.ready.front() {
            if batch.len() >= self.config.max_batch_entries
                || (!batch.is_empty() && bytes + front.msg.body.len() > self.config.max_batch_bytes)
            {
                break;
            }
            bytes += front.msg.body.len();
            batch.extend(self.ready.pop_front());
        }
        batch
    }

    fn spawn(&mut self, kind: BatchKind, sealed: Vec<Sealed>, msgs: Vec<OutMessage>) {
        let id = self.next_batch;
        self.next_batch += 1;
        let attempts = match kind {
            BatchKind::Direct => self.config.send_attempts,
            BatchKind::Replay { .. } => 1,
        };
        self.batches.insert(id, (kind, sealed));
        let transport = self.transport.clone();
        let backoff = (self.config.retry_base, self.config.retry_max);
        let limits = BatchLimits {
            entries: self.config.max_batch_entries,
            bytes: self.config.max_batch_bytes,
        };
        self.tasks.spawn(async move {
            let finals = deliver(transport, msgs, attempts, backoff, limits).await;
            Done { id, finals }
        });
    }

    fn direct_in_flight(&self) -> usize {
        self.batches
            .values()
            .filter(|(k, _)| matches!(k, BatchKind::Direct))
            .count()
    }

    /// Moves work along: spools while spooling, starts sends while there is room, starts a replay
    /// when one is due.
    fn pump(&mut self) {
        if self.spooling {
            self.spool_ready();
            self.start_replay();
            if self.spool.as_ref().is_none_or(|s| s.is_empty())
                && self.ready.is_empty()
                && self.replay.is_none()
                && self.direct_in_flight() == 0
            {
                self.spooling = false;
                tracing::info!("the queue takes messages again and the spool is empty");
                self.publish_spool();
            }
            if self.spooling {
                return;
            }
        }
        if let Some(t) = self.direct_paused_until {
            if Instant::now() < t {
                return;
            }
            self.direct_paused_until = None;
        }
        while self.batch_due() && self.direct_in_flight() < self.config.max_in_flight {
            let batch = self.take_batch();
            let msgs = batch.iter().map(|s| s.msg.clone()).collect();
            self.spawn(BatchKind::Direct, batch, msgs);
        }
    }

    /// A batch goes out when it is full, when its oldest message has waited `linger`, or when a
    /// flush or close asks: ten messages per call is a tenth of the SQS requests (and cost).
    fn batch_due(&self) -> bool {
        let Some(front) = self.ready.front() else {
            return false;
        };
        if self.draining || self.ready.len() >= self.config.max_batch_entries {
            return true;
        }
        if front.sealed_at + self.config.linger <= Instant::now() {
            return true;
        }
        let bytes: usize = self.ready.iter().map(|s| s.msg.body.len()).sum();
        bytes + self.config.max_message_bytes > self.config.max_batch_bytes
    }

    fn spool_ready(&mut self) {
        let Some(spool) = &mut self.spool else {
            return;
        };
        let mut spooled = Vec::new();
        while !self.ready.is_empty() {
            let n = self.ready.len().min(self.config.max_batch_entries);
            let msgs: Vec<OutMessage> = self.ready.iter().take(n).map(|s| s.msg.clone()).collect();
            match spool.append(&msgs) {
                Ok(()) => spooled.extend(self.ready.drain(..n)),
                Err(SpoolError::Full { .. }) => break,
                Err(e) => {
                    tracing::error!(error = %e, "cannot write the spool; messages wait in memory");
                    break;
                }
            }
        }
        if !spooled.is_empty() {
            metrics::counter!("sluice_producer_spooled_messages_total")
                .increment(spooled.len() as u64);
            self.stats
                .messages_spooled
                .fetch_add(spooled.len() as u64, Ordering::Relaxed);
            for s in spooled {
                self.settle(s, Ok(()));
            }
            self.publish_spool();
        }
    }

    fn start_replay(&mut self) {
        if self.replay.is_some() || Instant::now() < self.next_replay {
            return;
        }
        let Some(spool) = &mut self.spool else {
            return;
        };
        if spool.is_empty() {
            return;
        }
        match spool.peek(self.config.max_batch_entries, self.config.max_batch_bytes) {
            Ok((msgs, upto)) if msgs.is_empty() => {
                // Only damaged records were left: step over them.
                let left = spool.len();
                if let Err(e) = spool.commit(upto, left) {
                    tracing::error!(error = %e, "cannot move the spool cursor");
                }
                self.publish_spool();
            }
            Ok((msgs, upto)) => {
                let count = msgs.len() as u64;
                let id = self.next_batch;
                self.replay = Some(id);
                self.spawn(BatchKind::Replay { upto, count }, Vec::new(), msgs);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read the spool");
                self.next_replay = Instant::now() + self.config.retry_max;
            }
        }
    }

    fn on_done(&mut self, done: Done) {
        let Some((kind, sealed)) = self.batches.remove(&done.id) else {
            return;
        };
        match kind {
            BatchKind::Replay { upto, count } => {
                self.replay = None;
                let failed: Vec<&String> = done
                    .finals
                    .iter()
                    .filter_map(|f| match f {
                        Final::Failed(why) => Some(why),
                        _ => None,
                    })
                    .collect();
                if failed.is_empty() {
                    let sent = done.finals.len() as u64;
                    for f in &done.finals {
                        if let Final::Partly(refused) = f {
                            // Answered 202 long ago: the refused logs are kept in the reject
                            // file, never dropped with the message.
                            for r in refused {
                                self.stats.logs_rejected.fetch_add(1, Ordering::Relaxed);
                                let _ = self.rejects.keep(r, None);
                            }
                        }
                    }
                    metrics::counter!("sluice_producer_messages_total", "path" => "replay")
                        .increment(sent);
                    self.stats
                        .messages_replayed
                        .fetch_add(sent, Ordering::Relaxed);
                    if let Some(spool) = &mut self.spool
                        && let Err(e) = spool.commit(upto, count)
                    {
                        tracing::error!(error = %e, "cannot move the spool cursor; messages may be sent twice");
                    }
                    self.replay_backoff = self.config.retry_base;
                    self.next_replay = Instant::now();
                    self.publish_spool();
                } else {
                    self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    self.next_replay = Instant::now() + jittered(self.replay_backoff);
                    tracing::debug!(error = %failed[0], backoff = ?self.replay_backoff, "replay from the spool failed; retrying");
                    self.replay_backoff = (self.replay_backoff * 2).min(self.config.retry_max);
                }
            }
            BatchKind::Direct => {
                let mut failed = Vec::new();
                let mut why = String::new();
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                for (s, f) in sealed.into_iter().zip(done.finals) {
                    match f {
                        Final::Sent => {
                            metrics::counter!("sluice_producer_messages_total", "path" => "direct")
                                .increment(1);
                            self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .logs_sent
                                .fetch_add(s.logs as u64, Ordering::Relaxed);
                            self.settle(s, Ok(()));
                        }
                        Final::Partly(refused) => {
                            metrics::counter!("sluice_producer_messages_total", "path" => "direct")
                                .increment(1);
                            self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .logs_sent
                                .fetch_add((s.logs - refused.len()) as u64, Ordering::Relaxed);
                            self.settle_partly(s, &refused);
                        }
                        Final::Failed(reason) => {
                            why = reason;
                            failed.push(s);
                        }
                    }
                }
                if failed.is_empty() {
                    self.direct_backoff = self.config.retry_base;
                    return;
                }
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                // Back to the front, in order, ahead of anything newer.
                for s in failed.into_iter().rev() {
                    self.ready.push_front(s);
                }
                if self.spool.is_some() {
                    if !self.spooling {
                        tracing::warn!(error = %why, "the queue does not take messages; spooling to disk until it does");
                    }
                    self.spooling = true;
                    self.next_replay = Instant::now() + jittered(self.replay_backoff);
                    self.publish_spool();
                } else {
                    tracing::warn!(error = %why, backoff = ?self.direct_backoff, "the queue does not take messages; they wait in memory");
                    self.direct_paused_until = Some(Instant::now() + jittered(self.direct_backoff));
                    self.direct_backoff = (self.direct_backoff * 2).min(self.config.retry_max);
                }
            }
        }
    }

    fn answer_flushers(&mut self) {
        if self.flushers.is_empty() {
            return;
        }
        let pending_direct = self.direct_in_flight() > 0;
        if self.open.is_empty() && self.ready.is_empty() && !pending_direct {
            for tx in self.flushers.drain(..) {
                let _ = tx.send(());
            }
            self.draining = false;
        }
    }

    /// At close: whatever did not make it goes to the spool, or is counted as dropped.
    async fn finish(&mut self) -> CloseReport {
        self.seal_all();
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let mut left: Vec<Sealed> = Vec::new();
        let mut ids: Vec<u64> = self.batches.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some((BatchKind::Direct, sealed)) = self.batches.remove(&id) {
                left.extend(sealed);
            }
        }
        left.extend(self.ready.drain(..));
        let mut dropped = 0u64;
        if !left.is_empty() {
            let msgs: Vec<OutMessage> = left.iter().map(|s| s.msg.clone()).collect();
            let spooled = match &mut self.spool {
                Some(spool) => match spool.append(&msgs) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot spool what is left at shutdown");
                        false
                    }
                },
                None => false,
            };
            for s in left {
                if spooled {
                    self.settle(s, Ok(()));
                } else {
                    dropped += s.logs as u64;
                    self.settle(s, Err(ProduceError::Closed));
                }
            }
        }
        if dropped > 0 {
            tracing::error!(
                logs = dropped,
                "shutdown: the queue did not take these logs in time and there is no spool; they are lost"
            );
            metrics::counter!("sluice_producer_logs_total", "outcome" => "dropped")
                .increment(dropped);
            self.stats
                .logs_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        if let Some(s) = &mut self.spool {
            let _ = s.tick();
        }
        self.publish_spool();
        for tx in self.flushers.drain(..) {
            let _ = tx.send(());
        }
        CloseReport {
            spooled_messages: self.spool.as_ref().map_or(0, |s| s.len()),
            dropped_logs: dropped,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::SpoolConfig;
    use crate::testing::FakeQueue;
    use serde_json::json;

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
                Some(hex(&Sha256::digest(m.body.as_bytes())).as_str())
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
            Some(hex(&h.finalize()).as_str())
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
