//! The producer's background task: it packs logs into messages, seals them by size or linger,
//! sends them in batches (through [`crate::send`]), spools what the queue does not take and
//! replays it in order, and answers durable sends once their logs are in the queue.

use sluice_common::catalog;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::reject::RejectFile;
use crate::send::{Final, Refused, deliver};
use crate::spool::{Position, Spool, SpoolError};
use crate::{
    BatchLimits, CloseReport, Cmd, DedupMode, Entry, Log, OutMessage, ProduceError, ProducerConfig,
    ProducerStats, Ticket, Transport,
};

/// Starts the background task of a [`crate::Producer`]; it ends once closed.
pub(crate) fn spawn<T: Transport>(
    config: Arc<ProducerConfig>,
    transport: T,
    stats: Arc<ProducerStats>,
    budget: Arc<Semaphore>,
    rx: mpsc::UnboundedReceiver<Cmd>,
    spool: Option<Spool>,
) {
    let spooling = spool.as_ref().is_some_and(|s| !s.is_empty());
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
        replay_failures: 0,
        next_replay: Instant::now(),
        direct_failures: 0,
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
    /// Replays from the spool that failed in a row: the next waits `backoff().delay(n)`.
    replay_failures: u32,
    next_replay: Instant,
    /// Direct sends that failed in a row (no spool): the next waits `backoff().delay(n)`.
    direct_failures: u32,
    direct_paused_until: Option<Instant>,
    flushers: Vec<oneshot::Sender<()>>,
    /// A flush or close is waiting: send partial batches at once.
    draining: bool,
    rejects: RejectFile,
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
                Some(h) => hex::encode(h.finalize()),
                None => hex::encode(Sha256::digest(m.body.as_bytes())),
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

    /// Gives `bytes` of the buffer back.
    fn release(&self, bytes: usize) {
        self.budget.add_permits(bytes);
        let now = self
            .stats
            .buffer_bytes
            .fetch_sub(bytes as u64, Ordering::Relaxed)
            .saturating_sub(bytes as u64);
        metrics::gauge!(catalog::PRODUCER_BUFFER_BYTES).set(now as f64);
    }

    /// Gives back the buffer a message held and tells its waiters.
    fn settle(&mut self, s: Sealed, result: Result<(), ProduceError>) {
        self.release(s.bytes);
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
        self.release(s.bytes);
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
        metrics::gauge!(catalog::PRODUCER_SPOOLING).set(if self.spooling { 1.0 } else { 0.0 });
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
        let backoff = self.config.backoff();
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
            metrics::counter!(catalog::PRODUCER_SPOOLED_MESSAGES_TOTAL)
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
            BatchKind::Replay { upto, count } => self.on_replay_done(done.finals, upto, count),
            BatchKind::Direct => self.on_direct_done(sealed, done.finals),
        }
    }

    /// A replay from the spool came back: all through moves the cursor past it; anything that
    /// failed leaves the cursor and tries again after a backoff.
    fn on_replay_done(&mut self, finals: Vec<Final>, upto: Position, count: u64) {
        self.replay = None;
        let failed: Vec<&String> = finals
            .iter()
            .filter_map(|f| match f {
                Final::Failed(why) => Some(why),
                _ => None,
            })
            .collect();
        if failed.is_empty() {
            let sent = finals.len() as u64;
            for f in &finals {
                if let Final::Partly(refused) = f {
                    // Answered 202 long ago: the refused logs are kept in the reject
                    // file, never dropped with the message.
                    for r in refused {
                        self.stats.logs_rejected.fetch_add(1, Ordering::Relaxed);
                        let _ = self.rejects.keep(r, None);
                    }
                }
            }
            metrics::counter!(catalog::PRODUCER_MESSAGES_TOTAL, "path" => "replay").increment(sent);
            self.stats
                .messages_replayed
                .fetch_add(sent, Ordering::Relaxed);
            if let Some(spool) = &mut self.spool
                && let Err(e) = spool.commit(upto, count)
            {
                tracing::error!(error = %e, "cannot move the spool cursor; messages may be sent twice");
            }
            self.replay_failures = 0;
            self.next_replay = Instant::now();
            self.publish_spool();
        } else {
            self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
            let wait = self.config.backoff().delay(self.replay_failures);
            self.replay_failures = self.replay_failures.saturating_add(1);
            self.next_replay = Instant::now() + wait;
            tracing::debug!(error = %failed[0], backoff = ?wait, "replay from the spool failed; retrying");
        }
    }

    /// A direct send came back: what went is settled; what failed goes back to the front, in
    /// order, and waits in the spool (or in memory, after a backoff).
    fn on_direct_done(&mut self, sealed: Vec<Sealed>, finals: Vec<Final>) {
        let mut failed = Vec::new();
        let mut why = String::new();
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        for (s, f) in sealed.into_iter().zip(finals) {
            match f {
                Final::Sent => {
                    metrics::counter!(catalog::PRODUCER_MESSAGES_TOTAL, "path" => "direct")
                        .increment(1);
                    self.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .logs_sent
                        .fetch_add(s.logs as u64, Ordering::Relaxed);
                    self.settle(s, Ok(()));
                }
                Final::Partly(refused) => {
                    metrics::counter!(catalog::PRODUCER_MESSAGES_TOTAL, "path" => "direct")
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
            self.direct_failures = 0;
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
            self.next_replay = Instant::now() + self.config.backoff().delay(self.replay_failures);
            self.publish_spool();
        } else {
            let wait = self.config.backoff().delay(self.direct_failures);
            self.direct_failures = self.direct_failures.saturating_add(1);
            tracing::warn!(error = %why, backoff = ?wait, "the queue does not take messages; they wait in memory");
            self.direct_paused_until = Some(Instant::now() + wait);
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
            metrics::counter!(catalog::PRODUCER_LOGS_TOTAL, "outcome" => "dropped")
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
