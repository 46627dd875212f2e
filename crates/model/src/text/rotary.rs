//! Qwen3VLTextRotaryEmbedding: interleaved multimodal RoPE (spec 5.1).

use crate::config::{mrope_axis, TextConfig};
use crate::input::PositionsRef;

pub struct TextRotary {
    /// head_dim/2 frequencies: 1 / θ^(2j / head_dim), fp32
    pub inv_freq: Vec<f32>,
    /// the position axis (0 = T, 1 = H, 2 = W) of each frequency: THW THW … TTTT
    pub axis: Vec<u8>,
}

impl TextRotary {
    pub fn new(cfg: &TextConfig) -> TextRotary {
        let hd = cfg.head_dim;
        let inv_freq = (0..hd / 2)
            .map(|j| {
                let e = (2 * j) as f32 / hd as f32;
                1.0f32 / (cfg.rope_theta.powf(e as f64) as f32)
            })
            .collect();
        let axis = (0..hd / 2)
            .map(|j| mrope_axis(j, &cfg.mrope_section) as u8)
            .collect();
        TextRotary { inv_freq, axis }
    }

    /// positions: 3 × (L) absolute (T, H, W) ids -> cos, sin: (L, head_dim/2).
    /// angle_j = p_axis(j) · inv_freq[j] as an fp32 product (large positions lose precision as in torch).
    pub fn cos_sin(&self, positions: PositionsRef, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.inv_freq.len();
        for (i, (c, s)) in cos
            .chunks_exact_mut(half)
            .zip(sin.chunks_exact_mut(half))
            .enumerate()
        {
            for j in 0..half {
                let p = positions.rows[self.axis[j] as usize][i] as f32;
                let a = p * self.inv_freq[j];
                c[j] = (a as f64).cos() as f32;
                s[j] = (a as f64).sin() as f32;
            }
        }
    }
}
