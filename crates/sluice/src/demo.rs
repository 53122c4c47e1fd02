//! `sluice demo`: the whole pipeline once, end to end, with a summary.
//!
//! Creates a queue and a table on the given endpoint, pushes a spike of request logs (some
//! messages carry several logs, some are delivered twice), runs the same pipeline `sluice run`
//! runs until the queue is drained, then reads the table back and reports what arrived:
//! `lost` counts logs whose row is missing, and must be 0.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use sluice_sqs::SqsSender;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::pipeline::Pipeline;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// SQS + DynamoDB endpoint to run against, e.g. a local MiniStack (scripts/demo.sh starts
    /// one). Credentials and region come from the environment when set, else test/us-east-1.
    #[arg(long, env = "SLUICE_DEMO_ENDPOINT", value_name = "URL")]
    pub endpoint: String,
    /// Distinct messages in the spike.
    #[arg(long, default_value_t = 2000)]
    pub messages: usize,
    /// Percent of messages that pack several logs (2 to 10, as a JSON array or NDJSON).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub multi_log_percent: u32,
    /// Percent of messages sent twice (duplicate deliveries; their logs must land once).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub duplicate_percent: u32,
    /// Write budget in WCU per second; unset writes unpaced.
    #[arg(long, value_name = "WCU")]
    pub wcu: Option<u32>,
    /// Give up when the queue is not drained after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the demo queue and table afterwards (they are deleted by default).
    #[arg(long)]
    pub keep: bool,
    /// Seed for the generated logs (the same seed gives the same spike).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Messages sent to the queue, duplicate deliveries included.
    pub messages_sent: usize,
    /// Logs in those messages, duplicates included.
    pub logs_sent: usize,
    /// Distinct request ids among them: the rows the table must end with.
    pub unique_keys: usize,
    /// Distinct request ids found in the table afterwards.
    pub written: usize,
    /// Logs that landed on an existing row instead of making a new one.
    pub duplicates_collapsed: usize,
    /// Request ids sent but missing from the table. Must be 0.
    pub lost: usize,
    /// Rows in the table that no sent log explains. Must be 0.
    pub unexpected_rows: usize,
    pub acked: u64,
    pub nacked: u64,
    pub drained: bool,
    pub duration_s: f64,
    pub messages_per_s: f64,
    pub wcu_budget: Option<u32>,
}

async fn sdk_config(endpoint: &str) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).endpoint_url(endpoint);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(Region::new("us-east-1"));
    }
    if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "sluice-demo",
        ));
    }
    loader.load().await
}

struct Spike {
    bodies: Vec<String>,
    logs: usize,
    keys: HashSet<String>,
}

fn make_log(rng: &mut StdRng, id: &str, now_ms: u128) -> serde_json::Value {
    const METHODS: [&str; 4] = ["GET", "GET", "POST", "PUT"];
    const PATHS: [&str; 5] = [
        "/v1/orders",
        "/v1/users/me",
        "/v1/search",
        "/healthz",
        "/v1/cart",
    ];
    const STATUS: [u16; 6] = [200, 200, 200, 201, 404, 500];
    let mut log = json!({
        "request_id": id,
        "ts": now_ms as u64 - rng.random_range(0..60_000u64),
        "method": METHODS[rng.random_range(0..METHODS.len())],
        "path": PATHS[rng.random_range(0..PATHS.len())],
        "status": STATUS[rng.random_range(0..STATUS.len())],
        "latency_ms": (rng.random_range(1.0..250.0f64) * 100.0).round() / 100.0,
        "attrs": {"region": "eu-west-1", "client": format!("app/{}", rng.random_range(1..9))},
    });
    if rng.random_bool(0.7) {
        log["user_id"] = json!(format!("u-{}", rng.random_range(1..5000)));
    }
    log
}

fn make_spike(args: &DemoArgs, run_id: &str) -> Spike {
    let mut rng = StdRng::seed_from_u64(args.seed);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let mut bodies = Vec::with_capacity(args.messages);
    let mut keys = HashSet::new();
    let mut logs = 0;
    for i in 0..args.messages {
        let multi = rng.random_range(0..100) < args.multi_log_percent;
        let count = if multi { rng.random_range(2..=10) } else { 1 };
        let mut entries = Vec::with_capacity(count);
        for j in 0..count {
            let id = format!("{run_id}-{i}-{j}");
            keys.insert(id.clone());
            entries.push(make_log(&mut rng, &id, now_ms));
        }
        logs += count;
        let body = match (count, i % 2) {
            (1, _) => entries[0].to_string(),
            (_, 0) => serde_json::Value::Array(entries).to_string(),
            _ => entries
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        };
        bodies.push(body);
    }
    let mut duplicates = Vec::new();
    for (body, n) in bodies.iter().zip(0..) {
        if rng.random_range(0..100) < args.duplicate_percent {
            logs += count_logs(body, n);
            duplicates.push(body.clone());
        }
    }
    bodies.extend(duplicates);
    bodies.shuffle(&mut rng);
    Spike { bodies, logs, keys }
}

fn count_logs(body: &str, _: usize) -> usize {
    sluice_core::decode_message(
        body.as_bytes(),
        &sluice_core::Schema {
            required_fields: vec![],
            ..Default::default()
        },
    )
    .map(|items| items.len())
    .unwrap_or(0)
}

fn progress(line: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}");
    } else {
        eprintln!("{line}");
    }
}

pub async fn demo(args: DemoArgs) -> Result<DemoSummary> {
    let sdk = sdk_config(&args.endpoint).await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
    let run_id = format!(
        "demo{}x{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        std::process::id()
    );
    let name = format!("sluice-{run_id}");
    let queue_url = sluice_sqs::admin::create_queue(&sqs, &name, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow!("{e} (is an SQS endpoint listening at {}?)", args.endpoint))?;
    sluice_dynamodb::admin::create_table(&dynamodb, &name, "request_id", None)
        .await
        .map_err(anyhow::Error::msg)?;
    eprintln!("demo: queue {queue_url}\ndemo: table {name}");

    let result = drive(&args, &sdk, &sqs, &dynamodb, &queue_url, &name, &run_id).await;
    if !args.keep {
        let _ = sluice_sqs::admin::delete_queue(&sqs, &queue_url).await;
        let _ = sluice_dynamodb::admin::delete_table(&dynamodb, &name).await;
    }
    let summary = result?;
    print_summary(&summary, args.json);
    Ok(summary)
}

async fn drive(
    args: &DemoArgs,
    sdk: &SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    queue_url: &str,
    table: &str,
    run_id: &str,
) -> Result<DemoSummary> {
    let spike = make_spike(args, run_id);
    let total = spike.bodies.len();
    let started = Instant::now();

    // The spike: eight senders in parallel, as a fleet of API servers would.
    let sender = SqsSender::new(sqs.clone(), queue_url);
    let bodies = Arc::new(spike.bodies);
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    let chunk = total.div_ceil(8).max(1);
    for part in 0..total.div_ceil(chunk) {
        let (sender, bodies, sent) = (sender.clone(), bodies.clone(), sent.clone());
        senders.spawn(async move {
            let slice = &bodies[part * chunk..((part + 1) * chunk).min(bodies.len())];
            for batch in slice.chunks(10) {
                sender.send_all(batch).await?;
                sent.fetch_add(batch.len(), Ordering::Relaxed);
            }
            Ok::<_, sluice_sqs::SendError>(())
        });
    }
    let mut last = Instant::now();
    while let Some(r) = senders.join_next().await {
        r.context("sender task")??;
        if last.elapsed() > Duration::from_millis(500) {
            progress(&format!(
                "sending spike: {}/{total} messages",
                sent.load(Ordering::Relaxed)
            ));
            last = Instant::now();
        }
    }
    progress(&format!(
        "sent {total} messages ({} logs, {} distinct request ids) in {:.1}s\n",
        spike.logs,
        spike.keys.len(),
        started.elapsed().as_secs_f64()
    ));

    let mut settings = Settings::default();
    settings.sqs.queue_url = queue_url.to_string();
    settings.sqs.pollers = 8;
    settings.sqs.visibility_timeout = Some(Duration::from_secs(60));
    settings.dynamodb.table = table.to_string();
    settings.rate.wcu_per_second = args.wcu;
    settings.validate()?;
    let pipeline = Pipeline::build(&settings, sdk, sdk).await?;
    let stats = pipeline.stats();
    let shutdown = CancellationToken::new();
    let drain_started = Instant::now();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));

    let mut drained = false;
    while drain_started.elapsed() < args.timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = stats.snapshot();
        let (visible, in_flight) = sluice_sqs::admin::queue_counts(sqs, queue_url)
            .await
            .map_err(anyhow::Error::msg)?;
        let secs = drain_started.elapsed().as_secs_f64();
        progress(&format!(
            "draining: acked {}/{total} | queue {visible} visible, {in_flight} in flight | {:.0} msg/s",
            s.acked,
            s.acked as f64 / secs.max(0.001)
        ));
        if s.acked as usize >= total && visible == 0 && in_flight == 0 && s.in_flight == 0 {
            // Counts lag right after a burst: confirm once more.
            tokio::time::sleep(Duration::from_millis(300)).await;
            if sluice_sqs::admin::queue_counts(sqs, queue_url).await == Ok((0, 0)) {
                drained = true;
                break;
            }
        }
    }
    let drain_s = drain_started.elapsed().as_secs_f64();
    eprintln!();
    shutdown.cancel();
    let final_stats = running.await.context("pipeline task")?;

    let rows = sluice_dynamodb::admin::scan_keys(dynamodb, table, "request_id")
        .await
        .map_err(anyhow::Error::msg)?;
    let found: HashSet<String> = rows.into_iter().collect();
    let written = spike.keys.intersection(&found).count();
    Ok(DemoSummary {
        messages_sent: total,
        logs_sent: spike.logs,
        unique_keys: spike.keys.len(),
        written,
        duplicates_collapsed: spike.logs - spike.keys.len(),
        lost: spike.keys.len() - written,
        unexpected_rows: found.len() - written,
        acked: final_stats.acked,
        nacked: final_stats.nacked,
        drained,
        duration_s: (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        messages_per_s: (total as f64 / drain_s.max(0.001)).round(),
        wcu_budget: args.wcu,
    })
}

fn print_summary(s: &DemoSummary, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    let rows: [(&str, String); 12] = [
        ("messages sent", s.messages_sent.to_string()),
        ("logs sent", s.logs_sent.to_string()),
        ("distinct request ids", s.unique_keys.to_string()),
        ("rows written", s.written.to_string()),
        ("duplicates collapsed", s.duplicates_collapsed.to_string()),
        ("lost", s.lost.to_string()),
        ("unexpected rows", s.unexpected_rows.to_string()),
        ("messages acked", s.acked.to_string()),
        ("messages nacked", s.nacked.to_string()),
        ("drained", s.drained.to_string()),
        ("drain rate", format!("{} msg/s", s.messages_per_s)),
        ("total time", format!("{:.1} s", s.duration_s)),
    ];
    println!("\nsluice demo summary");
    println!("{}", "-".repeat(34));
    for (k, v) in rows {
        println!("{k:<22}{v:>12}");
    }
    println!(
        "\n{}",
        if s.lost == 0 && s.unexpected_rows == 0 && s.drained {
            "every log reached the table exactly once per request id (lost = 0)"
        } else {
            "LOGS MISSING: see the counts above"
        }
    );
}
