//! The packed form of a weight ([`PackedWeight`]) and the packer that fills it part by part
//! ([`WeightPacker`]); the layout is described in the module docs of `matmul`.

use super::buf::AlignedBuf;
use super::{check_len, mul, scalar, Isa, KernelError, Kernels, Weight};
use crate::SendPtr;

#[derive(Clone, Debug)]
pub(crate) enum PackedData {
    /// groups × (k+1)/2 pairs × G rows × 2
    Bf16(AlignedBuf<u16>),
    /// groups × k × G
    F32(AlignedBuf<f32>),
}

/// A weight repacked once (at load) into the panel layout of one ISA's microkernel; see the module docs.
#[derive(Clone, Debug)]
pub struct PackedWeight {
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) isa: Isa,
    /// G: output rows per group.
    pub(crate) group: usize,
    /// gate and up rows interleaved per half-group, silu(gate)·up in the epilogue (see
    /// [`Kernels::pack_swiglu`]); `n` is then the number of outputs I.
    pub(crate) swiglu: bool,
    pub(crate) data: PackedData,
}

impl PackedWeight {
    /// Output features (rows of W; for a SwiGLU pair, I: the outputs of silu(gate)·up).
    pub fn n(&self) -> usize {
        self.n
    }
    /// Input features (columns of W).
    pub fn k(&self) -> usize {
        self.k
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match &self.data {
            PackedData::Bf16(v) => v.len() * 2,
            PackedData::F32(v) => v.len() * 4,
        }
    }
    /// The stored panels as raw bytes (e.g. for a bandwidth probe over the memory decode streams).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.data {
            PackedData::Bf16(v) => crate::roofline::as_bytes(v),
            PackedData::F32(v) => crate::roofline::as_bytes(v),
        }
    }
    /// Whether the weight is stored as bf16.
    pub fn is_bf16(&self) -> bool {
        matches!(self.data, PackedData::Bf16(_))
    }
    /// The ISA level whose layout this is.
    pub fn isa(&self) -> Isa {
        self.isa
    }
    /// Whether transparent huge pages may back the storage (see the storage notes in `buf.rs`).
    pub fn huge_pages_advised(&self) -> bool {
        match &self.data {
            PackedData::Bf16(v) => v.huge_pages_advised(),
            PackedData::F32(v) => v.huge_pages_advised(),
        }
    }
    /// Whether this is a gate/up pair with silu(gate)·up in the epilogue ([`Kernels::pack_swiglu`]).
    pub fn is_swiglu(&self) -> bool {
        self.swiglu
    }
    pub(crate) fn groups(&self) -> usize {
        self.n.div_ceil(self.cols_per_group())
    }
    /// Outputs per group: G, or G/2 for a SwiGLU pair.
    fn cols_per_group(&self) -> usize {
        if self.swiglu {
            self.group / 2
        } else {
            self.group
        }
    }

    /// Row `r` of W (k values) widened to f32 into `out`: the exact values that were packed (bf16 widened),
    /// gathered from the panels. Lets an embedding table tied to this weight be read from the packed copy.
    pub fn row_f32(&self, r: usize, out: &mut [f32]) -> Result<(), KernelError> {
        const OP: &str = "packed row_f32";
        check_len(OP, "out (k)", self.k, out.len())?;
        if self.swiglu {
            return Err(KernelError::Invalid {
                op: OP,
                msg: "rows of a gate/up pair packed for the SwiGLU epilogue are not plain rows"
                    .into(),
            });
        }
        if r >= self.n {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!("row {r} of a weight with n = {} rows", self.n),
            });
        }
        let (g, k) = (self.group, self.k);
        let (j, rr) = (r / g, r % g);
        match &self.data {
            PackedData::Bf16(w) => {
                let wg = &w[j * k.div_ceil(2) * g * 2..];
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = scalar::bf16_to_f32(wg[((kk / 2) * g + rr) * 2 + kk % 2]);
                }
            }
            PackedData::F32(w) => {
                let wg = &w[j * k * g..];
                for (kk, o) in out.iter_mut().enumerate() {
                    *o = wg[kk * g + rr];
                }
            }
        }
        Ok(())
    }
}

/// Packs a weight whose rows arrive in parts, each written straight into the packed storage (no
/// concatenated copy of the sources; a part converted to f32 by the caller can be dropped once pushed).
pub struct WeightPacker {
    pub(crate) kern: Kernels,
    /// rows received so far
    pub(crate) rows: usize,
    pub(crate) w: PackedWeight,
}

impl WeightPacker {
    /// Appends `rows` rows of W: `part` is (rows, k), row-major. Threaded over rows.
    pub fn push(&mut self, part: Weight, rows: usize) -> Result<(), KernelError> {
        const OP: &str = "pack_weight";
        let (k, g) = (self.w.k, self.w.group);
        let n = self.total_rows();
        check_len(OP, "part (rows*k)", mul(OP, rows, k)?, part.len())?;
        if rows > n - self.rows {
            return Err(KernelError::Invalid {
                op: OP,
                msg: format!(
                    "a part of {rows} rows after {} rows is more than the weight's {n} rows",
                    self.rows
                ),
            });
        }
        let r0 = self.rows;
        let kp = k.div_ceil(2);
        let place = Place {
            g,
            n: self.w.n,
            swiglu: self.w.swiglu,
        };
        // Rows go in runs of up to 16 consecutive rows of one group (16 rows' pairs fill a cache line):
        // each line of the panel is written whole, from 16 source rows read in step.
        // (group, slot of row i, rows from i on in consecutive slots of that group)
        let run = |i: usize, i1: usize| {
            let (j, slot, left) = place.of(r0 + i);
            (j, slot, left.min(16 - slot % 16).min(i1 - i))
        };
        match (&mut self.w.data, part) {
            (PackedData::Bf16(out), Weight::Bf16(src)) => {
                // group j: for p in 0..kp, for r in 0..G: [w[jG+r][2p], w[jG+r][2p+1]] (0 outside)
                let gsize = kp * g * 2;
                let out = SendPtr(out.as_mut_ptr());
                self.kern.run_ranges(rows, rows * k, &|i0, i1| {
                    let mut i = i0;
                    while i < i1 {
                        let (j, slot, c) = run(i, i1);
                        let s = src[i * k..(i + c) * k].as_ptr();
                        // Safety: rows i..i+c are slots slot..slot+c of group j, written by this task only;
                        // the reads are inside the rows just sliced.
                        unsafe {
                            let dst = out.get().add(j * gsize + slot * 2);
                            // a pair moves as one 32-bit word (same bytes); the destination index is
                            // even, so the word is aligned
                            for p in 0..k / 2 {
                                let d = dst.add(p * g * 2) as *mut u32;
                                for r in 0..c {
                                    *d.add(r) =
                                        (s.add(r * k + 2 * p) as *const u32).read_unaligned();
                                }
                            }
                            // odd k: the last pair holds one value (the other stays 0)
                            if k % 2 == 1 {
                                let d = dst.add((k / 2) * g * 2);
                                for r in 0..c {
                                    *d.add(r * 2) = *s.add(r * k + k - 1);
                                }
                            }
                        }
                        i += c;
                    }
                });
            }
            (PackedData::F32(out), part) => {
                // group j: for kk in 0..k, for r in 0..G: w[jG+r][kk] (0 outside)
                let gsize = k * g;
                let out = SendPtr(out.as_mut_ptr());
                self.kern.run_ranges(rows, rows * k, &|i0, i1| {
                    let mut i = i0;
                    while i < i1 {
                        let (j, slot, c) = run(i, i1);
                        // Safety: as above.
                        let dst = unsafe { out.get().add(j * gsize + slot) };
                        for kk in 0..k {
                            for r in 0..c {
                                let v = match part {
                                    Weight::Bf16(src) => scalar::bf16_to_f32(src[(i + r) * k + kk]),
                                    Weight::F32(src) => src[(i + r) * k + kk],
                                };
                                unsafe { *dst.add(kk * g + r) = v };
                            }
                        }
                        i += c;
                    }
                });
            }
            (PackedData::Bf16(_), Weight::F32(_)) => {
                return Err(KernelError::Invalid {
                    op: OP,
                    msg: "an f32 part for a weight packed as bf16".into(),
                })
            }
        }
        self.rows += rows;
        Ok(())
    }

    /// The packed weight, once all rows have been pushed.
    pub fn finish(self) -> Result<PackedWeight, KernelError> {
        if self.rows != self.total_rows() {
            return Err(KernelError::Invalid {
                op: "pack_weight",
                msg: format!("{} rows pushed of {}", self.rows, self.total_rows()),
            });
        }
        Ok(self.w)
    }

    /// Rows the packer takes: n, or 2·I (gate then up) for a SwiGLU pair.
    fn total_rows(&self) -> usize {
        if self.w.swiglu {
            2 * self.w.n
        } else {
            self.w.n
        }
    }
}

/// Where the packer puts pushed row t.
#[derive(Clone, Copy)]
struct Place {
    g: usize,
    /// outputs (n, or I of a SwiGLU pair)
    n: usize,
    swiglu: bool,
}

impl Place {
    /// (group, slot in the group, slots from there on that take consecutive rows). A SwiGLU pair puts gate
    /// row t in group t/(G/2), slot t%(G/2), and up row t in the same group, slot G/2 + t%(G/2).
    #[inline]
    fn of(self, t: usize) -> (usize, usize, usize) {
        if self.swiglu {
            let h = self.g / 2;
            let (u, off) = if t < self.n { (t, 0) } else { (t - self.n, h) };
            (u / h, off + u % h, h - u % h)
        } else {
            (t / self.g, t % self.g, self.g - t % self.g)
        }
    }
}
