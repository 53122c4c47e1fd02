//! Write capacity as DynamoDB enforces it.
//!
//! A provisioned table earns `W` write capacity units per second. What it does not spend is kept
//! as burst credit, up to `burst_seconds` (300 in DynamoDB) of capacity. A write is admitted when
//! it finds capacity available (at least one unit) and then spends its whole cost, running the
//! bucket into debt if it costs more than is there; while the bucket holds less than a unit,
//! writes are refused: PutItem with ProvisionedThroughputExceededException, BatchWriteItem by
//! handing back the items that did not fit as UnprocessedItems (or the exception when none fit).
//! So an item costing more than the bucket can ever hold (a 400 KB item on a 1-WCU table) is
//! written, and the table is throttled until the debt is paid back. A new table starts with one
//! second of capacity and no credit; a capacity raise adds the difference at once.
//! On-demand tables use the same bucket with their ceiling as rate and one second of burst, and
//! refuse with ThrottlingException.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A token bucket in WCU with DynamoDB's burst credit.
#[derive(Debug, Clone)]
pub struct WriteCapacity {
    rate: f64,
    burst_seconds: f64,
    tokens: f64,
    last: Instant,
}

impl WriteCapacity {
    /// A bucket earning `rate` WCU per second, keeping up to `burst_seconds` (at least 1) of it as
    /// credit, and starting with one second of capacity.
    pub fn new(rate: u64, burst_seconds: f64, now: Instant) -> Self {
        let rate = rate as f64;
        WriteCapacity {
            rate,
            burst_seconds: burst_seconds.max(1.0),
            tokens: rate,
            last: now,
        }
    }

    fn max_tokens(&self) -> f64 {
        self.rate * self.burst_seconds
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.max_tokens());
        self.last = self.last.max(now);
    }

    /// Whether a write costing `units` is admitted now: it needs one unit available (all of
    /// them when it costs less than one), not its whole cost.
    pub fn admits(&mut self, now: Instant, units: u64) -> bool {
        self.refill(now);
        // A hair of tolerance so float accumulation never refuses an exactly-earned unit.
        self.tokens + 1e-9 >= (units as f64).min(1.0)
    }

    /// Spends `units`, into debt if need be (after [`WriteCapacity::admits`] said yes).
    pub fn consume(&mut self, now: Instant, units: u64) {
        self.refill(now);
        self.tokens -= units as f64;
    }

    /// Spends `units` if the write is admitted now (see [`WriteCapacity::admits`]).
    pub fn try_consume(&mut self, now: Instant, units: u64) -> bool {
        if self.admits(now, units) {
            self.consume(now, units);
            true
        } else {
            false
        }
    }

    /// Units available now (provisioned capacity plus burst credit; negative while in debt).
    pub fn available(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens
    }

    /// The rate the bucket earns, in WCU per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// A capacity change (UpdateTable). A raise is usable at once: the current second's
    /// allowance grows by the difference, as a new table starts with one second of capacity.
    /// Earned credit is kept, up to the new maximum.
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        let rate = rate as f64;
        if rate > self.rate {
            self.tokens += rate - self.rate;
        }
        self.rate = rate;
        self.tokens = self.tokens.min(self.max_tokens());
    }
}

/// What a table consumed, per wall-clock second, and what it refused.
#[derive(Debug, Clone, Default)]
pub struct CapacityLog {
    /// Unix second → WCU consumed in it. The last hour is kept.
    pub per_second: BTreeMap<u64, f64>,
    /// WCU consumed since the table was created.
    pub consumed_total: f64,
    /// Requests refused whole (ProvisionedThroughputExceeded / ThrottlingException).
    pub throttled_requests: u64,
    /// Items handed back as UnprocessedItems.
    pub unprocessed_items: u64,
}

impl CapacityLog {
    /// Adds `units` consumed now to the current wall-clock second and the total; seconds older than
    /// the last 3,600 recorded are forgotten.
    pub fn record(&mut self, units: f64) {
        let second = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        *self.per_second.entry(second).or_insert(0.0) += units;
        self.consumed_total += units;
        while self.per_second.len() > 3600 {
            self.per_second.pop_first();
        }
    }

    /// The most WCU consumed in one second, over the seconds kept; 0 before any write.
    pub fn peak(&self) -> f64 {
        self.per_second.values().copied().fold(0.0, f64::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_table_has_one_second_of_capacity_and_no_credit() {
        let t0 = Instant::now();
        let mut c = WriteCapacity::new(10, 300.0, t0);
        for _ in 0..10 {
            assert!(c.try_consume(t0, 1));
        }
        assert!(
            !c.try_consume(t0, 1),
            "the 11th unit in the first instant is refused"
        );
        // Half a second earns five units, not six.
        let t = t0 + Duration::from_millis(500);
        assert!(c.try_consume(t, 5));
        assert!(!c.try_consume(t, 1));
    }

    #[test]
    fn unused_capacity_accrues_as_credit_up_to_the_burst_limit() {
        let t0 = Instant::now();
        let mut c = WriteCapacity::new(10, 300.0, t0);
        assert!(c.try_consume(t0, 10));
        // 60 idle seconds: 600 units of credit, spendable at once, and not one more.
        let t = t0 + Duration::from_secs(60);
        assert!((c.available(t) - 600.0).abs() < 1e-6);
        assert!(c.try_consume(t, 600));
        assert!(!c.try_consume(t, 1));
        // Credit is capped at 300 seconds of capacity however long the table idles.
        let later = t + Duration::from_secs(3600);
        assert!((c.available(later) - 3000.0).abs() < 1e-6);
        assert!(c.try_consume(later, 3000));
        assert!(!c.try_consume(later, 1));
    }

    #[test]
    fn a_write_that_finds_a_unit_runs_the_bucket_into_debt_until_paid_back() {
        let t0 = Instant::now();
        // 1 WCU, 300 s of burst: a 400-unit item costs more than the bucket can ever hold.
        let mut c = WriteCapacity::new(1, 300.0, t0);
        assert!(
            c.try_consume(t0, 400),
            "one unit available admits the whole write"
        );
        assert!((c.available(t0) + 399.0).abs() < 1e-6);
        // Throttled until the debt is paid back: 399 s later there is nothing, 400 s one unit.
        assert!(!c.try_consume(t0 + Duration::from_secs(399), 1));
        assert!(c.try_consume(t0 + Duration::from_secs(400), 1));
    }

    #[test]
    fn less_than_a_unit_available_admits_nothing() {
        let t0 = Instant::now();
        let mut c = WriteCapacity::new(10, 300.0, t0);
        assert!(c.try_consume(t0, 10));
        let t = t0 + Duration::from_millis(50); // half a unit earned
        assert!(!c.try_consume(t, 1));
        assert!(!c.try_consume(t, 5), "a refused write spends nothing");
        assert!((c.available(t) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn capacity_changes_keep_earned_credit_within_the_new_limit() {
        let t0 = Instant::now();
        let mut c = WriteCapacity::new(100, 300.0, t0);
        let t = t0 + Duration::from_secs(10);
        c.set_rate(2, t); // credit 1100 → capped at 600
        assert!((c.available(t) - 600.0).abs() < 1e-6);
        assert_eq!(c.rate(), 2);
    }

    #[test]
    fn a_capacity_raise_is_usable_at_once() {
        let t0 = Instant::now();
        let mut c = WriteCapacity::new(5, 300.0, t0);
        assert!(c.try_consume(t0, 5));
        c.set_rate(1000, t0);
        assert!((c.available(t0) - 995.0).abs() < 1e-6);
        assert!(c.try_consume(t0, 995));
        assert!(!c.try_consume(t0, 1));
    }

    #[test]
    fn on_demand_ceiling_has_one_second_of_burst() {
        let t0 = Instant::now();
        let mut c = WriteCapacity::new(50, 1.0, t0);
        let t = t0 + Duration::from_secs(100);
        assert!((c.available(t) - 50.0).abs() < 1e-6);
    }
}
