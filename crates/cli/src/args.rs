//! The command line's clap types: subcommands and their options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use qwen3vl_model::Precision;

#[derive(Parser)]
#[command(
    name = "qwen3vl",
    version,
    about = "Qwen3-VL vision-language inference on CPUs",
    long_about = "Qwen3-VL vision-language inference on CPUs.\n\n\
        SIMD level: chosen from the CPU's features; QWEN3VL_SIMD=scalar|sse4.1|avx2|avx512 forces one."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Show the CPU, its SIMD features and the level the kernels will use (and why).
    Cpu {
        /// Print one JSON object: {"level", "features", "f32_lanes", "cpu", "reason", "available"}.
        #[arg(long)]
        json: bool,
    },
    /// Answer one prompt (optionally about images), streaming the answer to stdout and a timing summary
    /// to stderr. Sampling defaults come from the checkpoint's generation_config.json.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// An image file to show the model (repeat for several; they come before the prompt text).
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
        /// A system message.
        #[arg(long)]
        system: Option<String>,
        /// The user's message (`-` reads it from standard input).
        #[arg(long)]
        prompt: String,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print the generated token ids to stderr (for comparisons with other implementations).
        #[arg(long, hide = true)]
        print_ids: bool,
        #[command(flatten)]
        video: crate::video_args::VideoArgs,
    },
    /// Interactive multi-turn chat. Type a message and press Enter. Commands: `/image PATH` attaches an
    /// image to the next message, `/video PATH` a video, `/reset` clears the conversation, `/quit` (or end
    /// of input) leaves.
    /// The conversation stays in the KV cache: each turn only runs its own new tokens.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        /// A system message for the conversation.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Videos (--video) go with the first message; `/video PATH` attaches one to the next message.
        #[command(flatten)]
        video: crate::video_args::VideoSourceArgs,
    },
    /// One forward pass over one user turn, written as safetensors (input ids, last-position logits,
    /// per-position top-5) for comparison with transformers or another build.
    Logits {
        /// Checkpoint directory, or a Hugging Face Hub id owner/name[@revision].
        #[arg(long, value_name = "DIR|ID")]
        model: PathBuf,
        /// An image file (repeatable; placed before the text).
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
        /// A system message.
        #[arg(long)]
        system: Option<String>,
        /// The user's message.
        #[arg(long)]
        prompt: String,
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
        #[command(flatten)]
        quant: crate::quant::QuantArgs,
        /// The .safetensors file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Measure load time, vision encode, prefill and decode speed and peak memory against this machine's
    /// roofline; or `bench roofline` / `bench matmul` for the kernels alone.
    Bench(BenchArgs),
    /// Load a checkpoint and print the load-time plan: per op the kernel, the weight layout and the memory
    /// it holds, with totals (packed weights, KV cache per token).
    Plan {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Write a quantized copy of a checkpoint (quantized weights as U8 + F32 scales, the format named in
    /// the safetensors header metadata; config and tokenizer copied) that loads without quantizing again,
    /// its quantized weights used in place from the file mapping (do not rewrite it while a model uses it).
    Quantize {
        /// Checkpoint directory to read, or a Hugging Face Hub id owner/name[@revision].
        #[arg(long, value_name = "DIR")]
        model: PathBuf,
        /// Format of the text decoder's linear weights (`q8` or `q4`); the lm head is q8.
        #[arg(long, alias = "format", value_name = "FORMAT", value_parser = crate::quant::parse_format)]
        quant: qwen3vl_model::QuantFormat,
        /// Also quantize the vision tower's linear weights (`q8`).
        #[arg(long = "vision-quant", value_name = "FORMAT", value_parser = crate::quant::parse_format)]
        vision_quant: Option<qwen3vl_model::QuantFormat>,
        /// Output directory (created; must be empty).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Worker threads (default: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Quantization quality: run the unquantized model and the quantized one over the same tokens and
    /// print the KL divergence of their next-token distributions (mean, median, p99, max), top-1
    /// agreement and both perplexities, as `llama-perplexity --kl-divergence` does; with --image, the
    /// cosine and relative error of both vision towers' features of each image (for --vision-quant).
    Eval {
        /// The reference checkpoint (loaded as stored), or a Hugging Face Hub id owner/name[@revision].
        #[arg(long, value_name = "DIR|ID")]
        model: PathBuf,
        /// Quantize the compared model's text linears at load (`q8` or `q4`).
        #[arg(long, value_name = "FORMAT", value_parser = crate::quant::parse_format)]
        quant: Option<qwen3vl_model::QuantFormat>,
        /// Quantize the compared model's vision tower at load (`q8` or `q4`).
        #[arg(long, value_name = "FORMAT", value_parser = crate::quant::parse_format)]
        vision_quant: Option<qwen3vl_model::QuantFormat>,
        /// Compare against this (quantized) checkpoint instead of `--model` quantized at load.
        #[arg(long, value_name = "DIR")]
        quantized: Option<PathBuf>,
        /// The text to score (UTF-8, tokenized without a chat template).
        #[arg(long, value_name = "FILE")]
        text: Option<PathBuf>,
        /// An image whose features both models encode (repeat for several); with neither --text nor
        /// --prompt-tokens only the images are compared.
        #[arg(long = "image", value_name = "FILE")]
        images: Vec<PathBuf>,
        /// Score at most this many tokens (without --text: this many seeded pseudo-random ids).
        #[arg(long, value_name = "N")]
        prompt_tokens: Option<usize>,
        /// Tokens per chunk; the second half of each chunk is scored.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
        precision: PrecisionArg,
        /// Worker threads (default: all cores).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Write a random-weight checkpoint with a real model's exact geometry (for trying the engine
    /// without downloading weights): config, bf16 (or quantized) safetensors shards, tokenizer, chat
    /// template.
    InitRandom {
        /// Model size: tiny (a few MB, for tests), tiny-moe, 2b, 4b, 8b, 32b (geometry of spec 1.2) or
        /// 30b-a3b (the Mixture-of-Experts model, spec 1.3).
        #[arg(long)]
        preset: String,
        /// Decoder layers (default: the preset's): the real per-layer geometry at a reduced depth.
        #[arg(long, value_name = "N")]
        layers: Option<usize>,
        /// Write the checkpoint quantized (`q8` or `q4`), as `qwen3vl quantize` would, without a bf16 one.
        #[arg(long, value_name = "FORMAT", value_parser = crate::quant::parse_format)]
        quant: Option<qwen3vl_model::QuantFormat>,
        /// Output directory (created; must be empty unless --force).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Seed of the weights; the same seed writes the same bytes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Largest shard in MB (checkpoints bigger than one shard get model.safetensors.index.json).
        #[arg(long, default_value_t = 2000)]
        shard_size_mb: u64,
        /// Overwrite the checkpoint files of a non-empty directory.
        #[arg(long)]
        force: bool,
    },
    /// Serve the model over HTTP: an OpenAI-compatible API (`/v1/chat/completions` with streaming,
    /// images, logprobs, n, JSON output), `/v1/models`, `/tokenize`, `/health`, `/metrics`, and a chat
    /// page at `/`. The port answers (503) while the model loads.
    Serve(crate::serve::ServeArgs),
    /// Download a model from the Hugging Face Hub into the cache (only the files the engine reads,
    /// verified) and print its directory; `--model` does this on first use.
    Pull(crate::hub::PullArgs),
    /// The models in the Hugging Face cache, with sizes and revisions.
    List(crate::hub::ListArgs),
    /// Remove a model (every revision) from the Hugging Face cache.
    Rm(crate::hub::RmArgs),
}

/// Which checkpoint and how to run it.
#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Checkpoint directory (Hugging Face layout: config.json, *.safetensors, tokenizer.json, ...), or a
    /// Hugging Face Hub id owner/name[@revision], downloaded into the Hugging Face cache on first use.
    #[arg(long, value_name = "DIR|ID")]
    pub(crate) model: PathBuf,
    /// Worker threads (default: all cores; at most 4 per core).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) threads: usize,
    /// Numerics: `fast` lets matmuls round activations to bf16 and use bf16 dot products where the CPU
    /// has them; `f32` keeps activations in f32 (parity with transformers in float32).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fast)]
    pub(crate) precision: PrecisionArg,
    /// Context length of the session in tokens (default: the model's, for chat 32768).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) context: Option<usize>,
    #[command(flatten)]
    pub(crate) quant: crate::quant::QuantArgs,
    #[command(flatten)]
    pub(crate) cache: WeightCacheArgs,
}

/// Where packed weights are cached between loads.
#[derive(Args, Clone)]
pub(crate) struct WeightCacheArgs {
    /// Packed-weight cache: `off` (default), `auto` (`$QWEN3VL_CACHE/packed`, else
    /// `$XDG_CACHE_HOME/qwen3vl/packed`, else `~/.cache/qwen3vl/packed`) or a directory. The first load
    /// writes the repacked weights there (about the checkpoint's size; skipped if less than that + 1 GiB is
    /// free); later loads of the same checkpoint map them instead of repacking: a load in well under a
    /// second, but decode reads the weights from 4 KiB pages (measured 24% slower than repacked weights,
    /// which get huge pages). For short one-shot runs; a chat or a server is faster without it.
    #[arg(long, value_name = "off|auto|DIR", default_value = "off", value_parser = parse_weight_cache)]
    pub(crate) weight_cache: WeightCacheArg,
}

#[derive(Clone, Debug)]
pub(crate) enum WeightCacheArg {
    Auto,
    Off,
    Dir(PathBuf),
}

fn parse_weight_cache(s: &str) -> Result<WeightCacheArg, String> {
    Ok(match s {
        "auto" => WeightCacheArg::Auto,
        "off" => WeightCacheArg::Off,
        "" => return Err("expected auto, off or a directory".into()),
        d => WeightCacheArg::Dir(PathBuf::from(d)),
    })
}

impl WeightCacheArgs {
    pub(crate) fn get(&self) -> qwen3vl_model::WeightCache<'_> {
        match &self.weight_cache {
            WeightCacheArg::Auto => qwen3vl_model::WeightCache::Auto,
            WeightCacheArg::Off => qwen3vl_model::WeightCache::Off,
            WeightCacheArg::Dir(d) => qwen3vl_model::WeightCache::Dir(d),
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum PrecisionArg {
    Fast,
    F32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Fast => Precision::Fast,
            PrecisionArg::F32 => Precision::F32,
        }
    }
}

/// Decoding settings; each defaults to the checkpoint's generation_config.json.
#[derive(Args, Clone)]
pub(crate) struct SamplingArgs {
    /// Most tokens to generate (default: the rest of the context, at most the checkpoint's max_new_tokens).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) max_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) top_k: Option<usize>,
    /// Keep the smallest set of tokens with probability mass P (1 = off).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) min_p: Option<f32>,
    /// Divide positive / multiply negative logits of tokens already seen (1 = off).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) repetition_penalty: Option<f32>,
    /// Subtract from the logits of tokens already generated (0 = off).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) presence_penalty: Option<f32>,
    /// Subtract this × the count of each token already generated (0 = off).
    #[arg(long, allow_hyphen_values = true)]
    pub(crate) frequency_penalty: Option<f32>,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop", value_name = "TEXT")]
    pub(crate) stop: Vec<String>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) cmd: Option<BenchCmd>,
    /// Checkpoint directory or Hub id owner/name[@revision] (required unless a `bench` subcommand is
    /// given).
    #[arg(long, value_name = "DIR|ID")]
    pub(crate) model: Option<PathBuf>,
    /// Synthetic prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    pub(crate) prompt_tokens: usize,
    /// Tokens to decode for the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub(crate) gen_tokens: usize,
    /// Synthetic image WxH for the vision measurement, or `none`.
    #[arg(long, default_value = "640x480")]
    pub(crate) image_size: String,
    /// Worker threads (default: all cores; at most 4 per core).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub(crate) threads: usize,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fast)]
    pub(crate) precision: PrecisionArg,
    #[command(flatten)]
    pub(crate) quant: crate::quant::QuantArgs,
    #[command(flatten)]
    pub(crate) cache: WeightCacheArgs,
    /// Skip measuring the roofline (the percentages are then omitted).
    #[arg(long)]
    pub(crate) no_roofline: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
    /// Decode N sequences at once (one batched forward per step) and compare with one alone:
    /// aggregate tok/s and per-token latency (instead of the single-sequence figures).
    #[arg(long, value_name = "N")]
    pub(crate) concurrency: Option<usize>,
}

#[derive(Subcommand)]
pub(crate) enum BenchCmd {
    /// Measure this machine's limits: memory read bandwidth (1 and all threads), f32 FMA and bf16
    /// dot-product peaks.
    Roofline {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The matmul kernels on Qwen3-VL-2B shapes, against the roofline.
    Matmul {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Worker threads (default: all cores; at most 4 per core).
        #[arg(long, allow_hyphen_values = true)]
        threads: Option<usize>,
    },
    /// Load-test a running OpenAI-compatible server (`qwen3vl serve`, llama-server, ...): N clients
    /// stream chat completions; reports time to first token, time per output token and end-to-end
    /// latency (p50/p90/p99), throughput, and errors by HTTP status.
    Serve(BenchServeArgs),
}

#[derive(Args)]
pub(crate) struct BenchServeArgs {
    /// The server's base URL (`http://127.0.0.1:8080`) or its chat-completions URL.
    #[arg(long)]
    pub(crate) url: String,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 1)]
    pub(crate) concurrency: usize,
    /// Requests in all.
    #[arg(long, default_value_t = 16)]
    pub(crate) requests: usize,
    /// An image sent with every request (as a data: URI).
    #[arg(long, value_name = "FILE")]
    pub(crate) image: Option<PathBuf>,
    /// Most tokens per answer.
    #[arg(long, default_value_t = 64)]
    pub(crate) max_tokens: usize,
    /// The user text (each request appends its number, so that prompts differ).
    #[arg(long, default_value = "Write a short story about a lighthouse keeper.")]
    pub(crate) prompt: String,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    pub(crate) api_key: Option<String>,
    /// The `model` field of the requests.
    #[arg(long, default_value = "qwen3vl")]
    pub(crate) model: String,
    /// Most seconds one request may take.
    #[arg(long, default_value_t = 600)]
    pub(crate) timeout: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub(crate) json: bool,
}
