//! The batching writer: items from many messages, grouped into BatchWriteItem calls.
//!
//! Each message hands its items to [`Writer::write`] and waits until all of them are written (or
//! one fails, or its deadline passes). Behind it a single batcher task drains whatever items are
//! ready (it never waits to fill a batch of 25 when fewer are ready), collapses duplicate keys
//! inside a batch (the last write wins, and every message that wrote that key is answered when the
//! surviving item lands), waits for the batch's WCU at the rate limiter, and sends it on a bounded
//! number of concurrent calls.
//!
//! A call's unprocessed items, and whole calls that failed with a retryable error (throttling,
//! 5xx, time-outs, connection errors), are sent again with exponential backoff and jitter until
//! written or until the deadline of every message waiting on them has passed: then those messages
//! fail and are nacked. Nothing is ever dropped as "done". This writer is the only retry owner:
//! clients must not retry underneath it.
//!
//! A validation error rejects a whole batch for one bad item; the batch is then written item by
//! item so only the message that carried the bad item fails.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerConfig};
use crate::item::Item;
use crate::rate::{Backoff, WcuLimiter};

/// DynamoDB's BatchWriteItem limits.
pub const MAX_BATCH_ITEMS: usize = 25;
pub const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// One BatchWriteItem call against the table. Implementations must not retry: the writer does.
pub trait BatchWriter: Send + Sync + 'static {
    /// Writes `items` (at most 25, keys distinct) as upserts. Returns which of them the table
    /// did not process (by index), and the capacity the call consumed if the table said.
    fn write_batch(
        &self,
        items: &[&Item],
    ) -> impl Future<Output = Result<BatchResult, WriteError>> + Send;
}

#[derive(Debug, Default, Clone)]
pub struct BatchResult {
    pub unprocessed: Vec<usize>,
    pub consumed_wcu: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteErrorKind {
    /// ProvisionedThroughputExceeded, ThrottlingException, RequestLimitExceeded: retry, slower.
    Throttled,
    /// 5xx, time-outs, connection errors: retry.
    Transient,
    /// The table rejected an item (ValidationException): retrying cannot help.
    InvalidItem,
    /// The table cannot be written at all now (missing, access denied): fail the messages; they
    /// come back through the queue.
    Fatal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    pub kind: WriteErrorKind,
    pub message: String,
}

impl WriteError {
    pub fn new(kind: WriteErrorKind, message: impl Into<String>) -> Self {
        WriteError {
            kind,
            message: message.into(),
        }
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            WriteErrorKind::Throttled | WriteErrorKind::Transient
        )
    }
}

/// Why a message's items were not all written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteFailure {
    #[error("deadline passed with items still unwritten")]
    Deadline,
    #[error("the table rejected an item: {0}")]
    Rejected(WriteError),
    #[error("write failed: {0}")]
    Failed(WriteError),
    #[error("the writer has stopped")]
    Stopped,
}

impl WriteFailure {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WriteFailure::Deadline => "deadline",
            WriteFailure::Rejected(_) => "invalid_item",
            WriteFailure::Failed(_) => "write_failed",
            WriteFailure::Stopped => "shutdown",
        }
    }
}

#[derive(Debug, Clone)]
pub struct WriterConfig {
    /// Items per BatchWriteItem call (1..=25).
    pub max_batch_items: usize,
    /// Bytes per call, counted as item sizes (at most 16 MiB).
    pub max_batch_bytes: usize,
    /// BatchWriteItem calls in flight at once.
    pub max_concurrent_requests: usize,
    /// Backoff between retries of unprocessed items or failed calls.
    pub backoff: Backoff,
    /// Longest one call may take before it counts as failed (and is retried).
    pub request_timeout: Duration,
    /// Items waiting for a batch; a full queue makes `write` wait (backpressure).
    pub queue_items: usize,
    /// When persistent table failures stop intake.
    pub breaker: BreakerConfig,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            max_batch_items: MAX_BATCH_ITEMS,
            max_batch_bytes: MAX_BATCH_BYTES,
            max_concurrent_requests: 8,
            backoff: Backoff {
                base: Duration::from_millis(25),
                cap: Duration::from_secs(2),
            },
            request_timeout: Duration::from_secs(10),
            queue_items: 2048,
            breaker: BreakerConfig::default(),
        }
    }
}

/// Live counters of one writer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Logs whose row was written (a collapsed duplicate counts with the item it joined).
    pub logs_written: AtomicU64,
    /// WCU the table reported consumed (or as computed when it did not say).
    pub wcu_consumed: AtomicU64,
    /// Calls refused with a throttling error.
    pub throttled_requests: AtomicU64,
    /// Items sent again after a call left them unprocessed.
    pub unprocessed_retried: AtomicU64,
    /// Items collapsed into a later item with the same key in one batch.
    pub duplicates_collapsed: AtomicU64,
    /// BatchWriteItem calls made.
    pub requests: AtomicU64,
    /// WCU of items handed to the writer and not yet written or given up: the write backlog.
    pub pending_wcu: AtomicU64,
    /// When the last successful write landed, in milliseconds since the epoch (0: none yet).
    pub last_write_ms: AtomicU64,
}

/// Counts one item's WCU in `pending_wcu` for as long as it lives.
struct Charge {
    stats: Arc<WriterStats>,
    wcu: u64,
}

impl Charge {
    fn new(stats: &Arc<WriterStats>, wcu: u32) -> Self {
        stats.pending_wcu.fetch_add(wcu as u64, Ordering::Relaxed);
        Charge {
            stats: stats.clone(),
            wcu: wcu as u64,
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.stats
            .pending_wcu
            .fetch_sub(self.wcu, Ordering::Relaxed);
    }
}

/// The completion of one message's items.
struct Tracker {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Result<(), WriteFailure>>>>,
    deadline: Instant,
}

impl Tracker {
    fn item_written(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(Ok(()));
        }
    }

    fn finish(&self, result: Result<(), WriteFailure>) {
        let sender = self.done.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(tx) = sender {
            let _ = tx.send(result);
        }
    }

    /// Still wanted: not failed, not answered, and the message is still waiting (a message whose
    /// timeout fired dropped its receiver: its remaining items are not sent).
    fn is_waiting(&self) -> bool {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }
}

struct Pending {
    item: Item,
    trackers: Vec<Arc<Tracker>>,
    charge: Charge,
}

impl Pending {
    fn is_waiting(&self) -> bool {
        self.trackers.iter().any(|t| t.is_waiting())
    }

    fn written(&self) {
        for t in &self.trackers {
            t.item_written();
        }
    }

    fn fail(&self, failure: &WriteFailure) {
        for t in &self.trackers {
            t.finish(Err(failure.clone()));
        }
    }

    fn earliest_deadline(&self) -> Option<Instant> {
        self.trackers
            .iter()
            .filter(|t| t.is_waiting())
            .map(|t| t.deadline)
            .min()
    }

    /// Fails the messages whose deadline has passed; true if anyone still waits.
    fn expire(&self, now: Instant) -> bool {
        for t in &self.trackers {
            if now >= t.deadline {
                t.finish(Err(WriteFailure::Deadline));
            }
        }
        self.is_waiting()
    }
}

/// The handle messages write through. Cloning is cheap; the batcher stops when every clone is
/// dropped and what was queued is done.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Pending>,
    stats: Arc<WriterStats>,
    limiter: Arc<WcuLimiter>,
    breaker: Arc<Breaker>,
}

impl Writer {
    /// Starts the batcher over `client`. The returned task ends after every `Writer` clone is
    /// dropped and all queued items are finished.
    pub fn spawn<W: BatchWriter>(
        client: Arc<W>,
        limiter: Arc<WcuLimiter>,
        config: WriterConfig,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(config.queue_items.max(1));
        let stats = Arc::new(WriterStats::default());
        let breaker = Arc::new(Breaker::new(config.breaker));
        let task = tokio::spawn(run_batcher(
            client,
            limiter.clone(),
            config,
            rx,
            stats.clone(),
            breaker.clone(),
        ));
        let writer = Writer {
            tx,
            stats,
            limiter,
            breaker,
        };
        (writer, task)
    }

    /// The circuit breaker this writer's outcomes drive; the pollers consult it.
    pub fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Seconds the write backlog takes at the current paced rate (None when unpaced).
    pub fn backlog_seconds(&self) -> Option<f64> {
        let rate = self.limiter.rate()?;
        let pending = self.stats.pending_wcu.load(Ordering::Relaxed) as f64;
        metrics::gauge!("sluice_write_backlog_wcu").set(pending);
        Some(pending / rate.max(1.0))
    }

    /// Writes all `items` (one message's logs), returning when every one is written, or the first
    /// failure. Dropping the future abandons the items not yet sent.
    pub async fn write(&self, items: Vec<Item>, deadline: Instant) -> Result<(), WriteFailure> {
        if items.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let tracker = Arc::new(Tracker {
            remaining: AtomicUsize::new(items.len()),
            done: Mutex::new(Some(tx)),
            deadline,
        });
        for item in items {
            let pending = Pending {
                charge: Charge::new(&self.stats, item.wcu()),
                item,
                trackers: vec![tracker.clone()],
            };
            if self.tx.send(pending).await.is_err() {
                return Err(WriteFailure::Stopped);
            }
        }
        rx.await.unwrap_or(Err(WriteFailure::Stopped))
    }
}

struct BatchBuilder<'a> {
    stats: &'a WriterStats,
    items: Vec<Pending>,
    index: HashMap<String, usize>,
    bytes: usize,
    max_items: usize,
    max_bytes: usize,
}

impl<'a> BatchBuilder<'a> {
    fn new(config: &WriterConfig, stats: &'a WriterStats) -> Self {
        BatchBuilder {
            stats,
            items: Vec::new(),
            index: HashMap::new(),
            bytes: 0,
            max_items: config.max_batch_items.clamp(1, MAX_BATCH_ITEMS),
            max_bytes: config.max_batch_bytes.clamp(1, MAX_BATCH_BYTES),
        }
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.max_items
    }

    /// Adds an item; gives it back when the batch has no room for it.
    fn try_push(&mut self, p: Pending) -> Result<(), Pending> {
        if !p.is_waiting() {
            return Ok(()); // its message gave up: do not send it
        }
        if let Some(&i) = self.index.get(p.item.key()) {
            // Same key twice in one batch: DynamoDB rejects that, and only the last write would
            // survive anyway. Keep the later item; answer both messages when it lands.
            let slot = &mut self.items[i];
            self.bytes = self.bytes - slot.item.size() + p.item.size();
            slot.item = p.item;
            slot.charge = p.charge; // the replaced item's charge is released
            slot.trackers.extend(p.trackers);
            metrics::counter!("sluice_duplicates_collapsed_total").increment(1);
            self.stats
                .duplicates_collapsed
                .fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let fits_bytes = self.bytes + p.item.size() <= self.max_bytes || self.items.is_empty();
        if self.is_full() || !fits_bytes {
            return Err(p);
        }
        self.bytes += p.item.size();
        self.index
            .insert(p.item.key().to_string(), self.items.len());
        self.items.push(p);
        Ok(())
    }
}

fn total_wcu(items: &[Pending]) -> u32 {
    items.iter().map(|p| p.item.wcu()).sum()
}

/// How long a batch that is not full waits for more items, when other writes are in flight.
/// Those keep the table busy meanwhile, so the wait costs no throughput and saves requests (each
/// one is signed, serialized and sent: the per-request cost dominates sluice's CPU). With no
/// other write in flight a batch leaves at once, so a quiet pipeline adds no latency.
const FILL_WAIT: Duration = Duration::from_millis(2);

async fn run_batcher<W: BatchWriter>(
    client: Arc<W>,
    limiter: Arc<WcuLimiter>,
    config: WriterConfig,
    mut rx: mpsc::Receiver<Pending>,
    stats: Arc<WriterStats>,
    breaker: Arc<Breaker>,
) {
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.max_concurrent_requests.max(1)));
    let mut calls = JoinSet::new();
    let mut carry: Option<Pending> = None;
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => break,
            },
        };
        let mut batch = BatchBuilder::new(&config, &stats);
        if let Err(p) = batch.try_push(first) {
            carry = Some(p);
        }
        while carry.is_none() && !batch.is_full() {
            match rx.try_recv() {
                Ok(p) => {
                    if let Err(p) = batch.try_push(p) {
                        carry = Some(p);
                    }
                }
                Err(_) => break,
            }
        }
        let others_in_flight =
            slots.available_permits() + 1 < config.max_concurrent_requests.max(1);
        if others_in_flight && carry.is_none() && !batch.is_full() {
            let until = tokio::time::Instant::now() + FILL_WAIT;
            while carry.is_none() && !batch.is_full() {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(p)) => {
                        if let Err(p) = batch.try_push(p) {
                            carry = Some(p);
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        if batch.items.is_empty() {
            continue;
        }
        // Tokens are taken before the batch leaves, while more items queue up for the next one.
        limiter.acquire(total_wcu(&batch.items)).await;
        let ctx = Ctx {
            client: client.clone(),
            limiter: limiter.clone(),
            config: config.clone(),
            stats: stats.clone(),
            breaker: breaker.clone(),
        };
        calls.spawn(send_batch(ctx, batch.items, Some(permit)));
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// What one batch's sending needs.
struct Ctx<W> {
    client: Arc<W>,
    limiter: Arc<WcuLimiter>,
    config: Arc<WriterConfig>,
    stats: Arc<WriterStats>,
    breaker: Arc<Breaker>,
}

impl<W> Clone for Ctx<W> {
    fn clone(&self) -> Self {
        Ctx {
            client: self.client.clone(),
            limiter: self.limiter.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
        }
    }
}

fn send_batch<W: BatchWriter>(
    ctx: Ctx<W>,
    mut pending: Vec<Pending>,
    permit: Option<OwnedSemaphorePermit>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let Ctx {
            client,
            limiter,
            config,
            stats,
            breaker,
        } = &ctx;
        let _permit = permit;
        let mut attempt: u32 = 0;
        loop {
            let now = Instant::now();
            pending.retain(|p| p.expire(now));
            let Some(earliest) = pending.iter().filter_map(Pending::earliest_deadline).min() else {
                return;
            };
            if attempt > 0 {
                limiter.acquire(total_wcu(&pending)).await;
            }
            let refs: Vec<&Item> = pending.iter().map(|p| &p.item).collect();
            let budget = config
                .request_timeout
                .min(earliest.saturating_duration_since(now))
                .max(Duration::from_millis(1));
            stats.requests.fetch_add(1, Ordering::Relaxed);
            let outcome = match tokio::time::timeout(budget, client.write_batch(&refs)).await {
                Ok(r) => r,
                Err(_) => Err(WriteError::new(
                    WriteErrorKind::Transient,
                    format!("BatchWriteItem took longer than {budget:?}"),
                )),
            };
            drop(refs);
            match outcome {
                Ok(result) => {
                    breaker.record_success();
                    metrics::counter!("sluice_batch_write_requests_total", "outcome" => "ok")
                        .increment(1);
                    let unprocessed: HashSet<usize> = result.unprocessed.into_iter().collect();
                    let (mut written_logs, mut written_wcu) = (0u64, 0u32);
                    let mut rest = Vec::with_capacity(unprocessed.len());
                    for (i, p) in pending.into_iter().enumerate() {
                        if unprocessed.contains(&i) {
                            rest.push(p);
                        } else {
                            written_logs += p.trackers.len() as u64;
                            written_wcu += p.item.wcu();
                            p.written();
                        }
                    }
                    metrics::counter!("sluice_logs_written_total").increment(written_logs);
                    let consumed = result.consumed_wcu.unwrap_or(written_wcu as f64);
                    stats
                        .logs_written
                        .fetch_add(written_logs, Ordering::Relaxed);
                    if written_logs > 0 {
                        let now_ms = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0, |d| d.as_millis() as u64);
                        stats.last_write_ms.fetch_max(now_ms, Ordering::Relaxed);
                    }
                    stats
                        .wcu_consumed
                        .fetch_add(consumed.round() as u64, Ordering::Relaxed);
                    limiter.on_written(consumed);
                    if rest.is_empty() {
                        return;
                    }
                    metrics::counter!("sluice_unprocessed_items_retried_total")
                        .increment(rest.len() as u64);
                    stats
                        .unprocessed_retried
                        .fetch_add(rest.len() as u64, Ordering::Relaxed);
                    tracing::debug!(
                        unprocessed = rest.len(),
                        attempt,
                        "retrying unprocessed items"
                    );
                    limiter.on_throttle();
                    pending = rest;
                }
                Err(e) if e.is_retryable() => {
                    let label = if e.kind == WriteErrorKind::Throttled {
                        metrics::counter!("sluice_throttled_requests_total").increment(1);
                        stats.throttled_requests.fetch_add(1, Ordering::Relaxed);
                        limiter.on_throttle();
                        "throttled"
                    } else {
                        breaker.record_failure(Instant::now().into_std(), &e.message);
                        "transient_error"
                    };
                    metrics::counter!("sluice_batch_write_requests_total", "outcome" => label)
                        .increment(1);
                    tracing::warn!(error = %e, items = pending.len(), attempt, outcome = label, "batch write failed; retrying");
                }
                Err(e) if e.kind == WriteErrorKind::InvalidItem && pending.len() > 1 => {
                    metrics::counter!("sluice_batch_write_requests_total", "outcome" => "invalid_item")
                        .increment(1);
                    tracing::warn!(error = %e, items = pending.len(), "batch rejected; writing its items one by one to find the bad one");
                    for p in pending {
                        send_batch(ctx.clone(), vec![p], None).await;
                    }
                    return;
                }
                Err(e) => {
                    let failure = if e.kind == WriteErrorKind::InvalidItem {
                        WriteFailure::Rejected(e)
                    } else {
                        breaker.record_failure(Instant::now().into_std(), &e.message);
                        WriteFailure::Failed(e)
                    };
                    metrics::counter!("sluice_batch_write_requests_total", "outcome" => failure.reason())
                        .increment(1);
                    tracing::warn!(error = %failure, items = pending.len(), "batch write failed; its messages will be nacked");
                    for p in &pending {
                        p.fail(&failure);
                    }
                    return;
                }
            }
            let wake = (Instant::now() + config.backoff.delay(attempt)).min(earliest);
            attempt = attempt.saturating_add(1);
            tokio::time::sleep_until(wake).await;
        }
    })
}
