//! `POST /v1/logs` behind its layers ([`super::layers`]): the logs of the body, the key's rate,
//! and the durable send whose outcome is the answer.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use serde_json::{Value, json};
use sluice_common::catalog;
use sluice_producer::ProduceError;

use super::body::{Parsed, parse_body};
use super::layers::KeyName;
use super::{Ingest, error, with_retry_after};

/// Parses the body, charges its logs to the key's rate, and answers 202 only once every log is
/// in the queue or the spool.
pub async fn post_logs(
    State(st): State<Arc<Ingest>>,
    Extension(key): Extension<KeyName>,
    body: Bytes,
) -> Response {
    let Parsed { logs, lines } = match parse_body(&body, &st.schema, &st.rules) {
        Ok(l) => l,
        Err(b) => {
            return error(b.status, b.message, json!({"line": b.line, "log": b.log}));
        }
    };
    let n = logs.len();
    if let Some(refused) = charge(&st, &key, n) {
        return refused;
    }
    let sent = tokio::time::timeout(
        st.config.request_timeout,
        st.producer.send_logs_durable(logs),
    )
    .await;
    match sent {
        Ok(Ok(())) => {
            metrics::counter!(catalog::INGEST_LOGS_TOTAL).increment(n as u64);
            st.accepted_logs.fetch_add(n as u64, Ordering::Relaxed);
            (StatusCode::ACCEPTED, axum::Json(json!({"accepted": n}))).into_response()
        }
        Ok(Err(e)) => refused_by_producer(&st, e, &lines),
        Err(_) => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the queue path did not take the logs in ingest.request_timeout; they may still arrive, and a retry is safe (writes are idempotent)",
                Value::Null,
            ),
            st.config.retry_after,
        ),
    }
}

/// Takes `n` logs from the key's bucket (`ingest.rate_per_key`, `ingest.burst_per_key`): 429 +
/// Retry-After when it is empty, 413 when `n` is more than it can ever hold. None: charged.
fn charge(st: &Ingest, KeyName(key): &KeyName, n: usize) -> Option<Response> {
    let Some(cells) = NonZeroU32::new(n as u32) else {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "the body holds no logs",
            Value::Null,
        ));
    };
    match st.limiter.check_key_n(key, cells) {
        Ok(Ok(())) => None,
        Ok(Err(not_until)) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            Some(with_retry_after(
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
            ))
        }
        Err(_) => Some(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{n} logs in one request is more than the key's burst of {} (ingest.burst_per_key); split it",
                st.config.burst_per_key
            ),
            Value::Null,
        )),
    }
}

/// The answer when the producer did not take every log: 503 (full, closing: retry), 422 (a log
/// refused for good: the others are in the queue) or 413.
fn refused_by_producer(st: &Ingest, e: ProduceError, lines: &[usize]) -> Response {
    let retry_after = st.config.retry_after;
    match e {
        ProduceError::Full => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the producer's buffer is full (producer.buffer_bytes); retry later",
                Value::Null,
            ),
            retry_after,
        ),
        ProduceError::LogRejected { index, reason } => {
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
        ProduceError::TooLarge { bytes, max } => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "a log of {bytes} bytes does not fit a message of {max} bytes (producer.max_message_bytes)"
            ),
            Value::Null,
        ),
        e @ ProduceError::NotAnObject => {
            error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string(), Value::Null)
        }
        e @ ProduceError::Closed => with_retry_after(
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{e}: this instance is shutting down; retry"),
                Value::Null,
            ),
            retry_after,
        ),
    }
}
