//! Qwen3VLTextAttention: q/k RMSNorm per head, then M-RoPE, then causal GQA over the KV cache (spec 4.3).

use super::quant_mix::{text_linear_format, TextLinear};
use crate::config::TextConfig;
use crate::input::Seq;
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

/// Buffers of one attention call over m rows.
pub(crate) struct AttnBufs<'a> {
    /// (m, (nq + 2·nkv)·hd)
    pub qkv: &'a mut [f32],
    /// (m, nq·hd)
    pub q: &'a mut [f32],
    /// (m, nq·hd)
    pub out: &'a mut [f32],
    /// (m, hd/2)
    pub cos: &'a [f32],
    pub sin: &'a [f32],
}

impl TextAttention {
    /// Layer `li`'s attention (its projections' formats under `--quant`: [`text_linear_format`]).
    pub(crate) fn load(vb: &Vb, cfg: &TextConfig, li: usize) -> Result<TextAttention, ModelError> {
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let (nq, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let format = |kind| {
            vb.quant
                .map(|q| text_linear_format(q, li, cfg.num_hidden_layers, kind))
        };
        Ok(TextAttention {
            qkv_proj: vb.with_quant(format(TextLinear::Qkv)).linear_cat(
                &[
                    ("q_proj", nq * hd),
                    ("k_proj", nkv * hd),
                    ("v_proj", nkv * hd),
                ],
                h,
            )?,
            o_proj: vb
                .with_quant(format(TextLinear::O))
                .linear("o_proj", h, nq * hd, false)?,
            q_norm: vb.rms_norm("q_norm", hd, cfg.rms_norm_eps)?,
            k_norm: vb.rms_norm("k_norm", hd, cfg.rms_norm_eps)?,
            num_heads: nq,
            num_kv_heads: nkv,
            head_dim: hd,
        })
    }

    /// h: (m, H) normed input, the rows of `seqs` in order -> out: (m, H). Each sequence appends its K, V
    /// to its cache rows [len, len + l) of layer `li` and attends over its own cache.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        h: &[f32],
        m: usize,
        b: AttnBufs,
        seqs: &mut [Seq],
        li: usize,
        out: &mut [f32],
    ) -> Result<(), ModelError> {
        let k = &c.k;
        let (nq, nkv, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let kvd = nkv * hd;
        let half = hd / 2;
        // 1. q = q_norm(q_proj(h).view(m, nq, hd)); k = k_norm(k_proj(h).view(m, nkv, hd)); v = v_proj(h)
        //    One matmul for q, k, v over all rows                             (m, (nq + 2·nkv)·hd)
        let (qd, row) = (nq * hd, nq * hd + 2 * kvd);
        self.qkv_proj.forward(c, h, m, b.qkv)?;
        let qkv = &b.qkv[..m * row];
        // 2. q, k = apply_rotary_pos_emb(q, k, cos, sin)   (norm before rope)
        //    Norm and RoPE in one pass per head: q for all rows into its buffer; per sequence, k straight
        //    into the cache rows of its tokens and v rows copied to the cache.
        let (qn, kn) = (&self.q_norm, &self.k_norm);
        k.rms_norm_rope_half(qkv, row, b.q, qd, m, nq, &qn.weight, qn.eps, b.cos, b.sin)
            .ctx("text q_norm + rope")?;
        let mut r0 = 0;
        for s in seqs.iter_mut() {
            let (l, start) = (s.ids.len(), s.cache.len());
            let rows = &qkv[r0 * row..(r0 + l) * row];
            let (k_cache, v_cache) = (&mut s.cache.k[li], &mut s.cache.v[li]);
            k.rms_norm_rope_half(
                &rows[qd..],
                row,
                &mut k_cache[start * kvd..(start + l) * kvd],
                kvd,
                l,
                nkv,
                &kn.weight,
                kn.eps,
                &b.cos[r0 * half..(r0 + l) * half],
                &b.sin[r0 * half..(r0 + l) * half],
            )
            .ctx("text k_norm + rope")?;
            for (r, src) in rows.chunks_exact(row).enumerate() {
                let cr = (start + r) * kvd..(start + r + 1) * kvd;
                v_cache[cr].copy_from_slice(&src[qd + kvd..]);
            }
            // 3. o = causal GQA attention over cache rows [0, start+l), scale hd^-0.5   (l, nq, hd)
            let kv_len = start + l;
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
            let q_layout = AttnLayout {
                row_stride: qd,
                head_stride: hd,
            };
            k.attention(
                &b.q[r0 * qd..(r0 + l) * qd],
                q_layout,
                &k_cache[..kv_len * kvd],
                kv_layout,
                &v_cache[..kv_len * kvd],
                kv_layout,
                &mut b.out[r0 * qd..(r0 + l) * qd],
                &p,
            )
            .ctx("text attention")?;
            r0 += l;
        }
        // 4. out = o_proj(o.reshape(m, nq·hd))
        self.o_proj.forward(c, &b.out[..m * qd], m, out)
    }
}
