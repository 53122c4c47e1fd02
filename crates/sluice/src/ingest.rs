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

use sluice_common::catalog;
use sluice_core::sync::RecoverRw;
use std::io::Read;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use aws_config::BehaviorVersion;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sluice_core::Schema;
use sluice_producer::sqs::SqsTransport;
use sluice_producer::{Log, ProduceError, Producer};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;

use crate::command::{ConfigArgs, Failure, INTERRUPTED, Outcome};
use crate::config::{ApiKey, IngestSettings, Settings, read_api_keys_file};
use crate::telemetry::{self, Probe};

/// Registers the help text of the ingest API's metrics and the producer's inside it.
pub fn describe_metrics() {
    catalog::describe(catalog::Exporter::Ingest);
    catalog::describe(catalog::Exporter::Producer);
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

/// Why a body was refused: the status and what to tell the client.
#[derive(Debug)]
pub struct BadBody {
    pub status: StatusCode,
    pub message: String,
    pub line: Option<usize>,
    pub log: Option<usize>,
}

fn bad(message: String, line: Option<usize>, log: Option<usize>) -> BadBody {
    BadBody {
        status: StatusCode::BAD_REQUEST,
        message,
        line,
        log,
    }
}

/// What a body may hold, beyond the schema.
#[derive(Debug, Clone, Default)]
pub struct BodyRules {
    /// Logs per request (ingest.max_logs_per_request).
    pub max_logs: usize,
    /// The largest log a message can carry (producer.max_message_bytes, capped by the queue).
    pub max_log_bytes: usize,
    /// FIFO queues: the log field whose value is the message group (producer.group_field).
    pub group_field: Option<String>,
}

/// The logs of a body, with the line each starts on.
#[derive(Debug)]
pub struct Parsed {
    pub logs: Vec<Log>,
    pub lines: Vec<usize>,
}

/// Parses a body (one object, an array of objects, or NDJSON) into logs, checking each as
/// `sluice run` would, so nothing accepted here is dead-lettered there.
pub fn parse_body(text: &[u8], schema: &Schema, rules: &BodyRules) -> Result<Parsed, BadBody> {
    let max_logs = rules.max_logs;
    let text = std::str::from_utf8(text).map_err(|e| {
        let line = 1 + text[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        bad(
            format!(
                "line {line}: the body is not UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
            Some(line),
            None,
        )
    })?;
    let mut logs = Vec::new();
    let mut lines = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    let mut check = |logs: &mut Vec<Log>, line: usize, value: Value, raw: Option<&str>| {
        let index = logs.len();
        if logs.len() >= max_logs {
            return Err(BadBody {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "more than {max_logs} logs in one request (ingest.max_logs_per_request); split it"
                ),
                line: Some(line),
                log: Some(index),
            });
        }
        let map = match value {
            Value::Object(map) => map,
            other => {
                let found = match other {
                    Value::Null => "null",
                    Value::Bool(_) => "a boolean",
                    Value::Number(_) => "a number",
                    Value::String(_) => "a string",
                    _ => "an array inside an array",
                };
                return Err(bad(
                    format!("line {line}: log {index} is not a JSON object but {found}"),
                    Some(line),
                    Some(index),
                ));
            }
        };
        let json = match raw {
            Some(r) => r.trim().to_owned(),
            None => Value::Object(map.clone()).to_string(),
        };
        let group = rules
            .group_field
            .as_ref()
            .and_then(|f| map.get(f))
            .map(|v| match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            });
        sluice_core::codec::decode_log(index, map, schema).map_err(|e| {
            bad(
                format!("line {line}: {e} ({})", e.reason()),
                Some(line),
                Some(index),
            )
        })?;
        let mut log =
            Log::from_json(json).map_err(|e| bad(e.to_string(), Some(line), Some(index)))?;
        if let Some(g) = group {
            log = log.with_group(g);
        }
        let bytes = log.json().len() + 1;
        if rules.max_log_bytes > 0 && bytes > rules.max_log_bytes {
            return Err(BadBody {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "line {line}: log {index} is {bytes} bytes, more than one message can carry ({} bytes: producer.max_message_bytes or the queue's MaximumMessageSize)",
                    rules.max_log_bytes
                ),
                line: Some(line),
                log: Some(index),
            });
        }
        logs.push(log);
        lines.push(line);
        Ok(())
    };
    loop {
        let next = stream.next();
        let end = stream.byte_offset();
        let value = match next {
            None => break,
            Some(Err(e)) => {
                return Err(bad(
                    format!("line {}: not JSON: {e}", e.line()),
                    Some(e.line()),
                    Some(logs.len()),
                ));
            }
            Some(Ok(v)) => v,
        };
        let raw = &text[start..end];
        let lead = raw.len() - raw.trim_start().len();
        let line = 1 + text[..start + lead].matches('\n').count();
        start = end;
        match value {
            Value::Array(items) => {
                for item in items {
                    check(&mut logs, line, item, None)?;
                }
            }
            v => check(&mut logs, line, v, Some(raw))?,
        }
    }
    if logs.is_empty() {
        return Err(bad("the body holds no logs".into(), None, None));
    }
    Ok(Parsed { logs, lines })
}

/// Decompresses a gzip body whole: every member (`cat a.gz b.gz`, pigz and many shippers send
/// several), refusing trailing bytes that are not gzip.
fn read_gzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BadBody> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder.read_to_end(&mut out).map_err(|e| {
        bad(
            format!("Content-Encoding is gzip but the body does not decompress: {e}"),
            None,
            None,
        )
    })?;
    if out.len() > limit {
        return Err(BadBody {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "the body decompresses to more than {limit} bytes (ingest.max_body_bytes)"
            ),
            line: None,
            log: None,
        });
    }
    Ok(out)
}

async fn post_logs(State(st): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let resp = handle(&st, headers, body).await;
    st.count(resp.status());
    resp
}

async fn handle(st: &Ingest, headers: HeaderMap, body: Body) -> Response {
    let Some(key) = st.authenticate(&headers) else {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown API key: send `Authorization: Bearer KEY` or `X-Api-Key: KEY`",
            Value::Null,
        );
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice\""),
        );
        return resp;
    };
    let retry_after = st.config.retry_after;
    let backlog = st.producer.backlog_bytes();
    if backlog > st.config.max_backlog_bytes || st.closing.load(Ordering::Relaxed) {
        let why = if st.closing.load(Ordering::Relaxed) {
            "this instance is shutting down; retry (another instance will answer)".to_owned()
        } else {
            format!(
                "the queue path is backed up ({backlog} bytes waiting, limit {}); retry later",
                st.config.max_backlog_bytes
            )
        };
        return with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, why, Value::Null),
            retry_after,
        );
    }
    let limit = st.config.max_body_bytes;
    let bytes = match tokio::time::timeout(
        st.config.body_read_timeout,
        axum::body::to_bytes(body, limit),
    )
    .await
    {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {limit} bytes (ingest.max_body_bytes); split it"),
                Value::Null,
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} (ingest.body_read_timeout)",
                    humantime::format_duration(st.config.body_read_timeout)
                ),
                Value::Null,
            );
        }
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let decoded;
    let body: &[u8] = match encoding.as_str() {
        "identity" | "" => &bytes,
        "gzip" | "x-gzip" => match read_gzip(&bytes, limit) {
            Ok(b) => {
                decoded = b;
                &decoded
            }
            Err(b) => return error(b.status, b.message, Value::Null),
        },
        other => {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding `{other}` is not supported; send gzip or no encoding"),
                Value::Null,
            );
        }
    };
    let Parsed { logs, lines } = match parse_body(body, &st.schema, &st.rules) {
        Ok(l) => l,
        Err(b) => {
            return error(b.status, b.message, json!({"line": b.line, "log": b.log}));
        }
    };
    let n = logs.len();
    let Some(cells) = NonZeroU32::new(n as u32) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body holds no logs",
            Value::Null,
        );
    };
    match st.limiter.check_key_n(&key, cells) {
        Ok(Ok(())) => {}
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return with_retry_after(
                error(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "API key `{key}` is over its rate of {} logs/s (ingest.rate_per_key); retry after {:.1} s",
                        st.config.rate_per_key,
                        wait.as_secs_f64()
                    ),
                    Value::Null,
                ),
                wait,
            );
        }
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "{n} logs in one request is more than the key's burst of {} (ingest.burst_per_key); split it",
                    st.config.burst_per_key
                ),
                Value::Null,
            );
        }
    }
    match tokio::time::timeout(
        st.config.request_timeout,
        st.producer.send_logs_durable(logs),
    )
    .await
    {
        Ok(Ok(())) => {
            metrics::counter!(catalog::INGEST_LOGS_TOTAL).increment(n as u64);
            st.accepted_logs.fetch_add(n as u64, Ordering::Relaxed);
            (StatusCode::ACCEPTED, axum::Json(json!({"accepted": n}))).into_response()
        }
        Ok(Err(ProduceError::Full)) => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the producer's buffer is full (producer.buffer_bytes); retry later",
                Value::Null,
            ),
            retry_after,
        ),
        Ok(Err(ProduceError::LogRejected { index, reason })) => {
            // A permanent problem with the content, not with capacity: 422, naming the log. The
            // other logs of the request are in the queue; the reason says where the refused one
            // is kept (the reject file, or only the ERROR log).
            let line = lines.get(index).copied();
            error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "line {}: log {index} was refused by SQS ({reason}); the other logs were accepted",
                    line.unwrap_or(0)
                ),
                json!({"line": line, "log": index}),
            )
        }
        Ok(Err(ProduceError::TooLarge { bytes, max })) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a log of {bytes} bytes does not fit a message of {max} bytes (producer.max_message_bytes)"
            ),
            Value::Null,
        ),
        Ok(Err(e @ (ProduceError::NotAnObject | ProduceError::Rejected(_)))) => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Value::Null)
        }
        Ok(Err(e @ ProduceError::Closed)) => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}: this instance is shutting down; retry"),
                Value::Null,
            ),
            retry_after,
        ),
        Err(_) => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the queue path did not take the logs in ingest.request_timeout; they may still arrive, and a retry is safe (writes are idempotent)",
                Value::Null,
            ),
            retry_after,
        ),
    }
}

/// The contents' digest of the files a reload follows (a missing file digests as empty).
fn digest_of(paths: &[&Path]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in paths {
        h.update(std::fs::read(p).unwrap_or_default());
        h.update([0u8]);
    }
    h.finalize().into()
}

/// Reads the TLS certificate and key and the API key file again every
/// `ingest.reload_interval`, and swaps in what changed: a certificate rotated by cert-manager
/// (Kubernetes updates the mounted Secret in place) or a new key list is served without a
/// restart. A file that does not load leaves the current one in place, said in the log and in
/// `sluice_ingest_reload_errors_total`.
async fn reload(
    ic: IngestSettings,
    state: Arc<Ingest>,
    tls: Option<crate::serve::SharedTls>,
    stop: CancellationToken,
) {
    let tls_files: Vec<&Path> = [ic.tls_cert.as_deref(), ic.tls_key.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let mut tls_seen = digest_of(&tls_files);
    let key_file = ic.api_keys_file.as_deref();
    let mut keys_seen = digest_of(&key_file.into_iter().collect::<Vec<_>>());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(ic.reload_interval) => {}
        }
        if let (Some(shared), Some(cert), Some(key)) = (&tls, &ic.tls_cert, &ic.tls_key) {
            let now = digest_of(&tls_files);
            if now != tls_seen {
                match tls_acceptor(cert, key) {
                    Ok(acceptor) => {
                        *shared.write_locked() = acceptor;
                        tls_seen = now;
                        metrics::counter!(catalog::INGEST_RELOADS_TOTAL, "what" => "tls")
                            .increment(1);
                        tracing::info!(cert = %cert.display(), "TLS certificate reloaded: new connections get it");
                    }
                    Err(error) => {
                        metrics::counter!(catalog::INGEST_RELOAD_ERRORS_TOTAL, "what" => "tls")
                            .increment(1);
                        tracing::error!(error = %format!("{error:#}"), "the changed TLS certificate or key does not load: still serving the previous one");
                    }
                }
            }
        }
        if let Some(path) = key_file {
            let now = digest_of(&[path]);
            if now != keys_seen {
                match load_keys(&ic) {
                    Ok(keys) => {
                        let n = keys.len();
                        *state.keys.write_locked() = Arc::new(keys);
                        keys_seen = now;
                        metrics::counter!(catalog::INGEST_RELOADS_TOTAL, "what" => "api_keys")
                            .increment(1);
                        tracing::info!(file = %path.display(), keys = n, "API keys reloaded");
                    }
                    Err(error) => {
                        metrics::counter!(catalog::INGEST_RELOAD_ERRORS_TOTAL, "what" => "api_keys").increment(1);
                        tracing::error!(error = %format!("{error:#}"), "the changed API key file does not load: the previous keys stay");
                    }
                }
            }
        }
    }
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read ingest.tls_cert {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("ingest.tls_cert {} is not PEM certificates", cert.display()))?;
    if certs.is_empty() {
        bail!("ingest.tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("ingest.tls_key {} is not a PEM private key", key.display()))?;
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("ingest.tls_cert and ingest.tls_key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
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
    let keys = load_keys(&settings.ingest)?;
    let listen: SocketAddr = match listen {
        Some(text) => text
            .parse()
            .context("--listen must be an address like 0.0.0.0:8080")?,
        None => settings.ingest.listen,
    };
    let (producer, queue_url) = if settings.producer.kafka_topic.is_some() {
        crate::producers::kafka_producer(&settings, false)?
    } else {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let queue_url = settings.sqs.queue_url_str().to_owned();
        let transport = SqsTransport::new(aws_sdk_sqs::Client::new(&sdk), &queue_url);
        let config = crate::producers::capped_by_queue(
            settings.producer.producer_config(&queue_url),
            &transport,
        )
        .await;
        let producer = Producer::start(config, transport).map_err(|e| anyhow!("producer: {e}"))?;
        (producer, queue_url)
    };
    let ic = settings.ingest.clone();
    let quota = Quota::per_second(ic.rate_per_key).allow_burst(ic.burst_per_key);
    let state = Arc::new(Ingest {
        producer: producer.clone(),
        keys: std::sync::RwLock::new(Arc::new(keys)),
        limiter: RateLimiter::keyed(quota),
        schema: settings.schema(),
        rules: BodyRules {
            max_logs: ic.max_logs_per_request.get(),
            max_log_bytes: producer.config().max_message_bytes,
            group_field: producer
                .config()
                .fifo
                .then(|| producer.config().group_field.clone())
                .flatten(),
        },
        config: ic.clone(),
        shutting_down: AtomicBool::new(false),
        closing: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        accepted_logs: AtomicU64::new(0),
        by_status: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let telemetry_addr = telemetry::serve(
        settings.telemetry.listen,
        metrics,
        IngestProbe(state.clone()),
        server_stop.clone(),
    )
    .await?;
    let app = Router::new()
        .route("/v1/logs", post(post_logs))
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
        // The body limit is enforced in the handler (with its own message); lift axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(state.clone());
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
    // Readiness goes false first, and the listener keeps serving for drain_delay, so load
    // balancers stop sending before it closes: no connection is refused on a rollout.
    tokio::spawn({
        let (signalled, shutdown, state) = (signalled.clone(), shutdown.clone(), state.clone());
        let drain_delay = ic.drain_delay;
        async move {
            signalled.cancelled().await;
            state.shutting_down.store(true, Ordering::Relaxed);
            tokio::time::sleep(drain_delay).await;
            tracing::info!(drain_delay = ?drain_delay, "ingest.drain_delay passed: closing the listener");
            state.closing.store(true, Ordering::Relaxed);
            shutdown.cancel();
        }
    });
    let scheme = if ic.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(
        listen = %addr,
        %scheme,
        queue_url = %queue_url,
        telemetry = %telemetry_addr,
        spool = ?settings.producer.spool_dir,
        "sluice ingest started: POST {scheme}://{addr}/v1/logs"
    );
    let tls = match (&ic.tls_cert, &ic.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(std::sync::RwLock::new(tls_acceptor(cert, key)?))),
        _ => None,
    };
    if !ic.reload_interval.is_zero() && (tls.is_some() || ic.api_keys_file.is_some()) {
        tokio::spawn(reload(
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
        crate::serve::serve(tcp, tls, app, limits, shutdown.clone())
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
}
