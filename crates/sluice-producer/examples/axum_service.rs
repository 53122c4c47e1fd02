//! An axum service whose every request becomes a request log in SQS, via sluice-producer.
//!
//! ```sh
//! SLUICE_QUEUE_URL=http://127.0.0.1:4566/000000000000/request-logs \
//! AWS_ENDPOINT_URL=http://127.0.0.1:4566 AWS_REGION=us-east-1 \
//! AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//!   cargo run -p sluice-producer --example axum_service -- 127.0.0.1:3000
//! ```
//!
//! Then `curl localhost:3000/hello`; `sluice run` writes the log into DynamoDB. Ctrl-C flushes
//! what is buffered before the process exits.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sluice_producer::layer::RequestLogLayer;
use sluice_producer::spool::SpoolConfig;
use sluice_producer::sqs::SqsTransport;
use sluice_producer::{Producer, ProducerConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args().nth(1).unwrap_or("127.0.0.1:3000".into());
    let queue_url = std::env::var("SLUICE_QUEUE_URL")
        .map_err(|_| "set SLUICE_QUEUE_URL to the queue the logs go to")?;

    // 1. A producer: packs logs into SQS messages; spools to disk if SQS is down.
    let sqs = aws_sdk_sqs::Client::new(&aws_config::load_from_env().await);
    let producer = Producer::start(
        ProducerConfig {
            spool: std::env::var("SLUICE_SPOOL_DIR").ok().map(SpoolConfig::new),
            ..ProducerConfig::for_queue(&queue_url)
        },
        SqsTransport::new(sqs, &queue_url),
    )?;

    // 2. The layer: one log per request, never delaying the response.
    let app = Router::new()
        .route("/hello", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                "slow\n"
            }),
        )
        .layer(RequestLogLayer::new(producer.clone()).user_id(|req| {
            req.headers
                .get("x-user-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        }));

    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    // 3. On the way out: send what is buffered.
    let report = producer.close().await;
    println!(
        "sent {} messages; {} left in the spool",
        producer
            .stats()
            .messages_sent
            .load(std::sync::atomic::Ordering::Relaxed),
        report.spooled_messages
    );
    Ok(())
}
