//! Bad video input is refused with a one-line error naming the problem, before any frame is decoded where
//! the container tells (RELIABILITY 5): truncated and non-video files, zero frames, a huge canvas or frame
//! count claimed in the header, a frame outside its canvas, a frame directory with mixed sizes or none.

use qwen3vl_processor::frames::probe_bytes;
use qwen3vl_processor::{Processor, VideoLimits, VideoOptions};
use std::path::{Path, PathBuf};

fn processor() -> &'static Processor {
    static P: std::sync::OnceLock<Processor> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/processor/checkpoint");
        Processor::from_dir(&dir).unwrap()
    })
}

fn clip(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata/video/clips")
            .join(name),
    )
    .unwrap()
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("qwen3vl-video-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn err_of(bytes: &[u8]) -> String {
    let e = processor()
        .load_video_bytes(bytes, &VideoOptions::default())
        .unwrap_err()
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    e
}

/// A GIF: header, logical screen of w×h (no global palette), then `body`.
fn gif(w: u16, h: u16, body: &[u8]) -> Vec<u8> {
    let mut b = b"GIF89a".to_vec();
    b.extend_from_slice(&w.to_le_bytes());
    b.extend_from_slice(&h.to_le_bytes());
    b.extend_from_slice(&[0, 0, 0]);
    b.extend_from_slice(body);
    b
}

/// One image block at (x, y) of w×h with a 2-entry local palette and a minimal LZW stream.
fn frame(x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut b = vec![0x2C];
    for v in [x, y, w, h] {
        b.extend_from_slice(&v.to_le_bytes());
    }
    b.push(0x80); // local palette of 2 entries
    b.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    b.extend_from_slice(&[2, 2, 0x4C, 0x01, 0]); // min code size 2, one sub-block, terminator
    b
}

#[test]
fn truncated_and_non_video_files() {
    let g = clip("gif_short_3f.gif");
    let e = err_of(&g[..g.len() / 2]);
    assert!(e.contains("GIF") && e.contains("truncated"), "{e}");
    let e = err_of(b"just some text, not a video");
    assert!(e.contains("not a supported video"), "{e}");
    let e = err_of(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]);
    assert!(e.contains("not a supported video"), "{e}");
    assert!(err_of(&[]).contains("empty file"));
    let w = clip("webp_6f.webp");
    let e = err_of(&w[..w.len() - 100]);
    assert!(e.contains("WEBP") && e.contains("truncated"), "{e}");
    let a = clip("apng_8f.png");
    let e = err_of(&a[..a.len() / 3]);
    assert!(e.contains("APNG") && e.contains("truncated"), "{e}");
    // A RIFF header whose size field is smaller than its own header.
    let e = err_of(b"RIFF\x02\0\0\0WEBPVP8X");
    assert!(e.contains("WEBP"), "{e}");
    // A block type no GIF has.
    let e = err_of(&gif(8, 8, &[0x99]));
    assert!(e.contains("corrupt"), "{e}");
}

#[test]
fn zero_frames() {
    let e = err_of(&gif(8, 8, &[0x3B]));
    assert!(e.contains("no frames"), "{e}");
    let d = tmpdir("empty");
    std::fs::write(d.join("notes.txt"), "no frames here").unwrap();
    let e = processor()
        .load_video(&d, &VideoOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("no frames"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn huge_claims_are_refused_before_decoding() {
    // A 60000x60000 canvas in a 20-byte GIF.
    let e = err_of(&gif(60000, 60000, &frame(0, 0, 60000, 60000)));
    assert!(e.contains("60000x60000") && e.contains("limit"), "{e}");
    // A frame outside its canvas.
    let e = err_of(&gif(16, 16, &[frame(8, 8, 16, 16), vec![0x3B]].concat()));
    assert!(e.contains("frame 0") && e.contains("canvas"), "{e}");
    // More frames than the limit allows: counted from the blocks, nothing decoded.
    let many: Vec<u8> = (0..10).flat_map(|_| frame(0, 0, 4, 4)).collect();
    let lim = VideoLimits {
        max_source_frames: 5,
        ..VideoLimits::default()
    };
    let e = probe_bytes(&gif(4, 4, &many), &lim)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 5 frames"), "{e}");
    // An APNG whose acTL claims 2^31 frames.
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let chunk = |kind: &[u8], body: &[u8], out: &mut Vec<u8>| {
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&[0; 4]);
    };
    chunk(b"IHDR", &[0, 0, 0, 8, 0, 0, 0, 8, 8, 2, 0, 0, 0], &mut png);
    chunk(b"acTL", &[0x80, 0, 0, 0, 0, 0, 0, 0], &mut png);
    let e = probe_bytes(&png, &VideoLimits::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("acTL claims 2147483648 frames"), "{e}");
    // A canvas claimed larger than the limits in an animated WebP header.
    let mut webp = b"RIFF\0\0\0\0WEBPVP8X\x0a\0\0\0".to_vec();
    webp.extend_from_slice(&[2, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]);
    let n = (webp.len() - 8) as u32;
    webp[4..8].copy_from_slice(&n.to_le_bytes());
    let e = err_of(&webp);
    assert!(e.contains("16777216x16777216"), "{e}");
}

#[test]
fn frame_directory_with_mixed_sizes() {
    let d = tmpdir("mixed");
    image::RgbImage::new(40, 30)
        .save(d.join("frame_000.png"))
        .unwrap();
    image::RgbImage::new(40, 30)
        .save(d.join("frame_001.png"))
        .unwrap();
    image::RgbImage::new(41, 30)
        .save(d.join("frame_002.png"))
        .unwrap();
    let e = processor()
        .load_video(&d, &VideoOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("frame_002.png") && e.contains("41x30") && e.contains("one size"),
        "{e}"
    );
    // A frame that is not an image.
    std::fs::write(d.join("frame_002.png"), b"garbage").unwrap();
    let e = processor()
        .load_video(&d, &VideoOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("frame_002.png"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn options_are_range_checked() {
    let p = processor();
    let g = clip("gif_short_3f.gif");
    for (fps, max) in [(Some(0.0), None), (Some(f64::NAN), None), (None, Some(0))] {
        let e = p
            .load_video_bytes(
                &g,
                &VideoOptions {
                    source_fps: fps,
                    max_frames: max,
                },
            )
            .unwrap_err();
        assert!(e.to_string().starts_with("video: "), "{e}");
    }
    // One frame cannot fill a temporal patch of 2.
    let e = p
        .load_video_bytes(
            &g,
            &VideoOptions {
                source_fps: None,
                max_frames: Some(1),
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
}
