//! The EC2 spot interruption notice: two minutes before a spot instance is reclaimed, IMDSv2
//! answers `/latest/meta-data/spot/instance-action` with `{"action": "terminate", "time": …}`
//! (404 until then). When `spot.enabled`, sluice polls it every `spot.poll_interval` through the
//! AWS SDK's IMDS client (which honours AWS_EC2_METADATA_SERVICE_ENDPOINT) and, on a notice,
//! drains exactly as on SIGTERM: stop receiving, finish within worker.shutdown_grace (which the
//! config keeps well under the two minutes), return the rest to the queue, flush acks, exit 0.

use sluice_common::catalog;
use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use tokio_util::sync::CancellationToken;

const PATH: &str = "/latest/meta-data/spot/instance-action";

pub async fn watch(poll_interval: Duration, shutdown: CancellationToken) {
    let client = aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build();
    tracing::info!(
        poll_s = poll_interval.as_secs_f64(),
        "watching for spot interruption notices"
    );
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(poll_interval) => {}
        }
        match client.get(PATH).await {
            Ok(notice) => {
                let notice = notice.as_ref().to_string();
                let parsed: serde_json::Value = serde_json::from_str(&notice).unwrap_or_default();
                metrics::counter!(catalog::SPOT_NOTICES_TOTAL).increment(1);
                tracing::warn!(
                    action = parsed["action"].as_str().unwrap_or("?"),
                    time = parsed["time"].as_str().unwrap_or("?"),
                    "spot interruption notice: draining now"
                );
                shutdown.cancel();
                return;
            }
            Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => {
                failures = 0; // no notice: the normal answer
            }
            Err(error) => {
                failures += 1;
                metrics::counter!(catalog::SPOT_POLL_ERRORS_TOTAL).increment(1);
                // Once, then every 60th failure: off EC2 this would say the same thing forever.
                if failures == 1 || failures.is_multiple_of(60) {
                    tracing::warn!(%error, failures, "cannot read the spot interruption notice from IMDS");
                }
            }
        }
    }
}
