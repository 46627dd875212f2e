//! Backward of a linear layer `y (m, n) = x (m, k) · Wᵀ + b` (W as stored by `nn.Linear`: (n, k)):
//!
//! - dx (m, k) = dy (m, n) · W, run as the linear layer `dy · (Wᵀ)ᵀ` on the transposed weight (k, n);
//! - dW (n, k) = dyᵀ (n, m) · x (m, k), run as the linear layer `dyᵀ · (xᵀ)ᵀ` on xᵀ (k, m);
//! - db (n) = Σ over rows of dy.
//!
//! Both products go through [`Kernels::matmul_unpacked`] (exact path), so they use the level's own SIMD
//! matmul and its error bound: each output is within 2(K+2)·2⁻²⁴·Σ|a·b| of the exact sum (K = n for dx,
//! m for dW). With scalar kernels this is the plain-loop twin. bf16 weights are widened exactly.

use super::{MatmulPath, Weight};
use crate::ops::check_len;
use crate::{KernelError, Kernels};

/// Tile side of the blocked transposes (a 32×32 f32 tile is 4 KiB: source and destination stay in L1).
const TILE: usize = 32;

/// out (cols, rows) = aᵀ for a row-major a (rows, cols), in cache-sized tiles.
fn transpose<T: Copy>(a: &[T], rows: usize, cols: usize, out: &mut [T]) {
    debug_assert_eq!(a.len(), rows * cols);
    debug_assert_eq!(out.len(), rows * cols);
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = a[r * cols + c];
                }
            }
        }
    }
}

/// The upstream gradient of [`Kernels::matmul_backward`] and the gradients it writes (each optional).
pub struct MatmulGrads<'a> {
    /// (m, n): the gradient of y.
    pub dy: &'a [f32],
    /// (m, k): written.
    pub dx: Option<&'a mut [f32]>,
    /// (n, k): accumulated (+=).
    pub dw_accum: Option<&'a mut [f32]>,
    /// (n): accumulated (+=).
    pub db_accum: Option<&'a mut [f32]>,
}

impl Kernels {
    /// Backward of `y (m, n) = x (m, k) · Wᵀ + b` given `grads.dy` (m, n); see the module docs.
    /// W is (n, k) row-major, bf16 or f32.
    pub fn matmul_backward(
        &self,
        x: &[f32],
        m: usize,
        w: Weight,
        n: usize,
        k: usize,
        grads: MatmulGrads,
    ) -> Result<(), KernelError> {
        let op = "matmul_backward";
        let mk = m.checked_mul(k).ok_or(too_big(op))?;
        let nk = n.checked_mul(k).ok_or(too_big(op))?;
        let mn = m.checked_mul(n).ok_or(too_big(op))?;
        check_len(op, "x (m*k)", mk, x.len())?;
        let wlen = match w {
            Weight::Bf16(v) => v.len(),
            Weight::F32(v) => v.len(),
        };
        check_len(op, "w (n*k)", nk, wlen)?;
        let MatmulGrads {
            dy,
            dx,
            dw_accum,
            db_accum,
        } = grads;
        check_len(op, "dy (m*n)", mn, dy.len())?;
        if let Some(dx) = &dx {
            check_len(op, "dx (m*k)", mk, dx.len())?;
        }
        if let Some(dw) = &dw_accum {
            check_len(op, "dw_accum (n*k)", nk, dw.len())?;
        }
        if let Some(db) = &db_accum {
            check_len(op, "db_accum (n)", n, db.len())?;
        }
        // 1. dx = dy · W: the linear layer with weight Wᵀ (k, n).
        if let Some(dx) = dx {
            if n == 0 {
                dx.fill(0.0);
            } else {
                match w {
                    Weight::F32(wd) => {
                        let mut wt = vec![0.0f32; nk];
                        transpose(wd, n, k, &mut wt);
                        self.matmul_unpacked(
                            dy,
                            m,
                            Weight::F32(&wt),
                            k,
                            n,
                            None,
                            dx,
                            MatmulPath::Exact,
                        )?;
                    }
                    Weight::Bf16(wd) => {
                        let mut wt = vec![0u16; nk];
                        transpose(wd, n, k, &mut wt);
                        self.matmul_unpacked(
                            dy,
                            m,
                            Weight::Bf16(&wt),
                            k,
                            n,
                            None,
                            dx,
                            MatmulPath::Exact,
                        )?;
                    }
                }
            }
        }
        // 2. dW += dyᵀ · x: the linear layer with input dyᵀ (n, m) and weight xᵀ (k, m).
        if let Some(dw) = dw_accum {
            if m > 0 {
                let (mut dyt, mut xt) = (vec![0.0f32; mn], vec![0.0f32; mk]);
                transpose(dy, m, n, &mut dyt);
                transpose(x, m, k, &mut xt);
                let mut g = vec![0.0f32; nk];
                self.matmul_unpacked(
                    &dyt,
                    n,
                    Weight::F32(&xt),
                    k,
                    m,
                    None,
                    &mut g,
                    MatmulPath::Exact,
                )?;
                self.add_assign(dw, &g)?;
            }
        }
        // 3. db += Σ_rows dy.
        if let Some(db) = db_accum {
            for row in dy.chunks_exact(n.max(1)).take(m) {
                self.add_assign(db, row)?;
            }
        }
        Ok(())
    }
}

fn too_big(op: &'static str) -> KernelError {
    KernelError::Invalid {
        op,
        msg: "m·n·k overflows usize".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::transpose;

    #[test]
    fn transpose_awkward_shapes() {
        for (r, c) in [(0, 3), (1, 1), (33, 17), (64, 1), (5, 70)] {
            let a: Vec<u32> = (0..(r * c) as u32).collect();
            let mut t = vec![0u32; r * c];
            transpose(&a, r, c, &mut t);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(t[j * r + i], a[i * c + j], "({r},{c}) at ({i},{j})");
                }
            }
        }
    }
}
