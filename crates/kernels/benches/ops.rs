//! Per-op, per-level benchmarks of the vector kernels.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen3vl_kernels::Kernels;

fn bench_add(c: &mut Criterion) {
    let mut g = c.benchmark_group("add");
    for &n in &[2048usize, 512 * 2048] {
        let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.001).collect();
        let b = a.clone();
        let mut out = vec![0.0; n];
        g.throughput(Throughput::Elements(n as u64));
        for k in Kernels::all_available() {
            g.bench_with_input(BenchmarkId::new(k.isa().name(), n), &n, |bch, _| {
                bch.iter(|| k.add(&a, &b, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench_add);
criterion_main!(benches);
