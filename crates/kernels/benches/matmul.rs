//! Benchmarks of the thread pool's fork/join cost and of the matmul kernels on Qwen3-VL-2B shapes.
//! (`qwen3vl bench matmul` reports the same shapes against the roofline.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use qwen3vl_kernels::Kernels;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Fork/join overhead: one `parallel_for` of `threads` empty tasks, back to back (workers spinning), as
/// between the ~200 matmuls of a decode step.
fn bench_pool(c: &mut Criterion) {
    let mut g = c.benchmark_group("pool");
    let base = Kernels::detect().unwrap();
    let max = qwen3vl_kernels::pool::available_threads();
    for threads in (1..=max).filter(|t| *t == 1 || *t == max || *t == 2) {
        let k = base.with_threads(threads);
        let sink = AtomicUsize::new(0);
        g.bench_with_input(BenchmarkId::new("fork_join", threads), &threads, |b, _| {
            b.iter(|| {
                k.parallel_for(threads, &|i| {
                    sink.fetch_add(i, Ordering::Relaxed);
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_pool);
criterion_main!(benches);
