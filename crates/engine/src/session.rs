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
use qwen3vl_model::{
    Hooks, KvCache, LoadOptions, Logits, Model, ModelError, PositionsRef, Precision, Progress,
    QuantFormat, RunState, WeightCache,
};
use qwen3vl_processor::{ImageInput, Message, Processor, ProcessorError, VideoInput, VideoOptions};

use crate::generate::{run_loop, FinishReason, Generator, LoopError, LoopOutput, StopConfig};
use crate::generation_config::{GenerationConfig, GenerationConfigError};
pub use crate::request::{check_prompt_bytes, prompt_byte_limit, MAX_PROMPT_BYTES};
use crate::request::{History, Prepared};
use crate::sampling::{Sampler, SamplingError, SamplingParams};
use crate::stream::{StreamDecoder, TokenBytes};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model directory {0} does not exist")]
    NoModelDir(PathBuf),
    #[error("{0} is not a directory")]
    NotADir(PathBuf),
    #[error("{dir} has no {file} (expected a Hugging Face checkpoint directory: config.json, *.safetensors, tokenizer.json, ...)")]
    MissingFile { dir: PathBuf, file: &'static str },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Processor(#[from] ProcessorError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
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

/// How to load a checkpoint.
#[derive(Clone, Copy, Default)]
pub struct EngineOptions<'a> {
    /// Worker threads (0 = all cores).
    pub threads: usize,
    pub precision: Precision,
    /// (bytes done, bytes total) while weights load.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Quantize the text decoder's linears at load (see `LoadOptions::quant`).
    pub quant: Option<QuantFormat>,
    /// Quantize the vision tower's linears at load.
    pub vision_quant: Option<QuantFormat>,
    /// Where packed weights are cached between loads (off by default; the CLI's default is auto).
    pub weight_cache: WeightCache<'a>,
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
        let processor = Processor::from_dir_with(dir, kernels)?;
        let generation_config = GenerationConfig::from_dir(dir)?;
        // Checked before the weights load (config.json is parsed again by Model::load; it is small).
        let vocab_size = qwen3vl_model::Config::from_file(&dir.join("config.json"))?
            .text
            .vocab_size;
        generation_config.check_vocab(
            vocab_size,
            &dir.join("generation_config.json").display().to_string(),
        )?;
        let model = Model::load(
            dir,
            kernels,
            &LoadOptions {
                precision: opts.precision,
                progress: opts.progress,
                quant: opts.quant,
                vision_quant: opts.vision_quant,
                weight_cache: opts.weight_cache,
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

    /// Read, sample, decode and preprocess one video (animated GIF / WebP / APNG, a frame directory, and
    /// with the `ffmpeg` feature MP4 / MKV / WebM / MOV).
    pub fn load_video(&self, path: &Path, opts: &VideoOptions) -> Result<VideoInput, EngineError> {
        Ok(self.processor.load_video(path, opts)?)
    }

    /// [`Engine::load_video`] of a file held in memory (a request's `video_url` data): probed, sampled and
    /// decoded like a file; its size is checked against the image limits' `max_file_bytes` first.
    pub fn load_video_bytes(
        &self,
        bytes: &[u8],
        opts: &VideoOptions,
    ) -> Result<VideoInput, EngineError> {
        Ok(self.processor.load_video_bytes(bytes, opts)?)
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

    /// One prompt answered in a fresh sequence sized to it: the prompt is prepared once (see
    /// [`Engine::prepare`]) for a context of `context` tokens (clamped to the model's).
    pub fn generate(
        &self,
        messages: &[Message],
        images: Vec<ImageInput>,
        params: &GenerateParams,
        context: usize,
        on_text: &mut dyn FnMut(&str) -> Result<(), EngineError>,
    ) -> Result<Generation, EngineError> {
        let context = context.clamp(1, self.context_len().max(1));
        let prepared = self.prepare(
            messages,
            images,
            History::default(),
            params.max_tokens,
            context,
        )?;
        let mut session = self.session(prepared.kv_tokens());
        session.run(prepared, params, on_text)
    }

    /// When a sequence decoded with `params` (and a budget of `max_tokens`) stops.
    pub(crate) fn stop_config(&self, params: &GenerateParams, max_tokens: usize) -> StopConfig {
        let mut eos_ids = self.generation_config.eos_token_ids.clone();
        eos_ids.extend_from_slice(&params.extra_eos);
        StopConfig {
            eos_ids,
            stop_strings: params.stop_strings.clone(),
            max_tokens,
        }
    }

    /// Tokens that close an answer in the cache before the next turn: `<|im_end|>\n`, after the last
    /// sampled token unless that was an EOS (which is not in the cache).
    pub(crate) fn closing_tokens(&self, out: &LoopOutput) -> Vec<u32> {
        let last = *out.tokens.last().unwrap_or(&self.im_end);
        match out.finish {
            FinishReason::Eos => vec![self.im_end, self.newline],
            FinishReason::Stop | FinishReason::Length => vec![last, self.im_end, self.newline],
        }
    }

    /// A conversation holding up to `max_len` tokens (clamped to the context length).
    pub fn session(&self, max_len: usize) -> Session<'_> {
        let max_len = max_len.clamp(1, self.context_len().max(1));
        Session {
            engine: self,
            cache: KvCache::new(&self.model.config().text, max_len),
            state: RunState::new(),
            tokens: Vec::new(),
            rope_delta: 0,
            close: Vec::new(),
            progress: None,
        }
    }
}

/// One request: decoding settings and limits.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    pub sampling: SamplingParams,
    /// Most tokens to generate (at least 1); None = as many as fit in the context.
    pub max_tokens: Option<usize>,
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
    /// The decoder's activations and logits, reused by every step.
    state: RunState,
    /// Token ids in the cache, in order.
    tokens: Vec<u32>,
    /// Accumulated M-RoPE delta of the cached sequence.
    rope_delta: i64,
    /// Tokens to prepend to the next turn to close the previous answer.
    close: Vec<u32>,
    /// Told how far the vision tower and the prefill of each turn have got (see [`Session::set_progress`]).
    progress: Option<ProgressFn>,
}

/// An observer of [`Progress`] (the CLI draws it on a terminal).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

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

    /// Report the progress of each turn's vision tower (after each block) and prefill (after each decoder
    /// layer) to `f`; None: report nothing. Decode steps are not reported.
    pub fn set_progress(&mut self, f: Option<ProgressFn>) {
        self.progress = f;
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
        let prepared = self.prepare_media(messages, images, videos, params.max_tokens)?;
        self.run(prepared, params, on_text)
    }

    /// The next turn of this conversation through the one request path ([`Engine::prepare`]), to be run
    /// by [`Session::run`]: a caller that wants the turn's token count before spending it prepares first.
    pub fn prepare(
        &self,
        messages: &[Message],
        images: &[ImageInput],
        max_tokens: Option<usize>,
    ) -> Result<Prepared, EngineError> {
        self.prepare_media(messages, images, &[], max_tokens)
    }

    /// [`Session::prepare`] with videos.
    pub fn prepare_media(
        &self,
        messages: &[Message],
        images: &[ImageInput],
        videos: &[VideoInput],
        max_tokens: Option<usize>,
    ) -> Result<Prepared, EngineError> {
        let history = History {
            len: self.cache.len(),
            rope_delta: self.rope_delta,
            close: &self.close,
        };
        self.engine.prepare_media(
            messages,
            images.to_vec(),
            videos.to_vec(),
            history,
            max_tokens,
            self.cache.max_len(),
        )
    }

    /// Run a prepared turn (see [`Engine::prepare`]; its history must be this session's).
    pub fn run(
        &mut self,
        prepared: Prepared,
        params: &GenerateParams,
        on_text: &mut dyn FnMut(&str) -> Result<(), EngineError>,
    ) -> Result<Generation, EngineError> {
        let engine = self.engine;
        let model = &engine.model;
        let sampler = Sampler::new(params.sampling.clone())?;
        let Prepared {
            tokens: ids,
            positions,
            vision: images,
            rope_delta,
            max_tokens,
        } = prepared;
        if (self.cache.len() + ids.len()).saturating_add(max_tokens) > self.cache.max_len() {
            return Err(EngineError::Input(format!(
                "{} tokens of conversation, {} of prompt and max_tokens {max_tokens} do not fit the context \
                 of {} tokens",
                self.cache.len(),
                ids.len(),
                self.cache.max_len()
            )));
        }
        let mut stats = TurnStats {
            prefill_tokens: ids.len(),
            ..Default::default()
        };

        // 1. Vision tower.
        let vision = if images.is_empty() {
            None
        } else {
            let t = Instant::now();
            let hooks = match &self.progress {
                Some(f) => Hooks::progress(&**f),
                None => Hooks::default(),
            };
            let v = model.encode_images_with(&images, hooks)?;
            stats.vision_seconds = t.elapsed().as_secs_f64();
            stats.image_tokens = v.n_tokens(model.config().text.hidden_size);
            Some(v)
        };

        // 2. Prefill.
        let t = Instant::now();
        let (pos, cache, state) = (positions.as_ref(), &mut self.cache, &mut self.state);
        let hooks = match &self.progress {
            Some(f) => Hooks::progress(&**f),
            None => Hooks::default(),
        };
        let logits = model
            .forward_with(
                &ids,
                pos,
                vision.as_ref(),
                cache,
                state,
                Logits::Last,
                hooks,
            )?
            .to_vec();
        stats.prefill_seconds = t.elapsed().as_secs_f64();
        self.tokens.extend_from_slice(&ids);
        self.rope_delta = rope_delta;
        self.close.clear();

        // 3. Decode.
        let mut sampler = sampler;
        sampler.add_prompt_tokens(&self.tokens);
        let mut gen = Generator::new(
            sampler,
            StreamDecoder::new(engine.token_bytes.clone(), true),
            &engine.stop_config(params, max_tokens),
        );
        let Session {
            cache,
            state,
            tokens,
            ..
        } = self;
        let mut decode_seconds = 0.0;
        let r = run_loop(
            &mut gen,
            &logits,
            |id, buf| {
                let t = Instant::now();
                let pos = cache.len() as i64 + rope_delta;
                let l = model.forward(
                    &[id],
                    PositionsRef::single(&pos),
                    None,
                    cache,
                    state,
                    Logits::Last,
                )?;
                buf.clear();
                buf.extend_from_slice(l);
                tokens.push(id);
                decode_seconds += t.elapsed().as_secs_f64();
                Ok(())
            },
            on_text,
        );
        let out: LoopOutput = gen.into_output();
        // 4. What closes this answer in the cache before the next turn: also when the answer was cut
        //    short (the caller's sink refused a piece, e.g. Ctrl-C in the chat), so that the next turn
        //    follows a closed answer. The last sampled token was never fed, as after a length stop.
        self.close = engine.closing_tokens(&out);
        r.map_err(|e| match e {
            LoopError::Sampling(s) => EngineError::Sampling(s),
            LoopError::Step(e) => e,
        })?;
        stats.decode_seconds = decode_seconds;
        stats.decode_steps = out.steps;
        stats.generated_tokens = out.tokens.len();
        Ok(Generation {
            tokens: out.tokens,
            text: out.text,
            finish: out.finish,
            stats,
        })
    }
}
