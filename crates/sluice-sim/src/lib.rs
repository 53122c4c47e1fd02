//! sluice-sim: an in-memory SQS + DynamoDB server speaking the AWS JSON 1.0 wire protocol the AWS
//! SDK for Rust uses, for the operations sluice and its tests use.
//!
//! Why it exists: no local stand-in throttles, so "never exceed provisioned throughput" could not
//! be observed; this server enforces per-table write capacity with DynamoDB's burst credit
//! ([`capacity`]) and records consumption per second. It is fast enough that benchmarks see
//! sluice's own ceiling, and it injects faults (latency, 500/503, throttles, connection resets,
//! slow long polls, calls that are never answered) set at start or changed at run time.
//!
//! Admin endpoints (plain HTTP, JSON):
//! - `GET  /_sim/health`
//! - `GET  /_sim/faults`, `POST /_sim/faults` (a [`Faults`] object; replaces the current one)
//! - `GET  /_sim/tables/{name}/capacity`: provisioned WCU, consumption per second, peak,
//!   throttled requests, unprocessed items
//! - `GET  /_sim/queues`: message counts per queue
//! - `GET  /_sim/requests`: requests served per operation
#![warn(missing_docs)]

pub mod capacity;
pub mod dynamodb;
mod error;
pub mod faults;
pub mod meter;
pub mod sqs;

use sluice_common::sync::{Recover, RecoverRw};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use dynamodb::TableSettings;
pub use error::ApiError;
use error::ApiResult;
pub use faults::{Faults, Injected, Latency};

/// SQS's largest message (1 MiB since 2025).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// What the simulator serves with: table metering, faults at start, and SQS's message size limit.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How tables meter writes (default: DynamoDB's 300 s burst, 40,000 WCU on-demand ceiling).
    pub tables: TableSettings,
    /// The faults in force from the start (default: none); they can be replaced at run time.
    pub faults: Faults,
    /// The MaximumMessageSize of a queue created without one, in bytes (default 1 MiB).
    pub max_message_bytes: usize,
    /// Short polls (WaitTimeSeconds 0) return a random number of the visible messages, from
    /// none to what was asked, drawn from this seed, as SQS's sampling short poll may. None
    /// (the default): every visible message, up to what was asked, deterministically.
    pub short_poll_sampling_seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            tables: TableSettings::default(),
            faults: Faults::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            short_poll_sampling_seed: None,
        }
    }
}

struct State {
    sqs: sqs::Sqs,
    dynamodb: dynamodb::DynamoDb,
    faults: RwLock<Faults>,
    requests: Mutex<BTreeMap<String, u64>>,
}

/// A running simulator. Dropping it stops the server.
pub struct SimServer {
    endpoint: String,
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

/// The connection is closed without an answer (an injected reset).
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected connection reset")
    }
}

impl std::error::Error for Reset {}

impl SimServer {
    /// Binds `addr` (use port 0 for a free one) and serves until dropped.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<SimServer> {
        config.faults.validate().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let endpoint = format!("http://{addr}");
        let state = Arc::new(State {
            sqs: sqs::Sqs::new(
                endpoint.clone(),
                config.max_message_bytes,
                config.short_poll_sampling_seed,
            ),
            dynamodb: dynamodb::DynamoDb::new(config.tables),
            faults: RwLock::new(config.faults),
            requests: Mutex::new(BTreeMap::new()),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        Ok(SimServer {
            endpoint,
            addr,
            state,
            stop,
        })
    }

    /// `http://127.0.0.1:PORT`: the endpoint URL for both SQS and DynamoDB clients.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The address the server listens on (the real port when started on port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replaces the faults in force, from the next request on. Err: a rate outside 0.0..=1.0; the
    /// faults in force stay.
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        *self.state.faults.write_locked() = faults;
        Ok(())
    }

    /// The capacity report of `table` (see the admin endpoint), if it exists.
    pub fn capacity_report(&self, table: &str) -> Option<Value> {
        self.state.dynamodb.capacity_report(table).ok()
    }

    /// Message counts per queue, as `GET /_sim/queues` serves them: by queue name, its URL and
    /// visible, in-flight and delayed counts.
    pub fn queues_report(&self) -> Value {
        self.state.sqs.report()
    }

    /// Requests served per operation.
    pub fn requests_report(&self) -> BTreeMap<String, u64> {
        self.state.requests.locked().clone()
    }

    /// Stops accepting and closes open connections.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((stream, _)) = accepted else { continue };
        let _ = stream.set_nodelay(true);
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn json_response(status: u16, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-amz-json-1.0"),
    );
    r
}

fn error_response(e: &ApiError) -> Response<Full<Bytes>> {
    let mut r = json_response(e.status, e.body());
    if let Some(q) = &e.query_error
        && let Ok(v) = hyper::header::HeaderValue::from_str(q)
    {
        r.headers_mut().insert("x-amzn-query-error", v);
    }
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Reset> {
    if req.uri().path().starts_with("/_sim/") {
        return Ok(admin(&state, req).await);
    }
    let call = match read_call(req).await? {
        Ok(call) => call,
        Err(e) => return Ok(error_response(&e)),
    };
    *state.requests.locked().entry(call.op.clone()).or_insert(0) += 1;
    if let Some(e) = inject_faults(&state, &call).await? {
        return Ok(error_response(&e));
    }
    Ok(match dispatch(&state, &call).await {
        Ok(v) => json_response(200, v.to_string()),
        Err(e) => error_response(&e),
    })
}

/// One API call: the service and operation of its X-Amz-Target, and its JSON input.
struct Call {
    service: String,
    op: String,
    input: Value,
}

impl Call {
    fn is_sqs(&self) -> bool {
        self.service == "AmazonSQS"
    }
}

/// Reads the call: an error answer for a missing X-Amz-Target or a body that is not JSON, a
/// reset when the body cannot be read.
async fn read_call(req: Request<Incoming>) -> Result<Result<Call, ApiError>, Reset> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some((service, op)) = target.split_once('.') else {
        return Ok(Err(ApiError::dynamodb(
            400,
            "UnknownOperationException",
            "missing X-Amz-Target: sluice-sim speaks the AWS JSON 1.0 protocol",
        )));
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Err(Reset),
    };
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => {
                return Ok(Err(ApiError::dynamodb(
                    400,
                    "SerializationException",
                    e.to_string(),
                )));
            }
        }
    };
    Ok(Ok(Call {
        service: service.to_string(),
        op: op.to_string(),
        input,
    }))
}

/// The faults set for the call's operation: its delay, a hang (answered by a reset once the
/// fault is lifted), then a drawn reset or error answer.
async fn inject_faults(state: &State, call: &Call) -> Result<Option<ApiError>, Reset> {
    let faults = state.faults.read_locked().clone();
    let delay = faults.delay(&call.op);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if faults.hangs(&call.op) {
        return Err(hang(state, &call.op).await);
    }
    injected_error(faults.draw(&call.op), call.is_sqs())
}

/// A server that took the call and went silent: no answer while the fault holds, and the call
/// is never carried out.
async fn hang(state: &State, op: &str) -> Reset {
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let still = state.faults.read_locked().hangs(op);
        if !still {
            return Reset;
        }
    }
}

/// The error answer for a drawn fault, in the service's own shape (None: no fault).
fn injected_error(injected: Injected, is_sqs: bool) -> Result<Option<ApiError>, Reset> {
    Ok(match injected {
        Injected::None => None,
        Injected::Reset => return Err(Reset),
        Injected::Error500 if is_sqs => Some(ApiError::sqs(
            500,
            "InternalError",
            "InternalError",
            "injected internal error",
        )),
        Injected::Error500 => Some(ApiError::dynamodb(
            500,
            "InternalServerError",
            "injected internal error",
        )),
        Injected::Error503 if is_sqs => Some(ApiError::sqs(
            503,
            "ServiceUnavailable",
            "ServiceUnavailable",
            "injected unavailability",
        )),
        Injected::Error503 => Some(ApiError::dynamodb(
            503,
            "ServiceUnavailable",
            "injected unavailability",
        )),
        Injected::Throttle if is_sqs => Some(ApiError::sqs(
            400,
            "RequestThrottled",
            "RequestThrottled",
            "injected throttle",
        )),
        Injected::Throttle => Some(ApiError::dynamodb(
            400,
            "ProvisionedThroughputExceededException",
            "injected throttle: the level of configured provisioned throughput for the table was exceeded",
        )),
    })
}

/// Carries the call out on the service its target names.
async fn dispatch(state: &State, call: &Call) -> ApiResult {
    match call.service.as_str() {
        "AmazonSQS" => {
            let entry_faults = state.faults.read_locked().entry_server_fault_rate;
            state.sqs.handle(&call.op, &call.input, entry_faults).await
        }
        "DynamoDB_20120810" => state.dynamodb.handle(&call.op, &call.input),
        other => Err(ApiError::dynamodb(
            400,
            "UnknownOperationException",
            format!("unknown service {other}"),
        )),
    }
}

async fn admin(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let reply = |status: u16, v: Value| json_response(status, v.to_string());
    match (method, path.trim_end_matches('/')) {
        (Method::GET, "/_sim/health") => reply(200, json!({"ok": true})),
        (Method::GET, "/_sim/faults") => {
            let f = state.faults.read_locked().clone();
            reply(200, serde_json::to_value(f).unwrap_or_default())
        }
        (Method::POST | Method::PUT, "/_sim/faults") => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            match serde_json::from_slice::<Faults>(&body)
                .map_err(|e| e.to_string())
                .and_then(|f| f.validate().map(|()| f))
            {
                Ok(f) => {
                    *state.faults.write_locked() = f.clone();
                    reply(200, serde_json::to_value(f).unwrap_or_default())
                }
                Err(e) => reply(400, json!({"error": e})),
            }
        }
        (Method::GET, "/_sim/queues") => reply(200, state.sqs.report()),
        (Method::GET, "/_sim/requests") => {
            let r = state.requests.locked().clone();
            reply(200, serde_json::to_value(r).unwrap_or_default())
        }
        (Method::GET, p) if p.starts_with("/_sim/tables/") && p.ends_with("/capacity") => {
            let name = p
                .trim_start_matches("/_sim/tables/")
                .trim_end_matches("/capacity");
            match state.dynamodb.capacity_report(name) {
                Ok(v) => reply(200, v),
                Err(e) => reply(404, json!({"error": e.message})),
            }
        }
        _ => reply(404, json!({"error": format!("no admin endpoint {path}")})),
    }
}
