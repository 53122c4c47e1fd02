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
//! | 400 | not JSON, not objects, or a log sluice would dead-letter; the message names the line and log |
//! | 429 + Retry-After | the key is over `ingest.rate_per_key` logs/s (governor's keyed token bucket) |
//! | 202 | every log is in the queue or in the spool (durable: a kill -9 after this loses nothing) |

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

use crate::config::{ApiKey, IngestSettings, Settings, read_api_keys_file};
use crate::telemetry::{self, Probe};

pub fn describe_metrics() {
    metrics::describe_counter!(
        "sluice_ingest_requests_total",
        "Requests to POST /v1/logs, by HTTP status code."
    );
    metrics::describe_counter!(
        "sluice_ingest_logs_total",
        "Logs the ingest API accepted (202: in the queue or the spool)."
    );
}

struct Key {
    name: String,
    digest: [u8; 32],
}

struct Ingest {
    producer: Producer,
    keys: Vec<Key>,
    limiter: DefaultKeyedRateLimiter<String>,
    schema: Schema,
    config: IngestSettings,
    shutting_down: AtomicBool,
    requests: AtomicU64,
    accepted_logs: AtomicU64,
    by_status: [AtomicU64; 8],
}

const STATUSES: [u16; 8] = [202, 400, 401, 413, 415, 429, 503, 500];

impl Ingest {
    fn count(&self, status: StatusCode) {
        metrics::counter!("sluice_ingest_requests_total", "code" => status.as_str().to_owned())
            .increment(1);
        self.requests.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = STATUSES.iter().position(|&s| s == status.as_u16()) {
            self.by_status[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The name of the key the request carries, comparing against every configured key in
    /// constant time.
    fn authenticate(&self, headers: &HeaderMap) -> Option<&str> {
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
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&digest)) {
                found = Some(k.name.as_str());
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
    all.into_iter()
        .map(|k| {
            let bytes = decode_hex(&k.sha256).ok_or_else(|| {
                anyhow!(
                    "API key `{}`: sha256 must be 64 hex digits, got `{}`",
                    k.name,
                    k.sha256
                )
            })?;
            Ok(Key {
                name: k.name,
                digest: bytes,
            })
        })
        .collect()
}

fn decode_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        let hi = (chunk[0] as char).to_digit(16)?;
        let lo = (chunk[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
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

/// Parses a body (one object, an array of objects, or NDJSON) into logs, checking each as
/// `sluice run` would, so nothing accepted here is dead-lettered there.
pub fn parse_body(text: &[u8], schema: &Schema, max_logs: usize) -> Result<Vec<Log>, BadBody> {
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
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    let check = |logs: &mut Vec<Log>, line: usize, value: Value, raw: Option<&str>| {
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
        sluice_core::codec::decode_log(index, map, schema).map_err(|e| {
            bad(
                format!("line {line}: {e} ({})", e.reason()),
                Some(line),
                Some(index),
            )
        })?;
        logs.push(Log::from_json(json).map_err(|e| bad(e.to_string(), Some(line), Some(index)))?);
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
    Ok(logs)
}

fn read_gzip(body: &[u8], limit: usize) -> Result<Vec<u8>, BadBody> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::GzDecoder::new(body).take(limit as u64 + 1);
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
    let Some(key) = st.authenticate(&headers).map(str::to_owned) else {
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
    if backlog > st.config.max_backlog_bytes || st.shutting_down.load(Ordering::Relaxed) {
        let why = if st.shutting_down.load(Ordering::Relaxed) {
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
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over {limit} bytes (ingest.max_body_bytes); split it"),
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
    let logs = match parse_body(body, &st.schema, st.config.max_logs_per_request) {
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
            metrics::counter!("sluice_ingest_logs_total").increment(n as u64);
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
        Ok(Err(ProduceError::TooLarge { bytes, max })) => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a log of {bytes} bytes does not fit a message of {max} bytes (producer.max_message_bytes)"
            ),
            Value::Null,
        ),
        Ok(Err(e)) => with_retry_after(
            error(StatusCode::SERVICE_UNAVAILABLE, e.to_string(), Value::Null),
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

/// A TLS listener for `axum::serve`: handshakes run in their own tasks (with a timeout), so a
/// slow client does not hold up the others.
struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: tokio::net::TcpListener, acceptor: tokio_rustls::TlsAcceptor) -> Result<Self> {
        let local = listener.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, conn_tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = conn_tx.send((tls, peer)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends with the listener; park forever.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Runs the ingest API until SIGTERM/SIGINT, then stops taking requests, lets those in flight
/// finish, and closes the producer (what SQS did not take stays in the spool for the next start).
pub async fn ingest(settings: Settings, listen: Option<String>) -> Result<()> {
    let metrics = telemetry::install_metrics()?;
    describe_metrics();
    let keys = load_keys(&settings.ingest)?;
    let listen: SocketAddr = listen
        .unwrap_or_else(|| settings.ingest.listen.clone())
        .parse()
        .context("--listen / ingest.listen must be an address like 0.0.0.0:8080")?;
    let (producer, queue_url) = if settings.producer.kafka_topic.is_some() {
        crate::load::kafka_producer(&settings, false)?
    } else {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let queue_url = settings.sqs.queue_url.clone();
        let producer = Producer::start(
            settings.producer.producer_config(&queue_url),
            SqsTransport::new(aws_sdk_sqs::Client::new(&sdk), &queue_url),
        )
        .map_err(|e| anyhow!("producer: {e}"))?;
        (producer, queue_url)
    };
    let ic = settings.ingest.clone();
    let quota = Quota::per_second(NonZeroU32::new(ic.rate_per_key).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(ic.burst_per_key).unwrap_or(NonZeroU32::MIN));
    let state = Arc::new(Ingest {
        producer: producer.clone(),
        keys,
        limiter: RateLimiter::keyed(quota),
        schema: settings.schema(),
        config: ic.clone(),
        shutting_down: AtomicBool::new(false),
        requests: AtomicU64::new(0),
        accepted_logs: AtomicU64::new(0),
        by_status: Default::default(),
    });
    let shutdown = CancellationToken::new();
    let server_stop = CancellationToken::new();
    let telemetry_addr = telemetry::serve(
        settings
            .telemetry
            .listen
            .parse()
            .context("telemetry.listen")?,
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
    tokio::spawn(crate::run::watch_signals(
        shutdown.clone(),
        "shutting down: not ready any more, finishing requests in flight, then flushing to SQS",
        "second signal: exiting now; every log answered 202 is already in SQS or the spool",
    ));
    // Readiness goes false first, so load balancers stop sending while requests in flight end.
    let graceful = {
        let (shutdown, state) = (shutdown.clone(), state.clone());
        async move {
            shutdown.cancelled().await;
            state.shutting_down.store(true, Ordering::Relaxed);
        }
    };
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
    let served = match (&ic.tls_cert, &ic.tls_key) {
        (Some(cert), Some(key)) => {
            let acceptor = tls_acceptor(cert, key)?;
            axum::serve(TlsListener::new(tcp, acceptor)?, app)
                .with_graceful_shutdown(graceful)
                .await
        }
        _ => axum::serve(tcp, app).with_graceful_shutdown(graceful).await,
    };
    served.context("the ingest server failed")?;
    let report = producer.close().await;
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
    Ok(())
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

    #[test]
    fn parses_objects_arrays_and_ndjson_and_names_the_bad_line() {
        let ok = br#"{"request_id":"a","ts":1}
{"request_id":"b","ts":2}
[{"request_id":"c","ts":3},{"request_id":"d","ts":4}]"#;
        let logs = parse_body(ok, &schema(), 100).unwrap();
        assert_eq!(logs.len(), 4);
        assert_eq!(logs[0].json(), r#"{"request_id":"a","ts":1}"#);

        let bad_ts =
            b"{\"request_id\":\"a\",\"ts\":1}\n\n{\"request_id\":\"b\",\"ts\":\"yesterday\"}\n";
        let e = parse_body(bad_ts, &schema(), 100).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.line, Some(3));
        assert_eq!(e.log, Some(1));
        assert!(e.message.starts_with("line 3: log 1"), "{}", e.message);
        assert!(e.message.contains("ts"), "{}", e.message);

        let not_json = b"{\"request_id\":\"a\",\"ts\":1}\n{\"request_id\":";
        let e = parse_body(not_json, &schema(), 100).unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("not JSON"), "{}", e.message);

        let e = parse_body(b"[1]", &schema(), 100).unwrap_err();
        assert!(
            e.message.contains("not a JSON object but a number"),
            "{}",
            e.message
        );
        let e = parse_body(b"  ", &schema(), 100).unwrap_err();
        assert!(e.message.contains("no logs"));
        let e = parse_body(b"{\"ts\":1}{\"ts\":2}{\"ts\":3}", &schema(), 2).unwrap_err();
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

    #[test]
    fn hex_digests_decode() {
        let d = Sha256::digest(b"k");
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(decode_hex(&hex).unwrap(), <[u8; 32]>::from(d));
        assert!(decode_hex("zz").is_none());
    }
}
