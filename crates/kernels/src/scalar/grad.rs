//! Backward passes (vector-Jacobian products) of the activations and row-wise norms. dy: upstream
//! gradient; dx: written; dw/db: accumulated (+=) over rows. Plain formulas in f64.
//!
//! Safety (all functions): the pointers are valid for the shapes given (checked in `ops.rs`).
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the module doc above

use super::act::phi64;

const GELU_C: f64 = 0.797_884_560_802_865_4;

fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// d/dx ½x(1 + tanh u), u = c(x + 0.044715x³). Beyond |x| = 30 the derivative is exactly 0 or 1 in f32;
/// x is clamped there so ±inf give 0 / 1 instead of ∞·0.
pub fn gelu_tanh_grad1(x: f32) -> f32 {
    let x = (x as f64).clamp(-30.0, 30.0);
    let u = GELU_C * (x + 0.044715 * x * x * x);
    let t = u.tanh();
    let du = GELU_C * (1.0 + 3.0 * 0.044715 * x * x);
    (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du) as f32
}

/// d/dx x·Φ(x) = Φ(x) + x·φ(x) (x clamped to ±30 as above)
pub fn gelu_erf_grad1(x: f32) -> f32 {
    let x = (x as f64).clamp(-30.0, 30.0);
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (phi64(x) + x * pdf) as f32
}

/// d/dx x·σ(x) = σ(1 + x(1 - σ)) (x clamped at -200, where it is -0 in f32, so -inf gives -0)
pub fn silu_grad1(x: f32) -> f32 {
    let x = (x as f64).max(-200.0);
    let s = sigmoid64(x);
    (s * (1.0 + x * (1.0 - s))) as f32
}

pub unsafe fn gelu_tanh_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) {
    for i in 0..n {
        *dx.add(i) = *dy.add(i) * gelu_tanh_grad1(*x.add(i));
    }
}

pub unsafe fn gelu_erf_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) {
    for i in 0..n {
        *dx.add(i) = *dy.add(i) * gelu_erf_grad1(*x.add(i));
    }
}

pub unsafe fn silu_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) {
    for i in 0..n {
        *dx.add(i) = *dy.add(i) * silu_grad1(*x.add(i));
    }
}

/// dx = x <= 0 ? 0 : dy (torch threshold_backward)
pub unsafe fn relu_backward(x: *const f32, dy: *const f32, dx: *mut f32, n: usize) {
    for i in 0..n {
        *dx.add(i) = if *x.add(i) <= 0.0 { 0.0 } else { *dy.add(i) };
    }
}

/// out = silu(gate)·up: dgate = dy·up·silu'(gate), dup = dy·silu(gate)
pub unsafe fn swiglu_backward(
    gate: *const f32,
    up: *const f32,
    dy: *const f32,
    dgate: *mut f32,
    dup: *mut f32,
    n: usize,
) {
    for i in 0..n {
        let (g, u, d) = (*gate.add(i), *up.add(i), *dy.add(i));
        *dgate.add(i) = d * u * silu_grad1(g);
        *dup.add(i) = d * super::act::silu1(g);
    }
}

/// y = x·r·w, r = 1/sqrt(mean(x²)+eps)
#[allow(clippy::too_many_arguments)]
pub unsafe fn rms_norm_backward(
    x: *const f32,
    w: *const f32,
    eps: f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, dyr, dxr) = (x.add(r * n), dy.add(r * n), dx.add(r * n));
        let (mut ss, mut gx) = (0.0f64, 0.0f64);
        for i in 0..n {
            let xi = *xr.add(i) as f64;
            ss += xi * xi;
            gx += *w.add(i) as f64 * *dyr.add(i) as f64 * xi;
        }
        let inv = 1.0 / (ss / n as f64 + eps as f64).sqrt();
        let k = inv.powi(3) / n as f64 * gx;
        for i in 0..n {
            let (xi, dyi) = (*xr.add(i) as f64, *dyr.add(i) as f64);
            *dxr.add(i) = (inv * *w.add(i) as f64 * dyi - xi * k) as f32;
            *dw.add(i) = (*dw.add(i) as f64 + dyi * xi * inv) as f32;
        }
    }
}

/// y = xh·w + b, xh = (x-μ)·r
#[allow(clippy::too_many_arguments)]
pub unsafe fn layer_norm_backward(
    x: *const f32,
    w: *const f32,
    eps: f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    db: *mut f32,
    rows: usize,
    n: usize,
) {
    let nf = n as f64;
    for r in 0..rows {
        let (xr, dyr, dxr) = (x.add(r * n), dy.add(r * n), dx.add(r * n));
        let mut s = 0.0f64;
        for i in 0..n {
            s += *xr.add(i) as f64;
        }
        let mean = s / nf;
        let mut v = 0.0f64;
        for i in 0..n {
            v += (*xr.add(i) as f64 - mean).powi(2);
        }
        let inv = 1.0 / (v / nf + eps as f64).sqrt();
        let (mut mg, mut mgx) = (0.0f64, 0.0f64);
        for i in 0..n {
            let g = *w.add(i) as f64 * *dyr.add(i) as f64;
            mg += g;
            mgx += g * (*xr.add(i) as f64 - mean) * inv;
        }
        mg /= nf;
        mgx /= nf;
        for i in 0..n {
            let xh = (*xr.add(i) as f64 - mean) * inv;
            let dyi = *dyr.add(i) as f64;
            let g = *w.add(i) as f64 * dyi;
            *dxr.add(i) = (inv * (g - mg - xh * mgx)) as f32;
            *dw.add(i) = (*dw.add(i) as f64 + dyi * xh) as f32;
            *db.add(i) = (*db.add(i) as f64 + dyi) as f32;
        }
    }
}

/// y = x / max(||x||, eps)
pub unsafe fn normalize_backward(
    x: *const f32,
    eps: f32,
    dy: *const f32,
    dx: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, dyr, dxr) = (x.add(r * n), dy.add(r * n), dx.add(r * n));
        let (mut ss, mut xdy) = (0.0f64, 0.0f64);
        for i in 0..n {
            let xi = *xr.add(i) as f64;
            ss += xi * xi;
            xdy += xi * *dyr.add(i) as f64;
        }
        let norm = ss.sqrt();
        for i in 0..n {
            let (xi, dyi) = (*xr.add(i) as f64, *dyr.add(i) as f64);
            *dxr.add(i) = if norm > eps as f64 {
                (dyi / norm - xi * xdy / (norm * ss)) as f32
            } else {
                (dyi / eps as f64) as f32
            };
        }
    }
}

/// y = softmax(x): dx = y·(dy - Σ y·dy)
pub unsafe fn softmax_backward(y: *const f32, dy: *const f32, dx: *mut f32, rows: usize, n: usize) {
    for r in 0..rows {
        let (yr, dyr, dxr) = (y.add(r * n), dy.add(r * n), dx.add(r * n));
        let mut k = 0.0f64;
        for i in 0..n {
            k += *yr.add(i) as f64 * *dyr.add(i) as f64;
        }
        for i in 0..n {
            *dxr.add(i) = (*yr.add(i) as f64 * (*dyr.add(i) as f64 - k)) as f32;
        }
    }
}
