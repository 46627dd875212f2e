//! A turn cut short by the caller (its sink refuses a piece, as Ctrl-C does in the chat) still closes the
//! answer in the cache: the next turn then runs exactly as after an answer that stopped at that length.

use std::path::Path;

use qwen3vl_engine::{Engine, EngineError, EngineOptions, GenerateParams, SamplingParams};
use qwen3vl_model::Precision;
use qwen3vl_processor::Message;

fn engine() -> Engine {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied");
    Engine::load(
        &dir,
        &EngineOptions {
            precision: Precision::F32,
            ..Default::default()
        },
    )
    .unwrap()
}

fn params(max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(max_tokens),
        stop_strings: vec![],
        extra_eos: vec![],
    }
}

#[test]
fn an_answer_stopped_by_the_sink_is_closed_before_the_next_turn() {
    let engine = engine();
    let turn1 = [Message::text("user", "Count from one to twenty.")];
    let turn2 = [Message::text("user", "And back?")];

    // A: the sink refuses its third piece.
    let mut a = engine.session(256);
    let prompt_len = a.prepare(&turn1, &[], Some(40)).unwrap().tokens.len();
    let mut pieces = 0;
    let e = a
        .generate(&turn1, &[], &params(40), &mut |_| {
            pieces += 1;
            if pieces == 3 {
                Err(EngineError::Input("stopped".into()))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
    assert!(e.to_string().contains("stopped"), "{e}");
    // The cache holds the prompt and every sampled token but the last (never fed).
    let sampled = a.len() - prompt_len + 1;
    assert!(sampled >= 3, "{sampled} tokens sampled");

    // B: the same answer, stopped by its length.
    let mut b = engine.session(256);
    let g = b
        .generate(&turn1, &[], &params(sampled), &mut |_| Ok(()))
        .unwrap();
    assert_eq!(g.tokens.len(), sampled);
    assert_eq!(a.len(), b.len());

    // The next turn is the same in both: A's answer was closed like B's.
    let ga = a
        .generate(&turn2, &[], &params(6), &mut |_| Ok(()))
        .unwrap();
    let gb = b
        .generate(&turn2, &[], &params(6), &mut |_| Ok(()))
        .unwrap();
    assert_eq!(ga.tokens, gb.tokens);
    assert_eq!(a.len(), b.len());
}
