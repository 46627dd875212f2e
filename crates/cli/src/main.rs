//! `qwen3vl`: the command-line interface. It parses arguments and calls the libraries; nothing else.
//! Every error is printed as one line on stderr with a non-zero exit status.

mod args;
mod bench_kernels;
mod chat;
mod video_args;

use std::io::Write;
use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qwen3vl_engine::session::{Engine, EngineError, EngineOptions, GenerateParams, TurnStats};
use qwen3vl_engine::GenerationConfig;
use qwen3vl_model::Precision;
use qwen3vl_processor::{Content, Message};

use args::{BenchArgs, BenchCmd, Cli, Cmd, ModelArgs, PrecisionArg, SamplingArgs};
use chat::cmd_chat;

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
            video,
        } => cmd_generate(
            &model,
            &images,
            system.as_deref(),
            &prompt,
            &sampling,
            print_ids,
            &video,
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
    video: &video_args::VideoArgs,
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
    let videos = video.load(&engine, images.len())?;
    let mut messages = Vec::new();
    if let Some(s) = system {
        messages.push(Message::text("system", s));
    }
    let mut user = user_message(images.len(), prompt);
    let at = user.content.len() - 1;
    user.content
        .splice(at..at, std::iter::repeat_n(Content::Video, videos.len()));
    messages.push(user);
    // Size the KV cache for this request: prompt + answer, within the context.
    let context = args.context.unwrap_or(usize::MAX).min(engine.context_len());
    use qwen3vl_engine::session::{check_prompt_bytes, prompt_byte_limit};
    check_prompt_bytes(&messages, prompt_byte_limit(context))?;
    let prompt_len = engine
        .processor
        .encode_media(&messages, &pixels, &videos, true)?
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
    let g = session.generate_media(&messages, &pixels, &videos, &params, &mut sink)?;
    println!();
    if print_ids {
        eprintln!("ids: {:?}", g.tokens);
    }
    video.after_answer(&engine, images, &g.text)?;
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
