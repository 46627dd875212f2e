//! Qwen3VLTextMLP: down(silu(gate(x)) ⊙ up(x)).

use crate::config::TextConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::{KernelCtx, ModelError};

pub struct TextMlp {
    /// (I, H)
    pub gate_proj: Linear,
    /// (I, H)
    pub up_proj: Linear,
    /// (H, I)
    pub down_proj: Linear,
}

impl TextMlp {
    pub(crate) fn load(vb: &Vb, cfg: &TextConfig) -> Result<TextMlp, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(TextMlp {
            gate_proj: vb.linear("gate_proj", i, h, false)?,
            up_proj: vb.linear("up_proj", i, h, false)?,
            down_proj: vb.linear("down_proj", h, i, false)?,
        })
    }

    /// x: (l, H) -> out: (l, H); gate, up: (l, I) scratch
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &[f32],
        l: usize,
        gate: &mut [f32],
        up: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        self.gate_proj.forward(c, x, l, gate)?;
        self.up_proj.forward(c, x, l, up)?;
        c.k.swiglu_assign(gate, up).ctx("swiglu")?;
        self.down_proj.forward(c, gate, l, out)
    }
}
