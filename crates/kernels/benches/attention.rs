//! Attention benchmarks per level on the model's shapes.
//!
//! Throughput is reported as "elements" = floating-point operations: 4·q_len·kv_len·head_dim per q head
//! (2 for q·k, 2 for p·v), halved for causal prefill. Divide by the machine's f32 FMA peak (see
//! KERNELS.md) for the roofline fraction; decode is memory-bound: K+V bytes = 2·kv_len·n_kv·hd·4.
//!
//! Cases: text prefill L=512 (16 q heads, 8 kv heads, hd 128, causal, fused qkv); decode q_len=1 against
//! a head-major cache of 512 / 4096 keys (and the model's row-major cache at the best level); vision N=1200
//! (16 heads, hd 64, non-causal, fused qkv). Prefill and vision also run the `Fast` path at the best level
//! (`vdpbf16ps` on AVX512_BF16: compare with the bf16 dot-product peak, ≈2× the f32 FMA peak).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use qwen3vl_kernels::attention::{AttnLayout, AttnParams, MatmulPath};
use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::Kernels;
use std::time::Duration;

fn fill(n: usize, seed: u32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1 << 23) as f32 - 1.0
        })
        .collect()
}

/// q, k, v as views of one fused (len, nq + 2·nkv, hd) buffer.
fn fused(
    c: &mut Criterion,
    name: &str,
    len: usize,
    nq: usize,
    nkv: usize,
    hd: usize,
    causal: bool,
) {
    let fast = Kernels::detect().unwrap();
    let l = AttnLayout {
        row_stride: (nq + 2 * nkv) * hd,
        head_stride: hd,
    };
    let qkv = fill(len * (nq + 2 * nkv) * hd, 1);
    let mut out = vec![0.0f32; len * nq * hd];
    let p = AttnParams {
        n_q_heads: nq,
        n_kv_heads: nkv,
        head_dim: hd,
        q_len: len,
        kv_len: len,
        scale: 1.0 / (hd as f32).sqrt(),
        causal,
        path: MatmulPath::Exact,
    };
    let flops = 4 * len * len * hd * nq / if causal { 2 } else { 1 };
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(flops as u64));
    // the scalar reference takes seconds per call here: benchmark the SIMD levels only
    let exact = Kernels::all_available()
        .into_iter()
        .filter(|k| k.isa() != Isa::Scalar)
        .map(|k| (k, p, k.isa().name().to_string()));
    let pf = AttnParams {
        path: MatmulPath::Fast,
        ..p
    };
    // "avx512-fast" runs the bf16 kernel; a level without it runs the exact path ("-fast-is-exact")
    let name = match fast.attention_precision(&pf) {
        MatmulPath::Fast => format!("{}-fast", fast.isa().name()),
        MatmulPath::Exact => format!("{}-fast-is-exact", fast.isa().name()),
    };
    for (k, p, id) in exact.chain([(fast, pf, name)]) {
        g.bench_with_input(BenchmarkId::new(id, len), &len, |b, _| {
            b.iter(|| {
                k.attention(
                    &qkv,
                    l,
                    &qkv[nq * hd..],
                    l,
                    &qkv[(nq + nkv) * hd..],
                    l,
                    &mut out,
                    &p,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

fn prefill(c: &mut Criterion) {
    fused(c, "attn_prefill_text", 512, 16, 8, 128, true);
}

fn vision(c: &mut Criterion) {
    fused(c, "attn_vision", 1200, 16, 16, 64, false);
}

/// One new token against a head-major cache (nkv, max_len, hd) holding kv_len keys.
fn decode(c: &mut Criterion) {
    let (nq, nkv, hd, max_len) = (16, 8, 128, 4096);
    let cache = AttnLayout::head_major(max_len, hd);
    let kc = fill(nkv * max_len * hd, 2);
    let vc = fill(nkv * max_len * hd, 3);
    let q = fill(nq * hd, 4);
    let mut out = vec![0.0f32; nq * hd];
    let mut g = c.benchmark_group("attn_decode");
    for kv_len in [512usize, 4096] {
        let p = AttnParams {
            n_q_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
            q_len: 1,
            kv_len,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: true,
            path: MatmulPath::Exact,
        };
        // bytes of K and V read
        g.throughput(Throughput::Bytes((2 * kv_len * nkv * hd * 4) as u64));
        for k in Kernels::all_available() {
            g.bench_with_input(BenchmarkId::new(k.isa().name(), kv_len), &kv_len, |b, _| {
                b.iter(|| {
                    k.attention(
                        &q,
                        AttnLayout::contiguous(nq, hd),
                        &kc,
                        cache,
                        &vc,
                        cache,
                        &mut out,
                        &p,
                    )
                    .unwrap()
                })
            });
        }
    }
    // the model's cache layout: row-major (max_len, nkv, hd), best level only
    let rows = AttnLayout::contiguous(nkv, hd);
    let k = Kernels::detect().unwrap();
    for kv_len in [512usize, 4096] {
        let p = AttnParams {
            n_q_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
            q_len: 1,
            kv_len,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: true,
            path: MatmulPath::Exact,
        };
        g.throughput(Throughput::Bytes((2 * kv_len * nkv * hd * 4) as u64));
        let id = format!("{}-rowmajor", k.isa().name());
        g.bench_with_input(BenchmarkId::new(id, kv_len), &kv_len, |b, _| {
            b.iter(|| {
                k.attention(
                    &q,
                    AttnLayout::contiguous(nq, hd),
                    &kc,
                    rows,
                    &vc,
                    rows,
                    &mut out,
                    &p,
                )
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = prefill, decode, vision
}
criterion_main!(benches);
