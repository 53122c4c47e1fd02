//! Chaos (e): arbitrary message bodies. The decoder never panics, and through the engine every
//! bad body ends on the dead-letter path with its reason while every good one is written.

use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use sluice_core::testing::{InMemoryQueueForTests, MemoryTableForTests};
use sluice_core::{Engine, EngineConfig, Schema, WcuLimiter, Writer, WriterConfig, decode_message};
use tokio_util::sync::CancellationToken;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_message(&body, &Schema::default());
    }

    #[test]
    fn arbitrary_json_decodes_or_says_why(value in arb_json()) {
        let text = value.to_string();
        match decode_message(text.as_bytes(), &Schema::default()) {
            Ok(items) => prop_assert!(!items.is_empty()),
            Err(e) => prop_assert!(!e.reason().is_empty() && !e.to_string().is_empty()),
        }
    }

    #[test]
    fn valid_logs_with_arbitrary_extras_always_decode(extra in prop::collection::btree_map("[a-z]{1,8}", arb_json(), 0..5)) {
        let mut log = json!({"request_id": "r", "ts": 1795341600000u64, "method": "GET", "path": "/", "status": 200, "latency_ms": 1});
        for (k, v) in extra {
            // Extras, not replacements of the schema's own fields.
            if !["request_id", "ts", "method", "path", "status"].contains(&k.as_str()) {
                log[k] = v;
            }
        }
        let items = decode_message(log.to_string().as_bytes(), &Schema::default());
        // Only an extra value DynamoDB would refuse (a number out of its range or precision,
        // nesting too deep) may make it poison.
        if let Err(e) = &items {
            prop_assert_eq!(e.reason(), "invalid_value");
        }
    }
}

fn good(i: usize) -> String {
    json!({"request_id": format!("ok-{i}"), "ts": "2026-11-22T10:00:00Z", "method": "GET", "path": "/", "status": 200, "latency_ms": 1}).to_string()
}

fn garbage(rng: &mut StdRng) -> String {
    match rng.random_range(0..6) {
        0 => (0..rng.random_range(1..40)).map(|_| rng.random_range(' '..='~')).collect(),
        1 => json!({"request_id": "x", "method": "GET"}).to_string(),
        2 => format!("[{}]", rng.random_range(0..1000)),
        3 => json!({"request_id": true, "ts": 1, "method": "GET", "path": "/", "status": 1, "latency_ms": 1}).to_string(),
        4 => json!({"request_id": "y", "ts": "yesterday", "method": "GET", "path": "/", "status": 1, "latency_ms": 1}).to_string(),
        _ => "{\"unterminated\": ".to_string(),
    }
}

#[tokio::test(start_paused = true)]
async fn chaos_random_bodies_end_written_or_dead_lettered_with_a_reason() {
    let mut rng = StdRng::seed_from_u64(42);
    let queue = Arc::new(
        InMemoryQueueForTests::new(Duration::from_secs(30), Duration::from_secs(20))
            .with_dead_letters(),
    );
    let table = Arc::new(MemoryTableForTests::default());
    let (mut good_n, mut bad_n) = (0, 0);
    for i in 0..400 {
        if rng.random_bool(0.5) {
            queue.send(good(i));
            good_n += 1;
        } else {
            queue.send(garbage(&mut rng));
            bad_n += 1;
        }
    }
    let (writer, _t) = Writer::spawn(
        table.clone(),
        Arc::new(WcuLimiter::unlimited()),
        WriterConfig::default(),
    );
    let engine = Engine::new(
        queue.clone(),
        writer,
        Schema::default(),
        EngineConfig {
            intake_horizon: None,
            ..EngineConfig::default()
        },
    );
    let stop = CancellationToken::new();
    let run = tokio::spawn(engine.run(stop.clone()));
    let give_up = tokio::time::Instant::now() + Duration::from_secs(120);
    while !queue.is_empty() {
        assert!(
            tokio::time::Instant::now() < give_up,
            "{} left",
            queue.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let stats = run.await.unwrap();
    assert_eq!(table.rows().len(), good_n);
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), bad_n, "every bad body on the dead-letter path");
    assert!(
        dead.iter()
            .all(|(_, _, reason)| ["not_json", "schema", "empty"].contains(&reason.as_str()))
    );
    assert_eq!((stats.acked as usize, stats.nacked), (good_n + bad_n, 0));
}
