//! `sluice sim`: the SQS + DynamoDB simulator as a standalone server, for local development,
//! tests and benchmarks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_sim::{Faults, Latency, SimConfig, SimServer, TableSettings};

#[derive(clap::Args, Debug, Clone)]
pub struct SimArgs {
    /// Address to listen on. Port 0 picks a free port (the endpoint is printed).
    #[arg(long, default_value = "127.0.0.1:4566", value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Seconds of unused capacity a provisioned table keeps as burst credit (DynamoDB: 300).
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub burst_seconds: f64,
    /// WCU per second an on-demand (PAY_PER_REQUEST) table takes before ThrottlingException.
    #[arg(long, default_value_t = 40_000, value_name = "WCU")]
    pub on_demand_ceiling_wcu: u64,
    /// Largest SQS message, body plus attributes.
    #[arg(long, default_value_t = sluice_sim::DEFAULT_MAX_MESSAGE_BYTES, value_name = "BYTES")]
    pub max_message_bytes: usize,
    /// Latency added to every operation, e.g. 10ms.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub latency: Option<Duration>,
    /// Random extra latency, uniform from zero to this, on every operation.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub jitter: Option<Duration>,
    /// Extra time every ReceiveMessage takes (a slow long poll).
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub slow_receive: Option<Duration>,
    /// Share of requests answered 500 InternalServerError (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub error_500_rate: f64,
    /// Share of requests answered 503 ServiceUnavailable (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub error_503_rate: f64,
    /// Share of requests refused with a throttling error regardless of capacity (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub throttle_rate: f64,
    /// Share of requests whose connection is closed without an answer (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub reset_rate: f64,
    /// Apply the error rates only to these operations (comma-separated, e.g.
    /// BatchWriteItem,ReceiveMessage).
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    pub fault_ops: Option<Vec<String>>,
    /// Accept these operations and never answer them (comma-separated, e.g.
    /// DeleteMessageBatch,ReceiveMessage): a server that stops answering. Set or lifted at run
    /// time through POST /_sim/faults (`hang_ops`); a hung call is never carried out.
    #[arg(long, value_delimiter = ',', value_name = "OPS")]
    pub hang_ops: Option<Vec<String>>,
    /// Share of the entries of SendMessageBatch, DeleteMessageBatch and
    /// ChangeMessageVisibilityBatch that fail on the server's side (SenderFault false,
    /// InternalError) inside a call that succeeds (0.0-1.0).
    #[arg(long, default_value_t = 0.0, value_name = "RATE")]
    pub entry_server_fault_rate: f64,
    /// Short polls (WaitTimeSeconds 0) return a random number of the visible messages, none to
    /// what was asked, as SQS's sampling short poll may; drawn from this seed. Unset: every
    /// visible message, deterministically.
    #[arg(long, value_name = "SEED")]
    pub short_poll_sampling_seed: Option<u64>,
}

fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| d.as_millis() as u64)
}

impl SimArgs {
    pub fn config(&self) -> SimConfig {
        SimConfig {
            tables: TableSettings {
                burst_seconds: self.burst_seconds,
                on_demand_ceiling_wcu: self.on_demand_ceiling_wcu,
            },
            faults: Faults {
                latency: Latency {
                    fixed_ms: ms(self.latency),
                    jitter_ms: ms(self.jitter),
                },
                error_500_rate: self.error_500_rate,
                error_503_rate: self.error_503_rate,
                throttle_rate: self.throttle_rate,
                reset_rate: self.reset_rate,
                slow_receive_ms: ms(self.slow_receive),
                only_ops: self.fault_ops.clone(),
                hang_ops: self.hang_ops.clone().unwrap_or_default(),
                entry_server_fault_rate: self.entry_server_fault_rate,
                ..Faults::default()
            },
            max_message_bytes: self.max_message_bytes,
            short_poll_sampling_seed: self.short_poll_sampling_seed,
        }
    }
}

pub async fn sim(args: SimArgs) -> Result<()> {
    let config = args.config();
    config.faults.validate().map_err(anyhow::Error::msg)?;
    let server = SimServer::start(args.listen, config)
        .await
        .with_context(|| format!("cannot listen on {} (--listen)", args.listen))?;
    let e = server.endpoint();
    println!("sluice-sim listening on {e}  (SQS + DynamoDB, AWS JSON 1.0)");
    println!();
    println!("point an AWS SDK or sluice at it:");
    println!(
        "  export AWS_ENDPOINT_URL={e} AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
    );
    println!();
    println!("admin:");
    println!("  GET  {e}/_sim/tables/NAME/capacity   consumption per second, peak, throttles");
    println!("  GET  {e}/_sim/queues                 message counts per queue");
    println!("  GET  {e}/_sim/faults  POST {e}/_sim/faults   fault injection (JSON)");
    println!();
    println!("Ctrl-C or SIGTERM stops it.");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    server.stop();
    println!("sluice-sim stopped");
    Ok(())
}

/// `sluice sim`.
pub async fn command(args: SimArgs) -> crate::command::Outcome {
    crate::command::short_lived("warn", sim(args))
        .await
        .map(|()| 0)
}
