//! LayerNorm (vision, mergers) and RMSNorm (text) with their checkpoint weights.

use qwen3vl_kernels::Kernels;

use crate::{KernelCtx, ModelError};

/// nn.LayerNorm(n, eps) with affine weight and bias.
pub struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl LayerNorm {
    /// x: (rows, n) -> out: (rows, n)
    pub fn forward(&self, k: &Kernels, x: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        k.layer_norm(x, &self.weight, &self.bias, self.eps, out)
            .ctx("layer_norm")
    }
}

/// Qwen3VLTextRMSNorm(n, eps).
pub struct RmsNorm {
    pub weight: Vec<f32>,
    pub eps: f32,
}

impl RmsNorm {
    /// x: (rows, n) -> out: (rows, n)
    pub fn forward(&self, k: &Kernels, x: &[f32], out: &mut [f32]) -> Result<(), ModelError> {
        k.rms_norm(x, &self.weight, self.eps, out).ctx("rms_norm")
    }

    /// x: (rows, n), normalized in place
    pub fn forward_inplace(&self, k: &Kernels, x: &mut [f32]) -> Result<(), ModelError> {
        k.rms_norm_assign(x, &self.weight, self.eps).ctx("rms_norm")
    }
}
