//! Per-op, per-level benchmarks of the vector kernels (criterion). Sizes: one row of 2048 (cache-resident,
//! decode-like) and 512×2048 (a prefill-sized activation). Throughput is in elements.
//!
//!     cargo bench -p qwen3vl-kernels --bench ops [-- <filter, e.g. gelu_erf/avx512>]
//!
//! The ours-vs-torch table is produced by `examples/ops_table.rs` + `tools/bench/torch_ops.py` +
//! `tools/bench/ops_compare.py` instead (same shapes on both sides).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen3vl_kernels::Kernels;
use std::time::Duration;

const SIZES: [(usize, usize); 2] = [(1, 2048), (512, 2048)];

struct Data {
    rows: usize,
    n: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    w: Vec<f32>,
    bias: Vec<f32>,
    h: Vec<u16>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn data(rows: usize, n: usize) -> Data {
    let len = rows * n;
    let f = |i: usize, k: f32| (i as f32 * k).sin() * 4.0;
    let a: Vec<f32> = (0..len).map(|i| f(i, 0.37)).collect();
    let h = a.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    Data {
        rows,
        n,
        b: (0..len).map(|i| f(i, 0.11)).collect(),
        w: (0..n).map(|i| 1.0 + f(i, 0.05) * 0.1).collect(),
        bias: (0..n).map(|i| f(i, 0.07) * 0.1).collect(),
        h,
        cos: (0..rows * 64).map(|i| (i as f32 * 0.01).cos()).collect(),
        sin: (0..rows * 64).map(|i| (i as f32 * 0.01).sin()).collect(),
        a,
    }
}

type Body = fn(&Kernels, &Data, &mut [f32], &mut [f32]);

fn ops() -> Vec<(&'static str, Body)> {
    vec![
        ("add", |k, d, o, _| k.add(&d.a, &d.b, o).unwrap()),
        ("mul", |k, d, o, _| k.mul(&d.a, &d.b, o).unwrap()),
        ("scale", |k, d, o, _| k.scale(&d.a, 0.5, o).unwrap()),
        ("dot", |k, d, _, _| {
            std::hint::black_box(k.dot(&d.a, &d.b).unwrap());
        }),
        ("sum", |k, d, _, _| {
            std::hint::black_box(k.sum(&d.a).unwrap());
        }),
        ("max", |k, d, _, _| {
            std::hint::black_box(k.max(&d.a).unwrap());
        }),
        ("bf16_to_f32", |k, d, o, _| k.bf16_to_f32(&d.h, o).unwrap()),
        ("round_bf16", |k, d, o, _| k.round_bf16(&d.a, o).unwrap()),
        ("rms_norm", |k, d, o, _| {
            k.rms_norm(&d.a, &d.w, 1e-6, o).unwrap()
        }),
        ("layer_norm", |k, d, o, _| {
            k.layer_norm(&d.a, &d.w, &d.bias, 1e-6, o).unwrap()
        }),
        ("normalize", |k, d, o, _| {
            k.normalize_rows(&d.a, d.n, 1e-12, o).unwrap()
        }),
        ("softmax", |k, d, o, _| {
            k.softmax(&d.a, d.n, 1.0, None, o).unwrap()
        }),
        ("exp", |k, d, o, _| k.exp(&d.a, o).unwrap()),
        ("tanh", |k, d, o, _| k.tanh(&d.a, o).unwrap()),
        ("erf", |k, d, o, _| k.erf(&d.a, o).unwrap()),
        ("gelu_tanh", |k, d, o, _| k.gelu_tanh(&d.a, o).unwrap()),
        ("gelu_erf", |k, d, o, _| k.gelu_erf(&d.a, o).unwrap()),
        ("silu", |k, d, o, _| k.silu(&d.a, o).unwrap()),
        ("relu", |k, d, o, _| k.relu(&d.a, o).unwrap()),
        ("swiglu", |k, d, o, _| k.swiglu(&d.a, &d.b, o).unwrap()),
        ("rope_half", |k, d, o, _| {
            k.rope_half(o, d.n / 128, 128, &d.cos, &d.sin).unwrap()
        }),
        ("gelu_tanh_backward", |k, d, o, _| {
            k.gelu_tanh_backward(&d.a, &d.b, o).unwrap()
        }),
        ("gelu_erf_backward", |k, d, o, _| {
            k.gelu_erf_backward(&d.a, &d.b, o).unwrap()
        }),
        ("silu_backward", |k, d, o, _| {
            k.silu_backward(&d.a, &d.b, o).unwrap()
        }),
        ("swiglu_backward", |k, d, o, o2| {
            k.swiglu_backward(&d.a, &d.b, &d.b, o, o2).unwrap()
        }),
        ("softmax_backward", |k, d, o, _| {
            k.softmax_backward(&d.b, d.n, &d.a, o).unwrap()
        }),
        ("rms_norm_backward", |k, d, o, o2| {
            k.rms_norm_backward(&d.a, &d.w, 1e-6, &d.b, o, &mut o2[..d.n])
                .unwrap()
        }),
        ("layer_norm_backward", |k, d, o, o2| {
            let (dw, db) = o2[..2 * d.n].split_at_mut(d.n);
            k.layer_norm_backward(&d.a, &d.w, 1e-6, &d.b, o, dw, db)
                .unwrap()
        }),
    ]
}

fn bench_ops(c: &mut Criterion) {
    let sets: Vec<Data> = SIZES.iter().map(|&(r, n)| data(r, n)).collect();
    for (name, body) in ops() {
        let mut g = c.benchmark_group(name);
        g.sample_size(10)
            .warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500));
        for d in &sets {
            let len = d.rows * d.n;
            let (mut o, mut o2) = (d.a.clone(), vec![0.0f32; len]);
            g.throughput(Throughput::Elements(len as u64));
            for k in Kernels::all_available() {
                let id = BenchmarkId::new(k.isa().name(), format!("{}x{}", d.rows, d.n));
                g.bench_function(id, |bch| bch.iter(|| body(&k, d, &mut o, &mut o2)));
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench_ops);
criterion_main!(benches);
