//! Write pacing in write capacity units.
//!
//! Every BatchWriteItem waits here for as many tokens as its items cost in WCU before it is sent.
//! Three layers decide how fast that is:
//! - the **budget**: target utilization × the table's capacity (or this instance's share of it,
//!   or an explicit override). A governor token bucket holds it, with a small burst of at most one
//!   second of budget, and starts empty so a restart ramps up instead of bursting over.
//! - **AIMD** under the budget ([`crate::aimd`]): a throttle or UnprocessedItems cuts the paced
//!   rate, quiet seconds bring it back, never above the budget. It works by charging
//!   `budget / rate` bucket cells per WCU, so the bucket's state survives every rate change.
//! - optionally a **fleet bucket** ([`LeaseSource`], Redis in shared mode): tokens are leased
//!   from one bucket shared by every instance, a few at a time. If it cannot be reached, this
//!   instance falls back to its local share at once and tries the fleet again later: it never
//!   stalls and never exceeds its share.

use crate::sync::{Recover, RecoverRw};
pub use sluice_common::Backoff;
use sluice_common::catalog;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::aimd::{Aimd, AimdConfig, RateChange};

/// What a fleet bucket answered a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This many cells were charged (never more than asked, nor than [`LeaseSource::max_cells`]).
    Granted(u32),
    /// Nothing now; ask again after this.
    Wait(Duration),
}

/// A fleet-wide token bucket (Redis GCRA in sluice's shared mode).
pub trait LeaseSource: Send + Sync {
    /// Takes up to `cells` from the shared bucket and says how many it charged. `Err`: the
    /// bucket cannot be reached.
    fn take(&self, cells: u32) -> Pin<Box<dyn Future<Output = Result<Lease, String>> + Send + '_>>;

    /// The most cells one `take` can be granted (the shared bucket's burst).
    fn max_cells(&self) -> u32 {
        u32::MAX
    }
}

/// How the fleet bucket is used.
#[derive(Debug, Clone, Copy)]
pub struct FleetConfig {
    /// WCU leased per round trip (a few per cent of the budget keeps round trips rare).
    pub lease_wcu: u32,
    /// Longest a lease call may take before the bucket counts as unreachable.
    pub timeout: Duration,
    /// How long to stay on the local share after the bucket failed.
    pub retry_after: Duration,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            lease_wcu: 50,
            timeout: Duration::from_millis(250),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// A token bucket metered in WCU, or no pacing at all when no budget is set.
pub struct WcuLimiter {
    paced: Option<Paced>,
}

/// The buckets' clock: tokio's. In production that is the monotonic clock; on a test runtime
/// with paused time, pacing runs on virtual time, so the rate tests assert exact waits instead
/// of wall-clock ranges.
#[derive(Clone, Debug)]
struct TokioClock {
    origin: Instant,
}

impl governor::clock::Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A GCRA token bucket on tokio's clock: the budgets' buckets here and the pacer's hot-key
/// buckets.
pub(crate) struct Bucket {
    limiter: Limiter,
    clock: TokioClock,
    burst: NonZeroU32,
}

impl Bucket {
    /// `per_second` cells a second, up to `burst` at once; it starts full.
    pub(crate) fn new(per_second: NonZeroU32, burst: NonZeroU32) -> Bucket {
        let clock = TokioClock {
            origin: Instant::now(),
        };
        let quota = Quota::per_second(per_second).allow_burst(burst);
        Bucket {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            burst,
        }
    }

    /// Waits until `n` cells (at most the burst) are free and takes them; false if `n` exceeds
    /// the burst (it never can: callers slice by it).
    pub(crate) async fn take(&self, n: NonZeroU32) -> bool {
        use governor::clock::Clock as _;
        loop {
            match self.limiter.check_n(n) {
                Ok(Ok(())) => return true,
                Ok(Err(not_until)) => {
                    tokio::time::sleep(not_until.wait_time_from(self.clock.now())).await
                }
                Err(_) => return false,
            }
        }
    }
}

struct Paced {
    bucket: RwLock<Arc<Bucket>>,
    burst_seconds: f64,
    aimd: Mutex<Aimd>,
    /// Fractional cells owed from earlier acquires (the AIMD factor is rarely a whole number).
    carry: Mutex<f64>,
    /// WCU the table said it consumed beyond (positive) or below (negative) what was taken:
    /// settled with the next acquire, so a wrong estimate cannot drift into throttles.
    debt: Mutex<f64>,
    fleet: Option<Fleet>,
    /// The global secondary index this budget is for (None: the table). It names its metrics.
    index: Option<String>,
    /// False while the budget is held (a fleet member that has not yet been counted by every
    /// other member, or whose own lease lapsed): acquires wait until it opens.
    open: tokio::sync::watch::Sender<bool>,
}

struct Fleet {
    source: Arc<dyn LeaseSource>,
    config: FleetConfig,
    /// Cells leased from the fleet bucket and not yet spent.
    balance: Mutex<f64>,
    down_until: Mutex<Option<Instant>>,
}

/// A rate limiter setting that cannot work, refused at construction.
#[derive(Debug, thiserror::Error)]
pub enum RateConfigError {
    /// `burst_seconds` (the value given) is not in (0, 1]: the bucket may hold at most one second
    /// of budget, so a burst never doubles the rate for long.
    #[error("burst must be between 0 and 1 second of budget, got {0}")]
    Burst(f64),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.locked()
}

fn make_bucket(budget: NonZeroU32, burst_seconds: f64) -> Bucket {
    let burst = ((budget.get() as f64 * burst_seconds).floor() as u32).max(1);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    let bucket = Bucket::new(budget, burst);
    // Start empty: a (re)started instance ramps up at the budget instead of spending a burst on
    // top of it, so a crash-looping fleet cannot push a table over at every start.
    let _ = bucket.limiter.check_n(burst);
    bucket
}

/// The budget and paced-rate gauges: the table's unlabelled (as ever), an index's labelled
/// `sluice_index_*{index}`.
fn publish(index: Option<&str>, budget: Option<f64>, rate: f64) {
    match index {
        None => {
            if let Some(b) = budget {
                metrics::gauge!(catalog::WRITE_BUDGET_WCU_PER_SECOND).set(b);
            }
            metrics::gauge!(catalog::PACED_RATE_WCU_PER_SECOND).set(rate);
        }
        Some(i) => {
            let i = i.to_owned();
            if let Some(b) = budget {
                metrics::gauge!(catalog::INDEX_WRITE_BUDGET_WCU_PER_SECOND, "index" => i.clone())
                    .set(b);
            }
            metrics::gauge!(catalog::INDEX_PACED_RATE_WCU_PER_SECOND, "index" => i).set(rate);
        }
    }
}

fn report(index: Option<&str>, change: Option<RateChange>) {
    let what = index.map_or_else(|| "table".to_owned(), |i| format!("index {i}"));
    match change {
        Some(RateChange::Decreased { from, to }) => {
            match index {
                None => metrics::counter!(catalog::AIMD_DECREASES_TOTAL).increment(1),
                Some(i) => {
                    metrics::counter!(catalog::AIMD_DECREASES_TOTAL, "index" => i.to_owned())
                        .increment(1)
                }
            }
            publish(index, None, to);
            tracing::info!(
                budget = %what,
                from_wcu_per_s = from.round(),
                to_wcu_per_s = to.round(),
                "throttled: paced rate cut"
            );
        }
        Some(RateChange::Increased { from, to }) => {
            match index {
                None => metrics::counter!(catalog::AIMD_INCREASES_TOTAL).increment(1),
                Some(i) => {
                    metrics::counter!(catalog::AIMD_INCREASES_TOTAL, "index" => i.to_owned())
                        .increment(1)
                }
            }
            publish(index, None, to);
            tracing::debug!(
                budget = %what,
                from_wcu_per_s = from.round(),
                to_wcu_per_s = to.round(),
                "paced rate recovering"
            );
        }
        None => {}
    }
}

impl WcuLimiter {
    /// No pacing: writes go as fast as the table answers.
    pub fn unlimited() -> Self {
        WcuLimiter { paced: None }
    }

    /// Paces to `budget` WCU per second; `burst_seconds` (0 < b ≤ 1) of budget may be spent at
    /// once after an idle spell.
    pub fn try_new(budget: NonZeroU32, burst_seconds: f64) -> Result<Self, RateConfigError> {
        Self::with_aimd(budget, burst_seconds, AimdConfig::default(), None)
    }

    /// A global secondary index's budget: its metrics carry `index` (the table's gauges are
    /// left alone).
    pub fn try_new_for_index(
        budget: NonZeroU32,
        burst_seconds: f64,
        index: impl Into<String>,
    ) -> Result<Self, RateConfigError> {
        Self::with_aimd(
            budget,
            burst_seconds,
            AimdConfig::default(),
            Some(index.into()),
        )
    }

    /// `index`: the budget is that global secondary index's (None: the table's).
    pub fn with_aimd(
        budget: NonZeroU32,
        burst_seconds: f64,
        aimd: AimdConfig,
        index: Option<String>,
    ) -> Result<Self, RateConfigError> {
        if !(burst_seconds > 0.0 && burst_seconds <= 1.0) {
            return Err(RateConfigError::Burst(burst_seconds));
        }
        publish(
            index.as_deref(),
            Some(budget.get() as f64),
            budget.get() as f64,
        );
        Ok(WcuLimiter {
            paced: Some(Paced {
                bucket: RwLock::new(Arc::new(make_bucket(budget, burst_seconds))),
                burst_seconds,
                aimd: Mutex::new(Aimd::new(
                    budget.get() as f64,
                    aimd,
                    Instant::now().into_std(),
                )),
                carry: Mutex::new(0.0),
                debt: Mutex::new(0.0),
                fleet: None,
                index,
                open: tokio::sync::watch::Sender::new(true),
            }),
        })
    }

    /// Settles what the table reported a write cost beyond (`wcu` > 0) or below (< 0) what was
    /// taken for it: added to, or taken off, the next acquire. A credit is at most the bucket's
    /// own burst (burst_seconds of budget): it is spent without waiting, on top of whatever the
    /// bucket holds, so a larger one would let a burst past what the pacing allows.
    pub fn correct(&self, wcu: f64) {
        let Some(p) = &self.paced else { return };
        let floor = -lock(&p.aimd).budget() * p.burst_seconds;
        let mut debt = lock(&p.debt);
        *debt = (*debt + wcu).max(floor);
    }

    /// Takes tokens from a fleet-wide bucket first; the local budget becomes the fallback share.
    pub fn with_fleet(mut self, source: Arc<dyn LeaseSource>, config: FleetConfig) -> Self {
        if let Some(p) = &mut self.paced {
            p.fleet = Some(Fleet {
                source,
                config,
                balance: Mutex::new(0.0),
                down_until: Mutex::new(None),
            });
        }
        self
    }

    /// The budget in WCU per second, if pacing is on.
    pub fn budget(&self) -> Option<f64> {
        self.paced.as_ref().map(|p| lock(&p.aimd).budget())
    }

    /// The paced rate (the budget, or less after throttles), if pacing is on.
    pub fn rate(&self) -> Option<f64> {
        self.paced.as_ref().map(|p| {
            let mut aimd = lock(&p.aimd);
            report(p.index.as_deref(), aimd.recover(Instant::now().into_std()));
            aimd.rate()
        })
    }

    /// A new budget (capacity discovered or changed by UpdateTable).
    pub fn set_budget(&self, budget: NonZeroU32) {
        let Some(p) = &self.paced else { return };
        let mut aimd = lock(&p.aimd);
        if (aimd.budget() - budget.get() as f64).abs() < 0.5 {
            return;
        }
        tracing::info!(
            budget = p.index.as_deref().unwrap_or("table"),
            from_wcu_per_s = aimd.budget(),
            to_wcu_per_s = budget.get(),
            "write budget changed"
        );
        aimd.set_budget(budget.get() as f64, Instant::now().into_std());
        publish(p.index.as_deref(), Some(budget.get() as f64), aimd.rate());
        *p.bucket.write_locked() = Arc::new(make_bucket(budget, p.burst_seconds));
    }

    /// Holds (`true`) or releases the budget: while held, every acquire waits, so this instance
    /// writes nothing. A fleet member holds while the others may not yet have made room for it.
    pub fn hold(&self, held: bool) {
        if let Some(p) = &self.paced {
            p.open.send_replace(!held);
        }
    }

    /// Waits until `wcu` tokens are available and takes them. A cost above the burst is taken in
    /// burst-sized slices, so a large batch waits its fair time instead of failing.
    pub async fn acquire(&self, wcu: u32) {
        let Some(p) = &self.paced else { return };
        let started = Instant::now();
        p.wait_open().await;
        // Below the budget, each WCU costs budget/rate cells.
        let cells = {
            let mut aimd = lock(&p.aimd);
            report(p.index.as_deref(), aimd.recover(started.into_std()));
            let factor = aimd.budget() / aimd.rate().max(f64::MIN_POSITIVE);
            let mut carry = lock(&p.carry);
            let mut debt = lock(&p.debt);
            let exact = (wcu as f64 + *debt) * factor + *carry;
            *debt = 0.0;
            if exact <= 0.0 {
                // Credit left over: keep it for the next acquire.
                *debt = exact / factor;
                *carry = 0.0;
                0
            } else {
                let whole = exact.floor();
                *carry = exact - whole;
                whole as u32
            }
        };
        if cells > 0 {
            let paid_by_fleet = match &p.fleet {
                Some(fleet) if fleet.usable() => fleet.lease(cells as f64).await,
                _ => false,
            };
            if !paid_by_fleet {
                p.local(cells).await;
            }
        }
        metrics::histogram!(catalog::RATE_LIMITER_WAIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
    }

    /// A throttle (exception or UnprocessedItems) was seen: AIMD cuts the paced rate.
    pub fn on_throttle(&self) {
        if let Some(p) = &self.paced {
            report(
                p.index.as_deref(),
                lock(&p.aimd).on_throttle(Instant::now().into_std()),
            );
        }
    }

    /// The global secondary index this budget is for (None: the table).
    pub fn index(&self) -> Option<&str> {
        self.paced.as_ref().and_then(|p| p.index.as_deref())
    }

    /// `wcu` units were written.
    pub fn on_written(&self, wcu: f64) {
        metrics::counter!(catalog::WCU_CONSUMED_TOTAL).increment(wcu.round() as u64);
    }
}

impl Paced {
    /// Returns at once unless the budget is held ([`WcuLimiter::hold`]); then when released.
    async fn wait_open(&self) {
        if !*self.open.borrow() {
            let mut open = self.open.subscribe();
            // The sender lives as long as `self`: this returns once the budget is released.
            let _ = open.wait_for(|o| *o).await;
        }
    }

    async fn local(&self, cells: u32) {
        let mut left = cells;
        while left > 0 {
            // Each slice (at most burst_seconds of budget) takes the budget as it is now: a hold
            // or a lower share (a fleet member joining) reaches an acquire already waiting
            // within one slice, not after a whole packed message at the old rate.
            self.wait_open().await;
            let bucket = self.bucket.read_locked().clone();
            let n = left.min(bucket.burst.get());
            let slice = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
            // `n` never exceeds the burst, the only way this can fail.
            if !bucket.take(slice).await {
                break;
            }
            left -= n;
        }
    }
}

impl Fleet {
    /// Spends from the leased balance if it covers `cells`.
    fn take(&self, cells: f64) -> bool {
        let mut balance = lock(&self.balance);
        let covered = *balance >= cells;
        if covered {
            *balance -= cells;
        }
        covered
    }

    fn usable(&self) -> bool {
        lock(&self.down_until).is_none_or(|t| Instant::now() >= t)
    }

    /// Leases until `cells` are covered, in slices the bucket can grant, crediting only what it
    /// charged. False: the fleet bucket failed, use the local share.
    async fn lease(&self, cells: f64) -> bool {
        loop {
            if self.take(cells) {
                return true;
            }
            let want = ((self.config.lease_wcu as f64)
                .max(cells - *lock(&self.balance))
                .ceil() as u32)
                .clamp(1, self.source.max_cells().max(1));
            let answer = tokio::time::timeout(self.config.timeout, self.source.take(want)).await;
            match answer {
                Ok(Ok(Lease::Granted(n))) => *lock(&self.balance) += f64::from(n.min(want)),
                Ok(Ok(Lease::Wait(wait))) => {
                    tokio::time::sleep(wait.min(Duration::from_secs(1))).await
                }
                Ok(Err(error)) => return self.fail(&error),
                Err(_) => return self.fail("lease timed out"),
            }
        }
    }

    fn fail(&self, error: &str) -> bool {
        metrics::counter!(catalog::REDIS_LEASE_FAILURES_TOTAL).increment(1);
        tracing::warn!(
            error,
            retry_in_s = self.config.retry_after.as_secs_f64(),
            "fleet bucket unreachable: pacing to the local share"
        );
        *lock(&self.down_until) = Some(Instant::now() + self.config.retry_after);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credit_from_consumed_capacity_is_never_more_than_the_burst() {
        // DynamoDB reported far less than was taken (5,000 WCU of estimate never charged): the
        // credit is spent without waiting, so it must not exceed what the bucket itself may
        // burst (0.1 s of 1,000 WCU/s), or it would let a burst past the pacing.
        let l = WcuLimiter::try_new(NonZeroU32::new(1000).unwrap(), 0.1).unwrap();
        l.correct(-5000.0);
        let p = l.paced.as_ref().unwrap();
        assert_eq!(*lock(&p.debt), -100.0);
        l.correct(250.0);
        assert_eq!(*lock(&p.debt), 150.0, "a debt is kept whole");
    }

    #[test]
    fn burst_is_at_most_one_second_of_budget() {
        let budget = NonZeroU32::new(100).unwrap();
        assert!(WcuLimiter::try_new(budget, 1.5).is_err());
        assert!(WcuLimiter::try_new(budget, 0.0).is_err());
        let l = WcuLimiter::try_new(budget, 0.2).unwrap();
        let p = l.paced.as_ref().unwrap();
        assert_eq!(p.bucket.read().unwrap().burst.get(), 20);
    }

    /// The rate tests run on tokio's paused clock: the buckets read it, so every wait below is
    /// exact virtual time, whatever the machine is doing. `near` allows the timer wheel's 1 ms.
    fn near(took: Duration, want_ms: u64) -> bool {
        took.as_millis().abs_diff(u128::from(want_ms)) <= 2
    }

    #[tokio::test(start_paused = true)]
    async fn paced_acquires_hold_the_budget() {
        // 200 WCU/s (5 ms a cell) with a 0.1 s burst of 20, starting empty: the first 20 come
        // after 0.1 s, and every 10 after that 50 ms later.
        let l = WcuLimiter::try_new(NonZeroU32::new(200).unwrap(), 0.1).unwrap();
        let start = Instant::now();
        l.acquire(20).await;
        assert!(near(start.elapsed(), 100), "{:?}", start.elapsed());
        for _ in 0..6 {
            l.acquire(10).await;
        }
        assert!(near(start.elapsed(), 400), "{:?}", start.elapsed());
        // A cost larger than the burst is taken in slices (20, 20, 5) rather than refused.
        l.acquire(45).await;
        assert!(near(start.elapsed(), 625), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hold_and_a_lower_budget_reach_an_acquire_already_waiting() {
        // A packed message of 100 WCU at 100 WCU/s (burst 20) takes 1.2 s from empty. Held
        // 0.25 s in, it stops after the slice it is waiting for (40 WCU by 0.4 s); released at
        // 1.75 s with the budget cut to 25 WCU/s (three more members; burst 5, starting empty),
        // the other 60 WCU take 12 slices of 0.2 s: done at 4.15 s, not 1.2 s.
        let l = Arc::new(WcuLimiter::try_new(NonZeroU32::new(100).unwrap(), 0.2).unwrap());
        let start = Instant::now();
        let waiting = tokio::spawn({
            let l = l.clone();
            async move {
                l.acquire(100).await;
                start.elapsed()
            }
        });
        tokio::time::sleep(Duration::from_millis(250)).await;
        l.hold(true);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!waiting.is_finished(), "the hold stops a waiting acquire");
        l.set_budget(NonZeroU32::new(25).unwrap());
        l.hold(false);
        let took = waiting.await.unwrap();
        assert!(near(took, 4150), "took {took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_slows_pacing_below_the_budget() {
        let l = WcuLimiter::try_new(NonZeroU32::new(1000).unwrap(), 0.01).unwrap();
        l.on_throttle();
        assert_eq!(l.rate(), Some(800.0));
        assert_eq!(l.budget(), Some(1000.0));
        // 400 WCU at 800 WCU/s (1.25 cells each at 1,000 cells/s) take 0.5 s; at the full
        // budget they would take 0.4 s.
        let start = Instant::now();
        for _ in 0..40 {
            l.acquire(10).await;
        }
        assert!(near(start.elapsed(), 500), "{:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_budget_change_takes_effect_and_keeps_the_aimd_share() {
        let l = WcuLimiter::try_new(NonZeroU32::new(1000).unwrap(), 0.01).unwrap();
        l.on_throttle();
        l.set_budget(NonZeroU32::new(100).unwrap());
        assert_eq!((l.budget(), l.rate()), (Some(100.0), Some(80.0)));
        // 40 WCU at 80 WCU/s: 0.5 s.
        let start = Instant::now();
        for _ in 0..4 {
            l.acquire(10).await;
        }
        assert!(near(start.elapsed(), 500), "{:?}", start.elapsed());
    }

    /// A fleet bucket that grants everything, or fails, as told.
    struct FakeFleet {
        up: std::sync::atomic::AtomicBool,
        granted: std::sync::atomic::AtomicU32,
    }

    impl LeaseSource for FakeFleet {
        fn take(
            &self,
            cells: u32,
        ) -> Pin<Box<dyn Future<Output = Result<Lease, String>> + Send + '_>> {
            Box::pin(async move {
                if self.up.load(std::sync::atomic::Ordering::Relaxed) {
                    self.granted
                        .fetch_add(cells, std::sync::atomic::Ordering::Relaxed);
                    Ok(Lease::Granted(cells))
                } else {
                    Err("connection refused".into())
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleet_bucket_pays_when_up_and_the_local_share_when_down() {
        let fleet = Arc::new(FakeFleet {
            up: true.into(),
            granted: 0.into(),
        });
        let config = FleetConfig {
            lease_wcu: 50,
            ..FleetConfig::default()
        };
        // Local share 10 WCU/s: far slower than the fleet bucket, which grants everything.
        let l = WcuLimiter::try_new(NonZeroU32::new(10).unwrap(), 0.1)
            .unwrap()
            .with_fleet(fleet.clone(), config);
        let start = Instant::now();
        for _ in 0..20 {
            l.acquire(10).await;
        }
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "paid by the fleet at once, not by the 10 WCU/s share (20 s)"
        );
        assert_eq!(
            fleet.granted.load(std::sync::atomic::Ordering::Relaxed),
            200
        );

        // The fleet goes down: no stall, and no faster than the local share.
        fleet.up.store(false, std::sync::atomic::Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..3 {
            l.acquire(1).await;
        }
        // 3 WCU at 10 WCU/s from a bucket that started empty: 0.1 s each, no stall.
        let took = start.elapsed();
        assert!(near(took, 300), "3 WCU at 10 WCU/s: {took:?}");
    }
}
