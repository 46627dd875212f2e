//! Every vector op at every level this host has, against the scalar twin, on the awkward sizes; in-place
//! variants; length errors; forcing a level. Bounds are stated next to each test.

mod common;
use common::*;
use qwen3vl_kernels::isa::Isa;
use qwen3vl_kernels::{KernelError, Kernels};

/// add, mul, scale and their _assign forms: exact (one IEEE operation per element at every level).
#[test]
fn elementwise_exact() {
    let r = scalar();
    for k in levels() {
        let lv = k.isa().name();
        for &n in &SIZES {
            let mut g = Rng::new(n as u64);
            let a = g.vec(n, -10.0, 10.0);
            let b = g.vec(n, -10.0, 10.0);
            let (mut out, mut want) = (vec![0.0; n], vec![0.0; n]);

            k.add(&a, &b, &mut out).unwrap();
            r.add(&a, &b, &mut want).unwrap();
            check("add", lv, n, &out, &f64s(&want), EXACT);
            let mut acc = a.clone();
            k.add_assign(&mut acc, &b).unwrap();
            check("add_assign", lv, n, &acc, &f64s(&want), EXACT);
            // the reference itself: a + b
            let direct: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x + y) as f64).collect();
            check("add(ref)", "scalar", n, &want, &direct, EXACT);

            k.mul(&a, &b, &mut out).unwrap();
            let direct: Vec<f64> = a.iter().zip(&b).map(|(x, y)| (x * y) as f64).collect();
            check("mul", lv, n, &out, &direct, EXACT);
            let mut acc = a.clone();
            k.mul_assign(&mut acc, &b).unwrap();
            check("mul_assign", lv, n, &acc, &direct, EXACT);

            k.scale(&a, -0.37, &mut out).unwrap();
            let direct: Vec<f64> = a.iter().map(|x| (x * -0.37) as f64).collect();
            check("scale", lv, n, &out, &direct, EXACT);
            let mut acc = a.clone();
            k.scale_assign(&mut acc, -0.37);
            check("scale_assign", lv, n, &acc, &direct, EXACT);
        }
    }
}

/// dot and sum: |got - exact| <= (n/(4·lanes) + 8)·2^-24·Σ|terms| (the worst case of four f32 lane
/// accumulators plus the final tree), against an f64 sum. The scalar twin sums in f64.
#[test]
fn reductions() {
    for k in levels() {
        let lv = k.isa().name();
        let lanes = k.isa().f32_lanes() as f64;
        for &n in &SIZES {
            let mut g = Rng::new(7 + n as u64);
            let a = g.vec(n, -1.0, 1.0);
            let b = g.vec(n, -1.0, 1.0);
            let gamma = (n as f64 / (4.0 * lanes) + 8.0) * 2f64.powi(-24);

            let exact: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let mag: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| (x as f64 * y as f64).abs())
                .sum();
            let got = k.dot(&a, &b).unwrap();
            let tol = Tol {
                ulps: 0.5,
                abs: gamma * mag,
            };
            check("dot", lv, n, &[got], &[exact], tol);

            let exact: f64 = a.iter().map(|&x| x as f64).sum();
            let mag: f64 = a.iter().map(|&x| (x as f64).abs()).sum();
            let got = k.sum(&a).unwrap();
            check(
                "sum",
                lv,
                n,
                &[got],
                &[exact],
                Tol {
                    ulps: 0.5,
                    abs: gamma * mag,
                },
            );
        }
    }
}

/// max: exact; −inf for empty; NaN anywhere (also in the tail) gives NaN.
#[test]
fn max_exact_and_nan() {
    for k in levels() {
        let lv = k.isa().name();
        assert_eq!(
            k.max(&[]).unwrap(),
            f32::NEG_INFINITY,
            "max [{lv}] of empty"
        );
        for &n in &SIZES[1..] {
            let mut g = Rng::new(11 + n as u64);
            let mut a = g.vec(n, -100.0, -1.0);
            let at = (g.next_u64() as usize) % n;
            a[at] = -0.5;
            assert_eq!(k.max(&a).unwrap(), -0.5, "max [{lv}] n={n} (max at {at})");
            for pos in [0, n / 2, n - 1] {
                let mut b = a.clone();
                b[pos] = f32::NAN;
                assert!(
                    k.max(&b).unwrap().is_nan(),
                    "max [{lv}] n={n}: NaN at {pos} lost"
                );
            }
        }
    }
}

/// bf16: bit-exact against the scalar twin on random and special values; the twin against known cases.
#[test]
fn bf16_round_trip() {
    let r = scalar();
    // known cases: RNE ties, NaN stays NaN, overflow to inf, subnormals
    let cases: [(f32, u16); 9] = [
        (1.0, 0x3f80),
        (f32::from_bits(0x3f80_8000), 0x3f80), // tie, even stays
        (f32::from_bits(0x3f81_8000), 0x3f82), // tie, odd rounds up
        (f32::from_bits(0x3f80_8001), 0x3f81),
        (f32::MAX, 0x7f80),
        (f32::INFINITY, 0x7f80),
        (-0.0, 0x8000),
        (f32::from_bits(0x0000_8000), 0x0000), // subnormal tie to even (0)
        (f32::from_bits(0x0001_8000), 0x0002),
    ];
    let xs: Vec<f32> = cases.iter().map(|c| c.0).collect();
    for k in levels() {
        let lv = k.isa().name();
        let mut out = vec![0u16; xs.len()];
        k.f32_to_bf16(&xs, &mut out).unwrap();
        for (i, c) in cases.iter().enumerate() {
            assert_eq!(
                out[i],
                c.1,
                "f32_to_bf16 [{lv}] of {:e} ({:#x})",
                c.0,
                c.0.to_bits()
            );
        }
        let mut nan = [0u16; 3];
        k.f32_to_bf16(
            &[f32::NAN, -f32::NAN, f32::from_bits(0x7f80_0001)],
            &mut nan,
        )
        .unwrap();
        for b in nan {
            assert!(
                f32::from_bits((b as u32) << 16).is_nan(),
                "[{lv}] NaN -> {b:#x}"
            );
        }
        for &n in &SIZES {
            let mut g = Rng::new(3 + n as u64);
            let mut x: Vec<f32> = (0..n)
                .map(|_| f32::from_bits(g.next_u64() as u32))
                .collect();
            for (i, v) in SPECIAL.iter().enumerate() {
                if i < n {
                    x[i] = *v;
                }
            }
            let (mut got, mut want) = (vec![0u16; n], vec![0u16; n]);
            k.f32_to_bf16(&x, &mut got).unwrap();
            r.f32_to_bf16(&x, &mut want).unwrap();
            for i in 0..n {
                let nan = x[i].is_nan();
                let same = if nan {
                    (got[i] & 0x7fff) > 0x7f80
                } else {
                    got[i] == want[i]
                };
                assert!(
                    same,
                    "f32_to_bf16 [{lv}] n={n} [{i}] x={:#x}: got {:#x} want {:#x}",
                    x[i].to_bits(),
                    got[i],
                    want[i]
                );
            }
            // widening is exact, and round_bf16 = widen(narrow)
            let mut wide = vec![0.0f32; n];
            k.bf16_to_f32(&want, &mut wide).unwrap();
            let mut rounded = x.clone();
            k.round_bf16_assign(&mut rounded);
            for i in 0..n {
                assert_eq!(
                    wide[i].to_bits(),
                    (want[i] as u32) << 16,
                    "bf16_to_f32 [{lv}] n={n} [{i}]"
                );
                if !x[i].is_nan() {
                    assert_eq!(
                        rounded[i].to_bits(),
                        wide[i].to_bits(),
                        "round_bf16 [{lv}] n={n} [{i}]"
                    );
                } else {
                    assert!(
                        rounded[i].is_nan(),
                        "round_bf16 [{lv}] n={n} [{i}] NaN lost"
                    );
                }
            }
        }
    }
}

/// Row-wise norms against the twin (f64 statistics): |err| <= 8 ULP + 2^-22·max|y| of the row's outputs
/// (the f32 statistics of a row of 4097 lose a few bits; a wrong eps, weight or row offset is far larger);
/// layer_norm (on rows offset by 100) also allows 3 ULP of the mean relative to the row's std.
#[test]
fn norms() {
    let r = scalar();
    for k in levels() {
        let lv = k.isa().name();
        for &n in &SIZES[1..] {
            for rows in [1usize, 3] {
                let mut g = Rng::new(100 + n as u64);
                let x = g.vec(rows * n, -2.0, 3.0);
                let w = g.vec(n, 0.5, 1.5);
                let b = g.vec(n, -1.0, 1.0);
                let len = rows * n;
                let (mut out, mut want) = (vec![0.0; len], vec![0.0; len]);
                let tol = |y: &[f32]| Tol {
                    ulps: 8.0,
                    abs: 2f64.powi(-22) * y.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64,
                };

                k.rms_norm(&x, &w, 1e-6, &mut out).unwrap();
                r.rms_norm(&x, &w, 1e-6, &mut want).unwrap();
                check("rms_norm", lv, n, &out, &f64s(&want), tol(&want));
                let mut inplace = x.clone();
                k.rms_norm_assign(&mut inplace, &w, 1e-6).unwrap();
                check("rms_norm_assign", lv, n, &inplace, &f64s(&want), tol(&want));

                // a large common offset: layer_norm must not lose the variance to cancellation
                let xo: Vec<f32> = x.iter().map(|v| v + 100.0).collect();
                k.layer_norm(&xo, &w, &b, 1e-5, &mut out).unwrap();
                r.layer_norm(&xo, &w, &b, 1e-5, &mut want).unwrap();
                // x - mean is formed in f32: allow 2 ULP of the mean, scaled by 1/std and |w|
                let t = Tol {
                    ulps: 8.0,
                    abs: ln_slack(&xo, n) * 0.25,
                };
                check("layer_norm", lv, n, &out, &f64s(&want), t);
                let mut inplace = xo.clone();
                k.layer_norm_assign(&mut inplace, &w, &b, 1e-5).unwrap();
                check("layer_norm_assign", lv, n, &inplace, &f64s(&want), t);

                k.normalize_rows(&x, n, 1e-12, &mut out).unwrap();
                r.normalize_rows(&x, n, 1e-12, &mut want).unwrap();
                check("normalize_rows", lv, n, &out, &f64s(&want), tol(&want));
                let mut inplace = x.clone();
                k.normalize_rows_assign(&mut inplace, n, 1e-12).unwrap();
                check(
                    "normalize_rows_assign",
                    lv,
                    n,
                    &inplace,
                    &f64s(&want),
                    tol(&want),
                );
            }
            // the whole slice as one row, and eps larger than the norm
            let mut g = Rng::new(5 + n as u64);
            let x = g.vec(n, -1e-3, 1e-3);
            let (mut out, mut want) = (vec![0.0; n], vec![0.0; n]);
            k.normalize(&x, 1.0, &mut out).unwrap();
            check("normalize(eps>norm)", lv, n, &out, &f64s(&x), ulps(0.0));
            k.normalize(&x, 1e-12, &mut out).unwrap();
            r.normalize(&x, 1e-12, &mut want).unwrap();
            check("normalize", lv, n, &out, &f64s(&want), ulps(8.0));
        }
    }
}

/// max over rows of 2·ulp(mean)/std (the f32 rounding of x − mean, relative to the output scale).
fn ln_slack(x: &[f32], n: usize) -> f64 {
    x.chunks(n)
        .map(|r| {
            let m = r.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let v = r.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / n as f64;
            2.0 * ulp_of(m) / (v + 1e-5).sqrt()
        })
        .fold(0.0, f64::max)
}

/// layer_norm against a hand-computed case (the twin itself is checked here).
#[test]
fn layer_norm_known_values() {
    for k in levels() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0.0f32; 4];
        k.layer_norm(&x, &[1.0; 4], &[0.5; 4], 0.0, &mut out)
            .unwrap();
        // mean 2.5, biased var 1.25
        let s = 1.25f64.sqrt();
        let want: Vec<f64> = x.iter().map(|&v| (v as f64 - 2.5) / s + 0.5).collect();
        check(
            "layer_norm(known)",
            k.isa().name(),
            4,
            &out,
            &want,
            ulps(2.0),
        );
        k.rms_norm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out[..2])
            .unwrap();
        let rms = 12.5f64.sqrt();
        check(
            "rms_norm(known)",
            k.isa().name(),
            2,
            &out[..2],
            &[3.0 / rms, 8.0 / rms],
            ulps(2.0),
        );
    }
}

/// softmax (scale, causal) against the twin (f64 sum): |err| <= 6 + √n ULP: exp is within 1 ULP and the
/// scale is a power of two here (so x·scale − max rounds the same with and without FMA); the rest is the
/// f32 sum of n exponentials (2 accumulators per lane), whose error grows like √n on this data.
#[test]
fn softmax() {
    let r = scalar();
    for k in levels() {
        let lv = k.isa().name();
        for &n in &SIZES[1..] {
            for (rows, scale, causal) in [
                (3usize, 1.0f32, None),
                (4, 0.125, Some(0)),
                (2, -2.0, Some(5)),
            ] {
                let mut g = Rng::new(200 + n as u64);
                let x = g.vec(rows * n, -8.0, 8.0);
                let len = rows * n;
                let (mut out, mut want) = (vec![0.0; len], vec![0.0; len]);
                k.softmax(&x, n, scale, causal, &mut out).unwrap();
                r.softmax(&x, n, scale, causal, &mut want).unwrap();
                let t = Tol {
                    ulps: 6.0 + (n as f64).sqrt(),
                    abs: 1e-30,
                };
                let op = format!("softmax(scale={scale}, causal={causal:?})");
                check(&op, lv, n, &out, &f64s(&want), t);
                let mut inplace = x.clone();
                k.softmax_assign(&mut inplace, n, scale, causal).unwrap();
                check(&op, lv, n, &inplace, &f64s(&want), t);
                // rows sum to 1, masked columns are 0
                for row in 0..rows {
                    let valid = causal.map_or(n, |o| (row + o + 1).min(n));
                    let s: f64 = out[row * n..row * n + valid]
                        .iter()
                        .map(|&v| v as f64)
                        .sum();
                    assert!(
                        (s - 1.0).abs() < 1e-5,
                        "{op} [{lv}] n={n} row {row} sums to {s}"
                    );
                    assert!(out[row * n + valid..(row + 1) * n]
                        .iter()
                        .all(|&v| v == 0.0));
                }
            }
        }
        // a -inf (masked) entry gets probability 0; a large-magnitude row does not overflow
        let mut out = [0.0f32; 3];
        k.softmax(&[f32::NEG_INFINITY, 0.0, 0.0], 3, 1.0, None, &mut out)
            .unwrap();
        assert_eq!(out, [0.0, 0.5, 0.5], "softmax [{lv}] with -inf");
        k.softmax(&[1e30, 1e30, -1e30], 3, 1.0, None, &mut out)
            .unwrap();
        assert_eq!(out, [0.5, 0.5, 0.0], "softmax [{lv}] with ±1e30");
    }
}

/// rope_half against the twin: |err| <= 2 ULP + 2^-23·(|x1·s| + |x2·c|) (one FMA vs two roundings).
#[test]
fn rope_half() {
    let r = scalar();
    for k in levels() {
        let lv = k.isa().name();
        for &hd in &[2usize, 4, 8, 16, 30, 34, 64, 128, 130] {
            for (rows, heads) in [(1usize, 1usize), (3, 2)] {
                let mut g = Rng::new(300 + hd as u64);
                let x = g.vec(rows * heads * hd, -3.0, 3.0);
                let ang = g.vec(rows * hd / 2, -3.2, 3.2);
                let cos: Vec<f32> = ang.iter().map(|a| a.cos()).collect();
                let sin: Vec<f32> = ang.iter().map(|a| a.sin()).collect();
                let (mut got, mut want) = (x.clone(), x.clone());
                k.rope_half(&mut got, heads, hd, &cos, &sin).unwrap();
                r.rope_half(&mut want, heads, hd, &cos, &sin).unwrap();
                check(
                    "rope_half",
                    lv,
                    hd,
                    &got,
                    &f64s(&want),
                    Tol {
                        ulps: 2.0,
                        abs: 6.0 * 2f64.powi(-23),
                    },
                );
                // norm of each pair is preserved (checks the rotation itself, also for the twin)
                let (h, i) = (hd / 2, hd / 2 - 1);
                let before = x[i].hypot(x[i + h]);
                let after = want[i].hypot(want[i + h]);
                assert!(
                    (before - after).abs() < 1e-5,
                    "rope_half [{lv}] hd={hd} rotation"
                );
            }
        }
    }
}

/// rms_norm_rope_half is, bit for bit, rms_norm then rope_half of the same level applied to each head,
/// reading and writing strided rows; also when it splits the rows over threads. Bad shapes are errors.
#[test]
fn rms_norm_rope_half_is_the_two_ops() {
    for k0 in levels() {
        let lv = k0.isa().name();
        for k in [k0, k0.with_threads(2)] {
            // (rows, heads, hd): one decode row; odd head counts; a prefill large enough to be threaded.
            for (rows, heads, hd) in [
                (1usize, 1usize, 2usize),
                (1, 3, 30),
                (5, 2, 34),
                (17, 3, 128),
                (70, 4, 128),
            ] {
                let (xs, os) = (heads * hd + 7, heads * hd + 3);
                let mut g = Rng::new((rows * 1000 + heads * 10 + hd) as u64);
                let x = g.vec(rows * xs, -3.0, 3.0);
                let w = g.vec(hd, 0.5, 1.5);
                let ang = g.vec(rows * hd / 2, -3.2, 3.2);
                let cos: Vec<f32> = ang.iter().map(|a| a.cos()).collect();
                let sin: Vec<f32> = ang.iter().map(|a| a.sin()).collect();
                let mut got = vec![f32::NAN; rows * os];
                k.rms_norm_rope_half(&x, xs, &mut got, os, rows, heads, &w, 1e-6, &cos, &sin)
                    .unwrap();
                for r in 0..rows {
                    let mut want = vec![0.0; heads * hd];
                    k.rms_norm(&x[r * xs..r * xs + heads * hd], &w, 1e-6, &mut want)
                        .unwrap();
                    let c = &cos[r * hd / 2..(r + 1) * hd / 2];
                    let sn = &sin[r * hd / 2..(r + 1) * hd / 2];
                    for h in 0..heads {
                        k.rope_half(&mut want[h * hd..(h + 1) * hd], 1, hd, c, sn)
                            .unwrap();
                    }
                    let row = &got[r * os..r * os + heads * hd];
                    assert!(
                        row.iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "[{lv}] rows={rows} heads={heads} hd={hd}: row {r} differs"
                    );
                    // the gap between rows of out is not written
                    assert!(got[r * os + heads * hd..(r + 1) * os]
                        .iter()
                        .all(|v| v.is_nan()));
                }
            }
        }
        let (x, w, cs) = (vec![1.0f32; 64], vec![1.0f32; 8], vec![0.5f32; 8]);
        let mut out = vec![0.0f32; 64];
        let e = k0
            .rms_norm_rope_half(&x, 16, &mut out, 16, 5, 2, &w, 1e-6, &cs, &cs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rms_norm_rope_half") && e.contains("x: 5 rows"),
            "{e}"
        );
        let e = k0
            .rms_norm_rope_half(&x, 16, &mut out, 8, 2, 2, &w, 1e-6, &cs[..8], &cs[..8])
            .unwrap_err()
            .to_string();
        assert!(e.contains("out: 2 rows") && e.contains("stride 8"), "{e}");
        assert!(k0
            .rms_norm_rope_half(&x, 16, &mut out, 16, 2, 2, &w[..7], 1e-6, &cs, &cs)
            .is_err());
        assert!(k0
            .rms_norm_rope_half(&x, 16, &mut out, 16, 2, 2, &w, 1e-6, &cs[..7], &cs)
            .is_err());
        assert!(k0
            .rms_norm_rope_half(&x, usize::MAX, &mut out, 16, 2, 2, &w, 1e-6, &cs, &cs)
            .is_err());
        assert!(k0
            .rms_norm_rope_half(&x, 16, &mut out, 16, 0, 2, &w, 1e-6, &[], &[])
            .is_ok());
    }
}

/// Mismatched lengths are a KernelError naming the op and the lengths, never a panic.
#[test]
fn length_errors() {
    for k in levels() {
        let a = [1.0f32; 5];
        let mut o4 = [0.0f32; 4];
        let e = k.add(&a, &a[..4], &mut o4).unwrap_err();
        assert_eq!(
            e,
            KernelError::Len {
                op: "add",
                what: "b",
                expected: 5,
                got: 4
            }
        );
        assert!(
            e.to_string().contains("add")
                && e.to_string().contains('5')
                && e.to_string().contains('4')
        );
        assert!(k.add(&a, &a, &mut o4).is_err());
        assert!(k.add_assign(&mut o4, &a).is_err());
        assert!(k.mul(&a, &a, &mut o4).is_err());
        assert!(k.mul_assign(&mut o4, &a).is_err());
        assert!(k.scale(&a, 2.0, &mut o4).is_err());
        assert!(k.dot(&a, &a[..4]).is_err());
        assert!(k.f32_to_bf16(&a, &mut [0u16; 4]).is_err());
        assert!(k.bf16_to_f32(&[0u16; 5], &mut o4).is_err());
        assert!(k.gelu_erf(&a, &mut o4).is_err());
        assert!(k.swiglu(&a, &a[..4], &mut o4).is_err());
        assert!(k.swiglu_assign(&mut o4, &a).is_err());
        // rows must divide exactly
        let x = [1.0f32; 6];
        let mut o6 = [0.0f32; 6];
        let e = k.rms_norm(&x, &[1.0; 4], 1e-6, &mut o6).unwrap_err();
        assert!(
            matches!(e, KernelError::Invalid { op: "rms_norm", .. }),
            "{e}"
        );
        assert!(
            e.to_string().contains('6') && e.to_string().contains('4'),
            "{e}"
        );
        assert!(k.rms_norm(&x, &[1.0; 3], 1e-6, &mut o4).is_err());
        assert!(k
            .layer_norm(&x, &[1.0; 3], &[1.0; 2], 1e-6, &mut o6)
            .is_err());
        assert!(k.softmax(&x, 4, 1.0, None, &mut o6).is_err());
        assert!(k.softmax(&x, 0, 1.0, None, &mut o6).is_err());
        assert!(k.softmax(&[], 0, 1.0, None, &mut []).is_ok());
        assert!(k.normalize_rows(&x, 4, 1e-6, &mut o6).is_err());
        let mut xr = [0.0f32; 8];
        assert!(
            k.rope_half(&mut xr, 1, 3, &[1.0], &[0.0]).is_err(),
            "odd head_dim"
        );
        assert!(
            k.rope_half(&mut xr, 2, 4, &[1.0; 3], &[0.0; 4]).is_err(),
            "cos length"
        );
        assert!(k.rope_half(&mut xr, 2, 4, &[1.0; 2], &[0.0; 2]).is_ok());
        // heads·head_dim wrapping around to 2 must not pass as a row length of 2
        let huge = (usize::MAX / 2) + 2;
        assert!(
            k.rope_half(&mut xr[..2], huge, 2, &[1.0], &[0.0]).is_err(),
            "overflow"
        );
        let mut d6 = [0.0f32; 6];
        assert!(k
            .rms_norm_backward(&x, &[1.0; 3], 1e-6, &x[..3], &mut d6, &mut [0.0; 3])
            .is_err());
        assert!(k
            .rms_norm_backward(&x, &[1.0; 3], 1e-6, &x, &mut d6, &mut [0.0; 2])
            .is_err());
        assert!(k
            .layer_norm_backward(
                &x,
                &[1.0; 3],
                1e-6,
                &x,
                &mut d6,
                &mut [0.0; 3],
                &mut [0.0; 2]
            )
            .is_err());
        assert!(k.softmax_backward(&x, 4, &x, &mut d6).is_err());
        assert!(k.normalize_backward(&x, 1e-6, &x[..5], &mut d6).is_err());
        assert!(k.silu_backward(&x, &x, &mut o4).is_err());
        assert!(k.swiglu_backward(&x, &x, &x, &mut d6, &mut o4).is_err());
    }
}

/// Forcing a level with Kernels::new works for every level the host has, and fails with a message for
/// the others.
#[test]
fn forcing_levels() {
    let avail: Vec<Isa> = levels().iter().map(|k| k.isa()).collect();
    for isa in Isa::ALL {
        match Kernels::new(isa) {
            Ok(k) => {
                assert!(avail.contains(&isa));
                assert_eq!(k.isa(), isa);
                let mut out = [0.0f32; 17];
                k.silu(&[1.0; 17], &mut out).unwrap();
                assert!((out[16] - 0.731_058_6).abs() < 1e-6, "silu(1) at {isa}");
            }
            Err(e) => {
                assert!(
                    !avail.contains(&isa),
                    "{isa} is available but Kernels::new failed: {e}"
                );
                assert!(e.to_string().contains(isa.name()), "{e}");
            }
        }
    }
}

/// Elementwise and row-wise ops split large inputs over the pool; every element (or row) is computed as
/// in one call, so 2 and 3 threads give bit for bit the 1-thread result, at every level, on sizes around
/// the threading threshold (64K elements) and odd splits.
#[test]
fn threaded_ops_equal_one_thread() {
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    for k0 in levels() {
        let lv = k0.isa().name();
        let one = k0.with_threads(1);
        for kt in [k0.with_threads(2), k0.with_threads(3)] {
            // (rows, n): 65536 + 37 elements as one row; rows of 1024 around the threshold; odd rows.
            for (rows, n) in [
                (1usize, 65_573usize),
                (63, 1024),
                (64, 1024),
                (129, 1030),
                (3, 40_000),
            ] {
                let len = rows * n;
                let mut g = Rng::new(len as u64);
                let a = g.vec(len, -4.0, 4.0);
                let b = g.vec(len, -4.0, 4.0);
                let w = g.vec(n, 0.5, 1.5);
                let bias = g.vec(n, -0.5, 0.5);
                let run = |k: &Kernels| {
                    let mut outs: Vec<Vec<u32>> = Vec::new();
                    let mut o = vec![0.0f32; len];
                    k.add(&a, &b, &mut o).unwrap();
                    outs.push(bits(&o));
                    let mut acc = a.clone();
                    k.add_assign(&mut acc, &b).unwrap();
                    k.mul_assign(&mut acc, &b).unwrap();
                    k.scale_assign(&mut acc, 0.37);
                    outs.push(bits(&acc));
                    k.gelu_tanh(&a, &mut o).unwrap();
                    outs.push(bits(&o));
                    let mut x = a.clone();
                    k.gelu_erf_assign(&mut x);
                    k.silu_assign(&mut x);
                    outs.push(bits(&x));
                    k.swiglu(&a, &b, &mut o).unwrap();
                    outs.push(bits(&o));
                    k.rms_norm(&a, &w, 1e-6, &mut o).unwrap();
                    outs.push(bits(&o));
                    k.layer_norm(&a, &w, &bias, 1e-6, &mut o).unwrap();
                    outs.push(bits(&o));
                    let mut x = a.clone();
                    k.layer_norm_assign(&mut x, &w, &bias, 1e-6).unwrap();
                    k.normalize_rows_assign(&mut x, n, 1e-12).unwrap();
                    outs.push(bits(&x));
                    if n % 2 == 0 {
                        let mut x = a.clone();
                        let cs = &b[..rows * n / 2];
                        k.rope_half(&mut x, 1, n, cs, cs).unwrap();
                        outs.push(bits(&x));
                    }
                    let mut h = vec![0u16; len];
                    k.f32_to_bf16(&a, &mut h).unwrap();
                    k.bf16_to_f32(&h, &mut o).unwrap();
                    outs.push(bits(&o));
                    outs
                };
                let (want, got) = (run(&one), run(&kt));
                for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        w == g,
                        "[{lv}] {} threads, ({rows}, {n}): op #{i} differs",
                        kt.threads()
                    );
                }
            }
        }
    }
}

/// rope_half_rows is rope_half applied to each strided row (bit for bit, any thread count), leaves the
/// elements between rows alone, and refuses shapes that do not fit.
#[test]
fn rope_half_rows_is_rope_half_per_row() {
    for k0 in levels() {
        let lv = k0.isa().name();
        for k in [k0.with_threads(1), k0.with_threads(2)] {
            // (rows, heads, hd, stride): vision-like q|k heads of a fused qkv row; small; threaded.
            for (rows, heads, hd, stride) in [
                (1usize, 1usize, 2usize, 2usize),
                (5, 3, 30, 97),
                (600, 8, 64, 1536),
            ] {
                let mut g = Rng::new((rows * heads * hd) as u64);
                let x = g.vec(rows * stride, -3.0, 3.0);
                let ang = g.vec(rows * hd / 2, -3.2, 3.2);
                let cos: Vec<f32> = ang.iter().map(|a| a.cos()).collect();
                let sin: Vec<f32> = ang.iter().map(|a| a.sin()).collect();
                let mut got = x.clone();
                k.rope_half_rows(&mut got, stride, rows, heads, hd, &cos, &sin)
                    .unwrap();
                let mut want = x.clone();
                for r in 0..rows {
                    let h = hd / 2;
                    let row = &mut want[r * stride..r * stride + heads * hd];
                    k.rope_half(
                        row,
                        heads,
                        hd,
                        &cos[r * h..(r + 1) * h],
                        &sin[r * h..(r + 1) * h],
                    )
                    .unwrap();
                }
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "[{lv}] {} threads rows={rows} heads={heads} hd={hd} stride={stride}",
                    k.threads()
                );
                assert_ne!(got, x, "[{lv}] rows were rotated");
            }
        }
        let mut x = vec![0.0f32; 100];
        let cs = vec![1.0f32; 8];
        let e = k0
            .rope_half_rows(&mut x, 31, 4, 2, 4, &cs, &cs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("rope_half_rows") && e.contains("4 rows"), "{e}");
        assert!(
            k0.rope_half_rows(&mut x, 6, 4, 2, 4, &cs, &cs).is_err(),
            "stride < row"
        );
        assert!(
            k0.rope_half_rows(&mut x, 8, 4, 2, 3, &cs, &cs).is_err(),
            "odd head_dim"
        );
        assert!(
            k0.rope_half_rows(&mut x, 8, 4, 2, 4, &cs[..7], &cs)
                .is_err(),
            "short cos"
        );
        assert!(k0.rope_half_rows(&mut x, 8, 4, 2, 4, &cs, &cs).is_ok());
    }
}

/// The maps store whole vectors from the first vector-aligned element of their output (a partial vector
/// before it): wherever the output starts, every element is bit-identical to an aligned output's, for
/// lane-wise ops and row kernels alike.
#[test]
fn outputs_at_every_alignment() {
    type Op = fn(&Kernels, &[f32], &[f32], &mut [f32]);
    let ops: [(&str, Op); 7] = [
        ("relu", |k, x, _, o| k.relu(x, o).unwrap()),
        ("silu", |k, x, _, o| k.silu(x, o).unwrap()),
        ("gelu_erf", |k, x, _, o| k.gelu_erf(x, o).unwrap()),
        ("swiglu", |k, x, y, o| k.swiglu(x, y, o).unwrap()),
        ("scale", |k, x, _, o| k.scale(x, 0.3, o).unwrap()),
        ("rms_norm", |k, x, w, o| {
            k.rms_norm(x, &w[..x.len() / 3], 1e-6, o).unwrap()
        }),
        ("softmax_backward", |k, x, y, o| {
            k.softmax_backward(x, x.len() / 3, y, o).unwrap()
        }),
    ];
    for k in levels() {
        for n in [3, 15, 51, 99] {
            let mut g = Rng::new(n as u64);
            let (x, y) = (g.vec(n, -5.0, 5.0), g.vec(n, -5.0, 5.0));
            // a 64-byte-aligned run of 64 + n floats to take outputs from at every offset
            let mut buf = vec![0.0f32; 2 * 16 + 64 + n];
            let base = (16 - buf.as_ptr() as usize % 64 / 4) % 16;
            for (name, op) in ops {
                let mut want = vec![0.0f32; n];
                let aligned = &mut buf[base..base + n];
                op(&k, &x, &y, aligned);
                want.copy_from_slice(aligned);
                for off in 1..17 {
                    let out = &mut buf[base + off..base + off + n];
                    out.fill(f32::NAN);
                    op(&k, &x, &y, out);
                    for i in 0..n {
                        assert_eq!(
                            out[i].to_bits(),
                            want[i].to_bits(),
                            "{name} [{}] n={n} output offset {off}: element {i}",
                            k.isa().name()
                        );
                    }
                }
            }
        }
    }
}

/// Maps of at least `STREAM_MIN` elements prefetch ahead while they run (`simd::kernels::Ahead::stream`):
/// the same values as the same level on short pieces, bit for bit (lane-wise arithmetic), for a unary, a
/// binary and a ternary map, out of place from a misaligned output and in place, on one thread (so the
/// whole length reaches one kernel call).
#[test]
fn long_maps_equal_short_pieces() {
    use qwen3vl_kernels::simd::kernels::STREAM_MIN;
    let n = STREAM_MIN + 17;
    let piece = 1000;
    let mut g = Rng::new(5);
    let (a, b, c) = (
        g.vec(n, -9.0, 9.0),
        g.vec(n, -9.0, 9.0),
        g.vec(n, -2.0, 2.0),
    );
    for k in levels() {
        let k = k.with_threads(1);
        let lv = k.isa().name();
        // out at an odd offset: the maps start with a partial vector up to an aligned element
        let mut buf = vec![0.0f32; n + 1];
        let (mut want, mut want2) = (vec![0.0f32; n], vec![0.0f32; n]);
        for s in (0..n).step_by(piece) {
            let e = (s + piece).min(n);
            k.silu(&a[s..e], &mut want[s..e]).unwrap();
        }
        k.silu(&a, &mut buf[1..]).unwrap();
        check("silu (long)", lv, n, &buf[1..], &f64s(&want), EXACT);
        let mut inplace = a.clone();
        k.silu_assign(&mut inplace);
        check("silu_assign (long)", lv, n, &inplace, &f64s(&want), EXACT);

        for s in (0..n).step_by(piece) {
            let e = (s + piece).min(n);
            k.swiglu(&a[s..e], &b[s..e], &mut want[s..e]).unwrap();
        }
        k.swiglu(&a, &b, &mut buf[1..]).unwrap();
        check("swiglu (long)", lv, n, &buf[1..], &f64s(&want), EXACT);

        for s in (0..n).step_by(piece) {
            let e = (s + piece).min(n);
            k.swiglu_backward(
                &a[s..e],
                &b[s..e],
                &c[s..e],
                &mut want[s..e],
                &mut want2[s..e],
            )
            .unwrap();
        }
        let (mut dg, mut du) = (vec![0.0f32; n], vec![0.0f32; n]);
        k.swiglu_backward(&a, &b, &c, &mut dg, &mut du).unwrap();
        check(
            "swiglu_backward dgate (long)",
            lv,
            n,
            &dg,
            &f64s(&want),
            EXACT,
        );
        check(
            "swiglu_backward dup (long)",
            lv,
            n,
            &du,
            &f64s(&want2),
            EXACT,
        );
    }
}
