//! The batching writer: items from many messages, grouped into BatchWriteItem calls.
//!
//! Each message hands all its items to [`Writer::write`] at once, with its place in the order of
//! receipt, and waits until every one is written or the message fails. One batcher task serves the
//! messages **oldest first**: a batch takes the items of the oldest message that still has some,
//! then the next oldest, so messages finish in the order they were received instead of all
//! together at the end (which is what round-robin service does to a packed backlog). It never
//! waits to fill a batch of 25 when fewer are ready, collapses duplicate keys inside a batch (the
//! log with the newest timestamp wins; every message that wrote that key is answered when the
//! surviving item lands), waits for the batch's WCU at the rate limiter, and sends it on a bounded
//! number of concurrent calls. A batch costs at most about a second of the paced rate, so large
//! items go a few at a time and never hold a batch at the limiter for minutes.
//!
//! **Waiting for capacity is not a failure.** A message fails with [`WriteFailure::Deadline`]
//! only when it makes no progress for its `timeout`:
//! - before its first item is taken into a batch, it is queueing: its clock is the writer's, which
//!   moves whenever any item lands or a batch waits for write capacity, so a backlog that drains
//!   at the paced rate never times anyone out, however long the queue;
//! - once served, its clock moves when one of its items lands, and stands still while a batch of
//!   its items waits for capacity. What runs it down is calls that fail or hang, retried with
//!   backoff: stuck work.
//!
//! A call's unprocessed items, and whole calls that failed with a retryable error (throttling,
//! 5xx, time-outs, connection errors), are sent again with exponential backoff and jitter until
//! written or until no message waits for them any more. Nothing is ever dropped as "done". This
//! writer is the only retry owner: clients must not retry underneath it.
//!
//! A validation error rejects a whole batch for one bad item; the batch is then written item by
//! item so only the message that carried the bad item fails, with [`WriteFailure::Rejected`].
//!
//! If the batcher stops (every [`Writer`] dropped, or the task dies), every message still waiting
//! is answered [`WriteFailure::Stopped`]: a write never hangs on a writer that is gone.

use crate::sync::Recover;
use sluice_common::catalog;
use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerConfig};
use crate::cache::WriteCache;
use crate::events::{BatchSplit, BatchWriteFailed, BatchWriteRetried, UnprocessedRetried};
use crate::item::Item;
use crate::pacer::{Consumed, Costs, Pacer, ThrottleCause};
use crate::rate::Backoff;

/// DynamoDB's BatchWriteItem limits.
pub const MAX_BATCH_ITEMS: usize = 25;
/// At most 16 MiB per BatchWriteItem call (DynamoDB's request limit), counted here as item sizes.
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

/// What a BatchWriteItem call that succeeded reports.
#[derive(Debug, Default, Clone)]
pub struct BatchResult {
    /// Indexes into the batch of the items the table did not process (UnprocessedItems): the writer
    /// sends them again. Empty: every item was written.
    pub unprocessed: Vec<usize>,
    /// What the call consumed in all, if the table said.
    pub consumed_wcu: Option<f64>,
    /// And on the table and each index (ReturnConsumedCapacity=INDEXES).
    pub consumed: Option<Consumed>,
}

/// How a failed call is treated, sorted by the [`BatchWriter`].
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

/// A failed BatchWriteItem call, as the [`BatchWriter`] reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct WriteError {
    /// How the writer treats it: retry (slower, for a throttle), split the batch, or fail.
    pub kind: WriteErrorKind,
    /// The error in words, with the table's own message.
    pub message: String,
    /// For a throttle: DynamoDB's ThrottlingReasons (which resource, which limit).
    pub causes: Vec<ThrottleCause>,
}

impl WriteError {
    /// An error with no throttle causes.
    pub fn new(kind: WriteErrorKind, message: impl Into<String>) -> Self {
        WriteError {
            kind,
            message: message.into(),
            causes: Vec::new(),
        }
    }

    /// The same error, with DynamoDB's ThrottlingReasons (empty when it gave none).
    pub fn with_causes(mut self, causes: Vec<ThrottleCause>) -> Self {
        self.causes = causes;
        self
    }

    /// True for throttles and transient errors: the same call may succeed later.
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
    /// The message made no progress for its `timeout`, with items still unwritten; some may have
    /// been written (an upsert written twice is harmless).
    #[error("no progress for the message timeout with items still unwritten")]
    Deadline,
    /// The table refused one of the message's items on its own (ValidationException, found by
    /// writing the batch item by item): poison, no retry can help.
    #[error("the table rejected an item: {0}")]
    Rejected(WriteError),
    /// A call failed for good (table missing, access denied): the message goes back to the queue,
    /// and the failure counts towards the breaker.
    #[error("write failed: {0}")]
    Failed(WriteError),
    /// The writer's batcher is gone (every [`Writer`] dropped, or its task died).
    #[error("the writer has stopped")]
    Stopped,
}

impl WriteFailure {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            WriteFailure::Deadline => "timeout",
            WriteFailure::Rejected(_) => "invalid_item",
            WriteFailure::Failed(_) => "write_failed",
            WriteFailure::Stopped => "shutdown",
        }
    }
}

/// How the [`Writer`] batches, retries and bounds its calls. Defaults: 25 items and 16 MiB per
/// call, 8 calls in flight, retries from 25 ms to 2 s, 10 s per call, the default breaker.
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
    /// When persistent table failures stop intake.
    pub breaker: BreakerConfig,
    /// The look-aside write cache: a log whose key and content were written within its window
    /// is answered without a write. None: every log is written.
    pub cache: Option<Arc<WriteCache>>,
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
            breaker: BreakerConfig::default(),
            cache: None,
        }
    }
}

/// Seconds of the paced rate one batch may cost (at least one item always goes).
const BATCH_SECONDS: f64 = 1.0;

/// How often the writer looks for messages that stopped making progress.
const EXPIRY_TICK: Duration = Duration::from_millis(100);

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
    /// Items collapsed into another item with the same key in one batch.
    pub duplicates_collapsed: AtomicU64,
    /// BatchWriteItem calls made.
    pub requests: AtomicU64,
    /// WCU of items handed to the writer and not yet written or given up: the write backlog.
    pub pending_wcu: AtomicU64,
    /// When the last successful write landed, in milliseconds since the epoch (0: none yet).
    pub last_write_ms: AtomicU64,
    /// WCU the written items cost, as sized (compressed items at their compressed size).
    pub wcu_written: AtomicU64,
    /// WCU the written items would have cost written plain.
    pub plain_wcu_written: AtomicU64,
    /// Logs answered from the write cache, without a write.
    pub cache_skipped_logs: AtomicU64,
    /// WCU the cache saved: what the skipped logs would have cost plain.
    pub cache_saved_wcu: AtomicU64,
}

/// What a run cost and saved, from a writer's counters: the bill.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Bill {
    /// Logs delivered: written, or answered from the write cache.
    pub logs: u64,
    /// WCU the table consumed.
    pub wcu: u64,
    /// Logs per WCU consumed (0 when nothing was consumed).
    pub logs_per_wcu: f64,
    /// WCU per million logs at that rate.
    pub wcu_per_million_logs: f64,
    /// Share of the plain, uncached cost compression saved (0..1).
    pub saved_by_compression: f64,
    /// Share of the plain, uncached cost the write cache saved (0..1).
    pub saved_by_cache: f64,
    /// Logs answered from the write cache.
    pub cache_skipped_logs: u64,
}

impl WriterStats {
    /// The bill so far.
    pub fn bill(&self) -> Bill {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let logs = get(&self.logs_written) + get(&self.cache_skipped_logs);
        let wcu = get(&self.wcu_consumed);
        let plain = get(&self.plain_wcu_written);
        let baseline = (plain + get(&self.cache_saved_wcu)).max(1) as f64;
        let ratio = |n: u64, d: f64| if d > 0.0 { n as f64 / d } else { 0.0 };
        let logs_per_wcu = ratio(logs, wcu as f64);
        Bill {
            logs,
            wcu,
            logs_per_wcu,
            wcu_per_million_logs: if logs_per_wcu > 0.0 {
                1e6 / logs_per_wcu
            } else {
                0.0
            },
            saved_by_compression: ratio(plain.saturating_sub(get(&self.wcu_written)), baseline),
            saved_by_cache: ratio(get(&self.cache_saved_wcu), baseline),
            cache_skipped_logs: get(&self.cache_skipped_logs),
        }
    }
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

/// The completion of one message's items, and its progress clock.
struct Tracker {
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<Result<(), WriteFailure>>>>,
    timeout: Duration,
    /// The last sign of progress: queued, an item landed, write capacity granted.
    alive_at: Mutex<Instant>,
    /// One of its items has been taken into a batch.
    started: AtomicBool,
    /// Batches holding its items that are waiting for write capacity right now.
    waiting_capacity: AtomicUsize,
}

impl Tracker {
    fn touch(&self) {
        *self.alive_at.locked() = Instant::now();
    }

    fn alive_at(&self) -> Instant {
        *self.alive_at.locked()
    }

    /// Moves the clock forward to `at` (never back); returns where it stands.
    fn advance_to(&self, at: Instant) -> Instant {
        let mut a = self.alive_at.locked();
        *a = (*a).max(at);
        *a
    }

    fn item_written(&self) {
        self.touch();
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish(Ok(()));
        }
    }

    fn finish(&self, result: Result<(), WriteFailure>) {
        let sender = self.done.locked().take();
        if let Some(tx) = sender {
            let _ = tx.send(result);
        }
    }

    /// Still wanted: not failed, not answered, and the message is still waiting (a message that
    /// gave up dropped its receiver: its remaining items are not sent).
    fn is_waiting(&self) -> bool {
        self.done
            .locked()
            .as_ref()
            .is_some_and(|tx| !tx.is_closed())
    }
}

/// Marks trackers (and, for a first attempt, the writer) as waiting for write capacity while it
/// lives; their clocks stand still meanwhile, and move on when it drops.
struct CapacityWait<'a> {
    trackers: Vec<Arc<Tracker>>,
    queue: Option<&'a Queue>,
}

impl<'a> CapacityWait<'a> {
    fn new(pending: &[Pending], queue: Option<&'a Queue>) -> Self {
        let trackers: Vec<Arc<Tracker>> = pending
            .iter()
            .flat_map(|p| p.trackers.iter().cloned())
            .collect();
        for t in &trackers {
            t.waiting_capacity.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(q) = queue {
            q.waiting_capacity.fetch_add(1, Ordering::AcqRel);
        }
        CapacityWait { trackers, queue }
    }
}

impl Drop for CapacityWait<'_> {
    fn drop(&mut self) {
        for t in &self.trackers {
            t.touch();
            t.waiting_capacity.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(q) = self.queue {
            q.touch();
            q.waiting_capacity.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One item taken into a batch, with every message waiting for it.
struct Pending {
    item: Item,
    costs: Costs,
    trackers: Vec<Arc<Tracker>>,
    charge: Charge,
    /// The item's content hash, when the write cache may skip it at batch time (None for a key
    /// its message carries twice); remembered once it lands either way.
    hash: Option<u128>,
    /// Written, failed or given up on: dropping it needs no answer.
    settled: bool,
}

impl Pending {
    fn is_waiting(&self) -> bool {
        self.trackers.iter().any(|t| t.is_waiting())
    }

    fn written(mut self) {
        self.settled = true;
        for t in &self.trackers {
            t.item_written();
        }
    }

    fn fail(mut self, failure: &WriteFailure) {
        self.settled = true;
        for t in &self.trackers {
            t.finish(Err(failure.clone()));
        }
    }
}

impl Drop for Pending {
    /// An item dropped unanswered (its task died): its messages must not wait for it forever.
    fn drop(&mut self) {
        if !self.settled {
            for t in &self.trackers {
                t.finish(Err(WriteFailure::Stopped));
            }
        }
    }
}

/// One message's items not yet taken into a batch.
struct Job {
    order: u64,
    items: VecDeque<(Item, Costs, Charge, Option<u128>)>,
    tracker: Arc<Tracker>,
}

#[derive(Default)]
struct Jobs {
    live: HashMap<u64, Job>,
    /// Jobs with items left to take, oldest first: (order, id).
    ready: BTreeSet<(u64, u64)>,
    next_id: u64,
    closed: bool,
}

/// The messages waiting on the writer.
struct Queue {
    jobs: Mutex<Jobs>,
    /// Wakes the batcher when a job arrives.
    arrived: Notify,
    /// The writer's progress clock: an item landed, or write capacity was granted.
    alive_at: Mutex<Instant>,
    /// First attempts waiting for write capacity right now.
    waiting_capacity: AtomicUsize,
    /// The write cache, consulted again as items are taken into a batch.
    cache: Option<Arc<WriteCache>>,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Jobs> {
        self.jobs.locked()
    }

    fn touch(&self) {
        *self.alive_at.locked() = Instant::now();
    }

    fn alive_at(&self) -> Instant {
        *self.alive_at.locked()
    }

    fn remove(&self, id: u64, order: u64) {
        let job = {
            let mut jobs = self.lock();
            jobs.ready.remove(&(order, id));
            jobs.live.remove(&id)
        };
        drop(job); // its unsent items and their charges, outside the lock
        // The batcher may be waiting for the last message to go.
        self.arrived.notify_one();
    }

    /// Fails every message still waiting (the batcher is gone) and refuses new ones.
    fn close(&self) {
        let trackers: Vec<Arc<Tracker>> = {
            let mut jobs = self.lock();
            jobs.closed = true;
            jobs.ready.clear();
            jobs.live.drain().map(|(_, j)| j.tracker).collect()
        };
        for t in trackers {
            t.finish(Err(WriteFailure::Stopped));
        }
    }

    /// Fills `batch` from the oldest jobs that have items left.
    fn fill(&self, batch: &mut BatchBuilder<'_>) {
        let mut jobs = self.lock();
        let Jobs { live, ready, .. } = &mut *jobs;
        let mut drained = Vec::new();
        for &(order, id) in ready.iter() {
            if batch.is_full() {
                break;
            }
            let Some(job) = live.get_mut(&id) else {
                drained.push((order, id));
                continue;
            };
            if !job.tracker.is_waiting() {
                // Its message gave up: nothing of it is sent (the message removes the job).
                job.items.clear();
                drained.push((order, id));
                continue;
            }
            while let Some((item, costs, _, hash)) = job.items.front() {
                // Written with this content since the message was handed over (an earlier
                // delivery of it landed meanwhile): answered without a write.
                // Not when the batch holds the key: the two collapse and the newer log wins.
                if let (Some(cache), Some(h)) = (&self.cache, hash)
                    && !batch.index.contains_key(item.key())
                    && cache.seen_locally(item.key(), *h)
                {
                    count_skipped(batch.stats, 1, u64::from(item.plain_wcu()));
                    job.items.pop_front();
                    job.tracker.item_written();
                    continue;
                }
                if !batch.has_room(item, costs) {
                    break;
                }
                let Some((item, costs, charge, hash)) = job.items.pop_front() else {
                    break;
                };
                batch.push(Pending {
                    item,
                    costs,
                    trackers: vec![job.tracker.clone()],
                    charge,
                    hash,
                    settled: false,
                });
                if !job.tracker.started.swap(true, Ordering::AcqRel) {
                    job.tracker.touch();
                }
            }
            if job.items.is_empty() {
                drained.push((order, id));
            } else {
                break; // the batch has no room for this job's next item
            }
        }
        for key in drained {
            ready.remove(&key);
        }
    }

    /// Fails the messages that made no progress for their timeout.
    fn expire(&self, now: Instant) {
        let writer_alive = if self.waiting_capacity.load(Ordering::Acquire) > 0 {
            now
        } else {
            self.alive_at()
        };
        let jobs = self.lock();
        // The oldest message with items still to take: any message behind it (not begun, or
        // begun and then overtaken by an older one handed over later, such as a FIFO follower)
        // is queueing, and its clock is the writer's.
        let head = jobs.ready.iter().next().map(|&(order, _)| order);
        let expired: Vec<Arc<Tracker>> = jobs
            .live
            .values()
            .filter(|j| {
                let t = &j.tracker;
                if t.waiting_capacity.load(Ordering::Acquire) > 0 {
                    return false;
                }
                let queueing = !t.started.load(Ordering::Acquire)
                    || (!j.items.is_empty() && head.is_some_and(|h| h < j.order));
                let alive = if queueing {
                    // Kept: once it is at the head again its own clock starts from here.
                    t.advance_to(writer_alive)
                } else {
                    t.alive_at()
                };
                now.saturating_duration_since(alive) >= t.timeout
            })
            .map(|j| j.tracker.clone())
            .collect();
        drop(jobs);
        for t in expired {
            t.finish(Err(WriteFailure::Deadline));
        }
    }
}

/// Removes a message's job when its `write` returns or is dropped.
struct JobGuard<'a> {
    queue: &'a Queue,
    id: u64,
    order: u64,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.queue.remove(self.id, self.order);
    }
}

/// Closes the queue when the batcher task ends, however it ends.
struct CloseOnDrop(Arc<Queue>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The handle messages write through. Cloning is cheap; the batcher stops when every clone is
/// dropped and what was queued is done.
#[derive(Clone)]
pub struct Writer {
    queue: Arc<Queue>,
    /// Never sent on: the batcher sees every handle dropped when its receiver closes.
    _alive: mpsc::Sender<()>,
    stats: Arc<WriterStats>,
    pacer: Arc<Pacer>,
    breaker: Arc<Breaker>,
    cache: Option<Arc<WriteCache>>,
}

impl Writer {
    /// Starts the batcher over `client`. The returned task ends after every `Writer` clone is
    /// dropped and all queued items are finished.
    pub fn spawn<W: BatchWriter>(
        client: Arc<W>,
        pacer: impl Into<Pacer>,
        config: WriterConfig,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let pacer = Arc::new(pacer.into());
        let (alive_tx, alive_rx) = mpsc::channel(1);
        let stats = Arc::new(WriterStats::default());
        let breaker = Arc::new(Breaker::new(config.breaker));
        let queue = Arc::new(Queue {
            jobs: Mutex::new(Jobs::default()),
            arrived: Notify::new(),
            alive_at: Mutex::new(Instant::now()),
            waiting_capacity: AtomicUsize::new(0),
            cache: config.cache.clone(),
        });
        let cache = config.cache.clone();
        if cache.is_some() {
            // Exported from the start, so a dashboard's ratio has its series before a first skip.
            metrics::counter!(catalog::CACHE_SKIPPED_LOGS_TOTAL).increment(0);
            metrics::counter!(catalog::CACHE_SAVED_WCU_TOTAL).increment(0);
        }
        let ctx = Ctx {
            client,
            pacer: pacer.clone(),
            config: Arc::new(config),
            stats: stats.clone(),
            breaker: breaker.clone(),
            queue: queue.clone(),
        };
        let task = tokio::spawn(run_batcher(ctx, alive_rx));
        let writer = Writer {
            queue,
            _alive: alive_tx,
            stats,
            pacer,
            breaker,
            cache,
        };
        (writer, task)
    }

    /// The circuit breaker this writer's outcomes drive; the pollers consult it.
    pub fn breaker(&self) -> Arc<Breaker> {
        self.breaker.clone()
    }

    /// The writer's live counters, shared.
    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// The paced rate of the table in WCU per second (None when unpaced).
    pub fn paced_rate(&self) -> Option<f64> {
        self.pacer.table_rate()
    }

    /// Seconds `items` take to write at the paced rates: the slowest budget's (table or index).
    pub fn seconds_for(&self, items: &[Item]) -> f64 {
        let mut per_budget = vec![0u64; self.pacer.len()];
        for item in items {
            for (b, w) in self.pacer.costs(item).wcu.into_iter().enumerate() {
                per_budget[b] += u64::from(w);
            }
        }
        self.pacer.seconds(&per_budget)
    }

    /// The budgets (table, indexes, hot keys) this writer paces against.
    pub fn pacer(&self) -> &Arc<Pacer> {
        &self.pacer
    }

    /// Writes all `items` (one message's logs), returning when every one is written, or the first
    /// failure. `order` is the message's place in the order of receipt (lower is served first);
    /// `timeout` is how long it may go without progress (see the module docs). Dropping the
    /// future abandons the items not yet sent.
    pub async fn write(
        &self,
        items: Vec<Item>,
        order: u64,
        timeout: Duration,
    ) -> Result<(), WriteFailure> {
        let items: Vec<(Item, Option<u128>)> = match &self.cache {
            Some(cache) => self.skip_written(cache, items).await,
            None => items.into_iter().map(|i| (i, None)).collect(),
        };
        if items.is_empty() {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let tracker = Arc::new(Tracker {
            remaining: AtomicUsize::new(items.len()),
            done: Mutex::new(Some(tx)),
            timeout,
            alive_at: Mutex::new(Instant::now()),
            started: AtomicBool::new(false),
            waiting_capacity: AtomicUsize::new(0),
        });
        let items: VecDeque<(Item, Costs, Charge, Option<u128>)> = items
            .into_iter()
            .map(|(item, hash)| {
                let charge = Charge::new(&self.stats, item.wcu());
                let costs = self.pacer.costs(&item);
                (item, costs, charge, hash)
            })
            .collect();
        let id = {
            let mut jobs = self.queue.lock();
            if jobs.closed {
                return Err(WriteFailure::Stopped);
            }
            let id = jobs.next_id;
            jobs.next_id += 1;
            jobs.live.insert(
                id,
                Job {
                    order,
                    items,
                    tracker,
                },
            );
            jobs.ready.insert((order, id));
            id
        };
        let _guard = JobGuard {
            queue: &self.queue,
            id,
            order,
        };
        self.queue.arrived.notify_one();
        rx.await.unwrap_or(Err(WriteFailure::Stopped))
    }
}

impl Writer {
    /// Leaves out the items the write cache knows were written with this content, counting
    /// them (their logs are delivered); the rest keep their hash, for the cache to be asked
    /// again when they are taken into a batch and told once they land.
    async fn skip_written(
        &self,
        cache: &WriteCache,
        items: Vec<Item>,
    ) -> Vec<(Item, Option<u128>)> {
        let hashes: Vec<u128> = items.iter().map(Item::content_hash).collect();
        let asked: Vec<(&str, u128)> = items
            .iter()
            .map(Item::key)
            .zip(hashes.iter().copied())
            .collect();
        let mut seen = cache.seen(&asked).await;
        // A key the message carries twice is skipped only if every one of its logs is a hit, and
        // never later at batch time: written together they collapse and the newer log wins,
        // which a lone miss would not.
        let mut repeated = vec![false; items.len()];
        if items.len() > 1 {
            let mut all_hit: HashMap<&str, (bool, usize)> = HashMap::new();
            for (item, hit) in items.iter().zip(&seen) {
                let e = all_hit.entry(item.key()).or_insert((true, 0));
                e.0 &= *hit;
                e.1 += 1;
            }
            for ((item, hit), repeat) in items.iter().zip(seen.iter_mut()).zip(&mut repeated) {
                let (all, n) = all_hit[item.key()];
                *hit &= all;
                *repeat = n > 1;
            }
        }
        let (mut logs, mut saved) = (0u64, 0u64);
        let kept = items
            .into_iter()
            .zip(hashes)
            .zip(seen)
            .zip(repeated)
            .filter_map(|(((item, hash), hit), repeat)| {
                if hit {
                    logs += 1;
                    saved += u64::from(item.plain_wcu());
                    None
                } else {
                    Some((item, (!repeat).then_some(hash)))
                }
            })
            .collect();
        count_skipped(&self.stats, logs, saved);
        kept
    }
}

/// Counts logs answered from the write cache, and the WCU (plain) that saved.
fn count_skipped(stats: &WriterStats, logs: u64, saved: u64) {
    if logs == 0 {
        return;
    }
    stats.cache_skipped_logs.fetch_add(logs, Ordering::Relaxed);
    stats.cache_saved_wcu.fetch_add(saved, Ordering::Relaxed);
    metrics::counter!(catalog::CACHE_SKIPPED_LOGS_TOTAL).increment(logs);
    metrics::counter!(catalog::CACHE_SAVED_WCU_TOTAL).increment(saved);
}

struct BatchBuilder<'a> {
    stats: &'a WriterStats,
    items: Vec<Pending>,
    index: HashMap<String, usize>,
    bytes: usize,
    /// WCU charged on each budget (table, then each index).
    wcu: Vec<u64>,
    max_items: usize,
    max_bytes: usize,
    max_wcu: Vec<u64>,
}

impl<'a> BatchBuilder<'a> {
    fn new(config: &WriterConfig, stats: &'a WriterStats, max_wcu: Vec<u64>) -> Self {
        BatchBuilder {
            stats,
            items: Vec::new(),
            index: HashMap::new(),
            bytes: 0,
            wcu: vec![0; max_wcu.len()],
            max_items: config.max_batch_items.clamp(1, MAX_BATCH_ITEMS),
            max_bytes: config.max_batch_bytes.clamp(1, MAX_BATCH_BYTES),
            max_wcu: max_wcu.into_iter().map(|w| w.max(1)).collect(),
        }
    }

    fn is_full(&self) -> bool {
        self.items.len() >= self.max_items
            || self.wcu.iter().zip(&self.max_wcu).any(|(w, m)| w >= m)
    }

    /// Whether `item` can join: its key is already here (it collapses), or it fits.
    fn has_room(&self, item: &Item, costs: &Costs) -> bool {
        // A key already here always joins (it collapses into the item there, see `push`): were
        // it sent in a later batch, two writes of one key would race and the older could land
        // last. The batch may then pass its soft WCU cap by that item's growth; pacing still
        // takes its true cost.
        if self.items.is_empty() || self.index.contains_key(item.key()) {
            return true;
        }
        !self.is_full()
            && self.bytes + item.size() <= self.max_bytes
            && self
                .wcu
                .iter()
                .zip(&costs.wcu)
                .zip(&self.max_wcu)
                .all(|((w, c), m)| w + u64::from(*c) <= *m)
    }

    /// Adds an item [`BatchBuilder::has_room`] said fits.
    fn push(&mut self, mut p: Pending) {
        if let Some(&i) = self.index.get(p.item.key()) {
            // Same key twice in one batch: DynamoDB rejects that, and only one write would
            // survive anyway. The newer log (by timestamp; the later one on a tie or without
            // timestamps) is written; both messages are answered when it lands.
            let slot = &mut self.items[i];
            let newer = match (p.item.ts_ms(), slot.item.ts_ms()) {
                (Some(new), Some(old)) => new >= old,
                _ => true,
            };
            if newer {
                self.bytes = self.bytes - slot.item.size() + p.item.size();
                for (b, w) in self.wcu.iter_mut().enumerate() {
                    *w = *w - u64::from(slot.costs.wcu[b]) + u64::from(p.costs.wcu[b]);
                }
                std::mem::swap(&mut slot.item, &mut p.item);
                std::mem::swap(&mut slot.costs, &mut p.costs);
                std::mem::swap(&mut slot.charge, &mut p.charge); // the loser's charge is released
                std::mem::swap(&mut slot.hash, &mut p.hash);
            }
            slot.trackers.append(&mut p.trackers);
            p.settled = true;
            metrics::counter!(catalog::DUPLICATES_COLLAPSED_TOTAL).increment(1);
            self.stats
                .duplicates_collapsed
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.bytes += p.item.size();
        for (w, c) in self.wcu.iter_mut().zip(&p.costs.wcu) {
            *w += u64::from(*c);
        }
        self.index
            .insert(p.item.key().to_string(), self.items.len());
        self.items.push(p);
    }
}

/// What `items` charge each budget.
fn per_budget(items: &[Pending], budgets: usize) -> Vec<u64> {
    let mut out = vec![0u64; budgets];
    for p in items {
        for (o, c) in out.iter_mut().zip(&p.costs.wcu) {
            *o += u64::from(*c);
        }
    }
    out
}

/// How long a batch that is not full waits for more items, when other writes are in flight.
/// Those keep the table busy meanwhile, so the wait costs no throughput and saves requests (each
/// one is signed, serialized and sent: the per-request cost dominates sluice's CPU). With no
/// other write in flight a batch leaves at once, so a quiet pipeline adds no latency.
const FILL_WAIT: Duration = Duration::from_millis(2);

async fn run_batcher<W: BatchWriter>(ctx: Ctx<W>, alive: mpsc::Receiver<()>) {
    let _close = CloseOnDrop(ctx.queue.clone());
    let expiry = async {
        loop {
            tokio::time::sleep(EXPIRY_TICK).await;
            ctx.queue.expire(Instant::now());
        }
    };
    tokio::select! {
        _ = batch_loop(&ctx, alive) => {}
        _ = expiry => {}
    }
}

async fn batch_loop<W: BatchWriter>(ctx: &Ctx<W>, mut alive: mpsc::Receiver<()>) {
    let config = ctx.config.clone();
    let slots = Arc::new(Semaphore::new(config.max_concurrent_requests.max(1)));
    let mut calls = JoinSet::new();
    let mut writers_gone = false;
    'outer: loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut batch = BatchBuilder::new(&config, &ctx.stats, ctx.pacer.batch_caps(BATCH_SECONDS));
        loop {
            ctx.queue.fill(&mut batch);
            if !batch.items.is_empty() {
                break;
            }
            if writers_gone && ctx.queue.lock().live.is_empty() {
                break 'outer;
            }
            tokio::select! {
                _ = ctx.queue.arrived.notified() => {}
                r = alive.recv(), if !writers_gone => {
                    if r.is_none() {
                        writers_gone = true;
                    }
                }
            }
            while calls.try_join_next().is_some() {}
        }
        let others_in_flight =
            slots.available_permits() + 1 < config.max_concurrent_requests.max(1);
        if others_in_flight && !batch.is_full() {
            let until = Instant::now() + FILL_WAIT;
            while !batch.is_full() {
                if tokio::time::timeout_at(until, ctx.queue.arrived.notified())
                    .await
                    .is_err()
                {
                    break;
                }
                ctx.queue.fill(&mut batch);
            }
        }
        // Tokens are taken before the batch leaves, while more items queue up for the next one.
        // Meanwhile every message in it, and the writer's clock, count as alive.
        {
            let _waiting = CapacityWait::new(&batch.items, Some(&ctx.queue));
            let costs: Vec<&Costs> = batch.items.iter().map(|p| &p.costs).collect();
            ctx.pacer
                .acquire(&per_budget(&batch.items, ctx.pacer.len()), &costs)
                .await;
        }
        calls.spawn(send_batch(ctx.clone(), batch.items, Some(permit)));
        while calls.try_join_next().is_some() {}
    }
    while calls.join_next().await.is_some() {}
}

/// What one batch's sending needs.
struct Ctx<W> {
    client: Arc<W>,
    pacer: Arc<Pacer>,
    config: Arc<WriterConfig>,
    stats: Arc<WriterStats>,
    breaker: Arc<Breaker>,
    queue: Arc<Queue>,
}

impl<W> Clone for Ctx<W> {
    fn clone(&self) -> Self {
        Ctx {
            client: self.client.clone(),
            pacer: self.pacer.clone(),
            config: self.config.clone(),
            stats: self.stats.clone(),
            breaker: self.breaker.clone(),
            queue: self.queue.clone(),
        }
    }
}

/// Writes `pending` as one BatchWriteItem, then again for what is left (unprocessed items, a
/// throttle, a transient error) after [`WriterConfig::backoff`], paced again before each retry,
/// until every item is written or has failed. A batch DynamoDB rejects for one invalid item is
/// written item by item, so only that item's messages fail.
fn send_batch<W: BatchWriter>(
    ctx: Ctx<W>,
    mut pending: Vec<Pending>,
    permit: Option<OwnedSemaphorePermit>,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let _permit = permit;
        let mut attempt: u32 = 0;
        loop {
            drop_abandoned(&mut pending);
            if pending.is_empty() {
                return;
            }
            if attempt > 0 {
                let _waiting = CapacityWait::new(&pending, None);
                let costs: Vec<&Costs> = pending.iter().map(|p| &p.costs).collect();
                let pacer = &ctx.pacer;
                pacer
                    .acquire(&per_budget(&pending, pacer.len()), &costs)
                    .await;
            }
            match call(&ctx, &pending).await {
                Ok(result) => {
                    pending = settle_written(&ctx, pending, result, attempt);
                    if pending.is_empty() {
                        return;
                    }
                }
                Err(e) if e.is_retryable() => note_retryable(&ctx, &pending, &e, attempt),
                Err(e) if e.kind == WriteErrorKind::InvalidItem && pending.len() > 1 => {
                    BatchSplit {
                        error: &e,
                        items: pending.len(),
                    }
                    .emit();
                    for p in pending {
                        send_batch(ctx.clone(), vec![p], None).await;
                    }
                    return;
                }
                Err(e) => return fail_all(&ctx, pending, e),
            }
            let wake = Instant::now() + ctx.config.backoff.delay(attempt);
            attempt = attempt.saturating_add(1);
            tokio::time::sleep_until(wake).await;
        }
    })
}

/// Drops the items no message waits for any more (every message waiting on one gave up).
fn drop_abandoned(pending: &mut Vec<Pending>) {
    pending.retain_mut(|p| {
        let waiting = p.is_waiting();
        if !waiting {
            p.settled = true;
        }
        waiting
    });
}

/// One BatchWriteItem call, within `dynamodb.request_timeout`.
async fn call<W: BatchWriter>(
    ctx: &Ctx<W>,
    pending: &[Pending],
) -> Result<BatchResult, WriteError> {
    let refs: Vec<&Item> = pending.iter().map(|p| &p.item).collect();
    let budget = ctx.config.request_timeout.max(Duration::from_millis(1));
    ctx.stats.requests.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(budget, ctx.client.write_batch(&refs)).await {
        Ok(r) => r,
        Err(_) => Err(WriteError::new(
            WriteErrorKind::Transient,
            format!("BatchWriteItem took longer than {budget:?} (dynamodb.request_timeout)"),
        )),
    }
}

/// Settles what a call wrote and counts it; returns the items left unprocessed (to retry),
/// having slowed the budgets they charge.
fn settle_written<W: BatchWriter>(
    ctx: &Ctx<W>,
    pending: Vec<Pending>,
    result: BatchResult,
    attempt: u32,
) -> Vec<Pending> {
    let Ctx {
        pacer,
        stats,
        breaker,
        queue,
        ..
    } = ctx;
    breaker.record_success();
    metrics::counter!(catalog::BATCH_WRITE_REQUESTS_TOTAL, "outcome" => "ok").increment(1);
    let unprocessed: HashSet<usize> = result.unprocessed.into_iter().collect();
    let (mut written_logs, mut written_wcu, mut plain_wcu) = (0u64, 0u32, 0u64);
    let mut estimated = vec![0u64; pacer.len()];
    let mut rest = Vec::with_capacity(unprocessed.len());
    let mut landed = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        if unprocessed.contains(&i) {
            rest.push(p);
        } else {
            written_logs += p.trackers.len() as u64;
            written_wcu += p.item.wcu();
            plain_wcu += u64::from(p.item.plain_wcu());
            if ctx.config.cache.is_some() {
                let hash = p.hash.unwrap_or_else(|| p.item.content_hash());
                landed.push((p.item.key().to_string(), hash));
            }
            for (e, c) in estimated.iter_mut().zip(&p.costs.wcu) {
                *e += u64::from(*c);
            }
            p.written();
        }
    }
    // What DynamoDB says it consumed settles the estimate, so overwrites of larger items, index
    // writes and size mistakes cannot drift into throttles. (Items left unprocessed consumed
    // nothing.)
    if let Some(c) = &result.consumed {
        pacer.on_consumed(&estimated, c);
    }
    if written_logs > 0 {
        queue.touch();
        stats
            .last_write_ms
            .fetch_max(crate::time::epoch_ms(), Ordering::Relaxed);
    }
    if let Some(cache) = &ctx.config.cache {
        cache.record(landed);
    }
    stats
        .wcu_written
        .fetch_add(u64::from(written_wcu), Ordering::Relaxed);
    stats
        .plain_wcu_written
        .fetch_add(plain_wcu, Ordering::Relaxed);
    metrics::counter!(catalog::COMPRESSION_SAVED_WCU_TOTAL)
        .increment(plain_wcu.saturating_sub(u64::from(written_wcu)));
    metrics::counter!(catalog::LOGS_WRITTEN_TOTAL).increment(written_logs);
    // The table's own share: index writes are paced and reported on their own budgets, and the
    // counter is compared with the table's budget.
    let consumed = result
        .consumed
        .as_ref()
        .map_or(written_wcu as f64, |c| c.table);
    stats
        .logs_written
        .fetch_add(written_logs, Ordering::Relaxed);
    stats
        .wcu_consumed
        .fetch_add(consumed.round() as u64, Ordering::Relaxed);
    pacer.table().on_written(consumed);
    if !rest.is_empty() {
        stats
            .unprocessed_retried
            .fetch_add(rest.len() as u64, Ordering::Relaxed);
        UnprocessedRetried {
            items: rest.len(),
            attempt,
        }
        .emit();
        // UnprocessedItems say nothing of why: a key they all share is hot, else every budget
        // they charge slows.
        let costs: Vec<&Costs> = rest.iter().map(|p| &p.costs).collect();
        pacer.on_unprocessed(&per_budget(&rest, pacer.len()), &costs);
    }
    rest
}

/// A throttle slows what it names (AIMD); a transient error counts towards the breaker.
fn note_retryable<W: BatchWriter>(ctx: &Ctx<W>, pending: &[Pending], e: &WriteError, attempt: u32) {
    if e.kind == WriteErrorKind::Throttled {
        ctx.stats.throttled_requests.fetch_add(1, Ordering::Relaxed);
        let costs: Vec<&Costs> = pending.iter().map(|p| &p.costs).collect();
        ctx.pacer
            .on_throttle(&e.causes, &per_budget(pending, ctx.pacer.len()), &costs);
    } else {
        ctx.breaker
            .record_failure(Instant::now().into_std(), &e.message);
    }
    BatchWriteRetried {
        error: e,
        items: pending.len(),
        attempt,
    }
    .emit();
}

/// A failure no retry can mend: the item is rejected (its key named), or the call failed for
/// good; every message waiting on these items fails.
fn fail_all<W: BatchWriter>(ctx: &Ctx<W>, pending: Vec<Pending>, e: WriteError) {
    let failure = if e.kind == WriteErrorKind::InvalidItem {
        let key = pending.first().map(|p| p.item.key().to_string());
        WriteFailure::Rejected(WriteError::new(
            e.kind,
            format!(
                "item with key `{}`: {}",
                key.as_deref().map_or(String::new(), truncate_key),
                e.message
            ),
        ))
    } else {
        ctx.breaker
            .record_failure(Instant::now().into_std(), &e.message);
        WriteFailure::Failed(e)
    };
    BatchWriteFailed {
        failure: &failure,
        items: pending.len(),
    }
    .emit();
    for p in pending {
        p.fail(&failure);
    }
}

/// A key short enough to print.
fn truncate_key(key: &str) -> String {
    let mut end = key.len().min(128);
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    if end < key.len() {
        format!("{}…", &key[..end])
    } else {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Schema, decode_message};
    use crate::item::AttrValue;
    use crate::rate::WcuLimiter;
    use crate::testing::MemoryTableForTests;

    fn item(key: &str, ts: &str, path: &str) -> Item {
        let body = format!(
            r#"{{"request_id":"{key}","ts":"{ts}","method":"GET","path":"{path}","status":200,"latency_ms":1}}"#
        );
        decode_message(body.as_bytes(), &Schema::default())
            .unwrap()
            .remove(0)
    }

    fn spawn(table: Arc<MemoryTableForTests>) -> (Writer, tokio::task::JoinHandle<()>) {
        Writer::spawn(
            table,
            Arc::new(WcuLimiter::unlimited()),
            WriterConfig::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn inside_a_batch_the_newest_log_wins_a_key_collision() {
        let table = Arc::new(MemoryTableForTests::default());
        table.set_latency(Duration::from_millis(50));
        let (writer, _task) = spawn(table.clone());
        // A call in flight makes the next batch wait to fill, so the three messages below
        // share it. The older log is written by the later message.
        let first = writer.write(
            vec![item("other", "2026-01-01T00:00:00Z", "/o")],
            0,
            Duration::from_secs(5),
        );
        let newer = writer.write(
            vec![item("k", "2026-01-01T00:00:09Z", "/newer")],
            1,
            Duration::from_secs(5),
        );
        let older = writer.write(
            vec![item("k", "2026-01-01T00:00:01Z", "/older")],
            2,
            Duration::from_secs(5),
        );
        let (a, b, c) = tokio::join!(first, newer, older);
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        assert_eq!(
            table.rows()["k"].attrs()["path"],
            AttrValue::S("/newer".into())
        );
        assert_eq!(
            writer.stats().duplicates_collapsed.load(Ordering::Relaxed),
            1
        );
        assert_eq!(writer.stats().pending_wcu.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_resolves_when_the_batcher_dies() {
        let table = Arc::new(MemoryTableForTests::default());
        table.set_latency(Duration::from_secs(3600));
        let (writer, task) = spawn(table);
        let pending = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .write(
                        vec![item("a", "2026-01-01T00:00:00Z", "/")],
                        0,
                        Duration::from_secs(7200),
                    )
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        task.abort();
        let r = tokio::time::timeout(Duration::from_secs(1), pending)
            .await
            .expect("resolved at once")
            .unwrap();
        assert!(matches!(r, Err(WriteFailure::Stopped)), "{r:?}");
        let again = writer
            .write(
                vec![item("b", "2026-01-01T00:00:00Z", "/")],
                1,
                Duration::from_secs(5),
            )
            .await;
        assert!(matches!(again, Err(WriteFailure::Stopped)), "{again:?}");
    }

    /// A table whose every call panics.
    struct Panicking;

    impl BatchWriter for Panicking {
        async fn write_batch(&self, _: &[&Item]) -> Result<BatchResult, WriteError> {
            panic!("injected panic in the table client")
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_resolves_when_its_call_panics() {
        let (writer, _task) = Writer::spawn(
            Arc::new(Panicking),
            Arc::new(WcuLimiter::unlimited()),
            WriterConfig::default(),
        );
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            writer.write(
                vec![item("a", "2026-01-01T00:00:00Z", "/")],
                0,
                Duration::from_secs(7200),
            ),
        )
        .await
        .expect("resolved at once");
        assert!(matches!(r, Err(WriteFailure::Stopped)), "{r:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_queued_behind_a_draining_backlog_never_times_out_but_a_stuck_one_does() {
        // 2,000 items at one call of 25 per 100 ms take 8 s; each message may go 1 s without
        // progress. The last of 80 messages waits ~8 s and still succeeds.
        let table = Arc::new(MemoryTableForTests::default());
        table.set_latency(Duration::from_millis(100));
        let config = WriterConfig {
            max_concurrent_requests: 1,
            ..WriterConfig::default()
        };
        let (writer, _task) =
            Writer::spawn(table.clone(), Arc::new(WcuLimiter::unlimited()), config);
        let writes: Vec<_> = (0..80)
            .map(|m| {
                let items: Vec<Item> = (0..25)
                    .map(|j| item(&format!("m{m}-{j}"), "2026-01-01T00:00:00Z", "/"))
                    .collect();
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(items, m, Duration::from_secs(1)).await })
            })
            .collect();
        for w in writes {
            let r = w.await.unwrap();
            assert!(r.is_ok(), "{r:?}");
        }
        // Stuck: the call now hangs; the message fails once it has gone its own 2 s without
        // progress, not when the call's 10 s request timeout ends.
        table.set_latency(Duration::from_secs(3600));
        let started = Instant::now();
        let r = writer
            .write(
                vec![item("stuck", "2026-01-01T00:00:00Z", "/")],
                100,
                Duration::from_secs(2),
            )
            .await;
        assert!(matches!(r, Err(WriteFailure::Deadline)), "{r:?}");
        assert!(
            started.elapsed() <= Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
