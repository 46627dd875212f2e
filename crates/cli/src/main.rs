//! `qwen3vl`: the command-line interface. It parses arguments and calls the libraries; nothing else.
//! Every error is printed as one line on stderr with a non-zero exit status.

mod args;
mod bench_kernels;
mod chat;
mod hub;
mod progress;
mod quant;
mod serve;
mod video_args;

use std::io::Write;
use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use qwen3vl_engine::session::{Engine, EngineError, EngineOptions, GenerateParams, TurnStats};
use qwen3vl_engine::GenerationConfig;
use qwen3vl_engine::History;
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

/// The error and its causes on one line, each fact once: "outer: inner: root", leaving out a cause whose
/// text the line already holds (an error that prints its source and also returns it from `source()`).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(text.as_str()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
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
            video,
        } => cmd_chat(&model, system.as_deref(), &sampling, &video),
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
            quant,
            out,
        } => qwen3vl_engine::dev::logits::run_logits(&qwen3vl_engine::dev::logits::LogitsOptions {
            model_dir: hub::resolve(&model)?,
            images,
            system,
            prompt,
            precision: precision.into(),
            quant: quant.quant,
            vision_quant: quant.vision_quant,
            out,
        }),
        Cmd::Serve(a) => serve::cmd_serve(a),
        Cmd::Pull(a) => hub::cmd_pull(&a),
        Cmd::List(a) => hub::cmd_list(&a),
        Cmd::Rm(a) => hub::cmd_rm(&a),
        Cmd::Quantize {
            model,
            quant,
            vision_quant,
            out,
            threads,
        } => quant::cmd_quantize(&hub::resolve(&model)?, quant, vision_quant, &out, threads),
        Cmd::Eval {
            model,
            quant,
            quantized,
            text,
            prompt_tokens,
            ctx,
            precision,
            threads,
        } => {
            let text = match text {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                None => None,
            };
            let r = qwen3vl_engine::eval::evaluate(&qwen3vl_engine::eval::EvalOptions {
                model_dir: hub::resolve(&model)?,
                quantized_dir: quantized,
                quant,
                text,
                prompt_tokens,
                ctx,
                precision: precision.into(),
                threads,
            })?;
            println!("{r}");
            Ok(())
        }
        Cmd::InitRandom {
            preset,
            layers,
            quant,
            out,
            seed,
            shard_size_mb,
            force,
        } => {
            let opts = qwen3vl_engine::dev::init_random::InitOptions {
                seed,
                force,
                layers,
                quant,
                ..Default::default()
            };
            cmd_init_random(&preset, &out, shard_size_mb, opts)
        }
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
    writeln!(out, "bf16 dot:  {}", r.bf16_dot)?;
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
    shard_size_mb: u64,
    opts: qwen3vl_engine::dev::init_random::InitOptions,
) -> Result<()> {
    use qwen3vl_engine::dev::init_random::{write_checkpoint, InitOptions, Preset};
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
            shard_bytes: shard_size_mb * 1_000_000,
            progress: Some(&progress),
            ..opts
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    eprintln!(
        "wrote {}{} ({} tensors, {:.3}B parameters, {:.1} MB of {} weights in {} file{}) to {}",
        preset.name(),
        opts.layers
            .map(|n| format!(" with {n} layers"))
            .unwrap_or_default(),
        summary.tensors,
        summary.params as f64 / 1e9,
        summary.weight_bytes as f64 / 1e6,
        opts.quant.map_or("bf16", |q| q.name()),
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

/// `--threads` within the engine's limit (`limits::max_threads`).
fn check_threads(threads: usize) -> Result<()> {
    use qwen3vl_processor::limits::{max_threads, MAX_THREADS_PER_CORE};
    let max = max_threads();
    if threads > max {
        bail!(
            "--threads {threads} is over the limit of {max} ({MAX_THREADS_PER_CORE} per core on this machine's {} cores)",
            max / MAX_THREADS_PER_CORE
        );
    }
    Ok(())
}

pub(crate) fn load_engine(args: &ModelArgs) -> Result<Engine> {
    check_threads(args.threads)?;
    let dir = hub::resolve(&args.model)?;
    let bar = progress_bar("loading weights");
    let progress = |done: u64, total: u64| {
        if let Some(b) = &bar {
            b.set_length(total);
            b.set_position(done);
        }
    };
    let engine = Engine::load(
        &dir,
        &EngineOptions {
            threads: args.threads,
            precision: match args.precision {
                PrecisionArg::Fast => Precision::Fast,
                PrecisionArg::F32 => Precision::F32,
            },
            progress: Some(&progress),
            quant: args.quant.quant,
            vision_quant: args.quant.vision_quant,
            weight_cache: args.cache.get(),
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for note in &engine.model.weight_cache().notes {
        eprintln!("{note}");
    }
    Ok(engine)
}

/// The request's settings: command-line values over generation_config.json.
fn generate_params(
    g: &GenerationConfig,
    a: &SamplingArgs,
    max_tokens: Option<usize>,
) -> GenerateParams {
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
    // Inputs are checked before the model loads: a missing or bad image fails in a moment, not after it.
    let decoded = images
        .iter()
        .map(|p| qwen3vl_processor::decode::read_image_file(p, &Default::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let engine = load_engine(args)?;
    let pixels = decoded
        .iter()
        .map(|img| engine.processor.preprocess_image(img))
        .collect::<Result<Vec<_>, _>>()?;
    for (path, img) in images.iter().zip(&pixels) {
        say_image_cost(&engine, path, img);
    }
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
    // One request path: the prompt is prepared once, the KV cache sized to prompt + answer.
    let context = args.context.unwrap_or(usize::MAX).min(engine.context_len());
    let pixels_tokens: usize = pixels.iter().map(|p| image_tokens(&engine, p)).sum();
    let prepared = engine.prepare_media(
        &messages,
        pixels,
        videos,
        History::default(),
        sampling.max_tokens,
        context,
    )?;
    let params = generate_params(
        &engine.generation_config,
        sampling,
        Some(prepared.max_tokens),
    );
    let mut session = engine.session(prepared.kv_tokens());
    let image_tokens: usize = pixels_tokens;
    let spinner = working_spinner(prepared.tokens.len(), image_tokens);
    progress::observe(&mut session, &spinner);
    let mut out = stdout_sink();
    let mut sink = |s: &str| {
        stop_spinner(&spinner);
        out(s)
    };
    let g = session.run(prepared, &params, &mut sink);
    stop_spinner(&spinner);
    let g = g?;
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

/// Tokens the vision tower makes of one preprocessed image.
/// Visual tokens of a video: t·h·w / merge² over all its frame groups.
pub(crate) fn video_tokens(engine: &Engine, v: &qwen3vl_processor::VideoInput) -> usize {
    image_tokens(engine, &v.visual)
}

pub(crate) fn image_tokens(engine: &Engine, img: &qwen3vl_processor::ImageInput) -> usize {
    let m = engine.processor.image_config().map_or(1, |c| c.merge_size);
    let [t, h, w] = img.grid_thw;
    t * h * w / (m * m).max(1)
}

/// On a terminal, a spinner with the elapsed time while the vision tower and the prefill run (nothing is
/// printed until the first answer text, which can take minutes for a large image).
pub(crate) fn working_spinner(
    prompt_tokens: usize,
    image_tokens: usize,
) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let b = indicatif::ProgressBar::new_spinner();
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        b.set_style(style);
    }
    b.set_message(if image_tokens > 0 {
        format!("encoding {image_tokens} image tokens, then reading {prompt_tokens} prompt tokens")
    } else {
        format!("reading {prompt_tokens} prompt tokens")
    });
    b.enable_steady_tick(std::time::Duration::from_millis(120));
    Some(b)
}

pub(crate) fn stop_spinner(b: &Option<indicatif::ProgressBar>) {
    if let Some(b) = b {
        if !b.is_finished() {
            b.finish_and_clear();
        }
    }
}

/// Say on stderr (a terminal only) what an image costs before the vision tower spends it.
fn say_image_cost(engine: &Engine, path: &std::path::Path, img: &qwen3vl_processor::ImageInput) {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return;
    }
    let tokens = image_tokens(engine, img);
    let [_, h, w] = img.grid_thw;
    eprintln!(
        "[image {}: {} image tokens ({}x{} patches)]",
        path.display(),
        tokens,
        w,
        h
    );
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
    // The limits of a decoded image (a 100000x100000 synthetic image aborted on allocation).
    let lim = qwen3vl_processor::ImageLimits::default();
    if w > lim.max_width || h > lim.max_height {
        bail!(
            "--image-size {s:?}: over the limit of {}x{} (the image decode limits)",
            lim.max_width,
            lim.max_height
        );
    }
    Ok(Some((w, h)))
}

/// `bench serve`: the load generator of the server crate, its report as a table or JSON on stdout.
fn bench_serve(a: &args::BenchServeArgs) -> Result<()> {
    use qwen3vl_server::bench::{run, ServeBenchOptions};
    let report = run(&ServeBenchOptions {
        url: a.url.clone(),
        concurrency: a.concurrency,
        requests: a.requests,
        image: a.image.clone(),
        max_tokens: a.max_tokens,
        prompt: a.prompt.clone(),
        api_key: a.api_key.clone(),
        model: a.model.clone(),
        timeout: std::time::Duration::from_secs(a.timeout.max(1)),
    })?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.table())?;
    }
    Ok(())
}

fn cmd_bench(b: &BenchArgs) -> Result<()> {
    match &b.cmd {
        Some(BenchCmd::Roofline { json }) => return bench_kernels::roofline(*json),
        Some(BenchCmd::Matmul { json, threads }) => {
            check_threads(threads.unwrap_or(0))?;
            return bench_kernels::matmul(*json, *threads);
        }
        Some(BenchCmd::Serve(a)) => return bench_serve(a),
        None => {}
    }
    let Some(model) = &b.model else {
        bail!("bench needs --model DIR (or a subcommand: bench roofline, bench matmul)");
    };
    check_threads(b.threads)?;
    let image_size = parse_image_size(&b.image_size)?;
    let engine = load_engine(&ModelArgs {
        model: model.clone(),
        threads: b.threads,
        precision: b.precision,
        context: None,
        quant: b.quant,
        cache: b.cache.clone(),
    })?;
    if let Some(n) = b.concurrency {
        return bench_concurrency(&engine, n, b);
    }
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

/// `bench --concurrency N`: one sequence alone, then N decoded together.
fn bench_concurrency(engine: &Engine, n: usize, b: &BenchArgs) -> Result<()> {
    let r = qwen3vl_engine::bench::run_concurrent(engine, n, b.prompt_tokens, b.gen_tokens)?;
    let mut out = std::io::stdout().lock();
    if b.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{} on {} threads, {} precision; {} tokens decoded per sequence after {} prompt tokens",
        r.isa, r.threads, r.precision, r.gen_tokens, r.prompt_tokens
    )?;
    writeln!(
        out,
        "1 sequence    {:8.2} tok/s  {:7.1} ms per token",
        r.single_tok_s, r.single_ms_per_token
    )?;
    writeln!(
        out,
        "{:<2} sequences  {:8.2} tok/s  {:7.1} ms per token each  ({:.2}x the aggregate, {:.2}x the latency)",
        r.concurrency, r.aggregate_tok_s, r.batch_ms_per_token, r.speedup, r.latency_ratio
    )?;
    Ok(())
}
