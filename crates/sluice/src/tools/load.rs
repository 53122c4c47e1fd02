//! `sluice load`: a load generator for the producer side.
//!
//! It makes request logs at a set rate (or as fast as the target takes them), for a duration or
//! a count, with a size distribution, a share of exact duplicates, an optional bounded key space
//! (so keys repeat and rows are upserted) and FIFO groups, and pushes them either straight into
//! SQS through sluice-producer or through `sluice ingest` over HTTP(S) with an API key. A
//! progress line each second, a summary at the end (`--json` for one JSON object), and
//! `--keys-out FILE` lists the request ids the target accepted, for checking the table after.
//!
//! Over HTTP it is a well-behaved client: 429 and 503 are retried after Retry-After (until
//! `--retry-for` runs out), 4xx answers are counted as failures with the server's message.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use sluice_producer::sqs::SqsTransport;
use sluice_producer::{Log, Producer};
use tokio::sync::{Mutex, mpsc};

#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// Send through `sluice ingest` at this URL (http:// or https://; the path defaults to
    /// /v1/logs). Without it, logs go straight into SQS through sluice-producer.
    #[arg(long, value_name = "URL")]
    pub ingest: Option<String>,
    /// API key for --ingest (sent as `Authorization: Bearer KEY`).
    #[arg(
        long,
        env = "SLUICE_API_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub api_key: Option<String>,
    /// PEM file of the CA that signed the ingest server's certificate (https:// with a private
    /// CA); the system roots are not used.
    #[arg(long, value_name = "FILE")]
    pub cacert: Option<PathBuf>,
    /// The queue to fill when not using --ingest (default: sqs.queue_url from --config).
    #[arg(long, value_name = "URL")]
    pub queue_url: Option<String>,
    /// A sluice config file; its [producer] section configures the SQS producer and its
    /// sqs.queue_url is the default queue.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// SQS endpoint (a local server); credentials and region come from the environment when
    /// set, else test / us-east-1. AWS_ENDPOINT_URL works too.
    #[arg(long, value_name = "URL")]
    pub endpoint: Option<String>,
    /// Logs per second; 0 = as fast as the target takes them.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// How long to generate (default 10s when --count is not given).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "count")]
    pub duration: Option<Duration>,
    /// How many logs to generate (duplicates included).
    #[arg(long)]
    pub count: Option<u64>,
    /// What the logs look like: `padded` (a small request log padded with random text to
    /// --size) or `realistic` (an API server's access log: UUIDs, routes with ids and query
    /// strings, a status mix, lognormal latency, real user agents, client IPs, referers,
    /// headers; 1–3 KB, --size ignored).
    #[arg(long, value_enum, default_value_t = Shape::Padded)]
    pub shape: Shape,
    /// Log size in bytes (padded shape): `N` (fixed), `MIN-MAX` (uniform) or
    /// `lognormal:MEDIAN-P99` (a long tail, as real request logs have). Sizes below ~220 bytes
    /// (the bare log) are rounded up.
    #[arg(long, default_value = "uniform:300-1500")]
    pub size: SizeDist,
    /// Share of logs that are an exact re-send of an earlier log (0.0-1.0): what a producer
    /// retrying after a timeout does. They must land once.
    #[arg(long, default_value_t = 0.0)]
    pub duplicate_ratio: f64,
    /// Draw request ids from this many keys instead of making each one new, so keys repeat and
    /// rows are overwritten (upserts).
    #[arg(long, value_name = "N")]
    pub key_space: Option<u64>,
    /// FIFO: spread logs over this many message groups (field `tenant`, used as the producer's
    /// group_field). 0 = one group.
    #[arg(long, default_value_t = 0)]
    pub fifo_groups: u32,
    /// Logs per HTTP request (with --ingest).
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// HTTP requests in flight at once (with --ingest); each has its own keep-alive connection.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Gzip the HTTP bodies.
    #[arg(long)]
    pub gzip: bool,
    /// Keep retrying a request answered 429/503 (or that failed to connect) for this long,
    /// waiting Retry-After between tries; after that its logs count as failed. 0 = never retry.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub retry_for: Duration,
    /// Prefix of the generated request ids (default: load-<unix time>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Write the request id of every log the target accepted to this file, one per line (each
    /// id once).
    #[arg(long, value_name = "FILE")]
    pub keys_out: Option<PathBuf>,
    /// Seed for the generated logs.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What the generated logs look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// A small request log padded with random text to a drawn size.
    #[default]
    Padded,
    /// A real API server's access log ([`super::shape::realistic_log`]).
    Realistic,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Shape::Padded => "padded",
            Shape::Realistic => "realistic",
        })
    }
}

/// How big the generated logs are, in bytes of JSON.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeDist {
    Fixed(usize),
    Uniform(usize, usize),
    /// Median and 99th percentile; capped at 16 × the p99.
    LogNormal {
        median: f64,
        p99: f64,
    },
}

impl FromStr for SizeDist {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{t}` is not a number of bytes"))
        };
        let range = |t: &str| -> Result<(usize, usize), String> {
            let (a, b) = t
                .split_once('-')
                .ok_or_else(|| format!("`{t}` is not MIN-MAX"))?;
            let (a, b) = (num(a)?, num(b)?);
            if a == 0 || a > b {
                return Err(format!("`{t}`: need 0 < MIN <= MAX"));
            }
            Ok((a, b))
        };
        let dist = match s.split_once(':') {
            Some(("fixed", n)) => SizeDist::Fixed(num(n)?),
            Some(("uniform", r)) => {
                let (a, b) = range(r)?;
                SizeDist::Uniform(a, b)
            }
            Some(("lognormal", r)) => {
                let (a, b) = range(r)?;
                SizeDist::LogNormal {
                    median: a as f64,
                    p99: b as f64,
                }
            }
            Some((other, _)) => {
                return Err(format!(
                    "unknown distribution `{other}`: use N, MIN-MAX, uniform:MIN-MAX or lognormal:MEDIAN-P99"
                ));
            }
            None if s.contains('-') => {
                let (a, b) = range(s)?;
                SizeDist::Uniform(a, b)
            }
            None => SizeDist::Fixed(num(s)?),
        };
        if let SizeDist::Fixed(n) | SizeDist::Uniform(_, n) = dist
            && n > 1024 * 1024
        {
            return Err("sizes over 1 MiB are bigger than any SQS message".into());
        }
        Ok(dist)
    }
}

impl SizeDist {
    pub fn sample(&self, rng: &mut StdRng) -> usize {
        match *self {
            SizeDist::Fixed(n) => n,
            SizeDist::Uniform(a, b) => rng.random_range(a..=b),
            SizeDist::LogNormal { median, p99 } => {
                // Box-Muller for a standard normal; p99 sits 2.326 sigma above the median.
                let sigma = (p99 / median).ln().max(0.0) / 2.326;
                let (u1, u2): (f64, f64) = (rng.random_range(f64::EPSILON..1.0), rng.random());
                let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                (median * (sigma * z).exp()).clamp(1.0, p99 * 16.0) as usize
            }
        }
    }
}

/// One generated log.
#[derive(Debug, Clone)]
pub struct GenLog {
    pub key: String,
    pub json: String,
    pub group: Option<String>,
    pub duplicate: bool,
}

/// Makes request logs in the shape `sluice run` expects (request_id, ts, method, path, status,
/// latency_ms, user_id, attrs), padded to a size drawn from a [`SizeDist`].
pub struct LogGen {
    rng: StdRng,
    shape: Shape,
    run_id: String,
    size: SizeDist,
    duplicate_ratio: f64,
    key_space: Option<u64>,
    groups: u32,
    next_key: u64,
    now_ms: u64,
    /// The last logs made, for exact re-sends.
    recent: VecDeque<GenLog>,
    /// With a key space: which keys were drawn (a bitset), for the distinct count.
    seen: Vec<u64>,
    distinct: u64,
    pub generated: u64,
    pub duplicates: u64,
    pub bytes: u64,
}

const RECENT: usize = 1024;

impl LogGen {
    pub fn new(
        run_id: &str,
        seed: u64,
        size: SizeDist,
        duplicate_ratio: f64,
        key_space: Option<u64>,
        groups: u32,
    ) -> LogGen {
        let words = key_space.map_or(0, |k| k.div_ceil(64) as usize);
        LogGen {
            rng: StdRng::seed_from_u64(seed),
            shape: Shape::Padded,
            run_id: run_id.to_owned(),
            size,
            duplicate_ratio: duplicate_ratio.clamp(0.0, 1.0),
            key_space,
            groups,
            next_key: 0,
            now_ms: sluice_core::time::epoch_ms(),
            recent: VecDeque::with_capacity(RECENT),
            seen: vec![0; words],
            distinct: 0,
            generated: 0,
            duplicates: 0,
            bytes: 0,
        }
    }

    /// The same generator, making logs of `shape`.
    pub fn with_shape(mut self, shape: Shape) -> LogGen {
        self.shape = shape;
        self
    }

    /// Distinct request ids made so far: the rows the table ends with.
    pub fn distinct_keys(&self) -> u64 {
        self.distinct
    }

    pub fn next_log(&mut self) -> GenLog {
        self.generated += 1;
        if !self.recent.is_empty() && self.rng.random_bool(self.duplicate_ratio) {
            let i = self.rng.random_range(0..self.recent.len());
            let mut log = self.recent[i].clone();
            log.duplicate = true;
            self.duplicates += 1;
            self.bytes += log.json.len() as u64;
            return log;
        }
        let key = match self.key_space {
            Some(k) => {
                let n = self.rng.random_range(0..k.max(1));
                let (w, b) = ((n / 64) as usize, n % 64);
                if self.seen[w] & (1 << b) == 0 {
                    self.seen[w] |= 1 << b;
                    self.distinct += 1;
                }
                format!("{}-{n}", self.run_id)
            }
            None => {
                self.next_key += 1;
                self.distinct += 1;
                format!("{}-{}", self.run_id, self.next_key - 1)
            }
        };
        let log = self.log_for(key);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(log.clone());
        self.bytes += log.json.len() as u64;
        log
    }

    /// A new log with this request id (not counted, never a duplicate): for callers that build
    /// their own messages, like `sluice demo`.
    pub fn log_for(&mut self, key: String) -> GenLog {
        const METHODS: [&str; 5] = ["GET", "GET", "GET", "POST", "PUT"];
        const PATHS: [&str; 6] = [
            "/v1/orders",
            "/v1/users/me",
            "/v1/search",
            "/v1/cart",
            "/v1/items",
            "/healthz",
        ];
        const STATUS: [u16; 7] = [200, 200, 200, 201, 204, 404, 500];
        let rng = &mut self.rng;
        let group = (self.groups > 0).then(|| format!("t-{}", rng.random_range(0..self.groups)));
        if self.shape == Shape::Realistic {
            let ts = self.now_ms.saturating_sub(rng.random_range(0..60_000u64));
            let mut log = super::shape::realistic_log(rng, &key, ts);
            if let Some(g) = &group {
                log["tenant"] = json!(g);
            }
            return GenLog {
                key,
                json: log.to_string(),
                group,
                duplicate: false,
            };
        }
        let mut log = json!({
            "request_id": key,
            "ts": self.now_ms.saturating_sub(rng.random_range(0..60_000u64)),
            "method": METHODS[rng.random_range(0..METHODS.len())],
            "path": PATHS[rng.random_range(0..PATHS.len())],
            "status": STATUS[rng.random_range(0..STATUS.len())],
            "latency_ms": (rng.random_range(0.5..400.0f64) * 100.0).round() / 100.0,
            "user_id": format!("u-{}", rng.random_range(1..50_000)),
            "attrs": {"region": "eu-west-1", "client": format!("app/{}", rng.random_range(1..9))},
        });
        if let Some(g) = &group {
            log["tenant"] = json!(g);
        }
        let bare = log.to_string().len();
        let target = self.size.sample(&mut self.rng);
        // `,"pad":""` inside attrs costs 9 bytes. Random letters and digits: padding that
        // compresses as little as text can (a run of one letter would compress to nothing and
        // flatter compression).
        if target > bare + 9 {
            const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
            let pad: String = (0..target - bare - 9)
                .map(|_| A[self.rng.random_range(0..A.len())] as char)
                .collect();
            log["attrs"]["pad"] = json!(pad);
        }
        GenLog {
            key,
            json: log.to_string(),
            group,
            duplicate: false,
        }
    }
}

/// `n` logs of `shape` (and `size`, when padded) as NDJSON, ids `sample-0…`: sample traffic a
/// compression dictionary is trained on (the demo and the pacing benchmark, before they run
/// compressed).
pub fn sample_ndjson(seed: u64, size: SizeDist, shape: Shape, n: usize) -> String {
    let mut logs = LogGen::new("sample", seed, size, 0.0, None, 0).with_shape(shape);
    (0..n)
        .map(|i| logs.log_for(format!("sample-{i}")).json + "\n")
        .collect()
}

/// Request latencies in a log-scale histogram (8 buckets per doubling): bounded memory however
/// long the run.
#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    n: u64,
}

impl Histogram {
    fn record(&mut self, d: Duration) {
        let us = d.as_micros().max(1) as f64;
        let i = (us.log2() * 8.0) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, 0);
        }
        self.buckets[i] += 1;
        self.n += 1;
    }

    /// The upper edge of the bucket holding quantile `q`, in milliseconds.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((self.n as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some((2f64.powf((i + 1) as f64 / 8.0) / 1000.0 * 100.0).round() / 100.0);
            }
        }
        None
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    failed: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
    status_429: AtomicU64,
    status_503: AtomicU64,
    status_other: AtomicU64,
    connect_errors: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadSummary {
    /// `sqs <queue url>` or `ingest <url>`.
    pub target: String,
    pub run_id: String,
    /// The logs' shape (`padded` or `realistic`).
    pub shape: Shape,
    /// Logs made, duplicates included.
    pub generated: u64,
    /// Exact re-sends of an earlier log among them.
    pub duplicates: u64,
    /// Distinct request ids: the rows the table should end with when everything lands.
    pub distinct_keys: u64,
    /// Logs the target took (SQS: sent or buffered and flushed; ingest: answered 202).
    pub accepted: u64,
    /// Logs the target did not take, after retries.
    pub failed: u64,
    pub bytes: u64,
    /// HTTP requests made (with --ingest), retries included.
    pub requests: u64,
    pub retries: u64,
    pub status_429: u64,
    pub status_503: u64,
    /// Other non-202 answers (401, 400, 413, ...).
    pub status_other: u64,
    pub connect_errors: u64,
    /// The first error the target gave, if any.
    pub first_error: Option<String>,
    /// SQS messages the producer sent (straight to SQS).
    pub messages_sent: Option<u64>,
    pub target_rate: u64,
    pub duration_s: f64,
    pub logs_per_s: f64,
    pub mb_per_s: f64,
    pub request_p50_ms: Option<f64>,
    pub request_p99_ms: Option<f64>,
}

/// The SDK's default chain; with a local `endpoint`, region and credentials fall back to
/// us-east-1 / test when the environment has none (local servers accept any).
pub(crate) async fn sdk_config(endpoint: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(Region::new("us-east-1"));
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test",
                "test",
                None,
                None,
                "sluice-local",
            ));
        }
    }
    loader.load().await
}

/// One progress line: redrawn in place on a terminal, one line per update otherwise; `last`
/// ends the line on a terminal. `sluice demo` uses it too.
pub(crate) fn progress(last: bool, line: &str) {
    if std::io::stderr().is_terminal() {
        eprint!("\r\x1b[2K{line}{}", if last { "\n" } else { "" });
    } else {
        eprintln!("{line}");
    }
}

fn human(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.2}M", n as f64 / 1e6),
    }
}

/// Appends accepted request ids to --keys-out.
struct KeysOut(Option<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>);

impl KeysOut {
    fn open(path: Option<&PathBuf>) -> Result<KeysOut> {
        Ok(KeysOut(match path {
            Some(p) => Some(std::sync::Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot write --keys-out {}", p.display()))?,
            ))),
            None => None,
        }))
    }

    fn write<'a>(&self, keys: impl Iterator<Item = &'a str>) {
        if let Some(w) = &self.0
            && let Ok(mut w) = w.lock()
        {
            for k in keys {
                let _ = writeln!(w, "{k}");
            }
        }
    }

    fn finish(&self) -> Result<()> {
        if let Some(w) = &self.0 {
            w.lock()
                .map_err(|_| anyhow!("keys-out lock poisoned"))?
                .flush()
                .context("cannot write --keys-out")?;
        }
        Ok(())
    }
}

/// Where the logs go.
enum Sink {
    Sqs(Producer),
    /// The batches' channel and the HTTP workers that take them.
    Http(mpsc::Sender<Vec<GenLog>>, Vec<tokio::task::JoinHandle<()>>),
}

impl Sink {
    /// Sends the last partial batch and waits for the workers, or closes the producer (logs it
    /// dropped count as failed instead of accepted); the producer's message count, for SQS.
    async fn close(self, batch: Vec<GenLog>, counters: &Counters) -> Option<u64> {
        match self {
            Sink::Sqs(producer) => {
                let report = producer.close().await;
                let lost = report.dropped_logs;
                if lost > 0 {
                    counters.accepted.fetch_sub(lost, Ordering::Relaxed);
                    counters.failed.fetch_add(lost, Ordering::Relaxed);
                }
                Some(producer.stats().messages_sent.load(Ordering::Relaxed))
            }
            Sink::Http(tx, workers) => {
                if !batch.is_empty() {
                    let _ = tx.send(batch).await;
                }
                drop(tx);
                for w in workers {
                    let _ = w.await;
                }
                None
            }
        }
    }
}

/// What the sending side reports into, shared with the HTTP workers: counts, the first error,
/// the accepted keys (--keys-out) and request latencies.
#[derive(Clone)]
struct Tally {
    counters: Arc<Counters>,
    first_error: Arc<std::sync::Mutex<Option<String>>>,
    keys_out: Arc<KeysOut>,
    latencies: Arc<std::sync::Mutex<Histogram>>,
}

impl Tally {
    fn new(keys_out: Option<&PathBuf>) -> Result<Tally> {
        Ok(Tally {
            counters: Arc::new(Counters::default()),
            first_error: Arc::new(std::sync::Mutex::new(None)),
            keys_out: Arc::new(KeysOut::open(keys_out)?),
            latencies: Arc::new(std::sync::Mutex::new(Histogram::default())),
        })
    }
}

/// Keeps `why` as the run's first error when there is none yet; true when it was kept.
fn keep_first_error(first_error: &std::sync::Mutex<Option<String>>, why: &str) -> bool {
    if let Ok(mut f) = first_error.lock()
        && f.is_none()
    {
        *f = Some(why.to_owned());
        return true;
    }
    false
}

/// The flags `load` refuses before doing anything.
fn check_args(args: &LoadArgs) -> Result<()> {
    if !(0.0..=1.0).contains(&args.duplicate_ratio) {
        bail!("--duplicate-ratio must be between 0.0 and 1.0");
    }
    if args.key_space == Some(0) {
        bail!("--key-space must be at least 1");
    }
    if args.batch == 0 || args.concurrency == 0 {
        bail!("--batch and --concurrency must be at least 1");
    }
    Ok(())
}

/// --run-id, or `load-<unix time>`.
fn run_id(args: &LoadArgs) -> String {
    args.run_id.clone().unwrap_or_else(|| {
        format!(
            "load-{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        )
    })
}

/// The sink and how the summary names it: `sluice ingest` over HTTP, Kafka (the config's
/// producer.kafka_topic, when no --queue-url), or SQS.
async fn open_sink(
    args: &LoadArgs,
    settings: &crate::config::Settings,
    tally: &Tally,
) -> Result<(Sink, String)> {
    match &args.ingest {
        Some(url) => Ok((http_sink(args, url, tally)?, format!("ingest {url}"))),
        None if args.queue_url.is_none() && settings.producer.kafka_topic.is_some() => {
            let (producer, target) =
                crate::producers::kafka_producer(settings, args.fifo_groups > 0)?;
            Ok((Sink::Sqs(producer), target))
        }
        None => sqs_sink(args, settings).await,
    }
}

/// --concurrency HTTP workers taking batches from one channel.
fn http_sink(args: &LoadArgs, url: &str, tally: &Tally) -> Result<Sink> {
    let endpoint = Endpoint::parse(url, args.cacert.as_deref(), args.concurrency)?;
    let key = args
        .api_key
        .clone()
        .ok_or_else(|| anyhow!("--ingest needs an API key: --api-key KEY or SLUICE_API_KEY"))?;
    let (tx, rx) = mpsc::channel::<Vec<GenLog>>(args.concurrency);
    let rx = Arc::new(Mutex::new(rx));
    let endpoint = Arc::new(endpoint);
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let w = HttpWorker {
            endpoint: endpoint.clone(),
            key: key.clone(),
            gzip: args.gzip,
            retry_for: args.retry_for,
            tally: tally.clone(),
        };
        workers.push(tokio::spawn(w.run(rx.clone())));
    }
    Ok(Sink::Http(tx, workers))
}

/// sluice-producer on --queue-url (or the config's sqs.queue_url), grouping by `tenant` with
/// --fifo-groups, its batches capped by the queue's MaximumMessageSize.
async fn sqs_sink(args: &LoadArgs, settings: &crate::config::Settings) -> Result<(Sink, String)> {
    let queue_url = args
        .queue_url
        .clone()
        .unwrap_or_else(|| settings.sqs.queue_url_str().to_owned());
    if queue_url.is_empty() {
        bail!("give --ingest URL, or --queue-url URL (or --config with sqs.queue_url)");
    }
    let mut config = settings.producer.producer_config(&queue_url);
    if args.fifo_groups > 0 && config.group_field.is_none() {
        config.group_field = Some("tenant".into());
    }
    let sdk = sdk_config(args.endpoint.as_deref()).await;
    let transport = SqsTransport::new(aws_sdk_sqs::Client::new(&sdk), &queue_url);
    let config = crate::producers::capped_by_queue(config, &transport).await;
    let producer = Producer::start(config, transport).map_err(|e| anyhow!("producer: {e}"))?;
    Ok((Sink::Sqs(producer), format!("sqs {queue_url}")))
}

/// The progress, once a second and at the end: an indicatif bar on a terminal (towards the
/// count, or duration × rate; a spinner when the run has no known end), one plain line per
/// update otherwise (a log, a pipe).
struct Progress {
    start: Instant,
    last: Instant,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(total_hint: Option<u64>) -> Progress {
        let start = Instant::now();
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total_hint {
                Some(total) if total > 0 => (
                    indicatif::ProgressBar::new(total),
                    "load: [{bar:20}] {percent:>3}% {msg}",
                ),
                _ => (
                    indicatif::ProgressBar::new_spinner(),
                    "load: {spinner} {msg}",
                ),
            };
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("#>-"));
            }
            bar
        });
        Progress {
            start,
            last: start,
            bar,
        }
    }

    /// Shows the progress when a second has passed since the last time.
    fn tick(&mut self, g: &LogGen, counters: &Counters) {
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            self.show(g, counters, false);
        }
    }

    fn show(&self, g: &LogGen, counters: &Counters, done: bool) {
        let elapsed = self.start.elapsed().as_secs_f64().max(1e-3);
        let accepted = counters.accepted.load(Ordering::Relaxed);
        let line = format!(
            "{} made, {} accepted, {:.0} logs/s, 429: {}, 503: {}, failed: {}",
            human(g.generated),
            human(accepted),
            g.generated as f64 / elapsed,
            counters.status_429.load(Ordering::Relaxed),
            counters.status_503.load(Ordering::Relaxed),
            counters.failed.load(Ordering::Relaxed),
        );
        match &self.bar {
            Some(bar) => {
                bar.set_position(g.generated);
                bar.set_message(line);
                if done {
                    bar.finish();
                }
            }
            None => eprintln!("load: {line}"),
        }
    }
}

/// How long the run lasts (--duration, 10 s when neither it nor --count is given) and how many
/// logs the progress bar counts towards.
fn run_length(args: &LoadArgs) -> (Option<Duration>, Option<u64>) {
    let duration = match (args.count, args.duration) {
        (None, None) => Some(Duration::from_secs(10)),
        (_, d) => d,
    };
    let total_hint = match (args.count, duration) {
        (Some(n), _) => Some(n),
        (None, Some(d)) if args.rate > 0 => Some((d.as_secs_f64() * args.rate as f64) as u64),
        _ => None,
    };
    (duration, total_hint)
}

/// What the rate says to do next.
enum Pace {
    Go,
    Wait,
    Stop,
}

/// The generating loop: makes logs at --rate until --count or --duration, into the sink.
struct Generator<'a> {
    args: &'a LoadArgs,
    tally: &'a Tally,
    gen_: LogGen,
    sink: Sink,
    duration: Option<Duration>,
    progress: Progress,
    /// The HTTP batch being filled, and since when.
    batch: Vec<GenLog>,
    batch_started: Instant,
}

impl Generator<'_> {
    async fn run(&mut self) -> Result<()> {
        loop {
            if self.args.count.is_some_and(|c| self.gen_.generated >= c)
                || self
                    .duration
                    .is_some_and(|d| self.progress.start.elapsed() >= d)
            {
                break;
            }
            self.progress.tick(&self.gen_, &self.tally.counters);
            match self.pace().await {
                Pace::Go => {}
                Pace::Wait => continue,
                Pace::Stop => break,
            }
            let log = self.gen_.next_log();
            if !self.send(log).await? {
                break;
            }
        }
        Ok(())
    }

    /// Ahead of the rate: hands over a partial batch that has waited, then sleeps (Wait);
    /// Stop when the HTTP workers are gone.
    async fn pace(&mut self) -> Pace {
        if self.args.rate == 0 {
            return Pace::Go;
        }
        let due_at = Duration::from_secs_f64(self.gen_.generated as f64 / self.args.rate as f64);
        let elapsed = self.progress.start.elapsed();
        if due_at <= elapsed {
            return Pace::Go;
        }
        if let Sink::Http(tx, _) = &self.sink
            && !self.batch.is_empty()
            && self.batch_started.elapsed() >= Duration::from_millis(200)
            && tx.send(std::mem::take(&mut self.batch)).await.is_err()
        {
            return Pace::Stop;
        }
        tokio::time::sleep((due_at - elapsed).min(Duration::from_millis(50))).await;
        Pace::Wait
    }

    /// Hands one log to the sink; false when the HTTP workers are gone.
    async fn send(&mut self, log: GenLog) -> Result<bool> {
        match &self.sink {
            Sink::Sqs(producer) => send_log(producer, log, self.tally).await?,
            Sink::Http(tx, _) => {
                if self.batch.is_empty() {
                    self.batch_started = Instant::now();
                }
                self.batch.push(log);
                if self.batch.len() >= self.args.batch
                    && tx.send(std::mem::take(&mut self.batch)).await.is_err()
                {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// One log through the producer, counted as accepted (its key to --keys-out unless it is a
/// duplicate) or failed.
async fn send_log(producer: &Producer, log: GenLog, tally: &Tally) -> Result<()> {
    let mut l = Log::from_json(log.json.clone()).map_err(|e| anyhow!("{e}"))?;
    if let Some(g) = &log.group {
        l = l.with_group(g.clone());
    }
    match producer.send_log(l).await {
        Ok(()) => {
            tally.counters.accepted.fetch_add(1, Ordering::Relaxed);
            tally
                .keys_out
                .write(std::iter::once(log.key.as_str()).filter(|_| !log.duplicate));
        }
        Err(e) => {
            tally.counters.failed.fetch_add(1, Ordering::Relaxed);
            keep_first_error(&tally.first_error, &e.to_string());
        }
    }
    Ok(())
}

pub async fn load(args: LoadArgs) -> Result<LoadSummary> {
    check_args(&args)?;
    let run_id = run_id(&args);
    // The file when given, and the SLUICE__… environment either way (SLUICE__PRODUCER__KAFKA_TOPIC
    // alone sends to Kafka).
    let settings = crate::config::load_partial(args.config.as_deref())?;
    let tally = Tally::new(args.keys_out.as_ref())?;
    let (sink, target) = open_sink(&args, &settings, &tally).await?;
    let (duration, total_hint) = run_length(&args);
    let mut generator = Generator {
        args: &args,
        tally: &tally,
        gen_: LogGen::new(
            &run_id,
            args.seed,
            args.size,
            args.duplicate_ratio,
            args.key_space,
            args.fifo_groups,
        )
        .with_shape(args.shape),
        sink,
        duration,
        progress: Progress::new(total_hint),
        batch: Vec::with_capacity(args.batch),
        batch_started: Instant::now(),
    };
    generator.run().await?;
    let Generator {
        gen_,
        sink,
        progress,
        batch,
        ..
    } = generator;
    let generated_s = progress.start.elapsed().as_secs_f64();
    let messages_sent = sink.close(batch, &tally.counters).await;
    tally.keys_out.finish()?;
    progress.show(&gen_, &tally.counters, true);
    let duration_s = progress
        .start
        .elapsed()
        .as_secs_f64()
        .max(generated_s)
        .max(1e-3);
    summarize(
        &args,
        run_id,
        target,
        &gen_,
        &tally,
        messages_sent,
        duration_s,
    )
}

/// The run's figures, rates over `duration_s`.
fn summarize(
    args: &LoadArgs,
    run_id: String,
    target: String,
    gen_: &LogGen,
    tally: &Tally,
    messages_sent: Option<u64>,
    duration_s: f64,
) -> Result<LoadSummary> {
    let lat = tally
        .latencies
        .lock()
        .map_err(|_| anyhow!("lock poisoned"))?;
    let c = &tally.counters;
    Ok(LoadSummary {
        target,
        run_id,
        shape: args.shape,
        generated: gen_.generated,
        duplicates: gen_.duplicates,
        distinct_keys: gen_.distinct_keys(),
        accepted: c.accepted.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        bytes: gen_.bytes,
        requests: c.requests.load(Ordering::Relaxed),
        retries: c.retries.load(Ordering::Relaxed),
        status_429: c.status_429.load(Ordering::Relaxed),
        status_503: c.status_503.load(Ordering::Relaxed),
        status_other: c.status_other.load(Ordering::Relaxed),
        connect_errors: c.connect_errors.load(Ordering::Relaxed),
        first_error: tally.first_error.lock().ok().and_then(|f| f.clone()),
        messages_sent,
        target_rate: args.rate,
        duration_s: (duration_s * 100.0).round() / 100.0,
        logs_per_s: (c.accepted.load(Ordering::Relaxed) as f64 / duration_s).round(),
        mb_per_s: (gen_.bytes as f64 / duration_s / 1e6 * 100.0).round() / 100.0,
        request_p50_ms: lat.quantile_ms(0.50),
        request_p99_ms: lat.quantile_ms(0.99),
    })
}

pub fn print_summary(s: &LoadSummary, json: bool) {
    if json {
        println!("{}", serde_json::to_string(s).unwrap_or_default());
        return;
    }
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
    println!("sluice load: {}", s.target);
    println!("  run id            {}", s.run_id);
    println!(
        "  logs made         {} ({} duplicates, {} distinct keys, {:.1} MB, {} shape, {} bytes each on average)",
        s.generated,
        s.duplicates,
        s.distinct_keys,
        s.bytes as f64 / 1e6,
        s.shape,
        s.bytes / s.generated.max(1)
    );
    println!("  accepted          {}", s.accepted);
    println!("  failed            {}", s.failed);
    if s.target.starts_with("kafka") {
        // One record per log (the producer's packed messages are split on the way out).
        println!("  Kafka records     {}", s.accepted);
    } else if let Some(m) = s.messages_sent {
        println!("  SQS messages      {m}");
    } else {
        println!(
            "  HTTP requests     {} ({} retries; 429: {}, 503: {}, other: {}, connect errors: {})",
            s.requests, s.retries, s.status_429, s.status_503, s.status_other, s.connect_errors
        );
        println!(
            "  request latency   p50 {}, p99 {}",
            opt(s.request_p50_ms),
            opt(s.request_p99_ms)
        );
    }
    println!(
        "  rate              {} logs/s accepted ({} MB/s; target {})",
        s.logs_per_s,
        s.mb_per_s,
        if s.target_rate == 0 {
            "unlimited".to_owned()
        } else {
            format!("{}/s", s.target_rate)
        }
    );
    println!("  duration          {:.2} s", s.duration_s);
    if let Some(e) = &s.first_error {
        println!("  first error       {e}");
    }
}

/// Where the logs go: the ingest URL, and the HTTP client (reqwest: a keep-alive connection per
/// worker in flight, rustls with --cacert's roots for https).
struct Endpoint {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl Endpoint {
    fn parse(url: &str, cacert: Option<&std::path::Path>, workers: usize) -> Result<Endpoint> {
        let mut parsed =
            reqwest::Url::parse(url).with_context(|| format!("--ingest `{url}` is not a URL"))?;
        let https = match parsed.scheme() {
            "http" => false,
            "https" => true,
            _ => bail!("--ingest `{url}` must start with http:// or https://"),
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            bail!("--ingest `{url}` has no host");
        }
        if matches!(parsed.path(), "" | "/") {
            parsed.set_path("/v1/logs");
        }
        // reqwest builds its TLS with the process's default rustls provider even for http://:
        // the aws-lc-rs one the server side uses (a second install is refused, harmlessly).
        let _ = tokio_rustls::rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut client = reqwest::Client::builder()
            .pool_max_idle_per_host(workers)
            .tcp_nodelay(true);
        if https {
            let Some(ca) = cacert else {
                bail!("https:// needs --cacert FILE (the CA that signed the ingest certificate)")
            };
            client = client.use_preconfigured_tls(tls_config(ca)?);
        }
        let client = client.build().context("the HTTP client")?;
        Ok(Endpoint {
            url: parsed,
            client,
        })
    }
}

/// TLS that trusts only the CA in `ca` (rustls, with the aws-lc-rs provider the server uses).
fn tls_config(ca: &std::path::Path) -> Result<tokio_rustls::rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read --cacert {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("bad PEM in {}", ca.display()))?)
            .context("--cacert: not a usable CA certificate")?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS setup")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

struct HttpWorker {
    endpoint: Arc<Endpoint>,
    key: String,
    gzip: bool,
    retry_for: Duration,
    tally: Tally,
}

enum Answer {
    Accepted,
    Retry(Duration),
    Fail(String),
}

impl HttpWorker {
    async fn run(self, rx: Arc<Mutex<mpsc::Receiver<Vec<GenLog>>>>) {
        loop {
            let Some(batch) = rx.lock().await.recv().await else {
                return;
            };
            self.deliver(batch).await;
        }
    }

    fn body(&self, batch: &[GenLog]) -> Bytes {
        let mut text = Vec::with_capacity(batch.iter().map(|l| l.json.len() + 1).sum());
        for l in batch {
            text.extend_from_slice(l.json.as_bytes());
            text.push(b'\n');
        }
        if self.gzip {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            if enc.write_all(&text).is_ok()
                && let Ok(z) = enc.finish()
            {
                return Bytes::from(z);
            }
        }
        Bytes::from(text)
    }

    async fn deliver(&self, batch: Vec<GenLog>) {
        let body = self.body(&batch);
        let deadline = Instant::now() + self.retry_for;
        let n = batch.len() as u64;
        loop {
            let answer = self.attempt(body.clone()).await;
            let wait = match answer {
                Answer::Accepted => {
                    self.tally.counters.accepted.fetch_add(n, Ordering::Relaxed);
                    self.tally.keys_out.write(
                        batch
                            .iter()
                            .filter(|l| !l.duplicate)
                            .map(|l| l.key.as_str()),
                    );
                    return;
                }
                Answer::Fail(why) => {
                    self.fail(n, why);
                    return;
                }
                Answer::Retry(wait) => wait,
            };
            if Instant::now() + wait > deadline {
                self.fail(
                    n,
                    format!(
                        "gave up after --retry-for {}",
                        humantime::format_duration(self.retry_for)
                    ),
                );
                return;
            }
            self.tally.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(wait).await;
        }
    }

    fn fail(&self, n: u64, why: String) {
        self.tally.counters.failed.fetch_add(n, Ordering::Relaxed);
        if keep_first_error(&self.tally.first_error, &why) {
            tracing::warn!(error = %why, "the ingest API refused logs");
        }
    }

    /// One POST of the batch (a failed connection or request is retried after 250 ms).
    async fn attempt(&self, body: Bytes) -> Answer {
        let counters = &self.tally.counters;
        let mut req = self
            .endpoint
            .client
            .post(self.endpoint.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .bearer_auth(&self.key)
            .body(body);
        if self.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let started = Instant::now();
        counters.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                counters.connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "request failed");
                return Answer::Retry(Duration::from_millis(250));
            }
        };
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let text = resp.text().await.unwrap_or_default();
        if let Ok(mut l) = self.tally.latencies.lock() {
            l.record(started.elapsed());
        }
        self.answer(status, retry_after, text)
    }

    /// What an answer means: accepted (2xx), retry after Retry-After (429, 503, counted), or
    /// a failure with the server's message (anything else).
    fn answer(&self, status: reqwest::StatusCode, retry_after: Duration, text: String) -> Answer {
        let counters = &self.tally.counters;
        match status.as_u16() {
            200..=299 => Answer::Accepted,
            429 => {
                counters.status_429.fetch_add(1, Ordering::Relaxed);
                Answer::Retry(retry_after)
            }
            503 => {
                counters.status_503.fetch_add(1, Ordering::Relaxed);
                Answer::Retry(retry_after)
            }
            _ => {
                counters.status_other.fetch_add(1, Ordering::Relaxed);
                let msg = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_owned))
                    .unwrap_or(text);
                Answer::Fail(format!("{status}: {}", msg.trim()))
            }
        }
    }
}

/// An answer's Retry-After in seconds, within 0-60 s (1 s when it has none).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Duration {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_secs_f64(s.clamp(0.0, 60.0))
        })
}

/// `sluice load`: the summary printed (JSON with --json); exit 1 when any log failed.
pub async fn command(args: LoadArgs) -> crate::command::Outcome {
    let json = args.json;
    let summary = crate::command::short_lived("warn", load(args)).await?;
    print_summary(&summary, json);
    Ok(if summary.failed == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_specs_parse_and_reject_nonsense() {
        assert_eq!("800".parse(), Ok(SizeDist::Fixed(800)));
        assert_eq!("fixed:800".parse(), Ok(SizeDist::Fixed(800)));
        assert_eq!("200-3000".parse(), Ok(SizeDist::Uniform(200, 3000)));
        assert_eq!("uniform:200-3000".parse(), Ok(SizeDist::Uniform(200, 3000)));
        assert_eq!(
            "lognormal:600-20000".parse(),
            Ok(SizeDist::LogNormal {
                median: 600.0,
                p99: 20000.0
            })
        );
        assert!("3000-200".parse::<SizeDist>().is_err());
        assert!("pareto:1-2".parse::<SizeDist>().is_err());
        assert!("big".parse::<SizeDist>().is_err());
        assert!("2000000".parse::<SizeDist>().is_err());
    }

    #[test]
    fn logs_have_the_schema_the_size_and_the_duplicates_asked_for() {
        let mut g = LogGen::new("t", 3, SizeDist::Uniform(500, 2000), 0.2, None, 4);
        let logs: Vec<GenLog> = (0..5000).map(|_| g.next_log()).collect();
        let schema = sluice_core::Schema::default();
        for l in &logs {
            let v: serde_json::Value = serde_json::from_str(&l.json).unwrap();
            assert_eq!(v["request_id"], l.key.as_str());
            assert!(v["tenant"].as_str().unwrap().starts_with("t-"));
            sluice_core::codec::decode_log(0, v.as_object().unwrap().clone(), &schema).unwrap();
            assert!((500..=2000).contains(&l.json.len()), "{}", l.json.len());
        }
        let dups = logs.iter().filter(|l| l.duplicate).count() as u64;
        assert_eq!(dups, g.duplicates);
        assert!(
            (800..1200).contains(&dups),
            "{dups} duplicates of 5000 at 0.2"
        );
        // Every duplicate repeats an earlier log exactly; the rest are new keys.
        let mut seen = std::collections::HashMap::new();
        for l in &logs {
            if l.duplicate {
                assert_eq!(seen.get(&l.key), Some(&l.json));
            } else {
                assert!(seen.insert(l.key.clone(), l.json.clone()).is_none());
            }
        }
        assert_eq!(g.distinct_keys(), seen.len() as u64);
    }

    #[test]
    fn a_key_space_bounds_the_distinct_keys() {
        let mut g = LogGen::new("k", 1, SizeDist::Fixed(300), 0.0, Some(100), 0);
        let keys: std::collections::HashSet<String> = (0..5000).map(|_| g.next_log().key).collect();
        assert_eq!(keys.len(), 100);
        assert_eq!(g.distinct_keys(), 100);
    }

    #[test]
    fn lognormal_has_its_median_and_a_tail() {
        let d = SizeDist::LogNormal {
            median: 1000.0,
            p99: 10000.0,
        };
        let mut rng = StdRng::seed_from_u64(9);
        let mut v: Vec<usize> = (0..20000).map(|_| d.sample(&mut rng)).collect();
        v.sort_unstable();
        let median = v[v.len() / 2];
        let p99 = v[v.len() * 99 / 100];
        assert!((900..1100).contains(&median), "median {median}");
        assert!((8000..12500).contains(&p99), "p99 {p99}");
    }

    #[test]
    fn histogram_quantiles_land_in_the_right_bucket() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((50.0..=55.0).contains(&p50), "p50 {p50}");
        assert!((99.0..=110.0).contains(&p99), "p99 {p99}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }
}
