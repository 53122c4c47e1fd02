//! The shared write cache against a real redis-server: what one instance wrote, another skips;
//! a changed log, or Redis gone, is a miss (the log is written).

use std::time::{Duration, Instant};

use sluice_core::{CacheConfig, WriteCache};
use sluice_redis::RedisSeen;
use sluice_testkit::start_redis;

fn instance(url: &str) -> WriteCache {
    WriteCache::new(CacheConfig {
        capacity: 1000,
        window: Duration::from_secs(60),
    })
    .with_shared(Box::new(
        RedisSeen::new(
            url,
            "sluice:seen:test-table:",
            Duration::from_millis(500),
            Duration::from_secs(5),
        )
        .unwrap(),
    ))
}

/// Records are sent in the background: wait until `cache` sees what was recorded.
async fn until_seen(cache: &WriteCache, key: &str, hash: u128) {
    let started = Instant::now();
    while !cache.seen(&[(key, hash)]).await[0] {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{key} never recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_one_instance_wrote_is_skipped_by_another_unless_it_changed() {
    let redis = start_redis().await.unwrap();
    let (a, b) = (instance(&redis.endpoint), instance(&redis.endpoint));
    a.record(vec![("k1".into(), 11), ("k2".into(), 22)]);
    until_seen(&b, "k1", 11).await;
    assert_eq!(
        b.seen(&[("k1", 11), ("k2", 22), ("k2", 23), ("k3", 11)])
            .await,
        [true, true, false, false]
    );
    // B writes a new content for k1: A's old content no longer matches anywhere.
    b.record(vec![("k1".into(), 12)]);
    let fresh = instance(&redis.endpoint);
    until_seen(&fresh, "k1", 12).await;
    assert_eq!(fresh.seen(&[("k1", 11)]).await, [false]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gone_is_a_miss_not_an_error_or_a_hang() {
    let redis = start_redis().await.unwrap();
    let url = redis.endpoint.clone();
    let a = instance(&url);
    drop(redis); // the server is stopped
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(a.seen(&[("k1", 1)]).await, [false]);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Locally recorded writes still count.
    a.record(vec![("k1".into(), 1)]);
    assert_eq!(a.seen(&[("k1", 1)]).await, [true]);
}
