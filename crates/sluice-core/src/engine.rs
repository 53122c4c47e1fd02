//! The worker pool: long pollers feed messages to tasks that decode, write and ack them.
//!
//! ```text
//! pollers (N) ──receive──▶ message task (≤ max_in_flight) ──items──▶ Writer ──▶ table
//!     │ paced by the write backlog     │ all items written          │ failure / timeout / poison
//!     │ stopped while the breaker      ▼                            ▼
//!     │ is open                   acker (batched deletes)   nack (backoff by receive count),
//!     └ heartbeat: every held message's visibility is         or the dead-letter path
//!       extended before it lapses
//! ```
//!
//! - In-flight is bounded by a semaphore: a poller reserves `max_messages` slots before it polls,
//!   so a parked long poll can never bring in more than the pool can hold.
//! - Each message runs under `message_timeout`, counted from its receipt. When it fires, the
//!   message's future is dropped, which abandons its unsent items, and the message is nacked.
//! - While a message is held its visibility is extended before it lapses (one heartbeat task,
//!   batched ChangeMessageVisibility); the handle registered at receipt stops that when dropped.
//! - A nack makes the message visible again after `base × 2^(receive count − 1)`, capped, with
//!   jitter. Poison goes to the dead-letter path with its reason when the source has one.
//! - FIFO: messages of one group are handled one after another, in order; when one fails, it and
//!   every later message of its group that is held go back to the queue, unprocessed.
//! - Shutdown: the token stops the pollers at once (a parked long poll is dropped); in-flight
//!   messages get `shutdown_grace` to finish; the rest are nacked with no delay so another worker
//!   takes them immediately; pending acks are flushed; `run` returns.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{DecodeError, Schema, decode_message};
use crate::rate::Backoff;
use crate::source::{Received, Source};
use crate::writer::{WriteFailure, Writer};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Concurrent long pollers.
    pub pollers: usize,
    /// Messages one receive asks for (SQS: 1..=10).
    pub max_messages: usize,
    /// Messages held at once, across pollers; at least `pollers × max_messages`.
    pub max_in_flight: usize,
    /// Bytes of message bodies held at once (each counted in started KiB): a poller waits for
    /// room before it takes on what it received. One receive is always taken whole, so the bound
    /// is this or one receive's bytes, whichever is larger. Memory follows the bytes, not the
    /// message count, when messages carry many logs.
    pub max_in_flight_bytes: usize,
    /// Time a message has, from its receipt, to be fully written.
    pub message_timeout: Duration,
    /// Time in-flight messages get to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Nack backoff: a failed message is invisible for `base × 2^(receive count − 1)`, at most
    /// `nack_backoff_max`, with jitter.
    pub nack_backoff_base: Duration,
    pub nack_backoff_max: Duration,
    /// Visibility delay of a poison message left to the queue's redrive policy (when the source
    /// has no dead-letter path).
    pub poison_nack_delay: Duration,
    /// How long the acker waits to fill a batch of deletes.
    pub ack_linger: Duration,
    /// Delete calls in flight at once.
    pub max_concurrent_acks: usize,
    /// Intake pacing: receive only while the write backlog takes less than this at the paced
    /// rate, so a message never waits long for write capacity. None: no intake pacing.
    pub intake_horizon: Option<Duration>,
    /// The visibility timeout messages are received with. Some: a heartbeat extends every held
    /// message's visibility before it lapses. None: no heartbeat.
    pub visibility_timeout: Option<Duration>,
    /// How long a receive may park (the long-poll wait): liveness allows twice this.
    pub poll_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pollers: 4,
            max_messages: 10,
            max_in_flight: 1000,
            max_in_flight_bytes: 16 << 20,
            message_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            nack_backoff_base: Duration::from_secs(2),
            nack_backoff_max: Duration::from_secs(300),
            poison_nack_delay: Duration::from_secs(60),
            ack_linger: Duration::from_millis(20),
            max_concurrent_acks: 8,
            intake_horizon: Some(Duration::from_secs(5)),
            visibility_timeout: None,
            poll_wait: Duration::from_secs(20),
        }
    }
}

/// SQS's longest visibility timeout; a message is not held past it.
pub const MAX_HOLD: Duration = Duration::from_secs(12 * 3600);

impl EngineConfig {
    /// Checks the numbers fit together; names the offending setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.pollers == 0 {
            return Err("pollers must be at least 1".into());
        }
        if self.max_messages == 0 {
            return Err("max_messages must be at least 1".into());
        }
        if self.max_in_flight < self.pollers * self.max_messages {
            return Err(format!(
                "max_in_flight ({}) must be at least pollers × max_messages ({} × {})",
                self.max_in_flight, self.pollers, self.max_messages
            ));
        }
        if self.max_in_flight_bytes < 1 << 20 {
            return Err(format!(
                "max_in_flight_bytes ({}) must be at least 1 MiB (1048576), the largest SQS message",
                self.max_in_flight_bytes
            ));
        }
        if self.message_timeout.is_zero() || self.message_timeout > MAX_HOLD {
            return Err("message_timeout must be above zero and at most 12h".into());
        }
        if let Some(h) = self.intake_horizon
            && h * 2 > self.message_timeout
        {
            return Err(format!(
                "intake_horizon ({h:?}) must be at most half of message_timeout ({:?}), so a received message has time to be written",
                self.message_timeout
            ));
        }
        Ok(())
    }

    /// The nack delay of a message received `receive_count` times.
    pub fn nack_delay(&self, receive_count: u32) -> Duration {
        Backoff {
            base: self.nack_backoff_base,
            cap: self.nack_backoff_max,
        }
        .delay(receive_count.saturating_sub(1))
    }
}

fn epoch_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Live counters of one engine, for summaries, progress, readiness and liveness.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub received: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub poison: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub ack_failures: AtomicU64,
    pub in_flight: AtomicU64,
    /// Receive calls failed in a row (0 after any success).
    pub receive_errors_in_a_row: AtomicU32,
    pub successful_polls: AtomicU64,
    /// Per poller: when its loop last made progress (a receive returned, or it waited on purpose
    /// for backpressure or the breaker), in milliseconds since the epoch.
    poller_progress: Mutex<Vec<u64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub received: u64,
    pub acked: u64,
    pub nacked: u64,
    pub poison: u64,
    pub dead_lettered: u64,
    pub ack_failures: u64,
    pub in_flight: u64,
}

impl EngineStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            nacked: self.nacked.load(Ordering::Relaxed),
            poison: self.poison.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            ack_failures: self.ack_failures.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }

    fn progress(&self, poller: usize) {
        let mut p = self
            .poller_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if p.len() <= poller {
            p.resize(poller + 1, 0);
        }
        p[poller] = epoch_ms();
    }

    /// The longest time any poller has gone without progress (zero before polling starts).
    pub fn stalest_poller(&self) -> Duration {
        let p = self
            .poller_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = epoch_ms();
        p.iter()
            .map(|&t| Duration::from_millis(now.saturating_sub(t)))
            .max()
            .unwrap_or_default()
    }
}

pub struct Engine<S: Source> {
    source: Arc<S>,
    writer: Writer,
    schema: Arc<Schema>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
}

/// What became of one message.
enum Outcome {
    Written,
    Poison(DecodeError),
    WriteFailed(WriteFailure),
    TimedOut,
    Shutdown,
}

/// The messages being held, whose visibility the heartbeat keeps extending.
struct Held<H> {
    entries: Mutex<HashMap<u64, HeldEntry<H>>>,
    next: AtomicU64,
}

struct HeldEntry<H> {
    handle: H,
    visible_until: Instant,
    first_received: Instant,
}

/// A held message's registration; dropping it stops the heartbeat for that message.
struct HeldGuard<H> {
    held: Arc<Held<H>>,
    key: u64,
}

impl<H> Held<H> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HeldEntry<H>>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<H> Drop for HeldGuard<H> {
    fn drop(&mut self) {
        self.held.lock().remove(&self.key);
    }
}

struct Shared<S: Source> {
    source: Arc<S>,
    writer: Writer,
    schema: Arc<Schema>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    permits: Arc<Semaphore>,
    /// The body-bytes budget, in KiB.
    bytes: Arc<Semaphore>,
    hard_stop: CancellationToken,
    acks: mpsc::Sender<S::Handle>,
    tasks: TaskTracker,
    held: Arc<Held<S::Handle>>,
}

impl<S: Source> Shared<S> {
    fn hold(&self, message: &Received<S::Handle>) -> HeldGuard<S::Handle> {
        let key = self.held.next.fetch_add(1, Ordering::Relaxed);
        let visibility = self.config.visibility_timeout.unwrap_or(MAX_HOLD);
        self.held.lock().insert(
            key,
            HeldEntry {
                handle: message.handle.clone(),
                visible_until: message.received_at + visibility,
                first_received: message.received_at,
            },
        );
        HeldGuard {
            held: self.held.clone(),
            key,
        }
    }
}

impl<S: Source> Engine<S> {
    pub fn new(source: Arc<S>, writer: Writer, schema: Schema, config: EngineConfig) -> Self {
        Engine {
            source,
            writer,
            schema: Arc::new(schema),
            config,
            stats: Arc::new(EngineStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// Runs until `shutdown` is cancelled, then drains as described in the module docs.
    pub async fn run(self, shutdown: CancellationToken) -> StatsSnapshot {
        let (ack_tx, ack_rx) = mpsc::channel(self.config.max_in_flight.max(16));
        let acker = tokio::spawn(run_acker(
            self.source.clone(),
            ack_rx,
            self.config.ack_linger,
            self.config.max_concurrent_acks,
            self.stats.clone(),
        ));
        let shared = Arc::new(Shared {
            permits: Arc::new(Semaphore::new(self.config.max_in_flight)),
            bytes: Arc::new(Semaphore::new(
                budget_kib(self.config.max_in_flight_bytes) as usize
            )),
            hard_stop: CancellationToken::new(),
            acks: ack_tx,
            tasks: TaskTracker::new(),
            held: Arc::new(Held {
                entries: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            }),
            source: self.source,
            writer: self.writer,
            schema: self.schema,
            config: self.config,
            stats: self.stats,
        });
        let heartbeat_stop = CancellationToken::new();
        let heartbeat = shared.config.visibility_timeout.map(|visibility| {
            tokio::spawn(run_heartbeat(
                shared.source.clone(),
                shared.held.clone(),
                visibility,
                heartbeat_stop.clone(),
            ))
        });

        let mut pollers = JoinSet::new();
        for poller in 0..shared.config.pollers {
            shared.stats.progress(poller);
            pollers.spawn(poll_loop(poller, shared.clone(), shutdown.clone()));
        }
        while pollers.join_next().await.is_some() {}

        let in_flight = shared.stats.in_flight.load(Ordering::Relaxed);
        tracing::info!(
            in_flight,
            grace_s = shared.config.shutdown_grace.as_secs_f64(),
            "stopped receiving; draining in-flight messages"
        );
        shared.tasks.close();
        if tokio::time::timeout(shared.config.shutdown_grace, shared.tasks.wait())
            .await
            .is_err()
        {
            let left = shared.stats.in_flight.load(Ordering::Relaxed);
            tracing::warn!(
                left,
                "grace period over; returning unfinished messages to the queue"
            );
            shared.hard_stop.cancel();
            shared.tasks.wait().await;
        }
        heartbeat_stop.cancel();
        if let Some(h) = heartbeat {
            let _ = h.await;
        }
        let stats = shared.stats.clone();
        drop(shared); // the last ack sender: the acker flushes and ends
        let _ = acker.await;
        let snapshot = stats.snapshot();
        tracing::info!(
            received = snapshot.received,
            acked = snapshot.acked,
            nacked = snapshot.nacked,
            poison = snapshot.poison,
            dead_lettered = snapshot.dead_lettered,
            "engine stopped"
        );
        snapshot
    }
}

/// Extends the visibility of every held message before it lapses: each tick, the messages with
/// less than half their visibility left get a fresh visibility timeout, ten per call.
async fn run_heartbeat<S: Source>(
    source: Arc<S>,
    held: Arc<Held<S::Handle>>,
    visibility: Duration,
    stop: CancellationToken,
) {
    let tick = (visibility / 6).clamp(Duration::from_millis(100), Duration::from_secs(5));
    let batch = source.max_ack_batch().max(1);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let now = Instant::now();
        let due: Vec<(u64, S::Handle)> = held
            .lock()
            .iter()
            .filter(|(_, e)| {
                e.visible_until.saturating_duration_since(now) <= visibility / 2
                    && now + visibility <= e.first_received + MAX_HOLD
            })
            .map(|(k, e)| (*k, e.handle.clone()))
            .collect();
        for chunk in due.chunks(batch) {
            let handles: Vec<S::Handle> = chunk.iter().map(|(_, h)| h.clone()).collect();
            let failures = source.extend(&handles, visibility).await;
            let failed: std::collections::HashSet<usize> =
                failures.iter().map(|f| f.index).collect();
            let extended_until = now + visibility;
            let mut entries = held.lock();
            for (i, (key, _)) in chunk.iter().enumerate() {
                if !failed.contains(&i)
                    && let Some(e) = entries.get_mut(key)
                {
                    e.visible_until = extended_until;
                }
            }
            drop(entries);
            metrics::counter!("sluice_visibility_extensions_total")
                .increment((chunk.len() - failed.len()) as u64);
            for f in failures {
                // Usually a message acked or nacked meanwhile; otherwise it may be delivered
                // again when its visibility lapses (and rewritten idempotently).
                metrics::counter!("sluice_visibility_extension_failures_total").increment(1);
                tracing::debug!(error = %f.error, "visibility extension failed");
            }
        }
    }
}

/// How long a receive outstanding at shutdown may still take to land (its messages are handed
/// back at once); a long poll parked on an empty queue is dropped after this.
const RECEIVE_LANDING: Duration = Duration::from_millis(500);

/// The body-bytes budget in KiB permits (a semaphore counts in u32).
fn budget_kib(bytes: usize) -> u32 {
    (bytes / 1024).clamp(1, u32::MAX as usize >> 4) as u32
}

/// Makes messages received as shutdown began visible again at once, unprocessed.
async fn hand_back<S: Source>(shared: &Shared<S>, messages: Vec<Received<S::Handle>>) {
    if messages.is_empty() {
        return;
    }
    let n = messages.len() as u64;
    shared.stats.received.fetch_add(n, Ordering::Relaxed);
    shared.stats.nacked.fetch_add(n, Ordering::Relaxed);
    metrics::counter!("sluice_messages_received_total").increment(n);
    metrics::counter!("sluice_messages_nacked_total", "reason" => "shutdown").increment(n);
    let handles: Vec<S::Handle> = messages.into_iter().map(|m| m.handle).collect();
    let mut failed = 0;
    for chunk in handles.chunks(shared.source.max_ack_batch().max(1)) {
        failed += shared.source.extend(chunk, Duration::ZERO).await.len();
    }
    if failed > 0 {
        metrics::counter!("sluice_nack_failures_total").increment(failed as u64);
        tracing::warn!(
            failed,
            "could not hand back messages received at shutdown; they return when their visibility timeout ends"
        );
    }
    tracing::info!(
        messages = n,
        "handed back messages that arrived as shutdown began"
    );
}

async fn poll_loop<S: Source>(poller: usize, shared: Arc<Shared<S>>, shutdown: CancellationToken) {
    let max = shared.config.max_messages;
    let backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(10),
    };
    let breaker = shared.writer.breaker();
    let mut errors: u32 = 0;
    loop {
        shared.stats.progress(poller);
        let mut reserved = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = shared.permits.clone().acquire_many_owned(max as u32) => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        // The breaker is open: the table keeps failing, so the messages wait in the queue.
        // Intake pacing: nothing more while what is here takes longer than the horizon to write.
        loop {
            let open = breaker.is_open(Instant::now().into_std());
            let behind = shared.config.intake_horizon.is_some_and(|h| {
                shared
                    .writer
                    .backlog_seconds()
                    .is_some_and(|s| s > h.as_secs_f64())
            });
            // The body-bytes budget is used up: what is held already waits for room, so do not
            // fetch more yet.
            let full = shared.bytes.available_permits() == 0;
            if !open && !behind && !full {
                break;
            }
            shared.stats.progress(poller);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(if open { 200 } else { 20 })) => {}
            }
        }
        // Dropping the receive future is how a parked long poll is cancelled: on shutdown, and
        // when the breaker opens (whatever it brought in would only fail).
        let receive = shared.source.receive(max);
        tokio::pin!(receive);
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => {
                // A receive that is answering as shutdown comes would strand its messages in
                // flight until their visibility timeout: let it land, and hand them straight back.
                if let Ok(Ok(messages)) = tokio::time::timeout(RECEIVE_LANDING, &mut receive).await {
                    hand_back(&shared, messages).await;
                }
                break;
            }
            _ = breaker.opened() => continue,
            r = &mut receive => r,
        };
        shared.stats.progress(poller);
        let messages = match received {
            Ok(messages) => messages,
            Err(error) => {
                errors = errors.saturating_add(1);
                shared
                    .stats
                    .receive_errors_in_a_row
                    .store(errors, Ordering::Relaxed);
                metrics::counter!("sluice_receive_errors_total").increment(1);
                tracing::warn!(poller, %error, retryable = error.retryable, errors_in_a_row = errors, "receive failed; polling again after a pause");
                drop(reserved);
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.delay(errors.min(16) - 1)) => continue,
                }
            }
        };
        errors = 0;
        // The body-bytes budget: wait for room before taking these on (their visibility covers
        // the wait; the writes in progress free it).
        let capacity = budget_kib(shared.config.max_in_flight_bytes);
        let kib: Vec<u32> = messages
            .iter()
            .map(|m| (m.body.len().div_ceil(1024).max(1) as u64).min(u64::from(capacity)) as u32)
            .collect();
        let total = kib
            .iter()
            .map(|&k| u64::from(k))
            .sum::<u64>()
            .min(u64::from(capacity)) as u32;
        let mut bytes = match shared.bytes.clone().try_acquire_many_owned(total) {
            Ok(p) => p,
            Err(_) => {
                tracing::debug!(
                    poller,
                    kib = total,
                    "intake waits for room in worker.max_in_flight_bytes"
                );
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => {
                        hand_back(&shared, messages).await;
                        break;
                    }
                    permit = shared.bytes.clone().acquire_many_owned(total) => match permit {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                }
            }
        };
        shared
            .stats
            .receive_errors_in_a_row
            .store(0, Ordering::Relaxed);
        shared
            .stats
            .successful_polls
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_receive_requests_total").increment(1);
        if messages.is_empty() {
            continue;
        }
        let n = messages.len() as u64;
        shared.stats.received.fetch_add(n, Ordering::Relaxed);
        shared.stats.in_flight.fetch_add(n, Ordering::Relaxed);
        metrics::counter!("sluice_messages_received_total").increment(n);
        metrics::gauge!("sluice_messages_in_flight").increment(n as f64);
        let now_ms = epoch_ms();
        // FIFO groups in the order received: each group's messages are handled one by one.
        let mut groups: Vec<Group<S::Handle>> = Vec::new();
        for (message, kib) in messages.into_iter().zip(kib) {
            // A receive larger than the whole budget was charged the whole budget: its last
            // messages find nothing left to split and ride on the others' share.
            let body_bytes = bytes.split(kib as usize);
            if let Some(sent) = message.sent_at_ms {
                metrics::histogram!("sluice_message_age_seconds")
                    .record(now_ms.saturating_sub(sent) as f64 / 1000.0);
            }
            // `reserved` holds `max` permits and a receive returns at most `max` messages.
            let Some(permit) = reserved.split(1) else {
                break;
            };
            match message.group_id.clone() {
                None => {
                    let task_shared = shared.clone();
                    shared.tasks.spawn(async move {
                        settle(&task_shared, message, permit).await;
                        drop(body_bytes);
                    });
                }
                Some(g) => match groups.iter_mut().find(|(name, _, _)| *name == g) {
                    Some((_, list, held)) => {
                        list.push((message, permit));
                        held.extend(body_bytes);
                    }
                    None => {
                        groups.push((g, vec![(message, permit)], body_bytes.into_iter().collect()))
                    }
                },
            }
        }
        for (_, list, held) in groups {
            let task_shared = shared.clone();
            shared.tasks.spawn(async move {
                run_group(task_shared, list).await;
                drop(held);
            });
        }
    }
}

/// A received message with its in-flight slot.
type Claimed<H> = (Received<H>, OwnedSemaphorePermit);

/// One FIFO group of a receive: its name, its messages, and their share of the body-bytes budget.
type Group<H> = (String, Vec<Claimed<H>>, Vec<OwnedSemaphorePermit>);

/// One FIFO group's messages, in order. When one is not written, it and every later one go back
/// to the queue unprocessed, so nothing of the group is ever written out of order.
async fn run_group<S: Source>(shared: Arc<Shared<S>>, list: Vec<Claimed<S::Handle>>) {
    let mut failed = false;
    for (message, permit) in list {
        if failed {
            // The failed message, now invisible, keeps the group locked in the queue; these
            // follow it back in order.
            finish(
                &shared,
                &message,
                Some((Duration::ZERO, "fifo_order")),
                permit,
            )
            .await;
            continue;
        }
        failed = !settle(&shared, message, permit).await;
    }
}

/// Processes one message and settles it: ack, dead-letter, or nack. True when it was written
/// (or handed to the dead-letter path).
async fn settle<S: Source>(
    shared: &Shared<S>,
    message: Received<S::Handle>,
    permit: OwnedSemaphorePermit,
) -> bool {
    let guard = shared.hold(&message);
    let deadline = message.received_at + shared.config.message_timeout;
    let outcome = tokio::select! {
        biased;
        _ = shared.hard_stop.cancelled() => Outcome::Shutdown,
        r = tokio::time::timeout_at(deadline, process(shared, &message, deadline)) => match r {
            Ok(outcome) => outcome,
            Err(_) => Outcome::TimedOut,
        },
    };
    // The heartbeat must not extend a message once it is settled.
    drop(guard);
    let id = message.message_id.as_str();
    let receive_count = message.receive_count;
    let nack = match outcome {
        Outcome::Written => {
            // Fails only if the acker is gone, which happens after every task has ended.
            let _ = shared.acks.send(message.handle.clone()).await;
            None
        }
        Outcome::Poison(error) => {
            shared.stats.poison.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("sluice_poison_messages_total", "reason" => error.reason())
                .increment(1);
            let detail = error.to_string();
            match shared
                .source
                .dead_letter(&message, error.reason(), &detail)
                .await
            {
                Ok(true) => {
                    shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("sluice_dead_lettered_total", "reason" => error.reason())
                        .increment(1);
                    tracing::warn!(message_id = id, receive_count, reason = error.reason(), error = %detail, "poison message sent to the dead-letter queue");
                    let _ = shared.acks.send(message.handle.clone()).await;
                    return true;
                }
                Ok(false) => {
                    tracing::warn!(message_id = id, receive_count, reason = error.reason(), error = %detail, "poison message; leaving it to the queue's redrive policy");
                    Some((shared.config.poison_nack_delay, "poison"))
                }
                Err(e) => {
                    tracing::warn!(message_id = id, reason = error.reason(), error = %e, "could not dead-letter a poison message; it comes back later");
                    Some((
                        shared.config.nack_delay(receive_count),
                        "dead_letter_failed",
                    ))
                }
            }
        }
        Outcome::WriteFailed(error) => {
            tracing::warn!(message_id = id, receive_count, reason = error.reason(), %error, "message not written; returning it to the queue");
            Some((shared.config.nack_delay(receive_count), error.reason()))
        }
        Outcome::TimedOut => {
            tracing::warn!(
                message_id = id,
                receive_count,
                timeout_s = shared.config.message_timeout.as_secs_f64(),
                "message timed out; returning it to the queue"
            );
            Some((shared.config.nack_delay(receive_count), "timeout"))
        }
        Outcome::Shutdown => Some((Duration::ZERO, "shutdown")),
    };
    let written = nack.is_none();
    finish(shared, &message, nack, permit).await;
    written
}

/// Nacks (when asked) and releases a message's slot.
async fn finish<S: Source>(
    shared: &Shared<S>,
    message: &Received<S::Handle>,
    nack: Option<(Duration, &'static str)>,
    permit: OwnedSemaphorePermit,
) {
    if let Some((delay, reason)) = nack {
        shared.stats.nacked.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_messages_nacked_total", "reason" => reason).increment(1);
        if let Err(error) = shared.source.nack(&message.handle, delay).await {
            metrics::counter!("sluice_nack_failures_total").increment(1);
            tracing::warn!(message_id = %message.message_id, %error, "nack failed; the message returns when its visibility timeout ends");
        }
    }
    metrics::histogram!("sluice_message_processing_seconds")
        .record(message.received_at.elapsed().as_secs_f64());
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!("sluice_messages_in_flight").decrement(1.0);
    drop(permit);
}

async fn process<S: Source>(
    shared: &Shared<S>,
    message: &Received<S::Handle>,
    deadline: Instant,
) -> Outcome {
    let items = match decode_message(&message.body, &shared.schema) {
        Ok(items) => items,
        Err(e) => return Outcome::Poison(e),
    };
    match shared.writer.write(items, deadline).await {
        Ok(()) => Outcome::Written,
        Err(e) => Outcome::WriteFailed(e),
    }
}

async fn run_acker<S: Source>(
    source: Arc<S>,
    mut rx: mpsc::Receiver<S::Handle>,
    linger: Duration,
    max_concurrent: usize,
    stats: Arc<EngineStats>,
) {
    let slots = Arc::new(Semaphore::new(max_concurrent.max(1)));
    let calls = TaskTracker::new();
    let max = source.max_ack_batch().max(1);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let flush_at = Instant::now() + linger;
        while batch.len() < max {
            tokio::select! {
                biased;
                next = rx.recv() => match next {
                    Some(h) => batch.push(h),
                    None => break,
                },
                _ = tokio::time::sleep_until(flush_at) => break,
            }
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        calls.spawn(ack_batch(source.clone(), batch, stats.clone(), slot));
    }
    calls.close();
    calls.wait().await;
}

async fn ack_batch<S: Source>(
    source: Arc<S>,
    mut batch: Vec<S::Handle>,
    stats: Arc<EngineStats>,
    _slot: OwnedSemaphorePermit,
) {
    const ATTEMPTS: u32 = 3;
    let backoff = Backoff {
        base: Duration::from_millis(100),
        cap: Duration::from_secs(1),
    };
    let mut last_error = String::new();
    for attempt in 0..ATTEMPTS {
        let failures = source.ack(&batch).await;
        let acked = (batch.len() - failures.len()) as u64;
        stats.acked.fetch_add(acked, Ordering::Relaxed);
        metrics::counter!("sluice_messages_acked_total").increment(acked);
        if failures.is_empty() {
            return;
        }
        let mut retry = Vec::new();
        for failure in failures {
            last_error = failure.error.message.clone();
            if failure.error.retryable && attempt + 1 < ATTEMPTS {
                retry.push(batch[failure.index].clone());
            } else {
                stats.ack_failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("sluice_ack_failures_total").increment(1);
                tracing::warn!(error = %failure.error, "could not delete a written message; it will be delivered again and rewritten to the same row");
            }
        }
        if retry.is_empty() {
            return;
        }
        batch = retry;
        tokio::time::sleep(backoff.delay(attempt)).await;
    }
    tracing::warn!(left = batch.len(), error = %last_error, "gave up deleting written messages");
}
