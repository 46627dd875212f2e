//! q8 and q4 matmuls against the packed bf16 matmul on Qwen3-VL-2B shapes, same process, alternating runs.
//! `cargo run --release -p qwen3vl-kernels --example quant_bench [-- THREADS]`
//!
//! GEMV (m = 1) streams weight copies totalling ≥ 160 MiB (nothing served from L3) and prints GB/s of
//! weight bytes read; GEMM (m = 512) prints GOP/s (2·m·n·k per call). Best of 5 runs per row.

use std::time::Instant;

use qwen3vl_kernels::matmul::{MatmulPath, PackedWeight, Weight};
use qwen3vl_kernels::quant::{QuantFormat, QuantWeight};
use qwen3vl_kernels::Kernels;

fn best(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let threads: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let k = Kernels::detect().unwrap().with_threads(threads);
    println!("isa {:?}, {threads} threads", k.isa());
    for &(m, n, kk) in &[
        (1usize, 6144usize, 2048usize),
        (1, 2048, 6144),
        (1, 151936, 2048),
        (512, 6144, 2048),
        (512, 2048, 6144),
    ] {
        let w: Vec<u16> = (0..n * kk)
            .map(|i| (((i as u32).wrapping_mul(2654435761) >> 20) as u16 & 0x7f) | 0x3c00)
            .collect();
        let copies = if m == 1 {
            (160usize << 20).div_ceil(n * kk * 2).max(1)
        } else {
            1
        };
        let packed: Vec<PackedWeight> = (0..copies)
            .map(|_| k.pack_weight(Weight::Bf16(&w), n, kk).unwrap())
            .collect();
        let quant: Vec<QuantWeight> = (0..copies)
            .map(|_| {
                k.quantize_weight(QuantFormat::Q8, Weight::Bf16(&w), n, kk)
                    .unwrap()
            })
            .collect();
        let q4: Vec<QuantWeight> = (0..copies)
            .map(|_| {
                k.quantize_weight(QuantFormat::Q4, Weight::Bf16(&w), n, kk)
                    .unwrap()
            })
            .collect();
        drop(w);
        let x: Vec<f32> = (0..m * kk)
            .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
            .collect();
        let mut y = vec![0f32; m * n];
        let runs = if m == 1 { 5 } else { 3 };
        let tb = best(runs, || {
            for p in &packed {
                k.matmul(&x, m, p, None, &mut y, MatmulPath::Fast).unwrap();
            }
        }) / copies as f64;
        let tq = best(runs, || {
            for q in &quant {
                k.matmul_quant(&x, m, q, None, &mut y).unwrap();
            }
        }) / copies as f64;
        let t4 = best(runs, || {
            for q in &q4 {
                k.matmul_quant(&x, m, q, None, &mut y).unwrap();
            }
        }) / copies as f64;
        let (bb, bq, b4) = (
            packed[0].bytes() as f64,
            quant[0].bytes() as f64,
            q4[0].bytes() as f64,
        );
        if m == 1 {
            println!(
                "GEMV {m}x{kk}->{n}: bf16 {:.2} ms ({:.1} GB/s), q8 {:.2} ms ({:.1} GB/s, {:.2}x), q4 {:.2} ms ({:.1} GB/s, {:.2}x)",
                tb * 1e3,
                bb / tb / 1e9,
                tq * 1e3,
                bq / tq / 1e9,
                tb / tq,
                t4 * 1e3,
                b4 / t4 / 1e9,
                tb / t4
            );
        } else {
            let ops = 2.0 * (m * n * kk) as f64;
            println!(
                "GEMM {m}x{kk}->{n}: bf16 {:.1} ms ({:.0} GFLOP/s), q8 {:.1} ms ({:.0} GOP/s, {:.2}x), q4 {:.1} ms ({:.0} GOP/s, {:.2}x)",
                tb * 1e3,
                ops / tb / 1e9,
                tq * 1e3,
                ops / tq / 1e9,
                tb / tq,
                t4 * 1e3,
                ops / t4 / 1e9,
                tb / t4
            );
        }
    }
}
