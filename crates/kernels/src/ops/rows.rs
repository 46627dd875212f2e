//! The row-wise ops of [`Kernels`]: norms, softmax, RoPE (length-checked; dispatched through the table).

use super::{causal_arg, check_len, rows_of};
use crate::SendPtr;
use crate::{KernelError, Kernels};

impl Kernels {
    /// out = x / sqrt(mean(x²) + eps) * w per row. x, out: (rows, n); w: (n)
    pub fn rms_norm(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("rms_norm", x.len(), w.len())?;
        check_len("rms_norm", "out", x.len(), out.len())?;
        let (n, xp, wp, op, f) = (
            w.len(),
            SendPtr::from_const(x.as_ptr()),
            SendPtr::from_const(w.as_ptr()),
            SendPtr(out.as_mut_ptr()),
            self.vec.rms_norm,
        );
        // Safety: supported level; x and out hold rows·n elements, w holds n; rows [a, b) in bounds.
        self.par(rows, n, &|a, b| unsafe {
            f(xp.at(a * n), wp.at(0), eps, op.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// x = rms_norm(x) in place. x: (rows, n); w: (n)
    pub fn rms_norm_assign(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<(), KernelError> {
        let rows = rows_of("rms_norm_assign", x.len(), w.len())?;
        let (n, p, wp, f) = (
            w.len(),
            SendPtr(x.as_mut_ptr()),
            SendPtr::from_const(w.as_ptr()),
            self.vec.rms_norm,
        );
        // Safety: as above; a row's statistics are read before any of it is written.
        self.par(rows, n, &|a, b| unsafe {
            f(p.at(a * n), wp.at(0), eps, p.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// out = (x - mean) / sqrt(var + eps) * w + b per row, biased variance. x, out: (rows, n); w, b: (n)
    pub fn layer_norm(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("layer_norm", x.len(), w.len())?;
        check_len("layer_norm", "b", w.len(), b.len())?;
        check_len("layer_norm", "out", x.len(), out.len())?;
        let (n, f) = (w.len(), self.vec.layer_norm);
        let (xp, wp, bp, op) = (
            SendPtr::from_const(x.as_ptr()),
            SendPtr::from_const(w.as_ptr()),
            SendPtr::from_const(b.as_ptr()),
            SendPtr(out.as_mut_ptr()),
        );
        // Safety: supported level; lengths checked; rows [r0, r1) in bounds.
        self.par(rows, n, &|r0, r1| unsafe {
            f(
                xp.at(r0 * n),
                wp.at(0),
                bp.at(0),
                eps,
                op.at(r0 * n),
                r1 - r0,
                n,
            )
        });
        Ok(())
    }

    /// x = layer_norm(x) in place. x: (rows, n); w, b: (n)
    pub fn layer_norm_assign(
        &self,
        x: &mut [f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
    ) -> Result<(), KernelError> {
        let rows = rows_of("layer_norm_assign", x.len(), w.len())?;
        check_len("layer_norm_assign", "b", w.len(), b.len())?;
        let (n, f) = (w.len(), self.vec.layer_norm);
        let (p, wp, bp) = (
            SendPtr(x.as_mut_ptr()),
            SendPtr::from_const(w.as_ptr()),
            SendPtr::from_const(b.as_ptr()),
        );
        // Safety: as above; in place is allowed.
        self.par(rows, n, &|r0, r1| unsafe {
            f(
                p.at(r0 * n),
                wp.at(0),
                bp.at(0),
                eps,
                p.at(r0 * n),
                r1 - r0,
                n,
            )
        });
        Ok(())
    }

    /// out = x / max(||x||₂, eps) over the whole slice (one row; see [`Kernels::normalize_rows`]).
    /// x, out: (n)
    pub fn normalize(&self, x: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
        self.normalize_rows(x, x.len(), eps, out)
    }

    /// out = x / max(||x_r||₂, eps) per row r (torch F.normalize(x, dim=-1)). x, out: (rows, n)
    pub fn normalize_rows(
        &self,
        x: &[f32],
        n: usize,
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("normalize", x.len(), n)?;
        check_len("normalize", "out", x.len(), out.len())?;
        let (xp, op, f) = (
            SendPtr::from_const(x.as_ptr()),
            SendPtr(out.as_mut_ptr()),
            self.vec.normalize,
        );
        // Safety: supported level; lengths checked; rows [a, b) in bounds.
        self.par(rows, n, &|a, b| unsafe {
            f(xp.at(a * n), eps, op.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// Row-wise L2 normalize in place. x: (rows, n)
    pub fn normalize_rows_assign(
        &self,
        x: &mut [f32],
        n: usize,
        eps: f32,
    ) -> Result<(), KernelError> {
        let rows = rows_of("normalize_rows_assign", x.len(), n)?;
        let (p, f) = (SendPtr(x.as_mut_ptr()), self.vec.normalize);
        // Safety: supported level; lengths checked; in place is allowed.
        self.par(rows, n, &|a, b| unsafe {
            f(p.at(a * n), eps, p.at(a * n), b - a, n)
        });
        Ok(())
    }

    /// Row r of x (rows, n): out_r = softmax(scale·x_r) over columns j <= r + offset when
    /// `causal = Some(offset)` (masked columns written as 0), else over all columns. x, out: (rows, n)
    pub fn softmax(
        &self,
        x: &[f32],
        n: usize,
        scale: f32,
        causal: Option<usize>,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let rows = rows_of("softmax", x.len(), n)?;
        check_len("softmax", "out", x.len(), out.len())?;
        let c = causal_arg(causal);
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.softmax)(x.as_ptr(), scale, c, out.as_mut_ptr(), rows, n) };
        Ok(())
    }

    /// Softmax in place (see [`Kernels::softmax`]). x: (rows, n)
    pub fn softmax_assign(
        &self,
        x: &mut [f32],
        n: usize,
        scale: f32,
        causal: Option<usize>,
    ) -> Result<(), KernelError> {
        let rows = rows_of("softmax_assign", x.len(), n)?;
        let p = x.as_mut_ptr();
        // Safety: supported level; lengths checked; a row's max is found before any of it is written.
        unsafe { (self.vec.softmax)(p, scale, causal_arg(causal), p, rows, n) };
        Ok(())
    }

    /// NeoX rotate-half RoPE in place. x: (rows, heads, head_dim); cos, sin: (rows, head_dim/2).
    /// For i < h/2: x1 = x[i], x2 = x[i+h/2]; x[i] = x1·c[i] - x2·s[i]; x[i+h/2] = x2·c[i] + x1·s[i].
    pub fn rope_half(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        // rows of a contiguous x (a bad heads·head_dim is reported by rope_rows)
        let rows = match heads.checked_mul(head_dim) {
            Some(per_row) if per_row > 0 => rows_of("rope_half", x.len(), per_row)?,
            _ => 0,
        };
        self.rope_rows(
            "rope_half",
            x,
            heads.saturating_mul(head_dim),
            rows,
            heads,
            head_dim,
            cos,
            sin,
        )
    }

    /// [`Kernels::rope_half`] on `rows` rows that start every `row_stride` elements of x (e.g. the q and k
    /// heads at the start of each row of a fused qkv buffer); elements between rows are left alone.
    /// cos, sin: (rows, head_dim/2). Threaded over rows when there are many.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_half_rows(
        &self,
        x: &mut [f32],
        row_stride: usize,
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        self.rope_rows(
            "rope_half_rows",
            x,
            row_stride,
            rows,
            heads,
            head_dim,
            cos,
            sin,
        )
    }

    /// The checks and the threaded run of both RoPE entry points.
    #[allow(clippy::too_many_arguments)]
    fn rope_rows(
        &self,
        op: &'static str,
        x: &mut [f32],
        row_stride: usize,
        rows: usize,
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        let invalid = |msg: String| KernelError::Invalid { op, msg };
        if !head_dim.is_multiple_of(2) {
            return Err(invalid(format!("head_dim {head_dim} is odd")));
        }
        let per_row = heads
            .checked_mul(head_dim)
            .ok_or_else(|| invalid(format!("heads {heads} × head_dim {head_dim} overflows")))?;
        let h = head_dim / 2;
        check_len(op, "cos", rows * h, cos.len())?;
        check_len(op, "sin", rows * h, sin.len())?;
        if rows == 0 || per_row == 0 {
            return Ok(());
        }
        let end = (rows - 1)
            .checked_mul(row_stride)
            .and_then(|e| e.checked_add(per_row));
        if row_stride < per_row || end.is_none_or(|e| e > x.len()) {
            return Err(invalid(format!(
                "{rows} rows of {heads}×{head_dim} at stride {row_stride} do not fit in {} elements",
                x.len()
            )));
        }
        let (p, cp, sp, f) = (
            SendPtr(x.as_mut_ptr()),
            SendPtr::from_const(cos.as_ptr()),
            SendPtr::from_const(sin.as_ptr()),
            self.vec.rope_half,
        );
        // Safety: supported level; every row r < rows lies in x (checked above), its cos/sin row too;
        // rows are disjoint (row_stride >= per_row) and each is written by one task. Contiguous rows go
        // to the kernel together.
        self.par(rows, per_row, &|a, b| unsafe {
            if row_stride == per_row {
                f(
                    p.at(a * per_row),
                    b - a,
                    heads,
                    head_dim,
                    cp.at(a * h),
                    sp.at(a * h),
                );
            } else {
                for r in a..b {
                    f(
                        p.at(r * row_stride),
                        1,
                        heads,
                        head_dim,
                        cp.at(r * h),
                        sp.at(r * h),
                    );
                }
            }
        });
        Ok(())
    }

    /// Per-head RMSNorm then rotate-half RoPE, read from one strided buffer and written to another in one
    /// pass: `out[r, h, :] = rope_half(rms_norm(x[r, h, :], w, eps), cos[r], sin[r])`.
    ///
    /// Row r of x starts at `r·x_stride` and holds `heads` heads of `head_dim`; row r of out starts at
    /// `r·out_stride`. w: (head_dim); cos, sin: (rows, head_dim/2). Each head runs the level's
    /// [`Kernels::rms_norm`] and [`Kernels::rope_half`] on a head in L1, so the result is bit for bit that
    /// of the two ops in sequence (plus a copy) — without the passes over memory between them. Threaded
    /// over rows when there are many.
    #[allow(clippy::too_many_arguments)]
    pub fn rms_norm_rope_half(
        &self,
        x: &[f32],
        x_stride: usize,
        out: &mut [f32],
        out_stride: usize,
        rows: usize,
        heads: usize,
        w: &[f32],
        eps: f32,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        const OP: &str = "rms_norm_rope_half";
        let hd = w.len();
        let invalid = |msg: String| KernelError::Invalid { op: OP, msg };
        if !hd.is_multiple_of(2) {
            return Err(invalid(format!("head_dim {hd} (the length of w) is odd")));
        }
        if rows == 0 || heads == 0 || hd == 0 {
            return Ok(());
        }
        let row = heads
            .checked_mul(hd)
            .ok_or_else(|| invalid(format!("heads {heads} × head_dim {hd} overflows")))?;
        // The last row's end must lie inside each buffer; rows must not overlap in out.
        let end = |stride: usize| {
            (rows - 1)
                .checked_mul(stride)
                .and_then(|e| e.checked_add(row))
        };
        if end(x_stride).is_none_or(|e| e > x.len()) || x_stride < row {
            return Err(invalid(format!(
                "x: {rows} rows of {heads}×{hd} at stride {x_stride} do not fit in {} elements",
                x.len()
            )));
        }
        if end(out_stride).is_none_or(|e| e > out.len()) || out_stride < row {
            return Err(invalid(format!(
                "out: {rows} rows of {heads}×{hd} at stride {out_stride} do not fit in {} elements",
                out.len()
            )));
        }
        check_len(OP, "cos", rows * hd / 2, cos.len())?;
        check_len(OP, "sin", rows * hd / 2, sin.len())?;
        let (xp, op) = (x.as_ptr() as usize, out.as_mut_ptr() as usize);
        let (norm, rope) = (self.vec.rms_norm, self.vec.rope_half);
        let run = |r0: usize, r1: usize| {
            for r in r0..r1 {
                let (c, s) = (cos[r * hd / 2..].as_ptr(), sin[r * hd / 2..].as_ptr());
                for h in 0..heads {
                    // Safety: supported level; the bounds of row r of x and out were checked above; rows of
                    // out are disjoint (out_stride >= row) and each is written by one task.
                    unsafe {
                        let src = (xp as *const f32).add(r * x_stride + h * hd);
                        let dst = (op as *mut f32).add(r * out_stride + h * hd);
                        norm(src, w.as_ptr(), eps, dst, 1, hd);
                        rope(dst, 1, 1, hd, c, s);
                    }
                }
            }
        };
        // A decode step (a row or a few) stays on this thread; a prefill splits its rows.
        let tasks = if rows * row >= 1 << 15 {
            self.threads().min(rows)
        } else {
            1
        };
        if tasks <= 1 {
            run(0, rows);
        } else {
            self.parallel_for(tasks, &|t| run(rows * t / tasks, rows * (t + 1) / tasks));
        }
        Ok(())
    }
}
