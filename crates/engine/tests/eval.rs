//! `qwen3vl eval` on the tiny checkpoint: identical models give KL 0 and agreement 1 exactly; q8 and q4
//! give small, ordered divergences (q4 further from the base than q8) and perplexities close to the base's;
//! the image comparison of `--vision-quant` on the repo's photographs.

use std::path::{Path, PathBuf};

use qwen3vl_engine::eval::{evaluate, EvalOptions, TextReport};
use qwen3vl_model::{Precision, QuantFormat};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

const TEXT: &str = "The quick brown fox jumps over the lazy dog. A quantized model reads fewer bytes \
    per token than its bf16 original, and this report says how much of the next-token distribution that \
    costs: the KL divergence per token, how often both models agree on the most likely token, and the \
    perplexity of each on the same text. Numbers, names and punctuation: 3.14159, Qwen3-VL, (a, b); done.";

fn eval(quant: Option<QuantFormat>, ctx: usize) -> TextReport {
    let r = evaluate(&EvalOptions {
        model_dir: testdata().join("model-tiny-untied"),
        quantized_dir: None,
        quant,
        vision_quant: None,
        images: Vec::new(),
        text: Some(TEXT.into()),
        prompt_tokens: None,
        ctx,
        precision: Precision::F32,
        threads: 0,
    })
    .unwrap();
    println!("{quant:?} ctx {ctx}:\n{r}");
    assert!(r.images.is_empty());
    r.text.expect("a text was given")
}

#[test]
fn eval_of_identical_models_is_exact_and_quantized_ones_ordered() {
    let same = eval(None, 32);
    assert!(same.tokens > 64 && same.chunks >= 2, "{same:?}");
    // full chunks score their second half, the last partial chunk all its predictions
    let full = same.tokens / 32;
    let tail = same.tokens % 32;
    assert_eq!(same.scored, full * 15 + tail.saturating_sub(1));
    assert_eq!(same.kl_mean, 0.0);
    assert_eq!(same.kl_max, 0.0);
    assert_eq!(same.top1_agreement, 1.0);
    assert_eq!(same.ppl_base, same.ppl_quant);
    // a random tiny model is close to uniform over its vocabulary
    assert!(
        same.ppl_base > 1000.0 && same.ppl_base.is_finite(),
        "{same:?}"
    );

    let q8 = eval(Some(QuantFormat::Q8), 32);
    let q4 = eval(Some(QuantFormat::Q4), 32);
    for r in [&q8, &q4] {
        assert_eq!((r.tokens, r.scored), (same.tokens, same.scored));
        assert_eq!(r.ppl_base, same.ppl_base, "the base model is not quantized");
        assert!(r.kl_mean > 0.0 && r.kl_mean <= r.kl_p99 && r.kl_p99 <= r.kl_max);
        assert!((r.ppl_quant / r.ppl_base - 1.0).abs() < 0.05, "{r:?}");
    }
    assert!(q8.kl_mean < 1e-3 && q8.top1_agreement >= 0.9, "{q8:?}");
    assert!(q4.kl_mean < 2e-2 && q4.top1_agreement >= 0.6, "{q4:?}");
    assert!(
        q4.kl_mean > q8.kl_mean,
        "q4 {} vs q8 {}",
        q4.kl_mean,
        q8.kl_mean
    );
}

#[test]
fn eval_refuses_what_it_cannot_score() {
    let opts = EvalOptions {
        model_dir: testdata().join("model-tiny-untied"),
        quantized_dir: None,
        quant: None,
        vision_quant: None,
        images: Vec::new(),
        text: None,
        prompt_tokens: None,
        ctx: 16,
        precision: Precision::F32,
        threads: 1,
    };
    let e = evaluate(&opts).unwrap_err().to_string();
    assert!(
        e.contains("--text") && e.contains("--prompt-tokens") && e.contains("--image"),
        "{e}"
    );
    let e = evaluate(&EvalOptions {
        ctx: 1,
        prompt_tokens: Some(10),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--ctx"), "{e}");
    let e = evaluate(&EvalOptions {
        prompt_tokens: Some(1),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("nothing to score"), "{e}");
    // seeded ids: the same report twice
    let a = evaluate(&EvalOptions {
        prompt_tokens: Some(20),
        ..opts.clone()
    })
    .unwrap()
    .text
    .unwrap();
    assert_eq!(a.tokens, 20);
    assert_eq!(a.kl_mean, 0.0);
    // an image that is not there: an error naming it
    let e = evaluate(&EvalOptions {
        images: vec![testdata().join("processor/images/missing.png")],
        ..opts.clone()
    })
    .unwrap_err();
    assert!(format!("{e:#}").contains("missing.png"), "{e:#}");
}

/// `--vision-quant q8` on the repo's photographs (the processor's test images: a 333×517 and a
/// 1365×2048 JPEG, a 100×80 PNG with alpha): features cosine ≥ 0.999 against the bf16 vision tower (the
/// goal of `--vision-quant q8`), q4 further off than q8, the same tower exactly 1; the text is not scored.
#[test]
fn eval_compares_image_features_of_a_quantized_vision_tower() {
    let images: Vec<PathBuf> = ["rgb_333x517.jpg", "rgb_1365x2048.jpg", "rgba_100x80.png"]
        .iter()
        .map(|f| testdata().join("processor/images").join(f))
        .collect();
    let run = |vision_quant| {
        let r = evaluate(&EvalOptions {
            model_dir: testdata().join("model-tiny-untied"),
            quantized_dir: None,
            quant: None,
            vision_quant,
            images: images.clone(),
            text: None,
            prompt_tokens: None,
            ctx: 512,
            precision: Precision::F32,
            threads: 0,
        })
        .unwrap();
        println!("vision {vision_quant:?}:\n{r}");
        assert!(r.text.is_none());
        assert_eq!(r.images.len(), images.len());
        r.images
    };
    let same = run(None);
    let q8 = run(Some(QuantFormat::Q8));
    let q4 = run(Some(QuantFormat::Q4));
    for ((s, a), b) in same.iter().zip(&q8).zip(&q4) {
        assert!(
            s.tokens > 0 && s.tokens == a.tokens && a.tokens == b.tokens,
            "{s:?}"
        );
        assert_eq!((s.cosine, s.rel_error), (1.0, 0.0), "{s:?}");
        assert!(a.cosine >= 0.999 && a.cosine < 1.0, "{a:?}");
        assert!(
            b.rel_error > a.rel_error && b.cosine < a.cosine,
            "{b:?} vs {a:?}"
        );
    }
}
