//! Qwen3VLTextMLP: down(silu(gate(x)) ⊙ up(x)).

use crate::config::TextConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::{KernelCtx, ModelError};

pub struct TextMlp {
    /// (2·I, H): gate_proj then up_proj stacked (one matmul)
    pub gate_up_proj: Linear,
    /// (H, I)
    pub down_proj: Linear,
}

impl TextMlp {
    pub(crate) fn load(vb: &Vb, cfg: &TextConfig) -> Result<TextMlp, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(TextMlp {
            gate_up_proj: vb.linear_cat(&[("gate_proj", i), ("up_proj", i)], h)?,
            down_proj: vb.linear("down_proj", h, i, false)?,
        })
    }

    /// x: (l, H) -> out: (l, H); gate_up: (l, 2·I), act: (l, I) scratch
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &[f32],
        l: usize,
        gate_up: &mut [f32],
        act: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        // 1. [gate | up] = x·[Wg; Wu]ᵀ                                  (l, 2I)
        self.gate_up_proj.forward(c, x, l, gate_up)?;
        // 2. act = silu(gate) ⊙ up                                       (l, I)
        let i = self.down_proj.in_features;
        for (gu, a) in gate_up[..l * 2 * i]
            .chunks_exact(2 * i)
            .zip(act[..l * i].chunks_exact_mut(i))
        {
            c.k.swiglu(&gu[..i], &gu[i..], a).ctx("swiglu")?;
        }
        // 3. out = down(act)
        self.down_proj.forward(c, act, l, out)
    }
}
