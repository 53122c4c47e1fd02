//! `sluice ingest`: an HTTP API that takes request logs and puts them into the queue through
//! sluice-producer.
//!
//! `POST /v1/logs` with a JSON object, a JSON array of objects, or NDJSON; `Content-Encoding:
//! gzip` accepted. The checks run cheapest first:
//!
//! | answer | when |
//! |---|---|
//! | 401 | no `Authorization: Bearer KEY` / `X-Api-Key: KEY` matching a configured key (SHA-256, compared in constant time) |
//! | 503 + Retry-After | admission control: the bytes waiting (producer memory + spool) pass `ingest.max_backlog_bytes`, or the buffer is full |
//! | 413 | body over `ingest.max_body_bytes` (before or after gzip), or more than `ingest.max_logs_per_request` logs |
//! | 415 | a Content-Encoding other than gzip or identity |
//! | 400 | not JSON, not objects, a log sluice would dead-letter, or a gzip body with trailing bytes that are not gzip; the message names the line and log |
//! | 413 | a log larger than a message can be (producer.max_message_bytes, capped at the queue's MaximumMessageSize) |
//! | 422 | SQS refused a log for good; answered once the request's other logs are in the queue, the message names the line and log and says where the refused one is kept (the reject file, or only the ERROR log) |
//! | 429 + Retry-After | the key is over `ingest.rate_per_key` logs/s (governor's keyed token bucket) |
//! | 202 | every log is in the queue or in the spool (durable: a kill -9 after this loses nothing) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aws_config::BehaviorVersion;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_common::catalog;
use sluice_core::Schema;
use sluice_core::sync::RecoverRw;
use sluice_producer::Producer;
use sluice_producer::sqs::SqsTransport;
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::command::{ConfigArgs, Failure, INTERRUPTED, Outcome};
use crate::config::{ApiKey, IngestSettings, Settings, read_api_keys_file};
use crate::telemetry::{self, Probe};

mod body;
mod handler;
mod layers;
mod reload;

pub use body::{BadBody, BodyRules, Parsed, parse_body};

/// Registers the help text of the ingest API's own metrics (`telemetry::install_metrics` has
/// described the producer's inside it).
pub fn describe_metrics() {
    catalog::describe(catalog::Exporter::Ingest);
}

struct Key {
    name: String,
    digest: [u8; 32],
}

struct Ingest {
    producer: Producer,
    /// Swapped whole when `ingest.api_keys_file` changes (ingest.reload_interval).
    keys: std::sync::RwLock<Arc<Vec<Key>>>,
    limiter: DefaultKeyedRateLimiter<String>,
    schema: Schema,
    rules: BodyRules,
    config: IngestSettings,
    /// SIGTERM came: /readyz says not ready (requests are still served for drain_delay).
    shutting_down: AtomicBool,
    /// The drain delay passed and the listener is closing: new requests get 503.
    closing: AtomicBool,
    requests: AtomicU64,
    accepted_logs: AtomicU64,
    by_status: [AtomicU64; 10],
}

const STATUSES: [u16; 10] = [202, 400, 401, 408, 413, 415, 422, 429, 503, 500];

impl Ingest {
    fn new(settings: &Settings, keys: Vec<Key>, producer: Producer) -> Ingest {
        let ic = &settings.ingest;
        let quota = Quota::per_second(ic.rate_per_key).allow_burst(ic.burst_per_key);
        let config = producer.config();
        Ingest {
            keys: std::sync::RwLock::new(Arc::new(keys)),
            limiter: RateLimiter::keyed(quota),
            schema: settings.schema(),
            rules: BodyRules {
                max_logs: ic.max_logs_per_request.get(),
                max_log_bytes: config.max_message_bytes,
                group_field: config.fifo.then(|| config.group_field.clone()).flatten(),
            },
            config: ic.clone(),
            shutting_down: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            accepted_logs: AtomicU64::new(0),
            by_status: Default::default(),
            producer,
        }
    }

    fn count(&self, status: StatusCode) {
        metrics::counter!(catalog::INGEST_REQUESTS_TOTAL, "code" => status.as_str().to_owned())
            .increment(1);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = STATUSES.iter().position(|&s| s == status.as_u16()) {
            self.by_status[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The name of the key the request carries, comparing against every configured key in
    /// constant time.
    fn authenticate(&self, headers: &HeaderMap) -> Option<String> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))?
            .trim();
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let keys = self.keys.read_locked().clone();
        let mut found = None;
        for k in keys.iter() {
            if bool::from(k.digest.ct_eq(&digest)) {
                found = Some(k.name.clone());
            }
        }
        found
    }
}

struct IngestProbe(Arc<Ingest>);

impl Probe for IngestProbe {
    fn alive(&self) -> Result<(), String> {
        Ok(())
    }

    fn ready(&self) -> Result<(), String> {
        let st = &self.0;
        if st.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        let backlog = st.producer.backlog_bytes();
        if backlog > st.config.max_backlog_bytes {
            return Err(format!(
                "{backlog} bytes wait for the queue (ingest.max_backlog_bytes {})",
                st.config.max_backlog_bytes
            ));
        }
        Ok(())
    }
}

/// The files `sluice ingest` serves with: the API keys (inline and `api_keys_file`) and, with
/// `tls_cert` and `tls_key`, the TLS identity. Read once at start, before anything else starts,
/// and by `sluice validate --for ingest`, so an init container catches a Secret mounted at the
/// wrong path.
pub struct IngestFiles {
    keys: Vec<Key>,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl IngestFiles {
    /// Reads them all, naming every file that is wrong.
    pub fn load(config: &IngestSettings) -> Result<IngestFiles> {
        let keys = load_keys(config);
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => reload::tls_acceptor(cert, key).map(Some),
            _ => Ok(None),
        };
        match (keys, tls) {
            (Ok(keys), Ok(tls)) => Ok(IngestFiles { keys, tls }),
            (keys, tls) => {
                let problems: Vec<String> = [keys.err(), tls.err()]
                    .into_iter()
                    .flatten()
                    .map(|e| format!("\n  - {e:#}"))
                    .collect();
                bail!("the ingest files cannot be used:{}", problems.concat())
            }
        }
    }

    /// How many API keys there are.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether it serves HTTPS.
    pub fn https(&self) -> bool {
        self.tls.is_some()
    }
}

fn load_keys(config: &IngestSettings) -> Result<Vec<Key>> {
    let mut all: Vec<ApiKey> = config.api_keys.clone();
    if let Some(path) = &config.api_keys_file {
        all.extend(read_api_keys_file(path)?);
    }
    if all.is_empty() {
        bail!("ingest.api_keys (or ingest.api_keys_file) holds no key; sluice ingest needs one");
    }
    Ok(all
        .into_iter()
        .map(|k| Key {
            name: k.name,
            digest: k.sha256,
        })
        .collect())
}

fn error(status: StatusCode, message: impl Into<String>, extra: Value) -> Response {
    let mut body = json!({"error": message.into()});
    if let (Some(b), Value::Object(extra)) = (body.as_object_mut(), extra) {
        b.extend(extra);
    }
    (status, axum::Json(body)).into_response()
}

fn with_retry_after(mut resp: Response, after: Duration) -> Response {
    let secs = after.as_secs_f64().ceil().max(1.0) as u64;
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

/// Runs the ingest API until SIGTERM/SIGINT, then stops taking requests, lets those in flight
/// finish, and closes the producer (what SQS did not take stays in the spool for the next start).
#[derive(clap::Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Address to serve the API on; overrides ingest.listen.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// `sluice ingest`: load and check the config for ingest (exit 2 naming each bad key), then
/// serve.
pub async fn command(args: IngestArgs) -> Outcome {
    let settings =
        crate::config::load_for(args.config.config.as_deref(), crate::config::Mode::Ingest)
            .map_err(Failure::Config)?;
    telemetry::init_tracing(settings.telemetry.log_format, &settings.telemetry.log_level);
    ingest(settings, args.listen)
        .await
        .map_err(Failure::logged("sluice ingest failed"))
}

/// Serves until the first SIGTERM or SIGINT, then drains (exit 0); a second signal exits 130
/// at once.
pub async fn ingest(settings: Settings, listen: Option<String>) -> Result<u8> {
    let metrics = telemetry::install_metrics()?;
    describe_metrics();
    let files = IngestFiles::load(&settings.ingest)?;
    let https = files.https();
    let listen: SocketAddr = match listen {
        Some(text) => text
            .parse()
            .context("--listen must be an address like 0.0.0.0:8080")?,
        None => settings.ingest.listen,
    };
    let (producer, queue_url) = start_producer(&settings).await?;
    let ic = settings.ingest.clone();
    let state = Arc::new(Ingest::new(&settings, files.keys, producer.clone()));
    let shutdown = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let telemetry_addr = telemetry::serve(
        settings.telemetry.listen,
        metrics,
        IngestProbe(state.clone()),
        server_stop.clone(),
    )
    .await?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (ingest.listen / --listen)"))?;
    let addr = tcp.local_addr()?;
    let signalled = CancellationToken::new();
    let second_signal = tokio::spawn(crate::signals::first_and_second(
        signalled.clone(),
        "shutting down: not ready any more, serving for ingest.drain_delay, then finishing requests in flight and flushing to SQS",
        "second signal: exiting now; every log answered 202 is already in SQS or the spool",
    ));
    tokio::spawn(drain_on_signal(
        signalled,
        shutdown.clone(),
        state.clone(),
        ic.drain_delay,
    ));
    let scheme = if https { "https" } else { "http" };
    tracing::info!(
        listen = %addr,
        %scheme,
        queue_url = %queue_url,
        telemetry = %telemetry_addr,
        spool = ?settings.producer.spool_dir,
        "sluice ingest started: POST {scheme}://{addr}/v1/logs"
    );
    let tls = files
        .tls
        .map(|acceptor| Arc::new(std::sync::RwLock::new(acceptor)));
    if !ic.reload_interval.is_zero() && (tls.is_some() || ic.api_keys_file.is_some()) {
        tokio::spawn(reload::reload(
            ic.clone(),
            state.clone(),
            tls.clone(),
            server_stop.clone(),
        ));
    }
    let limits = crate::serve::ServeLimits {
        max_connections: ic.max_connections.get(),
        header_read_timeout: ic.header_read_timeout,
        shutdown_timeout: ic.shutdown_timeout,
    };
    let work = async {
        crate::serve::serve(tcp, tls, router(state.clone()), limits, shutdown.clone())
            .await
            .context("the ingest server failed")?;
        Ok::<_, anyhow::Error>(producer.close().await)
    };
    // A second signal ends it at once: every log answered 202 is already in SQS or the spool.
    let report = tokio::select! {
        report = work => report?,
        _ = second_signal => return Ok(INTERRUPTED),
    };
    server_stop.cancel();
    summarize(&state, &producer, &report)
}

/// The producer the API sends through: to Kafka (producer.kafka_topic) or to the SQS queue,
/// its message size capped by the queue's own. Returns it with where it sends.
async fn start_producer(settings: &Settings) -> Result<(Producer, String)> {
    if settings.producer.kafka_topic.is_some() {
        return crate::producers::kafka_producer(settings, false);
    }
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let queue_url = settings.sqs.queue_url_str().to_owned();
    let transport = SqsTransport::new(aws_sdk_sqs::Client::new(&sdk), &queue_url);
    let config = crate::producers::capped_by_queue(
        settings.producer.producer_config(&queue_url),
        &transport,
    )
    .await;
    let producer = Producer::start(config, transport).map_err(|e| anyhow!("producer: {e}"))?;
    Ok((producer, queue_url))
}

/// The API's routes: `POST /v1/logs` behind its layers (outermost first: count the answer,
/// the key, admission, the body), and the probes.
fn router(state: Arc<Ingest>) -> Router {
    // route_layer: the layers wrap POST only; another method gets axum's bare 405, with
    // nothing read and nothing counted.
    let post_logs = post(handler::post_logs)
        .route_layer(from_fn_with_state(state.clone(), layers::read_body))
        .route_layer(from_fn_with_state(state.clone(), layers::admit))
        .route_layer(from_fn_with_state(state.clone(), layers::require_key))
        .route_layer(from_fn_with_state(state.clone(), layers::count_status));
    Router::new()
        .route("/v1/logs", post_logs)
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(st): State<Arc<Ingest>>| async move {
                match IngestProbe(st).ready() {
                    Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                    Err(why) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {why}\n"),
                    ),
                }
            }),
        )
        // The body limit is the read_body layer's (with its own message); lift axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state)
}

/// Readiness goes false at the first signal, and the listener keeps serving for drain_delay,
/// so load balancers stop sending before it closes: no connection is refused on a rollout.
async fn drain_on_signal(
    signalled: CancellationToken,
    shutdown: CancellationToken,
    state: Arc<Ingest>,
    drain_delay: Duration,
) {
    signalled.cancelled().await;
    state.shutting_down.store(true, Ordering::Relaxed);
    tokio::time::sleep(drain_delay).await;
    tracing::info!(drain_delay = ?drain_delay, "ingest.drain_delay passed: closing the listener");
    state.closing.store(true, Ordering::Relaxed);
    shutdown.cancel();
}

/// The stop summary; an error if logs were lost (the queue did not take them and there is no
/// spool).
fn summarize(
    state: &Ingest,
    producer: &Producer,
    report: &sluice_producer::CloseReport,
) -> Result<u8> {
    let s = producer.stats();
    let counts: Vec<String> = STATUSES
        .iter()
        .zip(&state.by_status)
        .filter(|(_, n)| n.load(Ordering::Relaxed) > 0)
        .map(|(code, n)| format!("{code}: {}", n.load(Ordering::Relaxed)))
        .collect();
    tracing::info!(
        requests = state.requests.load(Ordering::Relaxed),
        by_status = %counts.join(", "),
        logs_accepted = state.accepted_logs.load(Ordering::Relaxed),
        messages_sent = s.messages_sent.load(Ordering::Relaxed),
        messages_spooled = s.messages_spooled.load(Ordering::Relaxed),
        left_in_spool = report.spooled_messages,
        dropped = report.dropped_logs,
        "sluice ingest stopped"
    );
    if report.dropped_logs > 0 {
        bail!(
            "{} logs were lost at shutdown: the queue did not take them and producer.spool_dir is unset",
            report.dropped_logs
        );
    }
    Ok(0)
}
#[cfg(test)]
mod tests {
    use super::body::read_gzip;
    use super::*;

    /// The default schema with only `ts` required, so the fixtures stay short.
    fn schema() -> Schema {
        Schema {
            required_fields: vec!["ts".into()],
            ..Schema::default()
        }
    }

    fn rules(max_logs: usize) -> BodyRules {
        BodyRules {
            max_logs,
            ..BodyRules::default()
        }
    }

    #[test]
    fn parses_objects_arrays_and_ndjson_and_names_the_bad_line() {
        let ok = br#"{"request_id":"a","ts":1}
{"request_id":"b","ts":2}
[{"request_id":"c","ts":3},{"request_id":"d","ts":4}]"#;
        let logs = parse_body(ok, &schema(), &rules(100)).unwrap().logs;
        assert_eq!(logs.len(), 4);
        assert_eq!(logs[0].json(), r#"{"request_id":"a","ts":1}"#);

        let bad_ts =
            b"{\"request_id\":\"a\",\"ts\":1}\n\n{\"request_id\":\"b\",\"ts\":\"yesterday\"}\n";
        let e = parse_body(bad_ts, &schema(), &rules(100)).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.line, Some(3));
        assert_eq!(e.log, Some(1));
        assert!(e.message.starts_with("line 3: log 1"), "{}", e.message);
        assert!(e.message.contains("ts"), "{}", e.message);

        let not_json = b"{\"request_id\":\"a\",\"ts\":1}\n{\"request_id\":";
        let e = parse_body(not_json, &schema(), &rules(100)).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("not JSON"), "{}", e.message);

        let e = parse_body(b"[1]", &schema(), &rules(100)).unwrap_err();
        assert!(
            e.message.contains("not a JSON object but a number"),
            "{}",
            e.message
        );
        let e = parse_body(b"  ", &schema(), &rules(100)).unwrap_err();
        assert!(e.message.contains("no logs"));
        let e = parse_body(b"{\"ts\":1}{\"ts\":2}{\"ts\":3}", &schema(), &rules(2)).unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn gzip_bodies_are_limited_after_decompression() {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&vec![b' '; 100_000]).unwrap();
        let gz = enc.finish().unwrap();
        assert!(gz.len() < 1000);
        assert_eq!(read_gzip(&gz, 200_000).unwrap().len(), 100_000);
        assert_eq!(
            read_gzip(&gz, 50_000).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            read_gzip(b"not gzip", 50_000).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    fn gz(text: &str) -> Vec<u8> {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn every_gzip_member_is_read_and_trailing_garbage_is_refused() {
        let a = "{\"request_id\":\"a1\",\"ts\":1}\n{\"request_id\":\"a2\",\"ts\":1}\n{\"request_id\":\"a3\",\"ts\":1}\n";
        let b = "{\"request_id\":\"b1\",\"ts\":1}\n{\"request_id\":\"b2\",\"ts\":1}\n{\"request_id\":\"b3\",\"ts\":1}\n";
        let mut two = gz(a);
        two.extend(gz(b));
        let text = read_gzip(&two, 1 << 20).unwrap();
        let logs = parse_body(&text, &schema(), &rules(100)).unwrap().logs;
        assert_eq!(logs.len(), 6, "both members");
        let mut junk = gz(a);
        junk.extend(b"trailing bytes that are not gzip");
        let e = read_gzip(&junk, 1 << 20).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
    }

    #[test]
    fn fifo_logs_take_their_group_from_the_group_field_and_oversize_logs_are_named() {
        let body = b"{\"request_id\":\"a\",\"ts\":1,\"tenant\":\"t1\"}\n{\"request_id\":\"b\",\"ts\":1,\"tenant\":\"t 2\"}\n{\"request_id\":\"c\",\"ts\":1}";
        let r = BodyRules {
            max_logs: 10,
            max_log_bytes: 0,
            group_field: Some("tenant".into()),
        };
        let logs = parse_body(body, &schema(), &r).unwrap().logs;
        let groups: Vec<Option<&str>> = logs.iter().map(|l| l.group()).collect();
        assert_eq!(groups[0], Some("t1"));
        let g2 = groups[1].unwrap();
        assert_eq!(
            sluice_producer::sqs_group_id(g2),
            g2,
            "a valid SQS group id"
        );
        assert_eq!(groups[2], None, "no field: the default group");
        let r = BodyRules {
            max_logs: 10,
            max_log_bytes: 30,
            group_field: None,
        };
        let e = parse_body(body, &schema(), &r).unwrap_err();
        assert_eq!(
            (e.status, e.line, e.log),
            (StatusCode::PAYLOAD_TOO_LARGE, Some(1), Some(0))
        );
    }

    #[test]
    fn hex_digests_decode() {
        let d = Sha256::digest(b"k");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            crate::config::parse_sha256(&hex).unwrap(),
            <[u8; 32]>::from(d)
        );
        assert!(crate::config::parse_sha256("zz").is_err());
    }

    /// The checks wrap POST only: another method on /v1/logs is axum's bare 405, without the
    /// key, the admission or the body being looked at, and it is not counted.
    #[tokio::test]
    async fn only_post_goes_through_the_checks_and_is_counted() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let settings = Settings::default();
        let producer = Producer::start(
            sluice_producer::ProducerConfig::for_queue("https://sqs.eu-west-1.amazonaws.com/1/q"),
            sluice_producer::testing::FakeQueue::new(),
        )
        .unwrap();
        let keys = vec![Key {
            name: "k".into(),
            digest: Sha256::digest(b"secret").into(),
        }];
        let state = Arc::new(Ingest::new(&settings, keys, producer));
        let app = router(state.clone());
        let call = |method: &str, key: Option<&str>| {
            let mut req = Request::builder().method(method).uri("/v1/logs");
            if let Some(k) = key {
                req = req.header("x-api-key", k);
            }
            let req = req
                .body(Body::from("{\"request_id\":\"a\",\"ts\":1}"))
                .unwrap();
            app.clone().oneshot(req)
        };
        for key in [None, Some("secret")] {
            for method in ["GET", "PUT"] {
                let resp = call(method, key).await.unwrap();
                assert_eq!(
                    resp.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {key:?}"
                );
            }
        }
        assert_eq!(
            state.requests.load(Ordering::Relaxed),
            0,
            "a 405 is not counted"
        );
        let resp = call("POST", None).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            state.requests.load(Ordering::Relaxed),
            1,
            "a POST is counted"
        );
    }
}
