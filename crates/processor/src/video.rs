//! Video preprocessing, exact to transformers 5.23's `Qwen3VLVideoProcessor` and `Qwen3VLProcessor`
//! (spec 6.6): frame sampling, `smart_resize` with the temporal factor over the whole clip's pixel budget,
//! the per-frame uint8 bicubic antialias resize of images, temporal padding by the last frame, patchify with
//! temporal patch 2, and the `<{t:.1f} seconds>` timestamp of each frame group.
//!
//! Frames are resized as they arrive ([`VideoBuilder::push`]), so a clip never holds more than its resized
//! frames (bounded by the config's `longest_edge` pixel budget) plus one decoded frame.

use crate::patch::normalize_table;
use crate::resize::{resize_rgb, MAX_ASPECT_RATIO};
use crate::{ImageInput, ProcessorError};
use qwen3vl_kernels::Kernels;
use serde_json::Value as Json;

/// `video_preprocessor_config.json` (spec 6.6).
#[derive(Clone, Debug, PartialEq)]
pub struct VideoConfig {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    /// `size.shortest_edge`: least pixels over all sampled frames (t̄·h̄·w̄).
    pub min_pixels: usize,
    /// `size.longest_edge`: most pixels over all sampled frames (t̄·h̄·w̄).
    pub max_pixels: usize,
    /// Frames sampled per second of video.
    pub fps: f64,
    pub min_frames: usize,
    pub max_frames: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
}

impl Default for VideoConfig {
    /// The values of the Qwen3-VL checkpoints' `video_preprocessor_config.json` (fps, min_frames and
    /// max_frames are the class defaults they leave unset).
    fn default() -> Self {
        VideoConfig {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 4096,
            max_pixels: 25165824,
            fps: 2.0,
            min_frames: 4,
            max_frames: 768,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

impl VideoConfig {
    /// Parse `video_preprocessor_config.json`. The geometry, pixel budget and normalization must be present;
    /// `fps`, `min_frames`, `max_frames` and `rescale_factor` fall back to the class defaults like
    /// transformers (the checkpoints leave them unset).
    pub fn from_json(text: &str) -> Result<VideoConfig, ProcessorError> {
        const FILE: &str = "video_preprocessor_config.json";
        let err = |msg: String| ProcessorError::Config {
            file: FILE.into(),
            msg,
        };
        let v: Json =
            serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let d = VideoConfig::default();
        let uint = |key: &str, default: Option<usize>| -> Result<usize, ProcessorError> {
            match v.get(key) {
                None | Some(Json::Null) => {
                    default.ok_or_else(|| err(format!("missing field `{key}`")))
                }
                Some(x) => match x.as_u64() {
                    Some(x) if x > 0 && x <= u32::MAX as u64 => Ok(x as usize),
                    _ => Err(err(format!(
                        "field `{key}` must be a positive integer, not {x}"
                    ))),
                },
            }
        };
        let triple = |key: &str| -> Result<[f64; 3], ProcessorError> {
            let a = v
                .get(key)
                .and_then(Json::as_array)
                .ok_or_else(|| err(format!("missing field `{key}`")))?;
            let f: Vec<f64> = a.iter().filter_map(Json::as_f64).collect();
            match f[..] {
                [x, y, z] if f.iter().all(|x| x.is_finite()) => Ok([x, y, z]),
                _ => Err(err(format!("field `{key}` must hold 3 finite numbers"))),
            }
        };
        let size = v.get("size");
        let pick = |a: &str, b: &str| -> Option<u64> {
            size.and_then(|s| s.get(a))
                .and_then(Json::as_u64)
                .or_else(|| v.get(b).and_then(Json::as_u64))
        };
        let min_pixels = pick("shortest_edge", "min_pixels")
            .ok_or_else(|| err("missing `size.shortest_edge` (or `min_pixels`)".into()))?
            as usize;
        let max_pixels = pick("longest_edge", "max_pixels")
            .ok_or_else(|| err("missing `size.longest_edge` (or `max_pixels`)".into()))?
            as usize;
        if min_pixels > max_pixels || max_pixels == 0 || max_pixels > 1 << 34 {
            return Err(err(format!(
                "size.shortest_edge {min_pixels} / size.longest_edge {max_pixels} are inconsistent"
            )));
        }
        let fps = match v.get("fps") {
            None | Some(Json::Null) => d.fps,
            Some(x) => match x.as_f64() {
                Some(f) if f.is_finite() && f > 0.0 => f,
                _ => {
                    return Err(err(format!(
                        "field `fps` must be a positive number, not {x}"
                    )))
                }
            },
        };
        let image_std = triple("image_std")?;
        if image_std.iter().any(|&s| s <= 0.0) {
            return Err(err("field `image_std` must be positive".into()));
        }
        let rescale_factor = match v.get("rescale_factor").and_then(Json::as_f64) {
            None => d.rescale_factor,
            Some(r) if r > 0.0 && r.is_finite() => r,
            Some(r) => return Err(err(format!("field `rescale_factor` {r} must be positive"))),
        };
        let c = VideoConfig {
            patch_size: uint("patch_size", None)?,
            temporal_patch_size: uint("temporal_patch_size", None)?,
            merge_size: uint("merge_size", None)?,
            min_pixels,
            max_pixels,
            fps,
            min_frames: uint("min_frames", Some(d.min_frames))?,
            max_frames: uint("max_frames", Some(d.max_frames))?,
            image_mean: triple("image_mean")?,
            image_std,
            rescale_factor,
        };
        if c.min_frames > c.max_frames {
            return Err(err(format!(
                "min_frames {} is over max_frames {}",
                c.min_frames, c.max_frames
            )));
        }
        Ok(c)
    }

    /// Side multiple of resized frames: patch_size · merge_size.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }

    /// `sample_frames`: the indices of the frames to keep from a video of `total` frames at `video_fps`
    /// (`num_frames = int(total / video_fps · fps)` clamped to [min_frames, min(max_frames, total)], then
    /// `round(linspace(0, total − 1, num_frames))`, numpy's linspace and round-half-to-even).
    pub fn sample_indices(
        &self,
        total: usize,
        video_fps: f64,
    ) -> Result<Vec<usize>, ProcessorError> {
        if total == 0 {
            return Err(ProcessorError::Video("the video has no frames".into()));
        }
        if !(video_fps.is_finite() && video_fps > 0.0) {
            return Err(ProcessorError::Video(format!(
                "video fps {video_fps} must be a positive number"
            )));
        }
        let n = (total as f64 / video_fps * self.fps) as usize; // Python int(): toward zero
        let n = n.max(self.min_frames).min(self.max_frames).min(total);
        Ok(linspace_round(total - 1, n))
    }
}

/// numpy `linspace(0, stop, n).round().astype(int)`: `i · (stop / (n − 1))`, the last element exactly `stop`.
fn linspace_round(stop: usize, n: usize) -> Vec<usize> {
    if n == 1 {
        return vec![0];
    }
    let step = stop as f64 / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                (i as f64 * step).round_ties_even() as usize
            }
        })
        .collect()
}

/// `smart_resize(num_frames, height, width, temporal_factor, factor, min_pixels, max_pixels)` of
/// `video_processing_qwen3_vl.py`, in f64 like Python: sides under `factor` are scaled up first; the pixel
/// limits apply to t̄·h̄·w̄ with t̄ = round(T / temporal)·temporal, and β uses the raw T.
pub fn smart_resize_video(
    num_frames: usize,
    height: usize,
    width: usize,
    temporal_factor: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize), ProcessorError> {
    if num_frames < temporal_factor {
        return Err(ProcessorError::Video(format!(
            "{num_frames} sampled frame(s); a video needs at least {temporal_factor} (temporal_patch_size)"
        )));
    }
    if height == 0 || width == 0 {
        return Err(ProcessorError::Video(format!(
            "zero-size frames ({width}x{height})"
        )));
    }
    let (mut height, mut width) = (height, width);
    if height < factor || width < factor {
        let scale = (factor as f64 / height as f64).max(factor as f64 / width as f64);
        height = (height as f64 * scale) as usize;
        width = (width as f64 * scale) as usize;
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    let ratio = h.max(w) / h.min(w);
    if ratio > MAX_ASPECT_RATIO {
        return Err(ProcessorError::AspectRatio {
            height,
            width,
            ratio,
        });
    }
    let mut h_bar = (h / f).round_ties_even() as u128 * factor as u128;
    let mut w_bar = (w / f).round_ties_even() as u128 * factor as u128;
    let t_bar = (num_frames as f64 / temporal_factor as f64).round_ties_even() as u128
        * temporal_factor as u128;
    let thw = (num_frames * height * width) as f64;
    if t_bar * h_bar * w_bar > max_pixels as u128 {
        let beta = (thw / max_pixels as f64).sqrt();
        h_bar = (f.max((h / beta / f).floor() * f)) as u128;
        w_bar = (f.max((w / beta / f).floor() * f)) as u128;
    } else if t_bar * h_bar * w_bar < min_pixels as u128 {
        let beta = (min_pixels as f64 / thw).sqrt();
        h_bar = ((h * beta / f).ceil() * f) as u128;
        w_bar = ((w * beta / f).ceil() * f) as u128;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// `_calculate_timestamps`: pad the sampled indices to a multiple of `temporal` with the last one, convert
/// to seconds at `video_fps`, and take the mean of the first and last of each group.
pub fn timestamps(indices: &[usize], video_fps: f64, temporal: usize) -> Vec<f64> {
    let mut idx = indices.to_vec();
    if let Some(&last) = idx.last() {
        while !idx.len().is_multiple_of(temporal) {
            idx.push(last);
        }
    }
    let secs: Vec<f64> = idx.iter().map(|&i| i as f64 / video_fps).collect();
    secs.chunks(temporal)
        .map(|g| (g[0] + g[temporal - 1]) / 2.0)
        .collect()
}

/// One preprocessed video.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInput {
    /// `pixel_values_videos` (grid t·h·w, 3·temporal·patch²) and `video_grid_thw` (t = padded frames / 2).
    pub visual: ImageInput,
    /// Seconds of each frame group (t of them), as written into the prompt.
    pub timestamps: Vec<f64>,
    /// Indices of the sampled frames in the source.
    pub frame_indices: Vec<usize>,
    /// Frames per second of the source.
    pub source_fps: f64,
    /// Frames in the source.
    pub source_frames: usize,
    /// (width, height) of the source frames.
    pub source_size: (u32, u32),
}

impl VideoInput {
    /// The prompt text replacing the template's `<|video_pad|>`: per frame group
    /// `<{t:.1f} seconds><|vision_start|>` + `<|video_pad|>`×(h·w/merge²) + `<|vision_end|>`; returned as
    /// (timestamp text, pad count) per group.
    pub fn groups(&self, merge: usize) -> Vec<(String, usize)> {
        let [_, h, w] = self.visual.grid_thw;
        self.timestamps
            .iter()
            .map(|t| (format!("<{t:.1} seconds>"), h * w / (merge * merge)))
            .collect()
    }
}

/// Builds one video from its sampled frames, resizing each as it arrives.
pub struct VideoBuilder<'a> {
    cfg: &'a VideoConfig,
    kernels: &'a Kernels,
    src: (usize, usize),
    out: (usize, usize),
    frames: Vec<Vec<u8>>,
    expected: usize,
}

impl<'a> VideoBuilder<'a> {
    /// For `n` sampled frames of `width`×`height`: the resized size is fixed now (smart_resize depends only on
    /// n and the frame size), so nothing is decoded before the limits are checked.
    pub fn new(
        cfg: &'a VideoConfig,
        kernels: &'a Kernels,
        n: usize,
        width: usize,
        height: usize,
    ) -> Result<VideoBuilder<'a>, ProcessorError> {
        let out = smart_resize_video(
            n,
            height,
            width,
            cfg.temporal_patch_size,
            cfg.factor(),
            cfg.min_pixels,
            cfg.max_pixels,
        )?;
        Ok(VideoBuilder {
            cfg,
            kernels,
            src: (height, width),
            out,
            frames: Vec::with_capacity(n),
            expected: n,
        })
    }

    /// (height, width) every frame is resized to.
    pub fn resized_size(&self) -> (usize, usize) {
        self.out
    }

    /// Resize and keep the next sampled frame ((h, w, 3) uint8).
    pub fn push(&mut self, rgb: &[u8], width: usize, height: usize) -> Result<(), ProcessorError> {
        if (height, width) != self.src {
            return Err(ProcessorError::Video(format!(
                "frame {} is {width}x{height} but the video's frames are {}x{}",
                self.frames.len(),
                self.src.1,
                self.src.0
            )));
        }
        if self.frames.len() == self.expected {
            return Err(ProcessorError::Video(format!(
                "more than the {} sampled frames were given",
                self.expected
            )));
        }
        let (h, w) = self.src;
        let (rh, rw) = self.out;
        self.frames
            .push(resize_rgb(self.kernels, rgb, h, w, rh, rw)?);
        Ok(())
    }

    /// Pad to a multiple of temporal_patch_size with the last frame, normalize and patchify.
    pub fn finish(
        self,
        frame_indices: Vec<usize>,
        source_fps: f64,
        source_frames: usize,
    ) -> Result<VideoInput, ProcessorError> {
        let c = self.cfg;
        if self.frames.len() != self.expected || frame_indices.len() != self.expected {
            return Err(ProcessorError::Video(format!(
                "{} of {} sampled frames were decoded",
                self.frames.len(),
                self.expected
            )));
        }
        let (rh, rw) = self.out;
        let norm = normalize_table(c.image_mean, c.image_std, c.rescale_factor);
        let pixel_values = patchify_video(
            &self.frames,
            rh,
            rw,
            c.patch_size,
            c.merge_size,
            c.temporal_patch_size,
            &norm,
        );
        let tp = c.temporal_patch_size;
        let grid_t = self.frames.len().div_ceil(tp);
        Ok(VideoInput {
            visual: ImageInput {
                pixel_values,
                grid_thw: [grid_t, rh / c.patch_size, rw / c.patch_size],
            },
            timestamps: timestamps(&frame_indices, source_fps, tp),
            frame_indices,
            source_fps,
            source_frames,
            source_size: (self.src.1 as u32, self.src.0 as u32),
        })
    }
}

/// Patchify resized frames (each (h, w, 3) uint8), the last repeated up to a multiple of `temporal`:
/// rows ordered (t, block_row, block_col, in_row, in_col), each row (c, tt, py, px).
pub fn patchify_video(
    frames: &[Vec<u8>],
    h: usize,
    w: usize,
    patch: usize,
    merge: usize,
    temporal: usize,
    norm: &[[f32; 256]; 3],
) -> Vec<f32> {
    let (gh, gw) = (h / patch, w / patch);
    let gt = frames.len().div_ceil(temporal);
    let pp = patch * patch;
    let mut out = crate::alloc::big_vec(gt * gh * gw * 3 * temporal * pp);
    for g in 0..gt {
        let group: Vec<&[u8]> = (0..temporal)
            .map(|k| frames[(g * temporal + k).min(frames.len() - 1)].as_slice())
            .collect();
        for br in 0..gh / merge {
            for bc in 0..gw / merge {
                for ir in 0..merge {
                    for ic in 0..merge {
                        let (y0, x0) = ((br * merge + ir) * patch, (bc * merge + ic) * patch);
                        for (c, table) in norm.iter().enumerate() {
                            for img in &group {
                                for py in 0..patch {
                                    let start = ((y0 + py) * w + x0) * 3;
                                    out.extend(
                                        img[start..start + patch * 3]
                                            .chunks_exact(3)
                                            .map(|px| table[px[c] as usize]),
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_rounds_half_to_even_like_numpy() {
        // The spec's example: linspace(0, 5, 3) = 0, 2.5, 5 -> 0, 2, 5.
        assert_eq!(linspace_round(5, 3), vec![0, 2, 5]);
        assert_eq!(linspace_round(9, 4), vec![0, 3, 6, 9]);
        assert_eq!(linspace_round(0, 1), vec![0]);
        // 7 frames from 10: steps of 1.5 -> 0, 1.5, 3, 4.5, 6, 7.5, 9.
        assert_eq!(linspace_round(9, 7), vec![0, 2, 3, 4, 6, 8, 9]);
    }

    #[test]
    fn sampling_clamps_to_min_frames_and_total() {
        let c = VideoConfig::default();
        // 16 frames at 8 fps = 2 s -> 4 frames at 2 fps.
        assert_eq!(c.sample_indices(16, 8.0).unwrap(), vec![0, 5, 10, 15]);
        // 3 frames: under min_frames, capped by the total.
        assert_eq!(c.sample_indices(3, 30.0).unwrap(), vec![0, 1, 2]);
        // Long: capped at max_frames.
        let c2 = VideoConfig {
            max_frames: 6,
            ..c.clone()
        };
        assert_eq!(c2.sample_indices(1000, 10.0).unwrap().len(), 6);
        assert!(c.sample_indices(0, 2.0).is_err());
        assert!(c.sample_indices(4, 0.0).is_err());
    }

    #[test]
    fn timestamps_average_each_group_and_pad_with_the_last() {
        assert_eq!(timestamps(&[0, 1, 2, 3], 2.0, 2), vec![0.25, 1.25]);
        assert_eq!(timestamps(&[0, 2, 4], 2.0, 2), vec![0.5, 2.0]);
    }

    #[test]
    fn timestamp_text_rounds_like_python() {
        // Python: f"{0.25:.1f}" = '0.2', f"{0.75:.1f}" = '0.8', f"{1.25:.1f}" = '1.2', f"{0.35:.1f}" = '0.3'
        // (0.35 is 0.34999… in binary), f"{2.45:.1f}" = '2.5' (2.4500000000000001776…).
        for (t, s) in [
            (0.25, "0.2"),
            (0.75, "0.8"),
            (1.25, "1.2"),
            (0.35, "0.3"),
            (2.45, "2.5"),
            (0.05, "0.1"),
        ] {
            assert_eq!(format!("{t:.1}"), s, "{t}");
        }
    }

    #[test]
    fn smart_resize_video_uses_the_temporal_budget() {
        // 4 frames of 360x640 fit the 25M budget: only rounding to 32.
        assert_eq!(
            smart_resize_video(4, 360, 640, 2, 32, 4096, 25165824).unwrap(),
            (352, 640)
        );
        // 768 frames of 720x1280 exceed it: beta = sqrt(768·720·1280/25165824).
        let (h, w) = smart_resize_video(768, 720, 1280, 2, 32, 4096, 25165824).unwrap();
        assert!(768 * h * w <= 25165824, "{h}x{w}");
        // Tiny frames are scaled up first.
        assert_eq!(
            smart_resize_video(2, 8, 16, 2, 32, 4096, 25165824).unwrap(),
            (32, 64)
        );
        assert!(smart_resize_video(1, 64, 64, 2, 32, 4096, 25165824).is_err());
    }
}
