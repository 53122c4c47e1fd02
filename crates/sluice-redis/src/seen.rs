//! The write cache a fleet shares: which keys some instance wrote, with which content, within
//! the window. One Redis string per key (`PREFIX` + the item key) holding the content hash in
//! hex, with the window as its TTL; MGET asks for a message's keys in one round trip.
//!
//! Every failure (Redis down, slow, refusing) counts as a miss, so the log is written: losing
//! the shared cache only costs capacity. Records are sent in the background, a bounded number at
//! once; one that finds the limit reached is dropped (and counted), never queued without bound.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use sluice_core::SharedSeen;
use sluice_core::catalog;
use sluice_core::sync::Recover;
use tokio::sync::Semaphore;

/// Background record calls in flight at most.
const MAX_RECORDS_IN_FLIGHT: usize = 16;

/// The shared write cache in Redis.
pub struct RedisSeen {
    inner: Arc<Inner>,
    records: Arc<Semaphore>,
}

struct Inner {
    client: redis::Client,
    prefix: String,
    timeout: Duration,
    retry_after: Duration,
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// After a failure, Redis is not asked again until then: every call meanwhile is a miss at
    /// once, so a Redis that does not answer never holds messages up.
    down_until: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Inner {
    fn is_down(&self) -> bool {
        let until = *self.down_until.locked();
        until.is_some_and(|u| tokio::time::Instant::now() < u)
    }

    async fn connection(&self) -> Result<MultiplexedConnection, String> {
        if self.is_down() {
            return Err("Redis failed moments ago".into());
        }
        let mut guard = self.conn.lock().await;
        // Callers queued behind a connection attempt that failed give up at once.
        if self.is_down() {
            return Err("Redis failed moments ago".into());
        }
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(self.timeout, self.client.get_multiplexed_async_connection())
            .await
            .map_err(|_| "timed out connecting to Redis".to_string())?
            .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        *guard = Some(c.clone());
        Ok(c)
    }

    async fn failed(&self, what: &str, error: String) {
        metrics::counter!(catalog::CACHE_ERRORS_TOTAL).increment(1);
        let already_down = self.is_down();
        let now = tokio::time::Instant::now();
        *self.down_until.locked() = Some(
            now.checked_add(self.retry_after)
                .unwrap_or(now + Duration::from_secs(3600)),
        );
        if !already_down {
            tracing::warn!(error = %error, retry_after = ?self.retry_after, "shared write cache: {what} failed; every check is a miss (the log is written) until Redis is tried again");
        }
        *self.conn.lock().await = None; // reconnect next time
    }

    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Pipeline) -> Result<T, String> {
        let mut conn = self.connection().await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

impl RedisSeen {
    /// A shared cache at `url` whose keys start with `prefix` (name the table in it, so two
    /// tables never share entries). Each call waits `timeout` at most; after a failure Redis is
    /// left alone for `retry_after` (every check a miss meanwhile). Connects lazily.
    pub fn new(
        url: &str,
        prefix: impl Into<String>,
        timeout: Duration,
        retry_after: Duration,
    ) -> Result<Self, String> {
        let client =
            redis::Client::open(url).map_err(|e| format!("invalid Redis URL `{url}`: {e}"))?;
        Ok(RedisSeen {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.into(),
                timeout,
                retry_after,
                conn: tokio::sync::Mutex::new(None),
                down_until: std::sync::Mutex::new(None),
            }),
            records: Arc::new(Semaphore::new(MAX_RECORDS_IN_FLIGHT)),
        })
    }
}

fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

impl SharedSeen for RedisSeen {
    fn seen<'a>(
        &'a self,
        entries: &'a [(&'a str, u128)],
    ) -> Pin<Box<dyn Future<Output = Vec<bool>> + Send + 'a>> {
        Box::pin(async move {
            let inner = &self.inner;
            let mut cmd = redis::pipe();
            let keys: Vec<String> = entries
                .iter()
                .map(|(k, _)| format!("{}{k}", inner.prefix))
                .collect();
            cmd.cmd("MGET").arg(&keys);
            match inner.query::<(Vec<Option<String>>,)>(&cmd).await {
                Ok((values,)) if values.len() == entries.len() => entries
                    .iter()
                    .zip(values)
                    .map(|((_, h), v)| v.is_some_and(|v| v == hex(*h)))
                    .collect(),
                Ok(_) => {
                    inner
                        .failed("MGET", "answer of the wrong length".into())
                        .await;
                    vec![false; entries.len()]
                }
                Err(e) => {
                    if !inner.is_down() {
                        inner.failed("MGET", e).await;
                    }
                    vec![false; entries.len()]
                }
            }
        })
    }

    fn record(&self, written: Vec<(String, u128)>, window: Duration) {
        let Ok(permit) = self.records.clone().try_acquire_owned() else {
            metrics::counter!(catalog::CACHE_ERRORS_TOTAL).increment(1);
            return;
        };
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut cmd = redis::pipe();
            let seconds = window.as_secs().max(1);
            for (key, hash) in &written {
                cmd.cmd("SET")
                    .arg(format!("{}{key}", inner.prefix))
                    .arg(hex(*hash))
                    .arg("EX")
                    .arg(seconds)
                    .ignore();
            }
            if let Err(e) = inner.query::<()>(&cmd).await
                && !inner.is_down()
            {
                inner.failed("SET", e).await;
            }
        });
    }
}
