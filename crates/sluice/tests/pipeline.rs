//! The real crates against real servers: MiniStack for SQS, and for DynamoDB MiniStack or
//! DynamoDB Local (AWS's own engine); and the same tests against sluice-sim, which must behave
//! like them. The servers are started by each test on free loopback ports and stopped when it
//! ends.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use sluice::config::Settings;
use sluice::pipeline::Pipeline;
use sluice_producer::sqs::SqsTransport;
use sluice_testkit::{Backend, TestEnv};
use tokio_util::sync::CancellationToken;

fn log(id: &str, i: usize) -> String {
    format!(
        r#"{{"request_id":"{id}","ts":"2026-11-22T10:00:{:02}Z","method":"GET","path":"/v1/items/{i}","status":200,"latency_ms":{}.5,"user_id":null,"attrs":{{"region":"eu-west-1","retry":false,"tags":["a",{i}]}}}}"#,
        i % 60,
        i % 97
    )
}

fn settings(queue_url: &str, table: &str) -> Settings {
    let mut s = Settings::default();
    s.sqs.queue_url = Some(queue_url.parse().unwrap());
    s.sqs.wait_time_seconds = 2;
    s.sqs.visibility_timeout = Some(Duration::from_secs(60));
    s.dynamodb.table = table.to_string();
    s.validate().expect("test settings are valid");
    s
}

/// 900 distinct messages (50 of them carrying 2-6 logs, as arrays or NDJSON) plus 100 duplicate
/// deliveries: exactly one row per request id, every message acked, the queue empty.
async fn duplicates_and_multi_log_messages_end_as_one_row_per_request_id(backend: Backend) {
    let env = TestEnv::start(backend).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();

    let mut bodies = Vec::new();
    let mut expected = BTreeSet::new();
    for i in 0..900 {
        if i % 18 == 0 {
            let ids: Vec<String> = (0..2 + i % 5).map(|j| format!("multi-{i}-{j}")).collect();
            expected.extend(ids.iter().cloned());
            let logs: Vec<String> = ids.iter().map(|id| log(id, i)).collect();
            bodies.push(if i % 36 == 0 {
                format!("[{}]", logs.join(","))
            } else {
                logs.join("\n")
            });
        } else {
            let id = format!("req-{i}");
            expected.insert(id.clone());
            bodies.push(log(&id, i));
        }
    }
    let multi = bodies
        .iter()
        .filter(|b| b.starts_with('[') || b.contains('\n'))
        .count();
    assert_eq!(multi, 50);
    let duplicates: Vec<String> = bodies.iter().step_by(9).take(100).cloned().collect();
    bodies.extend(duplicates);
    assert_eq!(bodies.len(), 1000);
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();

    let pipeline = Pipeline::build(
        &settings(&url, "request-logs"),
        &env.sqs_config().await,
        &env.dynamodb_config().await,
    )
    .await
    .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.acked.load(Ordering::Relaxed) < 1000 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not drained: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_queue_empty(&url, Duration::from_secs(30))
        .await
        .unwrap();
    stop.cancel();
    let summary = run.await.unwrap();
    assert_eq!(summary.acked, 1000);
    assert_eq!(summary.nacked, 0);

    let rows = env.scan_keys("request-logs", "request_id").await.unwrap();
    let unique: BTreeSet<String> = rows.iter().cloned().collect();
    assert_eq!(rows.len(), unique.len(), "a request id has two rows");
    assert_eq!(unique, expected);

    // The JSON arrived faithfully, types and all.
    let item = env
        .dynamodb
        .get_item()
        .table_name("request-logs")
        .key("request_id", AttributeValue::S("multi-18-0".into()))
        .send()
        .await
        .unwrap();
    let item = item.item().expect("row exists");
    assert_eq!(item["status"], AttributeValue::N("200".into()));
    assert_eq!(item["latency_ms"], AttributeValue::N("18.5".into()));
    assert_eq!(item["user_id"], AttributeValue::Null(true));
    let attrs = item["attrs"].as_m().expect("attrs is a map");
    assert_eq!(attrs["retry"], AttributeValue::Bool(false));
    assert_eq!(
        attrs["tags"],
        AttributeValue::L(vec![
            AttributeValue::S("a".into()),
            AttributeValue::N("18".into())
        ])
    );
}

/// A message whose write fails (the table does not exist yet) is nacked, not deleted, and comes
/// back; once the table exists it is written and acked.
async fn a_message_whose_write_fails_is_not_deleted_and_comes_back(backend: Backend) {
    let env = TestEnv::start(backend).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&[log("comes-back", 1)])
        .await
        .unwrap();

    let mut s = settings(&url, "late-table");
    s.dynamodb.check_table = false;
    s.sqs.nack_backoff_base = Duration::from_secs(1);
    s.sqs.nack_backoff_max = Duration::from_secs(1);
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));

    let started = Instant::now();
    while stats.nacked.load(Ordering::Relaxed) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "never nacked: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(stats.acked.load(Ordering::Relaxed), 0);
    let (visible, in_flight) = env.queue_counts(&url).await.unwrap();
    assert_eq!(
        visible + in_flight,
        1,
        "the failed message must still be in the queue"
    );

    env.create_table("late-table", "request_id").await.unwrap();
    while stats.acked.load(Ordering::Relaxed) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "never written: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_queue_empty(&url, Duration::from_secs(30))
        .await
        .unwrap();
    stop.cancel();
    let summary = run.await.unwrap();
    assert!(
        summary.received >= 3,
        "delivered again after each nack: {summary:?}"
    );
    assert_eq!(
        env.scan_keys("late-table", "request_id").await.unwrap(),
        vec!["comes-back"]
    );
}

sluice_testkit::backend_tests!(
    duplicates_and_multi_log_messages_end_as_one_row_per_request_id {
        ministack_duplicates_and_multi_log_messages_end_as_one_row_per_request_id: MiniStack,
        dynamodb_local_duplicates_and_multi_log_messages_end_as_one_row_per_request_id:
            DynamoDbLocal,
        sim_duplicates_and_multi_log_messages_end_as_one_row_per_request_id: Sim,
    }
);

sluice_testkit::backend_tests!(a_message_whose_write_fails_is_not_deleted_and_comes_back {
    ministack_a_message_whose_write_fails_is_not_deleted_and_comes_back: MiniStack,
    dynamodb_local_a_message_whose_write_fails_is_not_deleted_and_comes_back: DynamoDbLocal,
    sim_a_message_whose_write_fails_is_not_deleted_and_comes_back: Sim,
});

/// Runs the pipeline over `logs` one-WCU logs into a table provisioned at `provisioned` WCU/s,
/// paced at `budget` (None: discovered from the table), and returns the table's capacity report
/// from the sim. With `lowered_to`, the table's capacity is lowered to it once sluice has read
/// it (and sluice does not look again during the test): a budget above what the table gives.
async fn drain_into_provisioned_table(
    logs: usize,
    provisioned: i64,
    budget: Option<u32>,
    lowered_to: Option<i64>,
) -> (serde_json::Value, sluice_core::StatsSnapshot) {
    let env = match lowered_to {
        // One second of burst credit, so the lowered table keeps no credit from before.
        Some(_) => TestEnv::start_sim(sluice_sim::SimConfig {
            tables: sluice_sim::TableSettings {
                burst_seconds: 1.0,
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap(),
        None => TestEnv::start(Backend::Sim).await.unwrap(),
    };
    let url = env.create_queue("logs", 60).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "paced", "request_id", Some(provisioned))
        .await
        .unwrap();
    // Ten logs per message, as producers pack them.
    let bodies: Vec<String> = (0..logs / 10)
        .map(|m| {
            (0..10)
                .map(|j| log(&format!("p-{m}-{j}"), m))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();
    let mut s = settings(&url, "paced");
    s.rate.wcu_per_second = budget.and_then(std::num::NonZeroU32::new);
    s.rate.refresh_interval = Duration::from_secs(3600);
    s.dynamodb.retry_max_delay = Duration::from_millis(500);
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    if let Some(w) = lowered_to {
        env.dynamodb
            .update_table()
            .table_name("paced")
            .provisioned_throughput(
                aws_sdk_dynamodb::types::ProvisionedThroughput::builder()
                    .read_capacity_units(w)
                    .write_capacity_units(w)
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.acked.load(Ordering::Relaxed) < bodies.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not drained: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    let summary = run.await.unwrap();
    let keys = env.scan_keys("paced", "request_id").await.unwrap();
    assert_eq!(keys.len(), logs, "every log written, throttled or not");
    let report = env.sim.as_ref().unwrap().capacity_report("paced").unwrap();
    (report, summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_paced_writes_never_exceed_the_provisioned_capacity() {
    // 1,500 WCU of logs into a 500 WCU/s table, its budget discovered (0.98 × 500): about three
    // seconds of writes.
    let (report, summary) = drain_into_provisioned_table(1500, 500, None, None).await;
    assert_eq!(report["throttled_requests"], 0, "{report}");
    assert_eq!(report["unprocessed_items"], 0, "{report}");
    assert_eq!(summary.nacked, 0);
    // Per wall-clock second the table never saw more than its capacity.
    let peak = report["peak_wcu_per_s"].as_f64().unwrap();
    assert!(
        peak <= 500.0,
        "peak {peak} WCU in one second against 500 provisioned: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_unpaced_writes_are_throttled_but_nothing_is_lost() {
    // The same load with a budget far above the table's capacity (sluice read 100,000 WCU, then
    // the table was lowered to 200 under it): the table refuses what is over capacity, and the
    // writer retries until everything is written. (An explicit rate.wcu_per_second above the
    // capacity sluice reads is capped at it.)
    let (report, _) = drain_into_provisioned_table(1500, 100_000, None, Some(200)).await;
    let refused = report["throttled_requests"].as_u64().unwrap()
        + report["unprocessed_items"].as_u64().unwrap();
    assert!(
        refused > 0,
        "an unpaced spike must meet the table's limit: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_the_budget_follows_an_update_table_at_the_next_refresh() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("logs", 60).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "growing", "request_id", Some(100))
        .await
        .unwrap();
    let mut s = settings(&url, "growing");
    s.rate.refresh_interval = Duration::from_secs(1);
    s.rate.expected_replicas = std::num::NonZeroU32::new(2);
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let limiter = pipeline.limiter();
    assert_eq!(
        limiter.budget(),
        Some(49.0),
        "0.98 × 100 WCU, half of it for this instance"
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    env.dynamodb
        .update_table()
        .table_name("growing")
        .provisioned_throughput(
            aws_sdk_dynamodb::types::ProvisionedThroughput::builder()
                .read_capacity_units(1)
                .write_capacity_units(1000)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let started = Instant::now();
    while limiter.budget() != Some(490.0) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "budget still {:?}",
            limiter.budget()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    run.await.unwrap();
}

/// Poison goes to the configured dead-letter queue at once, with its reason as message
/// attributes, and is deleted from the source; the good messages are written.
async fn poison_goes_to_the_dead_letter_queue_with_its_reason(backend: Backend) {
    let env = TestEnv::start(backend).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    let dlq = env.create_queue("logs-dlq", 30).await.unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    let mut bodies: Vec<String> = (0..5).map(|i| log(&format!("ok-{i}"), i)).collect();
    bodies.push("not json".into());
    bodies.push(log("no-method", 1).replace("\"method\":\"GET\",", ""));
    bodies.push("[1,2]".into());
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();

    let mut s = settings(&url, "request-logs");
    s.sqs.dead_letter_queue_url = Some(dlq.parse().unwrap());
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.acked.load(Ordering::Relaxed) < 8 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_queue_empty(&url, Duration::from_secs(30))
        .await
        .unwrap();
    stop.cancel();
    let summary = run.await.unwrap();
    assert_eq!((summary.dead_lettered, summary.nacked), (3, 0));
    assert_eq!(
        env.scan_keys("request-logs", "request_id")
            .await
            .unwrap()
            .len(),
        5
    );

    let mut reasons = Vec::new();
    for _ in 0..10 {
        let out = env
            .sqs
            .receive_message()
            .queue_url(&dlq)
            .max_number_of_messages(10)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in out.messages() {
            let attrs = m.message_attributes().expect("attributes");
            let attr = |n: &str| attrs[n].string_value().unwrap_or_default().to_string();
            assert!(!attr("sluice_source_message_id").is_empty());
            assert_eq!(attr("sluice_receive_count"), "1");
            assert!(!attr("sluice_error").is_empty());
            reasons.push((
                attr("sluice_reason"),
                m.body().unwrap_or_default().to_string(),
            ));
        }
        if reasons.len() == 3 {
            break;
        }
    }
    reasons.sort();
    assert_eq!(
        reasons.iter().map(|(r, _)| r.as_str()).collect::<Vec<_>>(),
        ["not_json", "schema", "schema"]
    );
    assert!(
        reasons.iter().any(|(_, b)| b == "not json"),
        "the body is kept as sent"
    );
}

sluice_testkit::backend_tests!(poison_goes_to_the_dead_letter_queue_with_its_reason {
    sim_poison_goes_to_the_dead_letter_queue_with_its_reason: Sim,
    ministack_poison_goes_to_the_dead_letter_queue_with_its_reason: MiniStack,
});

/// Chaos: a DynamoDB fault storm (500s, throttles, connection resets, latency spikes), then a
/// full outage. Nothing is lost, and during the outage sluice does not hammer the table: the
/// breaker and the backoff keep the request rate bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_fault_storms_lose_nothing_and_an_outage_is_not_hammered() {
    use sluice_sim::{Faults, Latency};
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let sim = env.sim.as_ref().unwrap();
    let url = env.create_queue("logs", 60).await.unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    let bodies: Vec<String> = (0..600)
        .map(|m| {
            (0..5)
                .map(|j| log(&format!("storm-{m}-{j}"), m))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();
    let storm = Faults {
        error_500_rate: 0.15,
        throttle_rate: 0.15,
        reset_rate: 0.05,
        op_latency: [(
            "BatchWriteItem".to_string(),
            Latency {
                fixed_ms: 0,
                jitter_ms: 300,
            },
        )]
        .into(),
        only_ops: Some(vec!["BatchWriteItem".into()]),
        ..Faults::default()
    };
    sim.set_faults(storm).unwrap();

    let mut s = settings(&url, "request-logs");
    s.sqs.nack_backoff_base = Duration::from_millis(500);
    s.sqs.nack_backoff_max = Duration::from_secs(2);
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));

    // Let the storm rage while a third of the backlog is written, then cut the table off.
    let started = Instant::now();
    while env
        .scan_keys("request-logs", "request_id")
        .await
        .unwrap()
        .len()
        < 1000
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.set_faults(Faults {
        error_500_rate: 1.0,
        only_ops: Some(vec!["BatchWriteItem".into()]),
        ..Faults::default()
    })
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // in-flight retries run out, the breaker opens
    let before = sim
        .requests_report()
        .get("BatchWriteItem")
        .copied()
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let during = sim
        .requests_report()
        .get("BatchWriteItem")
        .copied()
        .unwrap_or(0)
        - before;
    // Batches already in flight retry until their messages' deadline: at most 8 calls at once
    // (dynamodb.max_concurrent_requests), each waiting at least half of retry_max_delay (2 s)
    // between attempts: 8 × 8 s / 1 s = 64, plus a probe round per breaker cooldown. Nothing new
    // is received while the breaker is open. A hot loop against an instant 500 would make
    // thousands of calls in 8 s.
    assert!(
        during <= 80,
        "{during} BatchWriteItem calls in 8 s of outage"
    );

    sim.set_faults(Faults::default()).unwrap();
    while stats.acked.load(Ordering::Relaxed) < 600 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_queue_empty(&url, Duration::from_secs(60))
        .await
        .unwrap();
    stop.cancel();
    run.await.unwrap();
    let keys = env.scan_keys("request-logs", "request_id").await.unwrap();
    assert_eq!(
        keys.len(),
        3000,
        "every log of the storm written exactly once per key"
    );
}

/// A FIFO queue end to end through the SDK: MessageGroupId reaches the engine, every group is
/// written, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_a_fifo_queue_drains_every_group() {
    use aws_sdk_sqs::types::QueueAttributeName;
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = sluice_sqs::admin::create_queue(
        &env.sqs,
        "logs.fifo",
        &[
            (QueueAttributeName::FifoQueue, "true".into()),
            (QueueAttributeName::ContentBasedDeduplication, "true".into()),
            (QueueAttributeName::VisibilityTimeout, "30".into()),
        ],
    )
    .await
    .unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    for i in 0..20 {
        for g in 0..10 {
            env.sqs
                .send_message()
                .queue_url(&url)
                .message_body(log(&format!("f{g}-{i}"), i))
                .message_group_id(format!("g{g}"))
                .send()
                .await
                .unwrap();
        }
    }
    let pipeline = Pipeline::build(
        &settings(&url, "request-logs"),
        &env.sqs_config().await,
        &env.dynamodb_config().await,
    )
    .await
    .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.acked.load(Ordering::Relaxed) < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.wait_queue_empty(&url, Duration::from_secs(30))
        .await
        .unwrap();
    stop.cancel();
    run.await.unwrap();
    assert_eq!(
        env.scan_keys("request-logs", "request_id")
            .await
            .unwrap()
            .len(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_poison_near_the_dead_letter_queues_size_limit_fits_or_goes_to_the_redrive_policy() {
    use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
    // The DLQ takes 2 KiB. A 1,900-byte poison message fits only with its error text cut: it
    // lands there with its reason. A 2,040-byte one cannot fit even with the reason: it is left to
    // the source queue's redrive policy (nacked as poison), not nacked as a failed dead-letter
    // forever. Both keep the producer's own attribute.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    let dlq = sluice_sqs::admin::create_queue(
        &env.sqs,
        "small-dlq",
        &[(QueueAttributeName::MaximumMessageSize, "2048".to_string())],
    )
    .await
    .unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    let producer_attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value("t-1")
        .build()
        .unwrap();
    for (name, len) in [("fits", 1900), ("too-big", 2040)] {
        env.sqs
            .send_message()
            .queue_url(&url)
            .message_body(format!("{name} {}", "x".repeat(len - name.len() - 1)))
            .message_attributes("trace", producer_attr.clone())
            .send()
            .await
            .unwrap();
    }
    let mut s = settings(&url, "request-logs");
    s.sqs.dead_letter_queue_url = Some(dlq.parse().unwrap());
    s.sqs.poison_nack_delay = Duration::from_secs(60);
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.dead_lettered.load(Ordering::Relaxed) + stats.nacked.load(Ordering::Relaxed) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let summary = run.await.unwrap();
    assert_eq!(
        (summary.dead_lettered, summary.nacked),
        (1, 1),
        "{summary:?}"
    );
    let out = env
        .sqs
        .receive_message()
        .queue_url(&dlq)
        .message_attribute_names("All")
        .send()
        .await
        .unwrap();
    let m = &out.messages()[0];
    assert!(m.body().unwrap().starts_with("fits "));
    let a = m.message_attributes().unwrap();
    assert_eq!(a["sluice_reason"].string_value(), Some("not_json"));
    assert_eq!(a["trace"].string_value(), Some("t-1"));
    // The other waits in the source queue for its redrive policy, invisible for the poison
    // delay, received once.
    assert_eq!(env.queue_counts(&url).await.unwrap(), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_rides_out_a_transient_dynamodb_outage_and_fails_fast_on_a_missing_table() {
    // A 30-second blip of 503s from DynamoDB used to stop every instance of a systemd fleet for
    // good: the start-up DescribeTable failed at once, and five quick failures exhaust the
    // unit's restart limit. Now a transient error is retried for dynamodb.startup_retry_for; a
    // permanent one (a missing table) still fails at once.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let sim = env.sim.as_ref().unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    env.create_table("blip", "request_id").await.unwrap();
    let outage = sluice_sim::Faults {
        error_503_rate: 1.0,
        only_ops: Some(vec!["DescribeTable".into()]),
        ..Default::default()
    };
    sim.set_faults(outage.clone()).unwrap();
    let s = settings(&url, "blip");
    let (sqs, ddb) = (env.sqs_config().await, env.dynamodb_config().await);
    let started = Instant::now();
    let (built, ()) = tokio::join!(Pipeline::build(&s, &sqs, &ddb), async {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        sim.set_faults(Default::default()).unwrap();
    });
    assert!(built.is_ok(), "{:?}", built.err());
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "the outage lasted 2.5 s"
    );

    // With no retries allowed, the same outage fails the start.
    sim.set_faults(outage).unwrap();
    let mut s0 = settings(&url, "blip");
    s0.dynamodb.startup_retry_for = Duration::ZERO;
    let err = Pipeline::build(&s0, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .err()
        .expect("refused");
    assert!(format!("{err:#}").contains("503"), "{err:#}");
    sim.set_faults(Default::default()).unwrap();

    // A missing table is permanent: refused at once, with the table named.
    let started = Instant::now();
    let err = Pipeline::build(
        &settings(&url, "no-such-table"),
        &env.sqs_config().await,
        &env.dynamodb_config().await,
    )
    .await
    .err()
    .expect("refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a permanent error waited {:?}",
        started.elapsed()
    );
    assert!(format!("{err:#}").contains("no-such-table"), "{err:#}");
}
