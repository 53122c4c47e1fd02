//! The ways an EC2 instance goes away, each turned into a drain. With its `[spot]` switch on,
//! sluice polls IMDSv2 (through the AWS SDK's IMDS client, which honours
//! AWS_EC2_METADATA_SERVICE_ENDPOINT) every `spot.poll_interval` for:
//!
//! - **the spot interruption notice** (`spot.enabled`): `spot/instance-action` answers
//!   `{"action": "terminate", "time": …}` two minutes before EC2 reclaims the instance (404 until
//!   then);
//! - **the rebalance recommendation** (`spot.rebalance`): `events/recommendations/rebalance`
//!   answers `{"noticeTime": …}` when EC2 sees the instance at elevated risk, usually well before
//!   a notice. An Auto Scaling group with capacity rebalancing launches a replacement and then
//!   terminates this instance;
//! - **Auto Scaling scale-in** (`spot.scale_in`): `autoscaling/target-lifecycle-state` turns
//!   `Terminated` when the group has picked this instance to end (a scale-in, a rebalance
//!   replacement, an instance refresh). The group's termination lifecycle hook holds the
//!   instance in `Terminating:Wait` until sluice, having drained, completes the action
//!   (CONTINUE), so the instance ends as soon as the drain is done.
//!
//! The first signal seen cancels `shutdown`: stop receiving, finish within
//! worker.shutdown_grace, return the rest to the queue, flush acks. After the drain, `run` calls
//! [`complete_lifecycle_action`] when scale-in is watched (on a rebalance drain it first waits,
//! idle, for the group to pick this instance: [`wait_for_termination`]).

use sluice_common::catalog;
use std::time::Duration;

use aws_config::imds::client::error::ImdsError;
use tokio_util::sync::CancellationToken;

use crate::config::SpotSettings;

const INTERRUPTION: &str = "/latest/meta-data/spot/instance-action";
const REBALANCE: &str = "/latest/meta-data/events/recommendations/rebalance";
const LIFECYCLE_STATE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";
const INSTANCE_ID: &str = "/latest/meta-data/instance-id";
const GROUP_TAG: &str = "/latest/meta-data/tags/instance/aws:autoscaling:groupName";

/// Which signal started the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// The two-minute spot interruption notice.
    Interruption,
    /// The rebalance recommendation.
    Rebalance,
    /// Auto Scaling picked this instance to terminate.
    ScaleIn,
}

impl Departure {
    /// The `signal` label of sluice_spot_poll_errors_total, and the log's name for it.
    pub fn label(self) -> &'static str {
        match self {
            Departure::Interruption => "interruption",
            Departure::Rebalance => "rebalance",
            Departure::ScaleIn => "scale_in",
        }
    }
}

fn imds_client() -> aws_config::imds::Client {
    aws_config::imds::Client::builder()
        .max_attempts(1)
        .connect_timeout(Duration::from_secs(1))
        .read_timeout(Duration::from_secs(1))
        .build()
}

/// One IMDS read: Ok(None) on 404, the path's normal answer while there is nothing to say.
async fn read(client: &aws_config::imds::Client, path: &str) -> Result<Option<String>, ImdsError> {
    match client.get(path).await {
        Ok(body) => Ok(Some(body.as_ref().to_string())),
        Err(ImdsError::ErrorResponse(r)) if r.response().status().as_u16() == 404 => Ok(None),
        Err(error) => Err(error),
    }
}

/// Counts IMDS failures of one signal's path and logs the first, then every 60th (off EC2 this
/// would say the same thing forever).
#[derive(Default)]
struct Failures([u32; 3]);

impl Failures {
    fn record(&mut self, signal: Departure, error: &ImdsError) {
        let n = &mut self.0[signal as usize];
        *n += 1;
        metrics::counter!(catalog::SPOT_POLL_ERRORS_TOTAL, "signal" => signal.label()).increment(1);
        if *n == 1 || n.is_multiple_of(60) {
            tracing::warn!(%error, failures = *n, signal = signal.label(), "cannot read a departure signal from IMDS");
        }
    }

    fn clear(&mut self, signal: Departure) {
        self.0[signal as usize] = 0;
    }
}

/// What one look at `signal`'s path found: whether the instance is going.
async fn look(
    client: &aws_config::imds::Client,
    signal: Departure,
    failures: &mut Failures,
) -> bool {
    let path = match signal {
        Departure::Interruption => INTERRUPTION,
        Departure::Rebalance => REBALANCE,
        Departure::ScaleIn => LIFECYCLE_STATE,
    };
    let body = match read(client, path).await {
        Ok(body) => {
            failures.clear(signal);
            body
        }
        Err(error) => {
            failures.record(signal, &error);
            return false;
        }
    };
    let Some(body) = body else { return false };
    let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match signal {
        Departure::Interruption => {
            metrics::counter!(catalog::SPOT_NOTICES_TOTAL).increment(1);
            tracing::warn!(
                action = parsed["action"].as_str().unwrap_or("?"),
                time = parsed["time"].as_str().unwrap_or("?"),
                "spot interruption notice: draining now"
            );
            true
        }
        Departure::Rebalance => {
            metrics::counter!(catalog::REBALANCE_RECOMMENDATIONS_TOTAL).increment(1);
            tracing::warn!(
                notice_time = parsed["noticeTime"].as_str().unwrap_or("?"),
                "rebalance recommendation: draining now"
            );
            true
        }
        // InService, Pending, Warmed:*, Standby…: only Terminated means this instance is going.
        Departure::ScaleIn if body.trim() == "Terminated" => {
            metrics::counter!(catalog::SCALE_IN_NOTICES_TOTAL).increment(1);
            tracing::warn!(
                "Auto Scaling is terminating this instance (target lifecycle state Terminated): draining now"
            );
            true
        }
        Departure::ScaleIn => false,
    }
}

/// Polls the watched signals until one comes (cancels `shutdown`, returns it) or `shutdown` is
/// cancelled for another reason (returns None).
pub async fn watch(settings: SpotSettings, shutdown: CancellationToken) -> Option<Departure> {
    let client = imds_client();
    let watched: Vec<Departure> = [
        (settings.enabled, Departure::Interruption),
        (settings.rebalance, Departure::Rebalance),
        (settings.scale_in, Departure::ScaleIn),
    ]
    .into_iter()
    .filter_map(|(on, d)| on.then_some(d))
    .collect();
    tracing::info!(
        poll_s = settings.poll_interval.as_secs_f64(),
        signals = ?watched.iter().map(|d| d.label()).collect::<Vec<_>>(),
        "watching IMDS for the instance's departure"
    );
    let mut failures = Failures::default();
    // Look at once, then every poll_interval: a sluice (re)started on an instance already going
    // drains before it has taken much. A stop meanwhile ends the look (IMDS may hang for seconds).
    loop {
        let found = tokio::select! {
            _ = shutdown.cancelled() => return None,
            found = look_all(&client, &watched, &mut failures) => found,
        };
        if let Some(signal) = found {
            shutdown.cancel();
            return Some(signal);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(settings.poll_interval) => {}
        }
    }
}

async fn look_all(
    client: &aws_config::imds::Client,
    watched: &[Departure],
    failures: &mut Failures,
) -> Option<Departure> {
    for &signal in watched {
        if look(client, signal, failures).await {
            return Some(signal);
        }
    }
    None
}

/// After a drain on another signal, with scale-in watched: waits, idle, until Auto Scaling picks
/// this instance to terminate (true) or `stop` is cancelled (false). A rebalance drain ends here:
/// capacity rebalancing terminates the instance once its replacement is in service, and
/// completing the action then ends it at once.
pub async fn wait_for_termination(poll_interval: Duration, stop: CancellationToken) -> bool {
    let client = imds_client();
    let mut failures = Failures::default();
    tracing::info!(
        "drained; waiting for Auto Scaling to terminate this instance, to complete its lifecycle action"
    );
    loop {
        let going = tokio::select! {
            _ = stop.cancelled() => return false,
            going = look(&client, Departure::ScaleIn, &mut failures) => going,
        };
        if going {
            return true;
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
}

/// Completes this instance's termination lifecycle action (CONTINUE) once sluice has drained, so
/// Auto Scaling ends the instance now instead of at the hook's heartbeat timeout. Never fails the
/// exit: on an error the hook's timeout and default result end the instance anyway (said in the
/// log and sluice_lifecycle_actions_total{result="failed"}).
pub async fn complete_lifecycle_action(sdk: &aws_config::SdkConfig, settings: &SpotSettings) {
    let result = match try_complete(sdk, settings).await {
        Ok((group, instance)) => {
            tracing::info!(
                group = %group,
                hook = %settings.lifecycle_hook,
                instance = %instance,
                "lifecycle action completed (CONTINUE): the instance ends now"
            );
            "completed"
        }
        Err(error) => {
            tracing::error!(
                error = format!("{error:#}"),
                hook = %settings.lifecycle_hook,
                "cannot complete the lifecycle action; the instance ends at the hook's heartbeat timeout instead (check the group name, the hook name and autoscaling:CompleteLifecycleAction in the instance role)"
            );
            "failed"
        }
    };
    metrics::counter!(catalog::LIFECYCLE_ACTIONS_TOTAL, "result" => result).increment(1);
}

async fn try_complete(
    sdk: &aws_config::SdkConfig,
    settings: &SpotSettings,
) -> anyhow::Result<(String, String)> {
    use anyhow::Context;
    let imds = imds_client();
    let instance = read(&imds, INSTANCE_ID)
        .await
        .context("reading the instance id from IMDS")?
        .context("IMDS has no instance id")?;
    let group = if settings.autoscaling_group.is_empty() {
        read(&imds, GROUP_TAG)
            .await
            .context("reading the aws:autoscaling:groupName tag from IMDS")?
            .context("IMDS shows no aws:autoscaling:groupName tag: set spot.autoscaling_group, or allow instance tags in metadata (launch template InstanceMetadataTags)")?
    } else {
        settings.autoscaling_group.clone()
    };
    let client = aws_sdk_autoscaling::Client::new(sdk);
    tokio::time::timeout(
        Duration::from_secs(10),
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(&group)
            .lifecycle_hook_name(&settings.lifecycle_hook)
            .instance_id(&instance)
            .lifecycle_action_result("CONTINUE")
            .send(),
    )
    .await
    .context("CompleteLifecycleAction took over 10 s")?
    .map_err(aws_sdk_autoscaling::Error::from)
    .context("CompleteLifecycleAction")?;
    Ok((group, instance))
}
