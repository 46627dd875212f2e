//! The int8 lanes ([`SimdI8`]) of the x86 levels and the `#[target_feature]` entry points of the quantized
//! matmul. AVX-512 CPUs run the AVX2 instantiation (the same generic source; a 512-bit and a VNNI
//! `vpdpbusd` instantiation are not written yet — this code has only been run on AVX2 machines).

use std::arch::x86_64::*;

use super::{kernel, QArgs, QTable};
use crate::simd::int8::SimdI8;
use crate::x86::avx2::Avx2;
use crate::x86::sse41::Sse41;

impl SimdI8 for Sse41 {
    /// Two xmm halves.
    type B = [__m128i; 2];
    #[inline(always)]
    unsafe fn ld_b(self, p: *const i8) -> [__m128i; 2] {
        [
            _mm_loadu_si128(p as *const __m128i),
            _mm_loadu_si128(p.add(16) as *const __m128i),
        ]
    }
    #[inline(always)]
    fn abs_b(self, b: [__m128i; 2]) -> [__m128i; 2] {
        unsafe { [_mm_abs_epi8(b[0]), _mm_abs_epi8(b[1])] }
    }
    #[inline(always)]
    fn dot_b(self, wa: [__m128i; 2], w: [__m128i; 2], a: [__m128i; 2]) -> __m128 {
        unsafe {
            let ones = _mm_set1_epi16(1);
            let h = |i: usize| {
                // |w| · (a · sign(w)): u8 × s8 pairs into i16 (≤ 32512, no saturation), then pairs into i32
                _mm_madd_epi16(_mm_maddubs_epi16(wa[i], _mm_sign_epi8(a[i], w[i])), ones)
            };
            _mm_cvtepi32_ps(_mm_add_epi32(h(0), h(1)))
        }
    }
}

impl SimdI8 for Avx2 {
    type B = __m256i;
    #[inline(always)]
    unsafe fn ld_b(self, p: *const i8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    fn abs_b(self, b: __m256i) -> __m256i {
        unsafe { _mm256_abs_epi8(b) }
    }
    #[inline(always)]
    fn dot_b(self, wa: __m256i, w: __m256i, a: __m256i) -> __m256 {
        unsafe {
            let p16 = _mm256_maddubs_epi16(wa, _mm256_sign_epi8(a, w));
            _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)))
        }
    }
}

/// Safety: the CPU supports SSE4.1; the contract of `scalar::q8_range`.
#[target_feature(enable = "sse4.1")]
unsafe fn q8_range_sse41(a: &QArgs, c0: usize, c1: usize) {
    kernel::q8_range(Sse41::new_unchecked(), a, c0, c1)
}

/// Safety: the CPU supports AVX2 and FMA; the contract of `scalar::q8_range`.
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_range_avx2(a: &QArgs, c0: usize, c1: usize) {
    kernel::q8_range(Avx2::new_unchecked(), a, c0, c1)
}

pub(crate) static SSE41: QTable = QTable {
    q8_range: q8_range_sse41,
};
pub(crate) static AVX2: QTable = QTable {
    q8_range: q8_range_avx2,
};
