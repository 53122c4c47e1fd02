//! The shapes real producers send, against sluice-sim: packed messages of hundreds of logs on
//! small tables, logs up to 350 KB, FIFO groups, duplicates. Each case asserts what sluice
//! promises: every log lands as one row, no message is received twice (no fault is injected),
//! the table never throttles, and the drain takes the time the budget allows (the floor: the WCU
//! to write over target utilization × provisioned capacity), within 10% (5% for the repro),
//! wherever the table rather than per-message work is the bottleneck.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use proptest::prelude::*;
use sluice::config::Settings;
use sluice::pipeline::Pipeline;
use sluice_testkit::TestEnv;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// What one drain did.
#[derive(Debug)]
struct Drain {
    seconds: f64,
    floor: f64,
    received: u64,
    messages: u64,
    nacked: u64,
    rows: usize,
    throttled: u64,
    unprocessed: u64,
}

/// The example config, pointed at this queue and table (what a new user runs).
fn example_settings(queue_url: &str, table: &str) -> Settings {
    let mut s = sluice::config::from_toml(include_str!("../../../config/sluice.example.toml"))
        .expect("the example config loads");
    s.sqs.queue_url = Some(queue_url.parse().unwrap());
    s.dynamodb.table = table.to_string();
    s.sqs.dead_letter_queue_url = None;
    s.rate.mode = sluice::config::RateMode::Local;
    s.validate().expect("valid");
    s
}

/// Runs the pipeline until `messages` are acked; the drain is timed from its start. `wcu` is
/// what the logs cost; the floor is `wcu` over the budget.
async fn drain(env: &TestEnv, settings: &Settings, messages: u64, wcu: u64, table: &str) -> Drain {
    let pipeline = Pipeline::build(
        settings,
        &env.sqs_config().await,
        &env.dynamodb_config().await,
    )
    .await
    .expect("pipeline builds");
    let budget = pipeline.limiter().budget().expect("paced");
    let floor = wcu as f64 / budget;
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let limit = Duration::from_secs_f64(floor * 3.0 + 30.0);
    while stats.acked.load(Ordering::Relaxed) + stats.dead_lettered.load(Ordering::Relaxed)
        < messages
    {
        assert!(
            started.elapsed() < limit,
            "not drained after {:?} (floor {floor:.1} s): {:?}",
            started.elapsed(),
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let summary = run.await.unwrap();
    let report = env.sim.as_ref().unwrap().capacity_report(table).unwrap();
    let rows = env.scan_keys(table, "request_id").await.unwrap();
    let unique: BTreeSet<&String> = rows.iter().collect();
    assert_eq!(rows.len(), unique.len(), "a key has two rows");
    Drain {
        seconds,
        floor,
        received: summary.received,
        messages,
        nacked: summary.nacked,
        rows: rows.len(),
        throttled: report["throttled_requests"].as_u64().unwrap_or(u64::MAX),
        unprocessed: report["unprocessed_items"].as_u64().unwrap_or(u64::MAX),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repro_8000_packed_logs_on_a_100_wcu_table_drain_at_the_floor_with_no_timeouts() {
    // The issue's repro, as a new user runs it: `sluice load` packs 8,000 logs of 250-300 bytes
    // (one WCU each) into ~9 messages of ~890 logs, and `sluice run` with the example config
    // drains them into a table provisioned at 100 WCU. Before: 33 receives for 9 messages, 24-30
    // timeouts, and 7,929 rows after 200 s.
    let env = TestEnv::start(sluice_testkit::Backend::Sim).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "requests", "request_id", Some(100))
        .await
        .unwrap();
    let out = tokio::process::Command::new(BIN)
        .args([
            "load",
            "--queue-url",
            &url,
            "--count",
            "8000",
            "--rate",
            "0",
        ])
        .args([
            "--size",
            "250-300",
            "--json",
            "--endpoint",
            &env.sqs_endpoint,
        ])
        .envs(env.child_env())
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary: serde_json::Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON summary in {stdout}"));
    let messages = summary["messages_sent"].as_u64().unwrap();
    // ~890 logs a message; a slow machine can flush a few partial batches at the producer's
    // 50 ms linger (CI once sent 13), which still leaves hundreds of logs a message.
    assert!(
        messages <= 20,
        "packed as a producer packs: {messages} messages"
    );
    let settings = example_settings(&url, "requests");
    let d = drain(&env, &settings, messages, 8000, "requests").await;
    eprintln!("repro: {d:?}");
    assert_eq!(d.rows, 8000);
    assert_eq!(
        (d.received, d.nacked),
        (messages, 0),
        "each received once, no timeouts"
    );
    assert_eq!((d.throttled, d.unprocessed), (0, 0));
    assert!(
        d.seconds <= d.floor * 1.05,
        "drained in {:.1} s, floor {:.1} s",
        d.seconds,
        d.floor
    );
}

/// Messages a second up to which the table, not sluice's per-message work, sets the drain time
/// of a shape. A debug build drains 1,500-2,000 FIFO messages a second on CI's 2 cores with the
/// simulator in the same process (CI log of the failing run: 10,052 one-log messages in 6.2 s),
/// so this leaves a wide margin for a loaded machine.
const TABLE_BOUND_MESSAGES_PER_SECOND: f64 = 500.0;

/// One shape of traffic.
#[derive(Debug, Clone)]
struct Shape {
    log_bytes: usize,
    logs_per_message: usize,
    capacity: i64,
    fifo: bool,
    /// Every n-th log repeats an earlier one exactly (0: none).
    duplicate_every: usize,
}

fn shapes() -> impl Strategy<Value = Shape> {
    (
        prop_oneof![200usize..1500, 2_000usize..60_000, 100_000usize..350_000],
        prop_oneof![Just(1usize), 2usize..50, 200usize..1000],
        prop_oneof![50i64..200, 200i64..1000, 1000i64..5000],
        any::<bool>(),
        prop_oneof![Just(0usize), 3usize..12],
    )
        .prop_map(
            |(log_bytes, logs_per_message, capacity, fifo, duplicate_every)| Shape {
                log_bytes,
                logs_per_message,
                capacity,
                fifo,
                duplicate_every,
            },
        )
}

/// A log of about `bytes` bytes.
fn log_of(key: &str, bytes: usize) -> String {
    let bare = format!(
        r#"{{"request_id":"{key}","ts":1795341600000,"method":"GET","path":"/x","status":200,"latency_ms":1,"pad":""}}"#
    );
    bare.replace(
        r#""pad":"""#,
        &format!(
            r#""pad":"{}""#,
            "x".repeat(bytes.saturating_sub(bare.len()))
        ),
    )
}

/// Packs logs as sluice-producer does: NDJSON, up to `logs_per_message` logs and 256 KiB per
/// message (1 MiB, SQS's limit, for logs that do not fit 256 KiB).
fn pack(logs: &[String], logs_per_message: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut open = String::new();
    let mut n = 0;
    for log in logs {
        let max = if log.len() >= 256 * 1024 {
            1024 * 1024
        } else {
            256 * 1024
        };
        if n > 0 && (n == logs_per_message || open.len() + 1 + log.len() > max) {
            out.push(std::mem::take(&mut open));
            n = 0;
        }
        if n > 0 {
            open.push('\n');
        }
        open.push_str(log);
        n += 1;
    }
    if n > 0 {
        out.push(open);
    }
    out
}

async fn run_shape(shape: Shape) -> Result<(), TestCaseError> {
    // Scale the count so the floor is about 5 s whatever the shape.
    let wcu_per_log = shape.log_bytes.div_ceil(1024).max(1) as u64;
    let budget = shape.capacity as f64 * 0.98;
    let count = ((5.0 * budget / wcu_per_log as f64) as usize).clamp(2, 12_000);
    let env = TestEnv::start(sluice_testkit::Backend::Sim).await.unwrap();
    let name = if shape.fifo { "logs.fifo" } else { "logs" };
    let url = if shape.fifo {
        sluice_sqs::admin::create_queue(
            &env.sqs,
            name,
            &[
                (
                    aws_sdk_sqs::types::QueueAttributeName::FifoQueue,
                    "true".to_string(),
                ),
                (
                    aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
                    "30".to_string(),
                ),
            ],
        )
        .await
        .unwrap()
    } else {
        env.create_queue(name, 30).await.unwrap()
    };
    sluice_dynamodb::admin::create_table(
        &env.dynamodb,
        "shapes",
        "request_id",
        Some(shape.capacity),
    )
    .await
    .unwrap();
    let mut logs: Vec<String> = Vec::with_capacity(count);
    let mut keys = BTreeSet::new();
    for i in 0..count {
        if shape.duplicate_every > 0 && i % shape.duplicate_every == shape.duplicate_every - 1 {
            logs.push(logs[i / 2].clone());
        } else {
            let key = format!("s-{i}");
            keys.insert(key.clone());
            logs.push(log_of(&key, shape.log_bytes));
        }
    }
    let wcu: u64 = logs
        .iter()
        .map(|l| l.len().div_ceil(1024).max(1) as u64)
        .sum();
    let bodies = pack(&logs, shape.logs_per_message);
    // Send: FIFO messages spread over four groups, deduplicated by their own id.
    for (b, chunk) in bodies.chunks(10).enumerate() {
        let mut send = env.sqs.send_message_batch().queue_url(&url);
        let mut bytes = 0;
        for (i, body) in chunk.iter().enumerate() {
            if bytes + body.len() > 1024 * 1024 && bytes > 0 {
                send.clone().send().await.unwrap();
                send = env.sqs.send_message_batch().queue_url(&url);
                bytes = 0;
            }
            bytes += body.len();
            let mut e = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body);
            if shape.fifo {
                e = e
                    .message_group_id(format!("g{}", (b * 10 + i) % 4))
                    .message_deduplication_id(format!("m{b}-{i}"));
            }
            send = send.entries(e.build().unwrap());
        }
        let out = send.send().await.unwrap();
        prop_assert!(out.failed().is_empty(), "{:?}", out.failed());
    }
    let mut settings = example_settings(&url, "shapes");
    settings.sqs.wait_time_seconds = 1;
    let d = drain(&env, &settings, bodies.len() as u64, wcu, "shapes").await;
    eprintln!(
        "{shape:?}: {} logs, {} messages: {d:?}",
        logs.len(),
        bodies.len()
    );
    prop_assert_eq!(d.rows, keys.len(), "every log one row");
    prop_assert_eq!(
        (d.received, d.nacked),
        (d.messages, 0),
        "each message received once"
    );
    prop_assert_eq!(
        (d.throttled, d.unprocessed),
        (0, 0),
        "the table never throttled"
    );
    // The floor is a promise about pacing: sluice keeps the table busy. It binds only where the
    // table is the bottleneck. A shape that asks for more messages a second than
    // TABLE_BOUND_MESSAGES_PER_SECOND (one-log messages on a 4,000 WCU table want 4,000 a
    // second) measures sluice's per-message cost on a shared 2-core machine in a debug build,
    // which bench/compare.sh reports; such a shape still asserts everything else above.
    let wanted = d.messages as f64 / d.floor;
    if wanted <= TABLE_BOUND_MESSAGES_PER_SECOND {
        prop_assert!(
            d.seconds <= d.floor * 1.1,
            "drained in {:.2} s, floor {:.2} s",
            d.seconds,
            d.floor
        );
    } else {
        eprintln!(
            "  not table-bound ({wanted:.0} messages/s wanted): drain time not asserted against the floor"
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 8,
        max_shrink_iters: 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_shape_lands_once_unthrottled_at_the_floor(shape in shapes()) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_shape(shape))?;
    }
}
