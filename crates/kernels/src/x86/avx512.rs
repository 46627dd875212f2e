//! AVX-512 (F+BW+VL) level: the [`Simd`] primitives on zmm registers, and the per-op entry points.

use crate::simd::{kernels, Simd};
use std::arch::x86_64::*;

/// Proof that the CPU supports AVX-512 F+BW+VL, AVX2 and FMA.
#[derive(Clone, Copy)]
pub struct Avx512(());

impl Avx512 {
    /// Safety: the caller has verified avx512f, avx512bw, avx512vl, avx2 and fma (see `Isa::detect`).
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Self {
        Avx512(())
    }
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m512 {
        debug_assert!(s.len() >= 16);
        unsafe { _mm512_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m512) {
        debug_assert!(s.len() >= 16);
        unsafe { _mm512_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    fn max(self, a: __m512, b: __m512) -> __m512 {
        // maxps returns its second operand when either is NaN; put a's NaNs back.
        unsafe {
            let m = _mm512_max_ps(a, b);
            _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a), a)
        }
    }
    #[inline(always)]
    fn min(self, a: __m512, b: __m512) -> __m512 {
        unsafe {
            let m = _mm512_min_ps(a, b);
            _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a), a)
        }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m512) -> f32 {
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            super::avx2::hsum256(_mm256_add_ps(lo, hi))
        }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m512) -> f32 {
        unsafe {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            let a = super::avx2::Avx2::new_unchecked();
            a.reduce_max(a.max(lo, hi))
        }
    }
}

/// Entry points: the `#[target_feature]` boundary, one per op.
macro_rules! entry {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) ; )*) => {$(
        /// Safety: the CPU supports this level (the dispatch table is only built after detection).
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        pub unsafe fn $name($($arg: $ty),*) {
            kernels::$name(Avx512::new_unchecked(), $($arg),*)
        }
    )*};
}

entry! {
    add(a: &[f32], b: &[f32], out: &mut [f32]);
}
