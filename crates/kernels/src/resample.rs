//! Separable fixed-point resampling of uint8 pictures: one pass along rows or along columns.
//!
//! The caller computes the filter (which input samples feed each output, and their fixed-point weights);
//! these kernels only apply it. The arithmetic is torchvision's uint8 antialias rule (and Pillow's):
//!
//! ```text
//! out = clamp((2^(prec-1) + Σ_k w_k · in_{start+k}) >> prec, 0, 255)      // i32 sums, arithmetic shift
//! ```
//!
//! Every level computes exactly the same integers, so all levels give identical bytes.
//! The scalar functions in [`scalar`] are the reference; the SIMD ones live in [`x86`].

use crate::isa::Isa;
use crate::{KernelError, Kernels};

/// The fixed-point filter of one pass, for `out_len` outputs.
#[derive(Clone, Copy, Debug)]
pub struct Taps<'a> {
    /// (out_len) index of the first input sample of each output.
    pub start: &'a [u32],
    /// (out_len) number of input samples of each output (≤ `stride`).
    pub count: &'a [u32],
    /// (out_len, stride) weights with `prec` fraction bits; entries past `count` are ignored.
    pub weights: &'a [i16],
    pub stride: usize,
    /// Fraction bits of the weights, 1..=22.
    pub prec: u32,
}

impl Taps<'_> {
    pub fn out_len(&self) -> usize {
        self.start.len()
    }

    /// Check the filter against an input of `in_len` samples.
    fn check(&self, op: &'static str, in_len: usize) -> Result<(), KernelError> {
        let n = self.start.len();
        crate::ops::check_len(op, "taps.count", n, self.count.len())?;
        crate::ops::check_len(op, "taps.weights", n * self.stride, self.weights.len())?;
        if !(1..=22).contains(&self.prec) {
            return Err(KernelError::Invalid {
                op,
                msg: format!("taps.prec is {}, expected 1..=22", self.prec),
            });
        }
        for i in 0..n {
            let (s, c) = (self.start[i] as usize, self.count[i] as usize);
            if c > self.stride || s + c > in_len {
                return Err(KernelError::Invalid {
                    op,
                    msg: format!(
                        "output {i}: taps {s}..{} (count {c}, stride {}) do not fit an input of {in_len}",
                        s + c,
                        self.stride
                    ),
                });
            }
        }
        Ok(())
    }
}

impl Kernels {
    /// Resample along each row. src: (rows, in_w, channels) -> out: (rows, taps.out_len(), channels).
    /// SIMD levels have a body for 3 channels (RGB); other channel counts run the scalar twin.
    pub fn resample_rows_u8(
        &self,
        src: &[u8],
        rows: usize,
        in_w: usize,
        channels: usize,
        taps: &Taps,
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        const OP: &str = "resample_rows_u8";
        if channels == 0 {
            return Err(KernelError::Invalid {
                op: OP,
                msg: "channels is 0".into(),
            });
        }
        crate::ops::check_len(OP, "src", rows * in_w * channels, src.len())?;
        crate::ops::check_len(OP, "out", rows * taps.out_len() * channels, out.len())?;
        taps.check(OP, in_w)?;
        if channels != 3 {
            scalar::rows_u8(src, rows, in_w, channels, taps, out);
            return Ok(());
        }
        // Safety: a `Kernels` of a level is only made when the CPU supports it.
        match self.isa() {
            Isa::Scalar => scalar::rows_u8(src, rows, in_w, channels, taps, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Sse41 => unsafe { x86::rows_rgb_sse41(src, rows, in_w, taps, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::rows_rgb_avx2(src, rows, in_w, taps, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::rows_rgb_avx512(src, rows, in_w, taps, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::rows_u8(src, rows, in_w, channels, taps, out),
        }
        Ok(())
    }

    /// Resample along columns. src: (in_h, row_len) -> out: (taps.out_len(), row_len); `row_len` counts bytes
    /// (width · channels).
    pub fn resample_cols_u8(
        &self,
        src: &[u8],
        in_h: usize,
        row_len: usize,
        taps: &Taps,
        out: &mut [u8],
    ) -> Result<(), KernelError> {
        const OP: &str = "resample_cols_u8";
        crate::ops::check_len(OP, "src", in_h * row_len, src.len())?;
        crate::ops::check_len(OP, "out", taps.out_len() * row_len, out.len())?;
        taps.check(OP, in_h)?;
        // Safety: a `Kernels` of a level is only made when the CPU supports it.
        match self.isa() {
            Isa::Scalar => scalar::cols_u8(src, in_h, row_len, taps, out),
            #[cfg(target_arch = "x86_64")]
            Isa::Sse41 => unsafe { x86::cols_sse41(src, in_h, row_len, taps, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::cols_avx2(src, in_h, row_len, taps, out) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::cols_avx512(src, in_h, row_len, taps, out) },
            #[cfg(not(target_arch = "x86_64"))]
            _ => scalar::cols_u8(src, in_h, row_len, taps, out),
        }
        Ok(())
    }
}

#[inline(always)]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// The reference: plain loops. Arguments are already checked by the public methods.
pub mod scalar {
    use super::{clamp_u8, Taps};

    /// src: (rows, in_w, ch) -> out: (rows, out_w, ch)
    pub fn rows_u8(src: &[u8], rows: usize, in_w: usize, ch: usize, t: &Taps, out: &mut [u8]) {
        let out_w = t.out_len();
        let half = 1i32 << (t.prec - 1);
        for y in 0..rows {
            let s = &src[y * in_w * ch..(y + 1) * in_w * ch];
            let o = &mut out[y * out_w * ch..(y + 1) * out_w * ch];
            for x in 0..out_w {
                let (st, n) = (t.start[x] as usize, t.count[x] as usize);
                let w = &t.weights[x * t.stride..x * t.stride + n];
                for c in 0..ch {
                    let mut acc = half;
                    for k in 0..n {
                        acc += w[k] as i32 * s[(st + k) * ch + c] as i32;
                    }
                    o[x * ch + c] = clamp_u8(acc >> t.prec);
                }
            }
        }
    }

    /// src: (in_h, row_len) -> out: (out_h, row_len)
    pub fn cols_u8(src: &[u8], _in_h: usize, row_len: usize, t: &Taps, out: &mut [u8]) {
        let half = 1i32 << (t.prec - 1);
        for y in 0..t.out_len() {
            let (st, n) = (t.start[y] as usize, t.count[y] as usize);
            let w = &t.weights[y * t.stride..y * t.stride + n];
            cols_row_range(
                src,
                row_len,
                st,
                w,
                half,
                t.prec,
                &mut out[y * row_len..(y + 1) * row_len],
                0,
            );
        }
    }

    /// One output row, columns `from..row_len` (the SIMD versions use it for their tail).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cols_row_range(
        src: &[u8],
        row_len: usize,
        st: usize,
        w: &[i16],
        half: i32,
        prec: u32,
        o: &mut [u8],
        from: usize,
    ) {
        for (j, oj) in o.iter_mut().enumerate().skip(from) {
            let mut acc = half;
            for (k, &wk) in w.iter().enumerate() {
                acc += wk as i32 * src[(st + k) * row_len + j] as i32;
            }
            *oj = clamp_u8(acc >> prec);
        }
    }

    /// One RGB output pixel from taps `from..n` (the SIMD versions use it for their tail).
    #[inline(always)]
    pub(crate) fn rgb_taps(s: &[u8], st: usize, w: &[i16], from: usize, acc: &mut [i32; 3]) {
        for (k, &wk) in w.iter().enumerate().skip(from) {
            let p = (st + k) * 3;
            acc[0] += wk as i32 * s[p] as i32;
            acc[1] += wk as i32 * s[p + 1] as i32;
            acc[2] += wk as i32 * s[p + 2] as i32;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! SIMD bodies. Both passes multiply u8 samples widened to i16 by i16 weights two taps at a time with
    //! `pmaddwd` (pairs (a, b) · (w0, w1) -> a·w0 + b·w1 in i32), exactly the scalar integer sums.
    use super::scalar::{cols_row_range, rgb_taps};
    use super::{clamp_u8, Taps};
    use std::arch::x86_64::*;

    #[inline(always)]
    fn pair(w0: i16, w1: i16) -> i32 {
        ((w0 as u16 as u32) | ((w1 as u16 as u32) << 16)) as i32
    }

    // ------------------------------------------------------------------------------ columns (vertical)

    /// Safety: the CPU has SSE4.1; arguments checked by `Kernels::resample_cols_u8`.
    #[target_feature(enable = "sse4.1")]
    pub unsafe fn cols_sse41(src: &[u8], _in_h: usize, row_len: usize, t: &Taps, out: &mut [u8]) {
        let half = 1i32 << (t.prec - 1);
        let shift = _mm_cvtsi32_si128(t.prec as i32);
        let zero = _mm_setzero_si128();
        let sp = src.as_ptr();
        for y in 0..t.out_len() {
            let (st, n) = (t.start[y] as usize, t.count[y] as usize);
            let w = &t.weights[y * t.stride..y * t.stride + n];
            let o = &mut out[y * row_len..(y + 1) * row_len];
            // Vector body: 16 columns per step.
            let mut j = 0;
            while j + 16 <= row_len {
                let mut acc = [_mm_set1_epi32(half); 4];
                let mut k = 0;
                while k < n {
                    let r0 = _mm_loadu_si128(sp.add((st + k) * row_len + j) as *const __m128i);
                    let (r1, wp) = if k + 1 < n {
                        (
                            _mm_loadu_si128(sp.add((st + k + 1) * row_len + j) as *const __m128i),
                            pair(w[k], w[k + 1]),
                        )
                    } else {
                        (zero, pair(w[k], 0))
                    };
                    let wv = _mm_set1_epi32(wp);
                    let lo = _mm_unpacklo_epi8(r0, r1);
                    let hi = _mm_unpackhi_epi8(r0, r1);
                    acc[0] = _mm_add_epi32(acc[0], _mm_madd_epi16(_mm_unpacklo_epi8(lo, zero), wv));
                    acc[1] = _mm_add_epi32(acc[1], _mm_madd_epi16(_mm_unpackhi_epi8(lo, zero), wv));
                    acc[2] = _mm_add_epi32(acc[2], _mm_madd_epi16(_mm_unpacklo_epi8(hi, zero), wv));
                    acc[3] = _mm_add_epi32(acc[3], _mm_madd_epi16(_mm_unpackhi_epi8(hi, zero), wv));
                    k += 2;
                }
                let a01 =
                    _mm_packs_epi32(_mm_sra_epi32(acc[0], shift), _mm_sra_epi32(acc[1], shift));
                let a23 =
                    _mm_packs_epi32(_mm_sra_epi32(acc[2], shift), _mm_sra_epi32(acc[3], shift));
                _mm_storeu_si128(
                    o.as_mut_ptr().add(j) as *mut __m128i,
                    _mm_packus_epi16(a01, a23),
                );
                j += 16;
            }
            // Scalar tail.
            cols_row_range(src, row_len, st, w, half, t.prec, o, j);
        }
    }

    /// Safety: the CPU has AVX2; arguments checked by `Kernels::resample_cols_u8`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn cols_avx2(src: &[u8], _in_h: usize, row_len: usize, t: &Taps, out: &mut [u8]) {
        let half = 1i32 << (t.prec - 1);
        let shift = _mm_cvtsi32_si128(t.prec as i32);
        let zero = _mm256_setzero_si256();
        let sp = src.as_ptr();
        for y in 0..t.out_len() {
            let (st, n) = (t.start[y] as usize, t.count[y] as usize);
            let w = &t.weights[y * t.stride..y * t.stride + n];
            let o = &mut out[y * row_len..(y + 1) * row_len];
            // Vector body: 32 columns per step. unpack/pack work per 128-bit lane; packing in the same lane
            // order as the unpacking restores the column order.
            let mut j = 0;
            while j + 32 <= row_len {
                let mut acc = [_mm256_set1_epi32(half); 4];
                let mut k = 0;
                while k < n {
                    let r0 = _mm256_loadu_si256(sp.add((st + k) * row_len + j) as *const __m256i);
                    let (r1, wp) = if k + 1 < n {
                        (
                            _mm256_loadu_si256(sp.add((st + k + 1) * row_len + j) as *const __m256i),
                            pair(w[k], w[k + 1]),
                        )
                    } else {
                        (zero, pair(w[k], 0))
                    };
                    let wv = _mm256_set1_epi32(wp);
                    let lo = _mm256_unpacklo_epi8(r0, r1);
                    let hi = _mm256_unpackhi_epi8(r0, r1);
                    acc[0] = _mm256_add_epi32(
                        acc[0],
                        _mm256_madd_epi16(_mm256_unpacklo_epi8(lo, zero), wv),
                    );
                    acc[1] = _mm256_add_epi32(
                        acc[1],
                        _mm256_madd_epi16(_mm256_unpackhi_epi8(lo, zero), wv),
                    );
                    acc[2] = _mm256_add_epi32(
                        acc[2],
                        _mm256_madd_epi16(_mm256_unpacklo_epi8(hi, zero), wv),
                    );
                    acc[3] = _mm256_add_epi32(
                        acc[3],
                        _mm256_madd_epi16(_mm256_unpackhi_epi8(hi, zero), wv),
                    );
                    k += 2;
                }
                let a01 = _mm256_packs_epi32(
                    _mm256_sra_epi32(acc[0], shift),
                    _mm256_sra_epi32(acc[1], shift),
                );
                let a23 = _mm256_packs_epi32(
                    _mm256_sra_epi32(acc[2], shift),
                    _mm256_sra_epi32(acc[3], shift),
                );
                _mm256_storeu_si256(
                    o.as_mut_ptr().add(j) as *mut __m256i,
                    _mm256_packus_epi16(a01, a23),
                );
                j += 32;
            }
            // Scalar tail.
            cols_row_range(src, row_len, st, w, half, t.prec, o, j);
        }
    }

    /// Safety: the CPU has AVX-512 F+BW; arguments checked by `Kernels::resample_cols_u8`.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn cols_avx512(src: &[u8], _in_h: usize, row_len: usize, t: &Taps, out: &mut [u8]) {
        let half = 1i32 << (t.prec - 1);
        let shift = _mm_cvtsi32_si128(t.prec as i32);
        let zero = _mm512_setzero_si512();
        let sp = src.as_ptr();
        for y in 0..t.out_len() {
            let (st, n) = (t.start[y] as usize, t.count[y] as usize);
            let w = &t.weights[y * t.stride..y * t.stride + n];
            let o = &mut out[y * row_len..(y + 1) * row_len];
            // Vector body: 64 columns per step (same lane-wise unpack/pack as AVX2).
            let mut j = 0;
            while j + 64 <= row_len {
                let mut acc = [_mm512_set1_epi32(half); 4];
                let mut k = 0;
                while k < n {
                    let r0 = _mm512_loadu_si512(sp.add((st + k) * row_len + j) as *const _);
                    let (r1, wp) = if k + 1 < n {
                        (
                            _mm512_loadu_si512(sp.add((st + k + 1) * row_len + j) as *const _),
                            pair(w[k], w[k + 1]),
                        )
                    } else {
                        (zero, pair(w[k], 0))
                    };
                    let wv = _mm512_set1_epi32(wp);
                    let lo = _mm512_unpacklo_epi8(r0, r1);
                    let hi = _mm512_unpackhi_epi8(r0, r1);
                    acc[0] = _mm512_add_epi32(
                        acc[0],
                        _mm512_madd_epi16(_mm512_unpacklo_epi8(lo, zero), wv),
                    );
                    acc[1] = _mm512_add_epi32(
                        acc[1],
                        _mm512_madd_epi16(_mm512_unpackhi_epi8(lo, zero), wv),
                    );
                    acc[2] = _mm512_add_epi32(
                        acc[2],
                        _mm512_madd_epi16(_mm512_unpacklo_epi8(hi, zero), wv),
                    );
                    acc[3] = _mm512_add_epi32(
                        acc[3],
                        _mm512_madd_epi16(_mm512_unpackhi_epi8(hi, zero), wv),
                    );
                    k += 2;
                }
                let a01 = _mm512_packs_epi32(
                    _mm512_sra_epi32(acc[0], shift),
                    _mm512_sra_epi32(acc[1], shift),
                );
                let a23 = _mm512_packs_epi32(
                    _mm512_sra_epi32(acc[2], shift),
                    _mm512_sra_epi32(acc[3], shift),
                );
                _mm512_storeu_si512(
                    o.as_mut_ptr().add(j) as *mut _,
                    _mm512_packus_epi16(a01, a23),
                );
                j += 64;
            }
            // Scalar tail.
            cols_row_range(src, row_len, st, w, half, t.prec, o, j);
        }
    }

    // --------------------------------------------------------------------------------- rows (horizontal)

    /// Shuffle of 8 bytes (two RGB pixels p, q) into i16 pairs (p.r, q.r), (p.g, q.g), (p.b, q.b), (0, 0).
    #[inline(always)]
    unsafe fn two_px_mask(off: i8) -> __m128i {
        let z = -1i8;
        _mm_setr_epi8(
            off,
            z,
            off + 3,
            z,
            off + 1,
            z,
            off + 4,
            z,
            off + 2,
            z,
            off + 5,
            z,
            z,
            z,
            z,
            z,
        )
    }

    /// Finish one RGB pixel: (acc + half) >> prec, clamped, stored at o[0..3].
    #[inline(always)]
    unsafe fn store_px(acc: __m128i, extra: [i32; 3], prec: u32, o: &mut [u8]) {
        let mut a = [0i32; 4];
        _mm_storeu_si128(a.as_mut_ptr() as *mut __m128i, acc);
        o[0] = clamp_u8((a[0] + extra[0]) >> prec);
        o[1] = clamp_u8((a[1] + extra[1]) >> prec);
        o[2] = clamp_u8((a[2] + extra[2]) >> prec);
    }

    /// Safety: the CPU has SSE4.1 (pshufb is SSSE3); arguments checked by `Kernels::resample_rows_u8`.
    #[target_feature(enable = "sse4.1")]
    pub unsafe fn rows_rgb_sse41(src: &[u8], rows: usize, in_w: usize, t: &Taps, out: &mut [u8]) {
        let out_w = t.out_len();
        let half = 1i32 << (t.prec - 1);
        let mask = two_px_mask(0);
        for y in 0..rows {
            let s = &src[y * in_w * 3..(y + 1) * in_w * 3];
            let sp = s.as_ptr();
            let o = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
            for x in 0..out_w {
                let (st, n) = (t.start[x] as usize, t.count[x] as usize);
                let w = &t.weights[x * t.stride..x * t.stride + n];
                let mut acc = _mm_setr_epi32(half, half, half, 0);
                // Vector body: two taps per step, while an 8-byte load stays inside the row.
                let mut k = 0;
                while k + 2 <= n && (st + k) * 3 + 8 <= s.len() {
                    let px = _mm_shuffle_epi8(
                        _mm_loadl_epi64(sp.add((st + k) * 3) as *const __m128i),
                        mask,
                    );
                    acc = _mm_add_epi32(
                        acc,
                        _mm_madd_epi16(px, _mm_set1_epi32(pair(w[k], w[k + 1]))),
                    );
                    k += 2;
                }
                // Scalar tail.
                let mut extra = [0i32; 3];
                rgb_taps(s, st, w, k, &mut extra);
                store_px(acc, extra, t.prec, &mut o[x * 3..x * 3 + 3]);
            }
        }
    }

    /// Four taps per step: the 16 bytes at the first tap go to both 128-bit lanes; lane 0 takes taps 0, 1,
    /// lane 1 taps 2, 3.
    #[inline(always)]
    unsafe fn rows_rgb_256(src: &[u8], rows: usize, in_w: usize, t: &Taps, out: &mut [u8]) {
        let out_w = t.out_len();
        let half = 1i32 << (t.prec - 1);
        let mask2 = two_px_mask(0);
        let mask4 = _mm256_setr_m128i(two_px_mask(0), two_px_mask(6));
        for y in 0..rows {
            let s = &src[y * in_w * 3..(y + 1) * in_w * 3];
            let sp = s.as_ptr();
            let o = &mut out[y * out_w * 3..(y + 1) * out_w * 3];
            for x in 0..out_w {
                let (st, n) = (t.start[x] as usize, t.count[x] as usize);
                let w = &t.weights[x * t.stride..x * t.stride + n];
                let mut acc4 = _mm256_setzero_si256();
                // Vector body: four taps per step, while a 16-byte load stays inside the row.
                let mut k = 0;
                while k + 4 <= n && (st + k) * 3 + 16 <= s.len() {
                    let v = _mm256_broadcastsi128_si256(_mm_loadu_si128(
                        sp.add((st + k) * 3) as *const __m128i
                    ));
                    let px = _mm256_shuffle_epi8(v, mask4);
                    let p01 = pair(w[k], w[k + 1]);
                    let p23 = pair(w[k + 2], w[k + 3]);
                    let wv = _mm256_setr_epi32(p01, p01, p01, p01, p23, p23, p23, p23);
                    acc4 = _mm256_add_epi32(acc4, _mm256_madd_epi16(px, wv));
                    k += 4;
                }
                let mut acc = _mm_add_epi32(
                    _mm256_castsi256_si128(acc4),
                    _mm256_extracti128_si256(acc4, 1),
                );
                acc = _mm_add_epi32(acc, _mm_setr_epi32(half, half, half, 0));
                // Two taps, then the scalar tail.
                while k + 2 <= n && (st + k) * 3 + 8 <= s.len() {
                    let px = _mm_shuffle_epi8(
                        _mm_loadl_epi64(sp.add((st + k) * 3) as *const __m128i),
                        mask2,
                    );
                    acc = _mm_add_epi32(
                        acc,
                        _mm_madd_epi16(px, _mm_set1_epi32(pair(w[k], w[k + 1]))),
                    );
                    k += 2;
                }
                let mut extra = [0i32; 3];
                rgb_taps(s, st, w, k, &mut extra);
                store_px(acc, extra, t.prec, &mut o[x * 3..x * 3 + 3]);
            }
        }
    }

    /// Safety: the CPU has AVX2; arguments checked by `Kernels::resample_rows_u8`.
    #[target_feature(enable = "avx2")]
    pub unsafe fn rows_rgb_avx2(src: &[u8], rows: usize, in_w: usize, t: &Taps, out: &mut [u8]) {
        rows_rgb_256(src, rows, in_w, t, out)
    }

    /// The AVX-512 level runs the 256-bit body for the horizontal pass (RGB pixels are 3 bytes: a 512-bit
    /// step would need 8 taps per output, more than most filters have).
    /// Safety: the CPU has AVX-512 F+BW (and AVX2); arguments checked by `Kernels::resample_rows_u8`.
    #[target_feature(enable = "avx2,avx512f,avx512bw")]
    pub unsafe fn rows_rgb_avx512(src: &[u8], rows: usize, in_w: usize, t: &Taps, out: &mut [u8]) {
        rows_rgb_256(src, rows, in_w, t, out)
    }
}
