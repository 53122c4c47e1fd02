//! The per-log work between a received message and a BatchWriteItem request: parse the body,
//! build the item (and its size and WCU), turn it into the SDK's PutRequest. Run with
//! `cargo bench -p sluice-dynamodb --bench hot_path`; bench/README.md has the figures.
//!
//! Not covered here (they are per request, not per log, and show in the ceiling run's profile):
//! the SDK's JSON serialization of the request, SigV4 signing, HTTP.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use sluice_core::item::{attrs_size, wcu_for_bytes};
use sluice_core::{Schema, decode_message};
use sluice_dynamodb::write_request;

/// A request log of `bytes` bytes of JSON, shaped like the benchmark harness's (bench/compare.py).
fn log(i: usize, bytes: usize) -> String {
    let head = format!(
        r#"{{"request_id":"bench-{i:08}","ts":"2026-11-30T08:00:00.{ms:03}Z","method":"POST","path":"/v1/orders/{i}","status":201,"latency_ms":{lat}.5,"user_id":"user-{u}","user_agent":"Mozilla/5.0 (X11; Linux x86_64) bench/1.0","pad":""#,
        ms = i % 1000,
        lat = i % 900,
        u = i % 5000,
    );
    let pad = bytes.saturating_sub(head.len() + 2);
    format!("{head}{}\"}}", "x".repeat(pad))
}

fn bench(c: &mut Criterion) {
    let schema = Schema::default();
    let one = log(1, 1024);
    assert_eq!(one.len(), 1024);
    let ndjson: String = (0..100).map(|i| log(i, 1024) + "\n").collect();

    let mut g = c.benchmark_group("per log (1 KiB, one per message)");
    g.throughput(Throughput::Elements(1));
    g.bench_function(
        "parse: body to item (JSON, schema checks, attribute values, size)",
        |b| b.iter(|| decode_message(black_box(one.as_bytes()), &schema).unwrap()),
    );
    let item = decode_message(one.as_bytes(), &schema).unwrap().remove(0);
    g.bench_function("size and WCU of the item", |b| {
        b.iter(|| wcu_for_bytes(attrs_size(black_box(item.attrs()))))
    });
    g.bench_function("item build: the SDK's PutRequest", |b| {
        b.iter(|| write_request(black_box(&item)).unwrap())
    });
    g.bench_function("all of it", |b| {
        b.iter(|| {
            let items = decode_message(black_box(one.as_bytes()), &schema).unwrap();
            let wcu: u32 = items.iter().map(|i| i.wcu()).sum();
            let requests: Vec<_> = items.iter().map(|i| write_request(i).unwrap()).collect();
            (wcu, requests)
        })
    });
    g.finish();

    let mut g = c.benchmark_group("per message (100 logs of 1 KiB, NDJSON)");
    g.throughput(Throughput::Elements(100));
    g.bench_function("parse", |b| {
        b.iter(|| decode_message(black_box(ndjson.as_bytes()), &schema).unwrap())
    });
    g.bench_function("all of it", |b| {
        b.iter_batched(
            || ndjson.as_bytes(),
            |body| {
                let items = decode_message(body, &schema).unwrap();
                let wcu: u32 = items.iter().map(|i| i.wcu()).sum();
                let requests: Vec<_> = items.iter().map(|i| write_request(i).unwrap()).collect();
                (wcu, requests)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
