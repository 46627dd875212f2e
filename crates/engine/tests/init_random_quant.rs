//! `init-random --quant` writes, tensor for tensor, what `qwen3vl quantize` writes for the bf16 checkpoint
//! of the same seed (both through `quantize::quantized_entries` / `quantized_bytes`), and that checkpoint
//! loads with every decoder linear in the format asked for.

use std::path::{Path, PathBuf};

use qwen3vl_engine::dev::init_random::{write_checkpoint, InitOptions, Preset};
use qwen3vl_engine::quantize::{quantize_checkpoint, QuantizeOptions};
use qwen3vl_kernels::Kernels;
use qwen3vl_model::text::{text_linear_format, TextLinear};
use qwen3vl_model::weights::{Dtype, Weights};
use qwen3vl_model::{LoadOptions, Model, Precision, QuantFormat};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-init-quant-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// Asserts that the checkpoints in `a` and `b` hold the same tensors (names, dtypes, shapes, bytes) and the
/// same `quant:` metadata; returns how many are stored quantized (U8).
fn assert_same_tensors(a: &Path, b: &Path, what: &str) -> usize {
    let (wa, wb) = (Weights::open_dir(a).unwrap(), Weights::open_dir(b).unwrap());
    let mut keys: Vec<&str> = wa.keys().collect();
    let mut keys_b: Vec<&str> = wb.keys().collect();
    keys.sort_unstable();
    keys_b.sort_unstable();
    assert_eq!(keys, keys_b, "{what}: tensor names");
    let mut quantized = 0;
    for key in keys {
        let (ta, tb) = (wa.raw(key).unwrap(), wb.raw(key).unwrap());
        assert_eq!(
            (ta.dtype, &ta.shape),
            (tb.dtype, &tb.shape),
            "{what}: {key}"
        );
        assert!(
            ta.bytes() == tb.bytes(),
            "{what}: the bytes of {key} differ"
        );
        let meta = Weights::quant_meta_key(key);
        assert_eq!(
            wa.metadata_of(key, &meta),
            wb.metadata_of(key, &meta),
            "{what}: {meta}"
        );
        if ta.dtype == Dtype::U8 {
            quantized += 1;
        }
    }
    quantized
}

#[test]
fn init_random_quantized_equals_quantize_of_the_bf16_checkpoint() {
    let k = Kernels::detect().unwrap();
    for (preset, f) in [
        (Preset::Tiny, QuantFormat::Q4),
        (Preset::TinyMoe, QuantFormat::Q4),
        (Preset::TinyMoe, QuantFormat::Q8),
    ] {
        let what = format!("{} {}", preset.name(), f.name());
        let tag = what.replace(' ', "-");
        let (bf16, direct, quantized) = (
            temp_dir(&format!("{tag}-bf16")),
            temp_dir(&format!("{tag}-direct")),
            temp_dir(&format!("{tag}-quantized")),
        );
        let seed = 7;
        let bf16_opts = InitOptions {
            seed,
            ..Default::default()
        };
        write_checkpoint(&bf16, preset, &bf16_opts).unwrap();
        let direct_opts = InitOptions {
            seed,
            quant: Some(f),
            ..Default::default()
        };
        write_checkpoint(&direct, preset, &direct_opts).unwrap();
        let s = quantize_checkpoint(
            &QuantizeOptions {
                model_dir: bf16.clone(),
                out_dir: quantized.clone(),
                quant: f,
                vision_quant: None,
            },
            &k,
        )
        .unwrap();

        // 2 layers × (q, k, v, o + gate, up, down or the 2 fused expert tensors) + the tied embeddings
        let per_layer = if preset == Preset::Tiny { 7 } else { 6 };
        assert_eq!(s.tensors_quantized, 2 * per_layer + 1, "{what}");
        let n = assert_same_tensors(&direct, &quantized, &what);
        assert_eq!(n, s.tensors_quantized, "{what}");

        let m = Model::load(
            &direct,
            k,
            &LoadOptions {
                precision: Precision::F32,
                ..Default::default()
            },
        )
        .unwrap();
        // every linear in the format the one policy names for it (q4: the q|k|v of some layers in q8)
        let layers = m.language_model.layers.len();
        let mut upgraded = 0;
        for (li, l) in m.language_model.layers.iter().enumerate() {
            let mut linears = vec![
                (&l.self_attn.qkv_proj, TextLinear::Qkv),
                (&l.self_attn.o_proj, TextLinear::O),
            ];
            match l.mlp.dense() {
                Some(mlp) => linears.extend([
                    (&mlp.gate_up_proj, TextLinear::GateUp),
                    (&mlp.down_proj, TextLinear::Down),
                ]),
                None => {
                    let moe = l.mlp.sparse().unwrap();
                    let experts = moe.experts.gate_up_proj.iter();
                    linears.extend(
                        experts
                            .chain(&moe.experts.down_proj)
                            .map(|e| (e, TextLinear::Experts)),
                    );
                }
            }
            for (lin, kind) in linears {
                let want = text_linear_format(f, li, layers, kind);
                assert_eq!(
                    lin.weight.quant_format(),
                    Some(want),
                    "{what} layer {li} {kind:?}"
                );
                upgraded += usize::from(want != f);
            }
        }
        // tiny presets have 2 layers: q4 keeps layer 1's q|k|v (7·2/8 = 1) in q8
        let want_upgraded = if f == QuantFormat::Q4 { 1 } else { 0 };
        assert_eq!(upgraded, want_upgraded, "{what}");
        assert_eq!(
            m.lm_head.weight.quant_format(),
            Some(QuantFormat::Q8),
            "{what}"
        );
        for d in [bf16, direct, quantized] {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
