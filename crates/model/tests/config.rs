//! config.json parsing: both RoPE spellings, real geometries, and every bad field named (RELIABILITY 3).

mod common;

use qwen3vl_model::{Config, ModelError};
use serde_json::{json, Value};

/// The 2B-Instruct config as released (4.57 spelling: rope_theta + rope_scaling), spec 1.1/1.2.
fn config_2b() -> Value {
    json!({
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "image_token_id": 151655, "video_token_id": 151656,
        "vision_start_token_id": 151652, "vision_end_token_id": 151653,
        "tie_word_embeddings": true,
        "text_config": {
            "model_type": "qwen3_vl_text", "vocab_size": 151936, "hidden_size": 2048,
            "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16,
            "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
            "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "attention_bias": false,
            "bos_token_id": 151643, "eos_token_id": 151645, "rope_theta": 5000000,
            "rope_scaling": {"mrope_interleaved": true, "mrope_section": [24, 20, 20], "rope_type": "default"}
        },
        "vision_config": {
            "model_type": "qwen3_vl", "depth": 24, "hidden_size": 1024, "hidden_act": "gelu_pytorch_tanh",
            "intermediate_size": 4096, "num_heads": 16, "in_channels": 3, "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048,
            "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17]
        }
    })
}

fn parse(v: &Value) -> Result<Config, ModelError> {
    Config::from_json(&v.to_string())
}

/// Applies `f` to a copy of the 2B config and expects an error naming `field`.
fn expect_field_error(field: &str, f: impl FnOnce(&mut Value)) {
    expect_error_naming(config_2b(), field, f)
}

/// Applies `f` to `v` and expects an error naming `field`.
fn expect_error_naming(mut v: Value, field: &str, f: impl FnOnce(&mut Value)) {
    f(&mut v);
    match parse(&v) {
        Err(ModelError::Config { field: got, msg }) => {
            assert_eq!(got, field, "error names {got} ({msg}), expected {field}")
        }
        other => panic!("expected a config error naming {field}, got {other:?}"),
    }
}

#[test]
fn released_2b_config_legacy_rope_spelling() {
    let c = parse(&config_2b()).unwrap();
    assert_eq!(c.text.hidden_size, 2048);
    assert_eq!(c.text.num_key_value_heads, 8);
    assert_eq!(c.text.head_dim, 128);
    assert_eq!(c.text.rope_theta, 5e6);
    assert_eq!(c.text.mrope_section, [24, 20, 20]);
    assert_eq!(c.text.eos_token_ids, vec![151645]);
    assert!(c.tie_word_embeddings);
    assert_eq!(c.vision.head_dim(), 64);
    assert_eq!(c.vision.patch_dim(), 1536);
    assert_eq!(c.vision.grid_side(), 48);
    assert_eq!(c.vision.deepstack_visual_indexes, vec![5, 11, 17]);
    assert_eq!(c.image_token_id, 151655);
}

#[test]
fn transformers5_rope_parameters_spelling_gives_the_same_config() {
    let mut v = config_2b();
    let t = v["text_config"].as_object_mut().unwrap();
    t.remove("rope_theta");
    t.remove("rope_scaling");
    t.insert(
        "rope_parameters".into(),
        json!({"rope_theta": 5000000.0, "rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": true}),
    );
    assert_eq!(parse(&v).unwrap(), parse(&config_2b()).unwrap());
}

#[test]
fn tiny_checkpoint_configs_parse() {
    let tied = Config::from_file(&common::model_dir("tied").join("config.json")).unwrap();
    assert!(tied.tie_word_embeddings);
    assert_eq!(tied.text.mrope_section, [4, 2, 2]);
    assert_eq!(
        tied.text.num_attention_heads / tied.text.num_key_value_heads,
        3
    );
    let untied = Config::from_file(&common::model_dir("untied").join("config.json")).unwrap();
    assert!(!untied.tie_word_embeddings);
    assert_eq!(untied.text.rope_theta, 1e6);
    assert_eq!(untied.text.rms_norm_eps, 1e-5);
    assert_eq!(untied.vision.deepstack_visual_indexes, vec![1]);
}

#[test]
fn missing_fields_are_named_never_defaulted() {
    for f in [
        "num_key_value_heads",
        "hidden_size",
        "head_dim",
        "rms_norm_eps",
        "vocab_size",
        "intermediate_size",
        "rope_theta",
    ] {
        expect_field_error(&format!("text_config.{f}"), |v| {
            v["text_config"].as_object_mut().unwrap().remove(f);
        });
    }
    for f in [
        "out_hidden_size",
        "deepstack_visual_indexes",
        "depth",
        "num_heads",
        "patch_size",
    ] {
        expect_field_error(&format!("vision_config.{f}"), |v| {
            v["vision_config"].as_object_mut().unwrap().remove(f);
        });
    }
    expect_field_error("tie_word_embeddings", |v| {
        v.as_object_mut().unwrap().remove("tie_word_embeddings");
    });
    expect_field_error("image_token_id", |v| {
        v.as_object_mut().unwrap().remove("image_token_id");
    });
    expect_field_error("text_config.rope_scaling.mrope_section", |v| {
        v["text_config"]["rope_scaling"]
            .as_object_mut()
            .unwrap()
            .remove("mrope_section");
    });
    expect_field_error("text_config.rope_scaling", |v| {
        v["text_config"]
            .as_object_mut()
            .unwrap()
            .remove("rope_scaling");
    });
}

#[test]
fn zero_negative_and_fractional_values_are_named() {
    expect_field_error("text_config.hidden_size", |v| {
        v["text_config"]["hidden_size"] = json!(0)
    });
    expect_field_error("text_config.num_attention_heads", |v| {
        v["text_config"]["num_attention_heads"] = json!(-16)
    });
    expect_field_error("text_config.num_hidden_layers", |v| {
        v["text_config"]["num_hidden_layers"] = json!(2.5)
    });
    expect_field_error("text_config.rms_norm_eps", |v| {
        v["text_config"]["rms_norm_eps"] = json!(-1e-6)
    });
    expect_field_error("text_config.rope_theta", |v| {
        v["text_config"]["rope_theta"] = json!(0)
    });
    expect_field_error("vision_config.depth", |v| {
        v["vision_config"]["depth"] = json!(0)
    });
    expect_field_error("vision_config.hidden_size", |v| {
        v["vision_config"]["hidden_size"] = json!("1024")
    });
}

#[test]
fn inconsistent_fields_are_named() {
    // heads not divisible by kv heads
    expect_field_error("text_config.num_key_value_heads", |v| {
        v["text_config"]["num_key_value_heads"] = json!(6)
    });
    // vision heads not dividing the vision hidden size
    expect_field_error("vision_config.num_heads", |v| {
        v["vision_config"]["num_heads"] = json!(15)
    });
    // deepstack index >= depth
    expect_field_error("vision_config.deepstack_visual_indexes[2]", |v| {
        v["vision_config"]["deepstack_visual_indexes"] = json!([5, 11, 24])
    });
    expect_field_error("vision_config.deepstack_visual_indexes[1]", |v| {
        v["vision_config"]["deepstack_visual_indexes"] = json!([11, 5])
    });
    // vision output width must be the text width
    expect_field_error("vision_config.out_hidden_size", |v| {
        v["vision_config"]["out_hidden_size"] = json!(3584)
    });
    // M-RoPE sections must cover head_dim/2
    expect_field_error("text_config.rope_parameters.mrope_section", |v| {
        v["text_config"]["rope_scaling"]["mrope_section"] = json!([16, 24, 24])
    });
    expect_field_error("text_config.rope_parameters.mrope_section", |v| {
        v["text_config"]["head_dim"] = json!(64)
    });
    expect_field_error("vision_config.num_position_embeddings", |v| {
        v["vision_config"]["num_position_embeddings"] = json!(2300)
    });
    expect_field_error("image_token_id", |v| v["image_token_id"] = json!(200000));
}

/// The 30B-A3B text fields (spec 1.3) on the 2B config's other fields.
fn config_moe() -> Value {
    let mut v = config_2b();
    v["model_type"] = json!("qwen3_vl_moe");
    let t = &mut v["text_config"];
    t["model_type"] = json!("qwen3_vl_moe_text");
    t["num_experts"] = json!(128);
    t["num_experts_per_tok"] = json!(8);
    t["moe_intermediate_size"] = json!(768);
    t["decoder_sparse_step"] = json!(1);
    t["mlp_only_layers"] = json!([]);
    t["norm_topk_prob"] = json!(true);
    v
}

/// Applies `f` to a copy of the MoE config and expects an error naming `field`.
fn expect_moe_field_error(field: &str, f: impl FnOnce(&mut Value)) {
    expect_error_naming(config_moe(), field, f)
}

#[test]
fn moe_config_fields_are_read_from_the_file() {
    let c = parse(&config_moe()).unwrap();
    let m = c.text.moe.as_ref().expect("a MoE config");
    assert_eq!(
        (
            m.num_experts,
            m.num_experts_per_tok,
            m.moe_intermediate_size
        ),
        (128, 8, 768)
    );
    assert_eq!(m.decoder_sparse_step, 1);
    assert!(m.mlp_only_layers.is_empty());
    assert_eq!(m.norm_topk_prob, Some(true));
    assert!((0..28).all(|l| c.text.is_sparse_layer(l)));
    // transformers 5.x's spelling of the expert count, and dense layers by list and by step
    let mut v = config_moe();
    let t = &mut v["text_config"];
    t.as_object_mut().unwrap().remove("num_experts");
    t["num_local_experts"] = json!(16);
    t["mlp_only_layers"] = json!([0, 5]);
    t["decoder_sparse_step"] = json!(2);
    let c = parse(&v).unwrap();
    assert_eq!(c.text.moe.as_ref().unwrap().num_experts, 16);
    let sparse: Vec<usize> = (0..8).filter(|&l| c.text.is_sparse_layer(l)).collect();
    assert_eq!(sparse, vec![1, 3, 7]);
    // a dense model has no sparse layer
    assert!(!parse(&config_2b()).unwrap().text.is_sparse_layer(0));
}

#[test]
fn moe_config_errors_name_the_field_never_a_class_default() {
    for key in [
        "num_experts",
        "num_experts_per_tok",
        "moe_intermediate_size",
        "decoder_sparse_step",
        "mlp_only_layers",
    ] {
        expect_moe_field_error(&format!("text_config.{key}"), |v| {
            v["text_config"].as_object_mut().unwrap().remove(key);
        });
        expect_moe_field_error(&format!("text_config.{key}"), |v| {
            v["text_config"][key] = json!(-1)
        });
    }
    expect_moe_field_error("text_config.num_experts_per_tok", |v| {
        v["text_config"]["num_experts_per_tok"] = json!(129)
    });
    expect_moe_field_error("text_config.mlp_only_layers[1]", |v| {
        v["text_config"]["mlp_only_layers"] = json!([3, 28])
    });
    expect_moe_field_error("text_config.num_experts", |v| {
        v["text_config"]["num_experts"] = json!(1_000_000)
    });
    expect_moe_field_error("text_config.num_local_experts", |v| {
        v["text_config"]["num_local_experts"] = json!(128)
    });
    expect_moe_field_error("text_config.norm_topk_prob", |v| {
        v["text_config"]["norm_topk_prob"] = json!("yes")
    });
    // expert fields in a dense model's config, and an unknown model type
    expect_field_error("text_config.num_experts", |v| {
        v["text_config"]["num_experts"] = json!(128)
    });
    expect_field_error("model_type", |v| v["model_type"] = json!("qwen3_moe"));
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for s in [
        "",
        "{",
        "[]",
        "null",
        "{\"model_type\": 3}",
        "{\"model_type\": \"qwen3_vl\"}",
    ] {
        assert!(Config::from_json(s).is_err(), "{s:?}");
    }
}

#[test]
fn sizes_over_the_engines_limits_are_refused_by_name() {
    use qwen3vl_limits as L;
    // head_dim 1e12 hung the M-RoPE check (a loop of head_dim / 2).
    expect_field_error("text_config.head_dim", |v| {
        v["text_config"]["head_dim"] = json!(1_000_000_000_000u64)
    });
    // heads × head_dim wrapped to a value that matched the weights.
    expect_field_error("text_config.num_attention_heads", |v| {
        v["text_config"]["num_attention_heads"] = json!((1u64 << 60) + 4)
    });
    for (tower, field) in [
        ("text_config", "vocab_size"),
        ("text_config", "hidden_size"),
        ("text_config", "intermediate_size"),
        ("text_config", "num_hidden_layers"),
        ("text_config", "num_key_value_heads"),
        ("text_config", "max_position_embeddings"),
        ("vision_config", "depth"),
        ("vision_config", "hidden_size"),
        ("vision_config", "num_heads"),
        ("vision_config", "patch_size"),
        ("vision_config", "temporal_patch_size"),
        ("vision_config", "spatial_merge_size"),
        ("vision_config", "num_position_embeddings"),
    ] {
        let name = format!("{tower}.{field}");
        let mut v = config_2b();
        v[tower][field] = json!(1u64 << 40);
        match parse(&v) {
            Err(ModelError::Config { field: got, msg }) => {
                assert_eq!(got, name, "{msg}");
                assert!(msg.contains("over the limit"), "{name}: {msg}");
            }
            other => panic!("{name} = 2^40 was not refused: {other:?}"),
        }
    }
    let e = {
        let mut v = config_2b();
        v["text_config"]["head_dim"] = json!(L::MAX_HEAD_DIM + 2);
        parse(&v).unwrap_err().to_string()
    };
    assert!(e.contains(&L::MAX_HEAD_DIM.to_string()), "{e}");
}

#[test]
fn eos_and_bos_ids_must_be_in_the_vocabulary() {
    expect_field_error("text_config.eos_token_id[0]", |v| {
        v["text_config"]["eos_token_id"] = json!(1_000_000_000)
    });
    expect_field_error("text_config.eos_token_id[1]", |v| {
        v["text_config"]["eos_token_id"] = json!([151645, 200000])
    });
    expect_field_error("text_config.bos_token_id", |v| {
        v["text_config"]["bos_token_id"] = json!(151936)
    });
}
