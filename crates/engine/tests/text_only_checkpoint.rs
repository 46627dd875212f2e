//! A checkpoint without `preprocessor_config.json` (a text-only export) answers text prompts exactly as the
//! full checkpoint does, and refuses images and videos with an error naming the missing file.

use std::path::{Path, PathBuf};

use qwen3vl_engine::{Engine, EngineOptions, GenerateParams, SamplingParams};
use qwen3vl_model::Precision;
use qwen3vl_processor::{Content, Message, VideoOptions};

fn full() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/model-tiny-tied")
}

/// The tiny checkpoint without its image and video preprocessor configs.
fn text_only() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("qwen3vl-text-only-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(full()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "preprocessor_config.json" || name == "video_preprocessor_config.json" {
            continue;
        }
        std::fs::copy(entry.path(), dir.join(&name)).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Engine {
    let opts = EngineOptions {
        precision: Precision::F32,
        ..Default::default()
    };
    Engine::load(dir, &opts).unwrap()
}

#[test]
fn text_prompts_work_and_images_name_the_missing_file() {
    let dir = text_only();
    let (ours, reference) = (load(&dir), load(&full()));
    let messages = [Message::text("user", "Name three colours.")];
    let params = GenerateParams {
        sampling: SamplingParams::greedy(),
        max_tokens: Some(12),
        stop_strings: vec![],
        extra_eos: vec![],
    };
    let a = ours
        .generate(&messages, vec![], &params, 256, &mut |_| Ok(()))
        .unwrap();
    let b = reference
        .generate(&messages, vec![], &params, 256, &mut |_| Ok(()))
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.tokens.len(), 12);

    let picture = full().join("../model-reference/img_64x96.png");
    let e = ours.load_image(&picture).unwrap_err().to_string();
    assert!(
        e.contains("preprocessor_config.json") && e.contains("text prompts only"),
        "{e}"
    );
    let e = ours
        .load_video(&picture, &VideoOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("preprocessor_config.json"), "{e}");
    // A prompt with an image placeholder is refused by the request path too (no pixels to give it).
    let with_image = [Message::new(
        "user",
        vec![Content::Image, Content::Text("What is it?".into())],
    )];
    assert!(ours
        .generate(&with_image, vec![], &params, 256, &mut |_| Ok(()))
        .is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}
