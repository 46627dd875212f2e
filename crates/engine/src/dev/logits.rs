//! `qwen3vl logits`: one forward pass over one rendered user turn, written as safetensors so it can be compared
//! with transformers (tools/reference) or with another build.
//!
//! The prompt is the chat template's rendering of an optional system message and one user message holding
//! the images in order, then the text, with the generation prompt. The output file holds:
//!   input_ids      i64 (L)
//!   last_logits    f32 (V)       logits of the last position
//!   top5_idx       i64 (L, 5)    per position, the 5 largest logits' token ids, largest first
//!   top5_val       f32 (L, 5)
//!   pixel_values   f32 (N, 1536) (only with images)
//!   image_grid_thw i64 (n, 3)    (only with images)

use std::path::PathBuf;

use anyhow::Context;
use qwen3vl_model::weights::{write_safetensors, OutTensor};
use qwen3vl_model::{KvCache, Precision, QuantFormat, RunState};
use qwen3vl_processor::{Content, ImageInput, Message};

use crate::request::History;
use crate::session::{Engine, EngineOptions};

/// Inputs of [`run_logits`].
#[derive(Clone, Debug)]
pub struct LogitsOptions {
    /// Checkpoint directory (config.json, safetensors, tokenizer, preprocessor config, chat template).
    pub model_dir: PathBuf,
    /// Image files, placed before the text in the user message, in order.
    pub images: Vec<PathBuf>,
    pub system: Option<String>,
    pub prompt: String,
    pub precision: Precision,
    /// Quantize the text decoder's linears at load (see `LoadOptions::quant`).
    pub quant: Option<QuantFormat>,
    /// Quantize the vision tower's linears at load.
    pub vision_quant: Option<QuantFormat>,
    /// The .safetensors file to write.
    pub out: PathBuf,
}

/// What [`run_logits`] computed (also written to `opts.out`).
#[derive(Clone, Debug)]
pub struct LogitsOutput {
    pub input_ids: Vec<u32>,
    /// (V)
    pub last_logits: Vec<f32>,
    /// (L, 5)
    pub top5_idx: Vec<u32>,
    /// (L, 5)
    pub top5_val: Vec<f32>,
    pub images: Vec<ImageInput>,
}

/// Runs the forward pass of `opts` and writes the tensors to `opts.out`.
pub fn run_logits(opts: &LogitsOptions) -> anyhow::Result<()> {
    let out = compute_logits(opts)?;
    write_logits(opts, &out)
}

/// The forward pass of [`run_logits`] without writing anything.
pub fn compute_logits(opts: &LogitsOptions) -> anyhow::Result<LogitsOutput> {
    let dir = &opts.model_dir;
    let engine = Engine::load(
        dir,
        &EngineOptions {
            threads: 0,
            precision: opts.precision,
            progress: None,
            quant: opts.quant,
            vision_quant: opts.vision_quant,
            ..Default::default()
        },
    )
    .with_context(|| format!("loading {}", dir.display()))?;
    // 1. The request path: images -> pixel rows, messages -> ids and M-RoPE positions.
    let images = opts
        .images
        .iter()
        .map(|p| engine.load_image(p))
        .collect::<Result<Vec<ImageInput>, _>>()
        .context("preprocessing the images")?;
    let mut messages = Vec::new();
    if let Some(s) = &opts.system {
        messages.push(Message::text("system", s));
    }
    let mut content: Vec<Content> = images.iter().map(|_| Content::Image).collect();
    content.push(Content::Text(opts.prompt.clone()));
    messages.push(Message::new("user", content));
    let context = engine.context_len();
    let prepared = engine
        .prepare(
            &messages,
            images.clone(),
            History::default(),
            Some(1),
            context,
        )
        .context("encoding the prompt")?;

    // 2. Model: vision tower, then one forward pass with per-position top-5 logits.
    let model = &engine.model;
    let vision = if prepared.vision.is_empty() {
        None
    } else {
        Some(
            model
                .encode_images(&prepared.vision)
                .context("running the vision tower")?,
        )
    };
    let l = prepared.tokens.len();
    let mut cache = KvCache::new(&model.config().text, l);
    let top = model
        .forward_top_k(
            &prepared.tokens,
            prepared.positions.as_ref(),
            vision.as_ref(),
            &mut cache,
            &mut RunState::new(),
            5,
        )
        .context("running the forward pass")?;
    anyhow::ensure!(top.k == 5, "vocabulary smaller than 5");
    Ok(LogitsOutput {
        input_ids: prepared.tokens,
        last_logits: top.last,
        top5_idx: top.idx,
        top5_val: top.val,
        images,
    })
}

fn write_logits(opts: &LogitsOptions, o: &LogitsOutput) -> anyhow::Result<()> {
    let l = o.input_ids.len();
    let ids: Vec<i64> = o.input_ids.iter().map(|&x| x as i64).collect();
    let idx: Vec<i64> = o.top5_idx.iter().map(|&x| x as i64).collect();
    let mut tensors = vec![
        OutTensor::i64("input_ids", vec![l], &ids),
        OutTensor::f32("last_logits", vec![o.last_logits.len()], &o.last_logits),
        OutTensor::i64("top5_idx", vec![l, 5], &idx),
        OutTensor::f32("top5_val", vec![l, 5], &o.top5_val),
    ];
    let pixels: Vec<f32>;
    let grids: Vec<i64>;
    if !o.images.is_empty() {
        pixels = o
            .images
            .iter()
            .flat_map(|im| im.pixel_values.iter().copied())
            .collect();
        let n: usize = o
            .images
            .iter()
            .map(|im| im.grid_thw.iter().product::<usize>())
            .sum();
        grids = o
            .images
            .iter()
            .flat_map(|im| im.grid_thw.map(|g| g as i64))
            .collect();
        tensors.push(OutTensor::f32(
            "pixel_values",
            vec![n, pixels.len() / n.max(1)],
            &pixels,
        ));
        tensors.push(OutTensor::i64(
            "image_grid_thw",
            vec![o.images.len(), 3],
            &grids,
        ));
    }
    write_safetensors(&opts.out, &tensors)
        .with_context(|| format!("writing {}", opts.out.display()))
}

#[cfg(test)]
mod tests {
    //! End to end on the tiny reference checkpoints: processor + model against transformers' numbers.
    use super::*;
    use std::path::Path;

    fn testdata() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata")
    }

    /// Reads an i64 or f32 tensor of a safetensors file written by the reference tool or by write_logits.
    fn read(path: &Path, key: &str) -> (Vec<usize>, Vec<f64>) {
        let bytes = std::fs::read(path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor(key).unwrap();
        let v = match t.dtype() {
            safetensors::Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            safetensors::Dtype::F32 => t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                .collect(),
            d => panic!("{key}: {d:?}"),
        };
        (t.shape().to_vec(), v)
    }

    #[test]
    fn logits_of_tiny_checkpoint_match_transformers() {
        let td = testdata();
        let cases: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(td.join("model-reference/cases.json")).unwrap(),
        )
        .unwrap();
        for (case, geometry) in [("tied_image2", "tied"), ("untied_text", "untied")] {
            let c = &cases["cases"][case];
            let out = std::env::temp_dir().join(format!(
                "qwen3vl-logits-{}-{case}.safetensors",
                std::process::id()
            ));
            let opts = LogitsOptions {
                model_dir: td.join(format!("model-tiny-{geometry}")),
                images: c["images"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| td.join("model-reference").join(f.as_str().unwrap()))
                    .collect(),
                system: None,
                prompt: c["prompt"].as_str().unwrap().to_string(),
                precision: Precision::F32,
                quant: None,
                vision_quant: None,
                out: out.clone(),
            };
            run_logits(&opts).unwrap();
            let reference = td.join(format!("model-reference/{case}.safetensors"));
            // Same tokens, the same pixels, the same top-1 everywhere and top-5 values within 1e-4 relative.
            assert_eq!(
                read(&out, "input_ids"),
                read(&reference, "input_ids"),
                "{case}: input_ids"
            );
            let (_, ri) = read(&reference, "logits.top5_idx");
            let (_, rv) = read(&reference, "logits.top5_val");
            let (shape, oi) = read(&out, "top5_idx");
            let (_, ov) = read(&out, "top5_val");
            assert_eq!(shape, vec![ri.len() / 5, 5]);
            let mag = rv.iter().fold(0f64, |m, x| m.max(x.abs()));
            for i in 0..ri.len() / 5 {
                assert_eq!(oi[i * 5], ri[i * 5], "{case}: top-1 at position {i}");
            }
            for (a, b) in ov.iter().zip(&rv) {
                assert!(
                    (a - b).abs() <= 1e-4 * mag,
                    "{case}: top-5 value {a} vs {b}"
                );
            }
            if geometry == "tied" {
                let (gs, g) = read(&out, "image_grid_thw");
                assert_eq!((gs, g), read(&reference, "image_grid_thw"));
                let (ps, p) = read(&out, "pixel_values");
                assert_eq!(ps[1], 1536);
                let inputs = td.join("model-reference/inputs.safetensors");
                let (_, a) = read(&inputs, "img_64x96.png");
                let (_, b) = read(&inputs, "img_96x64.png");
                let want: Vec<f64> = a.into_iter().chain(b).collect();
                let max_err = p
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (x, y)| m.max((x - y).abs()));
                assert!(max_err <= 1e-6, "{case}: pixel values differ by {max_err}");
            }
            let (ls, _) = read(&out, "last_logits");
            assert_eq!(ls, vec![cases["vocab_size"].as_u64().unwrap() as usize]);
            let _ = std::fs::remove_file(out);
        }
    }
}
