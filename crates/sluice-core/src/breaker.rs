//! The circuit breaker: when the table fails persistently (repeated non-throttle errors, table
//! missing, access denied), stop receiving. The messages wait safely in the queue instead of
//! cycling through receive, fail and nack. After a cooldown one round of receives is let through
//! as a probe (half open): a successful write closes the breaker, another failure opens it again
//! with a doubled cooldown. Throttles are not failures here (AIMD answers those), nor are items
//! the table rejects (their messages fail alone).
//!
//! Pure state with explicit instants, like [`crate::aimd`].

use crate::events::{CircuitEased, CircuitOpened};
use crate::retry::Backoff;
use crate::sync::Recover;
use sluice_common::catalog;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the [`Breaker`] opens and for how long. The default opens after 5 failed batch writes in a
/// row, for 5 s, doubling on each open in a row up to 60 s.
#[derive(Debug, Clone, Copy)]
pub struct BreakerConfig {
    /// Failed batch writes in a row that open the breaker.
    pub threshold: u32,
    /// How long the first open lasts; each open in a row doubles it.
    pub first_cooldown: Duration,
    /// The longest an open lasts.
    pub max_cooldown: Duration,
}

impl BreakerConfig {
    /// The cooldowns as the shared retry policy: open `n` lasts `ceiling(n)`.
    pub fn cooldowns(&self) -> Backoff {
        Backoff {
            base: self.first_cooldown,
            cap: self.max_cooldown,
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 5,
            first_cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
        }
    }
}

/// Where the breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Receiving as usual; failures are being counted toward the threshold.
    Closed,
    /// No receives until `until`.
    Open {
        /// When the cooldown ends and the breaker turns half open.
        until: Instant,
    },
    /// The cooldown is over: receives go through as a probe, and the next write's outcome closes
    /// the breaker or opens it again for longer.
    HalfOpen,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    failures: u32,
    /// Times the breaker opened since it last closed: the next open lasts
    /// `cooldowns().ceiling(trips)` (no jitter: one breaker per process).
    trips: u32,
}

/// The circuit breaker shared by the pollers and the writers (see the module docs). Thread-safe;
/// every opening and easing emits its metric and log line.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    /// Wakes parked long polls when the breaker opens, so they stop at once.
    opened: tokio::sync::Notify,
}

impl Breaker {
    /// A closed breaker with no failure counted.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                trips: 0,
            }),
            config,
            opened: tokio::sync::Notify::new(),
        }
    }

    /// Completes when the breaker next opens.
    pub async fn opened(&self) {
        self.opened.notified().await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.locked()
    }

    /// The state at `now`. An open breaker whose cooldown has passed turns half open here (and says
    /// so in its metric and log), so this call can change the state.
    pub fn state(&self, now: Instant) -> BreakerState {
        let mut i = self.lock();
        if let BreakerState::Open { until } = i.state
            && now >= until
        {
            i.state = BreakerState::HalfOpen;
            CircuitEased { half_open: true }.emit();
        }
        i.state
    }

    /// May the pollers receive now?
    pub fn allows(&self, now: Instant) -> bool {
        !matches!(self.state(now), BreakerState::Open { .. })
    }

    /// Whether receives are stopped at `now`: the negation of [`Breaker::allows`], with the same
    /// open-to-half-open transition.
    pub fn is_open(&self, now: Instant) -> bool {
        !self.allows(now)
    }

    /// A batch write succeeded: the breaker closes from any state, and the failure count and the
    /// cooldown doubling start over.
    pub fn record_success(&self) {
        let mut i = self.lock();
        if i.state != BreakerState::Closed {
            CircuitEased { half_open: false }.emit();
        } else {
            metrics::gauge!(catalog::CIRCUIT_OPEN).set(0.0);
        }
        i.state = BreakerState::Closed;
        i.failures = 0;
        i.trips = 0;
    }

    /// A batch write failed persistently at `now` (not a throttle, not an item the table rejected).
    /// Opens the breaker once `threshold` failures are counted in a row while closed, or at once
    /// while half open, and wakes [`Breaker::opened`]; `error` goes in the log line. No effect
    /// while open.
    pub fn record_failure(&self, now: Instant, error: &str) {
        let mut i = self.lock();
        i.failures = i.failures.saturating_add(1);
        let trip = match i.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => i.failures >= self.config.threshold,
            BreakerState::Open { .. } => false,
        };
        if trip {
            let cooldown = self.config.cooldowns().ceiling(i.trips);
            i.trips = i.trips.saturating_add(1);
            i.state = BreakerState::Open {
                until: now + cooldown,
            };
            self.opened.notify_waiters();
            CircuitOpened {
                failures: i.failures,
                cooldown,
                error,
            }
            .emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_after_the_cooldown_and_backs_off() {
        let b = Breaker::new(BreakerConfig::default());
        let t0 = Instant::now();
        for _ in 0..4 {
            b.record_failure(t0, "boom");
        }
        assert!(b.allows(t0), "four failures are not yet persistent");
        b.record_failure(t0, "boom");
        assert!(b.is_open(t0));
        assert!(b.is_open(t0 + Duration::from_millis(4900)));
        assert_eq!(b.state(t0 + Duration::from_secs(5)), BreakerState::HalfOpen);
        // The probe fails: open again, for twice as long.
        let t1 = t0 + Duration::from_secs(5);
        b.record_failure(t1, "boom");
        assert!(b.is_open(t1 + Duration::from_millis(9900)));
        assert_eq!(
            b.state(t1 + Duration::from_secs(10)),
            BreakerState::HalfOpen
        );
        // The probe succeeds: closed, and the cooldown starts small again.
        b.record_success();
        assert_eq!(b.state(t1 + Duration::from_secs(10)), BreakerState::Closed);
        let t2 = t1 + Duration::from_secs(20);
        for _ in 0..5 {
            b.record_failure(t2, "boom");
        }
        assert_eq!(
            b.state(t2),
            BreakerState::Open {
                until: t2 + Duration::from_secs(5)
            }
        );
    }

    #[test]
    fn a_success_resets_the_count() {
        let b = Breaker::new(BreakerConfig::default());
        let t0 = Instant::now();
        for _ in 0..4 {
            b.record_failure(t0, "boom");
        }
        b.record_success();
        for _ in 0..4 {
            b.record_failure(t0, "boom");
        }
        assert!(b.allows(t0));
    }
}
