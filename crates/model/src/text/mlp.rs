//! Qwen3VLTextMLP: down(silu(gate(x)) ⊙ up(x)).

use super::quant_mix::{text_linear_format, TextLinear};
use crate::config::TextConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::ModelError;

pub struct TextMlp {
    /// gate_proj and up_proj (I, H) each, packed as one SwiGLU pair: its matmul writes silu(gate)·up (l, I)
    pub gate_up_proj: Linear,
    /// (H, I)
    pub down_proj: Linear,
}

impl TextMlp {
    /// Layer `li`'s MLP (its down projection's format under `--quant`: [`text_linear_format`]).
    pub(crate) fn load(vb: &Vb, cfg: &TextConfig, li: usize) -> Result<TextMlp, ModelError> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let format = |kind| {
            vb.quant
                .map(|q| text_linear_format(q, li, cfg.num_hidden_layers, kind))
        };
        Ok(TextMlp {
            gate_up_proj: vb.with_quant(format(TextLinear::GateUp)).linear_swiglu(
                "gate_proj",
                "up_proj",
                i,
                h,
            )?,
            down_proj: vb
                .with_quant(format(TextLinear::Down))
                .linear("down_proj", h, i, false)?,
        })
    }

    /// x: (l, H) -> out: (l, H); act: (l, I) scratch
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &[f32],
        l: usize,
        act: &mut [f32],
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        // 1. act = silu(gate_proj(x)) ⊙ up_proj(x): one matmul, SwiGLU in its epilogue       (l, I)
        let i = self.down_proj.in_features;
        self.gate_up_proj.forward(c, x, l, &mut act[..l * i])?;
        // 2. out = down_proj(act)                                                            (l, H)
        self.down_proj.forward(c, &act[..l * i], l, out)
    }
}
