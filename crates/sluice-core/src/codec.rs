//! From a message body to the DynamoDB items it carries.
//!
//! A body is one JSON object (one request log), a JSON array of objects, or several objects
//! separated by whitespace (NDJSON). Every log becomes one item; the message may be acked only when
//! all of them are written. A body that can never be written (not UTF-8, not JSON, a log that is not
//! an object or misses a required field, an item over 400 KB) is a [`DecodeError`]: poison, which
//! no retry can fix.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::item::{
    AttrValue, Item, MAX_ITEM_BYTES, MAX_NUMBER_DIGITS, MAX_PARTITION_KEY_BYTES, significant_digits,
};

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
}

#[derive(Debug, Clone)]
pub struct TtlRule {
    pub attribute: String,
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
        }
    }
}

/// Why a body can never be written. `log` is the 0-based position of the offending log in the
/// message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("body is not valid UTF-8 (first bad byte at offset {offset})")]
    NotUtf8 { offset: usize },
    #[error("body is not JSON: {detail}")]
    NotJson { detail: String },
    #[error("body holds no logs")]
    Empty,
    #[error("log {log} is not a JSON object but {found}")]
    NotAnObject { log: usize, found: &'static str },
    #[error("log {log} misses required field `{field}`")]
    MissingField { log: usize, field: String },
    #[error("log {log}: `{field}` is neither RFC 3339 text nor epoch milliseconds: {value}")]
    BadTimestamp {
        log: usize,
        field: String,
        value: String,
    },
    #[error(
        "log {log}: key field `{field}` must be a non-empty string or a number of at most {MAX_PARTITION_KEY_BYTES} bytes"
    )]
    BadKey { log: usize, field: String },
    #[error("log {log}: an attribute name is empty (DynamoDB rejects empty names)")]
    EmptyAttributeName { log: usize },
    #[error("log {log}: number {value} has more than {MAX_NUMBER_DIGITS} significant digits")]
    NumberOutOfRange { log: usize, value: String },
    #[error("log {log} makes an item of {bytes} bytes, over DynamoDB's {MAX_ITEM_BYTES}")]
    ItemTooLarge { log: usize, bytes: usize },
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
            | DecodeError::EmptyAttributeName { .. }
            | DecodeError::NumberOutOfRange { .. } => "schema",
            DecodeError::ItemTooLarge { .. } => "too_large",
        }
    }
}

/// Decodes a message body into the items it carries, in order.
pub fn decode_message(body: &[u8], schema: &Schema) -> Result<Vec<Item>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::NotUtf8 {
        offset: e.valid_up_to(),
    })?;
    let mut logs = Vec::new();
    for value in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
        let value = value.map_err(|e| DecodeError::NotJson {
            detail: e.to_string(),
        })?;
        match value {
            Value::Array(elements) => logs.extend(elements),
            other => logs.push(other),
        }
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

fn log_to_item(log: usize, map: Map<String, Value>, schema: &Schema) -> Result<Item, DecodeError> {
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
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return Err(DecodeError::BadKey {
                log,
                field: schema.key_field.clone(),
            });
        }
    };

    let mut attrs = BTreeMap::new();
    for (name, value) in map {
        if name.is_empty() {
            return Err(DecodeError::EmptyAttributeName { log });
        }
        attrs.insert(name, to_attr(log, value)?);
    }
    attrs.insert(schema.key_attribute.clone(), AttrValue::S(key.clone()));
    if let (Some(rule), Some(ms)) = (&schema.ttl, ts_ms) {
        let expires = ms.div_euclid(1000) + rule.retention.as_secs() as i64;
        attrs.insert(rule.attribute.clone(), AttrValue::N(expires.to_string()));
    }
    let item = Item::new(key, attrs);
    if item.size() > MAX_ITEM_BYTES {
        return Err(DecodeError::ItemTooLarge {
            log,
            bytes: item.size(),
        });
    }
    Ok(item)
}

/// JSON onto DynamoDB types: strings, numbers (text kept), booleans, null, maps and lists.
fn to_attr(log: usize, value: Value) -> Result<AttrValue, DecodeError> {
    Ok(match value {
        Value::Null => AttrValue::Null,
        Value::Bool(b) => AttrValue::Bool(b),
        Value::Number(n) => {
            let text = n.to_string();
            if significant_digits(&text) > MAX_NUMBER_DIGITS {
                return Err(DecodeError::NumberOutOfRange { log, value: text });
            }
            AttrValue::N(text)
        }
        Value::String(s) => AttrValue::S(s),
        Value::Array(a) => AttrValue::L(
            a.into_iter()
                .map(|v| to_attr(log, v))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => {
            let mut out = BTreeMap::new();
            for (k, v) in m {
                if k.is_empty() {
                    return Err(DecodeError::EmptyAttributeName { log });
                }
                out.insert(k, to_attr(log, v)?);
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
        assert_eq!(err(digits.as_bytes()).reason(), "schema");
    }
}
