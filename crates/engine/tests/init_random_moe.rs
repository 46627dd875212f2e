//! `init_random` for the Mixture-of-Experts presets: the bf16 checkpoint (experts in the released layout)
//! loads and runs; `--quant q8` writes the quantized checkpoint directly, with the very values that quantizing
//! the bf16 one at load gives; `--layers` changes only the depth.

use std::path::{Path, PathBuf};

use qwen3vl_engine::dev::init_random::{write_checkpoint, InitOptions, Preset};
use qwen3vl_kernels::Kernels;
use qwen3vl_model::text::ExpertLayout;
use qwen3vl_model::{
    KvCache, LoadOptions, Logits, Model, Positions, Precision, QuantFormat, RunState,
};

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-init-moe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn load(dir: &Path, quant: Option<QuantFormat>) -> Model {
    Model::load(
        dir,
        Kernels::detect().unwrap(),
        &LoadOptions {
            precision: Precision::F32,
            quant,
            ..Default::default()
        },
    )
    .unwrap()
}

fn logits(model: &Model) -> Vec<f32> {
    let v = model.vocab_size() as u32;
    let ids: Vec<u32> = [151644, 872, 198, 9707, 0, 9645, 825, 151645, 198]
        .iter()
        .map(|&id| id % v)
        .collect();
    let mut cache = KvCache::new(&model.config().text, 16);
    let mut st = RunState::new();
    model
        .forward(
            &ids,
            Positions::text(0, ids.len()).as_ref(),
            None,
            &mut cache,
            &mut st,
            Logits::All,
        )
        .unwrap()
        .to_vec()
}

#[test]
fn moe_checkpoint_written_quantized_equals_bf16_quantized_at_load() {
    let (a, b) = (temp_dir("bf16"), temp_dir("q8"));
    write_checkpoint(&a, Preset::TinyMoe, &InitOptions::default()).unwrap();
    let opts = InitOptions {
        quant: Some(QuantFormat::Q8),
        layers: Some(3),
        ..Default::default()
    };
    let s = write_checkpoint(&b, Preset::TinyMoe, &opts).unwrap();
    assert!(s.weight_bytes > 0);

    // bf16: experts stored as released, every layer sparse, logits finite and varied
    let m_bf16 = load(&a, None);
    assert_eq!(m_bf16.config().text.num_hidden_layers, 2);
    for l in &m_bf16.language_model.layers {
        let moe = l.mlp.sparse().expect("every layer is sparse");
        assert_eq!(moe.experts.layout, [ExpertLayout::Released; 2]);
        assert_eq!((moe.experts.gate_up_proj.len(), moe.top_k()), (8, 2));
    }
    let la = logits(&m_bf16);
    assert!(la.iter().all(|x| x.is_finite()));
    assert_ne!(la[..100], la[la.len() - 100..]);

    // q8 written directly: 3 layers (--layers), quantized experts, the same values as quantizing at load
    let m_q8 = load(&b, None);
    assert_eq!(m_q8.config().text.num_hidden_layers, 3);
    for l in &m_q8.language_model.layers {
        let moe = l.mlp.sparse().unwrap();
        assert_eq!(moe.experts.layout, [ExpertLayout::Quantized; 2]);
        assert_eq!(
            moe.experts.down_proj[0].weight.quant_format(),
            Some(QuantFormat::Q8)
        );
    }
    let c = temp_dir("q8-2layers");
    let opts2 = InitOptions {
        quant: Some(QuantFormat::Q8),
        ..Default::default()
    };
    write_checkpoint(&c, Preset::TinyMoe, &opts2).unwrap();
    let at_load = logits(&load(&a, Some(QuantFormat::Q8)));
    let stored = logits(&load(&c, None));
    assert_eq!(at_load, stored);
    for d in [a, b, c] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn layers_override_is_checked() {
    let d = temp_dir("layers0");
    let opts = InitOptions {
        layers: Some(1),
        ..Default::default()
    };
    // tiny-moe's vision tower injects 2 DeepStack features: 1 layer is too few
    let e = write_checkpoint(&d, Preset::TinyMoe, &opts).unwrap_err();
    assert!(e.to_string().contains("--layers 1"), "{e}");
    let _ = std::fs::remove_dir_all(d);
}

/// `qwen3vl quantize` on MoE checkpoints of either expert layout gives the logits of quantizing at load.
#[test]
fn quantize_command_handles_both_expert_layouts() {
    use qwen3vl_engine::quantize::{quantize_checkpoint, QuantizeOptions};
    let released = temp_dir("quantize-src");
    write_checkpoint(&released, Preset::TinyMoe, &InitOptions::default()).unwrap();
    let transformers = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-moe");
    for (name, src) in [
        ("released", released.clone()),
        ("transformers", transformers),
    ] {
        let out = temp_dir(&format!("quantize-{name}"));
        let s = quantize_checkpoint(
            &QuantizeOptions {
                model_dir: src.clone(),
                out_dir: out.clone(),
                quant: QuantFormat::Q8,
                vision_quant: None,
            },
            &Kernels::detect().unwrap(),
        )
        .unwrap();
        assert!(s.tensors_quantized > 0, "{s:?}");
        let m = load(&out, None);
        let sparse: Vec<_> = m
            .language_model
            .layers
            .iter()
            .filter_map(|l| l.mlp.sparse())
            .collect();
        assert!(!sparse.is_empty());
        assert!(sparse
            .iter()
            .all(|b| b.experts.layout == [ExpertLayout::Quantized; 2]));
        assert_eq!(
            logits(&m),
            logits(&load(&src, Some(QuantFormat::Q8))),
            "{name}"
        );
        let _ = std::fs::remove_dir_all(out);
    }
    let _ = std::fs::remove_dir_all(released);
}
