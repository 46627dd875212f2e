//! The scheduler's caches: token keys for prefix matching (image and video tokens keyed by content hash)
//! and the vision features of recently seen images and videos.

use std::sync::Arc;

use qwen3vl_model::{Model, VisionInput, VisionOutput};

use crate::session::EngineError;

/// Key of each token for prefix matching: the id for text; for visual tokens (`visual_ids`: the image and
/// video placeholders) the content hash of the image or video they stand for (and the token's index among
/// the visual tokens) with the top bit set, so the same placeholders of different media differ. `vision`
/// holds the images and videos in prompt order, as their tokens appear.
pub(super) fn token_keys(
    tokens: &[u32],
    visual_ids: [u32; 2],
    merge2: usize,
    vision: &[VisionInput],
) -> Vec<u64> {
    let hashes: Vec<u64> = vision.iter().map(content_hash).collect();
    let mut img = 0usize;
    tokens
        .iter()
        .map(|&t| {
            if visual_ids.contains(&t) {
                // Rows of image j follow each other; hash + global row index is unique enough per image.
                let h = hashes
                    .get(img_of(img, merge2, vision))
                    .copied()
                    .unwrap_or(0);
                img += 1;
                (1 << 63) | (h.wrapping_add(img as u64) & !(1 << 63))
            } else {
                t as u64
            }
        })
        .collect()
}

/// Which image or video the `n`-th visual token belongs to (t·h·w/merge² tokens each).
fn img_of(n: usize, merge2: usize, vision: &[VisionInput]) -> usize {
    let mut left = n;
    for (j, v) in vision.iter().enumerate() {
        let k = v.grid_thw.iter().product::<usize>() / merge2.max(1);
        if left < k {
            return j;
        }
        left -= k;
    }
    vision.len()
}

/// FNV-1a over the grid and the pixel bits.
fn content_hash(v: &VisionInput) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        h ^= x;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    v.grid_thw.iter().for_each(|&g| eat(g as u64));
    v.pixel_values.iter().for_each(|p| eat(p.to_bits() as u64));
    h
}

/// Bytes of a vision output.
fn vision_bytes(v: &VisionOutput) -> usize {
    4 * (v.embeds.len() + v.deepstack.iter().map(Vec::len).sum::<usize>())
}

/// The features of `images` (in order), each image taken from `cache` by content hash or encoded alone
/// and added to it (least recently used dropped beyond `cap` bytes). Images are independent in the vision
/// tower (attention within each image), so encoding them one at a time gives the same features. Returns
/// the concatenated features and how many images came from the cache.
pub(super) fn encode_cached(
    model: &Model,
    images: &[VisionInput],
    cache: &mut Vec<(u64, Arc<VisionOutput>)>,
    cap: usize,
) -> Result<(VisionOutput, usize), EngineError> {
    if cap == 0 {
        return Ok((model.encode_images(images)?, 0));
    }
    let mut parts = Vec::with_capacity(images.len());
    let mut hits = 0;
    for im in images {
        let h = content_hash(im);
        let part = match cache.iter().position(|(k, _)| *k == h) {
            Some(i) => {
                hits += 1;
                let e = cache.remove(i);
                cache.push(e.clone());
                e.1
            }
            None => {
                let v = Arc::new(model.encode_images(std::slice::from_ref(im))?);
                if vision_bytes(&v) <= cap {
                    cache.push((h, v.clone()));
                    while cache.iter().map(|(_, v)| vision_bytes(v)).sum::<usize>() > cap {
                        cache.remove(0);
                    }
                }
                v
            }
        };
        parts.push(part);
    }
    if parts.len() == 1 {
        return Ok(((*parts[0]).clone(), hits));
    }
    let mut out = VisionOutput {
        embeds: parts
            .iter()
            .flat_map(|p| p.embeds.iter().copied())
            .collect(),
        deepstack: Vec::new(),
    };
    let levels = parts.first().map_or(0, |p| p.deepstack.len());
    for l in 0..levels {
        out.deepstack.push(
            parts
                .iter()
                .flat_map(|p| p.deepstack[l].iter().copied())
                .collect(),
        );
    }
    Ok((out, hits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tokens_are_keyed_by_content() {
        let im = |x: f32| VisionInput {
            pixel_values: vec![x; 16 * 4],
            grid_thw: [1, 4, 4],
        };
        let toks = [1u32, 9, 9, 9, 9, 2];
        let a = token_keys(&toks, [9, 8], 4, &[im(0.5)]);
        let b = token_keys(&toks, [9, 8], 4, &[im(0.25)]);
        assert_eq!(a[0], 1);
        assert_eq!(a[5], 2);
        assert_eq!(a, token_keys(&toks, [9, 8], 4, &[im(0.5)]));
        assert_ne!(a[1..5], b[1..5]);
        assert!(a[1..5].iter().all(|k| k >> 63 == 1));
        assert_eq!(img_of(3, 4, &[im(0.5), im(0.5)]), 0);
        assert_eq!(img_of(4, 4, &[im(0.5), im(0.5)]), 1);
    }

    #[test]
    fn video_tokens_are_keyed_by_content_in_prompt_order() {
        // A video of 2 frame groups (t = 2, 4 tokens each) then an image: video pads are 8, image pads 9.
        let vid = |x: f32| VisionInput {
            pixel_values: vec![x; 32 * 4],
            grid_thw: [2, 4, 4],
        };
        let im = VisionInput {
            pixel_values: vec![0.5; 16 * 4],
            grid_thw: [1, 4, 4],
        };
        let mut toks = vec![1u32];
        toks.extend([8; 4]);
        toks.push(3);
        toks.extend([8; 4]);
        toks.extend([9; 4]);
        let a = token_keys(&toks, [9, 8], 4, &[vid(0.5), im.clone()]);
        let b = token_keys(&toks, [9, 8], 4, &[vid(0.25), im.clone()]);
        assert_eq!((a[0], a[5]), (1, 3));
        assert!(a[1..5].iter().chain(&a[6..]).all(|k| k >> 63 == 1));
        // Another video: its tokens differ, the text before it does not.
        assert_eq!(a[0], b[0]);
        assert_ne!(a[1..5], b[1..5]);
        assert_ne!(a[6..10], b[6..10]);
        // The image after it is the same image: keyed the same either way.
        assert_eq!(a[10..], b[10..]);
        // Each of the video's rows has its own key (no two equal).
        let mut rows: Vec<u64> = a[1..5].iter().chain(&a[6..10]).copied().collect();
        rows.sort_unstable();
        rows.dedup();
        assert_eq!(rows.len(), 8);
        assert_eq!(img_of(7, 4, &[vid(0.5), im]), 0);
    }
}
