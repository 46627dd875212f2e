//! SSE4.1 level: the [`Simd`] primitives on xmm registers, and the per-op entry points.
//! There is no FMA at this level: `mul_add` rounds twice.

use crate::simd::{kernels, Simd};
use std::arch::x86_64::*;

/// Proof that the CPU supports SSE4.1.
#[derive(Clone, Copy)]
pub struct Sse41(());

impl Sse41 {
    /// Safety: the caller has verified sse4.1.
    #[inline(always)]
    pub unsafe fn new_unchecked() -> Self {
        Sse41(())
    }
}

/// Horizontal sum of 4 lanes: (v0+v2)+(v1+v3). Safety: SSE available.
#[inline(always)]
pub(crate) unsafe fn hsum128(v: __m128) -> f32 {
    let hi = _mm_movehl_ps(v, v);
    let s = _mm_add_ps(v, hi);
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

impl Simd for Sse41 {
    const LANES: usize = 4;
    type V = __m128;

    #[inline(always)]
    fn splat(self, x: f32) -> __m128 {
        unsafe { _mm_set1_ps(x) }
    }
    #[inline(always)]
    fn load(self, s: &[f32]) -> __m128 {
        debug_assert!(s.len() >= 4);
        unsafe { _mm_loadu_ps(s.as_ptr()) }
    }
    #[inline(always)]
    fn store(self, s: &mut [f32], v: __m128) {
        debug_assert!(s.len() >= 4);
        unsafe { _mm_storeu_ps(s.as_mut_ptr(), v) }
    }
    #[inline(always)]
    fn add(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_add_ps(a, b) }
    }
    #[inline(always)]
    fn sub(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_sub_ps(a, b) }
    }
    #[inline(always)]
    fn mul(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_mul_ps(a, b) }
    }
    #[inline(always)]
    fn div(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_div_ps(a, b) }
    }
    #[inline(always)]
    fn mul_add(self, a: __m128, b: __m128, c: __m128) -> __m128 {
        unsafe { _mm_add_ps(_mm_mul_ps(a, b), c) }
    }
    #[inline(always)]
    fn max(self, a: __m128, b: __m128) -> __m128 {
        unsafe {
            let m = _mm_max_ps(a, b);
            _mm_blendv_ps(m, a, _mm_cmpunord_ps(a, a))
        }
    }
    #[inline(always)]
    fn min(self, a: __m128, b: __m128) -> __m128 {
        unsafe {
            let m = _mm_min_ps(a, b);
            _mm_blendv_ps(m, a, _mm_cmpunord_ps(a, a))
        }
    }
    #[inline(always)]
    fn reduce_sum(self, v: __m128) -> f32 {
        unsafe { hsum128(v) }
    }
    #[inline(always)]
    fn reduce_max(self, v: __m128) -> f32 {
        unsafe {
            let m = self.max(v, _mm_movehl_ps(v, v));
            let m = self.max(m, _mm_shuffle_ps::<0b01>(m, m));
            _mm_cvtss_f32(m)
        }
    }
}

macro_rules! entry {
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) ; )*) => {$(
        /// Safety: the CPU supports this level (the dispatch table is only built after detection).
        #[target_feature(enable = "sse4.1")]
        pub unsafe fn $name($($arg: $ty),*) {
            kernels::$name(Sse41::new_unchecked(), $($arg),*)
        }
    )*};
}

entry! {
    add(a: &[f32], b: &[f32], out: &mut [f32]);
}
