//! The Kafka transport (feature `kafka`): the same producer, with Kafka as the buffer.
//!
//! Kafka batches and compresses by itself, so a packed message is unpacked again here: each log
//! becomes one record keyed by its request id (`key_field`), which spreads the logs over the
//! partitions and keeps every version of one request in one partition. With a FIFO group
//! (`ProducerConfig::fifo`), the message stays whole and the group is the key: the group's logs
//! stay in order in one partition.
//!
//! A message counts as sent when every record of it is acknowledged (acks=all, idempotent
//! producer). If some are not, the whole message is retried or spooled; records that did land
//! are sent twice, which the consumer's idempotent upserts absorb.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{EntryOutcome, OutMessage, SendFuture, Transport, TransportError, TransportErrorKind};

/// A [`Transport`] to one Kafka topic: each log of a message is one record keyed by its
/// `key_field`, or, for a FIFO group, the message is one record keyed by the group. A message is
/// sent only once every record of it is acknowledged (acks=all).
pub struct KafkaTransport {
    producer: FutureProducer,
    topic: String,
    key_field: String,
}

impl KafkaTransport {
    /// `config` carries bootstrap.servers and any TLS/SASL settings; acks=all and idempotence
    /// are set here.
    pub fn new(mut config: ClientConfig, topic: &str, key_field: &str) -> Result<Self, KafkaError> {
        let producer = config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // Bounded: past this, a send fails and the producer's retries and spool take over.
            .set("message.timeout.ms", "10000")
            .create()?;
        Ok(KafkaTransport {
            producer,
            topic: topic.to_owned(),
            key_field: key_field.to_owned(),
        })
    }

    /// The records of one message: (key, payload).
    fn records<'m>(&self, m: &'m OutMessage) -> Vec<(Option<String>, &'m str)> {
        if let Some(group) = &m.group_id {
            return vec![(Some(group.clone()), m.body.as_str())];
        }
        m.body
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                let key = serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| match v.get(&self.key_field) {
                        Some(serde_json::Value::String(s)) => Some(s.clone()),
                        Some(serde_json::Value::Null) | None => None,
                        Some(other) => Some(other.to_string()),
                    });
                (key, line)
            })
            .collect()
    }
}

fn classify(e: &KafkaError) -> EntryOutcome {
    match e.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::TopicAuthorizationFailed,
        ) => EntryOutcome::Rejected(e.to_string()),
        _ => EntryOutcome::Retry(e.to_string()),
    }
}

impl Transport for KafkaTransport {
    fn send<'a>(&'a self, batch: &'a [OutMessage]) -> SendFuture<'a> {
        Box::pin(async move {
            // Enqueue everything first (librdkafka sends in the background), then collect.
            let mut pending = Vec::with_capacity(batch.len());
            for m in batch {
                let mut deliveries = Vec::new();
                let mut failed: Option<EntryOutcome> = None;
                for (key, payload) in self.records(m) {
                    let mut record = FutureRecord::to(&self.topic).payload(payload);
                    if let Some(k) = &key {
                        record = record.key(k);
                    }
                    match self.producer.send_result(record) {
                        Ok(d) => deliveries.push(d),
                        Err((e, _)) => {
                            let kind =
                                if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) {
                                    EntryOutcome::Retry(format!(
                                        "the Kafka producer queue is full: {e}"
                                    ))
                                } else {
                                    classify(&e)
                                };
                            failed = Some(kind);
                            break;
                        }
                    }
                }
                pending.push((deliveries, failed));
            }
            let mut outcomes = Vec::with_capacity(batch.len());
            for (deliveries, failed) in pending {
                let mut outcome = failed.unwrap_or(EntryOutcome::Sent);
                for d in deliveries {
                    let result = tokio::time::timeout(Duration::from_secs(30), d).await;
                    let this = match result {
                        Ok(Ok(Ok(_))) => EntryOutcome::Sent,
                        Ok(Ok(Err((e, _)))) => classify(&e),
                        Ok(Err(_)) | Err(_) => {
                            EntryOutcome::Retry("no delivery report from Kafka".into())
                        }
                    };
                    // The worst outcome of the message's records wins.
                    outcome = match (outcome, this) {
                        (EntryOutcome::Rejected(r), _) | (_, EntryOutcome::Rejected(r)) => {
                            EntryOutcome::Rejected(r)
                        }
                        (EntryOutcome::Retry(r), _) | (_, EntryOutcome::Retry(r)) => {
                            EntryOutcome::Retry(r)
                        }
                        _ => EntryOutcome::Sent,
                    };
                }
                outcomes.push(outcome);
            }
            // Nothing got through: the buffer is unreachable (the producer spools).
            if !outcomes.is_empty() && outcomes.iter().all(|o| matches!(o, EntryOutcome::Retry(_)))
            {
                let why = match &outcomes[0] {
                    EntryOutcome::Retry(r) => r.clone(),
                    _ => String::new(),
                };
                return Err(TransportError {
                    kind: TransportErrorKind::Unavailable,
                    message: format!("Kafka topic {}: {why}", self.topic),
                });
            }
            Ok(outcomes)
        })
    }
}
