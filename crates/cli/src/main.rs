//! `qwen3vl`: the command-line interface. It parses arguments and calls the libraries; nothing else.
//! Every error is printed as one line on stderr with a non-zero exit status.

mod bench_kernels;

use std::io::Write;
use std::process::ExitCode;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use qwen3vl_engine::session::{Engine, EngineError, EngineOptions, GenerateParams, TurnStats};
use qwen3vl_engine::GenerationConfig;
use qwen3vl_model::Precision;
use qwen3vl_processor::{Content, Message};

#[derive(Parser)]
#[command(
    name = "qwen3vl",
    version,
    about = "Qwen3-VL vision-language inference on CPUs",
    long_about = "Qwen3-VL vision-language inference on CPUs.\n\n\
        SIMD level: chosen from the CPU's features; QWEN3VL_SIMD=scalar|sse4.1|avx2|avx512 forces one."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
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
    },
    /// Interactive multi-turn chat. Type a message and press Enter. Commands: `/image PATH` attaches an
    /// image to the next message, `/reset` clears the conversation, `/quit` (or end of input) leaves.
    /// The conversation stays in the KV cache: each turn only runs its own new tokens.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        /// A system message for the conversation.
        #[arg(long)]
        system: Option<String>,
        #[command(flatten)]
        sampling: SamplingArgs,
    },
    /// One forward pass over one user turn, written as safetensors (input ids, last-position logits,
    /// per-position top-5) for comparison with transformers or another build.
    Logits {
        /// Checkpoint directory.
        #[arg(long, value_name = "DIR")]
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
    /// Write a random-weight checkpoint with a real model's exact geometry (for trying the engine
    /// without downloading weights): config, bf16 safetensors shards, tokenizer, chat template.
    InitRandom {
        /// Model size: tiny (a few MB, for tests), 2b, 4b, 8b or 32b (geometry of spec 1.2).
        #[arg(long)]
        preset: String,
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
}

/// Which checkpoint and how to run it.
#[derive(Args)]
struct ModelArgs {
    /// Checkpoint directory (Hugging Face layout: config.json, *.safetensors, tokenizer.json, ...).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// Worker threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Numerics: `fast` lets matmuls round activations to bf16 and use bf16 dot products where the CPU
    /// has them; `f32` keeps activations in f32 (parity with transformers in float32).
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fast)]
    precision: PrecisionArg,
    /// Context length of the session in tokens (default: the model's, for chat 32768).
    #[arg(long)]
    context: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
enum PrecisionArg {
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
struct SamplingArgs {
    /// Most tokens to generate (default: the rest of the context, at most 2048).
    #[arg(long, allow_negative_numbers = true)]
    max_tokens: Option<usize>,
    /// 0 = greedy.
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Keep the K most likely tokens (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    top_k: Option<usize>,
    /// Keep the smallest set of tokens with probability mass P (1 = off).
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Drop tokens less likely than P × the most likely one (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    min_p: Option<f32>,
    /// Divide positive / multiply negative logits of tokens already seen (1 = off).
    #[arg(long, allow_negative_numbers = true)]
    repetition_penalty: Option<f32>,
    /// Subtract from the logits of tokens already generated (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    presence_penalty: Option<f32>,
    /// Subtract this × the count of each token already generated (0 = off).
    #[arg(long, allow_negative_numbers = true)]
    frequency_penalty: Option<f32>,
    /// Seed of the sampler: the same seed gives the same answer.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Stop when this text appears (repeatable); it is not printed.
    #[arg(long = "stop", value_name = "TEXT")]
    stop: Vec<String>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCmd>,
    /// Checkpoint directory (required unless a `bench` subcommand is given).
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// Synthetic prompt length for the prefill measurement.
    #[arg(long, default_value_t = 512)]
    prompt_tokens: usize,
    /// Tokens to decode for the decode measurement.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Synthetic image WxH for the vision measurement, or `none`.
    #[arg(long, default_value = "640x480")]
    image_size: String,
    /// Worker threads (default: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, value_enum, default_value_t = PrecisionArg::Fast)]
    precision: PrecisionArg,
    /// Skip measuring the roofline (the percentages are then omitted).
    #[arg(long)]
    no_roofline: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum BenchCmd {
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
        /// Worker threads (default: all cores).
        #[arg(long)]
        threads: Option<usize>,
    },
}

fn main() -> ExitCode {
    // A bug must still end as one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let loc = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error (a bug, please report it): {msg}{loc}");
    }));
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            // --help / --version print to stdout and succeed; usage errors are one line on stderr.
            if !e.use_stderr() {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let text = e.render().to_string();
            let msg: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty() && !l.starts_with("Usage:"))
                .map(str::trim)
                .collect();
            eprintln!("{} (see --help)", msg.join(" "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line: "outer: inner: root".
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Cpu { json } => cmd_cpu(json),
        Cmd::Generate {
            model,
            images,
            system,
            prompt,
            sampling,
            print_ids,
        } => cmd_generate(
            &model,
            &images,
            system.as_deref(),
            &prompt,
            &sampling,
            print_ids,
        ),
        Cmd::Chat {
            model,
            system,
            sampling,
        } => cmd_chat(&model, system.as_deref(), &sampling),
        Cmd::Bench(b) => cmd_bench(&b),
        Cmd::Plan { model } => {
            let engine = load_engine(&model)?;
            write!(std::io::stdout().lock(), "{}", engine.model.plan())?;
            Ok(())
        }
        Cmd::Logits {
            model,
            images,
            system,
            prompt,
            precision,
            out,
        } => qwen3vl_engine::logits::run_logits(&qwen3vl_engine::logits::LogitsOptions {
            model_dir: model,
            images,
            system,
            prompt,
            precision: precision.into(),
            out,
        }),
        Cmd::InitRandom {
            preset,
            out,
            seed,
            shard_size_mb,
            force,
        } => cmd_init_random(&preset, &out, seed, shard_size_mb, force),
    }
}

fn cmd_cpu(json: bool) -> Result<()> {
    let r = qwen3vl_engine::cpu::CpuReport::detect().context("choosing the SIMD level")?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    writeln!(out, "cpu:       {}", r.cpu)?;
    writeln!(out, "features:  {}", r.features.join(" "))?;
    writeln!(out, "available: {}", r.available.join(" "))?;
    writeln!(out, "level:     {} ({})", r.level, r.reason)?;
    let lanes: Vec<String> = r
        .f32_lanes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    writeln!(out, "f32 lanes: {}", lanes.join(" "))?;
    Ok(())
}

fn cmd_init_random(
    preset: &str,
    out: &std::path::Path,
    seed: u64,
    shard_size_mb: u64,
    force: bool,
) -> Result<()> {
    use qwen3vl_engine::init_random::{write_checkpoint, InitOptions, Preset};
    let preset = Preset::parse(preset)?;
    if shard_size_mb == 0 {
        anyhow::bail!("--shard-size-mb must be at least 1");
    }
    let bar = progress_bar("writing weights");
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let summary = write_checkpoint(
        out,
        preset,
        &InitOptions {
            seed,
            shard_bytes: shard_size_mb * 1_000_000,
            force,
            progress: Some(&progress),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "wrote {} ({} tensors, {:.3}B parameters, {:.1} MB of bf16 weights in {} file{}) to {}",
        preset.name(),
        summary.tensors,
        summary.params as f64 / 1e9,
        summary.weight_bytes as f64 / 1e6,
        summary.shards.len(),
        if summary.shards.len() == 1 { "" } else { "s" },
        out.display()
    );
    Ok(())
}

/// A byte-count progress bar on stderr, only when stderr is a terminal.
fn progress_bar(what: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    b.set_style(style);
    b.set_message(what.to_string());
    Some(b)
}

fn load_engine(args: &ModelArgs) -> Result<Engine> {
    let bar = progress_bar("loading weights");
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let engine = Engine::load(
        &args.model,
        &EngineOptions {
            threads: args.threads,
            precision: match args.precision {
                PrecisionArg::Fast => Precision::Fast,
                PrecisionArg::F32 => Precision::F32,
            },
            progress: Some(&progress),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(engine)
}

/// The request's settings: command-line values over generation_config.json.
fn generate_params(g: &GenerationConfig, a: &SamplingArgs, max_tokens: usize) -> GenerateParams {
    let mut p = g.sampling_params(a.seed);
    if let Some(t) = a.temperature {
        p.temperature = t;
    }
    if let Some(k) = a.top_k {
        p.top_k = k;
    }
    if let Some(x) = a.top_p {
        p.top_p = x;
    }
    if let Some(x) = a.min_p {
        p.min_p = x;
    }
    if let Some(x) = a.repetition_penalty {
        p.repetition_penalty = x;
    }
    if let Some(x) = a.presence_penalty {
        p.presence_penalty = x;
    }
    if let Some(x) = a.frequency_penalty {
        p.frequency_penalty = x;
    }
    GenerateParams {
        sampling: p,
        max_tokens,
        stop_strings: a.stop.clone(),
        extra_eos: Vec::new(),
    }
}

/// The user message: images first, then the text.
fn user_message(n_images: usize, text: &str) -> Message {
    let mut content = vec![Content::Image; n_images];
    content.push(Content::Text(text.to_string()));
    Message::new("user", content)
}

fn stdout_sink() -> impl FnMut(&str) -> Result<(), EngineError> {
    let mut out = std::io::stdout();
    move |s: &str| {
        out.write_all(s.as_bytes())?;
        out.flush()?;
        Ok(())
    }
}

fn cmd_generate(
    args: &ModelArgs,
    images: &[PathBuf],
    system: Option<&str>,
    prompt: &str,
    sampling: &SamplingArgs,
    print_ids: bool,
) -> Result<()> {
    if sampling.max_tokens == Some(0) {
        bail!("--max-tokens must be at least 1");
    }
    if args.context == Some(0) {
        bail!("--context must be at least 1");
    }
    let prompt = if prompt == "-" {
        read_prompt_stdin()?
    } else {
        prompt.to_string()
    };
    let prompt = prompt.as_str();
    let engine = load_engine(args)?;
    let pixels = images
        .iter()
        .map(|p| engine.load_image(p))
        .collect::<Result<Vec<_>, _>>()?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::text("system", s));
    }
    messages.push(user_message(images.len(), prompt));
    // Size the KV cache for this request: prompt + answer, within the context.
    let context = args.context.unwrap_or(usize::MAX).min(engine.context_len());
    use qwen3vl_engine::session::{check_prompt_bytes, prompt_byte_limit};
    check_prompt_bytes(&messages, prompt_byte_limit(context))?;
    let prompt_len = engine
        .processor
        .encode(&messages, &pixels, true)?
        .input_ids
        .len();
    let max_tokens = match sampling.max_tokens {
        Some(n) => n,
        None => {
            let room = context.saturating_sub(prompt_len);
            if room == 0 {
                bail!("the prompt has {prompt_len} tokens, which fills the context of {context} tokens");
            }
            engine
                .generation_config
                .max_new_tokens
                .unwrap_or(2048)
                .min(room)
        }
    };
    let params = generate_params(&engine.generation_config, sampling, max_tokens);
    let mut session = engine.session(context.min(prompt_len.saturating_add(max_tokens)));
    let mut sink = stdout_sink();
    let g = session.generate(&messages, &pixels, &params, &mut sink)?;
    println!();
    if print_ids {
        eprintln!("ids: {:?}", g.tokens);
    }
    eprintln!(
        "{}",
        summary(engine.load_seconds, &g.stats, g.finish.as_str())
    );
    Ok(())
}

/// The prompt from standard input, refusing more than the engine accepts before reading it all.
fn read_prompt_stdin() -> Result<String> {
    use std::io::Read;
    let limit = qwen3vl_engine::session::MAX_PROMPT_BYTES;
    let mut buf = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .context("reading the prompt from standard input")?;
    if buf.len() > limit {
        bail!("the prompt on standard input is over the limit of {limit} bytes");
    }
    String::from_utf8(buf).context("the prompt on standard input is not UTF-8")
}

fn summary(load_s: f64, s: &TurnStats, finish: &str) -> String {
    let mut parts = Vec::new();
    if load_s > 0.0 {
        parts.push(format!("load {load_s:.2} s"));
    }
    if s.image_tokens > 0 {
        parts.push(format!(
            "vision {:.2} s ({} image tokens)",
            s.vision_seconds, s.image_tokens
        ));
    }
    parts.push(format!(
        "prefill {} tokens {:.2} s ({:.1} tok/s)",
        s.prefill_tokens,
        s.prefill_seconds,
        s.prefill_tok_s()
    ));
    parts.push(format!(
        "decode {} tokens {:.2} s ({:.1} tok/s)",
        s.decode_steps,
        s.decode_seconds,
        s.decode_tok_s()
    ));
    parts.push(format!(
        "{} tokens generated, finish: {finish}",
        s.generated_tokens
    ));
    parts.join(" | ")
}

fn cmd_chat(args: &ModelArgs, system: Option<&str>, sampling: &SamplingArgs) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    if sampling.max_tokens == Some(0) {
        bail!("--max-tokens must be at least 1");
    }
    let engine = load_engine(args)?;
    let context = args.context.unwrap_or(32768).clamp(1, engine.context_len());
    let mut session = engine.session(context);
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "qwen3vl chat ({} tokens of context). /image PATH attaches an image, /reset clears, /quit leaves.",
            session.max_len()
        );
    }
    let mut pending_images: Vec<(PathBuf, qwen3vl_processor::ImageInput)> = Vec::new();
    let mut first_turn = true;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
        }
        let Some(line) = lines.next() else { break };
        let line = line.context("reading standard input")?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        if let Some(path) = text
            .strip_prefix("/image ")
            .or_else(|| (text == "/image").then_some(""))
        {
            let path = Path::new(path.trim());
            if path.as_os_str().is_empty() {
                eprintln!("usage: /image PATH");
                continue;
            }
            match engine.load_image(path) {
                Ok(img) => {
                    eprintln!("[image {} attached to the next message]", path.display());
                    pending_images.push((path.to_path_buf(), img));
                }
                // A bad image is reported and the chat goes on.
                Err(e) => eprintln!("error: {e}"),
            }
            continue;
        }
        match text {
            "/reset" => {
                session.reset();
                pending_images.clear();
                first_turn = true;
                eprintln!("[conversation cleared]");
                continue;
            }
            "/quit" | "/exit" => break,
            "/help" => {
                eprintln!("/image PATH  attach an image to the next message\n/reset  clear the conversation\n/quit  leave");
                continue;
            }
            _ => {}
        }
        let mut messages = Vec::new();
        if first_turn {
            if let Some(s) = system {
                messages.push(Message::text("system", s));
            }
        }
        messages.push(user_message(pending_images.len(), text));
        let pixels: Vec<_> = pending_images.iter().map(|(_, p)| p.clone()).collect();
        // Default budget: what is left of the context after this turn's tokens.
        let max_tokens = match sampling.max_tokens {
            Some(n) => n,
            None => {
                let turn = match session.turn_len(&messages, &pixels) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("error: {e}");
                        continue;
                    }
                };
                let room = session.max_len().saturating_sub(session.len() + turn);
                if room == 0 {
                    eprintln!(
                        "error: this message does not fit in what is left of the context ({} of {} tokens used; use /reset to start over)",
                        session.len(),
                        session.max_len()
                    );
                    continue;
                }
                engine
                    .generation_config
                    .max_new_tokens
                    .unwrap_or(2048)
                    .min(room)
            }
        };
        let params = generate_params(&engine.generation_config, sampling, max_tokens);
        let mut sink = stdout_sink();
        match session.generate(&messages, &pixels, &params, &mut sink) {
            Ok(g) => {
                println!();
                first_turn = false;
                pending_images.clear();
                eprintln!("[{}]", summary(0.0, &g.stats, g.finish.as_str()));
            }
            Err(EngineError::Input(msg)) => {
                // Too long for the context etc.: the conversation is unchanged; say so and go on.
                eprintln!("error: {msg} (use /reset to start over)");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn parse_image_size(s: &str) -> Result<Option<(u32, u32)>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--image-size {s:?}: expected WxH, e.g. 640x480, or none"))?;
    let w: u32 = w
        .trim()
        .parse()
        .with_context(|| format!("--image-size {s:?}: bad width"))?;
    let h: u32 = h
        .trim()
        .parse()
        .with_context(|| format!("--image-size {s:?}: bad height"))?;
    if w == 0 || h == 0 {
        bail!("--image-size {s:?}: width and height must be at least 1");
    }
    Ok(Some((w, h)))
}

fn cmd_bench(b: &BenchArgs) -> Result<()> {
    match &b.cmd {
        Some(BenchCmd::Roofline { json }) => return bench_kernels::roofline(*json),
        Some(BenchCmd::Matmul { json, threads }) => return bench_kernels::matmul(*json, *threads),
        None => {}
    }
    let Some(model) = &b.model else {
        bail!("bench needs --model DIR (or a subcommand: bench roofline, bench matmul)");
    };
    let image_size = parse_image_size(&b.image_size)?;
    let engine = load_engine(&ModelArgs {
        model: model.clone(),
        threads: b.threads,
        precision: b.precision,
        context: None,
    })?;
    let r = qwen3vl_engine::bench::run(
        &engine,
        &qwen3vl_engine::bench::BenchOptions {
            prompt_tokens: b.prompt_tokens,
            gen_tokens: b.gen_tokens,
            image_size,
            roofline: !b.no_roofline,
        },
    )?;
    let mut out = std::io::stdout().lock();
    if b.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    let pct = |x: Option<f64>, what: &str| {
        x.map(|p| format!("  ({p:.0}% of {what})"))
            .unwrap_or_default()
    };
    writeln!(
        out,
        "{} on {} threads, {} precision",
        r.isa, r.threads, r.precision
    )?;
    writeln!(out, "load          {:8.2} s", r.load_s)?;
    if r.image_tokens > 0 {
        writeln!(
            out,
            "vision        {:8.2} s   {} image tokens, {:.1} GFLOP/s{}",
            r.vision_s,
            r.image_tokens,
            r.vision_gflops,
            pct(r.vision_pct_of_peak, "peak")
        )?;
    }
    writeln!(
        out,
        "prefill       {:8.1} tok/s  {} tokens in {:.2} s, {:.1} GFLOP/s{}",
        r.prefill_tok_s,
        r.prefill_tokens,
        r.prefill_s,
        r.prefill_gflops,
        pct(r.prefill_pct_of_peak, "peak")
    )?;
    writeln!(
        out,
        "decode        {:8.2} tok/s  {} tokens in {:.2} s, {:.1} GB/s{}{}",
        r.decode_tok_s,
        r.decode_tokens,
        r.decode_s,
        r.decode_gbps,
        pct(r.decode_pct_of_bandwidth, "read bandwidth"),
        r.decode_tok_s_limit
            .map(|l| format!("; bandwidth limit {l:.2} tok/s"))
            .unwrap_or_default()
    )?;
    writeln!(
        out,
        "peak RSS      {:8.0} MiB  {:.2}x of checkpoint {:.0} MiB + KV cache {:.0} MiB",
        r.peak_rss_mib, r.rss_over_checkpoint_kv, r.checkpoint_mib, r.kv_cache_mib
    )?;
    if let (Some(bw), Some(pk)) = (r.read_gbps, r.peak_gflops) {
        writeln!(
            out,
            "roofline: read {bw:.1} GB/s (probed during decode), compute peak {pk:.0} GFLOP/s"
        )?;
    }
    Ok(())
}
