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
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
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

/// `qwen3vl chat` with `extra` options, `input` on standard input.
fn chat(extra: &[&str], input: &str) -> Output {
    use std::io::Write as _;
    let model = testdata().join("model-tiny-tied");
    let mut args = vec![
        "chat",
        "--model",
        model.to_str().unwrap(),
        "--max-tokens",
        "2",
        "--temperature",
        "0",
    ];
    args.extend_from_slice(extra);
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3vl"))
        .env(
            "QWEN3VL_CACHE",
            std::env::temp_dir().join("qwen3vl-cli-tests-cache"),
        )
        .args(&args)
        .env_remove("QWEN3VL_SIMD")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run qwen3vl chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Prefill token counts of the answered turns, from the summaries on stderr.
fn prefills(err: &str) -> Vec<usize> {
    err.lines()
        .filter_map(|l| l.split("prefill ").nth(1))
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect()
}

#[test]
fn chat_with_videos() {
    let clips = testdata().join("video/clips");
    let gif = clips.join("gif_long_40f.gif");
    let dir = clips.join("dir_5f");
    // --video goes with the first message; /video attaches to the next one; a bad /video is reported and
    // the chat goes on; the third turn has no video.
    let input = format!(
        "What happens?\n/video {}\n/video /nonexistent/clip.gif\nAnd here?\nThanks\n",
        dir.display()
    );
    let o = chat(
        &[
            "--video",
            gif.to_str().unwrap(),
            "--max-frames",
            "5",
            "--video-fps",
            "2",
        ],
        &input,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    // The GIF capped at 5 frames: 3 groups of 1 token; the directory (5 frames at 2 fps): 3 groups of 4.
    assert!(
        err.contains(
            "attached to the first message: 5 of 40 frames sampled, 3 frame groups, 3 video tokens"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "attached to the next message: 5 of 5 frames sampled, 3 frame groups, 12 video tokens"
        ),
        "{err}"
    );
    assert!(err.contains("/nonexistent/clip.gif"), "{err}");
    assert_eq!(err.matches("finish:").count(), 3, "{err}");
    let p = prefills(&err);
    assert_eq!(p.len(), 3, "{err}");
    // Each video turn carries its frame groups: per group `<t seconds>` text, vision start/end and the pads.
    let plain = p[2];
    assert!(p[0] > plain + 3 + 3 * 2, "{p:?}");
    assert!(p[1] > plain + 12 + 3 * 2, "{p:?}");
}

#[test]
fn chat_refuses_bad_video_options_before_loading() {
    let gif = testdata().join("video/clips/gif_short_3f.gif");
    one_line_error(
        &chat(&["--video", gif.to_str().unwrap(), "--max-frames", "0"], ""),
        "--max-frames",
    );
    one_line_error(
        &chat(&["--video", "/nonexistent/clip.mp4"], ""),
        "/nonexistent/clip.mp4",
    );
}

/// With the `ffmpeg` feature: an MP4 in generate and chat.
#[cfg(feature = "ffmpeg")]
#[test]
fn mp4_in_generate_and_chat() {
    let mp4 = testdata().join("video/clips/ffmpeg/mp4_h264_98x54_40f.mp4");
    let o = generate(&["--video", mp4.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let o = chat(&["--video", mp4.to_str().unwrap()], "What happens?\n");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // 40 frames at 10 fps: 8 sampled, 4 groups.
    assert!(
        err.contains("8 of 40 frames sampled, 4 frame groups"),
        "{err}"
    );
}
