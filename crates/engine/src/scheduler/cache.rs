//! The scheduler's caches: token keys for prefix matching (image and video tokens keyed by content hash)
//! and the vision features of recently seen images and videos.

use std::sync::Arc;

use qwen3vl_model::{Model, VisionEncoding, VisionInput, VisionOutput};

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

/// The features of one sequence's images (in order), each image taken from the vision cache by content
/// hash or encoded alone and added to it (least recently used dropped beyond `cap` bytes; `cap` 0: no
/// cache). Images are independent in the vision tower (attention within each image), so encoding them one
/// at a time gives the same features. The encoding advances a few blocks per call ([`VisionJob::advance`]),
/// so that a scheduler runs it between decode steps instead of stalling the running sequences for the
/// whole tower.
pub(super) struct VisionJob {
    /// Each image's features, once known.
    parts: Vec<Option<Arc<VisionOutput>>>,
    /// (image index, its encoding in progress)
    current: Option<(usize, VisionEncoding)>,
    /// Images that came from the cache.
    hits: usize,
    /// Calls to `advance` so far.
    pub(super) calls: usize,
}

impl VisionJob {
    /// Looks every image up in `cache` (hits become the most recently used).
    pub(super) fn new(
        images: &[VisionInput],
        cache: &mut Vec<(u64, Arc<VisionOutput>)>,
        cap: usize,
    ) -> VisionJob {
        let mut hits = 0;
        let parts = images
            .iter()
            .map(|im| {
                if cap == 0 {
                    return None;
                }
                let h = content_hash(im);
                let i = cache.iter().position(|(k, _)| *k == h)?;
                hits += 1;
                let e = cache.remove(i);
                cache.push(e.clone());
                Some(e.1)
            })
            .collect();
        VisionJob {
            parts,
            current: None,
            hits,
            calls: 0,
        }
    }

    /// Runs up to `blocks` vision blocks (at least one when any image is left to encode; `usize::MAX`: to
    /// the end). Returns the concatenated features and how many images came from the cache once every
    /// image is done.
    pub(super) fn advance(
        &mut self,
        model: &Model,
        images: &[VisionInput],
        cache: &mut Vec<(u64, Arc<VisionOutput>)>,
        cap: usize,
        blocks: usize,
    ) -> Result<Option<(VisionOutput, usize)>, EngineError> {
        self.calls += 1;
        let mut left = blocks.max(1);
        loop {
            if self.current.is_none() {
                let Some(next) = self.parts.iter().position(Option::is_none) else {
                    let parts: Vec<Arc<VisionOutput>> =
                        self.parts.iter().flatten().cloned().collect();
                    return Ok(Some((concat(&parts), self.hits)));
                };
                let e = model.begin_images(std::slice::from_ref(&images[next]))?;
                self.current = Some((next, e));
            }
            let (idx, e) = self.current.as_mut().expect("set above");
            let idx = *idx;
            let mut done = e.blocks_done() >= model.vision_blocks();
            while !done && left > 0 {
                done = model.encode_step(e)?;
                left -= 1;
            }
            if !done {
                return Ok(None);
            }
            let (_, e) = self.current.take().expect("set above");
            let v = Arc::new(model.encode_finish(e)?);
            if cap > 0 && vision_bytes(&v) <= cap {
                cache.push((content_hash(&images[idx]), v.clone()));
                while cache.iter().map(|(_, v)| vision_bytes(v)).sum::<usize>() > cap {
                    cache.remove(0);
                }
            }
            self.parts[idx] = Some(v);
            if left == 0 && self.parts.iter().any(Option::is_none) {
                return Ok(None);
            }
        }
    }
}

/// The features of several images, concatenated in order (rows of `embeds` and of each DeepStack level).
fn concat(parts: &[Arc<VisionOutput>]) -> VisionOutput {
    if let [one] = parts {
        return (**one).clone();
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
    out
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
