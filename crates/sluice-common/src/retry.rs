//! The retry policy. Every loop that tries again after a failure (a batch write, a nack's
//! visibility, a SendMessageBatch, a replay from the spool, a lost source) waits
//! [`Backoff::delay`]; what counts as worth retrying stays with each caller (the retry *logic*),
//! the wait between tries lives here (the *policy*).

use std::time::Duration;

/// Exponential backoff with jitter: attempt `n` (0-based) waits a random time in
/// `[d/2, d]` with `d = min(cap, base × 2^n)`. Half the delay is kept so retries never collapse
/// to zero; the random half spreads workers that failed together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's wait.
    pub base: Duration,
    /// No wait is longer than this.
    pub cap: Duration,
}

impl Backoff {
    /// How long attempt `attempt` (0 = the first retry) waits: uniform in
    /// `[ceiling/2, ceiling]`.
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
    fn a_huge_attempt_count_saturates_instead_of_overflowing() {
        let b = Backoff {
            base: Duration::from_secs(u64::MAX / 4),
            cap: Duration::MAX,
        };
        assert_eq!(b.ceiling(u32::MAX), Duration::MAX);
    }
}
