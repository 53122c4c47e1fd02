//! Configuration: a TOML file plus `SLUICE__SECTION__KEY` environment overrides, unknown keys
//! rejected, every value checked at start with the offending key named.
//! `config/sluice.example.toml` documents every key with its default; keep the two in step.
//!
//! One file per section, each with its type and its own rules ([`Check`]); the types reject what
//! they can express (addresses, URLs, counts that must be above zero, enums, digests) while the
//! file is read, naming the key. The rules that tie sections together are here
//! (`Settings::check_across`).

mod cache;
mod de;
mod dynamodb;
mod ingest;
mod kafka;
mod problems;
mod producer;
mod rate;
mod schema;
mod spot;
mod sqs;
mod telemetry;
mod worker;

use std::num::NonZeroU32;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;
use sluice_core::{EngineConfig, Schema, WriterConfig};

pub use cache::CacheSettings;
pub use de::parse_sha256;
pub use dynamodb::DynamoDbSettings;
pub use ingest::{ApiKey, IngestSettings, read_api_keys_file};
pub use kafka::{KafkaSettings, read_properties_file};
pub use problems::{Check, InvalidConfig, Problem, Problems};
pub use producer::{FsyncSetting, ProducerSettings};
pub use rate::{MembershipSettings, RateMode, RateSettings, RedisSettings};
pub use schema::{CompressionKind, SchemaSettings};
pub use spot::SpotSettings;
pub use sqs::SqsSettings;
pub use telemetry::{LogFormat, TelemetrySettings};
pub use worker::WorkerSettings;

use problems::human;

/// The whole config: one field per `[section]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub sqs: SqsSettings,
    pub dynamodb: DynamoDbSettings,
    pub schema: SchemaSettings,
    pub cache: CacheSettings,
    pub rate: RateSettings,
    pub worker: WorkerSettings,
    pub telemetry: TelemetrySettings,
    pub spot: SpotSettings,
    pub ingest: IngestSettings,
    pub producer: ProducerSettings,
    pub kafka: KafkaSettings,
}

/// What the process runs as: `sluice run` (the workers) or `sluice ingest` (the HTTP API that
/// fills the queue, sqs.queue_url).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Worker,
    Ingest,
}

/// Loads the file (if any) and the `SLUICE__…` environment, and checks every value.
pub fn load(path: Option<&Path>) -> Result<Settings> {
    deserialize(raw(path, None)?)
}

/// [`load`] for a process that runs as `mode`.
pub fn load_for(path: Option<&Path>, mode: Mode) -> Result<Settings> {
    let settings = parse(raw(path, None)?)?;
    settings.validate_for(mode)?;
    Ok(settings)
}

/// Loads like [`load`] but checks only that it parses: for tools (`sluice dlq`) that need a few
/// keys, not a runnable worker config.
pub fn load_partial(path: Option<&Path>) -> Result<Settings> {
    parse(raw(path, None)?)
}

/// Reads a settings file for tests and tools without the environment layer.
pub fn from_toml(text: &str) -> Result<Settings> {
    let raw = config::Config::builder()
        .add_source(config::File::from_str(text, config::FileFormat::Toml))
        .build()
        .context("cannot parse TOML")?;
    deserialize(raw)
}

/// The file's values under the environment's. `env`: the variables to read instead of the
/// process's (tests).
fn raw(path: Option<&Path>, env: Option<config::Map<String, String>>) -> Result<config::Config> {
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
            .with_list_parse_key("schema.plain_fields")
            .with_list_parse_key("kafka.topics")
            .try_parsing(true)
            .source(env),
    );
    builder
        .build()
        .map_err(|e| anyhow!("cannot read config: {e}"))
}

/// Deserializes, naming the key of a value that does not fit, and reads the files that hold
/// more of the config (rate.redis.url_file, kafka.properties_file).
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
    settings.rate.redis.read_url_file()?;
    settings.kafka.merge_properties_file()?;
    Ok(settings)
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

    /// Every problem at once, each naming its key, for what the process runs as. The error is
    /// an [`InvalidConfig`] (`downcast_ref` gives the list).
    pub fn validate_for(&self, mode: Mode) -> Result<()> {
        let mut problems = Problems::default();
        let sections: [&dyn Check; 10] = [
            &self.kafka,
            &self.sqs,
            &self.dynamodb,
            &self.schema,
            &self.cache,
            &self.rate,
            &self.worker,
            &self.spot,
            &self.producer,
            &self.ingest,
        ];
        for section in sections {
            section.check(mode, &mut problems);
        }
        self.check_across(mode, &mut problems);
        Ok(problems.into_result()?)
    }

    /// The rules that tie sections together.
    fn check_across(&self, mode: Mode, p: &mut Problems) {
        self.check_buffer(mode, p);
        self.check_pool(p);
        self.check_spot_drain(p);
        self.check_ingest_producer(p);
        p.check(
            !(self.cache.enabled && self.cache.shared) || self.rate.mode == RateMode::Redis,
            "cache.shared",
            "cache.shared = true shares the cache in Redis: it needs rate.mode = \"redis\" (and its rate.redis.url)",
        );
        p.check(
            self.rate.mode != RateMode::Membership
                || self.rate.membership.table != self.dynamodb.table,
            "rate.membership.table",
            "rate.membership.table must not be dynamodb.table: the leases need a table of their own",
        );
    }

    /// The buffer: the queue is required unless Kafka takes its place (kafka.enabled for the
    /// workers, producer.kafka_topic for ingest), and Kafka needs its brokers.
    fn check_buffer(&self, mode: Mode, p: &mut Problems) {
        p.check(
            self.sqs.queue_url.is_some()
                || (self.kafka.enabled && mode == Mode::Worker)
                || (mode == Mode::Ingest && self.producer.kafka_topic.is_some()),
            "sqs.queue_url",
            "sqs.queue_url is required (set it in the file or SLUICE__SQS__QUEUE_URL)",
        );
        p.check(
            self.producer.kafka_topic.is_none() || !self.kafka.brokers.trim().is_empty(),
            "producer.kafka_topic",
            "producer.kafka_topic needs kafka.brokers (and kafka.properties for TLS/SASL)",
        );
    }

    /// The engine's numbers fit together (`[sqs]` pollers and receive size, `[worker]` bounds).
    fn check_pool(&self, p: &mut Problems) {
        let pool = EngineConfig {
            intake_horizon: None, // rate.intake_horizon is checked with its key
            ..self.engine_config()
        };
        if let Err(e) = pool.validate() {
            p.push(
                "worker.max_in_flight",
                format!(
                    "worker: {e} (worker.max_in_flight, worker.max_in_flight_bytes, sqs.pollers, sqs.max_messages)"
                ),
            );
        }
    }

    /// With any departure signal watched, the drain must end well before the spot notice's two
    /// minutes are up (a spot instance in a group gets the notice whatever else it watches).
    fn check_spot_drain(&self, p: &mut Problems) {
        let (poll, grace) = (self.spot.poll_interval, self.worker.shutdown_grace);
        p.check(
            !self.spot.watches_any() || poll + grace <= Duration::from_secs(90),
            "spot.poll_interval",
            format!(
                "with a [spot] signal watched, spot.poll_interval + worker.shutdown_grace must be at most 90s (the spot notice comes 2 minutes ahead), got {} + {}",
                human(poll),
                human(grace)
            ),
        );
    }

    /// The producer's own rules for the queue it fills, and room in its buffer for a request.
    fn check_ingest_producer(&self, p: &mut Problems) {
        self.producer.check_for_queue(self.sqs.queue_url_str(), p);
        // One request's logs are taken into the producer's buffer whole, and escaping what SQS
        // refuses (U+FFFE/U+FFFF: 3 bytes become 6) can double them: a buffer smaller than that
        // would answer 503 to a request that can never fit.
        let (buffer, body) = (self.producer.buffer_bytes, self.ingest.max_body_bytes);
        p.check(
            buffer >= 2 * body,
            "producer.buffer_bytes",
            format!(
                "producer.buffer_bytes ({buffer}) must be at least twice ingest.max_body_bytes ({body}): one request is buffered whole, and escaping can double it"
            ),
        );
    }

    pub fn schema(&self) -> Schema {
        self.schema.schema()
    }

    /// The engine's config, from `[sqs]`, `[worker]` and rate.intake_horizon.
    pub fn engine_config(&self) -> EngineConfig {
        let (q, w) = (&self.sqs, &self.worker);
        EngineConfig {
            pollers: q.pollers.get(),
            max_messages: q.max_messages as usize,
            max_in_flight: w.max_in_flight,
            max_in_flight_bytes: w.max_in_flight_bytes,
            message_timeout: w.message_timeout,
            shutdown_grace: w.shutdown_grace,
            nack_backoff_base: q.nack_backoff_base,
            nack_backoff_max: q.nack_backoff_max,
            poison_nack_delay: q.poison_nack_delay,
            ack_linger: q.ack_linger,
            // A DeleteMessageBatch carries up to 10 messages, as one receive brings: one delete
            // in flight per poller keeps acks level with intake (at least 8).
            max_concurrent_acks: q.pollers.get().max(8),
            intake_horizon: Some(self.rate.intake_horizon),
            visibility_timeout: q.visibility_timeout,
            poll_wait: Duration::from_secs(u64::from(q.wait_time_seconds)),
        }
    }

    pub fn writer_config(&self) -> WriterConfig {
        self.dynamodb.writer_config()
    }

    /// The explicit table budget, when set (otherwise it is discovered).
    pub fn wcu_budget(&self) -> Option<NonZeroU32> {
        self.rate.wcu_per_second
    }
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
    fn compression_and_cache_settings_are_checked_by_name() {
        for (extra, says) in [
            (
                "[schema]\ncompression = \"zstd\"\n",
                "schema.compression is \"zstd\" but schema.dictionary_id is unset",
            ),
            ("[schema]\ndictionary_id = 0\n", "schema.dictionary_id is 0"),
            (
                "[schema]\ncompression = \"zstd\"\ndictionary_id = 7\nttl_attribute = \"_log\"\n",
                "schema.ttl_attribute is `_log`",
            ),
            (
                "[schema]\nplain_fields = [\"_log\"]\n",
                "schema.plain_fields names `_log`",
            ),
            (
                "[schema]\ncompression_level = 20\n",
                "schema.compression_level is 20",
            ),
            ("[cache]\ncapacity = 0\n", "cache.capacity is 0"),
            (
                "[cache]\nwindow = \"0s\"\n",
                "cache.window must be above zero",
            ),
            (
                "[cache]\nenabled = true\nshared = true\n",
                "cache.shared = true shares the cache in Redis: it needs rate.mode = \"redis\"",
            ),
        ] {
            let err = from_toml(&format!("{MINIMAL}\n{extra}")).unwrap_err();
            assert!(format!("{err:#}").contains(says), "{extra}: {err:#}");
        }
        let ok = from_toml(&format!(
            "{MINIMAL}\n[schema]\ncompression = \"zstd\"\ndictionary_id = 7\nplain_fields = [\"status\"]\n[cache]\nenabled = true\n"
        ))
        .unwrap();
        assert_eq!(ok.schema.dictionary_id, Some(7));
        assert!(ok.cache.enabled);
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
        assert_eq!(
            s.rate.redis.url_str(),
            "redis://:s3cret@redis.internal:6379/0"
        );
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
            "#,
        )
        .unwrap_err();
        let msg = format!("{err:#}");
        for key in [
            "sqs.max_messages",
            "dynamodb.table",
            "sqs.visibility_timeout",
        ] {
            assert!(msg.contains(key), "{key} missing from: {msg}");
        }
        let invalid = err.downcast_ref::<InvalidConfig>().expect("a list");
        assert!(invalid.names("sqs.max_messages"), "{invalid:?}");
        assert_eq!(invalid.0.len(), 3, "{invalid:?}");
        let err = from_toml("[sqs]\nwait_time_seconds = \"soon\"\n").unwrap_err();
        assert!(
            format!("{err:#}").contains("sqs.wait_time_seconds"),
            "{err:#}"
        );
    }

    #[test]
    fn values_their_types_refuse_stop_the_load_naming_the_key_and_what_is_wanted() {
        for (toml, key, says) in [
            (
                "[telemetry]\nlisten = \"localhost\"",
                "telemetry.listen",
                "must be an address like 0.0.0.0:8080",
            ),
            (
                "[ingest]\nlisten = \":8080\"",
                "ingest.listen",
                "got `:8080`",
            ),
            (
                "[sqs]\nqueue_url = \"sqs.eu-west-1.amazonaws.com/1/logs\"",
                "sqs.queue_url",
                "must be a queue URL (https://…)",
            ),
            (
                "[sqs]\ndead_letter_queue_url = \"ftp://q/dlq\"",
                "sqs.dead_letter_queue_url",
                "must be a queue URL (https://…), got `ftp://q/dlq`",
            ),
            ("[sqs]\npollers = 0", "sqs.pollers", "nonzero"),
            (
                "[dynamodb]\nmax_concurrent_requests = 0",
                "dynamodb.max_concurrent_requests",
                "nonzero",
            ),
            (
                "[rate]\nwcu_per_second = 0",
                "rate.wcu_per_second",
                "nonzero",
            ),
            (
                "[rate]\non_demand_wcu_per_second = 0",
                "rate.on_demand_wcu_per_second",
                "nonzero",
            ),
            (
                "[rate]\nexpected_replicas = 0",
                "rate.expected_replicas",
                "nonzero",
            ),
            (
                "[rate.redis]\nurl = \"redis-host\"",
                "rate.redis.url",
                "not a URL",
            ),
            (
                "[ingest]\nrate_per_key = 0",
                "ingest.rate_per_key",
                "nonzero",
            ),
            (
                "[ingest]\nmax_connections = 0",
                "ingest.max_connections",
                "nonzero",
            ),
            (
                "[ingest]\napi_keys = [{ name = \"a\", sha256 = \"abc\" }]",
                "ingest.api_keys[0].sha256",
                "must be 64 hex digits",
            ),
            (
                "[kafka]\nauto_offset_reset = \"newest\"",
                "kafka.auto_offset_reset",
                "expected `earliest` or `latest`",
            ),
            (
                "[kafka]\nbuffer_records = 0",
                "kafka.buffer_records",
                "nonzero",
            ),
            (
                "[producer]\nfull_policy = \"drop\"",
                "producer.full_policy",
                "expected `block` or `shed`",
            ),
        ] {
            let msg = format!("{:#}", from_toml(toml).unwrap_err());
            assert!(
                msg.contains(&format!("invalid config at `{key}`: ")) && msg.contains(says),
                "{toml}: {msg}"
            );
        }
    }

    /// Loads with these variables as the whole environment, and validates.
    fn from_env(vars: &[(&str, &str)]) -> Result<Settings> {
        let env = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        deserialize(raw(None, Some(env))?)
    }

    #[test]
    fn typed_values_come_from_the_environment_too() {
        let s = from_env(&[
            (
                "SLUICE__SQS__QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/logs",
            ),
            (
                "SLUICE__SQS__DEAD_LETTER_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/1/logs-dlq",
            ),
            ("SLUICE__SQS__POLLERS", "6"),
            ("SLUICE__DYNAMODB__TABLE", "request-logs"),
            ("SLUICE__DYNAMODB__MAX_CONCURRENT_REQUESTS", "3"),
            ("SLUICE__RATE__WCU_PER_SECOND", "500"),
            ("SLUICE__RATE__ON_DEMAND_WCU_PER_SECOND", "900"),
            ("SLUICE__RATE__EXPECTED_REPLICAS", "2"),
            ("SLUICE__RATE__REDIS__URL", "redis://redis.internal:6379/0"),
            ("SLUICE__TELEMETRY__LISTEN", "0.0.0.0:9000"),
            ("SLUICE__INGEST__LISTEN", "[::]:8443"),
            ("SLUICE__INGEST__RATE_PER_KEY", "7"),
            ("SLUICE__INGEST__BURST_PER_KEY", "70"),
            ("SLUICE__INGEST__MAX_LOGS_PER_REQUEST", "100"),
            ("SLUICE__INGEST__MAX_CONNECTIONS", "10"),
            ("SLUICE__KAFKA__AUTO_OFFSET_RESET", "latest"),
            ("SLUICE__KAFKA__BUFFER_RECORDS", "50"),
            ("SLUICE__PRODUCER__FULL_POLICY", "shed"),
        ])
        .unwrap();
        assert_eq!(
            s.sqs.queue_url_str(),
            "https://sqs.eu-west-1.amazonaws.com/1/logs"
        );
        assert_eq!(
            s.sqs.dead_letter_queue_url_string().as_deref(),
            Some("https://sqs.eu-west-1.amazonaws.com/1/logs-dlq")
        );
        assert_eq!(s.sqs.pollers.get(), 6);
        assert_eq!(s.dynamodb.max_concurrent_requests.get(), 3);
        assert_eq!(s.wcu_budget().map(NonZeroU32::get), Some(500));
        assert_eq!(
            s.rate.on_demand_wcu_per_second.map(NonZeroU32::get),
            Some(900)
        );
        assert_eq!(s.rate.share(), 0.5);
        assert_eq!(s.rate.redis.url_str(), "redis://redis.internal:6379/0");
        assert_eq!(s.telemetry.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.ingest.listen.to_string(), "[::]:8443");
        assert_eq!(
            (s.ingest.rate_per_key.get(), s.ingest.burst_per_key.get()),
            (7, 70)
        );
        assert_eq!(s.ingest.max_logs_per_request.get(), 100);
        assert_eq!(s.ingest.max_connections.get(), 10);
        assert_eq!(s.kafka.auto_offset_reset, sluice_kafka::OffsetReset::Latest);
        assert_eq!(s.kafka.kafka_config().buffer_records, 50);
        assert_eq!(s.producer.full_policy, sluice_producer::FullPolicy::Shed);
        for (var, value, key) in [
            ("SLUICE__SQS__POLLERS", "0", "sqs.pollers"),
            ("SLUICE__TELEMETRY__LISTEN", "9464", "telemetry.listen"),
            ("SLUICE__SQS__QUEUE_URL", "logs", "sqs.queue_url"),
            (
                "SLUICE__KAFKA__AUTO_OFFSET_RESET",
                "oldest",
                "kafka.auto_offset_reset",
            ),
        ] {
            let msg = format!("{:#}", from_env(&[(var, value)]).unwrap_err());
            assert!(msg.contains(&format!("`{key}`")), "{var}={value}: {msg}");
        }
        // An empty queue URL is an unset one, as before it was typed.
        let msg = format!(
            "{:#}",
            from_env(&[("SLUICE__SQS__QUEUE_URL", "")]).unwrap_err()
        );
        assert!(msg.contains("sqs.queue_url is required"), "{msg}");
    }

    #[test]
    fn a_bad_digest_in_the_api_keys_file_names_the_file_line_and_key() {
        let file = std::env::temp_dir().join(format!("sluice-keys-{}", std::process::id()));
        std::fs::write(
            &file,
            format!("# keys\nops {}\nci nothex\n", "ab".repeat(32)),
        )
        .unwrap();
        let msg = format!("{:#}", read_api_keys_file(&file).unwrap_err());
        assert!(
            msg.contains("line 3: key `ci`: sha256 must be 64 hex digits"),
            "{msg}"
        );
        std::fs::write(&file, format!("ops {}\n", "AB".repeat(32))).unwrap();
        assert_eq!(read_api_keys_file(&file).unwrap()[0].sha256, [0xab; 32]);
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn required_keys_are_required() {
        let msg = format!("{:#}", from_toml("").unwrap_err());
        assert!(msg.contains("sqs.queue_url is required"), "{msg}");
        assert!(msg.contains("dynamodb.table is required"), "{msg}");
    }
}
