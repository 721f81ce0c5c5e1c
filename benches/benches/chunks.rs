//! Micro-benchmarks of the per-chunk work on the write and read paths: BLAKE3 of a chunk (its
//! id), its chaining value at an offset (for the whole-file hash), and the chunk store's
//! durable put and verified get (its blocking core, which the node runs on blocking threads).

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use strata_cluster::ChunkId;
use strata_cluster::file_hash;
use strata_node::chunk_store::Files;

fn chunk(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn hashing(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    for len in [64 << 10, 1 << 20, 4 << 20] {
        let data = chunk(len, 1);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(BenchmarkId::new("chunk_id", len), &data, |b, d| {
            b.iter(|| ChunkId::of(d))
        });
        g.bench_with_input(BenchmarkId::new("cv_at_offset", len), &data, |b, d| {
            b.iter(|| file_hash::chunk_cv(len as u64 * 3, d))
        });
        g.bench_with_input(BenchmarkId::new("id_and_cv_at_zero", len), &data, |b, d| {
            b.iter(|| file_hash::id_and_cv_at_zero(d))
        });
    }
    g.finish();
}

fn store(c: &mut Criterion) {
    let dir =
        tempfile::tempdir_in(std::env::var("STRATA_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("tempdir");
    let store = Files::open(dir.path(), 1).expect("open store");
    let mut g = c.benchmark_group("chunk_store");
    g.sample_size(20);
    let len = 4 << 20;
    g.throughput(Throughput::Bytes(len as u64));
    let mut seed = 0u8;
    g.bench_function("put_4MiB_durable", |b| {
        b.iter_batched(
            || {
                seed = seed.wrapping_add(1);
                let d = chunk(len, seed);
                (ChunkId::of(&d), d)
            },
            |(id, d)| {
                store.put(&id, &d).expect("put");
                store.lock(&id).remove().expect("delete");
            },
            criterion::BatchSize::PerIteration,
        )
    });
    let d = chunk(len, 200);
    let id = ChunkId::of(&d);
    store.put(&id, &d).expect("put");
    g.bench_function("get_4MiB_verified", |b| {
        b.iter(|| store.get(&id).expect("get"))
    });
    g.finish();
}

criterion_group!(benches, hashing, store);
criterion_main!(benches);
