//! `[spot]`: the ways an EC2 instance goes away, and draining before each.

use std::time::Duration;

use serde::Deserialize;

use super::Mode;
use super::problems::{Check, Problems};

/// Which of EC2's departure signals to watch in IMDSv2 (each drains exactly as SIGTERM does), and
/// how often to look. That a drain fits in the spot notice's two minutes is checked with
/// `[worker]`'s grace, in `Settings::check_across`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpotSettings {
    /// The spot interruption notice (`spot/instance-action`): two minutes before EC2 reclaims a
    /// spot instance.
    pub enabled: bool,
    /// The rebalance recommendation (`events/recommendations/rebalance`): EC2's earlier warning
    /// that a spot instance is at elevated risk. A drained instance does no more work and sits
    /// idle until something ends it (with `scale_in`, until its group picks it).
    pub rebalance: bool,
    /// Auto Scaling scale-in (`autoscaling/target-lifecycle-state` = `Terminated`): drain, then
    /// complete the termination lifecycle hook's action so the instance ends at once.
    pub scale_in: bool,
    /// The termination lifecycle hook whose action sluice completes (CONTINUE) after a drain.
    pub lifecycle_hook: String,
    /// The instance's Auto Scaling group. Empty: read from the instance's
    /// `aws:autoscaling:groupName` tag in IMDS (the launch template must allow instance tags in
    /// metadata).
    pub autoscaling_group: String,
    /// How often to ask.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl SpotSettings {
    /// Whether any signal is watched.
    pub fn watches_any(&self) -> bool {
        self.enabled || self.rebalance || self.scale_in
    }
}

impl Default for SpotSettings {
    fn default() -> Self {
        SpotSettings {
            enabled: false,
            rebalance: false,
            scale_in: false,
            lifecycle_hook: "sluice-drain".into(),
            autoscaling_group: String::new(),
            poll_interval: Duration::from_secs(5),
        }
    }
}

impl Check for SpotSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        p.check(
            !self.watches_any() || !self.poll_interval.is_zero(),
            "spot.poll_interval",
            "spot.poll_interval must be above zero",
        );
        p.check(
            !self.scale_in || !self.lifecycle_hook.trim().is_empty(),
            "spot.lifecycle_hook",
            "with spot.scale_in, spot.lifecycle_hook must name the group's termination lifecycle hook",
        );
    }
}
