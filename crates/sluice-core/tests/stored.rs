//! Compressed items: every log reads back as the value it was sent as, compressed or plain, with
//! any dictionary a table has held; what must stay plain stays plain.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use sluice_core::stored::{self, LOG_ATTRIBUTE};
use sluice_core::{AttrValue, Compression, Dictionaries, Schema, StoredError, TtlRule, read_log};

/// Realistic-ish request logs for training, `n` of them, varied by `seed`.
fn sample_logs(n: usize, seed: u64) -> String {
    let routes = [
        "/v1/users/{}",
        "/v1/orders/{}/items",
        "/health",
        "/v2/search?q={}",
    ];
    let agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/131.0 Safari/537.36",
        "curl/8.5.0",
        "okhttp/4.12.0",
    ];
    let mut out = String::new();
    for i in 0..n as u64 {
        let x = i.wrapping_mul(2654435761).wrapping_add(seed);
        let method = ["GET", "POST", "PUT"][(x % 3) as usize];
        let status = [200, 200, 200, 201, 404, 500][(x % 6) as usize];
        let log = json!({
            "request_id": format!("{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}", x, i % 65536, x % 4096, i % 4096, x.wrapping_mul(31)),
            "ts": format!("2026-12-05T10:{:02}:{:02}.{:03}Z", i % 60, x % 60, x % 1000),
            "method": method,
            "path": routes[(x % 4) as usize].replace("{}", &(x % 100_000).to_string()),
            "status": status,
            "latency_ms": (x % 9000) as f64 / 10.0,
            "user_agent": agents[(x % 3) as usize],
            "client_ip": format!("10.{}.{}.{}", x % 256, (x / 7) % 256, (x / 13) % 256),
            "headers": {"accept": "application/json", "x-trace": format!("{:016x}", x)},
            "bytes": x % 50_000,
        });
        out.push_str(&log.to_string());
        out.push('\n');
    }
    out
}

fn train(seed: u64, plain: &BTreeSet<String>) -> Vec<u8> {
    let (texts, refused) =
        stored::training_texts(&sample_logs(800, seed), &Schema::default(), plain);
    assert_eq!(refused, 0);
    stored::train_dictionary(&texts, 8 * 1024).expect("training")
}

fn dictionary() -> &'static Vec<u8> {
    static D: OnceLock<Vec<u8>> = OnceLock::new();
    D.get_or_init(|| train(7, &BTreeSet::new()))
}

fn compressing(plain: &[&str]) -> Schema {
    let plain: Vec<String> = plain.iter().map(|s| s.to_string()).collect();
    Schema {
        compression: Some(Arc::new(
            Compression::new(dictionary().clone(), 3, plain).unwrap(),
        )),
        ..Schema::default()
    }
}

fn dictionaries(ds: &[&Vec<u8>]) -> Dictionaries {
    let mut out = Dictionaries::new();
    for d in ds {
        out.insert(d).unwrap();
    }
    out
}

fn item_of(log: &Value, schema: &Schema) -> sluice_core::Item {
    sluice_core::decode_message(log.to_string().as_bytes(), schema)
        .unwrap()
        .remove(0)
}

fn is_compressed(item: &sluice_core::Item) -> bool {
    matches!(item.attrs().get(LOG_ATTRIBUTE), Some(AttrValue::B(_)))
}

/// A JSON value of the kinds a log holds, nested a little.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e9f64..1e9).prop_map(|f| json!(f)),
        "[ -~é中\\n\"\\\\]{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request log with the required fields and anything else.
fn json_log() -> impl Strategy<Value = Map<String, Value>> {
    (
        prop_oneof![
            "[a-f0-9-]{1,36}".prop_map(Value::String),
            (0u32..1_000_000).prop_map(|n| json!(n)),
        ],
        prop::collection::btree_map("[a-z_]{1,12}", json_value(), 0..12),
        "[ -~]{0,300}",
    )
        .prop_map(|(key, extra, path)| {
            let mut log: Map<String, Value> = extra.into_iter().collect();
            log.insert("request_id".into(), key);
            log.insert("ts".into(), json!("2026-12-05T10:00:00Z"));
            log.insert("method".into(), json!("GET"));
            log.insert("path".into(), json!(format!("/v1/users/{path}")));
            log.insert("status".into(), json!(200));
            log.insert("latency_ms".into(), json!(12.5));
            log
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any log → item → read back is the log's value: compressed exactly; plain, too (the key
    /// attribute is the key field, so nothing was added).
    #[test]
    fn any_log_reads_back_as_its_value(log in json_log(), plain_status in any::<bool>()) {
        let plain: &[&str] = if plain_status { &["status"] } else { &[] };
        let schema = compressing(plain);
        let item = item_of(&Value::Object(log.clone()), &schema);
        let back = read_log(item.attrs(), &dictionaries(&[dictionary()]), &[]).unwrap();
        if is_compressed(&item) || !matches!(log["request_id"], Value::Number(_)) {
            prop_assert_eq!(&back, &log);
        }
        prop_assert!(item.wcu() <= item.plain_wcu());
    }

    /// The TTL attribute replaces a log field of its name in the table, yet the compressed item
    /// still gives back the field as sent; a number key comes back a number.
    #[test]
    fn fields_sluice_overwrites_come_back_as_sent(log in json_log(), expires in "[a-z]{0,20}") {
        let mut log = log;
        log.insert("expires_at".into(), json!(expires));
        log.insert("filler".into(), json!("a request log is mostly text like this ".repeat(8)));
        let schema = Schema {
            ttl: Some(TtlRule { attribute: "expires_at".into(), retention: std::time::Duration::from_secs(86_400) }),
            ..compressing(&[])
        };
        let item = item_of(&Value::Object(log.clone()), &schema);
        prop_assert!(is_compressed(&item));
        prop_assert!(matches!(item.attrs().get("expires_at"), Some(AttrValue::N(_))));
        let back = read_log(item.attrs(), &dictionaries(&[dictionary()]), &[]).unwrap();
        prop_assert_eq!(back, log);
    }
}

/// A realistic log compresses, keeps the key and the listed fields plain (so GetItem and an index
/// on them work), and costs fewer WCU.
#[test]
fn realistic_logs_shrink_and_keep_index_keys_plain() {
    let schema = compressing(&["status", "path"]);
    let logs = sample_logs(200, 99);
    let (mut plain_bytes, mut bytes) = (0usize, 0usize);
    for line in logs.lines() {
        let log: Value = serde_json::from_str(line).unwrap();
        let item = item_of(&log, &schema);
        assert!(is_compressed(&item), "{line}");
        let attrs = item.attrs();
        assert_eq!(
            attrs.keys().collect::<Vec<_>>(),
            ["_log", "path", "request_id", "status"]
        );
        assert_eq!(attrs["status"], AttrValue::N(log["status"].to_string()));
        assert!(item.size() < item.plain_size(), "{line}");
        plain_bytes += item.plain_size();
        bytes += item.size();
        let back = read_log(attrs, &dictionaries(&[dictionary()]), &[]).unwrap();
        assert_eq!(Value::Object(back), log);
    }
    assert!(
        4 * bytes < 3 * plain_bytes,
        "{bytes} bytes compressed, {plain_bytes} plain"
    );
}

/// Writers move to a new dictionary: items made with the old one still read, given both; an
/// item whose dictionary is not loaded says which one it needs.
#[test]
fn rotation_keeps_old_items_readable_and_a_missing_dictionary_is_named() {
    let old = dictionary();
    let new = train(12345, &BTreeSet::new());
    let (old_id, new_id) = (
        stored::dictionary_id(old).unwrap(),
        stored::dictionary_id(&new).unwrap(),
    );
    assert_ne!(old_id, new_id);
    let log: Value = serde_json::from_str(sample_logs(1, 5).trim()).unwrap();
    let by_old = item_of(&log, &compressing(&[]));
    let by_new = item_of(
        &log,
        &Schema {
            compression: Some(Arc::new(Compression::new(new.clone(), 3, []).unwrap())),
            ..Schema::default()
        },
    );
    assert_eq!(stored::needed_dictionary(by_old.attrs()), Some(old_id));
    assert_eq!(stored::needed_dictionary(by_new.attrs()), Some(new_id));
    let both = dictionaries(&[old, &new]);
    for item in [&by_old, &by_new] {
        assert_eq!(
            Value::Object(read_log(item.attrs(), &both, &[]).unwrap()),
            log
        );
    }
    let only_new = dictionaries(&[&new]);
    let err = read_log(by_old.attrs(), &only_new, &[]).unwrap_err();
    assert_eq!(err, StoredError::MissingDictionary { id: old_id });
    assert!(err.to_string().contains(&stored::dictionary_key(old_id)));
}

/// Plain and compressed items of one table both read back; a plain item drops only what sluice
/// added (here the key attribute, which is not a log field).
#[test]
fn plain_and_compressed_items_both_read_back() {
    let log: Value = serde_json::from_str(sample_logs(1, 3).trim()).unwrap();
    let plain_schema = Schema {
        key_attribute: "pk".into(),
        ..Schema::default()
    };
    let zstd_schema = Schema {
        key_attribute: "pk".into(),
        ..compressing(&[])
    };
    let plain = item_of(&log, &plain_schema);
    let packed = item_of(&log, &zstd_schema);
    assert!(!is_compressed(&plain) && is_compressed(&packed));
    let ds = dictionaries(&[dictionary()]);
    assert_eq!(
        Value::Object(read_log(plain.attrs(), &ds, &["pk"]).unwrap()),
        log
    );
    assert_eq!(
        Value::Object(read_log(packed.attrs(), &ds, &["pk"]).unwrap()),
        log
    );
}

/// A tiny log costs 1 WCU either way and is compressed, so it reads back exactly: a log without
/// a key field (keyed by its content hash) gives back no key it did not have.
#[test]
fn a_tiny_log_is_compressed_and_reads_back_without_sluices_key() {
    let schema = Schema {
        required_fields: vec![],
        ..compressing(&[])
    };
    let log = json!({"x": 1});
    let item = item_of(&log, &schema);
    assert!(is_compressed(&item));
    assert!(item.key().starts_with("sha256:"));
    assert_eq!(item.wcu(), item.plain_wcu());
    let back = read_log(item.attrs(), &dictionaries(&[dictionary()]), &[]).unwrap();
    assert_eq!(Value::Object(back), log);
}

/// DynamoDB keeps a number's value, not its text: a plain field holding `200.0` or `1.50` reads
/// back `200` and `1.5`. Such a field is also kept in the frame, so the log reads back as sent
/// after the table has normalised it.
#[test]
fn plain_numbers_dynamodb_would_rewrite_still_read_back_as_sent() {
    let schema = compressing(&["status", "latency_ms", "nested"]);
    let mut log: Value = serde_json::from_str(sample_logs(1, 8).trim()).unwrap();
    log["status"] = serde_json::from_str("200.0").unwrap();
    log["latency_ms"] = serde_json::from_str("12.50").unwrap();
    log["nested"] = serde_json::from_str(r#"{"a":[1,2.0]}"#).unwrap();
    let item = item_of(&log, &schema);
    assert!(is_compressed(&item));
    // What DynamoDB gives back: every number in its normalised form.
    fn normalise(v: &AttrValue) -> AttrValue {
        match v {
            AttrValue::N(n) => {
                AttrValue::N(sluice_core::number::Number::parse(n).unwrap().canonical())
            }
            AttrValue::M(m) => {
                AttrValue::M(m.iter().map(|(k, v)| (k.clone(), normalise(v))).collect())
            }
            AttrValue::L(l) => AttrValue::L(l.iter().map(normalise).collect()),
            other => other.clone(),
        }
    }
    let stored: std::collections::BTreeMap<String, AttrValue> = item
        .attrs()
        .iter()
        .map(|(k, v)| (k.clone(), normalise(v)))
        .collect();
    assert_eq!(stored["status"], AttrValue::N("200".into()));
    let back = read_log(&stored, &dictionaries(&[dictionary()]), &[]).unwrap();
    assert_eq!(Value::Object(back), log);
}

/// A log with the TTL attribute's field but no timestamp gets no TTL of sluice's: its own field,
/// which DynamoDB expires it by, stays plain (and reads back as sent).
#[test]
fn a_logs_own_ttl_field_stays_plain_when_it_has_no_timestamp() {
    let schema = Schema {
        required_fields: vec![],
        ttl: Some(TtlRule {
            attribute: "expires_at".into(),
            retention: std::time::Duration::from_secs(60),
        }),
        ..compressing(&[])
    };
    let log =
        json!({"request_id": "t1", "expires_at": 1_900_000_000, "note": "no ts here ".repeat(20)});
    let item = item_of(&log, &schema);
    assert!(is_compressed(&item));
    assert_eq!(
        item.attrs()["expires_at"],
        AttrValue::N("1900000000".into())
    );
    let back = read_log(item.attrs(), &dictionaries(&[dictionary()]), &[]).unwrap();
    assert_eq!(Value::Object(back), log);
}

/// A log keyed like a dictionary item would replace the dictionary: it is poison.
#[test]
fn a_log_keyed_like_a_dictionary_is_refused() {
    let body = r#"{"request_id":"sluice:dictionary:123","ts":"2026-12-05T10:00:00Z","method":"GET","path":"/","status":200,"latency_ms":1}"#;
    let err = sluice_core::decode_message(body.as_bytes(), &Schema::default()).unwrap_err();
    assert_eq!(err.reason(), "schema");
    assert!(err.to_string().contains("reserves"), "{err}");
}

/// Damaged frames are refused with a reason, never a panic or a huge allocation.
#[test]
fn damaged_frames_are_refused() {
    let log: Value = serde_json::from_str(sample_logs(1, 4).trim()).unwrap();
    let item = item_of(&log, &compressing(&[]));
    let ds = dictionaries(&[dictionary()]);
    let AttrValue::B(frame) = &item.attrs()[LOG_ATTRIBUTE] else {
        panic!("not compressed")
    };
    for cut in [0, 3, 8, frame.len() / 2, frame.len() - 1] {
        let mut attrs = item.attrs().clone();
        attrs.insert(LOG_ATTRIBUTE.into(), AttrValue::B(frame[..cut].to_vec()));
        assert!(read_log(&attrs, &ds, &[]).is_err(), "cut at {cut}");
    }
    assert_eq!(
        Compression::new(b"not a dictionary".to_vec(), 3, []).unwrap_err(),
        StoredError::NotADictionary
    );
}
