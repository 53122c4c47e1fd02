//! The worker pool: long pollers feed messages to tasks that decode, write and ack them.
//!
//! ```text
//! pollers (N) ──receive──▶ message task (≤ max_in_flight) ──items──▶ Writer ──▶ table
//!                               │ all items written          │ failure / timeout / poison
//!                               ▼                            ▼
//!                          acker (batched deletes)      nack (visibility delay)
//! ```
//!
//! - In-flight is bounded by a semaphore: a poller reserves `max_messages` slots before it polls,
//!   so a parked long poll can never bring in more than the pool can hold.
//! - Each message runs under `message_timeout`, counted from its receipt. When it fires, the
//!   message's future is dropped, which abandons its unsent items, and the message is nacked.
//! - Shutdown: the token stops the pollers at once (a parked long poll is dropped); in-flight
//!   messages get `shutdown_grace` to finish; the rest are nacked with no delay so another worker
//!   takes them immediately; pending acks are flushed; `run` returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
    /// Time a message has, from its receipt, to be fully written.
    pub message_timeout: Duration,
    /// Time in-flight messages get to finish after shutdown begins.
    pub shutdown_grace: Duration,
    /// Visibility delay of a message whose write failed or timed out.
    pub nack_delay: Duration,
    /// Visibility delay of a poison message left to the queue's redrive policy.
    pub poison_nack_delay: Duration,
    /// How long the acker waits to fill a batch of deletes.
    pub ack_linger: Duration,
    /// Delete calls in flight at once.
    pub max_concurrent_acks: usize,
    /// Intake pacing: receive only while the write backlog takes less than this at the paced
    /// rate, so a message never waits long for write capacity. None: no intake pacing.
    pub intake_horizon: Option<Duration>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pollers: 4,
            max_messages: 10,
            max_in_flight: 1000,
            message_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            nack_delay: Duration::from_secs(10),
            poison_nack_delay: Duration::from_secs(60),
            ack_linger: Duration::from_millis(20),
            max_concurrent_acks: 8,
            intake_horizon: Some(Duration::from_secs(5)),
        }
    }
}

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
        if self.message_timeout.is_zero() {
            return Err("message_timeout must be above zero".into());
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
}

/// Live counters of one engine, for summaries, progress and readiness.
#[derive(Debug, Default)]
pub struct EngineStats {
    pub received: AtomicU64,
    pub acked: AtomicU64,
    pub nacked: AtomicU64,
    pub poison: AtomicU64,
    pub ack_failures: AtomicU64,
    pub in_flight: AtomicU64,
    /// Receive calls failed in a row (0 after any success).
    pub receive_errors_in_a_row: AtomicU32,
    pub successful_polls: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatsSnapshot {
    pub received: u64,
    pub acked: u64,
    pub nacked: u64,
    pub poison: u64,
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
            ack_failures: self.ack_failures.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
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

struct Shared<S: Source> {
    source: Arc<S>,
    writer: Writer,
    schema: Arc<Schema>,
    config: EngineConfig,
    stats: Arc<EngineStats>,
    permits: Arc<Semaphore>,
    hard_stop: CancellationToken,
    acks: mpsc::Sender<S::Handle>,
    tasks: TaskTracker,
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
            hard_stop: CancellationToken::new(),
            acks: ack_tx,
            tasks: TaskTracker::new(),
            source: self.source,
            writer: self.writer,
            schema: self.schema,
            config: self.config,
            stats: self.stats,
        });

        let mut pollers = JoinSet::new();
        for poller in 0..shared.config.pollers {
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
        let stats = shared.stats.clone();
        drop(shared); // the last ack sender: the acker flushes and ends
        let _ = acker.await;
        let snapshot = stats.snapshot();
        tracing::info!(
            received = snapshot.received,
            acked = snapshot.acked,
            nacked = snapshot.nacked,
            poison = snapshot.poison,
            "engine stopped"
        );
        snapshot
    }
}

async fn poll_loop<S: Source>(poller: usize, shared: Arc<Shared<S>>, shutdown: CancellationToken) {
    let max = shared.config.max_messages;
    let backoff = Backoff {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(10),
    };
    let mut errors: u32 = 0;
    loop {
        let mut reserved = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            permit = shared.permits.clone().acquire_many_owned(max as u32) => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        // Intake pacing: no more messages while what is already here takes longer than the
        // horizon to write at the paced rate.
        if let Some(horizon) = shared.config.intake_horizon {
            while shared
                .writer
                .backlog_seconds()
                .is_some_and(|s| s > horizon.as_secs_f64())
            {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
        // Dropping the receive future is how a parked long poll is cancelled.
        let received = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = shared.source.receive(max) => r,
        };
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
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        for m in &messages {
            if let Some(sent) = m.sent_at_ms {
                metrics::histogram!("sluice_message_age_seconds")
                    .record(now_ms.saturating_sub(sent) as f64 / 1000.0);
            }
        }
        metrics::gauge!("sluice_messages_in_flight").increment(n as f64);
        for message in messages {
            // `reserved` holds `max` permits and a receive returns at most `max` messages.
            let Some(permit) = reserved.split(1) else {
                break;
            };
            let task_shared = shared.clone();
            shared
                .tasks
                .spawn(handle_message(task_shared, message, permit));
        }
    }
}

async fn handle_message<S: Source>(
    shared: Arc<Shared<S>>,
    message: Received<S::Handle>,
    permit: OwnedSemaphorePermit,
) {
    let deadline = message.received_at + shared.config.message_timeout;
    let outcome = tokio::select! {
        biased;
        _ = shared.hard_stop.cancelled() => Outcome::Shutdown,
        r = tokio::time::timeout_at(deadline, process(&shared, &message, deadline)) => match r {
            Ok(outcome) => outcome,
            Err(_) => Outcome::TimedOut,
        },
    };
    let id = message.message_id.as_str();
    let receive_count = message.receive_count;
    let (delay, reason) = match outcome {
        Outcome::Written => {
            // Fails only if the acker is gone, which happens after every task has ended.
            let _ = shared.acks.send(message.handle.clone()).await;
            (None, None)
        }
        Outcome::Poison(error) => {
            shared.stats.poison.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(message_id = id, receive_count, reason = error.reason(), %error, "poison message; leaving it to the queue's redrive policy");
            (Some(shared.config.poison_nack_delay), Some("poison"))
        }
        Outcome::WriteFailed(error) => {
            tracing::warn!(message_id = id, receive_count, reason = error.reason(), %error, "message not written; returning it to the queue");
            (Some(shared.config.nack_delay), Some(error.reason()))
        }
        Outcome::TimedOut => {
            tracing::warn!(
                message_id = id,
                receive_count,
                timeout_s = shared.config.message_timeout.as_secs_f64(),
                "message timed out; returning it to the queue"
            );
            (Some(shared.config.nack_delay), Some("timeout"))
        }
        Outcome::Shutdown => (Some(Duration::ZERO), Some("shutdown")),
    };
    if let (Some(delay), Some(reason)) = (delay, reason) {
        shared.stats.nacked.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_messages_nacked_total", "reason" => reason).increment(1);
        if let Err(error) = shared.source.nack(&message.handle, delay).await {
            metrics::counter!("sluice_nack_failures_total").increment(1);
            tracing::warn!(message_id = id, %error, "nack failed; the message returns when its visibility timeout ends");
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
