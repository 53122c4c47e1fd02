//! AIMD rate control under a hard budget.
//!
//! The table says "too much" two ways: a throttling error, or items handed back as
//! UnprocessedItems. Either is a sign that something else also writes to the table (other
//! instances, other writers, a hot partition), so the paced rate is cut multiplicatively, at
//! most once per `cooldown` (a burst of throttled batches in flight is one signal, not ten).
//! While no throttle comes, the rate recovers additively, `increase_per_second` WCU every second,
//! back up to the budget and never above it.
//!
//! The controller is pure state with explicit instants: the caller passes `now`, so the rules are
//! tested exactly without sleeping.

use std::time::{Duration, Instant};

/// How [`Aimd`] cuts and restores the paced rate. The default cuts by 20 % at most once a second,
/// recovers 5 % of the budget per second and never goes below 5 % of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AimdConfig {
    /// Multiplier applied on a throttle (0 < f < 1).
    pub decrease_factor: f64,
    /// Shortest time between two decreases.
    pub cooldown: Duration,
    /// Recovery per second, as a share of the budget.
    pub increase_share_per_second: f64,
    /// The rate never goes below this share of the budget (nor below 1 WCU/s).
    pub floor_share: f64,
}

impl Default for AimdConfig {
    fn default() -> Self {
        AimdConfig {
            decrease_factor: 0.8,
            cooldown: Duration::from_secs(1),
            increase_share_per_second: 0.05,
            floor_share: 0.05,
        }
    }
}

/// What a call changed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateChange {
    /// A throttle cut the rate.
    Decreased {
        /// The rate before the cut, in WCU per second.
        from: f64,
        /// The rate after it (never below the floor).
        to: f64,
    },
    /// Recovery raised the rate.
    Increased {
        /// The rate before, in WCU per second.
        from: f64,
        /// The rate after (never above the budget).
        to: f64,
    },
}

/// The paced write rate, in WCU per second, under a hard budget: cut on throttles, restored
/// additively, never above the budget nor below its floor. Pure state; the caller passes `now`.
#[derive(Debug, Clone)]
pub struct Aimd {
    config: AimdConfig,
    budget: f64,
    rate: f64,
    last_decrease: Option<Instant>,
    /// Recovery is counted from here (the last decrease, or the last whole second credited).
    recovering_since: Instant,
}

impl Aimd {
    /// A controller starting at the full `budget` (WCU per second), with recovery counted from
    /// `now`.
    pub fn new(budget: f64, config: AimdConfig, now: Instant) -> Self {
        Aimd {
            config,
            budget,
            rate: budget,
            last_decrease: None,
            recovering_since: now,
        }
    }

    /// The rate to pace to now, in WCU per second: between the floor and the budget. Recovery is
    /// only credited by [`Aimd::recover`] and [`Aimd::on_throttle`], so this does not move with
    /// time alone.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The budget the rate recovers to and never exceeds, in WCU per second.
    pub fn budget(&self) -> f64 {
        self.budget
    }

    fn floor(&self) -> f64 {
        (self.budget * self.config.floor_share)
            .max(1.0)
            .min(self.budget)
    }

    /// A throttle was seen at `now`.
    pub fn on_throttle(&mut self, now: Instant) -> Option<RateChange> {
        self.recover(now);
        if self
            .last_decrease
            .is_some_and(|t| now.saturating_duration_since(t) < self.config.cooldown)
        {
            return None;
        }
        let from = self.rate;
        self.rate = (self.rate * self.config.decrease_factor).max(self.floor());
        self.last_decrease = Some(now);
        self.recovering_since = now;
        (self.rate < from).then_some(RateChange::Decreased {
            from,
            to: self.rate,
        })
    }

    /// Credits the additive recovery earned up to `now`, in whole seconds.
    pub fn recover(&mut self, now: Instant) -> Option<RateChange> {
        if self.rate >= self.budget {
            self.recovering_since = now;
            return None;
        }
        let seconds = now
            .saturating_duration_since(self.recovering_since)
            .as_secs();
        if seconds == 0 {
            return None;
        }
        let from = self.rate;
        let step = self.budget * self.config.increase_share_per_second;
        self.rate = (self.rate + step * seconds as f64).min(self.budget);
        self.recovering_since += Duration::from_secs(seconds);
        Some(RateChange::Increased {
            from,
            to: self.rate,
        })
    }

    /// A new budget (capacity discovered or changed). The rate keeps its share of the budget.
    pub fn set_budget(&mut self, budget: f64, now: Instant) {
        let share = if self.budget > 0.0 {
            self.rate / self.budget
        } else {
            1.0
        };
        self.budget = budget;
        self.rate = (budget * share).clamp(self.floor(), budget);
        self.recovering_since = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn a_throttle_cuts_multiplicatively_once_per_cooldown() {
        let t0 = Instant::now();
        let mut a = Aimd::new(1000.0, AimdConfig::default(), t0);
        assert_eq!(
            a.on_throttle(t0),
            Some(RateChange::Decreased {
                from: 1000.0,
                to: 800.0
            })
        );
        // More throttles from batches already in flight: the same signal, no further cut.
        assert_eq!(a.on_throttle(t0 + secs(0.5)), None);
        assert_eq!(a.rate(), 800.0);
        // After the cooldown a new throttle cuts again (recovery of 1 s is credited first).
        let change = a.on_throttle(t0 + secs(1.0));
        assert_eq!(
            change,
            Some(RateChange::Decreased {
                from: 850.0,
                to: 680.0
            })
        );
    }

    #[test]
    fn recovery_is_additive_per_second_and_stops_at_the_budget() {
        let t0 = Instant::now();
        let mut a = Aimd::new(1000.0, AimdConfig::default(), t0);
        a.on_throttle(t0);
        assert_eq!(a.recover(t0 + secs(0.9)), None, "no whole second yet");
        assert_eq!(
            a.recover(t0 + secs(1.0)),
            Some(RateChange::Increased {
                from: 800.0,
                to: 850.0
            })
        );
        a.recover(t0 + secs(3.5));
        assert_eq!(a.rate(), 950.0);
        a.recover(t0 + secs(60.0));
        assert_eq!(a.rate(), 1000.0, "never above the budget");
        assert_eq!(a.recover(t0 + secs(61.0)), None);
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let t0 = Instant::now();
        let no_recovery = AimdConfig {
            increase_share_per_second: 0.0,
            ..AimdConfig::default()
        };
        let mut a = Aimd::new(100.0, no_recovery, t0);
        for i in 0..100 {
            a.on_throttle(t0 + secs(i as f64));
        }
        assert_eq!(a.rate(), 5.0, "5% of the budget");
        let mut tiny = Aimd::new(3.0, no_recovery, t0);
        for i in 0..10 {
            tiny.on_throttle(t0 + secs(i as f64));
        }
        assert_eq!(tiny.rate(), 1.0, "never below 1 WCU/s");
    }

    #[test]
    fn steady_throttling_settles_where_recovery_and_cuts_balance() {
        // A throttle every second against one second of recovery: r = (r + 5) × 0.8 → 20.
        let t0 = Instant::now();
        let mut a = Aimd::new(100.0, AimdConfig::default(), t0);
        for i in 0..200 {
            a.on_throttle(t0 + secs(i as f64));
        }
        assert!((a.rate() - 20.0).abs() < 1e-6, "{}", a.rate());
    }

    #[test]
    fn a_new_budget_keeps_the_rate_share() {
        let t0 = Instant::now();
        let mut a = Aimd::new(1000.0, AimdConfig::default(), t0);
        a.on_throttle(t0); // 80%
        a.set_budget(500.0, t0);
        assert_eq!(a.rate(), 400.0);
        a.set_budget(2000.0, t0);
        assert_eq!(a.rate(), 1600.0);
    }
}
