//! The presets: the geometry of each model size, and every tensor of the checkpoint with its shape and
//! the distribution its values are drawn from.

use super::InitError;

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
        let tiny_text = TextGeometry {
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
                    moe: Some(MoeGeometry {
                        experts: 8,
                        top_k: 2,
                        intermediate: 32,
                    }),
                    ..tiny_text
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
            Preset::Tiny => (tiny_text, tiny_vision),
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
        let shape = |n: &str| shape_of(&ts, n);
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
    }

    /// The shape of tensor `name` among `ts`.
    fn shape_of(ts: &[TensorSpec], name: &str) -> Vec<usize> {
        ts.iter()
            .find(|t| t.name == name)
            .map(|t| t.shape.clone())
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }

    #[test]
    fn shapes_follow_spec_table() {
        let b8 = Preset::B8.geometry().tensors();
        let shape = |n: &str| shape_of(&b8, n);
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
        let b4 = Preset::B4.geometry().tensors();
        let shape = |n: &str| shape_of(&b4, n);
        assert_eq!(
            shape("model.language_model.layers.0.self_attn.o_proj.weight"),
            vec![2560, 4096]
        );
    }
}
