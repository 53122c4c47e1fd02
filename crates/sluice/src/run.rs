//! `sluice run`: drain the queue into the table until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use aws_config::BehaviorVersion;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::notify::Notifier;
use crate::pipeline::Pipeline;
use crate::queue_metrics;
use crate::telemetry::{self, Health};

pub async fn run(settings: Settings) -> Result<()> {
    let metrics = telemetry::install_metrics()?;
    queue_metrics::describe();
    // systemd (Type=notify): watchdog pings from the start, READY=1 once receiving, STOPPING=1
    // on the first signal. All no-ops without NOTIFY_SOCKET.
    let notifier = std::sync::Arc::new(Notifier::from_env());
    let background_stop = CancellationToken::new();
    let _watchdog = notifier.spawn_watchdog(background_stop.clone());
    // Region, credentials and endpoints come from the SDK's default chain (env, profile, IMDS,
    // IRSA); AWS_ENDPOINT_URL_SQS / AWS_ENDPOINT_URL_DYNAMODB point at local servers.
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let pipeline = Pipeline::build(&settings, &sdk, &sdk).await?;
    let shutdown = CancellationToken::new();
    let listen = settings
        .telemetry
        .listen
        .parse()
        .context("telemetry.listen")?;
    let health = Health::for_pipeline(&pipeline, shutdown.clone());
    let server_stop = CancellationToken::new();
    let addr = telemetry::serve(listen, metrics, health, server_stop.clone()).await?;
    tokio::spawn(watch_signals(
        shutdown.clone(),
        "shutting down: no more receives, draining in-flight messages",
        "second signal: exiting now; held messages return after their visibility timeout",
    ));
    if settings.spot.enabled {
        tokio::spawn(crate::spot::watch(
            settings.spot.poll_interval,
            shutdown.clone(),
        ));
    }
    if !settings.kafka.enabled {
        queue_metrics::spawn(
            sluice_sqs::client_with_deadlines(&sdk, settings.sqs.request_timeout),
            settings.sqs.queue_url.clone(),
            background_stop.clone(),
        );
    }
    notifier.ready("draining the queue into the table");
    tokio::spawn({
        let (notifier, shutdown) = (notifier.clone(), shutdown.clone());
        async move {
            shutdown.cancelled().await;
            notifier.stopping("shutting down: draining in-flight messages");
        }
    });
    let buffer = if settings.kafka.enabled {
        format!(
            "kafka {} topics {:?} group {}",
            settings.kafka.brokers, settings.kafka.topics, settings.kafka.group_id
        )
    } else {
        settings.sqs.queue_url.clone()
    };
    tracing::info!(
        buffer = %buffer,
        table = %settings.dynamodb.table,
        telemetry = %addr,
        budget_wcu_per_s = settings.rate.wcu_per_second,
        "sluice started"
    );
    let summary = pipeline.run(shutdown).await;
    server_stop.cancel();
    background_stop.cancel();
    tracing::info!(
        received = summary.received,
        acked = summary.acked,
        nacked = summary.nacked,
        poison = summary.poison,
        "sluice stopped"
    );
    Ok(())
}

/// Cancels `shutdown` on the first SIGTERM/SIGINT (logging `first`) and exits 130 on the second
/// (logging `second`).
pub(crate) async fn watch_signals(
    shutdown: CancellationToken,
    first: &'static str,
    second: &'static str,
) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(error) => {
            tracing::error!(%error, "cannot watch SIGTERM");
            return;
        }
    };
    for n in 0..2 {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = tokio::signal::ctrl_c() => "SIGINT",
        };
        if n == 0 {
            tracing::info!(signal = name, "{first}");
            shutdown.cancel();
        } else {
            tracing::warn!(signal = name, "{second}");
            std::process::exit(130);
        }
    }
}
