//! `[ingest]`: the HTTP API `sluice ingest` serves, and its API keys.

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::Mode;
use super::de::parse_sha256;
use super::problems::{Check, Problems, human};

/// One API key, as its owner's name and the SHA-256 of the key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who the key belongs to: the per-key rate limit and the logs name it.
    pub name: String,
    /// SHA-256 of the key, written in hex (`printf %s "$KEY" | sha256sum`); the key itself is
    /// never stored.
    #[serde(deserialize_with = "super::de::sha256_hex")]
    pub sha256: [u8; 32],
}

/// The ingest HTTP API: where it listens, who may call it (API keys) and how much, what a
/// request may hold, its time limits, TLS, and how it drains at shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Address of the ingest HTTP API (`sluice ingest --listen` overrides it).
    #[serde(deserialize_with = "super::de::socket_addr")]
    pub listen: SocketAddr,
    /// API keys, as `{ name, sha256 }` tables. `sluice ingest` needs at least one, here or in
    /// `api_keys_file`.
    pub api_keys: Vec<ApiKey>,
    /// A file of more keys, one `name sha256hex` per line (`#` starts a comment): e.g. a mounted
    /// Kubernetes Secret.
    pub api_keys_file: Option<PathBuf>,
    /// Logs per second each key may send (governor's keyed token bucket); above it, 429 with
    /// Retry-After.
    pub rate_per_key: NonZeroU32,
    /// Logs a key may send at once above its rate (the bucket's size).
    pub burst_per_key: NonZeroU32,
    /// Largest request body, before and after gzip; larger gets 413.
    pub max_body_bytes: usize,
    /// Logs per request at most; more gets 413.
    pub max_logs_per_request: NonZeroUsize,
    /// Admission control: when the bytes waiting (producer memory + spool) pass this, requests
    /// get 503 with Retry-After at once, before their body is read.
    pub max_backlog_bytes: u64,
    /// The Retry-After sent with 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Longest a request waits for its logs to reach the queue or the spool before 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// PEM certificate chain: set it (with `tls_key`) to serve HTTPS (rustls).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Time a client has to send a request's headers once the connection waits for them. It
    /// also closes an idle keep-alive connection (the wait for the next request counts).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body; then 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Connections served at once; beyond it new ones wait in the listen backlog.
    pub max_connections: NonZeroUsize,
    /// At shutdown: how long requests in flight may take to finish before their connections are
    /// closed (the producer's own `shutdown_timeout` follows).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long ingest keeps accepting and serving while reporting not ready,
    /// so load balancers (a Kubernetes Service's endpoints, an ALB target group) stop sending
    /// before the listener closes; then `shutdown_timeout` applies. 0: close at once.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How often `tls_cert`, `tls_key` and `api_keys_file` are read again: a rotated
    /// certificate (cert-manager) or a changed key list is served without a restart. 0: never.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_keys: Vec::new(),
            api_keys_file: None,
            rate_per_key: NonZeroU32::new(5000).expect("5000 > 0"),
            burst_per_key: NonZeroU32::new(10000).expect("10000 > 0"),
            max_body_bytes: 5 * 1024 * 1024,
            max_logs_per_request: NonZeroUsize::new(10000).expect("10000 > 0"),
            max_backlog_bytes: 256 * 1024 * 1024,
            retry_after: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: NonZeroUsize::new(1024).expect("1024 > 0"),
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::from_secs(5),
            reload_interval: Duration::from_secs(30),
        }
    }
}

impl IngestSettings {
    fn check_keys(&self, mode: Mode, p: &mut Problems) {
        for (n, k) in self.api_keys.iter().enumerate() {
            let key = format!("ingest.api_keys[{n}].name");
            p.check(!k.name.is_empty(), &key, format!("{key} must not be empty"));
        }
        p.check(
            mode != Mode::Ingest || !self.api_keys.is_empty() || self.api_keys_file.is_some(),
            "ingest.api_keys",
            "ingest.api_keys (or ingest.api_keys_file) needs at least one key for sluice ingest",
        );
    }

    fn check_times(&self, p: &mut Problems) {
        p.check(
            !self.request_timeout.is_zero(),
            "ingest.request_timeout",
            "ingest.request_timeout must be above zero",
        );
        p.check(
            self.reload_interval.is_zero() || self.reload_interval >= Duration::from_secs(1),
            "ingest.reload_interval",
            format!(
                "ingest.reload_interval must be 0 (never) or at least 1s, got {}",
                human(self.reload_interval)
            ),
        );
        p.check(
            self.drain_delay <= Duration::from_secs(120),
            "ingest.drain_delay",
            format!(
                "ingest.drain_delay must be at most 2m (a spot instance has two minutes), got {}",
                human(self.drain_delay)
            ),
        );
        for (key, d) in [
            ("ingest.header_read_timeout", self.header_read_timeout),
            ("ingest.body_read_timeout", self.body_read_timeout),
            ("ingest.shutdown_timeout", self.shutdown_timeout),
        ] {
            p.check(
                !d.is_zero() && d <= Duration::from_secs(600),
                key,
                format!("{key} must be above zero and at most 10m, got {}", human(d)),
            );
        }
    }
}

impl Check for IngestSettings {
    fn check(&self, mode: Mode, p: &mut Problems) {
        self.check_keys(mode, p);
        p.check(
            self.max_body_bytes >= 1024,
            "ingest.max_body_bytes",
            "ingest.max_body_bytes must be at least 1024",
        );
        p.check(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "ingest.tls_cert",
            "ingest.tls_cert and ingest.tls_key go together: set both or neither",
        );
        self.check_times(p);
    }
}

/// Reads `ingest.api_keys_file`: `name sha256hex` per line.
pub fn read_api_keys_file(path: &Path) -> Result<Vec<ApiKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ingest.api_keys_file {}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("ingest.api_keys_file {} line {}", path.display(), i + 1);
        let mut parts = line.split_whitespace();
        let (Some(name), Some(sha256), None) = (parts.next(), parts.next(), parts.next()) else {
            bail!("{}: expected `name sha256hex`", at());
        };
        let sha256 = parse_sha256(sha256)
            .map_err(|e| anyhow::anyhow!("{}: key `{name}`: sha256 {e}", at()))?;
        keys.push(ApiKey {
            name: name.into(),
            sha256,
        });
    }
    Ok(keys)
}
