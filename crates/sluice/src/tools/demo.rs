//! `sluice demo`: the whole pipeline once, end to end, in one process, with a summary.
//!
//! By default it starts sluice-sim (SQS + DynamoDB that enforces provisioned write capacity) on
//! a free loopback port, creates a queue with a dead-letter queue (maxReceiveCount 3) and a table
//! with small provisioned capacity, pushes a spike of request logs (some messages carry several
//! logs, some are delivered twice, a few are poison), drains it with the same pipeline
//! `sluice run` runs, paced at the table's capacity, then reads the table back. `lost` counts
//! request ids whose row is missing, and must be 0.
//! `--endpoint URL` runs the same against another server (MiniStack, DynamoDB Local + an SQS).

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow};
use aws_config::SdkConfig;
use aws_sdk_sqs::types::QueueAttributeName;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use sluice_producer::sqs::SqsTransport;
use sluice_sim::{SimConfig, SimServer};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::pipeline::Pipeline;
use crate::tools::load::{LogGen, Shape, SizeDist, progress, sample_ndjson};

const MAX_RECEIVE_COUNT: u32 = 3;

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Distinct messages in the spike (duplicate deliveries and poison come on top).
    #[arg(long, default_value_t = 100_000)]
    pub messages: usize,
    /// Write capacity the demo table is provisioned with, in WCU per second.
    #[arg(long, default_value_t = 5000, value_name = "WCU")]
    pub provisioned_wcu: u32,
    /// sluice's write budget in WCU per second. Default: discovered from the table like
    /// `sluice run` does, target_utilization (0.98) × provisioned capacity.
    #[arg(long, value_name = "WCU")]
    pub wcu: Option<u32>,
    /// Percent of messages that pack several logs (2 to 10, as a JSON array or NDJSON).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub multi_log_percent: u32,
    /// Percent of messages delivered twice (their logs must still land once).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub duplicate_percent: u32,
    /// Poison messages in the spike (not JSON, missing fields, not objects, over 400 KB); they
    /// end in the dead-letter queue.
    #[arg(long, default_value_t = 8)]
    pub poison: usize,
    /// Run against this SQS + DynamoDB endpoint instead of the embedded simulator. Credentials
    /// and region come from the environment when set, else test / us-east-1.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Give up when the queue is not drained after this long.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Keep the demo queues and table afterwards (with --endpoint; they are deleted by default).
    #[arg(long)]
    pub keep: bool,
    /// Seed for the generated logs (the same seed gives the same spike).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// What the logs look like: `realistic` (an API server's access log, 1–3 KB) or `padded`
    /// (a small log padded with random text to 250–1000 bytes).
    #[arg(long, value_enum, default_value_t = Shape::Realistic)]
    pub shape: Shape,
    /// How items are stored: `zstd` trains a dictionary on 2,000 logs of the same shape (another
    /// seed: earlier traffic), stores it in the table and compresses with it; `none` writes
    /// plain items.
    #[arg(long, value_enum, default_value_t = DemoCompression::Zstd)]
    pub compression: DemoCompression,
    /// The look-aside write cache (on by default): a duplicate delivery of a log already written
    /// is acked without a write. `--cache false` turns it off.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub cache: bool,
}

/// `sluice demo --compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DemoCompression {
    None,
    Zstd,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    /// Messages sent to the queue: distinct, duplicate deliveries and poison.
    pub sent: usize,
    /// Logs in the valid messages, duplicates included.
    pub logs_sent: usize,
    /// Distinct request ids among them: the rows the table must end with.
    pub unique_keys: usize,
    /// Distinct request ids found in the table afterwards.
    pub written: usize,
    /// Logs that landed on an existing row instead of making a new one.
    pub duplicates_collapsed: usize,
    /// Request ids sent but missing from the table. Must be 0.
    pub lost: usize,
    /// Rows no valid log explains (a poison log written by mistake, say). Must be 0.
    pub unexpected_rows: usize,
    /// Messages in the dead-letter queue: the poison, after maxReceiveCount receives.
    pub dead_lettered: u64,
    pub poison_sent: usize,
    /// Write requests the table refused for capacity (ProvisionedThroughputExceeded).
    pub throttled_requests: u64,
    /// Items the table handed back as UnprocessedItems.
    pub unprocessed_items: u64,
    pub provisioned_wcu: u32,
    pub budget_wcu: u32,
    /// Highest WCU consumed in one wall-clock second.
    pub peak_wcu_per_s: f64,
    /// WCU consumed per second while writing.
    pub mean_wcu_per_s: f64,
    /// Consumed WCU / (provisioned WCU × writing time): how much of the table's capacity the
    /// drain used.
    pub utilization: f64,
    pub consumed_wcu: u64,
    /// The physical minimum drain time: consumed WCU / provisioned WCU per second.
    pub min_drain_s: f64,
    /// From the start of the drain to the last write.
    pub write_s: f64,
    pub acked: u64,
    pub nacked: u64,
    pub drained: bool,
    pub drain_s: f64,
    pub duration_s: f64,
    pub messages_per_s: f64,
    /// Where the numbers come from: "sluice-sim" or the endpoint.
    pub backend: String,
    /// The logs' shape.
    pub shape: Shape,
    /// How items were stored.
    pub compression: DemoCompression,
    /// Whether the write cache was on.
    pub cache: bool,
    /// Logs delivered (written, or acked from the write cache) per WCU consumed.
    pub logs_per_wcu: f64,
    /// WCU consumed per million logs delivered.
    pub wcu_per_million_logs: f64,
    /// Share of the plain, uncached cost compression saved.
    pub saved_by_compression: f64,
    /// Share of the plain, uncached cost the write cache saved.
    pub saved_by_cache: f64,
    /// Logs acked from the write cache without a write.
    pub cache_skipped_logs: u64,
    /// The compression dictionary's id, when compressed.
    pub dictionary_id: Option<u32>,
}

struct Spike {
    bodies: Vec<String>,
    logs: usize,
    keys: HashSet<String>,
    poison: usize,
}

/// Messages that can never be written, one of each kind in turn.
fn poison_body(n: usize, run_id: &str) -> String {
    match n % 4 {
        0 => format!("this is not JSON {n}"),
        1 => json!({"request_id": format!("{run_id}-poison-{n}"), "ts": 1, "path": "/", "status": 200, "latency_ms": 1})
            .to_string(), // no `method`
        2 => "[1, 2, 3]".to_string(),
        // An item over 400 KB, plain or compressed: random text, which zstd cannot shrink
        // below 400 KB (a run of one letter would compress to a few bytes and be writable).
        _ => json!({"request_id": format!("{run_id}-poison-{n}"), "ts": 1, "method": "GET",
                    "path": incompressible(n as u64, 700 * 1024), "status": 200, "latency_ms": 1})
        .to_string(),
    }
}

/// `len` random letters and digits: about 6 bits of entropy a byte, so 700 KiB of it stay over
/// 500 KB compressed.
fn incompressible(seed: u64, len: usize) -> String {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len)
        .map(|_| A[rng.random_range(0..A.len())] as char)
        .collect::<String>()
}

fn make_spike(args: &DemoArgs, run_id: &str) -> Spike {
    let mut rng = StdRng::seed_from_u64(args.seed);
    // The logs themselves come from the load generator (`sluice load`): realistic ones of 1–3
    // KB, or padded ones of 250-1000 bytes.
    let mut logs_gen = LogGen::new(
        run_id,
        args.seed,
        SizeDist::Uniform(250, 1000),
        0.0,
        None,
        0,
    )
    .with_shape(args.shape);
    let mut bodies = Vec::with_capacity(args.messages + args.messages / 8 + args.poison);
    let mut keys = HashSet::new();
    let mut logs = 0;
    for i in 0..args.messages {
        let multi = rng.random_range(0..100) < args.multi_log_percent;
        let count = if multi { rng.random_range(2..=10) } else { 1 };
        let mut entries = Vec::with_capacity(count);
        for j in 0..count {
            let id = format!("{run_id}-{i}-{j}");
            keys.insert(id.clone());
            entries.push(logs_gen.log_for(id).json);
        }
        let body = match (count, i % 2) {
            (1, _) => entries.swap_remove(0),
            (_, 0) => format!("[{}]", entries.join(",")),
            _ => entries.join("\n"),
        };
        bodies.push((body, count));
    }
    let duplicates: Vec<(String, usize)> = bodies
        .iter()
        .filter(|_| rng.random_range(0..100) < args.duplicate_percent)
        .cloned()
        .collect();
    bodies.extend(duplicates);
    logs += bodies.iter().map(|(_, n)| n).sum::<usize>();
    let mut bodies: Vec<String> = bodies.into_iter().map(|(b, _)| b).collect();
    bodies.extend((0..args.poison).map(|n| poison_body(n, run_id)));
    bodies.shuffle(&mut rng);
    Spike {
        bodies,
        logs,
        keys,
        poison: args.poison,
    }
}

pub async fn demo(args: DemoArgs) -> Result<DemoSummary> {
    let sim = match &args.endpoint {
        Some(_) => None,
        None => Some(
            SimServer::start("127.0.0.1:0".parse()?, SimConfig::default())
                .await
                .context("cannot start the embedded simulator")?,
        ),
    };
    let endpoint = match (&sim, &args.endpoint) {
        (Some(s), _) => s.endpoint().to_string(),
        (None, Some(e)) => e.clone(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let backend = if sim.is_some() {
        "sluice-sim".to_string()
    } else {
        endpoint.clone()
    };
    let sdk = crate::tools::load::sdk_config(Some(&endpoint)).await;
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

    let dlq_url = sluice_sqs::admin::create_queue(&sqs, &format!("{name}-dlq"), &[])
        .await
        .map_err(|e| anyhow!("{e} (is an SQS endpoint listening at {endpoint}?)"))?;
    let dlq_arn = sluice_sqs::admin::queue_arn(&sqs, &dlq_url)
        .await
        .map_err(anyhow::Error::msg)?;
    let redrive =
        json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}).to_string();
    let queue_url = sluice_sqs::admin::create_queue(
        &sqs,
        &name,
        &[
            (QueueAttributeName::VisibilityTimeout, "60".to_string()),
            (QueueAttributeName::RedrivePolicy, redrive),
        ],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    sluice_dynamodb::admin::create_table(
        &dynamodb,
        &name,
        "request_id",
        Some(i64::from(args.provisioned_wcu)),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "demo on {backend}: queue {name} (dead letters after {MAX_RECEIVE_COUNT} receives to {name}-dlq), table {name} provisioned at {} WCU/s",
        args.provisioned_wcu
    );

    let queues = Queues {
        main: &queue_url,
        dlq: &dlq_url,
    };
    let result = drive(
        &args,
        &sdk,
        &sqs,
        &dynamodb,
        queues,
        &name,
        &run_id,
        sim.as_ref(),
        backend,
    )
    .await;
    if args.endpoint.is_some() && !args.keep {
        let _ = sluice_sqs::admin::delete_queue(&sqs, &queue_url).await;
        let _ = sluice_sqs::admin::delete_queue(&sqs, &dlq_url).await;
        let _ = sluice_dynamodb::admin::delete_table(&dynamodb, &name).await;
    }
    let summary = result?;
    print_summary(&summary, args.json);
    Ok(summary)
}

#[derive(Clone, Copy)]
struct Queues<'a> {
    main: &'a str,
    dlq: &'a str,
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    args: &DemoArgs,
    sdk: &SdkConfig,
    sqs: &aws_sdk_sqs::Client,
    dynamodb: &aws_sdk_dynamodb::Client,
    queues: Queues<'_>,
    table: &str,
    run_id: &str,
    sim: Option<&SimServer>,
    backend: String,
) -> Result<DemoSummary> {
    let mut spike = make_spike(args, run_id);
    let total = spike.bodies.len();
    let started = Instant::now();
    send_spike(sqs, queues.main, std::mem::take(&mut spike.bodies)).await?;
    progress(
        false,
        &format!(
            "sent {total} messages ({} logs, {} distinct request ids, {} poison) in {:.1}s",
            spike.logs,
            spike.keys.len(),
            spike.poison,
            started.elapsed().as_secs_f64()
        ),
    );
    end_progress_line();

    let mut settings = demo_settings(args, queues, table)?;
    let dictionary_id = match args.compression {
        DemoCompression::Zstd => Some(train_dictionary(args, &settings, dynamodb).await?),
        DemoCompression::None => None,
    };
    if let Some(id) = dictionary_id {
        settings.schema.compression = crate::config::CompressionKind::Zstd;
        settings.schema.dictionary_id = Some(id);
    }
    let pipeline = Pipeline::build(&settings, sdk, sdk).await?;
    let budget = pipeline.limiter().budget().unwrap_or(0.0).round() as u32;
    let watch = DrainWatch {
        stats: pipeline.stats(),
        writer: pipeline.writer_stats(),
        started: Instant::now(),
        started_ms: sluice_core::time::epoch_ms(),
    };
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(pipeline.run(shutdown.clone()));
    let (drained, own_peak) = watch.wait(args, sqs, queues).await?;
    let drain_s = watch.started.elapsed().as_secs_f64();
    end_progress_line();
    shutdown.cancel();
    let final_stats = running.await.context("pipeline task")?;

    let table_check = TableCheck::read(sqs, dynamodb, queues, table, &spike).await?;
    let capacity = Capacity::of(sim, table, &watch.writer, own_peak);
    let run = DemoRun {
        total,
        budget,
        drained,
        drain_s,
        duration_s: started.elapsed().as_secs_f64(),
        write_s: watch.write_s(),
        final_stats,
        backend,
        bill: watch.writer.bill(),
        dictionary_id,
    };
    Ok(summarize(args, &spike, &table_check, &capacity, run))
}

/// Trains a dictionary on 2,000 logs of the spike's shape made with another seed (the traffic
/// before the spike), stores it in the table and returns its id: what an operator does with
/// `sluice dict train`.
async fn train_dictionary(
    args: &DemoArgs,
    settings: &Settings,
    dynamodb: &aws_sdk_dynamodb::Client,
) -> Result<u32> {
    let body = sample_ndjson(
        args.seed ^ 0x5eed,
        SizeDist::Uniform(250, 1000),
        args.shape,
        2000,
    );
    let trained = crate::items::dict::train_and_store(
        dynamodb,
        &settings.dynamodb.table,
        &settings.schema.key_attribute,
        &[body],
        &settings.schema(),
        &crate::items::plain_attributes(settings, &[]),
        32 * 1024,
    )
    .await?;
    eprintln!(
        "trained dictionary {} ({} bytes) on {} sample logs: {:.0}% smaller on them",
        trained.id,
        trained.bytes,
        trained.samples,
        100.0 * (1.0 - trained.compressed_bytes as f64 / trained.plain_bytes.max(1) as f64)
    );
    Ok(trained.id)
}

/// Ends a progress line that a terminal redraws in place.
fn end_progress_line() {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// The spike: eight senders in parallel, as a fleet of API servers would; progress every half
/// second.
async fn send_spike(sqs: &aws_sdk_sqs::Client, queue: &str, bodies: Vec<String>) -> Result<()> {
    let total = bodies.len();
    let sender = SqsTransport::new(sqs.clone(), queue);
    let bodies = Arc::new(bodies);
    let sent = Arc::new(AtomicUsize::new(0));
    let mut senders = tokio::task::JoinSet::new();
    let chunk = total.div_ceil(8).max(1);
    for part in 0..total.div_ceil(chunk) {
        let (sender, bodies, sent) = (sender.clone(), bodies.clone(), sent.clone());
        senders.spawn(async move {
            let slice = &bodies[part * chunk..((part + 1) * chunk).min(bodies.len())];
            for batch in slice.chunks(10) {
                sender.send_bodies(batch).await?;
                sent.fetch_add(batch.len(), Ordering::Relaxed);
            }
            Ok::<_, sluice_producer::SendAllError>(())
        });
    }
    let mut last = Instant::now();
    while let Some(r) = senders.join_next().await {
        r.context("sender task")??;
        if last.elapsed() > Duration::from_millis(500) {
            progress(
                false,
                &format!(
                    "sending spike: {}/{total} messages",
                    sent.load(Ordering::Relaxed)
                ),
            );
            last = Instant::now();
        }
    }
    Ok(())
}

/// The pipeline's settings: `sluice run`'s defaults on the demo queue and table.
fn demo_settings(args: &DemoArgs, queues: Queues<'_>, table: &str) -> Result<Settings> {
    let mut settings = Settings::default();
    settings.sqs.queue_url = Some(queues.main.parse().context("the demo queue's URL")?);
    settings.sqs.pollers = std::num::NonZeroUsize::new(8).expect("8 > 0");
    settings.sqs.visibility_timeout = Some(Duration::from_secs(60));
    // Poison returns at once so the queue's redrive moves it to the DLQ within the demo.
    settings.sqs.poison_nack_delay = Duration::ZERO;
    settings.dynamodb.table = table.to_string();
    settings.rate.wcu_per_second = args.wcu.and_then(std::num::NonZeroU32::new);
    settings.worker.max_in_flight = 2000;
    settings.cache.enabled = args.cache;
    settings.validate()?;
    Ok(settings)
}

/// Watches the running pipeline drain the queue.
struct DrainWatch {
    stats: Arc<sluice_core::EngineStats>,
    writer: Arc<sluice_core::WriterStats>,
    started: Instant,
    started_ms: u64,
}

impl DrainWatch {
    /// Once a second until --timeout: the progress line, and drained when the queue and the
    /// pipeline are idle at two polls in a row. Returns (drained, the highest WCU per second
    /// the writer saw).
    async fn wait(
        &self,
        args: &DemoArgs,
        sqs: &aws_sdk_sqs::Client,
        queues: Queues<'_>,
    ) -> Result<(bool, f64)> {
        let mut empty_polls = 0;
        let (mut last_wcu, mut last_tick) = (0u64, Instant::now());
        let mut own_peak = 0.0f64;
        while self.started.elapsed() < args.timeout {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let (visible, in_flight) = sluice_sqs::admin::queue_counts(sqs, queues.main)
                .await
                .map_err(anyhow::Error::msg)?;
            let (dead, _) = sluice_sqs::admin::queue_counts(sqs, queues.dlq)
                .await
                .map_err(anyhow::Error::msg)?;
            let wcu = self.writer.wcu_consumed.load(Ordering::Relaxed);
            let rate = (wcu - last_wcu) as f64 / last_tick.elapsed().as_secs_f64();
            own_peak = own_peak.max(rate);
            (last_wcu, last_tick) = (wcu, Instant::now());
            progress(
                false,
                &format!(
                    "draining {:5.1}s | backlog {visible:>7} (+{in_flight} in flight) | written {:>7} logs | {:>6.0} WCU/s of {} provisioned | dead letters {dead}",
                    self.started.elapsed().as_secs_f64(),
                    self.writer.logs_written.load(Ordering::Relaxed),
                    rate,
                    args.provisioned_wcu,
                ),
            );
            let idle =
                visible == 0 && in_flight == 0 && self.stats.in_flight.load(Ordering::Relaxed) == 0;
            empty_polls = if idle { empty_polls + 1 } else { 0 };
            if empty_polls >= 2 {
                return Ok((true, own_peak));
            }
        }
        Ok((false, own_peak))
    }

    /// Writing time: from the start of the drain to the last write (the drain loop's own
    /// polling granularity is not the pipeline's).
    fn write_s(&self) -> f64 {
        let last_write_ms = self.writer.last_write_ms.load(Ordering::Relaxed);
        (last_write_ms.saturating_sub(self.started_ms) as f64 / 1000.0).max(0.001)
    }
}

/// What the table and the dead-letter queue hold after the drain.
struct TableCheck {
    /// Request ids of the spike found in the table.
    written: usize,
    /// Every row in the table.
    rows: usize,
    dead_lettered: u64,
}

impl TableCheck {
    async fn read(
        sqs: &aws_sdk_sqs::Client,
        dynamodb: &aws_sdk_dynamodb::Client,
        queues: Queues<'_>,
        table: &str,
        spike: &Spike,
    ) -> Result<TableCheck> {
        let rows = sluice_dynamodb::admin::scan_keys(dynamodb, table, "request_id")
            .await
            .map_err(anyhow::Error::msg)?;
        // The compression dictionary is a row of the table too, and expected.
        let found: HashSet<String> = rows
            .into_iter()
            .filter(|k| !sluice_core::stored::is_dictionary_key(k))
            .collect();
        let written = spike.keys.intersection(&found).count();
        let (dead_lettered, _) = sluice_sqs::admin::queue_counts(sqs, queues.dlq)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(TableCheck {
            written,
            rows: found.len(),
            dead_lettered,
        })
    }
}

/// The drain's capacity figures: the simulator's own account of the table when there is one
/// (the one that counts), else the writer's.
struct Capacity {
    throttled: u64,
    unprocessed: u64,
    peak: f64,
    consumed: f64,
}

impl Capacity {
    fn of(
        sim: Option<&SimServer>,
        table: &str,
        writer: &sluice_core::WriterStats,
        own_peak: f64,
    ) -> Capacity {
        match sim.and_then(|s| s.capacity_report(table)) {
            Some(r) => Capacity {
                throttled: r["throttled_requests"].as_u64().unwrap_or(0),
                unprocessed: r["unprocessed_items"].as_u64().unwrap_or(0),
                peak: r["peak_wcu_per_s"].as_f64().unwrap_or(0.0),
                consumed: r["consumed_wcu_total"].as_f64().unwrap_or(0.0),
            },
            None => Capacity {
                throttled: writer.throttled_requests.load(Ordering::Relaxed),
                unprocessed: writer.unprocessed_retried.load(Ordering::Relaxed),
                peak: own_peak,
                consumed: writer.wcu_consumed.load(Ordering::Relaxed) as f64,
            },
        }
    }
}

/// The rest of what the summary reports: the run's own figures.
struct DemoRun {
    total: usize,
    budget: u32,
    drained: bool,
    drain_s: f64,
    duration_s: f64,
    write_s: f64,
    final_stats: sluice_core::StatsSnapshot,
    backend: String,
    bill: sluice_core::Bill,
    dictionary_id: Option<u32>,
}

fn summarize(
    args: &DemoArgs,
    spike: &Spike,
    table: &TableCheck,
    capacity: &Capacity,
    run: DemoRun,
) -> DemoSummary {
    let (consumed, write_s, drain_s) = (capacity.consumed, run.write_s, run.drain_s);
    let mean = consumed / write_s;
    let utilization = consumed / (f64::from(args.provisioned_wcu) * write_s);
    let round1 = |x: f64| (x * 10.0).round() / 10.0;
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    // The table's own account of what it consumed (the sim's, when there is one).
    let logs_per_wcu = run.bill.logs as f64 / consumed.max(1.0);
    DemoSummary {
        shape: args.shape,
        compression: args.compression,
        cache: args.cache,
        logs_per_wcu: round3(logs_per_wcu),
        wcu_per_million_logs: if logs_per_wcu > 0.0 {
            (1e6 / logs_per_wcu).round()
        } else {
            0.0
        },
        saved_by_compression: round3(run.bill.saved_by_compression),
        saved_by_cache: round3(run.bill.saved_by_cache),
        cache_skipped_logs: run.bill.cache_skipped_logs,
        dictionary_id: run.dictionary_id,
        sent: run.total,
        logs_sent: spike.logs,
        unique_keys: spike.keys.len(),
        written: table.written,
        duplicates_collapsed: spike.logs - spike.keys.len(),
        lost: spike.keys.len() - table.written,
        unexpected_rows: table.rows - table.written,
        dead_lettered: table.dead_lettered,
        poison_sent: spike.poison,
        throttled_requests: capacity.throttled,
        unprocessed_items: capacity.unprocessed,
        provisioned_wcu: args.provisioned_wcu,
        budget_wcu: run.budget,
        peak_wcu_per_s: round1(capacity.peak),
        mean_wcu_per_s: round1(mean),
        utilization: (utilization * 1000.0).round() / 1000.0,
        consumed_wcu: consumed.round() as u64,
        min_drain_s: round1(consumed / f64::from(args.provisioned_wcu)),
        write_s: round1(write_s),
        acked: run.final_stats.acked,
        nacked: run.final_stats.nacked,
        drained: run.drained,
        drain_s: round1(drain_s),
        duration_s: round1(run.duration_s),
        messages_per_s: (run.total as f64 / drain_s.max(0.001)).round(),
        backend: run.backend,
    }
}

fn print_summary(s: &DemoSummary, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    let rows: Vec<(&str, String)> = vec![
        ("messages sent", s.sent.to_string()),
        ("logs sent", s.logs_sent.to_string()),
        ("distinct request ids", s.unique_keys.to_string()),
        ("rows written", s.written.to_string()),
        ("duplicates collapsed", s.duplicates_collapsed.to_string()),
        ("lost", s.lost.to_string()),
        ("unexpected rows", s.unexpected_rows.to_string()),
        (
            "dead-lettered",
            format!("{} of {} poison", s.dead_lettered, s.poison_sent),
        ),
        ("throttled requests", s.throttled_requests.to_string()),
        ("unprocessed items", s.unprocessed_items.to_string()),
        ("provisioned WCU/s", s.provisioned_wcu.to_string()),
        ("peak WCU in 1 s", format!("{}", s.peak_wcu_per_s)),
        ("mean WCU/s", format!("{}", s.mean_wcu_per_s)),
        ("budget WCU/s", s.budget_wcu.to_string()),
        ("utilization", format!("{:.1}%", s.utilization * 100.0)),
        (
            "writing time",
            format!("{} s (minimum {} s)", s.write_s, s.min_drain_s),
        ),
        ("drain time", format!("{} s", s.drain_s)),
        ("drain rate", format!("{} msg/s", s.messages_per_s)),
        ("total time", format!("{} s", s.duration_s)),
        ("logs shape", s.shape.to_string()),
        (
            "items",
            match s.dictionary_id {
                Some(id) => format!("zstd, dictionary {id}"),
                None => "plain".to_string(),
            },
        ),
        ("logs per WCU", format!("{:.3}", s.logs_per_wcu)),
        (
            "WCU per million logs",
            format!("{}", s.wcu_per_million_logs),
        ),
        (
            "saved by compression",
            format!("{:.1}%", s.saved_by_compression * 100.0),
        ),
        (
            "saved by the cache",
            format!(
                "{:.1}% ({} logs)",
                s.saved_by_cache * 100.0,
                s.cache_skipped_logs
            ),
        ),
    ];
    println!("\nsluice demo summary ({})", s.backend);
    println!("{}", "-".repeat(40));
    for (k, v) in rows {
        println!("{k:<22}{v:>18}");
    }
    let ok = s.lost == 0 && s.unexpected_rows == 0 && s.drained;
    println!(
        "\n{}",
        if ok {
            "every log reached the table exactly once per request id (lost = 0)"
        } else {
            "LOGS MISSING or queue not drained: see the counts above"
        }
    );
}

/// `sluice demo`: exit 1 when a log was lost. Poison is expected and reported in the summary
/// (RUST_LOG shows more).
pub async fn command(args: DemoArgs) -> crate::command::Outcome {
    let summary = crate::command::short_lived("error", demo(args)).await?;
    Ok(if summary.lost == 0 { 0 } else { 1 })
}
