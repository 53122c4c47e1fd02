//! The SQS half: standard and FIFO queues with visibility timeouts, long polls that return as
//! soon as a message is there, delays, deduplication (5-minute window, content-based too),
//! FIFO group locking, and redrive to a dead-letter queue after `maxReceiveCount`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest as _, Md5};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

use crate::error::{ApiError, ApiResult};

const ACCOUNT: &str = "000000000000";
const DEDUP_WINDOW: Duration = Duration::from_secs(300);
const MAX_VISIBILITY: u64 = 12 * 3600;
const MAX_BATCH: usize = 10;

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
    dedup: HashMap<String, (Instant, String)>,
    next_seq: u64,
}

pub struct QueueCell {
    state: Mutex<Queue>,
    arrivals: Notify,
}

impl QueueCell {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Sqs {
    queues: RwLock<HashMap<String, Arc<QueueCell>>>,
    endpoint: String,
    pub max_message_size: usize,
}

/// A message leaving its queue for the dead-letter queue.
struct Moved {
    dlq_arn: String,
    message: Message,
}

impl Queue {
    fn apply_attributes(&mut self, attrs: &Map<String, Value>) -> ApiResult<()> {
        for (k, v) in attrs {
            let v = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            let num = || {
                v.parse::<u64>().map_err(|_| {
                    ApiError::sqs_invalid(format!("Invalid value for the parameter {k}."))
                })
            };
            match k.as_str() {
                "VisibilityTimeout" => {
                    let n = num()?;
                    if n > MAX_VISIBILITY {
                        return Err(ApiError::sqs_invalid("VisibilityTimeout must be 0..=43200"));
                    }
                    self.visibility_timeout = n;
                }
                "DelaySeconds" => self.delay_seconds = num()?.min(900),
                "ReceiveMessageWaitTimeSeconds" => self.receive_wait = num()?.min(20),
                "MaximumMessageSize" => self.max_message_size = num()? as usize,
                "ContentBasedDeduplication" => self.content_dedup = v == "true",
                "FifoQueue" => {}
                "RedrivePolicy" => {
                    if v.is_empty() {
                        self.redrive = None;
                    } else {
                        let p: Value = serde_json::from_str(&v)
                            .map_err(|_| ApiError::sqs_invalid("RedrivePolicy must be JSON"))?;
                        let dlq_arn = p["deadLetterTargetArn"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string();
                        let max_receive_count = match &p["maxReceiveCount"] {
                            Value::String(s) => s.parse().ok(),
                            Value::Number(n) => n.as_u64().map(|n| n as u32),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            ApiError::sqs_invalid("RedrivePolicy needs maxReceiveCount")
                        })?;
                        self.redrive = Some(Redrive {
                            dlq_arn,
                            max_receive_count,
                        });
                    }
                }
                _ => {}
            }
            self.attributes.insert(k.clone(), v);
        }
        Ok(())
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

fn valid_body(body: &str) -> bool {
    body.chars().all(|c| {
        matches!(c, '\u{9}' | '\u{a}' | '\u{d}' | '\u{20}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}' | '\u{10000}'..='\u{10ffff}')
    })
}

impl Sqs {
    pub fn new(endpoint: String, max_message_size: usize) -> Self {
        Sqs {
            queues: RwLock::new(HashMap::new()),
            endpoint,
            max_message_size,
        }
    }

    fn cell_by_name(&self, name: &str) -> Option<Arc<QueueCell>> {
        self.queues
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
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

    pub async fn handle(&self, op: &str, req: &Value) -> ApiResult {
        match op {
            "CreateQueue" => self.create_queue(req),
            "GetQueueUrl" => {
                let name = req
                    .get("QueueName")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let cell = self.cell_by_name(name).ok_or_else(ApiError::no_queue)?;
                Ok(json!({"QueueUrl": cell.lock().url}))
            }
            "ListQueues" => {
                let prefix = req
                    .get("QueueNamePrefix")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
                let mut urls: Vec<String> = queues
                    .iter()
                    .filter(|(n, _)| n.starts_with(prefix))
                    .map(|(_, c)| c.lock().url.clone())
                    .collect();
                urls.sort();
                Ok(json!({"QueueUrls": urls}))
            }
            "DeleteQueue" => {
                let cell = self.cell(req)?;
                let name = cell.lock().name.clone();
                self.queues
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
                Ok(json!({}))
            }
            "PurgeQueue" => {
                let cell = self.cell(req)?;
                let mut q = cell.lock();
                q.messages.clear();
                q.ready.clear();
                q.timers.clear();
                q.groups.clear();
                Ok(json!({}))
            }
            "GetQueueAttributes" => self.get_attributes(req),
            "SetQueueAttributes" => {
                let cell = self.cell(req)?;
                let attrs = req
                    .get("Attributes")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                cell.lock().apply_attributes(&attrs)?;
                Ok(json!({}))
            }
            "SendMessage" => {
                let cell = self.cell(req)?;
                let out = self.send_one(&cell, req)?;
                cell.arrivals.notify_waiters();
                Ok(out)
            }
            "SendMessageBatch" => self.send_batch(req),
            "ReceiveMessage" => self.receive(req).await,
            "DeleteMessage" => {
                let cell = self.cell(req)?;
                let receipt = req
                    .get("ReceiptHandle")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                delete(&mut cell.lock(), receipt)?;
                // A FIFO group unlocks when its message in flight is deleted: a long poll
                // waiting on it returns at once, as SQS's does.
                cell.arrivals.notify_waiters();
                Ok(json!({}))
            }
            "DeleteMessageBatch" => {
                let out = self.batch(req, |q, e| {
                    delete(
                        q,
                        e.get("ReceiptHandle")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                    )
                })?;
                self.cell(req)?.arrivals.notify_waiters();
                Ok(out)
            }
            "ChangeMessageVisibility" => {
                let cell = self.cell(req)?;
                let receipt = req
                    .get("ReceiptHandle")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let t = req
                    .get("VisibilityTimeout")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                change_visibility(&mut cell.lock(), receipt, t)?;
                cell.arrivals.notify_waiters();
                Ok(json!({}))
            }
            "ChangeMessageVisibilityBatch" => {
                let out = self.batch(req, |q, e| {
                    change_visibility(
                        q,
                        e.get("ReceiptHandle")
                            .and_then(Value::as_str)
                            .unwrap_or_default(),
                        e.get("VisibilityTimeout")
                            .and_then(Value::as_u64)
                            .unwrap_or(0),
                    )
                })?;
                self.cell(req)?.arrivals.notify_waiters();
                Ok(out)
            }
            _ => Err(ApiError::sqs(
                400,
                "InvalidAction",
                "InvalidAction",
                format!("{op} is not supported by sluice-sim"),
            )),
        }
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
            return Ok(json!({"QueueUrl": existing.lock().url}));
        }
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
        queue.apply_attributes(&attrs)?;
        let url = queue.url.clone();
        let cell = Arc::new(QueueCell {
            state: Mutex::new(queue),
            arrivals: Notify::new(),
        });
        self.queues
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_insert(cell);
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
        let body = entry
            .get("MessageBody")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let mut q = cell.lock();
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
        if let Some(n) = attributes.and_then(Value::as_object).map(|a| a.len())
            && n > 10
        {
            return Err(ApiError::sqs_invalid(format!(
                "Number of message attributes [{n}] exceeds the allowed maximum [10]."
            )));
        }
        // SQS counts each attribute's name, data type and value against the message size.
        let size = body.len()
            + attributes.and_then(Value::as_object).map_or(0, |a| {
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
                                .map_or(0, |b| b.len() * 3 / 4)
                    })
                    .sum::<usize>()
            });
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
        let group = entry
            .get("MessageGroupId")
            .and_then(Value::as_str)
            .map(String::from);
        let mut dedup_id = entry
            .get("MessageDeduplicationId")
            .and_then(Value::as_str)
            .map(String::from);
        let delay = entry.get("DelaySeconds").and_then(Value::as_u64);
        let now = Instant::now();
        if q.fifo {
            if group.is_none() {
                return Err(ApiError::sqs(
                    400,
                    "MissingParameter",
                    "MissingParameter",
                    "The request must contain the parameter MessageGroupId.",
                ));
            }
            if delay.is_some_and(|d| d > 0) {
                return Err(ApiError::sqs_invalid(
                    "DelaySeconds is per queue on FIFO queues",
                ));
            }
            if dedup_id.is_none() {
                if !q.content_dedup {
                    return Err(ApiError::sqs_invalid(
                        "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId provided explicitly",
                    ));
                }
                dedup_id = Some(
                    Sha256::digest(body.as_bytes())
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect(),
                );
            }
        }
        let md5 = md5_hex(body.as_bytes());
        let seq = q.next_seq;
        if let Some(d) = &dedup_id
            && q.fifo
        {
            q.dedup.retain(|_, (expires, _)| *expires > now);
            if let Some((_, id)) = q.dedup.get(d) {
                // A duplicate inside the window: accepted, not enqueued again.
                return Ok(
                    json!({"MessageId": id, "MD5OfMessageBody": md5, "SequenceNumber": format!("{seq:020}")}),
                );
            }
        }
        let id = format!("{:08x}-sim-{seq:012x}", rand::random::<u32>());
        if let Some(d) = &dedup_id
            && q.fifo
        {
            q.dedup.insert(d.clone(), (now + DEDUP_WINDOW, id.clone()));
        }
        let delay = Duration::from_secs(delay.unwrap_or(q.delay_seconds).min(900));
        let message = Message {
            seq,
            id: id.clone(),
            body: body.to_string(),
            md5: md5.clone(),
            message_attributes: attributes.cloned(),
            sent_ms: epoch_ms(),
            visible_at: now + delay,
            epoch: 0,
            receive_count: 0,
            first_receive_ms: None,
            receipt: None,
            in_flight: false,
            group,
            dedup_id,
        };
        let fifo = q.fifo;
        q.insert(message);
        let mut out = json!({"MessageId": id, "MD5OfMessageBody": md5});
        if fifo {
            out["SequenceNumber"] = json!(format!("{seq:020}"));
        }
        Ok(out)
    }

    fn send_batch(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let entries = batch_entries(req)?;
        let total: usize = entries
            .iter()
            .map(|e| {
                e.get("MessageBody")
                    .and_then(Value::as_str)
                    .map_or(0, str::len)
            })
            .sum();
        let limit = cell.lock().max_message_size;
        if total > limit {
            return Err(ApiError::sqs(
                400,
                "BatchRequestTooLong",
                "AWS.SimpleQueueService.BatchRequestTooLong",
                format!("Batch requests cannot be longer than {limit} bytes"),
            ));
        }
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for e in &entries {
            let id = e.get("Id").cloned().unwrap_or(Value::Null);
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

    fn batch(&self, req: &Value, f: impl Fn(&mut Queue, &Value) -> ApiResult<()>) -> ApiResult {
        let cell = self.cell(req)?;
        let entries = batch_entries(req)?;
        let mut q = cell.lock();
        let (mut ok, mut failed) = (Vec::new(), Vec::new());
        for e in &entries {
            let id = e.get("Id").cloned().unwrap_or(Value::Null);
            match f(&mut q, e) {
                Ok(()) => ok.push(json!({"Id": id})),
                Err(err) => failed.push(json!({"Id": id, "SenderFault": err.status < 500, "Code": err.query_error.as_deref().and_then(|c| c.split(';').next()).unwrap_or("InternalError"), "Message": err.message})),
            }
        }
        Ok(json!({"Successful": ok, "Failed": failed}))
    }

    async fn receive(&self, req: &Value) -> ApiResult {
        let cell = self.cell(req)?;
        let max = req
            .get("MaxNumberOfMessages")
            .and_then(Value::as_u64)
            .unwrap_or(1);
        if !(1..=10).contains(&max) {
            return Err(ApiError::sqs_invalid(
                "Value for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10.",
            ));
        }
        let (default_wait, default_visibility) = {
            let q = cell.lock();
            (q.receive_wait, q.visibility_timeout)
        };
        let wait = req
            .get("WaitTimeSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(default_wait);
        if wait > 20 {
            return Err(ApiError::sqs_invalid(
                "Value for parameter WaitTimeSeconds is invalid. Reason: Must be >= 0 and <= 20.",
            ));
        }
        let visibility = req
            .get("VisibilityTimeout")
            .and_then(Value::as_u64)
            .unwrap_or(default_visibility)
            .min(MAX_VISIBILITY);
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
        let queues = self.queues.read().unwrap_or_else(|e| e.into_inner());
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

/// Deletes with the current receipt. An outdated receipt (the message was received again since)
/// succeeds without deleting, as SQS documents.
fn delete(q: &mut Queue, receipt: &str) -> ApiResult<()> {
    let seq = parse_receipt(q, receipt)?;
    if q.messages
        .get(&seq)
        .is_some_and(|m| m.receipt.as_deref() == Some(receipt))
    {
        q.remove(seq);
    }
    Ok(())
}

fn change_visibility(q: &mut Queue, receipt: &str, timeout: u64) -> ApiResult<()> {
    let seq = parse_receipt(q, receipt)?;
    if timeout > MAX_VISIBILITY {
        return Err(ApiError::sqs_invalid("VisibilityTimeout must be 0..=43200"));
    }
    let now = Instant::now();
    let Some(m) = q.messages.get_mut(&seq) else {
        return Err(ApiError::sqs(
            400,
            "ReceiptHandleIsInvalid",
            "ReceiptHandleIsInvalid",
            "The receipt handle has expired.",
        ));
    };
    if m.receipt.as_deref() != Some(receipt) || m.visible_at <= now {
        return Err(ApiError::sqs(
            400,
            "MessageNotInflight",
            "AWS.SimpleQueueService.MessageNotInflight",
            "Message is not in flight.",
        ));
    }
    m.visible_at = now + Duration::from_secs(timeout);
    q.schedule(seq);
    Ok(())
}
