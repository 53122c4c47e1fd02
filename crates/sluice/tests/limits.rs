//! Every limit DynamoDB enforces, paced: a global secondary index tighter than its table, and a
//! fleet sharing one Redis bucket with writes larger than the bucket's burst. sluice-sim meters
//! the table and each index with their own capacity and one second of burst credit (DynamoDB
//! keeps 300), so any overshoot shows up as a throttle instead of being absorbed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sluice::config::Settings;
use sluice::pipeline::Pipeline;
use sluice_producer::sqs::SqsTransport;
use sluice_testkit::{Sluice, SluiceCommand, TestEnv, start_redis};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

async fn strict_sim() -> TestEnv {
    TestEnv::start_sim(sluice_sim::SimConfig {
        tables: sluice_sim::TableSettings {
            burst_seconds: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A table keyed by request_id at `table_wcu`, with a GSI `by_user` (user_id, ALL) at `gsi_wcu`.
async fn create_table_with_gsi(env: &TestEnv, name: &str, table_wcu: i64, gsi_wcu: Option<i64>) {
    use sluice_dynamodb::admin::{IndexSpec, TableSpec, create_table_from};
    let indexes = gsi_wcu
        .map(|w| IndexSpec {
            name: "by_user".into(),
            key: "user_id".into(),
            wcu: Some(w),
        })
        .into_iter()
        .collect();
    create_table_from(
        &env.dynamodb,
        &TableSpec {
            name: name.into(),
            key: "request_id".into(),
            wcu: Some(table_wcu),
            max_on_demand_wcu: None,
            indexes,
        },
    )
    .await
    .unwrap();
}

/// `n` logs of about `bytes` bytes, each with a user_id, ten per message.
fn bodies(prefix: &str, n: usize, bytes: usize) -> Vec<String> {
    let logs: Vec<String> = (0..n)
        .map(|i| {
            let bare = format!(
                r#"{{"request_id":"{prefix}-{i}","ts":1795341600000,"method":"GET","path":"/","status":200,"latency_ms":1,"user_id":"u{}","pad":""}}"#,
                i % 50
            );
            let pad = "x".repeat(bytes.saturating_sub(bare.len()));
            bare.replace(r#""pad":"""#, &format!(r#""pad":"{pad}""#))
        })
        .collect();
    logs.chunks(10).map(|c| c.join("\n")).collect()
}

/// Consumption per second of a meter's report, from its first written second to its last:
/// (average over that span, highest 10-second average, seconds). Writes land in batches (72 WCU
/// of 3 KB logs), so one-second bins swing by a batch either way; the table's own bucket (one
/// second of burst credit) is the strict judge, through its throttle count.
fn utilization(report: &serde_json::Value) -> (f64, f64, usize) {
    let per: BTreeMap<u64, f64> = report["per_second"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?)))
        .collect();
    let (Some(&first), Some(&last)) = (per.keys().next(), per.keys().last()) else {
        return (0.0, 0.0, 0);
    };
    let series: Vec<f64> = (first..=last)
        .map(|s| per.get(&s).copied().unwrap_or(0.0))
        .collect();
    // The first and last seconds are partial: leave them out of the average.
    let inner = &series[1.min(series.len())..series.len().saturating_sub(1).max(1)];
    let avg = inner.iter().sum::<f64>() / inner.len().max(1) as f64;
    let max10 = series
        .windows(10.min(series.len()).max(1))
        .map(|w| w.iter().sum::<f64>() / w.len() as f64)
        .fold(0.0, f64::max);
    (avg, max10, series.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gsi_tighter_than_its_table_is_paced_to_and_never_throttled() {
    // The issue's case: table 300 WCU, a GSI on user_id (ALL) with 60 WCU, 1,500 one-WCU logs
    // that all carry user_id. Before: paced to the table, 145 throttled requests and 1,042
    // throttled items. Now the index is a budget of its own and binds.
    let env = strict_sim().await;
    let url = env.create_queue("logs", 60).await.unwrap();
    create_table_with_gsi(&env, "indexed", 300, Some(60)).await;
    let bodies = bodies("g", 1500, 400);
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();
    let mut s = Settings::default();
    s.sqs.queue_url = Some(url.parse().unwrap());
    s.sqs.wait_time_seconds = 1;
    s.dynamodb.table = "indexed".into();
    s.validate().unwrap();
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.acked.load(std::sync::atomic::Ordering::Relaxed) < bodies.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    run.await.unwrap();
    let report = env
        .sim
        .as_ref()
        .unwrap()
        .capacity_report("indexed")
        .unwrap();
    let index = &report["indexes"]["by_user"];
    let (avg, max5, secs) = utilization(index);
    eprintln!(
        "GSI case: {secs} s, index {avg:.1} WCU/s on average (60 provisioned), highest 10 s {max5:.1}; throttled requests {}, unprocessed items {}",
        report["throttled_requests"], report["unprocessed_items"]
    );
    assert_eq!(report["throttled_requests"], 0, "{report}");
    assert_eq!(report["unprocessed_items"], 0, "{report}");
    assert!(
        avg >= 0.95 * 60.0,
        "the index's capacity was under-used: {avg:.1} WCU/s"
    );
    assert_eq!(
        env.scan_keys("indexed", "request_id").await.unwrap().len(),
        1500
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_one_redis_bucket_with_writes_above_its_burst_is_never_throttled() {
    // The issue's case: two instances sharing one Redis bucket (rate.mode = "redis") write 3-WCU
    // logs to a 150 WCU table. Batches of such logs cost more than the bucket's burst (0.2 s of
    // budget): before, the local side credited what it asked for, and the table saw 61 throttled
    // requests and a 5-second average of 165 WCU/s.
    let env = strict_sim().await;
    let redis = start_redis().await.unwrap();
    let url = env.create_queue("logs", 60).await.unwrap();
    create_table_with_gsi(&env, "fleet", 150, None).await;
    let bodies = bodies("f", 1200, 2900);
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();
    let mut children = Vec::new();
    for _ in 0..2 {
        children.push(fleet_run(
            &env,
            &url,
            &[
                ("SLUICE__RATE__MODE", "redis"),
                ("SLUICE__RATE__REDIS__URL", &redis.endpoint),
                ("SLUICE__RATE__EXPECTED_REPLICAS", "2"),
            ],
        ));
    }
    let report = drained(&env, "fleet", 1200, Duration::from_secs(120)).await;
    for c in &mut children {
        c.kill_9().await;
    }
    fleet_paced_to_150_wcu("fleet case", &report);
}

/// Waits until table `name` holds `items` items and returns its capacity report.
async fn drained(env: &TestEnv, name: &str, items: u64, within: Duration) -> serde_json::Value {
    let started = Instant::now();
    loop {
        let r = env.sim.as_ref().unwrap().capacity_report(name).unwrap();
        if r["items"].as_u64().unwrap_or(0) >= items {
            return r;
        }
        assert!(started.elapsed() < within, "not drained: {}", r["items"]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fleet on a 150 WCU table (budget 0.98 × 150): never throttled, never above the capacity
/// over 10 s, and at least 95% of the budget used on average.
fn fleet_paced_to_150_wcu(case: &str, report: &serde_json::Value) {
    let (avg, max10, secs) = utilization(report);
    eprintln!(
        "{case}: {secs} s, {avg:.1} WCU/s on average (150 provisioned, budget 147), highest 10 s {max10:.1}; throttled requests {}, unprocessed items {}",
        report["throttled_requests"], report["unprocessed_items"]
    );
    assert_eq!(report["throttled_requests"], 0, "{report}");
    assert_eq!(report["unprocessed_items"], 0, "{report}");
    assert!(
        max10 <= 150.0 * 1.05,
        "over capacity: {max10:.1} WCU/s over 10 s"
    );
    assert!(avg >= 0.95 * 147.0, "under-used: {avg:.1} WCU/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_index_key_is_paced_on_its_own_instead_of_slowing_the_table() {
    // Every log carries the same user_id: the index's partition for it takes 1,000 WCU a second
    // (DynamoDB's partition limit), far below the table's and the index's own 3,000. The first
    // throttle names IndexWriteKeyRangeThroughputExceeded; sluice then paces that key on its own
    // (900 WCU/s) instead of cutting the budgets, so the throttles stop and the table's budget
    // stays whole.
    let env = strict_sim().await;
    let url = env.create_queue("logs", 60).await.unwrap();
    create_table_with_gsi(&env, "hot", 3000, Some(3000)).await;
    let logs: Vec<String> = (0..4000)
        .map(|i| {
            format!(
                r#"{{"request_id":"h-{i}","ts":1795341600000,"method":"GET","path":"/","status":200,"latency_ms":1,"user_id":"everyone"}}"#
            )
        })
        .collect();
    let bodies: Vec<String> = logs.chunks(25).map(|c| c.join("\n")).collect();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();
    let mut s = Settings::default();
    s.sqs.queue_url = Some(url.parse().unwrap());
    s.sqs.wait_time_seconds = 1;
    s.dynamodb.table = "hot".into();
    s.validate().unwrap();
    let pipeline = Pipeline::build(&s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let stats = pipeline.stats();
    let limiter = pipeline.limiter();
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let started = Instant::now();
    while stats.acked.load(std::sync::atomic::Ordering::Relaxed) < bodies.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let table_rate = limiter.rate();
    stop.cancel();
    run.await.unwrap();
    let report = env.sim.as_ref().unwrap().capacity_report("hot").unwrap();
    let throttles = report["throttled_requests"].as_u64().unwrap()
        + report["unprocessed_items"].as_u64().unwrap();
    let (avg, _, secs) = utilization(&report["indexes"]["by_user"]);
    eprintln!(
        "hot key: {secs} s, index {avg:.0} WCU/s on the one key, {} throttled requests, {} unprocessed items, table rate after {table_rate:?}",
        report["throttled_requests"], report["unprocessed_items"]
    );
    // Before the first throttle names the key, the batches already in flight meet the limit
    // (their items come back unprocessed and are retried); after it, the key goes at its own
    // pace and the table's budget is not cut for it.
    assert!(
        throttles <= 1500,
        "the hot key kept being throttled: {report}"
    );
    assert!(
        avg >= 850.0,
        "the key was slowed more than its partition needs: {avg:.0}"
    );
    let budget = 0.98 * 3000.0;
    assert!(
        table_rate.is_some_and(|r| r >= 0.85 * budget),
        "the table's budget was cut for a hot key: {table_rate:?}"
    );
    assert_eq!(
        env.scan_keys("hot", "request_id").await.unwrap().len(),
        4000
    );
}

/// One `sluice run` of a fleet writing table `fleet` from `url`, with how it shares the budget.
fn fleet_run(env: &TestEnv, url: &str, sharing: &[(&str, &str)]) -> Sluice {
    SluiceCommand::new(BIN, "run")
        .test_env(env)
        .env("SLUICE__SQS__QUEUE_URL", url)
        .env("SLUICE__SQS__WAIT_TIME_SECONDS", "1")
        .env("SLUICE__DYNAMODB__TABLE", "fleet")
        .envs(sharing.iter().copied())
        .spawn()
}

/// One `sluice run` of a membership fleet writing table `fleet`.
fn fleet_member(env: &TestEnv, url: &str) -> Sluice {
    fleet_run(
        env,
        url,
        &[
            ("SLUICE__RATE__MODE", "membership"),
            ("SLUICE__RATE__MEMBERSHIP__TABLE", "sluice-members"),
            ("SLUICE__RATE__MEMBERSHIP__HEARTBEAT_INTERVAL", "1s"),
            ("SLUICE__RATE__MEMBERSHIP__LEASE_DURATION", "3s"),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_membership_fleet_resplits_the_budget_as_instances_join_and_leave_mid_drain() {
    // rate.mode = "membership", no share configured anywhere: one instance starts alone on a
    // 150 WCU table (logs of about 900 B, one WCU each), a second and a third join mid-drain, one is killed with SIGKILL (its
    // lease lapses) and one leaves with SIGTERM (it deletes its lease), and the first drains
    // the rest. Each paces to budget ÷ live members throughout: the table is never throttled
    // and stays busy.
    let env = strict_sim().await;
    let url = env.create_queue("logs", 5).await.unwrap();
    create_table_with_gsi(&env, "fleet", 150, None).await;
    let bodies = bodies("m", 9000, 900);
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();
    let sim = env.sim.as_ref().unwrap();
    let items = || {
        sim.capacity_report("fleet").unwrap()["items"]
            .as_u64()
            .unwrap_or(0)
    };
    let started = Instant::now();
    let mut first = fleet_member(&env, &url);
    let mut fleet = Vec::new();
    for step in 0..4 {
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            items() < 9000,
            "drained before step {step}: make the load larger"
        );
        match step {
            0 | 1 => fleet.push(fleet_member(&env, &url)),
            2 => {
                let mut crashed = fleet.remove(0);
                crashed.kill_9().await;
            }
            _ => {
                let leaving = fleet.remove(0);
                // Exits after SIGTERM.
                let status = leaving.stop().await.status;
                assert!(status.success(), "{status}");
            }
        }
    }
    let report = drained(
        &env,
        "fleet",
        9000,
        Duration::from_secs(150) - started.elapsed(),
    )
    .await;
    first.kill_9().await;
    fleet_paced_to_150_wcu("membership fleet", &report);
    assert_eq!(
        env.scan_keys("fleet", "request_id").await.unwrap().len(),
        9000
    );
}
