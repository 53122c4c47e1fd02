//! Offsets of a consumer group: where it stands (`sluice kafka lag`) and moving it back so a
//! time range is processed again (`sluice kafka replay`). Blocking calls: run them off the
//! async runtime.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::KafkaConfig;

/// One partition of a group's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The topic's name.
    pub topic: String,
    /// The partition's number within the topic (from 0).
    pub partition: i32,
    /// The group's committed offset (None: nothing committed yet).
    pub committed: Option<i64>,
    /// The partition's first and one-past-last offsets.
    pub low: i64,
    /// One past the partition's last offset: the offset the next record written will get.
    pub high: i64,
}

impl PartitionOffsets {
    /// Records the group has not committed past.
    pub fn lag(&self) -> i64 {
        self.high - self.committed.unwrap_or(self.low).max(self.low)
    }
}

/// Where to move a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// The first offset whose timestamp is at or after this (epoch milliseconds).
    Timestamp(i64),
    /// This offset (clamped to what the partition still holds).
    Offset(i64),
}

/// Why an admin operation (offsets, replay, topic creation, a keyed produce) failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// librdkafka refused or failed the call (broker unreachable, timeout, authorisation); its
    /// error kept whole.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A failure sluice found itself, told in words: a topic missing from the metadata, a topic
    /// the broker would not create, new offsets refused (a sluice of the group is likely still
    /// running), or a produce whose delivery was never reported.
    #[error("{0}")]
    Other(String),
}

fn client(config: &KafkaConfig, group: &str) -> Result<BaseConsumer, AdminError> {
    let mut c = config.client_config();
    c.set("group.id", group).set("enable.auto.commit", "false");
    Ok(c.create()?)
}

/// Every partition of `topics` with the group's committed offset and the partition's bounds.
pub fn offsets(
    config: &KafkaConfig,
    group: &str,
    topics: &[String],
    timeout: Duration,
) -> Result<Vec<PartitionOffsets>, AdminError> {
    let consumer = client(config, group)?;
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| AdminError::Other(format!("topic `{topic}` not found")))?;
        if let Some(e) = t.error() {
            return Err(AdminError::Other(format!("topic `{topic}`: {e:?}")));
        }
        for p in t.partitions() {
            tpl.add_partition(topic, p.id());
        }
    }
    let committed = consumer.committed_offsets(tpl.clone(), timeout)?;
    let mut out = Vec::new();
    for e in tpl.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let c = committed
            .find_partition(e.topic(), e.partition())
            .and_then(|c| match c.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            });
        out.push(PartitionOffsets {
            topic: e.topic().to_owned(),
            partition: e.partition(),
            committed: c,
            low,
            high,
        });
    }
    drop(committed);
    drop(tpl);
    out.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(out)
}

/// The offsets `from` resolves to, per partition of `current` (nothing is changed).
pub fn resolve(
    config: &KafkaConfig,
    group: &str,
    current: &[PartitionOffsets],
    from: ReplayFrom,
    timeout: Duration,
) -> Result<Vec<(PartitionOffsets, i64)>, AdminError> {
    match from {
        ReplayFrom::Offset(o) => Ok(current
            .iter()
            .map(|p| (p.clone(), o.clamp(p.low, p.high)))
            .collect()),
        ReplayFrom::Timestamp(ts) => {
            let consumer = client(config, group)?;
            let mut tpl = TopicPartitionList::new();
            for p in current {
                tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(ts))?;
            }
            let found = consumer.offsets_for_times(tpl, timeout)?;
            let out = current
                .iter()
                .map(|p| {
                    // No record at or after the time: the end (nothing to replay there).
                    let o = found
                        .find_partition(&p.topic, p.partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .unwrap_or(p.high);
                    (p.clone(), o.clamp(p.low, p.high))
                })
                .collect();
            drop(found);
            Ok(out)
        }
    }
}

/// Commits `targets` for the group. The group must have no active member (stop the workers
/// first): Kafka refuses commits from outside a live group.
pub fn commit(
    config: &KafkaConfig,
    group: &str,
    targets: &[(PartitionOffsets, i64)],
) -> Result<(), AdminError> {
    let consumer = client(config, group)?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in targets {
        tpl.add_partition_offset(&p.topic, p.partition, Offset::Offset(*o))?;
    }
    let result = consumer.commit(&tpl, rdkafka::consumer::CommitMode::Sync);
    drop(tpl);
    result.map_err(|e| {
        AdminError::Other(format!(
            "the broker refused the new offsets ({e}); is a sluice still running in group `{group}`? Stop every worker of the group, then replay"
        ))
    })
}

/// Creates topics (name, partitions) with replication 1, for demos and tests; a topic that
/// already exists is fine.
pub async fn create_topics(config: &KafkaConfig, topics: &[(&str, i32)]) -> Result<(), AdminError> {
    create_topics_replicated(config, topics, 1).await
}

/// Creates each `(topic, partitions)` with `replication` copies of every partition; a topic that
/// already exists is left as it is.
pub async fn create_topics_replicated(
    config: &KafkaConfig,
    topics: &[(&str, i32)],
    replication: i32,
) -> Result<(), AdminError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    let admin: AdminClient<DefaultClientContext> = config.client_config().create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(AdminError::Other(format!(
                    "cannot create topic `{topic}`: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// Produces `(key, payload)` records to `topic`, all enqueued at once; returns each record's
/// (partition, offset) in order. For demos and tests.
pub async fn produce_keyed(
    config: &KafkaConfig,
    topic: &str,
    records: &[(String, String)],
) -> Result<Vec<(i32, i64)>, AdminError> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = config.client_config().set("linger.ms", "5").create()?;
    let mut pending = Vec::with_capacity(records.len());
    for (key, payload) in records {
        let delivery = producer
            .send_result(FutureRecord::to(topic).key(key).payload(payload))
            .map_err(|(e, _)| AdminError::Kafka(e))?;
        pending.push(delivery);
    }
    let mut out = Vec::with_capacity(records.len());
    for delivery in pending {
        let d = delivery
            .await
            .map_err(|_| AdminError::Other("the producer went away".into()))?
            .map_err(|(e, _)| AdminError::Kafka(e))?;
        out.push((d.partition, d.offset));
    }
    Ok(out)
}
