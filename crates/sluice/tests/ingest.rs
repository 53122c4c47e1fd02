//! The producer side, through the real binaries: `sluice ingest` in front of SQS, `sluice load`
//! pushing into it, `sluice run` draining into the table. On sluice-sim (which can fail SQS on
//! demand) and on MiniStack.

use sluice_core::testing::log_line;
use sluice_testkit::metric;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sluice_testkit::{
    Backend, Sluice, SluiceCommand, TestEnv, free_port, http_get, http_request, temp_dir,
    try_http_get,
};
use tempfile::TempDir;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");
const KEY: &str = "sk-test-3f9a1c";
const TABLE: &str = "request-logs";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running `sluice ingest`, its API port and its config.
struct Ingest {
    child: Sluice,
    port: u16,
    config: PathBuf,
}

/// Writes an ingest config (one API key, a spool in `dir`) plus `extra` TOML, and starts it.
async fn start_ingest(env: &TestEnv, dir: &TempDir, queue_url: &str, extra: &str) -> Ingest {
    let config = dir.path().join("ingest.toml");
    let spool = dir.path().join("spool");
    std::fs::write(
        &config,
        format!(
            r#"
[sqs]
queue_url = "{queue_url}"

[ingest]
api_keys = [{{ name = "test", sha256 = "{}" }}]
{extra}

[producer]
spool_dir = "{}"
linger = "20ms"
retry_base = "20ms"
retry_max = "200ms"
"#,
            sha256_hex(KEY),
            spool.display()
        ),
    )
    .unwrap();
    restart_ingest(env, &config).await
}

async fn restart_ingest(env: &TestEnv, config: &Path) -> Ingest {
    let port = free_port();
    let mut cmd = SluiceCommand::new(BIN, "ingest");
    // The tests stop ingest often: no drain delay unless a test's config asks for one.
    let text = std::fs::read_to_string(config).unwrap_or_default();
    if !text.contains("drain_delay") {
        cmd = cmd.env("SLUICE__INGEST__DRAIN_DELAY", "0s");
    }
    let mut child = cmd
        .arg("--config")
        .arg(config)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .test_env(env)
        .spawn();
    // The telemetry port answers plain HTTP even when the API is TLS; then the API must listen.
    child.wait_healthy(Duration::from_secs(20)).await;
    child.wait_listening(port, Duration::from_secs(20)).await;
    Ingest {
        child,
        port,
        config: config.to_owned(),
    }
}

impl Ingest {
    async fn kill_9(mut self) {
        self.child.kill_9().await;
    }

    /// SIGTERM; returns (exit success, stdout).
    async fn stop(self) -> (bool, String) {
        let stopped = self.child.stop().await;
        (stopped.status.success(), stopped.stdout)
    }
}

/// SQS stops taking messages: every SendMessage and SendMessageBatch answers 503.
fn sqs_down(sim: &sluice_sim::SimServer) {
    sim.set_faults(sluice_sim::Faults {
        error_503_rate: 1.0,
        only_ops: Some(vec!["SendMessageBatch".into(), "SendMessage".into()]),
        ..Default::default()
    })
    .unwrap();
}

/// `count` logs of 300-700 B into ingest in requests of 50, two at a time, none retried (a
/// 503 is final): the summary, with the keys accepted written to `keys_file`.
async fn load_through_outage(
    env: &TestEnv,
    port: u16,
    count: usize,
    run_id: &str,
    keys_file: &Path,
) -> serde_json::Value {
    let count = count.to_string();
    load_into(
        env,
        port,
        &[
            "--count",
            &count,
            "--rate",
            "0",
            "--size",
            "300-700",
            "--batch",
            "50",
            "--concurrency",
            "2",
            "--retry-for",
            "0s",
            "--run-id",
            run_id,
            "--keys-out",
            keys_file.to_str().unwrap(),
        ],
    )
    .await
    .1
}

async fn post_logs(port: u16, headers: &[(&str, &str)], body: &[u8]) -> (u16, String, String) {
    let r = http_request(port, "POST", "/v1/logs", headers, body)
        .await
        .expect("ingest answers");
    (r.status, r.head, r.body)
}

/// Runs `sluice load ... --json`; returns (exit code, summary).
async fn load(env: &TestEnv, args: &[String]) -> (i32, serde_json::Value) {
    let out = Command::new(BIN)
        .arg("load")
        .args(args)
        .arg("--json")
        .envs(env.child_env())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run sluice load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let summary = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "sluice load printed no JSON summary ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), summary)
}

/// `sluice load --ingest http://127.0.0.1:PORT --api-key KEY ARGS... --json`.
async fn load_into(env: &TestEnv, port: u16, args: &[&str]) -> (i32, serde_json::Value) {
    let url = format!("http://127.0.0.1:{port}");
    let mut all = vec!["--ingest", url.as_str(), "--api-key", KEY];
    all.extend_from_slice(args);
    load(env, &strings(&all)).await
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn read_keys(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Starts `sluice run` on the queue and waits until every key is in the table, then stops it.
async fn drain_into_table(env: &TestEnv, queue_url: &str, want: &HashSet<String>) {
    let mut run = SluiceCommand::new(BIN, "run")
        .test_env(env)
        .env("SLUICE__SQS__QUEUE_URL", queue_url)
        .env("SLUICE__DYNAMODB__TABLE", TABLE)
        .env("SLUICE__RATE__WCU_PER_SECOND", "5000")
        .spawn();
    let started = Instant::now();
    let rows: HashSet<String> = loop {
        let rows: HashSet<String> = env
            .scan_keys(TABLE, "request_id")
            .await
            .unwrap()
            .into_iter()
            .collect();
        if want.is_subset(&rows) || started.elapsed() > Duration::from_secs(90) {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    run.kill_9().await;
    let missing: Vec<&String> = want.difference(&rows).take(5).collect();
    assert!(
        missing.is_empty(),
        "{} of {} accepted logs never reached the table, e.g. {missing:?}",
        want.difference(&rows).count(),
        want.len()
    );
}

async fn end_to_end(backend: Backend) {
    let env = TestEnv::start(backend).await.unwrap();
    let url = env.create_queue("ingest-logs", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir("ingest-e2e");
    let ingest = start_ingest(&env, &dir, &url, "").await;
    let keys_file = dir.path().join("keys");
    let (code, s) = load_into(
        &env,
        ingest.port,
        &[
            "--count",
            "3000",
            "--rate",
            "0",
            "--size",
            "lognormal:400-4000",
            "--duplicate-ratio",
            "0.1",
            "--batch",
            "50",
            "--gzip",
            "--run-id",
            "e2e",
            "--keys-out",
            keys_file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["generated"], 3000, "{s}");
    assert_eq!(s["accepted"], 3000, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert!(s["duplicates"].as_u64().unwrap() > 100, "{s}");
    let keys = read_keys(&keys_file);
    assert_eq!(keys.len() as u64, s["distinct_keys"].as_u64().unwrap());

    // Straight to SQS through the producer too, into the same queue.
    let direct_keys = dir.path().join("direct-keys");
    let (code, d) = load(
        &env,
        &strings(&[
            "--queue-url",
            &url,
            "--count",
            "2000",
            "--rate",
            "0",
            "--run-id",
            "direct",
            "--keys-out",
            direct_keys.to_str().unwrap(),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{d}");
    assert_eq!(d["accepted"], 2000, "{d}");
    assert!(
        d["messages_sent"].as_u64().unwrap() < 2000,
        "logs are packed several to a message: {d}"
    );

    let scrape = ingest.child.scrape().await;
    assert!(
        metric(&scrape, "sluice_ingest_logs_total").unwrap() >= 3000.0,
        "{scrape}"
    );
    assert!(scrape.contains("sluice_ingest_requests_total{code=\"202\"}"));
    assert!(
        scrape.contains("sluice_producer_messages_total{path=\"direct\"}"),
        "{scrape}"
    );
    let (ok, stdout) = ingest.stop().await;
    assert!(ok, "{stdout}");
    assert!(stdout.contains("sluice ingest stopped"), "{stdout}");

    let mut want = keys;
    want.extend(read_keys(&direct_keys));
    assert_eq!(
        want.len(),
        3000 - s["duplicates"].as_u64().unwrap() as usize + 2000
    );
    drain_into_table(&env, &url, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_to_sqs_to_run_to_table_on_the_simulator() {
    end_to_end(Backend::Sim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_to_sqs_to_run_to_table_on_ministack() {
    end_to_end(Backend::MiniStack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_answers_401_400_413_415_and_429_with_reasons() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("ingest-codes", 30).await.unwrap();
    let dir = temp_dir("ingest-codes");
    let ingest = start_ingest(
        &env,
        &dir,
        &url,
        "rate_per_key = 20\nburst_per_key = 40\nmax_body_bytes = 65536\nmax_logs_per_request = 40",
    )
    .await;
    let port = ingest.port;
    let one = log_line("codes-1");
    let auth = format!("Bearer {KEY}");

    let (status, head, body) = post_logs(port, &[], one.as_bytes()).await;
    assert_eq!(status, 401, "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(body.contains("API key"), "{body}");
    let (status, _, _) = post_logs(
        port,
        &[("Authorization", "Bearer not-the-key")],
        one.as_bytes(),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _, _) = post_logs(port, &[("X-Api-Key", KEY)], one.as_bytes()).await;
    assert_eq!(status, 202, "X-Api-Key works too");

    // The 400 names the line and says what is wrong.
    let bad = format!(
        "{}\n{{\"request_id\":\"codes-3\",\"ts\":1,\"method\":\"GET\",\"path\":\"/\",\"status\":200}}\n",
        log_line("codes-2")
    );
    let (status, _, body) = post_logs(port, &[("Authorization", &auth)], bad.as_bytes()).await;
    assert_eq!(status, 400, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["line"], 2, "{body}");
    assert!(
        v["error"].as_str().unwrap().contains("latency_ms"),
        "{body}"
    );
    let (status, _, body) =
        post_logs(port, &[("Authorization", &auth)], b"{\"request_id\": oops}").await;
    assert_eq!(status, 400);
    assert!(body.contains("line 1"), "{body}");
    // Valid JSON that DynamoDB would refuse is refused here too, naming the attribute, rather
    // than accepted and dead-lettered later.
    let nested = format!("{}{}{}", r#"{"x":"#.repeat(32), 1, "}".repeat(32));
    for (extra, says) in [
        (r#""n":1e200"#.to_string(), "`n`: number"),
        (r#""n":{"m":[1e-200]}"#.to_string(), "`n.m[0]`"),
        (format!(r#""deep":{nested}"#), "32 levels"),
    ] {
        let refused = log_line("codes-4").replacen('{', &format!("{{{extra},"), 1);
        let (status, _, body) =
            post_logs(port, &[("Authorization", &auth)], refused.as_bytes()).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert!(
            body.contains(says) && body.contains("invalid_value"),
            "{extra}: {body}"
        );
    }

    let big = format!("{}\n", log_line("big")).repeat(1000);
    let (status, _, body) = post_logs(port, &[("Authorization", &auth)], big.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("max_body_bytes"), "{body}");
    let (status, _, _) = post_logs(
        port,
        &[("Authorization", &auth), ("Content-Encoding", "br")],
        one.as_bytes(),
    )
    .await;
    assert_eq!(status, 415);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        format!("[{},{}]", log_line("gz-1"), log_line("gz-2")).as_bytes(),
    )
    .unwrap();
    let (status, _, body) = post_logs(
        port,
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        &gz.finish().unwrap(),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body.trim(), r#"{"accepted":2}"#);

    // Over the key's rate: 429 with Retry-After, and the load generator sees it too.
    let forty: String = (0..40)
        .map(|i| log_line(&format!("burst-{i}")) + "\n")
        .collect();
    let mut codes = Vec::new();
    for _ in 0..3 {
        let (status, head, _) =
            post_logs(port, &[("Authorization", &auth)], forty.as_bytes()).await;
        if status == 429 {
            assert!(head.contains("retry-after: "), "{head}");
        }
        codes.push(status);
    }
    assert!(codes.contains(&429), "{codes:?}");
    let (code, s) = load_into(
        &env,
        port,
        &[
            "--rate",
            "0",
            "--count",
            "400",
            "--batch",
            "20",
            "--retry-for",
            "0s",
        ],
    )
    .await;
    assert_eq!(code, 1, "logs refused: exit 1\n{s}");
    assert!(s["status_429"].as_u64().unwrap() > 0, "{s}");
    assert!(s["accepted"].as_u64().unwrap() < 400, "{s}");
    assert_eq!(
        s["accepted"].as_u64().unwrap() + s["failed"].as_u64().unwrap(),
        400,
        "{s}"
    );
    // A wrong key through the load generator: the server's reason comes back.
    let (code, s) = load(
        &env,
        &strings(&[
            "--ingest",
            &format!("http://127.0.0.1:{port}"),
            "--api-key",
            "wrong",
            "--count",
            "10",
        ]),
    )
    .await;
    assert_eq!(code, 1);
    assert!(s["first_error"].as_str().unwrap().starts_with("401"), "{s}");

    let scrape = ingest.child.scrape().await;
    for code in ["202", "400", "401", "413", "415", "429"] {
        assert!(
            scrape.contains(&format!("sluice_ingest_requests_total{{code=\"{code}\"}}")),
            "{code} not counted:\n{scrape}"
        );
    }
    let (ok, stdout) = ingest.stop().await;
    assert!(ok, "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_outage_spools_sheds_with_503_and_a_kill_9_loses_nothing() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let sim = env.sim.as_ref().unwrap();
    let url = env.create_queue("ingest-outage", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir("ingest-outage");
    // Admission control past 300 KB waiting, so the outage ends in 503s.
    let ingest = start_ingest(
        &env,
        &dir,
        &url,
        "max_backlog_bytes = 300000\nretry_after = \"1s\"",
    )
    .await;
    sqs_down(sim);
    let keys_file = dir.path().join("keys");
    let s = load_through_outage(&env, ingest.port, 3000, "outage", &keys_file).await;
    let accepted = s["accepted"].as_u64().unwrap();
    assert!(
        accepted >= 200,
        "the spool took logs during the outage: {s}"
    );
    assert!(
        s["status_503"].as_u64().unwrap() > 0,
        "past max_backlog_bytes the API sheds with 503: {s}"
    );
    assert_eq!(
        env.queue_counts(&url).await.unwrap(),
        (0, 0),
        "SQS took nothing"
    );
    let scrape = ingest.child.scrape().await;
    assert!(
        metric(&scrape, "sluice_producer_spool_bytes").unwrap() > 100_000.0,
        "{scrape}"
    );
    let (status, body) = http_get(ingest.port, "/readyz").await;
    assert_eq!(status, 503, "not ready while backed up: {body}");

    // kill -9 mid-outage, restart on the same spool while SQS is still down, then recover.
    let config = ingest.config.clone();
    ingest.kill_9().await;
    let ingest = restart_ingest(&env, &config).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.queue_counts(&url).await.unwrap(), (0, 0));
    sim.set_faults(sluice_sim::Faults::default()).unwrap();
    let started = Instant::now();
    loop {
        let scrape = ingest.child.scrape().await;
        if metric(&scrape, "sluice_producer_spool_bytes") == Some(0.0) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the spool was not replayed:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(ingest.port, "/readyz").await.0, 200);
    let (ok, stdout) = ingest.stop().await;
    assert!(ok, "{stdout}");

    let keys = read_keys(&keys_file);
    assert_eq!(keys.len() as u64, accepted, "no duplicates asked for");
    drain_into_table(&env, &url, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scaled_in_ingest_sends_its_spool_to_the_queue_before_it_exits() {
    // Kubernetes scales ingest in once SQS is back and the pods are idle: the pod with the
    // highest ordinal goes, and may never come back to replay its spool. Its spool must reach
    // the queue on the way out. The replay backs off for up to 30 s after the outage, so what
    // empties the spool here is the shutdown, not the running replay.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let sim = env.sim.as_ref().unwrap();
    let url = env.create_queue("ingest-scale-in", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir("ingest-scale-in");
    let config = dir.path().join("ingest.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[sqs]
queue_url = "{url}"

[ingest]
api_keys = [{{ name = "test", sha256 = "{}" }}]

[producer]
spool_dir = "{}"
linger = "20ms"
retry_base = "10s"
retry_max = "30s"
send_attempts = 1
shutdown_timeout = "20s"
"#,
            sha256_hex(KEY),
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let ingest = restart_ingest(&env, &config).await;
    sqs_down(sim);
    let keys_file = dir.path().join("keys");
    let s = load_through_outage(&env, ingest.port, 500, "scale-in", &keys_file).await;
    let accepted = s["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{s}");
    let scrape = ingest.child.scrape().await;
    assert!(
        metric(&scrape, "sluice_producer_spool_bytes").unwrap() > 0.0,
        "the outage filled the spool: {scrape}"
    );
    assert_eq!(env.queue_counts(&url).await.unwrap(), (0, 0));
    // SQS is back; the scale-in comes at once.
    sim.set_faults(sluice_sim::Faults::default()).unwrap();
    let (ok, stdout) = ingest.stop().await;
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("\"left_in_spool\":0"),
        "the spool was emptied before exit: {stdout}"
    );
    // No restart: every accepted log is in the queue already.
    let keys = read_keys(&keys_file);
    assert_eq!(keys.len() as u64, accepted);
    drain_into_table(&env, &url, &keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_serves_https_with_the_configured_certificate() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("ingest-tls", 30).await.unwrap();
    let dir = temp_dir("ingest-tls");
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let ingest = start_ingest(
        &env,
        &dir,
        &url,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display()
        ),
    )
    .await;
    let (code, s) = load(
        &env,
        &strings(&[
            "--ingest",
            &format!("https://127.0.0.1:{}", ingest.port),
            "--cacert",
            dir.path().join("cert.pem").to_str().unwrap(),
            "--api-key",
            KEY,
            "--count",
            "500",
            "--rate",
            "0",
        ]),
    )
    .await;
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["accepted"], 500, "{s}");
    // Plain HTTP on the TLS port gets nowhere.
    let plain = http_request(ingest.port, "POST", "/v1/logs", &[], b"{}")
        .await
        .ok();
    assert!(plain.is_none_or(|r| r.status != 202));
    let (ok, stdout) = ingest.stop().await;
    assert!(ok, "{stdout}");
    let started = Instant::now();
    while env.queue_counts(&url).await.unwrap().0 == 0 {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_and_a_changed_key_file_are_served_without_a_restart() {
    // cert-manager renews the certificate in its Secret and Kubernetes updates the mounted
    // files in place; an operator revokes a key and adds one in the key Secret. Ingest follows
    // both within ingest.reload_interval, and a broken file keeps the previous one.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("ingest-reload", 30).await.unwrap();
    let dir = temp_dir("ingest-reload");
    let write_cert = |name: &str| {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join(format!("{name}.pem")), c.cert.pem()).unwrap();
        // Swapped in whole, as Kubernetes swaps a Secret volume's files.
        for (file, text) in [
            ("cert.pem", c.cert.pem()),
            ("key.pem", c.signing_key.serialize_pem()),
        ] {
            let tmp = dir.path().join(format!("{file}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, dir.path().join(file)).unwrap();
        }
    };
    let write_keys = |names: &[&str]| {
        let text: String = names
            .iter()
            .map(|n| format!("{n} {}\n", sha256_hex(n)))
            .collect();
        let tmp = dir.path().join("keys.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.path().join("api_keys")).unwrap();
    };
    write_cert("first");
    write_keys(&["second-key"]);
    let ingest = start_ingest(
        &env,
        &dir,
        &url,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\napi_keys_file = \"{}\"\nreload_interval = \"1s\"",
            dir.path().join("cert.pem").display(),
            dir.path().join("key.pem").display(),
            dir.path().join("api_keys").display()
        ),
    )
    .await;
    let send = |ca: &str, key: &str| {
        let args = strings(&[
            "--ingest",
            &format!("https://127.0.0.1:{}", ingest.port),
            "--cacert",
            dir.path().join(format!("{ca}.pem")).to_str().unwrap(),
            "--api-key",
            key,
            "--count",
            "20",
            "--rate",
            "0",
            "--retry-for",
            "0s",
        ]);
        let env = &env;
        async move { load(env, &args).await.1["accepted"].as_u64().unwrap_or(0) }
    };
    assert_eq!(send("first", "second-key").await, 20);
    write_cert("renewed");
    write_keys(&["third-key"]);
    let started = Instant::now();
    while send("renewed", "third-key").await != 20 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the renewed certificate and the new key were not picked up"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        send("first", "third-key").await,
        0,
        "the old certificate is gone"
    );
    assert_eq!(
        send("renewed", "second-key").await,
        0,
        "the revoked key is refused"
    );
    assert_eq!(send("renewed", KEY).await, 20, "inline keys stay");
    // A broken certificate file: the renewed one keeps being served.
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    let started = Instant::now();
    loop {
        let scrape = ingest.child.scrape().await;
        if metric(&scrape, "sluice_ingest_reload_errors_total{what=\"tls\"}").unwrap_or(0.0) >= 1.0
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{scrape}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(send("renewed", "third-key").await, 20);
    let (ok, stdout) = ingest.stop().await;
    assert!(ok, "{stdout}");
}

/// The README's few lines: an axum app with RequestLogLayer, a Producer on the real SDK, and
/// `sluice run` on the other side of the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_axum_service_with_the_layer_gets_its_requests_into_the_table() {
    use axum::routing::get;
    use sluice_producer::layer::RequestLogLayer;
    use sluice_producer::sqs::SqsTransport;
    use sluice_producer::{Producer, ProducerConfig};

    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("layer-logs", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let producer = Producer::start(
        ProducerConfig::for_queue(&url),
        SqsTransport::new(env.sqs.clone(), &url),
    )
    .unwrap();
    let app = axum::Router::new()
        .route("/v1/orders", get(|| async { "ok" }))
        .layer(RequestLogLayer::new(producer.clone()).user_id(|req| {
            req.headers
                .get("x-user-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut want = HashSet::new();
    for i in 0..50 {
        let id = format!("layer-{i}");
        let r = http_request(
            port,
            "GET",
            if i % 5 == 0 {
                "/missing"
            } else {
                "/v1/orders?token=secret"
            },
            &[("x-request-id", &id), ("x-user-id", "u-7")],
            b"",
        )
        .await
        .unwrap();
        let (status, head) = (r.status, r.head);
        assert_eq!(status, if i % 5 == 0 { 404 } else { 200 });
        assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
        want.insert(id);
    }
    // Without a request id the layer makes one and hands it back.
    let head = http_request(port, "GET", "/v1/orders", &[], b"")
        .await
        .unwrap()
        .head;
    let generated = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .expect("a generated request id")
        .trim()
        .to_owned();
    want.insert(generated);
    let report = producer.close().await;
    assert_eq!(report.dropped_logs, 0);
    server.abort();

    drain_into_table(&env, &url, &want).await;
    let item = env
        .dynamodb
        .get_item()
        .table_name(TABLE)
        .key(
            "request_id",
            aws_sdk_dynamodb::types::AttributeValue::S("layer-5".into()),
        )
        .send()
        .await
        .unwrap()
        .item
        .expect("the row of layer-5");
    let s = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let n = |k: &str| item.get(k).and_then(|v| v.as_n().ok()).cloned();
    assert_eq!(s("method").as_deref(), Some("GET"));
    assert_eq!(s("path").as_deref(), Some("/missing"), "no query string");
    assert_eq!(n("status").as_deref(), Some("404"));
    assert_eq!(s("user_id").as_deref(), Some("u-7"));
    assert!(n("latency_ms").is_some());
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(text.as_bytes()).unwrap();
    enc.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_broke_before_now_lands_a_two_member_gzip_body_and_a_character_sqs_refuses() {
    // Before: a body of two gzip members (3 logs each) got 202 and lost the second member's
    // logs; a log holding U+FFFF (valid JSON, refused by SQS) got 503 and took its neighbour
    // with it. Now both requests are 202 and every log is in the table, content kept.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("ingest-edge", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir("ingest-edge");
    let ingest = start_ingest(&env, &dir, &url, "").await;
    let auth = format!("Bearer {KEY}");
    let a: String = (1..=3)
        .map(|i| log_line(&format!("gz-a{i}")) + "\n")
        .collect();
    let b: String = (1..=3)
        .map(|i| log_line(&format!("gz-b{i}")) + "\n")
        .collect();
    let mut body = gzip(&a);
    body.extend(gzip(&b));
    let (status, _, text) = post_logs(
        ingest.port,
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        &body,
    )
    .await;
    assert_eq!(status, 202, "{text}");
    assert!(text.contains("\"accepted\":6"), "{text}");
    let mut junk = gzip(&a);
    junk.extend(b"not gzip at all");
    let (status, _, text) = post_logs(
        ingest.port,
        &[("Authorization", &auth), ("Content-Encoding", "gzip")],
        &junk,
    )
    .await;
    assert_eq!(status, 400, "{text}");

    let odd = log_line("odd-ffff").replace(r#""path":"/p""#, "\"path\":\"/v1/x\u{ffff}y\u{fffe}\"");
    let body = format!("{odd}\n{}\n", log_line("odd-neighbour"));
    let (status, _, text) =
        post_logs(ingest.port, &[("Authorization", &auth)], body.as_bytes()).await;
    assert_eq!(status, 202, "{text}");

    let want: HashSet<String> = [
        "gz-a1",
        "gz-a2",
        "gz-a3",
        "gz-b1",
        "gz-b2",
        "gz-b3",
        "odd-ffff",
        "odd-neighbour",
    ]
    .map(String::from)
    .into();
    drain_into_table(&env, &url, &want).await;
    let row = env
        .dynamodb
        .get_item()
        .table_name(TABLE)
        .key(
            "request_id",
            aws_sdk_dynamodb::types::AttributeValue::S("odd-ffff".into()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        row.item().unwrap()["path"],
        aws_sdk_dynamodb::types::AttributeValue::S("/v1/x\u{ffff}y\u{fffe}".into()),
        "the characters SQS refuses travelled as escapes and arrived as themselves"
    );
    let (ok, _) = ingest.stop().await;
    assert!(ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_cannot_hold_ingest_open_and_sigterm_ends_it_in_the_bound() {
    // 300 connections send half a request line and stop, 100 more send headers and half a
    // body. /healthz still answers (the telemetry port, and the API once header timeouts free
    // slots), a real request still gets 202, and SIGTERM ends the process within
    // ingest.shutdown_timeout + producer.shutdown_timeout + a few seconds, keeping every 202'd
    // log.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("ingest-slow", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir("ingest-slow");
    let ingest = start_ingest(
        &env,
        &dir,
        &url,
        "header_read_timeout = \"2s\"\nbody_read_timeout = \"2s\"\nmax_connections = 200\nshutdown_timeout = \"3s\"\ndrain_delay = \"1s\"",
    )
    .await;
    let mut held = Vec::new();
    for i in 0..400 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ingest.port))
            .await
            .unwrap();
        let part: &[u8] = if i < 300 {
            b"POST /v1/lo"
        } else {
            b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"request_id\":"
        };
        let _ = s.write_all(part).await;
        held.push(s);
    }
    assert_eq!(
        try_http_get(ingest.child.telemetry_port(), "/healthz")
            .await
            .ok()
            .map(|r| r.0),
        Some(200)
    );
    // The header timeout frees the slots; a real request gets through.
    let auth = format!("Bearer {KEY}");
    let started = Instant::now();
    let status = loop {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            http_request(
                ingest.port,
                "POST",
                "/v1/logs",
                &[("Authorization", &auth)],
                log_line("slow-ok").as_bytes(),
            ),
        )
        .await;
        if let Ok(Ok(r)) = r {
            break r.status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "never served");
    };
    assert_eq!(status, 202);
    assert_eq!(
        try_http_get(ingest.port, "/healthz")
            .await
            .ok()
            .map(|r| r.0),
        Some(200)
    );
    // New half-sent requests, then SIGTERM while they are open.
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", ingest.port))
            .await
            .unwrap();
        let _ = s.write_all(b"POST /v1/logs HTTP/1.1\r\nHost").await;
        held.push(s);
    }
    let term = Instant::now();
    let (ok, _) = ingest.stop().await;
    let took = term.elapsed();
    assert!(ok, "exit 0");
    assert!(
        took < Duration::from_secs(1 + 3 + 10 + 3),
        "took {took:?} after SIGTERM"
    );
    drop(held);
    drain_into_table(&env, &url, &["slow-ok".to_string()].into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_on_a_fifo_queue_puts_each_group_field_value_in_its_own_message_group() {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = sluice_sqs::admin::create_queue(
        &env.sqs,
        "ingest-groups.fifo",
        &[(
            aws_sdk_sqs::types::QueueAttributeName::FifoQueue,
            "true".to_string(),
        )],
    )
    .await
    .unwrap();
    let dir = temp_dir("ingest-groups");
    let ingest = start_ingest(&env, &dir, &url, "").await;
    // producer.group_field comes from the environment here.
    drop(ingest);
    let config = dir.path().join("ingest.toml");
    let text = std::fs::read_to_string(&config).unwrap() + "group_field = \"tenant\"\n";
    std::fs::write(&config, text).unwrap();
    let ingest = restart_ingest(&env, &config).await;
    let auth = format!("Bearer {KEY}");
    let body: String = (0..12)
        .map(|i| {
            log_line(&format!("fifo-{i}")).replace(
                r#""status":200"#,
                &format!(
                    r#""status":200,"tenant":"{}""#,
                    ["acme", "globex", "tenant with spaces"][i % 3]
                ),
            ) + "\n"
        })
        .collect();
    let (status, _, text) =
        post_logs(ingest.port, &[("Authorization", &auth)], body.as_bytes()).await;
    assert_eq!(status, 202, "{text}");
    let (ok, _) = ingest.stop().await;
    assert!(ok);
    let mut groups = std::collections::BTreeMap::new();
    loop {
        let out = env
            .sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(10)
            .message_system_attribute_names(
                aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId,
            )
            .send()
            .await
            .unwrap();
        if out.messages().is_empty() {
            break;
        }
        for m in out.messages() {
            let g = m.attributes().unwrap()
                [&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId]
                .clone();
            let n = m.body().unwrap().lines().count();
            *groups.entry(g).or_insert(0) += n;
            env.sqs
                .delete_message()
                .queue_url(&url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(groups.len(), 3, "{groups:?}");
    assert_eq!(groups.get("acme"), Some(&4));
    assert_eq!(groups.get("globex"), Some(&4));
    assert!(
        groups.keys().any(|g| g.starts_with("h-")),
        "the invalid group became a valid one: {groups:?}"
    );
}

/// One piece of an adversarial request body: a line of NDJSON.
#[derive(Debug, Clone)]
enum Piece {
    /// A valid log, with a few awkward but valid strings in it.
    Valid {
        escaped_control: bool,
        noncharacter: bool,
    },
    /// Not JSON, on its own line.
    BadJson,
    /// A raw control character inside a string (JSON forbids it).
    RawControl,
    /// A lone surrogate escape, which is no character.
    LoneSurrogate,
    /// A number DynamoDB cannot store.
    HugeNumber,
    /// 40 levels of nesting (DynamoDB takes 32).
    Deep,
    /// A log larger than a message can carry.
    Oversize,
}

impl Piece {
    /// (status, whether it is refused) a request answers when this is its first bad piece.
    fn refusal(&self) -> Option<u16> {
        match self {
            Piece::Valid { .. } => None,
            Piece::Oversize => Some(413),
            _ => Some(400),
        }
    }

    fn line(&self, id: &str) -> String {
        let base = log_line(id);
        let with = |extra: &str| base.replacen('{', &format!("{{{extra},"), 1);
        match self {
            Piece::Valid {
                escaped_control,
                noncharacter,
            } => {
                let mut l = base.clone();
                if *escaped_control {
                    l = with(r#""note":"tab\u0001bell\u0007nul\u0000""#);
                }
                if *noncharacter {
                    l = l.replacen('{', "{\"odd\":\"a\u{fffe}b\u{ffff}c\",", 1);
                }
                l
            }
            Piece::BadJson => format!("{{\"request_id\": oops-{id}}}"),
            Piece::RawControl => with("\"note\":\"a\u{1}b\""),
            Piece::LoneSurrogate => with(r#""note":"\ud800""#),
            Piece::HugeNumber => with(r#""n":1e200"#),
            Piece::Deep => with(&format!(r#""deep":{}1{}"#, "[".repeat(40), "]".repeat(40))),
            Piece::Oversize => with(&format!(r#""pad":"{}""#, "x".repeat(300 * 1024))),
        }
    }
}

fn pieces() -> impl proptest::strategy::Strategy<Value = Piece> {
    use proptest::prelude::*;
    prop_oneof![
        12 => (any::<bool>(), any::<bool>()).prop_map(|(escaped_control, noncharacter)| Piece::Valid { escaped_control, noncharacter }),
        1 => Just(Piece::BadJson),
        1 => Just(Piece::RawControl),
        1 => Just(Piece::LoneSurrogate),
        1 => Just(Piece::HugeNumber),
        1 => Just(Piece::Deep),
        1 => Just(Piece::Oversize),
    ]
}

/// What the queue does while a request is sent.
#[derive(Debug, Clone, Copy)]
enum SqsWeather {
    Fine,
    Throttling,
    Errors,
    Outage,
    /// Ingest is killed (kill -9) before this request and started again.
    KillIngest,
}

fn weather() -> impl proptest::strategy::Strategy<Value = SqsWeather> {
    use proptest::prelude::*;
    prop_oneof![
        6 => Just(SqsWeather::Fine),
        1 => Just(SqsWeather::Throttling),
        1 => Just(SqsWeather::Errors),
        1 => Just(SqsWeather::Outage),
        1 => Just(SqsWeather::KillIngest),
    ]
}

#[derive(Debug, Clone)]
struct AdversarialRequest {
    pieces: Vec<Piece>,
    /// Gzip members the body is cut into (0: not compressed).
    gzip_members: usize,
    weather: SqsWeather,
}

fn requests() -> impl proptest::strategy::Strategy<Value = Vec<AdversarialRequest>> {
    use proptest::prelude::*;
    let valid =
        (any::<bool>(), any::<bool>()).prop_map(|(escaped_control, noncharacter)| Piece::Valid {
            escaped_control,
            noncharacter,
        });
    // Most requests are clean (every log must land); the rest carry bad pieces anywhere.
    let body = prop_oneof![
        3 => prop::collection::vec(valid, 1..60),
        2 => prop::collection::vec(pieces(), 1..12),
    ];
    prop::collection::vec(
        (body, 0usize..4, weather()).prop_map(|(pieces, gzip_members, weather)| {
            AdversarialRequest {
                pieces,
                gzip_members,
                weather,
            }
        }),
        25..40,
    )
}

async fn adversarial_run(case: usize, reqs: Vec<AdversarialRequest>) {
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let sim = env.sim.as_ref().unwrap();
    let url = env.create_queue("adversarial", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir(&format!("ingest-adversarial-{case}"));
    let mut ingest = start_ingest(&env, &dir, &url, "request_timeout = \"20s\"").await;
    let auth = format!("Bearer {KEY}");
    let mut accepted: HashSet<String> = HashSet::new();
    let mut answers: std::collections::BTreeMap<u16, usize> = Default::default();
    for (r, req) in reqs.iter().enumerate() {
        let faults = match req.weather {
            SqsWeather::Fine | SqsWeather::KillIngest => sluice_sim::Faults::default(),
            SqsWeather::Throttling => sluice_sim::Faults {
                throttle_rate: 0.6,
                only_ops: Some(vec!["SendMessageBatch".into()]),
                ..Default::default()
            },
            SqsWeather::Errors => sluice_sim::Faults {
                error_500_rate: 0.6,
                error_503_rate: 0.2,
                only_ops: Some(vec!["SendMessageBatch".into()]),
                ..Default::default()
            },
            SqsWeather::Outage => sluice_sim::Faults {
                reset_rate: 1.0,
                only_ops: Some(vec!["SendMessageBatch".into(), "GetQueueAttributes".into()]),
                ..Default::default()
            },
        };
        sim.set_faults(faults).unwrap();
        if let SqsWeather::KillIngest = req.weather {
            let config = ingest.config.clone();
            ingest.kill_9().await;
            ingest = restart_ingest(&env, &config).await;
        }
        let ids: Vec<String> = (0..req.pieces.len())
            .map(|p| format!("adv{case}-{r}-{p}"))
            .collect();
        let lines: Vec<String> = req
            .pieces
            .iter()
            .zip(&ids)
            .map(|(p, id)| p.line(id))
            .collect();
        let body_text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        let (body, gz) = if req.gzip_members == 0 {
            (body_text.into_bytes(), false)
        } else {
            // Cut at line boundaries into members.
            let per = lines.len().div_ceil(req.gzip_members).max(1);
            let mut b = Vec::new();
            for chunk in lines.chunks(per) {
                let text: String = chunk.iter().map(|l| format!("{l}\n")).collect();
                b.extend(gzip(&text));
            }
            (b, true)
        };
        let mut headers = vec![("Authorization", auth.as_str())];
        if gz {
            headers.push(("Content-Encoding", "gzip"));
        }
        let (status, _, text) = post_logs(ingest.port, &headers, &body).await;
        *answers.entry(status).or_default() += 1;
        let first_bad = req.pieces.iter().position(|p| p.refusal().is_some());
        match first_bad {
            None => {
                assert_eq!(status, 202, "request {r} ({req:?}): {text}");
                accepted.extend(ids);
            }
            Some(at) => {
                let want = req.pieces[at].refusal().unwrap();
                assert_eq!(status, want, "request {r} ({req:?}): {text}");
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                assert_eq!(v["line"], at + 1, "request {r}: names the bad line: {text}");
            }
        }
    }
    eprintln!(
        "adversarial case {case}: {} requests, answers {answers:?}, {} logs accepted, weathers {:?}",
        reqs.len(),
        accepted.len(),
        reqs.iter().map(|r| r.weather).collect::<Vec<_>>()
    );
    // The queue is fine again; a clean stop flushes what is spooled.
    sim.set_faults(sluice_sim::Faults::default()).unwrap();
    let config = ingest.config.clone();
    let (ok, _) = ingest.stop().await;
    assert!(ok);
    // Anything left in the spool goes at the next start.
    let ingest = restart_ingest(&env, &config).await;
    drain_into_table(&env, &url, &accepted).await;
    let (ok, _) = ingest.stop().await;
    assert!(ok);
    // What was refused is not in the table; what was accepted all is (checked above).
    let rows: HashSet<String> = env
        .scan_keys(TABLE, "request_id")
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        rows.is_subset(&accepted),
        "{:?}",
        rows.difference(&accepted).take(3).collect::<Vec<_>>()
    );
}

#[test]
fn adversarial_bodies_under_sqs_faults_get_202_with_every_log_landing_or_a_4xx_naming_the_line() {
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 3,
        failure_persistence: None,
        max_shrink_iters: 0,
        ..Config::default()
    });
    let case = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&requests(), |reqs| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(adversarial_run(n, reqs));
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigterm_ingest_reports_not_ready_and_keeps_serving_for_the_drain_delay() {
    // A rollout: SIGTERM arrives while the load balancer still sends. Ingest says not ready at
    // once, and keeps accepting and answering for ingest.drain_delay, so no connection is
    // refused before the endpoints are updated; then it closes, flushes, and exits 0.
    let env = TestEnv::start(Backend::Sim).await.unwrap();
    let url = env.create_queue("ingest-drain", 30).await.unwrap();
    env.create_table(TABLE, "request_id").await.unwrap();
    let dir = temp_dir("ingest-drain");
    let mut ingest = start_ingest(&env, &dir, &url, "drain_delay = \"3s\"").await;
    let auth = format!("Bearer {KEY}");
    let term = Instant::now();
    ingest.child.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        try_http_get(ingest.port, "/readyz").await.ok().map(|r| r.0),
        Some(503),
        "not ready as soon as SIGTERM arrives"
    );
    let mut accepted = std::collections::HashSet::new();
    for i in 0..5 {
        let key = format!("drain-{i}");
        let (status, _, body) = post_logs(
            ingest.port,
            &[("Authorization", &auth)],
            log_line(&key).as_bytes(),
        )
        .await;
        assert_eq!(status, 202, "a request during the drain delay: {body}");
        accepted.insert(key);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        term.elapsed() < Duration::from_secs(3),
        "all served within the delay"
    );
    // Exits after the drain.
    let status = ingest.child.wait(Duration::from_secs(30)).await;
    assert!(status.success());
    assert!(
        term.elapsed() >= Duration::from_secs(3),
        "the listener stayed open for the drain delay"
    );
    drain_into_table(&env, &url, &accepted).await;
}
