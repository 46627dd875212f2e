//! Vector kernels written once over [`Simd`]. Each is `#[inline(always)]` so that it is compiled inside the
//! `#[target_feature]` function of the ISA that instantiates it (`x86/*.rs`, via `ops::vec_ops!`).
//!
//! Conventions: raw pointers and element counts (so `out` may be `x` itself for the in-place variants:
//! every kernel reads element i before it writes element i and never reads it again afterwards, except the
//! row-wise ones, which finish reading a row's statistics before writing any of it). Preconditions (lengths,
//! rows dividing exactly) are checked by the public API in `ops.rs` before any of these runs.
//! Every loop is a vector body followed by a tail that runs the same vector code on a padded partial
//! vector ([`Simd::ld_part`]), so the last `n % LANES` elements get bit-identical arithmetic; the maps
//! start with such a partial vector too, up to the first vector-aligned element of their output.
#![allow(clippy::missing_safety_doc)] // the safety contract is the one in the module doc above

use super::math;
use super::{prefetch_lines, Simd};

// ---------------------------------------------------------------------------------------------------------
// Lane-wise maps

/// What a loop prefetches while it computes: row r + 1 of K (rows, n) arrays while a row kernel writes
/// row r ([`Ahead::next_rows`]); [`STREAM_AHEAD`] elements further on in each input and in the output
/// while a long map runs ([`Ahead::stream`]); or nothing.
#[derive(Clone, Copy)]
pub struct Ahead<const K: usize> {
    ins: Option<[*const f32; K]>,
    out: Option<*const f32>,
}

/// How far ahead a long map prefetches, in elements (2 KiB of each array). On one core the hardware
/// prefetchers alone leave a compute-heavy map's loads and its stores' reads-for-ownership waiting on
/// L3/DRAM: asking for the lines 2 KiB ahead (the output's too) took a map over 4–5 MB from
/// compute + memory to nearer the larger of the two (Xeon, one thread, 512×2048: gelu_erf 440–470 →
/// 400–414 µs, silu 319–337 → 287–296 µs, the pure copy-speed relu 285–291 µs; 256 or 1024 ahead
/// measured the same, 4096 worse). The inputs' alone gained less; the output's alone made gelu_erf slower.
pub const STREAM_AHEAD: usize = 512;

/// The shortest map that prefetches (elements: 1 MiB of each array, half this Xeon's L2 per core). Below
/// it the arrays are mostly in cache already, and the prefetches' 2–4 µops per vector cost the cheap maps
/// 20–25% (add, relu_backward on 64K elements in L2: 5.7 → 7.1 µs, 6.2 → 8.1 µs).
pub const STREAM_MIN: usize = 1 << 18;

impl<const K: usize> Ahead<K> {
    pub const NONE: Self = Ahead {
        ins: None,
        out: None,
    };

    /// Row r + 1 of each of `ps` (rows, n), none after the last row.
    #[inline(always)]
    pub fn next_rows(ps: [*const f32; K], r: usize, rows: usize, n: usize) -> Self {
        Ahead {
            ins: (r + 1 < rows).then(|| ps.map(|p| p.wrapping_add((r + 1) * n))),
            out: None,
        }
    }

    /// For a map of `n` elements from `ins` into `out`: each [`STREAM_AHEAD`] elements on, once the map
    /// is [`STREAM_MIN`] long.
    #[inline(always)]
    pub fn stream(ins: [*const f32; K], out: *const f32, n: usize) -> Self {
        if n < STREAM_MIN {
            return Self::NONE;
        }
        Ahead {
            ins: Some(ins.map(|p| p.wrapping_add(STREAM_AHEAD))),
            out: Some(out.wrapping_add(STREAM_AHEAD)),
        }
    }

    /// Prefetches elements [i, i + l) of each array (the part matching the step at i of this loop).
    #[inline(always)]
    pub fn fetch(&self, i: usize, l: usize) {
        if let Some(ps) = self.ins {
            for p in ps {
                prefetch_lines(p as *const u8, 4 * i, 4 * (i + l));
            }
        }
        if let Some(p) = self.out {
            prefetch_lines(p as *const u8, 4 * i, 4 * (i + l));
        }
    }
}

/// A lane-wise function of one vector.
pub trait Unary<S: Simd> {
    fn f(&self, s: S, x: S::V) -> S::V;
}

/// A lane-wise function of two vectors.
pub trait Binary<S: Simd> {
    fn f(&self, s: S, a: S::V, b: S::V) -> S::V;
}

/// How many of n elements at `out` come before its first address aligned to a whole vector (less than
/// `LANES`): the maps store whole vectors from there, since a store that splits two cache lines costs
/// twice (numpy's arrays are 16-byte aligned; 1.3x on a whole map at AVX-512, measured).
#[inline(always)]
fn head_len<S: Simd>(out: *const f32, n: usize) -> usize {
    let a = 4 * S::LANES;
    ((a - out as usize % a) % a / 4).min(n)
}

/// out[i] = f(x[i]), i < n. `out` may equal `x`.
#[inline(always)]
unsafe fn map1<S: Simd, F: Unary<S>>(s: S, f: &F, x: *const f32, out: *mut f32, n: usize) {
    map1_ahead(s, f, x, out, n, Ahead::stream([x], out, n))
}

/// [`map1`], prefetching `ahead` (the next rows of a row kernel) at the pace it reads x.
#[inline(always)]
unsafe fn map1_ahead<S: Simd, F: Unary<S>, const K: usize>(
    s: S,
    f: &F,
    x: *const f32,
    out: *mut f32,
    n: usize,
    ahead: Ahead<K>,
) {
    let l = S::LANES;
    // head: up to the first vector-aligned element of out
    let mut i = head_len::<S>(out, n);
    if i > 0 {
        ahead.fetch(0, i);
        s.st_part(out, i, f.f(s, s.ld_part(x, i, 0.0)));
    }
    // vector body
    while i + l <= n {
        ahead.fetch(i, l);
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
    map2_ahead(s, f, a, b, out, n, Ahead::stream([a, b], out, n))
}

/// [`map2`], prefetching `ahead` (the next rows of a row kernel) at the pace it reads a.
#[inline(always)]
pub(super) unsafe fn map2_ahead<S: Simd, F: Binary<S>, const K: usize>(
    s: S,
    f: &F,
    a: *const f32,
    b: *const f32,
    out: *mut f32,
    n: usize,
    ahead: Ahead<K>,
) {
    let l = S::LANES;
    // head: up to the first vector-aligned element of out
    let mut i = head_len::<S>(out, n);
    if i > 0 {
        ahead.fetch(0, i);
        let (va, vb) = (s.ld_part(a, i, 0.0), s.ld_part(b, i, 0.0));
        s.st_part(out, i, f.f(s, va, vb));
    }
    // vector body
    while i + l <= n {
        ahead.fetch(i, l);
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
        map2_ahead(
            s,
            &AffineW { r: s.splat(inv) },
            xr,
            w,
            or,
            n,
            Ahead::next_rows([x], r, rows, n),
        );
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
        let ahead = Ahead::next_rows([x], r, rows, n);
        let mut i = 0;
        while i + l <= n {
            ahead.fetch(i, l);
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
        let c = Scale(s.splat(1.0 / norm.max(eps)));
        map1_ahead(s, &c, xr, or, n, Ahead::next_rows([x], r, rows, n));
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
        let ahead = Ahead::next_rows([x], r, rows, n);
        let mut i = 0;
        while i + 2 * l <= valid {
            ahead.fetch(i, 2 * l);
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

mod backward;
pub use backward::*;
