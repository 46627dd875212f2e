//! Matmul against an f64 naive reference, for every ISA level on the host, both paths, packed and unpacked,
//! bf16 and f32 weights, with and without bias, on 1 and 2 threads.
//!
//! Error bounds asserted (per output, with S = Σ_k |x_k·w_k| + |b| computed in f64):
//! - Exact path: |y - y_ref| ≤ 2(k+2)·2⁻²⁴·S — f32 accumulation in any order, one or two roundings per
//!   multiply-add (SSE4.1 has no FMA), plus the bias add.
//! - Fast path with `vdpbf16ps` (AVX-512 + AVX512_BF16, bf16 weights): x is rounded to bf16, relative
//!   error ≤ 2⁻⁸ per element (8 significant bits), so |y - y_ref| ≤ (2⁻⁸ + 2(k+2)·2⁻²⁴)·S. Elsewhere Fast runs the exact path and
//!   must meet the exact bound.

use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::matmul::{MatmulPath, Weight};
use qwen3vl_kernels::{KernelError, Kernels};

const U: f64 = 1.0 / (1u64 << 24) as f64;

struct Rng(u64);
impl Rng {
    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

fn bf16(x: f32) -> u16 {
    // round to nearest even (inputs are finite)
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

struct Case {
    m: usize,
    n: usize,
    k: usize,
    x: Vec<f32>,
    w_bf16: Vec<u16>,
    w_f32: Vec<f32>,
    bias: Vec<f32>,
}

/// (reference without bias, Σ|x·w|), each (m, n), in f64, for the weights given as f64 rows.
/// Threaded over rows of x; 4 partial sums per dot product (f64, so the order does not matter here).
fn reference(c: &Case, w: &(dyn Fn(usize) -> f64 + Sync)) -> (Vec<f64>, Vec<f64>) {
    let (m, n, k) = (c.m, c.n, c.k);
    let mut y = vec![0f64; m * n];
    let mut s = vec![0f64; m * n];
    if m * n == 0 {
        return (y, s);
    }
    // W widened to f64 once: (n, k)
    let wd: Vec<f64> = (0..n * k).map(w).collect();
    let threads = 2;
    let rows_per = m.div_ceil(threads);
    std::thread::scope(|sc| {
        for (t, (ych, sch)) in y
            .chunks_mut(rows_per * n)
            .zip(s.chunks_mut(rows_per * n))
            .enumerate()
        {
            let wd = &wd;
            sc.spawn(move || {
                for (li, (yr, sr)) in ych.chunks_mut(n).zip(sch.chunks_mut(n)).enumerate() {
                    let i = t * rows_per + li;
                    let xr: Vec<f64> = c.x[i * k..(i + 1) * k].iter().map(|&v| v as f64).collect();
                    for r in 0..n {
                        let wr = &wd[r * k..(r + 1) * k];
                        let (mut acc, mut mag) = ([0f64; 4], [0f64; 4]);
                        let mut kk = 0;
                        while kk + 4 <= k {
                            for j in 0..4 {
                                let p = xr[kk + j] * wr[kk + j];
                                acc[j] += p;
                                mag[j] += p.abs();
                            }
                            kk += 4;
                        }
                        for t in kk..k {
                            let p = xr[t] * wr[t];
                            acc[0] += p;
                            mag[0] += p.abs();
                        }
                        yr[r] = acc.iter().sum();
                        sr[r] = mag.iter().sum();
                    }
                }
            });
        }
    });
    (y, s)
}

fn make(m: usize, k: usize, n: usize, seed: u64) -> Case {
    let mut rng = Rng(seed);
    let x = (0..m * k).map(|_| rng.next()).collect();
    let w_f32: Vec<f32> = (0..n * k).map(|_| rng.next() * 0.5).collect();
    let w_bf16 = w_f32.iter().map(|&v| bf16(v)).collect();
    let bias = (0..n).map(|_| rng.next()).collect();
    Case {
        m,
        n,
        k,
        x,
        w_bf16,
        w_f32,
        bias,
    }
}

/// Whether a `Fast` matmul on bf16 weights may round x to bf16 (the bf16 dot product, or AMX tiles from
/// `AMX_MIN_M` rows).
fn uses_bf16_dot(kern: &Kernels) -> bool {
    kern.bf16_dot() || kern.amx()
}

#[allow(clippy::too_many_arguments)]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(err <= tol)` also fails on NaN
fn check(
    label: &str,
    c: &Case,
    y: &[f32],
    yref: &[f64],
    mag: &[f64],
    bias: bool,
    fast_bound: bool,
) {
    let rel = if fast_bound {
        1.0 / 256.0 + 2.0 * (c.k as f64 + 2.0) * U
    } else {
        2.0 * (c.k as f64 + 2.0) * U
    };
    let mut worst = (0f64, 0usize);
    let mut bad = Vec::new();
    for idx in 0..c.m * c.n {
        let b = if bias { c.bias[idx % c.n] as f64 } else { 0.0 };
        let want = yref[idx] + b;
        let tol = rel * (mag[idx] + b.abs()) + 1e-30;
        let err = (y[idx] as f64 - want).abs();
        if !(err <= tol) {
            bad.push((idx / c.n, idx % c.n, y[idx], want, tol));
        }
        if err > worst.0 || err.is_nan() {
            worst = (err, idx);
        }
    }
    assert!(
        bad.is_empty(),
        "{label} (m={}, k={}, n={}): {} outputs out of bound; max abs err {:e} at ({}, {}); first (row, col, got, want, tol): {:?}",
        c.m,
        c.k,
        c.n,
        bad.len(),
        worst.0,
        worst.1 / c.n.max(1),
        worst.1 % c.n.max(1),
        &bad[..bad.len().min(4)]
    );
}

fn run_shape(m: usize, k: usize, n: usize, big: bool) {
    let c = make(m, k, n, (m * 31 + k * 7 + n) as u64);
    let (ref_b, mag_b) = reference(&c, &|i| widen(c.w_bf16[i]) as f64);
    let (ref_f, mag_f) = reference(&c, &|i| c.w_f32[i] as f64);
    let mut combo = 0usize;
    let mut runs = 0usize;
    for base in Kernels::test_variants() {
        for path in [MatmulPath::Exact, MatmulPath::Fast] {
            for bf in [true, false] {
                for packed in [true, false] {
                    combo += 1;
                    for threads in [1usize, 2] {
                        for bias in [false, true] {
                            // On the large shape, one (threads, bias) combination per configuration,
                            // alternating; the scalar level (plain loops) and SSE4.1 once each.
                            if big {
                                if threads != 1 + combo % 2 || bias != (combo % 4 < 2) {
                                    continue;
                                }
                                if base.isa() <= Isa::Sse41
                                    && (path == MatmulPath::Fast || packed || !bf)
                                {
                                    continue;
                                }
                            }
                            let kern = base.with_threads(threads);
                            let w = if bf {
                                Weight::Bf16(&c.w_bf16)
                            } else {
                                Weight::F32(&c.w_f32)
                            };
                            let b = bias.then_some(&c.bias[..]);
                            let mut y = vec![f32::NAN; m * n];
                            if packed {
                                let p = kern.pack_weight(w, n, k).unwrap();
                                assert_eq!((p.n(), p.k()), (n, k));
                                kern.matmul(&c.x, m, &p, b, &mut y, path).unwrap();
                            } else {
                                kern.matmul_unpacked(&c.x, m, w, n, k, b, &mut y, path)
                                    .unwrap();
                            }
                            let label = format!(
                                "{} {path:?} {} {} threads={threads} bias={bias}",
                                kern.isa(),
                                if bf { "bf16" } else { "f32" },
                                if packed { "packed" } else { "unpacked" },
                            );
                            let fast = path == MatmulPath::Fast && bf && uses_bf16_dot(&kern);
                            let (yr, mg) = if bf {
                                (&ref_b, &mag_b)
                            } else {
                                (&ref_f, &mag_f)
                            };
                            check(&label, &c, &y, yr, mg, bias, fast);
                            runs += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(runs >= Kernels::test_variants().len(), "{runs} runs");
}

#[test]
fn empty_shapes() {
    run_shape(0, 8, 5, false);
    run_shape(3, 0, 5, false);
    run_shape(3, 4, 0, false);
}

#[test]
fn small_shapes() {
    run_shape(1, 1, 1, false);
    run_shape(1, 17, 33, false);
    run_shape(2, 64, 70, false);
    run_shape(5, 33, 129, false);
    run_shape(9, 31, 17, false);
    // every remainder of the 6-row (bf16 dot) and 4-row (exact) register tiles
    run_shape(4, 40, 100, false);
    run_shape(10, 40, 100, false);
    run_shape(11, 40, 100, false);
    // the 5-to-8-row tile of batched decode, odd and even k
    run_shape(6, 35, 40, false);
    run_shape(8, 64, 33, false);
    run_shape(13, 17, 50, false);
    // the last row count of AMX's streaming form (one A tile) and the first of its 32-row blocks
    run_shape(16, 1023, 65, false);
    run_shape(17, 1023, 65, false);
}

/// Batched rows give each row the bits it gets alone (exact path, packed bf16, with and without the
/// SwiGLU epilogue): the 5-to-8-row tile sums the same products in the same order as a 1-row tile.
#[test]
fn batched_rows_match_single_rows_bit_for_bit() {
    for kern in Kernels::test_variants() {
        for (m, k, n) in [
            (5usize, 33usize, 40usize),
            (8, 64, 33),
            (7, 18, 17),
            (12, 9, 70),
        ] {
            let c = make(m, k, n, (m * 131 + k) as u64);
            let w = kern.pack_weight(Weight::Bf16(&c.w_bf16), n, k).unwrap();
            let half = n / 2;
            let sw = kern
                .pack_swiglu(
                    Weight::Bf16(&c.w_bf16[..half * k]),
                    Weight::Bf16(&c.w_bf16[half * k..2 * half * k]),
                    half,
                    k,
                )
                .unwrap();
            for (p, cols) in [(&w, n), (&sw, half)] {
                let bias = (!p.is_swiglu()).then_some(&c.bias[..]);
                let mut all = vec![0f32; m * cols];
                kern.matmul(&c.x, m, p, bias, &mut all, MatmulPath::Exact)
                    .unwrap();
                for i in 0..m {
                    let mut one = vec![0f32; cols];
                    kern.matmul(
                        &c.x[i * k..(i + 1) * k],
                        1,
                        p,
                        bias,
                        &mut one,
                        MatmulPath::Exact,
                    )
                    .unwrap();
                    let a: Vec<u32> = all[i * cols..(i + 1) * cols]
                        .iter()
                        .map(|v| v.to_bits())
                        .collect();
                    let b: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
                    assert_eq!(
                        a,
                        b,
                        "{} m={m} k={k} n={n} row {i} swiglu={}",
                        kern.isa(),
                        p.is_swiglu()
                    );
                }
            }
        }
    }
}

/// Shapes around the AMX tiles (16 rows, 32 values of k, 16-column tiles of 64-column groups): row counts
/// 16, 17, 31, 33, 65; k below, at and past one tile step, odd; partial groups and tiles.
#[test]
fn tile_shapes() {
    run_shape(16, 31, 17, false);
    run_shape(17, 35, 130, false);
    run_shape(31, 1, 64, false);
    run_shape(33, 32, 15, false);
    run_shape(65, 97, 200, false);
    run_shape(17, 1023, 17, false);
}

#[test]
fn tall_k() {
    run_shape(7, 4096, 1, false);
}

#[test]
fn medium_shape() {
    run_shape(63, 64, 65, false);
}

#[test]
fn large_shape() {
    run_shape(300, 1000, 1300, true);
}

/// The exact path on bf16 weights gives the same result as on the same weights widened to f32.
#[test]
fn exact_bf16_matches_widened_f32_closely() {
    let c = make(6, 300, 70, 5);
    let wf: Vec<f32> = c.w_bf16.iter().map(|&b| widen(b)).collect();
    for kern in Kernels::test_variants() {
        let mut y1 = vec![0.0; 6 * 70];
        let mut y2 = vec![0.0; 6 * 70];
        let p1 = kern.pack_weight(Weight::Bf16(&c.w_bf16), 70, 300).unwrap();
        let p2 = kern.pack_weight(Weight::F32(&wf), 70, 300).unwrap();
        kern.matmul(&c.x, 6, &p1, None, &mut y1, MatmulPath::Exact)
            .unwrap();
        kern.matmul(&c.x, 6, &p2, None, &mut y2, MatmulPath::Exact)
            .unwrap();
        assert_eq!(p1.bytes() * 2, p2.bytes(), "{}", kern.isa());
        for (a, b) in y1.iter().zip(&y2) {
            assert!(
                (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                "{}: {a} vs {b}",
                kern.isa()
            );
        }
    }
}

/// A NaN in a row of x makes that row of y NaN and leaves the others finite.
#[test]
fn nan_propagates_per_row() {
    // 5 rows: the vector kernels; 33 rows × 130 outputs: AMX where present (a full 32-row block written
    // straight from the tiles, whole and partial groups, and a last row through the epilogue)
    for (m, n) in [(5usize, 37usize), (33, 130)] {
        let k = 40;
        let mut c = make(m, k, n, 9);
        c.x[2 * k + 3] = f32::NAN;
        for kern in Kernels::test_variants() {
            for path in [MatmulPath::Exact, MatmulPath::Fast] {
                let p = kern.pack_weight(Weight::Bf16(&c.w_bf16), n, k).unwrap();
                let mut y1 = vec![0.0; m * n];
                let mut y2 = vec![0.0; m * n];
                kern.matmul(&c.x, m, &p, None, &mut y1, path).unwrap();
                kern.matmul_unpacked(&c.x, m, Weight::Bf16(&c.w_bf16), n, k, None, &mut y2, path)
                    .unwrap();
                for y in [&y1, &y2] {
                    for (i, row) in y.chunks(n).enumerate() {
                        assert!(
                            row.iter().all(|v| v.is_nan() == (i == 2)),
                            "{} amx={} {path:?} m={m} row {i}: {row:?}",
                            kern.isa(),
                            kern.amx()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn bad_lengths_are_errors() {
    let k = Kernels::detect().unwrap();
    let w = vec![0u16; 6 * 4];
    let x = vec![0f32; 2 * 4];
    let mut y = vec![0f32; 2 * 6];
    let e = |r: Result<(), KernelError>| matches!(r, Err(KernelError::Len { .. }));
    let path = MatmulPath::Exact;
    assert!(e(k.matmul_unpacked(
        &x[..7],
        2,
        Weight::Bf16(&w),
        6,
        4,
        None,
        &mut y,
        path
    )));
    assert!(e(k.matmul_unpacked(
        &x,
        2,
        Weight::Bf16(&w[..23]),
        6,
        4,
        None,
        &mut y,
        path
    )));
    assert!(e(k.matmul_unpacked(
        &x,
        2,
        Weight::Bf16(&w),
        6,
        4,
        None,
        &mut y[..11],
        path
    )));
    assert!(e(k.matmul_unpacked(
        &x,
        2,
        Weight::Bf16(&w),
        6,
        4,
        Some(&[0.0; 5]),
        &mut y,
        path
    )));
    assert!(matches!(
        k.pack_weight(Weight::F32(&[0.0; 5]), 2, 3),
        Err(KernelError::Len { .. })
    ));
    let p = k.pack_weight(Weight::Bf16(&w), 6, 4).unwrap();
    assert!(e(k.matmul(&x, 3, &p, None, &mut y, path)));
    assert!(e(k.matmul(&x, 2, &p, Some(&[0.0; 7]), &mut y, path)));
    let err = k.matmul(&x, 2, &p, None, &mut y[..3], path).unwrap_err();
    assert!(
        err.to_string().contains("matmul") && err.to_string().contains('y'),
        "{err}"
    );
    // Overflowing sizes are errors, not panics.
    assert!(k
        .matmul_unpacked(&x, usize::MAX, Weight::Bf16(&w), 6, 4, None, &mut y, path)
        .is_err());
    // A weight packed for another level is rejected.
    let all = Kernels::test_variants();
    if all.len() > 1 {
        let other = all[0].pack_weight(Weight::Bf16(&w), 6, 4).unwrap();
        let r = all[all.len() - 1].matmul(&x, 2, &other, None, &mut y, path);
        assert!(matches!(r, Err(KernelError::Invalid { .. })), "{r:?}");
    }
}

/// Packing stacked parts (awkward row splits, bf16, f32 and mixed) holds exactly the rows of the
/// concatenated weight, and multiplies bit for bit like it, at every level.
#[test]
fn pack_parts_matches_concatenation() {
    let (k, n) = (37usize, 150usize);
    let c = make(5, k, n, 21);
    let wf: Vec<f32> = c.w_bf16.iter().map(|&b| widen(b)).collect();
    for kern in Kernels::test_variants() {
        for splits in [
            &[150usize][..],
            &[1, 149],
            &[17, 64, 69],
            &[64, 0, 86],
            &[3, 5, 7, 135],
        ] {
            for dtypes in 0..3 {
                // 0: all bf16, 1: all f32, 2: alternating (packed as f32)
                let mut parts = Vec::new();
                let mut r = 0;
                for (pi, &rows) in splits.iter().enumerate() {
                    let range = r * k..(r + rows) * k;
                    let bf = dtypes == 0 || (dtypes == 2 && pi % 2 == 0);
                    parts.push(if bf {
                        Weight::Bf16(&c.w_bf16[range])
                    } else {
                        Weight::F32(&wf[range])
                    });
                    r += rows;
                }
                let label = format!("{} splits {splits:?} dtypes {dtypes}", kern.isa());
                let all_bf16 = parts.iter().all(|w| matches!(w, Weight::Bf16(_)));
                let p = kern.pack_weight_parts(&parts, n, k).unwrap();
                let whole = if all_bf16 {
                    kern.pack_weight(Weight::Bf16(&c.w_bf16), n, k).unwrap()
                } else {
                    kern.pack_weight(Weight::F32(&wf), n, k).unwrap()
                };
                assert_eq!(p.is_bf16(), all_bf16, "{label}");
                assert_eq!(p.bytes(), whole.bytes(), "{label}");
                let mut row = vec![0f32; k];
                for r in 0..n {
                    p.row_f32(r, &mut row).unwrap();
                    assert_eq!(row[..], wf[r * k..(r + 1) * k], "{label} row {r}");
                }
                let (mut y1, mut y2) = (vec![0f32; 5 * n], vec![1f32; 5 * n]);
                kern.matmul(&c.x, 5, &p, None, &mut y1, MatmulPath::Exact)
                    .unwrap();
                kern.matmul(&c.x, 5, &whole, None, &mut y2, MatmulPath::Exact)
                    .unwrap();
                assert!(
                    y1.iter().zip(&y2).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{label}"
                );
            }
        }
    }
}

/// The incremental packer rejects parts that do not fit and an unfinished weight; `row_f32` checks its
/// arguments.
#[test]
fn packer_errors() {
    let k = Kernels::detect().unwrap();
    let w = vec![0u16; 6 * 4];
    let mut p = k.weight_packer(6, 4, true).unwrap();
    assert!(matches!(
        p.push(Weight::Bf16(&w[..7]), 2),
        Err(KernelError::Len { .. })
    ));
    assert!(p.push(Weight::F32(&[0.0; 8]), 2).is_err(), "f32 into bf16");
    p.push(Weight::Bf16(&w[..8]), 2).unwrap();
    assert!(p.push(Weight::Bf16(&w[..20]), 5).is_err(), "past n");
    let e = p.finish().unwrap_err().to_string();
    assert!(e.contains("pack_weight") && e.contains("2 rows"), "{e}");
    assert!(k
        .pack_weight_parts(&[Weight::Bf16(&w[..8]), Weight::Bf16(&w[..8])], 6, 4)
        .is_err());
    let p = k.pack_weight(Weight::Bf16(&w), 6, 4).unwrap();
    assert!(p.row_f32(6, &mut [0.0; 4]).is_err());
    assert!(p.row_f32(0, &mut [0.0; 3]).is_err());
    // A weight of 2 MiB or more gets its own huge-page-advised mapping on Linux.
    let big = k.pack_weight(Weight::Bf16(&vec![0u16; 1024 * 1024]), 1024, 1024);
    assert_eq!(big.unwrap().huge_pages_advised(), cfg!(target_os = "linux"));
    assert!(!p.huge_pages_advised());
}

/// act = silu(x·gateᵀ)·(x·upᵀ) from the SwiGLU epilogue equals, bit for bit, the unfused [gate; up]
/// matmul followed by the `swiglu` op, at every level, both paths, bf16 and f32, 1 and 2 threads, on
/// I not a multiple of G/2, odd k and every remainder of the register tiles; special values included.
#[test]
fn swiglu_epilogue_matches_unfused() {
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let mut runs = 0;
    for (i_out, k, seed) in [
        (1usize, 1usize, 1u64),
        (7, 37, 2),
        (31, 64, 3),
        (33, 37, 4),
        (100, 5, 5),
        (200, 64, 6),
    ] {
        let ms = [1usize, 2, 15, 17, 33];
        let mmax = 33;
        let mut c = make(mmax, k, 2 * i_out, seed);
        // special values in a few rows of x: NaN, ±inf, huge (sums overflow), tiny
        c.x[2 * k] = f32::NAN;
        c.x[3 * k] = f32::INFINITY;
        c.x[4 * k] = f32::NEG_INFINITY;
        for v in &mut c.x[5 * k..6 * k] {
            *v *= 1e37;
        }
        for v in &mut c.x[6 * k..7 * k] {
            *v *= 1e-38;
        }
        let wf: Vec<f32> = c.w_bf16.iter().map(|&b| widen(b)).collect();
        let half = i_out * k;
        for base in Kernels::test_variants() {
            for threads in [1usize, 2] {
                let kern = base.with_threads(threads);
                for bf in [true, false] {
                    let (gate, up, both) = if bf {
                        (
                            Weight::Bf16(&c.w_bf16[..half]),
                            Weight::Bf16(&c.w_bf16[half..]),
                            Weight::Bf16(&c.w_bf16[..]),
                        )
                    } else {
                        (
                            Weight::F32(&wf[..half]),
                            Weight::F32(&wf[half..]),
                            Weight::F32(&wf[..]),
                        )
                    };
                    let fused = kern.pack_swiglu(gate, up, i_out, k).unwrap();
                    assert!(fused.is_swiglu());
                    assert_eq!((fused.n(), fused.k(), fused.is_bf16()), (i_out, k, bf));
                    let plain = kern.pack_weight(both, 2 * i_out, k).unwrap();
                    for path in [MatmulPath::Exact, MatmulPath::Fast] {
                        for &m in &ms {
                            let x = &c.x[..m * k];
                            let mut gu = vec![0f32; m * 2 * i_out];
                            kern.matmul(x, m, &plain, None, &mut gu, path).unwrap();
                            let mut want = vec![0f32; m * i_out];
                            for (g, o) in gu.chunks(2 * i_out).zip(want.chunks_mut(i_out)) {
                                kern.swiglu(&g[..i_out], &g[i_out..], o).unwrap();
                            }
                            let mut got = vec![-7f32; m * i_out];
                            kern.matmul(x, m, &fused, None, &mut got, path).unwrap();
                            let bad: Vec<_> = (0..m * i_out)
                                .filter(|&t| !same(got[t], want[t]))
                                .map(|t| (t / i_out, t % i_out, got[t], want[t]))
                                .take(4)
                                .collect();
                            assert!(
                                bad.is_empty(),
                                "{} threads={threads} {} {path:?} m={m} k={k} I={i_out}: first (row, col, got, want): {bad:?}",
                                kern.isa(),
                                if bf { "bf16" } else { "f32" }
                            );
                            runs += 1;
                        }
                    }
                }
            }
        }
    }
    assert!(runs >= 6 * 5 * 2 * 2 * 2);
}

/// A SwiGLU pair: mismatched lengths, a bias, and rows read back are errors.
#[test]
fn swiglu_pair_errors() {
    let k = Kernels::detect().unwrap();
    let w = [0u16; 6 * 4];
    assert!(matches!(
        k.pack_swiglu(Weight::Bf16(&w[..12]), Weight::Bf16(&w[..11]), 3, 4),
        Err(KernelError::Len { .. })
    ));
    let p = k
        .pack_swiglu(Weight::Bf16(&w[..12]), Weight::Bf16(&w[12..]), 3, 4)
        .unwrap();
    let x = [0f32; 2 * 4];
    let mut y = [0f32; 2 * 3];
    assert!(k
        .matmul(&x, 2, &p, Some(&[0.0; 3]), &mut y, MatmulPath::Exact)
        .is_err());
    assert!(matches!(
        k.matmul(&x, 2, &p, None, &mut [0f32; 2 * 6], MatmulPath::Exact),
        Err(KernelError::Len { .. })
    ));
    k.matmul(&x, 2, &p, None, &mut y, MatmulPath::Exact)
        .unwrap();
    assert!(p.row_f32(0, &mut [0.0; 4]).is_err());
    let mut pk = k.swiglu_packer(3, 4, true).unwrap();
    pk.push(Weight::Bf16(&w[..12]), 3).unwrap();
    assert!(pk.finish().is_err(), "up rows missing");
}

/// k = 0 (no input features): packers take the row counts as given, and the matmul writes the bias (or
/// silu(0)·0 = 0 for a SwiGLU pair).
#[test]
fn zero_input_features() {
    for kern in Kernels::test_variants() {
        let p = kern
            .pack_swiglu(Weight::Bf16(&[]), Weight::Bf16(&[]), 3, 0)
            .unwrap();
        assert_eq!((p.n(), p.k()), (3, 0));
        let mut y = [7f32; 2 * 3];
        kern.matmul(&[], 2, &p, None, &mut y, MatmulPath::Exact)
            .unwrap();
        assert_eq!(y, [0.0; 6], "{}", kern.isa());
        let mut pk = kern.weight_packer(5, 0, false).unwrap();
        pk.push(Weight::F32(&[]), 2).unwrap();
        pk.push(Weight::F32(&[]), 3).unwrap();
        let p = pk.finish().unwrap();
        let mut y = [7f32; 5];
        let bias = [1.0, 2.0, 3.0, 4.0, 5.0];
        kern.matmul(&[], 1, &p, Some(&bias), &mut y, MatmulPath::Fast)
            .unwrap();
        assert_eq!(y, bias, "{}", kern.isa());
    }
}

/// The cache-blocked GEMM (AVX2 and SSE4.1 from 16 rows of x: row blocks of 168, k blocks of 256, chunks
/// of 8 column groups) sums every output in the same order as the direct kernel that one-row calls run:
/// bit for bit the same rows, at every level, bf16 and f32, plain (with bias) and SwiGLU pairs, 1 and 2
/// threads; on shapes crossing every block boundary (m > 168 with a remainder of the 6-row tile, k over
/// several blocks and odd, k = 0, partial last groups, more groups than a chunk), with special values.
#[test]
fn blocked_gemm_matches_row_by_row() {
    let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
    let mut runs = 0;
    for (m, k, n, seed) in [
        (173usize, 517usize, 150usize, 11u64),
        (16, 256, 17, 12),
        (40, 1, 33, 13),
        (23, 0, 40, 14),
        (31, 600, 290, 15),
    ] {
        let mut c = make(m, k, n, seed);
        if k > 0 {
            // NaN, ±inf, huge and tiny rows of x
            c.x[2 * k] = f32::NAN;
            c.x[3 * k + k / 2] = f32::INFINITY;
            c.x[4 * k] = f32::NEG_INFINITY;
            for v in &mut c.x[5 * k..6 * k] {
                *v *= 1e37;
            }
            for v in &mut c.x[7 * k..8 * k] {
                *v *= 1e-38;
            }
        }
        let wf: Vec<f32> = c.w_bf16.iter().map(|&b| widen(b)).collect();
        for base in Kernels::test_variants() {
            for threads in [1usize, 2] {
                let kern = base.with_threads(threads);
                for bf in [true, false] {
                    let w = if bf {
                        Weight::Bf16(&c.w_bf16)
                    } else {
                        Weight::F32(&wf)
                    };
                    let plain = kern.pack_weight(w, n, k).unwrap();
                    let (gate, up) = match w {
                        Weight::Bf16(v) => (
                            Weight::Bf16(&v[..n / 2 * k]),
                            Weight::Bf16(&v[n / 2 * k..n / 2 * 2 * k]),
                        ),
                        Weight::F32(v) => (
                            Weight::F32(&v[..n / 2 * k]),
                            Weight::F32(&v[n / 2 * k..n / 2 * 2 * k]),
                        ),
                    };
                    let pair = kern.pack_swiglu(gate, up, n / 2, k).unwrap();
                    for (p, bias) in [(&plain, Some(&c.bias[..])), (&pair, None)] {
                        let no = p.n();
                        let path = MatmulPath::Exact;
                        let mut all = vec![-7f32; m * no];
                        kern.matmul(&c.x, m, p, bias, &mut all, path).unwrap();
                        let mut row = vec![-7f32; no];
                        for i in 0..m {
                            kern.matmul(&c.x[i * k..(i + 1) * k], 1, p, bias, &mut row, path)
                                .unwrap();
                            let bad: Vec<_> = (0..no)
                                .filter(|&r| !same(all[i * no + r], row[r]))
                                .map(|r| (r, all[i * no + r], row[r]))
                                .take(4)
                                .collect();
                            assert!(
                                bad.is_empty(),
                                "{} threads={threads} {} swiglu={} m={m} k={k} n={no} row {i}: (col, all rows, one row): {bad:?}",
                                kern.isa(),
                                if bf { "bf16" } else { "f32" },
                                p.is_swiglu()
                            );
                        }
                        runs += 1;
                    }
                }
            }
        }
    }
    assert!(runs >= 5 * 2 * 2 * 2 * Kernels::test_variants().len());
}
