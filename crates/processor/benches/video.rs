//! An 8-second 640×360 clip at 10 fps (80 frames; 16 sampled at 2 fps), one thread:
//! - `gif_load`: probe + decode every frame of an animated GIF (GIF frames depend on each other) + resize
//!   and patchify the 16 sampled ones (what `--video clip.gif` costs before the vision tower);
//! - `frames_preprocess`: the same from decoded frames (sampling, resize, normalize, patchify only).
//!
//!     cargo bench -p qwen3vl-processor --bench video

use criterion::{criterion_group, criterion_main, Criterion};
use image::codecs::gif::{GifEncoder, Repeat};
use image::{Delay, Frame, Rgb, RgbImage, Rgba, RgbaImage};
use qwen3vl_processor::{Processor, VideoOptions};
use std::hint::black_box;
use std::path::PathBuf;

fn clip() -> Vec<RgbImage> {
    (0..80u32)
        .map(|t| {
            RgbImage::from_fn(640, 360, |x, y| {
                let v = (x + 3 * t) ^ (y + t);
                Rgb([(v * 7) as u8, (x / 3 + t) as u8, (y / 2) as u8])
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/processor");
    let p = Processor::from_dir(&data.join("checkpoint")).unwrap();
    let frames = clip();
    let mut gif = Vec::new();
    {
        let mut enc = GifEncoder::new_with_speed(&mut gif, 30);
        enc.set_repeat(Repeat::Infinite).unwrap();
        for f in &frames {
            let rgba = RgbaImage::from_fn(640, 360, |x, y| {
                let q = f.get_pixel(x, y).0;
                Rgba([q[0], q[1], q[2], 255])
            });
            enc.encode_frame(Frame::from_parts(
                rgba,
                0,
                0,
                Delay::from_numer_denom_ms(100, 1),
            ))
            .unwrap();
        }
    }
    let opts = VideoOptions::default();
    let v = p.load_video_bytes(&gif, &opts).unwrap();
    assert_eq!(v.frame_indices.len(), 16);
    let mut g = c.benchmark_group("video_8s_640x360_10fps");
    g.sample_size(10);
    g.bench_function("gif_load", |b| {
        b.iter(|| black_box(p.load_video_bytes(black_box(&gif), &opts).unwrap()))
    });
    g.bench_function("frames_preprocess", |b| {
        b.iter(|| {
            black_box(
                p.preprocess_video_frames(black_box(&frames), 10.0, &opts)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
