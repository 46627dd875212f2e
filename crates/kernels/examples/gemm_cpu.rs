//! The packed matmul on Qwen3-VL-2B shapes, one thread, timed in **CPU time of the thread** (not wall
//! time): on a machine shared with other jobs, the share of the FMA peak a kernel reaches shows in its
//! flops per CPU second even when the wall clock does not. The peak is an AVX2 FMA loop timed the same way.
//!
//! `cargo run --release -p qwen3vl-kernels --example gemm_cpu [-- m,k,n ...]` (`QWEN3VL_SIMD` picks the
//! level). Prints per shape: GFLOP per CPU second, and that as a share of the one-thread AVX2 FMA peak.

use qwen3vl_kernels::matmul::{MatmulPath, Weight};
use qwen3vl_kernels::{roofline, Kernels};

mod cpu_time;
use cpu_time::{best_seconds, cpu_seconds};

/// Best GFLOP per CPU second of `f` (doing `flops`) over runs totalling ≥ `budget` CPU seconds.
fn best(flops: f64, budget: f64, f: &mut dyn FnMut()) -> f64 {
    flops / best_seconds(budget, f) / 1e9
}

/// One thread's AVX2 FMA peak in GFLOP per CPU second: 12 independent chains of 8-lane FMAs.
fn fma_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        #[target_feature(enable = "avx2,fma")]
        unsafe fn chains(iters: u64) -> f32 {
            use std::arch::x86_64::*;
            let mut a = [_mm256_set1_ps(1.0); 12];
            let (b, c) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for v in a.iter_mut() {
                    *v = _mm256_fmadd_ps(*v, b, c);
                }
            }
            a.iter().map(|v| _mm256_cvtss_f32(*v)).sum()
        }
        let iters = 20_000_000u64;
        return best(iters as f64 * 12.0 * 16.0, 0.5, &mut || {
            // Safety: avx2 and fma detected just above.
            std::hint::black_box(unsafe { chains(std::hint::black_box(iters)) });
        });
    }
    f64::NAN
}

/// One thread's AVX-512 FMA peak in GFLOP per CPU second (NaN without AVX-512 F).
fn fma512_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn chains(iters: u64) -> f32 {
            use std::arch::x86_64::*;
            let mut a = [_mm512_set1_ps(1.0); 12];
            let (b, c) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            for _ in 0..iters {
                for v in a.iter_mut() {
                    *v = _mm512_fmadd_ps(*v, b, c);
                }
            }
            a.iter().map(|v| _mm512_reduce_add_ps(*v)).sum()
        }
        let iters = 10_000_000u64;
        return best(iters as f64 * 12.0 * 32.0, 0.5, &mut || {
            // Safety: avx512f detected just above.
            std::hint::black_box(unsafe { chains(std::hint::black_box(iters)) });
        });
    }
    f64::NAN
}

fn main() {
    let k1 = Kernels::detect().unwrap().with_threads(1);
    let shapes: Vec<(usize, usize, usize)> = {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.is_empty() {
            vec![
                (512, 2048, 6144),
                (512, 6144, 2048),
                (1200, 1024, 3072),
                (1200, 1024, 4096),
                (1200, 4096, 1024),
                (1, 2048, 6144),
            ]
        } else {
            args.iter()
                .map(|a| {
                    let v: Vec<usize> = a.split(',').map(|t| t.parse().unwrap()).collect();
                    (v[0], v[1], v[2])
                })
                .collect()
        }
    };
    let peak256 = fma_peak();
    let peak = if k1.isa() == qwen3vl_kernels::isa::Isa::Avx512 {
        fma512_peak()
    } else {
        peak256
    };
    // one thread's AMX peak: the roofline's probe on a one-thread pool (wall time: the thread is busy)
    let amx_peak = qwen3vl_kernels::roofline::amx_peak(&k1).unwrap_or(f64::NAN);
    println!(
        "level {}; one-thread FMA peak {peak:.1} GFLOP/cpu-s at this level (AVX2: {peak256:.1})",
        k1.isa()
    );
    for (m, k, n) in shapes {
        let x = roofline::sample(m * k, 1);
        let w: Vec<u16> = roofline::sample(n * k, 2)
            .iter()
            .map(|v| (v.to_bits() >> 16) as u16)
            .collect();
        let t0 = cpu_seconds();
        let p = k1.pack_weight(Weight::Bf16(&w), n, k).unwrap();
        let pack_s = cpu_seconds() - t0;
        let t0 = cpu_seconds();
        drop(k1.pack_weight(Weight::Bf16(&w), n, k).unwrap());
        let repack_s = cpu_seconds() - t0;
        let mut y = vec![0f32; m * n];
        let flops = 2.0 * (m * n * k) as f64;
        let budget = if m == 1 { 0.3 } else { 1.5 };
        let g = best(flops, budget, &mut || {
            k1.matmul(&x, m, &p, None, &mut y, MatmulPath::Exact)
                .unwrap()
        });
        println!(
            "{m:5} {k:5} {n:6}  {g:7.1} GFLOP/cpu-s  {:5.1}% of peak   pack {:.1} ms, again {:.1} ms (cpu)",
            100.0 * g / peak,
            pack_s * 1e3,
            repack_s * 1e3
        );
        // The fast path where it has its own arithmetic: AMX tiles (16+ rows), else the bf16 dot product.
        let amx = k1.amx() && m >= qwen3vl_kernels::matmul::AMX_MIN_M;
        if amx || k1.bf16_dot() {
            let g = best(flops, budget, &mut || {
                k1.matmul(&x, m, &p, None, &mut y, MatmulPath::Fast)
                    .unwrap()
            });
            let (name, lim) = if amx {
                ("AMX", amx_peak)
            } else {
                ("bf16 dot", f64::NAN)
            };
            println!(
                "{:17}  {g:7.1} GFLOP/cpu-s  {:5.1}% of the {name} peak (fast path)",
                "",
                100.0 * g / lim
            );
        }
    }
}
