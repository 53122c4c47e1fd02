//! `[rate]`, [rate.redis], [rate.membership]: the write budget and how a fleet shares it.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use url::Url;

use super::Mode;
use super::problems::{Check, Problems, human, valid_table_name};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateMode {
    /// Each instance paces to its share of the budget; no extra infrastructure.
    #[default]
    Local,
    /// One token bucket in Redis for the whole fleet; the local share is the fallback.
    Redis,
    /// Each instance paces to budget ÷ live members, counted from leases in a small DynamoDB
    /// table (`rate.membership`): the share follows the fleet as it grows and shrinks.
    Membership,
}

/// The write budget (explicit, or discovered from the table's capacity), how fast it may be
/// spent, and how the instances of a fleet share it (`mode`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// Explicit write budget for the whole table, in WCU per second. Unset: discovered with
    /// DescribeTable as target_utilization × the table's write capacity.
    pub wcu_per_second: Option<NonZeroU32>,
    /// Share of the discovered capacity to use (0 < u ≤ 1).
    pub target_utilization: f64,
    /// Capacity to assume for an on-demand table, in WCU per second. Unset: on-demand tables
    /// are not paced.
    pub on_demand_wcu_per_second: Option<NonZeroU32>,
    /// This instance's share of the budget (0 < s ≤ 1), when several instances write one table.
    /// In redis mode it is the fallback when Redis cannot be reached.
    pub share: Option<f64>,
    /// Alternative to `share`: the number of instances; share = 1 / expected_replicas.
    pub expected_replicas: Option<NonZeroU32>,
    /// How often DescribeTable is read again to follow capacity changes.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Burst, in seconds of budget (0 < b ≤ 1): what may be spent at once after an idle spell.
    pub burst_seconds: f64,
    /// Receive only while the messages held take less than this to write at the paced rate
    /// (counting each message's whole WCU), and no more messages than fit in it.
    #[serde(with = "humantime_serde")]
    pub intake_horizon: Duration,
    /// `local`, `membership` or `redis`.
    #[serde(deserialize_with = "super::de::variant")]
    pub mode: RateMode,
    pub redis: RedisSettings,
    pub membership: MembershipSettings,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            wcu_per_second: None,
            target_utilization: 0.98,
            on_demand_wcu_per_second: None,
            share: None,
            expected_replicas: None,
            refresh_interval: Duration::from_secs(60),
            burst_seconds: 0.2,
            intake_horizon: Duration::from_secs(5),
            mode: RateMode::Local,
            redis: RedisSettings::default(),
            membership: MembershipSettings::default(),
        }
    }
}

impl RateSettings {
    /// This instance's share of the table budget.
    pub fn share(&self) -> f64 {
        match (self.share, self.expected_replicas) {
            (Some(s), _) => s,
            (None, Some(n)) => 1.0 / f64::from(n.get()),
            _ => 1.0,
        }
    }

    /// The rules of the fleet's mode: what redis and membership each need.
    fn check_mode(&self, p: &mut Problems) {
        let shared = self.share.is_some() || self.expected_replicas.is_some();
        match self.mode {
            RateMode::Local => {}
            RateMode::Redis => {
                self.redis.check(p);
                // The fallback while Redis is down must not be the whole budget on every
                // instance.
                p.check(
                    shared,
                    "rate.mode",
                    "rate.mode = \"redis\" needs rate.share or rate.expected_replicas: the share each instance falls back to while Redis cannot be reached",
                );
            }
            RateMode::Membership => {
                self.membership.check(p);
                p.check(
                    !shared,
                    "rate.share",
                    "rate.share and rate.expected_replicas do not apply when rate.mode = \"membership\" (the share follows the live members): remove them",
                );
            }
        }
    }
}

impl Check for RateSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        let unit = |x: f64| x > 0.0 && x <= 1.0;
        p.check(
            unit(self.target_utilization),
            "rate.target_utilization",
            format!(
                "rate.target_utilization must be in (0, 1], got {}",
                self.target_utilization
            ),
        );
        p.check(
            unit(self.burst_seconds),
            "rate.burst_seconds",
            format!(
                "rate.burst_seconds must be in (0, 1], got {}",
                self.burst_seconds
            ),
        );
        p.check(
            !(self.share.is_some() && self.expected_replicas.is_some()),
            "rate.share",
            "set rate.share or rate.expected_replicas, not both",
        );
        p.check(
            self.share.is_none_or(unit),
            "rate.share",
            format!(
                "rate.share must be in (0, 1], got {}",
                self.share.unwrap_or_default()
            ),
        );
        p.check(
            self.refresh_interval >= Duration::from_secs(1),
            "rate.refresh_interval",
            "rate.refresh_interval must be at least 1s",
        );
        p.check(
            !self.intake_horizon.is_zero() && self.intake_horizon <= Duration::from_secs(3600),
            "rate.intake_horizon",
            format!(
                "rate.intake_horizon must be above zero and at most 1h, got {}",
                human(self.intake_horizon)
            ),
        );
        self.check_mode(p);
    }
}

/// The fleet's shared token bucket in Redis (`rate.mode = "redis"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL, e.g. redis://redis.internal:6379/0 (rediss:// is not supported yet).
    #[serde(deserialize_with = "super::de::url_or_empty")]
    pub url: Option<Url>,
    /// A file holding the URL (with its password: a mounted Secret), instead of `url`.
    pub url_file: Option<PathBuf>,
    /// Key of the shared bucket. Default: sluice:bucket:<dynamodb.table>.
    pub key: Option<String>,
    /// WCU leased per round trip. 0: 2% of the budget, at least 10.
    pub lease_wcu: u32,
    /// Longest a lease may take before Redis counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long to pace to the local share after Redis failed, before trying it again.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: None,
            url_file: None,
            key: None,
            lease_wcu: 0,
            timeout: Duration::from_millis(250),
            retry_after: Duration::from_secs(5),
        }
    }
}

impl RedisSettings {
    /// The URL, empty when unset.
    pub fn url_str(&self) -> &str {
        self.url.as_ref().map_or("", Url::as_str)
    }

    /// Takes the URL from `url_file` when set (it must then be the only place).
    pub(super) fn read_url_file(&mut self) -> Result<()> {
        let Some(path) = &self.url_file else {
            return Ok(());
        };
        if self.url.is_some() {
            bail!("set rate.redis.url or rate.redis.url_file, not both");
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read rate.redis.url_file {}", path.display()))?;
        // The text is not repeated: it holds the password.
        let url = Url::parse(text.trim()).map_err(|e| {
            anyhow!(
                "rate.redis.url_file {}: not a URL ({e}); want redis://[:password@]host:port/db",
                path.display()
            )
        })?;
        self.url = Some(url);
        Ok(())
    }

    fn check(&self, p: &mut Problems) {
        p.check(
            self.url.as_ref().is_some_and(|u| u.scheme() == "redis"),
            "rate.redis.url",
            format!(
                "rate.redis.url must be a redis:// URL when rate.mode = \"redis\", got `{}`",
                self.url.as_ref().map_or(String::new(), redacted)
            ),
        );
        p.check(
            !self.timeout.is_zero(),
            "rate.redis.timeout",
            "rate.redis.timeout must be above zero",
        );
    }
}

/// A URL with its password, if any, hidden.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}

/// Fleet membership (`rate.mode = "membership"`): leases in a DynamoDB table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipSettings {
    /// The lease table (keys `group` S, `member` S).
    pub table: String,
    /// The fleet's name in the lease table: instances of one group share one budget. Default:
    /// dynamodb.table.
    pub group: Option<String>,
    /// Create the lease table (on demand) when it is missing (needs dynamodb:CreateTable).
    pub create_table: bool,
    /// How often each instance reads the members and renews its lease: a join or a clean
    /// departure re-splits the budget within about two of these.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a lease lasts unrenewed: an instance that dies without leaving (kill -9, a
    /// spot reclaim) gives its share back after this.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            table: String::new(),
            group: None,
            create_table: true,
            heartbeat_interval: Duration::from_secs(3),
            lease_duration: Duration::from_secs(15),
        }
    }
}

impl MembershipSettings {
    fn check(&self, p: &mut Problems) {
        p.check(
            !self.table.trim().is_empty(),
            "rate.membership.table",
            "rate.membership.table must name the lease table when rate.mode = \"membership\"",
        );
        p.check(
            self.table.is_empty() || valid_table_name(&self.table),
            "rate.membership.table",
            format!(
                "rate.membership.table `{}` is not a valid table name (3-255 of a-z A-Z 0-9 _ . -)",
                self.table
            ),
        );
        p.check(
            self.heartbeat_interval >= Duration::from_secs(1),
            "rate.membership.heartbeat_interval",
            "rate.membership.heartbeat_interval must be at least 1s",
        );
        p.check(
            self.lease_duration >= self.heartbeat_interval * 3,
            "rate.membership.lease_duration",
            format!(
                "rate.membership.lease_duration ({}) must be at least 3 × rate.membership.heartbeat_interval ({})",
                human(self.lease_duration),
                human(self.heartbeat_interval)
            ),
        );
    }
}
