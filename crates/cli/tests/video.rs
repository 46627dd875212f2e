//! `qwen3vl generate --video / --video-fps / --max-frames / --draw-boxes` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
}

fn generate(extra: &[&str]) -> Output {
    let model = testdata().join("model-tiny-tied");
    let mut args = vec![
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "What happens?",
        "--max-tokens",
        "2",
        "--temperature",
        "0",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .args(&args)
        .env_remove("QWEN3VL_SIMD")
        .output()
        .expect("run qwen3vl")
}

fn one_line_error(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.starts_with("error:") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "{needle:?} not in {err}");
}

#[test]
fn generate_with_videos_and_boxes() {
    let clips = testdata().join("video/clips");
    let gif = clips.join("gif_long_40f.gif");
    let dir = clips.join("dir_5f");
    let img = testdata().join("processor/images/rgb_20x30.png");
    let out = std::env::temp_dir().join(format!("qwen3vl-boxes-{}.png", std::process::id()));
    let o = generate(&[
        "--image",
        img.to_str().unwrap(),
        "--video",
        gif.to_str().unwrap(),
        "--max-frames",
        "5",
        "--video",
        dir.to_str().unwrap(),
        "--video-fps",
        "2",
        "--draw-boxes",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // Visual tokens under the tiny checkpoint's pixel limits: the image 6, the GIF capped at 5 frames
    // 3 groups of 1, the directory 3 groups of 4.
    assert!(err.contains("(21 image tokens)"), "{err}");
    assert!(err.contains("drawn on"), "{err}");
    let drawn = image::open(&out).expect("the PNG is written");
    assert_eq!((drawn.width(), drawn.height()), (30, 20));
    let _ = std::fs::remove_file(&out);
}

#[test]
fn bad_video_options_are_one_line_errors() {
    let gif = testdata().join("video/clips/gif_short_3f.gif");
    one_line_error(
        &generate(&["--video", "/nonexistent/clip.gif"]),
        "/nonexistent/clip.gif",
    );
    one_line_error(
        &generate(&["--video", gif.to_str().unwrap(), "--video-fps", "0"]),
        "--video-fps",
    );
    one_line_error(
        &generate(&["--video", gif.to_str().unwrap(), "--max-frames", "0"]),
        "--max-frames",
    );
    one_line_error(&generate(&["--draw-boxes", "/tmp/x.png"]), "--image");
    let not_video = testdata().join("processor/checkpoint/config.json");
    one_line_error(
        &generate(&["--video", not_video.to_str().unwrap()]),
        "not a supported video",
    );
}
