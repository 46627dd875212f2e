//! A checked request's media made ready for the engine: each image and video fetched under the media
//! policy ([`crate::media`]), decoded and preprocessed under the processor's limits, in order. Blocking.

use qwen3vl_processor::{Content, ImageInput, Message, VideoInput, VideoOptions};

use crate::api::{ApiError, ChatMessage, Part};
use crate::{AppState, Ready};

/// The engine's messages and the preprocessed images and videos of their media items, in order.
pub(crate) struct Inputs {
    pub messages: Vec<Message>,
    pub images: Vec<ImageInput>,
    pub videos: Vec<VideoInput>,
}

/// Fetches, decodes and preprocesses the media of `msgs`; `video_frames` caps the frames sampled per
/// video. A part that cannot be fetched or decoded is a 400 naming it (`messages[i].content[j].video_url`).
pub(crate) fn load(
    st: &AppState,
    ready: &Ready,
    msgs: &[ChatMessage],
    video_frames: Option<usize>,
) -> Result<Inputs, ApiError> {
    let mut images = Vec::new();
    let mut videos = Vec::new();
    let mut messages = Vec::with_capacity(msgs.len());
    let p = &ready.engine.processor;
    let undecodable = |param: &str, what: &str, e: &dyn std::fmt::Display| {
        ApiError::invalid(
            param,
            format!("{param}: the {what} could not be decoded: {e}"),
        )
    };
    for m in msgs {
        let mut content = Vec::with_capacity(m.parts.len());
        for part in &m.parts {
            match part {
                Part::Text(t) => content.push(Content::Text(t.clone())),
                Part::Image { url, param } => {
                    let bytes = crate::media::fetch(url, param, &st.opts.media)?;
                    let img = p
                        .load_image_bytes(&bytes)
                        .and_then(|img| p.preprocess_image(&img))
                        .map_err(|e| undecodable(param, "image", &e))?;
                    images.push(img);
                    content.push(Content::Image);
                }
                Part::Video { url, param } => {
                    let bytes = crate::media::fetch(url, param, &st.opts.media)?;
                    let opts = VideoOptions {
                        source_fps: None,
                        max_frames: video_frames,
                    };
                    let video = ready
                        .engine
                        .load_video_bytes(&bytes, &opts)
                        .map_err(|e| undecodable(param, "video", &e))?;
                    videos.push(video);
                    content.push(Content::Video);
                }
            }
        }
        messages.push(Message::new(&m.role, content));
    }
    Ok(Inputs {
        messages,
        images,
        videos,
    })
}
