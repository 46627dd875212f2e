//! The integer lanes ([`SimdInt`]) of the x86 levels and the `#[target_feature]` entry points of the
//! quantized matmul. AVX-512 CPUs run the AVX2 instantiation (the same generic source; a 512-bit and a
//! VNNI `vpdpwssd` instantiation are not written yet — this code has only been run on AVX2 machines).

use std::arch::x86_64::*;

use super::{kernel, QArgs, QTable};
use crate::simd::int::SimdInt;
use crate::x86::avx2::Avx2;
use crate::x86::sse41::Sse41;

impl SimdInt for Sse41 {
    /// 4 × 8 i16.
    type W = [__m128i; 4];
    type X = [__m128i; 4];
    #[inline(always)]
    unsafe fn ld_w(self, p: *const i8) -> [__m128i; 4] {
        let lo = _mm_loadu_si128(p as *const __m128i);
        let hi = _mm_loadu_si128(p.add(16) as *const __m128i);
        [
            _mm_cvtepi8_epi16(lo),
            _mm_cvtepi8_epi16(_mm_srli_si128::<8>(lo)),
            _mm_cvtepi8_epi16(hi),
            _mm_cvtepi8_epi16(_mm_srli_si128::<8>(hi)),
        ]
    }
    #[inline(always)]
    unsafe fn ld_x(self, p: *const i16) -> [__m128i; 4] {
        std::array::from_fn(|i| unsafe { _mm_loadu_si128(p.add(8 * i) as *const __m128i) })
    }
    #[inline(always)]
    fn dot(self, w: [__m128i; 4], x: [__m128i; 4]) -> __m128 {
        unsafe {
            // i16 × i16 pairs into i32 (no overflow: |w| ≤ 128), then the four partial vectors
            let a = _mm_add_epi32(_mm_madd_epi16(w[0], x[0]), _mm_madd_epi16(w[1], x[1]));
            let b = _mm_add_epi32(_mm_madd_epi16(w[2], x[2]), _mm_madd_epi16(w[3], x[3]));
            _mm_cvtepi32_ps(_mm_add_epi32(a, b))
        }
    }
}

impl SimdInt for Avx2 {
    /// 2 × 16 i16.
    type W = [__m256i; 2];
    type X = [__m256i; 2];
    #[inline(always)]
    unsafe fn ld_w(self, p: *const i8) -> [__m256i; 2] {
        [
            _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i)),
        ]
    }
    #[inline(always)]
    unsafe fn ld_x(self, p: *const i16) -> [__m256i; 2] {
        [
            _mm256_loadu_si256(p as *const __m256i),
            _mm256_loadu_si256(p.add(16) as *const __m256i),
        ]
    }
    #[inline(always)]
    fn dot(self, w: [__m256i; 2], x: [__m256i; 2]) -> __m256 {
        unsafe {
            let s = _mm256_add_epi32(_mm256_madd_epi16(w[0], x[0]), _mm256_madd_epi16(w[1], x[1]));
            _mm256_cvtepi32_ps(s)
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
