//! x86-64 matmul levels: [`MmSimd`] for the SSE4.1, AVX2 and AVX-512 tokens, the `#[target_feature]` entry
//! points instantiating the generic kernels, and the AVX512_BF16 (`vdpbf16ps`) microkernel.

use super::blocked;
use super::kernel::{self, MmSimd};
use super::{Args, MmTable};
use crate::x86::avx2::Avx2;
use crate::x86::avx512::Avx512;
use crate::x86::sse41::Sse41;
use std::arch::x86_64::*;

impl MmSimd for Sse41 {
    #[inline(always)]
    unsafe fn loadp(self, p: *const f32) -> __m128 {
        _mm_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storep(self, p: *mut f32, v: __m128) {
        _mm_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn widen(self, p: *const u16) -> __m128 {
        let h = _mm_loadl_epi64(p as *const __m128i);
        _mm_castsi128_ps(_mm_slli_epi32::<16>(_mm_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn widen_pairs(self, p: *const u16) -> (__m128, __m128) {
        let v = _mm_loadu_si128(p as *const __m128i);
        let even = _mm_slli_epi32::<16>(v);
        let odd = _mm_and_si128(v, _mm_set1_epi32(0xffff0000u32 as i32));
        (_mm_castsi128_ps(even), _mm_castsi128_ps(odd))
    }
}

impl MmSimd for Avx2 {
    #[inline(always)]
    unsafe fn loadp(self, p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storep(self, p: *mut f32, v: __m256) {
        _mm256_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn widen(self, p: *const u16) -> __m256 {
        let h = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn widen_pairs(self, p: *const u16) -> (__m256, __m256) {
        let v = _mm256_loadu_si256(p as *const __m256i);
        let even = _mm256_slli_epi32::<16>(v);
        let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xffff0000u32 as i32));
        (_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd))
    }
}

impl MmSimd for Avx512 {
    #[inline(always)]
    unsafe fn loadp(self, p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn storep(self, p: *mut f32, v: __m512) {
        _mm512_storeu_ps(p, v)
    }
    #[inline(always)]
    unsafe fn widen(self, p: *const u16) -> __m512 {
        let h = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
    }
    #[inline(always)]
    unsafe fn widen_pairs(self, p: *const u16) -> (__m512, __m512) {
        let v = _mm512_loadu_si512(p as *const __m512i);
        let even = _mm512_slli_epi32::<16>(v);
        let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xffff0000u32 as i32));
        (_mm512_castsi512_ps(even), _mm512_castsi512_ps(odd))
    }
}

/// Entry points of one level: the `#[target_feature]` boundary. MR × NV·LANES is the register tile of the
/// direct kernel; `gemm = blocked` runs the cache-blocked kernel (6 × NV·LANES, `blocked.rs`) from
/// `blocked::MIN_M` rows of x, `gemm = direct` the direct kernel for every m.
macro_rules! level {
    ($modname:ident, $tok:ty, $feat:literal, mr = $mr:literal, nv = $nv:literal, gemm = $gemm:ident) => {
        pub mod $modname {
            use super::*;
            pub const GROUP: usize = $nv * <$tok as crate::simd::Simd>::LANES;
            pub const LANES: usize = <$tok as crate::simd::Simd>::LANES;

            /// Safety (all): the CPU supports this level; `a` and `w` are consistent (see `MmTable`).
            #[target_feature(enable = $feat)]
            pub unsafe fn gemv_bf16(a: &Args, w: &[u16], r0: usize, r1: usize) {
                kernel::gemv_bf16_pairs::<$tok>(<$tok>::new_unchecked(), a, w, r0, r1)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn gemv_f32(a: &Args, w: &[f32], r0: usize, r1: usize) {
                kernel::gemv::<$tok, f32>(<$tok>::new_unchecked(), a, w, r0, r1)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn packed_bf16(a: &Args, w: &[u16], g0: usize, g1: usize) {
                level!(@$gemm, $tok, $mr, $nv, u16, packed_bf16, a, w, g0, g1)
            }
            #[target_feature(enable = $feat)]
            pub unsafe fn packed_f32(a: &Args, w: &[f32], g0: usize, g1: usize) {
                level!(@$gemm, $tok, $mr, $nv, f32, packed_f32, a, w, g0, g1)
            }
        }
    };
    (@direct, $tok:ty, $mr:literal, $nv:literal, $t:ty, $direct:ident, $a:ident, $w:ident, $g0:ident, $g1:ident) => {
        kernel::$direct::<$tok, $mr, $nv>(<$tok>::new_unchecked(), $a, $w, $g0, $g1)
    };
    (@blocked, $tok:ty, $mr:literal, $nv:literal, $t:ty, $direct:ident, $a:ident, $w:ident, $g0:ident, $g1:ident) => {
        if $a.m >= blocked::MIN_M {
            blocked::packed::<$tok, $t, 6, $nv>(<$tok>::new_unchecked(), $a, $w, $g0, $g1)
        } else {
            kernel::$direct::<$tok, $mr, $nv>(<$tok>::new_unchecked(), $a, $w, $g0, $g1)
        }
    };
}

level!(sse41, Sse41, "sse4.1", mr = 4, nv = 2, gemm = blocked);
level!(avx2, Avx2, "avx2,fma", mr = 4, nv = 2, gemm = blocked);
level!(
    avx512,
    Avx512,
    "avx512f,avx512bw,avx512vl,avx2,fma",
    mr = 4,
    nv = 4,
    gemm = direct
);

pub static SSE41: MmTable = MmTable {
    gemv_bf16: sse41::gemv_bf16,
    gemv_bf16_dot: None,
    gemv_f32: sse41::gemv_f32,
    packed_bf16: sse41::packed_bf16,
    packed_bf16_dot: None,
    packed_f32: sse41::packed_f32,
    to_bf16: super::scalar::to_bf16,
    group: sse41::GROUP,
    lanes: sse41::LANES,
};

pub static AVX2: MmTable = MmTable {
    gemv_bf16: avx2::gemv_bf16,
    gemv_bf16_dot: None,
    gemv_f32: avx2::gemv_f32,
    packed_bf16: avx2::packed_bf16,
    packed_bf16_dot: None,
    packed_f32: avx2::packed_f32,
    to_bf16: super::scalar::to_bf16,
    group: avx2::GROUP,
    lanes: avx2::LANES,
};

pub static AVX512: MmTable = MmTable {
    gemv_bf16: avx512::gemv_bf16,
    gemv_bf16_dot: None,
    gemv_f32: avx512::gemv_f32,
    packed_bf16: avx512::packed_bf16,
    packed_bf16_dot: None,
    packed_f32: avx512::packed_f32,
    to_bf16: super::scalar::to_bf16,
    group: avx512::GROUP,
    lanes: avx512::LANES,
};

/// AVX-512 on a CPU with AVX512_BF16: same layout, plus the `vdpbf16ps` path.
pub static AVX512_BF16: MmTable = MmTable {
    gemv_bf16_dot: Some(bf16dot::gemv_bf16_dot),
    packed_bf16_dot: Some(bf16dot::packed_bf16_dot),
    to_bf16: bf16dot::to_bf16,
    ..AVX512
};

/// The `vdpbf16ps` microkernel: for each pair of k, broadcast x's bf16 pair (one 32-bit lane) per row and
/// accumulate into MR × 4 zmm (64 columns): acc[m][v] += x[m][2p]·w[v·16+i][2p] + x[m][2p+1]·w[..][2p+1].
pub mod bf16dot {
    #![allow(clippy::needless_range_loop)] // register tiles read best as acc[m][v]
    use super::*;

    /// 32 bf16 as the operand type of `vdpbf16ps` (same bits).
    #[inline(always)]
    fn bh(v: __m512i) -> __m512bh {
        // Safety: both are 64-byte plain vectors; every bit pattern is valid.
        unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
    }
    const NV: usize = 4;
    const MR: usize = 6;
    const G: usize = NV * 16;

    /// Safety: the CPU has AVX-512 F/BW/VL and AVX512_BF16; `a.xb` holds x rounded to bf16 (m, 2⌈k/2⌉);
    /// `w` packed for G = 64.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
    pub unsafe fn packed_bf16_dot(a: &Args, w: &[u16], g0: usize, g1: usize) {
        // the epilogue is a compile-time choice: the plain kernel carries none of the SwiGLU code
        if a.swiglu {
            groups::<true>(a, w, g0, g1)
        } else {
            groups::<false>(a, w, g0, g1)
        }
    }

    #[inline(always)]
    unsafe fn groups<const E: bool>(a: &Args, w: &[u16], g0: usize, g1: usize) {
        let kp = a.k.div_ceil(2);
        let gsize = kp * G * 2;
        for j in g0..g1 {
            let wg = w.as_ptr().add((j - a.g_base) * gsize);
            let (c0, cols) = a.group_cols(j, G);
            let mut i = 0;
            while i + MR <= a.m {
                tile::<MR, E>(a, wg, kp, i, c0, cols);
                i += MR;
            }
            match a.m - i {
                0 => {}
                1 => tile::<1, E>(a, wg, kp, i, c0, cols),
                2 => tile::<2, E>(a, wg, kp, i, c0, cols),
                3 => tile::<3, E>(a, wg, kp, i, c0, cols),
                4 => tile::<4, E>(a, wg, kp, i, c0, cols),
                5 => tile::<5, E>(a, wg, kp, i, c0, cols),
                _ => unreachable!("MR = 6"),
            }
        }
    }

    #[inline(always)]
    unsafe fn tile<const R: usize, const E: bool>(
        a: &Args,
        wg: *const u16,
        kp: usize,
        i0: usize,
        c0: usize,
        cols: usize,
    ) {
        let ldx = kp * 2;
        let x = a.xb.as_ptr().add(i0 * ldx);
        let mut acc = [[_mm512_setzero_ps(); NV]; R];
        for p in 0..kp {
            let wp = wg.add(p * G * 2);
            let mut wv = [_mm512_setzero_si512(); NV];
            for (v, wv) in wv.iter_mut().enumerate() {
                *wv = _mm512_loadu_si512(wp.add(v * 32) as *const __m512i);
            }
            for m in 0..R {
                let pair = (x.add(m * ldx + 2 * p) as *const i32).read_unaligned();
                let xv = bh(_mm512_set1_epi32(pair));
                for v in 0..NV {
                    acc[m][v] = _mm512_dpbf16_ps(acc[m][v], xv, bh(wv[v]));
                }
            }
        }
        let s = Avx512::new_unchecked();
        kernel::store_tile::<Avx512, R, NV, E>(s, a, &acc, i0, c0, cols);
    }

    /// GEMV on row-major bf16 W: rows r0..r1, for all rows of x (`a.xb`, bf16, stride 2⌈k/2⌉). A row of W
    /// is already a sequence of k pairs: one 64-byte load and one `vdpbf16ps` per 32 values of k.
    /// Safety: as [`packed_bf16_dot`], `w` row-major (n, k).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
    pub unsafe fn gemv_bf16_dot(a: &Args, w: &[u16], r0: usize, r1: usize) {
        let k = a.k;
        let ldx = k.div_ceil(2) * 2;
        // Row r of W is read from memory once, then from L1 for the other rows of x.
        for r in r0..r1 {
            let wr = w.as_ptr().add(r * k);
            for i in 0..a.m {
                let x = a.xb.as_ptr().add(i * ldx);
                let mut acc = [_mm512_setzero_ps(); 4];
                // vector body: 4 × 32 values of k per step, then single blocks of 32
                let mut kk = 0;
                while kk + 128 <= k {
                    for (u, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm512_loadu_si512(wr.add(kk + 32 * u) as *const __m512i);
                        let xv = _mm512_loadu_si512(x.add(kk + 32 * u) as *const __m512i);
                        *acc = _mm512_dpbf16_ps(*acc, bh(xv), bh(wv));
                    }
                    kk += 128;
                }
                while kk + 32 <= k {
                    let wv = _mm512_loadu_si512(wr.add(kk) as *const __m512i);
                    let xv = _mm512_loadu_si512(x.add(kk) as *const __m512i);
                    acc[0] = _mm512_dpbf16_ps(acc[0], bh(xv), bh(wv));
                    kk += 32;
                }
                // horizontal sum, scalar tail (on the bf16-rounded x), bias
                let v = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
                let mut sum = _mm512_reduce_add_ps(v);
                for t in kk..k {
                    let xv = f32::from_bits((*x.add(t) as u32) << 16);
                    sum += xv * f32::from_bits((*wr.add(t) as u32) << 16);
                }
                let b = a.bias.map_or(0.0, |b| *b.get_unchecked(r));
                *a.y.0.add(i * a.n + r) = sum + b;
            }
        }
    }

    /// out = bf16(x), round to nearest even (`vcvtneps2bf16`; denormal inputs flush to 0).
    /// Safety: the CPU has AVX-512 F and AVX512_BF16; equal lengths.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
    pub unsafe fn to_bf16(x: &[f32], out: &mut [u16]) {
        let n = out.len();
        let body = n - n % 16;
        // vector body
        let mut i = 0;
        while i < body {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(i)));
            let b = std::mem::transmute::<__m256bh, __m256i>(h);
            _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, b);
            i += 16;
        }
        // scalar tail
        for i in body..n {
            out[i] = super::super::scalar::f32_to_bf16(x[i]);
        }
    }
}
