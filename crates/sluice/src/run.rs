//! `sluice run`: drain the queue into the table until SIGTERM or SIGINT.

use std::num::NonZeroU32;

use anyhow::Result;
use aws_config::BehaviorVersion;
use tokio_util::sync::CancellationToken;

use crate::command::{ConfigArgs, Failure, INTERRUPTED, Outcome};
use crate::config::Settings;
use crate::notify::Notifier;
use crate::pipeline::Pipeline;
use crate::queue_metrics;
use crate::telemetry::{self, Health};

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `sluice run`: load and check the config (exit 2 naming each bad key), then run.
pub async fn command(args: RunArgs) -> Outcome {
    let settings = crate::config::load(args.config.config.as_deref()).map_err(Failure::Config)?;
    telemetry::init_tracing(settings.telemetry.log_format, &settings.telemetry.log_level);
    run(settings)
        .await
        .map_err(Failure::logged("sluice failed"))
}

/// Drains until the first SIGTERM or SIGINT (exit 0), or a second one (exit 130 at once).
pub async fn run(settings: Settings) -> Result<u8> {
    let metrics = telemetry::install_metrics()?;
    // systemd (Type=notify): watchdog pings from the start, READY=1 once receiving, STOPPING=1
    // on the first signal. All no-ops without NOTIFY_SOCKET.
    let notifier = std::sync::Arc::new(Notifier::from_env());
    let background_stop = CancellationToken::new();
    let _watchdog = notifier.spawn_watchdog(background_stop.clone());
    // Region, credentials and endpoints come from the SDK's default chain (env, profile, IMDS,
    // IRSA); AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL_DYNAMODB point at local servers.
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let pipeline = Pipeline::build(&settings, &sdk, &sdk).await?;
    // SIGTERM or SIGINT cancels `signalled`, and with it `shutdown`; a departure signal from IMDS
    // cancels only `shutdown`, so a drain it started can still tell a later SIGTERM apart.
    let signalled = CancellationToken::new();
    let shutdown = signalled.child_token();
    let listen = settings.telemetry.listen;
    let health = Health::for_pipeline(&pipeline, shutdown.clone());
    let server_stop = CancellationToken::new();
    let addr = telemetry::serve(listen, metrics, health, server_stop.clone()).await?;
    let second_signal = tokio::spawn(crate::signals::first_and_second(
        signalled.clone(),
        "shutting down: no more receives, draining in-flight messages",
        "second signal: exiting now; held messages return after their visibility timeout",
    ));
    let departure = settings
        .spot
        .watches_any()
        .then(|| tokio::spawn(crate::spot::watch(settings.spot.clone(), shutdown.clone())));
    if !settings.kafka.enabled {
        queue_metrics::spawn(
            sluice_sqs::client_with_deadlines(&sdk, settings.sqs.request_timeout),
            settings.sqs.queue_url_str().to_owned(),
            background_stop.clone(),
        );
    }
    notifier.ready("draining the queue into the table");
    tell_systemd_when_stopping(notifier.clone(), signalled.clone(), shutdown.clone());
    log_started(&settings, addr);
    let writer_stats = pipeline.writer_stats();
    let mut second_signal = second_signal;
    let summary = tokio::select! {
        summary = pipeline.run(shutdown.clone()) => summary,
        _ = &mut second_signal => return Ok(INTERRUPTED),
    };
    shutdown.cancel();
    let departure = match departure {
        Some(watcher) => watcher.await.ok().flatten(),
        None => None,
    };
    let bill = writer_stats.bill();
    tracing::info!(
        received = summary.received,
        acked = summary.acked,
        nacked = summary.nacked,
        poison = summary.poison,
        logs_per_wcu = format!("{:.3}", bill.logs_per_wcu),
        wcu_per_million_logs = bill.wcu_per_million_logs.round(),
        saved_by_compression = format!("{:.3}", bill.saved_by_compression),
        saved_by_cache = format!("{:.3}", bill.saved_by_cache),
        "sluice stopped"
    );
    // Scale-in watched and the instance going: complete the lifecycle action so it ends now. After
    // a drain on a spot notice or a rebalance recommendation, wait (idle, still answering
    // /metrics and the watchdog) for the group to pick it; a SIGTERM ends the wait.
    if settings.spot.scale_in {
        let terminating = match departure {
            Some(crate::spot::Departure::ScaleIn) => true,
            Some(_) => tokio::select! {
                going = crate::spot::wait_for_termination(settings.spot.poll_interval, signalled.clone()) => going,
                _ = &mut second_signal => return Ok(INTERRUPTED),
            },
            None => false,
        };
        if terminating {
            crate::spot::complete_lifecycle_action(&sdk, &settings.spot).await;
        }
    }
    server_stop.cancel();
    background_stop.cancel();
    Ok(0)
}

/// STOPPING=1 only on SIGTERM or SIGINT. systemd arms TimeoutStopSec when it sees it, and a
/// drain on a departure signal may outlast that: after a rebalance drain sluice stays, idle,
/// until Auto Scaling picks the instance, and a scale-in drain ends with the lifecycle call.
/// Killed at the timeout, Restart=on-failure would start it again, to drain again. A departure
/// drain says only STATUS.
fn tell_systemd_when_stopping(
    notifier: std::sync::Arc<Notifier>,
    signalled: CancellationToken,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = signalled.cancelled() => {}
            _ = shutdown.cancelled() => {
                notifier.send("STATUS=draining: this instance is going away (the log names the signal)");
                signalled.cancelled().await;
            }
        }
        notifier.stopping("shutting down: draining in-flight messages");
    });
}

/// The `sluice started` log line: what it reads, what it writes, where its telemetry is.
fn log_started(settings: &Settings, telemetry: std::net::SocketAddr) {
    let buffer = if settings.kafka.enabled {
        format!(
            "kafka {} topics {:?} group {}",
            settings.kafka.brokers, settings.kafka.topics, settings.kafka.group_id
        )
    } else {
        settings.sqs.queue_url_str().to_owned()
    };
    tracing::info!(
        buffer = %buffer,
        table = %settings.dynamodb.table,
        telemetry = %telemetry,
        budget_wcu_per_s = settings.rate.wcu_per_second.map(NonZeroU32::get),
        "sluice started"
    );
}
