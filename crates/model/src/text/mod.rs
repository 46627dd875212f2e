//! Qwen3VLTextModel: token embeddings with the visual rows scattered in, decoder layers with DeepStack
//! injection after the first ones, and the final norm (spec 4, 5).

pub mod attention;
pub mod decoder_layer;
pub mod mlp;
pub mod rotary;

use crate::config::TextConfig;
use crate::kv_cache::KvCache;
use crate::linear::{Ctx, Vb};
use crate::norm::RmsNorm;
use crate::trace::Tracer;
use crate::vision::VisionOutput;
use crate::weights::TensorRef;
use crate::{KernelCtx, ModelError};
use qwen3vl_kernels::matmul::PackedWeight;

pub use attention::TextAttention;
pub use decoder_layer::DecoderLayer;
pub use mlp::TextMlp;
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
}

impl TextModel {
    /// Bytes of the packed weights of every decoder layer's linears (q|k|v, o, gate|up, down): what one
    /// decode step streams besides the lm head and the KV cache.
    pub fn linear_weight_bytes(&self) -> u64 {
        self.layers
            .iter()
            .map(|l| {
                let (a, m) = (&l.self_attn, &l.mlp);
                [&a.qkv_proj, &a.o_proj, &m.gate_up_proj, &m.down_proj]
                    .iter()
                    .map(|lin| lin.weight.bytes() as u64)
                    .sum::<u64>()
            })
            .sum()
    }

    pub(crate) fn load(vb: &Vb, cfg: &TextConfig) -> Result<TextModel, ModelError> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|l| DecoderLayer::load(&vb.pp("layers").pp(l), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TextModel {
            cfg: cfg.clone(),
            embed_tokens: vb
                .pp("embed_tokens")
                .tensor("weight", &[cfg.vocab_size, cfg.hidden_size])?,
            embed_from_lm_head: false,
            layers,
            norm: vb.rms_norm("norm", cfg.hidden_size, cfg.rms_norm_eps)?,
            rotary_emb: TextRotary::new(cfg),
        })
    }

    /// Runs ids (l) through the decoder, appending to `cache`; leaves the final-normed hidden states
    /// (l, H) in `cache.x`. `lm_head`: (V, H), the embedding rows when `embed_from_lm_head`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        c: &Ctx,
        lm_head: &PackedWeight,
        ids: &[u32],
        positions: &[Vec<i64>; 3],
        vision: Option<(&VisionOutput, [u32; 2])>,
        cache: &mut KvCache,
        trace: &mut Tracer,
    ) -> Result<(), ModelError> {
        let cfg = &self.cfg;
        let (l, hs) = (ids.len(), cfg.hidden_size);
        let start = cache.len();
        cache.x.resize(l * hs, 0.0);
        cache.scratch.resize(cfg, l);

        // 1. x = embed_tokens(ids)                                     (l, H)
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= cfg.vocab_size {
                return Err(ModelError::Input(format!(
                    "token id {id} at position {i} is outside the vocabulary ({})",
                    cfg.vocab_size
                )));
            }
            let row = &mut cache.x[i * hs..(i + 1) * hs];
            if self.embed_from_lm_head {
                lm_head.row_f32(id as usize, row).ctx("embed_tokens")?;
            } else {
                self.embed_tokens.row_f32(id as usize, row);
            }
        }
        // 2. x = x.masked_scatter(ids == image_token_id | ids == video_token_id, visual embeds in prompt
        //    order) (transformers scatters images and videos separately; with the vision output in prompt
        //    order that is the same); the same rows get DeepStack later.
        let mut visual_rows: Vec<usize> = Vec::new();
        if let Some((v, media_ids)) = vision {
            visual_rows = ids
                .iter()
                .enumerate()
                .filter(|(_, id)| media_ids.contains(id))
                .map(|(i, _)| i)
                .collect();
            let n_tok = v.embeds.len() / hs;
            if v.embeds.len() != n_tok * hs || n_tok != visual_rows.len() {
                return Err(ModelError::Input(format!(
                    "image features and image tokens do not match: {} image tokens in the prompt, {} visual \
                     tokens from the vision tower",
                    visual_rows.len(),
                    v.embeds.len() as f64 / hs as f64
                )));
            }
            if v.deepstack.iter().any(|f| f.len() != v.embeds.len()) {
                return Err(ModelError::Input(
                    "deepstack features differ in size from the visual embeddings".into(),
                ));
            }
            for (t, &r) in visual_rows.iter().enumerate() {
                cache.x[r * hs..(r + 1) * hs].copy_from_slice(&v.embeds[t * hs..(t + 1) * hs]);
            }
        }
        trace.rec(|| "language_model.embed".into(), &[l, hs], &cache.x);

        // 3. position embeddings shared by all layers                   (l, hd/2)
        self.rotary_emb
            .cos_sin(positions, &mut cache.scratch.cos, &mut cache.scratch.sin);

        // 4. decoder layers; DeepStack: x[visual rows] += deepstack[l] after layer l (prefill only)
        let KvCache {
            k, v, x, scratch, ..
        } = cache;
        for (li, layer) in self.layers.iter().enumerate() {
            layer.forward(c, x, l, scratch, &mut k[li], &mut v[li], start)?;
            if let Some((vis, _)) = vision {
                if let Some(feat) = vis.deepstack.get(li) {
                    for (t, &r) in visual_rows.iter().enumerate() {
                        let row = &mut x[r * hs..(r + 1) * hs];
                        for (a, b) in row.iter_mut().zip(&feat[t * hs..(t + 1) * hs]) {
                            *a += b;
                        }
                    }
                }
            }
            trace.rec(|| format!("language_model.layers.{li}"), &[l, hs], x);
        }

        // 5. x = norm(x)
        self.norm.forward_inplace(&c.k, x)?;
        trace.rec(|| "language_model.norm".into(), &[l, hs], x);
        Ok(())
    }
}
