//! Qwen3VLTextDecoderLayer: pre-norm attention and MLP with residuals (spec 4.3).

use crate::config::TextConfig;
use crate::input::Seq;
use crate::linear::{Ctx, Vb};
use crate::norm::RmsNorm;
use crate::text::attention::{AttnBufs, TextAttention};
use crate::text::mlp::TextMlp;
use crate::text::moe::{MoeScratch, TextSparseMoeBlock};
use crate::{KernelCtx, ModelError};

/// A layer's `mlp`: the dense MLP, or (MoE checkpoints, spec 1.3) the sparse block.
pub enum LayerMlp {
    Dense(TextMlp),
    Sparse(TextSparseMoeBlock),
}

impl LayerMlp {
    /// The dense MLP, if this layer has one.
    pub fn dense(&self) -> Option<&TextMlp> {
        match self {
            LayerMlp::Dense(m) => Some(m),
            LayerMlp::Sparse(_) => None,
        }
    }

    /// The sparse MoE block, if this layer has one.
    pub fn sparse(&self) -> Option<&TextSparseMoeBlock> {
        match self {
            LayerMlp::Dense(_) => None,
            LayerMlp::Sparse(m) => Some(m),
        }
    }
}

pub struct DecoderLayer {
    pub self_attn: TextAttention,
    pub mlp: LayerMlp,
    /// (H)
    pub input_layernorm: RmsNorm,
    /// (H)
    pub post_attention_layernorm: RmsNorm,
}

/// Per-call buffers of the text decoder (kept in the caller's RunState so decode steps do not allocate).
#[derive(Default)]
pub(crate) struct TextScratch {
    pub h: Vec<f32>,    // (l, H)
    pub o: Vec<f32>,    // (l, H)
    pub qkv: Vec<f32>,  // (l, (nq + 2·nkv)·hd)
    pub q: Vec<f32>,    // (l, nq·hd)
    pub attn: Vec<f32>, // (l, nq·hd)
    pub act: Vec<f32>,  // (l, I)
    pub cos: Vec<f32>,  // (l, hd/2)
    pub sin: Vec<f32>,  // (l, hd/2)
    pub moe: MoeScratch,
}

impl TextScratch {
    pub fn resize(&mut self, cfg: &TextConfig, l: usize) {
        let (h, q, i, half) = (
            cfg.hidden_size,
            cfg.num_attention_heads * cfg.head_dim,
            cfg.intermediate_size,
            cfg.head_dim / 2,
        );
        self.h.resize(l * h, 0.0);
        self.o.resize(l * h, 0.0);
        let kv = 2 * cfg.num_key_value_heads * cfg.head_dim;
        self.qkv.resize(l * (q + kv), 0.0);
        self.q.resize(l * q, 0.0);
        self.attn.resize(l * q, 0.0);
        self.act.resize(l * i, 0.0);
        self.cos.resize(l * half, 0.0);
        self.sin.resize(l * half, 0.0);
        if let Some(moe) = &cfg.moe {
            self.moe.resize(l, h, moe);
        }
    }
}

impl DecoderLayer {
    /// Layer `li` of the decoder.
    pub(crate) fn load(vb: &Vb, cfg: &TextConfig, li: usize) -> Result<DecoderLayer, ModelError> {
        let h = cfg.hidden_size;
        let mlp = match &cfg.moe {
            Some(moe) if cfg.is_sparse_layer(li) => {
                LayerMlp::Sparse(TextSparseMoeBlock::load(&vb.pp("mlp"), cfg, moe)?)
            }
            _ => LayerMlp::Dense(TextMlp::load(&vb.pp("mlp"), cfg, li)?),
        };
        Ok(DecoderLayer {
            self_attn: TextAttention::load(&vb.pp("self_attn"), cfg, li)?,
            mlp,
            input_layernorm: vb.rms_norm("input_layernorm", h, cfg.rms_norm_eps)?,
            post_attention_layernorm: vb.rms_norm(
                "post_attention_layernorm",
                h,
                cfg.rms_norm_eps,
            )?,
        })
    }

    /// x: (m, H), the rows of every sequence in order, updated in place; each sequence's K/V go to its
    /// cache rows [len, len + l) of layer `li`.
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &mut [f32],
        m: usize,
        s: &mut TextScratch,
        seqs: &mut [Seq],
        li: usize,
    ) -> Result<(), ModelError> {
        // 1. x = x + self_attn(input_layernorm(x))
        self.input_layernorm.forward(&c.k, x, &mut s.h)?;
        let bufs = AttnBufs {
            qkv: &mut s.qkv,
            q: &mut s.q,
            out: &mut s.attn,
            cos: &s.cos,
            sin: &s.sin,
        };
        self.self_attn
            .forward(c, &s.h, m, bufs, seqs, li, &mut s.o)?;
        c.k.add_assign(x, &s.o).ctx("text residual")?;
        // 2. x = x + mlp(post_attention_layernorm(x))
        self.post_attention_layernorm.forward(&c.k, x, &mut s.h)?;
        match &self.mlp {
            LayerMlp::Dense(mlp) => mlp.forward(c, &s.h, m, &mut s.act, &mut s.o)?,
            LayerMlp::Sparse(moe) => moe.forward(c, &s.h, m, &mut s.moe, &mut s.o)?,
        }
        c.k.add_assign(x, &s.o).ctx("text residual")?;
        Ok(())
    }
}
