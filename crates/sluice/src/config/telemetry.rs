//! `[telemetry]`: the metrics and health server, and the logs.

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

/// Where /metrics, /healthz and /readyz are served, and how logs are written. Every value is
/// checked by its type when the config is read: this section has no rules of its own.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[serde(deserialize_with = "super::de::socket_addr")]
    pub listen: SocketAddr,
    /// `auto`, `json` or `pretty`.
    #[serde(deserialize_with = "super::de::variant")]
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is unset (tracing-subscriber's EnvFilter syntax).
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            log_format: LogFormat::Auto,
            log_level: "info".into(),
        }
    }
}
