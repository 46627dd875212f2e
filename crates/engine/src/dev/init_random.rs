//! Random-weight checkpoints in the Hub layout, for trying the engine (and benchmarking it) without
//! downloading weights: `qwen3vl init-random --preset tiny|tiny-moe|2b|4b|8b|32b|30b-a3b --out DIR`.
//!
//! The geometry of each preset is spec 1.2 / 1.3 exactly (`--layers N` keeps a preset's per-layer geometry
//! with fewer decoder layers); every tensor of spec 2 is written with its exact name and shape in bf16
//! (tied presets have no `lm_head.weight`; MoE presets store the experts fused in the released layout,
//! `mlp.experts.gate_up_proj` (E, H, 2I) and `mlp.experts.down_proj` (E, I, H)). Weights are streamed
//! tensor by tensor (in chunks) into safetensors shards (≤ 2 GB each by default, with
//! `model.safetensors.index.json` when there is more than one), so even 32B never needs more than one
//! tensor in memory.
//!
//! With a quantization format (`--quant q8`) the checkpoint is written quantized directly, in the layout of
//! `qwen3vl quantize` (the same tensors quantized, see `quantize::format_of`; experts in the transformers
//! layout's rows, (E·2I, H) and (E·H, I)), generated and quantized a few rows at a time: the 30B-A3B at q8
//! never exists in bf16, on disk or in memory.
//!
//! Scaling, so activations stay finite and varied through every layer:
//! - a linear layer with fan-in n: uniform with std 1/√n (output variance ≈ input variance);
//! - residual-branch outputs (`o_proj`, `down_proj`, vision `attn.proj`, `mlp.linear_fc2`): std 1/√(n·2L),
//!   so the residual stream grows by O(1) over L layers, not O(√L);
//! - `embed_tokens` / `lm_head`: std 2/√H, so logits = RMSNorm(x)·Eᵀ have std ≈ 2 (a spread-out but not
//!   degenerate distribution);
//! - norm weights 1 ± 0.1, biases ± 0.02, the vision position table std 0.5 (pixels are in [−1, 1]).
//!
//! The other files: config.json (the released 4.57 spelling, spec 1.1), generation_config.json (spec 7.2),
//! preprocessor_config.json (spec 6.1), chat_template.json (the Instruct template), and the real Qwen3
//! tokenizer — all embedded in the binary, so the command does not depend on the source tree.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use qwen3vl_kernels::matmul::Weight;
use qwen3vl_kernels::Kernels;
use qwen3vl_model::weights::Weights;
use qwen3vl_model::QuantFormat;

use crate::generation_config::GenerationConfig;
use crate::sampling::Rng;

const TOKENIZER_JSON: &[u8] = include_bytes!("../../../../testdata/tokenizer/tokenizer.json");
const TOKENIZER_CONFIG_JSON: &[u8] =
    include_bytes!("../../../../testdata/tokenizer/tokenizer_config.json");
const CHAT_TEMPLATE: &str =
    include_str!("../../../processor/src/chat_template.qwen3vl-instruct.jinja");

/// Default largest shard, like the Hub's.
pub const DEFAULT_SHARD_BYTES: u64 = 2_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("unknown preset {0:?}: expected one of tiny, tiny-moe, 2b, 4b, 8b, 32b, 30b-a3b")]
    UnknownPreset(String),
    #[error("--layers {layers}: {msg}")]
    Layers { layers: usize, msg: String },
    #[error("quantizing {tensor}: {msg}")]
    Quantize { tensor: String, msg: String },
    #[error(
        "output directory {0} is not empty (pass --force to overwrite the checkpoint files in it)"
    )]
    NotEmpty(PathBuf),
    #[error("writing {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> InitError + '_ {
    move |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A model size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// A very small geometry (text hidden 16, 2 layers; vision hidden 32, depth 2) with the real vocabulary.
    Tiny,
    B2,
    B4,
    B8,
    B32,
    /// Tiny with a sparse MoE block in every layer (8 experts, top-2).
    TinyMoe,
    /// Qwen3-VL-30B-A3B (spec 1.3): 48 layers of 128 experts, top-8.
    A30bA3,
}

impl Preset {
    pub const ALL: [Preset; 7] = [
        Preset::Tiny,
        Preset::B2,
        Preset::B4,
        Preset::B8,
        Preset::B32,
        Preset::TinyMoe,
        Preset::A30bA3,
    ];

    pub fn parse(s: &str) -> Result<Preset, InitError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tiny" => Ok(Preset::Tiny),
            "2b" => Ok(Preset::B2),
            "4b" => Ok(Preset::B4),
            "8b" => Ok(Preset::B8),
            "32b" => Ok(Preset::B32),
            "tiny-moe" => Ok(Preset::TinyMoe),
            "30b-a3b" => Ok(Preset::A30bA3),
            other => Err(InitError::UnknownPreset(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Preset::Tiny => "tiny",
            Preset::B2 => "2b",
            Preset::B4 => "4b",
            Preset::B8 => "8b",
            Preset::B32 => "32b",
            Preset::TinyMoe => "tiny-moe",
            Preset::A30bA3 => "30b-a3b",
        }
    }

    /// The geometry of spec 1.2 (tiny: our own).
    pub fn geometry(self) -> Geometry {
        let vision_small = VisionGeometry {
            depth: 24,
            hidden: 1024,
            heads: 16,
            intermediate: 4096,
            out_hidden: 0,
            deepstack: vec![5, 11, 17],
        };
        let vision_large = VisionGeometry {
            depth: 27,
            hidden: 1152,
            heads: 16,
            intermediate: 4304,
            out_hidden: 0,
            deepstack: vec![8, 16, 24],
        };
        let text = |hidden, layers, heads, intermediate, tie| TextGeometry {
            hidden,
            layers,
            heads,
            kv_heads: 8,
            head_dim: 128,
            intermediate,
            vocab: 151936,
            mrope_section: [24, 20, 20],
            tie,
            moe: None,
        };
        let tiny_vision = VisionGeometry {
            depth: 2,
            hidden: 32,
            heads: 2,
            intermediate: 64,
            out_hidden: 0,
            deepstack: vec![0, 1],
        };
        let (text, mut vision) = match self {
            Preset::TinyMoe => (
                TextGeometry {
                    hidden: 16,
                    layers: 2,
                    heads: 4,
                    kv_heads: 2,
                    head_dim: 16,
                    intermediate: 48,
                    vocab: 151936,
                    mrope_section: [4, 2, 2],
                    tie: true,
                    moe: Some(MoeGeometry {
                        experts: 8,
                        top_k: 2,
                        intermediate: 32,
                    }),
                },
                tiny_vision,
            ),
            Preset::A30bA3 => (
                TextGeometry {
                    kv_heads: 4,
                    moe: Some(MoeGeometry {
                        experts: 128,
                        top_k: 8,
                        intermediate: 768,
                    }),
                    ..text(2048, 48, 32, 6144, false)
                },
                vision_large.clone(),
            ),
            Preset::Tiny => (
                TextGeometry {
                    hidden: 16,
                    layers: 2,
                    heads: 4,
                    kv_heads: 2,
                    head_dim: 16,
                    intermediate: 48,
                    vocab: 151936,
                    mrope_section: [4, 2, 2],
                    tie: true,
                    moe: None,
                },
                tiny_vision,
            ),
            Preset::B2 => (text(2048, 28, 16, 6144, true), vision_small),
            Preset::B4 => (text(2560, 36, 32, 9728, true), vision_small),
            Preset::B8 => (text(4096, 36, 32, 12288, false), vision_large),
            Preset::B32 => (text(5120, 64, 64, 25600, false), vision_large),
        };
        vision.out_hidden = text.hidden;
        Geometry { text, vision }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextGeometry {
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub mrope_section: [usize; 3],
    pub tie: bool,
    /// The sparse MoE block of every layer (spec 1.3; no `mlp_only_layers`, decoder_sparse_step 1).
    pub moe: Option<MoeGeometry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MoeGeometry {
    pub experts: usize,
    pub top_k: usize,
    /// moe_intermediate_size
    pub intermediate: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisionGeometry {
    pub depth: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub out_hidden: usize,
    pub deepstack: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub text: TextGeometry,
    pub vision: VisionGeometry,
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform with this standard deviation, centred on `mean`.
    Uniform { mean: f32, std: f32 },
}

/// One tensor of the checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl TensorSpec {
    pub fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
    /// bf16 bytes.
    pub fn bytes(&self) -> u64 {
        self.numel() * 2
    }
}

impl Geometry {
    /// config.json as the released checkpoints spell it (transformers 4.57: `rope_theta` and
    /// `rope_scaling` inside `text_config`, vision `model_type` "qwen3_vl").
    pub fn config_json(&self) -> Value {
        let mut c = self.dense_config_json();
        if let Some(m) = &self.text.moe {
            c["architectures"] = json!(["Qwen3VLMoeForConditionalGeneration"]);
            c["model_type"] = json!("qwen3_vl_moe");
            c["vision_config"]["model_type"] = json!("qwen3_vl_moe");
            let t = &mut c["text_config"];
            t["model_type"] = json!("qwen3_vl_moe_text");
            t["num_experts"] = json!(m.experts);
            t["num_experts_per_tok"] = json!(m.top_k);
            t["moe_intermediate_size"] = json!(m.intermediate);
            t["decoder_sparse_step"] = json!(1);
            t["mlp_only_layers"] = json!([]);
            t["norm_topk_prob"] = json!(true);
            t["router_aux_loss_coef"] = json!(0.001);
        }
        c
    }

    fn dense_config_json(&self) -> Value {
        let t = &self.text;
        let v = &self.vision;
        json!({
            "architectures": ["Qwen3VLForConditionalGeneration"],
            "image_token_id": 151655,
            "model_type": "qwen3_vl",
            "text_config": {
                "attention_bias": false,
                "attention_dropout": 0.0,
                "bos_token_id": 151643,
                "dtype": "bfloat16",
                "eos_token_id": 151645,
                "head_dim": t.head_dim,
                "hidden_act": "silu",
                "hidden_size": t.hidden,
                "initializer_range": 0.02,
                "intermediate_size": t.intermediate,
                "max_position_embeddings": 262144,
                "model_type": "qwen3_vl_text",
                "num_attention_heads": t.heads,
                "num_hidden_layers": t.layers,
                "num_key_value_heads": t.kv_heads,
                "rms_norm_eps": 1e-6,
                "rope_scaling": {
                    "mrope_interleaved": true,
                    "mrope_section": t.mrope_section,
                    "rope_type": "default"
                },
                "rope_theta": 5000000,
                "tie_word_embeddings": t.tie,
                "use_cache": true,
                "vocab_size": t.vocab
            },
            "tie_word_embeddings": t.tie,
            "transformers_version": "4.57.0.dev0",
            "video_token_id": 151656,
            "vision_config": {
                "deepstack_visual_indexes": v.deepstack,
                "depth": v.depth,
                "hidden_act": "gelu_pytorch_tanh",
                "hidden_size": v.hidden,
                "in_channels": 3,
                "initializer_range": 0.02,
                "intermediate_size": v.intermediate,
                "model_type": "qwen3_vl",
                "num_heads": v.heads,
                "num_position_embeddings": 2304,
                "out_hidden_size": v.out_hidden,
                "patch_size": 16,
                "spatial_merge_size": 2,
                "temporal_patch_size": 2
            },
            "vision_end_token_id": 151653,
            "vision_start_token_id": 151652
        })
    }

    /// Every tensor of spec 2, in writing order (text first, then vision).
    pub fn tensors(&self) -> Vec<TensorSpec> {
        let t = &self.text;
        let v = &self.vision;
        let mut out = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, init: Init| {
            out.push(TensorSpec { name, shape, init })
        };
        let lin = |fan_in: usize| Init::Uniform {
            mean: 0.0,
            std: 1.0 / (fan_in as f32).sqrt(),
        };
        let resid = |fan_in: usize, layers: usize| Init::Uniform {
            mean: 0.0,
            std: 1.0 / ((fan_in * 2 * layers.max(1)) as f32).sqrt(),
        };
        let norm = Init::Uniform {
            mean: 1.0,
            std: 0.1 / 3f32.sqrt(),
        };
        let bias = Init::Uniform {
            mean: 0.0,
            std: 0.02 / 3f32.sqrt(),
        };
        let embed = Init::Uniform {
            mean: 0.0,
            std: 2.0 / (t.hidden as f32).sqrt(),
        };

        // Text decoder.
        let lm = "model.language_model";
        let (h, q, kv, i) = (
            t.hidden,
            t.heads * t.head_dim,
            t.kv_heads * t.head_dim,
            t.intermediate,
        );
        push(format!("{lm}.embed_tokens.weight"), vec![t.vocab, h], embed);
        for l in 0..t.layers {
            let p = format!("{lm}.layers.{l}");
            push(format!("{p}.input_layernorm.weight"), vec![h], norm);
            push(format!("{p}.self_attn.q_proj.weight"), vec![q, h], lin(h));
            push(format!("{p}.self_attn.k_proj.weight"), vec![kv, h], lin(h));
            push(format!("{p}.self_attn.v_proj.weight"), vec![kv, h], lin(h));
            push(
                format!("{p}.self_attn.o_proj.weight"),
                vec![h, q],
                resid(q, t.layers),
            );
            push(
                format!("{p}.self_attn.q_norm.weight"),
                vec![t.head_dim],
                norm,
            );
            push(
                format!("{p}.self_attn.k_norm.weight"),
                vec![t.head_dim],
                norm,
            );
            push(
                format!("{p}.post_attention_layernorm.weight"),
                vec![h],
                norm,
            );
            if let Some(m) = &t.moe {
                // the released layout: (E, H, 2I) and (E, I, H), used as x @ W
                let (e, mi) = (m.experts, m.intermediate);
                push(format!("{p}.mlp.gate.weight"), vec![e, h], lin(h));
                push(
                    format!("{p}.mlp.experts.gate_up_proj"),
                    vec![e, h, 2 * mi],
                    lin(h),
                );
                push(
                    format!("{p}.mlp.experts.down_proj"),
                    vec![e, mi, h],
                    resid(mi, t.layers),
                );
                continue;
            }
            push(format!("{p}.mlp.gate_proj.weight"), vec![i, h], lin(h));
            push(format!("{p}.mlp.up_proj.weight"), vec![i, h], lin(h));
            push(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, i],
                resid(i, t.layers),
            );
        }
        push(format!("{lm}.norm.weight"), vec![h], norm);
        if !t.tie {
            push("lm_head.weight".into(), vec![t.vocab, h], embed);
        }

        // Vision tower.
        let vis = "model.visual";
        let (d, f, o) = (v.hidden, v.intermediate, v.out_hidden);
        let dm = 4 * d;
        push(
            format!("{vis}.patch_embed.proj.weight"),
            vec![d, 3, 2, 16, 16],
            lin(1536),
        );
        push(format!("{vis}.patch_embed.proj.bias"), vec![d], bias);
        push(
            format!("{vis}.pos_embed.weight"),
            vec![2304, d],
            Init::Uniform {
                mean: 0.0,
                std: 0.5,
            },
        );
        for b in 0..v.depth {
            let p = format!("{vis}.blocks.{b}");
            push(format!("{p}.norm1.weight"), vec![d], norm);
            push(format!("{p}.norm1.bias"), vec![d], bias);
            push(format!("{p}.norm2.weight"), vec![d], norm);
            push(format!("{p}.norm2.bias"), vec![d], bias);
            push(format!("{p}.attn.qkv.weight"), vec![3 * d, d], lin(d));
            push(format!("{p}.attn.qkv.bias"), vec![3 * d], bias);
            push(
                format!("{p}.attn.proj.weight"),
                vec![d, d],
                resid(d, v.depth),
            );
            push(format!("{p}.attn.proj.bias"), vec![d], bias);
            push(format!("{p}.mlp.linear_fc1.weight"), vec![f, d], lin(d));
            push(format!("{p}.mlp.linear_fc1.bias"), vec![f], bias);
            push(
                format!("{p}.mlp.linear_fc2.weight"),
                vec![d, f],
                resid(f, v.depth),
            );
            push(format!("{p}.mlp.linear_fc2.bias"), vec![d], bias);
        }
        let merger =
            |push: &mut dyn FnMut(String, Vec<usize>, Init), p: String, norm_dim: usize| {
                push(format!("{p}.norm.weight"), vec![norm_dim], norm);
                push(format!("{p}.norm.bias"), vec![norm_dim], bias);
                push(format!("{p}.linear_fc1.weight"), vec![dm, dm], lin(dm));
                push(format!("{p}.linear_fc1.bias"), vec![dm], bias);
                push(format!("{p}.linear_fc2.weight"), vec![o, dm], lin(dm));
                push(format!("{p}.linear_fc2.bias"), vec![o], bias);
            };
        merger(&mut push, format!("{vis}.merger"), d);
        for j in 0..v.deepstack.len() {
            merger(&mut push, format!("{vis}.deepstack_merger_list.{j}"), dm);
        }
        out
    }
}

/// Options of [`write_checkpoint`].
pub struct InitOptions<'a> {
    pub seed: u64,
    /// Largest shard in bytes (a tensor larger than this gets a shard of its own).
    pub shard_bytes: u64,
    /// Overwrite the checkpoint files in a non-empty directory.
    pub force: bool,
    /// Called with (bytes written, total bytes) after each tensor.
    pub progress: Option<&'a dyn Fn(u64, u64)>,
    /// Decoder layers (None: the preset's); every other size stays the preset's.
    pub layers: Option<usize>,
    /// Write the linear weights quantized to this format (the tensors `qwen3vl quantize` quantizes; the
    /// lm head / tied embeddings in q8), generated a few rows at a time.
    pub quant: Option<QuantFormat>,
}

impl Default for InitOptions<'_> {
    fn default() -> Self {
        InitOptions {
            seed: 0,
            shard_bytes: DEFAULT_SHARD_BYTES,
            force: false,
            progress: None,
            layers: None,
            quant: None,
        }
    }
}

/// What was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitSummary {
    pub tensors: usize,
    pub params: u64,
    pub weight_bytes: u64,
    pub shards: Vec<String>,
}

/// Write a complete checkpoint of `preset` into `out` (created if missing).
pub fn write_checkpoint(
    out: &Path,
    preset: Preset,
    opts: &InitOptions,
) -> Result<InitSummary, InitError> {
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let non_empty = std::fs::read_dir(out)
        .map_err(io_err(out))?
        .next()
        .is_some();
    if non_empty && !opts.force {
        return Err(InitError::NotEmpty(out.to_path_buf()));
    }
    let mut geo = preset.geometry();
    if let Some(n) = opts.layers {
        let ds = geo.vision.deepstack.len();
        if n == 0 || n < ds {
            return Err(InitError::Layers {
                layers: n,
                msg: format!(
                    "must be at least 1 and at least the {ds} DeepStack features the vision tower injects"
                ),
            });
        }
        geo.text.layers = n;
    }
    let write = |name: &str, bytes: &[u8]| -> Result<(), InitError> {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(io_err(&p))
    };
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    write("config.json", pretty(&geo.config_json()).as_bytes())?;
    write(
        "generation_config.json",
        (GenerationConfig::default().to_json() + "\n").as_bytes(),
    )?;
    write(
        "preprocessor_config.json",
        pretty(&preprocessor_config()).as_bytes(),
    )?;
    write(
        "chat_template.json",
        pretty(&json!({ "chat_template": CHAT_TEMPLATE })).as_bytes(),
    )?;
    write("tokenizer.json", TOKENIZER_JSON)?;
    write("tokenizer_config.json", TOKENIZER_CONFIG_JSON)?;
    // Remove stale shards of an earlier run (with --force).
    if opts.force {
        if let Ok(rd) = std::fs::read_dir(out) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("model") && n.contains(".safetensors") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let stored: Vec<Stored> = geo
        .tensors()
        .into_iter()
        .map(|spec| Stored::new(spec, geo.text.tie, opts.quant))
        .collect();
    write_weights(out, &stored, opts)
}

/// One tensor as written: bf16, or quantized to a format (values, then scales, as `qwen3vl quantize`).
struct Stored {
    spec: TensorSpec,
    quant: Option<QuantFormat>,
    /// (rows, k): the quantized matrix; an expert tensor's rows are those of the transformers layout
    rows: u64,
    k: usize,
    /// A quantized expert tensor: the (rows, cols) of one expert in the released layout, in which its
    /// values are drawn (the same values as the bf16 checkpoint of the same seed), then transposed.
    released: Option<(usize, usize)>,
}

impl Stored {
    fn new(mut spec: TensorSpec, tie: bool, quant: Option<QuantFormat>) -> Stored {
        let expert = crate::quantize::is_expert_tensor(&spec.name);
        let quant = quant.and_then(|q| crate::quantize::format_of(&spec.name, tie, q, None));
        let mut released = None;
        if expert && quant.is_some() {
            // quantized rows are the transformers layout's: (E, 2I, H), (E, H, I)
            let n = spec.shape.len();
            released = Some((spec.shape[n - 2], spec.shape[n - 1]));
            spec.shape.swap(n - 2, n - 1);
        }
        let k = *spec.shape.last().unwrap_or(&1);
        let rows = spec.numel() / k.max(1) as u64;
        Stored {
            spec,
            quant,
            rows,
            k,
            released,
        }
    }

    /// The header entries: (name, dtype, shape, bytes).
    fn entries(&self) -> Vec<(String, &'static str, Vec<u64>, u64)> {
        match self.quant {
            None => vec![(
                self.spec.name.clone(),
                "BF16",
                self.spec.shape.iter().map(|&d| d as u64).collect(),
                self.spec.bytes(),
            )],
            Some(f) => {
                let (rb, nb) = (f.row_bytes(self.k) as u64, f.row_scales(self.k) as u64);
                vec![
                    (
                        self.spec.name.clone(),
                        "U8",
                        vec![self.rows, rb],
                        self.rows * rb,
                    ),
                    (
                        format!("{}_scale", self.spec.name),
                        "F32",
                        vec![self.rows, nb],
                        self.rows * nb * 4,
                    ),
                ]
            }
        }
    }

    fn bytes(&self) -> u64 {
        self.entries().iter().map(|e| e.3).sum()
    }
}

/// spec 6.1.
fn preprocessor_config() -> Value {
    json!({
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
        "size": {"shortest_edge": 65536, "longest_edge": 16777216},
        "patch_size": 16,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_rescale": true,
        "rescale_factor": 0.00392156862745098,
        "do_normalize": true,
        "do_resize": true,
        "resample": 3,
        "do_convert_rgb": true
    })
}

/// Split tensors of these sizes into shards of at most `limit` bytes, keeping order.
fn plan_shards(sizes: &[u64], limit: u64) -> Vec<std::ops::Range<usize>> {
    let mut shards = Vec::new();
    let mut start = 0;
    let mut size = 0u64;
    for (i, &b) in sizes.iter().enumerate() {
        if i > start && size + b > limit {
            shards.push(start..i);
            start = i;
            size = 0;
        }
        size += b;
    }
    if start < sizes.len() {
        shards.push(start..sizes.len());
    }
    shards
}

fn write_weights(
    out: &Path,
    tensors: &[Stored],
    opts: &InitOptions,
) -> Result<InitSummary, InitError> {
    let sizes: Vec<u64> = tensors.iter().map(Stored::bytes).collect();
    let shards = plan_shards(&sizes, opts.shard_bytes.max(1));
    let total: u64 = sizes.iter().sum();
    let n = shards.len();
    let names: Vec<String> = if n == 1 {
        vec!["model.safetensors".to_string()]
    } else {
        (1..=n)
            .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
            .collect()
    };
    let kernels = match opts.quant {
        Some(_) => Some(Kernels::detect().map_err(|e| InitError::Quantize {
            tensor: "(choosing the kernels)".into(),
            msg: e.to_string(),
        })?),
        None => None,
    };
    let mut rng = Rng::new(opts.seed);
    let mut done = 0u64;
    let mut weight_map = serde_json::Map::new();
    for (range, name) in shards.iter().zip(&names) {
        let path = out.join(name);
        let part = &tensors[range.clone()];
        let mut w = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(io_err(&path))?);
        w.write_all(&stored_header(part)).map_err(io_err(&path))?;
        let mut buf: Vec<u8> = Vec::new();
        for t in part {
            match (t.quant, &kernels) {
                (Some(f), Some(k)) => write_quantized(&mut w, &mut rng, t, f, k, &path)?,
                _ => {
                    // Stream in chunks of 1M elements: memory stays small whatever the tensor size.
                    let mut left = t.spec.numel();
                    while left > 0 {
                        let chunk = left.min(1 << 20) as usize;
                        fill_bf16(&mut rng, t.spec.init, chunk, &mut buf);
                        w.write_all(&buf).map_err(io_err(&path))?;
                        left -= chunk as u64;
                    }
                }
            }
            done += t.bytes();
            for e in t.entries() {
                weight_map.insert(e.0, Value::String(name.clone()));
            }
            if let Some(p) = opts.progress {
                p(done, total);
            }
        }
        w.flush().map_err(io_err(&path))?;
    }
    if n > 1 {
        let index = json!({ "metadata": {"total_size": total}, "weight_map": weight_map });
        let p = out.join("model.safetensors.index.json");
        std::fs::write(
            &p,
            serde_json::to_string_pretty(&index).unwrap_or_default() + "\n",
        )
        .map_err(io_err(&p))?;
    }
    Ok(InitSummary {
        tensors: tensors.iter().map(|t| t.entries().len()).sum(),
        params: tensors.iter().map(|t| t.spec.numel()).sum(),
        weight_bytes: total,
        shards: names,
    })
}

/// Draws tensor `t` a block of rows (or one expert) at a time, in the order the bf16 checkpoint of the same
/// seed draws them, quantizes each block to `f` and writes the values; the scales (an eighth of the
/// values' size for q8) are held until the tensor's values are written, then follow them (the
/// `{name}_scale` entry comes right after `{name}` in the header).
fn write_quantized(
    w: &mut impl Write,
    rng: &mut Rng,
    t: &Stored,
    f: QuantFormat,
    k: &Kernels,
    path: &Path,
) -> Result<(), InitError> {
    let kk = t.k;
    let mut scales: Vec<u8> = Vec::with_capacity((t.rows * f.row_scales(kk) as u64 * 4) as usize);
    let (mut buf, mut bits, mut rows_t) = (Vec::new(), Vec::new(), Vec::new());
    let mut quantize = |rows: usize, bits: &[u16], w: &mut dyn Write| -> Result<(), InitError> {
        let q = k
            .quantize_weight(f, Weight::Bf16(bits), rows, kk)
            .map_err(|e| InitError::Quantize {
                tensor: t.spec.name.clone(),
                msg: e.to_string(),
            })?;
        w.write_all(q.qs_bytes()).map_err(io_err(path))?;
        scales.extend(q.scales().iter().flat_map(|v| v.to_le_bytes()));
        Ok(())
    };
    let widen = |buf: &[u8], bits: &mut Vec<u16>| {
        bits.clear();
        bits.extend(
            buf.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]])),
        );
    };
    if let Some((a, b)) = t.released {
        // one expert at a time: (a, b) drawn as released, quantized as its (b, a) transpose
        for _ in 0..t.rows / b as u64 {
            fill_bf16(rng, t.spec.init, a * b, &mut buf);
            widen(&buf, &mut bits);
            rows_t.clear();
            rows_t.extend((0..a * b).map(|i| bits[(i % a) * b + i / a]));
            quantize(b, &rows_t, w)?;
        }
    } else {
        let block = ((1usize << 20) / kk.max(1)).max(1) as u64;
        let mut r = 0u64;
        while r < t.rows {
            let rows = block.min(t.rows - r) as usize;
            fill_bf16(rng, t.spec.init, rows * kk, &mut buf);
            widen(&buf, &mut bits);
            quantize(rows, &bits, w)?;
            r += rows as u64;
        }
    }
    w.write_all(&scales).map_err(io_err(path))
}

/// The safetensors header of bf16 `tensors` laid out in order: u64 LE length, JSON, padded with spaces to 8.
#[cfg(test)]
fn safetensors_header(tensors: &[TensorSpec]) -> Vec<u8> {
    let stored: Vec<Stored> = tensors
        .iter()
        .map(|t| Stored::new(t.clone(), false, None))
        .collect();
    stored_header(&stored)
}

/// The safetensors header of `tensors` laid out in order (a quantized one as its values then its scales,
/// its format in `__metadata__` as `quant:{name}`): u64 LE length, JSON, padded with spaces to 8.
fn stored_header(tensors: &[Stored]) -> Vec<u8> {
    let mut m = serde_json::Map::new();
    let mut meta = serde_json::Map::new();
    meta.insert("format".into(), json!("pt"));
    let mut off = 0u64;
    for t in tensors {
        if let Some(f) = t.quant {
            meta.insert(Weights::quant_meta_key(&t.spec.name), json!(f.name()));
        }
        for (name, dtype, shape, bytes) in t.entries() {
            m.insert(
                name,
                json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + bytes]}),
            );
            off += bytes;
        }
    }
    m.insert("__metadata__".into(), Value::Object(meta));
    let mut h = serde_json::to_vec(&Value::Object(m)).unwrap_or_default();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out
}

/// `n` bf16 values (little-endian bytes) drawn from `init` into `buf` (cleared first).
fn fill_bf16(rng: &mut Rng, init: Init, n: usize, buf: &mut Vec<u8>) {
    buf.clear();
    buf.reserve(n * 2);
    let Init::Uniform { mean, std } = init;
    // Uniform on [mean − a, mean + a) has std a/√3.
    let a = std * 3f32.sqrt();
    let scale = 2.0 * a / (1u32 << 24) as f32;
    let mut push = |bits: u32| {
        let x = mean - a + (bits >> 8) as f32 * scale;
        buf.extend_from_slice(&f32_to_bf16(x).to_le_bytes());
    };
    for _ in 0..n / 2 {
        let r = rng.next_u64();
        push(r as u32);
        push((r >> 32) as u32);
    }
    if n % 2 == 1 {
        push(rng.next_u64() as u32);
    }
}

use qwen3vl_kernels::scalar::bf16_from_f32 as f32_to_bf16;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_and_tensor_counts_match_spec() {
        // spec 2: unique parameter counts and vision tensor counts.
        let expect = [
            (Preset::B2, 2_127_532_032u64, 315usize),
            (Preset::B4, 4_437_815_808, 315),
            (Preset::B8, 8_767_123_696, 351),
            (Preset::B32, 33_357_390_064, 351),
        ];
        for (p, params, vision_tensors) in expect {
            let ts = p.geometry().tensors();
            let n: u64 = ts.iter().map(|t| t.numel()).sum();
            assert_eq!(n, params, "{p:?}");
            let v = ts
                .iter()
                .filter(|t| t.name.starts_with("model.visual."))
                .count();
            assert_eq!(v, vision_tensors, "{p:?}");
            let tied = p.geometry().text.tie;
            assert_eq!(
                ts.iter().any(|t| t.name == "lm_head.weight"),
                !tied,
                "{p:?}"
            );
            let mut names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), ts.len(), "duplicate names in {p:?}");
        }
    }

    #[test]
    fn a30b_a3_geometry_is_spec_1_3() {
        let g = Preset::A30bA3.geometry();
        let ts = g.tensors();
        let n: u64 = ts.iter().map(|t| t.numel()).sum();
        // text: 48 × (attention 18.87M + router 0.26M + 128 experts × 3 × 768 × 2048 + norms), embeddings
        // and lm head 2 × 311M; vision 0.41B: 31.07B in all (the model card says 31B)
        assert_eq!(n, 31_070_754_032, "{n}");
        let shape = |n: &str| ts.iter().find(|t| t.name == n).unwrap().shape.clone();
        let p = "model.language_model.layers.47.mlp";
        assert_eq!(shape(&format!("{p}.gate.weight")), vec![128, 2048]);
        assert_eq!(
            shape(&format!("{p}.experts.gate_up_proj")),
            vec![128, 2048, 1536]
        );
        assert_eq!(
            shape(&format!("{p}.experts.down_proj")),
            vec![128, 768, 2048]
        );
        assert!(!ts.iter().any(|t| t.name.contains("mlp.gate_proj")));
        let c = g.config_json();
        assert_eq!(c["model_type"], "qwen3_vl_moe");
        assert_eq!(c["text_config"]["num_experts"], 128);
        assert_eq!(c["text_config"]["num_experts_per_tok"], 8);
        assert_eq!(c["text_config"]["moe_intermediate_size"], 768);
        assert_eq!(c["text_config"]["num_key_value_heads"], 4);
        assert_eq!(c["tie_word_embeddings"], false);
        assert_eq!(Preset::parse("30B-A3B").unwrap(), Preset::A30bA3);
        // quantized: an expert tensor is written as the transformers layout's rows
        let gu = ts
            .iter()
            .find(|t| t.name.ends_with("layers.0.mlp.experts.gate_up_proj"))
            .unwrap();
        let st = Stored::new(gu.clone(), false, Some(QuantFormat::Q8));
        assert_eq!((st.rows, st.k), (128 * 1536, 2048));
        assert_eq!(st.released, Some((2048, 1536)));
        let e = st.entries();
        assert_eq!(e[0].2, vec![128 * 1536, 2048]);
        assert_eq!(e[1].2, vec![128 * 1536, 64]);
    }

    #[test]
    fn shapes_follow_spec_table() {
        let ts = Preset::B8.geometry().tensors();
        let shape = |n: &str| {
            ts.iter()
                .find(|t| t.name == n)
                .map(|t| t.shape.clone())
                .unwrap()
        };
        assert_eq!(
            shape("model.visual.patch_embed.proj.weight"),
            vec![1152, 3, 2, 16, 16]
        );
        assert_eq!(
            shape("model.visual.blocks.26.attn.qkv.weight"),
            vec![3456, 1152]
        );
        assert_eq!(shape("model.visual.merger.norm.weight"), vec![1152]);
        assert_eq!(
            shape("model.visual.merger.linear_fc2.weight"),
            vec![4096, 4608]
        );
        assert_eq!(
            shape("model.visual.deepstack_merger_list.2.norm.weight"),
            vec![4608]
        );
        assert_eq!(
            shape("model.language_model.layers.35.self_attn.k_proj.weight"),
            vec![1024, 4096]
        );
        assert_eq!(
            shape("model.language_model.layers.0.mlp.down_proj.weight"),
            vec![4096, 12288]
        );
        assert_eq!(shape("lm_head.weight"), vec![151936, 4096]);
        let ts = Preset::B4.geometry().tensors();
        let shape = |n: &str| {
            ts.iter()
                .find(|t| t.name == n)
                .map(|t| t.shape.clone())
                .unwrap()
        };
        assert_eq!(
            shape("model.language_model.layers.0.self_attn.o_proj.weight"),
            vec![2560, 4096]
        );
    }

    #[test]
    fn config_uses_released_spelling() {
        let c = Preset::B2.geometry().config_json();
        assert_eq!(c["text_config"]["rope_theta"], 5000000);
        assert_eq!(
            c["text_config"]["rope_scaling"]["mrope_section"],
            json!([24, 20, 20])
        );
        assert_eq!(c["vision_config"]["model_type"], "qwen3_vl");
        assert_eq!(
            c["vision_config"]["deepstack_visual_indexes"],
            json!([5, 11, 17])
        );
        assert_eq!(c["vision_config"]["out_hidden_size"], 2048);
        assert_eq!(c["tie_word_embeddings"], true);
        assert_eq!(
            Preset::B32.geometry().config_json()["tie_word_embeddings"],
            false
        );
    }

    #[test]
    fn shards_respect_limit_and_order() {
        let ts = Preset::Tiny.geometry().tensors();
        let limit = 1_000_000;
        let sizes: Vec<u64> = ts.iter().map(|t| t.bytes()).collect();
        let shards = plan_shards(&sizes, limit);
        assert!(shards.len() > 1);
        let mut next = 0;
        for r in &shards {
            assert_eq!(r.start, next);
            next = r.end;
            let bytes: u64 = ts[r.clone()].iter().map(|t| t.bytes()).sum();
            assert!(bytes <= limit || r.len() == 1, "{bytes}");
        }
        assert_eq!(next, ts.len());
    }

    #[test]
    fn random_values_have_requested_moments() {
        let mut rng = Rng::new(3);
        let mut buf = Vec::new();
        fill_bf16(
            &mut rng,
            Init::Uniform {
                mean: 1.0,
                std: 0.5,
            },
            100_001,
            &mut buf,
        );
        assert_eq!(buf.len(), 200_002);
        let xs: Vec<f64> = buf
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16) as f64)
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "{mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "{}", var.sqrt());
        let lim = 1.0 + 0.5 * 3f64.sqrt() + 0.01;
        assert!(xs
            .iter()
            .all(|&x| x.is_finite() && (2.0 - lim..=lim).contains(&x)));
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(-2.0), 0xC000);
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
        assert_eq!(f32_to_bf16(1.0 + 1.0 / 256.0), 0x3F80);
        assert_eq!(f32_to_bf16(1.0 + 3.0 / 256.0), 0x3F82);
    }

    #[test]
    fn header_is_aligned_and_tiles_data() {
        let ts = Preset::Tiny.geometry().tensors();
        let h = safetensors_header(&ts[..5]);
        let n = u64::from_le_bytes(h[..8].try_into().unwrap()) as usize;
        assert_eq!(n + 8, h.len());
        assert_eq!(h.len() % 8, 0);
        let v: Value = serde_json::from_slice(&h[8..]).unwrap();
        let e = &v[ts[1].name.as_str()];
        assert_eq!(e["data_offsets"][0], ts[0].bytes());
        assert_eq!(e["dtype"], "BF16");
    }
}
