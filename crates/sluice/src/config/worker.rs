//! `[worker]`: what `sluice run` holds at once, and for how long.

use std::time::Duration;

use serde::Deserialize;
use sluice_core::EngineConfig;

use super::Mode;
use super::problems::{Check, Problems};

/// The engine's bounds: messages and bytes held at once, how long one may go without progress,
/// and the grace after SIGTERM. With `[sqs]` and `[rate]` it makes the [`EngineConfig`]
/// (`Settings::engine_config`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Messages held at once (received, not yet acked or nacked).
    pub max_in_flight: usize,
    /// Bytes of message bodies held at once: bounds memory when messages carry many logs.
    pub max_in_flight_bytes: usize,
    /// How long a message may go without progress before it is nacked: no item of it landing,
    /// no write capacity granted to it (or, while it queues, to the messages ahead of it).
    /// Waiting for capacity does not count, so a packed message on a small table is never
    /// timed out; calls that fail or hang do.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// Time in-flight messages get to finish after SIGTERM.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// No longer used (accepted so older configs still load; a warning says so): the writer
    /// takes each message's items whole, and `max_in_flight_bytes` bounds the memory.
    pub write_queue_items: Option<usize>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            max_in_flight: 1000,
            max_in_flight_bytes: EngineConfig::default().max_in_flight_bytes,
            message_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(25),
            write_queue_items: None,
        }
    }
}

impl Check for WorkerSettings {
    /// The pool's numbers are checked with `[sqs]`'s, in `Settings::check_across`.
    fn check(&self, _mode: Mode, p: &mut Problems) {
        p.check(
            self.write_queue_items.is_none_or(|n| n >= 1),
            "worker.write_queue_items",
            "worker.write_queue_items must be at least 1 (it is no longer used: remove it)",
        );
    }
}
