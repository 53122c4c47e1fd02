//! KafkaSource under the real engine, against librdkafka's in-process mock cluster: out-of-order
//! completion, injected broker errors, poison to the DLQ topic, and a rebalance between two
//! consumers. The real-broker runs (noida-db, Tansu, kill -9) are in crates/sluice/tests/kafka.rs.

use sluice_core::testing::log_line as log;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sluice_core::testing::MemoryTableForTests;
use sluice_core::{Engine, EngineConfig, Schema, WcuLimiter, Writer, WriterConfig};
use sluice_kafka::source::header_map;
use sluice_kafka::{KafkaConfig, KafkaSource};
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "logs";
const DLQ: &str = "logs-dlq";

fn engine_config() -> EngineConfig {
    EngineConfig {
        pollers: 2,
        max_messages: 10,
        max_in_flight: 200,
        max_in_flight_bytes: 16 << 20,
        message_timeout: Duration::from_secs(5),
        shutdown_grace: Duration::from_secs(3),
        nack_backoff_base: Duration::from_millis(100),
        nack_backoff_max: Duration::from_secs(1),
        poison_nack_delay: Duration::from_millis(100),
        ack_linger: Duration::from_millis(5),
        max_concurrent_acks: 4,
        intake_horizon: None,
        visibility_timeout: None,
        poll_wait: Duration::from_secs(1),
    }
}

fn config(brokers: &str, group: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(brokers, group, &[TOPIC], DLQ);
    c.session_timeout = Duration::from_secs(3);
    c.commit_interval = Duration::from_millis(200);
    c.buffer_records = 500;
    c
}

/// Produces `n` logs keyed by request id; returns (partition, offset) → request id.
async fn produce(brokers: &str, prefix: &str, n: usize) -> HashMap<(i32, i64), String> {
    let config = KafkaConfig::new(brokers, "producer", &[TOPIC], DLQ);
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let records: Vec<(String, String)> = ids.iter().map(|id| (id.clone(), log(id))).collect();
    let at = sluice_kafka::admin::produce_keyed(&config, TOPIC, &records)
        .await
        .unwrap();
    at.into_iter().zip(ids).collect()
}

/// The group's committed offsets, read by a client that does not join it.
fn committed(brokers: &str, group: &str) -> HashMap<i32, i64> {
    let config = KafkaConfig::new(brokers, group, &[TOPIC], DLQ);
    sluice_kafka::admin::offsets(&config, group, &[TOPIC.to_string()], Duration::from_secs(5))
        .unwrap()
        .into_iter()
        .filter_map(|p| p.committed.map(|c| (p.partition, c)))
        .collect()
}

struct Run {
    stop: CancellationToken,
    engine: tokio::task::JoinHandle<sluice_core::StatsSnapshot>,
    source: Arc<KafkaSource>,
}

fn start(brokers: &str, group: &str, table: Arc<MemoryTableForTests>) -> Run {
    start_paced(brokers, group, table, WcuLimiter::unlimited())
}

fn start_paced(
    brokers: &str,
    group: &str,
    table: Arc<MemoryTableForTests>,
    limiter: WcuLimiter,
) -> Run {
    let source = Arc::new(KafkaSource::start(config(brokers, group)).unwrap());
    let (writer, _task) = Writer::spawn(table, Arc::new(limiter), WriterConfig::default());
    let engine = Engine::new(source.clone(), writer, Schema::default(), engine_config());
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    Run {
        stop,
        engine: run,
        source,
    }
}

impl Run {
    async fn stop(self) -> sluice_core::StatsSnapshot {
        self.stop.cancel();
        let stats = self.engine.await.unwrap();
        assert!(self.source.close().await, "the consumer closed in time");
        stats
    }
}

/// Every commit seen while running points at or before the first unwritten record.
fn check_commits(
    brokers: &str,
    group: &str,
    sent: &HashMap<(i32, i64), String>,
    table: &MemoryTableForTests,
) -> usize {
    let commits = committed(brokers, group);
    let rows = table.rows();
    let mut checked = 0;
    for (&(p, o), id) in sent {
        if commits.get(&p).is_some_and(|&c| o < c) {
            assert!(
                rows.contains_key(id),
                "partition {p} committed past offset {o} ({id}) before it was written"
            );
            checked += 1;
        }
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_land_once_and_commits_never_pass_an_unwritten_record() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 4, 1).unwrap();
    mock.create_topic(DLQ, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let sent = produce(&brokers, "k", 10_000).await;
    assert_eq!(sent.len(), 10_000);
    let table = Arc::new(MemoryTableForTests::default());
    // Slow writes with many in flight: batches finish out of order.
    table.set_latency(Duration::from_millis(15));
    let run = start(&brokers, "g1", table.clone());
    let started = Instant::now();
    let mut checks = 0;
    while table.rows().len() < 10_000 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of 10000 written",
            table.rows().len()
        );
        checks += check_commits(&brokers, "g1", &sent, &table);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(checks > 0, "commits were observed while running");
    let stats = run.stop().await;
    assert_eq!(stats.acked, 10_000);
    let commits = committed(&brokers, "g1");
    let mut ends: HashMap<i32, i64> = HashMap::new();
    for &(p, o) in sent.keys() {
        let e = ends.entry(p).or_default();
        *e = (*e).max(o + 1);
    }
    assert_eq!(commits, ends, "everything written is committed at close");
    let ids: HashSet<&String> = sent.values().collect();
    assert_eq!(table.rows().len(), ids.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_on_fetch_and_commit_delay_but_lose_nothing() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 4, 1).unwrap();
    mock.create_topic(DLQ, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let sent = produce(&brokers, "e", 2000).await;
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 4],
    );
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 6],
    );
    let table = Arc::new(MemoryTableForTests::default());
    let run = start(&brokers, "g2", table.clone());
    let started = Instant::now();
    while table.rows().len() < 2000 {
        assert!(started.elapsed() < Duration::from_secs(60));
        check_commits(&brokers, "g2", &sent, &table);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run.stop().await;
    let commits = committed(&brokers, "g2");
    assert_eq!(commits.values().sum::<i64>(), 2000, "{commits:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_goes_to_the_dlq_topic_with_its_reason_and_is_committed_past() {
    // Three kinds of poison: not JSON; a number DynamoDB cannot store (caught at decode); and an
    // item the table itself refuses (caught at the write, dead-lettered with the table's words
    // instead of being retried forever). Each goes to the DLQ topic and the commit moves past.
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 1, 1).unwrap();
    mock.create_topic(DLQ, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .unwrap();
    let records = [
        ("a", log("a")),
        ("bad", "this is not JSON".to_string()),
        (
            "huge",
            log("huge").replace(r#""latency_ms":3"#, r#""latency_ms":1e200"#),
        ),
        ("refused", log("refused")),
        ("b", log("b")),
    ];
    for (key, body) in &records {
        producer
            .send(
                FutureRecord::to(TOPIC).key(*key).payload(body),
                Duration::from_secs(5),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }
    let table = Arc::new(MemoryTableForTests::default());
    table.reject_key("refused");
    let run = start(&brokers, "g3", table.clone());
    let started = Instant::now();
    while committed(&brokers, "g3").get(&0) != Some(&5) {
        assert!(started.elapsed() < Duration::from_secs(30), "not committed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats = run.stop().await;
    assert_eq!(
        (stats.acked, stats.dead_lettered, stats.nacked),
        (5, 3, 0),
        "{stats:?}"
    );
    assert_eq!(table.rows().len(), 2);

    let dlq: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "dlq-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dlq.subscribe(&[DLQ]).unwrap();
    let started = Instant::now();
    let mut dead = HashMap::new();
    while dead.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "only {dead:?} in the DLQ"
        );
        if let Some(Ok(m)) = dlq.poll(Duration::from_millis(200)) {
            let key = m
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .unwrap();
            let payload = String::from_utf8_lossy(m.payload().unwrap()).into_owned();
            dead.insert(key, (payload, header_map(m.headers().unwrap())));
        }
    }
    let (payload, headers) = &dead["bad"];
    assert_eq!(payload, "this is not JSON");
    assert_eq!(headers["sluice_source_topic"], TOPIC);
    assert_eq!(headers["sluice_source_offset"], "1");
    assert_eq!(headers["sluice_reason"], "not_json");
    assert!(!headers["sluice_error"].is_empty(), "{headers:?}");
    let (_, headers) = &dead["huge"];
    assert_eq!(headers["sluice_reason"], "invalid_value");
    assert!(
        headers["sluice_error"].contains("latency_ms"),
        "{headers:?}"
    );
    let (payload, headers) = &dead["refused"];
    assert_eq!(payload, &records[3].1);
    assert_eq!(headers["sluice_reason"], "rejected");
    assert!(headers["sluice_error"].contains("refused"), "{headers:?}");
    assert_eq!(headers["sluice_source_offset"], "3");
    dlq.unsubscribe();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_between_two_consumers_loses_nothing() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic(TOPIC, 4, 1).unwrap();
    mock.create_topic(DLQ, 1, 1).unwrap();
    let brokers = mock.bootstrap_servers();
    let sent = produce(&brokers, "r", 6000).await;
    let table = Arc::new(MemoryTableForTests::default());
    // 600 WCU/s each: ten seconds of work for one member, so the second joins mid-run.
    let paced = || WcuLimiter::try_new(std::num::NonZeroU32::new(600).unwrap(), 1.0).unwrap();
    let first = start_paced(&brokers, "g4", table.clone(), paced());
    let started = Instant::now();
    while table.rows().len() < 1000 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "first consumer stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A second member joins: partitions are revoked from the first and split.
    let second = start_paced(&brokers, "g4", table.clone(), paced());
    let started = Instant::now();
    while table.rows().len() < 6000 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of 6000 written",
            table.rows().len()
        );
        check_commits(&brokers, "g4", &sent, &table);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // The first leaves: the second takes every partition and its commits reach the end (a
    // commit refused mid-rebalance only means records read again, never skipped).
    let a = first.stop().await;
    let started = Instant::now();
    loop {
        let commits = committed(&brokers, "g4");
        if commits.values().sum::<i64>() == 6000 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "commits stuck at {commits:?}"
        );
        check_commits(&brokers, "g4", &sent, &table);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let b = second.stop().await;
    assert!(b.acked > 0, "the second member took partitions: {b:?}");
    assert!(a.acked + b.acked >= 6000);
}
