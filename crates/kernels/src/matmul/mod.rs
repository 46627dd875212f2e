//! Linear layers: `y (m, n) = x (m, k) · Wᵀ + b`, with W as stored by `nn.Linear` (row-major (n, k)), in bf16
//! (raw `u16` bits, e.g. mmapped from a checkpoint) or f32.
//!
//! Two forms of the weight:
//! - **unpacked** ([`Kernels::matmul_unpacked`]): the checkpoint's own layout. For a few rows of x (decode)
//!   a GEMV streams each weight row once, split over threads by contiguous row ranges, 4 rows at a time with
//!   independent accumulators, bf16 widened by a 16-bit shift. For more rows, the weight is packed on the
//!   fly (better: pack once at load).
//! - **packed** ([`PackedWeight`], [`Kernels::pack_weight`]): groups of G output rows (G = 64 on AVX-512,
//!   16 on AVX2, 8 on SSE4.1, 16 scalar). bf16 groups store, for each pair of k, the 2·G values
//!   `[r0 k, r0 k+1, r1 k, r1 k+1, ...]` — the operand of `vdpbf16ps`, and for the exact path one load
//!   widened into the even-k and odd-k vectors by a shift and a mask. f32 groups store, for each k, G values.
//!   A register-blocked microkernel (MR rows of x × G columns) written once over [`kernel::MmSimd`] runs on
//!   it for any m, so a model may keep only the packed copy (decode then runs the same kernel with MR = m).
//!   Weights stacked from several tensors (q|k|v) are packed part by part ([`Kernels::pack_weight_parts`],
//!   [`WeightPacker`]) with no concatenated copy; the storage is 64-byte aligned and, from 2 MiB, its own
//!   huge-page-advised mapping (see `buf.rs`).
//! - **SwiGLU pair** ([`Kernels::pack_swiglu`], [`Kernels::swiglu_packer`]): gate (I, k) and up (I, k) in
//!   one packed weight, group j holding gate rows jG/2.. in its first G/2 slots and the matching up rows in
//!   the last G/2; the microkernel's epilogue writes silu(gate)·up (m, I) from its registers (the `swiglu`
//!   op's arithmetic at each level: bit for bit the unfused matmul + `swiglu`).
//!
//! Paths ([`MatmulPath`]):
//! - `Exact`: f32 arithmetic on widened weights. Error ≤ 2(k+2)·2⁻²⁴·Σ|x·w| per output (+ bias rounding).
//! - `Fast`: where the bf16 dot product pays ([`Kernels::bf16_dot`]: AVX512_BF16 and faster than f32 FMA)
//!   and with bf16 packed weights, x is rounded to bf16 (RNE, relative error
//!   ≤ 2⁻⁸: 8 significant bits) and products are accumulated by `vdpbf16ps` in f32: error ≤ (2⁻⁸ + 2(k+2)·2⁻²⁴)·Σ|x·w|
//!   (+ denormals flushed). With AMX ([`Kernels::amx`]) and at least [`AMX_MIN_M`] rows of x, the same
//!   arithmetic on tiles (`amx.rs`, reading the AVX-512 packed layout as is). Elsewhere `Fast` runs the
//!   exact path.
//!
//! Every ISA function has a scalar twin with the same signature in [`scalar`] (plain loops, the reference).

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
pub(crate) mod backward;
pub(crate) mod blocked;
pub(crate) mod buf;
pub(crate) mod kernel;
mod packed;
pub(crate) mod scalar;
mod shared;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use crate::isa::Isa;
use crate::ops::check_len;
use crate::SendPtr;
use crate::{KernelError, Kernels};
pub use backward::MatmulGrads;
use buf::AlignedBuf;

/// Fewest rows of x for which the `Fast` matmul of bf16 weights runs on AMX tiles where [`Kernels::amx`]
/// is on (every row count: up to 16 rows the weights stream through one A tile at the read bandwidth).
#[cfg(target_arch = "x86_64")]
pub const AMX_MIN_M: usize = amx::MIN_M;
#[cfg(not(target_arch = "x86_64"))]
pub const AMX_MIN_M: usize = usize::MAX;
/// Fewest rows of x for which the `Fast` quantized matmul may dequantize W, a few groups at a time, and
/// run a float kernel on it (see `Kernels::quant_fast_dequantizes`); below, the integer kernels read fewer
/// bytes than the dequantized copy costs to make.
pub const QUANT_DEQUANT_MIN_M: usize = 16;
pub use buf::StableBytes;
pub(crate) use packed::PackedData;
pub use packed::{PackedWeight, WeightPacker};
pub use shared::PackedLayout;

/// A weight matrix (n, k), row-major (`nn.Linear` layout).
#[derive(Clone, Copy, Debug)]
pub enum Weight<'a> {
    /// bf16 as raw bits.
    Bf16(&'a [u16]),
    F32(&'a [f32]),
}

impl Weight<'_> {
    fn len(&self) -> usize {
        match self {
            Weight::Bf16(w) => w.len(),
            Weight::F32(w) => w.len(),
        }
    }
}

/// Arithmetic of a matmul; see the module docs for the error bound of each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPath {
    /// f32 arithmetic on widened weights.
    Exact,
    /// May round x to bf16 and use `vdpbf16ps` (AVX512_BF16 with bf16 weights); else as `Exact`.
    Fast,
}

/// The operands of one matmul, as seen by the range functions of a [`MmTable`].
#[derive(Clone, Copy)]
pub(crate) struct Args<'a> {
    /// (m, k)
    pub x: &'a [f32],
    /// (m, 2·⌈k/2⌉): x rounded to bf16, odd k padded with 0 (Fast path only; else empty). For the AMX
    /// kernel, rows and row stride padded further (`amx::x_layout`).
    pub xb: &'a [u16],
    /// (m, k): x with each block of 2·LANES values of k reordered as [LANES even k, LANES odd k] (the
    /// rest in order), to meet bf16 weight pairs widened by shift/mask (row-major bf16 GEMV only; else empty).
    pub xp: &'a [f32],
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// (n)
    pub bias: Option<&'a [f32]>,
    /// (m, n), row stride n.
    pub y: SendPtr<f32>,
    /// W is a SwiGLU pair (n = I outputs, G/2 per group): y = silu(gate)·up, no bias.
    pub swiglu: bool,
    /// The first packed group the weight slice holds (0: all of them; a range function's groups g0..g1
    /// must lie in g_base..): group j is at `(j - g_base)·group length` of the slice. Lets a caller pack a
    /// few groups at a time into a scratch (quantized weights dequantized per call).
    pub g_base: usize,
}

impl<'a> Args<'a> {
    /// The operands of a plain matmul (no SwiGLU pair, every group in the weight slice, no rounded or
    /// reordered x yet: the caller sets `xb`/`xp` for the paths that read them).
    pub fn new(
        x: &'a [f32],
        m: usize,
        n: usize,
        k: usize,
        bias: Option<&'a [f32]>,
        y: &mut [f32],
    ) -> Args<'a> {
        Args {
            x,
            xb: &[],
            xp: &[],
            m,
            n,
            k,
            bias,
            y: SendPtr(y.as_mut_ptr()),
            swiglu: false,
            g_base: 0,
        }
    }

    /// First output column and number of columns of packed group j of G rows.
    #[inline(always)]
    pub fn group_cols(&self, j: usize, g: usize) -> (usize, usize) {
        let c = if self.swiglu { g / 2 } else { g };
        (j * c, c.min(self.n - j * c))
    }
}

// Safety: tasks write disjoint parts of `y` (rows ranges of W or column groups); the rest is shared reads.
unsafe impl Sync for Args<'_> {}
unsafe impl Send for Args<'_> {}

/// Range functions of one level. `unsafe`: they need the level's CPU features, index without checks (the
/// public API has checked all lengths) and write through `Args::y`.
/// A range function: (operands, weight, first, end) over output rows or column groups.
pub(crate) type RangeFn<T> = unsafe fn(&Args, &[T], usize, usize);

pub(crate) struct MmTable {
    /// Output columns r0..r1 (rows of W) for all m, W row-major (n, k). Reads `Args::xp`.
    pub gemv_bf16: RangeFn<u16>,
    /// Same with x rounded to bf16 (reads `Args::xb`) and `vdpbf16ps`, where available.
    pub gemv_bf16_dot: Option<RangeFn<u16>>,
    pub gemv_f32: RangeFn<f32>,
    /// Column groups g0..g1 for all m, W packed; exact f32 arithmetic.
    pub packed_bf16: RangeFn<u16>,
    /// Same with x rounded to bf16 (reads `Args::xb`) and `vdpbf16ps`, where available.
    pub packed_bf16_dot: Option<RangeFn<u16>>,
    pub packed_f32: RangeFn<f32>,
    /// f32 -> bf16 RNE, for `Args::xb`.
    pub to_bf16: unsafe fn(&[f32], &mut [u16]),
    /// G.
    pub group: usize,
    /// f32 lanes of the level (the block of `Args::xp` is 2·lanes).
    pub lanes: usize,
}

static SCALAR: MmTable = MmTable {
    gemv_bf16: scalar::gemv_bf16,
    gemv_bf16_dot: None,
    gemv_f32: scalar::gemv_f32,
    packed_bf16: scalar::packed_bf16,
    packed_bf16_dot: None,
    packed_f32: scalar::packed_f32,
    to_bf16: scalar::to_bf16,
    group: scalar::GROUP,
    lanes: 1,
};

fn table(isa: Isa, bf16_dot: bool) -> &'static MmTable {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Scalar => &SCALAR,
            Isa::Sse41 => &x86::SSE41,
            Isa::Avx2 => &x86::AVX2,
            Isa::Avx512 if bf16_dot => &x86::AVX512_BF16,
            Isa::Avx512 => &x86::AVX512,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (isa, bf16_dot);
        &SCALAR
    }
}

/// Below this many multiply-adds a matmul runs on the calling thread only.
const PARALLEL_MIN_MACS: usize = 1 << 16;
/// The smallest range of a threaded op, in multiply-adds (see [`chunks`]).
const MIN_CHUNK_MACS: usize = 1 << 15;
/// Up to this many rows of x, `matmul_unpacked` streams the weight (each row of W read from memory once,
/// then from L1 for the other rows of x) instead of packing it.
const GEMV_MAX_M: usize = 8;

impl Kernels {
    fn mm(&self) -> &'static MmTable {
        table(self.isa(), self.bf16_dot())
    }

    /// Repacks `w` (n, k) into the layout of this level's microkernel (threaded). Do this once at load.
    pub fn pack_weight(&self, w: Weight, n: usize, k: usize) -> Result<PackedWeight, KernelError> {
        self.pack_weight_parts(&[w], n, k)
    }

    /// Packs the parts of a weight stacked along the output rows (part i: (n_i, k), Σ n_i = n; e.g. q, k
    /// and v projections) straight into one packed weight, without a concatenated copy of the sources.
    /// The result is bf16 if every part is bf16, else f32.
    pub fn pack_weight_parts(
        &self,
        parts: &[Weight],
        n: usize,
        k: usize,
    ) -> Result<PackedWeight, KernelError> {
        const OP: &str = "pack_weight";
        let total: usize = parts.iter().map(|p| p.len()).sum();
        check_len(OP, "Σ parts (n*k)", mul(OP, n, k)?, total)?;
        let bf16 = parts.iter().all(|p| matches!(p, Weight::Bf16(_)));
        let mut pk = self.weight_packer(n, k, bf16)?;
        for p in parts {
            let rows = p.len().checked_div(k).unwrap_or(0);
            pk.push(*p, rows)?;
        }
        if k == 0 {
            pk.rows = n;
        }
        pk.finish()
    }

    /// A packer that receives the rows of an (n, k) weight part by part (see [`WeightPacker`]), stored as
    /// bf16 (`bf16`; every part must then be bf16) or f32.
    pub fn weight_packer(
        &self,
        n: usize,
        k: usize,
        bf16: bool,
    ) -> Result<WeightPacker, KernelError> {
        self.packer(n, k, bf16, false)
    }

    /// A packer for the pair gate (I, k), up (I, k) of a SwiGLU MLP: push the I gate rows, then the I up
    /// rows (in parts if wished). [`Kernels::matmul`] on the result writes act (m, I) = silu(x·gateᵀ) ⊙
    /// (x·upᵀ) straight from the microkernel's registers: one pass over x and the weights, no (m, 2I)
    /// intermediate. silu is the [`Kernels::swiglu`] op's own arithmetic at each level (same bits).
    pub fn swiglu_packer(
        &self,
        i: usize,
        k: usize,
        bf16: bool,
    ) -> Result<WeightPacker, KernelError> {
        self.packer(i, k, bf16, true)
    }

    /// [`Kernels::swiglu_packer`] for whole gate and up weights (I, k) each.
    pub fn pack_swiglu(
        &self,
        gate: Weight,
        up: Weight,
        i: usize,
        k: usize,
    ) -> Result<PackedWeight, KernelError> {
        let n = mul("pack_swiglu", i, k)?;
        check_len("pack_swiglu", "gate (i*k)", n, gate.len())?;
        check_len("pack_swiglu", "up (i*k)", n, up.len())?;
        let bf16 = matches!((gate, up), (Weight::Bf16(_), Weight::Bf16(_)));
        let mut p = self.swiglu_packer(i, k, bf16)?;
        p.push(gate, i)?;
        p.push(up, i)?;
        p.finish()
    }

    fn packer(
        &self,
        n: usize,
        k: usize,
        bf16: bool,
        swiglu: bool,
    ) -> Result<WeightPacker, KernelError> {
        const OP: &str = "pack_weight";
        let g = self.mm().group;
        let len = shared::packed_len(OP, g, PackedLayout { n, k, bf16, swiglu })?;
        let data = if bf16 {
            PackedData::Bf16(AlignedBuf::zeroed(OP, len)?)
        } else {
            PackedData::F32(AlignedBuf::zeroed(OP, len)?)
        };
        Ok(WeightPacker {
            kern: *self,
            rows: 0,
            w: PackedWeight {
                n,
                k,
                isa: self.isa(),
                group: g,
                swiglu,
                data,
            },
        })
    }

    /// y (m, n) = x (m, k) · Wᵀ (+ bias (n)), W packed by [`Kernels::pack_weight`] of this level.
    /// Threaded over groups of output columns.
    pub fn matmul(
        &self,
        x: &[f32],
        m: usize,
        w: &PackedWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
        path: MatmulPath,
    ) -> Result<(), KernelError> {
        let (n, k) = (w.n, w.k);
        check_args("matmul", x, m, n, k, bias, y)?;
        let t = self.mm();
        if w.isa != self.isa() || w.group != t.group {
            return Err(KernelError::Invalid {
                op: "matmul",
                msg: format!(
                    "weight was packed for {} but these kernels are {}; pack it with the same Kernels",
                    w.isa,
                    self.isa()
                ),
            });
        }
        if w.swiglu && bias.is_some() {
            return Err(KernelError::Invalid {
                op: "matmul",
                msg: "a bias with a SwiGLU pair (silu(gate)·up has no bias)".into(),
            });
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let groups = w.groups();
        let xb_buf;
        let mut a = Args {
            swiglu: w.swiglu,
            ..Args::new(x, m, n, k, bias, y)
        };
        let macs = m * n * k * if w.swiglu { 2 } else { 1 };
        match (&w.data, path, t.packed_bf16_dot) {
            #[cfg(target_arch = "x86_64")]
            (PackedData::Bf16(wd), MatmulPath::Fast, _)
                if self.amx() && m >= AMX_MIN_M && w.group == 64 =>
            {
                // Safety (to_bf16): `amx` implies AVX512_BF16 (see `Features::amx_bf16`).
                let (rows, ld) = amx::x_layout(m, k);
                xb_buf = round_x_bf16(self, x86::bf16dot::to_bf16, x, m, k, rows, ld)?;
                a.xb = &xb_buf;
                // Safety: the AMX permission and features come with `amx`; xb has amx's layout.
                self.run_ranges(groups, macs, &|g0, g1| unsafe {
                    amx::packed_bf16(&a, wd, g0, g1)
                });
            }
            (PackedData::Bf16(wd), MatmulPath::Fast, Some(dot)) => {
                let kp2 = k.div_ceil(2) * 2;
                xb_buf = round_x_bf16(self, t.to_bf16, x, m, k, m, kp2)?;
                a.xb = &xb_buf;
                self.run_ranges(groups, macs, &|g0, g1| unsafe { dot(&a, wd, g0, g1) });
            }
            (PackedData::Bf16(wd), _, _) => {
                let f = t.packed_bf16;
                self.run_ranges(groups, macs, &|g0, g1| unsafe { f(&a, wd, g0, g1) });
            }
            (PackedData::F32(wd), _, _) => {
                let f = t.packed_f32;
                self.run_ranges(groups, macs, &|g0, g1| unsafe { f(&a, wd, g0, g1) });
            }
        }
        Ok(())
    }

    /// y (m, n) = x (m, k) · Wᵀ (+ bias (n)) on W as stored (e.g. mmapped), no packing kept.
    /// For m ≤ 8 the weight is streamed (GEMV, threaded over contiguous row ranges); for larger m it is
    /// packed into a temporary first.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul_unpacked(
        &self,
        x: &[f32],
        m: usize,
        w: Weight,
        n: usize,
        k: usize,
        bias: Option<&[f32]>,
        y: &mut [f32],
        path: MatmulPath,
    ) -> Result<(), KernelError> {
        check_args("matmul_unpacked", x, m, n, k, bias, y)?;
        check_len("matmul_unpacked", "w (n*k)", n * k, w.len())?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        if m > GEMV_MAX_M {
            let p = self.pack_weight(w, n, k)?;
            return self.matmul(x, m, &p, bias, y, path);
        }
        let t = self.mm();
        let mut a = Args::new(x, m, n, k, bias, y);
        let macs = m * n * k;
        let (xb_buf, xp_buf);
        match (w, path, t.gemv_bf16_dot) {
            (Weight::Bf16(wd), MatmulPath::Fast, Some(dot)) => {
                let kp2 = k.div_ceil(2) * 2;
                xb_buf = round_x_bf16(self, t.to_bf16, x, m, k, m, kp2)?;
                a.xb = &xb_buf;
                self.run_ranges(n, macs, &|r0, r1| unsafe { dot(&a, wd, r0, r1) });
            }
            (Weight::Bf16(wd), _, _) => {
                xp_buf = deinterleave_x(x, m, k, t.lanes);
                a.xp = &xp_buf;
                let f = t.gemv_bf16;
                self.run_ranges(n, macs, &|r0, r1| unsafe { f(&a, wd, r0, r1) });
            }
            (Weight::F32(wd), _, _) => {
                let f = t.gemv_f32;
                self.run_ranges(n, macs, &|r0, r1| unsafe { f(&a, wd, r0, r1) });
            }
        }
        Ok(())
    }

    /// The `Fast` quantized matmul on AMX tiles (see `amx::quant_bf16`): W dequantized 64 rows at a time
    /// into bf16 packed groups, x rounded to bf16. Only where [`Kernels::amx`]; the caller checked the
    /// lengths (as `matmul_quant` does).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn matmul_quant_amx(
        &self,
        x: &[f32],
        m: usize,
        w: &crate::quant::QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        let (n, k) = (w.n(), w.k());
        debug_assert!(self.amx() && x.len() == m * k && y.len() == m * n);
        let (rows, ld) = amx::x_layout(m, k);
        // Safety (to_bf16): `amx` implies AVX512_BF16.
        let xb = round_x_bf16(self, x86::bf16dot::to_bf16, x, m, k, rows, ld)?;
        let a = Args {
            xb: &xb,
            ..Args::new(x, m, n, k, bias, y)
        };
        let groups = n.div_ceil(amx::G);
        // Safety: the AMX features and permission come with `amx`; xb has amx's layout.
        self.run_ranges(groups, m * n * k, &|g0, g1| unsafe {
            amx::quant_bf16(&a, w, g0, g1)
        });
        Ok(())
    }

    /// y = x · Wᵀ (+ bias) for a q8 W on this level's packed bf16 kernel: each task dequantizes a few
    /// groups of G rows at a time (q·d, the values `QuantWeight::row_f32` gives, rounded to bf16 as the
    /// AMX path does) straight into the packed layout (a scratch of ≤ 256 KiB), then runs the kernel's
    /// exact f32 arithmetic on them for all rows of x, x not quantized. bf16 rather than f32 panels: the
    /// kernel reads its group once per few rows of x, and f32 panels doubled that traffic (prefill 54.7
    /// tok/s against bf16's 77 without AMX). Preconditions as `matmul_quant_amx`, and W is q8.
    pub(crate) fn matmul_quant_bf16(
        &self,
        x: &[f32],
        m: usize,
        w: &crate::quant::QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        let (n, k) = (w.n(), w.k());
        debug_assert!(x.len() == m * k && y.len() == m * n && k > 0);
        debug_assert!(w.format() == crate::quant::QuantFormat::Q8);
        let t = self.mm();
        let g = t.group;
        let a = Args::new(x, m, n, k, bias, y);
        let groups = n.div_ceil(g);
        // one group: kp pairs × G rows × 2 values
        let glen = k.div_ceil(2) * g * 2;
        let per_call = ((256 << 10) / (2 * glen)).max(1);
        let (rb, ns) = (w.format().row_bytes(k), w.format().row_scales(k));
        let (qs, ds) = (w.qs_bytes(), w.scales());
        self.run_ranges(groups, m * n * k, &|g0, g1| {
            let mut panel = vec![0u16; per_call.min(g1 - g0) * glen];
            let mut j = g0;
            while j < g1 {
                let j1 = (j + per_call).min(g1);
                for jj in j..j1 {
                    // group jj, a block of 32 k (16 pairs) at a time (its lines stay in L1): value kk of
                    // row r at ((kk/2)·G + r)·2 + kk%2; o = jj·G + r; rows past n and k past k stay 0
                    let dst = &mut panel[(jj - j) * glen..(jj - j + 1) * glen];
                    dst.fill(0);
                    for (b, blk) in dst.chunks_mut(16 * g * 2).enumerate() {
                        for r in 0..(n - (jj * g).min(n)).min(g) {
                            let o = jj * g + r;
                            let d = ds[o * ns + b];
                            let q = &qs[o * rb + b * 32..o * rb + b * 32 + 32];
                            let kn = (k - b * 32).min(32);
                            for (tt, &qv) in q[..kn].iter().enumerate() {
                                blk[((tt / 2) * g + r) * 2 + tt % 2] =
                                    scalar::f32_to_bf16(qv as i8 as f32 * d);
                            }
                        }
                    }
                }
                let aj = Args { g_base: j, ..a };
                // Safety: the level's own kernel; the panel holds groups j..j1 packed for it (g_base).
                unsafe { (t.packed_bf16)(&aj, &panel[..(j1 - j) * glen], j, j1) };
                j = j1;
            }
        });
        Ok(())
    }

    /// Splits `0..units` into contiguous ranges (see [`chunks`]), run on the pool.
    fn run_ranges(&self, units: usize, macs: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        let bounds = chunks(units, self.threads(), macs);
        self.parallel_for(bounds.len() - 1, &|t| {
            let (a, b) = (bounds[t], bounds[t + 1]);
            if a < b {
                f(a, b)
            }
        });
    }
}

/// Boundaries of the contiguous ranges `units` of work are split into (tasks claim them in order):
/// `[0, b1, ..., units]`. One range when there is one thread or the op is small. Otherwise guided
/// self-scheduling: each range takes 1/(2·threads) of what is left, down to ranges of about 32K
/// multiply-adds, so the threads start on large contiguous streams and end on small ones — a thread
/// slowed by a neighbour hands its share over, and the last range anyone waits for is short (a decode
/// GEMV streaming at the memory limit loses the whole tail of a large equal range to one idle thread).
pub(crate) fn chunks(units: usize, threads: usize, macs: usize) -> Vec<usize> {
    if threads <= 1 || macs < PARALLEL_MIN_MACS || units <= 1 {
        return vec![0, units];
    }
    let min = (units as u128 * MIN_CHUNK_MACS as u128)
        .div_ceil(macs.max(1) as u128)
        .max(1) as usize;
    let mut bounds = vec![0];
    let mut start = 0;
    while start < units {
        let left = units - start;
        start += left.div_ceil(2 * threads).max(min).min(left);
        bounds.push(start);
    }
    bounds
}

fn mul(op: &'static str, a: usize, b: usize) -> Result<usize, KernelError> {
    a.checked_mul(b).ok_or_else(|| KernelError::Invalid {
        op,
        msg: format!("size {a}*{b} overflows"),
    })
}

fn check_args(
    op: &'static str,
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    y: &[f32],
) -> Result<(), KernelError> {
    check_len(op, "x (m*k)", mul(op, m, k)?, x.len())?;
    check_len(op, "y (m*n)", mul(op, m, n)?, y.len())?;
    mul(op, mul(op, m, n)?, k)?;
    if let Some(b) = bias {
        check_len(op, "bias (n)", n, b.len())?;
    }
    Ok(())
}

/// x (m, k) rounded to bf16 by `to_bf16` (a level's converter, which this CPU supports) into (rows, ld),
/// rows ≥ m and ld ≥ k, the padding 0: (m, 2⌈k/2⌉) for the bf16 dot kernels, larger for AMX.
fn round_x_bf16(
    kern: &Kernels,
    to_bf16: unsafe fn(&[f32], &mut [u16]),
    x: &[f32],
    m: usize,
    k: usize,
    rows: usize,
    ld: usize,
) -> Result<AlignedBuf<u16>, KernelError> {
    debug_assert!(rows >= m && ld >= k);
    // 64-byte aligned: a row of an AMX tile is then one cache line
    let mut xb = AlignedBuf::<u16>::zeroed("matmul", mul("matmul", rows, ld)?)?;
    let out = SendPtr(xb.as_mut_ptr());
    // Threaded over rows once x is large (vision: 1200 × 4096).
    kern.run_ranges(m, m * k / 16, &|i0, i1| {
        for i in i0..i1 {
            // Safety: row i of xb is written by this task only; `to_bf16` belongs to a level this CPU
            // supports.
            unsafe {
                let dst = std::slice::from_raw_parts_mut(out.get().add(i * ld), k);
                to_bf16(&x[i * k..(i + 1) * k], dst)
            };
        }
    });
    Ok(xb)
}

/// x (m, k) with each block of 2·lanes values of a row reordered as [even k, odd k]; see `Args::xp`.
fn deinterleave_x(x: &[f32], m: usize, k: usize, lanes: usize) -> Vec<f32> {
    let b = 2 * lanes;
    let mut xp = x.to_vec();
    if lanes <= 1 {
        return xp;
    }
    for i in 0..m {
        let row = &x[i * k..(i + 1) * k];
        let out = &mut xp[i * k..(i + 1) * k];
        for (src, dst) in row.chunks_exact(b).zip(out.chunks_exact_mut(b)) {
            for j in 0..lanes {
                dst[j] = src[2 * j];
                dst[lanes + j] = src[2 * j + 1];
            }
        }
    }
    xp
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_the_units_guided() {
        // Small op or one thread: one range.
        assert_eq!(chunks(64, 2, 1000), vec![0, 64]);
        assert_eq!(chunks(64, 1, 1 << 30), vec![0, 64]);
        assert_eq!(chunks(0, 2, 1 << 30), vec![0, 0]);
        // q|k|v of a 2B decode step: 64 groups of 64 rows × 2048. Each range takes a quarter of what is
        // left (2 threads), down to one group.
        let b = chunks(64, 2, 4096 * 2048);
        assert_eq!(
            b,
            vec![0, 16, 28, 37, 44, 49, 53, 56, 58, 60, 61, 62, 63, 64]
        );
        // Ranges never go below ~32K multiply-adds (but the last): 1000 units of 100 MACs -> 328 units.
        let b = chunks(1000, 2, 100_000);
        assert_eq!(b, vec![0, 328, 656, 984, 1000]);
        // Any case: strictly increasing from 0 to units, non-increasing range sizes.
        for (units, threads, macs) in [(2374, 2, 311_164_928), (7, 3, 1 << 20), (96, 4, 1 << 34)] {
            let b = chunks(units, threads, macs);
            assert_eq!((b[0], *b.last().unwrap()), (0, units));
            let sizes: Vec<usize> = b.windows(2).map(|w| w[1] - w[0]).collect();
            assert!(sizes.iter().all(|&s| s > 0), "{sizes:?}");
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
            assert_eq!(sizes[0], units.div_ceil(2 * threads));
        }
    }
}
