//! What DynamoDB refuses, asked three ways: of DynamoDB Local (AWS's own engine), of sluice-sim,
//! and of sluice's decoder. The two servers must give the same verdict with the same
//! ValidationException message, and the decoder must call poison exactly what the servers refuse,
//! so a log that would loop at the table goes to the dead-letter queue at decode instead, and the
//! simulator cannot drift from the real thing.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use serde_json::{Value, json};
use sluice_core::codec::Schema;
use sluice_core::decode_message;
use sluice_testkit::{TestEnv, sdk_config, start_dynamodb_local};

type Item = HashMap<String, AttributeValue>;

/// A JSON value as DynamoDB attribute values, the way sluice maps logs.
fn attr(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(a) => AttributeValue::L(a.iter().map(attr).collect()),
        Value::Object(m) => {
            AttributeValue::M(m.iter().map(|(k, v)| (k.clone(), attr(v))).collect())
        }
    }
}

fn item_of(log: &Value) -> Item {
    log.as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), attr(v)))
        .collect()
}

/// `Ok(())` or the ValidationException's message; the same from PutItem and BatchWriteItem.
async fn verdict(ddb: &Client, item: &Item) -> Result<(), String> {
    let put = ddb
        .put_item()
        .table_name("refusals")
        .set_item(Some(item.clone()))
        .send()
        .await;
    let batch = ddb
        .batch_write_item()
        .request_items(
            "refusals",
            vec![
                WriteRequest::builder()
                    .put_request(
                        PutRequest::builder()
                            .set_item(Some(item.clone()))
                            .build()
                            .unwrap(),
                    )
                    .build(),
            ],
        )
        .send()
        .await;
    let words = |e: &dyn ProvideErrorMetadata| {
        format!("{}: {}", e.code().unwrap_or("?"), e.message().unwrap_or(""))
    };
    let put = put.map(|_| ()).map_err(|e| words(&e));
    let batch = batch.map(|_| ()).map_err(|e| words(&e));
    assert_eq!(put, batch, "PutItem and BatchWriteItem disagree");
    put
}

/// DynamoDB Local and sluice-sim, each with an on-demand table `refusals` keyed by request_id.
async fn servers() -> (sluice_testkit::ServerProcess, Client, TestEnv) {
    let local = start_dynamodb_local().await.unwrap();
    let local_ddb = Client::new(&sdk_config(&local.endpoint).await);
    let sim = TestEnv::start_sim(sluice_sim::SimConfig::default())
        .await
        .unwrap();
    for ddb in [&local_ddb, &sim.dynamodb] {
        sluice_dynamodb::admin::create_table(ddb, "refusals", "request_id", None)
            .await
            .unwrap();
    }
    (local, local_ddb, sim)
}

fn schema() -> Schema {
    Schema {
        required_fields: Vec::new(),
        ..Schema::default()
    }
}

fn nested(levels: usize, leaf: Value, list: bool) -> Value {
    (0..levels).fold(
        leaf,
        |v, _| if list { json!([v]) } else { json!({ "x": v }) },
    )
}

/// JSON text of a number, exactly as written (serde_json keeps it with arbitrary_precision).
fn number(text: &str) -> Value {
    serde_json::from_str(text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_local_sluice_sim_and_the_decoder_refuse_the_same_items_with_the_same_words() {
    let (_local, local_ddb, sim) = servers().await;

    let base = |extra: Value| {
        let mut log = json!({"request_id": "r"});
        for (k, v) in extra.as_object().unwrap() {
            log[k] = v.clone();
        }
        log
    };
    let name = |n: usize| "k".repeat(n);
    let cases: Vec<(&str, Value)> = vec![
        (
            "number at the top of the range",
            base(json!({"n": number("9.9999999999999999999999999999999999999e125")})),
        ),
        ("number overflow", base(json!({"n": number("1e126")}))),
        (
            "negative number overflow",
            base(json!({"n": number("-1e200")})),
        ),
        (
            "number at the bottom of the range",
            base(json!({"n": number("1e-130")})),
        ),
        ("number underflow", base(json!({"n": number("1e-131")}))),
        (
            "nested number underflow",
            base(json!({"m": {"a": [1, number("-5e-200")]}})),
        ),
        ("38 digits", base(json!({"n": number(&"7".repeat(38))}))),
        ("39 digits", base(json!({"n": number(&"7".repeat(39))}))),
        (
            "31 maps inside the item",
            base(json!({"deep": nested(31, json!(1), false)})),
        ),
        (
            "32 maps inside the item",
            base(json!({"deep": nested(32, json!(1), false)})),
        ),
        (
            "31 lists inside the item",
            base(json!({"deep": nested(31, json!("s"), true)})),
        ),
        (
            "32 lists inside the item",
            base(json!({"deep": nested(32, json!("s"), true)})),
        ),
        ("a 2048-byte key", json!({"request_id": name(2048)})),
        ("a 2049-byte key", json!({"request_id": name(2049)})),
        ("a name of 65535 bytes", base(json!({ name(65_535): 1 }))),
        ("a name of 65536 bytes", base(json!({ name(65_536): 1 }))),
        (
            "a nested name of 65536 bytes",
            base(json!({"m": { name(65_536): 1 }})),
        ),
        ("an empty name", base(json!({"": 1}))),
        ("an empty nested name", base(json!({"m": {"": 1}}))),
    ];
    let mut report = Vec::new();
    for (what, log) in &cases {
        let item = item_of(log);
        let real = verdict(&local_ddb, &item).await;
        let simulated = verdict(&sim.dynamodb, &item).await;
        assert_eq!(
            simulated, real,
            "{what}: sluice-sim differs from DynamoDB Local"
        );
        let decoded = decode_message(log.to_string().as_bytes(), &schema());
        assert_eq!(
            decoded.is_ok(),
            real.is_ok(),
            "{what}: the decoder says {decoded:?}, DynamoDB Local says {real:?}"
        );
        report.push(format!("{what}: {real:?}"));
    }
    // The empty key is refused by both servers; the decoder gives such a log a content key
    // instead (a log without a key still lands), so only the servers are compared.
    let empty_key = item_of(&json!({"request_id": ""}));
    let real = verdict(&local_ddb, &empty_key).await;
    assert!(real.is_err());
    assert_eq!(verdict(&sim.dynamodb, &empty_key).await, real, "empty key");
    assert!(
        decode_message(br#"{"request_id":""}"#, &schema()).is_err(),
        "an empty key field is poison, never written as an empty key"
    );
    // Keys of the wrong type, or missing.
    for (what, item) in [
        ("a number key", item_of(&json!({"request_id": 5}))),
        ("no key", item_of(&json!({"other": "x"}))),
    ] {
        let real = verdict(&local_ddb, &item).await;
        assert!(real.is_err(), "{what}");
        assert_eq!(verdict(&sim.dynamodb, &item).await, real, "{what}");
    }
    // Two puts of one key in one batch.
    for ddb in [&local_ddb, &sim.dynamodb] {
        let put = |k: &str| {
            WriteRequest::builder()
                .put_request(
                    PutRequest::builder()
                        .item("request_id", AttributeValue::S(k.into()))
                        .build()
                        .unwrap(),
                )
                .build()
        };
        let err = ddb
            .batch_write_item()
            .request_items("refusals", vec![put("d"), put("e"), put("d")])
            .send()
            .await
            .expect_err("duplicate keys");
        assert_eq!(
            err.message(),
            Some("Provided list of item keys contains duplicates")
        );
    }
    eprintln!("{}", report.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_400_kb_limit_falls_where_sluice_sizes_it_with_numbers_counted_as_dynamodb_counts_them()
{
    // Items holding numbers whose size the old "one byte per two digits" rule got wrong (1.5,
    // -1, -12.3), padded so sluice sizes them at exactly 400 KB: DynamoDB Local and sluice-sim
    // take them; one byte more and both refuse, exactly as the decoder does.
    let (_local, local_ddb, sim) = servers().await;
    for numbers in [
        vec!["1.5", "-1", "-12.3"],
        vec![
            "0.001",
            "123456789",
            "-99999999999999999999999999999999999999",
        ],
        vec!["1e125", "1.23456789012345678901234567890123456e-100", "0"],
    ] {
        let mut log = json!({"request_id": "edge", "pad": ""});
        for (i, n) in numbers.iter().enumerate() {
            log[format!("n{i}")] = number(n);
        }
        let size = |log: &Value| {
            decode_message(log.to_string().as_bytes(), &schema())
                .map(|items| items[0].size())
                .unwrap_or(usize::MAX)
        };
        let pad = sluice_core::item::MAX_ITEM_BYTES - size(&log);
        log["pad"] = json!("x".repeat(pad));
        assert_eq!(size(&log), sluice_core::item::MAX_ITEM_BYTES);
        let item = item_of(&log);
        assert_eq!(
            verdict(&local_ddb, &item).await,
            Ok(()),
            "{numbers:?} at 400 KB"
        );
        assert_eq!(
            verdict(&sim.dynamodb, &item).await,
            Ok(()),
            "{numbers:?} at 400 KB"
        );
        log["pad"] = json!("x".repeat(pad + 1));
        let err = decode_message(log.to_string().as_bytes(), &schema()).unwrap_err();
        assert_eq!(err.reason(), "too_large");
        let item = item_of(&log);
        let real = verdict(&local_ddb, &item).await;
        assert_eq!(
            real,
            Err("ValidationException: Item size has exceeded the maximum allowed size".into()),
            "{numbers:?}"
        );
        assert_eq!(verdict(&sim.dynamodb, &item).await, real, "{numbers:?}");
    }
}

/// A table keyed by request_id with two GSIs (by_user: ALL, by_status: KEYS_ONLY).
async fn create_gsi_table(ddb: &Client, name: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
        ProjectionType, ProvisionedThroughput, ScalarAttributeType,
    };
    let pt = |w| {
        ProvisionedThroughput::builder()
            .read_capacity_units(5)
            .write_capacity_units(w)
            .build()
            .unwrap()
    };
    let key = |a: &str| {
        KeySchemaElement::builder()
            .attribute_name(a)
            .key_type(KeyType::Hash)
            .build()
            .unwrap()
    };
    let def = |a: &str, t| {
        AttributeDefinition::builder()
            .attribute_name(a)
            .attribute_type(t)
            .build()
            .unwrap()
    };
    let gsi = |n: &str, a: &str, p| {
        GlobalSecondaryIndex::builder()
            .index_name(n)
            .key_schema(key(a))
            .projection(Projection::builder().projection_type(p).build())
            .provisioned_throughput(pt(60))
            .build()
            .unwrap()
    };
    ddb.create_table()
        .table_name(name)
        .key_schema(key("request_id"))
        .attribute_definitions(def("request_id", ScalarAttributeType::S))
        .attribute_definitions(def("user_id", ScalarAttributeType::S))
        .attribute_definitions(def("status", ScalarAttributeType::N))
        .provisioned_throughput(pt(300))
        .global_secondary_indexes(gsi("by_user", "user_id", ProjectionType::All))
        .global_secondary_indexes(gsi("by_status", "status", ProjectionType::KeysOnly))
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_writes_are_charged_and_refused_by_sluice_sim_as_by_dynamodb_local() {
    use aws_sdk_dynamodb::types::ReturnConsumedCapacity;
    let (_local, local_ddb, sim) = servers().await;
    for ddb in [&local_ddb, &sim.dynamodb] {
        create_gsi_table(ddb, "indexed").await;
    }
    let s = |v: &str| AttributeValue::S(v.into());
    let n = |v: &str| AttributeValue::N(v.into());
    let item = |pairs: &[(&str, AttributeValue)]| -> Item {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect()
    };
    let pad = "x".repeat(1500);
    // What each write costs on the table and on each index, with ReturnConsumedCapacity=INDEXES:
    // an item in both indexes, in one, in none; an overwrite that moves it out of one.
    let writes = [
        item(&[
            ("request_id", s("a")),
            ("user_id", s("u1")),
            ("status", n("200")),
            ("pad", s(&pad)),
        ]),
        item(&[
            ("request_id", s("b")),
            ("user_id", s("u1")),
            ("pad", s(&pad)),
        ]),
        item(&[("request_id", s("c")), ("pad", s(&pad))]),
        item(&[
            ("request_id", s("a")),
            ("user_id", s("u2")),
            ("pad", s("small")),
        ]),
    ];
    for (i, w) in writes.iter().enumerate() {
        let mut answers = Vec::new();
        for ddb in [&local_ddb, &sim.dynamodb] {
            let put = ddb
                .put_item()
                .table_name("indexed")
                .set_item(Some(w.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Indexes)
                .send()
                .await
                .unwrap();
            let c = put.consumed_capacity().unwrap();
            let mut gsis: Vec<(String, f64)> = c
                .global_secondary_indexes()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.capacity_units().unwrap_or(0.0)))
                        .collect()
                })
                .unwrap_or_default();
            gsis.sort_by(|a, b| a.0.cmp(&b.0));
            answers.push((
                c.capacity_units(),
                c.table().and_then(|t| t.capacity_units()),
                gsis,
            ));
        }
        assert_eq!(
            answers[1], answers[0],
            "write {i}: sluice-sim vs DynamoDB Local"
        );
    }
    // An index key of the wrong type is refused by both, in the same words.
    for bad in [
        item(&[("request_id", s("t1")), ("user_id", n("5"))]),
        item(&[("request_id", s("t2")), ("status", s("ok"))]),
    ] {
        let mut words = Vec::new();
        for ddb in [&local_ddb, &sim.dynamodb] {
            let e = ddb
                .put_item()
                .table_name("indexed")
                .set_item(Some(bad.clone()))
                .send()
                .await
                .unwrap_err();
            words.push((e.code().map(String::from), e.message().map(String::from)));
        }
        assert_eq!(words[1], words[0]);
    }
    // DescribeTable lists the indexes with their key, projection and capacity on both.
    for ddb in [&local_ddb, &sim.dynamodb] {
        let d = ddb
            .describe_table()
            .table_name("indexed")
            .send()
            .await
            .unwrap();
        let mut gsis: Vec<(String, String, i64)> = d
            .table()
            .unwrap()
            .global_secondary_indexes()
            .iter()
            .map(|g| {
                (
                    g.index_name().unwrap().to_string(),
                    format!("{:?}", g.projection().unwrap().projection_type().unwrap()),
                    g.provisioned_throughput()
                        .unwrap()
                        .write_capacity_units()
                        .unwrap(),
                )
            })
            .collect();
        gsis.sort();
        assert_eq!(
            gsis,
            vec![
                ("by_status".into(), "KeysOnly".into(), 60),
                ("by_user".into(), "All".into(), 60)
            ]
        );
    }
}

// ---- edge cases of the number grammar and size ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn number_edge_cases_get_one_verdict_from_local_the_sim_and_the_decoder() {
    let (_local, local_ddb, sim) = servers().await;
    let mut mismatches = Vec::new();
    for text in [
        "1e0000000001",
        "1E+0000000002",
        "0e1000000000",
        "0e-1000000000",
        "1e1000000000",
        "0e1500000000",
        "0e-2000000000",
        "0e3000000000",
        "-0",
        "-0.0e-999",
        "1.0e+2",
        "1e-130",
        "10e-131",
        "0.1e-129",
        "100000000000000000000000000000000000000000000",
        "0.00000000000000000000000000000000000000000001",
        "1234567890123456789012345678901234567.8",
        "1234567890123456789012345678901234567.80000",
    ] {
        let log = json!({"request_id": "r", "n": number(text)});
        let item = item_of(&log);
        let real = verdict(&local_ddb, &item).await;
        let simulated = verdict(&sim.dynamodb, &item).await;
        let decoded = decode_message(log.to_string().as_bytes(), &schema());
        if simulated != real || decoded.is_ok() != real.is_ok() {
            mismatches.push(format!(
                "{text}: local {real:?}, sim {simulated:?}, decoder ok={}",
                decoded.is_ok()
            ));
        }
    }
    // Sizes at the 400 KB limit, for numbers with 38 digits off the pair alignment.
    for text in [
        "-9.9999999999999999999999999999999999999",
        "9.9999999999999999999999999999999999999",
        "-1.2345678901234567890123456789012345678e-7",
    ] {
        let mut log = json!({"request_id": "edge", "pad": "", "n": number(text)});
        let size = |log: &Value| {
            decode_message(log.to_string().as_bytes(), &schema())
                .map(|items| items[0].size())
                .unwrap_or(usize::MAX)
        };
        let pad = sluice_core::item::MAX_ITEM_BYTES - size(&log);
        log["pad"] = json!("x".repeat(pad));
        let item = item_of(&log);
        let real = verdict(&local_ddb, &item).await;
        let simulated = verdict(&sim.dynamodb, &item).await;
        if real.is_err() || simulated != real {
            mismatches.push(format!(
                "{text} in an item sluice sizes at exactly 400 KB: local {real:?}, sim {simulated:?}"
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
