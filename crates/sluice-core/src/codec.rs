//! From a message body to the DynamoDB items it carries.
//!
//! A body is one JSON object (one request log), a JSON array of objects, or several objects
//! separated by whitespace (NDJSON). Every log becomes one item; the message may be acked only when
//! all of them are written. A body that can never be written (not UTF-8, not JSON, a log that is not
//! an object or misses a required field, an item over 400 KB) is a [`DecodeError`]: poison, which
//! no retry can fix.
//!
//! Everything DynamoDB would refuse is caught here, so it reaches the dead-letter path with its
//! reason instead of failing at the table: numbers outside DynamoDB's range or precision
//! ([`crate::number`]), maps and lists nested deeper than 32 levels, attribute names of 64 KiB or
//! more, empty attribute names, a partition key that is empty or over 2,048 bytes, an item over
//! 400 KB (sized the way DynamoDB counts it).
//!
//! Keys are deterministic: the key field's text, a number key in DynamoDB's normalised form (so
//! `100`, `1e2` and `100.0` are one row), or a content hash for a log without one.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::item::{
    AttrValue, Item, MAX_ATTRIBUTE_NAME_BYTES, MAX_ITEM_BYTES, MAX_NESTING_LEVELS,
    MAX_PARTITION_KEY_BYTES,
};
use crate::number::{Number, NumberError};
use crate::stored::{Compression, compress_item};

/// How logs map onto items.
#[derive(Debug, Clone)]
pub struct Schema {
    /// The log field whose value is the item key (default `request_id`).
    pub key_field: String,
    /// The table's partition key attribute (default `request_id`).
    pub key_attribute: String,
    /// Fields every log must carry, non-null (default: the request-log schema's
    /// `ts`, `method`, `path`, `status`, `latency_ms`).
    pub required_fields: Vec<String>,
    /// The timestamp field: RFC 3339 text or epoch milliseconds (default `ts`).
    pub ts_field: String,
    /// When set, each item gets this attribute = timestamp (epoch seconds) + retention, for
    /// DynamoDB's TTL.
    pub ttl: Option<TtlRule>,
    /// When set, items are written compressed ([`crate::stored`]); None writes them plain.
    pub compression: Option<std::sync::Arc<Compression>>,
}

/// A TTL attribute for DynamoDB's expiry: the log's timestamp plus a retention, in epoch seconds.
#[derive(Debug, Clone)]
pub struct TtlRule {
    /// The attribute that gets the expiry time (epoch seconds, type N); it replaces a log field
    /// of that name. A log with no timestamp gets none.
    pub attribute: String,
    /// How long after the log's timestamp the item expires; counted in whole seconds.
    pub retention: Duration,
}

impl Default for Schema {
    fn default() -> Self {
        Schema {
            key_field: "request_id".into(),
            key_attribute: "request_id".into(),
            required_fields: ["ts", "method", "path", "status", "latency_ms"]
                .map(String::from)
                .to_vec(),
            ts_field: "ts".into(),
            ttl: None,
            compression: None,
        }
    }
}

/// Why a body can never be written. `log` is the 0-based position of the offending log in the
/// message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The body is not UTF-8.
    #[error("body is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 {
        /// Byte offset of the first invalid byte.
        offset: usize,
    },
    /// The body is not JSON (nor whitespace-separated JSON values).
    #[error("body is not JSON: {detail}")]
    NotJson {
        /// The parser's message, with line and column.
        detail: String,
    },
    /// The body holds no log: empty, only whitespace, or empty arrays.
    #[error("body holds no logs")]
    Empty,
    /// A log is a JSON value other than an object.
    #[error("log {log} is not a JSON object but {found}")]
    NotAnObject {
        /// The log's 0-based position in the message.
        log: usize,
        /// What it is instead, for the message ("a string", "null", ...).
        found: &'static str,
    },
    /// A log lacks one of [`Schema::required_fields`], or has it as null.
    #[error("log {log} misses required field `{field}`")]
    MissingField {
        /// The log's 0-based position in the message.
        log: usize,
        /// The first required field missing.
        field: String,
    },
    /// The timestamp field is neither RFC 3339 text nor epoch milliseconds.
    #[error("log {log}: `{field}` is neither RFC 3339 text nor epoch milliseconds: {value}")]
    BadTimestamp {
        /// The log's 0-based position in the message.
        log: usize,
        /// The timestamp field's name ([`Schema::ts_field`]).
        field: String,
        /// The value found, as JSON.
        value: String,
    },
    /// The key field is not a usable partition key: an empty string, a string over 2,048 bytes,
    /// or a boolean, array or object.
    #[error(
        "log {log}: key field `{field}` must be a non-empty string of at most {MAX_PARTITION_KEY_BYTES} bytes, or a number"
    )]
    BadKey {
        /// The log's 0-based position in the message.
        log: usize,
        /// The key field's name ([`Schema::key_field`]).
        field: String,
    },
    /// The key is one sluice reserves for its own items (a compression dictionary's key,
    /// `sluice:dictionary:…`): written, the log would replace the dictionary.
    #[error(
        "log {log}: key `{key}` starts with `{prefix}`, which sluice reserves for its compression dictionaries",
        prefix = crate::stored::DICTIONARY_KEY_PREFIX
    )]
    ReservedKey {
        /// The log's 0-based position in the message.
        log: usize,
        /// The key, cut to 64 bytes.
        key: String,
    },
    /// An attribute name, at the top level or in a nested map, is empty.
    #[error("log {log}: an attribute name is empty (DynamoDB rejects empty names)")]
    EmptyAttributeName {
        /// The log's 0-based position in the message.
        log: usize,
    },
    /// A number DynamoDB cannot store (out of range, or more than 38 significant digits),
    /// the key field included.
    #[error("log {log}: attribute `{attribute}`: number {value} {problem}")]
    BadNumber {
        /// The log's 0-based position in the message.
        log: usize,
        /// Where the number is: a dotted path with `[i]` list indexes, names cut to 64 bytes.
        attribute: String,
        /// The number as written in the log.
        value: String,
        /// What DynamoDB would object to.
        problem: NumberError,
    },
    /// Maps and lists nest deeper than DynamoDB's 32 levels.
    #[error(
        "log {log}: attribute `{attribute}` nests maps and lists deeper than DynamoDB's {MAX_NESTING_LEVELS} levels"
    )]
    TooDeep {
        /// The log's 0-based position in the message.
        log: usize,
        /// The path down to where the limit is passed, as in [`DecodeError::BadNumber`].
        attribute: String,
    },
    /// An attribute name, at the top level or in a nested map, is over 65,535 bytes.
    #[error(
        "log {log}: an attribute name of {bytes} bytes (in `{attribute}`) is over DynamoDB's {MAX_ATTRIBUTE_NAME_BYTES}"
    )]
    NameTooLong {
        /// The log's 0-based position in the message.
        log: usize,
        /// The path to the name, the name itself cut to 64 bytes.
        attribute: String,
        /// The name's length in bytes.
        bytes: usize,
    },
    /// The item, sized as DynamoDB counts it (key and TTL attributes included), is over 400 KiB.
    #[error("log {log} makes an item of {bytes} bytes, over DynamoDB's {MAX_ITEM_BYTES}")]
    ItemTooLarge {
        /// The log's 0-based position in the message.
        log: usize,
        /// The item's size in bytes.
        bytes: usize,
    },
}

impl DecodeError {
    /// A short, stable label for metrics and dead-letter attributes.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::NotUtf8 { .. } => "not_utf8",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::Empty => "empty",
            DecodeError::NotAnObject { .. }
            | DecodeError::MissingField { .. }
            | DecodeError::BadTimestamp { .. }
            | DecodeError::BadKey { .. }
            | DecodeError::ReservedKey { .. } => "schema",
            // Valid JSON DynamoDB would refuse.
            DecodeError::EmptyAttributeName { .. }
            | DecodeError::BadNumber { .. }
            | DecodeError::TooDeep { .. }
            | DecodeError::NameTooLong { .. } => "invalid_value",
            DecodeError::ItemTooLarge { .. } => "too_large",
        }
    }
}

/// One log of a body as framed: its value, the line it starts on (1-based), and its own text
/// when it stood alone (a log inside an array has none).
#[derive(Debug)]
pub struct Frame<'a> {
    /// The log (an object, if the body is right).
    pub value: Value,
    /// The line its value (or the array holding it) starts on; 0 unless the frames are
    /// [`Frames::numbered`].
    pub line: usize,
    /// Its text as sent, when it was a top-level value.
    pub raw: Option<&'a str>,
}

/// The logs of a body: one JSON value, an array of them, or several (NDJSON, or any whitespace
/// between values); an array's elements are its logs. The one framing sluice has: the decoder
/// (`sluice run`) and the ingest API read bodies through it, so both agree on what a log is.
/// Yields the first JSON error and then stops.
pub fn frames(text: &str) -> Frames<'_> {
    Frames {
        numbered: false,
        text,
        stream: serde_json::Deserializer::from_str(text).into_iter(),
        start: 0,
        newlines: 0,
        counted: 0,
        pending: std::collections::VecDeque::new(),
        failed: false,
    }
}

/// The iterator [`frames`] returns.
pub struct Frames<'a> {
    /// Whether to count lines (the ingest API names them; the decoder does not need them).
    numbered: bool,
    text: &'a str,
    stream: serde_json::StreamDeserializer<'a, serde_json::de::StrRead<'a>, Value>,
    start: usize,
    /// Newlines in `text[..counted]`.
    newlines: usize,
    counted: usize,
    pending: std::collections::VecDeque<Frame<'a>>,
    failed: bool,
}

impl Frames<'_> {
    /// Gives each frame the line it starts on (one pass over the body's bytes in all).
    pub fn numbered(mut self) -> Self {
        self.numbered = true;
        self
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, serde_json::Error>;

    fn next(&mut self) -> Option<Self::Item> {
        // A loop, not recursion: a body of many empty arrays must not grow the stack.
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(Ok(f));
            }
            if self.failed {
                return None;
            }
            let value = match self.stream.next()? {
                Ok(v) => v,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            };
            let end = self.stream.byte_offset();
            let raw = &self.text[self.start..end];
            let lead = raw.len() - raw.trim_start().len();
            // Lines are counted once each, from where the last count stopped (a packed message
            // of hundreds of logs must not be rescanned per log).
            let line = if self.numbered {
                let upto = self.start + lead;
                self.newlines += self.text.as_bytes()[self.counted..upto]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count();
                self.counted = upto;
                1 + self.newlines
            } else {
                0
            };
            self.start = end;
            match value {
                Value::Array(items) => {
                    self.pending.extend(items.into_iter().map(|value| Frame {
                        value,
                        line,
                        raw: None,
                    }));
                }
                value => {
                    return Some(Ok(Frame {
                        value,
                        line,
                        raw: Some(raw),
                    }));
                }
            }
        }
    }
}

/// Decodes a message body into the items it carries, in order.
pub fn decode_message(body: &[u8], schema: &Schema) -> Result<Vec<Item>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut logs = Vec::new();
    for frame in frames(text) {
        let frame = frame.map_err(|e| DecodeError::NotJson {
            detail: e.to_string(),
        })?;
        logs.push(frame.value);
    }
    if logs.is_empty() {
        return Err(DecodeError::Empty);
    }
    logs.into_iter()
        .enumerate()
        .map(|(i, log)| match log {
            Value::Object(map) => log_to_item(i, map, schema),
            other => Err(DecodeError::NotAnObject {
                log: i,
                found: json_type(&other),
            }),
        })
        .collect()
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes one log (the `log`-th of its message, for error messages) into its item: what an
/// ingest API checks before it accepts a log.
pub fn decode_log(
    log: usize,
    map: Map<String, Value>,
    schema: &Schema,
) -> Result<Item, DecodeError> {
    log_to_item(log, map, schema)
}

/// A log's attributes as a plain item would have them, before compression.
pub(crate) struct Built {
    pub key: String,
    pub attrs: BTreeMap<String, AttrValue>,
    pub ts_ms: Option<i64>,
    /// The attributes sluice set (the key, the TTL), each with the log field it replaced.
    pub set: Vec<(String, Option<AttrValue>)>,
}

fn log_to_item(log: usize, map: Map<String, Value>, schema: &Schema) -> Result<Item, DecodeError> {
    let Built {
        key,
        attrs,
        ts_ms,
        set,
    } = build(log, map, schema)?;
    let item = match &schema.compression {
        Some(c) => compress_item(key, attrs, &set, c),
        None => Item::new(key, attrs),
    }
    .with_ts(ts_ms);
    if item.size() > MAX_ITEM_BYTES {
        return Err(DecodeError::ItemTooLarge {
            log,
            bytes: item.size(),
        });
    }
    Ok(item)
}

/// Checks a log and builds its plain attributes: the key attribute and the TTL set, every value
/// DynamoDB would refuse refused.
pub(crate) fn build(
    log: usize,
    map: Map<String, Value>,
    schema: &Schema,
) -> Result<Built, DecodeError> {
    for field in &schema.required_fields {
        if map.get(field).is_none_or(Value::is_null) {
            return Err(DecodeError::MissingField {
                log,
                field: field.clone(),
            });
        }
    }
    let ts_ms = match map.get(&schema.ts_field) {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_ts_ms(v).ok_or_else(|| DecodeError::BadTimestamp {
            log,
            field: schema.ts_field.clone(),
            value: v.to_string(),
        })?),
    };
    let key = match map.get(&schema.key_field) {
        None | Some(Value::Null) => content_key(&map),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_PARTITION_KEY_BYTES => s.clone(),
        // One number, one row: DynamoDB's normalised text (`1e2` and `100.0` are `100`).
        Some(Value::Number(n)) => match Number::parse(&n.to_string()) {
            Ok(number) => number.canonical(),
            Err(problem) => {
                return Err(DecodeError::BadNumber {
                    log,
                    attribute: schema.key_field.clone(),
                    value: n.to_string(),
                    problem,
                });
            }
        },
        Some(_) => {
            return Err(DecodeError::BadKey {
                log,
                field: schema.key_field.clone(),
            });
        }
    };

    if key.starts_with(crate::stored::DICTIONARY_KEY_PREFIX) {
        return Err(DecodeError::ReservedKey {
            log,
            key: truncated(&key),
        });
    }
    let mut attrs = BTreeMap::new();
    for (name, value) in map {
        if name.is_empty() {
            return Err(DecodeError::EmptyAttributeName { log });
        }
        let value = to_attr(value, 2).map_err(|mut p| {
            p.path.push(PathPart::Name(name.clone()));
            p.into_error(log)
        })?;
        if name.len() > MAX_ATTRIBUTE_NAME_BYTES {
            return Err(DecodeError::NameTooLong {
                log,
                bytes: name.len(),
                attribute: truncated(&name),
            });
        }
        attrs.insert(name, value);
    }
    let mut set = Vec::with_capacity(2);
    let replaced = attrs.insert(schema.key_attribute.clone(), AttrValue::S(key.clone()));
    set.push((schema.key_attribute.clone(), replaced));
    if let (Some(rule), Some(ms)) = (&schema.ttl, ts_ms) {
        let expires = ms.div_euclid(1000) + rule.retention.as_secs() as i64;
        let replaced = attrs.insert(rule.attribute.clone(), AttrValue::N(expires.to_string()));
        set.push((rule.attribute.clone(), replaced));
    } else if let Some(rule) = &schema.ttl
        && let Some(own) = attrs.get(&rule.attribute)
    {
        // No timestamp, so no TTL of sluice's: the log's own field of that name is what DynamoDB
        // expires the item by, and stays plain like a TTL.
        set.push((rule.attribute.clone(), Some(own.clone())));
    }
    Ok(Built {
        key,
        attrs,
        ts_ms,
        set,
    })
}

/// A step from an attribute down to a nested value, for error messages.
enum PathPart {
    Name(String),
    Index(usize),
}

/// What is wrong with one attribute value, and where (innermost step first).
struct ValueProblem {
    path: Vec<PathPart>,
    kind: ProblemKind,
}

enum ProblemKind {
    Number(String, NumberError),
    TooDeep,
    EmptyName,
    NameTooLong(usize),
}

impl ValueProblem {
    fn new(kind: ProblemKind) -> Self {
        ValueProblem {
            path: Vec::new(),
            kind,
        }
    }

    fn into_error(self, log: usize) -> DecodeError {
        let mut attribute = String::new();
        for part in self.path.iter().rev() {
            match part {
                PathPart::Name(n) => {
                    if !attribute.is_empty() {
                        attribute.push('.');
                    }
                    attribute.push_str(&truncated(n));
                }
                PathPart::Index(i) => {
                    let _ = write!(attribute, "[{i}]");
                }
            }
        }
        match self.kind {
            ProblemKind::Number(value, problem) => DecodeError::BadNumber {
                log,
                attribute,
                value,
                problem,
            },
            ProblemKind::TooDeep => DecodeError::TooDeep { log, attribute },
            ProblemKind::EmptyName => DecodeError::EmptyAttributeName { log },
            ProblemKind::NameTooLong(bytes) => DecodeError::NameTooLong {
                log,
                attribute,
                bytes,
            },
        }
    }
}

/// A name short enough to print (a 64 KiB name would swamp the message).
fn truncated(name: &str) -> String {
    const SHOWN: usize = 64;
    if name.len() <= SHOWN {
        return name.to_string();
    }
    let mut end = SHOWN;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &name[..end])
}

/// JSON onto DynamoDB types: strings, numbers (text kept), booleans, null, maps and lists.
/// `level` is the nesting level a map or list here would have (the item is level 1).
fn to_attr(value: Value, level: usize) -> Result<AttrValue, ValueProblem> {
    let container = |level: usize| {
        if level > MAX_NESTING_LEVELS {
            Err(ValueProblem::new(ProblemKind::TooDeep))
        } else {
            Ok(())
        }
    };
    Ok(match value {
        Value::Null => AttrValue::Null,
        Value::Bool(b) => AttrValue::Bool(b),
        Value::Number(n) => {
            let text = n.to_string();
            if let Err(problem) = Number::parse(&text) {
                return Err(ValueProblem::new(ProblemKind::Number(text, problem)));
            }
            AttrValue::N(text)
        }
        Value::String(s) => AttrValue::S(s),
        Value::Array(a) => {
            container(level)?;
            let mut out = Vec::with_capacity(a.len());
            for (i, v) in a.into_iter().enumerate() {
                out.push(to_attr(v, level + 1).map_err(|mut p| {
                    p.path.push(PathPart::Index(i));
                    p
                })?);
            }
            AttrValue::L(out)
        }
        Value::Object(m) => {
            container(level)?;
            let mut out = BTreeMap::new();
            for (k, v) in m {
                if k.is_empty() {
                    return Err(ValueProblem::new(ProblemKind::EmptyName));
                }
                if k.len() > MAX_ATTRIBUTE_NAME_BYTES {
                    let mut p = ValueProblem::new(ProblemKind::NameTooLong(k.len()));
                    p.path.push(PathPart::Name(k));
                    return Err(p);
                }
                let v = to_attr(v, level + 1).map_err(|mut p| {
                    p.path.push(PathPart::Name(k.clone()));
                    p
                })?;
                out.insert(k, v);
            }
            AttrValue::M(out)
        }
    })
}

/// Parses a timestamp as RFC 3339 text or epoch milliseconds, into epoch milliseconds.
pub fn parse_ts_ms(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => {
            let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
            i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
        }
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64)),
        _ => None,
    }
}

/// The deterministic key of a log that has none: SHA-256 over its canonical JSON (object keys
/// sorted, no whitespace), so the same log delivered twice lands on the same row.
pub fn content_key(map: &Map<String, Value>) -> String {
    let mut canonical = String::new();
    write_canonical_object(&mut canonical, map);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut key = String::with_capacity(7 + 64);
    key.push_str("sha256:");
    for byte in digest {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

// Sorted explicitly rather than relying on serde_json's map order, which a feature elsewhere in
// the dependency graph (`preserve_order`) could change.
fn write_canonical_object(out: &mut String, map: &Map<String, Value>) {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    out.push('{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::String(k.clone()).to_string());
        out.push(':');
        write_canonical(out, &map[k]);
    }
    out.push('}');
}

fn write_canonical(out: &mut String, v: &Value) {
    match v {
        Value::Object(m) => write_canonical_object(out, m),
        Value::Array(a) => {
            out.push('[');
            for (i, e) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(out, e);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frames_flatten_arrays_and_name_each_log_s_line() {
        let text = "{\"a\":1}\n\n[{\"b\":2},\n{\"c\":3}]\n[]\n  {\"d\":4}";
        let got: Vec<(usize, Option<&str>)> = super::frames(text)
            .numbered()
            .map(|f| f.unwrap())
            .map(|f| (f.line, f.raw))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, Some("{\"a\":1}")),
                (3, None),
                (3, None),
                (6, Some("\n  {\"d\":4}"))
            ]
        );
        let mut bad = super::frames("{}\n{oops");
        assert!(bad.next().unwrap().is_ok());
        assert!(bad.next().unwrap().is_err());
        assert!(bad.next().is_none(), "nothing after the first error");
        // Many empty arrays in a row: no recursion, no log.
        assert_eq!(super::frames(&"[]".repeat(200_000)).count(), 0);
    }

    use super::*;

    fn log(id: &str) -> String {
        format!(
            r#"{{"request_id":"{id}","ts":"2026-11-22T10:00:00Z","method":"GET","path":"/a","status":200,"latency_ms":12.5}}"#
        )
    }

    #[test]
    fn one_object_array_and_ndjson_all_decode() {
        let schema = Schema::default();
        assert_eq!(
            decode_message(log("a").as_bytes(), &schema).unwrap().len(),
            1
        );
        let array = format!("[{},{}]", log("a"), log("b"));
        let items = decode_message(array.as_bytes(), &schema).unwrap();
        assert_eq!(
            items.iter().map(Item::key).collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        let ndjson = format!("{}\n{}\n\n{}\n", log("a"), log("b"), log("c"));
        assert_eq!(decode_message(ndjson.as_bytes(), &schema).unwrap().len(), 3);
        let pretty = "{\n  \"request_id\": \"p\",\n  \"ts\": 1700000000000,\n  \"method\": \"GET\",\n  \"path\": \"/\",\n  \"status\": 200,\n  \"latency_ms\": 1\n}";
        assert_eq!(
            decode_message(pretty.as_bytes(), &schema).unwrap()[0].key(),
            "p"
        );
    }

    #[test]
    fn json_maps_faithfully_onto_attribute_values() {
        let body = r#"{"request_id":"r1","ts":1700000000123,"method":"POST","path":"/x","status":201,"latency_ms":3.25,
            "user_id":null,"attrs":{"ok":true,"tags":["a",2,{"z":null}],"big":12345678901234567890}}"#;
        let item = decode_message(body.as_bytes(), &Schema::default())
            .unwrap()
            .remove(0);
        let a = item.attrs();
        assert_eq!(a["status"], AttrValue::N("201".into()));
        assert_eq!(a["latency_ms"], AttrValue::N("3.25".into()));
        assert_eq!(a["user_id"], AttrValue::Null);
        let AttrValue::M(attrs) = &a["attrs"] else {
            panic!("attrs is not a map: {:?}", a["attrs"])
        };
        assert_eq!(attrs["ok"], AttrValue::Bool(true));
        assert_eq!(attrs["big"], AttrValue::N("12345678901234567890".into()));
        let mut z = BTreeMap::new();
        z.insert("z".to_string(), AttrValue::Null);
        assert_eq!(
            attrs["tags"],
            AttrValue::L(vec![
                AttrValue::S("a".into()),
                AttrValue::N("2".into()),
                AttrValue::M(z)
            ])
        );
    }

    #[test]
    fn a_log_without_key_gets_the_same_content_key_whatever_its_field_order() {
        let mut schema = Schema::default();
        schema.required_fields.clear();
        let a = decode_message(br#"{"b":1,"a":{"y":2,"x":[1,"s"]}}"#, &schema).unwrap();
        let b = decode_message(br#"{ "a": {"x":[1,"s"],"y":2}, "b":1 }"#, &schema).unwrap();
        let c = decode_message(br#"{"b":2,"a":{"y":2,"x":[1,"s"]}}"#, &schema).unwrap();
        assert_eq!(a[0].key(), b[0].key());
        assert_ne!(a[0].key(), c[0].key());
        assert!(a[0].key().starts_with("sha256:"));
        assert_eq!(a[0].attrs()["request_id"], AttrValue::S(a[0].key().into()));
    }

    #[test]
    fn key_field_and_key_attribute_are_configurable() {
        let schema = Schema {
            key_field: "trace".into(),
            key_attribute: "pk".into(),
            required_fields: vec![],
            ..Schema::default()
        };
        let items = decode_message(br#"{"trace":42,"x":1}"#, &schema).unwrap();
        assert_eq!(items[0].key(), "42");
        assert_eq!(items[0].attrs()["pk"], AttrValue::S("42".into()));
    }

    #[test]
    fn ttl_is_timestamp_plus_retention_for_both_timestamp_forms() {
        let schema = Schema {
            ttl: Some(TtlRule {
                attribute: "expires_at".into(),
                retention: Duration::from_secs(86_400),
            }),
            ..Schema::default()
        };
        let rfc = decode_message(log("a").as_bytes(), &schema).unwrap();
        let epoch = 1_795_341_600; // 2026-11-22T10:00:00Z
        assert_eq!(
            rfc[0].attrs()["expires_at"],
            AttrValue::N((epoch + 86_400).to_string())
        );
        let ms = log("a").replace("\"2026-11-22T10:00:00Z\"", "1795341600999");
        let items = decode_message(ms.as_bytes(), &schema).unwrap();
        assert_eq!(
            items[0].attrs()["expires_at"],
            AttrValue::N((epoch + 86_400).to_string())
        );
    }

    #[test]
    fn poison_bodies_say_what_is_wrong() {
        let schema = Schema::default();
        let err = |b: &[u8]| decode_message(b, &schema).unwrap_err();
        assert_eq!(err(b"\xff\xfe"), DecodeError::NotUtf8 { offset: 0 });
        assert_eq!(err(b"{\"request_id\":").reason(), "not_json");
        assert_eq!(err(b"  \n"), DecodeError::Empty);
        assert_eq!(err(b"[]"), DecodeError::Empty);
        assert_eq!(
            err(format!("[{},7]", log("a")).as_bytes()),
            DecodeError::NotAnObject {
                log: 1,
                found: "a number"
            }
        );
        assert_eq!(
            err(log("a").replace("\"method\":\"GET\",", "").as_bytes()),
            DecodeError::MissingField {
                log: 0,
                field: "method".into()
            }
        );
        assert_eq!(
            err(log("a")
                .replace("2026-11-22T10:00:00Z", "yesterday")
                .as_bytes())
            .reason(),
            "schema"
        );
        assert_eq!(
            err(log("a").replace("\"a\"", "true").as_bytes()),
            DecodeError::BadKey {
                log: 0,
                field: "request_id".into()
            }
        );
        let huge = log("a").replace("/a", &"x".repeat(MAX_ITEM_BYTES));
        assert_eq!(err(huge.as_bytes()).reason(), "too_large");
        let digits = log("a").replace("200", &"9".repeat(39));
        assert_eq!(err(digits.as_bytes()).reason(), "invalid_value");
    }

    /// A log with `extra` spliced in as its last field.
    fn with(extra: &str) -> String {
        log("a").replace('}', &format!(",{extra}}}"))
    }

    #[test]
    fn what_dynamodb_refuses_is_poison_that_names_the_attribute() {
        let schema = Schema::default();
        let err = |b: String| decode_message(b.as_bytes(), &schema).unwrap_err();
        for (extra, says) in [
            (r#""n":1e126"#, "`n`: number 1e"),
            (r#""n":-1e200"#, "too large"),
            (r#""n":1e-131"#, "is too small"),
            (r#""a":{"b":[1,{"c":2e-300}]}"#, "`a.b[1].c`: number 2e-300"),
        ] {
            let e = err(with(extra));
            assert_eq!(e.reason(), "invalid_value", "{extra}");
            assert!(e.to_string().contains(says), "{extra}: {e}");
        }
        // The limits themselves are accepted.
        for extra in [
            r#""n":9.9999999999999999999999999999999999999e125"#,
            r#""n":1e-130"#,
            r#""n":-1e-130"#,
            r#""n":0e-999"#,
        ] {
            assert!(
                decode_message(with(extra).as_bytes(), &schema).is_ok(),
                "{extra}"
            );
        }

        // 32 levels, the item being the first: 31 maps or lists may nest inside it.
        let nested = |levels: usize, open: &str, close: &str| {
            format!(r#""deep":{}1{}"#, open.repeat(levels), close.repeat(levels))
        };
        assert!(decode_message(with(&nested(31, r#"{"x":"#, "}")).as_bytes(), &schema).is_ok());
        assert!(decode_message(with(&nested(31, "[", "]")).as_bytes(), &schema).is_ok());
        let e = err(with(&nested(32, r#"{"x":"#, "}")));
        assert!(matches!(e, DecodeError::TooDeep { .. }), "{e}");
        assert!(
            e.to_string().starts_with("log 0: attribute `deep.x.x"),
            "{e}"
        );
        assert_eq!(err(with(&nested(32, "[", "]"))).reason(), "invalid_value");

        // Attribute names: under 64 KiB, at the top or nested.
        let name = |n: usize| "k".repeat(n);
        assert!(
            decode_message(
                with(&format!(r#""{}":1"#, name(65_535))).as_bytes(),
                &schema
            )
            .is_ok()
        );
        let e = err(with(&format!(r#""{}":1"#, name(65_536))));
        assert!(
            matches!(e, DecodeError::NameTooLong { bytes: 65_536, .. }),
            "{e}"
        );
        assert!(
            e.to_string().len() < 300,
            "the name is not printed whole: {e}"
        );
        let e = err(with(&format!(r#""m":{{"{}":1}}"#, name(65_536))));
        assert!(matches!(e, DecodeError::NameTooLong { .. }), "{e}");

        // The partition key: at most 2,048 bytes, never empty.
        let key =
            |k: &str| log("a").replace(r#""request_id":"a""#, &format!(r#""request_id":"{k}""#));
        assert!(decode_message(key(&"k".repeat(2048)).as_bytes(), &schema).is_ok());
        assert_eq!(err(key(&"k".repeat(2049))).reason(), "schema");
        assert_eq!(err(key("")).reason(), "schema");
    }

    #[test]
    fn number_keys_are_one_row_whatever_their_spelling() {
        let schema = Schema::default();
        let key = |k: &str| {
            let body = log("a").replace(r#""request_id":"a""#, &format!(r#""request_id":{k}"#));
            decode_message(body.as_bytes(), &schema).unwrap()[0]
                .key()
                .to_string()
        };
        for k in ["100", "1e2", "100.0", "1.00E+2", "100.000"] {
            assert_eq!(key(k), "100", "{k}");
        }
        assert_eq!(key("-0.0"), "0");
        assert_eq!(key("12.50"), "12.5");
        assert_ne!(key("100"), key("100.5"));
        let body = log("a").replace(r#""request_id":"a""#, r#""request_id":1e200"#);
        assert_eq!(
            decode_message(body.as_bytes(), &schema)
                .unwrap_err()
                .reason(),
            "invalid_value"
        );
    }

    #[test]
    fn item_size_counts_numbers_as_dynamodb_does() {
        // 1.5 costs 3 bytes (two digit pairs plus one), -1 costs 3 (the sign's byte): counted
        // the old way (one byte per two significant digits) both were 2.
        let item = decode_message(with(r#""a":1.5,"b":-1"#).as_bytes(), &Schema::default())
            .unwrap()
            .remove(0);
        let plain = decode_message(log("a").as_bytes(), &Schema::default())
            .unwrap()
            .remove(0);
        assert_eq!(item.size() - plain.size(), (1 + 3) + (1 + 3));
    }
}
