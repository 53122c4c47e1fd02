//! Logs (tracing-subscriber), metrics (Prometheus) and the HTTP server for /metrics, /healthz
//! and /readyz.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

use sluice_core::{Breaker, EngineStats};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Starts logging. RUST_LOG, when set, wins over `default_filter`.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stdout().is_terminal(),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the Prometheus recorder once per process and returns its handle.
pub fn install_metrics() -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("sluice_message_processing_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("sluice_message_age_seconds".into()),
                &[
                    0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
                    3600.0, 14400.0, 86400.0,
                ],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("sluice_rate_limiter_wait_seconds".into()),
                &[
                    0.0001, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ],
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("sluice_message_write_seconds".into()),
                &[
                    0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
                ],
            )
        })
        .map_err(|e| anyhow!("metrics buckets: {e}"))?
        .install_recorder()
        .map_err(|e| anyhow!("cannot install the metrics recorder: {e}"))?;
    use sluice_common::catalog::{Exporter, describe};
    for exporter in [Exporter::Daemon, Exporter::Kafka, Exporter::Producer] {
        describe(exporter);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// What /readyz looks at.
#[derive(Clone)]
pub struct Health {
    pub stats: Arc<EngineStats>,
    pub shutdown: CancellationToken,
    pub breaker: Arc<Breaker>,
    /// The long-poll wait: a poll loop silent for twice this (at least 10 s) is stuck.
    pub poll_wait: Duration,
}

impl Health {
    pub fn for_pipeline(pipeline: &crate::pipeline::Pipeline, shutdown: CancellationToken) -> Self {
        Health {
            stats: pipeline.stats(),
            shutdown,
            breaker: pipeline.breaker(),
            poll_wait: pipeline.poll_wait(),
        }
    }

    /// Alive unless a poll loop has made no progress for twice the long-poll wait.
    pub fn alive(&self) -> Result<(), String> {
        let limit = (self.poll_wait * 2).max(Duration::from_secs(10));
        let stalest = self.stats.stalest_poller();
        if stalest > limit {
            return Err(format!(
                "a poll loop has made no progress for {:.0} s (limit {:.0} s)",
                stalest.as_secs_f64(),
                limit.as_secs_f64()
            ));
        }
        Ok(())
    }

    /// Ready unless shutting down, the breaker is open, or the last three receives failed.
    pub fn ready(&self) -> Result<(), String> {
        if self.shutdown.is_cancelled() {
            return Err("shutting down".into());
        }
        if self.breaker.is_open(std::time::Instant::now()) {
            return Err("the circuit breaker is open: the table keeps failing".into());
        }
        let errors = self.stats.receive_errors_in_a_row.load(Ordering::Relaxed);
        if errors >= 3 {
            return Err(format!("the last {errors} receives from the queue failed"));
        }
        Ok(())
    }
}

/// What /healthz and /readyz ask: the worker's [`Health`], or the ingest API's.
pub trait Probe: Send + Sync + 'static {
    fn alive(&self) -> Result<(), String>;
    fn ready(&self) -> Result<(), String>;
}

impl Probe for Health {
    fn alive(&self) -> Result<(), String> {
        Health::alive(self)
    }

    fn ready(&self) -> Result<(), String> {
        Health::ready(self)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    health: Arc<dyn Probe>,
}

/// Binds the telemetry server and serves it until `stop` is cancelled. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: impl Probe,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let health: Arc<dyn Probe> = Arc::new(health);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (telemetry.listen)"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, health });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "telemetry server failed");
        }
    });
    Ok(addr)
}

async fn render_metrics(State(state): State<AppState>) -> String {
    state.metrics.run_upkeep();
    state.metrics.render()
}

async fn healthz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.alive() {
        Ok(()) => (StatusCode::OK, "ok\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not alive: {why}\n"),
        ),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    match state.health.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
