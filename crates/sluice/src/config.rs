//! Configuration: a TOML file plus `SLUICE__SECTION__KEY` environment overrides, unknown keys
//! rejected, every value checked at start with the offending key named.
//! `config/sluice.example.toml` documents every key with its default; keep the two in step.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sluice_core::{Backoff, EngineConfig, Schema, TtlRule, WriterConfig};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub sqs: SqsSettings,
    pub dynamodb: DynamoDbSettings,
    pub schema: SchemaSettings,
    pub rate: RateSettings,
    pub worker: WorkerSettings,
    pub telemetry: TelemetrySettings,
    pub spot: SpotSettings,
    pub ingest: IngestSettings,
    pub producer: ProducerSettings,
    pub kafka: KafkaSettings,
}

/// Kafka as the buffer instead of SQS (`kafka.enabled = true`): `sluice run` consumes these
/// topics as a consumer group; [sqs] is then not used.
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
    pub buffer_records: usize,
    /// Where a group without committed offsets starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
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
    pub properties: std::collections::BTreeMap<String, String>,
    /// A file of more properties, `key=value` per line (`#` comments): the secret ones
    /// (`sasl.password`), from a mounted Secret instead of the config. A key may not be in both.
    pub properties_file: Option<std::path::PathBuf>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        let d = sluice_kafka::KafkaConfig::new("", "sluice", &[], "");
        KafkaSettings {
            enabled: false,
            brokers: String::new(),
            group_id: d.group_id,
            topics: Vec::new(),
            dlq_topic: String::new(),
            commit_interval: d.commit_interval,
            revoke_grace: d.revoke_grace,
            buffer_records: d.buffer_records,
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

impl KafkaSettings {
    pub fn kafka_config(&self) -> sluice_kafka::KafkaConfig {
        sluice_kafka::KafkaConfig {
            brokers: self.brokers.clone(),
            group_id: self.group_id.clone(),
            topics: self.topics.clone(),
            dlq_topic: self.dlq_topic.clone(),
            commit_interval: self.commit_interval,
            revoke_grace: self.revoke_grace,
            buffer_records: self.buffer_records,
            auto_offset_reset: self.auto_offset_reset.clone(),
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
}

/// What `sluice ingest` runs as: the queue to fill (sqs.queue_url) and the HTTP API in front.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Worker,
    Ingest,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who the key belongs to: the per-key rate limit and the logs name it.
    pub name: String,
    /// SHA-256 of the key, in hex (`printf %s "$KEY" | sha256sum`); the key itself is never
    /// stored.
    pub sha256: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestSettings {
    /// Address of the ingest HTTP API (`sluice ingest --listen` overrides it).
    pub listen: String,
    /// API keys, as `{ name, sha256 }` tables. `sluice ingest` needs at least one, here or in
    /// `api_keys_file`.
    pub api_keys: Vec<ApiKey>,
    /// A file of more keys, one `name sha256hex` per line (`#` starts a comment): e.g. a mounted
    /// Kubernetes Secret.
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Logs per second each key may send (governor's keyed token bucket); above it, 429 with
    /// Retry-After.
    pub rate_per_key: u32,
    /// Logs a key may send at once above its rate (the bucket's size).
    pub burst_per_key: u32,
    /// Largest request body, before and after gzip; larger gets 413.
    pub max_body_bytes: usize,
    /// Logs per request at most; more gets 413.
    pub max_logs_per_request: usize,
    /// Admission control: when the bytes waiting (producer memory + spool) pass this, requests
    /// get 503 with Retry-After at once, before their body is read.
    pub max_backlog_bytes: u64,
    /// The Retry-After sent with 503.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Longest a request waits for its logs to reach the queue or the spool before 503.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// PEM certificate chain: set it (with `tls_key`) to serve HTTPS (rustls).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// Time a client has to send a request's headers once the connection waits for them. It
    /// also closes an idle keep-alive connection (the wait for the next request counts).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Time a client has to send a request's whole body; then 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Connections served at once; beyond it new ones wait in the listen backlog.
    pub max_connections: usize,
    /// At shutdown: how long requests in flight may take to finish before their connections are
    /// closed (the producer's own `shutdown_timeout` follows).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long ingest keeps accepting and serving while reporting not ready,
    /// so load balancers (a Kubernetes Service's endpoints, an ALB target group) stop sending
    /// before the listener closes; then `shutdown_timeout` applies. 0: close at once.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// How often `tls_cert`, `tls_key` and `api_keys_file` are read again: a rotated
    /// certificate (cert-manager) or a changed key list is served without a restart. 0: never.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            listen: "127.0.0.1:8080".into(),
            api_keys: Vec::new(),
            api_keys_file: None,
            rate_per_key: 5000,
            burst_per_key: 10000,
            max_body_bytes: 5 * 1024 * 1024,
            max_logs_per_request: 10000,
            max_backlog_bytes: 256 * 1024 * 1024,
            retry_after: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_timeout: Duration::from_secs(10),
            drain_delay: Duration::from_secs(5),
            reload_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncSetting {
    Always,
    Interval,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicySetting {
    Block,
    Shed,
}

/// The producer `sluice ingest` (and `sluice load`) put logs into SQS with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProducerSettings {
    /// Logs are packed (NDJSON) into messages of at most this many bytes; SQS takes up to 1 MiB.
    pub max_message_bytes: usize,
    /// Bodies per SendMessageBatch at most, in bytes (SQS: 1 MiB).
    pub max_batch_bytes: usize,
    /// Longest a log waits for its message (and a message for its batch) to fill.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Bytes of logs held in memory; beyond it `full_policy` applies (ingest answers 503).
    pub buffer_bytes: usize,
    /// `block` (callers wait) or `shed` (logs dropped and counted) when the buffer is full.
    pub full_policy: FullPolicySetting,
    /// SendMessageBatch calls in flight (FIFO queues use 1).
    pub max_in_flight: usize,
    /// FIFO queues: the log field whose value is the MessageGroupId.
    pub group_field: Option<String>,
    /// FIFO queues: the group of logs without `group_field`.
    pub default_group: String,
    /// DelaySeconds on every message (standard queues), 0..=900.
    pub delay_seconds: Option<u32>,
    /// Attempts per batch before its messages go to the spool.
    pub send_attempts: u32,
    /// First retry delay of a failed send (doubles, jittered, up to `retry_max`).
    #[serde(with = "humantime_serde")]
    pub retry_base: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Directory of the durable spool; unset keeps undeliverable logs in memory only.
    pub spool_dir: Option<std::path::PathBuf>,
    /// Where a log SQS refuses for good is kept (NDJSON with the reason, fsynced). Unset:
    /// `rejected.ndjson` in `spool_dir`; with no spool either, the log goes into the ERROR log.
    pub reject_file: Option<std::path::PathBuf>,
    /// Bytes the spool may hold.
    pub spool_max_bytes: u64,
    /// Size of one spool segment file.
    pub spool_segment_bytes: u64,
    /// `always` (fsync each append), `interval` (every `spool_fsync_interval`) or `never`.
    pub spool_fsync: FsyncSetting,
    #[serde(with = "humantime_serde")]
    pub spool_fsync_interval: Duration,
    /// At shutdown, how long to keep sending before the rest goes to the spool.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Publish to this Kafka topic (brokers and properties from [kafka]) instead of
    /// sqs.queue_url.
    pub kafka_topic: Option<String>,
    /// Kafka: the log field used as the record key (one partition per request id).
    pub kafka_key_field: String,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        let d = sluice_producer::ProducerConfig::default();
        let s = sluice_producer::spool::SpoolConfig::new("");
        ProducerSettings {
            max_message_bytes: d.max_message_bytes,
            max_batch_bytes: d.max_batch_bytes,
            linger: d.linger,
            buffer_bytes: d.buffer_bytes,
            full_policy: FullPolicySetting::Block,
            max_in_flight: d.max_in_flight,
            group_field: None,
            default_group: d.default_group,
            delay_seconds: None,
            send_attempts: d.send_attempts,
            retry_base: d.retry_base,
            retry_max: d.retry_max,
            spool_dir: None,
            reject_file: None,
            spool_max_bytes: s.max_bytes,
            spool_segment_bytes: s.segment_bytes,
            spool_fsync: FsyncSetting::Always,
            spool_fsync_interval: Duration::from_secs(1),
            shutdown_timeout: d.shutdown_timeout,
            kafka_topic: None,
            kafka_key_field: "request_id".into(),
        }
    }
}

impl ProducerSettings {
    pub fn producer_config(&self, queue_url: &str) -> sluice_producer::ProducerConfig {
        use sluice_producer::spool::{FsyncPolicy, SpoolConfig};
        sluice_producer::ProducerConfig {
            max_message_bytes: self.max_message_bytes,
            max_batch_bytes: self.max_batch_bytes,
            linger: self.linger,
            buffer_bytes: self.buffer_bytes,
            full_policy: match self.full_policy {
                FullPolicySetting::Block => sluice_producer::FullPolicy::Block,
                FullPolicySetting::Shed => sluice_producer::FullPolicy::Shed,
            },
            max_in_flight: self.max_in_flight,
            group_field: self.group_field.clone(),
            default_group: self.default_group.clone(),
            delay_seconds: self.delay_seconds,
            send_attempts: self.send_attempts,
            retry_base: self.retry_base,
            retry_max: self.retry_max,
            spool: self.spool_dir.as_ref().map(|dir| SpoolConfig {
                dir: dir.clone(),
                max_bytes: self.spool_max_bytes,
                segment_bytes: self.spool_segment_bytes,
                fsync: match self.spool_fsync {
                    FsyncSetting::Always => FsyncPolicy::Always,
                    FsyncSetting::Interval => FsyncPolicy::Interval(self.spool_fsync_interval),
                    FsyncSetting::Never => FsyncPolicy::Never,
                },
            }),
            shutdown_timeout: self.shutdown_timeout,
            reject_file: self.reject_file.clone(),
            ..sluice_producer::ProducerConfig::for_queue(queue_url)
        }
    }
}

/// Reads `ingest.api_keys_file`: `name sha256hex` per line.
pub fn read_api_keys_file(path: &Path) -> Result<Vec<ApiKey>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read ingest.api_keys_file {}", path.display()))?;
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), Some(sha256), None) => keys.push(ApiKey {
                name: name.into(),
                sha256: sha256.into(),
            }),
            _ => bail!(
                "ingest.api_keys_file {} line {}: expected `name sha256hex`",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(keys)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpotSettings {
    /// Poll IMDSv2 for the spot interruption notice and drain when it comes (EC2 spot only).
    pub enabled: bool,
    /// How often to ask.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for SpotSettings {
    fn default() -> Self {
        SpotSettings {
            enabled: false,
            poll_interval: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqsSettings {
    /// The queue to drain. Required.
    pub queue_url: String,
    /// Long-poll wait per receive, 0..=20 seconds.
    pub wait_time_seconds: u32,
    /// Messages asked for per receive, 1..=10.
    pub max_messages: u32,
    /// Concurrent long pollers.
    pub pollers: usize,
    /// Visibility timeout asked for on receive; unset keeps the queue's own.
    #[serde(with = "humantime_serde")]
    pub visibility_timeout: Option<Duration>,
    /// Nack backoff: a message whose write failed or timed out stays invisible for
    /// base × 2^(receive count − 1), at most `nack_backoff_max`, with jitter.
    #[serde(with = "humantime_serde")]
    pub nack_backoff_base: Duration,
    #[serde(with = "humantime_serde")]
    pub nack_backoff_max: Duration,
    /// Where poison goes at once, with its reason as message attributes. Unset: poison is nacked
    /// with `poison_nack_delay` and the queue's redrive policy moves it after maxReceiveCount.
    pub dead_letter_queue_url: Option<String>,
    /// How long a poison message stays invisible (it returns until the queue's redrive policy
    /// moves it to the DLQ).
    #[serde(with = "humantime_serde")]
    pub poison_nack_delay: Duration,
    /// How long acks wait to fill a DeleteMessageBatch of 10.
    #[serde(with = "humantime_serde")]
    pub ack_linger: Duration,
    /// Deadline of one attempt of every SQS call (ReceiveMessage gets the long-poll wait on
    /// top); an operation, retries included, gets three times this. A call that hangs is cut
    /// and retried, so shutdown and the heartbeat never wait on a silent server.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SqsSettings {
    fn default() -> Self {
        SqsSettings {
            queue_url: String::new(),
            wait_time_seconds: 20,
            max_messages: 10,
            pollers: 4,
            visibility_timeout: None,
            nack_backoff_base: Duration::from_secs(2),
            nack_backoff_max: Duration::from_secs(300),
            dead_letter_queue_url: None,
            poison_nack_delay: Duration::from_secs(60),
            ack_linger: Duration::from_millis(20),
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamoDbSettings {
    /// The table to write. Required.
    pub table: String,
    /// Items per BatchWriteItem, 1..=25.
    pub max_batch_items: usize,
    /// BatchWriteItem calls in flight at once.
    pub max_concurrent_requests: usize,
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
            max_concurrent_requests: 8,
            request_timeout: Duration::from_secs(10),
            retry_base_delay: Duration::from_millis(25),
            retry_max_delay: Duration::from_secs(2),
            check_table: true,
            startup_retry_for: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaSettings {
    /// The log field holding the item key; a log without it gets a content hash as key.
    pub key_field: String,
    /// The table's partition key attribute (type S).
    pub key_attribute: String,
    /// Fields every log must carry (non-null); a log without one is poison.
    pub required_fields: Vec<String>,
    /// The timestamp field: RFC 3339 text or epoch milliseconds.
    pub ts_field: String,
    /// When set, items get this attribute = timestamp + `ttl_retention`, in epoch seconds.
    pub ttl_attribute: Option<String>,
    /// Retention for the TTL attribute.
    #[serde(with = "humantime_serde")]
    pub ttl_retention: Duration,
}

impl Default for SchemaSettings {
    fn default() -> Self {
        let s = Schema::default();
        SchemaSettings {
            key_field: s.key_field,
            key_attribute: s.key_attribute,
            required_fields: s.required_fields,
            ts_field: s.ts_field,
            ttl_attribute: None,
            ttl_retention: Duration::from_secs(30 * 86_400),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateMode {
    /// Each instance paces to its share of the budget; no extra infrastructure.
    #[default]
    Local,
    /// One token bucket in Redis for the whole fleet; the local share is the fallback.
    Redis,
    /// Each instance paces to budget ÷ live members, counted from leases in a small DynamoDB
    /// table (`rate.membership`): the share follows the fleet as it grows and shrinks.
    Membership,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSettings {
    /// Explicit write budget for the whole table, in WCU per second. Unset: discovered with
    /// DescribeTable as target_utilization × the table's write capacity.
    pub wcu_per_second: Option<u32>,
    /// Share of the discovered capacity to use (0 < u ≤ 1).
    pub target_utilization: f64,
    /// Capacity to assume for an on-demand table, in WCU per second. Unset: on-demand tables
    /// are not paced.
    pub on_demand_wcu_per_second: Option<u32>,
    /// This instance's share of the budget (0 < s ≤ 1), when several instances write one table.
    /// In redis mode it is the fallback when Redis cannot be reached.
    pub share: Option<f64>,
    /// Alternative to `share`: the number of instances; share = 1 / expected_replicas.
    pub expected_replicas: Option<u32>,
    /// How often DescribeTable is read again to follow capacity changes.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Burst, in seconds of budget (0 < b ≤ 1): what may be spent at once after an idle spell.
    pub burst_seconds: f64,
    /// Receive only while the messages held take less than this to write at the paced rate
    /// (counting each message's whole WCU), and no more messages than fit in it.
    #[serde(with = "humantime_serde")]
    pub intake_horizon: Duration,
    /// `local`, `membership` or `redis`.
    pub mode: RateMode,
    pub redis: RedisSettings,
    pub membership: MembershipSettings,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            wcu_per_second: None,
            target_utilization: 0.98,
            on_demand_wcu_per_second: None,
            share: None,
            expected_replicas: None,
            refresh_interval: Duration::from_secs(60),
            burst_seconds: 0.2,
            intake_horizon: Duration::from_secs(5),
            mode: RateMode::Local,
            redis: RedisSettings::default(),
            membership: MembershipSettings::default(),
        }
    }
}

impl RateSettings {
    /// This instance's share of the table budget.
    pub fn share(&self) -> f64 {
        match (self.share, self.expected_replicas) {
            (Some(s), _) => s,
            (None, Some(n)) if n > 0 => 1.0 / f64::from(n),
            _ => 1.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// Redis URL, e.g. redis://redis.internal:6379/0 (rediss:// is not supported yet).
    pub url: String,
    /// A file holding the URL (with its password: a mounted Secret), instead of `url`.
    pub url_file: Option<std::path::PathBuf>,
    /// Key of the shared bucket. Default: sluice:bucket:<dynamodb.table>.
    pub key: Option<String>,
    /// WCU leased per round trip. 0: 2% of the budget, at least 10.
    pub lease_wcu: u32,
    /// Longest a lease may take before Redis counts as unreachable.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long to pace to the local share after Redis failed, before trying it again.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            url: String::new(),
            url_file: None,
            key: None,
            lease_wcu: 0,
            timeout: Duration::from_millis(250),
            retry_after: Duration::from_secs(5),
        }
    }
}

/// Fleet membership (`rate.mode = "membership"`): leases in a DynamoDB table.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipSettings {
    /// The lease table (keys `group` S, `member` S).
    pub table: String,
    /// The fleet's name in the lease table: instances of one group share one budget. Default:
    /// dynamodb.table.
    pub group: Option<String>,
    /// Create the lease table (on demand) when it is missing (needs dynamodb:CreateTable).
    pub create_table: bool,
    /// How often each instance reads the members and renews its lease: a join or a clean
    /// departure re-splits the budget within about two of these.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long a lease lasts unrenewed: an instance that dies without leaving (kill -9, a
    /// spot reclaim) gives its share back after this.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
}

impl Default for MembershipSettings {
    fn default() -> Self {
        MembershipSettings {
            table: String::new(),
            group: None,
            create_table: true,
            heartbeat_interval: Duration::from_secs(3),
            lease_duration: Duration::from_secs(15),
        }
    }
}

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    pub listen: String,
    pub log_format: LogFormat,
    /// Log filter when RUST_LOG is unset (tracing-subscriber's EnvFilter syntax).
    pub log_level: String,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            listen: "127.0.0.1:9464".into(),
            log_format: LogFormat::Auto,
            log_level: "info".into(),
        }
    }
}

/// Loads the file (if any) and the `SLUICE__…` environment, and checks every value.
pub fn load(path: Option<&Path>) -> Result<Settings> {
    deserialize(raw(path)?)
}

/// [`load`] for a process that runs as `mode`.
pub fn load_for(path: Option<&Path>, mode: Mode) -> Result<Settings> {
    let settings = parse(raw(path)?)?;
    settings.validate_for(mode)?;
    Ok(settings)
}

/// Loads like [`load`] but checks only that it parses: for tools (`sluice dlq`) that need a few
/// keys, not a runnable worker config.
pub fn load_partial(path: Option<&Path>) -> Result<Settings> {
    parse(raw(path)?)
}

fn raw(path: Option<&Path>) -> Result<config::Config> {
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        if !path.is_file() {
            bail!("config file {} not found", path.display());
        }
        builder = builder.add_source(
            config::File::from(path)
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder = builder.add_source(
        config::Environment::with_prefix("SLUICE")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("schema.required_fields")
            .with_list_parse_key("kafka.topics")
            .try_parsing(true),
    );
    builder
        .build()
        .map_err(|e| anyhow!("cannot read config: {e}"))
}

/// A DynamoDB table name: 3-255 of a-z A-Z 0-9 _ . -
fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Deserializes, naming the key of a value that does not fit, and reads the files that hold
/// more of the config (kafka.properties_file).
fn parse(raw: config::Config) -> Result<Settings> {
    let mut settings: Settings = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." || path.is_empty() {
            anyhow!("invalid config: {inner}")
        } else {
            anyhow!("invalid config at `{path}`: {inner}")
        }
    })?;
    if let Some(path) = settings.rate.redis.url_file.clone() {
        if !settings.rate.redis.url.is_empty() {
            bail!("set rate.redis.url or rate.redis.url_file, not both");
        }
        settings.rate.redis.url = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read rate.redis.url_file {}", path.display()))?
            .trim()
            .to_owned();
    }
    if let Some(path) = settings.kafka.properties_file.clone() {
        for (key, value) in read_properties_file(&path)? {
            if settings.kafka.properties.contains_key(&key) {
                bail!(
                    "kafka.properties_file {}: `{key}` is also in kafka.properties; keep it in one place",
                    path.display()
                );
            }
            settings.kafka.properties.insert(key, value);
        }
    }
    Ok(settings)
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

/// Deserializes and validates.
fn deserialize(raw: config::Config) -> Result<Settings> {
    let settings = parse(raw)?;
    settings.validate()?;
    Ok(settings)
}

impl Settings {
    /// Every problem at once, each naming its key (for `sluice run`).
    pub fn validate(&self) -> Result<()> {
        self.validate_for(Mode::Worker)
    }

    /// Every problem at once, each naming its key, for what the process runs as.
    pub fn validate_for(&self, mode: Mode) -> Result<()> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                problems.push(msg);
            }
        };
        let q = &self.sqs;
        let k = &self.kafka;
        check(
            !q.queue_url.is_empty()
                || (k.enabled && mode == Mode::Worker)
                || (mode == Mode::Ingest && self.producer.kafka_topic.is_some()),
            "sqs.queue_url is required (set it in the file or SLUICE__SQS__QUEUE_URL)".into(),
        );
        if k.enabled {
            check(
                !k.brokers.trim().is_empty(),
                "kafka.brokers is required when kafka.enabled (host:port[,host:port])".into(),
            );
            check(
                !k.topics.is_empty() && k.topics.iter().all(|t| !t.trim().is_empty()),
                "kafka.topics needs at least one topic when kafka.enabled".into(),
            );
            check(
                !k.dlq_topic.trim().is_empty(),
                "kafka.dlq_topic is required when kafka.enabled: poison records go there".into(),
            );
            check(
                !k.topics.contains(&k.dlq_topic),
                format!(
                    "kafka.dlq_topic `{}` is also in kafka.topics: poison would come back forever",
                    k.dlq_topic
                ),
            );
            check(
                !k.group_id.trim().is_empty(),
                "kafka.group_id must not be empty".into(),
            );
            check(
                matches!(k.auto_offset_reset.as_str(), "earliest" | "latest"),
                format!(
                    "kafka.auto_offset_reset must be `earliest` or `latest`, got `{}`",
                    k.auto_offset_reset
                ),
            );
            check(
                k.buffer_records >= 1,
                "kafka.buffer_records must be at least 1".into(),
            );
            check(
                !k.commit_interval.is_zero(),
                "kafka.commit_interval must be above zero".into(),
            );
            check(
                k.max_poll_interval >= Duration::from_secs(5)
                    && k.max_poll_interval >= k.session_timeout,
                "kafka.max_poll_interval must be at least 5s and at least kafka.session_timeout"
                    .into(),
            );
            check(
                k.group_instance_id
                    .as_ref()
                    .is_none_or(|id| !id.trim().is_empty() && id.len() <= 249),
                "kafka.group_instance_id must be 1-249 characters when set (or left unset)".into(),
            );
            check(
                !k.properties.contains_key("group.instance.id"),
                "kafka.properties.\"group.instance.id\": set kafka.group_instance_id instead"
                    .into(),
            );
            for key in k.properties.keys() {
                check(
                    !matches!(
                        key.as_str(),
                        "enable.auto.commit"
                            | "enable.auto.offset.store"
                            | "group.id"
                            | "bootstrap.servers"
                    ),
                    format!(
                        "kafka.properties.\"{key}\" is set by sluice (offsets are committed only once written); remove it"
                    ),
                );
            }
        }
        check(
            q.queue_url.is_empty()
                || q.queue_url.starts_with("https://")
                || q.queue_url.starts_with("http://"),
            format!(
                "sqs.queue_url must be a queue URL (https://…), got `{}`",
                q.queue_url
            ),
        );
        check(
            q.wait_time_seconds <= 20,
            format!(
                "sqs.wait_time_seconds must be 0..=20, got {}",
                q.wait_time_seconds
            ),
        );
        check(
            (1..=10).contains(&q.max_messages),
            format!("sqs.max_messages must be 1..=10, got {}", q.max_messages),
        );
        check(q.pollers >= 1, "sqs.pollers must be at least 1".into());
        if let Some(v) = q.visibility_timeout {
            check(
                v <= sluice_sqs::MAX_VISIBILITY,
                "sqs.visibility_timeout must be at most 12h".into(),
            );
            check(
                v >= Duration::from_secs(2),
                format!(
                    "sqs.visibility_timeout must be at least 2s (the heartbeat extends it while a message is held), got {}",
                    humantime::format_duration(v)
                ),
            );
        }
        check(
            !q.nack_backoff_base.is_zero() && q.nack_backoff_base <= q.nack_backoff_max,
            "sqs.nack_backoff_base must be above zero and at most sqs.nack_backoff_max".into(),
        );
        check(
            q.nack_backoff_max <= sluice_sqs::MAX_VISIBILITY,
            "sqs.nack_backoff_max must be at most 12h".into(),
        );
        check(
            q.dead_letter_queue_url
                .as_deref()
                .is_none_or(|u| u.starts_with("https://") || u.starts_with("http://")),
            format!(
                "sqs.dead_letter_queue_url must be a queue URL, got `{}`",
                q.dead_letter_queue_url.as_deref().unwrap_or_default()
            ),
        );
        let d = &self.dynamodb;
        check(
            mode == Mode::Ingest || !d.table.is_empty(),
            "dynamodb.table is required (set it in the file or SLUICE__DYNAMODB__TABLE)".into(),
        );
        check(
            d.table.is_empty() || valid_table_name(&d.table),
            format!(
                "dynamodb.table `{}` is not a valid table name (3-255 of a-z A-Z 0-9 _ . -)",
                d.table
            ),
        );
        check(
            (1..=25).contains(&d.max_batch_items),
            format!(
                "dynamodb.max_batch_items must be 1..=25, got {}",
                d.max_batch_items
            ),
        );
        check(
            d.max_concurrent_requests >= 1,
            "dynamodb.max_concurrent_requests must be at least 1".into(),
        );
        check(
            !d.request_timeout.is_zero(),
            "dynamodb.request_timeout must be above zero".into(),
        );
        check(
            d.retry_base_delay <= d.retry_max_delay && !d.retry_base_delay.is_zero(),
            "dynamodb.retry_base_delay must be above zero and at most dynamodb.retry_max_delay"
                .into(),
        );
        check(
            d.startup_retry_for <= Duration::from_secs(3600),
            "dynamodb.startup_retry_for must be at most 1h (systemd's TimeoutStartSec and Kubernetes' startup probe must cover it)".into(),
        );
        let s = &self.schema;
        check(
            !s.key_field.is_empty(),
            "schema.key_field must not be empty".into(),
        );
        check(
            !s.key_attribute.is_empty(),
            "schema.key_attribute must not be empty".into(),
        );
        check(
            !s.ts_field.is_empty(),
            "schema.ts_field must not be empty".into(),
        );
        if let Some(ttl) = &s.ttl_attribute {
            check(
                !s.ttl_retention.is_zero(),
                "schema.ttl_retention must be above zero when schema.ttl_attribute is set".into(),
            );
            check(
                !ttl.trim().is_empty(),
                "schema.ttl_attribute must not be empty (leave it unset for no TTL)".into(),
            );
            check(
                *ttl != s.key_attribute,
                format!(
                    "schema.ttl_attribute `{ttl}` is the table's key (schema.key_attribute): every item would get the TTL number as its key; name another attribute"
                ),
            );
        }
        let r = &self.rate;
        check(
            r.wcu_per_second != Some(0),
            "rate.wcu_per_second must be at least 1 (leave it unset to discover the table's capacity)"
                .into(),
        );
        check(
            r.on_demand_wcu_per_second != Some(0),
            "rate.on_demand_wcu_per_second must be at least 1".into(),
        );
        check(
            r.target_utilization > 0.0 && r.target_utilization <= 1.0,
            format!(
                "rate.target_utilization must be in (0, 1], got {}",
                r.target_utilization
            ),
        );
        check(
            r.burst_seconds > 0.0 && r.burst_seconds <= 1.0,
            format!(
                "rate.burst_seconds must be in (0, 1], got {}",
                r.burst_seconds
            ),
        );
        check(
            !(r.share.is_some() && r.expected_replicas.is_some()),
            "set rate.share or rate.expected_replicas, not both".into(),
        );
        check(
            r.share.is_none_or(|s| s > 0.0 && s <= 1.0),
            format!(
                "rate.share must be in (0, 1], got {}",
                r.share.unwrap_or_default()
            ),
        );
        check(
            r.expected_replicas != Some(0),
            "rate.expected_replicas must be at least 1".into(),
        );
        check(
            r.refresh_interval >= Duration::from_secs(1),
            "rate.refresh_interval must be at least 1s".into(),
        );
        check(
            !r.intake_horizon.is_zero() && r.intake_horizon <= Duration::from_secs(3600),
            format!(
                "rate.intake_horizon must be above zero and at most 1h, got {}",
                humantime::format_duration(r.intake_horizon)
            ),
        );
        if r.mode == RateMode::Redis {
            check(
                r.redis.url.starts_with("redis://"),
                format!(
                    "rate.redis.url must be a redis:// URL when rate.mode = \"redis\", got `{}`",
                    r.redis.url
                ),
            );
            check(
                !r.redis.timeout.is_zero(),
                "rate.redis.timeout must be above zero".into(),
            );
        }
        if r.mode == RateMode::Redis {
            // The fallback while Redis is down must not be the whole budget on every instance.
            check(
                r.share.is_some() || r.expected_replicas.is_some(),
                "rate.mode = \"redis\" needs rate.share or rate.expected_replicas: the share each instance falls back to while Redis cannot be reached".into(),
            );
        }
        if r.mode == RateMode::Membership {
            let m = &r.membership;
            check(
                !m.table.trim().is_empty(),
                "rate.membership.table must name the lease table when rate.mode = \"membership\""
                    .into(),
            );
            check(
                m.table.is_empty() || valid_table_name(&m.table),
                format!(
                    "rate.membership.table `{}` is not a valid table name (3-255 of a-z A-Z 0-9 _ . -)",
                    m.table
                ),
            );
            check(
                m.table != self.dynamodb.table,
                "rate.membership.table must not be dynamodb.table: the leases need a table of their own".into(),
            );
            check(
                r.share.is_none() && r.expected_replicas.is_none(),
                "rate.share and rate.expected_replicas do not apply when rate.mode = \"membership\" (the share follows the live members): remove them".into(),
            );
            check(
                m.heartbeat_interval >= Duration::from_secs(1),
                "rate.membership.heartbeat_interval must be at least 1s".into(),
            );
            check(
                m.lease_duration >= m.heartbeat_interval * 3,
                format!(
                    "rate.membership.lease_duration ({}) must be at least 3 × rate.membership.heartbeat_interval ({})",
                    humantime::format_duration(m.lease_duration),
                    humantime::format_duration(m.heartbeat_interval)
                ),
            );
        }
        let w = &self.worker;
        let engine = self.engine_config();
        let pool = EngineConfig {
            intake_horizon: None, // checked above, with its key
            ..engine
        };
        if let Err(e) = pool.validate() {
            check(
                false,
                format!(
                    "worker: {e} (worker.max_in_flight, worker.max_in_flight_bytes, sqs.pollers, sqs.max_messages)"
                ),
            );
        }
        check(
            w.write_queue_items.is_none_or(|n| n >= 1),
            "worker.write_queue_items must be at least 1 (it is no longer used: remove it)".into(),
        );
        check(
            !q.request_timeout.is_zero() && q.request_timeout <= Duration::from_secs(60),
            format!(
                "sqs.request_timeout must be above zero and at most 60s, got {}",
                humantime::format_duration(q.request_timeout)
            ),
        );
        if self.spot.enabled {
            // The notice comes two minutes ahead; the drain must end well before.
            check(
                self.spot.poll_interval + w.shutdown_grace <= Duration::from_secs(90),
                format!(
                    "with spot.enabled, spot.poll_interval + worker.shutdown_grace must be at most 90s (the notice comes 2 minutes ahead), got {} + {}",
                    humantime::format_duration(self.spot.poll_interval),
                    humantime::format_duration(w.shutdown_grace)
                ),
            );
            check(
                !self.spot.poll_interval.is_zero(),
                "spot.poll_interval must be above zero".into(),
            );
        }
        check(
            self.telemetry.listen.parse::<SocketAddr>().is_ok(),
            format!(
                "telemetry.listen must be an address like 0.0.0.0:9464, got `{}`",
                self.telemetry.listen
            ),
        );
        let p = &self.producer;
        if let Some(topic) = &p.kafka_topic {
            check(
                !topic.trim().is_empty(),
                "producer.kafka_topic must not be empty (unset it to send to SQS)".into(),
            );
            check(
                !k.brokers.trim().is_empty(),
                "producer.kafka_topic needs kafka.brokers (and kafka.properties for TLS/SASL)"
                    .into(),
            );
        }
        if let Err(e) = p.producer_config(&self.sqs.queue_url).validate() {
            for problem in e.split("; ") {
                check(false, format!("producer.{problem}"));
            }
        }
        if p.spool_dir.is_some() {
            // A record is the message plus its header, group and deduplication ids (under
            // 1 KiB): a spool that cannot hold one full message would refuse every one.
            check(
                p.spool_max_bytes >= p.max_message_bytes as u64 + 1024,
                "producer.spool_max_bytes must hold at least one full message and its record (producer.max_message_bytes + 1024)"
                    .into(),
            );
            check(
                p.spool_segment_bytes >= 4096,
                "producer.spool_segment_bytes must be at least 4096".into(),
            );
        }
        let i = &self.ingest;
        check(
            i.listen.parse::<SocketAddr>().is_ok(),
            format!(
                "ingest.listen must be an address like 0.0.0.0:8080, got `{}`",
                i.listen
            ),
        );
        for (n, k) in i.api_keys.iter().enumerate() {
            check(
                !k.name.is_empty(),
                format!("ingest.api_keys[{n}].name must not be empty"),
            );
            check(
                k.sha256.len() == 64 && k.sha256.chars().all(|c| c.is_ascii_hexdigit()),
                format!(
                    "ingest.api_keys[{n}].sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum), got `{}`",
                    k.sha256
                ),
            );
        }
        if mode == Mode::Ingest {
            check(
                !i.api_keys.is_empty() || i.api_keys_file.is_some(),
                "ingest.api_keys (or ingest.api_keys_file) needs at least one key for sluice ingest"
                    .into(),
            );
        }
        check(
            i.rate_per_key >= 1,
            "ingest.rate_per_key must be at least 1".into(),
        );
        check(
            i.burst_per_key >= 1,
            "ingest.burst_per_key must be at least 1".into(),
        );
        check(
            i.max_body_bytes >= 1024,
            "ingest.max_body_bytes must be at least 1024".into(),
        );
        // One request's logs are taken into the producer's buffer whole, and escaping what SQS
        // refuses (U+FFFE/U+FFFF: 3 bytes become 6) can double them: a buffer smaller than that
        // would answer 503 to a request that can never fit.
        check(
            p.buffer_bytes >= 2 * i.max_body_bytes,
            format!(
                "producer.buffer_bytes ({}) must be at least twice ingest.max_body_bytes ({}): one request is buffered whole, and escaping can double it",
                p.buffer_bytes, i.max_body_bytes
            ),
        );
        check(
            i.max_logs_per_request >= 1,
            "ingest.max_logs_per_request must be at least 1".into(),
        );
        check(
            !i.request_timeout.is_zero(),
            "ingest.request_timeout must be above zero".into(),
        );
        check(
            i.reload_interval.is_zero() || i.reload_interval >= Duration::from_secs(1),
            format!(
                "ingest.reload_interval must be 0 (never) or at least 1s, got {}",
                humantime::format_duration(i.reload_interval)
            ),
        );
        check(
            i.drain_delay <= Duration::from_secs(120),
            format!(
                "ingest.drain_delay must be at most 2m (a spot instance has two minutes), got {}",
                humantime::format_duration(i.drain_delay)
            ),
        );
        check(
            i.tls_cert.is_some() == i.tls_key.is_some(),
            "ingest.tls_cert and ingest.tls_key go together: set both or neither".into(),
        );
        for (key, d) in [
            ("ingest.header_read_timeout", i.header_read_timeout),
            ("ingest.body_read_timeout", i.body_read_timeout),
            ("ingest.shutdown_timeout", i.shutdown_timeout),
        ] {
            check(
                !d.is_zero() && d <= Duration::from_secs(600),
                format!(
                    "{key} must be above zero and at most 10m, got {}",
                    humantime::format_duration(d)
                ),
            );
        }
        check(
            i.max_connections >= 1,
            "ingest.max_connections must be at least 1".into(),
        );
        if problems.is_empty() {
            Ok(())
        } else {
            bail!("invalid config:\n  - {}", problems.join("\n  - "))
        }
    }

    pub fn schema(&self) -> Schema {
        let s = &self.schema;
        Schema {
            key_field: s.key_field.clone(),
            key_attribute: s.key_attribute.clone(),
            required_fields: s.required_fields.clone(),
            ts_field: s.ts_field.clone(),
            ttl: s.ttl_attribute.clone().map(|attribute| TtlRule {
                attribute,
                retention: s.ttl_retention,
            }),
        }
    }

    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            pollers: self.sqs.pollers,
            max_messages: self.sqs.max_messages as usize,
            max_in_flight: self.worker.max_in_flight,
            max_in_flight_bytes: self.worker.max_in_flight_bytes,
            message_timeout: self.worker.message_timeout,
            shutdown_grace: self.worker.shutdown_grace,
            nack_backoff_base: self.sqs.nack_backoff_base,
            nack_backoff_max: self.sqs.nack_backoff_max,
            poison_nack_delay: self.sqs.poison_nack_delay,
            ack_linger: self.sqs.ack_linger,
            // A DeleteMessageBatch carries up to 10 messages, as one receive brings: one delete
            // in flight per poller keeps acks level with intake (at least 8).
            max_concurrent_acks: self.sqs.pollers.max(8),
            intake_horizon: Some(self.rate.intake_horizon),
            visibility_timeout: self.sqs.visibility_timeout,
            poll_wait: Duration::from_secs(u64::from(self.sqs.wait_time_seconds)),
        }
    }

    pub fn writer_config(&self) -> WriterConfig {
        WriterConfig {
            max_batch_items: self.dynamodb.max_batch_items,
            max_concurrent_requests: self.dynamodb.max_concurrent_requests,
            backoff: Backoff {
                base: self.dynamodb.retry_base_delay,
                cap: self.dynamodb.retry_max_delay,
            },
            request_timeout: self.dynamodb.request_timeout,
            ..WriterConfig::default()
        }
    }

    /// The explicit table budget, when set (otherwise it is discovered).
    pub fn wcu_budget(&self) -> Option<NonZeroU32> {
        self.rate.wcu_per_second.and_then(NonZeroU32::new)
    }
}

/// Reads a settings file for tests and tools without the environment layer.
pub fn from_toml(text: &str) -> Result<Settings> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .context("cannot parse TOML")?;
    deserialize(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [sqs]
        queue_url = "https://sqs.us-east-1.amazonaws.com/123456789012/logs"
        [dynamodb]
        table = "request-logs"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let s = from_toml(MINIMAL).unwrap();
        assert_eq!(s.sqs.wait_time_seconds, 20);
        assert_eq!(s.sqs.max_messages, 10);
        assert_eq!(s.worker.message_timeout, Duration::from_secs(30));
        assert_eq!(s.dynamodb.max_batch_items, 25);
        assert_eq!(s.schema.key_attribute, "request_id");
        assert_eq!(s.rate.wcu_per_second, None);
    }

    #[test]
    fn a_ttl_attribute_that_is_empty_or_the_key_is_refused_by_name() {
        for (ttl, says) in [
            ("", "schema.ttl_attribute must not be empty"),
            (
                "request_id",
                "schema.ttl_attribute `request_id` is the table's key",
            ),
        ] {
            let err = from_toml(&format!("{MINIMAL}\n[schema]\nttl_attribute = \"{ttl}\"\n"))
                .unwrap_err();
            assert!(format!("{err:#}").contains(says), "{err:#}");
        }
        assert!(
            from_toml(&format!(
                "{MINIMAL}\n[schema]\nttl_attribute = \"expires_at\"\n"
            ))
            .is_ok()
        );
    }

    #[test]
    fn the_retired_write_queue_items_still_loads_and_sqs_calls_have_a_deadline() {
        let s = from_toml(&format!("{MINIMAL}\n[worker]\nwrite_queue_items = 2048\n")).unwrap();
        assert_eq!(s.worker.write_queue_items, Some(2048));
        assert_eq!(s.sqs.request_timeout, Duration::from_secs(5));
        let text = MINIMAL.replace("[dynamodb]", "request_timeout = \"0s\"\n[dynamodb]");
        let err = from_toml(&text).unwrap_err();
        assert!(
            format!("{err:#}").contains("sqs.request_timeout"),
            "{err:#}"
        );
    }

    #[test]
    fn membership_and_redis_modes_are_refused_without_what_keeps_the_fleet_within_its_budget() {
        for (rate, says) in [
            (
                "mode = \"membership\"",
                "rate.membership.table must name the lease table",
            ),
            (
                "mode = \"membership\"\nexpected_replicas = 3\n[rate.membership]\ntable = \"members\"",
                "do not apply when rate.mode = \"membership\"",
            ),
            (
                "mode = \"membership\"\n[rate.membership]\ntable = \"request-logs\"",
                "must not be dynamodb.table",
            ),
            (
                "mode = \"membership\"\n[rate.membership]\ntable = \"m\"",
                "rate.membership.table `m` is not a valid table name",
            ),
            (
                "mode = \"membership\"\n[rate.membership]\ntable = \"members\"\nheartbeat_interval = \"5s\"\nlease_duration = \"10s\"",
                "must be at least 3 × rate.membership.heartbeat_interval",
            ),
            (
                "mode = \"redis\"\n[rate.redis]\nurl = \"redis://r:6379/\"",
                "needs rate.share or rate.expected_replicas",
            ),
        ] {
            let err = from_toml(&format!("{MINIMAL}\n[rate]\n{rate}\n")).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{rate}: {err:#}");
        }
        let s = from_toml(&format!(
            "{MINIMAL}\n[rate]\nmode = \"membership\"\n[rate.membership]\ntable = \"members\"\n"
        ))
        .unwrap();
        assert_eq!(s.rate.mode, RateMode::Membership);
        assert!(s.rate.membership.create_table);
        assert_eq!(s.rate.membership.heartbeat_interval, Duration::from_secs(3));
        assert_eq!(s.rate.membership.lease_duration, Duration::from_secs(15));
    }

    #[test]
    fn kafka_properties_file_is_merged_and_a_key_in_both_places_is_refused() {
        let dir = std::env::temp_dir().join(format!("sluice-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka.properties");
        std::fs::write(
            &file,
            "# SASL from a Secret\nsasl.username = logs\nsasl.password=p=ss#word\n\n",
        )
        .unwrap();
        let base = format!(
            "{MINIMAL}\n[kafka]\nproperties_file = \"{}\"\n",
            file.display()
        );
        let s = from_toml(&base).unwrap();
        assert_eq!(s.kafka.properties["sasl.username"], "logs");
        assert_eq!(s.kafka.properties["sasl.password"], "p=ss#word");
        let both = base.replace(
            "[kafka]\n",
            "[kafka]\nproperties = { \"sasl.username\" = \"x\" }\n",
        );
        let err = from_toml(&both).unwrap_err();
        assert!(
            format!("{err:#}").contains("also in kafka.properties"),
            "{err:#}"
        );
        std::fs::write(&file, "no equals sign\n").unwrap();
        let err = from_toml(&base).unwrap_err();
        assert!(
            format!("{err:#}").contains("line 1: want key=value"),
            "{err:#}"
        );
        let err = from_toml(&base.replace("kafka.properties", "missing.properties")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read kafka.properties_file"),
            "{err:#}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_redis_url_can_come_from_a_file_not_both() {
        let file = std::env::temp_dir().join(format!("sluice-redis-url-{}", std::process::id()));
        std::fs::write(&file, "redis://:s3cret@redis.internal:6379/0\n").unwrap();
        let base = format!(
            "{MINIMAL}\n[rate]\nmode = \"redis\"\nexpected_replicas = 2\n[rate.redis]\nurl_file = \"{}\"\n",
            file.display()
        );
        let s = from_toml(&base).unwrap();
        assert_eq!(s.rate.redis.url, "redis://:s3cret@redis.internal:6379/0");
        let err = from_toml(&base.replace(
            "[rate.redis]\n",
            "[rate.redis]\nurl = \"redis://x:6379/\"\n",
        ))
        .unwrap_err();
        assert!(format!("{err:#}").contains("not both"), "{err:#}");
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = from_toml(&format!("{MINIMAL}\n[worker]\nmax_inflight = 3\n")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("max_inflight"), "{msg}");
        assert!(msg.contains("worker"), "{msg}");
        let err = from_toml(&format!("{MINIMAL}\n[sqss]\nx = 1\n")).unwrap_err();
        assert!(format!("{err:#}").contains("sqss"), "{err:#}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = from_toml(
            r#"
            [sqs]
            queue_url = "https://q"
            max_messages = 11
            visibility_timeout = "1s"
            [dynamodb]
            table = "t"
            [rate]
            wcu_per_second = 0
            "#,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        for key in [
            "sqs.max_messages",
            "dynamodb.table",
            "rate.wcu_per_second",
            "sqs.visibility_timeout",
        ] {
            assert!(msg.contains(key), "{key} missing from: {msg}");
        }
        let err = from_toml("[sqs]\nwait_time_seconds = \"soon\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("sqs.wait_time_seconds"),
            "{err:#}"
        );
    }

    #[test]
    fn required_keys_are_required() {
        let msg = format!("{:#}", from_toml("").unwrap_err());
        assert!(msg.contains("sqs.queue_url is required"), "{msg}");
        assert!(msg.contains("dynamodb.table is required"), "{msg}");
    }
}
