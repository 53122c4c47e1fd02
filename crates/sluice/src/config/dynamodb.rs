//! `[dynamodb]`: the table `sluice run` writes, and how.

use std::num::NonZeroUsize;
use std::time::Duration;

use serde::Deserialize;
use sluice_core::{Backoff, WriterConfig};

use super::Mode;
use super::problems::{Check, Problems, valid_table_name};

/// The table `sluice run` writes, how its BatchWriteItem calls are sized, bounded and retried,
/// and the start-up checks of its shape.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoDbSettings {
    /// The table to write. Required.
    pub table: String,
    /// Items per BatchWriteItem, 1..=25.
    pub max_batch_items: usize,
    /// BatchWriteItem calls in flight at once.
    pub max_concurrent_requests: NonZeroUsize,
    /// Longest one BatchWriteItem may take before it is retried.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay for unprocessed items and failed calls (doubles per attempt, jittered).
    #[serde(with = "humantime_serde")]
    pub retry_base_delay: Duration,
    /// Longest retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max_delay: Duration,
    /// Check at start that the table exists and is keyed by `schema.key_attribute`.
    pub check_table: bool,
    /// How long the start-up checks (the table's key schema, its capacity and indexes) retry a
    /// transient error (a throttle, a 5xx, a time-out) with backoff before sluice gives up; a
    /// permanent one (missing table, wrong key schema, access denied) fails at once. 0: no
    /// retries.
    #[serde(with = "humantime_serde")]
    pub startup_retry_for: Duration,
}

impl Default for DynamoDbSettings {
    fn default() -> Self {
        DynamoDbSettings {
            table: String::new(),
            max_batch_items: 25,
            max_concurrent_requests: NonZeroUsize::new(8).expect("8 > 0"),
            request_timeout: Duration::from_secs(10),
            retry_base_delay: Duration::from_millis(25),
            retry_max_delay: Duration::from_secs(2),
            check_table: true,
            startup_retry_for: Duration::from_secs(120),
        }
    }
}

impl DynamoDbSettings {
    /// The writer's config: this section's sizes, bounds and retries, the rest its defaults.
    pub fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            max_batch_items: self.max_batch_items,
            max_concurrent_requests: self.max_concurrent_requests.get(),
            backoff: Backoff {
                base: self.retry_base_delay,
                cap: self.retry_max_delay,
            },
            request_timeout: self.request_timeout,
            ..WriterConfig::default()
        }
    }
}

impl Check for DynamoDbSettings {
    fn check(&self, mode: Mode, p: &mut Problems) {
        p.check(
            mode == Mode::Ingest || !self.table.is_empty(),
            "dynamodb.table",
            "dynamodb.table is required (set it in the file or SLUICE__DYNAMODB__TABLE)",
        );
        p.check(
            self.table.is_empty() || valid_table_name(&self.table),
            "dynamodb.table",
            format!(
                "dynamodb.table `{}` is not a valid table name (3-255 of a-z A-Z 0-9 _ . -)",
                self.table
            ),
        );
        p.check(
            (1..=25).contains(&self.max_batch_items),
            "dynamodb.max_batch_items",
            format!(
                "dynamodb.max_batch_items must be 1..=25, got {}",
                self.max_batch_items
            ),
        );
        p.check(
            !self.request_timeout.is_zero(),
            "dynamodb.request_timeout",
            "dynamodb.request_timeout must be above zero",
        );
        p.check(
            self.retry_base_delay <= self.retry_max_delay && !self.retry_base_delay.is_zero(),
            "dynamodb.retry_base_delay",
            "dynamodb.retry_base_delay must be above zero and at most dynamodb.retry_max_delay",
        );
        p.check(
            self.startup_retry_for <= Duration::from_secs(3600),
            "dynamodb.startup_retry_for",
            "dynamodb.startup_retry_for must be at most 1h (systemd's TimeoutStartSec and Kubernetes' startup probe must cover it)",
        );
    }
}
