//! Compressed items end to end, on sluice-sim and on DynamoDB Local (AWS's engine): plain items,
//! then items compressed with one dictionary, then with another, in one table with a GSI; every
//! log reads back (`sluice get`, `sluice export`) as the value it was sent as, the index still
//! finds them, the write cache skips a redelivery, and a missing dictionary stops start-up.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use rand::SeedableRng;
use serde_json::Value;
use sluice::config::{CompressionKind, Settings};
use sluice::pipeline::Pipeline;
use sluice_dynamodb::admin::{IndexSpec, TableSpec, create_table_from};
use sluice_producer::sqs::SqsTransport;
use sluice_testkit::process::{SluiceCommand, temp_file};
use sluice_testkit::{Backend, TestEnv};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// `n` realistic request logs with ids `prefix-0…`, from `seed`.
fn logs(seed: u64, n: usize, prefix: &str) -> Vec<Value> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            sluice::tools::shape::realistic_log(
                &mut rng,
                &format!("{prefix}-{i}"),
                1_764_900_000_000 + i as u64,
            )
        })
        .collect()
}

fn ndjson(logs: &[Value]) -> String {
    logs.iter().map(|l| l.to_string() + "\n").collect()
}

/// DynamoDB keeps a number's value, not its text (`0.10` reads back `0.1`): plain attributes are
/// compared by value.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Number(n) => {
            let text = n.to_string();
            match sluice_core::number::Number::parse(&text) {
                Ok(n) => Value::String(format!("number:{}", n.canonical())),
                Err(_) => Value::String(text),
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(normalized).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (k.clone(), normalized(v))).collect())
        }
        other => other.clone(),
    }
}

fn settings(url: &str, compression: Option<u32>, cache: bool) -> Settings {
    let mut s = Settings::default();
    s.sqs.queue_url = Some(url.parse().unwrap());
    s.sqs.wait_time_seconds = 1;
    s.sqs.visibility_timeout = Some(Duration::from_secs(30));
    s.dynamodb.table = "logs".into();
    s.schema.plain_fields = vec!["status".into()];
    if let Some(id) = compression {
        s.schema.compression = CompressionKind::Zstd;
        s.schema.dictionary_id = Some(id);
    }
    s.cache.enabled = cache;
    s.validate().expect("valid test settings");
    s
}

/// Runs one pipeline over `rounds` of logs, each sent once the one before is acked. Returns how
/// many logs the write cache answered.
async fn drain(env: &TestEnv, url: &str, s: &Settings, rounds: &[&[Value]]) -> u64 {
    let pipeline = Pipeline::build(s, &env.sqs_config().await, &env.dynamodb_config().await)
        .await
        .unwrap();
    let (stats, writer) = (pipeline.stats(), pipeline.writer_stats());
    let stop = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(stop.clone()));
    let mut expected = 0;
    for round in rounds {
        let bodies: Vec<String> = round.iter().map(Value::to_string).collect();
        SqsTransport::new(env.sqs.clone(), url)
            .send_bodies(&bodies)
            .await
            .unwrap();
        expected += bodies.len() as u64;
        let started = Instant::now();
        while stats.acked.load(Ordering::Relaxed) < expected {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "not drained: {:?}",
                stats.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.cancel();
    let summary = run.await.unwrap();
    assert_eq!(summary.nacked, 0, "{summary:?}");
    writer.cache_skipped_logs.load(Ordering::Relaxed)
}

fn config_file(url: &str) -> tempfile::TempPath {
    temp_file(
        &format!(
            "[sqs]\nqueue_url = \"{url}\"\n[dynamodb]\ntable = \"logs\"\n[schema]\nplain_fields = [\"status\"]\n"
        ),
        ".toml",
    )
}

/// `sluice SUBCOMMAND --config CONFIG ARGS...` against the test's servers, run to its end.
async fn sluice(
    env: &TestEnv,
    subcommand: &[&str],
    config: &std::path::Path,
    args: &[&std::ffi::OsStr],
) -> sluice_testkit::process::Stopped {
    let (name, rest) = subcommand.split_first().expect("a subcommand");
    SluiceCommand::new(BIN, name)
        .args(rest)
        .arg("--config")
        .arg(config)
        .args(args)
        .test_env(env)
        .spawn()
        .exited_within(Duration::from_secs(90))
        .await
}

async fn train(env: &TestEnv, config: &std::path::Path, seed: u64) -> Value {
    let samples = temp_file(&ndjson(&logs(seed, 400, "sample")), ".ndjson");
    let out = sluice(
        env,
        &["dict", "train"],
        config,
        &["--from".as_ref(), samples.as_os_str(), "--json".as_ref()],
    )
    .await;
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim()).expect("one JSON object")
}

async fn compressed_items_read_back_stay_indexed_and_survive_rotation(backend: Backend) {
    let env = TestEnv::start(backend).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    let ddb = aws_sdk_dynamodb::Client::new(&env.dynamodb_config().await);
    let table = TableSpec {
        name: "logs".into(),
        key: "request_id".into(),
        wcu: Some(1000),
        max_on_demand_wcu: None,
        indexes: vec![IndexSpec {
            name: "by-route".into(),
            key: "route".into(),
            wcu: Some(1000),
        }],
    };
    create_table_from(&ddb, &table).await.unwrap();
    let config = config_file(&url);

    // Plain items first, as a table had before compression was turned on.
    let plain = logs(1, 30, "plain");
    drain(&env, &url, &settings(&url, None, false), &[&plain]).await;

    // Dictionary 1: trained from a file, stored in the table; what it saves on its samples.
    let first = train(&env, &config, 100).await;
    let id1 = first["dictionary_id"].as_u64().unwrap() as u32;
    assert!(
        first["logs_per_wcu"].as_f64().unwrap()
            > 1.5 * first["plain_logs_per_wcu"].as_f64().unwrap(),
        "{first}"
    );
    // Compressed with it, with the cache on: the same logs sent again are acked without a write.
    let zstd1 = logs(2, 30, "zstd1");
    let skipped = drain(
        &env,
        &url,
        &settings(&url, Some(id1), true),
        &[&zstd1, &zstd1],
    )
    .await;
    assert_eq!(
        skipped, 30,
        "the redelivered round is answered from the cache"
    );

    // Rotation: dictionary 2, and later items made with it.
    let second = train(&env, &config, 200).await;
    let id2 = second["dictionary_id"].as_u64().unwrap() as u32;
    assert_ne!(id1, id2);
    let zstd2 = logs(3, 30, "zstd2");
    drain(&env, &url, &settings(&url, Some(id2), false), &[&zstd2]).await;

    // The stored item: key, index key, plain_fields and the binary log; nothing else.
    let item = ddb
        .get_item()
        .table_name("logs")
        .key("request_id", AttributeValue::S("zstd1-0".into()))
        .send()
        .await
        .unwrap();
    let item = item.item().expect("the row exists");
    let mut names: Vec<&str> = item.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["_log", "request_id", "route", "status"]);
    assert!(matches!(item["_log"], AttributeValue::B(_)));

    // The index on a plain attribute still finds compressed and plain items alike.
    let route = zstd2[0]["route"].as_str().unwrap();
    let found = ddb
        .query()
        .table_name("logs")
        .index_name("by-route")
        .key_condition_expression("#r = :r")
        .expression_attribute_names("#r", "route")
        .expression_attribute_values(":r", AttributeValue::S(route.into()))
        .send()
        .await
        .unwrap();
    let found: Vec<String> = found
        .items()
        .iter()
        .filter_map(|i| i.get("request_id")?.as_s().ok().cloned())
        .collect();
    let all: Vec<&Value> = plain.iter().chain(&zstd1).chain(&zstd2).collect();
    let expected: Vec<&str> = all
        .iter()
        .filter(|l| l["route"] == route)
        .map(|l| l["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(found.len(), expected.len(), "{found:?} {expected:?}");
    assert!(expected.iter().all(|k| found.iter().any(|f| f == k)));

    // `sluice get`: a log of each kind comes back as sent.
    let keys = ["plain-0", "zstd1-0", "zstd2-0"].map(std::ffi::OsStr::new);
    let out = sluice(&env, &["get"], &config, &keys).await;
    assert!(out.status.success(), "{}", out.stderr);
    let got: Vec<Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), 3);
    assert_eq!(normalized(&got[0]), normalized(&plain[0]));
    assert_eq!(got[1], zstd1[0], "a compressed log comes back exactly");
    assert_eq!(got[2], zstd2[0]);

    // `sluice export`: every log, none twice, the dictionaries left out.
    let page = ["--page", "7"].map(std::ffi::OsStr::new);
    let out = sluice(&env, &["export"], &config, &page).await;
    assert!(out.status.success(), "{}", out.stderr);
    assert!(out.stderr.contains("exported 90 logs"), "{}", out.stderr);
    let exported: BTreeMap<String, Value> = out
        .stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["request_id"].as_str().unwrap().to_string(),
                normalized(&v),
            )
        })
        .collect();
    let sent: BTreeMap<String, Value> = all
        .iter()
        .map(|l| (l["request_id"].as_str().unwrap().to_string(), normalized(l)))
        .collect();
    assert_eq!(exported, sent);

    // A key that is not there: exit 1, said on stderr.
    let out = sluice(&env, &["get"], &config, &["no-such-log".as_ref()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stderr.contains("not found: `no-such-log`"),
        "{}",
        out.stderr
    );

    // Training from the queue samples messages without consuming them: all still there after.
    // On sluice-sim only: MiniStack keeps serving long polls whose clients have gone, and lets
    // them take freshly sent messages for their visibility timeout, so what a sample finds there
    // is a matter of chance (2 to 12 of the 12 messages, in five runs).
    if backend == Backend::Sim {
        let queued = logs(4, 120, "queued");
        let bodies: Vec<String> = queued.chunks(10).map(ndjson).collect();
        SqsTransport::new(env.sqs.clone(), &url)
            .send_bodies(&bodies)
            .await
            .unwrap();
        let sample = ["--sample", "12", "--json"].map(std::ffi::OsStr::new);
        let out = sluice(&env, &["dict", "train"], &config, &sample).await;
        assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
        let sampled: Value = serde_json::from_str(out.stdout.trim()).unwrap();
        assert_eq!(sampled["samples"], 120, "{sampled}");
        let (visible, in_flight) = env.queue_counts(&url).await.unwrap();
        assert_eq!(visible + in_flight, 12, "sampling consumed nothing");
        assert_eq!((visible, in_flight), (12, 0), "made visible again at once");
    }

    // A dictionary the table does not hold stops start-up, saying how to make one.
    let err = Pipeline::build(
        &settings(&url, Some(12_345), false),
        &env.sqs_config().await,
        &env.dynamodb_config().await,
    )
    .await
    .err()
    .expect("a missing dictionary is refused");
    let err = format!("{err:#}");
    assert!(
        err.contains("dictionary 12345") && err.contains("sluice dict train"),
        "{err}"
    );
}

sluice_testkit::backend_tests!(
    compressed_items_read_back_stay_indexed_and_survive_rotation {
        sim_compressed_items_read_back_stay_indexed_and_survive_rotation: Sim,
        dynamodb_local_compressed_items_read_back_stay_indexed_and_survive_rotation: DynamoDbLocal,
    }
);
