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
