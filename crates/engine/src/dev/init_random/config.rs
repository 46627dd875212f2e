//! The JSON files of the checkpoint that describe it: config.json and preprocessor_config.json.

use serde_json::{json, Value};

use super::Geometry;

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
}

/// spec 6.1.
pub(super) fn preprocessor_config() -> Value {
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

#[cfg(test)]
mod tests {
    use super::super::Preset;
    use serde_json::json;

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
}
