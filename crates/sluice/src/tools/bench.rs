//! `sluice bench-pacing`: how fully, and how safely, sluice uses the write capacity of whatever
//! limit binds: the table, a global secondary index, an on-demand maximum, a hot key's partition.
//!
//! For each scenario: sluice-sim runs in this process with a table (and, for some scenarios, an
//! index) metered as DynamoDB meters it; N `sluice run` processes (children of this one,
//! configured through the environment, as a fleet would be) drain a backlog of logs of mixed sizes
//! (0.2-3 KB, so 1-3 WCU each, or 2-3 KB for `-3kb`); the binding limit's own per-second account
//! then gives the figures. The simulated table and indexes keep only one second of burst credit
//! (DynamoDB keeps 300 s), so any overshoot shows up as a throttle instead of being absorbed by
//! credit.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use aws_config::{BehaviorVersion, Region};
use serde::Serialize;
use sluice_dynamodb::admin::{IndexSpec, TableSpec, create_table_from};
use sluice_producer::sqs::SqsTransport;
use sluice_sim::meter::PARTITION_WCU;
use sluice_sim::{SimConfig, SimServer, TableSettings};

use crate::tools::load::{LogGen, Shape, SizeDist};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Provisioned write capacity of the table, WCU per second.
    #[arg(long, default_value_t = 1000, value_name = "WCU")]
    pub provisioned_wcu: u32,
    /// Size of the backlog, in seconds of provisioned capacity (its WCU ÷ W).
    #[arg(long, default_value_t = 30)]
    pub backlog_seconds: u32,
    /// Scenarios to run: `N` (N instances, each pacing to 1/N of the budget), `N-redis` (one
    /// shared Redis bucket), `N-aimd` (each told the whole budget: AIMD alone), any of them with
    /// `-3kb` (logs of 2-3 KB, 3 WCU each); `gsi` (a GSI on user_id with a fifth of the table's
    /// capacity binds), `on-demand-max` (an on-demand table whose MaxWriteRequestUnits is W),
    /// `hot-key` (table and GSI at 3 × max(W, 1000), every log has one user_id: the key's
    /// partition, 1,000 WCU/s, binds). Suffixes, in any order: `-real` (realistic request
    /// logs of 1–3 KB instead of padded ones), `-zstd` (compressed items, with a dictionary
    /// trained on 2,000 logs of the same shape and stored in the table first), `-cache` (10% of
    /// the messages re-send an earlier one, and the write cache is on).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,3,3-redis,3-aimd,gsi,on-demand-max,3-redis-3kb,hot-key,1-real,1-real-zstd,1-real-cache,1-real-zstd-cache"
    )]
    pub scenarios: Vec<String>,
    /// redis-server binary for the -redis scenarios (started on a free loopback port).
    #[arg(long, default_value = "redis-server")]
    pub redis_server: String,
    /// Print the results as JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchRow {
    pub scenario: String,
    pub instances: u32,
    pub redis: bool,
    /// The limit that binds, and its WCU per second: every other figure is of it.
    pub binding: String,
    pub provisioned_wcu: u32,
    pub consumed_wcu: f64,
    /// Distinct logs (rows).
    pub logs: usize,
    pub drain_s: f64,
    pub min_drain_s: f64,
    pub utilization: f64,
    pub max_5s_avg_wcu: f64,
    pub throttled_requests: u64,
    pub unprocessed_items: u64,
    pub write_requests: u64,
    pub throttled_share: f64,
    pub lost: usize,
    /// The logs' shape.
    pub shape: Shape,
    /// Items compressed (zstd with a dictionary).
    pub zstd: bool,
    /// WCU the logs would have cost written plain.
    pub plain_wcu: u64,
    /// Logs per WCU the table consumed.
    pub logs_per_wcu: f64,
    /// WCU the table consumed per million logs.
    pub wcu_per_million_logs: f64,
    /// Share of the plain cost compression saved.
    pub saved_by_compression: f64,
    /// Share of the plain cost the write cache saved (re-sends exist only in `-cache`).
    pub saved_by_cache: f64,
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A child process killed on drop.
struct Child(tokio::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.start_kill();
    }
}

async fn start_redis(bin: &str) -> Result<(Child, String)> {
    let port = free_port()?;
    let child = tokio::process::Command::new(bin)
        .args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--port",
        ])
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!("cannot start {bin} (apt-get install redis-server, or --redis-server PATH)")
        })?;
    if !wait_for_port(port, Instant::now(), Duration::from_secs(10)).await {
        bail!("redis-server did not open port {port}");
    }
    Ok((Child(child), format!("redis://127.0.0.1:{port}/")))
}

/// Mixed-size request logs from the load generator, one per message, until they cost
/// `total_wcu` written plain. With `one_user`, every log carries that user_id (a hot index key).
/// Returns the bodies, the distinct request ids among them, and what they cost plain.
fn backlog(
    total_wcu: u64,
    seed: u64,
    size: SizeDist,
    shape: Shape,
    duplicates: f64,
    one_user: Option<&str>,
) -> (Vec<String>, usize, u64) {
    let mut logs = LogGen::new("bench", seed, size, duplicates, None, 0).with_shape(shape);
    let mut bodies = Vec::new();
    let mut wcu = 0;
    while wcu < total_wcu {
        let mut body = logs.next_log().json;
        if let Some(user) = one_user
            && let Ok(serde_json::Value::Object(mut log)) = serde_json::from_str(&body)
        {
            log.insert("user_id".into(), user.into());
            body = serde_json::Value::Object(log).to_string();
        }
        wcu += plain_wcu(&body);
        bodies.push(body);
    }
    (bodies, logs.distinct_keys() as usize, wcu)
}

/// What a body's logs cost written plain, as sluice sizes them.
fn plain_wcu(body: &str) -> u64 {
    sluice_core::decode_message(body.as_bytes(), &sluice_core::Schema::default())
        .map_or(0, |items| {
            items.iter().map(|i| u64::from(i.plain_wcu())).sum()
        })
}

/// What a scenario's table looks like, and which of its limits binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// A table provisioned at W.
    Table,
    /// Table at W, GSI `by_user` at W / 5: the index binds.
    Gsi,
    /// On-demand table with MaxWriteRequestUnits = W.
    OnDemandMax,
    /// Table and GSI at 3 × max(W, 1000), every log with one user_id: that key's partition in
    /// the index binds (1,000 WCU/s).
    HotKey,
}

/// One parsed scenario.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    instances: u32,
    redis: bool,
    /// Each instance paces to its share (1/N) of the budget; false: each is told the whole.
    share: bool,
    limit: Limit,
    size: SizeDist,
    shape: Shape,
    zstd: bool,
    /// 10% of the messages are re-sends of earlier ones, and the write cache is on.
    cache: bool,
}

fn parse_scenario(name: &str) -> Result<Scenario> {
    let (mut base, mut size, mut shape, mut zstd, mut cache) = (
        name,
        SizeDist::Uniform(200, 3000),
        Shape::Padded,
        false,
        false,
    );
    loop {
        if let Some(b) = base.strip_suffix("-cache") {
            (base, cache) = (b, true);
            continue;
        }
        if let Some(b) = base.strip_suffix("-3kb") {
            (base, size) = (b, SizeDist::Uniform(2100, 3000));
        } else if let Some(b) = base.strip_suffix("-real") {
            (base, shape) = (b, Shape::Realistic);
        } else if let Some(b) = base.strip_suffix("-zstd") {
            (base, zstd) = (b, true);
        } else {
            break;
        }
    }
    let one = |limit| Scenario {
        instances: 1,
        redis: false,
        share: true,
        limit,
        size,
        shape,
        zstd,
        cache,
    };
    let fleet =
        |n: &str, redis, share| -> Result<Scenario> {
            Ok(Scenario {
                instances: n.parse::<u32>().ok().filter(|n| *n > 0).with_context(|| {
                    format!("scenario `{name}`: `{n}` is not an instance count")
                })?,
                redis,
                share,
                limit: Limit::Table,
                size,
                shape,
                zstd,
                cache,
            })
        };
    match base {
        "gsi" => Ok(one(Limit::Gsi)),
        "on-demand-max" => Ok(one(Limit::OnDemandMax)),
        "hot-key" => Ok(one(Limit::HotKey)),
        _ => match base.split_once('-') {
            Some((n, "redis")) => fleet(n, true, true),
            Some((n, "aimd")) => fleet(n, false, false),
            None => fleet(base, false, true),
            _ => bail!(
                "unknown scenario `{name}` (expected N, N-redis, N-aimd, gsi, on-demand-max or hot-key, optionally with -3kb, -real, -zstd and -cache)"
            ),
        },
    }
}

/// Waits until something listens on `port`; false when `limit` has passed since `started`.
async fn wait_for_port(port: u16, started: Instant, limit: Duration) -> bool {
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}

/// The limit that binds a scenario: its name in the report and its WCU per second.
struct Binding {
    name: &'static str,
    wcu: f64,
}

/// The scenario's table (and index), and which of its limits binds.
fn table_for(limit: Limit, w: u32) -> (TableSpec, Binding) {
    let by_user = |wcu| IndexSpec {
        name: "by_user".into(),
        key: "user_id".into(),
        wcu,
    };
    let hot = 3 * i64::from(w.max(PARTITION_WCU as u32));
    let (spec_wcu, max_on_demand_wcu, indexes, name, wcu) = match limit {
        Limit::Table => (Some(i64::from(w)), None, vec![], "table", f64::from(w)),
        Limit::Gsi => {
            let g = (w / 5).max(1);
            (
                Some(i64::from(w)),
                None,
                vec![by_user(Some(i64::from(g)))],
                "index by_user",
                f64::from(g),
            )
        }
        Limit::OnDemandMax => (
            None,
            Some(i64::from(w)),
            vec![],
            "on-demand maximum",
            f64::from(w),
        ),
        Limit::HotKey => (
            Some(hot),
            None,
            vec![by_user(Some(hot))],
            "one key in by_user",
            PARTITION_WCU as f64,
        ),
    };
    let spec = TableSpec {
        name: "bench".into(),
        key: "request_id".into(),
        wcu: spec_wcu,
        max_on_demand_wcu,
        indexes,
    };
    (spec, Binding { name, wcu })
}

/// sluice-sim with one second of burst credit, the queue and the scenario's table on it.
struct Backend {
    sim: SimServer,
    endpoint: String,
    sqs: aws_sdk_sqs::Client,
    ddb: aws_sdk_dynamodb::Client,
    queue: String,
}

impl Backend {
    async fn start(table: &TableSpec) -> Result<Backend> {
        let sim = SimServer::start(
            "127.0.0.1:0".parse()?,
            SimConfig {
                tables: TableSettings {
                    burst_seconds: 1.0,
                    ..TableSettings::default()
                },
                ..SimConfig::default()
            },
        )
        .await?;
        let endpoint = sim.endpoint().to_string();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(&endpoint)
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "bench",
            ))
            .load()
            .await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let queue = sluice_sqs::admin::create_queue(&sqs, "bench", &[])
            .await
            .map_err(anyhow::Error::msg)?;
        create_table_from(&ddb, table)
            .await
            .map_err(anyhow::Error::msg)?;
        Ok(Backend {
            sim,
            endpoint,
            sqs,
            ddb,
            queue,
        })
    }

    /// One `sluice run` on the queue and table, configured through the environment, serving
    /// its health endpoint on `port`.
    fn spawn_instance(
        &self,
        exe: &std::path::Path,
        replicas: u32,
        port: u16,
        redis: Option<&str>,
        dictionary: Option<u32>,
        cache: bool,
    ) -> Result<Child> {
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("run")
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("SLUICE__SQS__QUEUE_URL", &self.queue)
            .env("SLUICE__SQS__VISIBILITY_TIMEOUT", "60s")
            .env("SLUICE__DYNAMODB__TABLE", "bench")
            .env("SLUICE__RATE__EXPECTED_REPLICAS", replicas.to_string())
            .env("SLUICE__TELEMETRY__LISTEN", format!("127.0.0.1:{port}"))
            .env("SLUICE__TELEMETRY__LOG_FORMAT", "json")
            .env("SLUICE__TELEMETRY__LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        if let Some(url) = redis {
            cmd.env("SLUICE__RATE__MODE", "redis")
                .env("SLUICE__RATE__REDIS__URL", url);
        }
        if cache {
            cmd.env("SLUICE__CACHE__ENABLED", "true");
        }
        if let Some(id) = dictionary {
            cmd.env("SLUICE__SCHEMA__COMPRESSION", "zstd")
                .env("SLUICE__SCHEMA__DICTIONARY_ID", id.to_string());
        }
        Ok(Child(cmd.spawn().context("cannot start `sluice run`")?))
    }

    /// The scenario's instances, once every one serves /healthz (they are polling).
    async fn start_fleet(
        &self,
        sc: &Scenario,
        redis: Option<&str>,
        dictionary: Option<u32>,
    ) -> Result<(Vec<Child>, Vec<u16>)> {
        let exe = std::env::current_exe()?;
        let replicas = if sc.share { sc.instances } else { 1 };
        let mut children = Vec::new();
        let mut health = Vec::new();
        for _ in 0..sc.instances {
            let port = free_port()?;
            children.push(self.spawn_instance(&exe, replicas, port, redis, dictionary, sc.cache)?);
            health.push(port);
        }
        let started = Instant::now();
        for &port in &health {
            if !wait_for_port(port, started, Duration::from_secs(30)).await {
                bail!("an instance did not start (port {port})");
            }
        }
        Ok((children, health))
    }

    /// Trains a dictionary on 2,000 logs of the scenario's shape (another seed: earlier
    /// traffic) and stores it in the table, as `sluice dict train` does; returns its id.
    async fn store_dictionary(&self, sc: &Scenario) -> Result<u32> {
        let body = crate::tools::load::sample_ndjson(99, sc.size, sc.shape, 2000);
        let plain = std::collections::BTreeSet::from(["user_id".to_string()]);
        let trained = crate::items::dict::train_and_store(
            &self.ddb,
            "bench",
            "request_id",
            &[body],
            &sluice_core::Schema::default(),
            &plain,
            32 * 1024,
        )
        .await?;
        Ok(trained.id)
    }

    /// The spike arrives: the backlog is sent far faster than it can be written (eight
    /// senders).
    async fn send_backlog(&self, bodies: &[String]) -> Result<()> {
        let sender = SqsTransport::new(self.sqs.clone(), &self.queue);
        let mut sends = tokio::task::JoinSet::new();
        for part in bodies.chunks(bodies.len().div_ceil(8).max(1)) {
            let (sender, part) = (sender.clone(), part.to_vec());
            sends.spawn(async move { sender.send_bodies(&part).await });
        }
        while let Some(r) = sends.join_next().await {
            r??;
        }
        Ok(())
    }

    /// Waits until the queue holds nothing, visible or in flight (30 s at most).
    async fn wait_queue_empty(&self) -> Result<()> {
        let started = Instant::now();
        loop {
            let (visible, in_flight) = sluice_sqs::admin::queue_counts(&self.sqs, &self.queue)
                .await
                .map_err(anyhow::Error::msg)?;
            if visible == 0 && in_flight == 0 {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the queue still holds {visible} visible and {in_flight} in-flight messages");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The table's capacity report once it holds `expected` items; progress every 5 s unless
    /// --json.
    async fn wait_drained(
        &self,
        args: &BenchArgs,
        scenario: &str,
        expected: usize,
        drain_started: Instant,
    ) -> Result<serde_json::Value> {
        let mut last_report = Instant::now();
        loop {
            let report = self.sim.capacity_report("bench").context("table report")?;
            if report["items"].as_u64().unwrap_or(0) as usize >= expected {
                return Ok(report);
            }
            if drain_started.elapsed()
                > Duration::from_secs(u64::from(args.backlog_seconds) * 4 + 60)
            {
                bail!("not drained in time: {report}");
            }
            if last_report.elapsed() > Duration::from_secs(5) && !args.json {
                eprintln!(
                    "  {scenario}: {:>5.1}s, {} of {expected} logs written",
                    drain_started.elapsed().as_secs_f64(),
                    report["items"]
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGTERM to every instance, then up to 30 s each for it to exit.
async fn stop_fleet(children: &mut [Child]) {
    for c in children.iter() {
        if let Some(pid) = c.0.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for c in children.iter_mut() {
        let _ = tokio::time::timeout(Duration::from_secs(30), c.0.wait()).await;
    }
}

/// The highest 5-second average of a meter's per-second consumption from `first_second` on
/// (seconds without writes count as 0).
fn max_5s_avg(meter: &serde_json::Value, first_second: u64) -> f64 {
    let per_second: BTreeMap<u64, f64> = meter["per_second"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p[0].as_u64()?, p[1].as_f64()?)))
        .filter(|(s, _)| *s >= first_second)
        .collect();
    let (first, last) = (
        per_second.keys().next().copied().unwrap_or(0),
        per_second.keys().last().copied().unwrap_or(0),
    );
    let series: Vec<f64> = (first..=last)
        .map(|s| per_second.get(&s).copied().unwrap_or(0.0))
        .collect();
    series
        .windows(5)
        .map(|w| w.iter().sum::<f64>() / 5.0)
        .fold(0.0, f64::max)
}

/// How a drain went: the table's report at its end, how long it took, from which wall-clock
/// second, and how many logs it had to write.
struct Drain {
    report: serde_json::Value,
    drain_s: f64,
    first_second: u64,
    expected: usize,
    /// What the backlog would cost written plain.
    plain_wcu: u64,
    /// Logs sent, re-sends included.
    delivered: usize,
    /// What the instances say compression and the cache saved.
    saved: Saved,
}

/// WCU saved, summed over the instances' /metrics.
#[derive(Debug, Default, Clone, Copy)]
struct Saved {
    compression: f64,
    cache: f64,
}

impl Saved {
    async fn scrape(ports: &[u16]) -> Saved {
        let mut saved = Saved::default();
        for &port in ports {
            let Ok(text) = http_get(port, "/metrics").await else {
                continue;
            };
            let value = |name: &str| {
                text.lines()
                    .find_map(|l| {
                        l.strip_prefix(name)?
                            .strip_prefix(' ')?
                            .trim()
                            .parse::<f64>()
                            .ok()
                    })
                    .unwrap_or(0.0)
            };
            saved.compression += value(sluice_common::catalog::COMPRESSION_SAVED_WCU_TOTAL);
            saved.cache += value(sluice_common::catalog::CACHE_SAVED_WCU_TOTAL);
        }
        saved
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
async fn http_get(port: u16, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut out)).await??;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(out.clone(), |(_, b)| b.to_string()))
}

/// The row: the binding limit's own account (the table's, or the index's: a hot key's index
/// takes only that key's writes), the write requests, and the rows that did not land.
async fn bench_row(
    backend: &Backend,
    scenario: &str,
    sc: &Scenario,
    binding: &Binding,
    drain: Drain,
) -> Result<BenchRow> {
    let report = &drain.report;
    let meter = match sc.limit {
        Limit::Gsi | Limit::HotKey => &report["indexes"]["by_user"],
        Limit::Table | Limit::OnDemandMax => report,
    };
    let max_5s = max_5s_avg(meter, drain.first_second);
    let consumed = meter["consumed_wcu_total"].as_f64().unwrap_or(0.0);
    let table_consumed = report["consumed_wcu_total"].as_f64().unwrap_or(0.0);
    let requests = backend
        .sim
        .requests_report()
        .get("BatchWriteItem")
        .copied()
        .unwrap_or(0);
    let throttled = report["throttled_requests"].as_u64().unwrap_or(0);
    let keys = sluice_dynamodb::admin::scan_keys(&backend.ddb, "bench", "request_id")
        .await
        .map_err(anyhow::Error::msg)?;
    let r3 = |x: f64| (x * 1000.0).round() / 1000.0;
    let (expected, drain_s, binding_wcu) = (drain.expected, drain.drain_s, binding.wcu);
    Ok(BenchRow {
        scenario: scenario.to_string(),
        instances: sc.instances,
        redis: sc.redis,
        binding: binding.name.to_string(),
        provisioned_wcu: binding_wcu as u32,
        consumed_wcu: consumed,
        logs: expected,
        drain_s: r3(drain_s),
        min_drain_s: r3(consumed / binding_wcu),
        utilization: r3(consumed / (binding_wcu * drain_s)),
        max_5s_avg_wcu: r3(max_5s),
        throttled_requests: throttled,
        unprocessed_items: report["unprocessed_items"].as_u64().unwrap_or(0),
        write_requests: requests,
        throttled_share: r3(throttled as f64 / requests.max(1) as f64),
        // The dictionary is a row too.
        lost: expected.saturating_sub(
            keys.iter()
                .filter(|k| !sluice_core::stored::is_dictionary_key(k))
                .count(),
        ),
        shape: sc.shape,
        zstd: sc.zstd,
        plain_wcu: drain.plain_wcu,
        logs_per_wcu: r3(drain.delivered as f64 / table_consumed.max(1.0)),
        wcu_per_million_logs: (table_consumed / drain.delivered.max(1) as f64 * 1e6).round(),
        saved_by_compression: r3(drain.saved.compression / (drain.plain_wcu.max(1) as f64)),
        saved_by_cache: r3(drain.saved.cache / (drain.plain_wcu.max(1) as f64)),
    })
}

async fn run_scenario(args: &BenchArgs, scenario: &str) -> Result<BenchRow> {
    let sc = parse_scenario(scenario)?;
    let (table, binding) = table_for(sc.limit, args.provisioned_wcu);
    let backend = Backend::start(&table).await?;
    let (bodies, distinct, plain_wcu) = backlog(
        (binding.wcu * f64::from(args.backlog_seconds)) as u64,
        11,
        sc.size,
        sc.shape,
        if sc.cache { 0.1 } else { 0.0 },
        (sc.limit == Limit::HotKey).then_some("everyone"),
    );
    let redis_server = if sc.redis {
        Some(start_redis(&args.redis_server).await?)
    } else {
        None
    };
    let redis_url = redis_server.as_ref().map(|(_, url)| url.as_str());
    let dictionary = if sc.zstd {
        Some(backend.store_dictionary(&sc).await?)
    } else {
        None
    };
    let (mut children, ports) = backend.start_fleet(&sc, redis_url, dictionary).await?;

    let drain_started = Instant::now();
    let first_second = now_s();
    backend.send_backlog(&bodies).await?;
    let expected = distinct;
    let rows = expected + usize::from(dictionary.is_some());
    let report = backend
        .wait_drained(args, scenario, rows, drain_started)
        .await?;
    let drain_s = drain_started.elapsed().as_secs_f64();
    // Every message acked before the counters are read (the table may hold every row while a
    // re-send is still in flight).
    backend.wait_queue_empty().await?;
    let saved = Saved::scrape(&ports).await;
    stop_fleet(&mut children).await;
    let drain = Drain {
        report,
        drain_s,
        first_second,
        expected,
        plain_wcu,
        delivered: bodies.len(),
        saved,
    };
    bench_row(&backend, scenario, &sc, &binding, drain).await
}

pub async fn bench(args: BenchArgs) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for scenario in &args.scenarios {
        if !args.json {
            eprintln!("running scenario {scenario} ...");
        }
        let row = run_scenario(&args, scenario).await?;
        if args.json {
            println!("{}", serde_json::to_string(&row)?);
        }
        rows.push(row);
    }
    if !args.json {
        println!(
            "\n| scenario | instances | Redis | binding limit | its WCU/s | consumed WCU | drain s | minimum s | utilization | max 5 s avg WCU/s | throttled requests | unprocessed items | write requests | lost | logs per WCU | WCU per million logs | saved by compression | saved by the cache |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} | {:.1}% | {:.0} | {} ({:.2}%) | {} | {} | {} | {:.3} | {:.0} | {:.1}% | {:.1}% |",
                r.scenario,
                r.instances,
                if r.redis { "yes" } else { "no" },
                r.binding,
                r.provisioned_wcu,
                r.consumed_wcu,
                r.drain_s,
                r.min_drain_s,
                r.utilization * 100.0,
                r.max_5s_avg_wcu,
                r.throttled_requests,
                r.throttled_share * 100.0,
                r.unprocessed_items,
                r.write_requests,
                r.lost,
                r.logs_per_wcu,
                r.wcu_per_million_logs,
                r.saved_by_compression * 100.0,
                r.saved_by_cache * 100.0
            );
        }
    }
    Ok(rows)
}

/// `sluice bench-pacing`.
pub async fn command(args: BenchArgs) -> crate::command::Outcome {
    crate::command::short_lived("error", bench(args))
        .await
        .map(|_| 0)
}
