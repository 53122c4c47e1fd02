//! The `sluice` binary: parses the command line and hands it to the command's module. Each
//! command returns its exit status ([`sluice::command::Outcome`]); this file turns it into the
//! process's.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sluice::command::Outcome;
use sluice::dlq::DlqArgs;
use sluice::ingest::IngestArgs;
use sluice::items::dict::DictArgs;
use sluice::items::read::{ExportArgs, GetArgs};
use sluice::kafka_cmd::KafkaArgs;
use sluice::run::RunArgs;
use sluice::tools::bench::BenchArgs;
use sluice::tools::demo::DemoArgs;
use sluice::tools::load::LoadArgs;
use sluice::tools::sim::SimArgs;
use sluice::validate::ValidateArgs;

/// mimalloc instead of glibc's malloc: sluice allocates per request and per message (the SDK's
/// builders, JSON, bodies) from several threads, and glibc's allocator took about a quarter of
/// the CPU in the ceiling benchmark's profile (bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// sluice drains request logs from an SQS queue into a DynamoDB table: idempotent upserts, paced
/// in write capacity units so the table is never throttled, and nothing deleted from the queue
/// before it is written.
#[derive(Parser)]
#[command(name = "sluice", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the workers: long-poll the queue, write to the table, ack; until SIGTERM or SIGINT.
    Run(RunArgs),
    /// Check a config (file plus SLUICE__… environment) and exit 0, or exit 2 naming each bad
    /// key.
    Validate(ValidateArgs),
    /// Run the ingest HTTP API: POST /v1/logs (JSON, array or NDJSON; gzip) with an API key;
    /// logs go into sqs.queue_url through the producer, spooled to disk while SQS is down.
    Ingest(IngestArgs),
    /// Generate request logs at a rate (size distribution, duplicates, key space, FIFO groups)
    /// and push them straight into SQS or through `sluice ingest`; progress each second and a
    /// summary at the end.
    Load(LoadArgs),
    /// Run the whole pipeline once against an SQS + DynamoDB endpoint: create a queue and a
    /// table, push a spike of logs, drain it, and print a summary.
    Demo(DemoArgs),
    /// Run sluice-sim, the in-memory SQS + DynamoDB server that enforces provisioned write
    /// capacity and injects faults, and print the endpoint to use.
    Sim(SimArgs),
    /// Benchmark write pacing: N `sluice run` processes drain a backlog into a simulated
    /// provisioned table; prints utilization, throttles, the highest 5-second average and the
    /// drain time against the physical minimum.
    BenchPacing(BenchArgs),
    /// Inspect the dead-letter queue (stats, peek) and send its messages back (redrive).
    Dlq(DlqArgs),
    /// Compressed items' dictionaries: `dict train` makes one from sample logs and stores it in
    /// the table.
    Dict(DictArgs),
    /// Print logs by key (request id) as the JSON they were sent as, compressed or plain.
    Get(GetArgs),
    /// Stream the table as NDJSON (every log as sent, compressed or plain), with progress.
    Export(ExportArgs),
    /// Kafka mode: a consumer group's lag, and replay (move its offsets back to a time or an
    /// offset so that range is written again).
    Kafka(KafkaArgs),
}

/// How long, after a command returns, tasks still running (a call in flight when a second
/// signal came) may take before the process exits anyway.
const EXIT_GRACE: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Validate(args) = cli.command {
        return exit(sluice::validate::command(args));
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => sluice::run::command(args).await,
            Command::Ingest(args) => sluice::ingest::command(args).await,
            Command::Dlq(args) => sluice::dlq::command(args).await,
            Command::Dict(args) => sluice::items::dict::command(args).await,
            Command::Get(args) => sluice::items::read::get(args).await,
            Command::Export(args) => sluice::items::read::export(args).await,
            Command::Kafka(args) => sluice::kafka_cmd::command(args).await,
            Command::Load(args) => sluice::tools::load::command(args).await,
            Command::Demo(args) => sluice::tools::demo::command(args).await,
            Command::Sim(args) => sluice::tools::sim::command(args).await,
            Command::BenchPacing(args) => sluice::tools::bench::command(args).await,
            Command::Validate(_) => unreachable!("validated above, without a runtime"),
        }
    });
    runtime.shutdown_timeout(EXIT_GRACE);
    exit(outcome)
}

fn exit(outcome: Outcome) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.exit_code(),
    }
}
