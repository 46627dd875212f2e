//! Vector kernels written once over [`Simd`]. Each is `#[inline(always)]` so that it is compiled inside the
//! `#[target_feature]` function of the ISA that instantiates it (`x86/*.rs`, via `ops::vec_ops!`).
//!
//! Conventions: raw pointers and element counts (so `out` may be `x` itself for the in-place variants:
//! every kernel reads element i before it writes element i and never reads it again afterwards, except the
//! row-wise ones, which finish reading a row's statistics before writing any of it). Preconditions (lengths,
//! rows dividing exactly) are checked by the public API in `ops.rs` before any of these runs.
//! Every loop is a vector body followed by a tail that runs the same vector code on a padded partial
//! vector ([`Simd::ld_part`]), so the last `n % LANES` elements get bit-identical arithmetic.
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the module doc above

use super::math;
use super::Simd;

// ---------------------------------------------------------------------------------------------------------
// Lane-wise maps

/// A lane-wise function of one vector.
pub trait Unary<S: Simd> {
    fn f(&self, s: S, x: S::V) -> S::V;
}

/// A lane-wise function of two vectors.
pub trait Binary<S: Simd> {
    fn f(&self, s: S, a: S::V, b: S::V) -> S::V;
}

/// out[i] = f(x[i]), i < n. `out` may equal `x`.
#[inline(always)]
unsafe fn map1<S: Simd, F: Unary<S>>(s: S, f: &F, x: *const f32, out: *mut f32, n: usize) {
    let l = S::LANES;
    let mut i = 0;
    // vector body
    while i + l <= n {
        s.st(out.add(i), f.f(s, s.ld(x.add(i))));
        i += l;
    }
    // tail
    if i < n {
        let v = s.ld_part(x.add(i), n - i, 0.0);
        s.st_part(out.add(i), n - i, f.f(s, v));
    }
}

/// out[i] = f(a[i], b[i]), i < n. `out` may equal `a` or `b`.
#[inline(always)]
unsafe fn map2<S: Simd, F: Binary<S>>(
    s: S,
    f: &F,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    n: usize,
) {
    let l = S::LANES;
    let mut i = 0;
    // vector body
    while i + l <= n {
        s.st(out.add(i), f.f(s, s.ld(a.add(i)), s.ld(b.add(i))));
        i += l;
    }
    // tail
    if i < n {
        let va = s.ld_part(a.add(i), n - i, 0.0);
        let vb = s.ld_part(b.add(i), n - i, 0.0);
        s.st_part(out.add(i), n - i, f.f(s, va, vb));
    }
}

macro_rules! unary {
    ($(#[$doc:meta])* $name:ident, $ty:ident, |$s:ident, $x:ident| $body:expr) => {
        pub struct $ty;
        impl<S: Simd> Unary<S> for $ty {
            #[inline(always)]
            fn f(&self, $s: S, $x: S::V) -> S::V {
                $body
            }
        }
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name<S: Simd>(s: S, x: *const f32, out: *mut f32, n: usize) {
            map1(s, &$ty, x, out, n)
        }
    };
}

macro_rules! binary {
    ($(#[$doc:meta])* $name:ident, $ty:ident, |$s:ident, $a:ident, $b:ident| $body:expr) => {
        pub struct $ty;
        impl<S: Simd> Binary<S> for $ty {
            #[inline(always)]
            fn f(&self, $s: S, $a: S::V, $b: S::V) -> S::V {
                $body
            }
        }
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name<S: Simd>(s: S, a: *const f32, b: *const f32, out: *mut f32, n: usize) {
            map2(s, &$ty, a, b, out, n)
        }
    };
}

// ---------------------------------------------------------------------------------------------------------
// Elementwise arithmetic

binary!(
    /// out[i] = a[i] + b[i]
    add, Add, |s, a, b| s.add(a, b)
);
binary!(
    /// out[i] = a[i] * b[i]
    mul, Mul, |s, a, b| s.mul(a, b)
);

struct Scale<V>(V);
impl<S: Simd> Unary<S> for Scale<S::V> {
    #[inline(always)]
    fn f(&self, s: S, x: S::V) -> S::V {
        s.mul(x, self.0)
    }
}

/// out[i] = x[i] * c
#[inline(always)]
pub unsafe fn scale<S: Simd>(s: S, x: *const f32, c: f32, out: *mut f32, n: usize) {
    map1(s, &Scale(s.splat(c)), x, out, n)
}

// ---------------------------------------------------------------------------------------------------------
// Reductions: four independent accumulators hide the add latency (4 cycles on Zen 4).

/// Σ a[i]·b[i]
#[inline(always)]
pub unsafe fn dot<S: Simd>(s: S, a: *const f32, b: *const f32, n: usize) -> f32 {
    let l = S::LANES;
    let (mut a0, mut a1, mut a2, mut a3) = (s.zero(), s.zero(), s.zero(), s.zero());
    let mut i = 0;
    // vector body, 4 vectors per step
    while i + 4 * l <= n {
        a0 = s.mul_add(s.ld(a.add(i)), s.ld(b.add(i)), a0);
        a1 = s.mul_add(s.ld(a.add(i + l)), s.ld(b.add(i + l)), a1);
        a2 = s.mul_add(s.ld(a.add(i + 2 * l)), s.ld(b.add(i + 2 * l)), a2);
        a3 = s.mul_add(s.ld(a.add(i + 3 * l)), s.ld(b.add(i + 3 * l)), a3);
        i += 4 * l;
    }
    while i + l <= n {
        a0 = s.mul_add(s.ld(a.add(i)), s.ld(b.add(i)), a0);
        i += l;
    }
    // tail (zero padding adds nothing)
    if i < n {
        a1 = s.mul_add(
            s.ld_part(a.add(i), n - i, 0.0),
            s.ld_part(b.add(i), n - i, 0.0),
            a1,
        );
    }
    s.reduce_sum(s.add(s.add(a0, a1), s.add(a2, a3)))
}

/// Σ x[i]
#[inline(always)]
pub unsafe fn sum<S: Simd>(s: S, x: *const f32, n: usize) -> f32 {
    let l = S::LANES;
    let (mut a0, mut a1, mut a2, mut a3) = (s.zero(), s.zero(), s.zero(), s.zero());
    let mut i = 0;
    // vector body, 4 vectors per step
    while i + 4 * l <= n {
        a0 = s.add(a0, s.ld(x.add(i)));
        a1 = s.add(a1, s.ld(x.add(i + l)));
        a2 = s.add(a2, s.ld(x.add(i + 2 * l)));
        a3 = s.add(a3, s.ld(x.add(i + 3 * l)));
        i += 4 * l;
    }
    while i + l <= n {
        a0 = s.add(a0, s.ld(x.add(i)));
        i += l;
    }
    // tail
    if i < n {
        a1 = s.add(a1, s.ld_part(x.add(i), n - i, 0.0));
    }
    s.reduce_sum(s.add(s.add(a0, a1), s.add(a2, a3)))
}

/// max x[i]; -inf when n = 0; NaN if any element is NaN.
#[inline(always)]
pub unsafe fn max<S: Simd>(s: S, x: *const f32, n: usize) -> f32 {
    let l = S::LANES;
    let ninf = s.splat(f32::NEG_INFINITY);
    let (mut a0, mut a1, mut a2, mut a3) = (ninf, ninf, ninf, ninf);
    let mut i = 0;
    // vector body, 4 vectors per step (new values first: `max` keeps a NaN of its first operand, and
    // once an accumulator is NaN the instruction itself returns it)
    while i + 4 * l <= n {
        a0 = s.max(s.ld(x.add(i)), a0);
        a1 = s.max(s.ld(x.add(i + l)), a1);
        a2 = s.max(s.ld(x.add(i + 2 * l)), a2);
        a3 = s.max(s.ld(x.add(i + 3 * l)), a3);
        i += 4 * l;
    }
    while i + l <= n {
        a0 = s.max(s.ld(x.add(i)), a0);
        i += l;
    }
    // tail (padded with -inf)
    if i < n {
        a1 = s.max(s.ld_part(x.add(i), n - i, f32::NEG_INFINITY), a1);
    }
    s.reduce_max(s.max(s.max(a0, a1), s.max(a2, a3)))
}

/// Σ x[i]² (4 accumulators)
#[inline(always)]
unsafe fn sum_sq<S: Simd>(s: S, x: *const f32, n: usize) -> f32 {
    dot(s, x, x, n)
}

// ---------------------------------------------------------------------------------------------------------
// bf16

/// out[i] = bf16(x[i]) (nearest even, NaN stays NaN)
#[inline(always)]
pub unsafe fn f32_to_bf16<S: Simd>(s: S, x: *const f32, out: *mut u16, n: usize) {
    let l = S::LANES;
    let mut i = 0;
    // vector body
    while i + l <= n {
        s.st_bf16(out.add(i), s.ld(x.add(i)));
        i += l;
    }
    // tail
    if i < n {
        s.st_bf16_part(out.add(i), n - i, s.ld_part(x.add(i), n - i, 0.0));
    }
}

/// out[i] = f32(x[i]) (exact)
#[inline(always)]
pub unsafe fn bf16_to_f32<S: Simd>(s: S, x: *const u16, out: *mut f32, n: usize) {
    let l = S::LANES;
    let mut i = 0;
    // vector body
    while i + l <= n {
        s.st(out.add(i), s.ld_bf16(x.add(i)));
        i += l;
    }
    // tail
    if i < n {
        s.st_part(out.add(i), n - i, s.ld_bf16_part(x.add(i), n - i));
    }
}

unary!(
    /// out[i] = f32(bf16(x[i]))
    round_bf16, RoundBf16, |s, x| s.round_bf16(x)
);

// ---------------------------------------------------------------------------------------------------------
// Transcendentals and activations

unary!(
    /// out[i] = e^x[i] (≤ 1 ULP with FMA, see `math`)
    exp, Exp, |s, x| math::exp(s, x)
);
unary!(
    /// out[i] = tanh(x[i])
    tanh, Tanh, |s, x| math::tanh(s, x)
);
unary!(
    /// out[i] = erf(x[i])
    erf, Erf, |s, x| math::erf(s, x)
);
unary!(
    /// out = x·σ(2u) = ½x(1 + tanh u), u = √(2/π)(x + 0.044715x³), without the 1 + tanh cancellation
    gelu_tanh, GeluTanh, |s, x| s.mul(x, math::sigmoid(s, s.mul(s.splat(2.0), gelu_u(s, x))))
);
unary!(
    /// out = x·Φ(x) (exact-erf GELU, torch nn.GELU())
    gelu_erf, GeluErf, |s, x| s.mul(x, math::phi(s, x))
);
unary!(
    /// out = x·σ(x)
    silu, Silu, |s, x| s.mul(x, math::sigmoid(s, x))
);
unary!(
    /// out = max(x, 0) (NaN stays NaN)
    relu, Relu, |s, x| s.max(x, s.zero())
);
binary!(
    /// out = silu(gate)·up
    swiglu, Swiglu, |s, g, u| s.mul(s.mul(g, math::sigmoid(s, g)), u)
);

/// The GELU-tanh argument u = √(2/π)·x·(1 + 0.044715x²).
#[inline(always)]
fn gelu_u<S: Simd>(s: S, x: S::V) -> S::V {
    let inner = s.mul_add(s.mul(x, x), s.splat(0.044715), s.splat(1.0));
    s.mul(s.mul(x, s.splat(GELU_C)), inner)
}

/// √(2/π)
pub const GELU_C: f32 = 0.797_884_6;

// ---------------------------------------------------------------------------------------------------------
// Row-wise norms. x, out: (rows, n); w, b: (n). One pass (two for layer_norm: mean, then corrected
// centered sums) for the statistics, then one for the output.

struct AffineW<V> {
    r: V,
}

/// out = x / sqrt(mean(x²) + eps) * w
#[inline(always)]
pub unsafe fn rms_norm<S: Simd>(
    s: S,
    x: *const f32,
    w: *const f32,
    eps: f32,
    out: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        // 1. statistics: r = 1/sqrt(Σx²/n + eps)
        let inv = 1.0 / (sum_sq(s, xr, n) / n as f32 + eps).sqrt();
        // 2. out = x·r·w
        map2(s, &AffineW { r: s.splat(inv) }, xr, w, or, n);
    }
}

impl<S: Simd> Binary<S> for AffineW<S::V> {
    #[inline(always)]
    fn f(&self, s: S, x: S::V, w: S::V) -> S::V {
        s.mul(s.mul(x, self.r), w)
    }
}

/// out = (x - mean) / sqrt(var + eps) * w + b, biased variance
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn layer_norm<S: Simd>(
    s: S,
    x: *const f32,
    w: *const f32,
    b: *const f32,
    eps: f32,
    out: *mut f32,
    rows: usize,
    n: usize,
) {
    let l = S::LANES;
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        // 1. mean μ (f32; off by a few ULP of μ for long rows)
        let mean = sum(s, xr, n) / n as f32;
        // 2. d = x - μ: δ = Σd/n corrects μ, var = Σd²/n - δ² (corrected two-pass: no cancellation
        //    when |mean| >> std, and the rounding of μ is undone by δ)
        let (s1, s2) = centered_sums(s, xr, mean, n);
        let delta = s1 / n as f32;
        let var = (s2 / n as f32 - delta * delta).max(0.0);
        let inv = 1.0 / (var + eps).sqrt();
        // 3. out = ((x - μ) - δ)·r·w + b
        let (vm, vd, vr) = (s.splat(mean), s.splat(delta), s.splat(inv));
        let mut i = 0;
        while i + l <= n {
            let xh = s.mul(s.sub(s.sub(s.ld(xr.add(i)), vm), vd), vr);
            s.st(or.add(i), s.mul_add(xh, s.ld(w.add(i)), s.ld(b.add(i))));
            i += l;
        }
        // tail
        if i < n {
            let m = n - i;
            let xh = s.mul(s.sub(s.sub(s.ld_part(xr.add(i), m, 0.0), vm), vd), vr);
            let y = s.mul_add(xh, s.ld_part(w.add(i), m, 0.0), s.ld_part(b.add(i), m, 0.0));
            s.st_part(or.add(i), m, y);
        }
    }
}

/// (Σ (x - mean), Σ (x - mean)²)
#[inline(always)]
unsafe fn centered_sums<S: Simd>(s: S, x: *const f32, mean: f32, n: usize) -> (f32, f32) {
    let l = S::LANES;
    let vm = s.splat(mean);
    let (mut a0, mut a1, mut q0, mut q1) = (s.zero(), s.zero(), s.zero(), s.zero());
    let mut i = 0;
    while i + 2 * l <= n {
        let d0 = s.sub(s.ld(x.add(i)), vm);
        let d1 = s.sub(s.ld(x.add(i + l)), vm);
        a0 = s.add(a0, d0);
        a1 = s.add(a1, d1);
        q0 = s.mul_add(d0, d0, q0);
        q1 = s.mul_add(d1, d1, q1);
        i += 2 * l;
    }
    while i + l <= n {
        let d = s.sub(s.ld(x.add(i)), vm);
        a0 = s.add(a0, d);
        q0 = s.mul_add(d, d, q0);
        i += l;
    }
    // tail: pad with the mean so the padded lanes add 0
    if i < n {
        let d = s.sub(s.ld_part(x.add(i), n - i, mean), vm);
        a1 = s.add(a1, d);
        q1 = s.mul_add(d, d, q1);
    }
    (s.reduce_sum(s.add(a0, a1)), s.reduce_sum(s.add(q0, q1)))
}

/// out = x / max(||x||₂, eps) per row (torch F.normalize)
#[inline(always)]
pub unsafe fn normalize<S: Simd>(
    s: S,
    x: *const f32,
    eps: f32,
    out: *mut f32,
    rows: usize,
    n: usize,
) {
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        // 1. norm
        let norm = sum_sq(s, xr, n).sqrt();
        // 2. out = x / max(norm, eps)
        scale(s, xr, 1.0 / norm.max(eps), or, n);
    }
}

/// Row r of (rows, n): out = softmax(scale·x) over columns j <= r + causal (all columns when
/// causal = usize::MAX); masked columns are written as 0.
#[inline(always)]
pub unsafe fn softmax<S: Simd>(
    s: S,
    x: *const f32,
    c: f32,
    causal: usize,
    out: *mut f32,
    rows: usize,
    n: usize,
) {
    let l = S::LANES;
    let vc = s.splat(c);
    for r in 0..rows {
        let (xr, or) = (x.add(r * n), out.add(r * n));
        let valid = n.min(r.saturating_add(causal).saturating_add(1));
        // 1. m = max_j c·x_j
        let ninf = s.splat(f32::NEG_INFINITY);
        let (mut m0, mut m1) = (ninf, ninf);
        let mut i = 0;
        while i + 2 * l <= valid {
            m0 = s.max(s.mul(s.ld(xr.add(i)), vc), m0);
            m1 = s.max(s.mul(s.ld(xr.add(i + l)), vc), m1);
            i += 2 * l;
        }
        while i + l <= valid {
            m0 = s.max(s.mul(s.ld(xr.add(i)), vc), m0);
            i += l;
        }
        let mut tail = None;
        if i < valid {
            // tail lanes beyond `valid` become -inf after scaling a -inf pad only if c > 0; pad with the
            // first valid value instead (it is already part of the max)
            let v = s.mul(s.ld_part(xr.add(i), valid - i, *xr), vc);
            m1 = s.max(v, m1);
            tail = Some(i);
        }
        let vmax = s.splat(s.reduce_max(s.max(m0, m1)));
        // 2. e_j = exp(c·x_j - m), written to out, summed
        let (mut a0, mut a1) = (s.zero(), s.zero());
        let mut i = 0;
        while i + 2 * l <= valid {
            let e0 = math::exp(s, s.mul_add(s.ld(xr.add(i)), vc, s.sub(s.zero(), vmax)));
            let e1 = math::exp(s, s.mul_add(s.ld(xr.add(i + l)), vc, s.sub(s.zero(), vmax)));
            s.st(or.add(i), e0);
            s.st(or.add(i + l), e1);
            a0 = s.add(a0, e0);
            a1 = s.add(a1, e1);
            i += 2 * l;
        }
        while i + l <= valid {
            let e0 = math::exp(s, s.mul_add(s.ld(xr.add(i)), vc, s.sub(s.zero(), vmax)));
            s.st(or.add(i), e0);
            a0 = s.add(a0, e0);
            i += l;
        }
        if let Some(i) = tail {
            let m = valid - i;
            let e = math::exp(
                s,
                s.mul_add(s.ld_part(xr.add(i), m, 0.0), vc, s.sub(s.zero(), vmax)),
            );
            // only the m valid lanes count: store them, then reload with zero padding to sum
            s.st_part(or.add(i), m, e);
            a1 = s.add(a1, s.ld_part(or.add(i), m, 0.0));
        }
        // 3. out = e / Σe; masked columns 0
        let inv = 1.0 / s.reduce_sum(s.add(a0, a1));
        scale(s, or, inv, or, valid);
        for j in valid..n {
            *or.add(j) = 0.0;
        }
    }
}

/// x: (rows, heads, hd) in place; cos, sin: (rows, hd/2). For i < hd/2: x1 = x[i], x2 = x[i + hd/2];
/// x[i] = x1·c - x2·s; x[i + hd/2] = x2·c + x1·s.
#[inline(always)]
pub unsafe fn rope_half<S: Simd>(
    s: S,
    x: *mut f32,
    rows: usize,
    heads: usize,
    hd: usize,
    cos: *const f32,
    sin: *const f32,
) {
    let l = S::LANES;
    let h = hd / 2;
    for r in 0..rows {
        let (cr, sr) = (cos.add(r * h), sin.add(r * h));
        for hh in 0..heads {
            let p1 = x.add((r * heads + hh) * hd);
            let p2 = p1.add(h);
            let mut i = 0;
            // vector body
            while i + l <= h {
                let (x1, x2) = (s.ld(p1.add(i)), s.ld(p2.add(i)));
                let (c, sn) = (s.ld(cr.add(i)), s.ld(sr.add(i)));
                s.st(p1.add(i), s.sub(s.mul(x1, c), s.mul(x2, sn)));
                s.st(p2.add(i), s.mul_add(x2, c, s.mul(x1, sn)));
                i += l;
            }
            // tail
            if i < h {
                let m = h - i;
                let (x1, x2) = (s.ld_part(p1.add(i), m, 0.0), s.ld_part(p2.add(i), m, 0.0));
                let (c, sn) = (s.ld_part(cr.add(i), m, 0.0), s.ld_part(sr.add(i), m, 0.0));
                s.st_part(p1.add(i), m, s.sub(s.mul(x1, c), s.mul(x2, sn)));
                s.st_part(p2.add(i), m, s.mul_add(x2, c, s.mul(x1, sn)));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Backward (vector-Jacobian products). dy: upstream gradient; dx: written; dw/db: accumulated (+=).

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
    let mut i = 0;
    // vector body
    while i + l <= n {
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
        let mut i = 0;
        while i + l <= n {
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
        let mut i = 0;
        while i + l <= n {
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
            map2(
                s,
                &AxpBy {
                    a: s.splat(a),
                    b: s.splat(-k),
                },
                dyr,
                xr,
                dxr,
                n,
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
        map2(s, &MulSub { k: s.splat(k) }, yr, dyr, dxr, n);
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
