//! Producers built from the config, for `sluice ingest` and the load generator: one publishing
//! to Kafka, and the SQS producer's packing fitted to the queue.

use anyhow::{Context, Result, anyhow};
use sluice_producer::Producer;
use sluice_producer::sqs::SqsTransport;

/// A producer publishing to `producer.kafka_topic` (brokers and properties from `[kafka]`). With
/// `groups`, logs are keyed by their `tenant` FIFO group instead of their request id.
pub fn kafka_producer(s: &crate::config::Settings, groups: bool) -> Result<(Producer, String)> {
    let topic = s
        .producer
        .kafka_topic
        .clone()
        .ok_or_else(|| anyhow!("producer.kafka_topic is not set"))?;
    let mut config = s.producer.producer_config("");
    if groups {
        config.fifo = true;
        config.group_field.get_or_insert_with(|| "tenant".into());
    }
    let transport = sluice_producer::kafka::KafkaTransport::new(
        s.kafka.kafka_config().client_config(),
        &topic,
        &s.producer.kafka_key_field,
    )
    .with_context(|| {
        format!(
            "cannot create the Kafka producer (kafka.brokers `{}`)",
            s.kafka.brokers
        )
    })?;
    let producer = Producer::start(config, transport).map_err(|e| anyhow!("producer: {e}"))?;
    Ok((producer, format!("kafka {} topic {topic}", s.kafka.brokers)))
}

/// The producer's packing, capped at the queue's own MaximumMessageSize (read now): a queue set
/// below 1 MiB would refuse every message packed above it.
pub async fn capped_by_queue(
    mut config: sluice_producer::ProducerConfig,
    transport: &SqsTransport,
) -> sluice_producer::ProducerConfig {
    match transport.max_message_bytes().await {
        Ok(max) if max < config.max_message_bytes => {
            tracing::info!(
                queue_max = max,
                configured = config.max_message_bytes,
                "packing messages up to the queue's MaximumMessageSize"
            );
            config.max_message_bytes = max;
        }
        Ok(_) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot read the queue's MaximumMessageSize; packing to producer.max_message_bytes")
        }
    }
    config
}
