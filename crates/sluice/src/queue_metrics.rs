//! Queue depth gauges: what the dashboards, the alerts and KEDA look at, from sluice's own
//! /metrics, so a scaling decision and the graph that explains it show the same numbers.
//!
//! Every [`POLL_INTERVAL`] the source queue's GetQueueAttributes is read, and so is its dead-letter
//! queue's, found through the source's `RedrivePolicy` (`deadLetterTargetArn` → queue name and
//! owner → GetQueueUrl). They are exported as
//! `sluice_queue_messages{queue="source"|"dlq", state="visible"|"in_flight"|"delayed"}`
//! (SQS's ApproximateNumberOfMessages, …NotVisible and …Delayed). Every instance of a fleet
//! reports the same queue, so aggregate with `max`, never `sum`.
//!
//! This costs 2 SQS requests per interval per instance. It needs `sqs:GetQueueAttributes` on both
//! queues and `sqs:GetQueueUrl` on the DLQ (deploy/iam/). A failed read is logged and counted in
//! `sluice_queue_attribute_errors_total{queue}`; the gauges keep their last value, and the
//! workers are never affected.

use std::time::Duration;

use aws_sdk_sqs::Client;
use sluice_sqs::admin;

use crate::events::QueueAttributesFailed;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How often the queues' attributes are read. SQS's approximate counts themselves lag by about
/// a minute, so polling faster would show nothing new.
pub const POLL_INTERVAL: Duration = Duration::from_secs(15);

pub use sluice_common::catalog::{
    QUEUE_ATTRIBUTE_ERRORS_TOTAL as QUEUE_ATTRIBUTE_ERRORS, QUEUE_MESSAGES,
};

pub use sluice_sqs::admin::QueueCounts;

/// Sets `sluice_queue_messages{queue, state}` from one queue's counts.
fn export(counts: &QueueCounts, queue: &'static str) {
    for (state, value) in [
        ("visible", counts.visible),
        ("in_flight", counts.in_flight),
        ("delayed", counts.delayed),
    ] {
        metrics::gauge!(QUEUE_MESSAGES, "queue" => queue, "state" => state).set(value as f64);
    }
}

/// Starts the poller: one read at once, then every [`POLL_INTERVAL`], until `stop`.
pub fn spawn(client: Client, queue_url: String, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut poller = QueuePoller::new(client, queue_url);
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = poller.poll_once() => {}
            }
        }
    })
}

/// Reads the queues' counts and keeps the DLQ's URL between reads.
pub struct QueuePoller {
    client: Client,
    queue_url: String,
    /// The DLQ's ARN and URL, re-resolved when the redrive policy names another ARN.
    dlq: Option<(String, String)>,
}

impl QueuePoller {
    pub fn new(client: Client, queue_url: String) -> Self {
        QueuePoller {
            client,
            queue_url,
            dlq: None,
        }
    }

    /// One read of both queues; exports the gauges and returns the counts (for tests).
    pub async fn poll_once(&mut self) -> (Option<QueueCounts>, Option<QueueCounts>) {
        let source = match admin::counts(&self.client, &self.queue_url, true).await {
            Ok((counts, redrive)) => {
                export(&counts, "source");
                self.follow_redrive(redrive.as_deref()).await;
                Some(counts)
            }
            Err(error) => {
                QueueAttributesFailed::Source {
                    queue_url: &self.queue_url,
                    error: &error,
                }
                .emit();
                None
            }
        };
        let dlq = match &self.dlq {
            Some((_, url)) => match admin::counts(&self.client, url, false).await {
                Ok((counts, _)) => {
                    export(&counts, "dlq");
                    Some(counts)
                }
                Err(error) => {
                    QueueAttributesFailed::DeadLetter {
                        dlq_url: url,
                        error: &error,
                    }
                    .emit();
                    // Resolve it again next time: it may have been deleted and recreated.
                    self.dlq = None;
                    None
                }
            },
            None => None,
        };
        (source, dlq)
    }

    async fn follow_redrive(&mut self, redrive: Option<&str>) {
        let Some(arn) = redrive.and_then(admin::dead_letter_target_arn) else {
            self.dlq = None; // no DLQ configured (or it was removed)
            return;
        };
        if self.dlq.as_ref().is_some_and(|(known, _)| *known == arn) {
            return;
        }
        match admin::queue_url_of_arn(&self.client, &arn).await {
            Ok(url) => {
                tracing::info!(
                    dlq_url = %url,
                    "found the dead-letter queue through the redrive policy"
                );
                self.dlq = Some((arn, url));
            }
            Err(error) => {
                QueueAttributesFailed::DeadLetterNotFound {
                    arn: &arn,
                    error: &error,
                }
                .emit();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_sqs::types::QueueAttributeName;

    /// Against sluice-sim, through the real SDK: the source's counts, then the DLQ found
    /// through its RedrivePolicy.
    #[tokio::test]
    async fn reads_the_source_and_finds_its_dlq_through_the_redrive_policy() {
        use aws_config::{BehaviorVersion, Region};
        let sim = sluice_sim::SimServer::start(
            "127.0.0.1:0".parse().unwrap(),
            sluice_sim::SimConfig::default(),
        )
        .await
        .unwrap();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .endpoint_url(sim.endpoint())
            .region(Region::new("us-east-1"))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "test", "test", None, None, "tests",
            ))
            .load()
            .await;
        let sqs = Client::new(&sdk);
        let dlq = sqs
            .create_queue()
            .queue_name("qm-dlq")
            .send()
            .await
            .unwrap();
        let dlq_url = dlq.queue_url().unwrap().to_string();
        let dlq_arn = sqs
            .get_queue_attributes()
            .queue_url(&dlq_url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .unwrap()[&QueueAttributeName::QueueArn]
            .clone();
        let plain = sqs
            .create_queue()
            .queue_name("qm-plain")
            .send()
            .await
            .unwrap();
        let source = sqs
            .create_queue()
            .queue_name("qm-source")
            .attributes(
                QueueAttributeName::RedrivePolicy,
                serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 3})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        let source_url = source.queue_url().unwrap().to_string();
        for (url, n) in [(&source_url, 3), (&dlq_url, 2)] {
            for i in 0..n {
                sqs.send_message()
                    .queue_url(url)
                    .message_body(format!("m{i}"))
                    .send()
                    .await
                    .unwrap();
            }
        }
        sqs.send_message()
            .queue_url(&source_url)
            .message_body("later")
            .delay_seconds(60)
            .send()
            .await
            .unwrap();
        sqs.receive_message()
            .queue_url(&source_url)
            .max_number_of_messages(1)
            .send()
            .await
            .unwrap();

        let mut poller = QueuePoller::new(sqs.clone(), source_url);
        let (s, d) = poller.poll_once().await;
        assert_eq!(
            s,
            Some(QueueCounts {
                visible: 2,
                in_flight: 1,
                delayed: 1
            })
        );
        assert_eq!(
            d,
            Some(QueueCounts {
                visible: 2,
                in_flight: 0,
                delayed: 0
            })
        );
        assert_eq!(
            poller.dlq.as_ref().map(|(_, u)| u.as_str()),
            Some(dlq_url.as_str())
        );

        let mut without = QueuePoller::new(sqs, plain.queue_url().unwrap().to_string());
        let (s, d) = without.poll_once().await;
        assert_eq!(s, Some(QueueCounts::default()));
        assert_eq!(d, None);
        sim.stop();
    }
}
