//! `qwen3vl`: the command-line interface. It parses arguments and calls the libraries; nothing else.
//! Every error is printed as one line on stderr with a non-zero exit status.

mod args;
mod bench;
mod bench_kernels;
mod chat;
mod generate;
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
use bench::cmd_bench;
use chat::cmd_chat;
use generate::*;

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
            vision_quant,
            quantized,
            text,
            images,
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
                vision_quant,
                images,
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
    writeln!(out, "amx:       {}", r.amx)?;
    writeln!(out, "quant:     {}", r.quant)?;
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
