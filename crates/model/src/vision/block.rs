//! Qwen3VLVisionBlock: pre-norm attention within each image (cu_seqlens segments) and a GELU-tanh MLP
//! (spec 3.4).

use crate::config::VisionConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::norm::LayerNorm;
use crate::{KernelCtx, ModelError};
use qwen3vl_kernels::attention::{AttnLayout, AttnParams};

/// Every vision LayerNorm uses eps 1e-6 (hard-coded in the modeling code).
pub const VISION_LN_EPS: f32 = 1e-6;

pub struct VisionAttention {
    /// (3D, D): rows are q of all heads, then k, then v
    pub qkv: Linear,
    /// (D, D)
    pub proj: Linear,
    pub num_heads: usize,
    pub head_dim: usize,
}

pub struct VisionMlp {
    /// (F, D)
    pub linear_fc1: Linear,
    /// (D, F)
    pub linear_fc2: Linear,
}

pub struct VisionBlock {
    pub norm1: LayerNorm,
    pub norm2: LayerNorm,
    pub attn: VisionAttention,
    pub mlp: VisionMlp,
}

/// Per-call buffers of the vision tower, sized for n patches.
#[derive(Default)]
pub(crate) struct VisionScratch {
    pub h: Vec<f32>,    // (n, D)
    pub qkv: Vec<f32>,  // (n, 3, heads, hv)
    pub attn: Vec<f32>, // (n, heads, hv)
    pub mlp: Vec<f32>,  // (n, F)
}

/// Geometry of one forward: rows of each attention segment (one per image frame group), and the rotary
/// tables (n, hv/2).
pub(crate) struct VisionInputs<'a> {
    pub segments: &'a [usize],
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

impl VisionBlock {
    pub(crate) fn load(vb: &Vb, cfg: &VisionConfig) -> Result<VisionBlock, ModelError> {
        let (d, f) = (cfg.hidden_size, cfg.intermediate_size);
        let a = vb.pp("attn");
        let m = vb.pp("mlp");
        Ok(VisionBlock {
            norm1: vb.layer_norm("norm1", d, VISION_LN_EPS)?,
            norm2: vb.layer_norm("norm2", d, VISION_LN_EPS)?,
            attn: VisionAttention {
                qkv: a.linear("qkv", 3 * d, d, true)?,
                proj: a.linear("proj", d, d, true)?,
                num_heads: cfg.num_heads,
                head_dim: cfg.head_dim(),
            },
            mlp: VisionMlp {
                linear_fc1: m.linear("linear_fc1", f, d, true)?,
                linear_fc2: m.linear("linear_fc2", d, f, true)?,
            },
        })
    }

    /// x: (n, D), updated in place.
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        x: &mut [f32],
        n: usize,
        inp: &VisionInputs,
        s: &mut VisionScratch,
    ) -> Result<(), ModelError> {
        let k = &c.k;
        let (heads, hv) = (self.attn.num_heads, self.attn.head_dim);
        let d = heads * hv;
        for b in [&mut s.h, &mut s.attn] {
            b.resize(n * d, 0.0);
        }
        s.qkv.resize(n * 3 * d, 0.0);
        s.mlp.resize(n * self.mlp.linear_fc1.out_features, 0.0);

        // 1. h = norm1(x)                                             (n, D)
        self.norm1.forward(k, x, &mut s.h)?;
        // 2. qkv = h·Wqkvᵀ + b, viewed as (n, 3, heads, hv): q, k, v are strided views of it (no copies)
        self.attn.qkv.forward(c, &s.h, n, &mut s.qkv)?;
        // 3. q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)      (fp32, rotate_half pairs)
        //    q and k of one row are adjacent: rotate them together as 2·heads heads of that row.
        k.rope_half_rows(&mut s.qkv, 3 * d, n, 2 * heads, hv, inp.cos, inp.sin)
            .ctx("vision rope q, k")?;
        // 4. attn = softmax(q·kᵀ / sqrt(hv))·v within each segment (no mask, no attention across images)
        let layout = AttnLayout {
            row_stride: 3 * d,
            head_stride: hv,
        };
        let mut start = 0;
        for &len in inp.segments {
            let r = start * 3 * d..(start + len) * 3 * d;
            let p = AttnParams {
                n_q_heads: heads,
                n_kv_heads: heads,
                head_dim: hv,
                q_len: len,
                kv_len: len,
                scale: 1.0 / (hv as f32).sqrt(),
                causal: false,
                path: c.path,
            };
            let seg = &s.qkv[r];
            k.attention(
                seg,
                layout,
                seg.get(d..).unwrap_or_default(),
                layout,
                seg.get(2 * d..).unwrap_or_default(),
                layout,
                &mut s.attn[start * d..(start + len) * d],
                &p,
            )
            .ctx("vision attention")?;
            start += len;
        }
        // 5. x = x + proj(attn.reshape(n, D))
        self.attn.proj.forward(c, &s.attn, n, &mut s.h)?;
        k.add_assign(x, &s.h).ctx("vision residual")?;
        // 6. x = x + fc2(gelu_tanh(fc1(norm2(x))))
        self.norm2.forward(k, x, &mut s.h)?;
        self.mlp.linear_fc1.forward(c, &s.h, n, &mut s.mlp)?;
        k.gelu_tanh_assign(&mut s.mlp);
        self.mlp.linear_fc2.forward(c, &s.mlp, n, &mut s.h)?;
        k.add_assign(x, &s.h).ctx("vision residual")?;
        Ok(())
    }
}
