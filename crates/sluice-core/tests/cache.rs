//! The write cache through the writer: a log written with the same content within the window is
//! not written again; a changed log always is; a write that did not land is never remembered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proptest::prelude::*;
use sluice_core::testing::MemoryTableForTests;
use sluice_core::{
    CacheConfig, Item, Schema, WcuLimiter, WriteCache, WriteErrorKind, Writer, WriterConfig,
    decode_message,
};

fn item(key: &str, content: u32) -> Item {
    let body = format!(
        r#"{{"request_id":"{key}","ts":"2026-12-05T10:00:00Z","method":"GET","path":"/v1/{content}","status":200,"latency_ms":1}}"#
    );
    decode_message(body.as_bytes(), &Schema::default())
        .unwrap()
        .remove(0)
}

fn item_at(key: &str, content: u32, ts: &str) -> Item {
    let body = format!(
        r#"{{"request_id":"{key}","ts":"{ts}","method":"GET","path":"/v1/{content}","status":200,"latency_ms":1}}"#
    );
    decode_message(body.as_bytes(), &Schema::default())
        .unwrap()
        .remove(0)
}

fn cached_writer(table: &Arc<MemoryTableForTests>, window: Duration) -> (Writer, Arc<WriteCache>) {
    let cache = Arc::new(WriteCache::new(CacheConfig {
        capacity: 10_000,
        window,
    }));
    let (writer, _task) = Writer::spawn(
        table.clone(),
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig {
            cache: Some(cache.clone()),
            ..WriterConfig::default()
        },
    );
    (writer, cache)
}

fn path_of(table: &MemoryTableForTests, key: &str) -> Option<String> {
    match table.rows().get(key)?.attrs().get("path")? {
        sluice_core::AttrValue::S(s) => Some(s.clone()),
        _ => None,
    }
}

/// 1,000 logs, then the same 1,000 redelivered: the second pass makes no call and costs nothing,
/// and every message is answered as written.
#[tokio::test(start_paused = true)]
async fn a_redelivered_message_is_acked_without_a_write() {
    let table = Arc::new(MemoryTableForTests::default());
    let (writer, _cache) = cached_writer(&table, Duration::from_secs(600));
    let items: Vec<Item> = (0..1000).map(|i| item(&format!("k{i}"), 1)).collect();
    writer
        .write(items.clone(), 0, Duration::from_secs(30))
        .await
        .unwrap();
    let stats = writer.stats();
    let (calls, wcu) = (
        stats.requests.load(Ordering::Relaxed),
        stats.wcu_consumed.load(Ordering::Relaxed),
    );
    writer
        .write(items, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(stats.requests.load(Ordering::Relaxed), calls);
    assert_eq!(stats.wcu_consumed.load(Ordering::Relaxed), wcu);
    assert_eq!(stats.cache_skipped_logs.load(Ordering::Relaxed), 1000);
    let bill = stats.bill();
    assert_eq!(bill.logs, 2000);
    assert!((bill.saved_by_cache - 0.5).abs() < 1e-9, "{bill:?}");
}

/// A re-send handed over while its original was still being written (both in flight at once)
/// is answered from the cache when its turn comes, once the original landed: one write, not two.
#[tokio::test(start_paused = true)]
async fn a_resend_queued_behind_its_original_is_skipped_once_the_original_lands() {
    let table = Arc::new(MemoryTableForTests::default());
    table.set_latency(Duration::from_millis(100));
    let cache = Arc::new(WriteCache::new(CacheConfig {
        capacity: 1000,
        window: Duration::from_secs(600),
    }));
    let (writer, _task) = Writer::spawn(
        table.clone(),
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig {
            cache: Some(cache),
            max_concurrent_requests: 1,
            max_batch_items: 25,
            ..WriterConfig::default()
        },
    );
    // 25 fill the first call; the re-sends of the first five wait behind them.
    let first: Vec<Item> = (0..25).map(|i| item(&format!("k{i}"), 1)).collect();
    let again: Vec<Item> = first[..5].to_vec();
    let a = tokio::spawn({
        let w = writer.clone();
        async move { w.write(first, 0, Duration::from_secs(30)).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await; // the first call is out
    writer
        .write(again, 1, Duration::from_secs(30))
        .await
        .unwrap();
    a.await.unwrap().unwrap();
    let stats = writer.stats();
    assert_eq!(stats.requests.load(Ordering::Relaxed), 1);
    assert_eq!(stats.cache_skipped_logs.load(Ordering::Relaxed), 5);
}

/// A message carrying one key twice (a newer and an older log) is redelivered: the newer log is
/// a hit, the older a miss. Written alone the older would replace the newer; the cache lets both
/// through, so they collapse again and the newer wins.
#[tokio::test(start_paused = true)]
async fn a_redelivery_never_lets_an_older_log_replace_a_newer_one() {
    let table = Arc::new(MemoryTableForTests::default());
    let (writer, _cache) = cached_writer(&table, Duration::from_secs(600));
    let message = vec![
        item_at("a", 2, "2026-12-05T10:00:02Z"),
        item_at("a", 1, "2026-12-05T10:00:01Z"),
    ];
    writer
        .write(message.clone(), 0, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(path_of(&table, "a").as_deref(), Some("/v1/2"));
    writer
        .write(message, 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(path_of(&table, "a").as_deref(), Some("/v1/2"));
}

/// A write that failed, or was left unprocessed, is not remembered: its redelivery is written.
#[tokio::test(start_paused = true)]
async fn a_write_that_did_not_land_is_not_remembered() {
    let table = Arc::new(MemoryTableForTests::default());
    let (writer, cache) = cached_writer(&table, Duration::from_secs(600));
    table.fail_with(Some(WriteErrorKind::InvalidItem));
    assert!(
        writer
            .write(vec![item("bad", 1)], 0, Duration::from_secs(5))
            .await
            .is_err()
    );
    assert!(cache.is_empty());
    table.fail_with(None);
    table.leave_unprocessed(1);
    writer
        .write(vec![item("bad", 1)], 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(path_of(&table, "bad").as_deref(), Some("/v1/1"));
    assert_eq!(writer.stats().cache_skipped_logs.load(Ordering::Relaxed), 0);
}

/// Past the window the cache forgets, and the log is written again.
#[tokio::test(start_paused = true)]
async fn past_the_window_a_log_is_written_again() {
    let table = Arc::new(MemoryTableForTests::default());
    let (writer, _cache) = cached_writer(&table, Duration::from_secs(60));
    let w = |order| writer.write(vec![item("k", 1)], order, Duration::from_secs(30));
    w(0).await.unwrap();
    w(1).await.unwrap();
    assert_eq!(writer.stats().requests.load(Ordering::Relaxed), 1);
    tokio::time::advance(Duration::from_secs(61)).await;
    w(2).await.unwrap();
    assert_eq!(writer.stats().requests.load(Ordering::Relaxed), 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of writes of few keys with few contents, one message at a time: after each,
    /// the table holds exactly that content for the key. The cache never skips a changed log.
    #[test]
    fn the_cache_never_skips_a_changed_log(
        writes in prop::collection::vec((0u8..4, 0u32..3), 1..60),
        capacity in 1usize..6,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        rt.block_on(async {
            let table = Arc::new(MemoryTableForTests::default());
            let cache = Arc::new(WriteCache::new(CacheConfig { capacity, window: Duration::from_secs(600) }));
            let (writer, _task) = Writer::spawn(
                table.clone(),
                Arc::new(WcuLimiter::unlimited()),
                WriterConfig { cache: Some(cache), ..WriterConfig::default() },
            );
            let mut skipped_expected = 0;
            let mut last: std::collections::HashMap<u8, u32> = Default::default();
            for (order, (key, content)) in writes.into_iter().enumerate() {
                let k = format!("k{key}");
                writer.write(vec![item(&k, content)], order as u64, Duration::from_secs(30)).await.unwrap();
                prop_assert_eq!(path_of(&table, &k), Some(format!("/v1/{content}")));
                if last.insert(key, content) == Some(content) {
                    skipped_expected += 1;
                }
            }
            // Only a repeat of the content already there may be skipped.
            prop_assert!(writer.stats().cache_skipped_logs.load(Ordering::Relaxed) <= skipped_expected);
            Ok(())
        })?;
    }
}
