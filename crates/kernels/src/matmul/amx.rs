//! The AMX microkernel of the `Fast` path (`tdpbf16ps` on tile registers), for 16 rows of x and more.
//!
//! It runs on the AVX-512 packed layout as is: a group of G = 64 output rows stores, for each pair of k,
//! the 64 rows' `[w 2p, w 2p+1]` — 256 bytes. Sixteen consecutive rows of sixteen consecutive pairs are
//! exactly a B tile of `tdpbf16ps` (16 rows of 16 bf16 pairs, 64 bytes each) at a row stride of 256
//! bytes, so no second packed copy exists. x is rounded to bf16 into rows of a stride padded to 32 values
//! and a row count padded to 32 (zeros: they add nothing), so every A tile (16 rows × 32 values) loads
//! straight from it.
//!
//! Tiles (the plan of `x86::amx::tiles`): C0..C3 (tmm0-3) accumulate a 32 × 32 block of y in f32: rows i..i+32 (A0 = tmm4, A1 = tmm5) ×
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
use crate::quant::{QuantFormat, QuantWeight, Q4_SUBS, Q4_SUPER, Q4_SUPER_BYTES};
use crate::x86::amx::tiles::Tiles;
use crate::x86::avx512::Avx512;
use std::arch::x86_64::*;

/// The AVX-512 group: output rows per packed group.
pub(crate) const G: usize = 64;
/// Rows of x per block (two A tiles of 16).
const MB: usize = 32;
/// Values of k per tile step (16 bf16 pairs: 64 bytes per tile row).
const TK: usize = 32;
/// Bytes of bf16 x a row chunk may take (kept in L2 while the groups stream past it).
const CHUNK_BYTES: usize = 1 << 20;

/// Fewest rows of x for which the AMX kernel is used: all. At one row (decode) the streaming form reads
/// the weights at the machine's read bandwidth (2B random checkpoint on the Intel Xeon: 8.4-8.9 tok/s
/// against 8.1 for the AVX-512 kernel), and a decode batch of 8 rows costs little more than one.
pub const MIN_M: usize = 1;
/// Most rows of x for the streaming form (one A tile; decode batches): each group is read once, in one
/// pass.
const SMALL_M: usize = 16;

/// (rows, row stride) of x rounded to bf16 for this kernel: rows padded to 32 (16 for the streaming form
/// of at most 16 rows), stride to 32 values (one cache line) and an odd number of lines, so that the 16
/// rows of an A tile fall in 16 different sets of L1 (at k = 2048 the rows would be 4 KiB apart: all in
/// one set of a 12-way cache).
pub fn x_layout(m: usize, k: usize) -> (usize, usize) {
    let lines = k.div_ceil(TK);
    let rows = if m <= SMALL_M {
        SMALL_M
    } else {
        m.div_ceil(MB) * MB
    };
    (rows, (lines | 1) * TK)
}

/// f32 results of a block: row r, slot block b (s0, s1), 16 values.
#[repr(C, align(64))]
struct Out([[[f32; 16]; 2]; MB]);

/// The B tiles of the last partial k step, zero-padded: tile b, pair row, 16 pairs (two for a 32-row
/// block, all four slots of a group for the streaming form).
#[repr(C, align(64))]
struct Tail([[[u16; 32]; 16]; 4]);

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
    let gsize = a.k.div_ceil(2) * G * 2;
    let (rows, ld) = x_layout(a.m, a.k);
    let chunk = (CHUNK_BYTES / (ld * 2)).max(MB) / MB * MB;
    let mut st = State::new();
    if a.m <= SMALL_M {
        for j in g0..g1 {
            one_group_small::<E>(&mut st, a, w.as_ptr().add((j - a.g_base) * gsize), j);
        }
        return;
    }
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + chunk).min(rows);
        for j in g0..g1 {
            one_group::<E>(
                &mut st,
                a,
                w.as_ptr().add((j - a.g_base) * gsize),
                j,
                r0,
                r1,
            );
        }
        r0 = r1;
    }
}

/// What the AMX kernel keeps while it runs: the tile configuration and its small buffers.
pub(crate) struct State {
    tiles: Tiles,
    out: Out,
    bt: Tail,
}

impl State {
    /// Safety: as [`packed_bf16`] (loads the tile configuration).
    pub(crate) unsafe fn new() -> State {
        State {
            tiles: Tiles::begin(),
            out: Out([[[0.0; 16]; 2]; MB]),
            bt: Tail([[[0; 32]; 16]; 4]),
        }
    }
}

/// Group j of y (its G output columns, at packed group `wg`) for the rows r0..r1 of x (a multiple of
/// 32, within [`x_layout`]'s rows). Safety: as [`packed_bf16`]; `wg` holds one packed group.
#[inline(always)]
pub(crate) unsafe fn one_group<const E: bool>(
    st: &mut State,
    a: &Args,
    wg: *const u16,
    j: usize,
    r0: usize,
    r1: usize,
) {
    let kp = a.k.div_ceil(2);
    let (_, ld) = x_layout(a.m, a.k);
    // full steps of 16 pairs, and the pairs of the last partial step
    let (steps, tail) = (kp / 16, kp % 16);
    let s = Avx512::new_unchecked();
    let (c0, cols) = a.group_cols(j, G);
    for h in 0..2 {
        let slots = [16 * h, 32 + 16 * h];
        if tail > 0 {
            for (b, &sl) in slots.iter().enumerate() {
                for p in 0..16 {
                    let src = wg.add((steps * 16 + p) * G * 2 + sl * 2);
                    let dst = st.bt.0[b][p].as_mut_ptr();
                    if p < tail {
                        std::ptr::copy_nonoverlapping(src, dst, 32);
                    } else {
                        std::ptr::write_bytes(dst, 0, 32);
                    }
                }
            }
        }
        // A plain matmul writes whole 32 × 16 blocks straight from the tiles into y (the bias loaded into
        // the accumulators first); SwiGLU pairs, partial groups and the last rows of x go through `out`
        // and the vector epilogue.
        let full = !E && cols >= slots[1] + 16;
        let mut i = r0;
        while i < r1 {
            let direct = full && i + MB <= a.m;
            let (init, dst) = if direct {
                let y = a.y.0.add(i * a.n + c0);
                let init = a.bias.map(|b| {
                    let b = b.as_ptr().add(c0);
                    [
                        b.add(slots[0]),
                        b.add(slots[1]),
                        b.add(slots[0]),
                        b.add(slots[1]),
                    ]
                });
                let dst = [
                    y.add(slots[0]),
                    y.add(slots[1]),
                    y.add(16 * a.n + slots[0]),
                    y.add(16 * a.n + slots[1]),
                ];
                (init, (dst, a.n * 4))
            } else {
                let o = st.out.0.as_mut_ptr() as *mut f32;
                // C0: rows 0..16 × s0, C1: rows 0..16 × s1, C2: rows 16..32 × s0, C3: rows 16..32 × s1
                (
                    None,
                    ([o, o.add(16), o.add(16 * 32), o.add(16 * 32 + 16)], 128),
                )
            };
            block(
                &st.tiles,
                a,
                wg,
                ld,
                steps,
                tail > 0,
                &st.bt,
                i,
                slots,
                init,
                dst,
            );
            if direct {
                i += MB;
                continue;
            }
            let out = &st.out;
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

/// Group j of y (its G output columns, at packed group `wg`) for at most 16 rows of x (decode batches):
/// the group streamed once, 16 pairs of k × all 64 slots per step (C0..C3 = slots 0, 16, 32, 48; four
/// B tile loads in flight keep the memory busy: software prefetch measured no gain), then the vector
/// epilogue. Safety: as [`packed_bf16`]; `wg` holds one packed group; `a.m` ≤ 16.
#[inline(always)]
unsafe fn one_group_small<const E: bool>(st: &mut State, a: &Args, wg: *const u16, j: usize) {
    let kp = a.k.div_ceil(2);
    let (_, ld) = x_layout(a.m, a.k);
    let (steps, tail) = (kp / 16, kp % 16);
    let s = Avx512::new_unchecked();
    let (c0, cols) = a.group_cols(j, G);
    let ldb = G * 2 * 2;
    let x = a.xb.as_ptr();
    st.tiles.zero();
    for t in 0..steps {
        let b = wg.add(t * 16 * G * 2);
        st.tiles.step4(
            x.add(t * TK),
            ld * 2,
            [b, b.add(32), b.add(64), b.add(96)],
            ldb,
        );
    }
    if tail > 0 {
        for (b, tile) in st.bt.0.iter_mut().enumerate() {
            for (p, row) in tile.iter_mut().enumerate() {
                if p < tail {
                    let src = wg.add((steps * 16 + p) * G * 2 + b * 32);
                    std::ptr::copy_nonoverlapping(src, row.as_mut_ptr(), 32);
                } else {
                    row.fill(0);
                }
            }
        }
        let bt = &st.bt.0;
        st.tiles.step4(
            x.add(steps * TK),
            ld * 2,
            [0, 1, 2, 3].map(|b| bt[b].as_ptr() as *const u16),
            64,
        );
    }
    // C_b (slots 16b..16b+16) as row r's values 16b..16b+16 of `out` (16 rows of 64 f32)
    let o = st.out.0.as_mut_ptr() as *mut f32;
    st.tiles.store([0, 1, 2, 3].map(|b| o.add(16 * b)), G * 4);
    for r in 0..a.m {
        let v = [0, 1, 2, 3].map(|b| _mm512_load_ps(o.add(r * G + 16 * b)));
        if E {
            // gate (slot c) and up (slot 32 + c) of outputs c0 + c
            for h in 0..2 {
                let n = cols.saturating_sub(16 * h).min(16);
                if n > 0 {
                    kernel::store_tile::<Avx512, 1, 2, true>(
                        s,
                        a,
                        &[[v[h], v[h + 2]]],
                        r,
                        c0 + 16 * h,
                        n,
                    );
                }
            }
        } else {
            for (b, &vb) in v.iter().enumerate() {
                let n = cols.saturating_sub(16 * b).min(16);
                if n > 0 {
                    kernel::store_tile::<Avx512, 1, 1, false>(s, a, &[[vb]], r, c0 + 16 * b, n);
                }
            }
        }
    }
}

/// Column groups g0..g1 of y = x · Wᵀ (+ bias) for a quantized W: each group of G rows of W is
/// dequantized (the values `QuantWeight::row_f32` gives), rounded to bf16 into one packed group, then
/// multiplied with all rows of x on tiles. Safety: as [`packed_bf16`], plus AVX512_BF16; `a` describes
/// a plain (not SwiGLU) matmul with `w`'s n and k.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,avx512bf16")]
pub unsafe fn quant_bf16(a: &Args, w: &QuantWeight, g0: usize, g1: usize) {
    let kp = a.k.div_ceil(2);
    // the packed group, and the group's rows dequantized row-major (G, kp) pairs, gathered into it
    // (Vec, as every scratch of the engine: at most 2 × 64 × kp words, 1.5 MiB at the largest k)
    let mut wg = Scratch64::new(kp * G);
    let mut rowsb = Scratch64::new(G * kp);
    let (rows, _) = x_layout(a.m, a.k);
    let mut st = State::new();
    let wgp = wg.ptr();
    let rowsp = rowsb.ptr();
    // row offsets of 16 consecutive rows, in u32
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(kp as i32),
    );
    for j in g0..g1 {
        for r in 0..G {
            let o = j * G + r;
            let row = std::slice::from_raw_parts_mut(rowsp.add(r * kp), kp);
            if o < a.n {
                // Safety: a row of kp pairs = 2·kp ≥ k bf16 values.
                dequant_row_bf16(
                    w,
                    o,
                    std::slice::from_raw_parts_mut(row.as_mut_ptr() as *mut u16, 2 * kp),
                );
            } else {
                row.fill(0);
            }
        }
        // group j: pair p of row r at u32 p·G + r — 16 rows' pair p gathered into one store
        for q in 0..G / 16 {
            let base = rowsp.add(q * 16 * kp) as *const i32;
            for p in 0..kp {
                let v = _mm512_i32gather_epi32::<4>(idx, base.add(p));
                _mm512_store_si512(wgp.add(p * G + q * 16) as *mut __m512i, v);
            }
        }
        if a.m <= SMALL_M {
            one_group_small::<false>(&mut st, a, wgp as *const u16, j);
        } else {
            one_group::<false>(&mut st, a, wgp as *const u16, j, 0, rows);
        }
    }
}

/// Zeroed u32 scratch whose first word is 64-byte aligned (tile rows then sit on cache lines).
struct Scratch64 {
    v: Vec<u32>,
    at: usize,
}

impl Scratch64 {
    fn new(words: usize) -> Scratch64 {
        let v = vec![0u32; words + 16];
        let at = v.as_ptr().align_offset(64).min(16);
        Scratch64 { v, at }
    }
    fn ptr(&mut self) -> *mut u32 {
        // Safety: at ≤ 16 < the length.
        unsafe { self.v.as_mut_ptr().add(self.at) }
    }
}

/// Row `o` of a quantized W as bf16 (RNE of the values `QuantWeight::row_f32` gives) into `out`
/// (≥ k values; those past k set to 0). Safety: AVX-512 F/BW and AVX512_BF16; `o` < n.
#[inline(always)]
unsafe fn dequant_row_bf16(w: &QuantWeight, o: usize, out: &mut [u16]) {
    let (f, k) = (w.format(), w.k());
    let (rb, ns) = (f.row_bytes(k), f.row_scales(k));
    let q = w.qs_bytes().as_ptr().add(o * rb);
    let d = w.scales().as_ptr().add(o * ns);
    let padded = f.padded(k);
    debug_assert!(out.len() >= k);
    // 32 values of one block at a time: two vectors of 16 f32 -> 32 bf16 (`vcvtne2ps2bf16`)
    let mut blk = [0u16; 32];
    let mut put = |b: usize, lo: __m512, hi: __m512, out: &mut [u16]| {
        let v = _mm512_cvtne2ps_pbh(hi, lo);
        let v = std::mem::transmute::<__m512bh, __m512i>(v);
        let t = b * 32;
        if t + 32 <= out.len() {
            _mm512_storeu_si512(out.as_mut_ptr().add(t) as *mut __m512i, v);
        } else if t < out.len() {
            _mm512_storeu_si512(blk.as_mut_ptr() as *mut __m512i, v);
            let n = out.len() - t;
            out[t..].copy_from_slice(&blk[..n]);
        }
    };
    match f {
        QuantFormat::Q8 => {
            for b in 0..padded / 32 {
                let qb = q.add(b * 32);
                let lo =
                    _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(qb as *const __m128i)));
                let hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(
                    qb.add(16) as *const __m128i
                )));
                let s = _mm512_set1_ps(*d.add(b));
                put(b, _mm512_mul_ps(lo, s), _mm512_mul_ps(hi, s), out);
            }
        }
        QuantFormat::Q4 => {
            // per super-block: sc[8], mn[8], then 8 × 16 bytes of nibbles (L_t low, L_{t+16} high)
            for sb in 0..padded / Q4_SUPER {
                let qb = q.add(sb * Q4_SUPER_BYTES);
                let (dd, dm) = (*d.add(2 * sb), *d.add(2 * sb + 1));
                for jj in 0..Q4_SUBS {
                    let s = _mm512_set1_ps(dd * *qb.add(jj) as f32);
                    let m = _mm512_set1_ps(dm * *qb.add(Q4_SUBS + jj) as f32);
                    let nib = _mm512_cvtepu8_epi32(_mm_loadu_si128(
                        qb.add(2 * Q4_SUBS + jj * 16) as *const __m128i
                    ));
                    let l0 = _mm512_cvtepi32_ps(_mm512_and_si512(nib, _mm512_set1_epi32(15)));
                    let l1 = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(nib));
                    // (d·sc)·L − dmin·mn, the scalar dequantizer's arithmetic (a product, then a difference)
                    let lo = _mm512_sub_ps(_mm512_mul_ps(s, l0), m);
                    let hi = _mm512_sub_ps(_mm512_mul_ps(s, l1), m);
                    put(sb * Q4_SUBS + jj, lo, hi, out);
                }
            }
        }
    }
    let n = out.len();
    out[k.min(n)..].fill(0);
}

/// One 32 × (16 + 16) block: C = init + x[i..i+32] · W[slots]ᵀ over all k (init: rows of 16 values
/// for C0..C3, else 0), stored to `dst` (C0..C3) with rows `stride` bytes apart.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn block(
    tiles: &Tiles,
    a: &Args,
    wg: *const u16,
    ld: usize,
    steps: usize,
    tail: bool,
    bt: &Tail,
    i: usize,
    slots: [usize; 2],
    init: Option<[*const f32; 4]>,
    (dst, stride): ([*mut f32; 4], usize),
) {
    let lda = ld * 2;
    let ldb = G * 2 * 2;
    let x0 = a.xb.as_ptr().add(i * ld);
    let x1 = x0.add(16 * ld);
    match init {
        // every row of a C tile starts as the same 16 values (a stride of 0 repeats one row)
        Some(c) => tiles.load(c, 0),
        None => tiles.zero(),
    }
    for t in 0..steps {
        let b0 = wg.add(t * 16 * G * 2 + slots[0] * 2);
        let b1 = wg.add(t * 16 * G * 2 + slots[1] * 2);
        tiles.step(x0.add(t * TK), x1.add(t * TK), lda, b0, b1, ldb);
    }
    if tail {
        let b0 = bt.0[0].as_ptr() as *const u16;
        let b1 = bt.0[1].as_ptr() as *const u16;
        tiles.step(x0.add(steps * TK), x1.add(steps * TK), lda, b0, b1, 64);
    }
    tiles.store(dst, stride);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::{scalar, Weight};
    use crate::Kernels;

    /// The AVX-512 dequantizer against its scalar twin (`QuantWeight::row_f32`, then bf16 RNE): the same
    /// bits for both formats, on k that end mid-block and mid-super-block, the values past k zero (a q4
    /// pad dequantizes to −dmin·mn, not 0).
    #[test]
    fn dequant_row_bf16_matches_row_f32_rounded() {
        let Some(kern) = Kernels::all_available()
            .pop()
            .filter(|k| k.features().avx512_bf16)
        else {
            return;
        };
        let mut s = 7u64;
        for k in [1usize, 15, 17, 31, 33, 255, 257, 1023] {
            let n = 3;
            let w: Vec<f32> = (0..n * k)
                .map(|_| {
                    s = s
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.3
                })
                .collect();
            for format in QuantFormat::ALL {
                let q = kern.quantize_weight(format, Weight::F32(&w), n, k).unwrap();
                let mut row = vec![0f32; k];
                for o in 0..n {
                    q.row_f32(o, &mut row).unwrap();
                    let want: Vec<u16> = row.iter().map(|&v| scalar::f32_to_bf16(v)).collect();
                    let mut got = vec![0xffffu16; k.div_ceil(32) * 32];
                    // Safety: AVX-512 F/BW and AVX512_BF16 checked above; o < n.
                    unsafe { dequant_row_bf16(&q, o, &mut got) };
                    assert_eq!(&got[..k], &want[..], "{format:?} k {k} row {o}");
                    assert!(
                        got[k..].iter().all(|&b| b == 0),
                        "{format:?} k {k}: padding"
                    );
                }
            }
        }
    }
}
