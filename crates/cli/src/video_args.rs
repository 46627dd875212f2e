//! `--video`, `--video-fps`, `--max-frames` (generate and chat) and `--draw-boxes` (generate), and what they
//! do after the answer.

use anyhow::{bail, Context, Result};
use clap::Args;
use qwen3vl_engine::grounding::{self, Coords};
use qwen3vl_engine::session::Engine;
use qwen3vl_processor::{VideoInput, VideoOptions};
use std::path::PathBuf;

/// Where videos come from (generate and chat).
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct VideoSourceArgs {
    /// A video to show the model: an animated GIF / WebP / APNG, a directory of frames (sorted by name),
    /// or in a build with the `ffmpeg` feature an MP4 / MKV / WebM / MOV file. Repeatable; videos come
    /// after the images and before the prompt text.
    #[arg(long = "video", value_name = "PATH")]
    pub(crate) videos: Vec<PathBuf>,
    /// Frames per second of the video source (needed for a frame directory; default 24 there, like
    /// transformers; files carry their own timing).
    #[arg(long, value_name = "F")]
    pub(crate) video_fps: Option<f64>,
    /// Sample at most N frames per video (default: the checkpoint's max_frames, 768).
    #[arg(long, value_name = "N")]
    pub(crate) max_frames: Option<usize>,
}

impl VideoSourceArgs {
    /// Check --video-fps and --max-frames (before the model loads).
    pub(crate) fn check(&self) -> Result<VideoOptions> {
        if let Some(f) = self.video_fps {
            if !(f.is_finite() && f > 0.0 && f <= 1000.0) {
                bail!("--video-fps {f}: must be a number in (0, 1000]");
            }
        }
        if self.max_frames == Some(0) {
            bail!("--max-frames must be at least 1");
        }
        Ok(VideoOptions {
            source_fps: self.video_fps,
            max_frames: self.max_frames,
        })
    }

    /// Check the options and load the videos.
    pub(crate) fn load(&self, engine: &Engine) -> Result<Vec<VideoInput>> {
        let opts = self.check()?;
        self.videos
            .iter()
            .map(|p| Ok(engine.load_video(p, &opts)?))
            .collect()
    }
}

/// The video options of `generate`: the sources and `--draw-boxes`.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct VideoArgs {
    #[command(flatten)]
    pub(crate) source: VideoSourceArgs,
    /// Draw the boxes and points of the answer (Qwen3-VL's `bbox_2d` / `point_2d` JSON, 0-1000) on the
    /// first --image and write it as PNG to OUT.
    #[arg(long, value_name = "OUT.png")]
    pub(crate) draw_boxes: Option<PathBuf>,
}

impl VideoArgs {
    /// Check the options and load the videos (before the model is asked anything).
    pub(crate) fn load(&self, engine: &Engine, n_images: usize) -> Result<Vec<VideoInput>> {
        self.source.check()?;
        if self.draw_boxes.is_some() && n_images == 0 {
            bail!("--draw-boxes needs an --image to draw on");
        }
        self.source.load(engine)
    }

    /// After the answer: with --draw-boxes, draw its boxes on the first image and report them on stderr.
    pub(crate) fn after_answer(
        &self,
        engine: &Engine,
        images: &[PathBuf],
        answer: &str,
    ) -> Result<()> {
        let (Some(out), Some(first)) = (&self.draw_boxes, images.first()) else {
            return Ok(());
        };
        let img = engine.processor.load_image_file(first)?;
        let found = grounding::parse(answer);
        let mapped = grounding::to_image(&found, Coords::Relative1000, img.width(), img.height());
        grounding::draw(&img, &mapped)
            .save_with_format(out, image::ImageFormat::Png)
            .with_context(|| format!("--draw-boxes {}: cannot write the PNG", out.display()))?;
        eprintln!(
            "[{} box{} / point{} drawn on {} -> {}]",
            mapped.len(),
            if mapped.len() == 1 { "" } else { "es" },
            if mapped.len() == 1 { "" } else { "s" },
            first.display(),
            out.display()
        );
        for g in &mapped {
            eprintln!(
                "  {}: {:?}",
                g.label.as_deref().unwrap_or("(no label)"),
                g.shape
            );
        }
        Ok(())
    }
}
