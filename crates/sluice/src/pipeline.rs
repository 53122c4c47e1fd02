//! Wiring: settings and SDK configs into a running engine (SQS source → writer → DynamoDB).

use std::sync::Arc;

use anyhow::{Result, anyhow};
use aws_config::SdkConfig;
use sluice_core::{Engine, EngineStats, StatsSnapshot, WcuLimiter, Writer, WriterStats};
use sluice_dynamodb::DynamoDbWriter;
use sluice_sqs::{SqsSource, SqsSourceConfig};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

pub struct Pipeline {
    engine: Engine<SqsSource>,
    writer_stats: Arc<WriterStats>,
    writer_task: JoinHandle<()>,
}

/// The queue must exist, and a message must stay invisible longer than sluice may work on it:
/// otherwise a message still being written is delivered again to another worker.
async fn check_visibility(settings: &Settings, sqs: &aws_sdk_sqs::Client) -> Result<()> {
    let queue = sluice_sqs::admin::visibility_timeout(sqs, &settings.sqs.queue_url)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot read queue `{}` (sqs.queue_url): {e}",
                settings.sqs.queue_url
            )
        })?;
    let effective = settings.sqs.visibility_timeout.unwrap_or(queue);
    if settings.worker.message_timeout >= effective {
        anyhow::bail!(
            "worker.message_timeout ({}) must be shorter than the visibility timeout ({}, {}): \
             lower worker.message_timeout or set sqs.visibility_timeout",
            humantime::format_duration(settings.worker.message_timeout),
            humantime::format_duration(effective),
            if settings.sqs.visibility_timeout.is_some() {
                "sqs.visibility_timeout"
            } else {
                "the queue's own VisibilityTimeout"
            },
        );
    }
    Ok(())
}

impl Pipeline {
    /// Builds the pipeline; checks the table first when `dynamodb.check_table` is on.
    pub async fn build(settings: &Settings, sqs: &SdkConfig, dynamodb: &SdkConfig) -> Result<Self> {
        let table_writer = DynamoDbWriter::new(
            sluice_dynamodb::writer_client(dynamodb),
            &settings.dynamodb.table,
            &settings.schema.key_attribute,
        );
        if settings.dynamodb.check_table {
            table_writer.check_table().await.map_err(|e| anyhow!(e))?;
        }
        let sqs_client = aws_sdk_sqs::Client::new(sqs);
        check_visibility(settings, &sqs_client).await?;
        let limiter = match settings.wcu_budget() {
            Some(budget) => WcuLimiter::try_new(budget, settings.rate.burst_seconds)
                .map_err(|e| anyhow!("rate.burst_seconds: {e}"))?,
            None => {
                tracing::warn!(
                    "rate.wcu_per_second is not set: writes are not paced and a provisioned table may throttle"
                );
                WcuLimiter::unlimited()
            }
        };
        let (writer, writer_task) = Writer::spawn(
            Arc::new(table_writer),
            Arc::new(limiter),
            settings.writer_config(),
        );
        let source = SqsSource::new(
            sqs_client,
            SqsSourceConfig {
                queue_url: settings.sqs.queue_url.clone(),
                wait_time_seconds: settings.sqs.wait_time_seconds,
                visibility_timeout: settings.sqs.visibility_timeout,
            },
        );
        let writer_stats = writer.stats();
        let engine = Engine::new(
            Arc::new(source),
            writer,
            settings.schema(),
            settings.engine_config(),
        );
        Ok(Pipeline {
            engine,
            writer_stats,
            writer_task,
        })
    }

    pub fn stats(&self) -> Arc<EngineStats> {
        self.engine.stats()
    }

    pub fn writer_stats(&self) -> Arc<WriterStats> {
        self.writer_stats.clone()
    }

    /// Runs until `shutdown`, drains, and returns the final counts.
    pub async fn run(self, shutdown: CancellationToken) -> StatsSnapshot {
        let snapshot = self.engine.run(shutdown).await;
        let _ = self.writer_task.await;
        snapshot
    }
}
