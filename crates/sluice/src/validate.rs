//! `sluice validate`: check a config (file plus SLUICE__… environment) for `run` or `ingest`
//! and say, in one line, what it would do; or name each bad key (exit 2).

use crate::command::{ConfigArgs, Failure, Outcome};
use crate::config::{self, Mode, Settings};
use crate::ingest::IngestFiles;

#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// What the config is for: `run` (the workers; needs dynamodb.table) or `ingest` (needs an
    /// API key; reads ingest.api_keys_file, tls_cert and tls_key as `sluice ingest` would).
    #[arg(long = "for", value_name = "COMMAND", default_value = "run", value_parser = ["run", "ingest"])]
    pub for_command: String,
}

pub fn command(args: ValidateArgs) -> Outcome {
    let path = args.config.config.as_deref();
    let line = if args.for_command == "ingest" {
        let settings = config::load_for(path, Mode::Ingest).map_err(Failure::Config)?;
        let files = IngestFiles::load(&settings.ingest).map_err(Failure::Config)?;
        ingest_line(&settings, &files)
    } else {
        run_line(&config::load(path).map_err(Failure::Config)?)
    };
    println!("{line}");
    Ok(0)
}

fn ingest_line(s: &Settings, files: &IngestFiles) -> String {
    let keys = files.key_count();
    format!(
        "config ok: ingest on {} ({}, {keys} API key{}) → {} (spool: {})",
        s.ingest.listen,
        if files.https() { "HTTPS" } else { "HTTP" },
        if keys == 1 { "" } else { "s" },
        s.producer.kafka_topic.as_ref().map_or_else(
            || format!("queue {}", s.sqs.queue_url_str()),
            |t| format!("kafka {} topic {t}", s.kafka.brokers)
        ),
        s.producer
            .spool_dir
            .as_ref()
            .map_or("none".into(), |d| d.display().to_string())
    )
}

fn run_line(s: &Settings) -> String {
    let buffer = if s.kafka.enabled {
        format!(
            "kafka {} topics {} group {}",
            s.kafka.brokers,
            s.kafka.topics.join(","),
            s.kafka.group_id
        )
    } else {
        format!("queue {}", s.sqs.queue_url_str())
    };
    format!(
        "config ok: {buffer} → table {} (budgets: {})",
        s.dynamodb.table,
        crate::pipeline::budget_rule(s)
    )
}
