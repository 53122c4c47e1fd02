//! The SQS half: standard and FIFO queues with visibility timeouts, long polls that return as
//! soon as a message is there, delays, deduplication (5-minute window, content-based too),
//! FIFO group locking, and redrive to a dead-letter queue after `maxReceiveCount`.
//!
//! As strict as SQS where a client could come to depend on leniency: a FIFO receipt handle
//! expires with its visibility timeout (a late delete or change is refused), a message's
//! visibility is capped at 12 hours from its receive across every extension, out-of-range and
//! negative parameters are refused rather than clamped, queue attributes are validated
//! (unknown names, RedrivePolicy, MaximumMessageSize, re-creating a queue with other values),
//! message attributes are validated as SQS validates them, batch entry ids too, and a
//! SendMessageBatch counts attributes against its 1 MiB. Short polls can sample (seeded) the way
//! SQS's distributed short poll does, and batch entries can fail on the server's side.

use sluice_common::sync::{Recover, RecoverRw};
use sluice_common::time::epoch_ms;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::error::{ApiError, ApiResult};

const ACCOUNT: &str = "000000000000";
const DEDUP_WINDOW: Duration = Duration::from_secs(300);
const MAX_VISIBILITY: u64 = 12 * 3600;
const MAX_BATCH: usize = 10;
/// A SendMessageBatch's bodies and attributes together (SQS: 1 MiB).
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// The attribute names CreateQueue and SetQueueAttributes take.
const QUEUE_ATTRIBUTES: &[&str] = &[
    "DelaySeconds",
    "MaximumMessageSize",
    "MessageRetentionPeriod",
    "Policy",
    "ReceiveMessageWaitTimeSeconds",
    "VisibilityTimeout",
    "RedrivePolicy",
    "RedriveAllowPolicy",
    "KmsMasterKeyId",
    "KmsDataKeyReusePeriodSeconds",
    "SqsManagedSseEnabled",
    "FifoQueue",
    "ContentBasedDeduplication",
    "DeduplicationScope",
    "FifoThroughputLimit",
];

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone)]
struct Redrive {
    dlq_arn: String,
    max_receive_count: u32,
}

#[derive(Debug)]
struct Message {
    seq: u64,
    id: String,
    body: String,
    md5: String,
    message_attributes: Option<Value>,
    sent_ms: u64,
    visible_at: Instant,
    /// Bumped whenever `visible_at` changes, so stale timer entries are skipped.
    epoch: u32,
    receive_count: u32,
    first_receive_ms: Option<u64>,
    /// When the current receive happened: its visibility may not reach past 12 hours from it.
    received_at: Option<Instant>,
    receipt: Option<String>,
    in_flight: bool,
    group: Option<String>,
    dedup_id: Option<String>,
}

struct Queue {
    name: String,
    url: String,
    arn: String,
    created: u64,
    fifo: bool,
    attributes: BTreeMap<String, String>,
    visibility_timeout: u64,
    delay_seconds: u64,
    receive_wait: u64,
    max_message_size: usize,
    content_dedup: bool,
    redrive: Option<Redrive>,
    messages: HashMap<u64, Message>,
    /// Standard queues: visible messages in arrival order (entries may be stale).
    ready: VecDeque<(u64, u32)>,
    /// Standard queues: messages becoming visible later (delayed or in flight).
    timers: BinaryHeap<Reverse<(Instant, u64, u32)>>,
    /// FIFO queues: each group's messages in order.
    groups: BTreeMap<String, VecDeque<u64>>,
    /// FIFO deduplication ids: until when, and the first send's MessageId and SequenceNumber.
    dedup: HashMap<String, (Instant, String, u64)>,
    next_seq: u64,
}

/// One queue, with its own lock and a wake-up for long polls waiting on it. Opaque outside the
/// crate.
pub struct QueueCell {
    state: Mutex<Queue>,
    arrivals: Notify,
}

impl QueueCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.locked()
    }
}

/// The SQS half of the server: every queue, by name. A receive waits on its queue alone, so a long
/// poll never holds other queues up.
pub struct Sqs {
    queues: RwLock<HashMap<String, Arc<QueueCell>>>,
    endpoint: String,
    /// The MaximumMessageSize, in bytes, of a queue created without one.
    pub max_message_size: usize,
    /// Short polls (WaitTimeSeconds 0) return a random share of what is visible, as SQS's
    /// sampling of its servers does; None: every visible message, deterministic.
    sampling: Option<Mutex<rand::rngs::StdRng>>,
}

/// What a RedrivePolicy's dead-letter target is, looked up before the source queue is locked:
/// its ARN and, when it exists, whether it is FIFO.
type RedriveTarget = Option<(String, Option<bool>)>;

fn invalid_attribute(name: &str) -> ApiError {
    ApiError::sqs(
        400,
        "InvalidAttributeValue",
        "InvalidAttributeValue",
        format!("Invalid value for the parameter {name}."),
    )
}

/// A number parameter of a request, as SQS reads it: absent is None, anything but an integer
/// within `range` is refused (negative values are not turned into defaults).
fn int_param(
    req: &Value,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
    reason: &str,
) -> ApiResult<Option<i64>> {
    let Some(v) = req.get(name) else {
        return Ok(None);
    };
    match v.as_i64() {
        Some(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(ApiError::sqs_invalid(format!(
            "Value {v} for parameter {name} is invalid. Reason: {reason}"
        ))),
    }
}

/// A message leaving its queue for the dead-letter queue.
struct Moved {
    dlq_arn: String,
    message: Message,
}

impl Queue {
    /// Validates every attribute first (unknown names, ranges, the redrive target, FIFO-only
    /// names on a standard queue), then applies them: a refused call changes nothing.
    fn apply_attributes(
        &mut self,
        attrs: &Map<String, Value>,
        target: &RedriveTarget,
    ) -> ApiResult<()> {
        let text = |v: &Value| {
            v.as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string())
        };
        let mut plan: Vec<(String, String)> = Vec::new();
        for (k, v) in attrs {
            let v = text(v);
            if !QUEUE_ATTRIBUTES.contains(&k.as_str()) {
                return Err(ApiError::sqs(
                    400,
                    "InvalidAttributeName",
                    "InvalidAttributeName",
                    format!("Unknown Attribute {k}."),
                ));
            }
            let in_range = |range: std::ops::RangeInclusive<u64>| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| range.contains(n))
                    .ok_or_else(|| invalid_attribute(k))
            };
            match k.as_str() {
                "VisibilityTimeout" => {
                    in_range(0..=MAX_VISIBILITY)?;
                }
                "DelaySeconds" => {
                    in_range(0..=900)?;
                }
                "ReceiveMessageWaitTimeSeconds" => {
                    in_range(0..=20)?;
                }
                "MaximumMessageSize" => {
                    in_range(1024..=1_048_576)?;
                }
                "MessageRetentionPeriod" => {
                    in_range(60..=1_209_600)?;
                }
                "KmsDataKeyReusePeriodSeconds" => {
                    in_range(60..=86_400)?;
                }
                "DeduplicationScope" if v != "queue" && v != "messageGroup" => {
                    return Err(invalid_attribute(k));
                }
                "FifoThroughputLimit" if v != "perQueue" && v != "perMessageGroupId" => {
                    return Err(invalid_attribute(k));
                }
                "Policy" | "RedriveAllowPolicy"
                    if serde_json::from_str::<Value>(&v).map_or(true, |p| !p.is_object()) =>
                {
                    return Err(invalid_attribute(k));
                }
                "ContentBasedDeduplication"
                | "DeduplicationScope"
                | "FifoThroughputLimit"
                | "FifoQueue"
                    if !self.fifo =>
                {
                    return Err(ApiError::sqs(
                        400,
                        "InvalidAttributeName",
                        "InvalidAttributeName",
                        format!("Unknown Attribute {k}."),
                    ));
                }
                "ContentBasedDeduplication" | "FifoQueue" | "SqsManagedSseEnabled"
                    if v != "true" && v != "false" =>
                {
                    return Err(invalid_attribute(k));
                }
                "RedrivePolicy" if !v.is_empty() => self.check_redrive(&v, target)?,
                _ => {}
            }
            plan.push((k.clone(), v));
        }
        for (k, v) in plan {
            match k.as_str() {
                "VisibilityTimeout" => self.visibility_timeout = v.parse().unwrap_or(30),
                "DelaySeconds" => self.delay_seconds = v.parse().unwrap_or(0),
                "ReceiveMessageWaitTimeSeconds" => self.receive_wait = v.parse().unwrap_or(0),
                "MaximumMessageSize" => self.max_message_size = v.parse().unwrap_or(1_048_576),
                "ContentBasedDeduplication" => self.content_dedup = v == "true",
                "RedrivePolicy" => {
                    self.redrive = if v.is_empty() { None } else { redrive_of(&v) };
                }
                _ => {}
            }
            self.attributes.insert(k, v);
        }
        Ok(())
    }

    /// A RedrivePolicy as SQS checks it: JSON, maxReceiveCount 1..=1000, a target that exists
    /// and is of the source queue's kind.
    fn check_redrive(&self, v: &str, target: &RedriveTarget) -> ApiResult<()> {
        let bad = |reason: &str| {
            ApiError::sqs(
                400,
                "InvalidAttributeValue",
                "InvalidAttributeValue",
                format!("Value {v} for parameter RedrivePolicy is invalid. Reason: {reason}"),
            )
        };
        let p: Value =
            serde_json::from_str(v).map_err(|_| bad("Redrive policy is not a valid JSON map."))?;
        let count = match &p["maxReceiveCount"] {
            Value::String(s) => s.parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| {
            bad("Redrive policy does not contain mandatory attribute: maxReceiveCount.")
        })?;
        if !(1..=1000).contains(&count) {
            return Err(bad(&format!(
                "Invalid value for maxReceiveCount: {count}, valid values are from 1 to 1000 both inclusive."
            )));
        }
        if p["deadLetterTargetArn"].as_str().is_none_or(str::is_empty) {
            return Err(bad(
                "Redrive policy does not contain mandatory attribute: deadLetterTargetArn.",
            ));
        }
        match target {
            Some((_, None)) | None => Err(bad("Dead letter target does not exist.")),
            Some((_, Some(fifo))) if *fifo != self.fifo => Err(bad(
                "Dead-letter queue must be same type of queue as the source.",
            )),
            Some(_) => Ok(()),
        }
    }

    /// The value `k` has now, as GetQueueAttributes shows it (for CreateQueue's comparison).
    fn effective(&self, k: &str) -> Option<String> {
        if let Some(v) = self.attributes.get(k) {
            return Some(v.clone());
        }
        Some(match k {
            "VisibilityTimeout" => self.visibility_timeout.to_string(),
            "DelaySeconds" => self.delay_seconds.to_string(),
            "ReceiveMessageWaitTimeSeconds" => self.receive_wait.to_string(),
            "MaximumMessageSize" => self.max_message_size.to_string(),
            "FifoQueue" if self.fifo => "true".into(),
            "ContentBasedDeduplication" if self.fifo => self.content_dedup.to_string(),
            // SQS's defaults for what was never set.
            "MessageRetentionPeriod" => "345600".into(),
            "KmsDataKeyReusePeriodSeconds" => "300".into(),
            "SqsManagedSseEnabled" => "true".into(),
            "DeduplicationScope" if self.fifo => "queue".into(),
            "FifoThroughputLimit" if self.fifo => "perQueue".into(),
            _ => return None,
        })
    }

    /// Whether `k` is already `v` (a RedrivePolicy is compared as the policy it is, whatever
    /// its spelling).
    fn has(&self, k: &str, v: &str) -> bool {
        let now = self.effective(k);
        if k == "RedrivePolicy" {
            let parse = |t: &str| redrive_of(t).map(|r| (r.dlq_arn, r.max_receive_count));
            return now.as_deref().and_then(parse) == parse(v) && parse(v).is_some();
        }
        now.as_deref() == Some(v)
    }

    fn counts(&self, now: Instant) -> (u64, u64, u64) {
        let (mut visible, mut in_flight, mut delayed) = (0, 0, 0);
        for m in self.messages.values() {
            if m.visible_at <= now {
                visible += 1;
            } else if m.in_flight {
                in_flight += 1;
            } else {
                delayed += 1;
            }
        }
        (visible, in_flight, delayed)
    }

    fn schedule(&mut self, seq: u64) {
        let Some(m) = self.messages.get_mut(&seq) else {
            return;
        };
        m.epoch = m.epoch.wrapping_add(1);
        if self.fifo {
            return; // FIFO receives walk the groups directly
        }
        if m.visible_at <= Instant::now() {
            self.ready.push_back((seq, m.epoch));
        } else {
            self.timers.push(Reverse((m.visible_at, seq, m.epoch)));
        }
    }

    fn insert(&mut self, mut m: Message) {
        let seq = self.next_seq;
        self.next_seq += 1;
        m.seq = seq;
        if let Some(g) = &m.group {
            self.groups.entry(g.clone()).or_default().push_back(seq);
        }
        self.messages.insert(seq, m);
        self.schedule(seq);
    }

    /// Takes a checked message: a FIFO duplicate inside the deduplication window is answered
    /// as the first send was and not enqueued again; anything else is enqueued.
    fn enqueue(&mut self, send: NewMessage, now: Instant) -> Value {
        let md5 = md5_hex(send.body.as_bytes());
        let seq = self.next_seq;
        let fifo_dedup = send.dedup_id.clone().filter(|_| self.fifo);
        if let Some(d) = &fifo_dedup {
            self.dedup.retain(|_, (expires, _, _)| *expires > now);
            if let Some((_, id, first)) = self.dedup.get(d) {
                // A duplicate inside the window: accepted, not enqueued again, answered with
                // the first send's MessageId and SequenceNumber.
                return json!({"MessageId": id, "MD5OfMessageBody": md5, "SequenceNumber": format!("{first:020}")});
            }
        }
        let id = format!("{:08x}-sim-{seq:012x}", rand::random::<u32>());
        if let Some(d) = fifo_dedup {
            self.dedup.insert(d, (now + DEDUP_WINDOW, id.clone(), seq));
        }
        let delay = Duration::from_secs(send.delay.unwrap_or(self.delay_seconds).min(900));
        self.insert(Message {
            seq,
            id: id.clone(),
            body: send.body.to_string(),
            md5: md5.clone(),
            message_attributes: send.attributes.cloned(),
            sent_ms: epoch_ms(),
            visible_at: now + delay,
            epoch: 0,
            receive_count: 0,
            first_receive_ms: None,
            received_at: None,
            receipt: None,
            in_flight: false,
            group: send.group,
            dedup_id: send.dedup_id,
        });
        let mut out = json!({"MessageId": id, "MD5OfMessageBody": md5});
        if self.fifo {
            out["SequenceNumber"] = json!(format!("{seq:020}"));
        }
        out
    }

    fn remove(&mut self, seq: u64) -> Option<Message> {
        let m = self.messages.remove(&seq)?;
        if let Some(g) = &m.group
            && let Some(list) = self.groups.get_mut(g)
        {
            list.retain(|s| *s != seq);
            if list.is_empty() {
                self.groups.remove(g);
            }
        }
        Some(m)
    }

    /// The earliest moment a message may become visible (for a long poll to wake at).
    fn next_wake(&mut self) -> Option<Instant> {
        if self.fifo {
            self.messages
                .values()
                .filter(|m| m.visible_at > Instant::now())
                .map(|m| m.visible_at)
                .min()
        } else {
            self.timers.peek().map(|Reverse((t, _, _))| *t)
        }
    }

    /// Hands out up to `max` visible messages, moving those past maxReceiveCount to `moved`.
    fn take(
        &mut self,
        max: usize,
        visibility: u64,
        dlq_exists: bool,
        moved: &mut Vec<Moved>,
    ) -> Vec<u64> {
        let now = Instant::now();
        let mut picked = Vec::new();
        if self.fifo {
            // Groups in turn; inside a group, messages strictly in order, stopping at the first
            // one not visible (in flight or delayed): that message locks its group.
            let groups: Vec<String> = self.groups.keys().cloned().collect();
            'groups: for g in groups {
                let seqs: Vec<u64> = self
                    .groups
                    .get(&g)
                    .map(|l| l.iter().copied().collect())
                    .unwrap_or_default();
                for seq in seqs {
                    if picked.len() >= max {
                        break 'groups;
                    }
                    if self.messages.get(&seq).is_none_or(|m| m.visible_at > now) {
                        break;
                    }
                    if self.try_deliver(seq, visibility, now, dlq_exists, moved) {
                        picked.push(seq);
                    }
                }
            }
            return picked;
        }
        while let Some(Reverse((t, seq, epoch))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if self.messages.get(&seq).is_some_and(|m| m.epoch == epoch) {
                self.ready.push_back((seq, epoch));
            }
        }
        while picked.len() < max {
            let Some((seq, epoch)) = self.ready.pop_front() else {
                break;
            };
            let current = self
                .messages
                .get(&seq)
                .is_some_and(|m| m.epoch == epoch && m.visible_at <= now);
            if current && self.try_deliver(seq, visibility, now, dlq_exists, moved) {
                picked.push(seq);
            }
        }
        picked
    }

    /// Delivers one message, or moves it to the DLQ if it was received maxReceiveCount times.
    /// A message past maxReceiveCount moves to the DLQ, but only when that queue exists: SQS keeps
    /// it in the source queue otherwise.
    fn try_deliver(
        &mut self,
        seq: u64,
        visibility: u64,
        now: Instant,
        dlq_exists: bool,
        moved: &mut Vec<Moved>,
    ) -> bool {
        let over = match (&self.redrive, self.messages.get(&seq)) {
            (Some(r), Some(m)) => dlq_exists && m.receive_count >= r.max_receive_count,
            _ => false,
        };
        if over {
            let dlq_arn = self
                .redrive
                .as_ref()
                .map(|r| r.dlq_arn.clone())
                .unwrap_or_default();
            if let Some(message) = self.remove(seq) {
                moved.push(Moved { dlq_arn, message });
            }
            return false;
        }
        let Some(m) = self.messages.get_mut(&seq) else {
            return false;
        };
        m.receive_count += 1;
        m.first_receive_ms.get_or_insert_with(epoch_ms);
        m.received_at = Some(now);
        m.receipt = Some(format!("{}:{}:{}", self.name, seq, m.receive_count));
        m.in_flight = true;
        m.visible_at = now + Duration::from_secs(visibility);
        self.schedule(seq);
        true
    }

    fn render(&self, seq: u64, req: &Value) -> Value {
        let m = &self.messages[&seq];
        let mut wanted: Vec<String> = Vec::new();
        for key in ["AttributeNames", "MessageSystemAttributeNames"] {
            if let Some(list) = req.get(key).and_then(Value::as_array) {
                wanted.extend(list.iter().filter_map(Value::as_str).map(String::from));
            }
        }
        let all = wanted.iter().any(|w| w == "All");
        let mut attrs = Map::new();
        let mut put = |name: &str, value: String| {
            if all || wanted.iter().any(|w| w == name) {
                attrs.insert(name.to_string(), Value::String(value));
            }
        };
        put("ApproximateReceiveCount", m.receive_count.to_string());
        put("SentTimestamp", m.sent_ms.to_string());
        put("SenderId", ACCOUNT.to_string());
        if let Some(t) = m.first_receive_ms {
            put("ApproximateFirstReceiveTimestamp", t.to_string());
        }
        if let Some(g) = &m.group {
            put("MessageGroupId", g.clone());
            put("SequenceNumber", format!("{:020}", m.seq));
        }
        if let Some(d) = &m.dedup_id {
            put("MessageDeduplicationId", d.clone());
        }
        let mut out = json!({
            "MessageId": m.id,
            "ReceiptHandle": m.receipt,
            "MD5OfBody": m.md5,
            "Body": m.body,
        });
        if !attrs.is_empty() {
            out["Attributes"] = Value::Object(attrs);
        }
        let names: Vec<&str> = req
            .get("MessageAttributeNames")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(Value::Object(ma)) = &m.message_attributes {
            let chosen: Map<String, Value> = ma
                .iter()
                .filter(|(k, _)| names.iter().any(|n| *n == "All" || *n == ".*" || n == k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if !chosen.is_empty() {
                out["MessageAttributes"] = Value::Object(chosen);
            }
        }
        out
    }
}

fn redrive_of(v: &str) -> Option<Redrive> {
    let p: Value = serde_json::from_str(v).ok()?;
    let max_receive_count = match &p["maxReceiveCount"] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64().map(|n| n as u32),
        _ => None,
    }?;
    Some(Redrive {
        dlq_arn: p["deadLetterTargetArn"].as_str()?.to_string(),
        max_receive_count,
    })
}

fn valid_body(body: &str) -> bool {
    body.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
    })
}

/// A SendMessage (or one SendMessageBatch entry), checked against its queue.
struct NewMessage<'a> {
    body: &'a str,
    attributes: Option<&'a Value>,
    group: Option<String>,
    /// On a FIFO queue, always set: given, or the body's SHA-256 (ContentBasedDeduplication).
    dedup_id: Option<String>,
    delay: Option<u64>,
}

impl<'a> NewMessage<'a> {
    /// Checks in SQS's order: the body and its attributes, the group and deduplication ids,
    /// the delay, then what a FIFO queue requires.
    fn check(q: &Queue, entry: &'a Value) -> ApiResult<NewMessage<'a>> {
        let (body, attributes) = check_body(q, entry)?;
        let group = id_param(entry, "MessageGroupId")?;
        let dedup_id = id_param(entry, "MessageDeduplicationId")?;
        if !q.fifo && dedup_id.is_some() {
            return Err(ApiError::sqs_invalid(
                "The request include parameter that is not valid for this queue type",
            ));
        }
        let delay = int_param(
            entry,
            "DelaySeconds",
            0..=900,
            "DelaySeconds must be >= 0 and <= 900",
        )?
        .map(|d| d as u64);
        let mut send = NewMessage {
            body,
            attributes,
            group,
            dedup_id,
            delay,
        };
        if q.fifo {
            send.check_fifo(q)?;
        }
        Ok(send)
    }

    /// A FIFO message needs a group, no delay of its own, and a deduplication id (given, or
    /// made from the body when the queue has ContentBasedDeduplication).
    fn check_fifo(&mut self, q: &Queue) -> ApiResult<()> {
        if self.group.is_none() {
            return Err(ApiError::sqs(
                400,
                "MissingParameter",
                "MissingParameter",
                "The request must contain the parameter MessageGroupId.",
            ));
        }
        if self.delay.is_some_and(|d| d > 0) {
            return Err(ApiError::sqs_invalid(
                "The request include parameter that is not valid for this queue type",
            ));
        }
        if self.dedup_id.is_none() {
            if !q.content_dedup {
                return Err(ApiError::sqs_invalid(
                    "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                ));
            }
            self.dedup_id = Some(
                Sha256::digest(self.body.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect(),
            );
        }
        Ok(())
    }
}

/// The message body and its attributes: a body is required, attributes are valid, both fit
/// the queue's MaximumMessageSize, and the body has only the characters SQS takes.
fn check_body<'a>(q: &Queue, entry: &'a Value) -> ApiResult<(&'a str, Option<&'a Value>)> {
    let body = entry
        .get("MessageBody")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if body.is_empty() {
        return Err(ApiError::sqs(
            400,
            "MissingParameter",
            "MissingParameter",
            "The request must contain the parameter MessageBody.",
        ));
    }
    let attributes = entry
        .get("MessageAttributes")
        .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()));
    if let Some(a) = attributes.and_then(Value::as_object) {
        validate_message_attributes(a)?;
    }
    let size = body.len() + attributes_size(attributes);
    if size > q.max_message_size {
        return Err(ApiError::sqs_invalid(format!(
            "One or more parameters are invalid. Reason: Message must be shorter than {} bytes.",
            q.max_message_size
        )));
    }
    if !valid_body(body) {
        return Err(ApiError::sqs(
            400,
            "InvalidMessageContents",
            "InvalidMessageContents",
            "Invalid characters found in the message body",
        ));
    }
    Ok((body, attributes))
}

/// A MessageGroupId or MessageDeduplicationId, when given: 1 to 128 printable ASCII
/// characters.
fn id_param(entry: &Value, field: &str) -> ApiResult<Option<String>> {
    let Some(v) = entry.get(field).and_then(Value::as_str) else {
        return Ok(None);
    };
    let ok = !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic());
    if !ok {
        return Err(ApiError::sqs_invalid(format!(
            "Value {v} for parameter {field} is invalid. Reason: it must be 1 to 128 characters of alphanumerics and punctuation."
        )));
    }
    Ok(Some(v.to_string()))
}

impl Sqs {
    /// `sampling_seed`: short polls sample, from this seed (None: they return every visible
    /// message).
    pub fn new(endpoint: String, max_message_size: usize, sampling_seed: Option<u64>) -> Self {
        Sqs {
            queues: RwLock::new(HashMap::new()),
            endpoint,
            max_message_size,
            sampling: sampling_seed.map(|seed| {
                Mutex::new(<rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(
                    seed,
                ))
            }),
        }
    }

    /// The dead-letter target a RedrivePolicy among `attrs` names, and whether it is FIFO.
    fn redrive_target(&self, attrs: &Map<String, Value>) -> RedriveTarget {
        let v = attrs.get("RedrivePolicy")?;
        let v = v
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| v.to_string());
        let p: Value = serde_json::from_str(&v).ok()?;
        let arn = p["deadLetterTargetArn"].as_str()?.to_string();
        let fifo = self.cell_by_arn(&arn).map(|c| c.lock().fifo);
        Some((arn, fifo))
    }

    fn cell_by_name(&self, name: &str) -> Option<Arc<QueueCell>> {
        self.queues.read_locked().get(name).cloned()
    }

    fn cell(&self, req: &Value) -> ApiResult<Arc<QueueCell>> {
        let url = req.get("QueueUrl").and_then(Value::as_str).ok_or_else(|| {
            ApiError::sqs(
                400,
                "MissingParameter",
                "MissingParameter",
                "QueueUrl is required",
            )
        })?;
        let name = url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        self.cell_by_name(name).ok_or_else(ApiError::no_queue)
    }

    fn cell_by_arn(&self, arn: &str) -> Option<Arc<QueueCell>> {
        self.cell_by_name(arn.rsplit(':').next().unwrap_or_default())
    }

    /// `entry_fault_rate`: the share of batch entries that fail on the server's side
    /// (SenderFault false), see [`crate::Faults::entry_server_fault_rate`].
    pub async fn handle(&self, op: &str, req: &Value, entry_fault_rate: f64) -> ApiResult {
        match op {
            "CreateQueue" => self.create_queue(req),
            "GetQueueUrl" => self.get_queue_url(req),
            "ListQueues" => self.list_queues(req),
            "DeleteQueue" => self.delete_queue(req),
            "PurgeQueue" => self.purge_queue(req),
            "GetQueueAttributes" => self.get_attributes(req),
            "SetQueueAttributes" => self.set_attributes(req),
            "SendMessage" => self.send_message(req),
            "SendMessageBatch" => self.send_batch(req, entry_fault_rate),
            "ReceiveMessage" => self.receive(req).await,
            "DeleteMessage" => self.delete_message(req),
            "DeleteMessageBatch" => self.batch_and_wake(req, entry_fault_rate, delete_entry),
            "ChangeMessageVisibility" => self.change_message_visibility(req),
            "ChangeMessageVisibilityBatch" => {
                self.batch_and_wake(req, entry_fault_rate, change_visibility_entry)
            }
            _ => Err(ApiError::sqs(
                400,
                "InvalidAction",
                "InvalidAction",
                format!("{op} is not supported by sluice-sim"),
            )),
        }
    }

    fn get_queue_url(&self, req: &Value) -> ApiResult {
        let name = req
            .get("QueueName")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let cell = self.cell_by_name(name).ok_or_else(ApiError::no_queue)?;
        Ok(json!({"QueueUrl": cell.lock().url}))
    }

    /// The URLs of the queues whose name starts with QueueNamePrefix, sorted.
    fn list_queues(&self, req: &Value) -> ApiResult {
        let prefix = req
            .get("QueueNamePrefix")
            .and_then(Value::as_str)
            .unwrap_or("");
        let queues = self.queues.read_locked();
        let mut urls: Vec<String> = queues
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, c)| c.lock().url.clone())
            .collect();
        urls.sort();
        Ok(json!({"QueueUrls": urls}))
    }

    fn delete_queue(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let name = cell.lock().name.clone();
        self.queues.write_locked().remove(&name);
        Ok(json!({}))
    }

    fn purge_queue(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let mut q = cell.lock();
        q.messages.clear();
        q.ready.clear();
        q.timers.clear();
        q.groups.clear();
        Ok(json!({}))
    }

    /// SetQueueAttributes: all of them or none (FifoQueue is for CreateQueue only).
    fn set_attributes(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let attrs = req
            .get("Attributes")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let target = self.redrive_target(&attrs);
        if attrs.contains_key("FifoQueue") {
            return Err(ApiError::sqs(
                400,
                "InvalidAttributeName",
                "InvalidAttributeName",
                "FifoQueue can only be set at creation: Unknown Attribute FifoQueue.",
            ));
        }
        cell.lock().apply_attributes(&attrs, &target)?;
        Ok(json!({}))
    }

    fn send_message(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let out = self.send_one(&cell, req)?;
        cell.arrivals.notify_waiters();
        Ok(out)
    }

    fn delete_message(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let receipt = receipt_of(req);
        delete(&mut cell.lock(), receipt).map_err(|e| single(e, receipt))?;
        // A FIFO group unlocks when its message in flight is deleted: a long poll
        // waiting on it returns at once, as SQS's does.
        cell.arrivals.notify_waiters();
        Ok(json!({}))
    }

    fn change_message_visibility(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let receipt = receipt_of(req);
        let t = visibility_param(req)?;
        change_visibility(&mut cell.lock(), receipt, t).map_err(|e| single(e, receipt))?;
        cell.arrivals.notify_waiters();
        Ok(json!({}))
    }

    /// A DeleteMessageBatch or ChangeMessageVisibilityBatch, then waking the queue's long
    /// polls (a FIFO group may have unlocked, a message become visible).
    fn batch_and_wake(
        &self,
        req: &Value,
        entry_fault_rate: f64,
        f: impl Fn(&mut Queue, &Value) -> ApiResult<()>,
    ) -> ApiResult {
        let out = self.batch(req, entry_fault_rate, f)?;
        self.cell(req)?.arrivals.notify_waiters();
        Ok(out)
    }

    fn create_queue(&self, req: &Value) -> ApiResult {
        let name = req
            .get("QueueName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let attrs = req
            .get("Attributes")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let fifo = attrs.get("FifoQueue").and_then(Value::as_str) == Some("true");
        let name_ok = !name.is_empty()
            && name.len() <= 80
            && name
                .trim_end_matches(".fifo")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok || fifo != name.ends_with(".fifo") {
            return Err(ApiError::sqs_invalid(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length. A FIFO queue's name ends in .fifo",
            ));
        }
        if let Some(existing) = self.cell_by_name(&name) {
            // The same name with the same values is the existing queue; any other value is
            // refused, as SQS refuses it.
            let q = existing.lock();
            for (k, v) in &attrs {
                let v = v
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string());
                if !q.has(k, &v) {
                    return Err(ApiError::sqs(
                        400,
                        "QueueNameExists",
                        "QueueAlreadyExists",
                        format!(
                            "A queue already exists with the same name and a different value for attribute {k}"
                        ),
                    ));
                }
            }
            return Ok(json!({"QueueUrl": q.url}));
        }
        let target = self.redrive_target(&attrs);
        let mut queue = Queue {
            url: format!("{}/{ACCOUNT}/{name}", self.endpoint),
            arn: format!("arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"),
            name: name.clone(),
            created: epoch_ms() / 1000,
            fifo,
            attributes: BTreeMap::new(),
            visibility_timeout: 30,
            delay_seconds: 0,
            receive_wait: 0,
            max_message_size: self.max_message_size,
            content_dedup: false,
            redrive: None,
            messages: HashMap::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            groups: BTreeMap::new(),
            dedup: HashMap::new(),
            next_seq: 1,
        };
        queue.apply_attributes(&attrs, &target)?;
        let url = queue.url.clone();
        let cell = Arc::new(QueueCell {
            state: Mutex::new(queue),
            arrivals: Notify::new(),
        });
        self.queues.write_locked().entry(name).or_insert(cell);
        Ok(json!({"QueueUrl": url}))
    }

    fn get_attributes(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let q = cell.lock();
        let (visible, in_flight, delayed) = q.counts(Instant::now());
        let mut all: BTreeMap<String, String> = q.attributes.clone();
        all.insert("ApproximateNumberOfMessages".into(), visible.to_string());
        all.insert(
            "ApproximateNumberOfMessagesNotVisible".into(),
            in_flight.to_string(),
        );
        all.insert(
            "ApproximateNumberOfMessagesDelayed".into(),
            delayed.to_string(),
        );
        all.insert("VisibilityTimeout".into(), q.visibility_timeout.to_string());
        all.insert("DelaySeconds".into(), q.delay_seconds.to_string());
        all.insert(
            "ReceiveMessageWaitTimeSeconds".into(),
            q.receive_wait.to_string(),
        );
        all.insert("MaximumMessageSize".into(), q.max_message_size.to_string());
        all.insert("QueueArn".into(), q.arn.clone());
        all.insert("CreatedTimestamp".into(), q.created.to_string());
        if q.fifo {
            all.insert("FifoQueue".into(), "true".into());
            all.insert(
                "ContentBasedDeduplication".into(),
                q.content_dedup.to_string(),
            );
        }
        let wanted: Vec<&str> = req
            .get("AttributeNames")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let attrs: Map<String, Value> = all
            .into_iter()
            .filter(|(k, _)| wanted.iter().any(|w| *w == "All" || w == k))
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        Ok(json!({"Attributes": attrs}))
    }

    fn send_one(&self, cell: &QueueCell, entry: &Value) -> ApiResult {
        let mut q = cell.lock();
        let send = NewMessage::check(&q, entry)?;
        Ok(q.enqueue(send, Instant::now()))
    }

    fn send_batch(&self, req: &Value, entry_fault_rate: f64) -> ApiResult {
        let cell = self.cell(req)?;
        let entries = batch_entries(req)?;
        // Bodies and message attributes together, as SQS counts a batch.
        let total: usize = entries
            .iter()
            .map(|e| {
                e.get("MessageBody")
                    .and_then(Value::as_str)
                    .map_or(0, str::len)
                    + attributes_size(e.get("MessageAttributes"))
            })
            .sum();
        if total > MAX_BATCH_BYTES {
            return Err(ApiError::sqs(
                400,
                "BatchRequestTooLong",
                "AWS.SimpleQueueService.BatchRequestTooLong",
                format!("Batch requests cannot be longer than {MAX_BATCH_BYTES} bytes"),
            ));
        }
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for e in &entries {
            let id = e.get("Id").cloned().unwrap_or(Value::Null);
            if entry_fault(entry_fault_rate) {
                failed.push(entry_fault_json(id));
                continue;
            }
            match self.send_one(&cell, e) {
                Ok(mut r) => {
                    r["Id"] = id;
                    ok.push(r);
                }
                Err(err) => failed.push(json!({"Id": id, "SenderFault": err.status < 500, "Code": err.type_name.rsplit('#').next(), "Message": err.message})),
            }
        }
        cell.arrivals.notify_waiters();
        Ok(json!({"Successful": ok, "Failed": failed}))
    }

    fn batch(
        &self,
        req: &Value,
        entry_fault_rate: f64,
        f: impl Fn(&mut Queue, &Value) -> ApiResult<()>,
    ) -> ApiResult {
        let cell = self.cell(req)?;
        let entries = batch_entries(req)?;
        let mut q = cell.lock();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for e in &entries {
            let id = e.get("Id").cloned().unwrap_or(Value::Null);
            if entry_fault(entry_fault_rate) {
                failed.push(entry_fault_json(id));
                continue;
            }
            match f(&mut q, e) {
                Ok(()) => ok.push(json!({"Id": id})),
                Err(err) => failed.push(json!({"Id": id, "SenderFault": err.status < 500, "Code": err.query_error.as_deref().and_then(|c| c.split(';').next()).unwrap_or("InternalError"), "Message": err.message})),
            }
        }
        Ok(json!({"Successful": ok, "Failed": failed}))
    }

    async fn receive(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let max = int_param(
            req,
            "MaxNumberOfMessages",
            1..=10,
            "Must be between 1 and 10, if provided.",
        )?
        .unwrap_or(1) as u64;
        let (default_wait, default_visibility) = {
            let q = cell.lock();
            (q.receive_wait, q.visibility_timeout)
        };
        let wait = int_param(
            req,
            "WaitTimeSeconds",
            0..=20,
            "Must be >= 0 and <= 20, if provided.",
        )?
        .map_or(default_wait, |w| w as u64);
        let visibility = int_param(
            req,
            "VisibilityTimeout",
            0..=MAX_VISIBILITY as i64,
            "Must be between 0 and 43200, if provided.",
        )?
        .map_or(default_visibility, |v| v as u64);
        // A short poll asks a sample of SQS's servers: it may bring fewer than are there, or
        // none (modelled when sampling is on).
        let max = match (&self.sampling, wait) {
            (Some(rng), 0) => {
                use rand::Rng as _;
                rng.locked().random_range(0..=max)
            }
            _ => max,
        };
        let give_up = Instant::now() + Duration::from_secs(wait);
        loop {
            let arrived = cell.arrivals.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let mut moved = Vec::new();
            let dlq_arn = cell.lock().redrive.as_ref().map(|r| r.dlq_arn.clone());
            let dlq_exists = dlq_arn.is_some_and(|arn| self.cell_by_arn(&arn).is_some());
            let (messages, wake) = {
                let mut q = cell.lock();
                let picked = q.take(max as usize, visibility, dlq_exists, &mut moved);
                let rendered: Vec<Value> = picked.iter().map(|s| q.render(*s, req)).collect();
                (rendered, q.next_wake())
            };
            self.dead_letter(&cell, moved);
            if !messages.is_empty() || Instant::now() >= give_up {
                return Ok(json!({"Messages": messages}));
            }
            let until = wake.map_or(give_up, |w| w.min(give_up));
            tokio::select! {
                _ = arrived => {}
                _ = tokio::time::sleep_until(until.into()) => {}
            }
        }
    }

    fn dead_letter(&self, source: &Arc<QueueCell>, moved: Vec<Moved>) {
        for Moved {
            dlq_arn,
            mut message,
        } in moved
        {
            message.receipt = None;
            message.in_flight = false;
            message.visible_at = Instant::now();
            // Deleted since the check in `receive`: the message stays where it was, as in SQS.
            let dlq = self.cell_by_arn(&dlq_arn).unwrap_or_else(|| source.clone());
            let mut q = dlq.lock();
            if q.fifo && message.group.is_none() {
                message.group = Some("dlq".into());
            }
            q.insert(message);
            drop(q);
            dlq.arrivals.notify_waiters();
        }
    }

    /// Message counts per queue, for the admin endpoint.
    pub fn report(&self) -> Value {
        let now = Instant::now();
        let queues = self.queues.read_locked();
        let mut out = Map::new();
        for (name, cell) in queues.iter() {
            let q = cell.lock();
            let (visible, in_flight, delayed) = q.counts(now);
            out.insert(name.clone(), json!({"url": q.url, "visible": visible, "in_flight": in_flight, "delayed": delayed}));
        }
        Value::Object(out)
    }
}

fn batch_entries(req: &Value) -> ApiResult<Vec<Value>> {
    let entries = req
        .get("Entries")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if entries.is_empty() {
        return Err(ApiError::sqs(
            400,
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one entry in the request.",
        ));
    }
    if entries.len() > MAX_BATCH {
        return Err(ApiError::sqs(
            400,
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            "Maximum number of entries per request are 10.",
        ));
    }
    for e in &entries {
        let id = e.get("Id").and_then(Value::as_str).unwrap_or_default();
        let valid = !id.is_empty()
            && id.len() <= 80
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(ApiError::sqs(
                400,
                "InvalidBatchEntryId",
                "AWS.SimpleQueueService.InvalidBatchEntryId",
                "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
            ));
        }
    }
    let mut ids: Vec<&str> = entries
        .iter()
        .filter_map(|e| e.get("Id").and_then(Value::as_str))
        .collect();
    ids.sort();
    ids.dedup();
    if ids.len() != entries.len() {
        return Err(ApiError::sqs(
            400,
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            "Id values must be distinct",
        ));
    }
    Ok(entries)
}

/// A request's or batch entry's ReceiptHandle ("" when absent).
fn receipt_of(v: &Value) -> &str {
    v.get("ReceiptHandle")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// One entry of a DeleteMessageBatch.
fn delete_entry(q: &mut Queue, e: &Value) -> ApiResult<()> {
    delete(q, receipt_of(e))
}

/// One entry of a ChangeMessageVisibilityBatch.
fn change_visibility_entry(q: &mut Queue, e: &Value) -> ApiResult<()> {
    change_visibility(q, receipt_of(e), visibility_param(e)?)
}

fn parse_receipt(q: &Queue, receipt: &str) -> ApiResult<u64> {
    let mut parts = receipt.rsplitn(3, ':');
    let _count = parts.next();
    let seq = parts.next().and_then(|s| s.parse().ok());
    match (seq, parts.next()) {
        (Some(seq), Some(name)) if name == q.name => Ok(seq),
        _ => Err(ApiError::sqs(
            400,
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
            format!("The input receipt handle \"{receipt}\" is not a valid receipt handle."),
        )),
    }
}

/// Why a receipt handle no longer acts, as a batch entry reports it (`ReceiptHandleIsInvalid`);
/// [`single`] words it as the one-message call does.
fn receipt_error(reason: &str) -> ApiError {
    ApiError::sqs(
        400,
        "ReceiptHandleIsInvalid",
        "ReceiptHandleIsInvalid",
        reason,
    )
}

/// A one-message call's answer for a receipt that no longer acts: InvalidParameterValue naming
/// the handle, with the reason.
fn single(e: ApiError, receipt: &str) -> ApiError {
    if e.type_name.ends_with("#ReceiptHandleIsInvalid") && !e.message.contains("not a valid") {
        ApiError::sqs_invalid(format!(
            "Value {receipt} for parameter ReceiptHandle is invalid. Reason: {}.",
            e.message
        ))
    } else {
        e
    }
}

const EXPIRED: &str = "The receipt handle has expired";
const NOT_AVAILABLE: &str =
    "Message does not exist or is not available for visibility timeout change";

/// A ChangeMessageVisibility's VisibilityTimeout: required, 0..=43200.
fn visibility_param(req: &Value) -> ApiResult<u64> {
    int_param(
        req,
        "VisibilityTimeout",
        0..=MAX_VISIBILITY as i64,
        "Must be between 0 and 43200, if provided.",
    )?
    .map(|t| t as u64)
    .ok_or_else(|| {
        ApiError::sqs(
            400,
            "MissingParameter",
            "MissingParameter",
            "The request must contain the parameter VisibilityTimeout.",
        )
    })
}

/// Deletes with a receipt. Standard queues: the current receipt deletes even after its
/// visibility lapsed, and an outdated one (the message was received again since) succeeds
/// without deleting, as SQS documents. FIFO queues: a receipt expires with its visibility
/// timeout, and deleting with it is refused.
fn delete(q: &mut Queue, receipt: &str) -> ApiResult<()> {
    let seq = parse_receipt(q, receipt)?;
    let now = Instant::now();
    let Some(m) = q.messages.get(&seq) else {
        return Ok(());
    };
    let current = m.receipt.as_deref() == Some(receipt);
    if q.fifo && (!current || m.visible_at <= now) {
        return Err(receipt_error(EXPIRED));
    }
    if current {
        q.remove(seq);
    }
    Ok(())
}

/// Changes the visibility of a message in flight with its current receipt. The total visibility
/// of one receive may not pass 12 hours from it, across every change.
fn change_visibility(q: &mut Queue, receipt: &str, timeout: u64) -> ApiResult<()> {
    let seq = parse_receipt(q, receipt)?;
    let now = Instant::now();
    let fifo = q.fifo;
    let Some(m) = q.messages.get_mut(&seq) else {
        return Err(receipt_error(NOT_AVAILABLE));
    };
    let current = m.receipt.as_deref() == Some(receipt);
    if !current {
        return Err(receipt_error(if fifo { EXPIRED } else { NOT_AVAILABLE }));
    }
    if m.visible_at <= now {
        return Err(if fifo {
            receipt_error(EXPIRED)
        } else {
            ApiError::sqs(
                400,
                "MessageNotInflight",
                "AWS.SimpleQueueService.MessageNotInflight",
                format!("{NOT_AVAILABLE}."),
            )
        });
    }
    let held = m
        .received_at
        .map_or(0, |r| now.saturating_duration_since(r).as_secs());
    if held + timeout > MAX_VISIBILITY {
        return Err(ApiError::sqs_invalid(format!(
            "Value {timeout} for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout for the message is beyond the limit [{MAX_VISIBILITY} seconds]"
        )));
    }
    m.visible_at = now + Duration::from_secs(timeout);
    q.schedule(seq);
    Ok(())
}

/// Whether this batch entry fails on the server's side (an injected fault).
fn entry_fault(rate: f64) -> bool {
    use rand::Rng as _;
    rate > 0.0 && rand::rng().random::<f64>() < rate
}

fn entry_fault_json(id: Value) -> Value {
    json!({"Id": id, "SenderFault": false, "Code": "InternalError", "Message": "injected entry fault: the server failed to handle this entry"})
}

/// Bytes SQS counts for a message's attributes: each name, data type and value.
fn attributes_size(attributes: Option<&Value>) -> usize {
    attributes.and_then(Value::as_object).map_or(0, |a| {
        a.iter()
            .map(|(name, v)| {
                name.len()
                    + v.get("DataType")
                        .and_then(Value::as_str)
                        .map_or(0, str::len)
                    + v.get("StringValue")
                        .and_then(Value::as_str)
                        .map_or(0, str::len)
                    + v.get("BinaryValue")
                        .and_then(Value::as_str)
                        .map_or(0, |b| decoded(b).map_or(b.len(), |d| d.len()))
            })
            .sum()
    })
}

/// A Binary value's bytes (the wire carries base64).
fn decoded(b64: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Message attributes as SQS validates them: at most 10; names of 1-256 characters from
/// [A-Za-z0-9_.-], not starting or ending with a period, without two periods in a row, not
/// starting with `AWS.` or `Amazon.`; a data type of String, Number or Binary (with an optional
/// `.label`); a non-empty value; String values of characters a body may hold; Number values
/// numbers of up to 38 digits.
fn validate_message_attributes(attrs: &Map<String, Value>) -> ApiResult<()> {
    if attrs.len() > 10 {
        return Err(ApiError::sqs_invalid(format!(
            "Number of message attributes [{}] exceeds the allowed maximum [10].",
            attrs.len()
        )));
    }
    for (name, v) in attrs {
        let lower = name.to_ascii_lowercase();
        let name_ok = !name.is_empty()
            && name.len() <= 256
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && !lower.starts_with("aws.")
            && !lower.starts_with("amazon.");
        if !name_ok {
            return Err(ApiError::sqs_invalid(format!(
                "Message (user) attribute name '{name}' is invalid. Names may hold only alphanumeric characters, hyphens, underscores and periods (not at either end, not two in a row), be up to 256 characters long, and must not start with AWS. or Amazon."
            )));
        }
        let data_type = v
            .get("DataType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let base = data_type.split('.').next().unwrap_or_default();
        if !matches!(base, "String" | "Number" | "Binary") || data_type.len() > 256 {
            return Err(ApiError::sqs_invalid(format!(
                "The message attribute '{name}' has an invalid message attribute type, the set of supported type prefixes is Binary, Number, and String."
            )));
        }
        let field = if base == "Binary" {
            "BinaryValue"
        } else {
            "StringValue"
        };
        let value = v.get(field).and_then(Value::as_str).unwrap_or_default();
        if value.is_empty() {
            return Err(ApiError::sqs_invalid(format!(
                "The message attribute '{name}' must contain non-empty message attribute value for message attribute type '{base}'."
            )));
        }
        if base == "Binary" && decoded(value).is_none_or(|d| d.is_empty()) {
            return Err(ApiError::sqs_invalid(format!(
                "Message (user) attribute '{name}' must contain a non-empty, base64-encoded binary value."
            )));
        }
        if base == "String" && !valid_body(value) {
            return Err(ApiError::sqs_invalid(format!(
                "Message (user) attribute '{name}' value contains invalid characters."
            )));
        }
        if base == "Number" {
            // Up to 38 significant digits, from -10^128 to 10^126, as SQS documents.
            let mantissa = value
                .split(['e', 'E'])
                .next()
                .unwrap_or_default()
                .trim_start_matches(['-', '+']);
            let digits = mantissa
                .chars()
                .filter(char::is_ascii_digit)
                .skip_while(|c| *c == '0')
                .count();
            let in_range = value
                .parse::<f64>()
                .is_ok_and(|n| n.is_finite() && n.abs() < 1e126 && n > -1e128);
            if !in_range || digits > 38 {
                return Err(ApiError::sqs_invalid(format!(
                    "Can't cast the value of message (user) attribute '{name}' to a number."
                )));
            }
        }
    }
    Ok(())
}
