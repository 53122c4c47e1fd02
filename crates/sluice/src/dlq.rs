//! `sluice dlq stats | peek | redrive`: look into the dead-letter queue and send its messages back.
//!
//! The dead-letter queue is `--dlq URL`, else `sqs.dead_letter_queue_url`, else the one the source
//! queue's RedrivePolicy names.

use sluice_core::source::dead_letter;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use aws_config::BehaviorVersion;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    MessageAttributeValue, MessageSystemAttributeName, SendMessageBatchRequestEntry,
};
use serde_json::json;
use sluice_core::Source;

use crate::config;

#[derive(clap::Args, Debug, Clone)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
    /// TOML config (for sqs.queue_url and sqs.dead_letter_queue_url).
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// The dead-letter queue, when neither the config nor the source queue's RedrivePolicy says.
    #[arg(long, value_name = "URL", global = true)]
    pub dlq: Option<String>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum DlqCommand {
    /// Message counts of the dead-letter queue (visible, in flight, delayed).
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Show up to N messages with their reasons, leaving them in place (visible again at once).
    Peek {
        #[arg(long, default_value_t = 10)]
        max: usize,
        #[arg(long)]
        json: bool,
    },
    /// Move messages back to the source queue (sqs.queue_url), at a bounded rate, with progress.
    Redrive {
        /// Messages per second at most.
        #[arg(long, default_value_t = 50)]
        rate: u32,
        /// Stop after this many messages (default: until the dead-letter queue is empty).
        #[arg(long)]
        max: Option<u64>,
    },
}

pub async fn dlq(args: DlqArgs) -> Result<()> {
    let settings = config::load_partial(args.config.as_deref())?;
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let sqs = sluice_sqs::client_with_deadlines(&sdk, settings.sqs.request_timeout);
    let source = settings.sqs.queue_url_str().to_owned();
    let dlq = dead_letter_queue(&args, &settings, &sqs, &source).await?;
    match args.command {
        DlqCommand::Stats { json } => stats(&sqs, &dlq, json).await,
        DlqCommand::Peek { max, json } => peek(&sqs, &dlq, max, json).await,
        DlqCommand::Redrive { rate, max } => {
            if source.is_empty() {
                bail!("redrive needs the source queue: set sqs.queue_url");
            }
            redrive(&sqs, &dlq, &source, rate.max(1), max).await
        }
    }
}

/// The dead-letter queue to work on: `--dlq`, else sqs.dead_letter_queue_url, else the one
/// sqs.queue_url's RedrivePolicy names.
async fn dead_letter_queue(
    args: &DlqArgs,
    settings: &config::Settings,
    sqs: &Client,
    source: &str,
) -> Result<String> {
    match (args.dlq.clone(), settings.sqs.dead_letter_queue_url_string()) {
        (Some(u), _) | (None, Some(u)) => Ok(u),
        (None, None) if !source.is_empty() => sluice_sqs::admin::redrive_dead_letter_url(sqs, source)
            .await
            .map_err(|e| anyhow!("the dead-letter queue of sqs.queue_url: {e}"))?
            .ok_or_else(|| anyhow!("no dead-letter queue: pass --dlq, set sqs.dead_letter_queue_url, or give sqs.queue_url a RedrivePolicy")),
        _ => bail!("no dead-letter queue: pass --dlq or set sqs.dead_letter_queue_url (or sqs.queue_url with a RedrivePolicy)"),
    }
}

/// `sluice dlq stats`: the dead-letter queue's counts.
async fn stats(sqs: &Client, dlq: &str, json: bool) -> Result<()> {
    let (counts, _) = sluice_sqs::admin::counts(sqs, dlq, false)
        .await
        .map_err(|e| anyhow!(e))?;
    let sluice_sqs::admin::QueueCounts {
        visible,
        in_flight,
        delayed,
    } = counts;
    if json {
        println!(
            "{}",
            json!({"dlq": dlq, "visible": visible, "in_flight": in_flight, "delayed": delayed})
        );
    } else {
        println!(
            "dead-letter queue {dlq}\n  visible   {visible}\n  in flight {in_flight}\n  delayed   {delayed}"
        );
    }
    Ok(())
}

/// `sluice dlq peek`: shows up to `max` messages with their reasons, then makes them visible
/// again at once (the queue is left as it was).
async fn peek(sqs: &Client, dlq: &str, max: usize, json: bool) -> Result<()> {
    let mut seen = 0;
    let mut handles = Vec::new();
    while seen < max {
        let messages = receive(sqs, dlq, (max - seen).min(10) as i32, 30).await?;
        if messages.is_empty() {
            break;
        }
        for m in &messages {
            seen += 1;
            show(m, json);
            if let Some(h) = m.receipt_handle() {
                handles.push(h.to_string());
            }
        }
    }
    // Leave everything as it was: visible again at once.
    for h in handles {
        let _ = sqs
            .change_message_visibility()
            .queue_url(dlq)
            .receipt_handle(h)
            .visibility_timeout(0)
            .send()
            .await;
    }
    if !json {
        println!("{seen} message(s) shown; left in the dead-letter queue");
    }
    Ok(())
}

/// One dead-lettered message, its reason and the start of its body: a JSON line or two lines
/// of text.
fn show(m: &aws_sdk_sqs::types::Message, json: bool) {
    let attr = |n: &str| {
        m.message_attributes()
            .and_then(|a| a.get(n))
            .and_then(|v| v.string_value())
            .unwrap_or("")
            .to_string()
    };
    let body = m.body().unwrap_or_default();
    let preview: String = body.chars().take(200).collect();
    if json {
        println!(
            "{}",
            json!({
                "message_id": m.message_id(), "reason": attr(dead_letter::REASON),
                "error": attr(dead_letter::ERROR), "source_message_id": attr(dead_letter::SOURCE_MESSAGE_ID),
                "receive_count": attr(dead_letter::RECEIVE_COUNT), "body": preview,
            })
        );
        return;
    }
    let reason = attr(dead_letter::REASON);
    println!(
        "{}  reason={}  {}\n    {}{}",
        m.message_id().unwrap_or_default(),
        if reason.is_empty() {
            "(redriven by SQS: maxReceiveCount)"
        } else {
            reason.as_str()
        },
        attr(dead_letter::ERROR),
        preview,
        if body.len() > preview.len() {
            " …"
        } else {
            ""
        }
    );
}

/// The attempt deadline the client was built with (5 s if it has none).
fn sqs_request_timeout(sqs: &Client) -> std::time::Duration {
    sqs.config()
        .timeout_config()
        .and_then(|t| t.operation_attempt_timeout())
        .unwrap_or(std::time::Duration::from_secs(5))
}

/// SendMessageBatch's payload limit.
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Sends one batch back; a call the queue refuses whole is retried entry by entry, so one bad
/// message never holds up the rest. Returns each entry's outcome by its index.
async fn send_batch(
    sqs: &Client,
    source: &str,
    batch: Vec<(usize, usize, SendMessageBatchRequestEntry)>,
) -> Vec<(usize, Result<(), String>)> {
    let entries: Vec<SendMessageBatchRequestEntry> =
        batch.iter().map(|(_, _, e)| e.clone()).collect();
    match sqs
        .send_message_batch()
        .queue_url(source)
        .set_entries(Some(entries))
        .send()
        .await
    {
        Ok(out) => {
            let failed: HashMap<usize, String> = out
                .failed()
                .iter()
                .filter_map(|f| {
                    Some((
                        f.id().parse().ok()?,
                        format!("{}: {}", f.code(), f.message().unwrap_or_default()),
                    ))
                })
                .collect();
            batch
                .into_iter()
                .map(|(i, _, _)| (i, failed.get(&i).map_or(Ok(()), |w| Err(w.clone()))))
                .collect()
        }
        Err(e) if batch.len() > 1 => {
            eprintln!(
                "warning: SendMessageBatch refused ({}); sending its {} messages one by one",
                DisplayErrorContext(&e),
                batch.len()
            );
            let mut out = Vec::new();
            for one in batch {
                out.extend(Box::pin(send_batch(sqs, source, vec![one])).await);
            }
            out
        }
        Err(e) => batch
            .into_iter()
            .map(|(i, _, _)| {
                (
                    i,
                    Err(format!("SendMessageBatch: {}", DisplayErrorContext(&e))),
                )
            })
            .collect(),
    }
}

/// `sluice dlq redrive`: moves messages from the dead-letter queue back to the source, at most
/// `rate` a second and `max` in all, until the dead-letter queue answers empty twice. A message
/// the source refuses stays in the dead-letter queue (and is not tried again this run); one
/// sent back is deleted from the dead-letter queue only then.
async fn redrive(sqs: &Client, dlq: &str, source: &str, rate: u32, max: Option<u64>) -> Result<()> {
    let fifo = source.ends_with(".fifo");
    let dlq_source = sluice_sqs::SqsSource::new(
        sqs.clone(),
        sluice_sqs::SqsSourceConfig {
            queue_url: dlq.to_string(),
            wait_time_seconds: 1,
            visibility_timeout: None,
            dead_letter_queue_url: None,
            request_timeout: sqs_request_timeout(sqs),
        },
    );
    let started = Instant::now();
    let (mut moved, mut failed) = (0u64, 0u64);
    let mut last = Instant::now();
    let mut empty_polls = 0;
    let mut unsendable: HashMap<String, String> = HashMap::new();
    while max.is_none_or(|m| moved < m) && empty_polls < 2 {
        let want = max.map_or(10, |m| (m - moved).min(10)) as i32;
        let messages = receive(sqs, dlq, want, 60).await?;
        if messages.is_empty() {
            empty_polls += 1;
            continue;
        }
        empty_polls = 0;
        // One entry per message not already found unsendable this run (those stay in the
        // dead-letter queue, invisible until this redrive is over).
        let mut entries = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            if !m.message_id().is_some_and(|id| unsendable.contains_key(id)) {
                entries.push(entry_for(i, m, fifo)?);
            }
        }
        let mut ok: Vec<usize> = Vec::new();
        for (i, outcome) in send_packed(sqs, source, entries).await {
            match outcome {
                Ok(()) => ok.push(i),
                Err(why) => {
                    failed += 1;
                    let id = messages[i].message_id().unwrap_or_default().to_owned();
                    eprintln!(
                        "warning: message {id} could not be sent back ({why}); it stays in the dead-letter queue"
                    );
                    unsendable.insert(id, why);
                }
            }
        }
        delete_sent(&dlq_source, &messages, &ok).await;
        moved += ok.len() as u64;
        if last.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "redriving: {moved} moved, {failed} failed, {:.1} msg/s",
                moved as f64 / started.elapsed().as_secs_f64()
            );
            last = Instant::now();
        }
        // Pace: `rate` messages per second at most.
        let due = Duration::from_secs_f64(moved as f64 / f64::from(rate));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
    println!(
        "redrive done: {moved} message(s) moved from {dlq} to {source}, {failed} failed, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        bail!(
            "{failed} message(s) could not be sent back; they are still in the dead-letter queue"
        );
    }
    Ok(())
}

/// Up to `want` messages of the dead-letter queue, with every attribute (their FIFO group
/// included), invisible for `visibility_s` seconds while they are looked at or moved.
async fn receive(
    sqs: &Client,
    dlq: &str,
    want: i32,
    visibility_s: i32,
) -> Result<Vec<aws_sdk_sqs::types::Message>> {
    let out = sqs
        .receive_message()
        .queue_url(dlq)
        .max_number_of_messages(want)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .visibility_timeout(visibility_s)
        .wait_time_seconds(1)
        .send()
        .await
        .map_err(|e| anyhow!("ReceiveMessage {dlq}: {}", DisplayErrorContext(&e)))?;
    Ok(out.messages().to_vec())
}

/// The entry that sends message `i` back, with its size as SQS counts it. sluice's own
/// dead-letter attributes stay behind; the producer's travel back. On a FIFO queue it keeps its
/// group and is deduplicated by its message id.
fn entry_for(
    i: usize,
    m: &aws_sdk_sqs::types::Message,
    fifo: bool,
) -> Result<(usize, usize, SendMessageBatchRequestEntry)> {
    let attrs: HashMap<String, MessageAttributeValue> = m
        .message_attributes()
        .map(|a| {
            a.iter()
                .filter(|(k, _)| !k.starts_with("sluice_"))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let bytes = m.body().map_or(1, str::len)
        + attrs
            .iter()
            .map(|(k, v)| {
                k.len()
                    + v.data_type().len()
                    + v.string_value().map_or(0, str::len)
                    + v.binary_value().map_or(0, |b| b.as_ref().len())
            })
            .sum::<usize>();
    let mut e = SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(m.body().unwrap_or(" "))
        .set_message_attributes((!attrs.is_empty()).then_some(attrs));
    if fifo {
        let group = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .cloned()
            .unwrap_or_else(|| "redrive".into());
        e = e
            .message_group_id(group)
            .message_deduplication_id(m.message_id().unwrap_or_default());
    }
    Ok((i, bytes, e.build().map_err(|e| anyhow!("{e}"))?))
}

/// Sends the entries in batches packed by SendMessageBatch's limits (10 entries, 1 MiB):
/// each entry's outcome by its index.
async fn send_packed(
    sqs: &Client,
    source: &str,
    entries: Vec<(usize, usize, SendMessageBatchRequestEntry)>,
) -> Vec<(usize, Result<(), String>)> {
    let mut out = Vec::new();
    let mut batch: Vec<(usize, usize, SendMessageBatchRequestEntry)> = Vec::new();
    let mut batch_bytes = 0;
    let mut rest = entries.into_iter().peekable();
    loop {
        let next_fits = rest.peek().is_some_and(|(_, b, _)| {
            batch.len() < 10 && (batch.is_empty() || batch_bytes + b <= MAX_BATCH_BYTES)
        });
        if next_fits {
            let e = rest.next().expect("peeked");
            batch_bytes += e.1;
            batch.push(e);
            continue;
        }
        if batch.is_empty() {
            return out;
        }
        out.extend(send_batch(sqs, source, std::mem::take(&mut batch)).await);
        batch_bytes = 0;
    }
}

/// Deletes from the dead-letter queue the messages sent back (the DLQ as a source: its ack is
/// the batched delete, with per-entry failures).
async fn delete_sent(
    dlq_source: &sluice_sqs::SqsSource,
    messages: &[aws_sdk_sqs::types::Message],
    ok: &[usize],
) {
    let handles: Vec<String> = ok
        .iter()
        .filter_map(|&i| messages[i].receipt_handle().map(String::from))
        .collect();
    if handles.is_empty() {
        return;
    }
    let undeleted = dlq_source.ack(&handles).await;
    if let Some(f) = undeleted.first() {
        // Sent back but still in the DLQ: a later redrive sends it again (the row is rewritten
        // idempotently). Say so rather than hide it.
        eprintln!(
            "warning: {} message(s) were sent back but could not be deleted from the dead-letter queue: {}",
            undeleted.len(),
            f.error
        );
    }
}

/// The command: its errors said on stderr, exit 1.
pub async fn command(args: DlqArgs) -> crate::command::Outcome {
    crate::command::short_lived("warn", dlq(args))
        .await
        .map(|()| 0)
}
