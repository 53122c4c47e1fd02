//! The Redis fleet bucket against a real redis-server, started by each test on a free port.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sluice_core::{FleetConfig, Lease, LeaseSource, WcuLimiter};
use sluice_redis::{BucketRate, RedisBucket};
use sluice_testkit::{free_port, start_redis};

const RATE: BucketRate = BucketRate {
    wcu_per_second: 200.0,
    burst_wcu: 20,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let redis = start_redis().await.unwrap();
    let granted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let bucket = RedisBucket::new(&redis.endpoint, "sluice:test:shared", RATE).unwrap();
        let granted = granted.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match bucket.take(10).await.unwrap() {
                    Lease::Granted(n) => {
                        granted.fetch_add(u64::from(n), Ordering::Relaxed);
                    }
                    Lease::Wait(wait) => tokio::time::sleep(wait).await,
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = granted.load(Ordering::Relaxed);
    // Two greedy instances for 2 s against one 200 WCU/s bucket with a 20 WCU burst: together
    // they get 2 × 200 + 20 at most (+10 for a lease granted at the deadline), and most of it.
    assert!(total <= 430, "the shared bucket was overspent: {total}");
    assert!(total >= 300, "the shared bucket was underused: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_lease_says_how_long_to_wait() {
    let redis = start_redis().await.unwrap();
    let bucket = RedisBucket::new(&redis.endpoint, "sluice:test:wait", RATE).unwrap();
    assert_eq!(
        bucket.take(20).await.unwrap(),
        Lease::Granted(20),
        "the burst is there"
    );
    let Lease::Wait(wait) = bucket.take(10).await.unwrap() else {
        panic!("empty now")
    };
    // 10 cells at 200/s: 50 ms, less what passed since.
    assert!(
        wait <= Duration::from_millis(50) && wait > Duration::ZERO,
        "{wait:?}"
    );
    tokio::time::sleep(wait).await;
    assert_eq!(bucket.take(10).await.unwrap(), Lease::Granted(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_a_quick_error() {
    let url = format!("redis://127.0.0.1:{}/", free_port());
    let bucket = RedisBucket::new(&url, "k", RATE).unwrap();
    let started = Instant::now();
    assert!(bucket.take(1).await.is_err());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(RedisBucket::new("not a url", "k", RATE).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limiter_falls_back_to_its_local_share_when_redis_dies() {
    let redis = start_redis().await.unwrap();
    let bucket = Arc::new(
        RedisBucket::new(
            &redis.endpoint,
            "sluice:test:fallback",
            BucketRate {
                wcu_per_second: 2000.0,
                burst_wcu: 100,
            },
        )
        .unwrap(),
    );
    let config = FleetConfig {
        lease_wcu: 50,
        timeout: Duration::from_millis(250),
        retry_after: Duration::from_millis(500),
    };
    // Local share: 20 WCU/s, a hundredth of the fleet rate.
    let limiter = WcuLimiter::try_new(NonZeroU32::new(20).unwrap(), 0.05)
        .unwrap()
        .with_fleet(bucket.clone(), config);
    let started = Instant::now();
    for _ in 0..30 {
        limiter.acquire(10).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "300 WCU paid by the 2000 WCU/s fleet bucket"
    );

    drop(redis); // the server is killed
    let started = Instant::now();
    for _ in 0..4 {
        limiter.acquire(5).await;
    }
    let took = started.elapsed();
    // 20 WCU at the 20 WCU/s local share: about a second; it neither stalls nor runs faster.
    assert!(
        took >= Duration::from_millis(900),
        "faster than the local share: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "stalled without Redis: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquisitions_larger_than_the_burst_take_the_time_the_rate_implies() {
    // A 200 WCU/s fleet bucket with a 20 WCU burst, and acquisitions of 100 WCU (a batch of
    // large items). Redis can grant at most 20 at once: the limiter must lease in slices and
    // credit only what Redis charged, so 400 WCU take about (400 - 20) / 200 = 1.9 s. Crediting
    // what it asked for would let them through in a fraction of that: 5 times the rate.
    let redis = start_redis().await.unwrap();
    let bucket = Arc::new(RedisBucket::new(&redis.endpoint, "sluice:test:big", RATE).unwrap());
    let limiter = WcuLimiter::try_new(NonZeroU32::new(1).unwrap(), 1.0)
        .unwrap()
        .with_fleet(
            bucket,
            FleetConfig {
                lease_wcu: 50,
                timeout: Duration::from_millis(500),
                retry_after: Duration::from_secs(30),
            },
        );
    let started = Instant::now();
    for _ in 0..4 {
        limiter.acquire(100).await;
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1800),
        "over-granted: 400 WCU in {took:?}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
}
