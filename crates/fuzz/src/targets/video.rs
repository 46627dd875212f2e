//! `video`: animated GIF, WebP and APNG bytes through `Processor::load_video_bytes` (probe, sample, decode
//! the sampled frames, resize, patchify) under the default video limits, then a prompt with the video
//! encoded. The build without the `ffmpeg` feature: other containers are refused by the probe.

use qwen3vl_processor::{Content, Message, VideoOptions};

use super::processor;

pub fn seeds() -> Vec<Vec<u8>> {
    vec![
        include_bytes!("../../../../testdata/video/clips/gif_short_3f.gif").to_vec(),
        include_bytes!("../../../../testdata/video/clips/gif_33x47_10f.gif").to_vec(),
        include_bytes!("../../../../testdata/video/clips/webp_6f.webp").to_vec(),
        include_bytes!("../../../../testdata/video/clips/apng_8f.png").to_vec(),
    ]
}

pub fn run(b: &[u8]) -> bool {
    let p = processor();
    let Ok(v) = p.load_video_bytes(b, &VideoOptions::default()) else {
        return false;
    };
    let msgs = [Message::new(
        "user",
        vec![Content::Video, Content::Text("What happens?".into())],
    )];
    p.encode_media(&msgs, &[], &[v], true).is_ok()
}
