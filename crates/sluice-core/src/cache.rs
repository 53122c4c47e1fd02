//! The look-aside write cache: no write paid twice.
//!
//! A producer that retries after a timeout, or a message redelivered after its visibility
//! timeout ran out, brings logs the table already holds. Writing them again changes nothing but
//! costs the same WCU. The cache remembers, for a window, each key written and a hash of what was
//! written ([`Item::content_hash`]); a log whose key **and** content match an entry is answered as
//! written without a call.
//!
//! Correctness comes first:
//! - only a write DynamoDB confirmed is remembered (never one in flight, unprocessed or failed);
//! - a different content for a key never matches (a 128-bit hash of every attribute), so a
//!   changed log is always written;
//! - losing the cache (a restart, an eviction, Redis down) only costs capacity: a miss writes.
//!
//! The local cache is bounded by `capacity` keys, the oldest evicted first. Keys are held as
//! 128-bit hashes: about 200 bytes an entry whatever their length (the map, the eviction order
//! and their slack). Entries expire after `window`. A fleet can share one in Redis
//! ([`SharedSeen`], `sluice-redis`): a log written by one instance is skipped by another. What it cannot see: a row deleted outside sluice within
//! the window is not written again by a redelivery of the same log inside the window; and the
//! cache answers "was this exact log written within the window", not "does the table hold it
//! now": if the key was since overwritten with another content (by another instance, say), a
//! redelivery of the earlier log is acked and the row keeps the later content.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::Recover;

/// A cache a fleet shares (Redis): which (key, hash) pairs some instance wrote within the window.
/// Errors are the implementation's to report; the cache treats them as misses.
pub trait SharedSeen: Send + Sync + 'static {
    /// For each (key, hash): whether that key was written with that hash within the window.
    fn seen<'a>(
        &'a self,
        entries: &'a [(&'a str, u128)],
    ) -> Pin<Box<dyn Future<Output = Vec<bool>> + Send + 'a>>;
    /// Records writes that landed, each for `window`; best effort.
    fn record(&self, written: Vec<(String, u128)>, window: Duration);
}

/// How the cache is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Keys remembered at most (the oldest go first).
    pub capacity: usize,
    /// How long a write is remembered.
    pub window: Duration,
}

/// An item key as the local cache holds it: its 128-bit hash, so an entry costs the same
/// whatever the key's length (up to 2 KB).
fn key_id(key: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key.as_bytes())
}

struct Local {
    /// Key (hashed) → (content hash, when written, write number).
    entries: HashMap<u128, (u128, Instant, u64)>,
    /// Keys in the order written, with when and their write number: the oldest is evicted
    /// first. A key written again appears twice; the older record (whose number is no longer
    /// the entry's) is skipped when it comes up.
    order: VecDeque<(u128, Instant, u64)>,
    next: u64,
}

/// The write cache: local, optionally in front of a shared one.
pub struct WriteCache {
    config: CacheConfig,
    local: Mutex<Local>,
    shared: Option<Box<dyn SharedSeen>>,
}

impl std::fmt::Debug for WriteCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteCache")
            .field("config", &self.config)
            .field("keys", &self.len())
            .field("shared", &self.shared.is_some())
            .finish()
    }
}

impl WriteCache {
    /// A local cache of `config.capacity` keys (at least 1) for `config.window`.
    pub fn new(config: CacheConfig) -> Self {
        WriteCache {
            config: CacheConfig {
                capacity: config.capacity.max(1),
                ..config
            },
            local: Mutex::new(Local {
                entries: HashMap::new(),
                order: VecDeque::new(),
                next: 0,
            }),
            shared: None,
        }
    }

    /// The same, with a fleet-wide cache behind the local one.
    pub fn with_shared(mut self, shared: Box<dyn SharedSeen>) -> Self {
        self.shared = Some(shared);
        self
    }

    /// The bounds.
    pub fn config(&self) -> CacheConfig {
        self.config
    }

    /// Keys held locally now.
    pub fn len(&self) -> usize {
        self.local.locked().entries.len()
    }

    /// Whether nothing is held locally.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether this instance wrote `key` with this content within the window (the local cache
    /// alone: no call).
    pub fn seen_locally(&self, key: &str, hash: u128) -> bool {
        self.hit(&self.local.locked(), key, hash, Instant::now())
    }

    /// Whether `local` holds `key` written with `hash` less than a window before `now`.
    fn hit(&self, local: &Local, key: &str, hash: u128, now: Instant) -> bool {
        local.entries.get(&key_id(key)).is_some_and(|(h, at, _)| {
            *h == hash && now.saturating_duration_since(*at) < self.config.window
        })
    }

    /// For each (key, hash), whether the same content was written within the window: locally
    /// known, else (for the rest) known to the shared cache.
    pub async fn seen(&self, entries: &[(&str, u128)]) -> Vec<bool> {
        let now = Instant::now();
        let mut hits: Vec<bool> = {
            let local = self.local.locked();
            entries
                .iter()
                .map(|(k, h)| self.hit(&local, k, *h, now))
                .collect()
        };
        if let Some(shared) = &self.shared {
            let missed: Vec<(usize, (&str, u128))> = entries
                .iter()
                .enumerate()
                .filter(|(i, _)| !hits[*i])
                .map(|(i, e)| (i, *e))
                .collect();
            if !missed.is_empty() {
                let asked: Vec<(&str, u128)> = missed.iter().map(|(_, e)| *e).collect();
                let answers = shared.seen(&asked).await;
                for ((i, _), hit) in missed.iter().zip(answers) {
                    hits[*i] = hit;
                }
            }
        }
        hits
    }

    /// Remembers writes DynamoDB confirmed.
    pub fn record(&self, written: Vec<(String, u128)>) {
        if written.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut local = self.local.locked();
            for (key, hash) in &written {
                let n = local.next;
                local.next += 1;
                let id = key_id(key);
                local.entries.insert(id, (*hash, now, n));
                local.order.push_back((id, now, n));
            }
            self.evict(&mut local, now);
        }
        if let Some(shared) = &self.shared {
            shared.record(written, self.config.window);
        }
    }

    /// Drops expired entries and the oldest past capacity; compacts the order when rewrites of
    /// the same keys have left it much longer than the map.
    fn evict(&self, local: &mut Local, now: Instant) {
        let Local { entries, order, .. } = local;
        let latest = |entries: &HashMap<u128, (u128, Instant, u64)>, key: &u128, n: u64| {
            entries.get(key).is_some_and(|(_, _, m)| *m == n)
        };
        while let Some((key, at, n)) = order.front() {
            let expired = now.saturating_duration_since(*at) >= self.config.window;
            let is_latest = latest(entries, key, *n);
            if is_latest && !expired && entries.len() <= self.config.capacity {
                break;
            }
            if is_latest {
                entries.remove(key);
            }
            order.pop_front();
        }
        if order.len() > 2 * self.config.capacity {
            order.retain(|(k, _, n)| latest(entries, k, *n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize, window_s: u64) -> WriteCache {
        WriteCache::new(CacheConfig {
            capacity,
            window: Duration::from_secs(window_s),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_matches_only_with_the_same_content_and_within_the_window() {
        let c = cache(10, 60);
        c.record(vec![("a".into(), 1)]);
        assert_eq!(
            c.seen(&[("a", 1), ("a", 2), ("b", 1)]).await,
            [true, false, false]
        );
        c.record(vec![("a".into(), 2)]);
        assert_eq!(c.seen(&[("a", 1), ("a", 2)]).await, [false, true]);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(c.seen(&[("a", 2)]).await, [false]);
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_evicts_the_oldest_and_memory_stays_bounded() {
        let c = cache(100, 3600);
        for round in 0..50u128 {
            let batch = (0..100).map(|i| (format!("k{}", i % 150), round)).collect();
            c.record(batch);
            let local = c.local.locked();
            assert!(local.entries.len() <= 100);
            assert!(local.order.len() <= 2 * 100 + 100, "{}", local.order.len());
        }
        // The newest write of a key survives its older records' eviction.
        c.record(vec![("fresh".into(), 7)]);
        assert_eq!(c.seen(&[("fresh", 7)]).await, [true]);
    }
}
