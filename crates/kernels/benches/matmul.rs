//! Benchmarks of the thread pool's fork/join cost and of the matmul kernels on Qwen3-VL-2B shapes.
//! (`qwen3vl bench matmul` reports the same shapes against the roofline.)

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen3vl_kernels::matmul::{MatmulPath, Weight};
use qwen3vl_kernels::{roofline, Kernels};
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
    // Wake-up from park: the workers have been idle longer than their spin (1 ms > 200 µs).
    if max >= 2 {
        let k = base.with_threads(2);
        let sink = AtomicUsize::new(0);
        g.sample_size(20);
        g.bench_function("fork_join_after_park/2", |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                    let t0 = std::time::Instant::now();
                    k.parallel_for(2, &|i| {
                        sink.fetch_add(i, Ordering::Relaxed);
                    });
                    total += t0.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

/// Decode-shaped GEMV (1 × 2048 -> 6144, bf16 weights), per level and path, on the weight as stored and
/// packed. Throughput is weight bytes. (The 25 MB weight may partly sit in L3 between iterations here;
/// `qwen3vl bench matmul` cycles copies to measure from memory.)
fn bench_gemv(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemv_1x2048x6144_bf16");
    let (k, n) = (2048, 6144);
    let x = roofline::sample(k, 1);
    let w: Vec<u16> = roofline::sample(n * k, 2)
        .iter()
        .map(|v| (v.to_bits() >> 16) as u16)
        .collect();
    let mut y = vec![0f32; n];
    g.throughput(Throughput::Bytes((n * k * 2) as u64));
    for kern in Kernels::all_available()
        .into_iter()
        .filter(|k| k.isa().f32_lanes() >= 8)
    {
        let p = kern.pack_weight(Weight::Bf16(&w), n, k).unwrap();
        for path in [MatmulPath::Exact, MatmulPath::Fast] {
            let id = format!("{}/{path:?}", kern.isa());
            g.bench_function(BenchmarkId::new("as_is", &id), |b| {
                b.iter(|| {
                    kern.matmul_unpacked(&x, 1, Weight::Bf16(&w), n, k, None, &mut y, path)
                        .unwrap()
                })
            });
            g.bench_function(BenchmarkId::new("packed", &id), |b| {
                b.iter(|| kern.matmul(&x, 1, &p, None, &mut y, path).unwrap())
            });
        }
    }
    g.finish();
}

/// Prefill-shaped GEMM (128 × 2048 -> 2048, packed bf16 weights), per level and path. Throughput is
/// multiply-adds.
fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm_128x2048x2048_bf16");
    g.sample_size(20);
    let (m, k, n) = (128, 2048, 2048);
    let x = roofline::sample(m * k, 1);
    let w: Vec<u16> = roofline::sample(n * k, 2)
        .iter()
        .map(|v| (v.to_bits() >> 16) as u16)
        .collect();
    let mut y = vec![0f32; m * n];
    g.throughput(Throughput::Elements((m * n * k) as u64));
    for kern in Kernels::all_available()
        .into_iter()
        .filter(|k| k.isa().f32_lanes() >= 8)
    {
        let p = kern.pack_weight(Weight::Bf16(&w), n, k).unwrap();
        for path in [MatmulPath::Exact, MatmulPath::Fast] {
            let id = format!("{}/{path:?}", kern.isa());
            g.bench_function(BenchmarkId::new("packed", &id), |b| {
                b.iter(|| kern.matmul(&x, m, &p, None, &mut y, path).unwrap())
            });
        }
    }
    g.finish();
}

/// The 2B text MLP's gate|up (k = 2048 -> I = 6144, bf16) at the best level, decode (m = 1) and prefill
/// (m = 512): one matmul with silu(gate)·up in its epilogue vs the [gate; up] matmul into (m, 2I) followed
/// by the `swiglu` op. Throughput is multiply-adds.
fn bench_mlp_swiglu(c: &mut Criterion) {
    let mut g = c.benchmark_group("mlp_gate_up_swiglu_k2048_i6144_bf16");
    let (k, i) = (2048, 6144);
    let w: Vec<u16> = roofline::sample(2 * i * k, 2)
        .iter()
        .map(|v| (v.to_bits() >> 16) as u16)
        .collect();
    let kern = Kernels::detect().unwrap();
    let fused = kern
        .pack_swiglu(Weight::Bf16(&w[..i * k]), Weight::Bf16(&w[i * k..]), i, k)
        .unwrap();
    let plain = kern.pack_weight(Weight::Bf16(&w), 2 * i, k).unwrap();
    for m in [1usize, 512] {
        let x = roofline::sample(m * k, 1);
        let mut gu = vec![0f32; m * 2 * i];
        let mut act = vec![0f32; m * i];
        g.throughput(Throughput::Elements((m * 2 * i * k) as u64));
        if m > 1 {
            g.sample_size(10);
        }
        for path in [MatmulPath::Exact, MatmulPath::Fast] {
            let id = format!("m{m}/{}/{path:?}", kern.isa());
            g.bench_function(BenchmarkId::new("fused", &id), |b| {
                b.iter(|| kern.matmul(&x, m, &fused, None, &mut act, path).unwrap())
            });
            g.bench_function(BenchmarkId::new("unfused", &id), |b| {
                b.iter(|| {
                    kern.matmul(&x, m, &plain, None, &mut gu, path).unwrap();
                    for (r, a) in gu.chunks_exact(2 * i).zip(act.chunks_exact_mut(i)) {
                        kern.swiglu(&r[..i], &r[i..], a).unwrap();
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_pool,
    bench_gemv,
    bench_gemm,
    bench_mlp_swiglu
);
criterion_main!(benches);
