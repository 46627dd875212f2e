//! AVX-512 (F+BW+VL) level: the [`Simd`] primitives on zmm registers, and the per-op entry points.
//! Tails use masked loads/stores instead of a stack buffer.
#![allow(clippy::missing_safety_doc)] // each unsafe fn states its contract in a "Safety:" line

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

/// f32 bits -> bf16 bits in the low 16 of each 32-bit lane: round to nearest even, NaN made quiet.
/// Safety: AVX-512F available.
#[inline(always)]
unsafe fn bf16_bits512(v: __m512) -> __m512i {
    let b = _mm512_castps_si512(v);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        _mm512_add_epi32(b, _mm512_set1_epi32(0x7fff)),
        lsb,
    ));
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(0x40));
    let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_mask_mov_epi32(rounded, nan, quiet)
}

#[inline(always)]
fn low_mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

impl Simd for Avx512 {
    const LANES: usize = 16;
    type V = __m512;
    type M = __mmask16;

    #[inline(always)]
    fn splat(self, x: f32) -> __m512 {
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn ld(self, p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn st(self, p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn ld_part(self, p: *const f32, n: usize, pad: f32) -> __m512 {
        _mm512_mask_loadu_ps(_mm512_set1_ps(pad), low_mask(n), p)
    }
    #[inline(always)]
    unsafe fn st_part(self, p: *mut f32, n: usize, v: __m512) {
        _mm512_mask_storeu_ps(p, low_mask(n), v)
    }
    #[inline(always)]
    unsafe fn ld_bf16(self, p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn st_bf16(self, p: *mut u16, v: __m512) {
        _mm256_storeu_si256(p as *mut __m256i, _mm512_cvtepi32_epi16(bf16_bits512(v)))
    }
    #[inline(always)]
    unsafe fn ld_bf16_part(self, p: *const u16, n: usize) -> __m512 {
        let h = _mm256_maskz_loadu_epi16(low_mask(n), p as *const i16);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn st_bf16_part(self, p: *mut u16, n: usize, v: __m512) {
        _mm512_mask_cvtepi32_storeu_epi16(p as *mut i16, low_mask(n), bf16_bits512(v))
    }
    #[inline(always)]
    fn round_bf16(self, v: __m512) -> __m512 {
        unsafe { _mm512_castsi512_ps(_mm512_slli_epi32::<16>(bf16_bits512(v))) }
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
    fn mul_lo(self, a: __m512, b: __m512, prod: __m512) -> __m512 {
        unsafe { _mm512_fmsub_ps(a, b, prod) }
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
    fn max_raw(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    fn min_raw(self, a: __m512, b: __m512) -> __m512 {
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    fn recip(self, a: __m512) -> __m512 {
        // 14-bit estimate, one Newton step r + r(1 - a·r): relative error ~2^-28 before rounding
        unsafe {
            let r = _mm512_rcp14_ps(a);
            _mm512_fmadd_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(1.0)), r)
        }
    }
    #[inline(always)]
    fn abs(self, a: __m512) -> __m512 {
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    fn copysign(self, mag: __m512, sign: __m512) -> __m512 {
        // ternary logic: (sign & 0x80000000) | (mag & 0x7fffffff), bitwise select with mask c.
        unsafe {
            _mm512_castsi512_ps(_mm512_ternarylogic_epi32::<0xd8>(
                _mm512_castps_si512(mag),
                _mm512_castps_si512(sign),
                _mm512_set1_epi32(i32::MIN),
            ))
        }
    }
    #[inline(always)]
    fn round(self, a: __m512) -> __m512 {
        unsafe { _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(a) }
    }
    #[inline(always)]
    fn scale_pow2(self, a: __m512, n: __m512) -> __m512 {
        unsafe { _mm512_scalef_ps(a, n) }
    }
    #[inline(always)]
    fn lt(self, a: __m512, b: __m512) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(a, b) }
    }
    #[inline(always)]
    fn le(self, a: __m512, b: __m512) -> __mmask16 {
        unsafe { _mm512_cmp_ps_mask::<_CMP_LE_OQ>(a, b) }
    }
    #[inline(always)]
    fn select(self, m: __mmask16, t: __m512, f: __m512) -> __m512 {
        unsafe { _mm512_mask_blend_ps(m, f, t) }
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
    ($( $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty ; )*) => {$(
        /// # Safety
        /// The CPU supports this level (the dispatch table is only built after detection), and the
        /// pointers/lengths are valid as checked by the public API in `ops.rs`.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
        pub unsafe fn $name($($arg: $ty),*) -> $ret {
            kernels::$name(Avx512::new_unchecked(), $($arg),*)
        }
    )*};
}

crate::ops::vec_ops!(entry);
