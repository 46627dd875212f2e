//! Request budgets computed with checked arithmetic, checkpoint ids checked at load, and errors that say
//! each fact once.

use qwen3vl_engine::session::{Engine, EngineError, EngineOptions, GenerateParams};
use qwen3vl_engine::GenerationConfig;
use qwen3vl_processor::Message;
use std::path::PathBuf;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied")
}

/// The error and its chain of causes, as anyhow's `{:#}` prints them.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s.push_str(": ");
        s.push_str(&x.to_string());
        c = x.source();
    }
    s
}

#[test]
fn max_tokens_near_usize_max_is_refused_not_wrapped() {
    let engine = Engine::load(&tiny(), &EngineOptions::default()).unwrap();
    let mut session = engine.session(64);
    let params = GenerateParams {
        sampling: engine.generation_config.sampling_params(0),
        max_tokens: Some(usize::MAX),
        stop_strings: Vec::new(),
        extra_eos: Vec::new(),
    };
    let e = session
        .generate(
            &[Message::text("user", "hi")],
            &[],
            &params,
            &mut |_| Ok(()),
        )
        .unwrap_err();
    assert!(matches!(e, EngineError::Input(_)), "{e:?}");
    let s = e.to_string();
    assert!(s.contains("over the context of 64 tokens"), "{s}");
    assert!(session.is_empty(), "nothing may run");
}

#[test]
fn generation_config_ids_outside_the_vocabulary_are_refused_at_load() {
    let dir = std::env::temp_dir().join(format!("qwen3vl-engine-eos-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(tiny()).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.join(f.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [151645, 1000000000]}"#,
    )
    .unwrap();
    let r = Engine::load(&dir, &EngineOptions::default());
    let _ = std::fs::remove_dir_all(&dir);
    let e = r.err().expect("an eos id of 10^9 must be refused");
    let s = chain(&e);
    assert!(
        s.contains("generation_config.json: field eos_token_id: token id 1000000000"),
        "{s}"
    );
    // One line, each fact once (a #[error("{0}")] + #[from] wrapper printed its cause twice).
    assert_eq!(s.matches("1000000000").count(), 1, "{s}");
}

#[test]
fn wrapped_errors_are_transparent() {
    let g = GenerationConfig::from_json("[]", "g.json").unwrap_err();
    let e = EngineError::from(g);
    assert_eq!(chain(&e), "g.json: the top level must be a JSON object");
}
