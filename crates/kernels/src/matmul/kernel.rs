//! The matmul kernels written once over [`MmSimd`] (the f32 primitives of [`Simd`] plus bf16 widening and
//! raw-pointer loads), `#[inline(always)]` so each ISA's `#[target_feature]` entry point compiles them for
//! that ISA. Preconditions (all lengths consistent) are checked by the public API in `mod.rs`.

#![allow(clippy::needless_range_loop)] // register tiles read best as acc[m][v]

use super::Args;
use crate::simd::{math, Simd};

/// Primitives the matmul kernels need beyond [`Simd`].
pub trait MmSimd: Simd {
    /// Load LANES f32. Safety: `p` valid for LANES reads.
    unsafe fn loadp(self, p: *const f32) -> Self::V;
    /// Store LANES f32. Safety: `p` valid for LANES writes.
    unsafe fn storep(self, p: *mut f32, v: Self::V);
    /// LANES consecutive bf16 -> f32 (zero-extend, shift left 16). Safety: `p` valid for LANES reads.
    unsafe fn widen(self, p: *const u16) -> Self::V;
    /// 2·LANES bf16 stored as pairs `[r0 k, r0 k+1, r1 k, r1 k+1, ...]` -> (the k values of the LANES rows,
    /// the k+1 values): shift left 16 / mask the high half of each 32-bit lane. Safety: 2·LANES reads.
    unsafe fn widen_pairs(self, p: *const u16) -> (Self::V, Self::V);
}

/// A weight element type: bf16 bits or f32.
pub trait WElem: Copy {
    /// LANES consecutive weights as f32. Safety: `p` valid for LANES reads.
    unsafe fn load<S: MmSimd>(s: S, p: *const Self) -> S::V;
    fn to_f32(self) -> f32;
}

impl WElem for u16 {
    #[inline(always)]
    unsafe fn load<S: MmSimd>(s: S, p: *const u16) -> S::V {
        s.widen(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f32::from_bits((self as u32) << 16)
    }
}

impl WElem for f32 {
    #[inline(always)]
    unsafe fn load<S: MmSimd>(s: S, p: *const f32) -> S::V {
        s.loadp(p)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

/// GEMV on row-major W (n, k): y[i][r] for all i < m, r0 ≤ r < r1. Blocks of up to 4 rows of x; within a
/// block, one row of W at a time, so that memory is read in one sequential stream (a row of 2048 bf16 is
/// one 4 KiB page: streams that each last one page defeat the hardware prefetcher), with 4 independent
/// accumulators per row of x along k.
#[inline(always)]
pub unsafe fn gemv<S: MmSimd, T: WElem>(s: S, a: &Args, w: &[T], r0: usize, r1: usize) {
    // Row r of W is read from memory once, then from L1 for the next block of x's rows.
    for r in r0..r1 {
        let mut i = 0;
        while i < a.m {
            let mb = (a.m - i).min(4);
            match mb {
                1 => gemv_row::<S, T, 1>(s, a, w, i, r),
                2 => gemv_row::<S, T, 2>(s, a, w, i, r),
                3 => gemv_row::<S, T, 3>(s, a, w, i, r),
                _ => gemv_row::<S, T, 4>(s, a, w, i, r),
            }
            i += mb;
        }
    }
}

/// y[i0+i][r] for i < M.
#[inline(always)]
unsafe fn gemv_row<S: MmSimd, T: WElem, const M: usize>(
    s: S,
    a: &Args,
    w: &[T],
    i0: usize,
    r: usize,
) {
    const U: usize = 4;
    let k = a.k;
    let l = S::LANES;
    let x = a.x.as_ptr().add(i0 * k);
    let w = w.as_ptr().add(r * k);
    let mut acc = [[s.zero(); U]; M];
    // vector body: U vectors of k per step
    let mut kk = 0;
    while kk + U * l <= k {
        for u in 0..U {
            let wv = T::load(s, w.add(kk + u * l));
            for m in 0..M {
                acc[m][u] = s.mul_add(s.loadp(x.add(m * k + kk + u * l)), wv, acc[m][u]);
            }
        }
        kk += U * l;
    }
    // remaining whole vectors
    while kk + l <= k {
        let wv = T::load(s, w.add(kk));
        for m in 0..M {
            acc[m][0] = s.mul_add(s.loadp(x.add(m * k + kk)), wv, acc[m][0]);
        }
        kk += l;
    }
    // horizontal sums, scalar tail, bias
    for m in 0..M {
        let v = s.add(s.add(acc[m][0], acc[m][1]), s.add(acc[m][2], acc[m][3]));
        let mut sum = s.reduce_sum(v);
        for t in kk..k {
            sum += *x.add(m * k + t) * (*w.add(t)).to_f32();
        }
        let b = a.bias.map_or(0.0, |b| *b.get_unchecked(r));
        *a.y.0.add((i0 + m) * a.n + r) = sum + b;
    }
}

/// GEMV on row-major bf16 W with the pair trick: each load of 2·LANES weights is widened by shift/mask
/// into the even-k and odd-k vectors, met by `Args::xp` (x deinterleaved the same way). One sequential
/// stream of W; 2 blocks per step, 4 accumulators per row of x.
#[inline(always)]
pub unsafe fn gemv_bf16_pairs<S: MmSimd>(s: S, a: &Args, w: &[u16], r0: usize, r1: usize) {
    // Row r of W is read from memory once, then from L1 for the next block of x's rows.
    for r in r0..r1 {
        let mut i = 0;
        while i < a.m {
            let mb = (a.m - i).min(4);
            match mb {
                1 => gemv_pairs_row::<S, 1>(s, a, w, i, r),
                2 => gemv_pairs_row::<S, 2>(s, a, w, i, r),
                3 => gemv_pairs_row::<S, 3>(s, a, w, i, r),
                _ => gemv_pairs_row::<S, 4>(s, a, w, i, r),
            }
            i += mb;
        }
    }
}

#[inline(always)]
unsafe fn gemv_pairs_row<S: MmSimd, const M: usize>(
    s: S,
    a: &Args,
    w: &[u16],
    i0: usize,
    r: usize,
) {
    let k = a.k;
    let l = S::LANES;
    let b = 2 * l;
    let xp = a.xp.as_ptr().add(i0 * k);
    let w = w.as_ptr().add(r * k);
    let mut acc = [[s.zero(); 4]; M];
    // vector body: two blocks of 2·LANES per step
    let mut kk = 0;
    while kk + 2 * b <= k {
        for u in 0..2 {
            let (we, wo) = s.widen_pairs(w.add(kk + u * b));
            for m in 0..M {
                let xr = xp.add(m * k + kk + u * b);
                acc[m][2 * u] = s.mul_add(s.loadp(xr), we, acc[m][2 * u]);
                acc[m][2 * u + 1] = s.mul_add(s.loadp(xr.add(l)), wo, acc[m][2 * u + 1]);
            }
        }
        kk += 2 * b;
    }
    if kk + b <= k {
        let (we, wo) = s.widen_pairs(w.add(kk));
        for m in 0..M {
            let xr = xp.add(m * k + kk);
            acc[m][0] = s.mul_add(s.loadp(xr), we, acc[m][0]);
            acc[m][1] = s.mul_add(s.loadp(xr.add(l)), wo, acc[m][1]);
        }
        kk += b;
    }
    // horizontal sums, scalar tail (xp keeps the tail in order), bias
    for m in 0..M {
        let v = s.add(s.add(acc[m][0], acc[m][1]), s.add(acc[m][2], acc[m][3]));
        let mut sum = s.reduce_sum(v);
        for t in kk..k {
            sum += *xp.add(m * k + t) * f32::from_bits((*w.add(t) as u32) << 16);
        }
        let bv = a.bias.map_or(0.0, |b| *b.get_unchecked(r));
        *a.y.0.add((i0 + m) * a.n + r) = sum + bv;
    }
}

/// Packed bf16 W, exact path: output column groups g0..g1 (G = NV·LANES columns each) for all rows of x,
/// in tiles of MR rows.
#[inline(always)]
pub unsafe fn packed_bf16<S: MmSimd, const MR: usize, const NV: usize>(
    s: S,
    a: &Args,
    w: &[u16],
    g0: usize,
    g1: usize,
) {
    // the epilogue is a compile-time choice: the plain kernel carries none of the SwiGLU code
    if a.swiglu {
        packed_bf16_e::<S, MR, NV, true>(s, a, w, g0, g1)
    } else {
        packed_bf16_e::<S, MR, NV, false>(s, a, w, g0, g1)
    }
}

#[inline(always)]
unsafe fn packed_bf16_e<S: MmSimd, const MR: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    w: &[u16],
    g0: usize,
    g1: usize,
) {
    let g = NV * S::LANES;
    let gsize = a.k.div_ceil(2) * g * 2;
    for j in g0..g1 {
        let wg = w.as_ptr().add((j - a.g_base) * gsize);
        let (c0, cols) = a.group_cols(j, g);
        let mut i = 0;
        // 5 to 8 rows (batched decode): one tile of all of them, a few vectors of the group at a time, so
        // that each weight is widened once for every row instead of once per MR rows.
        while a.m - i > MR && a.m - i >= SPLIT_MIN_ROWS {
            let r = (a.m - i).min(8);
            match r {
                5 => tile_bf16_split::<S, 5, NV, E>(s, a, wg, i, c0, cols),
                6 => tile_bf16_split::<S, 6, NV, E>(s, a, wg, i, c0, cols),
                7 => tile_bf16_split::<S, 7, NV, E>(s, a, wg, i, c0, cols),
                _ => tile_bf16_split::<S, 8, NV, E>(s, a, wg, i, c0, cols),
            }
            i += r;
        }
        while i + MR <= a.m {
            tile_bf16::<S, MR, NV, E>(s, a, wg, i, c0, cols);
            i += MR;
        }
        match a.m - i {
            0 => {}
            1 => tile_bf16::<S, 1, NV, E>(s, a, wg, i, c0, cols),
            2 => tile_bf16::<S, 2, NV, E>(s, a, wg, i, c0, cols),
            3 => tile_bf16::<S, 3, NV, E>(s, a, wg, i, c0, cols),
            4 => tile_bf16::<S, 4, NV, E>(s, a, wg, i, c0, cols),
            5 => tile_bf16::<S, 5, NV, E>(s, a, wg, i, c0, cols),
            _ => unreachable!("MR <= 6"),
        }
    }
}

/// Rows of x from which [`tile_bf16_split`] takes a block of rows (up to 8) instead of MR-row tiles.
const SPLIT_MIN_ROWS: usize = 5;

/// Bytes ahead of the pair being read at which the packed weight is prefetched: the weight is one
/// sequential stream (groups are contiguous), and decode reads it from memory; ~2 KiB in flight per
/// thread hides the DRAM latency that the hardware prefetcher's shorter reach leaves exposed while the
/// FMAs of a batched step keep the core busy.
const PREFETCH_BYTES: usize = 2048;

/// Prefetches the cache lines `PREFETCH_BYTES` ahead of a pair row of `bytes` bytes at `p` (a pair row
/// is 4·G bytes: one line at AVX2, four at AVX-512; a line is never requested twice per row).
#[inline(always)]
unsafe fn prefetch(p: *const u16, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let ahead = p.cast::<i8>().wrapping_add(PREFETCH_BYTES);
        let mut off = 0;
        while off < bytes {
            // a hint: an address past the weight's end is never dereferenced
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(off));
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// One R × G tile (5 ≤ R ≤ 8) computed VC vectors of the group at a time: R·VC accumulators + 2·VC
/// widened weights + 1 broadcast fit the register file (AVX2: 8 + 2 + 1 of 16 with VC = 1; AVX-512: VC = 2,
/// 16 + 4 + 1 of 32), and each pair load is widened once for all R rows. The first pass reads the group
/// from memory (prefetched ahead), the others from L2. Each accumulator sums the same products in the
/// same order as [`tile_bf16`]: the same bits.
#[inline(always)]
unsafe fn tile_bf16_split<S: MmSimd, const R: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    wg: *const u16,
    i0: usize,
    c0: usize,
    cols: usize,
) {
    let k = a.k;
    let g = NV * S::LANES;
    let x = a.x.as_ptr().add(i0 * k);
    let vc = if S::LANES >= 16 { 2 } else { 1 };
    let mut out = [[s.zero(); NV]; R];
    let mut v0 = 0;
    while v0 < NV {
        match (NV - v0).min(vc) {
            1 => split_pass::<S, R, 1, NV>(s, x, k, wg, g, v0, &mut out),
            _ => split_pass::<S, R, 2, NV>(s, x, k, wg, g, v0, &mut out),
        }
        v0 += vc;
    }
    store_tile::<S, R, NV, E>(s, a, &out, i0, c0, cols);
}

/// Vectors v0..v0+VC of the tile over all of k, into `out[..][v0..v0+VC]`.
#[inline(always)]
unsafe fn split_pass<S: MmSimd, const R: usize, const VC: usize, const NV: usize>(
    s: S,
    x: *const f32,
    k: usize,
    wg: *const u16,
    g: usize,
    v0: usize,
    out: &mut [[S::V; NV]; R],
) {
    let l = S::LANES;
    let mut acc = [[s.zero(); VC]; R];
    for p in 0..k / 2 {
        let wp = wg.add(p * g * 2 + v0 * l * 2);
        if v0 == 0 {
            prefetch(wg.add(p * g * 2), g * 4);
        }
        let mut we = [s.zero(); VC];
        let mut wo = [s.zero(); VC];
        for v in 0..VC {
            (we[v], wo[v]) = s.widen_pairs(wp.add(v * l * 2));
        }
        for m in 0..R {
            let xe = s.splat(*x.add(m * k + 2 * p));
            for v in 0..VC {
                acc[m][v] = s.mul_add(xe, we[v], acc[m][v]);
            }
            let xo = s.splat(*x.add(m * k + 2 * p + 1));
            for v in 0..VC {
                acc[m][v] = s.mul_add(xo, wo[v], acc[m][v]);
            }
        }
    }
    if k % 2 == 1 {
        let p = k / 2;
        let wp = wg.add(p * g * 2 + v0 * l * 2);
        for v in 0..VC {
            let (we, _) = s.widen_pairs(wp.add(v * l * 2));
            for m in 0..R {
                acc[m][v] = s.mul_add(s.splat(*x.add(m * k + 2 * p)), we, acc[m][v]);
            }
        }
    }
    for m in 0..R {
        for v in 0..VC {
            out[m][v0 + v] = acc[m][v];
        }
    }
}

/// One MR × G tile: y[i0.., c0..c0+cols] = x[i0..i0+MR] · group + bias.
#[inline(always)]
unsafe fn tile_bf16<S: MmSimd, const MR: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    wg: *const u16,
    i0: usize,
    c0: usize,
    cols: usize,
) {
    let k = a.k;
    let l = S::LANES;
    let g = NV * l;
    let x = a.x.as_ptr().add(i0 * k);
    let mut acc = [[s.zero(); NV]; MR];
    // pairs of k: one load per vector, widened to the even-k and odd-k weights
    for p in 0..k / 2 {
        let wp = wg.add(p * g * 2);
        prefetch(wp, g * 4);
        let mut xe = [s.zero(); MR];
        let mut xo = [s.zero(); MR];
        for m in 0..MR {
            xe[m] = s.splat(*x.add(m * k + 2 * p));
            xo[m] = s.splat(*x.add(m * k + 2 * p + 1));
        }
        let mut we = [s.zero(); NV];
        let mut wo = [s.zero(); NV];
        for v in 0..NV {
            (we[v], wo[v]) = s.widen_pairs(wp.add(v * l * 2));
        }
        for m in 0..MR {
            for v in 0..NV {
                acc[m][v] = s.mul_add(xe[m], we[v], acc[m][v]);
            }
            for v in 0..NV {
                acc[m][v] = s.mul_add(xo[m], wo[v], acc[m][v]);
            }
        }
    }
    // odd k: the last pair holds one real k
    if k % 2 == 1 {
        let p = k / 2;
        let wp = wg.add(p * g * 2);
        for v in 0..NV {
            let (we, _) = s.widen_pairs(wp.add(v * l * 2));
            for m in 0..MR {
                acc[m][v] = s.mul_add(s.splat(*x.add(m * k + 2 * p)), we, acc[m][v]);
            }
        }
    }
    store_tile::<S, MR, NV, E>(s, a, &acc, i0, c0, cols);
}

/// Packed f32 W: output column groups g0..g1 for all rows of x.
#[inline(always)]
pub unsafe fn packed_f32<S: MmSimd, const MR: usize, const NV: usize>(
    s: S,
    a: &Args,
    w: &[f32],
    g0: usize,
    g1: usize,
) {
    if a.swiglu {
        packed_f32_e::<S, MR, NV, true>(s, a, w, g0, g1)
    } else {
        packed_f32_e::<S, MR, NV, false>(s, a, w, g0, g1)
    }
}

#[inline(always)]
unsafe fn packed_f32_e<S: MmSimd, const MR: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    w: &[f32],
    g0: usize,
    g1: usize,
) {
    let g = NV * S::LANES;
    let gsize = a.k * g;
    for j in g0..g1 {
        let wg = w.as_ptr().add((j - a.g_base) * gsize);
        let (c0, cols) = a.group_cols(j, g);
        let mut i = 0;
        while i + MR <= a.m {
            tile_f32::<S, MR, NV, E>(s, a, wg, i, c0, cols);
            i += MR;
        }
        match a.m - i {
            0 => {}
            1 => tile_f32::<S, 1, NV, E>(s, a, wg, i, c0, cols),
            2 => tile_f32::<S, 2, NV, E>(s, a, wg, i, c0, cols),
            3 => tile_f32::<S, 3, NV, E>(s, a, wg, i, c0, cols),
            4 => tile_f32::<S, 4, NV, E>(s, a, wg, i, c0, cols),
            5 => tile_f32::<S, 5, NV, E>(s, a, wg, i, c0, cols),
            _ => unreachable!("MR <= 6"),
        }
    }
}

#[inline(always)]
unsafe fn tile_f32<S: MmSimd, const MR: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    wg: *const f32,
    i0: usize,
    c0: usize,
    cols: usize,
) {
    let k = a.k;
    let l = S::LANES;
    let g = NV * l;
    let x = a.x.as_ptr().add(i0 * k);
    let mut acc = [[s.zero(); NV]; MR];
    for kk in 0..k {
        let wp = wg.add(kk * g);
        let mut xv = [s.zero(); MR];
        for m in 0..MR {
            xv[m] = s.splat(*x.add(m * k + kk));
        }
        for v in 0..NV {
            let wv = s.loadp(wp.add(v * l));
            for m in 0..MR {
                acc[m][v] = s.mul_add(xv[m], wv, acc[m][v]);
            }
        }
    }
    store_tile::<S, MR, NV, E>(s, a, &acc, i0, c0, cols);
}

/// y[i0+m][c0 + c] = acc[m][c] + bias[c0 + c] for m < MR, c < cols (cols ≤ G; a partial group goes
/// through a buffer). With the SwiGLU epilogue (E, for a SwiGLU pair):
/// y[i0+m][c0 + c] = silu(acc[m][c])·acc[m][G/2 + c], c < cols ≤ G/2.
#[inline(always)]
pub unsafe fn store_tile<S: MmSimd, const MR: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    acc: &[[S::V; NV]; MR],
    i0: usize,
    c0: usize,
    cols: usize,
) {
    let l = S::LANES;
    let g = NV * l;
    if E {
        // gate in the first NV/2 vectors, up in the last NV/2 (NV is even at every level)
        let h = NV / 2;
        for (m, accm) in acc.iter().enumerate() {
            let yrow = a.y.0.add((i0 + m) * a.n + c0);
            let mut out = [s.zero(); NV];
            for v in 0..h {
                // the `swiglu` op's arithmetic: silu(g)·u = (g·σ(g))·u
                let gt = accm[v];
                out[v] = s.mul(s.mul(gt, math::sigmoid(s, gt)), accm[h + v]);
            }
            if cols == h * l {
                for v in 0..h {
                    s.storep(yrow.add(v * l), out[v]);
                }
            } else {
                let mut tmp = [0f32; 64];
                for v in 0..h {
                    s.storep(tmp.as_mut_ptr().add(v * l), out[v]);
                }
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), yrow, cols);
            }
        }
        return;
    }
    for (m, accm) in acc.iter().enumerate() {
        let yrow = a.y.0.add((i0 + m) * a.n + c0);
        if cols == g {
            for (v, &r) in accm.iter().enumerate() {
                let r = match a.bias {
                    Some(b) => s.add(r, s.loadp(b.as_ptr().add(c0 + v * l))),
                    None => r,
                };
                s.storep(yrow.add(v * l), r);
            }
        } else {
            let mut tmp = [0f32; 128];
            for (v, &r) in accm.iter().enumerate() {
                s.storep(tmp.as_mut_ptr().add(v * l), r);
            }
            for (c, &t) in tmp[..cols].iter().enumerate() {
                let b = a.bias.map_or(0.0, |b| *b.get_unchecked(c0 + c));
                *yrow.add(c) = t + b;
            }
        }
    }
}
