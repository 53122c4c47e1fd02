//! Sending: one SendMessageBatch with retries of the entries that failed, the split of a
//! message the queue refuses into its logs, and [`send_all`] for callers that hold ready-made
//! bodies (the demo, benchmarks, tests). The only SendMessageBatch loop in sluice.

use sluice_common::catalog;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use sluice_common::Backoff;

use crate::events::SendFailed;
use crate::{EntryOutcome, OutMessage, Transport, TransportErrorKind};

/// What the queue made of one message, once the transport is done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Sent,
    Rejected(String),
    Failed(String),
}

/// A log the queue refuses for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    /// Its place in the message body.
    pub(crate) at: usize,
    pub(crate) reason: String,
    pub(crate) text: String,
}

/// What became of one message: sent, or sent but for the logs the queue refused (a refused
/// message is split and its logs sent one by one), or not delivered now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Final {
    Sent,
    Partly(Vec<Refused>),
    Failed(String),
}

/// Sends `msgs` as one SendMessageBatch, then again for the entries that failed, up to
/// `attempts` calls with `backoff` between them; a call the queue refuses whole (for what it
/// carries) is split into one call per message, so one bad message never sinks its batch.
/// Returns each message's outcome, in order.
fn send_with_retries<T: Transport>(
    transport: Arc<T>,
    msgs: Vec<OutMessage>,
    attempts: u32,
    backoff: Backoff,
) -> Pin<Box<dyn Future<Output = Vec<Outcome>> + Send>> {
    Box::pin(async move {
        let mut finals: Vec<Option<Outcome>> = vec![None; msgs.len()];
        let mut pending: Vec<usize> = (0..msgs.len()).collect();
        let mut last = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(backoff.delay(attempt - 1)).await;
            }
            let batch: Vec<OutMessage> = pending.iter().map(|&i| msgs[i].clone()).collect();
            metrics::counter!(catalog::PRODUCER_BATCHES_TOTAL).increment(1);
            match transport.send(&batch).await {
                Err(e) if e.kind == TransportErrorKind::Refused => {
                    metrics::counter!(catalog::PRODUCER_SEND_ERRORS_TOTAL, "kind" => e.kind.label())
                        .increment(1);
                    if let [i] = pending[..] {
                        finals[i] = Some(Outcome::Rejected(e.message));
                    } else {
                        // Which entry is it? Each alone, with the attempts left.
                        tracing::warn!(error = %e, messages = batch.len(), "SendMessageBatch refused; sending its messages one by one");
                        for &i in &pending {
                            let one = send_with_retries(
                                transport.clone(),
                                vec![msgs[i].clone()],
                                attempts - attempt,
                                backoff,
                            )
                            .await;
                            finals[i] = one.into_iter().next();
                        }
                    }
                    pending.clear();
                    break;
                }
                Err(e) => {
                    SendFailed {
                        error: &e,
                        attempt: attempt + 1,
                        messages: batch.len(),
                    }
                    .emit();
                    last = e.message;
                }
                Ok(outcomes) => {
                    let mut still = Vec::new();
                    for (k, &i) in pending.iter().enumerate() {
                        match outcomes.get(k) {
                            Some(EntryOutcome::Sent) => finals[i] = Some(Outcome::Sent),
                            Some(EntryOutcome::Rejected(why)) => {
                                finals[i] = Some(Outcome::Rejected(why.clone()))
                            }
                            Some(EntryOutcome::Retry(why)) => {
                                metrics::counter!(catalog::PRODUCER_SEND_ERRORS_TOTAL, "kind" => "entry")
                                    .increment(1);
                                last = why.clone();
                                still.push(i);
                            }
                            None => {
                                last = "the queue answered fewer entries than it was sent".into();
                                still.push(i);
                            }
                        }
                    }
                    pending = still;
                    if pending.is_empty() {
                        break;
                    }
                }
            }
        }
        finals
            .into_iter()
            .map(|f| f.unwrap_or_else(|| Outcome::Failed(last.clone())))
            .collect()
    })
}

/// The text of each log in a message body (NDJSON, or any whitespace-separated JSON values).
pub(crate) fn log_spans(body: &str) -> Vec<&str> {
    let mut spans = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(body).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    while let Some(Ok(_)) = stream.next() {
        let end = stream.byte_offset();
        spans.push(body[start..end].trim());
        start = end;
    }
    if spans.is_empty() {
        spans.push(body);
    }
    spans
}

/// SendMessageBatch's limits: how messages are grouped into calls.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Entries per call (SQS: at most 10).
    pub entries: usize,
    /// Bytes of bodies per call (SQS: at most 1 MiB).
    pub bytes: usize,
}

impl Default for BatchLimits {
    /// SQS's own limits: 10 entries, 1 MiB.
    fn default() -> Self {
        BatchLimits {
            entries: 10,
            bytes: 1024 * 1024,
        }
    }
}

impl BatchLimits {
    /// Splits `msgs` into runs that each fit one call (a message larger than `bytes` goes alone,
    /// for the queue to judge).
    pub fn chunks<'a>(&self, msgs: &'a [OutMessage]) -> impl Iterator<Item = &'a [OutMessage]> {
        let limits = *self;
        let mut rest = msgs;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len()
                && n < limits.entries
                && (n == 0 || bytes + rest[n].body.len() <= limits.bytes)
            {
                bytes += rest[n].body.len();
                n += 1;
            }
            let (chunk, tail) = rest.split_at(n);
            rest = tail;
            Some(chunk)
        })
    }
}

/// Sends messages, and splits any the queue refuses: its logs go one by one, so only a log the
/// queue itself refuses is left out (and reported), never its neighbours.
pub(crate) async fn deliver<T: Transport>(
    transport: Arc<T>,
    msgs: Vec<OutMessage>,
    attempts: u32,
    backoff: Backoff,
    limits: BatchLimits,
) -> Vec<Final> {
    let outcomes = send_with_retries(transport.clone(), msgs.clone(), attempts, backoff).await;
    let mut finals = Vec::with_capacity(outcomes.len());
    for (msg, outcome) in msgs.into_iter().zip(outcomes) {
        finals.push(match outcome {
            Outcome::Sent => Final::Sent,
            Outcome::Failed(why) => Final::Failed(why),
            Outcome::Rejected(why) => {
                let spans = log_spans(&msg.body);
                if spans.len() <= 1 {
                    Final::Partly(vec![Refused {
                        at: 0,
                        reason: why,
                        text: msg.body.clone(),
                    }])
                } else {
                    tracing::warn!(reason = %why, logs = spans.len(), "the queue refused a packed message; sending its logs one by one");
                    let singles: Vec<OutMessage> = spans
                        .iter()
                        .map(|t| OutMessage {
                            body: (*t).to_owned(),
                            group_id: msg.group_id.clone(),
                            dedup_id: msg
                                .dedup_id
                                .as_ref()
                                .map(|_| hex::encode(Sha256::digest(t.as_bytes()))),
                            delay_seconds: msg.delay_seconds,
                        })
                        .collect();
                    let mut each = Vec::with_capacity(singles.len());
                    for chunk in limits.chunks(&singles) {
                        each.extend(
                            send_with_retries(transport.clone(), chunk.to_vec(), attempts, backoff)
                                .await,
                        );
                    }
                    let mut refused = Vec::new();
                    let mut failed = None;
                    for (at, (o, t)) in each.into_iter().zip(&spans).enumerate() {
                        match o {
                            Outcome::Sent => {}
                            Outcome::Rejected(reason) => refused.push(Refused {
                                at,
                                reason,
                                text: (*t).to_owned(),
                            }),
                            Outcome::Failed(why) => failed = Some(why),
                        }
                    }
                    // Not all through now: the whole message is tried again later (its logs
                    // already sent are rewritten to the same rows).
                    match failed {
                        Some(why) => Final::Failed(why),
                        None => Final::Partly(refused),
                    }
                }
            }
        });
    }
    finals
}

/// Messages [`send_all`] could not deliver.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} messages not sent ({refused} refused by the queue): {first}")]
pub struct SendAllError {
    /// Messages sent, of all.
    pub total: usize,
    /// Messages not sent (refused, or still failing after every attempt).
    pub failed: usize,
    /// Of those, messages the queue refused for good.
    pub refused: usize,
    /// Why the first of them was not sent.
    pub first: String,
}

/// Sends every message through `transport`, batched by `limits`, each batch tried `attempts`
/// times with `backoff` between tries (entries SQS reports as failed are retried; an entry it
/// refuses for good is not). Unlike the [`crate::Producer`], nothing is packed, split or spooled:
/// for callers holding ready-made bodies that want to know that every one was taken.
pub async fn send_all<T: Transport>(
    transport: Arc<T>,
    msgs: &[OutMessage],
    limits: BatchLimits,
    attempts: u32,
    backoff: Backoff,
) -> Result<(), SendAllError> {
    let mut failed = 0;
    let mut refused = 0;
    let mut first = None;
    for chunk in limits.chunks(msgs) {
        let outcomes =
            send_with_retries(transport.clone(), chunk.to_vec(), attempts.max(1), backoff).await;
        for outcome in outcomes {
            let why = match outcome {
                Outcome::Sent => continue,
                Outcome::Rejected(why) => {
                    refused += 1;
                    why
                }
                Outcome::Failed(why) => why,
            };
            failed += 1;
            first.get_or_insert(why);
        }
    }
    match first {
        None => Ok(()),
        Some(first) => Err(SendAllError {
            total: msgs.len(),
            failed,
            refused,
            first,
        }),
    }
}
