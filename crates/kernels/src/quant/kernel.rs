//! The quantized matmuls written once over [`SimdInt`] (q8) and [`SimdQ4`] (q4); `x86.rs` and
//! `x86_512.rs` instantiate them per level inside `#[target_feature]` functions.
//!
//! Register tile: RM rows of x × RN weight rows, one f32 accumulator vector each. q8, per block of 32
//! along k: the RN weight blocks are loaded (widened to i16) once, each x block once; every pair adds its
//! integer dot product (as f32 lanes) times d_w · d_x into its accumulator. q4: see [`tile4`]. One
//! horizontal sum per output at the end. Decode (m ≤ 3) runs RM = m, RN = 4 (four independent weight
//! streams); larger m runs RM = 4, RN = 2 (8 accumulators + 4 weight registers + 2 for x fit the 16 ymm of
//! AVX2). Rows of x are taken in chunks of `MC` so a chunk of quantized x (MC · k bytes) stays in L2 while
//! the weight rows stream past it.
#![allow(clippy::missing_safety_doc)] // the contracts are `q8_range`'s and `q4_range`'s

use super::{Q4Args, QArgs, Q4_SUBS, Q4_SUPER, Q4_SUPER_BYTES};
use crate::simd::int::{SimdInt, SimdQ4, BLOCK};
use crate::simd::{prefetch_lines, Simd};

/// Rows of x per L2-resident chunk.
const MC: usize = 64;

/// Prefetches the part of the next tile's weights that matches step `lo..hi` (bytes) of this tile: a
/// tile reads its RN contiguous rows as RN interleaved streams, each too short (2 KiB at k = 2048 in q8)
/// for the hardware prefetcher to run ahead of, so the next tile's rows (at `next`, RN·row bytes on) are
/// requested linearly at the pace this tile consumes its own: one tile ahead, a few lines per step.
#[inline(always)]
fn prefetch_next_tile(next: *const u8, lo: usize, hi: usize) {
    prefetch_lines(next, lo, hi)
}

#[inline(always)]
unsafe fn tile<S: SimdInt, const RM: usize, const RN: usize>(s: S, a: &QArgs, i: usize, c: usize) {
    let (nb, kp) = (a.nb, a.nb * BLOCK);
    let mut acc = [[s.zero(); RN]; RM];
    let wq = a.wq.add(c * kp);
    let wd = a.wd.add(c * nb);
    let xq = a.xq.add(i * kp);
    let xd = a.xd.add(i * nb);
    let next = wq.wrapping_add(RN * kp) as *const u8;
    for b in 0..nb {
        prefetch_next_tile(next, b * RN * BLOCK, (b + 1) * RN * BLOCK);
        let w: [S::W; RN] = std::array::from_fn(|r| unsafe { s.ld_w(wq.add(r * kp + b * BLOCK)) });
        if RM <= 3 {
            // decode: (q_w·q_x)·d_x, then times d_w broadcast from memory into the FMA (a load, no
            // scalar product and shuffle per pair): q8 GEMV 86–88% → 97% of the bandwidth on the lm head
            for (ii, acc) in acc.iter_mut().enumerate() {
                let x = s.ld_x(xq.add(ii * kp + b * BLOCK));
                let dx = s.splat(*xd.add(ii * nb + b));
                for r in 0..RN {
                    let v = s.mul(s.dot(w[r], x), dx);
                    acc[r] = s.mul_add(v, s.splat(*wd.add(r * nb + b)), acc[r]);
                }
            }
        } else {
            // prefill (4 × 2 tile): one scalar d_w·d_x per pair (the form above measured 8–17% slower
            // here at AVX2: 16 ymm registers)
            let dw: [f32; RN] = std::array::from_fn(|r| unsafe { *wd.add(r * nb + b) });
            for (ii, acc) in acc.iter_mut().enumerate() {
                let x = s.ld_x(xq.add(ii * kp + b * BLOCK));
                let dx = *xd.add(ii * nb + b);
                for r in 0..RN {
                    acc[r] = s.mul_add(s.dot(w[r], x), s.splat(dw[r] * dx), acc[r]);
                }
            }
        }
    }
    for (ii, acc) in acc.iter().enumerate() {
        for (r, &v) in acc.iter().enumerate() {
            let mut y = s.reduce_sum(v);
            if !a.bias.is_null() {
                y += *a.bias.add(c + r);
            }
            *a.y.add((i + ii) * a.n + c + r) = y;
        }
    }
}

/// Rows i..i+RM (RM ≤ 4) of x against weight rows c..c+RN.
#[inline(always)]
unsafe fn tile_rows<S: SimdInt, const RN: usize>(s: S, a: &QArgs, rm: usize, i: usize, c: usize) {
    match rm {
        1 => tile::<S, 1, RN>(s, a, i, c),
        2 => tile::<S, 2, RN>(s, a, i, c),
        3 => tile::<S, 3, RN>(s, a, i, c),
        _ => tile::<S, 4, RN>(s, a, i, c),
    }
}

/// y (m, c0..c1) for every row of x; the contract of `scalar::q8_range`.
#[inline(always)]
pub unsafe fn q8_range<S: SimdInt>(s: S, a: &QArgs, c0: usize, c1: usize) {
    let rn_max = if a.m <= 3 { 4 } else { 2 };
    for i0 in (0..a.m).step_by(MC) {
        let i1 = (i0 + MC).min(a.m);
        let mut c = c0;
        while c < c1 {
            let rn = (c1 - c).min(rn_max);
            let mut i = i0;
            while i < i1 {
                let rm = (i1 - i).min(4);
                match rn {
                    4 => tile_rows::<S, 4>(s, a, rm, i, c),
                    3 => tile_rows::<S, 3>(s, a, rm, i, c),
                    2 => tile_rows::<S, 2>(s, a, rm, i, c),
                    _ => tile_rows::<S, 1>(s, a, rm, i, c),
                }
                i += rm;
            }
            c += rn;
        }
    }
}

/// q4 register tile: RM rows of x × RN weight rows. Per super-block: for every step of `S::GROUP`
/// sub-blocks the RN weight steps are unpacked once (with their scale multipliers) and every x step
/// loaded once (x in group order, see [`SimdQ4`]); each pair adds Σ_j sc_j · (L·q_x)_j to its i32 lanes.
/// After the 8 sub-blocks each pair converts those lanes once and adds them times d·d_x into its f32
/// accumulator, then its minimum terms −dmin·mn_j · s_x[j] (one FMA). One horizontal sum per output at
/// the end.
#[inline(always)]
unsafe fn tile4<S: SimdQ4, const VNNI: bool, const RM: usize, const RN: usize>(
    s: S,
    a: &Q4Args,
    i: usize,
    c: usize,
) {
    let (nsb, nb) = (a.nsb, a.nsb * Q4_SUBS);
    let (kp, rb) = (nb * BLOCK, nsb * Q4_SUPER_BYTES);
    let mut acc = [[s.zero(); RN]; RM];
    let next = a.wq.wrapping_add((c + RN) * rb);
    for sb in 0..nsb {
        let step = RN * Q4_SUPER_BYTES;
        prefetch_next_tile(next, sb * step, (sb + 1) * step);
        let wb: [*const u8; RN] =
            std::array::from_fn(|r| unsafe { a.wq.add((c + r) * rb + sb * Q4_SUPER_BYTES) });
        let sc: [S::Sc8; RN] = std::array::from_fn(|r| unsafe { s.ld_sc8(wb[r]) });
        let mut isum = [[s.izero(); RN]; RM];
        for t in 0..Q4_SUBS / S::GROUP {
            let w: [S::W4; RN] = std::array::from_fn(|r| unsafe {
                s.ld_w4(wb[r].add(2 * Q4_SUBS + t * S::GROUP * BLOCK / 2))
            });
            let scs: [S::Sc; RN] = std::array::from_fn(|r| s.sc_step(sc[r], t));
            for (ii, isum) in isum.iter_mut().enumerate() {
                let x = s.ld_x8(a.xq.add((i + ii) * kp + sb * Q4_SUPER + t * S::GROUP * BLOCK));
                for r in 0..RN {
                    isum[r] = s.dot4::<VNNI>(isum[r], w[r], x, scs[r]);
                }
            }
        }
        for r in 0..RN {
            let wd = a.wd.add((c + r) * 2 * nsb + 2 * sb);
            let (d, mn) = (*wd, s.ld_mn(wb[r].add(Q4_SUBS), -*wd.add(1)));
            for ii in 0..RM {
                let dx = *a.xd.add((i + ii) * nsb + sb);
                let v = s.mul_add(s.cvt_i(isum[ii][r]), s.splat(d * dx), acc[ii][r]);
                acc[ii][r] = s.min_fma(mn, a.xs.add((i + ii) * nb + sb * Q4_SUBS), v);
            }
        }
    }
    for (ii, acc) in acc.iter().enumerate() {
        for (r, &v) in acc.iter().enumerate() {
            let mut y = s.reduce_sum(v);
            if !a.bias.is_null() {
                y += *a.bias.add(c + r);
            }
            *a.y.add((i + ii) * a.n + c + r) = y;
        }
    }
}

#[inline(always)]
unsafe fn tile4_rows<S: SimdQ4, const VNNI: bool, const RN: usize>(
    s: S,
    a: &Q4Args,
    rm: usize,
    i: usize,
    c: usize,
) {
    match rm {
        1 => tile4::<S, VNNI, 1, RN>(s, a, i, c),
        2 => tile4::<S, VNNI, 2, RN>(s, a, i, c),
        3 => tile4::<S, VNNI, 3, RN>(s, a, i, c),
        _ => tile4::<S, VNNI, 4, RN>(s, a, i, c),
    }
}

/// y (m, c0..c1) for every row of x; the contract of `scalar::q4_range`. `VNNI`: see [`SimdQ4::dot4`].
#[inline(always)]
pub unsafe fn q4_range<S: SimdQ4, const VNNI: bool>(s: S, a: &Q4Args, c0: usize, c1: usize) {
    let rn_max = if a.m <= 3 { 4 } else { 2 };
    for i0 in (0..a.m).step_by(MC) {
        let i1 = (i0 + MC).min(a.m);
        let mut c = c0;
        while c < c1 {
            let rn = (c1 - c).min(rn_max);
            let mut i = i0;
            while i < i1 {
                let rm = (i1 - i).min(4);
                match rn {
                    4 => tile4_rows::<S, VNNI, 4>(s, a, rm, i, c),
                    3 => tile4_rows::<S, VNNI, 3>(s, a, rm, i, c),
                    2 => tile4_rows::<S, VNNI, 2>(s, a, rm, i, c),
                    _ => tile4_rows::<S, VNNI, 1>(s, a, rm, i, c),
                }
                i += rm;
            }
            c += rn;
        }
    }
}

/// The q8 row quantizer (`scalar::quantize_row_q8`, and W8A8's activations with `flip` 0x80: the byte
/// q + 128) on the level's vectors, bit for bit the scalar one: per whole block of 32 the maximum of |x|
/// (exact), d = max / 127 and 1/d as the scalar computes them, then x·(1/d) + 1.5·2²³ rounded twice as
/// `scalar::round_small` rounds (product, then sum), whose low byte is round(x/d) in two's complement
/// (|round(x/d)| ≤ 127 < 2²²). A block with a NaN or ±inf (x·0 ≠ 0), one whose 1/d overflows (d a
/// denormal below 2⁻¹²⁸, where the scalar cast saturates), and the last partial block go to the scalar
/// quantizer. Safety: q.len() = 32·⌈x.len()/32⌉, d.len() = ⌈x.len()/32⌉.
#[inline(always)]
pub unsafe fn quantize_row_8<S: Simd>(s: S, x: &[f32], q: &mut [u8], d: &mut [f32], flip: u8) {
    const MAGIC: f32 = 12_582_912.0;
    let nv = BLOCK / S::LANES;
    debug_assert!(nv * S::LANES == BLOCK && nv <= 8);
    debug_assert!(q.len() == x.len().div_ceil(BLOCK) * BLOCK && d.len() == x.len().div_ceil(BLOCK));
    let full = x.len() / BLOCK;
    for b in 0..d.len() {
        let qb = &mut q[b * BLOCK..(b + 1) * BLOCK];
        if b < full {
            let p = x.as_ptr().add(b * BLOCK);
            let mut v = [s.zero(); 8];
            let (mut amax, mut nf) = (s.zero(), s.zero());
            for (j, v) in v[..nv].iter_mut().enumerate() {
                *v = s.ld(p.add(j * S::LANES));
                amax = s.max_raw(amax, s.abs(*v));
                nf = s.add(nf, s.mul(*v, s.zero()));
            }
            let db = s.reduce_max(amax) / 127.0;
            let id = if db != 0.0 { 1.0 / db } else { 0.0 };
            if s.reduce_sum(nf) == 0.0 && id.is_finite() {
                let id = s.splat(id);
                let mut t = [0f32; BLOCK];
                for (j, &v) in v[..nv].iter().enumerate() {
                    s.st(
                        t.as_mut_ptr().add(j * S::LANES),
                        s.add(s.mul(v, id), s.splat(MAGIC)),
                    );
                }
                for (o, t) in qb.iter_mut().zip(t) {
                    *o = t.to_bits() as u8 ^ flip;
                }
                d[b] = db;
                continue;
            }
        }
        let xs = &x[b * BLOCK..((b + 1) * BLOCK).min(x.len())];
        super::scalar::quantize_row_8(xs, qb, &mut d[b..b + 1], flip);
    }
}
