//! [`KafkaSource`]: a Kafka consumer group as a sluice [`Source`].
//!
//! - One thread owns the rdkafka consumer (`enable.auto.commit=false`,
//!   `enable.auto.offset.store=false`). It polls, copies each record into owned memory (no
//!   borrowed message outlives a poll), and hands it over through a bounded channel; when the
//!   engine falls behind it pauses its partitions and keeps polling, so the group keeps it.
//! - Acks mark offsets done in the [`Watermarks`]; the thread commits each partition's commit
//!   point every `commit_interval`, on revoke and at close. Offsets are committed only up to
//!   the lowest record not yet done: a crash replays, never skips.
//! - A nack keeps the record and delivers it again after the delay (Kafka cannot hide one
//!   record); the watermark waits for it meanwhile.
//! - On revoke (in the rebalance callback, on the consumer thread) the source stops handing
//!   out records of those partitions, lets the records the engine holds finish for up to
//!   `revoke_grace`, commits, and abandons the rest: the new owner reads them again.
//! - Poison goes to the DLQ topic, with the reason in headers, before its offset counts as done.

use sluice_common::catalog;
use sluice_core::source::dead_letter;
use sluice_core::sync::Recover;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice_core::source::{AckFailure, Received, Source, SourceError};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::events::{ClientError, CommitFailed, RebalanceFailed};
use crate::watermark::{Tp, Watermarks};

/// auto.offset.reset: where a group without a committed offset starts. In a config file:
/// `earliest` or `latest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetReset {
    /// The oldest record the topic still holds.
    #[default]
    Earliest,
    /// Only records produced after the group first joins.
    Latest,
}

impl OffsetReset {
    /// librdkafka's value.
    pub fn as_str(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// How sluice consumes a Kafka topic.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// bootstrap.servers.
    pub brokers: String,
    /// The consumer group.
    pub group_id: String,
    /// The topics the group subscribes to; all of them are drained into the one table.
    pub topics: Vec<String>,
    /// Where poison records go, with the reason in headers.
    pub dlq_topic: String,
    /// How often done offsets are committed.
    pub commit_interval: Duration,
    /// On revoke: how long the records the engine holds may take to finish before they are
    /// abandoned to the new owner.
    pub revoke_grace: Duration,
    /// Records fetched and not yet taken by the engine, at most (then partitions pause).
    pub buffer_records: usize,
    /// Where a group with no committed offset starts.
    pub auto_offset_reset: OffsetReset,
    /// session.timeout.ms: a member silent this long is dropped from the group.
    pub session_timeout: Duration,
    /// max.poll.interval.ms: also how long the group waits for members to rejoin a rebalance.
    pub max_poll_interval: Duration,
    /// Longest the final commit and the consumer's close may take.
    pub close_timeout: Duration,
    /// group.instance.id (static membership, KIP-345): a member that restarts with the same id
    /// takes its partitions back at once, without waiting for the broker to expire the old
    /// session. Each live member needs its own.
    pub group_instance_id: Option<String>,
    /// More librdkafka properties (security.protocol, ssl.*, sasl.*, ...).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// A config with the defaults: commits every 1 s, 5 s revoke grace, 2000 buffered records,
    /// earliest offset for a new group, 10 s session timeout, 300 s max poll interval, 10 s close
    /// timeout, no static membership and no extra properties. Connects to nothing.
    pub fn new(brokers: &str, group_id: &str, topics: &[&str], dlq_topic: &str) -> Self {
        KafkaConfig {
            brokers: brokers.into(),
            group_id: group_id.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            dlq_topic: dlq_topic.into(),
            commit_interval: Duration::from_secs(1),
            revoke_grace: Duration::from_secs(5),
            buffer_records: 2000,
            auto_offset_reset: OffsetReset::Earliest,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
            close_timeout: Duration::from_secs(10),
            group_instance_id: None,
            properties: Vec::new(),
        }
    }

    /// The librdkafka client config shared by the consumer, the DLQ producer and admin tools.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set_log_level(RDKafkaLogLevel::Warning);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        // Bounded prefetch (librdkafka's default is 64 MiB); kafka.properties may change it.
        if !self
            .properties
            .iter()
            .any(|(k, _)| k == "queued.max.messages.kbytes")
        {
            c.set("queued.max.messages.kbytes", "16384");
        }
        c.set("group.id", &self.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", self.auto_offset_reset.as_str())
            .set(
                "session.timeout.ms",
                self.session_timeout.as_millis().to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval.as_millis().to_string(),
            )
            .set("statistics.interval.ms", "5000");
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        c
    }
}

/// Identifies one delivery of one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KafkaHandle {
    /// The record's topic.
    pub topic: Arc<str>,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset in its partition. An ack of this handle lets the partition's commit
    /// point pass it only once every earlier offset is done too.
    pub offset: i64,
    generation: u64,
}

impl KafkaHandle {
    fn tp(&self) -> Tp {
        (self.topic.to_string(), self.partition)
    }
}

/// A record, owned.
#[derive(Debug, Clone)]
struct Record {
    handle: KafkaHandle,
    key: Option<Bytes>,
    payload: Bytes,
    timestamp_ms: Option<u64>,
    receive_count: u32,
}

/// A nacked record waiting to be delivered again.
struct Retry {
    due: Instant,
    seq: u64,
    record: Record,
}

impl PartialEq for Retry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Retry {}
impl PartialOrd for Retry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Retry {
    // A max-heap: the earliest due first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// State the consumer thread, its rebalance callbacks and the engine side share.
#[derive(Default)]
struct Shared {
    watermarks: Mutex<Watermarks>,
    /// Records handed to the engine and not yet acked or nacked, per partition and generation
    /// (a late ack of an ended generation must not count against the current one).
    held: Mutex<HashMap<(Tp, u64), usize>>,
}

impl Shared {
    fn wm(&self) -> std::sync::MutexGuard<'_, Watermarks> {
        self.watermarks.locked()
    }

    fn held_in(&self, tps: &[Tp]) -> usize {
        let held = self.held.locked();
        held.iter()
            .filter(|((tp, _), _)| tps.contains(tp))
            .map(|(_, n)| *n)
            .sum()
    }

    fn hold(&self, h: &KafkaHandle) {
        let mut held = self.held.locked();
        *held.entry((h.tp(), h.generation)).or_default() += 1;
    }

    fn release(&self, h: &KafkaHandle) {
        let mut held = self.held.locked();
        let key = (h.tp(), h.generation);
        if let Some(n) = held.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&key);
            }
        }
    }

    fn current(&self, h: &KafkaHandle) -> bool {
        self.wm().generation(&h.tp()) == Some(h.generation)
    }
}

struct Ctx {
    shared: Arc<Shared>,
    revoke_grace: Duration,
}

impl ClientContext for Ctx {
    fn stats(&self, stats: Statistics) {
        // A partition this member does not own (any more) reads 0 here: its owner reports the
        // lag, and a stale figure left behind by a revoke would count it twice in a fleet sum.
        let wm = self.shared.wm();
        for (topic, t) in &stats.topics {
            for (id, p) in &t.partitions {
                if *id < 0 {
                    continue;
                }
                let owned = wm.generation(&(topic.clone(), *id)).is_some();
                let lag = match (owned, p.consumer_lag) {
                    (false, _) => 0,
                    (true, lag) if lag >= 0 => lag,
                    (true, _) => continue,
                };
                metrics::gauge!(catalog::KAFKA_CONSUMER_LAG, "topic" => topic.clone(), "partition" => id.to_string())
                    .set(lag as f64);
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        ClientError {
            error: &error,
            reason,
        }
        .emit();
    }
}

fn tps_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let tps = tps_of(tpl);
        metrics::counter!(catalog::KAFKA_REBALANCES_TOTAL, "kind" => "revoke").increment(1);
        // Let what the engine holds of these partitions finish (bounded), then commit and let go.
        let started = std::time::Instant::now();
        while self.shared.held_in(&tps) > 0 && started.elapsed() < self.revoke_grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut commit = TopicPartitionList::new();
        let mut abandoned = 0;
        {
            let mut w = self.shared.wm();
            for tp in &tps {
                let (point, left) = w.revoke(tp);
                abandoned += left;
                if let Some(offset) = point {
                    let _ = commit.add_partition_offset(&tp.0, tp.1, Offset::Offset(offset));
                }
            }
        }
        {
            let mut held = self.shared.held.locked();
            held.retain(|(tp, _), _| !tps.contains(tp));
        }
        if abandoned > 0 {
            metrics::counter!(catalog::KAFKA_ABANDONED_TOTAL).increment(abandoned as u64);
        }
        if commit.count() > 0 {
            let outcome = match consumer.commit(&commit, CommitMode::Sync) {
                Ok(()) => "ok",
                Err(error) => {
                    tracing::warn!(%error, "commit on revoke failed; the new owner re-reads from the last commit (duplicates, no loss)");
                    "error"
                }
            };
            metrics::counter!(catalog::KAFKA_COMMITS_TOTAL, "outcome" => outcome).increment(1);
        }
        tracing::info!(partitions = ?tps, abandoned, committed = commit.count(), "partitions revoked");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = tps_of(tpl);
                metrics::counter!(catalog::KAFKA_REBALANCES_TOTAL, "kind" => "assign").increment(1);
                let mut w = self.shared.wm();
                for tp in &tps {
                    w.assign(tp.clone());
                }
                tracing::info!(partitions = ?tps, "partitions assigned");
            }
            Rebalance::Error(error) => {
                RebalanceFailed { error }.emit();
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

/// Commits every partition whose commit point moved. On the consumer thread.
fn commit_done(consumer: &BaseConsumer<Ctx>, shared: &Shared) {
    let points = shared.wm().to_commit();
    if points.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &points {
        let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset));
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => {
            shared.wm().committed(&points);
            metrics::counter!(catalog::KAFKA_COMMITS_TOTAL, "outcome" => "ok").increment(1);
        }
        Err(error) => {
            CommitFailed { error: &error }.emit();
        }
    }
}

/// Records held back (the workers being behind) before fetching pauses.
const PAUSE_AFTER: usize = 64;

/// The consumer thread: polls, hands records to the workers through `tx` as fast as they take
/// them (holding the rest back, and pausing fetching when that lasts), and commits what is
/// written every `commit_interval`; until `stop`.
fn consume(
    consumer: BaseConsumer<Ctx>,
    tx: mpsc::Sender<Record>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    commit_interval: Duration,
) {
    let mut pending: VecDeque<Record> = VecDeque::new();
    let mut paused = false;
    let mut last_commit = std::time::Instant::now();
    let mut last_poll = std::time::Instant::now();
    let mut topics: HashMap<String, Arc<str>> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        if last_commit.elapsed() >= commit_interval {
            commit_done(&consumer, &shared);
            last_commit = std::time::Instant::now();
        }
        if hand_over(&mut pending, &tx, &shared) {
            stop.store(true, Ordering::Release);
        }
        if pending.is_empty() {
            if paused {
                if let Ok(assigned) = consumer.assignment() {
                    let _ = consumer.resume(&assigned);
                }
                paused = false;
            }
        } else {
            // The workers are behind (the table sets the pace): wait for room in the channel.
            // librdkafka's prefetch is bounded (queued.max.messages.kbytes); poll once a second
            // anyway, so rebalances are served and the group keeps this member. A long stall
            // pauses fetching (resuming costs a fetch round trip, so only then).
            if last_poll.elapsed() < Duration::from_secs(1) {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            if pending.len() >= PAUSE_AFTER
                && !paused
                && let Ok(assigned) = consumer.assignment()
                && assigned.count() > 0
                && consumer.pause(&assigned).is_ok()
            {
                paused = true;
            }
        }
        last_poll = std::time::Instant::now();
        let wait = if pending.is_empty() { 100 } else { 0 };
        match consumer.poll(Duration::from_millis(wait)) {
            Some(Ok(m)) => pending.extend(record_of(&m, &shared, &mut topics)),
            Some(Err(error)) => {
                ClientError {
                    error: &error,
                    reason: "poll",
                }
                .emit();
                std::thread::sleep(Duration::from_millis(100));
            }
            None => {}
        }
    }
    // Close: the engine has finished; commit what is done, leave the group, drop the consumer
    // here (nothing borrowed from it is alive).
    drop(pending);
    commit_done(&consumer, &shared);
    consumer.unsubscribe();
    drop(consumer);
}

/// Hands the held-back records to the workers, oldest first, as long as the channel has room;
/// a record whose partition was revoked meanwhile is dropped (the new owner reads it). True
/// when the workers are gone (the channel closed).
fn hand_over(pending: &mut VecDeque<Record>, tx: &mpsc::Sender<Record>, shared: &Shared) -> bool {
    while let Some(r) = pending.front() {
        if !shared.current(&r.handle) {
            pending.pop_front();
            continue;
        }
        match tx.try_send(r.clone()) {
            Ok(()) => {
                pending.pop_front();
            }
            Err(mpsc::error::TrySendError::Full(_)) => return false,
            Err(mpsc::error::TrySendError::Closed(_)) => return true,
        }
    }
    false
}

/// The record of a polled message, counted as received in its partition's watermark; None if
/// its partition is not (or no longer) assigned here.
fn record_of(
    m: &BorrowedMessage<'_>,
    shared: &Shared,
    topics: &mut HashMap<String, Arc<str>>,
) -> Option<Record> {
    let topic = topics
        .entry(m.topic().to_owned())
        .or_insert_with(|| Arc::from(m.topic()))
        .clone();
    let tp = (m.topic().to_owned(), m.partition());
    let mut w = shared.wm();
    let generation = w.generation(&tp)?;
    w.received(&tp, generation, m.offset());
    drop(w);
    Some(Record {
        handle: KafkaHandle {
            topic,
            partition: m.partition(),
            offset: m.offset(),
            generation,
        },
        key: m.key().map(Bytes::copy_from_slice),
        payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        timestamp_ms: m.timestamp().to_millis().map(|t| t.max(0) as u64),
        receive_count: 1,
    })
}

/// A Kafka consumer group as a sluice [`Source`].
pub struct KafkaSource {
    rx: tokio::sync::Mutex<mpsc::Receiver<Record>>,
    shared: Arc<Shared>,
    /// Records the engine holds, for nack (redelivery) and the DLQ.
    held: Mutex<HashMap<KafkaHandle, Record>>,
    retries: Mutex<BinaryHeap<Retry>>,
    seq: std::sync::atomic::AtomicU64,
    dlq: FutureProducer,
    config: KafkaConfig,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl KafkaSource {
    /// Joins the group and starts consuming on its own thread.
    pub fn start(config: KafkaConfig) -> Result<KafkaSource, KafkaError> {
        crate::register_metrics();
        let shared = Arc::new(Shared::default());
        let consumer: BaseConsumer<Ctx> = config.consumer_config().create_with_context(Ctx {
            shared: shared.clone(),
            revoke_grace: config.revoke_grace,
        })?;
        let topics: Vec<&str> = config.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let dlq: FutureProducer = config
            .client_config()
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "30000")
            .create()?;
        let (tx, rx) = mpsc::channel(config.buffer_records.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop, interval) = (shared.clone(), stop.clone(), config.commit_interval);
            std::thread::Builder::new()
                .name("sluice-kafka".into())
                .spawn(move || consume(consumer, tx, shared, stop, interval))
                .map_err(|e| {
                    KafkaError::ClientCreation(format!("cannot start the consumer thread: {e}"))
                })?
        };
        Ok(KafkaSource {
            rx: tokio::sync::Mutex::new(rx),
            shared,
            held: Mutex::new(HashMap::new()),
            retries: Mutex::new(BinaryHeap::new()),
            seq: Default::default(),
            dlq,
            config,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// After the engine stopped: commits what is done and leaves the group, within
    /// `close_timeout` (librdkafka's close can hang on a dead broker; then it is left behind).
    pub async fn close(&self) -> bool {
        self.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.locked().take() else {
            return true;
        };
        let join = tokio::task::spawn_blocking(move || thread.join().is_ok());
        match tokio::time::timeout(self.config.close_timeout, join).await {
            Ok(Ok(ok)) => ok,
            _ => {
                tracing::warn!(
                    timeout_s = self.config.close_timeout.as_secs_f64(),
                    "the Kafka consumer did not close in time; records not committed are read again"
                );
                false
            }
        }
    }

    /// Records received and not yet done (in the buffer, held, or waiting for redelivery).
    pub fn outstanding(&self) -> usize {
        self.shared.wm().outstanding()
    }

    fn hand_out(&self, r: Record) -> Received<KafkaHandle> {
        self.shared.hold(&r.handle);
        let received = Received {
            message_id: format!(
                "{}/{}/{}",
                r.handle.topic, r.handle.partition, r.handle.offset
            ),
            body: r.payload.clone(),
            receive_count: r.receive_count,
            handle: r.handle.clone(),
            received_at: Instant::now(),
            sent_at_ms: r.timestamp_ms,
            group_id: None,
            // The DLQ topic keeps the record's key and payload; headers are sluice's own.
            attributes: Vec::new(),
        };
        self.held.locked().insert(r.handle.clone(), r);
        received
    }

    fn take_held(&self, h: &KafkaHandle) -> Option<Record> {
        let r = self.held.locked().remove(h);
        if r.is_some() {
            self.shared.release(h);
        }
        r
    }

    fn due_retries(&self, max: usize) -> (Vec<Record>, Option<Instant>) {
        let mut heap = self.retries.locked();
        let now = Instant::now();
        let mut out = Vec::new();
        while out.len() < max {
            match heap.peek() {
                Some(r) if r.due <= now => {
                    if let Some(r) = heap.pop()
                        && self.shared.current(&r.record.handle)
                    {
                        out.push(r.record);
                    }
                }
                _ => break,
            }
        }
        (out, heap.peek().map(|r| r.due))
    }
}

impl Source for KafkaSource {
    type Handle = KafkaHandle;

    async fn receive(&self, max: usize) -> Result<Vec<Received<KafkaHandle>>, SourceError> {
        let (mut records, next_retry) = self.due_retries(max);
        if records.is_empty() {
            let wait = next_retry.map_or(Duration::from_secs(1), |d| {
                d.saturating_duration_since(Instant::now())
                    .min(Duration::from_secs(1))
            });
            let mut rx = self.rx.lock().await;
            tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => records.push(r),
                    None => return Err(SourceError::fatal("the Kafka consumer stopped")),
                },
                _ = tokio::time::sleep(wait) => {}
            }
            while records.len() < max {
                match rx.try_recv() {
                    Ok(r) => records.push(r),
                    Err(_) => break,
                }
            }
        }
        Ok(records
            .into_iter()
            .filter(|r| self.shared.current(&r.handle))
            .map(|r| self.hand_out(r))
            .collect())
    }

    async fn ack(&self, handles: &[KafkaHandle]) -> Vec<AckFailure> {
        for h in handles {
            if self.take_held(h).is_some() {
                self.shared.wm().done(&h.tp(), h.generation, h.offset);
            }
        }
        Vec::new()
    }

    async fn nack(&self, handle: &KafkaHandle, delay: Duration) -> Result<(), SourceError> {
        if let Some(mut record) = self.take_held(handle) {
            record.receive_count += 1;
            let seq = self.seq.fetch_add(1, Ordering::Relaxed);
            self.retries.locked().push(Retry {
                due: Instant::now() + delay,
                seq,
                record,
            });
        }
        Ok(())
    }

    async fn extend(&self, handles: &[KafkaHandle], visibility: Duration) -> Vec<AckFailure> {
        // Kafka has no visibility timeout; a zero visibility is a hand-back.
        if visibility.is_zero() {
            for h in handles {
                let _ = self.nack(h, Duration::ZERO).await;
            }
        }
        Vec::new()
    }

    async fn dead_letter(
        &self,
        message: &Received<KafkaHandle>,
        reason: &str,
        error: &str,
    ) -> Result<bool, SourceError> {
        let h = &message.handle;
        let key = self.held.locked().get(h).and_then(|r| r.key.clone());
        let (partition, offset, count) = (
            h.partition.to_string(),
            h.offset.to_string(),
            message.receive_count.to_string(),
        );
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: dead_letter::REASON,
                value: Some(reason),
            })
            .insert(Header {
                key: dead_letter::ERROR,
                value: Some(error),
            })
            .insert(Header {
                key: dead_letter::SOURCE_TOPIC,
                value: Some(&*h.topic),
            })
            .insert(Header {
                key: dead_letter::SOURCE_PARTITION,
                value: Some(&partition),
            })
            .insert(Header {
                key: dead_letter::SOURCE_OFFSET,
                value: Some(&offset),
            })
            .insert(Header {
                key: dead_letter::RECEIVE_COUNT,
                value: Some(&count),
            });
        let mut record = FutureRecord::to(&self.config.dlq_topic)
            .payload(&message.body[..])
            .headers(headers);
        if let Some(k) = &key {
            record = record.key(&k[..]);
        }
        match self.dlq.send(record, Duration::from_secs(10)).await {
            Ok(_) => Ok(true),
            Err((error, _)) => Err(SourceError::retryable(format!(
                "cannot produce to the DLQ topic {}: {error}",
                self.config.dlq_topic
            ))),
        }
    }

    fn max_ack_batch(&self) -> usize {
        1000
    }
}

/// The headers of a DLQ record, as text (for tools and tests).
pub fn header_map(headers: &impl Headers) -> HashMap<String, String> {
    headers
        .iter()
        .map(|h| {
            (
                h.key.to_owned(),
                h.value
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}
