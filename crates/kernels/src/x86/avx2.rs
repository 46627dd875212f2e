//! AVX2+FMA level: the [`Simd`] primitives on ymm registers, and the per-op entry points.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

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

/// f32 bits -> bf16 bits in the low 16 of each 32-bit lane: round to nearest even, NaN made quiet.
/// Safety: AVX2 available.
#[inline(always)]
unsafe fn bf16_bits256(v: __m256) -> __m256i {
    let b = _mm256_castps_si256(v);
    let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(
        _mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)),
        lsb,
    ));
    let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(0x40));
    let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
    _mm256_blendv_epi8(rounded, quiet, nan)
}

/// All-ones in the first `n` (< 8) 32-bit lanes. Safety: AVX2 available.
#[inline(always)]
unsafe fn lane_mask(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

impl Simd for Avx2 {
    const LANES: usize = 8;
    type V = __m256;
    type M = __m256;

    #[inline(always)]
    fn splat(self, x: f32) -> __m256 {
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn ld(self, p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn st(self, p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn ld_part(self, p: *const f32, n: usize, pad: f32) -> __m256 {
        // vmaskmovps: the masked-off lanes are not read (no fault past the end) and load as 0
        let m = lane_mask(n);
        _mm256_blendv_ps(
            _mm256_set1_ps(pad),
            _mm256_maskload_ps(p, m),
            _mm256_castsi256_ps(m),
        )
    }
    #[inline(always)]
    unsafe fn st_part(self, p: *mut f32, n: usize, v: __m256) {
        _mm256_maskstore_ps(p, lane_mask(n), v)
    }
    #[inline(always)]
    unsafe fn ld_bf16(self, p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn st_bf16(self, p: *mut u16, v: __m256) {
        let b = bf16_bits256(v);
        // packus works per 128-bit half: [b0..3, b0..3 | b4..7, b4..7]; gather qwords 0 and 2.
        let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(b, b));
        _mm_storeu_si128(p as *mut __m128i, _mm256_castsi256_si128(packed))
    }
    #[inline(always)]
    fn round_bf16(self, v: __m256) -> __m256 {
        unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(bf16_bits256(v))) }
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
    fn mul_lo(self, a: __m256, b: __m256, prod: __m256) -> __m256 {
        unsafe { _mm256_fmsub_ps(a, b, prod) }
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
    fn max_raw(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    fn min_raw(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    fn abs(self, a: __m256) -> __m256 {
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    fn copysign(self, mag: __m256, sign: __m256) -> __m256 {
        unsafe {
            let s = _mm256_set1_ps(-0.0);
            _mm256_or_ps(_mm256_andnot_ps(s, mag), _mm256_and_ps(s, sign))
        }
    }
    #[inline(always)]
    fn round(self, a: __m256) -> __m256 {
        unsafe { _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn scale_pow2(self, a: __m256, n: __m256) -> __m256 {
        // a * 2^n1 * 2^n2, n1 = floor(n/2), n2 = n - n1: one rounding (see the SSE4.1 version).
        unsafe {
            let ni = _mm256_cvtps_epi32(n);
            let n1 = _mm256_srai_epi32::<1>(ni);
            let n2 = _mm256_sub_epi32(ni, n1);
            let bias = _mm256_set1_epi32(127);
            let p1 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n1, bias)));
            let p2 = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(n2, bias)));
            _mm256_mul_ps(_mm256_mul_ps(a, p1), p2)
        }
    }
    #[inline(always)]
    fn lt(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn le(self, a: __m256, b: __m256) -> __m256 {
        unsafe { _mm256_cmp_ps::<_CMP_LE_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __m256, t: __m256, f: __m256) -> __m256 {
        unsafe { _mm256_blendv_ps(f, t, m) }
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
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {$(
        /// # Safety
        /// The CPU supports this level (the dispatch table is only built after detection), and the
        /// pointers/lengths are valid as checked by the public API in `ops.rs`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            kernels::$name(Avx2::new_unchecked(), $($arg),*)
        }
    )*};
}

crate::ops::vec_ops!(entry);
