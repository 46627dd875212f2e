//! The quantized weight ([`QuantWeight`]: values and scales in aligned storage) and its row-by-row
//! quantizer ([`QuantPacker`]); the layouts are in the module docs of `quant`.

use super::{scalar, QuantFormat};
use crate::isa::Isa;
use crate::matmul::buf::{AlignedBuf, StableBytes};
use crate::matmul::Weight;
use crate::ops::check_len;
use crate::simd::int::BLOCK;
use crate::SendPtr;
use crate::{KernelError, Kernels};
use std::sync::Arc;

/// A weight (n, k) quantized for this crate's integer kernels (see the module docs for the layouts).
pub struct QuantWeight {
    pub(super) format: QuantFormat,
    pub(super) n: usize,
    pub(super) k: usize,
    /// (n, row bytes); stored as u32 for alignment (row bytes are a multiple of 4 in every format)
    qs: AlignedBuf<u32>,
    /// (n, row scales)
    pub(super) d: AlignedBuf<f32>,
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
    /// Blocks of 32 per row (k padded to the format's block, over 32).
    pub fn blocks(&self) -> usize {
        self.format.padded(self.k) / BLOCK
    }
    /// Bytes held (values and scales).
    pub fn bytes(&self) -> usize {
        self.qs.len() * 4 + self.d.len() * 4
    }
    /// The quantized values (n, row bytes) as stored (q8: two's complement i8; q4: see the module docs).
    pub fn qs_bytes(&self) -> &[u8] {
        // Safety: u32 storage viewed as its bytes; every bit pattern is a valid u8.
        unsafe { std::slice::from_raw_parts(self.qs.as_ptr() as *const u8, self.qs.len() * 4) }
    }
    fn qs_bytes_mut(&mut self) -> &mut [u8] {
        // Safety: as `qs_bytes`, exclusively borrowed.
        unsafe {
            std::slice::from_raw_parts_mut(self.qs.as_mut_ptr() as *mut u8, self.qs.len() * 4)
        }
    }
    /// The scales (n, row scales).
    pub fn scales(&self) -> &[f32] {
        &self.d
    }

    /// An all-zero weight of this format and shape, to be filled.
    pub(super) fn zeroed(
        format: QuantFormat,
        n: usize,
        k: usize,
    ) -> Result<QuantWeight, KernelError> {
        const OP: &str = "quantize";
        let rb = format.row_bytes(k);
        debug_assert!(rb.is_multiple_of(4));
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

    /// A weight from stored parts (a quantized checkpoint): `qs` (n, row bytes) and `d` (n, row scales)
    /// scales, which must be finite and ≥ 0. The bytes are copied into aligned storage.
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

    /// A weight whose values and scales are bytes of `owner`s used in place (a quantized checkpoint's
    /// mapping): `qs` (n, row bytes) from byte `qs_at` of its owner, `d` (n, row scales) f32 from byte
    /// `d_at` of its owner. Both must lie inside their owner at 64-byte-aligned addresses (else an error:
    /// the caller copies instead, [`QuantWeight::from_parts`]); the scales are checked as there (finite,
    /// ≥ 0), the values need no check (every byte pattern is valid in both formats).
    pub fn from_shared(
        format: QuantFormat,
        n: usize,
        k: usize,
        (qs_owner, qs_at): (Arc<dyn StableBytes>, usize),
        (d_owner, d_at): (Arc<dyn StableBytes>, usize),
    ) -> Result<QuantWeight, KernelError> {
        const OP: &str = "quantized weight";
        let (rb, ns) = (format.row_bytes(k), format.row_scales(k));
        let len = |per: usize| {
            n.checked_mul(per).ok_or_else(|| KernelError::Invalid {
                op: OP,
                msg: format!("size {n}*{per} overflows"),
            })
        };
        let w = QuantWeight {
            format,
            n,
            k,
            qs: AlignedBuf::shared(OP, qs_owner, qs_at, len(rb)? / 4)?,
            d: AlignedBuf::shared(OP, d_owner, d_at, len(ns)?)?,
        };
        check_scales(OP, format, &w.d, ns)?;
        Ok(w)
    }

    /// Whether the values are used in place from their owner's bytes ([`QuantWeight::from_shared`]).
    pub fn is_shared(&self) -> bool {
        self.qs.is_shared()
    }

    /// Row `r` dequantized (k values): the values the matmul multiplies by.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        const OP: &str = "quantized row_f32";
        check_len(OP, "out (k)", self.k, out.len())?;
        if r >= self.n {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!("row {r} of a weight with n = {} rows", self.n),
            });
        }
        let (rb, ns) = (
            self.format.row_bytes(self.k),
            self.format.row_scales(self.k),
        );
        let q = &self.qs_bytes()[r * rb..(r + 1) * rb];
        let d = &self.d[r * ns..(r + 1) * ns];
        match self.format {
            QuantFormat::Q8 => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = q[i] as i8 as f32 * d[i / BLOCK];
                }
            }
            QuantFormat::Q4 => scalar::dequantize_row_q4(q, d, out),
        }
        Ok(())
    }
}

/// Quantizes the rows of a weight that arrive in parts (q|k|v, gate|up), straight into the quantized
/// storage: no concatenated or widened copy of the whole weight.
pub struct QuantPacker {
    pub(super) kern: Kernels,
    pub(super) rows: usize,
    pub(super) w: QuantWeight,
}

impl QuantPacker {
    /// The format rows are quantized to.
    pub fn format(&self) -> QuantFormat {
        self.w.format
    }

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
        let format = self.w.format;
        let (rb, ns, r0) = (format.row_bytes(k), format.row_scales(k), self.rows);
        let qs = SendPtr(self.w.qs_bytes_mut()[r0 * rb..].as_mut_ptr());
        let d = SendPtr(self.w.d[r0 * ns..].as_mut_ptr());
        let per = 64usize;
        // the q8 quantizer of the level (bit for bit `scalar::quantize_row_q8`)
        let q8_row = super::table(self.kern.quant_kernel()).q8_row;
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
                        std::slice::from_raw_parts_mut(d.get().add(r * ns), ns),
                    )
                };
                match format {
                    // Safety: the level's quantizer on this CPU; q and dd hold one row.
                    QuantFormat::Q8 => unsafe { q8_row(&row, q, dd, 0) },
                    QuantFormat::Q4 => scalar::quantize_row_q4(&row, q, dd),
                }
            }
        });
        self.rows += rows;
        Ok(())
    }

    /// Appends `rows` rows already quantized in this format (a quantized checkpoint): values `qs`
    /// (rows, row bytes) and scales `d` (rows, row scales), which must be finite and ≥ 0. Copied as they
    /// are (every byte pattern of the values is valid in both formats).
    pub fn push_quantized(&mut self, qs: &[u8], d: &[f32], rows: usize) -> Result<(), KernelError> {
        const OP: &str = "quantized weight";
        let format = self.w.format;
        let (rb, ns, r0) = (
            format.row_bytes(self.w.k),
            format.row_scales(self.w.k),
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
            "scales (rows * row scales)",
            rows.saturating_mul(ns),
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
        check_scales(OP, format, d, ns)?;
        self.w.qs_bytes_mut()[r0 * rb..(r0 + rows) * rb].copy_from_slice(qs);
        self.w.d[r0 * ns..(r0 + rows) * ns].copy_from_slice(d);
        self.rows += rows;
        Ok(())
    }

    pub fn finish(self) -> Result<QuantWeight, KernelError> {
        check_len("quantize", "rows pushed", self.w.n, self.rows)?;
        Ok(self.w)
    }
}

/// Scales `d` (rows of `ns`) of a stored weight: each finite and ≥ 0, else an error naming the first bad one.
fn check_scales(
    op: &'static str,
    format: QuantFormat,
    d: &[f32],
    ns: usize,
) -> Result<(), KernelError> {
    if let Some(i) = d.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        let (row, s) = (i / ns.max(1), i % ns.max(1));
        let which = match format {
            QuantFormat::Q8 => format!("scale of row {row} block {s}"),
            QuantFormat::Q4 => format!(
                "{} of row {row} super-block {}",
                if s % 2 == 0 { "scale" } else { "min scale" },
                s / 2
            ),
        };
        return Err(KernelError::Invalid {
            op,
            msg: format!("{which} is {} (scales must be finite and >= 0)", d[i]),
        });
    }
    Ok(())
}
