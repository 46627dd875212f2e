//! `qwen3vl bench roofline` and `qwen3vl bench matmul [--json]`: this machine's measured limits, and the
//! matmul kernels on Qwen3-VL-2B shapes reported against them (GEMV: GB/s ÷ all-thread read bandwidth;
//! GEMM: GFLOP/s ÷ the peak of the arithmetic used, bf16 dot product for the fast path, f32 FMA for exact).

use anyhow::Result;
use qwen3vl_kernels::matmul::{MatmulPath, PackedWeight, Weight};
use qwen3vl_kernels::quant::{QuantFormat, QuantWeight};
use qwen3vl_kernels::roofline::{self, Roofline};
use qwen3vl_kernels::Kernels;
use serde_json::json;
use std::time::Instant;

/// The 1-minute load average (the machine may be shared; reported with every figure).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn roofline_json(r: &Roofline) -> serde_json::Value {
    json!({
        "threads": r.threads,
        "read_gbps": r.read_gbps,
        "read_gbps_1t": r.read_gbps_1t,
        "fma_gflops": r.fma_gflops,
        "bf16_gflops": r.bf16_gflops,
        "amx_gflops": r.amx_gflops,
    })
}

fn print_roofline(k: &Kernels, r: &Roofline) {
    println!(
        "roofline ({} threads, {}; load {:.2})",
        r.threads,
        k.isa(),
        load_average().unwrap_or(f64::NAN)
    );
    println!("  read bandwidth, 1 thread    {:8.1} GB/s", r.read_gbps_1t);
    println!(
        "  read bandwidth, {} threads   {:8.1} GB/s",
        r.threads, r.read_gbps
    );
    println!("  f32 FMA peak                {:8.1} GFLOP/s", r.fma_gflops);
    match r.bf16_gflops {
        Some(g) => println!("  bf16 dot-product peak       {g:8.1} GFLOP/s"),
        None => println!("  bf16 dot-product peak            n/a (no AVX512_BF16)"),
    }
    if let Some(g) = r.amx_gflops {
        println!("  AMX tdpbf16ps peak          {g:8.1} GFLOP/s");
    }
}

/// `qwen3vl bench roofline [--json]`
pub fn roofline(json: bool) -> Result<()> {
    let k = Kernels::detect()?;
    let r = roofline::measure(&k);
    if json {
        let mut v = roofline_json(&r);
        v["isa"] = json!(k.isa().name());
        v["load"] = json!(load_average());
        println!("{v}");
    } else {
        print_roofline(&k, &r);
    }
    Ok(())
}

/// Seconds of one read of the memory a benchmark streams.
type ReadSeconds<'a> = dyn Fn(&Kernels) -> f64 + 'a;

/// Smallest time of `f` over at least 5 runs and ~`secs` seconds (after one warm-up run): on a shared
/// machine the best run is the one least disturbed by the neighbours. With `probe` (the bytes `f`
/// streams, and the seconds of one read of them), its runs alternate with probes and the best probe
/// bandwidth of the same time window is returned too, so a memory-bound kernel's share of the limit
/// compares like with like on a machine whose free bandwidth changes within seconds.
fn best_time(
    k: &Kernels,
    secs: f64,
    probe: Option<(f64, &ReadSeconds<'_>)>,
    mut f: impl FnMut(),
) -> (f64, Option<f64>) {
    f();
    let start = Instant::now();
    let (mut best, mut best_probe, mut runs) = (f64::INFINITY, f64::INFINITY, 0);
    while runs < 5 || start.elapsed().as_secs_f64() < secs {
        if let Some((_, read)) = probe {
            best_probe = best_probe.min(read(k));
        }
        let t0 = Instant::now();
        f();
        best = best.min(t0.elapsed().as_secs_f64());
        runs += 1;
    }
    (best, probe.map(|(bytes, _)| bytes / best_probe / 1e9))
}

struct Shape {
    kind: &'static str,
    m: usize,
    k: usize,
    n: usize,
}

const SHAPES: [Shape; 10] = [
    Shape {
        kind: "gemv",
        m: 1,
        k: 2048,
        n: 6144,
    },
    Shape {
        kind: "gemv",
        m: 1,
        k: 2048,
        n: 2048,
    },
    Shape {
        kind: "gemv",
        m: 1,
        k: 2048,
        n: 1024,
    },
    Shape {
        kind: "gemv",
        m: 1,
        k: 2048,
        n: 151936,
    },
    Shape {
        kind: "gemv",
        m: 1,
        k: 6144,
        n: 2048,
    },
    Shape {
        kind: "gemm",
        m: 512,
        k: 2048,
        n: 6144,
    },
    Shape {
        kind: "gemm",
        m: 512,
        k: 6144,
        n: 2048,
    },
    Shape {
        kind: "gemm",
        m: 1200,
        k: 1024,
        n: 3072,
    },
    Shape {
        kind: "gemm",
        m: 1200,
        k: 1024,
        n: 4096,
    },
    Shape {
        kind: "gemm",
        m: 1200,
        k: 4096,
        n: 1024,
    },
];

/// A GEMV is timed over a round of copies of its weight totalling at least this many bytes, so that every
/// call reads its weight from memory (as in a decode step) and not from the 32 MiB L3; the time per call
/// is the best round's average (a single best call would favour the best-placed copy).
const GEMV_FOOTPRINT: usize = 160 << 20;

fn to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|&v| qwen3vl_kernels::scalar::bf16_from_f32(v))
        .collect()
}

/// `qwen3vl bench matmul [--json] [--threads N]`
pub fn matmul(json: bool, threads: Option<usize>) -> Result<()> {
    let mut k = Kernels::detect()?;
    if let Some(t) = threads {
        k = k.with_threads(t);
    }
    // The limits are measured before the kernels and again after them, and the higher of each pair is
    // used: on a shared machine a limit measured in a busy moment would flatter the percentages.
    let mut r = roofline::measure(&k);
    let mut rows = Vec::new();
    let mut results = Vec::new();
    if !json {
        let gemvs = SHAPES.iter().filter(|s| s.kind == "gemv").count();
        eprintln!(
            "measuring {} configurations...",
            SHAPES.len() * 3 + gemvs * 2
        );
    }
    for s in &SHAPES {
        run_shape(&k, s, &mut rows)?;
    }
    let r2 = roofline::measure(&k);
    r.read_gbps = r.read_gbps.max(r2.read_gbps);
    r.read_gbps_1t = r.read_gbps_1t.max(r2.read_gbps_1t);
    r.fma_gflops = r.fma_gflops.max(r2.fma_gflops);
    let best = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    r.bf16_gflops = best(r.bf16_gflops, r2.bf16_gflops);
    r.amx_gflops = best(r.amx_gflops, r2.amx_gflops);
    if !json {
        print_roofline(&k, &r);
        println!(
            "\n{:<5} {:>5} {:>5} {:>7} {:>5} {:>6} {:>9} {:>10} {:>8} {:>9} {:>7}",
            "kind",
            "m",
            "k",
            "n",
            "dtype",
            "path",
            "weights",
            "time µs",
            "GB/s",
            "GFLOP/s",
            "% limit"
        );
    }
    for row in &rows {
        let Row {
            kind,
            m,
            k: kk,
            n,
            dtype,
            path,
            packed,
            time,
            bytes,
            read_gbps,
        } = *row;
        let gbps = bytes / time / 1e9;
        let gflops = 2.0 * (m * n * kk) as f64 / time / 1e9;
        let fast_bf16 = path == MatmulPath::Fast && dtype == "bf16";
        let uses_amx = fast_bf16 && k.amx() && m >= qwen3vl_kernels::matmul::AMX_MIN_M;
        let uses_dot = fast_bf16 && k.bf16_dot() && r.bf16_gflops.is_some();
        let pct = if kind == "gemv" {
            100.0 * gbps / read_gbps.unwrap_or(r.read_gbps)
        } else if uses_amx {
            100.0 * gflops / r.amx_gflops.unwrap_or(f64::NAN)
        } else if uses_dot {
            100.0 * gflops / r.bf16_gflops.unwrap_or(f64::NAN)
        } else {
            100.0 * gflops / r.fma_gflops
        };
        let path_name = if path == MatmulPath::Fast {
            "fast"
        } else {
            "exact"
        };
        let form = match (QuantFormat::parse(dtype), packed) {
            (Some(_), _) => "quant",
            (None, true) => "packed",
            (None, false) => "as-is",
        };
        if !json {
            println!(
                "{:<5} {:>5} {:>5} {:>7} {:>5} {:>6} {:>9} {:>10.1} {:>8.1} {:>9.1} {:>6.1}%",
                kind,
                m,
                kk,
                n,
                dtype,
                path_name,
                form,
                time * 1e6,
                gbps,
                gflops,
                pct
            );
        }
        results.push(json!({
            "kind": kind, "m": m, "k": kk, "n": n, "dtype": dtype, "path": path_name,
            "packed": packed, "time_us": time * 1e6, "gbps": gbps, "gflops": gflops, "pct_of_limit": pct,
            "read_gbps": read_gbps,
        }));
    }
    if json {
        let v = json!({
            "isa": k.isa().name(),
            "threads": k.threads(),
            "load": load_average(),
            "roofline": roofline_json(&r),
            "results": results,
        });
        println!("{v}");
    } else {
        println!(
            "\nload average now {:.2}",
            load_average().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// One measured configuration.
#[derive(Clone, Copy)]
struct Row {
    kind: &'static str,
    m: usize,
    k: usize,
    n: usize,
    dtype: &'static str,
    path: MatmulPath,
    packed: bool,
    /// Best seconds per call.
    time: f64,
    /// Bytes a call reads and writes (weights, x, bias, y).
    bytes: f64,
    /// GEMV: best read bandwidth of its weight copies, probed between its timed runs (GB/s).
    read_gbps: Option<f64>,
}

/// Times every configuration of one shape.
fn run_shape(k: &Kernels, s: &Shape, rows: &mut Vec<Row>) -> Result<()> {
    {
        let (m, kk, n) = (s.m, s.k, s.n);
        let secs = if s.kind == "gemv" { 1.0 } else { 1.5 };
        let x = roofline::sample(m * kk, 1);
        let bias = roofline::sample(n, 2);
        let mut y = vec![0f32; m * n];
        let w32 = roofline::sample(n * kk, 3);
        let w16 = to_bf16(&w32);
        // (dtype, path, packed)
        let configs: &[(&str, MatmulPath, bool)] = if s.kind == "gemv" {
            &[
                ("bf16", MatmulPath::Exact, false),
                ("bf16", MatmulPath::Fast, true),
                ("f32", MatmulPath::Exact, false),
                ("q8", MatmulPath::Fast, true),
                ("q4", MatmulPath::Fast, true),
            ]
        } else {
            &[
                ("bf16", MatmulPath::Fast, true),
                ("bf16", MatmulPath::Exact, true),
                ("f32", MatmulPath::Exact, true),
            ]
        };
        for &(dtype, path, packed) in configs {
            let quant = QuantFormat::parse(dtype);
            let q = match quant {
                Some(f) => Some(k.quantize_weight(f, Weight::F32(&w32), n, kk)?),
                None => None,
            };
            let wbytes = match (&q, dtype) {
                (Some(q), _) => q.bytes(),
                (None, "bf16") => n * kk * 2,
                _ => n * kk * 4,
            };
            let gemv = s.kind == "gemv";
            let copies = if gemv {
                GEMV_FOOTPRINT.div_ceil(wbytes).max(1)
            } else {
                1
            };
            // GEMV: timed runs alternate with reads of the same weight copies (the limit of that window).
            let total = (wbytes * copies) as f64;
            let (time, read_gbps) = if let Some(q) = &q {
                let copy = || QuantWeight::from_parts(q.format(), n, kk, q.qs_bytes(), q.scales());
                let qs = (0..copies).map(|_| copy()).collect::<Result<Vec<_>, _>>()?;
                let read = |k: &Kernels| {
                    qs.iter()
                        .map(|q| {
                            roofline::read_seconds(k, q.qs_bytes())
                                + roofline::read_seconds(k, q.scales())
                        })
                        .sum()
                };
                best_time(k, secs, gemv.then_some((total, &read as _)), || {
                    for q in &qs {
                        k.matmul_quant_path(&x, m, q, Some(&bias), &mut y, path)
                            .unwrap();
                    }
                })
            } else if packed {
                let p = match dtype {
                    "bf16" => k.pack_weight(Weight::Bf16(&w16), n, kk)?,
                    _ => k.pack_weight(Weight::F32(&w32), n, kk)?,
                };
                let ps: Vec<PackedWeight> = (0..copies).map(|_| p.clone()).collect();
                let read = |k: &Kernels| {
                    ps.iter()
                        .map(|p| roofline::read_seconds(k, p.as_bytes()))
                        .sum()
                };
                best_time(k, secs, gemv.then_some((total, &read as _)), || {
                    for p in &ps {
                        k.matmul(&x, m, p, Some(&bias), &mut y, path).unwrap();
                    }
                })
            } else if dtype == "bf16" {
                let ws: Vec<Vec<u16>> = (0..copies).map(|_| w16.clone()).collect();
                let read = |k: &Kernels| ws.iter().map(|w| roofline::read_seconds(k, w)).sum();
                best_time(k, secs, gemv.then_some((total, &read as _)), || {
                    for w in &ws {
                        let w = Weight::Bf16(w);
                        k.matmul_unpacked(&x, m, w, n, kk, Some(&bias), &mut y, path)
                            .unwrap();
                    }
                })
            } else {
                let ws: Vec<Vec<f32>> = (0..copies).map(|_| w32.clone()).collect();
                let read = |k: &Kernels| ws.iter().map(|w| roofline::read_seconds(k, w)).sum();
                best_time(k, secs, gemv.then_some((total, &read as _)), || {
                    for w in &ws {
                        let w = Weight::F32(w);
                        k.matmul_unpacked(&x, m, w, n, kk, Some(&bias), &mut y, path)
                            .unwrap();
                    }
                })
            };
            let time = time / copies as f64;
            let bytes = (wbytes + (m * kk + m * n + n) * 4) as f64;
            rows.push(Row {
                kind: s.kind,
                m,
                k: kk,
                n,
                dtype,
                path,
                packed,
                time,
                bytes,
                read_gbps,
            });
        }
    }
    Ok(())
}
