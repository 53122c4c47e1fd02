//! The engine and writer against the in-memory queue and table, on tokio's paused clock.

use sluice_core::testing::log_line as log;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_core::testing::{InMemoryQueueForTests, MemoryTableForTests};
use sluice_core::{
    Engine, EngineConfig, Schema, Source, StatsSnapshot, WcuLimiter, WriteErrorKind, Writer,
    WriterConfig,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

struct Harness {
    queue: Arc<InMemoryQueueForTests>,
    table: Arc<MemoryTableForTests>,
    stop: CancellationToken,
    run: JoinHandle<StatsSnapshot>,
    stats: Arc<sluice_core::EngineStats>,
    writer_stats: Arc<sluice_core::WriterStats>,
    breaker: Arc<sluice_core::Breaker>,
}

fn config() -> EngineConfig {
    EngineConfig {
        pollers: 2,
        max_messages: 10,
        max_in_flight: 100,
        max_in_flight_bytes: 16 << 20,
        message_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(3),
        nack_backoff_base: Duration::from_secs(2),
        nack_backoff_max: Duration::from_secs(60),
        poison_nack_delay: Duration::from_secs(30),
        ack_linger: Duration::from_millis(10),
        max_concurrent_acks: 4,
        intake_horizon: None,
        visibility_timeout: None,
        poll_wait: Duration::from_secs(20),
    }
}

fn start(
    queue: Arc<InMemoryQueueForTests>,
    table: Arc<MemoryTableForTests>,
    cfg: EngineConfig,
) -> Harness {
    start_paced(queue, table, cfg, WcuLimiter::unlimited())
}

fn start_paced(
    queue: Arc<InMemoryQueueForTests>,
    table: Arc<MemoryTableForTests>,
    cfg: EngineConfig,
    limiter: WcuLimiter,
) -> Harness {
    let (writer, _task) = Writer::spawn(table.clone(), Arc::new(limiter), WriterConfig::default());
    let writer_stats = writer.stats();
    let breaker = writer.breaker();
    let engine = Engine::new(queue.clone(), writer, Schema::default(), cfg);
    let stats = engine.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    Harness {
        queue,
        table,
        stop,
        run,
        stats,
        writer_stats,
        breaker,
    }
}

fn queue() -> Arc<InMemoryQueueForTests> {
    Arc::new(InMemoryQueueForTests::new(
        Duration::from_secs(30),
        Duration::from_secs(20),
    ))
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let give_up = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_fake_queue_redelivers_after_the_visibility_timeout() {
    let q = InMemoryQueueForTests::new(Duration::from_secs(30), Duration::from_secs(1));
    let id = q.send(log("a"));
    let first = q.receive(10).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].receive_count, 1);
    // Invisible while held: a long poll in the meantime returns nothing.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(q.receive(10).await.unwrap().is_empty());
    // Not acked in time: it comes back, with a new receipt and a higher receive count.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let again = q.receive(10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id, id);
    assert_eq!(again[0].receive_count, 2);
    assert_ne!(again[0].handle, first[0].handle);
    // The stale receipt no longer deletes it; the current one does.
    assert_eq!(q.ack(std::slice::from_ref(&first[0].handle)).await.len(), 1);
    assert!(
        q.ack(std::slice::from_ref(&again[0].handle))
            .await
            .is_empty()
    );
    assert!(q.is_empty());
}

#[tokio::test(start_paused = true)]
async fn every_log_lands_once_and_every_message_is_acked() {
    let h = start(queue(), Arc::new(MemoryTableForTests::default()), config());
    let mut expected = std::collections::BTreeSet::new();
    for i in 0..150 {
        h.queue.send(log(&format!("r{i}")));
        expected.insert(format!("r{i}"));
    }
    for i in 0..20 {
        // duplicates of earlier logs, delivered as separate messages
        h.queue.send(log(&format!("r{i}")));
    }
    for i in 0..10 {
        // multi-log messages: an array, and NDJSON
        let ids: Vec<String> = (0..5).map(|j| format!("m{i}-{j}")).collect();
        expected.extend(ids.iter().cloned());
        let body = if i % 2 == 0 {
            format!(
                "[{}]",
                ids.iter().map(|id| log(id)).collect::<Vec<_>>().join(",")
            )
        } else {
            ids.iter().map(|id| log(id)).collect::<Vec<_>>().join("\n")
        };
        h.queue.send(body);
    }
    wait_until("the queue is drained", Duration::from_secs(60), || {
        h.queue.is_empty()
    })
    .await;
    let rows = h.table.rows();
    assert_eq!(
        rows.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    assert!(h.table.largest_batch() <= 25);
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!(stats.received, 180);
    assert_eq!(stats.acked, 180);
    assert_eq!(stats.nacked, 0);
    assert_eq!(stats.in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_message_whose_write_fails_is_not_deleted_and_comes_back() {
    let table = Arc::new(MemoryTableForTests::default());
    table.fail_with(Some(WriteErrorKind::Fatal));
    let h = start(queue(), table, config());
    let id = h.queue.send(log("x"));
    wait_until("the message is nacked", Duration::from_secs(30), || {
        !h.queue.nacks().is_empty()
    })
    .await;
    assert_eq!(h.queue.len(), 1, "a failed message must stay in the queue");
    assert!(h.table.rows().is_empty());
    let (nacked, delay) = h.queue.nacks()[0].clone();
    assert_eq!(nacked, id);
    // First receive: base 2 s, jittered into [1 s, 2 s].
    assert!(
        delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    h.table.fail_with(None);
    wait_until("the message is written", Duration::from_secs(30), || {
        h.queue.is_empty()
    })
    .await;
    assert!(h.table.rows().contains_key("x"));
    assert!(
        h.stats.received.load(Ordering::Relaxed) >= 2,
        "it was delivered again"
    );
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn throttles_and_unprocessed_items_are_retried_until_written() {
    let table = Arc::new(MemoryTableForTests::default());
    table.fail_with(Some(WriteErrorKind::Throttled));
    table.leave_unprocessed(20);
    let h = start(queue(), table, config());
    for i in 0..40 {
        h.queue.send(log(&format!("t{i}")));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.table.rows().is_empty());
    h.table.fail_with(None);
    wait_until("all written", Duration::from_secs(30), || {
        h.queue.is_empty()
    })
    .await;
    assert_eq!(h.table.rows().len(), 40);
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!(
        stats.nacked, 0,
        "retries happen inside the deadline, without a nack"
    );
}

#[tokio::test(start_paused = true)]
async fn the_timeout_cancels_the_write_and_nacks() {
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(60));
    let h = start(queue(), table, config());
    h.queue.send(log("slow"));
    wait_until("the message is nacked", Duration::from_secs(20), || {
        !h.queue.nacks().is_empty()
    })
    .await;
    assert!(
        h.table.rows().is_empty(),
        "the cancelled call wrote nothing"
    );
    assert_eq!(h.queue.len(), 1);
    h.table.set_latency(Duration::ZERO);
    wait_until("written on redelivery", Duration::from_secs(30), || {
        h.queue.is_empty()
    })
    .await;
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_message_held_toward_12_hours_is_handed_back_while_it_is_still_held() {
    // SQS refuses a visibility past 12 hours from the receive, across extensions (the in-memory
    // queue refuses it too). A write still going then is handed back while sluice holds the
    // message: never received twice meanwhile, no extension or nack refused.
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(13 * 3600));
    let visibility = Duration::from_secs(1800);
    let q = Arc::new(InMemoryQueueForTests::new(
        visibility,
        Duration::from_secs(20),
    ));
    let mut cfg = config();
    cfg.message_timeout = Duration::from_secs(12 * 3600);
    cfg.visibility_timeout = Some(visibility);
    // A nack delay longer than what is left of the 12 hours (an hour against the half hour
    // left): shortened to fit, not refused. The poll below (every minute) sees it long before
    // the message returns.
    cfg.nack_backoff_base = Duration::from_secs(3600);
    cfg.nack_backoff_max = Duration::from_secs(3600);
    let h = start(q, table, cfg);
    let id = h.queue.send(log("long"));
    let give_up = tokio::time::Instant::now() + Duration::from_secs(13 * 3600);
    while h.queue.nacks().is_empty() {
        assert!(tokio::time::Instant::now() < give_up, "never handed back");
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(h.queue.receive_count(&id), Some(1), "received twice");
    assert_eq!(h.queue.refused_past_12_hours(), 0);
    assert!(h.queue.extends() > 0, "the heartbeat kept it");
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn poison_is_nacked_to_the_redrive_policy_and_does_not_block_others() {
    let h = start(queue(), Arc::new(MemoryTableForTests::default()), config());
    let bad = h.queue.send("not json at all");
    for i in 0..10 {
        h.queue.send(log(&format!("ok{i}")));
    }
    wait_until("good ones written", Duration::from_secs(30), || {
        h.table.rows().len() == 10
    })
    .await;
    wait_until("poison nacked", Duration::from_secs(30), || {
        !h.queue.nacks().is_empty()
    })
    .await;
    assert_eq!(h.queue.nacks(), vec![(bad, Duration::from_secs(30))]);
    assert_eq!(h.queue.len(), 1);
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!(stats.poison, 1);
}

#[tokio::test(start_paused = true)]
async fn an_item_the_table_rejects_fails_only_its_own_message() {
    let table = Arc::new(MemoryTableForTests::default());
    table.reject_key("bad");
    table.set_latency(Duration::from_millis(50)); // lets items pile up into shared batches
    let h = start(queue(), table, config());
    h.queue.send(log("bad"));
    for i in 0..30 {
        h.queue.send(log(&format!("g{i}")));
    }
    wait_until("good ones written", Duration::from_secs(30), || {
        h.table.rows().len() == 30
    })
    .await;
    wait_until("bad one nacked", Duration::from_secs(30), || {
        !h.queue.nacks().is_empty()
    })
    .await;
    assert!(!h.table.rows().contains_key("bad"));
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    // Only the bad message fails (once per delivery so far); the 30 others are acked.
    assert_eq!(stats.acked, 30);
    assert!(stats.nacked >= 1);
    assert!(!h.queue.is_empty(), "the bad message stays in the queue");
}

#[tokio::test(start_paused = true)]
async fn in_flight_never_exceeds_the_limit() {
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_millis(200));
    let mut cfg = config();
    cfg.max_in_flight = 20;
    let h = start(queue(), table, cfg);
    for i in 0..200 {
        h.queue.send(log(&format!("b{i}")));
    }
    let mut peak = 0;
    while !h.queue.is_empty() {
        peak = peak.max(h.stats.in_flight.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(peak > 0 && peak <= 20, "peak in flight {peak}");
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn message_bytes_in_flight_never_exceed_the_budget() {
    // Messages of 200 logs of ~1 KiB (about 210 KiB each, as a packing producer sends them)
    // against a 1 MiB budget, 4 pollers taking 2 at a time: at most 4 are held at once, though
    // max_in_flight allows 100.
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_millis(200));
    let mut cfg = config();
    cfg.pollers = 4;
    cfg.max_messages = 2;
    cfg.max_in_flight_bytes = 1 << 20;
    let h = start(queue(), table.clone(), cfg);
    let pad = "x".repeat(950);
    for m in 0..30 {
        let body: String = (0..200)
            .map(|i| {
                log(&format!("m{m}-{i}")).replace(
                    r#""latency_ms":3"#,
                    &format!(r#""latency_ms":3,"pad":"{pad}""#),
                ) + "\n"
            })
            .collect();
        assert!(body.len() > 200 * 1024);
        h.queue.send(body);
    }
    let mut peak = 0;
    while !h.queue.is_empty() {
        peak = peak.max(h.stats.in_flight.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!((2..=4).contains(&peak), "peak in flight {peak}");
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!(stats.acked, 30);
    assert_eq!(table.rows().len(), 30 * 200);
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_what_fits_in_the_grace_period_and_returns_the_rest_at_once() {
    // Grace longer than the writes: everything in flight is written and acked.
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(1));
    let h = start(queue(), table, config());
    for i in 0..5 {
        h.queue.send(log(&format!("s{i}")));
    }
    wait_until("in flight", Duration::from_secs(5), || {
        h.stats.in_flight.load(Ordering::Relaxed) == 5
    })
    .await;
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.acked, stats.nacked), (5, 0));
    assert!(h.queue.is_empty());

    // Grace shorter than the writes: the rest is made visible again immediately (delay 0).
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(4));
    let h = start(queue(), table, config());
    for i in 0..5 {
        h.queue.send(log(&format!("u{i}")));
    }
    wait_until("in flight", Duration::from_secs(5), || {
        h.stats.in_flight.load(Ordering::Relaxed) == 5
    })
    .await;
    let began = tokio::time::Instant::now();
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(4),
        "shutdown waited past the grace period"
    );
    assert_eq!((stats.acked, stats.nacked), (0, 5));
    assert!(h.queue.nacks().iter().all(|(_, d)| d.is_zero()));
    assert_eq!(h.queue.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_a_parked_long_poll_at_once() {
    let h = start(queue(), Arc::new(MemoryTableForTests::default()), config());
    tokio::time::sleep(Duration::from_secs(1)).await; // pollers are parked in a 20 s long poll
    let began = tokio::time::Instant::now();
    h.stop.cancel();
    h.run.await.unwrap();
    assert!(began.elapsed() < Duration::from_secs(1));
}

/// The in-memory queue with a slow network: a receive takes its messages, then spends `delay`
/// on the way back (so a shutdown can come while the answer is in transit).
struct SlowReceive {
    inner: Arc<InMemoryQueueForTests>,
    delay: Duration,
}

impl Source for SlowReceive {
    type Handle = <InMemoryQueueForTests as Source>::Handle;

    async fn receive(
        &self,
        max: usize,
    ) -> Result<Vec<sluice_core::source::Received<Self::Handle>>, sluice_core::source::SourceError>
    {
        let got = self.inner.receive(max).await?;
        if !got.is_empty() {
            tokio::time::sleep(self.delay).await;
        }
        Ok(got)
    }

    async fn ack(&self, handles: &[Self::Handle]) -> Vec<sluice_core::source::AckFailure> {
        self.inner.ack(handles).await
    }

    async fn nack(
        &self,
        handle: &Self::Handle,
        delay: Duration,
    ) -> Result<(), sluice_core::source::SourceError> {
        self.inner.nack(handle, delay).await
    }

    async fn extend(
        &self,
        handles: &[Self::Handle],
        visibility: Duration,
    ) -> Vec<sluice_core::source::AckFailure> {
        self.inner.extend(handles, visibility).await
    }
}

#[tokio::test(start_paused = true)]
async fn messages_arriving_as_shutdown_begins_are_handed_back_not_stranded() {
    let inner = queue();
    let source = Arc::new(SlowReceive {
        inner: inner.clone(),
        delay: Duration::from_millis(200),
    });
    let (writer, _task) = Writer::spawn(
        Arc::new(MemoryTableForTests::default()),
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig::default(),
    );
    let engine = Engine::new(source, writer, Schema::default(), config());
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await; // parked in the long poll
    let ids: Vec<String> = (0..10)
        .map(|i| inner.send(log(&format!("late-{i}"))))
        .collect();
    // The pollers have taken the messages and their answer is on the wire.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(ids.iter().all(|id| inner.receive_count(id) == Some(1)));
    stop.cancel();
    let stats = run.await.unwrap();
    assert_eq!(stats.nacked, 10, "{stats:?}");
    // Visible again now, not after the 30 s visibility timeout.
    let back = inner.receive(10).await.unwrap();
    assert_eq!(back.len(), 10);
}

// Real time: the token bucket runs on governor's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_is_paced_so_the_write_backlog_stays_within_the_horizon() {
    let mut cfg = config();
    cfg.intake_horizon = Some(Duration::from_millis(500));
    cfg.message_timeout = Duration::from_secs(10);
    let limiter = WcuLimiter::try_new(std::num::NonZeroU32::new(200).unwrap(), 0.1).unwrap();
    let h = start_paced(
        queue(),
        Arc::new(MemoryTableForTests::default()),
        cfg,
        limiter,
    );
    for i in 0..300 {
        h.queue.send(log(&format!("i{i}")));
    }
    let mut peak = 0;
    let started = std::time::Instant::now();
    while !h.queue.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(20), "not drained");
        peak = peak.max(h.writer_stats.pending_wcu.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // 200 WCU/s × 0.5 s, plus what one round of receives (2 pollers × 10) can add past the check.
    assert!(peak <= 100 + 20, "write backlog peaked at {peak} WCU");
    assert!(
        peak >= 50,
        "the backlog did fill up to the horizon ({peak})"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1300),
        "300 WCU at 200 WCU/s take 1.5 s"
    );
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.acked, stats.nacked), (300, 0));
    assert_eq!(
        h.writer_stats.pending_wcu.load(Ordering::Relaxed),
        0,
        "every charge released"
    );
}

#[tokio::test(start_paused = true)]
async fn nack_backoff_grows_with_the_receive_count() {
    let table = Arc::new(MemoryTableForTests::default());
    table.fail_with(Some(WriteErrorKind::Fatal));
    let h = start(queue(), table, config());
    let id = h.queue.send(log("again"));
    wait_until("five nacks", Duration::from_secs(600), || {
        h.queue.nacks().len() >= 5
    })
    .await;
    let delays: Vec<Duration> = h.queue.nacks().iter().map(|(_, d)| *d).collect();
    for (n, d) in delays.iter().enumerate().take(5) {
        // base 2 s × 2^(n) with jitter in [half, full], capped at 60 s
        let ceiling = Duration::from_secs(2 * 2u64.pow(n as u32)).min(Duration::from_secs(60));
        assert!(
            *d >= ceiling / 2 && *d <= ceiling,
            "nack {n}: {d:?} vs {ceiling:?}"
        );
    }
    assert_eq!(h.queue.receive_count(&id), Some(5));
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_heartbeat_keeps_a_slow_message_invisible_until_it_is_written() {
    // Visibility 3 s, but the table takes 10 s: without the heartbeat the message would be
    // delivered again (and written twice) while the first write is still going on.
    let q = Arc::new(InMemoryQueueForTests::new(
        Duration::from_secs(3),
        Duration::from_secs(20),
    ));
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(10));
    let mut cfg = config();
    cfg.visibility_timeout = Some(Duration::from_secs(3));
    cfg.message_timeout = Duration::from_secs(30);
    let h = start(q, table, cfg);
    let id = h.queue.send(log("slow"));
    wait_until("written", Duration::from_secs(60), || h.queue.is_empty()).await;
    assert_eq!(
        h.stats.received.load(Ordering::Relaxed),
        1,
        "never delivered twice"
    );
    assert!(
        h.queue.extends() >= 3,
        "extended {} times",
        h.queue.extends()
    );
    assert!(h.queue.receive_count(&id).is_none(), "deleted");
    // Once settled, it is not extended any more.
    let extends = h.queue.extends();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(h.queue.extends(), extends);
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn poison_goes_to_the_dead_letter_path_with_its_reason_and_is_deleted() {
    let q = Arc::new(
        InMemoryQueueForTests::new(Duration::from_secs(30), Duration::from_secs(20))
            .with_dead_letters(),
    );
    let h = start(q, Arc::new(MemoryTableForTests::default()), config());
    let bad = h.queue.send("{not json");
    let missing = h.queue.send(log("m").replace("\"method\":\"GET\",", ""));
    h.queue.send(log("fine"));
    wait_until("drained", Duration::from_secs(30), || h.queue.is_empty()).await;
    let mut dead = h.queue.dead_letters();
    dead.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(dead.len(), 2);
    assert_eq!(
        (dead[0].0.as_str(), dead[0].2.as_str()),
        (bad.as_str(), "not_json")
    );
    assert_eq!(
        (dead[1].0.as_str(), dead[1].2.as_str()),
        (missing.as_str(), "schema")
    );
    assert!(h.queue.nacks().is_empty(), "sent at once, never nacked");
    assert_eq!(h.table.rows().len(), 1);
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.dead_lettered, stats.acked), (2, 3));
}

#[tokio::test(start_paused = true)]
async fn fifo_groups_are_written_in_order_and_a_failure_returns_the_rest_of_its_group() {
    let table = Arc::new(MemoryTableForTests::default());
    table.reject_key("g1-2"); // the third message of group g1 can never be written
    let h = start(queue(), table, config());
    for i in 0..5 {
        for g in ["g1", "g2"] {
            h.queue.send_to_group(log(&format!("{g}-{i}")), Some(g));
        }
    }
    wait_until("g2 written", Duration::from_secs(30), || {
        h.table
            .rows()
            .keys()
            .filter(|k| k.starts_with("g2"))
            .count()
            == 5
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rows = h.table.rows();
    // g1: 0 and 1 written; 2 fails; 3 and 4 are never written ahead of it.
    assert!(rows.contains_key("g1-0") && rows.contains_key("g1-1"));
    assert!(!rows.contains_key("g1-2") && !rows.contains_key("g1-3") && !rows.contains_key("g1-4"));
    let fifo_returns = h.queue.nacks().iter().filter(|(_, d)| d.is_zero()).count();
    assert!(
        fifo_returns >= 2,
        "the later messages of g1 went back: {:?}",
        h.queue.nacks()
    );
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_persistently_failing_table_opens_the_breaker_and_receiving_stops() {
    let table = Arc::new(MemoryTableForTests::default());
    table.fail_with(Some(WriteErrorKind::Fatal));
    let h = start(queue(), table, config());
    for i in 0..20 {
        h.queue.send(log(&format!("b{i}")));
    }
    // Five failed batches in a row open the breaker; while it is open the queue is left alone.
    let now = || tokio::time::Instant::now().into_std();
    wait_until("breaker open", Duration::from_secs(120), || {
        h.breaker.is_open(now())
    })
    .await;
    // A receive answering just as it opened lands and is handed straight back (within 500 ms).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let received = h.stats.received.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(3900)).await;
    assert!(h.breaker.is_open(now()), "the first cooldown is 5 s");
    assert_eq!(
        h.stats.received.load(Ordering::Relaxed),
        received,
        "no receives while open"
    );
    // The table heals; the probe after the cooldown closes the breaker and everything lands.
    h.table.fail_with(None);
    wait_until("drained", Duration::from_secs(600), || h.queue.is_empty()).await;
    assert_eq!(h.table.rows().len(), 20);
    h.stop.cancel();
    h.run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn chaos_fifo_fifty_groups_keep_their_order_under_injected_failures() {
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_millis(20));
    table.leave_unprocessed(200); // many batches come back partly unprocessed
    for g in (0..50).step_by(7) {
        table.reject_key(&format!("g{g}-6")); // these groups stop at their 7th message
    }
    let mut cfg = config();
    cfg.pollers = 4;
    let h = start(queue(), table, cfg);
    for i in 0..10 {
        for g in 0..50 {
            h.queue
                .send_to_group(log(&format!("g{g}-{i}")), Some(&format!("g{g}")));
        }
    }
    // Transient outages on top, while the backlog drains.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h.table.fail_with(Some(WriteErrorKind::Transient));
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.table.fail_with(None);
    }
    let stuck = (0..50).step_by(7).count();
    wait_until(
        "all but the stuck groups drained",
        Duration::from_secs(600),
        || h.queue.len() == stuck * 4,
    )
    .await;
    let order = h.table.put_order();
    for g in 0..50 {
        // The first landing of each key of the group, in landing order.
        let mut seen = Vec::new();
        for k in order.iter().filter(|k| k.starts_with(&format!("g{g}-"))) {
            let i: usize = k.rsplit('-').next().unwrap().parse().unwrap();
            if !seen.contains(&i) {
                seen.push(i);
            }
        }
        let expected: Vec<usize> = if g % 7 == 0 {
            (0..6).collect()
        } else {
            (0..10).collect()
        };
        assert_eq!(seen, expected, "group g{g} written out of order");
    }
    h.stop.cancel();
    h.run.await.unwrap();
}

/// `n` logs as one NDJSON body, keys `{prefix}-{j}`.
fn packed(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|j| log(&format!("{prefix}-{j}")) + "\n")
        .collect()
}

// Real time: the token bucket runs on governor's clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packed_messages_waiting_for_capacity_are_never_timed_out_and_finish_in_order() {
    // Nine messages of 890 one-WCU logs, as sluice-producer packs a spike, against a 2,000 WCU/s
    // budget: the last one waits ~3.6 s for capacity, far past the 1 s message timeout, but it
    // is queueing, not stuck. Every message is received once, none is nacked, they finish in the
    // order received, and the drain takes the floor.
    let q = Arc::new(InMemoryQueueForTests::new(
        Duration::from_secs(2),
        Duration::from_secs(20),
    ));
    let mut cfg = config();
    // One poller: the order of receipt is then the queue's (two pollers receiving at the same
    // moment have no order between them).
    cfg.pollers = 1;
    cfg.message_timeout = Duration::from_secs(1);
    cfg.visibility_timeout = Some(Duration::from_secs(2));
    cfg.intake_horizon = Some(Duration::from_millis(500));
    let limiter = WcuLimiter::try_new(std::num::NonZeroU32::new(2000).unwrap(), 0.2).unwrap();
    let h = start_paced(q, Arc::new(MemoryTableForTests::default()), cfg, limiter);
    let ids: Vec<String> = (0..9)
        .map(|m| h.queue.send(packed(&format!("m{m}"), 890)))
        .collect();
    let started = std::time::Instant::now();
    while !h.queue.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "not drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed().as_secs_f64();
    let floor = 9.0 * 890.0 / 2000.0;
    assert!(h.queue.nacks().is_empty(), "nacked: {:?}", h.queue.nacks());
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.received, stats.acked, stats.nacked), (9, 9, 0));
    for id in &ids {
        assert_eq!(h.queue.receive_count(id), None, "{id} deleted");
    }
    assert_eq!(h.table.rows().len(), 9 * 890);
    assert_eq!(
        h.table.calls.load(Ordering::Relaxed),
        h.table.puts.load(Ordering::Relaxed).div_ceil(25),
        "no item written twice, full batches"
    );
    // Oldest first: message m finishes before message m + 1 starts being written.
    let order = h.table.put_order();
    let last_put = |m: usize| {
        order
            .iter()
            .rposition(|k| k.starts_with(&format!("m{m}-")))
            .unwrap()
    };
    let before = |m: usize, end: usize| {
        order[..end]
            .iter()
            .filter(|k| k.starts_with(&format!("m{m}-")))
            .count()
    };
    for m in 0..8 {
        assert!(
            last_put(m) < last_put(m + 1),
            "m{m} finished after m{}",
            m + 1
        );
        // The next message may have a batch or two out before this one is done (it can be
        // handed over a moment earlier), never its share of the drain.
        assert!(
            before(m + 1, last_put(m)) <= 50,
            "m{} was written alongside m{m}: {} of its logs before m{m} finished",
            m + 1,
            before(m + 1, last_put(m))
        );
    }
    assert!(
        took <= floor * 1.1 + 0.3,
        "drained in {took:.2} s, floor {floor:.2} s"
    );
}

#[tokio::test(start_paused = true)]
async fn fifo_followers_are_heartbeated_from_receipt_and_their_timeout_starts_with_them() {
    // Visibility 3 s, a table that takes 2 s per call, one group of five messages received
    // together, each writing the same row: the fifth waits ~8 s for its turn. None is received
    // twice, none times out (message timeout 3 s), and the row ends as the newest message.
    let q = Arc::new(InMemoryQueueForTests::new(
        Duration::from_secs(3),
        Duration::from_secs(20),
    ));
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(2));
    let mut cfg = config();
    cfg.message_timeout = Duration::from_secs(3);
    cfg.visibility_timeout = Some(Duration::from_secs(3));
    let h = start(q, table, cfg);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let body = log("row").replace(r#""path":"/p""#, &format!(r#""path":"/v{i}""#));
            h.queue.send_to_group(body, Some("tenant-a"))
        })
        .collect();
    wait_until("drained", Duration::from_secs(60), || h.queue.is_empty()).await;
    assert!(h.queue.nacks().is_empty(), "nacked: {:?}", h.queue.nacks());
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.received, stats.acked), (5, 5), "each received once");
    assert!(h.queue.extends() > 0, "the followers were heartbeated");
    let row = &h.table.rows()["row"];
    assert_eq!(
        row.attrs()["path"],
        sluice_core::AttrValue::S("/v4".into()),
        "the newest message wins"
    );
    let _ = ids;
}

#[tokio::test(start_paused = true)]
async fn messages_waiting_for_the_byte_budget_are_heartbeated_from_receipt() {
    // Visibility 3 s; a 1 MiB budget and messages of ~400 KiB on a table that takes 4 s per
    // call: messages wait many seconds for room in the budget. None is received twice.
    let q = Arc::new(InMemoryQueueForTests::new(
        Duration::from_secs(3),
        Duration::from_secs(20),
    ));
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(4));
    let mut cfg = config();
    cfg.pollers = 2;
    cfg.max_messages = 4;
    cfg.max_in_flight_bytes = 1 << 20;
    cfg.visibility_timeout = Some(Duration::from_secs(3));
    cfg.message_timeout = Duration::from_secs(10);
    let h = start(q, table, cfg);
    let pad = "x".repeat(1500);
    for m in 0..8 {
        let body: String = (0..250)
            .map(|i| {
                log(&format!("b{m}-{i}")).replace(
                    r#""latency_ms":3"#,
                    &format!(r#""latency_ms":3,"pad":"{pad}""#),
                ) + "\n"
            })
            .collect();
        assert!(body.len() > 380 * 1024);
        h.queue.send(body);
    }
    wait_until("drained", Duration::from_secs(600), || h.queue.is_empty()).await;
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.received, stats.acked, stats.nacked), (8, 8, 0));
    assert_eq!(h.table.rows().len(), 8 * 250);
}

#[tokio::test(start_paused = true)]
async fn an_item_the_table_rejects_alone_goes_to_the_dead_letter_path_with_the_tables_reason() {
    let q = Arc::new(
        InMemoryQueueForTests::new(Duration::from_secs(30), Duration::from_secs(20))
            .with_dead_letters(),
    );
    let table = Arc::new(MemoryTableForTests::default());
    table.reject_key("refused");
    let h = start(q, table, config());
    let bad = h
        .queue
        .send(format!("{}\n{}", log("fine-1"), log("refused")));
    h.queue.send(log("fine-2"));
    wait_until("drained", Duration::from_secs(60), || h.queue.is_empty()).await;
    let dead = h.queue.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].0.as_str(), dead[0].2.as_str()),
        (bad.as_str(), "rejected")
    );
    assert!(
        h.queue.nacks().is_empty(),
        "never nacked: {:?}",
        h.queue.nacks()
    );
    let rows = h.table.rows();
    assert!(rows.contains_key("fine-1") && rows.contains_key("fine-2"));
    h.stop.cancel();
    let stats = h.run.await.unwrap();
    assert_eq!((stats.dead_lettered, stats.acked), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn calls_still_in_flight_when_a_message_times_out_do_not_open_the_breaker() {
    // The table answers in 8 s, within dynamodb.request_timeout (10 s), but messages time out
    // after 2 s without progress: they are nacked, and the slow-but-successful calls are not
    // counted against the table (sluice's own deadline cut nothing).
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(8));
    let mut cfg = config();
    cfg.message_timeout = Duration::from_secs(2);
    let h = start(queue(), table, cfg);
    for i in 0..10 {
        h.queue.send(log(&format!("slow-{i}")));
    }
    let now = || tokio::time::Instant::now().into_std();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!h.breaker.is_open(now()), "the breaker opened");
    }
    assert!(!h.queue.nacks().is_empty(), "the messages did time out");
    h.stop.cancel();
    h.run.await.unwrap();
}

/// A queue whose receive answers after a delay, recording every visibility change.
struct SlowQueue {
    inner: InMemoryQueueForTests,
    receive_delay: Duration,
    extend_delay: Duration,
    /// (what, handle, time): "extend-start", "extend-end", "nack", "hand-back"
    events: std::sync::Mutex<Vec<(&'static str, String, tokio::time::Instant)>>,
}

impl SlowQueue {
    fn record(&self, what: &'static str, handle: &str) {
        self.events
            .lock()
            .unwrap()
            .push((what, handle.to_string(), tokio::time::Instant::now()));
    }
}

impl Source for SlowQueue {
    type Handle = String;
    async fn receive(
        &self,
        max: usize,
    ) -> Result<Vec<sluice_core::Received<String>>, sluice_core::SourceError> {
        let r = self.inner.receive(max).await;
        tokio::time::sleep(self.receive_delay).await;
        r
    }
    async fn ack(&self, handles: &[String]) -> Vec<sluice_core::source::AckFailure> {
        self.inner.ack(handles).await
    }
    async fn nack(&self, handle: &String, delay: Duration) -> Result<(), sluice_core::SourceError> {
        self.record("nack", handle);
        self.inner.nack(handle, delay).await
    }
    async fn extend(
        &self,
        handles: &[String],
        visibility: Duration,
    ) -> Vec<sluice_core::source::AckFailure> {
        if visibility.is_zero() {
            for h in handles {
                self.record("hand-back", h);
            }
            return self.inner.extend(handles, visibility).await;
        }
        for h in handles {
            self.record("extend-start", h);
        }
        tokio::time::sleep(self.extend_delay).await;
        let r = self.inner.extend(handles, visibility).await;
        for h in handles {
            self.record("extend-end", h);
        }
        r
    }
}

fn slow_queue(
    visibility: Duration,
    receive_delay: Duration,
    extend_delay: Duration,
) -> Arc<SlowQueue> {
    Arc::new(SlowQueue {
        inner: InMemoryQueueForTests::new(visibility, Duration::from_secs(20)),
        receive_delay,
        extend_delay,
        events: Default::default(),
    })
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_extension_in_flight_cannot_undo_a_nack() {
    // Visibility 2 s: the heartbeat extends a held message about 1 s after receipt, and the
    // extension takes 1.5 s to answer. The write fails (table down) while it is in flight. The
    // nack must wait for the extension to land, or the extension would land after it and hide
    // the message again.
    let q = slow_queue(
        Duration::from_secs(2),
        Duration::ZERO,
        Duration::from_millis(1500),
    );
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_millis(1200));
    table.fail_with(Some(WriteErrorKind::Fatal));
    let mut cfg = config();
    cfg.visibility_timeout = Some(Duration::from_secs(2));
    let (writer, _task) = Writer::spawn(
        table,
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig::default(),
    );
    let engine = Engine::new(q.clone(), writer, Schema::default(), cfg);
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    q.inner.send(log("x"));
    wait_until("a nack", Duration::from_secs(30), || {
        q.events.lock().unwrap().iter().any(|e| e.0 == "nack")
    })
    .await;
    let events = q.events.lock().unwrap().clone();
    let nack = events.iter().find(|e| e.0 == "nack").unwrap();
    for start in events
        .iter()
        .filter(|e| e.0 == "extend-start" && e.1 == nack.1)
    {
        let end = events
            .iter()
            .find(|e| e.0 == "extend-end" && e.1 == nack.1 && e.2 >= start.2)
            .expect("every extension ends");
        assert!(
            !(start.2 <= nack.2 && nack.2 < end.2),
            "nacked at {:?} while an extension ran from {:?} to {:?}",
            nack.2,
            start.2,
            end.2
        );
    }
    assert!(
        events.iter().any(|e| e.0 == "extend-start"),
        "the race was set up: {events:?}"
    );
    stop.cancel();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_receive_cut_short_by_the_breaker_opening_is_handed_back_at_once() {
    // The receive takes 300 ms to answer; the breaker opens while it is out. Its messages are
    // made visible again at once, not stranded in flight for the 30 s visibility timeout.
    let q = slow_queue(
        Duration::from_secs(30),
        Duration::from_millis(300),
        Duration::ZERO,
    );
    let table = Arc::new(MemoryTableForTests::default());
    let mut cfg = config();
    cfg.pollers = 1;
    let (writer, _task) = Writer::spawn(
        table,
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig::default(),
    );
    let breaker = writer.breaker();
    let engine = Engine::new(q.clone(), writer, Schema::default(), cfg);
    let stats = engine.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let id = q.inner.send(log("held-back"));
    tokio::time::sleep(Duration::from_millis(100)).await; // the receive has it, not yet answered
    for _ in 0..5 {
        breaker.record_failure(tokio::time::Instant::now().into_std(), "injected");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let events = q.events.lock().unwrap().clone();
    assert!(
        events.iter().any(|e| e.0 == "hand-back"),
        "handed back: {events:?}"
    );
    assert_eq!(stats.snapshot().nacked, 1);
    // After the cooldown it is received again and written.
    wait_until("drained", Duration::from_secs(60), || q.inner.is_empty()).await;
    assert_eq!(q.inner.receive_count(&id), None);
    stop.cancel();
    run.await.unwrap();
}

// ---- inputs and interleavings found by an adversarial review ---------------------------------

fn one_item(key: &str) -> sluice_core::Item {
    sluice_core::decode_message(log(key).as_bytes(), &Schema::default())
        .unwrap()
        .remove(0)
}

#[tokio::test(start_paused = true)]
async fn a_started_message_overtaken_by_an_older_arrival_is_not_timed_out_while_the_writer_progresses()
 {
    // One call at a time, 100 ms each: the writer lands 25 items every 100 ms throughout. B
    // (order 10) starts; then F arrives with an older place in the receipt order (a FIFO follower
    // handed over after its predecessor) and ten times B's items. F must not take every batch
    // from B, whose clock would run out while the writer drains at full pace.
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_millis(100));
    let cfg = WriterConfig {
        max_concurrent_requests: 1,
        ..WriterConfig::default()
    };
    let (writer, _task) = Writer::spawn(table.clone(), Arc::new(WcuLimiter::unlimited()), cfg);
    let b_items: Vec<_> = (0..50).map(|i| one_item(&format!("b{i}"))).collect();
    let b = tokio::spawn({
        let w = writer.clone();
        async move { w.write(b_items, 10, Duration::from_secs(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // B's first batch is out
    let f_items: Vec<_> = (0..500).map(|i| one_item(&format!("f{i}"))).collect();
    let f = writer.write(f_items, 1, Duration::from_secs(1)).await;
    assert!(f.is_ok(), "{f:?}");
    let b = b.await.unwrap();
    assert!(
        b.is_ok(),
        "B timed out while the writer drained at full pace: {b:?}"
    );
}

// Real time: the token bucket runs on governor's clock (one thread, for a fixed interleaving).
#[tokio::test]
async fn a_fifo_follower_does_not_time_out_a_message_received_after_it() {
    // One receive: group g = [m0: 1 log, m1: 900 logs], group h = [n0: 900 logs], 1,000 WCU/s,
    // message timeout 0.5 s. n0 starts in m0's batch; then m1 (an older receipt number) takes
    // every batch for ~0.9 s. n0 is only queueing behind work drained at the paced rate.
    let q = Arc::new(InMemoryQueueForTests::new(
        Duration::from_secs(30),
        Duration::from_secs(20),
    ));
    let mut cfg = config();
    cfg.pollers = 1;
    cfg.message_timeout = Duration::from_millis(500);
    let limiter = WcuLimiter::try_new(std::num::NonZeroU32::new(1000).unwrap(), 0.2).unwrap();
    // Sent before the engine starts, so the one receive takes all three.
    q.send_to_group(log("m0"), Some("g"));
    q.send_to_group(packed("m1", 900), Some("g"));
    q.send_to_group(packed("n0", 900), Some("h"));
    let h = start_paced(q, Arc::new(MemoryTableForTests::default()), cfg, limiter);
    let started = std::time::Instant::now();
    while !h.queue.is_empty() {
        assert!(started.elapsed() < Duration::from_secs(30), "not drained");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let nacks = h.queue.nacks();
    h.stop.cancel();
    h.run.await.unwrap();
    assert!(nacks.is_empty(), "nacked while queueing: {nacks:?}");
}

fn big_body(prefix: &str, logs: usize, pad: usize) -> String {
    let pad = "x".repeat(pad);
    (0..logs)
        .map(|i| {
            log(&format!("{prefix}-{i}")).replace(
                r#""latency_ms":3"#,
                &format!(r#""latency_ms":3,"pad":"{pad}""#),
            ) + "\n"
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn two_pollers_each_holding_a_reservation_cannot_deadlock_the_byte_budget() {
    // 1 MiB budget, 2 pollers × 4 messages. Messages of ~100 KiB teach the estimate; each
    // poller then parks in its long poll holding ~400 KiB. Eight ~250 KiB messages arrive: each
    // poller gets 1,000 KiB, holds 400 and waits for 600 more, with 224 free and nothing in flight.
    let mut cfg = config();
    cfg.pollers = 2;
    cfg.max_messages = 4;
    cfg.max_in_flight_bytes = 1 << 20;
    cfg.message_timeout = Duration::from_secs(10);
    let h = start(queue(), Arc::new(MemoryTableForTests::default()), cfg);
    for m in 0..4 {
        h.queue.send(big_body(&format!("warm{m}"), 40, 2500));
        wait_until("warm-up drained", Duration::from_secs(30), || {
            h.queue.is_empty()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // both pollers parked with reservations
    for m in 0..8 {
        h.queue.send(big_body(&format!("big{m}"), 100, 2500));
    }
    let give_up = tokio::time::Instant::now() + Duration::from_secs(300);
    while !h.queue.is_empty() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "the byte budget deadlocked: {} messages left, {:?}",
            h.queue.len(),
            h.stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop.cancel();
    h.run.await.unwrap();
}

/// The in-memory queue until `silent` is set; then every call is accepted and never answered, and
/// fails when the SQS client's deadline ends (operation timeout: 3 × sqs.request_timeout of 5 s).
struct GoesSilent {
    inner: InMemoryQueueForTests,
    silent: std::sync::atomic::AtomicBool,
}

impl GoesSilent {
    async fn deadline(&self) -> bool {
        if self.silent.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(15)).await;
            true
        } else {
            false
        }
    }
}

impl Source for GoesSilent {
    type Handle = String;
    async fn receive(
        &self,
        max: usize,
    ) -> Result<Vec<sluice_core::Received<String>>, sluice_core::SourceError> {
        if self.deadline().await {
            return Err(sluice_core::SourceError::retryable("deadline"));
        }
        self.inner.receive(max).await
    }
    async fn ack(&self, handles: &[String]) -> Vec<sluice_core::source::AckFailure> {
        if self.deadline().await {
            return fail_all(handles.len());
        }
        self.inner.ack(handles).await
    }
    async fn nack(&self, handle: &String, delay: Duration) -> Result<(), sluice_core::SourceError> {
        if self.deadline().await {
            return Err(sluice_core::SourceError::retryable("deadline"));
        }
        self.inner.nack(handle, delay).await
    }
    async fn extend(
        &self,
        handles: &[String],
        visibility: Duration,
    ) -> Vec<sluice_core::source::AckFailure> {
        if self.deadline().await {
            return fail_all(handles.len());
        }
        self.inner.extend(handles, visibility).await
    }
}

fn fail_all(n: usize) -> Vec<sluice_core::source::AckFailure> {
    (0..n)
        .map(|index| sluice_core::source::AckFailure {
            index,
            error: sluice_core::SourceError::retryable("deadline"),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_when_sqs_goes_silent_while_a_poller_waits_for_the_byte_budget() {
    // A 1 MiB budget: poller A takes a 900 KiB message (the table is slow, it stays in flight);
    // poller B, which reserved nothing, receives a 500 KiB one and waits for room. SQS then goes
    // silent and shutdown begins: run must return within shutdown_grace + SHUTDOWN_MARGIN.
    let source = Arc::new(GoesSilent {
        inner: InMemoryQueueForTests::new(Duration::from_secs(30), Duration::from_secs(20)),
        silent: Default::default(),
    });
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_secs(3600));
    let mut cfg = config();
    cfg.pollers = 2;
    cfg.max_messages = 1;
    cfg.max_in_flight_bytes = 1 << 20;
    cfg.message_timeout = Duration::from_secs(600);
    let (writer, _task) = Writer::spawn(
        table,
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig::default(),
    );
    let engine = Engine::new(source.clone(), writer, Schema::default(), cfg.clone());
    let stats = engine.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await; // both pollers parked, nothing reserved
    source.inner.send(big_body("a", 360, 2500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    source.inner.send(big_body("b", 200, 2500));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats.snapshot().received, 2, "{:?}", stats.snapshot());
    source.silent.store(true, Ordering::Relaxed);
    let began = tokio::time::Instant::now();
    stop.cancel();
    run.await.unwrap();
    let took = began.elapsed();
    let bound = cfg.shutdown_grace + sluice_core::engine::SHUTDOWN_MARGIN;
    assert!(took <= bound, "shutdown took {took:?}, bound {bound:?}");
}

// Real time: the token bucket runs on governor's clock.
#[tokio::test]
async fn a_100_wcu_table_is_never_handed_ten_packed_messages_at_once() {
    // The engine's own words: "A table of 100 WCU is never handed ten packed messages of 900
    // logs it would need 90 seconds for." Horizon 5 s at 100 WCU/s: 500 WCU, plus one message.
    let q = queue();
    for m in 0..10 {
        q.send(packed(&format!("p{m}"), 900));
    }
    let mut cfg = config();
    cfg.pollers = 1;
    cfg.intake_horizon = Some(Duration::from_secs(5));
    cfg.message_timeout = Duration::from_secs(60);
    let limiter = WcuLimiter::try_new(std::num::NonZeroU32::new(100).unwrap(), 0.2).unwrap();
    let h = start_paced(q, Arc::new(MemoryTableForTests::default()), cfg, limiter);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = h.stats.held_wcu.load(Ordering::Relaxed);
    let received = h.stats.snapshot().received;
    h.stop.cancel();
    h.run.await.unwrap();
    assert!(
        held <= 500 + 900,
        "held {held} WCU in {received} messages: {} s of writing",
        held / 100
    );
}
