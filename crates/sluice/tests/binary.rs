//! The real `sluice` binary: `validate` on good and bad configs, and `run` against MiniStack —
//! drains a queue, serves /metrics, /healthz and /readyz, and exits 0 on SIGTERM.

use sluice_core::testing::log_line;
use sluice_testkit::metric;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sluice_producer::sqs::SqsTransport;
use sluice_testkit::{
    Backend, FakeImds, IMDS_INSTANCE_ID, LifecycleAction, Sluice, SluiceCommand, TestEnv,
    free_port, http_get, temp_file, try_http_get,
};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn validate(config: &str, env: &[(&str, &str)]) -> (i32, String) {
    let file = temp_file(config, ".toml");
    let out = Command::new(BIN)
        .arg("validate")
        .arg("--config")
        .arg(&file)
        .envs(env.iter().copied())
        .output()
        .expect("run sluice validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

const GOOD: &str = "[sqs]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/logs\"\n[dynamodb]\ntable = \"request-logs\"\n";

#[test]
fn validate_accepts_the_documented_example_and_a_minimal_config() {
    let example = include_str!("../../../config/sluice.example.toml");
    let (code, out) = validate(example, &[]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = validate(GOOD, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("config ok"), "{out}");
}

/// `sluice validate --for ingest` on `config`: (exit code, stdout and stderr).
fn validate_ingest(config: &str) -> (i32, String) {
    let file = temp_file(config, ".toml");
    let out = Command::new(BIN)
        .args(["validate", "--for", "ingest", "--config"])
        .arg(&file)
        .output()
        .expect("run sluice validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// The chart's ingest init container runs `sluice validate --for ingest`: a Secret mounted at
/// the wrong path, or holding the wrong thing, must fail there (exit 2, the key named), not when
/// the server starts.
#[test]
fn validate_for_ingest_reads_the_key_file_and_the_tls_pair_as_ingest_would() {
    let dir = sluice_testkit::temp_dir("validate-ingest");
    let at = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };
    let id = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let cert = at("tls.crt", &id.cert.pem());
    let key = at("tls.key", &id.signing_key.serialize_pem());
    let keys = at(
        "keys",
        &format!("a {}\nb {}\n", "ab".repeat(32), "cd".repeat(32)),
    );
    let queue = "[sqs]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/logs\"\n";
    let config = |keys: &str, cert: &str, key: &str| {
        format!(
            "{queue}[ingest]\napi_keys_file = \"{keys}\"\ntls_cert = \"{cert}\"\ntls_key = \"{key}\"\n"
        )
    };

    let (code, out) = validate_ingest(&config(&keys, &cert, &key));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("(HTTPS, 2 API keys)"), "{out}");

    let missing = dir
        .path()
        .join("nothing-here")
        .to_str()
        .unwrap()
        .to_string();
    for (what, config, needle) in [
        (
            "no key file",
            config(&missing, &cert, &key),
            "ingest.api_keys_file",
        ),
        (
            "a bad key file",
            config(&at("bad", "a not-hex\n"), &cert, &key),
            "ingest.api_keys_file",
        ),
        (
            "no certificate",
            config(&keys, &missing, &key),
            "ingest.tls_cert",
        ),
        (
            "a key for a certificate",
            config(&keys, &key, &key),
            "ingest.tls_cert",
        ),
        (
            "no private key",
            config(&keys, &cert, &missing),
            "ingest.tls_key",
        ),
        (
            "another certificate's key",
            {
                let other = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
                config(
                    &keys,
                    &cert,
                    &at("other.key", &other.signing_key.serialize_pem()),
                )
            },
            "do not make a TLS identity",
        ),
    ] {
        let (code, out) = validate_ingest(&config);
        assert_eq!(code, 2, "{what}: {out}");
        assert!(out.contains(needle), "{what}: {needle} missing in: {out}");
        assert!(!out.contains("panicked"), "{what}: {out}");
    }
    // Both wrong: both named.
    let (code, out) = validate_ingest(&config(&missing, &missing, &key));
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("ingest.api_keys_file") && out.contains("ingest.tls_cert"),
        "{out}"
    );
}

#[test]
fn validate_for_ingest_needs_a_key_and_no_table_and_names_bad_producer_values() {
    let ingest = "[sqs]\nqueue_url = \"https://sqs.eu-west-1.amazonaws.com/1/logs\"\n";
    let (code, text) = validate_ingest(ingest);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("ingest.api_keys"), "{text}");
    assert!(
        !text.contains("dynamodb.table"),
        "ingest needs no table: {text}"
    );

    let good = format!(
        "{ingest}[ingest]\napi_keys = [{{ name = \"a\", sha256 = \"{}\" }}]\n",
        "ab".repeat(32)
    );
    let (code, text) = validate_ingest(&good);
    assert_eq!(code, 0, "{text}");
    let (code, text) = validate_ingest(&format!("{good}[producer]\nspool_fsync = \"sometimes\"\n"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("producer.spool_fsync"), "{text}");
    let (code, text) = validate_ingest(&format!("{good}[producer]\nmax_message_bytes = 2000000\n"));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("producer.max_message_bytes"), "{text}");
}

#[test]
fn validate_kafka_mode_needs_no_queue_but_brokers_topics_and_a_separate_dlq_topic() {
    let table = "[dynamodb]\ntable = \"request-logs\"\n";
    let good = format!(
        "{table}[kafka]\nenabled = true\nbrokers = \"127.0.0.1:9092\"\ntopics = [\"logs\"]\ndlq_topic = \"logs-dlq\"\n"
    );
    let (code, out) = validate(&good, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(
            "config ok: kafka 127.0.0.1:9092 topics logs group sluice → table request-logs"
        ),
        "{out}"
    );
    // A static member's id from the environment, as a systemd unit sets it.
    let (code, out) = validate(
        &good,
        &[("SLUICE__KAFKA__GROUP_INSTANCE_ID", "ip-10-0-1-23")],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out) = validate(
        &format!(
            "{table}[kafka]\nenabled = true\ntopics = [\"logs\"]\ndlq_topic = \"logs\"\ngroup_instance_id = \" \"\nproperties = {{ \"enable.auto.commit\" = \"true\", \"fetch.min.bytes\" = \"1\", \"group.instance.id\" = \"a\" }}\n"
        ),
        &[],
    );
    assert_eq!(code, 2, "{out}");
    for needle in [
        "kafka.brokers is required",
        "kafka.dlq_topic `logs` is also in kafka.topics",
        "kafka.properties.\"enable.auto.commit\" is set by sluice",
        "kafka.group_instance_id must be 1-249 characters",
        "set kafka.group_instance_id instead",
    ] {
        assert!(out.contains(needle), "{needle} missing in: {out}");
    }
    assert!(
        !out.contains("sqs.queue_url"),
        "Kafka mode needs no queue: {out}"
    );
}

#[test]
fn validate_checks_the_departure_signals() {
    let (code, out) = validate(
        GOOD,
        &[
            ("SLUICE__SPOT__SCALE_IN", "true"),
            ("SLUICE__SPOT__LIFECYCLE_HOOK", " "),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("spot.lifecycle_hook"), "{out}");
    // The rebalance watcher alone must also drain within the spot notice's two minutes.
    let (code, out) = validate(
        GOOD,
        &[
            ("SLUICE__SPOT__REBALANCE", "true"),
            ("SLUICE__WORKER__SHUTDOWN_GRACE", "88s"),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("spot.poll_interval + worker.shutdown_grace"),
        "{out}"
    );
    let (code, out) = validate(
        GOOD,
        &[
            ("SLUICE__SPOT__REBALANCE", "true"),
            ("SLUICE__SPOT__SCALE_IN", "true"),
            ("SLUICE__SPOT__ENABLED", "true"),
        ],
    );
    assert_eq!(code, 0, "{out}");
}

#[test]
fn validate_rejects_an_unknown_key_by_name() {
    let (code, out) = validate(&format!("{GOOD}wait_time_secs = 5\n"), &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dynamodb.wait_time_secs"), "{out}");
    assert!(out.contains("unknown field"), "{out}");
    // The same through the environment layer.
    let (code, out) = validate(GOOD, &[("SLUICE__WORKER__MAX_INFLIGHT", "5")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("worker.max_inflight"), "{out}");
}

#[test]
fn validate_names_bad_values_and_missing_required_keys() {
    let (code, out) = validate(
        "[sqs]\nmax_messages = 20\n",
        &[("SLUICE__RATE__BURST_SECONDS", "3")],
    );
    assert_eq!(code, 2, "{out}");
    for needle in [
        "sqs.queue_url is required",
        "dynamodb.table is required",
        "sqs.max_messages",
        "rate.burst_seconds",
    ] {
        assert!(out.contains(needle), "{needle} missing in: {out}");
    }
    // The environment overrides the file.
    let (code, out) = validate(GOOD, &[("SLUICE__DYNAMODB__TABLE", "x")]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("dynamodb.table `x`"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_drains_the_queue_serves_telemetry_and_exits_zero_on_sigterm() {
    let env = TestEnv::start(Backend::MiniStack).await.unwrap();
    let url = env.create_queue("logs", 60).await.unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&one_log_bodies("bin", 200))
        .await
        .unwrap();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&["not json".to_string()])
        .await
        .unwrap();

    let child = SluiceCommand::new(BIN, "run")
        .test_env(&env)
        .env("SLUICE__SQS__QUEUE_URL", &url)
        .env("SLUICE__DYNAMODB__TABLE", "request-logs")
        .env("SLUICE__RATE__WCU_PER_SECOND", "500")
        .spawn();
    let port = child.telemetry_port();

    let started = Instant::now();
    let scrape = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not drained in time"
        );
        // Not listening yet right after start: keep asking.
        if let Ok((status, body)) = try_http_get(port, "/metrics").await {
            assert_eq!(status, 200);
            if metric(&body, "sluice_messages_acked_total") == Some(200.0)
                && body.contains("sluice_messages_nacked_total{reason=\"poison\"}")
            {
                break body;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(metric(&scrape, "sluice_logs_written_total"), Some(200.0));
    assert_eq!(
        metric(&scrape, "sluice_write_budget_wcu_per_second"),
        Some(500.0)
    );
    for name in [
        "sluice_messages_received_total",
        "sluice_wcu_consumed_total",
        "sluice_message_processing_seconds_bucket",
        "sluice_messages_in_flight",
        "sluice_rate_limiter_wait_seconds_bucket",
    ] {
        assert!(scrape.contains(name), "{name} missing from /metrics");
    }
    assert_eq!(http_get(port, "/healthz").await.0, 200);
    assert_eq!(http_get(port, "/readyz").await.0, 200);
    let rows = env.scan_keys("request-logs", "request_id").await.unwrap();
    assert_eq!(rows.len(), 200);

    // SIGTERM: the parked long poll is cancelled, the process exits 0 promptly.
    let stopped = child.stop_within(Duration::from_secs(15)).await;
    let (status, stdout) = (stopped.status, stopped.stdout);
    assert!(status.success(), "exit status {status:?}\n{stdout}");
    // JSON logs, one object per line, ending with the stop summary.
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["message"], "sluice stopped", "{stdout}");
    assert_eq!(last["acked"], 200);
    assert!(stdout.contains("poison message"), "{stdout}");
}

#[test]
fn run_with_a_missing_table_fails_fast_and_says_which_key() {
    let out = Command::new(BIN)
        .arg("run")
        .env(
            "SLUICE__SQS__QUEUE_URL",
            "http://127.0.0.1:9/000000000000/q",
        )
        .env("SLUICE__DYNAMODB__TABLE", "nope")
        // Nothing listens on port 9: a refused connection is transient, so the start-up check
        // retries it for dynamodb.startup_retry_for (60 s by default); 2 s keeps the test short.
        .env("SLUICE__DYNAMODB__STARTUP_RETRY_FOR", "2s")
        .env(
            "SLUICE__TELEMETRY__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_MAX_ATTEMPTS", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dynamodb.table"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_names_a_missing_queue() {
    let env = TestEnv::start(Backend::MiniStack).await.unwrap();
    let url = env.create_queue("present", 20).await.unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .envs(env.child_env())
        .env("SLUICE__SQS__QUEUE_URL", format!("{url}-missing"))
        .env("SLUICE__DYNAMODB__TABLE", "request-logs")
        .env(
            "SLUICE__TELEMETRY__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sqs.queue_url"), "{stderr}");
}

#[test]
fn demo_drains_a_spike_into_the_embedded_simulator_and_loses_nothing() {
    let out = Command::new(BIN)
        .args(["demo", "--messages", "20000", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run sluice demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["written"], s["unique_keys"], "{s}");
    assert_eq!(s["unexpected_rows"], 0, "{s}");
    assert_eq!(s["drained"], true, "{s}");
    assert_eq!(s["dead_lettered"], s["poison_sent"], "{s}");
    assert_eq!(s["throttled_requests"], 0, "{s}");
    assert!(s["unique_keys"].as_u64().unwrap() > 20_000, "{s}");
    // The default demo: realistic logs, compressed with a dictionary it trained and stored, the
    // write cache on. Each log then costs one WCU (the floor) where plain it costs about two.
    assert_eq!(s["shape"], "realistic", "{s}");
    assert!(s["dictionary_id"].as_u64().is_some(), "{s}");
    assert!(s["logs_per_wcu"].as_f64().unwrap() >= 0.95, "{s}");
    assert!(s["saved_by_compression"].as_f64().unwrap() > 0.3, "{s}");
    assert!(
        s["wcu_per_million_logs"].as_f64().unwrap() < 1_100_000.0,
        "{s}"
    );
    for key in [
        "sent",
        "provisioned_wcu",
        "peak_wcu_per_s",
        "mean_wcu_per_s",
        "duration_s",
    ] {
        assert!(s.get(key).is_some(), "{key} missing: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sim_serves_sdk_clients_and_stops_on_sigterm() {
    let mut child = SluiceCommand::new(BIN, "sim")
        .args(["--listen", "127.0.0.1:0", "--latency", "5ms"])
        .spawn();
    let first = child.wait_stdout_line(Duration::from_secs(20)).await;
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .expect("the endpoint is printed")
        .to_string();
    let sdk = sluice_testkit::sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let url = sluice_sqs::admin::create_queue(&sqs, "q", &[])
        .await
        .unwrap();
    SqsTransport::new(sqs.clone(), &url)
        .send_bodies(&["hello".to_string()])
        .await
        .unwrap();
    assert_eq!(
        sluice_sqs::admin::queue_counts(&sqs, &url).await.unwrap(),
        (1, 0)
    );
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    sluice_dynamodb::admin::create_table(&dynamodb, "tbl", "request_id", Some(5))
        .await
        .unwrap();
    let (status, body) = http_get(
        endpoint.rsplit(':').next().unwrap().parse().unwrap(),
        "/_sim/tables/tbl/capacity",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"provisioned_wcu\":5"), "{body}");
    let status = child.stop_within(Duration::from_secs(10)).await.status;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_stats_peek_and_redrive_find_the_dlq_through_the_redrive_policy() {
    use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let dlq = sluice_sqs::admin::create_queue(&env.sqs, "logs-dlq", &[])
        .await
        .unwrap();
    let arn = sluice_sqs::admin::queue_arn(&env.sqs, &dlq).await.unwrap();
    let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": 3}).to_string();
    let source = sluice_sqs::admin::create_queue(
        &env.sqs,
        "logs",
        &[(QueueAttributeName::RedrivePolicy, policy)],
    )
    .await
    .unwrap();
    for i in 0..5 {
        let reason = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(if i % 2 == 0 { "not_json" } else { "schema" })
            .build()
            .unwrap();
        env.sqs
            .send_message()
            .queue_url(&dlq)
            .message_body(format!("bad body {i}"))
            .message_attributes("sluice_reason", reason)
            .send()
            .await
            .unwrap();
    }
    let dlq_cmd = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("dlq")
            .args(args)
            .envs(env.child_env())
            .env("SLUICE__SQS__QUEUE_URL", &source)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let stats: serde_json::Value =
        serde_json::from_str(dlq_cmd(&["stats", "--json"]).trim()).unwrap();
    assert_eq!(stats["visible"], 5, "{stats}");
    assert_eq!(stats["dlq"], dlq.as_str());

    let peeked = dlq_cmd(&["peek", "--json", "--max", "10"]);
    let reasons: Vec<String> = peeked
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(reasons.len(), 5, "{peeked}");
    assert_eq!(reasons.iter().filter(|r| *r == "not_json").count(), 3);
    assert_eq!(
        env.queue_counts(&dlq).await.unwrap(),
        (5, 0),
        "peek leaves them visible"
    );

    let done = dlq_cmd(&["redrive", "--rate", "100"]);
    assert!(done.contains("5 message(s) moved"), "{done}");
    assert_eq!(env.queue_counts(&dlq).await.unwrap(), (0, 0));
    assert_eq!(env.queue_counts(&source).await.unwrap(), (5, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spot_interruption_notice_drains_and_exits_zero_losing_nothing() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let imds = sluice_testkit::FakeImds::start().await.unwrap();
    let url = env.create_queue("logs", 60).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "request-logs", "request_id", Some(200))
        .await
        .unwrap();
    // 2,000 one-WCU logs against 196 WCU/s: ten seconds of work, so the notice comes mid-drain.
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&one_log_bodies("spot", 2000))
        .await
        .unwrap();
    let child = SluiceCommand::new(BIN, "run")
        .test_env(&env)
        .env("AWS_EC2_METADATA_DISABLED", "false")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint)
        .env("SLUICE__SQS__QUEUE_URL", &url)
        .env("SLUICE__DYNAMODB__TABLE", "request-logs")
        .env("SLUICE__SPOT__ENABLED", "true")
        .env("SLUICE__SPOT__POLL_INTERVAL", "200ms")
        .env("SLUICE__WORKER__SHUTDOWN_GRACE", "3s")
        .spawn();
    let started = Instant::now();
    while env
        .scan_keys("request-logs", "request_id")
        .await
        .unwrap()
        .len()
        < 200
    {
        assert!(started.elapsed() < Duration::from_secs(30), "not writing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    imds.notify("2026-11-22T12:02:00Z");
    let noticed = Instant::now();
    // Drained and exited within poll + grace + margin.
    let stopped = child.exited_within(Duration::from_secs(15)).await;
    let (status, stdout) = (stopped.status, stopped.stdout);
    assert!(status.success(), "{status:?}");
    assert!(
        noticed.elapsed() < Duration::from_secs(10),
        "{:?}",
        noticed.elapsed()
    );
    assert!(stdout.contains("spot interruption notice"), "{stdout}");
    // Nothing lost, nothing stranded: every log is written or its message is visible again now.
    let written = env
        .scan_keys("request-logs", "request_id")
        .await
        .unwrap()
        .len();
    let (visible, in_flight) = env.queue_counts(&url).await.unwrap();
    assert_eq!(
        in_flight, 0,
        "unfinished messages were made visible again at once"
    );
    assert!(written < 2000, "the notice came mid-drain");
    assert!(
        written + visible as usize >= 2000,
        "{written} written + {visible} waiting"
    );
}

/// A queue of `n` one-WCU logs and a 200-WCU table (196 WCU/s paced): ten seconds of work for
/// 2,000, so a departure signal comes mid-drain. Returns the queue URL.
async fn departure_backlog(env: &TestEnv, prefix: &str, n: usize) -> String {
    let url = env.create_queue("logs", 60).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "request-logs", "request_id", Some(200))
        .await
        .unwrap();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&one_log_bodies(prefix, n))
        .await
        .unwrap();
    url
}

/// `sluice run` with IMDS and Auto Scaling at `imds`, polling every 200 ms, a 3 s grace.
fn departure_run(env: &TestEnv, imds: &FakeImds, url: &str, extra: &[(&str, &str)]) -> Sluice {
    SluiceCommand::new(BIN, "run")
        .test_env(env)
        .env("AWS_EC2_METADATA_DISABLED", "false")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds.endpoint)
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", &imds.endpoint)
        .env("SLUICE__SQS__QUEUE_URL", url)
        .env("SLUICE__DYNAMODB__TABLE", "request-logs")
        .env("SLUICE__SPOT__POLL_INTERVAL", "200ms")
        .env("SLUICE__WORKER__SHUTDOWN_GRACE", "3s")
        .envs(extra.iter().copied())
        .spawn()
}

async fn written(env: &TestEnv) -> usize {
    env.scan_keys("request-logs", "request_id")
        .await
        .unwrap()
        .len()
}

async fn wait_written(env: &TestEnv, at_least: usize) {
    let started = Instant::now();
    while written(env).await < at_least {
        assert!(started.elapsed() < Duration::from_secs(30), "not writing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nothing lost, nothing stranded: every log is written or its message is visible again now.
async fn assert_nothing_lost(env: &TestEnv, url: &str, sent: usize) {
    let written = written(env).await;
    let (visible, in_flight) = env.queue_counts(url).await.unwrap();
    assert_eq!(
        in_flight, 0,
        "unfinished messages are visible again at once"
    );
    assert!(written < sent, "the signal came mid-drain");
    assert!(
        written + visible as usize >= sent,
        "{written} written + {visible} waiting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_drains_then_completes_the_lifecycle_action_and_unwatched_signals_are_ignored() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let imds = FakeImds::start().await.unwrap();
    imds.in_group("sluice-fleet", "sluice-drain");
    let url = departure_backlog(&env, "scale-in", 2000).await;
    // Only scale-in is watched; the group comes from the instance's tag in IMDS.
    let mut child = departure_run(&env, &imds, &url, &[("SLUICE__SPOT__SCALE_IN", "true")]);
    wait_written(&env, 200).await;

    // A spot notice and a rebalance recommendation, both switched off: sluice keeps writing.
    imds.notify("2026-12-05T12:02:00Z");
    imds.recommend_rebalance("2026-12-05T12:00:00Z");
    let before = written(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.child().try_wait().unwrap().is_none(),
        "an unwatched signal stopped it: {}",
        child.output_tail(20)
    );
    assert!(
        written(&env).await > before,
        "an unwatched signal stopped the writes"
    );
    assert_eq!(child.metric("sluice_scale_in_notices_total").await, None);

    imds.set_lifecycle_state("Terminated");
    let noticed = Instant::now();
    let stopped = child.exited_within(Duration::from_secs(15)).await;
    assert!(
        stopped.status.success(),
        "{:?}\n{}",
        stopped.status,
        stopped.stdout
    );
    assert!(
        noticed.elapsed() < Duration::from_secs(10),
        "{:?}",
        noticed.elapsed()
    );
    let out = &stopped.stdout;
    let drained = out.find("sluice stopped").expect("the drain's summary");
    let completed = out
        .find("lifecycle action completed")
        .unwrap_or_else(|| panic!("no completion in {out}"));
    assert!(
        drained < completed,
        "completed before the drain ended: {out}"
    );
    assert!(
        out.contains("Auto Scaling is terminating this instance"),
        "{out}"
    );
    assert_eq!(
        imds.completed(),
        vec![LifecycleAction {
            group: "sluice-fleet".into(),
            hook: "sluice-drain".into(),
            instance: IMDS_INSTANCE_ID.into(),
            result: "CONTINUE".into(),
        }]
    );
    assert_eq!(imds.refused(), Vec::<String>::new());
    assert_nothing_lost(&env, &url, 2000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_recommendation_drains_then_waits_for_the_group_to_end_the_instance() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let imds = FakeImds::start().await.unwrap();
    imds.in_group("sluice-fleet", "sluice-drain");
    let url = departure_backlog(&env, "rebalance", 2000).await;
    // What systemd would hear: READY=1, then no STOPPING=1 (which arms TimeoutStopSec) while it
    // waits idle after the drain, however long that takes.
    let notify = NotifySink::start();
    let mut child = departure_run(
        &env,
        &imds,
        &url,
        &[
            ("SLUICE__SPOT__REBALANCE", "true"),
            ("SLUICE__SPOT__SCALE_IN", "true"),
            ("SLUICE__SPOT__AUTOSCALING_GROUP", "sluice-fleet"),
            ("NOTIFY_SOCKET", &notify.path),
        ],
    );
    wait_written(&env, 200).await;
    imds.recommend_rebalance("2026-12-05T12:00:00Z");
    // Drained within poll + grace: the summary is logged and the writes stop.
    child
        .wait_for_stdout("sluice stopped", Duration::from_secs(10))
        .await;
    assert!(
        child
            .stdout()
            .contains("rebalance recommendation: draining now")
    );
    assert_eq!(
        child.metric("sluice_rebalance_recommendations_total").await,
        Some(1.0)
    );
    // Then idle, still serving /metrics, until Auto Scaling picks this instance.
    let drained = written(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        child.child().try_wait().unwrap().is_none(),
        "{}",
        child.output_tail(20)
    );
    assert_eq!(written(&env).await, drained, "writing after the drain");
    assert!(imds.completed().is_empty());
    assert_nothing_lost(&env, &url, 2000).await;
    let said = notify.heard();
    assert!(said.contains("READY=1"), "{said}");
    assert!(said.contains("this instance is going away"), "{said}");
    assert!(
        !said.contains("STOPPING=1"),
        "STOPPING=1 would arm TimeoutStopSec: {said}"
    );

    imds.set_lifecycle_state("Terminated");
    let stopped = child.exited_within(Duration::from_secs(10)).await;
    assert!(
        stopped.status.success(),
        "{:?}\n{}",
        stopped.status,
        stopped.stdout
    );
    assert_eq!(imds.completed().len(), 1, "{}", stopped.stdout);
    assert_eq!(imds.completed()[0].group, "sluice-fleet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_while_waiting_after_a_rebalance_drain_exits_zero_at_once() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let imds = FakeImds::start().await.unwrap();
    imds.in_group("sluice-fleet", "sluice-drain");
    let url = departure_backlog(&env, "rebalance-term", 2000).await;
    let notify = NotifySink::start();
    let child = departure_run(
        &env,
        &imds,
        &url,
        &[
            ("SLUICE__SPOT__REBALANCE", "true"),
            ("SLUICE__SPOT__SCALE_IN", "true"),
            ("NOTIFY_SOCKET", &notify.path),
        ],
    );
    wait_written(&env, 50).await;
    imds.recommend_rebalance("2026-12-05T12:00:00Z");
    child
        .wait_for_stdout(
            "waiting for Auto Scaling to terminate",
            Duration::from_secs(10),
        )
        .await;
    assert!(!notify.heard().contains("STOPPING=1"), "{}", notify.heard());
    // systemctl stop (or a reboot) while it waits: out at once, exit 0, nothing completed.
    child.sigterm();
    let stopped = child.exited_within(Duration::from_secs(3)).await;
    assert!(
        stopped.status.success(),
        "{:?}\n{}",
        stopped.status,
        stopped.stdout
    );
    assert!(notify.heard().contains("STOPPING=1"), "{}", notify.heard());
    assert!(imds.completed().is_empty());
    assert_nothing_lost(&env, &url, 2000).await;
}

/// A systemd notify socket: records the datagrams sluice sends (one per line).
struct NotifySink {
    _dir: tempfile::TempDir,
    path: String,
    heard: std::sync::Arc<std::sync::Mutex<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl NotifySink {
    fn start() -> NotifySink {
        let dir = sluice_testkit::temp_dir("notify");
        let path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let heard = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let task = tokio::spawn({
            let heard = heard.clone();
            async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = socket.recv(&mut buf).await {
                    let text = String::from_utf8_lossy(&buf[..n]).to_string();
                    heard.lock().unwrap().push_str(&(text + "\n"));
                }
            }
        });
        NotifySink {
            _dir: dir,
            path: path.to_str().unwrap().to_string(),
            heard,
            task,
        }
    }

    fn heard(&self) -> String {
        self.heard.lock().unwrap().clone()
    }
}

impl Drop for NotifySink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_action_auto_scaling_refuses_is_logged_and_the_drain_still_exits_zero() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let imds = FakeImds::start().await.unwrap();
    imds.in_group("sluice-fleet", "sluice-drain");
    let url = departure_backlog(&env, "refused", 400).await;
    // The hook's name is wrong: Auto Scaling refuses the completion.
    let child = departure_run(
        &env,
        &imds,
        &url,
        &[
            ("SLUICE__SPOT__SCALE_IN", "true"),
            ("SLUICE__SPOT__LIFECYCLE_HOOK", "no-such-hook"),
        ],
    );
    wait_written(&env, 50).await;
    imds.set_lifecycle_state("Terminated");
    child
        .wait_for_stdout(
            "cannot complete the lifecycle action",
            Duration::from_secs(15),
        )
        .await;
    let stopped = child.exited_within(Duration::from_secs(5)).await;
    assert!(stopped.status.success(), "{:?}", stopped.status);
    assert!(
        stopped
            .stdout
            .contains("No Lifecycle Hook found with name no-such-hook"),
        "{}",
        stopped.stdout
    );
    assert!(imds.completed().is_empty());
    assert_eq!(imds.refused().len(), 1, "{:?}", imds.refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigterm_with_many_in_flight_exits_zero_in_time_and_loses_nothing() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("logs", 60).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "request-logs", "request_id", Some(300))
        .await
        .unwrap();
    // Slow writes keep hundreds of messages in flight when SIGTERM comes.
    env.sim
        .as_ref()
        .unwrap()
        .set_faults(slow_writes(400, 200, Vec::new()))
        .unwrap();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&one_log_bodies("term", 3000))
        .await
        .unwrap();
    let grace = 2;
    let child = spawn_run(
        &env,
        &url,
        "request-logs",
        &[("SLUICE__WORKER__SHUTDOWN_GRACE", "2s")],
    );
    let started = Instant::now();
    loop {
        let (_, in_flight) = env.queue_counts(&url).await.unwrap();
        if in_flight >= 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never had many in flight"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.sigterm();
    let term = Instant::now();
    // Exited within grace + 5 s.
    let status = child
        .exited_within(Duration::from_secs(grace + 5))
        .await
        .status;
    assert!(status.success(), "{status:?}");
    let (visible, in_flight) = env.queue_counts(&url).await.unwrap();
    assert_eq!(
        in_flight, 0,
        "unfinished messages were made visible again at once"
    );
    let written = env
        .scan_keys("request-logs", "request_id")
        .await
        .unwrap()
        .len();
    assert!(
        written + visible as usize >= 3000,
        "{written} written + {visible} waiting"
    );
    assert!(term.elapsed() < Duration::from_secs(grace + 5));
}

/// Chaos (a): kill -9 the worker at random moments, restarting it each time. Every request id
/// ends as exactly one row, and the queue ends empty except the poison in the dead-letter queue.
/// CI runs 5,000 messages and 10 kills; SLUICE_CHAOS_MESSAGES / SLUICE_CHAOS_KILLS scale it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    // The simulator in its own process, so it outlives every worker.
    let mut sim = SluiceCommand::new(BIN, "sim")
        .args(["--listen", "127.0.0.1:0"])
        .spawn();
    let first = sim.wait_stdout_line(Duration::from_secs(20)).await;
    let endpoint = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_string();
    kill_9_chaos(&endpoint, 5000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_9_on_ministack_loses_nothing_and_duplicates_nothing() {
    let ministack = sluice_testkit::start_ministack().await.unwrap();
    kill_9_chaos(&ministack.endpoint, 2000).await;
}

/// Chaos (a) against any endpoint serving SQS and DynamoDB from another process.
async fn kill_9_chaos(endpoint: &str, default_messages: usize) {
    use rand::{Rng, SeedableRng};
    let messages: usize = std::env::var("SLUICE_CHAOS_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_messages);
    let kills: usize = std::env::var("SLUICE_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let endpoint = endpoint.to_string();
    let sdk = sluice_testkit::sdk_config(&endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    use aws_sdk_sqs::types::QueueAttributeName;
    let url = sluice_sqs::admin::create_queue(
        &sqs,
        "chaos",
        &[(QueueAttributeName::VisibilityTimeout, "4".into())],
    )
    .await
    .unwrap();
    let dlq = sluice_sqs::admin::create_queue(&sqs, "chaos-dlq", &[])
        .await
        .unwrap();
    sluice_dynamodb::admin::create_table(&ddb, "chaos", "request_id", None)
        .await
        .unwrap();
    let mut bodies: Vec<String> = (0..messages)
        .map(|i| {
            // Some messages carry three logs; a few are delivered twice by the producer.
            let ids: Vec<String> = if i % 10 == 0 {
                (0..3).map(|j| format!("k-{i}-{j}")).collect()
            } else {
                vec![format!("k-{i}")]
            };
            ids.iter()
                .map(|id| log_line(id))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let unique: usize = (0..messages).map(|i| if i % 10 == 0 { 3 } else { 1 }).sum();
    let duplicates: Vec<String> = bodies.iter().step_by(50).cloned().collect();
    bodies.extend(duplicates);
    let poison = ["not json", "[1]", "{\"request_id\":\"p\"}"];
    bodies.extend(poison.iter().map(|s| s.to_string()));
    SqsTransport::new(sqs.clone(), &url)
        .send_bodies(&bodies)
        .await
        .unwrap();

    let start_worker = || {
        SluiceCommand::new(BIN, "run")
            .env("AWS_ENDPOINT_URL", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SLUICE__SQS__QUEUE_URL", &url)
            .env("SLUICE__SQS__DEAD_LETTER_QUEUE_URL", &dlq)
            .env("SLUICE__SQS__WAIT_TIME_SECONDS", "1")
            .env("SLUICE__DYNAMODB__TABLE", "chaos")
            .env("SLUICE__RATE__WCU_PER_SECOND", "4000")
            .spawn()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..kills {
        let mut worker = start_worker();
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        worker.kill_9().await; // SIGKILL: no drain, no acks flushed, nothing returned
    }
    let worker = start_worker();
    let started = Instant::now();
    loop {
        let (visible, in_flight) = sluice_sqs::admin::queue_counts(&sqs, &url).await.unwrap();
        let (dead, _) = sluice_sqs::admin::queue_counts(&sqs, &dlq).await.unwrap();
        if visible == 0 && in_flight == 0 && dead as usize >= poison.len() {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{visible} visible, {in_flight} in flight, {dead} dead"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    worker.stop().await;
    let keys = sluice_dynamodb::admin::scan_keys(&ddb, "chaos", "request_id")
        .await
        .unwrap();
    let distinct: std::collections::HashSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), distinct.len(), "a request id has two rows");
    assert_eq!(keys.len(), unique, "every request id written");
    let (dead, _) = sluice_sqs::admin::queue_counts(&sqs, &dlq).await.unwrap();
    assert_eq!(
        dead as usize,
        poison.len(),
        "only the poison is dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_fails_when_a_poll_loop_stops_making_progress() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("logs", 30).await.unwrap();
    env.create_table("request-logs", "request_id")
        .await
        .unwrap();
    let mut child = SluiceCommand::new(BIN, "run")
        .test_env(&env)
        .env("SLUICE__SQS__QUEUE_URL", &url)
        .env("SLUICE__SQS__WAIT_TIME_SECONDS", "1")
        .env("SLUICE__DYNAMODB__TABLE", "request-logs")
        .spawn();
    let port = child.telemetry_port();
    child.wait_healthy(Duration::from_secs(20)).await;
    // Receives now hang for a minute: a 1 s long poll taking 60 s is a stuck poll loop.
    env.sim
        .as_ref()
        .unwrap()
        .set_faults(sluice_sim::Faults {
            slow_receive_ms: 60_000,
            ..Default::default()
        })
        .unwrap();
    let stuck = Instant::now();
    let (status, body) = loop {
        let answer = http_get(port, "/healthz").await;
        if answer.0 != 200 {
            break answer;
        }
        assert!(
            stuck.elapsed() < Duration::from_secs(30),
            "/healthz never failed"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no progress"), "{body}");
    // The limit is max(2 × 1 s, 10 s): about ten seconds, not less.
    assert!(
        stuck.elapsed() >= Duration::from_secs(8),
        "{:?}",
        stuck.elapsed()
    );
    child.kill_9().await;
}

/// Faults: BatchWriteItem slowed by `fixed_ms` plus up to `jitter_ms`, and `hang_ops` never answered.
fn slow_writes(fixed_ms: u64, jitter_ms: u64, hang_ops: Vec<String>) -> sluice_sim::Faults {
    sluice_sim::Faults {
        op_latency: [(
            "BatchWriteItem".to_string(),
            sluice_sim::Latency {
                fixed_ms,
                jitter_ms,
            },
        )]
        .into(),
        hang_ops,
        ..Default::default()
    }
}

/// `n` messages of one log each, request ids `{prefix}-{i}`.
fn one_log_bodies(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| log_line(&format!("{prefix}-{i}"))).collect()
}

/// Starts `sluice run` against `env` with `extra` environment on top.
fn spawn_run(env: &TestEnv, url: &str, table: &str, extra: &[(&str, &str)]) -> Sluice {
    SluiceCommand::new(BIN, "run")
        .test_env(env)
        .env("SLUICE__SQS__QUEUE_URL", url)
        .env("SLUICE__DYNAMODB__TABLE", table)
        .envs(extra.iter().copied())
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_sqs_stops_answering_and_nothing_is_lost() {
    // Mid-drain, SQS takes every ReceiveMessage, DeleteMessageBatch, ChangeMessageVisibility(Batch)
    // and never answers. SIGTERM must still end the process within shutdown_grace plus the
    // documented margin (8 s for the engine, 2 s after it), exit 0, and every log must land once
    // the server answers again: what could not be acked comes back and is rewritten.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("logs", 10).await.unwrap();
    sluice_dynamodb::admin::create_table(&env.dynamodb, "request-logs", "request_id", Some(400))
        .await
        .unwrap();
    let sim = env.sim.as_ref().unwrap();
    sim.set_faults(slow_writes(300, 100, Vec::new())).unwrap();
    SqsTransport::new(env.sqs.clone(), &url)
        .send_bodies(&one_log_bodies("hang", 1500))
        .await
        .unwrap();
    let grace = 2u64;
    let child = spawn_run(
        &env,
        &url,
        "request-logs",
        &[
            ("SLUICE__WORKER__SHUTDOWN_GRACE", "2s"),
            ("SLUICE__SQS__REQUEST_TIMEOUT", "2s"),
        ],
    );
    let started = Instant::now();
    while env
        .scan_keys("request-logs", "request_id")
        .await
        .unwrap()
        .len()
        < 100
    {
        assert!(started.elapsed() < Duration::from_secs(30), "not writing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let silent = [
        "ReceiveMessage",
        "DeleteMessageBatch",
        "ChangeMessageVisibilityBatch",
        "ChangeMessageVisibility",
    ];
    sim.set_faults(slow_writes(300, 100, silent.map(String::from).to_vec()))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    child.sigterm();
    let term = Instant::now();
    let bound = Duration::from_secs(grace + 8 + 2);
    // Exited although SQS does not answer.
    let status = child
        .exited_within(bound + Duration::from_secs(3))
        .await
        .status;
    let took = term.elapsed();
    eprintln!("exited {took:?} after SIGTERM with SQS silent (bound {bound:?})");
    assert!(status.success(), "{status:?}");
    assert!(
        took <= bound + Duration::from_secs(1),
        "took {took:?}, bound {bound:?}"
    );

    // SQS answers again: a second run finds what was not acked (after its visibility timeout)
    // and writes it; every log is one row.
    sim.set_faults(sluice_sim::Faults::default()).unwrap();
    let child = spawn_run(&env, &url, "request-logs", &[]);
    env.wait_queue_empty(&url, Duration::from_secs(90))
        .await
        .unwrap();
    let status = child.stop().await.status;
    assert!(status.success());
    let keys = env.scan_keys("request-logs", "request_id").await.unwrap();
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), unique.len()), (1500, 1500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_redrive_packs_by_bytes_goes_on_past_a_message_that_fails_and_keeps_producer_attributes()
 {
    use aws_sdk_sqs::types::{
        MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    };
    // Twelve messages of 200 KiB (a batch of ten would be 2 MiB, over SendMessageBatch's 1 MiB)
    // and one of 300 KiB that the source queue (MaximumMessageSize 256 KiB) refuses.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let dlq = sluice_sqs::admin::create_queue(&env.sqs, "big-dlq", &[])
        .await
        .unwrap();
    let source = sluice_sqs::admin::create_queue(
        &env.sqs,
        "big",
        &[(QueueAttributeName::MaximumMessageSize, "262144".to_string())],
    )
    .await
    .unwrap();
    let attr = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .unwrap()
    };
    for i in 0..13 {
        let size = if i == 6 { 300 * 1024 } else { 200 * 1024 };
        env.sqs
            .send_message()
            .queue_url(&dlq)
            .message_body(format!("{i:02}{}", "x".repeat(size)))
            .message_attributes("sluice_reason", attr("schema"))
            .message_attributes("trace_id", attr(&format!("t-{i}")))
            .send()
            .await
            .unwrap();
    }
    let out = Command::new(BIN)
        .args(["dlq", "redrive", "--rate", "1000", "--dlq", &dlq])
        .envs(env.child_env())
        .env("SLUICE__SQS__QUEUE_URL", &source)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        !out.status.success(),
        "one failed: exit 1\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("12 message(s) moved") && stdout.contains("1 failed"),
        "{stdout}\n{stderr}"
    );
    assert!(stderr.contains("could not be sent back"), "{stderr}");
    assert_eq!(env.queue_counts(&source).await.unwrap().0, 12);
    let (visible, in_flight) = env.queue_counts(&dlq).await.unwrap();
    assert_eq!(
        visible + in_flight,
        1,
        "the refused one stays in the dead-letter queue"
    );
    // The producer's attribute travelled back; sluice's own stayed behind.
    let got = env
        .sqs
        .receive_message()
        .queue_url(&source)
        .max_number_of_messages(10)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .unwrap();
    for m in got.messages() {
        let a = m.message_attributes().unwrap();
        let n: usize = m.body().unwrap()[..2].parse().unwrap();
        assert_eq!(
            a["trace_id"].string_value(),
            Some(format!("t-{n}").as_str())
        );
        assert!(!a.contains_key("sluice_reason"));
    }
}
