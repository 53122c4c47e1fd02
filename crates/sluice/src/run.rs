//! `sluice run`: drain the queue into the table until SIGTERM or SIGINT.

use anyhow::{Context, Result};
use aws_config::BehaviorVersion;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::pipeline::Pipeline;
use crate::telemetry::{self, Health};

pub async fn run(settings: Settings) -> Result<()> {
    let metrics = telemetry::install_metrics()?;
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
    let health = Health {
        stats: pipeline.stats(),
        shutdown: shutdown.clone(),
    };
    let server_stop = CancellationToken::new();
    let addr = telemetry::serve(listen, metrics, health, server_stop.clone()).await?;
    tokio::spawn(watch_signals(shutdown.clone()));
    tracing::info!(
        queue_url = %settings.sqs.queue_url,
        table = %settings.dynamodb.table,
        telemetry = %addr,
        budget_wcu_per_s = settings.rate.wcu_per_second,
        "sluice started"
    );
    let summary = pipeline.run(shutdown).await;
    server_stop.cancel();
    tracing::info!(
        received = summary.received,
        acked = summary.acked,
        nacked = summary.nacked,
        poison = summary.poison,
        "sluice stopped"
    );
    Ok(())
}

/// First SIGTERM/SIGINT: graceful shutdown. A second one: exit now (what is held returns to the
/// queue when its visibility timeout ends).
async fn watch_signals(shutdown: CancellationToken) {
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
            tracing::info!(
                signal = name,
                "shutting down: no more receives, draining in-flight messages"
            );
            shutdown.cancel();
        } else {
            tracing::warn!(
                signal = name,
                "second signal: exiting now; held messages return after their visibility timeout"
            );
            std::process::exit(130);
        }
    }
}
