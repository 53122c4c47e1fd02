//! `[cache]`: the look-aside write cache (no write paid twice).

use std::time::Duration;

use serde::Deserialize;
use sluice_core::CacheConfig;

use super::Mode;
use super::problems::{Check, Problems};

/// The look-aside write cache: a log whose key and content were written within `window` is
/// acked without a write.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Whether the cache is on.
    pub enabled: bool,
    /// Keys remembered at most (about 200 bytes each, whatever the key's length); the oldest go first.
    pub capacity: usize,
    /// How long a write is remembered.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Share the cache with the fleet in Redis (rate.redis.url; needs rate.mode = "redis").
    pub shared: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            enabled: false,
            capacity: 100_000,
            window: Duration::from_secs(600),
            shared: false,
        }
    }
}

/// The most keys a cache may hold (about 2 to 3 GB).
pub const MAX_CAPACITY: usize = 10_000_000;

impl CacheSettings {
    /// The core's bounds.
    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            capacity: self.capacity,
            window: self.window,
        }
    }
}

impl Check for CacheSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        p.check(
            (1..=MAX_CAPACITY).contains(&self.capacity),
            "cache.capacity",
            format!(
                "cache.capacity is {}: it must be 1..={MAX_CAPACITY} keys",
                self.capacity
            ),
        );
        p.check(
            !self.window.is_zero() && self.window <= Duration::from_secs(86_400),
            "cache.window",
            "cache.window must be above zero and at most 24h",
        );
    }
}
