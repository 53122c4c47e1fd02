//! The checks in front of `POST /v1/logs`, each an axum middleware layer, cheapest first:
//! counting every answer, the API key, admission (backlog, shutdown), then the body (size,
//! read time, Content-Encoding). The handler behind them sees an authenticated, admitted,
//! whole and decoded body.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use serde_json::Value;

use super::body::read_gzip;
use super::{Ingest, error, with_retry_after};

/// The name of the API key a request authenticated with, for the handler's rate limit.
#[derive(Debug, Clone)]
pub struct KeyName(pub String);

/// Counts every answer by status (`sluice_ingest_requests_total{code}` and the stop summary).
pub async fn count_status(State(st): State<Arc<Ingest>>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    st.count(resp.status());
    resp
}

/// 401 without a configured key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`, compared by
/// SHA-256 in constant time); otherwise the key's name goes with the request.
pub async fn require_key(State(st): State<Arc<Ingest>>, mut req: Request, next: Next) -> Response {
    let Some(name) = st.authenticate(req.headers()) else {
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
    req.extensions_mut().insert(KeyName(name));
    next.run(req).await
}

/// 503 + Retry-After while the bytes waiting for the queue (producer memory and spool) pass
/// `ingest.max_backlog_bytes`, or once this instance is closing: before the body is read.
pub async fn admit(State(st): State<Arc<Ingest>>, req: Request, next: Next) -> Response {
    let backlog = st.producer.backlog_bytes();
    let closing = st.closing.load(Ordering::Relaxed);
    if !closing && backlog <= st.config.max_backlog_bytes {
        return next.run(req).await;
    }
    let why = if closing {
        "this instance is shutting down; retry (another instance will answer)".to_owned()
    } else {
        format!(
            "the queue path is backed up ({backlog} bytes waiting, limit {}); retry later",
            st.config.max_backlog_bytes
        )
    };
    with_retry_after(
        error(StatusCode::SERVICE_UNAVAILABLE, why, Value::Null),
        st.config.retry_after,
    )
}

/// Reads the body whole within `ingest.body_read_timeout` (408) and `ingest.max_body_bytes`
/// (413, before and after gzip), and decodes its Content-Encoding (gzip or none; else 415). The
/// request goes on with the decoded body and no Content-Encoding.
pub async fn read_body(State(st): State<Arc<Ingest>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let limit = st.config.max_body_bytes;
    let timeout = st.config.body_read_timeout;
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
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
                    humantime::format_duration(timeout)
                ),
                Value::Null,
            );
        }
    };
    let encoding = parts
        .headers
        .remove(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok().map(|s| s.trim().to_ascii_lowercase()))
        .unwrap_or_default();
    let body = match encoding.as_str() {
        "identity" | "" => bytes,
        "gzip" | "x-gzip" => match read_gzip(&bytes, limit) {
            Ok(b) => b.into(),
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
    parts.headers.remove(header::CONTENT_LENGTH);
    next.run(Request::from_parts(parts, Body::from(body))).await
}
