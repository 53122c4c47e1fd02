//! What compressed items cost in CPU, per realistic request log (1–3 KB, `sluice load --shape
//! realistic`): decoding a message into a plain item against into a compressed one (the
//! difference is the compression), reading a compressed item back, and the write cache's content
//! hash. Run with `cargo bench -p sluice --bench compression`; bench/README.md has the figures
//! (the target: compression at most 5 µs per log).

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rand::SeedableRng;
use sluice_core::stored::{self, Dictionaries};
use sluice_core::{Compression, Schema, decode_message, read_log};

/// The binary's allocator, so the figures are the daemon's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn logs(seed: u64, n: usize) -> Vec<String> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let id = sluice::tools::shape::uuid(&mut rng);
            sluice::tools::shape::realistic_log(&mut rng, &id, 1_764_900_000_000 + i as u64)
                .to_string()
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let plain = Schema::default();
    let samples: String = logs(1, 2000).join("\n");
    let (texts, _) = stored::training_texts(&samples, &plain, &BTreeSet::new());
    let dictionary = stored::train_dictionary(&texts, 32 * 1024).unwrap();
    let zstd = Schema {
        compression: Some(Arc::new(
            Compression::new(dictionary.clone(), stored::DEFAULT_LEVEL, []).unwrap(),
        )),
        ..Schema::default()
    };
    let bodies = logs(2, 256);
    let mean = bodies.iter().map(String::len).sum::<usize>() / bodies.len();
    let mut g = c.benchmark_group(format!("per realistic log ({mean} bytes on average)"));
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("decode into a plain item", |b| {
        b.iter(|| {
            i = (i + 1) % bodies.len();
            decode_message(black_box(bodies[i].as_bytes()), &plain).unwrap()
        })
    });
    g.bench_function(
        "decode into a compressed item (zstd level 1, 32 KiB dictionary)",
        |b| {
            b.iter(|| {
                i = (i + 1) % bodies.len();
                decode_message(black_box(bodies[i].as_bytes()), &zstd).unwrap()
            })
        },
    );
    let items: Vec<_> = bodies
        .iter()
        .map(|b| decode_message(b.as_bytes(), &zstd).unwrap().remove(0))
        .collect();
    let mut dictionaries = Dictionaries::new();
    dictionaries.insert(&dictionary).unwrap();
    g.bench_function("read a compressed item back (sluice get)", |b| {
        b.iter(|| {
            i = (i + 1) % items.len();
            read_log(black_box(items[i].attrs()), &dictionaries, &[]).unwrap()
        })
    });
    g.bench_function("content hash (the write cache)", |b| {
        b.iter(|| {
            i = (i + 1) % items.len();
            black_box(&items[i]).content_hash()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
