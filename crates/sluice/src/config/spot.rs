//! `[spot]`: draining before an EC2 spot interruption.

use std::time::Duration;

use serde::Deserialize;

use super::Mode;
use super::problems::{Check, Problems};

/// Whether to watch IMDSv2 for the spot interruption notice (and drain when it comes), and how
/// often. That the drain fits in the notice's two minutes is checked with `[worker]`'s grace, in
/// `Settings::check_across`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpotSettings {
    /// Poll IMDSv2 for the spot interruption notice and drain when it comes (EC2 spot only).
    pub enabled: bool,
    /// How often to ask.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for SpotSettings {
    fn default() -> Self {
        SpotSettings {
            enabled: false,
            poll_interval: Duration::from_secs(5),
        }
    }
}

impl Check for SpotSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        p.check(
            !self.enabled || !self.poll_interval.is_zero(),
            "spot.poll_interval",
            "spot.poll_interval must be above zero",
        );
    }
}
