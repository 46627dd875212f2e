//! q4 (4-bit values, byte scale and min per sub-block of 32, f32 (d, dmin) per super-block of 256; int8
//! activations): the quantizer against f64 and a plain min/max reference, and every level of the matmul on
//! the host against the scalar twin and f64 on awkward shapes.
//!
//! Bounds, per output y[i][c] = Σ_sb (d·dx_sb·Σ_j sc_j·s_j − Σ_j dmin·mn_j·sx_j) (s_j the exact integer dot
//! product of sub-block j, dx one activation scale per super-block):
//! - against the f64 value of that sum: |y − ref| ≤ (2·nb + 32) · 2^-24 · Σ |terms| (+ bias): the integer
//!   sums are exact at every level; the scale products and the f32 accumulation order differ (and with
//!   integer operands every kernel is exact: tested too);
//! - against the f64 product of the unquantized x and W: w·x − ŵ·x̂ = (w − ŵ)·x + ŵ·(x − x̂), so
//!   |y − x·w| ≤ Σ |w − ŵ|·|x| + Σ |ŵ|·dx·(1/2 + 2^-15), plus the above.

mod common;

use common::{levels, Rng};
use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::quant::{
    scalar, QuantFormat, QuantKernel, QuantWeight, Q4_SUBS, Q4_SUPER, Q4_SUPER_BYTES,
};
use qwen3vl_kernels::Kernels;

const B: usize = 32;

/// Normal-ish values (sum of uniforms) with an occasional outlier, like trained weights.
fn weights(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let v: f32 = (0..4).map(|_| rng.f32(-1.0, 1.0)).sum::<f32>() * 0.5;
            let v = if i % 97 == 13 { v * 6.0 } else { v };
            v * scale
        })
        .collect()
}

/// The error of plain min/max rounding of one sub-block in f64 (grid [min(x, 0), max x], 15 steps): the
/// reference the fitted (scale, min) must not be worse than.
fn minmax_sq_err(x: &[f32]) -> f64 {
    let lo = x.iter().fold(0f64, |a, &v| a.min(v as f64));
    let hi = x.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64));
    if x.is_empty() || hi <= lo {
        return 0.0;
    }
    let s = (hi - lo) / 15.0;
    x.iter()
        .map(|&v| {
            let l = ((v as f64 - lo) / s).round().clamp(0.0, 15.0);
            (l * s + lo - v as f64).powi(2)
        })
        .sum()
}

#[test]
fn q4_format_sizes() {
    let f = QuantFormat::Q4;
    assert_eq!(QuantFormat::parse("q4"), Some(f));
    assert_eq!((f.block(), f.padded(1), f.padded(257)), (256, 256, 512));
    assert_eq!((f.row_bytes(256), f.row_scales(256)), (144, 2));
    assert_eq!((f.row_bytes(300), f.row_scales(300)), (288, 4));
    assert_eq!(f.bits_per_weight(), 4.75);
    assert_eq!(QuantFormat::Q8.bits_per_weight(), 9.0);
}

#[test]
fn q4_quantizer_round_trip_against_f64_and_min_max() {
    let mut rng = Rng::new(21);
    let (mut fit_sq, mut ref_sq) = (0f64, 0f64);
    for k in [1, 2, 15, 17, 31, 32, 33, 255, 256, 257, 1023] {
        for scale in [1e-30f32, 1e-6, 1.0, 3e4, 1e30] {
            let x = weights(&mut rng, k, scale);
            let nsb = k.div_ceil(Q4_SUPER);
            let (mut q, mut d) = (vec![0xAAu8; nsb * Q4_SUPER_BYTES], vec![-1f32; 2 * nsb]);
            scalar::quantize_row_q4(&x, &mut q, &mut d);
            let mut deq = vec![0f32; k];
            scalar::dequantize_row_q4(&q, &d, &mut deq);
            for sb in 0..nsb {
                let (ds, dm) = (d[2 * sb] as f64, d[2 * sb + 1] as f64);
                assert!(ds.is_finite() && ds >= 0.0 && dm.is_finite() && dm >= 0.0);
                let qb = &q[sb * Q4_SUPER_BYTES..(sb + 1) * Q4_SUPER_BYTES];
                for j in 0..Q4_SUBS {
                    let (s, m) = (ds * qb[j] as f64, dm * qb[Q4_SUBS + j] as f64);
                    let t0 = sb * Q4_SUPER + j * B;
                    let xs = &x[t0.min(k)..(t0 + B).min(k)];
                    let mut sq = 0f64;
                    for t in 0..B {
                        let l = (qb[2 * Q4_SUBS + j * 16 + t % 16] >> (4 * (t / 16))) & 15;
                        match xs.get(t) {
                            None => assert_eq!(l, 0, "k {k}: padding of sub-block {j} not zero"),
                            Some(&v) => {
                                // the dequantized value is (d·sc)·L − dmin·mn, within f32 rounding
                                let want = s * l as f64 - m;
                                let got = deq[t0 + t] as f64;
                                assert!(
                                    (got - want).abs() <= 2f64.powi(-22) * (s * 15.0 + m),
                                    "k {k}: dequantized {got} vs f64 {want}"
                                );
                                sq += (v as f64 - want).powi(2);
                            }
                        }
                    }
                    if xs.is_empty() {
                        assert_eq!((qb[j], qb[Q4_SUBS + j]), (0, 0), "k {k}: empty sub-block");
                        continue;
                    }
                    // the fit is never worse than min/max rounding; storing its scale and min as bytes
                    // moves each value by at most 15·d/2 + dmin/2 (then rounded again, only closer)
                    let rms = (sq / xs.len() as f64).sqrt();
                    let ref_rms = (minmax_sq_err(xs) / xs.len() as f64).sqrt();
                    let lo = xs.iter().fold(0f64, |a, &v| a.min(v as f64));
                    let hi = xs.iter().fold(0f64, |a, &v| a.max(v as f64));
                    let tol = ref_rms + 7.5 * ds + 0.5 * dm + 1e-5 * (hi - lo) + 1e-300;
                    assert!(
                        rms <= tol,
                        "k {k} scale {scale} sub-block {sb}.{j}: rms {rms:e} > {tol:e} (min/max {ref_rms:e})"
                    );
                    if scale == 1.0 {
                        fit_sq += sq;
                        ref_sq += minmax_sq_err(xs);
                    }
                }
            }
        }
    }
    // and on these weights the fit is clearly better than min/max rounding overall
    println!("q4 squared error: fitted {fit_sq:e}, min/max {ref_sq:e}");
    assert!(fit_sq < 0.9 * ref_sq, "fitted {fit_sq} vs min/max {ref_sq}");
}

#[test]
fn q4_quantizer_special_blocks() {
    // all-zero and constant super-blocks are exact; a NaN or inf makes its super-block's d NaN
    let mut x = vec![0f32; 4 * Q4_SUPER];
    x[Q4_SUPER..2 * Q4_SUPER].fill(-0.75);
    x[2 * Q4_SUPER..3 * Q4_SUPER].fill(2.0);
    x[3 * Q4_SUPER + 5] = f32::INFINITY;
    let (mut q, mut d) = (vec![0u8; 4 * Q4_SUPER_BYTES], vec![0f32; 8]);
    scalar::quantize_row_q4(&x, &mut q, &mut d);
    assert_eq!((d[0], d[1]), (0.0, 0.0));
    assert!(d[6].is_nan(), "{}", d[6]);
    let mut deq = vec![0f32; 3 * Q4_SUPER];
    scalar::dequantize_row_q4(&q, &d[..6], &mut deq);
    for (t, (&a, &b)) in x.iter().zip(&deq).enumerate() {
        assert!((a - b).abs() <= 1e-6, "{t}: {a} -> {b}");
    }
}

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
    let (n, k, nb) = (w.n(), w.k(), w.blocks());
    let (kp, nsb) = (nb * B, nb / Q4_SUBS);
    let xa = kern.quantize_rows_a8(x, m, k);
    let (qs, wd) = (w.qs_bytes(), w.scales());
    let rb = QuantFormat::Q4.row_bytes(k);
    let mut deq = vec![0f32; n * k];
    for c in 0..n {
        w.row_f32(c, &mut deq[c * k..(c + 1) * k]).unwrap();
    }
    let mut r = Ref {
        exact_q: vec![0.0; m * n],
        mag_q: vec![0.0; m * n],
        float: vec![0.0; m * n],
        qbound: vec![0.0; m * n],
    };
    for i in 0..m {
        for c in 0..n {
            let (mut e, mut mag) = (0f64, 0f64);
            for sb in 0..nsb {
                let qb = &qs[c * rb + sb * Q4_SUPER_BYTES..];
                let mut sumi = 0i64;
                for j in 0..Q4_SUBS {
                    let b = sb * Q4_SUBS + j;
                    let s: i64 = (0..B)
                        .map(|t| {
                            let l = (qb[2 * Q4_SUBS + j * 16 + t % 16] >> (4 * (t / 16))) & 15;
                            l as i64 * xa.q[i * kp + b * B + t] as i64
                        })
                        .sum();
                    sumi += qb[j] as i64 * s;
                    let min = wd[c * 2 * nsb + 2 * sb + 1] as f64 * qb[Q4_SUBS + j] as f64;
                    let t2 = min * xa.s[i * nb + b] as f64;
                    e -= t2;
                    mag += t2.abs();
                }
                let t1 = wd[c * 2 * nsb + 2 * sb] as f64 * xa.d[i * nsb + sb] as f64 * sumi as f64;
                e += t1;
                mag += t1.abs();
            }
            let (mut f, mut qb) = (0f64, 0f64);
            for t in 0..k {
                let (xv, wv, wq) = (
                    x[i * k + t] as f64,
                    wf[c * k + t] as f64,
                    deq[c * k + t] as f64,
                );
                f += xv * wv;
                let dx = xa.d[i * nsb + t / Q4_SUPER] as f64;
                qb += (wv - wq).abs() * xv.abs() + wq.abs() * dx * (0.5 + 2f64.powi(-15));
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
    let acc = (2 * nb + 32) as f64 * 2f64.powi(-24);
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

/// The awkward shapes: every m of decode (1..=9) against n 1/15/17 and k off the super-block, and a few
/// larger or degenerate ones.
fn shapes() -> Vec<(usize, usize, usize)> {
    let mut v = vec![
        (1, 1, 1),
        (1, 65, 31),
        (3, 65, 100),
        (17, 65, 1023),
        (17, 1, 256),
        (2, 130, 2048),
        (65, 7, 47),
        (5, 3, 0),
        (3, 0, 300),
    ];
    for m in 1..=9 {
        for (t, n) in [1, 15, 17].into_iter().enumerate() {
            v.push((m, n, [33, 300, 513, 700][(m + t) % 4]));
        }
    }
    v
}

#[test]
fn q4_matmul_every_level_against_scalar_and_f64() {
    let mut rng = Rng::new(23);
    let scalar_k = common::scalar();
    for (m, n, k) in shapes() {
        let x = rng.vec(m * k, -2.0, 2.0);
        let wf = weights(&mut rng, n * k, 0.05);
        let bias = rng.vec(n, -1.0, 1.0);
        let w = scalar_k
            .quantize_weight(QuantFormat::Q4, Weight::F32(&wf), n, k)
            .unwrap();
        for b in [None, Some(&bias[..])] {
            let r = reference(&scalar_k, &x, &wf, &w, b, m);
            let mut ys = vec![f32::NAN; m * n];
            scalar_k.matmul_quant(&x, m, &w, b, &mut ys).unwrap();
            check_level(&scalar_k, "scalar", &ys, &r, w.blocks());
            for kern in levels() {
                // the weight quantized at this level is the same bytes (one quantizer)
                let wl = kern
                    .quantize_weight(QuantFormat::Q4, Weight::F32(&wf), n, k)
                    .unwrap();
                assert_eq!(wl.qs_bytes(), w.qs_bytes());
                assert_eq!(wl.scales(), w.scales());
                for qk in kern.quant_kernels() {
                    for threads in [1, 2] {
                        let kk = kern.with_threads(threads);
                        let mut y = vec![f32::NAN; m * n];
                        kk.matmul_quant_with(qk, &x, m, &wl, b, &mut y).unwrap();
                        let what = format!(
                            "{qk}: m {m} n {n} k {k} bias {} threads {threads}",
                            b.is_some()
                        );
                        check_level(&kk, &what, &y, &r, w.blocks());
                    }
                }
            }
        }
    }
}

#[test]
fn q4_matmul_integer_operands_are_exact_at_every_kernel() {
    // d = dmin = 1, small byte scales and mins, activations integers with 127 in every super-block (so
    // dx = 1, q = x, s_x = Σx): every term and partial sum is an integer below 2^24, so every kernel's
    // f32 result must equal the exact integer
    let mut rng = Rng::new(29);
    let f = QuantFormat::Q4;
    for (m, n, k) in [(1, 17, 300), (4, 15, 513), (9, 5, 700), (3, 6, 2048)] {
        let (rb, nsb) = (f.row_bytes(k), k.div_ceil(Q4_SUPER));
        let mut qs: Vec<u8> = (0..n * rb).map(|_| (rng.next_u64() >> 32) as u8).collect();
        for c in 0..n {
            for sb in 0..nsb {
                let o = c * rb + sb * Q4_SUPER_BYTES;
                for b in &mut qs[o..o + 2 * Q4_SUBS] {
                    *b %= 4;
                }
                // values past k are zero in a quantized row
                for t in k.max(sb * Q4_SUPER)..(sb + 1) * Q4_SUPER {
                    let (j, u) = ((t % Q4_SUPER) / B, t % B);
                    qs[o + 2 * Q4_SUBS + j * 16 + u % 16] &= if u < 16 { 0xf0 } else { 0x0f };
                }
            }
        }
        let w = QuantWeight::from_parts(f, n, k, &qs, &vec![1.0; n * 2 * nsb]).unwrap();
        let x: Vec<f32> = (0..m * k)
            .map(|i| {
                if (i % k) % Q4_SUPER == 0 {
                    127.0
                } else {
                    ((rng.next_u64() >> 32) % 255) as f32 - 127.0
                }
            })
            .collect();
        let mut deq = vec![0f32; k];
        let mut want = vec![0f64; m * n];
        for c in 0..n {
            w.row_f32(c, &mut deq).unwrap();
            for i in 0..m {
                let (mut e, mut mag) = (0f64, 0f64);
                for t in 0..k {
                    e += deq[t] as f64 * x[i * k + t] as f64;
                    mag += (deq[t] as f64 * x[i * k + t] as f64).abs();
                }
                assert!(mag < (1 << 24) as f64, "test precondition: {mag}");
                want[i * n + c] = e;
            }
        }
        for kern in levels().into_iter().chain([common::scalar()]) {
            for qk in kern.quant_kernels() {
                let mut y = vec![f32::NAN; m * n];
                kern.matmul_quant_with(qk, &x, m, &w, None, &mut y).unwrap();
                for (j, (&v, &e)) in y.iter().zip(&want).enumerate() {
                    assert_eq!(v as f64, e, "{qk}: m {m} n {n} k {k}: y[{j}]");
                }
            }
        }
    }
}

#[test]
fn q4_matmul_rejects_a_kernel_of_another_level() {
    let f = QuantFormat::Q4;
    let w = QuantWeight::from_parts(f, 1, 32, &[0; 144], &[0.0; 2]).unwrap();
    let mut y = [0f32];
    let e = common::scalar()
        .matmul_quant_with(QuantKernel::Avx2, &[0.0; 32], 1, &w, None, &mut y)
        .unwrap_err();
    assert!(e.to_string().contains("kernel avx2 is not one of"), "{e}");
    for kern in levels() {
        assert_eq!(kern.quant_kernels().last(), Some(&kern.quant_kernel()));
        assert!(kern.quant_kernels().iter().all(|q| q.isa() == kern.isa()));
    }
}

#[test]
fn q4_matmul_extreme_values_do_not_overflow() {
    // every stored byte 0xff (L = 15, sc = mn = 255) with d = dmin = 1: w = 255·15 − 255 = 3570, against
    // activations at ±127 (|u8 × s8 pair| = 2·15·127 stays inside pmaddubsw's i16)
    let (n, k, m): (usize, usize, usize) = (5, 300, 3);
    let f = QuantFormat::Q4;
    let qs = vec![0xffu8; n * f.row_bytes(k)];
    let w = QuantWeight::from_parts(f, n, k, &qs, &vec![1.0; n * f.row_scales(k)]).unwrap();
    let x: Vec<f32> = (0..m * k)
        .map(|i| if i % 3 == 0 { -1.0 } else { 1.0 })
        .collect();
    for (kern, qk) in levels()
        .into_iter()
        .chain([common::scalar()])
        .flat_map(|k| k.quant_kernels().into_iter().map(move |q| (k, q)))
    {
        let mut y = vec![0f32; m * n];
        kern.matmul_quant_with(qk, &x, m, &w, None, &mut y).unwrap();
        for i in 0..m {
            let want: f64 = (0..k).map(|t| 3570.0 * x[i * k + t] as f64).sum();
            for c in 0..n {
                let got = y[i * n + c] as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * 3570.0 * k as f64,
                    "{qk}: row {i} col {c}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn q4_stored_parts_are_checked() {
    let f = QuantFormat::Q4;
    let (n, k) = (3, 300);
    let (rb, ns) = (f.row_bytes(k), f.row_scales(k));
    let qs = vec![0x11u8; n * rb];
    let d = vec![0.5f32; n * ns];
    let w = QuantWeight::from_parts(f, n, k, &qs, &d).unwrap();
    assert_eq!((w.blocks(), w.qs_bytes().len()), (16, n * rb));
    // a block count off by one (values or scales), then NaN / inf / negative scales and mins
    let e = QuantWeight::from_parts(f, n, k, &qs[..n * rb - 144], &d)
        .err()
        .unwrap();
    assert!(e.to_string().contains("values"), "{e}");
    let e = QuantWeight::from_parts(f, n, k, &qs, &d[..n * ns - 1])
        .err()
        .unwrap();
    assert!(e.to_string().contains("scales"), "{e}");
    for bad in [f32::NAN, f32::NEG_INFINITY, -1.0] {
        let mut dd = d.clone();
        dd[ns + 3] = bad;
        let e = QuantWeight::from_parts(f, n, k, &qs, &dd).err().unwrap();
        assert!(
            e.to_string().contains("min scale of row 1 super-block 1"),
            "{e}"
        );
        dd[ns + 3] = 0.5;
        dd[2 * ns] = bad;
        let e = QuantWeight::from_parts(f, n, k, &qs, &dd).err().unwrap();
        assert!(
            e.to_string().contains("scale of row 2 super-block 0"),
            "{e}"
        );
    }
    // the dequantized row of stored bytes: L = 1, sc = mn = 0x11 = 17 -> 0.5·17·1 − 0.5·17 = 0
    let mut row = vec![1f32; k];
    w.row_f32(1, &mut row).unwrap();
    assert!(row.iter().all(|&v| v == 0.0), "{row:?}");
}

/// Bytes held in a Vec from a 64-byte boundary: the test's stand-in for a checkpoint's mapping.
struct Held(Vec<u8>, usize);
// Safety: the Vec is never modified or moved out while the value lives.
unsafe impl qwen3vl_kernels::matmul::StableBytes for Held {
    fn bytes(&self) -> &[u8] {
        &self.0[self.1..]
    }
}

/// A weight over stored bytes in place: the same values, scales and products as the copied one; the
/// scales are checked as for a copy; a range past the end or off a 64-byte boundary is refused (the
/// loader then copies).
#[test]
fn stored_parts_in_place() {
    use std::sync::Arc;
    for f in QuantFormat::ALL {
        let (n, k) = (5, 300);
        let (rb, ns) = (f.row_bytes(k), f.row_scales(k));
        let qs: Vec<u8> = (0..n * rb).map(|i| (i * 37 % 256) as u8).collect();
        let d: Vec<f32> = (0..n * ns).map(|i| 0.01 + (i % 7) as f32 * 0.003).collect();
        // values at 0, scales at the next 64-byte boundary
        let d_at = (n * rb).div_ceil(64) * 64;
        let held = |d: &[f32]| -> Arc<dyn qwen3vl_kernels::matmul::StableBytes> {
            let mut v = vec![0u8; d_at + d.len() * 4 + 128];
            let skip = v.as_ptr().align_offset(64);
            v[skip..skip + qs.len()].copy_from_slice(&qs);
            for (i, x) in d.iter().enumerate() {
                v[skip + d_at + 4 * i..skip + d_at + 4 * i + 4].copy_from_slice(&x.to_le_bytes());
            }
            Arc::new(Held(v, skip))
        };
        let owner = held(&d);
        let w =
            QuantWeight::from_shared(f, n, k, (owner.clone(), 0), (owner.clone(), d_at)).unwrap();
        let c = QuantWeight::from_parts(f, n, k, &qs, &d).unwrap();
        assert!(w.is_shared() && !c.is_shared());
        assert_eq!(
            (w.qs_bytes(), w.scales()),
            (c.qs_bytes(), c.scales()),
            "{f}"
        );
        assert_eq!(
            w.qs_bytes().as_ptr(),
            owner.bytes().as_ptr(),
            "{f}: not in place"
        );
        let kern = Kernels::detect().unwrap();
        let x: Vec<f32> = (0..3 * k).map(|i| (i % 11) as f32 - 5.0).collect();
        let (mut y1, mut y2) = (vec![0f32; 3 * n], vec![0f32; 3 * n]);
        kern.matmul_quant(&x, 3, &w, None, &mut y1).unwrap();
        kern.matmul_quant(&x, 3, &c, None, &mut y2).unwrap();
        assert_eq!(y1, y2, "{f}");
        // a bad scale, a misaligned or short range
        let mut bad = d.clone();
        bad[ns + 1] = f32::NAN;
        let o = held(&bad);
        let e = QuantWeight::from_shared(f, n, k, (o.clone(), 0), (o, d_at))
            .err()
            .unwrap();
        assert!(e.to_string().contains("row 1"), "{f}: {e}");
        let e = QuantWeight::from_shared(f, n, k, (owner.clone(), 4), (owner.clone(), d_at))
            .err()
            .unwrap();
        assert!(e.to_string().contains("aligned"), "{f}: {e}");
        let e = QuantWeight::from_shared(f, n, k, (owner.clone(), 0), (owner.clone(), d_at + 256))
            .err()
            .unwrap();
        assert!(e.to_string().contains("past the end"), "{f}: {e}");
    }
}
