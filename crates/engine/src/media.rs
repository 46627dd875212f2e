//! Images and videos of one prompt, in the order the vision tower must see them.

use qwen3vl_processor::{Content, ImageInput, Message, VideoInput};
use std::borrow::Cow;

/// The vision tower's inputs in prompt order: the messages' image and video items interleaved as they
/// appear, so that the tower's rows land on the `<|image_pad|>` / `<|video_pad|>` tokens in token order
/// (transformers scatters images and videos separately and interleaves DeepStack by position: the same).
/// Without videos this borrows `images`. Extra or missing inputs are left to the processor's count check.
pub fn visual_inputs_in_prompt_order<'a>(
    messages: &[Message],
    images: &'a [ImageInput],
    videos: &[VideoInput],
) -> Cow<'a, [ImageInput]> {
    if videos.is_empty() {
        return Cow::Borrowed(images);
    }
    let (mut i, mut v) = (images.iter(), videos.iter());
    let mut out = Vec::with_capacity(images.len() + videos.len());
    for c in messages.iter().flat_map(|m| &m.content) {
        match c {
            Content::Image => out.extend(i.next().cloned()),
            Content::Video => out.extend(v.next().map(|x| x.visual.clone())),
            Content::Text(_) => {}
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(t: usize) -> ImageInput {
        ImageInput {
            pixel_values: vec![t as f32],
            grid_thw: [t, 2, 2],
        }
    }

    #[test]
    fn videos_and_images_interleave_in_prompt_order() {
        let vid = |t| VideoInput {
            visual: img(t),
            timestamps: vec![],
            frame_indices: vec![],
            source_fps: 2.0,
            source_frames: 4,
            source_size: (32, 32),
        };
        let msgs = [Message::new(
            "user",
            vec![
                Content::Video,
                Content::Text("a".into()),
                Content::Image,
                Content::Video,
            ],
        )];
        let images = [img(1)];
        let got = visual_inputs_in_prompt_order(&msgs, &images, &[vid(5), vid(7)]);
        let ts: Vec<usize> = got.iter().map(|x| x.grid_thw[0]).collect();
        assert_eq!(ts, vec![5, 1, 7]);
        assert!(matches!(
            visual_inputs_in_prompt_order(&msgs, &images, &[]),
            Cow::Borrowed(_)
        ));
    }
}
