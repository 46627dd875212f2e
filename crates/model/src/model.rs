//! Qwen3VLForConditionalGeneration: the vision tower, the text decoder and the lm head.

use std::cell::Cell;
use std::path::Path;

use qwen3vl_kernels::Kernels;

use crate::config::Config;
use crate::kv_cache::KvCache;
use crate::linear::{pack, Ctx, Linear, Vb};
use crate::text::TextModel;
use crate::trace::{Trace, Tracer};
use crate::vision::VisionModel;
use crate::weights::Weights;
use crate::ModelError;
use qwen3vl_kernels::matmul::MatmulPath;
use qwen3vl_processor::ImageInput;

pub use crate::vision::VisionOutput;

/// Numeric mode. Activations are f32 in both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// No bf16 rounding of activations anywhere (parity with transformers in float32).
    F32,
    /// Matmuls may round their inputs to bf16 and use bf16 dot products where the CPU has them.
    #[default]
    Fast,
}

#[derive(Clone, Copy, Default)]
pub struct LoadOptions<'a> {
    pub precision: Precision,
    /// Called as tensors are loaded with (bytes done, bytes total).
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// Which rows of logits `forward` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// (V): the last token's
    Last,
    /// (l, V): every token's
    All,
}

pub struct Model {
    config: Config,
    ctx: Ctx,
    precision: Precision,
    /// Bytes of tensor data in the checkpoint the model was loaded from.
    checkpoint_bytes: u64,
    pub visual: VisionModel,
    pub language_model: TextModel,
    /// (V, H); a packed copy of embed_tokens when the embeddings are tied
    pub lm_head: Linear,
}

impl Model {
    /// Loads `dir` (config.json + model.safetensors or sharded safetensors).
    pub fn load(dir: &Path, kernels: Kernels, opts: &LoadOptions) -> Result<Model, ModelError> {
        let config = Config::from_file(&dir.join("config.json"))?;
        let weights = Weights::open_dir(dir)?;
        Model::from_weights(config, &weights, kernels, opts)
    }

    /// Builds the model from a parsed config and opened weights.
    pub fn from_weights(
        config: Config,
        weights: &Weights,
        kernels: Kernels,
        opts: &LoadOptions,
    ) -> Result<Model, ModelError> {
        let done = Cell::new(0u64);
        let root = Vb::root(weights, kernels, opts.progress, &done);
        let vb = root.pp("model");
        let (v, h) = (config.text.vocab_size, config.text.hidden_size);
        // The lm head is packed first: packing holds a tensor's mapped source and its packed copy at once,
        // and doing the largest tensor while little else is packed keeps peak RSS near the packed size.
        let lm_head = if config.tie_word_embeddings {
            // Tied: lm_head = embed_tokens (lm_head.weight, if present, is ignored as transformers does).
            // (Not counted for progress here: the text model counts embed_tokens when it takes it.)
            let embed = weights.float("model.language_model.embed_tokens.weight", &[v, h])?;
            Linear {
                weight: pack(&kernels, &[&embed], v, h)?,
                bias: None,
                out_features: v,
                in_features: h,
            }
        } else if weights.contains("lm_head.weight") {
            root.linear("lm_head", v, h, false)?
        } else {
            return Err(ModelError::MissingTensor {
                key: "lm_head.weight".into(),
                msg: "absent, and config.json says tie_word_embeddings = false".into(),
            });
        };
        let visual = VisionModel::load(&vb.pp("visual"), &config.vision)?;
        let mut language_model = TextModel::load(&vb.pp("language_model"), &config.text)?;
        language_model.embed_from_lm_head = config.tie_word_embeddings;
        let path = match opts.precision {
            Precision::F32 => MatmulPath::Exact,
            Precision::Fast => MatmulPath::Fast,
        };
        Ok(Model {
            config,
            ctx: Ctx { k: kernels, path },
            precision: opts.precision,
            checkpoint_bytes: weights.total_bytes(),
            visual,
            language_model,
            lm_head,
        })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn vocab_size(&self) -> usize {
        self.config.text.vocab_size
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of tensor data in the checkpoint the model was loaded from (the safetensors payloads).
    pub fn checkpoint_bytes(&self) -> u64 {
        self.checkpoint_bytes
    }

    /// The matmul arithmetic of this model's precision.
    pub fn matmul_path(&self) -> MatmulPath {
        self.ctx.path
    }

    pub fn kernels(&self) -> Kernels {
        self.ctx.k
    }

    /// Runs the vision tower over all images of one prompt (in prompt order).
    pub fn encode_images(&self, images: &[ImageInput]) -> Result<VisionOutput, ModelError> {
        self.encode_images_traced(images, None)
    }

    /// [`Model::encode_images`], recording each stage into `trace`.
    pub fn encode_images_traced(
        &self,
        images: &[ImageInput],
        trace: Option<&mut dyn Trace>,
    ) -> Result<VisionOutput, ModelError> {
        self.visual.forward(&self.ctx, images, &mut Tracer(trace))
    }

    /// Runs `ids` (l) at M-RoPE `positions` (3 × l, absolute) through the decoder, appending to `cache`.
    /// `vision` (prefill only) supplies the rows of the image tokens and the DeepStack features.
    /// Returns logits (V) for `Logits::Last` or (l, V) for `Logits::All`.
    pub fn forward(
        &self,
        ids: &[u32],
        positions: &[Vec<i64>; 3],
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        logits: Logits,
    ) -> Result<Vec<f32>, ModelError> {
        self.forward_traced(ids, positions, vision, cache, logits, None)
    }

    /// [`Model::forward`], recording each stage into `trace`.
    pub fn forward_traced(
        &self,
        ids: &[u32],
        positions: &[Vec<i64>; 3],
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        logits: Logits,
        trace: Option<&mut dyn Trace>,
    ) -> Result<Vec<f32>, ModelError> {
        let mut logits_out = Vec::new();
        self.forward_into(
            ids,
            positions,
            vision,
            cache,
            logits,
            &mut logits_out,
            trace,
        )?;
        Ok(logits_out)
    }

    /// [`Model::forward_traced`] writing the logits into `out` (resized; reusing its capacity).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_into(
        &self,
        ids: &[u32],
        positions: &[Vec<i64>; 3],
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        logits: Logits,
        out: &mut Vec<f32>,
        trace: Option<&mut dyn Trace>,
    ) -> Result<(), ModelError> {
        let l = ids.len();
        let mut tracer = Tracer(trace);
        self.run_decoder(ids, positions, vision, cache, &mut tracer)?;

        // logits = lm_head(norm(x)) for the requested rows
        let (h, vs) = (self.config.text.hidden_size, self.vocab_size());
        let (rows, x) = match logits {
            Logits::All => (l, &cache.x[..]),
            Logits::Last => (1, &cache.x[(l - 1) * h..l * h]),
        };
        out.resize(rows * vs, 0.0);
        self.lm_head.forward(&self.ctx, x, rows, out)?;
        if logits == Logits::All {
            tracer.rec(|| "logits".into(), &[l, vs], out);
        }
        Ok(())
    }

    /// Checks the inputs, runs the decoder over `ids` (appending to `cache`) and leaves the final-normed
    /// hidden states (l, H) in `cache.x`.
    fn run_decoder(
        &self,
        ids: &[u32],
        positions: &[Vec<i64>; 3],
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        tracer: &mut Tracer,
    ) -> Result<(), ModelError> {
        let l = ids.len();
        if l == 0 {
            return Err(ModelError::Input("no tokens to run".into()));
        }
        if let Some(a) = positions.iter().position(|p| p.len() != l) {
            return Err(ModelError::Input(format!(
                "positions[{a}] has {} entries for {l} tokens",
                positions[a].len()
            )));
        }
        if cache.len() + l > cache.max_len() {
            return Err(ModelError::Input(format!(
                "the KV cache holds {} of {} tokens; {l} more do not fit",
                cache.len(),
                cache.max_len()
            )));
        }
        // Images and videos: the vision output holds their tokens in prompt order.
        let vision = vision.map(|v| (v, [self.config.image_token_id, self.config.video_token_id]));
        self.language_model.forward(
            &self.ctx,
            &self.lm_head.weight,
            ids,
            positions,
            vision,
            cache,
            tracer,
        )?;
        cache.advance(l);
        Ok(())
    }

    /// Like [`Model::forward`], but instead of every row of logits returns, per token, the `k` largest
    /// logits (descending) and the last token's full logits. The lm head runs over blocks of rows, so memory
    /// stays O(block · V) for long prompts (the `logits` command).
    pub fn forward_top_k(
        &self,
        ids: &[u32],
        positions: &[Vec<i64>; 3],
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        k: usize,
    ) -> Result<TopK, ModelError> {
        const BLOCK: usize = 64;
        self.run_decoder(ids, positions, vision, cache, &mut Tracer(None))?;
        let (l, h, vs) = (ids.len(), self.config.text.hidden_size, self.vocab_size());
        let k = k.min(vs);
        let mut out = TopK {
            k,
            idx: Vec::with_capacity(l * k),
            val: Vec::with_capacity(l * k),
            last: Vec::new(),
        };
        let mut buf = vec![0f32; BLOCK.min(l) * vs];
        for r0 in (0..l).step_by(BLOCK) {
            let rows = BLOCK.min(l - r0);
            let y = &mut buf[..rows * vs];
            self.lm_head
                .forward(&self.ctx, &cache.x[r0 * h..(r0 + rows) * h], rows, y)?;
            for row in y.chunks_exact(vs) {
                for (i, v) in top_k(row, k) {
                    out.idx.push(i as u32);
                    out.val.push(v);
                }
            }
            if r0 + rows == l {
                out.last = y[(rows - 1) * vs..].to_vec();
            }
        }
        Ok(out)
    }
}

/// Per-token top-k logits of [`Model::forward_top_k`].
#[derive(Clone, Debug)]
pub struct TopK {
    pub k: usize,
    /// (l, k) token ids, largest logit first
    pub idx: Vec<u32>,
    /// (l, k) their logits
    pub val: Vec<f32>,
    /// (V) logits of the last token
    pub last: Vec<f32>,
}

/// The k largest values of `x` with their indexes, descending (ties: lower index first; NaN never wins).
pub fn top_k(x: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for (i, &v) in x.iter().enumerate() {
        if v.is_nan() || (best.len() == k && v <= best[k - 1].1) {
            continue;
        }
        let pos = best.partition_point(|&(_, b)| b >= v);
        best.insert(pos, (i, v));
        best.truncate(k);
    }
    best
}
