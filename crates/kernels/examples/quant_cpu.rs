//! The quantized matmuls on Qwen3-VL-2B shapes, one thread, timed in **CPU time of the thread** (as
//! `gemm_cpu`): GEMV-sized calls (m = 1, 4, 8) print GB of weight bytes per CPU second, m = 64 GOP per CPU
//! second (2·m·n·k). Every q4/q8 kernel variant this host runs is timed (`QWEN3VL_SIMD` picks the level),
//! at m = 64 also the int8-activation panel form where the variant has it (`matmul_quant_a8_with`).
//! `cargo run --release -p qwen3vl-kernels --example quant_cpu [-- n,k ...]` (a small n·k, e.g. 256,2048,
//! stays in L2 and shows the compute rate; `QUANT_CPU_M=1,4` times only those m)
//! The weights (≈ 12–25 MB per shape) do not fit the caches of a small machine, so GEMV is read-bound on
//! one thread only where the kernel is fast enough.

use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::quant::{QuantFormat, QuantWeight};
use qwen3vl_kernels::Kernels;

mod cpu_time;
use cpu_time::best_seconds as best;

fn main() {
    let k1 = Kernels::detect().unwrap().with_threads(1);
    println!("isa {:?}, 1 thread, CPU time", k1.isa());
    let shapes: Vec<(usize, usize)> = {
        let args: Vec<String> = std::env::args().skip(1).collect();
        if args.is_empty() {
            vec![(6144, 2048), (2048, 6144)]
        } else {
            args.iter()
                .map(|a| {
                    let v: Vec<usize> = a.split(',').map(|x| x.parse().expect("n,k")).collect();
                    (v[0], v[1])
                })
                .collect()
        }
    };
    // QUANT_CPU_M=1,4 times those m only
    let ms: Vec<usize> = std::env::var("QUANT_CPU_M").map_or(vec![1, 4, 8, 64], |v| {
        v.split(',')
            .map(|x| x.parse().expect("QUANT_CPU_M"))
            .collect()
    });
    for &(n, kk) in &shapes {
        let w: Vec<u16> = (0..n * kk)
            .map(|i| (((i as u32).wrapping_mul(2654435761) >> 20) as u16 & 0x7f) | 0x3c00)
            .collect();
        for f in QuantFormat::ALL {
            let q: QuantWeight = k1.quantize_weight(f, Weight::Bf16(&w), n, kk).unwrap();
            for &m in &ms {
                let x: Vec<f32> = (0..m * kk)
                    .map(|i| ((i % 97) as f32 - 48.0) / 50.0)
                    .collect();
                let mut y = vec![0f32; m * n];
                for qk in k1.quant_kernels() {
                    if f == QuantFormat::Q8 && qk != k1.quant_kernel() && m <= 8 {
                        continue; // q8 decode runs the same code in every kernel of a level
                    }
                    let t = best(0.3, &mut || {
                        k1.matmul_quant_with(qk, &x, m, &q, None, &mut y).unwrap()
                    });
                    if m <= 8 {
                        println!(
                            "{f} {qk} m {m} k {kk} n {n}: {:.3} ms, {:.1} GB/s of weights",
                            t * 1e3,
                            q.bytes() as f64 / t / 1e9
                        );
                    } else {
                        println!(
                            "{f} {qk} m {m} k {kk} n {n}: {:.3} ms, {:.0} GOP/s",
                            t * 1e3,
                            2.0 * (m * n * kk) as f64 / t / 1e9
                        );
                        // the int8-activation form over column panels (the `Fast` path without AMX)
                        if k1.matmul_quant_a8_with(qk, &x, m, &q, None, &mut y).is_ok() {
                            let t = best(0.3, &mut || {
                                k1.matmul_quant_a8_with(qk, &x, m, &q, None, &mut y)
                                    .unwrap()
                            });
                            println!(
                                "{f} {qk} panels, int8 x, m {m} k {kk} n {n}: {:.3} ms, {:.0} GOP/s",
                                t * 1e3,
                                2.0 * (m * n * kk) as f64 / t / 1e9
                            );
                        }
                    }
                }
            }
        }
    }
}
