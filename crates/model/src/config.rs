//! `config.json` of a Qwen3-VL checkpoint (spec 1).
//!
//! Every field the network needs is read from the file: a missing, zero, negative or inconsistent field is an
//! error naming it (`text_config.num_key_value_heads`), never a class default (spec 1.2 lists the Python
//! defaults that are wrong for these checkpoints). Both RoPE spellings are accepted (spec 1.1): the released
//! files' `rope_theta` + `rope_scaling{mrope_section,..}` and transformers 5.x's `rope_parameters`.

use std::path::Path;

use qwen3vl_limits as L;
use serde_json::{Map, Value};

use crate::ModelError;

/// `text_config` (Qwen3VLTextConfig).
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    /// (T, H, W) frequency counts; sums to head_dim / 2.
    pub mrope_section: [usize; 3],
    pub max_position_embeddings: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The Mixture-of-Experts fields of a `qwen3_vl_moe` checkpoint (None: a dense model).
    pub moe: Option<MoeConfig>,
}

/// The MoE fields of `text_config` (Qwen3VLMoeTextConfig, spec 1.3). Every one is read from the file: the
/// class defaults (60 experts, top-4, 1408) are not the released model's (128, top-8, 768).
#[derive(Clone, Debug, PartialEq)]
pub struct MoeConfig {
    /// E: experts per sparse layer (`num_experts`; transformers 5.x may save it as `num_local_experts`)
    pub num_experts: usize,
    /// k: experts each token is routed to (`num_experts_per_tok`), ≤ E
    pub num_experts_per_tok: usize,
    /// I of one expert (`moe_intermediate_size`)
    pub moe_intermediate_size: usize,
    /// layer l is sparse when (l + 1) % decoder_sparse_step == 0 and l is not in `mlp_only_layers`
    pub decoder_sparse_step: usize,
    /// layers that keep the dense MLP (intermediate_size)
    pub mlp_only_layers: Vec<usize>,
    /// As stored, if stored. transformers 5.23 has no such field: its router renormalizes the top-k
    /// probabilities whatever this says (spec 1.3), and so do we.
    pub norm_topk_prob: Option<bool>,
}

impl TextConfig {
    /// Whether decoder layer `l` has the sparse MoE block (else the dense MLP): transformers'
    /// `l not in mlp_only_layers and num_experts > 0 and (l + 1) % decoder_sparse_step == 0`.
    pub fn is_sparse_layer(&self, l: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| {
            !m.mlp_only_layers.contains(&l) && (l + 1).is_multiple_of(m.decoder_sparse_step)
        })
    }
}

/// `vision_config` (Qwen3VLVisionConfig).
#[derive(Clone, Debug, PartialEq)]
pub struct VisionConfig {
    pub depth: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_heads: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    pub out_hidden_size: usize,
    pub num_position_embeddings: usize,
    pub deepstack_visual_indexes: Vec<usize>,
}

impl VisionConfig {
    /// Values per patch row of `pixel_values`: in_channels · temporal_patch_size · patch_size² (1536).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }
    /// Per-head dimension (hidden / heads): 64 or 72 in the released models.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
    /// Side of the square learned position-embedding grid (48 for 2304).
    pub fn grid_side(&self) -> usize {
        isqrt(self.num_position_embeddings)
    }
    /// Patches merged into one token (spatial_merge_size², 4).
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }
}

/// The whole `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub text: TextConfig,
    pub vision: VisionConfig,
    pub image_token_id: u32,
    pub video_token_id: u32,
    pub vision_start_token_id: u32,
    pub vision_end_token_id: u32,
    pub tie_word_embeddings: bool,
}

/// The position axis (0 = T, 1 = H, 2 = W) of text rotary frequency `j` (spec 5.1, interleaved M-RoPE):
/// H if j % 3 == 1 and j < 3·sec[1]; W if j % 3 == 2 and j < 3·sec[2]; T otherwise.
pub fn mrope_axis(j: usize, sec: &[usize; 3]) -> usize {
    if j % 3 == 1 && j < 3 * sec[1] {
        1
    } else if j % 3 == 2 && j < 3 * sec[2] {
        2
    } else {
        0
    }
}

fn isqrt(n: usize) -> usize {
    let mut r = (n as f64).sqrt() as usize;
    while r * r > n {
        r -= 1;
    }
    while (r + 1) * (r + 1) <= n {
        r += 1;
    }
    r
}

fn err(field: impl Into<String>, msg: impl Into<String>) -> ModelError {
    ModelError::Config {
        field: field.into(),
        msg: msg.into(),
    }
}

/// A JSON object plus the dotted path that names it in errors.
struct Obj<'a> {
    path: &'a str,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn name(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn req(&self, key: &str) -> Result<&'a Value, ModelError> {
        self.get(key).ok_or_else(|| err(self.name(key), "missing"))
    }

    /// A positive integer at most `max`, the engine's limit (zero, negative, fractional, non-numbers and
    /// values over the limit are errors).
    fn pos(&self, key: &str, max: usize) -> Result<usize, ModelError> {
        let v = self.req(key)?;
        let x = as_pos(v).ok_or_else(|| {
            err(
                self.name(key),
                format!("must be a positive integer, got {v}"),
            )
        })?;
        if x > max {
            return Err(err(
                self.name(key),
                format!("{x} is over the limit of {max}"),
            ));
        }
        Ok(x)
    }

    fn token_id(&self, key: &str) -> Result<u32, ModelError> {
        let v = self.req(key)?;
        v.as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .ok_or_else(|| err(self.name(key), format!("must be a token id, got {v}")))
    }

    /// A finite positive float.
    fn pos_f64(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.req(key)?;
        match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(err(
                self.name(key),
                format!("must be a positive number, got {v}"),
            )),
        }
    }

    fn str(&self, key: &str) -> Result<&'a str, ModelError> {
        let v = self.req(key)?;
        v.as_str()
            .ok_or_else(|| err(self.name(key), format!("must be a string, got {v}")))
    }

    fn bool(&self, key: &str) -> Result<bool, ModelError> {
        let v = self.req(key)?;
        v.as_bool()
            .ok_or_else(|| err(self.name(key), format!("must be true or false, got {v}")))
    }

    /// A list of non-negative integers that `ok` accepts; anything else is "must be {what}, got {v}".
    fn usize_list(
        &self,
        key: &str,
        what: &str,
        ok: impl Fn(&[usize]) -> bool,
    ) -> Result<Vec<usize>, ModelError> {
        let v = self.req(key)?;
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
                    .collect::<Option<Vec<_>>>()
            })
            .filter(|l| ok(l))
            .ok_or_else(|| err(self.name(key), format!("must be {what}, got {v}")))
    }

    fn obj(&self, key: &str, path: &'a str) -> Result<Obj<'a>, ModelError> {
        let v = self.req(key)?;
        let map = v
            .as_object()
            .ok_or_else(|| err(self.name(key), "must be an object"))?;
        Ok(Obj { path, map })
    }
}

fn as_pos(v: &Value) -> Option<usize> {
    v.as_u64()
        .filter(|&x| x > 0)
        .and_then(|x| usize::try_from(x).ok())
}

impl Config {
    /// Reads and validates `path` (a checkpoint's config.json).
    pub fn from_file(path: &Path) -> Result<Config, ModelError> {
        use std::io::Read;
        let io = |e: std::io::Error| ModelError::Io {
            path: path.display().to_string(),
            msg: e.to_string(),
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(io)?
            .take(L::MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > L::MAX_CONFIG_BYTES {
            return Err(ModelError::Io {
                path: path.display().to_string(),
                msg: format!(
                    "the file is over the limit of {} bytes",
                    L::MAX_CONFIG_BYTES
                ),
            });
        }
        Config::from_json(&text)
    }

    /// Parses and validates the text of a config.json.
    pub fn from_json(json: &str) -> Result<Config, ModelError> {
        let root: Value =
            serde_json::from_str(json).map_err(|e| err("config.json", e.to_string()))?;
        let map = root
            .as_object()
            .ok_or_else(|| err("config.json", "the top level must be an object"))?;
        let top = Obj { path: "", map };

        // 1. Model type: dense Qwen3-VL, or the MoE variant (spec 1.3) with its text_config fields.
        let model_type = top.str("model_type")?;
        let tc = top.obj("text_config", "text_config")?;
        let is_moe = match model_type {
            "qwen3_vl" => false,
            "qwen3_vl_moe" => true,
            _ => {
                return Err(err(
                    "model_type",
                    format!("expected \"qwen3_vl\" or \"qwen3_vl_moe\", got \"{model_type}\""),
                ))
            }
        };
        if !is_moe {
            for key in ["num_experts", "num_local_experts"] {
                if tc.get(key).is_some() {
                    return Err(err(
                        tc.name(key),
                        "present, but model_type is \"qwen3_vl\" (a MoE checkpoint says \"qwen3_vl_moe\")",
                    ));
                }
            }
        }

        let mut text = parse_text(&tc)?;
        if is_moe {
            text.moe = Some(parse_moe(&tc, text.num_hidden_layers)?);
        }
        let vc = top.obj("vision_config", "vision_config")?;
        let vision = parse_vision(&vc)?;

        // 2. Top-level token ids and embedding tying (read from text_config when the top level lacks it).
        let tie_word_embeddings = match top.get("tie_word_embeddings") {
            Some(_) => top.bool("tie_word_embeddings")?,
            None => match tc.get("tie_word_embeddings") {
                Some(_) => tc.bool("tie_word_embeddings")?,
                None => return Err(err("tie_word_embeddings", "missing")),
            },
        };
        let cfg = Config {
            image_token_id: top.token_id("image_token_id")?,
            video_token_id: top.token_id("video_token_id")?,
            vision_start_token_id: top.token_id("vision_start_token_id")?,
            vision_end_token_id: top.token_id("vision_end_token_id")?,
            tie_word_embeddings,
            text,
            vision,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Cross-field consistency (RELIABILITY 3).
    fn check(&self) -> Result<(), ModelError> {
        let (t, v) = (&self.text, &self.vision);
        if t.num_attention_heads % t.num_key_value_heads != 0 {
            return Err(err(
                "text_config.num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads {}",
                    t.num_key_value_heads, t.num_attention_heads
                ),
            ));
        }
        for (j, &id) in t.eos_token_ids.iter().enumerate() {
            if id as usize >= t.vocab_size {
                return Err(err(
                    format!("text_config.eos_token_id[{j}]"),
                    format!("{id} >= text_config.vocab_size {}", t.vocab_size),
                ));
            }
        }
        if let Some(id) = t.bos_token_id.filter(|&id| id as usize >= t.vocab_size) {
            return Err(err(
                "text_config.bos_token_id",
                format!("{id} >= text_config.vocab_size {}", t.vocab_size),
            ));
        }
        if t.head_dim % 2 != 0 {
            return Err(err(
                "text_config.head_dim",
                format!("must be even, got {}", t.head_dim),
            ));
        }
        // The interleaved layout (spec 5.1) must give each axis exactly its section's count of frequencies.
        let mut counts = [0usize; 3];
        for j in 0..t.head_dim / 2 {
            counts[mrope_axis(j, &t.mrope_section)] += 1;
        }
        if counts != t.mrope_section {
            return Err(err(
                "text_config.rope_parameters.mrope_section",
                format!(
                    "{:?} does not fit head_dim/2 = {} frequencies (interleaved layout gives T,H,W counts {:?})",
                    t.mrope_section,
                    t.head_dim / 2,
                    counts
                ),
            ));
        }
        if v.hidden_size % v.num_heads != 0 {
            return Err(err(
                "vision_config.num_heads",
                format!(
                    "{} does not divide vision_config.hidden_size {}",
                    v.num_heads, v.hidden_size
                ),
            ));
        }
        if v.head_dim() % 4 != 0 {
            return Err(err(
                "vision_config.num_heads",
                format!(
                    "vision head_dim hidden_size/num_heads = {} must be a multiple of 4 (2-D rotary)",
                    v.head_dim()
                ),
            ));
        }
        if v.out_hidden_size != t.hidden_size {
            return Err(err(
                "vision_config.out_hidden_size",
                format!(
                    "{} differs from text_config.hidden_size {}",
                    v.out_hidden_size, t.hidden_size
                ),
            ));
        }
        let side = v.grid_side();
        if side * side != v.num_position_embeddings {
            return Err(err(
                "vision_config.num_position_embeddings",
                format!("{} is not a square number", v.num_position_embeddings),
            ));
        }
        for (j, &i) in v.deepstack_visual_indexes.iter().enumerate() {
            if i >= v.depth {
                return Err(err(
                    format!("vision_config.deepstack_visual_indexes[{j}]"),
                    format!("block index {i} >= vision_config.depth {}", v.depth),
                ));
            }
            if j > 0 && i <= v.deepstack_visual_indexes[j - 1] {
                return Err(err(
                    format!("vision_config.deepstack_visual_indexes[{j}]"),
                    "indexes must be strictly increasing",
                ));
            }
        }
        if v.deepstack_visual_indexes.len() > t.num_hidden_layers {
            return Err(err(
                "vision_config.deepstack_visual_indexes",
                format!(
                    "{} features but only {} decoder layers to inject them after",
                    v.deepstack_visual_indexes.len(),
                    t.num_hidden_layers
                ),
            ));
        }
        for (name, id) in [
            ("image_token_id", self.image_token_id),
            ("video_token_id", self.video_token_id),
            ("vision_start_token_id", self.vision_start_token_id),
            ("vision_end_token_id", self.vision_end_token_id),
        ] {
            if id as usize >= t.vocab_size {
                return Err(err(
                    name,
                    format!("{id} >= text_config.vocab_size {}", t.vocab_size),
                ));
            }
        }
        Ok(())
    }
}

fn parse_text(tc: &Obj) -> Result<TextConfig, ModelError> {
    if let Some(act) = tc.get("hidden_act") {
        if act.as_str() != Some("silu") {
            return Err(err(
                "text_config.hidden_act",
                format!("only \"silu\" is supported, got {act}"),
            ));
        }
    } else {
        return Err(err("text_config.hidden_act", "missing"));
    }
    if tc.get("attention_bias").and_then(Value::as_bool) == Some(true) {
        return Err(ModelError::Unsupported(
            "text_config.attention_bias = true (Qwen3-VL has no attention bias)".into(),
        ));
    }

    // RoPE: 5.x `rope_parameters` or the released files' `rope_theta` + `rope_scaling`.
    let (theta, rope) = match tc.get("rope_parameters") {
        Some(_) => {
            let rp = tc.obj("rope_parameters", "text_config.rope_parameters")?;
            (rp.pos_f64("rope_theta")?, rp)
        }
        None => {
            let rs = tc.obj("rope_scaling", "text_config.rope_scaling")?;
            (tc.pos_f64("rope_theta")?, rs)
        }
    };
    if let Some(rt) = rope.get("rope_type").or_else(|| rope.get("type")) {
        if rt.as_str() != Some("default") {
            return Err(ModelError::Unsupported(format!(
                "{} = {rt} (only the default M-RoPE is supported)",
                rope.name("rope_type")
            )));
        }
    }
    let sec = rope.usize_list(
        "mrope_section",
        &format!(
            "three non-negative integers (T, H, W) of at most {}",
            L::MAX_HEAD_DIM
        ),
        |s| s.len() == 3 && s[0] > 0 && s.iter().all(|&x| x <= L::MAX_HEAD_DIM),
    )?;

    let eos_token_ids = match tc.get("eos_token_id") {
        None => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_u64().and_then(|x| u32::try_from(x).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err("text_config.eos_token_id", "must be token ids"))?,
        Some(_) => vec![tc.token_id("eos_token_id")?],
    };
    let bos_token_id = match tc.get("bos_token_id") {
        None => None,
        Some(_) => Some(tc.token_id("bos_token_id")?),
    };

    let rms_norm_eps = tc.pos_f64("rms_norm_eps")?;
    Ok(TextConfig {
        vocab_size: tc.pos("vocab_size", L::MAX_VOCAB_SIZE)?,
        hidden_size: tc.pos("hidden_size", L::MAX_HIDDEN_SIZE)?,
        intermediate_size: tc.pos("intermediate_size", L::MAX_INTERMEDIATE_SIZE)?,
        num_hidden_layers: tc.pos("num_hidden_layers", L::MAX_LAYERS)?,
        num_attention_heads: tc.pos("num_attention_heads", L::MAX_HEADS)?,
        num_key_value_heads: tc.pos("num_key_value_heads", L::MAX_HEADS)?,
        head_dim: tc.pos("head_dim", L::MAX_HEAD_DIM)?,
        rms_norm_eps: rms_norm_eps as f32,
        rope_theta: theta,
        mrope_section: [sec[0], sec[1], sec[2]],
        max_position_embeddings: tc.pos("max_position_embeddings", L::MAX_CONTEXT)?,
        bos_token_id,
        eos_token_ids,
        moe: None,
    })
}

/// The MoE fields of `text_config` (spec 1.3); `layers` = num_hidden_layers.
fn parse_moe(tc: &Obj, layers: usize) -> Result<MoeConfig, ModelError> {
    let experts_key = match (tc.get("num_experts"), tc.get("num_local_experts")) {
        (Some(_), Some(_)) => {
            return Err(err(
                tc.name("num_local_experts"),
                "both num_experts and num_local_experts are present (one spelling only)",
            ))
        }
        (None, Some(_)) => "num_local_experts",
        _ => "num_experts",
    };
    let num_experts = tc.pos(experts_key, L::MAX_EXPERTS)?;
    let num_experts_per_tok = tc.pos("num_experts_per_tok", L::MAX_EXPERTS)?;
    if num_experts_per_tok > num_experts {
        return Err(err(
            tc.name("num_experts_per_tok"),
            format!("{num_experts_per_tok} is more than {experts_key} {num_experts}"),
        ));
    }
    let mlp_only_layers = tc.usize_list("mlp_only_layers", "a list of layer indexes", |_| true)?;
    if let Some((j, &l)) = mlp_only_layers
        .iter()
        .enumerate()
        .find(|(_, &l)| l >= layers)
    {
        return Err(err(
            format!("{}[{j}]", tc.name("mlp_only_layers")),
            format!("layer {l} >= num_hidden_layers {layers}"),
        ));
    }
    let norm_topk_prob = match tc.get("norm_topk_prob") {
        None => None,
        Some(_) => Some(tc.bool("norm_topk_prob")?),
    };
    Ok(MoeConfig {
        num_experts,
        num_experts_per_tok,
        moe_intermediate_size: tc.pos("moe_intermediate_size", L::MAX_INTERMEDIATE_SIZE)?,
        decoder_sparse_step: tc.pos("decoder_sparse_step", L::MAX_LAYERS)?,
        mlp_only_layers,
        norm_topk_prob,
    })
}

fn parse_vision(vc: &Obj) -> Result<VisionConfig, ModelError> {
    let act = vc.str("hidden_act")?;
    if act != "gelu_pytorch_tanh" {
        return Err(err(
            "vision_config.hidden_act",
            format!("only \"gelu_pytorch_tanh\" is supported, got \"{act}\""),
        ));
    }
    let deepstack_visual_indexes = vc.usize_list(
        "deepstack_visual_indexes",
        "a list of block indexes",
        |_| true,
    )?;
    Ok(VisionConfig {
        depth: vc.pos("depth", L::MAX_LAYERS)?,
        hidden_size: vc.pos("hidden_size", L::MAX_HIDDEN_SIZE)?,
        intermediate_size: vc.pos("intermediate_size", L::MAX_INTERMEDIATE_SIZE)?,
        num_heads: vc.pos("num_heads", L::MAX_HEADS)?,
        in_channels: vc.pos("in_channels", L::MAX_IN_CHANNELS)?,
        patch_size: vc.pos("patch_size", L::MAX_PATCH_SIZE)?,
        temporal_patch_size: vc.pos("temporal_patch_size", L::MAX_TEMPORAL_PATCH_SIZE)?,
        spatial_merge_size: vc.pos("spatial_merge_size", L::MAX_MERGE_SIZE)?,
        out_hidden_size: vc.pos("out_hidden_size", L::MAX_HIDDEN_SIZE)?,
        num_position_embeddings: vc.pos("num_position_embeddings", L::MAX_POSITION_EMBEDDINGS)?,
        deepstack_visual_indexes,
    })
}
