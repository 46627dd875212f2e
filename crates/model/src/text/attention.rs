//! Qwen3VLTextAttention: q/k RMSNorm per head, then M-RoPE, then causal GQA over the KV cache (spec 4.3).

use crate::config::TextConfig;
use crate::linear::{Ctx, Linear, Vb};
use crate::norm::RmsNorm;
use crate::{KernelCtx, ModelError};
use qwen3vl_kernels::attention::{AttnLayout, AttnParams};

pub struct TextAttention {
    /// ((nq + 2·nkv)·hd, H): q_proj, k_proj and v_proj stacked (one matmul)
    pub qkv_proj: Linear,
    /// (H, nq·hd)
    pub o_proj: Linear,
    /// (hd)
    pub q_norm: RmsNorm,
    /// (hd)
    pub k_norm: RmsNorm,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Buffers of one attention call.
pub(crate) struct AttnBufs<'a> {
    /// (l, (nq + 2·nkv)·hd)
    pub qkv: &'a mut [f32],
    /// (l, nq·hd)
    pub q: &'a mut [f32],
    /// (l, nq·hd)
    pub out: &'a mut [f32],
    /// this layer's cache: (max_len, nkv·hd) each
    pub k_cache: &'a mut [f32],
    pub v_cache: &'a mut [f32],
    /// rows already in the cache
    pub start: usize,
    /// (l, hd/2)
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

impl TextAttention {
    pub(crate) fn load(vb: &Vb, cfg: &TextConfig) -> Result<TextAttention, ModelError> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(TextAttention {
            qkv_proj: vb.linear_cat(
                &[
                    ("q_proj", nq * hd),
                    ("k_proj", nkv * hd),
                    ("v_proj", nkv * hd),
                ],
                h,
            )?,
            o_proj: vb.linear("o_proj", h, nq * hd, false)?,
            q_norm: vb.rms_norm("q_norm", hd, cfg.rms_norm_eps)?,
            k_norm: vb.rms_norm("k_norm", hd, cfg.rms_norm_eps)?,
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// h: (l, H) normed input -> out: (l, H); appends this step's K, V to the cache rows [start, start+l).
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        h: &[f32],
        l: usize,
        b: AttnBufs,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let k = &c.k;
        let (nq, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let kvd = nkv * hd;
        // 1. q = q_norm(q_proj(h).view(l, nq, hd)); k = k_norm(k_proj(h).view(l, nkv, hd)); v = v_proj(h)
        //    One matmul for q, k, v                                          (l, (nq + 2·nkv)·hd)
        let (qd, row) = (nq * hd, nq * hd + 2 * kvd);
        self.qkv_proj.forward(c, h, l, b.qkv)?;
        let qkv = &b.qkv[..l * row];
        // 2. q, k = apply_rotary_pos_emb(q, k, cos, sin)   (norm before rope)
        //    Norm and RoPE in one pass per head, q written to its buffer and k straight into the cache rows
        //    of these tokens; v rows copied to the cache.
        let (qn, kn) = (&self.q_norm, &self.k_norm);
        k.rms_norm_rope_half(qkv, row, b.q, qd, l, nq, &qn.weight, qn.eps, b.cos, b.sin)
            .ctx("text q_norm + rope")?;
        let k_rows = &mut b.k_cache[b.start * kvd..(b.start + l) * kvd];
        k.rms_norm_rope_half(
            &qkv[qd..],
            row,
            k_rows,
            kvd,
            l,
            nkv,
            &kn.weight,
            kn.eps,
            b.cos,
            b.sin,
        )
        .ctx("text k_norm + rope")?;
        for (r, src) in qkv.chunks_exact(row).enumerate() {
            let cr = (b.start + r) * kvd..(b.start + r + 1) * kvd;
            b.v_cache[cr].copy_from_slice(&src[qd + kvd..]);
        }
        // 3. o = causal GQA attention over cache rows [0, start+l), scale hd^-0.5   (l, nq, hd)
        let kv_len = b.start + l;
        let p = AttnParams {
            n_q_heads: nq,
            n_kv_heads: nkv,
            head_dim: hd,
            q_len: l,
            kv_len,
            scale: 1.0 / (hd as f32).sqrt(),
            causal: true,
            path: c.path,
        };
        let kv_layout = AttnLayout {
            row_stride: kvd,
            head_stride: hd,
        };
        k.attention(
            b.q,
            AttnLayout {
                row_stride: nq * hd,
                head_stride: hd,
            },
            &b.k_cache[..kv_len * kvd],
            kv_layout,
            &b.v_cache[..kv_len * kvd],
            kv_layout,
            b.out,
            &p,
        )
        .ctx("text attention")?;
        // 4. out = o_proj(o.reshape(l, nq·hd))
        self.o_proj.forward(c, b.out, l, out)
    }
}
