//! In-memory fakes of a queue and a table, for unit tests of the engine and the writer.
//!
//! They are not stand-ins for the integration path (the integration tests run against real
//! servers); they exist so the logic can be tested with tokio's paused clock. The queue models what
//! matters for delivery semantics: visibility timeouts, redelivery with a growing receive count,
//! receipt handles that go stale on redelivery, and long polls.

/// One valid request log, keyed `id`, as every test sends it (the required fields of the
/// default schema, a fixed timestamp).
pub fn log_line(id: &str) -> String {
    format!(
        r#"{{"request_id":"{id}","ts":1795341600000,"method":"GET","path":"/p","status":200,"latency_ms":3}}"#
    )
}

use crate::sync::Recover;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::item::Item;
use crate::source::{AckFailure, Received, Source, SourceError};
use crate::writer::{BatchResult, BatchWriter, MAX_BATCH_ITEMS, WriteError, WriteErrorKind};

#[derive(Debug)]
struct StoredMessage {
    id: String,
    group: Option<String>,
    body: Bytes,
    visible_at: Instant,
    receive_count: u32,
    receipt: Option<String>,
    /// The current receive: SQS caps its visibility at 12 hours from here.
    received_at: Instant,
}

/// SQS's cap on one receive's visibility, across every extension.
const TWELVE_HOURS: Duration = Duration::from_secs(12 * 3600);

/// A queue with SQS's visibility semantics, the 12-hour cap included.
pub struct InMemoryQueueForTests {
    state: Mutex<QueueState>,
    arrivals: Notify,
    visibility_timeout: Duration,
    wait_time: Duration,
}

#[derive(Default)]
struct QueueState {
    messages: Vec<StoredMessage>,
    next_id: u64,
    deleted: u64,
    nacks: Vec<(String, Duration)>,
    extends: u64,
    /// Extensions and nacks refused for reaching past 12 hours from the receive.
    refused: u64,
    /// Some: the queue has a dead-letter path; (message id, body, reason) of what went there.
    dead_letters: Option<Vec<(String, Bytes, String)>>,
}

impl InMemoryQueueForTests {
    /// An empty queue. A receive hides a message for `visibility_timeout` and, when nothing is
    /// visible, waits up to `wait_time` for one (SQS's long poll).
    pub fn new(visibility_timeout: Duration, wait_time: Duration) -> Self {
        InMemoryQueueForTests {
            state: Mutex::new(QueueState::default()),
            arrivals: Notify::new(),
            visibility_timeout,
            wait_time,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.locked()
    }

    /// Gives the queue a dead-letter path (what [`Source::dead_letter`] hands over lands there).
    pub fn with_dead_letters(self) -> Self {
        self.lock().dead_letters = Some(Vec::new());
        self
    }

    /// What went to the dead-letter path: (message id, body, reason).
    pub fn dead_letters(&self) -> Vec<(String, Bytes, String)> {
        self.lock().dead_letters.clone().unwrap_or_default()
    }

    /// Extensions and nacks refused because they reached past 12 hours from the receive (SQS
    /// refuses them: "Total VisibilityTimeout for the message is beyond the limit").
    pub fn refused_past_12_hours(&self) -> u64 {
        self.lock().refused
    }

    /// Visibility extensions that went through (the heartbeat's, and zero-delay hand-backs); failed
    /// ones not counted.
    pub fn extends(&self) -> u64 {
        self.lock().extends
    }

    /// Enqueues a message; returns its id.
    pub fn send(&self, body: impl Into<Bytes>) -> String {
        self.send_to_group(body, None)
    }

    /// Enqueues a message in a FIFO group. Like SQS FIFO, a group with a message in flight is
    /// locked: its later messages are not handed out until that one is deleted or visible again.
    pub fn send_to_group(&self, body: impl Into<Bytes>, group: Option<&str>) -> String {
        let mut s = self.lock();
        s.next_id += 1;
        let id = format!("m-{}", s.next_id);
        s.messages.push(StoredMessage {
            id: id.clone(),
            group: group.map(String::from),
            body: body.into(),
            visible_at: Instant::now(),
            receive_count: 0,
            receipt: None,
            received_at: Instant::now(),
        });
        drop(s);
        self.arrivals.notify_waiters();
        id
    }

    /// Messages not yet deleted (visible or not).
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// True when every message sent has been deleted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages deleted by acks so far.
    pub fn deleted(&self) -> u64 {
        self.lock().deleted
    }

    /// How often message `id` has been received so far.
    pub fn receive_count(&self, id: &str) -> Option<u32> {
        self.lock()
            .messages
            .iter()
            .find(|m| m.id == id)
            .map(|m| m.receive_count)
    }

    /// Every nack so far: (message id, delay).
    pub fn nacks(&self) -> Vec<(String, Duration)> {
        self.lock().nacks.clone()
    }

    fn take_visible(&self, max: usize) -> (Vec<Received<String>>, Option<Instant>) {
        let mut s = self.lock();
        let now = Instant::now();
        let mut out = Vec::new();
        let mut next_visible: Option<Instant> = None;
        let mut locked: std::collections::HashSet<String> = std::collections::HashSet::new();
        for m in s.messages.iter_mut() {
            // FIFO: the first message of a group not visible locks the rest of the group.
            if let Some(g) = &m.group {
                if locked.contains(g) {
                    continue;
                }
                if m.visible_at > now {
                    locked.insert(g.clone());
                }
            }
            if m.visible_at <= now {
                if out.len() == max {
                    continue;
                }
                m.receive_count += 1;
                m.visible_at = now + self.visibility_timeout;
                m.received_at = now;
                let receipt = format!("{}#{}", m.id, m.receive_count);
                m.receipt = Some(receipt.clone());
                out.push(Received {
                    message_id: m.id.clone(),
                    body: m.body.clone(),
                    receive_count: m.receive_count,
                    handle: receipt,
                    received_at: now,
                    sent_at_ms: None,
                    group_id: m.group.clone(),
                    attributes: Vec::new(),
                });
            } else {
                next_visible = Some(next_visible.map_or(m.visible_at, |t| t.min(m.visible_at)));
            }
        }
        (out, next_visible)
    }
}

impl Source for InMemoryQueueForTests {
    type Handle = String;

    async fn receive(&self, max: usize) -> Result<Vec<Received<String>>, SourceError> {
        let give_up = Instant::now() + self.wait_time;
        loop {
            let arrived = self.arrivals.notified();
            let (out, next_visible) = self.take_visible(max);
            if !out.is_empty() || Instant::now() >= give_up {
                return Ok(out);
            }
            let wake = next_visible.map_or(give_up, |t| t.min(give_up));
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn ack(&self, handles: &[String]) -> Vec<AckFailure> {
        let mut s = self.lock();
        let mut failures = Vec::new();
        for (index, h) in handles.iter().enumerate() {
            match s
                .messages
                .iter()
                .position(|m| m.receipt.as_deref() == Some(h.as_str()))
            {
                Some(pos) => {
                    s.messages.remove(pos);
                    s.deleted += 1;
                }
                None => failures.push(AckFailure {
                    index,
                    error: SourceError::fatal(format!("receipt handle {h} is not current")),
                }),
            }
        }
        failures
    }

    async fn extend(&self, handles: &[String], visibility: Duration) -> Vec<AckFailure> {
        let mut s = self.lock();
        let now = Instant::now();
        let mut failures = Vec::new();
        let mut refused = 0;
        for (index, h) in handles.iter().enumerate() {
            match s
                .messages
                .iter_mut()
                .find(|m| m.receipt.as_deref() == Some(h.as_str()) && m.visible_at > now)
            {
                Some(m) if now + visibility > m.received_at + TWELVE_HOURS => {
                    refused += 1;
                    failures.push(AckFailure {
                        index,
                        error: SourceError::fatal(format!(
                            "{h}: total visibility beyond 12 hours from the receive"
                        )),
                    })
                }
                Some(m) => m.visible_at = now + visibility,
                None => failures.push(AckFailure {
                    index,
                    error: SourceError::fatal(format!("{h} is not in flight")),
                }),
            }
        }
        s.refused += refused;
        s.extends += (handles.len() - failures.len()) as u64;
        failures
    }

    async fn dead_letter(
        &self,
        message: &Received<String>,
        reason: &str,
        _error: &str,
    ) -> Result<bool, SourceError> {
        let mut s = self.lock();
        match &mut s.dead_letters {
            Some(list) => {
                list.push((
                    message.message_id.clone(),
                    message.body.clone(),
                    reason.to_string(),
                ));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn nack(&self, handle: &String, delay: Duration) -> Result<(), SourceError> {
        let mut s = self.lock();
        let now = Instant::now();
        let Some(m) = s
            .messages
            .iter_mut()
            .find(|m| m.receipt.as_deref() == Some(handle.as_str()))
        else {
            return Err(SourceError::fatal(format!(
                "receipt handle {handle} is not current"
            )));
        };
        if now + delay > m.received_at + TWELVE_HOURS {
            s.refused += 1;
            return Err(SourceError::fatal(format!(
                "{handle}: total visibility beyond 12 hours from the receive"
            )));
        }
        m.visible_at = now + delay;
        let id = m.id.clone();
        s.nacks.push((id, delay));
        drop(s);
        self.arrivals.notify_waiters();
        Ok(())
    }
}

/// A table keyed by item key that checks BatchWriteItem's rules and can be told to fail.
#[derive(Default)]
pub struct MemoryTableForTests {
    state: Mutex<TableState>,
    /// BatchWriteItem calls made, failed ones included.
    pub calls: AtomicU64,
    /// Items written (puts that landed), a key written twice counted twice.
    pub puts: AtomicU64,
}

#[derive(Default)]
struct TableState {
    rows: BTreeMap<String, Item>,
    fail_with: Option<WriteErrorKind>,
    unprocessed_calls_left: u32,
    reject_keys: HashSet<String>,
    latency: Duration,
    largest_batch: usize,
    /// Keys in the order their puts landed (a key written twice appears twice).
    put_order: Vec<String>,
}

impl MemoryTableForTests {
    fn lock(&self) -> std::sync::MutexGuard<'_, TableState> {
        self.state.locked()
    }

    /// Every call fails with this error kind until cleared.
    pub fn fail_with(&self, kind: Option<WriteErrorKind>) {
        self.lock().fail_with = kind;
    }

    /// The next `calls` calls with more than one item leave their last item unprocessed.
    pub fn leave_unprocessed(&self, calls: u32) {
        self.lock().unprocessed_calls_left = calls;
    }

    /// A batch holding this key is rejected with a validation error.
    pub fn reject_key(&self, key: &str) {
        self.lock().reject_keys.insert(key.to_string());
    }

    /// Every later call sleeps this long before it answers (zero: none).
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// The table's rows now, by key: the last write of each key.
    pub fn rows(&self) -> BTreeMap<String, Item> {
        self.lock().rows.clone()
    }

    /// The most items any successful call carried.
    pub fn largest_batch(&self) -> usize {
        self.lock().largest_batch
    }

    /// Keys in the order their puts landed.
    pub fn put_order(&self) -> Vec<String> {
        self.lock().put_order.clone()
    }
}

impl BatchWriter for MemoryTableForTests {
    async fn write_batch(&self, items: &[&Item]) -> Result<BatchResult, WriteError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let mut s = self.lock();
        if items.is_empty() || items.len() > MAX_BATCH_ITEMS {
            return Err(WriteError::new(
                WriteErrorKind::InvalidItem,
                format!("batch of {} items", items.len()),
            ));
        }
        let mut seen = HashMap::new();
        for item in items {
            if seen.insert(item.key(), ()).is_some() {
                return Err(WriteError::new(
                    WriteErrorKind::InvalidItem,
                    "Provided list of item keys contains duplicates",
                ));
            }
            if s.reject_keys.contains(item.key()) {
                return Err(WriteError::new(
                    WriteErrorKind::InvalidItem,
                    format!("item {} rejected", item.key()),
                ));
            }
        }
        if let Some(kind) = s.fail_with {
            return Err(WriteError::new(kind, format!("injected {kind:?}")));
        }
        s.largest_batch = s.largest_batch.max(items.len());
        let mut unprocessed = Vec::new();
        if s.unprocessed_calls_left > 0 && items.len() > 1 {
            s.unprocessed_calls_left -= 1;
            unprocessed.push(items.len() - 1);
        }
        for (i, item) in items.iter().enumerate() {
            if !unprocessed.contains(&i) {
                s.rows.insert(item.key().to_string(), (*item).clone());
                s.put_order.push(item.key().to_string());
                self.puts.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(BatchResult {
            unprocessed,
            consumed_wcu: None,
            consumed: None,
        })
    }
}
