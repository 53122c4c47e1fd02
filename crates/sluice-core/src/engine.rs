//! The worker pool: long pollers feed messages to tasks that decode, write and ack them.
//!
//! ```text
//! pollers (N) ──receive──▶ held (heartbeat from receipt) ──decode──▶ message task ──items──▶ Writer ──▶ table
//!     │ paced by the WCU of what is held   │ byte budget              │ all items written   │ oldest message first
//!     │ stopped while the breaker is open  ▼                          ▼                     ▼
//!     │                               poison: dead-letter path   acker (batched deletes)   no progress: nack
//!     └ heartbeat: every held message's visibility is extended before it lapses
//! ```
//!
//! - In-flight is bounded by a semaphore: a poller reserves `max_messages` slots before it polls,
//!   so a parked long poll can never bring in more than the pool can hold.
//! - **Held from receipt.** Every received message is registered with the heartbeat at once, so
//!   its visibility is extended whatever it waits for: room in the byte budget, its FIFO
//!   predecessors, write capacity. The handle is released (and any extension in flight for it
//!   awaited) before the message is acked or nacked, so a late extension can never undo a nack.
//! - **Intake by whole WCU.** Each message is decoded on receipt and its whole write cost is
//!   counted as held until it settles. A poller receives only while what is held takes less
//!   than `intake_horizon` at the paced rate, and asks for as many messages as the room left
//!   allows at the WCU messages have been carrying (at least one; one while nothing is known yet;
//!   the estimate rises at once with a larger message). A table of 100 WCU is not handed ten
//!   packed messages of 900 logs it would need 90 seconds for: what is held past the horizon is
//!   at most one receive sized by messages smaller than the ones that came.
//! - **Waiting is not failing.** The writer serves messages oldest first and times a message out
//!   only when it stops making progress for `message_timeout` (see [`crate::writer`]): a message
//!   queueing behind a paced backlog, or a FIFO follower waiting for its turn, is never nacked.
//! - A nack makes the message visible again after `base × 2^(receive count − 1)`, capped, with
//!   jitter. Poison, and an item the table rejects on its own, go to the dead-letter path with
//!   their reason when the source has one.
//! - FIFO: messages of one group are handled one after another, in order; when one fails, it and
//!   every later message of its group that is held go back to the queue, unprocessed.
//! - Shutdown: the token stops the pollers at once (a parked long poll is dropped); in-flight
//!   messages get `shutdown_grace` to finish; the rest are nacked with no delay so another worker
//!   takes them immediately; pending acks are flushed. Every step after the grace period shares
//!   [`SHUTDOWN_MARGIN`], so `run` returns within `shutdown_grace + SHUTDOWN_MARGIN` even when the
//!   buffer stops answering (what could not be acked or nacked comes back after its visibility
//!   timeout and is rewritten to the same rows).

use crate::sync::Recover;
use sluice_common::catalog;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::Breaker;
use crate::codec::{DecodeError, Schema, decode_message};
use crate::events::{
    AckFailed, HandedBack, Nacked, Poison, PoisonOutcome, ReceiveFailed, VisibilityExtensionFailed,
};
use crate::item::Item;
use crate::rate::Backoff;
use crate::source::{Received, Source, SourceError};
use crate::writer::{WriteError, WriteFailure, Writer};

/// How the [`Engine`] polls, holds, times out, nacks and shuts down; [`EngineConfig::validate`]
/// says whether the numbers fit together. Defaults: 4 pollers of 10 messages, 1000 messages and 16
/// MiB held, 30 s without progress, 25 s shutdown grace, nacks from 2 s to 300 s, 5 s intake
/// horizon, 20 s long polls, no heartbeat.
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
    /// How long a message may go without progress (no item landing, no write capacity being
    /// granted to it or to the messages ahead of it) before it is nacked. Queueing for capacity
    /// does not count.
    pub message_timeout: Duration,
    /// Time in-flight messages get to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Nack backoff: a failed message is invisible for `base × 2^(receive count − 1)`, at most
    /// `nack_backoff_max`, with jitter.
    pub nack_backoff_base: Duration,
    /// The longest nack backoff (default 300 s); the jitter stays under it.
    pub nack_backoff_max: Duration,
    /// Visibility delay of a poison message left to the queue's redrive policy (when the source
    /// has no dead-letter path).
    pub poison_nack_delay: Duration,
    /// How long the acker waits to fill a batch of deletes.
    pub ack_linger: Duration,
    /// Delete calls in flight at once.
    pub max_concurrent_acks: usize,
    /// Intake pacing: receive only while the WCU of what is held takes less than this at the
    /// paced rate, so the pool never holds much more than it can write soon. None: no intake
    /// pacing.
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

/// How long a message may be held from its receive: 12 hours less one visibility timeout (at
/// most half of it), the span the heartbeat's last extension is sure to cover.
pub fn hold_limit(visibility: Option<Duration>) -> Duration {
    MAX_HOLD - visibility.map_or(Duration::ZERO, |v| v.min(MAX_HOLD / 2))
}

/// What shutdown may take beyond `shutdown_grace`: nacking the unfinished messages, the last
/// heartbeat, flushing acks. Each is bounded by it, together.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_secs(8);

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
        if self.intake_horizon.is_some_and(|h| h.is_zero()) {
            return Err("intake_horizon must be above zero".into());
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

use crate::time::epoch_ms;

/// Live counters of one engine, for summaries, progress, readiness and liveness.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Messages received, counted once each, including those handed back unprocessed.
    pub received: AtomicU64,
    /// Messages the source confirmed deleted (acked); an ack that failed is not counted.
    pub acked: AtomicU64,
    /// Messages handed back to the source (nacks and shutdown or breaker hand-backs), counted when
    /// the call is made, whether or not it succeeds.
    pub nacked: AtomicU64,
    /// Messages that can never be written (a poison body, or an item the table rejects on its own),
    /// whether the dead-letter path took them or not.
    pub poison: AtomicU64,
    /// Poison messages the source's dead-letter path took; the rest were nacked to the queue's
    /// redrive policy.
    pub dead_lettered: AtomicU64,
    /// Acks that failed for good (not retryable, or still failing after the acker's retries); those
    /// messages come back after their visibility timeout and are rewritten to the same rows.
    pub ack_failures: AtomicU64,
    /// Messages held now: received and not yet acked or nacked.
    pub in_flight: AtomicU64,
    /// WCU of the messages held (received, decoded, not yet settled), on the table.
    pub held_wcu: AtomicU64,
    /// Microseconds the messages held take to write at the paced rates, on their slowest budget
    /// (the table or an index): what intake paces by.
    pub held_micros: AtomicU64,
    /// Receive calls failed in a row (0 after any success).
    pub receive_errors_in_a_row: AtomicU32,
    /// Per poller: when its loop last made progress (a receive returned, or it waited on purpose
    /// for backpressure or the breaker), in milliseconds since the epoch.
    poller_progress: Mutex<Vec<u64>>,
}

/// A copy of the [`EngineStats`] counters at one moment (each read on its own, so not one atomic
/// cut), as [`Engine::run`] returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    /// Messages received.
    pub received: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages nacked or handed back.
    pub nacked: u64,
    /// Messages that can never be written.
    pub poison: u64,
    /// Poison messages the dead-letter path took.
    pub dead_lettered: u64,
    /// Acks that failed for good.
    pub ack_failures: u64,
    /// Messages held at that moment.
    pub in_flight: u64,
}

impl EngineStats {
    /// Reads the counters now, without locking.
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
        let mut p = self.poller_progress.locked();
        if p.len() <= poller {
            p.resize(poller + 1, 0);
        }
        p[poller] = epoch_ms();
    }

    /// The longest time any poller has gone without progress (zero before polling starts).
    pub fn stalest_poller(&self) -> Duration {
        let p = self.poller_progress.locked();
        let now = epoch_ms();
        p.iter()
            .map(|&t| Duration::from_millis(now.saturating_sub(t)))
            .max()
            .unwrap_or_default()
    }
}

/// The worker pool over one source and one writer (see the module docs). A message is acked only
/// once every item it carries is written, or once the source's dead-letter path has taken it;
/// anything else is nacked.
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
    /// The table refused an item on its own (ValidationException): no retry can help.
    Rejected(WriteError),
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
    /// Held (locked) by the heartbeat while an extension covering this message is in flight.
    extending: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// A held message's registration; releasing or dropping it stops the heartbeat for it.
struct HeldGuard<H> {
    held: Arc<Held<H>>,
    key: u64,
}

impl<H> Held<H> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, HeldEntry<H>>> {
        self.entries.locked()
    }
}

impl<H> HeldGuard<H> {
    /// Stops the heartbeat for this message and waits for an extension of it already in flight,
    /// so nothing extends it after this returns (an extension landing after a nack would hide
    /// the message again for a whole visibility timeout).
    async fn release(self) {
        let entry = self.held.lock().remove(&self.key);
        if let Some(call) = entry.and_then(|e| e.extending) {
            let _ = call.lock().await;
        }
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
    /// Receipt order: the writer serves lower numbers first.
    order: AtomicU64,
    /// Seconds of writing per message lately (rising at once, falling slowly), to size
    /// receives; 0: none seen yet.
    seconds_per_message: Mutex<f64>,
    /// Body KiB per message lately (exponentially weighted), to reserve the byte budget before a
    /// receive; 0: none seen yet.
    kib_per_message: Mutex<f64>,
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
                extending: None,
            },
        );
        HeldGuard {
            held: self.held.clone(),
            key,
        }
    }

    /// How many messages the next receive may ask for: all `max` without pacing; else as many
    /// as fit in the intake horizon at the time messages have been taking to write, at least
    /// one. None: what is held already fills the horizon.
    fn receive_size(&self, max: usize) -> Option<usize> {
        let Some(horizon) = self.config.intake_horizon else {
            return Some(max);
        };
        if self.writer.paced_rate().is_none() {
            return Some(max);
        }
        let held = self.stats.held_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let room = horizon.as_secs_f64() - held;
        if held > 0.0 && room <= 0.0 {
            return None;
        }
        let per_message = *lock(&self.seconds_per_message);
        if per_message <= 0.0 {
            // Nothing learnt yet: one message tells what messages carry here.
            return Some(1);
        }
        Some(((room / per_message).floor() as usize).clamp(1, max))
    }

    /// Learns what messages cost, for [`Shared::receive_size`]: at once when they grow (so one
    /// large message is enough to stop asking for many), slowly when they shrink.
    fn observe_seconds(&self, seconds: f64) {
        let mut avg = lock(&self.seconds_per_message);
        *avg = if seconds >= *avg {
            seconds
        } else {
            0.8 * *avg + 0.2 * seconds
        };
    }

    /// The byte budget a receive of `ask` messages should reserve before it is made, in KiB,
    /// and how many messages it may then ask for: as many as the budget has room for at the
    /// bodies messages have been carrying. (0, ask) before any message has been seen.
    fn byte_reservation(&self, ask: usize) -> (u32, usize) {
        let per_message = *lock(&self.kib_per_message);
        if per_message <= 0.0 {
            return (0, ask);
        }
        let capacity = budget_kib(self.config.max_in_flight_bytes) as f64;
        let room = self.bytes.available_permits() as f64;
        let ask = ((room / per_message).floor() as usize).clamp(1, ask);
        let kib = (ask as f64 * per_message).ceil().min(capacity) as u32;
        (kib, ask)
    }
}

fn ewma(m: &Mutex<f64>, x: f64) {
    let mut avg = lock(m);
    *avg = if *avg <= 0.0 { x } else { 0.8 * *avg + 0.2 * x };
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.locked()
}

impl<S: Source> Engine<S> {
    /// An engine that will drain `source` into `writer`, decoding bodies with `schema`. Starts
    /// nothing: [`Engine::run`] does. `config` is taken as is; call [`EngineConfig::validate`]
    /// first.
    pub fn new(source: Arc<S>, writer: Writer, schema: Schema, config: EngineConfig) -> Self {
        Engine {
            source,
            writer,
            schema: Arc::new(schema),
            config,
            stats: Arc::new(EngineStats::default()),
        }
    }

    /// The engine's live counters, shared: they stay readable while [`Engine::run`] consumes the
    /// engine.
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
        let shared = self.into_shared(ack_tx);
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
        shutdown.cancelled().await;
        // From the signal: the grace period, then one margin for everything else, whatever the
        // buffer does (a poller handing back what it holds waits on it too).
        let grace_over = Instant::now() + shared.config.shutdown_grace;
        let give_up = grace_over + SHUTDOWN_MARGIN;
        stop_pollers(pollers, give_up).await;
        drain_tasks(&shared, grace_over, give_up).await;
        heartbeat_stop.cancel();
        if let Some(h) = heartbeat {
            let _ = tokio::time::timeout_at(give_up, h).await;
        }
        let stats = shared.stats.clone();
        drop(shared); // the last ack sender: the acker flushes and ends
        if tokio::time::timeout_at(give_up, acker).await.is_err() {
            tracing::error!(
                "acks could not be flushed in time (the buffer does not answer); those messages come back and are rewritten to the same rows"
            );
        }
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

    /// The state every poller and message task shares.
    fn into_shared(self, acks: mpsc::Sender<S::Handle>) -> Arc<Shared<S>> {
        Arc::new(Shared {
            permits: Arc::new(Semaphore::new(self.config.max_in_flight)),
            bytes: Arc::new(Semaphore::new(
                budget_kib(self.config.max_in_flight_bytes) as usize
            )),
            hard_stop: CancellationToken::new(),
            acks,
            tasks: TaskTracker::new(),
            held: Arc::new(Held {
                entries: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            }),
            order: AtomicU64::new(0),
            seconds_per_message: Mutex::new(0.0),
            kib_per_message: Mutex::new(0.0),
            source: self.source,
            writer: self.writer,
            schema: self.schema,
            config: self.config,
            stats: self.stats,
        })
    }
}

/// Extension calls the heartbeat makes at once: with a thousand messages held and a slow
/// server, one call after another could take longer than the half visibility it has.
const HEARTBEAT_CALLS: usize = 8;

/// Held messages (key and handle) that go in one extension call.
type Chunk<H> = Vec<(u64, H)>;

/// The lock a call's messages carry while it is in flight.
type CallLock = Arc<tokio::sync::Mutex<()>>;

/// Extends the visibility of every held message before it lapses: each tick, the messages with
/// less than half their visibility left get a fresh visibility timeout, ten per call, up to
/// [`HEARTBEAT_CALLS`] calls at once. While a call is in flight its messages carry a lock, which
/// [`HeldGuard::release`] waits for.
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
        // Take every due message and mark it, in one look at the table, so a message released
        // meanwhile is never part of a call.
        let mut chunks: Vec<(tokio::sync::OwnedMutexGuard<()>, Chunk<S::Handle>)> = Vec::new();
        {
            let mut entries = held.lock();
            let mut current: Option<(CallLock, Chunk<S::Handle>)> = None;
            for (k, e) in entries.iter_mut() {
                if e.visible_until.saturating_duration_since(now) > visibility / 2
                    || now + visibility > e.first_received + MAX_HOLD
                {
                    continue;
                }
                let (call, chunk) = current
                    .get_or_insert_with(|| (Arc::new(tokio::sync::Mutex::new(())), Vec::new()));
                e.extending = Some(call.clone());
                chunk.push((*k, e.handle.clone()));
                if chunk.len() == batch {
                    let (call, chunk) = current.take().expect("just filled");
                    if let Ok(g) = call.try_lock_owned() {
                        chunks.push((g, chunk));
                    }
                }
            }
            if let Some((call, chunk)) = current.take()
                && let Ok(g) = call.try_lock_owned()
            {
                chunks.push((g, chunk));
            }
        }
        let mut calls = JoinSet::new();
        for (in_flight, chunk) in chunks {
            while calls.len() >= HEARTBEAT_CALLS {
                calls.join_next().await;
            }
            let (source, held) = (source.clone(), held.clone());
            calls.spawn(async move {
                let handles: Vec<S::Handle> = chunk.iter().map(|(_, h)| h.clone()).collect();
                let failures = source.extend(&handles, visibility).await;
                let failed: std::collections::HashSet<usize> =
                    failures.iter().map(|f| f.index).collect();
                let extended_until = now + visibility;
                let mut entries = held.lock();
                for (i, (key, _)) in chunk.iter().enumerate() {
                    if let Some(e) = entries.get_mut(key) {
                        e.extending = None;
                        if !failed.contains(&i) {
                            e.visible_until = extended_until;
                        }
                    }
                }
                drop(entries);
                drop(in_flight);
                metrics::counter!(catalog::VISIBILITY_EXTENSIONS_TOTAL)
                    .increment((chunk.len() - failed.len()) as u64);
                for f in failures {
                    // Usually a message acked or nacked meanwhile; otherwise it may be delivered
                    // again when its visibility lapses (and rewritten idempotently).
                    VisibilityExtensionFailed { error: &f.error }.emit();
                }
            });
        }
        tokio::select! {
            _ = stop.cancelled() => {
                calls.abort_all();
                return;
            }
            _ = async { while calls.join_next().await.is_some() {} } => {}
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

/// Makes messages visible again at once, unprocessed: received as shutdown began, or as the
/// breaker opened, or held while shutdown came before they could start. `guards` are their
/// heartbeat registrations, if they were held: released first, so no extension undoes this.
async fn hand_back<S: Source>(
    shared: &Shared<S>,
    messages: Vec<Received<S::Handle>>,
    guards: Vec<HeldGuard<S::Handle>>,
    reason: &'static str,
    counted: bool,
) {
    for g in guards {
        g.release().await;
    }
    if messages.is_empty() {
        return;
    }
    let n = messages.len() as u64;
    if !counted {
        shared.stats.received.fetch_add(n, Ordering::Relaxed);
        metrics::counter!(catalog::MESSAGES_RECEIVED_TOTAL).increment(n);
    }
    shared.stats.nacked.fetch_add(n, Ordering::Relaxed);
    let handles: Vec<S::Handle> = messages.into_iter().map(|m| m.handle).collect();
    let mut failed = 0;
    for chunk in handles.chunks(shared.source.max_ack_batch().max(1)) {
        failed += shared.source.extend(chunk, Duration::ZERO).await.len();
    }
    HandedBack {
        messages: n,
        reason,
        failed,
    }
    .emit();
}

/// Takes `kib` of the body-bytes budget, waiting for room (a wait on purpose: the poller counts
/// as making progress). None: shutdown came first.
async fn wait_for_bytes<S: Source>(
    shared: &Shared<S>,
    poller: usize,
    kib: u32,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(p) = shared.bytes.clone().try_acquire_many_owned(kib) {
        return Some(p);
    }
    tracing::debug!(
        poller,
        kib,
        "intake waits for room in worker.max_in_flight_bytes"
    );
    let acquire = shared.bytes.clone().acquire_many_owned(kib);
    tokio::pin!(acquire);
    loop {
        shared.stats.progress(poller);
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return None,
            permit = &mut acquire => return permit.ok(),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// A message from receipt to settlement.
struct Claimed<H> {
    message: Received<H>,
    /// Its in-flight slot.
    permit: OwnedSemaphorePermit,
    /// Its heartbeat registration, from receipt.
    guard: HeldGuard<H>,
    /// Its place in the order of receipt.
    order: u64,
    /// Its items, or why it is poison.
    decoded: Result<Vec<Item>, DecodeError>,
    /// Its WCU, counted in `held_wcu` until it settles.
    wcu: u64,
    /// Its writing time, counted in `held_micros` until it settles.
    micros: u64,
    /// Its share of the body-bytes budget.
    bytes: Option<OwnedSemaphorePermit>,
}

/// Waits for the pollers to hand back what they hold, until `give_up`; then aborts them.
async fn stop_pollers(mut pollers: JoinSet<()>, give_up: Instant) {
    if tokio::time::timeout_at(give_up, async {
        while pollers.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::error!(
            "pollers could not hand back what they hold in time (the buffer does not answer); those messages come back after their visibility timeout"
        );
        pollers.abort_all();
    }
}

/// Lets the messages in flight finish until `grace_over`; then stops them (they go back to the
/// queue) and waits for that until `give_up`.
async fn drain_tasks<S: Source>(shared: &Shared<S>, grace_over: Instant, give_up: Instant) {
    let in_flight = shared.stats.in_flight.load(Ordering::Relaxed);
    tracing::info!(
        in_flight,
        grace_s = shared.config.shutdown_grace.as_secs_f64(),
        "stopped receiving; draining in-flight messages"
    );
    shared.tasks.close();
    if tokio::time::timeout_at(grace_over, shared.tasks.wait())
        .await
        .is_ok()
    {
        return;
    }
    let left = shared.stats.in_flight.load(Ordering::Relaxed);
    tracing::warn!(
        left,
        "grace period over; returning unfinished messages to the queue"
    );
    shared.hard_stop.cancel();
    if tokio::time::timeout_at(give_up, shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::error!(
            left = shared.stats.in_flight.load(Ordering::Relaxed),
            "messages could not be returned in time (the buffer does not answer); they come back after their visibility timeout"
        );
    }
}

/// One poller: waits for room (in-flight slots, the intake horizon, the body-bytes budget, a
/// closed breaker), receives, claims what came and hands each message (or FIFO group) to a task.
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
        let reserved = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = shared.permits.clone().acquire_many_owned(max as u32) => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let Some(ask) = wait_for_intake(&shared, poller, &breaker, &shutdown).await else {
            return;
        };
        // Reserve the byte budget the receive is likely to need before making it, so pollers
        // racing each other cannot bring in several budgets' worth of bodies at once.
        let (reserve_kib, ask) = shared.byte_reservation(ask);
        let Some(bytes) = wait_for_bytes(&shared, poller, reserve_kib, &shutdown).await else {
            break;
        };
        let polled = receive(&shared, ask, &breaker, &shutdown).await;
        // A receive that returned, answer or error, is progress (liveness must not wait for
        // the pause after an error as well).
        if matches!(polled, Polled::Messages(_) | Polled::Failed(_)) {
            shared.stats.progress(poller);
        }
        let messages = match polled {
            Polled::Shutdown => break,
            Polled::BreakerOpened => continue,
            Polled::Failed(error) => {
                errors = errors.saturating_add(1);
                note_receive_failed(&shared, poller, &error, errors);
                // Nothing is held while pausing: the slots and the bytes go back to the others.
                drop((reserved, bytes));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.delay(errors.min(16) - 1)) => continue,
                }
            }
            Polled::Messages(messages) => messages,
        };
        errors = 0;
        note_receive_ok(&shared);
        if messages.is_empty() {
            continue;
        }
        match claim(&shared, poller, messages, reserved, bytes, &shutdown).await {
            Some(claimed) => dispatch(&shared, claimed),
            None => break,
        }
    }
}

/// Intake pacing: waits while the breaker is open (the table keeps failing, so the messages wait
/// in the queue), while what is held takes longer than the horizon to write, or while the
/// body-bytes budget is used up. Returns how many messages to ask for (no more than fit in what
/// is left of the horizon); None on shutdown.
async fn wait_for_intake<S: Source>(
    shared: &Shared<S>,
    poller: usize,
    breaker: &Breaker,
    shutdown: &CancellationToken,
) -> Option<usize> {
    let max = shared.config.max_messages;
    loop {
        let open = breaker.is_open(Instant::now().into_std());
        let size = shared.receive_size(max);
        metrics::gauge!(catalog::WRITE_BACKLOG_WCU)
            .set(shared.stats.held_wcu.load(Ordering::Relaxed) as f64);
        // The body-bytes budget is used up: what is held already waits for room, so do not
        // fetch more yet.
        let full = shared.bytes.available_permits() == 0;
        if let (false, false, Some(n)) = (open, full, size) {
            return Some(n);
        }
        shared.stats.progress(poller);
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(Duration::from_millis(if open { 200 } else { 20 })) => {}
        }
    }
}

/// What one receive came to.
enum Polled<H> {
    Messages(Vec<Received<H>>),
    Failed(SourceError),
    /// Shutdown began while the receive was parked.
    Shutdown,
    /// The breaker opened while the receive was parked.
    BreakerOpened,
}

/// One receive of up to `ask` messages. Dropping the receive future is how a parked long poll is
/// cancelled: on shutdown, and when the breaker opens (whatever it brought in would only fail).
/// A receive that is answering just then would strand its messages in flight until their
/// visibility timeout: it may land, and they are handed straight back.
async fn receive<S: Source>(
    shared: &Shared<S>,
    ask: usize,
    breaker: &Breaker,
    shutdown: &CancellationToken,
) -> Polled<S::Handle> {
    let receive = shared.source.receive(ask);
    tokio::pin!(receive);
    tokio::select! {
        biased;
        _ = shutdown.cancelled() => {
            if let Ok(Ok(messages)) = tokio::time::timeout(RECEIVE_LANDING, &mut receive).await {
                hand_back(shared, messages, Vec::new(), "shutdown", false).await;
            }
            Polled::Shutdown
        }
        _ = breaker.opened() => {
            if let Ok(Ok(messages)) = tokio::time::timeout(RECEIVE_LANDING, &mut receive).await {
                hand_back(shared, messages, Vec::new(), "breaker_open", false).await;
            }
            Polled::BreakerOpened
        }
        r = &mut receive => match r {
            Ok(messages) => Polled::Messages(messages),
            Err(error) => Polled::Failed(error),
        },
    }
}

fn note_receive_failed<S: Source>(
    shared: &Shared<S>,
    poller: usize,
    error: &SourceError,
    errors: u32,
) {
    shared
        .stats
        .receive_errors_in_a_row
        .store(errors, Ordering::Relaxed);
    ReceiveFailed {
        poller,
        error,
        errors_in_a_row: errors,
    }
    .emit();
}

fn note_receive_ok<S: Source>(shared: &Shared<S>) {
    shared
        .stats
        .receive_errors_in_a_row
        .store(0, Ordering::Relaxed);
    metrics::counter!(catalog::RECEIVE_REQUESTS_TOTAL).increment(1);
}

/// Holds what a receive brought in (from this moment each message's visibility is kept), fits
/// the byte reservation to the bodies that came, and decodes each message into a [`Claimed`].
/// None on shutdown while waiting for bytes (the messages are handed back).
async fn claim<S: Source>(
    shared: &Arc<Shared<S>>,
    poller: usize,
    messages: Vec<Received<S::Handle>>,
    mut reserved: OwnedSemaphorePermit,
    bytes: OwnedSemaphorePermit,
    shutdown: &CancellationToken,
) -> Option<Vec<Claimed<S::Handle>>> {
    let guards: Vec<HeldGuard<S::Handle>> = messages.iter().map(|m| shared.hold(m)).collect();
    let n = messages.len() as u64;
    shared.stats.received.fetch_add(n, Ordering::Relaxed);
    shared.stats.in_flight.fetch_add(n, Ordering::Relaxed);
    metrics::counter!(catalog::MESSAGES_RECEIVED_TOTAL).increment(n);
    metrics::gauge!(catalog::MESSAGES_IN_FLIGHT).increment(n as f64);
    let capacity = budget_kib(shared.config.max_in_flight_bytes);
    let kib: Vec<u32> = messages
        .iter()
        .map(|m| (m.body.len().div_ceil(1024).max(1) as u64).min(u64::from(capacity)) as u32)
        .collect();
    for &k in &kib {
        ewma(&shared.kib_per_message, f64::from(k));
    }
    let total = kib
        .iter()
        .map(|&k| u64::from(k))
        .sum::<u64>()
        .min(u64::from(capacity)) as u32;
    let Some(mut bytes) = fit_bytes(shared, poller, bytes, total, shutdown).await else {
        shared.stats.in_flight.fetch_sub(n, Ordering::Relaxed);
        metrics::gauge!(catalog::MESSAGES_IN_FLIGHT).decrement(n as f64);
        hand_back(shared, messages, guards, "shutdown", true).await;
        return None;
    };
    let now_ms = epoch_ms();
    let mut claimed = Vec::with_capacity(messages.len());
    for ((message, guard), kib) in messages.into_iter().zip(guards).zip(kib) {
        if let Some(sent) = message.sent_at_ms {
            metrics::histogram!(catalog::MESSAGE_AGE_SECONDS)
                .record(now_ms.saturating_sub(sent) as f64 / 1000.0);
        }
        // `reserved` holds `max` permits and a receive returns at most `max` messages.
        let Some(permit) = reserved.split(1) else {
            break;
        };
        // A receive larger than the whole budget was charged the whole budget: its last
        // messages find nothing left to split and ride on the others' share.
        let bytes = bytes.split(kib as usize);
        claimed.push(decode_claimed(shared, message, permit, guard, bytes));
    }
    Some(claimed)
}

/// The body-bytes budget: what was reserved, adjusted to the `total` KiB of the bodies that came
/// (waiting for room when they are larger; the writes in progress free it). None on shutdown.
async fn fit_bytes<S: Source>(
    shared: &Shared<S>,
    poller: usize,
    mut bytes: OwnedSemaphorePermit,
    total: u32,
    shutdown: &CancellationToken,
) -> Option<OwnedSemaphorePermit> {
    let have = bytes.num_permits() as u32;
    if total < have {
        drop(bytes.split((have - total) as usize));
        return Some(bytes);
    }
    if total == have {
        return Some(bytes);
    }
    // More came than was reserved. Take the rest at once if it is free; else give back what
    // this poller holds and wait for the whole amount: never wait while holding part of the
    // budget, or two pollers doing so could wait on each other forever.
    match shared.bytes.clone().try_acquire_many_owned(total - have) {
        Ok(p) => {
            bytes.merge(p);
            Some(bytes)
        }
        Err(_) => {
            drop(bytes);
            wait_for_bytes(shared, poller, total, shutdown).await
        }
    }
}

/// Decodes one held message and counts what writing it will hold (WCU, writing time).
fn decode_claimed<S: Source>(
    shared: &Shared<S>,
    message: Received<S::Handle>,
    permit: OwnedSemaphorePermit,
    guard: HeldGuard<S::Handle>,
    bytes: Option<OwnedSemaphorePermit>,
) -> Claimed<S::Handle> {
    let decoded = decode_message(&message.body, &shared.schema);
    let wcu = decoded
        .as_ref()
        .map_or(0, |items| items.iter().map(|i| u64::from(i.wcu())).sum());
    let seconds = decoded
        .as_ref()
        .map_or(0.0, |items| shared.writer.seconds_for(items));
    let micros = (seconds * 1e6) as u64;
    shared.stats.held_wcu.fetch_add(wcu, Ordering::Relaxed);
    shared
        .stats
        .held_micros
        .fetch_add(micros, Ordering::Relaxed);
    if wcu > 0 {
        shared.observe_seconds(seconds);
        note_write_seconds(seconds, wcu);
    }
    Claimed {
        order: shared.order.fetch_add(1, Ordering::Relaxed),
        bytes,
        message,
        permit,
        guard,
        decoded,
        wcu,
        micros,
    }
}

/// Hands each claimed message to a task of its own, and each FIFO group (in the order received)
/// to one task that handles its messages one by one.
fn dispatch<S: Source>(shared: &Arc<Shared<S>>, claimed: Vec<Claimed<S::Handle>>) {
    let mut groups: Vec<(String, Vec<Claimed<S::Handle>>)> = Vec::new();
    for c in claimed {
        match c.message.group_id.clone() {
            None => {
                let task_shared = shared.clone();
                shared.tasks.spawn(async move {
                    settle(&task_shared, c).await;
                });
            }
            Some(g) => match groups.iter_mut().find(|(name, _)| *name == g) {
                Some((_, list)) => list.push(c),
                None => groups.push((g, vec![c])),
            },
        }
    }
    for (_, list) in groups {
        let task_shared = shared.clone();
        shared.tasks.spawn(async move {
            run_group(task_shared, list).await;
        });
    }
}

/// One FIFO group's messages, in order. When one is not written, it and every later one go back
/// to the queue unprocessed, so nothing of the group is ever written out of order.
async fn run_group<S: Source>(shared: Arc<Shared<S>>, list: Vec<Claimed<S::Handle>>) {
    let mut failed = false;
    for c in list {
        if failed {
            // The failed message, now invisible, keeps the group locked in the queue; these
            // follow it back in order.
            let Claimed {
                message,
                permit,
                guard,
                wcu,
                micros,
                bytes,
                ..
            } = c;
            guard.release().await;
            finish(
                &shared,
                &message,
                Some((Duration::ZERO, "fifo_order")),
                permit,
                (wcu, micros),
            )
            .await;
            drop(bytes);
            continue;
        }
        failed = !settle(&shared, c).await;
    }
}

/// Processes one message and settles it: ack, dead-letter, or nack. True when it was written
/// (or handed to the dead-letter path).
async fn settle<S: Source>(shared: &Shared<S>, c: Claimed<S::Handle>) -> bool {
    let Claimed {
        message,
        permit,
        guard,
        order,
        decoded,
        wcu,
        micros,
        bytes,
    } = c;
    let outcome = match decoded {
        Err(e) => Outcome::Poison(e),
        Ok(items) => {
            // The writer times out work that stops making progress; this only caps how long a
            // message may be held at all. SQS refuses visibility past 12 hours from the receive,
            // so the heartbeat stops extending a visibility timeout before then: the message is
            // handed back a visibility timeout early, while it is surely still held (its last
            // extension reaches past that), so it is never received twice meanwhile and the
            // nack is not refused.
            let cap = message.received_at + hold_limit(shared.config.visibility_timeout);
            let write = shared
                .writer
                .write(items, order, shared.config.message_timeout);
            tokio::select! {
                biased;
                _ = shared.hard_stop.cancelled() => Outcome::Shutdown,
                r = tokio::time::timeout_at(cap, write) => match r {
                    Err(_) | Ok(Err(WriteFailure::Deadline)) => Outcome::TimedOut,
                    Ok(Ok(())) => Outcome::Written,
                    Ok(Err(WriteFailure::Rejected(e))) => Outcome::Rejected(e),
                    Ok(Err(e)) => Outcome::WriteFailed(e),
                },
            }
        }
    };
    // The heartbeat must not extend a message once it is settled.
    guard.release().await;
    let id = message.message_id.as_str();
    let receive_count = message.receive_count;
    let nack = match outcome {
        Outcome::Written => {
            // Fails only if the acker is gone, which happens after every task has ended.
            let _ = shared.acks.send(message.handle.clone()).await;
            None
        }
        Outcome::Poison(error) => {
            dead_letter(shared, &message, error.reason(), &error.to_string()).await
        }
        Outcome::Rejected(error) => {
            // Decoding let it through, but the table refuses it on its own: retrying cannot
            // help, so it is poison too, with the table's own words as the reason.
            dead_letter(shared, &message, "rejected", &error.message).await
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
                "message made no progress for worker.message_timeout; returning it to the queue"
            );
            Some((shared.config.nack_delay(receive_count), "timeout"))
        }
        Outcome::Shutdown => Some((Duration::ZERO, "shutdown")),
    };
    let written = nack.is_none();
    finish(shared, &message, nack, permit, (wcu, micros)).await;
    drop(bytes);
    written
}

/// Hands a message that can never be written to the dead-letter path. None: it is there (and
/// acked); else the nack to make.
async fn dead_letter<S: Source>(
    shared: &Shared<S>,
    message: &Received<S::Handle>,
    reason: &'static str,
    detail: &str,
) -> Option<(Duration, &'static str)> {
    let id = message.message_id.as_str();
    let receive_count = message.receive_count;
    shared.stats.poison.fetch_add(1, Ordering::Relaxed);
    let poison = |outcome| Poison {
        message_id: id,
        receive_count,
        reason,
        detail,
        outcome,
    };
    match shared.source.dead_letter(message, reason, detail).await {
        Ok(true) => {
            shared.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            poison(PoisonOutcome::DeadLettered).emit();
            let _ = shared.acks.send(message.handle.clone()).await;
            None
        }
        Ok(false) => {
            poison(PoisonOutcome::LeftToRedrive).emit();
            Some((shared.config.poison_nack_delay, "poison"))
        }
        Err(e) => {
            poison(PoisonOutcome::DeadLetterFailed(&e)).emit();
            Some((
                shared.config.nack_delay(receive_count),
                "dead_letter_failed",
            ))
        }
    }
}

/// Nacks (when asked) and releases a message's slot and its held WCU.
async fn finish<S: Source>(
    shared: &Shared<S>,
    message: &Received<S::Handle>,
    nack: Option<(Duration, &'static str)>,
    permit: OwnedSemaphorePermit,
    (wcu, micros): (u64, u64),
) {
    if let Some((delay, reason)) = nack {
        // SQS refuses a visibility past 12 hours from the receive: a nack late in that span is
        // shortened to fit, so it still hands the message back instead of being refused.
        let room = MAX_HOLD
            .saturating_sub(message.received_at.elapsed())
            .saturating_sub(Duration::from_secs(1));
        let delay = delay.min(room);
        shared.stats.nacked.fetch_add(1, Ordering::Relaxed);
        let result = shared.source.nack(&message.handle, delay).await;
        Nacked {
            message_id: &message.message_id,
            reason,
            failed: result.as_ref().err(),
        }
        .emit();
    }
    metrics::histogram!(catalog::MESSAGE_PROCESSING_SECONDS)
        .record(message.received_at.elapsed().as_secs_f64());
    shared.stats.held_wcu.fetch_sub(wcu, Ordering::Relaxed);
    shared
        .stats
        .held_micros
        .fetch_sub(micros, Ordering::Relaxed);
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    metrics::gauge!(catalog::MESSAGES_IN_FLIGHT).decrement(1.0);
    drop(permit);
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
        metrics::counter!(catalog::MESSAGES_ACKED_TOTAL).increment(acked);
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
                AckFailed {
                    error: &failure.error,
                }
                .emit();
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

/// Messages that need longer than this at the paced rate are said in the log (once a minute):
/// this instance's share is small for how producers pack messages.
const SLOW_MESSAGE_SECONDS: f64 = 60.0;

/// Records how long one message needs at this instance's paced rate
/// (`sluice_message_write_seconds`), and warns, at most once a minute, when one needs more than
/// a minute: nothing fails (waiting for capacity is progress), but its logs land late and the
/// instance holds it all that time.
fn note_write_seconds(seconds: f64, wcu: u64) {
    metrics::histogram!(catalog::MESSAGE_WRITE_SECONDS).record(seconds);
    if seconds <= SLOW_MESSAGE_SECONDS {
        return;
    }
    static LAST_WARNED_S: AtomicU64 = AtomicU64::new(0);
    let now_s = epoch_ms() / 1000;
    let last = LAST_WARNED_S.load(Ordering::Relaxed);
    if now_s >= last + 60
        && LAST_WARNED_S
            .compare_exchange(last, now_s, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            message_wcu = wcu,
            seconds = seconds.round(),
            "one message needs over a minute at this instance's paced rate: its share of the budget is small for messages this packed (run fewer instances, raise the table's capacity, or have producers pack fewer logs per message)"
        );
    }
}
