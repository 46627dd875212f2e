//! Qwen3VLVisionRotaryEmbedding: 2-D rotary angles from each patch's (row, col) (spec 3.3).

use super::pos_embed::patch_row_col;

/// Vision RoPE theta (hard-coded in the modeling code, spec 1.2).
pub const VISION_ROPE_THETA: f64 = 10000.0;

pub struct VisionRotary {
    /// hv/4 frequencies: 1 / θ^(2k / (hv/2))
    pub inv_freq: Vec<f32>,
}

impl VisionRotary {
    pub fn new(head_dim: usize) -> VisionRotary {
        let spatial = head_dim / 2;
        let inv_freq = (0..spatial / 2)
            .map(|k| {
                let e = (2 * k) as f32 / spatial as f32;
                1.0f32 / (VISION_ROPE_THETA.powf(e as f64) as f32)
            })
            .collect();
        VisionRotary { inv_freq }
    }

    /// cos, sin: (Σ t·h·w, hv/2) = [row·inv_freq, col·inv_freq] per patch, in merge-block order; the kernel's
    /// rope_half applies them to the pairs (i, i + hv/2).
    pub fn cos_sin(
        &self,
        grids: &[[usize; 3]],
        merge: usize,
        cos: &mut Vec<f32>,
        sin: &mut Vec<f32>,
    ) {
        cos.clear();
        sin.clear();
        for &[t, h, w] in grids {
            for _ in 0..t {
                for k in 0..h * w {
                    let (row, col) = patch_row_col(k, w, merge);
                    for p in [row, col] {
                        for &f in &self.inv_freq {
                            let a = p as f32 * f;
                            cos.push((a as f64).cos() as f32);
                            sin.push((a as f64).sin() as f32);
                        }
                    }
                }
            }
        }
    }
}
