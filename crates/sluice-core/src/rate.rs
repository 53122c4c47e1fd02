//! Write pacing in write capacity units.
//!
//! Every BatchWriteItem waits here for as many tokens as its items cost in WCU before it is sent,
//! so the table sees at most `budget` WCU per second plus a burst of at most one second of budget.
//! This is the first version: a fixed budget from config. Capacity discovery (DescribeTable),
//! AIMD on throttles and fleet-wide budgets plug in behind the same three calls: `acquire`,
//! `on_throttle`, `on_written`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A token bucket metered in WCU, or no pacing at all when no budget is set.
pub struct WcuLimiter {
    bucket: Option<Bucket>,
}

struct Bucket {
    limiter: DefaultDirectRateLimiter,
    budget: NonZeroU32,
    burst: NonZeroU32,
}

#[derive(Debug, thiserror::Error)]
pub enum RateConfigError {
    #[error("burst must be between 0 and 1 second of budget, got {0}")]
    Burst(f64),
}

impl WcuLimiter {
    /// No pacing: writes go as fast as the table answers.
    pub fn unlimited() -> Self {
        WcuLimiter { bucket: None }
    }

    /// Paces to `budget` WCU per second; `burst_seconds` (0 < b ≤ 1) of budget may be spent at
    /// once after an idle spell.
    pub fn try_new(budget: NonZeroU32, burst_seconds: f64) -> Result<Self, RateConfigError> {
        if !(burst_seconds > 0.0 && burst_seconds <= 1.0) {
            return Err(RateConfigError::Burst(burst_seconds));
        }
        let burst = ((budget.get() as f64 * burst_seconds).floor() as u32).max(1);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(budget).allow_burst(burst);
        metrics::gauge!("sluice_write_budget_wcu_per_second").set(budget.get() as f64);
        // Start empty: a (re)started instance ramps up at the budget instead of spending a burst
        // on top of it, so a crash-looping fleet cannot push a table over at every start.
        let limiter = RateLimiter::direct(quota);
        let _ = limiter.check_n(burst);
        Ok(WcuLimiter {
            bucket: Some(Bucket {
                limiter,
                budget,
                burst,
            }),
        })
    }

    /// The budget in WCU per second, if pacing is on.
    pub fn budget(&self) -> Option<NonZeroU32> {
        self.bucket.as_ref().map(|b| b.budget)
    }

    /// Waits until `wcu` tokens are available and takes them. A cost above the burst is taken in
    /// burst-sized slices, so a large batch waits its fair time instead of failing.
    pub async fn acquire(&self, wcu: u32) {
        let Some(bucket) = &self.bucket else { return };
        let started = Instant::now();
        let mut left = wcu;
        while left > 0 {
            let n = left.min(bucket.burst.get());
            let cells = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // `n` never exceeds the burst, the only way this can fail.
            if bucket.limiter.until_n_ready(cells).await.is_err() {
                break;
            }
            left -= n;
        }
        metrics::histogram!("sluice_rate_limiter_wait_seconds")
            .record(started.elapsed().as_secs_f64());
    }

    /// A throttle (exception or UnprocessedItems) was seen. The AIMD controller hooks in here.
    pub fn on_throttle(&self) {}

    /// `wcu` units were written.
    pub fn on_written(&self, wcu: f64) {
        metrics::counter!("sluice_wcu_consumed_total").increment(wcu.round() as u64);
    }
}

/// Exponential backoff with jitter: attempt `n` (0-based) waits a random time in
/// `[d/2, d]` with `d = min(cap, base × 2^n)`. Half the delay is kept so retries never collapse
/// to zero; the random half spreads workers that failed together.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub fn delay(&self, attempt: u32) -> Duration {
        let d = self.ceiling(attempt);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// The longest delay attempt `n` can wait.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.base.saturating_mul(factor).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_stops_at_the_cap() {
        let b = Backoff {
            base: Duration::from_millis(50),
            cap: Duration::from_secs(2),
        };
        for attempt in 0..40 {
            let ceiling = b.ceiling(attempt);
            assert_eq!(
                ceiling,
                Duration::from_millis(50 * 2u64.pow(attempt.min(6))).min(Duration::from_secs(2))
            );
            let d = b.delay(attempt);
            assert!(d >= ceiling / 2 && d <= ceiling, "{d:?} vs {ceiling:?}");
        }
    }

    #[test]
    fn burst_is_at_most_one_second_of_budget() {
        let budget = NonZeroU32::new(100).unwrap();
        assert!(WcuLimiter::try_new(budget, 1.5).is_err());
        assert!(WcuLimiter::try_new(budget, 0.0).is_err());
        let l = WcuLimiter::try_new(budget, 0.2).unwrap();
        assert_eq!(l.bucket.as_ref().unwrap().burst.get(), 20);
    }

    #[tokio::test]
    async fn paced_acquires_hold_the_budget() {
        // 200 WCU/s with a 0.1 s burst: 20 now, then 60 more take ~0.3 s.
        let l = WcuLimiter::try_new(NonZeroU32::new(200).unwrap(), 0.1).unwrap();
        let start = Instant::now();
        l.acquire(20).await;
        assert!(
            start.elapsed() < Duration::from_millis(250),
            "the burst is there at once"
        );
        for _ in 0..6 {
            l.acquire(10).await;
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(280), "took {took:?}");
        // A cost larger than the burst is taken in slices rather than rejected.
        l.acquire(45).await;
        assert!(start.elapsed() >= Duration::from_millis(500));
    }
}
