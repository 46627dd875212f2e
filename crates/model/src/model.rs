//! Qwen3VLForConditionalGeneration: the vision tower, the text decoder and the lm head.

use std::cell::Cell;
use std::path::Path;

use qwen3vl_kernels::Kernels;

use crate::config::Config;
use crate::input::{Logits, PositionsRef, Seq, VisionInput, VisionRows};
use crate::kv_cache::KvCache;
use crate::linear::{quantize, Ctx, Linear, LinearWeight, Vb};
use crate::state::RunState;
use crate::text::TextModel;
use crate::trace::{Hooks, Trace};
use crate::vision::{VisionEncoding, VisionModel};
use crate::weight_cache::{Session, WeightCache, WeightCacheReport};
use crate::weights::{Dtype, Weights};
use crate::ModelError;
use qwen3vl_kernels::matmul::MatmulPath;
use qwen3vl_kernels::quant::QuantFormat;

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
    /// Quantize the text decoder's linear weights at load (the lm head and tied embeddings to q8 for any
    /// format: they weigh most on accuracy). None: packed bf16/f32.
    pub quant: Option<QuantFormat>,
    /// Quantize the vision tower's linear weights at load (None: packed, the default).
    pub vision_quant: Option<QuantFormat>,
    /// Called as tensors are loaded with (bytes done, bytes total).
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Where packed weights are cached between loads ([`Model::load`] only; off by default).
    pub weight_cache: WeightCache<'a>,
}

pub struct Model {
    config: Config,
    ctx: Ctx,
    precision: Precision,
    /// Bytes of tensor data in the checkpoint the model was loaded from.
    checkpoint_bytes: u64,
    /// What the packed-weight cache did at load.
    weight_cache: WeightCacheReport,
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
        let cache = Session::open(dir, &weights, &kernels, opts);
        Model::build(config, &weights, kernels, opts, cache)
    }

    /// Builds the model from a parsed config and opened weights (no packed-weight cache: it needs the
    /// checkpoint directory; see [`Model::load`]).
    pub fn from_weights(
        config: Config,
        weights: &Weights,
        kernels: Kernels,
        opts: &LoadOptions,
    ) -> Result<Model, ModelError> {
        Model::build(config, weights, kernels, opts, Session::off())
    }

    fn build(
        config: Config,
        weights: &Weights,
        kernels: Kernels,
        opts: &LoadOptions,
        cache: Session,
    ) -> Result<Model, ModelError> {
        let done = Cell::new(0u64);
        let root = Vb::root(weights, kernels, opts.progress, &done, &cache);
        let vb = root.pp("model");
        let (v, h) = (config.text.vocab_size, config.text.hidden_size);
        // The lm head is packed first: packing holds a tensor's mapped source and its packed copy at once,
        // and doing the largest tensor while little else is packed keeps peak RSS near the packed size.
        let lm_head = if config.tie_word_embeddings {
            // Tied: lm_head = embed_tokens (lm_head.weight, if present, is ignored as transformers does).
            // (Not counted for progress here: the text model counts embed_tokens when it takes it.)
            let key = "model.language_model.embed_tokens.weight";
            let stored = root.stored_quant(&[(key.to_string(), v)], h)?;
            Linear {
                weight: match (stored, opts.quant) {
                    (Some(q), _) => LinearWeight::Quant(q),
                    (None, Some(_)) => LinearWeight::Quant(quantize(
                        &kernels,
                        QuantFormat::Q8,
                        &[&weights.float(key, &[v, h])?],
                        v,
                        h,
                    )?),
                    (None, None) => root.pack(&[&weights.float(key, &[v, h])?], v, h)?,
                },
                bias: None,
                out_features: v,
                in_features: h,
            }
        } else if weights.contains("lm_head.weight") {
            root.with_quant(opts.quant.map(|_| QuantFormat::Q8))
                .linear("lm_head", v, h, false)?
        } else {
            return Err(ModelError::MissingTensor {
                key: "lm_head.weight".into(),
                msg: "absent, and config.json says tie_word_embeddings = false".into(),
            });
        };
        let visual = VisionModel::load(
            &vb.pp("visual").with_quant(opts.vision_quant),
            &config.vision,
        )?;
        let mut language_model = TextModel::load(
            &vb.pp("language_model").with_quant(opts.quant),
            &config.text,
        )?;
        language_model.embed_from_lm_head = config.tie_word_embeddings;
        if !config.tie_word_embeddings && language_model.embed_tokens.dtype == Dtype::U8 {
            return Err(ModelError::Dtype {
                key: language_model.embed_tokens.key.clone(),
                msg: "quantized, but embeddings are only read quantized through a tied lm head \
                      (tie_word_embeddings = false): store them as floats"
                    .into(),
            });
        }
        language_model.visual_token_ids = [config.image_token_id, config.video_token_id];
        let path = match opts.precision {
            Precision::F32 => MatmulPath::Exact,
            Precision::Fast => MatmulPath::Fast,
        };
        Ok(Model {
            config,
            ctx: Ctx { k: kernels, path },
            precision: opts.precision,
            checkpoint_bytes: weights.total_bytes(),
            weight_cache: cache.finish(),
            visual,
            language_model,
            lm_head,
        })
    }

    /// What the packed-weight cache did at load, with its notes (for the caller to show).
    pub fn weight_cache(&self) -> &WeightCacheReport {
        &self.weight_cache
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
    pub fn encode_images(&self, images: &[VisionInput]) -> Result<VisionOutput, ModelError> {
        self.encode_images_with(images, Hooks::default())
    }

    /// [`Model::encode_images`] in steps: this runs the patch and position embeddings, then
    /// [`Model::encode_step`] runs one block at a time and [`Model::encode_finish`] the merger. The same
    /// arithmetic as `encode_images` (the same bits); a scheduler interleaves it with decode steps.
    pub fn begin_images(&self, images: &[VisionInput]) -> Result<VisionEncoding, ModelError> {
        self.visual.begin(&self.ctx, images, &mut Hooks::default())
    }

    /// Runs the next vision block of `e` (and its DeepStack merger); returns whether all blocks have run.
    pub fn encode_step(&self, e: &mut VisionEncoding) -> Result<bool, ModelError> {
        self.visual.step(&self.ctx, e, &mut Hooks::default())
    }

    /// Blocks of the vision tower.
    pub fn vision_blocks(&self) -> usize {
        self.visual.blocks.len()
    }

    /// The merged visual tokens of a finished encoding (an error if blocks are left).
    pub fn encode_finish(&self, e: VisionEncoding) -> Result<VisionOutput, ModelError> {
        self.visual.finish(&self.ctx, e, &mut Hooks::default())
    }

    /// [`Model::encode_images`] with `hooks`: each stage recorded into a trace, [`crate::Progress::Vision`]
    /// reported after each block.
    pub fn encode_images_with(
        &self,
        images: &[VisionInput],
        mut hooks: Hooks,
    ) -> Result<VisionOutput, ModelError> {
        self.visual.forward(&self.ctx, images, &mut hooks)
    }

    /// Runs `ids` (l) at M-RoPE `positions` (3 × l, absolute) through the decoder, appending to `cache`.
    /// `vision` (prefill only) supplies the rows of the image tokens and the DeepStack features.
    /// Returns logits (V) for `Logits::Last` or (l, V) for `Logits::All`, held in `state`.
    pub fn forward<'s>(
        &self,
        ids: &[u32],
        positions: PositionsRef,
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        state: &'s mut RunState,
        logits: Logits,
    ) -> Result<&'s [f32], ModelError> {
        self.forward_with(
            ids,
            positions,
            vision,
            cache,
            state,
            logits,
            Hooks::default(),
        )
    }

    /// [`Model::forward`] with `hooks`: each stage recorded into a trace, [`crate::Progress::Decoder`]
    /// reported after each decoder layer (for a long prefill).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_with<'s>(
        &self,
        ids: &[u32],
        positions: PositionsRef,
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        state: &'s mut RunState,
        logits: Logits,
        mut hooks: Hooks,
    ) -> Result<&'s [f32], ModelError> {
        // one sequence through the batched forward, its image tokens checked against `vision`
        let mut seq = [Seq {
            ids,
            positions,
            vision: vision.map(|features| VisionRows { features, first: 0 }),
            cache,
            logits,
        }];
        if let Some(v) = vision {
            // A whole prompt: its image tokens take every visual row.
            let n = ids
                .iter()
                .filter(|&&t| t == self.config.image_token_id || t == self.config.video_token_id)
                .count();
            let n_tok = v.n_tokens(self.config.text.hidden_size);
            if n != n_tok {
                return Err(ModelError::Input(format!(
                    "image features and image tokens do not match: {n} image tokens in the prompt, {n_tok} \
                     visual tokens from the vision tower"
                )));
            }
        }
        self.forward_batch_inner(&mut seq, state, &mut hooks)
    }

    /// One forward pass over several sequences, each appending its tokens to its own cache: a batched decode
    /// step (N sequences of one token), prefill chunks, or both mixed. The matmuls run over all rows at once
    /// (the weights are read once for the whole batch); attention runs per sequence. Returns the requested
    /// logits rows of every sequence in order, (r, V), held in `state`.
    pub fn forward_batch<'s>(
        &self,
        seqs: &mut [Seq],
        state: &'s mut RunState,
    ) -> Result<&'s [f32], ModelError> {
        self.forward_batch_traced(seqs, state, None)
    }

    /// [`Model::forward_batch`], recording each stage into `trace`.
    pub fn forward_batch_traced<'s>(
        &self,
        seqs: &mut [Seq],
        state: &'s mut RunState,
        trace: Option<&mut dyn Trace>,
    ) -> Result<&'s [f32], ModelError> {
        self.forward_batch_inner(
            seqs,
            state,
            &mut Hooks {
                trace,
                progress: None,
            },
        )
    }

    fn forward_batch_inner<'s>(
        &self,
        seqs: &mut [Seq],
        state: &'s mut RunState,
        tracer: &mut Hooks,
    ) -> Result<&'s [f32], ModelError> {
        self.run_decoder(seqs, state, tracer)?;

        // logits = lm_head(norm(x)) for the requested rows
        let (h, vs) = (self.config.text.hidden_size, self.vocab_size());
        let m: usize = seqs.iter().map(|s| s.ids.len()).sum();
        let RunState {
            x, picked, logits, ..
        } = state;
        let all = seqs.len() == 1 && seqs[0].logits == Logits::All;
        let (rows, src) = if all {
            (m, &x[..])
        } else {
            picked.clear();
            let mut r0 = 0;
            for s in seqs.iter() {
                let l = s.ids.len();
                match s.logits {
                    Logits::None => {}
                    Logits::Last => picked.extend_from_slice(&x[(r0 + l - 1) * h..(r0 + l) * h]),
                    Logits::All => picked.extend_from_slice(&x[r0 * h..(r0 + l) * h]),
                }
                r0 += l;
            }
            (picked.len() / h, &picked[..])
        };
        logits.resize(rows * vs, 0.0);
        if rows > 0 {
            self.lm_head.forward(&self.ctx, src, rows, logits)?;
        }
        if all {
            tracer.rec(|| "logits".into(), &[m, vs], logits);
        }
        Ok(&state.logits)
    }

    /// Checks the inputs, runs the decoder over every sequence (appending to its cache) and leaves the
    /// final-normed hidden states (m, H) in `state.x`.
    fn run_decoder(
        &self,
        seqs: &mut [Seq],
        state: &mut RunState,
        tracer: &mut Hooks,
    ) -> Result<(), ModelError> {
        if seqs.is_empty() {
            return Err(ModelError::Input("no sequences to run".into()));
        }
        let (h, kvd, layers) = {
            let t = &self.config.text;
            (
                t.hidden_size,
                t.num_key_value_heads * t.head_dim,
                t.num_hidden_layers,
            )
        };
        for (i, s) in seqs.iter().enumerate() {
            let l = s.ids.len();
            if l == 0 {
                return Err(ModelError::Input(format!("sequence {i}: no tokens to run")));
            }
            if let Some(a) = s.positions.rows.iter().position(|p| p.len() != l) {
                return Err(ModelError::Input(format!(
                    "sequence {i}: positions[{a}] has {} entries for {l} tokens",
                    s.positions.rows[a].len()
                )));
            }
            let c = &s.cache;
            if c.k.len() != layers || c.k.first().is_some_and(|k| k.len() != c.max_len() * kvd) {
                return Err(ModelError::Input(format!(
                    "sequence {i}: the KV cache was built for another model"
                )));
            }
            if c.len() + l > c.max_len() {
                return Err(ModelError::Input(format!(
                    "the KV cache holds {} of {} tokens; {l} more do not fit",
                    c.len(),
                    c.max_len()
                )));
            }
            if let Some(v) = s.vision {
                let n = s
                    .ids
                    .iter()
                    .filter(|&&t| {
                        t == self.config.image_token_id || t == self.config.video_token_id
                    })
                    .count();
                let n_tok = v.features.n_tokens(h);
                if v.features.embeds.len() != n_tok * h
                    || v.first + n > n_tok
                    || v.features
                        .deepstack
                        .iter()
                        .any(|f| f.len() != v.features.embeds.len())
                {
                    return Err(ModelError::Input(format!(
                        "sequence {i}: image features and image tokens do not match: image tokens {}..{} \
                         of {} visual tokens from the vision tower",
                        v.first,
                        v.first + n,
                        v.features.embeds.len() as f64 / h as f64
                    )));
                }
            }
        }
        self.language_model
            .forward(&self.ctx, &self.lm_head.weight, seqs, state, tracer)?;
        for s in seqs.iter_mut() {
            s.cache.advance(s.ids.len());
        }
        Ok(())
    }

    /// Like [`Model::forward`], but instead of every row of logits returns, per token, the `k` largest
    /// logits (descending) and the last token's full logits. The lm head runs over blocks of rows, so memory
    /// stays O(block · V) for long prompts (the `logits` command).
    pub fn forward_top_k(
        &self,
        ids: &[u32],
        positions: PositionsRef,
        vision: Option<&VisionOutput>,
        cache: &mut KvCache,
        state: &mut RunState,
        k: usize,
    ) -> Result<TopK, ModelError> {
        const BLOCK: usize = 64;
        let mut seq = [Seq {
            ids,
            positions,
            vision: vision.map(|features| VisionRows { features, first: 0 }),
            cache,
            logits: Logits::None,
        }];
        self.run_decoder(&mut seq, state, &mut Hooks::default())?;
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
                .forward(&self.ctx, &state.x[r0 * h..(r0 + rows) * h], rows, y)?;
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
