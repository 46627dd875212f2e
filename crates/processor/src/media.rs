//! The processor's video entry points: load a video (file or frame directory) under limits, preprocess
//! in-memory frames, and encode a prompt holding images and videos (transformers 5.23's
//! `Qwen3VLProcessor.replace_video_token`: the template's `<|video_pad|>` becomes, per frame group,
//! `<{t:.1f} seconds><|vision_start|>` + pads + `<|vision_end|>`, inside the template's own wrapper).

use crate::chat::{self, Content, Message};
use crate::frames::{self, VideoLimits, VideoProbe};
use crate::video::{VideoBuilder, VideoConfig, VideoInput};
use crate::{get_rope_index_media, ImageInput, ProcessorError, Prompt, RgbImage};
use std::path::Path;

/// Per-request video options.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VideoOptions {
    /// Frames per second of the source: required timing for a frame directory, an override for files.
    /// Without it a directory is taken at 24 fps (transformers' default when a video has no metadata).
    pub source_fps: Option<f64>,
    /// Cap on sampled frames (lowers the config's `max_frames`; `min_frames` follows if above it).
    pub max_frames: Option<usize>,
}

/// transformers' fps when a video carries none.
pub const DEFAULT_SOURCE_FPS: f64 = 24.0;

impl crate::Processor {
    pub fn video_config(&self) -> &VideoConfig {
        &self.video
    }

    pub fn video_limits(&self) -> &VideoLimits {
        &self.video_limits
    }

    /// Use these video limits.
    pub fn with_video_limits(mut self, limits: VideoLimits) -> crate::Processor {
        self.video_limits = limits;
        self
    }

    fn video_config_for(&self, opts: &VideoOptions) -> Result<VideoConfig, ProcessorError> {
        // A checkpoint without preprocessor_config.json takes text only, videos included.
        self.image_config()?;
        let mut c = self.video.clone();
        if let Some(m) = opts.max_frames {
            if m == 0 {
                return Err(ProcessorError::Video(
                    "max_frames must be at least 1".into(),
                ));
            }
            c.max_frames = c.max_frames.min(m);
            c.min_frames = c.min_frames.min(c.max_frames);
        }
        if let Some(f) = opts.source_fps {
            if !(f.is_finite() && f > 0.0 && f <= 1000.0) {
                return Err(ProcessorError::Video(format!(
                    "video fps {f} must be a number in (0, 1000]"
                )));
            }
        }
        Ok(c)
    }

    /// Read a video: an animated GIF / WebP / APNG file, or a directory of frames (sorted by name). The
    /// source is probed first (frame count, every frame's extent, the sampled count against the pixel
    /// budget); then only the sampled frames are kept, each resized as it is decoded.
    pub fn load_video(
        &self,
        path: &Path,
        opts: &VideoOptions,
    ) -> Result<VideoInput, ProcessorError> {
        let named = |e: ProcessorError| match e {
            ProcessorError::Video(m) if !m.starts_with(&path.display().to_string()) => {
                ProcessorError::Video(format!("{}: {m}", path.display()))
            }
            other => other,
        };
        let cfg = self.video_config_for(opts)?;
        let lim = &self.video_limits;
        if path.is_dir() {
            let (probe, files) = frames::probe_dir(path, lim)?;
            let fps = opts.source_fps.unwrap_or(DEFAULT_SOURCE_FPS);
            let (indices, mut b) = self.start_video(&cfg, &probe, fps).map_err(named)?;
            for &i in &indices {
                let img = self
                    .load_image_file(&files[i])
                    .map_err(|e| ProcessorError::Video(format!("{}: {e}", files[i].display())))?;
                b.push(img.as_raw(), img.width() as usize, img.height() as usize)
                    .map_err(|e| ProcessorError::Video(format!("{}: {e}", files[i].display())))?;
            }
            return b.finish(indices, fps, probe.frames);
        }
        let meta = std::fs::metadata(path).map_err(|source| ProcessorError::Io {
            path: path.into(),
            source,
        })?;
        if meta.len() > lim.image.max_file_bytes {
            return Err(ProcessorError::Video(format!(
                "{}: file is {} bytes, over the limit of {} (ImageLimits max_file_bytes)",
                path.display(),
                meta.len(),
                lim.image.max_file_bytes
            )));
        }
        let bytes = std::fs::read(path).map_err(|source| ProcessorError::Io {
            path: path.into(),
            source,
        })?;
        self.load_video_bytes(&bytes, opts).map_err(named)
    }

    /// [`Processor::load_video`] of an animated image held in memory.
    pub fn load_video_bytes(
        &self,
        bytes: &[u8],
        opts: &VideoOptions,
    ) -> Result<VideoInput, ProcessorError> {
        let cfg = self.video_config_for(opts)?;
        let lim = &self.video_limits;
        let probe = frames::probe_bytes(bytes, lim)?;
        if probe.frames == 0 {
            return Err(ProcessorError::Video(format!(
                "{}: the file holds no frames",
                probe.format
            )));
        }
        let fps = opts
            .source_fps
            .or(probe.fps())
            .unwrap_or(DEFAULT_SOURCE_FPS);
        let (indices, mut b) = self.start_video(&cfg, &probe, fps)?;
        frames::decode_bytes(bytes, &probe, lim, &indices, &mut |_, img| {
            b.push(img.as_raw(), img.width() as usize, img.height() as usize)
        })?;
        b.finish(indices, fps, probe.frames)
    }

    fn start_video<'a>(
        &'a self,
        cfg: &'a VideoConfig,
        probe: &VideoProbe,
        fps: f64,
    ) -> Result<(Vec<usize>, VideoBuilder<'a>), ProcessorError> {
        let indices = cfg.sample_indices(probe.frames, fps)?;
        let b = VideoBuilder::new(
            cfg,
            &self.kernels,
            indices.len(),
            probe.width as usize,
            probe.height as usize,
        )?;
        Ok((indices, b))
    }

    /// Sample and preprocess a video given as decoded frames (all one size) at `source_fps`, like
    /// transformers given the frames and their metadata.
    pub fn preprocess_video_frames(
        &self,
        frames: &[RgbImage],
        source_fps: f64,
        opts: &VideoOptions,
    ) -> Result<VideoInput, ProcessorError> {
        let cfg = self.video_config_for(opts)?;
        let first = frames
            .first()
            .ok_or_else(|| ProcessorError::Video("the video has no frames".into()))?;
        let probe = VideoProbe {
            format: "frames",
            width: first.width(),
            height: first.height(),
            frames: frames.len(),
            duration: None,
        };
        let (indices, mut b) = self.start_video(&cfg, &probe, source_fps)?;
        for &i in &indices {
            let f = &frames[i];
            b.push(f.as_raw(), f.width() as usize, f.height() as usize)?;
        }
        b.finish(indices, source_fps, frames.len())
    }

    /// Like [`Processor::encode`] with videos too: `images` and `videos` are the pixels of the prompt's
    /// image and video items, each in order. Image placeholders expand to t·h·w/merge² pads; each video's
    /// `<|video_pad|>` to its frame groups, each `<{t:.1f} seconds><|vision_start|>` + h·w/merge² pads +
    /// `<|vision_end|>`.
    pub fn encode_media(
        &self,
        messages: &[Message],
        images: &[ImageInput],
        videos: &[VideoInput],
        add_generation_prompt: bool,
    ) -> Result<Prompt, ProcessorError> {
        if videos.is_empty() {
            return self.encode(messages, images, add_generation_prompt);
        }
        let count = |k: &Content| {
            messages
                .iter()
                .flat_map(|m| &m.content)
                .filter(|c| *c == k)
                .count()
        };
        let (ni, nv) = (count(&Content::Image), count(&Content::Video));
        if ni != images.len() {
            return Err(ProcessorError::PlaceholderCount {
                placeholders: ni,
                images: images.len(),
            });
        }
        if nv != videos.len() {
            return Err(ProcessorError::VideoPlaceholderCount {
                placeholders: nv,
                videos: videos.len(),
            });
        }
        let (rendered, spans) = self
            .template
            .render_with_spans(messages, add_generation_prompt)?;
        let raw = chat::tokenize_rendered(&self.tokenizer, &self.specials, &rendered, &spans)?;
        let ids = &self.ids;
        let pads = |t: u32| raw.iter().filter(|&&x| x == t).count();
        if pads(ids.image_token_id) != images.len() {
            return Err(ProcessorError::PlaceholderCount {
                placeholders: pads(ids.image_token_id),
                images: images.len(),
            });
        }
        if pads(ids.video_token_id) != videos.len() {
            return Err(ProcessorError::VideoPlaceholderCount {
                placeholders: pads(ids.video_token_id),
                videos: videos.len(),
            });
        }
        let merge = self.merge_size_for(images.len())?;
        let (mut next_i, mut next_v) = (images.iter(), videos.iter());
        let mut input_ids = Vec::with_capacity(raw.len());
        for t in raw {
            if t == ids.image_token_id {
                let g = next_i.next().expect("counted above").grid_thw;
                input_ids.extend(std::iter::repeat_n(t, g[0] * g[1] * g[2] / (merge * merge)));
            } else if t == ids.video_token_id {
                let v = next_v.next().expect("counted above");
                for (text, n) in v.groups(self.video.merge_size) {
                    let enc = self
                        .tokenizer
                        .encode(text.as_str(), false)
                        .map_err(|e| ProcessorError::Tokenizer(e.to_string()))?;
                    input_ids.extend_from_slice(enc.get_ids());
                    input_ids.push(ids.vision_start_token_id);
                    input_ids.extend(std::iter::repeat_n(t, n));
                    input_ids.push(ids.vision_end_token_id);
                }
            } else {
                input_ids.push(t);
            }
        }
        let image_grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
        let video_grids: Vec<[usize; 3]> = videos.iter().map(|v| v.visual.grid_thw).collect();
        let (positions, rope_delta) =
            get_rope_index_media(&input_ids, &image_grids, &video_grids, ids, merge)?;
        Ok(Prompt {
            input_ids,
            positions,
            rope_delta,
            image_grids,
            video_grids,
        })
    }
}
