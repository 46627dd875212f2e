//! TEMPORARY: plain-loop stand-ins for kernel and processor APIs that have not landed on main yet, written
//! against the agreed signatures of /work/team/API.md. Each item is deleted when its owner's version lands.
//! Trait methods here are shadowed by the real inherent `Kernels` methods as soon as those exist.

#![allow(dead_code)]

use qwen3vl_kernels::{KernelError, Kernels};

fn len(
    op: &'static str,
    what: &'static str,
    expected: usize,
    got: usize,
) -> Result<(), KernelError> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::Len {
            op,
            what,
            expected,
            got,
        })
    }
}

fn rows(op: &'static str, total: usize, n: usize) -> Result<usize, KernelError> {
    if n == 0 || !total.is_multiple_of(n) {
        return Err(KernelError::Invalid {
            op,
            msg: format!("length {total} is not a multiple of the row length {n}"),
        });
    }
    Ok(total / n)
}

/// Ops of helper A (agreed signatures).
pub(crate) trait OpsShim {
    fn add_assign(&self, acc: &mut [f32], b: &[f32]) -> Result<(), KernelError>;
    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError>;
    fn rms_norm_assign(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<(), KernelError>;
    fn layer_norm(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError>;
    fn gelu_tanh_assign(&self, x: &mut [f32]) -> Result<(), KernelError>;
    fn gelu_erf_assign(&self, x: &mut [f32]) -> Result<(), KernelError>;
    fn swiglu_assign(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError>;
    fn rope_half(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError>;
}

impl OpsShim for Kernels {
    fn add_assign(&self, acc: &mut [f32], b: &[f32]) -> Result<(), KernelError> {
        len("add_assign", "b", acc.len(), b.len())?;
        for (a, b) in acc.iter_mut().zip(b) {
            *a += b;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
        len("rms_norm", "out", x.len(), out.len())?;
        out.copy_from_slice(x);
        self.rms_norm_assign(out, w, eps)
    }

    fn rms_norm_assign(&self, x: &mut [f32], w: &[f32], eps: f32) -> Result<(), KernelError> {
        let n = w.len();
        rows("rms_norm", x.len(), n)?;
        for row in x.chunks_exact_mut(n) {
            let ss: f32 = row.iter().map(|v| v * v).sum::<f32>() / n as f32;
            let inv = 1.0 / (ss + eps).sqrt();
            for (v, w) in row.iter_mut().zip(w) {
                *v = *v * inv * w;
            }
        }
        Ok(())
    }

    fn layer_norm(
        &self,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), KernelError> {
        let n = w.len();
        len("layer_norm", "b", n, b.len())?;
        len("layer_norm", "out", x.len(), out.len())?;
        rows("layer_norm", x.len(), n)?;
        for (row, o) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            let mean = row.iter().sum::<f32>() / n as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let inv = 1.0 / (var + eps).sqrt();
            for i in 0..n {
                o[i] = (row[i] - mean) * inv * w[i] + b[i];
            }
        }
        Ok(())
    }

    fn gelu_tanh_assign(&self, x: &mut [f32]) -> Result<(), KernelError> {
        const C: f32 = 0.797_884_6; // sqrt(2/pi)
        for v in x.iter_mut() {
            let u = *v;
            *v = 0.5 * u * (1.0 + (C * (u + 0.044715 * u * u * u)).tanh());
        }
        Ok(())
    }

    fn gelu_erf_assign(&self, x: &mut [f32]) -> Result<(), KernelError> {
        for v in x.iter_mut() {
            let u = *v;
            *v = 0.5 * u * (1.0 + libm::erff(u * std::f32::consts::FRAC_1_SQRT_2));
        }
        Ok(())
    }

    fn swiglu_assign(&self, gate: &mut [f32], up: &[f32]) -> Result<(), KernelError> {
        len("swiglu_assign", "up", gate.len(), up.len())?;
        for (g, u) in gate.iter_mut().zip(up) {
            *g = *g / (1.0 + (-*g).exp()) * u;
        }
        Ok(())
    }

    fn rope_half(
        &self,
        x: &mut [f32],
        heads: usize,
        head_dim: usize,
        cos: &[f32],
        sin: &[f32],
    ) -> Result<(), KernelError> {
        let half = head_dim / 2;
        let r = rows("rope_half", x.len(), heads * head_dim)?;
        len("rope_half", "cos", r * half, cos.len())?;
        len("rope_half", "sin", r * half, sin.len())?;
        for (i, row) in x.chunks_exact_mut(heads * head_dim).enumerate() {
            let c = &cos[i * half..(i + 1) * half];
            let s = &sin[i * half..(i + 1) * half];
            for h in row.chunks_exact_mut(head_dim) {
                for j in 0..half {
                    let (x1, x2) = (h[j], h[j + half]);
                    h[j] = x1 * c[j] - x2 * s[j];
                    h[j + half] = x2 * c[j] + x1 * s[j];
                }
            }
        }
        Ok(())
    }
}

// ---- processor (helper C) ----

/// One preprocessed image: rows of `pixel_values` in merge-block order.
#[derive(Clone, Debug)]
pub struct ImageInput {
    /// (N, 1536), N = t·h·w
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches
    pub grid_thw: [usize; 3],
}
