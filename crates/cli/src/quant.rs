//! Quantization options of the CLI: `--quant` and `--vision-quant` (quantize at load).

use clap::Args;
use qwen3vl_model::QuantFormat;

/// Which weights to quantize at load, and to what.
#[derive(Args, Clone, Copy, Default)]
pub(crate) struct QuantArgs {
    /// Quantize the text decoder's linear weights at load: `q8` (8-bit, one scale per block of 32). The lm
    /// head (and tied embeddings) are q8 for any format. Off by default (bf16).
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    pub(crate) quant: Option<QuantFormat>,
    /// Quantize the vision tower's linear weights at load (`q8`). Off by default (bf16).
    #[arg(long = "vision-quant", value_name = "FORMAT", value_parser = parse_format)]
    pub(crate) vision_quant: Option<QuantFormat>,
}

fn parse_format(s: &str) -> Result<QuantFormat, String> {
    QuantFormat::parse(s).ok_or_else(|| {
        let known: Vec<&str> = QuantFormat::ALL.iter().map(|f| f.name()).collect();
        format!(
            "unknown quantization format {s:?}: expected one of {}",
            known.join(", ")
        )
    })
}
