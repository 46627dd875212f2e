//! The x86 instantiations of the flash kernel: a vector exp per level (private to attention until the
//! shared `Simd` trait has one) and one `#[target_feature]` entry point per level.
//!
//! exp (Cephes expf): n = round(x·log2 e), r = x − n·ln2 (two-part constant, exact first product),
//! e^r by a degree-6 polynomial on |r| <= ln2/2, times 2^n built in the exponent bits. x is clamped to
//! [−87.33, 88] first (so 2^n stays a normal number) and lanes below −87.33 are set to 0.

use super::flash::{self, AttnSimd};
use super::lanes;
use super::{Job, Task};
use crate::simd::Simd;
use crate::x86::{avx2::Avx2, avx512::Avx512, sse41::Sse41};
use std::arch::x86_64::*;

const EXP_LO: f32 = -87.336_54;
const EXP_HI: f32 = 88.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4; // 0.693359375, 9 significant bits: n·LN2_HI is exact
const LN2_LO: f32 = -2.121_944_4e-4;
const P0: f32 = 1.987_569_1e-4;
const P1: f32 = 1.398_199_9e-3;
const P2: f32 = 8.333_452e-3;
const P3: f32 = 4.166_579_6e-2;
const P4: f32 = 1.666_666_5e-1;
const P5: f32 = 0.5;

/// e^r for |r| <= ln2/2, given r (Cephes polynomial): ((((P0 r + P1) r + P2) r + P3) r + P4) r + P5) r² + r + 1
#[inline(always)]
fn exp_reduced<S: Simd>(s: S, r: S::V) -> S::V {
    let mut y = s.splat(P0);
    y = s.mul_add(y, r, s.splat(P1));
    y = s.mul_add(y, r, s.splat(P2));
    y = s.mul_add(y, r, s.splat(P3));
    y = s.mul_add(y, r, s.splat(P4));
    y = s.mul_add(y, r, s.splat(P5));
    s.mul_add(y, s.mul(r, r), s.add(r, s.splat(1.0)))
}

/// r = x − n·ln2 in two steps (n integral).
#[inline(always)]
fn reduce<S: Simd>(s: S, x: S::V, n: S::V) -> S::V {
    let r = s.mul_add(n, s.splat(-LN2_HI), x);
    s.mul_add(n, s.splat(-LN2_LO), r)
}

impl AttnSimd for Sse41 {
    #[inline(always)]
    fn exp(self, x: __m128) -> __m128 {
        unsafe {
            // maxps/minps return the second operand for NaN: keep x second so NaN passes through
            let xc = _mm_min_ps(_mm_set1_ps(EXP_HI), _mm_max_ps(_mm_set1_ps(EXP_LO), x));
            let n = _mm_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm_mul_ps(
                xc,
                _mm_set1_ps(LOG2E),
            ));
            let y = exp_reduced(self, reduce(self, xc, n));
            let pow2 = _mm_castsi128_ps(_mm_slli_epi32::<23>(_mm_add_epi32(
                _mm_cvtps_epi32(n),
                _mm_set1_epi32(127),
            )));
            let under = _mm_cmplt_ps(x, _mm_set1_ps(EXP_LO));
            _mm_andnot_ps(under, _mm_mul_ps(y, pow2))
        }
    }
}

impl AttnSimd for Avx2 {
    #[inline(always)]
    fn exp(self, x: __m256) -> __m256 {
        unsafe {
            let xc = _mm256_min_ps(
                _mm256_set1_ps(EXP_HI),
                _mm256_max_ps(_mm256_set1_ps(EXP_LO), x),
            );
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm256_mul_ps(xc, _mm256_set1_ps(LOG2E)),
            );
            let y = exp_reduced(self, reduce(self, xc, n));
            let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                _mm256_cvtps_epi32(n),
                _mm256_set1_epi32(127),
            )));
            let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_LO));
            _mm256_andnot_ps(under, _mm256_mul_ps(y, pow2))
        }
    }
}

impl AttnSimd for Avx512 {
    #[inline(always)]
    fn exp(self, x: __m512) -> __m512 {
        unsafe {
            let xc = _mm512_min_ps(
                _mm512_set1_ps(EXP_HI),
                _mm512_max_ps(_mm512_set1_ps(EXP_LO), x),
            );
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(xc, _mm512_set1_ps(LOG2E)),
            );
            let y = _mm512_scalef_ps(exp_reduced(self, reduce(self, xc, n)), n);
            let under = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_set1_ps(EXP_LO));
            _mm512_maskz_mov_ps(!under, y)
        }
    }
}

/// Safety: the CPU supports SSE4.1; `job` was validated and `t` comes from the plan.
#[target_feature(enable = "sse4.1")]
pub(super) unsafe fn task_sse41(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let s = Sse41::new_unchecked();
    if (t.i1 - t.i0) * job.group >= Sse41::LANES {
        lanes::run::<_, 2, 4, 4>(s, job, t, scratch)
    } else {
        flash::run::<_, 2>(s, job, t, scratch)
    }
}

/// Safety: the CPU supports AVX2 and FMA; `job` was validated and `t` comes from the plan.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn task_avx2(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let s = Avx2::new_unchecked();
    if (t.i1 - t.i0) * job.group >= Avx2::LANES {
        lanes::run::<_, 2, 4, 4>(s, job, t, scratch)
    } else {
        flash::run::<_, 2>(s, job, t, scratch)
    }
}

/// Safety: the CPU supports AVX-512 F+BW+VL, AVX2 and FMA; `job` was validated and `t` comes from the plan.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub(super) unsafe fn task_avx512(job: &Job, t: &Task, scratch: &mut Vec<f32>) {
    let s = Avx512::new_unchecked();
    if (t.i1 - t.i0) * job.group >= Avx512::LANES {
        lanes::run::<_, 4, 6, 4>(s, job, t, scratch)
    } else {
        flash::run::<_, 4>(s, job, t, scratch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{Features, Isa};

    /// The vector exp of every available level against f64 over the softmax range and special values.
    #[test]
    fn exp_matches_f64() {
        let f = Features::detect();
        let mut xs: Vec<f32> = (0..20001).map(|i| -100.0 + i as f32 * 0.0095).collect();
        xs.extend([
            0.0,
            -0.0,
            1e-8,
            -1e-8,
            -87.3,
            -87.4,
            87.9,
            f32::NEG_INFINITY,
        ]);
        while !xs.len().is_multiple_of(16) {
            xs.push(0.5);
        }
        let check = |name: &str, ys: &[f32]| {
            for (&x, &y) in xs.iter().zip(ys) {
                let want = (x as f64).exp();
                if x < EXP_LO {
                    assert_eq!(y, 0.0, "{name}: exp({x})");
                } else if x > EXP_HI {
                    assert!(
                        y.is_finite() && y >= 1.6e38,
                        "{name}: exp({x}) = {y} (saturates)"
                    );
                } else {
                    let rel = ((y as f64 - want) / want).abs();
                    assert!(
                        rel < 3e-7,
                        "{name}: exp({x}) = {y}, want {want}, rel {rel:e}"
                    );
                }
            }
        };
        fn run<S: AttnSimd>(s: S, xs: &[f32]) -> Vec<f32> {
            let mut ys = vec![0.0; xs.len()];
            for c in (0..xs.len()).step_by(S::LANES) {
                s.store(&mut ys[c..], s.exp(s.load(&xs[c..])));
            }
            ys
        }
        if f.supports(Isa::Sse41) {
            check("sse4.1", &unsafe { run_sse(&xs) });
        }
        if f.supports(Isa::Avx2) {
            check("avx2", &unsafe { run_avx2(&xs) });
        }
        if f.supports(Isa::Avx512) {
            check("avx512", &unsafe { run_avx512(&xs) });
        }
        #[target_feature(enable = "sse4.1")]
        unsafe fn run_sse(xs: &[f32]) -> Vec<f32> {
            run(Sse41::new_unchecked(), xs)
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run_avx2(xs: &[f32]) -> Vec<f32> {
            run(Avx2::new_unchecked(), xs)
        }
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        unsafe fn run_avx512(xs: &[f32]) -> Vec<f32> {
            run(Avx512::new_unchecked(), xs)
        }
        // NaN stays NaN
        let nan = [f32::NAN; 16];
        if f.supports(Isa::Avx512) {
            assert!(unsafe { run_avx512(&nan) }.iter().all(|y| y.is_nan()));
        }
        if f.supports(Isa::Avx2) {
            assert!(unsafe { run_avx2(&nan) }.iter().all(|y| y.is_nan()));
        }
        if f.supports(Isa::Sse41) {
            assert!(unsafe { run_sse(&nan) }.iter().all(|y| y.is_nan()));
        }
    }
}
