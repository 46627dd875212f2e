//! The integer lanes ([`SimdInt`], [`SimdQ4`]) of SSE4.1 and AVX2 and the `#[target_feature]` entry points
//! of the quantized matmul at these levels (AVX-512: `x86_512.rs`).

use std::arch::x86_64::*;

use super::a8::{self, A8Args, A8Table};
use super::{kernel, Q4Args, QArgs, QTable, Q4_SUBS};
use crate::simd::int::{SimdA8, SimdInt, SimdQ4};
use crate::simd::Simd;
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

/// `pshufb` controls that spread the i16 word t of a vector over all 8 words of a 128-bit lane; read as
/// 16·G bytes from entry t·G, they give 128-bit lane l word t·G + l (the step multipliers of `SimdQ4`).
pub(super) static WORD_CTRL: [[u8; 16]; Q4_SUBS] = {
    let mut c = [[0u8; 16]; Q4_SUBS];
    let mut t = 0;
    while t < Q4_SUBS {
        let mut b = 0;
        while b < 16 {
            c[t][b] = (2 * t + b % 2) as u8;
            b += 1;
        }
        t += 1;
    }
    c
};

impl SimdQ4 for Sse41 {
    const GROUP: usize = 1;
    type I = __m128i;
    /// values 0..16, values 16..32
    type W4 = [__m128i; 2];
    type X8 = [__m128i; 2];
    /// 8 × i16
    type Sc8 = __m128i;
    type Sc = __m128i;
    type Mn = [__m128; 2];
    #[inline(always)]
    fn izero(self) -> __m128i {
        unsafe { _mm_setzero_si128() }
    }
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
    unsafe fn ld_sc8(self, p: *const u8) -> __m128i {
        _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i))
    }
    #[inline(always)]
    fn sc_step(self, sc: __m128i, t: usize) -> __m128i {
        unsafe {
            _mm_shuffle_epi8(
                sc,
                _mm_loadu_si128(WORD_CTRL.as_ptr().add(t) as *const __m128i),
            )
        }
    }
    #[inline(always)]
    fn dot4<const VNNI: bool>(
        self,
        acc: __m128i,
        w: [__m128i; 2],
        x: [__m128i; 2],
        sc: __m128i,
    ) -> __m128i {
        unsafe {
            // u8 × s8 pairs into i16, the two halves added (≤ 4·15·127 < 2^15), then i16 × scale pairs
            let p = _mm_add_epi16(_mm_maddubs_epi16(w[0], x[0]), _mm_maddubs_epi16(w[1], x[1]));
            _mm_add_epi32(acc, _mm_madd_epi16(p, sc))
        }
    }
    #[inline(always)]
    fn cvt_i(self, v: __m128i) -> __m128 {
        unsafe { _mm_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn ld_mn(self, p: *const u8, nmin: f32) -> [__m128; 2] {
        let v = _mm_loadl_epi64(p as *const __m128i);
        let n = _mm_set1_ps(nmin);
        [
            _mm_mul_ps(_mm_cvtepi32_ps(_mm_cvtepu8_epi32(v)), n),
            _mm_mul_ps(
                _mm_cvtepi32_ps(_mm_cvtepu8_epi32(_mm_srli_si128::<4>(v))),
                n,
            ),
        ]
    }
    #[inline(always)]
    unsafe fn min_fma(self, mn: [__m128; 2], p: *const f32, acc: __m128) -> __m128 {
        self.mul_add(
            mn[1],
            self.ld(p.add(4)),
            self.mul_add(mn[0], self.ld(p), acc),
        )
    }
}

impl SimdQ4 for Avx2 {
    const GROUP: usize = 2;
    type I = __m256i;
    type W4 = [__m256i; 2];
    type X8 = [__m256i; 2];
    type Sc8 = __m256i;
    type Sc = __m256i;
    type Mn = __m256;
    #[inline(always)]
    fn izero(self) -> __m256i {
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn ld_w4(self, p: *const u8) -> [__m256i; 2] {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let m = _mm256_set1_epi8(0x0f);
        [
            _mm256_and_si256(v, m),
            _mm256_and_si256(_mm256_srli_epi16::<4>(v), m),
        ]
    }
    #[inline(always)]
    unsafe fn ld_x8(self, p: *const i8) -> [__m256i; 2] {
        [
            _mm256_loadu_si256(p as *const __m256i),
            _mm256_loadu_si256(p.add(32) as *const __m256i),
        ]
    }
    #[inline(always)]
    unsafe fn ld_sc8(self, p: *const u8) -> __m256i {
        _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i)))
    }
    #[inline(always)]
    fn sc_step(self, sc: __m256i, t: usize) -> __m256i {
        unsafe {
            let c = _mm256_loadu_si256(WORD_CTRL.as_ptr().add(2 * t) as *const __m256i);
            _mm256_shuffle_epi8(sc, c)
        }
    }
    #[inline(always)]
    fn dot4<const VNNI: bool>(
        self,
        acc: __m256i,
        w: [__m256i; 2],
        x: [__m256i; 2],
        sc: __m256i,
    ) -> __m256i {
        unsafe {
            let p = _mm256_add_epi16(
                _mm256_maddubs_epi16(w[0], x[0]),
                _mm256_maddubs_epi16(w[1], x[1]),
            );
            if VNNI {
                _mm256_dpwssd_avx_epi32(acc, p, sc)
            } else {
                _mm256_add_epi32(acc, _mm256_madd_epi16(p, sc))
            }
        }
    }
    #[inline(always)]
    fn cvt_i(self, v: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn ld_mn(self, p: *const u8, nmin: f32) -> __m256 {
        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(nmin))
    }
    #[inline(always)]
    unsafe fn min_fma(self, mn: __m256, p: *const f32, acc: __m256) -> __m256 {
        _mm256_fmadd_ps(mn, _mm256_loadu_ps(p), acc)
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
    kernel::q4_range::<_, false>(Sse41::new_unchecked(), a, c0, c1)
}

/// Safety: the CPU supports AVX2 and FMA; the contract of `scalar::q4_range`.
#[target_feature(enable = "avx2,fma")]
unsafe fn q4_range_avx2(a: &Q4Args, c0: usize, c1: usize) {
    kernel::q4_range::<_, false>(Avx2::new_unchecked(), a, c0, c1)
}

/// Safety: the CPU supports AVX2, FMA and AVX-VNNI; the contract of `scalar::q4_range`.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn q4_range_avx2_vnni(a: &Q4Args, c0: usize, c1: usize) {
    kernel::q4_range::<_, true>(Avx2::new_unchecked(), a, c0, c1)
}

/// Only with AVX-VNNI (the VEX `vpdpbusd`; `VNNI` = false is for the AVX-512 level's twin of these
/// methods and not instantiated here: plain AVX2 keeps the q4 kernel of `kernel.rs`, see `a8.rs`).
impl SimdA8 for Avx2 {
    type Acc = __m256i;
    #[inline(always)]
    fn acc_zero(self) -> __m256i {
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn ld_acc(self, p: *const i32) -> __m256i {
        _mm256_loadu_si256(p as *const __m256i)
    }
    #[inline(always)]
    unsafe fn dp4(self, acc: __m256i, w: __m256i, x: *const u8) -> __m256i {
        let x = _mm256_set1_epi32((x as *const i32).read_unaligned());
        _mm256_dpbusd_avx_epi32(acc, x, w)
    }
    #[inline(always)]
    unsafe fn dp4_w4<const VNNI: bool>(self, acc: __m256i, w: __m256i, x: *const i8) -> __m256i {
        let x = _mm256_set1_epi32((x as *const i32).read_unaligned());
        if VNNI {
            _mm256_dpbusd_avx_epi32(acc, w, x)
        } else {
            _mm256_add_epi16(acc, _mm256_maddubs_epi16(w, x))
        }
    }
    #[inline(always)]
    fn w4_sum<const VNNI: bool>(self, acc: __m256i) -> __m256i {
        if VNNI {
            acc
        } else {
            unsafe { _mm256_madd_epi16(acc, _mm256_set1_epi16(1)) }
        }
    }
    #[inline(always)]
    fn cvt_acc(self, v: __m256i) -> __m256 {
        unsafe { _mm256_cvtepi32_ps(v) }
    }
}

/// The int8-activation tile at AVX2: 3 rows × 2 vectors (4 × 2 would take all 16 ymm for its sums).
const A8_RM: usize = 3;
const A8_RNV: usize = 2;

/// Safety: the CPU supports AVX2, FMA and AVX-VNNI; the contract of `a8::scalar_range` (q8, nr = 16).
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn q8a8_range_avx2_vnni(a: &A8Args, p0: usize, p1: usize) {
    a8::range::<_, false, true, A8_RM, A8_RNV>(Avx2::new_unchecked(), a, p0, p1)
}

/// Safety: the CPU supports AVX2, FMA and AVX-VNNI; the contract of `a8::scalar_range` (q4, nr = 16).
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn q4a8_range_avx2_vnni(a: &A8Args, p0: usize, p1: usize) {
    a8::range::<_, true, true, A8_RM, A8_RNV>(Avx2::new_unchecked(), a, p0, p1)
}

static Q8A8_AVX2_VNNI: A8Table = A8Table {
    range: q8a8_range_avx2_vnni,
    nr: A8_RNV * 8,
};
static Q4A8_AVX2_VNNI: A8Table = A8Table {
    range: q4a8_range_avx2_vnni,
    nr: A8_RNV * 8,
};

/// Safety: the CPU supports SSE4.1; the contract of `kernel::quantize_row_8`.
#[target_feature(enable = "sse4.1")]
unsafe fn q8_row_sse41(x: &[f32], q: &mut [u8], d: &mut [f32], flip: u8) {
    kernel::quantize_row_8(Sse41::new_unchecked(), x, q, d, flip)
}

/// Safety: the CPU supports AVX2 and FMA; the contract of `kernel::quantize_row_8`.
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_row_avx2(x: &[f32], q: &mut [u8], d: &mut [f32], flip: u8) {
    kernel::quantize_row_8(Avx2::new_unchecked(), x, q, d, flip)
}

pub(crate) static SSE41: QTable = QTable {
    q8_range: q8_range_sse41,
    q4_range: q4_range_sse41,
    q4_group: <Sse41 as SimdQ4>::GROUP,
    q8a8: None,
    q4a8: None,
    q8_row: q8_row_sse41,
};
pub(crate) static AVX2: QTable = QTable {
    q8_range: q8_range_avx2,
    q4_range: q4_range_avx2,
    q4_group: <Avx2 as SimdQ4>::GROUP,
    q8a8: None,
    q4a8: None,
    q8_row: q8_row_avx2,
};
pub(crate) static AVX2_VNNI: QTable = QTable {
    q8_range: q8_range_avx2,
    q4_range: q4_range_avx2_vnni,
    q4_group: <Avx2 as SimdQ4>::GROUP,
    q8a8: Some(&Q8A8_AVX2_VNNI),
    q4a8: Some(&Q4A8_AVX2_VNNI),
    q8_row: q8_row_avx2,
};
