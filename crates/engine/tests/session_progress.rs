//! A session's progress observer: after each vision block and each decoder layer of the prefill, with
//! increasing counts that end at the totals; decode steps report nothing; the logits do not change.

use std::path::Path;
use std::sync::{Arc, Mutex};

use qwen3vl_engine::{Engine, EngineOptions, GenerateParams, Progress, SamplingParams};
use qwen3vl_model::Precision;
use qwen3vl_processor::{Content, Message};

fn testdata() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../testdata"))
}

#[test]
fn progress_counts_vision_blocks_then_prefill_layers() {
    let engine = Engine::load(
        &testdata().join("model-tiny-tied"),
        &EngineOptions {
            precision: Precision::F32,
            ..Default::default()
        },
    )
    .unwrap();
    let cfg = engine.model.config().clone();
    let image = engine
        .load_image(&testdata().join("processor/images/rgb_20x30.png"))
        .unwrap();
    let msgs = [Message::new(
        "user",
        vec![Content::Image, Content::Text("What is this?".into())],
    )];
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(5),
        stop_strings: vec![],
        extra_eos: vec![],
    };

    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut observed = engine.session(512);
    let sink = seen.clone();
    observed.set_progress(Some(Arc::new(move |p| sink.lock().unwrap().push(p))));
    let prompt = observed
        .prepare(&msgs, std::slice::from_ref(&image), Some(5))
        .unwrap()
        .tokens
        .len();
    let g1 = observed
        .generate(
            &msgs,
            std::slice::from_ref(&image),
            &params,
            &mut |_| Ok(()),
        )
        .unwrap();
    assert!(g1.stats.decode_steps >= 1, "the answer decoded tokens");

    let [t, h, w] = image.grid_thw;
    let depth = cfg.vision.depth;
    let layers = cfg.text.num_hidden_layers;
    let mut expected: Vec<Progress> = (1..=depth)
        .map(|done| Progress::Vision {
            patches: t * h * w,
            done,
            total: depth,
        })
        .collect();
    expected.extend((1..=layers).map(|done| Progress::Decoder {
        tokens: prompt,
        done,
        total: layers,
    }));
    assert_eq!(*seen.lock().unwrap(), expected);

    // Without an observer the same turn gives the same answer.
    let mut plain = engine.session(512);
    let g2 = plain
        .generate(
            &msgs,
            std::slice::from_ref(&image),
            &params,
            &mut |_| Ok(()),
        )
        .unwrap();
    assert_eq!(g1.tokens, g2.tokens);
}
