//! The integer lanes ([`SimdInt`]) of the x86 levels and the `#[target_feature]` entry points of the
//! quantized matmul. AVX-512 CPUs run the AVX2 instantiation (the same generic source; a 512-bit and a
//! VNNI `vpdpwssd` instantiation are not written yet — this code has only been run on AVX2 machines).

use std::arch::x86_64::*;

use super::{kernel, Q4Args, QArgs, QTable};
use crate::simd::int::{SimdInt, SimdQ4};
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

impl SimdQ4 for Sse41 {
    /// values 0..16, values 16..32
    type W4 = [__m128i; 2];
    type X8 = [__m128i; 2];
    #[inline(always)]
    unsafe fn ld_w4(self, p: *const u8) -> [__m128i; 2] {
        let v = _mm_loadu_si128(p as *const __m128i);
        let m = _mm_set1_epi8(0x0f);
        [
            _mm_and_si128(v, m),
            _mm_and_si128(_mm_srli_epi16::<4>(v), m),
        ]
    }
    #[inline(always)]
    unsafe fn ld_x8(self, p: *const i8) -> [__m128i; 2] {
        [
            _mm_loadu_si128(p as *const __m128i),
            _mm_loadu_si128(p.add(16) as *const __m128i),
        ]
    }
    #[inline(always)]
    fn dot4(self, w: [__m128i; 2], x: [__m128i; 2]) -> __m128 {
        unsafe {
            // u8 × s8 pairs into i16 (|pair| ≤ 2·15·127), the two halves added (≤ 4·15·127 < 2^15), then
            // pairs of i16 into i32
            let p = _mm_add_epi16(_mm_maddubs_epi16(w[0], x[0]), _mm_maddubs_epi16(w[1], x[1]));
            _mm_cvtepi32_ps(_mm_madd_epi16(p, _mm_set1_epi16(1)))
        }
    }
    #[inline(always)]
    unsafe fn ld_u8(self, p: *const u8) -> __m128 {
        let v = _mm_cvtsi32_si128((p as *const i32).read_unaligned());
        _mm_cvtepi32_ps(_mm_cvtepu8_epi32(v))
    }
}

impl SimdQ4 for Avx2 {
    /// the 32 values in order (low nibbles in the low 128 bits, high nibbles in the high)
    type W4 = __m256i;
    type X8 = __m256i;
    #[inline(always)]
    unsafe fn ld_w4(self, p: *const u8) -> __m256i {
        // the 16 bytes in both halves, the high half shifted right by 4 (per 32-bit lane: each byte's low
        // nibble then holds its own high nibble), then masked
        let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(p as *const __m128i));
        let both = _mm256_srlv_epi32(v, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4));
        _mm256_and_si256(both, _mm256_set1_epi8(0x0f))
    }
    #[inline(always)]
    unsafe fn ld_x8(self, p: *const i8) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    fn dot4(self, w: __m256i, x: __m256i) -> __m256 {
        unsafe {
            let p = _mm256_maddubs_epi16(w, x);
            _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        }
    }
    #[inline(always)]
    unsafe fn ld_u8(self, p: *const u8) -> __m256 {
        let v = _mm_loadl_epi64(p as *const __m128i);
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
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

/// Safety: the CPU supports SSE4.1 (and SSSE3, which it implies); the contract of `scalar::q4_range`.
#[target_feature(enable = "sse4.1")]
unsafe fn q4_range_sse41(a: &Q4Args, c0: usize, c1: usize) {
    kernel::q4_range(Sse41::new_unchecked(), a, c0, c1)
}

/// Safety: the CPU supports AVX2 and FMA; the contract of `scalar::q4_range`.
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_range_avx2(a: &Q4Args, c0: usize, c1: usize) {
    kernel::q4_range(Avx2::new_unchecked(), a, c0, c1)
}

pub(crate) static SSE41: QTable = QTable {
    q8_range: q8_range_sse41,
    q4_range: q4_range_sse41,
};
pub(crate) static AVX2: QTable = QTable {
    q8_range: q8_range_avx2,
    q4_range: q4_range_avx2,
};
