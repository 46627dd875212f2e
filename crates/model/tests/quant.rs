//! `--quant q8` at load (decoder linears and lm head in q8, int8 kernels) against transformers fp32 on the
//! tiny checkpoints: cosine of the sampled logits and top-1 agreement per position (tolerances in common).

mod common;

use common::*;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::text::{text_linear_format, TextLinear};
use qwen3vl_model::{LinearWeight, LoadOptions, Model, Precision, QuantFormat};

const CASES: [&str; 3] = ["text", "image1", "image2"];

fn load(geometry: &str, quant: Option<QuantFormat>, vision: Option<QuantFormat>) -> Model {
    load_with(
        geometry,
        quant,
        vision,
        Kernels::detect().expect("kernels"),
        Precision::F32,
    )
}

fn load_with(
    geometry: &str,
    quant: Option<QuantFormat>,
    vision: Option<QuantFormat>,
    k: Kernels,
    precision: Precision,
) -> Model {
    Model::load(
        &model_dir(geometry),
        k,
        &LoadOptions {
            precision,
            quant,
            vision_quant: vision,
            ..Default::default()
        },
    )
    .expect("load")
}

/// All logits (l, V) of one case.
fn all_logits(model: &Model, geometry: &str, case: &str) -> Vec<f32> {
    let name = format!("{geometry}_{case}");
    forward_case(model, &name, &Reference::load(&name))
}

/// (cosine of the sampled logits, top-1 hits, positions) of one case.
fn run(model: &Model, geometry: &str, case: &str) -> (f64, usize, usize) {
    let name = format!("{geometry}_{case}");
    let r = Reference::load(&name);
    let logits = &forward_case(model, &name, &r);
    let (v, l) = (model.vocab_size(), r.input_ids().len());
    let ours = r.sampled_logits(logits, l, v);
    let cos = cosine(&ours, &r.get("logits.sample").f32);
    let top5 = &r.get("logits.top5_idx").i64;
    let hits = (0..l)
        .filter(|&i| argmax(&logits[i * v..(i + 1) * v]) as i64 == top5[i * 5])
        .count();
    (cos, hits, l)
}

/// Every decoder linear of the dense `model` is quantized as `--quant format` says
/// ([`text_linear_format`]: with q4 the q|k|v of some layers are q8).
fn assert_decoder_linears_in(model: &Model, format: QuantFormat) {
    let layers = model.language_model.layers.len();
    for (li, l) in model.language_model.layers.iter().enumerate() {
        let mlp = l.mlp.dense().expect("a dense model");
        for (lin, kind) in [
            (&l.self_attn.qkv_proj, TextLinear::Qkv),
            (&l.self_attn.o_proj, TextLinear::O),
            (&mlp.gate_up_proj, TextLinear::GateUp),
            (&mlp.down_proj, TextLinear::Down),
        ] {
            let want = text_linear_format(format, li, layers, kind);
            assert_eq!(lin.weight.quant_format(), Some(want), "layer {li} {kind:?}");
        }
    }
}

#[test]
fn q8_logits_parity_with_transformers_fp32() {
    for geometry in ["tied", "untied"] {
        let model = load(geometry, Some(QuantFormat::Q8), None);
        // every decoder linear and the lm head are quantized; the vision tower is not
        assert_decoder_linears_in(&model, QuantFormat::Q8);
        assert_eq!(model.lm_head.weight.quant_format(), Some(QuantFormat::Q8));
        assert!(matches!(
            model.visual.blocks[0].attn.qkv.weight,
            LinearWeight::Packed(_)
        ));
        let (mut hits, mut total) = (0, 0);
        for case in CASES {
            let (cos, h, n) = run(&model, geometry, case);
            println!("{geometry}_{case}: q8 logits cosine {cos:.6}, top-1 {h}/{n}");
            assert!(
                cos >= Q8_MIN_COSINE,
                "{geometry}_{case}: q8 logits cosine {cos} < {Q8_MIN_COSINE}"
            );
            hits += h;
            total += n;
        }
        let frac = hits as f64 / total as f64;
        assert!(
            frac >= Q8_MIN_TOP1,
            "{geometry}: q8 top-1 agreement {hits}/{total} < {Q8_MIN_TOP1}"
        );
    }
}

/// `--quant q8|q4` with the `fast` precision at every kernel variant: where AMX runs (16+ rows: prefill,
/// vision), the weights are dequantized to bf16 and x rounded to bf16 — within the fast tolerance widened
/// by the format's own (cosine ≥ FAST_MIN_COSINE − (1 − the format's minimum)).
#[test]
fn quant_fast_every_variant() {
    for (format, min) in [
        (QuantFormat::Q8, Q8_MIN_COSINE),
        (QuantFormat::Q4, Q4_MIN_COSINE),
    ] {
        let want = FAST_MIN_COSINE - (1.0 - min);
        for k in Kernels::test_variants() {
            let model = load_with("tied", Some(format), None, k, Precision::Fast);
            for case in CASES {
                let (cos, h, n) = run(&model, "tied", case);
                println!(
                    "{} amx={} {format:?} tied_{case}: fast logits cosine {cos:.6}, top-1 {h}/{n}",
                    k.isa(),
                    k.amx()
                );
                assert!(
                    cos >= want,
                    "{} amx={} {format:?} tied_{case}: fast logits cosine {cos} < {want}",
                    k.isa(),
                    k.amx()
                );
            }
        }
    }
}

#[test]
fn vision_quant_q8_quantizes_only_the_vision_tower() {
    let model = load("untied", None, Some(QuantFormat::Q8));
    assert_eq!(
        model.visual.blocks[0].mlp.linear_fc1.weight.quant_format(),
        Some(QuantFormat::Q8)
    );
    assert!(model.lm_head.weight.quant_format().is_none());
    let (cos, h, n) = run(&model, "untied", "image1");
    println!("untied_image1 with --vision-quant q8: cosine {cos:.6}, top-1 {h}/{n}");
    assert!(cos >= Q8_MIN_COSINE, "cosine {cos}");
}

#[test]
fn q4_logits_parity_with_transformers_fp32_and_the_unquantized_model() {
    for geometry in ["tied", "untied"] {
        let model = load(geometry, Some(QuantFormat::Q4), None);
        let base = load(geometry, None, None);
        assert_decoder_linears_in(&model, QuantFormat::Q4);
        // the lm head (and tied embeddings) stay q8
        assert_eq!(model.lm_head.weight.quant_format(), Some(QuantFormat::Q8));
        let v = model.vocab_size();
        let (mut hits, mut hits_base, mut total) = (0, 0, 0);
        for case in CASES {
            let (cos, h, n) = run(&model, geometry, case);
            let (q, b) = (
                all_logits(&model, geometry, case),
                all_logits(&base, geometry, case),
            );
            let cos_base = cosine(&q, &b);
            let hb = (0..n)
                .filter(|&i| argmax(&q[i * v..(i + 1) * v]) == argmax(&b[i * v..(i + 1) * v]))
                .count();
            println!(
                "{geometry}_{case}: q4 logits cosine {cos:.6} vs transformers, {cos_base:.6} vs unquantized; \
                 top-1 {h}/{n} vs transformers, {hb}/{n} vs unquantized"
            );
            for (what, c) in [
                ("transformers fp32", cos),
                ("the unquantized model", cos_base),
            ] {
                assert!(
                    c >= Q4_MIN_COSINE,
                    "{geometry}_{case}: q4 logits cosine {c} against {what} < {Q4_MIN_COSINE}"
                );
            }
            hits += h;
            hits_base += hb;
            total += n;
        }
        for (what, h) in [
            ("transformers fp32", hits),
            ("the unquantized model", hits_base),
        ] {
            let frac = h as f64 / total as f64;
            assert!(
                frac >= Q4_MIN_TOP1,
                "{geometry}: q4 top-1 agreement with {what} {h}/{total} < {Q4_MIN_TOP1}"
            );
        }
    }
}
