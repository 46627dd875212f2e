//! SSE4.1 level: the [`Simd`] primitives on xmm registers, and the per-op entry points.
//! There is no FMA at this level: `mul_add` rounds twice.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

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

/// f32 bits -> bf16 bits in the low 16 of each 32-bit lane: round to nearest even, NaN made quiet.
/// Safety: SSE4.1 available.
#[inline(always)]
pub(crate) unsafe fn bf16_bits128(v: __m128) -> __m128i {
    let b = _mm_castps_si128(v);
    let lsb = _mm_and_si128(_mm_srli_epi32::<16>(b), _mm_set1_epi32(1));
    let rounded =
        _mm_srli_epi32::<16>(_mm_add_epi32(_mm_add_epi32(b, _mm_set1_epi32(0x7fff)), lsb));
    let quiet = _mm_or_si128(_mm_srli_epi32::<16>(b), _mm_set1_epi32(0x40));
    let nan = _mm_castps_si128(_mm_cmpunord_ps(v, v));
    _mm_blendv_epi8(rounded, quiet, nan)
}

impl Simd for Sse41 {
    const LANES: usize = 4;
    type V = __m128;
    type M = __m128;

    #[inline(always)]
    fn splat(self, x: f32) -> __m128 {
        unsafe { _mm_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn ld(self, p: *const f32) -> __m128 {
        _mm_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn st(self, p: *mut f32, v: __m128) {
        _mm_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn ld_bf16(self, p: *const u16) -> __m128 {
        let h = _mm_loadl_epi64(p as *const __m128i);
        _mm_castsi128_ps(_mm_slli_epi32::<16>(_mm_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn st_bf16(self, p: *mut u16, v: __m128) {
        let b = bf16_bits128(v);
        _mm_storel_epi64(p as *mut __m128i, _mm_packus_epi32(b, b))
    }
    #[inline(always)]
    fn round_bf16(self, v: __m128) -> __m128 {
        unsafe { _mm_castsi128_ps(_mm_slli_epi32::<16>(bf16_bits128(v))) }
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
    fn mul_lo(self, a: __m128, b: __m128, prod: __m128) -> __m128 {
        // Dekker's two-product: split each factor into 12+12 bits so partial products are exact.
        unsafe {
            let k = _mm_set1_ps(4097.0);
            let ca = _mm_mul_ps(k, a);
            let ah = _mm_sub_ps(ca, _mm_sub_ps(ca, a));
            let al = _mm_sub_ps(a, ah);
            let cb = _mm_mul_ps(k, b);
            let bh = _mm_sub_ps(cb, _mm_sub_ps(cb, b));
            let bl = _mm_sub_ps(b, bh);
            let e = _mm_sub_ps(_mm_mul_ps(ah, bh), prod);
            let e = _mm_add_ps(e, _mm_mul_ps(ah, bl));
            let e = _mm_add_ps(e, _mm_mul_ps(al, bh));
            _mm_add_ps(e, _mm_mul_ps(al, bl))
        }
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
    fn max_raw(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_max_ps(a, b) }
    }
    #[inline(always)]
    fn min_raw(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_min_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: __m128) -> __m128 {
        unsafe { _mm_andnot_ps(_mm_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn copysign(self, mag: __m128, sign: __m128) -> __m128 {
        unsafe {
            let s = _mm_set1_ps(-0.0);
            _mm_or_ps(_mm_andnot_ps(s, mag), _mm_and_ps(s, sign))
        }
    }
    #[inline(always)]
    fn round(self, a: __m128) -> __m128 {
        unsafe { _mm_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn scale_pow2(self, a: __m128, n: __m128) -> __m128 {
        // a * 2^n1 * 2^n2 with n1 = floor(n/2), n2 = n - n1: both factors are normal floats, the first
        // product is exact, so the result is rounded once (also when it is subnormal).
        unsafe {
            let ni = _mm_cvtps_epi32(n);
            let n1 = _mm_srai_epi32::<1>(ni);
            let n2 = _mm_sub_epi32(ni, n1);
            let bias = _mm_set1_epi32(127);
            let p1 = _mm_castsi128_ps(_mm_slli_epi32::<23>(_mm_add_epi32(n1, bias)));
            let p2 = _mm_castsi128_ps(_mm_slli_epi32::<23>(_mm_add_epi32(n2, bias)));
            _mm_mul_ps(_mm_mul_ps(a, p1), p2)
        }
    }
    #[inline(always)]
    fn lt(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_cmplt_ps(a, b) }
    }
    #[inline(always)]
    fn le(self, a: __m128, b: __m128) -> __m128 {
        unsafe { _mm_cmple_ps(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __m128, t: __m128, f: __m128) -> __m128 {
        unsafe { _mm_blendv_ps(f, t, m) }
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
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {$(
        /// # Safety
        /// The CPU supports this level (the dispatch table is only built after detection), and the
        /// pointers/lengths are valid as checked by the public API in `ops.rs`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "sse4.1")]
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            kernels::$name(Sse41::new_unchecked(), $($arg),*)
        }
    )*};
}

crate::ops::vec_ops!(entry);
