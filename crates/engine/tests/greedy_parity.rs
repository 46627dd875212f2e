//! Greedy generation through the whole engine (processor → model → sampler → session) yields exactly the
//! token ids of transformers' `generate(do_sample=False)` on the tiny reference checkpoints
//! (testdata/model-reference/cases.json, written by tools/reference/model_cases.py), with and without images.
//! Also: the KV-cached multi-turn path equals running the whole conversation at once, and a fixed seed
//! reproduces a sampled answer.

use std::path::{Path, PathBuf};

use qwen3vl_engine::{Engine, EngineOptions, FinishReason, GenerateParams, SamplingParams};
use qwen3vl_model::Precision;
use qwen3vl_processor::{Content, Message};
use serde_json::Value;

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn load(dir: &Path) -> Engine {
    Engine::load(
        dir,
        &EngineOptions {
            threads: 0,
            precision: Precision::F32,
            progress: None,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn params(sampling: SamplingParams, max_tokens: usize) -> GenerateParams {
    GenerateParams {
        sampling,
        max_tokens: Some(max_tokens),
        stop_strings: vec![],
        extra_eos: vec![],
    }
}

fn user(n_images: usize, text: &str) -> Message {
    let mut c = vec![Content::Image; n_images];
    c.push(Content::Text(text.to_string()));
    Message::new("user", c)
}

#[test]
fn greedy_ids_match_transformers() {
    let refdir = testdata().join("model-reference");
    let cases: Value =
        serde_json::from_slice(&std::fs::read(refdir.join("cases.json")).unwrap()).unwrap();
    let cases = cases["cases"].as_object().unwrap();
    assert!(
        cases.len() >= 6,
        "expected text and image cases for both geometries"
    );
    let mut engines: std::collections::HashMap<String, Engine> = Default::default();
    let mut images_seen = 0;
    for (name, c) in cases {
        let dir = c["model_dir"].as_str().unwrap().to_string();
        let engine = engines
            .entry(dir.clone())
            .or_insert_with(|| load(&testdata().join(&dir)));
        let files: Vec<&str> = c["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        images_seen += files.len();
        let pixels: Vec<_> = files
            .iter()
            .map(|f| engine.load_image(&refdir.join(f)).unwrap())
            .collect();
        let messages = vec![user(files.len(), c["prompt"].as_str().unwrap())];
        let expected_prompt: Vec<u32> = serde_json::from_value(c["input_ids"].clone()).unwrap();
        let prompt = engine.processor.encode(&messages, &pixels, true).unwrap();
        assert_eq!(prompt.input_ids, expected_prompt, "{name}: prompt ids");
        let expected: Vec<u32> = serde_json::from_value(c["greedy_new_ids"].clone()).unwrap();
        let max = c["greedy_max_new_tokens"].as_u64().unwrap() as usize;
        let mut session = engine.session(prompt.input_ids.len() + max);
        let g = session
            .generate(
                &messages,
                &pixels,
                &params(SamplingParams::greedy(), max),
                &mut |_| Ok(()),
            )
            .unwrap();
        assert_eq!(g.tokens, expected, "{name}: greedy ids");
        if g.tokens.len() == max {
            assert_eq!(g.finish, FinishReason::Length);
        }
    }
    assert!(images_seen >= 2, "no image cases were checked");
}

/// Two turns through the KV cache give the same second answer as running the whole token sequence
/// (turn 1, answer 1, `<|im_end|>\n`, turn 2) at once in a fresh cache with positions from get_rope_index.
#[test]
fn multi_turn_cache_equals_full_recompute() {
    use qwen3vl_model::{KvCache, Logits, Positions, PositionsRef, RunState, VisionInput};
    let dir = testdata().join("model-tiny-untied");
    let engine = load(&dir);
    let refdir = testdata().join("model-reference");
    let img = engine.load_image(&refdir.join("img_64x96.png")).unwrap();
    let greedy = params(SamplingParams::greedy(), 5);
    let none = &mut |_: &str| Ok(());

    let mut s = engine.session(512);
    let first = vec![user(1, "Describe this image.")];
    let second = vec![user(0, "And now?")];
    let a1 = s
        .generate(&first, std::slice::from_ref(&img), &greedy, none)
        .unwrap();
    let a2 = s.generate(&second, &[], &greedy, none).unwrap();

    // The same conversation as one token sequence.
    let p = &engine.processor;
    let mut ids = p
        .encode(&first, std::slice::from_ref(&img), true)
        .unwrap()
        .input_ids;
    let im_end = p.tokenizer().token_to_id("<|im_end|>").unwrap();
    let answer = match a1.finish {
        FinishReason::Eos => &a1.tokens[..a1.tokens.len() - 1],
        _ => &a1.tokens[..],
    };
    ids.extend_from_slice(answer);
    ids.extend_from_slice(&[im_end, 198]);
    ids.extend(p.encode(&second, &[], true).unwrap().input_ids);
    let (positions, delta) =
        qwen3vl_processor::get_rope_index(&ids, &[img.grid_thw], p.special_ids(), 2).unwrap();
    let model = &engine.model;
    let vin = VisionInput {
        pixel_values: img.pixel_values.clone(),
        grid_thw: img.grid_thw,
    };
    let vision = model.encode_images(std::slice::from_ref(&vin)).unwrap();
    let mut cache = KvCache::new(&model.config().text, 512);
    let mut st = RunState::new();
    let positions = Positions::from(positions);
    let mut logits = model
        .forward(
            &ids,
            positions.as_ref(),
            Some(&vision),
            &mut cache,
            &mut st,
            Logits::Last,
        )
        .unwrap()
        .to_vec();
    let mut expected = Vec::new();
    for _ in 0..a2.tokens.len() {
        let id = qwen3vl_engine::sampling::argmax(&logits).unwrap();
        expected.push(id);
        let pos = cache.len() as i64 + delta;
        logits = model
            .forward(
                &[id],
                PositionsRef::single(&pos),
                None,
                &mut cache,
                &mut st,
                Logits::Last,
            )
            .unwrap()
            .to_vec();
    }
    assert_eq!(
        a2.tokens, expected,
        "cached second turn differs from full recompute"
    );
    assert_eq!(s.len() + 1, ids.len() + a2.tokens.len());
}

#[test]
fn fixed_seed_reproduces_sampled_answer() {
    let engine = load(&testdata().join("model-tiny-untied"));
    let sampling = |seed| SamplingParams {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.95,
        seed,
        ..Default::default()
    };
    let run = |seed| {
        let mut s = engine.session(256);
        s.generate(
            &[user(0, "Tell me a story.")],
            &[],
            &params(sampling(seed), 16),
            &mut |_| Ok(()),
        )
        .unwrap()
        .tokens
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a, run(8));
}

#[test]
fn refused_requests_leave_the_session_usable() {
    let engine = load(&testdata().join("model-tiny-tied"));
    let mut s = engine.session(40);
    let none = &mut |_: &str| Ok(());
    let greedy = |n| params(SamplingParams::greedy(), n);
    let err = |r: Result<qwen3vl_engine::Generation, qwen3vl_engine::EngineError>| {
        r.unwrap_err().to_string()
    };
    // max_tokens 0
    assert!(err(s.generate(&[user(0, "hi")], &[], &greedy(0), none)).contains("max_tokens"));
    // over the context (prompt 9 tokens + 40 > 40)
    let e = err(s.generate(&[user(0, "hi")], &[], &greedy(40), none));
    assert!(e.contains("context of 40"), "{e}");
    // over the byte limit, refused before tokenization
    let huge = "x".repeat(qwen3vl_engine::session::MAX_PROMPT_BYTES + 1);
    assert_eq!(qwen3vl_engine::session::prompt_byte_limit(1000), 16000);
    let e = err(s.generate(&[user(0, &huge)], &[], &greedy(1), none));
    assert!(e.contains("bytes"), "{e}");
    // out-of-range sampling parameter
    let bad = SamplingParams {
        top_p: 0.0,
        temperature: 1.0,
        ..Default::default()
    };
    assert!(err(s.generate(&[user(0, "hi")], &[], &params(bad, 2), none)).contains("top_p"));
    // images/placeholder mismatch
    assert!(s.generate(&[user(1, "hi")], &[], &greedy(2), none).is_err());
    assert_eq!(s.len(), 0, "a refused request must not touch the cache");
    let g = s.generate(&[user(0, "hi")], &[], &greedy(3), none).unwrap();
    assert_eq!(g.tokens.len(), 3);
}

/// `max_tokens` unset generates as much as fits the context; `Engine::generate` sizes a fresh sequence to
/// the prepared prompt and gives the session's answer.
#[test]
fn unset_max_tokens_fills_the_context() {
    let engine = load(&testdata().join("model-tiny-untied"));
    let msgs = [user(0, "Tell me a story.")];
    let prompt_len = engine
        .processor
        .encode(&msgs, &[], true)
        .unwrap()
        .input_ids
        .len();
    let mut p = params(SamplingParams::greedy(), 1);
    p.max_tokens = None;
    p.extra_eos = vec![];
    let context = prompt_len + 7;
    let g = engine
        .generate(&msgs, vec![], &p, context, &mut |_| Ok(()))
        .unwrap();
    assert!(g.tokens.len() <= 7);
    if g.finish == FinishReason::Length {
        assert_eq!(g.tokens.len(), 7);
    }
    let mut s = engine.session(context);
    let again = s.generate(&msgs, &[], &p, &mut |_| Ok(())).unwrap();
    assert_eq!(again.tokens, g.tokens);
    // A prompt that fills the context leaves no room.
    let e = engine
        .generate(&msgs, vec![], &p, prompt_len, &mut |_| Ok(()))
        .unwrap_err();
    assert!(
        e.to_string().contains(&format!("context of {prompt_len}")),
        "{e}"
    );
}
