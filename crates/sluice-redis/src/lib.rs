//! One token bucket for a whole fleet, in Redis.
//!
//! Several sluice instances writing one table must share its capacity. In shared mode each
//! instance leases tokens (a few dozen WCU at a time, so there is no round trip per item) from a
//! single bucket kept in Redis. The bucket is GCRA: one key holds the "theoretical arrival time"
//! in microseconds, and a Lua script takes `n` cells atomically on Redis's own clock (`TIME`), so
//! instances whose clocks disagree still agree on the bucket. A refused lease says how long to
//! wait. When Redis cannot be reached the caller ([`sluice_core::WcuLimiter`]) falls back to its
//! local share; this type only reports the failure and reconnects on the next call.
#![warn(missing_docs)]

mod seen;
pub use seen::RedisSeen;

use sluice_core::sync::Recover;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sluice_core::{Lease, LeaseSource};

const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + emission * n
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
";

/// The fleet bucket's rate and burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketRate {
    /// The whole fleet's sustained rate in WCU per second, shared by every instance using the key;
    /// at 0 or below every lease fails, and the caller falls back to its local share.
    pub wcu_per_second: f64,
    /// Largest lease the bucket grants at once (and the most it lets pile up while idle).
    pub burst_wcu: u32,
}

/// The fleet's [`LeaseSource`]: a GCRA bucket in one Redis key, charged atomically by a Lua script
/// on Redis's clock. A request (capped at the burst) is granted whole or refused with the wait
/// until it would be; a Redis error is returned as an error, never as a grant, and the connection
/// is remade on the next call.
pub struct RedisBucket {
    client: redis::Client,
    key: String,
    rate: Mutex<BucketRate>,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    script: redis::Script,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.locked()
}

impl RedisBucket {
    /// Checks the URL; connects lazily, on the first lease.
    pub fn new(url: &str, key: impl Into<String>, rate: BucketRate) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid Redis URL `{url}`: {e}"))?;
        Ok(RedisBucket {
            client,
            key: key.into(),
            rate: Mutex::new(rate),
            conn: tokio::sync::Mutex::new(None),
            script: redis::Script::new(GCRA),
        })
    }

    /// Follows a budget change: every instance sets the same rate from the same DescribeTable.
    pub fn set_rate(&self, rate: BucketRate) {
        *lock(&self.rate) = rate;
    }

    /// The rate and burst leases are charged against now, as last set by [`RedisBucket::set_rate`].
    pub fn rate(&self) -> BucketRate {
        *lock(&self.rate)
    }

    /// Takes up to `cells` (at most the burst: GCRA cannot grant more at once) and says how
    /// many were charged.
    async fn take_cells(&self, cells: u32) -> Result<Lease, String> {
        let rate = self.rate();
        if rate.wcu_per_second <= 0.0 {
            return Err("the fleet bucket has no rate".into());
        }
        let cells = cells.min(rate.burst_wcu.max(1));
        let emission_us = 1_000_000.0 / rate.wcu_per_second;
        let tolerance_us = emission_us * f64::from(rate.burst_wcu.max(1));
        let mut guard = self.conn.lock().await;
        if guard.is_none() {
            let conn = self
                .client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("cannot connect to Redis: {e}"))?;
            *guard = Some(conn);
        }
        let mut conn = guard.clone().expect("connected above");
        drop(guard);
        let answer: Result<(i64, i64), _> = self
            .script
            .key(&self.key)
            .arg(emission_us)
            .arg(tolerance_us)
            .arg(cells)
            .invoke_async(&mut conn)
            .await;
        match answer {
            Ok((1, _)) => Ok(Lease::Granted(cells)),
            Ok((_, wait_us)) => Ok(Lease::Wait(Duration::from_micros(wait_us.max(1) as u64))),
            Err(e) => {
                *self.conn.lock().await = None; // reconnect next time
                Err(format!("Redis lease failed: {e}"))
            }
        }
    }
}

impl LeaseSource for RedisBucket {
    fn take(&self, cells: u32) -> Pin<Box<dyn Future<Output = Result<Lease, String>> + Send + '_>> {
        Box::pin(self.take_cells(cells))
    }

    fn max_cells(&self) -> u32 {
        self.rate().burst_wcu.max(1)
    }
}
