use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::bench::BenchArgs;
use sluice::config;
use sluice::demo::DemoArgs;
use sluice::dlq::DlqArgs;
use sluice::kafka_cmd::KafkaArgs;
use sluice::load::LoadArgs;
use sluice::sim::SimArgs;
use sluice::telemetry;

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
    Run(ConfigArgs),
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
    /// Kafka mode: a consumer group's lag, and replay (move its offsets back to a time or an
    /// offset so that range is written again).
    Kafka(KafkaArgs),
}

#[derive(clap::Args)]
struct ValidateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// What the config is for: `run` (the workers; needs dynamodb.table) or `ingest` (needs an
    /// API key).
    #[arg(long = "for", value_name = "COMMAND", default_value = "run", value_parser = ["run", "ingest"])]
    for_command: String,
}

#[derive(clap::Args)]
struct IngestArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Address to serve the API on; overrides ingest.listen.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(clap::Args)]
struct ConfigArgs {
    /// TOML config file (see config/sluice.example.toml). Every key can also be set from the
    /// environment as SLUICE__SECTION__KEY, e.g. SLUICE__SQS__QUEUE_URL.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
    match cli.command {
        Command::Validate(args) if args.for_command == "ingest" => {
            match config::load_for(args.config.config.as_deref(), config::Mode::Ingest) {
                Ok(s) => {
                    println!(
                        "config ok: ingest on {} → {} (spool: {})",
                        s.ingest.listen,
                        s.producer.kafka_topic.as_ref().map_or_else(
                            || format!("queue {}", s.sqs.queue_url),
                            |t| format!("kafka {} topic {t}", s.kafka.brokers)
                        ),
                        s.producer
                            .spool_dir
                            .as_ref()
                            .map_or("none".into(), |d| d.display().to_string())
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Validate(args) => match config::load(args.config.config.as_deref()) {
            Ok(s) => {
                let buffer = if s.kafka.enabled {
                    format!(
                        "kafka {} topics {} group {}",
                        s.kafka.brokers,
                        s.kafka.topics.join(","),
                        s.kafka.group_id
                    )
                } else {
                    format!("queue {}", s.sqs.queue_url)
                };
                println!(
                    "config ok: {buffer} → table {} (budgets: {})",
                    s.dynamodb.table,
                    sluice::pipeline::budget_rule(&s)
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Run(args) => {
            let settings = match config::load(args.config.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::from(2);
                }
            };
            telemetry::init_tracing(settings.telemetry.log_format, &settings.telemetry.log_level);
            match runtime.block_on(sluice::run::run(settings)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "sluice failed");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ingest(args) => {
            let settings =
                match config::load_for(args.config.config.as_deref(), config::Mode::Ingest) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::from(2);
                    }
                };
            telemetry::init_tracing(settings.telemetry.log_format, &settings.telemetry.log_level);
            match runtime.block_on(sluice::ingest::ingest(settings, args.listen)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "sluice ingest failed");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Kafka(args) => {
            telemetry::init_tracing(config::LogFormat::Pretty, "warn");
            match runtime.block_on(sluice::kafka_cmd::kafka(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Dlq(args) => {
            telemetry::init_tracing(config::LogFormat::Pretty, "warn");
            match runtime.block_on(sluice::dlq::dlq(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::BenchPacing(args) => {
            telemetry::init_tracing(config::LogFormat::Pretty, "error");
            match runtime.block_on(sluice::bench::bench(args)) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Sim(args) => {
            telemetry::init_tracing(config::LogFormat::Pretty, "warn");
            match runtime.block_on(sluice::sim::sim(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Load(args) => {
            telemetry::init_tracing(config::LogFormat::Pretty, "warn");
            let json = args.json;
            match runtime.block_on(sluice::load::load(args)) {
                Ok(summary) => {
                    sluice::load::print_summary(&summary, json);
                    if summary.failed == 0 {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => {
            // Poison is expected in the demo and reported in the summary; RUST_LOG shows more.
            telemetry::init_tracing(config::LogFormat::Pretty, "error");
            match runtime.block_on(sluice::demo::demo(args)) {
                Ok(summary) if summary.lost == 0 => ExitCode::SUCCESS,
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
