//! Backward kernels (vector-Jacobian products): every level against the scalar twin on the awkward sizes,
//! and the twin and every level against central finite differences of an f64 forward pass.

mod common;
use common::*;
use qwen3vl_kernels::Kernels;

const C: f64 = 0.797_884_560_802_865_4;

fn gelu_tanh64(x: f64) -> f64 {
    0.5 * x * (1.0 + (C * (x + 0.044715 * x * x * x)).tanh())
}
fn gelu_erf64(x: f64) -> f64 {
    x * 0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
}
fn silu64(x: f64) -> f64 {
    x / (1.0 + (-x).exp())
}

/// Central difference of f at x in f64.
fn fd(f: impl Fn(f64) -> f64, x: f64) -> f64 {
    let h = 1e-5 * x.abs().max(1.0);
    (f(x + h) - f(x - h)) / (2.0 * h)
}

/// |got - want| <= rel·|want| + abs_frac·max|want| (the f32 kernels against an f64 finite difference).
fn check_fd(op: &str, level: &str, n: usize, got: &[f32], want: &[f64], rel: f64, abs_frac: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    check_fd_abs(op, level, n, got, want, rel, abs_frac * scale)
}

/// |got - want| <= rel·|want| + abs.
fn check_fd_abs(op: &str, level: &str, n: usize, got: &[f32], want: &[f64], rel: f64, abs: f64) {
    let scale = abs;
    let mut worst = (0.0f64, 0usize);
    for i in 0..got.len() {
        let e = (got[i] as f64 - want[i]).abs() / (rel * want[i].abs() + scale + 1e-9);
        if e > worst.0 || e.is_nan() {
            worst = (e, i);
        }
    }
    let i = worst.1;
    assert!(
        worst.0 <= 1.0,
        "{op} [{level}] n={n}: against finite differences, error {:.2}x the bound at index {i}: got {:e}, want {:e}",
        worst.0,
        got.get(i).copied().unwrap_or(0.0),
        want.get(i).copied().unwrap_or(0.0)
    );
}

type Grad = fn(&Kernels, &[f32], &[f32], &mut [f32]);
type GradCase = (&'static str, Grad, fn(f64) -> f64);

/// Elementwise activation gradients: each level against the twin (f64 formulas): ≤ 8 ULP + 2^-22·|dy|
/// (the derivative is a difference of terms near x ≈ −1..−3); against finite differences, 1e-4 relative.
#[test]
fn activation_grads() {
    let cases: [GradCase; 4] = [
        (
            "gelu_tanh_backward",
            |k, x, d, o| k.gelu_tanh_backward(x, d, o).unwrap(),
            gelu_tanh64,
        ),
        (
            "gelu_erf_backward",
            |k, x, d, o| k.gelu_erf_backward(x, d, o).unwrap(),
            gelu_erf64,
        ),
        (
            "silu_backward",
            |k, x, d, o| k.silu_backward(x, d, o).unwrap(),
            silu64,
        ),
        (
            "relu_backward",
            |k, x, d, o| k.relu_backward(x, d, o).unwrap(),
            |x| x.max(0.0),
        ),
    ];
    let r = scalar();
    for (name, op, f) in cases {
        for k in levels() {
            for &n in &SIZES {
                let mut g = Rng::new(n as u64 + 31);
                let mut x = g.vec(n, -8.0, 8.0);
                let dy = g.vec(n, -2.0, 2.0);
                for (i, v) in SPECIAL.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
                    if i < n / 2 {
                        x[i] = *v;
                    }
                }
                let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
                op(&k, &x, &dy, &mut got);
                op(&r, &x, &dy, &mut want);
                check(
                    name,
                    k.isa().name(),
                    n,
                    &got,
                    &f64s(&want),
                    Tol {
                        ulps: 8.0,
                        abs: 2f64.powi(-22) * 2.0,
                    },
                );
                // finite differences where the function is smooth and finite
                let idx: Vec<usize> = (0..n)
                    .filter(|&i| x[i].is_finite() && x[i].abs() < 1e3 && x[i].abs() > 1e-3)
                    .collect();
                let fdv: Vec<f64> = idx
                    .iter()
                    .map(|&i| dy[i] as f64 * fd(f, x[i] as f64))
                    .collect();
                let gv: Vec<f32> = idx.iter().map(|&i| got[i]).collect();
                check_fd(name, k.isa().name(), n, &gv, &fdv, 1e-4, 1e-6);
            }
        }
    }
}

/// swiglu_backward: against the twin ≤ 8 ULP + 2^-22·max; against finite differences 1e-4 relative.
#[test]
fn swiglu_grad() {
    let r = scalar();
    for k in levels() {
        for &n in &SIZES {
            let mut g = Rng::new(n as u64 + 41);
            let gate = g.vec(n, -8.0, 8.0);
            let up = g.vec(n, -2.0, 2.0);
            let dy = g.vec(n, -2.0, 2.0);
            let (mut dg, mut du, mut wg, mut wu) =
                (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            k.swiglu_backward(&gate, &up, &dy, &mut dg, &mut du)
                .unwrap();
            r.swiglu_backward(&gate, &up, &dy, &mut wg, &mut wu)
                .unwrap();
            let t = Tol {
                ulps: 8.0,
                abs: 2f64.powi(-22) * 4.0,
            };
            check(
                "swiglu_backward dgate",
                k.isa().name(),
                n,
                &dg,
                &f64s(&wg),
                t,
            );
            check("swiglu_backward dup", k.isa().name(), n, &du, &f64s(&wu), t);
            let fdg: Vec<f64> = (0..n)
                .map(|i| dy[i] as f64 * up[i] as f64 * fd(silu64, gate[i] as f64))
                .collect();
            let fdu: Vec<f64> = (0..n)
                .map(|i| dy[i] as f64 * silu64(gate[i] as f64))
                .collect();
            check_fd(
                "swiglu_backward dgate",
                k.isa().name(),
                n,
                &dg,
                &fdg,
                1e-4,
                1e-6,
            );
            check_fd(
                "swiglu_backward dup",
                k.isa().name(),
                n,
                &du,
                &fdu,
                1e-5,
                1e-7,
            );
        }
    }
}

// f64 forward passes of one row, for the finite differences.
fn rms64(x: &[f64], w: &[f64], eps: f64) -> Vec<f64> {
    let r = 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
    x.iter().zip(w).map(|(a, b)| a * r * b).collect()
}
fn ln64(x: &[f64], w: &[f64], b: &[f64], eps: f64) -> Vec<f64> {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|a| (a - m).powi(2)).sum::<f64>() / n;
    let r = 1.0 / (v + eps).sqrt();
    (0..x.len()).map(|i| (x[i] - m) * r * w[i] + b[i]).collect()
}
fn norm64(x: &[f64], eps: f64) -> Vec<f64> {
    let d = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps);
    x.iter().map(|v| v / d).collect()
}
fn softmax64(x: &[f64]) -> Vec<f64> {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    let e: Vec<f64> = x.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Over the rows of x (rows, n): max 1/rms, max 1/std, max 1/||x||.
fn row_scales(x: &[f32], n: usize) -> (f64, f64, f64) {
    let (mut a, mut b, mut c) = (0.0f64, 0.0f64, 0.0f64);
    for r in x.chunks(n) {
        let r64 = f64s(r);
        let ss: f64 = r64.iter().map(|v| v * v).sum();
        let m = r64.iter().sum::<f64>() / n as f64;
        let var = r64.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n as f64;
        a = a.max(1.0 / (ss / n as f64 + 1e-6).sqrt());
        b = b.max(1.0 / (var + 1e-5).sqrt());
        c = c.max(1.0 / ss.sqrt().max(1e-12));
    }
    (a, b, c)
}

/// ∂/∂x_i of L(x) = Σ_j dy_j·f(x)_j by central differences, for every i.
fn fd_vjp(x: &[f64], dy: &[f64], f: &dyn Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let loss = |x: &[f64]| f(x).iter().zip(dy).map(|(a, b)| a * b).sum::<f64>();
    (0..x.len())
        .map(|i| {
            let h = 1e-6 * x[i].abs().max(1.0);
            let (mut xp, mut xm) = (x.to_vec(), x.to_vec());
            xp[i] += h;
            xm[i] -= h;
            (loss(&xp) - loss(&xm)) / (2.0 * h)
        })
        .collect()
}

/// Row-wise backward: every level against the twin on the awkward sizes (≤ 16 ULP + 2^-20·max|dx|: the
/// f32 row statistics and the subtraction of two nearly equal terms) and, on rows up to 65, against
/// finite differences of the f64 forward pass (1e-4 relative + 1e-5 of the largest component), including
/// the accumulated dw/db over two rows.
#[test]
fn norm_grads() {
    let r = scalar();
    for k in levels() {
        let lv = k.isa().name();
        for &n in &SIZES[1..] {
            let rows = 2;
            let len = rows * n;
            let mut g = Rng::new(n as u64 + 51);
            let x = g.vec(len, -2.0, 3.0);
            let w = g.vec(n, 0.5, 1.5);
            let dy = g.vec(len, -1.0, 1.0);
            let tol = |v: &[f32]| Tol {
                ulps: 16.0,
                abs: 2f64.powi(-20) * v.iter().fold(0.0f32, |m, a| m.max(a.abs())) as f64,
            };
            // dx is a difference of terms of size r·|w·dy| (rms/layer norm), |dy|/||x|| (normalize) or
            // |y·dy| (softmax), which can cancel (n = 1): bound the error by 2^-20 of the terms
            let (rms_r, ln_r, inv_norm) = row_scales(&x, n);
            let wdy = w
                .iter()
                .zip(&dy)
                .map(|(a, b)| (a * b).abs())
                .fold(0.0f32, f32::max) as f64;
            let dymax = dy.iter().fold(0.0f32, |m, a| m.max(a.abs())) as f64;
            let terms = |t: f64| Tol {
                ulps: 16.0,
                abs: 2f64.powi(-20) * t,
            };

            // rms_norm
            let (mut dx, mut dw, mut wdx, mut wdw) =
                (vec![0.0; len], vec![0.5; n], vec![0.0; len], vec![0.5; n]);
            k.rms_norm_backward(&x, &w, 1e-6, &dy, &mut dx, &mut dw)
                .unwrap();
            r.rms_norm_backward(&x, &w, 1e-6, &dy, &mut wdx, &mut wdw)
                .unwrap();
            check(
                "rms_norm_backward dx",
                lv,
                n,
                &dx,
                &f64s(&wdx),
                terms(rms_r * wdy * 2.0),
            );
            check("rms_norm_backward dw", lv, n, &dw, &f64s(&wdw), tol(&wdw));
            // layer_norm
            let (mut db, mut wdb) = (vec![0.25; n], vec![0.25; n]);
            let (mut dw, mut wdw) = (vec![0.5; n], vec![0.5; n]);
            k.layer_norm_backward(&x, &w, 1e-5, &dy, &mut dx, &mut dw, &mut db)
                .unwrap();
            r.layer_norm_backward(&x, &w, 1e-5, &dy, &mut wdx, &mut wdw, &mut wdb)
                .unwrap();
            check(
                "layer_norm_backward dx",
                lv,
                n,
                &dx,
                &f64s(&wdx),
                terms(ln_r * wdy * 3.0),
            );
            check("layer_norm_backward dw", lv, n, &dw, &f64s(&wdw), tol(&wdw));
            check("layer_norm_backward db", lv, n, &db, &f64s(&wdb), tol(&wdb));
            // normalize
            k.normalize_rows_backward(&x, n, 1e-12, &dy, &mut dx)
                .unwrap();
            r.normalize_rows_backward(&x, n, 1e-12, &dy, &mut wdx)
                .unwrap();
            check(
                "normalize_backward",
                lv,
                n,
                &dx,
                &f64s(&wdx),
                terms(inv_norm * dymax * 2.0),
            );
            // softmax (y from the twin's forward)
            let mut y = vec![0.0; len];
            r.softmax(&x, n, 1.0, None, &mut y).unwrap();
            k.softmax_backward(&y, n, &dy, &mut dx).unwrap();
            r.softmax_backward(&y, n, &dy, &mut wdx).unwrap();
            check(
                "softmax_backward",
                lv,
                n,
                &dx,
                &f64s(&wdx),
                terms(dymax * 2.0),
            );

            if n > 65 {
                continue;
            }
            // finite differences, per row; dw/db summed over the rows on top of their initial values
            let (x64, w64, dy64) = (f64s(&x), f64s(&w), f64s(&dy));
            let b64 = vec![0.1; n];
            let mut fdx = vec![vec![0.0; len]; 4];
            let (mut fdw_rms, mut fdw_ln, mut fdb_ln) = (vec![0.5; n], vec![0.5; n], vec![0.25; n]);
            for row in 0..rows {
                let (xr, dyr) = (&x64[row * n..(row + 1) * n], &dy64[row * n..(row + 1) * n]);
                let parts: [Vec<f64>; 4] = [
                    fd_vjp(xr, dyr, &|v| rms64(v, &w64, 1e-6)),
                    fd_vjp(xr, dyr, &|v| ln64(v, &w64, &b64, 1e-5)),
                    fd_vjp(xr, dyr, &|v| norm64(v, 1e-12)),
                    fd_vjp(xr, dyr, &softmax64),
                ];
                for (j, p) in parts.iter().enumerate() {
                    fdx[j][row * n..(row + 1) * n].copy_from_slice(p);
                }
                let dwr = fd_vjp(&w64, dyr, &|v| rms64(xr, v, 1e-6));
                let dwl = fd_vjp(&w64, dyr, &|v| ln64(xr, v, &b64, 1e-5));
                let dbl = fd_vjp(&b64, dyr, &|v| ln64(xr, &w64, v, 1e-5));
                for i in 0..n {
                    fdw_rms[i] += dwr[i];
                    fdw_ln[i] += dwl[i];
                    fdb_ln[i] += dbl[i];
                }
            }
            let (mut dw, mut dw2, mut db2) = (vec![0.5; n], vec![0.5; n], vec![0.25; n]);
            k.rms_norm_backward(&x, &w, 1e-6, &dy, &mut dx, &mut dw)
                .unwrap();
            check_fd_abs(
                "rms_norm_backward dx",
                lv,
                n,
                &dx,
                &fdx[0],
                1e-4,
                1e-5 * rms_r * wdy,
            );
            check_fd("rms_norm_backward dw", lv, n, &dw, &fdw_rms, 1e-4, 1e-5);
            k.layer_norm_backward(&x, &w, 1e-5, &dy, &mut dx, &mut dw2, &mut db2)
                .unwrap();
            check_fd_abs(
                "layer_norm_backward dx",
                lv,
                n,
                &dx,
                &fdx[1],
                1e-4,
                1e-5 * ln_r * wdy,
            );
            check_fd("layer_norm_backward dw", lv, n, &dw2, &fdw_ln, 1e-4, 1e-5);
            check_fd("layer_norm_backward db", lv, n, &db2, &fdb_ln, 1e-4, 1e-5);
            k.normalize_rows_backward(&x, n, 1e-12, &dy, &mut dx)
                .unwrap();
            check_fd_abs(
                "normalize_backward",
                lv,
                n,
                &dx,
                &fdx[2],
                1e-4,
                1e-5 * inv_norm * dymax,
            );
            k.softmax_backward(&y, n, &dy, &mut dx).unwrap();
            check_fd("softmax_backward", lv, n, &dx, &fdx[3], 1e-4, 1e-5);
        }
        // normalize below eps: dx = dy/eps
        let x = [1e-4f32, -2e-4];
        let mut dx = [0.0f32; 2];
        k.normalize_backward(&x, 1.0, &[1.0, 2.0], &mut dx).unwrap();
        assert_eq!(dx, [1.0, 2.0], "normalize_backward [{lv}] below eps");
    }
}
