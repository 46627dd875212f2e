//! Quantized matmul (q8 weights, int16 activations; and the W8A8 form with int8 activations): every level
//! on the host against the scalar twin and an f64 reference, and the quantizers against f64 (round-trip
//! error within the format's bound) and each level's against the scalar one.
//!
//! Bounds, per output y[i][c] = Σ_b dw·dx·s_b (s_b the exact integer dot product of block b):
//! - against the f64 value of that sum: |y − ref| ≤ (nb + 16) · 2^-24 · Σ_b dw·dx·Σ|q_w·q_x| (+ bias):
//!   the integer sums are exact at every level, only the f32 accumulation order differs;
//! - against the f64 product of the unquantized x and W: the quantization error of both operands,
//!   Σ_b (dw/2 · Σ|x| + dx/2 · Σ|w| + 32 · dw·dx/4), plus the above.

mod common;

use common::{levels, Rng};
use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::quant::{scalar, QuantFormat, QuantKernel, QuantWeight};
use qwen3vl_kernels::{KernelError, Kernels};

const B: usize = 32;

fn bf16(x: f32) -> u16 {
    // round to nearest even (finite inputs only here)
    let b = x.to_bits();
    ((b + 0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

#[test]
fn q8_quantizer_round_trip_within_half_a_step() {
    let mut rng = Rng::new(7);
    for k in [1, 2, 15, 17, 31, 32, 33, 64, 100, 1023] {
        for scale in [1e-30f32, 1e-6, 1.0, 3e4, 1e30] {
            let x: Vec<f32> = rng.vec(k, -1.0, 1.0).iter().map(|v| v * scale).collect();
            let nb = k.div_ceil(B);
            let (mut q, mut d) = (vec![99i8; nb * B], vec![0f32; nb]);
            scalar::quantize_row_q8(&x, &mut q, &mut d);
            for b in 0..nb {
                let xs = &x[b * B..((b + 1) * B).min(k)];
                let amax = xs.iter().fold(0f64, |m, v| m.max(v.abs() as f64));
                let db = d[b] as f64;
                assert!(
                    (db - amax / 127.0).abs() <= amax / 127.0 * 2f64.powi(-23),
                    "k {k} block {b}: d {db} for amax {amax}"
                );
                for i in 0..B {
                    let qi = q[b * B + i];
                    assert!((-127..=127).contains(&qi), "k {k}: q {qi} out of range");
                    match xs.get(i) {
                        None => assert_eq!(qi, 0, "k {k}: padding of block {b} not zero"),
                        Some(&v) => {
                            let err = (v as f64 - qi as f64 * db).abs();
                            assert!(
                                err <= db * (0.5 + 127.0 * 2f64.powi(-22)),
                                "k {k} scale {scale}: x {v} -> {qi}·{db}, error {err} > d/2"
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn a16_quantizer_round_trip_within_half_a_step() {
    let mut rng = Rng::new(9);
    for k in [1, 17, 32, 33, 1023] {
        for scale in [1e-30f32, 1.0, 1e30] {
            let x: Vec<f32> = rng.vec(k, -1.0, 1.0).iter().map(|v| v * scale).collect();
            let nb = k.div_ceil(B);
            let (mut q, mut d) = (vec![7i16; nb * B], vec![0f32; nb]);
            scalar::quantize_row_a16(&x, &mut q, &mut d);
            for (i, &v) in x.iter().enumerate() {
                let db = d[i / B] as f64;
                let amax = x[i / B * B..((i / B + 1) * B).min(k)]
                    .iter()
                    .fold(0f64, |m, v| m.max(v.abs() as f64));
                assert!((db - amax / 32767.0).abs() <= amax / 32767.0 * 2f64.powi(-23));
                assert!((-32767..=32767).contains(&q[i]));
                let err = (v as f64 - q[i] as f64 * db).abs();
                // half a step, plus the rounding of x·(1/d) (relative 2^-23 of up to 32767 steps)
                let tol = db * (0.5 + 32767.0 * 2f64.powi(-22));
                assert!(err <= tol, "k {k}: {v} -> {}·{db}", q[i]);
            }
            assert!(q[k..].iter().all(|&v| v == 0), "k {k}: padding not zero");
        }
    }
}

#[test]
fn q8_quantizer_special_blocks() {
    // all-zero block: d = 0, q = 0; a NaN or inf makes the block's scale non-finite (never hidden)
    let mut x = vec![0f32; 96];
    x[40] = f32::NAN;
    x[70] = f32::INFINITY;
    let (mut q, mut d) = (vec![1i8; 96], vec![1f32; 3]);
    scalar::quantize_row_q8(&x, &mut q, &mut d);
    assert_eq!(d[0], 0.0);
    assert!(q[..32].iter().all(|&v| v == 0));
    assert!(d[1].is_nan(), "{}", d[1]);
    assert!(d[2].is_infinite(), "{}", d[2]);
}

/// y (f32) from the level, the f64 sum of the quantized values, Σ|terms|, and the unquantized f64 product
/// with its quantization bound.
struct Ref {
    exact_q: Vec<f64>,
    mag_q: Vec<f64>,
    float: Vec<f64>,
    qbound: Vec<f64>,
}

fn reference(
    kern: &Kernels,
    x: &[f32],
    wf: &[f32],
    w: &QuantWeight,
    bias: Option<&[f32]>,
    m: usize,
) -> Ref {
    let (xq, xd) = kern.quantize_rows_a16(x, m, w.k());
    let xq: Vec<i64> = xq.iter().map(|&v| v as i64).collect();
    reference_with(x, wf, w, bias, m, (&xq, &xd))
}

/// [`reference`] with x quantized by the caller: values (m, nb·32) and scales (m, nb).
fn reference_with(
    x: &[f32],
    wf: &[f32],
    w: &QuantWeight,
    bias: Option<&[f32]>,
    m: usize,
    (xq, xd): (&[i64], &[f32]),
) -> Ref {
    let (n, k, nb) = (w.n(), w.k(), w.blocks());
    let wq: Vec<i8> = w.qs_bytes().iter().map(|&b| b as i8).collect();
    let wd = w.scales();
    let mut r = Ref {
        exact_q: vec![0.0; m * n],
        mag_q: vec![0.0; m * n],
        float: vec![0.0; m * n],
        qbound: vec![0.0; m * n],
    };
    for i in 0..m {
        for c in 0..n {
            let (mut e, mut mag, mut f, mut qb) = (0f64, 0f64, 0f64, 0f64);
            for b in 0..nb {
                let p = |t: usize| wq[c * nb * B + b * B + t] as i64 * xq[i * nb * B + b * B + t];
                let s: i64 = (0..B).map(p).sum();
                let sabs: i64 = (0..B).map(|t| p(t).abs()).sum();
                let (dw, dx) = (wd[c * nb + b] as f64, xd[i * nb + b] as f64);
                e += dw * dx * s as f64;
                mag += (dw * dx * sabs as f64).abs();
                let (mut sx, mut sw) = (0f64, 0f64);
                for t in b * B..((b + 1) * B).min(k) {
                    f += x[i * k + t] as f64 * wf[c * k + t] as f64;
                    sx += (x[i * k + t] as f64).abs();
                    sw += (wf[c * k + t] as f64).abs();
                }
                qb += dw / 2.0 * sx + dx / 2.0 * sw + 8.0 * dw * dx;
            }
            let bv = bias.map_or(0.0, |b| b[c] as f64);
            r.exact_q[i * n + c] = e + bv;
            r.mag_q[i * n + c] = mag + bv.abs();
            r.float[i * n + c] = f + bv;
            r.qbound[i * n + c] = qb;
        }
    }
    r
}

fn check_level(kern: &Kernels, what: &str, y: &[f32], r: &Ref, nb: usize) {
    let acc = (nb + 16) as f64 * 2f64.powi(-24);
    for (j, &v) in y.iter().enumerate() {
        let tol = acc * r.mag_q[j] + 1e-30;
        let err = (v as f64 - r.exact_q[j]).abs();
        assert!(
            err <= tol,
            "{what} at {:?}: y[{j}] = {v}, f64 of the quantized values {} (error {err:e} > {tol:e})",
            kern.isa(),
            r.exact_q[j]
        );
        let tol_f = r.qbound[j] + tol + 1e-6 * r.mag_q[j];
        let err_f = (v as f64 - r.float[j]).abs();
        assert!(
            err_f <= tol_f,
            "{what} at {:?}: y[{j}] = {v}, f64 of the float operands {} (error {err_f:e} > bound {tol_f:e})",
            kern.isa(),
            r.float[j]
        );
    }
}

/// The awkward shapes: every m of decode (1..=9) against n 1/15/17 and k off the block, and a few larger
/// or degenerate ones.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = vec![
        (1, 1, 1),
        (1, 65, 31),
        (3, 65, 100),
        (17, 65, 1023),
        (17, 1, 64),
        (4, 9, 32),
        (2, 130, 2048),
        (65, 7, 47),
        (3, 0, 64),
    ];
    for m in 1..=9 {
        for (t, n) in [1, 15, 17].into_iter().enumerate() {
            v.push((m, n, [33, 100, 300, 513][(m + t) % 4]));
        }
    }
    v
}

#[test]
fn q8_matmul_every_level_against_scalar_and_f64() {
    let mut rng = Rng::new(11);
    let scalar_k = common::scalar();
    for (m, n, k) in shapes() {
        let x = rng.vec(m * k, -2.0, 2.0);
        let wf: Vec<f32> = rng.vec(n * k, -0.1, 0.1);
        let wb: Vec<u16> = wf.iter().map(|&v| bf16(v)).collect();
        let wbf: Vec<f32> = wb
            .iter()
            .map(|&b| f32::from_bits((b as u32) << 16))
            .collect();
        let bias = rng.vec(n, -1.0, 1.0);
        for (wname, weight, wvals) in [
            ("f32", Weight::F32(&wf), &wf),
            ("bf16", Weight::Bf16(&wb), &wbf),
        ] {
            let w = scalar_k
                .quantize_weight(QuantFormat::Q8, weight, n, k)
                .unwrap();
            for b in [None, Some(&bias[..])] {
                let r = reference(&scalar_k, &x, wvals, &w, b, m);
                let mut ys = vec![0f32; m * n];
                scalar_k.matmul_quant(&x, m, &w, b, &mut ys).unwrap();
                check_level(&scalar_k, "scalar", &ys, &r, w.blocks());
                for kern in levels() {
                    for threads in [1, 2] {
                        let kk = kern.with_threads(threads);
                        // the weight quantized at this level is the same bytes (one quantizer)
                        let wl = kk.quantize_weight(QuantFormat::Q8, weight, n, k).unwrap();
                        assert_eq!(wl.qs_bytes(), w.qs_bytes());
                        assert_eq!(wl.scales(), w.scales());
                        let mut y = vec![f32::NAN; m * n];
                        kk.matmul_quant(&x, m, &wl, b, &mut y).unwrap();
                        let what = format!(
                            "m {m} n {n} k {k} w {wname} bias {} threads {threads}",
                            b.is_some()
                        );
                        check_level(&kk, &what, &y, &r, w.blocks());
                    }
                }
            }
        }
    }
}

/// A q8 weight (n, k) whose row r holds the byte `value(r)` at every k and `pad` in the rest of its last
/// block, every scale 1; and x (m, k) of ±1 (−1 at every third value): the extremes' operands.
fn extreme_q8(
    (n, k, m): (usize, usize, usize),
    value: impl Fn(usize) -> u8,
    pad: u8,
) -> (QuantWeight, Vec<f32>) {
    let nb = k.div_ceil(B);
    let mut qs = vec![pad; n * nb * B];
    for r in 0..n {
        qs[r * nb * B..r * nb * B + k].fill(value(r));
    }
    let w = QuantWeight::from_parts(QuantFormat::Q8, n, k, &qs, &vec![1.0; n * nb]).unwrap();
    let x = (0..m * k)
        .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    (w, x)
}

#[test]
fn q8_matmul_extreme_values_do_not_overflow() {
    // every weight byte -128 (a file may hold it) against activations at ±32767 (the i32 block sums reach
    // 32·128·32767 < 2^31)
    let (n, k, m): (usize, usize, usize) = (5, 70, 3);
    let (w, x) = extreme_q8((n, k, m), |_| 0x80, 0);
    for kern in levels() {
        let mut y = vec![0f32; m * n];
        kern.matmul_quant(&x, m, &w, None, &mut y).unwrap();
        for i in 0..m {
            // q_x = ±32767 with d_x = 1/32767: y = Σ -128 · x
            let want: f64 = (0..k).map(|t| -128.0 * x[i * k + t] as f64).sum();
            for c in 0..n {
                let got = y[i * n + c] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "{:?}: row {i} col {c}: {got} vs {want}",
                    kern.isa()
                );
            }
        }
    }
}

#[test]
fn q8_row_f32_dequantizes_and_checks() {
    let k = common::scalar();
    let wf: Vec<f32> = (0..3 * 40).map(|i| (i as f32 - 60.0) / 64.0).collect();
    let w = k
        .quantize_weight(QuantFormat::Q8, Weight::F32(&wf), 3, 40)
        .unwrap();
    let mut row = vec![0f32; 40];
    w.row_f32(2, &mut row).unwrap();
    for (t, &v) in row.iter().enumerate() {
        let d = w.scales()[2 * 2 + t / 32];
        assert!(
            (v - wf[80 + t]).abs() <= d / 2.0 * 1.0001,
            "{t}: {v} vs {}",
            wf[80 + t]
        );
    }
    assert!(w.row_f32(3, &mut row).is_err());
    assert!(w.row_f32(0, &mut row[..39]).is_err());
}

#[test]
fn q8_bad_arguments_are_errors() {
    let k = common::scalar();
    let wf = vec![0.5f32; 4 * 10];
    let w = k
        .quantize_weight(QuantFormat::Q8, Weight::F32(&wf), 4, 10)
        .unwrap();
    let mut y = vec![0f32; 8];
    let e = k.matmul_quant(&[0.0; 19], 2, &w, None, &mut y).unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Len {
                what: "x (m*k)",
                ..
            }
        ),
        "{e}"
    );
    let e = k
        .matmul_quant(&[0.0; 20], 2, &w, None, &mut y[..7])
        .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Len {
                what: "y (m*n)",
                ..
            }
        ),
        "{e}"
    );
    let e = k
        .matmul_quant(&[0.0; 20], 2, &w, Some(&[0.0; 3]), &mut y)
        .unwrap_err();
    assert!(
        matches!(
            e,
            KernelError::Len {
                what: "bias (n)",
                ..
            }
        ),
        "{e}"
    );
    // pushing more rows than the weight has, or finishing short
    let mut p = k.quant_packer(QuantFormat::Q8, 2, 10).unwrap();
    assert!(p.push(Weight::F32(&wf[..30]), 3).is_err());
    p.push(Weight::F32(&wf[..10]), 1).unwrap();
    assert!(p.finish().is_err());
    // stored parts: wrong sizes, NaN / inf / negative scales
    let qs = vec![0u8; 4 * 32];
    assert!(QuantWeight::from_parts(QuantFormat::Q8, 4, 10, &qs[..100], &[1.0; 4]).is_err());
    assert!(QuantWeight::from_parts(QuantFormat::Q8, 4, 10, &qs, &[1.0; 5]).is_err());
    for bad in [f32::NAN, f32::INFINITY, -1.0] {
        let e = QuantWeight::from_parts(QuantFormat::Q8, 4, 10, &qs, &[1.0, 1.0, bad, 1.0])
            .err()
            .unwrap();
        assert!(e.to_string().contains("row 2 block 0"), "{e}");
    }
    assert!(QuantFormat::parse("q8") == Some(QuantFormat::Q8));
    assert!(QuantFormat::parse("q5").is_none());
}

/// The `Fast` quantized matmul (`matmul_quant_path`) from 16 rows: on AMX x and the dequantized weights are
/// rounded to bf16, so each output is within (2⁻⁸ + 2⁻⁸ + 2⁻¹⁶ + (k+2)·2⁻²³)·Σ|x·w_dq| (+ the bias's f32
/// rounding) of the f64 product of x and the dequantized weights; q8 at the AVX-512 level without AMX
/// rounds the dequantized weights to bf16 for the level's kernel, within (2⁻⁸ + (k+2)·2⁻²³)·Σ|x·w_dq|.
/// Where `Kernels::quant_fast_a8` (q8 on VNNI without AMX), `Fast` gives the W8A8 kernel's bits (tested
/// above). `Exact`, and `Fast` elsewhere (`Kernels::quant_fast_dequantizes`), give the integer kernels' bits. Both formats, partial groups, k not a multiple of 32 or 256 or of
/// any level's group, with and without bias, one and two threads (a thread's groups dequantized a few at
/// a time: k = 513 puts several in one call at every level).
#[test]
fn fast_quant_matmul_on_dequantized_weights() {
    use qwen3vl_kernels::matmul::MatmulPath;
    let mut rng = Rng::new(23);
    let (mut amx_runs, mut f32_runs, mut a8_runs) = (0, 0, 0);
    for (m, n, k) in [
        (16usize, 1usize, 32usize),
        (17, 65, 47),
        (33, 64, 300),
        (40, 130, 513),
        (5, 17, 64),
    ] {
        let x = rng.vec(m * k, -2.0, 2.0);
        let wf = rng.vec(n * k, -0.1, 0.1);
        let bias = rng.vec(n, -1.0, 1.0);
        for format in QuantFormat::ALL {
            for base in Kernels::test_variants() {
                let w = base
                    .quantize_weight(format, Weight::F32(&wf), n, k)
                    .unwrap();
                // the dequantized weights, and Σ|x·w| per output
                let mut wd = vec![0f32; n * k];
                for (r, row) in wd.chunks_mut(k).enumerate() {
                    w.row_f32(r, row).unwrap();
                }
                for b in [None, Some(&bias[..])] {
                    for threads in [1, 2] {
                        let kk = base.with_threads(threads);
                        let mut exact = vec![f32::NAN; m * n];
                        kk.matmul_quant(&x, m, &w, b, &mut exact).unwrap();
                        let mut y = vec![f32::NAN; m * n];
                        kk.matmul_quant_path(&x, m, &w, b, &mut y, MatmulPath::Exact)
                            .unwrap();
                        assert_eq!(y, exact, "Exact path is the integer kernels");
                        kk.matmul_quant_path(&x, m, &w, b, &mut y, MatmulPath::Fast)
                            .unwrap();
                        if kk.quant_fast_a8(format, m) {
                            a8_runs += 1;
                            let mut want = vec![f32::NAN; m * n];
                            kk.matmul_quant_a8_with(kk.quant_kernel(), &x, m, &w, b, &mut want)
                                .unwrap();
                            assert_eq!(y, want, "Fast on VNNI without AMX is the W8A8 kernel");
                            continue;
                        }
                        if !kk.quant_fast_dequantizes(format, m) {
                            assert_eq!(
                                y, exact,
                                "Fast that does not dequantize is the integer kernels"
                            );
                            continue;
                        }
                        let tol_rel = if kk.amx() {
                            amx_runs += 1;
                            2f64.powi(-7) + 2f64.powi(-16) + (k + 2) as f64 * 2f64.powi(-23)
                        } else {
                            // weights rounded to bf16 (≤ 2⁻⁹ relative), f32 sums
                            f32_runs += 1;
                            2f64.powi(-8) + (k + 2) as f64 * 2f64.powi(-23)
                        };
                        for i in 0..m {
                            for c in 0..n {
                                let (mut want, mut mag) = (0f64, 0f64);
                                for t in 0..k {
                                    let p = x[i * k + t] as f64 * wd[c * k + t] as f64;
                                    want += p;
                                    mag += p.abs();
                                }
                                let bb = b.map_or(0.0, |b| b[c] as f64);
                                let got = y[i * n + c] as f64;
                                let tol =
                                    tol_rel * mag + (want + bb).abs() * 2f64.powi(-23) + 1e-30;
                                assert!(
                                    (got - want - bb).abs() <= tol,
                                    "{format:?} {} threads {threads} m {m} n {n} k {k} ({i}, {c}): {got} vs {} (tol {tol:e})",
                                    kk.isa(),
                                    want + bb
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    if Kernels::test_variants().iter().any(|k| k.amx()) {
        assert!(amx_runs >= 4 * 2 * 2 * 2, "{amx_runs} runs on AMX");
    }
    if Kernels::test_variants()
        .iter()
        .any(|k| !k.amx() && k.quant_fast_dequantizes(QuantFormat::Q8, 16))
    {
        assert!(
            f32_runs >= 4 * 2 * 2,
            "{f32_runs} runs of the dequantizing q8 form"
        );
    }
    if Kernels::test_variants()
        .iter()
        .any(|k| k.quant_fast_a8(QuantFormat::Q8, 16))
    {
        assert!(a8_runs >= 4 * 2 * 2, "{a8_runs} runs of the W8A8 form");
    }
    // special values: a NaN in one row of x makes that row of y NaN and no other (both formats, 17 rows:
    // the tile kernel where present); ±inf makes its row non-finite only
    let (m, n, k) = (17usize, 70usize, 40usize);
    let mut x = rng.vec(m * k, -2.0, 2.0);
    x[3 * k + 5] = f32::NAN;
    x[9 * k] = f32::INFINITY;
    let wf = rng.vec(n * k, -0.1, 0.1);
    for format in QuantFormat::ALL {
        for kern in Kernels::test_variants() {
            let w = kern
                .quantize_weight(format, Weight::F32(&wf), n, k)
                .unwrap();
            let mut y = vec![0f32; m * n];
            kern.matmul_quant_path(&x, m, &w, None, &mut y, MatmulPath::Fast)
                .unwrap();
            for (i, row) in y.chunks(n).enumerate() {
                let ok = match i {
                    3 => row.iter().all(|v| v.is_nan()),
                    9 => row.iter().all(|v| !v.is_finite()),
                    _ => row.iter().all(|v| v.is_finite()),
                };
                assert!(
                    ok,
                    "{format:?} {} amx={} row {i}: {row:?}",
                    kern.isa(),
                    kern.amx()
                );
            }
        }
    }
}

/// Every (level, kernel) on the host with an int8-activation form (`matmul_quant_a8_with`) for `format`
/// other than the scalar twin; asserts which must be among them: q8 where the CPU has VNNI, q4 at
/// AVX-512 with and without it and at AVX2 with AVX-VNNI.
fn a8_kernels(format: QuantFormat) -> Vec<(Kernels, QuantKernel)> {
    let sk = common::scalar();
    let w = sk
        .quantize_weight(format, Weight::F32(&[0.0; 8]), 1, 8)
        .unwrap();
    let mut v = Vec::new();
    for kern in levels() {
        for qk in kern.quant_kernels() {
            if qk != QuantKernel::Scalar
                && kern
                    .matmul_quant_a8_with(qk, &[], 0, &w, None, &mut [])
                    .is_ok()
            {
                v.push((kern, qk));
            }
        }
    }
    let f = sk.features();
    let (vnni512, vnni256) = (
        f.avx512_vnni && f.supports(Isa::Avx512),
        f.avx_vnni && f.supports(Isa::Avx2),
    );
    let want: Vec<(bool, QuantKernel)> = match format {
        QuantFormat::Q8 => vec![
            (vnni512, QuantKernel::Avx512Vnni),
            (vnni256, QuantKernel::Avx2Vnni),
            (false, QuantKernel::Avx2),
            (false, QuantKernel::Avx512),
        ],
        QuantFormat::Q4 => vec![
            (vnni512, QuantKernel::Avx512Vnni),
            (vnni256, QuantKernel::Avx2Vnni),
            (false, QuantKernel::Avx2),
            (f.supports(Isa::Avx512), QuantKernel::Avx512),
            (false, QuantKernel::Sse41),
        ],
    };
    for (has, qk) in want {
        let present = v.iter().any(|&(_, k)| k == qk);
        assert_eq!(
            present, has,
            "{format} int8-activation kernel {qk}: expected {has}"
        );
    }
    v
}

/// Every kernel of `kernels` (one and two threads) gives `want`'s bits for W.
fn assert_a8_bits(
    kernels: &[(Kernels, QuantKernel)],
    (x, m): (&[f32], usize),
    w: &QuantWeight,
    b: Option<&[f32]>,
    want: &[f32],
) {
    for &(kern, qk) in kernels {
        for threads in [1, 2] {
            let kk = kern.with_threads(threads);
            let mut y = vec![f32::NAN; want.len()];
            kk.matmul_quant_a8_with(qk, x, m, w, b, &mut y).unwrap();
            for (j, (&a, &s)) in y.iter().zip(want).enumerate() {
                assert!(
                    a.to_bits() == s.to_bits(),
                    "{} {qk} m {m} n {} k {} threads {threads} bias {}: y[{j}] = {a}, scalar {s}",
                    w.format(),
                    w.n(),
                    w.k(),
                    b.is_some()
                );
            }
        }
    }
}

/// One matmul case of the int8-activation tests: (m, n, k), x (m, k), the float weights (n, k), a bias,
/// and the weights quantized (by the scalar level) into the format.
type A8Case = (
    usize,
    usize,
    usize,
    Vec<f32>,
    Vec<f32>,
    Vec<f32>,
    QuantWeight,
);

/// The awkward shapes and `extra`, with random operands from `seed`.
fn a8_cases(format: QuantFormat, seed: u64, extra: &[(usize, usize, usize)]) -> Vec<A8Case> {
    let mut rng = Rng::new(seed);
    let sk = common::scalar();
    let mut shapes = shapes();
    shapes.extend_from_slice(extra);
    shapes
        .into_iter()
        .map(|(m, n, k)| {
            let x = rng.vec(m * k, -2.0, 2.0);
            let wf = rng.vec(n * k, -0.1, 0.1);
            let bias = rng.vec(n, -1.0, 1.0);
            let w = sk.quantize_weight(format, Weight::F32(&wf), n, k).unwrap();
            (m, n, k, x, wf, bias, w)
        })
        .collect()
}

/// One output of the int8-activation scalar twin: within (nb + 16)·2⁻²⁴ of `mag` (Σ|terms|) of the f64
/// sum `e` of its own quantized terms, and within `qb` (the quantization bound) more of the f64 product
/// `f` of the float operands; `bv` the bias.
fn check_a8_output(
    what: &str,
    got: f32,
    (e, mag): (f64, f64),
    (f, qb): (f64, f64),
    bv: f64,
    nb: usize,
) {
    let got = got as f64;
    let tol = (nb + 16) as f64 * 2f64.powi(-24) * (mag + bv.abs()) + 1e-30;
    assert!(
        (got - e - bv).abs() <= tol,
        "{what}: {got} vs f64 of the quantized terms {} (tol {tol:e})",
        e + bv
    );
    let tol_f = qb + tol + 1e-6 * mag;
    assert!(
        (got - f - bv).abs() <= tol_f,
        "{what}: {got} vs f64 of the float operands {} (bound {tol_f:e})",
        f + bv
    );
}

/// W8A8 (q8 weights, x quantized to int8 per block of 32): the scalar twin against the f64 sum of the
/// quantized values ((nb + 16)·2⁻²⁴ of Σ|terms|) and against the f64 product of the unquantized operands
/// (their quantization error on top), and every VNNI kernel on the host bit for bit against the twin (one
/// lane per output, the same operations in the same order): the awkward shapes, tiles cut by the panel
/// width (n 1, 15, 17, 65, 130) and by the rows' chunk of 64 (m 130), one and two threads.
#[test]
fn q8a8_matmul_every_kernel_bit_exact_with_the_scalar_twin() {
    let sk = common::scalar();
    let kernels = a8_kernels(QuantFormat::Q8);
    let extra = [(130, 70, 100), (67, 130, 64), (16, 33, 1)];
    for (m, n, k, x, wf, bias, w) in a8_cases(QuantFormat::Q8, 31, &extra) {
        let (xq, xd) = sk.quantize_rows_a8u(&x, m, k);
        let xq: Vec<i64> = xq.iter().map(|&v| v as i64 - 128).collect();
        for b in [None, Some(&bias[..])] {
            let r = reference_with(&x, &wf, &w, b, m, (&xq, &xd));
            let mut ys = vec![f32::NAN; m * n];
            sk.matmul_quant_a8_with(QuantKernel::Scalar, &x, m, &w, b, &mut ys)
                .unwrap();
            let what = format!("W8A8 twin m {m} n {n} k {k} bias {}", b.is_some());
            check_level(&sk, &what, &ys, &r, w.blocks());
            assert_a8_bits(&kernels, (&x, m), &w, b, &ys);
        }
    }
}

/// W8A8 at the extremes: weight bytes −128 (a file may hold them) and 127 against activations at ±127
/// (x of one magnitude, q_x ± 127, stored 1 and 255): the i32 sums (with the −128·Σq_w correction) stay
/// exact; nonzero padding bytes of a weight's last block add nothing; NaN in x makes its row NaN; a q8
/// format mismatch or an unknown kernel is an error.
#[test]
fn q8a8_extremes_and_errors() {
    let (n, k, m): (usize, usize, usize) = (40, 70, 5);
    // the padding of the last block (k..96) nonzero, as a file may hold it: it must not count
    let (w, mut x) = extreme_q8((n, k, m), |r| if r % 2 == 0 { 0x80 } else { 0x7f }, 0x55);
    x[4 * k + 7] = f32::NAN;
    let sk = common::scalar();
    let mut ys = vec![0f32; m * n];
    sk.matmul_quant_a8_with(QuantKernel::Scalar, &x, m, &w, None, &mut ys)
        .unwrap();
    for i in 0..m {
        for c in 0..n {
            let q = if c % 2 == 0 { -128.0 } else { 127.0 };
            // q_x = ±127 with d_x = 1/127: y = Σ q_w · x
            let want: f64 = (0..k).map(|t| q * x[i * k + t] as f64).sum();
            let got = ys[i * n + c] as f64;
            if i == 4 {
                assert!(got.is_nan(), "row with a NaN: ({i}, {c}) = {got}");
            } else {
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "({i}, {c}): {got} vs {want}"
                );
            }
        }
    }
    assert_a8_bits(&a8_kernels(QuantFormat::Q8), (&x, m), &w, None, &ys);
    let e = sk
        .matmul_quant_a8_with(QuantKernel::Avx512Vnni, &x, m, &w, None, &mut ys)
        .unwrap_err();
    assert!(e.to_string().contains("not one of this level's"), "{e}");
    for kern in levels() {
        if kern.quant_kernels().contains(&QuantKernel::Avx2) {
            let e = kern
                .matmul_quant_a8_with(QuantKernel::Avx2, &x, m, &w, None, &mut ys)
                .unwrap_err();
            assert!(
                e.to_string()
                    .contains("avx2 has no int8-activation form for q8"),
                "{e}"
            );
        }
    }
    let e = sk
        .matmul_quant_a8_with(QuantKernel::Scalar, &x[1..], m, &w, None, &mut ys)
        .unwrap_err();
    assert!(e.to_string().contains("x (m*k)"), "{e}");
}

/// The q8 row quantizer of every level (weights, and W8A8's activations as q + 128) is the scalar one bit
/// for bit: awkward lengths, and blocks of special values — NaN, ±inf, zeros and −0, denormals (some
/// whose 1/d overflows), values near f32::MAX, exact ties of the rounding, one huge value among tiny ones.
#[test]
fn q8_row_quantizer_every_level_is_the_scalar_one() {
    let mut rng = Rng::new(41);
    let sk = common::scalar();
    let specials: [f32; 12] = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        0.0,
        -0.0,
        1e-45,
        3e-39,
        1e-41,
        3.3e38,
        -3.3e38,
        0.5,
        -2.5,
    ];
    for len in [0usize, 1, 15, 17, 31, 32, 33, 64, 100, 1023] {
        let mut x = rng.vec(len, -3.0, 3.0);
        let mut cases = vec![x.clone()];
        for (i, &sp) in specials.iter().enumerate() {
            if len > 0 {
                // a special value in one block, or a whole block of it
                let mut y = x.clone();
                y[(i * 7) % len] = sp;
                cases.push(y);
                cases.push(vec![sp; len]);
            }
        }
        // ties: multiples of d/2 (max 127 → d = 1)
        if len > 0 {
            for (t, v) in x.iter_mut().enumerate() {
                *v = if t % 32 == 0 {
                    127.0
                } else {
                    (t % 9) as f32 - 4.5
                };
            }
            cases.push(x);
            let mut y = vec![1e-30f32; len];
            y[len - 1] = 1e30;
            cases.push(y);
        }
        for x in &cases {
            let (want_q, want_d) = sk.quantize_rows_a8u(x, 1, len);
            let wants = sk
                .quantize_weight(QuantFormat::Q8, Weight::F32(x), 1, len)
                .unwrap();
            for kern in levels() {
                let (q, d) = kern.quantize_rows_a8u(x, 1, len);
                assert_eq!(q, want_q, "{:?} len {len}: activation bytes", kern.isa());
                let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&d),
                    bits(&want_d),
                    "{:?} len {len}: scales",
                    kern.isa()
                );
                let w = kern
                    .quantize_weight(QuantFormat::Q8, Weight::F32(x), 1, len)
                    .unwrap();
                assert_eq!(
                    w.qs_bytes(),
                    wants.qs_bytes(),
                    "{:?} len {len}: weight bytes",
                    kern.isa()
                );
                assert_eq!(
                    bits(w.scales()),
                    bits(wants.scales()),
                    "{:?} len {len}",
                    kern.isa()
                );
                // the activation bytes are the weight bytes + 128
                let flipped: Vec<u8> = q.iter().map(|b| b ^ 0x80).collect();
                assert_eq!(flipped, w.qs_bytes(), "{:?} len {len}", kern.isa());
            }
        }
    }
}

/// W4A8 over column panels (q4 weights, x quantized to int8 per block of 32, the `Fast` form without
/// AMX): the scalar twin against the f64 sum of its own terms — Σ (q_x·d_x)·((d·sc_j)·L − dmin·mn_j) over
/// k, (nb + 16)·2⁻²⁴ of their magnitudes — and against the f64 product of x and the dequantized weights
/// (x's rounding, ≤ d_x/2 per value, on top); every kernel with the form (AVX-512 with and without
/// VNNI: i32 `vpdpbusd` sums or `pmaddubsw` i16 pairs, the same integers; AVX2 with AVX-VNNI) bit for
/// bit against the twin. The awkward shapes (k off the super-block of 256), panels cut at n, rows past a
/// chunk of 64.
#[test]
fn q4a8_matmul_every_kernel_bit_exact_with_the_scalar_twin() {
    let sk = common::scalar();
    let kernels = a8_kernels(QuantFormat::Q4);
    let extra = [(130, 70, 600), (67, 130, 256), (16, 33, 1)];
    for (m, n, k, x, _, bias, w) in a8_cases(QuantFormat::Q4, 37, &extra) {
        let (rb, rs) = (QuantFormat::Q4.row_bytes(k), QuantFormat::Q4.row_scales(k));
        let (qs, d) = (w.qs_bytes(), w.scales());
        let (xq, xd) = sk.quantize_rows_a8u(&x, m, k);
        let kp = xq.len() / m.max(1);
        // (d·sc_j)·L and dmin·mn_j of every weight, as f32 products (the panel's values)
        let term = |c: usize, t: usize| -> (f64, f64) {
            let (sb, j, tt) = (t / 256, t % 256 / B, t % B);
            let qb = &qs[c * rb + sb * 144..];
            let l = (qb[16 + j * 16 + tt % 16] >> (4 * (tt / 16))) & 15;
            let dsc = d[c * rs + 2 * sb] * qb[j] as f32;
            let mn = d[c * rs + 2 * sb + 1] * qb[8 + j] as f32;
            (dsc as f64 * l as f64, mn as f64)
        };
        for b in [None, Some(&bias[..])] {
            let mut ys = vec![f32::NAN; m * n];
            sk.matmul_quant_a8_with(QuantKernel::Scalar, &x, m, &w, b, &mut ys)
                .unwrap();
            for i in 0..m {
                for c in 0..n {
                    let (mut e, mut mag, mut f, mut qb) = (0f64, 0f64, 0f64, 0f64);
                    for t in 0..k {
                        let (bl, bt) = (t / B, t % B);
                        let dx = xd[i * (kp / B) + bl] as f64;
                        let xv = (xq[i * kp + bl * B + bt] as f64 - 128.0) * dx;
                        let (sl, mn) = term(c, t);
                        e += xv * (sl - mn);
                        mag += xv.abs() * (sl.abs() + mn.abs());
                        f += x[i * k + t] as f64 * (sl - mn);
                        qb += dx / 2.0 * (sl - mn).abs();
                    }
                    let bv = b.map_or(0.0, |b| b[c] as f64);
                    let what = format!("q4 m {m} n {n} k {k} ({i}, {c})");
                    check_a8_output(&what, ys[i * n + c], (e, mag), (f, qb), bv, k.div_ceil(B));
                }
            }
            assert_a8_bits(&kernels, (&x, m), &w, b, &ys);
        }
    }
}

/// A weight whose panels exceed the 8 MB packed at a time (2100 × 4096: 10.8 MB of q8 panels), so the
/// int8-activation matmul packs and runs it in chunks of columns: every kernel with the form gives the
/// scalar twin's bits, and the twin (chunked too) is within x's rounding of the f64 product of x and the
/// dequantized weights, for both formats.
#[test]
fn int8_activation_panels_in_chunks_of_columns() {
    let (m, n, k) = (17usize, 2100usize, 4096usize);
    let mut rng = Rng::new(43);
    let x = rng.vec(m * k, -2.0, 2.0);
    let wf = rng.vec(n * k, -0.1, 0.1);
    let sk = common::scalar();
    let (_, xd) = sk.quantize_rows_a8u(&x, m, k);
    for format in QuantFormat::ALL {
        let w = sk.quantize_weight(format, Weight::F32(&wf), n, k).unwrap();
        let mut ys = vec![f32::NAN; m * n];
        sk.matmul_quant_a8_with(QuantKernel::Scalar, &x, m, &w, None, &mut ys)
            .unwrap();
        let mut row = vec![0f32; k];
        for c in 0..n {
            w.row_f32(c, &mut row).unwrap();
            for i in 0..m {
                let (mut want, mut mag, mut bound) = (0f64, 0f64, 0f64);
                for t in 0..k {
                    let p = x[i * k + t] as f64 * row[t] as f64;
                    want += p;
                    mag += p.abs();
                    bound += xd[i * (k / B) + t / B] as f64 / 2.0 * (row[t] as f64).abs();
                }
                let got = ys[i * n + c] as f64;
                let tol = bound + 1e-5 * mag + 1e-30;
                assert!(
                    (got - want).abs() <= tol,
                    "{format} ({i}, {c}): {got} vs {want} (tol {tol:e})"
                );
            }
        }
        assert_a8_bits(&a8_kernels(format), (&x, m), &w, None, &ys);
    }
}
