//! The int8-activation GEMMs over column panels: the `Fast` quantized matmul of many rows (prefill,
//! vision) without AMX. x is quantized per row and block of 32 to int8 as the q8 weights are (d_x =
//! max|x| / 127, the level's `kernel::quantize_row_8`), W is repacked once per call into panels of `nr`
//! output columns, one column per i32 lane, and each step adds 4 products of 4 consecutive k per lane:
//!
//! - **q8 (W8A8)**, on VNNI only: x stored offset as unsigned bytes q_x + 128, `vpdpbusd` u8 × s8 into the
//!   i32 lane (exact; `pmaddubsw`'s i16 pairs would saturate at 2·255·127). Per block b of 32 the sum
//!   starts from the correction −128·Σ q_w stored in the panel (the offset costs nothing in the loop),
//!   |sum| ≤ 32·255·128 < 2^31, then `acc = fma(f32(sum), d_w·d_x, acc)`. 4× the f32 FMA's multiply rate
//!   on Zen 4, 2× on Intel; the W8A16 kernels (`kernel.rs`, one `pmaddwd` per 32 products plus a
//!   conversion and an FMA per block and pair) run below the FMA.
//! - **q4 (W4A8)**, at AVX-512 with or without VNNI and at AVX2 with AVX-VNNI: the unsigned 4-bit values
//!   L times signed x, by `vpdpbusd`, or by `pmaddubsw` into i16 pairs (≤ 2·15·127 each, a block's 8
//!   steps ≤ 30480 < 2^15: no saturation) summed by `pmaddwd` with ones once per block — the same exact
//!   i32. Not at plain AVX2 (Zen 3): two instructions per step there measured no faster than the q4
//!   kernel of `kernel.rs` (118 against 108 GOP/s at 512 rows, 99 against 109 at 64). Then
//!   `acc = fma(f32(sum), (d·sc_j)·d_x, acc)` and `acc = fma(−dmin·mn_j, d_x·Σq_x, acc)` per sub-block j.
//!   The lane-per-column form needs no horizontal sums and broadcasts x, where the q4 kernel of
//!   `kernel.rs` (one sub-block per 128-bit lane) reduces per output.
//!
//! Every output is one lane: the scalar twin ([`scalar_range`]) does the same operations in the same
//! order, so every level gives its bits exactly.
//! Error against the f32 product of x and the dequantized weights: ≤ Σ_b d_x/2 · Σ_block |w| (x rounded
//! to its grid; the int16 activations of q8's `Exact` kernels are 256× finer) plus the f32 accumulation.
//!
//! Panel layout (`nr` columns c0..c0+nr, columns past n zero): per block b of 32, 8 steps of [nr × 4
//! weight bytes] (step t holds bytes 4t..4t+4 of the block of each column: q8 values, or q4's L), then
//! nr × 4 bytes (q8: i32 corrections; q4: f32 d·sc_j), then nr f32 (q8: d_w; q4: −dmin·mn_j):
//! `nr · 40` bytes per block, `nb · nr · 40` per panel.
#![allow(clippy::missing_safety_doc)] // the contract is `scalar_range`'s

use super::{QuantFormat, QuantKernel, QuantWeight, Q4_SUBS, Q4_SUPER_BYTES};
use crate::simd::int::{SimdA8, BLOCK};
use crate::{KernelError, Kernels, SendPtr};

/// Steps of 4 bytes of k per block.
const STEPS: usize = BLOCK / 4;
/// Bytes per column and block in a panel: 32 weight bytes, the i32 correction, the f32 d_w.
const COL_BLOCK: usize = BLOCK + 8;
/// Fewest rows for which q4 runs the panel form: the repacking of W once per call (about 0.25 ns per
/// weight byte) costs what its faster steps gain at 32 rows (Intel Xeon, 6144 × 2048, one thread: 154
/// against 166 GOP/s at 32 rows, 146 against 221 at 64, 125 against 302 at 512; at 16 rows the integer
/// kernel's 152 against 105). q8's integer kernel (int16 activations) is slower: from 16 rows (82–84
/// against 86–94 GOP/s at 16, 69–74 against 143–152 at 32, at AVX-512; AVX2 with AVX-VNNI alike).
pub const A8_Q4_MIN_M: usize = 32;

/// Fewest rows of x for which `format` runs the panel form (where the CPU has it).
pub(crate) const fn min_rows(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q8 => crate::matmul::QUANT_DEQUANT_MIN_M,
        QuantFormat::Q4 => A8_Q4_MIN_M,
    }
}

/// Bytes of W's panels packed at a time (a chunk of columns; at least one panel).
const A8_PANEL_BYTES: usize = 8 << 20;

/// Rows of x per L2-resident chunk (MC · k bytes) while a thread's panels stream past it.
const MC: usize = 64;

/// The operands of one int8-activation matmul as the range functions see them (shared by the tasks of
/// one call, which write disjoint columns of `y`).
pub(crate) struct A8Args {
    /// q4 weights (else q8)
    pub q4: bool,
    /// (m, nb·32): q8 q_x + 128; q4 q_x (i8)
    pub xq: *const u8,
    /// (m, nb)
    pub xd: *const f32,
    /// q4: (m, nb) d_x·Σq_x per block; q8: null
    pub xs: *const f32,
    pub m: usize,
    pub n: usize,
    pub nb: usize,
    /// panels p_first.. (of the ⌈n / nr⌉), nb · nr · 40 bytes each (4-byte aligned)
    pub panels: *const u8,
    /// the first panel at `panels`
    pub p_first: usize,
    /// columns per panel
    pub nr: usize,
    /// (n) or null
    pub bias: *const f32,
    /// (m, n), row stride n
    pub y: *mut f32,
}
// Safety: shared reads, and writes to disjoint columns of `y`.
unsafe impl Sync for A8Args {}
unsafe impl Send for A8Args {}

/// Range function of one level: panels p0..p1 for every row of x.
pub(crate) type A8RangeFn = unsafe fn(&A8Args, usize, usize);

/// The int8-activation form of a level for one format: its range function and panel width.
pub(crate) struct A8Table {
    pub range: A8RangeFn,
    pub nr: usize,
}

/// The scalar twin (both formats): panels of 8 columns.
pub(crate) static SCALAR_A8: A8Table = A8Table {
    range: scalar_range,
    nr: 8,
};

/// Writes panel `p` of W into `out` (nb · nr · 10 words; the layout of the module docs). Word moves on
/// raw pointers: this runs once per call over all of W (at 18 ns per column and block with slices it
/// cost as much as the GEMM's 64 rows).
fn pack_panel(w: &QuantWeight, nr: usize, p: usize, out: &mut [u32]) {
    let (n, nb) = (w.n, w.blocks());
    let (qs, d) = (w.qs_bytes(), w.scales());
    let (rb, rs) = (w.format.row_bytes(w.k), w.format.row_scales(w.k));
    let words = COL_BLOCK / 4;
    assert!(out.len() == nb * nr * words && qs.len() >= n * rb && d.len() >= n * rs);
    let cols = nr.min(n.saturating_sub(p * nr));
    let o = out.as_mut_ptr();
    for b in 0..nb {
        // Safety: blk..blk + nr·10 words is block b of `out` (asserted length); every read below is
        // inside row c < n of qs (rb bytes) and d (rs scales), also asserted.
        unsafe {
            let blk = o.add(b * nr * words);
            for j in 0..nr {
                let (w1, w2) = if j >= cols {
                    for t in 0..STEPS {
                        *blk.add(t * nr + j) = 0;
                    }
                    (0u32, 0f32)
                } else if w.format == QuantFormat::Q8 {
                    let c = p * nr + j;
                    let src = qs.as_ptr().add(c * rb + b * BLOCK);
                    let mut sum = 0i32;
                    for t in 0..STEPS {
                        *blk.add(t * nr + j) = (src.add(4 * t) as *const u32).read_unaligned();
                    }
                    for e in 0..BLOCK {
                        sum += *src.add(e) as i8 as i32;
                    }
                    ((-128 * sum) as u32, *d.get_unchecked(c * rs + b))
                } else {
                    // q4: sub-block `sub` of super-block `sb`; its 16 nibble bytes hold L_t (low) and
                    // L_{t+16} (high): steps 0..4 are the low nibbles, 4..8 the high
                    let c = p * nr + j;
                    let (sb, sub) = (b / Q4_SUBS, b % Q4_SUBS);
                    let qb = qs.as_ptr().add(c * rb + sb * Q4_SUPER_BYTES);
                    let nib = qb.add(2 * Q4_SUBS + sub * BLOCK / 2);
                    for t in 0..STEPS / 2 {
                        let v = (nib.add(4 * t) as *const u32).read_unaligned();
                        *blk.add(t * nr + j) = v & 0x0f0f_0f0f;
                        *blk.add((t + STEPS / 2) * nr + j) = (v >> 4) & 0x0f0f_0f0f;
                    }
                    let (dd, dmin) = (
                        *d.get_unchecked(c * rs + 2 * sb),
                        *d.get_unchecked(c * rs + 2 * sb + 1),
                    );
                    (
                        (dd * *qb.add(sub) as f32).to_bits(),
                        -(dmin * *qb.add(Q4_SUBS + sub) as f32),
                    )
                };
                *blk.add(STEPS * nr + j) = w1;
                *blk.add((STEPS + 1) * nr + j) = w2.to_bits();
            }
        }
    }
}

/// Panels p0..p1 for every row of x: the scalar twin of every level's range function (same operations
/// in the same order per output). Safety: `a` describes valid buffers (see [`A8Args`]), the buffer
/// holds panels p0..p1 (a.p_first ≤ p0, p1 ≤ ⌈n/nr⌉).
pub(crate) unsafe fn scalar_range(a: &A8Args, p0: usize, p1: usize) {
    let (nb, nr) = (a.nb, a.nr);
    let kp = nb * BLOCK;
    for p in p0..p1 {
        let panel = a.panels.add((p - a.p_first) * nb * nr * COL_BLOCK);
        for j in 0..nr.min(a.n - p * nr) {
            let c = p * nr + j;
            for i in 0..a.m {
                let mut acc = 0f32;
                for b in 0..nb {
                    let blk = panel.add(b * nr * COL_BLOCK);
                    let w1 = blk.add(nr * BLOCK + 4 * j);
                    let w2 = (blk.add(nr * (BLOCK + 4) + 4 * j) as *const f32).read_unaligned();
                    let mut sum = if a.q4 {
                        0
                    } else {
                        (w1 as *const i32).read_unaligned()
                    };
                    for t in 0..STEPS {
                        let w = blk.add((t * nr + j) * 4);
                        let x = a.xq.add(i * kp + b * BLOCK + 4 * t);
                        for e in 0..4 {
                            sum += if a.q4 {
                                *w.add(e) as i32 * *x.add(e) as i8 as i32
                            } else {
                                *x.add(e) as i32 * *w.add(e) as i8 as i32
                            };
                        }
                    }
                    let dx = *a.xd.add(i * nb + b);
                    if a.q4 {
                        let dsc = (w1 as *const f32).read_unaligned();
                        acc = (sum as f32).mul_add(dsc * dx, acc);
                        acc = w2.mul_add(*a.xs.add(i * nb + b), acc);
                    } else {
                        acc = (sum as f32).mul_add(w2 * dx, acc);
                    }
                }
                if !a.bias.is_null() {
                    acc += *a.bias.add(c);
                }
                *a.y.add(i * a.n + c) = acc;
            }
        }
    }
}

/// RM rows of x from row i against panel p (RNV vectors of `S::LANES` columns: nr = RNV · LANES), q4
/// weights when `Q4` (else q8, VNNI only), `VNNI`: see [`SimdA8::dp4_w4`].
#[inline(always)]
unsafe fn tile<S: SimdA8, const Q4: bool, const VNNI: bool, const RM: usize, const RNV: usize>(
    s: S,
    a: &A8Args,
    i: usize,
    p: usize,
) {
    let (nb, nr) = (a.nb, RNV * S::LANES);
    let kp = nb * BLOCK;
    let panel = a.panels.add((p - a.p_first) * nb * nr * COL_BLOCK);
    let mut acc = [[s.zero(); RNV]; RM];
    for b in 0..nb {
        let blk = panel.add(b * nr * COL_BLOCK);
        let w1 = blk.add(nr * BLOCK);
        let w2 = blk.add(nr * (BLOCK + 4));
        let init: [S::Acc; RNV] = if Q4 {
            [s.acc_zero(); RNV]
        } else {
            std::array::from_fn(|v| unsafe { s.ld_acc(w1.add(v * S::LANES * 4) as *const i32) })
        };
        let mut isum = [init; RM];
        for t in 0..STEPS {
            let w: [S::Acc; RNV] = std::array::from_fn(|v| unsafe {
                s.ld_acc(blk.add((t * nr + v * S::LANES) * 4) as *const i32)
            });
            for (ii, isum) in isum.iter_mut().enumerate() {
                let x = a.xq.add((i + ii) * kp + b * BLOCK + 4 * t);
                for v in 0..RNV {
                    isum[v] = if Q4 {
                        s.dp4_w4::<VNNI>(isum[v], w[v], x as *const i8)
                    } else {
                        s.dp4(isum[v], w[v], x)
                    };
                }
            }
        }
        let f1: [S::V; RNV] =
            std::array::from_fn(|v| unsafe { s.ld(w1.add(v * S::LANES * 4) as *const f32) });
        let f2: [S::V; RNV] =
            std::array::from_fn(|v| unsafe { s.ld(w2.add(v * S::LANES * 4) as *const f32) });
        for ii in 0..RM {
            let dx = s.splat(*a.xd.add((i + ii) * nb + b));
            for v in 0..RNV {
                if Q4 {
                    let sum = s.cvt_acc(s.w4_sum::<VNNI>(isum[ii][v]));
                    let sx = s.splat(*a.xs.add((i + ii) * nb + b));
                    acc[ii][v] = s.mul_add(sum, s.mul(f1[v], dx), acc[ii][v]);
                    acc[ii][v] = s.mul_add(f2[v], sx, acc[ii][v]);
                } else {
                    acc[ii][v] = s.mul_add(s.cvt_acc(isum[ii][v]), s.mul(f2[v], dx), acc[ii][v]);
                }
            }
        }
    }
    let c = p * nr;
    let cols = (a.n - c).min(nr);
    for (ii, acc) in acc.iter().enumerate() {
        let y = a.y.add((i + ii) * a.n + c);
        for (v, &r) in acc.iter().enumerate() {
            let c0 = v * S::LANES;
            if c0 >= cols {
                break;
            }
            let len = (cols - c0).min(S::LANES);
            let r = if a.bias.is_null() {
                r
            } else {
                s.add(r, s.ld_part(a.bias.add(c + c0), len, 0.0))
            };
            if len == S::LANES {
                s.st(y.add(c0), r)
            } else {
                s.st_part(y.add(c0), len, r)
            }
        }
    }
}

/// Panels p0..p1 for every row of x, RM (≤ 6) rows at a time; the contract of [`scalar_range`], with
/// `a.nr` = RNV · `S::LANES` and `a.q4` = `Q4`.
#[inline(always)]
pub(crate) unsafe fn range<
    S: SimdA8,
    const Q4: bool,
    const VNNI: bool,
    const RM: usize,
    const RNV: usize,
>(
    s: S,
    a: &A8Args,
    p0: usize,
    p1: usize,
) {
    debug_assert!(a.nr == RNV * S::LANES && a.q4 == Q4);
    for i0 in (0..a.m).step_by(MC) {
        let i1 = (i0 + MC).min(a.m);
        for p in p0..p1 {
            let mut i = i0;
            while i < i1 {
                let rm = (i1 - i).min(RM);
                match rm {
                    1 => tile::<S, Q4, VNNI, 1, RNV>(s, a, i, p),
                    2 => tile::<S, Q4, VNNI, 2, RNV>(s, a, i, p),
                    3 => tile::<S, Q4, VNNI, 3, RNV>(s, a, i, p),
                    4 => tile::<S, Q4, VNNI, 4, RNV>(s, a, i, p),
                    5 => tile::<S, Q4, VNNI, 5, RNV>(s, a, i, p),
                    _ => tile::<S, Q4, VNNI, 6, RNV>(s, a, i, p),
                }
                i += rm;
            }
        }
    }
}

/// The table of `kernel`'s int8-activation form for `format`, if it has one.
fn a8_table(kernel: QuantKernel, format: QuantFormat) -> Option<&'static A8Table> {
    let t = super::table(kernel);
    match format {
        QuantFormat::Q8 => t.q8a8,
        QuantFormat::Q4 => t.q4a8,
    }
}

impl Kernels {
    /// Whether the `Fast` quantized matmul of `m` rows on a W of `format` runs this module's kernels:
    /// without AMX (whose bf16 tiles run the dequantized weights faster), where the level's best
    /// quantized kernel has the form — q8 with VNNI (AVX512_VNNI, or AVX-VNNI at the AVX2 level) from
    /// [`crate::matmul::QUANT_DEQUANT_MIN_M`] rows, q4 at AVX-512 (with or without VNNI) and AVX2 with
    /// AVX-VNNI from [`A8_Q4_MIN_M`] rows.
    pub fn quant_fast_a8(&self, format: QuantFormat, m: usize) -> bool {
        let kernel = self.quant_kernel();
        m >= min_rows(format)
            && !self.amx()
            && kernel != QuantKernel::Scalar
            && a8_table(kernel, format).is_some()
    }

    /// x (m, k) quantized per row and block of 32 to int8, stored as q + 128 (the W8A8 activations: the
    /// level's [`super::scalar::quantize_row_8`] with flip 0x80): (values (m, nb·32), scales (m, nb)).
    /// Threaded over rows.
    pub fn quantize_rows_a8u(&self, x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let (mut q, mut d) = (Vec::new(), Vec::new());
        self.quantize_rows_8(
            self.quant_kernel(),
            x,
            (m, k, k.div_ceil(BLOCK)),
            0x80,
            (&mut q, &mut d),
        );
        (q, d)
    }

    /// x (m, k) per row and block of 32 by `kernel`'s q8 row quantizer, bytes XORed with `flip`, into
    /// rows of `nb` ≥ ⌈k/32⌉ blocks (W's padded k: a q4 row is whole super-blocks of 256): the blocks
    /// past k hold the value 0 (the byte `flip`) with scale 0.
    fn quantize_rows_8(
        &self,
        kernel: QuantKernel,
        x: &[f32],
        (m, k, nb): (usize, usize, usize),
        flip: u8,
        out: (&mut Vec<u8>, &mut Vec<f32>),
    ) {
        let nbk = k.div_ceil(BLOCK);
        debug_assert!(nb >= nbk);
        let f = super::table(kernel).q8_row;
        let row = move |x: &[f32], q: &mut [u8], d: &mut [f32]| {
            // Safety: the table of a kernel of this level on this CPU; whole rows of ⌈k/32⌉ blocks.
            unsafe { f(x, &mut q[..nbk * BLOCK], &mut d[..nbk], flip) };
            q[nbk * BLOCK..].fill(flip);
            d[nbk..].fill(0.0);
        };
        self.quantize_rows(x, (m, k), (nb * BLOCK, nb), &row, out);
    }

    /// y (m, n) = x (m, k) · Wᵀ (+ bias) with x quantized to int8 per block of 32 (this module's
    /// kernels: W8A8 for q8, W4A8 for q4) on `kernel`, one of [`Kernels::quant_kernels`] that has the
    /// form for W's format (the scalar twin has both); else an error. Threaded over panels of output
    /// columns.
    pub fn matmul_quant_a8_with(
        &self,
        kernel: QuantKernel,
        x: &[f32],
        m: usize,
        w: &QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "matmul_quant_a8";
        self.check_quant_kernel(OP, kernel)?;
        let Some(t) = a8_table(kernel, w.format) else {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "kernel {kernel} has no int8-activation form for {}",
                    w.format
                ),
            });
        };
        super::check_quant_args(x, m, w, bias, y)?;
        let (n, k, nb) = (w.n, w.k, w.blocks());
        if m == 0 || n == 0 {
            return Ok(());
        }
        let q4 = w.format == QuantFormat::Q4;
        let nr = t.nr;
        let panels = n.div_ceil(nr);
        let panel_bytes = nb * nr * COL_BLOCK;
        super::with_act(|act| {
            let (xq, xd, xs) = (&mut act.a8_q, &mut act.a8_d, &mut act.a8_s);
            let flip = if q4 { 0 } else { 0x80 };
            self.quantize_rows_8(kernel, x, (m, k, nb), flip, (&mut *xq, &mut *xd));
            xs.clear();
            if q4 {
                // d_x·Σq_x per block, for the minimums
                super::scaled_block_sums(xq, xd, 1, |v| v as i8 as i32, xs);
            }
            // W's panels, packed a chunk of columns at a time (at most A8_PANEL_BYTES, reused per
            // thread: an lm head of 151936 columns would take 389 MB at once), u32 words so that their
            // i32 and f32 are aligned
            let chunk = (A8_PANEL_BYTES / panel_bytes).max(1);
            let buf = &mut act.a8_w;
            buf.clear();
            buf.resize(chunk.min(panels) * panel_bytes / 4, 0);
            let pw = panel_bytes / 4;
            for p_first in (0..panels).step_by(chunk) {
                let p_end = (p_first + chunk).min(panels);
                let bp = SendPtr(buf.as_mut_ptr());
                self.parallel_for(p_end - p_first, &|t| {
                    // Safety: task t writes panel p_first + t only, slot t of the buffer.
                    let out = unsafe { std::slice::from_raw_parts_mut(bp.get().add(t * pw), pw) };
                    pack_panel(w, nr, p_first + t, out);
                });
                let a = A8Args {
                    q4,
                    xq: xq.as_ptr(),
                    xd: xd.as_ptr(),
                    xs: if q4 { xs.as_ptr() } else { std::ptr::null() },
                    m,
                    n,
                    nb,
                    panels: buf.as_ptr() as *const u8,
                    p_first,
                    nr,
                    bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                    y: y.as_mut_ptr(),
                };
                let f = t.range;
                let cols = ((p_end - p_first) * nr).min(n - p_first * nr);
                // Safety: the level's table is only reached on a CPU that has it (checked above);
                // all sizes were checked; the buffer holds panels p_first..p_end; tasks write
                // disjoint panels of columns.
                self.for_units(p_end - p_first, 1, m * cols * k.max(1), &|p0, p1| unsafe {
                    f(&a, p_first + p0, p_first + p1)
                });
            }
        });
        Ok(())
    }
}
