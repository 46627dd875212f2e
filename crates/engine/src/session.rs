//! A loaded checkpoint ([`Engine`]) and a conversation on it ([`Session`], which owns the KV cache).
//!
//! A session keeps every turn in its KV cache: a new turn runs only its own tokens through the model
//! (plus the `<|im_end|>\n` that closes the previous answer), never the history again. M-RoPE positions of
//! the new tokens continue from the cache: the processor numbers a turn from 0, and the session adds
//! `cache_len + rope_delta` (the conversation's accumulated delta, spec 5.3), then adds the turn's own
//! delta to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use qwen3vl_kernels::Kernels;
use qwen3vl_model::{KvCache, LoadOptions, Logits, Model, ModelError, Precision};
use qwen3vl_processor::{ImageInput, Message, Processor, ProcessorError, VideoInput, VideoOptions};

use crate::generate::{run_loop, FinishReason, LoopError, StopConfig};
use crate::generation_config::{GenerationConfig, GenerationConfigError};
use crate::sampling::{Sampler, SamplingError, SamplingParams};
use crate::stream::{StreamDecoder, TokenBytes};

/// Largest prompt text accepted before tokenization (RELIABILITY 11): a bound on tokenizer time
/// (about 3 s for 4 MiB on one loaded core).
pub const MAX_PROMPT_BYTES: usize = 4 << 20;

/// Bytes of prompt text worth tokenizing for a context of `context` tokens: 16 bytes per token (far above
/// any real text's average), at most [`MAX_PROMPT_BYTES`].
pub fn prompt_byte_limit(context: usize) -> usize {
    MAX_PROMPT_BYTES.min(context.saturating_mul(16))
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model directory {0} does not exist")]
    NoModelDir(PathBuf),
    #[error("{0} is not a directory")]
    NotADir(PathBuf),
    #[error("{dir} has no {file} (expected a Hugging Face checkpoint directory: config.json, *.safetensors, tokenizer.json, ...)")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error("{0}")]
    Model(#[from] ModelError),
    #[error("{0}")]
    Processor(#[from] ProcessorError),
    #[error("{0}")]
    Sampling(#[from] SamplingError),
    #[error("{0}")]
    GenerationConfig(#[from] GenerationConfigError),
    #[error("SIMD level: {0}")]
    Isa(#[from] qwen3vl_kernels::isa::IsaError),
    /// A request the engine refuses (the message says why and what the limit is).
    #[error("{0}")]
    Input(String),
    /// The caller's output sink failed (e.g. a closed pipe).
    #[error("writing output: {0}")]
    Output(#[from] std::io::Error),
}

/// Refuse prompt text over `limit` bytes before tokenizing it (RELIABILITY 11).
pub fn check_prompt_bytes(messages: &[Message], limit: usize) -> Result<(), EngineError> {
    let text_bytes: usize = messages
        .iter()
        .flat_map(|m| &m.content)
        .map(|c| match c {
            qwen3vl_processor::Content::Text(t) => t.len(),
            _ => 0,
        })
        .sum();
    if text_bytes > limit {
        return Err(EngineError::Input(format!(
            "the prompt text is {text_bytes} bytes, over the limit of {limit} bytes for this context"
        )));
    }
    Ok(())
}

/// How to load a checkpoint.
#[derive(Clone, Copy, Default)]
pub struct EngineOptions<'a> {
    /// Worker threads (0 = all cores).
    pub threads: usize,
    pub precision: Precision,
    /// (bytes done, bytes total) while weights load.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
}

/// A loaded checkpoint: model, processor, decoding defaults, detokenizer table.
pub struct Engine {
    pub model: Model,
    pub processor: Processor,
    pub generation_config: GenerationConfig,
    pub token_bytes: Arc<TokenBytes>,
    /// Seconds spent in [`Engine::load`].
    pub load_seconds: f64,
    /// `<|im_end|>` and `\n`: close an assistant turn in the cache.
    im_end: u32,
    newline: u32,
}

impl Engine {
    /// Load `dir` (a Hub checkpoint directory).
    pub fn load(dir: &Path, opts: &EngineOptions) -> Result<Engine, EngineError> {
        let t0 = Instant::now();
        if !dir.exists() {
            return Err(EngineError::NoModelDir(dir.to_path_buf()));
        }
        if !dir.is_dir() {
            return Err(EngineError::NotADir(dir.to_path_buf()));
        }
        for file in ["config.json", "tokenizer.json"] {
            if !dir.join(file).is_file() {
                return Err(EngineError::MissingFile {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
        if !dir.join("model.safetensors").is_file()
            && !dir.join("model.safetensors.index.json").is_file()
        {
            return Err(EngineError::MissingFile {
                dir: dir.to_path_buf(),
                file: "model.safetensors (or model.safetensors.index.json)",
            });
        }
        let mut kernels = Kernels::detect()?;
        if opts.threads > 0 {
            kernels = kernels.with_threads(opts.threads);
        }
        let processor = Processor::from_dir(dir)?.with_kernels(kernels);
        let generation_config = GenerationConfig::from_dir(dir)?;
        let model = Model::load(
            dir,
            kernels,
            &LoadOptions {
                precision: opts.precision,
                progress: opts.progress,
            },
        )?;
        let tok = processor.tokenizer();
        let im_end = tok.token_to_id("<|im_end|>").unwrap_or(151645);
        let newline = tok.token_to_id("Ċ").unwrap_or(198);
        let token_bytes = Arc::new(TokenBytes::from_tokenizer(tok));
        Ok(Engine {
            model,
            processor,
            generation_config,
            token_bytes,
            load_seconds: t0.elapsed().as_secs_f64(),
            im_end,
            newline,
        })
    }

    /// Read, sample, decode and preprocess one video (animated GIF / WebP / APNG, or a frame directory).
    pub fn load_video(&self, path: &Path, opts: &VideoOptions) -> Result<VideoInput, EngineError> {
        Ok(self.processor.load_video(path, opts)?)
    }

    /// Read, decode and preprocess one image file.
    pub fn load_image(&self, path: &Path) -> Result<ImageInput, EngineError> {
        let img = self.processor.load_image_file(path)?;
        Ok(self.processor.preprocess_image(&img)?)
    }

    /// The model's context length (`max_position_embeddings`).
    pub fn context_len(&self) -> usize {
        self.model.config().text.max_position_embeddings
    }

    /// A conversation holding up to `max_len` tokens (clamped to the context length).
    pub fn session(&self, max_len: usize) -> Session<'_> {
        let max_len = max_len.clamp(1, self.context_len().max(1));
        Session {
            engine: self,
            cache: KvCache::new(&self.model, max_len),
            tokens: Vec::new(),
            rope_delta: 0,
            close: Vec::new(),
        }
    }
}

/// One request: decoding settings and limits.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// At least 1.
    pub max_tokens: usize,
    pub stop_strings: Vec<String>,
    /// Extra EOS ids (the checkpoint's are always used).
    pub extra_eos: Vec<u32>,
}

/// Timings of one turn.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TurnStats {
    pub image_tokens: usize,
    pub vision_seconds: f64,
    pub prefill_tokens: usize,
    pub prefill_seconds: f64,
    /// Tokens generated (including a final EOS id).
    pub generated_tokens: usize,
    /// Model steps after the prefill and their time.
    pub decode_steps: usize,
    pub decode_seconds: f64,
}

impl TurnStats {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_seconds)
    }
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.decode_steps, self.decode_seconds)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

/// The answer of one turn.
#[derive(Clone, Debug)]
pub struct Generation {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
    pub stats: TurnStats,
}

/// A conversation: the KV cache and what it holds.
pub struct Session<'e> {
    engine: &'e Engine,
    cache: KvCache,
    /// Token ids in the cache, in order.
    tokens: Vec<u32>,
    /// Accumulated M-RoPE delta of the cached sequence.
    rope_delta: i64,
    /// Tokens to prepend to the next turn to close the previous answer.
    close: Vec<u32>,
}

impl Session<'_> {
    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn max_len(&self) -> usize {
        self.cache.max_len()
    }

    /// Tokens the next turn with `messages` and `images` would add to the cache before generating
    /// (the tokens closing the previous answer plus the turn's prompt).
    pub fn turn_len(
        &self,
        messages: &[Message],
        images: &[ImageInput],
    ) -> Result<usize, EngineError> {
        check_prompt_bytes(messages, prompt_byte_limit(self.engine.context_len()))?;
        let prompt = self.engine.processor.encode(messages, images, true)?;
        Ok(self.close.len() + prompt.input_ids.len())
    }

    /// Forget the conversation.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.tokens.clear();
        self.rope_delta = 0;
        self.close.clear();
    }

    /// Run one turn: `messages` are the new messages (a user message, optionally preceded by a system
    /// message on the first turn), `images` the pixels of their image items in order. Streams the answer
    /// to `on_text` and keeps everything in the cache for the next turn.
    pub fn generate(
        &mut self,
        messages: &[Message],
        images: &[ImageInput],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> Result<(), EngineError>,
    ) -> Result<Generation, EngineError> {
        self.generate_media(messages, images, &[], params, on_text)
    }

    /// [`Session::generate`] with videos: `videos` are the preprocessed videos of the messages' video items,
    /// in order (see [`Engine::load_video`]).
    pub fn generate_media(
        &mut self,
        messages: &[Message],
        images: &[ImageInput],
        videos: &[VideoInput],
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> Result<(), EngineError>,
    ) -> Result<Generation, EngineError> {
        let engine = self.engine;
        let model = &engine.model;
        if params.max_tokens == 0 {
            return Err(EngineError::Input(
                "max_tokens must be at least 1".to_string(),
            ));
        }
        check_prompt_bytes(messages, prompt_byte_limit(self.engine.context_len()))?;
        let mut sampler = Sampler::new(params.sampling.clone())?;

        // 1. Tokens and positions of this turn, continuing the cache.
        let prompt = engine
            .processor
            .encode_media(messages, images, videos, true)?;
        let base = self.cache.len() as i64 + self.rope_delta;
        let n_close = self.close.len();
        let mut ids = self.close.clone();
        ids.extend_from_slice(&prompt.input_ids);
        let mut positions: [Vec<i64>; 3] = Default::default();
        for (axis, p) in positions.iter_mut().enumerate() {
            p.extend((0..n_close as i64).map(|i| base + i));
            p.extend(
                prompt.positions[axis]
                    .iter()
                    .map(|&x| x + base + n_close as i64),
            );
        }
        let needed = self.cache.len() + ids.len() + params.max_tokens;
        if needed > self.cache.max_len() {
            return Err(EngineError::Input(format!(
                "the prompt has {} tokens{}; with max_tokens {} that is {} tokens, over the context of {} tokens",
                ids.len(),
                if self.cache.is_empty() {
                    String::new()
                } else {
                    format!(" (after {} tokens of conversation)", self.cache.len())
                },
                params.max_tokens,
                needed,
                self.cache.max_len()
            )));
        }
        let mut stats = TurnStats {
            prefill_tokens: ids.len(),
            ..Default::default()
        };

        // 2. Vision tower, over the images and videos in prompt order.
        let visual = crate::media::visual_inputs_in_prompt_order(messages, images, videos);
        let vision = if visual.is_empty() {
            None
        } else {
            let t = Instant::now();
            let v = model.encode_images(&visual)?;
            stats.vision_seconds = t.elapsed().as_secs_f64();
            stats.image_tokens = v.n_tokens(model.config().text.hidden_size);
            Some(v)
        };

        // 3. Prefill.
        let t = Instant::now();
        let logits = model.forward(
            &ids,
            &positions,
            vision.as_ref(),
            &mut self.cache,
            Logits::Last,
        )?;
        stats.prefill_seconds = t.elapsed().as_secs_f64();
        self.tokens.extend_from_slice(&ids);
        self.rope_delta += prompt.rope_delta;
        self.close.clear();

        // 4. Decode.
        sampler.add_prompt_tokens(&self.tokens);
        let mut eos_ids = engine.generation_config.eos_token_ids.clone();
        eos_ids.extend_from_slice(&params.extra_eos);
        let stop = StopConfig {
            eos_ids,
            stop_strings: params.stop_strings.clone(),
            max_tokens: params.max_tokens,
        };
        let mut decoder = StreamDecoder::new(engine.token_bytes.clone(), true);
        let cache = &mut self.cache;
        let tokens = &mut self.tokens;
        let rope_delta = self.rope_delta;
        let mut decode_seconds = 0.0;
        let out = run_loop(
            logits,
            &mut sampler,
            &mut decoder,
            &stop,
            |id| {
                let t = Instant::now();
                let pos = cache.len() as i64 + rope_delta;
                let p = [vec![pos], vec![pos], vec![pos]];
                let l = model.forward(&[id], &p, None, cache, Logits::Last)?;
                tokens.push(id);
                decode_seconds += t.elapsed().as_secs_f64();
                Ok(l)
            },
            on_text,
        )
        .map_err(|e| match e {
            LoopError::Sampling(s) => EngineError::Sampling(s),
            LoopError::Step(e) => e,
        })?;
        stats.decode_seconds = decode_seconds;
        stats.decode_steps = out.steps;
        stats.generated_tokens = out.tokens.len();

        // 5. What closes this answer in the cache before the next turn.
        let last = *out.tokens.last().unwrap_or(&engine.im_end);
        self.close = match out.finish {
            FinishReason::Eos => vec![engine.im_end, engine.newline],
            FinishReason::Stop | FinishReason::Length => {
                vec![last, engine.im_end, engine.newline]
            }
        };
        Ok(Generation {
            tokens: out.tokens,
            text: out.text,
            finish: out.finish,
            stats,
        })
    }
}
