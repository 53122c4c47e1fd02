//! A tower [`Layer`] that turns every HTTP request a service answers into a request log and
//! hands it to a [`Producer`] without delaying the response: the log is queued with
//! [`Producer::try_send`] after the inner service answered, which never waits (a full buffer sheds
//! the log and counts it).
//!
//! ```no_run
//! # fn app(producer: sluice_producer::Producer) -> axum::Router {
//! use sluice_producer::layer::RequestLogLayer;
//! axum::Router::new()
//!     .route("/", axum::routing::get(|| async { "hi" }))
//!     .layer(RequestLogLayer::new(producer))
//! # }
//! ```
//!
//! The log has the request-log schema sluice writes: `request_id` (from the `x-request-id`
//! header, or a new UUID v4, which is then set on the request and the response), `ts` (epoch
//! ms at arrival), `method`, `path` (without the query string, which often carries secrets),
//! `status`, `latency_ms`, and `user_id` when the hook or a [`UserId`] response extension gives
//! one.

use sluice_common::time::epoch_ms;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use http::header::HeaderName;
use http::{HeaderValue, Request, Response};
use rand::Rng;
use serde_json::{Map, Value};
use tower::{Layer, Service};

use crate::Producer;

type UserHook = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Set this on a response (`response.extensions_mut().insert(UserId(..))`) to name the user in
/// its log, e.g. from an auth middleware that runs inside the layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserId(pub String);

/// The tower [`Layer`] that logs every request its service answers (see the module docs). Cheap to
/// clone; every clone sends through the same [`Producer`].
#[derive(Clone)]
pub struct RequestLogLayer {
    producer: Producer,
    header: HeaderName,
    user_id: Option<UserHook>,
}

impl RequestLogLayer {
    /// A layer logging to `producer`, taking the request id from `x-request-id`, with no user hook.
    pub fn new(producer: Producer) -> Self {
        RequestLogLayer {
            producer,
            header: HeaderName::from_static("x-request-id"),
            user_id: None,
        }
    }

    /// The header the request id comes from (and is set on when missing).
    pub fn request_id_header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }

    /// A hook that finds the user of a request (from a header, a token, an extension).
    pub fn user_id(
        mut self,
        hook: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.user_id = Some(Arc::new(hook));
        self
    }
}

impl<S> Layer<S> for RequestLogLayer {
    type Service = RequestLog<S>;

    fn layer(&self, inner: S) -> RequestLog<S> {
        RequestLog {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequestLogLayer`] wraps `S` in: it answers as `S` does, and queues the request's
/// log once `S` has answered (a failed call is logged as status 500). It never delays or fails the
/// response because of logging.
#[derive(Clone)]
pub struct RequestLog<S> {
    inner: S,
    layer: RequestLogLayer,
}

/// A random UUID v4.
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::rng().random())
        .into_uuid()
        .to_string()
}

impl<S, B, RB> Service<Request<B>> for RequestLog<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<RB>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let ts = epoch_ms();
        let (mut parts, body) = req.into_parts();
        let request_id = match parts
            .headers
            .get(&self.layer.header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 256)
        {
            Some(id) => id.to_owned(),
            None => {
                let id = new_request_id();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    parts.headers.insert(self.layer.header.clone(), v);
                }
                id
            }
        };
        let method = parts.method.to_string();
        let path = parts.uri.path().to_owned();
        let hooked_user = self.layer.user_id.as_ref().and_then(|h| h(&parts));
        let fut = self.inner.call(Request::from_parts(parts, body));
        let producer = self.layer.producer.clone();
        let header = self.layer.header.clone();
        Box::pin(async move {
            let result = fut.await;
            let (status, user) = match &result {
                Ok(resp) => (
                    resp.status().as_u16(),
                    resp.extensions()
                        .get::<UserId>()
                        .map(|u| u.0.clone())
                        .or(hooked_user),
                ),
                // The service failed without an answer: hyper turns that into a dropped
                // connection; log it as a 500.
                Err(_) => (500, hooked_user),
            };
            let mut log = Map::new();
            log.insert("request_id".into(), Value::String(request_id.clone()));
            log.insert("ts".into(), ts.into());
            log.insert("method".into(), Value::String(method));
            log.insert("path".into(), Value::String(path));
            log.insert("status".into(), status.into());
            log.insert(
                "latency_ms".into(),
                ((started.elapsed().as_micros() as f64) / 1000.0).into(),
            );
            if let Some(u) = user {
                log.insert("user_id".into(), Value::String(u));
            }
            // Never waits; a full buffer sheds and counts.
            let _ = producer.try_send(&Value::Object(log));
            result.map(|mut resp| {
                if !resp.headers().contains_key(&header)
                    && let Ok(v) = HeaderValue::from_str(&request_id)
                {
                    resp.headers_mut().insert(header, v);
                }
                resp
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeQueue;
    use crate::{Producer, ProducerConfig};
    use std::convert::Infallible;
    use std::time::Duration;

    #[tokio::test]
    async fn records_each_request_without_waiting_for_the_queue() {
        let q = FakeQueue::new();
        let producer = Producer::start(
            ProducerConfig {
                linger: Duration::from_millis(5),
                ..Default::default()
            },
            q.clone(),
        )
        .unwrap();
        let inner = tower::service_fn(|req: Request<String>| async move {
            let mut resp = Response::new(format!(
                "saw {}",
                req.headers()["x-request-id"].to_str().unwrap()
            ));
            *resp.status_mut() = http::StatusCode::CREATED;
            if req.uri().path() == "/me" {
                resp.extensions_mut().insert(UserId("from-ext".into()));
            }
            Ok::<_, Infallible>(resp)
        });
        let mut svc = RequestLogLayer::new(producer.clone())
            .user_id(|p| {
                p.headers
                    .get("x-user")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            })
            .layer(inner);
        // The queue being down must not slow or fail the response.
        q.set_down(true);
        let r1 = svc
            .call(
                Request::builder()
                    .uri("/a?token=secret")
                    .header("x-user", "u7")
                    .body(String::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let generated = r1.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(generated.len(), 36);
        assert_eq!(r1.body(), &format!("saw {generated}"));
        let r2 = svc
            .call(
                Request::builder()
                    .method("POST")
                    .uri("/me")
                    .header("x-request-id", "given-1")
                    .body(String::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r2.headers()["x-request-id"], "given-1");
        q.set_down(false);
        producer.flush().await;
        let logs: Vec<Value> = q
            .messages()
            .iter()
            .flat_map(|m| {
                m.body
                    .lines()
                    .map(|l| serde_json::from_str(l).unwrap())
                    .collect::<Vec<Value>>()
            })
            .collect();
        assert_eq!(logs.len(), 2);
        assert_eq!(logs[0]["request_id"], generated.as_str());
        assert_eq!(logs[0]["path"], "/a");
        assert_eq!(logs[0]["method"], "GET");
        assert_eq!(logs[0]["status"], 201);
        assert_eq!(logs[0]["user_id"], "u7");
        assert!(logs[0]["ts"].as_u64().unwrap() > 1_600_000_000_000);
        assert!(logs[0]["latency_ms"].as_f64().unwrap() >= 0.0);
        assert_eq!(logs[1]["request_id"], "given-1");
        assert_eq!(logs[1]["user_id"], "from-ext");
        assert_eq!(logs[1]["method"], "POST");
    }
}
