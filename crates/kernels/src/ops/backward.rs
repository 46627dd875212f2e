//! The backward ops of [`Kernels`] (length-checked; dispatched through the table).

use super::{check_len, rows_of};
use crate::{KernelError, Kernels};

impl Kernels {
    grad_api! {
        /// dx = dy · d/dx gelu_tanh(x).
        gelu_tanh_backward;
        /// dx = dy · d/dx gelu_erf(x).
        gelu_erf_backward;
        /// dx = dy · d/dx silu(x).
        silu_backward;
        /// dx = dy where x > 0, else 0 (a NaN x passes dy, as torch's threshold_backward).
        relu_backward;
    }

    /// Backward of out = silu(gate)·up: dgate = dy·up·silu'(gate), dup = dy·silu(gate). All: (n)
    pub fn swiglu_backward(
        &self,
        gate: &[f32],
        up: &[f32],
        dy: &[f32],
        dgate: &mut [f32],
        dup: &mut [f32],
    ) -> Result<(), KernelError> {
        let n = gate.len();
        check_len("swiglu_backward", "up", n, up.len())?;
        check_len("swiglu_backward", "dy", n, dy.len())?;
        check_len("swiglu_backward", "dgate", n, dgate.len())?;
        check_len("swiglu_backward", "dup", n, dup.len())?;
        let (dg, du) = (dgate.as_mut_ptr(), dup.as_mut_ptr());
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.swiglu_backward)(gate.as_ptr(), up.as_ptr(), dy.as_ptr(), dg, du, n) };
        Ok(())
    }

    /// Backward of rms_norm: dx written, dw_accum += Σ_rows dy·x·r. x, dy, dx: (rows, n); w, dw_accum: (n)
    pub fn rms_norm_backward(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
        dw_accum: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "rms_norm_backward";
        let rows = rows_of(op, x.len(), w.len())?;
        check_len(op, "dy", x.len(), dy.len())?;
        check_len(op, "dx", x.len(), dx.len())?;
        check_len(op, "dw_accum", w.len(), dw_accum.len())?;
        let (xp, wp, dyp) = (x.as_ptr(), w.as_ptr(), dy.as_ptr());
        let (dxp, dwp) = (dx.as_mut_ptr(), dw_accum.as_mut_ptr());
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.rms_norm_backward)(xp, wp, eps, dyp, dxp, dwp, rows, w.len()) };
        Ok(())
    }

    /// Backward of layer_norm: dx written; dw_accum += Σ dy·x̂, db_accum += Σ dy over rows.
    /// x, dy, dx: (rows, n); w, dw_accum, db_accum: (n)
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm_backward(
        &self,
        x: &[f32],
        w: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
        dw_accum: &mut [f32],
        db_accum: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "layer_norm_backward";
        let rows = rows_of(op, x.len(), w.len())?;
        check_len(op, "dy", x.len(), dy.len())?;
        check_len(op, "dx", x.len(), dx.len())?;
        check_len(op, "dw_accum", w.len(), dw_accum.len())?;
        check_len(op, "db_accum", w.len(), db_accum.len())?;
        let (xp, wp, dyp) = (x.as_ptr(), w.as_ptr(), dy.as_ptr());
        let (dxp, dwp, dbp) = (
            dx.as_mut_ptr(),
            dw_accum.as_mut_ptr(),
            db_accum.as_mut_ptr(),
        );
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.layer_norm_backward)(xp, wp, eps, dyp, dxp, dwp, dbp, rows, w.len()) };
        Ok(())
    }

    /// Backward of [`Kernels::normalize`] (the whole slice as one row). x, dy, dx: (n)
    pub fn normalize_backward(
        &self,
        x: &[f32],
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        self.normalize_rows_backward(x, x.len(), eps, dy, dx)
    }

    /// Backward of [`Kernels::normalize_rows`]. x, dy, dx: (rows, n)
    pub fn normalize_rows_backward(
        &self,
        x: &[f32],
        n: usize,
        eps: f32,
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "normalize_backward";
        let rows = rows_of(op, x.len(), n)?;
        check_len(op, "dy", x.len(), dy.len())?;
        check_len(op, "dx", x.len(), dx.len())?;
        let (xp, dyp, dxp) = (x.as_ptr(), dy.as_ptr(), dx.as_mut_ptr());
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.normalize_backward)(xp, eps, dyp, dxp, rows, n) };
        Ok(())
    }

    /// Backward of softmax (scale 1) given its output y: dx = y·(dy - Σ y·dy) per row. y, dy, dx: (rows, n)
    pub fn softmax_backward(
        &self,
        y: &[f32],
        n: usize,
        dy: &[f32],
        dx: &mut [f32],
    ) -> Result<(), KernelError> {
        let op = "softmax_backward";
        let rows = rows_of(op, y.len(), n)?;
        check_len(op, "dy", y.len(), dy.len())?;
        check_len(op, "dx", y.len(), dx.len())?;
        // Safety: supported level; lengths checked.
        unsafe { (self.vec.softmax_backward)(y.as_ptr(), dy.as_ptr(), dx.as_mut_ptr(), rows, n) };
        Ok(())
    }
}
