//! The cache-blocked GEMM of the levels without a bf16 dot product (AVX2, SSE4.1), written once over
//! [`MmSimd`] like `kernel.rs` and instantiated at each level's `#[target_feature]` boundary.
//!
//! Why: the direct packed kernel walks, for each group of G output columns, every row of x over all of k.
//! x (m, k) is then read once per group: 1200 × 4096 f32 (19.7 MB, the vision MLP's fc2) is more than the
//! L3 share a core sees (that shape measured 53% of the FMA peak on Zen 3, the others 75–80%). And each MR-row
//! tile widened the group's bf16 pairs again (4 integer ops per 16 FMAs) with only 8 of the 16 ymm
//! registers as accumulators.
//!
//! Here (the BLIS loop order, with the weight already packed at load):
//! - rows of x in blocks of [`MC`], k in blocks of [`KC`], groups in chunks of [`NC`]: the block of x
//!   (MC × KC f32, 168 KiB) is reused by every group of the chunk from L2;
//! - the KC × G sub-panel of a group is widened from bf16 pairs to f32 **once** per (row block, k block)
//!   into an L1-resident buffer ([`WElem::panel`]; f32 panels are used in place), then read by all MC/MR
//!   tiles of the block;
//! - the register tile is MR = 6 rows × NV·LANES = 2 vectors: 12 accumulators + 2 weight vectors + 1
//!   broadcast = 15 of the 16 registers; per k, 2 loads, 6 broadcasts and 12 FMAs, no integer ops;
//! - partial sums of a tile between k blocks go to a per-thread scratch (MC × NC·G f32, L2-resident);
//!   bias or the SwiGLU epilogue ([`store_tile`]) only after the last k block;
//! - the sub-panel used next is prefetched into L2 a few lines per tile while the current one computes
//!   (it comes from memory: 8 KiB of bf16 read at once would stall the widening on DRAM latency).
//!
//! Each accumulator still sums its products in k order with one `mul_add` per product, from zero, bias
//! added last: bit for bit the direct kernel's result (tested), whatever the blocking.

#![allow(clippy::needless_range_loop)] // register tiles read best as acc[m][v]

use super::kernel::{store_tile, MmSimd, WElem};
use super::Args;
use std::cell::RefCell;

/// k values per block (even: a block starts on a bf16 pair). The widened sub-panel is KC × G f32 (16 KiB
/// at G = 16), the x tile MR × KC (6 KiB): both in L1.
pub const KC: usize = 256;
/// Rows of x per block: the x block MC × KC f32 (168 KiB) stays in L2 while a chunk of groups reads it.
pub const MC: usize = 168;
/// Groups per chunk: the partial sums of one row block over a chunk, MC × NC·G f32 (84 KiB at G = 16).
pub const NC: usize = 8;
/// Rows of x from which the blocked kernel runs (fewer: the direct kernel, e.g. decode with m = 1).
pub const MIN_M: usize = 16;
/// Largest G the sub-panel buffer holds.
const MAX_G: usize = 16;

/// The widened sub-panel: (KC + 1) rows of G f32 (an odd last k block widens its pair's zero half too).
#[repr(C, align(64))]
struct PanelBuf([f32; (KC + 1) * MAX_G]);

thread_local! {
    /// Partial sums of the tiles between k blocks (grown once per thread to MC × NC·G).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// How a packed group is stored, seen by the blocked kernel.
pub trait Panel: WElem {
    /// Elements of one packed group of G rows over k.
    fn group_len(k: usize, g: usize) -> usize;
    /// (offset, elements) of the rows k0..k0+kc (k0 even) within a packed group.
    fn sub_panel(k0: usize, kc: usize, g: usize) -> (usize, usize);
    /// The f32 rows k0..k0+kc (G values each, row stride G) of packed group `wg`: a pointer into the group
    /// (f32), or `buf` filled by widening the pairs (bf16).
    /// Safety: k0 even; the group holds rows k0..k0+kc; `buf` holds (kc + 1)·G.
    unsafe fn panel<S: MmSimd>(
        s: S,
        wg: *const Self,
        k0: usize,
        kc: usize,
        g: usize,
        buf: *mut f32,
    ) -> *const f32;
}

impl Panel for u16 {
    #[inline(always)]
    fn group_len(k: usize, g: usize) -> usize {
        k.div_ceil(2) * g * 2
    }
    #[inline(always)]
    fn sub_panel(k0: usize, kc: usize, g: usize) -> (usize, usize) {
        (k0 / 2 * g * 2, kc.div_ceil(2) * g * 2)
    }
    #[inline(always)]
    unsafe fn panel<S: MmSimd>(
        s: S,
        wg: *const u16,
        k0: usize,
        kc: usize,
        g: usize,
        buf: *mut f32,
    ) -> *const f32 {
        let l = S::LANES;
        // pair p: [r0 k, r0 k+1, r1 k, r1 k+1, ...] -> row 2p (the even k of G rows), row 2p+1 (odd k)
        for p in 0..kc.div_ceil(2) {
            let src = wg.add((k0 / 2 + p) * g * 2);
            let d = buf.add(2 * p * g);
            for v in 0..g / l {
                let (e, o) = s.widen_pairs(src.add(v * 2 * l));
                s.storep(d.add(v * l), e);
                s.storep(d.add(g + v * l), o);
            }
        }
        buf
    }
}

impl Panel for f32 {
    #[inline(always)]
    fn group_len(k: usize, g: usize) -> usize {
        k * g
    }
    #[inline(always)]
    fn sub_panel(k0: usize, kc: usize, g: usize) -> (usize, usize) {
        (k0 * g, kc * g)
    }
    #[inline(always)]
    unsafe fn panel<S: MmSimd>(
        _s: S,
        wg: *const f32,
        k0: usize,
        _kc: usize,
        g: usize,
        _buf: *mut f32,
    ) -> *const f32 {
        wg.add(k0 * g)
    }
}

/// Packed W: output column groups g0..g1 for all rows of x, in register tiles of MR rows × NV vectors.
/// (The levels call it from [`MIN_M`] rows of x; below, the direct kernel.)
/// Safety: as the range functions of `MmTable`; NV·LANES ≤ 16, MR ≤ 6.
#[inline(always)]
pub unsafe fn packed<S: MmSimd, T: Panel, const MR: usize, const NV: usize>(
    s: S,
    a: &Args,
    w: &[T],
    g0: usize,
    g1: usize,
) {
    if a.swiglu {
        blocked::<S, T, MR, NV, true>(s, a, w, g0, g1)
    } else {
        blocked::<S, T, MR, NV, false>(s, a, w, g0, g1)
    }
}

#[inline(always)]
unsafe fn blocked<S: MmSimd, T: Panel, const MR: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    w: &[T],
    g0: usize,
    g1: usize,
) {
    let g = NV * S::LANES;
    debug_assert!(g <= MAX_G && MR <= 6);
    let glen = T::group_len(a.k, g);
    // k = 0 still runs one (empty) block: it writes the bias
    let nkb = a.k.div_ceil(KC).max(1);
    let mut buf = PanelBuf([0.0; (KC + 1) * MAX_G]);
    // the scratch is taken as a pointer here (no closure around the loops: they keep the target features)
    let part = if nkb > 1 {
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            if sc.len() < MC * NC * g {
                sc.resize(MC * NC * g, 0.0);
            }
            sc.as_mut_ptr()
        })
    } else {
        std::ptr::null_mut()
    };
    let mut ic = 0;
    while ic < a.m {
        let mc = MC.min(a.m - ic);
        let mut jc = g0;
        while jc < g1 {
            let jn = NC.min(g1 - jc);
            for kb in 0..nkb {
                let k0 = kb * KC;
                let kc = KC.min(a.k - k0);
                let (first, last) = (kb == 0, kb + 1 == nkb);
                for jj in 0..jn {
                    let j = jc + jj;
                    let wp = T::panel(
                        s,
                        w.as_ptr().add((j - a.g_base) * glen),
                        k0,
                        kc,
                        g,
                        buf.0.as_mut_ptr(),
                    );
                    let (c0, cols) = a.group_cols(j, g);
                    // the sub-panel used next (the next group, else the next k block, else the next
                    // chunk), prefetched into L2 a few lines per tile while this one computes
                    let next = if jj + 1 < jn {
                        Some((j + 1, k0))
                    } else if kb + 1 < nkb {
                        Some((jc, k0 + KC))
                    } else if jc + jn < g1 {
                        Some((jc + jn, 0))
                    } else {
                        None
                    };
                    let (pf, pf_lines) = match next {
                        Some((nj, nk0)) => {
                            let (off, len) = T::sub_panel(nk0, KC.min(a.k - nk0), g);
                            let p = w.as_ptr().add((nj - a.g_base) * glen + off) as *const u8;
                            (p, (len * std::mem::size_of::<T>()).div_ceil(64))
                        }
                        None => (std::ptr::null(), 0),
                    };
                    let per_tile = pf_lines.div_ceil(mc.div_ceil(MR)).max(1);
                    let mut pf_line = 0;
                    let t = Tile {
                        wp,
                        k0,
                        kc,
                        part: part.wrapping_add(jj * MC * g),
                        first,
                        last,
                        c0,
                        cols,
                    };
                    let mut ir = 0;
                    while ir + MR <= mc {
                        prefetch_lines(pf, &mut pf_line, per_tile, pf_lines);
                        tile::<S, MR, NV, E>(s, a, &t, ic, ir);
                        ir += MR;
                    }
                    prefetch_lines(pf, &mut pf_line, pf_lines, pf_lines);
                    match mc - ir {
                        0 => {}
                        1 => tile::<S, 1, NV, E>(s, a, &t, ic, ir),
                        2 => tile::<S, 2, NV, E>(s, a, &t, ic, ir),
                        3 => tile::<S, 3, NV, E>(s, a, &t, ic, ir),
                        4 => tile::<S, 4, NV, E>(s, a, &t, ic, ir),
                        5 => tile::<S, 5, NV, E>(s, a, &t, ic, ir),
                        _ => unreachable!("MR <= 6"),
                    }
                }
            }
            jc += jn;
        }
        ic += mc;
    }
}

/// Prefetches (into L2) up to `count` more of the `lines` cache lines from `p`, from line `*next` on.
#[inline(always)]
unsafe fn prefetch_lines(p: *const u8, next: &mut usize, count: usize, lines: usize) {
    let end = (*next + count).min(lines);
    #[cfg(target_arch = "x86_64")]
    for l in *next..end {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        // no architectural effect: any address may be prefetched
        _mm_prefetch::<_MM_HINT_T1>(p.wrapping_add(l * 64) as *const i8);
    }
    *next = end;
}

/// One (group, k block) of a row block.
struct Tile {
    /// f32 sub-panel: kc rows of G
    wp: *const f32,
    k0: usize,
    kc: usize,
    /// this group's partial sums: MC rows of G (null with a single k block)
    part: *mut f32,
    first: bool,
    last: bool,
    /// the group's first output column and columns
    c0: usize,
    cols: usize,
}

/// Rows ic+ir..ic+ir+R of x times the sub-panel, added to the tile's partial sums (or from zero on the
/// first k block); stored to y through [`store_tile`] after the last.
#[inline(always)]
unsafe fn tile<S: MmSimd, const R: usize, const NV: usize, const E: bool>(
    s: S,
    a: &Args,
    t: &Tile,
    ic: usize,
    ir: usize,
) {
    let l = S::LANES;
    let g = NV * l;
    let pt = t.part.wrapping_add(ir * g);
    let mut acc = [[s.zero(); NV]; R];
    if !t.first {
        for m in 0..R {
            for v in 0..NV {
                acc[m][v] = s.loadp(pt.add(m * g + v * l));
            }
        }
    }
    let k = a.k;
    let x = a.x.as_ptr().add((ic + ir) * k + t.k0);
    for kk in 0..t.kc {
        let wk = t.wp.add(kk * g);
        let mut wv = [s.zero(); NV];
        for v in 0..NV {
            wv[v] = s.loadp(wk.add(v * l));
        }
        for m in 0..R {
            let xv = s.splat(*x.add(m * k + kk));
            for v in 0..NV {
                acc[m][v] = s.mul_add(xv, wv[v], acc[m][v]);
            }
        }
    }
    if t.last {
        store_tile::<S, R, NV, E>(s, a, &acc, ic + ir, t.c0, t.cols);
    } else {
        for m in 0..R {
            for v in 0..NV {
                s.storep(pt.add(m * g + v * l), acc[m][v]);
            }
        }
    }
}
