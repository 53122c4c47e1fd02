//! `[kafka]`: Kafka as the buffer instead of SQS.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use sluice_kafka::{KafkaConfig, OffsetReset};

use super::Mode;
use super::problems::{Check, Problems};

/// Kafka as the buffer instead of SQS (`kafka.enabled = true`): `sluice run` consumes these
/// topics as a consumer group; `[sqs]` is then not used. Not [`KafkaConfig`] itself: `enabled`
/// and `properties_file` are not the consumer's, and the properties are a table here (one
/// value per key) and a list there.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Consume from Kafka instead of SQS.
    pub enabled: bool,
    /// bootstrap.servers: `host:port[,host:port]`.
    pub brokers: String,
    /// The consumer group: its committed offsets are where a restart resumes.
    pub group_id: String,
    /// Topics to consume.
    pub topics: Vec<String>,
    /// Where poison records go, with the reason in headers (required).
    pub dlq_topic: String,
    /// How often offsets of written records are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// On revoke: how long in-progress records of the revoked partitions may take to finish
    /// before they are left to the new owner.
    #[serde(with = "humantime_serde")]
    pub revoke_grace: Duration,
    /// Records fetched and not yet taken by the workers, at most; then the partitions pause.
    pub buffer_records: NonZeroUsize,
    /// Where a group without committed offsets starts: `earliest` or `latest`.
    #[serde(deserialize_with = "super::de::variant")]
    pub auto_offset_reset: OffsetReset,
    /// A member silent this long is dropped from the group (session.timeout.ms).
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long a rebalance waits for members to rejoin (max.poll.interval.ms); sluice polls
    /// at least every second, so this only matters for members that died.
    #[serde(with = "humantime_serde")]
    pub max_poll_interval: Duration,
    /// Longest the final commit and leaving the group may take at shutdown.
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// Static membership (group.instance.id): a process restarting with the same id gets its
    /// partitions back at once instead of after the old session expires. One per live process.
    pub group_instance_id: Option<String>,
    /// More librdkafka properties, e.g. `"security.protocol" = "SSL"`, `"ssl.ca.location"`.
    pub properties: BTreeMap<String, String>,
    /// A file of more properties, `key=value` per line (`#` comments): the secret ones
    /// (`sasl.password`), from a mounted Secret instead of the config. A key may not be in both.
    pub properties_file: Option<PathBuf>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        let d = KafkaConfig::new("", "sluice", &[], "");
        KafkaSettings {
            enabled: false,
            brokers: String::new(),
            group_id: d.group_id,
            topics: Vec::new(),
            dlq_topic: String::new(),
            commit_interval: d.commit_interval,
            revoke_grace: d.revoke_grace,
            buffer_records: NonZeroUsize::new(d.buffer_records).unwrap_or(NonZeroUsize::MIN),
            auto_offset_reset: d.auto_offset_reset,
            session_timeout: d.session_timeout,
            max_poll_interval: d.max_poll_interval,
            close_timeout: d.close_timeout,
            group_instance_id: None,
            properties: Default::default(),
            properties_file: None,
        }
    }
}

/// Properties sluice sets itself: offsets are committed only once their records are written.
const SET_BY_SLUICE: [&str; 4] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

impl KafkaSettings {
    pub fn kafka_config(&self) -> KafkaConfig {
        KafkaConfig {
            brokers: self.brokers.clone(),
            group_id: self.group_id.clone(),
            topics: self.topics.clone(),
            dlq_topic: self.dlq_topic.clone(),
            commit_interval: self.commit_interval,
            revoke_grace: self.revoke_grace,
            buffer_records: self.buffer_records.get(),
            auto_offset_reset: self.auto_offset_reset,
            session_timeout: self.session_timeout,
            max_poll_interval: self.max_poll_interval,
            close_timeout: self.close_timeout,
            group_instance_id: self.group_instance_id.clone(),
            properties: self
                .properties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// Adds the properties of `properties_file`, when set; a key may not be in both places.
    pub(super) fn merge_properties_file(&mut self) -> Result<()> {
        let Some(path) = &self.properties_file else {
            return Ok(());
        };
        for (key, value) in read_properties_file(path)? {
            if self.properties.contains_key(&key) {
                bail!(
                    "kafka.properties_file {}: `{key}` is also in kafka.properties; keep it in one place",
                    path.display()
                );
            }
            self.properties.insert(key, value);
        }
        Ok(())
    }

    fn check_topics(&self, p: &mut Problems) {
        p.check(
            !self.topics.is_empty() && self.topics.iter().all(|t| !t.trim().is_empty()),
            "kafka.topics",
            "kafka.topics needs at least one topic when kafka.enabled",
        );
        p.check(
            !self.dlq_topic.trim().is_empty(),
            "kafka.dlq_topic",
            "kafka.dlq_topic is required when kafka.enabled: poison records go there",
        );
        p.check(
            !self.topics.contains(&self.dlq_topic),
            "kafka.dlq_topic",
            format!(
                "kafka.dlq_topic `{}` is also in kafka.topics: poison would come back forever",
                self.dlq_topic
            ),
        );
    }

    fn check_properties(&self, p: &mut Problems) {
        p.check(
            !self.properties.contains_key("group.instance.id"),
            "kafka.properties",
            "kafka.properties.\"group.instance.id\": set kafka.group_instance_id instead",
        );
        for key in self.properties.keys() {
            p.check(
                !SET_BY_SLUICE.contains(&key.as_str()),
                "kafka.properties",
                format!(
                    "kafka.properties.\"{key}\" is set by sluice (offsets are committed only once written); remove it"
                ),
            );
        }
    }
}

impl Check for KafkaSettings {
    fn check(&self, _mode: Mode, p: &mut Problems) {
        if !self.enabled {
            return;
        }
        p.check(
            !self.brokers.trim().is_empty(),
            "kafka.brokers",
            "kafka.brokers is required when kafka.enabled (host:port[,host:port])",
        );
        self.check_topics(p);
        p.check(
            !self.group_id.trim().is_empty(),
            "kafka.group_id",
            "kafka.group_id must not be empty",
        );
        p.check(
            !self.commit_interval.is_zero(),
            "kafka.commit_interval",
            "kafka.commit_interval must be above zero",
        );
        p.check(
            self.max_poll_interval >= Duration::from_secs(5)
                && self.max_poll_interval >= self.session_timeout,
            "kafka.max_poll_interval",
            "kafka.max_poll_interval must be at least 5s and at least kafka.session_timeout",
        );
        p.check(
            self.group_instance_id
                .as_ref()
                .is_none_or(|id| !id.trim().is_empty() && id.len() <= 249),
            "kafka.group_instance_id",
            "kafka.group_instance_id must be 1-249 characters when set (or left unset)",
        );
        self.check_properties(p);
    }
}

/// `key=value` lines; blank lines and `#` comments skipped. Values are taken as written
/// (a password may hold `=` or `#`): only a line starting with `#` is a comment.
pub fn read_properties_file(path: &Path) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read kafka.properties_file {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let Some((key, value)) = trimmed.split_once('=') else {
            bail!(
                "kafka.properties_file {} line {}: want key=value",
                path.display(),
                i + 1
            );
        };
        let key = key.trim();
        if key.is_empty() {
            bail!(
                "kafka.properties_file {} line {}: empty key",
                path.display(),
                i + 1
            );
        }
        out.push((key.to_owned(), value.trim().to_owned()));
    }
    Ok(out)
}
