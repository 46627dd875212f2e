//! `qwen3vl`: the command-line interface. It parses arguments and calls the libraries; nothing else.
//! Every error is printed as one line on stderr with a non-zero exit status.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

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
            // --help / --version print to stdout and succeed; usage errors go to stderr.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
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
