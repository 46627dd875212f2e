//! Quantized linear layers: `y (m, n) = x (m, k) · Wᵀ + b` with W stored in 8 or 4 bits and integer dot
//! products. Every row of W (n, k) is quantized on its own, its k zero-padded to whole blocks of the format.
//!
//! Format **q8**: blocks of 32 along k; a block stores 32 signed bytes q and one f32 scale d = max|w| / 127,
//! w ≈ q·d (round to nearest even: |w - q·d| ≤ d/2). 9 bits per weight (ggml's Q8_0 stores an f16 scale:
//! 8.5). Layout: `qs` (n, nb·32) bytes row-major, `d` (n, nb) f32, nb = ⌈k/32⌉.
//!
//! Format **q4** (the technique of ggml's Q4_K, our own layout): super-blocks of 256 along k, each 8
//! sub-blocks of 32 values. A sub-block j stores 4-bit values L ∈ 0..=15 with its own scale and minimum,
//! w ≈ (d·sc_j)·L − (dmin·mn_j), where sc_j, mn_j are bytes and d, dmin f32 per super-block. The
//! sub-block's (scale, min) is the least-squares fit over a few candidate grids (see
//! `scalar::quantize_row_q4`), which is what makes Q4_K more accurate than plain min/max rounding. Layout
//! per row: ⌈k/256⌉ super-blocks of 144 bytes read front to back by the kernels — 8 bytes sc, 8 bytes mn,
//! then 8 × 16 bytes of nibbles (byte t of sub-block j holds L_t in its low and L_{t+16} in its high
//! nibble) — and `d` (n, 2·⌈k/256⌉) f32 as (d, dmin) pairs. 4.75 bits per weight (Q4_K: 4.5, its sub-scales
//! in 6 bits and d, dmin in f16).
//!
//! The matmul quantizes each row of x once per call: for q8 to int16 per block of 32 (d_x = max|x| /
//! 32767: W8A16, why in `simd/int.rs`); for q4 to int8 per super-block of 256 (d_x = max|x| / 127, as
//! ggml's Q8_K; W4A8: unsigned 4-bit weights times signed bytes never saturate `pmaddubsw`'s i16 pairs,
//! 2·15·127 < 2^15) with the sums s_x = d_x·Σq_x of its blocks of 32 for the minimums. Then
//! q8: `y[i][c] = Σ_b d_w[c][b] · d_x[i][b] · Σ_{block b} q_w · q_x`;
//! q4: `y[i][c] = Σ_sb (d · d_x[i][sb] · Σ_j sc_j · Σ_{sub-block j} L · q_x − Σ_j dmin·mn_j · s_x[i][j])`:
//! the sub-block dot products, each times its byte scale, add up in i32 over a super-block (exact, below
//! 2^31), then one conversion and one FMA per super-block and pair, and one FMA for its 8 minimum terms.
//! Decode (GEMV) and prefill (GEMM) run the same register-tiled kernels (`kernel.rs`), threaded over output
//! columns.
//! q8 error against the float product of the *unquantized* x and W: ≤ Σ_b (d_w/2 · Σ|x| + d_x/2 · Σ|w| +
//! d_w·d_x/4 · 32) over the blocks of each output, plus f32 accumulation (tested against f64).
//!
//! Every level has a scalar twin (`scalar.rs`); [`QuantKernel`] names the implementations (SSE4.1, AVX2,
//! AVX-512, and for q4 the VNNI `vpdpwssd` variants of AVX2 and AVX-512), one chosen per call by the
//! level and the CPU's features.

pub(crate) mod a8;
pub(crate) mod kernel;
pub mod scalar;
mod weight;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86_512;

use std::fmt;

use crate::SendPtr;
pub use weight::{QuantPacker, QuantWeight};

use crate::isa::{Features, Isa};
use crate::matmul::Weight;
use crate::ops::check_len;
use crate::simd::int::BLOCK;
use crate::{KernelError, Kernels};

/// A quantization format of weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 8-bit, one f32 scale per block of 32 along k.
    Q8,
    /// 4-bit with a scale and a minimum per sub-block of 32 (bytes), f32 (d, dmin) per super-block of 256.
    Q4,
}

/// q4: values of k per super-block, sub-blocks per super-block, bytes per super-block.
pub const Q4_SUPER: usize = 256;
pub const Q4_SUBS: usize = Q4_SUPER / BLOCK;
pub const Q4_SUPER_BYTES: usize = 2 * Q4_SUBS + Q4_SUPER / 2;

impl QuantFormat {
    pub const ALL: [QuantFormat; 2] = [QuantFormat::Q8, QuantFormat::Q4];

    /// The spelling of the CLI and of checkpoint metadata.
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "q8",
            QuantFormat::Q4 => "q4",
        }
    }

    pub fn parse(s: &str) -> Option<QuantFormat> {
        QuantFormat::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Values of k per unit of storage: a row's k is zero-padded to a multiple of this.
    pub const fn block(self) -> usize {
        match self {
            QuantFormat::Q8 => BLOCK,
            QuantFormat::Q4 => Q4_SUPER,
        }
    }

    /// k padded to whole blocks.
    pub const fn padded(self, k: usize) -> usize {
        k.div_ceil(self.block()) * self.block()
    }

    /// Bytes of quantized values per row of k values (padded to whole blocks).
    pub const fn row_bytes(self, k: usize) -> usize {
        match self {
            QuantFormat::Q8 => k.div_ceil(BLOCK) * BLOCK,
            QuantFormat::Q4 => k.div_ceil(Q4_SUPER) * Q4_SUPER_BYTES,
        }
    }

    /// f32 scales per row of k values.
    pub const fn row_scales(self, k: usize) -> usize {
        match self {
            QuantFormat::Q8 => k.div_ceil(BLOCK),
            QuantFormat::Q4 => 2 * k.div_ceil(Q4_SUPER),
        }
    }

    /// Bits of storage per weight (values and scales) when k is a multiple of the block.
    pub fn bits_per_weight(self) -> f64 {
        let k = self.block();
        (self.row_bytes(k) * 8 + self.row_scales(k) * 32) as f64 / k as f64
    }

    /// The integer type the matmul quantizes activations to (per block of 32).
    pub const fn activations(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "int16",
            QuantFormat::Q4 => "int8",
        }
    }

    /// What the scales are, for plans and errors.
    pub const fn describe(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "int8 values, f32 scale per block of 32",
            QuantFormat::Q4 => {
                "4-bit values, byte scale and min per sub-block of 32, f32 (d, dmin) per super-block of 256"
            }
        }
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Range functions of one level: output columns c0..c1 for every row of x.
pub(crate) type QRangeFn = unsafe fn(&QArgs, usize, usize);
pub(crate) type Q4RangeFn = unsafe fn(&Q4Args, usize, usize);
/// The q8 row quantizer of one level: (x row, bytes, scales, flip) — see `kernel::quantize_row_8`.
pub(crate) type Q8RowFn = unsafe fn(&[f32], &mut [u8], &mut [f32], u8);

pub(crate) struct QTable {
    pub q8_range: QRangeFn,
    pub q4_range: Q4RangeFn,
    /// The `group` of [`group_activations`] `q4_range` reads x in.
    pub q4_group: usize,
    /// The int8-activation forms over column panels (`a8.rs`): q8 (W8A8) on levels with VNNI, q4
    /// (W4A8) at AVX2 and AVX-512, both for the scalar twin.
    pub q8a8: Option<&'static a8::A8Table>,
    pub q4a8: Option<&'static a8::A8Table>,
    /// The q8 row quantizer (weights, and W8A8's activations), bit for bit `scalar::quantize_row_q8`.
    pub q8_row: Q8RowFn,
}

static SCALAR: QTable = QTable {
    q8_range: scalar::q8_range,
    q4_range: scalar::q4_range,
    q4_group: 1,
    q8a8: Some(&a8::SCALAR_A8),
    q4a8: Some(&a8::SCALAR_A8),
    q8_row: scalar::quantize_row_8,
};

/// Reorders int8 activations (rows of whole q4 super-blocks) for kernels that hold one sub-block per
/// 128-bit lane: per group of `group` sub-blocks of 32, first values 0..16 of each, then values 16..32
/// of each — the order of the low and the high nibbles of the group's stored weight bytes (see
/// `SimdQ4`). `group` 1 is the stored order.
pub(crate) fn group_activations(q: &mut [i8], group: usize) {
    if group <= 1 {
        return;
    }
    let mut tmp = [0i8; 4 * BLOCK];
    let half = BLOCK / 2;
    for c in q.chunks_exact_mut(group * BLOCK) {
        tmp[..c.len()].copy_from_slice(c);
        for l in 0..group {
            for h in 0..2 {
                let src = &tmp[l * BLOCK + h * half..l * BLOCK + (h + 1) * half];
                c[(h * group + l) * half..(h * group + l + 1) * half].copy_from_slice(src);
            }
        }
    }
}

/// One implementation of the quantized matmuls: a level, and where the CPU has VNNI the q4 kernel on
/// `vpdpwssd` (it fuses the i16 × scale multiply and the i32 add of each step). q8 runs the level's
/// kernel in both (its int16 activations gain nothing from VNNI: `vpdpwssd` would replace `vpmaddwd`
/// one for one, as every block has its own f32 scale).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantKernel {
    Scalar,
    Sse41,
    Avx2,
    /// AVX2 with AVX-VNNI (the VEX `vpdpwssd`, e.g. Alder Lake, Zen 5).
    Avx2Vnni,
    Avx512,
    /// AVX-512 with AVX512_VNNI.
    Avx512Vnni,
}

impl QuantKernel {
    pub const fn name(self) -> &'static str {
        match self {
            QuantKernel::Scalar => "scalar",
            QuantKernel::Sse41 => "sse4.1",
            QuantKernel::Avx2 => "avx2",
            QuantKernel::Avx2Vnni => "avx2+avx_vnni",
            QuantKernel::Avx512 => "avx512",
            QuantKernel::Avx512Vnni => "avx512+avx512_vnni",
        }
    }

    /// The level this kernel belongs to.
    pub const fn isa(self) -> Isa {
        match self {
            QuantKernel::Scalar => Isa::Scalar,
            QuantKernel::Sse41 => Isa::Sse41,
            QuantKernel::Avx2 | QuantKernel::Avx2Vnni => Isa::Avx2,
            QuantKernel::Avx512 | QuantKernel::Avx512Vnni => Isa::Avx512,
        }
    }

    /// The kernels of a level on a CPU with `f` (which supports the level), the best last.
    fn of_level(isa: Isa, f: &Features) -> &'static [QuantKernel] {
        use QuantKernel::*;
        match isa {
            Isa::Scalar => &[Scalar],
            Isa::Sse41 => &[Sse41],
            Isa::Avx2 if f.avx_vnni => &[Avx2, Avx2Vnni],
            Isa::Avx2 => &[Avx2],
            Isa::Avx512 if f.avx512_vnni => &[Avx512, Avx512Vnni],
            Isa::Avx512 => &[Avx512],
        }
    }
}

impl fmt::Display for QuantKernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The range functions of a kernel; only reached for kernels of `QuantKernel::of_level` on this CPU.
fn table(kernel: QuantKernel) -> &'static QTable {
    #[cfg(target_arch = "x86_64")]
    {
        match kernel {
            QuantKernel::Scalar => &SCALAR,
            QuantKernel::Sse41 => &x86::SSE41,
            QuantKernel::Avx2 => &x86::AVX2,
            QuantKernel::Avx2Vnni => &x86::AVX2_VNNI,
            QuantKernel::Avx512 => &x86_512::AVX512,
            QuantKernel::Avx512Vnni => &x86_512::AVX512_VNNI,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        &SCALAR
    }
}

/// The operands of one q8 matmul as the range functions see them. Raw pointers: the tasks of one
/// call share it and write disjoint columns of `y`.
pub(crate) struct QArgs {
    /// (m, nb·32) quantized x
    pub xq: *const i16,
    /// (m, nb)
    pub xd: *const f32,
    pub m: usize,
    pub n: usize,
    pub nb: usize,
    /// (n, nb·32)
    pub wq: *const i8,
    /// (n, nb)
    pub wd: *const f32,
    /// (n) or null
    pub bias: *const f32,
    /// (m, n), row stride n
    pub y: *mut f32,
}
// Safety: shared reads, and writes to disjoint columns of `y` (see `Kernels::matmul_quant`).
unsafe impl Sync for QArgs {}
unsafe impl Send for QArgs {}

/// The operands of one q4 matmul (see the module docs for the layout).
pub(crate) struct Q4Args {
    /// (m, nsb·256) x quantized to int8 per super-block of 256
    pub xq: *const i8,
    /// (m, nsb) scales of x
    pub xd: *const f32,
    /// (m, nsb·8) block sums of x, d_x·Σq_x
    pub xs: *const f32,
    pub m: usize,
    pub n: usize,
    /// super-blocks per row
    pub nsb: usize,
    /// (n, nsb·144)
    pub wq: *const u8,
    /// (n, nsb·2) (d, dmin) pairs
    pub wd: *const f32,
    /// (n) or null
    pub bias: *const f32,
    /// (m, n), row stride n
    pub y: *mut f32,
}
// Safety: as QArgs.
unsafe impl Sync for Q4Args {}
unsafe impl Send for Q4Args {}

/// A row quantizer: (x row, values, scales).
type QuantizeRowFn<T> = dyn Fn(&[f32], &mut [T], &mut [f32]) + Sync;

/// The quantized activations of a matmul call, kept per thread and reused: a decode step makes hundreds
/// of quantized matmuls (a 30B-A3B step 48 layers × 8 experts × 2 of them), and fresh buffers for each
/// cost 4-5% of the step in the allocator (measured).
#[derive(Default)]
struct ActScratch {
    q16: Vec<i16>,
    q16_d: Vec<f32>,
    q8: ActQ8,
    /// int8 activations (`a8.rs`): x's bytes, scales and (q4) block sums, and the call's weight panels
    a8_q: Vec<u8>,
    a8_d: Vec<f32>,
    a8_s: Vec<f32>,
    a8_w: Vec<u32>,
}

thread_local! {
    static ACT: std::cell::RefCell<ActScratch> = std::cell::RefCell::new(ActScratch::default());
}

/// Runs `f` with this thread's [`ActScratch`] (a fresh one if it is in use further up the stack).
fn with_act<R>(f: impl FnOnce(&mut ActScratch) -> R) -> R {
    ACT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut s) => f(&mut s),
        Err(_) => f(&mut ActScratch::default()),
    })
}

/// Output columns are handed out in multiples of this (the widest register tile).
const COL_UNIT: usize = 4;

/// The lengths of a quantized matmul's operands (errors name the argument).
fn check_quant_args(
    x: &[f32],
    m: usize,
    w: &QuantWeight,
    bias: Option<&[f32]>,
    y: &[f32],
) -> Result<(), KernelError> {
    const OP: &str = "matmul_quant";
    let mk = m.checked_mul(w.k).ok_or_else(|| KernelError::Invalid {
        op: OP,
        msg: format!("size {m}*{} overflows", w.k),
    })?;
    check_len(OP, "x (m*k)", mk, x.len())?;
    check_len(OP, "y (m*n)", m.saturating_mul(w.n), y.len())?;
    if let Some(b) = bias {
        check_len(OP, "bias (n)", w.n, b.len())?;
    }
    Ok(())
}

/// d_x·Σq_x of every block of 32 of quantized activations `q` into `out`, block b's scale `d[b / per]`
/// (`per` blocks of 32 share a scale): the sums that multiply q4's minimums.
pub(crate) fn scaled_block_sums<T: Copy>(
    q: &[T],
    d: &[f32],
    per: usize,
    value: impl Fn(T) -> i32,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.extend(
        q.chunks_exact(BLOCK)
            .enumerate()
            .map(|(b, q)| d[b / per] * q.iter().map(|&v| value(v)).sum::<i32>() as f32),
    );
}

/// x (m, k) quantized per row and super-block of 256 for the q4 kernels: values (m, kp) int8, scales
/// (m, kp/256) and the sums of every block of 32 times its scale, d_x·Σq_x (m, kp/32), kp = k padded to
/// whole super-blocks.
#[derive(Default)]
pub struct ActQ8 {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub s: Vec<f32>,
}

impl Kernels {
    /// A packer that quantizes the rows of an (n, k) weight part by part into `format`.
    pub fn quant_packer(
        &self,
        format: QuantFormat,
        n: usize,
        k: usize,
    ) -> Result<QuantPacker, KernelError> {
        Ok(QuantPacker {
            kern: *self,
            rows: 0,
            w: QuantWeight::zeroed(format, n, k)?,
        })
    }

    /// Quantizes `w` (n, k) into `format` (threaded over rows).
    pub fn quantize_weight(
        &self,
        format: QuantFormat,
        w: Weight,
        n: usize,
        k: usize,
    ) -> Result<QuantWeight, KernelError> {
        let mut p = self.quant_packer(format, n, k)?;
        p.push(w, n)?;
        p.finish()
    }

    /// Runs `f(x row, values, scales)` for every row of x (m, k) into `q` (m·kp values) and `d` (m·nb
    /// scales), both resized (their allocations are reused), threaded over rows.
    fn quantize_rows<T: Copy + Default + Send>(
        &self,
        x: &[f32],
        (m, k): (usize, usize),
        (kp, nb): (usize, usize),
        f: &QuantizeRowFn<T>,
        (q, d): (&mut Vec<T>, &mut Vec<f32>),
    ) {
        q.clear();
        q.resize(m * kp, T::default());
        d.clear();
        d.resize(m * nb, 0.0);
        let (qp, dp) = (SendPtr(q.as_mut_ptr()), SendPtr(d.as_mut_ptr()));
        let per = (1usize << 16).div_ceil(k.max(1)).max(1);
        self.parallel_for(m.div_ceil(per), &|t| {
            for r in t * per..((t + 1) * per).min(m) {
                // Safety: task t writes rows t·per.. only; q and d hold m rows.
                let (qr, dr) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(r * kp), kp),
                        std::slice::from_raw_parts_mut(dp.get().add(r * nb), nb),
                    )
                };
                f(&x[r * k..(r + 1) * k], qr, dr);
            }
        });
    }

    /// x (m, k) quantized to int16 per row and block of 32 (see `scalar::quantize_row_a16`): (values
    /// (m, nb·32), scales (m, nb)). Threaded over rows.
    pub fn quantize_rows_a16(&self, x: &[f32], m: usize, k: usize) -> (Vec<i16>, Vec<f32>) {
        let (mut q, mut d) = (Vec::new(), Vec::new());
        self.quantize_rows_a16_into(x, m, k, (&mut q, &mut d));
        (q, d)
    }

    fn quantize_rows_a16_into(
        &self,
        x: &[f32],
        m: usize,
        k: usize,
        out: (&mut Vec<i16>, &mut Vec<f32>),
    ) {
        let nb = k.div_ceil(BLOCK);
        self.quantize_rows(
            x,
            (m, k),
            (nb * BLOCK, nb),
            &|x, q, d| scalar::quantize_row_a16(x, q, d),
            out,
        )
    }

    /// x (m, k) quantized to int8 per row and super-block of 256, with the scaled sums of its blocks of
    /// 32 (see [`ActQ8`] and `scalar::quantize_row_a8`). Threaded over rows.
    pub fn quantize_rows_a8(&self, x: &[f32], m: usize, k: usize) -> ActQ8 {
        let mut a = ActQ8::default();
        self.quantize_rows_a8_into(x, m, k, &mut a);
        a
    }

    fn quantize_rows_a8_into(&self, x: &[f32], m: usize, k: usize, a: &mut ActQ8) {
        let kp = QuantFormat::Q4.padded(k);
        let f: &QuantizeRowFn<i8> = &|x, q, d| {
            let nsb = x.len().div_ceil(Q4_SUPER);
            scalar::quantize_row_a8(x, &mut q[..nsb * Q4_SUPER], &mut d[..nsb]);
        };
        self.quantize_rows(x, (m, k), (kp, kp / Q4_SUPER), f, (&mut a.q, &mut a.d));
        let (q, d) = (&a.q, &a.d);
        scaled_block_sums(q, d, Q4_SUBS, |v| v as i32, &mut a.s);
    }

    /// The quantized-matmul kernel [`Kernels::matmul_quant`] runs: the best of this level on this CPU.
    pub fn quant_kernel(&self) -> QuantKernel {
        let all = QuantKernel::of_level(self.isa(), &self.features());
        all[all.len() - 1]
    }

    /// Every quantized-matmul kernel of this level this CPU runs, the best last (tests, benchmarks).
    pub fn quant_kernels(&self) -> Vec<QuantKernel> {
        QuantKernel::of_level(self.isa(), &self.features()).to_vec()
    }

    /// y (m, n) = x (m, k) · Wᵀ (+ bias (n)) on a quantized W, x quantized per row and block once
    /// (see the module docs). Threaded over output columns.
    pub fn matmul_quant(
        &self,
        x: &[f32],
        m: usize,
        w: &QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        self.matmul_quant_with(self.quant_kernel(), x, m, w, bias, y)
    }

    /// [`Kernels::matmul_quant`] with a [`crate::matmul::MatmulPath`]. `Fast`, where
    /// [`Kernels::quant_fast_a8`] (prefill and vision rows without AMX: q8 with VNNI, q4 at AVX-512 and
    /// AVX2 with AVX-VNNI), runs the int8-activation kernels (`a8.rs`: x quantized to int8 per block of
    /// 32); where [`Kernels::quant_fast_dequantizes`], dequantizes W a few groups at a time to bf16 and
    /// runs a float kernel on them, x not quantized:
    /// with AMX ([`Kernels::amx`]) the tile kernel — x and the dequantized weights rounded to bf16 (each
    /// ≤ 2⁻⁸ relative), sums in f32: the error of the `Fast` bf16 matmul on the dequantized weights, plus
    /// their rounding (≤ 2⁻⁹·Σ|x·w|); else (q8 at AVX-512 without VNNI) the level's packed bf16 kernel —
    /// f32 sums of x times the rounded weights. Otherwise (decode rows, and `Exact`) the integer kernels
    /// of [`Kernels::matmul_quant`].
    pub fn matmul_quant_path(
        &self,
        x: &[f32],
        m: usize,
        w: &QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
        path: crate::matmul::MatmulPath,
    ) -> Result<(), KernelError> {
        if path == crate::matmul::MatmulPath::Fast && w.n > 0 && w.k > 0 {
            if self.quant_fast_a8(w.format, m) {
                return self.matmul_quant_a8_with(self.quant_kernel(), x, m, w, bias, y);
            }
            if self.quant_fast_dequantizes(w.format, m) {
                check_quant_args(x, m, w, bias, y)?;
                #[cfg(target_arch = "x86_64")]
                if self.amx() {
                    return self.matmul_quant_amx(x, m, w, bias, y);
                }
                return self.matmul_quant_bf16(x, m, w, bias, y);
            }
        }
        self.matmul_quant(x, m, w, bias, y)
    }

    /// Whether the `Fast` quantized matmul of `m` rows on a W of `format` dequantizes W (a few groups at
    /// a time) and runs a float kernel rather than the integer kernels: from
    /// [`crate::matmul::QUANT_DEQUANT_MIN_M`] rows with AMX (tiles), or at the AVX-512 level for q8 (its
    /// packed bf16 kernel). Chosen by measurement (2B, prefill, Intel Xeon with AMX off): q8 at AVX-512
    /// 55.9 / 66.3 tok/s (256 / 512 tokens) against the W8A16 integer kernel's 40.9; at AVX2 37.7 against
    /// 44.4 (256 tokens); q4 35.5 against its W4A8 integer kernel's 76.6. Never where
    /// [`Kernels::quant_fast_a8`] (the int8-activation kernels run instead).
    pub fn quant_fast_dequantizes(&self, format: QuantFormat, m: usize) -> bool {
        m >= crate::matmul::QUANT_DEQUANT_MIN_M
            && (self.amx() || (self.isa() == Isa::Avx512 && format == QuantFormat::Q8))
            && !self.quant_fast_a8(format, m)
    }

    /// What the quantized matmul of `format` runs on `path`, for plans: the kernel of decode rows, then
    /// that of many rows (prefill, vision) and from how many, where it differs.
    pub fn quant_path_description(
        &self,
        format: QuantFormat,
        path: crate::matmul::MatmulPath,
    ) -> String {
        let per = match format {
            QuantFormat::Q8 => "block of 32",
            QuantFormat::Q4 => "super-block of 256",
        };
        let decode = format!(
            "int matmul {} ({format} weights x {} activations per {per})",
            self.quant_kernel(),
            format.activations()
        );
        if path != crate::matmul::MatmulPath::Fast {
            return decode;
        }
        let (a8_m, dq_m) = (a8::min_rows(format), crate::matmul::QUANT_DEQUANT_MIN_M);
        let (m, many) = if self.quant_fast_a8(format, a8_m) {
            (a8_m, "column panels x int8 activations per block of 32")
        } else if !self.quant_fast_dequantizes(format, dq_m) {
            return decode;
        } else if self.amx() {
            (dq_m, "dequantized to bf16 on AMX tiles")
        } else {
            (dq_m, "dequantized to bf16 for the packed kernel")
        };
        format!("{decode}; {m}+ rows: {many}")
    }

    /// An error naming `op` unless `kernel` is one of [`Kernels::quant_kernels`].
    fn check_quant_kernel(&self, op: &'static str, kernel: QuantKernel) -> Result<(), KernelError> {
        let ok = QuantKernel::of_level(self.isa(), &self.features());
        if ok.contains(&kernel) {
            return Ok(());
        }
        let names: Vec<&str> = ok.iter().map(|k| k.name()).collect();
        Err(KernelError::Invalid {
            op,
            msg: format!(
                "kernel {kernel} is not one of this level's on this CPU ({})",
                names.join(", ")
            ),
        })
    }

    /// [`Kernels::matmul_quant`] on a chosen kernel, one of [`Kernels::quant_kernels`] (else an error).
    pub fn matmul_quant_with(
        &self,
        kernel: QuantKernel,
        x: &[f32],
        m: usize,
        w: &QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        self.check_quant_kernel("matmul_quant", kernel)?;
        let (n, k) = (w.n, w.k);
        check_quant_args(x, m, w, bias, y)?;
        if m == 0 || n == 0 {
            return Ok(());
        }
        let bias = bias.map_or(std::ptr::null(), |b| b.as_ptr());
        match w.format {
            QuantFormat::Q8 => with_act(|act| {
                let (xq, xd) = (&mut act.q16, &mut act.q16_d);
                self.quantize_rows_a16_into(x, m, k, (xq, xd));
                let a = QArgs {
                    xq: xq.as_ptr(),
                    xd: xd.as_ptr(),
                    m,
                    n,
                    nb: w.blocks(),
                    wq: w.qs_bytes().as_ptr() as *const i8,
                    wd: w.d.as_ptr(),
                    bias,
                    y: y.as_mut_ptr(),
                };
                let f = table(kernel).q8_range;
                // Safety: the level's table is only reached on a CPU that has it (Kernels was made
                // after detection); all sizes were checked above; tasks write disjoint columns.
                self.for_columns(n, m * n * k.max(1), &|c0, c1| unsafe { f(&a, c0, c1) });
            }),
            QuantFormat::Q4 => with_act(|act| {
                let xa = &mut act.q8;
                self.quantize_rows_a8_into(x, m, k, xa);
                let t = table(kernel);
                group_activations(&mut xa.q, t.q4_group);
                let a = Q4Args {
                    xq: xa.q.as_ptr(),
                    xd: xa.d.as_ptr(),
                    xs: xa.s.as_ptr(),
                    m,
                    n,
                    nsb: w.blocks() / Q4_SUBS,
                    wq: w.qs_bytes().as_ptr(),
                    wd: w.d.as_ptr(),
                    bias,
                    y: y.as_mut_ptr(),
                };
                let f = t.q4_range;
                // Safety: as for q8.
                self.for_columns(n, m * n * k.max(1), &|c0, c1| unsafe { f(&a, c0, c1) });
            }),
        }
        Ok(())
    }

    /// Runs `f(c0, c1)` over the output columns 0..n in the matmul's guided ranges (large first, ~32K
    /// multiply-adds last), in multiples of the widest register tile.
    fn for_columns(&self, n: usize, work: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        self.for_units(n, COL_UNIT, work, f)
    }

    /// Runs `f(c0, c1)` over 0..n in the matmul's guided ranges, in multiples of `unit`.
    fn for_units(&self, n: usize, unit: usize, work: usize, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.threads() <= 1 {
            return f(0, n);
        }
        let units = n.div_ceil(unit);
        let bounds = crate::matmul::chunks(units, self.threads(), work);
        self.parallel_for(bounds.len() - 1, &|t| {
            let (c0, c1) = (bounds[t] * unit, (bounds[t + 1] * unit).min(n));
            if c0 < c1 {
                f(c0, c1)
            }
        });
    }
}
