//! AVX2+FMA level: the [`Simd`] primitives on ymm registers, and the per-op entry points.

use crate::simd::{kernels, Simd};
use std::arch::x86_64::*;

/// Proof that the CPU supports AVX2 and FMA.
#[derive(Clone, Copy)]
pub struct Avx2(());

impl Avx2 {
    /// Safety: the caller has verified avx2 and fma.
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Self {
        Avx2(())
    }
}

/// Horizontal sum of 8 lanes. Safety: AVX available.
#[inline(always)]
pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    super::sse41::hsum128(_mm_add_ps(lo, hi))
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m256 {
        debug_assert!(s.len() >= 8);
        unsafe { _mm256_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m256) {
        debug_assert!(s.len() >= 8);
        unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m256, b: __m256) -> __m256 {
        unsafe {
            let m = _mm256_max_ps(a, b);
            _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
    }
    #[inline(always)]
    fn min(self, a: __m256, b: __m256) -> __m256 {
        unsafe {
            let m = _mm256_min_ps(a, b);
            _mm256_blendv_ps(m, a, _mm256_cmp_ps::<_CMP_UNORD_Q>(a, a))
        }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m256) -> f32 {
        unsafe { hsum256(v) }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m256) -> f32 {
        unsafe {
            let s = super::sse41::Sse41::new_unchecked();
            s.reduce_max(s.max(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v)))
        }
    }
}

macro_rules! entry {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) ; )*) => {$(
        /// Safety: the CPU supports this level (the dispatch table is only built after detection).
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $name($($arg: $ty),*) {
            kernels::$name(Avx2::new_unchecked(), $($arg),*)
        }
    )*};
}

entry! {
    add(a: &[f32], b: &[f32], out: &mut [f32]);
}
