//! Which format each text decoder linear gets under `--quant` (load time and `qwen3vl quantize` alike).

use crate::QuantFormat;

/// The linears of a decoder layer, as the quantization policy tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextLinear {
    /// `self_attn.{q,k,v}_proj` (one fused weight here)
    Qkv,
    /// `self_attn.o_proj`
    O,
    /// `mlp.{gate,up}_proj` (fused)
    GateUp,
    /// `mlp.down_proj`
    Down,
    /// `mlp.experts.*` of a MoE layer
    Experts,
}

impl TextLinear {
    /// The linear a text decoder tensor key belongs to, with its layer index
    /// (`model.language_model.layers.{i}.…`), or None for any other key.
    pub fn of_key(key: &str) -> Option<(usize, TextLinear)> {
        let rest = key.strip_prefix("model.language_model.layers.")?;
        let (layer, name) = rest.split_once('.')?;
        let layer = layer.parse().ok()?;
        let kind = match name {
            "self_attn.q_proj.weight" | "self_attn.k_proj.weight" | "self_attn.v_proj.weight" => {
                TextLinear::Qkv
            }
            "self_attn.o_proj.weight" => TextLinear::O,
            "mlp.gate_proj.weight" | "mlp.up_proj.weight" => TextLinear::GateUp,
            "mlp.down_proj.weight" => TextLinear::Down,
            "mlp.experts.gate_up_proj" | "mlp.experts.down_proj" => TextLinear::Experts,
            _ => return None,
        };
        Some((layer, kind))
    }
}

/// The parts of the text decoder's fused weights as stored, each (key suffix, fused weight, position): the
/// order in which the model stacks them.
const FUSED_PARTS: [(&str, &str, usize); 5] = [
    ("self_attn.q_proj.weight", "self_attn.qkv", 0),
    ("self_attn.k_proj.weight", "self_attn.qkv", 1),
    ("self_attn.v_proj.weight", "self_attn.qkv", 2),
    ("mlp.gate_proj.weight", "mlp.gate_up", 0),
    ("mlp.up_proj.weight", "mlp.gate_up", 1),
];

/// A sort key for writing tensor `key`: the parts of one fused weight (q, k, v; gate, up) sort next to one
/// another in the order the model stacks them, every other key by itself. A quantized checkpoint written
/// in this order holds each fused weight's values (and scales) contiguously, which the loader then uses
/// in place instead of copying.
pub fn fused_order(key: &str) -> (String, usize) {
    for (suffix, fused, pos) in FUSED_PARTS {
        if let Some(prefix) = key.strip_suffix(suffix) {
            return (format!("{prefix}{fused}"), pos);
        }
    }
    (key.to_string(), 0)
}

/// The format of linear `kind` of layer `layer` (of `layers`) under `--quant base`.
///
/// q4 keeps 8 bits (q8) for the attention input projections (q|k|v, one fused weight here) of about half
/// the layers: the first and last eighth and every third one between — the layers in which
/// llama.cpp's Q4_K_M keeps attn_v and ffn_down at 6 bits (`use_more_bits`). Measured on the 2B random
/// checkpoint (`qwen3vl eval`, 2557 tokens of text, ctx 512; llama.cpp Q4_K_M on the same checkpoint and
/// text: KL mean 0.141, p99 0.170): q4 everywhere KL mean 0.182; these q|k|v in q8 **0.136** (p99 0.171,
/// same top-1 46% against 43%) for ~3% more bytes per token; with the down projections of the same layers
/// too 0.120 for ~9% (decode measured 8% slower); with o_proj as well 0.082. A MoE layer's experts stay in
/// the base format (they are the bulk of the 30B-A3B, which must fit in memory). q8 is q8 everywhere.
pub fn text_linear_format(
    base: QuantFormat,
    layer: usize,
    layers: usize,
    kind: TextLinear,
) -> QuantFormat {
    // (the third test runs only when layer >= layers / 8: no underflow)
    let more_bits = layer < layers / 8 || layer >= 7 * layers / 8 || (layer - layers / 8) % 3 == 2;
    match (base, kind) {
        (QuantFormat::Q4, TextLinear::Qkv) if more_bits => QuantFormat::Q8,
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_keeps_the_attention_inputs_of_half_the_layers_at_8_bits() {
        // 28 layers (the 2B): 0..3 and 24..28 (7·28/8 = 24), and every third from 3 on: 5, 8, ..., 23
        let up: Vec<usize> = (0..28)
            .filter(|&l| {
                text_linear_format(QuantFormat::Q4, l, 28, TextLinear::Qkv) == QuantFormat::Q8
            })
            .collect();
        assert_eq!(up, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 24, 25, 26, 27]);
        for l in 0..28 {
            for kind in [
                TextLinear::O,
                TextLinear::GateUp,
                TextLinear::Down,
                TextLinear::Experts,
            ] {
                assert_eq!(
                    text_linear_format(QuantFormat::Q4, l, 28, kind),
                    QuantFormat::Q4
                );
            }
            for kind in [
                TextLinear::Qkv,
                TextLinear::O,
                TextLinear::GateUp,
                TextLinear::Down,
            ] {
                assert_eq!(
                    text_linear_format(QuantFormat::Q8, l, 28, kind),
                    QuantFormat::Q8
                );
            }
        }
        // the 30B-A3B's 48: 0..6, 42..48 and 8, 11, ..., 41
        let n = (0..48)
            .filter(|&l| {
                text_linear_format(QuantFormat::Q4, l, 48, TextLinear::Qkv) == QuantFormat::Q8
            })
            .count();
        assert_eq!(n, 6 + 6 + 12);
    }

    #[test]
    fn keys_name_their_layer_and_linear() {
        let k = |s: &str| TextLinear::of_key(s);
        assert_eq!(
            k("model.language_model.layers.12.self_attn.v_proj.weight"),
            Some((12, TextLinear::Qkv))
        );
        assert_eq!(
            k("model.language_model.layers.0.mlp.down_proj.weight"),
            Some((0, TextLinear::Down))
        );
        assert_eq!(
            k("model.language_model.layers.3.mlp.experts.down_proj"),
            Some((3, TextLinear::Experts))
        );
        assert_eq!(
            k("model.language_model.layers.3.input_layernorm.weight"),
            None
        );
        assert_eq!(k("model.language_model.embed_tokens.weight"), None);
        assert_eq!(
            k("model.language_model.layers.x.mlp.down_proj.weight"),
            None
        );
    }
}
