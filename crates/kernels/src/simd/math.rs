//! Vectorized transcendental functions over [`Simd`], lane by lane. Error bounds are measured against f64
//! over the whole f32 range (tests/ops_math.rs) and stated in ULP of the correctly rounded result.
//!
//! Measured maxima over dense sweeps (tests/ops_math.rs), the bounds the tests enforce in brackets:
//!
//! * [`exp`]: Cody–Waite reduction `x = n ln2 + r`, |r| ≤ ln2/2, degree-6 polynomial (own fit), result scaled
//!   by 2^n in one rounding ([`Simd::scale_pow2`], `vscalefps` on AVX-512). 0.98 ULP [≤ 1 ULP] at every
//!   level (SSE4.1 included), subnormal results included. exp(x) = +inf above 88.7228, 0 below −103.97,
//!   NaN stays NaN.
//! * [`tanh`]: odd polynomial for |x| < 0.625, `1 − 2/(e^{2|x|}+1)` above, sign restored. 1.27 ULP [≤ 1.5].
//! * [`erf`]: `x·P(x²)` (degree 6 in x², own fit) for |x| < 1; above, `1 − erfc(t)` with
//!   `erfc(t) = e^{−t²} · z · Q(z)`, `z = 2/(2+t)`, Q degree 9 fitted on t ∈ [0, 10.5], and t² carried
//!   as an exact two-float product. 2.34 ULP with FMA, 2.53 on SSE4.1 [≤ 2.5 / 3].
//! * [`phi`]: the standard normal CDF Φ(x) = ½ erfc(−x/√2) for GELU, from the erfc formula alone (one
//!   exponential, no branch), with x²/2 formed exactly from x so the left tail stays accurate in
//!   relative terms (no `1 + erf` cancellation):
//!   x·Φ(x) is within 5.8 ULP (6.4 on SSE4.1) [≤ 6 / 7] for normal results.
//! * [`sigmoid2`]: σ and 1 − σ from e^{−|x|}, no overflow, no cancellation. x·σ(x) (SiLU) 3.06 ULP [≤ 3.5];
//!   GELU-tanh x·σ(2u) 2.0 ULP [≤ 4] plus 3·|2u|(1 − σ(2u)) ULP from the f32 rounding of
//!   u = √(2/π)(x + 0.044715x³) (the op's own conditioning; torch's ½x(1 + tanh u) is far worse there).
//!
//! Results below 2^-122 (from subnormal σ or Φ of very negative x) are bounded in absolute terms only.
// Fitted coefficients are written with all the digits the fit printed (they round to the f32 used).
#![allow(clippy::excessive_precision, clippy::approx_constant)]

use super::Simd;

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split in a 9-bit high part (n·LN2_HI is exact for |n| < 2^15) and the rest.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// e^r ≈ 1 + r + r²·P(r), |r| ≤ ln2/2, P of degree 4 (own fit, error 3.3e-9 relative in f64: degree 6 in
/// all is enough for f32; Cephes' expf carries one more term).
const EXP_P: [f32; 5] = [
    0.001_381_314_2,
    0.008_369_42,
    0.041_668_456,
    0.166_665_15,
    0.499_999_94,
];
/// Cephes tanhf: tanh(x) ≈ x + x·s·P(s), s = x², |x| < 0.625.
const TANH_P: [f32; 5] = [
    -5.704_988_7e-3,
    2.063_908_9e-2,
    -5.373_971_6e-2,
    1.333_144_2e-1,
    -3.333_328_2e-1,
];
/// erf(x) ≈ x·P(x²) on |x| < 1 (own least-squares/minimax fit, relative error 1.2e-9 in f64).
const ERF_P: [f32; 7] = [
    7.853_858e-5,
    -8.010_193e-4,
    5.188_328e-3,
    -2.685_381_3e-2,
    1.128_358_5e-1,
    -3.761_262_6e-1,
    1.128_379_1,
];
/// erfc(t) ≈ e^{−t²}·z·Q(z), z = 2/(2+t), t ∈ [0, 10.5] (own fit, relative error 2.2e-8 in f64).
const ERFC_Q: [f32; 10] = [
    0.010_814_044,
    -0.115_461_44,
    0.411_107_75,
    -0.647_020_9,
    0.402_862_4,
    -0.088_869_207,
    0.222_443_42,
    0.239_269_02,
    0.282_787_14,
    0.282_067_8,
];
/// ERFC_Q / 2 (exact), for Φ = ½·erfc.
const ERFC_Q_HALF: [f32; 10] = {
    let mut h = ERFC_Q;
    let mut i = 0;
    while i < h.len() {
        h[i] *= 0.5;
        i += 1;
    }
    h
};
/// Above this t, erfc(t)·e^{t²} is evaluated at this t (the result underflows to 0 anyway).
const ERFC_T_MAX: f32 = 10.5;

/// Horner evaluation of `c[0]·x^(k-1) + … + c[k-1]`.
#[inline(always)]
fn horner<S: Simd, const K: usize>(s: S, c: &[f32; K], x: S::V) -> S::V {
    let mut p = s.splat(c[0]);
    for &ci in &c[1..] {
        p = s.mul_add(p, x, s.splat(ci));
    }
    p
}

/// 1.5·2^23: adding it to a float of magnitude below 2^22 rounds that float to an integer (nearest even).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// x·log2(e) rounded to the nearest integer, for |x| < 2^21 (the exponent of a range reduction): one FMA
/// and one subtraction of the magic constant, cheaper than a multiply and a `round` (two µops on
/// AVX-512). n may differ by one from round(fl(x·log2 e)) at exact ties; the reduction below is exact for
/// either, and |r| stays within the polynomial's range (ln2/2 plus an ulp).
#[inline(always)]
fn round_log2e<S: Simd>(s: S, x: S::V) -> S::V {
    let magic = s.splat(ROUND_MAGIC);
    s.sub(s.mul_add(x, s.splat(LOG2E), magic), magic)
}

/// e^(hi + lo) for |lo| ≤ ulp(hi) (lo carries the low part of an exactly computed argument), for
/// hi in [-200, 88] only (no clamping: callers guarantee the range).
#[inline(always)]
pub fn exp_hilo<S: Simd>(s: S, hi: S::V, lo: S::V) -> S::V {
    // 1. hi = n·ln2 + r, |r| <= ln2/2; n·LN2_HI is exact, so r keeps the low bits of hi, then of lo
    let n = round_log2e(s, hi);
    let r = s.mul_add(n, s.splat(-LN2_HI), hi);
    let r = s.mul_add(n, s.splat(-LN2_LO), r);
    let r = s.add(r, lo);
    // 2. e^r = 1 + r + r²·P(r)
    let p = horner(s, &EXP_P, r);
    let y = s.add(s.mul_add(p, s.mul(r, r), r), s.splat(1.0));
    // 3. times 2^n, one rounding (gradual underflow included)
    s.scale_pow2(y, n)
}

/// e^x, ≤ 1 ULP (see the module doc).
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::V) -> S::V {
    // clamp (the constant first: maxps/minps return the second operand when either is NaN)
    let xc = s.min_raw(s.splat(89.0), s.max_raw(s.splat(-104.0), x));
    let n = round_log2e(s, xc);
    let r = s.mul_add(n, s.splat(-LN2_HI), xc);
    let r = s.mul_add(n, s.splat(-LN2_LO), r);
    let p = horner(s, &EXP_P, r);
    let y = s.add(s.mul_add(p, s.mul(r, r), r), s.splat(1.0));
    s.scale_pow2(y, n)
}

/// (σ(x), 1 − σ(x)) of the logistic sigmoid, both without overflow or cancellation: with e = e^{−|x|} and
/// r = 1/(1+e), σ = r and 1−σ = e·r for x ≥ 0 (swapped for x < 0), so σ(x) keeps its relative accuracy
/// down to where e^x underflows.
#[inline(always)]
pub fn sigmoid2<S: Simd>(s: S, x: S::V) -> (S::V, S::V) {
    let one = s.splat(1.0);
    let e = exp(s, s.sub(s.zero(), s.abs(x)));
    let r = s.recip(s.add(one, e));
    let er = s.mul(e, r);
    let neg = s.lt(x, s.zero());
    (s.select(neg, er, r), s.select(neg, r, er))
}

/// σ(x) = 1/(1 + e^{−x}) (see [`sigmoid2`]).
#[inline(always)]
pub fn sigmoid<S: Simd>(s: S, x: S::V) -> S::V {
    sigmoid2(s, x).0
}

/// tanh(x), ≤ 2 ULP.
#[inline(always)]
pub fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    let t = s.abs(x);
    // small |x|: x + x·s·P(s)
    let x2 = s.mul(x, x);
    let ps = s.mul(horner(s, &TANH_P, x2), x2);
    let small = s.mul_add(ps, x, x);
    // large |x|: 1 - 2/(e^{2|x|} + 1), sign of x
    let one = s.splat(1.0);
    // (|x| clamped at 20, where tanh is already 1 in f32, so e stays finite for `recip`)
    let tc = s.min_raw(s.splat(20.0), t);
    let e = exp(s, s.add(tc, tc));
    let large = s.sub(one, s.mul(s.splat(2.0), s.recip(s.add(e, one))));
    let large = s.copysign(large, x);
    s.select(s.lt(t, s.splat(0.625)), small, large)
}

/// erfc(t) for t ≥ 1 given t² = t2hi + t2lo exactly (t may be a rounded value of the exact √(t2hi+t2lo)).
#[inline(always)]
fn erfc_big<S: Simd>(s: S, t: S::V, t2hi: S::V, t2lo: S::V) -> S::V {
    let tc = s.min(t, s.splat(ERFC_T_MAX));
    let z = s.div(s.splat(2.0), s.add(s.splat(2.0), tc));
    let q = s.mul(horner(s, &ERFC_Q, z), z);
    let e = exp_hilo(s, s.sub(s.zero(), t2hi), s.sub(s.zero(), t2lo));
    s.mul(e, q)
}

/// erf(x), ≤ 2 ULP.
#[inline(always)]
pub fn erf<S: Simd>(s: S, x: S::V) -> S::V {
    let t = s.abs(x);
    // |x| < 1: x·P(x²)
    let x2 = s.mul(x, x);
    let small = s.mul(x, horner(s, &ERF_P, x2));
    // |x| >= 1: ±(1 - erfc(|x|)); clamp before squaring so inf·inf - inf cannot make a NaN
    let tc = s.min(t, s.splat(ERFC_T_MAX));
    let t2 = s.mul(tc, tc);
    let t2lo = s.mul_lo(tc, tc, t2);
    let big = s.sub(s.splat(1.0), erfc_big(s, tc, t2, t2lo));
    let big = s.copysign(big, x);
    s.select(s.lt(t, s.splat(1.0)), small, big)
}

/// (Φ(x), e^{−x²/2}): the standard normal CDF Φ(x) = ½ erfc(−x/√2) and the Gaussian factor of its
/// density, from one exponential. One formula for all x: c = erfc(|x|/√2) = e^{−x²/2}·z·Q(z) (valid from
/// t = 0), Φ = c/2 for x < 0 and 1 − c/2 otherwise — no `1 + erf` cancellation on the left, and x²/2 is
/// formed exactly from x so the left tail keeps its relative accuracy.
#[inline(always)]
pub fn phi_gauss<S: Simd>(s: S, x: S::V) -> (S::V, S::V) {
    // clamp before squaring (inf·inf − inf would be NaN); beyond it e^{−x²/2} is 0 anyway
    let xc = s.min_raw(s.splat(ERFC_T_MAX * std::f32::consts::SQRT_2), s.abs(x));
    // −x²/2 = hi + lo exactly (−xc/2 is exact), in [−111, 0]: no clamping needed in exp
    let xh = s.mul(xc, s.splat(-0.5));
    let hi = s.mul(xh, xc);
    let e = exp_hilo(s, hi, s.mul_lo(xh, xc, hi));
    // z = 2/(2 + x/√2) = 1/(1 + x/(2√2)); ½·erfc(|x|/√2) = e·z·(Q(z)/2)
    let z = s.recip(s.mul_add(xc, s.splat(0.25 * std::f32::consts::SQRT_2), s.splat(1.0)));
    let hc = s.mul(e, s.mul(horner(s, &ERFC_Q_HALF, z), z));
    let p = s.select(s.lt(x, s.zero()), hc, s.sub(s.splat(1.0), hc));
    (p, e)
}

/// Φ(x), the standard normal CDF (see [`phi_gauss`]).
#[inline(always)]
pub fn phi<S: Simd>(s: S, x: S::V) -> S::V {
    phi_gauss(s, x).0
}
