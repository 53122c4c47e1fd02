//! `sluice dict train`: trains a zstd dictionary from sample logs and stores it in the table.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use aws_config::BehaviorVersion;
use serde_json::json;
use sluice_core::stored::{self, DICTIONARY_KEY_PREFIX};
use sluice_core::{Compression, Schema};

use crate::command::{Outcome, short_lived};
use crate::config::{self, Settings};

#[derive(clap::Args, Debug, Clone)]
pub struct DictArgs {
    #[command(subcommand)]
    pub command: DictCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DictCommand {
    /// Train a dictionary from sample logs, store it in the table (item `sluice:dictionary:ID`)
    /// and print its id, with what it saves on the samples. Set schema.dictionary_id to the id
    /// to have writers use it; items made with older dictionaries stay readable.
    Train(TrainArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct TrainArgs {
    /// TOML config: dynamodb.table, the [schema] (key, TTL, plain_fields) the samples are read
    /// with, and sqs.queue_url for --sample.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Sample logs from a file: one JSON log per line (NDJSON), or any body sluice accepts.
    #[arg(long, value_name = "FILE.ndjson", conflicts_with = "sample")]
    pub from: Option<PathBuf>,
    /// Sample up to N messages from sqs.queue_url without consuming them: each is received
    /// (hidden for 60 s at most) and made visible again at once. Each receive counts towards a
    /// redrive policy's maxReceiveCount.
    #[arg(long, value_name = "N")]
    pub sample: Option<usize>,
    /// Largest dictionary, in bytes (16 KiB to 256 KiB; 32 KiB suits 1–3 KB request logs).
    #[arg(long, value_name = "BYTES", default_value_t = 32 * 1024)]
    pub size: usize,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// The fewest sample logs a dictionary is trained on: below this zstd finds little they share.
pub const MIN_SAMPLES: usize = 100;

pub async fn command(args: DictArgs) -> Outcome {
    match args.command {
        DictCommand::Train(args) => short_lived("warn", train(args)).await.map(|()| 0),
    }
}

/// What training gave, and what it saves on the samples themselves.
#[derive(Debug)]
pub struct Trained {
    pub id: u32,
    pub bytes: usize,
    pub samples: usize,
    pub refused: usize,
    pub plain_bytes: u64,
    pub compressed_bytes: u64,
    pub plain_wcu: u64,
    pub compressed_wcu: u64,
}

async fn train(args: TrainArgs) -> Result<()> {
    if !(16 * 1024..=256 * 1024).contains(&args.size) {
        bail!(
            "--size {} is outside 16384..=262144 bytes (the dictionary is one item of at most 400 KB)",
            args.size
        );
    }
    let settings = config::load_partial(args.config.as_deref())?;
    let table = settings.dynamodb.table.clone();
    if table.is_empty() {
        bail!("dynamodb.table is not set: the dictionary is stored in the table it serves");
    }
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let limits = sluice_dynamodb::describe_limits(&ddb, &table)
        .await
        .map_err(|e| anyhow!(e))?;
    let indexes: Vec<_> = limits.indexes.iter().map(|(s, _)| s.clone()).collect();
    let plain = super::plain_attributes(&settings, &indexes);
    let bodies = match (&args.from, args.sample) {
        (Some(path), _) => vec![
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --from {}", path.display()))?,
        ],
        (None, Some(n)) => sample_queue(&settings, &sdk, n).await?,
        (None, None) => bail!(
            "say where the sample logs come from: --from FILE.ndjson or --sample N (from sqs.queue_url)"
        ),
    };
    let trained = train_and_store(
        &ddb,
        &table,
        &settings.schema.key_attribute,
        &bodies,
        &settings.schema(),
        &plain,
        args.size,
    )
    .await?;
    report(&trained, &table, args.json);
    Ok(())
}

/// Trains on `bodies` and stores the dictionary in `table` (keyed by `key_attribute`), stamped
/// with the time: what `sluice dict train` does, and what the demo and the pacing benchmark do
/// before they run compressed.
pub async fn train_and_store(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    key_attribute: &str,
    bodies: &[String],
    schema: &Schema,
    plain: &BTreeSet<String>,
    size: usize,
) -> Result<Trained> {
    let (trained, dictionary) = train_on(bodies, schema, plain, size)?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    sluice_dynamodb::stored::put_dictionary(
        ddb,
        table,
        key_attribute,
        &dictionary,
        trained.samples as u64,
        &created,
    )
    .await
    .map_err(|e| anyhow!(e))?;
    Ok(trained)
}

/// Trains on every log of `bodies` (message bodies: NDJSON, arrays or single logs) and measures
/// the result on them; returns the report and the dictionary.
fn train_on(
    bodies: &[String],
    schema: &Schema,
    plain: &BTreeSet<String>,
    size: usize,
) -> Result<(Trained, Vec<u8>)> {
    let (mut texts, mut refused) = (Vec::new(), 0);
    for body in bodies {
        let (t, r) = stored::training_texts(body, schema, plain);
        texts.extend(t);
        refused += r;
    }
    if texts.len() < MIN_SAMPLES {
        bail!(
            "{} usable sample logs ({refused} refused by the schema): a dictionary needs at least {MIN_SAMPLES}; give more",
            texts.len()
        );
    }
    let dictionary = stored::train_dictionary(&texts, size).map_err(|e| anyhow!(e))?;
    let id = stored::dictionary_id(&dictionary)
        .ok_or_else(|| anyhow!("zstd made a dictionary without an id"))?;
    let compressing = Schema {
        compression: Some(Arc::new(
            Compression::new(dictionary.clone(), stored::DEFAULT_LEVEL, plain.clone())
                .map_err(|e| anyhow!(e))?,
        )),
        ..schema.clone()
    };
    let mut t = Trained {
        id,
        bytes: dictionary.len(),
        samples: texts.len(),
        refused,
        plain_bytes: 0,
        compressed_bytes: 0,
        plain_wcu: 0,
        compressed_wcu: 0,
    };
    for body in bodies {
        for frame in sluice_core::codec::frames(body) {
            let Ok(frame) = frame else { break };
            let serde_json::Value::Object(map) = frame.value else {
                continue;
            };
            if let Ok(item) = sluice_core::codec::decode_log(0, map, &compressing) {
                t.plain_bytes += item.plain_size() as u64;
                t.compressed_bytes += item.size() as u64;
                t.plain_wcu += u64::from(item.plain_wcu());
                t.compressed_wcu += u64::from(item.wcu());
            }
        }
    }
    Ok((t, dictionary))
}

fn report(t: &Trained, table: &str, as_json: bool) {
    let per = |wcu: u64| t.samples as f64 / wcu.max(1) as f64;
    if as_json {
        println!(
            "{}",
            json!({
                "dictionary_id": t.id,
                "key": format!("{DICTIONARY_KEY_PREFIX}{}", t.id),
                "table": table,
                "bytes": t.bytes,
                "samples": t.samples,
                "refused": t.refused,
                "plain_bytes": t.plain_bytes,
                "compressed_bytes": t.compressed_bytes,
                "plain_logs_per_wcu": per(t.plain_wcu),
                "logs_per_wcu": per(t.compressed_wcu),
            })
        );
        return;
    }
    println!(
        "dictionary {} stored in `{table}` (item `{DICTIONARY_KEY_PREFIX}{}`): {} bytes, trained on {} logs{}",
        t.id,
        t.id,
        t.bytes,
        t.samples,
        if t.refused > 0 {
            format!(" ({} refused by the schema)", t.refused)
        } else {
            String::new()
        }
    );
    println!(
        "on these logs: {} bytes plain, {} compressed ({:.0}% smaller); {:.2} logs per WCU plain, {:.2} compressed",
        t.plain_bytes,
        t.compressed_bytes,
        100.0 * (1.0 - t.compressed_bytes as f64 / t.plain_bytes.max(1) as f64),
        per(t.plain_wcu),
        per(t.compressed_wcu)
    );
    println!(
        "to use it, set in the config:\n  [schema]\n  compression = \"zstd\"\n  dictionary_id = {}",
        t.id
    );
}

/// Up to `n` message bodies from sqs.queue_url, left on the queue: received (hidden for 60 s)
/// and made visible again at once.
async fn sample_queue(
    settings: &Settings,
    sdk: &aws_config::SdkConfig,
    n: usize,
) -> Result<Vec<String>> {
    if settings.kafka.enabled {
        bail!(
            "--sample reads SQS; with kafka.enabled, export sample logs to a file and use --from"
        );
    }
    let queue = settings.sqs.queue_url_str().to_owned();
    if queue.is_empty() {
        bail!("--sample needs sqs.queue_url");
    }
    let sqs = sluice_sqs::client_with_deadlines(sdk, settings.sqs.request_timeout);
    let (mut bodies, mut handles, mut empty) = (Vec::new(), Vec::new(), 0);
    while bodies.len() < n && empty < 2 {
        let out = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages((n - bodies.len()).min(10) as i32)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .send()
            .await
            .map_err(|e| {
                anyhow!(
                    "cannot sample {queue}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                )
            })?;
        if out.messages().is_empty() {
            empty += 1;
        }
        for m in out.messages() {
            bodies.extend(m.body().map(str::to_owned));
            handles.extend(m.receipt_handle().map(str::to_owned));
        }
    }
    let mut hidden = 0;
    for h in handles {
        // Visible again at once; a failure only leaves it hidden until its 60 s run out.
        let made_visible = sqs
            .change_message_visibility()
            .queue_url(&queue)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await;
        if made_visible.is_err() {
            hidden += 1;
        }
    }
    eprintln!(
        "sampled {} messages from {queue} (left on the queue)",
        bodies.len()
    );
    if hidden > 0 {
        eprintln!(
            "{hidden} of them could not be made visible again at once: they return within 60 s"
        );
    }
    Ok(bodies)
}
