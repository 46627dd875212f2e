//! Backward (vector-Jacobian products) of the vector kernels, written once over [`Simd`] like the forward
//! ones (same conventions). dy: upstream gradient; dx: written; dw/db: accumulated (+=).
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the parent module's doc

use super::*;

/// Three-input lane-wise map: out[i] = f(a[i], b[i], c[i]).
pub trait Ternary<S: Simd> {
    fn f(&self, s: S, a: S::V, b: S::V, c: S::V) -> S::V;
}

#[inline(always)]
unsafe fn map3<S: Simd, F: Ternary<S>>(
    s: S,
    f: &F,
    a: *const f32,
    b: *const f32,
    c: *const f32,
    out: *mut f32,
    n: usize,
) {
    let l = S::LANES;
    let ahead = Ahead::stream([a, b, c], out, n);
    let mut i = 0;
    // vector body
    while i + l <= n {
        ahead.fetch(i, l);
        let y = f.f(s, s.ld(a.add(i)), s.ld(b.add(i)), s.ld(c.add(i)));
        s.st(out.add(i), y);
        i += l;
    }
    // tail
    if i < n {
        let m = n - i;
        let y = f.f(
            s,
            s.ld_part(a.add(i), m, 0.0),
            s.ld_part(b.add(i), m, 0.0),
            s.ld_part(c.add(i), m, 0.0),
        );
        s.st_part(out.add(i), m, y);
    }
}

/// d/dx of GELU-tanh: σ + 2x·σ(1-σ)·√(2/π)(1 + 3·0.044715x²), σ = σ(2u); x clamped to ±30 where the
/// derivative is exactly 1 / 0 in f32 (keeps ∞·0 out).
#[inline(always)]
fn gelu_tanh_grad<S: Simd>(s: S, x: S::V) -> S::V {
    let one = s.splat(1.0);
    let x = s.min(s.max(x, s.splat(-30.0)), s.splat(30.0));
    let (sg, one_minus) = math::sigmoid2(s, s.mul(s.splat(2.0), gelu_u(s, x)));
    let du = s.mul(
        s.splat(GELU_C),
        s.mul_add(s.mul(x, x), s.splat(3.0 * 0.044715), one),
    );
    s.mul_add(s.mul(s.add(x, x), s.mul(sg, one_minus)), du, sg)
}

/// d/dx of x·Φ(x): Φ(x) + x·e^{−x²/2}/√(2π) (one exponential for both; x clamped to ±15 in the second
/// term, where it is 0 anyway, so ±inf give 1 / 0 instead of ∞·0)
#[inline(always)]
fn gelu_erf_grad<S: Simd>(s: S, x: S::V) -> S::V {
    let (p, e) = math::phi_gauss(s, x);
    let xc = s.min(s.max(x, s.splat(-15.0)), s.splat(15.0));
    s.mul_add(s.mul(xc, s.splat(0.398_942_3)), e, p)
}

/// d/dx of x·σ(x): σ(1 + x(1 - σ)); x clamped at -200 (gradient -0 in f32 there; keeps 0·∞ out).
#[inline(always)]
fn silu_grad<S: Simd>(s: S, x: S::V) -> S::V {
    let x = s.max(x, s.splat(-200.0));
    let (sg, one_minus) = math::sigmoid2(s, x);
    s.mul(sg, s.mul_add(x, one_minus, s.splat(1.0)))
}

macro_rules! unary_grad {
    ($(#[$doc:meta])* $name:ident, $ty:ident, |$s:ident, $x:ident, $dy:ident| $body:expr) => {
        pub struct $ty;
        impl<S: Simd> Binary<S> for $ty {
            #[inline(always)]
            fn f(&self, $s: S, $x: S::V, $dy: S::V) -> S::V {
                $body
            }
        }
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name<S: Simd>(s: S, x: *const f32, dy: *const f32, dx: *mut f32, n: usize) {
            map2(s, &$ty, x, dy, dx, n)
        }
    };
}

unary_grad!(
    /// dx = dy · gelu_tanh'(x)
    gelu_tanh_backward, GeluTanhGrad, |s, x, dy| s.mul(dy, gelu_tanh_grad(s, x))
);
unary_grad!(
    /// dx = dy · gelu_erf'(x)
    gelu_erf_backward, GeluErfGrad, |s, x, dy| s.mul(dy, gelu_erf_grad(s, x))
);
unary_grad!(
    /// dx = dy · silu'(x)
    silu_backward, SiluGrad, |s, x, dy| s.mul(dy, silu_grad(s, x))
);
unary_grad!(
    /// dx = x <= 0 ? 0 : dy (torch threshold_backward: a NaN x passes dy through)
    relu_backward, ReluGrad, |s, x, dy| s.select(s.le(x, s.zero()), s.zero(), dy)
);

struct SwigluDgate;
impl<S: Simd> Ternary<S> for SwigluDgate {
    #[inline(always)]
    fn f(&self, s: S, g: S::V, u: S::V, dy: S::V) -> S::V {
        s.mul(s.mul(dy, u), silu_grad(s, g))
    }
}
struct SwigluDup;
impl<S: Simd> Binary<S> for SwigluDup {
    #[inline(always)]
    fn f(&self, s: S, g: S::V, dy: S::V) -> S::V {
        s.mul(dy, s.mul(g, math::sigmoid(s, g)))
    }
}

/// dgate = dy·up·silu'(gate); dup = dy·silu(gate)
#[inline(always)]
pub unsafe fn swiglu_backward<S: Simd>(
    s: S,
    gate: *const f32,
    up: *const f32,
    dy: *const f32,
    dgate: *mut f32,
    dup: *mut f32,
    n: usize,
) {
    map3(s, &SwigluDgate, gate, up, dy, dgate, n);
    map2(s, &SwigluDup, gate, dy, dup, n);
}

/// y = x·r·w, r = 1/sqrt(mean(x²)+eps):
/// dx = r·w·dy - x·r³/n·Σ(w·dy·x);  dw += dy·x·r
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn rms_norm_backward<S: Simd>(
    s: S,
    x: *const f32,
    w: *const f32,
    eps: f32,
    dy: *const f32,
    dx: *mut f32,
    dw: *mut f32,
    rows: usize,
    n: usize,
) {
    let l = S::LANES;
    for r in 0..rows {
        let (xr, dyr, dxr) = (x.add(r * n), dy.add(r * n), dx.add(r * n));
        // 1. Σx², Σ w·dy·x in one pass
        let (mut sq, mut gx) = (s.zero(), s.zero());
        let mut i = 0;
        while i + l <= n {
            let xv = s.ld(xr.add(i));
            sq = s.mul_add(xv, xv, sq);
            gx = s.mul_add(s.mul(s.ld(w.add(i)), s.ld(dyr.add(i))), xv, gx);
            i += l;
        }
        if i < n {
            let m = n - i;
            let xv = s.ld_part(xr.add(i), m, 0.0);
            sq = s.mul_add(xv, xv, sq);
            let g = s.mul(s.ld_part(w.add(i), m, 0.0), s.ld_part(dyr.add(i), m, 0.0));
            gx = s.mul_add(g, xv, gx);
        }
        let inv = 1.0 / (s.reduce_sum(sq) / n as f32 + eps).sqrt();
        let k = inv * inv * inv / n as f32 * s.reduce_sum(gx);
        // 2. dx, dw
        let (vr, vk) = (s.splat(inv), s.splat(k));
        let ahead = Ahead::next_rows([x, dy], r, rows, n);
        let mut i = 0;
        while i + l <= n {
            ahead.fetch(i, l);
            let (xv, dyv) = (s.ld(xr.add(i)), s.ld(dyr.add(i)));
            let g = s.mul(s.mul(dyv, s.ld(w.add(i))), vr);
            s.st(dw.add(i), s.mul_add(s.mul(dyv, xv), vr, s.ld(dw.add(i))));
            s.st(dxr.add(i), s.sub(g, s.mul(xv, vk)));
            i += l;
        }
        if i < n {
            let m = n - i;
            let (xv, dyv) = (s.ld_part(xr.add(i), m, 0.0), s.ld_part(dyr.add(i), m, 0.0));
            let g = s.mul(s.mul(dyv, s.ld_part(w.add(i), m, 0.0)), vr);
            let dwv = s.mul_add(s.mul(dyv, xv), vr, s.ld_part(dw.add(i), m, 0.0));
            s.st_part(dw.add(i), m, dwv);
            s.st_part(dxr.add(i), m, s.sub(g, s.mul(xv, vk)));
        }
    }
}

/// xh = (x - μ)·r, g = w·dy: dx = r·(g - mean(g) - xh·mean(g·xh)); dw += dy·xh; db += dy
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn layer_norm_backward<S: Simd>(
    s: S,
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
    let l = S::LANES;
    let nf = n as f32;
    for r in 0..rows {
        let (xr, dyr, dxr) = (x.add(r * n), dy.add(r * n), dx.add(r * n));
        // 1. mean
        let mean = sum(s, xr, n) / nf;
        let vm = s.splat(mean);
        // 2. with d = x - μ: Σd, Σd², Σg, Σg·d (δ = Σd/n corrects μ, as in the forward pass)
        let (mut sd, mut sq, mut sg, mut sgx) = (s.zero(), s.zero(), s.zero(), s.zero());
        let mut i = 0;
        while i + l <= n {
            let d = s.sub(s.ld(xr.add(i)), vm);
            let g = s.mul(s.ld(w.add(i)), s.ld(dyr.add(i)));
            sd = s.add(sd, d);
            sq = s.mul_add(d, d, sq);
            sg = s.add(sg, g);
            sgx = s.mul_add(g, d, sgx);
            i += l;
        }
        if i < n {
            let m = n - i;
            let d = s.sub(s.ld_part(xr.add(i), m, mean), vm);
            let g = s.mul(s.ld_part(w.add(i), m, 0.0), s.ld_part(dyr.add(i), m, 0.0));
            sd = s.add(sd, d);
            sq = s.mul_add(d, d, sq);
            sg = s.add(sg, g);
            sgx = s.mul_add(g, d, sgx);
        }
        let delta = s.reduce_sum(sd) / nf;
        let var = (s.reduce_sum(sq) / nf - delta * delta).max(0.0);
        let inv = 1.0 / (var + eps).sqrt();
        let mg = s.reduce_sum(sg) / nf;
        // Σg·(x - μ - δ) = Σg·d - δ·Σg
        let mgx = (s.reduce_sum(sgx) / nf - delta * mg) * inv;
        // 3. dx, dw, db
        let (vr, vmg, vmgx, vd) = (s.splat(inv), s.splat(mg), s.splat(mgx), s.splat(delta));
        let ahead = Ahead::next_rows([x, dy], r, rows, n);
        let mut i = 0;
        while i + l <= n {
            ahead.fetch(i, l);
            let xh = s.mul(s.sub(s.sub(s.ld(xr.add(i)), vm), vd), vr);
            let dyv = s.ld(dyr.add(i));
            let g = s.mul(s.ld(w.add(i)), dyv);
            let t = s.sub(s.sub(g, vmg), s.mul(xh, vmgx));
            s.st(dxr.add(i), s.mul(t, vr));
            s.st(dw.add(i), s.mul_add(dyv, xh, s.ld(dw.add(i))));
            s.st(db.add(i), s.add(dyv, s.ld(db.add(i))));
            i += l;
        }
        if i < n {
            let m = n - i;
            let xh = s.mul(s.sub(s.sub(s.ld_part(xr.add(i), m, 0.0), vm), vd), vr);
            let dyv = s.ld_part(dyr.add(i), m, 0.0);
            let g = s.mul(s.ld_part(w.add(i), m, 0.0), dyv);
            let t = s.sub(s.sub(g, vmg), s.mul(xh, vmgx));
            s.st_part(dxr.add(i), m, s.mul(t, vr));
            let dwv = s.mul_add(dyv, xh, s.ld_part(dw.add(i), m, 0.0));
            s.st_part(dw.add(i), m, dwv);
            let dbv = s.add(dyv, s.ld_part(db.add(i), m, 0.0));
            s.st_part(db.add(i), m, dbv);
        }
    }
}

/// y = x/d, d = max(||x||, eps): dx = dy/d - x·(x·dy)/(d·||x||²) if ||x|| > eps, else dy/eps
#[inline(always)]
pub unsafe fn normalize_backward<S: Simd>(
    s: S,
    x: *const f32,
    eps: f32,
    dy: *const f32,
    dx: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, dyr, dxr) = (x.add(r * n), dy.add(r * n), dx.add(r * n));
        // 1. ||x||², x·dy
        let sq = sum_sq(s, xr, n);
        let norm = sq.sqrt();
        if norm > eps {
            let xdy = dot(s, xr, dyr, n);
            // 2. dx = dy/norm - x·(x·dy)/norm³
            let a = 1.0 / norm;
            let k = xdy * a / sq;
            let f = AxpBy {
                a: s.splat(a),
                b: s.splat(-k),
            };
            map2_ahead(
                s,
                &f,
                dyr,
                xr,
                dxr,
                n,
                Ahead::next_rows([x, dy], r, rows, n),
            );
        } else {
            scale(s, dyr, 1.0 / eps, dxr, n);
        }
    }
}

/// out = a·p + b·q
struct AxpBy<V> {
    a: V,
    b: V,
}
impl<S: Simd> Binary<S> for AxpBy<S::V> {
    #[inline(always)]
    fn f(&self, s: S, p: S::V, q: S::V) -> S::V {
        s.mul_add(p, self.a, s.mul(q, self.b))
    }
}

/// y = softmax(x) per row: dx = y·(dy - Σ y·dy)
#[inline(always)]
pub unsafe fn softmax_backward<S: Simd>(
    s: S,
    y: *const f32,
    dy: *const f32,
    dx: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (yr, dyr, dxr) = (y.add(r * n), dy.add(r * n), dx.add(r * n));
        // 1. Σ y·dy
        let k = dot(s, yr, dyr, n);
        // 2. dx = y·(dy - k)
        let f = MulSub { k: s.splat(k) };
        map2_ahead(
            s,
            &f,
            yr,
            dyr,
            dxr,
            n,
            Ahead::next_rows([y, dy], r, rows, n),
        );
    }
}

/// out = y·(dy - k)
struct MulSub<V> {
    k: V,
}
impl<S: Simd> Binary<S> for MulSub<S::V> {
    #[inline(always)]
    fn f(&self, s: S, y: S::V, dy: S::V) -> S::V {
        s.mul(y, s.sub(dy, self.k))
    }
}
