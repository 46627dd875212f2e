//! Quantized linear layers: `y (m, n) = x (m, k) · Wᵀ + b` with W stored in 8 bits and int8 dot products.
//!
//! Format **q8**: each row of W (n, k) is cut into blocks of 32 along k (the last one zero-padded, so any k
//! works); a block stores 32 signed bytes q and one f32 scale d = max|w| / 127, w ≈ q·d (round to nearest
//! even: |w - q·d| ≤ d/2). 9 bits per weight (ggml's Q8_0 stores an f16 scale: 8.5). Layout: `qs` (n, nb·32)
//! bytes row-major, `d` (n, nb) f32, nb = ⌈k/32⌉.
//!
//! The matmul quantizes each row of x once per call, per block of 32 too, to int16 (d_x = max|x| / 32767:
//! W8A16 with dynamic per-block activation scales; why not int8 is in `simd/int.rs`) and computes
//! `y[i][c] = Σ_b d_w[c][b] · d_x[i][b] · Σ_{block b} q_w · q_x` with exact integer block sums. Decode (GEMV)
//! and prefill (GEMM) run the same register-tiled kernel (`kernel.rs`), threaded over output columns.
//! Error against the float product of the *unquantized* x and W: ≤ Σ_b (d_w/2 · Σ|x| + d_x/2 · Σ|w| +
//! d_w·d_x/4 · 32) over the blocks of each output, plus f32 accumulation (tested against f64).
//!
//! Every level has a scalar twin (`scalar.rs`); AVX-512 CPUs run the AVX2 instantiation for now.

pub(crate) mod kernel;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use std::fmt;

use crate::isa::Isa;
use crate::matmul::buf::AlignedBuf;
use crate::matmul::Weight;
use crate::ops::check_len;
use crate::simd::int::BLOCK;
use crate::{KernelError, Kernels};

/// A quantization format of weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantFormat {
    /// 8-bit, one f32 scale per block of 32 along k.
    Q8,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 1] = [QuantFormat::Q8];

    /// The spelling of the CLI and of checkpoint metadata.
    pub const fn name(self) -> &'static str {
        match self {
            QuantFormat::Q8 => "q8",
        }
    }

    pub fn parse(s: &str) -> Option<QuantFormat> {
        QuantFormat::ALL.into_iter().find(|f| f.name() == s)
    }

    /// Values of k per block.
    pub const fn block(self) -> usize {
        BLOCK
    }

    /// Bytes of quantized values per row of k values (padded to whole blocks).
    pub const fn row_bytes(self, k: usize) -> usize {
        k.div_ceil(BLOCK) * BLOCK
    }

    /// Scales per row of k values.
    pub const fn row_scales(self, k: usize) -> usize {
        k.div_ceil(BLOCK)
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Range function of one level: output columns c0..c1 for every row of x.
pub(crate) type QRangeFn = unsafe fn(&QArgs, usize, usize);

pub(crate) struct QTable {
    pub q8_range: QRangeFn,
}

static SCALAR: QTable = QTable {
    q8_range: scalar::q8_range,
};

fn table(isa: Isa) -> &'static QTable {
    #[cfg(target_arch = "x86_64")]
    {
        match isa {
            Isa::Scalar => &SCALAR,
            Isa::Sse41 => &x86::SSE41,
            // AVX-512 CPUs have AVX2: they run its instantiation (see the module docs).
            Isa::Avx2 | Isa::Avx512 => &x86::AVX2,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = isa;
        &SCALAR
    }
}

/// The operands of one quantized matmul as the range functions see them. Raw pointers: the tasks of one
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

/// A weight (n, k) quantized for this crate's int8 kernels (see the module docs for the layout).
pub struct QuantWeight {
    format: QuantFormat,
    n: usize,
    k: usize,
    /// (n, nb·32) bytes, viewed as i8; stored as u32 for alignment
    qs: AlignedBuf<u32>,
    /// (n, nb)
    d: AlignedBuf<f32>,
}

impl QuantWeight {
    pub fn format(&self) -> QuantFormat {
        self.format
    }
    /// Output rows.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input length.
    pub fn k(&self) -> usize {
        self.k
    }
    /// Blocks per row.
    pub fn blocks(&self) -> usize {
        self.format.row_scales(self.k)
    }
    /// Bytes held (values and scales).
    pub fn bytes(&self) -> usize {
        self.qs.len() * 4 + self.d.len() * 4
    }
    /// The quantized values (n, nb·32) as bytes (two's complement i8).
    pub fn qs_bytes(&self) -> &[u8] {
        // Safety: u32 storage viewed as its bytes; every bit pattern is a valid u8.
        unsafe { std::slice::from_raw_parts(self.qs.as_ptr() as *const u8, self.qs.len() * 4) }
    }
    fn qs_i8(&self) -> &[i8] {
        // Safety: as `qs_bytes`.
        unsafe { std::slice::from_raw_parts(self.qs.as_ptr() as *const i8, self.qs.len() * 4) }
    }
    fn qs_i8_mut(&mut self) -> &mut [i8] {
        // Safety: as `qs_bytes`, exclusively borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(self.qs.as_mut_ptr() as *mut i8, self.qs.len() * 4)
        }
    }
    /// The scales (n, nb).
    pub fn scales(&self) -> &[f32] {
        &self.d
    }

    /// An all-zero weight of this format and shape, to be filled.
    fn zeroed(format: QuantFormat, n: usize, k: usize) -> Result<QuantWeight, KernelError> {
        const OP: &str = "quantize";
        let rb = format.row_bytes(k);
        let len = n.checked_mul(rb).ok_or_else(|| KernelError::Invalid {
            op: OP,
            msg: format!("size {n}*{rb} overflows"),
        })?;
        Ok(QuantWeight {
            format,
            n,
            k,
            qs: AlignedBuf::zeroed(OP, len / 4)?,
            d: AlignedBuf::zeroed(OP, n * format.row_scales(k))?,
        })
    }

    /// A weight from stored parts (a quantized checkpoint): `qs` (n, nb·32) bytes and `d` (n, nb) scales,
    /// which must be finite and ≥ 0. The bytes are copied into aligned storage.
    pub fn from_parts(
        format: QuantFormat,
        n: usize,
        k: usize,
        qs: &[u8],
        d: &[f32],
    ) -> Result<QuantWeight, KernelError> {
        let mut p = QuantPacker {
            kern: Kernels::new(Isa::Scalar).expect("scalar is always available"),
            rows: 0,
            w: QuantWeight::zeroed(format, n, k)?,
        };
        p.push_quantized(qs, d, n)?;
        p.finish()
    }

    /// Row `r` dequantized (k values): q·d.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        const OP: &str = "quantized row_f32";
        check_len(OP, "out (k)", self.k, out.len())?;
        if r >= self.n {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!("row {r} of a weight with n = {} rows", self.n),
            });
        }
        let (rb, nb) = (self.format.row_bytes(self.k), self.blocks());
        let q = &self.qs_i8()[r * rb..];
        let d = &self.d[r * nb..];
        for (i, o) in out.iter_mut().enumerate() {
            *o = q[i] as f32 * d[i / BLOCK];
        }
        Ok(())
    }
}

/// Quantizes the rows of a weight that arrive in parts (q|k|v, gate|up), straight into the quantized
/// storage: no concatenated or widened copy of the whole weight.
pub struct QuantPacker {
    kern: Kernels,
    rows: usize,
    w: QuantWeight,
}

impl QuantPacker {
    /// Quantizes the next `rows` rows (part: (rows, k)), threaded over rows.
    pub fn push(&mut self, part: Weight, rows: usize) -> Result<(), KernelError> {
        const OP: &str = "quantize";
        let k = self.w.k;
        let len = match part {
            Weight::F32(w) => w.len(),
            Weight::Bf16(w) => w.len(),
        };
        check_len(OP, "part (rows*k)", rows.saturating_mul(k), len)?;
        if self.rows + rows > self.w.n {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "{} rows pushed into a weight of {} rows",
                    self.rows + rows,
                    self.w.n
                ),
            });
        }
        let (rb, nb, r0) = (self.w.format.row_bytes(k), self.w.blocks(), self.rows);
        let qs = SendPtr(self.w.qs_i8_mut()[r0 * rb..].as_mut_ptr());
        let d = SendPtr(self.w.d[r0 * nb..].as_mut_ptr());
        let per = 64usize;
        self.kern.parallel_for(rows.div_ceil(per), &|t| {
            let mut row = vec![0f32; k];
            for r in t * per..((t + 1) * per).min(rows) {
                match part {
                    Weight::F32(w) => row.copy_from_slice(&w[r * k..(r + 1) * k]),
                    Weight::Bf16(w) => {
                        for (o, &b) in row.iter_mut().zip(&w[r * k..(r + 1) * k]) {
                            *o = f32::from_bits((b as u32) << 16);
                        }
                    }
                }
                // Safety: task t writes rows t·per.. of this part only; the storage holds them.
                let (q, dd) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qs.get().add(r * rb), rb),
                        std::slice::from_raw_parts_mut(d.get().add(r * nb), nb),
                    )
                };
                scalar::quantize_row_q8(&row, q, dd);
            }
        });
        self.rows += rows;
        Ok(())
    }

    /// Appends `rows` rows already quantized in this format (a quantized checkpoint): values `qs`
    /// (rows, row bytes) and scales `d` (rows, blocks), which must be finite and ≥ 0. Copied as they are.
    pub fn push_quantized(&mut self, qs: &[u8], d: &[f32], rows: usize) -> Result<(), KernelError> {
        const OP: &str = "quantized weight";
        let (rb, nb, r0) = (
            self.w.format.row_bytes(self.w.k),
            self.w.blocks(),
            self.rows,
        );
        check_len(
            OP,
            "values (rows * row bytes)",
            rows.saturating_mul(rb),
            qs.len(),
        )?;
        check_len(
            OP,
            "scales (rows * blocks)",
            rows.saturating_mul(nb),
            d.len(),
        )?;
        if r0 + rows > self.w.n {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "{} rows pushed into a weight of {} rows",
                    r0 + rows,
                    self.w.n
                ),
            });
        }
        if let Some(i) = d.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "scale of row {} block {} is {} (scales must be finite and >= 0)",
                    i / nb.max(1),
                    i % nb.max(1),
                    d[i]
                ),
            });
        }
        // Safety: u32 storage viewed as bytes, exclusively borrowed.
        let dst = unsafe {
            std::slice::from_raw_parts_mut(self.w.qs.as_mut_ptr() as *mut u8, self.w.qs.len() * 4)
        };
        dst[r0 * rb..(r0 + rows) * rb].copy_from_slice(qs);
        self.w.d[r0 * nb..(r0 + rows) * nb].copy_from_slice(d);
        self.rows += rows;
        Ok(())
    }

    pub fn finish(self) -> Result<QuantWeight, KernelError> {
        check_len("quantize", "rows pushed", self.w.n, self.rows)?;
        Ok(self.w)
    }
}

#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// Safety: the tasks sharing one write disjoint elements.
unsafe impl<T> Sync for SendPtr<T> {}
unsafe impl<T> Send for SendPtr<T> {}
impl<T> SendPtr<T> {
    fn get(self) -> *mut T {
        self.0
    }
}

/// Output columns are handed out in multiples of this (the widest register tile).
const COL_UNIT: usize = 4;

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

    /// x (m, k) quantized to int16 per row and block of 32 (see `scalar::quantize_row_a16`): (values
    /// (m, nb·32), scales (m, nb)). Threaded over rows.
    pub fn quantize_rows_a16(&self, x: &[f32], m: usize, k: usize) -> (Vec<i16>, Vec<f32>) {
        let (rb, nb) = (k.div_ceil(BLOCK) * BLOCK, k.div_ceil(BLOCK));
        let mut q = vec![0i16; m * rb];
        let mut d = vec![0f32; m * nb];
        let (qp, dp) = (SendPtr(q.as_mut_ptr()), SendPtr(d.as_mut_ptr()));
        let per = (1usize << 16).div_ceil(k.max(1)).max(1);
        self.parallel_for(m.div_ceil(per), &|t| {
            for r in t * per..((t + 1) * per).min(m) {
                // Safety: task t writes rows t·per.. only; q and d hold m rows.
                let (qr, dr) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(qp.get().add(r * rb), rb),
                        std::slice::from_raw_parts_mut(dp.get().add(r * nb), nb),
                    )
                };
                scalar::quantize_row_a16(&x[r * k..(r + 1) * k], qr, dr);
            }
        });
        (q, d)
    }

    /// y (m, n) = x (m, k) · Wᵀ (+ bias (n)) on a quantized W, x quantized to int8 per row and block once
    /// (see the module docs). Threaded over output columns.
    pub fn matmul_quant(
        &self,
        x: &[f32],
        m: usize,
        w: &QuantWeight,
        bias: Option<&[f32]>,
        y: &mut [f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "matmul_quant";
        let (n, k) = (w.n, w.k);
        let mk = m.checked_mul(k).ok_or_else(|| KernelError::Invalid {
            op: OP,
            msg: format!("size {m}*{k} overflows"),
        })?;
        check_len(OP, "x (m*k)", mk, x.len())?;
        check_len(OP, "y (m*n)", m.saturating_mul(n), y.len())?;
        if let Some(b) = bias {
            check_len(OP, "bias (n)", n, b.len())?;
        }
        if m == 0 || n == 0 {
            return Ok(());
        }
        let (xq, xd) = self.quantize_rows_a16(x, m, k);
        let a = QArgs {
            xq: xq.as_ptr(),
            xd: xd.as_ptr(),
            m,
            n,
            nb: w.blocks(),
            wq: w.qs_i8().as_ptr(),
            wd: w.d.as_ptr(),
            bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
            y: y.as_mut_ptr(),
        };
        let f = table(self.isa()).q8_range;
        let units = n.div_ceil(COL_UNIT);
        // The matmul's guided ranges: large first, ~32K multiply-adds last.
        let bounds = crate::matmul::chunks(units, self.threads(), m * n * k.max(1));
        self.parallel_for(bounds.len() - 1, &|t| {
            let (c0, c1) = (bounds[t] * COL_UNIT, (bounds[t + 1] * COL_UNIT).min(n));
            if c0 < c1 {
                // Safety: the level's table is only reached on a CPU that has it (Kernels was made after
                // detection); all sizes were checked above; tasks write disjoint columns.
                unsafe { f(&a, c0, c1) }
            }
        });
        Ok(())
    }
}
