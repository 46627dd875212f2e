//! Quantization in the CLI: `--quant` and `--vision-quant` (quantize at load), and `qwen3vl quantize`.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Args;
use qwen3vl_engine::quantize::{quantize_checkpoint, QuantizeOptions};
use qwen3vl_kernels::Kernels;
use qwen3vl_model::QuantFormat;

/// Which weights to quantize at load, and to what.
#[derive(Args, Clone, Copy, Default)]
pub(crate) struct QuantArgs {
    /// Quantize the text decoder's linear weights at load: `q8` (8-bit, one scale per block of 32) or `q4`
    /// (4-bit, a scale and a minimum per sub-block of 32, 4.75 bits/weight; the attention q|k|v of about
    /// half the layers stay q8, as Q4_K_M keeps some tensors at 6 bits). The lm head (and tied
    /// embeddings) are q8 for any format. Off by default (bf16).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub(crate) quant: Option<QuantFormat>,
    /// Quantize the vision tower's linear weights at load (`q8` or `q4`). Off by default (bf16).
    #[arg(long = "vision-quant", value_name = "FORMAT", value_parser = parse_format)]
    pub(crate) vision_quant: Option<QuantFormat>,
}

pub(crate) fn parse_format(s: &str) -> Result<QuantFormat, String> {
    QuantFormat::parse(s).ok_or_else(|| {
        let known: Vec<&str> = QuantFormat::ALL.iter().map(|f| f.name()).collect();
        format!(
            "unknown quantization format {s:?}: expected one of {}",
            known.join(", ")
        )
    })
}

/// `qwen3vl quantize`: writes the quantized checkpoint and a one-line summary on stderr.
pub(crate) fn cmd_quantize(
    model: &Path,
    quant: QuantFormat,
    vision_quant: Option<QuantFormat>,
    out: &Path,
    threads: usize,
) -> Result<()> {
    let mut k = Kernels::detect().context("choosing the SIMD level")?;
    if threads > 0 {
        k = k.with_threads(threads);
    }
    let t = std::time::Instant::now();
    let s = quantize_checkpoint(
        &QuantizeOptions {
            model_dir: model.to_path_buf(),
            out_dir: out.to_path_buf(),
            quant,
            vision_quant,
        },
        &k,
    )?;
    eprintln!(
        "wrote {}: {} tensors quantized ({quant}{}; lm head q8), {} copied, {:.1} MiB -> {:.1} MiB in {:.1} s",
        out.display(),
        s.tensors_quantized,
        vision_quant.map_or(String::new(), |v| format!(", vision {v}")),
        s.tensors_copied,
        s.bytes_in as f64 / (1 << 20) as f64,
        s.bytes_out as f64 / (1 << 20) as f64,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
