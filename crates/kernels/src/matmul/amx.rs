//! The AMX microkernel of the `Fast` path (`tdpbf16ps` on tile registers), for 16 rows of x and more.
//!
//! It runs on the AVX-512 packed layout as is: a group of G = 64 output rows stores, for each pair of k,
//! the 64 rows' `[w 2p, w 2p+1]` — 256 bytes. Sixteen consecutive rows of sixteen consecutive pairs are
//! exactly a B tile of `tdpbf16ps` (16 rows of 16 bf16 pairs, 64 bytes each) at a row stride of 256
//! bytes, so no second packed copy exists. x is rounded to bf16 into rows of a stride padded to 32 values
//! and a row count padded to 32 (zeros: they add nothing), so every A tile (16 rows × 32 values) loads
//! straight from it.
//!
//! Tiles: C0..C3 (tmm0-3) accumulate a 32 × 32 block of y in f32: rows i..i+32 (A0 = tmm4, A1 = tmm5) ×
//! group slots s0 = 16h..16h+16 (B0 = tmm6) and s1 = 32+16h..48+16h (B1 = tmm7), h = 0, 1. With the SwiGLU
//! pairing (gate in slots 0..32, up in 32..64) s0 and s1 are the matching gate and up columns, so one
//! block holds both operands of silu(gate)·up. Per 32 values of k: 4 tile loads, 4 `tdpbf16ps`.
//! The last partial step of k reads its B tiles from a zero-padded copy (the packed group ends there).
//!
//! Loops: the rows in chunks that stay in L2 (≈ 1 MiB of bf16 x), then the thread's groups, the two
//! halves, the 32-row blocks of the chunk: each half-group (32 columns × k) is read from memory once per
//! chunk and then from cache for every block. The epilogue stores the C tiles to a small buffer and
//! hands each row to the AVX-512 kernel's own `store_tile` (bias, partial groups, SwiGLU arithmetic).
//!
//! Arithmetic (as `vdpbf16ps`): products of bf16 values summed in f32 with round-to-nearest-even,
//! denormal inputs and outputs flushed to zero.

use super::kernel;
use super::Args;
use crate::x86::avx512::Avx512;
use std::arch::asm;
use std::arch::x86_64::*;

/// The AVX-512 group: output rows per packed group.
const G: usize = 64;
/// Rows of x per block (two A tiles of 16).
const MB: usize = 32;
/// Values of k per tile step (16 bf16 pairs: 64 bytes per tile row).
const TK: usize = 32;
/// Bytes of bf16 x a row chunk may take (kept in L2 while the groups stream past it).
const CHUNK_BYTES: usize = 1 << 20;

/// Fewest rows of x for which the AMX kernel is used (below, a tile would be mostly padding).
pub const MIN_M: usize = 16;

/// (rows, row stride) of x rounded to bf16 for this kernel: rows padded to 32, stride to 32 values (one
/// cache line) and an odd number of lines, so that the 16 rows of an A tile fall in 16 different sets of
/// L1 (at k = 2048 the rows would be 4 KiB apart: all in one set of a 12-way cache).
pub fn x_layout(m: usize, k: usize) -> (usize, usize) {
    let lines = k.div_ceil(TK);
    (m.div_ceil(MB) * MB, (lines | 1) * TK)
}

/// The tile configuration (palette 1): all eight tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn all_16x64() -> TileConfig {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            // colsb (u16 at 16 + 2t) and rows (u8 at 48 + t)
            c[16 + 2 * t] = 64;
            c[48 + t] = 16;
        }
        TileConfig(c)
    }
}

/// f32 results of a block: row r, slot block b (s0, s1), 16 values.
#[repr(C, align(64))]
struct Out([[[f32; 16]; 2]; MB]);

/// The B tiles of the last partial k step, zero-padded: tile b, pair row, 16 pairs.
#[repr(C, align(64))]
struct Tail([[[u16; 32]; 16]; 2]);

/// Column groups g0..g1 of y for all rows of x. Safety: the CPU has AVX-512 F/BW/VL and AMX-TILE/BF16,
/// and this process has the tile permission (`Features::amx_bf16`); `a.xb` holds x rounded to bf16 in the
/// layout of [`x_layout`] (padding zero); `w` is packed for G = 64.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
pub unsafe fn packed_bf16(a: &Args, w: &[u16], g0: usize, g1: usize) {
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
    let (rows, ld) = x_layout(a.m, a.k);
    // full steps of 16 pairs, and the pairs of the last partial step
    let (steps, tail) = (kp / 16, kp % 16);
    let chunk = (CHUNK_BYTES / (ld * 2)).max(MB) / MB * MB;
    let cfg = TileConfig::all_16x64();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let mut out = Out([[[0.0; 16]; 2]; MB]);
    let mut bt = Tail([[[0; 32]; 16]; 2]);
    let s = Avx512::new_unchecked();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + chunk).min(rows);
        for j in g0..g1 {
            let wg = w.as_ptr().add(j * gsize);
            let (c0, cols) = a.group_cols(j, G);
            for h in 0..2 {
                let slots = [16 * h, 32 + 16 * h];
                if tail > 0 {
                    for (b, &sl) in slots.iter().enumerate() {
                        for p in 0..16 {
                            let src = wg.add((steps * 16 + p) * G * 2 + sl * 2);
                            let dst = bt.0[b][p].as_mut_ptr();
                            if p < tail {
                                std::ptr::copy_nonoverlapping(src, dst, 32);
                            } else {
                                std::ptr::write_bytes(dst, 0, 32);
                            }
                        }
                    }
                }
                let mut i = r0;
                while i < r1 {
                    block(a, wg, ld, steps, tail > 0, &bt, i, slots, &mut out);
                    // epilogue: the rows of x that exist
                    for r in 0..MB.min(a.m.saturating_sub(i)) {
                        let v0 = _mm512_load_ps(out.0[r][0].as_ptr());
                        let v1 = _mm512_load_ps(out.0[r][1].as_ptr());
                        if E {
                            // gate (slot s0 = c) and up (s1 = 32 + c) of outputs c0 + 16h + c
                            let n = cols.saturating_sub(16 * h).min(16);
                            if n > 0 {
                                kernel::store_tile::<Avx512, 1, 2, true>(
                                    s,
                                    a,
                                    &[[v0, v1]],
                                    i + r,
                                    c0 + 16 * h,
                                    n,
                                );
                            }
                        } else {
                            for (v, sl) in [(v0, slots[0]), (v1, slots[1])] {
                                let n = cols.saturating_sub(sl).min(16);
                                if n > 0 {
                                    kernel::store_tile::<Avx512, 1, 1, false>(
                                        s,
                                        a,
                                        &[[v]],
                                        i + r,
                                        c0 + sl,
                                        n,
                                    );
                                }
                            }
                        }
                    }
                    i += MB;
                }
            }
        }
        r0 = r1;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// One 32 × (16 + 16) block: C = x[i..i+32] · W[slots]ᵀ over all k, stored to `out`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    a: &Args,
    wg: *const u16,
    ld: usize,
    steps: usize,
    tail: bool,
    bt: &Tail,
    i: usize,
    slots: [usize; 2],
    out: &mut Out,
) {
    let lda = ld * 2;
    let ldb = G * 2 * 2;
    let x0 = a.xb.as_ptr().add(i * ld);
    let x1 = x0.add(16 * ld);
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for t in 0..steps {
        let b0 = wg.add(t * 16 * G * 2 + slots[0] * 2);
        let b1 = wg.add(t * 16 * G * 2 + slots[1] * 2);
        step(x0.add(t * TK), x1.add(t * TK), lda, b0, b1, ldb);
    }
    if tail {
        let b0 = bt.0[0].as_ptr() as *const u16;
        let b1 = bt.0[1].as_ptr() as *const u16;
        step(x0.add(steps * TK), x1.add(steps * TK), lda, b0, b1, 64);
    }
    let o = out.0.as_mut_ptr() as *mut f32;
    // C0: rows 0..16 × s0, C1: rows 0..16 × s1, C2: rows 16..32 × s0, C3: rows 16..32 × s1
    asm!(
        "tilestored [{o} + {st}*1], tmm0",
        "tilestored [{o1} + {st}*1], tmm1",
        "tilestored [{o2} + {st}*1], tmm2",
        "tilestored [{o3} + {st}*1], tmm3",
        o = in(reg) o,
        o1 = in(reg) o.add(16),
        o2 = in(reg) o.add(16 * 32),
        o3 = in(reg) o.add(16 * 32 + 16),
        st = in(reg) 128usize,
        options(nostack)
    );
}

/// C0 += A0·B0, C1 += A0·B1, C2 += A1·B0, C3 += A1·B1 for one step of 32 values of k.
#[inline(always)]
unsafe fn step(
    x0: *const u16,
    x1: *const u16,
    lda: usize,
    b0: *const u16,
    b1: *const u16,
    ldb: usize,
) {
    asm!(
        "tileloadd tmm4, [{x0} + {lda}*1]",
        "tileloadd tmm6, [{b0} + {ldb}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{b1} + {ldb}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{x1} + {lda}*1]",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        x0 = in(reg) x0,
        x1 = in(reg) x1,
        b0 = in(reg) b0,
        b1 = in(reg) b1,
        lda = in(reg) lda,
        ldb = in(reg) ldb,
        options(nostack, readonly)
    );
}
