//! qwen3vl-processor: everything before the network, exact to transformers 5.23's `Qwen3VLProcessor`.
//!
//! - images: decode under limits (EXIF orientation, alpha over white, like PIL + the processor), `smart_resize`,
//!   torchvision's uint8 bicubic antialias resize in fixed point, normalize, patchify (spec 6);
//! - text: the chat template (minijinja; the checkpoint's `chat_template.json`/`.jinja`, else the built-in
//!   Qwen3-VL Instruct one), tokenization where user text never becomes special tokens, `<|image_pad|>`
//!   expansion (spec 6.5, 7.1);
//! - `get_rope_index` (spec 5.2).
//!
//! ```no_run
//! use qwen3vl_processor::{Content, Message, Processor};
//! let p = Processor::from_dir("checkpoint".as_ref())?;
//! let img = p.preprocess_image(&p.load_image_file("cat.jpg".as_ref())?)?;
//! let msgs = [Message::new("user", vec![Content::Image, Content::Text("Describe this image.".into())])];
//! let prompt = p.encode(&msgs, &[img], true)?;
//! # Ok::<(), qwen3vl_processor::ProcessorError>(())
//! ```

mod alloc;
mod chat;
pub mod decode;
mod error;
pub mod frames;
mod jpeg;
pub use qwen3vl_limits as limits;
mod media;
pub mod patch;
pub mod resize;
mod rope;
pub mod video;

pub use chat::{Content, Message, BUILTIN_TEMPLATE};
pub use decode::{composite_over_white, decode_rgb, ImageLimits};
pub use error::ProcessorError;
pub use frames::{VideoLimits, VideoProbe};
pub use image::RgbImage;
pub use media::{VideoOptions, DEFAULT_SOURCE_FPS};
pub use rope::{get_rope_index, get_rope_index_media};
pub use video::{VideoConfig, VideoInput};

use limits::{MAX_MERGE_SIZE, MAX_PATCH_SIZE, MAX_RESIZED_PIXELS, MAX_TEMPORAL_PATCH_SIZE};
use qwen3vl_kernels::Kernels;
use serde_json::Value as Json;
use std::path::Path;
use std::str::FromStr;
use tokenizers::Tokenizer;

/// Token ids the processor and the model agree on (spec 1.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
}

impl Default for SpecialIds {
    /// The values of every Qwen3-VL checkpoint.
    fn default() -> Self {
        SpecialIds {
            image_token_id: 151655,
            video_token_id: 151656,
            vision_start_token_id: 151652,
            vision_end_token_id: 151653,
        }
    }
}

/// `preprocessor_config.json` values (spec 6.1).
#[derive(Clone, Debug, PartialEq)]
pub struct ImageConfig {
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub merge_size: usize,
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub image_mean: [f64; 3],
    pub image_std: [f64; 3],
    pub rescale_factor: f64,
}

impl Default for ImageConfig {
    /// The Qwen3-VL checkpoints' values (not the Qwen2-VL class defaults).
    fn default() -> Self {
        ImageConfig {
            patch_size: 16,
            temporal_patch_size: 2,
            merge_size: 2,
            min_pixels: 65536,
            max_pixels: 16777216,
            image_mean: [0.5; 3],
            image_std: [0.5; 3],
            rescale_factor: 1.0 / 255.0,
        }
    }
}

impl ImageConfig {
    /// Parse `preprocessor_config.json`; every field the pipeline uses must be present (no class defaults).
    pub fn from_json(text: &str) -> Result<ImageConfig, ProcessorError> {
        const FILE: &str = "preprocessor_config.json";
        let err = |msg: String| ProcessorError::Config {
            file: FILE.into(),
            msg,
        };
        let v: Json =
            serde_json::from_str(text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(err("the top level must be an object".into()));
        }
        // A positive integer at most `max` (the engine's limit, not the file's).
        let uint = |key: &str, max: usize| -> Result<usize, ProcessorError> {
            match v.get(key).and_then(Json::as_u64) {
                Some(x) if x > 0 && x <= max as u64 => Ok(x as usize),
                Some(x) if x > 0 => Err(err(format!(
                    "field `{key}` is {x}, over the limit of {max}"
                ))),
                Some(_) => Err(err(format!("field `{key}` must be positive"))),
                None => Err(err(format!("missing or non-integer field `{key}`"))),
            }
        };
        let triple = |key: &str| -> Result<[f64; 3], ProcessorError> {
            let a = v
                .get(key)
                .and_then(Json::as_array)
                .ok_or_else(|| err(format!("missing field `{key}`")))?;
            let f: Option<Vec<f64>> = a
                .iter()
                .map(|x| x.as_f64().filter(|f| f.is_finite()))
                .collect();
            match f.as_deref() {
                Some(&[x, y, z]) => Ok([x, y, z]),
                _ => Err(err(format!(
                    "field `{key}` must hold 3 finite numbers, got {}",
                    Json::Array(a.clone())
                ))),
            }
        };
        let size = v.get("size");
        let pick = |a: &str, b: &str| -> Result<usize, ProcessorError> {
            let (name, x) = match size.and_then(|s| s.get(a)) {
                Some(x) => (format!("size.{a}"), x),
                None => match v.get(b) {
                    Some(x) => (b.to_string(), x),
                    None => return Err(err(format!("missing `size.{a}` (or `{b}`)"))),
                },
            };
            match x.as_u64() {
                Some(n) if n <= MAX_RESIZED_PIXELS as u64 => Ok(n as usize),
                Some(n) => Err(err(format!(
                    "field `{name}` is {n} pixels, over the limit of {MAX_RESIZED_PIXELS}"
                ))),
                None => Err(err(format!(
                    "field `{name}` must be a non-negative integer, got {x}"
                ))),
            }
        };
        let min_pixels = pick("shortest_edge", "min_pixels")?;
        let max_pixels = pick("longest_edge", "max_pixels")?;
        if min_pixels > max_pixels || max_pixels == 0 {
            return Err(err(format!(
                "min_pixels {min_pixels} / max_pixels {max_pixels} are inconsistent"
            )));
        }
        let image_std = triple("image_std")?;
        if image_std.iter().any(|&s| s <= 0.0 || !s.is_finite()) {
            return Err(err("field `image_std` must be positive".into()));
        }
        let rescale_factor = match v.get("rescale_factor") {
            None | Some(Json::Null) => 1.0 / 255.0,
            Some(x) => x.as_f64().unwrap_or(f64::NAN),
        };
        if rescale_factor <= 0.0 || !rescale_factor.is_finite() {
            return Err(err(
                "field `rescale_factor` must be a positive number".into()
            ));
        }
        Ok(ImageConfig {
            patch_size: uint("patch_size", MAX_PATCH_SIZE)?,
            temporal_patch_size: uint("temporal_patch_size", MAX_TEMPORAL_PATCH_SIZE)?,
            merge_size: uint("merge_size", MAX_MERGE_SIZE)?,
            min_pixels,
            max_pixels,
            image_mean: triple("image_mean")?,
            image_std,
            rescale_factor,
        })
    }

    /// Side multiple of resized images: patch_size · merge_size.
    pub fn factor(&self) -> usize {
        // Both are bounded by `limits` when parsed; saturating keeps a hand-built config from wrapping.
        self.patch_size.saturating_mul(self.merge_size)
    }
}

/// One preprocessed image.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageInput {
    /// (N, 3·temporal·patch²) = (N, 1536) rows, N = grid t·h·w (spec 6.4).
    pub pixel_values: Vec<f32>,
    /// (t, h, w) in patches.
    pub grid_thw: [usize; 3],
}

/// A tokenized prompt ready for prefill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    /// (L) token ids, image placeholders expanded.
    pub input_ids: Vec<u32>,
    /// (3, L) M-RoPE positions, rows T, H, W.
    pub positions: [Vec<i64>; 3],
    /// Added to the cache index of every decoded token (spec 5.3).
    pub rope_delta: i64,
    /// Grid of each image, in prompt order.
    pub image_grids: Vec<[usize; 3]>,
    /// Grid of each video, in prompt order.
    pub video_grids: Vec<[usize; 3]>,
}

/// The Qwen3-VL processor of one checkpoint directory.
#[derive(Clone)]
pub struct Processor {
    tokenizer: Tokenizer,
    /// Added special tokens (content, id): the only strings ever mapped to special ids, and only outside
    /// user text.
    specials: Vec<(String, u32)>,
    template: chat::ChatTemplate,
    ids: SpecialIds,
    /// None when the checkpoint has no `preprocessor_config.json` (text prompts only).
    image: Option<ImageConfig>,
    /// The checkpoint directory (named in errors).
    dir: std::path::PathBuf,
    norm: [[f32; 256]; 3],
    limits: ImageLimits,
    kernels: Kernels,
    video: VideoConfig,
    video_limits: VideoLimits,
}

fn read(path: &Path) -> Result<String, ProcessorError> {
    read_limited(path, limits::MAX_CONFIG_BYTES)
}

/// A text file of at most `limit` bytes, refused before it is read when larger.
fn read_limited(path: &Path, limit: u64) -> Result<String, ProcessorError> {
    use std::io::Read;
    let io = |source| ProcessorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut text = String::new();
    f.take(limit + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > limit {
        return Err(ProcessorError::Config {
            file: path.display().to_string(),
            msg: format!("the file is over the limit of {limit} bytes"),
        });
    }
    Ok(text)
}

impl Processor {
    /// [`Processor::from_dir_with`] the kernels detected for this CPU.
    pub fn from_dir(dir: &Path) -> Result<Processor, ProcessorError> {
        let kernels = Kernels::detect().map_err(|e| ProcessorError::Config {
            file: "QWEN3VL_SIMD".into(),
            msg: e.to_string(),
        })?;
        Processor::from_dir_with(dir, kernels)
    }

    /// Load `tokenizer.json`, `preprocessor_config.json`, the chat template (`chat_template.jinja`, else
    /// `chat_template.json`, else the built-in Qwen3-VL Instruct one; never the text-only template inside
    /// `tokenizer_config.json`) and the token ids of `config.json` (else looked up in the vocabulary).
    /// Without `preprocessor_config.json` the processor takes text prompts only: images and videos are
    /// refused naming the missing file. `kernels` (detected once by the caller) resize the images.
    pub fn from_dir_with(dir: &Path, kernels: Kernels) -> Result<Processor, ProcessorError> {
        let tok_path = dir.join("tokenizer.json");
        let tok_text = read_limited(&tok_path, limits::MAX_TOKENIZER_BYTES)?;
        let mut tokenizer = Tokenizer::from_str(&tok_text)
            .map_err(|e| ProcessorError::Tokenizer(format!("{}: {e}", tok_path.display())))?;
        drop(tok_text);
        if tokenizer.get_vocab_size(true) == 0 {
            return Err(ProcessorError::Tokenizer(format!(
                "{}: the vocabulary is empty",
                tok_path.display()
            )));
        }
        // Special tokens in text are text; the template's markers are mapped separately.
        tokenizer.set_encode_special_tokens(true);
        let mut specials: Vec<(String, u32)> = tokenizer
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(&id, t)| (t.content.clone(), id))
            .collect();
        specials.sort_by_key(|a| a.1);

        let image_path = dir.join("preprocessor_config.json");
        let image = if image_path.exists() {
            Some(ImageConfig::from_json(&read(&image_path)?)?)
        } else {
            None
        };
        let (source, origin) =
            if dir.join("chat_template.jinja").is_file() {
                (
                    read(&dir.join("chat_template.jinja"))?,
                    "chat_template.jinja",
                )
            } else if dir.join("chat_template.json").is_file() {
                let v: Json = serde_json::from_str(&read(&dir.join("chat_template.json"))?)
                    .map_err(|e| ProcessorError::Config {
                        file: "chat_template.json".into(),
                        msg: format!("not valid JSON: {e}"),
                    })?;
                let t = v
                    .get("chat_template")
                    .and_then(Json::as_str)
                    .map(str::to_string)
                    .ok_or_else(|| ProcessorError::Config {
                        file: "chat_template.json".into(),
                        msg: "missing string field `chat_template`".into(),
                    })?;
                (t, "chat_template.json")
            } else {
                (BUILTIN_TEMPLATE.to_string(), "the built-in chat template")
            };
        let template = chat::ChatTemplate::new(source, origin)?;

        let config: Option<Json> = if dir.join("config.json").is_file() {
            let t = read(&dir.join("config.json"))?;
            Some(
                serde_json::from_str(&t).map_err(|e| ProcessorError::Config {
                    file: "config.json".into(),
                    msg: format!("not valid JSON: {e}"),
                })?,
            )
        } else {
            None
        };
        let id = |key: &str, token: &str| -> Result<u32, ProcessorError> {
            if let Some(v) = config.as_ref().and_then(|c| c.get(key)) {
                return v
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| ProcessorError::Config {
                        file: "config.json".into(),
                        msg: format!("field `{key}` is not a token id"),
                    });
            }
            tokenizer.token_to_id(token).ok_or_else(|| {
                ProcessorError::Tokenizer(format!(
                    "no `{key}` in config.json and no token {token} in the vocabulary"
                ))
            })
        };
        let ids = SpecialIds {
            image_token_id: id("image_token_id", "<|image_pad|>")?,
            video_token_id: id("video_token_id", "<|video_pad|>")?,
            vision_start_token_id: id("vision_start_token_id", "<|vision_start|>")?,
            vision_end_token_id: id("vision_end_token_id", "<|vision_end|>")?,
        };
        // The preprocessor cuts patches the vision tower must agree with: caught here, naming both fields,
        // not when the first image arrives.
        let checked = image.as_ref().map_or(Vec::new(), |image| {
            vec![
                ("spatial_merge_size", "merge_size", image.merge_size),
                ("patch_size", "patch_size", image.patch_size),
                (
                    "temporal_patch_size",
                    "temporal_patch_size",
                    image.temporal_patch_size,
                ),
            ]
        });
        for (vision_key, ours, value) in checked {
            let Some(m) = config
                .as_ref()
                .and_then(|c| c.get("vision_config"))
                .and_then(|vc| vc.get(vision_key))
            else {
                continue;
            };
            if m.as_u64() != Some(value as u64) {
                return Err(ProcessorError::Config {
                    file: "config.json".into(),
                    msg: format!(
                        "vision_config.{vision_key} {m} differs from preprocessor_config.json {ours} {value}"
                    ),
                });
            }
        }
        let video_path = dir.join("video_preprocessor_config.json");
        let video = if video_path.is_file() {
            VideoConfig::from_json(&read(&video_path)?)?
        } else {
            VideoConfig::default()
        };
        let norm = image.as_ref().map_or([[0.0; 256]; 3], |image| {
            patch::normalize_table(image.image_mean, image.image_std, image.rescale_factor)
        });
        Ok(Processor {
            tokenizer,
            specials,
            template,
            ids,
            image,
            dir: dir.to_path_buf(),
            norm,
            limits: ImageLimits::default(),
            kernels,
            video,
            video_limits: VideoLimits::default(),
        })
    }

    /// Use these decode limits.
    pub fn with_limits(mut self, limits: ImageLimits) -> Processor {
        self.limits = limits;
        self
    }

    /// Use this chat template instead of the checkpoint's (`origin` names it in errors).
    pub fn with_chat_template(
        mut self,
        source: String,
        origin: &str,
    ) -> Result<Processor, ProcessorError> {
        self.template = chat::ChatTemplate::new(source, origin)?;
        Ok(self)
    }

    /// Use these kernels (default: `Kernels::detect()`).
    pub fn with_kernels(mut self, kernels: Kernels) -> Processor {
        self.kernels = kernels;
        self
    }

    pub fn limits(&self) -> &ImageLimits {
        &self.limits
    }

    /// The image settings of `preprocessor_config.json` (an error naming the file when the checkpoint has
    /// none: it takes text prompts only).
    pub fn image_config(&self) -> Result<&ImageConfig, ProcessorError> {
        self.image
            .as_ref()
            .ok_or_else(|| ProcessorError::NoImageConfig {
                dir: self.dir.clone(),
            })
    }

    /// The vision merge size, needed only when `n_media > 0` (text prompts need no image settings).
    fn merge_size_for(&self, n_media: usize) -> Result<usize, ProcessorError> {
        if n_media == 0 {
            return Ok(self.image.as_ref().map_or(1, |c| c.merge_size));
        }
        Ok(self.image_config()?.merge_size)
    }

    pub fn special_ids(&self) -> &SpecialIds {
        &self.ids
    }

    /// The tokenizer. It is set to treat special tokens in text as text (`encode_special_tokens`).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Decode ids to text (special tokens included).
    pub fn decode(&self, ids: &[u32]) -> Result<String, ProcessorError> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| ProcessorError::Tokenizer(e.to_string()))
    }

    /// Read and decode an image file under this processor's limits (see [`decode::read_image_file`]).
    pub fn load_image_file(&self, path: &Path) -> Result<RgbImage, ProcessorError> {
        decode::read_image_file(path, &self.limits)
    }

    /// Decode an encoded image under the limits: EXIF orientation applied, alpha composited over white.
    pub fn load_image_bytes(&self, bytes: &[u8]) -> Result<RgbImage, ProcessorError> {
        decode::decode_rgb(bytes, &self.limits)
    }

    /// smart_resize, resize, normalize and patchify one RGB image (spec 6.2–6.4).
    pub fn preprocess_image(&self, img: &RgbImage) -> Result<ImageInput, ProcessorError> {
        let c = self.image_config()?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let (rh, rw) = resize::smart_resize(h, w, c.factor(), c.min_pixels, c.max_pixels)?;
        let resized = resize::resize_rgb(&self.kernels, img.as_raw(), h, w, rh, rw)?;
        let pixel_values = patch::patchify(
            &resized,
            rh,
            rw,
            c.patch_size,
            c.merge_size,
            c.temporal_patch_size,
            &self.norm,
        );
        Ok(ImageInput {
            pixel_values,
            grid_thw: [1, rh / c.patch_size, rw / c.patch_size],
        })
    }

    /// The prompt text the chat template renders (images as `<|vision_start|><|image_pad|><|vision_end|>`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ProcessorError> {
        self.template.render(messages, add_generation_prompt)
    }

    /// Render, tokenize (user text never becomes special tokens), expand each image placeholder to its
    /// t·h·w/merge² tokens and compute the M-RoPE positions.
    pub fn encode(
        &self,
        messages: &[Message],
        images: &[ImageInput],
        add_generation_prompt: bool,
    ) -> Result<Prompt, ProcessorError> {
        let placeholders = messages
            .iter()
            .flat_map(|m| &m.content)
            .filter(|c| matches!(c, Content::Image))
            .count();
        if placeholders != images.len() {
            return Err(ProcessorError::PlaceholderCount {
                placeholders,
                images: images.len(),
            });
        }
        let (rendered, spans) = self
            .template
            .render_with_spans(messages, add_generation_prompt)?;
        let raw = chat::tokenize_rendered(&self.tokenizer, &self.specials, &rendered, &spans)?;
        if raw.is_empty() {
            return Err(ProcessorError::Template(format!(
                "{}: rendered no tokens for these {} messages",
                self.template.origin(),
                messages.len()
            )));
        }
        let pads = raw
            .iter()
            .filter(|&&t| t == self.ids.image_token_id)
            .count();
        if pads != images.len() {
            return Err(ProcessorError::PlaceholderCount {
                placeholders: pads,
                images: images.len(),
            });
        }
        let merge = self.merge_size_for(images.len())?;
        let merge2 = merge * merge;
        let mut input_ids = Vec::with_capacity(raw.len());
        let mut next = images.iter();
        for t in raw {
            if t == self.ids.image_token_id {
                let g = next.next().expect("counted above").grid_thw;
                input_ids.extend(std::iter::repeat_n(t, g[0] * g[1] * g[2] / merge2));
            } else {
                input_ids.push(t);
            }
        }
        let image_grids: Vec<[usize; 3]> = images.iter().map(|i| i.grid_thw).collect();
        let (positions, rope_delta) = get_rope_index(&input_ids, &image_grids, &self.ids, merge)?;
        Ok(Prompt {
            input_ids,
            positions,
            rope_delta,
            image_grids,
            video_grids: Vec::new(),
        })
    }
}

#[cfg(test)]
mod thread_tests {
    #[test]
    fn processor_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<super::Processor>();
        check::<super::ImageInput>();
        check::<super::Prompt>();
    }
}
