//! `sluice kafka lag|replay|create-topics`: a consumer group's offsets, moving them back so a
//! time range is written again (safe: the writes are idempotent upserts), and creating the topics.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use sluice_kafka::KafkaConfig;
use sluice_kafka::admin::{self, PartitionOffsets, ReplayFrom};

use crate::config::{self, KafkaSettings};

#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    #[command(subcommand)]
    pub command: KafkaCommand,
    /// TOML config with a [kafka] section (brokers, group_id, topics, properties).
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// The consumer group (default: kafka.group_id).
    #[arg(long, global = true)]
    pub group: Option<String>,
    /// Topics (default: kafka.topics). Repeat or separate with commas.
    #[arg(long, value_delimiter = ',', global = true)]
    pub topic: Vec<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum KafkaCommand {
    /// Per partition: the group's committed offset, the partition's end, and the lag.
    Lag {
        #[arg(long)]
        json: bool,
    },
    /// Move the group's committed offsets back (or forward) so sluice processes a range again.
    /// Stop every worker of the group first: Kafka refuses commits from outside a live group.
    Replay {
        /// The first record at or after this time: RFC 3339 (2026-11-30T08:00:00Z) or epoch
        /// milliseconds.
        #[arg(
            long,
            value_name = "TIME",
            conflicts_with = "to_offset",
            required_unless_present = "to_offset"
        )]
        to_timestamp: Option<String>,
        /// This offset in every selected partition (clamped to what the partition holds).
        #[arg(long, value_name = "OFFSET")]
        to_offset: Option<i64>,
        /// Only these partitions (default: all).
        #[arg(long, value_delimiter = ',')]
        partition: Vec<i32>,
        /// Show the plan without committing it.
        #[arg(long)]
        dry_run: bool,
    },
    /// Create the topics (kafka.topics, or --topic) and kafka.dlq_topic when set. A topic that
    /// already exists is left as it is. Partitions bound how many workers share the load: a
    /// group never has more busy members than partitions.
    CreateTopics {
        /// Partitions of each topic.
        #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(i32).range(1..))]
        partitions: i32,
        /// Partitions of the DLQ topic (little traffic).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        dlq_partitions: i32,
        /// Copies of every partition (3 on a production cluster).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
        replication_factor: i32,
    },
}

const TIMEOUT: Duration = Duration::from_secs(10);

fn parse_time(s: &str) -> Result<i64> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s.trim()).with_context(|| {
        format!(
            "--to-timestamp `{s}` is neither RFC 3339 (2026-11-30T08:00:00Z) nor epoch milliseconds"
        )
    })?;
    Ok(t.duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| anyhow!("--to-timestamp is before 1970"))?
        .as_millis() as i64)
}

fn settings(args: &KafkaArgs) -> Result<(KafkaSettings, String, Vec<String>)> {
    let s = config::load_partial(args.config.as_deref())?.kafka;
    if s.brokers.trim().is_empty() {
        bail!(
            "kafka.brokers is not set (--config FILE with a [kafka] section, or SLUICE__KAFKA__BROKERS)"
        );
    }
    let group = args.group.clone().unwrap_or_else(|| s.group_id.clone());
    let topics = if args.topic.is_empty() {
        s.topics.clone()
    } else {
        args.topic.clone()
    };
    if topics.is_empty() {
        bail!("no topic: --topic T or kafka.topics");
    }
    Ok((s, group, topics))
}

fn show(o: &Option<i64>) -> String {
    o.map_or("-".to_owned(), |v| v.to_string())
}

pub async fn kafka(args: KafkaArgs) -> Result<()> {
    let (s, group, topics) = settings(&args)?;
    let config = s.kafka_config();
    match args.command {
        KafkaCommand::CreateTopics {
            partitions,
            dlq_partitions,
            replication_factor,
        } => {
            let mut want: Vec<(&str, i32)> =
                topics.iter().map(|t| (t.as_str(), partitions)).collect();
            if !s.dlq_topic.trim().is_empty() {
                want.push((s.dlq_topic.trim(), dlq_partitions));
            }
            create_topics(&config, &group, &want, replication_factor, &s.brokers).await
        }
        KafkaCommand::Lag { json } => {
            let (c, g) = (config.clone(), group.clone());
            let parts =
                tokio::task::spawn_blocking(move || admin::offsets(&c, &g, &topics, TIMEOUT))
                    .await??;
            print_lag(&group, &parts, json);
            Ok(())
        }
        KafkaCommand::Replay {
            to_timestamp,
            to_offset,
            partition,
            dry_run,
        } => {
            let from = match (to_timestamp, to_offset) {
                (Some(t), _) => ReplayFrom::Timestamp(parse_time(&t)?),
                (None, Some(o)) => ReplayFrom::Offset(o),
                (None, None) => bail!("give --to-timestamp TIME or --to-offset N"),
            };
            replay(&config, &group, topics, partition, from, dry_run).await
        }
    }
}

/// `sluice kafka create-topics`: creates the topics (and the DLQ topic) and says how many
/// partitions each has.
async fn create_topics(
    config: &KafkaConfig,
    group: &str,
    want: &[(&str, i32)],
    replication_factor: i32,
    brokers: &str,
) -> Result<()> {
    admin::create_topics_replicated(config, want, replication_factor)
        .await
        .with_context(|| format!("creating topics on {brokers}"))?;
    let (c, g, t) = (
        config.clone(),
        group.to_owned(),
        want.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>(),
    );
    let parts = tokio::task::spawn_blocking(move || admin::offsets(&c, &g, &t, TIMEOUT)).await??;
    for (topic, _) in want {
        let n = parts.iter().filter(|p| p.topic == *topic).count();
        println!("topic {topic}: {n} partitions");
    }
    Ok(())
}

/// `sluice kafka lag`: per partition, the group's committed offset, the end and the lag; a
/// JSON line each with `--json`.
fn print_lag(group: &str, parts: &[PartitionOffsets], json: bool) {
    if json {
        for p in parts {
            println!(
                "{}",
                serde_json::json!({"topic": p.topic, "partition": p.partition,
                    "committed": p.committed, "low": p.low, "high": p.high, "lag": p.lag()})
            );
        }
        return;
    }
    println!("group {group}");
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>10}",
        "topic", "partition", "committed", "end", "lag"
    );
    for p in parts {
        println!(
            "{:<24} {:>9} {:>12} {:>12} {:>10}",
            p.topic,
            p.partition,
            show(&p.committed),
            p.high,
            p.lag()
        );
    }
    println!(
        "total lag: {} records over {} partitions",
        parts.iter().map(PartitionOffsets::lag).sum::<i64>(),
        parts.len()
    );
}

/// `sluice kafka replay`: moves the group's committed offsets back (to a time or an offset)
/// on the chosen partitions, after showing the plan; `--dry-run` only shows it.
async fn replay(
    config: &KafkaConfig,
    group: &str,
    topics: Vec<String>,
    partition: Vec<i32>,
    from: ReplayFrom,
    dry_run: bool,
) -> Result<()> {
    let (c, g) = (config.clone(), group.to_owned());
    let plan = tokio::task::spawn_blocking(move || {
        let parts = admin::offsets(&c, &g, &topics, TIMEOUT)?;
        let parts: Vec<PartitionOffsets> = parts
            .into_iter()
            .filter(|p| partition.is_empty() || partition.contains(&p.partition))
            .collect();
        admin::resolve(&c, &g, &parts, from, TIMEOUT)
    })
    .await??;
    if plan.is_empty() {
        bail!("no partition selected");
    }
    println!(
        "group {group}: {}",
        if dry_run {
            "plan (--dry-run, nothing changed)"
        } else {
            "new offsets"
        }
    );
    println!(
        "{:<24} {:>9} {:>12} {:>12} {:>12}",
        "topic", "partition", "committed", "new", "to replay"
    );
    let mut total = 0;
    for (p, new) in &plan {
        let again = p.committed.unwrap_or(p.high) - new;
        total += again.max(0);
        println!(
            "{:<24} {:>9} {:>12} {:>12} {:>12}",
            p.topic,
            p.partition,
            show(&p.committed),
            new,
            again
        );
    }
    if dry_run {
        println!("{total} records would be processed again");
        return Ok(());
    }
    let (c, g) = (config.clone(), group.to_owned());
    tokio::task::spawn_blocking(move || admin::commit(&c, &g, &plan)).await??;
    println!(
        "committed; {total} records will be processed again when the workers start (idempotent: same rows)"
    );
    Ok(())
}

/// The command: its errors said on stderr, exit 1.
pub async fn command(args: KafkaArgs) -> crate::command::Outcome {
    crate::command::short_lived("warn", kafka(args))
        .await
        .map(|()| 0)
}
