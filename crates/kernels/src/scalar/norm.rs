//! Row-wise norms, softmax and RoPE. x, out: (rows, n); w, b: (n). Statistics in f64.
//!
//! Safety (all functions): the pointers are valid for the shapes given (checked by the public API in
//! `ops.rs`); `out` may equal `x`.
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the module doc above

/// out = x / sqrt(mean(x²) + eps) * w
pub unsafe fn rms_norm(
    x: *const f32,
    w: *const f32,
    eps: f32,
    out: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        let mut ss = 0.0f64;
        for i in 0..n {
            ss += (*xr.add(i) as f64).powi(2);
        }
        let inv = (1.0 / (ss / n as f64 + eps as f64).sqrt()) as f32;
        for i in 0..n {
            *or.add(i) = *xr.add(i) * inv * *w.add(i);
        }
    }
}

/// out = (x - mean) / sqrt(var + eps) * w + b, biased variance
#[allow(clippy::too_many_arguments)]
pub unsafe fn layer_norm(
    x: *const f32,
    w: *const f32,
    b: *const f32,
    eps: f32,
    out: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        let mut s = 0.0f64;
        for i in 0..n {
            s += *xr.add(i) as f64;
        }
        let mean = s / n as f64;
        let mut v = 0.0f64;
        for i in 0..n {
            v += (*xr.add(i) as f64 - mean).powi(2);
        }
        let inv = 1.0 / (v / n as f64 + eps as f64).sqrt();
        for i in 0..n {
            let xh = (*xr.add(i) as f64 - mean) * inv;
            *or.add(i) = (xh * *w.add(i) as f64 + *b.add(i) as f64) as f32;
        }
    }
}

/// out = x / max(||x||₂, eps) per row
pub unsafe fn normalize(x: *const f32, eps: f32, out: *mut f32, rows: usize, n: usize) {
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        let mut ss = 0.0f64;
        for i in 0..n {
            ss += (*xr.add(i) as f64).powi(2);
        }
        let d = ss.sqrt().max(eps as f64);
        for i in 0..n {
            *or.add(i) = (*xr.add(i) as f64 / d) as f32;
        }
    }
}

/// Row r: out = softmax(c·x) over columns j <= r + causal (causal = usize::MAX: all); others 0.
pub unsafe fn softmax(x: *const f32, c: f32, causal: usize, out: *mut f32, rows: usize, n: usize) {
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        let valid = n.min(r.saturating_add(causal).saturating_add(1));
        let mut m = f32::NEG_INFINITY;
        for j in 0..valid {
            let v = c * *xr.add(j);
            if v > m || v.is_nan() {
                m = v;
            }
        }
        let mut s = 0.0f64;
        for j in 0..valid {
            let e = (c * *xr.add(j) - m).exp();
            *or.add(j) = e;
            s += e as f64;
        }
        for j in 0..valid {
            *or.add(j) = (*or.add(j) as f64 / s) as f32;
        }
        for j in valid..n {
            *or.add(j) = 0.0;
        }
    }
}

/// x: (rows, heads, hd) in place; cos, sin: (rows, hd/2); NeoX rotate_half.
pub unsafe fn rope_half(
    x: *mut f32,
    rows: usize,
    heads: usize,
    hd: usize,
    cos: *const f32,
    sin: *const f32,
) {
    let h = hd / 2;
    for r in 0..rows {
        for hh in 0..heads {
            let p = x.add((r * heads + hh) * hd);
            for i in 0..h {
                let (x1, x2) = (*p.add(i), *p.add(i + h));
                let (c, s) = (*cos.add(r * h + i), *sin.add(r * h + i));
                *p.add(i) = x1 * c - x2 * s;
                *p.add(i + h) = x2 * c + x1 * s;
            }
        }
    }
}
