//! Qwen3VLTextModel: token embeddings with the visual rows scattered in, decoder layers with DeepStack
//! injection after the first ones, and the final norm (spec 4, 5).

pub mod attention;
pub mod decoder_layer;
pub mod mlp;
pub mod moe;
pub mod quant_mix;
pub mod rotary;

use crate::config::TextConfig;
use crate::input::Seq;
use crate::linear::{Ctx, LinearWeight, Vb};
use crate::norm::RmsNorm;
use crate::state::RunState;
use crate::trace::{Hooks, Progress};
use crate::weights::TensorRef;
use crate::{KernelCtx, ModelError};

pub use attention::TextAttention;
pub use decoder_layer::{DecoderLayer, LayerMlp};
pub use mlp::TextMlp;
pub use moe::{ExpertLayout, TextExperts, TextSparseMoeBlock, TextTopKRouter};
pub use quant_mix::{fused_order, text_linear_format, TextLinear};
pub use rotary::TextRotary;

pub struct TextModel {
    pub cfg: TextConfig,
    /// (V, H), read row by row from the mapping (unless `embed_from_lm_head`)
    pub embed_tokens: TensorRef,
    /// The embeddings are tied to the lm head: rows are read from its packed copy (identical values), so no
    /// page of the mapped table becomes resident (each mapped row read faults in its neighbours too).
    pub embed_from_lm_head: bool,
    pub layers: Vec<DecoderLayer>,
    /// (H)
    pub norm: RmsNorm,
    pub rotary_emb: TextRotary,
    /// `image_token_id` of config.json: the rows that take visual features
    pub visual_token_ids: [u32; 2],
}

impl TextModel {
    /// Bytes of the packed weights of every decoder layer's linears (q|k|v, o, gate|up, down) that one
    /// decode step streams besides the lm head and the KV cache: of a sparse layer, the router and k of its
    /// E experts (as if each expert weighed the mean).
    pub fn linear_weight_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| {
                let a = &l.self_attn;
                let attn: u64 = [&a.qkv_proj, &a.o_proj]
                    .iter()
                    .map(|lin| lin.weight.bytes() as u64)
                    .sum();
                let mlp = match &l.mlp {
                    LayerMlp::Dense(m) => {
                        (m.gate_up_proj.weight.bytes() + m.down_proj.weight.bytes()) as u64
                    }
                    LayerMlp::Sparse(m) => {
                        let e = m.experts.gate_up_proj.len().max(1) as u64;
                        m.gate.weight.weight.bytes() as u64
                            + m.expert_bytes() * m.top_k() as u64 / e
                    }
                };
                attn + mlp
            })
            .sum()
    }

    pub(crate) fn load(vb: &Vb, cfg: &TextConfig) -> Result<TextModel, ModelError> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| DecoderLayer::load(&vb.pp("layers").pp(l), cfg, l))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TextModel {
            cfg: cfg.clone(),
            embed_tokens: vb
                .pp("embed_tokens")
                .embedding("weight", &[cfg.vocab_size, cfg.hidden_size])?,
            embed_from_lm_head: false,
            layers,
            norm: vb.rms_norm("norm", cfg.hidden_size, cfg.rms_norm_eps)?,
            rotary_emb: TextRotary::new(cfg),
            visual_token_ids: [0; 2],
        })
    }

    /// Runs every sequence's ids through the decoder, appending to its cache; leaves the final-normed hidden
    /// states (m, H) of all rows (m = Σ l_i, sequences in order) in `st.x`. The matmuls see all m rows at
    /// once; attention runs per sequence over its own cache. `lm_head`: (V, H), the embedding rows when
    /// `embed_from_lm_head`. Inputs are checked by the caller ([`crate::Model::forward_batch`]).
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        lm_head: &LinearWeight,
        seqs: &mut [Seq],
        st: &mut RunState,
        trace: &mut Hooks,
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let hs = cfg.hidden_size;
        let m: usize = seqs.iter().map(|s| s.ids.len()).sum();
        st.x.resize(m * hs, 0.0);
        st.scratch.resize(cfg, m);
        let half = cfg.head_dim / 2;

        // 1. x = embed_tokens(ids)                                     (m, H)
        let mut r = 0;
        for s in seqs.iter() {
            for (i, &id) in s.ids.iter().enumerate() {
                if id as usize >= cfg.vocab_size {
                    return Err(ModelError::Input(format!(
                        "token id {id} at position {i} is outside the vocabulary ({})",
                        cfg.vocab_size
                    )));
                }
                let row = &mut st.x[(r + i) * hs..(r + i + 1) * hs];
                if self.embed_from_lm_head {
                    lm_head.row_f32(id as usize, row).ctx("embed_tokens")?;
                } else {
                    self.embed_tokens.row_f32(id as usize, row);
                }
            }
            r += s.ids.len();
        }
        // 2. x = x.masked_scatter(ids == image_token_id | ids == video_token_id, visual embeds in prompt
        //    order) (transformers scatters images and videos separately; with the vision output in prompt
        //    order that is the same); the same rows get DeepStack later.
        st.visual_rows.clear();
        let mut r = 0;
        for (si, s) in seqs.iter().enumerate() {
            if let Some(v) = s.vision {
                let mut f = v.first;
                for (i, &id) in s.ids.iter().enumerate() {
                    if self.visual_token_ids.contains(&id) {
                        st.visual_rows.push((r + i, si, f));
                        f += 1;
                    }
                }
            }
            r += s.ids.len();
        }
        for &(row, si, f) in &st.visual_rows {
            let v = seqs[si]
                .vision
                .expect("rows come from sequences with vision")
                .features;
            st.x[row * hs..(row + 1) * hs].copy_from_slice(&v.embeds[f * hs..(f + 1) * hs]);
        }
        trace.rec(|| "language_model.embed".into(), &[m, hs], &st.x);

        // 3. position embeddings shared by all layers                   (m, hd/2)
        let mut r = 0;
        for s in seqs.iter() {
            let l = s.ids.len();
            let rows = r * half..(r + l) * half;
            self.rotary_emb.cos_sin(
                s.positions,
                &mut st.scratch.cos[rows.clone()],
                &mut st.scratch.sin[rows],
            );
            r += l;
        }

        // 4. decoder layers; DeepStack: x[visual rows] += deepstack[l] after layer l (prefill only)
        let RunState {
            x,
            scratch,
            visual_rows,
            ..
        } = st;
        for (li, layer) in self.layers.iter().enumerate() {
            layer.forward(c, x, m, scratch, seqs, li)?;
            for &(row, si, f) in visual_rows.iter() {
                let v = seqs[si]
                    .vision
                    .expect("rows come from sequences with vision")
                    .features;
                if let Some(feat) = v.deepstack.get(li) {
                    let dst = &mut x[row * hs..(row + 1) * hs];
                    for (a, b) in dst.iter_mut().zip(&feat[f * hs..(f + 1) * hs]) {
                        *a += b;
                    }
                }
            }
            trace.rec(|| format!("language_model.layers.{li}"), &[m, hs], x);
            trace.report(Progress::Decoder {
                tokens: m,
                done: li + 1,
                total: self.layers.len(),
            });
        }

        // 5. x = norm(x)
        self.norm.forward_inplace(&c.k, x)?;
        trace.rec(|| "language_model.norm".into(), &[m, hs], x);
        Ok(())
    }
}
