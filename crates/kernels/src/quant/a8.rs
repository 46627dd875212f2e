//! The W8A8 GEMM of q8 weights: the `Fast` quantized matmul of many rows (prefill, vision) on CPUs with
//! VNNI and without AMX. x is quantized per row and block of 32 to int8 (d_x = max|x| / 127, stored
//! offset as unsigned bytes q_x + 128), W is repacked once per call into panels of `nr` output columns,
//! one column per i32 lane, and `vpdpbusd` adds 4 products u8 × s8 per lane and instruction: 4× the
//! multiply rate of the f32 FMA on Zen 4 (2× on Intel), where the W8A16 kernels (`kernel.rs`, one
//! `pmaddwd` per 32 products plus a conversion and an FMA per block and pair) run below the FMA.
//!
//! Per block b of 32 and output (i, c): the i32 sum Σ (q_x + 128)·q_w starts from the correction
//! −128·Σ q_w (stored in the panel, so the offset costs nothing in the loop) and is exact (|sum| ≤
//! 32·255·127 < 2^31); then `acc = fma(f32(sum), d_w·d_x, acc)` over the blocks in order and `+ bias`:
//! every output is one lane, no horizontal sums, and the scalar twin ([`scalar_range`]) does the same
//! operations in the same order, so every level gives its bits exactly.
//! Error against the f32 product of x and the dequantized weights: ≤ Σ_b d_x/2 · Σ_block |q_w·d_w| (x
//! rounded to its grid; the text path's int16 activations are 256× finer, why it keeps them for `Exact`)
//! plus the f32 accumulation.
//!
//! Panel layout (`nr` columns c0..c0+nr, columns past n zero): per block b, 8 steps of [nr × 4 weight
//! bytes] (step t holds bytes 4t..4t+4 of the block of each column), then nr i32 corrections, then nr
//! f32 d_w: `nr · 40` bytes per block, `nb · nr · 40` per panel.
#![allow(clippy::missing_safety_doc)] // the contract is `scalar_range`'s

use super::{QuantFormat, QuantKernel, QuantWeight};
use crate::simd::int::{SimdA8, BLOCK};
use crate::{KernelError, Kernels, SendPtr};

/// Steps of 4 bytes of k per block.
const STEPS: usize = BLOCK / 4;
/// Bytes per column and block in a panel: 32 weight bytes, the i32 correction, the f32 d_w.
const COL_BLOCK: usize = BLOCK + 8;
/// Rows of x per L2-resident chunk (MC · k bytes) while a thread's panels stream past it.
const MC: usize = 64;

/// The operands of one W8A8 matmul as the range functions see them (shared by the tasks of one call,
/// which write disjoint columns of `y`).
pub(crate) struct A8Args {
    /// (m, nb·32) q_x + 128
    pub xq: *const u8,
    /// (m, nb)
    pub xd: *const f32,
    pub m: usize,
    pub n: usize,
    pub nb: usize,
    /// ⌈n / nr⌉ panels of nb · nr · 40 bytes (4-byte aligned)
    pub panels: *const u8,
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

/// The W8A8 form of a level: its range function and panel width.
pub(crate) struct A8Table {
    pub range: A8RangeFn,
    pub nr: usize,
}

/// The scalar twin: panels of 8 columns.
pub(crate) static SCALAR_A8: A8Table = A8Table {
    range: scalar_range,
    nr: 8,
};

/// Writes panel `p` of W (q8) into `out` (nb · nr · 40 bytes).
fn pack_panel(w: &QuantWeight, nr: usize, p: usize, out: &mut [u8]) {
    let (n, nb) = (w.n, w.blocks());
    let kp = nb * BLOCK;
    let (qs, d) = (w.qs_bytes(), w.scales());
    for b in 0..nb {
        let blk = &mut out[b * nr * COL_BLOCK..(b + 1) * nr * COL_BLOCK];
        let (wq, rest) = blk.split_at_mut(nr * BLOCK);
        let (corr, dw) = rest.split_at_mut(nr * 4);
        for j in 0..nr {
            let c = p * nr + j;
            let (src, scale) = if c < n {
                let o = c * kp + b * BLOCK;
                (&qs[o..o + BLOCK], d[c * nb + b])
            } else {
                (&[0u8; BLOCK][..], 0.0)
            };
            for t in 0..STEPS {
                wq[(t * nr + j) * 4..(t * nr + j + 1) * 4].copy_from_slice(&src[4 * t..4 * t + 4]);
            }
            let sum: i32 = src.iter().map(|&v| v as i8 as i32).sum();
            corr[j * 4..j * 4 + 4].copy_from_slice(&(-128 * sum).to_ne_bytes());
            dw[j * 4..j * 4 + 4].copy_from_slice(&scale.to_ne_bytes());
        }
    }
}

/// Panels p0..p1 for every row of x: the scalar twin of every level's range function (same operations
/// in the same order per output). Safety: `a` describes valid buffers (see [`A8Args`]), p1 ≤ ⌈n/nr⌉.
pub(crate) unsafe fn scalar_range(a: &A8Args, p0: usize, p1: usize) {
    let (nb, nr) = (a.nb, a.nr);
    let kp = nb * BLOCK;
    for p in p0..p1 {
        let panel = a.panels.add(p * nb * nr * COL_BLOCK);
        for j in 0..nr.min(a.n - p * nr) {
            let c = p * nr + j;
            for i in 0..a.m {
                let mut acc = 0f32;
                for b in 0..nb {
                    let blk = panel.add(b * nr * COL_BLOCK);
                    let mut sum = (blk.add(nr * BLOCK + 4 * j) as *const i32).read_unaligned();
                    for t in 0..STEPS {
                        let w = blk.add((t * nr + j) * 4) as *const i8;
                        let x = a.xq.add(i * kp + b * BLOCK + 4 * t);
                        for e in 0..4 {
                            sum += *x.add(e) as i32 * *w.add(e) as i32;
                        }
                    }
                    let dw = (blk.add(nr * (BLOCK + 4) + 4 * j) as *const f32).read_unaligned();
                    acc = (sum as f32).mul_add(dw * *a.xd.add(i * nb + b), acc);
                }
                if !a.bias.is_null() {
                    acc += *a.bias.add(c);
                }
                *a.y.add(i * a.n + c) = acc;
            }
        }
    }
}

/// RM rows of x from row i against panel p (RNV vectors of `S::LANES` columns: nr = RNV · LANES).
#[inline(always)]
unsafe fn tile<S: SimdA8, const RM: usize, const RNV: usize>(s: S, a: &A8Args, i: usize, p: usize) {
    let (nb, nr) = (a.nb, RNV * S::LANES);
    let kp = nb * BLOCK;
    let panel = a.panels.add(p * nb * nr * COL_BLOCK);
    let mut acc = [[s.zero(); RNV]; RM];
    for b in 0..nb {
        let blk = panel.add(b * nr * COL_BLOCK);
        let corr: [S::Acc; RNV] = std::array::from_fn(|v| unsafe {
            s.ld_acc(blk.add(nr * BLOCK + v * S::LANES * 4) as *const i32)
        });
        let mut isum = [corr; RM];
        for t in 0..STEPS {
            let w: [S::Acc; RNV] = std::array::from_fn(|v| unsafe {
                s.ld_acc(blk.add((t * nr + v * S::LANES) * 4) as *const i32)
            });
            for (ii, isum) in isum.iter_mut().enumerate() {
                let x = a.xq.add((i + ii) * kp + b * BLOCK + 4 * t);
                for v in 0..RNV {
                    isum[v] = s.dp4(isum[v], w[v], x);
                }
            }
        }
        let dw: [S::V; RNV] = std::array::from_fn(|v| unsafe {
            s.ld(blk.add(nr * (BLOCK + 4) + v * S::LANES * 4) as *const f32)
        });
        for ii in 0..RM {
            let dx = s.splat(*a.xd.add((i + ii) * nb + b));
            for v in 0..RNV {
                acc[ii][v] = s.mul_add(s.cvt_acc(isum[ii][v]), s.mul(dw[v], dx), acc[ii][v]);
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
/// `a.nr` = RNV · `S::LANES`.
#[inline(always)]
pub(crate) unsafe fn range<S: SimdA8, const RM: usize, const RNV: usize>(
    s: S,
    a: &A8Args,
    p0: usize,
    p1: usize,
) {
    debug_assert_eq!(a.nr, RNV * S::LANES);
    for i0 in (0..a.m).step_by(MC) {
        let i1 = (i0 + MC).min(a.m);
        for p in p0..p1 {
            let mut i = i0;
            while i < i1 {
                let rm = (i1 - i).min(RM);
                match rm {
                    1 => tile::<S, 1, RNV>(s, a, i, p),
                    2 => tile::<S, 2, RNV>(s, a, i, p),
                    3 => tile::<S, 3, RNV>(s, a, i, p),
                    4 => tile::<S, 4, RNV>(s, a, i, p),
                    5 => tile::<S, 5, RNV>(s, a, i, p),
                    _ => tile::<S, 6, RNV>(s, a, i, p),
                }
                i += rm;
            }
        }
    }
}

impl Kernels {
    /// Whether the `Fast` quantized matmul of `m` rows on a W of `format` runs the W8A8 kernel (this
    /// module): q8, from [`crate::matmul::QUANT_DEQUANT_MIN_M`] rows, on a level whose best quantized
    /// kernel has VNNI (AVX512_VNNI, or AVX-VNNI at the AVX2 level), and without AMX (whose bf16 tiles
    /// run the dequantized weights faster).
    pub fn quant_fast_a8(&self, format: QuantFormat, m: usize) -> bool {
        let kernel = self.quant_kernel();
        format == QuantFormat::Q8
            && m >= crate::matmul::QUANT_DEQUANT_MIN_M
            && !self.amx()
            && kernel != QuantKernel::Scalar
            && super::table(kernel).q8a8.is_some()
    }

    /// x (m, k) quantized per row and block of 32 to int8, stored as q + 128 (the W8A8 activations: the
    /// level's [`super::scalar::quantize_row_8`] with flip 0x80): (values (m, nb·32), scales (m, nb)).
    /// Threaded over rows.
    pub fn quantize_rows_a8u(&self, x: &[f32], m: usize, k: usize) -> (Vec<u8>, Vec<f32>) {
        let (mut q, mut d) = (Vec::new(), Vec::new());
        self.quantize_rows_a8u_into(self.quant_kernel(), x, m, k, (&mut q, &mut d));
        (q, d)
    }

    fn quantize_rows_a8u_into(
        &self,
        kernel: QuantKernel,
        x: &[f32],
        m: usize,
        k: usize,
        out: (&mut Vec<u8>, &mut Vec<f32>),
    ) {
        let nb = k.div_ceil(BLOCK);
        let f = super::table(kernel).q8_row;
        // Safety: the table of a kernel of this level on this CPU; quantize_rows passes whole rows.
        let row = move |x: &[f32], q: &mut [u8], d: &mut [f32]| unsafe { f(x, q, d, 0x80) };
        self.quantize_rows(x, (m, k), (nb * BLOCK, nb), &row, out);
    }

    /// y (m, n) = x (m, k) · Wᵀ (+ bias) on a q8 W with x quantized to int8 (the W8A8 kernel of this
    /// module) on `kernel`, one of [`Kernels::quant_kernels`] that has it (the scalar twin, and the VNNI
    /// kernels); else an error. Threaded over panels of output columns.
    pub fn matmul_q8a8_with(
        &self,
        kernel: QuantKernel,
        x: &[f32],
        m: usize,
        w: &QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "matmul_q8a8";
        let ok = QuantKernel::of_level(self.isa(), &self.features());
        let t = match super::table(kernel).q8a8 {
            Some(t) if ok.contains(&kernel) => t,
            _ => {
                return Err(KernelError::Invalid {
                    op: OP,
                    msg: format!("kernel {kernel} has no W8A8 form on this CPU"),
                })
            }
        };
        if w.format != QuantFormat::Q8 {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!("W8A8 runs q8 weights, not {}", w.format),
            });
        }
        super::check_quant_args(x, m, w, bias, y)?;
        let (n, k, nb) = (w.n, w.k, w.blocks());
        if m == 0 || n == 0 {
            return Ok(());
        }
        let nr = t.nr;
        let panels = n.div_ceil(nr);
        let panel_bytes = nb * nr * COL_BLOCK;
        super::with_act(|act| {
            let (xq, xd) = (&mut act.a8_q, &mut act.a8_d);
            self.quantize_rows_a8u_into(kernel, x, m, k, (&mut *xq, &mut *xd));
            // the panels, u32 words so that their i32 and f32 are aligned
            let buf = &mut act.a8_w;
            buf.clear();
            buf.resize(panels * panel_bytes / 4, 0);
            let bp = SendPtr(buf.as_mut_ptr() as *mut u8);
            self.parallel_for(panels, &|p| {
                // Safety: task p writes panel p only; the buffer holds `panels` of them.
                let out = unsafe {
                    std::slice::from_raw_parts_mut(bp.get().add(p * panel_bytes), panel_bytes)
                };
                pack_panel(w, nr, p, out);
            });
            let a = A8Args {
                xq: xq.as_ptr(),
                xd: xd.as_ptr(),
                m,
                n,
                nb,
                panels: buf.as_ptr() as *const u8,
                nr,
                bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
                y: y.as_mut_ptr(),
            };
            let f = t.range;
            // Safety: the level's table is only reached on a CPU that has it (checked above); all
            // sizes were checked; tasks write disjoint panels of columns.
            self.for_units(panels, 1, m * n * k.max(1), &|p0, p1| unsafe {
                f(&a, p0, p1)
            });
        });
        Ok(())
    }
}
