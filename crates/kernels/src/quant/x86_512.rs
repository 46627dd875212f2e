//! The integer lanes ([`SimdInt`], [`SimdQ4`]) of AVX-512 (F+BW+VL) and its `#[target_feature]` entry
//! points of the quantized matmul: q8 one block of 32 per zmm (int16), q4 four sub-blocks per step (a zmm
//! of their 64 weight bytes), with `vpdpwssd` where the CPU has AVX512_VNNI.

use std::arch::x86_64::*;

use super::a8::{self, A8Args, A8Table};
use super::x86::WORD_CTRL;
use super::{kernel, Q4Args, QArgs, QTable};
use crate::simd::int::{SimdA8, SimdInt, SimdQ4};
use crate::x86::avx512::Avx512;

impl SimdInt for Avx512 {
    /// 32 × i16.
    type W = __m512i;
    type X = __m512i;
    #[inline(always)]
    unsafe fn ld_w(self, p: *const i8) -> __m512i {
        _mm512_cvtepi8_epi16(_mm256_loadu_si256(p as *const __m256i))
    }
    #[inline(always)]
    unsafe fn ld_x(self, p: *const i16) -> __m512i {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    fn dot(self, w: __m512i, x: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(_mm512_madd_epi16(w, x)) }
    }
}

impl SimdQ4 for Avx512 {
    const GROUP: usize = 4;
    type I = __m512i;
    type W4 = [__m512i; 2];
    type X8 = [__m512i; 2];
    type Sc8 = __m512i;
    type Sc = __m512i;
    /// 8 lanes, the upper 8 zero
    type Mn = __m512;
    #[inline(always)]
    fn izero(self) -> __m512i {
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn ld_w4(self, p: *const u8) -> [__m512i; 2] {
        let v = _mm512_loadu_si512(p as *const _);
        let m = _mm512_set1_epi8(0x0f);
        [
            _mm512_and_si512(v, m),
            _mm512_and_si512(_mm512_srli_epi16::<4>(v), m),
        ]
    }
    #[inline(always)]
    unsafe fn ld_x8(self, p: *const i8) -> [__m512i; 2] {
        [
            _mm512_loadu_si512(p as *const _),
            _mm512_loadu_si512(p.add(64) as *const _),
        ]
    }
    #[inline(always)]
    unsafe fn ld_sc8(self, p: *const u8) -> __m512i {
        _mm512_broadcast_i32x4(_mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i)))
    }
    #[inline(always)]
    fn sc_step(self, sc: __m512i, t: usize) -> __m512i {
        unsafe {
            _mm512_shuffle_epi8(
                sc,
                _mm512_loadu_si512(WORD_CTRL.as_ptr().add(4 * t) as *const _),
            )
        }
    }
    #[inline(always)]
    fn dot4<const VNNI: bool>(
        self,
        acc: __m512i,
        w: [__m512i; 2],
        x: [__m512i; 2],
        sc: __m512i,
    ) -> __m512i {
        unsafe {
            let p = _mm512_add_epi16(
                _mm512_maddubs_epi16(w[0], x[0]),
                _mm512_maddubs_epi16(w[1], x[1]),
            );
            if VNNI {
                _mm512_dpwssd_epi32(acc, p, sc)
            } else {
                _mm512_add_epi32(acc, _mm512_madd_epi16(p, sc))
            }
        }
    }
    #[inline(always)]
    fn cvt_i(self, v: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(v) }
    }
    #[inline(always)]
    unsafe fn ld_mn(self, p: *const u8, nmin: f32) -> __m512 {
        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i));
        _mm512_zextps256_ps512(_mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(nmin)))
    }
    #[inline(always)]
    unsafe fn min_fma(self, mn: __m512, p: *const f32, acc: __m512) -> __m512 {
        _mm512_fmadd_ps(mn, _mm512_maskz_loadu_ps(0x00ff, p), acc)
    }
}

/// Safety: the CPU supports AVX-512 F+BW+VL, AVX2 and FMA; the contract of `scalar::q8_range`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn q8_range_avx512(a: &QArgs, c0: usize, c1: usize) {
    kernel::q8_range(Avx512::new_unchecked(), a, c0, c1)
}

/// Safety: the CPU supports AVX-512 F+BW+VL, AVX2 and FMA; the contract of `scalar::q4_range`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn q4_range_avx512(a: &Q4Args, c0: usize, c1: usize) {
    kernel::q4_range::<_, false>(Avx512::new_unchecked(), a, c0, c1)
}

/// Safety: as [`q4_range_avx512`], and the CPU supports AVX512_VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512vnni")]
unsafe fn q4_range_avx512_vnni(a: &Q4Args, c0: usize, c1: usize) {
    kernel::q4_range::<_, true>(Avx512::new_unchecked(), a, c0, c1)
}

/// `dp4` only with AVX512_VNNI (`vpdpbusd`), and `dp4_w4` / `w4_sum` with it where `VNNI`.
impl SimdA8 for Avx512 {
    type Acc = __m512i;
    #[inline(always)]
    fn acc_zero(self) -> __m512i {
        unsafe { _mm512_setzero_si512() }
    }
    #[inline(always)]
    unsafe fn ld_acc(self, p: *const i32) -> __m512i {
        _mm512_loadu_si512(p as *const _)
    }
    #[inline(always)]
    unsafe fn dp4(self, acc: __m512i, w: __m512i, x: *const u8) -> __m512i {
        let x = _mm512_set1_epi32((x as *const i32).read_unaligned());
        _mm512_dpbusd_epi32(acc, x, w)
    }
    #[inline(always)]
    unsafe fn dp4_w4<const VNNI: bool>(self, acc: __m512i, w: __m512i, x: *const i8) -> __m512i {
        let x = _mm512_set1_epi32((x as *const i32).read_unaligned());
        if VNNI {
            _mm512_dpbusd_epi32(acc, w, x)
        } else {
            _mm512_add_epi16(acc, _mm512_maddubs_epi16(w, x))
        }
    }
    #[inline(always)]
    fn w4_sum<const VNNI: bool>(self, acc: __m512i) -> __m512i {
        if VNNI {
            acc
        } else {
            unsafe { _mm512_madd_epi16(acc, _mm512_set1_epi16(1)) }
        }
    }
    #[inline(always)]
    fn cvt_acc(self, v: __m512i) -> __m512 {
        unsafe { _mm512_cvtepi32_ps(v) }
    }
}

/// The int8-activation tile at AVX-512: 4 rows × 2 vectors (32 columns): 8 integer sums, 8 f32 sums,
/// 2 weight vectors (6 rows measured the same).
const A8_RM: usize = 4;
const A8_RNV: usize = 2;

/// Safety: the CPU supports AVX-512 F+BW+VL, FMA and AVX512_VNNI; the contract of `a8::scalar_range`
/// (q8, nr = 32).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512vnni")]
unsafe fn q8a8_range_avx512_vnni(a: &A8Args, p0: usize, p1: usize) {
    a8::range::<_, false, true, A8_RM, A8_RNV>(Avx512::new_unchecked(), a, p0, p1)
}

/// Safety: the CPU supports AVX-512 F+BW+VL and FMA; the contract of `a8::scalar_range` (q4, nr = 32).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn q4a8_range_avx512(a: &A8Args, p0: usize, p1: usize) {
    a8::range::<_, true, false, A8_RM, A8_RNV>(Avx512::new_unchecked(), a, p0, p1)
}

/// Safety: as [`q4a8_range_avx512`], and the CPU supports AVX512_VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512vnni")]
unsafe fn q4a8_range_avx512_vnni(a: &A8Args, p0: usize, p1: usize) {
    a8::range::<_, true, true, A8_RM, A8_RNV>(Avx512::new_unchecked(), a, p0, p1)
}

static Q8A8_AVX512_VNNI: A8Table = A8Table {
    range: q8a8_range_avx512_vnni,
    nr: A8_RNV * 16,
};
static Q4A8_AVX512: A8Table = A8Table {
    range: q4a8_range_avx512,
    nr: A8_RNV * 16,
};
static Q4A8_AVX512_VNNI: A8Table = A8Table {
    range: q4a8_range_avx512_vnni,
    nr: A8_RNV * 16,
};

/// Safety: the CPU supports AVX-512 F+BW+VL, AVX2 and FMA; the contract of `kernel::quantize_row_8`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
unsafe fn q8_row_avx512(x: &[f32], q: &mut [u8], d: &mut [f32], flip: u8) {
    kernel::quantize_row_8(Avx512::new_unchecked(), x, q, d, flip)
}

pub(crate) static AVX512: QTable = QTable {
    q8_range: q8_range_avx512,
    q4_range: q4_range_avx512,
    q4_group: <Avx512 as SimdQ4>::GROUP,
    q8a8: None,
    q4a8: Some(&Q4A8_AVX512),
    q8_row: q8_row_avx512,
};
pub(crate) static AVX512_VNNI: QTable = QTable {
    q8_range: q8_range_avx512,
    q4_range: q4_range_avx512_vnni,
    q4_group: <Avx512 as SimdQ4>::GROUP,
    q8a8: Some(&Q8A8_AVX512_VNNI),
    q4a8: Some(&Q4A8_AVX512_VNNI),
    q8_row: q8_row_avx512,
};
